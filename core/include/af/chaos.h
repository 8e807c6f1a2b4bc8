/*
 * af/chaos.h - controlled chaos injection with safety controls.
 *
 * Thread-safety: thread-safe. Every function may be called from any thread
 * concurrently with any other, except af_chaos_destroy, which must not race
 * with anything. The hot path (af_chaos_should_inject_latency /
 * af_chaos_should_inject_error / af_chaos_resource_level) costs one atomic
 * load while no scenario is active, and a shared (read) lock plus a scan of
 * the active scenarios otherwise; it never calls out.
 *
 * Callbacks: force_breaker and on_event run on the thread that caused them
 * (the caller of af_chaos_activate, _deactivate, _emergency_stop,
 * _reset_stop, _tick, or of a query that reaped expired scenarios:
 * af_chaos_list, _get, _metrics), after every internal lock has been
 * released, so they may call back into this module. Events of concurrent
 * callers may be delivered out of order; af_chaos_event_t.seq is assigned
 * under the lock and orders them.
 *
 * Semantics follow the seed's ChaosEngine (chaos_testing.py):
 *   - error_rate and resource_level must lie in [0.0, 1.0] (NaN refused)
 *     with the seed's exact messages;
 *   - duration 0 means default_duration_ms (10 s); longer than
 *     max_duration_ms (300 s) is clamped, not refused;
 *   - delay_ms above max_delay_ms (5000) is clamped, not refused; the
 *     scenario name keeps the requested value, as the seed's does;
 *   - names: latency_<target>_<delay>ms, errors_<target>_<rate>,
 *     circuit_open_<target>, resource_<type>_<level> (rate and level printed
 *     like Python's repr(float): 0.5, 1.0, 1e-05), plus our own
 *     partition_<target> and timeout_<target>_<delay>ms, unless the
 *     request names the scenario itself (af_chaos_request_t.name);
 *   - activating a name that is already active replaces that scenario (one
 *     REPLACED event for the old one, one ACTIVATED for the new one);
 *   - a scenario affects every target in its blast radius (default
 *     {target}); the target must be inside it;
 *   - emergency stop deactivates everything and latches until
 *     af_chaos_reset_stop.
 * Beyond the seed: protected targets (never inside a blast radius),
 * NETWORK_PARTITION (every call to an affected target fails) and TIMEOUT (every
 * call is delayed by delay_ms) take effect on the hot path.
 */
#ifndef AF_CHAOS_H
#define AF_CHAOS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "af/clock.h"
#include "af/status.h"
#include "af/types.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_chaos af_chaos_t;

typedef enum {
  AF_CHAOS_LATENCY = 1,
  AF_CHAOS_ERROR,
  AF_CHAOS_CIRCUIT_BREAKER, /* force the target breaker open */
  AF_CHAOS_RESOURCE_EXHAUSTION,
  AF_CHAOS_NETWORK_PARTITION,
  AF_CHAOS_TIMEOUT,
} af_chaos_kind_t;

/* The seed's ChaosType values: "latency", "error", "circuit_breaker",
 * "resource_exhaustion", "network_partition", "timeout"; "unknown" for values
 * outside the enum. Never NULL. Cannot fail. */
const char *af_chaos_kind_name(af_chaos_kind_t k);

/* The seed's ResourceType. */
typedef enum {
  AF_RESOURCE_CPU = 1,
  AF_RESOURCE_MEMORY,
  AF_RESOURCE_CONNECTIONS,
  AF_RESOURCE_DISK_IO,
  AF_RESOURCE_NETWORK_BANDWIDTH,
} af_resource_type_t;

/* "cpu", "memory", "connections", "disk_io", "network_bandwidth" (as used in
 * scenario names); "unknown" outside the enum. Never NULL. Cannot fail. */
const char *af_resource_type_name(af_resource_type_t t);

#define AF_CHAOS_BLAST_MAX 32
#define AF_CHAOS_PROTECTED_MAX 32
#define AF_CHAOS_REASON_MAX 256
#define AF_CHAOS_SCENARIO_NAME_MAX (AF_NAME_MAX * 2)

/* One activation request. Plain data, caller-owned. All strings must be
 * NUL-terminated inside their arrays. */
typedef struct {
  af_chaos_kind_t kind;
  char target[AF_NAME_MAX + 1];
  uint64_t delay_ms;           /* LATENCY, TIMEOUT; clamped to max_delay_ms */
  double error_rate;           /* ERROR; [0.0, 1.0] */
  af_resource_type_t resource; /* RESOURCE_EXHAUSTION (required there) */
  double resource_level;       /* RESOURCE_EXHAUSTION; [0.0, 1.0] */
  uint64_t duration_ms;        /* 0 = default_duration_ms; clamped to max */
  char blast_radius[AF_CHAOS_BLAST_MAX][AF_NAME_MAX + 1];
  size_t blast_count;          /* 0 = {target}; duplicates are merged */
  char actor[AF_NAME_MAX + 1]; /* who; "" = "unknown" */
  char reason[AF_CHAOS_REASON_MAX + 1]; /* why; may be "" */
  char hash[AF_HASH_MAX + 1];           /* "" = not presented */
  /* Scenario name; "" = generated as described above. */
  char name[AF_NAME_MAX + 1];
  /* ERROR: what the caller should raise; carried, never interpreted. */
  char error_type[AF_NAME_MAX + 1];
} af_chaos_request_t;

/* Zeroes *r and sets kind and target (borrowed, copied, truncated to
 * AF_NAME_MAX bytes). target NULL gives "" except for RESOURCE_EXHAUSTION,
 * where it gives the seed's default "system". r must not be NULL. Cannot
 * fail. */
void af_chaos_request_init(af_chaos_request_t *r, af_chaos_kind_t kind,
                           const char *target);

/* A scenario as stored. Plain data: a snapshot copied out to the caller. */
typedef struct {
  char name[AF_CHAOS_SCENARIO_NAME_MAX];
  af_chaos_kind_t kind;
  char target[AF_NAME_MAX + 1];
  uint64_t delay_ms; /* after clamping */
  double error_rate;
  af_resource_type_t resource; /* 0 unless RESOURCE_EXHAUSTION */
  double resource_level;
  uint64_t duration_ms; /* after defaulting and clamping */
  char blast_radius[AF_CHAOS_BLAST_MAX][AF_NAME_MAX + 1];
  size_t blast_count;
  int64_t started_wall_ns, expires_wall_ns;
  uint64_t expires_mono_ns;
  bool active;         /* true while stored; false in events of removal */
  uint64_t injections; /* hot-path hits (latency / error / partition) */
  char actor[AF_NAME_MAX + 1];
  char reason[AF_CHAOS_REASON_MAX + 1]; /* the activation's reason */
  char error_type[AF_NAME_MAX + 1];     /* as requested; may be "" */
  char hash[AF_HASH_MAX + 1];           /* the configured constitutional hash */
} af_chaos_scenario_t;

typedef enum {
  AF_CHAOS_EV_ACTIVATED = 1,
  AF_CHAOS_EV_DEACTIVATED, /* reason "manual" (or the caller's) or
                              "emergency_stop" */
  AF_CHAOS_EV_EXPIRED,     /* reason "expired", actor "system" */
  AF_CHAOS_EV_REPLACED,    /* reason "replaced", actor of the new one */
  AF_CHAOS_EV_EMERGENCY_STOP,
  AF_CHAOS_EV_RESET,
} af_chaos_event_kind_t;

/* Audit record. Every pointer is borrowed for the duration of the callback
 * only; never NULL except scenario, which is NULL for EMERGENCY_STOP and
 * RESET. */
typedef struct {
  af_chaos_event_kind_t kind;
  const af_chaos_scenario_t *scenario;
  const char *actor;  /* who */
  const char *reason; /* why */
  int64_t wall_ns;
  uint64_t seq; /* 1, 2, 3, ... per engine, in the order of the changes */
} af_chaos_event_t;

typedef struct {
  const af_clock_t *clock;      /* retains; NULL = system clock */
  uint64_t max_duration_ms;     /* 300000; must be >= 1 */
  uint64_t default_duration_ms; /* 10000; 1..max_duration_ms */
  uint64_t max_delay_ms;        /* 5000 */
  size_t max_scenarios;         /* 1000; more active gives AF_ELIMIT */
  char protected_targets[AF_CHAOS_PROTECTED_MAX][AF_NAME_MAX + 1];
  size_t protected_count;     /* 0 */
  char hash[AF_HASH_MAX + 1]; /* AF_CONSTITUTIONAL_HASH_DEFAULT */
  uint64_t rng_seed;          /* 0 = seeded from the clock */
  /* Sets the force-open of breaker `target`: open=true while a
   * CIRCUIT_BREAKER scenario on it is active, open=false once none is
   * (deactivated, expired, replaced by nothing, emergency stop). Calls are
   * re-issued until they agree with the latest scenario set, so concurrent
   * activations and deactivations always converge. The return value is
   * ignored (the seed only logs it). May be NULL. target is borrowed. */
  af_status_t (*force_breaker)(const char *target, bool open, void *ctx);
  /* Audit and watch hook; may be NULL. ev is borrowed for the call. */
  void (*on_event)(const af_chaos_event_t *ev, void *ctx);
  void *ctx; /* retains; passed to both callbacks */
} af_chaos_config_t;

/* Fills *cfg with the defaults above. cfg must not be NULL. Cannot fail. */
void af_chaos_config_init(af_chaos_config_t *cfg);

/* Creates an engine. cfg is borrowed (copied); cfg->clock and cfg->ctx are
 * retained until af_chaos_destroy. Returns AF_OK and *out (owned, free with
 * af_chaos_destroy), AF_EINVAL with a message in err for a bad config, or
 * AF_ENOMEM. On failure *out is untouched and nothing leaks. */
af_status_t af_chaos_create(af_chaos_t **out, const af_chaos_config_t *cfg,
                            af_error_t *err);

/* Frees the engine and its scenarios. Calls no callback: forced breakers stay
 * forced, so call af_chaos_emergency_stop first to lift them. NULL is a
 * no-op. */
void af_chaos_destroy(af_chaos_t *c);

/* Validates and activates a scenario. req is borrowed. On AF_OK, *out (if not
 * NULL) receives a copy of the stored scenario. Errors (message in err, may
 * be NULL; *out untouched; counted in metrics.rejected):
 *   AF_EINVAL     bad kind, target, rate, level, resource, blast radius...
 *   AF_EHASH      req->hash non-empty and different from the configured hash
 *   AF_EBLAST     target not in the blast radius
 *   AF_EPROTECTED target or a blast radius member is protected
 *   AF_ESTOPPED   "Cannot activate chaos scenario: emergency stop is active"
 *   AF_ELIMIT     max_scenarios active
 *   AF_ENOMEM */
af_status_t af_chaos_activate(af_chaos_t *c, const af_chaos_request_t *req,
                              af_chaos_scenario_t *out, af_error_t *err);

/* Deactivates scenario `name` (borrowed): lifts a forced breaker and emits
 * DEACTIVATED with actor (NULL/"" = "unknown") and reason (NULL/"" =
 * "manual"). Returns AF_OK, AF_ENOTFOUND (not active; expired ones are
 * reaped first), AF_EINVAL (NULL c or name). */
af_status_t af_chaos_deactivate(af_chaos_t *c, const char *name,
                                const char *actor, const char *reason);

/* Active scenarios in activation order. *out returns owned (free with
 * af_free; NULL when *n is 0). Returns AF_OK, AF_EINVAL, AF_ENOMEM (then *out
 * and *n untouched). */
af_status_t af_chaos_list(af_chaos_t *c, af_chaos_scenario_t **out, size_t *n);

/* Copies active scenario `name` into *out. AF_OK, AF_ENOTFOUND, AF_EINVAL. */
af_status_t af_chaos_get(af_chaos_t *c, const char *name,
                         af_chaos_scenario_t *out);

/* Deactivates every scenario (DEACTIVATED, reason "emergency_stop", each
 * forced breaker lifted), latches the stop and emits EMERGENCY_STOP with
 * actor/reason (NULL = "unknown" / ""). Returns how many were deactivated.
 * Stopping again while stopped is allowed (and counted). */
size_t af_chaos_emergency_stop(af_chaos_t *c, const char *actor,
                               const char *reason);

/* Clears the emergency-stop latch and emits RESET. Idempotent. */
void af_chaos_reset_stop(af_chaos_t *c, const char *actor);

/* True while the emergency stop is latched. */
bool af_chaos_stopped(af_chaos_t *c);

/* Hot path. True if a LATENCY or TIMEOUT scenario whose blast radius holds
 * target (borrowed) is active and not expired; then *delay_ms (may be NULL)
 * gets its delay (first match in activation order). Otherwise false and
 * *delay_ms = 0. */
bool af_chaos_should_inject_latency(af_chaos_t *c, const char *target,
                                    uint64_t *delay_ms);

/* Hot path. True if a NETWORK_PARTITION scenario covers target, or an ERROR
 * scenario covering it draws a random number below its error_rate (each
 * covering ERROR scenario draws once, in activation order). */
bool af_chaos_should_inject_error(af_chaos_t *c, const char *target);

/* Level of the first RESOURCE_EXHAUSTION scenario covering target, 0.0 if
 * none. *type (may be NULL) gets its resource, or 0 if none. */
double af_chaos_resource_level(af_chaos_t *c, const char *target,
                               af_resource_type_t *type);

/* Expires every scenario whose expiry is <= now (EXPIRED event, forced
 * breaker lifted). Returns the earliest remaining expiry (monotonic ns) or
 * UINT64_MAX when none is active. */
uint64_t af_chaos_tick(af_chaos_t *c);

typedef struct {
  uint64_t activations;   /* successful, including replacements */
  uint64_t deactivations; /* manual and by emergency stop */
  uint64_t expirations;
  uint64_t latency_injections;
  uint64_t error_injections;
  uint64_t emergency_stops;
  uint64_t rejected; /* refused activations */
  size_t active;
  bool stopped;
} af_chaos_metrics_t;

/* Snapshot of the counters (reaps expired scenarios first). out must not be
 * NULL; c NULL gives zeroes. */
void af_chaos_metrics(af_chaos_t *c, af_chaos_metrics_t *out);

#ifdef __cplusplus
}
#endif
#endif /* AF_CHAOS_H */
