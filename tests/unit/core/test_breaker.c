/*
 * test_breaker.c - unit tests of core/src/breaker.c.
 *
 * Time comes from a manual clock; nothing sleeps.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/breaker.h"
#include "af/clock.h"
#include "breaker_internal.h"

#define T0_MONO (UINT64_C(1000) * AF_NS_PER_SEC)
#define T0_WALL INT64_C(1700000000000000000)

/* ---- event recorder ---------------------------------------------------------
 */

#define REC_MAX 256
typedef struct {
  af_breaker_event_kind_t kind;
  char name[AF_NAME_MAX + 1];
  af_breaker_state_t from, to;
  char reason[AF_BREAKER_REASON_MAX + 1];
  double weight;
  uint64_t seq;
  int64_t wall_ns;
  uint64_t mono_ns;
} rec_event_t;

typedef struct {
  pthread_mutex_t mu;
  rec_event_t ev[REC_MAX];
  size_t n;
  size_t total;
} recorder_t;

static void rec_fn(const af_breaker_event_t *ev, void *ctx)
{
  recorder_t *r = ctx;
  pthread_mutex_lock(&r->mu);
  r->total++;
  if (r->n < REC_MAX) {
    rec_event_t *e = &r->ev[r->n++];
    e->kind = ev->kind;
    snprintf(e->name, sizeof(e->name), "%s", ev->name);
    e->from = ev->from;
    e->to = ev->to;
    snprintf(e->reason, sizeof(e->reason), "%s", ev->reason);
    e->weight = ev->weight;
    e->seq = ev->seq;
    e->wall_ns = ev->wall_ns;
    e->mono_ns = ev->mono_ns;
  }
  pthread_mutex_unlock(&r->mu);
}

/* ---- fixture ----------------------------------------------------------------
 */

typedef struct {
  af_manual_clock_t *mc;
  af_breaker_registry_t *reg;
  recorder_t rec;
} fx_t;

static fx_t *fx_new(size_t max_breakers, bool report_events)
{
  fx_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  pthread_mutex_init(&f->rec.mu, NULL);
  assert_int_equal(af_manual_clock_create(&f->mc, T0_MONO, T0_WALL), AF_OK);
  af_breaker_registry_config_t rc;
  af_breaker_registry_config_init(&rc);
  rc.clock = af_manual_clock_clock(f->mc);
  if (max_breakers != 0)
    rc.max_breakers = max_breakers;
  rc.emit_report_events = report_events;
  assert_int_equal(af_breaker_registry_create(&f->reg, &rc), AF_OK);
  return f;
}

static int setup(void **state)
{
  *state = fx_new(0, false);
  return 0;
}

static int teardown(void **state)
{
  fx_t *f = *state;
  af_breaker_registry_destroy(f->reg);
  af_manual_clock_destroy(f->mc);
  pthread_mutex_destroy(&f->rec.mu);
  free(f);
  return 0;
}

static void listen(fx_t *f)
{
  assert_true(af_breaker_registry_add_listener(f->reg, rec_fn, &f->rec) > 0);
}

static af_breaker_t *mk(fx_t *f, const char *name,
                        const af_breaker_config_t *cfg)
{
  af_breaker_t *b = NULL;
  af_error_t err;
  assert_int_equal(
      af_breaker_registry_get_or_create(f->reg, name, cfg, &b, NULL, &err),
      AF_OK);
  assert_non_null(b);
  return b;
}

static void fail_n(af_breaker_t *b, int n)
{
  for (int i = 0; i < n; i++)
    af_breaker_record_failure(b, NULL);
}

static af_breaker_info_t info_of(af_breaker_t *b)
{
  af_breaker_info_t in;
  af_breaker_info(b, &in);
  return in;
}

static const rec_event_t *last_transition(fx_t *f)
{
  for (size_t i = f->rec.n; i > 0; i--)
    if (f->rec.ev[i - 1].kind == AF_BREAKER_EVENT_TRANSITION)
      return &f->rec.ev[i - 1];
  return NULL;
}

static size_t count_kind(fx_t *f, af_breaker_event_kind_t k)
{
  size_t n = 0;
  for (size_t i = 0; i < f->rec.n; i++)
    n += f->rec.ev[i].kind == k;
  return n;
}

/* ---- config -----------------------------------------------------------------
 */

static void config_init_sets_documented_defaults(void **state)
{
  (void)state;
  af_breaker_config_t c;
  memset(&c, 0x5a, sizeof(c));
  af_breaker_config_init(&c);
  assert_int_equal(c.fail_max, 5);
  assert_int_equal(c.reset_timeout_ms, 30000);
  assert_int_equal(c.half_open_max_calls, 1);
  assert_int_equal(c.success_threshold, 1);
  assert_true(c.weight == 1.0);
  assert_string_equal(c.description, "");
  assert_int_equal(c.excluded_count, 0);
  assert_string_equal(c.service, "");
  assert_int_equal(af_breaker_config_validate(&c, NULL), AF_OK);

  af_breaker_registry_config_t rc;
  memset(&rc, 0x5a, sizeof(rc));
  af_breaker_registry_config_init(&rc);
  assert_null(rc.clock);
  assert_int_equal(rc.max_breakers, 100000);
  assert_false(rc.emit_report_events);
}

static void expect_invalid(const af_breaker_config_t *c, const char *msg)
{
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_breaker_config_validate(c, &err), AF_EINVAL);
  assert_int_equal(err.code, AF_EINVAL);
  assert_string_equal(err.message, msg);
}

static void config_validate_reports_each_rule_with_its_message(void **state)
{
  (void)state;
  af_breaker_config_t c;
  expect_invalid(NULL, "config is NULL");

  af_breaker_config_init(&c);
  c.fail_max = 0;
  expect_invalid(&c, "fail_max must be >= 1");

  af_breaker_config_init(&c);
  c.reset_timeout_ms = 0;
  expect_invalid(&c, "reset_timeout must be > 0");

  af_breaker_config_init(&c);
  c.half_open_max_calls = 0;
  expect_invalid(&c, "half_open_max_calls must be >= 1");

  af_breaker_config_init(&c);
  c.success_threshold = 0;
  expect_invalid(&c, "success_threshold must be >= 1");

  const double bad_weights[] = {0.0, -1.0, NAN, INFINITY, -0.0};
  for (size_t i = 0; i < sizeof(bad_weights) / sizeof(bad_weights[0]); i++) {
    af_breaker_config_init(&c);
    c.weight = bad_weights[i];
    expect_invalid(&c, "weight must be > 0");
  }

  af_breaker_config_init(&c);
  memset(c.description, 'd', sizeof(c.description));
  expect_invalid(&c, "description must be at most 256 bytes");

  af_breaker_config_init(&c);
  c.excluded_count = AF_BREAKER_EXCLUDED_MAX + 1;
  expect_invalid(&c, "excluded_errors must have at most 16 entries");

  af_breaker_config_init(&c);
  c.excluded_count = 1; /* entry 0 is "" */
  expect_invalid(&c,
                 "excluded error type must be 1-128 bytes of printable UTF-8");

  af_breaker_config_init(&c);
  strcpy(c.service, "bad\tservice");
  expect_invalid(&c, "service must be 1-128 bytes of printable UTF-8");
}

static void config_validate_accepts_boundaries(void **state)
{
  (void)state;
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.fail_max = 1;
  c.reset_timeout_ms = 1;
  c.half_open_max_calls = 1;
  c.success_threshold = 1;
  c.weight = 1e-9;
  memset(c.description, 'd', AF_BREAKER_DESCRIPTION_MAX);
  c.description[AF_BREAKER_DESCRIPTION_MAX] = '\0';
  c.excluded_count = AF_BREAKER_EXCLUDED_MAX;
  for (size_t i = 0; i < AF_BREAKER_EXCLUDED_MAX; i++)
    snprintf(c.excluded_errors[i], sizeof(c.excluded_errors[i]), "E%zu", i);
  memset(c.service, 's', AF_NAME_MAX);
  c.service[AF_NAME_MAX] = '\0';
  assert_int_equal(af_breaker_config_validate(&c, NULL), AF_OK);
}

/* ---- registry ---------------------------------------------------------------
 */

static void registry_create_rejects_zero_max_breakers(void **state)
{
  (void)state;
  af_breaker_registry_config_t rc;
  af_breaker_registry_config_init(&rc);
  rc.max_breakers = 0;
  af_breaker_registry_t *reg = (af_breaker_registry_t *)0x1;
  assert_int_equal(af_breaker_registry_create(&reg, &rc), AF_EINVAL);
  assert_ptr_equal(reg, (af_breaker_registry_t *)0x1);
  assert_int_equal(af_breaker_registry_create(NULL, NULL), AF_EINVAL);
  assert_int_equal(af_breaker_registry_create(&reg, NULL), AF_OK);
  af_breaker_registry_destroy(reg);
  af_breaker_registry_destroy(NULL);
}

static void get_or_create_rejects_invalid_names(void **state)
{
  fx_t *f = *state;
  char long_name[AF_NAME_MAX + 2];
  memset(long_name, 'n', AF_NAME_MAX + 1);
  long_name[AF_NAME_MAX + 1] = '\0';
  const char *bad[] = {NULL, "", "a\nb", long_name, "\xff\xfe"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    af_error_t err;
    af_error_clear(&err);
    af_breaker_t *b = (af_breaker_t *)0x1;
    bool created = true;
    assert_int_equal(af_breaker_registry_get_or_create(f->reg, bad[i], NULL, &b,
                                                       &created, &err),
                     AF_EINVAL);
    assert_string_equal(err.message,
                        "breaker name must be 1-128 bytes of printable UTF-8");
    assert_ptr_equal(b, (af_breaker_t *)0x1);
    assert_true(created);
  }
  assert_int_equal(af_breaker_registry_count(f->reg), 0);

  long_name[AF_NAME_MAX] = '\0'; /* exactly 128 bytes */
  af_breaker_t *b = mk(f, long_name, NULL);
  assert_string_equal(af_breaker_name(b), long_name);
  af_breaker_release(b);
}

static void get_or_create_is_idempotent(void **state)
{
  fx_t *f = *state;
  af_breaker_t *a = NULL, *b = NULL;
  bool created = false;
  assert_int_equal(
      af_breaker_registry_get_or_create(f->reg, "db", NULL, &a, &created, NULL),
      AF_OK);
  assert_true(created);
  assert_int_equal(
      af_breaker_registry_get_or_create(f->reg, "db", NULL, &b, &created, NULL),
      AF_OK);
  assert_false(created);
  assert_ptr_equal(a, b);
  assert_int_equal(af_breaker_registry_count(f->reg), 1);
  /* out may be NULL */
  assert_int_equal(af_breaker_registry_get_or_create(f->reg, "cache", NULL,
                                                     NULL, &created, NULL),
                   AF_OK);
  assert_true(created);
  assert_int_equal(af_breaker_registry_count(f->reg), 2);
  af_breaker_release(a);
  af_breaker_release(b);
}

static void get_or_create_with_invalid_config_creates_nothing(void **state)
{
  fx_t *f = *state;
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.fail_max = 0;
  af_error_t err;
  assert_int_equal(
      af_breaker_registry_get_or_create(f->reg, "db", &c, NULL, NULL, &err),
      AF_EINVAL);
  assert_string_equal(err.message, "fail_max must be >= 1");
  assert_int_equal(af_breaker_registry_count(f->reg), 0);
}

static void
get_or_create_with_new_config_updates_and_emits_config_changed(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  /* same config: no event */
  af_breaker_release(mk(f, "db", &c));
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_CONFIG_CHANGED), 0);
  /* NULL keeps config */
  c.fail_max = 2;
  c.weight = 3.5;
  strcpy(c.description, "primary database");
  strcpy(c.service, "db-service");
  c.excluded_count = 1;
  strcpy(c.excluded_errors[0], "ValueError");
  af_breaker_release(mk(f, "db", &c));
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_CONFIG_CHANGED), 1);
  assert_true(f->rec.ev[f->rec.n - 1].weight == 3.5);
  assert_string_equal(f->rec.ev[f->rec.n - 1].reason, "config changed");
  af_breaker_release(mk(f, "db", NULL));
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_CONFIG_CHANGED), 1);

  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.config.fail_max, 2);
  assert_true(in.config.weight == 3.5);
  assert_string_equal(in.config.description, "primary database");
  assert_string_equal(in.config.service, "db-service");
  assert_int_equal(in.config.excluded_count, 1);
  assert_string_equal(in.config.excluded_errors[0], "ValueError");
  /* the new fail_max applies */
  fail_n(b, 2);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  af_breaker_release(b);
}

static void get_or_create_past_limit_fails_with_elimit(void **state)
{
  (void)state;
  fx_t *f = fx_new(3, false);
  af_breaker_release(mk(f, "a", NULL));
  af_breaker_release(mk(f, "b", NULL));
  af_breaker_release(mk(f, "c", NULL));
  af_error_t err;
  af_breaker_t *b = NULL;
  assert_int_equal(
      af_breaker_registry_get_or_create(f->reg, "d", NULL, &b, NULL, &err),
      AF_ELIMIT);
  assert_string_equal(err.message, "too many breakers (limit 3)");
  assert_null(b);
  /* existing names still resolve at the limit */
  af_breaker_release(mk(f, "a", NULL));
  assert_int_equal(af_breaker_registry_unregister(f->reg, "a"), AF_OK);
  af_breaker_release(mk(f, "d", NULL));
  assert_int_equal(af_breaker_registry_count(f->reg), 3);
  void *st = f;
  teardown(&st);
}

static void find_returns_enotfound_for_unknown_name(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = NULL;
  assert_int_equal(af_breaker_registry_find(f->reg, "nope", &b), AF_ENOTFOUND);
  assert_null(b);
  af_breaker_release(mk(f, "yes", NULL));
  assert_int_equal(af_breaker_registry_find(f->reg, "yes", &b), AF_OK);
  assert_string_equal(af_breaker_name(b), "yes");
  af_breaker_release(b);
  assert_int_equal(af_breaker_registry_find(f->reg, NULL, &b), AF_EINVAL);
}

/* ---- state machine ----------------------------------------------------------
 */

static void opens_after_fail_max_consecutive_failures(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 4);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  assert_int_equal(info_of(b).consecutive_failures, 4);
  assert_true(af_breaker_allow(b));
  af_breaker_record_failure(b, "IOError");
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  const rec_event_t *e = last_transition(f);
  assert_non_null(e);
  assert_int_equal(e->from, AF_BREAKER_CLOSED);
  assert_int_equal(e->to, AF_BREAKER_OPEN);
  assert_string_equal(e->reason, "fail_max reached");
  assert_string_equal(e->name, "db");
  assert_int_equal(e->mono_ns, T0_MONO);
  assert_int_equal(e->wall_ns, T0_WALL);
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.fail_count, 5);
  assert_int_equal(in.transition_count, 1);
  assert_int_equal(in.opened_mono_ns, T0_MONO);
  assert_int_equal(in.last_transition_wall_ns, T0_WALL);
  assert_int_equal(in.next_half_open_mono_ns, T0_MONO + 30000 * AF_NS_PER_MS);
  af_breaker_release(b);
}

static void success_in_closed_resets_consecutive_failures(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 4);
  af_breaker_record_success(b);
  assert_int_equal(info_of(b).consecutive_failures, 0);
  fail_n(b, 4);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_record_failure(b, NULL);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.fail_count, 9);
  assert_int_equal(in.success_count, 1);
  af_breaker_release(b);
}

static void open_rejects_calls_and_counts_them(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  for (int i = 0; i < 3; i++)
    assert_false(af_breaker_allow(b));
  assert_int_equal(info_of(b).rejected_count, 3);
  af_breaker_release(b);
}

static void tick_moves_open_to_half_open_exactly_at_reset_timeout(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  uint64_t due = T0_MONO + 30000 * AF_NS_PER_MS;
  assert_int_equal(af_breaker_registry_tick(f->reg), due);
  af_manual_clock_advance_ms(f->mc, 29999);
  assert_int_equal(af_breaker_registry_tick(f->reg), due);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  af_manual_clock_advance_ms(f->mc, 1);
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  const rec_event_t *e = last_transition(f);
  assert_int_equal(e->from, AF_BREAKER_OPEN);
  assert_int_equal(e->to, AF_BREAKER_HALF_OPEN);
  assert_string_equal(e->reason, "reset_timeout elapsed");
  assert_int_equal(info_of(b).next_half_open_mono_ns, 0);
  af_breaker_release(b);
}

static void allow_moves_open_to_half_open_lazily(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  af_manual_clock_advance_ms(f->mc, 29999);
  assert_false(af_breaker_allow(b));
  af_manual_clock_advance_ms(f->mc, 1);
  assert_true(af_breaker_allow(b)); /* the trial call */
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  assert_false(af_breaker_allow(b));
  /* the heap entry went with the lazy move */
  assert_int_equal(af__breaker_registry_heap_size(f->reg), 0);
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  af_breaker_release(b);
}

static void half_open_admits_at_most_max_calls_in_flight(void **state)
{
  fx_t *f = *state;
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.half_open_max_calls = 3;
  c.success_threshold = 5;
  af_breaker_t *b = mk(f, "db", &c);
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_HALF_OPEN, NULL), AF_OK);
  assert_true(af_breaker_allow(b));
  assert_true(af_breaker_allow(b));
  assert_true(af_breaker_allow(b));
  assert_false(af_breaker_allow(b));
  assert_int_equal(info_of(b).rejected_count, 1);
  af_breaker_record_success(b); /* one trial finished: one slot frees */
  assert_true(af_breaker_allow(b));
  assert_false(af_breaker_allow(b));
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  af_breaker_release(b);
}

static void default_half_open_admits_one_trial(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "db", NULL);
  af_breaker_set_state(b, AF_BREAKER_HALF_OPEN, NULL);
  assert_true(af_breaker_allow(b));
  assert_false(af_breaker_allow(b));
  af_breaker_record_success(b);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_release(b);
}

static void success_threshold_two_needs_two_successes(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.success_threshold = 2;
  af_breaker_t *b = mk(f, "db", &c);
  fail_n(b, 5);
  af_manual_clock_advance_ms(f->mc, 30000);
  af_breaker_registry_tick(f->reg);
  assert_true(af_breaker_allow(b));
  af_breaker_record_success(b);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  assert_true(af_breaker_allow(b));
  af_breaker_record_success(b);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  const rec_event_t *e = last_transition(f);
  assert_int_equal(e->from, AF_BREAKER_HALF_OPEN);
  assert_int_equal(e->to, AF_BREAKER_CLOSED);
  assert_string_equal(e->reason, "success_threshold reached");
  assert_int_equal(info_of(b).consecutive_failures, 0);
  af_breaker_release(b);
}

static void failure_in_half_open_reopens_with_new_reset_timeout(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  af_manual_clock_advance_ms(f->mc, 30000);
  af_breaker_registry_tick(f->reg);
  assert_true(af_breaker_allow(b));
  af_manual_clock_advance_ms(f->mc, 10);
  af_breaker_record_failure(b, NULL);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  assert_string_equal(last_transition(f)->reason, "half-open trial failed");
  uint64_t due = T0_MONO + (30000 + 10 + 30000) * AF_NS_PER_MS;
  assert_int_equal(info_of(b).next_half_open_mono_ns, due);
  assert_int_equal(af_breaker_registry_tick(f->reg), due);
  af_manual_clock_advance_ms(f->mc, 29999);
  af_breaker_registry_tick(f->reg);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  af_manual_clock_advance_ms(f->mc, 1);
  af_breaker_registry_tick(f->reg);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  af_breaker_release(b);
}

static void excluded_error_type_counts_as_success(void **state)
{
  fx_t *f = *state;
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.fail_max = 2;
  c.excluded_count = 2;
  strcpy(c.excluded_errors[0], "NotFound");
  strcpy(c.excluded_errors[1], "BadRequest");
  af_breaker_t *b = mk(f, "db", &c);
  af_breaker_record_failure(b, "Timeout");
  af_breaker_record_failure(b, "BadRequest"); /* resets consecutive */
  af_breaker_record_failure(b, "Timeout");
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.fail_count, 2);
  assert_int_equal(in.success_count, 1);
  af_breaker_record_failure(b, NULL);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  /* in HALF_OPEN an excluded error closes like a success */
  af_breaker_set_state(b, AF_BREAKER_HALF_OPEN, NULL);
  af_breaker_record_failure(b, "NotFound");
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_release(b);
}

/* ---- forced states, set_state, reports -------------------------------------
 */

static void force_open_rejects_everything_until_unforced(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  assert_int_equal(af_breaker_force(b, AF_BREAKER_FORCED_OPEN, "chaos"), AF_OK);
  assert_string_equal(last_transition(f)->reason, "chaos");
  assert_false(af_breaker_allow(b));
  af_breaker_record_success(b);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_FORCED_OPEN);
  /* time does not lift it */
  af_manual_clock_advance_ms(f->mc, 1000000);
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  assert_false(af_breaker_allow(b));
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_CLOSED, NULL), AF_ESTATE);
  assert_int_equal(af_breaker_unforce(b, NULL), AF_OK);
  const rec_event_t *e = last_transition(f);
  assert_int_equal(e->from, AF_BREAKER_FORCED_OPEN);
  assert_int_equal(e->to, AF_BREAKER_CLOSED);
  assert_string_equal(e->reason, "unforced");
  assert_true(af_breaker_allow(b));
  assert_int_equal(af_breaker_unforce(b, NULL), AF_ESTATE);
  af_breaker_release(b);
}

static void disabled_admits_everything_and_never_opens(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  assert_int_equal(af_breaker_force(b, AF_BREAKER_DISABLED, NULL), AF_OK);
  assert_string_equal(last_transition(f)->reason, "forced");
  assert_int_equal(last_transition(f)->from, AF_BREAKER_OPEN);
  /* the OPEN deadline is gone */
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  fail_n(b, 50);
  assert_true(af_breaker_allow(b));
  assert_int_equal(af_breaker_state(b), AF_BREAKER_DISABLED);
  assert_int_equal(af_breaker_unforce(b, "operator"), AF_OK);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  assert_int_equal(info_of(b).consecutive_failures, 0);
  fail_n(b, 4);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_release(b);
}

static void force_rejects_non_forced_states(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "db", NULL);
  assert_int_equal(af_breaker_force(b, AF_BREAKER_OPEN, NULL), AF_EINVAL);
  assert_int_equal(af_breaker_force(b, AF_BREAKER_CLOSED, NULL), AF_EINVAL);
  assert_int_equal(af_breaker_force(b, (af_breaker_state_t)42, NULL),
                   AF_EINVAL);
  assert_int_equal(af_breaker_force(NULL, AF_BREAKER_DISABLED, NULL),
                   AF_EINVAL);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  af_breaker_release(b);
}

static void set_state_moves_directly_and_rejects_forced_states(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_OPEN, "probe failed"),
                   AF_OK);
  assert_string_equal(last_transition(f)->reason, "probe failed");
  assert_int_equal(af_breaker_registry_tick(f->reg),
                   T0_MONO + 30000 * AF_NS_PER_MS);
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_HALF_OPEN, NULL), AF_OK);
  assert_string_equal(last_transition(f)->reason, "set");
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_CLOSED, NULL), AF_OK);
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_FORCED_OPEN, NULL),
                   AF_EINVAL);
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_DISABLED, NULL),
                   AF_EINVAL);
  /* same state: no transition */
  uint64_t tc = info_of(b).transition_count;
  assert_int_equal(af_breaker_set_state(b, AF_BREAKER_CLOSED, NULL), AF_OK);
  assert_int_equal(info_of(b).transition_count, tc);
  af_breaker_release(b);
}

static void report_state_adopts_client_state(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  af_manual_clock_advance_ms(f->mc, 5);
  assert_int_equal(af_breaker_report_state(b, AF_BREAKER_OPEN, "pod-1"), AF_OK);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_OPEN);
  const rec_event_t *e = last_transition(f);
  assert_string_equal(e->reason, "reported");
  assert_int_equal(e->from, AF_BREAKER_CLOSED);
  assert_int_equal(e->to, AF_BREAKER_OPEN);
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.last_report_mono_ns, T0_MONO + 5 * AF_NS_PER_MS);
  assert_int_equal(in.last_report_wall_ns,
                   T0_WALL + (int64_t)(5 * AF_NS_PER_MS));
  assert_int_equal(in.instance_count, 1);
  assert_string_equal(in.instances[0], "pod-1");
  size_t before = f->rec.n;
  assert_int_equal(af_breaker_report_state(b, AF_BREAKER_OPEN, "pod-1"), AF_OK);
  assert_int_equal(f->rec.n, before); /* no change, no REPORT by default */
  assert_int_equal(af_breaker_report_state(b, AF_BREAKER_FORCED_OPEN, NULL),
                   AF_EINVAL);
  assert_int_equal(af_breaker_report_state(b, AF_BREAKER_DISABLED, NULL),
                   AF_EINVAL);
  af_breaker_force(b, AF_BREAKER_DISABLED, NULL);
  assert_int_equal(af_breaker_report_state(b, AF_BREAKER_CLOSED, NULL),
                   AF_ESTATE);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_DISABLED);
  af_breaker_release(b);
}

static void report_outcome_records_instances_and_returns_state(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "db", NULL);
  assert_int_equal(af_breaker_report_outcome(b, true, NULL, "pod-a"),
                   AF_BREAKER_CLOSED);
  for (int i = 0; i < 4; i++)
    assert_int_equal(af_breaker_report_outcome(b, false, "E", "pod-a"),
                     AF_BREAKER_CLOSED);
  assert_int_equal(af_breaker_report_outcome(b, false, "E", "pod-b"),
                   AF_BREAKER_OPEN);
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.instance_count, 2);
  assert_string_equal(in.instances[0], "pod-a");
  assert_string_equal(in.instances[1], "pod-b");
  assert_int_equal(in.success_count, 1);
  assert_int_equal(in.fail_count, 5);
  /* bounded: the oldest ids go first; invalid ids are ignored */
  for (int i = 0; i < 20; i++) {
    char id[32];
    snprintf(id, sizeof(id), "pod-%02d", i);
    af_breaker_report_outcome(b, true, NULL, id);
  }
  af_breaker_report_outcome(b, true, NULL, "bad\nid");
  af_breaker_report_outcome(b, true, NULL, "");
  in = info_of(b);
  assert_int_equal(in.instance_count, AF_BREAKER_INSTANCES_MAX);
  assert_string_equal(in.instances[0], "pod-04");
  assert_string_equal(in.instances[15], "pod-19");
  af_breaker_release(b);
}

static void report_events_are_emitted_only_when_enabled(void **state)
{
  (void)state;
  fx_t *f = fx_new(0, true);
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  af_breaker_report_outcome(b, true, NULL, "pod");
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_REPORT), 1);
  af_breaker_report_state(b, AF_BREAKER_CLOSED, "pod");
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_REPORT), 2);
  af_breaker_record_success(b); /* local hot path: never */
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_REPORT), 2);
  /* a transition replaces the REPORT event */
  af_breaker_report_state(b, AF_BREAKER_OPEN, "pod");
  assert_int_equal(count_kind(f, AF_BREAKER_EVENT_REPORT), 2);
  af_breaker_release(b);
  void *st = f;
  teardown(&st);
}

/* ---- listeners --------------------------------------------------------------
 */

static void listeners_get_registered_and_transitions_in_seq_order(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.weight = 2.0;
  af_breaker_t *b = mk(f, "db", &c);
  fail_n(b, 5);
  af_manual_clock_advance_ms(f->mc, 30000);
  af_breaker_registry_tick(f->reg);
  af_breaker_allow(b);
  af_breaker_record_success(b);
  assert_int_equal(f->rec.n, 4);
  assert_int_equal(f->rec.ev[0].kind, AF_BREAKER_EVENT_REGISTERED);
  assert_string_equal(f->rec.ev[0].reason, "registered");
  assert_int_equal(f->rec.ev[0].from, AF_BREAKER_CLOSED);
  assert_int_equal(f->rec.ev[0].to, AF_BREAKER_CLOSED);
  const af_breaker_state_t want[3][2] = {
      {AF_BREAKER_CLOSED, AF_BREAKER_OPEN},
      {AF_BREAKER_OPEN, AF_BREAKER_HALF_OPEN},
      {AF_BREAKER_HALF_OPEN, AF_BREAKER_CLOSED}};
  for (size_t i = 1; i < 4; i++) {
    assert_int_equal(f->rec.ev[i].kind, AF_BREAKER_EVENT_TRANSITION);
    assert_int_equal(f->rec.ev[i].from, want[i - 1][0]);
    assert_int_equal(f->rec.ev[i].to, want[i - 1][1]);
    assert_true(f->rec.ev[i].seq > f->rec.ev[i - 1].seq);
    assert_true(f->rec.ev[i].weight == 2.0);
  }
  af_breaker_release(b);
}

typedef struct {
  af_breaker_registry_t *reg;
  int calls;
  size_t seen_count;
  af_breaker_state_t seen_state;
} reentrant_ctx_t;

/* Calls back into the registry and the same breaker from inside a listener:
 * deadlocks if any lock were held. */
static void reentrant_fn(const af_breaker_event_t *ev, void *ctx)
{
  reentrant_ctx_t *r = ctx;
  r->calls++;
  af_breaker_t *b = NULL;
  if (af_breaker_registry_find(r->reg, ev->name, &b) == AF_OK) {
    af_breaker_info_t in;
    af_breaker_info(b, &in);
    r->seen_state = in.state;
    if (ev->kind == AF_BREAKER_EVENT_TRANSITION && ev->to == AF_BREAKER_OPEN)
      af_breaker_force(b, AF_BREAKER_FORCED_OPEN, "from listener");
    af_breaker_release(b);
  }
  af_breaker_info_t *all = NULL;
  size_t n = 0;
  if (af_breaker_registry_list(r->reg, &all, &n) == AF_OK)
    af_free(all);
  r->seen_count = af_breaker_registry_count(r->reg);
  af_breaker_registry_tick(r->reg);
}

static void listener_may_call_back_into_registry_without_deadlock(void **state)
{
  fx_t *f = *state;
  reentrant_ctx_t r = {.reg = f->reg};
  assert_true(af_breaker_registry_add_listener(f->reg, reentrant_fn, &r) > 0);
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  assert_int_equal(r.seen_count, 1);
  fail_n(b, 5);
  /* the listener's own force is delivered after it returns, in order */
  assert_int_equal(af_breaker_state(b), AF_BREAKER_FORCED_OPEN);
  assert_int_equal(r.calls, 3);
  assert_int_equal(f->rec.n, 3);
  assert_int_equal(f->rec.ev[1].to, AF_BREAKER_OPEN);
  assert_int_equal(f->rec.ev[2].from, AF_BREAKER_OPEN);
  assert_int_equal(f->rec.ev[2].to, AF_BREAKER_FORCED_OPEN);
  assert_string_equal(f->rec.ev[2].reason, "from listener");
  assert_true(f->rec.ev[2].seq > f->rec.ev[1].seq);
  af_breaker_release(b);
}

static void listener_table_holds_eight_and_remove_stops_delivery(void **state)
{
  fx_t *f = *state;
  recorder_t extra;
  memset(&extra, 0, sizeof(extra));
  pthread_mutex_init(&extra.mu, NULL);
  int ids[AF_BREAKER_LISTENERS_MAX];
  for (int i = 0; i < AF_BREAKER_LISTENERS_MAX; i++) {
    ids[i] = af_breaker_registry_add_listener(f->reg, rec_fn, &extra);
    assert_true(ids[i] > 0);
    for (int j = 0; j < i; j++)
      assert_int_not_equal(ids[i], ids[j]);
  }
  assert_int_equal(af_breaker_registry_add_listener(f->reg, rec_fn, &extra),
                   (int)AF_ELIMIT);
  assert_int_equal(af_breaker_registry_add_listener(f->reg, NULL, NULL),
                   (int)AF_EINVAL);
  assert_int_equal(af_breaker_registry_add_listener(NULL, rec_fn, NULL),
                   (int)AF_EINVAL);
  af_breaker_release(mk(f, "a", NULL));
  assert_int_equal(extra.total, AF_BREAKER_LISTENERS_MAX);
  for (int i = 0; i < AF_BREAKER_LISTENERS_MAX - 1; i++)
    af_breaker_registry_remove_listener(f->reg, ids[i]);
  af_breaker_registry_remove_listener(f->reg, 9999); /* ignored */
  af_breaker_release(mk(f, "b", NULL));
  assert_int_equal(extra.total, AF_BREAKER_LISTENERS_MAX + 1);
  af_breaker_registry_remove_listener(f->reg,
                                      ids[AF_BREAKER_LISTENERS_MAX - 1]);
  af_breaker_release(mk(f, "c", NULL));
  assert_int_equal(extra.total, AF_BREAKER_LISTENERS_MAX + 1);
  assert_true(af_breaker_registry_add_listener(f->reg, rec_fn, &extra) > 0);
  pthread_mutex_destroy(&extra.mu);
}

/* ---- unregister, reset, list
 * --------------------------------------------------
 */

static void unregister_keeps_handle_valid_until_released(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  assert_int_equal(af__breaker_registry_heap_size(f->reg), 1);
  assert_int_equal(af_breaker_registry_unregister(f->reg, "db"), AF_OK);
  assert_int_equal(f->rec.ev[f->rec.n - 1].kind, AF_BREAKER_EVENT_UNREGISTERED);
  assert_int_equal(f->rec.ev[f->rec.n - 1].to, AF_BREAKER_OPEN);
  assert_int_equal(af_breaker_registry_count(f->reg), 0);
  assert_int_equal(af__breaker_registry_heap_size(f->reg), 0);
  assert_int_equal(af_breaker_registry_unregister(f->reg, "db"), AF_ENOTFOUND);
  af_breaker_t *x;
  assert_int_equal(af_breaker_registry_find(f->reg, "db", &x), AF_ENOTFOUND);
  /* the handle still works, lazily */
  assert_string_equal(af_breaker_name(b), "db");
  assert_false(af_breaker_allow(b));
  af_manual_clock_advance_ms(f->mc, 30000);
  assert_true(af_breaker_allow(b));
  af_breaker_record_success(b);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  /* a new breaker of the same name is a different one */
  af_breaker_t *c = mk(f, "db", NULL);
  assert_ptr_not_equal(b, c);
  af_breaker_release(c);
  af_breaker_release(b);
}

static void reset_closes_and_zeroes_counters(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  af_breaker_record_success(b);
  fail_n(b, 5);
  af_breaker_allow(b);
  assert_int_equal(af_breaker_registry_reset(f->reg, "db"), AF_OK);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  const rec_event_t *e = last_transition(f);
  assert_int_equal(e->from, AF_BREAKER_OPEN);
  assert_string_equal(e->reason, "reset");
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.fail_count, 0);
  assert_int_equal(in.success_count, 0);
  assert_int_equal(in.rejected_count, 0);
  assert_int_equal(in.consecutive_failures, 0);
  assert_int_equal(in.transition_count, 2);
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  /* reset lifts forced states; CLOSED -> CLOSED emits nothing */
  af_breaker_force(b, AF_BREAKER_FORCED_OPEN, NULL);
  assert_int_equal(af_breaker_registry_reset(f->reg, "db"), AF_OK);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  size_t n = f->rec.n;
  assert_int_equal(af_breaker_registry_reset(f->reg, "db"), AF_OK);
  assert_int_equal(f->rec.n, n);
  assert_int_equal(af_breaker_registry_reset(f->reg, "nope"), AF_ENOTFOUND);
  af_breaker_release(b);
}

static void reset_all_resets_every_breaker_and_counts_them(void **state)
{
  fx_t *f = *state;
  const char *names[] = {"a", "b", "c"};
  af_breaker_t *bs[3];
  for (int i = 0; i < 3; i++) {
    bs[i] = mk(f, names[i], NULL);
    fail_n(bs[i], 5);
  }
  af_breaker_force(bs[2], AF_BREAKER_DISABLED, NULL);
  assert_int_equal(af_breaker_registry_reset_all(f->reg), 3);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(af_breaker_state(bs[i]), AF_BREAKER_CLOSED);
    af_breaker_release(bs[i]);
  }
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  assert_int_equal(af_breaker_registry_reset_all(NULL), 0);
}

static void list_returns_snapshots_sorted_by_name(void **state)
{
  fx_t *f = *state;
  af_breaker_info_t *all = (af_breaker_info_t *)0x1;
  size_t n = 99;
  assert_int_equal(af_breaker_registry_list(f->reg, &all, &n), AF_OK);
  assert_int_equal(n, 0);
  assert_null(all);
  const char *names[] = {"zeta", "alpha", "mu", "beta", "omega"};
  for (size_t i = 0; i < 5; i++)
    af_breaker_release(mk(f, names[i], NULL));
  af_breaker_t *b;
  af_breaker_registry_find(f->reg, "mu", &b);
  fail_n(b, 5);
  af_breaker_release(b);
  assert_int_equal(af_breaker_registry_list(f->reg, &all, &n), AF_OK);
  assert_int_equal(n, 5);
  const char *sorted[] = {"alpha", "beta", "mu", "omega", "zeta"};
  for (size_t i = 0; i < 5; i++)
    assert_string_equal(all[i].name, sorted[i]);
  assert_int_equal(all[2].state, AF_BREAKER_OPEN);
  assert_int_equal(all[2].fail_count, 5);
  assert_int_equal(all[0].registered_wall_ns, T0_WALL);
  assert_int_equal(all[0].last_transition_wall_ns, 0);
  assert_int_equal(all[0].last_report_wall_ns, 0);
  assert_int_equal(all[0].opened_mono_ns, 0);
  af_free(all);
}

/* ---- timer ------------------------------------------------------------------
 */

static void tick_returns_earliest_deadline_or_uint64_max(void **state)
{
  fx_t *f = *state;
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  af_breaker_config_t slow, fast;
  af_breaker_config_init(&slow);
  slow.fail_max = 1;
  slow.reset_timeout_ms = 60000;
  fast = slow;
  fast.reset_timeout_ms = 1000;
  af_breaker_t *a = mk(f, "slow", &slow);
  af_breaker_t *b = mk(f, "fast", &fast);
  af_breaker_record_failure(a, NULL);
  af_manual_clock_advance_ms(f->mc, 10);
  af_breaker_record_failure(b, NULL);
  assert_int_equal(af_breaker_registry_tick(f->reg),
                   T0_MONO + 1010 * AF_NS_PER_MS);
  af_manual_clock_advance_ms(f->mc, 1000);
  assert_int_equal(af_breaker_registry_tick(f->reg),
                   T0_MONO + 60000 * AF_NS_PER_MS);
  assert_int_equal(af__breaker_registry_last_tick_visited(f->reg), 1);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_HALF_OPEN);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_OPEN);
  af_manual_clock_advance_ms(f->mc, 100000);
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  assert_int_equal(af_breaker_state(a), AF_BREAKER_HALF_OPEN);
  af_breaker_release(a);
  af_breaker_release(b);
}

static void tick_moves_more_than_one_batch_of_due_breakers(void **state)
{
  fx_t *f = *state;
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.fail_max = 1;
  enum { N = 200 };
  for (int i = 0; i < N; i++) {
    char name[32];
    snprintf(name, sizeof(name), "b%03d", i);
    af_breaker_t *b = mk(f, name, &c);
    af_breaker_record_failure(b, NULL);
    af_breaker_release(b);
    af_manual_clock_advance_ns(f->mc, 1);
  }
  assert_int_equal(af__breaker_registry_heap_size(f->reg), N);
  af_manual_clock_advance_ms(f->mc, 30000);
  assert_int_equal(af_breaker_registry_tick(f->reg), UINT64_MAX);
  assert_int_equal(af__breaker_registry_last_tick_visited(f->reg), N);
  af_breaker_info_t *all;
  size_t n;
  assert_int_equal(af_breaker_registry_list(f->reg, &all, &n), AF_OK);
  for (size_t i = 0; i < n; i++)
    assert_int_equal(all[i].state, AF_BREAKER_HALF_OPEN);
  af_free(all);
}

static void tick_with_100k_breakers_and_nothing_due_visits_nothing(void **state)
{
  (void)state;
  fx_t *f = fx_new(0, false);
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.fail_max = 1;
  enum { N = 100000 };
  for (int i = 0; i < N; i++) {
    char name[32];
    snprintf(name, sizeof(name), "svc-%06d", i);
    af_breaker_t *b = NULL;
    assert_int_equal(
        af_breaker_registry_get_or_create(f->reg, name, &c, &b, NULL, NULL),
        AF_OK);
    if (i % 1000 == 0) /* 100 OPEN, staggered deadlines */
      af_breaker_record_failure(b, NULL);
    af_breaker_release(b);
    if (i % 1000 == 0)
      af_manual_clock_advance_ns(f->mc, 1);
  }
  assert_int_equal(af_breaker_registry_count(f->reg), N);
  assert_int_equal(af__breaker_registry_heap_size(f->reg), 100);
  for (int i = 0; i < 1000; i++) {
    assert_int_equal(af_breaker_registry_tick(f->reg),
                     T0_MONO + 30000 * AF_NS_PER_MS);
    assert_int_equal(af__breaker_registry_last_tick_visited(f->reg), 0);
  }
  af_manual_clock_advance_ms(f->mc, 30000);
  af_breaker_registry_tick(f->reg);
  assert_int_equal(af__breaker_registry_last_tick_visited(f->reg), 100);
  assert_int_equal(af__breaker_registry_heap_size(f->reg), 0);
  void *st = f;
  teardown(&st);
}

/* ---- threads ----------------------------------------------------------------
 */

enum { THREADS = 4, PER_THREAD = 100000 };

typedef struct {
  af_breaker_t *b;
  int idx;
} worker_t;

static void *worker(void *arg)
{
  worker_t *w = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    af_breaker_allow(w->b);
    if ((i + w->idx) % 2 == 0)
      af_breaker_record_success(w->b);
    else
      af_breaker_record_failure(w->b, NULL);
  }
  return NULL;
}

static void concurrent_records_add_up_exactly(void **state)
{
  fx_t *f = *state;
  listen(f);
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  c.fail_max = 2; /* transitions happen while counting */
  c.reset_timeout_ms = 1;
  af_breaker_t *b = mk(f, "shared", &c);
  pthread_t th[THREADS];
  worker_t w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i].b = b;
    w[i].idx = i;
    assert_int_equal(pthread_create(&th[i], NULL, worker, &w[i]), 0);
  }
  /* time moves and the timer ticks while they run */
  for (int i = 0; i < 2000; i++) {
    af_manual_clock_advance_ms(f->mc, 1);
    af_breaker_registry_tick(f->reg);
  }
  for (int i = 0; i < THREADS; i++)
    pthread_join(th[i], NULL);
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.success_count, THREADS * PER_THREAD / 2);
  assert_int_equal(in.fail_count, THREADS * PER_THREAD / 2);
  /* every transition was delivered once, in seq order, with from == the
   * previous to */
  pthread_mutex_lock(&f->rec.mu);
  assert_int_equal(f->rec.total, 1 + in.transition_count);
  size_t n = f->rec.n;
  for (size_t i = 1; i < n; i++) {
    assert_true(f->rec.ev[i].seq > f->rec.ev[i - 1].seq);
    if (i > 1)
      assert_int_equal(f->rec.ev[i].from, f->rec.ev[i - 1].to);
  }
  pthread_mutex_unlock(&f->rec.mu);
  af_breaker_release(b);
}

static void *closed_worker(void *arg)
{
  worker_t *w = arg;
  for (int i = 0; i < PER_THREAD; i++) {
    if (!af_breaker_allow(w->b))
      return (void *)1;
    af_breaker_record_success(w->b);
  }
  return NULL;
}

static void concurrent_successes_in_closed_stay_closed_and_count(void **state)
{
  fx_t *f = *state;
  af_breaker_t *b = mk(f, "hot", NULL);
  pthread_t th[THREADS];
  worker_t w[THREADS];
  for (int i = 0; i < THREADS; i++) {
    w[i].b = b;
    w[i].idx = i;
    assert_int_equal(pthread_create(&th[i], NULL, closed_worker, &w[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    void *r;
    pthread_join(th[i], &r);
    assert_null(r);
  }
  af_breaker_info_t in = info_of(b);
  assert_int_equal(in.success_count, THREADS * PER_THREAD);
  assert_int_equal(in.rejected_count, 0);
  assert_int_equal(in.transition_count, 0);
  af_breaker_release(b);
}

typedef struct {
  af_breaker_registry_t *reg;
  int idx;
} creator_t;

static void *creator(void *arg)
{
  creator_t *c = arg;
  for (int i = 0; i < 1000; i++) {
    char name[32];
    snprintf(name, sizeof(name), "n%d", (i * 7 + c->idx) % 500);
    af_breaker_t *b = NULL;
    if (af_breaker_registry_get_or_create(c->reg, name, NULL, &b, NULL, NULL) !=
        AF_OK)
      return (void *)1;
    af_breaker_record_failure(b, NULL);
    af_breaker_release(b);
  }
  return NULL;
}

static atomic_size_t registered_events;
static void count_registered(const af_breaker_event_t *ev, void *ctx)
{
  (void)ctx;
  if (ev->kind == AF_BREAKER_EVENT_REGISTERED)
    atomic_fetch_add(&registered_events, 1);
}

static void concurrent_get_or_create_yields_one_breaker_per_name(void **state)
{
  fx_t *f = *state;
  atomic_store(&registered_events, 0);
  assert_true(af_breaker_registry_add_listener(f->reg, count_registered, NULL) >
              0);
  pthread_t th[THREADS];
  creator_t c[THREADS];
  for (int i = 0; i < THREADS; i++) {
    c[i].reg = f->reg;
    c[i].idx = i;
    assert_int_equal(pthread_create(&th[i], NULL, creator, &c[i]), 0);
  }
  for (int i = 0; i < THREADS; i++) {
    void *r;
    pthread_join(th[i], &r);
    assert_null(r);
  }
  assert_int_equal(af_breaker_registry_count(f->reg), 500);
  af_breaker_info_t *all;
  size_t n;
  assert_int_equal(af_breaker_registry_list(f->reg, &all, &n), AF_OK);
  uint64_t fails = 0;
  for (size_t i = 0; i < n; i++)
    fails += all[i].fail_count;
  assert_int_equal(fails, THREADS * 1000);
  af_free(all);
  assert_int_equal(atomic_load(&registered_events), 500);
}

/* ---- lifetime, NULLs, allocation failure
 * --------------------------------------
 */

static void handle_outlives_registry_destroy(void **state)
{
  (void)state;
  fx_t *f = fx_new(0, false);
  listen(f);
  af_breaker_t *b = mk(f, "db", NULL);
  fail_n(b, 5);
  af_breaker_registry_destroy(f->reg);
  f->reg = NULL;
  size_t n = f->rec.n;
  assert_false(af_breaker_allow(b));
  af_manual_clock_advance_ms(f->mc, 30000);
  assert_true(af_breaker_allow(b));
  af_breaker_record_success(b);
  assert_int_equal(af_breaker_state(b), AF_BREAKER_CLOSED);
  assert_int_equal(f->rec.n, n); /* no listeners any more */
  af_breaker_release(b);
  af_manual_clock_destroy(f->mc);
  pthread_mutex_destroy(&f->rec.mu);
  free(f);
}

static void null_arguments_are_harmless(void **state)
{
  (void)state;
  assert_false(af_breaker_allow(NULL));
  af_breaker_record_success(NULL);
  af_breaker_record_failure(NULL, "x");
  af_breaker_retain(NULL);
  af_breaker_release(NULL);
  assert_null(af_breaker_name(NULL));
  assert_int_equal(af_breaker_state(NULL), AF_BREAKER_CLOSED);
  assert_int_equal(af_breaker_report_outcome(NULL, true, NULL, NULL),
                   AF_BREAKER_CLOSED);
  assert_int_equal(af_breaker_report_state(NULL, AF_BREAKER_OPEN, NULL),
                   AF_EINVAL);
  assert_int_equal(af_breaker_unforce(NULL, NULL), AF_EINVAL);
  assert_int_equal(af_breaker_set_state(NULL, AF_BREAKER_OPEN, NULL),
                   AF_EINVAL);
  af_breaker_info(NULL, NULL);
  assert_int_equal(af_breaker_registry_count(NULL), 0);
  assert_int_equal(af_breaker_registry_tick(NULL), UINT64_MAX);
  af_breaker_registry_remove_listener(NULL, 1);
  af_error_t err;
  assert_int_equal(
      af_breaker_registry_get_or_create(NULL, "x", NULL, NULL, NULL, &err),
      AF_EINVAL);
  af_breaker_info_t *all;
  size_t n;
  assert_int_equal(af_breaker_registry_list(NULL, &all, &n), AF_EINVAL);
  assert_int_equal(af_breaker_registry_unregister(NULL, "x"), AF_EINVAL);
  assert_int_equal(af_breaker_registry_reset(NULL, "x"), AF_EINVAL);
}

static void noop_fn(const af_breaker_event_t *ev, void *ctx)
{
  (void)ev;
  (void)ctx;
}

static int fail_after = -1; /* allocations left before failing; -1 = never */
static void *fail_malloc(size_t size, void *ctx)
{
  (void)ctx;
  if (fail_after == 0)
    return NULL;
  if (fail_after > 0)
    fail_after--;
  return malloc(size);
}
static void *fail_realloc(void *p, size_t size, void *ctx)
{
  (void)ctx;
  if (fail_after == 0)
    return NULL;
  if (fail_after > 0)
    fail_after--;
  return realloc(p, size);
}
static void fail_free(void *p, void *ctx)
{
  (void)ctx;
  free(p);
}

static void allocation_failure_reports_enomem_and_leaks_nothing(void **state)
{
  (void)state;
  af_allocator_t a = {fail_malloc, fail_realloc, fail_free, NULL};
  assert_int_equal(af_alloc_replace(&a), AF_OK);
  af_breaker_config_t c;
  af_breaker_config_init(&c);
  strcpy(c.description, "d");
  strcpy(c.service, "s");
  c.excluded_count = 1;
  strcpy(c.excluded_errors[0], "E");
  bool done = false;
  for (int k = 0; k < 64 && !done; k++) {
    af_breaker_registry_t *reg = NULL;
    fail_after = k;
    af_status_t st = af_breaker_registry_create(&reg, NULL);
    if (st != AF_OK) {
      assert_int_equal(st, AF_ENOMEM);
      assert_null(reg);
      continue;
    }
    fail_after = -1;
    int id = af_breaker_registry_add_listener(reg, noop_fn, NULL);
    (void)id;
    fail_after = k;
    af_breaker_t *b = NULL;
    bool created = false;
    af_error_t err;
    st = af_breaker_registry_get_or_create(reg, "db", &c, &b, &created, &err);
    fail_after = -1;
    if (st == AF_OK) {
      assert_true(created);
      assert_int_equal(af_breaker_registry_count(reg), 1);
      af_breaker_release(b);
      done = true;
    } else {
      assert_int_equal(st, AF_ENOMEM);
      assert_null(b);
      assert_false(created);
      assert_int_equal(af_breaker_registry_count(reg), 0);
    }
    af_breaker_registry_remove_listener(reg, id);
    af_breaker_registry_destroy(reg);
  }
  fail_after = -1;
  assert_true(done);
  assert_int_equal(af_alloc_replace(NULL), AF_OK);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(config_init_sets_documented_defaults),
      T(config_validate_reports_each_rule_with_its_message),
      T(config_validate_accepts_boundaries),
      T(registry_create_rejects_zero_max_breakers),
      T(get_or_create_rejects_invalid_names),
      T(get_or_create_is_idempotent),
      T(get_or_create_with_invalid_config_creates_nothing),
      T(get_or_create_with_new_config_updates_and_emits_config_changed),
      T(get_or_create_past_limit_fails_with_elimit),
      T(find_returns_enotfound_for_unknown_name),
      T(opens_after_fail_max_consecutive_failures),
      T(success_in_closed_resets_consecutive_failures),
      T(open_rejects_calls_and_counts_them),
      T(tick_moves_open_to_half_open_exactly_at_reset_timeout),
      T(allow_moves_open_to_half_open_lazily),
      T(half_open_admits_at_most_max_calls_in_flight),
      T(default_half_open_admits_one_trial),
      T(success_threshold_two_needs_two_successes),
      T(failure_in_half_open_reopens_with_new_reset_timeout),
      T(excluded_error_type_counts_as_success),
      T(force_open_rejects_everything_until_unforced),
      T(disabled_admits_everything_and_never_opens),
      T(force_rejects_non_forced_states),
      T(set_state_moves_directly_and_rejects_forced_states),
      T(report_state_adopts_client_state),
      T(report_outcome_records_instances_and_returns_state),
      T(report_events_are_emitted_only_when_enabled),
      T(listeners_get_registered_and_transitions_in_seq_order),
      T(listener_may_call_back_into_registry_without_deadlock),
      T(listener_table_holds_eight_and_remove_stops_delivery),
      T(unregister_keeps_handle_valid_until_released),
      T(reset_closes_and_zeroes_counters),
      T(reset_all_resets_every_breaker_and_counts_them),
      T(list_returns_snapshots_sorted_by_name),
      T(tick_returns_earliest_deadline_or_uint64_max),
      T(tick_moves_more_than_one_batch_of_due_breakers),
      T(tick_with_100k_breakers_and_nothing_due_visits_nothing),
      T(concurrent_records_add_up_exactly),
      T(concurrent_successes_in_closed_stay_closed_and_count),
      T(concurrent_get_or_create_yields_one_breaker_per_name),
      T(handle_outlives_registry_destroy),
      T(null_arguments_are_harmless),
      T(allocation_failure_reports_enomem_and_leaks_nothing),
  };
#undef T
  return cmocka_run_group_tests(tests, NULL, NULL);
}
