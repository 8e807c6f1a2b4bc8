/*
 * afd.h - the whole daemon in-process: server + app + threads. Used by
 * main.c and by integration tests (start on 127.0.0.1:0, stop, check
 * leaks).
 *
 * Thread-safety: single-owner. af_afd_stop may be called from any one
 * thread, once. af_afd_request_stop is async-signal-safe.
 */
#ifndef AF_AFD_H
#define AF_AFD_H

#include "af/engine.h"
#include "config.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_afd af_afd_t;

/* Creates the server and the app (which registers its services), health
 * and reflection, binds cfg->listen, starts the CQ threads and the app,
 * and logs "afd listening on HOST:PORT". cfg borrowed. *port (may be NULL)
 * gets the bound port. On failure returns the error (err says why:
 * AF_EIO for a port in use) and *out is untouched, nothing leaks. */
af_status_t af_afd_start(const af_config_t *cfg, af_afd_t **out, int *port,
                         af_error_t *err);

/* The server (e.g. to read stats in tests). Owned by afd. */
af_server_t *af_afd_server(af_afd_t *afd);

/* The app's engine (e.g. for integration tests that cause real breaker
 * transitions without going through RPCs). Owned by afd, valid until
 * af_afd_stop. NULL for NULL. */
af_engine_t *af_afd_engine(af_afd_t *afd);

/* Graceful stop in order: begin server shutdown (health NOT_SERVING,
 * streams end OK, stop accepting), app shutdown (flush metering), server
 * shutdown (grace, cancel, drain, join), destroy app and server. NULL is
 * a no-op. */
void af_afd_stop(af_afd_t *afd);

/* Blocks the calling thread until af_afd_request_stop is called (or a
 * signal handler calls it). Returns the number of stop requests seen. */
int af_afd_wait(af_afd_t *afd);

/* Async-signal-safe: asks af_afd_wait to return. */
void af_afd_request_stop(af_afd_t *afd);

#ifdef __cplusplus
}
#endif
#endif /* AF_AFD_H */
