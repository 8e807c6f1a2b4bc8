/*
 * log.c - stderr logging, one line per event.
 *
 * Owns nothing but the level (an atomic). Each line is formatted into a
 * stack buffer and written with one write(2), so concurrent lines never
 * interleave and no lock is needed.
 */
#include "log.h"

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

static atomic_int g_level = AF_LOG_INFO;

void af_log_set_level(af_log_level_t level)
{
  if (level < AF_LOG_ERROR)
    level = AF_LOG_ERROR;
  if (level > AF_LOG_DEBUG)
    level = AF_LOG_DEBUG;
  atomic_store(&g_level, (int)level);
}

af_log_level_t af_log_get_level(void)
{
  return (af_log_level_t)atomic_load(&g_level);
}

bool af_log_level_parse(const char *s, af_log_level_t *out)
{
  static const char *names[] = {"error", "warn", "info", "debug"};
  if (!s)
    return false;
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, names[i]) == 0) {
      if (out)
        *out = (af_log_level_t)i;
      return true;
    }
  return false;
}

const char *af_log_level_name(af_log_level_t level)
{
  switch (level) {
  case AF_LOG_ERROR:
    return "ERROR";
  case AF_LOG_WARN:
    return "WARN";
  case AF_LOG_INFO:
    return "INFO";
  case AF_LOG_DEBUG:
    return "DEBUG";
  }
  return "?";
}

bool af_log_enabled(af_log_level_t level)
{
  return (int)level <= atomic_load(&g_level);
}

void af_logv(af_log_level_t level, const char *fmt, va_list ap)
{
  if (!af_log_enabled(level))
    return;
  char line[1100];
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(
      line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %-5s ",
      tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
      tm.tm_sec, ts.tv_nsec / 1000000L, af_log_level_name(level));
  if (n < 0)
    return;
  size_t used = (size_t)n;
  int m = vsnprintf(line + used, 1001, fmt, ap);
  if (m > 0)
    used += (size_t)m > 1000 ? 1000 : (size_t)m;
  line[used++] = '\n';
  const char *p = line;
  while (used > 0) {
    ssize_t w = write(STDERR_FILENO, p, used);
    if (w <= 0)
      break;
    p += w;
    used -= (size_t)w;
  }
}

void af_log(af_log_level_t level, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  af_logv(level, fmt, ap);
  va_end(ap);
}
