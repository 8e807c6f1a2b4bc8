/*
 * svc_recovery.c - antifragility.v1.RecoveryService on the core recovery
 * orchestrator, with real probes.
 *
 * Owns: the prober (probe.c, PROBE_THREADS threads) that runs recovery
 * probes off the CQ threads; a small log of recent attempts (when each
 * started, how long its probe took); the ExecuteRecovery calls waiting for
 * their attempt to finish; one watch_t per WatchRecovery stream. The
 * tasks, their timing, the retry budget and the history live in
 * core/src/recovery.c; the engine moves breakers and schedules recovery
 * when a breaker with a probing policy opens.
 *
 * Probe path: the engine (timer thread, or an RPC thread for Execute /
 * Approve) calls start_probe -> the job is queued -> a prober thread runs
 * the probe -> af_recovery_complete_attempt (which moves the breaker and
 * publishes the task) -> the attempt log is updated and ExecuteRecovery
 * calls waiting for that attempt are answered.
 *
 * ExecuteRecovery answers when its attempt has finished, so the response
 * carries the attempt's result. The handler and the prober meet under
 * svc->mu: the prober records the finished attempt before it looks for
 * waiters, and the handler looks for the finished attempt before it
 * registers as a waiter, so neither can miss the other.
 *
 * WatchRecovery: SNAPSHOT messages first (one per task, the last with
 * snapshot_complete), then one message per task change, kind derived from
 * the task (SCHEDULED, ATTEMPT_STARTED, ATTEMPT_FINISHED, CANCELLED,
 * FINISHED). Changes wait in a per-stream FIFO of at most WATCH_QUEUE_MAX;
 * a slower consumer loses the oldest and the next message says how many
 * in `coalesced`. Task snapshots may reach the hub out of order (they are
 * published by several threads): a snapshot older than one already queued
 * or sent for that task (by version) is dropped.
 *
 * Threading: handlers run on CQ threads and make short engine calls; no
 * lock of this file is held while calling the engine, the hub or the
 * framework (af_rpc_reply runs after unlocking).
 */
#include "app_internal.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "antifragility/v1/recovery.pb-c.h"
#include "convert.h"
#include "log.h"
#include "persist.h"
#include "probe.h"
#include "status_map.h"

#define SVC "/antifragility.v1.RecoveryService/"

/* Probes running at once, and waiting beyond those. */
#define PROBE_THREADS 4
#define PROBE_QUEUE_MAX 1024
/* Attempts remembered for start times and probe durations. */
#define ATTEMPT_LOG_MAX 256
/* Wire limits (recovery.proto / recovery.options). */
#define TASKS_WIRE_MAX 32
#define RESULTS_WIRE_MAX 32
#define REASON_WIRE_MAX 256
#define ACTOR_WIRE_MAX 128
/* Durations beyond these are refused. */
#define DELAY_WIRE_MAX_MS UINT64_C(86400000)  /* one day */
#define PROBE_TIMEOUT_MAX_MS UINT64_C(300000) /* five minutes */
/* Events a slow WatchRecovery consumer may have pending. */
#define WATCH_QUEUE_MAX 64
/* Task versions a stream remembers to drop out-of-order snapshots. */
#define WATCH_SEEN_MAX 128

#define ST(x) ANTIFRAGILITY__V1__RECOVERY_STATE__RECOVERY_STATE_##x
#define KIND(x) ANTIFRAGILITY__V1__RECOVERY_EVENT_KIND__RECOVERY_EVENT_KIND_##x

/* One attempt that went through the prober. */
typedef struct {
  uint64_t task_id;
  uint32_t attempt;
  int64_t started_wall_ns;
  bool finished;
  bool healthy;
  uint64_t elapsed_ms;
} attempt_t;

/* An ExecuteRecovery call waiting for its attempt. */
typedef struct waiter {
  struct waiter *next;
  af_rpc_t *rpc;
  uint64_t task_id;
  uint32_t attempt;
  char service[AF_NAME_MAX + 1];
} waiter_t;

struct af_svc_recovery {
  af_app_t *app;
  af_prober_t *prober;
  pthread_mutex_t mu;
  /* under mu: */
  attempt_t log[ATTEMPT_LOG_MAX];
  size_t log_next; /* ring position of the next entry */
  waiter_t *waiters;
  bool closing; /* shutdown began: Execute answers UNAVAILABLE */
};

static af_recovery_t *rec_of(af_app_t *app)
{
  return af_engine_recovery(app->engine);
}

/* ------------------------------------------------------------------ */
/* Attempt log (svc->mu held)                                         */

static attempt_t *log_find(af_svc_recovery_t *svc, uint64_t task_id,
                           uint32_t attempt)
{
  for (size_t i = 0; i < ATTEMPT_LOG_MAX; i++) {
    attempt_t *a = &svc->log[i];
    if (a->task_id == task_id && a->attempt == attempt && task_id != 0)
      return a;
  }
  return NULL;
}

/* Copy of the entry for (task_id, attempt), if any. Takes svc->mu. */
static bool log_get(af_svc_recovery_t *svc, uint64_t task_id, uint32_t attempt,
                    attempt_t *out)
{
  pthread_mutex_lock(&svc->mu);
  attempt_t *a = log_find(svc, task_id, attempt);
  if (a != NULL)
    *out = *a;
  pthread_mutex_unlock(&svc->mu);
  return a != NULL;
}

/* ------------------------------------------------------------------ */
/* Conversions                                                        */

static Antifragility__V1__RecoveryStrategy
strategy_to_pb(af_recovery_strategy_t s)
{
  switch (s) {
  case AF_RECOVERY_IMMEDIATE:
    return ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_IMMEDIATE;
  case AF_RECOVERY_LINEAR_BACKOFF:
    return ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_LINEAR_BACKOFF;
  case AF_RECOVERY_EXPONENTIAL_BACKOFF:
    return ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_EXPONENTIAL_BACKOFF;
  case AF_RECOVERY_MANUAL:
    return ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_MANUAL;
  }
  return ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_UNSPECIFIED;
}

/* UNSPECIFIED -> dflt; unknown -> false with the core's message. */
static bool strategy_from_pb(int v, af_recovery_strategy_t dflt,
                             af_recovery_strategy_t *out, af_error_t *err)
{
  if (v ==
      ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_UNSPECIFIED) {
    *out = dflt;
    return true;
  }
  if (v < AF_RECOVERY_IMMEDIATE || v > AF_RECOVERY_MANUAL) {
    af_error_set(err, AF_EINVAL, "unknown recovery strategy %d", v);
    return false;
  }
  *out = (af_recovery_strategy_t)v; /* the wire values match the core's */
  return true;
}

static Antifragility__V1__RecoveryState state_to_pb(af_recovery_state_t s)
{
  switch (s) {
  case AF_RECOVERY_IDLE:
    return ST(IDLE);
  case AF_RECOVERY_SCHEDULED:
    return ST(SCHEDULED);
  case AF_RECOVERY_IN_PROGRESS:
    return ST(IN_PROGRESS);
  case AF_RECOVERY_SUCCEEDED:
    return ST(SUCCEEDED);
  case AF_RECOVERY_FAILED:
    return ST(FAILED);
  case AF_RECOVERY_CANCELLED:
    return ST(CANCELLED);
  case AF_RECOVERY_AWAITING_MANUAL:
    return ST(AWAITING_MANUAL);
  }
  return ST(UNSPECIFIED);
}

/* Wire enums for jitter and probe: UNSPECIFIED = 0, then NONE = 1, ...;
 * the core's start at NONE = 0. */
static int jitter_to_pb(af_recovery_jitter_t j) { return (int)j + 1; }
static int probe_to_pb(af_probe_kind_t k) { return (int)k + 1; }

/* A RecoveryPolicy and the storage its pointers need. */
typedef struct {
  Antifragility__V1__RecoveryPolicy m;
  Google__Protobuf__UInt32Value max_retry;
  Google__Protobuf__DoubleValue mult;
  Google__Protobuf__Duration initial, max, timeout;
} pb_policy_t;

static Antifragility__V1__RecoveryPolicy *
policy_to_pb(pb_policy_t *p, const af_recovery_policy_t *pol, const char *hash)
{
  antifragility__v1__recovery_policy__init(&p->m);
  google__protobuf__uint32_value__init(&p->max_retry);
  google__protobuf__double_value__init(&p->mult);
  p->max_retry.value = pol->max_retry_attempts;
  p->mult.value = pol->backoff_multiplier;
  p->m.max_retry_attempts = &p->max_retry;
  p->m.backoff_multiplier = &p->mult;
  p->m.initial_delay =
      af_duration_from_ms(&p->initial, (uint64_t)pol->initial_delay_ms);
  p->m.max_delay = af_duration_from_ms(&p->max, (uint64_t)pol->max_delay_ms);
  p->m.jitter = (Antifragility__V1__JitterMode)jitter_to_pb(pol->jitter);
  p->m.probe = (Antifragility__V1__ProbeKind)probe_to_pb(pol->probe);
  p->m.probe_target = (char *)pol->probe_target;
  p->m.probe_service = (char *)pol->probe_service;
  p->m.probe_timeout = af_duration_from_ms(&p->timeout, pol->probe_timeout_ms);
  p->m.constitutional_hash = (char *)hash;
  p->m.strategy = strategy_to_pb(pol->strategy);
  return &p->m;
}

/* Duration for a delay field: negative -> the seed's ">= 0" message. */
static bool delay_from_pb(const Google__Protobuf__Duration *d, int64_t dflt,
                          const char *field, const char *neg_msg, int64_t *out,
                          af_error_t *err)
{
  if (d != NULL && (d->seconds < 0 || d->nanos < 0)) {
    af_error_set(err, AF_EINVAL, "%s", neg_msg);
    return false;
  }
  uint64_t ms = 0;
  if (af_duration_to_ms(d, (uint64_t)dflt, DELAY_WIRE_MAX_MS, field, &ms,
                        err) != AF_OK)
    return false;
  *out = (int64_t)ms;
  return true;
}

/* Applies the fields set in pb over *pol (pb NULL: pol unchanged), then
 * validates: the core's messages first, then the probe target's shape. */
static bool policy_from_pb(const Antifragility__V1__RecoveryPolicy *pb,
                           af_recovery_policy_t *pol, af_error_t *err)
{
  if (pb != NULL) {
    if (pb->max_retry_attempts != NULL)
      pol->max_retry_attempts = pb->max_retry_attempts->value;
    if (pb->backoff_multiplier != NULL)
      pol->backoff_multiplier = pb->backoff_multiplier->value;
    if (!delay_from_pb(pb->initial_delay, pol->initial_delay_ms,
                       "initial_delay", "initial_delay_ms must be >= 0",
                       &pol->initial_delay_ms, err) ||
        !delay_from_pb(pb->max_delay, pol->max_delay_ms, "max_delay",
                       "max_delay_ms must be >= initial_delay_ms",
                       &pol->max_delay_ms, err))
      return false;
    if (!strategy_from_pb((int)pb->strategy, pol->strategy, &pol->strategy,
                          err))
      return false;
    int j = (int)pb->jitter;
    if (j != 0)
      pol->jitter = (af_recovery_jitter_t)(j - 1); /* core validates */
    int k = (int)pb->probe;
    if (k != 0)
      pol->probe = (af_probe_kind_t)(k - 1);
    const char *target = af_str_or_empty(pb->probe_target);
    const char *service = af_str_or_empty(pb->probe_service);
    if (strlen(target) >= sizeof pol->probe_target) {
      af_error_set(err, AF_EINVAL, "probe_target must be at most %zu bytes",
                   sizeof pol->probe_target - 1);
      return false;
    }
    if (strlen(service) >= sizeof pol->probe_service) {
      af_error_set(err, AF_EINVAL, "probe_service must be at most %zu bytes",
                   sizeof pol->probe_service - 1);
      return false;
    }
    if (target[0] != '\0' || k != 0)
      snprintf(pol->probe_target, sizeof pol->probe_target, "%s", target);
    if (service[0] != '\0' || k != 0)
      snprintf(pol->probe_service, sizeof pol->probe_service, "%s", service);
    if (pb->probe_timeout != NULL) {
      if (af_duration_to_ms(pb->probe_timeout, pol->probe_timeout_ms,
                            PROBE_TIMEOUT_MAX_MS, "probe_timeout",
                            &pol->probe_timeout_ms, err) != AF_OK)
        return false;
    }
  }
  /* The core reports negative and NaN values with the seed's messages;
   * jitter / probe values out of range as "unknown jitter N" (core
   * numbering), so check the wire values here first. */
  if (pb != NULL && ((int)pb->jitter < 0 || (int)pb->jitter > 3)) {
    af_error_set(err, AF_EINVAL, "unknown jitter %d", (int)pb->jitter);
    return false;
  }
  if (pb != NULL && ((int)pb->probe < 0 || (int)pb->probe > 4)) {
    af_error_set(err, AF_EINVAL, "unknown probe %d", (int)pb->probe);
    return false;
  }
  if (af_recovery_policy_validate(pol, err) != AF_OK)
    return false;
  return af_probe_target_check(pol->probe, pol->probe_target, err) == AF_OK;
}

/* A RecoveryTask and the storage its pointers need. */
typedef struct {
  Antifragility__V1__RecoveryTask m;
  char id[24];
  pb_policy_t policy;
  Google__Protobuf__Timestamp scheduled, last_attempt, next_attempt;
} pb_task_t;

/* True when the task's latest attempt failed and it will retry or has
 * given up. */
static bool last_attempt_failed(const af_recovery_task_t *t)
{
  return t->attempts > 0 && (t->state == AF_RECOVERY_SCHEDULED ||
                             t->state == AF_RECOVERY_AWAITING_MANUAL ||
                             t->state == AF_RECOVERY_FAILED);
}

static Antifragility__V1__RecoveryTask *
task_to_pb(af_svc_recovery_t *svc, pb_task_t *p, const af_recovery_task_t *t)
{
  const char *hash = af_engine_hash(svc->app->engine);
  antifragility__v1__recovery_task__init(&p->m);
  Antifragility__V1__RecoveryTask *m = &p->m;
  snprintf(p->id, sizeof p->id, "%" PRIu64, t->id);
  m->task_id = p->id;
  m->service_name = (char *)t->service;
  m->priority = t->priority;
  m->strategy = strategy_to_pb(t->policy.strategy);
  m->policy = policy_to_pb(&p->policy, &t->policy, hash);
  m->state = state_to_pb(t->state);
  m->scheduled_at = af_ts_from_ns(&p->scheduled, t->created_wall_ns);
  m->attempt_count = t->attempts;
  attempt_t a;
  if (t->attempts > 0 && log_get(svc, t->id, t->attempts, &a))
    m->last_attempt_at = af_ts_from_ns(&p->last_attempt, a.started_wall_ns);
  if (t->state == AF_RECOVERY_SCHEDULED)
    m->next_attempt_at = af_ts_from_ns(&p->next_attempt, t->due_wall_ns);
  if (last_attempt_failed(t) || t->state == AF_RECOVERY_CANCELLED)
    m->last_error = (char *)t->last_message;
  m->constitutional_hash = (char *)hash;
  return m;
}

/* A RecoveryResult and the storage its pointers need. */
typedef struct {
  Antifragility__V1__RecoveryResult m;
  char id[24];
  Google__Protobuf__Timestamp ts;
} pb_result_t;

/* A RecoveryResult: the outcome of attempt `attempts` of a task (its
 * duration and probe verdict from the attempt log when the prober ran it;
 * without a probe the attempt passed or failed as the task did). */
static Antifragility__V1__RecoveryResult *
result_to_pb(af_svc_recovery_t *svc, pb_result_t *p, uint64_t task_id,
             const char *service, af_recovery_state_t state, uint32_t attempts,
             uint32_t max_attempts, const char *message, int64_t wall_ns)
{
  antifragility__v1__recovery_result__init(&p->m);
  Antifragility__V1__RecoveryResult *m = &p->m;
  snprintf(p->id, sizeof p->id, "%" PRIu64, task_id);
  m->service_name = (char *)service;
  m->task_id = p->id;
  attempt_t a;
  bool logged = log_get(svc, task_id, attempts, &a) && a.finished;
  m->success = state == AF_RECOVERY_SUCCEEDED;
  m->attempt_number = attempts;
  m->total_attempts = max_attempts;
  m->elapsed_time_ms = logged ? (double)a.elapsed_ms : 0.0;
  m->state = state_to_pb(state);
  if (!m->success)
    m->error_message = (char *)message;
  m->health_check_passed = logged ? a.healthy : m->success;
  m->timestamp = af_ts_from_ns(&p->ts, wall_ns);
  m->constitutional_hash = (char *)af_engine_hash(svc->app->engine);
  return m;
}

/* The result of the task's latest attempt, from its snapshot after the
 * attempt finished. */
static Antifragility__V1__RecoveryResult *
task_result_to_pb(af_svc_recovery_t *svc, pb_result_t *p,
                  const af_recovery_task_t *t)
{
  return result_to_pb(svc, p, t->id, t->service, t->state, t->attempts,
                      t->policy.max_retry_attempts, t->last_message,
                      t->updated_wall_ns);
}

/* ------------------------------------------------------------------ */
/* Request checks                                                     */

static bool check_hash(af_app_t *app, const char *presented, af_error_t *err)
{
  const char *want = af_engine_hash(app->engine);
  presented = af_str_or_empty(presented);
  if (presented[0] != '\0' && strcmp(presented, want) != 0) {
    af_error_set(err, AF_EHASH, "constitutional hash mismatch: expected %s",
                 want);
    return false;
  }
  return true;
}

/* The checks most RecoveryService requests share: a valid service name
 * and no other constitutional hash. Fails rpc and returns false if not. */
static bool check_request(af_app_t *app, af_rpc_t *rpc, const char *service,
                          const char *hash)
{
  af_error_t err;
  af_error_clear(&err);
  if (af_check_name(service, "service_name", &err) &&
      check_hash(app, hash, &err))
    return true;
  af_rpc_fail_status(rpc, err.code != AF_OK ? err.code : AF_EINVAL, &err);
  return false;
}

static bool check_len(const char *s, size_t max, const char *field,
                      af_error_t *err)
{
  if (strlen(af_str_or_empty(s)) > max) {
    af_error_set(err, AF_EINVAL, "%s must be at most %zu bytes", field, max);
    return false;
  }
  return true;
}

/* Who asked: the authenticated identity, else the request's actor, else
 * the peer address. */
static const char *caller(af_rpc_t *rpc, const char *actor)
{
  const char *id = af_rpc_identity(rpc);
  if (id[0] != '\0')
    return id;
  actor = af_str_or_empty(actor);
  return actor[0] != '\0' ? actor : af_rpc_peer(rpc);
}

static void reply_not_found(af_rpc_t *rpc, const char *service)
{
  af_rpc_fail(rpc, GRPC_STATUS_NOT_FOUND, "no recovery task for service %s",
              service);
}

/* ------------------------------------------------------------------ */
/* Policies                                                           */

static void reply_policy(af_app_t *app, af_rpc_t *rpc,
                         const af_recovery_policy_t *pol)
{
  pb_policy_t p;
  Antifragility__V1__SetRecoveryPolicyResponse resp =
      ANTIFRAGILITY__V1__SET_RECOVERY_POLICY_RESPONSE__INIT;
  resp.policy = policy_to_pb(&p, pol, af_engine_hash(app->engine));
  af_rpc_reply(rpc, &resp.base);
}

/* A SetRecoveryPolicy waiting for its policy to be committed. */
typedef struct {
  af_app_t *app;
  af_rpc_t *rpc;
  af_recovery_policy_t pol;
  char service[AF_NAME_MAX + 1];
} policy_wait_t;

/* Store thread: the policy is durable (or could not be written). */
static void on_policy_stored(af_status_t st, const char *message, void *ctx)
{
  policy_wait_t *w = ctx;
  if (st == AF_OK)
    reply_policy(w->app, w->rpc, &w->pol);
  else
    af_rpc_fail(w->rpc, GRPC_STATUS_UNAVAILABLE,
                "recovery policy of %s is in effect but could not be "
                "stored: %s",
                w->service, message);
  af_free(w);
}

static void on_set_policy(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__SetRecoveryPolicyRequest *q =
      (const Antifragility__V1__SetRecoveryPolicyRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_recovery_policy_t pol;
  af_recovery_policy_init(&pol);
  if (!af_check_name(q->service_name, "service_name", &err) ||
      !check_hash(app, q->constitutional_hash, &err) ||
      !policy_from_pb(q->policy, &pol, &err)) {
    af_rpc_fail_status(rpc, err.code != AF_OK ? err.code : AF_EINVAL, &err);
    return;
  }
  af_status_t st =
      af_recovery_set_policy(rec_of(app), q->service_name, &pol, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  char detail[AF_PROBE_TARGET_MAX + 96];
  snprintf(detail, sizeof detail, "%s, %u attempts, probe %s %s",
           af_recovery_strategy_name(pol.strategy), pol.max_retry_attempts,
           af_probe_kind_name(pol.probe), pol.probe_target);
  af_log(AF_LOG_INFO, "recovery policy of %s set by %s: %s", q->service_name,
         caller(rpc, NULL), detail);
  af_persist_recovery_action(app, "policy", q->service_name, caller(rpc, NULL),
                             detail);
  /* With a store the answer waits for the commit, as RecordUsage does:
   * an acknowledged policy survives kill -9. Once the write is queued the
   * store thread may answer (and so free) rpc at any moment: rpc is not
   * touched after that unless this thread still owns the answer. */
  policy_wait_t *w = af_malloc(sizeof *w);
  if (w != NULL) {
    w->app = app;
    w->rpc = rpc;
    w->pol = pol;
    snprintf(w->service, sizeof w->service, "%s", q->service_name);
  }
  /* Without w (out of memory) the write still goes, unwaited. */
  af_persist_result_t pr = af_persist_recovery_policy(
      app, q->service_name, &pol, w != NULL ? on_policy_stored : NULL, w);
  if (pr != AF_PERSIST_QUEUED || w == NULL) {
    af_free(w);
    w = NULL;
  }
  if (pr == AF_PERSIST_NO_STORE || (pr == AF_PERSIST_QUEUED && w == NULL))
    reply_policy(app, rpc, &pol);
  else if (pr == AF_PERSIST_REFUSED)
    af_rpc_fail(rpc, GRPC_STATUS_UNAVAILABLE,
                "recovery policy of %s is in effect but could not be stored "
                "(store closed or out of memory)",
                q->service_name);
}

static void on_get_policy(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__GetRecoveryPolicyRequest *q =
      (const Antifragility__V1__GetRecoveryPolicyRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  const char *name = af_str_or_empty(q->service_name);
  if (name[0] != '\0' && !af_check_name(name, "service_name", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_recovery_policy_t pol;
  bool is_default = true;
  af_status_t st = af_recovery_get_policy(rec_of(app), name, &pol, &is_default);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  pb_policy_t p;
  Antifragility__V1__GetRecoveryPolicyResponse resp =
      ANTIFRAGILITY__V1__GET_RECOVERY_POLICY_RESPONSE__INIT;
  resp.policy = policy_to_pb(&p, &pol, af_engine_hash(app->engine));
  resp.is_default = is_default;
  af_rpc_reply(rpc, &resp.base);
}

/* ------------------------------------------------------------------ */
/* Tasks                                                              */

static void reply_task(af_app_t *app, af_rpc_t *rpc,
                       const af_recovery_task_t *t)
{
  pb_task_t p;
  Antifragility__V1__ScheduleRecoveryResponse resp =
      ANTIFRAGILITY__V1__SCHEDULE_RECOVERY_RESPONSE__INIT;
  resp.task = task_to_pb(app->recovery, &p, t);
  af_rpc_reply(rpc, &resp.base);
}

static void on_schedule(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__ScheduleRecoveryRequest *q =
      (const Antifragility__V1__ScheduleRecoveryRequest *)msg;
  if (!check_request(app, rpc, q->service_name, q->constitutional_hash))
    return;
  af_error_t err;
  af_error_clear(&err);
  /* The task's policy: the request's over the service's, and the
   * request's strategy over both. */
  af_recovery_policy_t pol;
  af_recovery_get_policy(rec_of(app), q->service_name, &pol, NULL);
  bool override =
      q->policy != NULL ||
      q->strategy !=
          ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_UNSPECIFIED;
  if (!policy_from_pb(q->policy, &pol, &err) ||
      !strategy_from_pb((int)q->strategy, pol.strategy, &pol.strategy, &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  char reason[REASON_WIRE_MAX];
  snprintf(reason, sizeof reason, "scheduled by %s", caller(rpc, NULL));
  af_recovery_task_t t;
  af_status_t st =
      af_recovery_schedule(rec_of(app), q->service_name, q->priority,
                           override ? &pol : NULL, reason, &t, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  af_log(AF_LOG_INFO, "recovery of %s scheduled by %s (%s, priority %d)",
         t.service, caller(rpc, NULL),
         af_recovery_strategy_name(t.policy.strategy), t.priority);
  char detail[64];
  snprintf(detail, sizeof detail, "task %" PRIu64 ", %s, priority %d", t.id,
           af_recovery_strategy_name(t.policy.strategy), t.priority);
  af_persist_recovery_action(app, "schedule", t.service, caller(rpc, NULL),
                             detail);
  reply_task(app, rpc, &t);
}

static void reply_execute(af_svc_recovery_t *svc, af_rpc_t *rpc,
                          const af_recovery_task_t *t)
{
  pb_task_t pt;
  pb_result_t pr;
  Antifragility__V1__ExecuteRecoveryResponse resp =
      ANTIFRAGILITY__V1__EXECUTE_RECOVERY_RESPONSE__INIT;
  resp.task = task_to_pb(svc, &pt, t);
  resp.result = task_result_to_pb(svc, &pr, t);
  af_rpc_reply(rpc, &resp.base);
}

static void on_execute(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  af_svc_recovery_t *svc = app->recovery;
  const Antifragility__V1__ExecuteRecoveryRequest *q =
      (const Antifragility__V1__ExecuteRecoveryRequest *)msg;
  if (!check_request(app, rpc, q->service_name, q->constitutional_hash))
    return;
  af_error_t err;
  af_error_clear(&err);
  af_recovery_task_t t;
  af_status_t st = af_recovery_execute(rec_of(app), q->service_name, &t);
  if (st == AF_ENOTFOUND) {
    reply_not_found(rpc, q->service_name);
    return;
  }
  if (st == AF_ESTATE) {
    af_recovery_get(rec_of(app), q->service_name, &t);
    af_rpc_fail(rpc, GRPC_STATUS_FAILED_PRECONDITION,
                "recovery of %s is %s: %s", q->service_name,
                af_recovery_state_name(t.state),
                t.state == AF_RECOVERY_AWAITING_MANUAL
                    ? "approve it with ApproveRecovery"
                    : "only a SCHEDULED task can be executed");
    return;
  }
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  af_log(AF_LOG_INFO, "recovery of %s executed by %s (attempt %u)", t.service,
         caller(rpc, NULL), t.attempts);
  char detail[64];
  snprintf(detail, sizeof detail, "task %" PRIu64 ", attempt %u", t.id,
           t.attempts);
  af_persist_recovery_action(app, "execute", t.service, caller(rpc, NULL),
                             detail);
  if (t.state == AF_RECOVERY_IN_PROGRESS) {
    /* The probe runs on the prober: answer when it has finished. */
    pthread_mutex_lock(&svc->mu);
    attempt_t *a = log_find(svc, t.id, t.attempts);
    bool done = a != NULL && a->finished;
    waiter_t *w = NULL;
    if (!done && !svc->closing) {
      w = af_calloc(1, sizeof *w);
      if (w != NULL) {
        w->rpc = rpc;
        w->task_id = t.id;
        w->attempt = t.attempts;
        snprintf(w->service, sizeof w->service, "%s", t.service);
        w->next = svc->waiters;
        svc->waiters = w;
      }
    }
    pthread_mutex_unlock(&svc->mu);
    if (w != NULL)
      return;
    if (done)
      af_recovery_get(rec_of(app), q->service_name, &t);
  }
  reply_execute(svc, rpc, &t);
}

static void on_cancel(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__CancelRecoveryRequest *q =
      (const Antifragility__V1__CancelRecoveryRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  if (!af_check_name(q->service_name, "service_name", &err) ||
      !check_len(q->reason, REASON_WIRE_MAX, "reason", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_status_t st = af_recovery_cancel(rec_of(app), q->service_name);
  if (st == AF_ENOTFOUND) {
    reply_not_found(rpc, q->service_name);
    return;
  }
  if (st != AF_OK && st != AF_ESTATE) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  af_recovery_task_t t;
  if (af_recovery_get(rec_of(app), q->service_name, &t) != AF_OK) {
    reply_not_found(rpc, q->service_name); /* evicted meanwhile */
    return;
  }
  if (st == AF_OK) {
    const char *reason = af_str_or_empty(q->reason);
    af_log(AF_LOG_INFO, "recovery of %s cancelled by %s%s%s", t.service,
           caller(rpc, NULL), reason[0] != '\0' ? ": " : "", reason);
    af_persist_recovery_action(app, "cancel", t.service, caller(rpc, NULL),
                               reason);
  }
  pb_task_t p;
  Antifragility__V1__CancelRecoveryResponse resp =
      ANTIFRAGILITY__V1__CANCEL_RECOVERY_RESPONSE__INIT;
  resp.cancelled = st == AF_OK;
  resp.task = task_to_pb(app->recovery, &p, &t);
  af_rpc_reply(rpc, &resp.base);
}

static void on_approve(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__ApproveRecoveryRequest *q =
      (const Antifragility__V1__ApproveRecoveryRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  if (!af_check_name(q->service_name, "service_name", &err) ||
      !check_len(q->actor, ACTOR_WIRE_MAX, "actor", &err) ||
      !check_len(q->reason, REASON_WIRE_MAX, "reason", &err) ||
      !check_hash(app, q->constitutional_hash, &err)) {
    af_rpc_fail_status(rpc, err.code != AF_OK ? err.code : AF_EINVAL, &err);
    return;
  }
  af_status_t st = af_recovery_approve(rec_of(app), q->service_name);
  af_recovery_task_t t;
  if (st == AF_ENOTFOUND ||
      af_recovery_get(rec_of(app), q->service_name, &t) != AF_OK) {
    reply_not_found(rpc, q->service_name);
    return;
  }
  if (st == AF_ESTATE) {
    af_rpc_fail(rpc, GRPC_STATUS_FAILED_PRECONDITION,
                "recovery of %s is not awaiting manual approval (state %s)",
                q->service_name, af_recovery_state_name(t.state));
    return;
  }
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  const char *reason = af_str_or_empty(q->reason);
  af_log(AF_LOG_INFO, "recovery of %s approved by %s%s%s", t.service,
         caller(rpc, q->actor), reason[0] != '\0' ? ": " : "", reason);
  af_persist_recovery_action(app, "approve", t.service, caller(rpc, q->actor),
                             reason);
  pb_task_t p;
  Antifragility__V1__ApproveRecoveryResponse resp =
      ANTIFRAGILITY__V1__APPROVE_RECOVERY_RESPONSE__INIT;
  resp.task = task_to_pb(app->recovery, &p, &t);
  af_rpc_reply(rpc, &resp.base);
}

static void on_status(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  af_svc_recovery_t *svc = app->recovery;
  const Antifragility__V1__GetRecoveryStatusRequest *q =
      (const Antifragility__V1__GetRecoveryStatusRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  const char *name = af_str_or_empty(q->service_name);
  if (name[0] != '\0' && !af_check_name(name, "service_name", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_recovery_task_t *tasks = NULL;
  af_recovery_result_t *hist = NULL;
  size_t nt = 0, nh = 0;
  if (af_recovery_list(rec_of(app), &tasks, &nt) != AF_OK ||
      af_recovery_history(rec_of(app), &hist, &nh) != AF_OK) {
    af_free(tasks);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  pb_task_t *pt = af_calloc(TASKS_WIRE_MAX, sizeof *pt);
  pb_result_t *pr = af_calloc(RESULTS_WIRE_MAX, sizeof *pr);
  Antifragility__V1__RecoveryTask *tp[TASKS_WIRE_MAX];
  Antifragility__V1__RecoveryResult *rp[RESULTS_WIRE_MAX];
  if (pt == NULL || pr == NULL) {
    af_free(pt);
    af_free(pr);
    af_free(tasks);
    af_free(hist);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  Antifragility__V1__GetRecoveryStatusResponse resp =
      ANTIFRAGILITY__V1__GET_RECOVERY_STATUS_RESPONSE__INIT;
  size_t k = 0;
  for (size_t i = 0; i < nt; i++) {
    if (name[0] != '\0' && strcmp(tasks[i].service, name) != 0)
      continue;
    if (k == TASKS_WIRE_MAX) {
      resp.truncated = true;
      break;
    }
    tp[k] = task_to_pb(svc, &pt[k], &tasks[i]);
    k++;
  }
  resp.n_tasks = k;
  resp.tasks = k > 0 ? tp : NULL;
  k = 0;
  for (size_t i = nh; i-- > 0 && k < RESULTS_WIRE_MAX;) { /* newest first */
    if (name[0] != '\0' && strcmp(hist[i].service, name) != 0)
      continue;
    uint32_t max_attempts = 0;
    for (size_t j = 0; j < nt; j++)
      if (tasks[j].id == hist[i].task_id)
        max_attempts = tasks[j].policy.max_retry_attempts;
    const af_recovery_result_t *h = &hist[i];
    rp[k] =
        result_to_pb(svc, &pr[k], h->task_id, h->service, h->state, h->attempts,
                     max_attempts, h->message, h->finished_wall_ns);
    k++;
  }
  resp.n_recent_results = k;
  resp.recent_results = k > 0 ? rp : NULL;
  af_recovery_metrics_t m;
  af_recovery_metrics(rec_of(app), &m);
  resp.active_recoveries =
      m.active > UINT32_MAX ? UINT32_MAX : (uint32_t)m.active;
  resp.total_scheduled = m.scheduled;
  resp.total_succeeded = m.succeeded;
  resp.total_failed = m.failed;
  resp.total_cancelled = m.cancelled;
  resp.total_attempts = m.attempts;
  resp.retry_budget_remaining = m.budget_remaining < 0 ? UINT32_MAX
                                : m.budget_remaining > UINT32_MAX
                                    ? UINT32_MAX
                                    : (uint32_t)m.budget_remaining;
  resp.running = !af_server_shutting_down(app->srv);
  resp.constitutional_hash = (char *)af_engine_hash(app->engine);
  af_rpc_reply(rpc, &resp.base);
  af_free(pt);
  af_free(pr);
  af_free(tasks);
  af_free(hist);
}

/* ------------------------------------------------------------------ */
/* Probes                                                             */

/* Engine hook (start_probe): any engine thread, must not block. */
static af_status_t start_probe(const af_recovery_task_t *task, void *ctx)
{
  af_app_t *app = ctx;
  af_svc_recovery_t *svc = app->recovery;
  if (svc == NULL || svc->prober == NULL)
    return AF_ESHUTDOWN;
  af_probe_job_t job;
  job.task_id = task->id;
  job.attempt = task->attempts;
  job.policy = task->policy;
  pthread_mutex_lock(&svc->mu);
  attempt_t *a = &svc->log[svc->log_next];
  svc->log_next = (svc->log_next + 1) % ATTEMPT_LOG_MAX;
  memset(a, 0, sizeof *a);
  a->task_id = task->id;
  a->attempt = task->attempts;
  a->started_wall_ns = af_clock_wall_ns(af_engine_clock(app->engine));
  pthread_mutex_unlock(&svc->mu);
  af_status_t st = af_prober_submit(svc->prober, &job);
  if (st == AF_EFULL)
    af_log(AF_LOG_WARN, "recovery of %s: probe queue full (%d waiting)",
           task->service, PROBE_QUEUE_MAX);
  return st;
}

/* Prober thread: report the outcome, then answer Execute calls. */
static void on_probe_done(const af_probe_job_t *job, bool healthy,
                          const char *msg, uint64_t elapsed_ms, void *ctx)
{
  af_app_t *app = ctx;
  af_svc_recovery_t *svc = app->recovery;
  af_log(AF_LOG_DEBUG, "recovery probe of task %" PRIu64 " attempt %u: %s (%s)",
         job->task_id, job->attempt, healthy ? "healthy" : "unhealthy", msg);
  af_recovery_complete_attempt(rec_of(app), job->task_id, job->attempt, healthy,
                               msg);
  waiter_t *ready = NULL;
  pthread_mutex_lock(&svc->mu);
  attempt_t *a = log_find(svc, job->task_id, job->attempt);
  if (a != NULL) {
    a->finished = true;
    a->healthy = healthy;
    a->elapsed_ms = elapsed_ms;
  }
  for (waiter_t **w = &svc->waiters; *w != NULL;) {
    if ((*w)->task_id == job->task_id && (*w)->attempt == job->attempt) {
      waiter_t *hit = *w;
      *w = hit->next;
      hit->next = ready;
      ready = hit;
    } else {
      w = &(*w)->next;
    }
  }
  pthread_mutex_unlock(&svc->mu);
  while (ready != NULL) {
    waiter_t *w = ready;
    ready = w->next;
    af_recovery_task_t t;
    if (af_recovery_get(rec_of(app), w->service, &t) == AF_OK &&
        t.id == w->task_id)
      reply_execute(svc, w->rpc, &t);
    else
      af_rpc_fail(w->rpc, GRPC_STATUS_ABORTED,
                  "recovery task of %s was replaced during the attempt",
                  w->service);
    af_free(w);
  }
}

/* ------------------------------------------------------------------ */
/* WatchRecovery                                                      */

typedef struct watch_ev {
  af_evq_node_t node; /* first: queued in watch_t.q */
  af_recovery_task_t task;
} watch_ev_t;

typedef struct {
  uint64_t task_id, version;
} seen_t;

typedef struct {
  af_app_t *app;
  char service[AF_NAME_MAX + 1]; /* "" = all */
  pthread_mutex_t mu;
  /* under mu: */
  bool snapshot_started;
  af_recovery_task_t *snap; /* SNAPSHOT messages still to send */
  size_t snap_n, snap_i;
  af_evq_t q; /* changes after the snapshot; dropped = coalesced */
  seen_t seen[WATCH_SEEN_MAX];
  size_t seen_next;
} watch_t;

typedef struct {
  Antifragility__V1__WatchRecoveryResponse msg; /* first: see free */
  Google__Protobuf__Timestamp ts;
  af_recovery_task_t snap; /* what task and result point into */
  pb_task_t task;
  pb_result_t result;
} watch_out_t;

static void watch_out_free(ProtobufCMessage *msg) { af_free(msg); }

/* False if a snapshot of this task at least as new was queued or sent;
 * otherwise remembers this version (w->mu held). */
static bool seen_newer(watch_t *w, const af_recovery_task_t *t)
{
  for (size_t i = 0; i < WATCH_SEEN_MAX; i++) {
    if (w->seen[i].task_id == t->id) {
      if (w->seen[i].version >= t->version)
        return false;
      w->seen[i].version = t->version;
      return true;
    }
  }
  w->seen[w->seen_next].task_id = t->id;
  w->seen[w->seen_next].version = t->version;
  w->seen_next = (w->seen_next + 1) % WATCH_SEEN_MAX;
  return true;
}

static void watch_on_event(af_stream_t *st, void *user,
                           const af_engine_event_t *ev)
{
  watch_t *w = user;
  if (ev->kind != AF_ENGINE_EV_RECOVERY || ev->task == NULL)
    return;
  if (w->service[0] != '\0' && strcmp(w->service, ev->task->service) != 0)
    return;
  watch_ev_t *e = af_malloc(sizeof *e);
  void *dropped = NULL;
  pthread_mutex_lock(&w->mu);
  if (e == NULL) {
    w->q.dropped++;
  } else if (!seen_newer(w, ev->task)) {
    dropped = e; /* older than what the stream has */
    e = NULL;
  } else {
    e->task = *ev->task;
    dropped = af_evq_push(&w->q, &e->node);
  }
  pthread_mutex_unlock(&w->mu);
  af_free(dropped);
  if (e != NULL || dropped == NULL)
    af_stream_notify(st);
}

/* What a task snapshot says happened. */
static Antifragility__V1__RecoveryEventKind
event_kind(const af_recovery_task_t *t)
{
  switch (t->state) {
  case AF_RECOVERY_IN_PROGRESS:
    return KIND(ATTEMPT_STARTED);
  case AF_RECOVERY_SCHEDULED:
  case AF_RECOVERY_AWAITING_MANUAL:
    return t->attempts > 0 ? KIND(ATTEMPT_FINISHED) : KIND(SCHEDULED);
  case AF_RECOVERY_CANCELLED:
    return KIND(CANCELLED);
  case AF_RECOVERY_SUCCEEDED:
  case AF_RECOVERY_FAILED:
    return KIND(FINISHED);
  default:
    return KIND(UNSPECIFIED);
  }
}

static ProtobufCMessage *watch_fill(af_stream_t *st, bool heartbeat, void *user,
                                    af_msg_free_fn *free_out)
{
  watch_t *w = user;
  af_svc_recovery_t *svc = w->app->recovery;
  af_recovery_task_t *snap_all = NULL;
  size_t snap_n = 0;
  pthread_mutex_lock(&w->mu);
  bool need_snapshot = !w->snapshot_started;
  pthread_mutex_unlock(&w->mu);
  if (need_snapshot &&
      af_recovery_list(rec_of(w->app), &snap_all, &snap_n) != AF_OK) {
    snap_all = NULL;
    snap_n = 0;
  }

  watch_out_t *o = af_calloc(1, sizeof *o);
  if (o == NULL) {
    af_free(snap_all);
    af_log(AF_LOG_ERROR, "WatchRecovery: out of memory, message skipped");
    return NULL;
  }
  Antifragility__V1__WatchRecoveryResponse *m = &o->msg;
  antifragility__v1__watch_recovery_response__init(m);
  watch_ev_t *ev = NULL;
  bool snapshot_msg = false, complete = false, more = false;
  af_recovery_task_t task;
  memset(&task, 0, sizeof task); /* ids are never 0 */

  pthread_mutex_lock(&w->mu);
  if (need_snapshot && !w->snapshot_started) {
    /* Keep the tasks this stream watches; events queued so far are older
     * than the list (or equal) and are dropped below by version. */
    w->snapshot_started = true;
    size_t k = 0;
    for (size_t i = 0; i < snap_n; i++)
      if (w->service[0] == '\0' || strcmp(snap_all[i].service, w->service) == 0)
        snap_all[k++] = snap_all[i];
    w->snap = snap_all;
    w->snap_n = k;
    w->snap_i = 0;
    snap_all = NULL;
    for (size_t i = 0; i < k; i++)
      (void)seen_newer(w, &w->snap[i]);
    /* Drop queued events that the snapshot already covers. */
    af_evq_node_t *queued = af_evq_take_all(&w->q);
    while (queued != NULL) {
      watch_ev_t *e = (watch_ev_t *)(void *)queued;
      queued = queued->next;
      bool covered = false;
      for (size_t i = 0; i < k && !covered; i++)
        covered = w->snap[i].id == e->task.id &&
                  w->snap[i].version >= e->task.version;
      if (covered)
        af_free(e);
      else
        (void)af_evq_push(&w->q, &e->node); /* fewer than before: fits */
    }
    w->q.dropped = 0;
    snapshot_msg = true;
    if (w->snap_n == 0) {
      complete = true;
    } else {
      task = w->snap[w->snap_i++];
      complete = w->snap_i == w->snap_n;
    }
  } else if (w->snap != NULL && w->snap_i < w->snap_n) {
    snapshot_msg = true;
    task = w->snap[w->snap_i++];
    complete = w->snap_i == w->snap_n;
  } else if (w->q.head != NULL) {
    ev = (watch_ev_t *)(void *)af_evq_pop(&w->q);
  }
  if (complete) {
    af_free(w->snap);
    w->snap = NULL;
    w->snap_n = w->snap_i = 0;
  }
  more = (w->snap != NULL && w->snap_i < w->snap_n) || w->q.head != NULL;
  uint64_t coalesced = w->q.dropped;
  bool sending = snapshot_msg || ev != NULL || heartbeat;
  if (sending)
    w->q.dropped = 0;
  pthread_mutex_unlock(&w->mu);
  af_free(snap_all);
  if (!sending) {
    af_free(o);
    return NULL;
  }

  m->sequence = af_stream_seq_next(st);
  m->coalesced = coalesced;
  int64_t now = af_clock_wall_ns(af_engine_clock(w->app->engine));
  if (snapshot_msg) {
    m->kind = KIND(SNAPSHOT);
    m->snapshot_complete = complete;
    m->timestamp = af_ts_from_ns(&o->ts, now);
  } else if (ev != NULL) {
    task = ev->task;
    af_free(ev);
    m->kind = event_kind(&task);
    m->timestamp = af_ts_from_ns(&o->ts, task.updated_wall_ns);
  } else {
    m->heartbeat = true;
    m->timestamp = af_ts_from_ns(&o->ts, now);
  }
  if (task.id != 0) { /* 0: a heartbeat, or the snapshot of no tasks */
    /* The message is packed after this returns: point into o. */
    o->snap = task;
    m->task = task_to_pb(svc, &o->task, &o->snap);
    if (m->kind == KIND(ATTEMPT_FINISHED) || m->kind == KIND(FINISHED))
      m->result = task_result_to_pb(svc, &o->result, &o->snap);
  }
  if (more)
    af_stream_notify(st);
  *free_out = watch_out_free;
  return &o->msg.base;
}

static void watch_free(watch_t *w)
{
  af_evq_free_list(af_evq_take_all(&w->q));
  af_free(w->snap);
  pthread_mutex_destroy(&w->mu);
  af_free(w);
}

static void watch_done(af_stream_t *st, void *user)
{
  watch_t *w = user;
  af_hub_remove(w->app->recovery_hub, st);
  watch_free(w);
}

static void on_watch(af_stream_t *st, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__WatchRecoveryRequest *q =
      (const Antifragility__V1__WatchRecoveryRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  const char *name = af_str_or_empty(q->service_name);
  if (name[0] != '\0' && !af_check_name(name, "service_name", &err)) {
    af_stream_fail(st, GRPC_STATUS_INVALID_ARGUMENT, "%s", err.message);
    return;
  }
  watch_t *w = af_calloc(1, sizeof *w);
  if (w == NULL) {
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->app = app;
  snprintf(w->service, sizeof w->service, "%s", name);
  af_evq_init(&w->q, WATCH_QUEUE_MAX);
  pthread_mutex_init(&w->mu, NULL);
  if (af_hub_add(app->recovery_hub, st, w, watch_on_event) != AF_OK) {
    watch_free(w);
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (af_stream_set_producer(st, watch_fill, watch_done, w) != AF_OK) {
    af_hub_remove(app->recovery_hub, st);
    watch_free(w);
  }
}

/* ------------------------------------------------------------------ */
/* Lifecycle                                                          */

void af_svc_recovery_configure(af_app_t *app, af_engine_config_t *ecfg)
{
  ecfg->start_probe = start_probe;
  ecfg->probe_ctx = app;
}

af_status_t af_svc_recovery_register(af_app_t *app)
{
  af_svc_recovery_t *svc = af_calloc(1, sizeof *svc);
  if (svc == NULL)
    return AF_ENOMEM;
  svc->app = app;
  pthread_mutex_init(&svc->mu, NULL);
  app->recovery = svc;
  /* Before the engine starts: its timer thread may start probes at once. */
  af_status_t pst = af_prober_create(&svc->prober, PROBE_THREADS,
                                     PROBE_QUEUE_MAX, on_probe_done, app);
  if (pst != AF_OK)
    return pst;

  static const struct {
    const char *path;
    const ProtobufCMessageDescriptor *desc;
    af_unary_fn fn;
  } unary[] = {
      {SVC "ScheduleRecovery",
       &antifragility__v1__schedule_recovery_request__descriptor, on_schedule},
      {SVC "ExecuteRecovery",
       &antifragility__v1__execute_recovery_request__descriptor, on_execute},
      {SVC "CancelRecovery",
       &antifragility__v1__cancel_recovery_request__descriptor, on_cancel},
      {SVC "ApproveRecovery",
       &antifragility__v1__approve_recovery_request__descriptor, on_approve},
      {SVC "GetRecoveryStatus",
       &antifragility__v1__get_recovery_status_request__descriptor, on_status},
      {SVC "SetRecoveryPolicy",
       &antifragility__v1__set_recovery_policy_request__descriptor,
       on_set_policy},
      {SVC "GetRecoveryPolicy",
       &antifragility__v1__get_recovery_policy_request__descriptor,
       on_get_policy},
  };
  for (size_t i = 0; i < sizeof unary / sizeof *unary; i++) {
    af_status_t st = af_server_add_unary(app->srv, unary[i].path, unary[i].desc,
                                         unary[i].fn, app);
    if (st != AF_OK)
      return st;
  }
  return af_server_add_server_stream(
      app->srv, SVC "WatchRecovery",
      &antifragility__v1__watch_recovery_request__descriptor, on_watch, app);
}

af_status_t af_svc_recovery_start(af_app_t *app)
{
  (void)app; /* the prober runs from registration on */
  return AF_OK;
}

void af_svc_recovery_shutdown(af_app_t *app)
{
  af_svc_recovery_t *svc = app != NULL ? app->recovery : NULL;
  if (svc == NULL)
    return;
  /* Running probes finish and report (answering their waiters); queued
   * ones are dropped. Then whoever still waits gets UNAVAILABLE. */
  af_prober_shutdown(svc->prober);
  pthread_mutex_lock(&svc->mu);
  svc->closing = true;
  waiter_t *w = svc->waiters;
  svc->waiters = NULL;
  pthread_mutex_unlock(&svc->mu);
  while (w != NULL) {
    waiter_t *next = w->next;
    af_rpc_fail(w->rpc, GRPC_STATUS_UNAVAILABLE,
                "server shutting down before the recovery attempt of %s "
                "finished",
                w->service);
    af_free(w);
    w = next;
  }
}

void af_svc_recovery_destroy(af_app_t *app)
{
  af_svc_recovery_t *svc = app != NULL ? app->recovery : NULL;
  if (svc == NULL)
    return;
  af_prober_destroy(svc->prober);
  for (waiter_t *w = svc->waiters; w != NULL;) {
    waiter_t *next = w->next; /* shutdown never ran: their calls are gone */
    af_free(w);
    w = next;
  }
  pthread_mutex_destroy(&svc->mu);
  af_free(svc);
  app->recovery = NULL;
}
