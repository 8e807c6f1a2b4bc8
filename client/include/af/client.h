/*
 * af/client.h - libafclient: the thin C client of the antifragility service.
 *
 * Four things, on one af_client_t:
 *
 *  1. Synchronous calls, one per RPC of antifragility.v1
 *     (af_client_<rpc>), with nanopb messages, a deadline and the gRPC
 *     status handed back. Server streams through af_client_watch_open.
 *  2. Guarded calls (af_guard_*): a circuit breaker that runs in-process
 *     (the core af_breaker code, the server's semantics) so allow / success
 *     / failure cost nanoseconds and never touch the network. A background
 *     reporter sends each guard's state and outcome counters to the server
 *     (ReportState, coalesced per round); while the server is down the
 *     guards keep working and the reports catch up once it is back (a new
 *     server gets every guard re-registered).
 *  3. Chaos applied in the client: a background follower of WatchScenarios
 *     mirrors the active scenarios into a local af_chaos engine; allow
 *     applies latency (sleeps), error and resource-exhaustion scenarios
 *     whose blast radius holds the guard's target. With nothing active
 *     that check is one atomic load.
 *  4. Metering (af_client_meter_enqueue): a bounded queue that never blocks
 *     and never allocates (full: refused and counted dropped), drained by a
 *     background sender in batches over RecordUsageStream, retried with
 *     backoff until the server acknowledges the batch. Every event gets its
 *     idempotency key (event_id) at enqueue, so a retried batch is counted
 *     once (the server reports the repeats as duplicates).
 *  Plus health subscriptions (af_client_health_subscribe): a callback on
 *  every WatchHealth message, with reconnection (exponential backoff with
 *  jitter) and a resynchronisation when the sequence number jumps.
 *
 * Thread-safety: thread-safe. Every function may be called from any thread
 * at once, except af_client_shutdown / af_client_destroy (one owner thread,
 * after every other call returned) and the per-stream functions
 * (af_client_stream_*: single-owner, except af_client_stream_cancel, which
 * any thread may call).
 *
 * Threads: af_client_create with background enabled starts: the reporter
 * (guards), the metering sender, the chaos follower (if follow_chaos), and
 * one thread per health subscription. They make every network call; the
 * caller's thread only makes network calls in af_client_<rpc> and
 * af_client_stream_*. Health callbacks run on their subscription's thread,
 * never with a library lock held.
 *
 * Errors: synchronous calls return the gRPC status code (numbering of
 * grpc/status.h: 0 OK, 3 INVALID_ARGUMENT, 4 DEADLINE_EXCEEDED, 5 NOT_FOUND,
 * 9 FAILED_PRECONDITION, 12 UNIMPLEMENTED, 13 INTERNAL, 14 UNAVAILABLE...)
 * and fill af_call_status_t with the code and the server's message. Local
 * failures (a message that does not encode or decode, out of memory) come
 * back as 13 INTERNAL / 8 RESOURCE_EXHAUSTED with a message saying so.
 * Everything else returns af_status_t (af/status.h). The library never
 * aborts on bad input or allocation failure.
 *
 * Lifetime:
 *  1. af_client_create returns an owned client; af_client_shutdown stops
 *     the background work (flushing what it can within a deadline) and
 *     joins every thread; af_client_destroy frees everything. destroy
 *     calls shutdown if needed.
 *  2. Guards (af_guard_t) belong to the client: valid until
 *     af_client_destroy; never freed separately.
 *  3. Streams (af_client_stream_t) must be closed before af_client_destroy.
 *  4. Messages passed in are borrowed for the call; messages filled out are
 *     caller-owned structs (nanopb: no pointers inside, no free needed).
 *     Some responses are large (GetHealthHistoryResponse holds 300
 *     snapshots): put them on the heap, not a small thread stack.
 */
#ifndef AF_CLIENT_H
#define AF_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <pb.h>

#include "af/chaos.h"
#include "af/clock.h"
#include "af/meter.h"
#include "af/status.h"
#include "af/types.h"

#include "antifragility/v1/breaker.pb.h"
#include "antifragility/v1/chaos.pb.h"
#include "antifragility/v1/health.pb.h"
#include "antifragility/v1/metering.pb.h"
#include "antifragility/v1/recovery.pb.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AF_CLIENT_VERSION "0.1.0"

typedef struct af_client af_client_t;

/* ---- configuration ------------------------------------------------------ */

typedef struct {
  /* "host:port" of afd. Default "127.0.0.1:50051". Borrowed (copied). */
  const char *addr;
  /* Deadline of a synchronous call when the caller passes 0. Default 5000. */
  uint32_t deadline_ms;
  /* Sent with guard reports; "" or NULL = "<hostname>:<pid>". Borrowed. */
  const char *instance_id;
  /* Constitutional hash put on metering events. Default
   * AF_CONSTITUTIONAL_HASH_DEFAULT. Borrowed (copied). */
  const char *hash;
  /* Clock of the guards, the local chaos engine and the meter. NULL =
   * system. Retained: must outlive the client. */
  const af_clock_t *clock;
  /* Start the background threads (reporter, metering sender, chaos
   * follower). Default true; false gives a plain RPC client (afctl): guards
   * then never report and enqueued events stay queued. */
  bool background;
  /* Follow WatchScenarios and apply chaos locally. Default true. */
  bool follow_chaos;
  /* Reporter round period (a transition wakes it at once). Default 1000. */
  uint32_t report_interval_ms;
  /* Reconnect / retry backoff: initial and cap. Defaults 100 and 5000. */
  uint32_t backoff_initial_ms;
  uint32_t backoff_max_ms;
  /* Bearer token sent as `authorization: Bearer <token>` on every call;
   * NULL / "" = none (afd without --tokens-file needs none on loopback).
   * Borrowed (copied). */
  const char *token;
  /* TLS: PEM file of the CA that signed afd's certificate; NULL = plain
   * HTTP/2. With tls_cert_file and tls_key_file (PEM) the client also
   * presents a certificate (mTLS). Files are read in af_client_create. */
  const char *tls_ca_file;
  const char *tls_cert_file;
  const char *tls_key_file;
  /* Metering queue capacity, batch size, partial-batch period. Defaults
   * 10000, 100, 1000. */
  size_t meter_capacity;
  size_t meter_batch;
  uint32_t meter_flush_interval_ms;
} af_client_config_t;

/* Fills *cfg with the defaults above. Cannot fail. */
void af_client_config_init(af_client_config_t *cfg);

/* Creates a client (cfg borrowed; NULL = defaults). Connects lazily: a
 * server that is down is not an error. Starts the background threads when
 * cfg->background. Returns AF_OK and *out (owned: af_client_destroy),
 * AF_EINVAL (err says which setting), AF_EIO (a TLS file cannot be read),
 * AF_ENOMEM or AF_EINTERNAL (a thread could not start). On failure *out is
 * untouched and nothing leaks. */
af_status_t af_client_create(af_client_t **out, const af_client_config_t *cfg,
                             af_error_t *err);

/* Stops the background work: the chaos follower and health subscriptions
 * end, the reporter makes one last round, the metering sender flushes what
 * it can until deadline_ms (real time) have passed, and every thread is
 * joined. No network call outlives the deadline (each is cut to what is
 * left of it; deadline_ms 0 allows one attempt of 1 ms). Returns how many
 * metering events were left unsent.
 * Idempotent. Owner thread. */
size_t af_client_shutdown(af_client_t *c, uint32_t deadline_ms);

/* af_client_shutdown(c, 0) if needed, then frees everything (guards
 * included). NULL is a no-op. */
void af_client_destroy(af_client_t *c);

/* The address the client talks to; owned by c. */
const char *af_client_addr(const af_client_t *c);

/* ---- synchronous calls -------------------------------------------------- */

/* Final status of a call. */
typedef struct {
  int code;          /* gRPC status code, 0 = OK */
  char message[512]; /* the server's message (cut to fit), "" if none */
} af_call_status_t;

/* The gRPC name of a status code ("OK", "NOT_FOUND", ...). Never NULL. */
const char *af_call_code_name(int code);

/* Every RPC: X(ID suffix, function suffix, Service, Method, Request type,
 * Response type, kind) with kind UNARY, CLIENT_STREAM or SERVER_STREAM.
 * Types are the nanopb names without the antifragility_v1_ prefix. */
#define AF_CLIENT_RPCS(X)                                                      \
  X(REGISTER_BREAKER, register_breaker, BreakerService, RegisterBreaker,       \
    RegisterBreakerRequest, RegisterBreakerResponse, UNARY)                    \
  X(REPORT_OUTCOME, report_outcome, BreakerService, ReportOutcome,             \
    ReportOutcomeRequest, ReportOutcomeResponse, UNARY)                        \
  X(REPORT_OUTCOMES, report_outcomes, BreakerService, ReportOutcomes,          \
    ReportOutcomeRequest, ReportOutcomesResponse, CLIENT_STREAM)               \
  X(REPORT_STATE, report_state, BreakerService, ReportState,                   \
    ReportStateRequest, ReportStateResponse, UNARY)                            \
  X(GET_BREAKER, get_breaker, BreakerService, GetBreaker, GetBreakerRequest,   \
    GetBreakerResponse, UNARY)                                                 \
  X(LIST_BREAKERS, list_breakers, BreakerService, ListBreakers,                \
    ListBreakersRequest, ListBreakersResponse, UNARY)                          \
  X(RESET_BREAKER, reset_breaker, BreakerService, ResetBreaker,                \
    ResetBreakerRequest, ResetBreakerResponse, UNARY)                          \
  X(RESET_ALL_BREAKERS, reset_all_breakers, BreakerService, ResetAllBreakers,  \
    ResetAllBreakersRequest, ResetAllBreakersResponse, UNARY)                  \
  X(UNREGISTER_BREAKER, unregister_breaker, BreakerService, UnregisterBreaker, \
    UnregisterBreakerRequest, UnregisterBreakerResponse, UNARY)                \
  X(WATCH_BREAKERS, watch_breakers, BreakerService, WatchBreakers,             \
    WatchBreakersRequest, WatchBreakersResponse, SERVER_STREAM)                \
  X(GET_SYSTEM_HEALTH, get_system_health, HealthService, GetSystemHealth,      \
    GetSystemHealthRequest, GetSystemHealthResponse, UNARY)                    \
  X(GET_HEALTH_HISTORY, get_health_history, HealthService, GetHealthHistory,   \
    GetHealthHistoryRequest, GetHealthHistoryResponse, UNARY)                  \
  X(WATCH_HEALTH, watch_health, HealthService, WatchHealth,                    \
    WatchHealthRequest, WatchHealthResponse, SERVER_STREAM)                    \
  X(GET_HEALTH_METRICS, get_health_metrics, HealthService, GetHealthMetrics,   \
    GetHealthMetricsRequest, GetHealthMetricsResponse, UNARY)                  \
  X(SCHEDULE_RECOVERY, schedule_recovery, RecoveryService, ScheduleRecovery,   \
    ScheduleRecoveryRequest, ScheduleRecoveryResponse, UNARY)                  \
  X(EXECUTE_RECOVERY, execute_recovery, RecoveryService, ExecuteRecovery,      \
    ExecuteRecoveryRequest, ExecuteRecoveryResponse, UNARY)                    \
  X(CANCEL_RECOVERY, cancel_recovery, RecoveryService, CancelRecovery,         \
    CancelRecoveryRequest, CancelRecoveryResponse, UNARY)                      \
  X(APPROVE_RECOVERY, approve_recovery, RecoveryService, ApproveRecovery,      \
    ApproveRecoveryRequest, ApproveRecoveryResponse, UNARY)                    \
  X(GET_RECOVERY_STATUS, get_recovery_status, RecoveryService,                 \
    GetRecoveryStatus, GetRecoveryStatusRequest, GetRecoveryStatusResponse,    \
    UNARY)                                                                     \
  X(SET_RECOVERY_POLICY, set_recovery_policy, RecoveryService,                 \
    SetRecoveryPolicy, SetRecoveryPolicyRequest, SetRecoveryPolicyResponse,    \
    UNARY)                                                                     \
  X(GET_RECOVERY_POLICY, get_recovery_policy, RecoveryService,                 \
    GetRecoveryPolicy, GetRecoveryPolicyRequest, GetRecoveryPolicyResponse,    \
    UNARY)                                                                     \
  X(WATCH_RECOVERY, watch_recovery, RecoveryService, WatchRecovery,            \
    WatchRecoveryRequest, WatchRecoveryResponse, SERVER_STREAM)                \
  X(INJECT_LATENCY, inject_latency, ChaosService, InjectLatency,               \
    InjectLatencyRequest, InjectLatencyResponse, UNARY)                        \
  X(INJECT_ERRORS, inject_errors, ChaosService, InjectErrors,                  \
    InjectErrorsRequest, InjectErrorsResponse, UNARY)                          \
  X(FORCE_CIRCUIT_OPEN, force_circuit_open, ChaosService, ForceCircuitOpen,    \
    ForceCircuitOpenRequest, ForceCircuitOpenResponse, UNARY)                  \
  X(SIMULATE_RESOURCE_EXHAUSTION, simulate_resource_exhaustion, ChaosService,  \
    SimulateResourceExhaustion, SimulateResourceExhaustionRequest,             \
    SimulateResourceExhaustionResponse, UNARY)                                 \
  X(DEACTIVATE_SCENARIO, deactivate_scenario, ChaosService,                    \
    DeactivateScenario, DeactivateScenarioRequest, DeactivateScenarioResponse, \
    UNARY)                                                                     \
  X(LIST_SCENARIOS, list_scenarios, ChaosService, ListScenarios,               \
    ListScenariosRequest, ListScenariosResponse, UNARY)                        \
  X(EMERGENCY_STOP, emergency_stop, ChaosService, EmergencyStop,               \
    EmergencyStopRequest, EmergencyStopResponse, UNARY)                        \
  X(RESET_CHAOS, reset_chaos, ChaosService, ResetChaos, ResetChaosRequest,     \
    ResetChaosResponse, UNARY)                                                 \
  X(GET_CHAOS_METRICS, get_chaos_metrics, ChaosService, GetChaosMetrics,       \
    GetChaosMetricsRequest, GetChaosMetricsResponse, UNARY)                    \
  X(CHECK_INJECTION, check_injection, ChaosService, CheckInjection,            \
    CheckInjectionRequest, CheckInjectionResponse, UNARY)                      \
  X(WATCH_SCENARIOS, watch_scenarios, ChaosService, WatchScenarios,            \
    WatchScenariosRequest, WatchScenariosResponse, SERVER_STREAM)              \
  X(RECORD_USAGE, record_usage, MeteringService, RecordUsage,                  \
    RecordUsageRequest, RecordUsageResponse, UNARY)                            \
  X(RECORD_USAGE_STREAM, record_usage_stream, MeteringService,                 \
    RecordUsageStream, RecordUsageRequest, RecordUsageStreamResponse,          \
    CLIENT_STREAM)                                                             \
  X(QUERY_USAGE, query_usage, MeteringService, QueryUsage, QueryUsageRequest,  \
    QueryUsageResponse, UNARY)                                                 \
  X(GET_METERING_METRICS, get_metering_metrics, MeteringService,               \
    GetMeteringMetrics, GetMeteringMetricsRequest, GetMeteringMetricsResponse, \
    UNARY)

typedef enum {
#define AF__RPC_ENUM(ID, fn, svc, m, rq, rs, kind) AF_RPC_##ID,
  AF_CLIENT_RPCS(AF__RPC_ENUM)
#undef AF__RPC_ENUM
      AF_RPC_COUNT
} af_rpc_id_t;

typedef enum {
  AF_RPC_KIND_UNARY,
  AF_RPC_KIND_CLIENT_STREAM,
  AF_RPC_KIND_SERVER_STREAM,
} af_rpc_kind_t;

/* Static description of one RPC. */
typedef struct {
  const char *path;    /* "/antifragility.v1.BreakerService/GetBreaker" */
  const char *service; /* "antifragility.v1.BreakerService" */
  const char *method;  /* "GetBreaker" */
  af_rpc_kind_t kind;
  const pb_msgdesc_t *req_fields, *resp_fields;
  size_t req_size, resp_size; /* sizeof the nanopb structs */
} af_rpc_info_t;

/* Static info of rpc, or NULL for an id out of range. Cannot fail. */
const af_rpc_info_t *af_rpc_info(af_rpc_id_t rpc);

/* Generic unary call: req (borrowed) is a nanopb struct of the RPC's
 * request type, resp (caller-owned, written only when the call returns OK)
 * of its response type. deadline_ms 0 = the client's default. st may be
 * NULL. Returns the gRPC status code. A CLIENT_STREAM or SERVER_STREAM
 * rpc gives 3 INVALID_ARGUMENT. */
int af_client_unary(af_client_t *c, af_rpc_id_t rpc, const void *req,
                    void *resp, uint32_t deadline_ms, af_call_status_t *st);

/* Generic client stream: sends reqs[0..n-1] (a borrowed array of request
 * structs), half-closes and reads the summary into resp. As
 * af_client_unary otherwise. */
int af_client_client_stream(af_client_t *c, af_rpc_id_t rpc, const void *reqs,
                            size_t n, void *resp, uint32_t deadline_ms,
                            af_call_status_t *st);

/* One typed function per unary RPC, e.g.
 *   int af_client_get_breaker(af_client_t *c,
 *                             const antifragility_v1_GetBreakerRequest *req,
 *                             antifragility_v1_GetBreakerResponse *resp,
 *                             uint32_t deadline_ms, af_call_status_t *st);
 * and for the two client streams
 *   int af_client_report_outcomes(c, const ..._ReportOutcomeRequest *reqs,
 *                                 size_t n, ..._ReportOutcomesResponse *resp,
 *                                 uint32_t deadline_ms, af_call_status_t *st);
 *   int af_client_record_usage_stream(c, const ..._RecordUsageRequest *reqs,
 *                                 size_t n, ..._RecordUsageStreamResponse *,
 *                                 uint32_t deadline_ms, af_call_status_t *st);
 * Semantics as af_client_unary / af_client_client_stream. */
#define AF__DECL_UNARY(fn, rq, rs)                                             \
  int af_client_##fn(af_client_t *c, const antifragility_v1_##rq *req,         \
                     antifragility_v1_##rs *resp, uint32_t deadline_ms,        \
                     af_call_status_t *st);
#define AF__DECL_CLIENT_STREAM(fn, rq, rs)                                     \
  int af_client_##fn(af_client_t *c, const antifragility_v1_##rq *reqs,        \
                     size_t n, antifragility_v1_##rs *resp,                    \
                     uint32_t deadline_ms, af_call_status_t *st);
#define AF__DECL_SERVER_STREAM(fn, rq, rs)
#define AF__DECL(ID, fn, svc, m, rq, rs, kind) AF__DECL_##kind(fn, rq, rs)
AF_CLIENT_RPCS(AF__DECL)
#undef AF__DECL

/* ---- server streams ------------------------------------------------------
 */

typedef struct af_client_stream af_client_stream_t;

/* Opens a SERVER_STREAM rpc with req (borrowed). deadline_ms 0 = no
 * deadline (streams live until cancelled). Returns AF_OK and *out (owned:
 * af_client_stream_close); AF_EINVAL (not a server stream); AF_ENOMEM. A
 * call that cannot reach the server shows as a stream that ends with
 * UNAVAILABLE. */
af_status_t af_client_watch_open(af_client_t *c, af_rpc_id_t rpc,
                                 const void *req, uint32_t deadline_ms,
                                 af_client_stream_t **out);

/* Waits up to wait_ms (< 0: until something happens) for the next message:
 * 1 = msg (caller-owned struct of the response type) filled, 0 = nothing
 * yet (call again), -1 = the stream ended (af_client_stream_status). */
int af_client_stream_next(af_client_stream_t *s, void *msg, int wait_ms);

/* Final status once next returned -1 (waits for it otherwise). */
int af_client_stream_status(af_client_stream_t *s, af_call_status_t *st);

/* Cancels the call (status CANCELLED). Any thread; returns at once. */
void af_client_stream_cancel(af_client_stream_t *s);

/* Cancels if open, waits for the call's operations, frees. NULL: no-op. */
void af_client_stream_close(af_client_stream_t *s);

/* ---- guarded calls -------------------------------------------------------
 */

typedef struct af_guard af_guard_t;

/* What af_guard_allow decided. */
typedef enum {
  AF_GUARD_PASS = 0,     /* make the call, then report success / failure */
  AF_GUARD_REJECTED = 1, /* the breaker is open: do not call */
  /* Chaos: an ERROR (or NETWORK_PARTITION) scenario fails this call. It
   * was counted as a failure already: do not call, do not report. */
  AF_GUARD_CHAOS_ERROR = 2,
  /* Chaos: a RESOURCE_EXHAUSTION scenario at level L refuses a fraction L
   * of the calls; counted as a failure already. */
  AF_GUARD_CHAOS_EXHAUSTED = 3,
} af_guard_decision_t;

/* Settings of one guard; unset (0) fields take the server's defaults:
 * fail_max 5, reset_timeout_ms 30000, half_open_max_calls 1,
 * success_threshold 1. */
typedef struct {
  uint32_t fail_max;
  uint64_t reset_timeout_ms;
  uint32_t half_open_max_calls;
  uint32_t success_threshold;
  /* Chaos target this guard answers to; NULL / "" = the guard's name. */
  const char *target;
} af_guard_config_t;

/* Fills *cfg with zeroes (= defaults). Cannot fail. */
void af_guard_config_init(af_guard_config_t *cfg);

/* Gets or creates the guard `name` (borrowed; a valid breaker name). cfg
 * (borrowed) NULL = defaults; it applies on creation only. *out (owned by
 * the client, valid until af_client_destroy). The reporter registers it on
 * the server with the same settings. AF_EINVAL (bad name or config, err
 * says why), AF_ELIMIT, AF_ENOMEM. */
af_status_t af_guard_get(af_client_t *c, const char *name,
                         const af_guard_config_t *cfg, af_guard_t **out,
                         af_error_t *err);

/* May the call go ahead? Never touches the network. First the breaker's
 * answer (a few atomic operations in CLOSED); with no chaos mirrored that
 * is all (plus one atomic load). If the breaker admits the call and chaos
 * covers the target: a LATENCY / TIMEOUT scenario sleeps its delay on the
 * caller's thread; ERROR, NETWORK_PARTITION and RESOURCE_EXHAUSTION may
 * then fail the call (see af_guard_decision_t). */
af_guard_decision_t af_guard_allow(af_guard_t *g);

/* Outcome of a call that af_guard_allow let pass. error_type (borrowed,
 * may be NULL) is matched against the breaker's excluded errors. Never
 * touches the network. */
void af_guard_success(af_guard_t *g);
void af_guard_failure(af_guard_t *g, const char *error_type);

/* Current local state. */
af_breaker_state_t af_guard_state(af_guard_t *g);

/* The guard's name; owned by the client. */
const char *af_guard_name(const af_guard_t *g);

/* Reporting counters of the whole client. */
typedef struct {
  uint64_t reports_sent;   /* ReportState calls answered OK */
  uint64_t reports_failed; /* calls that failed (retried later) */
  uint64_t rounds;         /* reporter rounds run */
  uint64_t chaos_events;   /* WatchScenarios messages applied */
  uint64_t chaos_reconnects;
  size_t chaos_active; /* scenarios mirrored locally right now */
  bool chaos_connected;
} af_client_guard_stats_t;

/* Snapshot of the counters. Cannot fail. */
void af_client_guard_stats(af_client_t *c, af_client_guard_stats_t *out);

/* Asks the reporter for a round now (e.g. before a test reads the
 * server). Never blocks. */
void af_client_report_now(af_client_t *c);

/* ---- metering ------------------------------------------------------------
 */

/* Queues ev (borrowed; updated in place: an empty event_id gets a
 * generated idempotency key, timestamp 0 the current wall time, an empty
 * hash the client's). Never blocks, never allocates, never touches the
 * network. Returns AF_OK; AF_EINVAL (invalid event, err says why);
 * AF_EFULL (queue full: counted dropped_queue_full; retry later with the
 * same ev to keep its key); AF_ESHUTDOWN (after af_client_shutdown). The
 * event's metadata text is not sent (the wire has a map). */
af_status_t af_client_meter_enqueue(af_client_t *c, af_meter_event_t *ev,
                                    af_error_t *err);

/* Metering counters: queued, flushed (acknowledged by the server),
 * duplicates (acknowledged as already recorded), dropped_*, sink_errors
 * (failed sends, retried), depth. Cannot fail. */
void af_client_meter_metrics(af_client_t *c, af_meter_metrics_t *out);

/* Asks the sender to send what is queued now instead of at the next
 * flush interval. Never blocks. */
void af_client_meter_flush(af_client_t *c);

/* ---- health subscriptions ----------------------------------------------
 */

typedef struct af_health_sub af_health_sub_t;

/* What a health callback gets. */
typedef struct {
  /* The message as received (borrowed for the callback). */
  const antifragility_v1_WatchHealthResponse *msg;
  /* True for the first message of a stream (after a (re)connect): msg
   * carries the complete current report. */
  bool first;
  /* True if the sequence number jumped (messages were lost): resynchronise
   * on msg->report, which is always the complete current report; changed
   * and previous_status compare with a message you never saw. */
  bool resync;
  uint64_t reconnects; /* streams opened so far minus one */
} af_health_update_t;

typedef void (*af_health_fn)(const af_health_update_t *u, void *ctx);

/* Subscribes: a thread opens WatchHealth(include_score_changes) and calls
 * fn(update, ctx) on it for every message (heartbeats included; check
 * msg->heartbeat). When the stream ends or cannot be opened it reconnects
 * after a backoff that doubles from backoff_initial_ms up to
 * backoff_max_ms, jittered to [d/2, d], reset after a message arrives. fn and
 * ctx retained until af_health_unsubscribe (or shutdown). *out owned by
 * the client (pass to af_health_unsubscribe, or let shutdown end it).
 * Needs cfg.background. AF_ESTATE (no background / shut down),
 * AF_ENOMEM, AF_EINTERNAL. */
af_status_t af_client_health_subscribe(af_client_t *c,
                                       bool include_score_changes,
                                       af_health_fn fn, void *ctx,
                                       af_health_sub_t **out);

/* Ends the subscription and joins its thread (fn is not called after
 * this returns). Must not be called from fn. NULL is a no-op. */
void af_health_unsubscribe(af_health_sub_t *sub);

#ifdef __cplusplus
}
#endif
#endif /* AF_CLIENT_H */
