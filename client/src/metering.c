/*
 * metering.c - the client's metering: the core af_meter queue (bounded,
 * lock-free enqueue that never blocks or allocates; idempotency keys
 * generated at enqueue) whose sink sends a batch over RecordUsageStream.
 *
 * Delivery: the sink returns AF_OK only when the server acknowledged the
 * whole batch (status OK and rejected == 0); anything else (server down,
 * deadline, a refusal such as a full server queue) is an error, and the
 * core meter offers the same batch again after a backoff that doubles up
 * to backoff_max_ms. Because each event keeps the event_id it got at
 * enqueue, events of a batch the server had already applied come back as
 * duplicates and are not counted twice. An event the server refuses for
 * good (it was validated locally with the same rules, so only a changed
 * server hash can cause that) is retried until shutdown.
 *
 * The sink runs on the meter's flusher thread (or the owner's thread in
 * af_client_shutdown); its request buffer is allocated once at create.
 */
#include "client_internal.h"

#include <stdio.h>
#include <string.h>

#include <grpc/status.h>

#include "af/alloc.h"

void af__meter_event_to_pb(const af_meter_event_t *e,
                           antifragility_v1_UsageEvent *pb)
{
  memset(pb, 0, sizeof *pb);
  snprintf(pb->tenant_id, sizeof pb->tenant_id, "%s", e->tenant_id);
  snprintf(pb->event_id, sizeof pb->event_id, "%s", e->event_id);
  snprintf(pb->agent_id, sizeof pb->agent_id, "%s", e->agent_id);
  pb->operation = (antifragility_v1_MeterableOperation)e->operation;
  pb->tier = (antifragility_v1_MeteringTier)e->tier;
  pb->units = e->units;
  pb->tokens_processed = e->tokens_processed;
  pb->latency_ms = e->latency_ms;
  pb->compliance_score = e->compliance_score;
  pb->constitutional_valid = e->constitutional_valid;
  if (e->timestamp_wall_ns > 0) {
    pb->has_timestamp = true;
    pb->timestamp.seconds = e->timestamp_wall_ns / (int64_t)AF_NS_PER_SEC;
    pb->timestamp.nanos =
        (int32_t)(e->timestamp_wall_ns % (int64_t)AF_NS_PER_SEC);
  }
  snprintf(pb->constitutional_hash, sizeof pb->constitutional_hash, "%s",
           e->hash);
}

typedef struct {
  af_client_t *client;
  antifragility_v1_RecordUsageRequest *reqs; /* cap = batch_size entries */
  size_t cap;
  af__usage_send_fn send; /* NULL = RecordUsageStream on the channel */
  void *send_ctx;
} meter_ctx_t;

void af__meter_set_send(af_client_t *c, af__usage_send_fn fn, void *ctx)
{
  meter_ctx_t *m = c->meter_ctx;
  m->send = fn;
  m->send_ctx = ctx;
}

af_status_t af__meter_sink(const af_meter_event_t *events, size_t n,
                           size_t *duplicates, void *ctx)
{
  meter_ctx_t *m = ctx;
  if (n > m->cap) {
    return AF_EINVAL; /* cannot happen: batch_size <= cap */
  }
  for (size_t i = 0; i < n; i++) {
    m->reqs[i].has_event = true;
    af__meter_event_to_pb(&events[i], &m->reqs[i].event);
  }
  antifragility_v1_RecordUsageStreamResponse resp;
  memset(&resp, 0, sizeof resp);
  int code;
  if (m->send != NULL) {
    code = m->send(m->send_ctx, m->reqs, n, &resp);
  } else {
    af_call_status_t st;
    code = af__call(&m->client->transport, AF_RPC_RECORD_USAGE_STREAM, m->reqs,
                    n, &resp, af__bg_deadline(m->client), &st);
  }
  if (code != GRPC_STATUS_OK || resp.rejected > 0 ||
      resp.accepted + resp.duplicates != n) {
    return AF_EIO;
  }
  *duplicates = (size_t)resp.duplicates;
  return AF_OK;
}

af_status_t af__meter_init(af_client_t *c, af_error_t *err)
{
  af_meter_config_t mc;
  af_meter_config_init(&mc);
  mc.clock = c->clock;
  mc.capacity = c->cfg.meter_capacity;
  mc.batch_size = c->cfg.meter_batch;
  mc.flush_interval_ms = c->cfg.meter_flush_interval_ms;
  mc.max_retry_backoff_ms = c->cfg.backoff_max_ms > mc.flush_interval_ms
                                ? c->cfg.backoff_max_ms
                                : mc.flush_interval_ms;
  snprintf(mc.hash, sizeof mc.hash, "%s", c->hash);
  if (mc.batch_size == 0 || mc.batch_size > mc.capacity) {
    return af_error_set(err, AF_EINVAL,
                        "meter_batch must be between 1 and meter_capacity");
  }
  meter_ctx_t *m = af_calloc(1, sizeof *m);
  if (m == NULL) {
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  m->client = c;
  m->cap = mc.batch_size;
  m->reqs = af_calloc(m->cap, sizeof *m->reqs);
  if (m->reqs == NULL) {
    af_free(m);
    return af_error_set(err, AF_ENOMEM, "out of memory");
  }
  mc.sink = af__meter_sink;
  mc.sink_ctx = m;
  af_status_t s = af_meter_create(&c->meter, &mc, err);
  if (s != AF_OK) {
    af_free(m->reqs);
    af_free(m);
    return s;
  }
  c->meter_ctx = m;
  return AF_OK;
}

void af__meter_destroy(af_client_t *c)
{
  af_meter_destroy(c->meter);
  c->meter = NULL;
  meter_ctx_t *m = c->meter_ctx;
  if (m != NULL) {
    af_free(m->reqs);
    af_free(m);
    c->meter_ctx = NULL;
  }
}

af_status_t af_client_meter_enqueue(af_client_t *c, af_meter_event_t *ev,
                                    af_error_t *err)
{
  if (c == NULL) {
    return af_error_set(err, AF_EINVAL, "client is required");
  }
  return af_meter_enqueue(c->meter, ev, err);
}

void af_client_meter_metrics(af_client_t *c, af_meter_metrics_t *out)
{
  if (c == NULL) {
    memset(out, 0, sizeof *out);
    return;
  }
  af_meter_metrics(c->meter, out);
}

void af_client_meter_flush(af_client_t *c)
{
  if (c != NULL) {
    af_meter_request_flush(c->meter);
  }
}
