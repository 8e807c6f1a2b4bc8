/*
 * test_health.c - unit tests for core/src/health.c (the health aggregator).
 *
 * Time is a manual clock; nothing sleeps.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime for the timing print */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/clock.h"
#include "af/health.h"

/* |a - b| <= eps (this cmocka has no assert_double_equal). */
#define assert_near(a, b, eps)                                                 \
  assert_true(fabs((double)(a) - (double)(b)) <= (eps))

#define T0_MONO (UINT64_C(1000) * AF_NS_PER_SEC)
#define T0_WALL (INT64_C(1700000000) * (int64_t)AF_NS_PER_SEC)

typedef struct {
  af_manual_clock_t *mc;
  af_health_t *h;
} fixture_t;

static fixture_t *fixture_new(af_health_config_t *cfg)
{
  fixture_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  assert_int_equal(af_manual_clock_create(&f->mc, T0_MONO, T0_WALL), AF_OK);
  af_health_config_t local;
  if (cfg == NULL) {
    af_health_config_init(&local);
    cfg = &local;
  }
  cfg->clock = af_manual_clock_clock(f->mc);
  af_error_t err;
  assert_int_equal(af_health_create(&f->h, cfg, &err), AF_OK);
  return f;
}

static void fixture_free(fixture_t *f)
{
  af_health_destroy(f->h);
  af_manual_clock_destroy(f->mc);
  free(f);
}

static void track_n(af_health_t *h, const char *prefix, size_t n,
                    af_breaker_state_t st, double weight)
{
  char name[64];
  for (size_t i = 0; i < n; i++) {
    snprintf(name, sizeof(name), "%s-%zu", prefix, i);
    assert_int_equal(af_health_track(h, name, st, weight), AF_OK);
  }
}

static void set_n(af_health_t *h, const char *prefix, size_t n,
                  af_breaker_state_t st)
{
  char name[64];
  for (size_t i = 0; i < n; i++) {
    snprintf(name, sizeof(name), "%s-%zu", prefix, i);
    assert_int_equal(af_health_set_state(h, name, st), AF_OK);
  }
}

static af_health_status_t status_of(af_health_t *h, double *score)
{
  af_health_status_t st;
  af_health_summary(h, &st, score, NULL);
  return st;
}

/* A callback that records what it saw. */
typedef struct {
  atomic_int calls;
  af_health_change_t last;
  int ret;
  af_health_t *h;
  af_health_status_t summary_status;
  double summary_score;
  int remove_id;
} recorder_t;

static int record_cb(const af_health_change_t *c, void *ctx)
{
  recorder_t *r = ctx;
  atomic_fetch_add(&r->calls, 1);
  r->last = *c;
  return r->ret;
}

/* ---- config ------------------------------------------------------------ */

static void config_init_sets_documented_defaults(void **state)
{
  (void)state;
  af_health_config_t cfg;
  memset(&cfg, 0xab, sizeof(cfg));
  af_health_config_init(&cfg);
  assert_null(cfg.clock);
  assert_true(cfg.has_registry);
  assert_int_equal(cfg.check_interval_ms, 1000);
  assert_int_equal(cfg.history_size, 300);
  assert_int_equal(cfg.history_window_ms, 300000);
  assert_int_equal(cfg.stale_after_ms, 0);
  assert_true(cfg.hysteresis == 0.0);
  assert_int_equal(cfg.max_tracked, 1000000);
  af_health_config_init(NULL); /* no crash */
}

static void expect_create_error(af_health_config_t *cfg, const char *msg)
{
  af_health_t *h = (af_health_t *)(uintptr_t)0x1;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_health_create(&h, cfg, &err), AF_EINVAL);
  assert_int_equal(err.code, AF_EINVAL);
  assert_string_equal(err.message, msg);
  assert_ptr_equal(h, (af_health_t *)(uintptr_t)0x1); /* untouched */
  assert_int_equal(af_health_create(&h, cfg, NULL), AF_EINVAL);
}

static void create_rejects_zero_check_interval(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.check_interval_ms = 0;
  expect_create_error(&cfg, "health_check_interval must be > 0");
}

static void create_rejects_zero_history_size(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.history_size = 0;
  expect_create_error(&cfg, "history_size must be >= 1");
}

static void create_rejects_hysteresis_outside_zero_to_point_two(void **state)
{
  (void)state;
  const double bad[] = {-0.000001, 0.2000001, 1.0, NAN, INFINITY};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    af_health_config_t cfg;
    af_health_config_init(&cfg);
    cfg.hysteresis = bad[i];
    expect_create_error(&cfg, "hysteresis must be between 0.0 and 0.2");
  }
  const double good[] = {0.0, 0.1, 0.2};
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
    af_health_config_t cfg;
    af_health_config_init(&cfg);
    cfg.hysteresis = good[i];
    af_health_t *h = NULL;
    assert_int_equal(af_health_create(&h, &cfg, NULL), AF_OK);
    af_health_destroy(h);
  }
}

static void create_rejects_zero_max_tracked(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.max_tracked = 0;
  expect_create_error(&cfg, "max_tracked must be >= 1");
}

static void create_accepts_boundary_values_and_null_config(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.check_interval_ms = 1;
  cfg.history_size = 1;
  cfg.max_tracked = 1;
  af_health_t *h = NULL;
  assert_int_equal(af_health_create(&h, &cfg, NULL), AF_OK);
  af_health_destroy(h);
  h = NULL;
  assert_int_equal(af_health_create(&h, NULL, NULL), AF_OK);
  af_health_metrics_t m;
  af_health_metrics(h, &m);
  assert_int_equal(m.history_capacity, 300);
  af_health_destroy(h);
  assert_int_equal(af_health_create(NULL, NULL, NULL), AF_EINVAL);
  af_health_destroy(NULL); /* no-op */
}

/* ---- pure helpers ------------------------------------------------------ */

static void status_names_match_the_seed(void **state)
{
  (void)state;
  assert_string_equal(af_health_status_name(AF_HEALTH_UNKNOWN), "UNKNOWN");
  assert_string_equal(af_health_status_name(AF_HEALTH_HEALTHY), "HEALTHY");
  assert_string_equal(af_health_status_name(AF_HEALTH_DEGRADED), "DEGRADED");
  assert_string_equal(af_health_status_name(AF_HEALTH_CRITICAL), "CRITICAL");
  assert_string_equal(af_health_status_name((af_health_status_t)42), "UNKNOWN");
}

static void status_for_score_uses_inclusive_thresholds(void **state)
{
  (void)state;
  assert_int_equal(af_health_status_for_score(1.0), AF_HEALTH_HEALTHY);
  assert_int_equal(af_health_status_for_score(0.7), AF_HEALTH_HEALTHY);
  assert_int_equal(af_health_status_for_score(7.0 / 10.0), AF_HEALTH_HEALTHY);
  assert_int_equal(af_health_status_for_score(0.1 * 7.0), AF_HEALTH_HEALTHY);
  assert_int_equal(af_health_status_for_score(0.69), AF_HEALTH_DEGRADED);
  assert_int_equal(af_health_status_for_score(0.5), AF_HEALTH_DEGRADED);
  assert_int_equal(af_health_status_for_score(0.49), AF_HEALTH_CRITICAL);
  assert_int_equal(af_health_status_for_score(0.0), AF_HEALTH_CRITICAL);
  assert_int_equal(af_health_status_for_score(NAN), AF_HEALTH_CRITICAL);
}

/* ---- scoring ----------------------------------------------------------- */

static void no_breakers_scores_one_and_is_healthy(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  double score = -1;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 1.0);
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.status, AF_HEALTH_HEALTHY);
  assert_true(r.score == 1.0);
  assert_int_equal(r.total, 0);
  assert_null(r.breakers);
  assert_null(r.degraded);
  assert_null(r.critical);
  assert_null(r.stale_names);
  af_health_report_free(&r);
  fixture_free(f);
}

static void without_registry_status_is_unknown_with_score_zero(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.has_registry = false;
  fixture_t *f = fixture_new(&cfg);
  double score = -1;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_UNKNOWN);
  assert_true(score == 0.0);
  track_n(f->h, "a", 3, AF_BREAKER_CLOSED, 1.0);
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.status, AF_HEALTH_UNKNOWN);
  assert_true(r.score == 0.0);
  assert_int_equal(r.total, 3);
  assert_int_equal(r.closed, 3);
  af_health_report_free(&r);
  fixture_free(f);
}

static void
seven_closed_three_open_scores_exactly_point_seven_healthy(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "c", 7, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "o", 3, AF_BREAKER_OPEN, 1.0);
  double score;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 0.7);
  fixture_free(f);
}

static void sixty_nine_percent_is_degraded(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "c", 69, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "o", 31, AF_BREAKER_OPEN, 1.0);
  double score;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_near(score, 0.69, 1e-12);
  fixture_free(f);
}

static void
exactly_half_is_degraded_and_forty_nine_percent_critical(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "c", 49, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "o", 50, AF_BREAKER_OPEN, 1.0);
  track_n(f->h, "x", 1, AF_BREAKER_CLOSED, 1.0);
  double score;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_true(score == 0.5);
  assert_int_equal(af_health_set_state(f->h, "x-0", AF_BREAKER_OPEN), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_CRITICAL);
  assert_near(score, 0.49, 1e-12);
  fixture_free(f);
}

static void weights_scale_contributions_exactly_at_thresholds(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  double score;
  /* 0.7 / 0.3 weights: score 0.7 exactly, HEALTHY. */
  assert_int_equal(af_health_track(f->h, "a", AF_BREAKER_CLOSED, 0.7), AF_OK);
  assert_int_equal(af_health_track(f->h, "b", AF_BREAKER_OPEN, 0.3), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_near(score, 0.7, 1e-12);
  /* 0.69 / 0.31: DEGRADED. */
  assert_int_equal(af_health_set_weight(f->h, "a", 0.69), AF_OK);
  assert_int_equal(af_health_set_weight(f->h, "b", 0.31), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_near(score, 0.69, 1e-12);
  /* 7 vs 3 (weights above 1). */
  assert_int_equal(af_health_set_weight(f->h, "a", 7.0), AF_OK);
  assert_int_equal(af_health_set_weight(f->h, "b", 3.0), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 0.7);
  /* 1 vs 1: 0.5 DEGRADED; 0.49 vs 0.51 CRITICAL. */
  assert_int_equal(af_health_set_weight(f->h, "a", 1.0), AF_OK);
  assert_int_equal(af_health_set_weight(f->h, "b", 1.0), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_true(score == 0.5);
  assert_int_equal(af_health_set_weight(f->h, "a", 0.49), AF_OK);
  assert_int_equal(af_health_set_weight(f->h, "b", 0.51), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_CRITICAL);
  assert_near(score, 0.49, 1e-12);
  fixture_free(f);
}

static void half_open_counts_half(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  double score;
  track_n(f->h, "c", 1, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "h", 1, AF_BREAKER_HALF_OPEN, 1.0);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 0.75);
  set_n(f->h, "c", 1, AF_BREAKER_HALF_OPEN);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_true(score == 0.5);
  fixture_free(f);
}

static void disabled_counts_closed_and_forced_open_counts_open(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  double score;
  assert_int_equal(af_health_track(f->h, "d", AF_BREAKER_DISABLED, 1.0), AF_OK);
  assert_int_equal(af_health_track(f->h, "f", AF_BREAKER_FORCED_OPEN, 1.0),
                   AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_true(score == 0.5);
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.closed, 1);
  assert_int_equal(r.open, 1);
  assert_int_equal(r.critical_count, 1);
  assert_string_equal(r.critical[0], "f");
  af_health_report_free(&r);
  fixture_free(f);
}

static void report_lists_sorted_names_counts_and_details(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  assert_int_equal(af_health_track(f->h, "zeta", AF_BREAKER_OPEN, 2.0), AF_OK);
  assert_int_equal(af_health_track(f->h, "alpha", AF_BREAKER_HALF_OPEN, 1.0),
                   AF_OK);
  assert_int_equal(af_health_track(f->h, "mid", AF_BREAKER_CLOSED, 1.0), AF_OK);
  af_manual_clock_advance_ms(f->mc, 5);
  assert_int_equal(af_health_track(f->h, "beta", AF_BREAKER_FORCED_OPEN, 1.0),
                   AF_OK);
  assert_int_equal(af_health_track(f->h, "gamma", AF_BREAKER_HALF_OPEN, 1.0),
                   AF_OK);
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.total, 5);
  assert_int_equal(r.closed, 1);
  assert_int_equal(r.half_open, 2);
  assert_int_equal(r.open, 2);
  assert_int_equal(r.stale, 0);
  /* (1*2 + 2*1 + 0) / (2 * 6) = 4/12 */
  assert_near(r.score, 1.0 / 3.0, 1e-12);
  assert_int_equal(r.status, AF_HEALTH_CRITICAL);
  assert_int_equal(r.degraded_count, 2);
  assert_string_equal(r.degraded[0], "alpha");
  assert_string_equal(r.degraded[1], "gamma");
  assert_int_equal(r.critical_count, 2);
  assert_string_equal(r.critical[0], "beta");
  assert_string_equal(r.critical[1], "zeta");
  assert_int_equal(r.stale_count, 0);
  assert_null(r.stale_names);
  assert_int_equal(r.breaker_count, 5);
  const char *order[] = {"alpha", "beta", "gamma", "mid", "zeta"};
  for (size_t i = 0; i < 5; i++)
    assert_string_equal(r.breakers[i].name, order[i]);
  assert_int_equal(r.breakers[4].state, AF_BREAKER_OPEN);
  assert_true(r.breakers[4].weight == 2.0);
  assert_false(r.breakers[4].stale);
  assert_int_equal(r.breakers[4].last_touch_wall_ns, T0_WALL);
  assert_int_equal(r.breakers[1].last_touch_wall_ns,
                   T0_WALL + 5 * (int64_t)AF_NS_PER_MS);
  assert_int_equal(r.wall_ns, T0_WALL + 5 * (int64_t)AF_NS_PER_MS);
  assert_int_equal(r.mono_ns, T0_MONO + 5 * AF_NS_PER_MS);
  uint64_t seq;
  af_health_summary(f->h, NULL, NULL, &seq);
  assert_int_equal(r.seq, seq);
  af_health_report_free(&r);
  af_health_report_free(&r); /* twice is safe */
  af_health_report_free(NULL);
  fixture_free(f);
}

static void untrack_removes_the_breaker_from_score_and_report(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "c", 1, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "o", 1, AF_BREAKER_OPEN, 1.0);
  double score;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_int_equal(af_health_untrack(f->h, "o-0"), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 1.0);
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.total, 1);
  assert_int_equal(r.breaker_count, 1);
  assert_string_equal(r.breakers[0].name, "c-0");
  af_health_report_free(&r);
  assert_int_equal(af_health_untrack(f->h, "c-0"), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 1.0);
  /* re-track after untrack works */
  assert_int_equal(af_health_track(f->h, "o-0", AF_BREAKER_OPEN, 1.0), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_CRITICAL);
  fixture_free(f);
}

static void track_and_updates_validate_their_arguments(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.max_tracked = 2;
  fixture_t *f = fixture_new(&cfg);
  af_health_t *h = f->h;
  assert_int_equal(af_health_track(h, "a", AF_BREAKER_CLOSED, 1.0), AF_OK);
  assert_int_equal(af_health_track(h, "a", AF_BREAKER_OPEN, 1.0), AF_EEXIST);
  assert_int_equal(af_health_track(NULL, "b", AF_BREAKER_CLOSED, 1.0),
                   AF_EINVAL);
  assert_int_equal(af_health_track(h, NULL, AF_BREAKER_CLOSED, 1.0), AF_EINVAL);
  assert_int_equal(af_health_track(h, "", AF_BREAKER_CLOSED, 1.0), AF_EINVAL);
  assert_int_equal(af_health_track(h, "bad\nname", AF_BREAKER_CLOSED, 1.0),
                   AF_EINVAL);
  char longname[AF_NAME_MAX + 2];
  memset(longname, 'x', sizeof(longname) - 1);
  longname[AF_NAME_MAX + 1] = '\0';
  assert_int_equal(af_health_track(h, longname, AF_BREAKER_CLOSED, 1.0),
                   AF_EINVAL);
  longname[AF_NAME_MAX] = '\0'; /* exactly AF_NAME_MAX is fine */
  const double bad_w[] = {0.0, -1.0, 0.0000009, 10000.001, NAN, INFINITY};
  for (size_t i = 0; i < sizeof(bad_w) / sizeof(bad_w[0]); i++) {
    assert_int_equal(af_health_track(h, "b", AF_BREAKER_CLOSED, bad_w[i]),
                     AF_EINVAL);
    assert_int_equal(af_health_set_weight(h, "a", bad_w[i]), AF_EINVAL);
  }
  assert_int_equal(af_health_track(h, "b", (af_breaker_state_t)5, 1.0),
                   AF_EINVAL);
  assert_int_equal(af_health_track(h, "b", (af_breaker_state_t)-1, 1.0),
                   AF_EINVAL);
  assert_int_equal(af_health_track(h, longname, AF_BREAKER_CLOSED, 10000.0),
                   AF_OK);
  assert_int_equal(af_health_track(h, "c", AF_BREAKER_CLOSED, 1.0), AF_ELIMIT);
  assert_int_equal(af_health_set_weight(h, "a", AF_HEALTH_WEIGHT_MIN), AF_OK);

  assert_int_equal(af_health_untrack(h, "nope"), AF_ENOTFOUND);
  assert_int_equal(af_health_untrack(h, "bad\nname"), AF_ENOTFOUND);
  assert_int_equal(af_health_untrack(h, NULL), AF_EINVAL);
  assert_int_equal(af_health_untrack(NULL, "a"), AF_EINVAL);
  assert_int_equal(af_health_set_state(h, "nope", AF_BREAKER_OPEN),
                   AF_ENOTFOUND);
  assert_int_equal(af_health_set_state(h, "a", (af_breaker_state_t)9),
                   AF_EINVAL);
  assert_int_equal(af_health_set_state(NULL, "a", AF_BREAKER_OPEN), AF_EINVAL);
  assert_int_equal(af_health_set_weight(h, "nope", 1.0), AF_ENOTFOUND);
  assert_int_equal(af_health_touch(h, "nope"), AF_ENOTFOUND);
  assert_int_equal(af_health_touch(h, NULL), AF_EINVAL);
  assert_int_equal(af_health_snapshot_now(NULL), AF_EINVAL);
  af_health_report_t r;
  assert_int_equal(af_health_report(NULL, &r), AF_EINVAL);
  assert_int_equal(af_health_report(h, NULL), AF_EINVAL);
  af_health_snapshot_t *snaps;
  size_t n;
  assert_int_equal(af_health_history(NULL, 0, &snaps, &n), AF_EINVAL);
  assert_int_equal(af_health_history(h, 0, NULL, &n), AF_EINVAL);
  assert_int_equal(af_health_history(h, 0, &snaps, NULL), AF_EINVAL);
  assert_int_equal(af_health_tick(NULL), UINT64_MAX);
  af_health_status_t st = AF_HEALTH_HEALTHY;
  double sc = 1;
  uint64_t seq = 1;
  af_health_summary(NULL, &st, &sc, &seq);
  assert_int_equal(st, AF_HEALTH_UNKNOWN);
  assert_true(sc == 0.0);
  assert_int_equal(seq, 0);
  af_health_metrics_t m;
  af_health_metrics(NULL, &m);
  assert_int_equal(m.tracked, 0);
  af_health_metrics(h, NULL);
  fixture_free(f);
}

/* ---- staleness --------------------------------------------------------- */

static void
breaker_without_report_for_stale_after_is_left_out_of_score(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.stale_after_ms = 1000;
  fixture_t *f = fixture_new(&cfg);
  track_n(f->h, "c", 1, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "o", 1, AF_BREAKER_OPEN, 1.0);
  double score;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);

  /* Age == stale_after: still fresh. */
  af_manual_clock_advance_ms(f->mc, 500);
  assert_int_equal(af_health_touch(f->h, "c-0"), AF_OK);
  af_manual_clock_advance_ms(f->mc, 500);
  af_health_tick(f->h);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);

  /* One ms later o-0 is stale and no longer drags the score down. */
  af_manual_clock_advance_ms(f->mc, 1);
  af_health_tick(f->h);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 1.0);

  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.total, 2);
  assert_int_equal(r.stale, 1);
  assert_int_equal(r.closed, 1);
  assert_int_equal(r.open, 0);
  assert_int_equal(r.critical_count, 0);
  assert_int_equal(r.stale_count, 1);
  assert_string_equal(r.stale_names[0], "o-0");
  assert_true(r.breakers[1].stale);
  assert_false(r.breakers[0].stale);
  af_health_report_free(&r);

  /* A state report makes it fresh again. */
  assert_int_equal(af_health_set_state(f->h, "o-0", AF_BREAKER_HALF_OPEN),
                   AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_true(score == 0.75);

  /* Both go stale: nothing counted, score 1.0. */
  af_manual_clock_advance_ms(f->mc, 5000);
  af_health_tick(f->h);
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.stale, 2);
  assert_int_equal(r.closed + r.half_open + r.open, 0);
  assert_true(r.score == 1.0);
  assert_string_equal(r.stale_names[0], "c-0");
  assert_string_equal(r.stale_names[1], "o-0");
  af_health_report_free(&r);

  /* touch, weight change and untrack of stale entries keep sums right. */
  assert_int_equal(af_health_set_weight(f->h, "o-0", 3.0), AF_OK);
  assert_int_equal(af_health_touch(f->h, "o-0"), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_true(score == 0.5);
  assert_int_equal(af_health_untrack(f->h, "c-0"), AF_OK);
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.total, 1);
  assert_int_equal(r.stale, 0);
  assert_int_equal(r.half_open, 1);
  af_health_report_free(&r);
  fixture_free(f);
}

static void staleness_is_off_by_default(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "o", 1, AF_BREAKER_OPEN, 1.0);
  af_manual_clock_advance_ms(f->mc, UINT64_C(1000) * 3600 * 24 * 365);
  af_health_tick(f->h);
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.stale, 0);
  assert_int_equal(r.status, AF_HEALTH_CRITICAL);
  af_health_report_free(&r);
  fixture_free(f);
}

/* ---- hysteresis -------------------------------------------------------- */

static void
hysteresis_keeps_status_until_threshold_is_passed_by_margin(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.hysteresis = 0.05;
  fixture_t *f = fixture_new(&cfg);
  recorder_t rec = {0};
  assert_true(af_health_on_change(f->h, record_cb, &rec) > 0);
  track_n(f->h, "b", 20, AF_BREAKER_CLOSED, 1.0);
  assert_int_equal(atomic_load(&rec.calls), 1); /* first report */
  double score;

  /* 7 of 20 open: 0.65, not below 0.7 - 0.05: stays HEALTHY. */
  set_n(f->h, "b", 7, AF_BREAKER_OPEN);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_near(score, 0.65, 1e-12);
  /* Wobbling between 0.65 and 0.7 never flaps. */
  for (int i = 0; i < 10; i++) {
    assert_int_equal(af_health_set_state(f->h, "b-6", AF_BREAKER_CLOSED),
                     AF_OK);
    assert_int_equal(af_health_set_state(f->h, "b-6", AF_BREAKER_OPEN), AF_OK);
  }
  assert_int_equal(atomic_load(&rec.calls), 1);
  /* 8 open: 0.6 < 0.65: DEGRADED. */
  assert_int_equal(af_health_set_state(f->h, "b-7", AF_BREAKER_OPEN), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_int_equal(atomic_load(&rec.calls), 2);
  /* Back to 0.7 (6 open) and 0.7499 region: stays DEGRADED. */
  assert_int_equal(af_health_set_state(f->h, "b-7", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(af_health_set_state(f->h, "b-6", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  assert_true(score == 0.7);
  /* 5 open: 0.75 >= 0.7 + 0.05: HEALTHY. */
  assert_int_equal(af_health_set_state(f->h, "b-5", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_int_equal(atomic_load(&rec.calls), 3);

  /* At the 0.5 line: 11 open = 0.45 is not < 0.45: DEGRADED... */
  set_n(f->h, "b", 11, AF_BREAKER_OPEN);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  /* ...12 open = 0.4: CRITICAL; back to 0.5 (10 open): stays CRITICAL;
   * 0.55 (9 open): DEGRADED. */
  assert_int_equal(af_health_set_state(f->h, "b-11", AF_BREAKER_OPEN), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_CRITICAL);
  assert_int_equal(af_health_set_state(f->h, "b-11", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(af_health_set_state(f->h, "b-10", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_CRITICAL);
  assert_int_equal(af_health_set_state(f->h, "b-9", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_DEGRADED);
  /* A jump from CRITICAL straight to all closed lands on HEALTHY. */
  set_n(f->h, "b", 20, AF_BREAKER_OPEN);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_CRITICAL);
  set_n(f->h, "b", 20, AF_BREAKER_CLOSED);
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  fixture_free(f);
}

static void without_hysteresis_status_follows_thresholds(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "b", 20, AF_BREAKER_CLOSED, 1.0);
  set_n(f->h, "b", 7, AF_BREAKER_OPEN);
  assert_int_equal(status_of(f->h, NULL), AF_HEALTH_DEGRADED);
  assert_int_equal(af_health_set_state(f->h, "b-6", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(status_of(f->h, NULL), AF_HEALTH_HEALTHY);
  fixture_free(f);
}

/* ---- callbacks --------------------------------------------------------- */

static void first_evaluation_counts_as_a_status_change(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  recorder_t ch = {0}, up = {0};
  assert_true(af_health_on_change(f->h, record_cb, &ch) > 0);
  assert_true(af_health_on_update(f->h, record_cb, &up) > 0);
  af_health_tick(f->h);
  assert_int_equal(atomic_load(&ch.calls), 1);
  assert_int_equal(atomic_load(&up.calls), 1);
  assert_true(ch.last.status_changed);
  assert_int_equal(ch.last.old_status, AF_HEALTH_UNKNOWN);
  assert_int_equal(ch.last.new_status, AF_HEALTH_HEALTHY);
  assert_true(ch.last.score == 1.0);
  assert_int_equal(ch.last.seq, 1);
  af_manual_clock_advance_ms(f->mc, 1000);
  af_health_tick(f->h);
  assert_int_equal(af_health_snapshot_now(f->h), AF_OK);
  assert_int_equal(atomic_load(&ch.calls), 1);
  assert_int_equal(atomic_load(&up.calls), 1);
  fixture_free(f);
}

static void first_evaluation_without_registry_reports_unknown(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.has_registry = false;
  fixture_t *f = fixture_new(&cfg);
  recorder_t ch = {0};
  assert_true(af_health_on_change(f->h, record_cb, &ch) > 0);
  assert_int_equal(af_health_snapshot_now(f->h), AF_OK);
  assert_int_equal(atomic_load(&ch.calls), 1);
  assert_true(ch.last.status_changed);
  assert_int_equal(ch.last.new_status, AF_HEALTH_UNKNOWN);
  track_n(f->h, "o", 2, AF_BREAKER_OPEN, 1.0);
  assert_int_equal(atomic_load(&ch.calls), 1);
  fixture_free(f);
}

static void change_callbacks_fire_on_status_change_update_on_score(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  recorder_t ch = {0}, up = {0};
  assert_true(af_health_on_change(f->h, record_cb, &ch) > 0);
  assert_true(af_health_on_update(f->h, record_cb, &up) > 0);
  assert_int_equal(af_health_track(f->h, "a", AF_BREAKER_CLOSED, 1.0), AF_OK);
  assert_int_equal(atomic_load(&ch.calls), 1);
  assert_int_equal(atomic_load(&up.calls), 1);
  /* Same score (1.0): nothing. Same state again: nothing. */
  assert_int_equal(af_health_track(f->h, "b", AF_BREAKER_CLOSED, 1.0), AF_OK);
  assert_int_equal(af_health_set_state(f->h, "a", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(atomic_load(&up.calls), 1);
  /* Score change within HEALTHY: update only. */
  assert_int_equal(af_health_set_state(f->h, "b", AF_BREAKER_HALF_OPEN), AF_OK);
  assert_int_equal(atomic_load(&ch.calls), 1);
  assert_int_equal(atomic_load(&up.calls), 2);
  assert_false(up.last.status_changed);
  assert_true(up.last.old_score == 1.0);
  assert_true(up.last.score == 0.75);
  assert_int_equal(up.last.seq, 2);
  /* Into DEGRADED: both. */
  assert_int_equal(af_health_set_state(f->h, "b", AF_BREAKER_OPEN), AF_OK);
  assert_int_equal(atomic_load(&ch.calls), 2);
  assert_int_equal(atomic_load(&up.calls), 3);
  assert_true(ch.last.status_changed);
  assert_int_equal(ch.last.old_status, AF_HEALTH_HEALTHY);
  assert_int_equal(ch.last.new_status, AF_HEALTH_DEGRADED);
  assert_true(ch.last.old_score == 0.75);
  assert_true(ch.last.score == 0.5);
  assert_int_equal(ch.last.seq, 3);
  uint64_t seq;
  af_health_summary(f->h, NULL, NULL, &seq);
  assert_int_equal(seq, 3);
  af_health_metrics_t m;
  af_health_metrics(f->h, &m);
  assert_int_equal(m.callbacks_fired, 5);
  assert_int_equal(m.callback_errors, 0);
  fixture_free(f);
}

static void failing_callback_is_counted_and_others_still_run(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  recorder_t bad = {0}, good = {0};
  bad.ret = -1;
  assert_true(af_health_on_change(f->h, record_cb, &bad) > 0);
  assert_true(af_health_on_change(f->h, record_cb, &good) > 0);
  assert_int_equal(af_health_track(f->h, "a", AF_BREAKER_OPEN, 1.0), AF_OK);
  assert_int_equal(af_health_set_state(f->h, "a", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(atomic_load(&bad.calls), 2);
  assert_int_equal(atomic_load(&good.calls), 2);
  assert_int_equal(af_health_snapshot_now(f->h), AF_OK);
  af_health_metrics_t m;
  af_health_metrics(f->h, &m);
  assert_int_equal(m.callbacks_fired, 4);
  assert_int_equal(m.callback_errors, 2);
  assert_int_equal(m.snapshots_collected, 1);
  assert_int_equal(m.status, AF_HEALTH_HEALTHY);
  fixture_free(f);
}

static int summary_cb(const af_health_change_t *c, void *ctx)
{
  recorder_t *r = ctx;
  (void)c;
  atomic_fetch_add(&r->calls, 1);
  af_health_summary(r->h, &r->summary_status, &r->summary_score, NULL);
  af_health_report_t rep;
  if (af_health_report(r->h, &rep) != AF_OK)
    return 1;
  af_health_report_free(&rep);
  if (r->remove_id > 0)
    af_health_remove_callback(r->h, r->remove_id);
  return 0;
}

static void callback_may_call_summary_report_and_remove_itself(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  recorder_t r = {0};
  r.h = f->h;
  int id = af_health_on_change(f->h, summary_cb, &r);
  assert_true(id > 0);
  assert_int_equal(af_health_track(f->h, "a", AF_BREAKER_OPEN, 1.0), AF_OK);
  assert_int_equal(atomic_load(&r.calls), 1);
  assert_int_equal(r.summary_status, AF_HEALTH_CRITICAL);
  assert_true(r.summary_score == 0.0);
  r.remove_id = id;
  assert_int_equal(af_health_set_state(f->h, "a", AF_BREAKER_CLOSED), AF_OK);
  assert_int_equal(atomic_load(&r.calls), 2);
  assert_int_equal(r.summary_status, AF_HEALTH_HEALTHY);
  assert_int_equal(af_health_set_state(f->h, "a", AF_BREAKER_OPEN), AF_OK);
  assert_int_equal(atomic_load(&r.calls), 2); /* removed */
  af_health_metrics_t m;
  af_health_metrics(f->h, &m);
  assert_int_equal(m.callback_errors, 0);
  fixture_free(f);
}

static void removed_callback_is_not_called_and_ids_are_bounded(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  recorder_t r = {0};
  int ids[AF_HEALTH_MAX_CALLBACKS];
  for (int i = 0; i < AF_HEALTH_MAX_CALLBACKS; i++) {
    ids[i] = af_health_on_update(f->h, record_cb, &r);
    assert_true(ids[i] > 0);
    if (i > 0)
      assert_true(ids[i] != ids[i - 1]);
  }
  assert_int_equal(af_health_on_update(f->h, record_cb, &r), AF_ELIMIT);
  assert_int_equal(af_health_on_change(f->h, NULL, &r), AF_EINVAL);
  assert_int_equal(af_health_on_change(NULL, record_cb, &r), AF_EINVAL);
  for (int i = 1; i < AF_HEALTH_MAX_CALLBACKS; i++)
    af_health_remove_callback(f->h, ids[i]);
  af_health_remove_callback(f->h, ids[1]); /* twice: ignored */
  af_health_remove_callback(f->h, 0);
  af_health_remove_callback(f->h, 12345);
  af_health_remove_callback(NULL, ids[0]);
  af_health_tick(f->h);
  assert_int_equal(atomic_load(&r.calls), 1);
  /* freed slots are reusable */
  assert_true(af_health_on_update(f->h, record_cb, &r) > 0);
  fixture_free(f);
}

/* ---- snapshots --------------------------------------------------------- */

static void tick_snapshots_once_per_interval_and_returns_next_due(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  af_health_metrics_t m;
  assert_int_equal(af_health_tick(f->h), T0_MONO + 1000 * AF_NS_PER_MS);
  assert_int_equal(af_health_tick(f->h), T0_MONO + 1000 * AF_NS_PER_MS);
  af_manual_clock_advance_ms(f->mc, 999);
  assert_int_equal(af_health_tick(f->h), T0_MONO + 1000 * AF_NS_PER_MS);
  af_health_metrics(f->h, &m);
  assert_int_equal(m.snapshots_collected, 1);
  af_manual_clock_advance_ms(f->mc, 1);
  assert_int_equal(af_health_tick(f->h), T0_MONO + 2000 * AF_NS_PER_MS);
  af_health_metrics(f->h, &m);
  assert_int_equal(m.snapshots_collected, 2);
  /* A late tick takes one snapshot and reschedules from now. */
  af_manual_clock_advance_ms(f->mc, 5500);
  assert_int_equal(af_health_tick(f->h), T0_MONO + 7500 * AF_NS_PER_MS);
  af_health_metrics(f->h, &m);
  assert_int_equal(m.snapshots_collected, 3);
  /* snapshot_now leaves the schedule alone. */
  assert_int_equal(af_health_snapshot_now(f->h), AF_OK);
  assert_int_equal(af_health_tick(f->h), T0_MONO + 7500 * AF_NS_PER_MS);
  af_health_metrics(f->h, &m);
  assert_int_equal(m.snapshots_collected, 4);
  assert_int_equal(m.history_size, 4);
  fixture_free(f);
}

static void snapshot_records_status_score_and_counts(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  track_n(f->h, "c", 2, AF_BREAKER_CLOSED, 1.0);
  track_n(f->h, "h", 1, AF_BREAKER_HALF_OPEN, 1.0);
  track_n(f->h, "o", 1, AF_BREAKER_OPEN, 1.0);
  af_manual_clock_advance_ms(f->mc, 3);
  af_health_tick(f->h);
  af_health_snapshot_t *s = NULL;
  size_t n = 0;
  assert_int_equal(af_health_history(f->h, 0, &s, &n), AF_OK);
  assert_int_equal(n, 1);
  assert_int_equal(s[0].status, AF_HEALTH_DEGRADED);
  assert_true(s[0].score == 0.625);
  assert_int_equal(s[0].total, 4);
  assert_int_equal(s[0].closed, 2);
  assert_int_equal(s[0].half_open, 1);
  assert_int_equal(s[0].open, 1);
  assert_int_equal(s[0].mono_ns, T0_MONO + 3 * AF_NS_PER_MS);
  assert_int_equal(s[0].wall_ns, T0_WALL + 3 * (int64_t)AF_NS_PER_MS);
  af_free(s);
  fixture_free(f);
}

static void ring_wraps_keeping_the_newest_oldest_first(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.history_size = 3;
  fixture_t *f = fixture_new(&cfg);
  for (int i = 0; i < 5; i++) {
    af_health_tick(f->h);
    af_manual_clock_advance_ms(f->mc, 1000);
  }
  af_health_snapshot_t *s = NULL;
  size_t n = 0;
  assert_int_equal(af_health_history(f->h, UINT64_MAX, &s, &n), AF_OK);
  assert_int_equal(n, 3);
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(s[i].mono_ns, T0_MONO + (2 + i) * 1000 * AF_NS_PER_MS);
  af_free(s);
  af_health_metrics_t m;
  af_health_metrics(f->h, &m);
  assert_int_equal(m.snapshots_collected, 5);
  assert_int_equal(m.history_size, 3);
  assert_int_equal(m.history_capacity, 3);
  fixture_free(f);
}

static void history_returns_snapshots_inside_the_window(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.history_window_ms = 5000;
  fixture_t *f = fixture_new(&cfg);
  af_health_snapshot_t *s = NULL;
  size_t n = 99;
  assert_int_equal(af_health_history(f->h, 0, &s, &n), AF_OK);
  assert_int_equal(n, 0);
  assert_null(s);
  for (int i = 0; i < 10; i++) { /* t = 0..9 s */
    af_health_tick(f->h);
    if (i < 9)
      af_manual_clock_advance_ms(f->mc, 1000);
  }
  assert_int_equal(af_health_history(f->h, 3000, &s, &n), AF_OK);
  assert_int_equal(n, 4); /* 6, 7, 8, 9 s: mono >= now - 3 s inclusive */
  assert_int_equal(s[0].mono_ns, T0_MONO + 6000 * AF_NS_PER_MS);
  assert_int_equal(s[3].mono_ns, T0_MONO + 9000 * AF_NS_PER_MS);
  af_free(s);
  assert_int_equal(af_health_history(f->h, 0, &s, &n), AF_OK);
  assert_int_equal(n, 6); /* configured 5 s */
  af_free(s);
  assert_int_equal(af_health_history(f->h, UINT64_MAX, &s, &n), AF_OK);
  assert_int_equal(n, 10);
  af_free(s);
  /* A window longer than the clock has run returns everything. */
  assert_int_equal(af_health_history(f->h, UINT64_MAX - 1, &s, &n), AF_OK);
  assert_int_equal(n, 10);
  af_free(s);
  af_manual_clock_advance_ms(f->mc, 60000);
  assert_int_equal(af_health_history(f->h, 0, &s, &n), AF_OK);
  assert_int_equal(n, 0);
  assert_null(s);
  fixture_free(f);
}

static void configured_window_zero_means_all(void **state)
{
  (void)state;
  af_health_config_t cfg;
  af_health_config_init(&cfg);
  cfg.history_window_ms = 0;
  fixture_t *f = fixture_new(&cfg);
  af_health_tick(f->h);
  af_manual_clock_advance_ms(f->mc, UINT64_C(3600) * 1000);
  af_health_tick(f->h);
  af_health_snapshot_t *s = NULL;
  size_t n = 0;
  assert_int_equal(af_health_history(f->h, 0, &s, &n), AF_OK);
  assert_int_equal(n, 2);
  af_free(s);
  fixture_free(f);
}

static void metrics_report_counters_and_current_state(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  af_health_metrics_t m;
  af_health_metrics(f->h, &m);
  assert_int_equal(m.snapshots_collected, 0);
  assert_int_equal(m.callbacks_fired, 0);
  assert_int_equal(m.callback_errors, 0);
  assert_int_equal(m.recomputes, 0);
  assert_int_equal(m.history_size, 0);
  assert_int_equal(m.history_capacity, 300);
  assert_int_equal(m.tracked, 0);
  assert_int_equal(m.status, AF_HEALTH_HEALTHY);
  assert_true(m.score == 1.0);
  track_n(f->h, "o", 3, AF_BREAKER_OPEN, 1.0);
  af_health_tick(f->h);
  af_health_metrics(f->h, &m);
  assert_int_equal(m.recomputes, 4);
  assert_int_equal(m.tracked, 3);
  assert_int_equal(m.history_size, 1);
  assert_int_equal(m.snapshots_collected, 1);
  assert_int_equal(m.status, AF_HEALTH_CRITICAL);
  assert_true(m.score == 0.0);
  fixture_free(f);
}

/* ---- allocation failure ------------------------------------------------ */

static atomic_long alloc_budget; /* allocations left before failing; <0 off */

static void *failing_malloc(size_t size, void *ctx)
{
  (void)ctx;
  if (atomic_load(&alloc_budget) >= 0 &&
      atomic_fetch_sub(&alloc_budget, 1) <= 0)
    return NULL;
  return malloc(size);
}

static void *failing_realloc(void *p, size_t size, void *ctx)
{
  (void)ctx;
  if (atomic_load(&alloc_budget) >= 0 &&
      atomic_fetch_sub(&alloc_budget, 1) <= 0)
    return NULL;
  return realloc(p, size);
}

static void failing_free(void *p, void *ctx)
{
  (void)ctx;
  free(p);
}

static void allocation_failures_leave_nothing_behind(void **state)
{
  (void)state;
  af_allocator_t a = {failing_malloc, failing_realloc, failing_free, NULL};
  atomic_store(&alloc_budget, -1);
  assert_int_equal(af_alloc_replace(&a), AF_OK);
  /* create fails cleanly at each allocation */
  bool created = false;
  for (long k = 0; k < 10 && !created; k++) {
    atomic_store(&alloc_budget, k);
    af_health_t *h = (af_health_t *)(uintptr_t)0x1;
    af_error_t err;
    af_status_t rc = af_health_create(&h, NULL, &err);
    if (rc == AF_OK) {
      created = true;
      atomic_store(&alloc_budget, -1);
      af_health_destroy(h);
    } else {
      assert_int_equal(rc, AF_ENOMEM);
      assert_ptr_equal(h, (af_health_t *)(uintptr_t)0x1);
    }
  }
  assert_true(created);

  atomic_store(&alloc_budget, -1);
  af_health_t *h = NULL;
  assert_int_equal(af_health_create(&h, NULL, NULL), AF_OK);
  track_n(h, "a", 40, AF_BREAKER_HALF_OPEN, 1.0);
  atomic_store(&alloc_budget, 0);
  assert_int_equal(af_health_track(h, "z", AF_BREAKER_CLOSED, 1.0), AF_ENOMEM);
  assert_int_equal(af_health_untrack(h, "z"), AF_ENOTFOUND);
  af_health_report_t r;
  for (long k = 0; k < 8; k++) {
    atomic_store(&alloc_budget, k);
    af_status_t rc = af_health_report(h, &r);
    if (rc == AF_OK) {
      assert_int_equal(r.degraded_count, 40);
      af_health_report_free(&r);
      break;
    }
    assert_int_equal(rc, AF_ENOMEM);
    assert_null(r.breakers);
    assert_null(r.degraded);
  }
  atomic_store(&alloc_budget, 0);
  af_health_snapshot_t *s = NULL;
  size_t n = 0;
  af_health_tick(h);
  assert_int_equal(af_health_history(h, 0, &s, &n), AF_ENOMEM);
  atomic_store(&alloc_budget, -1);
  af_health_destroy(h);
  assert_int_equal(af_alloc_replace(NULL), AF_OK);
}

/* ---- concurrency ------------------------------------------------------- */

#define MT_THREADS 8
#define MT_PER_THREAD 50
#define MT_ROUNDS 4000

typedef struct {
  af_health_t *h;
  int t;
} mt_arg_t;

static atomic_long mt_updates;

static int count_cb(const af_health_change_t *c, void *ctx)
{
  (void)c;
  (void)ctx;
  atomic_fetch_add(&mt_updates, 1);
  return 0;
}

static af_breaker_state_t mt_state(int t, int i, int round)
{
  return (af_breaker_state_t)((t * 7 + i * 3 + round) % AF_BREAKER_STATE_COUNT);
}

static void *mt_worker(void *p)
{
  mt_arg_t *a = p;
  char name[64];
  for (int r = 0; r < MT_ROUNDS; r++) {
    int i = r % MT_PER_THREAD;
    snprintf(name, sizeof(name), "t%d-%d", a->t, i);
    if (af_health_set_state(a->h, name, mt_state(a->t, i, r)) != AF_OK)
      return (void *)1;
    if (r % 97 == 0)
      af_health_tick(a->h);
  }
  return NULL;
}

static void concurrent_set_state_keeps_counts_exact(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  char name[64];
  for (int t = 0; t < MT_THREADS; t++)
    for (int i = 0; i < MT_PER_THREAD; i++) {
      snprintf(name, sizeof(name), "t%d-%d", t, i);
      assert_int_equal(
          af_health_track(f->h, name, AF_BREAKER_CLOSED, 1.0 + (i % 3)), AF_OK);
    }
  atomic_store(&mt_updates, 0);
  assert_true(af_health_on_update(f->h, count_cb, NULL) > 0);
  af_health_metrics_t before;
  af_health_metrics(f->h, &before);
  uint64_t seq_before;
  af_health_summary(f->h, NULL, NULL, &seq_before);

  pthread_t th[MT_THREADS];
  mt_arg_t args[MT_THREADS];
  for (int t = 0; t < MT_THREADS; t++) {
    args[t].h = f->h;
    args[t].t = t;
    assert_int_equal(pthread_create(&th[t], NULL, mt_worker, &args[t]), 0);
  }
  for (int t = 0; t < MT_THREADS; t++) {
    void *ret;
    pthread_join(th[t], &ret);
    assert_null(ret);
  }

  /* Expected final state: the last round that touched each breaker. */
  size_t closed = 0, half = 0, open = 0;
  double num = 0, den = 0;
  for (int t = 0; t < MT_THREADS; t++)
    for (int i = 0; i < MT_PER_THREAD; i++) {
      int last = -1;
      for (int r = 0; r < MT_ROUNDS; r++)
        if (r % MT_PER_THREAD == i)
          last = r;
      af_breaker_state_t st = mt_state(t, i, last);
      double w = 1.0 + (i % 3), v;
      if (st == AF_BREAKER_CLOSED || st == AF_BREAKER_DISABLED) {
        closed++;
        v = 1.0;
      } else if (st == AF_BREAKER_HALF_OPEN) {
        half++;
        v = 0.5;
      } else {
        open++;
        v = 0.0;
      }
      num += w * v;
      den += w;
    }
  af_health_report_t r;
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  assert_int_equal(r.total, MT_THREADS * MT_PER_THREAD);
  assert_int_equal(r.closed, closed);
  assert_int_equal(r.half_open, half);
  assert_int_equal(r.open, open);
  assert_int_equal(r.degraded_count, half);
  assert_int_equal(r.critical_count, open);
  assert_near(r.score, num / den, 1e-9);
  assert_int_equal(r.status, af_health_status_for_score(num / den));
  af_health_report_free(&r);

  af_health_metrics_t after;
  af_health_metrics(f->h, &after);
  assert_int_equal(after.callbacks_fired - before.callbacks_fired,
                   atomic_load(&mt_updates));
  uint64_t seq_after;
  af_health_summary(f->h, NULL, NULL, &seq_after);
  /* exactly one update callback per change: seq counts them all */
  assert_int_equal(seq_after - seq_before, (uint64_t)atomic_load(&mt_updates));
  fixture_free(f);
}

/* ---- scale ------------------------------------------------------------- */

static double now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void
report_with_100k_tracked_breakers_is_sorted_and_complete(void **state)
{
  (void)state;
  fixture_t *f = fixture_new(NULL);
  char name[64];
  const size_t N = 100000;
  for (size_t i = 0; i < N; i++) {
    /* scrambled insertion order */
    size_t k = (i * 7919) % N;
    snprintf(name, sizeof(name), "svc-%06zu", k);
    af_breaker_state_t st = k % 10 == 0   ? AF_BREAKER_OPEN
                            : k % 10 == 1 ? AF_BREAKER_HALF_OPEN
                                          : AF_BREAKER_CLOSED;
    assert_int_equal(af_health_track(f->h, name, st, 1.0), AF_OK);
  }
  af_health_report_t r;
  double t0 = now_ms();
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  double first = now_ms() - t0;
  af_health_report_free(&r);
  t0 = now_ms();
  assert_int_equal(af_health_report(f->h, &r), AF_OK);
  double again = now_ms() - t0;
  print_message("report of %zu breakers: first %.2f ms, again %.2f ms\n", N,
                first, again);
  assert_int_equal(r.total, N);
  assert_int_equal(r.breaker_count, N);
  assert_int_equal(r.critical_count, N / 10);
  assert_int_equal(r.degraded_count, N / 10);
  assert_int_equal(r.closed, N - N / 5);
  for (size_t i = 0; i < N; i++) {
    snprintf(name, sizeof(name), "svc-%06zu", i);
    assert_string_equal(r.breakers[i].name, name);
  }
  assert_string_equal(r.critical[0], "svc-000000");
  assert_string_equal(r.degraded[0], "svc-000001");
  /* 0.8 + 0.05 = 0.85 */
  assert_near(r.score, 0.85, 1e-12);
  assert_int_equal(r.status, AF_HEALTH_HEALTHY);
  af_health_report_free(&r);
  /* set_state stays O(1) at this size */
  t0 = now_ms();
  for (size_t i = 0; i < N; i += 10) {
    snprintf(name, sizeof(name), "svc-%06zu", i);
    assert_int_equal(af_health_set_state(f->h, name, AF_BREAKER_CLOSED), AF_OK);
  }
  print_message("%zu set_state calls: %.2f ms\n", N / 10, now_ms() - t0);
  double score;
  assert_int_equal(status_of(f->h, &score), AF_HEALTH_HEALTHY);
  assert_near(score, 0.95, 1e-12);
  fixture_free(f);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_init_sets_documented_defaults),
      cmocka_unit_test(create_rejects_zero_check_interval),
      cmocka_unit_test(create_rejects_zero_history_size),
      cmocka_unit_test(create_rejects_hysteresis_outside_zero_to_point_two),
      cmocka_unit_test(create_rejects_zero_max_tracked),
      cmocka_unit_test(create_accepts_boundary_values_and_null_config),
      cmocka_unit_test(status_names_match_the_seed),
      cmocka_unit_test(status_for_score_uses_inclusive_thresholds),
      cmocka_unit_test(no_breakers_scores_one_and_is_healthy),
      cmocka_unit_test(without_registry_status_is_unknown_with_score_zero),
      cmocka_unit_test(
          seven_closed_three_open_scores_exactly_point_seven_healthy),
      cmocka_unit_test(sixty_nine_percent_is_degraded),
      cmocka_unit_test(
          exactly_half_is_degraded_and_forty_nine_percent_critical),
      cmocka_unit_test(weights_scale_contributions_exactly_at_thresholds),
      cmocka_unit_test(half_open_counts_half),
      cmocka_unit_test(disabled_counts_closed_and_forced_open_counts_open),
      cmocka_unit_test(report_lists_sorted_names_counts_and_details),
      cmocka_unit_test(untrack_removes_the_breaker_from_score_and_report),
      cmocka_unit_test(track_and_updates_validate_their_arguments),
      cmocka_unit_test(
          breaker_without_report_for_stale_after_is_left_out_of_score),
      cmocka_unit_test(staleness_is_off_by_default),
      cmocka_unit_test(
          hysteresis_keeps_status_until_threshold_is_passed_by_margin),
      cmocka_unit_test(without_hysteresis_status_follows_thresholds),
      cmocka_unit_test(first_evaluation_counts_as_a_status_change),
      cmocka_unit_test(first_evaluation_without_registry_reports_unknown),
      cmocka_unit_test(change_callbacks_fire_on_status_change_update_on_score),
      cmocka_unit_test(failing_callback_is_counted_and_others_still_run),
      cmocka_unit_test(callback_may_call_summary_report_and_remove_itself),
      cmocka_unit_test(removed_callback_is_not_called_and_ids_are_bounded),
      cmocka_unit_test(tick_snapshots_once_per_interval_and_returns_next_due),
      cmocka_unit_test(snapshot_records_status_score_and_counts),
      cmocka_unit_test(ring_wraps_keeping_the_newest_oldest_first),
      cmocka_unit_test(history_returns_snapshots_inside_the_window),
      cmocka_unit_test(configured_window_zero_means_all),
      cmocka_unit_test(metrics_report_counters_and_current_state),
      cmocka_unit_test(allocation_failures_leave_nothing_behind),
      cmocka_unit_test(concurrent_set_state_keeps_counts_exact),
      cmocka_unit_test(
          report_with_100k_tracked_breakers_is_sorted_and_complete),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
