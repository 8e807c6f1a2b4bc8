/*
 * fuzz_seeds.c - writes the seed corpora: for every method of fuzz_table.h
 * an empty request and one with every field filled (strings "seed", the
 * configured hash, numbers 1, enums their first value, one element per
 * repeated field, nested messages filled two levels deep), prefixed with
 * the method's index byte; the same for responses (client decoding).
 *
 *   fuzz_seeds REQUEST_DIR RESPONSE_DIR
 *
 * Fills by protobuf-c's own descriptors, so a field added to a proto gets
 * a seed without touching this file.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_table.h"

#define DEPTH_MAX 3

static void *xcalloc(size_t n, size_t size)
{
  void *p = calloc(n ? n : 1, size ? size : 1);
  if (p == NULL) {
    perror("calloc");
    exit(1);
  }
  return p;
}

static char *xstrdup(const char *s)
{
  char *d = xcalloc(strlen(s) + 1, 1);
  memcpy(d, s, strlen(s) + 1);
  return d;
}

static ProtobufCMessage *make(const ProtobufCMessageDescriptor *d, int depth);

/* One value of field f at dst (a scalar slot, or an array element). */
static void fill_value(const ProtobufCFieldDescriptor *f, void *dst, int depth)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
    *(char **)dst =
        xstrdup(strstr(f->name, "hash") ? "cdd01ef066bc6cf2" : "seed");
    break;
  case PROTOBUF_C_TYPE_BYTES: {
    ProtobufCBinaryData *b = dst;
    b->data = (uint8_t *)xstrdup("seed");
    b->len = 4;
    break;
  }
  case PROTOBUF_C_TYPE_BOOL:
    *(protobuf_c_boolean *)dst = 1;
    break;
  case PROTOBUF_C_TYPE_ENUM: {
    const ProtobufCEnumDescriptor *e = f->descriptor;
    *(int *)dst = e->n_values > 1 ? e->values[1].value : e->values[0].value;
    break;
  }
  case PROTOBUF_C_TYPE_DOUBLE:
    *(double *)dst = 0.5;
    break;
  case PROTOBUF_C_TYPE_FLOAT:
    *(float *)dst = 0.5f;
    break;
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    *(uint64_t *)dst = 1;
    break;
  case PROTOBUF_C_TYPE_MESSAGE:
    *(ProtobufCMessage **)dst = make(f->descriptor, depth + 1);
    break;
  default: /* the 32-bit integers */
    *(uint32_t *)dst = 1;
    break;
  }
}

static size_t slot_size(const ProtobufCFieldDescriptor *f)
{
  switch (f->type) {
  case PROTOBUF_C_TYPE_STRING:
  case PROTOBUF_C_TYPE_MESSAGE:
    return sizeof(void *);
  case PROTOBUF_C_TYPE_BYTES:
    return sizeof(ProtobufCBinaryData);
  case PROTOBUF_C_TYPE_DOUBLE:
  case PROTOBUF_C_TYPE_INT64:
  case PROTOBUF_C_TYPE_SINT64:
  case PROTOBUF_C_TYPE_SFIXED64:
  case PROTOBUF_C_TYPE_UINT64:
  case PROTOBUF_C_TYPE_FIXED64:
    return 8;
  case PROTOBUF_C_TYPE_BOOL:
    return sizeof(protobuf_c_boolean);
  default:
    return 4;
  }
}

static ProtobufCMessage *make(const ProtobufCMessageDescriptor *d, int depth)
{
  ProtobufCMessage *m = xcalloc(1, d->sizeof_message);
  d->message_init(m);
  if (depth >= DEPTH_MAX)
    return m;
  char *base = (char *)m;
  for (unsigned i = 0; i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
      uint32_t *which = (uint32_t *)(void *)(base + f->quantifier_offset);
      if (*which != 0)
        continue; /* one member per oneof */
      *which = f->id;
      fill_value(f, base + f->offset, depth);
      continue;
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      void *arr = xcalloc(1, slot_size(f));
      fill_value(f, arr, depth);
      *(size_t *)(void *)(base + f->quantifier_offset) = 1;
      *(void **)(void *)(base + f->offset) = arr;
      continue;
    }
    fill_value(f, base + f->offset, depth);
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->quantifier_offset)
      *(protobuf_c_boolean *)(void *)(base + f->quantifier_offset) = 1;
  }
  return m;
}

static void write_seed(const char *dir, size_t idx, const char *tag,
                       const ProtobufCMessage *m)
{
  size_t n = protobuf_c_message_get_packed_size(m);
  unsigned char *buf = xcalloc(n + 1, 1);
  buf[0] = (unsigned char)idx;
  protobuf_c_message_pack(m, buf + 1);
  char path[512];
  snprintf(path, sizeof path, "%s/seed-%02zu-%s", dir, idx, tag);
  FILE *f = fopen(path, "wb");
  if (f == NULL || fwrite(buf, 1, n + 1, f) != n + 1) {
    perror(path);
    exit(1);
  }
  fclose(f);
  free(buf);
}

int main(int argc, char **argv)
{
  if (argc != 3) {
    fprintf(stderr, "usage: %s REQUEST_DIR RESPONSE_DIR\n", argv[0]);
    return 2;
  }
  for (size_t i = 0; i < fz_method_count; i++) {
    const fz_method_t *m = &fz_methods[i];
    ProtobufCMessage *empty = make(m->req, DEPTH_MAX);
    ProtobufCMessage *full = make(m->req, 0);
    write_seed(argv[1], i, "empty", empty);
    write_seed(argv[1], i, "full", full);
    protobuf_c_message_free_unpacked(empty, NULL);
    protobuf_c_message_free_unpacked(full, NULL);
    ProtobufCMessage *resp = make(m->resp, 0);
    write_seed(argv[2], i, "full", resp);
    protobuf_c_message_free_unpacked(resp, NULL);
  }
  printf("%zu methods: %zu request and %zu response seeds\n", fz_method_count,
         2 * fz_method_count, fz_method_count);
  return 0;
}
