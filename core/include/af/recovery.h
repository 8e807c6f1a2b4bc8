/*
 * af/recovery.h - the recovery orchestrator: brings services back after their
 * circuit breakers open.
 *
 * Thread-safety: thread-safe. One mutex guards the orchestrator; every
 * function may be called from any thread. Callbacks (set_breaker,
 * start_probe, on_task_event) are never called with the lock held, so they
 * may call back into the orchestrator (a probe may complete synchronously
 * from inside start_probe). They run on the thread that caused them:
 * af_recovery_tick's caller for due attempts, the caller of
 * af_recovery_execute / af_recovery_approve / af_recovery_schedule /
 * af_recovery_cancel, and the thread that calls af_recovery_complete_attempt
 * (usually the server's prober thread) for outcomes. Because several threads
 * may report one task, on_task_event calls for the same task can arrive out
 * of order; every snapshot carries a per-task `version` that only grows, so a
 * watcher drops a snapshot older than the one it already has.
 *
 * The orchestrator is decoupled from the breaker module: it moves breakers
 * through the set_breaker callback and probes services through start_probe,
 * both provided by the engine / server.
 *
 * Model (numbered so other docs can point at them):
 *  1. One task per service. Scheduling a service that has an *active* task
 *     (SCHEDULED, AWAITING_MANUAL, IN_PROGRESS) updates that task in place:
 *     same id and attempt count, new priority, reason and policy; a
 *     SCHEDULED task's due time becomes the earlier of its current due time
 *     and now + delay(attempts + 1); switching to or from MANUAL moves it
 *     between AWAITING_MANUAL and SCHEDULED; an IN_PROGRESS task keeps
 *     running and the new policy decides what follows it. A *final* task
 *     (SUCCEEDED, FAILED, CANCELLED) is replaced by a new task with a new id.
 *     Final tasks stay visible to af_recovery_get until replaced or evicted
 *     (oldest final first) to make room under max_tasks.
 *  2. Timing. The wait before attempt k is delay(k) (af_recovery_delay_ms)
 *     plus jitter: the first attempt is due delay(1) after scheduling
 *     (IMMEDIATE: now), and after attempt n fails the next one is due
 *     delay(n + 1) later. MANUAL tasks wait in AWAITING_MANUAL until
 *     af_recovery_approve, also after a failed attempt.
 *  3. Attempt: state IN_PROGRESS, attempts + 1, set_breaker(HALF_OPEN), then
 *     start_probe. With probe NONE or no start_probe the attempt succeeds at
 *     once. The probe finishes with af_recovery_complete_attempt. Success:
 *     set_breaker(CLOSED), SUCCEEDED. Failure: set_breaker(OPEN), then
 *     SCHEDULED (or AWAITING_MANUAL) if attempts < max_retry_attempts, else
 *     FAILED. A set_breaker failure does not stop the attempt: it is appended
 *     to the task's last_message and counted in breaker_errors.
 *  4. Priority: among attempts due at one tick, lower priority value runs
 *     first, then earlier due time, then earlier scheduling (task id).
 *  5. Retry budget (beyond the seed): a global token bucket
 *     (retry_budget_per_sec, retry_budget_burst) that af_recovery_tick draws
 *     one token from per attempt. With no token the attempt is deferred by the
 *     time until the next token (counted in budget_deferrals), never dropped.
 *     Operator actions (af_recovery_execute, af_recovery_approve) bypass it.
 *  6. Every task that reaches a final state leaves one result in a bounded
 *     history (oldest dropped first).
 */
#ifndef AF_RECOVERY_H
#define AF_RECOVERY_H

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
  AF_RECOVERY_IMMEDIATE = 1,
  AF_RECOVERY_LINEAR_BACKOFF,
  AF_RECOVERY_EXPONENTIAL_BACKOFF,
  AF_RECOVERY_MANUAL
} af_recovery_strategy_t;

typedef enum {
  AF_RECOVERY_IDLE = 0,
  AF_RECOVERY_SCHEDULED,
  AF_RECOVERY_IN_PROGRESS,
  AF_RECOVERY_SUCCEEDED,
  AF_RECOVERY_FAILED,
  AF_RECOVERY_CANCELLED,
  AF_RECOVERY_AWAITING_MANUAL
} af_recovery_state_t;

typedef enum {
  AF_JITTER_NONE = 0,
  AF_JITTER_FULL,        /* uniform in [0, delay] */
  AF_JITTER_DECORRELATED /* min(max_delay, uniform(initial, previous * 3)) */
} af_recovery_jitter_t;

typedef enum {
  AF_PROBE_NONE = 0, /* assume healthy */
  AF_PROBE_GRPC_HEALTH,
  AF_PROBE_TCP,
  AF_PROBE_HTTP
} af_probe_kind_t;

/* Names: "IMMEDIATE", "LINEAR_BACKOFF", "EXPONENTIAL_BACKOFF", "MANUAL";
 * "IDLE", "SCHEDULED", "IN_PROGRESS", "SUCCEEDED", "FAILED", "CANCELLED",
 * "AWAITING_MANUAL"; "NONE", "FULL", "DECORRELATED"; "NONE", "GRPC_HEALTH",
 * "TCP", "HTTP". "UNKNOWN" for values outside the enums. Never NULL. */
const char *af_recovery_strategy_name(af_recovery_strategy_t s);
const char *af_recovery_state_name(af_recovery_state_t s);
const char *af_recovery_jitter_name(af_recovery_jitter_t j);
const char *af_probe_kind_name(af_probe_kind_t k);

/* True for SUCCEEDED, FAILED and CANCELLED. */
bool af_recovery_state_is_final(af_recovery_state_t s);

#define AF_PROBE_TARGET_MAX 256

typedef struct {
  af_recovery_strategy_t strategy; /* EXPONENTIAL_BACKOFF */
  uint32_t max_retry_attempts;     /* 5, >= 1 */
  double backoff_multiplier;       /* 2.0, >= 1.0 */
  int64_t initial_delay_ms;        /* 1000, >= 0 */
  int64_t max_delay_ms;            /* 60000, >= initial_delay_ms */
  af_recovery_jitter_t jitter;     /* NONE */
  af_probe_kind_t probe;           /* NONE */
  /* "host:port" for GRPC_HEALTH and TCP, a URL for HTTP. Required when
   * probe != NONE. NUL-terminated. */
  char probe_target[AF_PROBE_TARGET_MAX];
  /* grpc.health.v1 service name to check; "" = the server as a whole. */
  char probe_service[AF_NAME_MAX + 1];
  uint64_t probe_timeout_ms; /* 2000, >= 1 */
} af_recovery_policy_t;

/* Fills *p with the defaults above. Cannot fail. */
void af_recovery_policy_init(af_recovery_policy_t *p);

/* Returns AF_OK or AF_EINVAL with one of these messages in err (may be NULL),
 * checked in this order:
 *   "max_retry_attempts must be >= 1"
 *   "backoff_multiplier must be >= 1.0"      (also for NaN)
 *   "initial_delay_ms must be >= 0"
 *   "max_delay_ms must be >= initial_delay_ms"
 *   "unknown recovery strategy %d", "unknown jitter %d", "unknown probe %d"
 *   "probe_target is too long", "probe_service is too long" (no NUL)
 *   "probe_target is required for probe %s"  (e.g. "... for probe TCP")
 *   "probe_timeout_ms must be >= 1"
 * p borrows; NULL gives AF_EINVAL "policy is required". */
af_status_t af_recovery_policy_validate(const af_recovery_policy_t *p,
                                        af_error_t *err);

/* The wait before attempt `attempt` (>= 1; 0 counts as 1), without jitter:
 * IMMEDIATE 0, LINEAR_BACKOFF initial * n, EXPONENTIAL_BACKOFF
 * initial * multiplier^(n - 1), MANUAL 0; all capped at max_delay_ms and
 * never negative. Pure; cannot fail (p NULL gives 0). */
uint64_t af_recovery_delay_ms(const af_recovery_policy_t *p, uint32_t attempt);

/* A value snapshot of one task. */
typedef struct {
  uint64_t id; /* unique per orchestrator, increasing; never 0 */
  char service[AF_NAME_MAX + 1];
  af_recovery_state_t state;
  int32_t priority;
  af_recovery_policy_t policy;
  uint32_t attempts;    /* attempts started so far */
  uint64_t due_mono_ns; /* next attempt (SCHEDULED only, else 0) */
  int64_t due_wall_ns;  /* the same instant on the wall clock, or 0 */
  int64_t created_wall_ns, updated_wall_ns;
  char last_message[256]; /* outcome of the last attempt, notes */
  char reason[256];       /* why it was scheduled */
  uint64_t version;       /* grows with every change of this task */
} af_recovery_task_t;

typedef struct af_recovery af_recovery_t;

typedef struct {
  /* Moves the breaker of `service` to `state` (HALF_OPEN, CLOSED or OPEN).
   * May be NULL. A non-OK return is noted in the task's last_message; the
   * attempt continues. service borrows. */
  af_status_t (*set_breaker)(const char *service, af_breaker_state_t state,
                             void *ctx);
  /* Starts a probe for task->policy and returns at once (must not block);
   * the prober later calls af_recovery_complete_attempt(r, task->id,
   * task->attempts, ...), possibly from inside this call. A non-OK return
   * means the probe could not start: the attempt fails. May be NULL (every
   * attempt succeeds). task borrows (copy what outlives the call). */
  af_status_t (*start_probe)(const af_recovery_task_t *task, void *ctx);
  /* Every state change of a task (and in-place updates). May be NULL. task
   * borrows. Must not block for long: it runs on engine threads. */
  void (*on_task_event)(const af_recovery_task_t *task, void *ctx);
  void *ctx; /* retains: passed to every callback */
} af_recovery_callbacks_t;

typedef struct {
  const af_clock_t *clock; /* retains; NULL = system clock */
  af_recovery_callbacks_t cb;
  size_t history_size;         /* 100, >= 1 */
  size_t max_tasks;            /* 10000, >= 1; also caps per-service
                                  policies */
  double retry_budget_per_sec; /* 0 = unlimited, >= 0 */
  double retry_budget_burst;   /* 10, >= 1 when the budget is on */
  uint64_t rng_seed;           /* jitter RNG; 0 = seeded from the clock */
} af_recovery_config_t;

/* Fills *cfg with the defaults above. Cannot fail. */
void af_recovery_config_init(af_recovery_config_t *cfg);

/* Creates an orchestrator whose default policy is af_recovery_policy_init's.
 * cfg borrows (clock and cb.ctx are retained until destroy). Returns AF_OK
 * and *out (returns owned, free with af_recovery_destroy); AF_EINVAL with
 * "history_size must be >= 1", "max_tasks must be >= 1",
 * "retry_budget_per_sec must be >= 0" or "retry_budget_burst must be >= 1";
 * AF_ENOMEM. On failure *out is untouched and nothing leaks. */
af_status_t af_recovery_create(af_recovery_t **out,
                               const af_recovery_config_t *cfg,
                               af_error_t *err);

/* Frees everything. NULL is a no-op. REQUIRES: no other call on r is running
 * or will run, and no probe will complete any more (stop the prober first). */
void af_recovery_destroy(af_recovery_t *r);

/* Sets the policy of `service` (NULL or "" = the default policy used by
 * services without their own). p borrows and is validated (messages as
 * af_recovery_policy_validate). Also AF_EINVAL "invalid service name",
 * AF_ELIMIT "too many recovery policies (limit %zu)", AF_ENOMEM. Tasks
 * already scheduled keep the policy they were scheduled with. */
af_status_t af_recovery_set_policy(af_recovery_t *r, const char *service,
                                   const af_recovery_policy_t *p,
                                   af_error_t *err);

/* Copies the policy that applies to `service` (its own, else the default)
 * to *out; *is_default (may be NULL) says whether it is the default.
 * service NULL or "" asks for the default. AF_EINVAL on NULL r/out. */
af_status_t af_recovery_get_policy(af_recovery_t *r, const char *service,
                                   af_recovery_policy_t *out, bool *is_default);

/* Removes the service's own policy. AF_ENOTFOUND if it has none; AF_EINVAL
 * for NULL / "" (the default policy cannot be removed, only set). */
af_status_t af_recovery_remove_policy(af_recovery_t *r, const char *service);

/* True if `service` has a policy of its own. */
bool af_recovery_has_policy(af_recovery_t *r, const char *service);

/* Schedules recovery of `service` with its policy, or with *override if
 * non-NULL (borrows, validated). reason (may be NULL) is copied, truncated to
 * 255 bytes. First attempt due after delay(1) (IMMEDIATE: at the next tick);
 * MANUAL: AWAITING_MANUAL. An active task is updated instead (see 1).
 * *out (may be NULL) receives the task. Errors: AF_EINVAL ("invalid service
 * name", policy messages), AF_ELIMIT "too many recovery tasks (limit %zu)"
 * when max_tasks tasks are active, AF_ENOMEM. on_task_event fires. */
af_status_t af_recovery_schedule(af_recovery_t *r, const char *service,
                                 int32_t priority,
                                 const af_recovery_policy_t *override,
                                 const char *reason, af_recovery_task_t *out,
                                 af_error_t *err);

/* Starts an attempt for the service's SCHEDULED task now, ignoring its due
 * time and the retry budget. *out (may be NULL) receives the task as it is
 * when the call returns (IN_PROGRESS, or already final / rescheduled if the
 * probe completed synchronously). AF_ENOTFOUND: no task; AF_ESTATE: the task
 * is IN_PROGRESS, final, or AWAITING_MANUAL (use af_recovery_approve). */
af_status_t af_recovery_execute(af_recovery_t *r, const char *service,
                                af_recovery_task_t *out);

/* Cancels the service's active task: CANCELLED, result recorded, an
 * in-flight probe's completion will be ignored. The breaker is left as it
 * is. AF_ENOTFOUND: no task; AF_ESTATE: already final. */
af_status_t af_recovery_cancel(af_recovery_t *r, const char *service);

/* Approves a MANUAL task: an attempt starts now (bypassing the budget).
 * AF_ENOTFOUND: no task; AF_ESTATE: not AWAITING_MANUAL. */
af_status_t af_recovery_approve(af_recovery_t *r, const char *service);

/* Reports the outcome of attempt `attempt` of task `task_id`. message (may
 * be NULL) is copied. AF_OK if applied; AF_ENOTFOUND if the task is gone
 * (replaced or evicted); AF_ESTATE if stale (not IN_PROGRESS, e.g.
 * cancelled, or a different attempt number): ignored, counted in
 * stale_completions. Calls set_breaker and on_task_event without the lock. */
af_status_t af_recovery_complete_attempt(af_recovery_t *r, uint64_t task_id,
                                         uint32_t attempt, bool success,
                                         const char *message);

/* Copies the service's latest task (final ones too, until replaced) to *out.
 * AF_ENOTFOUND if none, AF_EINVAL on NULL arguments. */
af_status_t af_recovery_get(af_recovery_t *r, const char *service,
                            af_recovery_task_t *out);

/* Every known task: SCHEDULED ones first in heap order (priority, due time,
 * id), then IN_PROGRESS / AWAITING_MANUAL, then final ones, each group by
 * priority then id. *out returns owned (af_free; NULL when *n is 0).
 * AF_ENOMEM leaves *out and *n untouched. */
af_status_t af_recovery_list(af_recovery_t *r, af_recovery_task_t **out,
                             size_t *n);

typedef struct {
  uint64_t task_id;
  char service[AF_NAME_MAX + 1];
  af_recovery_state_t state; /* SUCCEEDED, FAILED or CANCELLED */
  uint32_t attempts;
  uint64_t duration_ms; /* from scheduling to the final state */
  int64_t finished_wall_ns;
  char message[256];
} af_recovery_result_t;

/* The bounded result history, oldest first / newest last. *out returns owned
 * (af_free; NULL when *n is 0). AF_ENOMEM leaves *out and *n untouched. */
af_status_t af_recovery_history(af_recovery_t *r, af_recovery_result_t **out,
                                size_t *n);

/* Puts n results (borrowed, oldest first) into the history as if they had
 * finished in that order after everything already in it (the oldest are
 * dropped past history_size). For restoring a history saved before a
 * restart; no callback fires and no counter moves. AF_EINVAL on NULL
 * arguments (n == 0 with NULL results is fine). */
af_status_t af_recovery_history_restore(af_recovery_t *r,
                                        const af_recovery_result_t *results,
                                        size_t n);

/* Starts every attempt that is due (4, 5), with callbacks called without the
 * lock on the calling thread. An attempt that is rescheduled during this
 * call (e.g. an IMMEDIATE retry after a probe that failed at once) waits for
 * the next tick. Returns the monotonic time of the next due attempt, or
 * UINT64_MAX if none is scheduled: the caller's timer sleeps until then (or
 * until it is woken by a schedule; on_task_event tells it). */
uint64_t af_recovery_tick(af_recovery_t *r);

typedef struct {
  uint64_t scheduled; /* tasks created (in-place updates not counted) */
  uint64_t attempts;  /* attempts started */
  uint64_t succeeded, failed, cancelled; /* tasks finished that way */
  uint64_t budget_deferrals; /* attempts pushed back by the retry budget */
  uint64_t stale_completions;
  uint64_t breaker_errors; /* set_breaker calls that failed */
  size_t active;           /* SCHEDULED + IN_PROGRESS + AWAITING_MANUAL */
  /* Whole attempts the retry budget allows right now (tokens refilled to
   * the current time, rounded down); -1 when the budget is off. */
  int64_t budget_remaining;
} af_recovery_metrics_t;

/* Copies the counters. Cannot fail (NULL arguments: no-op). */
void af_recovery_metrics(af_recovery_t *r, af_recovery_metrics_t *out);

#ifdef __cplusplus
}
#endif
#endif /* AF_RECOVERY_H */
