/*
 * bench_server.c - the servers the RPC benchmarks load, each counting its
 * own successes (h2load counts HTTP 200, not grpc-status).
 *
 *   bench_server afd [AFD FLAGS...]   the real afd, in-process (--memory,
 *                                     127.0.0.1:0, log level error, then
 *                                     any afd flag, e.g. --threads 2)
 *   bench_server echo [--threads N]   bare gRPC core: answers every call
 *                                     on the benchmarked paths with its own
 *                                     request bytes; no decoding, no work
 *   bench_server fwecho [--threads N] afd's RPC framework (server.c) with
 *                                     empty handlers: decodes the request,
 *                                     answers an empty response
 *   bench_server bodies DIR           writes the h2load request bodies
 *                                     (5-byte gRPC prefix + message)
 *
 * Once listening it prints "port N pid P" on stdout, then reads commands from
 * stdin: "stats" prints one JSON line {"ok":..,"failed":..,"calls":..}
 * (statuses sent: OK, and anything else), "quit" (or end of input) stops
 * the server and exits 0. afd only, for the scaling tables: "breakers N"
 * registers breakers bench-0..N-1 through the engine, "tenants N" records
 * one usage event for each of N tenants through the engine's meter (the
 * store applies them like any other); each answers "done" once finished.
 *
 * The echo server is the floor the gRPC core library allows on this
 * machine: one completion queue, requests pre-posted per registered
 * method, one batch per call (initial metadata + message + status + close),
 * the same shape as afd's unary path, with nothing else.
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "afd.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "antifragility/v1/metering.pb-c.h"
#include "config.h"
#include "server.h"

#define REPORT_OUTCOME "/antifragility.v1.BreakerService/ReportOutcome"
#define GET_SYSTEM_HEALTH "/antifragility.v1.HealthService/GetSystemHealth"
#define RECORD_USAGE "/antifragility.v1.MeteringService/RecordUsage"

static const char *const k_paths[] = {REPORT_OUTCOME, GET_SYSTEM_HEALTH,
                                      RECORD_USAGE};
#define NPATHS 3
/* Requests kept posted per method: afd's REQUEST_POOL. More only makes
 * every completion slower here (libgrpc scans all outstanding tags). */
#define POOL_PER_METHOD 8

/* ---- request bodies ------------------------------------------------------ */

static int write_body(const char *dir, const char *file,
                      const ProtobufCMessage *m)
{
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *buf = malloc(5 + n);
  if (buf == NULL)
    return -1;
  buf[0] = 0;
  buf[1] = (uint8_t)(n >> 24);
  buf[2] = (uint8_t)(n >> 16);
  buf[3] = (uint8_t)(n >> 8);
  buf[4] = (uint8_t)n;
  protobuf_c_message_pack(m, buf + 5);
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", dir, file);
  FILE *f = fopen(path, "wb");
  if (f == NULL) {
    perror(path);
    free(buf);
    return -1;
  }
  size_t w = fwrite(buf, 1, 5 + n, f);
  fclose(f);
  free(buf);
  return w == 5 + n ? 0 : -1;
}

static int write_bodies(const char *dir)
{
  mkdir(dir, 0755);
  Antifragility__V1__ReportOutcomeRequest ro =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
  ro.breaker_name = "payments";
  ro.success = 1;
  ro.instance_id = "bench-1";
  ro.latency_ms = 3.5;
  ro.auto_register = 1;
  Antifragility__V1__GetSystemHealthRequest gh =
      ANTIFRAGILITY__V1__GET_SYSTEM_HEALTH_REQUEST__INIT;
  Antifragility__V1__UsageEvent ev = ANTIFRAGILITY__V1__USAGE_EVENT__INIT;
  ev.tenant_id = "tenant-a";
  ev.agent_id = "agent-7";
  ev.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AGENT_MESSAGE;
  ev.units = 1;
  ev.tokens_processed = 512;
  ev.latency_ms = 3.5;
  ev.compliance_score = 1.0;
  ev.constitutional_valid = 1;
  /* event_id left empty: the server generates one, so every request is a
   * new event (a fixed id would make all but the first duplicates). */
  Antifragility__V1__RecordUsageRequest ru =
      ANTIFRAGILITY__V1__RECORD_USAGE_REQUEST__INIT;
  ru.event = &ev;
  if (write_body(dir, "report_outcome.bin", &ro.base) != 0 ||
      write_body(dir, "get_system_health.bin", &gh.base) != 0 ||
      write_body(dir, "record_usage.bin", &ru.base) != 0)
    return 1;
  return 0;
}

/* ---- bare gRPC core echo ------------------------------------------------- */

typedef struct echo echo_t;

typedef struct tag {
  void (*fn)(echo_t *e, struct tag *t, int ok);
} tag_t;

typedef struct {
  tag_t tag; /* first: the CQ hands us this pointer */
  int method;
  int replying;
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload;
  int cancelled;
} echo_call_t;

struct echo {
  grpc_server *srv;
  grpc_completion_queue *cq;
  void *methods[NPATHS];
  atomic_bool stopping;
  atomic_uint_least64_t ok, failed, calls;
  tag_t shutdown_tag;
  atomic_bool shutdown_done;
  int nthreads;
  pthread_t threads[64];
};

static void echo_on_call(echo_t *e, tag_t *t, int ok);

static void echo_post(echo_t *e, int method)
{
  echo_call_t *c = calloc(1, sizeof(*c));
  if (c == NULL)
    abort();
  c->tag.fn = echo_on_call;
  c->method = method;
  grpc_metadata_array_init(&c->md);
  grpc_call_error rc = grpc_server_request_registered_call(
      e->srv, e->methods[method], &c->call, &c->deadline, &c->md, &c->payload,
      e->cq, e->cq, c);
  if (rc != GRPC_CALL_OK) {
    grpc_metadata_array_destroy(&c->md);
    free(c);
  }
}

static void echo_free(echo_call_t *c)
{
  if (c->payload != NULL)
    grpc_byte_buffer_destroy(c->payload);
  grpc_metadata_array_destroy(&c->md);
  if (c->call != NULL)
    grpc_call_unref(c->call);
  free(c);
}

static void echo_on_call(echo_t *e, tag_t *t, int ok)
{
  echo_call_t *c = (echo_call_t *)t;
  if (c->replying) {
    if (ok && !c->cancelled)
      atomic_fetch_add_explicit(&e->ok, 1, memory_order_relaxed);
    else
      atomic_fetch_add_explicit(&e->failed, 1, memory_order_relaxed);
    echo_free(c);
    return;
  }
  if (!ok) { /* server shutting down: never matched */
    grpc_metadata_array_destroy(&c->md);
    free(c);
    return;
  }
  if (!atomic_load(&e->stopping))
    echo_post(e, c->method);
  atomic_fetch_add_explicit(&e->calls, 1, memory_order_relaxed);
  c->replying = 1;
  if (c->payload == NULL)
    c->payload = grpc_raw_byte_buffer_create(NULL, 0);
  grpc_op ops[4];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = c->payload;
  ops[2].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[2].data.send_status_from_server.status = GRPC_STATUS_OK;
  ops[3].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  ops[3].data.recv_close_on_server.cancelled = &c->cancelled;
  if (grpc_call_start_batch(c->call, ops, 4, c, NULL) != GRPC_CALL_OK) {
    atomic_fetch_add_explicit(&e->failed, 1, memory_order_relaxed);
    echo_free(c);
  }
}

static void echo_on_shutdown(echo_t *e, tag_t *t, int ok)
{
  (void)t;
  (void)ok;
  atomic_store(&e->shutdown_done, true);
}

static void *echo_worker(void *p)
{
  echo_t *e = p;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(
        e->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
    if (ev.type == GRPC_OP_COMPLETE) {
      tag_t *t = ev.tag;
      t->fn(e, t, ev.success);
    }
  }
  return NULL;
}

static echo_t *echo_start(int nthreads, int *port)
{
  echo_t *e = calloc(1, sizeof(*e));
  if (e == NULL)
    return NULL;
  grpc_init();
  grpc_arg arg = {GRPC_ARG_INTEGER, "grpc.so_reuseport", {.integer = 0}};
  grpc_channel_args args = {1, &arg};
  e->srv = grpc_server_create(&args, NULL);
  e->cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(e->srv, e->cq, NULL);
  for (int i = 0; i < NPATHS; i++)
    e->methods[i] = grpc_server_register_method(
        e->srv, k_paths[i], NULL, GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  grpc_server_credentials *cr = grpc_insecure_server_credentials_create();
  *port = grpc_server_add_http2_port(e->srv, "127.0.0.1:0", cr);
  grpc_server_credentials_release(cr);
  if (*port == 0) {
    fprintf(stderr, "bench_server: echo cannot listen\n");
    exit(1);
  }
  grpc_server_start(e->srv);
  for (int i = 0; i < NPATHS; i++)
    for (int k = 0; k < POOL_PER_METHOD; k++)
      echo_post(e, i);
  e->shutdown_tag.fn = echo_on_shutdown;
  e->nthreads = nthreads;
  for (int i = 0; i < nthreads; i++)
    pthread_create(&e->threads[i], NULL, echo_worker, e);
  return e;
}

static void echo_stop(echo_t *e)
{
  atomic_store(&e->stopping, true);
  grpc_server_shutdown_and_notify(e->srv, e->cq, &e->shutdown_tag);
  grpc_server_cancel_all_calls(e->srv);
  while (!atomic_load(&e->shutdown_done)) {
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  grpc_completion_queue_shutdown(e->cq);
  for (int i = 0; i < e->nthreads; i++)
    pthread_join(e->threads[i], NULL);
  grpc_server_destroy(e->srv);
  grpc_completion_queue_destroy(e->cq);
  grpc_shutdown();
  free(e);
}

/* ---- afd's framework with empty handlers --------------------------------- */

static void fw_report_outcome(af_rpc_t *rpc, const ProtobufCMessage *req,
                              void *ctx)
{
  (void)req;
  (void)ctx;
  Antifragility__V1__ReportOutcomeResponse r =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_RESPONSE__INIT;
  af_rpc_reply(rpc, &r.base);
}

static void fw_get_system_health(af_rpc_t *rpc, const ProtobufCMessage *req,
                                 void *ctx)
{
  (void)req;
  (void)ctx;
  Antifragility__V1__GetSystemHealthResponse r =
      ANTIFRAGILITY__V1__GET_SYSTEM_HEALTH_RESPONSE__INIT;
  af_rpc_reply(rpc, &r.base);
}

static void fw_record_usage(af_rpc_t *rpc, const ProtobufCMessage *req,
                            void *ctx)
{
  (void)req;
  (void)ctx;
  Antifragility__V1__RecordUsageResponse r =
      ANTIFRAGILITY__V1__RECORD_USAGE_RESPONSE__INIT;
  af_rpc_reply(rpc, &r.base);
}

static af_server_t *fw_start(int nthreads, int *port)
{
  af_server_options_t opt;
  af_server_options_init(&opt);
  opt.listen_addr = "127.0.0.1:0";
  opt.threads = nthreads;
  af_server_t *srv = NULL;
  af_error_t err;
  af_error_clear(&err);
  if (af_server_create(&srv, &opt, &err) != AF_OK ||
      af_server_add_unary(
          srv, REPORT_OUTCOME,
          &antifragility__v1__report_outcome_request__descriptor,
          fw_report_outcome, NULL) != AF_OK ||
      af_server_add_unary(
          srv, GET_SYSTEM_HEALTH,
          &antifragility__v1__get_system_health_request__descriptor,
          fw_get_system_health, NULL) != AF_OK ||
      af_server_add_unary(srv, RECORD_USAGE,
                          &antifragility__v1__record_usage_request__descriptor,
                          fw_record_usage, NULL) != AF_OK ||
      af_server_start(srv, port, &err) != AF_OK) {
    fprintf(stderr, "bench_server: fwecho: %s\n", err.message);
    exit(1);
  }
  return srv;
}

/* ---- scaling: populate afd ---------------------------------------------- */

static void add_breakers(af_afd_t *afd, long n)
{
  af_breaker_registry_t *reg = af_engine_breakers(af_afd_engine(afd));
  for (long i = 0; i < n; i++) {
    char name[64];
    snprintf(name, sizeof(name), "bench-%07ld", i);
    af_breaker_registry_get_or_create(reg, name, NULL, NULL, NULL, NULL);
  }
}

static void add_tenants(af_afd_t *afd, long n)
{
  af_meter_t *m = af_engine_meter(af_afd_engine(afd));
  af_meter_metrics_t before;
  af_meter_metrics(m, &before);
  for (long i = 0; i < n; i++) {
    af_meter_event_t ev;
    char tenant[64];
    snprintf(tenant, sizeof(tenant), "tenant-%07ld", i);
    af_meter_event_init(&ev, tenant, AF_OP_AGENT_MESSAGE);
    while (af_meter_enqueue(m, &ev, NULL) == AF_EFULL) {
      af_meter_request_flush(m);
      struct timespec ts = {0, 1000000};
      nanosleep(&ts, NULL);
    }
  }
  /* Wait until the store has them all. */
  for (;;) {
    af_meter_request_flush(m);
    af_meter_metrics_t now;
    af_meter_metrics(m, &now);
    if (now.flushed - before.flushed >= (uint64_t)n)
      break;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
}

/* ---- main ---------------------------------------------------------------- */

static void print_stats(const af_server_t *srv, const echo_t *e)
{
  uint64_t ok = 0, failed = 0, calls = 0;
  if (srv != NULL) {
    af_server_stats_t s;
    af_server_stats(srv, &s);
    ok = s.by_code[GRPC_STATUS_OK];
    for (int i = 1; i < 17; i++)
      failed += s.by_code[i];
    calls = s.calls_started;
  } else {
    ok = atomic_load(&e->ok);
    failed = atomic_load(&e->failed);
    calls = atomic_load(&e->calls);
  }
  printf("{\"ok\":%llu,\"failed\":%llu,\"calls\":%llu}\n",
         (unsigned long long)ok, (unsigned long long)failed,
         (unsigned long long)calls);
  fflush(stdout);
}

static int parse_threads(int argc, char **argv)
{
  for (int i = 2; i + 1 < argc; i++)
    if (strcmp(argv[i], "--threads") == 0)
      return atoi(argv[i + 1]) > 0 ? atoi(argv[i + 1]) : 1;
  return 1;
}

int main(int argc, char **argv)
{
  if (argc < 2) {
    fprintf(stderr, "usage: bench_server afd [AFD FLAGS] | echo [--threads N]"
                    " | fwecho [--threads N] | bodies DIR\n");
    return 2;
  }
  const char *mode = argv[1];
  if (strcmp(mode, "bodies") == 0)
    return argc == 3 ? write_bodies(argv[2]) : 2;

  af_afd_t *afd = NULL;
  af_server_t *fw = NULL;
  echo_t *echo = NULL;
  int port = 0;
  if (strcmp(mode, "afd") == 0) {
    af_config_t cfg;
    af_config_init(&cfg);
    snprintf(cfg.listen, sizeof(cfg.listen), "127.0.0.1:0");
    cfg.memory = true;
    cfg.log_level = AF_LOG_ERROR;
    af_error_t err;
    af_error_clear(&err);
    if (af_config_parse_args(&cfg, argc - 1, argv + 1, NULL, &err) != AF_OK ||
        af_afd_start(&cfg, &afd, &port, &err) != AF_OK) {
      fprintf(stderr, "bench_server: afd: %s\n", err.message);
      return 1;
    }
  } else if (strcmp(mode, "echo") == 0) {
    echo = echo_start(parse_threads(argc, argv), &port);
  } else if (strcmp(mode, "fwecho") == 0) {
    fw = fw_start(parse_threads(argc, argv), &port);
  } else {
    fprintf(stderr, "bench_server: unknown mode %s\n", mode);
    return 2;
  }
  printf("port %d pid %d\n", port, (int)getpid());
  fflush(stdout);

  char line[128];
  while (fgets(line, sizeof(line), stdin) != NULL) {
    if (strncmp(line, "stats", 5) == 0)
      print_stats(afd != NULL ? af_afd_server(afd) : fw, echo);
    else if (strncmp(line, "quit", 4) == 0)
      break;
    else if (afd != NULL && strncmp(line, "breakers ", 9) == 0) {
      add_breakers(afd, atol(line + 9));
      printf("done\n");
      fflush(stdout);
    } else if (afd != NULL && strncmp(line, "tenants ", 8) == 0) {
      add_tenants(afd, atol(line + 8));
      printf("done\n");
      fflush(stdout);
    }
  }
  if (afd != NULL)
    af_afd_stop(afd);
  if (fw != NULL) {
    af_server_shutdown(fw);
    af_server_destroy(fw);
  }
  if (echo != NULL)
    echo_stop(echo);
  return 0;
}
