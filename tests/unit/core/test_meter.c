/*
 * test_meter.c - unit tests for core/src/meter.c (the usage-metering queue
 * and its flusher).
 *
 * Time is a manual clock. The flusher is a real thread: tests that use it
 * wait for the sink on a condition variable with a generous real-time bound
 * (a failure guard, never the expected path), and drive flush intervals and
 * retry backoff by advancing the manual clock. Nothing sleeps to wait for a
 * timeout.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime, pthread_barrier */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/clock.h"
#include "af/meter.h"

#define T0_MONO (UINT64_C(1000) * AF_NS_PER_SEC)
#define T0_WALL (INT64_C(1700000000) * (int64_t)AF_NS_PER_SEC)
/* Upper bound on any real-time wait for the flusher thread. */
#define WAIT_GUARD_MS 10000

/* ---- a recording sink -------------------------------------------------- */

typedef struct {
  uint64_t units; /* tests put the event's sequence number here */
  char event_id[AF_EVENT_ID_MAX + 1];
  size_t call; /* index of the sink call that saw it */
} seen_t;

typedef struct {
  seen_t *items;
  size_t n, cap;
} seen_log_t;

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cond;
  size_t calls;
  size_t refused_calls;
  size_t batch_sizes[256]; /* of the first 256 calls */
  seen_log_t offered;      /* every event of every call */
  seen_log_t accepted;     /* events of the calls that returned AF_OK */
  size_t refuse_next;      /* refuse this many calls, then accept */
  size_t refuse_every;     /* if > 0: refuse every k-th call (1-based) */
  bool refuse_all;
  size_t report_duplicates; /* *duplicates to set on AF_OK */
} sink_t;

static void log_push(seen_log_t *l, const af_meter_event_t *e, size_t call)
{
  if (l->n == l->cap) {
    l->cap = l->cap ? 2 * l->cap : 64;
    l->items = realloc(l->items, l->cap * sizeof(*l->items));
    assert_non_null(l->items);
  }
  seen_t *s = &l->items[l->n++];
  s->units = e->units;
  memcpy(s->event_id, e->event_id, sizeof(s->event_id));
  s->call = call;
}

static af_status_t record_sink(const af_meter_event_t *events, size_t n,
                               size_t *duplicates, void *ctx)
{
  sink_t *s = ctx;
  pthread_mutex_lock(&s->mu);
  size_t call = s->calls++;
  if (call < sizeof(s->batch_sizes) / sizeof(s->batch_sizes[0]))
    s->batch_sizes[call] = n;
  for (size_t i = 0; i < n; i++)
    log_push(&s->offered, &events[i], call);
  bool refuse = s->refuse_all;
  if (s->refuse_next > 0) {
    s->refuse_next--;
    refuse = true;
  }
  if (s->refuse_every > 0 && (call + 1) % s->refuse_every == 0)
    refuse = true;
  if (refuse) {
    s->refused_calls++;
  } else {
    for (size_t i = 0; i < n; i++)
      log_push(&s->accepted, &events[i], call);
    *duplicates = s->report_duplicates;
  }
  pthread_cond_broadcast(&s->cond);
  pthread_mutex_unlock(&s->mu);
  return refuse ? AF_EIO : AF_OK;
}

static void sink_init(sink_t *s)
{
  memset(s, 0, sizeof(*s));
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cond, NULL);
}

static void sink_fini(sink_t *s)
{
  free(s->offered.items);
  free(s->accepted.items);
  pthread_cond_destroy(&s->cond);
  pthread_mutex_destroy(&s->mu);
}

/* Waits (real time, at most ms) until the sink was called at least `calls`
 * times and accepted at least `accepted` events. Returns whether it was. */
static bool sink_wait(sink_t *s, size_t calls, size_t accepted, uint64_t ms)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  uint64_t ns = (uint64_t)ts.tv_nsec + ms * AF_NS_PER_MS;
  ts.tv_sec += (time_t)(ns / AF_NS_PER_SEC);
  ts.tv_nsec = (long)(ns % AF_NS_PER_SEC);
  pthread_mutex_lock(&s->mu);
  int rc = 0;
  while ((s->calls < calls || s->accepted.n < accepted) && rc == 0)
    rc = pthread_cond_timedwait(&s->cond, &s->mu, &ts);
  bool ok = s->calls >= calls && s->accepted.n >= accepted;
  pthread_mutex_unlock(&s->mu);
  return ok;
}

/* ---- fixture ----------------------------------------------------------- */

typedef struct {
  af_manual_clock_t *mc;
  af_meter_t *m;
  sink_t sink;
} fx_t;

/* cfg: NULL for defaults. with_sink: install the recording sink. */
static fx_t *fx_new(af_meter_config_t *cfg, bool with_sink)
{
  fx_t *fx = calloc(1, sizeof(*fx));
  assert_non_null(fx);
  sink_init(&fx->sink);
  assert_int_equal(af_manual_clock_create(&fx->mc, T0_MONO, T0_WALL), AF_OK);
  af_meter_config_t local;
  if (cfg == NULL) {
    af_meter_config_init(&local);
    cfg = &local;
  }
  cfg->clock = af_manual_clock_clock(fx->mc);
  if (with_sink) {
    cfg->sink = record_sink;
    cfg->sink_ctx = &fx->sink;
  }
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_meter_create(&fx->m, cfg, &err), AF_OK);
  return fx;
}

static void fx_free(fx_t *fx)
{
  af_meter_destroy(fx->m);
  af_manual_clock_destroy(fx->mc);
  sink_fini(&fx->sink);
  free(fx);
}

static af_meter_config_t small_config(size_t capacity, size_t batch_size)
{
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  cfg.capacity = capacity;
  cfg.batch_size = batch_size;
  return cfg;
}

/* A valid event whose units carry seq and whose event_id is "e<seq>". */
static af_meter_event_t event_n(uint64_t seq)
{
  af_meter_event_t e;
  af_meter_event_init(&e, "tenant-a", AF_OP_AGENT_MESSAGE);
  e.units = seq;
  snprintf(e.event_id, sizeof(e.event_id), "e%llu", (unsigned long long)seq);
  return e;
}

static af_status_t enqueue_n(af_meter_t *m, uint64_t seq)
{
  af_meter_event_t e = event_n(seq);
  return af_meter_enqueue(m, &e, NULL);
}

static af_meter_metrics_t metrics_of(af_meter_t *m)
{
  af_meter_metrics_t mm;
  af_meter_metrics(m, &mm);
  return mm;
}

/* ---- config ------------------------------------------------------------ */

static void config_init_sets_documented_defaults(void **state)
{
  (void)state;
  af_meter_config_t cfg;
  memset(&cfg, 0xab, sizeof(cfg));
  af_meter_config_init(&cfg);
  assert_null(cfg.clock);
  assert_int_equal(cfg.capacity, 10000);
  assert_int_equal(cfg.batch_size, 100);
  assert_int_equal(cfg.flush_interval_ms, 1000);
  assert_int_equal(cfg.max_retry_backoff_ms, 30000);
  assert_null(cfg.sink);
  assert_null(cfg.sink_ctx);
  assert_string_equal(cfg.hash, AF_CONSTITUTIONAL_HASH_DEFAULT);
  assert_string_equal(cfg.hash, "cdd01ef066bc6cf2");
  af_meter_config_init(NULL); /* no crash */
}

static void expect_create_error(const af_meter_config_t *cfg, const char *msg)
{
  af_meter_t *m = (af_meter_t *)(uintptr_t)0x1;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_meter_create(&m, cfg, &err), AF_EINVAL);
  assert_int_equal(err.code, AF_EINVAL);
  assert_string_equal(err.message, msg);
  assert_ptr_equal(m, (af_meter_t *)(uintptr_t)0x1); /* untouched */
  assert_int_equal(af_meter_create(&m, cfg, NULL), AF_EINVAL);
}

static void create_requires_out_and_config(void **state)
{
  (void)state;
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  af_error_t err;
  assert_int_equal(af_meter_create(NULL, &cfg, &err), AF_EINVAL);
  assert_string_equal(err.message, "out is required");
  expect_create_error(NULL, "config is required");
}

static void create_rejects_capacity_outside_one_to_2_pow_24(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(0, 1);
  expect_create_error(&cfg, "capacity must be between 1 and 16777216");
  cfg = small_config(AF_METER_CAPACITY_MAX + 1, 1);
  expect_create_error(&cfg, "capacity must be between 1 and 16777216");
  cfg = small_config(SIZE_MAX, 1);
  expect_create_error(&cfg, "capacity must be between 1 and 16777216");
}

static void create_rejects_batch_size_outside_one_to_capacity(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(10, 0);
  expect_create_error(&cfg, "batch_size must be between 1 and capacity");
  cfg = small_config(10, 11);
  expect_create_error(&cfg, "batch_size must be between 1 and capacity");
}

static void create_rejects_zero_flush_interval(void **state)
{
  (void)state;
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  cfg.flush_interval_ms = 0;
  expect_create_error(&cfg, "flush_interval_ms must be >= 1");
}

static void create_rejects_backoff_cap_below_flush_interval(void **state)
{
  (void)state;
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  cfg.flush_interval_ms = 100;
  cfg.max_retry_backoff_ms = 99;
  expect_create_error(&cfg,
                      "max_retry_backoff_ms must be >= flush_interval_ms");
}

static void create_rejects_empty_or_unterminated_hash(void **state)
{
  (void)state;
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  cfg.hash[0] = '\0';
  expect_create_error(&cfg, "hash is required");
  memset(cfg.hash, 'h', sizeof(cfg.hash)); /* 65 bytes, no NUL */
  expect_create_error(&cfg, "hash must be at most 64 characters");
}

static void create_accepts_boundary_values(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(1, 1);
  cfg.flush_interval_ms = 1;
  cfg.max_retry_backoff_ms = 1;
  memset(cfg.hash, 'h', AF_HASH_MAX);
  cfg.hash[AF_HASH_MAX] = '\0';
  af_meter_t *m = NULL;
  assert_int_equal(af_meter_create(&m, &cfg, NULL), AF_OK);
  af_meter_metrics_t mm = metrics_of(m);
  assert_int_equal(mm.capacity, 1);
  assert_string_equal(mm.hash, cfg.hash);
  af_meter_destroy(m);
  cfg = small_config(7, 7); /* batch_size == capacity, not a power of two */
  assert_int_equal(af_meter_create(&m, &cfg, NULL), AF_OK);
  af_meter_destroy(m);
  af_meter_destroy(NULL); /* no-op */
}

/* While alloc_limited, alloc_budget allocations succeed and the rest fail;
 * alloc_live counts what is allocated and not yet freed. */
static atomic_bool alloc_limited;
static atomic_long alloc_budget;
static atomic_long alloc_live;

static bool alloc_refused(void)
{
  return atomic_load(&alloc_limited) && atomic_fetch_sub(&alloc_budget, 1) <= 0;
}

static void *budget_malloc(size_t size, void *ctx)
{
  (void)ctx;
  if (alloc_refused())
    return NULL;
  atomic_fetch_add(&alloc_live, 1);
  return malloc(size == 0 ? 1 : size);
}

static void *budget_realloc(void *ptr, size_t size, void *ctx)
{
  (void)ctx;
  if (alloc_refused())
    return NULL;
  if (ptr == NULL)
    atomic_fetch_add(&alloc_live, 1);
  return realloc(ptr, size);
}

static void budget_free(void *ptr, void *ctx)
{
  (void)ctx;
  atomic_fetch_sub(&alloc_live, 1);
  free(ptr);
}

static void create_fails_cleanly_on_every_allocation_failure(void **state)
{
  (void)state;
  af_allocator_t a = {budget_malloc, budget_realloc, budget_free, NULL};
  atomic_store(&alloc_limited, false);
  atomic_store(&alloc_live, 0);
  assert_int_equal(af_alloc_replace(&a), AF_OK);
  af_meter_config_t cfg = small_config(16, 4);
  bool succeeded = false;
  for (long k = 0; k < 10 && !succeeded; k++) {
    atomic_store(&alloc_budget, k);
    atomic_store(&alloc_limited, true);
    af_meter_t *m = (af_meter_t *)(uintptr_t)0x1;
    af_error_t err;
    af_error_clear(&err);
    af_status_t rc = af_meter_create(&m, &cfg, &err);
    atomic_store(&alloc_limited, false);
    if (rc == AF_OK) {
      succeeded = true;
      assert_true(k >= 1);
      af_meter_destroy(m);
    } else {
      assert_int_equal(rc, AF_ENOMEM);
      assert_string_equal(err.message, "out of memory");
      assert_ptr_equal(m, (af_meter_t *)(uintptr_t)0x1);
    }
    assert_int_equal(atomic_load(&alloc_live), 0); /* nothing leaked */
  }
  assert_true(succeeded);
  assert_int_equal(af_alloc_replace(NULL), AF_OK);
}

/* ---- names ------------------------------------------------------------- */

static void operation_names_match_the_seed_and_round_trip(void **state)
{
  (void)state;
  const char *names[AF_METER_OPERATION_COUNT] = {
      "constitutional_validation",
      "agent_message",
      "policy_evaluation",
      "compliance_check",
      "audit_write",
      "deliberation_request",
      "hitl_approval",
      "blockchain_anchor",
  };
  assert_int_equal(AF_OP_CONSTITUTIONAL_VALIDATION, 1);
  assert_int_equal(AF_OP_BLOCKCHAIN_ANCHOR, AF_METER_OPERATION_COUNT);
  for (int i = 0; i < AF_METER_OPERATION_COUNT; i++) {
    af_meter_operation_t op = (af_meter_operation_t)(i + 1);
    assert_string_equal(af_meter_operation_name(op), names[i]);
    af_meter_operation_t back = (af_meter_operation_t)0;
    assert_true(af_meter_operation_parse(af_meter_operation_name(op), &back));
    assert_int_equal(back, op);
  }
  assert_string_equal(af_meter_operation_name((af_meter_operation_t)0),
                      "unknown");
  assert_string_equal(af_meter_operation_name((af_meter_operation_t)9),
                      "unknown");
  assert_string_equal(af_meter_operation_name((af_meter_operation_t)-1),
                      "unknown");
}

static void tier_names_match_the_seed_and_round_trip(void **state)
{
  (void)state;
  const char *names[AF_METER_TIER_COUNT] = {"standard", "enhanced",
                                            "deliberation", "enterprise"};
  assert_int_equal(AF_TIER_STANDARD, 1);
  assert_int_equal(AF_TIER_ENTERPRISE, AF_METER_TIER_COUNT);
  for (int i = 0; i < AF_METER_TIER_COUNT; i++) {
    af_meter_tier_t t = (af_meter_tier_t)(i + 1);
    assert_string_equal(af_meter_tier_name(t), names[i]);
    af_meter_tier_t back = (af_meter_tier_t)0;
    assert_true(af_meter_tier_parse(af_meter_tier_name(t), &back));
    assert_int_equal(back, t);
  }
  assert_string_equal(af_meter_tier_name((af_meter_tier_t)0), "unknown");
  assert_string_equal(af_meter_tier_name((af_meter_tier_t)5), "unknown");
}

static void parse_is_ascii_case_insensitive(void **state)
{
  (void)state;
  af_meter_operation_t op = (af_meter_operation_t)0;
  assert_true(af_meter_operation_parse("AGENT_MESSAGE", &op));
  assert_int_equal(op, AF_OP_AGENT_MESSAGE);
  assert_true(af_meter_operation_parse("Hitl_Approval", &op));
  assert_int_equal(op, AF_OP_HITL_APPROVAL);
  af_meter_tier_t t = (af_meter_tier_t)0;
  assert_true(af_meter_tier_parse("ENTERPRISE", &t));
  assert_int_equal(t, AF_TIER_ENTERPRISE);
  assert_true(af_meter_tier_parse("Deliberation", &t));
  assert_int_equal(t, AF_TIER_DELIBERATION);
}

static void parse_rejects_unknown_names_and_leaves_out_untouched(void **state)
{
  (void)state;
  const char *bad[] = {"",
                       "unknown",
                       "agent message",
                       "agent_messages",
                       " agent_message",
                       "agent_message ",
                       "agent-message"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    af_meter_operation_t op = (af_meter_operation_t)77;
    assert_false(af_meter_operation_parse(bad[i], &op));
    assert_int_equal(op, 77);
  }
  af_meter_operation_t op = (af_meter_operation_t)77;
  assert_false(af_meter_operation_parse(NULL, &op));
  assert_int_equal(op, 77);
  assert_false(af_meter_operation_parse("audit_write", NULL));
  af_meter_tier_t t = (af_meter_tier_t)77;
  assert_false(af_meter_tier_parse("gold", &t));
  assert_false(af_meter_tier_parse("", &t));
  assert_false(af_meter_tier_parse("standar", &t));
  assert_false(af_meter_tier_parse(NULL, &t));
  assert_int_equal(t, 77);
  assert_false(af_meter_tier_parse("standard", NULL));
}

/* ---- events ------------------------------------------------------------ */

static void event_init_sets_documented_defaults(void **state)
{
  (void)state;
  af_meter_event_t e;
  memset(&e, 0xab, sizeof(e));
  af_meter_event_init(&e, "tenant-a", AF_OP_AUDIT_WRITE);
  assert_string_equal(e.tenant_id, "tenant-a");
  assert_string_equal(e.event_id, "");
  assert_string_equal(e.agent_id, "");
  assert_int_equal(e.operation, AF_OP_AUDIT_WRITE);
  assert_int_equal(e.tier, AF_TIER_STANDARD);
  assert_int_equal(e.units, 1);
  assert_int_equal(e.tokens_processed, 0);
  assert_true(e.latency_ms == 0.0);
  assert_true(e.compliance_score == 1.0);
  assert_true(e.constitutional_valid);
  assert_int_equal(e.timestamp_wall_ns, 0);
  assert_string_equal(e.hash, "");
  assert_string_equal(e.metadata, "");
  assert_int_equal(af_meter_event_validate(&e, NULL), AF_OK);

  af_meter_event_init(&e, NULL, AF_OP_AUDIT_WRITE);
  assert_string_equal(e.tenant_id, "");
  af_meter_event_init(NULL, "t", AF_OP_AUDIT_WRITE); /* no crash */
}

static void
event_init_keeps_an_overlong_tenant_for_validate_to_refuse(void **state)
{
  (void)state;
  char tenant[AF_NAME_MAX + 2];
  memset(tenant, 't', AF_NAME_MAX);
  tenant[AF_NAME_MAX] = '\0';
  af_meter_event_t e;
  af_meter_event_init(&e, tenant, AF_OP_AUDIT_WRITE);
  assert_string_equal(e.tenant_id, tenant); /* 128 bytes fit */
  assert_int_equal(af_meter_event_validate(&e, NULL), AF_OK);

  tenant[AF_NAME_MAX] = 't';
  tenant[AF_NAME_MAX + 1] = '\0';
  af_meter_event_init(&e, tenant, AF_OP_AUDIT_WRITE);
  assert_memory_equal(e.tenant_id, tenant, sizeof(e.tenant_id));
  af_error_t err;
  assert_int_equal(af_meter_event_validate(&e, &err), AF_EINVAL);
  assert_string_equal(err.message, "tenant_id must be at most 128 bytes");
}

typedef void (*mutate_fn)(af_meter_event_t *e);

static void m_no_tenant(af_meter_event_t *e) { e->tenant_id[0] = '\0'; }
static void m_long_tenant(af_meter_event_t *e)
{
  memset(e->tenant_id, 't', sizeof(e->tenant_id));
}
static void m_ctrl_tenant(af_meter_event_t *e)
{
  snprintf(e->tenant_id, sizeof(e->tenant_id), "ten\nant");
}
static void m_utf8_tenant(af_meter_event_t *e)
{
  snprintf(e->tenant_id, sizeof(e->tenant_id), "ten\xc3");
}
static void m_long_agent(af_meter_event_t *e)
{
  memset(e->agent_id, 'a', sizeof(e->agent_id));
}
static void m_ctrl_agent(af_meter_event_t *e)
{
  snprintf(e->agent_id, sizeof(e->agent_id), "agent\x7f");
}
static void m_utf8_agent(af_meter_event_t *e)
{
  snprintf(e->agent_id, sizeof(e->agent_id), "\xed\xa0\x80");
}
static void m_long_id(af_meter_event_t *e)
{
  memset(e->event_id, 'i', sizeof(e->event_id));
}
static void m_space_id(af_meter_event_t *e)
{
  snprintf(e->event_id, sizeof(e->event_id), "a b");
}
static void m_del_id(af_meter_event_t *e)
{
  snprintf(e->event_id, sizeof(e->event_id), "ab\x7f");
}
static void m_utf8_id(af_meter_event_t *e)
{
  snprintf(e->event_id, sizeof(e->event_id), "caf\xc3\xa9");
}
static void m_op_zero(af_meter_event_t *e)
{
  e->operation = (af_meter_operation_t)0;
}
static void m_op_nine(af_meter_event_t *e)
{
  e->operation = (af_meter_operation_t)9;
}
static void m_tier_zero(af_meter_event_t *e) { e->tier = (af_meter_tier_t)0; }
static void m_tier_five(af_meter_event_t *e) { e->tier = (af_meter_tier_t)5; }
static void m_latency_nan(af_meter_event_t *e) { e->latency_ms = NAN; }
static void m_latency_inf(af_meter_event_t *e) { e->latency_ms = INFINITY; }
static void m_latency_ninf(af_meter_event_t *e) { e->latency_ms = -INFINITY; }
static void m_latency_neg(af_meter_event_t *e) { e->latency_ms = -0.001; }
static void m_score_neg(af_meter_event_t *e) { e->compliance_score = -0.01; }
static void m_score_big(af_meter_event_t *e) { e->compliance_score = 1.01; }
static void m_score_nan(af_meter_event_t *e) { e->compliance_score = NAN; }
static void m_ts_neg(af_meter_event_t *e) { e->timestamp_wall_ns = -1; }
static void m_long_hash(af_meter_event_t *e)
{
  memset(e->hash, 'h', sizeof(e->hash));
}
static void m_long_meta(af_meter_event_t *e)
{
  memset(e->metadata, 'm', sizeof(e->metadata));
}
/* two faults at once: the earlier check wins */
static void m_tenant_and_op(af_meter_event_t *e)
{
  e->tenant_id[0] = '\0';
  e->operation = (af_meter_operation_t)0;
}
static void m_tier_and_latency(af_meter_event_t *e)
{
  e->tier = (af_meter_tier_t)0;
  e->latency_ms = NAN;
}
static void m_meta_and_ts(af_meter_event_t *e)
{
  memset(e->metadata, 'm', sizeof(e->metadata));
  e->timestamp_wall_ns = -5;
}

static const struct {
  mutate_fn mutate;
  const char *msg;
} invalid_cases[] = {
    {m_no_tenant, "tenant_id is required"},
    {m_long_tenant, "tenant_id must be at most 128 bytes"},
    {m_ctrl_tenant, "tenant_id must be valid UTF-8 without control characters"},
    {m_utf8_tenant, "tenant_id must be valid UTF-8 without control characters"},
    {m_long_agent, "agent_id must be at most 128 bytes"},
    {m_ctrl_agent, "agent_id must be valid UTF-8 without control characters"},
    {m_utf8_agent, "agent_id must be valid UTF-8 without control characters"},
    {m_long_id, "event_id must be at most 64 characters"},
    {m_space_id, "event_id must be printable ASCII without spaces"},
    {m_del_id, "event_id must be printable ASCII without spaces"},
    {m_utf8_id, "event_id must be printable ASCII without spaces"},
    {m_op_zero, "unknown operation"},
    {m_op_nine, "unknown operation"},
    {m_tier_zero, "unknown tier"},
    {m_tier_five, "unknown tier"},
    {m_latency_nan, "latency_ms must be a finite number"},
    {m_latency_inf, "latency_ms must be a finite number"},
    {m_latency_ninf, "latency_ms must be a finite number"},
    {m_latency_neg, "latency_ms must be >= 0"},
    {m_score_neg, "compliance_score must be between 0.0 and 1.0"},
    {m_score_big, "compliance_score must be between 0.0 and 1.0"},
    {m_score_nan, "compliance_score must be between 0.0 and 1.0"},
    {m_ts_neg, "timestamp_wall_ns must be >= 0"},
    {m_long_hash, "hash must be at most 64 characters"},
    {m_long_meta, "metadata must be at most 511 bytes"},
    {m_tenant_and_op, "tenant_id is required"},
    {m_tier_and_latency, "unknown tier"},
    {m_meta_and_ts, "timestamp_wall_ns must be >= 0"},
};
#define INVALID_CASES (sizeof(invalid_cases) / sizeof(invalid_cases[0]))

static void validate_reports_each_fault_with_its_message(void **state)
{
  (void)state;
  for (size_t i = 0; i < INVALID_CASES; i++) {
    af_meter_event_t e = event_n(i);
    invalid_cases[i].mutate(&e);
    af_error_t err;
    af_error_clear(&err);
    assert_int_equal(af_meter_event_validate(&e, &err), AF_EINVAL);
    assert_int_equal(err.code, AF_EINVAL);
    assert_string_equal(err.message, invalid_cases[i].msg);
    assert_int_equal(af_meter_event_validate(&e, NULL), AF_EINVAL);
  }
  af_error_t err;
  assert_int_equal(af_meter_event_validate(NULL, &err), AF_EINVAL);
  assert_string_equal(err.message, "event is required");
}

static void validate_accepts_boundary_values(void **state)
{
  (void)state;
  af_meter_event_t e = event_n(1);
  memset(e.tenant_id, 't', AF_NAME_MAX);
  e.tenant_id[AF_NAME_MAX] = '\0';
  memset(e.agent_id, 'a', AF_NAME_MAX);
  e.agent_id[AF_NAME_MAX] = '\0';
  memset(e.event_id, '!', AF_EVENT_ID_MAX); /* 0x21 */
  e.event_id[AF_EVENT_ID_MAX - 1] = '~';    /* 0x7e */
  e.event_id[AF_EVENT_ID_MAX] = '\0';
  e.operation = AF_OP_BLOCKCHAIN_ANCHOR;
  e.tier = AF_TIER_ENTERPRISE;
  e.units = 0;
  e.latency_ms = 0.0;
  e.compliance_score = 0.0;
  e.timestamp_wall_ns = INT64_MAX;
  memset(e.hash, 'h', AF_HASH_MAX);
  e.hash[AF_HASH_MAX] = '\0';
  memset(e.metadata, 'm', AF_METER_METADATA_MAX - 1);
  e.metadata[AF_METER_METADATA_MAX - 1] = '\0';
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_meter_event_validate(&e, &err), AF_OK);
  e.compliance_score = 1.0;
  e.latency_ms = 1e300;
  assert_int_equal(af_meter_event_validate(&e, &err), AF_OK);
  e.latency_ms = -0.0; /* not < 0 */
  assert_int_equal(af_meter_event_validate(&e, &err), AF_OK);
}

/* ---- enqueue ----------------------------------------------------------- */

static bool is_lower_hex(const char *s, size_t n)
{
  for (size_t i = 0; i < n; i++)
    if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
      return false;
  return s[n] == '\0';
}

static void enqueue_fills_in_event_id_timestamp_and_hash(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  af_manual_clock_advance_ms(fx->mc, 5);
  af_meter_event_t e;
  af_meter_event_init(&e, "tenant-a", AF_OP_POLICY_EVALUATION);
  af_error_t err;
  assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_OK);
  /* updated in place */
  assert_int_equal(strlen(e.event_id), 32);
  assert_true(is_lower_hex(e.event_id, 32));
  assert_int_equal(e.timestamp_wall_ns, T0_WALL + 5 * (int64_t)AF_NS_PER_MS);
  assert_string_equal(e.hash, AF_CONSTITUTIONAL_HASH_DEFAULT);
  /* and queued as updated */
  af_meter_event_t out;
  assert_int_equal(af_meter_drain(fx->m, &out, 1), 1);
  assert_memory_equal(&out, &e, sizeof(e));

  /* given values are kept */
  af_meter_event_init(&e, "tenant-a", AF_OP_POLICY_EVALUATION);
  snprintf(e.event_id, sizeof(e.event_id), "my-key-1");
  e.timestamp_wall_ns = 42;
  snprintf(e.hash, sizeof(e.hash), "%s", AF_CONSTITUTIONAL_HASH_DEFAULT);
  assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_OK);
  assert_int_equal(af_meter_drain(fx->m, &out, 1), 1);
  assert_string_equal(out.event_id, "my-key-1");
  assert_int_equal(out.timestamp_wall_ns, 42);
  fx_free(fx);
}

static void
enqueue_refuses_invalid_events_and_counts_dropped_invalid(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  for (size_t i = 0; i < INVALID_CASES; i++) {
    af_meter_event_t e = event_n(i);
    invalid_cases[i].mutate(&e);
    af_error_t err;
    af_error_clear(&err);
    assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_EINVAL);
    assert_string_equal(err.message, invalid_cases[i].msg);
    assert_int_equal(metrics_of(fx->m).dropped_invalid, i + 1);
  }
  af_error_t err;
  assert_int_equal(af_meter_enqueue(fx->m, NULL, &err), AF_EINVAL);
  assert_string_equal(err.message, "event is required");
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.dropped_invalid, INVALID_CASES + 1);
  assert_int_equal(mm.queued, 0);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(mm.dropped_queue_full, 0);
  assert_int_equal(mm.dropped_shutdown, 0);

  af_meter_event_t e = event_n(1);
  assert_int_equal(af_meter_enqueue(NULL, &e, &err), AF_EINVAL);
  assert_string_equal(err.message, "meter is required");
  fx_free(fx);
}

static void enqueue_refuses_a_foreign_hash_as_invalid(void **state)
{
  (void)state;
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  snprintf(cfg.hash, sizeof(cfg.hash), "feedface");
  fx_t *fx = fx_new(&cfg, false);
  af_meter_event_t e = event_n(1);
  snprintf(e.hash, sizeof(e.hash), "%s", AF_CONSTITUTIONAL_HASH_DEFAULT);
  af_error_t err;
  assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_EHASH);
  assert_int_equal(err.code, AF_EHASH);
  assert_string_equal(err.message, "constitutional hash mismatch");
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.dropped_invalid, 1);
  assert_int_equal(mm.queued, 0);
  assert_int_equal(mm.depth, 0);
  assert_string_equal(mm.hash, "feedface");
  /* an empty hash gets the configured one */
  e = event_n(2);
  assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_OK);
  assert_string_equal(e.hash, "feedface");
  snprintf(e.hash, sizeof(e.hash), "feedface");
  assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_OK);
  assert_int_equal(metrics_of(fx->m).queued, 2);
  fx_free(fx);
}

static void
capacity_two_queues_two_and_drops_three_without_blocking(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(2, 1);
  fx_t *fx = fx_new(&cfg, false); /* no consumer at all */
  af_status_t expect[5] = {AF_OK, AF_OK, AF_EFULL, AF_EFULL, AF_EFULL};
  for (uint64_t i = 0; i < 5; i++) {
    af_meter_event_t e = event_n(i);
    e.event_id[0] = '\0'; /* to be generated */
    af_error_t err;
    af_error_clear(&err);
    assert_int_equal(af_meter_enqueue(fx->m, &e, &err), expect[i]);
    /* refused or not, the event got its key (kept for a retry) */
    assert_int_equal(strlen(e.event_id), 32);
    if (expect[i] == AF_EFULL) {
      assert_int_equal(err.code, AF_EFULL);
      assert_string_equal(err.message, "metering queue is full");
    }
  }
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.queued, 2);
  assert_int_equal(mm.dropped_queue_full, 3);
  assert_int_equal(mm.dropped_invalid, 0);
  assert_int_equal(mm.depth, 2);
  assert_int_equal(mm.capacity, 2);
  /* the two that got in are the first two */
  af_meter_event_t out[5];
  assert_int_equal(af_meter_drain(fx->m, out, 5), 2);
  assert_int_equal(out[0].units, 0);
  assert_int_equal(out[1].units, 1);
  /* room again */
  assert_int_equal(enqueue_n(fx->m, 5), AF_OK);
  assert_int_equal(enqueue_n(fx->m, 6), AF_OK);
  assert_int_equal(enqueue_n(fx->m, 7), AF_EFULL);
  assert_int_equal(metrics_of(fx->m).dropped_queue_full, 4);
  fx_free(fx);
}

static void capacity_one_holds_exactly_one_event(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(1, 1);
  fx_t *fx = fx_new(&cfg, false);
  af_meter_event_t out;
  for (uint64_t i = 0; i < 10; i++) {
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
    assert_int_equal(enqueue_n(fx->m, 100 + i), AF_EFULL);
    assert_int_equal(af_meter_drain(fx->m, &out, 1), 1);
    assert_int_equal(out.units, i);
  }
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.queued, 10);
  assert_int_equal(mm.drained, 10);
  assert_int_equal(mm.dropped_queue_full, 10);
  assert_int_equal(mm.depth, 0);
  fx_free(fx);
}

/* ---- drain ------------------------------------------------------------- */

static void drain_returns_events_oldest_first_up_to_max(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  af_meter_event_t out[10];
  assert_int_equal(af_meter_drain(fx->m, out, 2), 2);
  assert_int_equal(out[0].units, 0);
  assert_int_equal(out[1].units, 1);
  assert_string_equal(out[1].event_id, "e1");
  assert_int_equal(metrics_of(fx->m).depth, 3);
  assert_int_equal(af_meter_drain(fx->m, out, 10), 3);
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(out[i].units, 2 + i);
  assert_int_equal(af_meter_drain(fx->m, out, 10), 0);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.drained, 5);
  assert_int_equal(mm.queued, 5);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(mm.flushed, 0);
  /* degenerate arguments */
  assert_int_equal(enqueue_n(fx->m, 9), AF_OK);
  assert_int_equal(af_meter_drain(fx->m, out, 0), 0);
  assert_int_equal(af_meter_drain(fx->m, NULL, 1), 0);
  assert_int_equal(af_meter_drain(NULL, out, 1), 0);
  assert_int_equal(metrics_of(fx->m).depth, 1);
  fx_free(fx);
}

static void ring_keeps_fifo_order_across_many_wraparounds(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(3, 1); /* not a power of two */
  fx_t *fx = fx_new(&cfg, false);
  uint64_t next_in = 0, next_out = 0;
  af_meter_event_t out[3];
  for (int round = 0; round < 1000; round++) {
    size_t k = (size_t)(round % 3) + 1;
    for (size_t i = 0; i < k; i++)
      assert_int_equal(enqueue_n(fx->m, next_in++), AF_OK);
    size_t n = af_meter_drain(fx->m, out, k);
    assert_int_equal(n, k);
    for (size_t i = 0; i < n; i++)
      assert_int_equal(out[i].units, next_out++);
  }
  assert_int_equal(metrics_of(fx->m).dropped_queue_full, 0);
  fx_free(fx);
}

/* ---- flush_now and the sink -------------------------------------------- */

/* after_sink sees each stored batch already counted: flushed, duplicates,
 * batches and depth, never the batch still pending. */
typedef struct {
  af_meter_t **m;
  size_t calls;
  af_meter_metrics_t seen[4];
} after_t;

static af_status_t dup_one_sink(const af_meter_event_t *events, size_t n,
                                size_t *duplicates, void *ctx)
{
  (void)events;
  (void)n;
  (void)ctx;
  *duplicates = 1;
  return AF_OK;
}

static void after_sink_record(void *ctx)
{
  after_t *a = ctx;
  if (a->calls < 4)
    af_meter_metrics(*a->m, &a->seen[a->calls]);
  a->calls++;
}

static void after_sink_runs_once_the_batch_is_counted(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 3);
  fx_t *fx = fx_new(&cfg, false);
  af_meter_destroy(fx->m);
  after_t a = {.m = &fx->m};
  cfg.sink = dup_one_sink;
  cfg.after_sink = after_sink_record;
  cfg.sink_ctx = &a;
  assert_int_equal(af_meter_create(&fx->m, &cfg, NULL), AF_OK);
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_flush_now(fx->m), 5);
  assert_int_equal(a.calls, 2);
  assert_int_equal(a.seen[0].flushed, 3);
  assert_int_equal(a.seen[0].duplicates, 1);
  assert_int_equal(a.seen[0].batches, 1);
  assert_int_equal(a.seen[0].depth, 2); /* only the events not taken yet */
  assert_int_equal(a.seen[1].flushed, 5);
  assert_int_equal(a.seen[1].duplicates, 2);
  assert_int_equal(a.seen[1].depth, 0);
  fx_free(fx);
}

static void
flush_now_hands_the_sink_batches_of_batch_size_in_order(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 3);
  fx_t *fx = fx_new(&cfg, true);
  for (uint64_t i = 0; i < 8; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_flush_now(fx->m), 8);
  sink_t *s = &fx->sink;
  assert_int_equal(s->calls, 3);
  assert_int_equal(s->batch_sizes[0], 3);
  assert_int_equal(s->batch_sizes[1], 3);
  assert_int_equal(s->batch_sizes[2], 2);
  assert_int_equal(s->accepted.n, 8);
  for (size_t i = 0; i < 8; i++) {
    assert_int_equal(s->accepted.items[i].units, i);
    assert_int_equal(s->accepted.items[i].call, i / 3);
  }
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.flushed, 8);
  assert_int_equal(mm.batches, 3);
  assert_int_equal(mm.sink_errors, 0);
  assert_int_equal(mm.drained, 0);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(af_meter_flush_now(fx->m), 0); /* nothing left */
  assert_int_equal(s->calls, 3);
  assert_int_equal(af_meter_flush_now(NULL), 0);
  fx_free(fx);
}

static void flush_now_without_sink_flushes_nothing(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  assert_int_equal(enqueue_n(fx->m, 1), AF_OK);
  assert_int_equal(af_meter_flush_now(fx->m), 0);
  assert_int_equal(metrics_of(fx->m).depth, 1);
  fx_free(fx);
}

static void sink_duplicates_are_counted_and_still_flushed(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 4);
  fx_t *fx = fx_new(&cfg, true);
  for (uint64_t i = 0; i < 4; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  fx->sink.report_duplicates = 3;
  assert_int_equal(af_meter_flush_now(fx->m), 4);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.flushed, 4);
  assert_int_equal(mm.duplicates, 3);
  /* a sink claiming more duplicates than events is clamped to the batch */
  assert_int_equal(enqueue_n(fx->m, 4), AF_OK);
  fx->sink.report_duplicates = 99;
  assert_int_equal(af_meter_flush_now(fx->m), 1);
  mm = metrics_of(fx->m);
  assert_int_equal(mm.flushed, 5);
  assert_int_equal(mm.duplicates, 4);
  fx_free(fx);
}

static void refused_batch_is_kept_and_offered_again_first(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 2);
  fx_t *fx = fx_new(&cfg, true);
  sink_t *s = &fx->sink;
  for (uint64_t i = 0; i < 3; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  s->refuse_next = 1;
  assert_int_equal(af_meter_flush_now(fx->m), 0);
  assert_int_equal(s->calls, 1); /* stops at the refused batch */
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.sink_errors, 1);
  assert_int_equal(mm.flushed, 0);
  assert_int_equal(mm.batches, 0);
  assert_int_equal(mm.depth, 3); /* nothing lost */

  assert_int_equal(enqueue_n(fx->m, 3), AF_OK);
  assert_int_equal(af_meter_flush_now(fx->m), 4);
  /* offers: [0 1] refused, [0 1] again, then [2 3] */
  assert_int_equal(s->calls, 3);
  const uint64_t offered[] = {0, 1, 0, 1, 2, 3};
  const size_t call_of[] = {0, 0, 1, 1, 2, 2};
  assert_int_equal(s->offered.n, 6);
  for (size_t i = 0; i < 6; i++) {
    assert_int_equal(s->offered.items[i].units, offered[i]);
    assert_int_equal(s->offered.items[i].call, call_of[i]);
  }
  assert_int_equal(s->accepted.n, 4);
  for (size_t i = 0; i < 4; i++)
    assert_int_equal(s->accepted.items[i].units, i);
  mm = metrics_of(fx->m);
  assert_int_equal(mm.sink_errors, 1);
  assert_int_equal(mm.flushed, 4);
  assert_int_equal(mm.batches, 2);
  assert_int_equal(mm.depth, 0);
  fx_free(fx);
}

static void refused_partial_batch_is_offered_again_unchanged(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 4);
  fx_t *fx = fx_new(&cfg, true);
  sink_t *s = &fx->sink;
  assert_int_equal(enqueue_n(fx->m, 0), AF_OK);
  assert_int_equal(enqueue_n(fx->m, 1), AF_OK);
  s->refuse_next = 1;
  assert_int_equal(af_meter_flush_now(fx->m), 0);
  assert_int_equal(s->batch_sizes[0], 2);
  /* more events arrive while the refused batch waits */
  for (uint64_t i = 2; i < 6; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_flush_now(fx->m), 6);
  /* the retry is the very batch the sink refused, then the rest */
  assert_int_equal(s->batch_sizes[1], 2);
  assert_int_equal(s->offered.items[2].units, 0);
  assert_int_equal(s->offered.items[3].units, 1);
  assert_int_equal(s->offered.items[3].call, 1);
  assert_int_equal(s->accepted.n, 6);
  for (size_t i = 0; i < 6; i++)
    assert_int_equal(s->accepted.items[i].units, i);
  assert_int_equal(metrics_of(fx->m).depth, 0);
  fx_free(fx);
}

static void drain_returns_a_refused_batch_first(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 2);
  fx_t *fx = fx_new(&cfg, true);
  for (uint64_t i = 0; i < 3; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  fx->sink.refuse_all = true;
  assert_int_equal(af_meter_flush_now(fx->m), 0);
  af_meter_event_t out[10];
  assert_int_equal(af_meter_drain(fx->m, out, 1), 1);
  assert_int_equal(out[0].units, 0);
  assert_int_equal(metrics_of(fx->m).depth, 2);
  assert_int_equal(af_meter_drain(fx->m, out, 10), 2);
  assert_int_equal(out[0].units, 1);
  assert_int_equal(out[1].units, 2);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.drained, 3);
  assert_int_equal(mm.depth, 0);
  /* the meter is not stuck afterwards */
  fx->sink.refuse_all = false;
  assert_int_equal(enqueue_n(fx->m, 3), AF_OK);
  assert_int_equal(af_meter_flush_now(fx->m), 1);
  fx_free(fx);
}

/* ---- the flusher thread ------------------------------------------------ */

static af_meter_config_t flusher_config(size_t batch_size)
{
  af_meter_config_t cfg = small_config(1000, batch_size);
  /* The thread re-checks the (manual) clock at least this often in real
   * time; a short interval keeps the tests quick. */
  cfg.flush_interval_ms = 10;
  cfg.max_retry_backoff_ms = 40;
  return cfg;
}

/* Advances the manual clock by step_ms until the sink has accepted
 * `accepted` events (each step waits at most 2 * step_ms real time for the
 * thread to notice). Returns whether it got there within the guard. */
static bool advance_until_accepted(fx_t *fx, uint64_t step_ms, size_t accepted)
{
  for (uint64_t waited = 0; waited < WAIT_GUARD_MS; waited += 2 * step_ms) {
    if (sink_wait(&fx->sink, 0, accepted, 0))
      return true;
    af_manual_clock_advance_ms(fx->mc, step_ms);
    if (sink_wait(&fx->sink, 0, accepted, 2 * step_ms))
      return true;
  }
  return false;
}

static void start_validates_its_preconditions(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  assert_int_equal(af_meter_start(fx->m), AF_EINVAL); /* no sink */
  assert_int_equal(af_meter_start(NULL), AF_EINVAL);
  fx_free(fx);

  af_meter_config_t cfg = flusher_config(10);
  fx = fx_new(&cfg, true);
  assert_false(metrics_of(fx->m).running);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  assert_true(metrics_of(fx->m).running);
  assert_int_equal(af_meter_start(fx->m), AF_ESTATE);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  assert_false(metrics_of(fx->m).running);
  assert_int_equal(af_meter_start(fx->m), AF_ESHUTDOWN);
  fx_free(fx);
}

static void while_the_flusher_runs_drain_and_flush_now_return_zero(void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(100);
  fx_t *fx = fx_new(&cfg, true);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  assert_int_equal(enqueue_n(fx->m, 0), AF_OK);
  af_meter_event_t out[4];
  assert_int_equal(af_meter_drain(fx->m, out, 4), 0);
  assert_int_equal(af_meter_flush_now(fx->m), 0);
  assert_int_equal(metrics_of(fx->m).drained, 0);
  /* the event is still delivered, by the thread */
  assert_true(advance_until_accepted(fx, cfg.flush_interval_ms, 1));
  fx_free(fx);
}

static void
flusher_delivers_a_full_batch_without_the_clock_advancing(void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(5);
  fx_t *fx = fx_new(&cfg, true);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  /* woken by the enqueue that completed the batch (or, if that signal was
   * missed, by its real-time re-check) */
  assert_true(sink_wait(&fx->sink, 1, 5, WAIT_GUARD_MS));
  sink_t *s = &fx->sink;
  pthread_mutex_lock(&s->mu);
  assert_int_equal(s->calls, 1);
  assert_int_equal(s->batch_sizes[0], 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(s->accepted.items[i].units, i);
  pthread_mutex_unlock(&s->mu);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  fx_free(fx);
}

static void
flusher_delivers_a_partial_batch_on_request_without_the_clock_advancing(
    void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(100);
  fx_t *fx = fx_new(&cfg, true);
  af_meter_request_flush(fx->m); /* not running: a no-op */
  af_meter_request_flush(NULL);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  for (uint64_t i = 0; i < 3; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  /* The manual clock never reaches the next tick: only the request can
   * make the flusher hand over a partial batch. */
  af_meter_request_flush(fx->m);
  assert_true(sink_wait(&fx->sink, 1, 3, WAIT_GUARD_MS));
  sink_t *s = &fx->sink;
  pthread_mutex_lock(&s->mu);
  assert_int_equal(s->batch_sizes[0], 3);
  pthread_mutex_unlock(&s->mu);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  fx_free(fx);
}

/* A clock that counts how often the meter reads its monotonic time, over a
 * manual clock: the flusher reads it at the start and at the end of every
 * round, so three more reads mean a whole round began after a given point. */
typedef struct {
  af_manual_clock_t *mc;
  atomic_ulong mono_reads;
} counting_clock_t;

static uint64_t counting_mono_ns(void *ctx)
{
  counting_clock_t *cc = ctx;
  atomic_fetch_add(&cc->mono_reads, 1);
  return af_clock_mono_ns(af_manual_clock_clock(cc->mc));
}

static int64_t counting_wall_ns(void *ctx)
{
  counting_clock_t *cc = ctx;
  return af_clock_wall_ns(af_manual_clock_clock(cc->mc));
}

/* Polls (bounded, real time) until the flusher has run a whole round. */
static bool wait_for_a_flusher_round(counting_clock_t *cc)
{
  unsigned long from = atomic_load(&cc->mono_reads);
  uint64_t give_up = af_clock_mono_ns(NULL) + WAIT_GUARD_MS * AF_NS_PER_MS;
  while (atomic_load(&cc->mono_reads) < from + 3) {
    if (af_clock_mono_ns(NULL) > give_up)
      return false;
    struct timespec ts = {0, 100000}; /* 0.1 ms between polls */
    nanosleep(&ts, NULL);
  }
  return true;
}

static void
flusher_completes_a_batch_it_had_started_with_newer_events(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  counting_clock_t cc = {.mc = fx->mc};
  const af_clock_t clock = {counting_mono_ns, counting_wall_ns, &cc};
  af_meter_config_t cfg = flusher_config(5);
  cfg.clock = &clock;
  cfg.sink = record_sink;
  cfg.sink_ctx = &fx->sink;
  af_meter_destroy(fx->m);
  assert_int_equal(af_meter_create(&fx->m, &cfg, NULL), AF_OK);
  assert_int_equal(af_meter_start(fx->m), AF_OK);

  /* Two events: the flusher takes them up but holds them, the batch is not
   * full and the (manual) interval never passes. */
  assert_int_equal(enqueue_n(fx->m, 0), AF_OK);
  assert_int_equal(enqueue_n(fx->m, 1), AF_OK);
  assert_true(wait_for_a_flusher_round(&cc));
  assert_int_equal(metrics_of(fx->m).depth, 2);
  /* Three more complete the batch: it goes out whole, in order. */
  for (uint64_t i = 2; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_true(sink_wait(&fx->sink, 1, 5, WAIT_GUARD_MS));
  pthread_mutex_lock(&fx->sink.mu);
  assert_int_equal(fx->sink.batch_sizes[0], 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(fx->sink.accepted.items[i].units, i);
  pthread_mutex_unlock(&fx->sink.mu);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  af_meter_destroy(fx->m); /* before the clock it retains goes away */
  fx->m = NULL;
  fx_free(fx);
}

static void
flusher_delivers_a_partial_batch_once_the_interval_passes(void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(100);
  fx_t *fx = fx_new(&cfg, true);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  for (uint64_t i = 0; i < 3; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_true(advance_until_accepted(fx, cfg.flush_interval_ms, 3));
  sink_t *s = &fx->sink;
  pthread_mutex_lock(&s->mu);
  assert_int_equal(s->accepted.n, 3);
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(s->accepted.items[i].units, i);
  pthread_mutex_unlock(&s->mu);
  /* the thread counts a batch after the sink returns: join it first */
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.flushed, 3);
  assert_int_equal(mm.batches, 1);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(s->calls, 1); /* shutdown had nothing left */
  fx_free(fx);
}

static void flusher_retries_a_refused_batch_after_the_backoff(void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(4);
  fx_t *fx = fx_new(&cfg, true);
  sink_t *s = &fx->sink;
  s->refuse_next = 2;
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  for (uint64_t i = 0; i < 4; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_true(advance_until_accepted(fx, cfg.flush_interval_ms, 4));
  pthread_mutex_lock(&s->mu);
  assert_int_equal(s->calls, 3);
  assert_int_equal(s->refused_calls, 2);
  /* the same four events, three times */
  assert_int_equal(s->offered.n, 12);
  for (size_t i = 0; i < 12; i++)
    assert_int_equal(s->offered.items[i].units, i % 4);
  pthread_mutex_unlock(&s->mu);
  /* the thread counts a batch after the sink returns: join it first */
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.sink_errors, 2);
  assert_int_equal(mm.flushed, 4);
  assert_int_equal(mm.batches, 1);
  assert_int_equal(mm.depth, 0);
  fx_free(fx);
}

/* ---- shutdown ---------------------------------------------------------- */

static void
shutdown_flushes_what_is_queued_and_then_refuses_events(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 2);
  fx_t *fx = fx_new(&cfg, true);
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  assert_int_equal(fx->sink.accepted.n, 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(fx->sink.accepted.items[i].units, i);
  af_meter_event_t e = event_n(9);
  af_error_t err;
  assert_int_equal(af_meter_enqueue(fx->m, &e, &err), AF_ESHUTDOWN);
  assert_string_equal(err.message, "meter is shut down");
  /* shut down wins over validation */
  af_meter_event_t bad = event_n(10);
  bad.tenant_id[0] = '\0';
  assert_int_equal(af_meter_enqueue(fx->m, &bad, NULL), AF_ESHUTDOWN);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.dropped_shutdown, 2);
  assert_int_equal(mm.dropped_invalid, 0);
  assert_int_equal(mm.queued, 5);
  assert_int_equal(mm.flushed, 5);
  assert_int_equal(mm.unflushed, 0);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(af_meter_shutdown(NULL, 0), 0);
  fx_free(fx);
}

static void
shutdown_joins_the_flusher_and_flushes_the_partial_batch(void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(100);
  fx_t *fx = fx_new(&cfg, true);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  for (uint64_t i = 0; i < 7; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  /* clock never advanced: only shutdown's final flush delivers them */
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_false(mm.running);
  assert_int_equal(mm.flushed, 7);
  assert_int_equal(fx->sink.accepted.n, 7);
  for (size_t i = 0; i < 7; i++)
    assert_int_equal(fx->sink.accepted.items[i].units, i);
  fx_free(fx);
}

static void
shutdown_with_refusing_sink_returns_what_is_left_unflushed(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 2);
  fx_t *fx = fx_new(&cfg, true);
  sink_t *s = &fx->sink;
  s->refuse_all = true;
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  /* deadline 0: one attempt, no waiting */
  assert_int_equal(af_meter_shutdown(fx->m, 0), 5);
  assert_int_equal(s->calls, 1);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.unflushed, 5);
  assert_int_equal(mm.depth, 5);
  assert_int_equal(mm.sink_errors, 1);
  /* calling it again retries */
  s->refuse_all = false;
  s->refuse_next = 1; /* [0 1] refused once more */
  assert_int_equal(af_meter_shutdown(fx->m, 0), 5);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 0);
  assert_int_equal(metrics_of(fx->m).unflushed, 0);
  assert_int_equal(s->accepted.n, 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(s->accepted.items[i].units, i);
  fx_free(fx);
}

static void
after_a_failed_shutdown_drain_salvages_the_rest_in_order(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 2);
  fx_t *fx = fx_new(&cfg, true);
  fx->sink.refuse_next = 1;
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_shutdown(fx->m, 0), 5);
  af_meter_event_t out[8];
  assert_int_equal(af_meter_drain(fx->m, out, 8), 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(out[i].units, i);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.drained, 5);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(mm.unflushed, 5); /* as of the last shutdown */
  fx_free(fx);
}

static void shutdown_with_deadline_retries_until_the_sink_accepts(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(100, 2);
  cfg.flush_interval_ms = 1; /* real-time retry backoff: 1 ms, then 2 ms */
  cfg.max_retry_backoff_ms = 2;
  fx_t *fx = fx_new(&cfg, true);
  fx->sink.refuse_next = 2;
  for (uint64_t i = 0; i < 5; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_shutdown(fx->m, WAIT_GUARD_MS), 0);
  sink_t *s = &fx->sink;
  assert_int_equal(s->refused_calls, 2);
  assert_int_equal(s->calls, 5); /* 2 refused + [0 1] [2 3] [4] */
  assert_int_equal(s->accepted.n, 5);
  for (size_t i = 0; i < 5; i++)
    assert_int_equal(s->accepted.items[i].units, i);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(mm.sink_errors, 2);
  assert_int_equal(mm.unflushed, 0);
  fx_free(fx);
}

static void shutdown_without_sink_returns_the_depth(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  for (uint64_t i = 0; i < 3; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  assert_int_equal(af_meter_shutdown(fx->m, 1000), 3);
  assert_int_equal(metrics_of(fx->m).unflushed, 3);
  af_meter_event_t out[4];
  assert_int_equal(af_meter_drain(fx->m, out, 4), 3);
  fx_free(fx);
}

static void
destroy_stops_a_running_flusher_and_frees_queued_events(void **state)
{
  (void)state;
  af_meter_config_t cfg = flusher_config(100);
  fx_t *fx = fx_new(&cfg, true);
  assert_int_equal(af_meter_start(fx->m), AF_OK);
  for (uint64_t i = 0; i < 10; i++)
    assert_int_equal(enqueue_n(fx->m, i), AF_OK);
  fx_free(fx); /* no shutdown: ASan checks nothing leaks */
}

/* ---- metrics ----------------------------------------------------------- */

static void metrics_start_at_zero_and_null_is_safe(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(50, 5);
  fx_t *fx = fx_new(&cfg, false);
  af_meter_metrics_t mm;
  memset(&mm, 0xab, sizeof(mm));
  af_meter_metrics(fx->m, &mm);
  assert_int_equal(mm.queued, 0);
  assert_int_equal(mm.flushed, 0);
  assert_int_equal(mm.drained, 0);
  assert_int_equal(mm.dropped_queue_full, 0);
  assert_int_equal(mm.dropped_invalid, 0);
  assert_int_equal(mm.dropped_shutdown, 0);
  assert_int_equal(mm.sink_errors, 0);
  assert_int_equal(mm.duplicates, 0);
  assert_int_equal(mm.batches, 0);
  assert_int_equal(mm.unflushed, 0);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(mm.capacity, 50);
  assert_false(mm.running);
  assert_string_equal(mm.hash, AF_CONSTITUTIONAL_HASH_DEFAULT);
  memset(&mm, 0xab, sizeof(mm));
  af_meter_metrics(NULL, &mm);
  assert_int_equal(mm.queued, 0);
  assert_int_equal(mm.capacity, 0);
  assert_string_equal(mm.hash, "");
  af_meter_metrics(fx->m, NULL); /* no crash */
  fx_free(fx);
}

/* ---- idempotency keys -------------------------------------------------- */

static int cmp_ids(const void *a, const void *b) { return strcmp(a, b); }

#define ID_COUNT 20000

static void generated_event_ids_are_32_hex_chars_and_never_repeat(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  char(*ids)[AF_EVENT_ID_MAX + 1] = calloc(ID_COUNT, sizeof(*ids));
  assert_non_null(ids);
  for (size_t i = 0; i < ID_COUNT; i++) {
    af_meter_generate_event_id(fx->m, ids[i]);
    assert_int_equal(strlen(ids[i]), 32);
    assert_true(is_lower_hex(ids[i], 32));
    /* one per-meter prefix, then the counter */
    assert_memory_equal(ids[i], ids[0], 16);
  }
  qsort(ids, ID_COUNT, sizeof(*ids), cmp_ids);
  for (size_t i = 1; i < ID_COUNT; i++)
    assert_string_not_equal(ids[i - 1], ids[i]);

  /* another meter: another prefix (equal only with probability 2^-64) */
  fx_t *other = fx_new(NULL, false);
  char id[AF_EVENT_ID_MAX + 1];
  af_meter_generate_event_id(other->m, id);
  assert_int_equal(strlen(id), 32);
  assert_false(memcmp(id, ids[0], 16) == 0);
  fx_free(other);

  af_meter_generate_event_id(NULL, id); /* no crash */
  af_meter_generate_event_id(fx->m, NULL);
  free(ids);
  fx_free(fx);
}

static void generated_event_id_ends_with_the_counter_in_hex(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  char id[AF_EVENT_ID_MAX + 1];
  for (unsigned i = 0; i <= 0x1234; i++) {
    af_meter_generate_event_id(fx->m, id);
    char want[17];
    snprintf(want, sizeof(want), "%016x", i);
    assert_string_equal(id + 16, want);
  }
  fx_free(fx);
}

#define ID_THREADS 4
#define ID_PER_THREAD 5000

typedef struct {
  af_meter_t *m;
  char (*ids)[AF_EVENT_ID_MAX + 1];
} id_arg_t;

static void *id_worker(void *p)
{
  id_arg_t *a = p;
  for (size_t i = 0; i < ID_PER_THREAD; i++)
    af_meter_generate_event_id(a->m, a->ids[i]);
  return NULL;
}

static void event_ids_generated_concurrently_never_repeat(void **state)
{
  (void)state;
  fx_t *fx = fx_new(NULL, false);
  char(*ids)[AF_EVENT_ID_MAX + 1] =
      calloc(ID_THREADS * ID_PER_THREAD, sizeof(*ids));
  assert_non_null(ids);
  pthread_t th[ID_THREADS];
  id_arg_t args[ID_THREADS];
  for (size_t t = 0; t < ID_THREADS; t++) {
    args[t].m = fx->m;
    args[t].ids = ids + t * ID_PER_THREAD;
    assert_int_equal(pthread_create(&th[t], NULL, id_worker, &args[t]), 0);
  }
  for (size_t t = 0; t < ID_THREADS; t++)
    pthread_join(th[t], NULL);
  qsort(ids, ID_THREADS * ID_PER_THREAD, sizeof(*ids), cmp_ids);
  for (size_t i = 1; i < ID_THREADS * ID_PER_THREAD; i++)
    assert_string_not_equal(ids[i - 1], ids[i]);
  free(ids);
  fx_free(fx);
}

/* ---- concurrency ------------------------------------------------------- */

#define MT_PRODUCERS 4
#define MT_PER_PRODUCER 20000

/* units = producer << 32 | i: tells who sent it and in which order. */
#define MT_UNITS(p, i) (((uint64_t)(p) << 32) | (uint64_t)(i))
#define MT_PRODUCER_OF(u) ((size_t)((u) >> 32))
#define MT_INDEX_OF(u) ((size_t)((u)&0xffffffffu))

typedef struct {
  af_meter_t *m;
  size_t p;
  pthread_barrier_t *go;
  unsigned char *ok; /* [MT_PER_PRODUCER]: 1 if enqueue returned AF_OK */
  size_t n_ok, n_full, n_other;
} producer_t;

static void *producer_main(void *arg)
{
  producer_t *pr = arg;
  pthread_barrier_wait(pr->go);
  for (size_t i = 0; i < MT_PER_PRODUCER; i++) {
    af_meter_event_t e;
    af_meter_event_init(&e, "tenant-mt", AF_OP_AGENT_MESSAGE);
    e.units = MT_UNITS(pr->p, i);
    snprintf(e.event_id, sizeof(e.event_id), "p%zu-%zu", pr->p, i);
    af_status_t rc = af_meter_enqueue(pr->m, &e, NULL);
    if (rc == AF_OK) {
      pr->ok[i] = 1;
      pr->n_ok++;
    } else if (rc == AF_EFULL) {
      pr->n_full++;
    } else {
      pr->n_other++;
    }
  }
  return NULL;
}

typedef struct {
  unsigned char seen[MT_PRODUCERS][MT_PER_PRODUCER];
  long last[MT_PRODUCERS]; /* last index seen per producer, -1: none */
  size_t total;
} tally_t;

/* Records one delivered event. Returns false unless it is intact, seen for
 * the first time, and later than the last one from the same producer. No
 * cmocka asserts here: it also runs on the flusher thread. */
static bool tally_one(tally_t *t, uint64_t units, const char *event_id)
{
  size_t p = MT_PRODUCER_OF(units), i = MT_INDEX_OF(units);
  if (p >= MT_PRODUCERS || i >= MT_PER_PRODUCER)
    return false;
  char want[AF_EVENT_ID_MAX + 1];
  snprintf(want, sizeof(want), "p%zu-%zu", p, i);
  if (strcmp(event_id, want) != 0 || t->seen[p][i])
    return false;
  t->seen[p][i] = 1;
  if ((long)i <= t->last[p])
    return false;
  t->last[p] = (long)i;
  t->total++;
  return true;
}

static void spawn_producers(af_meter_t *m, pthread_t *th, producer_t *pr,
                            pthread_barrier_t *go)
{
  for (size_t p = 0; p < MT_PRODUCERS; p++) {
    pr[p] = (producer_t){.m = m, .p = p, .go = go};
    pr[p].ok = calloc(MT_PER_PRODUCER, 1);
    assert_non_null(pr[p].ok);
    assert_int_equal(pthread_create(&th[p], NULL, producer_main, &pr[p]), 0);
  }
}

/* Checks that the delivered set is exactly the accepted set. */
static size_t check_tally(const tally_t *t, producer_t *pr, size_t *n_full)
{
  size_t ok = 0;
  *n_full = 0;
  for (size_t p = 0; p < MT_PRODUCERS; p++) {
    assert_int_equal(pr[p].n_other, 0);
    assert_int_equal(pr[p].n_ok + pr[p].n_full, MT_PER_PRODUCER);
    for (size_t i = 0; i < MT_PER_PRODUCER; i++)
      assert_int_equal(t->seen[p][i], pr[p].ok[i]);
    ok += pr[p].n_ok;
    *n_full += pr[p].n_full;
    free(pr[p].ok);
  }
  assert_int_equal(t->total, ok);
  return ok;
}

static void four_producers_and_a_draining_consumer_lose_nothing(void **state)
{
  (void)state;
  af_meter_config_t cfg = small_config(512, 64);
  fx_t *fx = fx_new(&cfg, false);
  tally_t *t = calloc(1, sizeof(*t));
  assert_non_null(t);
  for (size_t p = 0; p < MT_PRODUCERS; p++)
    t->last[p] = -1;

  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, MT_PRODUCERS + 1);
  pthread_t th[MT_PRODUCERS];
  producer_t pr[MT_PRODUCERS];
  spawn_producers(fx->m, th, pr, &go);
  pthread_barrier_wait(&go);

  /* The consumer drains while the producers run, until they are done and
   * the queue is empty. */
  af_meter_event_t *buf = calloc(64, sizeof(*buf));
  assert_non_null(buf);
  size_t rounds = 0;
  for (;;) {
    af_meter_metrics_t mm = metrics_of(fx->m);
    bool done = mm.queued + mm.dropped_queue_full ==
                (uint64_t)MT_PRODUCERS * MT_PER_PRODUCER;
    size_t n = af_meter_drain(fx->m, buf, 64);
    for (size_t k = 0; k < n; k++)
      assert_true(tally_one(t, buf[k].units, buf[k].event_id));
    rounds++;
    if (done && n == 0 && metrics_of(fx->m).depth == 0)
      break;
  }
  for (size_t p = 0; p < MT_PRODUCERS; p++)
    pthread_join(th[p], NULL);
  pthread_barrier_destroy(&go);

  size_t n_full;
  size_t n_ok = check_tally(t, pr, &n_full);
  af_meter_metrics_t mm = metrics_of(fx->m);
  assert_int_equal(n_ok + n_full, MT_PRODUCERS * MT_PER_PRODUCER);
  assert_int_equal(mm.queued, n_ok);
  assert_int_equal(mm.dropped_queue_full, n_full);
  assert_int_equal(mm.queued + mm.dropped_queue_full,
                   MT_PRODUCERS * MT_PER_PRODUCER);
  assert_int_equal(mm.drained, n_ok);
  assert_int_equal(mm.depth, 0);
  assert_int_equal(mm.dropped_invalid, 0);
  print_message("%zu queued, %zu dropped (queue full), %zu drain rounds\n",
                n_ok, n_full, rounds);
  free(buf);
  free(t);
  fx_free(fx);
}

/* A sink that feeds the tally (runs on the flusher thread). */
typedef struct {
  pthread_mutex_t mu;
  tally_t *t;
  size_t calls;
  size_t refused;
  size_t bad; /* events tally_one refused */
} tally_sink_t;

static af_status_t tally_sink(const af_meter_event_t *events, size_t n,
                              size_t *duplicates, void *ctx)
{
  (void)duplicates;
  tally_sink_t *ts = ctx;
  pthread_mutex_lock(&ts->mu);
  size_t call = ts->calls++;
  if (call % 5 == 4) { /* every fifth call fails */
    ts->refused++;
    pthread_mutex_unlock(&ts->mu);
    return AF_EIO;
  }
  for (size_t k = 0; k < n; k++)
    if (!tally_one(ts->t, events[k].units, events[k].event_id))
      ts->bad++;
  pthread_mutex_unlock(&ts->mu);
  return AF_OK;
}

static void
four_producers_and_a_failing_sink_deliver_each_event_once(void **state)
{
  (void)state;
  tally_sink_t ts = {.t = calloc(1, sizeof(tally_t))};
  assert_non_null(ts.t);
  pthread_mutex_init(&ts.mu, NULL);
  for (size_t p = 0; p < MT_PRODUCERS; p++)
    ts.t->last[p] = -1;

  /* The system clock here: retry backoff passes in real time (1-2 ms). */
  af_meter_config_t cfg = small_config(2048, 64);
  cfg.flush_interval_ms = 1;
  cfg.max_retry_backoff_ms = 2;
  cfg.sink = tally_sink;
  cfg.sink_ctx = &ts;
  af_meter_t *m = NULL;
  assert_int_equal(af_meter_create(&m, &cfg, NULL), AF_OK);
  assert_int_equal(af_meter_start(m), AF_OK);

  pthread_barrier_t go;
  pthread_barrier_init(&go, NULL, MT_PRODUCERS + 1);
  pthread_t th[MT_PRODUCERS];
  producer_t pr[MT_PRODUCERS];
  spawn_producers(m, th, pr, &go);
  pthread_barrier_wait(&go);
  for (size_t p = 0; p < MT_PRODUCERS; p++)
    pthread_join(th[p], NULL);
  pthread_barrier_destroy(&go);

  assert_int_equal(af_meter_shutdown(m, WAIT_GUARD_MS), 0);
  assert_int_equal(ts.bad, 0);

  size_t n_full;
  size_t n_ok = check_tally(ts.t, pr, &n_full);
  af_meter_metrics_t mm;
  af_meter_metrics(m, &mm);
  assert_int_equal(mm.queued + mm.dropped_queue_full,
                   MT_PRODUCERS * MT_PER_PRODUCER);
  assert_int_equal(mm.queued, n_ok);
  assert_int_equal(mm.flushed, n_ok);
  assert_int_equal(mm.sink_errors, ts.refused);
  assert_int_equal(mm.unflushed, 0);
  assert_int_equal(mm.depth, 0);
  print_message("%zu flushed in %zu sink calls (%zu refused), %zu dropped\n",
                n_ok, ts.calls, ts.refused, n_full);
  af_meter_destroy(m);
  pthread_mutex_destroy(&ts.mu);
  free(ts.t);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(config_init_sets_documented_defaults),
      cmocka_unit_test(create_requires_out_and_config),
      cmocka_unit_test(create_rejects_capacity_outside_one_to_2_pow_24),
      cmocka_unit_test(create_rejects_batch_size_outside_one_to_capacity),
      cmocka_unit_test(create_rejects_zero_flush_interval),
      cmocka_unit_test(create_rejects_backoff_cap_below_flush_interval),
      cmocka_unit_test(create_rejects_empty_or_unterminated_hash),
      cmocka_unit_test(create_accepts_boundary_values),
      cmocka_unit_test(create_fails_cleanly_on_every_allocation_failure),
      cmocka_unit_test(operation_names_match_the_seed_and_round_trip),
      cmocka_unit_test(tier_names_match_the_seed_and_round_trip),
      cmocka_unit_test(parse_is_ascii_case_insensitive),
      cmocka_unit_test(parse_rejects_unknown_names_and_leaves_out_untouched),
      cmocka_unit_test(event_init_sets_documented_defaults),
      cmocka_unit_test(
          event_init_keeps_an_overlong_tenant_for_validate_to_refuse),
      cmocka_unit_test(validate_reports_each_fault_with_its_message),
      cmocka_unit_test(validate_accepts_boundary_values),
      cmocka_unit_test(enqueue_fills_in_event_id_timestamp_and_hash),
      cmocka_unit_test(
          enqueue_refuses_invalid_events_and_counts_dropped_invalid),
      cmocka_unit_test(enqueue_refuses_a_foreign_hash_as_invalid),
      cmocka_unit_test(
          capacity_two_queues_two_and_drops_three_without_blocking),
      cmocka_unit_test(capacity_one_holds_exactly_one_event),
      cmocka_unit_test(drain_returns_events_oldest_first_up_to_max),
      cmocka_unit_test(ring_keeps_fifo_order_across_many_wraparounds),
      cmocka_unit_test(flush_now_hands_the_sink_batches_of_batch_size_in_order),
      cmocka_unit_test(flush_now_without_sink_flushes_nothing),
      cmocka_unit_test(sink_duplicates_are_counted_and_still_flushed),
      cmocka_unit_test(refused_batch_is_kept_and_offered_again_first),
      cmocka_unit_test(refused_partial_batch_is_offered_again_unchanged),
      cmocka_unit_test(drain_returns_a_refused_batch_first),
      cmocka_unit_test(start_validates_its_preconditions),
      cmocka_unit_test(while_the_flusher_runs_drain_and_flush_now_return_zero),
      cmocka_unit_test(
          flusher_delivers_a_full_batch_without_the_clock_advancing),
      cmocka_unit_test(
          flusher_delivers_a_partial_batch_on_request_without_the_clock_advancing),
      cmocka_unit_test(
          flusher_completes_a_batch_it_had_started_with_newer_events),
      cmocka_unit_test(
          flusher_delivers_a_partial_batch_once_the_interval_passes),
      cmocka_unit_test(flusher_retries_a_refused_batch_after_the_backoff),
      cmocka_unit_test(shutdown_flushes_what_is_queued_and_then_refuses_events),
      cmocka_unit_test(
          shutdown_joins_the_flusher_and_flushes_the_partial_batch),
      cmocka_unit_test(
          shutdown_with_refusing_sink_returns_what_is_left_unflushed),
      cmocka_unit_test(
          after_a_failed_shutdown_drain_salvages_the_rest_in_order),
      cmocka_unit_test(shutdown_with_deadline_retries_until_the_sink_accepts),
      cmocka_unit_test(shutdown_without_sink_returns_the_depth),
      cmocka_unit_test(destroy_stops_a_running_flusher_and_frees_queued_events),
      cmocka_unit_test(metrics_start_at_zero_and_null_is_safe),
      cmocka_unit_test(after_sink_runs_once_the_batch_is_counted),
      cmocka_unit_test(generated_event_ids_are_32_hex_chars_and_never_repeat),
      cmocka_unit_test(generated_event_id_ends_with_the_counter_in_hex),
      cmocka_unit_test(event_ids_generated_concurrently_never_repeat),
      cmocka_unit_test(four_producers_and_a_draining_consumer_lose_nothing),
      cmocka_unit_test(
          four_producers_and_a_failing_sink_deliver_each_event_once),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
