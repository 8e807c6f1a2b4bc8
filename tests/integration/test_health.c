/*
 * test_health.c - integration tests for server/src/svc_health.c
 * (antifragility.v1.HealthService) against a real in-process afd.
 *
 * Breaker transitions are caused through the engine directly (the core
 * breaker API on af_engine_breakers), not through BreakerService, so this
 * suite depends on nothing but the health service and the framework.
 * Waits are bounded polls on real events; nothing sleeps for a timeout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af_testclient.h"
#include "af/engine.h"
#include "antifragility/v1/health.pb-c.h"

#define M(x) "/antifragility.v1.HealthService/" x
#define HS(x) ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_##x
#define BS(x) ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_##x
#define HASH "cdd01ef066bc6cf2"

#define assert_near(a, b, eps)                                                 \
  assert_true(fabs((double)(a) - (double)(b)) <= (eps))

typedef Antifragility__V1__WatchHealthResponse watch_msg_t;
typedef Antifragility__V1__SystemHealthReport report_t;

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fx_t;

static fx_t *fx_start(const af_config_t *cfg)
{
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->ts = af_ts_start(cfg);
  f->c = af_tc_connect(af_ts_port(f->ts));
  assert_non_null(f->c);
  return f;
}

static void fx_stop(fx_t *f)
{
  af_tc_close(f->c);
  af_ts_stop(f->ts);
  free(f);
}

static int setup(void **state)
{
  *state = fx_start(NULL);
  return 0;
}

static int teardown(void **state)
{
  fx_stop(*state);
  return 0;
}

static double now_ms_precise(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

static af_breaker_registry_t *reg(fx_t *f)
{
  return af_engine_breakers(af_ts_engine(f->ts));
}

/* Creates a breaker (long reset_timeout: no OPEN -> HALF_OPEN by itself
 * during a test); returns an owned handle. */
static af_breaker_t *add_breaker(fx_t *f, const char *name)
{
  af_breaker_config_t bc;
  af_breaker_config_init(&bc);
  bc.reset_timeout_ms = 600000;
  af_breaker_t *b = NULL;
  af_error_t err;
  assert_int_equal(
      af_breaker_registry_get_or_create(reg(f), name, &bc, &b, NULL, &err),
      AF_OK);
  return b;
}

static void set_state(af_breaker_t *b, af_breaker_state_t s)
{
  assert_int_equal(af_breaker_set_state(b, s, "test"), AF_OK);
}

static Antifragility__V1__GetSystemHealthResponse *get_health(fx_t *f)
{
  Antifragility__V1__GetSystemHealthRequest req =
      ANTIFRAGILITY__V1__GET_SYSTEM_HEALTH_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary(f->c, M("GetSystemHealth"), &req.base,
                  &antifragility__v1__get_system_health_response__descriptor,
                  &resp, &st, NULL, 5000),
      GRPC_STATUS_OK);
  Antifragility__V1__GetSystemHealthResponse *r =
      (Antifragility__V1__GetSystemHealthResponse *)resp;
  assert_non_null(r->report);
  return r;
}

static Antifragility__V1__GetHealthMetricsResponse *get_metrics(fx_t *f)
{
  Antifragility__V1__GetHealthMetricsRequest req =
      ANTIFRAGILITY__V1__GET_HEALTH_METRICS_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(
      af_tc_unary(f->c, M("GetHealthMetrics"), &req.base,
                  &antifragility__v1__get_health_metrics_response__descriptor,
                  &resp, NULL, NULL, 5000),
      GRPC_STATUS_OK);
  return (Antifragility__V1__GetHealthMetricsResponse *)resp;
}

static void free_msg(void *m)
{
  if (m != NULL) {
    protobuf_c_message_free_unpacked(m, NULL);
  }
}

static af_tc_stream_t *open_watch(fx_t *f, bool include_score_changes)
{
  Antifragility__V1__WatchHealthRequest req =
      ANTIFRAGILITY__V1__WATCH_HEALTH_REQUEST__INIT;
  req.include_score_changes = include_score_changes;
  return af_tc_stream_open(
      f->c, M("WatchHealth"), &req.base,
      &antifragility__v1__watch_health_response__descriptor, NULL, 60000);
}

/* The next message within wait_ms (fails the test otherwise). */
static watch_msg_t *next_msg(af_tc_stream_t *s, int wait_ms)
{
  ProtobufCMessage *m = NULL;
  int r = af_tc_stream_next(s, wait_ms, &m);
  if (r != 1) {
    fail_msg("no WatchHealth message within %d ms (%d)", wait_ms, r);
  }
  return (watch_msg_t *)m;
}

/* The next non-heartbeat message whose report has this status. */
static watch_msg_t *next_with_status(af_tc_stream_t *s,
                                     Antifragility__V1__HealthStatus want,
                                     int wait_ms)
{
  int64_t deadline = af_tc_now_ms() + wait_ms;
  for (;;) {
    int left = (int)(deadline - af_tc_now_ms());
    if (left <= 0) {
      fail_msg("no WatchHealth message with status %d", (int)want);
    }
    watch_msg_t *m = next_msg(s, left);
    if (!m->heartbeat && m->report != NULL && m->report->status == want) {
      return m;
    }
    free_msg(m);
  }
}

static bool has_name(char **names, size_t n, const char *name)
{
  for (size_t i = 0; i < n; i++) {
    if (strcmp(names[i], name) == 0) {
      return true;
    }
  }
  return false;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------------ */
/* GetSystemHealth                                                    */

static void system_health_without_breakers_is_one_and_healthy(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__GetSystemHealthResponse *r = get_health(f);
  const report_t *rep = r->report;
  assert_int_equal(rep->status, HS(HEALTHY));
  assert_near(rep->health_score, 1.0, 1e-12);
  assert_int_equal(rep->total_breakers, 0);
  assert_int_equal(rep->n_circuit_details, 0);
  assert_int_equal(rep->n_degraded_services, 0);
  assert_int_equal(rep->n_critical_services, 0);
  assert_false(rep->truncated);
  assert_non_null(rep->timestamp);
  assert_true(rep->timestamp->seconds > 1600000000);
  assert_string_equal(rep->constitutional_hash, HASH);
  free_msg(r);
}

static void expect_report(fx_t *f, Antifragility__V1__HealthStatus status,
                          double score, uint32_t closed, uint32_t half_open,
                          uint32_t open, uint32_t disabled)
{
  Antifragility__V1__GetSystemHealthResponse *r = get_health(f);
  const report_t *rep = r->report;
  assert_int_equal(rep->status, status);
  assert_near(rep->health_score, score, 1e-9);
  assert_int_equal(rep->closed_breakers, closed);
  assert_int_equal(rep->half_open_breakers, half_open);
  assert_int_equal(rep->open_breakers, open);
  assert_int_equal(rep->disabled_breakers, disabled);
  assert_int_equal(rep->total_breakers, closed + half_open + open + disabled);
  assert_int_equal(rep->n_degraded_services, half_open);
  assert_int_equal(rep->n_critical_services, open);
  free_msg(r);
}

static void
system_health_follows_breaker_states_at_exact_thresholds(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = add_breaker(f, "svc-a");
  af_breaker_t *b = add_breaker(f, "svc-b");
  af_breaker_t *c = add_breaker(f, "svc-c");
  af_breaker_t *d = add_breaker(f, "svc-d");
  expect_report(f, HS(HEALTHY), 1.0, 4, 0, 0, 0);
  set_state(d, AF_BREAKER_OPEN); /* 3 of 4 closed: 0.75 */
  expect_report(f, HS(HEALTHY), 0.75, 3, 0, 1, 0);
  set_state(c, AF_BREAKER_HALF_OPEN); /* 2.5 / 4 = 0.625 */
  expect_report(f, HS(DEGRADED), 0.625, 2, 1, 1, 0);
  set_state(c, AF_BREAKER_OPEN); /* 2 of 4: exactly 0.5 */
  expect_report(f, HS(DEGRADED), 0.5, 2, 0, 2, 0);
  set_state(b, AF_BREAKER_HALF_OPEN); /* 1.5 / 4 */
  expect_report(f, HS(CRITICAL), 0.375, 1, 1, 2, 0);
  set_state(b, AF_BREAKER_OPEN);
  expect_report(f, HS(CRITICAL), 0.25, 1, 0, 3, 0);
  /* DISABLED counts as closed in the score, FORCED_OPEN as open */
  set_state(b, AF_BREAKER_CLOSED);
  assert_int_equal(af_breaker_force(a, AF_BREAKER_DISABLED, NULL), AF_OK);
  expect_report(f, HS(DEGRADED), 0.5, 1, 0, 2, 1);
  assert_int_equal(af_breaker_unforce(a, NULL), AF_OK);
  assert_int_equal(af_breaker_force(b, AF_BREAKER_FORCED_OPEN, NULL), AF_OK);
  expect_report(f, HS(CRITICAL), 0.25, 1, 0, 3, 0);

  /* lists and details: names sorted, states and counters per breaker */
  assert_int_equal(af_breaker_unforce(b, NULL), AF_OK); /* -> CLOSED */
  set_state(c, AF_BREAKER_HALF_OPEN);
  af_breaker_record_failure(b, "timeout");
  af_breaker_record_failure(b, "timeout");
  af_breaker_record_success(a);
  Antifragility__V1__GetSystemHealthResponse *r = get_health(f);
  const report_t *rep = r->report;
  assert_int_equal(rep->n_degraded_services, 1);
  assert_string_equal(rep->degraded_services[0], "svc-c");
  assert_int_equal(rep->n_critical_services, 1);
  assert_string_equal(rep->critical_services[0], "svc-d");
  assert_int_equal(rep->n_circuit_details, 4);
  const char *names[] = {"svc-a", "svc-b", "svc-c", "svc-d"};
  const Antifragility__V1__BreakerState states[] = {BS(CLOSED), BS(CLOSED),
                                                    BS(HALF_OPEN), BS(OPEN)};
  for (size_t i = 0; i < 4; i++) {
    const Antifragility__V1__CircuitDetail *dt = rep->circuit_details[i];
    assert_string_equal(dt->name, names[i]);
    assert_int_equal(dt->state, states[i]);
    assert_near(dt->weight, 1.0, 1e-12);
    assert_false(dt->stale);
    assert_non_null(dt->last_report);
  }
  assert_int_equal(rep->circuit_details[1]->fail_counter, 2);
  assert_int_equal(rep->circuit_details[0]->success_counter, 1);
  assert_non_null(rep->circuit_details[3]->last_transition);
  assert_near(rep->health_score, 2.5 / 4.0, 1e-9);
  assert_int_equal(rep->status, HS(DEGRADED));
  free_msg(r);
  af_breaker_release(a);
  af_breaker_release(b);
  af_breaker_release(c);
  af_breaker_release(d);
}

static void seven_of_ten_closed_is_exactly_healthy(void **state)
{
  fx_t *f = *state;
  af_breaker_t *bs[10];
  for (int i = 0; i < 10; i++) {
    char name[16];
    snprintf(name, sizeof name, "ten-%d", i);
    bs[i] = add_breaker(f, name);
  }
  for (int i = 0; i < 3; i++) {
    set_state(bs[i], AF_BREAKER_OPEN);
  }
  expect_report(f, HS(HEALTHY), 0.7, 7, 0, 3, 0);
  set_state(bs[3], AF_BREAKER_HALF_OPEN); /* 6.5 / 10 */
  expect_report(f, HS(DEGRADED), 0.65, 6, 1, 3, 0);
  for (int i = 0; i < 10; i++) {
    af_breaker_release(bs[i]);
  }
}

static void lists_are_cut_at_64_with_truncated_set(void **state)
{
  fx_t *f = *state;
  for (int i = 0; i < 70; i++) {
    char name[16];
    snprintf(name, sizeof name, "many-%02d", i);
    af_breaker_t *b = add_breaker(f, name);
    set_state(b, AF_BREAKER_OPEN);
    af_breaker_release(b);
  }
  Antifragility__V1__GetSystemHealthResponse *r = get_health(f);
  assert_int_equal(r->report->open_breakers, 70);
  assert_int_equal(r->report->n_critical_services, 64);
  assert_int_equal(r->report->n_circuit_details, 64);
  assert_true(r->report->truncated);
  assert_string_equal(r->report->critical_services[0], "many-00");
  assert_int_equal(r->report->status, HS(CRITICAL));
  free_msg(r);
}

static void hash_mismatch_is_failed_precondition(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__GetSystemHealthRequest req =
      ANTIFRAGILITY__V1__GET_SYSTEM_HEALTH_REQUEST__INIT;
  const char *bad[] = {"x-constitutional-hash", "deadbeefdeadbeef", NULL};
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary(f->c, M("GetSystemHealth"), &req.base,
                  &antifragility__v1__get_system_health_response__descriptor,
                  &resp, &st, bad, 5000),
      GRPC_STATUS_FAILED_PRECONDITION);
  assert_null(resp);
  assert_non_null(strstr(st.message, "constitutional hash"));
  const char *good[] = {"x-constitutional-hash", HASH, NULL};
  assert_int_equal(
      af_tc_unary(f->c, M("GetSystemHealth"), &req.base,
                  &antifragility__v1__get_system_health_response__descriptor,
                  &resp, &st, good, 5000),
      GRPC_STATUS_OK);
  free_msg(resp);
}

/* ------------------------------------------------------------------ */
/* GetHealthHistory                                                   */

static grpc_status_code
history(fx_t *f, const Google__Protobuf__Duration *w, uint32_t limit,
        Antifragility__V1__GetHealthHistoryResponse **out, af_tc_status_t *st)
{
  Antifragility__V1__GetHealthHistoryRequest req =
      ANTIFRAGILITY__V1__GET_HEALTH_HISTORY_REQUEST__INIT;
  req.window = (Google__Protobuf__Duration *)w;
  req.limit = limit;
  ProtobufCMessage *resp = NULL;
  grpc_status_code code =
      af_tc_unary(f->c, M("GetHealthHistory"), &req.base,
                  &antifragility__v1__get_health_history_response__descriptor,
                  &resp, st, NULL, 5000);
  *out = (Antifragility__V1__GetHealthHistoryResponse *)resp;
  return code;
}

static void history_rejects_bad_windows_with_invalid_argument(void **state)
{
  fx_t *f = *state;
  const struct {
    int64_t seconds;
    int32_t nanos;
  } bad[] = {{-1, 0}, {0, -1}, {0, 1000000000}, {86401, 0}, {INT64_MAX, 0}};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
    d.seconds = bad[i].seconds;
    d.nanos = bad[i].nanos;
    Antifragility__V1__GetHealthHistoryResponse *r = NULL;
    af_tc_status_t st;
    assert_int_equal(history(f, &d, 0, &r, &st), GRPC_STATUS_INVALID_ARGUMENT);
    assert_null(r);
    assert_string_equal(st.message, "window must be between 0 and 86400000 ms");
  }
  /* the largest window is fine */
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.seconds = 86400;
  Antifragility__V1__GetHealthHistoryResponse *r = NULL;
  assert_int_equal(history(f, &d, 0, &r, NULL), GRPC_STATUS_OK);
  free_msg(r);
  /* a malformed request is refused, not crashed on */
  const unsigned char junk[] = {0x0a, 0xff, 0xff};
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary_raw(
          f->c, M("GetHealthHistory"), junk, sizeof junk,
          &antifragility__v1__get_health_history_response__descriptor, &resp,
          &st, 5000),
      GRPC_STATUS_INVALID_ARGUMENT);
  assert_null(resp);
}

/* Regression (fuzz_afd under clang's UBSan): a history request whose window
 * holds no snapshot offset a NULL pointer. gcc's UBSan does not check that;
 * tests/fuzz/regressions/fuzz_afd replays the input under clang. Here: the
 * empty answer itself. */
static void history_before_the_first_snapshot_is_empty(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.health_interval_ms = 3600000;
  fx_t *f = fx_start(&cfg);
  Antifragility__V1__GetHealthHistoryResponse *r = NULL;
  assert_int_equal(history(f, NULL, 0, &r, NULL), GRPC_STATUS_OK);
  assert_true(r->n_snapshots <= 1); /* at most a snapshot taken at start */
  free_msg(r);
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.nanos = 1000000; /* 1 ms: nothing that old or newer but the start one */
  assert_int_equal(history(f, &d, 1, &r, NULL), GRPC_STATUS_OK);
  free_msg(r);
  fx_stop(f);
}

static void history_holds_snapshots_oldest_first(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.health_interval_ms = 20;
  fx_t *f = fx_start(&cfg);
  af_breaker_t *a = add_breaker(f, "hist-a");
  af_breaker_t *b = add_breaker(f, "hist-b");
  set_state(a, AF_BREAKER_OPEN);
  /* poll until a few snapshots of the current state were taken */
  Antifragility__V1__GetHealthHistoryResponse *r = NULL;
  int64_t deadline = af_tc_now_ms() + 5000;
  for (;;) {
    assert_int_equal(history(f, NULL, 0, &r, NULL), GRPC_STATUS_OK);
    size_t n = r->n_snapshots;
    if (n >= 5 && r->snapshots[n - 1]->open_breakers == 1) {
      break;
    }
    free_msg(r);
    assert_true(af_tc_now_ms() < deadline);
  }
  size_t n = r->n_snapshots;
  for (size_t i = 0; i < n; i++) {
    const Antifragility__V1__HealthSnapshot *s = r->snapshots[i];
    assert_non_null(s->timestamp);
    assert_string_equal(s->constitutional_hash, HASH);
    if (i > 0) {
      const Google__Protobuf__Timestamp *p = r->snapshots[i - 1]->timestamp;
      assert_true(p->seconds < s->timestamp->seconds ||
                  (p->seconds == s->timestamp->seconds &&
                   p->nanos <= s->timestamp->nanos));
    }
  }
  const Antifragility__V1__HealthSnapshot *last = r->snapshots[n - 1];
  assert_int_equal(last->status, HS(DEGRADED));
  assert_near(last->health_score, 0.5, 1e-9);
  assert_int_equal(last->total_breakers, 2);
  assert_int_equal(last->closed_breakers, 1);
  assert_int_equal(last->open_breakers, 1);

  /* limit: the newest N */
  Antifragility__V1__GetHealthHistoryResponse *lim = NULL;
  assert_int_equal(history(f, NULL, 2, &lim, NULL), GRPC_STATUS_OK);
  assert_int_equal(lim->n_snapshots, 2);
  assert_true(
      lim->snapshots[1]->timestamp->seconds > last->timestamp->seconds ||
      (lim->snapshots[1]->timestamp->seconds == last->timestamp->seconds &&
       lim->snapshots[1]->timestamp->nanos >= last->timestamp->nanos));
  free_msg(lim);
  free_msg(r);

  /* a 1 ms window holds at most the newest snapshot or so */
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.nanos = 1000000;
  assert_int_equal(history(f, &d, 0, &r, NULL), GRPC_STATUS_OK);
  assert_true(r->n_snapshots <= 2);
  free_msg(r);
  af_breaker_release(a);
  af_breaker_release(b);
  fx_stop(f);
}

/* ------------------------------------------------------------------ */
/* GetHealthMetrics                                                   */

static void metrics_count_breakers_history_and_status_changes(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.health_interval_ms = 20;
  cfg.history_size = 50;
  fx_t *f = fx_start(&cfg);
  /* the first evaluation (UNKNOWN -> HEALTHY) happens on the first tick */
  Antifragility__V1__GetHealthMetricsResponse *m0 = NULL;
  int64_t first_deadline = af_tc_now_ms() + 5000;
  for (;;) {
    m0 = get_metrics(f);
    if (m0->status_changes >= 1) {
      break;
    }
    free_msg(m0);
    assert_true(af_tc_now_ms() < first_deadline);
  }
  assert_int_equal(m0->status_changes, 1);
  assert_int_equal(m0->max_history_size, 50);
  assert_int_equal(m0->breakers_tracked, 0);
  assert_int_equal(m0->current_status, HS(HEALTHY));
  assert_near(m0->current_health_score, 1.0, 1e-12);
  assert_true(m0->running);
  assert_int_equal(m0->watchers, 0);
  assert_string_equal(m0->constitutional_hash, HASH);

  af_breaker_t *a = add_breaker(f, "met-a");
  af_breaker_t *b = add_breaker(f, "met-b");
  set_state(a, AF_BREAKER_OPEN); /* HEALTHY -> DEGRADED */
  set_state(b, AF_BREAKER_OPEN); /* -> CRITICAL */
  set_state(a, AF_BREAKER_CLOSED);
  set_state(b, AF_BREAKER_CLOSED); /* -> DEGRADED -> HEALTHY */
  int64_t deadline = af_tc_now_ms() + 5000;
  Antifragility__V1__GetHealthMetricsResponse *m = NULL;
  for (;;) {
    m = get_metrics(f);
    if (m->history_size >= 3) {
      break;
    }
    free_msg(m);
    assert_true(af_tc_now_ms() < deadline);
  }
  assert_int_equal(m->breakers_tracked, 2);
  assert_int_equal(m->status_changes, m0->status_changes + 4);
  assert_true(m->callbacks_fired >= m0->callbacks_fired + 4);
  assert_int_equal(m->callback_errors, 0);
  assert_true(m->snapshots_collected >= m->history_size);
  assert_true(m->history_size <= 50);
  assert_int_equal(m->current_status, HS(HEALTHY));
  free_msg(m);
  free_msg(m0);
  af_breaker_release(a);
  af_breaker_release(b);
  fx_stop(f);
}

/* ------------------------------------------------------------------ */
/* WatchHealth                                                        */

static void watch_sends_the_current_report_first(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = add_breaker(f, "first-a");
  af_breaker_t *b = add_breaker(f, "first-b");
  set_state(a, AF_BREAKER_HALF_OPEN);
  af_tc_stream_t *s = open_watch(f, false);
  watch_msg_t *m = next_msg(s, 5000);
  assert_int_equal(m->sequence, 1);
  assert_false(m->heartbeat);
  assert_true(m->changed);
  assert_int_equal(m->previous_status, HS(UNSPECIFIED));
  assert_non_null(m->report);
  assert_int_equal(m->report->status, HS(HEALTHY)); /* 0.75 */
  assert_near(m->report->health_score, 0.75, 1e-9);
  assert_int_equal(m->report->total_breakers, 2);
  assert_int_equal(m->report->n_degraded_services, 1);
  assert_string_equal(m->report->degraded_services[0], "first-a");
  assert_string_equal(m->report->constitutional_hash, HASH);
  free_msg(m);
  af_tc_stream_close(s);
  af_breaker_release(a);
  af_breaker_release(b);
}

static void watch_hears_of_a_transition_within_milliseconds(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = add_breaker(f, "fast-a");
  af_breaker_t *b = add_breaker(f, "fast-b");
  af_tc_stream_t *s = open_watch(f, false);
  watch_msg_t *m = next_msg(s, 5000);
  uint64_t seq = m->sequence;
  free_msg(m);
  enum { N = 21 };
  double delays[N];
  for (int i = 0; i < N; i++) {
    bool open = i % 2 == 0;
    double t0 = now_ms_precise();
    set_state(a, open ? AF_BREAKER_OPEN : AF_BREAKER_CLOSED);
    m = next_msg(s, 5000);
    delays[i] = now_ms_precise() - t0;
    assert_false(m->heartbeat);
    assert_int_equal(m->sequence, seq + 1);
    seq = m->sequence;
    assert_true(m->changed);
    assert_int_equal(m->report->status, open ? HS(DEGRADED) : HS(HEALTHY));
    assert_int_equal(m->previous_status, open ? HS(HEALTHY) : HS(DEGRADED));
    assert_int_equal(m->report->open_breakers, open ? 1 : 0);
    free_msg(m);
  }
  qsort(delays, N, sizeof *delays, cmp_double);
  print_message("transition -> WatchHealth delay: median %.3f ms, max %.3f ms "
                "(%d samples)\n",
                delays[N / 2], delays[N - 1], N);
  assert_true(delays[N / 2] < 100.0); /* far below the 1 s snapshot tick */
  af_tc_stream_close(s);
  af_breaker_release(a);
  af_breaker_release(b);
}

static void watch_follows_healthy_degraded_critical_and_back(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = add_breaker(f, "hdc-a");
  af_breaker_t *b = add_breaker(f, "hdc-b");
  af_breaker_t *c = add_breaker(f, "hdc-c");
  af_tc_stream_t *s = open_watch(f, false);
  watch_msg_t *m = next_msg(s, 5000);
  assert_int_equal(m->report->status, HS(HEALTHY));
  assert_int_equal(m->report->total_breakers, 3);
  free_msg(m);

  set_state(a, AF_BREAKER_OPEN);
  m = next_with_status(s, HS(DEGRADED), 5000);
  assert_near(m->report->health_score, 2.0 / 3.0, 1e-9);
  assert_true(has_name(m->report->critical_services,
                       m->report->n_critical_services, "hdc-a"));
  assert_true(m->changed);
  assert_int_equal(m->previous_status, HS(HEALTHY));
  free_msg(m);

  set_state(b, AF_BREAKER_OPEN);
  m = next_with_status(s, HS(CRITICAL), 5000);
  assert_int_equal(m->report->open_breakers, 2);
  assert_int_equal(m->previous_status, HS(DEGRADED));
  uint64_t seq = m->sequence;
  free_msg(m);

  set_state(a, AF_BREAKER_CLOSED);
  set_state(b, AF_BREAKER_CLOSED);
  m = next_with_status(s, HS(HEALTHY), 5000);
  assert_true(m->sequence > seq);
  assert_int_equal(m->report->open_breakers, 0);
  assert_int_equal(m->report->n_critical_services, 0);
  free_msg(m);
  af_tc_stream_close(s);
  af_breaker_release(a);
  af_breaker_release(b);
  af_breaker_release(c);
}

static void watch_hears_of_breakers_joining_and_leaving(void **state)
{
  fx_t *f = *state;
  af_tc_stream_t *s = open_watch(f, false);
  watch_msg_t *m = next_msg(s, 5000);
  assert_int_equal(m->report->total_breakers, 0);
  free_msg(m);
  /* closed breakers joining an all-closed system move no score */
  for (uint32_t i = 1; i <= 20; i++) {
    char name[16];
    snprintf(name, sizeof name, "join-%02u", i);
    af_breaker_release(add_breaker(f, name));
    m = next_msg(s, 5000);
    assert_int_equal(m->report->total_breakers, i);
    assert_int_equal(m->report->status, HS(HEALTHY));
    assert_false(m->changed);
    assert_int_equal(m->previous_status, HS(HEALTHY));
    free_msg(m);
  }
  assert_int_equal(af_breaker_registry_unregister(reg(f), "join-01"), AF_OK);
  m = next_msg(s, 5000);
  assert_int_equal(m->report->total_breakers, 19);
  free_msg(m);
  af_tc_stream_close(s);
}

static void score_only_changes_need_include_score_changes(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = add_breaker(f, "w-a");
  af_breaker_t *b = add_breaker(f, "w-b");
  af_breaker_t *c = add_breaker(f, "w-c");
  set_state(a, AF_BREAKER_OPEN); /* 2/3 DEGRADED */
  af_tc_stream_t *plain = open_watch(f, false);
  af_tc_stream_t *scores = open_watch(f, true);
  watch_msg_t *m = next_msg(plain, 5000);
  uint64_t plain_seq = m->sequence;
  free_msg(m);
  free_msg(next_msg(scores, 5000));

  /* a heavier open breaker: score 2/4, same status and lists */
  af_breaker_config_t bc;
  af_breaker_config_init(&bc);
  bc.reset_timeout_ms = 600000;
  bc.weight = 2.0;
  af_error_t err;
  assert_int_equal(
      af_breaker_registry_get_or_create(reg(f), "w-a", &bc, NULL, NULL, &err),
      AF_OK);
  m = next_msg(scores, 5000);
  assert_near(m->report->health_score, 0.5, 1e-9);
  assert_int_equal(m->report->status, HS(DEGRADED));
  assert_false(m->changed);
  free_msg(m);

  /* the plain stream's next message is the status change, nothing before */
  set_state(b, AF_BREAKER_OPEN); /* 1/4 CRITICAL */
  m = next_msg(plain, 5000);
  assert_int_equal(m->sequence, plain_seq + 1);
  assert_int_equal(m->report->status, HS(CRITICAL));
  assert_near(m->report->health_score, 0.25, 1e-9);
  free_msg(m);
  af_tc_stream_close(plain);
  af_tc_stream_close(scores);
  af_breaker_release(a);
  af_breaker_release(b);
  af_breaker_release(c);
}

static void slow_reader_gets_the_latest_state_coalesced(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = add_breaker(f, "slow-a");
  af_breaker_t *b = add_breaker(f, "slow-b");
  af_tc_stream_t *s = open_watch(f, false);
  free_msg(next_msg(s, 5000));
  af_server_stats_t before;
  af_server_stats(af_ts_server(f->ts), &before);
  enum { FLIPS = 501 };
  for (int i = 0; i < FLIPS; i++) { /* ends OPEN: DEGRADED */
    set_state(a, i % 2 == 0 ? AF_BREAKER_OPEN : AF_BREAKER_CLOSED);
  }
  set_state(b, AF_BREAKER_HALF_OPEN); /* last change: 0.25, CRITICAL */
  /* read everything; the last message is the final state */
  watch_msg_t *last = NULL;
  size_t n = 0;
  int64_t deadline = af_tc_now_ms() + 10000;
  for (;;) {
    ProtobufCMessage *pm = NULL;
    int r = af_tc_stream_next(s, 300, &pm);
    assert_int_not_equal(r, -1);
    if (r == 0) {
      if (last != NULL && last->report->status == HS(CRITICAL) &&
          last->report->half_open_breakers == 1) {
        break; /* quiet and at the final state */
      }
      assert_true(af_tc_now_ms() < deadline);
      continue;
    }
    free_msg(last);
    last = (watch_msg_t *)pm;
    n++;
  }
  af_server_stats_t after;
  af_server_stats(af_ts_server(f->ts), &after);
  print_message(
      "%d transitions -> %zu WatchHealth messages, %llu coalesced\n", FLIPS + 1,
      n,
      (unsigned long long)(after.stream_coalesced - before.stream_coalesced));
  assert_true(after.stream_coalesced > before.stream_coalesced);
  assert_true(n < FLIPS + 1);
  assert_int_equal(last->report->open_breakers, 1);
  assert_int_equal(last->report->half_open_breakers, 1);
  assert_string_equal(last->report->critical_services[0], "slow-a");
  assert_string_equal(last->report->degraded_services[0], "slow-b");
  free_msg(last);
  af_tc_stream_close(s);
  af_breaker_release(a);
  af_breaker_release(b);
}

static void cancelled_watch_is_reaped_at_once(void **state)
{
  fx_t *f = *state;
  af_tc_stream_t *s = open_watch(f, false);
  free_msg(next_msg(s, 5000));
  Antifragility__V1__GetHealthMetricsResponse *m = get_metrics(f);
  assert_int_equal(m->watchers, 1);
  free_msg(m);
  af_tc_stream_cancel(s);
  assert_int_equal(af_tc_stream_status(s, 5000, NULL), GRPC_STATUS_CANCELLED);
  int64_t deadline = af_tc_now_ms() + 5000;
  for (;;) {
    af_server_stats_t st;
    af_server_stats(af_ts_server(f->ts), &st);
    m = get_metrics(f);
    bool reaped = m->watchers == 0 && st.streams_open == 0;
    free_msg(m);
    if (reaped) {
      break;
    }
    assert_true(af_tc_now_ms() < deadline);
  }
  af_tc_stream_close(s);
  /* events after the reap reach nobody and break nothing */
  af_breaker_t *a = add_breaker(f, "after-cancel");
  set_state(a, AF_BREAKER_OPEN);
  af_breaker_release(a);
  Antifragility__V1__GetSystemHealthResponse *r = get_health(f);
  assert_int_equal(r->report->open_breakers, 1);
  free_msg(r);
}

static void idle_watch_gets_heartbeats_with_sequence(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.heartbeat_ms = 100;
  fx_t *f = fx_start(&cfg);
  af_tc_stream_t *s = open_watch(f, false);
  watch_msg_t *m = next_msg(s, 5000);
  assert_false(m->heartbeat);
  free_msg(m);
  m = next_msg(s, 5000);
  assert_true(m->heartbeat);
  assert_int_equal(m->sequence, 2);
  assert_null(m->report);
  free_msg(m);
  /* a change after heartbeats still comes as a report */
  af_breaker_t *a = add_breaker(f, "hb-a");
  set_state(a, AF_BREAKER_OPEN);
  m = next_with_status(s, HS(CRITICAL), 5000);
  assert_true(m->sequence > 2);
  free_msg(m);
  af_breaker_release(a);
  af_tc_stream_close(s);
  fx_stop(f);
}

static void shutdown_ends_an_open_watch_with_ok(void **state)
{
  (void)state;
  fx_t *f = fx_start(NULL);
  af_tc_stream_t *s = open_watch(f, false);
  free_msg(next_msg(s, 5000));
  af_ts_stop(f->ts); /* returns only once every call state is freed */
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s, 5000, &st), GRPC_STATUS_OK);
  af_tc_stream_close(s);
  af_tc_close(f->c);
  free(f);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          system_health_without_breakers_is_one_and_healthy, setup, teardown),
      cmocka_unit_test_setup_teardown(
          system_health_follows_breaker_states_at_exact_thresholds, setup,
          teardown),
      cmocka_unit_test_setup_teardown(seven_of_ten_closed_is_exactly_healthy,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(lists_are_cut_at_64_with_truncated_set,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(hash_mismatch_is_failed_precondition,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          history_rejects_bad_windows_with_invalid_argument, setup, teardown),
      cmocka_unit_test(history_before_the_first_snapshot_is_empty),
      cmocka_unit_test(history_holds_snapshots_oldest_first),
      cmocka_unit_test(metrics_count_breakers_history_and_status_changes),
      cmocka_unit_test_setup_teardown(watch_sends_the_current_report_first,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          watch_hears_of_a_transition_within_milliseconds, setup, teardown),
      cmocka_unit_test_setup_teardown(
          watch_follows_healthy_degraded_critical_and_back, setup, teardown),
      cmocka_unit_test_setup_teardown(
          watch_hears_of_breakers_joining_and_leaving, setup, teardown),
      cmocka_unit_test_setup_teardown(
          score_only_changes_need_include_score_changes, setup, teardown),
      cmocka_unit_test_setup_teardown(
          slow_reader_gets_the_latest_state_coalesced, setup, teardown),
      cmocka_unit_test_setup_teardown(cancelled_watch_is_reaped_at_once, setup,
                                      teardown),
      cmocka_unit_test(idle_watch_gets_heartbeats_with_sequence),
      cmocka_unit_test(shutdown_ends_an_open_watch_with_ok),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
