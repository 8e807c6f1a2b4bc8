/*
 * test_engine.c - the wires between the modules, driven by a manual clock.
 */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "af/engine.h"

#define EVENTS_MAX 256

typedef struct {
  af_engine_event_kind_t kind;
  af_breaker_event_kind_t breaker_kind;
  af_breaker_state_t to;
  af_health_status_t health;
  af_recovery_state_t task_state;
  af_chaos_event_kind_t chaos_kind;
} seen_t;

typedef struct {
  af_manual_clock_t *mc;
  af_engine_t *e;
  seen_t seen[EVENTS_MAX];
  size_t n;
  /* probes started by recovery, completed by the test */
  uint64_t probe_task;
  uint32_t probe_attempt;
  int probes;
} fx_t;

static void record(const af_engine_event_t *ev, void *ctx)
{
  fx_t *fx = ctx;
  if (fx->n == EVENTS_MAX) {
    return;
  }
  seen_t *s = &fx->seen[fx->n++];
  memset(s, 0, sizeof(*s));
  s->kind = ev->kind;
  switch (ev->kind) {
  case AF_ENGINE_EV_BREAKER:
    s->breaker_kind = ev->breaker->kind;
    s->to = ev->breaker->to;
    break;
  case AF_ENGINE_EV_HEALTH:
    s->health = ev->health->new_status;
    break;
  case AF_ENGINE_EV_RECOVERY:
    s->task_state = ev->task->state;
    break;
  case AF_ENGINE_EV_CHAOS:
    s->chaos_kind = ev->chaos->kind;
    break;
  }
}

static af_status_t fake_probe(const af_recovery_task_t *task, void *ctx)
{
  fx_t *fx = ctx;
  fx->probe_task = task->id;
  fx->probe_attempt = task->attempts;
  fx->probes++;
  return AF_OK;
}

static fx_t *fx_new(bool with_probe)
{
  fx_t *fx = calloc(1, sizeof(*fx));
  assert_non_null(fx);
  assert_int_equal(af_manual_clock_create(&fx->mc, 1000 * AF_NS_PER_SEC,
                                          INT64_C(1700000000000000000)),
                   AF_OK);
  af_engine_config_t cfg;
  af_engine_config_init(&cfg);
  cfg.clock = af_manual_clock_clock(fx->mc);
  cfg.run_timer_thread = false;
  if (with_probe) {
    cfg.start_probe = fake_probe;
    cfg.probe_ctx = fx;
  }
  assert_int_equal(af_engine_create(&fx->e, &cfg, NULL), AF_OK);
  assert_true(af_engine_subscribe(fx->e, record, fx) > 0);
  assert_int_equal(af_engine_start(fx->e), AF_OK);
  return fx;
}

static void fx_free(fx_t *fx)
{
  af_engine_shutdown(fx->e, 0);
  af_engine_destroy(fx->e);
  af_manual_clock_destroy(fx->mc);
  free(fx);
}

static af_breaker_t *breaker(fx_t *fx, const char *name, uint32_t fail_max,
                             uint64_t reset_timeout_ms)
{
  af_breaker_config_t bc;
  af_breaker_config_init(&bc);
  bc.fail_max = fail_max;
  bc.reset_timeout_ms = reset_timeout_ms;
  af_breaker_t *b = NULL;
  assert_int_equal(af_breaker_registry_get_or_create(af_engine_breakers(fx->e),
                                                     name, &bc, &b, NULL, NULL),
                   AF_OK);
  return b;
}

static af_health_status_t status(fx_t *fx, double *score)
{
  af_health_status_t st;
  double sc;
  uint64_t seq;
  af_health_summary(af_engine_health(fx->e), &st, &sc, &seq);
  if (score != NULL) {
    *score = sc;
  }
  return st;
}

static size_t count(fx_t *fx, af_engine_event_kind_t kind)
{
  size_t c = 0;
  for (size_t i = 0; i < fx->n; i++) {
    c += fx->seen[i].kind == kind;
  }
  return c;
}

static void registered_breaker_is_tracked_by_health(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_breaker_t *b = breaker(fx, "payments", 5, 30000);
  af_health_report_t r;
  assert_int_equal(af_health_report(af_engine_health(fx->e), &r), AF_OK);
  assert_int_equal(r.total, 1);
  assert_int_equal(r.closed, 1);
  assert_int_equal(r.status, AF_HEALTH_HEALTHY);
  af_health_report_free(&r);
  assert_int_equal(fx->seen[0].kind, AF_ENGINE_EV_BREAKER);
  assert_int_equal(fx->seen[0].breaker_kind, AF_BREAKER_EVENT_REGISTERED);
  af_breaker_release(b);
  assert_int_equal(
      af_breaker_registry_unregister(af_engine_breakers(fx->e), "payments"),
      AF_OK);
  assert_int_equal(af_health_report(af_engine_health(fx->e), &r), AF_OK);
  assert_int_equal(r.total, 0);
  af_health_report_free(&r);
  fx_free(fx);
}

static void transition_recomputes_health_without_a_tick(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_breaker_t *a = breaker(fx, "a", 2, 30000);
  af_breaker_t *b = breaker(fx, "b", 2, 30000);
  assert_int_equal(status(fx, NULL), AF_HEALTH_HEALTHY);
  size_t before = fx->n;
  af_breaker_report_outcome(a, false, "timeout", "i-1");
  af_breaker_report_outcome(a, false, "timeout", "i-1");
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  double score = 0;
  /* one of two open: 0.5 is DEGRADED, no timer has run */
  assert_int_equal(status(fx, &score), AF_HEALTH_DEGRADED);
  assert_true(score > 0.49 && score < 0.51);
  /* the transition is published before the health change it caused */
  bool saw_transition = false, saw_health_after = false;
  for (size_t i = before; i < fx->n; i++) {
    if (fx->seen[i].kind == AF_ENGINE_EV_BREAKER &&
        fx->seen[i].breaker_kind == AF_BREAKER_EVENT_TRANSITION &&
        fx->seen[i].to == AF_BREAKER_OPEN) {
      saw_transition = true;
    }
    if (saw_transition && fx->seen[i].kind == AF_ENGINE_EV_HEALTH &&
        fx->seen[i].health == AF_HEALTH_DEGRADED) {
      saw_health_after = true;
    }
  }
  assert_true(saw_transition);
  assert_true(saw_health_after);
  af_breaker_report_outcome(b, false, NULL, NULL);
  af_breaker_report_outcome(b, false, NULL, NULL);
  assert_int_equal(status(fx, NULL), AF_HEALTH_CRITICAL);
  af_breaker_release(a);
  af_breaker_release(b);
  fx_free(fx);
}

static void reset_timeout_elapses_through_engine_timers(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_breaker_t *a = breaker(fx, "a", 1, 5000);
  af_breaker_report_outcome(a, false, NULL, NULL);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  uint64_t next = af_engine_run_timers(fx->e);
  uint64_t now = af_clock_mono_ns(af_engine_clock(fx->e));
  assert_true(next <= now + 5000 * AF_NS_PER_MS);
  af_manual_clock_advance_ms(fx->mc, 4999);
  af_engine_run_timers(fx->e);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  af_manual_clock_advance_ms(fx->mc, 1);
  af_engine_run_timers(fx->e);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_HALF_OPEN);
  double score = 0;
  assert_int_equal(status(fx, &score), AF_HEALTH_DEGRADED);
  af_breaker_release(a);
  fx_free(fx);
}

static void
chaos_force_open_forces_the_breaker_and_deactivate_closes_it(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_breaker_t *a = breaker(fx, "search", 5, 30000);
  af_chaos_request_t req;
  af_chaos_request_init(&req, AF_CHAOS_CIRCUIT_BREAKER, "search");
  af_chaos_scenario_t sc;
  assert_int_equal(af_chaos_activate(af_engine_chaos(fx->e), &req, &sc, NULL),
                   AF_OK);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_FORCED_OPEN);
  assert_int_equal(status(fx, NULL), AF_HEALTH_CRITICAL);
  assert_true(count(fx, AF_ENGINE_EV_CHAOS) >= 1);
  assert_int_equal(
      af_chaos_deactivate(af_engine_chaos(fx->e), sc.name, "test", "done"),
      AF_OK);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_CLOSED);
  assert_int_equal(status(fx, NULL), AF_HEALTH_HEALTHY);
  af_breaker_release(a);
  fx_free(fx);
}

static void
chaos_scenario_on_unknown_target_creates_a_forced_breaker(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_chaos_request_t req;
  af_chaos_request_init(&req, AF_CHAOS_CIRCUIT_BREAKER, "ghost");
  req.duration_ms = 2000;
  af_chaos_scenario_t sc;
  assert_int_equal(af_chaos_activate(af_engine_chaos(fx->e), &req, &sc, NULL),
                   AF_OK);
  af_breaker_t *b = NULL;
  assert_int_equal(
      af_breaker_registry_find(af_engine_breakers(fx->e), "ghost", &b), AF_OK);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_FORCED_OPEN);
  /* expiry by the clock lifts it */
  af_manual_clock_advance_ms(fx->mc, 2000);
  af_engine_run_timers(fx->e);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_release(b);
  fx_free(fx);
}

static void emergency_stop_lifts_every_forced_breaker(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_chaos_request_t req;
  af_chaos_scenario_t sc;
  af_chaos_request_init(&req, AF_CHAOS_CIRCUIT_BREAKER, "x");
  assert_int_equal(af_chaos_activate(af_engine_chaos(fx->e), &req, &sc, NULL),
                   AF_OK);
  af_chaos_request_init(&req, AF_CHAOS_CIRCUIT_BREAKER, "y");
  assert_int_equal(af_chaos_activate(af_engine_chaos(fx->e), &req, &sc, NULL),
                   AF_OK);
  assert_int_equal(status(fx, NULL), AF_HEALTH_CRITICAL);
  assert_int_equal(
      af_chaos_emergency_stop(af_engine_chaos(fx->e), "ops", "drill"), 2);
  assert_int_equal(status(fx, NULL), AF_HEALTH_HEALTHY);
  af_error_t err;
  af_chaos_request_init(&req, AF_CHAOS_CIRCUIT_BREAKER, "x");
  assert_int_equal(af_chaos_activate(af_engine_chaos(fx->e), &req, &sc, &err),
                   AF_ESTOPPED);
  fx_free(fx);
}

static void immediate_recovery_without_probe_closes_the_breaker(void **state)
{
  (void)state;
  fx_t *fx = fx_new(false);
  af_breaker_t *a = breaker(fx, "db", 1, 30000);
  af_breaker_report_outcome(a, false, NULL, NULL);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  af_recovery_policy_t p;
  af_recovery_policy_init(&p);
  p.strategy = AF_RECOVERY_IMMEDIATE;
  af_recovery_task_t t;
  assert_int_equal(af_recovery_schedule(af_engine_recovery(fx->e), "db", 1, &p,
                                        "test", &t, NULL),
                   AF_OK);
  af_engine_run_timers(fx->e);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_CLOSED);
  assert_int_equal(af_recovery_get(af_engine_recovery(fx->e), "db", &t), AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
  assert_true(count(fx, AF_ENGINE_EV_RECOVERY) >= 2);
  assert_int_equal(status(fx, NULL), AF_HEALTH_HEALTHY);
  af_breaker_release(a);
  fx_free(fx);
}

static void breaker_opening_with_probe_policy_schedules_recovery(void **state)
{
  (void)state;
  fx_t *fx = fx_new(true);
  af_recovery_policy_t p;
  af_recovery_policy_init(&p);
  p.strategy = AF_RECOVERY_LINEAR_BACKOFF;
  p.initial_delay_ms = 1000;
  p.probe = AF_PROBE_TCP;
  strcpy(p.probe_target, "127.0.0.1:9");
  assert_int_equal(
      af_recovery_set_policy(af_engine_recovery(fx->e), "inv", &p, NULL),
      AF_OK);
  af_breaker_t *a = breaker(fx, "inv", 1, 600000);
  af_breaker_report_outcome(a, false, NULL, NULL);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  af_engine_metrics_t m;
  af_engine_metrics(fx->e, &m);
  assert_int_equal(m.auto_recoveries, 1);
  af_recovery_task_t t;
  assert_int_equal(af_recovery_get(af_engine_recovery(fx->e), "inv", &t),
                   AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_SCHEDULED);
  /* not due yet */
  af_engine_run_timers(fx->e);
  assert_int_equal(fx->probes, 0);
  af_manual_clock_advance_ms(fx->mc, 1000);
  af_engine_run_timers(fx->e);
  assert_int_equal(fx->probes, 1);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_HALF_OPEN);
  /* the probe fails: the breaker reopens, and no second task is created */
  assert_int_equal(af_recovery_complete_attempt(
                       af_engine_recovery(fx->e), fx->probe_task,
                       fx->probe_attempt, false, "connection refused"),
                   AF_OK);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  af_engine_metrics(fx->e, &m);
  assert_int_equal(m.auto_recoveries, 1);
  /* second attempt after 2 x 1000 ms succeeds */
  af_manual_clock_advance_ms(fx->mc, 2000);
  af_engine_run_timers(fx->e);
  assert_int_equal(fx->probes, 2);
  assert_int_equal(af_recovery_complete_attempt(af_engine_recovery(fx->e),
                                                fx->probe_task,
                                                fx->probe_attempt, true, "ok"),
                   AF_OK);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_CLOSED);
  assert_int_equal(af_recovery_get(af_engine_recovery(fx->e), "inv", &t),
                   AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
  af_breaker_release(a);
  fx_free(fx);
}

static void breaker_without_own_policy_is_not_auto_recovered(void **state)
{
  (void)state;
  fx_t *fx = fx_new(true);
  af_breaker_t *a = breaker(fx, "plain", 1, 30000);
  af_breaker_report_outcome(a, false, NULL, NULL);
  af_engine_metrics_t m;
  af_engine_metrics(fx->e, &m);
  assert_int_equal(m.auto_recoveries, 0);
  af_recovery_task_t t;
  assert_int_equal(af_recovery_get(af_engine_recovery(fx->e), "plain", &t),
                   AF_ENOTFOUND);
  af_breaker_release(a);
  fx_free(fx);
}

static void bad_module_config_is_refused_with_its_message(void **state)
{
  (void)state;
  af_engine_config_t cfg;
  af_engine_config_init(&cfg);
  cfg.health.history_size = 0;
  af_engine_t *e = (af_engine_t *)0x1;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_engine_create(&e, &cfg, &err), AF_EINVAL);
  assert_ptr_equal(e, (af_engine_t *)0x1);
  assert_string_equal(err.message, "history_size must be >= 1");
  af_engine_config_init(&cfg);
  cfg.hash[0] = '\0';
  assert_int_equal(af_engine_create(&e, &cfg, &err), AF_EINVAL);
}

static void subscriber_table_is_bounded(void **state)
{
  (void)state;
  af_engine_config_t cfg;
  af_engine_config_init(&cfg);
  cfg.run_timer_thread = false;
  af_engine_t *e = NULL;
  assert_int_equal(af_engine_create(&e, &cfg, NULL), AF_OK);
  int ids[AF_ENGINE_MAX_SUBSCRIBERS];
  for (int i = 0; i < AF_ENGINE_MAX_SUBSCRIBERS; i++) {
    ids[i] = af_engine_subscribe(e, record, NULL);
    assert_true(ids[i] > 0);
  }
  assert_int_equal(af_engine_subscribe(e, record, NULL), AF_ELIMIT);
  af_engine_unsubscribe(e, ids[3]);
  assert_true(af_engine_subscribe(e, record, NULL) > 0);
  af_engine_destroy(e);
}

static void shutdown_reports_unflushed_metering_events(void **state)
{
  (void)state;
  af_engine_config_t cfg;
  af_engine_config_init(&cfg);
  cfg.run_timer_thread = false;
  af_engine_t *e = NULL;
  assert_int_equal(af_engine_create(&e, &cfg, NULL), AF_OK);
  assert_int_equal(af_engine_start(e), AF_OK);
  assert_int_equal(af_engine_start(e), AF_ESTATE);
  for (int i = 0; i < 3; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, "tenant-a", AF_OP_AGENT_MESSAGE);
    assert_int_equal(af_meter_enqueue(af_engine_meter(e), &ev, NULL), AF_OK);
  }
  /* no sink: nothing can be written, and the engine says so */
  assert_int_equal(af_engine_shutdown(e, 0), 3);
  assert_int_equal(af_engine_shutdown(e, 0), 3);
  af_engine_destroy(e);
}

/* The one test with a real thread: the timer thread moves an OPEN breaker
 * to HALF_OPEN by itself. Bounded wait, polled. */
static void timer_thread_moves_open_breaker_to_half_open(void **state)
{
  (void)state;
  af_engine_config_t cfg;
  af_engine_config_init(&cfg);
  cfg.timer_max_sleep_ms = 1000; /* the kick, not the cap, must wake it */
  af_engine_t *e = NULL;
  assert_int_equal(af_engine_create(&e, &cfg, NULL), AF_OK);
  assert_int_equal(af_engine_start(e), AF_OK);
  af_breaker_config_t bc;
  af_breaker_config_init(&bc);
  bc.fail_max = 1;
  bc.reset_timeout_ms = 20;
  af_breaker_t *b = NULL;
  assert_int_equal(af_breaker_registry_get_or_create(af_engine_breakers(e), "t",
                                                     &bc, &b, NULL, NULL),
                   AF_OK);
  af_breaker_report_outcome(b, false, NULL, NULL);
  uint64_t t0 = af_clock_mono_ns(NULL);
  while (af_breaker_state(b) != AF_BREAKER_HALF_OPEN &&
         af_clock_mono_ns(NULL) - t0 < 5 * AF_NS_PER_SEC) {
    struct timespec ts = {0, 2000000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  /* well before the 1 s cap: the kick on OPEN set the deadline */
  assert_true(af_clock_mono_ns(NULL) - t0 < 900 * AF_NS_PER_MS);
  af_breaker_release(b);
  af_engine_shutdown(e, 100);
  af_engine_destroy(e);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(registered_breaker_is_tracked_by_health),
      cmocka_unit_test(transition_recomputes_health_without_a_tick),
      cmocka_unit_test(reset_timeout_elapses_through_engine_timers),
      cmocka_unit_test(
          chaos_force_open_forces_the_breaker_and_deactivate_closes_it),
      cmocka_unit_test(
          chaos_scenario_on_unknown_target_creates_a_forced_breaker),
      cmocka_unit_test(emergency_stop_lifts_every_forced_breaker),
      cmocka_unit_test(immediate_recovery_without_probe_closes_the_breaker),
      cmocka_unit_test(breaker_opening_with_probe_policy_schedules_recovery),
      cmocka_unit_test(breaker_without_own_policy_is_not_auto_recovered),
      cmocka_unit_test(bad_module_config_is_refused_with_its_message),
      cmocka_unit_test(subscriber_table_is_bounded),
      cmocka_unit_test(shutdown_reports_unflushed_metering_events),
      cmocka_unit_test(timer_thread_moves_open_breaker_to_half_open),
  };
  return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
