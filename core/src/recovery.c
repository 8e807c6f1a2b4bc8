/*
 * recovery.c - the recovery orchestrator.
 *
 * Owns: the tasks (one per service, in `tasks`, found by linear scan: the
 * table is bounded by max_tasks and lookups are per operator action or per
 * attempt, not per request), a binary min-heap of the SCHEDULED ones ordered
 * by (priority, due time, id), the per-service policies and the default one,
 * the result ring, the retry-budget token bucket and the jitter RNG.
 *
 * Invariants (under `mu`):
 *  - a task is in the heap iff its state is SCHEDULED, and then
 *    heap[t->heap_index] == t; otherwise heap_index == NOT_IN_HEAP;
 *  - heap_cap >= tasks_cap, so pushing a task on the heap never allocates;
 *  - at most one task per service; a final task is never in the heap;
 *  - a task's result goes to the history exactly once, when it turns final.
 *
 * Threading: one mutex. An attempt is started in two halves: under the lock
 * the task moves to IN_PROGRESS and a snapshot is taken; without the lock the
 * event fires, set_breaker(HALF_OPEN) and start_probe run. Completion is the
 * same in reverse: state decided under the lock, set_breaker and the event
 * after it is released. The (task id, attempt number) pair identifies an
 * attempt, so a completion that arrives after a cancel, a replacement or a
 * newer attempt is recognised as stale and ignored. One known interleaving:
 * after a failure with delay 0, another thread's tick may start the next
 * attempt (HALF_OPEN) before this thread's set_breaker(OPEN) runs; the next
 * outcome sets the breaker right again.
 */
#define _POSIX_C_SOURCE 200809L
#include "af/recovery.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "af/alloc.h"

#define NOT_IN_HEAP SIZE_MAX
#define NOTE_MAX 128

typedef struct task {
  af_recovery_task_t pub;
  size_t heap_index;
  uint64_t created_mono_ns;
  uint64_t finished_mono_ns; /* for eviction of old final tasks */
  uint64_t prev_delay_ms;    /* decorrelated jitter state */
  uint64_t ran_gen;          /* tick generation that last considered it */
  char note[NOTE_MAX];       /* set_breaker trouble during this attempt */
} task_t;

typedef struct {
  char name[AF_NAME_MAX + 1];
  af_recovery_policy_t policy;
} policy_entry_t;

struct af_recovery {
  pthread_mutex_t mu;
  const af_clock_t *clock;
  af_recovery_callbacks_t cb;
  size_t max_tasks;

  af_recovery_policy_t default_policy;
  policy_entry_t *policies;
  size_t npolicies, policies_cap;

  task_t **tasks;
  size_t ntasks, tasks_cap;
  task_t **heap;
  size_t nheap, heap_cap;

  af_recovery_result_t *history; /* ring of history_size */
  size_t history_size, hist_start, hist_len;

  double budget_rate, budget_burst, budget_tokens;
  uint64_t budget_last_ns;

  uint64_t rng;
  uint64_t next_id;
  uint64_t tick_gen;
  af_recovery_metrics_t m; /* m.active computed on read */
};

/* ---- names and policies ------------------------------------------------ */

const char *af_recovery_strategy_name(af_recovery_strategy_t s)
{
  switch (s) {
  case AF_RECOVERY_IMMEDIATE:
    return "IMMEDIATE";
  case AF_RECOVERY_LINEAR_BACKOFF:
    return "LINEAR_BACKOFF";
  case AF_RECOVERY_EXPONENTIAL_BACKOFF:
    return "EXPONENTIAL_BACKOFF";
  case AF_RECOVERY_MANUAL:
    return "MANUAL";
  }
  return "UNKNOWN";
}

const char *af_recovery_state_name(af_recovery_state_t s)
{
  switch (s) {
  case AF_RECOVERY_IDLE:
    return "IDLE";
  case AF_RECOVERY_SCHEDULED:
    return "SCHEDULED";
  case AF_RECOVERY_IN_PROGRESS:
    return "IN_PROGRESS";
  case AF_RECOVERY_SUCCEEDED:
    return "SUCCEEDED";
  case AF_RECOVERY_FAILED:
    return "FAILED";
  case AF_RECOVERY_CANCELLED:
    return "CANCELLED";
  case AF_RECOVERY_AWAITING_MANUAL:
    return "AWAITING_MANUAL";
  }
  return "UNKNOWN";
}

const char *af_recovery_jitter_name(af_recovery_jitter_t j)
{
  switch (j) {
  case AF_JITTER_NONE:
    return "NONE";
  case AF_JITTER_FULL:
    return "FULL";
  case AF_JITTER_DECORRELATED:
    return "DECORRELATED";
  }
  return "UNKNOWN";
}

const char *af_probe_kind_name(af_probe_kind_t k)
{
  switch (k) {
  case AF_PROBE_NONE:
    return "NONE";
  case AF_PROBE_GRPC_HEALTH:
    return "GRPC_HEALTH";
  case AF_PROBE_TCP:
    return "TCP";
  case AF_PROBE_HTTP:
    return "HTTP";
  }
  return "UNKNOWN";
}

bool af_recovery_state_is_final(af_recovery_state_t s)
{
  return s == AF_RECOVERY_SUCCEEDED || s == AF_RECOVERY_FAILED ||
         s == AF_RECOVERY_CANCELLED;
}

void af_recovery_policy_init(af_recovery_policy_t *p)
{
  if (p == NULL)
    return;
  memset(p, 0, sizeof(*p));
  p->strategy = AF_RECOVERY_EXPONENTIAL_BACKOFF;
  p->max_retry_attempts = 5;
  p->backoff_multiplier = 2.0;
  p->initial_delay_ms = 1000;
  p->max_delay_ms = 60000;
  p->jitter = AF_JITTER_NONE;
  p->probe = AF_PROBE_NONE;
  p->probe_timeout_ms = 2000;
}

af_status_t af_recovery_policy_validate(const af_recovery_policy_t *p,
                                        af_error_t *err)
{
  if (p == NULL)
    return af_error_set(err, AF_EINVAL, "policy is required");
  if (p->max_retry_attempts < 1)
    return af_error_set(err, AF_EINVAL, "max_retry_attempts must be >= 1");
  if (!(p->backoff_multiplier >= 1.0)) /* NaN fails too */
    return af_error_set(err, AF_EINVAL, "backoff_multiplier must be >= 1.0");
  if (p->initial_delay_ms < 0)
    return af_error_set(err, AF_EINVAL, "initial_delay_ms must be >= 0");
  if (p->max_delay_ms < p->initial_delay_ms)
    return af_error_set(err, AF_EINVAL,
                        "max_delay_ms must be >= initial_delay_ms");
  if (p->strategy < AF_RECOVERY_IMMEDIATE || p->strategy > AF_RECOVERY_MANUAL)
    return af_error_set(err, AF_EINVAL, "unknown recovery strategy %d",
                        (int)p->strategy);
  if (p->jitter < AF_JITTER_NONE || p->jitter > AF_JITTER_DECORRELATED)
    return af_error_set(err, AF_EINVAL, "unknown jitter %d", (int)p->jitter);
  if (p->probe < AF_PROBE_NONE || p->probe > AF_PROBE_HTTP)
    return af_error_set(err, AF_EINVAL, "unknown probe %d", (int)p->probe);
  if (memchr(p->probe_target, '\0', sizeof(p->probe_target)) == NULL)
    return af_error_set(err, AF_EINVAL, "probe_target is too long");
  if (memchr(p->probe_service, '\0', sizeof(p->probe_service)) == NULL)
    return af_error_set(err, AF_EINVAL, "probe_service is too long");
  if (p->probe != AF_PROBE_NONE && p->probe_target[0] == '\0')
    return af_error_set(err, AF_EINVAL, "probe_target is required for probe %s",
                        af_probe_kind_name(p->probe));
  if (p->probe_timeout_ms < 1)
    return af_error_set(err, AF_EINVAL, "probe_timeout_ms must be >= 1");
  return AF_OK;
}

uint64_t af_recovery_delay_ms(const af_recovery_policy_t *p, uint32_t attempt)
{
  if (p == NULL)
    return 0;
  uint64_t n = attempt == 0 ? 1 : attempt;
  uint64_t init = p->initial_delay_ms < 0 ? 0 : (uint64_t)p->initial_delay_ms;
  uint64_t cap = p->max_delay_ms < 0 ? 0 : (uint64_t)p->max_delay_ms;
  uint64_t d;
  switch (p->strategy) {
  case AF_RECOVERY_LINEAR_BACKOFF:
    d = (init != 0 && n > cap / init) ? cap : init * n;
    break;
  case AF_RECOVERY_EXPONENTIAL_BACKOFF: {
    if (init == 0)
      return 0;
    double m = p->backoff_multiplier >= 1.0 ? p->backoff_multiplier : 1.0;
    double x = (double)init * pow(m, (double)(n - 1));
    if (!(x < (double)cap)) /* also inf */
      return cap;
    d = (uint64_t)(x + 0.5);
    break;
  }
  case AF_RECOVERY_IMMEDIATE:
  case AF_RECOVERY_MANUAL:
  default:
    return 0;
  }
  return d > cap ? cap : d;
}

/* ---- small helpers ------------------------------------------------------ */

static void copy_str(char *dst, size_t cap, const char *src)
{
  if (src == NULL)
    src = "";
  size_t n = strnlen(src, cap - 1);
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static void append_str(char *dst, size_t cap, const char *src)
{
  size_t len = strnlen(dst, cap - 1);
  copy_str(dst + len, cap - len, src);
}

static uint64_t add_sat_u64(uint64_t a, uint64_t b)
{
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint64_t ms_to_ns(uint64_t ms)
{
  return ms > UINT64_MAX / AF_NS_PER_MS ? UINT64_MAX : ms * AF_NS_PER_MS;
}

static bool service_is_default(const char *service)
{
  return service == NULL || service[0] == '\0';
}

/* splitmix64: tiny, seedable, good enough for jitter. */
static uint64_t rng_next(af_recovery_t *r)
{
  uint64_t z = (r->rng += UINT64_C(0x9E3779B97F4A7C15));
  z = (z ^ (z >> 30)) * UINT64_C(0xBF58476D1CE4E5B9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94D049BB133111EB);
  return z ^ (z >> 31);
}

/* Uniform in [lo, hi] (inclusive). */
static uint64_t rng_range(af_recovery_t *r, uint64_t lo, uint64_t hi)
{
  if (hi <= lo)
    return lo;
  uint64_t span = hi - lo;
  if (span == UINT64_MAX)
    return rng_next(r);
  return lo + rng_next(r) % (span + 1);
}

/* ---- heap of SCHEDULED tasks ------------------------------------------- */

static bool task_before(const task_t *a, const task_t *b)
{
  if (a->pub.priority != b->pub.priority)
    return a->pub.priority < b->pub.priority;
  if (a->pub.due_mono_ns != b->pub.due_mono_ns)
    return a->pub.due_mono_ns < b->pub.due_mono_ns;
  return a->pub.id < b->pub.id;
}

static void heap_set(af_recovery_t *r, size_t i, task_t *t)
{
  r->heap[i] = t;
  t->heap_index = i;
}

static void heap_sift_up(af_recovery_t *r, size_t i)
{
  task_t *t = r->heap[i];
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!task_before(t, r->heap[parent]))
      break;
    heap_set(r, i, r->heap[parent]);
    i = parent;
  }
  heap_set(r, i, t);
}

static void heap_sift_down(af_recovery_t *r, size_t i)
{
  task_t *t = r->heap[i];
  for (;;) {
    size_t child = 2 * i + 1;
    if (child >= r->nheap)
      break;
    if (child + 1 < r->nheap && task_before(r->heap[child + 1], r->heap[child]))
      child++;
    if (!task_before(r->heap[child], t))
      break;
    heap_set(r, i, r->heap[child]);
    i = child;
  }
  heap_set(r, i, t);
}

/* Restores order after heap[i]'s key changed. */
static void heap_fix(af_recovery_t *r, size_t i)
{
  task_t *t = r->heap[i];
  heap_sift_up(r, i);
  heap_sift_down(r, t->heap_index);
}

static void heap_push(af_recovery_t *r, task_t *t)
{
  /* capacity guaranteed by heap_cap >= tasks_cap >= ntasks >= nheap + 1 */
  r->heap[r->nheap] = t;
  t->heap_index = r->nheap;
  r->nheap++;
  heap_sift_up(r, t->heap_index);
}

static void heap_remove(af_recovery_t *r, task_t *t)
{
  size_t i = t->heap_index;
  if (i == NOT_IN_HEAP)
    return;
  t->heap_index = NOT_IN_HEAP;
  r->nheap--;
  if (i == r->nheap)
    return;
  heap_set(r, i, r->heap[r->nheap]);
  heap_fix(r, i);
}

/* ---- tasks ------------------------------------------------------------- */

static task_t *find_task(af_recovery_t *r, const char *service, size_t *idx)
{
  for (size_t i = 0; i < r->ntasks; i++) {
    if (strcmp(r->tasks[i]->pub.service, service) == 0) {
      if (idx != NULL)
        *idx = i;
      return r->tasks[i];
    }
  }
  return NULL;
}

static task_t *find_task_id(af_recovery_t *r, uint64_t id)
{
  for (size_t i = 0; i < r->ntasks; i++)
    if (r->tasks[i]->pub.id == id)
      return r->tasks[i];
  return NULL;
}

static void remove_task_at(af_recovery_t *r, size_t idx)
{
  task_t *t = r->tasks[idx];
  heap_remove(r, t);
  r->tasks[idx] = r->tasks[r->ntasks - 1];
  r->ntasks--;
  af_free(t);
}

/* Makes room for one more task (and its heap slot). */
static af_status_t ensure_task_capacity(af_recovery_t *r)
{
  if (r->ntasks < r->tasks_cap)
    return AF_OK;
  size_t cap = r->tasks_cap == 0 ? 16 : r->tasks_cap * 2;
  if (cap > r->max_tasks)
    cap = r->max_tasks;
  if (cap <= r->ntasks)
    cap = r->ntasks + 1;
  task_t **heap = af_realloc(r->heap, cap * sizeof(*heap));
  if (heap == NULL)
    return AF_ENOMEM;
  r->heap = heap;
  r->heap_cap = cap;
  task_t **tasks = af_realloc(r->tasks, cap * sizeof(*tasks));
  if (tasks == NULL)
    return AF_ENOMEM;
  r->tasks = tasks;
  r->tasks_cap = cap;
  return AF_OK;
}

static void touch(af_recovery_t *r, task_t *t)
{
  t->pub.version++;
  t->pub.updated_wall_ns = af_clock_wall_ns(r->clock);
}

static void set_due(af_recovery_t *r, task_t *t, uint64_t now, uint64_t wait)
{
  t->pub.due_mono_ns = add_sat_u64(now, wait);
  int64_t wall = af_clock_wall_ns(r->clock);
  t->pub.due_wall_ns = wait > (uint64_t)(INT64_MAX - (wall < 0 ? 0 : wall))
                           ? INT64_MAX
                           : wall + (int64_t)wait;
}

static void clear_due(task_t *t)
{
  t->pub.due_mono_ns = 0;
  t->pub.due_wall_ns = 0;
}

/* The wait before attempt `attempt` of t, jitter applied. */
static uint64_t next_delay_ms(af_recovery_t *r, task_t *t, uint32_t attempt)
{
  const af_recovery_policy_t *p = &t->pub.policy;
  uint64_t d = af_recovery_delay_ms(p, attempt);
  if (p->strategy == AF_RECOVERY_IMMEDIATE || p->strategy == AF_RECOVERY_MANUAL)
    return d;
  uint64_t cap = (uint64_t)p->max_delay_ms;
  switch (p->jitter) {
  case AF_JITTER_FULL:
    d = rng_range(r, 0, d);
    break;
  case AF_JITTER_DECORRELATED: {
    uint64_t lo = (uint64_t)p->initial_delay_ms;
    uint64_t prev = t->prev_delay_ms != 0 ? t->prev_delay_ms : lo;
    uint64_t hi = prev > UINT64_MAX / 3 ? UINT64_MAX : prev * 3;
    if (hi < lo)
      hi = lo;
    d = rng_range(r, lo, hi);
    if (d > cap)
      d = cap;
    break;
  }
  case AF_JITTER_NONE:
  default:
    break;
  }
  t->prev_delay_ms = d;
  return d;
}

static void record_result(af_recovery_t *r, task_t *t, uint64_t now)
{
  t->finished_mono_ns = now;
  size_t slot;
  if (r->hist_len < r->history_size) {
    slot = (r->hist_start + r->hist_len) % r->history_size;
    r->hist_len++;
  } else {
    slot = r->hist_start;
    r->hist_start = (r->hist_start + 1) % r->history_size;
  }
  af_recovery_result_t *res = &r->history[slot];
  memset(res, 0, sizeof(*res));
  res->task_id = t->pub.id;
  copy_str(res->service, sizeof(res->service), t->pub.service);
  res->state = t->pub.state;
  res->attempts = t->pub.attempts;
  res->duration_ms =
      now > t->created_mono_ns ? (now - t->created_mono_ns) / AF_NS_PER_MS : 0;
  res->finished_wall_ns = af_clock_wall_ns(r->clock);
  copy_str(res->message, sizeof(res->message), t->pub.last_message);
}

static af_recovery_result_t *newest_result(af_recovery_t *r)
{
  if (r->hist_len == 0)
    return NULL;
  return &r->history[(r->hist_start + r->hist_len - 1) % r->history_size];
}

static bool is_active(const task_t *t)
{
  return !af_recovery_state_is_final(t->pub.state) &&
         t->pub.state != AF_RECOVERY_IDLE;
}

/* Evicts the final task that finished first. False if none is final. */
static bool evict_oldest_final(af_recovery_t *r)
{
  size_t best = SIZE_MAX;
  for (size_t i = 0; i < r->ntasks; i++) {
    task_t *t = r->tasks[i];
    if (is_active(t))
      continue;
    if (best == SIZE_MAX ||
        t->finished_mono_ns < r->tasks[best]->finished_mono_ns ||
        (t->finished_mono_ns == r->tasks[best]->finished_mono_ns &&
         t->pub.id < r->tasks[best]->pub.id))
      best = i;
  }
  if (best == SIZE_MAX)
    return false;
  remove_task_at(r, best);
  return true;
}

/* ---- attempts ---------------------------------------------------------- */

/* Under the lock: t (SCHEDULED or AWAITING_MANUAL) starts its next attempt. */
static void begin_attempt_locked(af_recovery_t *r, task_t *t,
                                 af_recovery_task_t *snap)
{
  heap_remove(r, t);
  clear_due(t);
  t->pub.state = AF_RECOVERY_IN_PROGRESS;
  t->pub.attempts++;
  t->note[0] = '\0';
  snprintf(t->pub.last_message, sizeof(t->pub.last_message),
           "attempt %u in progress", (unsigned)t->pub.attempts);
  touch(r, t);
  r->m.attempts++;
  *snap = t->pub;
}

/* Records a failed set_breaker call on task `id`; refreshes *snap (may be
 * NULL) if the task still exists. */
static void note_breaker_error(af_recovery_t *r, uint64_t id,
                               af_breaker_state_t state, af_status_t st,
                               af_recovery_task_t *snap)
{
  char note[NOTE_MAX];
  snprintf(note, sizeof(note), " [set_breaker %s failed: %s]",
           af_breaker_state_name(state), af_status_name(st));
  pthread_mutex_lock(&r->mu);
  r->m.breaker_errors++;
  task_t *t = find_task_id(r, id);
  if (t != NULL) {
    append_str(t->pub.last_message, sizeof(t->pub.last_message), note);
    if (t->pub.state == AF_RECOVERY_IN_PROGRESS)
      append_str(t->note, sizeof(t->note), note);
    af_recovery_result_t *res = newest_result(r);
    if (af_recovery_state_is_final(t->pub.state) && res != NULL &&
        res->task_id == id)
      append_str(res->message, sizeof(res->message), note);
    touch(r, t);
    if (snap != NULL)
      *snap = t->pub;
  }
  pthread_mutex_unlock(&r->mu);
}

static void emit(af_recovery_t *r, const af_recovery_task_t *snap)
{
  if (r->cb.on_task_event != NULL)
    r->cb.on_task_event(snap, r->cb.ctx);
}

/* Without the lock: the outside half of starting an attempt. */
static void run_attempt_unlocked(af_recovery_t *r, af_recovery_task_t *snap)
{
  emit(r, snap);
  if (r->cb.set_breaker != NULL) {
    af_status_t st =
        r->cb.set_breaker(snap->service, AF_BREAKER_HALF_OPEN, r->cb.ctx);
    if (st != AF_OK)
      note_breaker_error(r, snap->id, AF_BREAKER_HALF_OPEN, st, NULL);
  }
  if (snap->policy.probe == AF_PROBE_NONE || r->cb.start_probe == NULL) {
    (void)af_recovery_complete_attempt(r, snap->id, snap->attempts, true,
                                       "no probe configured; assumed healthy");
    return;
  }
  af_status_t st = r->cb.start_probe(snap, r->cb.ctx);
  if (st != AF_OK) {
    char msg[128];
    snprintf(msg, sizeof(msg), "probe could not start: %s", af_status_str(st));
    (void)af_recovery_complete_attempt(r, snap->id, snap->attempts, false, msg);
  }
}

af_status_t af_recovery_complete_attempt(af_recovery_t *r, uint64_t task_id,
                                         uint32_t attempt, bool success,
                                         const char *message)
{
  if (r == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  task_t *t = find_task_id(r, task_id);
  if (t == NULL) {
    r->m.stale_completions++;
    pthread_mutex_unlock(&r->mu);
    return AF_ENOTFOUND;
  }
  if (t->pub.state != AF_RECOVERY_IN_PROGRESS || t->pub.attempts != attempt) {
    r->m.stale_completions++;
    pthread_mutex_unlock(&r->mu);
    return AF_ESTATE;
  }
  uint64_t now = af_clock_mono_ns(r->clock);
  if (message == NULL)
    message = success ? "probe succeeded" : "probe failed";
  copy_str(t->pub.last_message, sizeof(t->pub.last_message), message);
  append_str(t->pub.last_message, sizeof(t->pub.last_message), t->note);
  af_breaker_state_t target;
  if (success) {
    target = AF_BREAKER_CLOSED;
    t->pub.state = AF_RECOVERY_SUCCEEDED;
    r->m.succeeded++;
    record_result(r, t, now);
  } else {
    target = AF_BREAKER_OPEN;
    if (t->pub.attempts < t->pub.policy.max_retry_attempts) {
      if (t->pub.policy.strategy == AF_RECOVERY_MANUAL) {
        t->pub.state = AF_RECOVERY_AWAITING_MANUAL;
      } else {
        uint64_t wait = next_delay_ms(r, t, t->pub.attempts + 1);
        set_due(r, t, now, ms_to_ns(wait));
        t->pub.state = AF_RECOVERY_SCHEDULED;
        heap_push(r, t);
      }
    } else {
      t->pub.state = AF_RECOVERY_FAILED;
      r->m.failed++;
      record_result(r, t, now);
    }
  }
  touch(r, t);
  af_recovery_task_t snap = t->pub;
  pthread_mutex_unlock(&r->mu);

  if (r->cb.set_breaker != NULL) {
    af_status_t st = r->cb.set_breaker(snap.service, target, r->cb.ctx);
    if (st != AF_OK)
      note_breaker_error(r, snap.id, target, st, &snap);
  }
  emit(r, &snap);
  return AF_OK;
}

/* ---- lifecycle --------------------------------------------------------- */

void af_recovery_config_init(af_recovery_config_t *cfg)
{
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof(*cfg));
  cfg->clock = NULL;
  cfg->history_size = 100;
  cfg->max_tasks = 10000;
  cfg->retry_budget_per_sec = 0.0;
  cfg->retry_budget_burst = 10.0;
  cfg->rng_seed = 0;
}

af_status_t af_recovery_create(af_recovery_t **out,
                               const af_recovery_config_t *cfg, af_error_t *err)
{
  if (out == NULL || cfg == NULL)
    return af_error_set(err, AF_EINVAL, "out and cfg are required");
  if (cfg->history_size < 1)
    return af_error_set(err, AF_EINVAL, "history_size must be >= 1");
  if (cfg->max_tasks < 1)
    return af_error_set(err, AF_EINVAL, "max_tasks must be >= 1");
  if (!(cfg->retry_budget_per_sec >= 0.0) || isinf(cfg->retry_budget_per_sec))
    return af_error_set(err, AF_EINVAL, "retry_budget_per_sec must be >= 0");
  if (cfg->retry_budget_per_sec > 0.0 &&
      (!(cfg->retry_budget_burst >= 1.0) || isinf(cfg->retry_budget_burst)))
    return af_error_set(err, AF_EINVAL, "retry_budget_burst must be >= 1");

  af_recovery_t *r = af_calloc(1, sizeof(*r));
  if (r == NULL)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  r->history = af_calloc(cfg->history_size, sizeof(*r->history));
  if (r->history == NULL) {
    af_free(r);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  if (pthread_mutex_init(&r->mu, NULL) != 0) {
    af_free(r->history);
    af_free(r);
    return af_error_set(err, AF_ENOMEM, "cannot create mutex");
  }
  r->clock = cfg->clock;
  r->cb = cfg->cb;
  r->max_tasks = cfg->max_tasks;
  r->history_size = cfg->history_size;
  af_recovery_policy_init(&r->default_policy);
  r->budget_rate = cfg->retry_budget_per_sec;
  r->budget_burst = cfg->retry_budget_burst;
  r->budget_tokens = cfg->retry_budget_burst;
  r->budget_last_ns = af_clock_mono_ns(r->clock);
  r->rng = cfg->rng_seed != 0
               ? cfg->rng_seed
               : af_clock_mono_ns(r->clock) ^
                     ((uint64_t)af_clock_wall_ns(r->clock) << 1) ^
                     (uint64_t)(uintptr_t)r;
  *out = r;
  return AF_OK;
}

void af_recovery_destroy(af_recovery_t *r)
{
  if (r == NULL)
    return;
  for (size_t i = 0; i < r->ntasks; i++)
    af_free(r->tasks[i]);
  af_free(r->tasks);
  af_free(r->heap);
  af_free(r->policies);
  af_free(r->history);
  pthread_mutex_destroy(&r->mu);
  af_free(r);
}

/* ---- policies ---------------------------------------------------------- */

static policy_entry_t *find_policy(af_recovery_t *r, const char *service)
{
  for (size_t i = 0; i < r->npolicies; i++)
    if (strcmp(r->policies[i].name, service) == 0)
      return &r->policies[i];
  return NULL;
}

static const af_recovery_policy_t *policy_for(af_recovery_t *r,
                                              const char *service)
{
  policy_entry_t *e =
      service_is_default(service) ? NULL : find_policy(r, service);
  return e != NULL ? &e->policy : &r->default_policy;
}

af_status_t af_recovery_set_policy(af_recovery_t *r, const char *service,
                                   const af_recovery_policy_t *p,
                                   af_error_t *err)
{
  if (r == NULL)
    return af_error_set(err, AF_EINVAL, "recovery is required");
  af_status_t st = af_recovery_policy_validate(p, err);
  if (st != AF_OK)
    return st;
  bool is_def = service_is_default(service);
  if (!is_def && !af_name_valid(service))
    return af_error_set(err, AF_EINVAL, "invalid service name");
  pthread_mutex_lock(&r->mu);
  if (is_def) {
    r->default_policy = *p;
    pthread_mutex_unlock(&r->mu);
    return AF_OK;
  }
  policy_entry_t *e = find_policy(r, service);
  if (e == NULL) {
    if (r->npolicies >= r->max_tasks) {
      pthread_mutex_unlock(&r->mu);
      return af_error_set(err, AF_ELIMIT,
                          "too many recovery policies (limit %zu)",
                          r->max_tasks);
    }
    if (r->npolicies == r->policies_cap) {
      size_t cap = r->policies_cap == 0 ? 8 : r->policies_cap * 2;
      policy_entry_t *np = af_realloc(r->policies, cap * sizeof(*np));
      if (np == NULL) {
        pthread_mutex_unlock(&r->mu);
        return af_error_set(err, AF_ENOMEM, "out of memory");
      }
      r->policies = np;
      r->policies_cap = cap;
    }
    e = &r->policies[r->npolicies++];
    copy_str(e->name, sizeof(e->name), service);
  }
  e->policy = *p;
  pthread_mutex_unlock(&r->mu);
  return AF_OK;
}

af_status_t af_recovery_get_policy(af_recovery_t *r, const char *service,
                                   af_recovery_policy_t *out, bool *is_default)
{
  if (r == NULL || out == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  const af_recovery_policy_t *p = policy_for(r, service);
  *out = *p;
  if (is_default != NULL)
    *is_default = p == &r->default_policy;
  pthread_mutex_unlock(&r->mu);
  return AF_OK;
}

af_status_t af_recovery_remove_policy(af_recovery_t *r, const char *service)
{
  if (r == NULL || service_is_default(service))
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  policy_entry_t *e = find_policy(r, service);
  if (e == NULL) {
    pthread_mutex_unlock(&r->mu);
    return AF_ENOTFOUND;
  }
  *e = r->policies[--r->npolicies];
  pthread_mutex_unlock(&r->mu);
  return AF_OK;
}

bool af_recovery_has_policy(af_recovery_t *r, const char *service)
{
  if (r == NULL || service_is_default(service))
    return false;
  pthread_mutex_lock(&r->mu);
  bool found = find_policy(r, service) != NULL;
  pthread_mutex_unlock(&r->mu);
  return found;
}

/* ---- operations -------------------------------------------------------- */

/* In-place update of an active task (header, rule 1). */
static void update_active_locked(af_recovery_t *r, task_t *t, uint64_t now,
                                 int32_t priority,
                                 const af_recovery_policy_t *p)
{
  t->pub.priority = priority;
  t->pub.policy = *p;
  bool manual = p->strategy == AF_RECOVERY_MANUAL;
  switch (t->pub.state) {
  case AF_RECOVERY_SCHEDULED:
    if (manual) {
      heap_remove(r, t);
      clear_due(t);
      t->pub.state = AF_RECOVERY_AWAITING_MANUAL;
    } else {
      uint64_t wait = ms_to_ns(af_recovery_delay_ms(p, t->pub.attempts + 1));
      if (add_sat_u64(now, wait) < t->pub.due_mono_ns)
        set_due(r, t, now, wait);
      heap_fix(r, t->heap_index);
    }
    break;
  case AF_RECOVERY_AWAITING_MANUAL:
    if (!manual) {
      set_due(r, t, now, ms_to_ns(next_delay_ms(r, t, t->pub.attempts + 1)));
      t->pub.state = AF_RECOVERY_SCHEDULED;
      heap_push(r, t);
    }
    break;
  default: /* IN_PROGRESS: the new policy decides after the outcome */
    break;
  }
}

af_status_t af_recovery_schedule(af_recovery_t *r, const char *service,
                                 int32_t priority,
                                 const af_recovery_policy_t *override,
                                 const char *reason, af_recovery_task_t *out,
                                 af_error_t *err)
{
  if (r == NULL)
    return af_error_set(err, AF_EINVAL, "recovery is required");
  if (!af_name_valid(service))
    return af_error_set(err, AF_EINVAL, "invalid service name");
  if (override != NULL) {
    af_status_t st = af_recovery_policy_validate(override, err);
    if (st != AF_OK)
      return st;
  }
  pthread_mutex_lock(&r->mu);
  const af_recovery_policy_t *p =
      override != NULL ? override : policy_for(r, service);
  uint64_t now = af_clock_mono_ns(r->clock);
  size_t idx = 0;
  task_t *t = find_task(r, service, &idx);
  if (t != NULL && is_active(t)) {
    update_active_locked(r, t, now, priority, p);
    copy_str(t->pub.reason, sizeof(t->pub.reason), reason);
    touch(r, t);
  } else {
    if (t == NULL && r->ntasks >= r->max_tasks && !evict_oldest_final(r)) {
      pthread_mutex_unlock(&r->mu);
      return af_error_set(err, AF_ELIMIT, "too many recovery tasks (limit %zu)",
                          r->max_tasks);
    }
    task_t *nt = af_calloc(1, sizeof(*nt));
    if (nt == NULL || (t == NULL && ensure_task_capacity(r) != AF_OK)) {
      af_free(nt);
      pthread_mutex_unlock(&r->mu);
      return af_error_set(err, AF_ENOMEM, "out of memory");
    }
    if (t != NULL) { /* replace the final task in its slot */
      af_free(t);
      r->tasks[idx] = nt;
    } else {
      r->tasks[r->ntasks++] = nt;
    }
    t = nt;
    t->heap_index = NOT_IN_HEAP;
    t->pub.id = ++r->next_id;
    copy_str(t->pub.service, sizeof(t->pub.service), service);
    t->pub.priority = priority;
    t->pub.policy = *p;
    copy_str(t->pub.reason, sizeof(t->pub.reason), reason);
    t->created_mono_ns = now;
    t->pub.created_wall_ns = af_clock_wall_ns(r->clock);
    if (p->strategy == AF_RECOVERY_MANUAL) {
      t->pub.state = AF_RECOVERY_AWAITING_MANUAL;
      copy_str(t->pub.last_message, sizeof(t->pub.last_message),
               "awaiting manual approval");
    } else {
      set_due(r, t, now, ms_to_ns(next_delay_ms(r, t, 1)));
      t->pub.state = AF_RECOVERY_SCHEDULED;
      copy_str(t->pub.last_message, sizeof(t->pub.last_message), "scheduled");
      heap_push(r, t);
    }
    r->m.scheduled++;
    touch(r, t);
  }
  af_recovery_task_t snap = t->pub;
  pthread_mutex_unlock(&r->mu);
  emit(r, &snap);
  if (out != NULL)
    *out = snap;
  return AF_OK;
}

/* Starts an attempt now for a task in state `required`. */
static af_status_t start_now(af_recovery_t *r, const char *service,
                             af_recovery_state_t required,
                             af_recovery_task_t *out)
{
  if (r == NULL || service == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  task_t *t = find_task(r, service, NULL);
  if (t == NULL) {
    pthread_mutex_unlock(&r->mu);
    return AF_ENOTFOUND;
  }
  if (t->pub.state != required) {
    pthread_mutex_unlock(&r->mu);
    return AF_ESTATE;
  }
  af_recovery_task_t snap;
  begin_attempt_locked(r, t, &snap);
  pthread_mutex_unlock(&r->mu);
  run_attempt_unlocked(r, &snap);
  if (out != NULL) {
    pthread_mutex_lock(&r->mu);
    t = find_task_id(r, snap.id);
    *out = t != NULL ? t->pub : snap;
    pthread_mutex_unlock(&r->mu);
  }
  return AF_OK;
}

af_status_t af_recovery_execute(af_recovery_t *r, const char *service,
                                af_recovery_task_t *out)
{
  return start_now(r, service, AF_RECOVERY_SCHEDULED, out);
}

af_status_t af_recovery_approve(af_recovery_t *r, const char *service)
{
  return start_now(r, service, AF_RECOVERY_AWAITING_MANUAL, NULL);
}

af_status_t af_recovery_cancel(af_recovery_t *r, const char *service)
{
  if (r == NULL || service == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  task_t *t = find_task(r, service, NULL);
  if (t == NULL) {
    pthread_mutex_unlock(&r->mu);
    return AF_ENOTFOUND;
  }
  if (!is_active(t)) {
    pthread_mutex_unlock(&r->mu);
    return AF_ESTATE;
  }
  heap_remove(r, t);
  clear_due(t);
  t->pub.state = AF_RECOVERY_CANCELLED;
  copy_str(t->pub.last_message, sizeof(t->pub.last_message), "cancelled");
  r->m.cancelled++;
  record_result(r, t, af_clock_mono_ns(r->clock));
  touch(r, t);
  af_recovery_task_t snap = t->pub;
  pthread_mutex_unlock(&r->mu);
  emit(r, &snap);
  return AF_OK;
}

af_status_t af_recovery_get(af_recovery_t *r, const char *service,
                            af_recovery_task_t *out)
{
  if (r == NULL || service == NULL || out == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  task_t *t = find_task(r, service, NULL);
  if (t != NULL)
    *out = t->pub;
  pthread_mutex_unlock(&r->mu);
  return t != NULL ? AF_OK : AF_ENOTFOUND;
}

static int list_rank(af_recovery_state_t s)
{
  if (s == AF_RECOVERY_SCHEDULED)
    return 0;
  if (af_recovery_state_is_final(s))
    return 2;
  return 1;
}

static int list_cmp(const void *pa, const void *pb)
{
  const af_recovery_task_t *a = pa, *b = pb;
  int ra = list_rank(a->state), rb = list_rank(b->state);
  if (ra != rb)
    return ra < rb ? -1 : 1;
  if (a->priority != b->priority)
    return a->priority < b->priority ? -1 : 1;
  if (ra == 0 && a->due_mono_ns != b->due_mono_ns)
    return a->due_mono_ns < b->due_mono_ns ? -1 : 1;
  if (a->id != b->id)
    return a->id < b->id ? -1 : 1;
  return 0;
}

af_status_t af_recovery_list(af_recovery_t *r, af_recovery_task_t **out,
                             size_t *n)
{
  if (r == NULL || out == NULL || n == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  size_t count = r->ntasks;
  af_recovery_task_t *arr = NULL;
  if (count > 0) {
    arr = af_malloc(count * sizeof(*arr));
    if (arr == NULL) {
      pthread_mutex_unlock(&r->mu);
      return AF_ENOMEM;
    }
    for (size_t i = 0; i < count; i++)
      arr[i] = r->tasks[i]->pub;
  }
  pthread_mutex_unlock(&r->mu);
  if (count > 1)
    qsort(arr, count, sizeof(*arr), list_cmp);
  *out = arr;
  *n = count;
  return AF_OK;
}

af_status_t af_recovery_history(af_recovery_t *r, af_recovery_result_t **out,
                                size_t *n)
{
  if (r == NULL || out == NULL || n == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  size_t count = r->hist_len;
  af_recovery_result_t *arr = NULL;
  if (count > 0) {
    arr = af_malloc(count * sizeof(*arr));
    if (arr == NULL) {
      pthread_mutex_unlock(&r->mu);
      return AF_ENOMEM;
    }
    for (size_t i = 0; i < count; i++)
      arr[i] = r->history[(r->hist_start + i) % r->history_size];
  }
  pthread_mutex_unlock(&r->mu);
  *out = arr;
  *n = count;
  return AF_OK;
}

af_status_t af_recovery_history_restore(af_recovery_t *r,
                                        const af_recovery_result_t *results,
                                        size_t n)
{
  if (r == NULL || (results == NULL && n > 0))
    return AF_EINVAL;
  pthread_mutex_lock(&r->mu);
  for (size_t i = 0; i < n; i++) {
    size_t slot;
    if (r->hist_len < r->history_size) {
      slot = (r->hist_start + r->hist_len) % r->history_size;
      r->hist_len++;
    } else {
      slot = r->hist_start;
      r->hist_start = (r->hist_start + 1) % r->history_size;
    }
    r->history[slot] = results[i];
    r->history[slot].service[AF_NAME_MAX] = '\0';
    r->history[slot].message[sizeof(r->history[slot].message) - 1] = '\0';
  }
  pthread_mutex_unlock(&r->mu);
  return AF_OK;
}

/* ---- the tick ---------------------------------------------------------- */

static void budget_refill(af_recovery_t *r, uint64_t now)
{
  if (now > r->budget_last_ns) {
    r->budget_tokens += (double)(now - r->budget_last_ns) /
                        (double)AF_NS_PER_SEC * r->budget_rate;
    if (r->budget_tokens > r->budget_burst)
      r->budget_tokens = r->budget_burst;
    r->budget_last_ns = now;
  }
}

/* Nanoseconds until the bucket holds one token. */
static uint64_t budget_wait_ns(const af_recovery_t *r)
{
  double need = 1.0 - r->budget_tokens;
  double ns = ceil(need / r->budget_rate * (double)AF_NS_PER_SEC);
  if (!(ns >= 1.0))
    return 1;
  if (ns >= 1.8e19)
    return UINT64_MAX;
  return (uint64_t)ns;
}

uint64_t af_recovery_tick(af_recovery_t *r)
{
  if (r == NULL)
    return UINT64_MAX;
  pthread_mutex_lock(&r->mu);
  uint64_t gen = ++r->tick_gen;
  uint64_t now = af_clock_mono_ns(r->clock);
  for (;;) {
    task_t *best = NULL;
    for (size_t i = 0; i < r->nheap; i++) {
      task_t *t = r->heap[i];
      if (t->pub.due_mono_ns <= now && t->ran_gen != gen &&
          (best == NULL || task_before(t, best)))
        best = t;
    }
    if (best == NULL)
      break;
    best->ran_gen = gen;
    if (r->budget_rate > 0.0) {
      budget_refill(r, now);
      if (r->budget_tokens < 1.0) {
        set_due(r, best, now, budget_wait_ns(r));
        heap_fix(r, best->heap_index);
        r->m.budget_deferrals++;
        touch(r, best);
        continue;
      }
      r->budget_tokens -= 1.0;
    }
    af_recovery_task_t snap;
    begin_attempt_locked(r, best, &snap);
    pthread_mutex_unlock(&r->mu);
    run_attempt_unlocked(r, &snap);
    pthread_mutex_lock(&r->mu);
  }
  uint64_t next = UINT64_MAX;
  for (size_t i = 0; i < r->nheap; i++)
    if (r->heap[i]->pub.due_mono_ns < next)
      next = r->heap[i]->pub.due_mono_ns;
  pthread_mutex_unlock(&r->mu);
  return next;
}

void af_recovery_metrics(af_recovery_t *r, af_recovery_metrics_t *out)
{
  if (r == NULL || out == NULL)
    return;
  pthread_mutex_lock(&r->mu);
  *out = r->m;
  size_t active = 0;
  for (size_t i = 0; i < r->ntasks; i++)
    if (is_active(r->tasks[i]))
      active++;
  out->active = active;
  out->budget_remaining = -1;
  if (r->budget_rate > 0.0) {
    budget_refill(r, af_clock_mono_ns(r->clock));
    out->budget_remaining = (int64_t)floor(r->budget_tokens);
  }
  pthread_mutex_unlock(&r->mu);
}
