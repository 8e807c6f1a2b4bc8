/*
 * usage_sqlite.c - the durable usage store on the SQLite store (store.h).
 *
 * What it owns: nothing but a pointer to the store; the data lives in two
 * tables (schema in store.c):
 *   usage_events  the ledger, one row per (tenant_id, event_id): UNIQUE
 *   usage_hourly  per tenant, hour, operation, tier: count, units, tokens,
 *                 invalid, latency and compliance sums
 *
 * Invariants:
 *   - An event is added to usage_hourly exactly when its row enters the
 *     ledger (INSERT OR IGNORE, then the aggregate upsert only if a row was
 *     inserted), in the same transaction: the two can never disagree, and
 *     a duplicate is never counted twice.
 *   - A batch is one store job: all of it commits or none of it.
 *   - Queries read whole hours from usage_hourly and only the (at most
 *     two) hours the range cuts from the ledger (index on tenant, time), so
 *     every answer is exact for any [start, end).
 *
 * Threading: apply runs the batch on the store's writer thread and waits
 * for the commit (the caller is the meter's flusher or the owner thread at
 * shutdown); queries run on the store's reader thread. Nothing here holds
 * a lock.
 */
#include "usage_store.h"

#include <string.h>

#include "af/alloc.h"
#include "af/clock.h"

#define HOUR_NS ((int64_t)3600 * (int64_t)AF_NS_PER_SEC)

typedef struct {
  af_usage_store_t base;
  af_store_t *db;
} sql_store_t;

static const char SQL_INSERT_EVENT[] =
    "INSERT OR IGNORE INTO usage_events (tenant_id, event_id, ts_ns,"
    " operation, tier, units, tokens, latency_ms, compliance, valid,"
    " agent_id, metadata) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10,"
    " ?11, ?12)";

/* Saturating sums: units and tokens are stored clamped to INT64_MAX. */
static const char SQL_ADD_HOURLY[] =
    "INSERT INTO usage_hourly (tenant_id, hour, operation, tier, count,"
    " units, tokens, invalid, latency_sum_ms, compliance_sum)"
    " VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6, ?7, ?8, ?9)"
    " ON CONFLICT (tenant_id, hour, operation, tier) DO UPDATE SET"
    " count = count + 1,"
    " units = CASE WHEN units > 9223372036854775807 - excluded.units"
    "   THEN 9223372036854775807 ELSE units + excluded.units END,"
    " tokens = CASE WHEN tokens > 9223372036854775807 - excluded.tokens"
    "   THEN 9223372036854775807 ELSE tokens + excluded.tokens END,"
    " invalid = invalid + excluded.invalid,"
    " latency_sum_ms = latency_sum_ms + excluded.latency_sum_ms,"
    " compliance_sum = compliance_sum + excluded.compliance_sum";

static const char SQL_HOURS[] =
    "SELECT hour, operation, tier, count, units, tokens, invalid,"
    " latency_sum_ms, compliance_sum FROM usage_hourly"
    " WHERE tenant_id = ?1 AND hour >= ?2 AND hour <= ?3"
    " ORDER BY hour";

static const char SQL_PARTIAL[] =
    "SELECT operation, tier, count(*), total(units), total(tokens),"
    " count(*) - total(valid), total(latency_ms), total(compliance)"
    " FROM usage_events WHERE tenant_id = ?1 AND ts_ns >= ?2 AND ts_ns < ?3"
    " GROUP BY operation, tier";

static int64_t clamp_i64(uint64_t v)
{
  return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

static uint64_t u64_of(double v)
{
  if (!(v > 0)) {
    return 0;
  }
  return v >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)v;
}

/* ---- apply ------------------------------------------------------------- */

typedef struct {
  const af_meter_event_t *events;
  size_t n;
  uint8_t *dup;
} apply_job_t;

static af_status_t apply_run(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  apply_job_t *job = ctx;
  for (size_t i = 0; i < job->n; i++) {
    const af_meter_event_t *ev = &job->events[i];
    sqlite3_stmt *st = af_store_stmt(c, SQL_INSERT_EVENT, err);
    if (st == NULL) {
      return AF_EIO;
    }
    sqlite3_bind_text(st, 1, ev->tenant_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, ev->event_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, ev->timestamp_wall_ns);
    sqlite3_bind_int(st, 4, (int)ev->operation);
    sqlite3_bind_int(st, 5, (int)ev->tier);
    sqlite3_bind_int64(st, 6, clamp_i64(ev->units));
    sqlite3_bind_int64(st, 7, clamp_i64(ev->tokens_processed));
    sqlite3_bind_double(st, 8, ev->latency_ms);
    sqlite3_bind_double(st, 9, ev->compliance_score);
    sqlite3_bind_int(st, 10, ev->constitutional_valid ? 1 : 0);
    sqlite3_bind_text(st, 11, ev->agent_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 12, ev->metadata, -1, SQLITE_STATIC);
    if (sqlite3_step(st) != SQLITE_DONE) {
      af_store_fail(c, err, "cannot write usage event");
      sqlite3_reset(st);
      return AF_EIO;
    }
    bool inserted = sqlite3_changes(af_store_db(c)) > 0;
    sqlite3_reset(st);
    job->dup[i] = inserted ? 0 : 1;
    if (!inserted) {
      continue;
    }
    st = af_store_stmt(c, SQL_ADD_HOURLY, err);
    if (st == NULL) {
      return AF_EIO;
    }
    sqlite3_bind_text(st, 1, ev->tenant_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, ev->timestamp_wall_ns / HOUR_NS);
    sqlite3_bind_int(st, 3, (int)ev->operation);
    sqlite3_bind_int(st, 4, (int)ev->tier);
    sqlite3_bind_int64(st, 5, clamp_i64(ev->units));
    sqlite3_bind_int64(st, 6, clamp_i64(ev->tokens_processed));
    sqlite3_bind_int(st, 7, ev->constitutional_valid ? 0 : 1);
    sqlite3_bind_double(st, 8, ev->latency_ms);
    sqlite3_bind_double(st, 9, ev->compliance_score);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE) {
      return af_store_fail(c, err, "cannot update usage aggregates");
    }
  }
  return AF_OK;
}

static af_status_t sql_apply(af_usage_store_t *base,
                             const af_meter_event_t *events, size_t n,
                             uint8_t *dup, af_error_t *err)
{
  sql_store_t *s = (sql_store_t *)base;
  apply_job_t job = {events, n, dup};
  return af_store_write_wait(s->db, apply_run, &job, err);
}

/* ---- query ------------------------------------------------------------- */

typedef struct {
  af_usage_query_t q;
  char tenant[AF_NAME_MAX + 1];
  af_usage_result_t *out;
  af_usage_query_done_fn done;
  void *ctx;
} query_job_t;

typedef af_usage_agg_t hour_aggs_t[AF_METER_OPERATION_COUNT]
                                  [AF_METER_TIER_COUNT];

static bool in_enum(int op, int tier)
{
  return op >= 1 && op <= AF_METER_OPERATION_COUNT && tier >= 1 &&
         tier <= AF_METER_TIER_COUNT;
}

/* The ledger's events of [from, to) (one hour at most) into m. */
static af_status_t partial_hour(af_store_conn_t *c, const char *tenant,
                                int64_t from, int64_t to, hour_aggs_t m,
                                af_error_t *err)
{
  memset(m, 0, sizeof(hour_aggs_t));
  sqlite3_stmt *st = af_store_stmt(c, SQL_PARTIAL, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_text(st, 1, tenant, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, from);
  sqlite3_bind_int64(st, 3, to);
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int op = sqlite3_column_int(st, 0);
    int tier = sqlite3_column_int(st, 1);
    if (!in_enum(op, tier)) {
      continue;
    }
    af_usage_agg_t *a = &m[op - 1][tier - 1];
    a->count = (uint64_t)sqlite3_column_int64(st, 2);
    a->units = u64_of(sqlite3_column_double(st, 3));
    a->tokens = u64_of(sqlite3_column_double(st, 4));
    a->constitutional_invalid = u64_of(sqlite3_column_double(st, 5));
    a->latency_sum_ms = sqlite3_column_double(st, 6);
    a->compliance_sum = sqlite3_column_double(st, 7);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    return af_store_fail(c, err, "cannot read usage events");
  }
  return AF_OK;
}

/* Whole hours [h_from, h_to] from usage_hourly, folded in hour order. */
static af_status_t whole_hours(af_store_conn_t *c, af__usage_fold_t *f,
                               int64_t h_from, int64_t h_to, af_error_t *err)
{
  sqlite3_stmt *st = af_store_stmt(c, SQL_HOURS, err);
  if (st == NULL) {
    return AF_EIO;
  }
  sqlite3_bind_text(st, 1, f->q.tenant_id, -1, SQLITE_STATIC);
  sqlite3_bind_int64(st, 2, h_from);
  sqlite3_bind_int64(st, 3, h_to);
  hour_aggs_t m;
  memset(m, 0, sizeof(m));
  int64_t cur = INT64_MIN;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    int64_t hour = sqlite3_column_int64(st, 0);
    if (hour != cur) {
      if (cur != INT64_MIN) {
        af__usage_fold_hour(f, cur, (const af_usage_agg_t(*)[4])m);
      }
      memset(m, 0, sizeof(m));
      cur = hour;
    }
    int op = sqlite3_column_int(st, 1);
    int tier = sqlite3_column_int(st, 2);
    if (!in_enum(op, tier)) {
      continue;
    }
    af_usage_agg_t *a = &m[op - 1][tier - 1];
    a->count = (uint64_t)sqlite3_column_int64(st, 3);
    a->units = (uint64_t)sqlite3_column_int64(st, 4);
    a->tokens = (uint64_t)sqlite3_column_int64(st, 5);
    a->constitutional_invalid = (uint64_t)sqlite3_column_int64(st, 6);
    a->latency_sum_ms = sqlite3_column_double(st, 7);
    a->compliance_sum = sqlite3_column_double(st, 8);
  }
  sqlite3_reset(st);
  if (rc != SQLITE_DONE) {
    return af_store_fail(c, err, "cannot read usage aggregates");
  }
  if (cur != INT64_MIN) {
    af__usage_fold_hour(f, cur, (const af_usage_agg_t(*)[4])m);
  }
  return AF_OK;
}

static af_status_t query_run(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  query_job_t *job = ctx;
  const af_usage_query_t *q = &job->q;
  af__usage_fold_t f;
  af__usage_fold_begin(&f, q, job->out);
  if (q->end_ns <= q->start_ns) {
    af__usage_fold_end(&f);
    return AF_OK;
  }
  /* One read transaction: the hours and the edges see the same commit. */
  af_status_t st = af_store_exec(c, "BEGIN", err);
  if (st != AF_OK) {
    return st;
  }
  int64_t first = q->start_ns / HOUR_NS;
  int64_t last = (q->end_ns - 1) / HOUR_NS;
  hour_aggs_t m;
  if (first == last) {
    bool whole =
        first * HOUR_NS == q->start_ns && (first + 1) * HOUR_NS == q->end_ns;
    if (whole) {
      st = whole_hours(c, &f, first, first, err);
    } else {
      st = partial_hour(c, q->tenant_id, q->start_ns, q->end_ns, m, err);
      if (st == AF_OK) {
        af__usage_fold_hour(&f, first, (const af_usage_agg_t(*)[4])m);
      }
    }
  } else {
    int64_t w_from = first;
    int64_t w_to = last;
    if (first * HOUR_NS != q->start_ns) {
      st = partial_hour(c, q->tenant_id, q->start_ns, (first + 1) * HOUR_NS, m,
                        err);
      if (st == AF_OK) {
        af__usage_fold_hour(&f, first, (const af_usage_agg_t(*)[4])m);
      }
      w_from = first + 1;
    }
    bool last_cut = (last + 1) * HOUR_NS != q->end_ns;
    if (last_cut) {
      w_to = last - 1;
    }
    if (st == AF_OK && w_from <= w_to) {
      st = whole_hours(c, &f, w_from, w_to, err);
    }
    if (st == AF_OK && last_cut) {
      st = partial_hour(c, q->tenant_id, last * HOUR_NS, q->end_ns, m, err);
      if (st == AF_OK) {
        af__usage_fold_hour(&f, last, (const af_usage_agg_t(*)[4])m);
      }
    }
  }
  af_error_t ignored;
  af_store_exec(c, "COMMIT", &ignored);
  if (st == AF_OK) {
    af__usage_fold_end(&f);
  }
  return st;
}

static void query_done(af_status_t st, const af_error_t *err, void *ctx)
{
  query_job_t *job = ctx;
  job->done(st, err, job->ctx);
  af_free(job);
}

static af_status_t sql_query_async(af_usage_store_t *base,
                                   const af_usage_query_t *q,
                                   af_usage_result_t *out,
                                   af_usage_query_done_fn done, void *ctx,
                                   af_error_t *err)
{
  sql_store_t *s = (sql_store_t *)base;
  size_t len = strlen(q->tenant_id);
  if (len > AF_NAME_MAX) {
    return af_error_set(err, AF_EINVAL, "tenant_id must be at most %d bytes",
                        AF_NAME_MAX);
  }
  query_job_t *job = af_calloc(1, sizeof(*job));
  if (job == NULL) {
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  job->q = *q;
  memcpy(job->tenant, q->tenant_id, len + 1);
  job->q.tenant_id = job->tenant;
  job->out = out;
  job->done = done;
  job->ctx = ctx;
  af_status_t st = af_store_read(s->db, query_run, query_done, job);
  if (st != AF_OK) {
    af_free(job);
    return af_error_set(err, st, "usage store is %s",
                        st == AF_ESHUTDOWN ? "closed" : "out of memory");
  }
  return AF_OK;
}

/* Synchronous form (tests, tools): not on a CQ thread. */
static af_status_t sql_query(af_usage_store_t *base, const af_usage_query_t *q,
                             af_usage_result_t *out, af_error_t *err)
{
  sql_store_t *s = (sql_store_t *)base;
  size_t len = strlen(q->tenant_id);
  if (len > AF_NAME_MAX) {
    return af_error_set(err, AF_EINVAL, "tenant_id must be at most %d bytes",
                        AF_NAME_MAX);
  }
  query_job_t job;
  memset(&job, 0, sizeof(job));
  job.q = *q;
  memcpy(job.tenant, q->tenant_id, len + 1);
  job.q.tenant_id = job.tenant;
  job.out = out;
  return af_store_read_wait(s->db, query_run, &job, err);
}

static void sql_destroy(af_usage_store_t *base) { af_free(base); }

static const af_usage_store_ops_t sql_ops = {
    .apply = sql_apply,
    .query = sql_query,
    .query_async = sql_query_async,
    .destroy = sql_destroy,
};

af_status_t af_usage_store_sqlite_create(af_usage_store_t **out, af_store_t *db)
{
  if (out == NULL || db == NULL) {
    return AF_EINVAL;
  }
  sql_store_t *s = af_calloc(1, sizeof(*s));
  if (s == NULL) {
    return AF_ENOMEM;
  }
  s->base.ops = &sql_ops;
  s->base.durable = true;
  s->db = db;
  *out = &s->base;
  return AF_OK;
}
