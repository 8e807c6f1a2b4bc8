/*
 * test_wire.c - the generated wire code agrees with itself across
 * generators: messages encoded by nanopb (client side) decode with
 * protobuf-c (server side) field by field, and back; nanopb's fixed limits
 * hold; the embedded descriptor set (reflection) unpacks and names every
 * service and RPC of DESIGN.md section 4 with the right streaming shape; the
 * protobuf-c service descriptors name the same RPCs.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <pb_decode.h>
#include <pb_encode.h>

#include "af_descriptor_set.h"

#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "antifragility/v1/metering.pb-c.h"
#include "antifragility/v1/recovery.pb-c.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

#include "antifragility/v1/breaker.pb.h"
#include "antifragility/v1/chaos.pb.h"
#include "antifragility/v1/health.pb.h"
#include "antifragility/v1/metering.pb.h"
#include "antifragility/v1/recovery.pb.h"

#define BUF_CAP (512u * 1024u)
static uint8_t g_buf[BUF_CAP];

static size_t nano_encode(const pb_msgdesc_t *fields, const void *msg)
{
  pb_ostream_t os = pb_ostream_from_buffer(g_buf, BUF_CAP);
  bool ok = pb_encode(&os, fields, msg);
  if (!ok)
    fail_msg("pb_encode: %s", PB_GET_ERROR(&os));
  return os.bytes_written;
}

static bool nano_decode(const pb_msgdesc_t *fields, void *msg, size_t len)
{
  pb_istream_t is = pb_istream_from_buffer(g_buf, len);
  return pb_decode(&is, fields, msg);
}

static size_t pbc_pack(const ProtobufCMessage *msg)
{
  size_t n = protobuf_c_message_get_packed_size(msg);
  assert_true(n <= BUF_CAP);
  assert_int_equal(protobuf_c_message_pack(msg, g_buf), n);
  return n;
}

/* Fills s (capacity cap) with n copies of c. */
static void fill(char *s, size_t cap, size_t n, char c)
{
  assert_true(n < cap);
  memset(s, c, n);
  s[n] = '\0';
}

/* ---- message round trips ---------------------------------------------- */

static void usage_event_survives_nanopb_to_protobuf_c_to_nanopb(void **state)
{
  (void)state;
  antifragility_v1_RecordUsageRequest *in = calloc(1, sizeof(*in));
  antifragility_v1_RecordUsageRequest *back = calloc(1, sizeof(*back));
  assert_non_null(in);
  assert_non_null(back);
  in->has_event = true;
  antifragility_v1_UsageEvent *ev = &in->event;
  strcpy(ev->tenant_id, "tenant-123");
  strcpy(ev->event_id, "evt-0001");
  strcpy(ev->agent_id, "agent_a");
  ev->operation = antifragility_v1_MeterableOperation_OPERATION_HITL_APPROVAL;
  ev->tier = antifragility_v1_MeteringTier_METERING_TIER_ENTERPRISE;
  ev->units = 3;
  ev->tokens_processed = 1ull << 40;
  ev->latency_ms = 2.5;
  ev->compliance_score = 0.97;
  ev->constitutional_valid = true;
  ev->has_timestamp = true;
  ev->timestamp.seconds = 1700000000;
  ev->timestamp.nanos = 123456789;
  ev->metadata_count = 2;
  strcpy(ev->metadata[0].key, "from_agent");
  strcpy(ev->metadata[0].value, "agent_a");
  strcpy(ev->metadata[1].key, "message_type");
  strcpy(ev->metadata[1].value, "governance_request");
  strcpy(ev->constitutional_hash, "cdd01ef066bc6cf2");

  size_t n = nano_encode(antifragility_v1_RecordUsageRequest_fields, in);
  Antifragility__V1__RecordUsageRequest *p =
      antifragility__v1__record_usage_request__unpack(NULL, n, g_buf);
  assert_non_null(p);
  Antifragility__V1__UsageEvent *pe = p->event;
  assert_non_null(pe);
  assert_string_equal(pe->tenant_id, "tenant-123");
  assert_string_equal(pe->event_id, "evt-0001");
  assert_string_equal(pe->agent_id, "agent_a");
  assert_int_equal(
      pe->operation,
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_HITL_APPROVAL);
  assert_int_equal(pe->tier,
                   ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_ENTERPRISE);
  assert_int_equal(pe->units, 3);
  assert_true(pe->tokens_processed == (1ull << 40));
  assert_true(pe->latency_ms == 2.5);
  assert_true(pe->compliance_score == 0.97);
  assert_true(pe->constitutional_valid);
  assert_non_null(pe->timestamp);
  assert_int_equal(pe->timestamp->seconds, 1700000000);
  assert_int_equal(pe->timestamp->nanos, 123456789);
  assert_int_equal(pe->n_metadata, 2);
  assert_string_equal(pe->metadata[0]->key, "from_agent");
  assert_string_equal(pe->metadata[0]->value, "agent_a");
  assert_string_equal(pe->metadata[1]->key, "message_type");
  assert_string_equal(pe->metadata[1]->value, "governance_request");
  assert_string_equal(pe->constitutional_hash, "cdd01ef066bc6cf2");

  size_t m = pbc_pack(&p->base);
  assert_int_equal(m, n);
  antifragility__v1__record_usage_request__free_unpacked(p, NULL);
  assert_true(nano_decode(antifragility_v1_RecordUsageRequest_fields, back, m));
  assert_memory_equal(in, back, sizeof(*in));
  free(in);
  free(back);
}

static void
breaker_info_survives_protobuf_c_to_nanopb_to_protobuf_c(void **state)
{
  (void)state;
  Antifragility__V1__BreakerConfig cfg =
      ANTIFRAGILITY__V1__BREAKER_CONFIG__INIT;
  Google__Protobuf__UInt32Value fail_max = GOOGLE__PROTOBUF__UINT32_VALUE__INIT;
  Google__Protobuf__UInt32Value half_open =
      GOOGLE__PROTOBUF__UINT32_VALUE__INIT;
  Google__Protobuf__DoubleValue weight = GOOGLE__PROTOBUF__DOUBLE_VALUE__INIT;
  Google__Protobuf__Duration reset = GOOGLE__PROTOBUF__DURATION__INIT;
  Google__Protobuf__Timestamp t1 = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  Google__Protobuf__Timestamp t2 = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  char *excluded[] = {"ValueError", "grpc.StatusCode.NOT_FOUND"};
  char *instances[] = {"pod-a", "pod-b", "pod-c"};
  fail_max.value = 5;
  half_open.value = 2;
  weight.value = 0.25;
  reset.seconds = 30;
  reset.nanos = 500000000;
  cfg.fail_max = &fail_max;
  cfg.reset_timeout = &reset;
  cfg.half_open_max_calls = &half_open;
  cfg.weight = &weight;
  cfg.n_excluded_errors = 2;
  cfg.excluded_errors = excluded;
  cfg.description = "policy engine";
  t1.seconds = 1700000001;
  t2.seconds = 1700000031;
  t2.nanos = 7;

  Antifragility__V1__BreakerInfo info = ANTIFRAGILITY__V1__BREAKER_INFO__INIT;
  info.name = "policy_service";
  info.state = ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_OPEN;
  info.fail_counter = 12;
  info.success_counter = 34;
  info.rejected_count = 56;
  info.consecutive_failures = 5;
  info.config = &cfg;
  info.last_transition = &t1;
  info.next_half_open_at = &t2;
  info.n_instance_ids = 3;
  info.instance_ids = instances;
  info.constitutional_hash = "cdd01ef066bc6cf2";
  Antifragility__V1__GetBreakerResponse resp =
      ANTIFRAGILITY__V1__GET_BREAKER_RESPONSE__INIT;
  resp.breaker = &info;
  size_t n = pbc_pack(&resp.base);

  antifragility_v1_GetBreakerResponse *nb = calloc(1, sizeof(*nb));
  assert_non_null(nb);
  assert_true(nano_decode(antifragility_v1_GetBreakerResponse_fields, nb, n));
  assert_true(nb->has_breaker);
  const antifragility_v1_BreakerInfo *b = &nb->breaker;
  assert_string_equal(b->name, "policy_service");
  assert_int_equal(b->state, antifragility_v1_BreakerState_BREAKER_STATE_OPEN);
  assert_int_equal(b->fail_counter, 12);
  assert_int_equal(b->success_counter, 34);
  assert_int_equal(b->rejected_count, 56);
  assert_int_equal(b->consecutive_failures, 5);
  assert_int_equal(b->consecutive_successes, 0);
  assert_true(b->has_config);
  assert_true(b->config.has_fail_max);
  assert_int_equal(b->config.fail_max.value, 5);
  assert_true(b->config.has_reset_timeout);
  assert_int_equal(b->config.reset_timeout.seconds, 30);
  assert_int_equal(b->config.reset_timeout.nanos, 500000000);
  assert_true(b->config.has_half_open_max_calls);
  assert_int_equal(b->config.half_open_max_calls.value, 2);
  assert_false(b->config.has_success_threshold);
  assert_true(b->config.has_weight);
  assert_true(b->config.weight.value == 0.25);
  assert_int_equal(b->config.excluded_errors_count, 2);
  assert_string_equal(b->config.excluded_errors[0], "ValueError");
  assert_string_equal(b->config.excluded_errors[1],
                      "grpc.StatusCode.NOT_FOUND");
  assert_string_equal(b->config.description, "policy engine");
  assert_true(b->has_last_transition);
  assert_int_equal(b->last_transition.seconds, 1700000001);
  assert_false(b->has_last_report);
  assert_true(b->has_next_half_open_at);
  assert_int_equal(b->next_half_open_at.seconds, 1700000031);
  assert_int_equal(b->next_half_open_at.nanos, 7);
  assert_false(b->has_registered_at);
  assert_int_equal(b->instance_ids_count, 3);
  assert_string_equal(b->instance_ids[2], "pod-c");
  assert_false(b->stale);
  assert_string_equal(b->constitutional_hash, "cdd01ef066bc6cf2");

  size_t m = nano_encode(antifragility_v1_GetBreakerResponse_fields, nb);
  assert_int_equal(m, n);
  Antifragility__V1__GetBreakerResponse *p =
      antifragility__v1__get_breaker_response__unpack(NULL, m, g_buf);
  assert_non_null(p);
  assert_string_equal(p->breaker->name, "policy_service");
  assert_int_equal(p->breaker->config->fail_max->value, 5);
  assert_null(p->breaker->config->success_threshold);
  assert_null(p->breaker->last_report);
  assert_string_equal(p->breaker->instance_ids[0], "pod-a");
  antifragility__v1__get_breaker_response__free_unpacked(p, NULL);
  free(nb);
}

static void
unset_wrappers_stay_unset_and_present_zero_stays_present(void **state)
{
  (void)state;
  antifragility_v1_SetRecoveryPolicyRequest *in = calloc(1, sizeof(*in));
  assert_non_null(in);
  strcpy(in->service_name, "vector_search");
  in->has_policy = true;
  in->policy.has_max_retry_attempts = true;
  in->policy.max_retry_attempts.value = 0; /* present, must be refused */
  in->policy.has_initial_delay = true;     /* present zero Duration */
  in->policy.probe = antifragility_v1_ProbeKind_PROBE_KIND_GRPC_HEALTH;
  in->policy.jitter = antifragility_v1_JitterMode_JITTER_MODE_DECORRELATED;
  strcpy(in->policy.probe_target, "127.0.0.1:50052");
  strcpy(in->policy.probe_service, "vector.v1.Search");
  in->policy.has_probe_timeout = true;
  in->policy.probe_timeout.nanos = 250000000;

  size_t n = nano_encode(antifragility_v1_SetRecoveryPolicyRequest_fields, in);
  Antifragility__V1__SetRecoveryPolicyRequest *p =
      antifragility__v1__set_recovery_policy_request__unpack(NULL, n, g_buf);
  assert_non_null(p);
  assert_string_equal(p->service_name, "vector_search");
  Antifragility__V1__RecoveryPolicy *pol = p->policy;
  assert_non_null(pol);
  assert_non_null(pol->max_retry_attempts);
  assert_int_equal(pol->max_retry_attempts->value, 0);
  assert_null(pol->backoff_multiplier);
  assert_non_null(pol->initial_delay);
  assert_int_equal(pol->initial_delay->seconds, 0);
  assert_null(pol->max_delay);
  assert_int_equal(pol->probe,
                   ANTIFRAGILITY__V1__PROBE_KIND__PROBE_KIND_GRPC_HEALTH);
  assert_int_equal(pol->jitter,
                   ANTIFRAGILITY__V1__JITTER_MODE__JITTER_MODE_DECORRELATED);
  assert_string_equal(pol->probe_target, "127.0.0.1:50052");
  assert_string_equal(pol->probe_service, "vector.v1.Search");
  assert_int_equal(pol->probe_timeout->nanos, 250000000);
  assert_string_equal(p->constitutional_hash, "");
  antifragility__v1__set_recovery_policy_request__free_unpacked(p, NULL);
  free(in);
}

static void
health_watch_message_carries_report_sequence_and_details(void **state)
{
  (void)state;
  antifragility_v1_WatchHealthResponse *in = calloc(1, sizeof(*in));
  antifragility_v1_WatchHealthResponse *back = calloc(1, sizeof(*back));
  assert_non_null(in);
  assert_non_null(back);
  in->sequence = UINT64_MAX - 1;
  in->changed = true;
  in->previous_status = antifragility_v1_HealthStatus_HEALTH_STATUS_HEALTHY;
  in->has_report = true;
  antifragility_v1_SystemHealthReport *r = &in->report;
  r->status = antifragility_v1_HealthStatus_HEALTH_STATUS_DEGRADED;
  r->health_score = 0.5625;
  r->has_timestamp = true;
  r->timestamp.seconds = 1700000100;
  r->total_breakers = 64;
  r->closed_breakers = 40;
  r->half_open_breakers = 8;
  r->open_breakers = 16;
  r->circuit_details_count = 64; /* the limit */
  for (pb_size_t i = 0; i < 64; i++) {
    antifragility_v1_CircuitDetail *d = &r->circuit_details[i];
    snprintf(d->name, sizeof(d->name), "svc-%02u", (unsigned)i);
    d->state = i < 40   ? antifragility_v1_BreakerState_BREAKER_STATE_CLOSED
               : i < 48 ? antifragility_v1_BreakerState_BREAKER_STATE_HALF_OPEN
                        : antifragility_v1_BreakerState_BREAKER_STATE_OPEN;
    d->fail_counter = i;
    d->weight = 1.0;
    d->has_last_report = true;
    d->last_report.seconds = 1700000000 + (int64_t)i;
  }
  r->degraded_services_count = 1;
  strcpy(r->degraded_services[0], "svc-40");
  r->critical_services_count = 2;
  strcpy(r->critical_services[0], "svc-48");
  strcpy(r->critical_services[1], "svc-63");
  r->truncated = true;
  strcpy(r->constitutional_hash, "cdd01ef066bc6cf2");

  size_t n = nano_encode(antifragility_v1_WatchHealthResponse_fields, in);
  Antifragility__V1__WatchHealthResponse *p =
      antifragility__v1__watch_health_response__unpack(NULL, n, g_buf);
  assert_non_null(p);
  assert_true(p->sequence == UINT64_MAX - 1);
  assert_false(p->heartbeat);
  assert_true(p->changed);
  assert_int_equal(p->previous_status,
                   ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_HEALTHY);
  Antifragility__V1__SystemHealthReport *pr = p->report;
  assert_int_equal(pr->status,
                   ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_DEGRADED);
  assert_true(pr->health_score == 0.5625);
  assert_int_equal(pr->timestamp->seconds, 1700000100);
  assert_int_equal(pr->total_breakers, 64);
  assert_int_equal(pr->closed_breakers, 40);
  assert_int_equal(pr->half_open_breakers, 8);
  assert_int_equal(pr->open_breakers, 16);
  assert_int_equal(pr->n_circuit_details, 64);
  assert_string_equal(pr->circuit_details[47]->name, "svc-47");
  assert_int_equal(pr->circuit_details[47]->state,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_HALF_OPEN);
  assert_int_equal(pr->circuit_details[63]->fail_counter, 63);
  assert_int_equal(pr->circuit_details[63]->last_report->seconds, 1700000063);
  assert_null(pr->circuit_details[0]->last_transition);
  assert_int_equal(pr->n_degraded_services, 1);
  assert_string_equal(pr->degraded_services[0], "svc-40");
  assert_int_equal(pr->n_critical_services, 2);
  assert_string_equal(pr->critical_services[1], "svc-63");
  assert_int_equal(pr->n_stale_services, 0);
  assert_true(pr->truncated);
  assert_string_equal(pr->constitutional_hash, "cdd01ef066bc6cf2");

  size_t m = pbc_pack(&p->base);
  assert_int_equal(m, n);
  antifragility__v1__watch_health_response__free_unpacked(p, NULL);
  assert_true(
      nano_decode(antifragility_v1_WatchHealthResponse_fields, back, m));
  assert_memory_equal(in, back, sizeof(*in));
  free(in);
  free(back);
}

static void
chaos_scenarios_round_trip_with_durations_and_blast_radius(void **state)
{
  (void)state;
  Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
  Google__Protobuf__Duration dur = GOOGLE__PROTOBUF__DURATION__INIT;
  Google__Protobuf__Timestamp started = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  Google__Protobuf__Timestamp expires = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  char *radius[] = {"message_processor", "policy_service"};
  delay.nanos = 100000000; /* 100 ms */
  dur.seconds = 10;
  started.seconds = 1700000200;
  expires.seconds = 1700000210;
  Antifragility__V1__ChaosScenario sc[2];
  Antifragility__V1__ChaosScenario *scp[2] = {&sc[0], &sc[1]};
  for (size_t i = 0; i < 2; i++) {
    Antifragility__V1__ChaosScenario init =
        ANTIFRAGILITY__V1__CHAOS_SCENARIO__INIT;
    sc[i] = init;
    sc[i].target = "message_processor";
    sc[i].duration = &dur;
    sc[i].n_blast_radius = 2;
    sc[i].blast_radius = radius;
    sc[i].active = 1;
    sc[i].started_at = &started;
    sc[i].expires_at = &expires;
    sc[i].actor = "ops";
    sc[i].reason = "game day";
    sc[i].constitutional_hash = "cdd01ef066bc6cf2";
  }
  sc[0].name = "latency-1";
  sc[0].kind = ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_LATENCY;
  sc[0].delay = &delay;
  sc[0].injections = 42;
  sc[1].name = "exhaust-1";
  sc[1].kind = ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_RESOURCE_EXHAUSTION;
  sc[1].resource_type = ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_DISK_IO;
  sc[1].resource_level = 0.75;
  Antifragility__V1__ListScenariosResponse resp =
      ANTIFRAGILITY__V1__LIST_SCENARIOS_RESPONSE__INIT;
  resp.n_scenarios = 2;
  resp.scenarios = scp;
  resp.emergency_stopped = 0;
  size_t n = pbc_pack(&resp.base);

  antifragility_v1_ListScenariosResponse *nb = calloc(1, sizeof(*nb));
  assert_non_null(nb);
  assert_true(
      nano_decode(antifragility_v1_ListScenariosResponse_fields, nb, n));
  assert_int_equal(nb->scenarios_count, 2);
  const antifragility_v1_ChaosScenario *a = &nb->scenarios[0];
  const antifragility_v1_ChaosScenario *b = &nb->scenarios[1];
  assert_string_equal(a->name, "latency-1");
  assert_int_equal(a->kind, antifragility_v1_ChaosKind_CHAOS_KIND_LATENCY);
  assert_true(a->has_delay);
  assert_int_equal(a->delay.seconds, 0);
  assert_int_equal(a->delay.nanos, 100000000);
  assert_int_equal(a->duration.seconds, 10);
  assert_int_equal(a->blast_radius_count, 2);
  assert_string_equal(a->blast_radius[1], "policy_service");
  assert_true(a->active);
  assert_int_equal(a->started_at.seconds, 1700000200);
  assert_int_equal(a->expires_at.seconds, 1700000210);
  assert_false(a->has_ended_at);
  assert_int_equal(a->injections, 42);
  assert_string_equal(a->actor, "ops");
  assert_string_equal(a->reason, "game day");
  assert_string_equal(b->name, "exhaust-1");
  assert_int_equal(b->kind,
                   antifragility_v1_ChaosKind_CHAOS_KIND_RESOURCE_EXHAUSTION);
  assert_false(b->has_delay);
  assert_int_equal(b->resource_type,
                   antifragility_v1_ResourceType_RESOURCE_TYPE_DISK_IO);
  assert_true(b->resource_level == 0.75);
  assert_false(nb->emergency_stopped);

  size_t m = nano_encode(antifragility_v1_ListScenariosResponse_fields, nb);
  assert_int_equal(m, n);
  Antifragility__V1__ListScenariosResponse *p =
      antifragility__v1__list_scenarios_response__unpack(NULL, m, g_buf);
  assert_non_null(p);
  assert_int_equal(p->n_scenarios, 2);
  assert_int_equal(p->scenarios[0]->delay->nanos, 100000000);
  assert_null(p->scenarios[1]->delay);
  antifragility__v1__list_scenarios_response__free_unpacked(p, NULL);
  free(nb);
}

static void check_injection_and_emergency_stop_round_trip(void **state)
{
  (void)state;
  Google__Protobuf__Duration delay = GOOGLE__PROTOBUF__DURATION__INIT;
  delay.nanos = 5000000;
  Antifragility__V1__CheckInjectionResponse r =
      ANTIFRAGILITY__V1__CHECK_INJECTION_RESPONSE__INIT;
  r.inject_latency = 1;
  r.delay = &delay;
  r.inject_error = 1;
  r.error_type = "TimeoutError";
  r.resource_level = 0.5;
  r.resource_type = ANTIFRAGILITY__V1__RESOURCE_TYPE__RESOURCE_TYPE_CONNECTIONS;
  r.scenario_name = "latency-1";
  size_t n = pbc_pack(&r.base);
  antifragility_v1_CheckInjectionResponse nr =
      antifragility_v1_CheckInjectionResponse_init_zero;
  assert_true(
      nano_decode(antifragility_v1_CheckInjectionResponse_fields, &nr, n));
  assert_true(nr.inject_latency);
  assert_int_equal(nr.delay.nanos, 5000000);
  assert_true(nr.inject_error);
  assert_string_equal(nr.error_type, "TimeoutError");
  assert_true(nr.resource_level == 0.5);
  assert_int_equal(nr.resource_type,
                   antifragility_v1_ResourceType_RESOURCE_TYPE_CONNECTIONS);
  assert_string_equal(nr.scenario_name, "latency-1");

  antifragility_v1_EmergencyStopRequest req =
      antifragility_v1_EmergencyStopRequest_init_zero;
  strcpy(req.reason, "latency spike in prod");
  strcpy(req.actor, "oncall");
  n = nano_encode(antifragility_v1_EmergencyStopRequest_fields, &req);
  Antifragility__V1__EmergencyStopRequest *p =
      antifragility__v1__emergency_stop_request__unpack(NULL, n, g_buf);
  assert_non_null(p);
  assert_string_equal(p->reason, "latency spike in prod");
  assert_string_equal(p->actor, "oncall");
  antifragility__v1__emergency_stop_request__free_unpacked(p, NULL);
}

static void
watch_breakers_heartbeat_is_distinguishable_from_an_event(void **state)
{
  (void)state;
  antifragility_v1_WatchBreakersResponse *hb = calloc(1, sizeof(*hb));
  assert_non_null(hb);
  hb->sequence = 7;
  hb->heartbeat = true;
  size_t n = nano_encode(antifragility_v1_WatchBreakersResponse_fields, hb);
  Antifragility__V1__WatchBreakersResponse *p =
      antifragility__v1__watch_breakers_response__unpack(NULL, n, g_buf);
  assert_non_null(p);
  assert_int_equal(p->sequence, 7);
  assert_true(p->heartbeat);
  assert_int_equal(
      p->kind,
      ANTIFRAGILITY__V1__BREAKER_EVENT_KIND__BREAKER_EVENT_KIND_UNSPECIFIED);
  assert_null(p->breaker);
  antifragility__v1__watch_breakers_response__free_unpacked(p, NULL);

  memset(hb, 0, sizeof(*hb));
  hb->sequence = 8;
  hb->kind = antifragility_v1_BreakerEventKind_BREAKER_EVENT_KIND_TRANSITION;
  hb->has_breaker = true;
  strcpy(hb->breaker.name, "audit_ledger");
  hb->from_state = antifragility_v1_BreakerState_BREAKER_STATE_HALF_OPEN;
  hb->to_state = antifragility_v1_BreakerState_BREAKER_STATE_CLOSED;
  n = nano_encode(antifragility_v1_WatchBreakersResponse_fields, hb);
  p = antifragility__v1__watch_breakers_response__unpack(NULL, n, g_buf);
  assert_non_null(p);
  assert_false(p->heartbeat);
  assert_int_equal(
      p->kind,
      ANTIFRAGILITY__V1__BREAKER_EVENT_KIND__BREAKER_EVENT_KIND_TRANSITION);
  assert_string_equal(p->breaker->name, "audit_ledger");
  assert_int_equal(p->from_state,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_HALF_OPEN);
  assert_int_equal(p->to_state,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_CLOSED);
  antifragility__v1__watch_breakers_response__free_unpacked(p, NULL);
  free(hb);
}

/* ---- nanopb limits ---------------------------------------------------- */

static void name_of_128_bytes_decodes_and_129_is_refused_by_nanopb(void **state)
{
  (void)state;
  char name[200];
  Antifragility__V1__GetBreakerRequest r =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  antifragility_v1_GetBreakerRequest nr =
      antifragility_v1_GetBreakerRequest_init_zero;
  r.name = name;

  fill(name, sizeof(name), 128, 'x');
  size_t n = pbc_pack(&r.base);
  assert_true(nano_decode(antifragility_v1_GetBreakerRequest_fields, &nr, n));
  assert_int_equal(strlen(nr.name), 128);

  fill(name, sizeof(name), 129, 'x');
  n = pbc_pack(&r.base);
  assert_false(nano_decode(antifragility_v1_GetBreakerRequest_fields, &nr, n));
}

static void nine_excluded_errors_are_refused_by_nanopb(void **state)
{
  (void)state;
  char *errs[9] = {"E0", "E1", "E2", "E3", "E4", "E5", "E6", "E7", "E8"};
  Antifragility__V1__BreakerConfig cfg =
      ANTIFRAGILITY__V1__BREAKER_CONFIG__INIT;
  Antifragility__V1__RegisterBreakerRequest r =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  r.name = "b";
  r.config = &cfg;
  cfg.excluded_errors = errs;
  antifragility_v1_RegisterBreakerRequest *nr = calloc(1, sizeof(*nr));
  assert_non_null(nr);

  cfg.n_excluded_errors = 8;
  size_t n = pbc_pack(&r.base);
  assert_true(
      nano_decode(antifragility_v1_RegisterBreakerRequest_fields, nr, n));
  assert_int_equal(nr->config.excluded_errors_count, 8);
  assert_string_equal(nr->config.excluded_errors[7], "E7");

  cfg.n_excluded_errors = 9;
  n = pbc_pack(&r.base);
  memset(nr, 0, sizeof(*nr));
  assert_false(
      nano_decode(antifragility_v1_RegisterBreakerRequest_fields, nr, n));
  free(nr);
}

static void
metadata_of_16_entries_fits_and_17_is_refused_by_nanopb(void **state)
{
  (void)state;
  Antifragility__V1__UsageEvent__MetadataEntry e[17];
  Antifragility__V1__UsageEvent__MetadataEntry *ep[17];
  char keys[17][8];
  for (size_t i = 0; i < 17; i++) {
    Antifragility__V1__UsageEvent__MetadataEntry init =
        ANTIFRAGILITY__V1__USAGE_EVENT__METADATA_ENTRY__INIT;
    e[i] = init;
    snprintf(keys[i], sizeof(keys[i]), "k%zu", i);
    e[i].key = keys[i];
    e[i].value = "v";
    ep[i] = &e[i];
  }
  Antifragility__V1__UsageEvent ev = ANTIFRAGILITY__V1__USAGE_EVENT__INIT;
  ev.tenant_id = "t";
  ev.event_id = "e";
  ev.metadata = ep;
  antifragility_v1_UsageEvent *nev = calloc(1, sizeof(*nev));
  assert_non_null(nev);

  ev.n_metadata = 16;
  size_t n = pbc_pack(&ev.base);
  assert_true(nano_decode(antifragility_v1_UsageEvent_fields, nev, n));
  assert_int_equal(nev->metadata_count, 16);
  assert_string_equal(nev->metadata[15].key, "k15");

  ev.n_metadata = 17;
  n = pbc_pack(&ev.base);
  memset(nev, 0, sizeof(*nev));
  assert_false(nano_decode(antifragility_v1_UsageEvent_fields, nev, n));
  free(nev);
}

static void largest_messages_fit_nanopb_and_grpc_default_limits(void **state)
{
  (void)state;
  /* nanopb is built without PB_FIELD_32BIT: every struct < 64 KiB. */
  assert_true(sizeof(antifragility_v1_ListBreakersResponse) < 65536);
  assert_true(sizeof(antifragility_v1_WatchHealthResponse) < 65536);
  assert_true(sizeof(antifragility_v1_GetHealthHistoryResponse) < 65536);
  assert_true(sizeof(antifragility_v1_GetRecoveryStatusResponse) < 65536);
  assert_true(sizeof(antifragility_v1_WatchScenariosResponse) < 65536);
  assert_true(sizeof(antifragility_v1_QueryUsageResponse) < 65536);
  /* gRPC's default max receive size is 4 MiB. */
  assert_true(antifragility_v1_ListBreakersResponse_size < 4 * 1024 * 1024);
  assert_true(antifragility_v1_WatchScenariosResponse_size < 4 * 1024 * 1024);
  assert_true(antifragility_v1_GetRecoveryStatusResponse_size <
              4 * 1024 * 1024);
  assert_true(antifragility_v1_QueryUsageResponse_size < 4 * 1024 * 1024);
}

static void enum_numbers_agree_between_generators(void **state)
{
  (void)state;
  assert_int_equal(antifragility_v1_BreakerState_BREAKER_STATE_FORCED_OPEN,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_FORCED_OPEN);
  assert_int_equal(antifragility_v1_BreakerState_BREAKER_STATE_DISABLED, 5);
  assert_int_equal(antifragility_v1_HealthStatus_HEALTH_STATUS_CRITICAL,
                   ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_CRITICAL);
  assert_int_equal(
      antifragility_v1_RecoveryState_RECOVERY_STATE_AWAITING_MANUAL,
      ANTIFRAGILITY__V1__RECOVERY_STATE__RECOVERY_STATE_AWAITING_MANUAL);
  assert_int_equal(antifragility_v1_ChaosKind_CHAOS_KIND_TIMEOUT,
                   ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_TIMEOUT);
  assert_int_equal(
      antifragility_v1_MeterableOperation_OPERATION_BLOCKCHAIN_ANCHOR,
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_BLOCKCHAIN_ANCHOR);
  assert_int_equal(antifragility_v1_UsageGroupBy_USAGE_GROUP_BY_TIER,
                   ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_TIER);
}

/* ---- descriptor set and service names --------------------------------- */

typedef struct {
  const char *service; /* fully qualified */
  const char *method;
  bool client_streaming;
  bool server_streaming;
  const char *input; /* fully qualified, with leading dot */
  const char *output;
} rpc_t;

#define U(svc, m)                                                              \
  {                                                                            \
    "antifragility.v1." svc, m, false, false,                                  \
        ".antifragility.v1." m "Request", ".antifragility.v1." m "Response"    \
  }
#define SS(svc, m)                                                             \
  {                                                                            \
    "antifragility.v1." svc, m, false, true, ".antifragility.v1." m "Request", \
        ".antifragility.v1." m "Response"                                      \
  }

/* DESIGN.md section 4: these names are part of the contract. */
static const rpc_t k_rpcs[] = {
    U("BreakerService", "RegisterBreaker"),
    U("BreakerService", "ReportOutcome"),
    {"antifragility.v1.BreakerService", "ReportOutcomes", true, false,
     ".antifragility.v1.ReportOutcomeRequest",
     ".antifragility.v1.ReportOutcomesResponse"},
    U("BreakerService", "ReportState"),
    U("BreakerService", "GetBreaker"),
    U("BreakerService", "ListBreakers"),
    U("BreakerService", "ResetBreaker"),
    U("BreakerService", "ResetAllBreakers"),
    U("BreakerService", "UnregisterBreaker"),
    SS("BreakerService", "WatchBreakers"),
    U("HealthService", "GetSystemHealth"),
    U("HealthService", "GetHealthHistory"),
    SS("HealthService", "WatchHealth"),
    U("HealthService", "GetHealthMetrics"),
    U("RecoveryService", "ScheduleRecovery"),
    U("RecoveryService", "ExecuteRecovery"),
    U("RecoveryService", "CancelRecovery"),
    U("RecoveryService", "ApproveRecovery"),
    U("RecoveryService", "GetRecoveryStatus"),
    U("RecoveryService", "SetRecoveryPolicy"),
    U("RecoveryService", "GetRecoveryPolicy"),
    SS("RecoveryService", "WatchRecovery"),
    U("ChaosService", "InjectLatency"),
    U("ChaosService", "InjectErrors"),
    U("ChaosService", "ForceCircuitOpen"),
    U("ChaosService", "SimulateResourceExhaustion"),
    U("ChaosService", "DeactivateScenario"),
    U("ChaosService", "ListScenarios"),
    U("ChaosService", "EmergencyStop"),
    U("ChaosService", "ResetChaos"),
    U("ChaosService", "GetChaosMetrics"),
    U("ChaosService", "CheckInjection"),
    SS("ChaosService", "WatchScenarios"),
    U("MeteringService", "RecordUsage"),
    {"antifragility.v1.MeteringService", "RecordUsageStream", true, false,
     ".antifragility.v1.RecordUsageRequest",
     ".antifragility.v1.RecordUsageStreamResponse"},
    U("MeteringService", "QueryUsage"),
    U("MeteringService", "GetMeteringMetrics"),
};
#define N_RPCS (sizeof(k_rpcs) / sizeof(k_rpcs[0]))

static const char *const k_services[] = {
    "antifragility.v1.BreakerService",
    "antifragility.v1.HealthService",
    "antifragility.v1.RecoveryService",
    "antifragility.v1.ChaosService",
    "antifragility.v1.MeteringService",
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
};
#define N_SERVICES (sizeof(k_services) / sizeof(k_services[0]))

static int fds_setup(void **state)
{
  Google__Protobuf__FileDescriptorSet *fds =
      google__protobuf__file_descriptor_set__unpack(NULL, af_descriptor_set_len,
                                                    af_descriptor_set);
  *state = fds;
  return fds == NULL ? -1 : 0;
}

static int fds_teardown(void **state)
{
  google__protobuf__file_descriptor_set__free_unpacked(*state, NULL);
  return 0;
}

static const Google__Protobuf__ServiceDescriptorProto *
find_service(const Google__Protobuf__FileDescriptorSet *fds, const char *fq,
             const Google__Protobuf__FileDescriptorProto **file_out)
{
  for (size_t f = 0; f < fds->n_file; f++) {
    const Google__Protobuf__FileDescriptorProto *file = fds->file[f];
    size_t plen = file->package ? strlen(file->package) : 0;
    if (plen == 0 || strncmp(fq, file->package, plen) != 0 || fq[plen] != '.')
      continue;
    for (size_t s = 0; s < file->n_service; s++) {
      if (strcmp(file->service[s]->name, fq + plen + 1) == 0) {
        if (file_out)
          *file_out = file;
        return file->service[s];
      }
    }
  }
  return NULL;
}

static void descriptor_set_is_non_empty_and_lists_every_service(void **state)
{
  const Google__Protobuf__FileDescriptorSet *fds = *state;
  assert_true(af_descriptor_set_len > 1000);
  /* 6 of ours + timestamp, duration, wrappers + health + 2 reflection. */
  assert_int_equal(fds->n_file, 12);
  size_t n_services = 0;
  for (size_t f = 0; f < fds->n_file; f++)
    n_services += fds->file[f]->n_service;
  assert_int_equal(n_services, N_SERVICES);
  for (size_t i = 0; i < N_SERVICES; i++) {
    const Google__Protobuf__FileDescriptorProto *file = NULL;
    if (find_service(fds, k_services[i], &file) == NULL)
      fail_msg("service %s missing from the descriptor set", k_services[i]);
    assert_string_equal(file->syntax, "proto3");
  }
}

static void
descriptor_set_methods_match_design_with_streaming_shape(void **state)
{
  const Google__Protobuf__FileDescriptorSet *fds = *state;
  size_t per_service[5] = {0};
  for (size_t i = 0; i < N_RPCS; i++) {
    const rpc_t *r = &k_rpcs[i];
    const Google__Protobuf__ServiceDescriptorProto *svc =
        find_service(fds, r->service, NULL);
    assert_non_null(svc);
    const Google__Protobuf__MethodDescriptorProto *m = NULL;
    for (size_t j = 0; j < svc->n_method; j++)
      if (strcmp(svc->method[j]->name, r->method) == 0)
        m = svc->method[j];
    if (m == NULL)
      fail_msg("%s/%s missing", r->service, r->method);
    assert_string_equal(m->input_type, r->input);
    assert_string_equal(m->output_type, r->output);
    assert_int_equal(m->has_client_streaming && m->client_streaming,
                     r->client_streaming);
    assert_int_equal(m->has_server_streaming && m->server_streaming,
                     r->server_streaming);
    for (size_t s = 0; s < 5; s++)
      if (strcmp(r->service, k_services[s]) == 0)
        per_service[s]++;
  }
  /* No RPC beyond the design's. */
  for (size_t s = 0; s < 5; s++)
    assert_int_equal(find_service(fds, k_services[s], NULL)->n_method,
                     per_service[s]);
}

static void descriptor_set_carries_no_source_info(void **state)
{
  /* Built without --include_source_info, so what reflection serves stays
   * small (comments live in the .proto files). */
  const Google__Protobuf__FileDescriptorSet *fds = *state;
  for (size_t f = 0; f < fds->n_file; f++)
    assert_null(fds->file[f]->source_code_info);
}

static void generated_service_descriptors_name_every_rpc(void **state)
{
  (void)state;
  const ProtobufCServiceDescriptor *descs[] = {
      &antifragility__v1__breaker_service__descriptor,
      &antifragility__v1__health_service__descriptor,
      &antifragility__v1__recovery_service__descriptor,
      &antifragility__v1__chaos_service__descriptor,
      &antifragility__v1__metering_service__descriptor,
      &grpc__health__v1__health__descriptor,
      &grpc__reflection__v1__server_reflection__descriptor,
  };
  for (size_t s = 0; s < 7; s++)
    assert_string_equal(descs[s]->name, k_services[s]);
  assert_int_equal(antifragility__v1__breaker_service__descriptor.n_methods,
                   10);
  assert_int_equal(antifragility__v1__health_service__descriptor.n_methods, 4);
  assert_int_equal(antifragility__v1__recovery_service__descriptor.n_methods,
                   8);
  assert_int_equal(antifragility__v1__chaos_service__descriptor.n_methods, 11);
  assert_int_equal(antifragility__v1__metering_service__descriptor.n_methods,
                   4);
  for (size_t i = 0; i < N_RPCS; i++) {
    const rpc_t *r = &k_rpcs[i];
    const ProtobufCServiceDescriptor *d = NULL;
    for (size_t s = 0; s < 5; s++)
      if (strcmp(descs[s]->name, r->service) == 0)
        d = descs[s];
    assert_non_null(d);
    const ProtobufCMethodDescriptor *m =
        protobuf_c_service_descriptor_get_method_by_name(d, r->method);
    if (m == NULL)
      fail_msg("protobuf-c: %s/%s missing", r->service, r->method);
    /* protobuf-c names types without the leading dot. */
    assert_string_equal(m->input->name, r->input + 1);
    assert_string_equal(m->output->name, r->output + 1);
  }
  const ProtobufCMethodDescriptor *check =
      protobuf_c_service_descriptor_get_method_by_name(
          &grpc__health__v1__health__descriptor, "Check");
  assert_non_null(check);
  assert_non_null(protobuf_c_service_descriptor_get_method_by_name(
      &grpc__reflection__v1__server_reflection__descriptor,
      "ServerReflectionInfo"));
}

int main(void)
{
  const struct CMUnitTest wire[] = {
      cmocka_unit_test(usage_event_survives_nanopb_to_protobuf_c_to_nanopb),
      cmocka_unit_test(
          breaker_info_survives_protobuf_c_to_nanopb_to_protobuf_c),
      cmocka_unit_test(
          unset_wrappers_stay_unset_and_present_zero_stays_present),
      cmocka_unit_test(
          health_watch_message_carries_report_sequence_and_details),
      cmocka_unit_test(
          chaos_scenarios_round_trip_with_durations_and_blast_radius),
      cmocka_unit_test(check_injection_and_emergency_stop_round_trip),
      cmocka_unit_test(
          watch_breakers_heartbeat_is_distinguishable_from_an_event),
      cmocka_unit_test(name_of_128_bytes_decodes_and_129_is_refused_by_nanopb),
      cmocka_unit_test(nine_excluded_errors_are_refused_by_nanopb),
      cmocka_unit_test(metadata_of_16_entries_fits_and_17_is_refused_by_nanopb),
      cmocka_unit_test(largest_messages_fit_nanopb_and_grpc_default_limits),
      cmocka_unit_test(enum_numbers_agree_between_generators),
      cmocka_unit_test(generated_service_descriptors_name_every_rpc),
  };
  const struct CMUnitTest fds[] = {
      cmocka_unit_test(descriptor_set_is_non_empty_and_lists_every_service),
      cmocka_unit_test(
          descriptor_set_methods_match_design_with_streaming_shape),
      cmocka_unit_test(descriptor_set_carries_no_source_info),
  };
  int failed = cmocka_run_group_tests_name("wire", wire, NULL, NULL);
  failed += cmocka_run_group_tests_name("descriptor_set", fds, fds_setup,
                                        fds_teardown);
  return failed;
}
