/*
 * af/engine.h - one object that owns the five core modules and wires them.
 *
 * Thread-safety: after af_engine_create returns, every function here is
 * thread-safe except the lifecycle calls (create, start, shutdown, destroy),
 * which one owner calls in that order, and af_engine_subscribe /
 * af_engine_unsubscribe, which are set-up / tear-down calls: make them
 * before af_engine_start and after af_engine_shutdown (a subscriber may
 * still be running on another thread until shutdown returns).
 *
 * What the engine wires (all in core, no I/O):
 *   - breaker registrations and transitions -> health (track / set state /
 *     weight / touch), so the health status is recomputed on every
 *     transition, not at the next snapshot;
 *   - a breaker that opens while its service has a recovery policy with a
 *     probe gets recovery scheduled automatically (auto_recovery);
 *   - recovery attempts -> breaker state (HALF_OPEN, then CLOSED or OPEN);
 *   - chaos force-open scenarios -> breaker forced state, and back;
 *   - every breaker event, health change, recovery task change and chaos
 *     event -> subscribers (the server's watch streams), in that module's
 *     order, on the thread that caused it, with no engine lock held.
 * Timers (breaker reset_timeout, health snapshots, recovery due times,
 * chaos expiry) are driven by one background thread started by
 * af_engine_start, or by hand with af_engine_run_timers (tests: set
 * run_timer_thread = false and drive a manual clock).
 */
#ifndef AF_ENGINE_H
#define AF_ENGINE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/breaker.h"
#include "af/chaos.h"
#include "af/clock.h"
#include "af/health.h"
#include "af/meter.h"
#include "af/recovery.h"
#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_engine af_engine_t;

typedef struct {
  /* Shared by every module; NULL = system clock. Retained: must outlive
   * the engine. */
  const af_clock_t *clock;
  /* The constitutional hash; default AF_CONSTITUTIONAL_HASH_DEFAULT. */
  char hash[AF_HASH_MAX + 1];
  /* Module configurations. Their clock fields are overwritten with `clock`;
   * the callbacks the engine wires (recovery set_breaker / on_task_event,
   * chaos force_breaker / on_event) are overwritten too. */
  af_breaker_registry_config_t breakers;
  af_health_config_t health;
  af_recovery_config_t recovery;
  af_chaos_config_t chaos;
  af_meter_config_t meter; /* set meter.sink to flush; NULL = drain by hand */
  /* Probe runner for recovery attempts (see af_recovery_callbacks_t
   * start_probe). NULL: probes are not run, attempts succeed at once. */
  af_status_t (*start_probe)(const af_recovery_task_t *task, void *ctx);
  void *probe_ctx;
  /* Chaos audit trail: every activation, deactivation, stop, reset, after
   * subscribers. NULL = none. */
  void (*on_chaos_audit)(const af_chaos_event_t *ev, void *ctx);
  void *audit_ctx;
  /* Schedule recovery when a breaker opens and its service has its own
   * policy with a probe. Default true. */
  bool auto_recovery;
  /* Start the timer thread in af_engine_start. Default true. */
  bool run_timer_thread;
  /* Longest the timer thread sleeps between checks, in real ms. Default
   * 100; it is also woken whenever a deadline may have moved earlier. */
  uint64_t timer_max_sleep_ms;
} af_engine_config_t;

/* Defaults for every module. Cannot fail. */
void af_engine_config_init(af_engine_config_t *cfg);

/* Creates the modules. Returns owned (af_engine_destroy). On failure *out
 * is untouched, nothing leaks, and err (may be NULL) says which setting was
 * refused, e.g. "history_size must be >= 1". cfg is borrowed. */
af_status_t af_engine_create(af_engine_t **out, const af_engine_config_t *cfg,
                             af_error_t *err);

/* Starts the timer thread (if configured) and the meter flusher (if a sink
 * is set). AF_ESTATE if already started. */
af_status_t af_engine_start(af_engine_t *e);

/* Stops the timer thread and shuts the meter down, giving the flusher up to
 * meter_deadline_ms to write what is queued. Returns the number of metering
 * events that could not be flushed. Idempotent. */
size_t af_engine_shutdown(af_engine_t *e, uint64_t meter_deadline_ms);

/* Frees everything (calls af_engine_shutdown(e, 0) if needed). NULL is a
 * no-op. */
void af_engine_destroy(af_engine_t *e);

/* The modules, owned by the engine, valid until af_engine_destroy. Use
 * their own APIs; the wiring above happens whatever the entry point. */
af_breaker_registry_t *af_engine_breakers(af_engine_t *e);
af_health_t *af_engine_health(af_engine_t *e);
af_recovery_t *af_engine_recovery(af_engine_t *e);
af_chaos_t *af_engine_chaos(af_engine_t *e);
af_meter_t *af_engine_meter(af_engine_t *e);
const af_clock_t *af_engine_clock(af_engine_t *e);
/* The configured constitutional hash, NUL-terminated, static for the
 * engine's life. */
const char *af_engine_hash(af_engine_t *e);

/* What subscribers receive. Exactly one of the pointers is set, per kind;
 * everything pointed to is borrowed for the duration of the call. */
typedef enum {
  AF_ENGINE_EV_BREAKER = 1,
  AF_ENGINE_EV_HEALTH,
  AF_ENGINE_EV_RECOVERY,
  AF_ENGINE_EV_CHAOS,
} af_engine_event_kind_t;

typedef struct {
  af_engine_event_kind_t kind;
  const af_breaker_event_t *breaker;
  const af_health_change_t *health;
  const af_recovery_task_t *task;
  const af_chaos_event_t *chaos;
} af_engine_event_t;

/* Called on the thread that caused the event (an RPC thread, the timer
 * thread, a probe thread), with no engine lock held. Must not block. */
typedef void (*af_engine_listener_fn)(const af_engine_event_t *ev, void *ctx);

#define AF_ENGINE_MAX_SUBSCRIBERS 16

/* Returns an id > 0, or AF_ELIMIT past AF_ENGINE_MAX_SUBSCRIBERS. ctx is
 * retained until af_engine_unsubscribe. */
int af_engine_subscribe(af_engine_t *e, af_engine_listener_fn fn, void *ctx);
void af_engine_unsubscribe(af_engine_t *e, int id);

/* Runs every module's due timers once, on the calling thread. Returns the
 * monotonic ns of the next deadline (UINT64_MAX if none). */
uint64_t af_engine_run_timers(af_engine_t *e);

/* Wakes the timer thread so it recomputes its deadline (after something
 * was scheduled). Cheap; no-op without a timer thread. */
void af_engine_kick(af_engine_t *e);

typedef struct {
  uint64_t timer_runs;       /* af_engine_run_timers passes */
  uint64_t auto_recoveries;  /* recoveries scheduled on breaker open */
  uint64_t events_published; /* events handed to subscribers */
  uint64_t wiring_errors;    /* a wired call that failed (e.g. chaos forced a
                                breaker that vanished) */
} af_engine_metrics_t;
void af_engine_metrics(af_engine_t *e, af_engine_metrics_t *out);

#ifdef __cplusplus
}
#endif
#endif /* AF_ENGINE_H */
