/*
 * store.c - the SQLite store: open + migrate, a writer and a reader thread,
 * group commit.
 *
 * What it owns: two connections to data_dir/afd.db (read-write for the
 * writer thread, read-only for the reader thread), a job queue per thread
 * and a small cache of prepared statements per connection.
 *
 * Invariants:
 *   - A connection is only touched by its thread once open returned (the
 *     owner thread opens and migrates before the threads start, and closes
 *     after they were joined).
 *   - Every accepted job runs exactly once and its done callback is called
 *     exactly once, after the commit for writes; jobs queued before
 *     af_store_shutdown are all run before the threads exit.
 *   - A write job that fails rolls back only its own SAVEPOINT; a failed
 *     COMMIT (disk full, read-only file, I/O error) fails every job of the
 *     group, and nothing of the group is on disk.
 *
 * Durability: journal_mode=WAL with synchronous=FULL, so a committed
 * transaction survives a process kill and a power loss; one fsync per
 * group.
 */
#include "store.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "af/alloc.h"
#include "log.h"

#define STMT_CACHE_MAX 32
#define BUSY_TIMEOUT_MS 5000

struct af_store_conn {
  sqlite3 *db;
  struct {
    const char *sql;
    sqlite3_stmt *st;
  } cache[STMT_CACHE_MAX];
  size_t n_cache;
};

typedef struct job {
  struct job *next;
  af_store_job_fn fn;
  af_store_done_fn done;
  void *ctx;
} job_t;

typedef struct {
  af_store_t *store;
  af_store_conn_t conn;
  bool writer;
  pthread_t thread;
  bool started;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  job_t *head;
  job_t *tail;
  bool stop; /* no new jobs; exit once the queue is empty */
} worker_t;

struct af_store {
  char path[4096];
  worker_t writer;
  worker_t reader;
  bool shut;
  _Atomic uint64_t commits;
  _Atomic uint64_t write_jobs;
  _Atomic uint64_t write_fails;
  _Atomic uint64_t read_jobs;
};

/* ---- schema ------------------------------------------------------------ */

/* migrations[v - 1] brings a database from version v - 1 to v. Never edit
 * a released step: add a new one and bump AF_STORE_SCHEMA_VERSION. */
static const char *const migrations[AF_STORE_SCHEMA_VERSION] = {
    /* 1: metering ledger + hourly aggregates, breakers, chaos audit. */
    "CREATE TABLE usage_events ("
    "  id INTEGER PRIMARY KEY,"
    "  tenant_id TEXT NOT NULL,"
    "  event_id TEXT NOT NULL,"
    "  ts_ns INTEGER NOT NULL,"
    "  operation INTEGER NOT NULL,"
    "  tier INTEGER NOT NULL,"
    "  units INTEGER NOT NULL,"
    "  tokens INTEGER NOT NULL,"
    "  latency_ms REAL NOT NULL,"
    "  compliance REAL NOT NULL,"
    "  valid INTEGER NOT NULL,"
    "  agent_id TEXT NOT NULL,"
    "  metadata TEXT NOT NULL,"
    "  UNIQUE (tenant_id, event_id));"
    "CREATE INDEX usage_events_by_time ON usage_events (tenant_id, ts_ns);"
    "CREATE TABLE usage_hourly ("
    "  tenant_id TEXT NOT NULL,"
    "  hour INTEGER NOT NULL,"
    "  operation INTEGER NOT NULL,"
    "  tier INTEGER NOT NULL,"
    "  count INTEGER NOT NULL,"
    "  units INTEGER NOT NULL,"
    "  tokens INTEGER NOT NULL,"
    "  invalid INTEGER NOT NULL,"
    "  latency_sum_ms REAL NOT NULL,"
    "  compliance_sum REAL NOT NULL,"
    "  PRIMARY KEY (tenant_id, hour, operation, tier)) WITHOUT ROWID;"
    "CREATE TABLE breakers ("
    "  name TEXT PRIMARY KEY,"
    "  fail_max INTEGER NOT NULL,"
    "  reset_timeout_ms INTEGER NOT NULL,"
    "  half_open_max_calls INTEGER NOT NULL,"
    "  success_threshold INTEGER NOT NULL,"
    "  weight REAL NOT NULL,"
    "  description TEXT NOT NULL,"
    "  excluded_errors TEXT NOT NULL," /* one per line */
    "  service TEXT NOT NULL,"
    "  forced INTEGER NOT NULL DEFAULT 0," /* af_breaker_state_t or 0 */
    "  forced_reason TEXT NOT NULL DEFAULT '',"
    "  registered_ns INTEGER NOT NULL);"
    "CREATE TABLE chaos_audit ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  wall_ns INTEGER NOT NULL,"
    "  event TEXT NOT NULL," /* activated, deactivated, expired, ... */
    "  scenario TEXT NOT NULL,"
    "  kind TEXT NOT NULL,"
    "  target TEXT NOT NULL,"
    "  actor TEXT NOT NULL,"
    "  reason TEXT NOT NULL,"
    "  detail TEXT NOT NULL);"
    "CREATE TABLE chaos_active ("
    "  scenario TEXT PRIMARY KEY,"
    "  kind TEXT NOT NULL,"
    "  target TEXT NOT NULL,"
    "  started_ns INTEGER NOT NULL,"
    "  expires_ns INTEGER NOT NULL,"
    "  actor TEXT NOT NULL);",
    /* 2: recovery policies and the history of finished recoveries. */
    "CREATE TABLE recovery_policies ("
    "  service TEXT PRIMARY KEY,"
    "  strategy INTEGER NOT NULL,"
    "  max_retry_attempts INTEGER NOT NULL,"
    "  backoff_multiplier REAL NOT NULL,"
    "  initial_delay_ms INTEGER NOT NULL,"
    "  max_delay_ms INTEGER NOT NULL,"
    "  jitter INTEGER NOT NULL,"
    "  probe INTEGER NOT NULL,"
    "  probe_target TEXT NOT NULL,"
    "  probe_service TEXT NOT NULL,"
    "  probe_timeout_ms INTEGER NOT NULL,"
    "  updated_ns INTEGER NOT NULL);"
    "CREATE TABLE recovery_history ("
    "  id INTEGER PRIMARY KEY,"
    "  task_id INTEGER NOT NULL,"
    "  service TEXT NOT NULL,"
    "  state INTEGER NOT NULL," /* af_recovery_state_t */
    "  attempts INTEGER NOT NULL,"
    "  duration_ms INTEGER NOT NULL,"
    "  finished_ns INTEGER NOT NULL,"
    "  message TEXT NOT NULL,"
    "  UNIQUE (task_id, finished_ns));",
    /* 3: who did what to recoveries (the chaos audit's twin). */
    "CREATE TABLE recovery_audit ("
    "  seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    "  wall_ns INTEGER NOT NULL,"
    "  action TEXT NOT NULL," /* schedule, execute, cancel, approve, policy */
    "  service TEXT NOT NULL,"
    "  actor TEXT NOT NULL,"
    "  detail TEXT NOT NULL);",
};

/* ---- connections ------------------------------------------------------- */

sqlite3 *af_store_db(af_store_conn_t *c) { return c->db; }

/* "(errno text)" when SQLite saw an OS error, else "". */
static void os_reason(sqlite3 *db, char *buf, size_t n)
{
  int e = sqlite3_system_errno(db);
  if (e != 0) {
    snprintf(buf, n, " (%s)", strerror(e));
  } else {
    buf[0] = '\0';
  }
}

af_status_t af_store_fail(af_store_conn_t *c, af_error_t *err, const char *what)
{
  char os[96];
  os_reason(c->db, os, sizeof os);
  return af_error_set(err, AF_EIO, "%s: %s%s", what, sqlite3_errmsg(c->db), os);
}

sqlite3_stmt *af_store_stmt(af_store_conn_t *c, const char *sql,
                            af_error_t *err)
{
  for (size_t i = 0; i < c->n_cache; i++) {
    if (c->cache[i].sql == sql) {
      sqlite3_reset(c->cache[i].st);
      sqlite3_clear_bindings(c->cache[i].st);
      return c->cache[i].st;
    }
  }
  sqlite3_stmt *st = NULL;
  unsigned flags = c->n_cache < STMT_CACHE_MAX ? SQLITE_PREPARE_PERSISTENT : 0;
  if (sqlite3_prepare_v3(c->db, sql, -1, flags, &st, NULL) != SQLITE_OK) {
    af_store_fail(c, err, "prepare");
    return NULL;
  }
  if (c->n_cache < STMT_CACHE_MAX) {
    c->cache[c->n_cache].sql = sql;
    c->cache[c->n_cache].st = st;
    c->n_cache++;
  }
  /* Past the cache size the statement leaks until close: never the case
   * with the fixed set of statements afd uses (checked in tests). */
  return st;
}

af_status_t af_store_exec(af_store_conn_t *c, const char *sql, af_error_t *err)
{
  char *msg = NULL;
  if (sqlite3_exec(c->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    char os[96];
    os_reason(c->db, os, sizeof os);
    af_error_set(err, AF_EIO, "%s%s", msg != NULL ? msg : sqlite3_errmsg(c->db),
                 os);
    sqlite3_free(msg);
    return AF_EIO;
  }
  return AF_OK;
}

static void conn_close(af_store_conn_t *c)
{
  for (size_t i = 0; i < c->n_cache; i++) {
    sqlite3_finalize(c->cache[i].st);
  }
  c->n_cache = 0;
  if (c->db != NULL) {
    sqlite3_close_v2(c->db);
    c->db = NULL;
  }
}

static af_status_t conn_open(af_store_t *s, af_store_conn_t *c, bool rw,
                             af_error_t *err)
{
  int flags =
      SQLITE_OPEN_NOMUTEX |
      (rw ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY);
  int rc = sqlite3_open_v2(s->path, &c->db, flags, NULL);
  if (rc != SQLITE_OK) {
    af_error_set(err, AF_EIO, "cannot open store %s: %s", s->path,
                 c->db != NULL ? sqlite3_errmsg(c->db) : sqlite3_errstr(rc));
    conn_close(c);
    return AF_EIO;
  }
  sqlite3_extended_result_codes(c->db, 1);
  sqlite3_busy_timeout(c->db, BUSY_TIMEOUT_MS);
  return AF_OK;
}

/* Owner thread, before the threads start: WAL, durability, schema. */
static af_status_t prepare_db(af_store_t *s, af_store_conn_t *c,
                              af_error_t *err)
{
  af_error_t e;
  af_error_clear(&e);
  sqlite3_stmt *st = NULL;
  const char *mode = NULL;
  if (sqlite3_prepare_v2(c->db, "PRAGMA journal_mode=WAL", -1, &st, NULL) ==
          SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    mode = (const char *)sqlite3_column_text(st, 0);
  }
  if (mode == NULL || strcmp(mode, "wal") != 0) {
    af_error_set(err, AF_EIO, "cannot open store %s: %s", s->path,
                 mode != NULL ? "WAL mode refused" : sqlite3_errmsg(c->db));
    sqlite3_finalize(st);
    return AF_EIO;
  }
  sqlite3_finalize(st);
  if (af_store_exec(c, "PRAGMA synchronous=FULL", &e) != AF_OK) {
    return af_error_set(err, AF_EIO, "cannot open store %s: %s", s->path,
                        e.message);
  }

  int version = -1;
  if (sqlite3_prepare_v2(c->db, "PRAGMA user_version", -1, &st, NULL) ==
          SQLITE_OK &&
      sqlite3_step(st) == SQLITE_ROW) {
    version = sqlite3_column_int(st, 0);
  }
  sqlite3_finalize(st);
  if (version < 0) {
    return af_error_set(err, AF_EIO, "cannot open store %s: %s", s->path,
                        sqlite3_errmsg(c->db));
  }
  if (version > AF_STORE_SCHEMA_VERSION) {
    return af_error_set(err, AF_EIO,
                        "cannot open store %s: schema version %d is newer "
                        "than this afd (%d)",
                        s->path, version, AF_STORE_SCHEMA_VERSION);
  }
  if (version == AF_STORE_SCHEMA_VERSION) {
    return AF_OK;
  }
  af_status_t rc = af_store_exec(c, "BEGIN IMMEDIATE", &e);
  for (int v = version + 1; rc == AF_OK && v <= AF_STORE_SCHEMA_VERSION; v++) {
    rc = af_store_exec(c, migrations[v - 1], &e);
  }
  if (rc == AF_OK) {
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version=%d",
             AF_STORE_SCHEMA_VERSION);
    rc = af_store_exec(c, sql, &e);
  }
  if (rc == AF_OK) {
    rc = af_store_exec(c, "COMMIT", &e);
  }
  if (rc != AF_OK) {
    af_error_t ignored;
    af_store_exec(c, "ROLLBACK", &ignored);
    return af_error_set(err, AF_EIO,
                        "cannot migrate store %s from version %d to %d: %s",
                        s->path, version, AF_STORE_SCHEMA_VERSION, e.message);
  }
  af_log(AF_LOG_INFO, "store %s: schema version %d -> %d", s->path, version,
         AF_STORE_SCHEMA_VERSION);
  return AF_OK;
}

/* ---- threads ----------------------------------------------------------- */

/* Takes up to max jobs off w's queue; waits while it is empty and w is not
 * stopping. NULL once stopped and empty. */
static job_t *take_jobs(worker_t *w, size_t max)
{
  pthread_mutex_lock(&w->mu);
  while (w->head == NULL && !w->stop) {
    pthread_cond_wait(&w->cv, &w->mu);
  }
  job_t *first = w->head;
  job_t *last = first;
  for (size_t n = 1; last != NULL && n < max && last->next != NULL; n++) {
    last = last->next;
  }
  if (last != NULL) {
    w->head = last->next;
    if (w->head == NULL) {
      w->tail = NULL;
    }
    last->next = NULL;
  }
  pthread_mutex_unlock(&w->mu);
  return first;
}

typedef struct {
  af_status_t st;
  af_error_t err;
} result_t;

static void run_group(worker_t *w, job_t *jobs)
{
  af_store_t *s = w->store;
  af_store_conn_t *c = &w->conn;
  size_t n = 0;
  for (job_t *j = jobs; j != NULL; j = j->next) {
    n++;
  }
  result_t stack_res[16];
  result_t *res = n <= 16 ? stack_res : af_calloc(n, sizeof(*res));
  af_error_t gerr;
  af_error_clear(&gerr);
  af_status_t group = AF_OK;
  if (res == NULL) {
    group = af_error_set(&gerr, AF_ENOMEM, "out of memory");
  } else {
    group = af_store_exec(c, "BEGIN IMMEDIATE", &gerr);
  }
  size_t i = 0;
  size_t ok = 0;
  for (job_t *j = jobs; group == AF_OK && j != NULL; j = j->next, i++) {
    af_error_clear(&res[i].err);
    res[i].st = af_store_exec(c, "SAVEPOINT job", &res[i].err);
    if (res[i].st == AF_OK) {
      res[i].st = j->fn(c, j->ctx, &res[i].err);
      if (res[i].st == AF_OK && res[i].err.code != AF_OK) {
        res[i].st = res[i].err.code;
      }
      if (res[i].st != AF_OK) {
        af_error_t ignored;
        af_store_exec(c, "ROLLBACK TO job", &ignored);
      }
      af_error_t e2;
      if (af_store_exec(c, "RELEASE job", &e2) != AF_OK && res[i].st == AF_OK) {
        res[i].st = AF_EIO;
        res[i].err = e2;
      }
    }
    if (res[i].st == AF_OK) {
      ok++;
    }
  }
  if (group == AF_OK) {
    group = af_store_exec(c, "COMMIT", &gerr);
    if (group != AF_OK) {
      af_error_t ignored;
      af_store_exec(c, "ROLLBACK", &ignored);
      af_log(AF_LOG_ERROR, "store %s: commit of %zu job(s) failed: %s", s->path,
             n, gerr.message);
    } else {
      atomic_fetch_add(&s->commits, 1);
    }
  } else {
    af_log(AF_LOG_ERROR, "store %s: cannot begin a write: %s", s->path,
           gerr.message);
  }
  if (group == AF_OK) {
    atomic_fetch_add(&s->write_jobs, ok);
    atomic_fetch_add(&s->write_fails, n - ok);
  } else {
    atomic_fetch_add(&s->write_fails, n);
  }

  i = 0;
  while (jobs != NULL) {
    job_t *next = jobs->next;
    if (jobs->done != NULL) {
      if (group != AF_OK) {
        jobs->done(group, &gerr, jobs->ctx);
      } else {
        jobs->done(res[i].st, &res[i].err, jobs->ctx);
      }
    }
    af_free(jobs);
    jobs = next;
    i++;
  }
  if (res != stack_res) {
    af_free(res);
  }
}

static void run_read(worker_t *w, job_t *j)
{
  af_error_t err;
  af_error_clear(&err);
  af_status_t st = j->fn(&w->conn, j->ctx, &err);
  atomic_fetch_add(&w->store->read_jobs, 1);
  if (j->done != NULL) {
    j->done(st, &err, j->ctx);
  }
  af_free(j);
}

static void *worker_main(void *arg)
{
  worker_t *w = arg;
  job_t *jobs;
  while ((jobs = take_jobs(w, w->writer ? AF_STORE_GROUP_MAX : 1)) != NULL) {
    if (w->writer) {
      run_group(w, jobs);
    } else {
      run_read(w, jobs);
    }
  }
  return NULL;
}

static af_status_t submit(worker_t *w, af_store_job_fn fn,
                          af_store_done_fn done, void *ctx)
{
  if (fn == NULL) {
    return AF_EINVAL;
  }
  job_t *j = af_calloc(1, sizeof(*j));
  if (j == NULL) {
    return AF_ENOMEM;
  }
  j->fn = fn;
  j->done = done;
  j->ctx = ctx;
  pthread_mutex_lock(&w->mu);
  if (w->stop || !w->started) {
    pthread_mutex_unlock(&w->mu);
    af_free(j);
    return AF_ESHUTDOWN;
  }
  if (w->tail != NULL) {
    w->tail->next = j;
  } else {
    w->head = j;
  }
  w->tail = j;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  return AF_OK;
}

af_status_t af_store_write(af_store_t *s, af_store_job_fn fn,
                           af_store_done_fn done, void *ctx)
{
  return s != NULL ? submit(&s->writer, fn, done, ctx) : AF_EINVAL;
}

af_status_t af_store_read(af_store_t *s, af_store_job_fn fn,
                          af_store_done_fn done, void *ctx)
{
  return s != NULL ? submit(&s->reader, fn, done, ctx) : AF_EINVAL;
}

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool done;
  af_status_t st;
  af_error_t err;
} waiter_t;

typedef struct {
  af_store_job_fn fn;
  void *ctx;
  waiter_t *w;
} wait_job_t;

static af_status_t wait_run(af_store_conn_t *c, void *ctx, af_error_t *err)
{
  wait_job_t *wj = ctx;
  return wj->fn(c, wj->ctx, err);
}

static void wait_done(af_status_t st, const af_error_t *err, void *ctx)
{
  waiter_t *w = ((wait_job_t *)ctx)->w;
  pthread_mutex_lock(&w->mu);
  w->st = st;
  if (err != NULL) {
    w->err = *err;
  }
  w->done = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
}

static af_status_t submit_wait(worker_t *w, af_store_job_fn fn, void *ctx,
                               af_error_t *err)
{
  waiter_t wt;
  memset(&wt, 0, sizeof(wt));
  pthread_mutex_init(&wt.mu, NULL);
  pthread_cond_init(&wt.cv, NULL);
  wait_job_t wj = {fn, ctx, &wt};
  af_status_t st = submit(w, wait_run, wait_done, &wj);
  if (st == AF_OK) {
    pthread_mutex_lock(&wt.mu);
    while (!wt.done) {
      pthread_cond_wait(&wt.cv, &wt.mu);
    }
    pthread_mutex_unlock(&wt.mu);
    st = wt.st;
    if (err != NULL) {
      *err = wt.err;
    }
  } else {
    af_error_set(err, st, "store is %s",
                 st == AF_ESHUTDOWN ? "shut down" : "out of memory");
  }
  pthread_cond_destroy(&wt.cv);
  pthread_mutex_destroy(&wt.mu);
  return st;
}

af_status_t af_store_write_wait(af_store_t *s, af_store_job_fn fn, void *ctx,
                                af_error_t *err)
{
  if (s == NULL) {
    return af_error_set(err, AF_EINVAL, "no store");
  }
  return submit_wait(&s->writer, fn, ctx, err);
}

af_status_t af_store_read_wait(af_store_t *s, af_store_job_fn fn, void *ctx,
                               af_error_t *err)
{
  if (s == NULL) {
    return af_error_set(err, AF_EINVAL, "no store");
  }
  return submit_wait(&s->reader, fn, ctx, err);
}

/* ---- lifecycle --------------------------------------------------------- */

/* mkdir -p */
static af_status_t make_dirs(const char *dir, af_error_t *err)
{
  char buf[4096];
  size_t len = strlen(dir);
  if (len == 0 || len >= sizeof buf) {
    return af_error_set(err, AF_EINVAL, "data directory must be 1-%zu bytes",
                        sizeof buf - 1);
  }
  memcpy(buf, dir, len + 1);
  for (size_t i = 1; i <= len; i++) {
    if (buf[i] == '/' || buf[i] == '\0') {
      char saved = buf[i];
      buf[i] = '\0';
      if (mkdir(buf, 0750) != 0 && errno != EEXIST) {
        return af_error_set(err, AF_EIO, "cannot create data directory %s: %s",
                            buf, strerror(errno));
      }
      buf[i] = saved;
    }
  }
  struct stat sb;
  if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode)) {
    return af_error_set(err, AF_EIO, "data directory %s is not a directory",
                        dir);
  }
  return AF_OK;
}

static af_status_t worker_init(af_store_t *s, worker_t *w, bool writer)
{
  w->store = s;
  w->writer = writer;
  if (pthread_mutex_init(&w->mu, NULL) != 0) {
    return AF_ENOMEM;
  }
  if (pthread_cond_init(&w->cv, NULL) != 0) {
    pthread_mutex_destroy(&w->mu);
    return AF_ENOMEM;
  }
  return AF_OK;
}

static void worker_stop(worker_t *w)
{
  pthread_mutex_lock(&w->mu);
  bool join = w->started && !w->stop;
  w->stop = true;
  pthread_cond_signal(&w->cv);
  pthread_mutex_unlock(&w->mu);
  if (join) {
    pthread_join(w->thread, NULL);
  }
}

af_status_t af_store_open(af_store_t **out, const char *data_dir,
                          af_error_t *err)
{
  if (out == NULL || data_dir == NULL) {
    return af_error_set(err, AF_EINVAL, "out and data_dir are required");
  }
  af_status_t st = make_dirs(data_dir, err);
  if (st != AF_OK) {
    return st;
  }
  af_store_t *s = af_calloc(1, sizeof(*s));
  if (s == NULL) {
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  int n =
      snprintf(s->path, sizeof s->path, "%s/%s", data_dir, AF_STORE_DB_NAME);
  if (n < 0 || (size_t)n >= sizeof s->path) {
    af_free(s);
    return af_error_set(err, AF_EINVAL, "data directory path is too long");
  }
  if (worker_init(s, &s->writer, true) != AF_OK) {
    af_free(s);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  if (worker_init(s, &s->reader, false) != AF_OK) {
    pthread_cond_destroy(&s->writer.cv);
    pthread_mutex_destroy(&s->writer.mu);
    af_free(s);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  st = conn_open(s, &s->writer.conn, true, err);
  if (st == AF_OK) {
    st = prepare_db(s, &s->writer.conn, err);
  }
  if (st == AF_OK) {
    st = conn_open(s, &s->reader.conn, false, err);
  }
  if (st == AF_OK) {
    if (pthread_create(&s->writer.thread, NULL, worker_main, &s->writer) != 0) {
      st = af_error_set(err, AF_EINTERNAL, "cannot start the store writer");
    } else {
      s->writer.started = true;
    }
  }
  if (st == AF_OK) {
    if (pthread_create(&s->reader.thread, NULL, worker_main, &s->reader) != 0) {
      st = af_error_set(err, AF_EINTERNAL, "cannot start the store reader");
    } else {
      s->reader.started = true;
    }
  }
  if (st != AF_OK) {
    af_store_destroy(s);
    return st;
  }
  *out = s;
  return AF_OK;
}

const char *af_store_path(const af_store_t *s)
{
  return s != NULL ? s->path : "";
}

void af_store_stats(af_store_t *s, af_store_stats_t *out)
{
  memset(out, 0, sizeof(*out));
  if (s == NULL) {
    return;
  }
  out->commits = atomic_load(&s->commits);
  out->write_jobs = atomic_load(&s->write_jobs);
  out->write_fails = atomic_load(&s->write_fails);
  out->read_jobs = atomic_load(&s->read_jobs);
}

void af_store_shutdown(af_store_t *s)
{
  if (s == NULL || s->shut) {
    return;
  }
  s->shut = true;
  /* The writer first: reads queued meanwhile still see its last commit. */
  worker_stop(&s->writer);
  worker_stop(&s->reader);
  conn_close(&s->reader.conn);
  conn_close(&s->writer.conn);
}

void af_store_destroy(af_store_t *s)
{
  if (s == NULL) {
    return;
  }
  af_store_shutdown(s);
  pthread_cond_destroy(&s->reader.cv);
  pthread_mutex_destroy(&s->reader.mu);
  pthread_cond_destroy(&s->writer.cv);
  pthread_mutex_destroy(&s->writer.mu);
  af_free(s);
}
