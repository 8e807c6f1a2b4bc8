/*
 * app.c - FIRST MINIMAL VERSION written by the framework helper so afd
 * builds and runs; the lead engineer replaces it with the real engine and
 * service handlers. It owns nothing but its config pointer and registers
 * no methods: afd then serves grpc.health.v1 and reflection only.
 *
 * Threading: owner thread only.
 */
#include "app.h"

#include "af/alloc.h"

struct af_app {
  const af_config_t *cfg;
  af_server_t *srv;
};

af_status_t af_app_create(af_app_t **out, const af_config_t *cfg,
                          af_server_t *srv)
{
  if (!out || !cfg || !srv)
    return AF_EINVAL;
  af_app_t *app = af_calloc(1, sizeof *app);
  if (!app)
    return AF_ENOMEM;
  app->cfg = cfg;
  app->srv = srv;
  *out = app;
  return AF_OK;
}

af_status_t af_app_start(af_app_t *app) { return app ? AF_OK : AF_EINVAL; }

void af_app_shutdown(af_app_t *app) { (void)app; }

void af_app_destroy(af_app_t *app) { af_free(app); }
