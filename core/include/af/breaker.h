/*
 * af/breaker.h - circuit breakers and the registry that owns them.
 *
 * Thread-safety: every function here is thread-safe. A registry and the
 * breakers in it may be used from any number of threads at once. The hot
 * path (af_breaker_allow / _record_success / _record_failure in CLOSED) is
 * lock-free: a few atomic operations. A mutex per breaker is taken only for
 * transitions, HALF_OPEN admission and bookkeeping (instances, config).
 *
 * Callbacks: listeners run with no registry or breaker lock held, on the
 * thread that caused the event (the caller of allow/record/report/force/
 * get_or_create/..., or the thread calling af_breaker_registry_tick). Events
 * of one breaker are delivered one at a time in seq order: if two threads
 * cause events on the same breaker at once, the thread already delivering
 * for that breaker delivers the other's event too. A listener may call any
 * function of this header (including ones that cause new events: they are
 * delivered after it returns, never recursively).
 *
 * Semantics (pybreaker): CLOSED counts consecutive failures; fail_max of
 * them open the breaker. After reset_timeout_ms an OPEN breaker moves to
 * HALF_OPEN by itself (af_breaker_registry_tick, or lazily on allow).
 * HALF_OPEN admits at most half_open_max_calls trial calls at a time;
 * success_threshold successes close it, one failure reopens it. Error types
 * listed in excluded_errors count as successes. FORCED_OPEN rejects and
 * DISABLED admits every call until af_breaker_unforce.
 *
 * Lifetime:
 *  1. The registry owns one reference to each registered breaker. Handles
 *     returned by get_or_create / find are owned by the caller: release
 *     them with af_breaker_release.
 *  2. A handle stays valid after af_breaker_registry_unregister and after
 *     af_breaker_registry_destroy until it is released; such a breaker keeps
 *     working but is in no registry and emits no events.
 *  3. The clock given in the registry config is borrowed: it must outlive the
 *     registry and every breaker handle.
 */
#ifndef AF_BREAKER_H
#define AF_BREAKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/clock.h"
#include "af/status.h"
#include "af/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_breaker_registry af_breaker_registry_t;
typedef struct af_breaker af_breaker_t; /* refcounted handle */

#define AF_BREAKER_DESCRIPTION_MAX 256
#define AF_BREAKER_EXCLUDED_MAX 16
#define AF_BREAKER_INSTANCES_MAX 16
#define AF_BREAKER_LISTENERS_MAX 8
/* Longest reason kept in an event, without the NUL (longer ones are cut). */
#define AF_BREAKER_REASON_MAX 127

/* ---- breaker configuration ------------------------------------------- */

typedef struct {
  uint32_t fail_max;            /* default 5, >= 1 */
  uint64_t reset_timeout_ms;    /* default 30000, >= 1 */
  uint32_t half_open_max_calls; /* default 1, >= 1: trial calls at a time */
  uint32_t success_threshold;   /* default 1, >= 1 */
  double weight;                /* default 1.0, finite and > 0 (health) */
  char description[AF_BREAKER_DESCRIPTION_MAX + 1]; /* default "" */
  /* Error types that count as success (pybreaker exclude). Each one
   * 1..AF_NAME_MAX bytes of printable UTF-8. */
  char excluded_errors[AF_BREAKER_EXCLUDED_MAX][AF_NAME_MAX + 1];
  size_t excluded_count; /* default 0, <= AF_BREAKER_EXCLUDED_MAX */
  /* Service the breaker protects; "" (default) means the breaker's name. */
  char service[AF_NAME_MAX + 1];
} af_breaker_config_t;

/* Fills *cfg with the defaults above. Cannot fail. */
void af_breaker_config_init(af_breaker_config_t *cfg);

/* Checks *cfg (borrowed). Returns AF_OK or AF_EINVAL with one of these
 * messages in *err (err may be NULL):
 *   "config is NULL", "fail_max must be >= 1", "reset_timeout must be > 0",
 *   "half_open_max_calls must be >= 1", "success_threshold must be >= 1",
 *   "weight must be > 0", "description must be at most 256 bytes",
 *   "excluded_errors must have at most 16 entries",
 *   "excluded error type must be 1-128 bytes of printable UTF-8",
 *   "service must be 1-128 bytes of printable UTF-8". */
af_status_t af_breaker_config_validate(const af_breaker_config_t *cfg,
                                       af_error_t *err);

/* ---- events ------------------------------------------------------------ */

typedef enum {
  AF_BREAKER_EVENT_REGISTERED,
  AF_BREAKER_EVENT_UNREGISTERED,
  AF_BREAKER_EVENT_TRANSITION,
  AF_BREAKER_EVENT_CONFIG_CHANGED,
  /* Counters changed by a remote report, no transition. Only emitted when
   * the registry config sets emit_report_events, and only by
   * af_breaker_report_outcome / af_breaker_report_state (never by the local
   * hot path). */
  AF_BREAKER_EVENT_REPORT
} af_breaker_event_kind_t;

typedef struct {
  af_breaker_event_kind_t kind;
  const char *name;            /* borrowed for the call */
  af_breaker_state_t from, to; /* TRANSITION; for others from == to == now */
  /* Borrowed for the call. "fail_max reached", "reset_timeout elapsed",
   * "half-open trial failed", "success_threshold reached", "reset",
   * "reported", "registered", "unregistered", "config changed", or the
   * reason given to force / unforce / set_state ("forced", "unforced",
   * "set" when NULL). */
  const char *reason;
  double weight;
  uint64_t seq; /* registry-wide event sequence, strictly increasing */
  int64_t wall_ns;
  uint64_t mono_ns;
} af_breaker_event_t;

/* ev is borrowed for the call. */
typedef void (*af_breaker_listener_fn)(const af_breaker_event_t *ev, void *ctx);

/* ---- registry ------------------------------------------------------------ */

typedef struct {
  const af_clock_t *clock; /* NULL = system; borrowed (see Lifetime) */
  size_t max_breakers;     /* default 100000, >= 1 */
  bool emit_report_events; /* default false: REPORT events are noisy */
} af_breaker_registry_config_t;

/* Fills *cfg with the defaults above. Cannot fail. */
void af_breaker_registry_config_init(af_breaker_registry_config_t *cfg);

/* Creates a registry. cfg is borrowed (NULL = defaults). On success *out
 * returns owned (free with af_breaker_registry_destroy). Returns AF_EINVAL
 * (out NULL, max_breakers 0) or AF_ENOMEM; *out is untouched on failure. */
af_status_t af_breaker_registry_create(af_breaker_registry_t **out,
                                       const af_breaker_registry_config_t *cfg);

/* Unregisters every breaker (no events), drops every listener and frees the
 * registry once no breaker handle refers to it. NULL is a no-op. Must not
 * run concurrently with other calls on reg itself (breaker handles may still
 * be used from other threads). */
void af_breaker_registry_destroy(af_breaker_registry_t *reg);

/* Adds a listener (fn and ctx retained until removed). Up to
 * AF_BREAKER_LISTENERS_MAX. Returns an id > 0, or AF_EINVAL (reg or fn
 * NULL) / AF_ELIMIT (full) as a negative int. */
int af_breaker_registry_add_listener(af_breaker_registry_t *reg,
                                     af_breaker_listener_fn fn, void *ctx);

/* Removes a listener; unknown ids are ignored. A call already in progress on
 * another thread may still complete after this returns. */
void af_breaker_registry_remove_listener(af_breaker_registry_t *reg, int id);

/* Get-or-create by name (borrowed). cfg (borrowed) NULL = defaults for a new
 * breaker; for an existing one NULL keeps its config, non-NULL replaces it
 * (CONFIG_CHANGED event if it differs). *created (if non-NULL) tells whether
 * this call created it. out may be NULL; otherwise *out returns owned (release
 * with af_breaker_release). Errors (with *err set, err may be NULL):
 *   AF_EINVAL "breaker name must be 1-128 bytes of printable UTF-8",
 *   AF_EINVAL config messages (see af_breaker_config_validate),
 *   AF_ELIMIT "too many breakers (limit N)", AF_ENOMEM.
 * On failure *out and *created are untouched. */
af_status_t af_breaker_registry_get_or_create(af_breaker_registry_t *reg,
                                              const char *name,
                                              const af_breaker_config_t *cfg,
                                              af_breaker_t **out, bool *created,
                                              af_error_t *err);

/* Looks up name (borrowed). On AF_OK *out returns owned. AF_ENOTFOUND if
 * absent, AF_EINVAL on NULL arguments. */
af_status_t af_breaker_registry_find(af_breaker_registry_t *reg,
                                     const char *name, af_breaker_t **out);

/* Removes name from the registry (UNREGISTERED event). Outstanding handles
 * stay valid until released. AF_ENOTFOUND if absent. */
af_status_t af_breaker_registry_unregister(af_breaker_registry_t *reg,
                                           const char *name);

/* Moves the breaker to CLOSED, lifting a forced state, and zeroes its
 * fail/success/rejected totals and its window (consecutive failures,
 * half-open trials). transition_count is kept. TRANSITION event (reason
 * "reset") if the state changed. AF_ENOTFOUND if absent. */
af_status_t af_breaker_registry_reset(af_breaker_registry_t *reg,
                                      const char *name);

/* af_breaker_registry_reset on every breaker; returns how many. */
size_t af_breaker_registry_reset_all(af_breaker_registry_t *reg);

/* Number of registered breakers. 0 for NULL. */
size_t af_breaker_registry_count(af_breaker_registry_t *reg);

/* ---- handles ------------------------------------------------------------- */

/* Adds / drops a reference. NULL is a no-op. */
void af_breaker_retain(af_breaker_t *b);
void af_breaker_release(af_breaker_t *b);

/* The breaker's name; valid while the caller holds a reference. */
const char *af_breaker_name(const af_breaker_t *b);

/* ---- hot path ------------------------------------------------------------ */

/* May a call go ahead? false = rejected (counted in rejected_count).
 * CLOSED / DISABLED: true. FORCED_OPEN: false. OPEN: false, unless
 * reset_timeout has elapsed: then it moves to HALF_OPEN and admits a trial.
 * HALF_OPEN: true while fewer than half_open_max_calls trials are in flight
 * (a trial ends with record_success / record_failure). false for NULL. */
bool af_breaker_allow(af_breaker_t *b);

/* Outcome of a call. Counts in every state. CLOSED: resets consecutive
 * failures. HALF_OPEN: success_threshold successes close it. NULL: no-op. */
void af_breaker_record_success(af_breaker_t *b);

/* error_type (borrowed, may be NULL): if listed in excluded_errors the call
 * counts as a success. CLOSED: fail_max consecutive failures open it.
 * HALF_OPEN: reopens it (new reset_timeout). NULL b: no-op. */
void af_breaker_record_failure(af_breaker_t *b, const char *error_type);

/* ---- remote feeds (server side) ------------------------------------------ */

/* An outcome reported by a remote instance: like record_success /
 * record_failure, plus the report time and instance_id (borrowed, may be
 * NULL; invalid ids are ignored; the AF_BREAKER_INSTANCES_MAX most recent
 * distinct ids are kept, oldest first: an id reported again moves last).
 * Returns the state after the outcome (AF_BREAKER_CLOSED for NULL b). */
af_breaker_state_t af_breaker_report_outcome(af_breaker_t *b, bool success,
                                             const char *error_type,
                                             const char *instance_id);

/* A client ran its own breaker and reports its state: adopted (TRANSITION,
 * reason "reported", if different). Records report time and instance_id.
 * AF_EINVAL for FORCED_OPEN / DISABLED / out-of-range states or NULL b;
 * AF_ESTATE if the breaker is forced here (the report is still recorded,
 * the state is kept). */
af_status_t af_breaker_report_state(af_breaker_t *b, af_breaker_state_t state,
                                    const char *instance_id);

/* ---- operator / recovery control ------------------------------------------
 */

/* Forces FORCED_OPEN or DISABLED (else AF_EINVAL) until unforce. reason
 * (borrowed, NULL = "forced") goes into the TRANSITION event. */
af_status_t af_breaker_force(af_breaker_t *b, af_breaker_state_t forced,
                             const char *reason);

/* Lifts a forced state: -> CLOSED with consecutive failures and half-open
 * trials reset. reason NULL = "unforced". AF_ESTATE if not forced. */
af_status_t af_breaker_unforce(af_breaker_t *b, const char *reason);

/* Sets CLOSED, OPEN (new reset_timeout) or HALF_OPEN (fresh trial window)
 * directly; others AF_EINVAL. Setting the current state is a no-op (no
 * event, deadline kept). AF_ESTATE while forced. reason NULL = "set". */
af_status_t af_breaker_set_state(af_breaker_t *b, af_breaker_state_t state,
                                 const char *reason);

/* Current state (one atomic load; no lazy OPEN -> HALF_OPEN move).
 * AF_BREAKER_CLOSED for NULL. */
af_breaker_state_t af_breaker_state(af_breaker_t *b);

/* ---- inspection ------------------------------------------------------------
 */

typedef struct {
  char name[AF_NAME_MAX + 1];
  af_breaker_state_t state;
  af_breaker_config_t config;
  /* totals since registration or reset (transition_count: since
   * registration) */
  uint64_t fail_count, success_count, rejected_count, transition_count;
  uint32_t consecutive_failures;
  uint32_t consecutive_successes; /* HALF_OPEN successes so far; else 0 */
  int64_t registered_wall_ns, last_transition_wall_ns, last_report_wall_ns;
  uint64_t last_report_mono_ns, opened_mono_ns; /* 0 = never */
  uint64_t next_half_open_mono_ns; /* when OPEN: when it moves; else 0 */
  char instances[AF_BREAKER_INSTANCES_MAX][AF_NAME_MAX + 1];
  size_t instance_count;
} af_breaker_info_t;

/* Consistent snapshot into *out (caller-owned). Cannot fail; NULL args
 * are a no-op. */
void af_breaker_info(af_breaker_t *b, af_breaker_info_t *out);

/* Snapshot of every registered breaker sorted by name. On AF_OK *out
 * returns owned (af_free; NULL when *n == 0). AF_EINVAL / AF_ENOMEM, with
 * *out and *n untouched, on failure. */
af_status_t af_breaker_registry_list(af_breaker_registry_t *reg,
                                     af_breaker_info_t **out, size_t *n);

/* ---- timer -------------------------------------------------------------- */

/* Moves every OPEN breaker whose reset_timeout has elapsed to HALF_OPEN
 * (events delivered on this thread after locks drop). Returns the mono ns
 * of the next deadline, or UINT64_MAX if none.
 * Deadlines live in a min-heap: with nothing due this is O(1). */
uint64_t af_breaker_registry_tick(af_breaker_registry_t *reg);

#ifdef __cplusplus
}
#endif
#endif /* AF_BREAKER_H */
