/*
 * app.c - the engine behind afd, and the wiring from engine events to the
 * server's streams, logs and grpc.health.v1.
 *
 * Owns: the engine, one hub per watch kind, the per-service state (through
 * the svc_*.c files). Borrowed: the server.
 *
 * Event path: a breaker transition on any thread -> engine subscriber
 * (on_engine_event, no engine lock held) -> log line + the matching hub ->
 * each watching stream records it and af_stream_notify -> the server's
 * dispatch thread sends. grpc.health.v1 watchers of breaker names are
 * re-evaluated on every transition. Nothing here waits on a client.
 *
 * Lifecycle (driven by afd.c): create (before the server starts: engine,
 * hubs, every service's methods) -> start (engine timers, metering flusher,
 * probe runner) -> shutdown (after streams ended: probes stop, metering
 * flushes and answers what it holds, engine stops) -> destroy.
 *
 * Threading: create/start/shutdown/destroy on the owner thread; the
 * subscriber and the health resolver run on any thread.
 */
#include "app_internal.h"

#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "grpc_health.h"
#include "log.h"
#include "persist.h"
#include "store.h"

static void log_breaker_event(const af_breaker_event_t *ev)
{
  switch (ev->kind) {
  case AF_BREAKER_EVENT_TRANSITION:
    af_log(ev->to == AF_BREAKER_CLOSED ? AF_LOG_INFO : AF_LOG_WARN,
           "breaker %s: %s -> %s (%s)", ev->name,
           af_breaker_state_name(ev->from), af_breaker_state_name(ev->to),
           ev->reason != NULL ? ev->reason : "");
    break;
  case AF_BREAKER_EVENT_REGISTERED:
    af_log(AF_LOG_INFO, "breaker %s registered", ev->name);
    break;
  case AF_BREAKER_EVENT_UNREGISTERED:
    af_log(AF_LOG_INFO, "breaker %s unregistered", ev->name);
    break;
  default:
    break;
  }
}

static void log_recovery_event(const af_recovery_task_t *t)
{
  switch (t->state) {
  case AF_RECOVERY_SUCCEEDED:
    af_log(AF_LOG_INFO, "recovery of %s succeeded after %u attempt(s)",
           t->service, t->attempts);
    break;
  case AF_RECOVERY_FAILED:
    af_log(AF_LOG_WARN, "recovery of %s failed after %u attempt(s): %s",
           t->service, t->attempts, t->last_message);
    break;
  case AF_RECOVERY_AWAITING_MANUAL:
    af_log(AF_LOG_INFO, "recovery of %s awaits manual approval", t->service);
    break;
  default:
    af_log(AF_LOG_DEBUG, "recovery of %s: %s (attempt %u)", t->service,
           af_recovery_state_name(t->state), t->attempts);
    break;
  }
}

static void on_engine_event(const af_engine_event_t *ev, void *ctx)
{
  af_app_t *app = ctx;
  switch (ev->kind) {
  case AF_ENGINE_EV_BREAKER:
    log_breaker_event(ev->breaker);
    af_hub_publish(app->breaker_hub, ev);
    if (ev->breaker->kind != AF_BREAKER_EVENT_CONFIG_CHANGED) {
      af_grpc_health_notify(app->srv);
    }
    break;
  case AF_ENGINE_EV_HEALTH:
    if (ev->health->status_changed) {
      af_log(AF_LOG_INFO, "system health %s -> %s (score %.3f)",
             af_health_status_name(ev->health->old_status),
             af_health_status_name(ev->health->new_status), ev->health->score);
    }
    af_hub_publish(app->health_hub, ev);
    break;
  case AF_ENGINE_EV_RECOVERY:
    log_recovery_event(ev->task);
    af_hub_publish(app->recovery_hub, ev);
    break;
  case AF_ENGINE_EV_CHAOS:
    af_hub_publish(app->chaos_hub, ev);
    break;
  }
}

/* grpc.health.v1 for names that are not our services: a breaker is SERVING
 * while it admits calls (CLOSED, DISABLED), NOT_SERVING while OPEN,
 * HALF_OPEN or FORCED_OPEN; anything else is unknown. */
static af_grpc_health_status_t resolve_health(const char *name, void *ctx)
{
  af_app_t *app = ctx;
  af_breaker_t *b = NULL;
  if (!af_name_valid(name) ||
      af_breaker_registry_find(af_engine_breakers(app->engine), name, &b) !=
          AF_OK) {
    return GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
  }
  af_breaker_state_t st = af_breaker_state(b);
  af_breaker_release(b);
  return st == AF_BREAKER_CLOSED || st == AF_BREAKER_DISABLED
             ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
             : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static void engine_config(af_app_t *app, af_engine_config_t *ecfg)
{
  const af_config_t *cfg = &app->cfg;
  af_engine_config_init(ecfg);
  size_t hl = strlen(cfg->hash);
  if (hl > 0 && hl <= AF_HASH_MAX) {
    memcpy(ecfg->hash, cfg->hash, hl + 1);
  }
  ecfg->health.check_interval_ms = cfg->health_interval_ms;
  ecfg->health.history_size = cfg->history_size;
  ecfg->meter.capacity = cfg->queue_size;
  ecfg->meter.flush_interval_ms = cfg->flush_interval_ms;
  af_svc_recovery_configure(app, ecfg);
  af_svc_metering_configure(app, ecfg);
  af_svc_chaos_configure(app, ecfg);
}

static void destroy_services(af_app_t *app)
{
  af_svc_metering_destroy(app);
  af_svc_recovery_destroy(app);
  af_svc_chaos_destroy(app);
  af_svc_health_destroy(app);
  af_svc_breaker_destroy(app);
}

af_status_t af_app_create(af_app_t **out, const af_config_t *cfg,
                          af_server_t *srv)
{
  if (out == NULL || cfg == NULL || srv == NULL) {
    return AF_EINVAL;
  }
  af_app_t *app = af_calloc(1, sizeof(*app));
  if (app == NULL) {
    return AF_ENOMEM;
  }
  app->cfg = *cfg;
  app->srv = srv;
  if (!cfg->memory) {
    /* A store that cannot be opened is reported loudly, and afd serves
     * everything else (state then lives in memory; metering refuses). */
    af_error_t serr;
    af_error_clear(&serr);
    if (af_store_open(&app->store, cfg->data_dir, &serr) != AF_OK) {
      snprintf(app->store_error, sizeof app->store_error, "%s", serr.message);
      af_log(AF_LOG_ERROR,
             "%s; serving without persistence: nothing is saved, metering "
             "refuses events (UNAVAILABLE)",
             serr.message);
    }
  }
  af_status_t st = af_hub_create(&app->breaker_hub);
  if (st == AF_OK) {
    st = af_hub_create(&app->health_hub);
  }
  if (st == AF_OK) {
    st = af_hub_create(&app->recovery_hub);
  }
  if (st == AF_OK) {
    st = af_hub_create(&app->chaos_hub);
  }
  if (st != AF_OK) {
    goto fail;
  }

  af_engine_config_t ecfg;
  engine_config(app, &ecfg);
  af_error_t err;
  af_error_clear(&err);
  st = af_engine_create(&app->engine, &ecfg, &err);
  if (st != AF_OK) {
    af_log(AF_LOG_ERROR, "cannot create the engine: %s", err.message);
    goto fail;
  }
  int id = af_engine_subscribe(app->engine, on_engine_event, app);
  if (id <= 0) {
    st = AF_EINTERNAL;
    goto fail;
  }
  app->engine_sub_id = id;
  if (app->store != NULL) {
    af_error_t rerr;
    af_error_clear(&rerr);
    if (af_persist_restore(app, &rerr) != AF_OK) {
      af_log(AF_LOG_ERROR, "store %s: cannot restore state: %s",
             af_store_path(app->store), rerr.message);
    }
    st = af_persist_attach(app);
    if (st != AF_OK) {
      goto fail;
    }
  }

  st = af_grpc_health_register(srv, resolve_health, app);
  if (st == AF_OK) {
    st = af_svc_breaker_register(app);
  }
  if (st == AF_OK) {
    st = af_svc_health_register(app);
  }
  if (st == AF_OK) {
    st = af_svc_recovery_register(app);
  }
  if (st == AF_OK) {
    st = af_svc_chaos_register(app);
  }
  if (st == AF_OK) {
    st = af_svc_metering_register(app);
  }
  if (st != AF_OK) {
    af_log(AF_LOG_ERROR, "cannot register the services: %s", af_status_str(st));
    goto fail;
  }
  *out = app;
  return AF_OK;

fail:
  af_app_destroy(app);
  return st;
}

af_status_t af_app_start(af_app_t *app)
{
  if (app == NULL) {
    return AF_EINVAL;
  }
  af_status_t st = af_engine_start(app->engine);
  if (st == AF_OK) {
    st = af_svc_recovery_start(app);
  }
  if (st == AF_OK) {
    st = af_svc_metering_start(app);
  }
  return st;
}

void af_app_shutdown(af_app_t *app)
{
  if (app == NULL || app->engine == NULL) {
    return;
  }
  af_svc_recovery_shutdown(app);
  af_svc_metering_shutdown(app);
  size_t lost = af_engine_shutdown(app->engine, app->cfg.drain_ms);
  if (lost > 0) {
    af_log(AF_LOG_ERROR, "%zu metering event(s) could not be flushed", lost);
  }
  /* Everything queued for the store so far is committed here; changes
   * made by calls still running until the server stops are not saved
   * (the persist listener stays subscribed: unsubscribing races with
   * engine events from CQ threads; its writes are refused from now on). */
  af_store_shutdown(app->store);
}

void af_app_destroy(af_app_t *app)
{
  if (app == NULL) {
    return;
  }
  if (app->engine != NULL) {
    af_engine_shutdown(app->engine, 0);
    if (app->engine_sub_id > 0) {
      af_engine_unsubscribe(app->engine, app->engine_sub_id);
    }
    af_persist_detach(app);
  }
  destroy_services(app);
  af_engine_destroy(app->engine);
  af_hub_destroy(app->chaos_hub);
  af_hub_destroy(app->recovery_hub);
  af_hub_destroy(app->health_hub);
  af_hub_destroy(app->breaker_hub);
  af_store_destroy(app->store);
  af_free(app);
}

af_engine_t *af_app_engine(af_app_t *app)
{
  return app != NULL ? app->engine : NULL;
}
