/*
 * app.h - the contract between the afd framework and the application
 * (engine + service handlers). Written by the lead; this first version is
 * the minimal contract the framework builds against.
 *
 * Thread-safety: create/start/shutdown/destroy run on the owner thread
 * (the one running af_afd_start / af_afd_stop).
 */
#ifndef AF_APP_H
#define AF_APP_H

#include "af/engine.h"
#include "af/status.h"
#include "config.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_app af_app_t;

/* Creates the engine and registers all service methods and the health
 * resolver on srv (before start). cfg and srv retained until destroy. */
af_status_t af_app_create(af_app_t **out, const af_config_t *cfg,
                          af_server_t *srv);
/* After the server started. */
af_status_t af_app_start(af_app_t *app);
/* After streams ended: flush metering, stop timers, answer pending RPCs. */
void af_app_shutdown(af_app_t *app);
void af_app_destroy(af_app_t *app);

/* The engine, owned by the app, valid until af_app_destroy. NULL for NULL.
 * Any thread. */
af_engine_t *af_app_engine(af_app_t *app);

#ifdef __cplusplus
}
#endif
#endif /* AF_APP_H */
