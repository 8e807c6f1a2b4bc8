/*
 * test_client_live.c - libafclient against a real afd started in-process
 * on 127.0.0.1:0 (af_ts_*): synchronous calls, guards reported in the
 * background, a server restart mid-test (same port), chaos followed from
 * WatchScenarios, metering across a restart, health subscriptions.
 *
 * Waits are polls with bounded deadlines (wait_until), never fixed sleeps.
 * Background periods are shortened (report every 50 ms, backoff 20..200
 * ms, metering flush every 50 ms) so each case takes well under a second
 * or two.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>

#include "af/client.h"
#include "af_testclient.h"

#define WAIT_MS 10000

typedef struct {
  af_test_server_t *ts;
  int port;
  af_client_t *c;
} fixture_t;

static void sleep_ms(long ms)
{
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Polls cond(arg) every 10 ms for up to ms. */
static bool wait_until(bool (*cond)(void *), void *arg, int ms)
{
  int64_t end = af_tc_now_ms() + ms;
  while (af_tc_now_ms() < end) {
    if (cond(arg)) {
      return true;
    }
    sleep_ms(10);
  }
  return cond(arg);
}

static af_test_server_t *start_on(int port)
{
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  snprintf(cfg.listen, sizeof cfg.listen, "127.0.0.1:%d", port);
  cfg.flush_interval_ms = 20;
  return af_ts_start(&cfg);
}

static af_client_t *client_for(int port)
{
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
  af_client_config_t cfg;
  af_client_config_init(&cfg);
  cfg.addr = addr;
  cfg.instance_id = "test-1";
  cfg.report_interval_ms = 50;
  cfg.backoff_initial_ms = 20;
  cfg.backoff_max_ms = 200;
  cfg.meter_flush_interval_ms = 50;
  cfg.deadline_ms = 2000;
  af_client_t *c = NULL;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_client_create(&c, &cfg, &err), AF_OK);
  return c;
}

static int setup(void **state)
{
  fixture_t *f = calloc(1, sizeof *f);
  f->ts = start_on(0);
  f->port = af_ts_port(f->ts);
  f->c = client_for(f->port);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fixture_t *f = *state;
  af_client_shutdown(f->c, 500);
  af_client_destroy(f->c);
  af_ts_stop(f->ts);
  free(f);
  return 0;
}

static void restart_server(fixture_t *f)
{
  af_ts_stop(f->ts);
  f->ts = start_on(f->port);
}

/* ---- synchronous calls --------------------------------------------------- */

static void sync_calls_return_responses_and_statuses(void **state)
{
  fixture_t *f = *state;
  antifragility_v1_RegisterBreakerRequest req =
      antifragility_v1_RegisterBreakerRequest_init_zero;
  snprintf(req.name, sizeof req.name, "db");
  req.has_config = true;
  req.config.has_fail_max = true;
  req.config.fail_max.value = 2;
  antifragility_v1_RegisterBreakerResponse *resp = calloc(1, sizeof *resp);
  af_call_status_t st;
  assert_int_equal(af_client_register_breaker(f->c, &req, resp, 0, &st), 0);
  assert_true(resp->created);
  assert_string_equal(resp->breaker.name, "db");
  assert_int_equal(resp->breaker.config.fail_max.value, 2);
  free(resp);

  antifragility_v1_GetBreakerRequest g =
      antifragility_v1_GetBreakerRequest_init_zero;
  snprintf(g.name, sizeof g.name, "missing");
  antifragility_v1_GetBreakerResponse *gr = calloc(1, sizeof *gr);
  assert_int_equal(af_client_get_breaker(f->c, &g, gr, 0, &st), 5);
  assert_int_equal(st.code, 5);
  assert_non_null(strstr(st.message, "missing"));
  free(gr);

  /* client stream: three failures on one ReportOutcomes stream */
  antifragility_v1_ReportOutcomeRequest outs[3];
  for (int i = 0; i < 3; i++) {
    antifragility_v1_ReportOutcomeRequest o =
        antifragility_v1_ReportOutcomeRequest_init_zero;
    snprintf(o.breaker_name, sizeof o.breaker_name, "db");
    outs[i] = o;
  }
  antifragility_v1_ReportOutcomesResponse sum;
  memset(&sum, 0, sizeof sum);
  assert_int_equal(af_client_report_outcomes(f->c, outs, 3, &sum, 0, &st), 0);
  assert_int_equal(sum.received, 3);
  assert_int_equal(sum.applied, 3);
  assert_int_equal(sum.breakers_opened, 1);

  /* a deadline too short to meet */
  antifragility_v1_GetSystemHealthRequest h =
      antifragility_v1_GetSystemHealthRequest_init_zero;
  antifragility_v1_GetSystemHealthResponse *hr = calloc(1, sizeof *hr);
  assert_int_equal(af_client_get_system_health(f->c, &h, hr, 0, &st), 0);
  assert_int_equal(hr->report.status,
                   antifragility_v1_HealthStatus_HEALTH_STATUS_CRITICAL);
  free(hr);
}

static void server_stream_delivers_snapshot_then_events(void **state)
{
  fixture_t *f = *state;
  antifragility_v1_WatchBreakersRequest req =
      antifragility_v1_WatchBreakersRequest_init_zero;
  af_client_stream_t *s = NULL;
  assert_int_equal(
      af_client_watch_open(f->c, AF_RPC_WATCH_BREAKERS, &req, 5000, &s), AF_OK);
  antifragility_v1_WatchBreakersResponse *m = calloc(1, sizeof *m);
  assert_int_equal(af_client_stream_next(s, m, 3000), 1);
  assert_int_equal(m->sequence, 1);
  assert_true(m->snapshot_complete);
  antifragility_v1_RegisterBreakerRequest r =
      antifragility_v1_RegisterBreakerRequest_init_zero;
  snprintf(r.name, sizeof r.name, "cache");
  antifragility_v1_RegisterBreakerResponse *rr = calloc(1, sizeof *rr);
  assert_int_equal(af_client_register_breaker(f->c, &r, rr, 0, NULL), 0);
  free(rr);
  int got;
  do {
    got = af_client_stream_next(s, m, 3000);
  } while (got == 1 && m->heartbeat);
  assert_int_equal(got, 1);
  assert_int_equal(m->sequence, 2);
  assert_int_equal(
      m->kind, antifragility_v1_BreakerEventKind_BREAKER_EVENT_KIND_REGISTERED);
  assert_string_equal(m->breaker.name, "cache");
  af_client_stream_cancel(s);
  assert_int_equal(af_client_stream_next(s, m, 3000), -1);
  af_call_status_t st;
  assert_int_equal(af_client_stream_status(s, &st), 1 /* CANCELLED */);
  af_client_stream_close(s);
  free(m);
}

/* ---- guards ---------------------------------------------------------------
 */

typedef struct {
  af_client_t *c;
  const char *name;
  antifragility_v1_BreakerState want;
  uint64_t min_fail;
} server_sees_t;

static bool server_sees(void *arg)
{
  server_sees_t *w = arg;
  antifragility_v1_GetBreakerRequest g =
      antifragility_v1_GetBreakerRequest_init_zero;
  snprintf(g.name, sizeof g.name, "%s", w->name);
  antifragility_v1_GetBreakerResponse *r = calloc(1, sizeof *r);
  bool ok = af_client_get_breaker(w->c, &g, r, 1000, NULL) == 0 &&
            r->breaker.state == w->want &&
            r->breaker.fail_counter >= w->min_fail;
  free(r);
  return ok;
}

static void guard_opens_locally_and_the_server_sees_it(void **state)
{
  fixture_t *f = *state;
  af_guard_config_t gc;
  af_guard_config_init(&gc);
  gc.fail_max = 3;
  af_guard_t *g = NULL;
  assert_int_equal(af_guard_get(f->c, "payments", &gc, &g, NULL), AF_OK);
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
  af_guard_success(g);
  server_sees_t w = {f->c, "payments",
                     antifragility_v1_BreakerState_BREAKER_STATE_CLOSED, 0};
  assert_true(wait_until(server_sees, &w, WAIT_MS));
  for (int i = 0; i < 3; i++) {
    assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
    af_guard_failure(g, "timeout");
  }
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
  w.want = antifragility_v1_BreakerState_BREAKER_STATE_OPEN;
  w.min_fail = 3;
  assert_true(wait_until(server_sees, &w, WAIT_MS));
  /* The server registered it with the guard's settings and our instance. */
  antifragility_v1_GetBreakerRequest gr =
      antifragility_v1_GetBreakerRequest_init_zero;
  snprintf(gr.name, sizeof gr.name, "payments");
  antifragility_v1_GetBreakerResponse *r = calloc(1, sizeof *r);
  assert_int_equal(af_client_get_breaker(f->c, &gr, r, 0, NULL), 0);
  assert_int_equal(r->breaker.config.fail_max.value, 3);
  assert_int_equal(r->breaker.instance_ids_count, 1);
  assert_string_equal(r->breaker.instance_ids[0], "test-1");
  free(r);
}

static bool report_failed(void *arg)
{
  af_client_guard_stats_t st;
  af_client_guard_stats(arg, &st);
  return st.reports_failed >= 1;
}

static void reports_catch_up_after_a_server_restart(void **state)
{
  fixture_t *f = *state;
  af_guard_config_t gc;
  af_guard_config_init(&gc);
  gc.fail_max = 2;
  af_guard_t *g = NULL;
  assert_int_equal(af_guard_get(f->c, "inventory", &gc, &g, NULL), AF_OK);
  af_guard_success(g);
  server_sees_t w = {f->c, "inventory",
                     antifragility_v1_BreakerState_BREAKER_STATE_CLOSED, 0};
  assert_true(wait_until(server_sees, &w, WAIT_MS));

  af_ts_stop(f->ts);
  f->ts = NULL;
  /* Server down: the guard works on, in nanoseconds, and opens. */
  int64_t t0 = af_tc_now_ms();
  for (int i = 0; i < 2; i++) {
    assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
    af_guard_failure(g, NULL);
  }
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
  assert_true(af_tc_now_ms() - t0 < 100);
  assert_true(wait_until(report_failed, f->c, WAIT_MS));

  f->ts = start_on(f->port);
  /* The new server knows nothing; the client re-registers and reports. */
  w.want = antifragility_v1_BreakerState_BREAKER_STATE_OPEN;
  w.min_fail = 2;
  assert_true(wait_until(server_sees, &w, WAIT_MS));
}

/* ---- chaos ----------------------------------------------------------------
 */

static bool chaos_mirrored(void *arg)
{
  af_client_guard_stats_t st;
  af_client_guard_stats(arg, &st);
  return st.chaos_active > 0;
}

static bool chaos_cleared(void *arg) { return !chaos_mirrored(arg); }

static void
chaos_injected_on_the_server_applies_to_guards_until_it_expires(void **state)
{
  fixture_t *f = *state;
  af_guard_config_t gc;
  af_guard_config_init(&gc);
  gc.fail_max = 1000000;
  af_guard_t *pay = NULL, *other = NULL;
  assert_int_equal(af_guard_get(f->c, "pay", &gc, &pay, NULL), AF_OK);
  assert_int_equal(af_guard_get(f->c, "other", &gc, &other, NULL), AF_OK);
  assert_int_equal(af_guard_allow(pay), AF_GUARD_PASS);
  af_guard_success(pay);

  antifragility_v1_InjectErrorsRequest req =
      antifragility_v1_InjectErrorsRequest_init_zero;
  snprintf(req.target, sizeof req.target, "pay");
  req.error_rate = 1.0;
  req.has_duration = true;
  req.duration.seconds = 2;
  antifragility_v1_InjectErrorsResponse *resp = calloc(1, sizeof *resp);
  af_call_status_t cs;
  assert_int_equal(af_client_inject_errors(f->c, &req, resp, 0, &cs), 0);
  free(resp);
  assert_true(wait_until(chaos_mirrored, f->c, WAIT_MS));
  assert_int_equal(af_guard_allow(pay), AF_GUARD_CHAOS_ERROR);
  assert_int_equal(af_guard_allow(pay), AF_GUARD_CHAOS_ERROR);
  assert_int_equal(af_guard_allow(other), AF_GUARD_PASS); /* not in radius */
  af_guard_success(other);
  /* 2 s later it expired (locally and on the server). */
  assert_true(wait_until(chaos_cleared, f->c, WAIT_MS));
  assert_int_equal(af_guard_allow(pay), AF_GUARD_PASS);
  af_guard_success(pay);

  /* Latency: allow sleeps the delay. */
  antifragility_v1_InjectLatencyRequest lr =
      antifragility_v1_InjectLatencyRequest_init_zero;
  snprintf(lr.target, sizeof lr.target, "pay");
  lr.has_delay = true;
  lr.delay.nanos = 50 * 1000000;
  lr.has_duration = true;
  lr.duration.seconds = 10;
  antifragility_v1_InjectLatencyResponse *lresp = calloc(1, sizeof *lresp);
  assert_int_equal(af_client_inject_latency(f->c, &lr, lresp, 0, &cs), 0);
  assert_true(wait_until(chaos_mirrored, f->c, WAIT_MS));
  int64_t t0 = af_tc_now_ms();
  assert_int_equal(af_guard_allow(pay), AF_GUARD_PASS);
  assert_true(af_tc_now_ms() - t0 >= 45);
  af_guard_success(pay);
  /* Deactivated on the server: gone from the client at once. */
  antifragility_v1_DeactivateScenarioRequest dr =
      antifragility_v1_DeactivateScenarioRequest_init_zero;
  snprintf(dr.name, sizeof dr.name, "%s", lresp->scenario.name);
  antifragility_v1_DeactivateScenarioResponse *dresp = calloc(1, sizeof *dresp);
  assert_int_equal(af_client_deactivate_scenario(f->c, &dr, dresp, 0, &cs), 0);
  assert_true(wait_until(chaos_cleared, f->c, WAIT_MS));
  free(lresp);
  free(dresp);
}

/* ---- metering --------------------------------------------------------------
 */

typedef struct {
  af_client_t *c;
  uint64_t flushed;
} flushed_t;

static bool flushed_reached(void *arg)
{
  flushed_t *w = arg;
  af_meter_metrics_t m;
  af_client_meter_metrics(w->c, &m);
  return m.flushed >= w->flushed && m.depth == 0;
}

static bool sink_failed(void *arg)
{
  af_meter_metrics_t m;
  af_client_meter_metrics(arg, &m);
  return m.sink_errors > 0;
}

static uint64_t server_count(af_client_t *c, const char *tenant)
{
  antifragility_v1_QueryUsageRequest q =
      antifragility_v1_QueryUsageRequest_init_zero;
  snprintf(q.tenant_id, sizeof q.tenant_id, "%s", tenant);
  antifragility_v1_QueryUsageResponse *r = calloc(1, sizeof *r);
  af_call_status_t st;
  assert_int_equal(af_client_query_usage(c, &q, r, 0, &st), 0);
  uint64_t n = r->total.count;
  free(r);
  return n;
}

static void enqueue_n(af_client_t *c, const char *tenant, int n)
{
  for (int i = 0; i < n; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, tenant, AF_OP_AGENT_MESSAGE);
    ev.units = 2;
    af_error_t err;
    assert_int_equal(af_client_meter_enqueue(c, &ev, &err), AF_OK);
  }
}

static void
metering_across_a_server_restart_counts_every_event_once(void **state)
{
  fixture_t *f = *state;
  enqueue_n(f->c, "acme", 50);
  flushed_t w = {f->c, 50};
  assert_true(wait_until(flushed_reached, &w, WAIT_MS));
  assert_int_equal(server_count(f->c, "acme"), 50);

  af_ts_stop(f->ts);
  f->ts = NULL;
  enqueue_n(f->c, "acme", 70); /* queued while the server is down */
  assert_true(wait_until(sink_failed, f->c, WAIT_MS));
  f->ts = start_on(f->port); /* a fresh (memory) server */
  w.flushed = 120;
  assert_true(wait_until(flushed_reached, &w, WAIT_MS));
  /* The new server got exactly the 70 it had not seen, once each. */
  assert_int_equal(server_count(f->c, "acme"), 70);
  af_meter_metrics_t m;
  af_client_meter_metrics(f->c, &m);
  assert_int_equal(m.queued, 120);
  assert_int_equal(m.flushed, 120);
  assert_int_equal(m.dropped_queue_full, 0);
  antifragility_v1_GetMeteringMetricsRequest mr =
      antifragility_v1_GetMeteringMetricsRequest_init_zero;
  antifragility_v1_GetMeteringMetricsResponse mm;
  memset(&mm, 0, sizeof mm);
  assert_int_equal(af_client_get_metering_metrics(f->c, &mr, &mm, 0, NULL), 0);
  assert_int_equal(mm.flushed, 70);
}

static void shutdown_flushes_queued_events_within_the_deadline(void **state)
{
  fixture_t *f = *state;
  enqueue_n(f->c, "globex", 25);
  /* No wait: shutdown must hand them over itself. */
  assert_int_equal(af_client_shutdown(f->c, 3000), 0);
  af_client_t *probe = client_for(f->port);
  assert_int_equal(server_count(probe, "globex"), 25);
  af_client_destroy(probe);
}

static void shutdown_with_the_server_down_reports_what_is_left(void **state)
{
  fixture_t *f = *state;
  af_ts_stop(f->ts);
  f->ts = NULL;
  enqueue_n(f->c, "initech", 10);
  int64_t t0 = af_tc_now_ms();
  assert_int_equal(af_client_shutdown(f->c, 300), 10);
  assert_true(af_tc_now_ms() - t0 < 3000);
  f->ts = start_on(f->port); /* for teardown */
}

/* A TCP listener that never speaks HTTP/2: calls to it hang until their
 * deadline. Returns the fd (close it) and its port. */
static int black_hole(int *port)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 16), 0);
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  *port = ntohs(a.sin_port);
  return fd;
}

static bool round_started(void *arg)
{
  af_client_guard_stats_t st;
  af_client_guard_stats(arg, &st);
  return st.rounds >= 1;
}

static void shutdown_keeps_its_deadline_when_the_server_hangs(void **state)
{
  (void)state;
  int port = 0;
  int fd = black_hole(&port);
  af_client_t *c = client_for(port); /* call deadline 2000 ms */
  af_guard_config_t gc;
  af_guard_config_init(&gc);
  gc.fail_max = 1;
  af_guard_t *g = NULL;
  assert_int_equal(af_guard_get(c, "hung", &gc, &g, NULL), AF_OK);
  af_guard_failure(g, NULL); /* opens: the reporter calls the black hole */
  enqueue_n(c, "hooli", 5);
  assert_true(wait_until(round_started, c, WAIT_MS));
  int64_t t0 = af_tc_now_ms();
  assert_int_equal(af_client_shutdown(c, 300), 5);
  int64_t took = af_tc_now_ms() - t0;
  /* The reporter's call in flight (2 s deadline) is cancelled, the final
   * round and the flush keep to what is left of the 300 ms. */
  assert_true(took < 1000);
  af_client_destroy(c);
  close(fd);
}

/* ---- health subscription -----------------------------------------------
 */

typedef struct {
  int messages;
  int firsts;
  uint64_t reconnects;
  int resyncs;
  antifragility_v1_HealthStatus last;
} health_seen_t;

static void on_health(const af_health_update_t *u, void *ctx)
{
  health_seen_t *h = ctx;
  __atomic_add_fetch(&h->messages, 1, __ATOMIC_SEQ_CST);
  if (u->first) {
    __atomic_add_fetch(&h->firsts, 1, __ATOMIC_SEQ_CST);
  }
  if (u->resync) {
    __atomic_add_fetch(&h->resyncs, 1, __ATOMIC_SEQ_CST);
  }
  __atomic_store_n(&h->reconnects, u->reconnects, __ATOMIC_SEQ_CST);
  if (!u->msg->heartbeat) {
    __atomic_store_n(&h->last, u->msg->report.status, __ATOMIC_SEQ_CST);
  }
}

static bool first_seen(void *arg)
{
  return __atomic_load_n(&((health_seen_t *)arg)->firsts, __ATOMIC_SEQ_CST) >=
         1;
}
static bool reconnected(void *arg)
{
  health_seen_t *h = arg;
  return __atomic_load_n(&h->firsts, __ATOMIC_SEQ_CST) >= 2 &&
         __atomic_load_n(&h->reconnects, __ATOMIC_SEQ_CST) >= 1;
}
static bool critical_seen(void *arg)
{
  return __atomic_load_n(&((health_seen_t *)arg)->last, __ATOMIC_SEQ_CST) ==
         antifragility_v1_HealthStatus_HEALTH_STATUS_CRITICAL;
}

static void health_subscription_follows_changes_and_reconnects(void **state)
{
  fixture_t *f = *state;
  health_seen_t h;
  memset(&h, 0, sizeof h);
  af_health_sub_t *sub = NULL;
  assert_int_equal(af_client_health_subscribe(f->c, false, on_health, &h, &sub),
                   AF_OK);
  assert_true(wait_until(first_seen, &h, WAIT_MS));
  assert_int_equal(__atomic_load_n(&h.last, __ATOMIC_SEQ_CST),
                   antifragility_v1_HealthStatus_HEALTH_STATUS_HEALTHY);
  restart_server(f);
  assert_true(wait_until(reconnected, &h, WAIT_MS));
  /* A change on the new server reaches the callback. */
  antifragility_v1_ReportOutcomeRequest o =
      antifragility_v1_ReportOutcomeRequest_init_zero;
  snprintf(o.breaker_name, sizeof o.breaker_name, "svc");
  o.auto_register = true;
  o.has_config = true;
  o.config.has_fail_max = true;
  o.config.fail_max.value = 1;
  antifragility_v1_ReportOutcomeResponse orr;
  memset(&orr, 0, sizeof orr);
  assert_int_equal(af_client_report_outcome(f->c, &o, &orr, 0, NULL), 0);
  assert_true(wait_until(critical_seen, &h, WAIT_MS));
  assert_int_equal(__atomic_load_n(&h.resyncs, __ATOMIC_SEQ_CST), 0);
  af_health_unsubscribe(sub);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(sync_calls_return_responses_and_statuses,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          server_stream_delivers_snapshot_then_events, setup, teardown),
      cmocka_unit_test_setup_teardown(
          guard_opens_locally_and_the_server_sees_it, setup, teardown),
      cmocka_unit_test_setup_teardown(reports_catch_up_after_a_server_restart,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          chaos_injected_on_the_server_applies_to_guards_until_it_expires,
          setup, teardown),
      cmocka_unit_test_setup_teardown(
          metering_across_a_server_restart_counts_every_event_once, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          shutdown_flushes_queued_events_within_the_deadline, setup, teardown),
      cmocka_unit_test_setup_teardown(
          shutdown_with_the_server_down_reports_what_is_left, setup, teardown),
      cmocka_unit_test_setup_teardown(
          health_subscription_follows_changes_and_reconnects, setup, teardown),
      cmocka_unit_test(shutdown_keeps_its_deadline_when_the_server_hangs),
  };
  return cmocka_run_group_tests_name("client_live", tests, NULL, NULL);
}
