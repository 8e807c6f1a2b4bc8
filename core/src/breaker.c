/*
 * breaker.c - circuit breakers (pybreaker semantics) and their registry.
 *
 * Owns: the registry (hash table of breakers by name, the deadline min-heap
 * of OPEN breakers, the listener table) and every breaker (counters, config,
 * instance ids, a small queue of undelivered events).
 *
 * Hot path: state and counters are atomics. allow / record_success /
 * record_failure in CLOSED touch only atomics; the breaker mutex is taken for
 * transitions, HALF_OPEN admission, config and instance bookkeeping.
 * Invariant: `state` only changes with the breaker mutex held, so every
 * decision taken on a lock-free read is re-checked under the mutex.
 *
 * Timer: each OPEN breaker that is registered sits once in an indexed
 * min-heap keyed by its HALF_OPEN deadline (heap_idx in the breaker). The
 * heap's capacity is reserved when a breaker is registered, so pushing never
 * allocates. tick pops due entries only: O(1) when nothing is due.
 *
 * Events: enqueued on the breaker (under its mutex, seq assigned there) and
 * delivered after every lock is released by whichever thread finds the
 * queue non-empty and nobody delivering. That keeps per-breaker seq order
 * and lets listeners re-enter (their events are queued, not recursed).
 *
 * Lock order: registry mu -> breaker mu -> heap mu; listener mu is a leaf.
 * Lifetime: registry and breakers are refcounted. The table owns one ref per
 * breaker; each breaker owns one ref on the registry (for clock, listeners,
 * heap), so handles outlive unregister and registry destroy safely.
 */
#include "af/breaker.h"
#include "breaker_internal.h"

#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "af/alloc.h"

#define HEAP_NONE SIZE_MAX
#define INITIAL_BUCKETS 64

/* Config as kept per breaker: strings only when set, so 100k default
 * breakers cost a few hundred bytes each. */
typedef struct {
  uint32_t fail_max;
  uint64_t reset_timeout_ms;
  uint32_t half_open_max_calls;
  uint32_t success_threshold;
  double weight;
  char *description;                 /* NULL = "" */
  char (*excluded)[AF_NAME_MAX + 1]; /* NULL when excluded_count == 0 */
  size_t excluded_count;
  char *service; /* NULL = "" (the name) */
} compact_cfg_t;

typedef struct {
  af_breaker_event_t ev;
  char reason[AF_BREAKER_REASON_MAX + 1];
} pending_event_t;

typedef struct {
  int id; /* 0 = free slot */
  af_breaker_listener_fn fn;
  void *ctx;
} listener_t;

struct af_breaker {
  atomic_size_t refs;
  af_breaker_registry_t *reg; /* we own one registry ref */
  af_breaker_t *next;         /* hash chain, registry mu */
  uint64_t hash;
  char name[AF_NAME_MAX + 1];

  /* lock-free reads; writes of state only under mu */
  _Atomic int state;
  atomic_uint_least32_t fail_max;
  atomic_size_t excluded_count;
  atomic_uint_least64_t fail_count, success_count, rejected_count;
  atomic_uint_least64_t transition_count;
  atomic_uint_least32_t consecutive;
  atomic_uint_least64_t next_half_open_ns; /* 0 unless OPEN */
  atomic_int_least64_t last_report_wall_ns;
  atomic_uint_least64_t last_report_mono_ns;

  pthread_mutex_t mu;
  /* under mu */
  compact_cfg_t cfg;
  uint32_t half_open_inflight, half_open_successes;
  int64_t registered_wall_ns, last_transition_wall_ns;
  uint64_t opened_mono_ns;
  char (*instances)[AF_NAME_MAX + 1]; /* lazily AF_BREAKER_INSTANCES_MAX */
  size_t instance_count;
  pending_event_t *q;
  size_t q_head, q_len, q_cap;
  bool delivering;

  /* under reg->heap_mu */
  bool in_registry;
  size_t heap_idx;
  uint64_t heap_deadline;
};

struct af_breaker_registry {
  atomic_size_t refs;
  const af_clock_t *clock;
  size_t max_breakers;
  bool emit_report_events;
  atomic_uint_least64_t seq;
  atomic_uint_least64_t dropped_events;

  pthread_mutex_t mu; /* table */
  af_breaker_t **buckets;
  size_t nbuckets; /* power of two */
  size_t count;

  pthread_mutex_t heap_mu;
  af_breaker_t **heap;
  size_t heap_len, heap_cap;
  size_t last_tick_visited;
  bool dead;

  pthread_mutex_t lmu;
  listener_t listeners[AF_BREAKER_LISTENERS_MAX];
  int next_listener_id;
  atomic_size_t listener_count;
};

static const char NAME_MSG[] =
    "breaker name must be 1-128 bytes of printable UTF-8";

/* ---- config ------------------------------------------------------------ */

void af_breaker_config_init(af_breaker_config_t *cfg)
{
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof(*cfg));
  cfg->fail_max = 5;
  cfg->reset_timeout_ms = 30000;
  cfg->half_open_max_calls = 1;
  cfg->success_threshold = 1;
  cfg->weight = 1.0;
}

af_status_t af_breaker_config_validate(const af_breaker_config_t *cfg,
                                       af_error_t *err)
{
  if (cfg == NULL)
    return af_error_set(err, AF_EINVAL, "config is NULL");
  if (cfg->fail_max < 1)
    return af_error_set(err, AF_EINVAL, "fail_max must be >= 1");
  if (cfg->reset_timeout_ms < 1)
    return af_error_set(err, AF_EINVAL, "reset_timeout must be > 0");
  if (cfg->half_open_max_calls < 1)
    return af_error_set(err, AF_EINVAL, "half_open_max_calls must be >= 1");
  if (cfg->success_threshold < 1)
    return af_error_set(err, AF_EINVAL, "success_threshold must be >= 1");
  if (!isfinite(cfg->weight) || !(cfg->weight > 0.0))
    return af_error_set(err, AF_EINVAL, "weight must be > 0");
  if (memchr(cfg->description, '\0', sizeof(cfg->description)) == NULL)
    return af_error_set(err, AF_EINVAL,
                        "description must be at most 256 bytes");
  if (cfg->excluded_count > AF_BREAKER_EXCLUDED_MAX)
    return af_error_set(err, AF_EINVAL,
                        "excluded_errors must have at most 16 entries");
  for (size_t i = 0; i < cfg->excluded_count; i++) {
    if (memchr(cfg->excluded_errors[i], '\0', AF_NAME_MAX + 1) == NULL ||
        !af_name_valid(cfg->excluded_errors[i]))
      return af_error_set(
          err, AF_EINVAL,
          "excluded error type must be 1-128 bytes of printable UTF-8");
  }
  if (memchr(cfg->service, '\0', sizeof(cfg->service)) == NULL ||
      (cfg->service[0] != '\0' && !af_name_valid(cfg->service)))
    return af_error_set(err, AF_EINVAL,
                        "service must be 1-128 bytes of printable UTF-8");
  return AF_OK;
}

static void cfg_free(compact_cfg_t *c)
{
  af_free(c->description);
  af_free(c->excluded);
  af_free(c->service);
  memset(c, 0, sizeof(*c));
}

/* src must be valid. On failure *dst is untouched. */
static af_status_t cfg_compact(compact_cfg_t *dst,
                               const af_breaker_config_t *src)
{
  compact_cfg_t c;
  memset(&c, 0, sizeof(c));
  c.fail_max = src->fail_max;
  c.reset_timeout_ms = src->reset_timeout_ms;
  c.half_open_max_calls = src->half_open_max_calls;
  c.success_threshold = src->success_threshold;
  c.weight = src->weight;
  if (src->description[0] != '\0' &&
      (c.description = af_strdup(src->description)) == NULL)
    goto nomem;
  if (src->service[0] != '\0' && (c.service = af_strdup(src->service)) == NULL)
    goto nomem;
  if (src->excluded_count > 0) {
    c.excluded = af_calloc(src->excluded_count, sizeof(*c.excluded));
    if (c.excluded == NULL)
      goto nomem;
    memcpy(c.excluded, src->excluded_errors,
           src->excluded_count * sizeof(*c.excluded));
    c.excluded_count = src->excluded_count;
  }
  *dst = c;
  return AF_OK;
nomem:
  cfg_free(&c);
  return AF_ENOMEM;
}

static void cfg_expand(af_breaker_config_t *dst, const compact_cfg_t *c)
{
  af_breaker_config_init(dst);
  dst->fail_max = c->fail_max;
  dst->reset_timeout_ms = c->reset_timeout_ms;
  dst->half_open_max_calls = c->half_open_max_calls;
  dst->success_threshold = c->success_threshold;
  dst->weight = c->weight;
  if (c->description != NULL)
    strcpy(dst->description, c->description);
  if (c->service != NULL)
    strcpy(dst->service, c->service);
  if (c->excluded_count > 0)
    memcpy(dst->excluded_errors, c->excluded,
           c->excluded_count * sizeof(*c->excluded));
  dst->excluded_count = c->excluded_count;
}

static bool str_eq(const char *a, const char *b)
{
  return strcmp(a != NULL ? a : "", b != NULL ? b : "") == 0;
}

static bool cfg_equal(const compact_cfg_t *a, const compact_cfg_t *b)
{
  if (a->fail_max != b->fail_max ||
      a->reset_timeout_ms != b->reset_timeout_ms ||
      a->half_open_max_calls != b->half_open_max_calls ||
      a->success_threshold != b->success_threshold || a->weight != b->weight ||
      a->excluded_count != b->excluded_count ||
      !str_eq(a->description, b->description) ||
      !str_eq(a->service, b->service))
    return false;
  for (size_t i = 0; i < a->excluded_count; i++)
    if (strcmp(a->excluded[i], b->excluded[i]) != 0)
      return false;
  return true;
}

/* ---- registry config, refs ------------------------------------------------
 */

void af_breaker_registry_config_init(af_breaker_registry_config_t *cfg)
{
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof(*cfg));
  cfg->clock = NULL;
  cfg->max_breakers = 100000;
  cfg->emit_report_events = false;
}

static void registry_release(af_breaker_registry_t *reg)
{
  if (atomic_fetch_sub_explicit(&reg->refs, 1, memory_order_acq_rel) != 1)
    return;
  pthread_mutex_destroy(&reg->mu);
  pthread_mutex_destroy(&reg->heap_mu);
  pthread_mutex_destroy(&reg->lmu);
  af_free(reg->buckets);
  af_free(reg->heap);
  af_free(reg);
}

af_status_t af_breaker_registry_create(af_breaker_registry_t **out,
                                       const af_breaker_registry_config_t *cfg)
{
  af_breaker_registry_config_t def;
  if (out == NULL)
    return AF_EINVAL;
  if (cfg == NULL) {
    af_breaker_registry_config_init(&def);
    cfg = &def;
  }
  if (cfg->max_breakers < 1)
    return AF_EINVAL;
  af_breaker_registry_t *reg = af_calloc(1, sizeof(*reg));
  if (reg == NULL)
    return AF_ENOMEM;
  reg->buckets = af_calloc(INITIAL_BUCKETS, sizeof(*reg->buckets));
  if (reg->buckets == NULL) {
    af_free(reg);
    return AF_ENOMEM;
  }
  reg->nbuckets = INITIAL_BUCKETS;
  int inited = 0;
  if (pthread_mutex_init(&reg->mu, NULL) != 0)
    goto fail;
  inited++;
  if (pthread_mutex_init(&reg->heap_mu, NULL) != 0)
    goto fail;
  inited++;
  if (pthread_mutex_init(&reg->lmu, NULL) != 0)
    goto fail;
  atomic_init(&reg->refs, 1);
  atomic_init(&reg->seq, 0);
  atomic_init(&reg->dropped_events, 0);
  atomic_init(&reg->listener_count, 0);
  reg->clock = cfg->clock;
  reg->max_breakers = cfg->max_breakers;
  reg->emit_report_events = cfg->emit_report_events;
  *out = reg;
  return AF_OK;
fail:
  if (inited > 1)
    pthread_mutex_destroy(&reg->heap_mu);
  if (inited > 0)
    pthread_mutex_destroy(&reg->mu);
  af_free(reg->buckets);
  af_free(reg);
  return AF_ENOMEM;
}

/* ---- deadline heap (reg->heap_mu held) ------------------------------------
 */

static void heap_swap(af_breaker_registry_t *reg, size_t i, size_t j)
{
  af_breaker_t *t = reg->heap[i];
  reg->heap[i] = reg->heap[j];
  reg->heap[j] = t;
  reg->heap[i]->heap_idx = i;
  reg->heap[j]->heap_idx = j;
}

static void heap_up(af_breaker_registry_t *reg, size_t i)
{
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (reg->heap[p]->heap_deadline <= reg->heap[i]->heap_deadline)
      break;
    heap_swap(reg, i, p);
    i = p;
  }
}

static void heap_down(af_breaker_registry_t *reg, size_t i)
{
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < reg->heap_len &&
        reg->heap[l]->heap_deadline < reg->heap[m]->heap_deadline)
      m = l;
    if (r < reg->heap_len &&
        reg->heap[r]->heap_deadline < reg->heap[m]->heap_deadline)
      m = r;
    if (m == i)
      return;
    heap_swap(reg, i, m);
    i = m;
  }
}

static void heap_remove(af_breaker_registry_t *reg, af_breaker_t *b)
{
  size_t i = b->heap_idx;
  if (i == HEAP_NONE)
    return;
  size_t last = --reg->heap_len;
  if (i != last) {
    reg->heap[i] = reg->heap[last];
    reg->heap[i]->heap_idx = i;
    heap_down(reg, i);
    heap_up(reg, i);
  }
  b->heap_idx = HEAP_NONE;
}

static void heap_set(af_breaker_registry_t *reg, af_breaker_t *b,
                     uint64_t deadline)
{
  if (b->heap_idx != HEAP_NONE) {
    b->heap_deadline = deadline;
    heap_down(reg, b->heap_idx);
    heap_up(reg, b->heap_idx);
    return;
  }
  if (reg->heap_len >= reg->heap_cap)
    return; /* cannot happen: capacity is reserved per registered breaker */
  b->heap_deadline = deadline;
  b->heap_idx = reg->heap_len;
  reg->heap[reg->heap_len++] = b;
  heap_up(reg, b->heap_idx);
}

/* ---- events -----------------------------------------------------------------
 */

/* b->mu held. Drops the event (counted) if memory runs out. */
static void enqueue_locked(af_breaker_t *b, af_breaker_event_kind_t kind,
                           af_breaker_state_t from, af_breaker_state_t to,
                           const char *reason, uint64_t mono, int64_t wall)
{
  af_breaker_registry_t *reg = b->reg;
  if (atomic_load_explicit(&reg->listener_count, memory_order_acquire) == 0)
    return;
  if (b->q_len == b->q_cap) {
    if (b->q_head > 0) {
      memmove(b->q, b->q + b->q_head, (b->q_len - b->q_head) * sizeof(*b->q));
      b->q_len -= b->q_head;
      b->q_head = 0;
    } else {
      size_t cap = b->q_cap ? b->q_cap * 2 : 4;
      pending_event_t *q = af_realloc(b->q, cap * sizeof(*q));
      if (q == NULL) {
        atomic_fetch_add(&reg->dropped_events, 1);
        return;
      }
      b->q = q;
      b->q_cap = cap;
    }
  }
  pending_event_t *p = &b->q[b->q_len++];
  memset(&p->ev, 0, sizeof(p->ev));
  p->ev.kind = kind;
  p->ev.from = from;
  p->ev.to = to;
  p->ev.weight = b->cfg.weight;
  p->ev.seq = atomic_fetch_add(&reg->seq, 1) + 1;
  p->ev.mono_ns = mono;
  p->ev.wall_ns = wall;
  size_t n = strlen(reason);
  if (n > AF_BREAKER_REASON_MAX)
    n = AF_BREAKER_REASON_MAX;
  memcpy(p->reason, reason, n);
  p->reason[n] = '\0';
}

/* No lock held. Delivers queued events of b unless another thread already
 * does; the caller must hold a reference to b. */
static void deliver(af_breaker_t *b)
{
  af_breaker_registry_t *reg = b->reg;
  pthread_mutex_lock(&b->mu);
  if (b->delivering || b->q_head == b->q_len) {
    pthread_mutex_unlock(&b->mu);
    return;
  }
  b->delivering = true;
  while (b->q_head < b->q_len) {
    pending_event_t p = b->q[b->q_head++];
    pthread_mutex_unlock(&b->mu);

    listener_t ls[AF_BREAKER_LISTENERS_MAX];
    pthread_mutex_lock(&reg->lmu);
    memcpy(ls, reg->listeners, sizeof(ls));
    pthread_mutex_unlock(&reg->lmu);
    p.ev.name = b->name;
    p.ev.reason = p.reason;
    for (size_t i = 0; i < AF_BREAKER_LISTENERS_MAX; i++)
      if (ls[i].id != 0)
        ls[i].fn(&p.ev, ls[i].ctx);

    pthread_mutex_lock(&b->mu);
  }
  b->q_head = b->q_len = 0;
  b->delivering = false;
  pthread_mutex_unlock(&b->mu);
}

int af_breaker_registry_add_listener(af_breaker_registry_t *reg,
                                     af_breaker_listener_fn fn, void *ctx)
{
  if (reg == NULL || fn == NULL)
    return (int)AF_EINVAL;
  int id = (int)AF_ELIMIT;
  pthread_mutex_lock(&reg->lmu);
  for (size_t i = 0; i < AF_BREAKER_LISTENERS_MAX; i++) {
    if (reg->listeners[i].id == 0) {
      if (reg->next_listener_id == INT32_MAX)
        reg->next_listener_id = 0;
      id = ++reg->next_listener_id;
      reg->listeners[i].id = id;
      reg->listeners[i].fn = fn;
      reg->listeners[i].ctx = ctx;
      atomic_fetch_add(&reg->listener_count, 1);
      break;
    }
  }
  pthread_mutex_unlock(&reg->lmu);
  return id;
}

void af_breaker_registry_remove_listener(af_breaker_registry_t *reg, int id)
{
  if (reg == NULL || id <= 0)
    return;
  pthread_mutex_lock(&reg->lmu);
  for (size_t i = 0; i < AF_BREAKER_LISTENERS_MAX; i++) {
    if (reg->listeners[i].id == id) {
      memset(&reg->listeners[i], 0, sizeof(reg->listeners[i]));
      atomic_fetch_sub(&reg->listener_count, 1);
      break;
    }
  }
  pthread_mutex_unlock(&reg->lmu);
}

/* ---- state machine (b->mu held) -------------------------------------------
 */

static af_breaker_state_t load_state(af_breaker_t *b)
{
  return (af_breaker_state_t)atomic_load_explicit(&b->state,
                                                  memory_order_acquire);
}

static uint64_t now_mono(const af_breaker_t *b)
{
  return af_clock_mono_ns(b->reg->clock);
}

static uint64_t deadline_after(uint64_t now, uint64_t ms)
{
  uint64_t room = (UINT64_MAX - 1 - now) / AF_NS_PER_MS;
  if (ms > room)
    return UINT64_MAX - 1;
  return now + ms * AF_NS_PER_MS;
}

static void transition_locked(af_breaker_t *b, af_breaker_state_t to,
                              const char *reason)
{
  af_breaker_state_t from = load_state(b);
  if (from == to)
    return;
  af_breaker_registry_t *reg = b->reg;
  uint64_t mono = af_clock_mono_ns(reg->clock);
  int64_t wall = af_clock_wall_ns(reg->clock);
  uint64_t deadline = 0;
  if (to == AF_BREAKER_OPEN) {
    deadline = deadline_after(mono, b->cfg.reset_timeout_ms);
    b->opened_mono_ns = mono;
  } else if (to == AF_BREAKER_HALF_OPEN) {
    b->half_open_inflight = 0;
    b->half_open_successes = 0;
  } else if (to == AF_BREAKER_CLOSED) {
    atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
  }
  if (from == AF_BREAKER_OPEN || to == AF_BREAKER_OPEN) {
    pthread_mutex_lock(&reg->heap_mu);
    if (to == AF_BREAKER_OPEN) {
      if (b->in_registry && !reg->dead)
        heap_set(reg, b, deadline);
    } else {
      heap_remove(reg, b);
    }
    pthread_mutex_unlock(&reg->heap_mu);
  }
  atomic_store_explicit(&b->next_half_open_ns, deadline, memory_order_release);
  atomic_store_explicit(&b->state, (int)to, memory_order_release);
  atomic_fetch_add_explicit(&b->transition_count, 1, memory_order_relaxed);
  b->last_transition_wall_ns = wall;
  enqueue_locked(b, AF_BREAKER_EVENT_TRANSITION, from, to, reason, mono, wall);
}

static void enqueue_plain_locked(af_breaker_t *b, af_breaker_event_kind_t kind,
                                 const char *reason)
{
  af_breaker_state_t s = load_state(b);
  enqueue_locked(b, kind, s, s, reason, af_clock_mono_ns(b->reg->clock),
                 af_clock_wall_ns(b->reg->clock));
}

/* ---- breakers ---------------------------------------------------------------
 */

static void breaker_free(af_breaker_t *b)
{
  af_breaker_registry_t *reg = b->reg;
  pthread_mutex_destroy(&b->mu);
  cfg_free(&b->cfg);
  af_free(b->instances);
  af_free(b->q);
  af_free(b);
  registry_release(reg);
}

void af_breaker_retain(af_breaker_t *b)
{
  if (b != NULL)
    atomic_fetch_add_explicit(&b->refs, 1, memory_order_relaxed);
}

void af_breaker_release(af_breaker_t *b)
{
  if (b == NULL)
    return;
  if (atomic_fetch_sub_explicit(&b->refs, 1, memory_order_acq_rel) == 1)
    breaker_free(b);
}

const char *af_breaker_name(const af_breaker_t *b)
{
  return b != NULL ? b->name : NULL;
}

static uint64_t name_hash(const char *s)
{
  uint64_t h = UINT64_C(14695981039346656037);
  for (; *s != '\0'; s++) {
    h ^= (unsigned char)*s;
    h *= UINT64_C(1099511628211);
  }
  return h;
}

/* One ref (the caller's). cfg valid (compacted into the breaker). */
static af_status_t breaker_new(af_breaker_t **out, af_breaker_registry_t *reg,
                               const char *name, uint64_t hash,
                               const af_breaker_config_t *cfg)
{
  af_breaker_t *b = af_calloc(1, sizeof(*b));
  if (b == NULL)
    return AF_ENOMEM;
  if (cfg_compact(&b->cfg, cfg) != AF_OK) {
    af_free(b);
    return AF_ENOMEM;
  }
  if (pthread_mutex_init(&b->mu, NULL) != 0) {
    cfg_free(&b->cfg);
    af_free(b);
    return AF_ENOMEM;
  }
  atomic_init(&b->refs, 1);
  b->reg = reg;
  atomic_fetch_add(&reg->refs, 1);
  b->hash = hash;
  strcpy(b->name, name);
  atomic_init(&b->state, (int)AF_BREAKER_CLOSED);
  atomic_init(&b->fail_max, cfg->fail_max);
  atomic_init(&b->excluded_count, cfg->excluded_count);
  atomic_init(&b->fail_count, 0);
  atomic_init(&b->success_count, 0);
  atomic_init(&b->rejected_count, 0);
  atomic_init(&b->transition_count, 0);
  atomic_init(&b->consecutive, 0);
  atomic_init(&b->next_half_open_ns, 0);
  atomic_init(&b->last_report_wall_ns, 0);
  atomic_init(&b->last_report_mono_ns, 0);
  b->registered_wall_ns = af_clock_wall_ns(reg->clock);
  b->heap_idx = HEAP_NONE;
  *out = b;
  return AF_OK;
}

/* ---- registry table (reg->mu held) ------------------------------------------
 */

static af_breaker_t *table_find(af_breaker_registry_t *reg, const char *name,
                                uint64_t hash)
{
  af_breaker_t *b = reg->buckets[hash & (reg->nbuckets - 1)];
  for (; b != NULL; b = b->next)
    if (b->hash == hash && strcmp(b->name, name) == 0)
      return b;
  return NULL;
}

static void table_grow(af_breaker_registry_t *reg)
{
  size_t n = reg->nbuckets * 2;
  af_breaker_t **nb = af_calloc(n, sizeof(*nb));
  if (nb == NULL)
    return; /* keep the longer chains; still correct */
  for (size_t i = 0; i < reg->nbuckets; i++) {
    af_breaker_t *b = reg->buckets[i];
    while (b != NULL) {
      af_breaker_t *next = b->next;
      size_t j = b->hash & (n - 1);
      b->next = nb[j];
      nb[j] = b;
      b = next;
    }
  }
  af_free(reg->buckets);
  reg->buckets = nb;
  reg->nbuckets = n;
}

static af_breaker_t *table_unlink(af_breaker_registry_t *reg, const char *name,
                                  uint64_t hash)
{
  af_breaker_t **pp = &reg->buckets[hash & (reg->nbuckets - 1)];
  for (; *pp != NULL; pp = &(*pp)->next) {
    af_breaker_t *b = *pp;
    if (b->hash == hash && strcmp(b->name, name) == 0) {
      *pp = b->next;
      b->next = NULL;
      reg->count--;
      return b;
    }
  }
  return NULL;
}

/* ---- registry API ----------------------------------------------------------
 */

void af_breaker_registry_destroy(af_breaker_registry_t *reg)
{
  if (reg == NULL)
    return;
  af_breaker_t *all = NULL;
  pthread_mutex_lock(&reg->mu);
  for (size_t i = 0; i < reg->nbuckets; i++) {
    af_breaker_t *b = reg->buckets[i];
    while (b != NULL) {
      af_breaker_t *next = b->next;
      b->next = all;
      all = b;
      b = next;
    }
    reg->buckets[i] = NULL;
  }
  reg->count = 0;
  pthread_mutex_unlock(&reg->mu);

  pthread_mutex_lock(&reg->lmu);
  memset(reg->listeners, 0, sizeof(reg->listeners));
  atomic_store(&reg->listener_count, 0);
  pthread_mutex_unlock(&reg->lmu);

  pthread_mutex_lock(&reg->heap_mu);
  reg->dead = true;
  for (size_t i = 0; i < reg->heap_len; i++)
    reg->heap[i]->heap_idx = HEAP_NONE;
  reg->heap_len = 0;
  for (af_breaker_t *b = all; b != NULL; b = b->next)
    b->in_registry = false;
  pthread_mutex_unlock(&reg->heap_mu);

  while (all != NULL) {
    af_breaker_t *next = all->next;
    all->next = NULL;
    af_breaker_release(all);
    all = next;
  }
  registry_release(reg);
}

af_status_t af_breaker_registry_get_or_create(af_breaker_registry_t *reg,
                                              const char *name,
                                              const af_breaker_config_t *cfg,
                                              af_breaker_t **out, bool *created,
                                              af_error_t *err)
{
  if (reg == NULL)
    return af_error_set(err, AF_EINVAL, "registry is NULL");
  if (!af_name_valid(name) || strlen(name) > AF_NAME_MAX)
    return af_error_set(err, AF_EINVAL, "%s", NAME_MSG);
  af_breaker_config_t def;
  if (cfg != NULL) {
    af_status_t st = af_breaker_config_validate(cfg, err);
    if (st != AF_OK)
      return st;
  } else {
    af_breaker_config_init(&def);
  }
  uint64_t hash = name_hash(name);
  af_breaker_t *fresh = NULL;

  for (;;) {
    pthread_mutex_lock(&reg->mu);
    af_breaker_t *b = table_find(reg, name, hash);
    if (b != NULL) {
      af_breaker_retain(b);
      pthread_mutex_unlock(&reg->mu);
      if (fresh != NULL)
        af_breaker_release(fresh); /* lost a creation race */
      if (cfg != NULL) {
        compact_cfg_t nc;
        if (cfg_compact(&nc, cfg) != AF_OK) {
          af_breaker_release(b);
          return af_error_set(err, AF_ENOMEM, "out of memory");
        }
        pthread_mutex_lock(&b->mu);
        if (!cfg_equal(&b->cfg, &nc)) {
          compact_cfg_t old = b->cfg;
          b->cfg = nc;
          nc = old;
          atomic_store(&b->fail_max, b->cfg.fail_max);
          atomic_store(&b->excluded_count, b->cfg.excluded_count);
          enqueue_plain_locked(b, AF_BREAKER_EVENT_CONFIG_CHANGED,
                               "config changed");
        }
        pthread_mutex_unlock(&b->mu);
        cfg_free(&nc);
        deliver(b);
      }
      if (created != NULL)
        *created = false;
      if (out != NULL)
        *out = b;
      else
        af_breaker_release(b);
      return AF_OK;
    }
    if (fresh != NULL)
      break; /* still absent: insert, reg->mu held */
    if (reg->count >= reg->max_breakers) {
      size_t limit = reg->max_breakers;
      pthread_mutex_unlock(&reg->mu);
      return af_error_set(err, AF_ELIMIT, "too many breakers (limit %zu)",
                          limit);
    }
    pthread_mutex_unlock(&reg->mu);
    if (breaker_new(&fresh, reg, name, hash, cfg != NULL ? cfg : &def) != AF_OK)
      return af_error_set(err, AF_ENOMEM, "out of memory");
  }

  /* reg->mu held, fresh not in the table */
  if (reg->count >= reg->max_breakers) {
    size_t limit = reg->max_breakers;
    pthread_mutex_unlock(&reg->mu);
    af_breaker_release(fresh);
    return af_error_set(err, AF_ELIMIT, "too many breakers (limit %zu)", limit);
  }
  pthread_mutex_lock(&reg->heap_mu);
  if (reg->heap_cap < reg->count + 1) {
    size_t cap = reg->heap_cap ? reg->heap_cap * 2 : 16;
    af_breaker_t **h = af_realloc(reg->heap, cap * sizeof(*h));
    if (h == NULL) {
      pthread_mutex_unlock(&reg->heap_mu);
      pthread_mutex_unlock(&reg->mu);
      af_breaker_release(fresh);
      return af_error_set(err, AF_ENOMEM, "out of memory");
    }
    reg->heap = h;
    reg->heap_cap = cap;
  }
  fresh->in_registry = true;
  pthread_mutex_unlock(&reg->heap_mu);
  if ((reg->count + 1) * 4 > reg->nbuckets * 3)
    table_grow(reg);
  size_t j = hash & (reg->nbuckets - 1);
  fresh->next = reg->buckets[j];
  reg->buckets[j] = fresh;
  reg->count++;
  af_breaker_retain(fresh); /* the table's ref; fresh's first is ours */
  pthread_mutex_lock(&fresh->mu);
  enqueue_plain_locked(fresh, AF_BREAKER_EVENT_REGISTERED, "registered");
  pthread_mutex_unlock(&fresh->mu);
  pthread_mutex_unlock(&reg->mu);
  deliver(fresh);
  if (created != NULL)
    *created = true;
  if (out != NULL)
    *out = fresh;
  else
    af_breaker_release(fresh);
  return AF_OK;
}

af_status_t af_breaker_registry_find(af_breaker_registry_t *reg,
                                     const char *name, af_breaker_t **out)
{
  if (reg == NULL || name == NULL || out == NULL)
    return AF_EINVAL;
  uint64_t hash = name_hash(name);
  pthread_mutex_lock(&reg->mu);
  af_breaker_t *b = table_find(reg, name, hash);
  if (b != NULL)
    af_breaker_retain(b);
  pthread_mutex_unlock(&reg->mu);
  if (b == NULL)
    return AF_ENOTFOUND;
  *out = b;
  return AF_OK;
}

af_status_t af_breaker_registry_unregister(af_breaker_registry_t *reg,
                                           const char *name)
{
  if (reg == NULL || name == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&reg->mu);
  af_breaker_t *b = table_unlink(reg, name, name_hash(name));
  if (b == NULL) {
    pthread_mutex_unlock(&reg->mu);
    return AF_ENOTFOUND;
  }
  pthread_mutex_lock(&b->mu);
  pthread_mutex_lock(&reg->heap_mu);
  b->in_registry = false;
  heap_remove(reg, b);
  pthread_mutex_unlock(&reg->heap_mu);
  enqueue_plain_locked(b, AF_BREAKER_EVENT_UNREGISTERED, "unregistered");
  pthread_mutex_unlock(&b->mu);
  pthread_mutex_unlock(&reg->mu);
  deliver(b);
  af_breaker_release(b); /* the table's ref */
  return AF_OK;
}

/* b->mu held. */
static void reset_locked(af_breaker_t *b)
{
  atomic_store(&b->fail_count, 0);
  atomic_store(&b->success_count, 0);
  atomic_store(&b->rejected_count, 0);
  atomic_store(&b->consecutive, 0);
  b->half_open_inflight = 0;
  b->half_open_successes = 0;
  transition_locked(b, AF_BREAKER_CLOSED, "reset");
}

af_status_t af_breaker_registry_reset(af_breaker_registry_t *reg,
                                      const char *name)
{
  af_breaker_t *b;
  af_status_t st = af_breaker_registry_find(reg, name, &b);
  if (st != AF_OK)
    return st;
  pthread_mutex_lock(&b->mu);
  reset_locked(b);
  pthread_mutex_unlock(&b->mu);
  deliver(b);
  af_breaker_release(b);
  return AF_OK;
}

size_t af_breaker_registry_reset_all(af_breaker_registry_t *reg)
{
  if (reg == NULL)
    return 0;
  pthread_mutex_lock(&reg->mu);
  size_t n = 0;
  af_breaker_t **all = af_calloc(reg->count ? reg->count : 1, sizeof(*all));
  for (size_t i = 0; i < reg->nbuckets; i++) {
    for (af_breaker_t *b = reg->buckets[i]; b != NULL; b = b->next) {
      if (all != NULL) {
        af_breaker_retain(b);
        all[n++] = b;
      } else {
        /* out of memory: reset in place; the events wait in the breaker's
         * queue until its next delivery */
        pthread_mutex_lock(&b->mu);
        reset_locked(b);
        pthread_mutex_unlock(&b->mu);
        n++;
      }
    }
  }
  pthread_mutex_unlock(&reg->mu);
  if (all == NULL)
    return n;
  for (size_t i = 0; i < n; i++) {
    pthread_mutex_lock(&all[i]->mu);
    reset_locked(all[i]);
    pthread_mutex_unlock(&all[i]->mu);
    deliver(all[i]);
    af_breaker_release(all[i]);
  }
  af_free(all);
  return n;
}

size_t af_breaker_registry_count(af_breaker_registry_t *reg)
{
  if (reg == NULL)
    return 0;
  pthread_mutex_lock(&reg->mu);
  size_t n = reg->count;
  pthread_mutex_unlock(&reg->mu);
  return n;
}

/* ---- hot path -------------------------------------------------------------
 */

static bool allow_slow(af_breaker_t *b)
{
  pthread_mutex_lock(&b->mu);
  af_breaker_state_t s = load_state(b);
  if (s == AF_BREAKER_OPEN &&
      now_mono(b) >= atomic_load(&b->next_half_open_ns)) {
    transition_locked(b, AF_BREAKER_HALF_OPEN, "reset_timeout elapsed");
    s = AF_BREAKER_HALF_OPEN;
  }
  bool ok;
  switch (s) {
  case AF_BREAKER_CLOSED:
  case AF_BREAKER_DISABLED:
    ok = true;
    break;
  case AF_BREAKER_HALF_OPEN:
    ok = b->half_open_inflight < b->cfg.half_open_max_calls;
    if (ok)
      b->half_open_inflight++;
    break;
  case AF_BREAKER_OPEN:
  case AF_BREAKER_FORCED_OPEN:
  default:
    ok = false;
    break;
  }
  if (!ok)
    atomic_fetch_add_explicit(&b->rejected_count, 1, memory_order_relaxed);
  pthread_mutex_unlock(&b->mu);
  deliver(b);
  return ok;
}

bool af_breaker_allow(af_breaker_t *b)
{
  if (b == NULL)
    return false;
  af_breaker_state_t s = load_state(b);
  if (s == AF_BREAKER_CLOSED || s == AF_BREAKER_DISABLED)
    return true;
  if (s == AF_BREAKER_FORCED_OPEN) {
    atomic_fetch_add_explicit(&b->rejected_count, 1, memory_order_relaxed);
    return false;
  }
  if (s == AF_BREAKER_OPEN) {
    uint64_t dl =
        atomic_load_explicit(&b->next_half_open_ns, memory_order_acquire);
    if (dl != 0 && now_mono(b) < dl) {
      atomic_fetch_add_explicit(&b->rejected_count, 1, memory_order_relaxed);
      return false;
    }
  }
  return allow_slow(b);
}

void af_breaker_record_success(af_breaker_t *b)
{
  if (b == NULL)
    return;
  atomic_fetch_add_explicit(&b->success_count, 1, memory_order_relaxed);
  af_breaker_state_t s = load_state(b);
  if (s == AF_BREAKER_CLOSED || s == AF_BREAKER_DISABLED) {
    if (atomic_load_explicit(&b->consecutive, memory_order_relaxed) != 0)
      atomic_store_explicit(&b->consecutive, 0, memory_order_relaxed);
    return;
  }
  if (s != AF_BREAKER_HALF_OPEN)
    return;
  pthread_mutex_lock(&b->mu);
  if (load_state(b) == AF_BREAKER_HALF_OPEN) {
    if (b->half_open_inflight > 0)
      b->half_open_inflight--;
    b->half_open_successes++;
    if (b->half_open_successes >= b->cfg.success_threshold)
      transition_locked(b, AF_BREAKER_CLOSED, "success_threshold reached");
  }
  pthread_mutex_unlock(&b->mu);
  deliver(b);
}

static bool is_excluded(af_breaker_t *b, const char *error_type)
{
  bool hit = false;
  pthread_mutex_lock(&b->mu);
  for (size_t i = 0; i < b->cfg.excluded_count && !hit; i++)
    hit = strcmp(b->cfg.excluded[i], error_type) == 0;
  pthread_mutex_unlock(&b->mu);
  return hit;
}

void af_breaker_record_failure(af_breaker_t *b, const char *error_type)
{
  if (b == NULL)
    return;
  if (error_type != NULL &&
      atomic_load_explicit(&b->excluded_count, memory_order_relaxed) > 0 &&
      is_excluded(b, error_type)) {
    af_breaker_record_success(b);
    return;
  }
  atomic_fetch_add_explicit(&b->fail_count, 1, memory_order_relaxed);
  af_breaker_state_t s = load_state(b);
  if (s == AF_BREAKER_CLOSED || s == AF_BREAKER_DISABLED) {
    uint32_t c =
        atomic_fetch_add_explicit(&b->consecutive, 1, memory_order_relaxed) + 1;
    if (s == AF_BREAKER_CLOSED &&
        c >= atomic_load_explicit(&b->fail_max, memory_order_relaxed)) {
      pthread_mutex_lock(&b->mu);
      if (load_state(b) == AF_BREAKER_CLOSED &&
          atomic_load(&b->consecutive) >= b->cfg.fail_max)
        transition_locked(b, AF_BREAKER_OPEN, "fail_max reached");
      pthread_mutex_unlock(&b->mu);
      deliver(b);
    }
    return;
  }
  if (s != AF_BREAKER_HALF_OPEN)
    return;
  pthread_mutex_lock(&b->mu);
  if (load_state(b) == AF_BREAKER_HALF_OPEN) {
    if (b->half_open_inflight > 0)
      b->half_open_inflight--;
    atomic_fetch_add(&b->consecutive, 1);
    transition_locked(b, AF_BREAKER_OPEN, "half-open trial failed");
  }
  pthread_mutex_unlock(&b->mu);
  deliver(b);
}

/* ---- remote feeds ----------------------------------------------------------
 */

/* b->mu held. */
static void add_instance_locked(af_breaker_t *b, const char *id)
{
  for (size_t i = 0; i < b->instance_count; i++)
    if (strcmp(b->instances[i], id) == 0) {
      /* seen again: it becomes the most recent (last) */
      size_t last = b->instance_count - 1;
      if (i != last) {
        memmove(b->instances[i], b->instances[i + 1],
                (last - i) * sizeof(*b->instances));
        strcpy(b->instances[last], id);
      }
      return;
    }
  if (b->instances == NULL) {
    b->instances = af_calloc(AF_BREAKER_INSTANCES_MAX, sizeof(*b->instances));
    if (b->instances == NULL)
      return;
  }
  if (b->instance_count == AF_BREAKER_INSTANCES_MAX) {
    memmove(b->instances[0], b->instances[1],
            (AF_BREAKER_INSTANCES_MAX - 1) * sizeof(*b->instances));
    b->instance_count--;
  }
  strcpy(b->instances[b->instance_count++], id);
}

static void note_report(af_breaker_t *b, const char *instance_id)
{
  const af_clock_t *clock = b->reg->clock;
  atomic_store(&b->last_report_wall_ns, af_clock_wall_ns(clock));
  atomic_store(&b->last_report_mono_ns, af_clock_mono_ns(clock));
  if (instance_id != NULL && af_name_valid(instance_id) &&
      strlen(instance_id) <= AF_NAME_MAX) {
    pthread_mutex_lock(&b->mu);
    add_instance_locked(b, instance_id);
    pthread_mutex_unlock(&b->mu);
  }
}

af_breaker_state_t af_breaker_report_outcome(af_breaker_t *b, bool success,
                                             const char *error_type,
                                             const char *instance_id)
{
  if (b == NULL)
    return AF_BREAKER_CLOSED;
  note_report(b, instance_id);
  uint64_t tc = atomic_load(&b->transition_count);
  if (success)
    af_breaker_record_success(b);
  else
    af_breaker_record_failure(b, error_type);
  if (b->reg->emit_report_events && atomic_load(&b->transition_count) == tc) {
    pthread_mutex_lock(&b->mu);
    enqueue_plain_locked(b, AF_BREAKER_EVENT_REPORT, "reported");
    pthread_mutex_unlock(&b->mu);
    deliver(b);
  }
  return load_state(b);
}

static bool is_forced(af_breaker_state_t s)
{
  return s == AF_BREAKER_FORCED_OPEN || s == AF_BREAKER_DISABLED;
}

static bool is_plain(af_breaker_state_t s)
{
  return s == AF_BREAKER_CLOSED || s == AF_BREAKER_OPEN ||
         s == AF_BREAKER_HALF_OPEN;
}

af_status_t af_breaker_report_state(af_breaker_t *b, af_breaker_state_t state,
                                    const char *instance_id)
{
  if (b == NULL || !is_plain(state))
    return AF_EINVAL;
  note_report(b, instance_id);
  af_status_t st = AF_OK;
  pthread_mutex_lock(&b->mu);
  af_breaker_state_t cur = load_state(b);
  if (is_forced(cur))
    st = AF_ESTATE;
  else if (cur != state)
    transition_locked(b, state, "reported");
  else if (b->reg->emit_report_events)
    enqueue_plain_locked(b, AF_BREAKER_EVENT_REPORT, "reported");
  pthread_mutex_unlock(&b->mu);
  deliver(b);
  return st;
}

/* ---- control ----------------------------------------------------------------
 */

af_status_t af_breaker_force(af_breaker_t *b, af_breaker_state_t forced,
                             const char *reason)
{
  if (b == NULL || !is_forced(forced))
    return AF_EINVAL;
  pthread_mutex_lock(&b->mu);
  transition_locked(b, forced, reason != NULL ? reason : "forced");
  pthread_mutex_unlock(&b->mu);
  deliver(b);
  return AF_OK;
}

af_status_t af_breaker_unforce(af_breaker_t *b, const char *reason)
{
  if (b == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&b->mu);
  if (!is_forced(load_state(b))) {
    pthread_mutex_unlock(&b->mu);
    return AF_ESTATE;
  }
  atomic_store(&b->consecutive, 0);
  b->half_open_inflight = 0;
  b->half_open_successes = 0;
  transition_locked(b, AF_BREAKER_CLOSED, reason != NULL ? reason : "unforced");
  pthread_mutex_unlock(&b->mu);
  deliver(b);
  return AF_OK;
}

af_status_t af_breaker_set_state(af_breaker_t *b, af_breaker_state_t state,
                                 const char *reason)
{
  if (b == NULL || !is_plain(state))
    return AF_EINVAL;
  pthread_mutex_lock(&b->mu);
  if (is_forced(load_state(b))) {
    pthread_mutex_unlock(&b->mu);
    return AF_ESTATE;
  }
  transition_locked(b, state, reason != NULL ? reason : "set");
  pthread_mutex_unlock(&b->mu);
  deliver(b);
  return AF_OK;
}

af_breaker_state_t af_breaker_state(af_breaker_t *b)
{
  return b != NULL ? load_state(b) : AF_BREAKER_CLOSED;
}

/* ---- inspection -------------------------------------------------------------
 */

void af_breaker_info(af_breaker_t *b, af_breaker_info_t *out)
{
  if (b == NULL || out == NULL)
    return;
  memset(out, 0, sizeof(*out));
  strcpy(out->name, b->name);
  pthread_mutex_lock(&b->mu);
  out->state = load_state(b);
  cfg_expand(&out->config, &b->cfg);
  out->fail_count = atomic_load(&b->fail_count);
  out->success_count = atomic_load(&b->success_count);
  out->rejected_count = atomic_load(&b->rejected_count);
  out->transition_count = atomic_load(&b->transition_count);
  out->consecutive_failures = atomic_load(&b->consecutive);
  out->consecutive_successes =
      load_state(b) == AF_BREAKER_HALF_OPEN ? b->half_open_successes : 0;
  out->registered_wall_ns = b->registered_wall_ns;
  out->last_transition_wall_ns = b->last_transition_wall_ns;
  out->last_report_wall_ns = atomic_load(&b->last_report_wall_ns);
  out->last_report_mono_ns = atomic_load(&b->last_report_mono_ns);
  out->opened_mono_ns = b->opened_mono_ns;
  out->next_half_open_mono_ns = atomic_load(&b->next_half_open_ns);
  if (b->instance_count > 0)
    memcpy(out->instances, b->instances,
           b->instance_count * sizeof(*b->instances));
  out->instance_count = b->instance_count;
  pthread_mutex_unlock(&b->mu);
}

static int info_cmp(const void *a, const void *b)
{
  return strcmp(((const af_breaker_info_t *)a)->name,
                ((const af_breaker_info_t *)b)->name);
}

af_status_t af_breaker_registry_list(af_breaker_registry_t *reg,
                                     af_breaker_info_t **out, size_t *n)
{
  if (reg == NULL || out == NULL || n == NULL)
    return AF_EINVAL;
  pthread_mutex_lock(&reg->mu);
  size_t count = reg->count;
  af_breaker_info_t *arr = NULL;
  if (count > 0) {
    arr = af_calloc(count, sizeof(*arr));
    if (arr == NULL) {
      pthread_mutex_unlock(&reg->mu);
      return AF_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < reg->nbuckets; i++)
      for (af_breaker_t *b = reg->buckets[i]; b != NULL; b = b->next)
        af_breaker_info(b, &arr[k++]);
  }
  pthread_mutex_unlock(&reg->mu);
  if (count > 1)
    qsort(arr, count, sizeof(*arr), info_cmp);
  *out = arr;
  *n = count;
  return AF_OK;
}

/* ---- timer ------------------------------------------------------------------
 */

#define TICK_BATCH 64

uint64_t af_breaker_registry_tick(af_breaker_registry_t *reg)
{
  if (reg == NULL)
    return UINT64_MAX;
  uint64_t now = af_clock_mono_ns(reg->clock);
  size_t visited = 0;
  for (;;) {
    af_breaker_t *batch[TICK_BATCH];
    size_t n = 0;
    pthread_mutex_lock(&reg->heap_mu);
    while (n < TICK_BATCH && reg->heap_len > 0 &&
           reg->heap[0]->heap_deadline <= now) {
      af_breaker_t *b = reg->heap[0];
      heap_remove(reg, b);
      af_breaker_retain(b); /* in_registry: the table still holds a ref */
      batch[n++] = b;
    }
    pthread_mutex_unlock(&reg->heap_mu);
    visited += n;
    for (size_t i = 0; i < n; i++) {
      af_breaker_t *b = batch[i];
      pthread_mutex_lock(&b->mu);
      if (load_state(b) == AF_BREAKER_OPEN &&
          atomic_load(&b->next_half_open_ns) <= now)
        transition_locked(b, AF_BREAKER_HALF_OPEN, "reset_timeout elapsed");
      pthread_mutex_unlock(&b->mu);
      deliver(b);
      af_breaker_release(b);
    }
    if (n < TICK_BATCH)
      break;
  }
  pthread_mutex_lock(&reg->heap_mu);
  uint64_t next = reg->heap_len > 0 ? reg->heap[0]->heap_deadline : UINT64_MAX;
  reg->last_tick_visited = visited;
  pthread_mutex_unlock(&reg->heap_mu);
  return next;
}

size_t af__breaker_registry_last_tick_visited(af_breaker_registry_t *reg)
{
  pthread_mutex_lock(&reg->heap_mu);
  size_t n = reg->last_tick_visited;
  pthread_mutex_unlock(&reg->heap_mu);
  return n;
}

size_t af__breaker_registry_heap_size(af_breaker_registry_t *reg)
{
  pthread_mutex_lock(&reg->heap_mu);
  size_t n = reg->heap_len;
  pthread_mutex_unlock(&reg->heap_mu);
  return n;
}
