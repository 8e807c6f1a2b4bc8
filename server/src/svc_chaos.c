/*
 * svc_chaos.c - antifragility.v1.ChaosService on the core chaos engine.
 *
 * Owns: the per-service state (a counter of activations refused here,
 * before the core saw them) and one watch_t per WatchScenarios stream. The
 * scenarios themselves, their expiry, the emergency-stop latch, the
 * breaker force-open and the hot path all live in core/src/chaos.c; this
 * file validates the wire request, fills an af_chaos_request_t and maps the
 * results back.
 *
 * Caller identity: the bearer token's identity (see auth.h), followed by
 * the request's `actor` in parentheses if it names someone else; without
 * tokens the request's `actor` if given, else the peer address
 * ("ipv4:127.0.0.1:54321"). Every activation, deactivation, expiry,
 * emergency stop and reset is logged once at INFO from the engine's audit
 * hook (on_chaos_audit, see af_svc_chaos_configure); the proto exposes no
 * audit trail, so none is kept in memory.
 *
 * WatchScenarios: each stream first gets a SNAPSHOT (the active list),
 * then one message per engine chaos event, in the order the hub delivered
 * them. Events wait in a per-stream FIFO of at most WATCH_QUEUE_MAX; a
 * slower consumer loses the oldest ones, and the next message it gets says
 * how many in `coalesced`. Events queued before the snapshot are dropped
 * (the snapshot already reflects them). A fill sends one event and, if more
 * are queued, asks for another fill.
 *
 * Threading: handlers run on CQ threads and only make short engine calls.
 * watch_t's queue is under its own mutex, taken by the hub callback (hub
 * lock held, engine locks not) and by fills; no lock of this file is held
 * while calling the engine, the hub or the framework.
 */
#include "app_internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "convert.h"
#include "log.h"
#include "status_map.h"

#define SVC "/antifragility.v1.ChaosService/"

/* Wire limits (chaos.proto). */
#define BLAST_WIRE_MAX 8
#define LIST_WIRE_MAX 16
/* Durations and delays beyond this are refused; below it the core clamps
 * (duration to max_duration, delay to max_delay). One year. */
#define DURATION_WIRE_MAX_MS UINT64_C(31536000000)
/* Events a slow WatchScenarios consumer may have pending. */
#define WATCH_QUEUE_MAX 64
/* Seed: inject_errors(error_type=Exception). */
#define DEFAULT_ERROR_TYPE "Exception"

struct af_svc_chaos {
  af_app_t *app;
  _Atomic uint64_t rejected; /* activations refused before the core */
};

/* ------------------------------------------------------------------ */
/* Conversions                                                        */

static Antifragility__V1__ChaosKind kind_to_pb(af_chaos_kind_t k)
{
  switch (k) {
  case AF_CHAOS_LATENCY:
    return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_LATENCY;
  case AF_CHAOS_ERROR:
    return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_ERROR;
  case AF_CHAOS_CIRCUIT_BREAKER:
    return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_CIRCUIT_BREAKER;
  case AF_CHAOS_RESOURCE_EXHAUSTION:
    return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_RESOURCE_EXHAUSTION;
  case AF_CHAOS_NETWORK_PARTITION:
    return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_NETWORK_PARTITION;
  case AF_CHAOS_TIMEOUT:
    return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_TIMEOUT;
  }
  return ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_UNSPECIFIED;
}

static Antifragility__V1__ResourceType resource_to_pb(af_resource_type_t t)
{
  switch (t) {
  case AF_RESOURCE_CPU:
    return ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_CPU;
  case AF_RESOURCE_MEMORY:
    return ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_MEMORY;
  case AF_RESOURCE_CONNECTIONS:
    return ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_CONNECTIONS;
  case AF_RESOURCE_DISK_IO:
    return ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_DISK_IO;
  case AF_RESOURCE_NETWORK_BANDWIDTH:
    return ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_NETWORK_BANDWIDTH;
  }
  return ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_UNSPECIFIED;
}

/* 0 (refused by the core with its message) for UNSPECIFIED / unknown. */
static af_resource_type_t resource_from_pb(Antifragility__V1__ResourceType t)
{
  switch (t) {
  case ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_CPU:
    return AF_RESOURCE_CPU;
  case ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_MEMORY:
    return AF_RESOURCE_MEMORY;
  case ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_CONNECTIONS:
    return AF_RESOURCE_CONNECTIONS;
  case ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_DISK_IO:
    return AF_RESOURCE_DISK_IO;
  case ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_NETWORK_BANDWIDTH:
    return AF_RESOURCE_NETWORK_BANDWIDTH;
  default:
    return (af_resource_type_t)0;
  }
}

/* A ChaosScenario and the storage its pointers need. Strings point into
 * the af_chaos_scenario_t it was built from, which must outlive packing. */
typedef struct {
  Antifragility__V1__ChaosScenario m;
  Google__Protobuf__Duration delay, duration;
  Google__Protobuf__Timestamp started, expires, ended;
  char *blast[AF_CHAOS_BLAST_MAX];
} pb_scenario_t;

/* ended_wall_ns: 0 while active. */
static Antifragility__V1__ChaosScenario *
scenario_to_pb(pb_scenario_t *p, const af_chaos_scenario_t *s,
               int64_t ended_wall_ns, const char *hash)
{
  antifragility__v1__chaos_scenario__init(&p->m);
  Antifragility__V1__ChaosScenario *m = &p->m;
  m->name = (char *)s->name;
  m->kind = kind_to_pb(s->kind);
  m->target = (char *)s->target;
  if (s->kind == AF_CHAOS_LATENCY || s->kind == AF_CHAOS_TIMEOUT) {
    m->delay = af_duration_from_ms(&p->delay, s->delay_ms);
  }
  if (s->kind == AF_CHAOS_ERROR) {
    m->error_rate = s->error_rate;
    m->error_type = (char *)s->error_type;
  }
  if (s->kind == AF_CHAOS_RESOURCE_EXHAUSTION) {
    m->resource_type = resource_to_pb(s->resource);
    m->resource_level = s->resource_level;
  }
  m->duration = af_duration_from_ms(&p->duration, s->duration_ms);
  size_t nb = s->blast_count <= AF_CHAOS_BLAST_MAX ? s->blast_count : 0;
  for (size_t i = 0; i < nb; i++) {
    p->blast[i] = (char *)s->blast_radius[i];
  }
  m->n_blast_radius = nb;
  m->blast_radius = nb > 0 ? p->blast : NULL;
  m->active = s->active && ended_wall_ns == 0;
  m->started_at = af_ts_from_ns(&p->started, s->started_wall_ns);
  m->expires_at = af_ts_from_ns(&p->expires, s->expires_wall_ns);
  m->ended_at = af_ts_from_ns(&p->ended, ended_wall_ns);
  m->injections = s->injections;
  m->actor = (char *)s->actor;
  m->reason = (char *)s->reason;
  m->constitutional_hash = (char *)hash;
  return m;
}

/* ------------------------------------------------------------------ */
/* Request validation                                                 */

static af_svc_chaos_t *svc_of(af_app_t *app) { return app->chaos; }

static af_chaos_t *chaos_of(af_app_t *app)
{
  return af_engine_chaos(app->engine);
}

static int64_t wall_now(af_app_t *app)
{
  return af_clock_wall_ns(af_engine_clock(app->engine));
}

/* Copies src (NULL = "") into dst[cap] if it fits; else err
 * "<field> must be at most <cap-1> bytes". */
static bool copy_limited(char *dst, size_t cap, const char *src,
                         const char *field, af_error_t *err)
{
  src = af_str_or_empty(src);
  size_t n = strlen(src);
  if (n >= cap) {
    af_error_set(err, AF_EINVAL, "%s must be at most %zu bytes", field,
                 cap - 1);
    return false;
  }
  memcpy(dst, src, n + 1);
  return true;
}

/* The caller for the audit trail: the authenticated identity (with the
 * request's actor after it when one was given: "ci-bot (alice)"), else the
 * request's actor, else the peer address. */
static bool fill_actor(char *dst, size_t cap, af_rpc_t *rpc, const char *actor,
                       af_error_t *err)
{
  if (!copy_limited(dst, cap, actor, "actor", err)) {
    return false;
  }
  const char *id = af_rpc_identity(rpc);
  if (id[0] != '\0') {
    char claimed[AF_NAME_MAX + 1];
    snprintf(claimed, sizeof claimed, "%s", dst);
    if (claimed[0] != '\0' && strcmp(claimed, id) != 0) {
      int n = snprintf(dst, cap, "%.64s (%s)", id, claimed);
      if (n >= (int)cap && cap > 1) {
        dst[cap - 2] = ')'; /* cut the claimed name, keep it readable */
      }
    } else {
      snprintf(dst, cap, "%s", id);
    }
  } else if (dst[0] == '\0') {
    snprintf(dst, cap, "%s", af_rpc_peer(rpc));
  }
  return true;
}

/* The fields every activation request shares. */
typedef struct {
  const char *target;
  const char *target_field;
  const Google__Protobuf__Duration *duration;
  size_t n_blast;
  char *const *blast;
  const char *name;
  const char *actor;
  const char *reason;
  const char *hash;
} common_req_t;

static bool fill_common(af_chaos_request_t *r, af_rpc_t *rpc,
                        const common_req_t *c, af_error_t *err)
{
  if (!af_check_name(c->target, c->target_field, err)) {
    return false;
  }
  snprintf(r->target, sizeof r->target, "%s", c->target);
  if (af_duration_to_ms(c->duration, 0, DURATION_WIRE_MAX_MS, "duration",
                        &r->duration_ms, err) != AF_OK) {
    return false;
  }
  if (c->n_blast > BLAST_WIRE_MAX) {
    af_error_set(err, AF_EINVAL, "blast_radius must have at most %d entries",
                 BLAST_WIRE_MAX);
    return false;
  }
  for (size_t i = 0; i < c->n_blast; i++) {
    if (!af_check_name(c->blast[i], "blast_radius", err)) {
      return false;
    }
    snprintf(r->blast_radius[i], sizeof r->blast_radius[i], "%s", c->blast[i]);
  }
  r->blast_count = c->n_blast;
  const char *name = af_str_or_empty(c->name);
  if (name[0] != '\0' && !af_check_name(name, "name", err)) {
    return false;
  }
  snprintf(r->name, sizeof r->name, "%s", name);
  return fill_actor(r->actor, sizeof r->actor, rpc, c->actor, err) &&
         copy_limited(r->reason, sizeof r->reason, c->reason, "reason", err) &&
         copy_limited(r->hash, sizeof r->hash, c->hash, "constitutional_hash",
                      err);
}

/* ------------------------------------------------------------------ */
/* Activations                                                        */

typedef union {
  ProtobufCMessage base;
  Antifragility__V1__InjectLatencyResponse latency;
  Antifragility__V1__InjectErrorsResponse errors;
  Antifragility__V1__ForceCircuitOpenResponse force;
  Antifragility__V1__SimulateResourceExhaustionResponse resource;
} activate_resp_t;

static void refuse(af_app_t *app, af_rpc_t *rpc, af_status_t st,
                   const af_error_t *err)
{
  atomic_fetch_add_explicit(&svc_of(app)->rejected, 1, memory_order_relaxed);
  af_rpc_fail_status(rpc, st, err);
}

/* Activates r and answers with the stored scenario. */
static void activate_and_reply(af_app_t *app, af_rpc_t *rpc,
                               const af_chaos_request_t *r)
{
  af_error_t err;
  af_error_clear(&err);
  af_chaos_scenario_t s;
  af_status_t st = af_chaos_activate(chaos_of(app), r, &s, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err); /* counted by the core */
    return;
  }
  pb_scenario_t p;
  Antifragility__V1__ChaosScenario *m =
      scenario_to_pb(&p, &s, 0, af_engine_hash(app->engine));
  activate_resp_t resp;
  switch (r->kind) {
  case AF_CHAOS_LATENCY:
    antifragility__v1__inject_latency_response__init(&resp.latency);
    resp.latency.scenario = m;
    break;
  case AF_CHAOS_ERROR:
    antifragility__v1__inject_errors_response__init(&resp.errors);
    resp.errors.scenario = m;
    break;
  case AF_CHAOS_CIRCUIT_BREAKER:
    antifragility__v1__force_circuit_open_response__init(&resp.force);
    resp.force.scenario = m;
    break;
  default:
    antifragility__v1__simulate_resource_exhaustion_response__init(
        &resp.resource);
    resp.resource.scenario = m;
    break;
  }
  af_rpc_reply(rpc, &resp.base);
}

static void on_inject_latency(af_rpc_t *rpc, const ProtobufCMessage *msg,
                              void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__InjectLatencyRequest *q =
      (const Antifragility__V1__InjectLatencyRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_LATENCY, NULL);
  common_req_t c = {q->target,         "target",        q->duration,
                    q->n_blast_radius, q->blast_radius, q->name,
                    q->actor,          q->reason,       q->constitutional_hash};
  if (!fill_common(&r, rpc, &c, &err) ||
      af_duration_to_ms(q->delay, 0, DURATION_WIRE_MAX_MS, "delay", &r.delay_ms,
                        &err) != AF_OK) {
    refuse(app, rpc, AF_EINVAL, &err);
    return;
  }
  if (r.delay_ms == 0) {
    af_error_set(&err, AF_EINVAL, "delay must be greater than 0");
    refuse(app, rpc, AF_EINVAL, &err);
    return;
  }
  activate_and_reply(app, rpc, &r);
}

static void on_inject_errors(af_rpc_t *rpc, const ProtobufCMessage *msg,
                             void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__InjectErrorsRequest *q =
      (const Antifragility__V1__InjectErrorsRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_ERROR, NULL);
  common_req_t c = {q->target,         "target",        q->duration,
                    q->n_blast_radius, q->blast_radius, q->name,
                    q->actor,          q->reason,       q->constitutional_hash};
  if (!fill_common(&r, rpc, &c, &err) ||
      !copy_limited(r.error_type, sizeof r.error_type, q->error_type,
                    "error_type", &err)) {
    refuse(app, rpc, AF_EINVAL, &err);
    return;
  }
  if (r.error_type[0] == '\0') {
    snprintf(r.error_type, sizeof r.error_type, "%s", DEFAULT_ERROR_TYPE);
  }
  r.error_rate = q->error_rate;
  activate_and_reply(app, rpc, &r);
}

static void on_force_circuit_open(af_rpc_t *rpc, const ProtobufCMessage *msg,
                                  void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__ForceCircuitOpenRequest *q =
      (const Antifragility__V1__ForceCircuitOpenRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_CIRCUIT_BREAKER, NULL);
  common_req_t c = {q->breaker_name,   "breaker_name",  q->duration,
                    q->n_blast_radius, q->blast_radius, q->name,
                    q->actor,          q->reason,       q->constitutional_hash};
  if (!fill_common(&r, rpc, &c, &err)) {
    refuse(app, rpc, AF_EINVAL, &err);
    return;
  }
  activate_and_reply(app, rpc, &r);
}

static void on_simulate_resource_exhaustion(af_rpc_t *rpc,
                                            const ProtobufCMessage *msg,
                                            void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__SimulateResourceExhaustionRequest *q =
      (const Antifragility__V1__SimulateResourceExhaustionRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_RESOURCE_EXHAUSTION, NULL);
  /* The seed's default target is "system" (af_chaos_request_init). */
  const char *target = af_str_or_empty(q->target);
  char dflt[sizeof r.target];
  memcpy(dflt, r.target, sizeof dflt);
  common_req_t c = {target[0] != '\0' ? target : dflt,
                    "target",
                    q->duration,
                    q->n_blast_radius,
                    q->blast_radius,
                    q->name,
                    q->actor,
                    q->reason,
                    q->constitutional_hash};
  if (!fill_common(&r, rpc, &c, &err)) {
    refuse(app, rpc, AF_EINVAL, &err);
    return;
  }
  r.resource = resource_from_pb(q->resource_type);
  r.resource_level = q->resource_level;
  activate_and_reply(app, rpc, &r);
}

/* ------------------------------------------------------------------ */
/* Deactivation, stop, reset                                          */

static void on_deactivate(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__DeactivateScenarioRequest *q =
      (const Antifragility__V1__DeactivateScenarioRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  char actor[AF_NAME_MAX + 1];
  char reason[AF_CHAOS_REASON_MAX + 1];
  if (!af_check_name(q->name, "name", &err) ||
      !fill_actor(actor, sizeof actor, rpc, q->actor, &err) ||
      !copy_limited(reason, sizeof reason, q->reason, "reason", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_chaos_scenario_t s;
  af_status_t st = af_chaos_get(chaos_of(app), q->name, &s);
  if (st == AF_OK) {
    st = af_chaos_deactivate(chaos_of(app), q->name, actor, reason);
  }
  if (st == AF_ENOTFOUND) {
    af_rpc_fail(rpc, GRPC_STATUS_NOT_FOUND, "scenario %s not found", q->name);
    return;
  }
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  s.active = false;
  pb_scenario_t p;
  Antifragility__V1__DeactivateScenarioResponse resp =
      ANTIFRAGILITY__V1__DEACTIVATE_SCENARIO_RESPONSE__INIT;
  resp.scenario =
      scenario_to_pb(&p, &s, wall_now(app), af_engine_hash(app->engine));
  af_rpc_reply(rpc, &resp.base);
}

static void on_list(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  (void)msg;
  af_app_t *app = ctx;
  af_chaos_scenario_t *all = NULL;
  size_t n = 0;
  af_status_t st = af_chaos_list(chaos_of(app), &all, &n);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  size_t k = n < LIST_WIRE_MAX ? n : LIST_WIRE_MAX;
  pb_scenario_t p[LIST_WIRE_MAX];
  Antifragility__V1__ChaosScenario *ptrs[LIST_WIRE_MAX];
  const char *hash = af_engine_hash(app->engine);
  for (size_t i = 0; i < k; i++) {
    ptrs[i] = scenario_to_pb(&p[i], &all[i], 0, hash);
  }
  Antifragility__V1__ListScenariosResponse resp =
      ANTIFRAGILITY__V1__LIST_SCENARIOS_RESPONSE__INIT;
  resp.n_scenarios = k;
  resp.scenarios = k > 0 ? ptrs : NULL;
  resp.truncated = n > k;
  resp.emergency_stopped = af_chaos_stopped(chaos_of(app));
  af_rpc_reply(rpc, &resp.base);
  af_free(all);
}

static void on_emergency_stop(af_rpc_t *rpc, const ProtobufCMessage *msg,
                              void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__EmergencyStopRequest *q =
      (const Antifragility__V1__EmergencyStopRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  char actor[AF_NAME_MAX + 1];
  char reason[AF_CHAOS_REASON_MAX + 1];
  if (!fill_actor(actor, sizeof actor, rpc, q->actor, &err) ||
      !copy_limited(reason, sizeof reason, q->reason, "reason", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  size_t n = af_chaos_emergency_stop(chaos_of(app), actor, reason);
  Google__Protobuf__Timestamp ts;
  Antifragility__V1__EmergencyStopResponse resp =
      ANTIFRAGILITY__V1__EMERGENCY_STOP_RESPONSE__INIT;
  resp.deactivated = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
  resp.stopped_at = af_ts_from_ns(&ts, wall_now(app));
  af_rpc_reply(rpc, &resp.base);
}

static void on_reset(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__ResetChaosRequest *q =
      (const Antifragility__V1__ResetChaosRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  char actor[AF_NAME_MAX + 1];
  char reason[AF_CHAOS_REASON_MAX + 1];
  if (!fill_actor(actor, sizeof actor, rpc, q->actor, &err) ||
      !copy_limited(reason, sizeof reason, q->reason, "reason", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_chaos_t *c = chaos_of(app);
  af_chaos_scenario_t *all = NULL;
  size_t n = 0;
  af_status_t st = af_chaos_list(c, &all, &n);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  uint32_t deactivated = 0;
  for (size_t i = 0; i < n; i++) {
    if (af_chaos_deactivate(c, all[i].name, actor,
                            reason[0] != '\0' ? reason : "reset") == AF_OK &&
        deactivated < UINT32_MAX) {
      deactivated++;
    }
  }
  af_free(all);
  bool was_stopped = af_chaos_stopped(c);
  af_chaos_reset_stop(c, actor);
  Antifragility__V1__ResetChaosResponse resp =
      ANTIFRAGILITY__V1__RESET_CHAOS_RESPONSE__INIT;
  resp.deactivated = deactivated;
  resp.emergency_stop_released = was_stopped;
  af_rpc_reply(rpc, &resp.base);
}

/* ------------------------------------------------------------------ */
/* Metrics and the hot path                                           */

static void on_metrics(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  (void)msg;
  af_app_t *app = ctx;
  af_chaos_metrics_t m;
  af_chaos_metrics(chaos_of(app), &m);
  Antifragility__V1__GetChaosMetricsResponse resp =
      ANTIFRAGILITY__V1__GET_CHAOS_METRICS_RESPONSE__INIT;
  resp.total_scenarios = m.activations;
  resp.active_scenarios =
      m.active > UINT32_MAX ? UINT32_MAX : (uint32_t)m.active;
  resp.total_injections = m.latency_injections + m.error_injections;
  resp.latency_injections = m.latency_injections;
  resp.error_injections = m.error_injections;
  resp.expired_scenarios = m.expirations;
  resp.deactivated_scenarios = m.deactivations;
  resp.rejected_activations =
      m.rejected +
      atomic_load_explicit(&svc_of(app)->rejected, memory_order_relaxed);
  resp.emergency_stops = m.emergency_stops;
  resp.emergency_stopped = m.stopped;
  resp.constitutional_hash = (char *)af_engine_hash(app->engine);
  af_rpc_reply(rpc, &resp.base);
}

static bool covers(const af_chaos_scenario_t *s, const char *target)
{
  for (size_t i = 0; i < s->blast_count && i < AF_CHAOS_BLAST_MAX; i++) {
    if (strcmp(s->blast_radius[i], target) == 0) {
      return true;
    }
  }
  return false;
}

/* First active scenario covering target whose kind is a or b. */
static const af_chaos_scenario_t *first_covering(const af_chaos_scenario_t *all,
                                                 size_t n, const char *target,
                                                 af_chaos_kind_t a,
                                                 af_chaos_kind_t b)
{
  for (size_t i = 0; i < n; i++) {
    if ((all[i].kind == a || all[i].kind == b) && covers(&all[i], target)) {
      return &all[i];
    }
  }
  return NULL;
}

/* The engine decides (its hot path, counted in the injection metrics);
 * only when something applies is the active list read to name the
 * deciding scenario (the first covering one of the deciding kind, in
 * activation order: the one the engine consulted first). */
static void on_check_injection(af_rpc_t *rpc, const ProtobufCMessage *msg,
                               void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__CheckInjectionRequest *q =
      (const Antifragility__V1__CheckInjectionRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  if (!af_check_name(q->target, "target", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_chaos_t *c = chaos_of(app);
  uint64_t delay_ms = 0;
  bool lat = af_chaos_should_inject_latency(c, q->target, &delay_ms);
  bool fail = af_chaos_should_inject_error(c, q->target);
  af_resource_type_t rt = (af_resource_type_t)0;
  double level = af_chaos_resource_level(c, q->target, &rt);

  Google__Protobuf__Duration delay;
  Antifragility__V1__CheckInjectionResponse resp =
      ANTIFRAGILITY__V1__CHECK_INJECTION_RESPONSE__INIT;
  resp.inject_latency = lat;
  if (lat) {
    resp.delay = af_duration_from_ms(&delay, delay_ms);
  }
  resp.inject_error = fail;
  resp.resource_level = level;
  if (level > 0.0) {
    resp.resource_type = resource_to_pb(rt);
  }
  af_chaos_scenario_t *all = NULL;
  size_t n = 0;
  const af_chaos_scenario_t *decider = NULL;
  if ((lat || fail || level > 0.0) && af_chaos_list(c, &all, &n) == AF_OK) {
    const af_chaos_scenario_t *e = first_covering(
        all, n, q->target, AF_CHAOS_ERROR, AF_CHAOS_NETWORK_PARTITION);
    if (fail) {
      decider = e;
    } else if (lat) {
      decider =
          first_covering(all, n, q->target, AF_CHAOS_LATENCY, AF_CHAOS_TIMEOUT);
    } else {
      decider = first_covering(all, n, q->target, AF_CHAOS_RESOURCE_EXHAUSTION,
                               AF_CHAOS_RESOURCE_EXHAUSTION);
    }
    if (fail && e != NULL) {
      resp.error_type = e->error_type[0] != '\0' ? (char *)e->error_type
                        : e->kind == AF_CHAOS_NETWORK_PARTITION
                            ? (char *)"NetworkPartition"
                            : (char *)DEFAULT_ERROR_TYPE;
    }
  }
  if (fail && resp.error_type == NULL) {
    resp.error_type = (char *)DEFAULT_ERROR_TYPE; /* expired meanwhile */
  }
  if (decider != NULL) {
    resp.scenario_name = (char *)decider->name;
  }
  af_rpc_reply(rpc, &resp.base);
  af_free(all);
}

/* ------------------------------------------------------------------ */
/* WatchScenarios                                                     */

typedef struct watch_ev {
  af_evq_node_t node; /* first: queued in watch_t.q */
  Antifragility__V1__ScenarioEventKind kind;
  bool has_scenario;
  af_chaos_scenario_t scenario;
  int64_t wall_ns;
  bool stopped;
} watch_ev_t;

typedef struct {
  af_app_t *app;
  af_stream_t *st;
  bool include_active;
  pthread_mutex_t mu;
  /* under mu: */
  bool snapshot_sent;
  af_evq_t q; /* events since the snapshot; dropped = coalesced */
} watch_t;

/* One message being sent; msg first so the free function finds the rest. */
typedef struct {
  Antifragility__V1__WatchScenariosResponse msg;
  Google__Protobuf__Timestamp ts;
  watch_ev_t *ev;
  pb_scenario_t scenario;
  af_chaos_scenario_t *all;
  pb_scenario_t active[LIST_WIRE_MAX];
  Antifragility__V1__ChaosScenario *active_ptrs[LIST_WIRE_MAX];
} watch_out_t;

static void watch_out_free(ProtobufCMessage *msg)
{
  watch_out_t *o = (watch_out_t *)(void *)msg;
  af_free(o->ev);
  af_free(o->all);
  af_free(o);
}

static Antifragility__V1__ScenarioEventKind
ev_kind_to_pb(af_chaos_event_kind_t k)
{
  switch (k) {
  case AF_CHAOS_EV_ACTIVATED:
    return ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_ACTIVATED;
  case AF_CHAOS_EV_DEACTIVATED:
  case AF_CHAOS_EV_REPLACED: /* an ACTIVATED of the same name follows */
    return ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_DEACTIVATED;
  case AF_CHAOS_EV_EXPIRED:
    return ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_EXPIRED;
  case AF_CHAOS_EV_EMERGENCY_STOP:
    return ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_EMERGENCY_STOP;
  case AF_CHAOS_EV_RESET:
    return ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_RESET;
  }
  return ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_UNSPECIFIED;
}

/* Hub callback (hub lock held): queue the event, wake the stream. */
static void watch_on_event(af_stream_t *st, void *user,
                           const af_engine_event_t *ev)
{
  watch_t *w = user;
  if (ev->kind != AF_ENGINE_EV_CHAOS || ev->chaos == NULL) {
    return;
  }
  const af_chaos_event_t *ce = ev->chaos;
  watch_ev_t *e = af_malloc(sizeof *e);
  if (e == NULL) {
    pthread_mutex_lock(&w->mu);
    w->q.dropped++;
    pthread_mutex_unlock(&w->mu);
    af_stream_notify(st);
    return;
  }
  e->kind = ev_kind_to_pb(ce->kind);
  e->has_scenario = ce->scenario != NULL;
  if (e->has_scenario) {
    e->scenario = *ce->scenario;
  }
  e->wall_ns = ce->wall_ns;
  e->stopped =
      ce->kind == AF_CHAOS_EV_EMERGENCY_STOP ||
      (ce->kind != AF_CHAOS_EV_RESET && af_chaos_stopped(chaos_of(w->app)));
  pthread_mutex_lock(&w->mu);
  af_evq_node_t *dropped = af_evq_push(&w->q, &e->node);
  pthread_mutex_unlock(&w->mu);
  af_free(dropped);
  af_stream_notify(st);
}

/* The active list (at most LIST_WIRE_MAX) into o->msg.active. */
static void fill_active(watch_t *w, watch_out_t *o)
{
  size_t n = 0;
  if (af_chaos_list(chaos_of(w->app), &o->all, &n) != AF_OK) {
    o->all = NULL;
    n = 0;
  }
  size_t k = n < LIST_WIRE_MAX ? n : LIST_WIRE_MAX;
  const char *hash = af_engine_hash(w->app->engine);
  for (size_t i = 0; i < k; i++) {
    o->active_ptrs[i] = scenario_to_pb(&o->active[i], &o->all[i], 0, hash);
  }
  o->msg.n_active = k;
  o->msg.active = k > 0 ? o->active_ptrs : NULL;
  o->msg.truncated = n > k;
}

static ProtobufCMessage *watch_fill(af_stream_t *st, bool heartbeat, void *user,
                                    af_msg_free_fn *free_out)
{
  watch_t *w = user;
  watch_out_t *o = af_calloc(1, sizeof *o);
  if (o == NULL) {
    af_log(AF_LOG_ERROR, "WatchScenarios: out of memory, message skipped");
    return NULL;
  }
  af_evq_node_t *stale = NULL;
  pthread_mutex_lock(&w->mu);
  bool first = !w->snapshot_sent;
  if (first) {
    /* Everything queued so far is in the snapshot. */
    w->snapshot_sent = true;
    stale = af_evq_take_all(&w->q);
    w->q.dropped = 0;
  } else {
    o->ev = (watch_ev_t *)(void *)af_evq_pop(&w->q);
  }
  bool more = w->q.head != NULL;
  uint64_t coalesced = w->q.dropped;
  if (first || o->ev != NULL || heartbeat) {
    w->q.dropped = 0;
  }
  pthread_mutex_unlock(&w->mu);
  af_evq_free_list(stale);
  if (!first && o->ev == NULL && !heartbeat) {
    af_free(o);
    return NULL;
  }

  Antifragility__V1__WatchScenariosResponse *m = &o->msg;
  antifragility__v1__watch_scenarios_response__init(m);
  m->sequence = af_stream_seq_next(st);
  m->coalesced = coalesced;
  if (first) {
    m->kind =
        ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_SNAPSHOT;
    m->emergency_stopped = af_chaos_stopped(chaos_of(w->app));
    m->timestamp = af_ts_from_ns(&o->ts, wall_now(w->app));
    fill_active(w, o);
  } else if (o->ev != NULL) {
    const watch_ev_t *e = o->ev;
    m->kind = e->kind;
    if (e->has_scenario) {
      int64_t ended = e->scenario.active ? 0 : e->wall_ns;
      m->scenario = scenario_to_pb(&o->scenario, &e->scenario, ended,
                                   af_engine_hash(w->app->engine));
    }
    m->emergency_stopped = e->stopped;
    m->timestamp = af_ts_from_ns(&o->ts, e->wall_ns);
    if (w->include_active) {
      fill_active(w, o);
    }
  } else {
    m->heartbeat = true;
    m->emergency_stopped = af_chaos_stopped(chaos_of(w->app));
    m->timestamp = af_ts_from_ns(&o->ts, wall_now(w->app));
  }
  if (more) {
    af_stream_notify(st); /* runs the next fill once this one is sent */
  }
  *free_out = watch_out_free;
  return &o->msg.base;
}

static void watch_done(af_stream_t *st, void *user)
{
  watch_t *w = user;
  af_hub_remove(w->app->chaos_hub, st);
  af_evq_free_list(af_evq_take_all(&w->q));
  pthread_mutex_destroy(&w->mu);
  af_free(w);
}

static void on_watch(af_stream_t *st, const ProtobufCMessage *msg, void *ctx)
{
  af_app_t *app = ctx;
  const Antifragility__V1__WatchScenariosRequest *q =
      (const Antifragility__V1__WatchScenariosRequest *)msg;
  watch_t *w = af_calloc(1, sizeof *w);
  if (w == NULL) {
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->app = app;
  w->st = st;
  w->include_active = q->include_active;
  af_evq_init(&w->q, WATCH_QUEUE_MAX);
  pthread_mutex_init(&w->mu, NULL);
  if (af_hub_add(app->chaos_hub, st, w, watch_on_event) != AF_OK) {
    pthread_mutex_destroy(&w->mu);
    af_free(w);
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (af_stream_set_producer(st, watch_fill, watch_done, w) != AF_OK) {
    af_hub_remove(app->chaos_hub, st);
    af_evq_free_list(af_evq_take_all(&w->q));
    pthread_mutex_destroy(&w->mu);
    af_free(w);
  }
}

/* ------------------------------------------------------------------ */
/* Audit log (engine hook)                                            */

static void on_audit(const af_chaos_event_t *ev, void *ctx)
{
  (void)ctx;
  const af_chaos_scenario_t *s = ev->scenario;
  const char *reason = ev->reason != NULL ? ev->reason : "";
  const char *sep = reason[0] != '\0' ? ": " : "";
  switch (ev->kind) {
  case AF_CHAOS_EV_ACTIVATED:
    af_log(AF_LOG_INFO,
           "chaos scenario %s activated by %s (%s on %s for %" PRIu64
           " ms)%s%s",
           s->name, ev->actor, af_chaos_kind_name(s->kind), s->target,
           s->duration_ms, sep, reason);
    break;
  case AF_CHAOS_EV_DEACTIVATED:
    af_log(AF_LOG_INFO, "chaos scenario %s deactivated by %s%s%s", s->name,
           ev->actor, sep, reason);
    break;
  case AF_CHAOS_EV_EXPIRED:
    af_log(AF_LOG_INFO, "chaos scenario %s expired", s->name);
    break;
  case AF_CHAOS_EV_REPLACED:
    af_log(AF_LOG_INFO, "chaos scenario %s replaced by %s", s->name, ev->actor);
    break;
  case AF_CHAOS_EV_EMERGENCY_STOP:
    af_log(AF_LOG_INFO, "chaos emergency stop by %s%s%s", ev->actor, sep,
           reason);
    break;
  case AF_CHAOS_EV_RESET:
    af_log(AF_LOG_INFO, "chaos reset by %s", ev->actor);
    break;
  }
}

/* ------------------------------------------------------------------ */
/* Registration                                                       */

void af_svc_chaos_configure(af_app_t *app, af_engine_config_t *ecfg)
{
  ecfg->on_chaos_audit = on_audit;
  ecfg->audit_ctx = app;
}

af_status_t af_svc_chaos_register(af_app_t *app)
{
  af_svc_chaos_t *svc = af_calloc(1, sizeof *svc);
  if (svc == NULL) {
    return AF_ENOMEM;
  }
  svc->app = app;
  atomic_init(&svc->rejected, 0);
  app->chaos = svc;

  static const struct {
    const char *path;
    const ProtobufCMessageDescriptor *desc;
    af_unary_fn fn;
  } unary[] = {
      {SVC "InjectLatency",
       &antifragility__v1__inject_latency_request__descriptor,
       on_inject_latency},
      {SVC "InjectErrors",
       &antifragility__v1__inject_errors_request__descriptor, on_inject_errors},
      {SVC "ForceCircuitOpen",
       &antifragility__v1__force_circuit_open_request__descriptor,
       on_force_circuit_open},
      {SVC "SimulateResourceExhaustion",
       &antifragility__v1__simulate_resource_exhaustion_request__descriptor,
       on_simulate_resource_exhaustion},
      {SVC "DeactivateScenario",
       &antifragility__v1__deactivate_scenario_request__descriptor,
       on_deactivate},
      {SVC "ListScenarios",
       &antifragility__v1__list_scenarios_request__descriptor, on_list},
      {SVC "EmergencyStop",
       &antifragility__v1__emergency_stop_request__descriptor,
       on_emergency_stop},
      {SVC "ResetChaos", &antifragility__v1__reset_chaos_request__descriptor,
       on_reset},
      {SVC "GetChaosMetrics",
       &antifragility__v1__get_chaos_metrics_request__descriptor, on_metrics},
      {SVC "CheckInjection",
       &antifragility__v1__check_injection_request__descriptor,
       on_check_injection},
  };
  for (size_t i = 0; i < sizeof unary / sizeof *unary; i++) {
    af_status_t st = af_server_add_unary(app->srv, unary[i].path, unary[i].desc,
                                         unary[i].fn, app);
    if (st != AF_OK) {
      return st;
    }
  }
  return af_server_add_server_stream(
      app->srv, SVC "WatchScenarios",
      &antifragility__v1__watch_scenarios_request__descriptor, on_watch, app);
}

void af_svc_chaos_destroy(af_app_t *app)
{
  if (app == NULL || app->chaos == NULL) {
    return;
  }
  af_free(app->chaos);
  app->chaos = NULL;
}
