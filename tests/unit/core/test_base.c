/*
 * test_base.c - unit tests for the shared base of af_core: core/src/status.c,
 * clock.c, alloc.c and types.c.
 *
 * Time is a manual clock except where the system clock itself is tested
 * (only readings are compared; nothing sleeps).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af/alloc.h"
#include "af/clock.h"
#include "af/status.h"
#include "af/types.h"

#define T0_MONO (UINT64_C(1000) * AF_NS_PER_SEC)
#define T0_WALL (INT64_C(1700000000) * (int64_t)AF_NS_PER_SEC)

/* ---- status ------------------------------------------------------------ */

typedef struct {
  af_status_t code;
  int value;
  const char *name;
  const char *msg;
} status_row_t;

static const status_row_t status_rows[] = {
#define ROW(name, value, msg) {AF_##name, value, "AF_" #name, msg},
    AF_STATUS_MAP(ROW)
#undef ROW
};
#define STATUS_ROWS (sizeof(status_rows) / sizeof(status_rows[0]))

static void every_status_has_its_name_and_message(void **state)
{
  (void)state;
  assert_int_equal(STATUS_ROWS, 17);
  for (size_t i = 0; i < STATUS_ROWS; i++) {
    const status_row_t *r = &status_rows[i];
    assert_int_equal((int)r->code, r->value);
    assert_string_equal(af_status_name(r->code), r->name);
    assert_string_equal(af_status_str(r->code), r->msg);
    assert_true(strlen(af_status_str(r->code)) > 0);
  }
}

static void ok_is_zero_and_errors_are_negative_and_distinct(void **state)
{
  (void)state;
  assert_int_equal(AF_OK, 0);
  for (size_t i = 0; i < STATUS_ROWS; i++) {
    if (status_rows[i].code != AF_OK)
      assert_true((int)status_rows[i].code < 0);
    for (size_t j = i + 1; j < STATUS_ROWS; j++) {
      assert_int_not_equal(status_rows[i].code, status_rows[j].code);
      assert_string_not_equal(status_rows[i].name, status_rows[j].name);
    }
  }
}

static void status_values_are_never_renumbered(void **state)
{
  (void)state;
  /* The server maps these numbers to gRPC codes: they are wire contract. */
  assert_int_equal(AF_EINVAL, -1);
  assert_int_equal(AF_ENOMEM, -2);
  assert_int_equal(AF_ENOTFOUND, -3);
  assert_int_equal(AF_EEXIST, -4);
  assert_int_equal(AF_EFULL, -5);
  assert_int_equal(AF_ESTOPPED, -6);
  assert_int_equal(AF_EHASH, -7);
  assert_int_equal(AF_ESTATE, -8);
  assert_int_equal(AF_EPROTECTED, -9);
  assert_int_equal(AF_EBLAST, -10);
  assert_int_equal(AF_ELIMIT, -11);
  assert_int_equal(AF_ESHUTDOWN, -12);
  assert_int_equal(AF_EBUDGET, -13);
  assert_int_equal(AF_EOPEN, -14);
  assert_int_equal(AF_EIO, -15);
  assert_int_equal(AF_EINTERNAL, -16);
  assert_string_equal(af_status_str(AF_OK), "ok");
  assert_string_equal(af_status_str(AF_EINVAL), "invalid argument");
  assert_string_equal(af_status_name(AF_EINTERNAL), "AF_EINTERNAL");
}

static void unknown_status_values_get_placeholder_name_and_message(void **state)
{
  (void)state;
  const int bad[] = {1, 42, -17, -100, 0x7fffffff, -0x7fffffff - 1};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    af_status_t s = (af_status_t)bad[i];
    assert_string_equal(af_status_name(s), "AF_UNKNOWN");
    assert_string_equal(af_status_str(s), "unknown status");
  }
}

static void error_set_formats_message_and_returns_code(void **state)
{
  (void)state;
  af_error_t err;
  af_error_clear(&err);
  assert_int_equal(err.code, AF_OK);
  assert_string_equal(err.message, "");
  assert_int_equal(af_error_set(&err, AF_EINVAL, "%s must be >= %d", "x", 1),
                   AF_EINVAL);
  assert_int_equal(err.code, AF_EINVAL);
  assert_string_equal(err.message, "x must be >= 1");
  af_error_clear(&err);
  assert_int_equal(err.code, AF_OK);
  assert_string_equal(err.message, "");
}

static void error_set_with_null_error_only_returns_code(void **state)
{
  (void)state;
  assert_int_equal(af_error_set(NULL, AF_EFULL, "queue %d", 1), AF_EFULL);
  af_error_clear(NULL); /* no crash */
}

static void error_set_truncates_long_messages_to_fit(void **state)
{
  (void)state;
  char long_msg[1000];
  memset(long_msg, 'x', sizeof(long_msg) - 1);
  long_msg[sizeof(long_msg) - 1] = '\0';
  af_error_t err;
  assert_int_equal(af_error_set(&err, AF_EINTERNAL, "%s", long_msg),
                   AF_EINTERNAL);
  assert_int_equal(strlen(err.message), AF_ERROR_MESSAGE_MAX - 1);
  assert_memory_equal(err.message, long_msg, AF_ERROR_MESSAGE_MAX - 1);
}

/* ---- clock ------------------------------------------------------------- */

static void manual_clock_starts_at_the_given_readings(void **state)
{
  (void)state;
  af_manual_clock_t *mc = NULL;
  assert_int_equal(af_manual_clock_create(&mc, T0_MONO, T0_WALL), AF_OK);
  const af_clock_t *c = af_manual_clock_clock(mc);
  assert_non_null(c);
  assert_ptr_equal(af_manual_clock_clock(mc), c); /* a stable view */
  assert_int_equal(af_clock_mono_ns(c), T0_MONO);
  assert_int_equal(af_clock_wall_ns(c), T0_WALL);
  /* readings do not move by themselves */
  assert_int_equal(af_clock_mono_ns(c), T0_MONO);
  assert_int_equal(af_clock_wall_ns(c), T0_WALL);
  af_manual_clock_destroy(mc);
}

static void manual_clock_advance_moves_monotonic_and_wall_together(void **state)
{
  (void)state;
  af_manual_clock_t *mc = NULL;
  assert_int_equal(af_manual_clock_create(&mc, T0_MONO, T0_WALL), AF_OK);
  const af_clock_t *c = af_manual_clock_clock(mc);
  af_manual_clock_advance_ns(mc, 1);
  assert_int_equal(af_clock_mono_ns(c), T0_MONO + 1);
  assert_int_equal(af_clock_wall_ns(c), T0_WALL + 1);
  af_manual_clock_advance_ms(mc, 250);
  assert_int_equal(af_clock_mono_ns(c), T0_MONO + 1 + 250 * AF_NS_PER_MS);
  assert_int_equal(af_clock_wall_ns(c),
                   T0_WALL + 1 + 250 * (int64_t)AF_NS_PER_MS);
  af_manual_clock_advance_ns(mc, 0);
  assert_int_equal(af_clock_mono_ns(c), T0_MONO + 1 + 250 * AF_NS_PER_MS);
  af_manual_clock_advance_ms(mc, 3600 * 1000);
  assert_int_equal(af_clock_mono_ns(c),
                   T0_MONO + 1 + 250 * AF_NS_PER_MS + 3600 * AF_NS_PER_SEC);
  assert_int_equal(af_clock_wall_ns(c), T0_WALL + 1 +
                                            250 * (int64_t)AF_NS_PER_MS +
                                            3600 * (int64_t)AF_NS_PER_SEC);
  af_manual_clock_destroy(mc);
}

static void manual_clock_may_start_at_zero(void **state)
{
  (void)state;
  af_manual_clock_t *mc = NULL;
  assert_int_equal(af_manual_clock_create(&mc, 0, 0), AF_OK);
  const af_clock_t *c = af_manual_clock_clock(mc);
  assert_int_equal(af_clock_mono_ns(c), 0);
  assert_int_equal(af_clock_wall_ns(c), 0);
  af_manual_clock_advance_ms(mc, 7);
  assert_int_equal(af_clock_mono_ns(c), 7 * AF_NS_PER_MS);
  assert_int_equal(af_clock_wall_ns(c), 7 * (int64_t)AF_NS_PER_MS);
  af_manual_clock_destroy(mc);
}

static void manual_clock_create_requires_out(void **state)
{
  (void)state;
  assert_int_equal(af_manual_clock_create(NULL, 0, 0), AF_EINVAL);
  af_manual_clock_destroy(NULL); /* no-op */
}

static void system_clock_is_static_and_used_for_null(void **state)
{
  (void)state;
  const af_clock_t *sys = af_clock_system();
  assert_non_null(sys);
  assert_ptr_equal(af_clock_system(), sys);
  assert_non_null(sys->mono_ns);
  assert_non_null(sys->wall_ns);
  /* NULL reads the same clocks: the readings interleave in order. */
  uint64_t a = af_clock_mono_ns(sys);
  uint64_t b = af_clock_mono_ns(NULL);
  uint64_t c = af_clock_mono_ns(sys);
  assert_true(a <= b && b <= c);
  int64_t w = af_clock_wall_ns(NULL);
  assert_true(w > 0);
}

static void system_monotonic_clock_never_goes_backwards(void **state)
{
  (void)state;
  uint64_t prev = af_clock_mono_ns(NULL);
  assert_true(prev > 0);
  for (int i = 0; i < 100000; i++) {
    uint64_t now = af_clock_mono_ns(NULL);
    assert_true(now >= prev);
    prev = now;
  }
}

static void system_wall_clock_is_nanoseconds_since_the_epoch(void **state)
{
  (void)state;
  time_t before = time(NULL);
  int64_t w = af_clock_wall_ns(af_clock_system());
  time_t after = time(NULL);
  int64_t sec = w / (int64_t)AF_NS_PER_SEC;
  /* time() truncates; allow one second either side for the truncation. */
  assert_true(sec >= (int64_t)before - 1);
  assert_true(sec <= (int64_t)after + 1);
}

/* ---- alloc ------------------------------------------------------------- */

/* A counting allocator over malloc that can be told to fail: fail_after
 * allocations succeed, then every one fails (-1: never fail). */
typedef struct {
  atomic_int mallocs;
  atomic_int reallocs;
  atomic_int frees;
  atomic_int fail_after;
  atomic_size_t last_size;
} counting_t;

static void *counting_malloc(size_t size, void *ctx)
{
  counting_t *c = ctx;
  atomic_store(&c->last_size, size);
  int budget = atomic_load(&c->fail_after);
  if (budget == 0)
    return NULL;
  if (budget > 0)
    atomic_fetch_sub(&c->fail_after, 1);
  atomic_fetch_add(&c->mallocs, 1);
  return malloc(size == 0 ? 1 : size);
}

static void *counting_realloc(void *ptr, size_t size, void *ctx)
{
  counting_t *c = ctx;
  atomic_store(&c->last_size, size);
  if (atomic_load(&c->fail_after) == 0)
    return NULL;
  atomic_fetch_add(&c->reallocs, 1);
  return realloc(ptr, size);
}

static void counting_free(void *ptr, void *ctx)
{
  counting_t *c = ctx;
  atomic_fetch_add(&c->frees, 1);
  free(ptr);
}

static void install_counting(counting_t *c, int fail_after)
{
  memset(c, 0, sizeof(*c));
  atomic_store(&c->fail_after, fail_after);
  af_allocator_t a = {counting_malloc, counting_realloc, counting_free, c};
  assert_int_equal(af_alloc_replace(&a), AF_OK);
}

static int restore_default_allocator(void **state)
{
  (void)state;
  return af_alloc_replace(NULL) == AF_OK ? 0 : -1;
}

static void installed_allocator_serves_every_af_alloc_call(void **state)
{
  (void)state;
  counting_t c;
  install_counting(&c, -1);

  char *p = af_malloc(16);
  assert_non_null(p);
  assert_int_equal(atomic_load(&c.mallocs), 1);
  assert_int_equal(atomic_load(&c.last_size), 16);

  unsigned char *z = af_calloc(8, 4);
  assert_non_null(z);
  assert_int_equal(atomic_load(&c.mallocs), 2);
  assert_int_equal(atomic_load(&c.last_size), 32);
  for (size_t i = 0; i < 32; i++)
    assert_int_equal(z[i], 0);

  memcpy(p, "0123456789abcde", 16);
  p = af_realloc(p, 64);
  assert_non_null(p);
  assert_int_equal(atomic_load(&c.reallocs), 1);
  assert_int_equal(atomic_load(&c.last_size), 64);
  assert_string_equal(p, "0123456789abcde"); /* contents kept */

  char *s = af_strdup("tenant-a");
  assert_non_null(s);
  assert_string_equal(s, "tenant-a");
  assert_int_equal(atomic_load(&c.mallocs), 3);
  assert_int_equal(atomic_load(&c.last_size), 9);

  af_free(p);
  af_free(z);
  af_free(s);
  assert_int_equal(atomic_load(&c.frees), 3);
  af_free(NULL); /* never reaches free_fn */
  assert_int_equal(atomic_load(&c.frees), 3);
}

static void
failing_allocator_makes_every_af_alloc_call_return_null(void **state)
{
  (void)state;
  counting_t c;
  install_counting(&c, 0);
  assert_null(af_malloc(16));
  assert_null(af_calloc(4, 4));
  assert_null(af_strdup("x"));
  assert_null(af_realloc(NULL, 16));
  assert_int_equal(atomic_load(&c.mallocs), 0);
  assert_int_equal(atomic_load(&c.reallocs), 0);
  assert_int_equal(atomic_load(&c.frees), 0);
}

static void calloc_overflow_returns_null_without_allocating(void **state)
{
  (void)state;
  counting_t c;
  install_counting(&c, -1);
  assert_null(af_calloc(SIZE_MAX / 2 + 1, 2));
  assert_null(af_calloc(2, SIZE_MAX / 2 + 1));
  assert_null(af_calloc(SIZE_MAX, SIZE_MAX));
  assert_int_equal(atomic_load(&c.mallocs), 0);
  /* a zero size never overflows: passed through as 0 */
  void *p = af_calloc(SIZE_MAX, 0);
  assert_int_equal(atomic_load(&c.mallocs), 1);
  assert_int_equal(atomic_load(&c.last_size), 0);
  af_free(p);
}

static void
failing_allocator_makes_manual_clock_create_fail_cleanly(void **state)
{
  (void)state;
  counting_t c;
  install_counting(&c, 0);
  af_manual_clock_t *mc = (af_manual_clock_t *)(uintptr_t)0x1;
  assert_int_equal(af_manual_clock_create(&mc, T0_MONO, T0_WALL), AF_ENOMEM);
  assert_ptr_equal(mc, (af_manual_clock_t *)(uintptr_t)0x1); /* untouched */
  atomic_store(&c.fail_after, -1);
  assert_int_equal(af_manual_clock_create(&mc, T0_MONO, T0_WALL), AF_OK);
  af_manual_clock_destroy(mc);
  assert_int_equal(atomic_load(&c.mallocs), 1);
  assert_int_equal(atomic_load(&c.frees), 1);
}

static void
replace_rejects_missing_functions_and_keeps_the_current(void **state)
{
  (void)state;
  counting_t c;
  install_counting(&c, -1);
  af_allocator_t bad[3] = {
      {NULL, counting_realloc, counting_free, &c},
      {counting_malloc, NULL, counting_free, &c},
      {counting_malloc, counting_realloc, NULL, &c},
  };
  for (size_t i = 0; i < 3; i++)
    assert_int_equal(af_alloc_replace(&bad[i]), AF_EINVAL);
  /* the counting allocator is still installed */
  void *p = af_malloc(8);
  assert_non_null(p);
  af_free(p);
  assert_int_equal(atomic_load(&c.mallocs), 1);
  assert_int_equal(atomic_load(&c.frees), 1);
}

static void replace_with_null_restores_the_c_library_allocator(void **state)
{
  (void)state;
  counting_t c;
  install_counting(&c, 0);
  assert_null(af_malloc(8));
  assert_int_equal(af_alloc_replace(NULL), AF_OK);
  void *p = af_malloc(8);
  assert_non_null(p);
  char *s = af_strdup("abc");
  assert_non_null(s);
  p = af_realloc(p, 128);
  assert_non_null(p);
  af_free(p);
  af_free(s);
  /* none of it went through the counting allocator */
  assert_int_equal(atomic_load(&c.mallocs), 0);
  assert_int_equal(atomic_load(&c.reallocs), 0);
  assert_int_equal(atomic_load(&c.frees), 0);
}

/* ---- types ------------------------------------------------------------- */

static void breaker_state_names_match_pybreaker(void **state)
{
  (void)state;
  assert_string_equal(af_breaker_state_name(AF_BREAKER_CLOSED), "CLOSED");
  assert_string_equal(af_breaker_state_name(AF_BREAKER_OPEN), "OPEN");
  assert_string_equal(af_breaker_state_name(AF_BREAKER_HALF_OPEN), "HALF_OPEN");
  assert_string_equal(af_breaker_state_name(AF_BREAKER_FORCED_OPEN),
                      "FORCED_OPEN");
  assert_string_equal(af_breaker_state_name(AF_BREAKER_DISABLED), "DISABLED");
  assert_string_equal(af_breaker_state_name((af_breaker_state_t)5), "UNKNOWN");
  assert_string_equal(af_breaker_state_name((af_breaker_state_t)-1), "UNKNOWN");
  assert_int_equal(AF_BREAKER_STATE_COUNT, 5);
}

/* n bytes of c, NUL-terminated, in buf[n + 1]. */
static char *repeat(char *buf, char c, size_t n)
{
  memset(buf, c, n);
  buf[n] = '\0';
  return buf;
}

static void name_valid_rejects_null_and_empty(void **state)
{
  (void)state;
  assert_false(af_name_valid(NULL));
  assert_false(af_name_valid(""));
  assert_true(af_name_valid("a"));
  assert_true(af_name_valid("payments-api.v2/eu_west:1"));
}

static void name_valid_accepts_128_bytes_and_rejects_129(void **state)
{
  (void)state;
  char buf[AF_NAME_MAX + 2];
  assert_int_equal(AF_NAME_MAX, 128);
  assert_true(af_name_valid(repeat(buf, 'n', 127)));
  assert_true(af_name_valid(repeat(buf, 'n', 128)));
  assert_false(af_name_valid(repeat(buf, 'n', 129)));
}

static void name_valid_counts_bytes_not_characters(void **state)
{
  (void)state;
  char buf[AF_NAME_MAX + 4];
  /* 64 x U+00E9 (2 bytes each) = 128 bytes: accepted. */
  for (size_t i = 0; i < 64; i++)
    memcpy(buf + 2 * i, "\xc3\xa9", 2);
  buf[128] = '\0';
  assert_true(af_name_valid(buf));
  /* 127 ASCII + one 2-byte character = 129 bytes: rejected. */
  repeat(buf, 'n', 127);
  memcpy(buf + 127, "\xc3\xa9", 3);
  assert_int_equal(strlen(buf), 129);
  assert_false(af_name_valid(buf));
  /* 125 ASCII + U+1F600 (4 bytes) = 129 bytes: rejected; 124 + 4 accepted. */
  repeat(buf, 'n', 125);
  memcpy(buf + 125, "\xf0\x9f\x98\x80", 5);
  assert_false(af_name_valid(buf));
  repeat(buf, 'n', 124);
  memcpy(buf + 124, "\xf0\x9f\x98\x80", 5);
  assert_int_equal(strlen(buf), 128);
  assert_true(af_name_valid(buf));
}

static void name_valid_accepts_well_formed_utf8_up_to_u10ffff(void **state)
{
  (void)state;
  const char *good[] = {
      "\xc2\xa0",         /* U+00A0, first printable 2-byte */
      "caf\xc3\xa9",      /* U+00E9 */
      "\xdf\xbf",         /* U+07FF */
      "\xe0\xa0\x80",     /* U+0800, smallest 3-byte */
      "\xe2\x82\xac",     /* U+20AC euro */
      "\xed\x9f\xbf",     /* U+D7FF, just below the surrogates */
      "\xee\x80\x80",     /* U+E000, just above them */
      "\xef\xbf\xbf",     /* U+FFFF */
      "\xf0\x90\x80\x80", /* U+10000, smallest 4-byte */
      "\xf4\x8f\xbf\xbf", /* U+10FFFF, the largest code point */
      "\xe6\x97\xa5\xe6\x9c\xac-svc",
      " ", /* space is not a control character */
      "~",
  };
  for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
    assert_true(af_name_valid(good[i]));
}

static void name_valid_rejects_malformed_utf8(void **state)
{
  (void)state;
  const char *bad[] = {
      "\x80",                 /* lone continuation byte */
      "a\xbf",                /* continuation after ASCII */
      "\xc3",                 /* truncated 2-byte at the end */
      "\xc3-",                /* truncated 2-byte before ASCII */
      "\xe2\x82",             /* truncated 3-byte */
      "\xf0\x9f\x98",         /* truncated 4-byte */
      "\xc0\xaf",             /* overlong '/' */
      "\xc1\xbf",             /* overlong U+007F */
      "\xe0\x80\xaf",         /* overlong 3-byte */
      "\xe0\x9f\xbf",         /* overlong U+07FF */
      "\xf0\x80\x80\xaf",     /* overlong 4-byte */
      "\xf0\x8f\xbf\xbf",     /* overlong U+FFFF */
      "\xed\xa0\x80",         /* U+D800, high surrogate */
      "\xed\xbf\xbf",         /* U+DFFF, low surrogate */
      "\xf4\x90\x80\x80",     /* U+110000 */
      "\xf7\xbf\xbf\xbf",     /* beyond U+10FFFF */
      "\xf8\x88\x80\x80\x80", /* 5-byte form */
      "\xfc\x84\x80\x80\x80\x80",
      "\xfe",
      "\xff",
      "ok\xff",
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
    assert_false(af_name_valid(bad[i]));
}

static void name_valid_rejects_c0_controls_and_del(void **state)
{
  (void)state;
  char buf[4] = {'a', 0, 'b', 0};
  for (int c = 0x01; c < 0x20; c++) {
    buf[1] = (char)c;
    assert_false(af_name_valid(buf));
  }
  buf[1] = 0x7f;
  assert_false(af_name_valid(buf));
  assert_false(af_name_valid("\t"));
  assert_false(af_name_valid("svc\n"));
  /* every other ASCII byte is accepted */
  for (int c = 0x20; c < 0x7f; c++) {
    buf[1] = (char)c;
    assert_true(af_name_valid(buf));
  }
}

static void name_valid_rejects_c1_controls(void **state)
{
  (void)state;
  /* U+0080..U+009F are control characters too; U+00A0 is the first
   * printable code point after them. */
  assert_false(af_name_valid("\xc2\x80"));
  assert_false(af_name_valid("a\xc2\x85z"));
  assert_false(af_name_valid("\xc2\x9f"));
  assert_true(af_name_valid("\xc2\xa0"));
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(every_status_has_its_name_and_message),
      cmocka_unit_test(ok_is_zero_and_errors_are_negative_and_distinct),
      cmocka_unit_test(status_values_are_never_renumbered),
      cmocka_unit_test(unknown_status_values_get_placeholder_name_and_message),
      cmocka_unit_test(error_set_formats_message_and_returns_code),
      cmocka_unit_test(error_set_with_null_error_only_returns_code),
      cmocka_unit_test(error_set_truncates_long_messages_to_fit),
      cmocka_unit_test(manual_clock_starts_at_the_given_readings),
      cmocka_unit_test(manual_clock_advance_moves_monotonic_and_wall_together),
      cmocka_unit_test(manual_clock_may_start_at_zero),
      cmocka_unit_test(manual_clock_create_requires_out),
      cmocka_unit_test(system_clock_is_static_and_used_for_null),
      cmocka_unit_test(system_monotonic_clock_never_goes_backwards),
      cmocka_unit_test(system_wall_clock_is_nanoseconds_since_the_epoch),
      cmocka_unit_test_teardown(installed_allocator_serves_every_af_alloc_call,
                                restore_default_allocator),
      cmocka_unit_test_teardown(
          failing_allocator_makes_every_af_alloc_call_return_null,
          restore_default_allocator),
      cmocka_unit_test_teardown(calloc_overflow_returns_null_without_allocating,
                                restore_default_allocator),
      cmocka_unit_test_teardown(
          failing_allocator_makes_manual_clock_create_fail_cleanly,
          restore_default_allocator),
      cmocka_unit_test_teardown(
          replace_rejects_missing_functions_and_keeps_the_current,
          restore_default_allocator),
      cmocka_unit_test_teardown(
          replace_with_null_restores_the_c_library_allocator,
          restore_default_allocator),
      cmocka_unit_test(breaker_state_names_match_pybreaker),
      cmocka_unit_test(name_valid_rejects_null_and_empty),
      cmocka_unit_test(name_valid_accepts_128_bytes_and_rejects_129),
      cmocka_unit_test(name_valid_counts_bytes_not_characters),
      cmocka_unit_test(name_valid_accepts_well_formed_utf8_up_to_u10ffff),
      cmocka_unit_test(name_valid_rejects_malformed_utf8),
      cmocka_unit_test(name_valid_rejects_c0_controls_and_del),
      cmocka_unit_test(name_valid_rejects_c1_controls),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
