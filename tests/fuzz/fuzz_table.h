/*
 * fuzz_table.h - the methods the fuzz harnesses drive: every
 * antifragility.v1 RPC (fuzz_methods.h), grpc.health.v1 Check / Watch and
 * server reflection v1 / v1alpha, with their protobuf-c descriptors.
 *
 * Input format shared by the harnesses and the seed corpus: the first
 * byte picks the entry (modulo the count), the rest is the message.
 */
#ifndef AF_FUZZ_TABLE_H
#define AF_FUZZ_TABLE_H

#include <stddef.h>

#include <protobuf-c/protobuf-c.h>

typedef enum { FZ_UNARY, FZ_CS, FZ_SS, FZ_BIDI } fz_kind_t;

typedef struct {
  const char *path;
  const ProtobufCMessageDescriptor *req;
  const ProtobufCMessageDescriptor *resp;
  fz_kind_t kind;
} fz_method_t;

extern const fz_method_t fz_methods[];
extern const size_t fz_method_count;

#endif /* AF_FUZZ_TABLE_H */
