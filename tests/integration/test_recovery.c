/*
 * test_recovery.c - antifragility.v1.RecoveryService against a real
 * in-process afd: policies (defaults, round trip, the seed's refusals),
 * scheduling with every strategy, real probes (TCP to a socket of this
 * test, HTTP to a small HTTP server thread of this test, grpc.health.v1 to
 * afd itself), ExecuteRecovery answering with the attempt's result,
 * MANUAL approval, cancellation, automatic recovery when a breaker with a
 * probing policy opens, GetRecoveryStatus and the WatchRecovery stream.
 *
 * Waits are bounded polls on real state; nothing sleeps for a timeout.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "af_testclient.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/recovery.pb-c.h"

#define SVC "/antifragility.v1.RecoveryService/"
#define BSVC "/antifragility.v1.BreakerService/"
#define CALL_MS 10000
#define WAIT_MS 8000

#define ST(x) ANTIFRAGILITY__V1__RECOVERY_STATE__RECOVERY_STATE_##x
#define STRAT(x) ANTIFRAGILITY__V1__RECOVERY_STRATEGY__RECOVERY_STRATEGY_##x
#define PROBE(x) ANTIFRAGILITY__V1__PROBE_KIND__PROBE_KIND_##x
#define KIND(x) ANTIFRAGILITY__V1__RECOVERY_EVENT_KIND__RECOVERY_EVENT_KIND_##x
#define BST(x) ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_##x

typedef struct {
  af_test_server_t *ts;
  af_tc_t *c;
} fx_t;

static int setup(void **state)
{
  fx_t *f = calloc(1, sizeof *f);
  assert_non_null(f);
  f->ts = af_ts_start(NULL);
  f->c = af_tc_connect(af_ts_port(f->ts));
  *state = f;
  return 0;
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

static void *ok_call(fx_t *f, const char *method, const ProtobufCMessage *req,
                     const ProtobufCMessageDescriptor *desc)
{
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  grpc_status_code code =
      af_tc_unary(f->c, method, req, desc, &resp, &st, NULL, CALL_MS);
  if (code != GRPC_STATUS_OK)
    fail_msg("%s: status %d: %s", method, (int)code, st.message);
  return resp;
}

static void expect_fail(fx_t *f, const char *method,
                        const ProtobufCMessage *req,
                        const ProtobufCMessageDescriptor *desc,
                        grpc_status_code code, const char *message)
{
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  grpc_status_code got =
      af_tc_unary(f->c, method, req, desc, &resp, &st, NULL, CALL_MS);
  if (got != code)
    fail_msg("%s: expected status %d, got %d: %s", method, (int)code, (int)got,
             st.message);
  assert_null(resp);
  assert_string_equal(st.message, message);
}

static void free_msg(void *m)
{
  if (m != NULL)
    protobuf_c_message_free_unpacked(m, NULL);
}

static Google__Protobuf__Duration dur(int64_t ms)
{
  Google__Protobuf__Duration d = GOOGLE__PROTOBUF__DURATION__INIT;
  d.seconds = ms / 1000;
  d.nanos = (int32_t)((ms % 1000) * 1000000);
  return d;
}

static int64_t dur_ms(const Google__Protobuf__Duration *d)
{
  assert_non_null(d);
  return d->seconds * 1000 + d->nanos / 1000000;
}

/* Registers `name` with fail_max 1 and a long reset timeout, then fails
 * it once: the breaker is OPEN and stays so until something closes it. */
static void report_failure(fx_t *f, const char *name, bool expect_open);

static void open_breaker(fx_t *f, const char *name)
{
  report_failure(f, name, true);
}

/* With expect_open false the state is not checked: automatic recovery may
 * already have moved the breaker on. */
static void report_failure(fx_t *f, const char *name, bool expect_open)
{
  Google__Protobuf__UInt32Value fm = GOOGLE__PROTOBUF__UINT32_VALUE__INIT;
  fm.value = 1;
  Google__Protobuf__Duration rt = dur(600000);
  Antifragility__V1__BreakerConfig cfg =
      ANTIFRAGILITY__V1__BREAKER_CONFIG__INIT;
  cfg.fail_max = &fm;
  cfg.reset_timeout = &rt;
  Antifragility__V1__RegisterBreakerRequest rq =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  rq.name = (char *)name;
  rq.config = &cfg;
  free_msg(ok_call(f, BSVC "RegisterBreaker", &rq.base,
                   &antifragility__v1__register_breaker_response__descriptor));
  Antifragility__V1__ReportOutcomeRequest oq =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
  oq.breaker_name = (char *)name;
  oq.success = false;
  Antifragility__V1__ReportOutcomeResponse *o =
      ok_call(f, BSVC "ReportOutcome", &oq.base,
              &antifragility__v1__report_outcome_response__descriptor);
  if (expect_open)
    assert_int_equal(o->state, BST(OPEN));
  free_msg(o);
}

static Antifragility__V1__BreakerState breaker_state(fx_t *f, const char *name)
{
  Antifragility__V1__GetBreakerRequest q =
      ANTIFRAGILITY__V1__GET_BREAKER_REQUEST__INIT;
  q.name = (char *)name;
  Antifragility__V1__GetBreakerResponse *r =
      ok_call(f, BSVC "GetBreaker", &q.base,
              &antifragility__v1__get_breaker_response__descriptor);
  assert_non_null(r->breaker);
  Antifragility__V1__BreakerState s = r->breaker->state;
  free_msg(r);
  return s;
}

static Antifragility__V1__SetRecoveryPolicyResponse *
set_policy(fx_t *f, const char *service, Antifragility__V1__RecoveryPolicy *p)
{
  Antifragility__V1__SetRecoveryPolicyRequest q =
      ANTIFRAGILITY__V1__SET_RECOVERY_POLICY_REQUEST__INIT;
  q.service_name = (char *)service;
  q.policy = p;
  return ok_call(f, SVC "SetRecoveryPolicy", &q.base,
                 &antifragility__v1__set_recovery_policy_response__descriptor);
}

static Antifragility__V1__GetRecoveryPolicyResponse *get_policy(fx_t *f,
                                                                const char *s)
{
  Antifragility__V1__GetRecoveryPolicyRequest q =
      ANTIFRAGILITY__V1__GET_RECOVERY_POLICY_REQUEST__INIT;
  q.service_name = (char *)s;
  return ok_call(f, SVC "GetRecoveryPolicy", &q.base,
                 &antifragility__v1__get_recovery_policy_response__descriptor);
}

/* ScheduleRecovery with strategy and an optional policy. */
static Antifragility__V1__RecoveryTask *
schedule(fx_t *f, const char *service, Antifragility__V1__RecoveryStrategy s,
         Antifragility__V1__RecoveryPolicy *p)
{
  Antifragility__V1__ScheduleRecoveryRequest q =
      ANTIFRAGILITY__V1__SCHEDULE_RECOVERY_REQUEST__INIT;
  q.service_name = (char *)service;
  q.strategy = s;
  q.policy = p;
  Antifragility__V1__ScheduleRecoveryResponse *r =
      ok_call(f, SVC "ScheduleRecovery", &q.base,
              &antifragility__v1__schedule_recovery_response__descriptor);
  assert_non_null(r->task);
  Antifragility__V1__RecoveryTask *t = r->task;
  r->task = NULL;
  free_msg(r);
  return t;
}

static Antifragility__V1__GetRecoveryStatusResponse *status(fx_t *f,
                                                            const char *s)
{
  Antifragility__V1__GetRecoveryStatusRequest q =
      ANTIFRAGILITY__V1__GET_RECOVERY_STATUS_REQUEST__INIT;
  q.service_name = (char *)s;
  return ok_call(f, SVC "GetRecoveryStatus", &q.base,
                 &antifragility__v1__get_recovery_status_response__descriptor);
}

/* Polls until the service's task is in state `want`; returns the task. */
static Antifragility__V1__RecoveryTask *
wait_state(fx_t *f, const char *service, Antifragility__V1__RecoveryState want)
{
  int64_t end = af_tc_now_ms() + WAIT_MS;
  Antifragility__V1__RecoveryState last = ST(UNSPECIFIED);
  while (af_tc_now_ms() < end) {
    Antifragility__V1__GetRecoveryStatusResponse *s = status(f, service);
    if (s->n_tasks == 1 && s->tasks[0]->state == want) {
      Antifragility__V1__RecoveryTask *t = s->tasks[0];
      s->tasks[0] = NULL;
      s->n_tasks = 0;
      free_msg(s);
      return t;
    }
    if (s->n_tasks == 1)
      last = s->tasks[0]->state;
    free_msg(s);
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  fail_msg("task of %s never reached state %d (last %d)", service, (int)want,
           (int)last);
  return NULL;
}

/* A policy for tests: max attempts, initial delay ms, probe + target. */
typedef struct {
  Antifragility__V1__RecoveryPolicy p;
  Google__Protobuf__UInt32Value max;
  Google__Protobuf__Duration initial, timeout;
} policy_t;

static Antifragility__V1__RecoveryPolicy *
policy(policy_t *s, uint32_t max_attempts, int64_t initial_ms,
       Antifragility__V1__ProbeKind probe, const char *target)
{
  antifragility__v1__recovery_policy__init(&s->p);
  google__protobuf__uint32_value__init(&s->max);
  s->max.value = max_attempts;
  s->p.max_retry_attempts = &s->max;
  s->initial = dur(initial_ms);
  s->p.initial_delay = &s->initial;
  s->p.probe = probe;
  s->p.probe_target = (char *)target;
  s->timeout = dur(3000);
  s->p.probe_timeout = &s->timeout;
  return &s->p;
}

/* A loopback TCP socket: listening (accepts by the kernel backlog) or
 * closed again (its port refuses connections). */
static int tcp_port(int *fd_out, bool keep_listening)
{
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  assert_true(fd >= 0);
  struct sockaddr_in a;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
  assert_int_equal(listen(fd, 64), 0);
  socklen_t len = sizeof a;
  assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
  int port = ntohs(a.sin_port);
  if (keep_listening) {
    *fd_out = fd;
  } else {
    close(fd);
    *fd_out = -1;
  }
  return port;
}

/* A tiny HTTP/1.1 server thread answering every request with `code`. */
typedef struct {
  int fd;
  int port;
  int code;
  _Atomic int requests;
  _Atomic bool stop;
  pthread_t th;
} http_srv_t;

static void *http_main(void *arg)
{
  http_srv_t *h = arg;
  while (!atomic_load(&h->stop)) {
    struct pollfd p = {.fd = h->fd, .events = POLLIN, .revents = 0};
    if (poll(&p, 1, 20) <= 0)
      continue;
    int c = accept(h->fd, NULL, NULL);
    if (c < 0)
      continue;
    char buf[2048];
    size_t got = 0;
    while (got < sizeof buf - 1) {
      ssize_t r = read(c, buf + got, sizeof buf - 1 - got);
      if (r <= 0)
        break;
      got += (size_t)r;
      buf[got] = '\0';
      if (strstr(buf, "\r\n\r\n") != NULL)
        break;
    }
    if (strncmp(buf, "GET /healthz HTTP/1.1\r\n", 23) == 0)
      atomic_fetch_add(&h->requests, 1);
    char resp[128];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 %d X\r\nContent-Length: 0\r\n"
                     "Connection: close\r\n\r\n",
                     h->code);
    ssize_t w = write(c, resp, (size_t)n);
    (void)w;
    close(c);
  }
  return NULL;
}

static void http_start(http_srv_t *h, int code)
{
  memset(h, 0, sizeof *h);
  h->port = tcp_port(&h->fd, true);
  h->code = code;
  atomic_init(&h->requests, 0);
  atomic_init(&h->stop, false);
  assert_int_equal(pthread_create(&h->th, NULL, http_main, h), 0);
}

static void http_stop(http_srv_t *h)
{
  atomic_store(&h->stop, true);
  pthread_join(h->th, NULL);
  close(h->fd);
}

/* ------------------------------------------------------------------ */
/* Policies                                                           */

static void policy_defaults_are_the_seeds(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__GetRecoveryPolicyResponse *g = get_policy(f, "nobody");
  assert_true(g->is_default);
  assert_non_null(g->policy);
  assert_int_equal(g->policy->max_retry_attempts->value, 5);
  assert_true(g->policy->backoff_multiplier->value == 2.0);
  assert_int_equal(dur_ms(g->policy->initial_delay), 1000);
  assert_int_equal(dur_ms(g->policy->max_delay), 60000);
  assert_int_equal(dur_ms(g->policy->probe_timeout), 2000);
  assert_int_equal(g->policy->probe, PROBE(NONE));
  assert_int_equal(g->policy->strategy, STRAT(EXPONENTIAL_BACKOFF));
  assert_string_equal(g->policy->constitutional_hash, "cdd01ef066bc6cf2");
  free_msg(g);
}

static void set_policy_fills_defaults_and_round_trips(void **state)
{
  fx_t *f = *state;
  policy_t ps;
  Antifragility__V1__RecoveryPolicy *p =
      policy(&ps, 3, 250, PROBE(TCP), "127.0.0.1:9");
  p->strategy = STRAT(LINEAR_BACKOFF);
  Antifragility__V1__SetRecoveryPolicyResponse *s = set_policy(f, "pay", p);
  assert_int_equal(s->policy->max_retry_attempts->value, 3);
  assert_true(s->policy->backoff_multiplier->value == 2.0); /* default */
  assert_int_equal(dur_ms(s->policy->initial_delay), 250);
  assert_int_equal(dur_ms(s->policy->max_delay), 60000); /* default */
  assert_int_equal(s->policy->probe, PROBE(TCP));
  assert_string_equal(s->policy->probe_target, "127.0.0.1:9");
  assert_int_equal(s->policy->strategy, STRAT(LINEAR_BACKOFF));
  free_msg(s);

  Antifragility__V1__GetRecoveryPolicyResponse *g = get_policy(f, "pay");
  assert_false(g->is_default);
  assert_int_equal(g->policy->max_retry_attempts->value, 3);
  assert_int_equal(dur_ms(g->policy->initial_delay), 250);
  assert_int_equal(g->policy->probe, PROBE(TCP));
  assert_int_equal(g->policy->strategy, STRAT(LINEAR_BACKOFF));
  free_msg(g);
  g = get_policy(f, "other"); /* others keep the default */
  assert_true(g->is_default);
  free_msg(g);
}

static void set_policy_refusals_have_exact_messages(void **state)
{
  fx_t *f = *state;
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__set_recovery_policy_response__descriptor;
  Antifragility__V1__SetRecoveryPolicyRequest q =
      ANTIFRAGILITY__V1__SET_RECOVERY_POLICY_REQUEST__INIT;
  q.service_name = "svc";
  policy_t ps;

  q.policy = policy(&ps, 0, 10, PROBE(NONE), "");
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "max_retry_attempts must be >= 1");

  q.policy = policy(&ps, 3, 10, PROBE(NONE), "");
  Google__Protobuf__DoubleValue mult = GOOGLE__PROTOBUF__DOUBLE_VALUE__INIT;
  mult.value = 0.5;
  ps.p.backoff_multiplier = &mult;
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "backoff_multiplier must be >= 1.0");

  q.policy = policy(&ps, 3, 10, PROBE(NONE), "");
  ps.initial.seconds = -1;
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "initial_delay_ms must be >= 0");

  q.policy = policy(&ps, 3, 5000, PROBE(NONE), "");
  Google__Protobuf__Duration mx = dur(1000);
  ps.p.max_delay = &mx;
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "max_delay_ms must be >= initial_delay_ms");

  q.policy = policy(&ps, 3, 10, PROBE(TCP), "");
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "probe_target is required for probe TCP");

  q.policy = policy(&ps, 3, 10, PROBE(TCP), "no-port");
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "probe_target must be host:port for probe TCP");

  q.policy = policy(&ps, 3, 10, PROBE(GRPC_HEALTH), "host:99999");
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "probe_target must be host:port for probe GRPC_HEALTH");

  q.policy = policy(&ps, 3, 10, PROBE(HTTP), "https://example/healthz");
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "probe_target must be an http:// URL for probe HTTP");

  q.policy = policy(&ps, 3, 10, (Antifragility__V1__ProbeKind)9, "x:1");
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "unknown probe 9");

  q.policy = policy(&ps, 3, 10, PROBE(NONE), "");
  ps.timeout = dur(0);
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "probe_timeout_ms must be >= 1");

  q.policy = policy(&ps, 3, 10, PROBE(NONE), "");
  q.service_name = "";
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "service_name is required");

  q.service_name = "svc";
  q.constitutional_hash = "0000000000000000";
  expect_fail(f, SVC "SetRecoveryPolicy", &q.base, d,
              GRPC_STATUS_FAILED_PRECONDITION,
              "constitutional hash mismatch: expected cdd01ef066bc6cf2");

  /* Nothing was stored. */
  Antifragility__V1__GetRecoveryPolicyResponse *g = get_policy(f, "svc");
  assert_true(g->is_default);
  free_msg(g);
}

/* ------------------------------------------------------------------ */
/* Scheduling and probes                                              */

static void immediate_recovery_without_probe_closes_the_breaker(void **state)
{
  fx_t *f = *state;
  open_breaker(f, "imm");
  Antifragility__V1__RecoveryTask *t =
      schedule(f, "imm", STRAT(IMMEDIATE), NULL);
  assert_string_equal(t->service_name, "imm");
  assert_int_equal(t->strategy, STRAT(IMMEDIATE));
  assert_true(strlen(t->task_id) > 0);
  assert_non_null(t->scheduled_at);
  assert_string_equal(t->constitutional_hash, "cdd01ef066bc6cf2");
  free_msg(t);
  t = wait_state(f, "imm", ST(SUCCEEDED));
  assert_int_equal(t->attempt_count, 1);
  free_msg(t);
  assert_int_equal(breaker_state(f, "imm"), BST(CLOSED));

  Antifragility__V1__GetRecoveryStatusResponse *s = status(f, "imm");
  assert_int_equal(s->n_recent_results, 1);
  assert_true(s->recent_results[0]->success);
  assert_int_equal(s->recent_results[0]->attempt_number, 1);
  assert_int_equal(s->recent_results[0]->total_attempts, 5);
  assert_int_equal(s->recent_results[0]->state, ST(SUCCEEDED));
  assert_true(s->total_succeeded >= 1);
  assert_true(s->running);
  assert_int_equal(s->retry_budget_remaining, UINT32_MAX); /* no budget */
  free_msg(s);
}

static void tcp_probe_success_closes_the_breaker(void **state)
{
  fx_t *f = *state;
  int lfd;
  int port = tcp_port(&lfd, true);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  open_breaker(f, "tcp-ok");
  policy_t ps;
  free_msg(schedule(f, "tcp-ok", STRAT(IMMEDIATE),
                    policy(&ps, 3, 10, PROBE(TCP), target)));
  Antifragility__V1__RecoveryTask *t = wait_state(f, "tcp-ok", ST(SUCCEEDED));
  assert_int_equal(t->attempt_count, 1);
  assert_non_null(t->last_attempt_at);
  free_msg(t);
  assert_int_equal(breaker_state(f, "tcp-ok"), BST(CLOSED));
  close(lfd);
}

static void refused_tcp_probe_retries_then_fails(void **state)
{
  fx_t *f = *state;
  int dead;
  int port = tcp_port(&dead, false);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  open_breaker(f, "tcp-dead");
  policy_t ps;
  free_msg(schedule(f, "tcp-dead", STRAT(LINEAR_BACKOFF),
                    policy(&ps, 2, 10, PROBE(TCP), target)));
  Antifragility__V1__RecoveryTask *t = wait_state(f, "tcp-dead", ST(FAILED));
  assert_int_equal(t->attempt_count, 2);
  assert_non_null(strstr(t->last_error, "Connection refused"));
  free_msg(t);
  assert_int_equal(breaker_state(f, "tcp-dead"), BST(OPEN));
  Antifragility__V1__GetRecoveryStatusResponse *s = status(f, "tcp-dead");
  assert_int_equal(s->n_recent_results, 1);
  assert_false(s->recent_results[0]->success);
  assert_false(s->recent_results[0]->health_check_passed);
  assert_int_equal(s->recent_results[0]->state, ST(FAILED));
  assert_non_null(strstr(s->recent_results[0]->error_message, "refused"));
  assert_true(s->total_failed >= 1);
  assert_true(s->total_attempts >= 2);
  free_msg(s);
}

static Antifragility__V1__ExecuteRecoveryResponse *execute(fx_t *f,
                                                           const char *s)
{
  Antifragility__V1__ExecuteRecoveryRequest q =
      ANTIFRAGILITY__V1__EXECUTE_RECOVERY_REQUEST__INIT;
  q.service_name = (char *)s;
  return ok_call(f, SVC "ExecuteRecovery", &q.base,
                 &antifragility__v1__execute_recovery_response__descriptor);
}

static void execute_answers_with_the_http_probe_result(void **state)
{
  fx_t *f = *state;
  http_srv_t bad, good;
  http_start(&bad, 503);
  http_start(&good, 204);
  char url[96];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", bad.port);
  open_breaker(f, "web");
  policy_t ps;
  /* A long initial delay: only ExecuteRecovery runs attempts. */
  free_msg(schedule(f, "web", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(HTTP), url)));

  Antifragility__V1__ExecuteRecoveryResponse *r = execute(f, "web");
  assert_non_null(r->result);
  assert_false(r->result->success);
  assert_false(r->result->health_check_passed);
  assert_int_equal(r->result->attempt_number, 1);
  assert_int_equal(r->result->total_attempts, 5);
  assert_non_null(strstr(r->result->error_message, "HTTP 503"));
  assert_int_equal(r->task->state, ST(SCHEDULED));
  assert_non_null(r->task->next_attempt_at);
  assert_non_null(strstr(r->task->last_error, "HTTP 503"));
  free_msg(r);
  assert_int_equal(atomic_load(&bad.requests), 1);
  assert_int_equal(breaker_state(f, "web"), BST(OPEN));

  /* The service comes back at another address. */
  snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", good.port);
  free_msg(schedule(f, "web", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(HTTP), url)));
  r = execute(f, "web");
  assert_true(r->result->success);
  assert_true(r->result->health_check_passed);
  assert_int_equal(r->result->attempt_number, 2);
  assert_true(r->result->elapsed_time_ms >= 0.0);
  assert_int_equal(r->task->state, ST(SUCCEEDED));
  assert_int_equal(r->task->attempt_count, 2);
  free_msg(r);
  assert_int_equal(atomic_load(&good.requests), 1);
  assert_int_equal(breaker_state(f, "web"), BST(CLOSED));
  http_stop(&bad);
  http_stop(&good);
}

static void grpc_health_probe_asks_a_real_grpc_server(void **state)
{
  fx_t *f = *state;
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", af_ts_port(f->ts));
  open_breaker(f, "dep"); /* grpc.health.v1 says NOT_SERVING for it */
  open_breaker(f, "g1");
  policy_t ps;
  Antifragility__V1__RecoveryPolicy *p =
      policy(&ps, 5, 60000, PROBE(GRPC_HEALTH), target);
  p->probe_service = "dep";
  free_msg(schedule(f, "g1", STRAT(EXPONENTIAL_BACKOFF), p));
  Antifragility__V1__ExecuteRecoveryResponse *r = execute(f, "g1");
  assert_false(r->result->success);
  assert_non_null(strstr(r->result->error_message, "NOT_SERVING"));
  free_msg(r);

  p->probe_service = "no-such-service"; /* Check answers NOT_FOUND */
  free_msg(schedule(f, "g1", STRAT(EXPONENTIAL_BACKOFF), p));
  r = execute(f, "g1");
  assert_false(r->result->success);
  assert_non_null(strstr(r->result->error_message, "status 5"));
  free_msg(r);

  p->probe_service = ""; /* the server as a whole: SERVING */
  free_msg(schedule(f, "g1", STRAT(EXPONENTIAL_BACKOFF), p));
  r = execute(f, "g1");
  assert_true(r->result->success);
  assert_int_equal(r->task->state, ST(SUCCEEDED));
  free_msg(r);
  assert_int_equal(breaker_state(f, "g1"), BST(CLOSED));
}

static void manual_strategy_waits_for_approval(void **state)
{
  fx_t *f = *state;
  open_breaker(f, "man");
  Antifragility__V1__RecoveryTask *t = schedule(f, "man", STRAT(MANUAL), NULL);
  assert_int_equal(t->state, ST(AWAITING_MANUAL));
  free_msg(t);

  Antifragility__V1__ExecuteRecoveryRequest eq =
      ANTIFRAGILITY__V1__EXECUTE_RECOVERY_REQUEST__INIT;
  eq.service_name = "man";
  expect_fail(f, SVC "ExecuteRecovery", &eq.base,
              &antifragility__v1__execute_recovery_response__descriptor,
              GRPC_STATUS_FAILED_PRECONDITION,
              "recovery of man is AWAITING_MANUAL: approve it with "
              "ApproveRecovery");

  Antifragility__V1__ApproveRecoveryRequest aq =
      ANTIFRAGILITY__V1__APPROVE_RECOVERY_REQUEST__INIT;
  aq.service_name = "man";
  aq.actor = "oncall";
  aq.reason = "dependency fixed";
  Antifragility__V1__ApproveRecoveryResponse *a =
      ok_call(f, SVC "ApproveRecovery", &aq.base,
              &antifragility__v1__approve_recovery_response__descriptor);
  assert_non_null(a->task);
  free_msg(a);
  free_msg(wait_state(f, "man", ST(SUCCEEDED)));
  assert_int_equal(breaker_state(f, "man"), BST(CLOSED));

  expect_fail(f, SVC "ApproveRecovery", &aq.base,
              &antifragility__v1__approve_recovery_response__descriptor,
              GRPC_STATUS_FAILED_PRECONDITION,
              "recovery of man is not awaiting manual approval (state "
              "SUCCEEDED)");
  aq.service_name = "ghost";
  expect_fail(f, SVC "ApproveRecovery", &aq.base,
              &antifragility__v1__approve_recovery_response__descriptor,
              GRPC_STATUS_NOT_FOUND, "no recovery task for service ghost");
}

static void cancel_stops_a_pending_task(void **state)
{
  fx_t *f = *state;
  policy_t ps;
  free_msg(schedule(f, "c1", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(NONE), "")));
  Antifragility__V1__CancelRecoveryRequest q =
      ANTIFRAGILITY__V1__CANCEL_RECOVERY_REQUEST__INIT;
  q.service_name = "c1";
  q.reason = "not needed";
  Antifragility__V1__CancelRecoveryResponse *r =
      ok_call(f, SVC "CancelRecovery", &q.base,
              &antifragility__v1__cancel_recovery_response__descriptor);
  assert_true(r->cancelled);
  assert_int_equal(r->task->state, ST(CANCELLED));
  free_msg(r);
  r = ok_call(f, SVC "CancelRecovery", &q.base,
              &antifragility__v1__cancel_recovery_response__descriptor);
  assert_false(r->cancelled); /* already final */
  assert_int_equal(r->task->state, ST(CANCELLED));
  free_msg(r);

  Antifragility__V1__ExecuteRecoveryRequest eq =
      ANTIFRAGILITY__V1__EXECUTE_RECOVERY_REQUEST__INIT;
  eq.service_name = "c1";
  expect_fail(f, SVC "ExecuteRecovery", &eq.base,
              &antifragility__v1__execute_recovery_response__descriptor,
              GRPC_STATUS_FAILED_PRECONDITION,
              "recovery of c1 is CANCELLED: only a SCHEDULED task can be "
              "executed");
  q.service_name = "nobody";
  expect_fail(f, SVC "CancelRecovery", &q.base,
              &antifragility__v1__cancel_recovery_response__descriptor,
              GRPC_STATUS_NOT_FOUND, "no recovery task for service nobody");
  eq.service_name = "nobody";
  expect_fail(f, SVC "ExecuteRecovery", &eq.base,
              &antifragility__v1__execute_recovery_response__descriptor,
              GRPC_STATUS_NOT_FOUND, "no recovery task for service nobody");

  Antifragility__V1__GetRecoveryStatusResponse *s = status(f, "c1");
  assert_int_equal(s->n_tasks, 1);
  assert_int_equal(s->total_cancelled, 1);
  assert_int_equal(s->n_recent_results, 1);
  assert_int_equal(s->recent_results[0]->state, ST(CANCELLED));
  free_msg(s);
}

static void schedule_refusals_have_exact_messages(void **state)
{
  fx_t *f = *state;
  const ProtobufCMessageDescriptor *d =
      &antifragility__v1__schedule_recovery_response__descriptor;
  Antifragility__V1__ScheduleRecoveryRequest q =
      ANTIFRAGILITY__V1__SCHEDULE_RECOVERY_REQUEST__INIT;
  q.service_name = "s";
  q.strategy = (Antifragility__V1__RecoveryStrategy)9;
  expect_fail(f, SVC "ScheduleRecovery", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "unknown recovery strategy 9");
  q.strategy = STRAT(IMMEDIATE);
  policy_t ps;
  q.policy = policy(&ps, 0, 10, PROBE(NONE), "");
  expect_fail(f, SVC "ScheduleRecovery", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT, "max_retry_attempts must be >= 1");
  q.policy = NULL;
  q.constitutional_hash = "bad";
  expect_fail(f, SVC "ScheduleRecovery", &q.base, d,
              GRPC_STATUS_FAILED_PRECONDITION,
              "constitutional hash mismatch: expected cdd01ef066bc6cf2");
  q.constitutional_hash = NULL;
  char long_name[200];
  memset(long_name, 'x', sizeof long_name - 1);
  long_name[sizeof long_name - 1] = '\0';
  q.service_name = long_name;
  expect_fail(f, SVC "ScheduleRecovery", &q.base, d,
              GRPC_STATUS_INVALID_ARGUMENT,
              "service_name must be 1-128 bytes of printable UTF-8");
  Antifragility__V1__GetRecoveryStatusResponse *s = status(f, "");
  assert_int_equal(s->n_tasks, 0); /* nothing was scheduled */
  assert_int_equal(s->total_scheduled, 0);
  free_msg(s);
}

static void
breaker_opening_with_a_probing_policy_recovers_by_itself(void **state)
{
  fx_t *f = *state;
  int lfd;
  int port = tcp_port(&lfd, true);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  policy_t ps;
  Antifragility__V1__RecoveryPolicy *p = policy(&ps, 3, 10, PROBE(TCP), target);
  p->strategy = STRAT(IMMEDIATE);
  free_msg(set_policy(f, "auto", p));
  report_failure(f, "auto", false); /* opens it; the engine schedules */
  Antifragility__V1__RecoveryTask *t = wait_state(f, "auto", ST(SUCCEEDED));
  assert_int_equal(t->strategy, STRAT(IMMEDIATE));
  free_msg(t);
  assert_int_equal(breaker_state(f, "auto"), BST(CLOSED));
  close(lfd);
}

/* ------------------------------------------------------------------ */
/* WatchRecovery                                                      */

static Antifragility__V1__WatchRecoveryResponse *next_msg(af_tc_stream_t *s)
{
  ProtobufCMessage *m = NULL;
  int r = af_tc_stream_next(s, WAIT_MS, &m);
  if (r != 1) {
    af_tc_status_t st;
    af_tc_stream_status(s, 0, &st);
    fail_msg("no WatchRecovery message (%d): status %d %s", r, (int)st.code,
             st.message);
  }
  return (Antifragility__V1__WatchRecoveryResponse *)m;
}

static af_tc_stream_t *watch(fx_t *f, const char *service)
{
  Antifragility__V1__WatchRecoveryRequest q =
      ANTIFRAGILITY__V1__WATCH_RECOVERY_REQUEST__INIT;
  q.service_name = (char *)service;
  return af_tc_stream_open(
      f->c, SVC "WatchRecovery", &q.base,
      &antifragility__v1__watch_recovery_response__descriptor, NULL, 30000);
}

static void watch_starts_with_an_empty_snapshot(void **state)
{
  fx_t *f = *state;
  af_tc_stream_t *s = watch(f, "");
  Antifragility__V1__WatchRecoveryResponse *m = next_msg(s);
  assert_int_equal(m->sequence, 1);
  assert_int_equal(m->kind, KIND(SNAPSHOT));
  assert_true(m->snapshot_complete);
  assert_null(m->task);
  free_msg(m);
  af_tc_stream_close(s);
}

static void watch_sends_snapshot_then_every_change(void **state)
{
  fx_t *f = *state;
  policy_t ps;
  free_msg(schedule(f, "w-old", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(NONE), "")));
  free_msg(schedule(f, "w-old2", STRAT(MANUAL), NULL));
  af_tc_stream_t *s = watch(f, "");
  Antifragility__V1__WatchRecoveryResponse *m = next_msg(s);
  assert_int_equal(m->sequence, 1);
  assert_int_equal(m->kind, KIND(SNAPSHOT));
  assert_false(m->snapshot_complete);
  assert_non_null(m->task);
  free_msg(m);
  m = next_msg(s);
  assert_int_equal(m->sequence, 2);
  assert_int_equal(m->kind, KIND(SNAPSHOT));
  assert_true(m->snapshot_complete);
  free_msg(m);

  /* Scheduled, then executed by hand: every step is published by this
   * test's own calls, in order. (A task the timer runs may skip SCHEDULED
   * for a watcher: the timer thread can publish the attempt first, and a
   * stream drops the older snapshot.) */
  open_breaker(f, "w-new");
  free_msg(schedule(f, "w-new", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(NONE), "")));
  m = next_msg(s);
  assert_int_equal(m->kind, KIND(SCHEDULED));
  assert_int_equal(m->sequence, 3);
  free_msg(m);
  free_msg(execute(f, "w-new"));
  Antifragility__V1__RecoveryEventKind want[] = {KIND(ATTEMPT_STARTED),
                                                 KIND(FINISHED)};
  uint64_t seq = 3;
  for (size_t i = 0; i < 2; i++) {
    m = next_msg(s);
    assert_int_equal(m->sequence, ++seq);
    assert_int_equal(m->kind, want[i]);
    assert_non_null(m->task);
    assert_string_equal(m->task->service_name, "w-new");
    if (want[i] == KIND(FINISHED)) {
      assert_non_null(m->result);
      assert_true(m->result->success);
      assert_int_equal(m->task->state, ST(SUCCEEDED));
    }
    free_msg(m);
  }
  Antifragility__V1__CancelRecoveryRequest cq =
      ANTIFRAGILITY__V1__CANCEL_RECOVERY_REQUEST__INIT;
  cq.service_name = "w-old";
  free_msg(ok_call(f, SVC "CancelRecovery", &cq.base,
                   &antifragility__v1__cancel_recovery_response__descriptor));
  m = next_msg(s);
  assert_int_equal(m->kind, KIND(CANCELLED));
  assert_string_equal(m->task->service_name, "w-old");
  free_msg(m);
  af_tc_stream_close(s);
}

static void watch_filtered_by_service_sees_only_that_service(void **state)
{
  fx_t *f = *state;
  af_tc_stream_t *s = watch(f, "only-me");
  Antifragility__V1__WatchRecoveryResponse *m = next_msg(s);
  assert_int_equal(m->kind, KIND(SNAPSHOT));
  assert_true(m->snapshot_complete);
  free_msg(m);
  policy_t ps;
  free_msg(schedule(f, "someone-else", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(NONE), "")));
  free_msg(schedule(f, "only-me", STRAT(EXPONENTIAL_BACKOFF),
                    policy(&ps, 5, 60000, PROBE(NONE), "")));
  m = next_msg(s);
  assert_int_equal(m->kind, KIND(SCHEDULED));
  assert_string_equal(m->task->service_name, "only-me");
  free_msg(m);
  af_tc_stream_close(s);

  Antifragility__V1__WatchRecoveryRequest q =
      ANTIFRAGILITY__V1__WATCH_RECOVERY_REQUEST__INIT;
  q.service_name = "bad\001name";
  s = af_tc_stream_open(f->c, SVC "WatchRecovery", &q.base,
                        &antifragility__v1__watch_recovery_response__descriptor,
                        NULL, 5000);
  af_tc_status_t st;
  assert_int_equal(af_tc_stream_status(s, WAIT_MS, &st),
                   GRPC_STATUS_INVALID_ARGUMENT);
  assert_string_equal(st.message,
                      "service_name must be 1-128 bytes of printable UTF-8");
  af_tc_stream_close(s);
}

static void
unknown_service_status_and_default_policy_name_are_fine(void **state)
{
  fx_t *f = *state;
  Antifragility__V1__GetRecoveryStatusResponse *s = status(f, "never");
  assert_int_equal(s->n_tasks, 0);
  assert_int_equal(s->n_recent_results, 0);
  assert_string_equal(s->constitutional_hash, "cdd01ef066bc6cf2");
  free_msg(s);
  Antifragility__V1__GetRecoveryPolicyResponse *g = get_policy(f, "");
  assert_true(g->is_default);
  free_msg(g);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
  const struct CMUnitTest tests[] = {
      T(policy_defaults_are_the_seeds),
      T(set_policy_fills_defaults_and_round_trips),
      T(set_policy_refusals_have_exact_messages),
      T(immediate_recovery_without_probe_closes_the_breaker),
      T(tcp_probe_success_closes_the_breaker),
      T(refused_tcp_probe_retries_then_fails),
      T(execute_answers_with_the_http_probe_result),
      T(grpc_health_probe_asks_a_real_grpc_server),
      T(manual_strategy_waits_for_approval),
      T(cancel_stops_a_pending_task),
      T(schedule_refusals_have_exact_messages),
      T(breaker_opening_with_a_probing_policy_recovers_by_itself),
      T(watch_starts_with_an_empty_snapshot),
      T(watch_sends_snapshot_then_every_change),
      T(watch_filtered_by_service_sees_only_that_service),
      T(unknown_service_status_and_default_policy_name_are_fine),
  };
  return cmocka_run_group_tests_name("integration_recovery", tests, NULL, NULL);
}
