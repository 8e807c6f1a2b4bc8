/*
 * chaos.c - the chaos engine: validated, self-expiring fault scenarios.
 *
 * Owns: an array of pointers to heap entries (one per active scenario) in
 * activation order, guarded by a writer-preferring rwlock. Entries removed
 * under the lock are detached onto a private list and only reported (events,
 * breaker force lifted) and freed after the lock is released.
 *
 * Invariants:
 *   - `active` (atomic) equals the number of stored entries; it is written
 *     under the write lock and read without it by the hot path, which returns
 *     after that single load when it is 0;
 *   - names are unique among stored entries (same name = replacement);
 *   - while stopped, nothing is stored and activations are refused;
 *   - every change of the set of CIRCUIT_BREAKER scenarios bumps
 *     `cb_version`; sync_breaker() repeats force_breaker(target, wanted)
 *     until the version is unchanged across the call, so racing threads
 *     converge on "forced iff a CIRCUIT_BREAKER scenario on it is stored".
 *
 * Threading: all public functions are thread-safe. The hot path takes only
 * the read lock and updates atomic counters; expired entries are skipped
 * there and reaped (with events) by tick and by queries under the write
 * lock. The RNG is a splitmix64 Weyl sequence advanced with one fetch_add,
 * so a seeded engine draws a reproducible sequence.
 */
#define _GNU_SOURCE
#include "af/chaos.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "af/alloc.h"

typedef struct entry {
  af_chaos_scenario_t s; /* s.injections unused while stored */
  _Atomic uint64_t injections;
  uint64_t blast_hash[AF_CHAOS_BLAST_MAX];
  /* Detached-list bookkeeping, valid only after removal. */
  struct entry *next;
  af_chaos_event_kind_t ev_kind;
  const char *ev_actor;
  const char *ev_reason;
  uint64_t ev_seq;
} entry_t;

struct af_chaos {
  af_chaos_config_t cfg;
  pthread_rwlock_t lock;
  entry_t **items; /* guarded by lock */
  size_t count, cap;
  uint64_t seq; /* last event sequence number; guarded by lock */
  _Atomic size_t active;
  _Atomic bool stopped;
  _Atomic uint64_t cb_version;
  _Atomic uint64_t next_expiry; /* earliest stored expiry, UINT64_MAX */
  _Atomic uint64_t rng;
  _Atomic uint64_t activations, deactivations, expirations;
  _Atomic uint64_t latency_injections, error_injections;
  _Atomic uint64_t emergency_stops, rejected;
};

static const char *const kind_names[] = {
    "unknown",
    "latency",
    "error",
    "circuit_breaker",
    "resource_exhaustion",
    "network_partition",
    "timeout",
};

static const char *const resource_names[] = {
    "unknown", "cpu", "memory", "connections", "disk_io", "network_bandwidth",
};

const char *af_chaos_kind_name(af_chaos_kind_t k)
{
  if ((int)k < AF_CHAOS_LATENCY || (int)k > AF_CHAOS_TIMEOUT)
    return kind_names[0];
  return kind_names[k];
}

const char *af_resource_type_name(af_resource_type_t t)
{
  if ((int)t < AF_RESOURCE_CPU || (int)t > AF_RESOURCE_NETWORK_BANDWIDTH)
    return resource_names[0];
  return resource_names[t];
}

/* ---- small helpers ---------------------------------------------------- */

static bool terminated(const char *buf, size_t size)
{
  return memchr(buf, '\0', size) != NULL;
}

static void copy_str(char *dst, size_t size, const char *src)
{
  size_t n = strlen(src);
  if (n >= size)
    n = size - 1;
  memcpy(dst, src, n);
  dst[n] = '\0';
}

static uint64_t name_hash(const char *s)
{
  uint64_t h = UINT64_C(14695981039346656037);
  for (; *s != '\0'; s++) {
    h ^= (uint8_t)*s;
    h *= UINT64_C(1099511628211);
  }
  return h;
}

static uint64_t splitmix64(uint64_t z)
{
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* Uniform double in [0, 1). */
static double rng_next(af_chaos_t *c)
{
  uint64_t s = atomic_fetch_add_explicit(&c->rng, UINT64_C(0x9e3779b97f4a7c15),
                                         memory_order_relaxed) +
               UINT64_C(0x9e3779b97f4a7c15);
  return (double)(splitmix64(s) >> 11) * 0x1.0p-53;
}

/* Formats v like Python's repr(float): shortest round-trip digits, fixed
 * notation for decimal exponents in [-4, 16), "1.0" not "1", "1e-05". */
static void py_float_repr(double v, char *buf, size_t size)
{
  if (isnan(v)) {
    snprintf(buf, size, "nan");
    return;
  }
  if (isinf(v)) {
    snprintf(buf, size, v > 0 ? "inf" : "-inf");
    return;
  }
  char sci[40];
  for (int prec = 0; prec < 17; prec++) {
    snprintf(sci, sizeof sci, "%.*e", prec, v);
    if (strtod(sci, NULL) == v)
      break;
  }
  /* sci = [-]d[.ddd]e[+-]XX */
  const char *p = sci;
  bool neg = false;
  if (*p == '-') {
    neg = true;
    p++;
  }
  char digits[32];
  size_t nd = 0;
  for (; *p != 'e'; p++)
    if (*p >= '0' && *p <= '9')
      digits[nd++] = *p;
  int exp10 = atoi(p + 1);
  while (nd > 1 && digits[nd - 1] == '0')
    nd--;
  digits[nd] = '\0';

  char out[64];
  size_t o = 0;
  if (neg)
    out[o++] = '-';
  if (exp10 >= -4 && exp10 < 16) {
    if (exp10 < 0) {
      out[o++] = '0';
      out[o++] = '.';
      for (int i = 0; i < -exp10 - 1; i++)
        out[o++] = '0';
      for (size_t i = 0; i < nd; i++)
        out[o++] = digits[i];
    } else {
      size_t int_len = (size_t)exp10 + 1;
      for (size_t i = 0; i < int_len; i++)
        out[o++] = i < nd ? digits[i] : '0';
      out[o++] = '.';
      if (nd > int_len) {
        for (size_t i = int_len; i < nd; i++)
          out[o++] = digits[i];
      } else {
        out[o++] = '0';
      }
    }
    out[o] = '\0';
  } else {
    out[o++] = digits[0];
    if (nd > 1) {
      out[o++] = '.';
      for (size_t i = 1; i < nd; i++)
        out[o++] = digits[i];
    }
    snprintf(out + o, sizeof out - o, "e%c%02d", exp10 < 0 ? '-' : '+',
             exp10 < 0 ? -exp10 : exp10);
  }
  snprintf(buf, size, "%s", out);
}

static bool covers(const entry_t *e, uint64_t h, const char *target)
{
  for (size_t i = 0; i < e->s.blast_count; i++)
    if (e->blast_hash[i] == h && strcmp(e->s.blast_radius[i], target) == 0)
      return true;
  return false;
}

static bool is_protected(const af_chaos_t *c, const char *name)
{
  for (size_t i = 0; i < c->cfg.protected_count; i++)
    if (strcmp(c->cfg.protected_targets[i], name) == 0)
      return true;
  return false;
}

static const char *or_default(const char *s, const char *dflt)
{
  return (s == NULL || *s == '\0') ? dflt : s;
}

/* ---- config, create, destroy ------------------------------------------ */

void af_chaos_request_init(af_chaos_request_t *r, af_chaos_kind_t kind,
                           const char *target)
{
  memset(r, 0, sizeof *r);
  r->kind = kind;
  if (target == NULL && kind == AF_CHAOS_RESOURCE_EXHAUSTION)
    target = "system";
  if (target != NULL)
    copy_str(r->target, sizeof r->target, target);
}

void af_chaos_config_init(af_chaos_config_t *cfg)
{
  memset(cfg, 0, sizeof *cfg);
  cfg->max_duration_ms = 300000;
  cfg->default_duration_ms = 10000;
  cfg->max_delay_ms = 5000;
  cfg->max_scenarios = 1000;
  copy_str(cfg->hash, sizeof cfg->hash, AF_CONSTITUTIONAL_HASH_DEFAULT);
}

static af_status_t validate_config(const af_chaos_config_t *cfg,
                                   af_error_t *err)
{
  if (cfg->max_duration_ms < 1)
    return af_error_set(err, AF_EINVAL, "max_duration_ms must be >= 1");
  if (cfg->default_duration_ms < 1 ||
      cfg->default_duration_ms > cfg->max_duration_ms)
    return af_error_set(
        err, AF_EINVAL,
        "default_duration_ms must be between 1 and max_duration_ms");
  if (cfg->max_scenarios < 1)
    return af_error_set(err, AF_EINVAL, "max_scenarios must be >= 1");
  if (cfg->protected_count > AF_CHAOS_PROTECTED_MAX)
    return af_error_set(err, AF_EINVAL, "protected_count must be <= %d",
                        AF_CHAOS_PROTECTED_MAX);
  for (size_t i = 0; i < cfg->protected_count; i++) {
    const char *p = cfg->protected_targets[i];
    if (!terminated(p, sizeof cfg->protected_targets[i]) || !af_name_valid(p))
      return af_error_set(err, AF_EINVAL,
                          "protected_targets[%zu] is not a valid name", i);
  }
  if (!terminated(cfg->hash, sizeof cfg->hash) || cfg->hash[0] == '\0')
    return af_error_set(err, AF_EINVAL,
                        "hash must be a non-empty string of at most %d "
                        "characters",
                        AF_HASH_MAX);
  return AF_OK;
}

af_status_t af_chaos_create(af_chaos_t **out, const af_chaos_config_t *cfg,
                            af_error_t *err)
{
  if (out == NULL || cfg == NULL)
    return af_error_set(err, AF_EINVAL, "out and cfg must not be NULL");
  af_status_t st = validate_config(cfg, err);
  if (st != AF_OK)
    return st;
  af_chaos_t *c = af_calloc(1, sizeof *c);
  if (c == NULL)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  c->cfg = *cfg;
  pthread_rwlockattr_t attr;
  if (pthread_rwlockattr_init(&attr) != 0) {
    af_free(c);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
#if defined(__GLIBC__)
  /* The hot path holds the read lock constantly under load; without writer
   * preference an activation or emergency stop could starve. */
  pthread_rwlockattr_setkind_np(&attr,
                                PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
#endif
  int rc = pthread_rwlock_init(&c->lock, &attr);
  pthread_rwlockattr_destroy(&attr);
  if (rc != 0) {
    af_free(c);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  uint64_t seed = cfg->rng_seed;
  if (seed == 0)
    seed = af_clock_mono_ns(cfg->clock) ^
           (uint64_t)af_clock_wall_ns(cfg->clock) ^ (uint64_t)(uintptr_t)c;
  atomic_init(&c->rng, seed);
  atomic_init(&c->next_expiry, UINT64_MAX);
  *out = c;
  return AF_OK;
}

void af_chaos_destroy(af_chaos_t *c)
{
  if (c == NULL)
    return;
  for (size_t i = 0; i < c->count; i++)
    af_free(c->items[i]);
  af_free(c->items);
  pthread_rwlock_destroy(&c->lock);
  af_free(c);
}

/* ---- locked helpers (caller holds the write lock) ---------------------- */

static void refresh_locked(af_chaos_t *c)
{
  uint64_t next = UINT64_MAX;
  for (size_t i = 0; i < c->count; i++)
    if (c->items[i]->s.expires_mono_ns < next)
      next = c->items[i]->s.expires_mono_ns;
  atomic_store_explicit(&c->next_expiry, next, memory_order_relaxed);
  atomic_store_explicit(&c->active, c->count, memory_order_release);
}

typedef struct {
  entry_t *head, *tail;
} detached_t;

static void detach_push(detached_t *d, entry_t *e)
{
  e->next = NULL;
  if (d->tail != NULL)
    d->tail->next = e;
  else
    d->head = e;
  d->tail = e;
}

static void mark(af_chaos_t *c, entry_t *e, af_chaos_event_kind_t kind,
                 const char *actor, const char *reason)
{
  e->s.active = false;
  e->ev_kind = kind;
  e->ev_actor = actor;
  e->ev_reason = reason;
  e->ev_seq = ++c->seq;
  if (e->s.kind == AF_CHAOS_CIRCUIT_BREAKER)
    atomic_fetch_add_explicit(&c->cb_version, 1, memory_order_release);
}

/* Detaches every entry with expires_mono_ns <= now, keeping order. */
static void reap_locked(af_chaos_t *c, uint64_t now, detached_t *d)
{
  size_t w = 0;
  for (size_t i = 0; i < c->count; i++) {
    entry_t *e = c->items[i];
    if (e->s.expires_mono_ns <= now) {
      mark(c, e, AF_CHAOS_EV_EXPIRED, "system", "expired");
      detach_push(d, e);
    } else {
      c->items[w++] = e;
    }
  }
  c->count = w;
}

static size_t find_locked(const af_chaos_t *c, const char *name)
{
  for (size_t i = 0; i < c->count; i++)
    if (strcmp(c->items[i]->s.name, name) == 0)
      return i;
  return SIZE_MAX;
}

static void snapshot(const entry_t *e, af_chaos_scenario_t *out)
{
  *out = e->s;
  out->injections = atomic_load_explicit(&e->injections, memory_order_relaxed);
}

/* ---- call-outs (no lock held) ----------------------------------------- */

static bool cb_stored(af_chaos_t *c, const char *target)
{
  bool found = false;
  for (size_t i = 0; i < c->count && !found; i++) {
    const entry_t *e = c->items[i];
    found = e->s.kind == AF_CHAOS_CIRCUIT_BREAKER &&
            strcmp(e->s.target, target) == 0;
  }
  return found;
}

/* Makes the breaker's forced state agree with the stored scenarios, repeating
 * while another thread changed the circuit-breaker set during the call. */
static void sync_breaker(af_chaos_t *c, const char *target)
{
  if (c->cfg.force_breaker == NULL)
    return;
  for (;;) {
    pthread_rwlock_rdlock(&c->lock);
    uint64_t v = atomic_load_explicit(&c->cb_version, memory_order_acquire);
    bool want = cb_stored(c, target);
    pthread_rwlock_unlock(&c->lock);
    (void)c->cfg.force_breaker(target, want, c->cfg.ctx);
    if (atomic_load_explicit(&c->cb_version, memory_order_acquire) == v)
      return;
  }
}

static void emit(af_chaos_t *c, af_chaos_event_kind_t kind,
                 const af_chaos_scenario_t *s, const char *actor,
                 const char *reason, uint64_t seq)
{
  if (c->cfg.on_event == NULL)
    return;
  af_chaos_event_t ev = {
      .kind = kind,
      .scenario = s,
      .actor = actor,
      .reason = reason,
      .wall_ns = af_clock_wall_ns(c->cfg.clock),
      .seq = seq,
  };
  c->cfg.on_event(&ev, c->cfg.ctx);
}

/* Reports and frees detached entries, in order. */
static void finish(af_chaos_t *c, detached_t *d)
{
  entry_t *e = d->head;
  while (e != NULL) {
    entry_t *next = e->next;
    if (e->ev_kind == AF_CHAOS_EV_EXPIRED)
      atomic_fetch_add_explicit(&c->expirations, 1, memory_order_relaxed);
    else if (e->ev_kind == AF_CHAOS_EV_DEACTIVATED)
      atomic_fetch_add_explicit(&c->deactivations, 1, memory_order_relaxed);
    /* A replaced breaker scenario is followed by its replacement, which
     * syncs the same target. */
    if (e->s.kind == AF_CHAOS_CIRCUIT_BREAKER &&
        e->ev_kind != AF_CHAOS_EV_REPLACED)
      sync_breaker(c, e->s.target);
    af_chaos_scenario_t snap;
    snapshot(e, &snap);
    emit(c, e->ev_kind, &snap, e->ev_actor, e->ev_reason, e->ev_seq);
    af_free(e);
    e = next;
  }
  d->head = d->tail = NULL;
}

/* Reaps expired entries if any may be due. */
static void reap_due(af_chaos_t *c)
{
  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  if (now < atomic_load_explicit(&c->next_expiry, memory_order_relaxed))
    return;
  detached_t d = {NULL, NULL};
  pthread_rwlock_wrlock(&c->lock);
  reap_locked(c, now, &d);
  refresh_locked(c);
  pthread_rwlock_unlock(&c->lock);
  finish(c, &d);
}

/* ---- activation ------------------------------------------------------- */

static af_status_t build_entry(af_chaos_t *c, const af_chaos_request_t *req,
                               entry_t *e, af_error_t *err)
{
  const af_chaos_config_t *cfg = &c->cfg;
  if ((int)req->kind < AF_CHAOS_LATENCY || (int)req->kind > AF_CHAOS_TIMEOUT)
    return af_error_set(err, AF_EINVAL,
                        "kind must be one of latency, error, circuit_breaker, "
                        "resource_exhaustion, network_partition, timeout");
  if (!terminated(req->target, sizeof req->target) ||
      !af_name_valid(req->target))
    return af_error_set(err, AF_EINVAL,
                        "target must be a non-empty name of at most %d bytes "
                        "without control characters",
                        AF_NAME_MAX);
  if (!terminated(req->actor, sizeof req->actor) ||
      !terminated(req->reason, sizeof req->reason) ||
      !terminated(req->hash, sizeof req->hash))
    return af_error_set(err, AF_EINVAL,
                        "actor, reason and hash must be NUL-terminated");
  if (!terminated(req->error_type, sizeof req->error_type))
    return af_error_set(err, AF_EINVAL, "error_type must be NUL-terminated");
  if (!terminated(req->name, sizeof req->name) ||
      (req->name[0] != '\0' && !af_name_valid(req->name)))
    return af_error_set(err, AF_EINVAL,
                        "name must be empty or a name of at most %d bytes "
                        "without control characters",
                        AF_NAME_MAX);
  /* The seed's checks, in its order. */
  if (!(req->error_rate >= 0.0 && req->error_rate <= 1.0))
    return af_error_set(err, AF_EINVAL,
                        "error_rate must be between 0.0 and 1.0");
  if (!(req->resource_level >= 0.0 && req->resource_level <= 1.0)) {
    char lvl[64];
    py_float_repr(req->resource_level, lvl, sizeof lvl);
    return af_error_set(err, AF_EINVAL,
                        "resource_level must be between 0.0 and 1.0, got %s",
                        lvl);
  }
  if (req->kind == AF_CHAOS_RESOURCE_EXHAUSTION &&
      ((int)req->resource < AF_RESOURCE_CPU ||
       (int)req->resource > AF_RESOURCE_NETWORK_BANDWIDTH))
    return af_error_set(err, AF_EINVAL,
                        "resource_type must be one of cpu, memory, "
                        "connections, disk_io, network_bandwidth");

  memset(e, 0, sizeof *e);
  af_chaos_scenario_t *s = &e->s;
  switch (req->kind) {
  case AF_CHAOS_LATENCY:
    snprintf(s->name, sizeof s->name, "latency_%s_%llums", req->target,
             (unsigned long long)req->delay_ms);
    break;
  case AF_CHAOS_ERROR: {
    char rate[64];
    py_float_repr(req->error_rate, rate, sizeof rate);
    snprintf(s->name, sizeof s->name, "errors_%s_%s", req->target, rate);
    break;
  }
  case AF_CHAOS_CIRCUIT_BREAKER:
    snprintf(s->name, sizeof s->name, "circuit_open_%s", req->target);
    break;
  case AF_CHAOS_RESOURCE_EXHAUSTION: {
    char lvl[64];
    py_float_repr(req->resource_level, lvl, sizeof lvl);
    snprintf(s->name, sizeof s->name, "resource_%s_%s",
             af_resource_type_name(req->resource), lvl);
    break;
  }
  case AF_CHAOS_NETWORK_PARTITION:
    snprintf(s->name, sizeof s->name, "partition_%s", req->target);
    break;
  case AF_CHAOS_TIMEOUT:
    snprintf(s->name, sizeof s->name, "timeout_%s_%llums", req->target,
             (unsigned long long)req->delay_ms);
    break;
  }
  if (req->name[0] != '\0')
    copy_str(s->name, sizeof s->name, req->name);
  if (req->hash[0] != '\0' && strcmp(req->hash, cfg->hash) != 0) {
    /* The seed's message, hashes shortened as its sanitizer does. */
    char want[16], got[16];
    snprintf(want, sizeof want, "%.8s%s", cfg->hash,
             strlen(cfg->hash) > 8 ? "..." : "");
    snprintf(got, sizeof got, "%.8s%s", req->hash,
             strlen(req->hash) > 8 ? "..." : "");
    return af_error_set(err, AF_EHASH,
                        "Constitutional hash mismatch: expected '%s', got "
                        "'%s' (context: ChaosScenario '%s')",
                        want, got, s->name);
  }

  s->kind = req->kind;
  copy_str(s->target, sizeof s->target, req->target);
  s->delay_ms =
      req->delay_ms > cfg->max_delay_ms ? cfg->max_delay_ms : req->delay_ms;
  s->error_rate = req->error_rate;
  if (req->kind == AF_CHAOS_RESOURCE_EXHAUSTION)
    s->resource = req->resource;
  s->resource_level = req->resource_level;
  s->duration_ms =
      req->duration_ms == 0 ? cfg->default_duration_ms : req->duration_ms;
  if (s->duration_ms > cfg->max_duration_ms)
    s->duration_ms = cfg->max_duration_ms;

  if (req->blast_count > AF_CHAOS_BLAST_MAX)
    return af_error_set(err, AF_EINVAL, "blast_count must be <= %d",
                        AF_CHAOS_BLAST_MAX);
  if (req->blast_count == 0) {
    copy_str(s->blast_radius[0], sizeof s->blast_radius[0], req->target);
    s->blast_count = 1;
  }
  for (size_t i = 0; i < req->blast_count; i++) {
    const char *b = req->blast_radius[i];
    if (!terminated(b, sizeof req->blast_radius[i]) || !af_name_valid(b))
      return af_error_set(err, AF_EINVAL,
                          "blast_radius[%zu] is not a valid name", i);
    bool dup = false;
    for (size_t j = 0; j < s->blast_count && !dup; j++)
      dup = strcmp(s->blast_radius[j], b) == 0;
    if (!dup)
      copy_str(s->blast_radius[s->blast_count++], sizeof s->blast_radius[0], b);
  }
  bool inside = false;
  for (size_t i = 0; i < s->blast_count; i++) {
    e->blast_hash[i] = name_hash(s->blast_radius[i]);
    inside = inside || strcmp(s->blast_radius[i], s->target) == 0;
  }
  if (!inside)
    return af_error_set(err, AF_EBLAST,
                        "Target '%s' is not in the blast radius", s->target);
  for (size_t i = 0; i < s->blast_count; i++)
    if (is_protected(c, s->blast_radius[i]))
      return af_error_set(err, AF_EPROTECTED,
                          "Target '%s' is protected and cannot be a chaos "
                          "target",
                          s->blast_radius[i]);

  s->active = true;
  copy_str(s->actor, sizeof s->actor, or_default(req->actor, "unknown"));
  copy_str(s->reason, sizeof s->reason, req->reason);
  copy_str(s->error_type, sizeof s->error_type, req->error_type);
  copy_str(s->hash, sizeof s->hash, cfg->hash);
  return AF_OK;
}

static af_status_t reject(af_chaos_t *c, entry_t *e, af_status_t st)
{
  atomic_fetch_add_explicit(&c->rejected, 1, memory_order_relaxed);
  af_free(e);
  return st;
}

static const char stop_message[] =
    "Cannot activate chaos scenario: emergency stop is active";

af_status_t af_chaos_activate(af_chaos_t *c, const af_chaos_request_t *req,
                              af_chaos_scenario_t *out, af_error_t *err)
{
  if (c == NULL || req == NULL)
    return af_error_set(err, AF_EINVAL,
                        "chaos engine and request must not "
                        "be NULL");
  entry_t *e = af_malloc(sizeof *e);
  if (e == NULL)
    return reject(c, NULL, af_error_set(err, AF_ENOMEM, "out of memory"));
  af_status_t st = build_entry(c, req, e, err);
  if (st != AF_OK)
    return reject(c, e, st);

  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  int64_t wall = af_clock_wall_ns(c->cfg.clock);
  uint64_t dur_ns = e->s.duration_ms * AF_NS_PER_MS;
  e->s.started_wall_ns = wall;
  e->s.expires_wall_ns = wall + (int64_t)dur_ns;
  e->s.expires_mono_ns = now + dur_ns;
  atomic_init(&e->injections, 0);

  detached_t d = {NULL, NULL};
  af_chaos_scenario_t snap;
  uint64_t seq = 0;
  pthread_rwlock_wrlock(&c->lock);
  reap_locked(c, now, &d);
  if (atomic_load_explicit(&c->stopped, memory_order_relaxed)) {
    st = af_error_set(err, AF_ESTOPPED, "%s", stop_message);
  } else {
    size_t idx = find_locked(c, e->s.name);
    if (idx != SIZE_MAX) {
      entry_t *old = c->items[idx];
      mark(c, old, AF_CHAOS_EV_REPLACED, e->s.actor, "replaced");
      detach_push(&d, old);
      c->items[idx] = e;
    } else if (c->count >= c->cfg.max_scenarios) {
      st = af_error_set(err, AF_ELIMIT,
                        "Too many active chaos scenarios (max %zu)",
                        c->cfg.max_scenarios);
    } else {
      if (c->count == c->cap) {
        size_t ncap = c->cap == 0 ? 8 : c->cap * 2;
        entry_t **items = af_realloc(c->items, ncap * sizeof *items);
        if (items == NULL) {
          st = af_error_set(err, AF_ENOMEM, "out of memory");
        } else {
          c->items = items;
          c->cap = ncap;
        }
      }
      if (st == AF_OK)
        c->items[c->count++] = e;
    }
  }
  if (st == AF_OK) {
    seq = ++c->seq;
    if (e->s.kind == AF_CHAOS_CIRCUIT_BREAKER)
      atomic_fetch_add_explicit(&c->cb_version, 1, memory_order_release);
    snapshot(e, &snap);
  }
  refresh_locked(c);
  pthread_rwlock_unlock(&c->lock);

  /* Old and expired entries are reported before the new one, as their
   * sequence numbers say. */
  finish(c, &d);
  if (st != AF_OK)
    return reject(c, e, st);
  atomic_fetch_add_explicit(&c->activations, 1, memory_order_relaxed);
  if (snap.kind == AF_CHAOS_CIRCUIT_BREAKER)
    sync_breaker(c, snap.target);
  emit(c, AF_CHAOS_EV_ACTIVATED, &snap, snap.actor, req->reason, seq);
  if (out != NULL)
    *out = snap;
  return AF_OK;
}

/* ---- deactivation, queries -------------------------------------------- */

af_status_t af_chaos_deactivate(af_chaos_t *c, const char *name,
                                const char *actor, const char *reason)
{
  if (c == NULL || name == NULL)
    return AF_EINVAL;
  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  detached_t d = {NULL, NULL};
  bool found = false;
  pthread_rwlock_wrlock(&c->lock);
  reap_locked(c, now, &d);
  size_t idx = find_locked(c, name);
  if (idx != SIZE_MAX) {
    entry_t *e = c->items[idx];
    memmove(&c->items[idx], &c->items[idx + 1],
            (c->count - idx - 1) * sizeof *c->items);
    c->count--;
    mark(c, e, AF_CHAOS_EV_DEACTIVATED, or_default(actor, "unknown"),
         or_default(reason, "manual"));
    detach_push(&d, e);
    found = true;
  }
  refresh_locked(c);
  pthread_rwlock_unlock(&c->lock);
  finish(c, &d);
  return found ? AF_OK : AF_ENOTFOUND;
}

af_status_t af_chaos_list(af_chaos_t *c, af_chaos_scenario_t **out, size_t *n)
{
  if (c == NULL || out == NULL || n == NULL)
    return AF_EINVAL;
  reap_due(c);
  af_chaos_scenario_t *arr = NULL;
  af_status_t st = AF_OK;
  pthread_rwlock_rdlock(&c->lock);
  size_t count = c->count;
  if (count > 0) {
    arr = af_malloc(count * sizeof *arr);
    if (arr == NULL)
      st = AF_ENOMEM;
    else
      for (size_t i = 0; i < count; i++)
        snapshot(c->items[i], &arr[i]);
  }
  pthread_rwlock_unlock(&c->lock);
  if (st != AF_OK)
    return st;
  *out = arr;
  *n = count;
  return AF_OK;
}

af_status_t af_chaos_get(af_chaos_t *c, const char *name,
                         af_chaos_scenario_t *out)
{
  if (c == NULL || name == NULL || out == NULL)
    return AF_EINVAL;
  reap_due(c);
  pthread_rwlock_rdlock(&c->lock);
  size_t idx = find_locked(c, name);
  if (idx != SIZE_MAX)
    snapshot(c->items[idx], out);
  pthread_rwlock_unlock(&c->lock);
  return idx != SIZE_MAX ? AF_OK : AF_ENOTFOUND;
}

size_t af_chaos_emergency_stop(af_chaos_t *c, const char *actor,
                               const char *reason)
{
  if (c == NULL)
    return 0;
  actor = or_default(actor, "unknown");
  reason = reason == NULL ? "" : reason;
  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  detached_t d = {NULL, NULL};
  pthread_rwlock_wrlock(&c->lock);
  reap_locked(c, now, &d);
  size_t n = c->count;
  for (size_t i = 0; i < n; i++) {
    mark(c, c->items[i], AF_CHAOS_EV_DEACTIVATED, actor, "emergency_stop");
    detach_push(&d, c->items[i]);
  }
  c->count = 0;
  atomic_store_explicit(&c->stopped, true, memory_order_relaxed);
  uint64_t seq = ++c->seq;
  refresh_locked(c);
  pthread_rwlock_unlock(&c->lock);
  atomic_fetch_add_explicit(&c->emergency_stops, 1, memory_order_relaxed);
  finish(c, &d);
  emit(c, AF_CHAOS_EV_EMERGENCY_STOP, NULL, actor, reason, seq);
  return n;
}

void af_chaos_reset_stop(af_chaos_t *c, const char *actor)
{
  if (c == NULL)
    return;
  pthread_rwlock_wrlock(&c->lock);
  atomic_store_explicit(&c->stopped, false, memory_order_relaxed);
  uint64_t seq = ++c->seq;
  pthread_rwlock_unlock(&c->lock);
  emit(c, AF_CHAOS_EV_RESET, NULL, or_default(actor, "unknown"), "reset", seq);
}

bool af_chaos_stopped(af_chaos_t *c)
{
  return c != NULL && atomic_load_explicit(&c->stopped, memory_order_relaxed);
}

/* ---- hot path ---------------------------------------------------------- */

static bool latency_slow(af_chaos_t *c, const char *target, uint64_t *delay)
{
  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  uint64_t h = name_hash(target);
  bool hit = false;
  pthread_rwlock_rdlock(&c->lock);
  for (size_t i = 0; i < c->count && !hit; i++) {
    entry_t *e = c->items[i];
    if ((e->s.kind != AF_CHAOS_LATENCY && e->s.kind != AF_CHAOS_TIMEOUT) ||
        e->s.expires_mono_ns <= now || !covers(e, h, target))
      continue;
    hit = true;
    if (delay != NULL)
      *delay = e->s.delay_ms;
    atomic_fetch_add_explicit(&e->injections, 1, memory_order_relaxed);
  }
  pthread_rwlock_unlock(&c->lock);
  if (hit)
    atomic_fetch_add_explicit(&c->latency_injections, 1, memory_order_relaxed);
  return hit;
}

bool af_chaos_should_inject_latency(af_chaos_t *c, const char *target,
                                    uint64_t *delay_ms)
{
  if (delay_ms != NULL)
    *delay_ms = 0;
  if (c == NULL || target == NULL ||
      atomic_load_explicit(&c->active, memory_order_acquire) == 0)
    return false;
  return latency_slow(c, target, delay_ms);
}

static bool error_slow(af_chaos_t *c, const char *target)
{
  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  uint64_t h = name_hash(target);
  bool hit = false;
  pthread_rwlock_rdlock(&c->lock);
  for (size_t i = 0; i < c->count && !hit; i++) {
    entry_t *e = c->items[i];
    if (e->s.expires_mono_ns <= now)
      continue;
    if (e->s.kind == AF_CHAOS_NETWORK_PARTITION)
      hit = covers(e, h, target);
    else if (e->s.kind == AF_CHAOS_ERROR && covers(e, h, target))
      hit = rng_next(c) < e->s.error_rate;
    if (hit)
      atomic_fetch_add_explicit(&e->injections, 1, memory_order_relaxed);
  }
  pthread_rwlock_unlock(&c->lock);
  if (hit)
    atomic_fetch_add_explicit(&c->error_injections, 1, memory_order_relaxed);
  return hit;
}

bool af_chaos_should_inject_error(af_chaos_t *c, const char *target)
{
  if (c == NULL || target == NULL ||
      atomic_load_explicit(&c->active, memory_order_acquire) == 0)
    return false;
  return error_slow(c, target);
}

double af_chaos_resource_level(af_chaos_t *c, const char *target,
                               af_resource_type_t *type)
{
  if (type != NULL)
    *type = (af_resource_type_t)0;
  if (c == NULL || target == NULL ||
      atomic_load_explicit(&c->active, memory_order_acquire) == 0)
    return 0.0;
  uint64_t now = af_clock_mono_ns(c->cfg.clock);
  uint64_t h = name_hash(target);
  double level = 0.0;
  pthread_rwlock_rdlock(&c->lock);
  for (size_t i = 0; i < c->count; i++) {
    const entry_t *e = c->items[i];
    if (e->s.kind == AF_CHAOS_RESOURCE_EXHAUSTION &&
        e->s.expires_mono_ns > now && covers(e, h, target)) {
      level = e->s.resource_level;
      if (type != NULL)
        *type = e->s.resource;
      break;
    }
  }
  pthread_rwlock_unlock(&c->lock);
  return level;
}

/* ---- time, metrics ------------------------------------------------------ */

uint64_t af_chaos_tick(af_chaos_t *c)
{
  if (c == NULL)
    return UINT64_MAX;
  reap_due(c);
  return atomic_load_explicit(&c->next_expiry, memory_order_relaxed);
}

void af_chaos_metrics(af_chaos_t *c, af_chaos_metrics_t *out)
{
  memset(out, 0, sizeof *out);
  if (c == NULL)
    return;
  reap_due(c);
  out->activations = atomic_load(&c->activations);
  out->deactivations = atomic_load(&c->deactivations);
  out->expirations = atomic_load(&c->expirations);
  out->latency_injections = atomic_load(&c->latency_injections);
  out->error_injections = atomic_load(&c->error_injections);
  out->emergency_stops = atomic_load(&c->emergency_stops);
  out->rejected = atomic_load(&c->rejected);
  out->active = atomic_load(&c->active);
  out->stopped = atomic_load(&c->stopped);
}
