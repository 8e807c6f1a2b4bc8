/*
 * af/types.h - small types shared by several af_core modules.
 *
 * Thread-safety: plain data and pure functions; thread-safe.
 */
#ifndef AF_TYPES_H
#define AF_TYPES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Longest breaker / service / target / tenant name, without the NUL. Names
 * are non-empty UTF-8 without NUL or control characters. */
#define AF_NAME_MAX 128

/* The constitutional hash every report, result and scenario carries. */
#define AF_CONSTITUTIONAL_HASH_DEFAULT "cdd01ef066bc6cf2"
#define AF_HASH_MAX 64

/* Circuit-breaker states. The first three are pybreaker's; the forced ones
 * are set by an operator or by chaos and stay until lifted. */
typedef enum {
  AF_BREAKER_CLOSED = 0,
  AF_BREAKER_OPEN = 1,
  AF_BREAKER_HALF_OPEN = 2,
  AF_BREAKER_FORCED_OPEN = 3, /* rejects every call, counted as open */
  AF_BREAKER_DISABLED = 4,    /* admits every call, counted as closed */
} af_breaker_state_t;

#define AF_BREAKER_STATE_COUNT 5

/* "CLOSED", "OPEN", "HALF_OPEN", "FORCED_OPEN", "DISABLED"; "UNKNOWN" for
 * values outside the enum. */
const char *af_breaker_state_name(af_breaker_state_t s);

/* Checks a name: 1..AF_NAME_MAX bytes, valid UTF-8, no control characters.
 * Returns true if acceptable. NULL is not acceptable. */
bool af_name_valid(const char *name);

#ifdef __cplusplus
}
#endif
#endif /* AF_TYPES_H */
