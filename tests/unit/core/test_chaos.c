/*
 * test_chaos.c - unit tests for core/src/chaos.c.
 * Time is driven by a manual clock; nothing sleeps.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/chaos.h"

#define T0_MONO (UINT64_C(5) * AF_NS_PER_SEC)
#define T0_WALL (INT64_C(1700000000) * (int64_t)AF_NS_PER_SEC)

/* ---- recorders --------------------------------------------------------- */

typedef struct {
  af_chaos_event_kind_t kind;
  char name[AF_CHAOS_SCENARIO_NAME_MAX];
  bool has_scenario;
  bool active;
  char actor[64];
  char reason[64];
  uint64_t seq;
  int64_t wall_ns;
} rec_event_t;

typedef struct {
  char target[AF_NAME_MAX + 1];
  bool open;
} rec_force_t;

typedef struct {
  pthread_mutex_t mu;
  rec_event_t events[256];
  size_t n_events;
  rec_force_t forces[256];
  size_t n_forces;
  af_chaos_t *reenter; /* if set, on_event calls af_chaos_list on it */
} recorder_t;

static void on_event(const af_chaos_event_t *ev, void *ctx)
{
  recorder_t *r = ctx;
  if (r->reenter != NULL) {
    af_chaos_scenario_t *list = NULL;
    size_t n = 0;
    assert_int_equal(af_chaos_list(r->reenter, &list, &n), AF_OK);
    af_free(list);
  }
  pthread_mutex_lock(&r->mu);
  if (r->n_events < 256) {
    rec_event_t *e = &r->events[r->n_events++];
    memset(e, 0, sizeof *e);
    e->kind = ev->kind;
    e->has_scenario = ev->scenario != NULL;
    if (ev->scenario != NULL) {
      snprintf(e->name, sizeof e->name, "%s", ev->scenario->name);
      e->active = ev->scenario->active;
    }
    snprintf(e->actor, sizeof e->actor, "%s", ev->actor);
    snprintf(e->reason, sizeof e->reason, "%s", ev->reason);
    e->seq = ev->seq;
    e->wall_ns = ev->wall_ns;
  }
  pthread_mutex_unlock(&r->mu);
}

static af_status_t force_breaker(const char *target, bool open, void *ctx)
{
  recorder_t *r = ctx;
  pthread_mutex_lock(&r->mu);
  if (r->n_forces < 256) {
    snprintf(r->forces[r->n_forces].target, AF_NAME_MAX + 1, "%s", target);
    r->forces[r->n_forces].open = open;
    r->n_forces++;
  }
  pthread_mutex_unlock(&r->mu);
  return AF_OK;
}

/* ---- fixture ----------------------------------------------------------- */

typedef struct {
  af_manual_clock_t *mc;
  recorder_t rec;
  af_chaos_config_t cfg;
  af_chaos_t *c;
} fx_t;

static int setup(void **state)
{
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  pthread_mutex_init(&f->rec.mu, NULL);
  assert_int_equal(af_manual_clock_create(&f->mc, T0_MONO, T0_WALL), AF_OK);
  af_chaos_config_init(&f->cfg);
  f->cfg.clock = af_manual_clock_clock(f->mc);
  f->cfg.rng_seed = 42;
  f->cfg.force_breaker = force_breaker;
  f->cfg.on_event = on_event;
  f->cfg.ctx = &f->rec;
  assert_int_equal(af_chaos_create(&f->c, &f->cfg, NULL), AF_OK);
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fx_t *f = *state;
  af_chaos_destroy(f->c);
  af_manual_clock_destroy(f->mc);
  pthread_mutex_destroy(&f->rec.mu);
  free(f);
  return 0;
}

static af_status_t activate(fx_t *f, af_chaos_request_t *r,
                            af_chaos_scenario_t *out, af_error_t *err)
{
  return af_chaos_activate(f->c, r, out, err);
}

static af_status_t latency(fx_t *f, const char *target, uint64_t delay,
                           af_chaos_scenario_t *out)
{
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, target);
  r.delay_ms = delay;
  return activate(f, &r, out, NULL);
}

static af_status_t errors(fx_t *f, const char *target, double rate,
                          af_chaos_scenario_t *out, af_error_t *err)
{
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_ERROR, target);
  r.error_rate = rate;
  return activate(f, &r, out, err);
}

static af_status_t circuit(fx_t *f, const char *target, uint64_t dur_ms)
{
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, target);
  r.duration_ms = dur_ms;
  return activate(f, &r, NULL, NULL);
}

static af_status_t resource(fx_t *f, af_resource_type_t t, double level,
                            af_chaos_scenario_t *out, af_error_t *err)
{
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_RESOURCE_EXHAUSTION, NULL);
  r.resource = t;
  r.resource_level = level;
  return activate(f, &r, out, err);
}

static size_t active_count(fx_t *f)
{
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  return m.active;
}

/* ---- names, defaults, config ------------------------------------------- */

static void kind_and_resource_names_match_seed_values(void **state)
{
  (void)state;
  assert_string_equal(af_chaos_kind_name(AF_CHAOS_LATENCY), "latency");
  assert_string_equal(af_chaos_kind_name(AF_CHAOS_ERROR), "error");
  assert_string_equal(af_chaos_kind_name(AF_CHAOS_CIRCUIT_BREAKER),
                      "circuit_breaker");
  assert_string_equal(af_chaos_kind_name(AF_CHAOS_RESOURCE_EXHAUSTION),
                      "resource_exhaustion");
  assert_string_equal(af_chaos_kind_name(AF_CHAOS_NETWORK_PARTITION),
                      "network_partition");
  assert_string_equal(af_chaos_kind_name(AF_CHAOS_TIMEOUT), "timeout");
  assert_string_equal(af_chaos_kind_name((af_chaos_kind_t)0), "unknown");
  assert_string_equal(af_chaos_kind_name((af_chaos_kind_t)7), "unknown");
  assert_string_equal(af_resource_type_name(AF_RESOURCE_CPU), "cpu");
  assert_string_equal(af_resource_type_name(AF_RESOURCE_MEMORY), "memory");
  assert_string_equal(af_resource_type_name(AF_RESOURCE_CONNECTIONS),
                      "connections");
  assert_string_equal(af_resource_type_name(AF_RESOURCE_DISK_IO), "disk_io");
  assert_string_equal(af_resource_type_name(AF_RESOURCE_NETWORK_BANDWIDTH),
                      "network_bandwidth");
  assert_string_equal(af_resource_type_name((af_resource_type_t)0), "unknown");
  assert_string_equal(af_resource_type_name((af_resource_type_t)6), "unknown");
}

static void config_init_sets_seed_defaults(void **state)
{
  (void)state;
  af_chaos_config_t cfg;
  memset(&cfg, 0xab, sizeof cfg);
  af_chaos_config_init(&cfg);
  assert_null(cfg.clock);
  assert_int_equal(cfg.max_duration_ms, 300000);
  assert_int_equal(cfg.default_duration_ms, 10000);
  assert_int_equal(cfg.max_delay_ms, 5000);
  assert_int_equal(cfg.max_scenarios, 1000);
  assert_int_equal(cfg.protected_count, 0);
  assert_string_equal(cfg.hash, "cdd01ef066bc6cf2");
  assert_int_equal(cfg.rng_seed, 0);
  assert_null(cfg.force_breaker);
  assert_null(cfg.on_event);
  assert_null(cfg.ctx);
}

static void
request_init_zeroes_and_defaults_resource_target_to_system(void **state)
{
  (void)state;
  af_chaos_request_t r;
  memset(&r, 0xab, sizeof r);
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  assert_int_equal(r.kind, AF_CHAOS_LATENCY);
  assert_string_equal(r.target, "api");
  assert_int_equal(r.delay_ms, 0);
  assert_true(r.error_rate == 0.0);
  assert_int_equal(r.duration_ms, 0);
  assert_int_equal(r.blast_count, 0);
  assert_string_equal(r.actor, "");
  assert_string_equal(r.reason, "");
  assert_string_equal(r.hash, "");
  af_chaos_request_init(&r, AF_CHAOS_RESOURCE_EXHAUSTION, NULL);
  assert_string_equal(r.target, "system");
  af_chaos_request_init(&r, AF_CHAOS_ERROR, NULL);
  assert_string_equal(r.target, "");
  char long_name[300];
  memset(long_name, 'x', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  af_chaos_request_init(&r, AF_CHAOS_ERROR, long_name);
  assert_int_equal(strlen(r.target), AF_NAME_MAX);
}

static void create_rejects_bad_config_with_messages_and_leaves_out(void **state)
{
  (void)state;
  af_chaos_t *sentinel = (af_chaos_t *)(uintptr_t)0x1;
  af_chaos_t *c = sentinel;
  af_error_t err;
  af_chaos_config_t cfg;

  af_chaos_config_init(&cfg);
  cfg.max_duration_ms = 0;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "max_duration_ms must be >= 1");

  af_chaos_config_init(&cfg);
  cfg.default_duration_ms = 0;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);
  assert_string_equal(
      err.message, "default_duration_ms must be between 1 and max_duration_ms");
  cfg.default_duration_ms = 300001;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);

  af_chaos_config_init(&cfg);
  cfg.max_scenarios = 0;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "max_scenarios must be >= 1");

  af_chaos_config_init(&cfg);
  cfg.protected_count = 33;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "protected_count must be <= 32");
  cfg.protected_count = 1;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "protected_targets[0] is not a valid name");

  af_chaos_config_init(&cfg);
  cfg.hash[0] = '\0';
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message,
                      "hash must be a non-empty string of at most 64 "
                      "characters");

  assert_int_equal(af_chaos_create(&c, NULL, &err), AF_EINVAL);
  assert_int_equal(af_chaos_create(NULL, &cfg, NULL), AF_EINVAL);
  assert_ptr_equal(c, sentinel);

  /* Boundaries that are accepted. */
  af_chaos_config_init(&cfg);
  cfg.max_duration_ms = 1;
  cfg.default_duration_ms = 1;
  cfg.max_scenarios = 1;
  cfg.protected_count = 32;
  for (size_t i = 0; i < 32; i++)
    snprintf(cfg.protected_targets[i], AF_NAME_MAX + 1, "p%zu", i);
  c = NULL;
  assert_int_equal(af_chaos_create(&c, &cfg, &err), AF_OK);
  assert_non_null(c);
  af_chaos_destroy(c);
  af_chaos_destroy(NULL);
}

/* ---- validation ------------------------------------------------------- */

static void error_rate_boundaries_accepted_and_outside_refused(void **state)
{
  fx_t *f = *state;
  af_error_t err;
  af_chaos_scenario_t s;
  assert_int_equal(errors(f, "api", 0.0, &s, &err), AF_OK);
  assert_string_equal(s.name, "errors_api_0.0");
  assert_int_equal(errors(f, "api", 1.0, &s, &err), AF_OK);
  assert_string_equal(s.name, "errors_api_1.0");

  const double bad[] = {-0.01, 1.01, NAN, INFINITY, -INFINITY};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    af_error_clear(&err);
    assert_int_equal(errors(f, "api", bad[i], NULL, &err), AF_EINVAL);
    assert_int_equal(err.code, AF_EINVAL);
    assert_string_equal(err.message, "error_rate must be between 0.0 and 1.0");
  }
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.rejected, 5);
  assert_int_equal(m.activations, 2);
  assert_int_equal(m.active, 2);
}

static void resource_level_refused_with_python_repr_of_value(void **state)
{
  fx_t *f = *state;
  af_error_t err;
  af_chaos_scenario_t s;
  assert_int_equal(resource(f, AF_RESOURCE_MEMORY, 0.0, &s, &err), AF_OK);
  assert_string_equal(s.name, "resource_memory_0.0");
  assert_string_equal(s.target, "system");
  assert_int_equal(resource(f, AF_RESOURCE_MEMORY, 1.0, &s, &err), AF_OK);
  assert_string_equal(s.name, "resource_memory_1.0");

  struct {
    double v;
    const char *msg;
  } cases[] = {
      {-0.01, "resource_level must be between 0.0 and 1.0, got -0.01"},
      {1.01, "resource_level must be between 0.0 and 1.0, got 1.01"},
      {2.0, "resource_level must be between 0.0 and 1.0, got 2.0"},
      {NAN, "resource_level must be between 0.0 and 1.0, got nan"},
      {INFINITY, "resource_level must be between 0.0 and 1.0, got inf"},
      {1.0000001, "resource_level must be between 0.0 and 1.0, got 1.0000001"},
      {-1e-05, "resource_level must be between 0.0 and 1.0, got -1e-05"},
      {12345.5, "resource_level must be between 0.0 and 1.0, got 12345.5"},
      {1e16, "resource_level must be between 0.0 and 1.0, got 1e+16"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    assert_int_equal(resource(f, AF_RESOURCE_CPU, cases[i].v, NULL, &err),
                     AF_EINVAL);
    assert_string_equal(err.message, cases[i].msg);
  }
}

static void resource_type_required_for_resource_exhaustion(void **state)
{
  fx_t *f = *state;
  af_error_t err;
  assert_int_equal(resource(f, (af_resource_type_t)0, 0.5, NULL, &err),
                   AF_EINVAL);
  assert_string_equal(err.message,
                      "resource_type must be one of cpu, memory, connections, "
                      "disk_io, network_bandwidth");
  assert_int_equal(resource(f, (af_resource_type_t)6, 0.5, NULL, &err),
                   AF_EINVAL);
}

static void kind_and_target_are_validated(void **state)
{
  fx_t *f = *state;
  af_error_t err;
  af_chaos_request_t r;
  af_chaos_request_init(&r, (af_chaos_kind_t)0, "api");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message,
                      "kind must be one of latency, error, circuit_breaker, "
                      "resource_exhaustion, network_partition, timeout");
  r.kind = (af_chaos_kind_t)7;
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);

  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message,
                      "target must be a non-empty name of at most 128 bytes "
                      "without control characters");
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "bad\nname");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  memset(r.target, 'x', sizeof r.target); /* no terminator */
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);

  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  memset(r.actor, 'x', sizeof r.actor);
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message,
                      "actor, reason and hash must be NUL-terminated");

  assert_int_equal(af_chaos_activate(NULL, &r, NULL, &err), AF_EINVAL);
  assert_int_equal(af_chaos_activate(f->c, NULL, NULL, &err), AF_EINVAL);
  assert_int_equal(active_count(f), 0);
  assert_int_equal(f->rec.n_events, 0);
}

/* ---- names, durations, delay ------------------------------------------ */

static void custom_name_error_type_and_reason_are_carried(void **state)
{
  fx_t *f = *state;
  af_error_t err;
  af_chaos_scenario_t s;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_ERROR, "api");
  r.error_rate = 0.5;
  snprintf(r.name, sizeof r.name, "%s", "my-drill");
  snprintf(r.error_type, sizeof r.error_type, "%s", "TimeoutError");
  snprintf(r.reason, sizeof r.reason, "%s", "game day");
  assert_int_equal(activate(f, &r, &s, &err), AF_OK);
  assert_string_equal(s.name, "my-drill");
  assert_string_equal(s.error_type, "TimeoutError");
  assert_string_equal(s.reason, "game day");
  assert_int_equal(af_chaos_get(f->c, "my-drill", &s), AF_OK);
  assert_string_equal(s.reason, "game day");

  snprintf(r.name, sizeof r.name, "%s", "bad\nname");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message,
                      "name must be empty or a name of at most 128 bytes "
                      "without control characters");
  assert_int_equal(active_count(f), 1);
}

static void scenario_names_follow_seed_formats(void **state)
{
  fx_t *f = *state;
  af_chaos_scenario_t s;
  assert_int_equal(latency(f, "api", 100, &s), AF_OK);
  assert_string_equal(s.name, "latency_api_100ms");
  assert_int_equal(s.kind, AF_CHAOS_LATENCY);
  assert_int_equal(errors(f, "api", 0.3, &s, NULL), AF_OK);
  assert_string_equal(s.name, "errors_api_0.3");
  assert_int_equal(errors(f, "api", 0.00001, &s, NULL), AF_OK);
  assert_string_equal(s.name, "errors_api_1e-05");
  assert_int_equal(errors(f, "api", 0.0001, &s, NULL), AF_OK);
  assert_string_equal(s.name, "errors_api_0.0001");
  assert_int_equal(errors(f, "api", 0.1 + 0.2, &s, NULL), AF_OK);
  assert_string_equal(s.name, "errors_api_0.30000000000000004");
  assert_int_equal(resource(f, AF_RESOURCE_NETWORK_BANDWIDTH, 0.75, &s, NULL),
                   AF_OK);
  assert_string_equal(s.name, "resource_network_bandwidth_0.75");
  assert_int_equal(s.resource, AF_RESOURCE_NETWORK_BANDWIDTH);
  assert_true(s.resource_level == 0.75);

  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, "db");
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_string_equal(s.name, "circuit_open_db");
  af_chaos_request_init(&r, AF_CHAOS_NETWORK_PARTITION, "db");
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_string_equal(s.name, "partition_db");
  af_chaos_request_init(&r, AF_CHAOS_TIMEOUT, "db");
  r.delay_ms = 250;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_string_equal(s.name, "timeout_db_250ms");
  assert_string_equal(s.hash, "cdd01ef066bc6cf2");
  assert_string_equal(s.actor, "unknown");
  assert_true(s.active);
  assert_int_equal(s.injections, 0);
}

static void duration_defaults_to_10s_and_is_clamped_to_300s(void **state)
{
  fx_t *f = *state;
  af_chaos_scenario_t s;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "a");
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.duration_ms, 10000);
  assert_int_equal(s.expires_mono_ns, T0_MONO + 10000 * AF_NS_PER_MS);
  assert_int_equal(s.started_wall_ns, T0_WALL);
  assert_int_equal(s.expires_wall_ns,
                   T0_WALL + (int64_t)(10000 * AF_NS_PER_MS));

  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "b");
  r.duration_ms = 300000;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.duration_ms, 300000);

  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "c");
  r.duration_ms = 300001;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.duration_ms, 300000);
  assert_int_equal(s.expires_mono_ns, T0_MONO + 300000 * AF_NS_PER_MS);

  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "d");
  r.duration_ms = 1;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.duration_ms, 1);
}

static void delay_clamped_to_5000ms_and_name_keeps_requested_value(void **state)
{
  fx_t *f = *state;
  af_chaos_scenario_t s;
  assert_int_equal(latency(f, "a", 5000, &s), AF_OK);
  assert_int_equal(s.delay_ms, 5000);
  assert_int_equal(latency(f, "b", 10000, &s), AF_OK);
  assert_int_equal(s.delay_ms, 5000);
  assert_string_equal(s.name, "latency_b_10000ms");
  assert_int_equal(latency(f, "c", 0, &s), AF_OK);
  assert_int_equal(s.delay_ms, 0);
  assert_string_equal(s.name, "latency_c_0ms");
  uint64_t d = 1;
  assert_true(af_chaos_should_inject_latency(f->c, "b", &d));
  assert_int_equal(d, 5000);
}

/* ---- blast radius, protected, hash -------------------------------------- */

static void blast_radius_defaults_to_target_and_must_contain_it(void **state)
{
  fx_t *f = *state;
  af_chaos_scenario_t s;
  af_error_t err;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  r.delay_ms = 10;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.blast_count, 1);
  assert_string_equal(s.blast_radius[0], "api");

  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "db");
  snprintf(r.blast_radius[0], AF_NAME_MAX + 1, "cache");
  r.blast_count = 1;
  assert_int_equal(activate(f, &r, NULL, &err), AF_EBLAST);
  assert_string_equal(err.message, "Target 'db' is not in the blast radius");

  /* Members of the blast radius are affected too; duplicates merge. */
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "db");
  r.delay_ms = 20;
  snprintf(r.blast_radius[0], AF_NAME_MAX + 1, "cache");
  snprintf(r.blast_radius[1], AF_NAME_MAX + 1, "db");
  snprintf(r.blast_radius[2], AF_NAME_MAX + 1, "cache");
  r.blast_count = 3;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.blast_count, 2);
  uint64_t d = 0;
  assert_true(af_chaos_should_inject_latency(f->c, "cache", &d));
  assert_int_equal(d, 20);
  assert_false(af_chaos_should_inject_latency(f->c, "other", &d));
  assert_int_equal(d, 0);

  r.blast_count = 33;
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message, "blast_count must be <= 32");
  r.blast_count = 3;
  r.blast_radius[1][0] = '\0';
  assert_int_equal(activate(f, &r, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message, "blast_radius[1] is not a valid name");

  /* 32 distinct members is the limit that is accepted. */
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "m0");
  for (size_t i = 0; i < 32; i++)
    snprintf(r.blast_radius[i], AF_NAME_MAX + 1, "m%zu", i);
  r.blast_count = 32;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_int_equal(s.blast_count, 32);
  assert_true(af_chaos_should_inject_latency(f->c, "m31", NULL));
}

static void protected_targets_are_refused(void **state)
{
  fx_t *f = *state;
  af_chaos_destroy(f->c);
  f->cfg.protected_count = 1;
  snprintf(f->cfg.protected_targets[0], AF_NAME_MAX + 1, "auth");
  assert_int_equal(af_chaos_create(&f->c, &f->cfg, NULL), AF_OK);

  af_error_t err;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, "auth");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EPROTECTED);
  assert_string_equal(err.message,
                      "Target 'auth' is protected and cannot be a chaos "
                      "target");
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  snprintf(r.blast_radius[0], AF_NAME_MAX + 1, "api");
  snprintf(r.blast_radius[1], AF_NAME_MAX + 1, "auth");
  r.blast_count = 2;
  assert_int_equal(activate(f, &r, NULL, &err), AF_EPROTECTED);
  assert_string_equal(err.message,
                      "Target 'auth' is protected and cannot be a chaos "
                      "target");
  assert_int_equal(f->rec.n_forces, 0);
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.rejected, 2);
  assert_int_equal(m.active, 0);
}

static void presented_hash_must_match_configured_hash(void **state)
{
  fx_t *f = *state;
  af_error_t err;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  r.delay_ms = 5;
  snprintf(r.hash, sizeof r.hash, "deadbeefdeadbeef");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EHASH);
  assert_string_equal(err.message,
                      "Constitutional hash mismatch: expected 'cdd01ef0...', "
                      "got 'deadbeef...' (context: ChaosScenario "
                      "'latency_api_5ms')");
  snprintf(r.hash, sizeof r.hash, "abc");
  assert_int_equal(activate(f, &r, NULL, &err), AF_EHASH);
  assert_string_equal(err.message,
                      "Constitutional hash mismatch: expected 'cdd01ef0...', "
                      "got 'abc' (context: ChaosScenario 'latency_api_5ms')");
  snprintf(r.hash, sizeof r.hash, "cdd01ef066bc6cf2");
  assert_int_equal(activate(f, &r, NULL, &err), AF_OK);
  r.hash[0] = '\0';
  assert_int_equal(activate(f, &r, NULL, &err), AF_OK);
}

static void
max_scenarios_limit_refuses_new_names_but_allows_replace(void **state)
{
  fx_t *f = *state;
  af_chaos_destroy(f->c);
  f->cfg.max_scenarios = 2;
  assert_int_equal(af_chaos_create(&f->c, &f->cfg, NULL), AF_OK);
  assert_int_equal(latency(f, "a", 1, NULL), AF_OK);
  assert_int_equal(latency(f, "b", 1, NULL), AF_OK);
  af_error_t err;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "c");
  assert_int_equal(activate(f, &r, NULL, &err), AF_ELIMIT);
  assert_string_equal(err.message, "Too many active chaos scenarios (max 2)");
  assert_int_equal(latency(f, "a", 1, NULL), AF_OK); /* replace */
  assert_int_equal(active_count(f), 2);
}

/* ---- lifecycle ----------------------------------------------------------- */

static void same_name_activation_replaces_with_one_replaced_event(void **state)
{
  fx_t *f = *state;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  r.delay_ms = 100;
  snprintf(r.actor, sizeof r.actor, "alice");
  snprintf(r.reason, sizeof r.reason, "first");
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);
  af_manual_clock_advance_ms(f->mc, 1000);
  snprintf(r.actor, sizeof r.actor, "bob");
  snprintf(r.reason, sizeof r.reason, "second");
  af_chaos_scenario_t s;
  assert_int_equal(activate(f, &r, &s, NULL), AF_OK);
  assert_string_equal(s.actor, "bob");
  assert_int_equal(s.expires_mono_ns,
                   T0_MONO + 11000 * AF_NS_PER_MS); /* fresh duration */

  af_chaos_scenario_t *list = NULL;
  size_t n = 0;
  assert_int_equal(af_chaos_list(f->c, &list, &n), AF_OK);
  assert_int_equal(n, 1);
  assert_string_equal(list[0].actor, "bob");
  af_free(list);

  assert_int_equal(f->rec.n_events, 3);
  assert_int_equal(f->rec.events[0].kind, AF_CHAOS_EV_ACTIVATED);
  assert_string_equal(f->rec.events[0].actor, "alice");
  assert_string_equal(f->rec.events[0].reason, "first");
  assert_int_equal(f->rec.events[0].seq, 1);
  assert_int_equal(f->rec.events[1].kind, AF_CHAOS_EV_REPLACED);
  assert_string_equal(f->rec.events[1].name, "latency_api_100ms");
  assert_false(f->rec.events[1].active);
  assert_string_equal(f->rec.events[1].actor, "bob");
  assert_string_equal(f->rec.events[1].reason, "replaced");
  assert_int_equal(f->rec.events[1].seq, 2);
  assert_int_equal(f->rec.events[2].kind, AF_CHAOS_EV_ACTIVATED);
  assert_true(f->rec.events[2].active);
  assert_string_equal(f->rec.events[2].reason, "second");
  assert_int_equal(f->rec.events[2].seq, 3);
  assert_int_equal(f->rec.events[2].wall_ns,
                   T0_WALL + (int64_t)(1000 * AF_NS_PER_MS));

  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.activations, 2);
  assert_int_equal(m.deactivations, 0);
  assert_int_equal(m.active, 1);
}

static void
tick_expires_at_exactly_duration_and_reports_next_expiry(void **state)
{
  fx_t *f = *state;
  assert_int_equal(af_chaos_tick(f->c), UINT64_MAX);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "a");
  r.duration_ms = 1000;
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "b");
  r.duration_ms = 3000;
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);
  assert_int_equal(af_chaos_tick(f->c), T0_MONO + 1000 * AF_NS_PER_MS);

  af_manual_clock_advance_ms(f->mc, 999);
  assert_int_equal(af_chaos_tick(f->c), T0_MONO + 1000 * AF_NS_PER_MS);
  assert_int_equal(active_count(f), 2);
  af_manual_clock_advance_ms(f->mc, 1);
  assert_int_equal(af_chaos_tick(f->c), T0_MONO + 3000 * AF_NS_PER_MS);
  assert_int_equal(active_count(f), 1);
  assert_int_equal(f->rec.n_events, 3);
  assert_int_equal(f->rec.events[2].kind, AF_CHAOS_EV_EXPIRED);
  assert_string_equal(f->rec.events[2].name, "latency_a_0ms");
  assert_string_equal(f->rec.events[2].actor, "system");
  assert_string_equal(f->rec.events[2].reason, "expired");

  af_manual_clock_advance_ms(f->mc, 2000);
  assert_int_equal(af_chaos_tick(f->c), UINT64_MAX);
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.expirations, 2);
  assert_int_equal(m.deactivations, 0);
  assert_int_equal(m.active, 0);
}

static void
expired_scenarios_are_ignored_by_hot_path_and_reaped_by_queries(void **state)
{
  fx_t *f = *state;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  r.delay_ms = 7;
  r.duration_ms = 500;
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);
  assert_true(af_chaos_should_inject_latency(f->c, "api", NULL));
  af_manual_clock_advance_ms(f->mc, 500);
  uint64_t d = 99;
  assert_false(af_chaos_should_inject_latency(f->c, "api", &d));
  assert_int_equal(d, 0);
  assert_int_equal(f->rec.n_events, 1); /* hot path never reports */
  af_chaos_scenario_t s;
  assert_int_equal(af_chaos_get(f->c, "latency_api_7ms", &s), AF_ENOTFOUND);
  assert_int_equal(f->rec.n_events, 2);
  assert_int_equal(f->rec.events[1].kind, AF_CHAOS_EV_EXPIRED);
  af_chaos_scenario_t *list = (af_chaos_scenario_t *)(uintptr_t)1;
  size_t n = 5;
  assert_int_equal(af_chaos_list(f->c, &list, &n), AF_OK);
  assert_null(list);
  assert_int_equal(n, 0);
  assert_int_equal(af_chaos_deactivate(f->c, "latency_api_7ms", "x", NULL),
                   AF_ENOTFOUND);
}

static void
deactivate_by_name_reports_manual_and_unknown_is_not_found(void **state)
{
  fx_t *f = *state;
  assert_int_equal(latency(f, "api", 10, NULL), AF_OK);
  assert_int_equal(latency(f, "db", 10, NULL), AF_OK);
  assert_int_equal(af_chaos_deactivate(f->c, "nope", "ops", NULL),
                   AF_ENOTFOUND);
  assert_int_equal(af_chaos_deactivate(f->c, NULL, "ops", NULL), AF_EINVAL);
  assert_int_equal(af_chaos_deactivate(NULL, "x", "ops", NULL), AF_EINVAL);
  assert_int_equal(af_chaos_deactivate(f->c, "latency_api_10ms", NULL, NULL),
                   AF_OK);
  assert_int_equal(af_chaos_deactivate(f->c, "latency_db_10ms", "ops", "done"),
                   AF_OK);
  assert_int_equal(f->rec.n_events, 4);
  assert_int_equal(f->rec.events[2].kind, AF_CHAOS_EV_DEACTIVATED);
  assert_string_equal(f->rec.events[2].actor, "unknown");
  assert_string_equal(f->rec.events[2].reason, "manual");
  assert_false(f->rec.events[2].active);
  assert_string_equal(f->rec.events[3].actor, "ops");
  assert_string_equal(f->rec.events[3].reason, "done");
  assert_false(af_chaos_should_inject_latency(f->c, "api", NULL));
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.deactivations, 2);
  assert_int_equal(m.active, 0);
}

static void list_returns_copies_in_activation_order(void **state)
{
  fx_t *f = *state;
  assert_int_equal(latency(f, "a", 1, NULL), AF_OK);
  assert_int_equal(latency(f, "b", 2, NULL), AF_OK);
  assert_int_equal(latency(f, "c", 3, NULL), AF_OK);
  assert_int_equal(af_chaos_deactivate(f->c, "latency_b_2ms", "x", "y"), AF_OK);
  assert_int_equal(latency(f, "d", 4, NULL), AF_OK);
  af_chaos_scenario_t *list = NULL;
  size_t n = 0;
  assert_int_equal(af_chaos_list(f->c, &list, &n), AF_OK);
  assert_int_equal(n, 3);
  assert_string_equal(list[0].name, "latency_a_1ms");
  assert_string_equal(list[1].name, "latency_c_3ms");
  assert_string_equal(list[2].name, "latency_d_4ms");
  af_free(list);
  assert_int_equal(af_chaos_list(NULL, &list, &n), AF_EINVAL);
  af_chaos_scenario_t s;
  assert_int_equal(af_chaos_get(f->c, "latency_c_3ms", &s), AF_OK);
  assert_int_equal(s.delay_ms, 3);
  assert_int_equal(af_chaos_get(f->c, NULL, &s), AF_EINVAL);
}

/* ---- breakers ----------------------------------------------------------- */

static void
force_breaker_follows_activate_deactivate_expire_and_stop(void **state)
{
  fx_t *f = *state;
  recorder_t *r = &f->rec;
  assert_int_equal(circuit(f, "db", 0), AF_OK);
  assert_int_equal(r->n_forces, 1);
  assert_string_equal(r->forces[0].target, "db");
  assert_true(r->forces[0].open);
  assert_int_equal(af_chaos_deactivate(f->c, "circuit_open_db", "ops", NULL),
                   AF_OK);
  assert_int_equal(r->n_forces, 2);
  assert_false(r->forces[1].open);

  assert_int_equal(circuit(f, "db", 1000), AF_OK);
  af_manual_clock_advance_ms(f->mc, 1000);
  af_chaos_tick(f->c);
  assert_int_equal(r->n_forces, 4);
  assert_true(r->forces[2].open);
  assert_false(r->forces[3].open);

  assert_int_equal(circuit(f, "db", 0), AF_OK);
  assert_int_equal(circuit(f, "cache", 0), AF_OK);
  assert_int_equal(latency(f, "api", 1, NULL), AF_OK);
  assert_int_equal(r->n_forces, 6);
  assert_int_equal(af_chaos_emergency_stop(f->c, "ops", "incident"), 3);
  assert_int_equal(r->n_forces, 8);
  assert_string_equal(r->forces[6].target, "db");
  assert_false(r->forces[6].open);
  assert_string_equal(r->forces[7].target, "cache");
  assert_false(r->forces[7].open);
}

static void
replacing_and_reactivating_expired_breaker_keeps_it_forced(void **state)
{
  fx_t *f = *state;
  recorder_t *r = &f->rec;
  assert_int_equal(circuit(f, "db", 1000), AF_OK);
  assert_int_equal(circuit(f, "db", 1000), AF_OK); /* replace */
  assert_int_equal(r->n_forces, 2);
  assert_true(r->forces[0].open);
  assert_true(r->forces[1].open);
  /* Expired but not yet reaped: the new activation reaps it, and the lift is
   * suppressed because a scenario on db is stored again. */
  af_manual_clock_advance_ms(f->mc, 1000);
  assert_int_equal(circuit(f, "db", 1000), AF_OK);
  for (size_t i = 0; i < r->n_forces; i++)
    assert_true(r->forces[i].open);
  assert_int_equal(f->rec.events[f->rec.n_events - 2].kind,
                   AF_CHAOS_EV_EXPIRED);
  assert_int_equal(f->rec.events[f->rec.n_events - 1].kind,
                   AF_CHAOS_EV_ACTIVATED);
}

static void works_without_callbacks(void **state)
{
  fx_t *f = *state;
  af_chaos_destroy(f->c);
  f->cfg.force_breaker = NULL;
  f->cfg.on_event = NULL;
  assert_int_equal(af_chaos_create(&f->c, &f->cfg, NULL), AF_OK);
  assert_int_equal(circuit(f, "db", 0), AF_OK);
  assert_int_equal(af_chaos_deactivate(f->c, "circuit_open_db", NULL, NULL),
                   AF_OK);
  assert_int_equal(circuit(f, "db", 0), AF_OK);
  assert_int_equal(af_chaos_emergency_stop(f->c, NULL, NULL), 1);
  af_chaos_reset_stop(f->c, NULL);
  assert_int_equal(f->rec.n_events, 0);
}

static void callbacks_may_reenter_the_engine(void **state)
{
  fx_t *f = *state;
  f->rec.reenter = f->c;
  assert_int_equal(latency(f, "api", 1, NULL), AF_OK);
  assert_int_equal(af_chaos_deactivate(f->c, "latency_api_1ms", "x", NULL),
                   AF_OK);
  assert_int_equal(af_chaos_emergency_stop(f->c, "x", "y"), 0);
  assert_int_equal(f->rec.n_events, 3);
}

/* ---- emergency stop ------------------------------------------------------ */

static void emergency_stop_latches_until_reset(void **state)
{
  fx_t *f = *state;
  assert_false(af_chaos_stopped(f->c));
  assert_int_equal(latency(f, "api", 1, NULL), AF_OK);
  assert_int_equal(errors(f, "api", 1.0, NULL, NULL), AF_OK);
  assert_int_equal(af_chaos_emergency_stop(f->c, "oncall", "pager"), 2);
  assert_true(af_chaos_stopped(f->c));
  assert_false(af_chaos_should_inject_latency(f->c, "api", NULL));
  assert_false(af_chaos_should_inject_error(f->c, "api"));

  assert_int_equal(f->rec.n_events, 5);
  assert_int_equal(f->rec.events[2].kind, AF_CHAOS_EV_DEACTIVATED);
  assert_string_equal(f->rec.events[2].actor, "oncall");
  assert_string_equal(f->rec.events[2].reason, "emergency_stop");
  assert_string_equal(f->rec.events[2].name, "latency_api_1ms");
  assert_string_equal(f->rec.events[3].name, "errors_api_1.0");
  assert_int_equal(f->rec.events[4].kind, AF_CHAOS_EV_EMERGENCY_STOP);
  assert_false(f->rec.events[4].has_scenario);
  assert_string_equal(f->rec.events[4].actor, "oncall");
  assert_string_equal(f->rec.events[4].reason, "pager");
  assert_int_equal(f->rec.events[4].seq, 5);

  af_error_t err;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, "db");
  assert_int_equal(activate(f, &r, NULL, &err), AF_ESTOPPED);
  assert_string_equal(
      err.message, "Cannot activate chaos scenario: emergency stop is active");
  assert_int_equal(f->rec.n_forces, 0); /* never forced while stopped */
  /* Validation still comes first, as in the seed. */
  assert_int_equal(errors(f, "api", 2.0, NULL, &err), AF_EINVAL);

  assert_int_equal(af_chaos_emergency_stop(f->c, NULL, NULL), 0);
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.emergency_stops, 2);
  assert_int_equal(m.deactivations, 2);
  assert_int_equal(m.rejected, 2);
  assert_true(m.stopped);

  af_chaos_reset_stop(f->c, "oncall");
  assert_false(af_chaos_stopped(f->c));
  rec_event_t *last = &f->rec.events[f->rec.n_events - 1];
  assert_int_equal(last->kind, AF_CHAOS_EV_RESET);
  assert_string_equal(last->actor, "oncall");
  assert_false(last->has_scenario);
  assert_int_equal(activate(f, &r, NULL, &err), AF_OK);
  af_chaos_metrics(f->c, &m);
  assert_false(m.stopped);
  assert_int_equal(m.active, 1);

  assert_int_equal(af_chaos_emergency_stop(NULL, NULL, NULL), 0);
  af_chaos_reset_stop(NULL, NULL);
  assert_false(af_chaos_stopped(NULL));
}

/* ---- hot path ------------------------------------------------------------ */

static void should_inject_is_false_when_idle(void **state)
{
  fx_t *f = *state;
  uint64_t d = 123;
  assert_false(af_chaos_should_inject_latency(f->c, "api", &d));
  assert_int_equal(d, 0);
  assert_false(af_chaos_should_inject_latency(f->c, "api", NULL));
  assert_false(af_chaos_should_inject_error(f->c, "api"));
  af_resource_type_t t = AF_RESOURCE_CPU;
  assert_true(af_chaos_resource_level(f->c, "system", &t) == 0.0);
  assert_int_equal(t, 0);
  d = 5;
  assert_false(af_chaos_should_inject_latency(NULL, "api", &d));
  assert_int_equal(d, 0);
  assert_false(af_chaos_should_inject_latency(f->c, NULL, NULL));
  assert_false(af_chaos_should_inject_error(NULL, "api"));
  assert_false(af_chaos_should_inject_error(f->c, NULL));
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.latency_injections, 0);
  assert_int_equal(m.error_injections, 0);
  af_chaos_metrics(NULL, &m);
  assert_int_equal(m.active, 0);
}

static void latency_and_timeout_return_their_delay(void **state)
{
  fx_t *f = *state;
  assert_int_equal(latency(f, "api", 250, NULL), AF_OK);
  uint64_t d = 0;
  assert_true(af_chaos_should_inject_latency(f->c, "api", &d));
  assert_int_equal(d, 250);
  assert_false(af_chaos_should_inject_error(f->c, "api"));
  assert_false(af_chaos_should_inject_latency(f->c, "db", &d));

  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_TIMEOUT, "db");
  r.delay_ms = 3000;
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);
  assert_true(af_chaos_should_inject_latency(f->c, "db", &d));
  assert_int_equal(d, 3000);

  af_chaos_scenario_t s;
  assert_int_equal(af_chaos_get(f->c, "latency_api_250ms", &s), AF_OK);
  assert_int_equal(s.injections, 1);
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.latency_injections, 2);
}

static void error_rate_zero_never_and_one_always(void **state)
{
  fx_t *f = *state;
  assert_int_equal(errors(f, "never", 0.0, NULL, NULL), AF_OK);
  assert_int_equal(errors(f, "always", 1.0, NULL, NULL), AF_OK);
  for (int i = 0; i < 10000; i++) {
    assert_false(af_chaos_should_inject_error(f->c, "never"));
    assert_true(af_chaos_should_inject_error(f->c, "always"));
  }
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.error_injections, 10000);
  af_chaos_scenario_t s;
  assert_int_equal(af_chaos_get(f->c, "errors_always_1.0", &s), AF_OK);
  assert_int_equal(s.injections, 10000);
}

static int draw_pattern(uint64_t seed, bool *out, int n)
{
  af_manual_clock_t *mc;
  assert_int_equal(af_manual_clock_create(&mc, T0_MONO, T0_WALL), AF_OK);
  af_chaos_config_t cfg;
  af_chaos_config_init(&cfg);
  cfg.clock = af_manual_clock_clock(mc);
  cfg.rng_seed = seed;
  af_chaos_t *c;
  assert_int_equal(af_chaos_create(&c, &cfg, NULL), AF_OK);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_ERROR, "api");
  r.error_rate = 0.3;
  assert_int_equal(af_chaos_activate(c, &r, NULL, NULL), AF_OK);
  int hits = 0;
  for (int i = 0; i < n; i++) {
    out[i] = af_chaos_should_inject_error(c, "api");
    hits += out[i];
  }
  af_chaos_destroy(c);
  af_manual_clock_destroy(mc);
  return hits;
}

static void
error_rate_0_3_is_about_30_percent_and_reproducible_by_seed(void **state)
{
  (void)state;
  enum { N = 20000 };
  static bool a[N], b[N], c[N];
  int ha = draw_pattern(7, a, N);
  int hb = draw_pattern(7, b, N);
  int hc = draw_pattern(8, c, N);
  /* 30% of 20000 = 6000, sd ~65: allow 5 sd. */
  assert_in_range(ha, 5675, 6325);
  assert_in_range(hc, 5675, 6325);
  assert_int_equal(ha, hb);
  assert_memory_equal(a, b, sizeof a);
  assert_memory_not_equal(a, c, sizeof a);
}

static void partition_always_fails_and_resource_level_is_reported(void **state)
{
  fx_t *f = *state;
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_NETWORK_PARTITION, "db");
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);
  for (int i = 0; i < 100; i++)
    assert_true(af_chaos_should_inject_error(f->c, "db"));
  assert_false(af_chaos_should_inject_latency(f->c, "db", NULL));

  assert_int_equal(resource(f, AF_RESOURCE_MEMORY, 0.8, NULL, NULL), AF_OK);
  af_resource_type_t t = (af_resource_type_t)0;
  assert_true(af_chaos_resource_level(f->c, "system", &t) == 0.8);
  assert_int_equal(t, AF_RESOURCE_MEMORY);
  assert_true(af_chaos_resource_level(f->c, "db", &t) == 0.0);
  assert_int_equal(t, 0);
  assert_true(af_chaos_resource_level(f->c, "system", NULL) == 0.8);
  assert_false(af_chaos_should_inject_error(f->c, "system"));
}

/* ---- threads ---------------------------------------------------------------
 */

enum { WORKERS = 4, ITERS = 20000, CHURN = 500 };

typedef struct {
  af_chaos_t *c;
  uint64_t errors_hit, latency_hit, latency_calls;
} worker_t;

static void *worker_main(void *arg)
{
  worker_t *w = arg;
  for (int i = 0; i < ITERS; i++) {
    if (af_chaos_should_inject_error(w->c, "stable"))
      w->errors_hit++;
    uint64_t d = 0;
    if (af_chaos_should_inject_latency(w->c, "churn", &d)) {
      assert_int_equal(d, 42); /* never a torn or foreign value */
      w->latency_hit++;
    }
  }
  return NULL;
}

typedef struct {
  af_chaos_t *c;
} churner_t;

static void *churn_main(void *arg)
{
  churner_t *ch = arg;
  for (int i = 0; i < CHURN; i++) {
    af_chaos_request_t r;
    af_chaos_request_init(&r, AF_CHAOS_LATENCY, "churn");
    r.delay_ms = 42;
    assert_int_equal(af_chaos_activate(ch->c, &r, NULL, NULL), AF_OK);
    af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, "cb");
    assert_int_equal(af_chaos_activate(ch->c, &r, NULL, NULL), AF_OK);
    assert_int_equal(
        af_chaos_deactivate(ch->c, "latency_churn_42ms", "t", NULL), AF_OK);
    assert_int_equal(af_chaos_deactivate(ch->c, "circuit_open_cb", "t", NULL),
                     AF_OK);
  }
  return NULL;
}

static void concurrent_checks_and_changes_add_up_exactly(void **state)
{
  fx_t *f = *state;
  af_chaos_destroy(f->c);
  f->cfg.on_event = NULL; /* recorder holds only 256 */
  assert_int_equal(af_chaos_create(&f->c, &f->cfg, NULL), AF_OK);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_ERROR, "stable");
  r.error_rate = 1.0;
  r.duration_ms = 300000;
  assert_int_equal(activate(f, &r, NULL, NULL), AF_OK);

  pthread_t th[WORKERS + 1];
  worker_t w[WORKERS];
  churner_t ch[1] = {{f->c}};
  memset(w, 0, sizeof w);
  for (int i = 0; i < WORKERS; i++) {
    w[i].c = f->c;
    assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
  }
  assert_int_equal(pthread_create(&th[WORKERS], NULL, churn_main, &ch[0]), 0);
  for (int i = 0; i < WORKERS; i++)
    pthread_join(th[i], NULL);
  pthread_join(th[WORKERS], NULL);

  uint64_t errs = 0, lats = 0;
  for (int i = 0; i < WORKERS; i++) {
    errs += w[i].errors_hit;
    lats += w[i].latency_hit;
  }
  assert_int_equal(errs, (uint64_t)WORKERS * ITERS);
  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.error_injections, errs);
  assert_int_equal(m.latency_injections, lats);
  assert_int_equal(m.activations, 1 + 2 * CHURN);
  assert_int_equal(m.deactivations, 2 * CHURN);
  assert_int_equal(m.active, 1);
  af_chaos_scenario_t s;
  assert_int_equal(af_chaos_get(f->c, "errors_stable_1.0", &s), AF_OK);
  assert_int_equal(s.injections, errs);
}

typedef struct {
  af_chaos_t *c;
  int id;
} cb_racer_t;

static void *cb_race_main(void *arg)
{
  cb_racer_t *cr = arg;
  for (int i = 0; i < CHURN; i++) {
    af_chaos_request_t r;
    af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, "db");
    if ((i + cr->id) % 2 == 0)
      (void)af_chaos_activate(cr->c, &r, NULL, NULL);
    else
      (void)af_chaos_deactivate(cr->c, "circuit_open_db", "t", NULL);
  }
  return NULL;
}

typedef struct {
  pthread_mutex_t mu;
  bool forced;
  uint64_t calls;
} breaker_model_t;

static af_status_t model_force(const char *target, bool open, void *ctx)
{
  breaker_model_t *b = ctx;
  assert_string_equal(target, "db");
  pthread_mutex_lock(&b->mu);
  b->forced = open;
  b->calls++;
  pthread_mutex_unlock(&b->mu);
  return AF_OK;
}

static void racing_breaker_scenarios_converge_on_stored_state(void **state)
{
  fx_t *f = *state;
  breaker_model_t b = {PTHREAD_MUTEX_INITIALIZER, false, 0};
  af_chaos_destroy(f->c);
  f->cfg.on_event = NULL;
  f->cfg.force_breaker = model_force;
  f->cfg.ctx = &b;
  assert_int_equal(af_chaos_create(&f->c, &f->cfg, NULL), AF_OK);
  pthread_t th[4];
  cb_racer_t cr[4];
  for (int i = 0; i < 4; i++) {
    cr[i].c = f->c;
    cr[i].id = i;
    assert_int_equal(pthread_create(&th[i], NULL, cb_race_main, &cr[i]), 0);
  }
  for (int i = 0; i < 4; i++)
    pthread_join(th[i], NULL);
  af_chaos_scenario_t s;
  bool stored = af_chaos_get(f->c, "circuit_open_db", &s) == AF_OK;
  assert_true(b.forced == stored);
  assert_true(b.calls > 0);
  af_chaos_emergency_stop(f->c, "t", "end");
  assert_false(b.forced);
}

/* ---- allocation failure -------------------------------------------------- */

static int fail_after;

static void *failing_malloc(size_t size, void *ctx)
{
  (void)ctx;
  if (fail_after-- <= 0)
    return NULL;
  return malloc(size);
}

static void *failing_realloc(void *p, size_t size, void *ctx)
{
  (void)ctx;
  if (fail_after-- <= 0)
    return NULL;
  return realloc(p, size);
}

static void plain_free(void *p, void *ctx)
{
  (void)ctx;
  free(p);
}

static void allocation_failure_is_reported_and_leaks_nothing(void **state)
{
  fx_t *f = *state;
  af_allocator_t a = {failing_malloc, failing_realloc, plain_free, NULL};
  assert_int_equal(af_alloc_replace(&a), AF_OK);

  af_chaos_t *c = (af_chaos_t *)(uintptr_t)1;
  af_error_t err;
  fail_after = 0;
  assert_int_equal(af_chaos_create(&c, &f->cfg, &err), AF_ENOMEM);
  assert_ptr_equal(c, (af_chaos_t *)(uintptr_t)1);

  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, "api");
  fail_after = 0; /* entry allocation fails */
  assert_int_equal(activate(f, &r, NULL, &err), AF_ENOMEM);
  fail_after = 1; /* array growth fails */
  assert_int_equal(activate(f, &r, NULL, &err), AF_ENOMEM);
  assert_string_equal(err.message, "out of memory");
  fail_after = 1000;
  assert_int_equal(activate(f, &r, NULL, &err), AF_OK);
  fail_after = 0;
  af_chaos_scenario_t *list = NULL;
  size_t n = 7;
  assert_int_equal(af_chaos_list(f->c, &list, &n), AF_ENOMEM);
  assert_int_equal(n, 7);
  assert_int_equal(af_alloc_replace(NULL), AF_OK);

  af_chaos_metrics_t m;
  af_chaos_metrics(f->c, &m);
  assert_int_equal(m.rejected, 2);
  assert_int_equal(m.active, 1);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(kind_and_resource_names_match_seed_values),
      cmocka_unit_test(config_init_sets_seed_defaults),
      cmocka_unit_test(
          request_init_zeroes_and_defaults_resource_target_to_system),
      cmocka_unit_test(create_rejects_bad_config_with_messages_and_leaves_out),
      T(error_rate_boundaries_accepted_and_outside_refused),
      T(resource_level_refused_with_python_repr_of_value),
      T(resource_type_required_for_resource_exhaustion),
      T(kind_and_target_are_validated),
      T(scenario_names_follow_seed_formats),
      T(custom_name_error_type_and_reason_are_carried),
      T(duration_defaults_to_10s_and_is_clamped_to_300s),
      T(delay_clamped_to_5000ms_and_name_keeps_requested_value),
      T(blast_radius_defaults_to_target_and_must_contain_it),
      T(protected_targets_are_refused),
      T(presented_hash_must_match_configured_hash),
      T(max_scenarios_limit_refuses_new_names_but_allows_replace),
      T(same_name_activation_replaces_with_one_replaced_event),
      T(tick_expires_at_exactly_duration_and_reports_next_expiry),
      T(expired_scenarios_are_ignored_by_hot_path_and_reaped_by_queries),
      T(deactivate_by_name_reports_manual_and_unknown_is_not_found),
      T(list_returns_copies_in_activation_order),
      T(force_breaker_follows_activate_deactivate_expire_and_stop),
      T(replacing_and_reactivating_expired_breaker_keeps_it_forced),
      T(works_without_callbacks),
      T(callbacks_may_reenter_the_engine),
      T(emergency_stop_latches_until_reset),
      T(should_inject_is_false_when_idle),
      T(latency_and_timeout_return_their_delay),
      T(error_rate_zero_never_and_one_always),
      cmocka_unit_test(
          error_rate_0_3_is_about_30_percent_and_reproducible_by_seed),
      T(partition_always_fails_and_resource_level_is_reported),
      T(concurrent_checks_and_changes_add_up_exactly),
      T(racing_breaker_scenarios_converge_on_stored_state),
      T(allocation_failure_is_reported_and_leaks_nothing),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
