/*
 * test_metering.c - antifragility.v1.MeteringService against a real
 * in-process afd (svc_metering.c, usage_store.c, the core meter) over
 * loopback with the raw gRPC core test client.
 *
 * Each case starts its own server (127.0.0.1:0, --memory), so no state
 * leaks between cases. Cases that need the meter to stay full or events to
 * stay pending install a "gated" usage store (af__usage_store_set_factory):
 * the in-memory store whose apply waits while the gate is closed, so the
 * meter's flusher is held inside the sink with a known batch and the queue
 * fills deterministically. Waits are on real events with bounded timeouts
 * (poll until the condition holds); nothing sleeps to let a timeout pass.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "af/engine.h"
#include "af/meter.h"
#include "af_testclient.h"
#include "antifragility/v1/metering.pb-c.h"
#include "usage_store.h"

#define SVC "/antifragility.v1.MeteringService/"
#define RECORD SVC "RecordUsage"
#define RECORD_STREAM SVC "RecordUsageStream"
#define QUERY SVC "QueryUsage"
#define METRICS SVC "GetMeteringMetrics"
#define TIMEOUT_MS 10000
#define HASH "cdd01ef066bc6cf2"
/* 2026-01-01T00:00:00Z */
#define DAY0 INT64_C(1767225600)
#define HOUR INT64_C(3600)

typedef Antifragility__V1__RecordUsageResponse record_resp_t;
typedef Antifragility__V1__RecordUsageStreamResponse stream_resp_t;
typedef Antifragility__V1__QueryUsageResponse query_resp_t;
typedef Antifragility__V1__GetMeteringMetricsResponse metrics_resp_t;

#define K_RECORD (&antifragility__v1__record_usage_response__descriptor)
#define K_STREAM (&antifragility__v1__record_usage_stream_response__descriptor)
#define K_QUERY (&antifragility__v1__query_usage_response__descriptor)
#define K_METRICS                                                              \
  (&antifragility__v1__get_metering_metrics_response__descriptor)

static void free_msg(void *m)
{
  if (m != NULL) {
    protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
  }
}

static void nap_ms(long ms)
{
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* ---- events ------------------------------------------------------------ */

/* A request with its sub-messages in one place (do not move after
 * ev_init: the request points into it). */
typedef struct {
  Antifragility__V1__RecordUsageRequest req;
  Antifragility__V1__UsageEvent ev;
  Google__Protobuf__Timestamp ts;
  char id[80];
} ev_t;

static void ev_init(ev_t *e, const char *tenant, const char *id)
{
  memset(e, 0, sizeof(*e));
  antifragility__v1__record_usage_request__init(&e->req);
  antifragility__v1__usage_event__init(&e->ev);
  snprintf(e->id, sizeof(e->id), "%s", id);
  e->ev.tenant_id = (char *)tenant;
  e->ev.event_id = e->id;
  e->ev.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AGENT_MESSAGE;
  e->ev.tier = ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_STANDARD;
  e->ev.units = 1;
  e->ev.tokens_processed = 10;
  e->ev.latency_ms = 1.5;
  e->ev.compliance_score = 1.0;
  e->ev.constitutional_valid = true;
  e->req.event = &e->ev;
}

static void ev_at(ev_t *e, int64_t seconds)
{
  google__protobuf__timestamp__init(&e->ts);
  e->ts.seconds = seconds;
  e->ev.timestamp = &e->ts;
}

static grpc_status_code record(af_tc_t *c, ev_t *e, record_resp_t **out,
                               af_tc_status_t *st)
{
  ProtobufCMessage *r = NULL;
  grpc_status_code code =
      af_tc_unary(c, RECORD, &e->req.base, K_RECORD, &r, st, NULL, TIMEOUT_MS);
  if (out != NULL) {
    *out = (record_resp_t *)r;
  } else {
    free_msg(r);
  }
  return code;
}

/* Records e and asserts it was taken (new if want_dup is false). */
static void record_ok(af_tc_t *c, ev_t *e, bool want_dup)
{
  record_resp_t *r = NULL;
  af_tc_status_t st;
  assert_int_equal(record(c, e, &r, &st), GRPC_STATUS_OK);
  assert_true(r->accepted);
  assert_int_equal(r->duplicate, want_dup);
  assert_string_equal(r->event_id, e->id);
  assert_false(r->durable); /* in-memory store */
  free_msg(r);
}

static grpc_status_code record_stream(af_tc_t *c, ev_t *evs, size_t n,
                                      stream_resp_t **out, af_tc_status_t *st)
{
  const ProtobufCMessage **reqs = calloc(n + 1, sizeof(*reqs));
  assert_non_null(reqs);
  for (size_t i = 0; i < n; i++) {
    reqs[i] = &evs[i].req.base;
  }
  ProtobufCMessage *r = NULL;
  grpc_status_code code =
      af_tc_client_stream(c, RECORD_STREAM, reqs, n, K_STREAM, &r, st, 20000);
  free(reqs);
  *out = (stream_resp_t *)r;
  return code;
}

/* ---- queries ----------------------------------------------------------- */

typedef struct {
  Antifragility__V1__QueryUsageRequest req;
  Google__Protobuf__Timestamp start;
  Google__Protobuf__Timestamp end;
} query_t;

static void q_init(query_t *q, const char *tenant,
                   Antifragility__V1__UsageGroupBy group)
{
  memset(q, 0, sizeof(*q));
  antifragility__v1__query_usage_request__init(&q->req);
  q->req.tenant_id = (char *)tenant;
  q->req.group_by = group;
}

static void q_range(query_t *q, int64_t start_s, int64_t end_s)
{
  google__protobuf__timestamp__init(&q->start);
  google__protobuf__timestamp__init(&q->end);
  q->start.seconds = start_s;
  q->end.seconds = end_s;
  q->req.start = &q->start;
  q->req.end = &q->end;
}

static grpc_status_code query(af_tc_t *c, query_t *q, query_resp_t **out,
                              af_tc_status_t *st)
{
  ProtobufCMessage *r = NULL;
  grpc_status_code code =
      af_tc_unary(c, QUERY, &q->req.base, K_QUERY, &r, st, NULL, TIMEOUT_MS);
  *out = (query_resp_t *)r;
  return code;
}

/* Total count of tenant's events (all time). */
static uint64_t count_of(af_tc_t *c, const char *tenant)
{
  query_t q;
  q_init(&q, tenant,
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  query_resp_t *r = NULL;
  assert_int_equal(query(c, &q, &r, NULL), GRPC_STATUS_OK);
  uint64_t n = r->total->count;
  free_msg(r);
  return n;
}

static metrics_resp_t *metrics(af_tc_t *c)
{
  Antifragility__V1__GetMeteringMetricsRequest req =
      ANTIFRAGILITY__V1__GET_METERING_METRICS_REQUEST__INIT;
  ProtobufCMessage *r = NULL;
  assert_int_equal(
      af_tc_unary(c, METRICS, &req.base, K_METRICS, &r, NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_OK);
  return (metrics_resp_t *)r;
}

/* ---- the gated store --------------------------------------------------- */

typedef struct {
  af_usage_store_t base;
  af_usage_store_t *inner;
} gated_store_t;

static pthread_mutex_t g_gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_gate_cv = PTHREAD_COND_INITIALIZER;
static bool g_gate_open = true;
static int g_gate_waiting; /* applies now held at the gate */

static void gate_set(bool open)
{
  pthread_mutex_lock(&g_gate_mu);
  g_gate_open = open;
  pthread_cond_broadcast(&g_gate_cv);
  pthread_mutex_unlock(&g_gate_mu);
}

/* Waits (bounded) until an apply is held at the gate. */
static void gate_wait_held(void)
{
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  until.tv_sec += 10;
  pthread_mutex_lock(&g_gate_mu);
  while (g_gate_waiting == 0) {
    if (pthread_cond_timedwait(&g_gate_cv, &g_gate_mu, &until) != 0) {
      break;
    }
  }
  int held = g_gate_waiting;
  pthread_mutex_unlock(&g_gate_mu);
  assert_true(held > 0);
}

static af_status_t gated_apply(af_usage_store_t *s,
                               const af_meter_event_t *events, size_t n,
                               uint8_t *dup, af_error_t *err)
{
  gated_store_t *g = (gated_store_t *)s;
  pthread_mutex_lock(&g_gate_mu);
  g_gate_waiting++;
  pthread_cond_broadcast(&g_gate_cv);
  while (!g_gate_open) {
    pthread_cond_wait(&g_gate_cv, &g_gate_mu);
  }
  g_gate_waiting--;
  pthread_mutex_unlock(&g_gate_mu);
  return af_usage_store_apply(g->inner, events, n, dup, err);
}

static af_status_t gated_query(af_usage_store_t *s, const af_usage_query_t *q,
                               af_usage_result_t *out, af_error_t *err)
{
  return af_usage_store_query(((gated_store_t *)s)->inner, q, out, err);
}

static void gated_destroy(af_usage_store_t *s)
{
  gated_store_t *g = (gated_store_t *)s;
  af_usage_store_destroy(g->inner);
  free(g);
}

static const af_usage_store_ops_t gated_ops = {
    .apply = gated_apply, .query = gated_query, .destroy = gated_destroy};

static af_status_t gated_factory(af_usage_store_t **out, void *ctx)
{
  (void)ctx;
  gated_store_t *g = calloc(1, sizeof(*g));
  if (g == NULL) {
    return AF_ENOMEM;
  }
  af_status_t st = af_usage_store_memory_create(&g->inner);
  if (st != AF_OK) {
    free(g);
    return st;
  }
  g->base.ops = &gated_ops;
  g->base.durable = false;
  *out = &g->base;
  return AF_OK;
}

/* ---- fixtures ---------------------------------------------------------- */

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fixture_t;

static int start_with(void **state, const af_config_t *cfg, bool gated)
{
  fixture_t *f = calloc(1, sizeof(*f));
  assert_non_null(f);
  gate_set(true);
  if (gated) {
    af__usage_store_set_factory(gated_factory, NULL);
  }
  f->ts = af_ts_start(cfg);
  af__usage_store_set_factory(NULL, NULL);
  f->c = af_tc_connect(af_ts_port(f->ts));
  *state = f;
  return 0;
}

static int setup(void **state) { return start_with(state, NULL, false); }

/* queue_size 4, no flush tick during the test: only explicit flush
 * requests (RecordUsage, stream end) and full batches wake the flusher. */
static int setup_small_gated(void **state)
{
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.queue_size = 4;
  cfg.flush_interval_ms = 3600000;
  return start_with(state, &cfg, true);
}

static int setup_gated(void **state)
{
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.flush_interval_ms = 3600000;
  return start_with(state, &cfg, true);
}

static int teardown(void **state)
{
  fixture_t *f = *state;
  gate_set(true);
  af_tc_close(f->c);
  af_ts_stop(f->ts);
  free(f);
  return 0;
}

/* ---- RecordUsage ------------------------------------------------------- */

static void
record_usage_takes_a_new_event_and_query_sees_it_at_once(void **state)
{
  fixture_t *f = *state;
  ev_t e;
  ev_init(&e, "t-happy", "ev-1");
  e.ev.units = 3;
  e.ev.tokens_processed = 42;
  e.ev.latency_ms = 2.5;
  e.ev.compliance_score = 0.75;
  e.ev.agent_id = "agent-7";
  record_ok(f->c, &e, false);

  query_t q;
  q_init(&q, "t-happy",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  query_resp_t *r = NULL;
  assert_int_equal(query(f->c, &q, &r, NULL), GRPC_STATUS_OK);
  assert_int_equal(r->total->count, 1);
  assert_int_equal(r->total->units, 3);
  assert_int_equal(r->total->tokens, 42);
  assert_true(fabs(r->total->latency_sum_ms - 2.5) < 1e-9);
  assert_true(fabs(r->total->latency_avg_ms - 2.5) < 1e-9);
  assert_true(fabs(r->total->compliance_avg - 0.75) < 1e-9);
  assert_int_equal(r->total->constitutional_invalid, 0);
  assert_int_equal(r->n_buckets, 1); /* no grouping: one bucket */
  assert_int_equal(r->buckets[0]->count, 1);
  assert_false(r->truncated);
  free_msg(r);
}

static void record_usage_answers_well_within_the_flush_interval(void **state)
{
  /* Default flush_interval_ms is 1000: the handler wakes the flusher. */
  fixture_t *f = *state;
  for (int i = 0; i < 3; i++) {
    char id[16];
    snprintf(id, sizeof(id), "fast-%d", i);
    ev_t e;
    ev_init(&e, "t-fast", id);
    int64_t t0 = af_tc_now_ms();
    record_ok(f->c, &e, false);
    assert_true(af_tc_now_ms() - t0 < 500);
  }
}

static void record_usage_with_the_right_hash_and_metadata_is_taken(void **state)
{
  fixture_t *f = *state;
  Antifragility__V1__UsageEvent__MetadataEntry m1 =
      ANTIFRAGILITY__V1__USAGE_EVENT__METADATA_ENTRY__INIT;
  Antifragility__V1__UsageEvent__MetadataEntry m2 =
      ANTIFRAGILITY__V1__USAGE_EVENT__METADATA_ENTRY__INIT;
  m1.key = "policy";
  m1.value = "p-\"1\"";
  m2.key = "region";
  m2.value = "eu\n";
  Antifragility__V1__UsageEvent__MetadataEntry *md[] = {&m1, &m2};
  ev_t e;
  ev_init(&e, "t-hash", "ev-h");
  e.ev.constitutional_hash = HASH;
  e.ev.n_metadata = 2;
  e.ev.metadata = md;
  record_ok(f->c, &e, false);
  assert_int_equal(count_of(f->c, "t-hash"), 1);
}

static void record_usage_generates_an_event_id_when_none_is_given(void **state)
{
  fixture_t *f = *state;
  ev_t e;
  ev_init(&e, "t-gen", "");
  record_resp_t *r = NULL;
  assert_int_equal(record(f->c, &e, &r, NULL), GRPC_STATUS_OK);
  assert_true(r->accepted);
  assert_false(r->duplicate);
  assert_int_equal(strlen(r->event_id), 32);
  free_msg(r);
  assert_int_equal(count_of(f->c, "t-gen"), 1);
}

typedef enum {
  M_NO_EVENT,
  M_NO_TENANT,
  M_LONG_TENANT,
  M_CTRL_TENANT,
  M_LONG_AGENT,
  M_LONG_EVENT_ID,
  M_SPACE_EVENT_ID,
  M_NO_OPERATION,
  M_BAD_OPERATION,
  M_BAD_TIER,
  M_NAN_LATENCY,
  M_INF_LATENCY,
  M_NEG_LATENCY,
  M_HIGH_COMPLIANCE,
  M_NEG_COMPLIANCE,
  M_NAN_COMPLIANCE,
  M_NEG_TIMESTAMP,
  M_BAD_NANOS,
  M_MD_ENTRIES,
  M_MD_EMPTY_KEY,
  M_MD_LONG_VALUE,
  M_MD_TOO_BIG,
  M_LONG_HASH,
  M_WRONG_HASH,
} mutation_t;

typedef struct {
  mutation_t m;
  grpc_status_code code;
  const char *message;
} invalid_case_t;

static const invalid_case_t k_invalid[] = {
    {M_NO_EVENT, GRPC_STATUS_INVALID_ARGUMENT, "event is required"},
    {M_NO_TENANT, GRPC_STATUS_INVALID_ARGUMENT, "tenant_id is required"},
    {M_LONG_TENANT, GRPC_STATUS_INVALID_ARGUMENT,
     "tenant_id must be at most 128 bytes"},
    {M_CTRL_TENANT, GRPC_STATUS_INVALID_ARGUMENT,
     "tenant_id must be valid UTF-8 without control characters"},
    {M_LONG_AGENT, GRPC_STATUS_INVALID_ARGUMENT,
     "agent_id must be at most 128 bytes"},
    {M_LONG_EVENT_ID, GRPC_STATUS_INVALID_ARGUMENT,
     "event_id must be at most 64 characters"},
    {M_SPACE_EVENT_ID, GRPC_STATUS_INVALID_ARGUMENT,
     "event_id must be printable ASCII without spaces"},
    {M_NO_OPERATION, GRPC_STATUS_INVALID_ARGUMENT, "operation is required"},
    {M_BAD_OPERATION, GRPC_STATUS_INVALID_ARGUMENT, "unknown operation"},
    {M_BAD_TIER, GRPC_STATUS_INVALID_ARGUMENT, "unknown tier"},
    {M_NAN_LATENCY, GRPC_STATUS_INVALID_ARGUMENT,
     "latency_ms must be a finite number"},
    {M_INF_LATENCY, GRPC_STATUS_INVALID_ARGUMENT,
     "latency_ms must be a finite number"},
    {M_NEG_LATENCY, GRPC_STATUS_INVALID_ARGUMENT, "latency_ms must be >= 0"},
    {M_HIGH_COMPLIANCE, GRPC_STATUS_INVALID_ARGUMENT,
     "compliance_score must be between 0.0 and 1.0"},
    {M_NEG_COMPLIANCE, GRPC_STATUS_INVALID_ARGUMENT,
     "compliance_score must be between 0.0 and 1.0"},
    {M_NAN_COMPLIANCE, GRPC_STATUS_INVALID_ARGUMENT,
     "compliance_score must be between 0.0 and 1.0"},
    {M_NEG_TIMESTAMP, GRPC_STATUS_INVALID_ARGUMENT,
     "timestamp must be a valid time between 1970-01-01 and 2262-04-11"},
    {M_BAD_NANOS, GRPC_STATUS_INVALID_ARGUMENT,
     "timestamp must be a valid time between 1970-01-01 and 2262-04-11"},
    {M_MD_ENTRIES, GRPC_STATUS_INVALID_ARGUMENT,
     "metadata must have at most 16 entries"},
    {M_MD_EMPTY_KEY, GRPC_STATUS_INVALID_ARGUMENT,
     "metadata keys must be 1-64 bytes"},
    {M_MD_LONG_VALUE, GRPC_STATUS_INVALID_ARGUMENT,
     "metadata values must be at most 256 bytes"},
    {M_MD_TOO_BIG, GRPC_STATUS_INVALID_ARGUMENT,
     "metadata must be at most 511 bytes as JSON"},
    {M_LONG_HASH, GRPC_STATUS_INVALID_ARGUMENT,
     "constitutional_hash must be at most 64 characters"},
    {M_WRONG_HASH, GRPC_STATUS_FAILED_PRECONDITION,
     "constitutional hash mismatch: expected " HASH},
};

static void
record_usage_refuses_each_invalid_field_with_its_message(void **state)
{
  fixture_t *f = *state;
  char long_name[200];
  memset(long_name, 'x', 129);
  long_name[129] = '\0';
  char long_id[80];
  memset(long_id, 'i', 65);
  long_id[65] = '\0';
  char long_value[300];
  memset(long_value, 'v', 257);
  long_value[257] = '\0';
  char big_value[251];
  memset(big_value, 'b', 250);
  big_value[250] = '\0';
  char keys[17][8];
  Antifragility__V1__UsageEvent__MetadataEntry ents[17];
  Antifragility__V1__UsageEvent__MetadataEntry *md[17];
  for (int i = 0; i < 17; i++) {
    antifragility__v1__usage_event__metadata_entry__init(&ents[i]);
    snprintf(keys[i], sizeof(keys[i]), "k%d", i);
    ents[i].key = keys[i];
    ents[i].value = "v";
    md[i] = &ents[i];
  }

  size_t n = sizeof(k_invalid) / sizeof(k_invalid[0]);
  for (size_t i = 0; i < n; i++) {
    const invalid_case_t *tc = &k_invalid[i];
    ev_t e;
    ev_init(&e, "t-bad", "ev-bad");
    switch (tc->m) {
    case M_NO_EVENT:
      e.req.event = NULL;
      break;
    case M_NO_TENANT:
      e.ev.tenant_id = "";
      break;
    case M_LONG_TENANT:
      e.ev.tenant_id = long_name;
      break;
    case M_CTRL_TENANT:
      e.ev.tenant_id = "t\001x";
      break;
    case M_LONG_AGENT:
      e.ev.agent_id = long_name;
      break;
    case M_LONG_EVENT_ID:
      e.ev.event_id = long_id;
      break;
    case M_SPACE_EVENT_ID:
      e.ev.event_id = "ev bad";
      break;
    case M_NO_OPERATION:
      e.ev.operation = 0;
      break;
    case M_BAD_OPERATION:
      e.ev.operation = (Antifragility__V1__MeterableOperation)99;
      break;
    case M_BAD_TIER:
      e.ev.tier = (Antifragility__V1__MeteringTier)9;
      break;
    case M_NAN_LATENCY:
      e.ev.latency_ms = NAN;
      break;
    case M_INF_LATENCY:
      e.ev.latency_ms = INFINITY;
      break;
    case M_NEG_LATENCY:
      e.ev.latency_ms = -1.0;
      break;
    case M_HIGH_COMPLIANCE:
      e.ev.compliance_score = 1.5;
      break;
    case M_NEG_COMPLIANCE:
      e.ev.compliance_score = -0.1;
      break;
    case M_NAN_COMPLIANCE:
      e.ev.compliance_score = NAN;
      break;
    case M_NEG_TIMESTAMP:
      ev_at(&e, -1);
      break;
    case M_BAD_NANOS:
      ev_at(&e, DAY0);
      e.ts.nanos = 1000000000;
      break;
    case M_MD_ENTRIES:
      e.ev.n_metadata = 17;
      e.ev.metadata = md;
      break;
    case M_MD_EMPTY_KEY:
      ents[0].key = "";
      e.ev.n_metadata = 1;
      e.ev.metadata = md;
      break;
    case M_MD_LONG_VALUE:
      ents[0].value = long_value;
      e.ev.n_metadata = 1;
      e.ev.metadata = md;
      break;
    case M_MD_TOO_BIG:
      for (int k = 0; k < 3; k++) {
        ents[k].value = big_value;
      }
      e.ev.n_metadata = 3;
      e.ev.metadata = md;
      break;
    case M_LONG_HASH:
      e.ev.constitutional_hash = long_id;
      break;
    case M_WRONG_HASH:
      e.ev.constitutional_hash = "deadbeefdeadbeef";
      break;
    }
    af_tc_status_t st;
    record_resp_t *r = NULL;
    grpc_status_code code = record(f->c, &e, &r, &st);
    if (code != tc->code || strcmp(st.message, tc->message) != 0) {
      fail_msg("case %zu: got %d \"%s\", want %d \"%s\"", i, code, st.message,
               tc->code, tc->message);
    }
    assert_null(r);
    for (int k = 0; k < 17; k++) {
      ents[k].key = keys[k];
      ents[k].value = "v";
    }
  }
  /* Nothing changed: the valid event with the same key is new. */
  assert_int_equal(count_of(f->c, "t-bad"), 0);
  ev_t ok;
  ev_init(&ok, "t-bad", "ev-bad");
  record_ok(f->c, &ok, false);
  metrics_resp_t *m = metrics(f->c);
  assert_int_equal(m->dropped_invalid, n);
  assert_int_equal(m->queued, 1);
  free_msg(m);
}

static void duplicate_event_is_reported_and_counted_once(void **state)
{
  fixture_t *f = *state;
  ev_t e;
  ev_init(&e, "t-dup", "ev-0");
  record_ok(f->c, &e, false);
  record_ok(f->c, &e, true);
  e.ev.units = 100; /* same key, other content: still the first one */
  record_ok(f->c, &e, true);

  query_t q;
  q_init(&q, "t-dup",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  query_resp_t *r = NULL;
  assert_int_equal(query(f->c, &q, &r, NULL), GRPC_STATUS_OK);
  assert_int_equal(r->total->count, 1);
  assert_int_equal(r->total->units, 1);
  free_msg(r);
  metrics_resp_t *m = metrics(f->c);
  assert_int_equal(m->duplicates, 2);
  assert_int_equal(m->queued, 3);
  assert_int_equal(m->flushed, 3);
  free_msg(m);
}

static void same_event_id_under_another_tenant_counts_separately(void **state)
{
  fixture_t *f = *state;
  ev_t a;
  ev_t b;
  ev_init(&a, "t-one", "shared-id");
  ev_init(&b, "t-two", "shared-id");
  record_ok(f->c, &a, false);
  record_ok(f->c, &b, false);
  record_ok(f->c, &a, true);
  assert_int_equal(count_of(f->c, "t-one"), 1);
  assert_int_equal(count_of(f->c, "t-two"), 1);
  assert_int_equal(count_of(f->c, "t-three"), 0);
}

/* ---- RecordUsageStream ------------------------------------------------- */

static void
record_usage_stream_summarises_accepted_duplicates_and_rejected(void **state)
{
  fixture_t *f = *state;
  ev_t evs[12];
  char id[16];
  for (int i = 0; i < 8; i++) {
    snprintf(id, sizeof(id), "s-%d", i);
    ev_init(&evs[i], "t-stream", id);
  }
  ev_init(&evs[8], "t-stream", "s-3"); /* duplicate within the stream */
  ev_init(&evs[9], "", "s-9");         /* invalid */
  ev_init(&evs[10], "t-stream", "s-10");
  evs[10].ev.latency_ms = -2;             /* invalid */
  ev_init(&evs[11], "t-stream", "s-pre"); /* recorded before the stream */
  record_ok(f->c, &evs[11], false);

  stream_resp_t *r = NULL;
  af_tc_status_t st;
  assert_int_equal(record_stream(f->c, evs, 12, &r, &st), GRPC_STATUS_OK);
  assert_int_equal(r->received, 12);
  assert_int_equal(r->accepted, 8);
  assert_int_equal(r->duplicates, 2);
  assert_int_equal(r->rejected, 2);
  assert_string_equal(r->first_error, "tenant_id is required");
  assert_int_equal(r->first_error_index, 9);
  free_msg(r);
  assert_int_equal(count_of(f->c, "t-stream"), 9);
}

static void empty_record_usage_stream_answers_zeroes(void **state)
{
  fixture_t *f = *state;
  stream_resp_t *r = NULL;
  assert_int_equal(record_stream(f->c, NULL, 0, &r, NULL), GRPC_STATUS_OK);
  assert_int_equal(r->received, 0);
  assert_int_equal(r->accepted, 0);
  assert_int_equal(r->rejected, 0);
  assert_string_equal(r->first_error, "");
  free_msg(r);
}

static void record_usage_stream_of_many_events_counts_them_all(void **state)
{
  fixture_t *f = *state;
  enum { N = 1000 };
  ev_t *evs = calloc(N, sizeof(*evs));
  assert_non_null(evs);
  char id[16];
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof(id), "m-%d", i);
    ev_init(&evs[i], "t-many", id);
    evs[i].ev.tokens_processed = (uint64_t)i;
  }
  stream_resp_t *r = NULL;
  assert_int_equal(record_stream(f->c, evs, N, &r, NULL), GRPC_STATUS_OK);
  assert_int_equal(r->accepted, N);
  assert_int_equal(r->rejected, 0);
  free_msg(r);
  free(evs);
  query_t q;
  q_init(&q, "t-many",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  query_resp_t *qr = NULL;
  assert_int_equal(query(f->c, &q, &qr, NULL), GRPC_STATUS_OK);
  assert_int_equal(qr->total->count, N);
  assert_int_equal(qr->total->tokens, (uint64_t)N * (N - 1) / 2);
  free_msg(qr);
}

/* ---- QueryUsage -------------------------------------------------------- */

/* Four events over two UTC days (see the table in the test). */
static void record_calendar(af_tc_t *c)
{
  ev_t e;
  ev_init(&e, "t-cal", "c-1"); /* day 0, 00:10 */
  ev_at(&e, DAY0 + 10 * 60);
  e.ev.units = 2;
  e.ev.tokens_processed = 10;
  e.ev.latency_ms = 1.0;
  e.ev.compliance_score = 1.0;
  record_ok(c, &e, false);

  ev_init(&e, "t-cal", "c-2"); /* day 0, 00:50 */
  ev_at(&e, DAY0 + 50 * 60);
  e.ev.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_POLICY_EVALUATION;
  e.ev.tier = ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENHANCED;
  e.ev.units = 3;
  e.ev.tokens_processed = 20;
  e.ev.latency_ms = 3.0;
  e.ev.compliance_score = 0.5;
  e.ev.constitutional_valid = false;
  record_ok(c, &e, false);

  ev_init(&e, "t-cal", "c-3"); /* day 0, 01:05 */
  ev_at(&e, DAY0 + HOUR + 5 * 60);
  e.ev.tier = ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENHANCED;
  e.ev.units = 1;
  e.ev.tokens_processed = 5;
  e.ev.latency_ms = 2.0;
  e.ev.compliance_score = 0.8;
  record_ok(c, &e, false);

  ev_init(&e, "t-cal", "c-4"); /* day 1, 02:00 */
  ev_at(&e, DAY0 + 26 * HOUR);
  e.ev.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AUDIT_WRITE;
  e.ev.tier = ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENTERPRISE;
  e.ev.units = 4;
  e.ev.tokens_processed = 0;
  e.ev.latency_ms = 0.0;
  e.ev.compliance_score = 1.0;
  record_ok(c, &e, false);
}

static query_resp_t *query_ok(af_tc_t *c, query_t *q)
{
  query_resp_t *r = NULL;
  af_tc_status_t st;
  grpc_status_code code = query(c, q, &r, &st);
  if (code != GRPC_STATUS_OK) {
    fail_msg("QueryUsage: %d %s", code, st.message);
  }
  return r;
}

static void query_usage_totals_match_what_was_sent(void **state)
{
  fixture_t *f = *state;
  record_calendar(f->c);
  query_t q;
  q_init(&q, "t-cal",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  query_resp_t *r = query_ok(f->c, &q); /* end unset = now */
  const Antifragility__V1__UsageBucket *t = r->total;
  assert_int_equal(t->count, 4);
  assert_int_equal(t->units, 10);
  assert_int_equal(t->tokens, 35);
  assert_true(fabs(t->latency_sum_ms - 6.0) < 1e-9);
  assert_true(fabs(t->latency_avg_ms - 1.5) < 1e-9);
  assert_true(fabs(t->compliance_avg - 0.825) < 1e-9);
  assert_int_equal(t->constitutional_invalid, 1);
  assert_null(t->bucket_start);
  free_msg(r);
}

static void query_usage_groups_by_hour_and_day_in_time_order(void **state)
{
  fixture_t *f = *state;
  record_calendar(f->c);
  query_t q;
  q_init(&q, "t-cal", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_HOUR);
  q_range(&q, DAY0, DAY0 + 3 * 24 * HOUR);
  query_resp_t *r = query_ok(f->c, &q);
  assert_int_equal(r->n_buckets, 3);
  assert_int_equal(r->buckets[0]->bucket_start->seconds, DAY0);
  assert_int_equal(r->buckets[0]->count, 2);
  assert_int_equal(r->buckets[0]->units, 5);
  assert_int_equal(r->buckets[1]->bucket_start->seconds, DAY0 + HOUR);
  assert_int_equal(r->buckets[1]->count, 1);
  assert_int_equal(r->buckets[2]->bucket_start->seconds, DAY0 + 26 * HOUR);
  assert_int_equal(r->buckets[2]->count, 1);
  assert_int_equal(r->total->count, 4);
  free_msg(r);

  q_init(&q, "t-cal", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_DAY);
  q_range(&q, DAY0, DAY0 + 3 * 24 * HOUR);
  r = query_ok(f->c, &q);
  assert_int_equal(r->n_buckets, 2);
  assert_int_equal(r->buckets[0]->bucket_start->seconds, DAY0);
  assert_int_equal(r->buckets[0]->count, 3);
  assert_int_equal(r->buckets[0]->tokens, 35);
  assert_int_equal(r->buckets[1]->bucket_start->seconds, DAY0 + 24 * HOUR);
  assert_int_equal(r->buckets[1]->count, 1);
  assert_int_equal(r->buckets[1]->units, 4);
  free_msg(r);
}

static void query_usage_groups_by_operation_and_tier_in_enum_order(void **state)
{
  fixture_t *f = *state;
  record_calendar(f->c);
  query_t q;
  q_init(&q, "t-cal",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_OPERATION);
  query_resp_t *r = query_ok(f->c, &q);
  assert_int_equal(r->n_buckets, 3);
  assert_int_equal(
      r->buckets[0]->operation,
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AGENT_MESSAGE);
  assert_int_equal(r->buckets[0]->count, 2);
  assert_int_equal(r->buckets[0]->units, 3);
  assert_true(fabs(r->buckets[0]->compliance_avg - 0.9) < 1e-9);
  assert_int_equal(
      r->buckets[1]->operation,
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_POLICY_EVALUATION);
  assert_int_equal(r->buckets[1]->count, 1);
  assert_int_equal(r->buckets[1]->constitutional_invalid, 1);
  assert_int_equal(
      r->buckets[2]->operation,
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AUDIT_WRITE);
  assert_int_equal(r->buckets[2]->count, 1);
  assert_null(r->buckets[0]->bucket_start);
  free_msg(r);

  q_init(&q, "t-cal", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_TIER);
  r = query_ok(f->c, &q);
  assert_int_equal(r->n_buckets, 3);
  assert_int_equal(r->buckets[0]->tier,
                   ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_STANDARD);
  assert_int_equal(r->buckets[0]->count, 1);
  assert_int_equal(r->buckets[1]->tier,
                   ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENHANCED);
  assert_int_equal(r->buckets[1]->count, 2);
  assert_int_equal(r->buckets[1]->tokens, 25);
  assert_int_equal(r->buckets[2]->tier,
                   ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENTERPRISE);
  assert_int_equal(r->buckets[2]->count, 1);
  free_msg(r);
}

static void query_usage_honours_ranges_inside_hours_and_filters(void **state)
{
  fixture_t *f = *state;
  record_calendar(f->c);
  query_t q;
  query_resp_t *r;

  /* [00:30, 01:10): c-2 (00:50) and c-3 (01:05), both hours cut. */
  q_init(&q, "t-cal", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_HOUR);
  q_range(&q, DAY0 + 30 * 60, DAY0 + 70 * 60);
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 2);
  assert_int_equal(r->total->units, 4);
  assert_int_equal(r->n_buckets, 2);
  free_msg(r);

  /* End is exclusive, start inclusive. */
  q_init(&q, "t-cal",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  q_range(&q, DAY0 + 10 * 60, DAY0 + 50 * 60);
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 1);
  free_msg(r);

  /* An empty range. */
  q_range(&q, DAY0 + 5 * HOUR, DAY0 + 5 * HOUR);
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 0);
  assert_int_equal(r->n_buckets, 1);
  assert_int_equal(r->buckets[0]->count, 0);
  free_msg(r);

  /* Filters. */
  q_init(&q, "t-cal",
         ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
  q.req.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AGENT_MESSAGE;
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 2);
  free_msg(r);
  q.req.tier = ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENHANCED;
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 1);
  assert_int_equal(r->total->tokens, 5);
  free_msg(r);
  q.req.operation = 0;
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 2);
  free_msg(r);

  /* An unknown tenant has nothing. */
  q_init(&q, "t-nobody", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_DAY);
  r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, 0);
  assert_int_equal(r->n_buckets, 0);
  free_msg(r);
}

static void query_usage_cuts_hour_buckets_at_512_but_not_the_total(void **state)
{
  fixture_t *f = *state;
  enum { N = 520 };
  ev_t *evs = calloc(N, sizeof(*evs));
  assert_non_null(evs);
  char id[16];
  for (int i = 0; i < N; i++) {
    snprintf(id, sizeof(id), "h-%d", i);
    ev_init(&evs[i], "t-hours", id);
    ev_at(&evs[i], DAY0 + i * HOUR);
  }
  stream_resp_t *s = NULL;
  assert_int_equal(record_stream(f->c, evs, N, &s, NULL), GRPC_STATUS_OK);
  assert_int_equal(s->accepted, N);
  free_msg(s);
  free(evs);
  query_t q;
  q_init(&q, "t-hours", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_HOUR);
  query_resp_t *r = query_ok(f->c, &q);
  assert_int_equal(r->n_buckets, 512);
  assert_true(r->truncated);
  assert_int_equal(r->total->count, N);
  assert_int_equal(r->buckets[511]->bucket_start->seconds, DAY0 + 511 * HOUR);
  free_msg(r);
  q_init(&q, "t-hours", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_DAY);
  r = query_ok(f->c, &q);
  assert_int_equal(r->n_buckets, (N + 23) / 24);
  assert_false(r->truncated);
  assert_int_equal(r->buckets[0]->count, 24);
  free_msg(r);
}

static void query_usage_refuses_bad_requests(void **state)
{
  fixture_t *f = *state;
  static const struct {
    int kind;
    const char *message;
  } cases[] = {
      {0, "tenant_id is required"},
      {1, "end must not be before start"},
      {2, "unknown group_by"},
      {3, "start must be a valid time between 1970-01-01 and 2262-04-11"},
      {4, "end must be a valid time between 1970-01-01 and 2262-04-11"},
      {5, "unknown operation"},
      {6, "unknown tier"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    query_t q;
    q_init(&q, "t-q",
           ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_UNSPECIFIED);
    switch (cases[i].kind) {
    case 0:
      q.req.tenant_id = "";
      break;
    case 1:
      q_range(&q, DAY0 + 10, DAY0);
      break;
    case 2:
      q.req.group_by = (Antifragility__V1__UsageGroupBy)9;
      break;
    case 3:
      q_range(&q, -5, DAY0);
      break;
    case 4:
      q_range(&q, DAY0, DAY0);
      q.end.nanos = -1;
      break;
    case 5:
      q.req.operation = (Antifragility__V1__MeterableOperation)77;
      break;
    case 6:
      q.req.tier = (Antifragility__V1__MeteringTier)5;
      break;
    }
    query_resp_t *r = NULL;
    af_tc_status_t st;
    assert_int_equal(query(f->c, &q, &r, &st), GRPC_STATUS_INVALID_ARGUMENT);
    assert_string_equal(st.message, cases[i].message);
    assert_null(r);
  }
}

/* ---- GetMeteringMetrics ------------------------------------------------ */

static void metrics_count_queued_flushed_duplicates_and_invalid(void **state)
{
  fixture_t *f = *state;
  metrics_resp_t *m = metrics(f->c);
  assert_int_equal(m->queued, 0);
  assert_int_equal(m->queue_capacity, 10000);
  assert_true(m->enabled);
  assert_string_equal(m->constitutional_hash, HASH);
  free_msg(m);

  ev_t e;
  ev_init(&e, "t-m", "m-1");
  record_ok(f->c, &e, false);
  record_ok(f->c, &e, true);
  ev_init(&e, "t-m", "m-2");
  record_ok(f->c, &e, false);
  e.ev.latency_ms = -1;
  assert_int_equal(record(f->c, &e, NULL, NULL), GRPC_STATUS_INVALID_ARGUMENT);

  m = metrics(f->c);
  assert_int_equal(m->queued, 3);
  assert_int_equal(m->flushed, 3);
  assert_int_equal(m->duplicates, 1);
  assert_int_equal(m->dropped_invalid, 1);
  assert_int_equal(m->dropped_queue_full, 0);
  assert_int_equal(m->sink_errors, 0);
  assert_true(m->batches_flushed >= 1 && m->batches_flushed <= 3);
  assert_int_equal(m->queue_depth, 0);
  free_msg(m);
}

/* ---- a full queue ------------------------------------------------------ */

typedef struct {
  int port;
  ev_t *evs;
  size_t n; /* 1: RecordUsage; more (or stream = true): a stream */
  bool stream;
  grpc_status_code code;
  bool accepted;
  bool duplicate;
  uint64_t s_accepted;
  uint64_t s_duplicates;
  uint64_t s_rejected;
} call_t;

static void *call_main(void *p)
{
  call_t *c = p;
  af_tc_t *tc = af_tc_connect(c->port);
  if (!c->stream) {
    record_resp_t *r = NULL;
    c->code = record(tc, &c->evs[0], &r, NULL);
    if (r != NULL) {
      c->accepted = r->accepted;
      c->duplicate = r->duplicate;
    }
    free_msg(r);
  } else {
    stream_resp_t *r = NULL;
    c->code = record_stream(tc, c->evs, c->n, &r, NULL);
    if (r != NULL) {
      c->s_accepted = r->accepted;
      c->s_duplicates = r->duplicates;
      c->s_rejected = r->rejected;
    }
    free_msg(r);
  }
  af_tc_close(tc);
  return NULL;
}

static void wait_depth(af_tc_t *c, uint32_t depth)
{
  int64_t until = af_tc_now_ms() + 10000;
  uint32_t got = 0;
  while (af_tc_now_ms() < until) {
    metrics_resp_t *m = metrics(c);
    got = m->queue_depth;
    free_msg(m);
    if (got == depth) {
      return;
    }
    nap_ms(2);
  }
  fail_msg("queue depth %u, want %u", got, depth);
}

static void
full_queue_answers_resource_exhausted_and_drops_nothing(void **state)
{
  fixture_t *f = *state;
  int port = af_ts_port(f->ts);
  gate_set(false);

  /* One event taken by the flusher and held at the gate... */
  ev_t first;
  ev_init(&first, "t-full", "full-0");
  call_t a = {.port = port, .evs = &first, .n = 1};
  pthread_t ta;
  assert_int_equal(pthread_create(&ta, NULL, call_main, &a), 0);
  gate_wait_held();

  /* ...then four more fill the queue (capacity 4). */
  ev_t four[4];
  char id[16];
  for (int i = 0; i < 4; i++) {
    snprintf(id, sizeof(id), "full-%d", i + 1);
    ev_init(&four[i], "t-full", id);
  }
  call_t b = {.port = port, .evs = four, .n = 4, .stream = true};
  pthread_t tb;
  assert_int_equal(pthread_create(&tb, NULL, call_main, &b), 0);
  wait_depth(f->c, 5); /* 4 queued + the batch at the gate */

  ev_t more;
  ev_init(&more, "t-full", "full-5");
  af_tc_status_t st;
  assert_int_equal(record(f->c, &more, NULL, &st),
                   GRPC_STATUS_RESOURCE_EXHAUSTED);
  assert_string_equal(st.message, "metering queue is full");

  ev_t two[2];
  ev_init(&two[0], "t-full", "full-6");
  ev_init(&two[1], "t-full", "full-7");
  stream_resp_t *sr = NULL;
  assert_int_equal(record_stream(f->c, two, 2, &sr, NULL), GRPC_STATUS_OK);
  assert_int_equal(sr->received, 2);
  assert_int_equal(sr->accepted, 0);
  assert_int_equal(sr->rejected, 2);
  assert_string_equal(sr->first_error, "metering queue is full");
  assert_int_equal(sr->first_error_index, 0);
  free_msg(sr);

  metrics_resp_t *m = metrics(f->c);
  assert_int_equal(m->dropped_queue_full, 3);
  assert_int_equal(m->queued, 5);
  assert_int_equal(m->queue_capacity, 4);
  free_msg(m);

  gate_set(true);
  pthread_join(ta, NULL);
  pthread_join(tb, NULL);
  assert_int_equal(a.code, GRPC_STATUS_OK);
  assert_true(a.accepted);
  assert_false(a.duplicate);
  assert_int_equal(b.code, GRPC_STATUS_OK);
  assert_int_equal(b.s_accepted, 4);
  assert_int_equal(b.s_rejected, 0);
  assert_int_equal(count_of(f->c, "t-full"), 5);

  /* The refused event can be sent again with the same key. */
  record_ok(f->c, &more, false);
  assert_int_equal(count_of(f->c, "t-full"), 6);
}

static void wait_flushed(af_tc_t *c, uint64_t flushed)
{
  int64_t until = af_tc_now_ms() + 10000;
  uint64_t got = 0;
  while (af_tc_now_ms() < until) {
    metrics_resp_t *m = metrics(c);
    got = m->flushed;
    free_msg(m);
    if (got >= flushed) {
      return;
    }
    nap_ms(2);
  }
  fail_msg("flushed %llu, want %llu", (unsigned long long)got,
           (unsigned long long)flushed);
}

static void
calls_that_give_up_while_waiting_are_recorded_and_retry_as_dup(void **state)
{
  fixture_t *f = *state;
  gate_set(false);
  ev_t e;
  ev_init(&e, "t-late", "late-0");
  ProtobufCMessage *r = NULL;
  assert_int_equal(
      af_tc_unary(f->c, RECORD, &e.req.base, K_RECORD, &r, NULL, NULL, 200),
      GRPC_STATUS_DEADLINE_EXCEEDED);
  assert_null(r);
  ev_t two[2];
  ev_init(&two[0], "t-late", "late-1");
  ev_init(&two[1], "t-late", "late-2");
  const ProtobufCMessage *reqs[] = {&two[0].req.base, &two[1].req.base};
  assert_int_equal(af_tc_client_stream(f->c, RECORD_STREAM, reqs, 2, K_STREAM,
                                       &r, NULL, 200),
                   GRPC_STATUS_DEADLINE_EXCEEDED);
  assert_null(r);

  /* The server still owes (and drops) both answers; once the sink runs
   * the events are recorded, and a retry with the same key says so. */
  gate_set(true);
  wait_flushed(f->c, 3);
  assert_int_equal(count_of(f->c, "t-late"), 3);
  record_ok(f->c, &e, true);
  record_ok(f->c, &two[1], true);
}

/* ---- concurrency ------------------------------------------------------- */

enum { CONC_THREADS = 4, CONC_EVENTS = 100, CONC_STEP = 50 };

typedef struct {
  int port;
  int index;
  uint64_t fresh;
  uint64_t dups;
  int errors;
} conc_t;

static void conc_event(ev_t *e, int id)
{
  char buf[16];
  snprintf(buf, sizeof(buf), "c-%d", id);
  ev_init(e, "t-conc", buf);
  e->ev.units = (uint64_t)(id % 5 + 1);
  e->ev.tokens_processed = (uint64_t)id;
}

static void *conc_main(void *p)
{
  conc_t *c = p;
  af_tc_t *tc = af_tc_connect(c->port);
  int base = c->index * CONC_STEP;
  if (c->index == 0) {
    /* One client uses the stream, the others unary calls. */
    ev_t *evs = calloc(CONC_EVENTS, sizeof(*evs));
    for (int i = 0; i < CONC_EVENTS; i++) {
      conc_event(&evs[i], base + i);
    }
    stream_resp_t *r = NULL;
    if (record_stream(tc, evs, CONC_EVENTS, &r, NULL) == GRPC_STATUS_OK &&
        r->rejected == 0) {
      c->fresh = r->accepted;
      c->dups = r->duplicates;
    } else {
      c->errors++;
    }
    free_msg(r);
    free(evs);
  } else {
    for (int i = 0; i < CONC_EVENTS; i++) {
      ev_t e;
      conc_event(&e, base + i);
      record_resp_t *r = NULL;
      if (record(tc, &e, &r, NULL) == GRPC_STATUS_OK && r->accepted) {
        if (r->duplicate) {
          c->dups++;
        } else {
          c->fresh++;
        }
      } else {
        c->errors++;
      }
      free_msg(r);
    }
  }
  af_tc_close(tc);
  return NULL;
}

static void
concurrent_clients_with_overlapping_ids_count_each_event_once(void **state)
{
  fixture_t *f = *state;
  pthread_t th[CONC_THREADS];
  conc_t cs[CONC_THREADS];
  for (int i = 0; i < CONC_THREADS; i++) {
    cs[i] = (conc_t){.port = af_ts_port(f->ts), .index = i};
    assert_int_equal(pthread_create(&th[i], NULL, conc_main, &cs[i]), 0);
  }
  uint64_t fresh = 0;
  uint64_t dups = 0;
  for (int i = 0; i < CONC_THREADS; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(cs[i].errors, 0);
    fresh += cs[i].fresh;
    dups += cs[i].dups;
  }
  int distinct = (CONC_THREADS - 1) * CONC_STEP + CONC_EVENTS;
  assert_int_equal(fresh, distinct);
  assert_int_equal(dups, CONC_THREADS * CONC_EVENTS - distinct);

  uint64_t units = 0;
  uint64_t tokens = 0;
  for (int id = 0; id < distinct; id++) {
    units += (uint64_t)(id % 5 + 1);
    tokens += (uint64_t)id;
  }
  query_t q;
  q_init(&q, "t-conc", ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_TIER);
  query_resp_t *r = query_ok(f->c, &q);
  assert_int_equal(r->total->count, distinct);
  assert_int_equal(r->total->units, units);
  assert_int_equal(r->total->tokens, tokens);
  free_msg(r);
  metrics_resp_t *m = metrics(f->c);
  assert_int_equal(m->duplicates, dups);
  assert_int_equal(m->flushed, CONC_THREADS * CONC_EVENTS);
  free_msg(m);
}

/* ---- shutdown ---------------------------------------------------------- */

typedef struct {
  af_test_server_t *ts;
} stop_t;

static void *stop_main(void *p)
{
  af_ts_stop(((stop_t *)p)->ts);
  return NULL;
}

static void shutdown_flushes_and_answers_every_pending_call(void **state)
{
  fixture_t *f = *state;
  int port = af_ts_port(f->ts);

  /* Acknowledged before the stop: counted. */
  ev_t before;
  ev_init(&before, "t-stop", "before");
  record_ok(f->c, &before, false);
  assert_int_equal(count_of(f->c, "t-stop"), 1);

  gate_set(false);
  enum { PENDING = 5 };
  ev_t evs[PENDING];
  call_t calls[PENDING];
  pthread_t th[PENDING];
  char id[16];
  for (int i = 0; i < PENDING; i++) {
    snprintf(id, sizeof(id), "pend-%d", i);
    ev_init(&evs[i], "t-stop", id);
    calls[i] = (call_t){.port = port, .evs = &evs[i], .n = 1};
    assert_int_equal(pthread_create(&th[i], NULL, call_main, &calls[i]), 0);
    if (i == 0) {
      gate_wait_held();
    }
  }
  ev_t three[3];
  ev_init(&three[0], "t-stop", "pend-s0");
  ev_init(&three[1], "t-stop", "pend-s1");
  ev_init(&three[2], "t-stop", "pend-0"); /* duplicate of a unary one */
  call_t sc = {.port = port, .evs = three, .n = 3, .stream = true};
  pthread_t ts;
  assert_int_equal(pthread_create(&ts, NULL, call_main, &sc), 0);
  wait_depth(f->c, PENDING + 3);

  /* Stop while the flusher is held: wait until the meter is closed (the
   * metering shutdown has begun), then let the sink go on. */
  stop_t stop = {f->ts};
  pthread_t tstop;
  assert_int_equal(pthread_create(&tstop, NULL, stop_main, &stop), 0);
  af_meter_t *meter = af_engine_meter(af_ts_engine(f->ts));
  af_meter_event_t probe;
  af_meter_event_init(&probe, "", AF_OP_AGENT_MESSAGE); /* invalid */
  int64_t until = af_tc_now_ms() + 10000;
  while (af_meter_enqueue(meter, &probe, NULL) != AF_ESHUTDOWN) {
    assert_true(af_tc_now_ms() < until);
    nap_ms(1);
  }
  gate_set(true);
  pthread_join(tstop, NULL);
  f->ts = NULL;

  for (int i = 0; i < PENDING; i++) {
    pthread_join(th[i], NULL);
    assert_int_equal(calls[i].code, GRPC_STATUS_OK);
    assert_true(calls[i].accepted);
    assert_false(calls[i].duplicate);
  }
  pthread_join(ts, NULL);
  assert_int_equal(sc.code, GRPC_STATUS_OK);
  assert_int_equal(sc.s_accepted, 2);
  assert_int_equal(sc.s_duplicates, 1);
  assert_int_equal(sc.s_rejected, 0);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          record_usage_takes_a_new_event_and_query_sees_it_at_once, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          record_usage_answers_well_within_the_flush_interval, setup, teardown),
      cmocka_unit_test_setup_teardown(
          record_usage_with_the_right_hash_and_metadata_is_taken, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          record_usage_generates_an_event_id_when_none_is_given, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          record_usage_refuses_each_invalid_field_with_its_message, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          duplicate_event_is_reported_and_counted_once, setup, teardown),
      cmocka_unit_test_setup_teardown(
          same_event_id_under_another_tenant_counts_separately, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          record_usage_stream_summarises_accepted_duplicates_and_rejected,
          setup, teardown),
      cmocka_unit_test_setup_teardown(empty_record_usage_stream_answers_zeroes,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          record_usage_stream_of_many_events_counts_them_all, setup, teardown),
      cmocka_unit_test_setup_teardown(query_usage_totals_match_what_was_sent,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(
          query_usage_groups_by_hour_and_day_in_time_order, setup, teardown),
      cmocka_unit_test_setup_teardown(
          query_usage_groups_by_operation_and_tier_in_enum_order, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          query_usage_honours_ranges_inside_hours_and_filters, setup, teardown),
      cmocka_unit_test_setup_teardown(
          query_usage_cuts_hour_buckets_at_512_but_not_the_total, setup,
          teardown),
      cmocka_unit_test_setup_teardown(query_usage_refuses_bad_requests, setup,
                                      teardown),
      cmocka_unit_test_setup_teardown(
          metrics_count_queued_flushed_duplicates_and_invalid, setup, teardown),
      cmocka_unit_test_setup_teardown(
          full_queue_answers_resource_exhausted_and_drops_nothing,
          setup_small_gated, teardown),
      cmocka_unit_test_setup_teardown(
          calls_that_give_up_while_waiting_are_recorded_and_retry_as_dup,
          setup_gated, teardown),
      cmocka_unit_test_setup_teardown(
          concurrent_clients_with_overlapping_ids_count_each_event_once, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          shutdown_flushes_and_answers_every_pending_call, setup_gated,
          teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
