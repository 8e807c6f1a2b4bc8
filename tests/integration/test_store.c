/*
 * test_store.c - afd's durable state (server/src/store.c, usage_sqlite.c,
 * persist.c) against real servers on a real data directory.
 *
 * Each case makes its own data directory with mkdtemp (under TMPDIR or
 * /tmp) and removes it at the end. Most cases run afd in-process (graceful
 * stop + start on the same directory); the crash case runs the built afd
 * binary as a child process (AFD_BINARY), learns its port from the
 * "afd listening on" log line and kills it with SIGKILL. The ledger is
 * checked by opening the database read-only with SQLite (WAL lets the test
 * read while afd writes). Waits are bounded polls on real conditions; the
 * only sleep that is not a poll is the random moment before the SIGKILL.
 *
 * The unwritable-directory case uses `chattr +i` (immutable files refuse
 * writes even to root and even through file descriptors already open) on
 * the database, its WAL and the directory; it is skipped where the file
 * system has no immutable flag.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "af_testclient.h"
#include "store.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "antifragility/v1/metering.pb-c.h"
#include "antifragility/v1/recovery.pb-c.h"

#define MSVC "/antifragility.v1.MeteringService/"
#define BSVC "/antifragility.v1.BreakerService/"
#define CSVC "/antifragility.v1.ChaosService/"
#define RSVC "/antifragility.v1.RecoveryService/"
#define TIMEOUT_MS 10000
/* 2026-01-01T00:00:00Z */
#define DAY0 INT64_C(1767225600)

static void free_msg(void *m)
{
  if (m != NULL) {
    protobuf_c_message_free_unpacked((ProtobufCMessage *)m, NULL);
  }
}

static void nap_ms(long ms)
{
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* ---- data directories ------------------------------------------------- */

typedef struct {
  char dir[200]; /* fits af_config_t.data_dir */
  char db[300];
} data_dir_t;

/* What a failed case leaves behind (cmocka longjmps out of it): removed by
 * the group teardown. */
static char g_dirs[16][200];
static pid_t g_child;

static void dir_make(data_dir_t *d)
{
  const char *tmp = getenv("TMPDIR");
  snprintf(d->dir, sizeof d->dir, "%.150s/afd-store-XXXXXX",
           tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
  assert_non_null(mkdtemp(d->dir));
  snprintf(d->db, sizeof d->db, "%s/afd.db", d->dir);
  for (size_t i = 0; i < sizeof g_dirs / sizeof g_dirs[0]; i++) {
    if (g_dirs[i][0] == '\0') {
      memcpy(g_dirs[i], d->dir, sizeof g_dirs[i]);
      break;
    }
  }
}

static void dir_remove(data_dir_t *d)
{
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "chattr -R -i '%s' 2>/dev/null; rm -rf '%s'",
           d->dir, d->dir);
  int rc = system(cmd);
  (void)rc;
  for (size_t i = 0; i < sizeof g_dirs / sizeof g_dirs[0]; i++) {
    if (strcmp(g_dirs[i], d->dir) == 0) {
      g_dirs[i][0] = '\0';
    }
  }
}

static int cleanup_leftovers(void **state)
{
  (void)state;
  if (g_child > 0) {
    kill(g_child, SIGKILL);
    waitpid(g_child, NULL, 0);
    g_child = 0;
  }
  for (size_t i = 0; i < sizeof g_dirs / sizeof g_dirs[0]; i++) {
    if (g_dirs[i][0] != '\0') {
      data_dir_t d;
      memset(&d, 0, sizeof d);
      memcpy(d.dir, g_dirs[i], sizeof d.dir);
      dir_remove(&d);
    }
  }
  return 0;
}

static af_test_server_t *start_on(const data_dir_t *d)
{
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.memory = false;
  snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", d->dir);
  cfg.flush_interval_ms = 50;
  return af_ts_start(&cfg);
}

/* ---- the ledger, read directly ---------------------------------------- */

static sqlite3 *db_open(const data_dir_t *d)
{
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open_v2(d->db, &db, SQLITE_OPEN_READONLY, NULL),
                   SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  return db;
}

static int64_t db_int(sqlite3 *db, const char *sql, const char *arg1,
                      const char *arg2)
{
  sqlite3_stmt *st = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
  if (arg1 != NULL) {
    sqlite3_bind_text(st, 1, arg1, -1, SQLITE_STATIC);
  }
  if (arg2 != NULL) {
    sqlite3_bind_text(st, 2, arg2, -1, SQLITE_STATIC);
  }
  assert_int_equal(sqlite3_step(st), SQLITE_ROW);
  int64_t v = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return v;
}

static int64_t ledger_count(sqlite3 *db, const char *tenant, const char *id)
{
  return db_int(db,
                "SELECT count(*) FROM usage_events WHERE tenant_id = ?1 AND "
                "event_id = ?2",
                tenant, id);
}

/* ---- RPC helpers ------------------------------------------------------ */

typedef struct {
  Antifragility__V1__RecordUsageRequest req;
  Antifragility__V1__UsageEvent ev;
  Google__Protobuf__Timestamp ts;
  char tenant[64];
  char id[80];
} ev_t;

static void ev_init(ev_t *e, const char *tenant, const char *id, int64_t sec)
{
  memset(e, 0, sizeof(*e));
  antifragility__v1__record_usage_request__init(&e->req);
  antifragility__v1__usage_event__init(&e->ev);
  google__protobuf__timestamp__init(&e->ts);
  snprintf(e->tenant, sizeof e->tenant, "%s", tenant);
  snprintf(e->id, sizeof e->id, "%s", id);
  e->ts.seconds = sec;
  e->ev.tenant_id = e->tenant;
  e->ev.event_id = e->id;
  e->ev.timestamp = &e->ts;
  e->ev.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AGENT_MESSAGE;
  e->ev.units = 2;
  e->ev.tokens_processed = 10;
  e->ev.latency_ms = 1.5;
  e->ev.compliance_score = 1.0;
  e->ev.constitutional_valid = true;
  e->req.event = &e->ev;
}

/* RecordUsage; *dup gets the reply's duplicate flag on OK. */
static grpc_status_code record(af_tc_t *c, const char *tenant, const char *id,
                               bool *dup, af_tc_status_t *st, int timeout_ms)
{
  ev_t e;
  ev_init(&e, tenant, id, DAY0 + 60);
  ProtobufCMessage *r = NULL;
  grpc_status_code code =
      af_tc_unary(c, MSVC "RecordUsage", &e.req.base,
                  &antifragility__v1__record_usage_response__descriptor, &r, st,
                  NULL, timeout_ms);
  if (code == GRPC_STATUS_OK) {
    Antifragility__V1__RecordUsageResponse *resp =
        (Antifragility__V1__RecordUsageResponse *)r;
    assert_true(resp->accepted);
    assert_true(resp->durable);
    if (dup != NULL) {
      *dup = resp->duplicate;
    }
  }
  free_msg(r);
  return code;
}

/* QueryUsage total count of tenant over all time. */
static uint64_t usage_count(af_tc_t *c, const char *tenant)
{
  Antifragility__V1__QueryUsageRequest q =
      ANTIFRAGILITY__V1__QUERY_USAGE_REQUEST__INIT;
  Google__Protobuf__Timestamp end;
  google__protobuf__timestamp__init(&end);
  end.seconds = DAY0 + 86400;
  q.tenant_id = (char *)tenant;
  q.end = &end;
  q.group_by = ANTIFRAGILITY__V1__USAGE_GROUP_BY__USAGE_GROUP_BY_HOUR;
  ProtobufCMessage *r = NULL;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(c, MSVC "QueryUsage", &q.base,
                  &antifragility__v1__query_usage_response__descriptor, &r, &st,
                  NULL, TIMEOUT_MS);
  if (code != GRPC_STATUS_OK) {
    fail_msg("QueryUsage: %d %s", code, st.message);
  }
  Antifragility__V1__QueryUsageResponse *resp =
      (Antifragility__V1__QueryUsageResponse *)r;
  uint64_t n = resp->total->count;
  uint64_t sum = 0;
  for (size_t i = 0; i < resp->n_buckets; i++) {
    sum += resp->buckets[i]->count;
  }
  assert_int_equal(sum, n);
  free_msg(r);
  return n;
}

static void register_breaker(af_tc_t *c, const char *name, uint32_t fail_max,
                             double weight, const char *excluded)
{
  Antifragility__V1__BreakerConfig cfg;
  antifragility__v1__breaker_config__init(&cfg);
  Google__Protobuf__UInt32Value fm;
  google__protobuf__uint32_value__init(&fm);
  fm.value = fail_max;
  cfg.fail_max = &fm;
  Google__Protobuf__DoubleValue w;
  google__protobuf__double_value__init(&w);
  w.value = weight;
  cfg.weight = &w;
  char *ex[1] = {(char *)excluded};
  if (excluded != NULL) {
    cfg.n_excluded_errors = 1;
    cfg.excluded_errors = ex;
  }
  cfg.description = (char *)"persisted";
  Antifragility__V1__RegisterBreakerRequest req =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  req.name = (char *)name;
  req.config = &cfg;
  ProtobufCMessage *r = NULL;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(c, BSVC "RegisterBreaker", &req.base,
                  &antifragility__v1__register_breaker_response__descriptor, &r,
                  &st, NULL, TIMEOUT_MS);
  if (code != GRPC_STATUS_OK) {
    fail_msg("RegisterBreaker %s: %d %s", name, code, st.message);
  }
  free_msg(r);
}

static Antifragility__V1__BreakerInfo *get_breaker(af_tc_t *c, const char *name,
                                                   ProtobufCMessage **hold)
{
  Antifragility__V1__GetBreakerRequest req =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  req.name = (char *)name;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(c, BSVC "GetBreaker", &req.base,
                  &antifragility__v1__get_breaker_response__descriptor, hold,
                  &st, NULL, TIMEOUT_MS);
  if (code != GRPC_STATUS_OK) {
    fail_msg("GetBreaker %s: %d %s", name, code, st.message);
  }
  return ((Antifragility__V1__GetBreakerResponse *)*hold)->breaker;
}

static void unary_ok(af_tc_t *c, const char *method,
                     const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc)
{
  ProtobufCMessage *r = NULL;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(c, method, req, desc, &r, &st, NULL, TIMEOUT_MS);
  if (code != GRPC_STATUS_OK) {
    fail_msg("%s: %d %s", method, code, st.message);
  }
  free_msg(r);
}

static void inject_latency(af_tc_t *c, const char *target)
{
  Antifragility__V1__InjectLatencyRequest req =
      ANTIFRAGILITY__V1__INJECT_LATENCY_REQUEST__INIT;
  Google__Protobuf__Duration delay;
  google__protobuf__duration__init(&delay);
  delay.nanos = 5000000;
  Google__Protobuf__Duration dur;
  google__protobuf__duration__init(&dur);
  dur.seconds = 120;
  req.target = (char *)target;
  req.delay = &delay;
  req.duration = &dur;
  req.actor = (char *)"alice";
  req.reason = (char *)"game day";
  unary_ok(c, CSVC "InjectLatency", &req.base,
           &antifragility__v1__inject_latency_response__descriptor);
}

static void force_open(af_tc_t *c, const char *breaker)
{
  Antifragility__V1__ForceCircuitOpenRequest req =
      ANTIFRAGILITY__V1__FORCE_CIRCUIT_OPEN_REQUEST__INIT;
  Google__Protobuf__Duration dur;
  google__protobuf__duration__init(&dur);
  dur.seconds = 120;
  req.breaker_name = (char *)breaker;
  req.duration = &dur;
  req.actor = (char *)"bob";
  req.reason = (char *)"drill";
  unary_ok(c, CSVC "ForceCircuitOpen", &req.base,
           &antifragility__v1__force_circuit_open_response__descriptor);
}

static size_t active_scenarios(af_tc_t *c)
{
  Antifragility__V1__ListScenariosRequest req =
      ANTIFRAGILITY__V1__LIST_SCENARIOS_REQUEST__INIT;
  ProtobufCMessage *r = NULL;
  assert_int_equal(
      af_tc_unary(c, CSVC "ListScenarios", &req.base,
                  &antifragility__v1__list_scenarios_response__descriptor, &r,
                  NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_OK);
  size_t n = ((Antifragility__V1__ListScenariosResponse *)r)->n_scenarios;
  free_msg(r);
  return n;
}

static void set_policy(af_tc_t *c, const char *service, uint32_t attempts)
{
  Antifragility__V1__RecoveryPolicy pol;
  antifragility__v1__recovery_policy__init(&pol);
  Google__Protobuf__UInt32Value mra;
  google__protobuf__uint32_value__init(&mra);
  mra.value = attempts;
  pol.max_retry_attempts = &mra;
  Google__Protobuf__Duration initial;
  google__protobuf__duration__init(&initial);
  initial.nanos = 250000000;
  pol.initial_delay = &initial;
  pol.strategy =
      ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_LINEAR_BACKOFF;
  Antifragility__V1__SetRecoveryPolicyRequest req =
      ANTIFRAGILITY__V1__SET_RECOVERY_POLICY_REQUEST__INIT;
  req.service_name = (char *)service;
  req.policy = &pol;
  unary_ok(c, RSVC "SetRecoveryPolicy", &req.base,
           &antifragility__v1__set_recovery_policy_response__descriptor);
}

/* A MANUAL recovery of service, cancelled: one CANCELLED result. */
static void recovery_cancelled(af_tc_t *c, const char *service)
{
  Antifragility__V1__ScheduleRecoveryRequest sreq =
      ANTIFRAGILITY__V1__SCHEDULE_RECOVERY_REQUEST__INIT;
  sreq.service_name = (char *)service;
  sreq.strategy =
      ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_MANUAL;
  unary_ok(c, RSVC "ScheduleRecovery", &sreq.base,
           &antifragility__v1__schedule_recovery_response__descriptor);
  Antifragility__V1__CancelRecoveryRequest creq =
      ANTIFRAGILITY__V1__CANCEL_RECOVERY_REQUEST__INIT;
  creq.service_name = (char *)service;
  creq.reason = (char *)"not needed";
  unary_ok(c, RSVC "CancelRecovery", &creq.base,
           &antifragility__v1__cancel_recovery_response__descriptor);
}

/* ---- restart ----------------------------------------------------------- */

static void
restart_brings_back_breakers_usage_and_audit_but_not_chaos(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);

  af_test_server_t *ts = start_on(&d);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  register_breaker(c, "payments", 3, 2.5, "NotFound");
  register_breaker(c, "search", 7, 1.0, NULL);
  register_breaker(c, "gone", 5, 1.0, NULL);
  Antifragility__V1__UnregisterBreakerRequest ureq =
      ANTIFRAGILITY__V1__UNREGISTER_BREAKER_REQUEST__INIT;
  ureq.name = (char *)"gone";
  unary_ok(c, BSVC "UnregisterBreaker", &ureq.base,
           &antifragility__v1__unregister_breaker_response__descriptor);
  for (int i = 0; i < 25; i++) {
    char id[32];
    snprintf(id, sizeof id, "ev-%d", i);
    bool dup = true;
    assert_int_equal(record(c, "acme", id, &dup, NULL, TIMEOUT_MS),
                     GRPC_STATUS_OK);
    assert_false(dup);
  }
  bool dup = false;
  assert_int_equal(record(c, "acme", "ev-3", &dup, NULL, TIMEOUT_MS),
                   GRPC_STATUS_OK);
  assert_true(dup);
  /* Chaos: one scenario ends by hand, two are still active at the stop
   * (one of them holds "search" forced open). */
  inject_latency(c, "svc-a");
  inject_latency(c, "svc-b");
  Antifragility__V1__DeactivateScenarioRequest dreq =
      ANTIFRAGILITY__V1__DEACTIVATE_SCENARIO_REQUEST__INIT;
  dreq.name = (char *)"latency_svc-b_5ms";
  dreq.actor = (char *)"carol";
  dreq.reason = (char *)"done";
  unary_ok(c, CSVC "DeactivateScenario", &dreq.base,
           &antifragility__v1__deactivate_scenario_response__descriptor);
  force_open(c, "search");
  set_policy(c, "payments", 7);
  recovery_cancelled(c, "search");
  ProtobufCMessage *hold = NULL;
  assert_int_equal(get_breaker(c, "search", &hold)->state,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_FORCED_OPEN);
  free_msg(hold);
  assert_int_equal(active_scenarios(c), 2);
  af_tc_close(c);
  af_ts_stop(ts);

  ts = start_on(&d);
  c = af_tc_connect(af_ts_port(ts));
  hold = NULL;
  Antifragility__V1__BreakerInfo *b = get_breaker(c, "payments", &hold);
  assert_int_equal(b->state,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_CLOSED);
  assert_int_equal(b->config->fail_max->value, 3);
  assert_true(b->config->weight->value == 2.5);
  assert_int_equal(b->config->n_excluded_errors, 1);
  assert_string_equal(b->config->excluded_errors[0], "NotFound");
  assert_string_equal(b->config->description, "persisted");
  free_msg(hold);
  hold = NULL;
  b = get_breaker(c, "search", &hold);
  /* Forced open by chaos, and chaos does not survive: back CLOSED. */
  assert_int_equal(b->state,
                   ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_CLOSED);
  assert_int_equal(b->config->fail_max->value, 7);
  free_msg(hold);
  Antifragility__V1__GetBreakerRequest greq =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  greq.name = (char *)"gone";
  ProtobufCMessage *r = NULL;
  assert_int_equal(
      af_tc_unary(c, BSVC "GetBreaker", &greq.base,
                  &antifragility__v1__get_breaker_response__descriptor, &r,
                  NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_NOT_FOUND);
  assert_int_equal(active_scenarios(c), 0);

  /* Recovery: the policy and the finished task's result are back. */
  Antifragility__V1__GetRecoveryPolicyRequest preq =
      ANTIFRAGILITY__V1__GET_RECOVERY_POLICY_REQUEST__INIT;
  preq.service_name = (char *)"payments";
  r = NULL;
  assert_int_equal(
      af_tc_unary(c, RSVC "GetRecoveryPolicy", &preq.base,
                  &antifragility__v1__get_recovery_policy_response__descriptor,
                  &r, NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_OK);
  Antifragility__V1__GetRecoveryPolicyResponse *pr =
      (Antifragility__V1__GetRecoveryPolicyResponse *)r;
  assert_false(pr->is_default);
  assert_int_equal(pr->policy->max_retry_attempts->value, 7);
  assert_int_equal(
      pr->policy->strategy,
      ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_LINEAR_BACKOFF);
  assert_int_equal(pr->policy->initial_delay->nanos, 250000000);
  free_msg(r);
  Antifragility__V1__GetRecoveryStatusRequest sreq =
      ANTIFRAGILITY__V1__GET_RECOVERY_STATUS_REQUEST__INIT;
  r = NULL;
  assert_int_equal(
      af_tc_unary(c, RSVC "GetRecoveryStatus", &sreq.base,
                  &antifragility__v1__get_recovery_status_response__descriptor,
                  &r, NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_OK);
  Antifragility__V1__GetRecoveryStatusResponse *rs =
      (Antifragility__V1__GetRecoveryStatusResponse *)r;
  assert_int_equal(rs->n_recent_results, 1);
  assert_string_equal(rs->recent_results[0]->service_name, "search");
  assert_int_equal(rs->recent_results[0]->state,
                   ANTIFRAGILITY__V1__RECOVERY_STATE__RECOVERY_STATE_CANCELLED);
  free_msg(r);

  assert_int_equal(usage_count(c, "acme"), 25);
  assert_int_equal(record(c, "acme", "ev-7", &dup, NULL, TIMEOUT_MS),
                   GRPC_STATUS_OK);
  assert_true(dup); /* the ledger came back: still a duplicate */
  assert_int_equal(usage_count(c, "acme"), 25);

  /* The audit log: every activation and deactivation, and the two that
   * were active at the stop ended by the restart. */
  sqlite3 *db = db_open(&d);
  assert_int_equal(db_int(db,
                          "SELECT count(*) FROM chaos_audit WHERE event = "
                          "'activated'",
                          NULL, NULL),
                   3);
  assert_int_equal(
      db_int(db,
             "SELECT count(*) FROM chaos_audit WHERE event = 'deactivated' "
             "AND actor = 'carol' AND reason = 'done' AND scenario = ?1",
             "latency_svc-b_5ms", NULL),
      1);
  assert_int_equal(db_int(db,
                          "SELECT count(*) FROM chaos_audit WHERE event = "
                          "'ended_by_restart'",
                          NULL, NULL),
                   2);
  assert_int_equal(
      db_int(db,
             "SELECT count(*) FROM chaos_audit WHERE event = 'activated' "
             "AND actor = 'alice' AND reason = 'game day' AND wall_ns > 0",
             NULL, NULL),
      2);
  assert_int_equal(db_int(db, "SELECT count(*) FROM chaos_active", NULL, NULL),
                   0);
  sqlite3_stmt *jm = NULL;
  assert_int_equal(sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &jm, NULL),
                   SQLITE_OK);
  assert_int_equal(sqlite3_step(jm), SQLITE_ROW);
  assert_string_equal((const char *)sqlite3_column_text(jm, 0), "wal");
  sqlite3_finalize(jm);
  sqlite3_close(db);

  af_tc_close(c);
  af_ts_stop(ts);
  dir_remove(&d);
}

/* ---- duplicates -------------------------------------------------------- */

#define DUP_THREADS 4
#define DUP_IDS 150

typedef struct {
  int port;
  const char *tenant;
  int fresh; /* replies with duplicate = false */
} dup_arg_t;

static void *dup_worker(void *p)
{
  dup_arg_t *a = p;
  af_tc_t *c = af_tc_connect(a->port);
  for (int i = 0; i < DUP_IDS; i++) {
    char id[32];
    snprintf(id, sizeof id, "shared-%d", i);
    bool dup = true;
    if (record(c, a->tenant, id, &dup, NULL, TIMEOUT_MS) == GRPC_STATUS_OK &&
        !dup) {
      a->fresh++;
    }
  }
  af_tc_close(c);
  return NULL;
}

static void
concurrent_duplicates_count_once_and_tenants_count_separately(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  af_test_server_t *ts = start_on(&d);
  pthread_t th[DUP_THREADS * 2];
  dup_arg_t args[DUP_THREADS * 2];
  for (int i = 0; i < DUP_THREADS * 2; i++) {
    args[i].port = af_ts_port(ts);
    args[i].tenant = i % 2 == 0 ? "tenant-a" : "tenant-b";
    args[i].fresh = 0;
    assert_int_equal(pthread_create(&th[i], NULL, dup_worker, &args[i]), 0);
  }
  int fresh_a = 0;
  int fresh_b = 0;
  for (int i = 0; i < DUP_THREADS * 2; i++) {
    pthread_join(th[i], NULL);
    if (i % 2 == 0) {
      fresh_a += args[i].fresh;
    } else {
      fresh_b += args[i].fresh;
    }
  }
  /* Exactly one client was told "new" for each id of each tenant. */
  assert_int_equal(fresh_a, DUP_IDS);
  assert_int_equal(fresh_b, DUP_IDS);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  assert_int_equal(usage_count(c, "tenant-a"), DUP_IDS);
  assert_int_equal(usage_count(c, "tenant-b"), DUP_IDS);

  /* Group commit: the 1200 calls shared far fewer commits. */
  Antifragility__V1__GetMeteringMetricsRequest mreq =
      ANTIFRAGILITY__V1__GET_METERING_METRICS_REQUEST__INIT;
  ProtobufCMessage *r = NULL;
  assert_int_equal(
      af_tc_unary(c, MSVC "GetMeteringMetrics", &mreq.base,
                  &antifragility__v1__get_metering_metrics_response__descriptor,
                  &r, NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_OK);
  Antifragility__V1__GetMeteringMetricsResponse *m =
      (Antifragility__V1__GetMeteringMetricsResponse *)r;
  assert_int_equal(m->flushed, DUP_THREADS * 2 * DUP_IDS);
  assert_int_equal(m->duplicates, (DUP_THREADS - 1) * 2 * DUP_IDS);
  assert_true(m->batches_flushed < m->flushed);
  free_msg(r);
  af_tc_close(c);
  af_ts_stop(ts);

  sqlite3 *db = db_open(&d);
  assert_int_equal(db_int(db, "SELECT count(*) FROM usage_events", NULL, NULL),
                   2 * DUP_IDS);
  assert_int_equal(db_int(db,
                          "SELECT sum(count) FROM usage_hourly WHERE "
                          "tenant_id = ?1",
                          "tenant-a", NULL),
                   DUP_IDS);
  assert_int_equal(db_int(db,
                          "SELECT sum(units) FROM usage_hourly WHERE "
                          "tenant_id = ?1",
                          "tenant-b", NULL),
                   2 * DUP_IDS);
  sqlite3_close(db);
  dir_remove(&d);
}

/* ---- QueryUsage: SQLite answers exactly like the memory store ---------- */

static bool close_enough(double a, double b)
{
  double d = a > b ? a - b : b - a;
  double m = (a > 0 ? a : -a) + (b > 0 ? b : -b);
  return d <= 1e-9 * (m > 1 ? m : 1);
}

static void same_bucket(const Antifragility__V1__UsageBucket *a,
                        const Antifragility__V1__UsageBucket *b)
{
  int64_t sa = a->bucket_start != NULL ? a->bucket_start->seconds : -1;
  int64_t sb = b->bucket_start != NULL ? b->bucket_start->seconds : -1;
  assert_int_equal(sa, sb);
  assert_int_equal(a->operation, b->operation);
  assert_int_equal(a->tier, b->tier);
  assert_int_equal(a->count, b->count);
  assert_int_equal(a->units, b->units);
  assert_int_equal(a->tokens, b->tokens);
  assert_int_equal(a->constitutional_invalid, b->constitutional_invalid);
  assert_true(close_enough(a->latency_sum_ms, b->latency_sum_ms));
  assert_true(close_enough(a->compliance_avg, b->compliance_avg));
}

static Antifragility__V1__QueryUsageResponse *
query_range(af_tc_t *c, int64_t from, int64_t to, int group, int op, int tier)
{
  Antifragility__V1__QueryUsageRequest q =
      ANTIFRAGILITY__V1__QUERY_USAGE_REQUEST__INIT;
  Google__Protobuf__Timestamp start;
  Google__Protobuf__Timestamp end;
  google__protobuf__timestamp__init(&start);
  google__protobuf__timestamp__init(&end);
  start.seconds = from;
  end.seconds = to;
  q.tenant_id = (char *)"diff";
  q.start = &start;
  q.end = &end;
  q.group_by = (Antifragility__V1__UsageGroupBy)group;
  q.operation = (Antifragility__V1__MeterableOperation)op;
  q.tier = (Antifragility__V1__MeteringTier)tier;
  ProtobufCMessage *r = NULL;
  af_tc_status_t st;
  if (af_tc_unary(c, MSVC "QueryUsage", &q.base,
                  &antifragility__v1__query_usage_response__descriptor, &r, &st,
                  NULL, TIMEOUT_MS) != GRPC_STATUS_OK) {
    fail_msg("QueryUsage: %s", st.message);
  }
  return (Antifragility__V1__QueryUsageResponse *)r;
}

static void query_usage_on_sqlite_matches_the_memory_store(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  af_test_server_t *disk = start_on(&d);
  af_test_server_t *mem = af_ts_start(NULL);
  af_tc_t *cd = af_tc_connect(af_ts_port(disk));
  af_tc_t *cm = af_tc_connect(af_ts_port(mem));
  /* 400 events over three days, every operation and tier, seeded. */
  uint64_t seed = 42;
  for (int i = 0; i < 400; i++) {
    seed = seed * 6364136223846793005u + 1442695040888963407u;
    uint32_t x = (uint32_t)(seed >> 33);
    char id[32];
    snprintf(id, sizeof id, "d-%d", i);
    ev_t e;
    ev_init(&e, "diff", id, DAY0 + (int64_t)(x % (3 * 86400)));
    e.ev.operation = (Antifragility__V1__MeterableOperation)(1 + x % 8);
    e.ev.tier = (Antifragility__V1__MeteringTier)(1 + (x >> 3) % 4);
    e.ev.units = 1 + (x >> 5) % 7;
    e.ev.tokens_processed = (x >> 8) % 1000;
    e.ev.latency_ms = (double)((x >> 10) % 5000) / 7.0;
    e.ev.compliance_score = (double)((x >> 12) % 101) / 100.0;
    e.ev.constitutional_valid = (x >> 20) % 5 != 0;
    for (int k = 0; k < 2; k++) {
      ProtobufCMessage *r = NULL;
      af_tc_status_t st;
      if (af_tc_unary(k == 0 ? cd : cm, MSVC "RecordUsage", &e.req.base,
                      &antifragility__v1__record_usage_response__descriptor, &r,
                      &st, NULL, TIMEOUT_MS) != GRPC_STATUS_OK) {
        fail_msg("RecordUsage: %s", st.message);
      }
      free_msg(r);
    }
  }
  const int64_t ranges[][2] = {
      {DAY0, DAY0 + 3 * 86400},                /* whole hours only */
      {DAY0 + 1234, DAY0 + 2 * 86400 + 777},   /* both ends cut */
      {DAY0 + 3600 + 100, DAY0 + 3600 + 2000}, /* inside one hour */
      {DAY0 + 7200, DAY0 + 86400 + 59},        /* end cut */
      {DAY0 - 86400, DAY0 + 10 * 86400},       /* beyond the data */
      {DAY0 + 500, DAY0 + 500},                /* empty */
  };
  const int filters[][2] = {{0, 0}, {3, 0}, {0, 2}, {5, 4}};
  size_t compared = 0;
  for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
    for (int g = 0; g <= 4; g++) {
      for (size_t f = 0; f < sizeof filters / sizeof filters[0]; f++) {
        Antifragility__V1__QueryUsageResponse *a = query_range(
            cd, ranges[r][0], ranges[r][1], g, filters[f][0], filters[f][1]);
        Antifragility__V1__QueryUsageResponse *b = query_range(
            cm, ranges[r][0], ranges[r][1], g, filters[f][0], filters[f][1]);
        assert_int_equal(a->n_buckets, b->n_buckets);
        assert_int_equal(a->truncated, b->truncated);
        same_bucket(a->total, b->total);
        for (size_t i = 0; i < a->n_buckets; i++) {
          same_bucket(a->buckets[i], b->buckets[i]);
        }
        compared += a->n_buckets;
        free_msg(a);
        free_msg(b);
      }
    }
  }
  assert_true(compared > 100);
  /* And the totals equal what was sent. */
  Antifragility__V1__QueryUsageResponse *all =
      query_range(cd, DAY0, DAY0 + 3 * 86400, 0, 0, 0);
  assert_int_equal(all->total->count, 400);
  free_msg(all);
  af_tc_close(cd);
  af_tc_close(cm);
  af_ts_stop(disk);
  af_ts_stop(mem);
  dir_remove(&d);
}

/* ---- crash (kill -9) ---------------------------------------------------- */

typedef struct {
  pid_t pid;
  int port;
  char log[600];
} proc_t;

/* Starts the afd binary on d (with --drain-ms drain_ms) and waits
 * (bounded) for its port. */
static void proc_start_drain(proc_t *p, const data_dir_t *d, const char *tag,
                             const char *drain_ms)
{
  snprintf(p->log, sizeof p->log, "%s.%s.log", d->dir, tag);
  p->port = 0;
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    int fd = open(p->log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 2);
      close(fd);
    }
    execl(AFD_BINARY, AFD_BINARY, "--listen", "127.0.0.1:0", "--data-dir",
          d->dir, "--log-level", "info", "--flush-interval-ms", "50",
          "--drain-ms", drain_ms, (char *)NULL);
    _exit(127);
  }
  p->pid = pid;
  g_child = pid;
  int64_t deadline = af_tc_now_ms() + 15000;
  while (p->port == 0 && af_tc_now_ms() < deadline) {
    FILE *f = fopen(p->log, "r");
    char line[1024];
    while (f != NULL && fgets(line, sizeof line, f) != NULL) {
      const char *at = strstr(line, "afd listening on ");
      const char *colon = at != NULL ? strrchr(at, ':') : NULL;
      if (colon != NULL) {
        p->port = atoi(colon + 1);
      }
    }
    if (f != NULL) {
      fclose(f);
    }
    int status;
    if (p->port == 0 && waitpid(pid, &status, WNOHANG) == pid) {
      fail_msg("afd exited early (status %d), see %s", status, p->log);
    }
    if (p->port == 0) {
      nap_ms(10);
    }
  }
  if (p->port == 0) {
    fail_msg("afd did not report its port within 15 s (%s)", p->log);
  }
}

static void proc_start(proc_t *p, const data_dir_t *d, const char *tag)
{
  proc_start_drain(p, d, tag, "5000");
}

/* Stops the process with sig and returns its wait status; *log_out (may
 * be NULL) gets its log (returns owned: free). */
static int proc_stop_log(proc_t *p, int sig, char **log_out)
{
  kill(p->pid, sig);
  int status = 0;
  assert_int_equal(waitpid(p->pid, &status, 0), p->pid);
  g_child = 0;
  if (log_out != NULL) {
    *log_out = NULL;
    FILE *f = fopen(p->log, "r");
    if (f != NULL) {
      char *buf = calloc(1, 1 << 20);
      assert_non_null(buf);
      size_t n = fread(buf, 1, (1 << 20) - 1, f);
      buf[n] = '\0';
      fclose(f);
      *log_out = buf;
    }
  }
  unlink(p->log);
  return status;
}

static int proc_stop(proc_t *p, int sig) { return proc_stop_log(p, sig, NULL); }

#define CRASH_WORKERS 4
#define CRASH_MAX 20000
#define CRASH_STREAM_BATCH 20

typedef struct {
  int port;
  int index;
  bool streaming;
  _Atomic bool *stop;
  int sent; /* ids 0..sent-1 were sent (maybe not acknowledged) */
  uint8_t acked[CRASH_MAX];
} crash_arg_t;

static void crash_id(char *out, size_t n, int worker, int i)
{
  snprintf(out, n, "w%d-%d", worker, i);
}

static void *crash_worker(void *p)
{
  crash_arg_t *a = p;
  af_tc_t *c = af_tc_connect(a->port);
  while (!*a->stop && a->sent + CRASH_STREAM_BATCH <= CRASH_MAX) {
    if (!a->streaming) {
      char id[32];
      crash_id(id, sizeof id, a->index, a->sent);
      int i = a->sent++;
      if (record(c, "crash", id, NULL, NULL, 2000) == GRPC_STATUS_OK) {
        a->acked[i] = 1;
      }
      continue;
    }
    ev_t evs[CRASH_STREAM_BATCH];
    const ProtobufCMessage *reqs[CRASH_STREAM_BATCH];
    int first = a->sent;
    for (int k = 0; k < CRASH_STREAM_BATCH; k++) {
      char id[32];
      crash_id(id, sizeof id, a->index, first + k);
      ev_init(&evs[k], "crash", id, DAY0 + 60);
      reqs[k] = &evs[k].req.base;
    }
    a->sent += CRASH_STREAM_BATCH;
    ProtobufCMessage *r = NULL;
    if (af_tc_client_stream(
            c, MSVC "RecordUsageStream", reqs, CRASH_STREAM_BATCH,
            &antifragility__v1__record_usage_stream_response__descriptor, &r,
            NULL, 2000) == GRPC_STATUS_OK) {
      Antifragility__V1__RecordUsageStreamResponse *resp =
          (Antifragility__V1__RecordUsageStreamResponse *)r;
      /* A stream acknowledges its events when it answers with none
       * rejected. */
      if (resp->rejected == 0 &&
          resp->accepted + resp->duplicates == CRASH_STREAM_BATCH) {
        for (int k = 0; k < CRASH_STREAM_BATCH; k++) {
          a->acked[first + k] = 1;
        }
      }
    }
    free_msg(r);
  }
  af_tc_close(c);
  return NULL;
}

/* Runs CRASH_WORKERS clients (worker 0 streaming) against p until some
 * events were acknowledged, then stops afd with sig at a random moment and
 * joins them. *sent / *acked count what was sent and acknowledged.
 * Returns afd's wait status. args returns owned by the caller (static). */
static int load_then_signal(proc_t *p, int sig, crash_arg_t *args, int *sent,
                            int *acked)
{
  _Atomic bool stop = false;
  pthread_t th[CRASH_WORKERS];
  for (int i = 0; i < CRASH_WORKERS; i++) {
    memset(&args[i], 0, sizeof(args[i]));
    args[i].port = p->port;
    args[i].index = i;
    args[i].streaming = i == 0;
    args[i].stop = &stop;
    assert_int_equal(pthread_create(&th[i], NULL, crash_worker, &args[i]), 0);
  }
  int64_t deadline = af_tc_now_ms() + 10000;
  while (args[1].sent < 50 && af_tc_now_ms() < deadline) {
    nap_ms(5);
  }
  srand((unsigned)time(NULL) ^ (unsigned)getpid());
  nap_ms(20 + rand() % 300);
  int status = proc_stop(p, sig);
  stop = true;
  for (int i = 0; i < CRASH_WORKERS; i++) {
    pthread_join(th[i], NULL);
  }
  *sent = *acked = 0;
  for (int i = 0; i < CRASH_WORKERS; i++) {
    *sent += args[i].sent;
    for (int k = 0; k < args[i].sent; k++) {
      *acked += args[i].acked[k];
    }
  }
  return status;
}

/* Fails unless every acknowledged event of args is in the ledger once. */
static void acknowledged_are_in_the_ledger(const data_dir_t *d,
                                           const crash_arg_t *args)
{
  sqlite3 *db = db_open(d);
  for (int i = 0; i < CRASH_WORKERS; i++) {
    for (int k = 0; k < args[i].sent; k++) {
      if (args[i].acked[k]) {
        char id[32];
        crash_id(id, sizeof id, i, k);
        if (ledger_count(db, "crash", id) != 1) {
          fail_msg("acknowledged event %s is not in the ledger", id);
        }
      }
    }
  }
  sqlite3_close(db);
}

static void
sigkill_loses_no_acknowledged_event_and_replay_counts_once(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  proc_t p;
  proc_start(&p, &d, "1");

  /* Let some events be acknowledged, then kill at a random moment. */
  static crash_arg_t args[CRASH_WORKERS];
  int sent = 0;
  int acked = 0;
  load_then_signal(&p, SIGKILL, args, &sent, &acked);
  print_message("crash: %d sent, %d acknowledged before SIGKILL\n", sent,
                acked);
  assert_true(acked > 0);

  proc_start(&p, &d, "2");
  acknowledged_are_in_the_ledger(&d, args);
  sqlite3 *db = db_open(&d);
  /* The aggregates agree with the ledger after the crash. */
  int64_t in_ledger =
      db_int(db, "SELECT count(*) FROM usage_events WHERE tenant_id = 'crash'",
             NULL, NULL);
  af_tc_t *c = af_tc_connect(p.port);
  assert_int_equal(usage_count(c, "crash"), (uint64_t)in_ledger);

  /* Replay everything that was sent, acknowledged or not. */
  for (int i = 0; i < CRASH_WORKERS; i++) {
    for (int k = 0; k < args[i].sent; k++) {
      char id[32];
      crash_id(id, sizeof id, i, k);
      bool dup = false;
      af_tc_status_t st;
      grpc_status_code code = record(c, "crash", id, &dup, &st, TIMEOUT_MS);
      if (code != GRPC_STATUS_OK) {
        fail_msg("replay of %s: %d %s", id, code, st.message);
      }
      if (args[i].acked[k] && !dup) {
        fail_msg("acknowledged %s was counted again on replay", id);
      }
    }
  }
  assert_int_equal(usage_count(c, "crash"), (uint64_t)sent);
  assert_int_equal(
      db_int(db, "SELECT count(*) FROM usage_events WHERE tenant_id = 'crash'",
             NULL, NULL),
      sent);
  sqlite3_close(db);
  af_tc_close(c);
  int status = proc_stop(&p, SIGTERM);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  dir_remove(&d);
}

/* SIGTERM under load: the graceful drain writes everything it acknowledged
 * (and what it had queued), open streams end with OK, afd exits 0; after a
 * restart every acknowledged event is in the ledger exactly once. */
static void sigterm_under_load_keeps_every_acknowledged_event(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  proc_t p;
  proc_start(&p, &d, "t1");

  af_tc_t *wc = af_tc_connect(p.port);
  Antifragility__V1__WatchHealthRequest wq =
      ANTIFRAGILITY__V1__WATCH_HEALTH_REQUEST__INIT;
  af_tc_stream_t *watch = af_tc_stream_open(
      wc, "/antifragility.v1.HealthService/WatchHealth", &wq.base,
      &antifragility__v1__watch_health_response__descriptor, NULL, 60000);
  ProtobufCMessage *first = NULL;
  assert_int_equal(af_tc_stream_next(watch, TIMEOUT_MS, &first), 1);
  free_msg(first);

  static crash_arg_t args[CRASH_WORKERS];
  int sent = 0, acked = 0;
  int status = load_then_signal(&p, SIGTERM, args, &sent, &acked);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(watch, TIMEOUT_MS, &st),
                   GRPC_STATUS_OK); /* ended cleanly, not cancelled */
  af_tc_stream_close(watch);
  af_tc_close(wc);

  print_message("sigterm: %d sent, %d acknowledged before the stop\n", sent,
                acked);
  assert_true(acked > 0);
  proc_start(&p, &d, "t2");
  acknowledged_are_in_the_ledger(&d, args);
  status = proc_stop(&p, SIGTERM);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  dir_remove(&d);
}

/* ---- failures ---------------------------------------------------------- */

static bool chattr(const char *flag, const char *path)
{
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "chattr %s '%s' 2>/dev/null", flag, path);
  return system(cmd) == 0;
}

static void
unwritable_dir_mid_run_fails_rpcs_keeps_acknowledged_and_serves(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  af_test_server_t *ts = start_on(&d);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  for (int i = 0; i < 20; i++) {
    char id[32];
    snprintf(id, sizeof id, "before-%d", i);
    assert_int_equal(record(c, "acme", id, NULL, NULL, TIMEOUT_MS),
                     GRPC_STATUS_OK);
  }
  char wal[700];
  snprintf(wal, sizeof wal, "%s-wal", d.db);
  if (!chattr("+i", d.db)) {
    af_tc_close(c);
    af_ts_stop(ts);
    dir_remove(&d);
    skip(); /* no immutable flag on this file system */
  }
  assert_true(chattr("+i", wal));
  assert_true(chattr("+i", d.dir));

  af_tc_status_t st;
  assert_int_equal(record(c, "acme", "during-0", NULL, &st, TIMEOUT_MS),
                   GRPC_STATUS_UNAVAILABLE);
  assert_non_null(strstr(st.message, "metering store cannot write"));
  assert_int_equal(record(c, "acme", "during-1", NULL, &st, TIMEOUT_MS),
                   GRPC_STATUS_UNAVAILABLE);
  assert_non_null(strstr(st.message, "metering store cannot write"));
  /* Everything else still answers; reads still work. */
  register_breaker(c, "while-broken", 4, 1.0, NULL);
  assert_int_equal(usage_count(c, "acme"), 20);

  assert_true(chattr("-i", d.dir));
  assert_true(chattr("-i", wal));
  assert_true(chattr("-i", d.db));
  /* The refused batch is retried by the meter; once it is in, new events
   * are taken again. */
  int64_t deadline = af_tc_now_ms() + 15000;
  grpc_status_code code = GRPC_STATUS_UNAVAILABLE;
  while (code != GRPC_STATUS_OK && af_tc_now_ms() < deadline) {
    code = record(c, "acme", "after-0", NULL, &st, TIMEOUT_MS);
    if (code != GRPC_STATUS_OK) {
      nap_ms(20);
    }
  }
  assert_int_equal(code, GRPC_STATUS_OK);
  af_tc_close(c);
  af_ts_stop(ts);

  sqlite3 *db = db_open(&d);
  for (int i = 0; i < 20; i++) {
    char id[32];
    snprintf(id, sizeof id, "before-%d", i);
    assert_int_equal(ledger_count(db, "acme", id), 1);
  }
  assert_int_equal(ledger_count(db, "acme", "after-0"), 1);
  sqlite3_close(db);
  dir_remove(&d);
}

static void shutdown_drain_reports_events_it_could_not_write(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  proc_t p;
  proc_start_drain(&p, &d, "drain", "300");
  af_tc_t *c = af_tc_connect(p.port);
  for (int i = 0; i < 5; i++) {
    char id[32];
    snprintf(id, sizeof id, "kept-%d", i);
    assert_int_equal(record(c, "acme", id, NULL, NULL, TIMEOUT_MS),
                     GRPC_STATUS_OK);
  }
  char wal[400];
  snprintf(wal, sizeof wal, "%s-wal", d.db);
  if (!chattr("+i", d.db)) {
    af_tc_close(c);
    proc_stop(&p, SIGKILL);
    dir_remove(&d);
    skip();
  }
  assert_true(chattr("+i", wal));
  af_tc_status_t st;
  assert_int_equal(record(c, "acme", "stuck", NULL, &st, TIMEOUT_MS),
                   GRPC_STATUS_UNAVAILABLE);
  af_tc_close(c);
  /* SIGTERM: the drain tries for --drain-ms, then says what it lost. */
  char *log = NULL;
  int status = proc_stop_log(&p, SIGTERM, &log);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_non_null(log);
  if (strstr(log, "1 event(s) could not be written at shutdown (deadline "
                  "300 ms)") == NULL) {
    fail_msg("no drain report in the log:\n%s", log);
  }
  free(log);
  assert_true(chattr("-i", wal));
  assert_true(chattr("-i", d.db));

  /* A normal stop drains everything and says so. */
  proc_start(&p, &d, "drain2");
  c = af_tc_connect(p.port);
  assert_int_equal(record(c, "acme", "kept-0", NULL, NULL, TIMEOUT_MS),
                   GRPC_STATUS_OK);
  af_tc_close(c);
  status = proc_stop_log(&p, SIGTERM, &log);
  assert_int_equal(WEXITSTATUS(status), 0);
  assert_non_null(strstr(log, "queue drained at shutdown"));
  free(log);
  sqlite3 *db = db_open(&d);
  assert_int_equal(
      db_int(db,
             "SELECT count(*) FROM usage_events WHERE event_id LIKE "
             "'kept-%'",
             NULL, NULL),
      5);
  sqlite3_close(db);
  dir_remove(&d);
}

static void corrupt_store_keeps_serving_and_metering_says_why(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  FILE *f = fopen(d.db, "w");
  assert_non_null(f);
  for (int i = 0; i < 512; i++) {
    fputs("this is not a database ", f);
  }
  fclose(f);
  af_test_server_t *ts = start_on(&d);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  af_tc_status_t st;
  assert_int_equal(record(c, "acme", "x", NULL, &st, TIMEOUT_MS),
                   GRPC_STATUS_UNAVAILABLE);
  assert_non_null(strstr(st.message, "metering store unavailable"));
  assert_non_null(strstr(st.message, "not a database"));
  Antifragility__V1__QueryUsageRequest q =
      ANTIFRAGILITY__V1__QUERY_USAGE_REQUEST__INIT;
  q.tenant_id = (char *)"acme";
  ProtobufCMessage *r = NULL;
  assert_int_equal(
      af_tc_unary(c, MSVC "QueryUsage", &q.base,
                  &antifragility__v1__query_usage_response__descriptor, &r, &st,
                  NULL, TIMEOUT_MS),
      GRPC_STATUS_UNAVAILABLE);
  register_breaker(c, "still-works", 4, 1.0, NULL);
  af_tc_close(c);
  af_ts_stop(ts);
  dir_remove(&d);
}

static void newer_schema_is_refused_not_overwritten(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(d.db, &db), SQLITE_OK);
  assert_int_equal(
      sqlite3_exec(db, "PRAGMA user_version = 999", NULL, NULL, NULL),
      SQLITE_OK);
  sqlite3_close(db);
  af_test_server_t *ts = start_on(&d);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  af_tc_status_t st;
  assert_int_equal(record(c, "acme", "x", NULL, &st, TIMEOUT_MS),
                   GRPC_STATUS_UNAVAILABLE);
  assert_non_null(strstr(st.message, "schema version 999 is newer"));
  af_tc_close(c);
  af_ts_stop(ts);
  db = db_open(&d);
  assert_int_equal(db_int(db, "PRAGMA user_version", NULL, NULL), 999);
  sqlite3_close(db);
  dir_remove(&d);
}

static void older_schema_is_migrated_in_place(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  af_test_server_t *ts = start_on(&d);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  assert_int_equal(record(c, "acme", "kept", NULL, NULL, TIMEOUT_MS),
                   GRPC_STATUS_OK);
  af_tc_close(c);
  af_ts_stop(ts);
  /* Make it a version-1 database (before the recovery tables of versions 2
   * and 3). */
  sqlite3 *db = NULL;
  assert_int_equal(sqlite3_open(d.db, &db), SQLITE_OK);
  assert_int_equal(sqlite3_exec(db,
                                "DROP TABLE recovery_policies; DROP TABLE "
                                "recovery_history; DROP TABLE recovery_audit;"
                                " PRAGMA user_version = 1",
                                NULL, NULL, NULL),
                   SQLITE_OK);
  sqlite3_close(db);

  ts = start_on(&d);
  c = af_tc_connect(af_ts_port(ts));
  set_policy(c, "svc", 3); /* needs the version-2 table */
  bool dup = false;
  assert_int_equal(record(c, "acme", "kept", &dup, NULL, TIMEOUT_MS),
                   GRPC_STATUS_OK);
  assert_true(dup);
  af_tc_close(c);
  af_ts_stop(ts);
  db = db_open(&d);
  assert_int_equal(db_int(db, "PRAGMA user_version", NULL, NULL),
                   AF_STORE_SCHEMA_VERSION);
  assert_int_equal(
      db_int(db, "SELECT count(*) FROM recovery_policies", NULL, NULL), 1);
  assert_int_equal(/* version 3's table exists: the policy set above */
                   db_int(db, "SELECT count(*) FROM recovery_audit", NULL,
                          NULL),
                   1);
  sqlite3_close(db);
  dir_remove(&d);
}

static bool chaos_stopped(af_tc_t *c)
{
  Antifragility__V1__GetChaosMetricsRequest q =
      ANTIFRAGILITY__V1__GET_CHAOS_METRICS_REQUEST__INIT;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(
      af_tc_unary(c, CSVC "GetChaosMetrics", &q.base,
                  &antifragility__v1__get_chaos_metrics_response__descriptor,
                  &resp, NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_OK);
  bool stopped =
      ((Antifragility__V1__GetChaosMetricsResponse *)resp)->emergency_stopped;
  free_msg(resp);
  return stopped;
}

/* Fail safe: an emergency stop survives a restart until ResetChaos. */
static void emergency_stop_stays_latched_across_a_restart(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  af_test_server_t *ts = start_on(&d);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  Antifragility__V1__EmergencyStopRequest sq =
      ANTIFRAGILITY__V1__EMERGENCY_STOP_REQUEST__INIT;
  sq.actor = "oncall";
  sq.reason = "incident 42";
  unary_ok(c, CSVC "EmergencyStop", &sq.base,
           &antifragility__v1__emergency_stop_response__descriptor);
  assert_true(chaos_stopped(c));
  af_tc_close(c);
  af_ts_stop(ts);

  ts = start_on(&d);
  c = af_tc_connect(af_ts_port(ts));
  assert_true(chaos_stopped(c)); /* still latched */
  Antifragility__V1__InjectErrorsRequest iq =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  iq.target = "t";
  iq.error_rate = 0.5;
  ProtobufCMessage *resp = NULL;
  assert_int_equal(
      af_tc_unary(c, CSVC "InjectErrors", &iq.base,
                  &antifragility__v1__inject_errors_response__descriptor, &resp,
                  NULL, NULL, TIMEOUT_MS),
      GRPC_STATUS_FAILED_PRECONDITION);
  Antifragility__V1__ResetChaosRequest rq =
      ANTIFRAGILITY__V1__RESET_CHAOS_REQUEST__INIT;
  unary_ok(c, CSVC "ResetChaos", &rq.base,
           &antifragility__v1__reset_chaos_response__descriptor);
  assert_false(chaos_stopped(c));
  af_tc_close(c);
  af_ts_stop(ts);

  ts = start_on(&d); /* reset before the restart: not latched */
  c = af_tc_connect(af_ts_port(ts));
  assert_false(chaos_stopped(c));
  af_tc_close(c);
  af_ts_stop(ts);
  sqlite3 *db = db_open(&d);
  assert_int_equal(db_int(db,
                          "SELECT count(*) FROM chaos_audit WHERE event ="
                          " 'emergency_stop' AND actor = 'oncall'",
                          NULL, NULL),
                   1);
  sqlite3_close(db);
  dir_remove(&d);
}

/* SetRecoveryPolicy answers once the policy is committed: SIGKILL right
 * after the answer loses none of them. */
static void acknowledged_policies_survive_sigkill(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  proc_t p;
  proc_start(&p, &d, "p1");
  af_tc_t *c = af_tc_connect(p.port);
  for (int i = 0; i < 20; i++) {
    char name[32];
    snprintf(name, sizeof name, "svc-%d", i);
    set_policy(c, name, (uint32_t)(i + 1));
  }
  af_tc_close(c);
  proc_stop(&p, SIGKILL); /* no graceful commit of anything queued */

  sqlite3 *db = db_open(&d);
  assert_int_equal(
      db_int(db, "SELECT count(*) FROM recovery_policies", NULL, NULL), 20);
  assert_int_equal(db_int(db,
                          "SELECT max_retry_attempts FROM recovery_policies"
                          " WHERE service = ?1",
                          "svc-19", NULL),
                   20);
  sqlite3_close(db);
  dir_remove(&d);
}

/* With tokens, the audit logs name the token's identity: chaos_audit for
 * an activation, recovery_audit for policy / schedule / cancel. */
static void audit_logs_record_the_callers_identity(void **state)
{
  (void)state;
  data_dir_t d;
  dir_make(&d);
  char tokens[240];
  snprintf(tokens, sizeof tokens, "%.200s/tokens", d.dir);
  FILE *f = fopen(tokens, "w");
  assert_non_null(f);
  fputs("ops admin admin-token-0123456789\n", f);
  fclose(f);
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.memory = false;
  snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", d.dir);
  snprintf(cfg.tokens_file, sizeof cfg.tokens_file, "%s", tokens);
  af_test_server_t *ts = af_ts_start(&cfg);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  static const char *const md[] = {"authorization",
                                   "Bearer admin-token-0123456789", NULL};
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;

  Antifragility__V1__SetRecoveryPolicyRequest pq =
      ANTIFRAGILITY__V1__SET_RECOVERY_POLICY_REQUEST__INIT;
  pq.service_name = "audited";
  assert_int_equal(
      af_tc_unary(c, RSVC "SetRecoveryPolicy", &pq.base,
                  &antifragility__v1__set_recovery_policy_response__descriptor,
                  &resp, &st, md, TIMEOUT_MS),
      GRPC_STATUS_OK);
  free_msg(resp);
  Antifragility__V1__ScheduleRecoveryRequest sq =
      ANTIFRAGILITY__V1__SCHEDULE_RECOVERY_REQUEST__INIT;
  sq.service_name = "audited";
  sq.strategy = ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_MANUAL;
  assert_int_equal(
      af_tc_unary(c, RSVC "ScheduleRecovery", &sq.base,
                  &antifragility__v1__schedule_recovery_response__descriptor,
                  &resp, &st, md, TIMEOUT_MS),
      GRPC_STATUS_OK);
  free_msg(resp);
  Antifragility__V1__CancelRecoveryRequest cq =
      ANTIFRAGILITY__V1__CANCEL_RECOVERY_REQUEST__INIT;
  cq.service_name = "audited";
  cq.reason = "drill over";
  assert_int_equal(
      af_tc_unary(c, RSVC "CancelRecovery", &cq.base,
                  &antifragility__v1__cancel_recovery_response__descriptor,
                  &resp, &st, md, TIMEOUT_MS),
      GRPC_STATUS_OK);
  free_msg(resp);
  Antifragility__V1__InjectErrorsRequest iq =
      ANTIFRAGILITY__V1__INJECT_ERRORS_REQUEST__INIT;
  iq.target = "audited";
  iq.error_rate = 0.5;
  assert_int_equal(
      af_tc_unary(c, CSVC "InjectErrors", &iq.base,
                  &antifragility__v1__inject_errors_response__descriptor, &resp,
                  &st, md, TIMEOUT_MS),
      GRPC_STATUS_OK);
  free_msg(resp);
  af_tc_close(c);
  af_ts_stop(ts); /* a graceful stop commits the write-behind jobs */

  sqlite3 *db = db_open(&d);
  assert_int_equal(
      db_int(db,
             "SELECT count(*) FROM recovery_audit WHERE service = 'audited'"
             " AND actor = 'ops' AND action IN ('policy', 'schedule',"
             " 'cancel')",
             NULL, NULL),
      3);
  assert_int_equal(
      db_int(db,
             "SELECT count(*) FROM recovery_audit WHERE action = 'cancel'"
             " AND detail = 'drill over'",
             NULL, NULL),
      1);
  assert_int_equal(
      db_int(db,
             "SELECT count(*) FROM chaos_audit WHERE target ="
             " 'audited' AND event = 'activated' AND actor = 'ops'",
             NULL, NULL),
      1);
  sqlite3_close(db);
  dir_remove(&d);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(
          restart_brings_back_breakers_usage_and_audit_but_not_chaos),
      cmocka_unit_test(
          concurrent_duplicates_count_once_and_tenants_count_separately),
      cmocka_unit_test(query_usage_on_sqlite_matches_the_memory_store),
      cmocka_unit_test(
          sigkill_loses_no_acknowledged_event_and_replay_counts_once),
      cmocka_unit_test(
          unwritable_dir_mid_run_fails_rpcs_keeps_acknowledged_and_serves),
      cmocka_unit_test(sigterm_under_load_keeps_every_acknowledged_event),
      cmocka_unit_test(shutdown_drain_reports_events_it_could_not_write),
      cmocka_unit_test(corrupt_store_keeps_serving_and_metering_says_why),
      cmocka_unit_test(newer_schema_is_refused_not_overwritten),
      cmocka_unit_test(older_schema_is_migrated_in_place),
      cmocka_unit_test(audit_logs_record_the_callers_identity),
      cmocka_unit_test(emergency_stop_stays_latched_across_a_restart),
      cmocka_unit_test(acknowledged_policies_survive_sigkill),
  };
  return cmocka_run_group_tests_name("store", tests, NULL, cleanup_leftovers);
}
