/*
 * clock.c - system clock and the manual (test) clock.
 * The manual clock keeps both readings in atomics so that any thread may read
 * it while a test thread advances it.
 */
#define _POSIX_C_SOURCE 200809L
#include "af/clock.h"

#include <stdatomic.h>
#include <time.h>

#include "af/alloc.h"

static uint64_t system_mono_ns(void *ctx)
{
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * AF_NS_PER_SEC + (uint64_t)ts.tv_nsec;
}

static int64_t system_wall_ns(void *ctx)
{
  (void)ctx;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * (int64_t)AF_NS_PER_SEC + (int64_t)ts.tv_nsec;
}

static const af_clock_t system_clock = {system_mono_ns, system_wall_ns, NULL};

const af_clock_t *af_clock_system(void) { return &system_clock; }

uint64_t af_clock_mono_ns(const af_clock_t *clock)
{
  if (clock == NULL)
    clock = &system_clock;
  return clock->mono_ns(clock->ctx);
}

int64_t af_clock_wall_ns(const af_clock_t *clock)
{
  if (clock == NULL)
    clock = &system_clock;
  return clock->wall_ns(clock->ctx);
}

struct af_manual_clock {
  af_clock_t clock;
  _Atomic uint64_t mono;
  _Atomic int64_t wall;
};

static uint64_t manual_mono_ns(void *ctx)
{
  af_manual_clock_t *mc = ctx;
  return atomic_load(&mc->mono);
}

static int64_t manual_wall_ns(void *ctx)
{
  af_manual_clock_t *mc = ctx;
  return atomic_load(&mc->wall);
}

af_status_t af_manual_clock_create(af_manual_clock_t **out, uint64_t mono_ns,
                                   int64_t wall_ns)
{
  if (out == NULL)
    return AF_EINVAL;
  af_manual_clock_t *mc = af_calloc(1, sizeof(*mc));
  if (mc == NULL)
    return AF_ENOMEM;
  mc->clock = (af_clock_t){manual_mono_ns, manual_wall_ns, mc};
  atomic_init(&mc->mono, mono_ns);
  atomic_init(&mc->wall, wall_ns);
  *out = mc;
  return AF_OK;
}

void af_manual_clock_destroy(af_manual_clock_t *mc) { af_free(mc); }

const af_clock_t *af_manual_clock_clock(af_manual_clock_t *mc)
{
  return &mc->clock;
}

void af_manual_clock_advance_ns(af_manual_clock_t *mc, uint64_t ns)
{
  atomic_fetch_add(&mc->mono, ns);
  atomic_fetch_add(&mc->wall, (int64_t)ns);
}

void af_manual_clock_advance_ms(af_manual_clock_t *mc, uint64_t ms)
{
  af_manual_clock_advance_ns(mc, ms * AF_NS_PER_MS);
}
