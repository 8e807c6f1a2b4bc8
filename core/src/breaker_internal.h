/*
 * breaker_internal.h - test hooks of core/src/breaker.c (not public API).
 *
 * Thread-safety: both functions are thread-safe (they take the heap lock).
 */
#ifndef AF_BREAKER_INTERNAL_H
#define AF_BREAKER_INTERNAL_H

#include <stddef.h>

#include "af/breaker.h"

/* How many heap entries the last af_breaker_registry_tick popped. */
size_t af__breaker_registry_last_tick_visited(af_breaker_registry_t *reg);

/* How many OPEN breakers are waiting in the deadline heap. */
size_t af__breaker_registry_heap_size(af_breaker_registry_t *reg);

#endif /* AF_BREAKER_INTERNAL_H */
