/*
 * svc_metering.c - antifragility.v1.MeteringService: RecordUsage,
 * RecordUsageStream, QueryUsage, GetMeteringMetrics.
 *
 * Path of an event: the handler validates it (precise INVALID_ARGUMENT,
 * nothing changes), then under `mu` enqueues it on the engine's meter
 * (bounded, never blocks; full -> RESOURCE_EXHAUSTED, nothing dropped in
 * silence) and appends a waiter to one FIFO. The meter's flusher calls
 * `sink`, which applies the batch to the usage store (exactly once per
 * tenant + event_id) and then pops one waiter per event and answers it:
 * RecordUsage is acknowledged only after its event was applied, so the
 * reply says truthfully whether it was new or a duplicate and a QueryUsage
 * that follows sees it. The handler asks the flusher for a round at once
 * (af_meter_request_flush), so the wait is one group commit, not a flush
 * interval.
 *
 * Validation: the core's af_meter_event_validate messages, plus the rules
 * only the wire has (operation required, timestamp range, the metadata map
 * limits, constitutional_hash). Wire defaults: tier UNSPECIFIED = STANDARD,
 * units 0 = 1, event_id "" = a generated key (returned in the reply).
 * Refusals here count in dropped_invalid like the meter's own. RecordUsage
 * replies durable = the store's `durable` (false for the memory store).
 *
 * Store failures (SQLite: read-only file, disk full, I/O error): a batch
 * the store refuses stays in the meter and is offered again (nothing is
 * lost), but its waiters and all those queued behind it are answered at
 * once with UNAVAILABLE "metering store cannot write: ..." (they were not
 * acknowledged, so the client retries; the retry is a duplicate if the old
 * event got in meanwhile, and a waiter is only ever acknowledged by the
 * commit of an event with its key).
 * While the last write failed, new events are refused the same way
 * instead of piling up behind it; the first successful write clears it.
 * A store that could not be opened at start (app->store_error) refuses
 * every RecordUsage / QueryUsage with UNAVAILABLE and the reason.
 *
 * Invariants:
 *   - Waiters are in the FIFO in exactly the order their events are in the
 *     meter (enqueue + append happen under `mu`), so the sink matches them
 *     by position; the key is compared as a guard against events some other
 *     producer put on the meter (those are applied and answer no one).
 *   - Every waiter is answered exactly once: by the sink, or by
 *     af_svc_metering_shutdown after the final flush (UNAVAILABLE for a
 *     unary, "rejected" for a stream event). A stream is answered when its
 *     client half-closed and none of its events is still in the meter.
 *   - A stream's state lives until both the call let go of it (af_rpc user
 *     free) and no waiter points to it.
 *
 * Threading: handlers on CQ threads, the sink on the meter's flusher
 * thread (or the owner thread inside af_svc_metering_shutdown). `mu` guards
 * the FIFO, every stream's counters and `closing`; no gRPC or meter call
 * that can wait is made with it held (af_meter_enqueue never waits), and
 * replies are sent after it is released.
 */
#include "app_internal.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "af/meter.h"
#include "antifragility/v1/metering.pb-c.h"
#include "convert.h"
#include "log.h"
#include "status_map.h"
#include "usage_store.h"

#define SVC "/antifragility.v1.MeteringService/"
/* How long af_svc_metering_shutdown lets the sink drain the meter. */
/* QueryUsageResponse.buckets limit (proto). */
#define MAX_BUCKETS 512
/* UsageEvent.metadata limits (proto). */
#define MD_MAX_ENTRIES 16
#define MD_KEY_MAX 64
#define MD_VALUE_MAX 256
/* RecordUsageStreamResponse.first_error limit (proto). */
#define FIRST_ERROR_MAX 256
/* Room for the store's failure message (fits first_error). */
#define STORE_ERROR_MAX (FIRST_ERROR_MAX + 1)
/* Latest second whose ns still fit an int64 (2262-04-11). */
#define TS_MAX_SECONDS (INT64_MAX / (int64_t)AF_NS_PER_SEC - 1)

typedef struct ustream ustream_t;

typedef struct waiter {
  struct waiter *next;
  af_rpc_t *rpc;     /* RecordUsage: the call to answer; NULL for a stream */
  ustream_t *stream; /* RecordUsageStream: whose counters to bump */
  bool duplicate;    /* set by the sink */
  uint64_t index;    /* stream: 0-based message index */
  char tenant_id[AF_NAME_MAX + 1];
  char event_id[AF_EVENT_ID_MAX + 1];
} waiter_t;

/* One RecordUsageStream call. Counters under svc->mu. */
struct ustream {
  af_svc_metering_t *svc;
  af_rpc_t *rpc;
  ustream_t *post_next; /* sink / shutdown: streams to answer after unlock */
  uint64_t received;
  uint64_t accepted;
  uint64_t duplicates;
  uint64_t rejected;
  uint64_t first_error_index;
  size_t outstanding; /* events in the meter, not applied yet */
  bool ended;         /* on_end ran: the answer is owed */
  bool answered;
  bool rpc_gone; /* the call freed its user state */
  char first_error[FIRST_ERROR_MAX + 1];
};

struct af_svc_metering {
  af_app_t *app;
  af_meter_t *meter;       /* borrowed from the engine */
  af_usage_store_t *store; /* owned */
  pthread_mutex_t mu;
  waiter_t *head; /* FIFO of events in the meter, oldest first */
  waiter_t *tail;
  bool closing;     /* shutdown began: refuse new events */
  bool unavailable; /* no store: refuse everything, say why */
  /* Under mu: the last store write failed with this message ("" = ok). */
  char store_error[STORE_ERROR_MAX];
  _Atomic uint64_t invalid; /* refused here before reaching the meter */
  /* Under mu: answers of the batch the sink just stored, sent by
   * after_sink once the meter has counted the batch. */
  waiter_t *def_answer, *def_done;
  ustream_t *def_post, *def_dead;
};

/* ---- events from the wire -------------------------------------------- */

/* Copies src into dst[size]; a src of size bytes or more is copied
 * unterminated so that af_meter_event_validate reports it as too long. */
static void copy_field(char *dst, size_t size, const char *src)
{
  if (src == NULL) {
    dst[0] = '\0';
    return;
  }
  size_t n = strnlen(src, size);
  memcpy(dst, src, n);
  if (n < size) {
    dst[n] = '\0';
  }
}

static af_status_t ts_to_ns(const Google__Protobuf__Timestamp *ts,
                            const char *field, int64_t *out, af_error_t *err)
{
  if (ts->seconds < 0 || ts->seconds > TS_MAX_SECONDS || ts->nanos < 0 ||
      ts->nanos >= (int32_t)AF_NS_PER_SEC) {
    return af_error_set(err, AF_EINVAL,
                        "%s must be a valid time between 1970-01-01 and "
                        "2262-04-11",
                        field);
  }
  *out = af_ts_to_ns(ts);
  return AF_OK;
}

/* Appends s as a JSON string to buf (at *len, room size); false if it does
 * not fit. */
static bool json_str(char *buf, size_t size, size_t *len, const char *s)
{
  char tmp[8];
  if (*len + 1 >= size) {
    return false;
  }
  buf[(*len)++] = '"';
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    const char *esc = NULL;
    size_t n = 1;
    if (*p == '"') {
      esc = "\\\"";
    } else if (*p == '\\') {
      esc = "\\\\";
    } else if (*p < 0x20) {
      snprintf(tmp, sizeof(tmp), "\\u%04x", (unsigned)*p);
      esc = tmp;
    }
    if (esc != NULL) {
      n = strlen(esc);
    }
    if (*len + n >= size) {
      return false;
    }
    if (esc != NULL) {
      memcpy(buf + *len, esc, n);
    } else {
      buf[*len] = (char)*p;
    }
    *len += n;
  }
  if (*len + 1 >= size) {
    return false;
  }
  buf[(*len)++] = '"';
  buf[*len] = '\0';
  return true;
}

/* The metadata map as a JSON object in out[AF_METER_METADATA_MAX]; "" when
 * empty. */
static af_status_t metadata_to_json(const Antifragility__V1__UsageEvent *pb,
                                    char *out, af_error_t *err)
{
  out[0] = '\0';
  if (pb->n_metadata == 0) {
    return AF_OK;
  }
  if (pb->n_metadata > MD_MAX_ENTRIES) {
    return af_error_set(err, AF_EINVAL, "metadata must have at most %d entries",
                        MD_MAX_ENTRIES);
  }
  size_t len = 0;
  size_t size = AF_METER_METADATA_MAX;
  out[len++] = '{';
  for (size_t i = 0; i < pb->n_metadata; i++) {
    const char *k = pb->metadata[i]->key != NULL ? pb->metadata[i]->key : "";
    const char *v =
        pb->metadata[i]->value != NULL ? pb->metadata[i]->value : "";
    size_t kl = strlen(k);
    if (kl == 0 || kl > MD_KEY_MAX) {
      return af_error_set(err, AF_EINVAL, "metadata keys must be 1-%d bytes",
                          MD_KEY_MAX);
    }
    if (strlen(v) > MD_VALUE_MAX) {
      return af_error_set(err, AF_EINVAL,
                          "metadata values must be at most %d bytes",
                          MD_VALUE_MAX);
    }
    bool ok = (i == 0 || len + 1 < size);
    if (ok && i > 0) {
      out[len++] = ',';
    }
    ok = ok && json_str(out, size, &len, k) && len + 1 < size;
    if (ok) {
      out[len++] = ':';
    }
    ok = ok && json_str(out, size, &len, v);
    if (!ok) {
      out[0] = '\0';
      return af_error_set(err, AF_EINVAL,
                          "metadata must be at most %d bytes as JSON",
                          AF_METER_METADATA_MAX - 1);
    }
  }
  if (len + 1 >= size) {
    out[0] = '\0';
    return af_error_set(err, AF_EINVAL,
                        "metadata must be at most %d bytes as JSON",
                        AF_METER_METADATA_MAX - 1);
  }
  out[len++] = '}';
  out[len] = '\0';
  return AF_OK;
}

/* Builds and fully validates *ev from the wire event (pb may be NULL).
 * AF_EINVAL / AF_EHASH with the message in err. */
static af_status_t event_from_pb(af_svc_metering_t *svc,
                                 const Antifragility__V1__UsageEvent *pb,
                                 af_meter_event_t *ev, af_error_t *err)
{
  if (pb == NULL) {
    return af_error_set(err, AF_EINVAL, "event is required");
  }
  /* UNSPECIFIED is reported after the fields the core checks first. */
  af_meter_operation_t op = pb->operation == 0
                                ? AF_OP_CONSTITUTIONAL_VALIDATION
                                : (af_meter_operation_t)pb->operation;
  af_meter_event_init(ev, pb->tenant_id, op);
  copy_field(ev->event_id, sizeof(ev->event_id), pb->event_id);
  copy_field(ev->agent_id, sizeof(ev->agent_id), pb->agent_id);
  ev->tier = pb->tier == 0 ? AF_TIER_STANDARD : (af_meter_tier_t)pb->tier;
  ev->units = pb->units == 0 ? 1 : pb->units;
  ev->tokens_processed = pb->tokens_processed;
  ev->latency_ms = pb->latency_ms;
  ev->compliance_score = pb->compliance_score;
  ev->constitutional_valid = pb->constitutional_valid;
  af_status_t rc = af_meter_event_validate(ev, err);
  if (rc != AF_OK) {
    return rc;
  }
  if (pb->operation == 0) {
    return af_error_set(err, AF_EINVAL, "operation is required");
  }
  if (pb->timestamp != NULL) {
    rc = ts_to_ns(pb->timestamp, "timestamp", &ev->timestamp_wall_ns, err);
    if (rc != AF_OK) {
      return rc;
    }
  }
  rc = metadata_to_json(pb, ev->metadata, err);
  if (rc != AF_OK) {
    return rc;
  }
  const char *hash = pb->constitutional_hash;
  if (hash != NULL && hash[0] != '\0') {
    if (strlen(hash) > AF_HASH_MAX) {
      return af_error_set(err, AF_EINVAL,
                          "constitutional_hash must be at most %d characters",
                          AF_HASH_MAX);
    }
    const char *want = af_engine_hash(svc->app->engine);
    if (strcmp(hash, want) != 0) {
      return af_error_set(err, AF_EHASH,
                          "constitutional hash mismatch: expected %s", want);
    }
    memcpy(ev->hash, hash, strlen(hash) + 1);
  }
  if (ev->event_id[0] == '\0') {
    af_meter_generate_event_id(svc->meter, ev->event_id);
  }
  return AF_OK;
}

/* ---- the queue and its waiters ---------------------------------------- */

/* Puts ev on the meter and w on the FIFO, in one step under mu. On an error
 * (AF_ESHUTDOWN while closing, AF_EFULL, ...) nothing was queued and w is
 * still the caller's. */
static af_status_t submit(af_svc_metering_t *svc, af_meter_event_t *ev,
                          waiter_t *w, af_error_t *err)
{
  memcpy(w->tenant_id, ev->tenant_id, sizeof(w->tenant_id));
  memcpy(w->event_id, ev->event_id, sizeof(w->event_id));
  w->next = NULL;
  pthread_mutex_lock(&svc->mu);
  af_status_t rc;
  if (svc->closing) {
    rc = af_error_set(err, AF_ESHUTDOWN, "metering is shut down");
  } else if (svc->store_error[0] != '\0') {
    rc = af_error_set(err, AF_EIO, "%s", svc->store_error);
  } else {
    rc = af_meter_enqueue(svc->meter, ev, err);
  }
  if (rc == AF_OK) {
    if (w->stream != NULL) {
      w->stream->outstanding++;
    }
    if (svc->tail != NULL) {
      svc->tail->next = w;
    } else {
      svc->head = w;
    }
    svc->tail = w;
  }
  pthread_mutex_unlock(&svc->mu);
  return rc;
}

static waiter_t *fifo_pop(af_svc_metering_t *svc)
{
  waiter_t *w = svc->head;
  if (w != NULL) {
    svc->head = w->next;
    if (svc->head == NULL) {
      svc->tail = NULL;
    }
    w->next = NULL;
  }
  return w;
}

/* Under mu: records a refused stream message. */
static void stream_reject_locked(ustream_t *us, uint64_t index, const char *msg)
{
  if (us->rejected == 0 || index < us->first_error_index) {
    snprintf(us->first_error, sizeof(us->first_error), "%s", msg);
    us->first_error_index = index;
  }
  us->rejected++;
}

/* Under mu: one of the stream's queued events is resolved. Returns true if
 * the stream must now be answered (the caller does it after unlocking) and
 * sets *free_it if nothing refers to it any more. */
static bool stream_resolved_locked(ustream_t *us, bool *free_it)
{
  us->outstanding--;
  *free_it = false;
  if (us->outstanding > 0) {
    return false;
  }
  if (us->ended && !us->answered) {
    us->answered = true;
    return true;
  }
  *free_it = us->rpc_gone;
  return false;
}

static void stream_reply(ustream_t *us)
{
  Antifragility__V1__RecordUsageStreamResponse resp =
      ANTIFRAGILITY__V1__RECORD_USAGE_STREAM_RESPONSE__INIT;
  resp.received = us->received;
  resp.accepted = us->accepted;
  resp.duplicates = us->duplicates;
  resp.rejected = us->rejected;
  resp.first_error = us->first_error;
  resp.first_error_index = us->first_error_index;
  /* After this the call may free us (stream_user_free). */
  af_rpc_reply(us->rpc, &resp.base);
}

/* Answers the streams of post (each resolved) and frees those of dead
 * (their calls are gone); both lists linked by post_next, outside mu. */
static void streams_finish(ustream_t *post, ustream_t *dead)
{
  while (post != NULL) {
    ustream_t *next = post->post_next;
    stream_reply(post);
    post = next;
  }
  while (dead != NULL) {
    ustream_t *next = dead->post_next;
    af_free(dead);
    dead = next;
  }
}

static void unary_reply(const af_svc_metering_t *svc, waiter_t *w)
{
  Antifragility__V1__RecordUsageResponse resp =
      ANTIFRAGILITY__V1__RECORD_USAGE_RESPONSE__INIT;
  resp.accepted = true;
  resp.duplicate = w->duplicate;
  resp.event_id = w->event_id;
  resp.durable = svc->store->durable;
  af_rpc_reply(w->rpc, &resp.base);
}

/* The store refused a batch: remember why (new events are refused until a
 * write succeeds) and answer every waiter now, the batch's and those queued
 * behind it, instead of letting them wait out their deadlines. The meter
 * keeps all their events and offers them again; none was acknowledged, so
 * whether they get in before the clients' retries does not matter (a
 * retry is then a duplicate). */
static void store_failed(af_svc_metering_t *svc, const char *why)
{
  waiter_t *answer = NULL;
  ustream_t *post = NULL;
  ustream_t *dead = NULL;
  pthread_mutex_lock(&svc->mu);
  snprintf(svc->store_error, sizeof(svc->store_error),
           "metering store cannot write: %.220s", why);
  waiter_t *w;
  while ((w = fifo_pop(svc)) != NULL) {
    if (w->stream == NULL) {
      w->next = answer;
      answer = w;
      continue;
    }
    ustream_t *us = w->stream;
    stream_reject_locked(us, w->index, svc->store_error);
    bool free_it;
    if (stream_resolved_locked(us, &free_it)) {
      us->post_next = post;
      post = us;
    } else if (free_it) {
      us->post_next = dead;
      dead = us;
    }
    af_free(w);
  }
  char msg[STORE_ERROR_MAX];
  memcpy(msg, svc->store_error, sizeof(msg));
  pthread_mutex_unlock(&svc->mu);
  while (answer != NULL) {
    waiter_t *next = answer->next;
    af_rpc_fail(answer->rpc, GRPC_STATUS_UNAVAILABLE, "%s", msg);
    af_free(answer);
    answer = next;
  }
  streams_finish(post, dead);
}

/* a followed by b (either may be NULL). */
static waiter_t *waiters_concat(waiter_t *a, waiter_t *b)
{
  if (a == NULL) {
    return b;
  }
  waiter_t *t = a;
  while (t->next != NULL) {
    t = t->next;
  }
  t->next = b;
  return a;
}

static ustream_t *streams_concat(ustream_t *a, ustream_t *b)
{
  if (a == NULL) {
    return b;
  }
  ustream_t *t = a;
  while (t->post_next != NULL) {
    t = t->post_next;
  }
  t->post_next = b;
  return a;
}

/* The meter's sink: apply, then leave the answers to after_sink. */
static af_status_t sink(const af_meter_event_t *events, size_t n,
                        size_t *duplicates, void *ctx)
{
  af_svc_metering_t *svc = ctx;
  uint8_t *dup = af_malloc(n);
  if (dup == NULL) {
    return AF_ENOMEM;
  }
  af_error_t err;
  af_error_clear(&err);
  af_status_t rc = af_usage_store_apply(svc->store, events, n, dup, &err);
  if (rc != AF_OK) {
    af_log(AF_LOG_ERROR, "metering: cannot store %zu event(s): %s", n,
           err.message);
    af_free(dup);
    store_failed(svc, err.message);
    return rc;
  }

  waiter_t *answer = NULL; /* unary waiters, reversed */
  waiter_t *done = NULL;   /* stream waiters to free */
  ustream_t *post = NULL;  /* streams to answer */
  ustream_t *dead = NULL;  /* streams to free */
  size_t ndup = 0;
  pthread_mutex_lock(&svc->mu);
  if (svc->store_error[0] != '\0' && !svc->unavailable) {
    af_log(AF_LOG_INFO, "metering: store writes again");
    svc->store_error[0] = '\0';
  }
  for (size_t i = 0; i < n; i++) {
    ndup += dup[i];
    waiter_t *w = svc->head;
    if (w == NULL || strcmp(w->tenant_id, events[i].tenant_id) != 0 ||
        strcmp(w->event_id, events[i].event_id) != 0) {
      continue; /* not ours */
    }
    fifo_pop(svc);
    w->duplicate = dup[i] != 0;
    if (w->stream == NULL) {
      w->next = answer;
      answer = w;
      continue;
    }
    ustream_t *us = w->stream;
    if (w->duplicate) {
      us->duplicates++;
    } else {
      us->accepted++;
    }
    bool free_it;
    if (stream_resolved_locked(us, &free_it)) {
      us->post_next = post;
      post = us;
    } else if (free_it) {
      us->post_next = dead;
      dead = us;
    }
    w->next = done;
    done = w;
  }
  /* Answered by after_sink, once the meter has counted this batch (added
   * to anything not answered yet, which after_sink normally leaves empty). */
  svc->def_answer = waiters_concat(answer, svc->def_answer);
  svc->def_done = waiters_concat(done, svc->def_done);
  svc->def_post = streams_concat(post, svc->def_post);
  svc->def_dead = streams_concat(dead, svc->def_dead);
  pthread_mutex_unlock(&svc->mu);
  af_free(dup);
  *duplicates = ndup;
  return AF_OK;
}

/* The meter's after_sink: answer the callers of the batch just counted. */
static void after_sink(void *ctx)
{
  af_svc_metering_t *svc = ctx;
  pthread_mutex_lock(&svc->mu);
  waiter_t *answer = svc->def_answer;
  waiter_t *done = svc->def_done;
  ustream_t *post = svc->def_post;
  ustream_t *dead = svc->def_dead;
  svc->def_answer = svc->def_done = NULL;
  svc->def_post = svc->def_dead = NULL;
  pthread_mutex_unlock(&svc->mu);

  while (answer != NULL) {
    waiter_t *next = answer->next;
    unary_reply(svc, answer);
    af_free(answer);
    answer = next;
  }
  while (done != NULL) {
    waiter_t *next = done->next;
    af_free(done);
    done = next;
  }
  streams_finish(post, dead);
}

/* ---- RecordUsage ------------------------------------------------------ */

static void count_invalid(af_svc_metering_t *svc, af_status_t rc)
{
  if (rc == AF_EINVAL || rc == AF_EHASH) {
    atomic_fetch_add(&svc->invalid, 1);
  }
}

static void on_record_usage(af_rpc_t *rpc, const ProtobufCMessage *msg,
                            void *ctx)
{
  af_svc_metering_t *svc = ctx;
  const Antifragility__V1__RecordUsageRequest *req =
      (const Antifragility__V1__RecordUsageRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_meter_event_t ev;
  af_status_t rc = event_from_pb(svc, req->event, &ev, &err);
  if (rc != AF_OK) {
    count_invalid(svc, rc);
    af_rpc_fail_status(rpc, rc, &err);
    return;
  }
  waiter_t *w = af_calloc(1, sizeof(*w));
  if (w == NULL) {
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->rpc = rpc;
  rc = submit(svc, &ev, w, &err);
  if (rc != AF_OK) {
    af_free(w);
    af_rpc_fail_status(rpc, rc, &err);
    return;
  }
  /* Answered by the sink once applied. */
  af_meter_request_flush(svc->meter);
}

/* ---- RecordUsageStream ------------------------------------------------ */

static void stream_user_free(void *p)
{
  ustream_t *us = p;
  af_svc_metering_t *svc = us->svc;
  pthread_mutex_lock(&svc->mu);
  us->rpc_gone = true;
  bool free_now = us->outstanding == 0;
  pthread_mutex_unlock(&svc->mu);
  if (free_now) {
    af_free(us);
  }
}

static grpc_status_code
on_stream_message(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_svc_metering_t *svc = ctx;
  const Antifragility__V1__RecordUsageRequest *req =
      (const Antifragility__V1__RecordUsageRequest *)msg;
  ustream_t *us = af_rpc_user(rpc);
  if (us == NULL) {
    us = af_calloc(1, sizeof(*us));
    if (us == NULL) {
      af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    us->svc = svc;
    us->rpc = rpc;
    af_rpc_set_user(rpc, us, stream_user_free);
  }
  /* received is only written here (one message at a time per call), read
   * by the answer once the stream ended. */
  uint64_t index = us->received++;

  af_error_t err;
  af_error_clear(&err);
  af_meter_event_t ev;
  af_status_t rc = event_from_pb(svc, req->event, &ev, &err);
  waiter_t *w = NULL;
  if (rc == AF_OK) {
    w = af_calloc(1, sizeof(*w));
    if (w == NULL) {
      rc = af_error_set(&err, AF_ENOMEM, "out of memory");
    }
  } else {
    count_invalid(svc, rc);
  }
  if (rc == AF_OK) {
    w->stream = us;
    w->index = index;
    rc = submit(svc, &ev, w, &err);
    if (rc != AF_OK) {
      af_free(w);
    }
  }
  if (rc != AF_OK) {
    pthread_mutex_lock(&svc->mu);
    stream_reject_locked(us, index, err.message);
    pthread_mutex_unlock(&svc->mu);
  }
  return GRPC_STATUS_OK;
}

static void on_stream_end(af_rpc_t *rpc, void *ctx)
{
  af_svc_metering_t *svc = ctx;
  ustream_t *us = af_rpc_user(rpc);
  if (us == NULL) {
    Antifragility__V1__RecordUsageStreamResponse resp =
        ANTIFRAGILITY__V1__RECORD_USAGE_STREAM_RESPONSE__INIT;
    af_rpc_reply(rpc, &resp.base);
    return;
  }
  pthread_mutex_lock(&svc->mu);
  us->ended = true;
  bool now = us->outstanding == 0;
  if (now) {
    us->answered = true;
  }
  pthread_mutex_unlock(&svc->mu);
  if (now) {
    stream_reply(us);
  } else {
    af_meter_request_flush(svc->meter);
  }
}

/* ---- QueryUsage ------------------------------------------------------- */

static void bucket_to_pb(const af_usage_bucket_t *b,
                         Antifragility__V1__UsageBucket *pb,
                         Google__Protobuf__Timestamp *ts, bool with_start)
{
  antifragility__v1__usage_bucket__init(pb);
  if (with_start) {
    google__protobuf__timestamp__init(ts);
    ts->seconds = b->start_ns / (int64_t)AF_NS_PER_SEC;
    ts->nanos = (int32_t)(b->start_ns % (int64_t)AF_NS_PER_SEC);
    pb->bucket_start = ts;
  }
  pb->operation = (Antifragility__V1__MeterableOperation)b->operation;
  pb->tier = (Antifragility__V1__MeteringTier)b->tier;
  pb->count = b->agg.count;
  pb->units = b->agg.units;
  pb->tokens = b->agg.tokens;
  pb->latency_sum_ms = b->agg.latency_sum_ms;
  if (b->agg.count > 0) {
    pb->latency_avg_ms = b->agg.latency_sum_ms / (double)b->agg.count;
    pb->compliance_avg = b->agg.compliance_sum / (double)b->agg.count;
  }
  pb->constitutional_invalid = b->agg.constitutional_invalid;
}

static af_status_t
query_from_pb(af_svc_metering_t *svc,
              const Antifragility__V1__QueryUsageRequest *req,
              af_usage_query_t *q, af_error_t *err)
{
  memset(q, 0, sizeof(*q));
  if (!af_check_name(req->tenant_id, "tenant_id", err)) {
    return AF_EINVAL;
  }
  q->tenant_id = req->tenant_id;
  af_status_t rc;
  if (req->start != NULL) {
    rc = ts_to_ns(req->start, "start", &q->start_ns, err);
    if (rc != AF_OK) {
      return rc;
    }
  }
  if (req->end != NULL) {
    rc = ts_to_ns(req->end, "end", &q->end_ns, err);
    if (rc != AF_OK) {
      return rc;
    }
  } else {
    /* Unset = now (an empty range if start is later). */
    q->end_ns = af_clock_wall_ns(af_engine_clock(svc->app->engine));
    if (q->end_ns < q->start_ns) {
      q->end_ns = q->start_ns;
    }
  }
  if (q->end_ns < q->start_ns) {
    return af_error_set(err, AF_EINVAL, "end must not be before start");
  }
  if ((int)req->group_by < 0 || (int)req->group_by > AF_USAGE_GROUP_TIER) {
    return af_error_set(err, AF_EINVAL, "unknown group_by");
  }
  q->group_by = (af_usage_group_t)req->group_by;
  if ((int)req->operation < 0 ||
      (int)req->operation > AF_METER_OPERATION_COUNT) {
    return af_error_set(err, AF_EINVAL, "unknown operation");
  }
  q->operation = (af_meter_operation_t)req->operation;
  if ((int)req->tier < 0 || (int)req->tier > AF_METER_TIER_COUNT) {
    return af_error_set(err, AF_EINVAL, "unknown tier");
  }
  q->tier = (af_meter_tier_t)req->tier;
  return AF_OK;
}

/* One QueryUsage in flight: the store fills res off the CQ thread (SQLite:
 * on its reader thread) and query_answer replies from there. */
typedef struct {
  af_rpc_t *rpc;
  af_usage_group_t group_by;
  af_usage_result_t res;
} query_call_t;

static void query_call_free(query_call_t *qc)
{
  af_free(qc->res.buckets);
  af_free(qc);
}

static void query_answer(af_status_t st, const af_error_t *err, void *ctx)
{
  query_call_t *qc = ctx;
  af_rpc_t *rpc = qc->rpc;
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, err);
    query_call_free(qc);
    return;
  }
  af_usage_result_t *res = &qc->res;
  size_t n = res->n_buckets;
  Antifragility__V1__UsageBucket *pbs = af_calloc(n + 1, sizeof(*pbs));
  Antifragility__V1__UsageBucket **ptrs = af_calloc(n + 1, sizeof(*ptrs));
  Google__Protobuf__Timestamp *tss = af_calloc(n + 1, sizeof(*tss));
  if (pbs == NULL || ptrs == NULL || tss == NULL) {
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  bool with_start =
      qc->group_by == AF_USAGE_GROUP_HOUR || qc->group_by == AF_USAGE_GROUP_DAY;
  for (size_t i = 0; i < n; i++) {
    bucket_to_pb(&res->buckets[i], &pbs[i], &tss[i], with_start);
    ptrs[i] = &pbs[i];
  }
  af_usage_bucket_t tb;
  memset(&tb, 0, sizeof(tb));
  tb.agg = res->total;
  Antifragility__V1__UsageBucket total;
  bucket_to_pb(&tb, &total, NULL, false);
  Antifragility__V1__QueryUsageResponse resp =
      ANTIFRAGILITY__V1__QUERY_USAGE_RESPONSE__INIT;
  resp.n_buckets = n;
  resp.buckets = ptrs;
  resp.total = &total;
  resp.truncated = res->truncated;
  af_rpc_reply(rpc, &resp.base);
out:
  af_free(tss);
  af_free(ptrs);
  af_free(pbs);
  query_call_free(qc);
}

static void on_query_usage(af_rpc_t *rpc, const ProtobufCMessage *msg,
                           void *ctx)
{
  af_svc_metering_t *svc = ctx;
  const Antifragility__V1__QueryUsageRequest *req =
      (const Antifragility__V1__QueryUsageRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_usage_query_t q;
  af_status_t rc = query_from_pb(svc, req, &q, &err);
  if (rc != AF_OK) {
    af_rpc_fail_status(rpc, rc, &err);
    return;
  }
  if (svc->unavailable) {
    af_rpc_fail(rpc, GRPC_STATUS_UNAVAILABLE, "%s", svc->store_error);
    return;
  }
  query_call_t *qc = af_calloc(1, sizeof(*qc));
  if (qc != NULL) {
    qc->res.buckets = af_calloc(MAX_BUCKETS, sizeof(*qc->res.buckets));
  }
  if (qc == NULL || qc->res.buckets == NULL) {
    af_free(qc);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  qc->rpc = rpc;
  qc->group_by = q.group_by;
  qc->res.max_buckets = MAX_BUCKETS;
  rc = af_usage_store_query_async(svc->store, &q, &qc->res, query_answer, qc,
                                  &err);
  if (rc != AF_OK) {
    query_call_free(qc);
    af_rpc_fail_status(rpc, rc, &err);
  }
}

/* ---- GetMeteringMetrics ----------------------------------------------- */

static uint32_t clamp_u32(size_t v)
{
  return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

static void on_get_metrics(af_rpc_t *rpc, const ProtobufCMessage *msg,
                           void *ctx)
{
  (void)msg;
  af_svc_metering_t *svc = ctx;
  af_meter_metrics_t m;
  af_meter_metrics(svc->meter, &m);
  pthread_mutex_lock(&svc->mu);
  bool closing = svc->closing;
  pthread_mutex_unlock(&svc->mu);
  Antifragility__V1__GetMeteringMetricsResponse resp =
      ANTIFRAGILITY__V1__GET_METERING_METRICS_RESPONSE__INIT;
  resp.queued = m.queued;
  resp.flushed = m.flushed;
  resp.dropped_queue_full = m.dropped_queue_full;
  resp.dropped_invalid = m.dropped_invalid + atomic_load(&svc->invalid);
  resp.sink_errors = m.sink_errors;
  resp.duplicates = m.duplicates;
  resp.batches_flushed = m.batches;
  resp.queue_depth = clamp_u32(m.depth);
  resp.queue_capacity = clamp_u32(m.capacity);
  resp.enabled = !closing;
  resp.constitutional_hash = (char *)af_engine_hash(svc->app->engine);
  af_rpc_reply(rpc, &resp.base);
}

/* ---- lifecycle -------------------------------------------------------- */

void af_svc_metering_configure(af_app_t *app, af_engine_config_t *ecfg)
{
  af_svc_metering_t *svc = af_calloc(1, sizeof(*svc));
  if (svc == NULL) {
    return;
  }
  if (pthread_mutex_init(&svc->mu, NULL) != 0) {
    af_free(svc);
    return;
  }
  if (app->store_error[0] != '\0') {
    /* Not --memory, but the store did not open: never fall back to a
     * store that is not durable; refuse with the reason instead. */
    svc->unavailable = true;
    snprintf(svc->store_error, sizeof(svc->store_error),
             "metering store unavailable: %.220s", app->store_error);
  } else if (af_usage_store_open(&svc->store, app->store) != AF_OK) {
    pthread_mutex_destroy(&svc->mu);
    af_free(svc);
    return;
  }
  svc->app = app;
  atomic_init(&svc->invalid, 0);
  app->metering = svc;
  ecfg->meter.sink = sink;
  ecfg->meter.after_sink = after_sink;
  ecfg->meter.sink_ctx = svc;
  /* A small --queue-size or a long --flush-interval-ms must not make the
   * engine refuse the meter's other defaults. */
  if (ecfg->meter.batch_size > ecfg->meter.capacity) {
    ecfg->meter.batch_size = ecfg->meter.capacity;
  }
  if (app->cfg.batch_size > 0) {
    ecfg->meter.batch_size = app->cfg.batch_size;
  }
  if (ecfg->meter.batch_size > ecfg->meter.capacity) {
    ecfg->meter.batch_size = ecfg->meter.capacity;
  }
  if (ecfg->meter.max_retry_backoff_ms < ecfg->meter.flush_interval_ms) {
    ecfg->meter.max_retry_backoff_ms = ecfg->meter.flush_interval_ms;
  }
}

af_status_t af_svc_metering_register(af_app_t *app)
{
  af_svc_metering_t *svc = app->metering;
  if (svc == NULL) {
    return AF_ENOMEM;
  }
  svc->meter = af_engine_meter(app->engine);
  af_server_t *srv = app->srv;
  af_status_t st =
      af_server_add_unary(srv, SVC "RecordUsage",
                          &antifragility__v1__record_usage_request__descriptor,
                          on_record_usage, svc);
  if (st == AF_OK) {
    st = af_server_add_client_stream(
        srv, SVC "RecordUsageStream",
        &antifragility__v1__record_usage_request__descriptor, on_stream_message,
        on_stream_end, svc);
  }
  if (st == AF_OK) {
    st =
        af_server_add_unary(srv, SVC "QueryUsage",
                            &antifragility__v1__query_usage_request__descriptor,
                            on_query_usage, svc);
  }
  if (st == AF_OK) {
    st = af_server_add_unary(
        srv, SVC "GetMeteringMetrics",
        &antifragility__v1__get_metering_metrics_request__descriptor,
        on_get_metrics, svc);
  }
  return st;
}

af_status_t af_svc_metering_start(af_app_t *app)
{
  (void)app; /* the engine starts the meter's flusher (the sink is set) */
  return AF_OK;
}

void af_svc_metering_shutdown(af_app_t *app)
{
  af_svc_metering_t *svc = app->metering;
  if (svc == NULL || svc->meter == NULL) {
    return;
  }
  /* After this no handler enqueues: what the meter holds is final. */
  pthread_mutex_lock(&svc->mu);
  bool again = svc->closing;
  svc->closing = true;
  pthread_mutex_unlock(&svc->mu);
  if (!again) {
    af_meter_metrics_t before;
    af_meter_metrics(svc->meter, &before);
    size_t left = af_meter_shutdown(svc->meter, svc->app->cfg.drain_ms);
    if (left > 0) {
      af_log(AF_LOG_ERROR,
             "metering: %zu event(s) could not be written at shutdown "
             "(deadline %" PRIu32 " ms)",
             left, svc->app->cfg.drain_ms);
    } else {
      af_log(AF_LOG_INFO,
             "metering: queue drained at shutdown (%zu event(s)), none lost",
             before.depth);
    }
  }

  /* Whatever the sink could not apply: answer it now. */
  waiter_t *answer = NULL;
  ustream_t *post = NULL;
  ustream_t *dead = NULL;
  pthread_mutex_lock(&svc->mu);
  waiter_t *w;
  while ((w = fifo_pop(svc)) != NULL) {
    if (w->stream == NULL) {
      w->next = answer;
      answer = w;
      continue;
    }
    ustream_t *us = w->stream;
    stream_reject_locked(us, w->index,
                         "metering shut down before the event was stored");
    bool free_it;
    if (stream_resolved_locked(us, &free_it)) {
      us->post_next = post;
      post = us;
    } else if (free_it) {
      us->post_next = dead;
      dead = us;
    }
    af_free(w);
  }
  pthread_mutex_unlock(&svc->mu);
  while (answer != NULL) {
    waiter_t *next = answer->next;
    af_rpc_fail(answer->rpc, GRPC_STATUS_UNAVAILABLE,
                "metering shut down before the event was stored");
    af_free(answer);
    answer = next;
  }
  streams_finish(post, dead);
}

void af_svc_metering_destroy(af_app_t *app)
{
  af_svc_metering_t *svc = app->metering;
  if (svc == NULL) {
    return;
  }
  /* The server has stopped: every call was answered, so the FIFO is empty
   * unless shutdown never ran (start failed); its waiters' calls are gone
   * with the server. */
  waiter_t *w;
  while ((w = fifo_pop(svc)) != NULL) {
    af_free(w);
  }
  af_usage_store_destroy(svc->store);
  pthread_mutex_destroy(&svc->mu);
  af_free(svc);
  app->metering = NULL;
}
