/*
 * test_client_wire.c - the messages libafclient builds and reads cross the
 * nanopb / protobuf-c boundary intact: a metering event as the sender
 * encodes it (nanopb) decodes field by field with protobuf-c (the
 * server's codec) and comes back; a WatchScenarios message as the server
 * packs it (protobuf-c) decodes with nanopb and, applied, drives the
 * client's chaos mirror.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <pb_decode.h>
#include <pb_encode.h>

#include "af/client.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/metering.pb-c.h"
#include "client_internal.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"

static uint8_t g_buf[1 << 17];

static void usage_event_survives_nanopb_to_protobuf_c_and_back(void **state)
{
  (void)state;
  af_meter_event_t ev;
  af_meter_event_init(&ev, "tenant-ü", AF_OP_COMPLIANCE_CHECK);
  snprintf(ev.event_id, sizeof ev.event_id, "0123456789abcdef");
  snprintf(ev.agent_id, sizeof ev.agent_id, "agent/7");
  ev.tier = AF_TIER_DELIBERATION;
  ev.units = UINT64_MAX;
  ev.tokens_processed = 1u << 31;
  ev.latency_ms = 12.25;
  ev.compliance_score = 0.5;
  ev.constitutional_valid = false;
  ev.timestamp_wall_ns = INT64_C(1800000000999999999);
  snprintf(ev.hash, sizeof ev.hash, "cdd01ef066bc6cf2");
  antifragility_v1_RecordUsageRequest req =
      antifragility_v1_RecordUsageRequest_init_zero;
  req.has_event = true;
  af__meter_event_to_pb(&ev, &req.event);

  pb_ostream_t os = pb_ostream_from_buffer(g_buf, sizeof g_buf);
  assert_true(pb_encode(&os, antifragility_v1_RecordUsageRequest_fields, &req));
  Antifragility__V1__RecordUsageRequest *m =
      antifragility__v1__record_usage_request__unpack(NULL, os.bytes_written,
                                                      g_buf);
  assert_non_null(m);
  assert_non_null(m->event);
  assert_string_equal(m->event->tenant_id, "tenant-ü");
  assert_string_equal(m->event->event_id, "0123456789abcdef");
  assert_string_equal(m->event->agent_id, "agent/7");
  assert_int_equal(
      m->event->operation,
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_COMPLIANCE_CHECK);
  assert_int_equal(
      m->event->tier,
      ANTIFRAGILITY__V1__METERING_TIER__METERING_TIER_DELIBERATION);
  assert_true(m->event->units == UINT64_MAX);
  assert_int_equal(m->event->tokens_processed, 1u << 31);
  assert_true(m->event->latency_ms == 12.25);
  assert_true(m->event->compliance_score == 0.5);
  assert_false(m->event->constitutional_valid);
  assert_non_null(m->event->timestamp);
  assert_int_equal(m->event->timestamp->seconds, 1800000000);
  assert_int_equal(m->event->timestamp->nanos, 999999999);
  assert_string_equal(m->event->constitutional_hash, "cdd01ef066bc6cf2");

  /* and back: protobuf-c packs, nanopb decodes the same values */
  size_t n = antifragility__v1__record_usage_request__pack(m, g_buf);
  antifragility__v1__record_usage_request__free_unpacked(m, NULL);
  antifragility_v1_RecordUsageRequest back =
      antifragility_v1_RecordUsageRequest_init_zero;
  pb_istream_t is = pb_istream_from_buffer(g_buf, n);
  assert_true(
      pb_decode(&is, antifragility_v1_RecordUsageRequest_fields, &back));
  assert_memory_equal(&back.event, &req.event, sizeof back.event);
}

static void scenario_packed_by_protobuf_c_drives_the_client_mirror(void **state)
{
  (void)state;
  af_client_config_t cfg;
  af_client_config_init(&cfg);
  cfg.addr = "127.0.0.1:1";
  cfg.background = false;
  af_client_t *c = NULL;
  assert_int_equal(af_client_create(&c, &cfg, NULL), AF_OK);
  af_guard_t *g = NULL;
  af_guard_config_t gc;
  af_guard_config_init(&gc);
  gc.fail_max = 1000;
  assert_int_equal(af_guard_get(c, "db", &gc, &g, NULL), AF_OK);

  Antifragility__V1__ChaosScenario sc = ANTIFRAGILITY__V1__CHAOS_SCENARIO__INIT;
  sc.name = "errors_db_1.0";
  sc.kind = ANTIFRAGILITY__V1__CHAOS_KIND__CHAOS_KIND_ERROR;
  sc.target = "db";
  sc.error_rate = 1.0;
  char *radius[] = {"db", "cache"};
  sc.n_blast_radius = 2;
  sc.blast_radius = radius;
  sc.active = true;
  Google__Protobuf__Timestamp exp = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  exp.seconds = (int64_t)(af_clock_wall_ns(NULL) / (int64_t)AF_NS_PER_SEC) + 60;
  sc.expires_at = &exp;
  Antifragility__V1__ChaosScenario *active[] = {&sc};
  Antifragility__V1__WatchScenariosResponse w =
      ANTIFRAGILITY__V1__WATCH_SCENARIOS_RESPONSE__INIT;
  w.sequence = 1;
  w.kind = ANTIFRAGILITY__V1__SCENARIO_EVENT_KIND__SCENARIO_EVENT_KIND_SNAPSHOT;
  w.n_active = 1;
  w.active = active;
  size_t n = antifragility__v1__watch_scenarios_response__pack(&w, g_buf);

  antifragility_v1_WatchScenariosResponse *msg = calloc(1, sizeof *msg);
  pb_istream_t is = pb_istream_from_buffer(g_buf, n);
  assert_true(
      pb_decode(&is, antifragility_v1_WatchScenariosResponse_fields, msg));
  assert_int_equal(msg->active_count, 1);
  assert_string_equal(msg->active[0].name, "errors_db_1.0");
  assert_int_equal(msg->active[0].blast_radius_count, 2);
  assert_string_equal(msg->active[0].blast_radius[1], "cache");
  af__chaos_apply(c, msg->active, msg->active_count);
  assert_int_equal(af_guard_allow(g), AF_GUARD_CHAOS_ERROR);
  free(msg);
  af_client_destroy(c);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(usage_event_survives_nanopb_to_protobuf_c_and_back),
      cmocka_unit_test(scenario_packed_by_protobuf_c_drives_the_client_mirror),
  };
  return cmocka_run_group_tests_name("client_wire", tests, NULL, NULL);
}
