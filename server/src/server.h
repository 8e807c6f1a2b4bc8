/*
 * server.h - the afd RPC framework: gRPC core + protobuf-c, completion
 * queues, per-call state machines, server streams with coalescing.
 *
 * Thread-safety: af_server_create / af_server_add_* / af_server_destroy are
 * single-owner (one thread, before af_server_start resp. after
 * af_server_shutdown). af_server_start, af_server_begin_shutdown and
 * af_server_shutdown are called by the owner. Everything on af_rpc_t and
 * af_stream_t is thread-safe: an RPC may be answered, and a stream notified
 * or finished, from any thread.
 *
 * Callbacks (handlers, on_message, on_end, on_start, fill, done) run on the
 * server's own threads: the CQ worker threads (af_server_options_t.threads)
 * or the server's dispatch thread (stream notifications and heartbeats).
 * They must not block: engine calls are short, anything slow goes to its
 * own thread and answers later with af_rpc_reply. No framework lock is held
 * while a callback runs, so callbacks may call any function in this header.
 *
 * Lifecycle:
 *   af_server_options_init(&opt); ... af_server_create(&srv, &opt);
 *   af_server_add_unary / _client_stream / _server_stream / _bidi ...
 *   af_server_start(srv, &port);            // threads run, calls flow
 *   af_server_begin_shutdown(srv);          // health NOT_SERVING, streams
 *                                           // end with OK, stop accepting
 *   (app drains: flush metering, answer pending async RPCs)
 *   af_server_shutdown(srv);                // grace, cancel, drain, join
 *   af_server_destroy(srv);
 *
 * Every request is decoded before the handler runs. A request that does not
 * decode is answered INVALID_ARGUMENT "malformed request: ..." and the
 * handler never sees it. For every method whose path starts with
 * opt.hash_method_prefix ("/antifragility.v1."), a present
 * `x-constitutional-hash` metadata value that differs from opt.hash is
 * refused with FAILED_PRECONDITION "constitutional hash mismatch: expected
 * <hash>"; absent metadata is accepted. Unknown methods are answered
 * UNIMPLEMENTED at once.
 *
 * Message ownership: a request passed to a callback is borrowed for the
 * duration of the callback (the framework frees it afterwards). A response
 * passed to af_rpc_reply / af_rpc_send is borrowed: it is packed before the
 * function returns, so it may live on the stack.
 */
#ifndef AF_SERVER_H
#define AF_SERVER_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "af/clock.h"
#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define AF_PRINTF(fmt_idx, arg_idx)                                            \
  __attribute__((format(printf, fmt_idx, arg_idx)))
#else
#define AF_PRINTF(fmt_idx, arg_idx)
#endif

/* Largest request metadata (all headers of one call) the server accepts;
 * larger is refused by gRPC before any handler runs. */
#define AF_SERVER_MAX_METADATA_BYTES 16384

typedef struct af_server af_server_t;
/* One in-flight call (unary, client-stream or bidi). */
typedef struct af_rpc af_rpc_t;
/* One in-flight server-streaming call. */
typedef struct af_stream af_stream_t;

/* ------------------------------------------------------------------ */
/* Options                                                            */

typedef struct {
  /* "host:port". Port 0 picks a free port (see af_server_start).
   * Default "127.0.0.1:50051". Borrowed: copied by af_server_create. */
  const char *listen_addr;
  /* CQ worker threads. Default 1, range 1..64. (Streaming calls complete
   * on a second queue with one thread of its own; see server.c.) */
  int threads;
  /* Open server streams allowed at once; one more is refused with
   * RESOURCE_EXHAUSTED "too many watchers (limit N)". Default 10000. */
  uint32_t max_watchers;
  /* The same per connection (client address and port): RESOURCE_EXHAUSTED
   * "too many watchers on this connection (limit N)". Default 1000. */
  uint32_t max_watchers_per_conn;
  /* TLS: PEM text (not paths) of the server certificate chain and its
   * private key; both or neither. With tls_client_ca_pem as well, clients
   * must present a certificate signed by it (mTLS). NULL / "" = plaintext.
   * Borrowed (copied). */
  const char *tls_cert_pem;
  const char *tls_key_pem;
  const char *tls_client_ca_pem;
  /* A stream that sent nothing for this long gets fill(heartbeat=true).
   * 0 disables heartbeats. Default 15000. */
  uint32_t heartbeat_ms;
  /* Constitutional hash checked on every method under hash_method_prefix.
   * Default AF_CONSTITUTIONAL_HASH_DEFAULT. NULL or "" disables the check.
   * Borrowed (copied). */
  const char *hash;
  /* Default "/antifragility.v1.". Borrowed (copied). */
  const char *hash_method_prefix;
  /* Largest request / response message. Default 4 MiB. */
  uint32_t max_message_bytes;
  /* af_server_shutdown waits this long for calls to finish by themselves
   * before cancelling them. Default 2000. */
  uint32_t shutdown_grace_ms;
  /* Clock for heartbeats and the grace period. NULL = system. Retained:
   * must outlive the server. */
  const af_clock_t *clock;
} af_server_options_t;

/* Fills *opt with the defaults above. Cannot fail. */
void af_server_options_init(af_server_options_t *opt);

/* ------------------------------------------------------------------ */
/* Creation and registration (owner thread, before af_server_start)   */

/* Calls grpc_init(), creates the gRPC server and its completion queue and
 * registers grpc.reflection v1/v1alpha (see reflection.h). opt borrowed
 * (NULL = defaults). Returns AF_OK and *out (owned, free with
 * af_server_destroy); AF_EINVAL for a bad option (err says which),
 * AF_ENOMEM. On failure *out is untouched and nothing leaks. */
af_status_t af_server_create(af_server_t **out, const af_server_options_t *opt,
                             af_error_t *err);

/* Unary handler. req is the decoded request (borrowed for the call). The
 * handler must answer exactly once with af_rpc_reply / af_rpc_fail /
 * af_rpc_fail_status, now or later from any thread. */
typedef void (*af_unary_fn)(af_rpc_t *rpc, const ProtobufCMessage *req,
                            void *ctx);

/* Client-stream callbacks. on_message runs once per request message, in
 * order; it returns GRPC_STATUS_OK to continue, anything else aborts the
 * call (if it did not call af_rpc_fail itself, the client gets that code
 * with message "aborted"). on_end runs when the client half-closes and
 * must answer exactly once (now or later). If the call breaks first
 * (cancel, disconnect, shutdown), on_end still runs and must still answer
 * (the answer is dropped). After an abort (on_message failed, or a
 * malformed message) on_end does not run: keep per-call state in
 * af_rpc_set_user so its free function cleans up. */
typedef grpc_status_code (*af_client_msg_fn)(af_rpc_t *rpc,
                                             const ProtobufCMessage *msg,
                                             void *ctx);
typedef void (*af_client_end_fn)(af_rpc_t *rpc, void *ctx);

/* Bidi (lock-step) callback: one call per request message. It may send at
 * most one response with af_rpc_send before returning; the next request
 * is read after that response went out. Returns GRPC_STATUS_OK to go on;
 * anything else ends the call with that status (message from af_rpc_fail
 * if called, else "aborted"). Client half-close ends the call with OK. */
typedef grpc_status_code (*af_bidi_msg_fn)(af_rpc_t *rpc,
                                           const ProtobufCMessage *msg,
                                           void *ctx);

/* Server-stream start: validate req, then either refuse with
 * af_stream_fail or call af_stream_set_producer exactly once. Returning
 * without doing either ends the stream with INTERNAL. */
typedef void (*af_stream_start_fn)(af_stream_t *st, const ProtobufCMessage *req,
                                   void *ctx);

/* Registers a method by its full path ("/pkg.Service/Method") with the
 * protobuf-c descriptor of its request message (retained: static). ctx is
 * retained and passed to the callbacks. Returns AF_EINVAL for a bad path,
 * NULL argument or once started, AF_EEXIST for a duplicate path,
 * AF_ENOMEM. */
af_status_t af_server_add_unary(af_server_t *srv, const char *path,
                                const ProtobufCMessageDescriptor *req_desc,
                                af_unary_fn handler, void *ctx);
af_status_t
af_server_add_client_stream(af_server_t *srv, const char *path,
                            const ProtobufCMessageDescriptor *req_desc,
                            af_client_msg_fn on_message,
                            af_client_end_fn on_end, void *ctx);
af_status_t
af_server_add_server_stream(af_server_t *srv, const char *path,
                            const ProtobufCMessageDescriptor *req_desc,
                            af_stream_start_fn on_start, void *ctx);
af_status_t af_server_add_bidi(af_server_t *srv, const char *path,
                               const ProtobufCMessageDescriptor *req_desc,
                               af_bidi_msg_fn on_message, void *ctx);

/* Authorization: runs on a CQ thread for every call to a registered
 * method, before its request is decoded, the constitutional hash is
 * checked or a handler runs. Returns GRPC_STATUS_OK to admit the call
 * (and may record who called with af_rpc_set_identity), or the status to
 * refuse it with (UNAUTHENTICATED, PERMISSION_DENIED) after writing the
 * message into msg[cap]. Must not block. */
typedef grpc_status_code (*af_authorize_fn)(af_rpc_t *rpc, const char *method,
                                            void *ctx, char *msg, size_t cap);

/* Sets the authorizer (NULL = every call admitted). ctx retained. Owner
 * thread, before af_server_start; AF_EINVAL after. */
af_status_t af_server_set_authorizer(af_server_t *srv, af_authorize_fn fn,
                                     void *ctx);

/* Adds fn(ctx) to the hooks af_server_begin_shutdown runs (in
 * registration order, on the caller's thread) after the server is marked
 * shutting down and before streams are finished. Used by grpc_health.c.
 * Owner thread, before start. AF_ENOMEM. */
af_status_t af_server_on_begin_shutdown(af_server_t *srv, void (*fn)(void *),
                                        void *ctx);
/* fn(ctx) runs once from af_server_destroy (frees state hung on the
 * server, e.g. the health registry). */
af_status_t af_server_on_destroy(af_server_t *srv, void (*fn)(void *),
                                 void *ctx);

/* True if a method with this service name ("pkg.Service") is registered. */
bool af_server_has_service(const af_server_t *srv, const char *service);

/* ------------------------------------------------------------------ */
/* Running                                                            */

/* Binds (grpc.so_reuseport=0: a port in use is an error), starts the
 * server, posts the request pools and starts the worker and dispatch
 * threads. *bound_port (may be NULL) receives the actual port. Returns
 * AF_EIO with err "cannot listen on ADDR (address in use or invalid)",
 * AF_ESTATE if already started, AF_ENOMEM. On failure the server can only
 * be destroyed. */
af_status_t af_server_start(af_server_t *srv, int *bound_port, af_error_t *err);

/* True from af_server_begin_shutdown on. Thread-safe. */
bool af_server_shutting_down(const af_server_t *srv);

/* Starts a graceful stop: marks the server shutting down, runs the
 * begin-shutdown hooks (health -> NOT_SERVING), finishes every open stream
 * with OK (a pending change is still sent first) and stops accepting
 * connections and calls. In-flight unary / client-stream calls continue
 * so the app can still answer them. Idempotent. Owner thread. */
void af_server_begin_shutdown(af_server_t *srv);

/* Completes the stop (calls af_server_begin_shutdown if needed): waits up
 * to shutdown_grace_ms for all calls to end, then cancels the rest
 * (clients see UNAVAILABLE), waits until every call state is freed (the
 * app must have answered each RPC it holds and released each stream it
 * retained), shuts the completion queue down and joins all threads.
 * Idempotent. Owner thread. */
void af_server_shutdown(af_server_t *srv);

/* Shuts down if needed, destroys everything, runs on_destroy hooks and
 * calls grpc_shutdown(). NULL is a no-op. */
void af_server_destroy(af_server_t *srv);

/* Counters since create. Thread-safe snapshot (each field is exact; the
 * set is not one atomic snapshot while calls run). */
typedef struct {
  uint64_t calls_started;    /* calls matched to a method or unknown */
  uint64_t calls_finished;   /* status sent or call broken */
  uint64_t by_code[17];      /* statuses sent, by grpc_status_code */
  uint64_t streams_open;     /* server streams now open */
  uint64_t stream_messages;  /* messages sent on server streams */
  uint64_t stream_coalesced; /* notifies folded into a later send */
  uint64_t unimplemented;    /* calls to unknown methods */
} af_server_stats_t;
void af_server_stats(const af_server_t *srv, af_server_stats_t *out);

/* ------------------------------------------------------------------ */
/* Unary, client-stream and bidi calls                                */

/* Sends resp (borrowed; packed at once; NULL sends a status without a
 * message, which clients treat as an error: always pass one) with status OK and
 * ends the call. Any thread. Exactly one of reply / fail per call; after it the
 * rpc pointer must not be used. Answering after the client went away is
 * harmless. An answer larger than max_message_bytes becomes RESOURCE_EXHAUSTED.
 */
void af_rpc_reply(af_rpc_t *rpc, const ProtobufCMessage *resp);

/* Ends the call with code (!= GRPC_STATUS_OK) and a printf message. Same
 * rules as af_rpc_reply. Inside a client-stream on_message or a bidi
 * on_message, this only records the status; return it from the
 * callback. */
void af_rpc_fail(af_rpc_t *rpc, grpc_status_code code, const char *fmt, ...)
    AF_PRINTF(3, 4);
void af_rpc_failv(af_rpc_t *rpc, grpc_status_code code, const char *fmt,
                  va_list ap) AF_PRINTF(3, 0);

/* Bidi only: sends one response (borrowed) from inside on_message. Returns
 * AF_ESTATE if a response was already sent for this message. */
af_status_t af_rpc_send(af_rpc_t *rpc, const ProtobufCMessage *resp);

/* First value of request metadata key (lower case), or NULL. Returns a
 * NUL-terminated copy owned by the rpc, valid until the call is answered.
 * Any thread that holds the rpc. */
const char *af_rpc_metadata(af_rpc_t *rpc, const char *key);

/* "ipv4:127.0.0.1:54321"-style peer address, owned by the rpc ("" if
 * unknown). */
const char *af_rpc_peer(af_rpc_t *rpc);

/* Who called, as the authorizer recorded it: identity (copied; "" =
 * not authenticated) and role (an application value, 0 = none). The
 * returned string is owned by the rpc, valid until it is answered. */
void af_rpc_set_identity(af_rpc_t *rpc, const char *identity, int role);
const char *af_rpc_identity(af_rpc_t *rpc);
int af_rpc_role(af_rpc_t *rpc);

/* Full method path ("/pkg.Service/Method"), owned by the server. */
const char *af_rpc_method(const af_rpc_t *rpc);

/* True once the client cancelled, disconnected or the deadline passed. */
bool af_rpc_cancelled(const af_rpc_t *rpc);

/* Per-call user state: takes ptr; free_fn(ptr) (may be NULL) runs when the
 * call state is freed, on a server thread. Replaces (and frees) an earlier
 * value. */
void af_rpc_set_user(af_rpc_t *rpc, void *ptr, void (*free_fn)(void *));
void *af_rpc_user(const af_rpc_t *rpc);

/* ------------------------------------------------------------------ */
/* Server streams                                                     */

/* Frees a message returned by a fill function after it was packed. */
typedef void (*af_msg_free_fn)(ProtobufCMessage *msg);

/* Produces the next message. Called (a) right after on_start, for the
 * current state, (b) after af_stream_notify when no send is in flight (a
 * notify during a send marks the stream dirty and fill runs once more
 * when the send completes: latest wins), (c) with heartbeat=true when
 * nothing was sent for heartbeat_ms. Returns the message to send (NULL =
 * nothing to send now) and sets *free_out to how to release it after
 * packing (left NULL = not freed by the framework, e.g. a message owned
 * by user). Never runs concurrently with itself for one stream. */
typedef ProtobufCMessage *(*af_stream_fill_fn)(af_stream_t *st, bool heartbeat,
                                               void *user,
                                               af_msg_free_fn *free_out);
/* Called exactly once when a stream that has a producer ends for any
 * reason (client cancel, disconnect, deadline, af_stream_finish, server
 * shutdown), after the last fill returned. The app unsubscribes here. */
typedef void (*af_stream_done_fn)(af_stream_t *st, void *user);

/* Inside on_start only. user retained until done runs. The first fill
 * runs after on_start returns. AF_ESTATE if called twice or after
 * af_stream_fail. */
af_status_t af_stream_set_producer(af_stream_t *st, af_stream_fill_fn fill,
                                   af_stream_done_fn done, void *user);

/* Inside on_start only: refuse the stream with code and message. */
void af_stream_fail(af_stream_t *st, grpc_status_code code, const char *fmt,
                    ...) AF_PRINTF(3, 4);

/* Something changed: schedule a fill. Any thread, never blocks, never
 * calls fill on the caller's thread. After the stream ended it is a no-op.
 */
void af_stream_notify(af_stream_t *st);

/* Ends the stream from the server side with code and message (msg
 * borrowed; NULL = ""). A message already being sent completes first.
 * Any thread. Idempotent. */
void af_stream_finish(af_stream_t *st, grpc_status_code code, const char *msg);

/* Keep a stream across threads (e.g. in a subscriber list). Each retain
 * needs one release; the state is freed at the last release after the
 * stream ended. Any thread. */
void af_stream_retain(af_stream_t *st);
void af_stream_release(af_stream_t *st);

/* 1, 2, 3, ... per stream. Any thread. */
uint64_t af_stream_seq_next(af_stream_t *st);

/* The underlying call, for af_rpc_metadata / af_rpc_peer / af_rpc_method /
 * af_rpc_set_user on a stream (never reply/fail it). */
af_rpc_t *af_stream_rpc(af_stream_t *st);

/* True once the stream ended (done ran or is about to). */
bool af_stream_ended(const af_stream_t *st);

/* The server a call belongs to. */
af_server_t *af_rpc_server(const af_rpc_t *rpc);

/* Internal to server/ (grpc_health.c): one slot for the health registry,
 * set before start. Not for handlers. */
void af__server_set_health(af_server_t *srv, void *health);
void *af__server_health(const af_server_t *srv);

#ifdef __cplusplus
}
#endif
#endif /* AF_SERVER_H */
