/*
 * hub.h - fan-out of engine events to the server streams that watch them.
 *
 * Thread-safety: thread-safe. af_hub_publish runs on whatever thread the
 * engine event happened on (an RPC thread, the engine timer thread, a probe
 * thread); it calls each subscriber's on_event with the hub lock held (so a
 * stream never sees an event after af_hub_remove returned) - on_event must
 * therefore be short and must not call af_hub_* itself: record the event in
 * the stream's own state and call af_stream_notify (which never blocks and
 * never calls fill on the caller's thread).
 *
 * Ownership: af_hub_add retains the stream (af_stream_retain) and
 * af_hub_remove releases it; `user` is borrowed and must stay valid until
 * af_hub_remove returns. The usual pattern: a stream's on_start creates its
 * per-stream state, calls af_hub_add, then af_stream_set_producer; its done
 * callback calls af_hub_remove and frees the state.
 */
#ifndef AF_HUB_H
#define AF_HUB_H

#include "af/engine.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_hub af_hub_t;

/* Called for every published event, hub lock held (see above). */
typedef void (*af_hub_event_fn)(af_stream_t *st, void *user,
                                const af_engine_event_t *ev);

/* Returns owned (af_hub_destroy). On failure *out is untouched. */
af_status_t af_hub_create(af_hub_t **out);
/* Releases any streams still subscribed. NULL is a no-op. */
void af_hub_destroy(af_hub_t *hub);

/* AF_ENOMEM. The stream is retained until af_hub_remove. */
af_status_t af_hub_add(af_hub_t *hub, af_stream_t *st, void *user,
                       af_hub_event_fn on_event);
/* No-op if st is not subscribed. */
void af_hub_remove(af_hub_t *hub, af_stream_t *st);

void af_hub_publish(af_hub_t *hub, const af_engine_event_t *ev);
size_t af_hub_count(af_hub_t *hub);

/* A stream's bounded FIFO of pending events, for watchers that send every
 * event (not only the latest state): past max, the oldest is dropped and
 * counted in `dropped` (reported to the client as `coalesced`). Nodes are
 * the caller's structs with an af_evq_node_t as their first member,
 * allocated by the caller. Not locked: the stream's own mutex guards it. */
typedef struct af_evq_node {
  struct af_evq_node *next;
} af_evq_node_t;

typedef struct {
  af_evq_node_t *head, *tail;
  size_t n, max;
  uint64_t dropped;
} af_evq_t;

/* An empty queue holding at most max (>= 1) events. Cannot fail. */
void af_evq_init(af_evq_t *q, size_t max);
/* Appends e (takes it). Returns the node dropped to make room (the caller
 * frees it, preferably after unlocking), or NULL. */
af_evq_node_t *af_evq_push(af_evq_t *q, af_evq_node_t *e);
/* Takes the oldest event (returns owned), or NULL if empty. */
af_evq_node_t *af_evq_pop(af_evq_t *q);
/* Takes every event at once (a NULL-terminated list, returns owned) and
 * empties the queue; `dropped` is kept. */
af_evq_node_t *af_evq_take_all(af_evq_t *q);
/* af_free's every node of a list from af_evq_take_all (NULL: no-op). */
void af_evq_free_list(af_evq_node_t *list);

#ifdef __cplusplus
}
#endif
#endif /* AF_HUB_H */
