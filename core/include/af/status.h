/*
 * af/status.h - one error space for the whole engine.
 *
 * Thread-safety: every function here is thread-safe (pure, or writes only to
 * caller-owned memory).
 *
 * Every fallible function in af_core returns af_status_t: AF_OK (0) on
 * success, a negative AF_E* code on failure. Codes are never renumbered: the
 * server maps them to gRPC status codes in exactly one place.
 *
 * Functions that validate user input additionally take an optional
 * af_error_t *err (may be NULL) that receives a human-readable message, e.g.
 * "max_retry_attempts must be >= 1". The message is what an operator sees.
 */
#ifndef AF_STATUS_H
#define AF_STATUS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(NAME, value, default message) */
#define AF_STATUS_MAP(X)                                                       \
  X(OK, 0, "ok")                                                               \
  X(EINVAL, -1, "invalid argument")                                            \
  X(ENOMEM, -2, "out of memory")                                               \
  X(ENOTFOUND, -3, "not found")                                                \
  X(EEXIST, -4, "already exists")                                              \
  X(EFULL, -5, "queue is full")                                                \
  X(ESTOPPED, -6, "emergency stop is active")                                  \
  X(EHASH, -7, "constitutional hash mismatch")                                 \
  X(ESTATE, -8, "operation not allowed in the current state")                  \
  X(EPROTECTED, -9, "target is protected")                                     \
  X(EBLAST, -10, "target is outside the blast radius")                         \
  X(ELIMIT, -11, "limit reached")                                              \
  X(ESHUTDOWN, -12, "shutting down")                                           \
  X(EBUDGET, -13, "retry budget exhausted")                                    \
  X(EOPEN, -14, "circuit breaker is open")                                     \
  X(EIO, -15, "i/o error")                                                     \
  X(EINTERNAL, -16, "internal error")

typedef enum {
#define AF__STATUS_ENUM(name, value, msg) AF_##name = (value),
  AF_STATUS_MAP(AF__STATUS_ENUM)
#undef AF__STATUS_ENUM
} af_status_t;

/* Name of the code, e.g. "AF_EINVAL". Never NULL ("AF_UNKNOWN" for values
 * outside the map). Cannot fail. */
const char *af_status_name(af_status_t s);

/* Default message of the code, e.g. "invalid argument". Never NULL. */
const char *af_status_str(af_status_t s);

/* Room for one precise message. Caller-owned, usually on the stack. */
#define AF_ERROR_MESSAGE_MAX 256
typedef struct {
  af_status_t code;
  char message[AF_ERROR_MESSAGE_MAX];
} af_error_t;

/* Sets err->code and a printf-formatted message (truncated to fit) and
 * returns code, so validators can `return af_error_set(err, AF_EINVAL, ...)`.
 * err may be NULL: then only code is returned. */
af_status_t af_error_set(af_error_t *err, af_status_t code, const char *fmt,
                         ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* Resets err to AF_OK with an empty message. err may be NULL. */
void af_error_clear(af_error_t *err);

#ifdef __cplusplus
}
#endif
#endif /* AF_STATUS_H */
