/*
 * test_guard.c - unit tests of client/src/guard.c: the local breaker of a
 * guard on a manual clock (nothing sleeps), and a report round while the
 * server is unreachable. Also the shared backoff helper (client.c).
 */
#include "client_fixture.h"

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
      cmocka_unit_test(backoff_doubles_up_to_the_cap_with_jitter),
  };
  return cmocka_run_group_tests_name("guard", tests, NULL, NULL);
}
