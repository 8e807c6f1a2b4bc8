/*
 * engine.c - owns the five modules and the wires between them.
 *
 * Design. The modules know nothing of each other: the breaker registry
 * publishes events, health is fed by track / set_state, recovery and chaos
 * act on breakers through callbacks. This file is those wires, plus one
 * timer thread and a small fan-out to subscribers (the server's streams).
 *
 * Invariants:
 *   - every wire runs on the thread that caused the event and calls into the
 *     other module with no lock of ours held (the modules call us with none
 *     of theirs held either), so a wire may call back into any module;
 *   - health mirrors the registry: a breaker is tracked from REGISTERED to
 *     UNREGISTERED; on TRANSITION health gets the breaker's *current* state
 *     (read after the event), so two racing transitions cannot leave health
 *     holding the older one;
 *   - the subscriber table only changes before start / after shutdown, so
 *     publishing reads it without a lock.
 *
 * Threading: one optional timer thread. It sleeps on a condition variable
 * until the earliest module deadline (capped at timer_max_sleep_ms of real
 * time: the module clock may be a manual one), and is woken by
 * af_engine_kick whenever a deadline may have moved earlier.
 */
#define _POSIX_C_SOURCE 200809L
#include "af/engine.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "af/alloc.h"

typedef struct {
  af_engine_listener_fn fn;
  void *ctx;
  int id;
} subscriber_t;

struct af_engine {
  af_engine_config_t cfg;
  const af_clock_t *clock;
  char hash[AF_HASH_MAX + 1];

  af_breaker_registry_t *breakers;
  af_health_t *health;
  af_recovery_t *recovery;
  af_chaos_t *chaos;
  af_meter_t *meter;
  int breaker_listener_id;
  int health_update_id;

  subscriber_t subs[AF_ENGINE_MAX_SUBSCRIBERS];
  size_t sub_count;
  int next_sub_id;

  pthread_mutex_t timer_mu;
  pthread_cond_t timer_cv;
  bool timer_running;
  bool timer_stop;
  bool kicked;
  pthread_t timer_thread;
  bool started;
  bool shut_down;
  size_t unflushed;

  atomic_uint_fast64_t timer_runs;
  atomic_uint_fast64_t auto_recoveries;
  atomic_uint_fast64_t events_published;
  atomic_uint_fast64_t wiring_errors;
};

void af_engine_config_init(af_engine_config_t *cfg)
{
  memset(cfg, 0, sizeof(*cfg));
  cfg->clock = NULL;
  strcpy(cfg->hash, AF_CONSTITUTIONAL_HASH_DEFAULT);
  af_breaker_registry_config_init(&cfg->breakers);
  af_health_config_init(&cfg->health);
  af_recovery_config_init(&cfg->recovery);
  af_chaos_config_init(&cfg->chaos);
  af_meter_config_init(&cfg->meter);
  cfg->auto_recovery = true;
  cfg->run_timer_thread = true;
  cfg->timer_max_sleep_ms = 100;
}

/* ---- fan-out ------------------------------------------------------------ */

static void publish(af_engine_t *e, const af_engine_event_t *ev)
{
  for (size_t i = 0; i < e->sub_count; i++) {
    e->subs[i].fn(ev, e->subs[i].ctx);
  }
  atomic_fetch_add_explicit(&e->events_published, 1, memory_order_relaxed);
}

int af_engine_subscribe(af_engine_t *e, af_engine_listener_fn fn, void *ctx)
{
  if (e == NULL || fn == NULL) {
    return AF_EINVAL;
  }
  if (e->sub_count == AF_ENGINE_MAX_SUBSCRIBERS) {
    return AF_ELIMIT;
  }
  int id = ++e->next_sub_id;
  e->subs[e->sub_count++] = (subscriber_t){.fn = fn, .ctx = ctx, .id = id};
  return id;
}

void af_engine_unsubscribe(af_engine_t *e, int id)
{
  if (e == NULL) {
    return;
  }
  for (size_t i = 0; i < e->sub_count; i++) {
    if (e->subs[i].id == id) {
      memmove(&e->subs[i], &e->subs[i + 1],
              (e->sub_count - i - 1) * sizeof(e->subs[0]));
      e->sub_count--;
      return;
    }
  }
}

void af_engine_kick(af_engine_t *e)
{
  if (e == NULL) {
    return;
  }
  pthread_mutex_lock(&e->timer_mu);
  e->kicked = true;
  if (e->timer_running) {
    pthread_cond_signal(&e->timer_cv);
  }
  pthread_mutex_unlock(&e->timer_mu);
}

/* ---- wires -------------------------------------------------------------- */

static void wiring_error(af_engine_t *e)
{
  atomic_fetch_add_explicit(&e->wiring_errors, 1, memory_order_relaxed);
}

/* A breaker that has just opened gets recovery scheduled when its service
 * has a policy of its own with a probe, and no recovery is already running
 * for it (recovery re-opens a breaker itself after a failed attempt). */
static void maybe_auto_recover(af_engine_t *e, const char *name)
{
  if (!e->cfg.auto_recovery || !af_recovery_has_policy(e->recovery, name)) {
    return;
  }
  af_recovery_policy_t policy;
  bool is_default = true;
  if (af_recovery_get_policy(e->recovery, name, &policy, &is_default) !=
          AF_OK ||
      is_default || policy.probe == AF_PROBE_NONE) {
    return;
  }
  af_recovery_task_t task;
  if (af_recovery_get(e->recovery, name, &task) == AF_OK &&
      (task.state == AF_RECOVERY_SCHEDULED ||
       task.state == AF_RECOVERY_IN_PROGRESS ||
       task.state == AF_RECOVERY_AWAITING_MANUAL)) {
    return;
  }
  if (af_recovery_schedule(e->recovery, name, 0, NULL, "breaker opened", &task,
                           NULL) == AF_OK) {
    atomic_fetch_add_explicit(&e->auto_recoveries, 1, memory_order_relaxed);
  } else {
    wiring_error(e);
  }
}

static void on_breaker_event(const af_breaker_event_t *ev, void *ctx)
{
  af_engine_t *e = ctx;
  /* Subscribers hear of the breaker event before the health change it
   * causes, so a watcher sees cause before effect. */
  if (ev->kind != AF_BREAKER_EVENT_REPORT) {
    af_engine_event_t out = {.kind = AF_ENGINE_EV_BREAKER, .breaker = ev};
    publish(e, &out);
  }
  switch (ev->kind) {
  case AF_BREAKER_EVENT_REGISTERED: {
    af_status_t st = af_health_track(e->health, ev->name, ev->to, ev->weight);
    if (st != AF_OK && st != AF_EEXIST) {
      wiring_error(e);
    }
    break;
  }
  case AF_BREAKER_EVENT_UNREGISTERED:
    (void)af_health_untrack(e->health, ev->name);
    break;
  case AF_BREAKER_EVENT_TRANSITION: {
    af_breaker_state_t now = ev->to;
    af_breaker_t *b = NULL;
    if (af_breaker_registry_find(e->breakers, ev->name, &b) == AF_OK) {
      now = af_breaker_state(b);
      af_breaker_release(b);
    }
    if (af_health_set_state(e->health, ev->name, now) != AF_OK) {
      wiring_error(e);
    }
    if (ev->to == AF_BREAKER_OPEN) {
      maybe_auto_recover(e, ev->name);
    }
    if (ev->to == AF_BREAKER_OPEN || ev->to == AF_BREAKER_FORCED_OPEN) {
      af_engine_kick(e); /* a reset_timeout deadline appeared */
    }
    break;
  }
  case AF_BREAKER_EVENT_CONFIG_CHANGED:
    (void)af_health_set_weight(e->health, ev->name, ev->weight);
    break;
  case AF_BREAKER_EVENT_REPORT:
    (void)af_health_touch(e->health, ev->name); /* too frequent to publish */
    break;
  }
}

static int on_health_update(const af_health_change_t *c, void *ctx)
{
  af_engine_t *e = ctx;
  af_engine_event_t out = {.kind = AF_ENGINE_EV_HEALTH, .health = c};
  publish(e, &out);
  return 0;
}

static af_status_t recovery_set_breaker(const char *service,
                                        af_breaker_state_t state, void *ctx)
{
  af_engine_t *e = ctx;
  af_breaker_t *b = NULL;
  af_status_t st = af_breaker_registry_find(e->breakers, service, &b);
  if (st != AF_OK) {
    return st;
  }
  st = af_breaker_set_state(b, state, "recovery");
  af_breaker_release(b);
  return st;
}

static af_status_t recovery_start_probe(const af_recovery_task_t *task,
                                        void *ctx)
{
  af_engine_t *e = ctx;
  return e->cfg.start_probe(task, e->cfg.probe_ctx);
}

static void on_recovery_task(const af_recovery_task_t *task, void *ctx)
{
  af_engine_t *e = ctx;
  if (task->state == AF_RECOVERY_SCHEDULED) {
    af_engine_kick(e);
  }
  af_engine_event_t out = {.kind = AF_ENGINE_EV_RECOVERY, .task = task};
  publish(e, &out);
}

static af_status_t chaos_force_breaker(const char *target, bool open, void *ctx)
{
  af_engine_t *e = ctx;
  af_breaker_t *b = NULL;
  af_status_t st;
  if (open) {
    /* A scenario may target a service no client has registered yet: the
     * breaker is created so clients that look it up see it forced. */
    st = af_breaker_registry_get_or_create(e->breakers, target, NULL, &b, NULL,
                                           NULL);
    if (st != AF_OK) {
      return st;
    }
    st = af_breaker_force(b, AF_BREAKER_FORCED_OPEN, "chaos");
  } else {
    st = af_breaker_registry_find(e->breakers, target, &b);
    if (st != AF_OK) {
      return AF_OK; /* unregistered meanwhile: nothing left to close */
    }
    st = af_breaker_state(b) == AF_BREAKER_FORCED_OPEN
             ? af_breaker_unforce(b, "chaos ended")
             : AF_OK;
  }
  af_breaker_release(b);
  if (st != AF_OK) {
    wiring_error(e);
  }
  return st;
}

static void on_chaos_event(const af_chaos_event_t *ev, void *ctx)
{
  af_engine_t *e = ctx;
  if (ev->kind == AF_CHAOS_EV_ACTIVATED || ev->kind == AF_CHAOS_EV_REPLACED) {
    af_engine_kick(e); /* an expiry deadline appeared */
  }
  af_engine_event_t out = {.kind = AF_ENGINE_EV_CHAOS, .chaos = ev};
  publish(e, &out);
  if (e->cfg.on_chaos_audit != NULL) {
    e->cfg.on_chaos_audit(ev, e->cfg.audit_ctx);
  }
}

/* ---- lifecycle ---------------------------------------------------------- */

static void destroy_modules(af_engine_t *e)
{
  /* Chaos and recovery call into the registry; they go first. */
  af_meter_destroy(e->meter);
  af_chaos_destroy(e->chaos);
  af_recovery_destroy(e->recovery);
  if (e->breakers != NULL && e->breaker_listener_id > 0) {
    af_breaker_registry_remove_listener(e->breakers, e->breaker_listener_id);
  }
  af_breaker_registry_destroy(e->breakers);
  af_health_destroy(e->health);
}

af_status_t af_engine_create(af_engine_t **out, const af_engine_config_t *cfg,
                             af_error_t *err)
{
  if (out == NULL || cfg == NULL) {
    return af_error_set(err, AF_EINVAL, "engine: no output or config");
  }
  if (cfg->hash[0] == '\0' || strlen(cfg->hash) > AF_HASH_MAX) {
    return af_error_set(err, AF_EINVAL,
                        "constitutional hash must be 1-%d characters",
                        AF_HASH_MAX);
  }
  af_engine_t *e = af_calloc(1, sizeof(*e));
  if (e == NULL) {
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  e->cfg = *cfg;
  e->clock = cfg->clock != NULL ? cfg->clock : af_clock_system();
  memcpy(e->hash, cfg->hash, sizeof(e->hash));
  pthread_mutex_init(&e->timer_mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&e->timer_cv, &ca);
  pthread_condattr_destroy(&ca);

  af_status_t st;
  af_health_config_t hc = cfg->health;
  hc.clock = e->clock;
  hc.has_registry = true;
  st = af_health_create(&e->health, &hc, err);
  if (st != AF_OK) {
    goto fail;
  }
  e->health_update_id = af_health_on_update(e->health, on_health_update, e);

  af_breaker_registry_config_t bc = cfg->breakers;
  bc.clock = e->clock;
  if (hc.stale_after_ms > 0) {
    bc.emit_report_events = true; /* health needs every report's time */
  }
  st = af_breaker_registry_create(&e->breakers, &bc);
  if (st != AF_OK) {
    af_error_set(err, st, "breaker registry: %s", af_status_str(st));
    goto fail;
  }
  e->breaker_listener_id =
      af_breaker_registry_add_listener(e->breakers, on_breaker_event, e);
  if (e->breaker_listener_id <= 0) {
    st = AF_EINTERNAL;
    af_error_set(err, st, "breaker registry: cannot add listener");
    goto fail;
  }

  af_recovery_config_t rc = cfg->recovery;
  rc.clock = e->clock;
  rc.cb.set_breaker = recovery_set_breaker;
  /* Without a runner recovery judges attempts itself (probe NONE). */
  rc.cb.start_probe = cfg->start_probe != NULL ? recovery_start_probe : NULL;
  rc.cb.on_task_event = on_recovery_task;
  rc.cb.ctx = e;
  st = af_recovery_create(&e->recovery, &rc, err);
  if (st != AF_OK) {
    goto fail;
  }

  af_chaos_config_t cc = cfg->chaos;
  cc.clock = e->clock;
  memcpy(cc.hash, e->hash, sizeof(cc.hash));
  cc.force_breaker = chaos_force_breaker;
  cc.on_event = on_chaos_event;
  cc.ctx = e;
  st = af_chaos_create(&e->chaos, &cc, err);
  if (st != AF_OK) {
    goto fail;
  }

  af_meter_config_t mc = cfg->meter;
  mc.clock = e->clock;
  memcpy(mc.hash, e->hash, sizeof(mc.hash));
  st = af_meter_create(&e->meter, &mc, err);
  if (st != AF_OK) {
    goto fail;
  }
  *out = e;
  return AF_OK;

fail:
  destroy_modules(e);
  pthread_cond_destroy(&e->timer_cv);
  pthread_mutex_destroy(&e->timer_mu);
  af_free(e);
  return st;
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

uint64_t af_engine_run_timers(af_engine_t *e)
{
  uint64_t next = af_breaker_registry_tick(e->breakers);
  next = min_u64(next, af_health_tick(e->health));
  next = min_u64(next, af_recovery_tick(e->recovery));
  next = min_u64(next, af_chaos_tick(e->chaos));
  atomic_fetch_add_explicit(&e->timer_runs, 1, memory_order_relaxed);
  return next;
}

static void *timer_main(void *arg)
{
  af_engine_t *e = arg;
  pthread_mutex_lock(&e->timer_mu);
  while (!e->timer_stop) {
    e->kicked = false;
    pthread_mutex_unlock(&e->timer_mu);
    uint64_t next = af_engine_run_timers(e);
    uint64_t now = af_clock_mono_ns(e->clock);
    uint64_t wait_ns = e->cfg.timer_max_sleep_ms * AF_NS_PER_MS;
    if (next != UINT64_MAX) {
      wait_ns = next > now ? min_u64(next - now, wait_ns) : 0;
    }
    pthread_mutex_lock(&e->timer_mu);
    if (wait_ns == 0 || e->kicked || e->timer_stop) {
      continue;
    }
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    uint64_t at =
        (uint64_t)ts.tv_sec * AF_NS_PER_SEC + (uint64_t)ts.tv_nsec + wait_ns;
    ts.tv_sec = (time_t)(at / AF_NS_PER_SEC);
    ts.tv_nsec = (long)(at % AF_NS_PER_SEC);
    while (!e->kicked && !e->timer_stop) {
      if (pthread_cond_timedwait(&e->timer_cv, &e->timer_mu, &ts) ==
          ETIMEDOUT) {
        break;
      }
    }
  }
  pthread_mutex_unlock(&e->timer_mu);
  return NULL;
}

af_status_t af_engine_start(af_engine_t *e)
{
  if (e == NULL) {
    return AF_EINVAL;
  }
  if (e->started) {
    return AF_ESTATE;
  }
  if (e->cfg.meter.sink != NULL) {
    af_status_t st = af_meter_start(e->meter);
    if (st != AF_OK) {
      return st;
    }
  }
  if (e->cfg.run_timer_thread) {
    pthread_mutex_lock(&e->timer_mu);
    e->timer_running = true;
    e->timer_stop = false;
    pthread_mutex_unlock(&e->timer_mu);
    if (pthread_create(&e->timer_thread, NULL, timer_main, e) != 0) {
      e->timer_running = false;
      return AF_ENOMEM;
    }
  }
  e->started = true;
  return AF_OK;
}

size_t af_engine_shutdown(af_engine_t *e, uint64_t meter_deadline_ms)
{
  if (e == NULL) {
    return 0;
  }
  if (e->shut_down) {
    return e->unflushed;
  }
  e->shut_down = true;
  pthread_mutex_lock(&e->timer_mu);
  bool running = e->timer_running;
  e->timer_stop = true;
  pthread_cond_signal(&e->timer_cv);
  pthread_mutex_unlock(&e->timer_mu);
  if (running) {
    pthread_join(e->timer_thread, NULL);
    e->timer_running = false;
  }
  e->unflushed = af_meter_shutdown(e->meter, meter_deadline_ms);
  return e->unflushed;
}

void af_engine_destroy(af_engine_t *e)
{
  if (e == NULL) {
    return;
  }
  af_engine_shutdown(e, 0);
  destroy_modules(e);
  pthread_cond_destroy(&e->timer_cv);
  pthread_mutex_destroy(&e->timer_mu);
  af_free(e);
}

af_breaker_registry_t *af_engine_breakers(af_engine_t *e)
{
  return e->breakers;
}

af_health_t *af_engine_health(af_engine_t *e) { return e->health; }

af_recovery_t *af_engine_recovery(af_engine_t *e) { return e->recovery; }

af_chaos_t *af_engine_chaos(af_engine_t *e) { return e->chaos; }

af_meter_t *af_engine_meter(af_engine_t *e) { return e->meter; }

const af_clock_t *af_engine_clock(af_engine_t *e) { return e->clock; }

const char *af_engine_hash(af_engine_t *e) { return e->hash; }

void af_engine_metrics(af_engine_t *e, af_engine_metrics_t *out)
{
  out->timer_runs = atomic_load(&e->timer_runs);
  out->auto_recoveries = atomic_load(&e->auto_recoveries);
  out->events_published = atomic_load(&e->events_published);
  out->wiring_errors = atomic_load(&e->wiring_errors);
}
