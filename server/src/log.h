/*
 * log.h - one line per event on stderr:
 *   2026-12-03T21:40:00.123Z INFO  message
 *
 * Thread-safety: thread-safe. Each line is written with a single write(2)
 * so lines from different threads never interleave. af_log_set_level may
 * race with af_log harmlessly (atomic).
 */
#ifndef AF_LOG_H
#define AF_LOG_H

#include <stdarg.h>
#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  AF_LOG_ERROR = 0,
  AF_LOG_WARN = 1,
  AF_LOG_INFO = 2,
  AF_LOG_DEBUG = 3,
} af_log_level_t;

/* Lines above level are dropped. Default AF_LOG_INFO. */
void af_log_set_level(af_log_level_t level);
af_log_level_t af_log_get_level(void);

/* "error" | "warn" | "info" | "debug" -> *out, true; else false. */
bool af_log_level_parse(const char *s, af_log_level_t *out);
/* "ERROR", "WARN", "INFO", "DEBUG". */
const char *af_log_level_name(af_log_level_t level);

/* True if a line at level would be written (to skip costly arguments). */
bool af_log_enabled(af_log_level_t level);

/* Writes one line (a trailing newline is added; the message is truncated
 * at 1000 bytes). */
void af_log(af_log_level_t level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
void af_logv(af_log_level_t level, const char *fmt, va_list ap)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 0)))
#endif
    ;

#ifdef __cplusplus
}
#endif
#endif /* AF_LOG_H */
