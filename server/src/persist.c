/*
 * persist.c - engine events -> store rows (write-behind), and rows -> engine
 * at start.
 *
 * Tables (schema in store.c): breakers (one row per registered breaker:
 * config + operator-forced state), chaos_audit (one row per chaos event:
 * who, what, when, why), chaos_active (the scenarios active right now),
 * recovery_policies (one row per service with its own policy, written by
 * af_persist_recovery_policy from SetRecoveryPolicy), recovery_history (one
 * row per finished recovery task; all of it is kept on disk, the newest
 * PERSIST_HISTORY_RESTORE come back into the engine's bounded history).
 *
 * Why an engine listener: every change to breakers and chaos, whatever
 * RPC or timer caused it, is published by the engine, so persistence needs
 * no hook in the service files and cannot miss a path. The listener reads
 * the current breaker config (find + info) and queues one job; jobs of one
 * breaker are queued in event order, so the last write wins.
 *
 * Forced states: a TRANSITION into FORCED_OPEN / DISABLED records it
 * unless the reason is "chaos" (the engine's chaos wiring): chaos does not
 * survive a restart, so neither does its force-open. Leaving a forced
 * state clears it.
 *
 * Threading: the listener runs on the thread that caused the event (CQ,
 * timer, probe) and only allocates and queues. Jobs run on the store's
 * writer thread.
 */
#include "persist.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "app_internal.h"
#include "log.h"
#include "store.h"

static const char SQL_BREAKER_UPSERT[] =
    "INSERT INTO breakers (name, fail_max, reset_timeout_ms,"
    " half_open_max_calls, success_threshold, weight, description,"
    " excluded_errors, service, registered_ns)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"
    " ON CONFLICT (name) DO UPDATE SET fail_max = excluded.fail_max,"
    " reset_timeout_ms = excluded.reset_timeout_ms,"
    " half_open_max_calls = excluded.half_open_max_calls,"
    " success_threshold = excluded.success_threshold,"
    " weight = excluded.weight, description = excluded.description,"
    " excluded_errors = excluded.excluded_errors, service = excluded.service";
static const char SQL_BREAKER_DELETE[] = "DELETE FROM breakers WHERE name = ?1";
static const char SQL_BREAKER_FORCED[] =
    "UPDATE breakers SET forced = ?2, forced_reason = ?3 WHERE name = ?1";
static const char SQL_BREAKER_ALL[] =
    "SELECT name, fail_max, reset_timeout_ms, half_open_max_calls,"
    " success_threshold, weight, description, excluded_errors, service,"
    " forced, forced_reason FROM breakers ORDER BY name";
static const char SQL_AUDIT[] =
    "INSERT INTO chaos_audit (wall_ns, event, scenario, kind, target, actor,"
    " reason, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";
static const char SQL_ACTIVE_PUT[] =
    "INSERT OR REPLACE INTO chaos_active (scenario, kind, target, started_ns,"
    " expires_ns, actor) VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
static const char SQL_ACTIVE_DEL[] =
    "DELETE FROM chaos_active WHERE scenario = ?1";
static const char SQL_ACTIVE_END[] =
    "INSERT INTO chaos_audit (wall_ns, event, scenario, kind, target, actor,"
    " reason, detail) SELECT ?1, 'ended_by_restart', scenario, kind, target,"
    " 'system', 'server restarted: active scenarios do not survive a"
    " restart', 'activated by ' || actor FROM chaos_active"
    " ORDER BY started_ns";
static const char SQL_ACTIVE_CLEAR[] = "DELETE FROM chaos_active";
/* The emergency-stop latch: the newest stop or reset in the audit log. */
static const char SQL_LATCH[] =
    "SELECT event, actor, reason FROM chaos_audit"
    " WHERE event IN ('emergency_stop', 'reset') ORDER BY seq DESC LIMIT 1";
static const char SQL_POLICY_PUT[] =
    "INSERT OR REPLACE INTO recovery_policies (service, strategy,"
    " max_retry_attempts, backoff_multiplier, initial_delay_ms, max_delay_ms,"
    " jitter, probe, probe_target, probe_service, probe_timeout_ms,"
    " updated_ns) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)";
static const char SQL_POLICY_ALL[] =
    "SELECT service, strategy, max_retry_attempts, backoff_multiplier,"
    " initial_delay_ms, max_delay_ms, jitter, probe, probe_target,"
    " probe_service, probe_timeout_ms FROM recovery_policies ORDER BY service";
static const char SQL_HISTORY_PUT[] =
    "INSERT OR IGNORE INTO recovery_history (task_id, service, state,"
    " attempts, duration_ms, finished_ns, message)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";
static const char SQL_RECOVERY_AUDIT[] =
    "INSERT INTO recovery_audit (wall_ns, action, service, actor, detail)"
    " VALUES (?1, ?2, ?3, ?4, ?5)";
static const char SQL_HISTORY_LAST[] =
    "SELECT task_id, service, state, attempts, duration_ms, finished_ns,"
    " message FROM (SELECT * FROM recovery_history ORDER BY id DESC LIMIT ?1)"
    " ORDER BY id";

/* Finished recoveries put back into the engine's history at start (its
 * default history_size). */
#define PERSIST_HISTORY_RESTORE 100

/* ---- jobs ------------------------------------------------------------- */

typedef enum {
  J_BREAKER_UPSERT,
  J_BREAKER_DELETE,
  J_BREAKER_FORCED,
  J_CHAOS,
  J_POLICY,
  J_HISTORY,
  J_RECOVERY_AUDIT,
} job_kind_t;

typedef struct {
  job_kind_t kind;
  af_persist_done_fn then; /* optional: told once the write committed */
  void *then_ctx;
  char name[AF_CHAOS_SCENARIO_NAME_MAX]; /* breaker, scenario or service */
  int64_t wall_ns;
  union {
    af_breaker_config_t cfg; /* J_BREAKER_UPSERT */
    struct {                 /* J_BREAKER_FORCED */
      int forced;
      char reason[AF_BREAKER_REASON_MAX + 1];
    };
    struct { /* J_CHAOS */
      af_chaos_event_kind_t chaos_kind;
      bool has_scenario;
      af_chaos_scenario_t sc;
      char actor[AF_NAME_MAX + 1];
      char chaos_reason[AF_CHAOS_REASON_MAX + 1];
    };
    af_recovery_policy_t policy; /* J_POLICY */
    af_recovery_result_t result; /* J_HISTORY */
    struct {                     /* J_RECOVERY_AUDIT */
      char action[16];
      char audit_actor[AF_NAME_MAX + 1];
      char detail[256];
    };
  };
} job_t;

static af_status_t step_done(af_store_conn_t *c, sqlite3_stmt *st,
                             af_error_t *err, const char *what)
{
  int rc = sqlite3_step(st);
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    return af_store_fail(c, err, what);
  }
  return AF_OK;
}

static af_status_t breaker_upsert(af_store_conn_t *c, const job_t *j,
                                  af_error_t *err)
{
  char excluded[AF_BREAKER_EXCLUDED_MAX * (AF_NAME_MAX + 1) + 1];
  size_t len = 0;
  excluded[0] = '\0';
  for (size_t i = 0; i < j->cfg.excluded_count; i++) {
    int n = snprintf(excluded + len, sizeof excluded - len, "%s%s",
                     i > 0 ? "\n" : "", j->cfg.excluded_errors[i]);
    if (n > 0) {
      len += (size_t)n;
    }
  }
  sqlite3_stmt *st = af_store_stmt(c, SQL_BREAKER_UPSERT, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_text(st, 1, j->name, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, j->cfg.fail_max);
  sqlite3_bind_int64(st, 3, (sqlite3_int64)j->cfg.reset_timeout_ms);
  sqlite3_bind_int64(st, 4, j->cfg.half_open_max_calls);
  sqlite3_bind_int64(st, 5, j->cfg.success_threshold);
  sqlite3_bind_double(st, 6, j->cfg.weight);
  sqlite3_bind_text(st, 7, j->cfg.description, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 8, excluded, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 9, j->cfg.service, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 10, j->wall_ns);
  return step_done(c, st, err, "cannot write breaker");
}

static const char *chaos_event_name(af_chaos_event_kind_t k)
{
  switch (k) {
  case AF_CHAOS_EV_ACTIVATED:
    return "activated";
  case AF_CHAOS_EV_DEACTIVATED:
    return "deactivated";
  case AF_CHAOS_EV_EXPIRED:
    return "expired";
  case AF_CHAOS_EV_REPLACED:
    return "replaced";
  case AF_CHAOS_EV_EMERGENCY_STOP:
    return "emergency_stop";
  case AF_CHAOS_EV_RESET:
    return "reset";
  }
  return "unknown";
}

static void chaos_detail(const af_chaos_scenario_t *s, char *out, size_t n)
{
  size_t len = 0;
  int w = snprintf(out, n,
                   "delay_ms=%" PRIu64 " error_rate=%g resource=%s"
                   " resource_level=%g duration_ms=%" PRIu64 " blast_radius=",
                   s->delay_ms, s->error_rate,
                   s->resource != 0 ? af_resource_type_name(s->resource) : "",
                   s->resource_level, s->duration_ms);
  if (w < 0 || (size_t)w >= n) {
    return;
  }
  len = (size_t)w;
  for (size_t i = 0; i < s->blast_count && len < n; i++) {
    w = snprintf(out + len, n - len, "%s%s", i > 0 ? "," : "",
                 s->blast_radius[i]);
    if (w < 0) {
      return;
    }
    len += (size_t)w;
  }
}

static af_status_t chaos_write(af_store_conn_t *c, const job_t *j,
                               af_error_t *err)
{
  const af_chaos_scenario_t *s = j->has_scenario ? &j->sc : NULL;
  char detail[AF_CHAOS_BLAST_MAX * (AF_NAME_MAX + 2) + 256];
  detail[0] = '\0';
  if (s != NULL) {
    chaos_detail(s, detail, sizeof detail);
  }
  sqlite3_stmt *st = af_store_stmt(c, SQL_AUDIT, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_int64(st, 1, j->wall_ns);
  sqlite3_bind_text(st, 2, chaos_event_name(j->chaos_kind), -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, s != NULL ? s->name : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, s != NULL ? af_chaos_kind_name(s->kind) : "", -1,
                    SQLITE_STATIC);
  sqlite3_bind_text(st, 5, s != NULL ? s->target : "", -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 6, j->actor, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 7, j->chaos_reason, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 8, detail, -1, SQLITE_STATIC);
  af_status_t rc = step_done(c, st, err, "cannot write chaos audit");
  if (rc != AF_OK || s == NULL) {
    return rc;
  }
  if (j->chaos_kind == AF_CHAOS_EV_ACTIVATED) {
    st = af_store_stmt(c, SQL_ACTIVE_PUT, err);
    if (st == NULL) {
      return AF_EIO;
    }
    sqlite3_bind_text(st, 1, s->name, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, af_chaos_kind_name(s->kind), -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, s->target, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, s->started_wall_ns);
    sqlite3_bind_int64(st, 5, s->expires_wall_ns);
    sqlite3_bind_text(st, 6, j->actor, -1, SQLITE_STATIC);
    return step_done(c, st, err, "cannot write active chaos scenario");
  }
  if (j->chaos_kind == AF_CHAOS_EV_DEACTIVATED ||
      j->chaos_kind == AF_CHAOS_EV_EXPIRED ||
      j->chaos_kind == AF_CHAOS_EV_REPLACED) {
    st = af_store_stmt(c, SQL_ACTIVE_DEL, err);
    if (st == NULL) {
      return AF_EIO;
    }
    sqlite3_bind_text(st, 1, s->name, -1, SQLITE_STATIC);
    return step_done(c, st, err, "cannot write active chaos scenario");
  }
  return AF_OK;
}

static af_status_t policy_write(af_store_conn_t *c, const job_t *j,
                                af_error_t *err)
{
  const af_recovery_policy_t *p = &j->policy;
  sqlite3_stmt *st = af_store_stmt(c, SQL_POLICY_PUT, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_text(st, 1, j->name, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 2, (int)p->strategy);
  sqlite3_bind_int64(st, 3, p->max_retry_attempts);
  sqlite3_bind_double(st, 4, p->backoff_multiplier);
  sqlite3_bind_int64(st, 5, p->initial_delay_ms);
  sqlite3_bind_int64(st, 6, p->max_delay_ms);
  sqlite3_bind_int(st, 7, (int)p->jitter);
  sqlite3_bind_int(st, 8, (int)p->probe);
  sqlite3_bind_text(st, 9, p->probe_target, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 10, p->probe_service, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 11, (sqlite3_int64)p->probe_timeout_ms);
  sqlite3_bind_int64(st, 12, j->wall_ns);
  return step_done(c, st, err, "cannot write recovery policy");
}

static af_status_t history_write(af_store_conn_t *c, const job_t *j,
                                 af_error_t *err)
{
  const af_recovery_result_t *r = &j->result;
  sqlite3_stmt *st = af_store_stmt(c, SQL_HISTORY_PUT, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_int64(st, 1, (sqlite3_int64)r->task_id);
  sqlite3_bind_text(st, 2, r->service, -1, SQLITE_STATIC);
  sqlite3_bind_int(st, 3, (int)r->state);
  sqlite3_bind_int64(st, 4, r->attempts);
  sqlite3_bind_int64(st, 5, (sqlite3_int64)r->duration_ms);
  sqlite3_bind_int64(st, 6, r->finished_wall_ns);
  sqlite3_bind_text(st, 7, r->message, -1, SQLITE_STATIC);
  return step_done(c, st, err, "cannot write recovery history");
}

static af_status_t recovery_audit_write(af_store_conn_t *c, const job_t *j,
                                        af_error_t *err)
{
  sqlite3_stmt *st = af_store_stmt(c, SQL_RECOVERY_AUDIT, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_int64(st, 1, j->wall_ns);
  sqlite3_bind_text(st, 2, j->action, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 3, j->name, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 4, j->audit_actor, -1, SQLITE_STATIC);
  sqlite3_bind_text(st, 5, j->detail, -1, SQLITE_STATIC);
  return step_done(c, st, err, "cannot write recovery audit");
}

static af_status_t job_run(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  const job_t *j = ctx;
  sqlite3_stmt *st;
  switch (j->kind) {
  case J_BREAKER_UPSERT:
    return breaker_upsert(c, j, err);
  case J_BREAKER_DELETE:
    st = af_store_stmt(c, SQL_BREAKER_DELETE, err);
    if (st == NULL) {
      return AF_EIO;
    }
    sqlite3_bind_text(st, 1, j->name, -1, SQLITE_STATIC);
    return step_done(c, st, err, "cannot delete breaker");
  case J_BREAKER_FORCED:
    st = af_store_stmt(c, SQL_BREAKER_FORCED, err);
    if (st == NULL) {
      return AF_EIO;
    }
    sqlite3_bind_text(st, 1, j->name, -1, SQLITE_STATIC);
    sqlite3_bind_int(st, 2, j->forced);
    sqlite3_bind_text(st, 3, j->reason, -1, SQLITE_STATIC);
    return step_done(c, st, err, "cannot write breaker state");
  case J_CHAOS:
    return chaos_write(c, j, err);
  case J_POLICY:
    return policy_write(c, j, err);
  case J_HISTORY:
    return history_write(c, j, err);
  case J_RECOVERY_AUDIT:
    return recovery_audit_write(c, j, err);
  }
  return AF_EINTERNAL;
}

static const char *job_what(const job_t *j)
{
  switch (j->kind) {
  case J_CHAOS:
    return "chaos audit";
  case J_POLICY:
    return "recovery policy";
  case J_HISTORY:
    return "recovery history";
  case J_RECOVERY_AUDIT:
    return "recovery audit";
  default:
    return "breaker";
  }
}

static void job_done(af_status_t st, const af_error_t *err, void *ctx)
{
  job_t *j = ctx;
  const char *why =
      err != NULL && err->message[0] != '\0' ? err->message : af_status_str(st);
  if (st != AF_OK) {
    af_log(AF_LOG_ERROR, "store: lost a %s write (%s): %s", job_what(j),
           j->name, why);
  }
  if (j->then != NULL) {
    j->then(st, st == AF_OK ? "" : why, j->then_ctx);
  }
  af_free(j);
}

/* True if queued (job_done will run); false: j was freed, `then` not
 * called. */
static bool queue_job(af_app_t *app, job_t *j)
{
  af_status_t st = af_store_write(app->store, job_run, job_done, j);
  if (st == AF_OK) {
    return true;
  }
  af_log(st == AF_ESHUTDOWN ? AF_LOG_DEBUG : AF_LOG_ERROR,
         "store: %s write for %s not queued: %s", job_what(j), j->name,
         af_status_str(st));
  af_free(j);
  return false;
}

/* ---- the listener ------------------------------------------------------ */

static bool is_forced(af_breaker_state_t s)
{
  return s == AF_BREAKER_FORCED_OPEN || s == AF_BREAKER_DISABLED;
}

static void on_breaker(af_app_t *app, const af_breaker_event_t *ev)
{
  job_t *j = NULL;
  switch (ev->kind) {
  case AF_BREAKER_EVENT_REGISTERED:
  case AF_BREAKER_EVENT_CONFIG_CHANGED: {
    af_breaker_t *b = NULL;
    if (af_breaker_registry_find(af_engine_breakers(app->engine), ev->name,
                                 &b) != AF_OK) {
      return; /* unregistered meanwhile: its delete follows */
    }
    af_breaker_info_t *info = af_malloc(sizeof(*info));
    j = af_calloc(1, sizeof(*j));
    if (info == NULL || j == NULL) {
      af_free(info);
      af_free(j);
      af_breaker_release(b);
      af_log(AF_LOG_ERROR, "store: out of memory, breaker %s not saved",
             ev->name);
      return;
    }
    af_breaker_info(b, info);
    af_breaker_release(b);
    j->kind = J_BREAKER_UPSERT;
    j->cfg = info->config;
    j->wall_ns = info->registered_wall_ns;
    af_free(info);
    break;
  }
  case AF_BREAKER_EVENT_UNREGISTERED:
    j = af_calloc(1, sizeof(*j));
    if (j != NULL) {
      j->kind = J_BREAKER_DELETE;
    }
    break;
  case AF_BREAKER_EVENT_TRANSITION: {
    bool chaos = ev->reason != NULL && strcmp(ev->reason, "chaos") == 0;
    if (!is_forced(ev->to) && !is_forced(ev->from)) {
      return;
    }
    j = af_calloc(1, sizeof(*j));
    if (j != NULL) {
      j->kind = J_BREAKER_FORCED;
      j->forced = is_forced(ev->to) && !chaos ? (int)ev->to : 0;
      snprintf(j->reason, sizeof j->reason, "%s",
               j->forced != 0 && ev->reason != NULL ? ev->reason : "");
    }
    break;
  }
  default:
    return;
  }
  if (j == NULL) {
    af_log(AF_LOG_ERROR, "store: out of memory, breaker %s not saved",
           ev->name);
    return;
  }
  snprintf(j->name, sizeof j->name, "%s", ev->name);
  queue_job(app, j);
}

static void on_chaos(af_app_t *app, const af_chaos_event_t *ev)
{
  job_t *j = af_calloc(1, sizeof(*j));
  if (j == NULL) {
    af_log(AF_LOG_ERROR, "store: out of memory, chaos audit record lost");
    return;
  }
  j->kind = J_CHAOS;
  j->chaos_kind = ev->kind;
  j->wall_ns = ev->wall_ns;
  if (ev->scenario != NULL) {
    j->has_scenario = true;
    j->sc = *ev->scenario;
    snprintf(j->name, sizeof j->name, "%s", ev->scenario->name);
  }
  snprintf(j->actor, sizeof j->actor, "%s", ev->actor != NULL ? ev->actor : "");
  snprintf(j->chaos_reason, sizeof j->chaos_reason, "%s",
           ev->reason != NULL ? ev->reason : "");
  queue_job(app, j);
}

/* A task turned final: its result is in the engine's history now (the
 * core records it before publishing); save that entry. A final task may be
 * published more than once: the row's UNIQUE (task_id, finished_ns) keeps
 * one. */
static void on_recovery(af_app_t *app, const af_recovery_task_t *t)
{
  if (!af_recovery_state_is_final(t->state)) {
    return;
  }
  af_recovery_result_t *hist = NULL;
  size_t n = 0;
  if (af_recovery_history(af_engine_recovery(app->engine), &hist, &n) !=
      AF_OK) {
    af_log(AF_LOG_ERROR, "store: out of memory, recovery of %s not saved",
           t->service);
    return;
  }
  for (size_t i = n; i-- > 0;) {
    if (hist[i].task_id != t->id) {
      continue;
    }
    job_t *j = af_calloc(1, sizeof(*j));
    if (j == NULL) {
      af_log(AF_LOG_ERROR, "store: out of memory, recovery of %s not saved",
             t->service);
      break;
    }
    j->kind = J_HISTORY;
    j->result = hist[i];
    snprintf(j->name, sizeof j->name, "%s", t->service);
    queue_job(app, j);
    break;
  }
  af_free(hist);
}

static void on_event(const af_engine_event_t *ev, void *ctx)
{
  af_app_t *app = ctx;
  if (ev->kind == AF_ENGINE_EV_BREAKER) {
    on_breaker(app, ev->breaker);
  } else if (ev->kind == AF_ENGINE_EV_CHAOS) {
    on_chaos(app, ev->chaos);
  } else if (ev->kind == AF_ENGINE_EV_RECOVERY) {
    on_recovery(app, ev->task);
  }
}

af_persist_result_t af_persist_recovery_policy(af_app_t *app,
                                               const char *service,
                                               const af_recovery_policy_t *p,
                                               af_persist_done_fn then,
                                               void *ctx)
{
  if (app->store == NULL) {
    return AF_PERSIST_NO_STORE;
  }
  if (service == NULL || p == NULL) {
    return AF_PERSIST_REFUSED;
  }
  job_t *j = af_calloc(1, sizeof(*j));
  if (j == NULL) {
    af_log(AF_LOG_ERROR, "store: out of memory, policy of %s not saved",
           service);
    return AF_PERSIST_REFUSED;
  }
  j->kind = J_POLICY;
  j->policy = *p;
  j->then = then;
  j->then_ctx = ctx;
  j->wall_ns = af_clock_wall_ns(af_engine_clock(app->engine));
  snprintf(j->name, sizeof j->name, "%s", service);
  return queue_job(app, j) ? AF_PERSIST_QUEUED : AF_PERSIST_REFUSED;
}

void af_persist_recovery_action(af_app_t *app, const char *action,
                                const char *service, const char *actor,
                                const char *detail)
{
  if (app->store == NULL || action == NULL || service == NULL) {
    return;
  }
  job_t *j = af_calloc(1, sizeof(*j));
  if (j == NULL) {
    af_log(AF_LOG_ERROR, "store: out of memory, recovery %s of %s not audited",
           action, service);
    return;
  }
  j->kind = J_RECOVERY_AUDIT;
  j->wall_ns = af_clock_wall_ns(af_engine_clock(app->engine));
  snprintf(j->name, sizeof j->name, "%s", service);
  snprintf(j->action, sizeof j->action, "%s", action);
  snprintf(j->audit_actor, sizeof j->audit_actor, "%s",
           actor != NULL ? actor : "");
  snprintf(j->detail, sizeof j->detail, "%s", detail != NULL ? detail : "");
  queue_job(app, j);
}

af_status_t af_persist_attach(af_app_t *app)
{
  if (app->store == NULL || app->persist_sub_id > 0) {
    return AF_OK;
  }
  int id = af_engine_subscribe(app->engine, on_event, app);
  if (id <= 0) {
    return AF_ELIMIT;
  }
  app->persist_sub_id = id;
  return AF_OK;
}

void af_persist_detach(af_app_t *app)
{
  if (app->persist_sub_id > 0) {
    af_engine_unsubscribe(app->engine, app->persist_sub_id);
    app->persist_sub_id = 0;
  }
}

/* ---- restore ----------------------------------------------------------- */

typedef struct {
  char name[AF_NAME_MAX + 1];
  af_breaker_config_t cfg;
  int forced;
  char reason[AF_BREAKER_REASON_MAX + 1];
} saved_breaker_t;

typedef struct {
  saved_breaker_t *items;
  size_t n;
  size_t cap;
} saved_list_t;

static void copy_col(char *dst, size_t n, sqlite3_stmt *st, int col)
{
  const unsigned char *t = sqlite3_column_text(st, col);
  snprintf(dst, n, "%s", t != NULL ? (const char *)t : "");
}

static af_status_t read_breakers(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  saved_list_t *l = ctx;
  sqlite3_stmt *st = af_store_stmt(c, SQL_BREAKER_ALL, err);
  if (st == NULL) {
    return AF_EIO;
  }
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    if (l->n == l->cap) {
      size_t cap = l->cap == 0 ? 16 : l->cap * 2;
      saved_breaker_t *items = af_realloc(l->items, cap * sizeof(*items));
      if (items == NULL) {
        sqlite3_reset(st);
        return af_error_set(err, AF_ENOMEM, "out of memory");
      }
      l->items = items;
      l->cap = cap;
    }
    saved_breaker_t *b = &l->items[l->n++];
    memset(b, 0, sizeof(*b));
    af_breaker_config_init(&b->cfg);
    copy_col(b->name, sizeof b->name, st, 0);
    b->cfg.fail_max = (uint32_t)sqlite3_column_int64(st, 1);
    b->cfg.reset_timeout_ms = (uint64_t)sqlite3_column_int64(st, 2);
    b->cfg.half_open_max_calls = (uint32_t)sqlite3_column_int64(st, 3);
    b->cfg.success_threshold = (uint32_t)sqlite3_column_int64(st, 4);
    b->cfg.weight = sqlite3_column_double(st, 5);
    copy_col(b->cfg.description, sizeof b->cfg.description, st, 6);
    char excluded[AF_BREAKER_EXCLUDED_MAX * (AF_NAME_MAX + 1) + 1];
    copy_col(excluded, sizeof excluded, st, 7);
    char *save = NULL;
    for (char *tok = strtok_r(excluded, "\n", &save);
         tok != NULL && b->cfg.excluded_count < AF_BREAKER_EXCLUDED_MAX;
         tok = strtok_r(NULL, "\n", &save)) {
      snprintf(b->cfg.excluded_errors[b->cfg.excluded_count++], AF_NAME_MAX + 1,
               "%s", tok);
    }
    copy_col(b->cfg.service, sizeof b->cfg.service, st, 8);
    b->forced = sqlite3_column_int(st, 9);
    copy_col(b->reason, sizeof b->reason, st, 10);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    return af_store_fail(c, err, "cannot read breakers");
  }
  return AF_OK;
}

typedef struct {
  char service[AF_NAME_MAX + 1];
  af_recovery_policy_t p;
} saved_policy_t;

typedef struct {
  saved_policy_t *policies;
  size_t n_policies, cap_policies;
  af_recovery_result_t *results;
  size_t n_results, cap_results;
} saved_recovery_t;

/* Room for one more of size bytes in *arr (n used, *cap allocated);
 * NULL on ENOMEM (*arr kept). */
static void *grow(void *arr, size_t n, size_t *cap, size_t size)
{
  if (n < *cap) {
    return arr;
  }
  size_t c = *cap == 0 ? 16 : *cap * 2;
  void *p = af_realloc(arr, c * size);
  if (p != NULL) {
    *cap = c;
  }
  return p;
}

static af_status_t read_recovery(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  saved_recovery_t *r = ctx;
  sqlite3_stmt *st = af_store_stmt(c, SQL_POLICY_ALL, err);
  if (st == NULL) {
    return AF_EIO;
  }
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    saved_policy_t *arr =
        grow(r->policies, r->n_policies, &r->cap_policies, sizeof(*arr));
    if (arr == NULL) {
      sqlite3_reset(st);
      return af_error_set(err, AF_ENOMEM, "out of memory");
    }
    r->policies = arr;
    saved_policy_t *sp = &arr[r->n_policies++];
    memset(sp, 0, sizeof(*sp));
    af_recovery_policy_init(&sp->p);
    copy_col(sp->service, sizeof sp->service, st, 0);
    sp->p.strategy = (af_recovery_strategy_t)sqlite3_column_int(st, 1);
    sp->p.max_retry_attempts = (uint32_t)sqlite3_column_int64(st, 2);
    sp->p.backoff_multiplier = sqlite3_column_double(st, 3);
    sp->p.initial_delay_ms = sqlite3_column_int64(st, 4);
    sp->p.max_delay_ms = sqlite3_column_int64(st, 5);
    sp->p.jitter = (af_recovery_jitter_t)sqlite3_column_int(st, 6);
    sp->p.probe = (af_probe_kind_t)sqlite3_column_int(st, 7);
    copy_col(sp->p.probe_target, sizeof sp->p.probe_target, st, 8);
    copy_col(sp->p.probe_service, sizeof sp->p.probe_service, st, 9);
    sp->p.probe_timeout_ms = (uint64_t)sqlite3_column_int64(st, 10);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    return af_store_fail(c, err, "cannot read recovery policies");
  }
  st = af_store_stmt(c, SQL_HISTORY_LAST, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_int(st, 1, PERSIST_HISTORY_RESTORE);
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    af_recovery_result_t *arr =
        grow(r->results, r->n_results, &r->cap_results, sizeof(*arr));
    if (arr == NULL) {
      sqlite3_reset(st);
      return af_error_set(err, AF_ENOMEM, "out of memory");
    }
    r->results = arr;
    af_recovery_result_t *res = &arr[r->n_results++];
    memset(res, 0, sizeof(*res));
    res->task_id = (uint64_t)sqlite3_column_int64(st, 0);
    copy_col(res->service, sizeof res->service, st, 1);
    res->state = (af_recovery_state_t)sqlite3_column_int(st, 2);
    res->attempts = (uint32_t)sqlite3_column_int64(st, 3);
    res->duration_ms = (uint64_t)sqlite3_column_int64(st, 4);
    res->finished_wall_ns = sqlite3_column_int64(st, 5);
    copy_col(res->message, sizeof res->message, st, 6);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    return af_store_fail(c, err, "cannot read recovery history");
  }
  return AF_OK;
}

/* Policies and history back into the engine. */
static af_status_t restore_recovery(af_app_t *app, size_t *n_policies,
                                    size_t *n_results, af_error_t *err)
{
  saved_recovery_t r;
  memset(&r, 0, sizeof(r));
  af_status_t st = af_store_read_wait(app->store, read_recovery, &r, err);
  af_recovery_t *rec = af_engine_recovery(app->engine);
  *n_policies = 0;
  for (size_t i = 0; st == AF_OK && i < r.n_policies; i++) {
    af_error_t e;
    af_error_clear(&e);
    if (af_recovery_set_policy(rec, r.policies[i].service, &r.policies[i].p,
                               &e) != AF_OK) {
      af_log(AF_LOG_WARN, "store: recovery policy of %s not restored: %s",
             r.policies[i].service, e.message);
      continue;
    }
    (*n_policies)++;
  }
  *n_results = 0;
  if (st == AF_OK &&
      af_recovery_history_restore(rec, r.results, r.n_results) == AF_OK) {
    *n_results = r.n_results;
  }
  af_free(r.policies);
  af_free(r.results);
  return st;
}

typedef struct {
  int64_t now_ns;
  int ended;
} end_chaos_t;

static af_status_t end_active_chaos(af_store_conn_t *c, void *ctx,
                                    af_error_t *err)
{
  end_chaos_t *e = ctx;
  sqlite3_stmt *st = af_store_stmt(c, SQL_ACTIVE_END, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_int64(st, 1, e->now_ns);
  af_status_t rc = step_done(c, st, err, "cannot end chaos scenarios");
  if (rc != AF_OK) {
    return rc;
  }
  e->ended = sqlite3_changes(af_store_db(c));
  st = af_store_stmt(c, SQL_ACTIVE_CLEAR, err);
  if (st == NULL) {
    return AF_EIO;
  }
  return step_done(c, st, err, "cannot end chaos scenarios");
}

typedef struct {
  bool stopped;
  char actor[AF_NAME_MAX + 1];
  char reason[AF_CHAOS_REASON_MAX + 1];
} latch_t;

static af_status_t read_latch(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  latch_t *l = ctx;
  sqlite3_stmt *st = af_store_stmt(c, SQL_LATCH, err);
  if (st == NULL) {
    return AF_EIO;
  }
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    char event[32];
    copy_col(event, sizeof event, st, 0);
    l->stopped = strcmp(event, "emergency_stop") == 0;
    copy_col(l->actor, sizeof l->actor, st, 1);
    copy_col(l->reason, sizeof l->reason, st, 2);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return af_store_fail(c, err, "cannot read the emergency-stop latch");
  }
  return AF_OK;
}

af_status_t af_persist_restore(af_app_t *app, af_error_t *err)
{
  if (app->store == NULL) {
    return AF_OK;
  }
  saved_list_t l;
  memset(&l, 0, sizeof(l));
  af_status_t st = af_store_read_wait(app->store, read_breakers, &l, err);
  size_t restored = 0;
  size_t forced = 0;
  for (size_t i = 0; st == AF_OK && i < l.n; i++) {
    saved_breaker_t *b = &l.items[i];
    af_breaker_t *h = NULL;
    af_error_t e;
    af_error_clear(&e);
    if (af_breaker_registry_get_or_create(af_engine_breakers(app->engine),
                                          b->name, &b->cfg, &h, NULL,
                                          &e) != AF_OK) {
      af_log(AF_LOG_WARN, "store: breaker %s not restored: %s", b->name,
             e.message);
      continue;
    }
    restored++;
    if (b->forced == AF_BREAKER_FORCED_OPEN ||
        b->forced == AF_BREAKER_DISABLED) {
      if (af_breaker_force(h, (af_breaker_state_t)b->forced,
                           b->reason[0] != '\0' ? b->reason : NULL) == AF_OK) {
        forced++;
      }
    }
    af_breaker_release(h);
  }
  af_free(l.items);
  if (st != AF_OK) {
    return st;
  }
  size_t n_policies = 0;
  size_t n_results = 0;
  st = restore_recovery(app, &n_policies, &n_results, err);
  if (st != AF_OK) {
    return st;
  }
  end_chaos_t e = {af_clock_wall_ns(af_engine_clock(app->engine)), 0};
  st = af_store_write_wait(app->store, end_active_chaos, &e, err);
  if (st != AF_OK) {
    return st;
  }
  /* Fail safe: an emergency stop that was never reset stays latched across
   * a restart (before the listener is attached: the audit log already has
   * the stop, and gets no second row). */
  latch_t latch;
  memset(&latch, 0, sizeof latch);
  st = af_store_read_wait(app->store, read_latch, &latch, err);
  if (st != AF_OK) {
    return st;
  }
  if (latch.stopped) {
    char why[AF_CHAOS_REASON_MAX + 1];
    snprintf(why, sizeof why, "latched before the restart by %.64s: %.120s",
             latch.actor, latch.reason);
    af_chaos_emergency_stop(af_engine_chaos(app->engine), "restart", why);
    af_log(AF_LOG_WARN,
           "store: chaos emergency stop is still latched (by %s before the "
           "restart); ResetChaos releases it",
           latch.actor);
  }
  af_log(AF_LOG_INFO,
         "store %s: restored %zu breaker(s) (%zu forced), %zu recovery "
         "policy(ies), %zu recovery result(s); %d chaos scenario(s) ended by "
         "the restart",
         af_store_path(app->store), restored, forced, n_policies, n_results,
         e.ended);
  return AF_OK;
}
