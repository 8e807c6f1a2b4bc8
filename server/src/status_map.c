/*
 * status_map.c - af_status_t -> gRPC status, in exactly one place.
 *
 * Stateless; thread-safe.
 */
#include "status_map.h"

grpc_status_code af_status_to_grpc(af_status_t s)
{
  switch (s) {
  case AF_OK:
    return GRPC_STATUS_OK;
  case AF_EINVAL:
  case AF_EBLAST:
    return GRPC_STATUS_INVALID_ARGUMENT;
  case AF_ENOTFOUND:
    return GRPC_STATUS_NOT_FOUND;
  case AF_EEXIST:
    return GRPC_STATUS_ALREADY_EXISTS;
  case AF_EFULL:
  case AF_ELIMIT:
  case AF_EBUDGET:
  case AF_ENOMEM:
    return GRPC_STATUS_RESOURCE_EXHAUSTED;
  case AF_ESTOPPED:
  case AF_EHASH:
  case AF_ESTATE:
  case AF_EOPEN:
  case AF_EPROTECTED:
    return GRPC_STATUS_FAILED_PRECONDITION;
  case AF_ESHUTDOWN:
  case AF_EIO:
    return GRPC_STATUS_UNAVAILABLE;
  case AF_EINTERNAL:
    return GRPC_STATUS_INTERNAL;
  }
  return GRPC_STATUS_INTERNAL;
}

void af_rpc_fail_status(af_rpc_t *rpc, af_status_t s, const af_error_t *err)
{
  if (s == AF_OK) {
    af_rpc_fail(rpc, GRPC_STATUS_INTERNAL, "internal error: failed with ok");
    return;
  }
  const char *msg = err && err->message[0] ? err->message : af_status_str(s);
  af_rpc_fail(rpc, af_status_to_grpc(s), "%s", msg);
}
