/*
 * hub.c - a subscriber list of streams per event kind.
 *
 * Design: a growable array of (stream, user, on_event) under one mutex.
 * Publishing holds the mutex while it calls each on_event, which only
 * records the event in the stream's own state and calls af_stream_notify
 * (never blocks): that is what lets af_hub_remove promise that no event
 * reaches a stream after it returned, so the stream's state can be freed
 * right after. With 10k watchers a publish is 10k short calls; the engine
 * thread that caused the event pays for it, never a client.
 */
#include "hub.h"

#include <pthread.h>
#include <string.h>

#include "af/alloc.h"

typedef struct {
  af_stream_t *st;
  void *user;
  af_hub_event_fn on_event;
} hub_entry_t;

struct af_hub {
  pthread_mutex_t mu;
  hub_entry_t *v;
  size_t n, cap;
};

af_status_t af_hub_create(af_hub_t **out)
{
  af_hub_t *h = af_calloc(1, sizeof(*h));
  if (h == NULL) {
    return AF_ENOMEM;
  }
  pthread_mutex_init(&h->mu, NULL);
  *out = h;
  return AF_OK;
}

void af_hub_destroy(af_hub_t *hub)
{
  if (hub == NULL) {
    return;
  }
  for (size_t i = 0; i < hub->n; i++) {
    af_stream_release(hub->v[i].st);
  }
  af_free(hub->v);
  pthread_mutex_destroy(&hub->mu);
  af_free(hub);
}

af_status_t af_hub_add(af_hub_t *hub, af_stream_t *st, void *user,
                       af_hub_event_fn on_event)
{
  pthread_mutex_lock(&hub->mu);
  if (hub->n == hub->cap) {
    size_t cap = hub->cap ? hub->cap * 2 : 16;
    hub_entry_t *v = af_realloc(hub->v, cap * sizeof(*v));
    if (v == NULL) {
      pthread_mutex_unlock(&hub->mu);
      return AF_ENOMEM;
    }
    hub->v = v;
    hub->cap = cap;
  }
  af_stream_retain(st);
  hub->v[hub->n++] =
      (hub_entry_t){.st = st, .user = user, .on_event = on_event};
  pthread_mutex_unlock(&hub->mu);
  return AF_OK;
}

void af_hub_remove(af_hub_t *hub, af_stream_t *st)
{
  af_stream_t *found = NULL;
  pthread_mutex_lock(&hub->mu);
  for (size_t i = 0; i < hub->n; i++) {
    if (hub->v[i].st == st) {
      found = st;
      hub->v[i] = hub->v[--hub->n]; /* order among watchers is irrelevant */
      break;
    }
  }
  pthread_mutex_unlock(&hub->mu);
  if (found != NULL) {
    af_stream_release(found);
  }
}

void af_hub_publish(af_hub_t *hub, const af_engine_event_t *ev)
{
  pthread_mutex_lock(&hub->mu);
  for (size_t i = 0; i < hub->n; i++) {
    hub->v[i].on_event(hub->v[i].st, hub->v[i].user, ev);
  }
  pthread_mutex_unlock(&hub->mu);
}

size_t af_hub_count(af_hub_t *hub)
{
  pthread_mutex_lock(&hub->mu);
  size_t n = hub->n;
  pthread_mutex_unlock(&hub->mu);
  return n;
}

/* ------------------------------------------------------------------ */
/* Per-stream event FIFO                                              */

void af_evq_init(af_evq_t *q, size_t max)
{
  q->head = q->tail = NULL;
  q->n = 0;
  q->max = max > 0 ? max : 1;
  q->dropped = 0;
}

af_evq_node_t *af_evq_push(af_evq_t *q, af_evq_node_t *e)
{
  e->next = NULL;
  if (q->tail != NULL)
    q->tail->next = e;
  else
    q->head = e;
  q->tail = e;
  if (++q->n <= q->max)
    return NULL;
  af_evq_node_t *old = af_evq_pop(q);
  q->dropped++;
  return old;
}

af_evq_node_t *af_evq_pop(af_evq_t *q)
{
  af_evq_node_t *e = q->head;
  if (e == NULL)
    return NULL;
  q->head = e->next;
  if (q->head == NULL)
    q->tail = NULL;
  q->n--;
  e->next = NULL;
  return e;
}

af_evq_node_t *af_evq_take_all(af_evq_t *q)
{
  af_evq_node_t *all = q->head;
  q->head = q->tail = NULL;
  q->n = 0;
  return all;
}

void af_evq_free_list(af_evq_node_t *list)
{
  while (list != NULL) {
    af_evq_node_t *next = list->next;
    af_free(list);
    list = next;
  }
}
