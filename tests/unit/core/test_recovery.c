/*
 * test_recovery.c - unit tests for core/src/recovery.c. Time comes from a
 * manual clock; probes are fakes that record what they were asked to do.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/clock.h"
#include "af/recovery.h"

#define T0_MONO (UINT64_C(1000) * AF_NS_PER_SEC)
#define T0_WALL (INT64_C(1700000000) * (int64_t)AF_NS_PER_SEC)
#define MS(x) ((uint64_t)(x)*AF_NS_PER_MS)
#define MAXREC 64

typedef struct {
  pthread_mutex_t mu;
  af_breaker_state_t states[MAXREC];
  char services[MAXREC][AF_NAME_MAX + 1];
  size_t nstates;
  size_t breaker_calls;
  af_status_t breaker_rc;
  af_recovery_task_t probes[MAXREC];
  size_t nprobes;
  af_status_t probe_rc;
  size_t nevents;
  af_recovery_task_t last_event;
} fake_t;

typedef struct {
  af_manual_clock_t *mc;
  af_recovery_t *r;
  fake_t fake;
} fx_t;

static af_status_t fake_set_breaker(const char *service,
                                    af_breaker_state_t state, void *ctx)
{
  fake_t *f = ctx;
  pthread_mutex_lock(&f->mu);
  if (f->nstates < MAXREC) {
    f->states[f->nstates] = state;
    snprintf(f->services[f->nstates], sizeof(f->services[0]), "%s", service);
    f->nstates++;
  }
  f->breaker_calls++;
  af_status_t rc = f->breaker_rc;
  pthread_mutex_unlock(&f->mu);
  return rc;
}

static af_status_t fake_start_probe(const af_recovery_task_t *task, void *ctx)
{
  fake_t *f = ctx;
  pthread_mutex_lock(&f->mu);
  if (f->nprobes < MAXREC)
    f->probes[f->nprobes++] = *task;
  af_status_t rc = f->probe_rc;
  pthread_mutex_unlock(&f->mu);
  return rc;
}

static void fake_on_event(const af_recovery_task_t *task, void *ctx)
{
  fake_t *f = ctx;
  pthread_mutex_lock(&f->mu);
  f->nevents++;
  f->last_event = *task;
  pthread_mutex_unlock(&f->mu);
}

static void fx_config(fx_t *fx, af_recovery_config_t *cfg)
{
  af_recovery_config_init(cfg);
  cfg->clock = af_manual_clock_clock(fx->mc);
  cfg->cb.set_breaker = fake_set_breaker;
  cfg->cb.start_probe = fake_start_probe;
  cfg->cb.on_task_event = fake_on_event;
  cfg->cb.ctx = &fx->fake;
  cfg->rng_seed = 42;
}

static fx_t *fx_new(void)
{
  fx_t *fx = af_calloc(1, sizeof(*fx));
  assert_non_null(fx);
  pthread_mutex_init(&fx->fake.mu, NULL);
  assert_int_equal(af_manual_clock_create(&fx->mc, T0_MONO, T0_WALL), AF_OK);
  return fx;
}

static void fx_start(fx_t *fx, const af_recovery_config_t *cfg)
{
  af_error_t err;
  assert_int_equal(af_recovery_create(&fx->r, cfg, &err), AF_OK);
}

static int setup(void **state)
{
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  fx_start(fx, &cfg);
  *state = fx;
  return 0;
}

static int teardown(void **state)
{
  fx_t *fx = *state;
  af_recovery_destroy(fx->r);
  af_manual_clock_destroy(fx->mc);
  pthread_mutex_destroy(&fx->fake.mu);
  af_free(fx);
  return 0;
}

static af_recovery_policy_t policy_of(af_recovery_strategy_t s)
{
  af_recovery_policy_t p;
  af_recovery_policy_init(&p);
  p.strategy = s;
  return p;
}

/* A policy whose probe goes through the fake start_probe. */
static af_recovery_policy_t probed(af_recovery_strategy_t s)
{
  af_recovery_policy_t p = policy_of(s);
  p.probe = AF_PROBE_TCP;
  snprintf(p.probe_target, sizeof(p.probe_target), "127.0.0.1:9");
  return p;
}

static af_recovery_task_t get(fx_t *fx, const char *service)
{
  af_recovery_task_t t;
  assert_int_equal(af_recovery_get(fx->r, service, &t), AF_OK);
  return t;
}

static uint64_t now_mono(fx_t *fx)
{
  return af_clock_mono_ns(af_manual_clock_clock(fx->mc));
}

static void expect_invalid(const af_recovery_policy_t *p, const char *msg)
{
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_recovery_policy_validate(p, &err), AF_EINVAL);
  assert_int_equal(err.code, AF_EINVAL);
  assert_string_equal(err.message, msg);
}

/* ---- policies, config, names ------------------------------------------ */

static void policy_init_sets_seed_defaults(void **state)
{
  (void)state;
  af_recovery_policy_t p;
  memset(&p, 0xAB, sizeof(p));
  af_recovery_policy_init(&p);
  assert_int_equal(p.strategy, AF_RECOVERY_EXPONENTIAL_BACKOFF);
  assert_int_equal(p.max_retry_attempts, 5);
  assert_true(p.backoff_multiplier == 2.0);
  assert_int_equal(p.initial_delay_ms, 1000);
  assert_int_equal(p.max_delay_ms, 60000);
  assert_int_equal(p.jitter, AF_JITTER_NONE);
  assert_int_equal(p.probe, AF_PROBE_NONE);
  assert_string_equal(p.probe_target, "");
  assert_string_equal(p.probe_service, "");
  assert_int_equal(p.probe_timeout_ms, 2000);
  assert_int_equal(af_recovery_policy_validate(&p, NULL), AF_OK);
}

static void config_init_sets_defaults(void **state)
{
  (void)state;
  af_recovery_config_t cfg;
  memset(&cfg, 0xAB, sizeof(cfg));
  af_recovery_config_init(&cfg);
  assert_null(cfg.clock);
  assert_null(cfg.cb.set_breaker);
  assert_null(cfg.cb.start_probe);
  assert_null(cfg.cb.on_task_event);
  assert_null(cfg.cb.ctx);
  assert_int_equal(cfg.history_size, 100);
  assert_int_equal(cfg.max_tasks, 10000);
  assert_true(cfg.retry_budget_per_sec == 0.0);
  assert_true(cfg.retry_budget_burst == 10.0);
  assert_int_equal(cfg.rng_seed, 0);
}

static void validate_rejects_each_bad_field_with_exact_message(void **state)
{
  (void)state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.max_retry_attempts = 0;
  expect_invalid(&p, "max_retry_attempts must be >= 1");

  p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.backoff_multiplier = 0.99;
  expect_invalid(&p, "backoff_multiplier must be >= 1.0");
  p.backoff_multiplier = NAN;
  expect_invalid(&p, "backoff_multiplier must be >= 1.0");

  p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.initial_delay_ms = -1;
  expect_invalid(&p, "initial_delay_ms must be >= 0");

  p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.max_delay_ms = 999;
  expect_invalid(&p, "max_delay_ms must be >= initial_delay_ms");

  p = policy_of((af_recovery_strategy_t)0);
  expect_invalid(&p, "unknown recovery strategy 0");
  p = policy_of((af_recovery_strategy_t)5);
  expect_invalid(&p, "unknown recovery strategy 5");

  p = policy_of(AF_RECOVERY_IMMEDIATE);
  p.jitter = (af_recovery_jitter_t)3;
  expect_invalid(&p, "unknown jitter 3");

  p = policy_of(AF_RECOVERY_IMMEDIATE);
  p.probe = (af_probe_kind_t)4;
  expect_invalid(&p, "unknown probe 4");

  p = policy_of(AF_RECOVERY_IMMEDIATE);
  p.probe = AF_PROBE_TCP;
  expect_invalid(&p, "probe_target is required for probe TCP");
  p.probe = AF_PROBE_GRPC_HEALTH;
  expect_invalid(&p, "probe_target is required for probe GRPC_HEALTH");
  p.probe = AF_PROBE_HTTP;
  expect_invalid(&p, "probe_target is required for probe HTTP");

  p = policy_of(AF_RECOVERY_IMMEDIATE);
  memset(p.probe_target, 'x', sizeof(p.probe_target));
  expect_invalid(&p, "probe_target is too long");
  p = policy_of(AF_RECOVERY_IMMEDIATE);
  memset(p.probe_service, 'x', sizeof(p.probe_service));
  expect_invalid(&p, "probe_service is too long");

  p = probed(AF_RECOVERY_IMMEDIATE);
  p.probe_timeout_ms = 0;
  expect_invalid(&p, "probe_timeout_ms must be >= 1");

  expect_invalid(NULL, "policy is required");
  /* err may be NULL */
  p.probe_timeout_ms = 0;
  assert_int_equal(af_recovery_policy_validate(&p, NULL), AF_EINVAL);
}

static void validate_accepts_boundaries(void **state)
{
  (void)state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_LINEAR_BACKOFF);
  p.max_retry_attempts = 1;
  p.backoff_multiplier = 1.0;
  p.initial_delay_ms = 0;
  p.max_delay_ms = 0;
  p.probe_timeout_ms = 1;
  assert_int_equal(af_recovery_policy_validate(&p, NULL), AF_OK);
  p.initial_delay_ms = 500;
  p.max_delay_ms = 500;
  p.probe = AF_PROBE_HTTP;
  snprintf(p.probe_target, sizeof(p.probe_target), "http://h/healthz");
  memset(p.probe_service, 'y', sizeof(p.probe_service) - 1);
  p.probe_service[sizeof(p.probe_service) - 1] = '\0';
  assert_int_equal(af_recovery_policy_validate(&p, NULL), AF_OK);
}

static void create_rejects_bad_config_with_exact_message(void **state)
{
  (void)state;
  af_recovery_t *r = (af_recovery_t *)(uintptr_t)0x1;
  af_recovery_config_t cfg;
  af_error_t err;

  af_recovery_config_init(&cfg);
  cfg.history_size = 0;
  assert_int_equal(af_recovery_create(&r, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "history_size must be >= 1");

  af_recovery_config_init(&cfg);
  cfg.max_tasks = 0;
  assert_int_equal(af_recovery_create(&r, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "max_tasks must be >= 1");

  af_recovery_config_init(&cfg);
  cfg.retry_budget_per_sec = -1.0;
  assert_int_equal(af_recovery_create(&r, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "retry_budget_per_sec must be >= 0");
  cfg.retry_budget_per_sec = NAN;
  assert_int_equal(af_recovery_create(&r, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "retry_budget_per_sec must be >= 0");

  af_recovery_config_init(&cfg);
  cfg.retry_budget_per_sec = 5.0;
  cfg.retry_budget_burst = 0.5;
  assert_int_equal(af_recovery_create(&r, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "retry_budget_burst must be >= 1");

  /* *out untouched on failure */
  assert_ptr_equal(r, (af_recovery_t *)(uintptr_t)0x1);
  assert_int_equal(af_recovery_create(NULL, &cfg, NULL), AF_EINVAL);

  af_recovery_config_init(&cfg);
  r = NULL;
  assert_int_equal(af_recovery_create(&r, &cfg, NULL), AF_OK);
  af_recovery_destroy(r);
  af_recovery_destroy(NULL);
}

static void names_cover_every_value(void **state)
{
  (void)state;
  assert_string_equal(af_recovery_strategy_name(AF_RECOVERY_IMMEDIATE),
                      "IMMEDIATE");
  assert_string_equal(af_recovery_strategy_name(AF_RECOVERY_LINEAR_BACKOFF),
                      "LINEAR_BACKOFF");
  assert_string_equal(
      af_recovery_strategy_name(AF_RECOVERY_EXPONENTIAL_BACKOFF),
      "EXPONENTIAL_BACKOFF");
  assert_string_equal(af_recovery_strategy_name(AF_RECOVERY_MANUAL), "MANUAL");
  assert_string_equal(af_recovery_strategy_name((af_recovery_strategy_t)0),
                      "UNKNOWN");
  const char *states[] = {"IDLE",   "SCHEDULED", "IN_PROGRESS",    "SUCCEEDED",
                          "FAILED", "CANCELLED", "AWAITING_MANUAL"};
  for (int i = 0; i < 7; i++)
    assert_string_equal(af_recovery_state_name((af_recovery_state_t)i),
                        states[i]);
  assert_string_equal(af_recovery_state_name((af_recovery_state_t)7),
                      "UNKNOWN");
  assert_string_equal(af_recovery_jitter_name(AF_JITTER_NONE), "NONE");
  assert_string_equal(af_recovery_jitter_name(AF_JITTER_FULL), "FULL");
  assert_string_equal(af_recovery_jitter_name(AF_JITTER_DECORRELATED),
                      "DECORRELATED");
  assert_string_equal(af_recovery_jitter_name((af_recovery_jitter_t)9),
                      "UNKNOWN");
  assert_string_equal(af_probe_kind_name(AF_PROBE_NONE), "NONE");
  assert_string_equal(af_probe_kind_name(AF_PROBE_GRPC_HEALTH), "GRPC_HEALTH");
  assert_string_equal(af_probe_kind_name(AF_PROBE_TCP), "TCP");
  assert_string_equal(af_probe_kind_name(AF_PROBE_HTTP), "HTTP");
  assert_string_equal(af_probe_kind_name((af_probe_kind_t)9), "UNKNOWN");
  assert_true(af_recovery_state_is_final(AF_RECOVERY_SUCCEEDED));
  assert_true(af_recovery_state_is_final(AF_RECOVERY_FAILED));
  assert_true(af_recovery_state_is_final(AF_RECOVERY_CANCELLED));
  assert_false(af_recovery_state_is_final(AF_RECOVERY_SCHEDULED));
  assert_false(af_recovery_state_is_final(AF_RECOVERY_AWAITING_MANUAL));
}

/* ---- delay formula ------------------------------------------------------ */

static void delay_linear_is_initial_times_attempt_capped(void **state)
{
  (void)state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_LINEAR_BACKOFF);
  assert_int_equal(af_recovery_delay_ms(&p, 1), 1000);
  assert_int_equal(af_recovery_delay_ms(&p, 2), 2000);
  assert_int_equal(af_recovery_delay_ms(&p, 3), 3000);
  assert_int_equal(af_recovery_delay_ms(&p, 0), 1000);
  assert_int_equal(af_recovery_delay_ms(&p, 60), 60000);
  assert_int_equal(af_recovery_delay_ms(&p, 61), 60000);
  assert_int_equal(af_recovery_delay_ms(&p, UINT32_MAX), 60000);
}

static void delay_exponential_is_initial_times_mult_pow_capped(void **state)
{
  (void)state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  assert_int_equal(af_recovery_delay_ms(&p, 1), 1000);
  assert_int_equal(af_recovery_delay_ms(&p, 2), 2000);
  assert_int_equal(af_recovery_delay_ms(&p, 3), 4000);
  assert_int_equal(af_recovery_delay_ms(&p, 6), 32000);
  assert_int_equal(af_recovery_delay_ms(&p, 7), 60000);
  assert_int_equal(af_recovery_delay_ms(&p, UINT32_MAX), 60000);
  p.backoff_multiplier = 1.5;
  assert_int_equal(af_recovery_delay_ms(&p, 2), 1500);
  assert_int_equal(af_recovery_delay_ms(&p, 3), 2250);
  p.backoff_multiplier = INFINITY;
  assert_int_equal(af_recovery_delay_ms(&p, 2), 60000);
  p.initial_delay_ms = 0;
  assert_int_equal(af_recovery_delay_ms(&p, 5), 0);
  p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.max_delay_ms = INT64_MAX;
  assert_int_equal(af_recovery_delay_ms(&p, 2000), (uint64_t)INT64_MAX);
}

static void delay_immediate_and_manual_are_zero(void **state)
{
  (void)state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  assert_int_equal(af_recovery_delay_ms(&p, 1), 0);
  assert_int_equal(af_recovery_delay_ms(&p, 9), 0);
  p.strategy = AF_RECOVERY_MANUAL;
  assert_int_equal(af_recovery_delay_ms(&p, 3), 0);
  assert_int_equal(af_recovery_delay_ms(NULL, 3), 0);
}

/* ---- attempts ----------------------------------------------------------- */

static void immediate_attempt_opens_half_then_closes_breaker(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  af_recovery_task_t t;
  assert_int_equal(
      af_recovery_schedule(fx->r, "svc", 0, &p, "breaker opened", &t, NULL),
      AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_SCHEDULED);
  assert_int_equal(t.due_mono_ns, T0_MONO);
  assert_int_equal(t.due_wall_ns, T0_WALL);
  assert_int_equal(t.created_wall_ns, T0_WALL);
  assert_string_equal(t.reason, "breaker opened");
  assert_true(t.id != 0);

  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  assert_int_equal(fx->fake.nstates, 2);
  assert_int_equal(fx->fake.states[0], AF_BREAKER_HALF_OPEN);
  assert_int_equal(fx->fake.states[1], AF_BREAKER_CLOSED);
  assert_string_equal(fx->fake.services[0], "svc");
  assert_int_equal(fx->fake.nprobes, 0); /* probe NONE: no probe started */

  t = get(fx, "svc");
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
  assert_int_equal(t.attempts, 1);
  assert_string_equal(t.last_message, "no probe configured; assumed healthy");

  af_recovery_result_t *h;
  size_t n;
  assert_int_equal(af_recovery_history(fx->r, &h, &n), AF_OK);
  assert_int_equal(n, 1);
  assert_int_equal(h[0].task_id, t.id);
  assert_string_equal(h[0].service, "svc");
  assert_int_equal(h[0].state, AF_RECOVERY_SUCCEEDED);
  assert_int_equal(h[0].attempts, 1);
  assert_int_equal(h[0].duration_ms, 0);
  assert_int_equal(h[0].finished_wall_ns, T0_WALL);
  assert_string_equal(h[0].message, "no probe configured; assumed healthy");
  af_free(h);

  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.scheduled, 1);
  assert_int_equal(m.attempts, 1);
  assert_int_equal(m.succeeded, 1);
  assert_int_equal(m.failed, 0);
  assert_int_equal(m.active, 0);
  assert_int_equal(m.budget_remaining, -1); /* no budget configured */
}

static void default_policy_first_attempt_due_after_initial_delay(void **state)
{
  fx_t *fx = *state;
  af_recovery_task_t t;
  assert_int_equal(af_recovery_schedule(fx->r, "svc", 0, NULL, NULL, &t, NULL),
                   AF_OK);
  assert_int_equal(t.policy.strategy, AF_RECOVERY_EXPONENTIAL_BACKOFF);
  assert_int_equal(t.due_mono_ns, T0_MONO + MS(1000));
  assert_int_equal(t.due_wall_ns, T0_WALL + (int64_t)MS(1000));
  assert_string_equal(t.reason, "");
  assert_int_equal(af_recovery_tick(fx->r), T0_MONO + MS(1000));
  af_manual_clock_advance_ms(fx->mc, 999);
  assert_int_equal(af_recovery_tick(fx->r), T0_MONO + MS(1000));
  assert_int_equal(get(fx, "svc").state, AF_RECOVERY_SCHEDULED);
  af_manual_clock_advance_ms(fx->mc, 1);
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  assert_int_equal(get(fx, "svc").state, AF_RECOVERY_SUCCEEDED);
}

static void failure_reschedules_with_next_delay_then_fails_at_max(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.max_retry_attempts = 3;
  af_recovery_task_t t;
  assert_int_equal(af_recovery_schedule(fx->r, "db", 0, &p, "x", &t, NULL),
                   AF_OK);
  uint64_t id = t.id;

  af_manual_clock_advance_ms(fx->mc, 1000);
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, 1);
  assert_int_equal(fx->fake.probes[0].attempts, 1);
  assert_int_equal(fx->fake.probes[0].state, AF_RECOVERY_IN_PROGRESS);
  assert_string_equal(fx->fake.probes[0].policy.probe_target, "127.0.0.1:9");
  assert_int_equal(get(fx, "db").state, AF_RECOVERY_IN_PROGRESS);

  /* attempt 1 fails: attempt 2 due delay(2) = 2000 ms later */
  af_manual_clock_advance_ms(fx->mc, 300);
  assert_int_equal(
      af_recovery_complete_attempt(fx->r, id, 1, false, "connection refused"),
      AF_OK);
  t = get(fx, "db");
  assert_int_equal(t.state, AF_RECOVERY_SCHEDULED);
  assert_int_equal(t.due_mono_ns, now_mono(fx) + MS(2000));
  assert_string_equal(t.last_message, "connection refused");
  assert_int_equal(fx->fake.states[fx->fake.nstates - 1], AF_BREAKER_OPEN);

  af_manual_clock_advance_ms(fx->mc, 1999);
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, 1);
  af_manual_clock_advance_ms(fx->mc, 1);
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, 2);
  assert_int_equal(af_recovery_complete_attempt(fx->r, id, 2, false, NULL),
                   AF_OK);
  t = get(fx, "db");
  assert_int_equal(t.due_mono_ns, now_mono(fx) + MS(4000));
  assert_string_equal(t.last_message, "probe failed");

  af_manual_clock_advance_ms(fx->mc, 4000);
  af_recovery_tick(fx->r);
  assert_int_equal(af_recovery_complete_attempt(fx->r, id, 3, false, "down"),
                   AF_OK);
  t = get(fx, "db");
  assert_int_equal(t.state, AF_RECOVERY_FAILED);
  assert_int_equal(t.attempts, 3);
  assert_int_equal(t.due_mono_ns, 0);

  /* breaker: HALF_OPEN, OPEN three times */
  assert_int_equal(fx->fake.nstates, 6);
  for (size_t i = 0; i < 6; i++)
    assert_int_equal(fx->fake.states[i],
                     i % 2 == 0 ? AF_BREAKER_HALF_OPEN : AF_BREAKER_OPEN);

  af_recovery_result_t *h;
  size_t n;
  assert_int_equal(af_recovery_history(fx->r, &h, &n), AF_OK);
  assert_int_equal(n, 1);
  assert_int_equal(h[0].state, AF_RECOVERY_FAILED);
  assert_int_equal(h[0].attempts, 3);
  assert_int_equal(h[0].duration_ms, 1000 + 300 + 2000 + 4000);
  assert_string_equal(h[0].message, "down");
  af_free(h);

  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.attempts, 3);
  assert_int_equal(m.failed, 1);
  assert_int_equal(m.succeeded, 0);
}

static void linear_failure_waits_initial_times_next_attempt(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_LINEAR_BACKOFF);
  p.initial_delay_ms = 100;
  af_recovery_task_t t;
  assert_int_equal(af_recovery_schedule(fx->r, "a", 0, &p, NULL, &t, NULL),
                   AF_OK);
  assert_int_equal(t.due_mono_ns, T0_MONO + MS(100));
  af_manual_clock_advance_ms(fx->mc, 100);
  af_recovery_tick(fx->r);
  af_recovery_complete_attempt(fx->r, t.id, 1, false, NULL);
  assert_int_equal(get(fx, "a").due_mono_ns, now_mono(fx) + MS(200));
  af_manual_clock_advance_ms(fx->mc, 200);
  af_recovery_tick(fx->r);
  af_recovery_complete_attempt(fx->r, t.id, 2, false, NULL);
  assert_int_equal(get(fx, "a").due_mono_ns, now_mono(fx) + MS(300));
}

static void async_probe_success_closes_breaker_when_completed(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  af_recovery_task_t t;
  assert_int_equal(af_recovery_schedule(fx->r, "api", 0, &p, NULL, &t, NULL),
                   AF_OK);
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, 1);
  assert_int_equal(fx->fake.nstates, 1);
  assert_int_equal(get(fx, "api").state, AF_RECOVERY_IN_PROGRESS);
  assert_int_equal(get(fx, "api").last_message[0] != '\0', 1);

  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.active, 1);

  af_manual_clock_advance_ms(fx->mc, 250);
  assert_int_equal(
      af_recovery_complete_attempt(fx->r, t.id, 1, true, "SERVING"), AF_OK);
  assert_int_equal(fx->fake.nstates, 2);
  assert_int_equal(fx->fake.states[1], AF_BREAKER_CLOSED);
  t = get(fx, "api");
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
  assert_string_equal(t.last_message, "SERVING");
  assert_int_equal(fx->fake.last_event.state, AF_RECOVERY_SUCCEEDED);
  assert_int_equal(fx->fake.last_event.version, t.version);

  af_recovery_result_t *h;
  size_t n;
  af_recovery_history(fx->r, &h, &n);
  assert_int_equal(n, 1);
  assert_int_equal(h[0].duration_ms, 250);
  af_free(h);
}

static void stale_completion_is_ignored(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  af_recovery_task_t t;
  af_recovery_schedule(fx->r, "s", 0, &p, NULL, &t, NULL);
  af_recovery_tick(fx->r);
  assert_int_equal(af_recovery_complete_attempt(fx->r, t.id, 2, true, NULL),
                   AF_ESTATE);
  assert_int_equal(af_recovery_complete_attempt(fx->r, t.id, 0, false, NULL),
                   AF_ESTATE);
  assert_int_equal(
      af_recovery_complete_attempt(fx->r, t.id + 100, 1, true, NULL),
      AF_ENOTFOUND);
  assert_int_equal(get(fx, "s").state, AF_RECOVERY_IN_PROGRESS);

  assert_int_equal(af_recovery_cancel(fx->r, "s"), AF_OK);
  size_t calls = fx->fake.nstates;
  assert_int_equal(af_recovery_complete_attempt(fx->r, t.id, 1, true, NULL),
                   AF_ESTATE);
  assert_int_equal(fx->fake.nstates, calls); /* breaker untouched */
  assert_int_equal(get(fx, "s").state, AF_RECOVERY_CANCELLED);

  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.stale_completions, 4);
  assert_int_equal(m.succeeded, 0);
  assert_int_equal(m.cancelled, 1);
  assert_int_equal(af_recovery_complete_attempt(NULL, 1, 1, true, NULL),
                   AF_EINVAL);
}

static void probe_that_cannot_start_is_a_failed_attempt(void **state)
{
  fx_t *fx = *state;
  fx->fake.probe_rc = AF_EIO;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  p.max_retry_attempts = 2;
  af_recovery_schedule(fx->r, "s", 0, &p, NULL, NULL, NULL);
  /* the IMMEDIATE retry waits for the next tick */
  assert_int_equal(af_recovery_tick(fx->r), T0_MONO);
  af_recovery_task_t t = get(fx, "s");
  assert_int_equal(t.state, AF_RECOVERY_SCHEDULED);
  assert_int_equal(t.attempts, 1);
  assert_string_equal(t.last_message, "probe could not start: i/o error");
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  t = get(fx, "s");
  assert_int_equal(t.state, AF_RECOVERY_FAILED);
  assert_int_equal(t.attempts, 2);
}

static void manual_waits_for_approval_then_runs(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_MANUAL);
  p.max_retry_attempts = 2;
  af_recovery_task_t t;
  assert_int_equal(af_recovery_schedule(fx->r, "m", 0, &p, NULL, &t, NULL),
                   AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_AWAITING_MANUAL);
  assert_int_equal(t.due_mono_ns, 0);
  af_manual_clock_advance_ms(fx->mc, 3600 * 1000);
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  assert_int_equal(fx->fake.nprobes, 0);
  assert_int_equal(af_recovery_execute(fx->r, "m", NULL), AF_ESTATE);

  assert_int_equal(af_recovery_approve(fx->r, "m"), AF_OK);
  assert_int_equal(fx->fake.nprobes, 1);
  assert_int_equal(fx->fake.states[0], AF_BREAKER_HALF_OPEN);
  assert_int_equal(af_recovery_approve(fx->r, "m"), AF_ESTATE);
  /* a failed manual attempt waits for approval again */
  af_recovery_complete_attempt(fx->r, t.id, 1, false, NULL);
  assert_int_equal(get(fx, "m").state, AF_RECOVERY_AWAITING_MANUAL);
  assert_int_equal(af_recovery_approve(fx->r, "m"), AF_OK);
  af_recovery_complete_attempt(fx->r, t.id, 2, true, NULL);
  assert_int_equal(get(fx, "m").state, AF_RECOVERY_SUCCEEDED);
  assert_int_equal(af_recovery_approve(fx->r, "m"), AF_ESTATE);
  assert_int_equal(af_recovery_approve(fx->r, "nobody"), AF_ENOTFOUND);
  assert_int_equal(af_recovery_approve(NULL, "m"), AF_EINVAL);
}

static void cancel_stops_task_and_records_result(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  af_recovery_schedule(fx->r, "c", 0, &p, NULL, NULL, NULL);
  assert_int_equal(af_recovery_cancel(fx->r, "c"), AF_OK);
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  assert_int_equal(fx->fake.nstates, 0);
  af_recovery_task_t t = get(fx, "c");
  assert_int_equal(t.state, AF_RECOVERY_CANCELLED);
  assert_string_equal(t.last_message, "cancelled");
  assert_int_equal(af_recovery_cancel(fx->r, "c"), AF_ESTATE);
  assert_int_equal(af_recovery_cancel(fx->r, "zz"), AF_ENOTFOUND);
  assert_int_equal(af_recovery_cancel(fx->r, NULL), AF_EINVAL);

  af_recovery_result_t *h;
  size_t n;
  af_recovery_history(fx->r, &h, &n);
  assert_int_equal(n, 1);
  assert_int_equal(h[0].state, AF_RECOVERY_CANCELLED);
  assert_int_equal(h[0].attempts, 0);
  af_free(h);
  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.cancelled, 1);
  assert_int_equal(m.active, 0);
}

static void execute_runs_scheduled_attempt_now(void **state)
{
  fx_t *fx = *state;
  af_recovery_task_t t;
  assert_int_equal(af_recovery_execute(fx->r, "x", &t), AF_ENOTFOUND);
  af_recovery_policy_t p = probed(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  af_recovery_schedule(fx->r, "x", 0, &p, NULL, NULL, NULL);
  assert_int_equal(af_recovery_execute(fx->r, "x", &t), AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_IN_PROGRESS);
  assert_int_equal(t.attempts, 1);
  assert_int_equal(fx->fake.nprobes, 1);
  assert_int_equal(af_recovery_execute(fx->r, "x", &t), AF_ESTATE);
  af_recovery_complete_attempt(fx->r, t.id, 1, true, NULL);
  assert_int_equal(af_recovery_execute(fx->r, "x", &t), AF_ESTATE);

  /* without a probe the returned snapshot is already final */
  af_recovery_schedule(fx->r, "y", 0, NULL, NULL, NULL, NULL);
  assert_int_equal(af_recovery_execute(fx->r, "y", &t), AF_OK);
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
}

static void lower_priority_value_runs_first(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  af_recovery_schedule(fx->r, "low", 5, &p, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "high", 1, &p, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "mid", 3, &p, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "mid2", 3, &p, NULL, NULL, NULL);

  af_recovery_task_t *list;
  size_t n;
  assert_int_equal(af_recovery_list(fx->r, &list, &n), AF_OK);
  assert_int_equal(n, 4);
  assert_string_equal(list[0].service, "high");
  assert_string_equal(list[1].service, "mid");
  assert_string_equal(list[2].service, "mid2");
  assert_string_equal(list[3].service, "low");
  af_free(list);

  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, 4);
  assert_string_equal(fx->fake.probes[0].service, "high");
  assert_string_equal(fx->fake.probes[1].service, "mid");
  assert_string_equal(fx->fake.probes[2].service, "mid2");
  assert_string_equal(fx->fake.probes[3].service, "low");
}

static void priority_ties_break_by_due_time(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t late = probed(AF_RECOVERY_LINEAR_BACKOFF);
  late.initial_delay_ms = 20;
  af_recovery_policy_t early = late;
  early.initial_delay_ms = 10;
  af_recovery_schedule(fx->r, "late", 0, &late, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "early", 0, &early, NULL, NULL, NULL);
  af_manual_clock_advance_ms(fx->mc, 30);
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, 2);
  assert_string_equal(fx->fake.probes[0].service, "early");
  assert_string_equal(fx->fake.probes[1].service, "late");
}

static void tick_returns_next_due_time(void **state)
{
  fx_t *fx = *state;
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  af_recovery_policy_t a = policy_of(AF_RECOVERY_LINEAR_BACKOFF);
  a.initial_delay_ms = 500;
  af_recovery_policy_t b = a;
  b.initial_delay_ms = 300;
  af_recovery_schedule(fx->r, "a", 0, &a, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "b", 9, &b, NULL, NULL, NULL);
  assert_int_equal(af_recovery_tick(fx->r), T0_MONO + MS(300));
  af_manual_clock_advance_ms(fx->mc, 300);
  assert_int_equal(af_recovery_tick(fx->r), T0_MONO + MS(500));
  assert_int_equal(af_recovery_tick(NULL), UINT64_MAX);
}

static void scheduling_active_service_updates_task_in_place(void **state)
{
  fx_t *fx = *state;
  af_recovery_task_t t1, t2;
  af_recovery_schedule(fx->r, "s", 7, NULL, "first", &t1, NULL);
  af_manual_clock_advance_ms(fx->mc, 100);
  af_recovery_policy_t p = policy_of(AF_RECOVERY_LINEAR_BACKOFF);
  p.initial_delay_ms = 50;
  assert_int_equal(af_recovery_schedule(fx->r, "s", 2, &p, "second", &t2, NULL),
                   AF_OK);
  assert_int_equal(t2.id, t1.id);
  assert_int_equal(t2.priority, 2);
  assert_string_equal(t2.reason, "second");
  assert_int_equal(t2.policy.strategy, AF_RECOVERY_LINEAR_BACKOFF);
  assert_int_equal(t2.due_mono_ns, now_mono(fx) + MS(50)); /* earlier wins */
  assert_true(t2.version > t1.version);

  /* a later due time does not push the task back */
  p.initial_delay_ms = 5000;
  p.max_delay_ms = 5000;
  af_recovery_schedule(fx->r, "s", 2, &p, NULL, &t2, NULL);
  assert_int_equal(t2.due_mono_ns, now_mono(fx) + MS(50));

  /* switching to MANUAL and back */
  af_recovery_policy_t m = policy_of(AF_RECOVERY_MANUAL);
  af_recovery_schedule(fx->r, "s", 2, &m, NULL, &t2, NULL);
  assert_int_equal(t2.state, AF_RECOVERY_AWAITING_MANUAL);
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  af_recovery_policy_t imm = policy_of(AF_RECOVERY_IMMEDIATE);
  af_recovery_schedule(fx->r, "s", 2, &imm, NULL, &t2, NULL);
  assert_int_equal(t2.state, AF_RECOVERY_SCHEDULED);
  assert_int_equal(t2.due_mono_ns, now_mono(fx));

  af_recovery_metrics_t mt;
  af_recovery_metrics(fx->r, &mt);
  assert_int_equal(mt.scheduled, 1);

  /* after a final state a new task replaces the old one */
  af_recovery_tick(fx->r);
  assert_int_equal(get(fx, "s").state, AF_RECOVERY_SUCCEEDED);
  af_recovery_schedule(fx->r, "s", 0, NULL, NULL, &t2, NULL);
  assert_true(t2.id > t1.id);
  assert_int_equal(t2.state, AF_RECOVERY_SCHEDULED);
  assert_int_equal(t2.attempts, 0);
  af_recovery_metrics(fx->r, &mt);
  assert_int_equal(mt.scheduled, 2);
}

static void schedule_validates_input(void **state)
{
  fx_t *fx = *state;
  af_error_t err;
  af_recovery_task_t t;
  memset(&t, 0x5A, sizeof(t));
  assert_int_equal(af_recovery_schedule(fx->r, "", 0, NULL, NULL, &t, &err),
                   AF_EINVAL);
  assert_string_equal(err.message, "invalid service name");
  assert_int_equal(af_recovery_schedule(fx->r, NULL, 0, NULL, NULL, &t, &err),
                   AF_EINVAL);
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  p.max_retry_attempts = 0;
  assert_int_equal(af_recovery_schedule(fx->r, "s", 0, &p, NULL, &t, &err),
                   AF_EINVAL);
  assert_string_equal(err.message, "max_retry_attempts must be >= 1");
  assert_int_equal(t.id, 0x5A5A5A5A5A5A5A5AULL); /* untouched */
  assert_int_equal(af_recovery_get(fx->r, "s", &t), AF_ENOTFOUND);

  char long_reason[600];
  memset(long_reason, 'r', sizeof(long_reason) - 1);
  long_reason[sizeof(long_reason) - 1] = '\0';
  assert_int_equal(
      af_recovery_schedule(fx->r, "s", 0, NULL, long_reason, &t, NULL), AF_OK);
  assert_int_equal(strlen(t.reason), 255);
}

static void policies_per_service_override_the_default(void **state)
{
  fx_t *fx = *state;
  af_error_t err;
  af_recovery_policy_t got;
  bool is_def = false;
  assert_int_equal(af_recovery_get_policy(fx->r, "svc", &got, &is_def), AF_OK);
  assert_true(is_def);
  assert_int_equal(got.strategy, AF_RECOVERY_EXPONENTIAL_BACKOFF);
  assert_false(af_recovery_has_policy(fx->r, "svc"));

  af_recovery_policy_t p = probed(AF_RECOVERY_LINEAR_BACKOFF);
  assert_int_equal(af_recovery_set_policy(fx->r, "svc", &p, &err), AF_OK);
  assert_true(af_recovery_has_policy(fx->r, "svc"));
  assert_int_equal(af_recovery_get_policy(fx->r, "svc", &got, &is_def), AF_OK);
  assert_false(is_def);
  assert_int_equal(got.strategy, AF_RECOVERY_LINEAR_BACKOFF);
  assert_string_equal(got.probe_target, "127.0.0.1:9");

  af_recovery_task_t t;
  af_recovery_schedule(fx->r, "svc", 0, NULL, NULL, &t, NULL);
  assert_int_equal(t.policy.strategy, AF_RECOVERY_LINEAR_BACKOFF);
  af_recovery_schedule(fx->r, "other", 0, NULL, NULL, &t, NULL);
  assert_int_equal(t.policy.strategy, AF_RECOVERY_EXPONENTIAL_BACKOFF);

  /* the default policy (NULL or "") */
  af_recovery_policy_t d = policy_of(AF_RECOVERY_IMMEDIATE);
  assert_int_equal(af_recovery_set_policy(fx->r, "", &d, NULL), AF_OK);
  assert_int_equal(af_recovery_get_policy(fx->r, NULL, &got, &is_def), AF_OK);
  assert_true(is_def);
  assert_int_equal(got.strategy, AF_RECOVERY_IMMEDIATE);
  assert_int_equal(af_recovery_get_policy(fx->r, "third", &got, NULL), AF_OK);
  assert_int_equal(got.strategy, AF_RECOVERY_IMMEDIATE);
  assert_false(af_recovery_has_policy(fx->r, ""));

  p.initial_delay_ms = -5;
  assert_int_equal(af_recovery_set_policy(fx->r, "svc", &p, &err), AF_EINVAL);
  assert_string_equal(err.message, "initial_delay_ms must be >= 0");
  p.initial_delay_ms = 5;
  assert_int_equal(af_recovery_set_policy(fx->r, "bad\nname", &p, &err),
                   AF_EINVAL);
  assert_string_equal(err.message, "invalid service name");

  assert_int_equal(af_recovery_remove_policy(fx->r, "svc"), AF_OK);
  assert_int_equal(af_recovery_remove_policy(fx->r, "svc"), AF_ENOTFOUND);
  assert_int_equal(af_recovery_remove_policy(fx->r, ""), AF_EINVAL);
  assert_int_equal(af_recovery_remove_policy(fx->r, NULL), AF_EINVAL);
  assert_false(af_recovery_has_policy(fx->r, "svc"));
  assert_int_equal(af_recovery_get_policy(fx->r, "svc", &got, &is_def), AF_OK);
  assert_true(is_def);
}

static void policy_count_is_limited_by_max_tasks(void **state)
{
  (void)state;
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.max_tasks = 2;
  fx_start(fx, &cfg);
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  af_error_t err;
  assert_int_equal(af_recovery_set_policy(fx->r, "a", &p, NULL), AF_OK);
  assert_int_equal(af_recovery_set_policy(fx->r, "b", &p, NULL), AF_OK);
  assert_int_equal(af_recovery_set_policy(fx->r, "a", &p, NULL), AF_OK);
  assert_int_equal(af_recovery_set_policy(fx->r, "c", &p, &err), AF_ELIMIT);
  assert_string_equal(err.message, "too many recovery policies (limit 2)");
  void *st = fx;
  teardown(&st);
}

/* ---- jitter, budget, limits -------------------------------------------- */

static void full_jitter_stays_in_bounds_and_repeats_for_same_seed(void **state)
{
  (void)state;
  uint64_t dues[2][50];
  for (int run = 0; run < 2; run++) {
    fx_t *fx = fx_new();
    af_recovery_config_t cfg;
    fx_config(fx, &cfg);
    cfg.rng_seed = 7;
    fx_start(fx, &cfg);
    af_recovery_policy_t p = policy_of(AF_RECOVERY_EXPONENTIAL_BACKOFF);
    p.jitter = AF_JITTER_FULL;
    bool varied = false;
    for (int i = 0; i < 50; i++) {
      char name[16];
      snprintf(name, sizeof(name), "s%d", i);
      af_recovery_task_t t;
      assert_int_equal(af_recovery_schedule(fx->r, name, 0, &p, NULL, &t, NULL),
                       AF_OK);
      assert_true(t.due_mono_ns >= T0_MONO);
      assert_true(t.due_mono_ns <= T0_MONO + MS(1000));
      dues[run][i] = t.due_mono_ns;
      if (i > 0 && dues[run][i] != dues[run][0])
        varied = true;
    }
    assert_true(varied);
    void *st = fx;
    teardown(&st);
  }
  for (int i = 0; i < 50; i++)
    assert_int_equal(dues[0][i], dues[1][i]);
}

static void decorrelated_jitter_stays_between_initial_and_cap(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_EXPONENTIAL_BACKOFF);
  p.jitter = AF_JITTER_DECORRELATED;
  p.max_retry_attempts = 40;
  p.max_delay_ms = 5000;
  af_recovery_task_t t;
  af_recovery_schedule(fx->r, "d", 0, &p, NULL, &t, NULL);
  uint64_t wait = t.due_mono_ns - now_mono(fx);
  assert_true(wait >= MS(1000) && wait <= MS(3000));
  bool hit_cap = false;
  for (uint32_t a = 1; a < 40; a++) {
    af_manual_clock_advance_ns(fx->mc, wait);
    af_recovery_tick(fx->r);
    assert_int_equal(af_recovery_complete_attempt(fx->r, t.id, a, false, NULL),
                     AF_OK);
    uint64_t next = get(fx, "d").due_mono_ns - now_mono(fx);
    assert_true(next >= MS(1000));
    assert_true(next <= MS(5000));
    assert_true(next <= 3 * wait);
    if (next == MS(5000))
      hit_cap = true;
    wait = next;
  }
  assert_true(hit_cap);
}

static void retry_budget_defers_attempts_instead_of_dropping(void **state)
{
  (void)state;
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.retry_budget_per_sec = 2.0; /* one token per 500 ms */
  cfg.retry_budget_burst = 1.0;
  fx_start(fx, &cfg);
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  af_recovery_schedule(fx->r, "a", 0, &p, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "b", 1, &p, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "c", 2, &p, NULL, NULL, NULL);

  assert_int_equal(af_recovery_tick(fx->r), T0_MONO + MS(500));
  assert_int_equal(get(fx, "a").state, AF_RECOVERY_SUCCEEDED);
  assert_int_equal(get(fx, "b").state, AF_RECOVERY_SCHEDULED);
  assert_int_equal(get(fx, "c").state, AF_RECOVERY_SCHEDULED);
  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.budget_deferrals, 2);
  assert_int_equal(m.attempts, 1);
  assert_int_equal(m.budget_remaining, 0);

  af_manual_clock_advance_ms(fx->mc, 499);
  af_recovery_tick(fx->r);
  assert_int_equal(get(fx, "b").state, AF_RECOVERY_SCHEDULED);
  af_manual_clock_advance_ms(fx->mc, 1);
  af_recovery_tick(fx->r);
  assert_int_equal(get(fx, "b").state, AF_RECOVERY_SUCCEEDED);
  assert_int_equal(get(fx, "c").state, AF_RECOVERY_SCHEDULED);
  af_manual_clock_advance_ms(fx->mc, 500);
  assert_int_equal(af_recovery_tick(fx->r), UINT64_MAX);
  assert_int_equal(get(fx, "c").state, AF_RECOVERY_SUCCEEDED);
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.attempts, 3);
  assert_int_equal(m.succeeded, 3);
  assert_int_equal(m.budget_deferrals, 3);
  assert_int_equal(m.budget_remaining, 0);
  af_manual_clock_advance_ms(fx->mc, 5000); /* refills up to the burst */
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.budget_remaining, 1);

  /* operator execution bypasses the empty budget */
  af_recovery_schedule(fx->r, "d", 0, &p, NULL, NULL, NULL);
  af_recovery_schedule(fx->r, "e", 0, &p, NULL, NULL, NULL);
  af_recovery_tick(fx->r);
  assert_int_equal(af_recovery_execute(fx->r, "e", NULL), AF_OK);
  assert_int_equal(get(fx, "e").state, AF_RECOVERY_SUCCEEDED);
  void *st = fx;
  teardown(&st);
}

static void history_keeps_only_newest_results(void **state)
{
  (void)state;
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.history_size = 3;
  fx_start(fx, &cfg);
  for (int i = 0; i < 5; i++) {
    char name[8];
    snprintf(name, sizeof(name), "h%d", i);
    af_recovery_schedule(fx->r, name, 0, NULL, NULL, NULL, NULL);
    assert_int_equal(af_recovery_cancel(fx->r, name), AF_OK);
  }
  af_recovery_result_t *h;
  size_t n;
  assert_int_equal(af_recovery_history(fx->r, &h, &n), AF_OK);
  assert_int_equal(n, 3);
  assert_string_equal(h[0].service, "h2");
  assert_string_equal(h[1].service, "h3");
  assert_string_equal(h[2].service, "h4");
  af_free(h);
  void *st = fx;
  teardown(&st);
}

static void restored_history_comes_first_and_keeps_only_newest(void **state)
{
  (void)state;
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.history_size = 3;
  fx_start(fx, &cfg);
  af_recovery_result_t saved[2];
  memset(saved, 0, sizeof(saved));
  for (int i = 0; i < 2; i++) {
    saved[i].task_id = (uint64_t)(i + 1);
    snprintf(saved[i].service, sizeof(saved[i].service), "old%d", i);
    saved[i].state = AF_RECOVERY_SUCCEEDED;
    saved[i].attempts = 2;
    saved[i].finished_wall_ns = 1000 + i;
  }
  assert_int_equal(af_recovery_history_restore(fx->r, saved, 2), AF_OK);
  assert_int_equal(af_recovery_history_restore(fx->r, NULL, 0), AF_OK);
  assert_int_equal(af_recovery_history_restore(NULL, saved, 2), AF_EINVAL);
  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.succeeded, 0);
  af_recovery_schedule(fx->r, "new", 0, NULL, NULL, NULL, NULL);
  assert_int_equal(af_recovery_cancel(fx->r, "new"), AF_OK);
  af_recovery_schedule(fx->r, "newer", 0, NULL, NULL, NULL, NULL);
  assert_int_equal(af_recovery_cancel(fx->r, "newer"), AF_OK);
  af_recovery_result_t *h;
  size_t n;
  assert_int_equal(af_recovery_history(fx->r, &h, &n), AF_OK);
  assert_int_equal(n, 3);
  assert_string_equal(h[0].service, "old1");
  assert_int_equal(h[0].attempts, 2);
  assert_string_equal(h[1].service, "new");
  assert_string_equal(h[2].service, "newer");
  af_free(h);
  void *st = fx;
  teardown(&st);
}

static void empty_history_and_list_return_null(void **state)
{
  fx_t *fx = *state;
  af_recovery_result_t *h = (af_recovery_result_t *)(uintptr_t)1;
  af_recovery_task_t *l = (af_recovery_task_t *)(uintptr_t)1;
  size_t n = 9;
  assert_int_equal(af_recovery_history(fx->r, &h, &n), AF_OK);
  assert_null(h);
  assert_int_equal(n, 0);
  n = 9;
  assert_int_equal(af_recovery_list(fx->r, &l, &n), AF_OK);
  assert_null(l);
  assert_int_equal(n, 0);
  assert_int_equal(af_recovery_list(fx->r, NULL, &n), AF_EINVAL);
  assert_int_equal(af_recovery_history(NULL, &h, &n), AF_EINVAL);
}

static void task_limit_refuses_then_evicts_oldest_final(void **state)
{
  (void)state;
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.max_tasks = 2;
  fx_start(fx, &cfg);
  af_error_t err;
  assert_int_equal(af_recovery_schedule(fx->r, "a", 0, NULL, NULL, NULL, NULL),
                   AF_OK);
  assert_int_equal(af_recovery_schedule(fx->r, "b", 0, NULL, NULL, NULL, NULL),
                   AF_OK);
  assert_int_equal(af_recovery_schedule(fx->r, "c", 0, NULL, NULL, NULL, &err),
                   AF_ELIMIT);
  assert_string_equal(err.message, "too many recovery tasks (limit 2)");
  /* updating an existing task is still allowed */
  assert_int_equal(af_recovery_schedule(fx->r, "a", 1, NULL, NULL, NULL, NULL),
                   AF_OK);
  af_recovery_cancel(fx->r, "b");
  af_manual_clock_advance_ms(fx->mc, 1);
  af_recovery_cancel(fx->r, "a");
  assert_int_equal(af_recovery_schedule(fx->r, "c", 0, NULL, NULL, NULL, NULL),
                   AF_OK);
  af_recovery_task_t t;
  assert_int_equal(af_recovery_get(fx->r, "b", &t), AF_ENOTFOUND);
  assert_int_equal(af_recovery_get(fx->r, "a", &t), AF_OK);
  void *st = fx;
  teardown(&st);
}

static void set_breaker_failure_is_noted_and_attempt_continues(void **state)
{
  fx_t *fx = *state;
  fx->fake.breaker_rc = AF_ENOTFOUND;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  af_recovery_schedule(fx->r, "s", 0, &p, NULL, NULL, NULL);
  af_recovery_tick(fx->r);
  af_recovery_task_t t = get(fx, "s");
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
  assert_non_null(
      strstr(t.last_message, "[set_breaker HALF_OPEN failed: AF_ENOTFOUND]"));
  assert_non_null(
      strstr(t.last_message, "[set_breaker CLOSED failed: AF_ENOTFOUND]"));
  assert_non_null(strstr(fx->fake.last_event.last_message, "CLOSED failed"));
  af_recovery_result_t *h;
  size_t n;
  af_recovery_history(fx->r, &h, &n);
  assert_non_null(strstr(h[0].message, "CLOSED failed"));
  af_free(h);
  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.breaker_errors, 2);
}

static void events_report_every_state_change_with_growing_version(void **st)
{
  fx_t *fx = *st;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  af_recovery_task_t t;
  af_recovery_schedule(fx->r, "e", 0, &p, NULL, &t, NULL);
  assert_int_equal(fx->fake.nevents, 1);
  assert_int_equal(fx->fake.last_event.state, AF_RECOVERY_SCHEDULED);
  uint64_t v = fx->fake.last_event.version;
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nevents, 2);
  assert_int_equal(fx->fake.last_event.state, AF_RECOVERY_IN_PROGRESS);
  assert_true(fx->fake.last_event.version > v);
  v = fx->fake.last_event.version;
  af_recovery_complete_attempt(fx->r, t.id, 1, false, NULL);
  assert_int_equal(fx->fake.nevents, 3);
  assert_int_equal(fx->fake.last_event.state, AF_RECOVERY_SCHEDULED);
  assert_true(fx->fake.last_event.version > v);
  af_recovery_cancel(fx->r, "e");
  assert_int_equal(fx->fake.nevents, 4);
  assert_int_equal(fx->fake.last_event.state, AF_RECOVERY_CANCELLED);
}

/* Reentrancy: a probe that completes from inside start_probe. */
static af_recovery_t *sync_r;
static af_status_t sync_probe(const af_recovery_task_t *task, void *ctx)
{
  (void)ctx;
  return af_recovery_complete_attempt(sync_r, task->id, task->attempts, true,
                                      "sync ok");
}

static void probe_may_complete_from_inside_start_probe(void **state)
{
  fx_t *fx = *state;
  af_recovery_destroy(fx->r);
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.cb.start_probe = sync_probe;
  fx_start(fx, &cfg);
  sync_r = fx->r;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  af_recovery_schedule(fx->r, "s", 0, &p, NULL, NULL, NULL);
  af_recovery_tick(fx->r);
  af_recovery_task_t t = get(fx, "s");
  assert_int_equal(t.state, AF_RECOVERY_SUCCEEDED);
  assert_string_equal(t.last_message, "sync ok");
}

/* ---- threads ------------------------------------------------------------ */

#define NTHREADS 8
#define PER_THREAD 200

typedef struct {
  fx_t *fx;
  int index;
} worker_arg_t;

static atomic_bool stop_ticker;

static void *schedule_worker(void *arg)
{
  worker_arg_t *w = arg;
  af_recovery_policy_t p = policy_of(AF_RECOVERY_IMMEDIATE);
  for (int i = 0; i < PER_THREAD; i++) {
    char name[32];
    snprintf(name, sizeof(name), "t%d-s%d", w->index, i);
    af_status_t st =
        af_recovery_schedule(w->fx->r, name, i % 7, &p, NULL, NULL, NULL);
    if (st != AF_OK)
      return (void *)1;
  }
  return NULL;
}

static void *tick_worker(void *arg)
{
  fx_t *fx = arg;
  while (!atomic_load(&stop_ticker))
    af_recovery_tick(fx->r);
  return NULL;
}

static void concurrent_schedulers_and_ticker_count_every_task(void **state)
{
  (void)state;
  fx_t *fx = fx_new();
  af_recovery_config_t cfg;
  fx_config(fx, &cfg);
  cfg.history_size = NTHREADS * PER_THREAD;
  fx_start(fx, &cfg);
  atomic_store(&stop_ticker, false);
  pthread_t ticker;
  assert_int_equal(pthread_create(&ticker, NULL, tick_worker, fx), 0);
  pthread_t th[NTHREADS];
  worker_arg_t args[NTHREADS];
  for (int i = 0; i < NTHREADS; i++) {
    args[i].fx = fx;
    args[i].index = i;
    assert_int_equal(pthread_create(&th[i], NULL, schedule_worker, &args[i]),
                     0);
  }
  for (int i = 0; i < NTHREADS; i++) {
    void *rv;
    pthread_join(th[i], &rv);
    assert_null(rv);
  }
  atomic_store(&stop_ticker, true);
  pthread_join(ticker, NULL);
  af_recovery_tick(fx->r);

  const uint64_t total = NTHREADS * PER_THREAD;
  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.scheduled, total);
  assert_int_equal(m.attempts, total);
  assert_int_equal(m.succeeded, total);
  assert_int_equal(m.active, 0);
  assert_int_equal(fx->fake.breaker_calls, 2 * total);
  af_recovery_result_t *h;
  size_t n;
  af_recovery_history(fx->r, &h, &n);
  assert_int_equal(n, total);
  af_free(h);
  af_recovery_task_t *l;
  af_recovery_list(fx->r, &l, &n);
  assert_int_equal(n, total);
  af_free(l);
  void *st = fx;
  teardown(&st);
}

static void *complete_worker(void *arg)
{
  worker_arg_t *w = arg;
  for (int i = w->index; i < (int)MAXREC; i += 4) {
    const af_recovery_task_t *t = &w->fx->fake.probes[i];
    af_recovery_complete_attempt(w->fx->r, t->id, t->attempts, true, NULL);
    /* a duplicate completion from a racing prober is stale */
    af_recovery_complete_attempt(w->fx->r, t->id, t->attempts, true, NULL);
  }
  return NULL;
}

static void concurrent_completions_apply_exactly_once(void **state)
{
  fx_t *fx = *state;
  af_recovery_policy_t p = probed(AF_RECOVERY_IMMEDIATE);
  for (int i = 0; i < MAXREC; i++) {
    char name[16];
    snprintf(name, sizeof(name), "p%d", i);
    af_recovery_schedule(fx->r, name, 0, &p, NULL, NULL, NULL);
  }
  af_recovery_tick(fx->r);
  assert_int_equal(fx->fake.nprobes, MAXREC);
  pthread_t th[4];
  worker_arg_t args[4];
  for (int i = 0; i < 4; i++) {
    args[i].fx = fx;
    args[i].index = i;
    pthread_create(&th[i], NULL, complete_worker, &args[i]);
  }
  for (int i = 0; i < 4; i++)
    pthread_join(th[i], NULL);
  af_recovery_metrics_t m;
  af_recovery_metrics(fx->r, &m);
  assert_int_equal(m.succeeded, MAXREC);
  assert_int_equal(m.stale_completions, MAXREC);
  assert_int_equal(m.active, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(policy_init_sets_seed_defaults),
      cmocka_unit_test(config_init_sets_defaults),
      cmocka_unit_test(validate_rejects_each_bad_field_with_exact_message),
      cmocka_unit_test(validate_accepts_boundaries),
      cmocka_unit_test(create_rejects_bad_config_with_exact_message),
      cmocka_unit_test(names_cover_every_value),
      cmocka_unit_test(delay_linear_is_initial_times_attempt_capped),
      cmocka_unit_test(delay_exponential_is_initial_times_mult_pow_capped),
      cmocka_unit_test(delay_immediate_and_manual_are_zero),
      cmocka_unit_test_setup_teardown(
          immediate_attempt_opens_half_then_closes_breaker, setup, teardown),
      cmocka_unit_test_setup_teardown(
          default_policy_first_attempt_due_after_initial_delay, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          failure_reschedules_with_next_delay_then_fails_at_max, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          linear_failure_waits_initial_times_next_attempt, setup, teardown),
      cmocka_unit_test_setup_teardown(
          async_probe_success_closes_breaker_when_completed, setup, teardown),
      cmocka_unit_test_setup_teardown(stale_completion_is_ignored, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          probe_that_cannot_start_is_a_failed_attempt, setup, teardown),
      cmocka_unit_test_setup_teardown(manual_waits_for_approval_then_runs,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(cancel_stops_task_and_records_result,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(execute_runs_scheduled_attempt_now, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(lower_priority_value_runs_first, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(priority_ties_break_by_due_time, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(tick_returns_next_due_time, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          scheduling_active_service_updates_task_in_place, setup, teardown),
      cmocka_unit_test_setup_teardown(schedule_validates_input, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(policies_per_service_override_the_default,
                                      setup, teardown),
      cmocka_unit_test(policy_count_is_limited_by_max_tasks),
      cmocka_unit_test(full_jitter_stays_in_bounds_and_repeats_for_same_seed),
      cmocka_unit_test_setup_teardown(
          decorrelated_jitter_stays_between_initial_and_cap, setup, teardown),
      cmocka_unit_test(retry_budget_defers_attempts_instead_of_dropping),
      cmocka_unit_test(history_keeps_only_newest_results),
      cmocka_unit_test(restored_history_comes_first_and_keeps_only_newest),
      cmocka_unit_test_setup_teardown(empty_history_and_list_return_null, setup,
                                      teardown),
      cmocka_unit_test(task_limit_refuses_then_evicts_oldest_final),
      cmocka_unit_test_setup_teardown(
          set_breaker_failure_is_noted_and_attempt_continues, setup, teardown),
      cmocka_unit_test_setup_teardown(
          events_report_every_state_change_with_growing_version, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          probe_may_complete_from_inside_start_probe, setup, teardown),
      cmocka_unit_test(concurrent_schedulers_and_ticker_count_every_task),
      cmocka_unit_test_setup_teardown(concurrent_completions_apply_exactly_once,
                                      setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
