/*
 * app_internal.h - what the service files (svc_*.c) share with app.c.
 *
 * Thread-safety: struct af_app is built by af_app_create on the owner
 * thread and read-only afterwards (the engine, hubs and runners it points
 * to are thread-safe themselves). Handlers run on server threads.
 *
 * Each svc_<name>.c registers its RPCs with af_svc_<name>_register, called
 * by af_app_create before the server starts, and keeps whatever per-service
 * state it needs in a struct it hangs on the app (see the fields below) and
 * frees in af_svc_<name>_destroy (called by af_app_destroy after the server
 * stopped, so no handler runs any more).
 */
#ifndef AF_APP_INTERNAL_H
#define AF_APP_INTERNAL_H

#include "af/engine.h"
#include "app.h"
#include "config.h"
#include "hub.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_svc_breaker af_svc_breaker_t;
typedef struct af_svc_health af_svc_health_t;
typedef struct af_svc_recovery af_svc_recovery_t;
typedef struct af_svc_chaos af_svc_chaos_t;
typedef struct af_svc_metering af_svc_metering_t;

struct af_app {
  af_config_t cfg;     /* copy of the server's configuration */
  af_server_t *srv;    /* borrowed: the server the RPCs are registered on */
  af_engine_t *engine; /* owned */
  /* One hub per watch stream kind: app.c publishes each engine event of the
   * matching kind to the hub, which hands it to every subscribed stream. */
  af_hub_t *breaker_hub;
  af_hub_t *health_hub;
  af_hub_t *recovery_hub;
  af_hub_t *chaos_hub;
  /* Per-service state, owned by the service file. */
  af_svc_breaker_t *breaker;
  af_svc_health_t *health;
  af_svc_recovery_t *recovery;
  af_svc_chaos_t *chaos;
  af_svc_metering_t *metering;
  int engine_sub_id;
  /* Durable state (store.h): NULL with --memory, or when it could not be
   * opened; then store_error says why ("" otherwise) and metering refuses
   * with it instead of losing events in memory. */
  struct af_store *store;
  char store_error[AF_ERROR_MESSAGE_MAX];
  int persist_sub_id; /* persist.c's engine listener */
};

/* Registration: adds every method of the service to app->srv and sets up
 * the service's state. AF_OK or an error (the app fails to start). */
af_status_t af_svc_breaker_register(af_app_t *app);
af_status_t af_svc_health_register(af_app_t *app);
af_status_t af_svc_recovery_register(af_app_t *app);
af_status_t af_svc_chaos_register(af_app_t *app);
af_status_t af_svc_metering_register(af_app_t *app);

/* Optional lifecycle hooks per service. start: after the server and engine
 * started. shutdown: after streams ended, before the engine stops (metering
 * flushes and answers pending RPCs here; recovery stops its probe threads).
 * destroy: frees the service state (NULL-safe). */
af_status_t af_svc_metering_start(af_app_t *app);
void af_svc_metering_shutdown(af_app_t *app);
void af_svc_metering_destroy(af_app_t *app);
af_status_t af_svc_recovery_start(af_app_t *app);
void af_svc_recovery_shutdown(af_app_t *app);
void af_svc_recovery_destroy(af_app_t *app);
void af_svc_breaker_destroy(af_app_t *app);
void af_svc_health_destroy(af_app_t *app);
void af_svc_chaos_destroy(af_app_t *app);

/* Engine settings a service needs before the engine exists (the probe
 * runner of svc_recovery, the meter sink of svc_metering, the chaos audit
 * hook of svc_chaos). Called by af_app_create with the config it is about
 * to pass to af_engine_create; each may set its callbacks and ctx. */
void af_svc_recovery_configure(af_app_t *app, af_engine_config_t *ecfg);
void af_svc_metering_configure(af_app_t *app, af_engine_config_t *ecfg);
void af_svc_chaos_configure(af_app_t *app, af_engine_config_t *ecfg);

#ifdef __cplusplus
}
#endif
#endif /* AF_APP_INTERNAL_H */
