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

#ifdef __cplusplus
}
#endif
#endif /* AF_HUB_H */
