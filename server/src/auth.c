/*
 * auth.c - the tokens table and the per-method role check.
 *
 * Only SHA-256 digests are kept in memory, whatever the file held. A check
 * hashes the presented token once and compares it with every entry using
 * CRYPTO_memcmp, without stopping at a match, so the time taken does not
 * depend on which entry (if any) matched or on how much of a digest was
 * right.
 */
#include "auth.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "af/alloc.h"

#define DIGEST_LEN 32
#define IDENTITY_MAX 64
#define MIN_TOKEN_LEN 16
#define LINE_MAX_LEN 1024

typedef struct {
  char identity[IDENTITY_MAX + 1];
  af_role_t role;
  unsigned char digest[DIGEST_LEN];
} entry_t;

struct af_auth {
  entry_t *entries;
  size_t n;
};

const char *af_role_name(af_role_t r)
{
  switch (r) {
  case AF_ROLE_READ:
    return "read";
  case AF_ROLE_REPORT:
    return "report";
  case AF_ROLE_ADMIN:
    return "admin";
  default:
    return "none";
  }
}

static bool parse_role(const char *s, af_role_t *out)
{
  for (af_role_t r = AF_ROLE_READ; r <= AF_ROLE_ADMIN; r++) {
    if (strcmp(s, af_role_name(r)) == 0) {
      *out = r;
      return true;
    }
  }
  return false;
}

/* ------------------------------------------------------------------ */
/* Method table                                                       */

typedef struct {
  const char *method; /* after "/antifragility.v1." */
  af_role_t role;
} method_role_t;

static const method_role_t k_roles[] = {
    {"BreakerService/RegisterBreaker", AF_ROLE_REPORT},
    {"BreakerService/ReportOutcome", AF_ROLE_REPORT},
    {"BreakerService/ReportOutcomes", AF_ROLE_REPORT},
    {"BreakerService/ReportState", AF_ROLE_REPORT},
    {"BreakerService/GetBreaker", AF_ROLE_READ},
    {"BreakerService/ListBreakers", AF_ROLE_READ},
    {"BreakerService/ResetBreaker", AF_ROLE_ADMIN},
    {"BreakerService/ResetAllBreakers", AF_ROLE_ADMIN},
    {"BreakerService/UnregisterBreaker", AF_ROLE_ADMIN},
    {"BreakerService/WatchBreakers", AF_ROLE_READ},
    {"HealthService/GetSystemHealth", AF_ROLE_READ},
    {"HealthService/GetHealthHistory", AF_ROLE_READ},
    {"HealthService/WatchHealth", AF_ROLE_READ},
    {"HealthService/GetHealthMetrics", AF_ROLE_READ},
    {"RecoveryService/ScheduleRecovery", AF_ROLE_ADMIN},
    {"RecoveryService/ExecuteRecovery", AF_ROLE_ADMIN},
    {"RecoveryService/CancelRecovery", AF_ROLE_ADMIN},
    {"RecoveryService/ApproveRecovery", AF_ROLE_ADMIN},
    {"RecoveryService/GetRecoveryStatus", AF_ROLE_READ},
    {"RecoveryService/SetRecoveryPolicy", AF_ROLE_ADMIN},
    {"RecoveryService/GetRecoveryPolicy", AF_ROLE_READ},
    {"RecoveryService/WatchRecovery", AF_ROLE_READ},
    {"ChaosService/InjectLatency", AF_ROLE_ADMIN},
    {"ChaosService/InjectErrors", AF_ROLE_ADMIN},
    {"ChaosService/ForceCircuitOpen", AF_ROLE_ADMIN},
    {"ChaosService/SimulateResourceExhaustion", AF_ROLE_ADMIN},
    {"ChaosService/DeactivateScenario", AF_ROLE_ADMIN},
    {"ChaosService/ListScenarios", AF_ROLE_READ},
    {"ChaosService/EmergencyStop", AF_ROLE_ADMIN},
    {"ChaosService/ResetChaos", AF_ROLE_ADMIN},
    {"ChaosService/GetChaosMetrics", AF_ROLE_READ},
    {"ChaosService/CheckInjection", AF_ROLE_READ},
    {"ChaosService/WatchScenarios", AF_ROLE_READ},
    {"MeteringService/RecordUsage", AF_ROLE_REPORT},
    {"MeteringService/RecordUsageStream", AF_ROLE_REPORT},
    {"MeteringService/QueryUsage", AF_ROLE_READ},
    {"MeteringService/GetMeteringMetrics", AF_ROLE_READ},
};

af_role_t af_auth_method_role(const char *method)
{
  static const char prefix[] = "/antifragility.v1.";
  if (method == NULL || strncmp(method, prefix, sizeof prefix - 1) != 0)
    return AF_ROLE_NONE;
  const char *rest = method + sizeof prefix - 1;
  for (size_t i = 0; i < sizeof k_roles / sizeof *k_roles; i++)
    if (strcmp(rest, k_roles[i].method) == 0)
      return k_roles[i].role;
  return AF_ROLE_ADMIN;
}

/* ------------------------------------------------------------------ */
/* Tokens file                                                        */

static bool sha256(const void *data, size_t len, unsigned char out[DIGEST_LEN])
{
  unsigned int n = 0;
  return EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) == 1 &&
         n == DIGEST_LEN;
}

static int hex_val(char c)
{
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static bool parse_digest(const char *hex, unsigned char out[DIGEST_LEN])
{
  if (strlen(hex) != 2 * DIGEST_LEN)
    return false;
  for (size_t i = 0; i < DIGEST_LEN; i++) {
    int hi = hex_val(hex[2 * i]), lo = hex_val(hex[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return false;
    out[i] = (unsigned char)(hi << 4 | lo);
  }
  return true;
}

/* One non-comment line into e; false with err naming the line. */
static bool parse_line(char *line, entry_t *e, const char *path, int lineno,
                       af_error_t *err)
{
  char *save = NULL;
  char *id = strtok_r(line, " \t", &save);
  char *role = strtok_r(NULL, " \t", &save);
  char *tok = strtok_r(NULL, " \t", &save);
  char *extra = strtok_r(NULL, " \t", &save);
  if (id == NULL || role == NULL || tok == NULL || extra != NULL) {
    af_error_set(err, AF_EINVAL,
                 "tokens file %s:%d: expected 'identity role token'", path,
                 lineno);
    return false;
  }
  if (strlen(id) > IDENTITY_MAX) {
    af_error_set(err, AF_EINVAL,
                 "tokens file %s:%d: identity longer than %d bytes", path,
                 lineno, IDENTITY_MAX);
    return false;
  }
  if (!parse_role(role, &e->role)) {
    af_error_set(err, AF_EINVAL,
                 "tokens file %s:%d: unknown role '%s' (read, report or "
                 "admin)",
                 path, lineno, role);
    return false;
  }
  snprintf(e->identity, sizeof e->identity, "%s", id);
  if (strncmp(tok, "sha256:", 7) == 0) {
    if (!parse_digest(tok + 7, e->digest)) {
      af_error_set(err, AF_EINVAL,
                   "tokens file %s:%d: bad sha256 digest (64 hex digits)", path,
                   lineno);
      return false;
    }
    return true;
  }
  if (strlen(tok) < MIN_TOKEN_LEN) {
    af_error_set(err, AF_EINVAL,
                 "tokens file %s:%d: token shorter than %d bytes", path, lineno,
                 MIN_TOKEN_LEN);
    return false;
  }
  bool ok = sha256(tok, strlen(tok), e->digest);
  OPENSSL_cleanse(tok, strlen(tok));
  if (!ok)
    af_error_set(err, AF_EINTERNAL, "tokens file %s:%d: cannot hash token",
                 path, lineno);
  return ok;
}

af_status_t af_auth_load(af_auth_t **out, const char *path, af_error_t *err)
{
  if (out == NULL || path == NULL)
    return af_error_set(err, AF_EINVAL, "tokens file path is required");
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return af_error_set(err, AF_EIO, "cannot read tokens file %s: %s", path,
                        strerror(errno));
  af_auth_t *a = af_calloc(1, sizeof *a);
  if (a == NULL) {
    fclose(f);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  char line[LINE_MAX_LEN];
  int lineno = 0;
  size_t cap = 0;
  af_status_t st = AF_OK;
  while (fgets(line, sizeof line, f) != NULL) {
    lineno++;
    size_t len = strlen(line);
    if (len == sizeof line - 1 && line[len - 1] != '\n') {
      st = af_error_set(err, AF_EINVAL, "tokens file %s:%d: line too long",
                        path, lineno);
      break;
    }
    line[strcspn(line, "\r\n")] = '\0';
    char *p = line + strspn(line, " \t");
    if (*p == '\0' || *p == '#')
      continue;
    if (a->n == cap) {
      size_t ncap = cap ? cap * 2 : 8;
      entry_t *ne = af_realloc(a->entries, ncap * sizeof *ne);
      if (ne == NULL) {
        st = af_error_set(err, AF_ENOMEM, "out of memory");
        break;
      }
      a->entries = ne;
      cap = ncap;
    }
    if (!parse_line(p, &a->entries[a->n], path, lineno, err)) {
      st = err != NULL && err->code != AF_OK ? err->code : AF_EINVAL;
      break;
    }
    a->n++;
  }
  OPENSSL_cleanse(line, sizeof line);
  fclose(f);
  if (st == AF_OK && a->n == 0)
    st = af_error_set(err, AF_EINVAL, "tokens file %s: no tokens", path);
  if (st != AF_OK) {
    af_auth_destroy(a);
    return st;
  }
  *out = a;
  return AF_OK;
}

void af_auth_destroy(af_auth_t *a)
{
  if (a == NULL)
    return;
  if (a->entries != NULL)
    OPENSSL_cleanse(a->entries, a->n * sizeof *a->entries);
  af_free(a->entries);
  af_free(a);
}

size_t af_auth_count(const af_auth_t *a) { return a != NULL ? a->n : 0; }

/* ------------------------------------------------------------------ */
/* Checks                                                             */

/* The entry whose digest matches token, or NULL; every entry compared. */
static const entry_t *match(const af_auth_t *a, const char *token)
{
  unsigned char d[DIGEST_LEN];
  if (!sha256(token, strlen(token), d))
    return NULL;
  const entry_t *found = NULL;
  for (size_t i = 0; i < a->n; i++) {
    bool eq = CRYPTO_memcmp(d, a->entries[i].digest, DIGEST_LEN) == 0;
    found = eq && found == NULL ? &a->entries[i] : found;
  }
  return found;
}

/* The token of "Bearer <token>" (scheme case-insensitive), or NULL. */
static const char *bearer(const char *header)
{
  if (header == NULL || strncasecmp(header, "bearer ", 7) != 0)
    return NULL;
  const char *t = header + 7;
  t += strspn(t, " ");
  return *t != '\0' ? t : NULL;
}

grpc_status_code af_auth_authorize(af_rpc_t *rpc, const char *method, void *ctx,
                                   char *msg, size_t cap)
{
  const af_auth_t *a = ctx;
  af_role_t need = af_auth_method_role(method);
  if (a == NULL) {
    af_rpc_set_identity(rpc, NULL, AF_ROLE_ADMIN);
    return GRPC_STATUS_OK;
  }
  const char *tok = bearer(af_rpc_metadata(rpc, "authorization"));
  if (tok == NULL) {
    if (need == AF_ROLE_NONE)
      return GRPC_STATUS_OK;
    snprintf(msg, cap, "missing bearer token (authorization: Bearer ...)");
    return GRPC_STATUS_UNAUTHENTICATED;
  }
  const entry_t *e = match(a, tok);
  if (e == NULL) {
    if (need == AF_ROLE_NONE)
      return GRPC_STATUS_OK;
    snprintf(msg, cap, "invalid bearer token");
    return GRPC_STATUS_UNAUTHENTICATED;
  }
  af_rpc_set_identity(rpc, e->identity, (int)e->role);
  if (e->role < need) {
    snprintf(msg, cap, "role %s may not call %s (needs %s)",
             af_role_name(e->role), method, af_role_name(need));
    return GRPC_STATUS_PERMISSION_DENIED;
  }
  return GRPC_STATUS_OK;
}

bool af_auth_require(af_rpc_t *rpc, af_role_t need, const char *what)
{
  af_role_t have = (af_role_t)af_rpc_role(rpc);
  if (have == AF_ROLE_NONE || have >= need)
    return true; /* NONE: no authorizer ran (tests, embedded use) */
  af_rpc_fail(rpc, GRPC_STATUS_PERMISSION_DENIED,
              "%s needs role %s (caller has %s)", what, af_role_name(need),
              af_role_name(have));
  return false;
}

const char *af_auth_caller(af_rpc_t *rpc)
{
  const char *id = af_rpc_identity(rpc);
  return id[0] != '\0' ? id : af_rpc_peer(rpc);
}
