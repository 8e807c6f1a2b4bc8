/*
 * client.c - af_client_t: configuration, creation, the background threads'
 * lifecycle and shutdown order, and the small helpers they share (a
 * stoppable waiter, jittered backoff).
 *
 * Shutdown order: health subscriptions and the chaos follower are stopped
 * first (their streams cancelled, threads joined), then the reporter is
 * stopped and makes one last round within the deadline, then the meter
 * flushes within what is left of the deadline. Nothing of ours is locked
 * while a network call runs.
 */
#include "client_internal.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "af/alloc.h"

void af_client_config_init(af_client_config_t *cfg)
{
  memset(cfg, 0, sizeof *cfg);
  cfg->addr = "127.0.0.1:50051";
  cfg->deadline_ms = 5000;
  cfg->instance_id = NULL;
  cfg->hash = AF_CONSTITUTIONAL_HASH_DEFAULT;
  cfg->clock = NULL;
  cfg->background = true;
  cfg->follow_chaos = true;
  cfg->report_interval_ms = 1000;
  cfg->backoff_initial_ms = 100;
  cfg->backoff_max_ms = 5000;
  cfg->meter_capacity = 10000;
  cfg->meter_batch = 100;
  cfg->meter_flush_interval_ms = 1000;
}

/* ---- waiter ------------------------------------------------------------- */

void af__waiter_init(af__waiter_t *w)
{
  pthread_condattr_t a;
  pthread_condattr_init(&a);
  pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
  pthread_cond_init(&w->cv, &a);
  pthread_condattr_destroy(&a);
  pthread_mutex_init(&w->mu, NULL);
  w->stop = false;
  w->wake = false;
}

void af__waiter_destroy(af__waiter_t *w)
{
  pthread_cond_destroy(&w->cv);
  pthread_mutex_destroy(&w->mu);
}

bool af__waiter_wait(af__waiter_t *w, uint64_t ms)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  ts.tv_sec += (time_t)(ms / 1000);
  ts.tv_nsec += (long)(ms % 1000) * 1000000L;
  if (ts.tv_nsec >= 1000000000L) {
    ts.tv_sec++;
    ts.tv_nsec -= 1000000000L;
  }
  pthread_mutex_lock(&w->mu);
  while (!w->stop && !w->wake) {
    if (pthread_cond_timedwait(&w->cv, &w->mu, &ts) != 0) {
      break;
    }
  }
  w->wake = false;
  bool go_on = !w->stop;
  pthread_mutex_unlock(&w->mu);
  return go_on;
}

void af__waiter_wake(af__waiter_t *w)
{
  pthread_mutex_lock(&w->mu);
  w->wake = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

void af__waiter_stop(af__waiter_t *w)
{
  pthread_mutex_lock(&w->mu);
  w->stop = true;
  pthread_cond_broadcast(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

bool af__waiter_stopped(af__waiter_t *w)
{
  pthread_mutex_lock(&w->mu);
  bool s = w->stop;
  pthread_mutex_unlock(&w->mu);
  return s;
}

uint64_t af__backoff_next(uint64_t *cur_ms, uint64_t max_ms, atomic_ulong *rng)
{
  uint64_t d = *cur_ms;
  if (d == 0) {
    d = 1;
  }
  /* xorshift64; a lost update between threads only repeats a draw. */
  unsigned long x = atomic_load_explicit(rng, memory_order_relaxed);
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  atomic_store_explicit(rng, x, memory_order_relaxed);
  uint64_t delay = d / 2 + (uint64_t)x % (d / 2 + 1); /* in [d/2, d] */
  *cur_ms = d * 2 > max_ms ? max_ms : d * 2;
  return delay;
}

/* ---- lifecycle ------------------------------------------------------------
 */

static af_status_t check_config(const af_client_config_t *cfg, af_error_t *err)
{
  if (cfg->addr == NULL || cfg->addr[0] == '\0' || strlen(cfg->addr) >= 256) {
    return af_error_set(err, AF_EINVAL, "addr must be 1-255 bytes");
  }
  if (cfg->deadline_ms == 0) {
    return af_error_set(err, AF_EINVAL, "deadline_ms must be >= 1");
  }
  if (cfg->instance_id != NULL && cfg->instance_id[0] != '\0' &&
      (!af_name_valid(cfg->instance_id) || strlen(cfg->instance_id) > 64)) {
    return af_error_set(err, AF_EINVAL,
                        "instance_id must be 1-64 bytes of printable UTF-8");
  }
  if (cfg->hash == NULL || cfg->hash[0] == '\0' ||
      strlen(cfg->hash) > AF_HASH_MAX) {
    return af_error_set(err, AF_EINVAL, "hash must be 1-64 bytes");
  }
  if (cfg->report_interval_ms == 0 || cfg->backoff_initial_ms == 0 ||
      cfg->backoff_max_ms < cfg->backoff_initial_ms) {
    return af_error_set(err, AF_EINVAL,
                        "report_interval_ms and backoff_initial_ms must be "
                        ">= 1, backoff_max_ms >= backoff_initial_ms");
  }
  return AF_OK;
}

static void stop_threads(af_client_t *c);

af_status_t af_client_create(af_client_t **out, const af_client_config_t *cfg,
                             af_error_t *err)
{
  af_client_config_t defaults;
  if (out == NULL) {
    return af_error_set(err, AF_EINVAL, "out is required");
  }
  if (cfg == NULL) {
    af_client_config_init(&defaults);
    cfg = &defaults;
  }
  af_status_t s = check_config(cfg, err);
  if (s != AF_OK) {
    return s;
  }
  af_client_t *c = af_calloc(1, sizeof *c);
  if (c == NULL) {
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  c->cfg = *cfg;
  snprintf(c->addr, sizeof c->addr, "%s", cfg->addr);
  snprintf(c->hash, sizeof c->hash, "%s", cfg->hash);
  c->cfg.addr = c->addr;
  c->cfg.hash = c->hash;
  if (cfg->instance_id != NULL && cfg->instance_id[0] != '\0') {
    snprintf(c->instance_id, sizeof c->instance_id, "%s", cfg->instance_id);
  } else {
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(c->instance_id, sizeof c->instance_id, "%.40s:%ld", host,
             (long)getpid());
  }
  c->cfg.instance_id = c->instance_id;
  c->clock = cfg->clock != NULL ? cfg->clock : af_clock_system();
  atomic_init(&c->rng, (unsigned long)af_clock_mono_ns(NULL) | 1UL);
  pthread_mutex_init(&c->guards_mu, NULL);
  pthread_mutex_init(&c->chaos_mu, NULL);
  pthread_mutex_init(&c->chaos_stream_mu, NULL);
  pthread_mutex_init(&c->subs_mu, NULL);
  af__waiter_init(&c->reporter_w);
  af__waiter_init(&c->chaos_w);

  grpc_init();
  s = af__transport_init(&c->transport, &c->cfg, err);
  c->cfg.token = NULL; /* borrowed for create only */
  c->cfg.tls_ca_file = c->cfg.tls_cert_file = c->cfg.tls_key_file = NULL;
  if (s != AF_OK) {
    goto fail;
  }
  if ((s = af__guards_init(c, err)) != AF_OK ||
      (s = af__chaos_init(c, err)) != AF_OK ||
      (s = af__meter_init(c, err)) != AF_OK) {
    goto fail;
  }
  if (cfg->background) {
    c->threads_started = true;
    if (af_meter_start(c->meter) != AF_OK) {
      s = af_error_set(err, AF_EINTERNAL, "cannot start the metering sender");
      goto fail;
    }
    if (pthread_create(&c->reporter, NULL, af__reporter_main, c) != 0) {
      s = af_error_set(err, AF_EINTERNAL, "cannot start the reporter thread");
      goto fail;
    }
    c->reporter_running = true;
    if (cfg->follow_chaos) {
      if (pthread_create(&c->chaos_thread, NULL, af__chaos_main, c) != 0) {
        s = af_error_set(err, AF_EINTERNAL, "cannot start the chaos thread");
        goto fail;
      }
      c->chaos_running = true;
    }
  }
  *out = c;
  return AF_OK;
fail:
  stop_threads(c);
  c->shut_down = true;
  af_client_destroy(c);
  return s;
}

static void stop_threads(af_client_t *c)
{
  af__health_stop_all(c);
  if (c->chaos_running) {
    af__waiter_stop(&c->chaos_w);
    pthread_mutex_lock(&c->chaos_stream_mu);
    if (c->chaos_stream != NULL) {
      af_client_stream_cancel(c->chaos_stream);
    }
    pthread_mutex_unlock(&c->chaos_stream_mu);
    pthread_join(c->chaos_thread, NULL);
    c->chaos_running = false;
  }
  if (c->reporter_running) {
    af__waiter_stop(&c->reporter_w);
    af__transport_cancel_all(&c->transport);
    pthread_join(c->reporter, NULL);
    c->reporter_running = false;
  }
}

uint32_t af__bg_deadline(af_client_t *c)
{
  unsigned cap = atomic_load(&c->bg_deadline_cap);
  return cap != 0 && cap < c->cfg.deadline_ms ? cap : c->cfg.deadline_ms;
}

size_t af_client_shutdown(af_client_t *c, uint32_t deadline_ms)
{
  if (c == NULL) {
    return 0;
  }
  if (c->shut_down) {
    af_meter_metrics_t m;
    af_meter_metrics(c->meter, &m);
    return m.depth;
  }
  c->shut_down = true;
  uint64_t start = af_clock_mono_ns(NULL);
  /* From here on no background call may outlive the deadline. */
  atomic_store(&c->bg_deadline_cap, deadline_ms > 0 ? deadline_ms : 1);
  stop_threads(c);
  uint64_t spent_ms = (af_clock_mono_ns(NULL) - start) / AF_NS_PER_MS;
  if (c->threads_started && c->registry != NULL && spent_ms < deadline_ms) {
    /* One last round so the server hears the final states. */
    atomic_store(&c->bg_deadline_cap, (unsigned)(deadline_ms - spent_ms));
    af__report_round(c);
  }
  spent_ms = (af_clock_mono_ns(NULL) - start) / AF_NS_PER_MS;
  uint64_t left = spent_ms >= deadline_ms ? 0 : deadline_ms - spent_ms;
  atomic_store(&c->bg_deadline_cap, left > 0 ? (unsigned)left : 1);
  size_t unsent = 0;
  if (c->meter != NULL) {
    if (c->threads_started) {
      /* A send the flusher started before the deadline cap ends now; the
       * batch stays queued and af_meter_shutdown retries it. */
      af__transport_cancel_all(&c->transport);
      unsent = af_meter_shutdown(c->meter, left);
    } else {
      af_meter_metrics_t m;
      af_meter_metrics(c->meter, &m);
      unsent = m.depth;
    }
  }
  return unsent;
}

void af_client_destroy(af_client_t *c)
{
  if (c == NULL) {
    return;
  }
  if (!c->shut_down) {
    af_client_shutdown(c, 0);
  }
  af__meter_destroy(c);
  af__chaos_destroy(c);
  af__guards_destroy(c);
  af__transport_destroy(&c->transport);
  grpc_shutdown();
  af__waiter_destroy(&c->reporter_w);
  af__waiter_destroy(&c->chaos_w);
  pthread_mutex_destroy(&c->guards_mu);
  pthread_mutex_destroy(&c->chaos_mu);
  pthread_mutex_destroy(&c->chaos_stream_mu);
  pthread_mutex_destroy(&c->subs_mu);
  af_free(c);
}

const char *af_client_addr(const af_client_t *c)
{
  return c != NULL ? c->addr : "";
}

void af_client_guard_stats(af_client_t *c, af_client_guard_stats_t *out)
{
  memset(out, 0, sizeof *out);
  if (c == NULL) {
    return;
  }
  out->reports_sent = atomic_load(&c->reports_sent);
  out->reports_failed = atomic_load(&c->reports_failed);
  out->rounds = atomic_load(&c->rounds);
  out->chaos_events = atomic_load(&c->chaos_events);
  out->chaos_reconnects = atomic_load(&c->chaos_reconnects);
  out->chaos_connected = atomic_load(&c->chaos_connected);
  af_chaos_metrics_t m;
  af_chaos_metrics(c->chaos, &m);
  out->chaos_active = m.active;
}

void af_client_report_now(af_client_t *c)
{
  if (c != NULL) {
    af__waiter_wake(&c->reporter_w);
  }
}
