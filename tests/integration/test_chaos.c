/*
 * test_chaos.c - antifragility.v1.ChaosService against a real in-process
 * afd: every RPC's happy path and refusals (exact messages), self-expiry,
 * forced breakers (state read from the engine, not BreakerService), the
 * emergency-stop latch, CheckInjection, metrics and WatchScenarios
 * (snapshot, events, sequence numbers, coalescing, heartbeat, reaping).
 *
 * Waits are bounded polls on real events; nothing sleeps for a timeout.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af/breaker.h"
#include "af/engine.h"
#include "af_testclient.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "server.h"

#define SVC "/antifragility.v1.ChaosService/"
#define CALL_MS 5000
#define HASH "cdd01ef066bc6cf2"

#define KIND(x) ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_##x
#define RES(x) ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_##x
#define EV(x) ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_##x

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fx_t;

static int start_with(void **state, const af_config_t *cfg)
{
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->ts = af_ts_start(cfg);
  f->c = af_tc_connect(af_ts_port(f->ts));
  *state = f;
  return 0;
}

static int setup(void **state) { return start_with(state, NULL); }

static int setup_heartbeat(void **state)
{
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.heartbeat_ms = 200;
  return start_with(state, &cfg);
}

static int teardown(void **state)
{
  fx_t *f = *state;
  af_tc_close(f->c);
  af_ts_stop(f->ts);
  free(f);
  return 0;
}

/* ------------------------------------------------------------------ */
/* Helpers                                                            */

static ProtobufCMessage *ok_call(fx_t *f, const char *method,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *desc)
{
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(f->c, method, req, desc, &resp, &st, NULL, CALL_MS);
  if (code != GRPC_STATUS_OK) {
    fail_msg("%s: status %d: %s", method, (int)code, st.message);
  }
  return resp;
}

static void expect_fail(fx_t *f, const char *method,
                        const ProtobufCMessage *req,
                        const ProtobufCMessageDescriptor *desc,
                        grpc_status_code code, const char *message)
{
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary(f->c, method, req, desc, &resp, &st, NULL, CALL_MS), code);
  assert_null(resp);
  assert_string_equal(st.message, message);
}

static int64_t dur_ms(const Google__Protobuf__Duration *d)
{
  assert_non_null(d);
  return d->seconds * 1000 + d->nanos / 1000000;
}

static int64_t ts_ms(const Google__Protobuf__Timestamp *t)
{
  assert_non_null(t);
  return t->seconds * 1000 + t->nanos / 1000000;
}

static Antifragility__V1__InjectLatencyResponse *
latency(fx_t *f, const char *target, int64_t delay_ms, const char *actor)
{
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.seconds = delay_ms / 1000;
  d.nanos = (int32_t)((delay_ms % 1000) * 1000000);
  Antifragility__V1__InjectLatencyRequest q =
      ANTIFRAGILITY__V1__INJECT_LATENCY_REQUEST__INIT;
  q.target = (char *)target;
  q.delay = &d;
  q.actor = (char *)actor;
  return (void *)ok_call(
      f, SVC "InjectLatency", &q.base,
      &antifragility__v1__inject_latency_response__descriptor);
}

/* InjectErrors at rate; duration_ms 0 = unset. Returns the scenario name
 * (static buffer). */
static const char *errors(fx_t *f, const char *target, double rate,
                          int64_t duration_ms)
{
  static char name[300];
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.seconds = duration_ms / 1000;
  d.nanos = (int32_t)((duration_ms % 1000) * 1000000);
  Antifragility__V1__InjectErrorsRequest q =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  q.target = (char *)target;
  q.error_rate = rate;
  q.duration = duration_ms > 0 ? &d : NULL;
  Antifragility__V1__InjectErrorsResponse *r =
      (void *)ok_call(f, SVC "InjectErrors", &q.base,
                      &antifragility__v1__inject_errors_response__descriptor);
  assert_non_null(r->scenario);
  snprintf(name, sizeof name, "%s", r->scenario->name);
  protobuf_c_message_free_unpacked(&r->base, NULL);
  return name;
}

static Antifragility__V1__ListScenariosResponse *list(fx_t *f)
{
  Antifragility__V1__ListScenariosRequest q =
      ANTIFRAGILITY__V1__LIST_SCENARIOS_REQUEST__INIT;
  return (void *)ok_call(
      f, SVC "ListScenarios", &q.base,
      &antifragility__v1__list_scenarios_response__descriptor);
}

static size_t active_count(fx_t *f)
{
  Antifragility__V1__ListScenariosResponse *l = list(f);
  size_t n = l->n_scenarios;
  protobuf_c_message_free_unpacked(&l->base, NULL);
  return n;
}

static Antifragility__V1__GetChaosMetricsResponse *metrics(fx_t *f)
{
  Antifragility__V1__GetChaosMetricsRequest q =
      ANTIFRAGILITY__V1__GET_CHAOS_METRICS_REQUEST__INIT;
  return (void *)ok_call(
      f, SVC "GetChaosMetrics", &q.base,
      &antifragility__v1__get_chaos_metrics_response__descriptor);
}

static Antifragility__V1__CheckInjectionResponse *check(fx_t *f,
                                                        const char *target)
{
  Antifragility__V1__CheckInjectionRequest q =
      ANTIFRAGILITY__V1__CHECK_INJECTION_REQUEST__INIT;
  q.target = (char *)target;
  return (void *)ok_call(
      f, SVC "CheckInjection", &q.base,
      &antifragility__v1__check_injection_response__descriptor);
}

static Antifragility__V1__EmergencyStopResponse *stop(fx_t *f)
{
  Antifragility__V1__EmergencyStopRequest q =
      ANTIFRAGILITY__V1__EMERGENCY_STOP_REQUEST__INIT;
  q.reason = "drill";
  q.actor = "tester";
  return (void *)ok_call(
      f, SVC "EmergencyStop", &q.base,
      &antifragility__v1__emergency_stop_response__descriptor);
}

static Antifragility__V1__ResetChaosResponse *reset(fx_t *f)
{
  Antifragility__V1__ResetChaosRequest q =
      ANTIFRAGILITY__V1__RESET_CHAOS_REQUEST__INIT;
  q.actor = "tester";
  return (void *)ok_call(f, SVC "ResetChaos", &q.base,
                         &antifragility__v1__reset_chaos_response__descriptor);
}

static af_breaker_state_t breaker_state(fx_t *f, const char *name)
{
  af_breaker_t *b = NULL;
  assert_int_equal(af_breaker_registry_find(
                       af_engine_breakers(af_ts_engine(f->ts)), name, &b),
                   AF_OK);
  af_breaker_state_t s = af_breaker_state(b);
  af_breaker_release(b);
  return s;
}

static af_tc_stream_t *watch(fx_t *f, bool include_active)
{
  Antifragility__V1__WatchScenariosRequest q =
      ANTIFRAGILITY__V1__WATCH_SCENARIOS_REQUEST__INIT;
  q.include_active = include_active;
  return af_tc_stream_open(
      f->c, SVC "WatchScenarios", &q.base,
      &antifragility__v1__watch_scenarios_response__descriptor, NULL, 60000);
}

static Antifragility__V1__WatchScenariosResponse *next_msg(af_tc_stream_t *s,
                                                           int wait_ms)
{
  ProtobufCMessage *m = NULL;
  int r = af_tc_stream_next(s, wait_ms, &m);
  if (r != 1) {
    fail_msg("no WatchScenarios message within %d ms (%d)", wait_ms, r);
  }
  return (void *)m;
}

static void free_msg(void *m)
{
  protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
}

/* ------------------------------------------------------------------ */
/* InjectLatency                                                      */

static void inject_latency_returns_the_active_scenario(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__InjectLatencyResponse *r = latency(f, "api", 250, "me");
  Antifragility__V1__ChaosScenario *s = r->scenario;
  assert_non_null(s);
  assert_string_equal(s->name, "latency_api_250ms");
  assert_int_equal(s->kind, KIND(LATENCY));
  assert_string_equal(s->target, "api");
  assert_int_equal(dur_ms(s->delay), 250);
  assert_int_equal(dur_ms(s->duration), 10000); /* the default */
  assert_int_equal(s->n_blast_radius, 1);
  assert_string_equal(s->blast_radius[0], "api");
  assert_true(s->active);
  assert_string_equal(s->actor, "me");
  assert_string_equal(s->constitutional_hash, HASH);
  assert_int_equal(ts_ms(s->expires_at) - ts_ms(s->started_at), 10000);
  assert_null(s->ended_at);
  free_msg(r);

  /* Own name, capped duration, blast radius, caller = peer address. */
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.seconds = 9000; /* 2.5 h: capped at 300 s */
  Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
  delay.seconds = 60; /* clamped to the 5000 ms maximum */
  char *blast[] = {"api", "db"};
  Antifragility__V1__InjectLatencyRequest q =
      ANTIFRAGILITY__V1__INJECT_LATENCY_REQUEST__INIT;
  q.target = "api";
  q.delay = &delay;
  q.duration = &d;
  q.n_blast_radius = 2;
  q.blast_radius = blast;
  q.name = "slow-api";
  q.reason = "game day";
  q.constitutional_hash = HASH;
  r = (void *)ok_call(f, SVC "InjectLatency", &q.base,
                      &antifragility__v1__inject_latency_response__descriptor);
  s = r->scenario;
  assert_string_equal(s->name, "slow-api");
  assert_int_equal(dur_ms(s->duration), 300000);
  assert_int_equal(dur_ms(s->delay), 5000);
  assert_int_equal(s->n_blast_radius, 2);
  assert_string_equal(s->reason, "game day");
  assert_true(strncmp(s->actor, "ipv4:127.0.0.1:", 15) == 0 ||
              strncmp(s->actor, "ipv6:", 5) == 0);
  free_msg(r);

  Antifragility__V1__CheckInjectionResponse *c = check(f, "db");
  assert_true(c->inject_latency);
  assert_int_equal(dur_ms(c->delay), 5000);
  assert_false(c->inject_error);
  assert_string_equal(c->scenario_name, "slow-api");
  free_msg(c);
  assert_int_equal(active_count(f), 2);
}

static void inject_latency_refusals_have_exact_messages(void **state)
{
  fx_t *f = *state;
  const ProtobufCMessageDescriptor *rd =
      &antifragility__v1__inject_latency_response__descriptor;
  Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
  delay.seconds = 0;
  delay.nanos = 100000000;
  Antifragility__V1__InjectLatencyRequest q =
      ANTIFRAGILITY__V1__INJECT_LATENCY_REQUEST__INIT;
  q.delay = &delay;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "target is required");
  q.target = "bad\x01name";
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "target must be 1-128 bytes of printable UTF-8");
  q.target = "api";
  q.delay = NULL;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "delay must be greater than 0");
  q.delay = &delay;

  Google__Protobuf__Duration neg = GOOGLE__PROTOBUF__DURATION__INIT;
  neg.seconds = -1;
  q.duration = &neg;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "duration must be between 0 and 31536000000 ms");
  q.duration = NULL;

  char *nine[] = {"api", "a", "b", "c", "d", "e", "f", "g", "h"};
  q.n_blast_radius = 9;
  q.blast_radius = nine;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "blast_radius must have at most 8 entries");
  char *other[] = {"db", "cache"};
  q.n_blast_radius = 2;
  q.blast_radius = other;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "Target 'api' is not in the blast radius");
  char *empty[] = {"api", ""};
  q.blast_radius = empty;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "blast_radius is required");
  q.n_blast_radius = 0;
  q.blast_radius = NULL;

  q.name = "bad\nname";
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "name must be 1-128 bytes of printable UTF-8");
  q.name = NULL;

  char longs[300];
  memset(longs, 'r', sizeof longs);
  longs[257] = '\0';
  q.reason = longs;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "reason must be at most 256 bytes");
  q.reason = NULL;
  longs[129] = '\0';
  q.actor = longs;
  expect_fail(f, SVC "InjectLatency", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "actor must be at most 128 bytes");
  q.actor = NULL;

  q.constitutional_hash = "deadbeefdeadbeef";
  expect_fail(f, SVC "InjectLatency", &q.base, rd,
              GRPC_STATUS_FAILED_PRECONDITION,
              "Constitutional hash mismatch: expected 'cdd01ef0...', got "
              "'deadbeef...' (context: ChaosScenario 'latency_api_100ms')");

  /* Nothing changed; every refusal was counted. */
  assert_int_equal(active_count(f), 0);
  Antifragility__V1__GetChaosMetricsResponse *m = metrics(f);
  assert_int_equal(m->total_scenarios, 0);
  assert_int_equal(m->rejected_activations, 11);
  free_msg(m);
}

/* ------------------------------------------------------------------ */
/* InjectErrors, SimulateResourceExhaustion                           */

static void inject_errors_validates_rate_and_carries_error_type(void **state)
{
  fx_t *f = *state;
  const ProtobufCMessageDescriptor *rd =
      &antifragility__v1__inject_errors_response__descriptor;
  Antifragility__V1__InjectErrorsRequest q =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  q.target = "api";
  const double bad[] = {1.5, -0.1, NAN, INFINITY};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    q.error_rate = bad[i];
    expect_fail(f, SVC "InjectErrors", &q.base, rd,
                GRPC_STATUS_INVALID_ARGUMENT,
                "error_rate must be between 0.0 and 1.0");
  }
  char longs[200];
  memset(longs, 'e', sizeof longs);
  longs[129] = '\0';
  q.error_rate = 0.5;
  q.error_type = longs;
  expect_fail(f, SVC "InjectErrors", &q.base, rd, GRPC_STATUS_INVALID_ARGUMENT,
              "error_type must be at most 128 bytes");
  assert_int_equal(active_count(f), 0);

  q.error_type = NULL;
  Antifragility__V1__InjectErrorsResponse *r =
      (void *)ok_call(f, SVC "InjectErrors", &q.base, rd);
  assert_string_equal(r->scenario->name, "errors_api_0.5");
  assert_int_equal(r->scenario->kind, KIND(ERROR));
  assert_true(r->scenario->error_rate == 0.5);
  assert_string_equal(r->scenario->error_type, "Exception");
  assert_null(r->scenario->delay);
  free_msg(r);

  q.target = "db";
  q.error_rate = 1.0;
  q.error_type = "TimeoutError";
  r = (void *)ok_call(f, SVC "InjectErrors", &q.base, rd);
  assert_string_equal(r->scenario->name, "errors_db_1.0");
  assert_string_equal(r->scenario->error_type, "TimeoutError");
  free_msg(r);
  Antifragility__V1__CheckInjectionResponse *c = check(f, "db");
  assert_true(c->inject_error);
  assert_string_equal(c->error_type, "TimeoutError");
  assert_string_equal(c->scenario_name, "errors_db_1.0");
  free_msg(c);
}

static void
simulate_resource_exhaustion_validates_and_defaults_to_system(void **state)
{
  fx_t *f = *state;
  const ProtobufCMessageDescriptor *rd =
      &antifragility__v1__simulate_resource_exhaustion_response__descriptor;
  Antifragility__V1__SimulateResourceExhaustionRequest q =
      ANTIFRAGILITY__V1__SIMULATE_RESOURCE_EXHAUSTION_REQUEST__INIT;
  q.resource_type = RES(MEMORY);
  q.resource_level = 1.5;
  expect_fail(f, SVC "SimulateResourceExhaustion", &q.base, rd,
              GRPC_STATUS_INVALID_ARGUMENT,
              "resource_level must be between 0.0 and 1.0, got 1.5");
  q.resource_level = -0.25;
  expect_fail(f, SVC "SimulateResourceExhaustion", &q.base, rd,
              GRPC_STATUS_INVALID_ARGUMENT,
              "resource_level must be between 0.0 and 1.0, got -0.25");
  q.resource_level = 0.8;
  q.resource_type = RES(UNSPECIFIED);
  expect_fail(f, SVC "SimulateResourceExhaustion", &q.base, rd,
              GRPC_STATUS_INVALID_ARGUMENT,
              "resource_type must be one of cpu, memory, connections, "
              "disk_io, network_bandwidth");
  q.resource_type = (Antifragility__V1__ResourceType)42;
  expect_fail(f, SVC "SimulateResourceExhaustion", &q.base, rd,
              GRPC_STATUS_INVALID_ARGUMENT,
              "resource_type must be one of cpu, memory, connections, "
              "disk_io, network_bandwidth");
  assert_int_equal(active_count(f), 0);

  q.resource_type = RES(MEMORY);
  Antifragility__V1__SimulateResourceExhaustionResponse *r =
      (void *)ok_call(f, SVC "SimulateResourceExhaustion", &q.base, rd);
  Antifragility__V1__ChaosScenario *s = r->scenario;
  assert_string_equal(s->name, "resource_memory_0.8");
  assert_int_equal(s->kind, KIND(RESOURCE_EXHAUSTION));
  assert_string_equal(s->target, "system");
  assert_int_equal(s->resource_type, RES(MEMORY));
  assert_true(s->resource_level == 0.8);
  free_msg(r);

  Antifragility__V1__CheckInjectionResponse *c = check(f, "system");
  assert_false(c->inject_latency);
  assert_false(c->inject_error);
  assert_true(c->resource_level == 0.8);
  assert_int_equal(c->resource_type, RES(MEMORY));
  assert_string_equal(c->scenario_name, "resource_memory_0.8");
  free_msg(c);
}

/* ------------------------------------------------------------------ */
/* ForceCircuitOpen, DeactivateScenario                               */

static void
force_circuit_open_forces_breaker_and_deactivate_closes_it(void **state)
{
  fx_t *f = *state;
  const ProtobufCMessageDescriptor *rd =
      &antifragility__v1__force_circuit_open_response__descriptor;
  Antifragility__V1__ForceCircuitOpenRequest q =
      ANTIFRAGILITY__V1__FORCE_CIRCUIT_OPEN_REQUEST__INIT;
  expect_fail(f, SVC "ForceCircuitOpen", &q.base, rd,
              GRPC_STATUS_INVALID_ARGUMENT, "breaker_name is required");
  q.breaker_name = "payments";
  q.actor = "tester";
  Antifragility__V1__ForceCircuitOpenResponse *r =
      (void *)ok_call(f, SVC "ForceCircuitOpen", &q.base, rd);
  assert_string_equal(r->scenario->name, "circuit_open_payments");
  assert_int_equal(r->scenario->kind, KIND(CIRCUIT_BREAKER));
  assert_string_equal(r->scenario->target, "payments");
  free_msg(r);
  assert_int_equal(breaker_state(f, "payments"), AF_BREAKER_FORCED_OPEN);

  const ProtobufCMessageDescriptor *dd =
      &antifragility__v1__deactivate_scenario_response__descriptor;
  Antifragility__V1__DeactivateScenarioRequest dq =
      ANTIFRAGILITY__V1__DEACTIVATE_SCENARIO_REQUEST__INIT;
  expect_fail(f, SVC "DeactivateScenario", &dq.base, dd,
              GRPC_STATUS_INVALID_ARGUMENT, "name is required");
  dq.name = "circuit_open_payments";
  dq.actor = "tester";
  dq.reason = "done";
  Antifragility__V1__DeactivateScenarioResponse *d =
      (void *)ok_call(f, SVC "DeactivateScenario", &dq.base, dd);
  assert_string_equal(d->scenario->name, "circuit_open_payments");
  assert_false(d->scenario->active);
  assert_non_null(d->scenario->ended_at);
  free_msg(d);
  assert_int_equal(breaker_state(f, "payments"), AF_BREAKER_CLOSED);
  assert_int_equal(active_count(f), 0);

  expect_fail(f, SVC "DeactivateScenario", &dq.base, dd, GRPC_STATUS_NOT_FOUND,
              "scenario circuit_open_payments not found");
  dq.name = "never-was";
  expect_fail(f, SVC "DeactivateScenario", &dq.base, dd, GRPC_STATUS_NOT_FOUND,
              "scenario never-was not found");
}

/* ------------------------------------------------------------------ */
/* EmergencyStop, ResetChaos, ListScenarios                           */

static void emergency_stop_latches_until_reset(void **state)
{
  fx_t *f = *state;
  free_msg(latency(f, "api", 100, "tester"));
  errors(f, "db", 0.5, 0);
  Antifragility__V1__ForceCircuitOpenRequest fq =
      ANTIFRAGILITY__V1__FORCE_CIRCUIT_OPEN_REQUEST__INIT;
  fq.breaker_name = "payments";
  free_msg(
      ok_call(f, SVC "ForceCircuitOpen", &fq.base,
              &antifragility__v1__force_circuit_open_response__descriptor));
  Antifragility__V1__ListScenariosResponse *l = list(f);
  assert_int_equal(l->n_scenarios, 3);
  assert_string_equal(l->scenarios[0]->name, "latency_api_100ms");
  assert_string_equal(l->scenarios[1]->name, "errors_db_0.5");
  assert_string_equal(l->scenarios[2]->name, "circuit_open_payments");
  assert_false(l->emergency_stopped);
  assert_false(l->truncated);
  free_msg(l);

  Antifragility__V1__EmergencyStopResponse *s = stop(f);
  assert_int_equal(s->deactivated, 3);
  assert_non_null(s->stopped_at);
  free_msg(s);
  assert_int_equal(breaker_state(f, "payments"), AF_BREAKER_CLOSED);
  l = list(f);
  assert_int_equal(l->n_scenarios, 0);
  assert_true(l->emergency_stopped);
  free_msg(l);

  const char *msg = "Cannot activate chaos scenario: emergency stop is active";
  Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
  delay.seconds = 1;
  Antifragility__V1__InjectLatencyRequest lq =
      ANTIFRAGILITY__V1__INJECT_LATENCY_REQUEST__INIT;
  lq.target = "api";
  lq.delay = &delay;
  expect_fail(f, SVC "InjectLatency", &lq.base,
              &antifragility__v1__inject_latency_response__descriptor,
              GRPC_STATUS_FAILED_PRECONDITION, msg);
  expect_fail(f, SVC "ForceCircuitOpen", &fq.base,
              &antifragility__v1__force_circuit_open_response__descriptor,
              GRPC_STATUS_FAILED_PRECONDITION, msg);
  Antifragility__V1__InjectErrorsRequest eq =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  eq.target = "api";
  eq.error_rate = 0.5;
  expect_fail(f, SVC "InjectErrors", &eq.base,
              &antifragility__v1__inject_errors_response__descriptor,
              GRPC_STATUS_FAILED_PRECONDITION, msg);
  Antifragility__V1__SimulateResourceExhaustionRequest rq =
      ANTIFRAGILITY__V1__SIMULATE_RESOURCE_EXHAUSTION_REQUEST__INIT;
  rq.resource_type = RES(CPU);
  rq.resource_level = 0.5;
  expect_fail(
      f, SVC "SimulateResourceExhaustion", &rq.base,
      &antifragility__v1__simulate_resource_exhaustion_response__descriptor,
      GRPC_STATUS_FAILED_PRECONDITION, msg);
  /* Stopping again is allowed. */
  s = stop(f);
  assert_int_equal(s->deactivated, 0);
  free_msg(s);

  Antifragility__V1__ResetChaosResponse *r = reset(f);
  assert_int_equal(r->deactivated, 0);
  assert_true(r->emergency_stop_released);
  free_msg(r);
  errors(f, "api", 0.5, 0);
  free_msg(latency(f, "api", 100, "tester"));
  r = reset(f);
  assert_int_equal(r->deactivated, 2);
  assert_false(r->emergency_stop_released);
  free_msg(r);
  assert_int_equal(active_count(f), 0);
}

static void list_is_cut_at_16_and_says_truncated(void **state)
{
  fx_t *f = *state;
  char target[32];
  for (int i = 0; i < 20; i++) {
    snprintf(target, sizeof target, "svc-%02d", i);
    errors(f, target, 0.25, 0);
  }
  Antifragility__V1__ListScenariosResponse *l = list(f);
  assert_int_equal(l->n_scenarios, 16);
  assert_true(l->truncated);
  assert_string_equal(l->scenarios[0]->name, "errors_svc-00_0.25");
  free_msg(l);
  Antifragility__V1__GetChaosMetricsResponse *m = metrics(f);
  assert_int_equal(m->active_scenarios, 20);
  free_msg(m);
}

/* ------------------------------------------------------------------ */
/* CheckInjection, metrics                                            */

static void check_injection_reports_nothing_without_chaos(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__CheckInjectionResponse *c = check(f, "api");
  assert_false(c->inject_latency);
  assert_null(c->delay);
  assert_false(c->inject_error);
  assert_true(c->resource_level == 0.0);
  assert_int_equal(c->resource_type, RES(UNSPECIFIED));
  assert_string_equal(c->scenario_name, "");
  free_msg(c);

  Antifragility__V1__CheckInjectionRequest q =
      ANTIFRAGILITY__V1__CHECK_INJECTION_REQUEST__INIT;
  expect_fail(f, SVC "CheckInjection", &q.base,
              &antifragility__v1__check_injection_response__descriptor,
              GRPC_STATUS_INVALID_ARGUMENT, "target is required");

  /* error_rate 1.0 always injects; outside the blast radius nothing. */
  const char *name = errors(f, "api", 1.0, 0);
  for (int i = 0; i < 5; i++) {
    c = check(f, "api");
    assert_true(c->inject_error);
    assert_string_equal(c->error_type, "Exception");
    assert_string_equal(c->scenario_name, name);
    free_msg(c);
  }
  c = check(f, "elsewhere");
  assert_false(c->inject_error);
  assert_string_equal(c->scenario_name, "");
  free_msg(c);
  /* error_rate 0.0 never does. */
  errors(f, "db", 0.0, 0);
  c = check(f, "db");
  assert_false(c->inject_error);
  free_msg(c);
}

static void metrics_count_activations_injections_and_refusals(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__GetChaosMetricsResponse *m = metrics(f);
  assert_int_equal(m->total_scenarios, 0);
  assert_int_equal(m->active_scenarios, 0);
  assert_int_equal(m->total_injections, 0);
  assert_false(m->emergency_stopped);
  assert_string_equal(m->constitutional_hash, HASH);
  free_msg(m);

  errors(f, "api", 1.0, 0);
  free_msg(latency(f, "api", 50, "tester"));
  for (int i = 0; i < 3; i++) {
    free_msg(check(f, "api"));
  }
  Antifragility__V1__InjectErrorsRequest bad =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  bad.target = "api";
  bad.error_rate = 2.0; /* refused by the core */
  expect_fail(f, SVC "InjectErrors", &bad.base,
              &antifragility__v1__inject_errors_response__descriptor,
              GRPC_STATUS_INVALID_ARGUMENT,
              "error_rate must be between 0.0 and 1.0");
  bad.target = ""; /* refused by the service */
  expect_fail(f, SVC "InjectErrors", &bad.base,
              &antifragility__v1__inject_errors_response__descriptor,
              GRPC_STATUS_INVALID_ARGUMENT, "target is required");
  Antifragility__V1__DeactivateScenarioRequest dq =
      ANTIFRAGILITY__V1__DEACTIVATE_SCENARIO_REQUEST__INIT;
  dq.name = "latency_api_50ms";
  free_msg(
      ok_call(f, SVC "DeactivateScenario", &dq.base,
              &antifragility__v1__deactivate_scenario_response__descriptor));
  free_msg(stop(f));

  m = metrics(f);
  assert_int_equal(m->total_scenarios, 2);
  assert_int_equal(m->active_scenarios, 0);
  assert_int_equal(m->latency_injections, 3);
  assert_int_equal(m->error_injections, 3);
  assert_int_equal(m->total_injections, 6);
  assert_int_equal(m->deactivated_scenarios, 2); /* one by call, one by stop */
  assert_int_equal(m->expired_scenarios, 0);
  assert_int_equal(m->rejected_activations, 2);
  assert_int_equal(m->emergency_stops, 1);
  assert_true(m->emergency_stopped);
  free_msg(m);
}

/* ------------------------------------------------------------------ */
/* Expiry and WatchScenarios                                          */

static void scenario_expires_by_itself_and_watch_sees_it(void **state)
{
  fx_t *f = *state;
  errors(f, "before", 0.5, 0);
  af_tc_stream_t *s = watch(f, false);
  Antifragility__V1__WatchScenariosResponse *m = next_msg(s, 2000);
  assert_int_equal(m->sequence, 1);
  assert_int_equal(m->kind, EV(SNAPSHOT));
  assert_int_equal(m->n_active, 1);
  assert_string_equal(m->active[0]->name, "errors_before_0.5");
  assert_false(m->emergency_stopped);
  assert_non_null(m->timestamp);
  free_msg(m);

  int64_t t0 = af_tc_now_ms();
  const char *name = errors(f, "brief", 1.0, 300);
  m = next_msg(s, 2000);
  assert_int_equal(m->sequence, 2);
  assert_int_equal(m->kind, EV(ACTIVATED));
  assert_non_null(m->scenario);
  assert_string_equal(m->scenario->name, name);
  assert_true(m->scenario->active);
  assert_int_equal(dur_ms(m->scenario->duration), 300);
  assert_int_equal(m->n_active, 0); /* include_active not asked */
  free_msg(m);

  m = next_msg(s, 3000);
  assert_int_equal(m->sequence, 3);
  assert_int_equal(m->kind, EV(EXPIRED));
  assert_string_equal(m->scenario->name, name);
  assert_false(m->scenario->active);
  assert_non_null(m->scenario->ended_at);
  free_msg(m);
  assert_true(af_tc_now_ms() - t0 >= 250);

  Antifragility__V1__CheckInjectionResponse *c = check(f, "brief");
  assert_false(c->inject_error);
  free_msg(c);
  assert_int_equal(active_count(f), 1);
  Antifragility__V1__GetChaosMetricsResponse *mm = metrics(f);
  assert_int_equal(mm->expired_scenarios, 1);
  free_msg(mm);
  af_tc_stream_close(s);
}

static void watch_reports_deactivation_stop_and_reset(void **state)
{
  fx_t *f = *state;
  af_tc_stream_t *s = watch(f, true);
  Antifragility__V1__WatchScenariosResponse *m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(SNAPSHOT));
  assert_int_equal(m->n_active, 0);
  free_msg(m);

  free_msg(latency(f, "api", 100, "watcher"));
  m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(ACTIVATED));
  assert_string_equal(m->scenario->actor, "watcher");
  assert_int_equal(m->n_active, 1); /* include_active */
  free_msg(m);

  Antifragility__V1__DeactivateScenarioRequest dq =
      ANTIFRAGILITY__V1__DEACTIVATE_SCENARIO_REQUEST__INIT;
  dq.name = "latency_api_100ms";
  dq.actor = "watcher";
  free_msg(
      ok_call(f, SVC "DeactivateScenario", &dq.base,
              &antifragility__v1__deactivate_scenario_response__descriptor));
  m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(DEACTIVATED));
  assert_string_equal(m->scenario->name, "latency_api_100ms");
  assert_false(m->scenario->active);
  assert_int_equal(m->n_active, 0);
  free_msg(m);

  errors(f, "api", 0.5, 0);
  m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(ACTIVATED));
  free_msg(m);
  free_msg(stop(f));
  m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(DEACTIVATED));
  assert_string_equal(m->scenario->name, "errors_api_0.5");
  free_msg(m);
  m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(EMERGENCY_STOP));
  assert_null(m->scenario);
  assert_true(m->emergency_stopped);
  uint64_t seq = m->sequence;
  free_msg(m);
  free_msg(reset(f));
  m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(RESET));
  assert_false(m->emergency_stopped);
  assert_int_equal(m->sequence, seq + 1);
  free_msg(m);
  af_tc_stream_close(s);
}

/* A consumer that falls behind a burst of events loses the oldest ones;
 * the message that follows a loss says how many. Sequence numbers have no
 * gaps and messages + coalesced account for every event. */
static void slow_watcher_is_coalesced_and_accounts_for_every_event(void **state)
{
  fx_t *f = *state;
  /* Big messages (16 scenarios each) so flow control stops the sends. */
  char target[32];
  for (int i = 0; i < 16; i++) {
    snprintf(target, sizeof target, "fill-%02d", i);
    errors(f, target, 0.5, 0);
  }
  af_tc_stream_t *s = watch(f, true);
  Antifragility__V1__WatchScenariosResponse *m = next_msg(s, 2000);
  assert_int_equal(m->kind, EV(SNAPSHOT));
  assert_int_equal(m->n_active, 16);
  free_msg(m);

  /* A burst straight into the engine, faster than any stream can send:
   * each round is REPLACED + ACTIVATED = 2 events. */
  const int rounds = 2000;
  af_chaos_t *chaos = af_engine_chaos(af_ts_engine(f->ts));
  af_chaos_request_t r;
  af_chaos_request_init(&r, AF_CHAOS_ERROR, "fill-00");
  r.error_rate = 0.5;
  for (int i = 0; i < rounds; i++) {
    assert_int_equal(af_chaos_activate(chaos, &r, NULL, NULL), AF_OK);
  }
  free_msg(stop(f)); /* 16 DEACTIVATED + 1 EMERGENCY_STOP: the last event */
  uint64_t events = (uint64_t)rounds * 2 + 17;

  uint64_t seen = 0, coalesced = 0, expect_seq = 2;
  for (;;) {
    m = next_msg(s, 5000);
    assert_int_equal(m->sequence, expect_seq);
    expect_seq++;
    assert_false(m->heartbeat);
    seen++;
    coalesced += m->coalesced;
    bool last = m->kind == EV(EMERGENCY_STOP);
    free_msg(m);
    if (last) {
      break;
    }
  }
  assert_int_equal(seen + coalesced, events);
  assert_true(coalesced > 0);
  assert_true(seen < events);
  af_tc_stream_close(s);
}

static void watch_cancellation_reaps_the_stream(void **state)
{
  fx_t *f = *state;
  af_server_stats_t stats;
  af_tc_stream_t *s = watch(f, false);
  free_msg(next_msg(s, 2000));
  af_server_stats(af_ts_server(f->ts), &stats);
  assert_int_equal(stats.streams_open, 1);
  af_tc_stream_cancel(s);
  assert_int_equal(af_tc_stream_status(s, 2000, NULL), GRPC_STATUS_CANCELLED);
  int64_t deadline = af_tc_now_ms() + 3000;
  do {
    af_server_stats(af_ts_server(f->ts), &stats);
  } while (stats.streams_open != 0 && af_tc_now_ms() < deadline);
  assert_int_equal(stats.streams_open, 0);
  af_tc_stream_close(s);
  /* Events after the reap reach nobody and harm nothing. */
  errors(f, "api", 0.5, 0);
  assert_int_equal(active_count(f), 1);
}

static void watch_sends_heartbeats_when_idle(void **state)
{
  fx_t *f = *state;
  af_tc_stream_t *s = watch(f, false);
  free_msg(next_msg(s, 2000));
  Antifragility__V1__WatchScenariosResponse *m = next_msg(s, 3000);
  assert_true(m->heartbeat);
  assert_int_equal(m->sequence, 2);
  assert_int_equal(m->kind, EV(UNSPECIFIED));
  assert_null(m->scenario);
  free_msg(m);
  af_tc_stream_close(s);
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(inject_latency_returns_the_active_scenario),
      T(inject_latency_refusals_have_exact_messages),
      T(inject_errors_validates_rate_and_carries_error_type),
      T(simulate_resource_exhaustion_validates_and_defaults_to_system),
      T(force_circuit_open_forces_breaker_and_deactivate_closes_it),
      T(emergency_stop_latches_until_reset),
      T(list_is_cut_at_16_and_says_truncated),
      T(check_injection_reports_nothing_without_chaos),
      T(metrics_count_activations_injections_and_refusals),
      T(scenario_expires_by_itself_and_watch_sees_it),
      T(watch_reports_deactivation_stop_and_reset),
      T(slow_watcher_is_coalesced_and_accounts_for_every_event),
      T(watch_cancellation_reaps_the_stream),
      cmocka_unit_test_setup_teardown(watch_sends_heartbeats_when_idle,
                                      setup_heartbeat, teardown),
  };
  const char *filter = getenv("AF_TEST_FILTER"); /* e.g. "watch_*" */
  if (filter != NULL) {
    cmocka_set_test_filter(filter);
  }
  return cmocka_run_group_tests_name("integration_chaos", tests, NULL, NULL);
}
