/*
 * bench_client.c - cost of libafclient's hot paths, in ns per operation.
 *
 *   bench_client [rounds]
 *
 * No server is needed (the hot paths never touch the network): the client
 * points at a closed port and runs without background threads, so nothing
 * competes for the CPU. Each row runs `rounds` rounds (default 31) of a
 * fixed batch and prints the median, 10th and 90th percentile of the
 * per-operation time over the rounds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "af/client.h"
#include "client_internal.h"

#define BATCH 200000

static uint64_t now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void report(const char *name, double *ns, int rounds)
{
  qsort(ns, (size_t)rounds, sizeof ns[0], cmp_double);
  printf("%-48s %9.1f %9.1f %9.1f\n", name, ns[rounds / 2], ns[rounds / 10],
         ns[rounds * 9 / 10]);
}

static af_client_t *make_client(size_t capacity)
{
  af_client_config_t cfg;
  af_client_config_init(&cfg);
  cfg.addr = "127.0.0.1:1";
  cfg.background = false;
  cfg.follow_chaos = false;
  cfg.meter_capacity = capacity;
  cfg.meter_batch = capacity < 100 ? capacity : 100;
  af_client_t *c = NULL;
  af_error_t err;
  if (af_client_create(&c, &cfg, &err) != AF_OK) {
    fprintf(stderr, "af_client_create: %s\n", err.message);
    exit(1);
  }
  return c;
}

static volatile int sink;

static void bench_guard(const char *name, af_client_t *c, af_guard_t *g,
                        int rounds)
{
  (void)c;
  double *ns = calloc((size_t)rounds, sizeof *ns);
  for (int r = 0; r < rounds; r++) {
    uint64_t t0 = now_ns();
    for (int i = 0; i < BATCH; i++) {
      if (af_guard_allow(g) == AF_GUARD_PASS) {
        af_guard_success(g);
      } else {
        sink++;
      }
    }
    ns[r] = (double)(now_ns() - t0) / BATCH;
  }
  report(name, ns, rounds);
  free(ns);
}

int main(int argc, char **argv)
{
  int rounds = argc > 1 ? atoi(argv[1]) : 31;
  if (rounds < 3) {
    rounds = 3;
  }
  printf("libafclient hot paths, %d rounds of %d ops (ns/op)\n", rounds, BATCH);
  printf("%-48s %9s %9s %9s\n", "operation", "median", "p10", "p90");

  af_client_t *c = make_client(1u << 20);
  af_guard_t *g = NULL;
  af_guard_get(c, "payments", NULL, &g, NULL);
  bench_guard("guard allow + success (CLOSED, no chaos)", c, g, rounds);

  /* One chaos scenario active on another target: the check now takes
   * the engine's read lock and scans the scenario. */
  antifragility_v1_ChaosScenario s;
  memset(&s, 0, sizeof s);
  snprintf(s.name, sizeof s.name, "other_latency");
  s.kind = antifragility_v1_ChaosKind_CHAOS_KIND_ERROR;
  snprintf(s.target, sizeof s.target, "other");
  s.active = true;
  s.error_rate = 1.0;
  s.has_duration = true;
  s.duration.seconds = 3600;
  s.blast_radius_count = 1;
  snprintf(s.blast_radius[0], sizeof s.blast_radius[0], "other");
  af__chaos_apply(c, &s, 1);
  bench_guard("guard allow + success (chaos on another target)", c, g, rounds);
  /* A scenario covering this guard that never fires (rate 0): the full
   * check through the chaos engine (read lock, scan, random draw). */
  snprintf(s.target, sizeof s.target, "payments");
  snprintf(s.blast_radius[0], sizeof s.blast_radius[0], "payments");
  s.error_rate = 0.0;
  af__chaos_apply(c, &s, 1);
  bench_guard("guard allow + success (chaos on it, rate 0)", c, g, rounds);
  af__chaos_apply(c, NULL, 0);

  /* Metering: enqueue with a generated key and timestamp each time; the
   * queue is drained (untimed) between rounds. */
  af_meter_event_t *drained = calloc(BATCH, sizeof *drained);
  double *ns = calloc((size_t)rounds, sizeof *ns);
  af_meter_event_t ev;
  af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
  for (int r = 0; r < rounds; r++) {
    uint64_t t0 = now_ns();
    for (int i = 0; i < BATCH; i++) {
      ev.event_id[0] = '\0';
      ev.timestamp_wall_ns = 0;
      if (af_client_meter_enqueue(c, &ev, NULL) != AF_OK) {
        sink++;
      }
    }
    ns[r] = (double)(now_ns() - t0) / BATCH;
    af_meter_drain(c->meter, drained, BATCH);
  }
  report("metering enqueue (new key + timestamp)", ns, rounds);

  /* Full queue: the refusal path (counted as dropped). */
  af_client_t *full = make_client(16);
  for (int i = 0; i < 16; i++) {
    ev.event_id[0] = '\0';
    af_client_meter_enqueue(full, &ev, NULL);
  }
  for (int r = 0; r < rounds; r++) {
    uint64_t t0 = now_ns();
    for (int i = 0; i < BATCH; i++) {
      ev.event_id[0] = '\0';
      ev.timestamp_wall_ns = 0;
      if (af_client_meter_enqueue(full, &ev, NULL) != AF_EFULL) {
        sink++;
      }
    }
    ns[r] = (double)(now_ns() - t0) / BATCH;
  }
  report("metering enqueue on a full queue (dropped)", ns, rounds);
  af_client_destroy(full);
  free(ns);
  free(drained);
  af_client_destroy(c);
  return sink < 0;
}
