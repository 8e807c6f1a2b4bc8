/*
 * test_chaos_follow.c - unit tests of client/src/chaos_follow.c: scenarios
 * in wire form mirrored into the local engine and applied by guards (blast
 * radius, expiry on the client's manual clock, exhaustion, latency).
 */
#include "client_fixture.h"

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

int main(void)
{
  const struct CMUnitTest tests[] = {
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
  };
  return cmocka_run_group_tests_name("chaos_follow", tests, NULL, NULL);
}
