/*
 * bench_util.h - what the benchmark programs share: a monotonic clock, a
 * multi-threaded timing loop, medians, and the result record every program
 * prints as a table row and appends as one JSON line to the result file.
 *
 * Thread-safety: bu_run is called from one thread and runs the body on
 * nthreads threads of its own. The result functions are single-owner.
 *
 * Results are plain numbers with a unit; a result may carry a budget
 * ("value <= budget" is met). Every program keeps its own list and writes
 * it with bu_results_finish: a table on stdout, JSON lines to --json.
 */
#ifndef AF_BENCH_UTIL_H
#define AF_BENCH_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in ns. */
uint64_t bu_now_ns(void);

/* Median of v[0..n-1] (sorts v in place). 0 for n == 0. */
double bu_median(double *v, size_t n);

/* Body of a timed loop: runs iters operations as thread tid of nthreads.
 * arg is the benchmark's shared state. */
typedef void (*bu_body_fn)(void *arg, int tid, uint64_t iters);

/* Runs body on nthreads threads (2 or more: pinned one per CPU), all
 * released together, and returns the wall time from the first start to the
 * last end divided by iters: ns per operation as each thread saw it. */
double bu_run(bu_body_fn body, void *arg, int nthreads, uint64_t iters);

/* Runs bu_run `runs` times and returns the median ns/op; *min_out (may be
 * NULL) gets the fastest run. reset (may be NULL) runs before every run,
 * untimed. */
double bu_median_run(bu_body_fn body, void *arg, int nthreads, uint64_t iters,
                     int runs, void (*reset)(void *arg), double *min_out);

/* One result row. */
typedef struct {
  char group[32]; /* "breaker", "chaos", "meter", "health", "rpc", ... */
  char name[96];  /* what was measured */
  char param[48]; /* the dimension, e.g. "n=10000" or "threads=2" */
  double value;   /* median */
  double spread;  /* fastest run (or another second figure); NAN = none */
  char unit[16];  /* "ns/op", "ms", "req/s", "KiB" ... */
  double budget;  /* NAN = no budget */
  bool higher_is_better; /* budget is a floor instead of a ceiling */
} bu_result_t;

/* Appends a result (copied). Returns a pointer to the stored copy. */
bu_result_t *bu_add(const char *group, const char *name, const char *param,
                    double value, double spread, const char *unit,
                    double budget);

/* Prints every result as a table on stdout, appends them as JSON lines to
 * json_path (NULL = none) and returns 1 if a budget was missed, else 0. */
int bu_results_finish(const char *title, const char *json_path);

/* Resident set size of a process (pid 0 = self) in KiB, from
 * /proc/PID/status; 0 if unreadable. */
uint64_t bu_rss_kib(int pid);

#endif /* AF_BENCH_UTIL_H */
