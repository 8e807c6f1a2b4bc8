/*
 * grpc_health.h - the standard grpc.health.v1.Health service (Check,
 * Watch) on an af_server_t.
 *
 * Thread-safety: af_grpc_health_register on the owner thread before
 * af_server_start; af_grpc_health_notify from any thread. The resolver
 * runs on server threads (CQ or dispatch thread), never under a framework
 * lock, possibly concurrently with itself.
 *
 * Status of a name:
 *   ""                           SERVING; NOT_SERVING once shutdown begins
 *   a service registered on srv  same as ""
 *   anything else                resolver(name, ctx) (SERVING, NOT_SERVING
 *                                or SERVICE_UNKNOWN); SERVICE_UNKNOWN
 *                                without a resolver
 * Check answers NOT_FOUND "unknown service NAME" for SERVICE_UNKNOWN.
 * Watch sends the current status at once, then one message on every
 * change (SERVICE_UNKNOWN is sent and the stream stays open).
 */
#ifndef AF_GRPC_HEALTH_H
#define AF_GRPC_HEALTH_H

#include "grpc/health/v1/health.pb-c.h"
#include "server.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef Grpc__Health__V1__HealthCheckResponse__ServingStatus
    af_grpc_health_status_t;

/* Maps a name that is not "" and not one of the server's services. */
typedef af_grpc_health_status_t (*af_grpc_health_resolver_fn)(const char *name,
                                                              void *ctx);

/* Registers Check and Watch. resolver may be NULL; ctx retained. Calling
 * it again only replaces the resolver. AF_ENOMEM, AF_EINVAL (started). */
af_status_t af_grpc_health_register(af_server_t *srv,
                                    af_grpc_health_resolver_fn resolver,
                                    void *ctx);

/* Re-evaluates every Watch stream; each sends only if its status changed.
 * Any thread, never blocks on the network. No-op without registration. */
void af_grpc_health_notify(af_server_t *srv);

#ifdef __cplusplus
}
#endif
#endif /* AF_GRPC_HEALTH_H */
