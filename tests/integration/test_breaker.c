/*
 * test_breaker.c - antifragility.v1.BreakerService against a real
 * in-process afd over loopback (server/src/svc_breaker.c).
 *
 * Each case starts its own afd (setup) so breakers and stream counters do
 * not leak between cases. Transitions are caused either through the RPCs
 * or directly on the engine (af_ts_engine) to produce many of them fast.
 * Waits are bounded polls on real events, never sleeps for a timeout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "af/engine.h"
#include "af_testclient.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "convert.h"
#include "server.h"

#define M(x) "/antifragility.v1.BreakerService/" x
#define ST(x) ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_##x
#define KIND(x) ANTIFRAGILITY__V1__BREAKER_EVENT_KIND__BREAKER_EVENT_KIND_##x
#define TIMEOUT 5000

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fixture_t;

static int setup(void **state)
{
  fixture_t *f = calloc(1, sizeof(*f));
  f->ts = af_ts_start(NULL);
  f->c = af_tc_connect(af_ts_port(f->ts));
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fixture_t *f = *state;
  af_tc_close(f->c);
  af_ts_stop(f->ts);
  free(f);
  return 0;
}

/* ------------------------------------------------------------------ */
/* helpers                                                            */

/* Unary call that must succeed; returns the owned response. */
static void *call_ok(fixture_t *f, const char *method,
                     const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc)
{
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(f->c, method, req, desc, &resp, &st, NULL, TIMEOUT);
  if (code != GRPC_STATUS_OK)
    fail_msg("%s: status %d %s", method, code, st.message);
  return resp;
}

/* Unary call that must fail with code and a message containing want. */
static void call_fails(fixture_t *f, const char *method,
                       const ProtobufCMessage *req,
                       const ProtobufCMessageDescriptor *desc,
                       grpc_status_code code, const char *want)
{
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  grpc_status_code got =
      af_tc_unary(f->c, method, req, desc, &resp, &st, NULL, TIMEOUT);
  if (got != code || strstr(st.message, want) == NULL)
    fail_msg("%s: want %d \"%s\", got %d \"%s\"", method, code, want, got,
             st.message);
  assert_null(resp);
}

static void freem(void *m)
{
  if (m)
    protobuf_c_message_free_unpacked(m, NULL);
}

/* A config with fail_max set (storage in *cfg / *fm). */
static Antifragility__V1__BreakerConfig *
cfg_fail_max(Antifragility__V1__BreakerConfig *cfg,
             Google__Protobuf__UInt32Value *fm, uint32_t n)
{
  antifragility__v1__breaker_config__init(cfg);
  google__protobuf__uint32_value__init(fm);
  fm->value = n;
  cfg->fail_max = fm;
  return cfg;
}

static Antifragility__V1__RegisterBreakerResponse *
reg(fixture_t *f, const char *name, uint32_t fail_max)
{
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fm;
  Antifragility__V1__RegisterBreakerRequest req =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  req.name = (char *)name;
  req.config = cfg_fail_max(&cfg, &fm, fail_max);
  return call_ok(f, M("RegisterBreaker"), &req.base,
                 &antifragility__v1__register_breaker_response__descriptor);
}

static Antifragility__V1__ReportOutcomeResponse *
outcome(fixture_t *f, const char *name, bool success, const char *error_type,
        const char *instance)
{
  Antifragility__V1__ReportOutcomeRequest req =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
  req.breaker_name = (char *)name;
  req.success = success;
  req.error_type = (char *)(error_type ? error_type : "");
  req.instance_id = (char *)(instance ? instance : "");
  return call_ok(f, M("ReportOutcome"), &req.base,
                 &antifragility__v1__report_outcome_response__descriptor);
}

static Antifragility__V1__GetBreakerResponse *get(fixture_t *f,
                                                  const char *name)
{
  Antifragility__V1__GetBreakerRequest req =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  req.name = (char *)name;
  return call_ok(f, M("GetBreaker"), &req.base,
                 &antifragility__v1__get_breaker_response__descriptor);
}

static void get_not_found(fixture_t *f, const char *name)
{
  char want[200];
  snprintf(want, sizeof(want), "breaker %s not found", name);
  Antifragility__V1__GetBreakerRequest req =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  req.name = (char *)name;
  call_fails(f, M("GetBreaker"), &req.base,
             &antifragility__v1__get_breaker_response__descriptor,
             GRPC_STATUS_NOT_FOUND, want);
}

static void register_fails(fixture_t *f, const char *name,
                           Antifragility__V1__BreakerConfig *cfg,
                           const char *want)
{
  Antifragility__V1__RegisterBreakerRequest req =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  req.name = (char *)name;
  req.config = cfg;
  call_fails(f, M("RegisterBreaker"), &req.base,
             &antifragility__v1__register_breaker_response__descriptor,
             GRPC_STATUS_INVALID_ARGUMENT, want);
}

/* Sets a breaker's state directly on the engine. */
static void engine_set(fixture_t *f, const char *name, af_breaker_state_t s)
{
  af_breaker_t *b = NULL;
  assert_int_equal(af_breaker_registry_find(
                       af_engine_breakers(af_ts_engine(f->ts)), name, &b),
                   AF_OK);
  assert_int_equal(af_breaker_set_state(b, s, "test"), AF_OK);
  af_breaker_release(b);
}

static af_tc_stream_t *watch(fixture_t *f, const char *const *names, size_t n)
{
  Antifragility__V1__WatchBreakersRequest req =
      ANTIFRAGILITY__V1__WATCH_BREAKERS_REQUEST__INIT;
  req.n_names = n;
  req.names = (char **)names;
  return af_tc_stream_open(
      f->c, M("WatchBreakers"), &req.base,
      &antifragility__v1__watch_breakers_response__descriptor, NULL, 60000);
}

static Antifragility__V1__WatchBreakersResponse *next_msg(af_tc_stream_t *s,
                                                          int wait_ms)
{
  ProtobufCMessage *m = NULL;
  int r = af_tc_stream_next(s, wait_ms, &m);
  if (r != 1)
    fail_msg("no WatchBreakers message within %d ms (%d)", wait_ms, r);
  return (Antifragility__V1__WatchBreakersResponse *)m;
}

/* Next message that is not a heartbeat. */
static Antifragility__V1__WatchBreakersResponse *next_event(af_tc_stream_t *s,
                                                            int wait_ms)
{
  for (;;) {
    Antifragility__V1__WatchBreakersResponse *m = next_msg(s, wait_ms);
    if (!m->heartbeat)
      return m;
    freem(m);
  }
}

static uint64_t streams_open(fixture_t *f)
{
  af_server_stats_t s;
  af_server_stats(af_ts_server(f->ts), &s);
  return s.streams_open;
}

static int cmp_i64(const void *a, const void *b)
{
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return (x > y) - (x < y);
}

/* ------------------------------------------------------------------ */
/* RegisterBreaker                                                    */

static void register_creates_once_and_update_config_replaces(void **state)
{
  fixture_t *f = *state;
  Antifragility__V1__RegisterBreakerResponse *r = reg(f, "t-reg", 3);
  assert_true(r->created);
  Antifragility__V1__BreakerInfo *b = r->breaker;
  assert_string_equal(b->name, "t-reg");
  assert_int_equal(b->state, ST(CLOSED));
  assert_string_equal(b->constitutional_hash, "cdd01ef066bc6cf2");
  assert_non_null(b->config);
  assert_int_equal(b->config->fail_max->value, 3);
  /* every default filled in */
  assert_int_equal(b->config->reset_timeout->seconds, 30);
  assert_int_equal(b->config->half_open_max_calls->value, 1);
  assert_int_equal(b->config->success_threshold->value, 1);
  assert_true(b->config->weight->value == 1.0);
  assert_non_null(b->registered_at);
  freem(r);

  /* again without update_config: found, config kept */
  r = reg(f, "t-reg", 7);
  assert_false(r->created);
  assert_int_equal(r->breaker->config->fail_max->value, 3);
  freem(r);

  /* update_config replaces it */
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fm;
  char *excl[] = {"not_found"};
  Antifragility__V1__RegisterBreakerRequest req =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  req.name = "t-reg";
  req.config = cfg_fail_max(&cfg, &fm, 7);
  cfg.n_excluded_errors = 1;
  cfg.excluded_errors = excl;
  cfg.description = "payments backend";
  req.update_config = true;
  r = call_ok(f, M("RegisterBreaker"), &req.base,
              &antifragility__v1__register_breaker_response__descriptor);
  assert_false(r->created);
  assert_int_equal(r->breaker->config->fail_max->value, 7);
  assert_int_equal(r->breaker->config->n_excluded_errors, 1);
  assert_string_equal(r->breaker->config->excluded_errors[0], "not_found");
  assert_string_equal(r->breaker->config->description, "payments backend");
  freem(r);
}

static void register_refuses_bad_names_and_config_values(void **state)
{
  fixture_t *f = *state;
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value v;
  char longname[200];
  memset(longname, 'x', 129);
  longname[129] = '\0';
  register_fails(f, "", NULL, "name is required");
  register_fails(f, longname, NULL, "name must be 1-128 bytes");
  register_fails(f, "bad\nname", NULL, "name must be 1-128 bytes");

  register_fails(f, "t-bad", cfg_fail_max(&cfg, &v, 0),
                 "fail_max must be >= 1");
  antifragility__v1__breaker_config__init(&cfg);
  cfg.half_open_max_calls = &v;
  register_fails(f, "t-bad", &cfg, "half_open_max_calls must be >= 1");
  antifragility__v1__breaker_config__init(&cfg);
  cfg.success_threshold = &v;
  register_fails(f, "t-bad", &cfg, "success_threshold must be >= 1");

  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  antifragility__v1__breaker_config__init(&cfg);
  cfg.reset_timeout = &d;
  register_fails(f, "t-bad", &cfg, "reset_timeout must be > 0");
  d.seconds = -1;
  register_fails(f, "t-bad", &cfg, "reset_timeout must be between 0 and");
  d.seconds = 10 * 86400;
  register_fails(f, "t-bad", &cfg, "reset_timeout must be between 0 and");

  Google__Protobuf__DoubleValue w = GOOGLE__PROTOBUF__DOUBLE_VALUE__INIT;
  antifragility__v1__breaker_config__init(&cfg);
  cfg.weight = &w;
  w.value = 0.0;
  register_fails(f, "t-bad", &cfg, "weight must be > 0");
  w.value = -1.0;
  register_fails(f, "t-bad", &cfg, "weight must be > 0");
  w.value = 1e9;
  register_fails(f, "t-bad", &cfg, "weight must be > 0 and at most 10000");

  char *nine[9] = {"a", "b", "c", "d", "e", "f", "g", "h", "i"};
  antifragility__v1__breaker_config__init(&cfg);
  cfg.n_excluded_errors = 9;
  cfg.excluded_errors = nine;
  register_fails(f, "t-bad", &cfg,
                 "excluded_errors must have at most 8 entries");
  char *empty[1] = {""};
  cfg.n_excluded_errors = 1;
  cfg.excluded_errors = empty;
  register_fails(f, "t-bad", &cfg, "excluded_errors[0] must be 1-128 bytes");

  char desc[300];
  memset(desc, 'd', 257);
  desc[257] = '\0';
  antifragility__v1__breaker_config__init(&cfg);
  cfg.description = desc;
  register_fails(f, "t-bad", &cfg, "description must be at most 256 bytes");

  /* nothing was created by any of it */
  get_not_found(f, "t-bad");
}

/* ------------------------------------------------------------------ */
/* ReportOutcome                                                      */

static void report_outcome_opens_after_fail_max_failures(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-open", 3));
  for (int i = 0; i < 2; i++) {
    Antifragility__V1__ReportOutcomeResponse *r =
        outcome(f, "t-open", false, "timeout", i ? "inst-2" : "inst-1");
    assert_int_equal(r->state, ST(CLOSED));
    assert_false(r->transitioned);
    assert_false(r->excluded);
    freem(r);
  }
  Antifragility__V1__ReportOutcomeResponse *r =
      outcome(f, "t-open", false, "timeout", "inst-2");
  assert_int_equal(r->state, ST(OPEN));
  assert_int_equal(r->previous_state, ST(CLOSED));
  assert_true(r->transitioned);
  assert_false(r->registered);
  freem(r);

  Antifragility__V1__GetBreakerResponse *g = get(f, "t-open");
  Antifragility__V1__BreakerInfo *b = g->breaker;
  assert_int_equal(b->state, ST(OPEN));
  assert_int_equal(b->fail_counter, 3);
  assert_int_equal(b->consecutive_failures, 3);
  assert_non_null(b->last_report);
  assert_non_null(b->last_transition);
  assert_non_null(b->next_half_open_at); /* OPEN: when it moves */
  assert_int_equal(b->n_instance_ids, 2);
  assert_string_equal(b->instance_ids[0], "inst-2"); /* most recent first */
  assert_string_equal(b->instance_ids[1], "inst-1");
  assert_string_equal(b->constitutional_hash, "cdd01ef066bc6cf2");
  freem(g);

  /* a success keeps counting but does not close an OPEN breaker; an
   * instance that reports again becomes the most recent */
  r = outcome(f, "t-open", true, NULL, "inst-1");
  assert_int_equal(r->state, ST(OPEN));
  freem(r);
  g = get(f, "t-open");
  assert_int_equal(g->breaker->n_instance_ids, 2);
  assert_string_equal(g->breaker->instance_ids[0], "inst-1");
  assert_string_equal(g->breaker->instance_ids[1], "inst-2");
  freem(g);
}

static void half_open_counts_successes_until_success_threshold(void **state)
{
  fixture_t *f = *state;
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fm, thr;
  Antifragility__V1__RegisterBreakerRequest req =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  req.name = "t-half";
  req.config = cfg_fail_max(&cfg, &fm, 1);
  google__protobuf__uint32_value__init(&thr);
  thr.value = 2;
  cfg.success_threshold = &thr;
  freem(call_ok(f, M("RegisterBreaker"), &req.base,
                &antifragility__v1__register_breaker_response__descriptor));
  engine_set(f, "t-half", AF_BREAKER_HALF_OPEN);
  Antifragility__V1__ReportOutcomeResponse *r =
      outcome(f, "t-half", true, NULL, NULL);
  assert_int_equal(r->state, ST(HALF_OPEN));
  freem(r);
  Antifragility__V1__GetBreakerResponse *g = get(f, "t-half");
  assert_int_equal(g->breaker->consecutive_successes, 1);
  assert_null(g->breaker->next_half_open_at);
  freem(g);
  r = outcome(f, "t-half", true, NULL, NULL);
  assert_int_equal(r->state, ST(CLOSED));
  assert_int_equal(r->previous_state, ST(HALF_OPEN));
  assert_true(r->transitioned);
  freem(r);
  /* one failure in HALF_OPEN reopens */
  engine_set(f, "t-half", AF_BREAKER_HALF_OPEN);
  r = outcome(f, "t-half", false, "timeout", NULL);
  assert_int_equal(r->state, ST(OPEN));
  freem(r);
}

static void report_outcome_excluded_error_counts_as_success(void **state)
{
  fixture_t *f = *state;
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fm;
  char *excl[] = {"not_found", "bad_request"};
  Antifragility__V1__RegisterBreakerRequest req =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  req.name = "t-excl";
  req.config = cfg_fail_max(&cfg, &fm, 1);
  cfg.n_excluded_errors = 2;
  cfg.excluded_errors = excl;
  freem(call_ok(f, M("RegisterBreaker"), &req.base,
                &antifragility__v1__register_breaker_response__descriptor));

  Antifragility__V1__ReportOutcomeResponse *r =
      outcome(f, "t-excl", false, "bad_request", NULL);
  assert_true(r->excluded);
  assert_int_equal(r->state, ST(CLOSED));
  assert_false(r->transitioned);
  freem(r);
  r = outcome(f, "t-excl", false, "timeout", NULL);
  assert_false(r->excluded);
  assert_int_equal(r->state, ST(OPEN));
  assert_true(r->transitioned);
  freem(r);
}

static void report_outcome_refuses_unknown_and_invalid_input(void **state)
{
  fixture_t *f = *state;
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__report_outcome_response__descriptor;
  Antifragility__V1__ReportOutcomeRequest req =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
  req.breaker_name = "t-nobody";
  call_fails(f, M("ReportOutcome"), &req.base, d, GRPC_STATUS_NOT_FOUND,
             "breaker t-nobody not found");
  req.breaker_name = "";
  call_fails(f, M("ReportOutcome"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "breaker_name is required");

  freem(reg(f, "t-inv", 5));
  req.breaker_name = "t-inv";
  char inst[100];
  memset(inst, 'i', 65);
  inst[65] = '\0';
  req.instance_id = inst;
  call_fails(f, M("ReportOutcome"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "instance_id must be at most 64");
  req.instance_id = "";
  char et[200];
  memset(et, 'e', 129);
  et[129] = '\0';
  req.error_type = et;
  call_fails(f, M("ReportOutcome"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "error_type must be at most 128");
  req.error_type = "";
  req.latency_ms = -5.0;
  call_fails(f, M("ReportOutcome"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "latency_ms must be >= 0");
  req.latency_ms = 0.0;
  /* auto_register with a bad config: refused, nothing created */
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fm;
  req.breaker_name = "t-auto";
  req.auto_register = true;
  req.config = cfg_fail_max(&cfg, &fm, 0);
  call_fails(f, M("ReportOutcome"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "fail_max must be >= 1");
  get_not_found(f, "t-auto");
  /* and with a good one: created with it */
  fm.value = 1;
  Antifragility__V1__ReportOutcomeResponse *r =
      call_ok(f, M("ReportOutcome"), &req.base, d);
  assert_true(r->registered);
  assert_int_equal(r->state, ST(OPEN)); /* fail_max 1, one failure */
  freem(r);
  Antifragility__V1__GetBreakerResponse *g = get(f, "t-auto");
  assert_int_equal(g->breaker->config->fail_max->value, 1);
  freem(g);

  /* the GetBreaker refusals */
  Antifragility__V1__GetBreakerRequest gr =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  call_fails(f, M("GetBreaker"), &gr.base,
             &antifragility__v1__get_breaker_response__descriptor,
             GRPC_STATUS_INVALID_ARGUMENT, "name is required");
}

/* ------------------------------------------------------------------ */
/* ReportOutcomes                                                     */

static void report_outcomes_stream_returns_one_summary(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-many", 3));
  Antifragility__V1__ReportOutcomeRequest m[6];
  const ProtobufCMessage *reqs[6];
  for (size_t i = 0; i < 6; i++) {
    antifragility__v1__report_outcome_request__init(&m[i]);
    m[i].breaker_name = "t-many";
    m[i].success = false;
    m[i].error_type = "timeout";
    reqs[i] = &m[i].base;
  }
  m[3].breaker_name = "t-ghost"; /* refused: unknown */
  m[4].breaker_name = "";        /* refused: invalid */
  m[5].success = true;           /* applied, OPEN stays OPEN */
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(af_tc_client_stream(
                       f->c, M("ReportOutcomes"), reqs, 6,
                       &antifragility__v1__report_outcomes_response__descriptor,
                       &resp, &st, TIMEOUT),
                   GRPC_STATUS_OK);
  Antifragility__V1__ReportOutcomesResponse *r = (void *)resp;
  assert_int_equal(r->received, 6);
  assert_int_equal(r->applied, 4);
  assert_int_equal(r->rejected, 2);
  assert_int_equal(r->breakers_opened, 1);
  assert_int_equal(r->breakers_closed, 0);
  assert_string_equal(r->first_error, "breaker t-ghost not found");
  assert_int_equal(r->first_error_index, 3);
  freem(r);
  Antifragility__V1__GetBreakerResponse *g = get(f, "t-many");
  assert_int_equal(g->breaker->state, ST(OPEN));
  assert_int_equal(g->breaker->fail_counter, 3);
  assert_int_equal(g->breaker->success_counter, 1);
  freem(g);

  /* an empty stream is a zero summary */
  resp = NULL;
  assert_int_equal(af_tc_client_stream(
                       f->c, M("ReportOutcomes"), NULL, 0,
                       &antifragility__v1__report_outcomes_response__descriptor,
                       &resp, &st, TIMEOUT),
                   GRPC_STATUS_OK);
  r = (void *)resp;
  assert_int_equal(r->received, 0);
  assert_string_equal(r->first_error, "");
  freem(r);
}

/* ------------------------------------------------------------------ */
/* ReportState                                                        */

static void report_state_adopts_the_client_state(void **state)
{
  fixture_t *f = *state;
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__report_state_response__descriptor;
  freem(reg(f, "t-state", 5));
  Antifragility__V1__ReportStateRequest req =
      ANTIFRAGILITY__V1__REPORT_STATE_REQUEST__INIT;
  req.name = "t-state";
  req.state = ST(OPEN);
  req.instance_id = "client-1";
  req.fail_counter = 5;
  Antifragility__V1__ReportStateResponse *r =
      call_ok(f, M("ReportState"), &req.base, d);
  assert_true(r->transitioned);
  assert_int_equal(r->previous_state, ST(CLOSED));
  assert_int_equal(r->breaker->state, ST(OPEN));
  assert_int_equal(r->breaker->n_instance_ids, 1);
  assert_string_equal(r->breaker->instance_ids[0], "client-1");
  freem(r);
  /* the same state again: no transition */
  r = call_ok(f, M("ReportState"), &req.base, d);
  assert_false(r->transitioned);
  assert_int_equal(r->previous_state, ST(OPEN));
  freem(r);

  req.state = ST(UNSPECIFIED);
  call_fails(f, M("ReportState"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "state must be CLOSED, OPEN or HALF_OPEN");
  req.state = ST(FORCED_OPEN);
  call_fails(f, M("ReportState"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "state must be CLOSED, OPEN or HALF_OPEN");
  req.state = (Antifragility__V1__BreakerState)42;
  call_fails(f, M("ReportState"), &req.base, d, GRPC_STATUS_INVALID_ARGUMENT,
             "state must be CLOSED, OPEN or HALF_OPEN");
  req.state = ST(HALF_OPEN);
  req.name = "t-state-new";
  call_fails(f, M("ReportState"), &req.base, d, GRPC_STATUS_NOT_FOUND,
             "breaker t-state-new not found");
  req.auto_register = true;
  r = call_ok(f, M("ReportState"), &req.base, d);
  assert_true(r->transitioned);
  assert_int_equal(r->breaker->state, ST(HALF_OPEN));
  freem(r);

  /* a breaker forced here keeps its forced state */
  af_breaker_t *b = NULL;
  assert_int_equal(af_breaker_registry_find(
                       af_engine_breakers(af_ts_engine(f->ts)), "t-state", &b),
                   AF_OK);
  assert_int_equal(af_breaker_force(b, AF_BREAKER_FORCED_OPEN, "test"), AF_OK);
  af_breaker_release(b);
  req.name = "t-state";
  req.auto_register = false;
  req.state = ST(CLOSED);
  r = call_ok(f, M("ReportState"), &req.base, d);
  assert_false(r->transitioned);
  assert_int_equal(r->breaker->state, ST(FORCED_OPEN));
  freem(r);
}

/* ------------------------------------------------------------------ */
/* ListBreakers                                                       */

static Antifragility__V1__ListBreakersResponse *
list(fixture_t *f, uint32_t page_size, const char *token, const char *prefix,
     Antifragility__V1__BreakerState filter)
{
  Antifragility__V1__ListBreakersRequest req =
      ANTIFRAGILITY__V1__LIST_BREAKERS_REQUEST__INIT;
  req.page_size = page_size;
  req.page_token = (char *)(token ? token : "");
  req.name_prefix = (char *)(prefix ? prefix : "");
  req.state_filter = filter;
  return call_ok(f, M("ListBreakers"), &req.base,
                 &antifragility__v1__list_breakers_response__descriptor);
}

static void list_breakers_pages_in_name_order_with_filters(void **state)
{
  fixture_t *f = *state;
  char name[32];
  for (int i = 20; i >= 0; i--) { /* registered out of order */
    snprintf(name, sizeof(name), "t-list-%02d", i);
    freem(reg(f, name, 1));
  }
  freem(reg(f, "other", 1));
  freem(outcome(f, "t-list-07", false, NULL, NULL)); /* -> OPEN */

  Antifragility__V1__ListBreakersResponse *r =
      list(f, 0, NULL, "t-list-", ST(UNSPECIFIED));
  assert_int_equal(r->n_breakers, 16);
  assert_int_equal(r->total, 21);
  for (size_t i = 0; i < r->n_breakers; i++) {
    snprintf(name, sizeof(name), "t-list-%02zu", i);
    assert_string_equal(r->breakers[i]->name, name);
  }
  assert_string_not_equal(r->next_page_token, "");
  char token[200];
  snprintf(token, sizeof(token), "%s", r->next_page_token);
  freem(r);
  r = list(f, 0, token, "t-list-", ST(UNSPECIFIED));
  assert_int_equal(r->n_breakers, 5);
  assert_string_equal(r->breakers[0]->name, "t-list-16");
  assert_string_equal(r->next_page_token, "");
  assert_int_equal(r->total, 21);
  freem(r);

  r = list(f, 5, NULL, NULL, ST(UNSPECIFIED));
  assert_int_equal(r->n_breakers, 5);
  assert_int_equal(r->total, 22);
  assert_string_equal(r->breakers[0]->name, "other");
  freem(r);
  r = list(f, 1000, NULL, NULL, ST(UNSPECIFIED)); /* clamped to 16 */
  assert_int_equal(r->n_breakers, 16);
  freem(r);
  r = list(f, 0, NULL, NULL, ST(OPEN));
  assert_int_equal(r->n_breakers, 1);
  assert_int_equal(r->total, 1);
  assert_string_equal(r->breakers[0]->name, "t-list-07");
  assert_int_equal(r->breakers[0]->state, ST(OPEN));
  freem(r);

  Antifragility__V1__ListBreakersRequest req =
      ANTIFRAGILITY__V1__LIST_BREAKERS_REQUEST__INIT;
  req.state_filter = (Antifragility__V1__BreakerState)99;
  call_fails(f, M("ListBreakers"), &req.base,
             &antifragility__v1__list_breakers_response__descriptor,
             GRPC_STATUS_INVALID_ARGUMENT, "state_filter");
  req.state_filter = ST(UNSPECIFIED);
  req.page_token = "bad\ttoken";
  call_fails(f, M("ListBreakers"), &req.base,
             &antifragility__v1__list_breakers_response__descriptor,
             GRPC_STATUS_INVALID_ARGUMENT, "page_token");
}

/* ------------------------------------------------------------------ */
/* ResetBreaker, ResetAllBreakers, UnregisterBreaker                  */

static void reset_closes_and_zeroes_counters(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-rst-a", 1));
  freem(reg(f, "t-rst-b", 1));
  freem(outcome(f, "t-rst-a", false, NULL, NULL));
  freem(outcome(f, "t-rst-b", false, NULL, NULL));

  Antifragility__V1__ResetBreakerRequest req =
      ANTIFRAGILITY__V1__RESET_BREAKER_REQUEST__INIT;
  req.name = "t-rst-a";
  Antifragility__V1__ResetBreakerResponse *r =
      call_ok(f, M("ResetBreaker"), &req.base,
              &antifragility__v1__reset_breaker_response__descriptor);
  assert_int_equal(r->previous_state, ST(OPEN));
  assert_int_equal(r->breaker->state, ST(CLOSED));
  assert_int_equal(r->breaker->fail_counter, 0);
  assert_int_equal(r->breaker->consecutive_failures, 0);
  assert_null(r->breaker->next_half_open_at);
  freem(r);
  req.name = "t-rst-none";
  call_fails(f, M("ResetBreaker"), &req.base,
             &antifragility__v1__reset_breaker_response__descriptor,
             GRPC_STATUS_NOT_FOUND, "breaker t-rst-none not found");

  Antifragility__V1__ResetAllBreakersRequest all =
      ANTIFRAGILITY__V1__RESET_ALL_BREAKERS_REQUEST__INIT;
  Antifragility__V1__ResetAllBreakersResponse *ra =
      call_ok(f, M("ResetAllBreakers"), &all.base,
              &antifragility__v1__reset_all_breakers_response__descriptor);
  assert_int_equal(ra->reset_count, 2);
  freem(ra);
  Antifragility__V1__GetBreakerResponse *g = get(f, "t-rst-b");
  assert_int_equal(g->breaker->state, ST(CLOSED));
  freem(g);
}

static void unregister_removes_the_breaker(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-unreg", 1));
  freem(outcome(f, "t-unreg", false, NULL, NULL));
  Antifragility__V1__UnregisterBreakerRequest req =
      ANTIFRAGILITY__V1__UNREGISTER_BREAKER_REQUEST__INIT;
  req.name = "t-unreg";
  Antifragility__V1__UnregisterBreakerResponse *r =
      call_ok(f, M("UnregisterBreaker"), &req.base,
              &antifragility__v1__unregister_breaker_response__descriptor);
  assert_string_equal(r->breaker->name, "t-unreg");
  assert_int_equal(r->breaker->state, ST(OPEN)); /* as it was */
  freem(r);
  get_not_found(f, "t-unreg");
  call_fails(f, M("UnregisterBreaker"), &req.base,
             &antifragility__v1__unregister_breaker_response__descriptor,
             GRPC_STATUS_NOT_FOUND, "breaker t-unreg not found");
  req.name = "";
  call_fails(f, M("UnregisterBreaker"), &req.base,
             &antifragility__v1__unregister_breaker_response__descriptor,
             GRPC_STATUS_INVALID_ARGUMENT, "name is required");
}

static void constitutional_hash_mismatch_is_refused(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-hash", 1));
  Antifragility__V1__GetBreakerRequest req =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  req.name = "t-hash";
  const char *bad[] = {"x-constitutional-hash", "deadbeefdeadbeef", NULL};
  const char *good[] = {"x-constitutional-hash", "cdd01ef066bc6cf2", NULL};
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary(f->c, M("GetBreaker"), &req.base,
                  &antifragility__v1__get_breaker_response__descriptor, &resp,
                  &st, bad, TIMEOUT),
      GRPC_STATUS_FAILED_PRECONDITION);
  assert_non_null(strstr(st.message, "constitutional hash mismatch"));
  assert_int_equal(
      af_tc_unary(f->c, M("GetBreaker"), &req.base,
                  &antifragility__v1__get_breaker_response__descriptor, &resp,
                  &st, good, TIMEOUT),
      GRPC_STATUS_OK);
  freem(resp);
}

static void malformed_request_is_invalid_argument(void **state)
{
  fixture_t *f = *state;
  const unsigned char junk[] = {0x0a, 0xff, 0x01}; /* truncated field 1 */
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary_raw(f->c, M("GetBreaker"), junk, sizeof(junk),
                      &antifragility__v1__get_breaker_response__descriptor,
                      &resp, &st, TIMEOUT),
      GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(st.message, "malformed request"));
}

/* ------------------------------------------------------------------ */
/* WatchBreakers                                                      */

static void watch_starts_with_one_snapshot_per_breaker(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-ws-a", 1));
  freem(reg(f, "t-ws-b", 1));
  freem(reg(f, "t-ws-c", 1));
  freem(outcome(f, "t-ws-b", false, NULL, NULL));

  /* all breakers, name order, last one complete */
  af_tc_stream_t *s = watch(f, NULL, 0);
  const char *want[] = {"t-ws-a", "t-ws-b", "t-ws-c"};
  for (size_t i = 0; i < 3; i++) {
    Antifragility__V1__WatchBreakersResponse *m = next_msg(s, TIMEOUT);
    assert_int_equal(m->sequence, i + 1);
    assert_int_equal(m->kind, KIND(SNAPSHOT));
    assert_non_null(m->breaker);
    assert_string_equal(m->breaker->name, want[i]);
    assert_int_equal(m->breaker->state, i == 1 ? ST(OPEN) : ST(CLOSED));
    assert_int_equal(m->snapshot_complete, i == 2);
    assert_non_null(m->timestamp);
    freem(m);
  }
  ProtobufCMessage *extra = NULL;
  assert_int_equal(af_tc_stream_next(s, 100, &extra), 0);
  af_tc_stream_close(s);

  /* a filter: only the named ones */
  const char *names[] = {"t-ws-c", "t-ws-missing"};
  s = watch(f, names, 2);
  Antifragility__V1__WatchBreakersResponse *m = next_msg(s, TIMEOUT);
  assert_string_equal(m->breaker->name, "t-ws-c");
  assert_true(m->snapshot_complete);
  freem(m);
  af_tc_stream_close(s);

  /* nothing matches: one SNAPSHOT without breaker */
  const char *none[] = {"t-ws-missing"};
  s = watch(f, none, 1);
  m = next_msg(s, TIMEOUT);
  assert_int_equal(m->kind, KIND(SNAPSHOT));
  assert_null(m->breaker);
  assert_true(m->snapshot_complete);
  assert_int_equal(m->sequence, 1);
  freem(m);
  af_tc_stream_close(s);

  /* bad requests are refused */
  const char *seventeen[17];
  for (size_t i = 0; i < 17; i++)
    seventeen[i] = "t-ws-a";
  s = watch(f, seventeen, 17);
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s, TIMEOUT, &st),
                   GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(st.message, "names must have at most 16 entries"));
  af_tc_stream_close(s);
  const char *bad[] = {""};
  s = watch(f, bad, 1);
  assert_int_equal(af_tc_stream_status(s, TIMEOUT, &st),
                   GRPC_STATUS_INVALID_ARGUMENT);
  assert_non_null(strstr(st.message, "names[0] must be 1-128 bytes"));
  af_tc_stream_close(s);
}

static void watch_delivers_every_change_within_milliseconds(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-wd", 1));
  const char *names[] = {"t-wd", "t-wd-new"};
  af_tc_stream_t *s = watch(f, names, 2);
  Antifragility__V1__WatchBreakersResponse *m = next_msg(s, TIMEOUT);
  assert_true(m->snapshot_complete);
  uint64_t seq = m->sequence;
  freem(m);

  /* through the RPC */
  int64_t t0 = af_tc_now_ms();
  freem(outcome(f, "t-wd", false, "timeout", NULL));
  m = next_event(s, TIMEOUT);
  int64_t rpc_delay = af_tc_now_ms() - t0;
  assert_int_equal(m->kind, KIND(TRANSITION));
  assert_int_equal(m->from_state, ST(CLOSED));
  assert_int_equal(m->to_state, ST(OPEN));
  assert_int_equal(m->breaker->state, ST(OPEN));
  assert_true(m->sequence > seq);
  seq = m->sequence;
  freem(m);

  /* straight on the engine, many samples */
  enum { N = 40 };
  int64_t delays[N];
  for (int i = 0; i < N; i++) {
    af_breaker_state_t to = i % 2 == 0 ? AF_BREAKER_CLOSED : AF_BREAKER_OPEN;
    t0 = af_tc_now_ms();
    engine_set(f, "t-wd", to);
    m = next_event(s, TIMEOUT);
    delays[i] = af_tc_now_ms() - t0;
    assert_int_equal(m->kind, KIND(TRANSITION));
    assert_int_equal(m->to_state, af_breaker_state_to_pb(to));
    assert_int_equal(m->sequence, seq + 1);
    seq = m->sequence;
    freem(m);
  }
  qsort(delays, N, sizeof(delays[0]), cmp_i64);
  printf("WatchBreakers transition -> message delay: via RPC %lld ms; via "
         "engine median %lld ms, max %lld ms (%d samples)\n",
         (long long)rpc_delay, (long long)delays[N / 2],
         (long long)delays[N - 1], N);
  assert_true(delays[N / 2] < 100);

  /* lifecycle and config events */
  freem(reg(f, "t-wd-new", 2));
  m = next_event(s, TIMEOUT);
  assert_int_equal(m->kind, KIND(REGISTERED));
  assert_string_equal(m->breaker->name, "t-wd-new");
  freem(m);
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fm;
  Antifragility__V1__RegisterBreakerRequest rr =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  rr.name = "t-wd-new";
  rr.config = cfg_fail_max(&cfg, &fm, 9);
  rr.update_config = true;
  freem(call_ok(f, M("RegisterBreaker"), &rr.base,
                &antifragility__v1__register_breaker_response__descriptor));
  m = next_event(s, TIMEOUT);
  assert_int_equal(m->kind, KIND(CONFIG_CHANGED));
  assert_int_equal(m->breaker->config->fail_max->value, 9);
  freem(m);
  Antifragility__V1__UnregisterBreakerRequest ur =
      ANTIFRAGILITY__V1__UNREGISTER_BREAKER_REQUEST__INIT;
  ur.name = "t-wd-new";
  freem(call_ok(f, M("UnregisterBreaker"), &ur.base,
                &antifragility__v1__unregister_breaker_response__descriptor));
  m = next_event(s, TIMEOUT);
  assert_int_equal(m->kind, KIND(UNREGISTERED));
  assert_string_equal(m->breaker->name, "t-wd-new");
  freem(m);
  /* a breaker outside the filter is not reported */
  freem(reg(f, "t-wd-other", 1));
  ProtobufCMessage *extra = NULL;
  assert_int_equal(af_tc_stream_next(s, 100, &extra), 0);
  af_tc_stream_close(s);
}

static void watch_coalesces_for_a_slow_reader_and_keeps_the_latest(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-wc-a", 1));
  freem(reg(f, "t-wc-b", 1));
  af_tc_stream_t *s = watch(f, NULL, 0);
  for (int i = 0; i < 2; i++)
    freem(next_msg(s, TIMEOUT));
  af_server_stats_t before;
  af_server_stats(af_ts_server(f->ts), &before);

  /* many transitions while the client reads nothing; the last ones leave
   * a OPEN and b HALF_OPEN */
  enum { N = 5000 };
  for (int i = 0; i < N; i++) {
    af_breaker_state_t to = i % 2 == 0 ? AF_BREAKER_OPEN : AF_BREAKER_CLOSED;
    engine_set(f, "t-wc-a", to);
    engine_set(f, "t-wc-b", to);
  }
  engine_set(f, "t-wc-a", AF_BREAKER_OPEN);
  engine_set(f, "t-wc-b", AF_BREAKER_HALF_OPEN);

  /* now drain: fewer messages than events, the last per breaker carries
   * its final state, sequence numbers have no gap */
  size_t msgs = 0;
  uint64_t coalesced = 0, seq = 2;
  Antifragility__V1__BreakerState last_a = ST(UNSPECIFIED),
                                  last_b = ST(UNSPECIFIED);
  Antifragility__V1__BreakerState to_a = ST(UNSPECIFIED),
                                  to_b = ST(UNSPECIFIED);
  for (;;) {
    ProtobufCMessage *pm = NULL;
    int r = af_tc_stream_next(s, 300, &pm);
    if (r == 0)
      break;
    assert_int_equal(r, 1);
    Antifragility__V1__WatchBreakersResponse *m = (void *)pm;
    assert_int_equal(m->sequence, seq + 1);
    seq = m->sequence;
    if (!m->heartbeat) {
      msgs++;
      coalesced += m->coalesced;
      assert_int_equal(m->kind, KIND(TRANSITION));
      if (strcmp(m->breaker->name, "t-wc-a") == 0) {
        last_a = m->breaker->state;
        to_a = m->to_state;
      } else {
        last_b = m->breaker->state;
        to_b = m->to_state;
      }
    }
    freem(m);
  }
  af_server_stats_t after;
  af_server_stats(af_ts_server(f->ts), &after);
  printf(
      "WatchBreakers slow reader: %d events -> %zu messages, coalesced "
      "%llu (server stream_coalesced +%llu)\n",
      2 * N + 2, msgs, (unsigned long long)coalesced,
      (unsigned long long)(after.stream_coalesced - before.stream_coalesced));
  assert_true(msgs < (size_t)(2 * N + 2));
  assert_true(coalesced > 0);
  assert_true(after.stream_coalesced > before.stream_coalesced);
  assert_int_equal(msgs + coalesced, 2 * N + 2); /* every event accounted */
  assert_int_equal(last_a, ST(OPEN));
  assert_int_equal(to_a, ST(OPEN));
  assert_int_equal(last_b, ST(HALF_OPEN));
  assert_int_equal(to_b, ST(HALF_OPEN));
  af_tc_stream_close(s);
}

/* Many distinct breakers change while the client reads nothing: whether
 * the per-stream pending set held them or overflowed into a fresh
 * snapshot, the client ends up with the latest state of every one. */
static void watch_never_loses_the_latest_state_of_any_breaker(void **state)
{
  fixture_t *f = *state;
  enum { NB = 1500 };
  af_breaker_registry_t *reg = af_engine_breakers(af_ts_engine(f->ts));
  char name[32];
  for (int i = 0; i < NB; i++) {
    snprintf(name, sizeof(name), "t-ov-%04d", i);
    assert_int_equal(
        af_breaker_registry_get_or_create(reg, name, NULL, NULL, NULL, NULL),
        AF_OK);
  }
  af_tc_stream_t *s = watch(f, NULL, 0);
  for (int i = 0; i < NB; i++) {
    Antifragility__V1__WatchBreakersResponse *m = next_msg(s, TIMEOUT);
    assert_int_equal(m->kind, KIND(SNAPSHOT));
    assert_int_equal(m->snapshot_complete, i == NB - 1);
    freem(m);
  }
  for (int round = 0; round < 3; round++)
    for (int i = 0; i < NB; i++) {
      snprintf(name, sizeof(name), "t-ov-%04d", i);
      engine_set(f, name, round % 2 == 0 ? AF_BREAKER_OPEN : AF_BREAKER_CLOSED);
    }
  /* final: even breakers HALF_OPEN, odd ones OPEN */
  for (int i = 0; i < NB; i += 2) {
    snprintf(name, sizeof(name), "t-ov-%04d", i);
    engine_set(f, name, AF_BREAKER_HALF_OPEN);
  }
  static Antifragility__V1__BreakerState last[NB];
  memset(last, 0, sizeof(last));
  size_t msgs = 0, snapshots = 0;
  uint64_t seq = NB;
  for (;;) {
    ProtobufCMessage *pm = NULL;
    int r = af_tc_stream_next(s, 500, &pm);
    if (r == 0)
      break;
    assert_int_equal(r, 1);
    Antifragility__V1__WatchBreakersResponse *m = (void *)pm;
    assert_int_equal(m->sequence, seq + 1);
    seq = m->sequence;
    if (m->kind == KIND(SNAPSHOT))
      snapshots++;
    if (m->breaker != NULL) {
      int idx = atoi(m->breaker->name + strlen("t-ov-"));
      assert_true(idx >= 0 && idx < NB);
      last[idx] = m->breaker->state;
      msgs++;
    }
    freem(m);
  }
  printf("WatchBreakers %d breakers x 3.5 changes unread: %zu messages "
         "(%zu of them a fresh snapshot)\n",
         NB, msgs, snapshots);
  for (int i = 0; i < NB; i++)
    assert_int_equal(last[i], i % 2 == 0 ? ST(HALF_OPEN) : ST(OPEN));
  af_tc_stream_close(s);
}

static void watch_sends_heartbeats_when_idle(void **state)
{
  (void)state;
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.heartbeat_ms = 100;
  af_test_server_t *ts = af_ts_start(&cfg);
  fixture_t f = {.ts = ts, .c = af_tc_connect(af_ts_port(ts))};
  af_tc_stream_t *s = watch(&f, NULL, 0);
  Antifragility__V1__WatchBreakersResponse *m = next_msg(s, TIMEOUT);
  assert_true(m->snapshot_complete);
  freem(m);
  m = next_msg(s, 2000);
  assert_true(m->heartbeat);
  assert_int_equal(m->sequence, 2);
  assert_int_equal(m->kind, KIND(UNSPECIFIED));
  assert_null(m->breaker);
  freem(m);
  /* a real event still comes through between heartbeats */
  freem(reg(&f, "t-hb", 1));
  m = next_event(s, TIMEOUT);
  assert_int_equal(m->kind, KIND(REGISTERED));
  freem(m);
  af_tc_stream_close(s);
  af_tc_close(f.c);
  af_ts_stop(ts);
}

static void watch_ends_with_ok_when_the_server_stops(void **state)
{
  fixture_t *f = *state;
  af_tc_stream_t *s = watch(f, NULL, 0);
  freem(next_msg(s, TIMEOUT));
  af_ts_stop(f->ts);
  f->ts = NULL;
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s, TIMEOUT, &st), GRPC_STATUS_OK);
  af_tc_stream_close(s);
}

static void watch_cancel_reaps_the_stream(void **state)
{
  fixture_t *f = *state;
  freem(reg(f, "t-wr", 1));
  af_tc_stream_t *s1 = watch(f, NULL, 0);
  const char *names[] = {"t-wr"};
  af_tc_stream_t *s2 = watch(f, names, 1);
  freem(next_msg(s1, TIMEOUT));
  freem(next_msg(s2, TIMEOUT));
  assert_int_equal(streams_open(f), 2);
  af_tc_stream_cancel(s1);
  int64_t t0 = af_tc_now_ms();
  while (streams_open(f) != 1 && af_tc_now_ms() - t0 < 3000) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(streams_open(f), 1);
  /* the other one still works and is not disturbed by the cancelled one */
  engine_set(f, "t-wr", AF_BREAKER_OPEN);
  Antifragility__V1__WatchBreakersResponse *m = next_event(s2, TIMEOUT);
  assert_int_equal(m->to_state, ST(OPEN));
  freem(m);
  af_tc_stream_close(s2);
  af_tc_stream_close(s1);
  t0 = af_tc_now_ms();
  while (streams_open(f) != 0 && af_tc_now_ms() - t0 < 3000) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  assert_int_equal(streams_open(f), 0);
  /* events after the streams are gone go nowhere and break nothing */
  engine_set(f, "t-wr", AF_BREAKER_CLOSED);
  freem(get(f, "t-wr"));
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
  const struct CMUnitTest tests[] = {
      T(register_creates_once_and_update_config_replaces),
      T(register_refuses_bad_names_and_config_values),
      T(report_outcome_opens_after_fail_max_failures),
      T(half_open_counts_successes_until_success_threshold),
      T(report_outcome_excluded_error_counts_as_success),
      T(report_outcome_refuses_unknown_and_invalid_input),
      T(report_outcomes_stream_returns_one_summary),
      T(report_state_adopts_the_client_state),
      T(list_breakers_pages_in_name_order_with_filters),
      T(reset_closes_and_zeroes_counters),
      T(unregister_removes_the_breaker),
      T(constitutional_hash_mismatch_is_refused),
      T(malformed_request_is_invalid_argument),
      T(watch_starts_with_one_snapshot_per_breaker),
      T(watch_delivers_every_change_within_milliseconds),
      T(watch_coalesces_for_a_slow_reader_and_keeps_the_latest),
      T(watch_never_loses_the_latest_state_of_any_breaker),
      T(watch_cancel_reaps_the_stream),
      cmocka_unit_test(watch_sends_heartbeats_when_idle),
      T(watch_ends_with_ok_when_the_server_stops),
  };
#undef T
  return cmocka_run_group_tests_name("integration_breaker", tests, NULL, NULL);
}
