/*
 * convert.h - the one place core values become wire values and back.
 *
 * Thread-safety: pure functions; thread-safe.
 *
 * Timestamps: protobuf-c messages hold sub-messages by pointer, so the
 * caller provides the Timestamp / Duration storage (usually on the stack or
 * in the response struct it builds) and gets it back initialised; a zero
 * wall time ("never") gives NULL, i.e. the field stays unset.
 */
#ifndef AF_CONVERT_H
#define AF_CONVERT_H

#include <stdbool.h>
#include <stdint.h>

#include "af/breaker.h"
#include "af/health.h"
#include "af/status.h"
#include "antifragility/v1/common.pb-c.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Fills *ts with wall_ns (ns since the Unix epoch) and returns ts; returns
 * NULL (leaving *ts untouched) when wall_ns == 0. */
Google__Protobuf__Timestamp *af_ts_from_ns(Google__Protobuf__Timestamp *ts,
                                           int64_t wall_ns);
/* ns since the epoch; 0 for NULL. */
int64_t af_ts_to_ns(const Google__Protobuf__Timestamp *ts);

/* Fills *d with ms and returns d. */
Google__Protobuf__Duration *af_duration_from_ms(Google__Protobuf__Duration *d,
                                                uint64_t ms);
/* Converts a Duration to ms. NULL -> *ms = dflt. Negative, nanos outside
 * [0, 1e9) or larger than max_ms -> AF_EINVAL with err "<field> must be
 * between 0 and <max_ms> ms" (field names the request field). */
af_status_t af_duration_to_ms(const Google__Protobuf__Duration *d,
                              uint64_t dflt, uint64_t max_ms, const char *field,
                              uint64_t *ms, af_error_t *err);

Antifragility__V1__BreakerState af_breaker_state_to_pb(af_breaker_state_t s);
/* false for UNSPECIFIED and unknown values. */
bool af_breaker_state_from_pb(Antifragility__V1__BreakerState s,
                              af_breaker_state_t *out);
Antifragility__V1__HealthStatus af_health_status_to_pb(af_health_status_t s);

/* s, or "" for NULL (protobuf-c leaves unset strings NULL in some
 * messages). */
static inline const char *af_str_or_empty(const char *s)
{
  return s != NULL ? s : "";
}

/* True if the name is acceptable for a breaker / service / target / tenant
 * (af_name_valid); otherwise sets err to "<field> must be 1-128 bytes of
 * printable UTF-8" and returns false. */
bool af_check_name(const char *name, const char *field, af_error_t *err);

#ifdef __cplusplus
}
#endif
#endif /* AF_CONVERT_H */
