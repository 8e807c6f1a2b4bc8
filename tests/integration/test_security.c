/*
 * test_security.c - afd's security model against a real in-process afd:
 * bearer tokens with roles (read < report < admin) from a tokens file,
 * the caller's identity in the chaos audit, open grpc.health.v1 and
 * reflection, the loopback-only rule without tokens, TLS and mTLS with
 * certificates this test makes with openssl, and the per-connection
 * watcher limit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "af_testclient.h"
#include "afd.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "auth.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

#define CALL_MS 10000
#define HEALTH "/antifragility.v1.HealthService/GetSystemHealth"
#define REPORT "/antifragility.v1.BreakerService/ReportOutcome"
#define REGISTER "/antifragility.v1.BreakerService/RegisterBreaker"
#define INJECT "/antifragility.v1.ChaosService/InjectErrors"

/* sha256("report-token-0123456789") for the "svc" line: the file holds
 * no secret for it. */
#define REPORT_TOKEN "report-token-0123456789"

static char g_dir[64];

static void write_file(const char *name, const char *text)
{
  char path[128];
  snprintf(path, sizeof path, "%s/%s", g_dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void path_of(char *out, size_t cap, const char *name)
{
  snprintf(out, cap, "%s/%s", g_dir, name);
}

static int group_setup(void **state)
{
  (void)state;
  snprintf(g_dir, sizeof g_dir, "/tmp/af-sec-XXXXXX");
  if (mkdtemp(g_dir) == NULL)
    return -1;
  if (af_test_make_certs(g_dir) != 0)
    return -1;
  char cmd[256];
  snprintf(cmd, sizeof cmd,
           "cd %s && printf '%%s' '" REPORT_TOKEN
           "' | sha256sum | cut -c1-64 > report.sha",
           g_dir);
  if (system(cmd) != 0)
    return -1;
  char sha[80] = "";
  char p[128];
  path_of(p, sizeof p, "report.sha");
  FILE *f = fopen(p, "r");
  if (f == NULL || fgets(sha, sizeof sha, f) == NULL)
    return -1;
  fclose(f);
  sha[strcspn(sha, "\n")] = '\0';
  char tokens[512];
  snprintf(tokens, sizeof tokens,
           "# identity role token\n"
           "reader read  read-token-0123456789\n"
           "\n"
           "svc    report sha256:%s\n"
           "ops    admin  admin-token-0123456789\n",
           sha);
  write_file("tokens", tokens);
  return 0;
}

static int group_teardown(void **state)
{
  (void)state;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
  return system(cmd) == 0 ? 0 : -1;
}

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fx_t;

static int setup_tokens(void **state)
{
  fx_t *f = calloc(1, sizeof *f);
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  path_of(cfg.tokens_file, sizeof cfg.tokens_file, "tokens");
  f->ts = af_ts_start(&cfg);
  f->c = af_tc_connect(af_ts_port(f->ts));
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fx_t *f = *state;
  af_tc_close(f->c);
  af_ts_stop(f->ts);
  free(f);
  return 0;
}

static const char *const k_read[] = {"authorization",
                                     "Bearer read-token-0123456789", NULL};
static const char *const k_report[] = {"authorization", "Bearer " REPORT_TOKEN,
                                       NULL};
static const char *const k_admin[] = {"authorization",
                                      "Bearer admin-token-0123456789", NULL};
static const char *const k_wrong[] = {"authorization",
                                      "Bearer not-a-token-at-all", NULL};

static grpc_status_code call(fx_t *f, const char *method,
                             const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *desc,
                             const char *const *md, af_tc_status_t *st,
                             ProtobufCMessage **out)
{
  ProtobufCMessage *resp = NULL;
  grpc_status_code code =
      af_tc_unary(f->c, method, req, desc, &resp, st, md, CALL_MS);
  if (out != NULL)
    *out = resp;
  else if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  return code;
}

static grpc_status_code health(fx_t *f, const char *const *md,
                               af_tc_status_t *st)
{
  Antifragility__V1__GetSystemHealthRequest q =
      ANTIFRAGILITY__V1__GET_SYSTEM_HEALTH_REQUEST__INIT;
  return call(f, HEALTH, &q.base,
              &antifragility__v1__get_system_health_response__descriptor, md,
              st, NULL);
}

static grpc_status_code report(fx_t *f, const char *const *md,
                               af_tc_status_t *st)
{
  Antifragility__V1__ReportOutcomeRequest q =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
  q.breaker_name = "sec-b";
  q.success = true;
  q.auto_register = true;
  return call(f, REPORT, &q.base,
              &antifragility__v1__report_outcome_response__descriptor, md, st,
              NULL);
}

static grpc_status_code inject(fx_t *f, const char *const *md,
                               const char *actor, af_tc_status_t *st,
                               char *actor_out, size_t cap)
{
  Antifragility__V1__InjectErrorsRequest q =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  q.target = "sec-t";
  q.error_rate = 0.5;
  q.actor = (char *)actor;
  ProtobufCMessage *out = NULL;
  grpc_status_code code = call(
      f, INJECT, &q.base,
      &antifragility__v1__inject_errors_response__descriptor, md, st, &out);
  if (out != NULL) {
    Antifragility__V1__InjectErrorsResponse *r = (void *)out;
    snprintf(actor_out, cap, "%s", r->scenario->actor);
    protobuf_c_message_free_unpacked(out, NULL);
  }
  return code;
}

/* ------------------------------------------------------------------ */
/* Tokens and roles                                                   */

static void missing_or_unknown_token_is_unauthenticated(void **state)
{
  fx_t *f = *state;
  af_tc_status_t st;
  assert_int_equal(health(f, NULL, &st), GRPC_STATUS_UNAUTHENTICATED);
  assert_string_equal(st.message,
                      "missing bearer token (authorization: Bearer ...)");
  assert_int_equal(health(f, k_wrong, &st), GRPC_STATUS_UNAUTHENTICATED);
  assert_string_equal(st.message, "invalid bearer token");
  static const char *const basic[] = {"authorization", "Basic abc", NULL};
  assert_int_equal(health(f, basic, &st), GRPC_STATUS_UNAUTHENTICATED);

  /* A stream is refused the same way. */
  Antifragility__V1__WatchHealthRequest wq =
      ANTIFRAGILITY__V1__WATCH_HEALTH_REQUEST__INIT;
  af_tc_stream_t *s = af_tc_stream_open(
      f->c, "/antifragility.v1.HealthService/WatchHealth", &wq.base,
      &antifragility__v1__watch_health_response__descriptor, NULL, 5000);
  assert_int_equal(af_tc_stream_status(s, 5000, &st),
                   GRPC_STATUS_UNAUTHENTICATED);
  af_tc_stream_close(s);
}

static void each_role_admits_its_methods_and_lower_ones(void **state)
{
  fx_t *f = *state;
  af_tc_status_t st;
  char actor[256];
  /* read */
  assert_int_equal(health(f, k_read, &st), GRPC_STATUS_OK);
  assert_int_equal(report(f, k_read, &st), GRPC_STATUS_PERMISSION_DENIED);
  assert_string_equal(st.message,
                      "role read may not call "
                      "/antifragility.v1.BreakerService/ReportOutcome (needs "
                      "report)");
  /* report (its file entry is a sha256 digest) */
  assert_int_equal(health(f, k_report, &st), GRPC_STATUS_OK);
  assert_int_equal(report(f, k_report, &st), GRPC_STATUS_OK);
  assert_int_equal(inject(f, k_report, NULL, &st, actor, sizeof actor),
                   GRPC_STATUS_PERMISSION_DENIED);
  assert_string_equal(st.message,
                      "role report may not call "
                      "/antifragility.v1.ChaosService/InjectErrors (needs "
                      "admin)");
  /* admin */
  assert_int_equal(report(f, k_admin, &st), GRPC_STATUS_OK);
  assert_int_equal(inject(f, k_admin, NULL, &st, actor, sizeof actor),
                   GRPC_STATUS_OK);
  assert_string_equal(actor, "ops"); /* the token's identity */
  assert_int_equal(inject(f, k_admin, "alice", &st, actor, sizeof actor),
                   GRPC_STATUS_OK);
  assert_string_equal(actor, "ops (alice)");
}

static void register_with_update_config_needs_admin(void **state)
{
  fx_t *f = *state;
  af_tc_status_t st;
  Antifragility__V1__RegisterBreakerRequest q =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  q.name = "sec-reg";
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__register_breaker_response__descriptor;
  assert_int_equal(call(f, REGISTER, &q.base, d, k_report, &st, NULL),
                   GRPC_STATUS_OK);
  q.update_config = true;
  assert_int_equal(call(f, REGISTER, &q.base, d, k_report, &st, NULL),
                   GRPC_STATUS_PERMISSION_DENIED);
  assert_string_equal(st.message, "RegisterBreaker with update_config needs "
                                  "role admin (caller has report)");
  assert_int_equal(call(f, REGISTER, &q.base, d, k_admin, &st, NULL),
                   GRPC_STATUS_OK);
}

static void standard_health_and_reflection_need_no_token(void **state)
{
  fx_t *f = *state;
  af_tc_status_t st;
  Grpc__Health__V1__HealthCheckRequest q =
      GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  q.service = "";
  assert_int_equal(call(f, "/grpc.health.v1.Health/Check", &q.base,
                        &grpc__health__v1__health_check_response__descriptor,
                        NULL, &st, NULL),
                   GRPC_STATUS_OK);

  Grpc__Reflection__V1__ServerReflectionRequest rq =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
  rq.message_request_case =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
  rq.list_services = "";
  ProtobufCMessage *m = NULL;
  assert_int_equal(
      af_tc_bidi_once(
          f->c, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
          &rq.base,
          &grpc__reflection__v1__server_reflection_response__descriptor, &m,
          &st, CALL_MS),
      GRPC_STATUS_OK);
  assert_non_null(m);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void every_method_of_ours_has_a_role(void **state)
{
  (void)state;
  assert_int_equal(af_auth_method_role("/grpc.health.v1.Health/Check"),
                   AF_ROLE_NONE);
  assert_int_equal(
      af_auth_method_role(
          "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
      AF_ROLE_NONE);
  assert_int_equal(
      af_auth_method_role("/antifragility.v1.ChaosService/EmergencyStop"),
      AF_ROLE_ADMIN);
  assert_int_equal(
      af_auth_method_role("/antifragility.v1.MeteringService/RecordUsage"),
      AF_ROLE_REPORT);
  assert_int_equal(
      af_auth_method_role("/antifragility.v1.RecoveryService/WatchRecovery"),
      AF_ROLE_READ);
  /* Unknown methods of ours fail safe. */
  assert_int_equal(af_auth_method_role("/antifragility.v1.ChaosService/New"),
                   AF_ROLE_ADMIN);
}

static void bad_tokens_files_are_refused_with_the_line(void **state)
{
  (void)state;
  struct {
    const char *text;
    const char *message_end;
  } cases[] = {
      {"a root xxxxxxxxxxxxxxxxxxxx\n",
       ":1: unknown role 'root' (read, report or admin)"},
      {"# c\na read sha256:abc\n", ":2: bad sha256 digest (64 hex digits)"},
      {"a read short\n", ":1: token shorter than 16 bytes"},
      {"a read\n", ":1: expected 'identity role token'"},
      {"# nothing\n\n", ": no tokens"},
  };
  char path[128];
  path_of(path, sizeof path, "bad-tokens");
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    write_file("bad-tokens", cases[i].text);
    af_auth_t *a = NULL;
    af_error_t err;
    af_error_clear(&err);
    assert_int_equal(af_auth_load(&a, path, &err), AF_EINVAL);
    assert_null(a);
    char want[256];
    snprintf(want, sizeof want, "tokens file %s%s", path, cases[i].message_end);
    assert_string_equal(err.message, want);
  }
  af_auth_t *a = NULL;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_auth_load(&a, "/nonexistent/tokens", &err), AF_EIO);
}

/* ------------------------------------------------------------------ */
/* Listening rules                                                    */

static void open_address_without_tokens_is_refused(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  snprintf(cfg.listen, sizeof cfg.listen, "0.0.0.0:0");
  af_afd_t *afd = NULL;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_afd_start(&cfg, &afd, NULL, &err), AF_EINVAL);
  assert_null(afd);
  assert_string_equal(err.message,
                      "refusing to listen on 0.0.0.0:0 without --tokens-file: "
                      "anyone who can reach it could drive chaos and "
                      "recovery (use --insecure-open to allow)");
  /* Explicitly allowed, or with tokens, it starts. */
  cfg.insecure_open = true;
  int port = 0;
  assert_int_equal(af_afd_start(&cfg, &afd, &port, &err), AF_OK);
  assert_true(port > 0);
  af_afd_stop(afd);
  cfg.insecure_open = false;
  path_of(cfg.tokens_file, sizeof cfg.tokens_file, "tokens");
  assert_int_equal(af_afd_start(&cfg, &afd, &port, &err), AF_OK);
  af_afd_stop(afd);
}

/* ------------------------------------------------------------------ */
/* TLS                                                                */

static char *slurp(const char *name)
{
  char path[128];
  path_of(path, sizeof path, name);
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  char *buf = calloc(1, 16384);
  size_t n = fread(buf, 1, 16383, f);
  fclose(f);
  buf[n] = '\0';
  return buf;
}

static af_test_server_t *start_tls(bool mtls)
{
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  path_of(cfg.tls_cert, sizeof cfg.tls_cert, "srv.pem");
  path_of(cfg.tls_key, sizeof cfg.tls_key, "srv.key");
  if (mtls)
    path_of(cfg.tls_client_ca, sizeof cfg.tls_client_ca, "ca.pem");
  return af_ts_start(&cfg);
}

static void tls_serves_clients_that_trust_its_ca(void **state)
{
  (void)state;
  af_test_server_t *ts = start_tls(false);
  char *ca = slurp("ca.pem");
  grpc_channel_credentials *tls =
      grpc_ssl_credentials_create(ca, NULL, NULL, NULL);
  af_tc_t *c = af_tc_connect_with(af_ts_port(ts), tls);
  fx_t f = {ts, c};
  af_tc_status_t st;
  assert_int_equal(health(&f, NULL, &st), GRPC_STATUS_OK);
  af_tc_close(c);
  grpc_channel_credentials_release(tls);

  /* A plaintext client cannot talk to it. */
  c = af_tc_connect_with(af_ts_port(ts), NULL);
  f.c = c;
  assert_int_equal(health(&f, NULL, &st), GRPC_STATUS_UNAVAILABLE);
  af_tc_close(c);
  free(ca);
  af_ts_stop(ts);
}

static void mtls_requires_a_client_certificate_from_the_ca(void **state)
{
  (void)state;
  af_test_server_t *ts = start_tls(true);
  char *ca = slurp("ca.pem");
  char *cert = slurp("cli.pem");
  char *key = slurp("cli.key");
  af_tc_status_t st;

  grpc_channel_credentials *no_cert =
      grpc_ssl_credentials_create(ca, NULL, NULL, NULL);
  af_tc_t *c = af_tc_connect_with(af_ts_port(ts), no_cert);
  fx_t f = {ts, c};
  assert_int_equal(health(&f, NULL, &st), GRPC_STATUS_UNAVAILABLE);
  af_tc_close(c);
  grpc_channel_credentials_release(no_cert);

  grpc_ssl_pem_key_cert_pair pair = {key, cert};
  grpc_channel_credentials *with_cert =
      grpc_ssl_credentials_create(ca, &pair, NULL, NULL);
  c = af_tc_connect_with(af_ts_port(ts), with_cert);
  f.c = c;
  assert_int_equal(health(&f, NULL, &st), GRPC_STATUS_OK);
  af_tc_close(c);
  grpc_channel_credentials_release(with_cert);
  free(ca);
  free(cert);
  free(key);
  af_ts_stop(ts);
}

static void tls_flags_are_checked_before_listening(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  path_of(cfg.tls_cert, sizeof cfg.tls_cert, "srv.pem");
  af_afd_t *afd = NULL;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_afd_start(&cfg, &afd, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message, "--tls-cert and --tls-key go together");
  path_of(cfg.tls_key, sizeof cfg.tls_key, "tokens"); /* not PEM */
  assert_int_equal(af_afd_start(&cfg, &afd, NULL, &err), AF_EINVAL);
  char want[256];
  snprintf(want, sizeof want, "--tls-key: %s/tokens is not a PEM file", g_dir);
  assert_string_equal(err.message, want);
  assert_null(afd);
}

/* ------------------------------------------------------------------ */
/* Per-connection watcher limit                                       */

static void watchers_per_connection_are_limited(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.max_watchers_per_conn = 2;
  af_test_server_t *ts = af_ts_start(&cfg);
  af_tc_t *c = af_tc_connect_with(af_ts_port(ts), NULL);
  Antifragility__V1__WatchHealthRequest q =
      ANTIFRAGILITY__V1__WATCH_HEALTH_REQUEST__INIT;
  const char *m = "/antifragility.v1.HealthService/WatchHealth";
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__watch_health_response__descriptor;
  af_tc_stream_t *s[3];
  ProtobufCMessage *msg = NULL;
  for (int i = 0; i < 2; i++) {
    s[i] = af_tc_stream_open(c, m, &q.base, d, NULL, 30000);
    assert_int_equal(af_tc_stream_next(s[i], 5000, &msg), 1);
    protobuf_c_message_free_unpacked(msg, NULL);
  }
  s[2] = af_tc_stream_open(c, m, &q.base, d, NULL, 30000);
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s[2], 5000, &st),
                   GRPC_STATUS_RESOURCE_EXHAUSTED);
  assert_string_equal(st.message,
                      "too many watchers on this connection (limit 2)");
  af_tc_stream_close(s[2]);

  /* Another connection has its own allowance. */
  af_tc_t *c2 = af_tc_connect_with(af_ts_port(ts), NULL);
  af_tc_stream_t *other = af_tc_stream_open(c2, m, &q.base, d, NULL, 30000);
  assert_int_equal(af_tc_stream_next(other, 5000, &msg), 1);
  protobuf_c_message_free_unpacked(msg, NULL);
  af_tc_stream_close(other);

  /* A closed stream frees its slot. */
  af_tc_stream_close(s[0]);
  int64_t end = af_tc_now_ms() + 5000;
  int got = 0;
  while (got != 1 && af_tc_now_ms() < end) {
    af_tc_stream_t *again = af_tc_stream_open(c, m, &q.base, d, NULL, 30000);
    got = af_tc_stream_next(again, 5000, &msg);
    if (got == 1)
      protobuf_c_message_free_unpacked(msg, NULL);
    af_tc_stream_close(again);
  }
  assert_int_equal(got, 1);
  af_tc_stream_close(s[1]);
  af_tc_close(c2);
  af_tc_close(c);
  af_ts_stop(ts);
}

#define TT(name) cmocka_unit_test_setup_teardown(name, setup_tokens, teardown)

int main(void)
{
  const struct CMUnitTest tests[] = {
      TT(missing_or_unknown_token_is_unauthenticated),
      TT(each_role_admits_its_methods_and_lower_ones),
      TT(register_with_update_config_needs_admin),
      TT(standard_health_and_reflection_need_no_token),
      cmocka_unit_test(every_method_of_ours_has_a_role),
      cmocka_unit_test(bad_tokens_files_are_refused_with_the_line),
      cmocka_unit_test(open_address_without_tokens_is_refused),
      cmocka_unit_test(tls_serves_clients_that_trust_its_ca),
      cmocka_unit_test(mtls_requires_a_client_certificate_from_the_ca),
      cmocka_unit_test(tls_flags_are_checked_before_listening),
      cmocka_unit_test(watchers_per_connection_are_limited),
  };
  return cmocka_run_group_tests_name("integration_security", tests, group_setup,
                                     group_teardown);
}
