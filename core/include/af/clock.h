/*
 * af/clock.h - the injected clock.
 *
 * Thread-safety: af_clock_system() clock is thread-safe. A manual clock is
 * thread-safe too (atomics): tests advance it from one thread while engine
 * threads read it.
 *
 * Every af_core module takes a `const af_clock_t *` in its config (NULL means
 * the system clock) and never calls clock_gettime itself, so tests drive time
 * by hand and never sleep. Two readings:
 *   - monotonic nanoseconds: for timeouts, delays, expiry, ordering;
 *   - wall-clock nanoseconds since the Unix epoch: for timestamps shown to
 *     people and put on the wire.
 */
#ifndef AF_CLOCK_H
#define AF_CLOCK_H

#include <stdint.h>

#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_clock {
  uint64_t (*mono_ns)(void *ctx);
  int64_t (*wall_ns)(void *ctx);
  void *ctx;
} af_clock_t;

#define AF_NS_PER_MS UINT64_C(1000000)
#define AF_NS_PER_SEC UINT64_C(1000000000)

/* The process's CLOCK_MONOTONIC / CLOCK_REALTIME clock. Static storage,
 * never NULL. */
const af_clock_t *af_clock_system(void);

/* Readings. clock may be NULL: the system clock is used. */
uint64_t af_clock_mono_ns(const af_clock_t *clock);
int64_t af_clock_wall_ns(const af_clock_t *clock);

/* A clock that only moves when told to. */
typedef struct af_manual_clock af_manual_clock_t;

/* Returns owned (free with af_manual_clock_destroy). Starts at the given
 * readings. On failure *out is untouched. */
af_status_t af_manual_clock_create(af_manual_clock_t **out, uint64_t mono_ns,
                                   int64_t wall_ns);
void af_manual_clock_destroy(af_manual_clock_t *mc);
/* The af_clock_t view of it; valid until af_manual_clock_destroy. */
const af_clock_t *af_manual_clock_clock(af_manual_clock_t *mc);
/* Moves both readings forward by ns. */
void af_manual_clock_advance_ns(af_manual_clock_t *mc, uint64_t ns);
void af_manual_clock_advance_ms(af_manual_clock_t *mc, uint64_t ms);

#ifdef __cplusplus
}
#endif
#endif /* AF_CLOCK_H */
