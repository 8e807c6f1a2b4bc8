/*
 * fuzz_client_decode.c - libFuzzer harness for the client side: the bytes
 * after the first (which picks the RPC, fuzz_methods.h) are decoded with
 * nanopb as that RPC's response, into a heap buffer of exactly the
 * struct's size (ASan sees any overrun), as libafclient decodes what a
 * server sends.
 */
#include <stdint.h>
#include <stdlib.h>

#include <pb_decode.h>

#include "antifragility/v1/breaker.pb.h"
#include "antifragility/v1/chaos.pb.h"
#include "antifragility/v1/health.pb.h"
#include "antifragility/v1/metering.pb.h"
#include "antifragility/v1/recovery.pb.h"
#include "fuzz_methods.h"

typedef struct {
  const pb_msgdesc_t *fields;
  size_t size;
} response_t;

#define ROW(svc, m, req, req_s, resp, resp_s, kind)                            \
  {&antifragility_v1_##resp##_msg, sizeof(antifragility_v1_##resp)},

static const response_t k_responses[] = {AF_FUZZ_METHODS(ROW)};
#define N_RESPONSES (sizeof k_responses / sizeof k_responses[0])

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  const response_t *r = &k_responses[data[0] % N_RESPONSES];
  void *msg = malloc(r->size);
  if (msg == NULL)
    abort();
  pb_istream_t in = pb_istream_from_buffer(data + 1, size - 1);
  if (pb_decode(&in, r->fields, msg))
    pb_release(r->fields, msg);
  free(msg);
  return 0;
}
