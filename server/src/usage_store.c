/*
 * usage_store.c - the in-memory usage store, and the dispatch of the
 * af_usage_store_* calls to a store's ops.
 *
 * What it owns: a ledger (chained hash of one node per recorded event,
 * keyed by tenant + event_id) and, per tenant, a sorted array of hours that
 * hold the aggregates of the hour's events per (operation, tier) plus the
 * list of the hour's ledger nodes.
 *
 * Invariants:
 *   - (tenant, event_id) is in the ledger at most once; an event is added
 *     to its hour's aggregates exactly when its node enters the ledger.
 *   - A batch is applied all or nothing: nodes are allocated and inserted
 *     first (and removed again if an allocation fails), aggregates are only
 *     touched once nothing can fail. Tenants and hours created on the way
 *     stay (empty: queries skip them).
 *   - Queries read whole hours from the aggregates and scan the node lists
 *     only of the (at most two) hours the range cuts, so every answer is
 *     exact for any [start, end).
 *
 * Threading: one mutex around everything; nothing is called out while it
 * is held.
 */
#include "usage_store.h"

#include <pthread.h>
#include <string.h>

#include "af/alloc.h"
#include "af/clock.h"

#define HOUR_NS ((int64_t)3600 * (int64_t)AF_NS_PER_SEC)
#define HOURS_PER_DAY 24
#define TENANT_BUCKETS 256
#define LEDGER_INITIAL 1024

typedef struct tenant tenant_t;

typedef struct ev_node {
  struct ev_node *hash_next;
  struct ev_node *hour_next;
  tenant_t *tenant;
  uint64_t hash;
  int64_t ts_ns;
  uint64_t units;
  uint64_t tokens;
  double latency_ms;
  double compliance;
  af_meter_operation_t op;
  af_meter_tier_t tier;
  bool valid;
  char event_id[AF_EVENT_ID_MAX + 1];
} ev_node_t;

typedef struct {
  int64_t hour; /* ts_ns / HOUR_NS */
  af_usage_agg_t agg[AF_METER_OPERATION_COUNT][AF_METER_TIER_COUNT];
  ev_node_t *events;
} hour_t;

struct tenant {
  tenant_t *next;
  uint64_t hash;
  hour_t *hours; /* sorted by hour */
  size_t n_hours;
  size_t cap_hours;
  char id[AF_NAME_MAX + 1];
};

typedef struct {
  af_usage_store_t base;
  pthread_mutex_t mu;
  tenant_t *tenants[TENANT_BUCKETS];
  ev_node_t **ledger;
  size_t ledger_cap; /* power of two */
  size_t ledger_n;
} mem_store_t;

/* ---- selection and dispatch -------------------------------------------- */

static af_usage_store_factory_fn g_factory;
static void *g_factory_ctx;

void af__usage_store_set_factory(af_usage_store_factory_fn fn, void *ctx)
{
  g_factory = fn;
  g_factory_ctx = ctx;
}

af_status_t af_usage_store_open(af_usage_store_t **out, af_store_t *db)
{
  if (g_factory != NULL) {
    return g_factory(out, g_factory_ctx);
  }
  if (db != NULL) {
    return af_usage_store_sqlite_create(out, db);
  }
  return af_usage_store_memory_create(out);
}

af_status_t af_usage_store_apply(af_usage_store_t *s,
                                 const af_meter_event_t *events, size_t n,
                                 uint8_t *dup, af_error_t *err)
{
  if (s == NULL || events == NULL || dup == NULL || n == 0) {
    return af_error_set(err, AF_EINVAL, "store, events and dup are required");
  }
  return s->ops->apply(s, events, n, dup, err);
}

af_status_t af_usage_store_query(af_usage_store_t *s, const af_usage_query_t *q,
                                 af_usage_result_t *out, af_error_t *err)
{
  if (s == NULL || q == NULL || out == NULL || q->tenant_id == NULL) {
    return af_error_set(err, AF_EINVAL, "store, query and result are required");
  }
  return s->ops->query(s, q, out, err);
}

af_status_t af_usage_store_query_async(af_usage_store_t *s,
                                       const af_usage_query_t *q,
                                       af_usage_result_t *out,
                                       af_usage_query_done_fn done, void *ctx,
                                       af_error_t *err)
{
  if (s == NULL || q == NULL || out == NULL || q->tenant_id == NULL ||
      done == NULL) {
    return af_error_set(err, AF_EINVAL,
                        "store, query, result and done are required");
  }
  if (s->ops->query_async != NULL) {
    return s->ops->query_async(s, q, out, done, ctx, err);
  }
  af_error_t qerr;
  af_error_clear(&qerr);
  af_status_t st = s->ops->query(s, q, out, &qerr);
  done(st, &qerr, ctx);
  return AF_OK;
}

void af_usage_store_destroy(af_usage_store_t *s)
{
  if (s != NULL) {
    s->ops->destroy(s);
  }
}

/* ---- helpers ----------------------------------------------------------- */

static uint64_t fnv1a(const char *str, uint64_t h)
{
  for (const unsigned char *p = (const unsigned char *)str; *p != '\0'; p++) {
    h ^= *p;
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

#define FNV_OFFSET UINT64_C(0xcbf29ce484222325)

static uint64_t sat_add(uint64_t a, uint64_t b)
{
  return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void agg_add(af_usage_agg_t *to, const af_usage_agg_t *from)
{
  to->count = sat_add(to->count, from->count);
  to->units = sat_add(to->units, from->units);
  to->tokens = sat_add(to->tokens, from->tokens);
  to->constitutional_invalid =
      sat_add(to->constitutional_invalid, from->constitutional_invalid);
  to->latency_sum_ms += from->latency_sum_ms;
  to->compliance_sum += from->compliance_sum;
}

static void agg_add_node(af_usage_agg_t *to, const ev_node_t *e)
{
  to->count = sat_add(to->count, 1);
  to->units = sat_add(to->units, e->units);
  to->tokens = sat_add(to->tokens, e->tokens);
  if (!e->valid) {
    to->constitutional_invalid = sat_add(to->constitutional_invalid, 1);
  }
  to->latency_sum_ms += e->latency_ms;
  to->compliance_sum += e->compliance;
}

static tenant_t *tenant_find(mem_store_t *s, const char *id, uint64_t h)
{
  for (tenant_t *t = s->tenants[h % TENANT_BUCKETS]; t != NULL; t = t->next) {
    if (t->hash == h && strcmp(t->id, id) == 0) {
      return t;
    }
  }
  return NULL;
}

static tenant_t *tenant_get(mem_store_t *s, const char *id)
{
  uint64_t h = fnv1a(id, FNV_OFFSET);
  tenant_t *t = tenant_find(s, id, h);
  if (t != NULL) {
    return t;
  }
  size_t len = strlen(id);
  if (len > AF_NAME_MAX) {
    return NULL;
  }
  t = af_calloc(1, sizeof(*t));
  if (t == NULL) {
    return NULL;
  }
  memcpy(t->id, id, len + 1);
  t->hash = h;
  t->next = s->tenants[h % TENANT_BUCKETS];
  s->tenants[h % TENANT_BUCKETS] = t;
  return t;
}

/* Index of the first hour >= hour in t->hours (n_hours if none). */
static size_t hour_lower_bound(const tenant_t *t, int64_t hour)
{
  size_t lo = 0;
  size_t hi = t->n_hours;
  while (lo < hi) {
    size_t mid = lo + (hi - lo) / 2;
    if (t->hours[mid].hour < hour) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

/* The hour slot for hour, created if missing; NULL on ENOMEM. The pointer
 * is valid until the next insertion into t->hours. */
static hour_t *hour_get(tenant_t *t, int64_t hour)
{
  size_t i = hour_lower_bound(t, hour);
  if (i < t->n_hours && t->hours[i].hour == hour) {
    return &t->hours[i];
  }
  if (t->n_hours == t->cap_hours) {
    size_t cap = t->cap_hours == 0 ? 8 : t->cap_hours * 2;
    hour_t *hs = af_realloc(t->hours, cap * sizeof(*hs));
    if (hs == NULL) {
      return NULL;
    }
    t->hours = hs;
    t->cap_hours = cap;
  }
  memmove(&t->hours[i + 1], &t->hours[i], (t->n_hours - i) * sizeof(*t->hours));
  t->n_hours++;
  memset(&t->hours[i], 0, sizeof(t->hours[i]));
  t->hours[i].hour = hour;
  return &t->hours[i];
}

static ev_node_t *ledger_find(const mem_store_t *s, const tenant_t *t,
                              const char *event_id, uint64_t h)
{
  for (ev_node_t *e = s->ledger[h & (s->ledger_cap - 1)]; e != NULL;
       e = e->hash_next) {
    if (e->hash == h && e->tenant == t && strcmp(e->event_id, event_id) == 0) {
      return e;
    }
  }
  return NULL;
}

/* Doubles the ledger's bucket array; on ENOMEM keeps the old one (chains
 * just get longer). */
static void ledger_grow(mem_store_t *s)
{
  size_t cap = s->ledger_cap * 2;
  ev_node_t **nb = af_calloc(cap, sizeof(*nb));
  if (nb == NULL) {
    return;
  }
  for (size_t i = 0; i < s->ledger_cap; i++) {
    ev_node_t *e = s->ledger[i];
    while (e != NULL) {
      ev_node_t *next = e->hash_next;
      e->hash_next = nb[e->hash & (cap - 1)];
      nb[e->hash & (cap - 1)] = e;
      e = next;
    }
  }
  af_free(s->ledger);
  s->ledger = nb;
  s->ledger_cap = cap;
}

static void ledger_insert(mem_store_t *s, ev_node_t *e)
{
  if (s->ledger_n >= s->ledger_cap) {
    ledger_grow(s);
  }
  size_t b = e->hash & (s->ledger_cap - 1);
  e->hash_next = s->ledger[b];
  s->ledger[b] = e;
  s->ledger_n++;
}

static void ledger_remove(mem_store_t *s, ev_node_t *e)
{
  ev_node_t **pp = &s->ledger[e->hash & (s->ledger_cap - 1)];
  while (*pp != NULL && *pp != e) {
    pp = &(*pp)->hash_next;
  }
  if (*pp == e) {
    *pp = e->hash_next;
    s->ledger_n--;
  }
}

/* ---- apply ------------------------------------------------------------- */

static af_status_t mem_apply(af_usage_store_t *base,
                             const af_meter_event_t *events, size_t n,
                             uint8_t *dup, af_error_t *err)
{
  mem_store_t *s = (mem_store_t *)base;
  ev_node_t **created = af_calloc(n, sizeof(*created));
  if (created == NULL) {
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  size_t n_created = 0;
  af_status_t rc = AF_OK;

  pthread_mutex_lock(&s->mu);
  for (size_t i = 0; i < n; i++) {
    const af_meter_event_t *ev = &events[i];
    tenant_t *t = tenant_get(s, ev->tenant_id);
    if (t == NULL) {
      rc = AF_ENOMEM;
      break;
    }
    uint64_t h = fnv1a(ev->event_id, t->hash ^ UINT64_C(0x9e3779b97f4a7c15));
    if (ledger_find(s, t, ev->event_id, h) != NULL) {
      dup[i] = 1;
      continue;
    }
    int64_t hour = ev->timestamp_wall_ns / HOUR_NS;
    ev_node_t *e = af_calloc(1, sizeof(*e));
    if (e == NULL || hour_get(t, hour) == NULL) {
      af_free(e);
      rc = AF_ENOMEM;
      break;
    }
    e->tenant = t;
    e->hash = h;
    e->ts_ns = ev->timestamp_wall_ns;
    e->units = ev->units;
    e->tokens = ev->tokens_processed;
    e->latency_ms = ev->latency_ms;
    e->compliance = ev->compliance_score;
    e->op = ev->operation;
    e->tier = ev->tier;
    e->valid = ev->constitutional_valid;
    memcpy(e->event_id, ev->event_id, sizeof(e->event_id));
    e->event_id[AF_EVENT_ID_MAX] = '\0';
    ledger_insert(s, e);
    created[n_created++] = e;
    dup[i] = 0;
  }
  if (rc != AF_OK) {
    for (size_t i = 0; i < n_created; i++) {
      ledger_remove(s, created[i]);
      af_free(created[i]);
    }
  } else {
    for (size_t i = 0; i < n_created; i++) {
      ev_node_t *e = created[i];
      tenant_t *t = e->tenant;
      size_t hi = hour_lower_bound(t, e->ts_ns / HOUR_NS);
      hour_t *hr = &t->hours[hi]; /* exists: created above */
      e->hour_next = hr->events;
      hr->events = e;
      agg_add_node(&hr->agg[(int)e->op - 1][(int)e->tier - 1], e);
    }
  }
  pthread_mutex_unlock(&s->mu);
  af_free(created);
  if (rc != AF_OK) {
    return af_error_set(err, rc, "out of memory");
  }
  return AF_OK;
}

/* ---- query ------------------------------------------------------------- */

static bool op_match(const af_usage_query_t *q, int op)
{
  return q->operation == 0 || (int)q->operation == op;
}

static bool tier_match(const af_usage_query_t *q, int tier)
{
  return q->tier == 0 || (int)q->tier == tier;
}

/* Appends b to out, or marks it truncated. */
static void emit(af_usage_result_t *out, const af_usage_bucket_t *b)
{
  if (out->n_buckets < out->max_buckets) {
    out->buckets[out->n_buckets++] = *b;
  } else {
    out->truncated = true;
  }
}

void af__usage_fold_begin(af__usage_fold_t *f, const af_usage_query_t *q,
                          af_usage_result_t *out)
{
  memset(f, 0, sizeof(*f));
  f->q = *q;
  f->out = out;
  f->last_day = -1;
  memset(&out->total, 0, sizeof(out->total));
  out->n_buckets = 0;
  out->truncated = false;
}

void af__usage_fold_hour(
    af__usage_fold_t *f, int64_t hour,
    const af_usage_agg_t m[AF_METER_OPERATION_COUNT][AF_METER_TIER_COUNT])
{
  const af_usage_query_t *q = &f->q;
  af_usage_result_t *out = f->out;
  af_usage_agg_t hour_sum;
  memset(&hour_sum, 0, sizeof(hour_sum));
  for (int op = 1; op <= AF_METER_OPERATION_COUNT; op++) {
    for (int tier = 1; tier <= AF_METER_TIER_COUNT; tier++) {
      const af_usage_agg_t *a = &m[op - 1][tier - 1];
      if (a->count == 0 || !op_match(q, op) || !tier_match(q, tier)) {
        continue;
      }
      agg_add(&hour_sum, a);
      agg_add(&f->per_op[op - 1], a);
      agg_add(&f->per_tier[tier - 1], a);
    }
  }
  if (hour_sum.count == 0) {
    return;
  }
  agg_add(&out->total, &hour_sum);
  af_usage_bucket_t b;
  memset(&b, 0, sizeof(b));
  b.agg = hour_sum;
  if (q->group_by == AF_USAGE_GROUP_HOUR) {
    b.start_ns = hour * HOUR_NS;
    emit(out, &b);
  } else if (q->group_by == AF_USAGE_GROUP_DAY) {
    int64_t day = hour / HOURS_PER_DAY;
    if (day == f->last_day) {
      if (f->last_emitted) {
        agg_add(&out->buckets[out->n_buckets - 1].agg, &hour_sum);
      }
    } else {
      b.start_ns = day * HOURS_PER_DAY * HOUR_NS;
      size_t before = out->n_buckets;
      emit(out, &b);
      f->last_day = day;
      f->last_emitted = out->n_buckets > before;
    }
  }
}

void af__usage_fold_end(af__usage_fold_t *f)
{
  af_usage_result_t *out = f->out;
  af_usage_bucket_t b;
  switch (f->q.group_by) {
  case AF_USAGE_GROUP_OPERATION:
    for (int op = 1; op <= AF_METER_OPERATION_COUNT; op++) {
      if (f->per_op[op - 1].count > 0) {
        memset(&b, 0, sizeof(b));
        b.operation = (af_meter_operation_t)op;
        b.agg = f->per_op[op - 1];
        emit(out, &b);
      }
    }
    break;
  case AF_USAGE_GROUP_TIER:
    for (int tier = 1; tier <= AF_METER_TIER_COUNT; tier++) {
      if (f->per_tier[tier - 1].count > 0) {
        memset(&b, 0, sizeof(b));
        b.tier = (af_meter_tier_t)tier;
        b.agg = f->per_tier[tier - 1];
        emit(out, &b);
      }
    }
    break;
  case AF_USAGE_GROUP_NONE:
    memset(&b, 0, sizeof(b));
    b.agg = out->total;
    emit(out, &b);
    break;
  default:
    break;
  }
}

static af_status_t mem_query(af_usage_store_t *base, const af_usage_query_t *q,
                             af_usage_result_t *out, af_error_t *err)
{
  (void)err;
  mem_store_t *s = (mem_store_t *)base;
  af__usage_fold_t f;
  af__usage_fold_begin(&f, q, out);

  pthread_mutex_lock(&s->mu);
  tenant_t *t = tenant_find(s, q->tenant_id, fnv1a(q->tenant_id, FNV_OFFSET));
  if (t != NULL && q->end_ns > q->start_ns) {
    int64_t last_hour = (q->end_ns - 1) / HOUR_NS;
    for (size_t i = hour_lower_bound(t, q->start_ns / HOUR_NS);
         i < t->n_hours && t->hours[i].hour <= last_hour; i++) {
      const hour_t *hr = &t->hours[i];
      int64_t h_start = hr->hour * HOUR_NS;
      bool whole = h_start >= q->start_ns && h_start + HOUR_NS <= q->end_ns;
      af_usage_agg_t m[AF_METER_OPERATION_COUNT][AF_METER_TIER_COUNT];
      if (whole) {
        memcpy(m, hr->agg, sizeof(m));
      } else {
        memset(m, 0, sizeof(m));
        for (const ev_node_t *e = hr->events; e != NULL; e = e->hour_next) {
          if (e->ts_ns >= q->start_ns && e->ts_ns < q->end_ns) {
            agg_add_node(&m[(int)e->op - 1][(int)e->tier - 1], e);
          }
        }
      }
      af__usage_fold_hour(&f, hr->hour, (const af_usage_agg_t(*)[4])m);
    }
  }
  pthread_mutex_unlock(&s->mu);
  af__usage_fold_end(&f);
  return AF_OK;
}

/* ---- lifecycle --------------------------------------------------------- */

static void mem_destroy(af_usage_store_t *base)
{
  mem_store_t *s = (mem_store_t *)base;
  for (size_t i = 0; i < s->ledger_cap; i++) {
    ev_node_t *e = s->ledger[i];
    while (e != NULL) {
      ev_node_t *next = e->hash_next;
      af_free(e);
      e = next;
    }
  }
  af_free(s->ledger);
  for (size_t i = 0; i < TENANT_BUCKETS; i++) {
    tenant_t *t = s->tenants[i];
    while (t != NULL) {
      tenant_t *next = t->next;
      af_free(t->hours);
      af_free(t);
      t = next;
    }
  }
  pthread_mutex_destroy(&s->mu);
  af_free(s);
}

static const af_usage_store_ops_t mem_ops = {
    .apply = mem_apply,
    .query = mem_query,
    .destroy = mem_destroy,
};

af_status_t af_usage_store_memory_create(af_usage_store_t **out)
{
  if (out == NULL) {
    return AF_EINVAL;
  }
  mem_store_t *s = af_calloc(1, sizeof(*s));
  if (s == NULL) {
    return AF_ENOMEM;
  }
  s->ledger_cap = LEDGER_INITIAL;
  s->ledger = af_calloc(s->ledger_cap, sizeof(*s->ledger));
  if (s->ledger == NULL || pthread_mutex_init(&s->mu, NULL) != 0) {
    af_free(s->ledger);
    af_free(s);
    return AF_ENOMEM;
  }
  s->base.ops = &mem_ops;
  s->base.durable = false;
  *out = &s->base;
  return AF_OK;
}
