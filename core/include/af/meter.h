/*
 * af/meter.h - usage metering: a bounded, non-blocking event queue with an
 * optional background flusher that delivers batches to a sink.
 *
 * Thread-safety:
 *   - af_meter_enqueue, af_meter_generate_event_id and af_meter_metrics are
 *     thread-safe and lock-free: any number of producer threads may call them
 *     concurrently, and enqueue never blocks and never allocates.
 *   - The consumer side (af_meter_drain, af_meter_flush_now, the flusher
 *     thread) is single-consumer: at most one of them runs at a time. While
 *     the flusher thread runs, af_meter_drain and af_meter_flush_now return 0
 *     without touching the queue; a second concurrent caller of drain /
 *     flush_now also gets 0.
 *   - af_meter_start, af_meter_shutdown and af_meter_destroy are single-owner:
 *     call them from one thread, and destroy only after every other call has
 *     returned.
 *
 * Callbacks: the sink runs on the flusher thread while the flusher runs, on
 * the caller's thread inside af_meter_flush_now and af_meter_shutdown. No
 * meter lock is held while it runs; it must not call af_meter_drain /
 * flush_now / shutdown / destroy on the same meter (enqueue is fine).
 *
 * Delivery: events leave the queue in FIFO order per producer. A batch the
 * sink refuses (non-AF_OK) is kept and offered again, unchanged and first,
 * on the next attempt (after a backoff in the flusher), so a failing sink
 * never loses events; it only fills the queue, and then enqueue refuses new
 * events with AF_EFULL. Every event carries an idempotency key (event_id,
 * scoped to the tenant) so a sink that sees a batch twice can recognise the
 * repeats and report them as duplicates.
 */
#ifndef AF_METER_H
#define AF_METER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/clock.h"
#include "af/status.h"
#include "af/types.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Billable operations (the seed's MeterableOperation). */
typedef enum {
  AF_OP_CONSTITUTIONAL_VALIDATION = 1,
  AF_OP_AGENT_MESSAGE,
  AF_OP_POLICY_EVALUATION,
  AF_OP_COMPLIANCE_CHECK,
  AF_OP_AUDIT_WRITE,
  AF_OP_DELIBERATION_REQUEST,
  AF_OP_HITL_APPROVAL,
  AF_OP_BLOCKCHAIN_ANCHOR,
} af_meter_operation_t;

#define AF_METER_OPERATION_COUNT 8

/* Pricing tiers (the seed's MeteringTier). */
typedef enum {
  AF_TIER_STANDARD = 1,
  AF_TIER_ENHANCED,
  AF_TIER_DELIBERATION,
  AF_TIER_ENTERPRISE,
} af_meter_tier_t;

#define AF_METER_TIER_COUNT 4

/* The seed's wire names: "constitutional_validation", "agent_message",
 * "policy_evaluation", "compliance_check", "audit_write",
 * "deliberation_request", "hitl_approval", "blockchain_anchor"; "unknown"
 * for values outside the enum. Never NULL. Cannot fail. */
const char *af_meter_operation_name(af_meter_operation_t op);

/* "standard", "enhanced", "deliberation", "enterprise"; "unknown" outside
 * the enum. Never NULL. Cannot fail. */
const char *af_meter_tier_name(af_meter_tier_t t);

/* Parse a name as returned by the functions above, ASCII case-insensitive
 * ("AGENT_MESSAGE" is accepted too). Returns true and sets *out on success;
 * returns false and leaves *out untouched otherwise (s NULL included). */
bool af_meter_operation_parse(const char *s, af_meter_operation_t *out);
bool af_meter_tier_parse(const char *s, af_meter_tier_t *out);

/* Longest event_id, without the NUL. */
#define AF_EVENT_ID_MAX 64
/* Size of the metadata buffer, NUL included. */
#define AF_METER_METADATA_MAX 512

/* One usage event: a fixed-size, self-contained value (no pointers), copied
 * into and out of the queue. Strings are NUL-terminated inside their arrays;
 * "" means absent where a field is optional. */
typedef struct {
  char tenant_id[AF_NAME_MAX + 1];    /* required, af_name_valid */
  char event_id[AF_EVENT_ID_MAX + 1]; /* idempotency key; "" = generate */
  char agent_id[AF_NAME_MAX + 1];     /* optional */
  af_meter_operation_t operation;
  af_meter_tier_t tier;       /* default AF_TIER_STANDARD */
  uint64_t units;             /* default 1 (0 is accepted: bills nothing) */
  uint64_t tokens_processed;  /* default 0 */
  double latency_ms;          /* finite, >= 0; default 0 */
  double compliance_score;    /* [0, 1]; default 1.0 */
  bool constitutional_valid;  /* default true */
  int64_t timestamp_wall_ns;  /* ns since the epoch, >= 0; 0 = now */
  char hash[AF_HASH_MAX + 1]; /* constitutional hash; "" = the meter's */
  char metadata[AF_METER_METADATA_MAX]; /* opaque JSON-ish text, may be "" */
} af_meter_event_t;

/* Fills *e with the defaults above, tenant_id and operation. tenant_id is
 * borrowed and copied; a tenant_id longer than AF_NAME_MAX is copied
 * unterminated (the array is filled), so that af_meter_event_validate
 * reports it as too long instead of it being silently truncated. tenant_id
 * NULL leaves it "". Cannot fail. */
void af_meter_event_init(af_meter_event_t *e, const char *tenant_id,
                         af_meter_operation_t op);

/* Checks one event (e borrowed). Returns AF_OK or AF_EINVAL with one of
 * these messages in *err (err may be NULL), checked in this order:
 *   "event is required"                                  (e NULL)
 *   "tenant_id is required"
 *   "tenant_id must be at most 128 bytes"
 *   "tenant_id must be valid UTF-8 without control characters"
 *   "agent_id must be at most 128 bytes"
 *   "agent_id must be valid UTF-8 without control characters"
 *   "event_id must be at most 64 characters"
 *   "event_id must be printable ASCII without spaces"
 *   "unknown operation"
 *   "unknown tier"
 *   "latency_ms must be a finite number"                 (NaN, +-inf)
 *   "latency_ms must be >= 0"
 *   "compliance_score must be between 0.0 and 1.0"       (NaN included)
 *   "timestamp_wall_ns must be >= 0"
 *   "hash must be at most 64 characters"
 *   "metadata must be at most 511 bytes"
 * The hash value itself is checked by af_meter_enqueue, which knows the
 * configured one. */
af_status_t af_meter_event_validate(const af_meter_event_t *e, af_error_t *err);

/* The sink receives a batch of n >= 1 events (borrowed: valid only during
 * the call) and returns AF_OK once it has them durably, or any error to have
 * the same batch offered again later. On AF_OK it may set *duplicates
 * (initialised to 0) to how many of the n it already had by
 * (tenant_id, event_id); they still count as flushed. */
typedef af_status_t (*af_meter_sink_fn)(const af_meter_event_t *events,
                                        size_t n, size_t *duplicates,
                                        void *ctx);

typedef struct {
  const af_clock_t *clock;       /* retained; NULL = system clock */
  size_t capacity;               /* max events queued, default 10000 */
  size_t batch_size;             /* events per sink call, default 100 */
  uint64_t flush_interval_ms;    /* partial batches flushed this often, 1000 */
  uint64_t max_retry_backoff_ms; /* cap of the sink retry backoff, 30000 */
  af_meter_sink_fn sink;         /* optional; required by af_meter_start */
  void *sink_ctx;                /* retained, passed to sink */
  /* Optional: called with sink_ctx on the same thread right after a sink
   * call that returned AF_OK has been counted (flushed, duplicates,
   * batches, depth). A sink that answers callers waiting for their events
   * does it here, so an answer is never seen before the metrics move. */
  void (*after_sink)(void *ctx);
  char hash[AF_HASH_MAX + 1]; /* default AF_CONSTITUTIONAL_HASH_DEFAULT */
} af_meter_config_t;

#define AF_METER_CAPACITY_MAX ((size_t)1 << 24)

/* Fills *cfg with the defaults above. Cannot fail. */
void af_meter_config_init(af_meter_config_t *cfg);

typedef struct af_meter af_meter_t;

/* Creates a meter (cfg borrowed; the clock and sink_ctx it points to are
 * retained until af_meter_destroy). Allocates the whole queue up front.
 * Returns AF_OK and *out (returns owned: free with af_meter_destroy), or
 * AF_EINVAL with one of "out is required", "config is required",
 * "capacity must be between 1 and 16777216",
 * "batch_size must be between 1 and capacity", "flush_interval_ms must be
 * >= 1", "max_retry_backoff_ms must be >= flush_interval_ms",
 * "hash is required", "hash must be at most 64 characters"; or AF_ENOMEM.
 * On failure *out is untouched and nothing leaks. */
af_status_t af_meter_create(af_meter_t **out, const af_meter_config_t *cfg,
                            af_error_t *err);

/* Validates *ev and copies it into the queue. ev is borrowed and updated in
 * place before validation of the hash and before queueing: an empty event_id
 * is replaced by a generated one, timestamp_wall_ns 0 by the clock's wall
 * time, an empty hash by the configured one; so a caller that gets AF_EFULL
 * can retry later with the same idempotency key.
 * Returns AF_OK; AF_EINVAL (see af_meter_event_validate; counted
 * dropped_invalid); AF_EHASH "constitutional hash mismatch" (counted
 * dropped_invalid); AF_EFULL "metering queue is full" (capacity events are
 * queued; counted dropped_queue_full); AF_ESHUTDOWN "meter is shut down"
 * (counted dropped_shutdown). Never blocks, never allocates. */
af_status_t af_meter_enqueue(af_meter_t *m, af_meter_event_t *ev,
                             af_error_t *err);

/* Pops up to max events, oldest first, into out (borrowed, room for max).
 * A batch the sink refused earlier comes out first. Returns how many were
 * copied (counted drained). Returns 0 while the flusher thread runs. Works
 * after af_meter_shutdown too, to salvage what was left unflushed. */
size_t af_meter_drain(af_meter_t *m, af_meter_event_t *out, size_t max);

/* Starts the flusher thread: it hands the sink a batch as soon as
 * batch_size events are queued, and whatever is queued every
 * flush_interval_ms; after a sink error it retries the same batch after
 * flush_interval_ms, doubling per consecutive error up to
 * max_retry_backoff_ms. Intervals are measured on the configured clock
 * (the thread re-checks it at least every flush_interval_ms of real time).
 * Returns AF_OK, AF_EINVAL (no sink configured), AF_ESTATE (already
 * running), AF_ESHUTDOWN (after af_meter_shutdown) or AF_EINTERNAL (thread
 * creation failed). */
af_status_t af_meter_start(af_meter_t *m);

/* Asks the running flusher thread to hand the sink whatever is queued now,
 * a partial batch included, instead of waiting for the next
 * flush_interval_ms tick (a sink backoff after an error still applies).
 * Requests made while a round runs fold into one more round: a caller that
 * waits for its event to reach the sink gets group commit, not a sink call
 * per event. Takes the flusher's mutex only to signal it (never held
 * across the sink), so it does not block on the sink. No-op when the
 * flusher is not running (use af_meter_flush_now then). Thread-safe. */
void af_meter_request_flush(af_meter_t *m);

/* From the caller's thread, hands the sink every queued event in batches of
 * batch_size (ignoring any retry backoff) until the queue is empty or the
 * sink returns an error (the refused batch is kept). Returns how many events
 * the sink accepted. Returns 0 without a sink or while the flusher runs. */
size_t af_meter_flush_now(af_meter_t *m);

/* Stops accepting events (enqueue then fails with AF_ESHUTDOWN), stops and
 * joins the flusher thread, then from the caller's thread flushes
 * everything it can: on a sink error it waits the retry backoff and tries
 * again, until the queue is empty or deadline_ms of real time have passed
 * (deadline_ms 0: one attempt per batch, never waits). Returns how many
 * events are left unflushed (also kept in af_meter_metrics_t.unflushed);
 * they stay retrievable with af_meter_drain. Without a sink, flushes
 * nothing and returns the depth. Calling it again retries. */
size_t af_meter_shutdown(af_meter_t *m, uint64_t deadline_ms);

/* Stops the flusher thread if still running (without a final flush: call
 * af_meter_shutdown for that), discards queued events, frees everything.
 * NULL is a no-op. */
void af_meter_destroy(af_meter_t *m);

typedef struct {
  uint64_t queued;             /* events accepted by enqueue */
  uint64_t flushed;            /* events accepted by the sink */
  uint64_t drained;            /* events popped by af_meter_drain */
  uint64_t dropped_queue_full; /* refused: queue full */
  uint64_t dropped_invalid;    /* refused: invalid event or hash mismatch */
  uint64_t dropped_shutdown;   /* refused: after shutdown */
  uint64_t sink_errors;        /* sink calls that returned an error */
  uint64_t duplicates;         /* flushed events the sink already had */
  uint64_t batches;            /* successful sink calls */
  uint64_t unflushed;          /* left over by the last af_meter_shutdown */
  size_t depth;                /* events waiting (queue + refused batch) */
  size_t capacity;             /* configured capacity */
  bool running;                /* flusher thread running */
  char hash[AF_HASH_MAX + 1];  /* configured constitutional hash */
} af_meter_metrics_t;

/* Snapshot of the counters (each read atomically; the set is not one
 * atomic snapshot while producers run). Cannot fail. */
void af_meter_metrics(af_meter_t *m, af_meter_metrics_t *out);

/* Writes a fresh idempotency key: 32 lowercase hex characters, a random
 * 64-bit per-meter prefix (from getrandom) followed by a 64-bit counter, so
 * keys never repeat within a meter and collide across meters or restarts
 * only by chance (2^-64). out is borrowed. Thread-safe, never blocks. */
void af_meter_generate_event_id(af_meter_t *m, char out[AF_EVENT_ID_MAX + 1]);

#ifdef __cplusplus
}
#endif
#endif /* AF_METER_H */
