/*
 * probe.h - real health probes for recovery attempts, and the thread pool
 * that runs them off the completion-queue threads.
 *
 * Three probes, each bounded by a timeout:
 *   TCP          connect() to host:port.
 *   HTTP         GET of http://host[:port]/path; a 2xx status is healthy.
 *   GRPC_HEALTH  grpc.health.v1.Health/Check of a service name at
 *                host:port (insecure channel); SERVING is healthy.
 * Each writes a one-line outcome ("connected to 127.0.0.1:8080",
 * "HTTP 503", "grpc health NOT_SERVING", "connect: Connection refused")
 * into msg and returns whether the target is healthy.
 *
 * Thread-safety: the af_probe_* functions are reentrant and block for up to
 * their timeout: call them from a prober thread, never from a CQ thread.
 * af_prober_submit is thread-safe and never blocks; done runs on one of the
 * prober's threads with no prober lock held. create / shutdown / destroy
 * are single-owner.
 *
 * Ownership: a job is copied by af_prober_submit. ctx is retained until
 * af_prober_destroy.
 */
#ifndef AF_PROBE_H
#define AF_PROBE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/recovery.h"
#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Checks that target suits the probe kind (NONE accepts anything): TCP and
 * GRPC_HEALTH need "host:port" (IPv6 as "[addr]:port") with a port in
 * 1..65535; HTTP needs "http://host[:port][/path]". AF_EINVAL with err
 * "probe_target must be host:port for probe TCP" or "probe_target must be
 * an http:// URL for probe HTTP". target borrowed. */
af_status_t af_probe_target_check(af_probe_kind_t kind, const char *target,
                                  af_error_t *err);

/* The probes. target / url / service borrowed; msg[cap] receives the
 * outcome (always NUL-terminated when cap > 0). timeout_ms >= 1. */
bool af_probe_tcp(const char *target, uint64_t timeout_ms, char *msg,
                  size_t cap);
bool af_probe_http(const char *url, uint64_t timeout_ms, char *msg, size_t cap);
bool af_probe_grpc_health(const char *target, const char *service,
                          uint64_t timeout_ms, char *msg, size_t cap);

/* Runs the probe that policy names (NONE: healthy, "no probe"). */
bool af_probe_run(const af_recovery_policy_t *policy, char *msg, size_t cap);

typedef struct af_prober af_prober_t;

/* One probe to run for attempt `attempt` of task `task_id`. */
typedef struct {
  uint64_t task_id;
  uint32_t attempt;
  af_recovery_policy_t policy;
} af_probe_job_t;

/* Called once per job that ran. elapsed_ms: how long the probe took. msg
 * borrowed for the call. */
typedef void (*af_probe_done_fn)(const af_probe_job_t *job, bool healthy,
                                 const char *msg, uint64_t elapsed_ms,
                                 void *ctx);

/* threads: 1..64; max_queue: jobs waiting beyond the running ones (>= 1).
 * Calls grpc_init (released by destroy). Returns owned
 * (af_prober_destroy); AF_EINVAL, AF_ENOMEM. On failure *out is untouched
 * and nothing leaks. */
af_status_t af_prober_create(af_prober_t **out, int threads, size_t max_queue,
                             af_probe_done_fn done, void *ctx);

/* Queues a job (copied). AF_EFULL when max_queue jobs wait, AF_ESHUTDOWN
 * after af_prober_shutdown began. Never blocks. */
af_status_t af_prober_submit(af_prober_t *p, const af_probe_job_t *job);

/* Stops the threads: running probes finish (each within its timeout) and
 * report; jobs still queued are dropped without done. Joins the threads.
 * Idempotent. */
void af_prober_shutdown(af_prober_t *p);

/* Shuts down if needed and frees. NULL is a no-op. */
void af_prober_destroy(af_prober_t *p);

#ifdef __cplusplus
}
#endif
#endif /* AF_PROBE_H */
