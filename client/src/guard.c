/*
 * guard.c - guarded calls: a local af_breaker per guard (the core's code,
 * so the server's semantics) and the reporter thread that tells the server
 * about them.
 *
 * Hot path (af_guard_allow / success / failure): af_breaker_allow /
 * record_* (lock-free in CLOSED) plus one atomic load of the guard's
 * chaos_hit flag; nothing else, no network, no allocation.
 *
 * Reporter: a round compares each guard's state and counters with what the
 * server was last told. The new outcomes of every guard go on one
 * ReportOutcomes stream (failures and successes as two messages each sent
 * N times, failures last unless the guard is CLOSED, so the server's own
 * state machine ends where ours is; at most OUTCOMES_PER_ROUND of each per
 * guard and round); then each changed guard's state goes in a ReportState,
 * which corrects the server's state if the aggregated outcomes led it
 * elsewhere. Both auto-register the breaker with the guard's settings. A
 * transition wakes the reporter at once (registry listener); otherwise it runs
 * every report_interval_ms. When a call fails the round stops, the next one
 * runs after a jittered backoff, and every guard is re-reported once the server
 * answers again (it may be a fresh server that lost its breakers). Every 30th
 * round re-reports everything anyway, for a restart that no call noticed.
 *
 * Guards live in a fixed array under guards_mu and are never freed before
 * af_client_destroy, so the reporter can walk a snapshot of pointers with
 * no lock held during calls. reported_* fields belong to the reporter
 * thread (and to the owner thread after it was joined).
 */
#include "client_internal.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <grpc/status.h>

#include "af/alloc.h"

#define FULL_RESYNC_ROUNDS 30
/* Most outcomes of one kind sent per guard per round (the rest follow in
 * later rounds). */
#define OUTCOMES_PER_ROUND 10000

static void on_breaker_event(const af_breaker_event_t *ev, void *ctx)
{
  af_client_t *c = ctx;
  if (ev->kind == AF_BREAKER_EVENT_TRANSITION) {
    af__waiter_wake(&c->reporter_w);
  }
}

af_status_t af__guards_init(af_client_t *c, af_error_t *err)
{
  af_breaker_registry_config_t rc;
  af_breaker_registry_config_init(&rc);
  rc.clock = c->clock;
  rc.max_breakers = AF__GUARDS_MAX;
  af_status_t s = af_breaker_registry_create(&c->registry, &rc);
  if (s != AF_OK) {
    return af_error_set(err, s, "cannot create the guard registry");
  }
  c->listener_id =
      af_breaker_registry_add_listener(c->registry, on_breaker_event, c);
  return AF_OK;
}

void af__guards_destroy(af_client_t *c)
{
  for (size_t i = 0; i < c->guard_count; i++) {
    af_breaker_release(c->guards[i]->breaker);
    af_free(c->guards[i]);
  }
  c->guard_count = 0;
  af_breaker_registry_destroy(c->registry);
  c->registry = NULL;
}

void af_guard_config_init(af_guard_config_t *cfg)
{
  memset(cfg, 0, sizeof *cfg);
}

af_status_t af_guard_get(af_client_t *c, const char *name,
                         const af_guard_config_t *cfg, af_guard_t **out,
                         af_error_t *err)
{
  if (c == NULL || out == NULL) {
    return af_error_set(err, AF_EINVAL, "client and out are required");
  }
  if (!af_name_valid(name)) {
    return af_error_set(err, AF_EINVAL,
                        "guard name must be 1-128 bytes of printable UTF-8");
  }
  if (cfg != NULL && cfg->target != NULL && cfg->target[0] != '\0' &&
      !af_name_valid(cfg->target)) {
    return af_error_set(err, AF_EINVAL,
                        "target must be 1-128 bytes of printable UTF-8");
  }
  pthread_mutex_lock(&c->guards_mu);
  for (size_t i = 0; i < c->guard_count; i++) {
    if (strcmp(c->guards[i]->name, name) == 0) {
      *out = c->guards[i];
      pthread_mutex_unlock(&c->guards_mu);
      return AF_OK;
    }
  }
  af_status_t s = AF_OK;
  if (c->guard_count == AF__GUARDS_MAX) {
    s = af_error_set(err, AF_ELIMIT, "too many guards (limit %d)",
                     AF__GUARDS_MAX);
    goto out;
  }
  af_guard_t *g = af_calloc(1, sizeof *g);
  if (g == NULL) {
    s = af_error_set(err, AF_ENOMEM, "out of memory");
    goto out;
  }
  af_breaker_config_init(&g->config);
  if (cfg != NULL) {
    if (cfg->fail_max) {
      g->config.fail_max = cfg->fail_max;
    }
    if (cfg->reset_timeout_ms) {
      g->config.reset_timeout_ms = cfg->reset_timeout_ms;
    }
    if (cfg->half_open_max_calls) {
      g->config.half_open_max_calls = cfg->half_open_max_calls;
    }
    if (cfg->success_threshold) {
      g->config.success_threshold = cfg->success_threshold;
    }
  }
  snprintf(g->name, sizeof g->name, "%s", name);
  snprintf(g->target, sizeof g->target, "%s",
           cfg != NULL && cfg->target != NULL && cfg->target[0] != '\0'
               ? cfg->target
               : name);
  g->client = c;
  s = af_breaker_registry_get_or_create(c->registry, name, &g->config,
                                        &g->breaker, NULL, err);
  if (s != AF_OK) {
    af_free(g);
    goto out;
  }
  c->guards[c->guard_count++] = g;
  *out = g;
out:
  pthread_mutex_unlock(&c->guards_mu);
  if (s == AF_OK) {
    af__chaos_mark_guard(c, *out);
    af__waiter_wake(&c->reporter_w);
  }
  return s;
}

static void sleep_ms(uint64_t ms)
{
  struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* A uniform draw in [0, 1). */
static double draw(af_client_t *c)
{
  unsigned long x = atomic_load_explicit(&c->rng, memory_order_relaxed);
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  atomic_store_explicit(&c->rng, x, memory_order_relaxed);
  return (double)(x >> 11) * (1.0 / 9007199254740992.0);
}

af_guard_decision_t af_guard_allow(af_guard_t *g)
{
  if (g == NULL) {
    return AF_GUARD_REJECTED;
  }
  if (!af_breaker_allow(g->breaker)) {
    return AF_GUARD_REJECTED;
  }
  af_client_t *c = g->client;
  /* One atomic load: does a mirrored scenario cover this target? */
  if (atomic_load_explicit(&g->chaos_hit, memory_order_acquire)) {
    uint64_t delay = 0;
    if (af_chaos_should_inject_latency(c->chaos, g->target, &delay) &&
        delay > 0) {
      sleep_ms(delay);
    }
    if (af_chaos_should_inject_error(c->chaos, g->target)) {
      af_breaker_record_failure(g->breaker, "chaos");
      return AF_GUARD_CHAOS_ERROR;
    }
    double level = af_chaos_resource_level(c->chaos, g->target, NULL);
    if (level > 0.0 && draw(c) < level) {
      af_breaker_record_failure(g->breaker, "resource_exhausted");
      return AF_GUARD_CHAOS_EXHAUSTED;
    }
  }
  return AF_GUARD_PASS;
}

void af_guard_success(af_guard_t *g)
{
  if (g != NULL) {
    af_breaker_record_success(g->breaker);
  }
}

void af_guard_failure(af_guard_t *g, const char *error_type)
{
  if (g != NULL) {
    af_breaker_record_failure(g->breaker, error_type);
  }
}

af_breaker_state_t af_guard_state(af_guard_t *g)
{
  return g != NULL ? af_breaker_state(g->breaker) : AF_BREAKER_CLOSED;
}

const char *af_guard_name(const af_guard_t *g)
{
  return g != NULL ? g->name : "";
}

/* ---- reporter ------------------------------------------------------------
 */

static void config_to_pb(const af_breaker_config_t *in,
                         antifragility_v1_BreakerConfig *out)
{
  out->has_fail_max = true;
  out->fail_max.value = in->fail_max;
  out->has_reset_timeout = true;
  out->reset_timeout.seconds = (int64_t)(in->reset_timeout_ms / 1000);
  out->reset_timeout.nanos = (int32_t)(in->reset_timeout_ms % 1000) * 1000000;
  out->has_half_open_max_calls = true;
  out->half_open_max_calls.value = in->half_open_max_calls;
  out->has_success_threshold = true;
  out->success_threshold.value = in->success_threshold;
}

/* Sends one guard's state. Returns the gRPC code. */
static int report_state(af_client_t *c, af_guard_t *g,
                        const af_breaker_info_t *i)
{
  antifragility_v1_ReportStateRequest req =
      antifragility_v1_ReportStateRequest_init_zero;
  snprintf(req.name, sizeof req.name, "%s", g->name);
  req.state = (antifragility_v1_BreakerState)(i->state + 1);
  /* instance_id fits (64 bytes at most, checked in create). */
  memcpy(req.instance_id, c->instance_id, sizeof req.instance_id - 1);
  req.fail_counter = i->fail_count;
  req.success_counter = i->success_count;
  int64_t now = af_clock_wall_ns(c->clock);
  req.has_observed_at = true;
  req.observed_at.seconds = now / (int64_t)AF_NS_PER_SEC;
  req.observed_at.nanos = (int32_t)(now % (int64_t)AF_NS_PER_SEC);
  req.auto_register = true;
  req.has_config = true;
  config_to_pb(&g->config, &req.config);
  antifragility_v1_ReportStateResponse *resp = af_malloc(sizeof *resp);
  if (resp == NULL) {
    return GRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  af_call_status_t st;
  int code = af__call(&c->transport, AF_RPC_REPORT_STATE, &req, 1, resp,
                      af__bg_deadline(c), &st);
  af_free(resp);
  return code;
}

/* True for failures that say nothing about this report (server away). */
static bool transport_failure(int code)
{
  return code == GRPC_STATUS_UNAVAILABLE ||
         code == GRPC_STATUS_DEADLINE_EXCEEDED ||
         code == GRPC_STATUS_CANCELLED || code == GRPC_STATUS_UNKNOWN ||
         code == GRPC_STATUS_INTERNAL || code == GRPC_STATUS_RESOURCE_EXHAUSTED;
}

/* Growth of a counter since it was reported (a reset restarts it). */
static uint64_t delta(uint64_t now, uint64_t reported)
{
  return now >= reported ? now - reported : now;
}

typedef struct {
  af_guard_t *g;
  af_breaker_info_t info;
  uint64_t fails, successes; /* outcomes to send this round */
} dirty_t;

/* One round; returns false if the server could not be reached. */
static bool round_run(af_client_t *c)
{
  pthread_mutex_lock(&c->guards_mu);
  size_t n = c->guard_count;
  af_guard_t **snap = af_malloc((n > 0 ? n : 1) * sizeof *snap);
  if (snap != NULL) {
    memcpy(snap, c->guards, n * sizeof snap[0]);
  }
  pthread_mutex_unlock(&c->guards_mu);
  dirty_t *dirty = af_malloc((n > 0 ? n : 1) * sizeof *dirty);
  antifragility_v1_ReportOutcomeRequest *outs =
      af_malloc((n > 0 ? 2 * n : 1) * sizeof *outs);
  size_t *repeat = af_malloc((n > 0 ? 2 * n : 1) * sizeof *repeat);
  bool ok = true;
  if (snap == NULL || dirty == NULL || outs == NULL || repeat == NULL) {
    ok = false;
    goto out;
  }

  uint64_t round = atomic_fetch_add(&c->rounds, 1) + 1;
  bool all =
      atomic_exchange(&c->resync_all, false) || round % FULL_RESYNC_ROUNDS == 0;
  af_breaker_registry_tick(c->registry);
  size_t nd = 0, no = 0;
  for (size_t k = 0; k < n; k++) {
    dirty_t *d = &dirty[nd];
    d->g = snap[k];
    af_breaker_info(d->g->breaker, &d->info);
    if (d->info.state == AF_BREAKER_FORCED_OPEN ||
        d->info.state == AF_BREAKER_DISABLED) {
      continue; /* never set locally; ReportState refuses them */
    }
    d->fails = delta(d->info.fail_count, d->g->reported_fail);
    d->successes = delta(d->info.success_count, d->g->reported_success);
    if (d->fails > OUTCOMES_PER_ROUND) {
      d->fails = OUTCOMES_PER_ROUND;
    }
    if (d->successes > OUTCOMES_PER_ROUND) {
      d->successes = OUTCOMES_PER_ROUND;
    }
    if (!all && d->g->reported && d->g->reported_state == d->info.state &&
        d->fails == 0 && d->successes == 0) {
      continue;
    }
    /* Outcomes in the order that leaves the server's own state machine
     * where ours is: failures last when we are not CLOSED. */
    antifragility_v1_ReportOutcomeRequest o =
        antifragility_v1_ReportOutcomeRequest_init_zero;
    snprintf(o.breaker_name, sizeof o.breaker_name, "%s", d->g->name);
    memcpy(o.instance_id, c->instance_id, sizeof o.instance_id - 1);
    o.auto_register = true;
    o.has_config = true;
    config_to_pb(&d->g->config, &o.config);
    bool fail_first = d->info.state == AF_BREAKER_CLOSED;
    for (int pass = 0; pass < 2; pass++) {
      bool failures = (pass == 0) == fail_first;
      uint64_t count = failures ? d->fails : d->successes;
      if (count > 0) {
        outs[no] = o;
        outs[no].success = !failures;
        repeat[no] = (size_t)count;
        no++;
      }
    }
    nd++;
  }
  if (no > 0) {
    antifragility_v1_ReportOutcomesResponse sum;
    memset(&sum, 0, sizeof sum);
    af_call_status_t st;
    int code = af__call_repeated(&c->transport, AF_RPC_REPORT_OUTCOMES, outs,
                                 repeat, no, &sum, af__bg_deadline(c), &st);
    if (code != GRPC_STATUS_OK) {
      atomic_fetch_add(&c->reports_failed, 1);
      atomic_store(&c->resync_all, true);
      ok = false;
      goto out;
    }
    atomic_fetch_add(&c->reports_sent, 1);
    for (size_t k = 0; k < nd; k++) {
      dirty[k].g->reported_fail += dirty[k].fails;
      dirty[k].g->reported_success += dirty[k].successes;
      if (dirty[k].g->reported_fail > dirty[k].info.fail_count ||
          dirty[k].g->reported_success > dirty[k].info.success_count) {
        /* counters were reset locally: restart from the current totals */
        dirty[k].g->reported_fail = dirty[k].info.fail_count;
        dirty[k].g->reported_success = dirty[k].info.success_count;
      }
    }
  }
  /* Then the state itself: it corrects whatever the outcomes did. */
  for (size_t k = 0; k < nd; k++) {
    af_guard_t *g = dirty[k].g;
    int code = report_state(c, g, &dirty[k].info);
    if (code == GRPC_STATUS_OK || !transport_failure(code)) {
      /* Refusals (e.g. FAILED_PRECONDITION: forced on the server) are
       * final for this state: do not hammer the server with them. */
      g->reported = true;
      g->reported_state = dirty[k].info.state;
      atomic_fetch_add(
          code == GRPC_STATUS_OK ? &c->reports_sent : &c->reports_failed, 1);
      continue;
    }
    atomic_fetch_add(&c->reports_failed, 1);
    atomic_store(&c->resync_all, true);
    ok = false;
    break;
  }
out:
  af_free(snap);
  af_free(dirty);
  af_free(outs);
  af_free(repeat);
  return ok;
}

void af__report_round(af_client_t *c) { round_run(c); }

void *af__reporter_main(void *arg)
{
  af_client_t *c = arg;
  uint64_t backoff = c->cfg.backoff_initial_ms;
  uint64_t wait = c->cfg.report_interval_ms;
  while (af__waiter_wait(&c->reporter_w, wait)) {
    if (round_run(c)) {
      backoff = c->cfg.backoff_initial_ms;
      wait = c->cfg.report_interval_ms;
    } else {
      wait = af__backoff_next(&backoff, c->cfg.backoff_max_ms, &c->rng);
    }
  }
  return NULL;
}
