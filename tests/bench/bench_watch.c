/*
 * bench_watch.c - WatchHealth fan-out: N subscribers on loopback, the time
 * from a breaker transition to the last subscriber receiving it, and the
 * server's memory per idle subscriber.
 *
 *   bench_watch --port P --pid PID --watchers N [--per-conn K]
 *               [--rounds R] [--hold-ms MS] [--json FILE]
 *
 * The server (PID, for its RSS) must be a fresh afd with nothing but what
 * this program registers, started with heartbeats off. Steps:
 *   1. registers breaker "fanout" (fail_max 1, reset_timeout 1 h) and reads
 *      the server's RSS;
 *   2. opens N WatchHealth streams over ceil(N / K) connections (K streams
 *      per connection, default 100) on one completion queue, and waits
 *      until every stream has its first report; reads the RSS again: the
 *      difference / N is the memory per idle watcher;
 *   3. R times (default 5): t0, then one ReportOutcome failure (CLOSED ->
 *      OPEN: HEALTHY -> CRITICAL) or ResetBreaker (back to HEALTHY), then
 *      reads the streams until every one has received a report with the
 *      new status; records when the median and the last one arrived
 *      (arrival = when this client dequeued it: an upper bound);
 *   4. with --hold-ms: prints "holding" on stdout and keeps the streams open
 *      (reading whatever arrives) for MS ms, so that other load can run
 *      against a server with N idle watchers;
 *   5. cancels every stream and frees everything.
 * Exit status 1 if a stream ended early or a round timed out.
 */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>

#include "af_testclient.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "bench_util.h"
#include "google/protobuf/duration.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"

#define WATCH_PATH "/antifragility.v1.HealthService/WatchHealth"
#define BREAKER "fanout"

typedef struct stream stream_t;

typedef enum { OP_START, OP_RECV, OP_STATUS } op_kind_t;

typedef struct {
  op_kind_t kind;
  stream_t *s;
} op_tag_t;

struct stream {
  grpc_call *call;
  grpc_metadata_array init_md, trail_md;
  grpc_byte_buffer *recv;
  grpc_status_code status;
  grpc_slice details;
  op_tag_t t_start, t_recv, t_status;
  int pending; /* batches in flight */
  bool ended;
  uint64_t messages;
  int last_status;     /* report.status of the last message */
  uint64_t arrived_ns; /* when the awaited status arrived, 0 = not yet */
};

typedef struct {
  grpc_completion_queue *cq;
  grpc_channel **channels;
  size_t nchannels;
  stream_t *streams;
  size_t n;
  size_t ended_early;
} watch_t;

static void start_recv(stream_t *s)
{
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &s->recv;
  if (grpc_call_start_batch(s->call, &op, 1, &s->t_recv, NULL) == GRPC_CALL_OK)
    s->pending++;
}

static void open_stream(watch_t *w, stream_t *s, grpc_channel *ch)
{
  grpc_slice method = grpc_slice_from_static_string(WATCH_PATH);
  s->call =
      grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS, w->cq, method,
                               NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  grpc_metadata_array_init(&s->init_md);
  grpc_metadata_array_init(&s->trail_md);
  s->t_start = (op_tag_t){OP_START, s};
  s->t_recv = (op_tag_t){OP_RECV, s};
  s->t_status = (op_tag_t){OP_STATUS, s};
  s->last_status = -1;
  /* WatchHealthRequest{} encodes to zero bytes. */
  grpc_byte_buffer *req = grpc_raw_byte_buffer_create(NULL, 0);
  grpc_op ops[4];
  memset(ops, 0, sizeof(ops));
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = req;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
  if (grpc_call_start_batch(s->call, ops, 4, &s->t_start, NULL) == GRPC_CALL_OK)
    s->pending++;
  grpc_byte_buffer_destroy(req);
  /* RECV_STATUS_ON_CLIENT only at teardown: libgrpc (Debian, no NDEBUG)
   * scans every outstanding tag of the queue on each completion, and one
   * long-lived tag per stream would double the client's share of the
   * measured delay. A stream that ends shows as an empty RECV_MESSAGE. */
  start_recv(s);
}

static void start_status(stream_t *s)
{
  grpc_op op;
  memset(&op, 0, sizeof(op));
  op.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  op.data.recv_status_on_client.trailing_metadata = &s->trail_md;
  op.data.recv_status_on_client.status = &s->status;
  op.data.recv_status_on_client.status_details = &s->details;
  if (grpc_call_start_batch(s->call, &op, 1, &s->t_status, NULL) ==
      GRPC_CALL_OK)
    s->pending++;
}

/* Decodes the report status of a WatchHealthResponse; -1 if none. */
static int report_status(grpc_byte_buffer *bb)
{
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb))
    return -1;
  grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  Antifragility__V1__WatchHealthResponse *m =
      antifragility__v1__watch_health_response__unpack(
          NULL, GRPC_SLICE_LENGTH(sl), GRPC_SLICE_START_PTR(sl));
  grpc_slice_unref(sl);
  int st = -1;
  if (m != NULL) {
    if (m->report != NULL)
      st = (int)m->report->status;
    antifragility__v1__watch_health_response__free_unpacked(m, NULL);
  }
  return st;
}

/* Handles one completion. want: the status awaited (-1: any message). */
static void on_event(watch_t *w, grpc_event ev, int want)
{
  op_tag_t *t = ev.tag;
  stream_t *s = t->s;
  s->pending--;
  switch (t->kind) {
  case OP_START:
    break;
  case OP_RECV:
    if (s->recv == NULL) { /* the stream ended */
      if (!s->ended)
        w->ended_early++;
      s->ended = true;
      break;
    }
    s->messages++;
    s->last_status = report_status(s->recv);
    grpc_byte_buffer_destroy(s->recv);
    s->recv = NULL;
    if (s->arrived_ns == 0 && (want < 0 || s->last_status == want))
      s->arrived_ns = bu_now_ns();
    start_recv(s);
    break;
  case OP_STATUS:
    break;
  }
}

/* Pumps the CQ until every stream has arrived_ns set or timeout_ms passed.
 * Returns how many arrived. */
static size_t pump(watch_t *w, int want, int timeout_ms)
{
  uint64_t deadline = bu_now_ns() + (uint64_t)timeout_ms * 1000000u;
  size_t arrived = 0;
  for (size_t i = 0; i < w->n; i++)
    arrived += w->streams[i].arrived_ns != 0;
  while (arrived < w->n && bu_now_ns() < deadline) {
    grpc_event ev = grpc_completion_queue_next(
        w->cq,
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis(100, GPR_TIMESPAN)),
        NULL);
    if (ev.type != GRPC_OP_COMPLETE)
      continue;
    stream_t *s = ((op_tag_t *)ev.tag)->s;
    bool before = s->arrived_ns != 0;
    on_event(w, ev, want);
    if (!before && s->arrived_ns != 0)
      arrived++;
  }
  return arrived;
}

static grpc_status_code control(af_tc_t *c, bool open, af_tc_status_t *st)
{
  ProtobufCMessage *resp = NULL;
  grpc_status_code code;
  if (open) {
    Antifragility__V1__ReportOutcomeRequest r =
        ANTIFRAGILITY__V1__REPORT_OUTCOME_REQUEST__INIT;
    r.breaker_name = BREAKER;
    r.success = 0;
    r.error_type = "timeout";
    code = af_tc_unary(c, "/antifragility.v1.BreakerService/ReportOutcome",
                       &r.base,
                       &antifragility__v1__report_outcome_response__descriptor,
                       &resp, st, NULL, 5000);
  } else {
    Antifragility__V1__ResetBreakerRequest r =
        ANTIFRAGILITY__V1__RESET_BREAKER_REQUEST__INIT;
    r.name = BREAKER;
    code =
        af_tc_unary(c, "/antifragility.v1.BreakerService/ResetBreaker", &r.base,
                    &antifragility__v1__reset_breaker_response__descriptor,
                    &resp, st, NULL, 5000);
  }
  if (resp != NULL)
    protobuf_c_message_free_unpacked(resp, NULL);
  return code;
}

static int cmp_u64(const void *a, const void *b)
{
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
  int port = 0, pid = 0, rounds = 5, hold_ms = 0;
  size_t n = 1000, per_conn = 100;
  const char *json = NULL;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (strcmp(argv[i], "--port") == 0)
      port = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--pid") == 0)
      pid = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--watchers") == 0)
      n = (size_t)atol(argv[i + 1]);
    else if (strcmp(argv[i], "--per-conn") == 0)
      per_conn = (size_t)atol(argv[i + 1]);
    else if (strcmp(argv[i], "--rounds") == 0)
      rounds = atoi(argv[i + 1]);
    else if (strcmp(argv[i], "--json") == 0)
      json = argv[i + 1];
    else if (strcmp(argv[i], "--hold-ms") == 0)
      hold_ms = atoi(argv[i + 1]);
  }
  if (port <= 0 || pid <= 0 || n == 0 || per_conn == 0 || rounds < 1) {
    fprintf(stderr, "usage: bench_watch --port P --pid PID --watchers N "
                    "[--per-conn K] [--rounds R] [--json FILE]\n");
    return 2;
  }
  grpc_init();
  af_tc_t *ctl = af_tc_connect(port);
  af_tc_status_t st;

  /* 1. the breaker, then the baseline RSS */
  Antifragility__V1__RegisterBreakerRequest reg =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_REQUEST__INIT;
  Antifragility__V1__BreakerConfig bc = ANTIFRAGILITY__V1__BREAKER_CONFIG__INIT;
  Google__Protobuf__UInt32Value fm = GOOGLE__PROTOBUF__UINT32_VALUE__INIT;
  Google__Protobuf__Duration rt = GOOGLE__PROTOBUF__DURATION__INIT;
  fm.value = 1;
  rt.seconds = 3600;
  bc.fail_max = &fm;
  bc.reset_timeout = &rt;
  reg.name = BREAKER;
  reg.config = &bc;
  ProtobufCMessage *resp = NULL;
  if (af_tc_unary(ctl, "/antifragility.v1.BreakerService/RegisterBreaker",
                  &reg.base,
                  &antifragility__v1__register_breaker_response__descriptor,
                  &resp, &st, NULL, 5000) != GRPC_STATUS_OK) {
    fprintf(stderr, "bench_watch: RegisterBreaker: %d %s\n", st.code,
            st.message);
    return 1;
  }
  protobuf_c_message_free_unpacked(resp, NULL);
  uint64_t rss0 = bu_rss_kib(pid);

  /* 2. N watchers */
  watch_t w;
  memset(&w, 0, sizeof(w));
  w.cq = grpc_completion_queue_create_for_next(NULL);
  w.n = n;
  w.nchannels = (n + per_conn - 1) / per_conn;
  w.channels = calloc(w.nchannels, sizeof(*w.channels));
  w.streams = calloc(n, sizeof(*w.streams));
  if (w.channels == NULL || w.streams == NULL) {
    fprintf(stderr, "bench_watch: out of memory\n");
    return 1;
  }
  char target[64];
  snprintf(target, sizeof(target), "127.0.0.1:%d", port);
  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  for (size_t i = 0; i < w.nchannels; i++) {
    /* A connection per channel, not one shared subchannel. */
    grpc_arg arg = {
        GRPC_ARG_INTEGER, GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, {.integer = 1}};
    grpc_channel_args args = {1, &arg};
    w.channels[i] = grpc_channel_create(target, cr, &args);
  }
  grpc_channel_credentials_release(cr);
  uint64_t t_open = bu_now_ns();
  for (size_t i = 0; i < n; i++)
    open_stream(&w, &w.streams[i], w.channels[i / per_conn]);
  size_t got = pump(&w, -1, 120000);
  double open_s = (double)(bu_now_ns() - t_open) / 1e9;
  if (got < n) {
    fprintf(stderr, "bench_watch: only %zu of %zu watchers got a report\n", got,
            n);
    return 1;
  }
  /* Let the server settle (allocator, pending sends) before reading RSS. */
  struct timespec settle = {1, 0};
  nanosleep(&settle, NULL);
  uint64_t rss1 = bu_rss_kib(pid);
  double per_watcher = ((double)rss1 - (double)rss0) / (double)n;

  /* 3. transitions */
  int failures = 0;
  double *last_ms = calloc((size_t)rounds, sizeof(double));
  double *median_ms = calloc((size_t)rounds, sizeof(double));
  uint64_t *arr = calloc(n, sizeof(uint64_t));
  if (last_ms == NULL || median_ms == NULL || arr == NULL)
    return 1;
  for (int r = 0; r < rounds; r++) {
    bool open = r % 2 == 0;
    int want = open ? ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_CRITICAL
                    : ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_HEALTHY;
    for (size_t i = 0; i < n; i++)
      w.streams[i].arrived_ns = 0;
    uint64_t t0 = bu_now_ns();
    if (control(ctl, open, &st) != GRPC_STATUS_OK) {
      fprintf(stderr, "bench_watch: control RPC: %d %s\n", st.code, st.message);
      return 1;
    }
    got = pump(&w, want, 30000);
    if (got < n) {
      fprintf(stderr, "bench_watch: round %d: %zu of %zu watchers heard it\n",
              r, got, n);
      failures++;
      continue;
    }
    for (size_t i = 0; i < n; i++)
      arr[i] = w.streams[i].arrived_ns - t0;
    qsort(arr, n, sizeof(*arr), cmp_u64);
    last_ms[r] = (double)arr[n - 1] / 1e6;
    median_ms[r] = (double)arr[n / 2] / 1e6;
    fprintf(stderr, "round %d: median %.2f ms, last %.2f ms\n", r, median_ms[r],
            last_ms[r]);
  }
  if (w.ended_early != 0) {
    fprintf(stderr, "bench_watch: %zu streams ended early\n", w.ended_early);
    failures++;
  }

  char param[48];
  snprintf(param, sizeof(param), "watchers=%zu", n);
  bool big = n >= 10000;
  double last_worst = 0;
  for (int r = 0; r < rounds; r++)
    last_worst = fmax(last_worst, last_ms[r]);
  bu_add("watch", "transition -> last watcher (median of rounds)", param,
         bu_median(last_ms, (size_t)rounds), last_worst, "ms",
         big ? 200.0 : NAN);
  bu_add("watch", "transition -> median watcher", param,
         bu_median(median_ms, (size_t)rounds), NAN, "ms", NAN);
  bu_add("watch", "server RSS per idle watcher", param, per_watcher, NAN, "KiB",
         big ? 16.0 : NAN);
  bu_add("watch", "open all watchers, first report on each", param, open_s, NAN,
         "s", NAN);

  /* 4. hold */
  if (hold_ms > 0) {
    printf("holding\n");
    fflush(stdout);
    uint64_t until = bu_now_ns() + (uint64_t)hold_ms * 1000000u;
    while (bu_now_ns() < until) {
      grpc_event ev = grpc_completion_queue_next(
          w.cq,
          gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                       gpr_time_from_millis(100, GPR_TIMESPAN)),
          NULL);
      if (ev.type == GRPC_OP_COMPLETE)
        on_event(&w, ev, -1);
    }
  }

  /* 5. tear down */
  for (size_t i = 0; i < n; i++) {
    w.streams[i].ended = true; /* cancelled by us: not early */
    start_status(&w.streams[i]);
    grpc_call_cancel(w.streams[i].call, NULL);
  }
  for (;;) {
    size_t busy = 0;
    for (size_t i = 0; i < n; i++)
      busy += w.streams[i].pending > 0;
    if (busy == 0)
      break;
    grpc_event ev = grpc_completion_queue_next(
        w.cq,
        gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                     gpr_time_from_millis(1000, GPR_TIMESPAN)),
        NULL);
    if (ev.type == GRPC_OP_COMPLETE) {
      stream_t *s = ((op_tag_t *)ev.tag)->s;
      s->pending--;
      if (s->recv != NULL) {
        grpc_byte_buffer_destroy(s->recv);
        s->recv = NULL;
      }
    }
  }
  for (size_t i = 0; i < n; i++) {
    stream_t *s = &w.streams[i];
    grpc_metadata_array_destroy(&s->init_md);
    grpc_metadata_array_destroy(&s->trail_md);
    grpc_slice_unref(s->details);
    grpc_call_unref(s->call);
  }
  for (size_t i = 0; i < w.nchannels; i++)
    grpc_channel_destroy(w.channels[i]);
  grpc_completion_queue_shutdown(w.cq);
  while (grpc_completion_queue_next(w.cq, gpr_inf_future(GPR_CLOCK_MONOTONIC),
                                    NULL)
             .type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(w.cq);
  af_tc_close(ctl);
  free(w.streams);
  free(w.channels);
  free(last_ms);
  free(median_ms);
  free(arr);
  grpc_shutdown();

  int missed = bu_results_finish("WatchHealth fan-out", json);
  return failures ? 1 : missed;
}
