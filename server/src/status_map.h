/*
 * status_map.h - the one place where af_status_t becomes a gRPC status.
 *
 * Thread-safety: af_status_to_grpc is pure; af_rpc_fail_status has the
 * thread-safety of af_rpc_fail (any thread).
 */
#ifndef AF_STATUS_MAP_H
#define AF_STATUS_MAP_H

#include <grpc/status.h>

#include "af/status.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

/* AF_OK -> OK; EINVAL, EBLAST -> INVALID_ARGUMENT; ENOTFOUND -> NOT_FOUND;
 * EEXIST -> ALREADY_EXISTS; EFULL, ELIMIT, EBUDGET, ENOMEM ->
 * RESOURCE_EXHAUSTED; ESTOPPED, EHASH, ESTATE, EOPEN, EPROTECTED ->
 * FAILED_PRECONDITION; ESHUTDOWN, EIO -> UNAVAILABLE; anything else ->
 * INTERNAL. Cannot fail. */
grpc_status_code af_status_to_grpc(af_status_t s);

/* Fails rpc with af_status_to_grpc(s) and err->message if err is non-NULL
 * and has a message, else af_status_str(s). s must not be AF_OK (AF_OK is
 * sent as INTERNAL "internal error: failed with ok"). err borrowed. */
void af_rpc_fail_status(af_rpc_t *rpc, af_status_t s, const af_error_t *err);

#ifdef __cplusplus
}
#endif
#endif /* AF_STATUS_MAP_H */
