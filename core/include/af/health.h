/*
 * af/health.h - the health aggregator: one score and status for the system.
 *
 * Thread-safety: thread-safe. Every function may be called from any thread
 * concurrently, except af_health_destroy(), which requires that no other call
 * on the same handle is running or will start. One mutex guards the state;
 * it is never held while a callback runs.
 *
 * Callbacks run on the thread that made the call which changed the score or
 * status (af_health_track / _untrack / _set_state / _set_weight / _touch /
 * _tick / _snapshot_now / _report), after the state change is visible and
 * with no lock held. A callback may call any af_health_* function on the
 * same handle except af_health_destroy (af_health_summary is the usual one).
 * Callbacks for different changes may run concurrently on different threads
 * and so may be seen out of order: every change carries `seq`, which grows by
 * one per change; a consumer that has seen seq N ignores any change <= N.
 *
 * The aggregator is decoupled from the breaker registry: the engine feeds it
 * breaker states (af_health_track / af_health_set_state) and calls
 * af_health_tick() often; the aggregator never calls into the registry.
 *
 * Score: sum(weight * v) / sum(weight) over tracked, non-stale breakers, with
 * v = 1.0 for CLOSED and DISABLED, 0.5 for HALF_OPEN, 0.0 for OPEN and
 * FORCED_OPEN. The sums are kept exactly in integers (weights in units of
 * 1e-6), so thresholds are compared without rounding error: 7 closed + 3 open
 * breakers of equal weight score exactly 0.7 and are HEALTHY.
 * Status: HEALTHY if score >= 0.7, DEGRADED if >= 0.5, CRITICAL below.
 * No (non-stale) breakers: score 1.0, HEALTHY. has_registry == false:
 * score 0.0, UNKNOWN (the seed's behaviour without a registry).
 *
 * Recomputation is O(1) per change (running sums), so watchers hear of a
 * status change on the call that caused it, not at the next tick.
 */
#ifndef AF_HEALTH_H
#define AF_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/clock.h"
#include "af/status.h"
#include "af/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  AF_HEALTH_UNKNOWN = 0,
  AF_HEALTH_HEALTHY,
  AF_HEALTH_DEGRADED,
  AF_HEALTH_CRITICAL,
} af_health_status_t;

/* Score thresholds (inclusive lower bounds). */
#define AF_HEALTH_HEALTHY_THRESHOLD 0.7
#define AF_HEALTH_DEGRADED_THRESHOLD 0.5

/* Accepted breaker weights: AF_HEALTH_WEIGHT_MIN <= weight <=
 * AF_HEALTH_WEIGHT_MAX (finite). The default weight is 1.0. */
#define AF_HEALTH_WEIGHT_MIN 0.000001
#define AF_HEALTH_WEIGHT_MAX 10000.0

/* Most callbacks (change + update together) registered at once. */
#define AF_HEALTH_MAX_CALLBACKS 64

/* "UNKNOWN", "HEALTHY", "DEGRADED", "CRITICAL"; "UNKNOWN" for values outside
 * the enum. Cannot fail. */
const char *af_health_status_name(af_health_status_t s);

/* Pure: the status for a score with the plain thresholds (no hysteresis).
 * Scores within 1e-9 below a threshold count as reaching it (so a score
 * computed as 0.7 in floating point is HEALTHY). NaN is CRITICAL. */
af_health_status_t af_health_status_for_score(double score);

typedef struct {
  /* Borrows: retained until af_health_destroy. NULL = system clock. */
  const af_clock_t *clock;
  /* false: the aggregator reports UNKNOWN with score 0.0. Default true. */
  bool has_registry;
  /* Snapshot period for af_health_tick. Default 1000, must be >= 1
   * ("health_check_interval must be > 0"). */
  uint64_t check_interval_ms;
  /* Ring capacity. Default 300, must be >= 1 ("history_size must be >= 1"). */
  size_t history_size;
  /* Window af_health_history uses when asked for window 0. Default 300000
   * (5 min); 0 here means all snapshots. */
  uint64_t history_window_ms;
  /* A breaker with no report (track / set_state / touch) for more than this
   * is stale: listed, and left out of the score. 0 (default) = never. */
  uint64_t stale_after_ms;
  /* Status leaves its band only when the score passes the threshold by more
   * than this: HEALTHY -> DEGRADED only if score < 0.7 - h, DEGRADED ->
   * HEALTHY only if score >= 0.7 + h (likewise at 0.5). Default 0.0 (off);
   * in [0.0, 0.2] ("hysteresis must be between 0.0 and 0.2"). */
  double hysteresis;
  /* Most breakers tracked at once. Default 1000000, must be >= 1
   * ("max_tracked must be >= 1"). */
  size_t max_tracked;
} af_health_config_t;

/* Fills *cfg with the defaults above. Cannot fail. */
void af_health_config_init(af_health_config_t *cfg);

typedef struct af_health af_health_t;

/* Creates an aggregator. cfg: borrows (NULL = defaults). err: optional, gets
 * the validation message. Returns AF_OK and *out (returns owned, free with
 * af_health_destroy); AF_EINVAL for a bad config or out == NULL; AF_ENOMEM.
 * On failure *out is untouched and nothing leaks. */
af_status_t af_health_create(af_health_t **out, const af_health_config_t *cfg,
                             af_error_t *err);

/* Frees everything. NULL is a no-op. See Thread-safety. */
void af_health_destroy(af_health_t *h);

/* --- feeding breaker states ---------------------------------------------
 * name: borrows (copied). All return AF_EINVAL for NULL h / name. A name
 * that af_name_valid() refuses is AF_EINVAL on track and AF_ENOTFOUND on the
 * others. */

/* Starts tracking a breaker (counts as a report: touches it).
 * AF_EEXIST if already tracked; AF_EINVAL for a bad name, a state outside
 * af_breaker_state_t or a weight outside [AF_HEALTH_WEIGHT_MIN,
 * AF_HEALTH_WEIGHT_MAX]; AF_ELIMIT at max_tracked; AF_ENOMEM. */
af_status_t af_health_track(af_health_t *h, const char *name,
                            af_breaker_state_t state, double weight);

/* Stops tracking. AF_ENOTFOUND if not tracked. */
af_status_t af_health_untrack(af_health_t *h, const char *name);

/* Records a state (and touches). AF_ENOTFOUND, AF_EINVAL for a bad state. */
af_status_t af_health_set_state(af_health_t *h, const char *name,
                                af_breaker_state_t state);

/* Changes a weight (does not touch). AF_ENOTFOUND, AF_EINVAL. */
af_status_t af_health_set_weight(af_health_t *h, const char *name,
                                 double weight);

/* A report arrived without a state change: the breaker is fresh again.
 * AF_ENOTFOUND. */
af_status_t af_health_touch(af_health_t *h, const char *name);

/* --- reading ------------------------------------------------------------ */

typedef struct {
  char name[AF_NAME_MAX + 1];
  af_breaker_state_t state;
  double weight;
  bool stale;
  int64_t last_touch_wall_ns;
} af_health_breaker_t;

typedef struct {
  af_health_status_t status;
  double score;
  /* total = every tracked breaker; stale ones are counted in `stale` only,
   * not in closed / half_open / open. closed includes DISABLED, open
   * includes FORCED_OPEN. */
  size_t total, closed, half_open, open, stale;
  char **degraded; /* non-stale HALF_OPEN names, sorted */
  size_t degraded_count;
  char **critical; /* non-stale OPEN / FORCED_OPEN names, sorted */
  size_t critical_count;
  char **stale_names; /* sorted */
  size_t stale_count;
  af_health_breaker_t *breakers; /* every tracked breaker, sorted by name */
  size_t breaker_count;
  int64_t wall_ns;
  uint64_t mono_ns;
  uint64_t seq; /* of the last score/status change */
} af_health_report_t;

/* Re-evaluates staleness, then fills *out with owned arrays (free with
 * af_health_report_free; the strings belong to their arrays and are freed
 * with them). Empty lists are NULL with count 0. AF_EINVAL for NULL
 * arguments; AF_ENOMEM (then *out holds nothing to free). */
af_status_t af_health_report(af_health_t *h, af_health_report_t *out);

/* Frees what af_health_report filled and zeroes *r. NULL is a no-op. Safe to
 * call twice. */
void af_health_report_free(af_health_report_t *r);

/* Cheap: the current status, score and seq (as of the last change; staleness
 * is re-evaluated by the other calls, chiefly af_health_tick). Any out
 * pointer may be NULL. Never takes any lock a callback holds, so callbacks
 * may call it. Cannot fail (NULL h: UNKNOWN, 0.0, 0). */
void af_health_summary(af_health_t *h, af_health_status_t *status,
                       double *score, uint64_t *seq);

/* --- snapshots ---------------------------------------------------------- */

typedef struct {
  int64_t wall_ns;
  uint64_t mono_ns;
  af_health_status_t status;
  double score;
  size_t total, closed, half_open, open;
} af_health_snapshot_t;

/* Snapshots with mono_ns >= now - window_ms, oldest first. window_ms 0 =
 * the configured history_window_ms; UINT64_MAX (or a configured 0) = all.
 * *out: returns owned (free with af_free), NULL when *n == 0.
 * AF_EINVAL for NULL arguments; AF_ENOMEM (outputs untouched). */
af_status_t af_health_history(af_health_t *h, uint64_t window_ms,
                              af_health_snapshot_t **out, size_t *n);

/* Call often. Re-evaluates staleness; if check_interval_ms has elapsed since
 * the last scheduled snapshot (the first tick always snapshots), records one
 * into the ring (oldest dropped when full). Returns the monotonic ns at which
 * the next snapshot is due. NULL h: returns UINT64_MAX. */
uint64_t af_health_tick(af_health_t *h);

/* Records a snapshot now, regardless of the schedule (which it leaves
 * alone). AF_EINVAL for NULL h. */
af_status_t af_health_snapshot_now(af_health_t *h);

/* --- callbacks ---------------------------------------------------------- */

typedef struct {
  af_health_status_t old_status, new_status;
  double old_score, score;
  uint64_t seq;
  /* true when new_status != old_status, and for the first evaluation ever
   * (the seed's "previous status None"; old_status is then UNKNOWN). */
  bool status_changed;
} af_health_change_t;

/* c: borrows (valid during the call). Return nonzero to report a failure:
 * it is counted in callback_errors and changes nothing else. */
typedef int (*af_health_callback_fn)(const af_health_change_t *c, void *ctx);

/* Registers fn for status changes only. ctx: retained until
 * af_health_remove_callback returns. Returns an id > 0, or a negative
 * af_status_t: AF_EINVAL (NULL h / fn), AF_ELIMIT (AF_HEALTH_MAX_CALLBACKS). */
int af_health_on_change(af_health_t *h, af_health_callback_fn fn, void *ctx);

/* Registers fn for every score or status change. As af_health_on_change. */
int af_health_on_update(af_health_t *h, af_health_callback_fn fn, void *ctx);

/* Unregisters. Unknown ids are ignored. When it returns, fn is not running
 * and will not be called again, except when called from inside a callback:
 * then it does not wait for calls already under way on other threads. */
void af_health_remove_callback(af_health_t *h, int id);

/* --- metrics ------------------------------------------------------------ */

typedef struct {
  uint64_t snapshots_collected; /* ever recorded (tick + snapshot_now) */
  uint64_t callbacks_fired;     /* callback invocations */
  uint64_t callback_errors;     /* of which returned nonzero */
  uint64_t recomputes;          /* score/status evaluations */
  size_t history_size;          /* snapshots in the ring now */
  size_t history_capacity;
  size_t tracked;
  af_health_status_t status;
  double score;
} af_health_metrics_t;

/* Fills *out. Cannot fail (NULL h: zeroes *out). */
void af_health_metrics(af_health_t *h, af_health_metrics_t *out);

#ifdef __cplusplus
}
#endif
#endif /* AF_HEALTH_H */
