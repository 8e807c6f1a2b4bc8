/*
 * auth.h - bearer tokens with roles, and which role each RPC needs.
 *
 * Roles are ordered: read < report < admin; a token's role admits every
 * RPC that needs that role or a lower one.
 *   read    Get*, List*, Watch*, CheckInjection, QueryUsage, the
 *           HealthService, metrics.
 *   report  ReportOutcome(s), ReportState, RegisterBreaker (without
 *           update_config), RecordUsage(Stream).
 *   admin   chaos activations, DeactivateScenario, EmergencyStop,
 *           ResetChaos; every RecoveryService change; ResetBreaker,
 *           ResetAllBreakers, UnregisterBreaker, RegisterBreaker with
 *           update_config.
 * grpc.health.v1 and server reflection need no token (probes and tools).
 * A method of ours missing from the table needs admin (fail safe).
 *
 * Tokens file: one token per line, `identity role token`, '#' comments and
 * blank lines ignored. `token` is either `sha256:<64 hex digits>` (the
 * SHA-256 of the bearer token: the file then holds no secret) or the token
 * itself (at least 16 bytes). Clients send `authorization: Bearer <token>`
 * metadata. Every presented token is hashed and compared with every entry
 * in constant time.
 *
 * Thread-safety: af_auth_load / af_auth_destroy single-owner; after load
 * the table is read-only and af_auth_authorize is thread-safe.
 */
#ifndef AF_AUTH_H
#define AF_AUTH_H

#include <stddef.h>

#include "af/status.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  AF_ROLE_NONE = 0,
  AF_ROLE_READ = 1,
  AF_ROLE_REPORT = 2,
  AF_ROLE_ADMIN = 3,
} af_role_t;

/* "read", "report", "admin"; "none" otherwise. */
const char *af_role_name(af_role_t r);

/* The role a method path needs; AF_ROLE_NONE for methods open to all
 * (grpc.health.v1, reflection, anything outside antifragility.v1). */
af_role_t af_auth_method_role(const char *method);

typedef struct af_auth af_auth_t;

/* Reads the tokens file at path. AF_OK and *out (owned, af_auth_destroy);
 * AF_EIO "cannot read tokens file PATH: REASON"; AF_EINVAL with err
 * naming the line ("tokens file PATH:3: unknown role 'root'", "... bad
 * sha256 digest", "... token shorter than 16 bytes", "... expected
 * 'identity role token'", "... no tokens"). */
af_status_t af_auth_load(af_auth_t **out, const char *path, af_error_t *err);

/* NULL is a no-op. */
void af_auth_destroy(af_auth_t *a);

size_t af_auth_count(const af_auth_t *a);

/* The authorizer for af_server_set_authorizer, ctx = the af_auth_t. With
 * ctx NULL (no tokens configured) every call is admitted as admin with
 * the peer address as identity. Otherwise a call to a method that needs a
 * role must carry a known bearer token (UNAUTHENTICATED "missing bearer
 * token" / "invalid bearer token") whose role suffices
 * (PERMISSION_DENIED "role report may not call /pkg.Svc/Method (needs
 * admin)"); the token's identity and role are recorded on the rpc. */
grpc_status_code af_auth_authorize(af_rpc_t *rpc, const char *method, void *ctx,
                                   char *msg, size_t cap);

/* For handlers that need more than their method's role for some inputs:
 * true if the caller may act as `need`; otherwise fails rpc with
 * PERMISSION_DENIED "<what> needs role admin (caller has report)" and
 * returns false. Always true when no tokens are configured. */
bool af_auth_require(af_rpc_t *rpc, af_role_t need, const char *what);

/* The caller's name for audit trails: the token identity, else the peer
 * address. Owned by the rpc. */
const char *af_auth_caller(af_rpc_t *rpc);

#ifdef __cplusplus
}
#endif
#endif /* AF_AUTH_H */
