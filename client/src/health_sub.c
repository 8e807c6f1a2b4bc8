/*
 * health_sub.c - health subscriptions: one thread per subscription holds
 * WatchHealth open and calls the user's function for every message.
 *
 * Reconnection: when the stream ends (server stopped, network broken) or
 * cannot be opened, the thread waits a backoff that starts at
 * backoff_initial_ms, doubles per consecutive failure up to
 * backoff_max_ms, and is jittered to [d/2, d] so that many clients do not
 * come back in lock-step; a received message resets it. Every stream
 * starts with the full current report (update.first).
 *
 * Sequence numbers: each stream numbers its messages 1, 2, 3... A message
 * whose sequence is not the previous one plus one means messages were lost;
 * every message carries the complete report, so the subscription
 * resynchronises on that message itself: it is delivered with
 * update.resync set (treat msg->report as the whole state; changed and
 * previous_status compare with a message you never saw).
 *
 * Threading: fn runs on the subscription's thread with no library lock
 * held. sub->mu guards the stream pointer so unsubscribe can cancel it.
 */
#include "client_internal.h"

#include "af/alloc.h"

static void *sub_main(void *arg)
{
  af_health_sub_t *sub = arg;
  af_client_t *c = sub->client;
  antifragility_v1_WatchHealthResponse *msg = af_malloc(sizeof *msg);
  if (msg == NULL) {
    return NULL;
  }
  uint64_t backoff = c->cfg.backoff_initial_ms;
  uint64_t streams = 0;
  while (!af__waiter_stopped(&sub->waiter)) {
    antifragility_v1_WatchHealthRequest req =
        antifragility_v1_WatchHealthRequest_init_zero;
    req.include_score_changes = sub->include_score;
    af_client_stream_t *s =
        af__stream_open(&c->transport, AF_RPC_WATCH_HEALTH, &req, 0);
    if (s == NULL) {
      break;
    }
    pthread_mutex_lock(&sub->mu);
    sub->stream = s;
    pthread_mutex_unlock(&sub->mu);
    streams++;
    bool first = true;
    uint64_t last_seq = 0;
    while (!af__waiter_stopped(&sub->waiter)) {
      int r = af_client_stream_next(s, msg, 200);
      if (r < 0) {
        break;
      }
      if (r == 0) {
        continue;
      }
      backoff = c->cfg.backoff_initial_ms;
      af_health_update_t u;
      u.msg = msg;
      u.first = first;
      u.resync = !first && msg->sequence != last_seq + 1;
      u.reconnects = streams - 1;
      last_seq = msg->sequence;
      first = false;
      sub->fn(&u, sub->ctx);
    }
    pthread_mutex_lock(&sub->mu);
    sub->stream = NULL;
    pthread_mutex_unlock(&sub->mu);
    af_client_stream_close(s);
    uint64_t wait = af__backoff_next(&backoff, c->cfg.backoff_max_ms, &c->rng);
    if (!af__waiter_wait(&sub->waiter, wait)) {
      break;
    }
  }
  af_free(msg);
  return NULL;
}

af_status_t af_client_health_subscribe(af_client_t *c,
                                       bool include_score_changes,
                                       af_health_fn fn, void *ctx,
                                       af_health_sub_t **out)
{
  if (c == NULL || fn == NULL || out == NULL) {
    return AF_EINVAL;
  }
  if (!c->threads_started || c->shut_down) {
    return AF_ESTATE;
  }
  af_health_sub_t *sub = af_calloc(1, sizeof *sub);
  if (sub == NULL) {
    return AF_ENOMEM;
  }
  sub->client = c;
  sub->fn = fn;
  sub->ctx = ctx;
  sub->include_score = include_score_changes;
  af__waiter_init(&sub->waiter);
  pthread_mutex_init(&sub->mu, NULL);
  if (pthread_create(&sub->thread, NULL, sub_main, sub) != 0) {
    af__waiter_destroy(&sub->waiter);
    pthread_mutex_destroy(&sub->mu);
    af_free(sub);
    return AF_EINTERNAL;
  }
  pthread_mutex_lock(&c->subs_mu);
  sub->next = c->subs;
  c->subs = sub;
  pthread_mutex_unlock(&c->subs_mu);
  *out = sub;
  return AF_OK;
}

static void stop_and_free(af_health_sub_t *sub)
{
  af__waiter_stop(&sub->waiter);
  pthread_mutex_lock(&sub->mu);
  if (sub->stream != NULL) {
    af_client_stream_cancel(sub->stream);
  }
  pthread_mutex_unlock(&sub->mu);
  pthread_join(sub->thread, NULL);
  af__waiter_destroy(&sub->waiter);
  pthread_mutex_destroy(&sub->mu);
  af_free(sub);
}

void af_health_unsubscribe(af_health_sub_t *sub)
{
  if (sub == NULL) {
    return;
  }
  af_client_t *c = sub->client;
  pthread_mutex_lock(&c->subs_mu);
  af_health_sub_t **pp = &c->subs;
  while (*pp != NULL && *pp != sub) {
    pp = &(*pp)->next;
  }
  bool found = *pp == sub;
  if (found) {
    *pp = sub->next;
  }
  pthread_mutex_unlock(&c->subs_mu);
  if (found) {
    stop_and_free(sub);
  }
}

void af__health_stop_all(af_client_t *c)
{
  pthread_mutex_lock(&c->subs_mu);
  af_health_sub_t *list = c->subs;
  c->subs = NULL;
  pthread_mutex_unlock(&c->subs_mu);
  while (list != NULL) {
    af_health_sub_t *next = list->next;
    stop_and_free(list);
    list = next;
  }
}
