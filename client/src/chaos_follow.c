/*
 * chaos_follow.c - chaos applied in the client: the follower thread keeps a
 * local af_chaos engine equal to the server's active scenarios.
 *
 * The follower holds WatchScenarios(include_active) open: the first message
 * and every event carry the complete active list, so each message simply
 * replaces the mirror (af__chaos_apply). Scenarios keep their server
 * expiry: the local engine is given the time left (expires_at - now on the
 * client's clock), so a scenario stops applying when it expires even if
 * the EXPIRED event is late or the server is unreachable. When the stream
 * breaks the mirror is kept (scenarios still expire by themselves) and the
 * follower reconnects after a jittered backoff; the new stream's first
 * message resynchronises it. A break also asks the reporter to re-report
 * every guard (the server may have restarted).
 *
 * CIRCUIT_BREAKER scenarios are not mirrored: the server holds that breaker
 * forced open itself; the client's guards keep their own state.
 *
 * Hot path: each guard carries chaos_hit, set here when a mirrored
 * scenario's blast radius holds the guard's target. af_guard_allow loads
 * that flag (one atomic load) and asks the engine only when it is set, so
 * scenarios on other targets cost guards nothing. A flag may stay set
 * after its scenario expired locally until the next message; the engine
 * then answers "nothing", which is correct, just not free.
 *
 * Threading: af__chaos_apply runs on the follower thread (or a test's);
 * chaos_mu serialises rebuilds and guards chaos_targets (lock order:
 * chaos_mu, then guards_mu). The hot path reads the engine (thread-safe)
 * and chaos_hit, and never takes a lock.
 */
#include "client_internal.h"

#include <stdio.h>
#include <string.h>

#include <grpc/status.h>

#include "af/alloc.h"

af_status_t af__chaos_init(af_client_t *c, af_error_t *err)
{
  af_chaos_config_t cc;
  af_chaos_config_init(&cc);
  cc.clock = c->clock;
  /* The server already validated and capped everything; mirror as is. */
  cc.max_duration_ms = UINT64_C(7) * 24 * 3600 * 1000;
  cc.max_delay_ms = UINT64_C(3600) * 1000;
  return af_chaos_create(&c->chaos, &cc, err);
}

void af__chaos_destroy(af_client_t *c)
{
  af_chaos_destroy(c->chaos);
  c->chaos = NULL;
  af_free(c->chaos_targets);
  c->chaos_targets = NULL;
  c->chaos_target_count = 0;
}

static bool hit_locked(af_client_t *c, const char *target)
{
  for (size_t i = 0; i < c->chaos_target_count; i++) {
    if (strcmp(c->chaos_targets[i], target) == 0) {
      return true;
    }
  }
  return false;
}

void af__chaos_mark_guard(af_client_t *c, af_guard_t *g)
{
  pthread_mutex_lock(&c->chaos_mu);
  atomic_store_explicit(&g->chaos_hit, hit_locked(c, g->target),
                        memory_order_release);
  pthread_mutex_unlock(&c->chaos_mu);
}

static uint64_t duration_ms(const google_protobuf_Duration *d)
{
  if (d->seconds < 0) {
    return 0;
  }
  return (uint64_t)d->seconds * 1000 + (uint64_t)(d->nanos / 1000000);
}

static int64_t ts_ns(const google_protobuf_Timestamp *t)
{
  return t->seconds * (int64_t)AF_NS_PER_SEC + t->nanos;
}

void af__chaos_apply(af_client_t *c, const antifragility_v1_ChaosScenario *sc,
                     size_t n)
{
  pthread_mutex_lock(&c->chaos_mu);
  /* Clear the mirror: stop (deactivates everything), then release. */
  af_chaos_emergency_stop(c->chaos, "afclient", "sync");
  af_chaos_reset_stop(c->chaos, "afclient");
  int64_t now = af_clock_wall_ns(c->clock);
  size_t applied = 0;
  /* Targets of the new mirror; on allocation failure every guard checks
   * the engine (correct, only slower). */
  size_t cap = n * AF_CHAOS_BLAST_MAX + 1, nt = 0;
  char(*targets)[AF_NAME_MAX + 1] = af_calloc(cap, sizeof *targets);
  for (size_t i = 0; i < n; i++) {
    const antifragility_v1_ChaosScenario *s = &sc[i];
    if (!s->active ||
        s->kind == antifragility_v1_ChaosKind_CHAOS_KIND_UNSPECIFIED ||
        s->kind == antifragility_v1_ChaosKind_CHAOS_KIND_CIRCUIT_BREAKER ||
        s->kind > antifragility_v1_ChaosKind_CHAOS_KIND_TIMEOUT) {
      continue;
    }
    af_chaos_request_t req;
    af_chaos_request_init(&req, (af_chaos_kind_t)s->kind, s->target);
    req.delay_ms = duration_ms(&s->delay);
    req.error_rate = s->error_rate;
    req.resource = (af_resource_type_t)s->resource_type;
    req.resource_level = s->resource_level;
    if (s->has_expires_at) {
      int64_t left = ts_ns(&s->expires_at) - now;
      if (left <= 0) {
        continue;
      }
      req.duration_ms = (uint64_t)left / AF_NS_PER_MS;
      if (req.duration_ms == 0) {
        req.duration_ms = 1;
      }
    } else {
      req.duration_ms = duration_ms(&s->duration);
    }
    for (pb_size_t k = 0; k < s->blast_radius_count && k < AF_CHAOS_BLAST_MAX;
         k++) {
      snprintf(req.blast_radius[k], sizeof req.blast_radius[k], "%s",
               s->blast_radius[k]);
      req.blast_count++;
    }
    snprintf(req.name, sizeof req.name, "%s", s->name);
    snprintf(req.error_type, sizeof req.error_type, "%s", s->error_type);
    snprintf(req.actor, sizeof req.actor, "%s", "afclient");
    if (af_chaos_activate(c->chaos, &req, NULL, NULL) == AF_OK) {
      applied++;
      size_t nb = req.blast_count > 0 ? req.blast_count : 1;
      for (size_t k = 0; targets != NULL && k < nb && nt < cap; k++) {
        memcpy(targets[nt++],
               req.blast_count > 0 ? req.blast_radius[k] : req.target,
               AF_NAME_MAX + 1);
      }
    }
  }
  atomic_store_explicit(&c->chaos_present, applied > 0, memory_order_release);
  af_free(c->chaos_targets);
  c->chaos_targets = targets;
  c->chaos_target_count = nt;
  pthread_mutex_lock(&c->guards_mu);
  for (size_t i = 0; i < c->guard_count; i++) {
    af_guard_t *g = c->guards[i];
    bool hit = targets == NULL ? applied > 0 : hit_locked(c, g->target);
    atomic_store_explicit(&g->chaos_hit, hit, memory_order_release);
  }
  pthread_mutex_unlock(&c->guards_mu);
  pthread_mutex_unlock(&c->chaos_mu);
}

void *af__chaos_main(void *arg)
{
  af_client_t *c = arg;
  antifragility_v1_WatchScenariosResponse *msg = af_malloc(sizeof *msg);
  if (msg == NULL) {
    return NULL;
  }
  uint64_t backoff = c->cfg.backoff_initial_ms;
  bool first_stream = true;
  while (!af__waiter_stopped(&c->chaos_w)) {
    antifragility_v1_WatchScenariosRequest req =
        antifragility_v1_WatchScenariosRequest_init_zero;
    req.include_active = true;
    af_client_stream_t *s =
        af__stream_open(&c->transport, AF_RPC_WATCH_SCENARIOS, &req, 0);
    if (s == NULL) {
      break;
    }
    pthread_mutex_lock(&c->chaos_stream_mu);
    c->chaos_stream = s;
    pthread_mutex_unlock(&c->chaos_stream_mu);
    if (!first_stream) {
      atomic_fetch_add(&c->chaos_reconnects, 1);
    }
    first_stream = false;
    while (!af__waiter_stopped(&c->chaos_w)) {
      int r = af_client_stream_next(s, msg, 200);
      if (r < 0) {
        break;
      }
      if (r == 0) {
        continue;
      }
      atomic_store(&c->chaos_connected, true);
      backoff = c->cfg.backoff_initial_ms;
      if (!msg->heartbeat) {
        af__chaos_apply(c, msg->active, msg->active_count);
        atomic_fetch_add(&c->chaos_events, 1);
      }
    }
    bool was_connected = atomic_exchange(&c->chaos_connected, false);
    pthread_mutex_lock(&c->chaos_stream_mu);
    c->chaos_stream = NULL;
    pthread_mutex_unlock(&c->chaos_stream_mu);
    af_client_stream_close(s);
    if (was_connected) {
      /* The server may come back empty: re-register every guard. */
      atomic_store(&c->resync_all, true);
    }
    uint64_t wait = af__backoff_next(&backoff, c->cfg.backoff_max_ms, &c->rng);
    if (!af__waiter_wait(&c->chaos_w, wait)) {
      break;
    }
  }
  af_free(msg);
  return NULL;
}
