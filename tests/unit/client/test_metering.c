/*
 * test_metering.c - unit tests of client/src/metering.c: the metering
 * queue (idempotency keys, full queue, no allocation) and the sender with a
 * fake transport playing an idempotent server (lost ack, refusal).
 */
#include "client_fixture.h"

/* ---- metering ------------------------------------------------------------ */

static void enqueue_gives_every_event_a_distinct_idempotency_key(void **state)
{
  fixture_t *f = *state;
  char keys[10][AF_EVENT_ID_MAX + 1];
  for (int i = 0; i < 10; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
    assert_int_equal(af_client_meter_enqueue(f->c, &ev, NULL), AF_OK);
    assert_true(strlen(ev.event_id) > 0);
    assert_int_equal(ev.timestamp_wall_ns, T0_WALL);
    memcpy(keys[i], ev.event_id, sizeof keys[i]);
    for (int j = 0; j < i; j++) {
      assert_string_not_equal(keys[i], keys[j]);
    }
  }
}

static void full_queue_refuses_and_counts_dropped(void **state)
{
  fixture_t *f = *state;
  for (int i = 0; i < 4; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
    assert_int_equal(af_client_meter_enqueue(f->c, &ev, NULL), AF_OK);
  }
  af_meter_event_t ev;
  af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
  af_error_t err;
  assert_int_equal(af_client_meter_enqueue(f->c, &ev, &err), AF_EFULL);
  af_meter_metrics_t m;
  af_client_meter_metrics(f->c, &m);
  assert_int_equal(m.queued, 4);
  assert_int_equal(m.dropped_queue_full, 1);
  assert_int_equal(m.depth, 4);
}

static void invalid_event_is_refused_at_enqueue(void **state)
{
  fixture_t *f = *state;
  af_meter_event_t ev;
  af_meter_event_init(&ev, "", AF_OP_AGENT_MESSAGE);
  af_error_t err;
  assert_int_equal(af_client_meter_enqueue(f->c, &ev, &err), AF_EINVAL);
  assert_string_equal(err.message, "tenant_id is required");
}

static size_t g_allocs;
static void *count_malloc(size_t n, void *ctx)
{
  (void)ctx;
  g_allocs++;
  return malloc(n);
}
static void *count_realloc(void *p, size_t n, void *ctx)
{
  (void)ctx;
  g_allocs++;
  return realloc(p, n);
}
static void count_free(void *p, void *ctx)
{
  (void)ctx;
  free(p);
}

static void enqueue_never_allocates(void **state)
{
  fixture_t *f = *state;
  af_allocator_t a = {count_malloc, count_realloc, count_free, NULL};
  assert_int_equal(af_alloc_replace(&a), AF_OK);
  g_allocs = 0;
  for (int i = 0; i < 100; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
    assert_int_equal(af_client_meter_enqueue(f->c, &ev, NULL), AF_OK);
  }
  size_t n = g_allocs;
  assert_int_equal(af_alloc_replace(NULL), AF_OK);
  assert_int_equal(n, 0);
}

/* A fake server: an idempotent ledger of (tenant, event_id). */
#define LEDGER_MAX 256
typedef struct {
  char keys[LEDGER_MAX][200];
  size_t n;
  int calls;
  int lose_acks;   /* this many calls apply the batch but "lose" the ack */
  int reject_next; /* this many calls answer rejected = 1 */
} fake_server_t;

static int fake_send(void *ctx, const antifragility_v1_RecordUsageRequest *reqs,
                     size_t n, antifragility_v1_RecordUsageStreamResponse *resp)
{
  fake_server_t *fs = ctx;
  fs->calls++;
  if (fs->reject_next > 0) {
    fs->reject_next--;
    resp->received = n;
    resp->rejected = 1;
    resp->accepted = n - 1;
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    char key[200];
    snprintf(key, sizeof key, "%s/%s", reqs[i].event.tenant_id,
             reqs[i].event.event_id);
    bool dup = false;
    for (size_t k = 0; k < fs->n; k++) {
      dup = dup || strcmp(fs->keys[k], key) == 0;
    }
    if (dup) {
      resp->duplicates++;
    } else {
      assert_true(fs->n < LEDGER_MAX);
      memcpy(fs->keys[fs->n++], key, sizeof key);
      resp->accepted++;
    }
    resp->received++;
  }
  if (fs->lose_acks > 0) {
    fs->lose_acks--;
    return 14; /* UNAVAILABLE after the server applied the batch */
  }
  return 0;
}

static void retry_after_a_lost_ack_counts_every_event_once(void **state)
{
  fixture_t *f = *state;
  fake_server_t fs;
  memset(&fs, 0, sizeof fs);
  fs.lose_acks = 1;
  af__meter_set_send(f->c, fake_send, &fs);
  for (int i = 0; i < 30; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
    assert_int_equal(af_client_meter_enqueue(f->c, &ev, NULL), AF_OK);
  }
  /* First send: applied, ack lost -> the batch stays queued. */
  assert_int_equal(af_meter_flush_now(f->c->meter), 0);
  assert_int_equal(fs.n, 30);
  af_meter_metrics_t m;
  af_client_meter_metrics(f->c, &m);
  assert_int_equal(m.sink_errors, 1);
  assert_int_equal(m.depth, 30);
  /* Retry: same keys, the server reports duplicates, counts nothing new. */
  assert_int_equal(af_meter_flush_now(f->c->meter), 30);
  assert_int_equal(fs.n, 30);
  af_client_meter_metrics(f->c, &m);
  assert_int_equal(m.flushed, 30);
  assert_int_equal(m.duplicates, 30);
  assert_int_equal(m.depth, 0);
  assert_int_equal(fs.calls, 2);
}

static void batch_with_a_refusal_is_retried_whole(void **state)
{
  fixture_t *f = *state;
  fake_server_t fs;
  memset(&fs, 0, sizeof fs);
  fs.reject_next = 1;
  af__meter_set_send(f->c, fake_send, &fs);
  for (int i = 0; i < 5; i++) {
    af_meter_event_t ev;
    af_meter_event_init(&ev, "acme", AF_OP_AUDIT_WRITE);
    assert_int_equal(af_client_meter_enqueue(f->c, &ev, NULL), AF_OK);
  }
  assert_int_equal(af_meter_flush_now(f->c->meter), 0);
  assert_int_equal(af_meter_flush_now(f->c->meter), 5);
  assert_int_equal(fs.n, 5);
}

static void event_converts_to_the_wire_form(void **state)
{
  (void)state;
  af_meter_event_t ev;
  af_meter_event_init(&ev, "acme", AF_OP_POLICY_EVALUATION);
  snprintf(ev.event_id, sizeof ev.event_id, "k1");
  snprintf(ev.agent_id, sizeof ev.agent_id, "agent-7");
  ev.tier = AF_TIER_ENTERPRISE;
  ev.units = 3;
  ev.tokens_processed = 42;
  ev.latency_ms = 1.5;
  ev.compliance_score = 0.25;
  ev.constitutional_valid = false;
  ev.timestamp_wall_ns = INT64_C(1700000000123000000);
  snprintf(ev.hash, sizeof ev.hash, "cdd01ef066bc6cf2");
  antifragility_v1_UsageEvent pb;
  af__meter_event_to_pb(&ev, &pb);
  assert_string_equal(pb.tenant_id, "acme");
  assert_string_equal(pb.event_id, "k1");
  assert_string_equal(pb.agent_id, "agent-7");
  assert_int_equal(
      pb.operation,
      antifragility_v1_MeterableOperation_OPERATION_POLICY_EVALUATION);
  assert_int_equal(pb.tier,
                   antifragility_v1_MeteringTier_METERING_TIER_ENTERPRISE);
  assert_int_equal(pb.units, 3);
  assert_int_equal(pb.tokens_processed, 42);
  assert_true(pb.latency_ms == 1.5);
  assert_true(pb.compliance_score == 0.25);
  assert_false(pb.constitutional_valid);
  assert_true(pb.has_timestamp);
  assert_int_equal(pb.timestamp.seconds, 1700000000);
  assert_int_equal(pb.timestamp.nanos, 123000000);
  assert_string_equal(pb.constitutional_hash, "cdd01ef066bc6cf2");
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          enqueue_gives_every_event_a_distinct_idempotency_key, setup,
          teardown),
      cmocka_unit_test_setup_teardown(full_queue_refuses_and_counts_dropped,
                                      setup_small_queue, teardown),
      cmocka_unit_test_setup_teardown(invalid_event_is_refused_at_enqueue,
                                      setup, teardown),
      cmocka_unit_test_setup_teardown(enqueue_never_allocates, setup, teardown),
      cmocka_unit_test_setup_teardown(
          retry_after_a_lost_ack_counts_every_event_once, setup, teardown),
      cmocka_unit_test_setup_teardown(batch_with_a_refusal_is_retried_whole,
                                      setup, teardown),
      cmocka_unit_test(event_converts_to_the_wire_form),
  };
  return cmocka_run_group_tests_name("metering", tests, NULL, NULL);
}
