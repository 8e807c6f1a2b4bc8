/*
 * usage_store.h - where metered usage events end up: a ledger keyed by
 * (tenant_id, event_id) (exactly-once) plus per-tenant hourly aggregates by
 * operation and tier, behind a small ops table so the in-memory store can
 * be swapped for a persistent one (SQLite with group commit) without
 * touching svc_metering.c.
 *
 * Thread-safety: every function on a store is thread-safe (the meter's
 * flusher applies batches while CQ threads query). destroy is single-owner:
 * call it once, after every other call returned.
 */
#ifndef AF_USAGE_STORE_H
#define AF_USAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/meter.h"
#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Sums over a set of events. */
typedef struct {
  uint64_t count;
  uint64_t units;  /* saturating */
  uint64_t tokens; /* saturating */
  uint64_t constitutional_invalid;
  double latency_sum_ms;
  double compliance_sum;
} af_usage_agg_t;

typedef enum {
  AF_USAGE_GROUP_NONE = 0, /* one bucket for the whole range */
  AF_USAGE_GROUP_HOUR,
  AF_USAGE_GROUP_DAY,
  AF_USAGE_GROUP_OPERATION,
  AF_USAGE_GROUP_TIER,
} af_usage_group_t;

typedef struct {
  const char *tenant_id;          /* borrowed, valid name */
  int64_t start_ns;               /* inclusive, >= 0 */
  int64_t end_ns;                 /* exclusive, >= start_ns */
  af_usage_group_t group_by;      /* AF_USAGE_GROUP_* */
  af_meter_operation_t operation; /* 0 = any */
  af_meter_tier_t tier;           /* 0 = any */
} af_usage_query_t;

typedef struct {
  int64_t start_ns;               /* HOUR / DAY: bucket start; else 0 */
  af_meter_operation_t operation; /* OPERATION grouping; else 0 */
  af_meter_tier_t tier;           /* TIER grouping; else 0 */
  af_usage_agg_t agg;
} af_usage_bucket_t;

typedef struct {
  af_usage_bucket_t *buckets; /* caller's array of max_buckets */
  size_t max_buckets;
  size_t n_buckets;     /* filled: buckets in time / enum order */
  bool truncated;       /* more non-empty buckets than max_buckets */
  af_usage_agg_t total; /* over the whole range, never truncated */
} af_usage_result_t;

typedef struct af_usage_store af_usage_store_t;

typedef struct {
  /* Applies a batch of n >= 1 validated events (borrowed) all or nothing:
   * on AF_OK dup[i] (caller's array of n) is 1 if (tenant_id, event_id) of
   * events[i] was already recorded (earlier, or earlier in this batch) and
   * it was not counted again, 0 if it was recorded now. On an error nothing
   * is recorded (the same batch may be offered again). */
  af_status_t (*apply)(af_usage_store_t *s, const af_meter_event_t *events,
                       size_t n, uint8_t *dup, af_error_t *err);
  /* Fills *out (its buckets / max_buckets set by the caller) with the
   * non-empty buckets of q->tenant_id's events in [start_ns, end_ns)
   * matching the filters; GROUP_NONE gives exactly one bucket. */
  af_status_t (*query)(af_usage_store_t *s, const af_usage_query_t *q,
                       af_usage_result_t *out, af_error_t *err);
  void (*destroy)(af_usage_store_t *s);
} af_usage_store_ops_t;

/* The part of every store the callers see; implementations embed it
 * first. */
struct af_usage_store {
  const af_usage_store_ops_t *ops;
  bool durable; /* true if apply returns only once events are on disk */
};

/* The in-memory store (afd --memory, and until the SQLite store lands).
 * Nothing is durable; memory grows with the number of distinct events.
 * Returns AF_OK and *out (free with af_usage_store_destroy) or AF_ENOMEM;
 * *out untouched on failure. */
af_status_t af_usage_store_memory_create(af_usage_store_t **out);

/* The store afd uses: the factory installed with af__usage_store_set_factory
 * if any, else the in-memory store (the SQLite store will be chosen here).
 * Same returns as the factory. */
af_status_t af_usage_store_open(af_usage_store_t **out);

/* Test seam: process-wide, the next af_usage_store_open calls fn(out, ctx)
 * instead (e.g. a store that wraps the memory store and holds apply back
 * so that a test can fill the meter). NULL restores the default. Set it
 * while no app is being created (not synchronised). */
typedef af_status_t (*af_usage_store_factory_fn)(af_usage_store_t **out,
                                                 void *ctx);
void af__usage_store_set_factory(af_usage_store_factory_fn fn, void *ctx);

/* Dispatch to the implementation (see the ops above). */
af_status_t af_usage_store_apply(af_usage_store_t *s,
                                 const af_meter_event_t *events, size_t n,
                                 uint8_t *dup, af_error_t *err);
af_status_t af_usage_store_query(af_usage_store_t *s, const af_usage_query_t *q,
                                 af_usage_result_t *out, af_error_t *err);
/* NULL is a no-op. */
void af_usage_store_destroy(af_usage_store_t *s);

#ifdef __cplusplus
}
#endif
#endif /* AF_USAGE_STORE_H */
