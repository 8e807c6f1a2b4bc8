/*
 * usage_store.h - where metered usage events end up: a ledger keyed by
 * (tenant_id, event_id) (exactly-once) plus per-tenant hourly aggregates by
 * operation and tier, behind a small ops table so the in-memory store can
 * be swapped for a persistent one (SQLite with group commit) without
 * touching svc_metering.c.
 *
 * Thread-safety: every function on a store is thread-safe (the meter's
 * flusher applies batches while CQ threads query). destroy is single-owner:
 * call it once, after every other call returned. apply may block (SQLite:
 * until the batch committed) and is called from the meter's flusher or the
 * owner thread only; CQ threads use af_usage_store_query_async, never
 * af_usage_store_query.
 */
#ifndef AF_USAGE_STORE_H
#define AF_USAGE_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/meter.h"
#include "af/status.h"
#include "store.h"

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
  /* Optional (last, so older initialisers stay valid): the query off the
   * caller's thread (see af_usage_store_query_async). NULL: query runs
   * inline. */
  af_status_t (*query_async)(af_usage_store_t *s, const af_usage_query_t *q,
                             af_usage_result_t *out,
                             void (*done)(af_status_t st, const af_error_t *err,
                                          void *ctx),
                             void *ctx, af_error_t *err);
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

/* The SQLite store (usage_sqlite.c): ledger table usage_events with
 * UNIQUE(tenant_id, event_id), hourly aggregates in usage_hourly updated in
 * the same transaction. apply queues the batch on db's writer and waits
 * for its commit (group commit with whatever else is queued); queries run
 * on db's reader thread. db retained: it must outlive the store. durable
 * is true. Returns AF_OK and *out, or AF_ENOMEM. */
af_status_t af_usage_store_sqlite_create(af_usage_store_t **out,
                                         af_store_t *db);

/* The store afd uses: the factory installed with af__usage_store_set_factory
 * if any, else the SQLite store on db, or the in-memory store when db is
 * NULL (--memory). Same returns as the factory. */
af_status_t af_usage_store_open(af_usage_store_t **out, af_store_t *db);

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

/* Runs q and calls done(st, err, ctx) exactly once: on the store's reader
 * thread (SQLite) or inline before returning (memory, test stores). q is
 * copied (its tenant_id too); out (with buckets / max_buckets set) and ctx
 * retained until done ran; *out is filled when st is AF_OK. Returns AF_OK
 * if done will be / was called; otherwise an error (AF_ESHUTDOWN: the store
 * is closed; AF_ENOMEM) with err set, and done is not called. Never
 * blocks. */
typedef void (*af_usage_query_done_fn)(af_status_t st, const af_error_t *err,
                                       void *ctx);
af_status_t af_usage_store_query_async(af_usage_store_t *s,
                                       const af_usage_query_t *q,
                                       af_usage_result_t *out,
                                       af_usage_query_done_fn done, void *ctx,
                                       af_error_t *err);
/* NULL is a no-op. */
void af_usage_store_destroy(af_usage_store_t *s);

/* Internal to the stores: folds per-hour aggregates, in hour order, into
 * a result (grouping, filters, truncation, total) the same way for every
 * store. */
typedef struct {
  af_usage_query_t q;
  af_usage_result_t *out;
  af_usage_agg_t per_op[AF_METER_OPERATION_COUNT];
  af_usage_agg_t per_tier[AF_METER_TIER_COUNT];
  int64_t last_day;
  bool last_emitted;
} af__usage_fold_t;
void af__usage_fold_begin(af__usage_fold_t *f, const af_usage_query_t *q,
                          af_usage_result_t *out);
/* m: the hour's aggregates restricted to [start, end) (borrowed). */
void af__usage_fold_hour(
    af__usage_fold_t *f, int64_t hour,
    const af_usage_agg_t m[AF_METER_OPERATION_COUNT][AF_METER_TIER_COUNT]);
void af__usage_fold_end(af__usage_fold_t *f);

#ifdef __cplusplus
}
#endif
#endif /* AF_USAGE_STORE_H */
