/*
 * status.c - names and messages of af_status_t, and af_error_t helpers.
 * Stateless; thread-safe.
 */
#include "af/status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *af_status_name(af_status_t s)
{
  switch (s) {
#define AF__STATUS_NAME(name, value, msg)                                      \
  case AF_##name:                                                              \
    return "AF_" #name;
    AF_STATUS_MAP(AF__STATUS_NAME)
#undef AF__STATUS_NAME
  }
  return "AF_UNKNOWN";
}

const char *af_status_str(af_status_t s)
{
  switch (s) {
#define AF__STATUS_STR(name, value, msg)                                       \
  case AF_##name:                                                              \
    return msg;
    AF_STATUS_MAP(AF__STATUS_STR)
#undef AF__STATUS_STR
  }
  return "unknown status";
}

af_status_t af_error_set(af_error_t *err, af_status_t code, const char *fmt,
                         ...)
{
  if (err == NULL)
    return code;
  err->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->message, sizeof(err->message), fmt, ap);
  va_end(ap);
  return code;
}

void af_error_clear(af_error_t *err)
{
  if (err == NULL)
    return;
  err->code = AF_OK;
  err->message[0] = '\0';
}
