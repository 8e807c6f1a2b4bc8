/*
 * client_fixture.h - what the libafclient unit suites share: a client
 * without background threads on a manual clock, pointing at a closed port
 * (no network), and a guard helper. Header-only (static functions).
 */
#ifndef AF_CLIENT_FIXTURE_H
#define AF_CLIENT_FIXTURE_H

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

static inline int setup_with(void **state, size_t meter_capacity)
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

static inline int setup(void **state) { return setup_with(state, 1000); }
static inline int setup_small_queue(void **state)
{
  return setup_with(state, 4);
}

static inline int teardown(void **state)
{
  fixture_t *f = *state;
  af_client_destroy(f->c);
  af_manual_clock_destroy(f->mc);
  free(f);
  return 0;
}

static inline af_guard_t *guard(fixture_t *f, const char *name,
                                uint32_t fail_max, const char *target)
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

#endif /* AF_CLIENT_FIXTURE_H */
