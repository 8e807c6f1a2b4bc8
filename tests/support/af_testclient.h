/*
 * af_testclient.h - what the C integration tests use: an in-process afd
 * (af_ts_*) and a small synchronous client on the raw gRPC core C API with
 * protobuf-c messages (af_tc_*).
 *
 * Thread-safety: single-owner. One af_test_server_t, one af_tc_t and each
 * af_tc_stream_t belong to the thread that created it; different objects
 * may be used from different threads at once (each call and each stream
 * has its own completion queue, the channel is shared safely by gRPC).
 * No callbacks: every function waits on its own completion queue with a
 * bounded deadline.
 *
 * Lifetimes: close every stream (af_tc_stream_close) of a client before
 * af_tc_close, and every client before or after af_ts_stop (the client
 * and the server each hold their own grpc_init reference). Everything is
 * freed by the matching close/stop; the library is ASan/LSan clean.
 *
 * Errors: af_ts_* fail the current cmocka test (fail_msg) when the server
 * cannot start. af_tc_* never fail the test themselves: transport problems
 * come back as gRPC status codes (UNAVAILABLE, DEADLINE_EXCEEDED, ...). A
 * response that does not decode with resp_desc is reported as
 * GRPC_STATUS_INTERNAL "cannot decode response (N bytes)"; an OK status
 * without a response message as GRPC_STATUS_INTERNAL "no response
 * message".
 *
 * Timeouts: timeout_ms is the gRPC deadline of the call (<= 0: none);
 * wait_ms bounds one wait on a stream (< 0: until the call ends).
 */
#ifndef AF_TESTCLIENT_H
#define AF_TESTCLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/status.h>
#include <protobuf-c/protobuf-c.h>

#include "afd.h"
#include "config.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------ */
/* In-process server                                                  */

typedef struct af_test_server af_test_server_t;

/* af_config_init + listen "127.0.0.1:0", memory = true, log level from
 * AF_TEST_LOG ("error" | "warn" | "info" | "debug", default error). Cannot
 * fail. */
void af_ts_config_defaults(af_config_t *cfg);

/* Starts afd in-process (af_afd_start). cfg borrowed; NULL = the defaults
 * above. Returns owned (af_ts_stop). Fails the cmocka test on error. */
af_test_server_t *af_ts_start(const af_config_t *cfg);

/* The bound port. */
int af_ts_port(const af_test_server_t *ts);

/* The server (for af_server_stats), owned by ts. */
af_server_t *af_ts_server(af_test_server_t *ts);

/* The running engine, owned by ts, valid until af_ts_stop: to cause real
 * breaker transitions or read state directly (e.g.
 * af_breaker_registry_get_or_create on af_engine_breakers(e)). */
af_engine_t *af_ts_engine(af_test_server_t *ts);

/* Graceful stop (af_afd_stop: open streams end with OK) and free. NULL is
 * a no-op. */
void af_ts_stop(af_test_server_t *ts);

/* Makes a test PKI in dir with openssl (never committed): ca.pem/ca.key
 * (a CA), srv.pem/srv.key (signed by it, for 127.0.0.1 and localhost),
 * cli.pem/cli.key (a client certificate signed by it). Returns 0, or -1 if
 * openssl failed. dir borrowed. */
int af_test_make_certs(const char *dir);

/* ------------------------------------------------------------------ */
/* Client                                                             */

typedef struct af_tc af_tc_t;
typedef struct af_tc_stream af_tc_stream_t;

/* A final status: code and grpc-message (truncated to fit, "" if none). */
typedef struct {
  grpc_status_code code;
  char message[512];
} af_tc_status_t;

/* An insecure channel to 127.0.0.1:port (connects lazily on the first
 * call). Returns owned (af_tc_close). Never NULL (aborts on OOM). */
af_tc_t *af_tc_connect(int port);

/* The same with channel credentials (borrowed; NULL = insecure) and a
 * connection of its own, never shared with other channels of this
 * process (per-connection limits, TLS). */
af_tc_t *af_tc_connect_with(int port, grpc_channel_credentials *creds);

/* Destroys the channel. Every stream of c must be closed first. NULL is a
 * no-op. */
void af_tc_close(af_tc_t *c);

/* Unary call. method: full path ("/pkg.Service/Method"), borrowed. req
 * borrowed (packed before sending). md: NULL or a NULL-terminated list
 * key, value, key, value, ..., NULL of request metadata (borrowed; keys
 * lower case). On OK *resp is the decoded response (returns owned: free
 * with protobuf_c_message_free_unpacked(*resp, NULL)); otherwise
 * *resp = NULL. st (may be NULL) gets the status. Returns the code. */
grpc_status_code af_tc_unary(af_tc_t *c, const char *method,
                             const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *resp_desc,
                             ProtobufCMessage **resp, af_tc_status_t *st,
                             const char *const *md, int timeout_ms);

/* Same with raw request bytes (borrowed; len may be 0), for malformed
 * input tests. */
grpc_status_code af_tc_unary_raw(af_tc_t *c, const char *method,
                                 const void *bytes, size_t len,
                                 const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **resp, af_tc_status_t *st,
                                 int timeout_ms);

/* Client stream: sends the n messages reqs[0..n-1] (borrowed) in order,
 * half-closes and reads the one response (as af_tc_unary). If the server
 * ends the call early, the remaining messages are not sent and its status
 * is returned. */
grpc_status_code af_tc_client_stream(
    af_tc_t *c, const char *method, const ProtobufCMessage *const *reqs,
    size_t n, const ProtobufCMessageDescriptor *resp_desc,
    ProtobufCMessage **resp, af_tc_status_t *st, int timeout_ms);

/* Bidi, one exchange: sends req, half-closes, reads the first response and
 * the final status. *resp is the decoded first response whenever one
 * arrived (even if the final status is not OK; returns owned), else NULL.
 * Meant for lock-step services like server reflection. */
grpc_status_code af_tc_bidi_once(af_tc_t *c, const char *method,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **resp, af_tc_status_t *st,
                                 int timeout_ms);

/* Server stream: sends req (borrowed) with md (as af_tc_unary) and
 * half-closes. timeout_ms: deadline for the whole call. Returns owned
 * (af_tc_stream_close). Never NULL (aborts on OOM); a call that cannot
 * start shows as a stream that ends at once with its status. */
af_tc_stream_t *af_tc_stream_open(af_tc_t *c, const char *method,
                                  const ProtobufCMessage *req,
                                  const ProtobufCMessageDescriptor *resp_desc,
                                  const char *const *md, int timeout_ms);

/* Waits up to wait_ms for the next message: 1 = *out set (returns owned,
 * free with protobuf_c_message_free_unpacked), 0 = nothing yet (the read
 * stays pending; call again), -1 = the stream ended (see
 * af_tc_stream_status). A message that does not decode ends the stream:
 * the call is cancelled and its status becomes INTERNAL "cannot decode
 * stream message". *out is NULL unless 1 is returned. */
int af_tc_stream_next(af_tc_stream_t *s, int wait_ms, ProtobufCMessage **out);

/* Waits up to wait_ms for the end of the stream (reading and dropping any
 * messages still arriving); returns its status code (st may be NULL), or
 * GRPC_STATUS__DO_NOT_USE (-1) if it has not ended by then (st untouched).
 * May be called again after it returned the status (same result). */
grpc_status_code af_tc_stream_status(af_tc_stream_t *s, int wait_ms,
                                     af_tc_status_t *st);

/* Client cancel (the status becomes CANCELLED unless the call already
 * ended). Returns at once; the stream must still be closed. */
void af_tc_stream_cancel(af_tc_stream_t *s);

/* Cancels the call if it is still open, waits for its operations to
 * complete and frees everything. NULL is a no-op. */
void af_tc_stream_close(af_tc_stream_t *s);

/* Monotonic clock in ms, for measuring delays. */
int64_t af_tc_now_ms(void);

#ifdef __cplusplus
}
#endif
#endif /* AF_TESTCLIENT_H */
