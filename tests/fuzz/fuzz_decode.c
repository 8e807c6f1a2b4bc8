/*
 * fuzz_decode.c - libFuzzer harness for the request decoders: the bytes
 * after the first (which picks the method, fuzz_table.h) are decoded as
 * that method's request exactly as the server does (protobuf-c, then the
 * UTF-8 / NUL / field-number check of wire_check.c). Whatever the server
 * accepts must pack and decode again.
 */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_table.h"
#include "wire_check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  const fz_method_t *m = &fz_methods[data[0] % fz_method_count];
  ProtobufCMessage *msg =
      protobuf_c_message_unpack(m->req, NULL, size - 1, data + 1);
  if (msg == NULL)
    return 0;
  char why[256];
  if (!af_wire_strings_valid(m->req, data + 1, size - 1, why, sizeof why)) {
    protobuf_c_message_free_unpacked(msg, NULL); /* the server refuses it */
    return 0;
  }
  size_t n = protobuf_c_message_get_packed_size(msg);
  uint8_t *buf = malloc(n ? n : 1);
  if (buf == NULL)
    abort();
  if (protobuf_c_message_pack(msg, buf) != n)
    abort();
  ProtobufCMessage *again = protobuf_c_message_unpack(m->req, NULL, n, buf);
  if (again == NULL)
    abort();
  protobuf_c_message_free_unpacked(again, NULL);
  free(buf);
  protobuf_c_message_free_unpacked(msg, NULL);
  return 0;
}
