/*
 * convert.c - core values <-> wire values. Pure functions, no state.
 */
#include "convert.h"

#include <stddef.h>

#include "af/clock.h"
#include "af/types.h"

Google__Protobuf__Timestamp *af_ts_from_ns(Google__Protobuf__Timestamp *ts,
                                           int64_t wall_ns)
{
  if (wall_ns == 0) {
    return NULL;
  }
  google__protobuf__timestamp__init(ts);
  int64_t sec = wall_ns / (int64_t)AF_NS_PER_SEC;
  int64_t nsec = wall_ns % (int64_t)AF_NS_PER_SEC;
  if (nsec < 0) { /* before 1970: nanos stay non-negative */
    sec -= 1;
    nsec += (int64_t)AF_NS_PER_SEC;
  }
  ts->seconds = sec;
  ts->nanos = (int32_t)nsec;
  return ts;
}

int64_t af_ts_to_ns(const Google__Protobuf__Timestamp *ts)
{
  if (ts == NULL) {
    return 0;
  }
  return ts->seconds * (int64_t)AF_NS_PER_SEC + ts->nanos;
}

Google__Protobuf__Duration *af_duration_from_ms(Google__Protobuf__Duration *d,
                                                uint64_t ms)
{
  google__protobuf__duration__init(d);
  d->seconds = (int64_t)(ms / 1000);
  d->nanos = (int32_t)((ms % 1000) * 1000000);
  return d;
}

af_status_t af_duration_to_ms(const Google__Protobuf__Duration *d,
                              uint64_t dflt, uint64_t max_ms, const char *field,
                              uint64_t *ms, af_error_t *err)
{
  if (d == NULL) {
    *ms = dflt;
    return AF_OK;
  }
  if (d->seconds < 0 || d->nanos < 0 || d->nanos >= 1000000000 ||
      (uint64_t)d->seconds > max_ms / 1000 + 1) {
    return af_error_set(err, AF_EINVAL, "%s must be between 0 and %llu ms",
                        field, (unsigned long long)max_ms);
  }
  uint64_t v = (uint64_t)d->seconds * 1000 + (uint64_t)d->nanos / 1000000;
  if (v > max_ms) {
    return af_error_set(err, AF_EINVAL, "%s must be between 0 and %llu ms",
                        field, (unsigned long long)max_ms);
  }
  *ms = v;
  return AF_OK;
}

Antifragility__V1__BreakerState af_breaker_state_to_pb(af_breaker_state_t s)
{
  switch (s) {
  case AF_BREAKER_CLOSED:
    return ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_CLOSED;
  case AF_BREAKER_OPEN:
    return ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_OPEN;
  case AF_BREAKER_HALF_OPEN:
    return ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_HALF_OPEN;
  case AF_BREAKER_FORCED_OPEN:
    return ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_FORCED_OPEN;
  case AF_BREAKER_DISABLED:
    return ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_DISABLED;
  }
  return ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_UNSPECIFIED;
}

bool af_breaker_state_from_pb(Antifragility__V1__BreakerState s,
                              af_breaker_state_t *out)
{
  switch (s) {
  case ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_CLOSED:
    *out = AF_BREAKER_CLOSED;
    return true;
  case ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_OPEN:
    *out = AF_BREAKER_OPEN;
    return true;
  case ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_HALF_OPEN:
    *out = AF_BREAKER_HALF_OPEN;
    return true;
  case ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_FORCED_OPEN:
    *out = AF_BREAKER_FORCED_OPEN;
    return true;
  case ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_DISABLED:
    *out = AF_BREAKER_DISABLED;
    return true;
  default:
    return false;
  }
}

Antifragility__V1__HealthStatus af_health_status_to_pb(af_health_status_t s)
{
  switch (s) {
  case AF_HEALTH_UNKNOWN:
    return ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_UNKNOWN;
  case AF_HEALTH_HEALTHY:
    return ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_HEALTHY;
  case AF_HEALTH_DEGRADED:
    return ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_DEGRADED;
  case AF_HEALTH_CRITICAL:
    return ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_CRITICAL;
  }
  return ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_UNSPECIFIED;
}

bool af_check_name(const char *name, const char *field, af_error_t *err)
{
  if (af_name_valid(name)) {
    return true;
  }
  if (name == NULL || name[0] == '\0') {
    af_error_set(err, AF_EINVAL, "%s is required", field);
  } else {
    af_error_set(err, AF_EINVAL, "%s must be 1-%d bytes of printable UTF-8",
                 field, AF_NAME_MAX);
  }
  return false;
}
