/*
 * wire_check.h - what protobuf-c does not check when it decodes a request:
 * that every string field is valid UTF-8 (proto3 requires it; the Python,
 * Go and Java runtimes refuse it otherwise) and holds no NUL byte (our C
 * code sees a string up to its first NUL, so "a\0b" would act as "a").
 *
 * Thread-safety: pure function; thread-safe.
 */
#ifndef AF_WIRE_CHECK_H
#define AF_WIRE_CHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Walks the encoded message buf[len] of type desc (which protobuf-c has
 * already decoded successfully) and every nested message. Returns true if
 * each string field is valid UTF-8 without NUL; otherwise false with
 * why[n] = "malformed request: <Message>.<field> is not valid UTF-8" or
 * "... contains a NUL byte", or "malformed request: field number N is
 * out of range" for a field number outside 1..2^29-1 (which protobuf-c
 * accepts). Unknown fields are skipped. desc and buf borrowed. */
bool af_wire_strings_valid(const ProtobufCMessageDescriptor *desc,
                           const uint8_t *buf, size_t len, char *why, size_t n);

/* True if s[len] is valid UTF-8 (no overlong forms, no surrogates, nothing
 * above U+10FFFF). */
bool af_utf8_valid(const uint8_t *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* AF_WIRE_CHECK_H */
