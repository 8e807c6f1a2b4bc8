/*
 * transport.c - gRPC core calls carrying nanopb messages.
 *
 * Owns: one insecure channel per client and one registered call handle per
 * RPC (af_rpc_info paths). Every call gets its own completion queue created
 * for `next` (like the C++ synchronous stubs do): the calling thread is the
 * only one that drains it, so calls from many threads never share a queue
 * or a lock of ours. Each batch's tag is an op_t in the call state.
 *
 * Messages: requests are nanopb-encoded straight into a grpc_slice of the
 * exact size; responses are read with a byte buffer reader (which
 * decompresses) and decoded with pb_decode into the caller's struct.
 *
 * Errors: the gRPC status of the call, or INTERNAL with a message for a
 * message that does not encode / decode, RESOURCE_EXHAUSTED for no memory.
 */
#include "client_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>
#include <pb_decode.h>
#include <pb_encode.h>

#include "af/alloc.h"

void af__set_status(af_call_status_t *st, int code, const char *fmt, ...)
{
  if (st == NULL) {
    return;
  }
  st->code = code;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->message, sizeof st->message, fmt, ap);
  va_end(ap);
}

static void status_from_slice(af_call_status_t *st, int code, grpc_slice d)
{
  size_t len = GRPC_SLICE_LENGTH(d);
  if (len >= sizeof st->message) {
    len = sizeof st->message - 1;
  }
  st->code = code;
  memcpy(st->message, GRPC_SLICE_START_PTR(d), len);
  st->message[len] = '\0';
}

/* Reads a whole file into a NUL-terminated buffer (owned: af_free). */
static char *read_file(const char *path)
{
  FILE *f = fopen(path, "rb");
  if (f == NULL) {
    return NULL;
  }
  char *buf = NULL;
  size_t len = 0, cap = 0;
  for (;;) {
    if (len + 4096 + 1 > cap) {
      cap = cap ? cap * 2 : 8192;
      char *nb = af_realloc(buf, cap);
      if (nb == NULL) {
        af_free(buf);
        fclose(f);
        return NULL;
      }
      buf = nb;
    }
    size_t n = fread(buf + len, 1, 4096, f);
    len += n;
    if (n < 4096) {
      break;
    }
  }
  fclose(f);
  buf[len] = '\0';
  return buf;
}

static grpc_channel_credentials *tls_credentials(const af_client_config_t *cfg,
                                                 af_error_t *err)
{
  char *ca = read_file(cfg->tls_ca_file);
  if (ca == NULL) {
    af_error_set(err, AF_EIO, "cannot read %s", cfg->tls_ca_file);
    return NULL;
  }
  grpc_ssl_pem_key_cert_pair pair = {NULL, NULL};
  bool with_pair = cfg->tls_cert_file != NULL && cfg->tls_cert_file[0] &&
                   cfg->tls_key_file != NULL && cfg->tls_key_file[0];
  char *cert = NULL, *key = NULL;
  if (with_pair) {
    cert = read_file(cfg->tls_cert_file);
    key = read_file(cfg->tls_key_file);
    if (cert == NULL || key == NULL) {
      af_error_set(err, AF_EIO, "cannot read %s",
                   cert == NULL ? cfg->tls_cert_file : cfg->tls_key_file);
      af_free(ca);
      af_free(cert);
      af_free(key);
      return NULL;
    }
    pair.private_key = key;
    pair.cert_chain = cert;
  }
  grpc_channel_credentials *cr =
      grpc_ssl_credentials_create(ca, with_pair ? &pair : NULL, NULL, NULL);
  af_free(ca);
  af_free(cert);
  af_free(key);
  if (cr == NULL) {
    af_error_set(err, AF_EINVAL, "bad TLS credentials");
  }
  return cr;
}

af_status_t af__transport_init(af__transport_t *t,
                               const af_client_config_t *cfg, af_error_t *err)
{
  grpc_channel_args args;
  grpc_arg arg[2];
  /* Reconnect quickly after a server restart (the default backoff grows
   * to 120 s). */
  arg[0].type = GRPC_ARG_INTEGER;
  arg[0].key = (char *)GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
  arg[0].value.integer = 1000;
  arg[1].type = GRPC_ARG_INTEGER;
  arg[1].key = (char *)GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
  arg[1].value.integer = 100;
  args.num_args = 2;
  args.args = arg;
  pthread_mutex_init(&t->mu, NULL);
  t->mu_init = true;
  grpc_channel_credentials *cr;
  if (cfg->tls_ca_file != NULL && cfg->tls_ca_file[0] != '\0') {
    cr = tls_credentials(cfg, err);
    if (cr == NULL) {
      return err != NULL ? err->code : AF_EIO;
    }
  } else {
    cr = grpc_insecure_credentials_create();
  }
  t->ch = grpc_channel_create(cfg->addr, cr, &args);
  grpc_channel_credentials_release(cr);
  if (t->ch == NULL) {
    return af_error_set(err, AF_ENOMEM, "cannot create a channel to %s",
                        cfg->addr);
  }
  for (int i = 0; i < AF_RPC_COUNT; i++) {
    t->handles[i] =
        grpc_channel_register_call(t->ch, af_rpc_info(i)->path, NULL, NULL);
  }
  if (cfg->token != NULL && cfg->token[0] != '\0') {
    char *v = af_malloc(strlen(cfg->token) + 8);
    if (v == NULL) {
      return af_error_set(err, AF_ENOMEM, "out of memory");
    }
    memcpy(v, "Bearer ", 7);
    memcpy(v + 7, cfg->token, strlen(cfg->token) + 1);
    t->md[0].key = grpc_slice_from_static_string("authorization");
    t->md[0].value = grpc_slice_from_copied_string(v);
    af_free(v);
    t->md_count = 1;
  }
  return AF_OK;
}

void af__transport_destroy(af__transport_t *t)
{
  if (t->mu_init) {
    pthread_mutex_destroy(&t->mu);
    t->mu_init = false;
  }
  for (size_t i = 0; i < t->md_count; i++) {
    grpc_slice_unref(t->md[i].key);
    grpc_slice_unref(t->md[i].value);
  }
  t->md_count = 0;
  if (t->ch != NULL) {
    grpc_channel_destroy(t->ch);
    t->ch = NULL;
  }
}

static gpr_timespec deadline_in(int64_t ms)
{
  if (ms < 0) {
    return gpr_inf_future(GPR_CLOCK_MONOTONIC);
  }
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                      gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static gpr_timespec call_deadline(uint32_t ms)
{
  return ms == 0 ? gpr_inf_future(GPR_CLOCK_MONOTONIC) : deadline_in(ms);
}

/* Encodes msg into a new byte buffer (owned), or NULL with st set. */
static grpc_byte_buffer *encode(const pb_msgdesc_t *fields, const void *msg,
                                af_call_status_t *st)
{
  size_t n = 0;
  if (!pb_get_encoded_size(&n, fields, msg)) {
    af__set_status(st, GRPC_STATUS_INTERNAL, "cannot encode request");
    return NULL;
  }
  grpc_slice s = grpc_slice_malloc(n);
  pb_ostream_t os = pb_ostream_from_buffer(GRPC_SLICE_START_PTR(s), n);
  if (!pb_encode(&os, fields, msg)) {
    grpc_slice_unref(s);
    af__set_status(st, GRPC_STATUS_INTERNAL, "cannot encode request: %s",
                   PB_GET_ERROR(&os));
    return NULL;
  }
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  return bb;
}

/* Decodes bb (borrowed) into msg. */
static bool decode(grpc_byte_buffer *bb, const pb_msgdesc_t *fields, void *msg,
                   size_t *len)
{
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb)) {
    *len = 0;
    return false;
  }
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  *len = GRPC_SLICE_LENGTH(s);
  pb_istream_t is = pb_istream_from_buffer(GRPC_SLICE_START_PTR(s), *len);
  bool ok = pb_decode(&is, fields, msg);
  grpc_slice_unref(s);
  return ok;
}

typedef struct {
  bool pending;
  bool success;
} op_t;

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

static bool wait_op(grpc_completion_queue *cq, op_t *op, gpr_timespec dl)
{
  while (op->pending) {
    if (!pump_one(cq, dl)) {
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

/* Encodes msg into a new slice (owned) of the exact size. */
static bool encode_slice(const pb_msgdesc_t *fields, const void *msg,
                         grpc_slice *out, af_call_status_t *st)
{
  size_t n = 0;
  if (!pb_get_encoded_size(&n, fields, msg)) {
    af__set_status(st, GRPC_STATUS_INTERNAL, "cannot encode request");
    return false;
  }
  grpc_slice s = grpc_slice_malloc(n);
  pb_ostream_t os = pb_ostream_from_buffer(GRPC_SLICE_START_PTR(s), n);
  if (!pb_encode(&os, fields, msg)) {
    grpc_slice_unref(s);
    af__set_status(st, GRPC_STATUS_INTERNAL, "cannot encode request: %s",
                   PB_GET_ERROR(&os));
    return false;
  }
  *out = s;
  return true;
}

/* In-flight calls, so that af__transport_cancel_all can end them. */
static int track(af__transport_t *t, grpc_call *call)
{
  pthread_mutex_lock(&t->mu);
  int slot = -1;
  for (int i = 0; i < AF__INFLIGHT_MAX; i++) {
    if (t->inflight[i] == NULL) {
      t->inflight[i] = call;
      slot = i;
      break;
    }
  }
  pthread_mutex_unlock(&t->mu);
  return slot;
}

static void untrack(af__transport_t *t, int slot)
{
  if (slot < 0) {
    return;
  }
  pthread_mutex_lock(&t->mu);
  t->inflight[slot] = NULL;
  pthread_mutex_unlock(&t->mu);
}

void af__transport_cancel_all(af__transport_t *t)
{
  pthread_mutex_lock(&t->mu);
  for (int i = 0; i < AF__INFLIGHT_MAX; i++) {
    if (t->inflight[i] != NULL) {
      /* thread-safe; the owner still completes and unrefs the call */
      grpc_call_cancel(t->inflight[i], NULL);
    }
  }
  pthread_mutex_unlock(&t->mu);
}

int af__call(af__transport_t *t, af_rpc_id_t rpc, const void *reqs, size_t n,
             void *resp, uint32_t deadline_ms, af_call_status_t *st_out)
{
  return af__call_repeated(t, rpc, reqs, NULL, n, resp, deadline_ms, st_out);
}

int af__call_repeated(af__transport_t *t, af_rpc_id_t rpc, const void *reqs,
                      const size_t *repeat, size_t n, void *resp,
                      uint32_t deadline_ms, af_call_status_t *st_out)
{
  af_call_status_t st;
  memset(&st, 0, sizeof st);
  const af_rpc_info_t *info = af_rpc_info(rpc);
  /* Each distinct message is encoded once; every send wraps a new byte
   * buffer around a reference to its slice (a send consumes its buffer). */
  grpc_slice *slices = af_calloc(n > 0 ? n : 1, sizeof *slices);
  if (slices == NULL) {
    af__set_status(&st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if (!encode_slice(info->req_fields, (const char *)reqs + i * info->req_size,
                      &slices[i], &st)) {
      for (size_t j = 0; j < i; j++) {
        grpc_slice_unref(slices[j]);
      }
      af_free(slices);
      goto out;
    }
  }

  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  grpc_call *call = grpc_channel_create_registered_call(
      t->ch, NULL, GRPC_PROPAGATE_DEFAULTS, cq, t->handles[rpc],
      call_deadline(deadline_ms), NULL);
  int slot = track(t, call);
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_byte_buffer *recv_bb = NULL;
  op_t op_status = {0}, op_send = {0}, op_final = {0};
  gpr_timespec forever = gpr_inf_future(GPR_CLOCK_MONOTONIC);
  grpc_op ops[3];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[0].data.recv_status_on_client.status = &code;
  ops[0].data.recv_status_on_client.status_details = &details;
  bool started = start_batch(call, ops, 1, &op_status) == GRPC_CALL_OK;
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = t->md_count;
  ops[0].data.send_initial_metadata.metadata = t->md;
  if (started && start_batch(call, ops, 1, &op_send) == GRPC_CALL_OK) {
    wait_op(cq, &op_send, forever);
  }
  bool sending = started && op_send.success;
  for (size_t i = 0; sending && i < n; i++) {
    size_t times = repeat != NULL ? repeat[i] : 1;
    for (size_t k = 0; sending && k < times; k++) {
      grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slices[i], 1);
      memset(ops, 0, sizeof ops);
      ops[0].op = GRPC_OP_SEND_MESSAGE;
      ops[0].data.send_message.send_message = bb;
      if (start_batch(call, ops, 1, &op_send) != GRPC_CALL_OK) {
        grpc_byte_buffer_destroy(bb);
        sending = false;
        break;
      }
      wait_op(cq, &op_send, forever);
      grpc_byte_buffer_destroy(bb);
      sending = op_send.success && op_status.pending;
    }
  }
  if (started) {
    memset(ops, 0, sizeof ops);
    ops[0].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
    ops[1].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[1].data.recv_initial_metadata.recv_initial_metadata = &init_md;
    ops[2].op = GRPC_OP_RECV_MESSAGE;
    ops[2].data.recv_message.recv_message = &recv_bb;
    if (start_batch(call, ops, 3, &op_final) != GRPC_CALL_OK &&
        start_batch(call, ops + 1, 2, &op_final) != GRPC_CALL_OK) {
      grpc_call_cancel(call, NULL);
    }
    wait_op(cq, &op_final, forever);
    wait_op(cq, &op_status, forever);
    status_from_slice(&st, code, details);
  } else {
    af__set_status(&st, GRPC_STATUS_INTERNAL, "cannot start the call");
  }
  if (st.code == GRPC_STATUS_OK) {
    size_t len = 0;
    if (recv_bb == NULL) {
      af__set_status(&st, GRPC_STATUS_INTERNAL, "no response message");
    } else if (!decode(recv_bb, info->resp_fields, resp, &len)) {
      af__set_status(&st, GRPC_STATUS_INTERNAL,
                     "cannot decode response (%zu bytes)", len);
    }
  }
  if (recv_bb != NULL) {
    grpc_byte_buffer_destroy(recv_bb);
  }
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  untrack(t, slot);
  grpc_call_unref(call);
  cq_destroy(cq);
  for (size_t i = 0; i < n; i++) {
    grpc_slice_unref(slices[i]);
  }
  af_free(slices);
out:
  if (st_out != NULL) {
    *st_out = st;
  }
  return st.code;
}

/* ---- server streams ------------------------------------------------------
 */

struct af_client_stream {
  grpc_completion_queue *cq;
  grpc_call *call;
  const af_rpc_info_t *info;
  grpc_byte_buffer *send_bb;
  grpc_metadata_array init_md, trail_md;
  grpc_status_code code;
  grpc_slice details;
  grpc_byte_buffer *recv_bb;
  op_t op_start, op_status, op_recv;
  bool reads_ended;
  bool local_error;
  af_call_status_t local_st;
};

af_client_stream_t *af__stream_open(af__transport_t *t, af_rpc_id_t rpc,
                                    const void *req, uint32_t deadline_ms)
{
  af_client_stream_t *s = af_calloc(1, sizeof *s);
  if (s == NULL) {
    return NULL;
  }
  s->info = af_rpc_info(rpc);
  s->cq = grpc_completion_queue_create_for_next(NULL);
  s->call = grpc_channel_create_registered_call(
      t->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, t->handles[rpc],
      call_deadline(deadline_ms), NULL);
  grpc_metadata_array_init(&s->init_md);
  grpc_metadata_array_init(&s->trail_md);
  s->code = GRPC_STATUS_UNKNOWN;
  s->details = grpc_empty_slice();
  s->send_bb = encode(s->info->req_fields, req, &s->local_st);
  grpc_op ops[4];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->trail_md;
  ops[0].data.recv_status_on_client.status = &s->code;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  grpc_call_error e1 = start_batch(s->call, ops, 1, &s->op_status);
  if (s->send_bb == NULL) {
    s->local_error = true;
    s->reads_ended = true;
    grpc_call_cancel(s->call, NULL);
    return s;
  }
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[0].data.send_initial_metadata.count = t->md_count;
  ops[0].data.send_initial_metadata.metadata = t->md;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = s->send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
  grpc_call_error e2 = start_batch(s->call, ops, 4, &s->op_start);
  if (e1 != GRPC_CALL_OK || e2 != GRPC_CALL_OK) {
    s->local_error = true;
    af__set_status(&s->local_st, GRPC_STATUS_INTERNAL,
                   "cannot start the call (grpc_call_error %d / %d)", (int)e1,
                   (int)e2);
    s->reads_ended = true;
    grpc_call_cancel(s->call, NULL);
  }
  return s;
}

af_status_t af_client_watch_open(af_client_t *c, af_rpc_id_t rpc,
                                 const void *req, uint32_t deadline_ms,
                                 af_client_stream_t **out)
{
  const af_rpc_info_t *info = af_rpc_info(rpc);
  if (c == NULL || info == NULL || info->kind != AF_RPC_KIND_SERVER_STREAM ||
      req == NULL || out == NULL) {
    return AF_EINVAL;
  }
  af_client_stream_t *s = af__stream_open(&c->transport, rpc, req, deadline_ms);
  if (s == NULL) {
    return AF_ENOMEM;
  }
  *out = s;
  return AF_OK;
}

static void start_recv(af_client_stream_t *s)
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

static int take_recv(af_client_stream_t *s, void *msg)
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
  bool ok = msg != NULL ? decode(bb, s->info->resp_fields, msg, &len) : true;
  grpc_byte_buffer_destroy(bb);
  if (!ok) {
    if (!s->local_error) {
      s->local_error = true;
      af__set_status(&s->local_st, GRPC_STATUS_INTERNAL,
                     "cannot decode stream message (%zu bytes)", len);
    }
    s->reads_ended = true;
    grpc_call_cancel(s->call, NULL);
    return -1;
  }
  return 1;
}

int af_client_stream_next(af_client_stream_t *s, void *msg, int wait_ms)
{
  if (s == NULL || s->reads_ended) {
    return -1;
  }
  start_recv(s);
  if (s->reads_ended) {
    return -1;
  }
  if (!wait_op(s->cq, &s->op_recv, deadline_in(wait_ms))) {
    return 0;
  }
  return take_recv(s, msg);
}

int af_client_stream_status(af_client_stream_t *s, af_call_status_t *st)
{
  if (s == NULL) {
    af__set_status(st, GRPC_STATUS_INVALID_ARGUMENT, "no stream");
    return GRPC_STATUS_INVALID_ARGUMENT;
  }
  gpr_timespec forever = gpr_inf_future(GPR_CLOCK_MONOTONIC);
  while (s->op_status.pending) {
    start_recv(s);
    if (!pump_one(s->cq, forever)) {
      break;
    }
    if (!s->op_recv.pending && !s->reads_ended) {
      take_recv(s, NULL);
    }
  }
  af_call_status_t res;
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

void af_client_stream_cancel(af_client_stream_t *s)
{
  if (s != NULL) {
    grpc_call_cancel(s->call, NULL);
  }
}

void af_client_stream_close(af_client_stream_t *s)
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
  if (s->send_bb != NULL) {
    grpc_byte_buffer_destroy(s->send_bb);
  }
  grpc_slice_unref(s->details);
  grpc_metadata_array_destroy(&s->init_md);
  grpc_metadata_array_destroy(&s->trail_md);
  grpc_call_unref(s->call);
  cq_destroy(s->cq);
  af_free(s);
}
