/*
 * svc_breaker.c - antifragility.v1.BreakerService on the framework.
 *
 * Owns: nothing long-lived but a tiny service struct; the breakers live in
 * the engine's registry (af_engine_breakers). Every handler validates its
 * whole request before it touches the registry, so a refused request
 * changes nothing. Wire <-> core conversion of configs and BreakerInfo is
 * done here with caller-provided storage (pb_info_t), so no response
 * allocates strings: they point into a core snapshot that outlives the
 * packing.
 *
 * Decisions the proto leaves open:
 *  - ReportOutcomes counts a message it refuses (invalid, unknown breaker)
 *    in `rejected`, remembers the first refusal and goes on; only a
 *    message that does not decode aborts the call (framework:
 *    INVALID_ARGUMENT "malformed request: ...").
 *  - ReportState on a breaker forced here (FORCED_OPEN / DISABLED) is
 *    recorded (report time, instance) but not adopted; the answer is OK
 *    with transitioned = false and the forced state, which is what the
 *    client must obey.
 *  - ListBreakers clamps page_size to 16; page_token is the last name of
 *    the previous page.
 *  - weight must be in [0.000001, 10000] (the health aggregator's range);
 *    the proto's ">= 0" is narrowed because a weight of 0 is refused by
 *    the core.
 *  - `stale` is always false: afd runs the health aggregator without a
 *    stale_after window.
 *
 * WatchBreakers: each stream has a watch_t. on_event (hub lock held, any
 * thread) only merges the event into the stream's pending set and calls
 * af_stream_notify. The pending set keeps one entry per breaker name in
 * arrival order (hash + FIFO): a later event for the same breaker is
 * folded into its entry (latest state wins, `coalesced` counts what was
 * folded), so a slow reader never queues more than one message per
 * breaker. The set is bounded (WATCH_PENDING_MAX); past that it is
 * dropped and the stream re-sends a full snapshot instead, so the latest
 * state of every breaker still arrives. The fill (server dispatch/CQ
 * thread, never concurrent with itself) first sends one SNAPSHOT per
 * breaker (handles taken after subscribing, so no event is missed), then
 * one message per pending entry with fresh BreakerInfo; while more is
 * left it re-notifies itself so the framework calls it again after the
 * send completes.
 *
 * Threading: handlers run on server threads and only make short engine
 * calls. watch_t.mu guards the pending set and counters; no lock of ours
 * is held while calling the engine or the framework.
 */
#include "app_internal.h"
#include "auth.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "af/alloc.h"
#include "af/health.h"
#include "antifragility/v1/breaker.pb-c.h"
#include "convert.h"
#include "log.h"
#include "status_map.h"

#define SVC_PATH "/antifragility.v1.BreakerService/"

/* Wire limits (breaker.proto / breaker.options). */
#define PB_EXCLUDED_MAX 8
#define PB_INSTANCES_MAX 8
#define PB_INSTANCE_ID_MAX 64
#define PB_DESCRIPTION_MAX 256
#define LIST_PAGE_MAX 16
#define WATCH_NAMES_MAX 16
/* Longest reset_timeout accepted: one day. */
#define RESET_TIMEOUT_MAX_MS (24ull * 3600ull * 1000ull)
/* Distinct breakers with an unsent event per stream before it falls back
 * to a fresh snapshot. */
#define WATCH_PENDING_MAX 1024
#define WATCH_BUCKETS 64

struct af_svc_breaker {
  af_app_t *app;
};

typedef Antifragility__V1__BreakerState pb_state_t;
typedef Antifragility__V1__BreakerEventKind pb_kind_t;

#define KIND(x) ANTIFRAGILITY__V1__BREAKER_EVENT_KIND__BREAKER_EVENT_KIND_##x

static af_breaker_registry_t *registry(const af_svc_breaker_t *svc)
{
  return af_engine_breakers(svc->app->engine);
}

static af_status_t not_found(af_error_t *err, const char *name)
{
  return af_error_set(err, AF_ENOTFOUND, "breaker %s not found", name);
}

/* ------------------------------------------------------------------ */
/* Validation and config conversion                                   */

/* UTF-8 without NUL (control characters allowed: free text). */
static bool utf8_valid(const char *s)
{
  const unsigned char *p = (const unsigned char *)s;
  while (*p) {
    unsigned char c = *p;
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      p++;
      continue;
    } else if ((c & 0xe0) == 0xc0) {
      n = 2;
      cp = c & 0x1fu;
    } else if ((c & 0xf0) == 0xe0) {
      n = 3;
      cp = c & 0x0fu;
    } else if ((c & 0xf8) == 0xf0) {
      n = 4;
      cp = c & 0x07u;
    } else {
      return false;
    }
    for (size_t i = 1; i < n; i++) {
      if ((p[i] & 0xc0) != 0x80)
        return false;
      cp = (cp << 6) | (p[i] & 0x3fu);
    }
    if ((n == 2 && cp < 0x80) || (n == 3 && cp < 0x800) ||
        (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
        (cp >= 0xd800 && cp <= 0xdfff))
      return false;
    p += n;
  }
  return true;
}

/* "" is fine (anonymous); otherwise 1..64 bytes of printable UTF-8. */
static bool check_instance_id(const char *id, af_error_t *err)
{
  if (id == NULL || id[0] == '\0')
    return true;
  if (strlen(id) > PB_INSTANCE_ID_MAX || !af_name_valid(id)) {
    af_error_set(err, AF_EINVAL,
                 "instance_id must be at most %d bytes of printable UTF-8",
                 PB_INSTANCE_ID_MAX);
    return false;
  }
  return true;
}

static af_status_t check_count(const Google__Protobuf__UInt32Value *v,
                               const char *field, uint32_t *out,
                               af_error_t *err)
{
  if (v == NULL)
    return AF_OK;
  if (v->value < 1)
    return af_error_set(err, AF_EINVAL, "%s must be >= 1", field);
  *out = v->value;
  return AF_OK;
}

/* Wire config -> core config with every default filled in. pb may be
 * NULL (all defaults). On failure err names the field. */
static af_status_t config_from_pb(const Antifragility__V1__BreakerConfig *pb,
                                  af_breaker_config_t *cfg, af_error_t *err)
{
  af_breaker_config_init(cfg);
  if (pb == NULL)
    return AF_OK;
  af_status_t st = check_count(pb->fail_max, "fail_max", &cfg->fail_max, err);
  if (st == AF_OK && pb->reset_timeout != NULL) {
    uint64_t ms = 0;
    st = af_duration_to_ms(pb->reset_timeout, cfg->reset_timeout_ms,
                           RESET_TIMEOUT_MAX_MS, "reset_timeout", &ms, err);
    if (st == AF_OK && ms == 0)
      st = af_error_set(err, AF_EINVAL, "reset_timeout must be > 0");
    if (st == AF_OK)
      cfg->reset_timeout_ms = ms;
  }
  if (st == AF_OK)
    st = check_count(pb->half_open_max_calls, "half_open_max_calls",
                     &cfg->half_open_max_calls, err);
  if (st == AF_OK)
    st = check_count(pb->success_threshold, "success_threshold",
                     &cfg->success_threshold, err);
  if (st != AF_OK)
    return st;
  if (pb->n_excluded_errors > PB_EXCLUDED_MAX)
    return af_error_set(err, AF_EINVAL,
                        "excluded_errors must have at most %d entries",
                        PB_EXCLUDED_MAX);
  for (size_t i = 0; i < pb->n_excluded_errors; i++) {
    const char *e = pb->excluded_errors[i];
    if (!af_name_valid(e))
      return af_error_set(err, AF_EINVAL,
                          "excluded_errors[%zu] must be 1-%d bytes of "
                          "printable UTF-8",
                          i, AF_NAME_MAX);
    memcpy(cfg->excluded_errors[i], e, strlen(e) + 1);
  }
  cfg->excluded_count = pb->n_excluded_errors;
  if (pb->weight != NULL) {
    double w = pb->weight->value;
    if (!isfinite(w) || w < AF_HEALTH_WEIGHT_MIN || w > AF_HEALTH_WEIGHT_MAX)
      return af_error_set(err, AF_EINVAL, "weight must be > 0 and at most %g",
                          AF_HEALTH_WEIGHT_MAX);
    cfg->weight = w;
  }
  const char *d = pb->description ? pb->description : "";
  size_t dl = strlen(d);
  if (dl > PB_DESCRIPTION_MAX || !utf8_valid(d))
    return af_error_set(err, AF_EINVAL,
                        "description must be at most %d bytes of UTF-8",
                        PB_DESCRIPTION_MAX);
  memcpy(cfg->description, d, dl + 1);
  return af_breaker_config_validate(cfg, err);
}

/* ------------------------------------------------------------------ */
/* BreakerInfo                                                        */

/* Storage for one BreakerInfo. Its strings point into the core snapshot
 * given to pb_info_build, which must outlive the packing. */
typedef struct {
  Antifragility__V1__BreakerInfo msg;
  Antifragility__V1__BreakerConfig cfg;
  Google__Protobuf__UInt32Value fail_max, half_open_max_calls,
      success_threshold;
  Google__Protobuf__DoubleValue weight;
  Google__Protobuf__Duration reset_timeout;
  Google__Protobuf__Timestamp last_transition, last_report, next_half_open_at,
      registered_at;
  char *excluded[AF_BREAKER_EXCLUDED_MAX];
  char *instances[PB_INSTANCES_MAX];
} pb_info_t;

static Antifragility__V1__BreakerInfo *
pb_info_build(pb_info_t *p, const af_svc_breaker_t *svc, af_breaker_info_t *ci)
{
  antifragility__v1__breaker_info__init(&p->msg);
  antifragility__v1__breaker_config__init(&p->cfg);
  p->msg.name = ci->name;
  p->msg.state = af_breaker_state_to_pb(ci->state);
  p->msg.fail_counter = ci->fail_count;
  p->msg.success_counter = ci->success_count;
  p->msg.rejected_count = ci->rejected_count;
  p->msg.consecutive_failures = ci->consecutive_failures;
  p->msg.consecutive_successes = ci->consecutive_successes;

  const af_breaker_config_t *c = &ci->config;
  google__protobuf__uint32_value__init(&p->fail_max);
  p->fail_max.value = c->fail_max;
  p->cfg.fail_max = &p->fail_max;
  p->cfg.reset_timeout =
      af_duration_from_ms(&p->reset_timeout, c->reset_timeout_ms);
  google__protobuf__uint32_value__init(&p->half_open_max_calls);
  p->half_open_max_calls.value = c->half_open_max_calls;
  p->cfg.half_open_max_calls = &p->half_open_max_calls;
  google__protobuf__uint32_value__init(&p->success_threshold);
  p->success_threshold.value = c->success_threshold;
  p->cfg.success_threshold = &p->success_threshold;
  google__protobuf__double_value__init(&p->weight);
  p->weight.value = c->weight;
  p->cfg.weight = &p->weight;
  size_t ne = c->excluded_count;
  if (ne > AF_BREAKER_EXCLUDED_MAX)
    ne = AF_BREAKER_EXCLUDED_MAX;
  for (size_t i = 0; i < ne; i++)
    p->excluded[i] = ci->config.excluded_errors[i];
  p->cfg.n_excluded_errors = ne;
  p->cfg.excluded_errors = ne ? p->excluded : NULL;
  p->cfg.description = ci->config.description;
  p->msg.config = &p->cfg;

  p->msg.last_transition =
      af_ts_from_ns(&p->last_transition, ci->last_transition_wall_ns);
  p->msg.last_report = af_ts_from_ns(&p->last_report, ci->last_report_wall_ns);
  p->msg.registered_at =
      af_ts_from_ns(&p->registered_at, ci->registered_wall_ns);
  if (ci->state == AF_BREAKER_OPEN && ci->next_half_open_mono_ns != 0) {
    const af_clock_t *clk = af_engine_clock(svc->app->engine);
    int64_t left =
        (int64_t)ci->next_half_open_mono_ns - (int64_t)af_clock_mono_ns(clk);
    p->msg.next_half_open_at =
        af_ts_from_ns(&p->next_half_open_at, af_clock_wall_ns(clk) + left);
  }
  /* core keeps the oldest first; the wire wants the most recent first */
  size_t ni = 0;
  for (size_t i = ci->instance_count; i > 0 && ni < PB_INSTANCES_MAX; i--) {
    char *id = ci->instances[i - 1];
    if (strlen(id) <= PB_INSTANCE_ID_MAX)
      p->instances[ni++] = id;
  }
  p->msg.n_instance_ids = ni;
  p->msg.instance_ids = ni ? p->instances : NULL;
  p->msg.stale = false;
  p->msg.constitutional_hash = (char *)af_engine_hash(svc->app->engine);
  return &p->msg;
}

/* A BreakerInfo for a breaker that no longer exists: name and last state. */
static Antifragility__V1__BreakerInfo *pb_info_gone(pb_info_t *p,
                                                    const af_svc_breaker_t *svc,
                                                    char *name,
                                                    af_breaker_state_t last)
{
  antifragility__v1__breaker_info__init(&p->msg);
  p->msg.name = name;
  p->msg.state = af_breaker_state_to_pb(last);
  p->msg.constitutional_hash = (char *)af_engine_hash(svc->app->engine);
  return &p->msg;
}

/* Response storage for the unary RPCs that return one BreakerInfo. */
typedef struct {
  af_breaker_info_t core;
  pb_info_t pb;
} info_buf_t;

/* ------------------------------------------------------------------ */
/* Lookup                                                             */

/* Finds name, or with auto_register creates it with pbcfg (validated
 * first even if the breaker exists, so bad input is always refused).
 * *registered tells whether this call created it. On AF_OK *out returns
 * owned (af_breaker_release). */
static af_status_t lookup(af_svc_breaker_t *svc, const char *name,
                          bool auto_register,
                          const Antifragility__V1__BreakerConfig *pbcfg,
                          af_breaker_t **out, bool *registered, af_error_t *err)
{
  af_breaker_config_t cfg;
  af_status_t st = config_from_pb(pbcfg, &cfg, err);
  if (st != AF_OK)
    return st;
  *registered = false;
  if (af_breaker_registry_find(registry(svc), name, out) == AF_OK)
    return AF_OK;
  if (!auto_register)
    return not_found(err, name);
  /* A concurrent creator may win between find and here; get_or_create
   * then applies our config to it, as a re-register would. */
  bool created = false;
  st = af_breaker_registry_get_or_create(registry(svc), name, &cfg, out,
                                         &created, err);
  if (st == AF_OK)
    *registered = created;
  return st;
}

/* ------------------------------------------------------------------ */
/* RegisterBreaker                                                    */

static void on_register(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_svc_breaker_t *svc = ctx;
  const Antifragility__V1__RegisterBreakerRequest *req =
      (const Antifragility__V1__RegisterBreakerRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  if (!af_check_name(req->name, "name", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_breaker_config_t cfg;
  af_status_t st = config_from_pb(req->config, &cfg, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  if (req->update_config &&
      !af_auth_require(rpc, AF_ROLE_ADMIN,
                       "RegisterBreaker with update_config")) {
    return;
  }
  af_breaker_t *b = NULL;
  bool created = false;
  if (!req->update_config &&
      af_breaker_registry_find(registry(svc), req->name, &b) == AF_OK) {
    created = false; /* exists: keep its config */
  } else {
    st = af_breaker_registry_get_or_create(registry(svc), req->name, &cfg, &b,
                                           &created, &err);
    if (st != AF_OK) {
      af_rpc_fail_status(rpc, st, &err);
      return;
    }
  }
  info_buf_t *ib = af_malloc(sizeof(*ib));
  if (ib == NULL) {
    af_breaker_release(b);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  af_breaker_info(b, &ib->core);
  af_breaker_release(b);
  Antifragility__V1__RegisterBreakerResponse resp =
      ANTIFRAGILITY__V1__REGISTER_BREAKER_RESPONSE__INIT;
  resp.breaker = pb_info_build(&ib->pb, svc, &ib->core);
  resp.created = created;
  af_rpc_reply(rpc, &resp.base);
  af_free(ib);
}

/* ------------------------------------------------------------------ */
/* ReportOutcome / ReportOutcomes                                     */

typedef struct {
  af_breaker_state_t prev, now;
  bool excluded, registered;
} outcome_t;

static bool is_excluded(af_breaker_t *b, const char *error_type)
{
  af_breaker_info_t *ci = af_malloc(sizeof(*ci));
  if (ci == NULL)
    return false;
  af_breaker_info(b, ci);
  bool found = false;
  for (size_t i = 0; i < ci->config.excluded_count && !found; i++)
    found = strcmp(ci->config.excluded_errors[i], error_type) == 0;
  af_free(ci);
  return found;
}

static af_status_t
apply_outcome(af_svc_breaker_t *svc,
              const Antifragility__V1__ReportOutcomeRequest *r, outcome_t *out,
              af_error_t *err)
{
  if (!af_check_name(r->breaker_name, "breaker_name", err))
    return AF_EINVAL;
  const char *et = r->error_type ? r->error_type : "";
  if (et[0] != '\0' && !af_name_valid(et))
    return af_error_set(err, AF_EINVAL,
                        "error_type must be at most %d bytes of printable "
                        "UTF-8",
                        AF_NAME_MAX);
  if (!check_instance_id(r->instance_id, err))
    return AF_EINVAL;
  if (!isfinite(r->latency_ms) || r->latency_ms < 0.0)
    return af_error_set(err, AF_EINVAL, "latency_ms must be >= 0");
  af_breaker_t *b = NULL;
  af_status_t st = lookup(svc, r->breaker_name, r->auto_register, r->config, &b,
                          &out->registered, err);
  if (st != AF_OK)
    return st;
  out->excluded = !r->success && et[0] != '\0' && is_excluded(b, et);
  out->prev = af_breaker_state(b);
  const char *inst =
      r->instance_id && r->instance_id[0] ? r->instance_id : NULL;
  out->now = af_breaker_report_outcome(b, r->success, et[0] ? et : NULL, inst);
  af_breaker_release(b);
  return AF_OK;
}

static void on_report_outcome(af_rpc_t *rpc, const ProtobufCMessage *msg,
                              void *ctx)
{
  af_error_t err;
  af_error_clear(&err);
  outcome_t o;
  memset(&o, 0, sizeof(o));
  af_status_t st = apply_outcome(
      ctx, (const Antifragility__V1__ReportOutcomeRequest *)msg, &o, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  Antifragility__V1__ReportOutcomeResponse resp =
      ANTIFRAGILITY__V1__REPORT_OUTCOME_RESPONSE__INIT;
  resp.state = af_breaker_state_to_pb(o.now);
  resp.previous_state = af_breaker_state_to_pb(o.prev);
  resp.transitioned = o.now != o.prev;
  resp.excluded = o.excluded;
  resp.registered = o.registered;
  af_rpc_reply(rpc, &resp.base);
}

/* Per-call summary of a ReportOutcomes stream (af_rpc_set_user). */
typedef struct {
  uint64_t received, applied, rejected, opened, closed, first_error_index;
  bool has_error;
  char first_error[PB_DESCRIPTION_MAX + 1];
} outcomes_t;

static grpc_status_code on_outcomes_msg(af_rpc_t *rpc,
                                        const ProtobufCMessage *msg, void *ctx)
{
  outcomes_t *acc = af_rpc_user(rpc);
  if (acc == NULL) {
    acc = af_calloc(1, sizeof(*acc));
    if (acc == NULL) {
      af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return GRPC_STATUS_RESOURCE_EXHAUSTED;
    }
    af_rpc_set_user(rpc, acc, af_free);
  }
  uint64_t index = acc->received++;
  af_error_t err;
  af_error_clear(&err);
  outcome_t o;
  memset(&o, 0, sizeof(o));
  af_status_t st = apply_outcome(
      ctx, (const Antifragility__V1__ReportOutcomeRequest *)msg, &o, &err);
  if (st != AF_OK) {
    acc->rejected++;
    if (!acc->has_error) {
      acc->has_error = true;
      acc->first_error_index = index;
      snprintf(acc->first_error, sizeof(acc->first_error), "%s",
               err.message[0] ? err.message : af_status_str(st));
    }
    return GRPC_STATUS_OK;
  }
  acc->applied++;
  if (o.now != o.prev && o.now == AF_BREAKER_OPEN)
    acc->opened++;
  if (o.now != o.prev && o.now == AF_BREAKER_CLOSED)
    acc->closed++;
  return GRPC_STATUS_OK;
}

static void on_outcomes_end(af_rpc_t *rpc, void *ctx)
{
  (void)ctx;
  const outcomes_t *acc = af_rpc_user(rpc);
  Antifragility__V1__ReportOutcomesResponse resp =
      ANTIFRAGILITY__V1__REPORT_OUTCOMES_RESPONSE__INIT;
  if (acc != NULL) {
    resp.received = acc->received;
    resp.applied = acc->applied;
    resp.rejected = acc->rejected;
    resp.breakers_opened = acc->opened;
    resp.breakers_closed = acc->closed;
    if (acc->has_error) {
      resp.first_error = (char *)acc->first_error;
      resp.first_error_index = acc->first_error_index;
    }
  }
  af_rpc_reply(rpc, &resp.base);
}

/* ------------------------------------------------------------------ */
/* ReportState                                                        */

static void on_report_state(af_rpc_t *rpc, const ProtobufCMessage *msg,
                            void *ctx)
{
  af_svc_breaker_t *svc = ctx;
  const Antifragility__V1__ReportStateRequest *req =
      (const Antifragility__V1__ReportStateRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  af_breaker_state_t want;
  if (!af_check_name(req->name, "name", &err) ||
      !check_instance_id(req->instance_id, &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  if (!af_breaker_state_from_pb(req->state, &want) ||
      (want != AF_BREAKER_CLOSED && want != AF_BREAKER_OPEN &&
       want != AF_BREAKER_HALF_OPEN)) {
    af_rpc_fail(rpc, GRPC_STATUS_INVALID_ARGUMENT,
                "state must be CLOSED, OPEN or HALF_OPEN");
    return;
  }
  if (req->observed_at != NULL &&
      (req->observed_at->nanos < 0 || req->observed_at->nanos >= 1000000000)) {
    af_rpc_fail(rpc, GRPC_STATUS_INVALID_ARGUMENT,
                "observed_at must be a valid timestamp");
    return;
  }
  af_breaker_t *b = NULL;
  bool registered = false;
  af_status_t st = lookup(svc, req->name, req->auto_register, req->config, &b,
                          &registered, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  af_breaker_state_t prev = af_breaker_state(b);
  const char *inst =
      req->instance_id && req->instance_id[0] ? req->instance_id : NULL;
  st = af_breaker_report_state(b, want, inst);
  if (st != AF_OK && st != AF_ESTATE) { /* ESTATE: forced here, recorded */
    af_breaker_release(b);
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  info_buf_t *ib = af_malloc(sizeof(*ib));
  if (ib == NULL) {
    af_breaker_release(b);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  af_breaker_info(b, &ib->core);
  af_breaker_release(b);
  Antifragility__V1__ReportStateResponse resp =
      ANTIFRAGILITY__V1__REPORT_STATE_RESPONSE__INIT;
  resp.breaker = pb_info_build(&ib->pb, svc, &ib->core);
  resp.previous_state = af_breaker_state_to_pb(prev);
  resp.transitioned = ib->core.state != prev;
  af_rpc_reply(rpc, &resp.base);
  af_free(ib);
}

/* ------------------------------------------------------------------ */
/* GetBreaker, ResetBreaker, UnregisterBreaker                        */

typedef enum { OP_GET, OP_RESET, OP_UNREGISTER } name_op_t;

static void by_name(af_svc_breaker_t *svc, af_rpc_t *rpc, const char *name,
                    name_op_t op)
{
  af_error_t err;
  af_error_clear(&err);
  if (!af_check_name(name, "name", &err)) {
    af_rpc_fail_status(rpc, AF_EINVAL, &err);
    return;
  }
  af_breaker_t *b = NULL;
  if (af_breaker_registry_find(registry(svc), name, &b) != AF_OK) {
    af_status_t st = not_found(&err, name);
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  info_buf_t *ib = af_malloc(sizeof(*ib));
  if (ib == NULL) {
    af_breaker_release(b);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  af_breaker_state_t prev = af_breaker_state(b);
  af_status_t st = AF_OK;
  switch (op) {
  case OP_GET:
    af_breaker_info(b, &ib->core);
    break;
  case OP_RESET:
    st = af_breaker_registry_reset(registry(svc), name);
    af_breaker_info(b, &ib->core);
    break;
  case OP_UNREGISTER:
    af_breaker_info(b, &ib->core); /* as it was when removed */
    st = af_breaker_registry_unregister(registry(svc), name);
    break;
  }
  af_breaker_release(b);
  if (st != AF_OK) { /* raced with another unregister */
    af_free(ib);
    st = not_found(&err, name);
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  Antifragility__V1__BreakerInfo *info = pb_info_build(&ib->pb, svc, &ib->core);
  switch (op) {
  case OP_GET: {
    Antifragility__V1__GetBreakerResponse resp =
        ANTIFRAGILITY__V1__GET_BREAKER_RESPONSE__INIT;
    resp.breaker = info;
    af_rpc_reply(rpc, &resp.base);
    break;
  }
  case OP_RESET: {
    Antifragility__V1__ResetBreakerResponse resp =
        ANTIFRAGILITY__V1__RESET_BREAKER_RESPONSE__INIT;
    resp.breaker = info;
    resp.previous_state = af_breaker_state_to_pb(prev);
    af_rpc_reply(rpc, &resp.base);
    break;
  }
  case OP_UNREGISTER: {
    Antifragility__V1__UnregisterBreakerResponse resp =
        ANTIFRAGILITY__V1__UNREGISTER_BREAKER_RESPONSE__INIT;
    resp.breaker = info;
    af_rpc_reply(rpc, &resp.base);
    break;
  }
  }
  af_free(ib);
}

static void on_get(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  by_name(ctx, rpc, ((const Antifragility__V1__GetBreakerRequest *)msg)->name,
          OP_GET);
}

static void on_reset(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  by_name(ctx, rpc, ((const Antifragility__V1__ResetBreakerRequest *)msg)->name,
          OP_RESET);
}

static void on_unregister(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  by_name(ctx, rpc,
          ((const Antifragility__V1__UnregisterBreakerRequest *)msg)->name,
          OP_UNREGISTER);
}

static void on_reset_all(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  (void)msg;
  af_svc_breaker_t *svc = ctx;
  size_t n = af_breaker_registry_reset_all(registry(svc));
  Antifragility__V1__ResetAllBreakersResponse resp =
      ANTIFRAGILITY__V1__RESET_ALL_BREAKERS_RESPONSE__INIT;
  resp.reset_count = n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
  af_rpc_reply(rpc, &resp.base);
}

/* ------------------------------------------------------------------ */
/* ListBreakers                                                       */

static void on_list(af_rpc_t *rpc, const ProtobufCMessage *msg, void *ctx)
{
  af_svc_breaker_t *svc = ctx;
  const Antifragility__V1__ListBreakersRequest *req =
      (const Antifragility__V1__ListBreakersRequest *)msg;
  size_t page = req->page_size == 0 || req->page_size > LIST_PAGE_MAX
                    ? LIST_PAGE_MAX
                    : req->page_size;
  const char *token = req->page_token ? req->page_token : "";
  const char *prefix = req->name_prefix ? req->name_prefix : "";
  if (token[0] != '\0' && !af_name_valid(token)) {
    af_rpc_fail(rpc, GRPC_STATUS_INVALID_ARGUMENT, "page_token is invalid");
    return;
  }
  if (prefix[0] != '\0' && !af_name_valid(prefix)) {
    af_rpc_fail(rpc, GRPC_STATUS_INVALID_ARGUMENT,
                "name_prefix must be at most %d bytes of printable UTF-8",
                AF_NAME_MAX);
    return;
  }
  bool filter_state =
      req->state_filter !=
      ANTIFRAGILITY__V1__BREAKER_STATE__BREAKER_STATE_UNSPECIFIED;
  af_breaker_state_t want = AF_BREAKER_CLOSED;
  if (filter_state && !af_breaker_state_from_pb(req->state_filter, &want)) {
    af_rpc_fail(rpc, GRPC_STATUS_INVALID_ARGUMENT,
                "state_filter must be a BreakerState");
    return;
  }
  af_breaker_info_t *all = NULL;
  size_t n = 0;
  af_status_t st = af_breaker_registry_list(registry(svc), &all, &n);
  pb_info_t *pbs = af_calloc(page, sizeof(*pbs));
  Antifragility__V1__BreakerInfo **items = af_calloc(page, sizeof(*items));
  if (st != AF_OK || pbs == NULL || items == NULL) {
    af_free(all);
    af_free(pbs);
    af_free(items);
    af_rpc_fail(rpc, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  size_t plen = strlen(prefix), k = 0, total = 0;
  bool more = false;
  for (size_t i = 0; i < n; i++) {
    af_breaker_info_t *ci = &all[i];
    if (strncmp(ci->name, prefix, plen) != 0 ||
        (filter_state && ci->state != want))
      continue;
    total++;
    if (token[0] != '\0' && strcmp(ci->name, token) <= 0)
      continue;
    if (k < page) {
      items[k] = pb_info_build(&pbs[k], svc, ci);
      k++;
    } else {
      more = true;
    }
  }
  Antifragility__V1__ListBreakersResponse resp =
      ANTIFRAGILITY__V1__LIST_BREAKERS_RESPONSE__INIT;
  resp.n_breakers = k;
  resp.breakers = k ? items : NULL;
  if (more && k > 0)
    resp.next_page_token = items[k - 1]->name;
  resp.total = total > UINT32_MAX ? UINT32_MAX : (uint32_t)total;
  af_rpc_reply(rpc, &resp.base);
  af_free(items);
  af_free(pbs);
  af_free(all);
}

/* ------------------------------------------------------------------ */
/* WatchBreakers                                                      */

typedef struct pend {
  struct pend *fifo_next, *hash_next;
  pb_kind_t kind;
  af_breaker_state_t from, to; /* TRANSITION: first from, latest to */
  int64_t wall_ns;
  char name[AF_NAME_MAX + 1];
} pend_t;

typedef struct {
  af_svc_breaker_t *svc;
  af_stream_t *st;
  char **names; /* filter; NULL = all */
  size_t n_names;
  /* Fill-only (never touched by on_event): the snapshot being sent. */
  af_breaker_t **snap;
  size_t snap_n, snap_i;
  bool snap_active;
  /* Under mu. */
  pthread_mutex_t mu;
  bool resync; /* send (again) a full snapshot */
  pend_t *head, *tail;
  pend_t *buckets[WATCH_BUCKETS];
  size_t pending_n;
  uint64_t dropped; /* events folded since the previous message */
} watch_t;

/* One message and everything it points to; resp first (freed through
 * the ProtobufCMessage pointer). */
typedef struct {
  Antifragility__V1__WatchBreakersResponse resp;
  Google__Protobuf__Timestamp ts;
  pb_info_t pb;
  af_breaker_info_t core;
  char name[AF_NAME_MAX + 1];
} watch_msg_t;

static void watch_msg_free(ProtobufCMessage *m) { af_free(m); }

static size_t name_hash(const char *s)
{
  size_t h = 5381;
  while (*s)
    h = h * 33u + (unsigned char)*s++;
  return h % WATCH_BUCKETS;
}

static bool watch_wants(const watch_t *w, const char *name)
{
  if (w->names == NULL)
    return true;
  for (size_t i = 0; i < w->n_names; i++)
    if (strcmp(w->names[i], name) == 0)
      return true;
  return false;
}

/* Under mu. */
static void pending_clear_locked(watch_t *w)
{
  pend_t *p = w->head;
  while (p) {
    pend_t *next = p->fifo_next;
    af_free(p);
    p = next;
  }
  w->head = w->tail = NULL;
  memset(w->buckets, 0, sizeof(w->buckets));
  w->pending_n = 0;
}

/* Under mu: removes and returns the oldest entry (caller frees). */
static pend_t *pending_pop_locked(watch_t *w)
{
  pend_t *p = w->head;
  if (p == NULL)
    return NULL;
  w->head = p->fifo_next;
  if (w->head == NULL)
    w->tail = NULL;
  for (pend_t **q = &w->buckets[name_hash(p->name)]; *q; q = &(*q)->hash_next)
    if (*q == p) {
      *q = p->hash_next;
      break;
    }
  w->pending_n--;
  return p;
}

static pb_kind_t kind_from_core(af_breaker_event_kind_t k)
{
  switch (k) {
  case AF_BREAKER_EVENT_REGISTERED:
    return KIND(REGISTERED);
  case AF_BREAKER_EVENT_UNREGISTERED:
    return KIND(UNREGISTERED);
  case AF_BREAKER_EVENT_TRANSITION:
    return KIND(TRANSITION);
  case AF_BREAKER_EVENT_CONFIG_CHANGED:
    return KIND(CONFIG_CHANGED);
  default:
    return KIND(UNSPECIFIED);
  }
}

/* Folds a new event into a pending one: (un)registration beats a
 * transition beats a config change; a transition keeps the first from. */
static void pend_merge(pend_t *p, pb_kind_t kind, const af_breaker_event_t *ev)
{
  bool lifecycle = kind == KIND(REGISTERED) || kind == KIND(UNREGISTERED);
  bool p_lifecycle =
      p->kind == KIND(REGISTERED) || p->kind == KIND(UNREGISTERED);
  if (lifecycle) {
    p->kind = kind;
    p->from = ev->from;
  } else if (kind == KIND(TRANSITION)) {
    if (p->kind == KIND(CONFIG_CHANGED)) {
      p->kind = kind;
      p->from = ev->from;
    } else if (p->kind != KIND(TRANSITION) && !p_lifecycle) {
      p->from = ev->from;
    }
  }
  p->to = ev->to;
  p->wall_ns = ev->wall_ns;
}

/* Hub callback, hub lock held: record and notify, nothing else. */
static void watch_on_event(af_stream_t *st, void *user,
                           const af_engine_event_t *eev)
{
  watch_t *w = user;
  if (eev->kind != AF_ENGINE_EV_BREAKER || eev->breaker == NULL)
    return;
  const af_breaker_event_t *ev = eev->breaker;
  pb_kind_t kind = kind_from_core(ev->kind);
  if (kind == KIND(UNSPECIFIED) || ev->name == NULL ||
      !watch_wants(w, ev->name))
    return;
  pthread_mutex_lock(&w->mu);
  if (w->resync) { /* a fresh snapshot will carry it */
    w->dropped++;
    pthread_mutex_unlock(&w->mu);
    af_stream_notify(st);
    return;
  }
  size_t h = name_hash(ev->name);
  pend_t *p = w->buckets[h];
  while (p && strcmp(p->name, ev->name) != 0)
    p = p->hash_next;
  if (p != NULL) {
    pend_merge(p, kind, ev);
    w->dropped++;
  } else if (w->pending_n >= WATCH_PENDING_MAX ||
             (p = af_calloc(1, sizeof(*p))) == NULL) {
    w->dropped += w->pending_n + 1;
    pending_clear_locked(w);
    w->resync = true;
  } else {
    p->kind = kind;
    p->from = ev->from;
    p->to = ev->to;
    p->wall_ns = ev->wall_ns;
    snprintf(p->name, sizeof(p->name), "%s", ev->name);
    p->hash_next = w->buckets[h];
    w->buckets[h] = p;
    if (w->tail)
      w->tail->fifo_next = p;
    else
      w->head = p;
    w->tail = p;
    w->pending_n++;
  }
  pthread_mutex_unlock(&w->mu);
  af_stream_notify(st);
}

static void snap_release(watch_t *w)
{
  for (size_t i = 0; i < w->snap_n; i++)
    af_breaker_release(w->snap[i]);
  af_free(w->snap);
  w->snap = NULL;
  w->snap_n = w->snap_i = 0;
  w->snap_active = false;
}

/* Fill thread: takes a handle to every watched breaker. Returns false on
 * allocation failure (the snapshot is then retried on the next fill). */
static bool snap_build(watch_t *w)
{
  snap_release(w);
  af_breaker_registry_t *reg = registry(w->svc);
  af_breaker_info_t *all = NULL;
  size_t n = 0;
  if (af_breaker_registry_list(reg, &all, &n) != AF_OK)
    return false;
  af_breaker_t **v = n ? af_calloc(n, sizeof(*v)) : NULL;
  if (n && v == NULL) {
    af_free(all);
    return false;
  }
  size_t k = 0;
  for (size_t i = 0; i < n; i++)
    if (watch_wants(w, all[i].name) &&
        af_breaker_registry_find(reg, all[i].name, &v[k]) == AF_OK)
      k++;
  af_free(all);
  w->snap = v;
  w->snap_n = k;
  w->snap_i = 0;
  w->snap_active = true;
  return true;
}

static ProtobufCMessage *watch_fill(af_stream_t *st, bool heartbeat, void *user,
                                    af_msg_free_fn *free_out)
{
  watch_t *w = user;
  af_svc_breaker_t *svc = w->svc;
  pthread_mutex_lock(&w->mu);
  bool resync = w->resync;
  w->resync = false;
  pthread_mutex_unlock(&w->mu);
  if (resync && !snap_build(w)) {
    pthread_mutex_lock(&w->mu);
    w->resync = true;
    pthread_mutex_unlock(&w->mu);
    return NULL; /* out of memory: retry at the next notify/heartbeat */
  }
  watch_msg_t *m = af_malloc(sizeof(*m));
  if (m == NULL)
    return NULL;
  Antifragility__V1__WatchBreakersResponse *r = &m->resp;
  antifragility__v1__watch_breakers_response__init(r);
  const af_clock_t *clk = af_engine_clock(svc->app->engine);
  pend_t *p = NULL;
  bool more;

  if (w->snap_active) {
    r->kind = KIND(SNAPSHOT);
    if (w->snap_i < w->snap_n) {
      af_breaker_info(w->snap[w->snap_i++], &m->core);
      r->breaker = pb_info_build(&m->pb, svc, &m->core);
    }
    if (w->snap_i >= w->snap_n) {
      r->snapshot_complete = true;
      snap_release(w);
    }
    r->timestamp = af_ts_from_ns(&m->ts, af_clock_wall_ns(clk));
    pthread_mutex_lock(&w->mu);
  } else {
    pthread_mutex_lock(&w->mu);
    p = pending_pop_locked(w);
    if (p == NULL && !heartbeat) {
      pthread_mutex_unlock(&w->mu);
      af_free(m);
      return NULL;
    }
  }
  r->coalesced = w->dropped;
  w->dropped = 0;
  more = w->snap_active || w->resync || w->head != NULL;
  pthread_mutex_unlock(&w->mu);

  if (p != NULL) {
    r->kind = p->kind;
    af_breaker_t *b = NULL;
    if (p->kind != KIND(UNREGISTERED) &&
        af_breaker_registry_find(registry(svc), p->name, &b) == AF_OK) {
      af_breaker_info(b, &m->core);
      af_breaker_release(b);
      r->breaker = pb_info_build(&m->pb, svc, &m->core);
    } else {
      memcpy(m->name, p->name, sizeof(m->name));
      r->breaker = pb_info_gone(&m->pb, svc, m->name, p->to);
    }
    if (p->kind == KIND(TRANSITION)) {
      r->from_state = af_breaker_state_to_pb(p->from);
      r->to_state = af_breaker_state_to_pb(p->to);
    }
    r->timestamp = af_ts_from_ns(&m->ts, p->wall_ns);
    af_free(p);
  } else if (!r->snapshot_complete && r->kind != KIND(SNAPSHOT)) {
    r->heartbeat = true; /* nothing pending and a heartbeat is due */
    r->timestamp = af_ts_from_ns(&m->ts, af_clock_wall_ns(clk));
  }
  r->sequence = af_stream_seq_next(st);
  if (more)
    af_stream_notify(st); /* send in flight: fill runs again after it */
  *free_out = watch_msg_free;
  return &r->base;
}

static void watch_free(watch_t *w)
{
  if (w == NULL)
    return;
  snap_release(w);
  pending_clear_locked(w);
  for (size_t i = 0; i < w->n_names; i++)
    af_free(w->names[i]);
  af_free(w->names);
  pthread_mutex_destroy(&w->mu);
  af_free(w);
}

static void watch_done(af_stream_t *st, void *user)
{
  watch_t *w = user;
  af_log(AF_LOG_DEBUG, "WatchBreakers stream ended");
  af_hub_remove(w->svc->app->breaker_hub, st); /* no event after this */
  watch_free(w);
}

static void on_watch(af_stream_t *st, const ProtobufCMessage *msg, void *ctx)
{
  af_svc_breaker_t *svc = ctx;
  const Antifragility__V1__WatchBreakersRequest *req =
      (const Antifragility__V1__WatchBreakersRequest *)msg;
  if (req->n_names > WATCH_NAMES_MAX) {
    af_stream_fail(st, GRPC_STATUS_INVALID_ARGUMENT,
                   "names must have at most %d entries", WATCH_NAMES_MAX);
    return;
  }
  for (size_t i = 0; i < req->n_names; i++)
    if (!af_name_valid(req->names[i])) {
      af_stream_fail(st, GRPC_STATUS_INVALID_ARGUMENT,
                     "names[%zu] must be 1-%d bytes of printable UTF-8", i,
                     AF_NAME_MAX);
      return;
    }
  watch_t *w = af_calloc(1, sizeof(*w));
  if (w == NULL) {
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  pthread_mutex_init(&w->mu, NULL);
  w->svc = svc;
  w->st = st;
  w->resync = true; /* the first fill takes the snapshot */
  if (req->n_names > 0) {
    w->names = af_calloc(req->n_names, sizeof(*w->names));
    for (size_t i = 0; w->names && i < req->n_names; i++) {
      w->names[i] = af_strdup(req->names[i]);
      if (w->names[i] == NULL)
        break;
      w->n_names++;
    }
    if (w->n_names != req->n_names) {
      watch_free(w);
      af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
      return;
    }
  }
  /* Subscribe before the snapshot is taken (first fill): an event in
   * between is sent twice at worst, never lost. */
  if (af_hub_add(svc->app->breaker_hub, st, w, watch_on_event) != AF_OK) {
    watch_free(w);
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (af_stream_set_producer(st, watch_fill, watch_done, w) != AF_OK) {
    af_hub_remove(svc->app->breaker_hub, st);
    watch_free(w);
    af_stream_fail(st, GRPC_STATUS_INTERNAL, "cannot start the stream");
  }
}

/* ------------------------------------------------------------------ */
/* Registration                                                       */

af_status_t af_svc_breaker_register(af_app_t *app)
{
  if (app == NULL)
    return AF_EINVAL;
  af_svc_breaker_t *svc = af_calloc(1, sizeof(*svc));
  if (svc == NULL)
    return AF_ENOMEM;
  svc->app = app;
  app->breaker = svc;
  af_server_t *srv = app->srv;
  af_status_t st = af_server_add_unary(
      srv, SVC_PATH "RegisterBreaker",
      &antifragility__v1__register_breaker_request__descriptor, on_register,
      svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "ReportOutcome",
        &antifragility__v1__report_outcome_request__descriptor,
        on_report_outcome, svc);
  if (st == AF_OK)
    st = af_server_add_client_stream(
        srv, SVC_PATH "ReportOutcomes",
        &antifragility__v1__report_outcome_request__descriptor, on_outcomes_msg,
        on_outcomes_end, svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "ReportState",
        &antifragility__v1__report_state_request__descriptor, on_report_state,
        svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "GetBreaker",
        &antifragility__v1__get_breaker_request__descriptor, on_get, svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "ListBreakers",
        &antifragility__v1__list_breakers_request__descriptor, on_list, svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "ResetBreaker",
        &antifragility__v1__reset_breaker_request__descriptor, on_reset, svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "ResetAllBreakers",
        &antifragility__v1__reset_all_breakers_request__descriptor,
        on_reset_all, svc);
  if (st == AF_OK)
    st = af_server_add_unary(
        srv, SVC_PATH "UnregisterBreaker",
        &antifragility__v1__unregister_breaker_request__descriptor,
        on_unregister, svc);
  if (st == AF_OK)
    st = af_server_add_server_stream(
        srv, SVC_PATH "WatchBreakers",
        &antifragility__v1__watch_breakers_request__descriptor, on_watch, svc);
  /* on failure svc stays hung on the app: af_app_destroy frees it */
  return st;
}

void af_svc_breaker_destroy(af_app_t *app)
{
  if (app == NULL)
    return;
  af_free(app->breaker);
  app->breaker = NULL;
}
