/*
 * client_internal.h - what the files of libafclient share (not installed).
 *
 * Thread-safety: as af/client.h. Fields of af_client marked "const" are
 * set in create and read-only afterwards; the rest say what guards them.
 */
#ifndef AF_CLIENT_INTERNAL_H
#define AF_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <grpc/grpc.h>

#include "af/breaker.h"
#include "af/chaos.h"
#include "af/client.h"
#include "af/meter.h"

/* ---- transport.c: gRPC core calls with nanopb messages ------------------ */

/* One channel plus a registered call handle per RPC. */
#define AF__INFLIGHT_MAX 16

typedef struct {
  grpc_channel *ch;
  void *handles[AF_RPC_COUNT];
  /* unary / client-stream calls in flight (untracked past the limit) */
  pthread_mutex_t mu;
  bool mu_init;
  grpc_call *inflight[AF__INFLIGHT_MAX];
  grpc_metadata md[1]; /* authorization, when a token is set */
  size_t md_count;
} af__transport_t;

/* Creates the channel (TLS when cfg->tls_ca_file is set) and the call
 * handles; err says what failed. */
af_status_t af__transport_init(af__transport_t *t,
                               const af_client_config_t *cfg, af_error_t *err);
void af__transport_destroy(af__transport_t *t);
/* Cancels every unary / client-stream call in flight (shutdown: the
 * background threads' calls end at once). Thread-safe. */
void af__transport_cancel_all(af__transport_t *t);

/* Unary or client stream: sends n requests (array of req_size structs),
 * reads one response. Returns the gRPC code; st always filled. */
int af__call(af__transport_t *t, af_rpc_id_t rpc, const void *reqs, size_t n,
             void *resp, uint32_t deadline_ms, af_call_status_t *st);

/* The same, sending reqs[i] repeat[i] times (repeat NULL = once each):
 * one encoding per distinct message. */
int af__call_repeated(af__transport_t *t, af_rpc_id_t rpc, const void *reqs,
                      const size_t *repeat, size_t n, void *resp,
                      uint32_t deadline_ms, af_call_status_t *st);

/* Server stream (deadline_ms 0 = none). Never NULL unless out of memory. */
af_client_stream_t *af__stream_open(af__transport_t *t, af_rpc_id_t rpc,
                                    const void *req, uint32_t deadline_ms);

void af__set_status(af_call_status_t *st, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- the client ----------------------------------------------------------
 */

#define AF__GUARDS_MAX 1024

struct af_guard {
  af_client_t *client;
  af_breaker_t *breaker; /* our reference */
  char name[AF_NAME_MAX + 1];
  char target[AF_NAME_MAX + 1];
  af_breaker_config_t config;
  /* A mirrored scenario's blast radius holds target (set by
   * af__chaos_apply / af__chaos_mark_guard): allow consults the chaos
   * engine only then. */
  atomic_bool chaos_hit;
  /* Reporter thread only: what the server was last told. */
  bool reported;
  af_breaker_state_t reported_state;
  uint64_t reported_fail, reported_success;
};

typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  bool stop;
  bool wake;
} af__waiter_t;

void af__waiter_init(af__waiter_t *w);
void af__waiter_destroy(af__waiter_t *w);
/* Waits up to ms or until woken / stopped. Returns false once stopped. */
bool af__waiter_wait(af__waiter_t *w, uint64_t ms);
void af__waiter_wake(af__waiter_t *w);
void af__waiter_stop(af__waiter_t *w);
bool af__waiter_stopped(af__waiter_t *w);

struct af_health_sub {
  af_client_t *client;
  af_health_fn fn;
  void *ctx;
  bool include_score;
  pthread_t thread;
  af__waiter_t waiter;
  pthread_mutex_t mu; /* guards stream */
  af_client_stream_t *stream;
  struct af_health_sub *next; /* client->subs_mu */
};

struct af_client {
  /* const after create */
  af_client_config_t cfg;
  char addr[256];
  char instance_id[65];
  char hash[AF_HASH_MAX + 1];
  const af_clock_t *clock;
  af__transport_t transport;

  /* guards: registry is thread-safe; the array under guards_mu */
  af_breaker_registry_t *registry;
  pthread_mutex_t guards_mu;
  af_guard_t *guards[AF__GUARDS_MAX];
  size_t guard_count;
  int listener_id;

  /* local chaos mirror */
  af_chaos_t *chaos;
  pthread_mutex_t chaos_mu;  /* serialises rebuilds */
  atomic_ulong rng;          /* for exhaustion draws and jitter */
  atomic_bool chaos_present; /* the mirror holds a scenario */
  /* Every target in a mirrored blast radius (chaos_mu). */
  char (*chaos_targets)[AF_NAME_MAX + 1];
  size_t chaos_target_count;

  /* metering */
  af_meter_t *meter;
  void *meter_ctx; /* metering.c's sink state */

  /* threads */
  bool threads_started;
  bool shut_down;
  pthread_t reporter;
  bool reporter_running;
  af__waiter_t reporter_w;
  pthread_t chaos_thread;
  bool chaos_running;
  af__waiter_t chaos_w;
  pthread_mutex_t chaos_stream_mu;
  af_client_stream_t *chaos_stream;

  pthread_mutex_t subs_mu;
  af_health_sub_t *subs;

  /* counters */
  atomic_ullong reports_sent, reports_failed, rounds, chaos_events,
      chaos_reconnects;
  atomic_bool chaos_connected;
  atomic_bool resync_all; /* reporter: re-report every guard */
  /* During shutdown: background calls get at most this deadline (ms). */
  atomic_uint bg_deadline_cap;
};

/* Deadline of a background call: cfg.deadline_ms, capped during shutdown
 * so that the final flush keeps to the caller's deadline. */
uint32_t af__bg_deadline(af_client_t *c);

/* guard.c */
af_status_t af__guards_init(af_client_t *c, af_error_t *err);
void af__guards_destroy(af_client_t *c);
void *af__reporter_main(void *arg);
/* One reporter round (also used by tests and shutdown). */
void af__report_round(af_client_t *c);

/* chaos_follow.c */
af_status_t af__chaos_init(af_client_t *c, af_error_t *err);
void af__chaos_destroy(af_client_t *c);
void *af__chaos_main(void *arg);
/* Sets g->chaos_hit from the current mirror. */
void af__chaos_mark_guard(af_client_t *c, af_guard_t *g);
/* Replaces the local scenarios with the n active ones (wire form). */
void af__chaos_apply(af_client_t *c, const antifragility_v1_ChaosScenario *sc,
                     size_t n);

/* metering.c */
af_status_t af__meter_init(af_client_t *c, af_error_t *err);
af_status_t af__meter_sink(const af_meter_event_t *events, size_t n,
                           size_t *duplicates, void *ctx);
void af__meter_destroy(af_client_t *c);
/* Replaces the sink's transport (unit tests): fn gets the batch and fills
 * resp, returning a gRPC code. NULL restores RecordUsageStream. */
typedef int (*af__usage_send_fn)(
    void *ctx, const antifragility_v1_RecordUsageRequest *reqs, size_t n,
    antifragility_v1_RecordUsageStreamResponse *resp);
void af__meter_set_send(af_client_t *c, af__usage_send_fn fn, void *ctx);
/* Event conversion (exposed for the wire tests). */
void af__meter_event_to_pb(const af_meter_event_t *e,
                           antifragility_v1_UsageEvent *pb);

/* health_sub.c */
void af__health_stop_all(af_client_t *c);

/* Backoff: returns the next delay, jittered to [d/2, d] for the current d
 * (*cur_ms), and doubles *cur_ms up to max_ms. */
uint64_t af__backoff_next(uint64_t *cur_ms, uint64_t max_ms, atomic_ulong *rng);

#endif /* AF_CLIENT_INTERNAL_H */
