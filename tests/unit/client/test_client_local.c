/*
 * test_client_local.c - unit tests of libafclient's local parts: the guard
 * (client/src/guard.c), chaos application (client/src/chaos_follow.c) and
 * the metering queue and sender (client/src/metering.c).
 *
 * No server: the client is created without background threads, on a
 * manual clock, pointing at a closed port. Time moves only when a test
 * advances the clock; nothing sleeps (the latency case measures a 5 ms
 * injected delay, which is the behaviour under test). The metering sender
 * gets a fake transport that plays a server with an idempotent ledger.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/client.h"
#include "client_internal.h"

#define T0_MONO (UINT64_C(1000) * AF_NS_PER_SEC)
#define T0_WALL INT64_C(1700000000000000000)

typedef struct {
  af_manual_clock_t *mc;
  af_client_t *c;
} fixture_t;

static int setup_with(void **state, size_t meter_capacity)
{
  fixture_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  assert_int_equal(af_manual_clock_create(&f->mc, T0_MONO, T0_WALL), AF_OK);
  af_client_config_t cfg;
  af_client_config_init(&cfg);
  cfg.addr = "127.0.0.1:1"; /* nothing listens: no network in these tests */
  cfg.background = false;
  cfg.follow_chaos = false;
  cfg.clock = af_manual_clock_clock(f->mc);
  cfg.deadline_ms = 200;
  cfg.meter_capacity = meter_capacity;
  cfg.meter_batch = meter_capacity < 100 ? meter_capacity : 100;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(af_client_create(&f->c, &cfg, &err), AF_OK);
  *state = f;
  return 0;
}

static int setup(void **state) { return setup_with(state, 1000); }
static int setup_small_queue(void **state) { return setup_with(state, 4); }

static int teardown(void **state)
{
  fixture_t *f = *state;
  af_client_destroy(f->c);
  af_manual_clock_destroy(f->mc);
  free(f);
  return 0;
}

static af_guard_t *guard(fixture_t *f, const char *name, uint32_t fail_max,
                         const char *target)
{
  af_guard_config_t gc;
  af_guard_config_init(&gc);
  gc.fail_max = fail_max;
  gc.reset_timeout_ms = 30000;
  gc.target = target;
  af_guard_t *g = NULL;
  af_error_t err;
  assert_int_equal(af_guard_get(f->c, name, &gc, &g, &err), AF_OK);
  return g;
}

/* ---- guard ------------------------------------------------------------- */

static void guard_passes_and_opens_after_fail_max_failures(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "payments", 3, NULL);
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
  af_guard_success(g);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
    af_guard_failure(g, "timeout");
  }
  assert_int_equal(af_guard_state(g), AF_BREAKER_OPEN);
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
}

static void
guard_half_opens_after_reset_timeout_and_closes_on_success(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "payments", 1, NULL);
  af_guard_failure(g, NULL);
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
  af_manual_clock_advance_ms(f->mc, 29999);
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
  af_manual_clock_advance_ms(f->mc, 1);
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS); /* the trial */
  assert_int_equal(af_guard_state(g), AF_BREAKER_HALF_OPEN);
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED); /* 1 trial max */
  af_guard_success(g);
  assert_int_equal(af_guard_state(g), AF_BREAKER_CLOSED);
}

static void guard_get_is_idempotent_and_refuses_bad_names(void **state)
{
  fixture_t *f = *state;
  af_guard_t *a = guard(f, "db", 5, NULL);
  af_guard_t *b = guard(f, "db", 9, NULL);
  assert_ptr_equal(a, b);
  assert_string_equal(af_guard_name(a), "db");
  af_guard_t *g = NULL;
  af_error_t err;
  assert_int_equal(af_guard_get(f->c, "", NULL, &g, &err), AF_EINVAL);
  assert_int_equal(af_guard_get(f->c, "bad\nname", NULL, &g, &err), AF_EINVAL);
  assert_null(g);
}

static void
guard_keeps_working_and_report_round_fails_while_server_is_down(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "payments", 2, NULL);
  af_guard_failure(g, NULL);
  af_guard_failure(g, NULL);
  af__report_round(f->c); /* 127.0.0.1:1: refused */
  af_client_guard_stats_t st;
  af_client_guard_stats(f->c, &st);
  assert_int_equal(st.reports_sent, 0);
  assert_int_equal(st.reports_failed, 1);
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
  /* The failed round asks for everything to be re-reported. */
  assert_true(atomic_load(&f->c->resync_all));
}

/* ---- chaos application --------------------------------------------------- */

static antifragility_v1_ChaosScenario scenario(antifragility_v1_ChaosKind kind,
                                               const char *target,
                                               int64_t expires_in_s)
{
  antifragility_v1_ChaosScenario s;
  memset(&s, 0, sizeof s);
  snprintf(s.name, sizeof s.name, "sc_%s_%d", target, (int)kind);
  s.kind = kind;
  snprintf(s.target, sizeof s.target, "%s", target);
  s.active = true;
  s.has_expires_at = true;
  int64_t exp = T0_WALL + expires_in_s * (int64_t)AF_NS_PER_SEC;
  s.expires_at.seconds = exp / (int64_t)AF_NS_PER_SEC;
  s.expires_at.nanos = (int32_t)(exp % (int64_t)AF_NS_PER_SEC);
  s.blast_radius_count = 1;
  snprintf(s.blast_radius[0], sizeof s.blast_radius[0], "%s", target);
  return s;
}

static void nothing_active_means_no_chaos_check_at_all(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "pay", 5, NULL);
  assert_false(atomic_load(&f->c->chaos_present));
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
  af__chaos_apply(f->c, NULL, 0);
  assert_false(atomic_load(&f->c->chaos_present));
}

static void error_scenario_fails_calls_and_counts_them_as_failures(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "pay", 3, NULL);
  antifragility_v1_ChaosScenario s =
      scenario(antifragility_v1_ChaosKind_CHAOS_KIND_ERROR, "pay", 10);
  s.error_rate = 1.0;
  af__chaos_apply(f->c, &s, 1);
  assert_true(atomic_load(&f->c->chaos_present));
  for (int i = 0; i < 3; i++) {
    assert_int_equal(af_guard_allow(g), AF_GUARD_CHAOS_ERROR);
  }
  /* Injected errors open the breaker like real ones. */
  assert_int_equal(af_guard_state(g), AF_BREAKER_OPEN);
  assert_int_equal(af_guard_allow(g), AF_GUARD_REJECTED);
}

static void scenario_applies_only_inside_its_blast_radius(void **state)
{
  fixture_t *f = *state;
  af_guard_t *pay = guard(f, "pay", 100, NULL);
  af_guard_t *other = guard(f, "other", 100, NULL);
  af_guard_t *alias = guard(f, "pay-client", 100, "pay");
  antifragility_v1_ChaosScenario s =
      scenario(antifragility_v1_ChaosKind_CHAOS_KIND_ERROR, "pay", 10);
  s.error_rate = 1.0;
  af__chaos_apply(f->c, &s, 1);
  assert_int_equal(af_guard_allow(pay), AF_GUARD_CHAOS_ERROR);
  assert_int_equal(af_guard_allow(alias), AF_GUARD_CHAOS_ERROR);
  assert_int_equal(af_guard_allow(other), AF_GUARD_PASS);
  af_guard_success(other);
  /* Widen the blast radius: now "other" is hit too. */
  s.blast_radius_count = 2;
  snprintf(s.blast_radius[1], sizeof s.blast_radius[1], "other");
  af__chaos_apply(f->c, &s, 1);
  assert_int_equal(af_guard_allow(other), AF_GUARD_CHAOS_ERROR);
}

static void guard_created_after_the_scenario_is_covered_too(void **state)
{
  fixture_t *f = *state;
  antifragility_v1_ChaosScenario s =
      scenario(antifragility_v1_ChaosKind_CHAOS_KIND_ERROR, "late", 10);
  s.error_rate = 1.0;
  af__chaos_apply(f->c, &s, 1);
  af_guard_t *g = guard(f, "late", 100, NULL);
  af_guard_t *h = guard(f, "early-bird", 100, NULL);
  assert_true(atomic_load(&g->chaos_hit));
  assert_false(atomic_load(&h->chaos_hit));
  assert_int_equal(af_guard_allow(g), AF_GUARD_CHAOS_ERROR);
  assert_int_equal(af_guard_allow(h), AF_GUARD_PASS);
  af__chaos_apply(f->c, NULL, 0);
  assert_false(atomic_load(&g->chaos_hit));
}

static void
scenario_stops_applying_when_it_expires_on_the_client_clock(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "pay", 100, NULL);
  antifragility_v1_ChaosScenario s =
      scenario(antifragility_v1_ChaosKind_CHAOS_KIND_ERROR, "pay", 5);
  s.error_rate = 1.0;
  af__chaos_apply(f->c, &s, 1);
  assert_int_equal(af_guard_allow(g), AF_GUARD_CHAOS_ERROR);
  af_manual_clock_advance_ms(f->mc, 4999);
  assert_int_equal(af_guard_allow(g), AF_GUARD_CHAOS_ERROR);
  af_manual_clock_advance_ms(f->mc, 2);
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
}

static void expired_and_circuit_breaker_scenarios_are_not_mirrored(void **state)
{
  fixture_t *f = *state;
  antifragility_v1_ChaosScenario s[2];
  s[0] = scenario(antifragility_v1_ChaosKind_CHAOS_KIND_ERROR, "pay", -1);
  s[0].error_rate = 1.0;
  s[1] = scenario(antifragility_v1_ChaosKind_CHAOS_KIND_CIRCUIT_BREAKER, "pay",
                  10);
  af__chaos_apply(f->c, s, 2);
  assert_false(atomic_load(&f->c->chaos_present));
  af_guard_t *g = guard(f, "pay", 100, NULL);
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
}

static void exhaustion_at_level_one_refuses_every_call(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "pay", 100, NULL);
  antifragility_v1_ChaosScenario s = scenario(
      antifragility_v1_ChaosKind_CHAOS_KIND_RESOURCE_EXHAUSTION, "pay", 10);
  s.resource_type = antifragility_v1_ResourceType_RESOURCE_TYPE_CPU;
  s.resource_level = 1.0;
  af__chaos_apply(f->c, &s, 1);
  for (int i = 0; i < 10; i++) {
    assert_int_equal(af_guard_allow(g), AF_GUARD_CHAOS_EXHAUSTED);
  }
  /* A new snapshot without it lifts it at once. */
  af__chaos_apply(f->c, NULL, 0);
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
}

static uint64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * AF_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static void latency_scenario_delays_allow_by_its_delay(void **state)
{
  fixture_t *f = *state;
  af_guard_t *g = guard(f, "pay", 100, NULL);
  antifragility_v1_ChaosScenario s =
      scenario(antifragility_v1_ChaosKind_CHAOS_KIND_LATENCY, "pay", 10);
  s.has_delay = true;
  s.delay.nanos = 5 * 1000000;
  af__chaos_apply(f->c, &s, 1);
  uint64_t t0 = now_ns();
  assert_int_equal(af_guard_allow(g), AF_GUARD_PASS);
  assert_true(now_ns() - t0 >= 5 * AF_NS_PER_MS);
}

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

static void backoff_doubles_up_to_the_cap_with_jitter(void **state)
{
  (void)state;
  atomic_ulong rng;
  atomic_init(&rng, 12345UL);
  uint64_t cur = 100;
  uint64_t expect_cur[] = {200, 400, 800, 1000, 1000};
  uint64_t base[] = {100, 200, 400, 800, 1000};
  for (int i = 0; i < 5; i++) {
    uint64_t d = af__backoff_next(&cur, 1000, &rng);
    assert_true(d >= base[i] / 2 && d <= base[i]);
    assert_int_equal(cur, expect_cur[i]);
  }
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(
          guard_passes_and_opens_after_fail_max_failures, setup, teardown),
      cmocka_unit_test_setup_teardown(
          guard_half_opens_after_reset_timeout_and_closes_on_success, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          guard_get_is_idempotent_and_refuses_bad_names, setup, teardown),
      cmocka_unit_test_setup_teardown(
          guard_keeps_working_and_report_round_fails_while_server_is_down,
          setup, teardown),
      cmocka_unit_test_setup_teardown(
          nothing_active_means_no_chaos_check_at_all, setup, teardown),
      cmocka_unit_test_setup_teardown(
          error_scenario_fails_calls_and_counts_them_as_failures, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          scenario_applies_only_inside_its_blast_radius, setup, teardown),
      cmocka_unit_test_setup_teardown(
          guard_created_after_the_scenario_is_covered_too, setup, teardown),
      cmocka_unit_test_setup_teardown(
          scenario_stops_applying_when_it_expires_on_the_client_clock, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          expired_and_circuit_breaker_scenarios_are_not_mirrored, setup,
          teardown),
      cmocka_unit_test_setup_teardown(
          exhaustion_at_level_one_refuses_every_call, setup, teardown),
      cmocka_unit_test_setup_teardown(
          latency_scenario_delays_allow_by_its_delay, setup, teardown),
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
      cmocka_unit_test(backoff_doubles_up_to_the_cap_with_jitter),
  };
  return cmocka_run_group_tests_name("client_local", tests, NULL, NULL);
}
