/*
 * grpc_health.c - grpc.health.v1.Health (Check, Watch) on the framework.
 *
 * Owns: the health registry hung on the server (resolver, list of Watch
 * streams). Each watcher remembers the last status it sent; a fill sends
 * only when the evaluated status differs, so af_grpc_health_notify can
 * re-evaluate everything cheaply and each stream hears only its changes.
 *
 * Threading: the watcher list is under h->mu; no lock is held while the
 * resolver runs or streams are notified. Fills and done run on server
 * threads; af_grpc_health_notify may run on any thread.
 */
#include "grpc_health.h"

#include <pthread.h>
#include <string.h>

#include "af/alloc.h"
#include "log.h"

#define ST(x) GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

/* Our public services: SERVING even before the app registers them. */
static const char *const k_services[] = {
    "antifragility.v1.BreakerService",  "antifragility.v1.HealthService",
    "antifragility.v1.RecoveryService", "antifragility.v1.ChaosService",
    "antifragility.v1.MeteringService",
};

typedef struct watch {
  struct health *h;
  af_stream_t *st;
  char *service;
  bool sent_any;
  af_grpc_health_status_t last;
  Grpc__Health__V1__HealthCheckResponse resp;
  struct watch *next;
} watch_t;

typedef struct health {
  af_server_t *srv;
  pthread_mutex_t mu;
  af_grpc_health_resolver_fn resolver;
  void *ctx;
  watch_t *watchers;
} health_t;

static af_grpc_health_status_t evaluate(health_t *h, const char *name)
{
  pthread_mutex_lock(&h->mu);
  af_grpc_health_resolver_fn resolver = h->resolver;
  void *ctx = h->ctx;
  pthread_mutex_unlock(&h->mu);
  bool known = name[0] == '\0' || af_server_has_service(h->srv, name);
  for (size_t i = 0; !known && i < sizeof k_services / sizeof *k_services; i++)
    known = strcmp(name, k_services[i]) == 0;
  af_grpc_health_status_t s;
  if (known)
    s = ST(SERVING);
  else if (resolver)
    s = resolver(name, ctx);
  else
    s = ST(SERVICE_UNKNOWN);
  if (s != ST(SERVING) && s != ST(NOT_SERVING))
    s = ST(SERVICE_UNKNOWN);
  if (s == ST(SERVING) && af_server_shutting_down(h->srv))
    s = ST(NOT_SERVING);
  return s;
}

static void on_check(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  health_t *h = ctx;
  const Grpc__Health__V1__HealthCheckRequest *req =
      (const Grpc__Health__V1__HealthCheckRequest *)msg;
  const char *name = req->service ? req->service : "";
  af_grpc_health_status_t s = evaluate(h, name);
  if (s == ST(SERVICE_UNKNOWN)) {
    af_rpc_fail(rpc, GRPC_STATUS_NOT_FOUND, "unknown service %s", name);
    return;
  }
  Grpc__Health__V1__HealthCheckResponse resp =
      GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
  resp.status = s;
  af_rpc_reply(rpc, &resp.base);
}

static ProtobufCMessage *watch_fill(af_stream_t *st, bool heartbeat, void *user,
                                    af_msg_free_fn *free_out)
{
  (void)st;
  (void)heartbeat;
  (void)free_out;
  watch_t *w = user;
  af_grpc_health_status_t s = evaluate(w->h, w->service);
  if (w->sent_any && s == w->last)
    return NULL;
  w->sent_any = true;
  w->last = s;
  grpc__health__v1__health_check_response__init(&w->resp);
  w->resp.status = s;
  return &w->resp.base; /* owned by w; packed before the next fill */
}

static void watch_done(af_stream_t *st, void *user)
{
  watch_t *w = user;
  health_t *h = w->h;
  pthread_mutex_lock(&h->mu);
  for (watch_t **p = &h->watchers; *p; p = &(*p)->next)
    if (*p == w) {
      *p = w->next;
      break;
    }
  pthread_mutex_unlock(&h->mu);
  af_stream_release(st);
  af_free(w->service);
  af_free(w);
}

static void on_watch(af_stream_t *st, const ProtobufCMessage *msg, void *ctx)
{
  health_t *h = ctx;
  const Grpc__Health__V1__HealthCheckRequest *req =
      (const Grpc__Health__V1__HealthCheckRequest *)msg;
  watch_t *w = af_calloc(1, sizeof *w);
  char *name = af_strdup(req->service ? req->service : "");
  if (!w || !name) {
    af_free(w);
    af_free(name);
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->h = h;
  w->st = st;
  w->service = name;
  af_stream_retain(st);
  pthread_mutex_lock(&h->mu);
  w->next = h->watchers;
  h->watchers = w;
  pthread_mutex_unlock(&h->mu);
  af_stream_set_producer(st, watch_fill, watch_done, w);
}

static void health_free(void *p)
{
  health_t *h = p;
  pthread_mutex_destroy(&h->mu);
  af_free(h);
}

static void health_on_shutdown(void *p)
{
  health_t *h = p;
  af_grpc_health_notify(h->srv);
}

af_status_t af_grpc_health_register(af_server_t *srv,
                                    af_grpc_health_resolver_fn resolver,
                                    void *ctx)
{
  if (!srv)
    return AF_EINVAL;
  health_t *h = af__server_health(srv);
  if (h) {
    pthread_mutex_lock(&h->mu);
    h->resolver = resolver;
    h->ctx = ctx;
    pthread_mutex_unlock(&h->mu);
    return AF_OK;
  }
  h = af_calloc(1, sizeof *h);
  if (!h)
    return AF_ENOMEM;
  h->srv = srv;
  h->resolver = resolver;
  h->ctx = ctx;
  pthread_mutex_init(&h->mu, NULL);
  const ProtobufCMessageDescriptor *d =
      &grpc__health__v1__health_check_request__descriptor;
  af_status_t s =
      af_server_add_unary(srv, "/grpc.health.v1.Health/Check", d, on_check, h);
  if (s == AF_OK)
    s = af_server_add_server_stream(srv, "/grpc.health.v1.Health/Watch", d,
                                    on_watch, h);
  if (s == AF_OK)
    s = af_server_on_begin_shutdown(srv, health_on_shutdown, h);
  if (s == AF_OK)
    s = af_server_on_destroy(srv, health_free, h);
  if (s != AF_OK) {
    /* methods registered so far stay (they cannot be removed) but are
     * never served without a start; the caller destroys the server */
    health_free(h);
    return s;
  }
  af__server_set_health(srv, h);
  return AF_OK;
}

void af_grpc_health_notify(af_server_t *srv)
{
  health_t *h = af__server_health(srv);
  if (!h)
    return;
  pthread_mutex_lock(&h->mu);
  size_t n = 0;
  for (watch_t *w = h->watchers; w; w = w->next)
    n++;
  af_stream_t *small[64];
  af_stream_t **all = n <= 64 ? small : af_calloc(n, sizeof *all);
  size_t k = 0;
  if (all)
    for (watch_t *w = h->watchers; w; w = w->next) {
      af_stream_retain(w->st);
      all[k++] = w->st;
    }
  pthread_mutex_unlock(&h->mu);
  if (!all)
    af_log(AF_LOG_ERROR, "health notify: out of memory");
  for (size_t i = 0; i < k; i++) {
    af_stream_notify(all[i]);
    af_stream_release(all[i]);
  }
  if (all != small)
    af_free(all);
}
