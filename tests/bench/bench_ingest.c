/*
 * bench_ingest.c - sustained durable metering ingest (events/s) of an
 * in-process afd on a fresh SQLite data directory: group commit (the
 * default --batch-size) against one commit per event (--batch-size 1).
 *
 * Every counted event was acknowledged by afd, i.e. committed with
 * synchronous=FULL (fsync) before the reply. Two client workloads:
 *   unary   CLIENTS threads calling RecordUsage back to back
 *   stream  CLIENTS threads sending RecordUsageStream calls of STREAM_LEN
 * Each cell is the median of RUNS runs of RUN_MS each, all in one process
 * run, on the same machine and disk. Usage: bench_ingest [run_ms] [runs]
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "af_testclient.h"
#include "antifragility/v1/metering.pb-c.h"

#define MSVC "/antifragility.v1.MeteringService/"
#define CLIENTS 8
#define STREAM_LEN 200
#define MAX_RUNS 9

typedef struct {
  int port;
  int index;
  bool stream;
  int64_t until_ms;
  uint64_t acked;
} client_t;

typedef struct {
  Antifragility__V1__RecordUsageRequest req;
  Antifragility__V1__UsageEvent ev;
  char id[48];
} ev_t;

static void ev_init(ev_t *e, int client, uint64_t n)
{
  memset(e, 0, sizeof(*e));
  antifragility__v1__record_usage_request__init(&e->req);
  antifragility__v1__usage_event__init(&e->ev);
  snprintf(e->id, sizeof e->id, "c%d-%llu", client, (unsigned long long)n);
  e->ev.tenant_id = (char *)"bench";
  e->ev.event_id = e->id;
  e->ev.operation =
      ANTIFRAGILITY__V1__METERABLE_OPERATION__OPERATION_AGENT_MESSAGE;
  e->ev.units = 1;
  e->ev.compliance_score = 1.0;
  e->ev.constitutional_valid = true;
  e->req.event = &e->ev;
}

static void *client_main(void *p)
{
  client_t *c = p;
  af_tc_t *tc = af_tc_connect(c->port);
  uint64_t n = 0;
  static __thread ev_t evs[STREAM_LEN];
  const ProtobufCMessage *reqs[STREAM_LEN];
  while (af_tc_now_ms() < c->until_ms) {
    ProtobufCMessage *r = NULL;
    if (!c->stream) {
      ev_init(&evs[0], c->index, n++);
      if (af_tc_unary(tc, MSVC "RecordUsage", &evs[0].req.base,
                      &antifragility__v1__record_usage_response__descriptor, &r,
                      NULL, NULL, 10000) == GRPC_STATUS_OK) {
        c->acked++;
      }
    } else {
      for (int k = 0; k < STREAM_LEN; k++) {
        ev_init(&evs[k], c->index, n++);
        reqs[k] = &evs[k].req.base;
      }
      if (af_tc_client_stream(
              tc, MSVC "RecordUsageStream", reqs, STREAM_LEN,
              &antifragility__v1__record_usage_stream_response__descriptor, &r,
              NULL, 20000) == GRPC_STATUS_OK) {
        c->acked +=
            ((Antifragility__V1__RecordUsageStreamResponse *)r)->accepted;
      }
    }
    if (r != NULL) {
      protobuf_c_message_free_unpacked(r, NULL);
    }
  }
  af_tc_close(tc);
  return NULL;
}

/* One run: a fresh data dir, afd with batch_size, CLIENTS clients for
 * run_ms. Returns acknowledged events per second. */
static double run_once(uint32_t batch_size, bool stream, int run_ms)
{
  char dir[] = "/tmp/afd-bench-XXXXXX";
  if (mkdtemp(dir) == NULL) {
    perror("mkdtemp");
    exit(1);
  }
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.memory = false;
  snprintf(cfg.data_dir, sizeof cfg.data_dir, "%s", dir);
  cfg.batch_size = batch_size;
  cfg.threads = 1;
  af_afd_t *afd = NULL;
  int port = 0;
  af_error_t err;
  af_error_clear(&err);
  if (af_afd_start(&cfg, &afd, &port, &err) != AF_OK) {
    fprintf(stderr, "cannot start afd: %s\n", err.message);
    exit(1);
  }
  client_t cl[CLIENTS];
  pthread_t th[CLIENTS];
  int64_t start = af_tc_now_ms();
  for (int i = 0; i < CLIENTS; i++) {
    cl[i] = (client_t){port, i, stream, start + run_ms, 0};
    pthread_create(&th[i], NULL, client_main, &cl[i]);
  }
  uint64_t acked = 0;
  for (int i = 0; i < CLIENTS; i++) {
    pthread_join(th[i], NULL);
    acked += cl[i].acked;
  }
  int64_t elapsed = af_tc_now_ms() - start;
  af_afd_stop(afd);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) {
    fprintf(stderr, "cannot remove %s\n", dir);
  }
  return (double)acked * 1000.0 / (double)(elapsed > 0 ? elapsed : 1);
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a;
  double y = *(const double *)b;
  return (x > y) - (x < y);
}

static double median(uint32_t batch, bool stream, int run_ms, int runs)
{
  double v[MAX_RUNS];
  for (int i = 0; i < runs; i++) {
    v[i] = run_once(batch, stream, run_ms);
  }
  qsort(v, (size_t)runs, sizeof v[0], cmp_double);
  return v[runs / 2];
}

int main(int argc, char **argv)
{
  int run_ms = argc > 1 ? atoi(argv[1]) : 1500;
  int runs = argc > 2 ? atoi(argv[2]) : 3;
  if (run_ms < 100 || runs < 1 || runs > MAX_RUNS) {
    fprintf(stderr, "usage: %s [run_ms >= 100] [runs 1..%d]\n", argv[0],
            MAX_RUNS);
    return 2;
  }
  af_config_t defaults;
  af_config_init(&defaults);
  printf("durable ingest, %d clients, median of %d x %d ms, SQLite WAL "
         "synchronous=FULL\n\n",
         CLIENTS, runs, run_ms);
  printf("| workload | commit | events/s |\n|---|---|---:|\n");
  const struct {
    const char *name;
    bool stream;
  } loads[] = {{"unary RecordUsage", false}, {"RecordUsageStream x200", true}};
  for (size_t l = 0; l < 2; l++) {
    double group = median(defaults.batch_size, loads[l].stream, run_ms, runs);
    double single = median(1, loads[l].stream, run_ms, runs);
    printf("| %s | group (--batch-size %u) | %.0f |\n", loads[l].name,
           defaults.batch_size, group);
    printf("| %s | one per event (--batch-size 1) | %.0f |\n", loads[l].name,
           single);
    fflush(stdout);
  }
  return 0;
}
