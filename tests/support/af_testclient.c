/*
 * af_testclient.c - in-process afd + a synchronous gRPC core client for the
 * integration tests (see af_testclient.h).
 *
 * Design: every call and every stream has its own `next` completion queue,
 * so each wait can carry a timeout and no two objects ever share a queue.
 * A tag is the address of an op_t (pending flag + success) inside the
 * call's state; an event just clears the flag, the caller looks at what
 * completed. Unary, client-stream and bidi-once calls share one path
 * (run_call): RECV_STATUS_ON_CLIENT alone up front, SEND_INITIAL_METADATA,
 * one SEND_MESSAGE batch per message (only one may be outstanding), then
 * SEND_CLOSE + RECV_INITIAL_METADATA + RECV_MESSAGE, then the status.
 * Server streams: status up front, one batch sending the request and
 * half-closing, then one RECV_MESSAGE at a time.
 *
 * Ownership (the gRPC rules from the notes): we destroy every byte buffer
 * we send or receive, unref the status details slice and our metadata
 * slices, destroy metadata arrays before unreffing the call, and shut down
 * and drain each completion queue before destroying it. A call or stream is
 * freed only once none of its batches is pending (after a cancel if
 * needed), so no tag outlives its state.
 *
 * Threading: single-owner per object; nothing here starts threads.
 */
#include "af_testclient.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "log.h"

/* ------------------------------------------------------------------ */
/* Small helpers                                                      */

static void *xcalloc(size_t n, size_t size)
{
  void *p = calloc(n, size);
  if (p == NULL) {
    fprintf(stderr, "af_testclient: out of memory\n");
    abort();
  }
  return p;
}

static gpr_timespec deadline_in(int ms)
{
  if (ms < 0) {
    return gpr_inf_future(GPR_CLOCK_MONOTONIC);
  }
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static gpr_timespec call_deadline(int timeout_ms)
{
  return timeout_ms <= 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC)
                         : deadline_in(timeout_ms);
}

int64_t af_tc_now_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void set_status(af_tc_status_t *st, grpc_status_code code,
                       const char *fmt, ...) AF_PRINTF(3, 4);
static void set_status(af_tc_status_t *st, grpc_status_code code,
                       const char *fmt, ...)
{
  st->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->message, sizeof st->message, fmt, ap);
  va_end(ap);
}

static void status_from_slice(af_tc_status_t *st, grpc_status_code code,
                              grpc_slice details)
{
  size_t len = GRPC_SLICE_LENGTH(details);
  if (len >= sizeof st->message) {
    len = sizeof st->message - 1;
  }
  st->code = code;
  memcpy(st->message, GRPC_SLICE_START_PTR(details), len);
  st->message[len] = '\0';
}

/* Packs m into a new byte buffer (returns owned: grpc_byte_buffer_destroy). */
static grpc_byte_buffer *pack_message(const ProtobufCMessage *m)
{
  size_t n = protobuf_c_message_get_packed_size(m);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

static grpc_byte_buffer *pack_bytes(const void *bytes, size_t len)
{
  grpc_slice s = grpc_slice_from_copied_buffer(bytes, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* Decodes bb (borrowed) with desc; NULL if it does not decode. *len gets
 * the (decompressed) size. */
static ProtobufCMessage *unpack_message(grpc_byte_buffer *bb,
                                        const ProtobufCMessageDescriptor *desc,
                                        size_t *len)
{
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb)) {
    *len = 0;
    return NULL;
  }
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  *len = GRPC_SLICE_LENGTH(s);
  ProtobufCMessage *m =
      protobuf_c_message_unpack(desc, NULL, *len, GRPC_SLICE_START_PTR(s));
  grpc_slice_unref(s);
  return m;
}

/* Request metadata built from a NULL-terminated key, value, ... list. */
typedef struct {
  grpc_metadata *items;
  size_t count;
} md_list_t;

static void md_build(md_list_t *md, const char *const *kv)
{
  md->items = NULL;
  md->count = 0;
  if (kv == NULL) {
    return;
  }
  size_t n = 0;
  while (kv[2 * n] != NULL && kv[2 * n + 1] != NULL) {
    n++;
  }
  if (n == 0) {
    return;
  }
  md->items = xcalloc(n, sizeof *md->items);
  for (size_t i = 0; i < n; i++) {
    md->items[i].key = grpc_slice_from_copied_string(kv[2 * i]);
    md->items[i].value = grpc_slice_from_copied_string(kv[2 * i + 1]);
  }
  md->count = n;
}

static void md_free(md_list_t *md)
{
  for (size_t i = 0; i < md->count; i++) {
    grpc_slice_unref(md->items[i].key);
    grpc_slice_unref(md->items[i].value);
  }
  free(md->items);
  md->items = NULL;
  md->count = 0;
}

/* One batch in flight; its address is the tag. */
typedef struct {
  bool pending;
  bool success;
} op_t;

/* Takes one event from cq (waiting until deadline). False on timeout. */
static bool pump_one(grpc_completion_queue *cq, gpr_timespec deadline)
{
  grpc_event ev = grpc_completion_queue_next(cq, deadline, NULL);
  if (ev.type != GRPC_OP_COMPLETE) {
    return false;
  }
  op_t *op = ev.tag;
  op->pending = false;
  op->success = ev.success != 0;
  return true;
}

/* Waits until op completed or deadline. True if it completed. */
static bool wait_op(grpc_completion_queue *cq, op_t *op, gpr_timespec deadline)
{
  while (op->pending) {
    if (!pump_one(cq, deadline)) {
      return false;
    }
  }
  return true;
}

static grpc_call_error start_batch(grpc_call *call, const grpc_op *ops,
                                   size_t n, op_t *op)
{
  op->pending = true;
  op->success = false;
  grpc_call_error e = grpc_call_start_batch(call, ops, n, op, NULL);
  if (e != GRPC_CALL_OK) {
    op->pending = false;
  }
  return e;
}

static void cq_destroy(grpc_completion_queue *cq)
{
  grpc_completion_queue_shutdown(cq);
  while (
      grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
          .type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
}

/* ------------------------------------------------------------------ */
/* In-process server                                                  */

struct af_test_server {
  af_afd_t *afd;
  int port;
};

void af_ts_config_defaults(af_config_t *cfg)
{
  af_config_init(cfg);
  snprintf(cfg->listen, sizeof cfg->listen, "%s", "127.0.0.1:0");
  cfg->memory = true;
  cfg->log_level = AF_LOG_ERROR;
  const char *lv = getenv("AF_TEST_LOG");
  af_log_level_t level;
  if (lv != NULL && af_log_level_parse(lv, &level)) {
    cfg->log_level = level;
  }
}

af_test_server_t *af_ts_start(const af_config_t *cfg)
{
  af_config_t defaults;
  if (cfg == NULL) {
    af_ts_config_defaults(&defaults);
    cfg = &defaults;
  }
  af_test_server_t *ts = xcalloc(1, sizeof *ts);
  af_error_t err;
  af_error_clear(&err);
  af_status_t s = af_afd_start(cfg, &ts->afd, &ts->port, &err);
  if (s != AF_OK) {
    free(ts);
    fail_msg("af_ts_start: af_afd_start on %s: %s (%s)", cfg->listen,
             err.message, af_status_str(s));
    return NULL;
  }
  return ts;
}

int af_ts_port(const af_test_server_t *ts) { return ts->port; }

af_server_t *af_ts_server(af_test_server_t *ts)
{
  return af_afd_server(ts->afd);
}

af_engine_t *af_ts_engine(af_test_server_t *ts)
{
  return af_afd_engine(ts->afd);
}

void af_ts_stop(af_test_server_t *ts)
{
  if (ts == NULL) {
    return;
  }
  af_afd_stop(ts->afd);
  free(ts);
}

int af_test_make_certs(const char *dir)
{
  static const char key[] = "openssl req -newkey ec -pkeyopt "
                            "ec_paramgen_curve:prime256v1 -nodes";
  char cmd[2048];
  snprintf(cmd, sizeof cmd,
           "cd '%s' && "
           "printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\\n' > san.ext"
           " && %s -x509 -keyout ca.key -out ca.pem -days 2"
           " -subj /CN=af-test-ca >/dev/null 2>&1"
           " && %s -keyout srv.key -out srv.csr -subj /CN=localhost"
           " >/dev/null 2>&1"
           " && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key"
           " -CAcreateserial -out srv.pem -days 2 -extfile san.ext"
           " >/dev/null 2>&1"
           " && %s -keyout cli.key -out cli.csr -subj /CN=af-test-client"
           " >/dev/null 2>&1"
           " && openssl x509 -req -in cli.csr -CA ca.pem -CAkey ca.key"
           " -CAcreateserial -out cli.pem -days 2 >/dev/null 2>&1",
           dir, key, key, key);
  return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------------ */
/* Channel                                                            */

struct af_tc {
  grpc_channel *ch;
};

af_tc_t *af_tc_connect(int port)
{
  grpc_init();
  af_tc_t *c = xcalloc(1, sizeof *c);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  c->ch = grpc_channel_create(target, cr, NULL);
  grpc_channel_credentials_release(cr);
  return c;
}

af_tc_t *af_tc_connect_with(int port, grpc_channel_credentials *creds)
{
  grpc_init();
  af_tc_t *c = xcalloc(1, sizeof *c);
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  grpc_arg arg;
  memset(&arg, 0, sizeof arg);
  arg.type = GRPC_ARG_INTEGER;
  arg.key = (char *)GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
  arg.value.integer = 1;
  grpc_channel_args args = {1, &arg};
  grpc_channel_credentials *own = NULL;
  if (creds == NULL) {
    own = grpc_insecure_credentials_create();
    creds = own;
  }
  c->ch = grpc_channel_create(target, creds, &args);
  if (own != NULL) {
    grpc_channel_credentials_release(own);
  }
  return c;
}

void af_tc_close(af_tc_t *c)
{
  if (c == NULL) {
    return;
  }
  grpc_channel_destroy(c->ch);
  free(c);
  grpc_shutdown();
}

static grpc_call *create_call(af_tc_t *c, grpc_completion_queue *cq,
                              const char *method, int timeout_ms)
{
  grpc_slice m = grpc_slice_from_copied_string(method);
  grpc_call *call =
      grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, m,
                               NULL, call_deadline(timeout_ms), NULL);
  grpc_slice_unref(m);
  return call;
}

/* ------------------------------------------------------------------ */
/* Unary, client stream, bidi once                                    */

/* Sends msgs[0..n-1] (borrowed) after md, half-closes, reads one response
 * and the status. keep_resp: hand out a decoded response even when the
 * status is not OK (bidi once). */
static grpc_status_code run_call(af_tc_t *c, const char *method,
                                 grpc_byte_buffer *const *msgs, size_t n,
                                 const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **resp, bool keep_resp,
                                 af_tc_status_t *st_out, const char *const *kv,
                                 int timeout_ms)
{
  af_tc_status_t st;
  memset(&st, 0, sizeof st);
  if (resp != NULL) {
    *resp = NULL;
  }
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  grpc_call *call = create_call(c, cq, method, timeout_ms);
  md_list_t md;
  md_build(&md, kv);

  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_byte_buffer *recv_bb = NULL;
  op_t op_status = {0}, op_send = {0}, op_final = {0};
  bool started = true;

  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[0].data.recv_status_on_client.status = &code;
  ops[0].data.recv_status_on_client.status_details = &details;
  if (start_batch(call, ops, 1, &op_status) != GRPC_CALL_OK) {
    started = false;
  }

  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = md.count;
  ops[0].data.send_initial_metadata.metadata = md.items;
  if (started && start_batch(call, ops, 1, &op_send) == GRPC_CALL_OK) {
    wait_op(cq, &op_send, gpr_inf_future(GPR_CLOCK_MONOTONIC));
  }
  bool sending = started && op_send.success;
  for (size_t i = 0; sending && i < n; i++) {
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_MESSAGE;
    ops[0].data.send_message.send_message = msgs[i];
    if (start_batch(call, ops, 1, &op_send) != GRPC_CALL_OK) {
      break;
    }
    wait_op(cq, &op_send, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    sending = op_send.success && op_status.pending;
  }

  if (started) {
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[2].op = GRPC_OP_RECV_MESSAGE;
    ops[2].data.recv_message.recv_message = &recv_bb;
    if (start_batch(call, ops, 3, &op_final) != GRPC_CALL_OK) {
      /* Half-close refused (e.g. already closed): just read. */
      if (start_batch(call, ops + 1, 2, &op_final) != GRPC_CALL_OK) {
        grpc_call_cancel(call, NULL);
      }
    }
    wait_op(cq, &op_final, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    wait_op(cq, &op_status, gpr_inf_future(GPR_CLOCK_MONOTONIC));
    status_from_slice(&st, code, details);
  } else {
    set_status(&st, GRPC_STATUS_INTERNAL, "cannot start the call");
  }

  ProtobufCMessage *m = NULL;
  if (recv_bb != NULL && (st.code == GRPC_STATUS_OK || keep_resp)) {
    size_t len = 0;
    m = unpack_message(recv_bb, resp_desc, &len);
    if (m == NULL) {
      set_status(&st, GRPC_STATUS_INTERNAL,
                 "cannot decode response (%zu bytes)", len);
    }
  } else if (recv_bb == NULL && st.code == GRPC_STATUS_OK) {
    set_status(&st, GRPC_STATUS_INTERNAL, "no response message");
  }
  if (m != NULL && resp != NULL) {
    *resp = m;
  } else if (m != NULL) {
    protobuf_c_message_free_unpacked(m, NULL);
  }

  if (recv_bb != NULL) {
    grpc_byte_buffer_destroy(recv_bb);
  }
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  grpc_call_unref(call);
  md_free(&md);
  cq_destroy(cq);
  if (st_out != NULL) {
    *st_out = st;
  }
  return st.code;
}

grpc_status_code af_tc_unary(af_tc_t *c, const char *method,
                             const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *resp_desc,
                             ProtobufCMessage **resp, af_tc_status_t *st,
                             const char *const *md, int timeout_ms)
{
  grpc_byte_buffer *bb = pack_message(req);
  grpc_status_code code =
      run_call(c, method, &bb, 1, resp_desc, resp, false, st, md, timeout_ms);
  grpc_byte_buffer_destroy(bb);
  return code;
}

grpc_status_code af_tc_unary_raw(af_tc_t *c, const char *method,
                                 const void *bytes, size_t len,
                                 const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **resp, af_tc_status_t *st,
                                 int timeout_ms)
{
  grpc_byte_buffer *bb = pack_bytes(len > 0 ? bytes : "", len);
  grpc_status_code code =
      run_call(c, method, &bb, 1, resp_desc, resp, false, st, NULL, timeout_ms);
  grpc_byte_buffer_destroy(bb);
  return code;
}

grpc_status_code
af_tc_client_stream(af_tc_t *c, const char *method,
                    const ProtobufCMessage *const *reqs, size_t n,
                    const ProtobufCMessageDescriptor *resp_desc,
                    ProtobufCMessage **resp, af_tc_status_t *st, int timeout_ms)
{
  grpc_byte_buffer **bbs = xcalloc(n > 0 ? n : 1, sizeof *bbs);
  for (size_t i = 0; i < n; i++) {
    bbs[i] = pack_message(reqs[i]);
  }
  grpc_status_code code =
      run_call(c, method, bbs, n, resp_desc, resp, false, st, NULL, timeout_ms);
  for (size_t i = 0; i < n; i++) {
    grpc_byte_buffer_destroy(bbs[i]);
  }
  free(bbs);
  return code;
}

grpc_status_code af_tc_bidi_once(af_tc_t *c, const char *method,
                                 const ProtobufCMessage *req,
                                 const ProtobufCMessageDescriptor *resp_desc,
                                 ProtobufCMessage **resp, af_tc_status_t *st,
                                 int timeout_ms)
{
  grpc_byte_buffer *bb = pack_message(req);
  grpc_status_code code =
      run_call(c, method, &bb, 1, resp_desc, resp, true, st, NULL, timeout_ms);
  grpc_byte_buffer_destroy(bb);
  return code;
}

/* ------------------------------------------------------------------ */
/* Server streams                                                     */

struct af_tc_stream {
  grpc_completion_queue *cq;
  grpc_call *call;
  const ProtobufCMessageDescriptor *desc;
  md_list_t md;
  grpc_byte_buffer *send_bb;
  grpc_metadata_array init_md;
  grpc_metadata_array trail_md;
  grpc_status_code code;
  grpc_slice details;
  grpc_byte_buffer *recv_bb;
  op_t op_start;
  op_t op_status;
  op_t op_recv;
  bool reads_ended;
  /* A local failure (decode error, start failure) overrides the status. */
  bool local_error;
  af_tc_status_t local_st;
};

af_tc_stream_t *af_tc_stream_open(af_tc_t *c, const char *method,
                                  const ProtobufCMessage *req,
                                  const ProtobufCMessageDescriptor *resp_desc,
                                  const char *const *md, int timeout_ms)
{
  af_tc_stream_t *s = xcalloc(1, sizeof *s);
  s->cq = grpc_completion_queue_create_for_next(NULL);
  s->call = create_call(c, s->cq, method, timeout_ms);
  s->desc = resp_desc;
  md_build(&s->md, md);
  s->send_bb = pack_message(req);
  grpc_metadata_array_init(&s->init_md);
  grpc_metadata_array_init(&s->trail_md);
  s->code = GRPC_STATUS_UNKNOWN;
  s->details = grpc_empty_slice();

  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->trail_md;
  ops[0].data.recv_status_on_client.status = &s->code;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  grpc_call_error e1 = start_batch(s->call, ops, 1, &s->op_status);

  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = s->md.count;
  ops[0].data.send_initial_metadata.metadata = s->md.items;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = s->send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
  grpc_call_error e2 = start_batch(s->call, ops, 4, &s->op_start);
  if (e1 != GRPC_CALL_OK || e2 != GRPC_CALL_OK) {
    s->local_error = true;
    set_status(&s->local_st, GRPC_STATUS_INTERNAL,
               "cannot start the call (grpc_call_error %d / %d)", (int)e1,
               (int)e2);
    s->reads_ended = true;
    grpc_call_cancel(s->call, NULL);
  }
  return s;
}

/* Starts a RECV_MESSAGE if none is pending and reads may go on. */
static void start_recv(af_tc_stream_t *s)
{
  if (s->reads_ended || s->op_recv.pending) {
    return;
  }
  s->recv_bb = NULL;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_RECV_MESSAGE;
  op.data.recv_message.recv_message = &s->recv_bb;
  if (start_batch(s->call, &op, 1, &s->op_recv) != GRPC_CALL_OK) {
    s->reads_ended = true;
  }
}

/* After op_recv completed: 1 and *out (or dropped if out is NULL), or -1
 * when the stream has no more messages. */
static int take_recv(af_tc_stream_t *s, ProtobufCMessage **out)
{
  grpc_byte_buffer *bb = s->recv_bb;
  s->recv_bb = NULL;
  if (bb == NULL || !s->op_recv.success) {
    if (bb != NULL) {
      grpc_byte_buffer_destroy(bb);
    }
    s->reads_ended = true;
    return -1;
  }
  size_t len = 0;
  ProtobufCMessage *m = unpack_message(bb, s->desc, &len);
  grpc_byte_buffer_destroy(bb);
  if (m == NULL) {
    if (!s->local_error) {
      s->local_error = true;
      set_status(&s->local_st, GRPC_STATUS_INTERNAL,
                 "cannot decode stream message (%zu bytes)", len);
    }
    s->reads_ended = true;
    grpc_call_cancel(s->call, NULL);
    return -1;
  }
  if (out != NULL) {
    *out = m;
  } else {
    protobuf_c_message_free_unpacked(m, NULL);
  }
  return 1;
}

int af_tc_stream_next(af_tc_stream_t *s, int wait_ms, ProtobufCMessage **out)
{
  *out = NULL;
  if (s->reads_ended) {
    return -1;
  }
  start_recv(s);
  if (s->reads_ended) {
    return -1;
  }
  if (!wait_op(s->cq, &s->op_recv, deadline_in(wait_ms))) {
    return 0;
  }
  return take_recv(s, out);
}

grpc_status_code af_tc_stream_status(af_tc_stream_t *s, int wait_ms,
                                     af_tc_status_t *st)
{
  gpr_timespec deadline = deadline_in(wait_ms);
  while (s->op_status.pending) {
    start_recv(s);
    if (!pump_one(s->cq, deadline)) {
      return GRPC_STATUS__DO_NOT_USE;
    }
    if (!s->op_recv.pending && !s->reads_ended) {
      take_recv(s, NULL);
    }
  }
  af_tc_status_t res;
  if (s->local_error) {
    res = s->local_st;
  } else {
    status_from_slice(&res, s->code, s->details);
  }
  if (st != NULL) {
    *st = res;
  }
  return res.code;
}

void af_tc_stream_cancel(af_tc_stream_t *s) { grpc_call_cancel(s->call, NULL); }

void af_tc_stream_close(af_tc_stream_t *s)
{
  if (s == NULL) {
    return;
  }
  if (s->op_status.pending) {
    grpc_call_cancel(s->call, NULL);
  }
  gpr_timespec forever = gpr_inf_future(GPR_CLOCK_MONOTONIC);
  wait_op(s->cq, &s->op_recv, forever);
  wait_op(s->cq, &s->op_start, forever);
  wait_op(s->cq, &s->op_status, forever);
  if (s->recv_bb != NULL) {
    grpc_byte_buffer_destroy(s->recv_bb);
  }
  grpc_byte_buffer_destroy(s->send_bb);
  grpc_slice_unref(s->details);
  grpc_metadata_array_destroy(&s->init_md);
  grpc_metadata_array_destroy(&s->trail_md);
  grpc_call_unref(s->call);
  md_free(&s->md);
  cq_destroy(s->cq);
  free(s);
}
