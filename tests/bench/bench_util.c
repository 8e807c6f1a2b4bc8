/*
 * bench_util.c - timing loop, medians and result output for the benchmark
 * programs (see bench_util.h).
 *
 * bu_run starts its threads, lets them wait on a barrier and takes the
 * time from the barrier to the last thread's end, so thread creation is
 * never timed. With 2+ threads each is pinned to its own CPU, so "both
 * cores" means both cores, not two threads taking turns on one.
 */
#define _GNU_SOURCE
#include "bench_util.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

uint64_t bu_now_ns(void)
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

double bu_median(double *v, size_t n)
{
  if (n == 0)
    return 0.0;
  qsort(v, n, sizeof(*v), cmp_double);
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2.0;
}

typedef struct {
  bu_body_fn body;
  void *arg;
  int tid, nthreads;
  uint64_t iters;
  pthread_barrier_t *barrier;
  uint64_t start_ns, end_ns;
} worker_t;

static void *worker_main(void *p)
{
  worker_t *w = p;
  if (w->nthreads > 1) {
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET((size_t)(w->tid % (ncpu > 0 ? ncpu : 1)), &set);
    pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
  }
  pthread_barrier_wait(w->barrier);
  w->start_ns = bu_now_ns();
  w->body(w->arg, w->tid, w->iters);
  w->end_ns = bu_now_ns();
  return NULL;
}

double bu_run(bu_body_fn body, void *arg, int nthreads, uint64_t iters)
{
  if (nthreads <= 1) {
    uint64_t t0 = bu_now_ns();
    body(arg, 0, iters);
    return (double)(bu_now_ns() - t0) / (double)iters;
  }
  pthread_barrier_t barrier;
  pthread_barrier_init(&barrier, NULL, (unsigned)nthreads + 1);
  worker_t *w = calloc((size_t)nthreads, sizeof(*w));
  pthread_t *th = calloc((size_t)nthreads, sizeof(*th));
  if (w == NULL || th == NULL) {
    fprintf(stderr, "bench: out of memory\n");
    exit(1);
  }
  for (int i = 0; i < nthreads; i++) {
    w[i] = (worker_t){body, arg, i, nthreads, iters, &barrier, 0, 0};
    pthread_create(&th[i], NULL, worker_main, &w[i]);
  }
  pthread_barrier_wait(&barrier);
  /* The caller may not get a CPU back until a worker ends (2 cores, 3
   * threads): take the time the workers saw, not ours. */
  uint64_t t0 = UINT64_MAX, end = 0;
  for (int i = 0; i < nthreads; i++) {
    pthread_join(th[i], NULL);
    if (w[i].start_ns < t0)
      t0 = w[i].start_ns;
    if (w[i].end_ns > end)
      end = w[i].end_ns;
  }
  pthread_barrier_destroy(&barrier);
  free(w);
  free(th);
  return (double)(end - t0) / (double)iters;
}

double bu_median_run(bu_body_fn body, void *arg, int nthreads, uint64_t iters,
                     int runs, void (*reset)(void *arg), double *min_out)
{
  double v[64];
  if (runs < 1)
    runs = 1;
  if (runs > 64)
    runs = 64;
  for (int r = 0; r < runs; r++) {
    if (reset != NULL)
      reset(arg);
    v[r] = bu_run(body, arg, nthreads, iters);
  }
  double m = bu_median(v, (size_t)runs);
  if (min_out != NULL)
    *min_out = v[0];
  return m;
}

static bu_result_t *g_results;
static size_t g_count, g_cap;

bu_result_t *bu_add(const char *group, const char *name, const char *param,
                    double value, double spread, const char *unit,
                    double budget)
{
  if (g_count == g_cap) {
    g_cap = g_cap ? g_cap * 2 : 64;
    g_results = realloc(g_results, g_cap * sizeof(*g_results));
    if (g_results == NULL) {
      fprintf(stderr, "bench: out of memory\n");
      exit(1);
    }
  }
  bu_result_t *r = &g_results[g_count++];
  memset(r, 0, sizeof(*r));
  snprintf(r->group, sizeof(r->group), "%s", group);
  snprintf(r->name, sizeof(r->name), "%s", name);
  snprintf(r->param, sizeof(r->param), "%s", param ? param : "");
  snprintf(r->unit, sizeof(r->unit), "%s", unit);
  r->value = value;
  r->spread = spread;
  r->budget = budget;
  return r;
}

static const char *verdict(const bu_result_t *r)
{
  if (isnan(r->budget))
    return "";
  bool ok = r->higher_is_better ? r->value >= r->budget : r->value <= r->budget;
  return ok ? "met" : "MISSED";
}

static void json_str(FILE *f, const char *key, const char *s)
{
  fprintf(f, "\"%s\":\"", key);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fputc('\\', f);
    fputc(*s, f);
  }
  fputc('"', f);
}

static void json_num(FILE *f, const char *key, double v)
{
  if (isnan(v))
    fprintf(f, ",\"%s\":null", key);
  else
    fprintf(f, ",\"%s\":%.6g", key, v);
}

int bu_results_finish(const char *title, const char *json_path)
{
  int missed = 0;
  printf("\n== %s ==\n", title);
  printf("%-9s %-52s %-18s %12s %12s %-7s %10s %s\n", "group", "benchmark",
         "param", "median", "best/other", "unit", "budget", "");
  for (size_t i = 0; i < g_count; i++) {
    const bu_result_t *r = &g_results[i];
    char spread[32] = "", budget[32] = "";
    if (!isnan(r->spread))
      snprintf(spread, sizeof(spread), "%.4g", r->spread);
    if (!isnan(r->budget))
      snprintf(budget, sizeof(budget), "%s%.4g",
               r->higher_is_better ? ">=" : "<=", r->budget);
    const char *v = verdict(r);
    if (strcmp(v, "MISSED") == 0)
      missed = 1;
    printf("%-9s %-52s %-18s %12.4g %12s %-7s %10s %s\n", r->group, r->name,
           r->param, r->value, spread, r->unit, budget, v);
  }
  fflush(stdout);
  if (json_path != NULL) {
    FILE *f = fopen(json_path, "a");
    if (f == NULL) {
      perror(json_path);
      return 2;
    }
    for (size_t i = 0; i < g_count; i++) {
      const bu_result_t *r = &g_results[i];
      fputc('{', f);
      json_str(f, "group", r->group);
      fputc(',', f);
      json_str(f, "name", r->name);
      fputc(',', f);
      json_str(f, "param", r->param);
      json_num(f, "value", r->value);
      json_num(f, "spread", r->spread);
      fputc(',', f);
      json_str(f, "unit", r->unit);
      json_num(f, "budget", r->budget);
      fprintf(f, ",\"higher_is_better\":%s",
              r->higher_is_better ? "true" : "false");
      fputc(',', f);
      json_str(f, "verdict", verdict(r));
      fputs("}\n", f);
    }
    fclose(f);
  }
  return missed;
}

uint64_t bu_rss_kib(int pid)
{
  char path[64];
  if (pid == 0)
    snprintf(path, sizeof(path), "/proc/self/status");
  else
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL)
    return 0;
  char line[256];
  uint64_t kib = 0;
  while (fgets(line, sizeof(line), f) != NULL) {
    unsigned long long v;
    if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
      kib = v;
      break;
    }
  }
  fclose(f);
  return kib;
}
