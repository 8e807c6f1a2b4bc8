/*
 * persist.h - what afd keeps across restarts besides metering: breaker
 * registrations and configs, recovery policies and finished recoveries,
 * the chaos audit log (and which scenarios were active, so that a restart
 * can end them in the log), and the recovery audit log (who scheduled,
 * executed, cancelled or approved a recovery, or set a policy).
 *
 * Thread-safety: single-owner (the app's owner thread): restore before the
 * server starts, attach right after, detach once the server stopped. The
 * engine listener that attach installs runs on any thread and never
 * blocks: it only queues write jobs on the store (write-behind, committed
 * by the store's writer in the next group, usually within milliseconds).
 *
 * Durability of these writes: a graceful stop commits every queued write
 * (af_store_shutdown); a kill -9 may lose the writes of the last group in
 * flight. Metering is different: RecordUsage is only acknowledged after
 * the commit (see svc_metering.c), and so is SetRecoveryPolicy (through
 * the `then` of af_persist_recovery_policy).
 */
#ifndef AF_PERSIST_H
#define AF_PERSIST_H

#include "af/recovery.h"
#include "af/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct af_app af_app_t;

/* Brings the persisted state back into app->engine (app->store must be
 * open): every breaker with its config, CLOSED unless it was forced by an
 * operator (chaos force-opens are not restored); every service's recovery
 * policy; the newest finished recoveries into the engine's history (tasks
 * that were still active are not re-scheduled: an open breaker with a
 * probing policy schedules one again by itself); every chaos scenario that
 * was active is recorded in the audit log as ended by the restart and not
 * re-activated; an emergency stop that was not reset stays latched. AF_OK, or
 * the store's error (err says which table). */
af_status_t af_persist_restore(af_app_t *app, af_error_t *err);

/* Subscribes the write-behind listener to the engine. AF_ELIMIT if the
 * engine has no subscriber slot left. No-op without a store. */
af_status_t af_persist_attach(af_app_t *app);

/* Unsubscribes it. Idempotent. */
void af_persist_detach(af_app_t *app);

/* Told on a store thread once a write committed (st AF_OK, message "")
 * or failed (message says why). */
typedef void (*af_persist_done_fn)(af_status_t st, const char *message,
                                   void *ctx);

typedef enum {
  AF_PERSIST_NO_STORE = 0, /* --memory: nothing to write, then not called */
  AF_PERSIST_QUEUED,       /* then (if given) will be called */
  AF_PERSIST_REFUSED,      /* store closed or out of memory: not written,
                              then not called */
} af_persist_result_t;

/* A recovery policy was set for service (both borrowed): queue it for the
 * store (the core publishes no event for policies). then (may be NULL)
 * with ctx (retained until then ran) is called once it committed: for
 * acknowledging SetRecoveryPolicy only once the policy is durable. Never
 * blocks; any thread. */
af_persist_result_t af_persist_recovery_policy(af_app_t *app,
                                               const char *service,
                                               const af_recovery_policy_t *p,
                                               af_persist_done_fn then,
                                               void *ctx);

/* An operator action on recovery, for the recovery audit log (table
 * recovery_audit): action is "schedule", "execute", "cancel", "approve"
 * or "policy"; actor the caller's identity (auth.h af_auth_caller);
 * detail free text (truncated to 255 bytes). All borrowed. Write-behind
 * like the rest; never blocks; any thread. No-op without a store. */
void af_persist_recovery_action(af_app_t *app, const char *action,
                                const char *service, const char *actor,
                                const char *detail);

#ifdef __cplusplus
}
#endif
#endif /* AF_PERSIST_H */
