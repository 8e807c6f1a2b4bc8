/*
 * meter.c - usage metering: bounded lock-free MPSC ring + batch flusher.
 *
 * What it owns: one ring of exactly `capacity` fixed-size slots, allocated at
 * create; a `pending` buffer of batch_size events (the batch being offered to
 * the sink, kept across sink errors); the optional flusher thread.
 *
 * The ring is Dmitry Vyukov's bounded MPMC queue with per-slot sequence
 * numbers, used here with one consumer. Sequence numbers are kept doubled so
 * that any capacity (1 included, no power-of-two rounding) works and the
 * limit is exactly `capacity`:
 *   slot seq == 2*pos          free for the producer of position pos
 *   slot seq == 2*pos + 1      holds the event of position pos
 *   slot seq == 2*(pos + cap)  released by the consumer, free for pos + cap
 * Producers claim a position with a CAS on enqueue_pos, copy the event in and
 * publish it with a release store of seq; no allocation, no lock, no wait. A
 * producer that finds its slot still holding the event of pos - cap reports
 * the queue full.
 *
 * Invariants:
 *   - Only the consumer (the holder of consumer_busy) advances dequeue_pos,
 *     touches `pending`, `failures` and `next_retry_ns`.
 *   - Events leave in position order; an event refused by the sink stays in
 *     `pending` and is offered again first. Nothing is dropped after enqueue
 *     returned AF_OK: it is flushed, drained, or still counted in depth.
 *   - depth = (enqueue_pos - dequeue_pos) + pending_n.
 *
 * Threading: producers are lock-free. The consumer role is a flag taken with
 * an atomic exchange by drain / flush_now / the flusher round / shutdown, so
 * the sink is called with no lock held. `lock` + `cond` only serve the
 * flusher thread's sleeps, its stop request and flush requests
 * (CLOCK_MONOTONIC timed waits);
 * scheduling decisions use the injected clock.
 */
#define _POSIX_C_SOURCE 200809L
#include "af/meter.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "af/alloc.h"

typedef struct {
  _Atomic uint64_t seq;
  af_meter_event_t ev;
} slot_t;

struct af_meter {
  af_meter_config_t cfg;
  slot_t *slots;
  size_t cap;

  /* Producer and consumer positions on separate cache lines. */
  char pad0[64];
  _Atomic uint64_t enqueue_pos;
  char pad1[64];
  _Atomic uint64_t dequeue_pos;
  char pad2[64];

  _Atomic uint64_t queued, flushed, drained, dropped_queue_full,
      dropped_invalid, dropped_shutdown, sink_errors, duplicates, batches,
      unflushed;

  _Atomic bool closed;
  _Atomic bool running;
  _Atomic bool consumer_busy;
  _Atomic bool flush_requested; /* af_meter_request_flush: flush partials */

  uint64_t id_prefix;
  _Atomic uint64_t id_counter;

  /* Consumer state (owned by the consumer_busy holder). */
  af_meter_event_t *pending;
  _Atomic size_t pending_n;
  unsigned failures;
  uint64_t next_retry_ns;

  /* Flusher thread. */
  pthread_mutex_t lock;
  pthread_cond_t cond;
  bool stopping; /* under lock */
  pthread_t thread;
};

/* ---- names ------------------------------------------------------------ */

static const char *const operation_names[AF_METER_OPERATION_COUNT] = {
    "constitutional_validation",
    "agent_message",
    "policy_evaluation",
    "compliance_check",
    "audit_write",
    "deliberation_request",
    "hitl_approval",
    "blockchain_anchor",
};

static const char *const tier_names[AF_METER_TIER_COUNT] = {
    "standard",
    "enhanced",
    "deliberation",
    "enterprise",
};

static bool operation_known(af_meter_operation_t op)
{
  return (int)op >= 1 && (int)op <= AF_METER_OPERATION_COUNT;
}

static bool tier_known(af_meter_tier_t t)
{
  return (int)t >= 1 && (int)t <= AF_METER_TIER_COUNT;
}

const char *af_meter_operation_name(af_meter_operation_t op)
{
  return operation_known(op) ? operation_names[(int)op - 1] : "unknown";
}

const char *af_meter_tier_name(af_meter_tier_t t)
{
  return tier_known(t) ? tier_names[(int)t - 1] : "unknown";
}

bool af_meter_operation_parse(const char *s, af_meter_operation_t *out)
{
  if (s == NULL || out == NULL)
    return false;
  for (int i = 0; i < AF_METER_OPERATION_COUNT; i++) {
    if (strcasecmp(s, operation_names[i]) == 0) {
      *out = (af_meter_operation_t)(i + 1);
      return true;
    }
  }
  return false;
}

bool af_meter_tier_parse(const char *s, af_meter_tier_t *out)
{
  if (s == NULL || out == NULL)
    return false;
  for (int i = 0; i < AF_METER_TIER_COUNT; i++) {
    if (strcasecmp(s, tier_names[i]) == 0) {
      *out = (af_meter_tier_t)(i + 1);
      return true;
    }
  }
  return false;
}

/* ---- events ----------------------------------------------------------- */

void af_meter_event_init(af_meter_event_t *e, const char *tenant_id,
                         af_meter_operation_t op)
{
  if (e == NULL)
    return;
  memset(e, 0, sizeof(*e));
  if (tenant_id != NULL) {
    size_t n = strnlen(tenant_id, sizeof(e->tenant_id));
    /* n == sizeof: too long; copied unterminated so validate says so. */
    memcpy(e->tenant_id, tenant_id, n);
  }
  e->operation = op;
  e->tier = AF_TIER_STANDARD;
  e->units = 1;
  e->compliance_score = 1.0;
  e->constitutional_valid = true;
}

/* Length of the string in buf[size], or size if it has no NUL. */
static size_t field_len(const char *buf, size_t size)
{
  const char *nul = memchr(buf, '\0', size);
  return nul == NULL ? size : (size_t)(nul - buf);
}

static af_status_t check_name(const char *field, const char *buf, size_t size,
                              bool required, af_error_t *err)
{
  size_t n = field_len(buf, size);
  if (n == 0) {
    if (required)
      return af_error_set(err, AF_EINVAL, "%s is required", field);
    return AF_OK;
  }
  if (n == size)
    return af_error_set(err, AF_EINVAL, "%s must be at most %d bytes", field,
                        AF_NAME_MAX);
  if (!af_name_valid(buf))
    return af_error_set(err, AF_EINVAL,
                        "%s must be valid UTF-8 without control characters",
                        field);
  return AF_OK;
}

af_status_t af_meter_event_validate(const af_meter_event_t *e, af_error_t *err)
{
  if (e == NULL)
    return af_error_set(err, AF_EINVAL, "event is required");
  af_status_t rc =
      check_name("tenant_id", e->tenant_id, sizeof(e->tenant_id), true, err);
  if (rc != AF_OK)
    return rc;
  rc = check_name("agent_id", e->agent_id, sizeof(e->agent_id), false, err);
  if (rc != AF_OK)
    return rc;
  size_t id_len = field_len(e->event_id, sizeof(e->event_id));
  if (id_len == sizeof(e->event_id))
    return af_error_set(err, AF_EINVAL,
                        "event_id must be at most %d characters",
                        AF_EVENT_ID_MAX);
  for (size_t i = 0; i < id_len; i++) {
    unsigned char c = (unsigned char)e->event_id[i];
    if (c < 0x21 || c > 0x7e)
      return af_error_set(err, AF_EINVAL,
                          "event_id must be printable ASCII without spaces");
  }
  if (!operation_known(e->operation))
    return af_error_set(err, AF_EINVAL, "unknown operation");
  if (!tier_known(e->tier))
    return af_error_set(err, AF_EINVAL, "unknown tier");
  if (!isfinite(e->latency_ms))
    return af_error_set(err, AF_EINVAL, "latency_ms must be a finite number");
  if (e->latency_ms < 0.0)
    return af_error_set(err, AF_EINVAL, "latency_ms must be >= 0");
  if (!(e->compliance_score >= 0.0 && e->compliance_score <= 1.0))
    return af_error_set(err, AF_EINVAL,
                        "compliance_score must be between 0.0 and 1.0");
  if (e->timestamp_wall_ns < 0)
    return af_error_set(err, AF_EINVAL, "timestamp_wall_ns must be >= 0");
  if (field_len(e->hash, sizeof(e->hash)) == sizeof(e->hash))
    return af_error_set(err, AF_EINVAL, "hash must be at most %d characters",
                        AF_HASH_MAX);
  if (field_len(e->metadata, sizeof(e->metadata)) == sizeof(e->metadata))
    return af_error_set(err, AF_EINVAL, "metadata must be at most %d bytes",
                        AF_METER_METADATA_MAX - 1);
  return AF_OK;
}

/* ---- config and lifecycle --------------------------------------------- */

void af_meter_config_init(af_meter_config_t *cfg)
{
  if (cfg == NULL)
    return;
  memset(cfg, 0, sizeof(*cfg));
  cfg->capacity = 10000;
  cfg->batch_size = 100;
  cfg->flush_interval_ms = 1000;
  cfg->max_retry_backoff_ms = 30000;
  snprintf(cfg->hash, sizeof(cfg->hash), "%s", AF_CONSTITUTIONAL_HASH_DEFAULT);
}

static af_status_t validate_config(const af_meter_config_t *cfg,
                                   af_error_t *err)
{
  if (cfg->capacity < 1 || cfg->capacity > AF_METER_CAPACITY_MAX)
    return af_error_set(err, AF_EINVAL, "capacity must be between 1 and %zu",
                        AF_METER_CAPACITY_MAX);
  if (cfg->batch_size < 1 || cfg->batch_size > cfg->capacity)
    return af_error_set(err, AF_EINVAL,
                        "batch_size must be between 1 and capacity");
  if (cfg->flush_interval_ms < 1)
    return af_error_set(err, AF_EINVAL, "flush_interval_ms must be >= 1");
  if (cfg->max_retry_backoff_ms < cfg->flush_interval_ms)
    return af_error_set(err, AF_EINVAL,
                        "max_retry_backoff_ms must be >= flush_interval_ms");
  size_t hash_len = field_len(cfg->hash, sizeof(cfg->hash));
  if (hash_len == 0)
    return af_error_set(err, AF_EINVAL, "hash is required");
  if (hash_len == sizeof(cfg->hash))
    return af_error_set(err, AF_EINVAL, "hash must be at most %d characters",
                        AF_HASH_MAX);
  return AF_OK;
}

static uint64_t splitmix64(uint64_t x)
{
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

static uint64_t random_prefix(const void *salt)
{
  uint64_t r = 0;
  if (getrandom(&r, sizeof(r), GRND_NONBLOCK) == (ssize_t)sizeof(r))
    return r;
  /* No entropy available yet: mix what differs between meters and runs. */
  r = splitmix64(af_clock_mono_ns(af_clock_system()));
  r = splitmix64(r ^ (uint64_t)af_clock_wall_ns(af_clock_system()));
  r = splitmix64(r ^ (uint64_t)getpid());
  return splitmix64(r ^ (uint64_t)(uintptr_t)salt);
}

af_status_t af_meter_create(af_meter_t **out, const af_meter_config_t *cfg,
                            af_error_t *err)
{
  if (out == NULL)
    return af_error_set(err, AF_EINVAL, "out is required");
  if (cfg == NULL)
    return af_error_set(err, AF_EINVAL, "config is required");
  af_status_t rc = validate_config(cfg, err);
  if (rc != AF_OK)
    return rc;

  af_meter_t *m = af_calloc(1, sizeof(*m));
  if (m == NULL)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  m->cfg = *cfg;
  m->cap = cfg->capacity;
  m->slots = af_calloc(m->cap, sizeof(*m->slots));
  m->pending = af_calloc(cfg->batch_size, sizeof(*m->pending));
  if (m->slots == NULL || m->pending == NULL)
    goto nomem;

  pthread_condattr_t ca;
  if (pthread_condattr_init(&ca) != 0)
    goto nomem;
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  int crc = pthread_cond_init(&m->cond, &ca);
  pthread_condattr_destroy(&ca);
  if (crc != 0)
    goto nomem;
  if (pthread_mutex_init(&m->lock, NULL) != 0) {
    pthread_cond_destroy(&m->cond);
    goto nomem;
  }

  for (size_t i = 0; i < m->cap; i++)
    atomic_init(&m->slots[i].seq, (uint64_t)(2 * i));
  atomic_init(&m->enqueue_pos, 0);
  atomic_init(&m->dequeue_pos, 0);
  m->id_prefix = random_prefix(m);
  atomic_init(&m->id_counter, 0);
  *out = m;
  return AF_OK;

nomem:
  af_free(m->pending);
  af_free(m->slots);
  af_free(m);
  return af_error_set(err, AF_ENOMEM, "out of memory");
}

static void stop_flusher(af_meter_t *m)
{
  if (!atomic_load(&m->running))
    return;
  pthread_mutex_lock(&m->lock);
  m->stopping = true;
  pthread_cond_broadcast(&m->cond);
  pthread_mutex_unlock(&m->lock);
  pthread_join(m->thread, NULL);
  atomic_store(&m->running, false);
}

void af_meter_destroy(af_meter_t *m)
{
  if (m == NULL)
    return;
  stop_flusher(m);
  pthread_cond_destroy(&m->cond);
  pthread_mutex_destroy(&m->lock);
  af_free(m->pending);
  af_free(m->slots);
  af_free(m);
}

/* ---- producers -------------------------------------------------------- */

void af_meter_generate_event_id(af_meter_t *m, char out[AF_EVENT_ID_MAX + 1])
{
  if (m == NULL || out == NULL)
    return;
  uint64_t n =
      atomic_fetch_add_explicit(&m->id_counter, 1, memory_order_relaxed);
  /* By hand, not snprintf("%016" PRIx64 "%016" PRIx64): this runs on the
   * enqueue hot path, where snprintf alone took half the budget. */
  static const char hex[] = "0123456789abcdef";
  for (int i = 0; i < 16; i++) {
    out[15 - i] = hex[(m->id_prefix >> (4 * i)) & 0xf];
    out[31 - i] = hex[(n >> (4 * i)) & 0xf];
  }
  out[32] = '\0';
}

static size_t ring_depth(af_meter_t *m)
{
  uint64_t d = atomic_load_explicit(&m->dequeue_pos, memory_order_acquire);
  uint64_t e = atomic_load_explicit(&m->enqueue_pos, memory_order_acquire);
  return e > d ? (size_t)(e - d) : 0;
}

/* Claims a slot and copies ev in. Returns false if capacity events are
 * already queued. Lock-free. */
static bool ring_push(af_meter_t *m, const af_meter_event_t *ev,
                      uint64_t *pos_out)
{
  uint64_t pos = atomic_load_explicit(&m->enqueue_pos, memory_order_relaxed);
  slot_t *slot;
  for (;;) {
    slot = &m->slots[pos % m->cap];
    uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
    int64_t dif = (int64_t)(seq - 2 * pos);
    if (dif == 0) {
      if (atomic_compare_exchange_weak_explicit(&m->enqueue_pos, &pos, pos + 1,
                                                memory_order_relaxed,
                                                memory_order_relaxed))
        break;
    } else if (dif < 0) {
      return false;
    } else {
      pos = atomic_load_explicit(&m->enqueue_pos, memory_order_relaxed);
    }
  }
  slot->ev = *ev;
  atomic_store_explicit(&slot->seq, 2 * pos + 1, memory_order_release);
  *pos_out = pos;
  return true;
}

af_status_t af_meter_enqueue(af_meter_t *m, af_meter_event_t *ev,
                             af_error_t *err)
{
  if (m == NULL)
    return af_error_set(err, AF_EINVAL, "meter is required");
  if (atomic_load_explicit(&m->closed, memory_order_acquire)) {
    atomic_fetch_add_explicit(&m->dropped_shutdown, 1, memory_order_relaxed);
    return af_error_set(err, AF_ESHUTDOWN, "meter is shut down");
  }
  af_status_t rc = af_meter_event_validate(ev, err);
  if (rc != AF_OK) {
    atomic_fetch_add_explicit(&m->dropped_invalid, 1, memory_order_relaxed);
    return rc;
  }
  if (ev->event_id[0] == '\0')
    af_meter_generate_event_id(m, ev->event_id);
  if (ev->timestamp_wall_ns == 0)
    ev->timestamp_wall_ns = af_clock_wall_ns(m->cfg.clock);
  if (ev->hash[0] == '\0')
    memcpy(ev->hash, m->cfg.hash, sizeof(ev->hash));
  else if (strcmp(ev->hash, m->cfg.hash) != 0) {
    atomic_fetch_add_explicit(&m->dropped_invalid, 1, memory_order_relaxed);
    return af_error_set(err, AF_EHASH, "constitutional hash mismatch");
  }

  uint64_t pos;
  if (!ring_push(m, ev, &pos)) {
    atomic_fetch_add_explicit(&m->dropped_queue_full, 1, memory_order_relaxed);
    return af_error_set(err, AF_EFULL, "metering queue is full");
  }
  atomic_fetch_add_explicit(&m->queued, 1, memory_order_relaxed);

  /* Wake the flusher when a full batch is waiting. Signalling without the
   * mutex may be missed; the flusher's interval bounds the delay. */
  if (atomic_load_explicit(&m->running, memory_order_relaxed)) {
    uint64_t d = atomic_load_explicit(&m->dequeue_pos, memory_order_relaxed);
    uint64_t depth = pos + 1 > d ? pos + 1 - d : 0;
    if (depth % m->cfg.batch_size == 0)
      pthread_cond_signal(&m->cond);
  }
  return AF_OK;
}

/* ---- consumer --------------------------------------------------------- */

static bool consumer_acquire(af_meter_t *m)
{
  return !atomic_exchange_explicit(&m->consumer_busy, true,
                                   memory_order_acquire);
}

static void consumer_release(af_meter_t *m)
{
  atomic_store_explicit(&m->consumer_busy, false, memory_order_release);
}

/* Pops up to max published events in position order. Consumer only. */
static size_t ring_pop(af_meter_t *m, af_meter_event_t *out, size_t max)
{
  uint64_t pos = atomic_load_explicit(&m->dequeue_pos, memory_order_relaxed);
  size_t n = 0;
  while (n < max) {
    slot_t *slot = &m->slots[pos % m->cap];
    uint64_t seq = atomic_load_explicit(&slot->seq, memory_order_acquire);
    if (seq != 2 * pos + 1)
      break; /* empty, or its producer is still copying */
    out[n++] = slot->ev;
    atomic_store_explicit(&slot->seq, 2 * (pos + m->cap), memory_order_release);
    pos++;
    atomic_store_explicit(&m->dequeue_pos, pos, memory_order_release);
  }
  return n;
}

static uint64_t backoff_ns(const af_meter_t *m)
{
  uint64_t ms = m->cfg.max_retry_backoff_ms;
  unsigned shift = m->failures > 0 ? m->failures - 1 : 0;
  if (shift < 63 && m->cfg.flush_interval_ms <= (ms >> shift))
    ms = m->cfg.flush_interval_ms << shift;
  if (ms > UINT64_MAX / AF_NS_PER_MS)
    return UINT64_MAX;
  return ms * AF_NS_PER_MS;
}

/* Offers batches to the sink until the queue is empty, the sink refuses one,
 * (unless partial_ok) fewer than batch_size events are waiting, or (unless
 * ignore_backoff) a refused batch is still backing off. Consumer only.
 * Returns how many events the sink accepted; *failed tells whether the last
 * sink call failed. */
static size_t flush_batches(af_meter_t *m, bool partial_ok, bool ignore_backoff,
                            bool *failed)
{
  size_t total = 0;
  size_t batch = m->cfg.batch_size;
  *failed = false;
  for (;;) {
    size_t n = atomic_load_explicit(&m->pending_n, memory_order_relaxed);
    /* While failures > 0, pending is a batch the sink refused: it is
     * offered again as it was, never topped up with newer events. */
    if (n == 0 || (n < batch && m->failures == 0)) {
      n += ring_pop(m, m->pending + n, batch - n);
      atomic_store_explicit(&m->pending_n, n, memory_order_relaxed);
    }
    if (n == 0 || (n < batch && !partial_ok))
      break;
    uint64_t now = af_clock_mono_ns(m->cfg.clock);
    if (!ignore_backoff && m->failures > 0 && now < m->next_retry_ns)
      break;
    size_t dup = 0;
    af_status_t rc = m->cfg.sink(m->pending, n, &dup, m->cfg.sink_ctx);
    if (rc != AF_OK) {
      atomic_fetch_add_explicit(&m->sink_errors, 1, memory_order_relaxed);
      if (m->failures < UINT32_MAX)
        m->failures++;
      uint64_t b = backoff_ns(m);
      m->next_retry_ns = now > UINT64_MAX - b ? UINT64_MAX : now + b;
      *failed = true;
      break;
    }
    if (dup > n)
      dup = n;
    m->failures = 0;
    atomic_store_explicit(&m->pending_n, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->flushed, n, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->duplicates, dup, memory_order_relaxed);
    atomic_fetch_add_explicit(&m->batches, 1, memory_order_relaxed);
    total += n;
    if (m->cfg.after_sink != NULL)
      m->cfg.after_sink(m->cfg.sink_ctx);
  }
  return total;
}

size_t af_meter_drain(af_meter_t *m, af_meter_event_t *out, size_t max)
{
  if (m == NULL || out == NULL || max == 0)
    return 0;
  if (atomic_load(&m->running) || !consumer_acquire(m))
    return 0;
  size_t pn = atomic_load_explicit(&m->pending_n, memory_order_relaxed);
  size_t n = pn < max ? pn : max;
  if (n > 0) {
    memcpy(out, m->pending, n * sizeof(*out));
    memmove(m->pending, m->pending + n, (pn - n) * sizeof(*m->pending));
    atomic_store_explicit(&m->pending_n, pn - n, memory_order_relaxed);
  }
  n += ring_pop(m, out + n, max - n);
  atomic_fetch_add_explicit(&m->drained, n, memory_order_relaxed);
  consumer_release(m);
  return n;
}

size_t af_meter_flush_now(af_meter_t *m)
{
  if (m == NULL || m->cfg.sink == NULL)
    return 0;
  if (atomic_load(&m->running) || !consumer_acquire(m))
    return 0;
  bool failed;
  size_t n = flush_batches(m, true, true, &failed);
  consumer_release(m);
  return n;
}

/* Waits up to ns of real time on cond, or until signalled. Holds m->lock. */
static void timed_wait_locked(af_meter_t *m, uint64_t ns)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  uint64_t sec = ns / AF_NS_PER_SEC;
  long nsec = (long)(ns % AF_NS_PER_SEC) + ts.tv_nsec;
  if (nsec >= 1000000000L) {
    nsec -= 1000000000L;
    sec++;
  }
  ts.tv_sec += (time_t)sec;
  ts.tv_nsec = nsec;
  int rc;
  do {
    rc = pthread_cond_timedwait(&m->cond, &m->lock, &ts);
  } while (rc == EINTR);
}

static void *flusher_main(void *arg)
{
  af_meter_t *m = arg;
  uint64_t interval_ns = m->cfg.flush_interval_ms * AF_NS_PER_MS;
  uint64_t next_tick = af_clock_mono_ns(m->cfg.clock) + interval_ns;

  pthread_mutex_lock(&m->lock);
  while (!m->stopping) {
    pthread_mutex_unlock(&m->lock);

    bool failed = false;
    bool more = false;
    uint64_t wait_ns = interval_ns;
    if (consumer_acquire(m)) {
      uint64_t now = af_clock_mono_ns(m->cfg.clock);
      bool requested = atomic_exchange(&m->flush_requested, false);
      bool tick = now >= next_tick;
      bool retry_due = m->failures > 0 && now >= m->next_retry_ns;
      flush_batches(m, tick || retry_due || requested, false, &failed);
      now = af_clock_mono_ns(m->cfg.clock);
      if (tick)
        next_tick = now + interval_ns;
      uint64_t wake = next_tick;
      if (m->failures > 0 && m->next_retry_ns < wake)
        wake = m->next_retry_ns;
      more = m->failures == 0 && ring_depth(m) >= m->cfg.batch_size;
      wait_ns = wake > now ? wake - now : 0;
      if (wait_ns > interval_ns)
        wait_ns = interval_ns;
      consumer_release(m);
    }

    pthread_mutex_lock(&m->lock);
    /* flush_requested is re-read under the lock the requester signals
     * with, so a request made after the round above is never slept over. */
    if (!m->stopping && !more && wait_ns > 0 &&
        !atomic_load(&m->flush_requested))
      timed_wait_locked(m, wait_ns);
  }
  pthread_mutex_unlock(&m->lock);
  return NULL;
}

af_status_t af_meter_start(af_meter_t *m)
{
  if (m == NULL || m->cfg.sink == NULL)
    return AF_EINVAL;
  if (atomic_load(&m->closed))
    return AF_ESHUTDOWN;
  if (atomic_load(&m->running))
    return AF_ESTATE;
  pthread_mutex_lock(&m->lock);
  m->stopping = false;
  pthread_mutex_unlock(&m->lock);
  atomic_store(&m->running, true);
  if (pthread_create(&m->thread, NULL, flusher_main, m) != 0) {
    atomic_store(&m->running, false);
    return AF_EINTERNAL;
  }
  return AF_OK;
}

void af_meter_request_flush(af_meter_t *m)
{
  if (m == NULL || !atomic_load(&m->running))
    return;
  atomic_store(&m->flush_requested, true);
  pthread_mutex_lock(&m->lock);
  pthread_cond_signal(&m->cond);
  pthread_mutex_unlock(&m->lock);
}

static size_t total_depth(af_meter_t *m)
{
  return ring_depth(m) +
         atomic_load_explicit(&m->pending_n, memory_order_relaxed);
}

size_t af_meter_shutdown(af_meter_t *m, uint64_t deadline_ms)
{
  if (m == NULL)
    return 0;
  atomic_store(&m->closed, true);
  stop_flusher(m);

  if (m->cfg.sink != NULL && consumer_acquire(m)) {
    const af_clock_t *real = af_clock_system();
    uint64_t start = af_clock_mono_ns(real);
    uint64_t budget = deadline_ms > UINT64_MAX / AF_NS_PER_MS
                          ? UINT64_MAX
                          : deadline_ms * AF_NS_PER_MS;
    uint64_t deadline =
        start > UINT64_MAX - budget ? UINT64_MAX : start + budget;
    for (;;) {
      bool failed;
      flush_batches(m, true, true, &failed);
      if (!failed)
        break;
      uint64_t now = af_clock_mono_ns(real);
      if (now >= deadline)
        break;
      uint64_t wait = backoff_ns(m);
      if (wait > deadline - now)
        wait = deadline - now;
      pthread_mutex_lock(&m->lock);
      timed_wait_locked(m, wait);
      pthread_mutex_unlock(&m->lock);
    }
    consumer_release(m);
  }

  size_t left = total_depth(m);
  atomic_store(&m->unflushed, (uint64_t)left);
  return left;
}

void af_meter_metrics(af_meter_t *m, af_meter_metrics_t *out)
{
  if (out == NULL)
    return;
  memset(out, 0, sizeof(*out));
  if (m == NULL)
    return;
  out->queued = atomic_load(&m->queued);
  out->flushed = atomic_load(&m->flushed);
  out->drained = atomic_load(&m->drained);
  out->dropped_queue_full = atomic_load(&m->dropped_queue_full);
  out->dropped_invalid = atomic_load(&m->dropped_invalid);
  out->dropped_shutdown = atomic_load(&m->dropped_shutdown);
  out->sink_errors = atomic_load(&m->sink_errors);
  out->duplicates = atomic_load(&m->duplicates);
  out->batches = atomic_load(&m->batches);
  out->unflushed = atomic_load(&m->unflushed);
  out->depth = total_depth(m);
  out->capacity = m->cap;
  out->running = atomic_load(&m->running);
  memcpy(out->hash, m->cfg.hash, sizeof(out->hash));
}
