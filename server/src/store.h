/*
 * store.h - afd's durable state: one SQLite database (WAL) in the data
 * directory, worked on only by the store's own threads.
 *
 * Thread-safety: af_store_open / af_store_shutdown / af_store_destroy are
 * single-owner (the app's owner thread). af_store_write, af_store_read and
 * their _wait forms are thread-safe and may be called from any thread; the
 * non-waiting forms never block (a mutex taken only to append to a list),
 * so CQ threads and engine listeners may use them. The _wait forms block
 * until the job ran: never call them from a CQ thread or from a store
 * thread.
 *
 * Threads and connections: one writer thread with its own read-write
 * connection and one reader thread with its own read-only connection
 * (WAL lets readers run while the writer commits). No SQLite call is made
 * on any other thread once af_store_open returned.
 *
 * Group commit: the writer takes every job queued so far (up to
 * AF_STORE_GROUP_MAX) and runs them in one transaction, each inside its own
 * SAVEPOINT: a job that fails is rolled back alone and reported to its own
 * done callback; the rest commit together, with one fsync
 * (synchronous=FULL). done callbacks run on the writer thread after the
 * COMMIT returned, so "done with AF_OK" means "on disk".
 *
 * Schema: versioned with PRAGMA user_version; af_store_open applies the
 * missing migrations in one transaction and refuses a database written by
 * a newer afd.
 */
#ifndef AF_STORE_H
#define AF_STORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Jobs taken into one write transaction at most. */
#define AF_STORE_GROUP_MAX 256
/* File name of the database inside the data directory. */
#define AF_STORE_DB_NAME "afd.db"
/* The schema version this afd writes. */
#define AF_STORE_SCHEMA_VERSION 3

typedef struct af_store af_store_t;
/* A connection as seen by a job: the db and a prepared-statement cache. */
typedef struct af_store_conn af_store_conn_t;

/* Creates data_dir (and its parents) if needed, opens
 * data_dir/AF_STORE_DB_NAME, switches it to WAL, migrates the schema and
 * starts the writer and reader threads. data_dir borrowed. Returns AF_OK
 * and *out (owned: af_store_shutdown then af_store_destroy), or AF_EIO
 * with err saying what failed and where ("cannot open store
 * ./afd-data/afd.db: file is not a database"), AF_ENOMEM. On failure *out
 * is untouched and nothing leaks. */
af_status_t af_store_open(af_store_t **out, const char *data_dir,
                          af_error_t *err);

/* Full path of the database file, owned by the store. */
const char *af_store_path(const af_store_t *s);

/* A job: runs on a store thread with the connection (borrowed for the
 * call). Write jobs run inside a transaction; returning an error (with err
 * set) rolls back exactly this job's changes. */
typedef af_status_t (*af_store_job_fn)(af_store_conn_t *c, void *ctx,
                                       af_error_t *err);
/* Called once per accepted job on the store thread after it ran (write
 * jobs: after the commit). st is the job's result, or the COMMIT's error;
 * err (borrowed) has the message. May be NULL. */
typedef void (*af_store_done_fn)(af_status_t st, const af_error_t *err,
                                 void *ctx);

/* Queues a write job. ctx retained until done ran (or, without done,
 * until fn ran). Returns AF_OK; AF_ESHUTDOWN after af_store_shutdown
 * began (fn and done are then never called); AF_ENOMEM. Never blocks. */
af_status_t af_store_write(af_store_t *s, af_store_job_fn fn,
                           af_store_done_fn done, void *ctx);
/* Same on the reader thread (no transaction across jobs). */
af_status_t af_store_read(af_store_t *s, af_store_job_fn fn,
                          af_store_done_fn done, void *ctx);

/* Queue and wait: the job's status (commit included for writes), message
 * in err. Not on a CQ thread or a store thread. */
af_status_t af_store_write_wait(af_store_t *s, af_store_job_fn fn, void *ctx,
                                af_error_t *err);
af_status_t af_store_read_wait(af_store_t *s, af_store_job_fn fn, void *ctx,
                               af_error_t *err);

/* Inside a job: the connection's db handle. */
sqlite3 *af_store_db(af_store_conn_t *c);

/* Inside a job: a prepared statement for sql, cached per connection by the
 * address of sql (pass a string literal or another static string), reset
 * and with its bindings cleared. NULL on error, with err set. */
sqlite3_stmt *af_store_stmt(af_store_conn_t *c, const char *sql,
                            af_error_t *err);

/* Inside a job: runs sql (no results), AF_OK or AF_EIO with err. */
af_status_t af_store_exec(af_store_conn_t *c, const char *sql, af_error_t *err);

/* Inside a job: AF_EIO with "what: <sqlite message>" in err (returns
 * AF_EIO). */
af_status_t af_store_fail(af_store_conn_t *c, af_error_t *err,
                          const char *what);

/* Counters since open. Thread-safe. */
typedef struct {
  uint64_t commits;     /* write transactions committed */
  uint64_t write_jobs;  /* write jobs that committed */
  uint64_t write_fails; /* write jobs that failed (job or commit error) */
  uint64_t read_jobs;
} af_store_stats_t;
void af_store_stats(af_store_t *s, af_store_stats_t *out);

/* Stops accepting jobs, runs every job already queued (a final group
 * commit), joins the threads and closes the connections (a WAL checkpoint
 * happens on close). Idempotent. Owner thread. */
void af_store_shutdown(af_store_t *s);

/* Shuts down if needed and frees. NULL is a no-op. */
void af_store_destroy(af_store_t *s);

#ifdef __cplusplus
}
#endif
#endif /* AF_STORE_H */
