/*
 * types.c - helpers for the shared types: state names and name validation.
 */
#include "af/types.h"

#include <stddef.h>

const char *af_breaker_state_name(af_breaker_state_t s)
{
  switch (s) {
  case AF_BREAKER_CLOSED:
    return "CLOSED";
  case AF_BREAKER_OPEN:
    return "OPEN";
  case AF_BREAKER_HALF_OPEN:
    return "HALF_OPEN";
  case AF_BREAKER_FORCED_OPEN:
    return "FORCED_OPEN";
  case AF_BREAKER_DISABLED:
    return "DISABLED";
  }
  return "UNKNOWN";
}

/* Validates UTF-8 (no overlongs, no surrogates, <= U+10FFFF) and rejects
 * control characters: C0, DEL and C1 (U+0080..U+009F). */
bool af_name_valid(const char *name)
{
  if (name == NULL || name[0] == '\0')
    return false;
  const unsigned char *p = (const unsigned char *)name;
  size_t len = 0;
  while (p[len] != '\0') {
    unsigned char c = p[len];
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f)
        return false;
      len++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 2;
      cp = c & 0x1fu;
    } else if ((c & 0xf0) == 0xe0) {
      n = 3;
      cp = c & 0x0fu;
    } else if ((c & 0xf8) == 0xf0) {
      n = 4;
      cp = c & 0x07u;
    } else {
      return false;
    }
    for (size_t i = 1; i < n; i++) {
      unsigned char cc = p[len + i];
      if ((cc & 0xc0) != 0x80)
        return false;
      cp = (cp << 6) | (cc & 0x3fu);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
        (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff) || (cp >= 0x80 && cp <= 0x9f))
      return false;
    len += n;
  }
  return len <= AF_NAME_MAX;
}
