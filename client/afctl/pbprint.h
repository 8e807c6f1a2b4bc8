/*
 * pbprint.h - afctl's generic message printers, driven by protobuf-c
 * descriptors (nanopb keeps no field names): proto3 JSON for --json and an
 * indented "name: value" form for everything afctl has no table for.
 *
 * Thread-safety: thread-compatible (writes to the given FILE only).
 */
#ifndef AFCTL_PBPRINT_H
#define AFCTL_PBPRINT_H

#include <stdbool.h>
#include <stdio.h>

#include <pb.h>
#include <protobuf-c/protobuf-c.h>

/* Re-encodes the nanopb struct msg (borrowed) with fields and decodes the
 * bytes with desc. Returns owned (protobuf_c_message_free_unpacked), or
 * NULL if either step fails. */
ProtobufCMessage *pbp_from_nanopb(const pb_msgdesc_t *fields, const void *msg,
                                  const ProtobufCMessageDescriptor *desc);

/* proto3 JSON mapping: lowerCamelCase names, default values omitted, enums
 * by name, 64-bit integers as strings, Timestamp as RFC 3339, Duration as
 * "1.5s", wrappers as their value. One line, no trailing newline. */
void pbp_json(FILE *out, const ProtobufCMessage *m);

/* Indented "name: value" lines (enum names without their prefix, times
 * as RFC 3339, empty strings and unset messages left out). */
void pbp_text(FILE *out, const ProtobufCMessage *m, int indent);

/* "2026-12-04T05:50:08.123Z" for a Timestamp (seconds, nanos). */
void pbp_format_time(char *buf, size_t cap, int64_t seconds, int32_t nanos);

/* Enum value name without the enum's common prefix ("OPEN" for
 * BREAKER_STATE_OPEN); "?" if unknown. */
const char *pbp_enum_short(const ProtobufCEnumDescriptor *d, int value);

#endif /* AFCTL_PBPRINT_H */
