/*
 * bench_core.c - micro-benchmarks of the engine's hot paths (core/ only, no
 * gRPC): ns per operation, median of several runs, on one thread and on
 * both cores.
 *
 *   bench_core [--quick] [--runs N] [--json FILE] [--only GROUP]
 *
 * --quick divides every iteration count by 1000 and keeps the big sizes
 * small (the ctest smoke run); it proves the program works, its numbers
 * mean nothing. Exit status 1 if a budget was missed (never with --quick).
 *
 * What "threads=2" means: two threads pinned to the two CPUs run the same
 * loop at once; the figure is ns per operation as each thread saw it
 * (wall time / operations per thread). "shared" = both threads hit the
 * same object (worst case: its cache lines bounce between the cores),
 * "own" = each thread has its own.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "af/breaker.h"
#include "af/chaos.h"
#include "af/engine.h"
#include "af/health.h"
#include "af/meter.h"

#include "bench_util.h"

static int g_runs = 5;
static bool g_quick;
static volatile uint64_t g_sink;

static uint64_t iters(uint64_t n)
{
  uint64_t k = g_quick ? n / 1000 : n;
  return k > 0 ? k : 1;
}

static void die(const char *what, af_status_t st)
{
  fprintf(stderr, "bench_core: %s: %s\n", what, af_status_str(st));
  exit(2);
}

static void add_ns(const char *group, const char *name, const char *param,
                   double med, double best, double budget)
{
  bu_add(group, name, param, med, best, "ns/op", budget);
}

/* ---- breaker ----------------------------------------------------------- */

typedef struct {
  af_breaker_t *b[2];
  bool shared;
} br_arg_t;

static af_breaker_t *pick(const br_arg_t *a, int tid)
{
  return a->b[a->shared ? 0 : tid & 1];
}

static void body_allow_success(void *p, int tid, uint64_t n)
{
  af_breaker_t *b = pick(p, tid);
  uint64_t ok = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (af_breaker_allow(b)) {
      af_breaker_record_success(b);
      ok++;
    }
  }
  g_sink += ok;
}

static void body_allow_failure(void *p, int tid, uint64_t n)
{
  af_breaker_t *b = pick(p, tid);
  uint64_t ok = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (af_breaker_allow(b)) {
      af_breaker_record_failure(b, NULL);
      ok++;
    }
  }
  g_sink += ok;
}

static void body_allow_open(void *p, int tid, uint64_t n)
{
  af_breaker_t *b = pick(p, tid);
  uint64_t ok = 0;
  for (uint64_t i = 0; i < n; i++)
    ok += af_breaker_allow(b);
  g_sink += ok;
}

static void bench_breaker_ops(void)
{
  af_breaker_registry_t *reg = NULL;
  af_status_t st = af_breaker_registry_create(&reg, NULL);
  if (st != AF_OK)
    die("registry", st);
  af_breaker_config_t cfg;
  af_breaker_config_init(&cfg);
  /* Failures must not open it: we time the CLOSED failure path. */
  cfg.fail_max = UINT32_MAX;
  br_arg_t a = {{NULL, NULL}, false};
  const char *names[2] = {"payments", "inventory"};
  for (int i = 0; i < 2; i++) {
    st = af_breaker_registry_get_or_create(reg, names[i], &cfg, &a.b[i], NULL,
                                           NULL);
    if (st != AF_OK)
      die("get_or_create", st);
  }
  const uint64_t n = iters(20000000);
  struct {
    const char *name;
    bu_body_fn fn;
    double budget;
  } ops[] = {
      {"breaker allow+success (CLOSED)", body_allow_success, 50},
      {"breaker allow+failure (CLOSED)", body_allow_failure, NAN},
  };
  for (size_t k = 0; k < sizeof(ops) / sizeof(ops[0]); k++) {
    double best, med;
    a.shared = true;
    med = bu_median_run(ops[k].fn, &a, 1, n, g_runs, NULL, &best);
    add_ns("breaker", ops[k].name, "threads=1", med, best, ops[k].budget);
    a.shared = false;
    med = bu_median_run(ops[k].fn, &a, 2, n, g_runs, NULL, &best);
    add_ns("breaker", ops[k].name, "threads=2 own", med, best, ops[k].budget);
    a.shared = true;
    med = bu_median_run(ops[k].fn, &a, 2, n, g_runs, NULL, &best);
    add_ns("breaker", ops[k].name, "threads=2 shared", med, best, NAN);
  }
  /* An OPEN breaker rejecting (the reset timeout is 30 s away). */
  for (int i = 0; i < 2; i++)
    af_breaker_set_state(a.b[i], AF_BREAKER_OPEN, NULL);
  double best;
  a.shared = true;
  double med = bu_median_run(body_allow_open, &a, 1, n, g_runs, NULL, &best);
  add_ns("breaker", "breaker allow rejected (OPEN)", "threads=1", med, best,
         NAN);
  for (int i = 0; i < 2; i++)
    af_breaker_release(a.b[i]);
  af_breaker_registry_destroy(reg);
}

/* The server's ReportOutcome path without the RPC: find the breaker by
 * name, apply a remote outcome (instance id, report time), release. Bare
 * registry, then the engine's (REPORT events -> health touch). */
typedef struct {
  af_breaker_registry_t *reg;
} rp_arg_t;

static void body_report(void *p, int tid, uint64_t n)
{
  rp_arg_t *a = p;
  const char *name = tid & 1 ? "inventory" : "payments";
  for (uint64_t i = 0; i < n; i++) {
    af_breaker_t *b = NULL;
    if (af_breaker_registry_find(a->reg, name, &b) == AF_OK) {
      g_sink += af_breaker_report_outcome(b, true, NULL, "bench-1");
      af_breaker_release(b);
    }
  }
}

static void bench_report(void)
{
  rp_arg_t a;
  af_status_t st = af_breaker_registry_create(&a.reg, NULL);
  if (st != AF_OK)
    die("registry", st);
  af_engine_config_t ec;
  af_engine_config_init(&ec);
  ec.run_timer_thread = false;
  af_engine_t *e = NULL;
  st = af_engine_create(&e, &ec, NULL);
  if (st != AF_OK)
    die("engine", st);
  const char *names[] = {"payments", "inventory"};
  for (int i = 0; i < 2; i++) {
    af_breaker_registry_get_or_create(a.reg, names[i], NULL, NULL, NULL, NULL);
    af_breaker_registry_get_or_create(af_engine_breakers(e), names[i], NULL,
                                      NULL, NULL, NULL);
  }
  double best, med;
  for (int threads = 1; threads <= 2; threads++) {
    char param[48];
    snprintf(param, sizeof(param), "threads=%d own", threads);
    med = bu_median_run(body_report, &a, threads, iters(5000000), g_runs, NULL,
                        &best);
    add_ns("breaker", "find + report_outcome + release (registry)", param, med,
           best, NAN);
  }
  af_breaker_registry_destroy(a.reg);
  a.reg = af_engine_breakers(e);
  for (int threads = 1; threads <= 2; threads++) {
    char param[48];
    snprintf(param, sizeof(param), "threads=%d own", threads);
    med = bu_median_run(body_report, &a, threads, iters(5000000), g_runs, NULL,
                        &best);
    add_ns("breaker", "find + report_outcome + release (engine)", param, med,
           best, NAN);
  }
  af_engine_destroy(e);
}

/* ---- registry lookup --------------------------------------------------- */

#define NAME_LEN 40
#define ORDER_LEN ((size_t)1 << 20)

typedef struct {
  af_breaker_registry_t *reg;
  char (*names)[NAME_LEN];
  uint32_t *order; /* ORDER_LEN random indexes into names */
} lk_arg_t;

static void body_lookup(void *p, int tid, uint64_t n)
{
  lk_arg_t *a = p;
  size_t off = (size_t)tid * (ORDER_LEN / 2);
  uint64_t found = 0;
  for (uint64_t i = 0; i < n; i++) {
    af_breaker_t *b = NULL;
    if (af_breaker_registry_find(
            a->reg, a->names[a->order[(off + i) & (ORDER_LEN - 1)]], &b) ==
        AF_OK) {
      found++;
      af_breaker_release(b);
    }
  }
  g_sink += found;
}

static uint64_t xorshift(uint64_t *s)
{
  uint64_t x = *s;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  return *s = x;
}

static void bench_registry(void)
{
  size_t sizes[] = {10, 10000, 1000000};
  if (g_quick)
    sizes[2] = 20000;
  lk_arg_t a;
  a.order = malloc(ORDER_LEN * sizeof(*a.order));
  if (a.order == NULL)
    die("order", AF_ENOMEM);
  for (size_t s = 0; s < 3; s++) {
    size_t n = sizes[s];
    af_breaker_registry_config_t rc;
    af_breaker_registry_config_init(&rc);
    rc.max_breakers = n;
    af_status_t st = af_breaker_registry_create(&a.reg, &rc);
    if (st != AF_OK)
      die("registry", st);
    a.names = malloc(n * NAME_LEN);
    if (a.names == NULL)
      die("names", AF_ENOMEM);
    for (size_t i = 0; i < n; i++) {
      snprintf(a.names[i], NAME_LEN, "svc-%07zu.prod", i);
      st = af_breaker_registry_get_or_create(a.reg, a.names[i], NULL, NULL,
                                             NULL, NULL);
      if (st != AF_OK)
        die("get_or_create", st);
    }
    uint64_t seed = 0x9e3779b97f4a7c15u;
    for (size_t i = 0; i < ORDER_LEN; i++)
      a.order[i] = (uint32_t)(xorshift(&seed) % n);
    char param[48];
    snprintf(param, sizeof(param), "n=%zu threads=1", n);
    double best;
    double med =
        bu_median_run(body_lookup, &a, 1, iters(2000000), g_runs, NULL, &best);
    add_ns("registry", "registry find+release (random name)", param, med, best,
           NAN);
    snprintf(param, sizeof(param), "n=%zu threads=2", n);
    med =
        bu_median_run(body_lookup, &a, 2, iters(2000000), g_runs, NULL, &best);
    add_ns("registry", "registry find+release (random name)", param, med, best,
           NAN);
    af_breaker_registry_destroy(a.reg);
    free(a.names);
  }
  free(a.order);
}

/* ---- chaos ------------------------------------------------------------- */

typedef struct {
  af_chaos_t *c;
  const char *target;
} ch_arg_t;

static void body_chaos_error(void *p, int tid, uint64_t n)
{
  (void)tid;
  ch_arg_t *a = p;
  uint64_t hits = 0;
  for (uint64_t i = 0; i < n; i++)
    hits += af_chaos_should_inject_error(a->c, a->target);
  g_sink += hits;
}

static void body_chaos_latency(void *p, int tid, uint64_t n)
{
  (void)tid;
  ch_arg_t *a = p;
  uint64_t hits = 0, delay = 0;
  for (uint64_t i = 0; i < n; i++)
    hits += af_chaos_should_inject_latency(a->c, a->target, &delay);
  g_sink += hits + delay;
}

static void chaos_row(ch_arg_t *a, const char *what, const char *param,
                      uint64_t n, double budget)
{
  char name[96], p[48];
  double best, med;
  for (int threads = 1; threads <= 2; threads++) {
    snprintf(p, sizeof(p), "%s threads=%d", param, threads);
    snprintf(name, sizeof(name), "chaos should_inject_error %s", what);
    med = bu_median_run(body_chaos_error, a, threads, n, g_runs, NULL, &best);
    add_ns("chaos", name, p, med, best, budget);
    snprintf(name, sizeof(name), "chaos should_inject_latency %s", what);
    med = bu_median_run(body_chaos_latency, a, threads, n, g_runs, NULL, &best);
    add_ns("chaos", name, p, med, best, budget);
  }
}

static void bench_chaos(void)
{
  af_chaos_config_t cfg;
  af_chaos_config_init(&cfg);
  cfg.rng_seed = 42;
  ch_arg_t a = {NULL, "payments"};
  af_status_t st = af_chaos_create(&a.c, &cfg, NULL);
  if (st != AF_OK)
    die("chaos", st);
  chaos_row(&a, "(nothing active)", "active=0", iters(50000000), 10);
  for (int i = 0; i < 100; i++) {
    af_chaos_request_t r;
    char target[32];
    snprintf(target, sizeof(target), "svc-%03d", i);
    af_chaos_request_init(&r, i % 2 ? AF_CHAOS_LATENCY : AF_CHAOS_ERROR,
                          target);
    r.delay_ms = 10;
    r.error_rate = 0.5;
    r.duration_ms = 300000;
    af_error_t err;
    st = af_chaos_activate(a.c, &r, NULL, &err);
    if (st != AF_OK) {
      fprintf(stderr, "bench_core: activate: %s\n", err.message);
      exit(2);
    }
  }
  chaos_row(&a, "(target not covered)", "active=100", iters(2000000), NAN);
  a.target = "svc-099";
  chaos_row(&a, "(target covered)", "active=100", iters(2000000), NAN);
  af_chaos_destroy(a.c);
}

/* ---- metering ---------------------------------------------------------- */

typedef struct {
  af_meter_t *m;
  af_meter_event_t ev[2];
  bool generate; /* event_id and timestamp filled in by enqueue */
  bool fill;     /* reset fills the queue (the "full" case) */
  uint64_t refused;
  af_meter_event_t *buf;
  size_t buf_len;
} mt_arg_t;

static void meter_reset(void *p)
{
  mt_arg_t *a = p;
  while (af_meter_drain(a->m, a->buf, a->buf_len) > 0) {
  }
  if (a->fill) {
    af_meter_event_t e = a->ev[0];
    while (af_meter_enqueue(a->m, &e, NULL) == AF_OK) {
    }
  }
}

static void body_enqueue(void *p, int tid, uint64_t n)
{
  mt_arg_t *a = p;
  af_meter_event_t *e = &a->ev[tid & 1];
  uint64_t refused = 0;
  for (uint64_t i = 0; i < n; i++) {
    if (a->generate) {
      e->event_id[0] = '\0';
      e->timestamp_wall_ns = 0;
    }
    refused += af_meter_enqueue(a->m, e, NULL) != AF_OK;
  }
  __atomic_fetch_add(&a->refused, refused, __ATOMIC_RELAXED);
}

static void bench_meter(void)
{
  /* The default capacity (10000 events of ~1 KiB: the ring fits the L3
   * cache, as in afd). Each run fills half of it per thread; the queue is
   * drained between runs, untimed. */
  const uint64_t n = g_quick ? 100 : 5000; /* per thread, per run */
  const int runs = g_quick ? 1 : 5 * g_runs;
  af_meter_config_t cfg;
  af_meter_config_init(&cfg);
  cfg.capacity = (size_t)(2 * n);
  mt_arg_t a;
  memset(&a, 0, sizeof(a));
  af_status_t st = af_meter_create(&a.m, &cfg, NULL);
  if (st != AF_OK)
    die("meter", st);
  a.buf_len = 1024;
  a.buf = calloc(a.buf_len, sizeof(*a.buf));
  if (a.buf == NULL)
    die("buf", AF_ENOMEM);
  for (int i = 0; i < 2; i++) {
    af_meter_event_init(&a.ev[i], i ? "tenant-b" : "tenant-a",
                        AF_OP_AGENT_MESSAGE);
    snprintf(a.ev[i].agent_id, sizeof(a.ev[i].agent_id), "agent-7");
    a.ev[i].tokens_processed = 512;
    a.ev[i].latency_ms = 3.5;
  }
  double best, med;
  /* A client-supplied idempotency key: validate + copy into the ring. */
  snprintf(a.ev[0].event_id, sizeof(a.ev[0].event_id),
           "7f3e2a10c4b84d0e9a51d2c3b4a59687");
  snprintf(a.ev[1].event_id, sizeof(a.ev[1].event_id),
           "0a1b2c3d4e5f60718293a4b5c6d7e8f9");
  a.generate = false;
  med = bu_median_run(body_enqueue, &a, 1, n, runs, meter_reset, &best);
  add_ns("meter", "meter enqueue (event_id given)", "threads=1", med, best,
         100);
  med = bu_median_run(body_enqueue, &a, 2, n, runs, meter_reset, &best);
  add_ns("meter", "meter enqueue (event_id given) contended", "threads=2", med,
         best, NAN);
  a.generate = true;
  med = bu_median_run(body_enqueue, &a, 1, n, runs, meter_reset, &best);
  add_ns("meter", "meter enqueue (id + timestamp generated)", "threads=1", med,
         best, 100);
  med = bu_median_run(body_enqueue, &a, 2, n, runs, meter_reset, &best);
  add_ns("meter", "meter enqueue (id + timestamp generated) contended",
         "threads=2", med, best, NAN);
  if (a.refused != 0) {
    fprintf(stderr, "bench_core: %" PRIu64 " enqueues refused\n", a.refused);
    exit(2);
  }
  /* Never blocks: on a full queue it refuses at once. */
  a.generate = false;
  a.fill = true;
  med = bu_median_run(body_enqueue, &a, 1, n, runs, meter_reset, &best);
  add_ns("meter", "meter enqueue refused (queue full)", "threads=1", med, best,
         NAN);
  af_meter_destroy(a.m);
  free(a.buf);
}

/* ---- health ------------------------------------------------------------ */

typedef struct {
  af_health_t *h;
  char names[2][NAME_LEN];
} hl_arg_t;

static void body_health_transition(void *p, int tid, uint64_t n)
{
  hl_arg_t *a = p;
  const char *name = a->names[tid & 1];
  for (uint64_t i = 0; i < n; i++)
    af_health_set_state(a->h, name,
                        i & 1 ? AF_BREAKER_CLOSED : AF_BREAKER_OPEN);
}

static void body_health_report(void *p, int tid, uint64_t n)
{
  (void)tid;
  hl_arg_t *a = p;
  for (uint64_t i = 0; i < n; i++) {
    af_health_report_t r;
    if (af_health_report(a->h, &r) == AF_OK) {
      g_sink += r.breaker_count;
      af_health_report_free(&r);
    }
  }
}

typedef struct {
  af_breaker_t *b[2];
} en_arg_t;

static void body_engine_transition(void *p, int tid, uint64_t n)
{
  en_arg_t *a = p;
  af_breaker_t *b = a->b[tid & 1];
  for (uint64_t i = 0; i < n; i++)
    af_breaker_set_state(b, i & 1 ? AF_BREAKER_CLOSED : AF_BREAKER_OPEN, NULL);
}

static void bench_health(void)
{
  size_t sizes[] = {10, 10000, 100000};
  if (g_quick)
    sizes[2] = 1000;
  for (size_t s = 0; s < 3; s++) {
    size_t n = sizes[s];
    char param[48];
    hl_arg_t a;
    af_status_t st = af_health_create(&a.h, NULL, NULL);
    if (st != AF_OK)
      die("health", st);
    for (size_t i = 0; i < n; i++) {
      char name[NAME_LEN];
      snprintf(name, sizeof(name), "svc-%07zu.prod", (i * 7919) % n);
      st = af_health_track(a.h, name, AF_BREAKER_CLOSED, 1.0);
      if (st != AF_OK)
        die("track", st);
    }
    snprintf(a.names[0], NAME_LEN, "svc-%07zu.prod", n / 3);
    snprintf(a.names[1], NAME_LEN, "svc-%07zu.prod", 2 * n / 3 + 1);
    double best, med;
    for (int threads = 1; threads <= 2; threads++) {
      snprintf(param, sizeof(param), "n=%zu threads=%d", n, threads);
      med = bu_median_run(body_health_transition, &a, threads, iters(2000000),
                          g_runs, NULL, &best);
      add_ns("health", "health set_state (one transition, incremental)", param,
             med, best, NAN);
    }
    /* The full report (GetSystemHealth, WatchHealth): O(n). */
    uint64_t reps = n >= 100000 ? 10 : n >= 10000 ? 100 : 100000;
    if (g_quick)
      reps = 2;
    snprintf(param, sizeof(param), "n=%zu", n);
    med = bu_median_run(body_health_report, &a, 1, reps, g_runs, NULL, &best);
    bu_add("health", "health full report (af_health_report)", param, med / 1e6,
           best / 1e6, "ms", n == 100000 ? 5.0 : NAN);
    af_health_destroy(a.h);

    /* Through the engine: breaker transition -> listener -> health. */
    af_engine_config_t ec;
    af_engine_config_init(&ec);
    ec.run_timer_thread = false;
    ec.breakers.max_breakers = n + 2;
    af_engine_t *e = NULL;
    af_error_t err;
    st = af_engine_create(&e, &ec, &err);
    if (st != AF_OK)
      die(err.message, st);
    af_breaker_registry_t *reg = af_engine_breakers(e);
    en_arg_t ea;
    for (size_t i = 0; i < n; i++) {
      char name[NAME_LEN];
      snprintf(name, sizeof(name), "svc-%07zu.prod", i);
      af_breaker_t **out = i == n / 3           ? &ea.b[0]
                           : i == 2 * n / 3 + 1 ? &ea.b[1]
                                                : NULL;
      st = af_breaker_registry_get_or_create(reg, name, NULL, out, NULL, NULL);
      if (st != AF_OK)
        die("engine get_or_create", st);
    }
    for (int threads = 1; threads <= 2; threads++) {
      snprintf(param, sizeof(param), "n=%zu threads=%d", n, threads);
      med = bu_median_run(body_engine_transition, &ea, threads, iters(500000),
                          g_runs, NULL, &best);
      add_ns("health", "engine breaker transition -> health recompute", param,
             med, best, NAN);
    }
    af_breaker_release(ea.b[0]);
    af_breaker_release(ea.b[1]);
    af_engine_destroy(e);
  }
}

int main(int argc, char **argv)
{
  const char *json = NULL, *only = NULL;
  for (int i = 1; i < argc; i++) {
    if (strcmp(argv[i], "--quick") == 0) {
      g_quick = true;
      g_runs = 1;
    } else if (strcmp(argv[i], "--runs") == 0 && i + 1 < argc) {
      g_runs = atoi(argv[++i]);
    } else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
      json = argv[++i];
    } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
      only = argv[++i];
    } else {
      fprintf(stderr, "usage: bench_core [--quick] [--runs N] [--json FILE] "
                      "[--only breaker|report|chaos|meter|health|registry]\n");
      return 2;
    }
  }
  static const struct {
    const char *name;
    void (*fn)(void);
  } groups[] = {{"breaker", bench_breaker_ops}, {"report", bench_report},
                {"chaos", bench_chaos},         {"meter", bench_meter},
                {"health", bench_health},       {"registry", bench_registry}};
  for (size_t i = 0; i < sizeof(groups) / sizeof(groups[0]); i++)
    if (only == NULL || strcmp(only, groups[i].name) == 0)
      groups[i].fn();
  int missed = bu_results_finish("core micro-benchmarks (ns/op: median of "
                                 "runs; best run in the next column)",
                                 json);
  return g_quick ? 0 : missed;
}
