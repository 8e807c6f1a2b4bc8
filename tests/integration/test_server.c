/*
 * test_server.c - framework-level behaviour of a real in-process afd
 * (server.c, grpc_health.c, reflection.c, afd.c) over loopback, with the
 * raw gRPC core test client.
 *
 * Each case starts its own server (127.0.0.1:0, --memory) so no state
 * leaks between cases. Waits are on real events with bounded timeouts
 * (poll until the condition holds, a few seconds at most); nothing sleeps
 * to let a timeout pass.
 *
 * The constitutional-hash check runs after method lookup and before the
 * request is decoded or the handler runs (server.c on_new_call), so the
 * framework cases use a bare af_server with a test method under
 * /antifragility.v1.; the afd case uses the first of afd's own services
 * registered in this tree (skipped if there is none yet).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "af/breaker.h"
#include "af/types.h"
#include "af_testclient.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH "/grpc.health.v1.Health/Watch"
#define REFLECT_V1 "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"
#define REFLECT_V1ALPHA                                                        \
  "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
#define TEST_METHOD "/antifragility.v1.TestService/Echo"
#define ST(x) GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

typedef Grpc__Health__V1__HealthCheckRequest check_req_t;
typedef Grpc__Health__V1__HealthCheckResponse check_resp_t;
static const ProtobufCMessageDescriptor *const k_check_resp =
    &grpc__health__v1__health_check_response__descriptor;

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fixture_t;

static int setup(void **state)
{
  fixture_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->ts = af_ts_start(NULL);
  f->c = af_tc_connect(af_ts_port(f->ts));
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fixture_t *f = *state;
  af_tc_close(f->c);
  af_ts_stop(f->ts);
  free(f);
  return 0;
}

static void sleep_ms(int ms)
{
  struct timespec t = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

static uint64_t streams_open(af_server_t *srv)
{
  af_server_stats_t s;
  af_server_stats(srv, &s);
  return s.streams_open;
}

/* Polls until streams_open == want or wait_ms passed. */
static bool wait_streams_open(af_server_t *srv, uint64_t want, int wait_ms)
{
  int64_t end = af_tc_now_ms() + wait_ms;
  for (;;) {
    if (streams_open(srv) == want) {
      return true;
    }
    if (af_tc_now_ms() >= end) {
      return false;
    }
    sleep_ms(10);
  }
}

static grpc_status_code check(af_tc_t *c, const char *service,
                              check_resp_t **out, af_tc_status_t *st)
{
  check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  ProtobufCMessage *resp = NULL;
  grpc_status_code code = af_tc_unary(c, HEALTH_CHECK, &req.base, k_check_resp,
                                      &resp, st, NULL, 2000);
  *out = (check_resp_t *)resp;
  return code;
}

static af_tc_stream_t *watch(af_tc_t *c, const char *service, int timeout_ms)
{
  check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)service;
  return af_tc_stream_open(c, HEALTH_WATCH, &req.base, k_check_resp, NULL,
                           timeout_ms);
}

/* Next Watch status within wait_ms; fails the test if none arrives. */
static int next_status(af_tc_stream_t *s, int wait_ms)
{
  ProtobufCMessage *m = NULL;
  int r = af_tc_stream_next(s, wait_ms, &m);
  assert_int_equal(r, 1);
  int status = (int)((check_resp_t *)m)->status;
  protobuf_c_message_free_unpacked(m, NULL);
  return status;
}

/* ------------------------------------------------------------------ */
/* Dispatch and decoding                                              */

static void unknown_method_is_unimplemented_at_once(void **state)
{
  fixture_t *f = *state;
  check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  int64_t t0 = af_tc_now_ms();
  assert_int_equal(af_tc_unary(f->c, "/no.such.v1.Service/Nothing", &req.base,
                               k_check_resp, &resp, &st, NULL, 2000),
                   GRPC_STATUS_UNIMPLEMENTED);
  int64_t elapsed = af_tc_now_ms() - t0;
  assert_null(resp);
  assert_true(elapsed < 1000);
  /* Also a method under our prefix that no service registers. */
  assert_int_equal(af_tc_unary(f->c, "/antifragility.v1.NoService/Nothing",
                               &req.base, k_check_resp, &resp, &st, NULL, 2000),
                   GRPC_STATUS_UNIMPLEMENTED);
  af_server_stats_t s;
  af_server_stats(af_ts_server(f->ts), &s);
  assert_int_equal(s.unimplemented, 2);
}

static void malformed_request_is_invalid_argument(void **state)
{
  fixture_t *f = *state;
  /* Field 1 (string) claims 100 bytes but only 2 follow. */
  static const unsigned char bad[] = {0x0a, 0x64, 'x', 'y'};
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(af_tc_unary_raw(f->c, HEALTH_CHECK, bad, sizeof bad,
                                   k_check_resp, &resp, &st, 2000),
                   GRPC_STATUS_INVALID_ARGUMENT);
  assert_null(resp);
  assert_non_null(strstr(st.message, "malformed request"));
  assert_non_null(strstr(st.message, "grpc.health.v1.HealthCheckRequest"));
  /* The server is unharmed. */
  check_resp_t *r = NULL;
  assert_int_equal(check(f->c, "", &r, &st), GRPC_STATUS_OK);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

/* ------------------------------------------------------------------ */
/* Constitutional hash                                                */

static atomic_int g_echo_calls;

static void on_echo(af_rpc_t *rpc, const ProtobufCMessage *req, void *ctx)
{
  (void)req;
  (void)ctx;
  atomic_fetch_add(&g_echo_calls, 1);
  check_resp_t resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = ST(SERVING);
  af_rpc_reply(rpc, &resp.base);
}

static void hash_mismatch_is_refused_before_the_handler_runs(void **state)
{
  (void)state;
  atomic_store(&g_echo_calls, 0);
  af_server_options_t opt;
  af_server_options_init(&opt);
  opt.listen_addr = "127.0.0.1:0";
  af_server_t *srv = NULL;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_server_create(&srv, &opt, &err), AF_OK);
  assert_int_equal(
      af_server_add_unary(srv, TEST_METHOD,
                          &grpc__health__v1__health_check_request__descriptor,
                          on_echo, NULL),
      AF_OK);
  int port = 0;
  assert_int_equal(af_server_start(srv, &port, &err), AF_OK);
  af_tc_t *c = af_tc_connect(port);

  check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  const char *const bad_md[] = {"x-constitutional-hash", "0000000000000000",
                                NULL};
  assert_int_equal(af_tc_unary(c, TEST_METHOD, &req.base, k_check_resp, &resp,
                               &st, bad_md, 2000),
                   GRPC_STATUS_FAILED_PRECONDITION);
  assert_null(resp);
  assert_string_equal(st.message, "constitutional hash mismatch: expected "
                                  "" AF_CONSTITUTIONAL_HASH_DEFAULT);
  assert_int_equal(atomic_load(&g_echo_calls), 0);

  /* Matching hash: the handler runs. */
  const char *const good_md[] = {"x-constitutional-hash",
                                 AF_CONSTITUTIONAL_HASH_DEFAULT, NULL};
  assert_int_equal(af_tc_unary(c, TEST_METHOD, &req.base, k_check_resp, &resp,
                               &st, good_md, 2000),
                   GRPC_STATUS_OK);
  protobuf_c_message_free_unpacked(resp, NULL);
  assert_int_equal(atomic_load(&g_echo_calls), 1);

  /* Absent metadata is accepted. */
  assert_int_equal(af_tc_unary(c, TEST_METHOD, &req.base, k_check_resp, &resp,
                               &st, NULL, 2000),
                   GRPC_STATUS_OK);
  protobuf_c_message_free_unpacked(resp, NULL);
  assert_int_equal(atomic_load(&g_echo_calls), 2);

  af_tc_close(c);
  af_server_shutdown(srv);
  af_server_destroy(srv);
}

/* Methods of afd's own services that take an empty request, in order of
 * preference: the first one registered in this tree is used. */
static const struct {
  const char *service;
  const char *method;
  const ProtobufCMessageDescriptor *req;
  const ProtobufCMessageDescriptor *resp;
} k_afd_methods[] = {
    {"antifragility.v1.HealthService",
     "/antifragility.v1.HealthService/GetSystemHealth",
     &antifragility__v1__get_system_health_request__descriptor,
     &antifragility__v1__get_system_health_response__descriptor},
    {"antifragility.v1.ChaosService",
     "/antifragility.v1.ChaosService/ListScenarios",
     &antifragility__v1__list_scenarios_request__descriptor,
     &antifragility__v1__list_scenarios_response__descriptor},
    {"antifragility.v1.BreakerService",
     "/antifragility.v1.BreakerService/ListBreakers",
     &antifragility__v1__list_breakers_request__descriptor,
     &antifragility__v1__list_breakers_response__descriptor},
};

static void hash_mismatch_on_an_afd_method_is_failed_precondition(void **state)
{
  fixture_t *f = *state;
  size_t i = 0;
  while (
      i < sizeof k_afd_methods / sizeof *k_afd_methods &&
      !af_server_has_service(af_ts_server(f->ts), k_afd_methods[i].service)) {
    i++;
  }
  if (i == sizeof k_afd_methods / sizeof *k_afd_methods) {
    skip(); /* none of these services is in this tree yet */
  }
  ProtobufCMessage *req = calloc(1, k_afd_methods[i].req->sizeof_message);
  assert_non_null(req);
  protobuf_c_message_init(k_afd_methods[i].req, req);
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  const char *const bad_md[] = {"x-constitutional-hash", "deadbeefdeadbeef",
                                NULL};
  assert_int_equal(af_tc_unary(f->c, k_afd_methods[i].method, req,
                               k_afd_methods[i].resp, &resp, &st, bad_md, 2000),
                   GRPC_STATUS_FAILED_PRECONDITION);
  assert_null(resp);
  assert_string_equal(st.message, "constitutional hash mismatch: expected "
                                  "" AF_CONSTITUTIONAL_HASH_DEFAULT);
  const char *const good_md[] = {"x-constitutional-hash",
                                 AF_CONSTITUTIONAL_HASH_DEFAULT, NULL};
  assert_int_equal(af_tc_unary(f->c, k_afd_methods[i].method, req,
                               k_afd_methods[i].resp, &resp, &st, good_md,
                               2000),
                   GRPC_STATUS_OK);
  protobuf_c_message_free_unpacked(resp, NULL);
  free(req);
}

static void hash_is_not_checked_outside_the_antifragility_prefix(void **state)
{
  fixture_t *f = *state;
  check_req_t req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = "";
  const char *const bad_md[] = {"x-constitutional-hash", "0000000000000000",
                                NULL};
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(af_tc_unary(f->c, HEALTH_CHECK, &req.base, k_check_resp,
                               &resp, &st, bad_md, 2000),
                   GRPC_STATUS_OK);
  protobuf_c_message_free_unpacked(resp, NULL);
}

/* ------------------------------------------------------------------ */
/* grpc.health.v1                                                     */

static void
health_check_serves_known_names_and_unknown_is_not_found(void **state)
{
  fixture_t *f = *state;
  check_resp_t *r = NULL;
  af_tc_status_t st;
  assert_int_equal(check(f->c, "", &r, &st), GRPC_STATUS_OK);
  assert_int_equal(r->status, ST(SERVING));
  protobuf_c_message_free_unpacked(&r->base, NULL);

  assert_int_equal(check(f->c, "antifragility.v1.HealthService", &r, &st),
                   GRPC_STATUS_OK);
  assert_int_equal(r->status, ST(SERVING));
  protobuf_c_message_free_unpacked(&r->base, NULL);

  assert_int_equal(check(f->c, "no.such.Service", &r, &st),
                   GRPC_STATUS_NOT_FOUND);
  assert_null(r);
}

static void health_watch_sends_current_status_first_and_stays_open(void **state)
{
  fixture_t *f = *state;
  af_tc_stream_t *s = watch(f->c, "", 10000);
  assert_int_equal(next_status(s, 2000), ST(SERVING));
  ProtobufCMessage *m = NULL;
  assert_int_equal(af_tc_stream_next(s, 100, &m), 0);
  assert_int_equal(af_tc_stream_status(s, 0, NULL), GRPC_STATUS__DO_NOT_USE);
  af_tc_stream_close(s);
}

static void
health_watch_of_unknown_name_is_service_unknown_and_stays_open(void **state)
{
  fixture_t *f = *state;
  af_tc_stream_t *s = watch(f->c, "no.such.Service", 10000);
  assert_int_equal(next_status(s, 2000), ST(SERVICE_UNKNOWN));
  ProtobufCMessage *m = NULL;
  assert_int_equal(af_tc_stream_next(s, 100, &m), 0);
  assert_true(wait_streams_open(af_ts_server(f->ts), 1, 2000));
  af_tc_stream_close(s);
}

static void
health_watch_of_a_breaker_flips_to_not_serving_when_it_trips(void **state)
{
  fixture_t *f = *state;
  af_breaker_registry_t *reg = af_engine_breakers(af_ts_engine(f->ts));
  af_breaker_config_t bc;
  af_breaker_config_init(&bc);
  bc.fail_max = 3;
  af_breaker_t *b = NULL;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(
      af_breaker_registry_get_or_create(reg, "db-primary", &bc, &b, NULL, &err),
      AF_OK);

  af_tc_stream_t *s = watch(f->c, "db-primary", 10000);
  assert_int_equal(next_status(s, 2000), ST(SERVING));
  int64_t t0 = af_tc_now_ms();
  for (int i = 0; i < 3; i++) {
    af_breaker_record_failure(b, "timeout");
  }
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  assert_int_equal(next_status(s, 2000), ST(NOT_SERVING));
  assert_true(af_tc_now_ms() - t0 < 2000);

  check_resp_t *r = NULL;
  af_tc_status_t st;
  assert_int_equal(check(f->c, "db-primary", &r, &st), GRPC_STATUS_OK);
  assert_int_equal(r->status, ST(NOT_SERVING));
  protobuf_c_message_free_unpacked(&r->base, NULL);

  /* And back once it is reset. */
  assert_int_equal(af_breaker_registry_reset(reg, "db-primary"), AF_OK);
  assert_int_equal(next_status(s, 2000), ST(SERVING));
  af_breaker_release(b);
  af_tc_stream_close(s);
}

/* ------------------------------------------------------------------ */
/* Reflection                                                         */

static void list_services_has_all(af_tc_t *c, const char *method)
{
  Grpc__Reflection__V1__ServerReflectionRequest req =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__INIT;
  req.message_request_case =
      GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES;
  req.list_services = "";
  ProtobufCMessage *m = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_bidi_once(
          c, method, &req.base,
          &grpc__reflection__v1__server_reflection_response__descriptor, &m,
          &st, 2000),
      GRPC_STATUS_OK);
  assert_non_null(m);
  Grpc__Reflection__V1__ServerReflectionResponse *r = (void *)m;
  assert_int_equal(
      r->message_response_case,
      GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE);
  static const char *const want[] = {
      "antifragility.v1.BreakerService",  "antifragility.v1.HealthService",
      "antifragility.v1.RecoveryService", "antifragility.v1.ChaosService",
      "antifragility.v1.MeteringService", "grpc.health.v1.Health",
  };
  for (size_t i = 0; i < sizeof want / sizeof *want; i++) {
    bool found = false;
    for (size_t j = 0; j < r->list_services_response->n_service; j++) {
      found = found ||
              strcmp(r->list_services_response->service[j]->name, want[i]) == 0;
    }
    if (!found) {
      fail_msg("%s: list_services lacks %s", method, want[i]);
    }
  }
  protobuf_c_message_free_unpacked(m, NULL);
}

static void reflection_v1_and_v1alpha_list_all_services(void **state)
{
  fixture_t *f = *state;
  list_services_has_all(f->c, REFLECT_V1);
  list_services_has_all(f->c, REFLECT_V1ALPHA);
}

/* ------------------------------------------------------------------ */
/* Stream limits, reaping, shutdown                                   */

static void watcher_over_the_limit_is_resource_exhausted(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.max_watchers = 2;
  af_test_server_t *ts = af_ts_start(&cfg);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  af_tc_stream_t *s1 = watch(c, "", 10000);
  af_tc_stream_t *s2 = watch(c, "", 10000);
  assert_int_equal(next_status(s1, 2000), ST(SERVING));
  assert_int_equal(next_status(s2, 2000), ST(SERVING));

  af_tc_stream_t *s3 = watch(c, "", 10000);
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s3, 2000, &st),
                   GRPC_STATUS_RESOURCE_EXHAUSTED);
  assert_string_equal(st.message, "too many watchers (limit 2)");
  af_tc_stream_close(s3);
  assert_true(wait_streams_open(af_ts_server(ts), 2, 2000));

  /* A slot freed by a cancel can be used again. */
  af_tc_stream_close(s1);
  assert_true(wait_streams_open(af_ts_server(ts), 1, 2000));
  af_tc_stream_t *s4 = watch(c, "", 10000);
  assert_int_equal(next_status(s4, 2000), ST(SERVING));
  af_tc_stream_close(s4);
  af_tc_stream_close(s2);
  af_tc_close(c);
  af_ts_stop(ts);
}

static void cancelled_stream_is_reaped(void **state)
{
  fixture_t *f = *state;
  af_server_t *srv = af_ts_server(f->ts);
  af_tc_stream_t *s = watch(f->c, "", 10000);
  assert_int_equal(next_status(s, 2000), ST(SERVING));
  assert_true(wait_streams_open(srv, 1, 2000));
  af_tc_stream_cancel(s);
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s, 2000, &st), GRPC_STATUS_CANCELLED);
  assert_true(wait_streams_open(srv, 0, 2000));
  af_tc_stream_close(s);
}

static void stream_deadline_ends_it_and_it_is_reaped(void **state)
{
  fixture_t *f = *state;
  af_tc_stream_t *s = watch(f->c, "", 300);
  assert_int_equal(next_status(s, 2000), ST(SERVING));
  assert_int_equal(af_tc_stream_status(s, 3000, NULL),
                   GRPC_STATUS_DEADLINE_EXCEEDED);
  assert_true(wait_streams_open(af_ts_server(f->ts), 0, 2000));
  af_tc_stream_close(s);
}

static void stop_with_an_open_watch_ends_it_with_ok_quickly(void **state)
{
  (void)state;
  af_test_server_t *ts = af_ts_start(NULL);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  af_tc_stream_t *s = watch(c, "", 30000);
  assert_int_equal(next_status(s, 2000), ST(SERVING));
  int64_t t0 = af_tc_now_ms();
  af_ts_stop(ts); /* the client is not even reading meanwhile */
  /* Well under shutdown_grace_ms (2000): nothing waited for a cancel. */
  assert_true(af_tc_now_ms() - t0 < 1500);
  /* Health went NOT_SERVING first, then the stream ended with OK. */
  ProtobufCMessage *m = NULL;
  int last = -1;
  int r;
  while ((r = af_tc_stream_next(s, 2000, &m)) == 1) {
    last = (int)((check_resp_t *)m)->status;
    protobuf_c_message_free_unpacked(m, NULL);
  }
  assert_int_equal(r, -1);
  assert_int_equal(last, ST(NOT_SERVING));
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s, 1000, &st), GRPC_STATUS_OK);
  assert_true(af_tc_now_ms() - t0 < 2000);
  af_tc_stream_close(s);
  af_tc_close(c);
}

static void second_server_on_a_port_in_use_fails_with_eio(void **state)
{
  fixture_t *f = *state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  snprintf(cfg.listen, sizeof cfg.listen, "127.0.0.1:%d", af_ts_port(f->ts));
  af_afd_t *afd = NULL;
  int port = 0;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_afd_start(&cfg, &afd, &port, &err), AF_EIO);
  assert_null(afd);
  assert_int_equal(port, 0);
  assert_non_null(strstr(err.message, "cannot listen on"));
  /* The first server still answers. */
  check_resp_t *r = NULL;
  af_tc_status_t st;
  assert_int_equal(check(f->c, "", &r, &st), GRPC_STATUS_OK);
  protobuf_c_message_free_unpacked(&r->base, NULL);
}

#define CASE(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
  const struct CMUnitTest tests[] = {
      CASE(unknown_method_is_unimplemented_at_once),
      CASE(malformed_request_is_invalid_argument),
      cmocka_unit_test(hash_mismatch_is_refused_before_the_handler_runs),
      CASE(hash_mismatch_on_an_afd_method_is_failed_precondition),
      CASE(hash_is_not_checked_outside_the_antifragility_prefix),
      CASE(health_check_serves_known_names_and_unknown_is_not_found),
      CASE(health_watch_sends_current_status_first_and_stays_open),
      CASE(health_watch_of_unknown_name_is_service_unknown_and_stays_open),
      CASE(health_watch_of_a_breaker_flips_to_not_serving_when_it_trips),
      CASE(reflection_v1_and_v1alpha_list_all_services),
      cmocka_unit_test(watcher_over_the_limit_is_resource_exhausted),
      CASE(cancelled_stream_is_reaped),
      CASE(stream_deadline_ends_it_and_it_is_reaped),
      cmocka_unit_test(stop_with_an_open_watch_ends_it_with_ok_quickly),
      CASE(second_server_on_a_port_in_use_fails_with_eio),
  };
  return cmocka_run_group_tests_name("integration_server", tests, NULL, NULL);
}
