/*
 * server.c - the afd RPC framework over the gRPC core C API.
 *
 * Owns: the grpc_server, two completion queues created for `next`, the
 * registered methods with their request pools, every per-call state
 * (struct af_rpc / struct af_stream), the CQ worker threads and one
 * dispatch thread.
 *
 * Two queues: `cq` gets every new-call notification and the batches of
 * unary (and unknown-method) calls, and its workers do all the polling;
 * `stream_cq` (non-polling), drained by a thread of its own, gets the
 * batches of every streaming call. Why: libgrpc as
 * Debian builds it (1.51, without NDEBUG) checks each completion with a
 * linear scan over every tag outstanding on its queue (cq_check_tag), and
 * each open stream keeps its t_close outstanding for its whole life. On a
 * single queue 10k idle WatchHealth streams made every unary call cost
 * about 6 us more CPU (9.6 -> 15.8 us, tests/bench); on their own queue
 * they only slow the streams' own completions.
 *
 * Tags: every batch completes on a tag embedded in the call state
 * ({fn, rpc}); a worker just calls tag->fn(rpc, ok). No type switch, no
 * thread per call. Each call has up to four tags: t_new (request matched),
 * t_close (RECV_CLOSE_ON_SERVER, started at once, completes when the RPC is
 * over: cancel, deadline, or after our status), t_recv (RECV_MESSAGE) and
 * t_main (sends and the final status).
 *
 * Unary fast path: a unary call whose handler answers before returning
 * (most of them) needs no separate t_close: RECV_CLOSE_ON_SERVER rides in
 * the final batch (one batch, one completion per call instead of two, about
 * 0.5 us of CPU per call; see tests/bench). For unary calls the close is
 * therefore started lazily: by send_final if it comes first, else right
 * after the handler returns (an answer from another thread later still
 * needs cancellation seen while it waits). `close_started` (under mu) makes
 * sure exactly one of the two starts it.
 *
 * Invariants:
 *  - refs counts: one per batch in flight, one for the "answer" (held by
 *    the handler until reply/fail, by the framework for streams until the
 *    new-call tag is done), one per dispatch-queue entry, one for the open
 *    streams list, one per af_stream_retain. At zero the state is freed.
 *  - at most one send batch per call in flight: for streams the `sending`
 *    flag is a token; whoever holds it may fill and send, everyone else
 *    marks the stream dirty (latest-wins coalescing).
 *  - srv->live counts allocated call states; shutdown completes when the
 *    shutdown tag arrived and live == 0.
 *
 * Threading: workers block in grpc_completion_queue_next. The dispatch
 * thread runs fills asked for by af_stream_notify (so the engine never
 * runs network code or waits on a client) and scans for heartbeats. Lock
 * order: srv->mu before rpc->mu; no lock is held while calling user code
 * or the gRPC API.
 */
#include "server.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "af/alloc.h"
#include "af/types.h"
#include "log.h"
#include "wire_check.h"

/* Requests posted per method: 1 at start, growing by one each time the
 * method's pool runs dry, up to REQUEST_POOL. Why not REQUEST_POOL for
 * every method at once: libgrpc (Debian, no NDEBUG) scans every tag
 * outstanding on `cq` on each completion, and afd registers about 45
 * methods; 8 requests each were 360 tags, ~4k of afd's ~52k instructions
 * per ReportOutcome (callgrind, tests/bench). Idle methods now hold one. */
#define REQUEST_POOL 8
#define GENERIC_POOL 2
#define MAX_THREADS 64

typedef enum {
  KIND_UNARY,
  KIND_CLIENT_STREAM,
  KIND_SERVER_STREAM,
  KIND_BIDI,
  KIND_GENERIC,
} kind_t;

typedef struct method {
  char *path;
  char *service;
  kind_t kind;
  atomic_int posted;      /* requests outstanding for this method */
  atomic_int pool_target; /* 1..REQUEST_POOL, grows when posted hits 0 */
  const ProtobufCMessageDescriptor *desc;
  void *handle;
  bool hash_checked;
  af_unary_fn unary;
  af_client_msg_fn cs_msg;
  af_client_end_fn cs_end;
  af_stream_start_fn ss_start;
  af_bidi_msg_fn bidi_msg;
  void *ctx;
} method_t;

struct af_rpc;
typedef struct tag {
  void (*fn)(struct af_rpc *rpc, bool ok);
  struct af_rpc *rpc;
} tag_t;

typedef struct md_copy {
  struct md_copy *next;
  char *key;
  char *value;
} md_copy_t;

struct af_rpc {
  af_server_t *srv;
  method_t *m; /* NULL for unknown methods */
  grpc_call *call;
  gpr_timespec deadline;
  grpc_call_details details;
  grpc_metadata_array req_md;
  grpc_byte_buffer *recv_bb;
  grpc_byte_buffer *send_bb;
  atomic_int refs;
  pthread_mutex_t mu;
  tag_t t_new, t_main, t_close, t_recv;
  int close_cancelled; /* written by gRPC */
  atomic_bool closed;
  atomic_bool cancelled;
  /* under mu */
  bool answered;
  bool close_started; /* RECV_CLOSE_ON_SERVER is in some batch */
  bool md_sent;
  bool in_callback;
  bool has_pending;
  grpc_status_code pending_code;
  char *pending_msg;
  md_copy_t *md_copies;
  char *peer;
  char *identity; /* set by the authorizer; NULL = none */
  int role;
  void *user;
  void (*user_free)(void *);
  bool is_stream;
};

struct af_stream {
  struct af_rpc rpc;
  af_stream_fill_fn fill;
  af_stream_done_fn done;
  void *user;
  bool in_start;
  bool producer_set;
  bool failed;
  grpc_status_code fail_code;
  char *fail_msg;
  bool counted;      /* in streams_open */
  bool conn_counted; /* in the per-connection count of its peer */
  /* under rpc.mu */
  bool sending, dirty, queued, want_hb;
  bool finish_req, final_fill_done, status_sent, ended;
  grpc_status_code finish_code;
  char *finish_msg;
  _Atomic uint64_t last_send_ns;
  _Atomic uint64_t seq;
  /* under srv->mu */
  bool in_list;
  struct af_stream *prev, *next; /* open streams list */
  struct af_stream *q_next;      /* dispatch queue */
};

typedef struct hook {
  void (*fn)(void *);
  void *ctx;
} hook_t;

/* Open streams of one connection (keyed by its peer address). */
typedef struct conn_count {
  struct conn_count *next;
  char *peer;
  uint32_t n;
} conn_count_t;

struct af_server {
  char *listen_addr;
  int threads;
  uint32_t max_watchers;
  uint32_t max_watchers_per_conn;
  uint32_t heartbeat_ms;
  char *tls_cert, *tls_key, *tls_client_ca; /* PEM; NULL = plaintext */
  af_authorize_fn authorize;
  void *authorize_ctx;
  char *hash;
  char *hash_prefix;
  uint32_t max_message_bytes;
  uint32_t shutdown_grace_ms;
  const af_clock_t *clock;

  grpc_server *gs;
  grpc_completion_queue *cq;        /* notifications + unary calls */
  grpc_completion_queue *stream_cq; /* batches of streaming calls */
  method_t **methods;
  size_t n_methods;
  hook_t *begin_hooks;
  size_t n_begin_hooks;
  hook_t *destroy_hooks;
  size_t n_destroy_hooks;

  void *health;
  pthread_t *workers;
  int n_workers;
  pthread_t stream_worker;
  bool stream_worker_running;
  pthread_t dispatcher;
  bool dispatcher_running;

  atomic_bool started;
  atomic_bool shutting;
  atomic_bool accepting;
  bool shutdown_done;
  bool grpc_shutdown_called;

  pthread_mutex_t mu;
  pthread_cond_t cv;
  size_t live;
  bool shutdown_tag_done;
  bool dispatch_stop;
  struct af_stream *streams;
  conn_count_t *conns; /* connections with open streams */
  struct af_stream *q_head, *q_tail;
  tag_t t_shutdown;

  _Atomic uint64_t calls_started;
  _Atomic uint64_t calls_finished;
  _Atomic uint64_t by_code[17];
  _Atomic uint64_t streams_open;
  _Atomic uint64_t stream_messages;
  _Atomic uint64_t stream_coalesced;
  _Atomic uint64_t unimplemented;
};

/* ------------------------------------------------------------------ */
/* Small helpers                                                      */

static char *vformat(const char *fmt, va_list ap)
{
  char buf[1024];
  vsnprintf(buf, sizeof buf, fmt, ap);
  return af_strdup(buf);
}

static uint64_t now_ns(const af_server_t *srv)
{
  return af_clock_mono_ns(srv->clock);
}

static void cond_deadline(struct timespec *ts, uint64_t ms)
{
  clock_gettime(CLOCK_MONOTONIC, ts);
  ts->tv_sec += (time_t)(ms / 1000);
  ts->tv_nsec += (long)((ms % 1000) * 1000000);
  if (ts->tv_nsec >= 1000000000L) {
    ts->tv_sec += 1;
    ts->tv_nsec -= 1000000000L;
  }
}

static bool ts_before_now(const struct timespec *ts)
{
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return now.tv_sec > ts->tv_sec ||
         (now.tv_sec == ts->tv_sec && now.tv_nsec >= ts->tv_nsec);
}

static struct af_stream *as_stream(af_rpc_t *rpc)
{
  return rpc->is_stream ? (struct af_stream *)rpc : NULL;
}

static void count_code(af_server_t *srv, grpc_status_code code)
{
  unsigned c = (unsigned)code;
  if (c < 17)
    atomic_fetch_add(&srv->by_code[c], 1);
}

/* ------------------------------------------------------------------ */
/* Call state lifetime                                                */

static void rpc_ref(af_rpc_t *rpc) { atomic_fetch_add(&rpc->refs, 1); }

static void rpc_free(af_rpc_t *rpc)
{
  af_server_t *srv = rpc->srv;
  if (rpc->user_free)
    rpc->user_free(rpc->user);
  grpc_metadata_array_destroy(&rpc->req_md);
  grpc_call_details_destroy(&rpc->details);
  if (rpc->recv_bb)
    grpc_byte_buffer_destroy(rpc->recv_bb);
  if (rpc->send_bb)
    grpc_byte_buffer_destroy(rpc->send_bb);
  if (rpc->call) {
    grpc_call_unref(rpc->call);
    atomic_fetch_add(&srv->calls_finished, 1);
  }
  while (rpc->md_copies) {
    md_copy_t *n = rpc->md_copies->next;
    af_free(rpc->md_copies->key);
    af_free(rpc->md_copies->value);
    af_free(rpc->md_copies);
    rpc->md_copies = n;
  }
  if (rpc->peer)
    gpr_free(rpc->peer);
  af_free(rpc->identity);
  af_free(rpc->pending_msg);
  struct af_stream *st = as_stream(rpc);
  if (st) {
    af_free(st->fail_msg);
    af_free(st->finish_msg);
  }
  pthread_mutex_destroy(&rpc->mu);
  af_free(rpc);
  pthread_mutex_lock(&srv->mu);
  srv->live--;
  if (srv->live == 0)
    pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
}

static void rpc_unref(af_rpc_t *rpc)
{
  if (atomic_fetch_sub(&rpc->refs, 1) == 1)
    rpc_free(rpc);
}

/* Starts a batch on tag (taking a ref that the tag's fn drops). If gRPC
 * refuses the batch the tag's fn runs at once with ok=false. */
static void start_batch(af_rpc_t *rpc, tag_t *t, const grpc_op *ops, size_t n)
{
  rpc_ref(rpc);
  grpc_call_error e = grpc_call_start_batch(rpc->call, ops, n, t, NULL);
  if (e != GRPC_CALL_OK) {
    af_log(AF_LOG_ERROR, "grpc_call_start_batch failed (%d) on %s", (int)e,
           rpc->m ? rpc->m->path : "unknown method");
    t->fn(rpc, false);
  }
}

/* ------------------------------------------------------------------ */
/* Codec                                                              */

static grpc_byte_buffer *pack(const ProtobufCMessage *msg)
{
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* Returns the decoded message (free with protobuf_c_message_free_unpacked)
 * or NULL with why[] filled: bytes protobuf-c cannot decode, or a string
 * field that is not valid UTF-8 or holds a NUL (wire_check.h). */
static ProtobufCMessage *unpack(const ProtobufCMessageDescriptor *desc,
                                grpc_byte_buffer *bb, char *why, size_t n)
{
  if (!bb) {
    snprintf(why, n, "malformed request: missing message");
    return NULL;
  }
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb)) {
    snprintf(why, n, "malformed request: cannot read message");
    return NULL;
  }
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  ProtobufCMessage *m = protobuf_c_message_unpack(
      desc, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
  if (!m) {
    snprintf(why, n, "malformed request: cannot decode %s", desc->name);
  } else if (!af_wire_strings_valid(desc, GRPC_SLICE_START_PTR(s),
                                    GRPC_SLICE_LENGTH(s), why, n)) {
    protobuf_c_message_free_unpacked(m, NULL);
    m = NULL;
  }
  grpc_slice_unref(s);
  return m;
}

/* ------------------------------------------------------------------ */
/* Final status                                                       */

static void on_final_done(af_rpc_t *rpc, bool ok)
{
  (void)ok;
  rpc_unref(rpc);
}

/* The final batch also carried RECV_CLOSE_ON_SERVER (unary fast path):
 * record what on_close would have. Never a stream. */
static void on_final_and_close_done(af_rpc_t *rpc, bool ok)
{
  (void)ok;
  atomic_store(&rpc->cancelled, rpc->close_cancelled != 0);
  atomic_store(&rpc->closed, true);
  rpc_unref(rpc);
}

/* Sends [initial md] [bb] status on t_main. Takes bb (may be NULL). */
static void send_final(af_rpc_t *rpc, grpc_status_code code, const char *msg,
                       grpc_byte_buffer *bb)
{
  grpc_op ops[4];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  pthread_mutex_lock(&rpc->mu);
  bool need_md = !rpc->md_sent;
  rpc->md_sent = true;
  bool with_close = !rpc->close_started;
  rpc->close_started = true;
  if (rpc->send_bb)
    grpc_byte_buffer_destroy(rpc->send_bb);
  rpc->send_bb = bb;
  pthread_mutex_unlock(&rpc->mu);
  if (need_md) {
    ops[n].op = GRPC_OP_SEND_INITIAL_METADATA;
    n++;
  }
  if (bb) {
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n].data.send_message.send_message = bb;
    n++;
  }
  grpc_slice details = grpc_slice_from_copied_string(msg ? msg : "");
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = code;
  ops[n].data.send_status_from_server.status_details = &details;
  n++;
  if (with_close) {
    ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
    ops[n].data.recv_close_on_server.cancelled = &rpc->close_cancelled;
    n++;
  }
  count_code(rpc->srv, code);
  rpc->t_main.fn = with_close ? on_final_and_close_done : on_final_done;
  start_batch(rpc, &rpc->t_main, ops, n);
  grpc_slice_unref(details);
  if (code != GRPC_STATUS_OK)
    af_log(AF_LOG_DEBUG, "%s -> status %d: %s",
           rpc->m ? rpc->m->path : "unknown method", (int)code, msg ? msg : "");
}

static void on_close(af_rpc_t *rpc, bool ok);

static void start_close(af_rpc_t *rpc)
{
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
  op.data.recv_close_on_server.cancelled = &rpc->close_cancelled;
  rpc->t_close.fn = on_close;
  start_batch(rpc, &rpc->t_close, &op, 1);
}

/* Starts t_close unless a batch already carries RECV_CLOSE_ON_SERVER. */
static void ensure_close(af_rpc_t *rpc)
{
  pthread_mutex_lock(&rpc->mu);
  bool start = !rpc->close_started;
  rpc->close_started = true;
  pthread_mutex_unlock(&rpc->mu);
  if (start)
    start_close(rpc);
}

/* ------------------------------------------------------------------ */
/* Unary, client-stream, bidi answers                                 */

void af_rpc_reply(af_rpc_t *rpc, const ProtobufCMessage *resp)
{
  if (!rpc)
    return;
  pthread_mutex_lock(&rpc->mu);
  if (rpc->answered) {
    pthread_mutex_unlock(&rpc->mu);
    return;
  }
  rpc->answered = true;
  pthread_mutex_unlock(&rpc->mu);
  if (resp) {
    size_t n = protobuf_c_message_get_packed_size(resp);
    if (n > rpc->srv->max_message_bytes)
      send_final(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "response too large",
                 NULL);
    else
      send_final(rpc, GRPC_STATUS_OK, "", pack(resp));
  } else {
    send_final(rpc, GRPC_STATUS_OK, "", NULL);
  }
  rpc_unref(rpc);
}

void af_rpc_failv(af_rpc_t *rpc, grpc_status_code code, const char *fmt,
                  va_list ap)
{
  if (!rpc)
    return;
  char *msg = vformat(fmt ? fmt : "", ap);
  if (code == GRPC_STATUS_OK)
    code = GRPC_STATUS_UNKNOWN;
  pthread_mutex_lock(&rpc->mu);
  if (rpc->answered) {
    pthread_mutex_unlock(&rpc->mu);
    af_free(msg);
    return;
  }
  if (rpc->in_callback) {
    if (!rpc->has_pending) {
      rpc->has_pending = true;
      rpc->pending_code = code;
      rpc->pending_msg = msg;
      msg = NULL;
    }
    pthread_mutex_unlock(&rpc->mu);
    af_free(msg);
    return;
  }
  rpc->answered = true;
  pthread_mutex_unlock(&rpc->mu);
  send_final(rpc, code, msg ? msg : "out of memory", NULL);
  af_free(msg);
  rpc_unref(rpc);
}

void af_rpc_fail(af_rpc_t *rpc, grpc_status_code code, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  af_rpc_failv(rpc, code, fmt, ap);
  va_end(ap);
}

/* Fails from framework context (the framework holds the answer ref). */
static void fail_now(af_rpc_t *rpc, grpc_status_code code, const char *msg)
{
  pthread_mutex_lock(&rpc->mu);
  bool already = rpc->answered;
  rpc->answered = true;
  pthread_mutex_unlock(&rpc->mu);
  if (!already)
    send_final(rpc, code, msg, NULL);
  rpc_unref(rpc);
}

af_status_t af_rpc_send(af_rpc_t *rpc, const ProtobufCMessage *resp)
{
  if (!rpc || !resp || !rpc->m || rpc->m->kind != KIND_BIDI)
    return AF_EINVAL;
  pthread_mutex_lock(&rpc->mu);
  if (rpc->send_bb || !rpc->in_callback || rpc->answered) {
    pthread_mutex_unlock(&rpc->mu);
    return AF_ESTATE;
  }
  pthread_mutex_unlock(&rpc->mu);
  grpc_byte_buffer *bb = pack(resp);
  pthread_mutex_lock(&rpc->mu);
  rpc->send_bb = bb;
  pthread_mutex_unlock(&rpc->mu);
  return AF_OK;
}

const char *af_rpc_metadata(af_rpc_t *rpc, const char *key)
{
  if (!rpc || !key)
    return NULL;
  size_t klen = strlen(key);
  const char *out = NULL;
  pthread_mutex_lock(&rpc->mu);
  for (md_copy_t *c = rpc->md_copies; c; c = c->next)
    if (strcmp(c->key, key) == 0) {
      out = c->value;
      goto done;
    }
  for (size_t i = 0; i < rpc->req_md.count; i++) {
    const grpc_metadata *md = &rpc->req_md.metadata[i];
    if (GRPC_SLICE_LENGTH(md->key) != klen ||
        memcmp(GRPC_SLICE_START_PTR(md->key), key, klen) != 0)
      continue;
    md_copy_t *c = af_calloc(1, sizeof *c);
    size_t vlen = GRPC_SLICE_LENGTH(md->value);
    char *v = af_malloc(vlen + 1);
    char *k = af_strdup(key);
    if (!c || !v || !k) {
      af_free(c);
      af_free(v);
      af_free(k);
      break;
    }
    memcpy(v, GRPC_SLICE_START_PTR(md->value), vlen);
    v[vlen] = '\0';
    c->key = k;
    c->value = v;
    c->next = rpc->md_copies;
    rpc->md_copies = c;
    out = v;
    break;
  }
done:
  pthread_mutex_unlock(&rpc->mu);
  return out;
}

const char *af_rpc_peer(af_rpc_t *rpc)
{
  if (!rpc || !rpc->call)
    return "";
  pthread_mutex_lock(&rpc->mu);
  if (!rpc->peer)
    rpc->peer = grpc_call_get_peer(rpc->call);
  const char *p = rpc->peer ? rpc->peer : "";
  pthread_mutex_unlock(&rpc->mu);
  return p;
}

void af_rpc_set_identity(af_rpc_t *rpc, const char *identity, int role)
{
  if (!rpc)
    return;
  char *copy = identity ? af_strdup(identity) : NULL;
  pthread_mutex_lock(&rpc->mu);
  af_free(rpc->identity);
  rpc->identity = copy;
  rpc->role = role;
  pthread_mutex_unlock(&rpc->mu);
}

const char *af_rpc_identity(af_rpc_t *rpc)
{
  if (!rpc)
    return "";
  pthread_mutex_lock(&rpc->mu);
  const char *id = rpc->identity ? rpc->identity : "";
  pthread_mutex_unlock(&rpc->mu);
  return id;
}

int af_rpc_role(af_rpc_t *rpc)
{
  if (!rpc)
    return 0;
  pthread_mutex_lock(&rpc->mu);
  int role = rpc->role;
  pthread_mutex_unlock(&rpc->mu);
  return role;
}

const char *af_rpc_method(const af_rpc_t *rpc)
{
  return rpc && rpc->m ? rpc->m->path : "";
}

bool af_rpc_cancelled(const af_rpc_t *rpc)
{
  return rpc && atomic_load(&rpc->cancelled);
}

void af_rpc_set_user(af_rpc_t *rpc, void *ptr, void (*free_fn)(void *))
{
  if (!rpc)
    return;
  pthread_mutex_lock(&rpc->mu);
  void *old = rpc->user;
  void (*old_free)(void *) = rpc->user_free;
  rpc->user = ptr;
  rpc->user_free = free_fn;
  pthread_mutex_unlock(&rpc->mu);
  if (old_free && old && old != ptr)
    old_free(old);
}

void *af_rpc_user(const af_rpc_t *rpc) { return rpc ? rpc->user : NULL; }

af_server_t *af_rpc_server(const af_rpc_t *rpc)
{
  return rpc ? rpc->srv : NULL;
}

/* ------------------------------------------------------------------ */
/* Server streams                                                     */

static void stream_send_done(af_rpc_t *rpc, bool ok);
static void pump(struct af_stream *st, bool fill_now, bool heartbeat);

af_rpc_t *af_stream_rpc(af_stream_t *st) { return st ? &st->rpc : NULL; }

af_status_t af_stream_set_producer(af_stream_t *st, af_stream_fill_fn fill,
                                   af_stream_done_fn done, void *user)
{
  if (!st || !fill)
    return AF_EINVAL;
  if (!st->in_start || st->producer_set || st->failed)
    return AF_ESTATE;
  st->fill = fill;
  st->done = done;
  st->user = user;
  st->producer_set = true;
  return AF_OK;
}

void af_stream_fail(af_stream_t *st, grpc_status_code code, const char *fmt,
                    ...)
{
  if (!st || !st->in_start || st->failed || st->producer_set)
    return;
  va_list ap;
  va_start(ap, fmt);
  st->fail_msg = vformat(fmt ? fmt : "", ap);
  va_end(ap);
  st->fail_code = code == GRPC_STATUS_OK ? GRPC_STATUS_UNKNOWN : code;
  st->failed = true;
}

void af_stream_retain(af_stream_t *st)
{
  if (st)
    rpc_ref(&st->rpc);
}

void af_stream_release(af_stream_t *st)
{
  if (st)
    rpc_unref(&st->rpc);
}

uint64_t af_stream_seq_next(af_stream_t *st)
{
  return st ? atomic_fetch_add(&st->seq, 1) + 1 : 0;
}

bool af_stream_ended(const af_stream_t *st)
{
  return !st || atomic_load(&st->rpc.closed);
}

/* Under st->rpc.mu: true if done must run now (the caller runs it after
 * unlocking). Once the final status went out the send token is held
 * forever but no fill can run any more, so done may run then too. */
static bool take_done(struct af_stream *st)
{
  if (atomic_load(&st->rpc.closed) && (!st->sending || st->status_sent) &&
      st->producer_set && !st->ended) {
    st->ended = true;
    return true;
  }
  return false;
}

static void run_done(struct af_stream *st)
{
  if (st->done)
    st->done(st, st->user);
}

static void queue_push_locked(af_server_t *srv, struct af_stream *st)
{
  st->q_next = NULL;
  if (srv->q_tail)
    srv->q_tail->q_next = st;
  else
    srv->q_head = st;
  srv->q_tail = st;
  pthread_cond_broadcast(&srv->cv);
}

void af_stream_notify(af_stream_t *st)
{
  if (!st)
    return;
  af_server_t *srv = st->rpc.srv;
  pthread_mutex_lock(&st->rpc.mu);
  if (atomic_load(&st->rpc.closed) || st->status_sent || !st->producer_set ||
      (st->finish_req && st->final_fill_done)) {
    pthread_mutex_unlock(&st->rpc.mu);
    return;
  }
  if (st->sending || st->queued) {
    if (st->sending)
      st->dirty = true;
    pthread_mutex_unlock(&st->rpc.mu);
    atomic_fetch_add(&srv->stream_coalesced, 1);
    return;
  }
  st->queued = true;
  rpc_ref(&st->rpc);
  pthread_mutex_unlock(&st->rpc.mu);
  pthread_mutex_lock(&srv->mu);
  queue_push_locked(srv, st);
  pthread_mutex_unlock(&srv->mu);
}

void af_stream_finish(af_stream_t *st, grpc_status_code code, const char *msg)
{
  if (!st)
    return;
  char *copy = af_strdup(msg ? msg : "");
  pthread_mutex_lock(&st->rpc.mu);
  if (st->finish_req || atomic_load(&st->rpc.closed)) {
    pthread_mutex_unlock(&st->rpc.mu);
    af_free(copy);
    return;
  }
  st->finish_req = true;
  st->finish_code = code;
  st->finish_msg = copy;
  if (st->sending || st->queued) {
    pthread_mutex_unlock(&st->rpc.mu);
    return;
  }
  st->sending = true;
  rpc_ref(&st->rpc);
  pthread_mutex_unlock(&st->rpc.mu);
  pump(st, false, false);
  rpc_unref(&st->rpc);
}

/* Holder of the send token: fill and send, or send the final status, or
 * give the token back. */
static void pump(struct af_stream *st, bool fill_now, bool heartbeat)
{
  af_rpc_t *rpc = &st->rpc;
  af_server_t *srv = rpc->srv;
  for (;;) {
    if (fill_now) {
      af_msg_free_fn free_fn = NULL;
      ProtobufCMessage *msg = st->fill(st, heartbeat, st->user, &free_fn);
      if (msg) {
        grpc_byte_buffer *bb = pack(msg);
        if (free_fn)
          free_fn(msg);
        grpc_op ops[2];
        size_t n = 0;
        memset(ops, 0, sizeof ops);
        pthread_mutex_lock(&rpc->mu);
        if (!rpc->md_sent) {
          rpc->md_sent = true;
          ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
        }
        if (rpc->send_bb)
          grpc_byte_buffer_destroy(rpc->send_bb);
        rpc->send_bb = bb;
        pthread_mutex_unlock(&rpc->mu);
        ops[n].op = GRPC_OP_SEND_MESSAGE;
        ops[n].data.send_message.send_message = bb;
        n++;
        atomic_store(&st->last_send_ns, now_ns(srv));
        atomic_fetch_add(&srv->stream_messages, 1);
        rpc->t_main.fn = stream_send_done;
        start_batch(rpc, &rpc->t_main, ops, n);
        return; /* token held until stream_send_done */
      }
    }
    bool call_done = false;
    pthread_mutex_lock(&rpc->mu);
    if (atomic_load(&rpc->closed)) {
      st->sending = false;
      call_done = take_done(st);
      pthread_mutex_unlock(&rpc->mu);
      if (call_done)
        run_done(st);
      return;
    }
    if (st->dirty && !(st->finish_req && st->final_fill_done)) {
      st->dirty = false;
      if (st->finish_req)
        st->final_fill_done = true;
      pthread_mutex_unlock(&rpc->mu);
      fill_now = true;
      heartbeat = false;
      continue;
    }
    if (st->finish_req && !st->status_sent) {
      st->status_sent = true;
      grpc_status_code code = st->finish_code;
      char *msg = st->finish_msg;
      st->finish_msg = NULL;
      pthread_mutex_unlock(&rpc->mu);
      send_final(rpc, code, msg, NULL); /* token stays held forever */
      af_free(msg);
      return;
    }
    st->sending = false;
    pthread_mutex_unlock(&rpc->mu);
    return;
  }
}

static void stream_send_done(af_rpc_t *rpc, bool ok)
{
  struct af_stream *st = as_stream(rpc);
  if (!ok) {
    pthread_mutex_lock(&rpc->mu);
    st->sending = false;
    bool call_done = take_done(st);
    pthread_mutex_unlock(&rpc->mu);
    if (call_done)
      run_done(st);
  } else {
    pump(st, false, false);
  }
  rpc_unref(rpc);
}

/* Dispatch thread: one queued stream. Drops the queue's ref. */
static void dispatch_one(struct af_stream *st)
{
  af_rpc_t *rpc = &st->rpc;
  pthread_mutex_lock(&rpc->mu);
  st->queued = false;
  bool hb = st->want_hb;
  st->want_hb = false;
  if (atomic_load(&rpc->closed) || st->status_sent) {
    pthread_mutex_unlock(&rpc->mu);
    rpc_unref(rpc);
    return;
  }
  if (st->sending) {
    if (!hb)
      st->dirty = true;
    pthread_mutex_unlock(&rpc->mu);
    rpc_unref(rpc);
    return;
  }
  st->sending = true;
  if (!hb)
    st->dirty = true;
  bool fill_hb = hb && !st->finish_req;
  pthread_mutex_unlock(&rpc->mu);
  pump(st, fill_hb, hb);
  rpc_unref(rpc);
}

/* Under srv->mu: queue a heartbeat fill for every idle stream. */
static void heartbeat_scan_locked(af_server_t *srv)
{
  uint64_t now = now_ns(srv);
  uint64_t hb = (uint64_t)srv->heartbeat_ms * AF_NS_PER_MS;
  for (struct af_stream *st = srv->streams; st; st = st->next) {
    if (now - atomic_load(&st->last_send_ns) < hb)
      continue;
    pthread_mutex_lock(&st->rpc.mu);
    if (!st->sending && !st->queued && !st->finish_req &&
        !atomic_load(&st->rpc.closed)) {
      st->queued = true;
      st->want_hb = true;
      rpc_ref(&st->rpc);
      atomic_store(&st->last_send_ns, now); /* one heartbeat per period */
      pthread_mutex_unlock(&st->rpc.mu);
      queue_push_locked(srv, st);
    } else {
      pthread_mutex_unlock(&st->rpc.mu);
    }
  }
}

static void *dispatch_main(void *arg)
{
  af_server_t *srv = arg;
  uint64_t period_ms = 250;
  if (srv->heartbeat_ms > 0 && srv->heartbeat_ms / 4 < period_ms)
    period_ms = srv->heartbeat_ms / 4 ? srv->heartbeat_ms / 4 : 1;
  struct timespec next_scan;
  cond_deadline(&next_scan, period_ms);
  pthread_mutex_lock(&srv->mu);
  for (;;) {
    while (srv->q_head) {
      struct af_stream *st = srv->q_head;
      srv->q_head = st->q_next;
      if (!srv->q_head)
        srv->q_tail = NULL;
      pthread_mutex_unlock(&srv->mu);
      dispatch_one(st);
      pthread_mutex_lock(&srv->mu);
    }
    if (srv->dispatch_stop)
      break;
    if (ts_before_now(&next_scan)) {
      if (srv->heartbeat_ms > 0 && !atomic_load(&srv->shutting))
        heartbeat_scan_locked(srv);
      cond_deadline(&next_scan, period_ms);
      continue;
    }
    pthread_cond_timedwait(&srv->cv, &srv->mu, &next_scan);
  }
  pthread_mutex_unlock(&srv->mu);
  return NULL;
}

/* ------------------------------------------------------------------ */
/* Incoming calls                                                     */

static void post_request(af_server_t *srv, method_t *m);

static void conn_remove_locked(af_server_t *srv, struct af_stream *st);

static void on_close(af_rpc_t *rpc, bool ok)
{
  (void)ok;
  atomic_store(&rpc->cancelled, rpc->close_cancelled != 0);
  atomic_store(&rpc->closed, true);
  struct af_stream *st = as_stream(rpc);
  if (st) {
    af_server_t *srv = rpc->srv;
    bool drop_list_ref = false;
    pthread_mutex_lock(&srv->mu);
    if (st->in_list) {
      st->in_list = false;
      if (st->prev)
        st->prev->next = st->next;
      else
        srv->streams = st->next;
      if (st->next)
        st->next->prev = st->prev;
      drop_list_ref = true;
    }
    conn_remove_locked(srv, st);
    pthread_mutex_unlock(&srv->mu);
    if (st->counted) {
      st->counted = false;
      atomic_fetch_sub(&srv->streams_open, 1);
    }
    pthread_mutex_lock(&rpc->mu);
    bool call_done = take_done(st);
    pthread_mutex_unlock(&rpc->mu);
    if (call_done)
      run_done(st);
    if (drop_list_ref)
      rpc_unref(rpc);
  }
  rpc_unref(rpc);
}

/* Hash check for antifragility methods; returns true if refused. */
static bool refuse_hash(af_rpc_t *rpc)
{
  af_server_t *srv = rpc->srv;
  if (!rpc->m->hash_checked)
    return false;
  const char *h = af_rpc_metadata(rpc, "x-constitutional-hash");
  if (!h || strcmp(h, srv->hash) == 0)
    return false;
  char msg[AF_HASH_MAX + 64];
  snprintf(msg, sizeof msg, "constitutional hash mismatch: expected %s",
           srv->hash);
  fail_now(rpc, GRPC_STATUS_FAILED_PRECONDITION, msg);
  return true;
}

static void on_recv_client_stream(af_rpc_t *rpc, bool ok);
static void on_recv_bidi(af_rpc_t *rpc, bool ok);

static void start_recv(af_rpc_t *rpc, void (*fn)(af_rpc_t *, bool))
{
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &rpc->recv_bb;
  rpc->t_recv.fn = fn;
  start_batch(rpc, &rpc->t_recv, &op, 1);
}

/* After a client-stream / bidi callback: pending failure or abort code
 * ends the call (returns true). */
static bool end_callback(af_rpc_t *rpc, grpc_status_code code)
{
  pthread_mutex_lock(&rpc->mu);
  rpc->in_callback = false;
  bool pending = rpc->has_pending;
  grpc_status_code pcode = rpc->pending_code;
  char *pmsg = rpc->pending_msg;
  rpc->pending_msg = NULL;
  rpc->has_pending = false;
  pthread_mutex_unlock(&rpc->mu);
  if (code == GRPC_STATUS_OK && !pending)
    return false;
  grpc_status_code c = code != GRPC_STATUS_OK ? code : pcode;
  fail_now(rpc, c, pmsg ? pmsg : "aborted");
  af_free(pmsg);
  return true;
}

static void on_recv_client_stream(af_rpc_t *rpc, bool ok)
{
  grpc_byte_buffer *bb = rpc->recv_bb;
  rpc->recv_bb = NULL;
  if (!ok || !bb) {
    /* half-close, or the call broke: on_end answers (answer ref) */
    rpc->m->cs_end(rpc, rpc->m->ctx);
    rpc_unref(rpc);
    return;
  }
  char why[256];
  ProtobufCMessage *msg = unpack(rpc->m->desc, bb, why, sizeof why);
  grpc_byte_buffer_destroy(bb);
  if (!msg) {
    fail_now(rpc, GRPC_STATUS_INVALID_ARGUMENT, why);
    rpc_unref(rpc);
    return;
  }
  pthread_mutex_lock(&rpc->mu);
  rpc->in_callback = true;
  pthread_mutex_unlock(&rpc->mu);
  grpc_status_code code = rpc->m->cs_msg(rpc, msg, rpc->m->ctx);
  protobuf_c_message_free_unpacked(msg, NULL);
  if (!end_callback(rpc, code))
    start_recv(rpc, on_recv_client_stream);
  rpc_unref(rpc);
}

static void on_bidi_sent(af_rpc_t *rpc, bool ok)
{
  if (ok)
    start_recv(rpc, on_recv_bidi);
  else
    fail_now(rpc, GRPC_STATUS_UNAVAILABLE, "send failed");
  rpc_unref(rpc);
}

static void on_recv_bidi(af_rpc_t *rpc, bool ok)
{
  grpc_byte_buffer *bb = rpc->recv_bb;
  rpc->recv_bb = NULL;
  if (!ok || !bb) {
    pthread_mutex_lock(&rpc->mu);
    bool already = rpc->answered;
    rpc->answered = true;
    pthread_mutex_unlock(&rpc->mu);
    if (!already) {
      send_final(rpc, GRPC_STATUS_OK, "", NULL);
      rpc_unref(rpc); /* answer ref */
    }
    rpc_unref(rpc);
    return;
  }
  char why[256];
  ProtobufCMessage *msg = unpack(rpc->m->desc, bb, why, sizeof why);
  grpc_byte_buffer_destroy(bb);
  if (!msg) {
    fail_now(rpc, GRPC_STATUS_INVALID_ARGUMENT, why);
    rpc_unref(rpc);
    return;
  }
  pthread_mutex_lock(&rpc->mu);
  rpc->in_callback = true;
  if (rpc->send_bb) {
    grpc_byte_buffer_destroy(rpc->send_bb);
    rpc->send_bb = NULL;
  }
  pthread_mutex_unlock(&rpc->mu);
  grpc_status_code code = rpc->m->bidi_msg(rpc, msg, rpc->m->ctx);
  protobuf_c_message_free_unpacked(msg, NULL);
  if (!end_callback(rpc, code)) {
    pthread_mutex_lock(&rpc->mu);
    grpc_byte_buffer *out = rpc->send_bb;
    bool need_md = !rpc->md_sent;
    rpc->md_sent = true;
    pthread_mutex_unlock(&rpc->mu);
    if (out) {
      grpc_op ops[2];
      size_t n = 0;
      memset(ops, 0, sizeof ops);
      if (need_md)
        ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
      ops[n].op = GRPC_OP_SEND_MESSAGE;
      ops[n].data.send_message.send_message = out;
      n++;
      rpc->t_main.fn = on_bidi_sent;
      start_batch(rpc, &rpc->t_main, ops, n);
    } else {
      start_recv(rpc, on_recv_bidi);
    }
  }
  rpc_unref(rpc);
}

/* Counts one more stream on the stream's connection; false (not
 * counted) past max_watchers_per_conn or out of memory. */
static bool conn_add(af_server_t *srv, struct af_stream *st)
{
  const char *peer = af_rpc_peer(&st->rpc);
  bool ok = false;
  pthread_mutex_lock(&srv->mu);
  conn_count_t *c = srv->conns;
  while (c && strcmp(c->peer, peer) != 0)
    c = c->next;
  if (!c) {
    c = af_calloc(1, sizeof *c);
    if (c && !(c->peer = af_strdup(peer))) {
      af_free(c);
      c = NULL;
    }
    if (c) {
      c->next = srv->conns;
      srv->conns = c;
    }
  }
  if (c && c->n < srv->max_watchers_per_conn) {
    c->n++;
    ok = true;
  }
  pthread_mutex_unlock(&srv->mu);
  st->conn_counted = ok;
  return ok;
}

/* Undoes conn_add; srv->mu held. */
static void conn_remove_locked(af_server_t *srv, struct af_stream *st)
{
  if (!st->conn_counted)
    return;
  st->conn_counted = false;
  const char *peer = st->rpc.peer ? st->rpc.peer : "";
  for (conn_count_t **p = &srv->conns; *p; p = &(*p)->next) {
    if (strcmp((*p)->peer, peer) != 0)
      continue;
    if (--(*p)->n == 0) {
      conn_count_t *dead = *p;
      *p = dead->next;
      af_free(dead->peer);
      af_free(dead);
    }
    return;
  }
}

static void start_server_stream(af_rpc_t *rpc, ProtobufCMessage *req)
{
  af_server_t *srv = rpc->srv;
  struct af_stream *st = as_stream(rpc);
  uint64_t open = atomic_fetch_add(&srv->streams_open, 1) + 1;
  st->counted = true;
  if (open > srv->max_watchers) {
    char msg[96];
    snprintf(msg, sizeof msg, "too many watchers (limit %u)",
             srv->max_watchers);
    fail_now(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    return;
  }
  if (!conn_add(srv, st)) {
    char msg[96];
    snprintf(msg, sizeof msg, "too many watchers on this connection (limit %u)",
             srv->max_watchers_per_conn);
    fail_now(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, msg);
    return;
  }
  st->in_start = true;
  rpc->m->ss_start(st, req, rpc->m->ctx);
  st->in_start = false;
  if (st->failed || !st->producer_set) {
    fail_now(rpc, st->failed ? st->fail_code : GRPC_STATUS_INTERNAL,
             st->failed ? (st->fail_msg ? st->fail_msg : "")
                        : "stream has no producer");
    return;
  }
  atomic_store(&st->last_send_ns, now_ns(srv));
  pthread_mutex_lock(&srv->mu);
  bool shutting = atomic_load(&srv->shutting);
  if (!atomic_load(&rpc->closed)) {
    st->in_list = true;
    st->prev = NULL;
    st->next = srv->streams;
    if (srv->streams)
      srv->streams->prev = st;
    srv->streams = st;
    rpc_ref(rpc); /* list ref */
  }
  pthread_mutex_unlock(&srv->mu);
  pthread_mutex_lock(&rpc->mu);
  rpc->answered = true;
  st->sending = true;
  if (shutting && !st->finish_req) {
    st->finish_req = true;
    st->finish_code = GRPC_STATUS_OK;
    st->finish_msg = af_strdup("");
  }
  pthread_mutex_unlock(&rpc->mu);
  pump(st, true, false);
  rpc_unref(rpc); /* answer ref: streams live on their other refs */
}

static void on_new_call(af_rpc_t *rpc, bool ok)
{
  af_server_t *srv = rpc->srv;
  method_t *m = rpc->m;
  int left = m ? atomic_fetch_sub(&m->posted, 1) - 1 : 1;
  if (!ok) {
    rpc_unref(rpc);
    return;
  }
  if (atomic_load(&srv->accepting)) {
    post_request(srv, m);
    /* The pool ran dry: further calls wait inside gRPC for a request. */
    int target = m ? atomic_load(&m->pool_target) : REQUEST_POOL;
    if (left == 0 && target < REQUEST_POOL &&
        atomic_compare_exchange_strong(&m->pool_target, &target, target + 1))
      post_request(srv, m);
  }
  atomic_fetch_add(&srv->calls_started, 1);
  bool unary = m && m->kind == KIND_UNARY;
  if (!unary)
    ensure_close(rpc); /* else lazily: see "Unary fast path" */
  if (!m) {
    atomic_fetch_add(&srv->unimplemented, 1);
    if (af_log_enabled(AF_LOG_DEBUG)) {
      char *path = grpc_slice_to_c_string(rpc->details.method);
      af_log(AF_LOG_DEBUG, "unknown method %s -> UNIMPLEMENTED", path);
      gpr_free(path);
    }
    fail_now(rpc, GRPC_STATUS_UNIMPLEMENTED, "unknown method");
    return;
  }
  if (srv->authorize) {
    char why[256] = "";
    grpc_status_code code =
        srv->authorize(rpc, m->path, srv->authorize_ctx, why, sizeof why);
    if (code != GRPC_STATUS_OK) {
      fail_now(rpc, code, why);
      return;
    }
  }
  if (refuse_hash(rpc))
    return; /* answered: the close rode in its final batch */
  switch (m->kind) {
  case KIND_UNARY:
  case KIND_SERVER_STREAM: {
    char why[256];
    ProtobufCMessage *req = unpack(m->desc, rpc->recv_bb, why, sizeof why);
    if (rpc->recv_bb) {
      grpc_byte_buffer_destroy(rpc->recv_bb);
      rpc->recv_bb = NULL;
    }
    if (!req) {
      fail_now(rpc, GRPC_STATUS_INVALID_ARGUMENT, why);
      return;
    }
    if (m->kind == KIND_UNARY) {
      rpc_ref(rpc); /* ours: an answer may free the call before we return */
      m->unary(rpc, req, m->ctx); /* answer ref goes to the handler */
      ensure_close(rpc);          /* no-op when it answered already */
      rpc_unref(rpc);
    } else {
      start_server_stream(rpc, req);
    }
    protobuf_c_message_free_unpacked(req, NULL);
    return;
  }
  case KIND_CLIENT_STREAM:
    start_recv(rpc, on_recv_client_stream);
    return;
  case KIND_BIDI:
    start_recv(rpc, on_recv_bidi);
    return;
  case KIND_GENERIC:
    break;
  }
  fail_now(rpc, GRPC_STATUS_INTERNAL, "bad method kind");
}

static void post_request(af_server_t *srv, method_t *m)
{
  bool stream = m && m->kind == KIND_SERVER_STREAM;
  size_t size = stream ? sizeof(struct af_stream) : sizeof(struct af_rpc);
  af_rpc_t *rpc = af_calloc(1, size);
  if (!rpc) {
    af_log(AF_LOG_ERROR, "out of memory posting a call request");
    return;
  }
  rpc->srv = srv;
  rpc->m = m;
  rpc->is_stream = stream;
  atomic_init(&rpc->refs, 1);
  pthread_mutex_init(&rpc->mu, NULL);
  rpc->t_new.fn = on_new_call;
  if (m)
    atomic_fetch_add(&m->posted, 1); /* undone below if gRPC refuses */
  rpc->t_new.rpc = rpc;
  rpc->t_main.rpc = rpc;
  rpc->t_close.rpc = rpc;
  rpc->t_recv.rpc = rpc;
  grpc_metadata_array_init(&rpc->req_md);
  grpc_call_details_init(&rpc->details);
  pthread_mutex_lock(&srv->mu);
  srv->live++;
  pthread_mutex_unlock(&srv->mu);
  grpc_call_error e;
  if (m) {
    bool payload = m->kind == KIND_UNARY || m->kind == KIND_SERVER_STREAM;
    grpc_completion_queue *call_cq =
        m->kind == KIND_UNARY ? srv->cq : srv->stream_cq;
    e = grpc_server_request_registered_call(
        srv->gs, m->handle, &rpc->call, &rpc->deadline, &rpc->req_md,
        payload ? &rpc->recv_bb : NULL, call_cq, srv->cq, &rpc->t_new);
  } else {
    e = grpc_server_request_call(srv->gs, &rpc->call, &rpc->details,
                                 &rpc->req_md, srv->cq, srv->cq, &rpc->t_new);
  }
  if (e != GRPC_CALL_OK) {
    af_log(AF_LOG_ERROR, "request_call failed (%d)", (int)e);
    if (m)
      atomic_fetch_sub(&m->posted, 1);
    rpc_unref(rpc);
  }
}

/* ------------------------------------------------------------------ */
/* Server                                                             */

void af_server_options_init(af_server_options_t *opt)
{
  if (!opt)
    return;
  memset(opt, 0, sizeof *opt);
  opt->listen_addr = "127.0.0.1:50051";
  opt->threads = 1;
  opt->max_watchers = 10000;
  opt->max_watchers_per_conn = 1000;
  opt->heartbeat_ms = 15000;
  opt->hash = AF_CONSTITUTIONAL_HASH_DEFAULT;
  opt->hash_method_prefix = "/antifragility.v1.";
  opt->max_message_bytes = 4u * 1024u * 1024u;
  opt->shutdown_grace_ms = 2000;
  opt->clock = NULL;
}

static void on_shutdown_tag(af_rpc_t *rpc, bool ok)
{
  (void)rpc;
  (void)ok;
}

static void server_free(af_server_t *srv)
{
  for (size_t i = 0; i < srv->n_methods; i++) {
    af_free(srv->methods[i]->path);
    af_free(srv->methods[i]->service);
    af_free(srv->methods[i]);
  }
  af_free(srv->methods);
  af_free(srv->begin_hooks);
  af_free(srv->destroy_hooks);
  af_free(srv->workers);
  af_free(srv->listen_addr);
  af_free(srv->hash);
  af_free(srv->hash_prefix);
  af_free(srv->tls_cert);
  af_free(srv->tls_key);
  af_free(srv->tls_client_ca);
  while (srv->conns) {
    conn_count_t *n = srv->conns->next;
    af_free(srv->conns->peer);
    af_free(srv->conns);
    srv->conns = n;
  }
  pthread_cond_destroy(&srv->cv);
  pthread_mutex_destroy(&srv->mu);
  af_free(srv);
}

af_status_t af_server_create(af_server_t **out, const af_server_options_t *opt,
                             af_error_t *err)
{
  af_server_options_t defaults;
  if (!out)
    return af_error_set(err, AF_EINVAL, "out must not be NULL");
  if (!opt) {
    af_server_options_init(&defaults);
    opt = &defaults;
  }
  if (!opt->listen_addr || !opt->listen_addr[0])
    return af_error_set(err, AF_EINVAL, "listen address must not be empty");
  if (opt->threads < 1 || opt->threads > MAX_THREADS)
    return af_error_set(err, AF_EINVAL, "threads must be in 1..%d",
                        MAX_THREADS);
  if (opt->max_watchers < 1)
    return af_error_set(err, AF_EINVAL, "max_watchers must be >= 1");
  if (opt->max_watchers_per_conn < 1)
    return af_error_set(err, AF_EINVAL, "max_watchers_per_conn must be >= 1");
  if ((opt->tls_cert_pem && opt->tls_cert_pem[0]) !=
      (opt->tls_key_pem && opt->tls_key_pem[0]))
    return af_error_set(err, AF_EINVAL,
                        "TLS needs both a certificate and a private key");
  if (opt->tls_client_ca_pem && opt->tls_client_ca_pem[0] &&
      !(opt->tls_cert_pem && opt->tls_cert_pem[0]))
    return af_error_set(err, AF_EINVAL,
                        "a client CA (mTLS) needs a server certificate");
  if (opt->max_message_bytes < 1024 || opt->max_message_bytes > INT32_MAX)
    return af_error_set(err, AF_EINVAL,
                        "max_message_bytes must be in 1024..2147483647");
  if (opt->hash && strlen(opt->hash) > AF_HASH_MAX)
    return af_error_set(err, AF_EINVAL, "hash longer than %d characters",
                        AF_HASH_MAX);

  af_server_t *srv = af_calloc(1, sizeof *srv);
  if (!srv)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  pthread_mutex_init(&srv->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&srv->cv, &ca);
  pthread_condattr_destroy(&ca);
  srv->listen_addr = af_strdup(opt->listen_addr);
  srv->hash = af_strdup(opt->hash ? opt->hash : "");
  srv->hash_prefix =
      af_strdup(opt->hash_method_prefix ? opt->hash_method_prefix : "");
  if (!srv->listen_addr || !srv->hash || !srv->hash_prefix) {
    server_free(srv);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  if (opt->tls_cert_pem && opt->tls_cert_pem[0]) {
    srv->tls_cert = af_strdup(opt->tls_cert_pem);
    srv->tls_key = af_strdup(opt->tls_key_pem);
    if (opt->tls_client_ca_pem && opt->tls_client_ca_pem[0])
      srv->tls_client_ca = af_strdup(opt->tls_client_ca_pem);
    if (!srv->tls_cert || !srv->tls_key ||
        (opt->tls_client_ca_pem && opt->tls_client_ca_pem[0] &&
         !srv->tls_client_ca)) {
      server_free(srv);
      return af_error_set(err, AF_ENOMEM, "out of memory");
    }
  }
  srv->threads = opt->threads;
  srv->max_watchers = opt->max_watchers;
  srv->max_watchers_per_conn = opt->max_watchers_per_conn;
  srv->heartbeat_ms = opt->heartbeat_ms;
  srv->max_message_bytes = opt->max_message_bytes;
  srv->shutdown_grace_ms = opt->shutdown_grace_ms;
  srv->clock = opt->clock;
  srv->t_shutdown.fn = on_shutdown_tag;

  grpc_init();
  grpc_arg args[4];
  memset(args, 0, sizeof args);
  args[0].type = GRPC_ARG_INTEGER;
  args[0].key = (char *)GRPC_ARG_ALLOW_REUSEPORT;
  args[0].value.integer = 0;
  args[1].type = GRPC_ARG_INTEGER;
  args[1].key = (char *)GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
  args[1].value.integer = (int)opt->max_message_bytes;
  args[2].type = GRPC_ARG_INTEGER;
  args[2].key = (char *)GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
  args[2].value.integer = (int)opt->max_message_bytes;
  /* Request metadata (headers) per call; gRPC refuses more. */
  args[3].type = GRPC_ARG_INTEGER;
  args[3].key = (char *)GRPC_ARG_MAX_METADATA_SIZE;
  args[3].value.integer = AF_SERVER_MAX_METADATA_BYTES;
  grpc_channel_args cargs = {4, args};
  srv->gs = grpc_server_create(&cargs, NULL);
  srv->cq = grpc_completion_queue_create_for_next(NULL);
  /* Non-polling: its thread only pops completions. A polling second queue
   * made that thread take a share of the network reads of unary calls and
   * hand each one over to `cq`'s thread (about 2x the CPU per call). The
   * workers on `cq` drive all I/O. */
  grpc_completion_queue_attributes attr = {
      GRPC_CQ_CURRENT_VERSION, GRPC_CQ_NEXT, GRPC_CQ_NON_POLLING, NULL};
  srv->stream_cq = grpc_completion_queue_create(
      grpc_completion_queue_factory_lookup(&attr), &attr, NULL);
  if (!srv->gs || !srv->cq || !srv->stream_cq) {
    if (srv->gs)
      grpc_server_destroy(srv->gs);
    if (srv->cq)
      grpc_completion_queue_destroy(srv->cq);
    if (srv->stream_cq)
      grpc_completion_queue_destroy(srv->stream_cq);
    grpc_shutdown();
    server_free(srv);
    return af_error_set(err, AF_ENOMEM, "cannot create the gRPC server");
  }
  srv->grpc_shutdown_called = false;
  grpc_server_register_completion_queue(srv->gs, srv->cq, NULL);
  *out = srv;
  return AF_OK;
}

af_status_t af_server_set_authorizer(af_server_t *srv, af_authorize_fn fn,
                                     void *ctx)
{
  if (!srv || atomic_load(&srv->started))
    return AF_EINVAL;
  srv->authorize = fn;
  srv->authorize_ctx = ctx;
  return AF_OK;
}

static af_status_t add_method(af_server_t *srv, const char *path,
                              const ProtobufCMessageDescriptor *desc,
                              kind_t kind, method_t **out)
{
  if (!srv || !path || !desc || atomic_load(&srv->started))
    return AF_EINVAL;
  const char *slash = path[0] == '/' ? strchr(path + 1, '/') : NULL;
  if (!slash || slash == path + 1 || !slash[1] || strchr(slash + 1, '/'))
    return AF_EINVAL;
  for (size_t i = 0; i < srv->n_methods; i++)
    if (strcmp(srv->methods[i]->path, path) == 0)
      return AF_EEXIST;
  method_t *m = af_calloc(1, sizeof *m);
  method_t **arr = af_realloc(srv->methods, (srv->n_methods + 1) * sizeof *arr);
  if (arr)
    srv->methods = arr;
  char *p = af_strdup(path);
  size_t slen = (size_t)(slash - path - 1);
  char *svc = af_malloc(slen + 1);
  if (!m || !arr || !p || !svc) {
    af_free(m);
    af_free(p);
    af_free(svc);
    return AF_ENOMEM;
  }
  memcpy(svc, path + 1, slen);
  svc[slen] = '\0';
  bool payload = kind == KIND_UNARY || kind == KIND_SERVER_STREAM;
  m->handle = grpc_server_register_method(
      srv->gs, p, NULL,
      payload ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER
              : GRPC_SRM_PAYLOAD_NONE,
      0);
  if (!m->handle) {
    af_free(m);
    af_free(p);
    af_free(svc);
    return AF_EINVAL;
  }
  m->path = p;
  m->service = svc;
  m->kind = kind;
  m->desc = desc;
  m->hash_checked = srv->hash[0] && srv->hash_prefix[0] &&
                    strncmp(p, srv->hash_prefix, strlen(srv->hash_prefix)) == 0;
  srv->methods[srv->n_methods++] = m;
  *out = m;
  return AF_OK;
}

af_status_t af_server_add_unary(af_server_t *srv, const char *path,
                                const ProtobufCMessageDescriptor *req_desc,
                                af_unary_fn handler, void *ctx)
{
  if (!handler)
    return AF_EINVAL;
  method_t *m;
  af_status_t s = add_method(srv, path, req_desc, KIND_UNARY, &m);
  if (s == AF_OK) {
    m->unary = handler;
    m->ctx = ctx;
  }
  return s;
}

af_status_t
af_server_add_client_stream(af_server_t *srv, const char *path,
                            const ProtobufCMessageDescriptor *req_desc,
                            af_client_msg_fn on_message,
                            af_client_end_fn on_end, void *ctx)
{
  if (!on_message || !on_end)
    return AF_EINVAL;
  method_t *m;
  af_status_t s = add_method(srv, path, req_desc, KIND_CLIENT_STREAM, &m);
  if (s == AF_OK) {
    m->cs_msg = on_message;
    m->cs_end = on_end;
    m->ctx = ctx;
  }
  return s;
}

af_status_t
af_server_add_server_stream(af_server_t *srv, const char *path,
                            const ProtobufCMessageDescriptor *req_desc,
                            af_stream_start_fn on_start, void *ctx)
{
  if (!on_start)
    return AF_EINVAL;
  method_t *m;
  af_status_t s = add_method(srv, path, req_desc, KIND_SERVER_STREAM, &m);
  if (s == AF_OK) {
    m->ss_start = on_start;
    m->ctx = ctx;
  }
  return s;
}

af_status_t af_server_add_bidi(af_server_t *srv, const char *path,
                               const ProtobufCMessageDescriptor *req_desc,
                               af_bidi_msg_fn on_message, void *ctx)
{
  if (!on_message)
    return AF_EINVAL;
  method_t *m;
  af_status_t s = add_method(srv, path, req_desc, KIND_BIDI, &m);
  if (s == AF_OK) {
    m->bidi_msg = on_message;
    m->ctx = ctx;
  }
  return s;
}

static af_status_t add_hook(hook_t **arr, size_t *n, void (*fn)(void *),
                            void *ctx)
{
  if (!fn)
    return AF_EINVAL;
  hook_t *a = af_realloc(*arr, (*n + 1) * sizeof *a);
  if (!a)
    return AF_ENOMEM;
  a[*n].fn = fn;
  a[*n].ctx = ctx;
  *arr = a;
  (*n)++;
  return AF_OK;
}

af_status_t af_server_on_begin_shutdown(af_server_t *srv, void (*fn)(void *),
                                        void *ctx)
{
  if (!srv)
    return AF_EINVAL;
  return add_hook(&srv->begin_hooks, &srv->n_begin_hooks, fn, ctx);
}

af_status_t af_server_on_destroy(af_server_t *srv, void (*fn)(void *),
                                 void *ctx)
{
  if (!srv)
    return AF_EINVAL;
  return add_hook(&srv->destroy_hooks, &srv->n_destroy_hooks, fn, ctx);
}

bool af_server_has_service(const af_server_t *srv, const char *service)
{
  if (!srv || !service)
    return false;
  for (size_t i = 0; i < srv->n_methods; i++)
    if (strcmp(srv->methods[i]->service, service) == 0)
      return true;
  return false;
}

/* Drains one queue: cq (the worker threads) or stream_cq (its thread). */
static void drain_queue(af_server_t *srv, grpc_completion_queue *cq)
{
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(
        cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN)
      break;
    if (ev.type != GRPC_OP_COMPLETE)
      continue;
    tag_t *t = ev.tag;
    if (t == &srv->t_shutdown) {
      pthread_mutex_lock(&srv->mu);
      srv->shutdown_tag_done = true;
      pthread_cond_broadcast(&srv->cv);
      pthread_mutex_unlock(&srv->mu);
      continue;
    }
    t->fn(t->rpc, ev.success != 0);
  }
}

static void *worker_main(void *arg)
{
  af_server_t *srv = arg;
  drain_queue(srv, srv->cq);
  return NULL;
}

static void *stream_worker_main(void *arg)
{
  af_server_t *srv = arg;
  drain_queue(srv, srv->stream_cq);
  return NULL;
}

af_status_t af_server_start(af_server_t *srv, int *bound_port, af_error_t *err)
{
  if (!srv)
    return af_error_set(err, AF_EINVAL, "server must not be NULL");
  if (atomic_load(&srv->started))
    return af_error_set(err, AF_ESTATE, "server already started");
  grpc_server_credentials *cr;
  if (srv->tls_cert) {
    grpc_ssl_pem_key_cert_pair pair = {srv->tls_key, srv->tls_cert};
    cr = grpc_ssl_server_credentials_create_ex(
        srv->tls_client_ca, &pair, 1,
        srv->tls_client_ca
            ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
            : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE,
        NULL);
    if (!cr)
      return af_error_set(err, AF_EINVAL,
                          "cannot use the TLS certificate / key");
  } else {
    cr = grpc_insecure_server_credentials_create();
  }
  int port = grpc_server_add_http2_port(srv->gs, srv->listen_addr, cr);
  grpc_server_credentials_release(cr);
  if (port <= 0)
    return af_error_set(err, AF_EIO,
                        "cannot listen on %s (address in use or invalid)",
                        srv->listen_addr);
  srv->workers = af_calloc((size_t)srv->threads, sizeof *srv->workers);
  if (!srv->workers)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  grpc_server_start(srv->gs);
  atomic_store(&srv->started, true);
  atomic_store(&srv->accepting, true);
  for (size_t i = 0; i < srv->n_methods; i++) {
    atomic_store(&srv->methods[i]->pool_target, 1);
    post_request(srv, srv->methods[i]);
  }
  for (int k = 0; k < GENERIC_POOL; k++)
    post_request(srv, NULL);
  for (int i = 0; i < srv->threads; i++) {
    if (pthread_create(&srv->workers[i], NULL, worker_main, srv) != 0)
      break;
    srv->n_workers++;
  }
  if (pthread_create(&srv->stream_worker, NULL, stream_worker_main, srv) == 0)
    srv->stream_worker_running = true;
  if (pthread_create(&srv->dispatcher, NULL, dispatch_main, srv) == 0)
    srv->dispatcher_running = true;
  if (srv->n_workers == 0 || !srv->dispatcher_running ||
      !srv->stream_worker_running) {
    af_server_shutdown(srv);
    return af_error_set(err, AF_ENOMEM, "cannot start server threads");
  }
  if (bound_port)
    *bound_port = port;
  return AF_OK;
}

bool af_server_shutting_down(const af_server_t *srv)
{
  return srv && atomic_load(&srv->shutting);
}

void af_server_begin_shutdown(af_server_t *srv)
{
  if (!srv || atomic_exchange(&srv->shutting, true))
    return;
  for (size_t i = 0; i < srv->n_begin_hooks; i++)
    srv->begin_hooks[i].fn(srv->begin_hooks[i].ctx);
  /* finish every open stream with OK */
  pthread_mutex_lock(&srv->mu);
  size_t n = 0;
  for (struct af_stream *st = srv->streams; st; st = st->next)
    n++;
  struct af_stream **all = n ? af_calloc(n, sizeof *all) : NULL;
  size_t k = 0;
  if (all)
    for (struct af_stream *st = srv->streams; st; st = st->next) {
      rpc_ref(&st->rpc);
      all[k++] = st;
    }
  pthread_mutex_unlock(&srv->mu);
  for (size_t i = 0; i < k; i++) {
    af_stream_finish(all[i], GRPC_STATUS_OK, "");
    af_stream_release(all[i]);
  }
  af_free(all);
  if (atomic_load(&srv->started)) {
    atomic_store(&srv->accepting, false);
    grpc_server_shutdown_and_notify(srv->gs, srv->cq, &srv->t_shutdown);
  } else {
    srv->shutdown_tag_done = true;
  }
}

static bool drained_locked(const af_server_t *srv)
{
  return srv->shutdown_tag_done && srv->live == 0;
}

void af_server_shutdown(af_server_t *srv)
{
  if (!srv || srv->shutdown_done)
    return;
  af_server_begin_shutdown(srv);
  srv->shutdown_done = true;
  if (!atomic_load(&srv->started))
    return;
  struct timespec deadline;
  cond_deadline(&deadline, srv->shutdown_grace_ms);
  /* Wait for the calls, not for the connections: gRPC publishes the
   * shutdown tag only once every client connection is gone, and an idle
   * client that keeps its channel open would otherwise hold us for the
   * whole grace period. */
  pthread_mutex_lock(&srv->mu);
  while (srv->live > 0) {
    if (pthread_cond_timedwait(&srv->cv, &srv->mu, &deadline) == ETIMEDOUT)
      break;
  }
  bool drained = drained_locked(srv);
  size_t held = srv->live;
  pthread_mutex_unlock(&srv->mu);
  if (!drained) {
    if (held > 0)
      af_log(AF_LOG_INFO,
             "shutdown grace of %u ms over: cancelling %zu call(s)",
             srv->shutdown_grace_ms, held);
    /* Also disconnects idle connections, which lets the shutdown tag
     * complete. */
    grpc_server_cancel_all_calls(srv->gs);
    unsigned waited = 0;
    pthread_mutex_lock(&srv->mu);
    while (!drained_locked(srv)) {
      cond_deadline(&deadline, 1000);
      if (pthread_cond_timedwait(&srv->cv, &srv->mu, &deadline) == ETIMEDOUT &&
          ++waited % 5 == 0)
        af_log(AF_LOG_WARN,
               "shutdown: %zu call states still held (an RPC not "
               "answered or a stream not released?)",
               srv->live);
    }
    pthread_mutex_unlock(&srv->mu);
  }
  pthread_mutex_lock(&srv->mu);
  srv->dispatch_stop = true;
  pthread_cond_broadcast(&srv->cv);
  pthread_mutex_unlock(&srv->mu);
  if (srv->dispatcher_running)
    pthread_join(srv->dispatcher, NULL);
  srv->dispatcher_running = false;
  grpc_completion_queue_shutdown(srv->cq);
  grpc_completion_queue_shutdown(srv->stream_cq);
  for (int i = 0; i < srv->n_workers; i++)
    pthread_join(srv->workers[i], NULL);
  srv->n_workers = 0;
  if (srv->stream_worker_running)
    pthread_join(srv->stream_worker, NULL);
  srv->stream_worker_running = false;
}

void af_server_destroy(af_server_t *srv)
{
  if (!srv)
    return;
  af_server_shutdown(srv);
  if (!atomic_load(&srv->started)) {
    /* never started: no calls, no threads; drain the queues anyway */
    grpc_completion_queue *cqs[2] = {srv->cq, srv->stream_cq};
    for (int i = 0; i < 2; i++) {
      grpc_completion_queue_shutdown(cqs[i]);
      for (;;) {
        grpc_event ev = grpc_completion_queue_next(
            cqs[i], gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
        if (ev.type == GRPC_QUEUE_SHUTDOWN)
          break;
      }
    }
  }
  grpc_server_destroy(srv->gs);
  grpc_completion_queue_destroy(srv->cq);
  grpc_completion_queue_destroy(srv->stream_cq);
  for (size_t i = 0; i < srv->n_destroy_hooks; i++)
    srv->destroy_hooks[i].fn(srv->destroy_hooks[i].ctx);
  grpc_shutdown();
  server_free(srv);
}

void af_server_stats(const af_server_t *srv, af_server_stats_t *out)
{
  if (!out)
    return;
  memset(out, 0, sizeof *out);
  if (!srv)
    return;
  af_server_t *s = (af_server_t *)srv;
  out->calls_started = atomic_load(&s->calls_started);
  out->calls_finished = atomic_load(&s->calls_finished);
  for (int i = 0; i < 17; i++)
    out->by_code[i] = atomic_load(&s->by_code[i]);
  out->streams_open = atomic_load(&s->streams_open);
  out->stream_messages = atomic_load(&s->stream_messages);
  out->stream_coalesced = atomic_load(&s->stream_coalesced);
  out->unimplemented = atomic_load(&s->unimplemented);
}

void af__server_set_health(af_server_t *srv, void *health)
{
  if (srv)
    srv->health = health;
}

void *af__server_health(const af_server_t *srv)
{
  return srv ? srv->health : NULL;
}
