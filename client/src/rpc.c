/*
 * rpc.c - the table of every antifragility.v1 RPC (path, shape, nanopb
 * descriptors) and the typed synchronous wrappers, both generated from
 * AF_CLIENT_RPCS so that the list exists once.
 */
#include "client_internal.h"

#include <grpc/status.h>

#define AF__PKG "antifragility.v1."

static const af_rpc_info_t rpc_table[AF_RPC_COUNT] = {
#define AF__INFO(ID, fn, svc, m, rq, rs, kind)                                 \
  [AF_RPC_##ID] = {"/" AF__PKG #svc "/" #m,                                    \
                   AF__PKG #svc,                                               \
                   #m,                                                         \
                   AF_RPC_KIND_##kind,                                         \
                   &antifragility_v1_##rq##_msg,                               \
                   &antifragility_v1_##rs##_msg,                               \
                   sizeof(antifragility_v1_##rq),                              \
                   sizeof(antifragility_v1_##rs)},
    AF_CLIENT_RPCS(AF__INFO)
#undef AF__INFO
};

const af_rpc_info_t *af_rpc_info(af_rpc_id_t rpc)
{
  if ((int)rpc < 0 || rpc >= AF_RPC_COUNT) {
    return NULL;
  }
  return &rpc_table[rpc];
}

const char *af_call_code_name(int code)
{
  static const char *const names[] = {
      "OK",
      "CANCELLED",
      "UNKNOWN",
      "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED",
      "NOT_FOUND",
      "ALREADY_EXISTS",
      "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION",
      "ABORTED",
      "OUT_OF_RANGE",
      "UNIMPLEMENTED",
      "INTERNAL",
      "UNAVAILABLE",
      "DATA_LOSS",
      "UNAUTHENTICATED",
  };
  if (code < 0 || (size_t)code >= sizeof names / sizeof names[0]) {
    return "UNKNOWN";
  }
  return names[code];
}

int af_client_unary(af_client_t *c, af_rpc_id_t rpc, const void *req,
                    void *resp, uint32_t deadline_ms, af_call_status_t *st)
{
  const af_rpc_info_t *info = af_rpc_info(rpc);
  if (c == NULL || info == NULL || info->kind != AF_RPC_KIND_UNARY ||
      req == NULL || resp == NULL) {
    af__set_status(st, GRPC_STATUS_INVALID_ARGUMENT,
                   "af_client_unary: bad arguments");
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  return af__call(&c->transport, rpc, req, 1, resp,
                  deadline_ms ? deadline_ms : c->cfg.deadline_ms, st);
}

int af_client_client_stream(af_client_t *c, af_rpc_id_t rpc, const void *reqs,
                            size_t n, void *resp, uint32_t deadline_ms,
                            af_call_status_t *st)
{
  const af_rpc_info_t *info = af_rpc_info(rpc);
  if (c == NULL || info == NULL || info->kind != AF_RPC_KIND_CLIENT_STREAM ||
      (reqs == NULL && n > 0) || resp == NULL) {
    af__set_status(st, GRPC_STATUS_INVALID_ARGUMENT,
                   "af_client_client_stream: bad arguments");
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  return af__call(&c->transport, rpc, reqs, n, resp,
                  deadline_ms ? deadline_ms : c->cfg.deadline_ms, st);
}

#define AF__DEF_UNARY(ID, fn, rq, rs)                                          \
  int af_client_##fn(af_client_t *c, const antifragility_v1_##rq *req,         \
                     antifragility_v1_##rs *resp, uint32_t deadline_ms,        \
                     af_call_status_t *st)                                     \
  {                                                                            \
    return af_client_unary(c, AF_RPC_##ID, req, resp, deadline_ms, st);        \
  }
#define AF__DEF_CLIENT_STREAM(ID, fn, rq, rs)                                  \
  int af_client_##fn(af_client_t *c, const antifragility_v1_##rq *reqs,        \
                     size_t n, antifragility_v1_##rs *resp,                    \
                     uint32_t deadline_ms, af_call_status_t *st)               \
  {                                                                            \
    return af_client_client_stream(c, AF_RPC_##ID, reqs, n, resp, deadline_ms, \
                                   st);                                        \
  }
#define AF__DEF_SERVER_STREAM(ID, fn, rq, rs)
#define AF__DEF(ID, fn, svc, m, rq, rs, kind) AF__DEF_##kind(ID, fn, rq, rs)
AF_CLIENT_RPCS(AF__DEF)
#undef AF__DEF
