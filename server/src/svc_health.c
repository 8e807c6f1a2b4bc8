/*
 * svc_health.c - antifragility.v1.HealthService: GetSystemHealth,
 * GetHealthHistory, GetHealthMetrics and the WatchHealth stream.
 *
 * Owns: af_svc_health_t (hung on app->health): one engine subscription that
 * forwards breaker REGISTERED / UNREGISTERED events into app->health_hub
 * (app.c forwards the health changes), one status-change callback on the
 * aggregator (for the status_changes metric), and one watch_t per open
 * WatchHealth stream.
 *
 * Reports: every RPC builds its report from af_health_report (score, status,
 * counts, lists) plus the breaker registry (fail / success counters, last
 * transition) for at most AF_SVC_HEALTH_LIST_MAX details. The lists of the
 * message borrow the strings of the af_health_report_t they came from; a
 * report_t owns both and is freed in one go.
 *
 * WatchHealth: the first fill sends the current report. After that each
 * stream hears of (a) every score/status change the aggregator publishes
 * (the engine recomputes on the breaker transition itself, so this is
 * milliseconds, not the 1 s snapshot tick) and (b) breakers joining or
 * leaving, which change the report without moving the score. on_event only
 * records and calls af_stream_notify; the fill, on the server's dispatch
 * thread, builds the *current* report and sends it if it differs from the
 * last one sent on this stream in status, counts or lists (or, with
 * include_score_changes, in score alone). Notifies that arrive while a send
 * is in flight are folded by the framework into one later fill (latest
 * wins), so a slow reader gets the newest state, never a queue. A heartbeat
 * fill sends {sequence, heartbeat} unless the report changed (then the
 * report goes out instead).
 *
 * Ordering caveat: the engine publishes REGISTERED / UNREGISTERED *before*
 * it tracks / untracks the breaker in the aggregator (cause before effect),
 * and tracking a CLOSED breaker into an all-closed system publishes no health
 * change. So a fill woken by such an event may run before the aggregator
 * caught up, and nothing would wake it again. The watch therefore remembers
 * the latest membership event and the fill re-reads the report (yielding
 * the CPU in between) until it reflects that event, for at most
 * MEMBERSHIP_WAIT_NS; the gap is the rest of one engine subscriber loop on
 * another thread, i.e. microseconds.
 *
 * Threading: handlers and fills run on server threads; on_event runs on the
 * thread that caused the engine event, under the hub lock (it only takes
 * the watch's own small mutex). Fills of one stream never run concurrently,
 * so the "last sent" summary needs no lock.
 */
#include "app_internal.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "af/alloc.h"
#include "antifragility/v1/health.pb-c.h"
#include "convert.h"
#include "log.h"
#include "status_map.h"

/* Most entries per list of a report (the proto's and nanopb's limit). */
#define AF_SVC_HEALTH_LIST_MAX 64
/* Most snapshots per GetHealthHistory answer. */
#define AF_SVC_HEALTH_HISTORY_MAX 300
/* Longest accepted GetHealthHistory window: one day. */
#define AF_SVC_HEALTH_WINDOW_MAX_MS 86400000ULL
/* How long a fill waits for the aggregator to catch up with a membership
 * event (see the ordering caveat above). */
#define MEMBERSHIP_WAIT_NS 2000000ULL

#define PB_STATUS(x) ANTIFRAGILITY__V1__HEALTH_STATUS__HEALTH_STATUS_##x

struct af_svc_health {
  af_app_t *app;
  int engine_sub_id; /* forwards membership events into health_hub */
  int change_cb_id;  /* counts status changes */
  atomic_ullong status_changes;
};

/* ------------------------------------------------------------------ */
/* Reports                                                            */

typedef struct {
  Antifragility__V1__SystemHealthReport pb;
  af_health_report_t r;
  Google__Protobuf__Timestamp ts;
  Antifragility__V1__CircuitDetail details[AF_SVC_HEALTH_LIST_MAX];
  Antifragility__V1__CircuitDetail *detail_ptrs[AF_SVC_HEALTH_LIST_MAX];
  Google__Protobuf__Timestamp detail_ts[AF_SVC_HEALTH_LIST_MAX][2];
} report_t;

/* What a watcher compares to decide whether a report is news. */
typedef struct {
  af_health_status_t status;
  double score;
  size_t total, closed, half_open, open, disabled, stale;
  uint64_t lists; /* FNV-1a over the degraded, critical and stale lists */
} summary_t;

static uint32_t clamp_u32(size_t n)
{
  return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

static size_t list_len(size_t n, bool *truncated)
{
  if (n > AF_SVC_HEALTH_LIST_MAX) {
    *truncated = true;
    return AF_SVC_HEALTH_LIST_MAX;
  }
  return n;
}

static size_t count_disabled(const af_health_report_t *r)
{
  size_t n = 0;
  for (size_t i = 0; i < r->breaker_count; i++) {
    if (!r->breakers[i].stale && r->breakers[i].state == AF_BREAKER_DISABLED) {
      n++;
    }
  }
  return n;
}

static uint64_t fnv_list(uint64_t h, char *const *names, size_t n)
{
  for (size_t i = 0; i < n; i++) {
    for (const unsigned char *p = (const unsigned char *)names[i]; *p; p++) {
      h = (h ^ *p) * 1099511628211ULL;
    }
    h = (h ^ 0xffu) * 1099511628211ULL; /* separator: no valid name byte */
  }
  return (h ^ 0xfeu) * 1099511628211ULL;
}

static void summarize(const af_health_report_t *r, summary_t *s)
{
  memset(s, 0, sizeof *s);
  s->status = r->status;
  s->score = r->score;
  s->total = r->total;
  s->disabled = count_disabled(r);
  s->closed = r->closed - s->disabled;
  s->half_open = r->half_open;
  s->open = r->open;
  s->stale = r->stale;
  uint64_t h = 14695981039346656037ULL;
  h = fnv_list(h, r->degraded, r->degraded_count);
  h = fnv_list(h, r->critical, r->critical_count);
  s->lists = fnv_list(h, r->stale_names, r->stale_count);
}

/* Fills the per-breaker details from the registry (counters, last
 * transition); a breaker that vanished meanwhile keeps zero counters. */
static void fill_details(af_engine_t *e, report_t *rep, size_t n)
{
  af_breaker_info_t *info = af_malloc(sizeof *info);
  for (size_t i = 0; i < n; i++) {
    const af_health_breaker_t *hb = &rep->r.breakers[i];
    Antifragility__V1__CircuitDetail *d = &rep->details[i];
    antifragility__v1__circuit_detail__init(d);
    d->name = (char *)hb->name;
    d->state = af_breaker_state_to_pb(hb->state);
    d->weight = hb->weight;
    d->stale = hb->stale;
    d->last_report =
        af_ts_from_ns(&rep->detail_ts[i][1], hb->last_touch_wall_ns);
    af_breaker_t *b = NULL;
    if (info != NULL && af_breaker_registry_find(af_engine_breakers(e),
                                                 hb->name, &b) == AF_OK) {
      af_breaker_info(b, info);
      af_breaker_release(b);
      d->fail_counter = info->fail_count;
      d->success_counter = info->success_count;
      d->last_transition =
          af_ts_from_ns(&rep->detail_ts[i][0], info->last_transition_wall_ns);
    }
    rep->detail_ptrs[i] = d;
  }
  af_free(info);
}

/* Builds the current report into *rep (zeroed by the caller). AF_ENOMEM. */
static af_status_t report_build(af_app_t *app, report_t *rep)
{
  af_status_t st = af_health_report(af_engine_health(app->engine), &rep->r);
  if (st != AF_OK) {
    return st;
  }
  const af_health_report_t *r = &rep->r;
  Antifragility__V1__SystemHealthReport *pb = &rep->pb;
  antifragility__v1__system_health_report__init(pb);
  summary_t s;
  summarize(r, &s);
  pb->status = af_health_status_to_pb(r->status);
  pb->health_score = r->score;
  pb->timestamp = af_ts_from_ns(&rep->ts, r->wall_ns);
  pb->total_breakers = clamp_u32(s.total);
  pb->closed_breakers = clamp_u32(s.closed);
  pb->half_open_breakers = clamp_u32(s.half_open);
  pb->open_breakers = clamp_u32(s.open);
  pb->disabled_breakers = clamp_u32(s.disabled);
  pb->stale_breakers = clamp_u32(s.stale);
  bool truncated = false;
  size_t nd = list_len(r->breaker_count, &truncated);
  fill_details(app->engine, rep, nd);
  pb->n_circuit_details = nd;
  pb->circuit_details = nd > 0 ? rep->detail_ptrs : NULL;
  pb->n_degraded_services = list_len(r->degraded_count, &truncated);
  pb->degraded_services = r->degraded;
  pb->n_critical_services = list_len(r->critical_count, &truncated);
  pb->critical_services = r->critical;
  pb->n_stale_services = list_len(r->stale_count, &truncated);
  pb->stale_services = r->stale_names;
  pb->truncated = truncated;
  pb->constitutional_hash = (char *)af_engine_hash(app->engine);
  return AF_OK;
}

static void report_free(report_t *rep) { af_health_report_free(&rep->r); }

/* ------------------------------------------------------------------ */
/* Unary RPCs                                                         */

static void on_get_system_health(af_rpc_t *rpc, const ProtobufCMessage *req,
                                 void *ctx)
{
  (void)req;
  af_svc_health_t *svc = ctx;
  report_t *rep = af_calloc(1, sizeof *rep);
  af_status_t st = rep != NULL ? report_build(svc->app, rep) : AF_ENOMEM;
  if (st != AF_OK) {
    af_free(rep);
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  Antifragility__V1__GetSystemHealthResponse resp =
      ANTIFRAGILITY__V1__GET_SYSTEM_HEALTH_RESPONSE__INIT;
  resp.report = &rep->pb;
  af_rpc_reply(rpc, &resp.base);
  report_free(rep);
  af_free(rep);
}

static void on_get_health_history(af_rpc_t *rpc, const ProtobufCMessage *msg,
                                  void *ctx)
{
  af_svc_health_t *svc = ctx;
  af_engine_t *e = svc->app->engine;
  const Antifragility__V1__GetHealthHistoryRequest *req =
      (const Antifragility__V1__GetHealthHistoryRequest *)msg;
  af_error_t err;
  af_error_clear(&err);
  /* unset (and 0) = the aggregator's configured window, 5 min */
  uint64_t window_ms = 0;
  af_status_t st = af_duration_to_ms(
      req->window, 0, AF_SVC_HEALTH_WINDOW_MAX_MS, "window", &window_ms, &err);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, &err);
    return;
  }
  af_health_snapshot_t *snaps = NULL;
  size_t n = 0;
  st = af_health_history(af_engine_health(e), window_ms, &snaps, &n);
  if (st != AF_OK) {
    af_rpc_fail_status(rpc, st, NULL);
    return;
  }
  size_t keep = n;
  if (req->limit > 0 && req->limit < keep) {
    keep = req->limit;
  }
  if (keep > AF_SVC_HEALTH_HISTORY_MAX) {
    keep = AF_SVC_HEALTH_HISTORY_MAX;
  }
  /* newest `keep`; snaps is NULL when the history is empty */
  const af_health_snapshot_t *from = snaps != NULL ? snaps + (n - keep) : NULL;
  Antifragility__V1__HealthSnapshot *pbs = NULL;
  Antifragility__V1__HealthSnapshot **ptrs = NULL;
  Google__Protobuf__Timestamp *tss = NULL;
  if (keep > 0) {
    pbs = af_calloc(keep, sizeof *pbs);
    ptrs = af_calloc(keep, sizeof *ptrs);
    tss = af_calloc(keep, sizeof *tss);
    if (pbs == NULL || ptrs == NULL || tss == NULL) {
      af_free(pbs);
      af_free(ptrs);
      af_free(tss);
      af_free(snaps);
      af_rpc_fail_status(rpc, AF_ENOMEM, NULL);
      return;
    }
  }
  for (size_t i = 0; i < keep; i++) {
    const af_health_snapshot_t *s = &from[i];
    Antifragility__V1__HealthSnapshot *p = &pbs[i];
    antifragility__v1__health_snapshot__init(p);
    p->timestamp = af_ts_from_ns(&tss[i], s->wall_ns);
    p->status = af_health_status_to_pb(s->status);
    p->health_score = s->score;
    p->total_breakers = clamp_u32(s->total);
    p->closed_breakers = clamp_u32(s->closed);
    p->half_open_breakers = clamp_u32(s->half_open);
    p->open_breakers = clamp_u32(s->open);
    p->constitutional_hash = (char *)af_engine_hash(e);
    ptrs[i] = p;
  }
  Antifragility__V1__GetHealthHistoryResponse resp =
      ANTIFRAGILITY__V1__GET_HEALTH_HISTORY_RESPONSE__INIT;
  resp.n_snapshots = keep;
  resp.snapshots = ptrs;
  af_rpc_reply(rpc, &resp.base);
  af_free(pbs);
  af_free(ptrs);
  af_free(tss);
  af_free(snaps);
}

static void on_get_health_metrics(af_rpc_t *rpc, const ProtobufCMessage *req,
                                  void *ctx)
{
  (void)req;
  af_svc_health_t *svc = ctx;
  af_app_t *app = svc->app;
  af_health_metrics_t m;
  af_health_metrics(af_engine_health(app->engine), &m);
  Antifragility__V1__GetHealthMetricsResponse resp =
      ANTIFRAGILITY__V1__GET_HEALTH_METRICS_RESPONSE__INIT;
  resp.snapshots_collected = m.snapshots_collected;
  resp.callbacks_fired = m.callbacks_fired;
  resp.callback_errors = m.callback_errors;
  resp.status_changes = atomic_load(&svc->status_changes);
  resp.history_size = clamp_u32(m.history_size);
  resp.max_history_size = clamp_u32(m.history_capacity);
  resp.breakers_tracked = clamp_u32(m.tracked);
  resp.current_status = af_health_status_to_pb(m.status);
  resp.current_health_score = m.score;
  resp.watchers = clamp_u32(af_hub_count(app->health_hub));
  resp.running = !af_server_shutting_down(app->srv);
  resp.constitutional_hash = (char *)af_engine_hash(app->engine);
  af_rpc_reply(rpc, &resp.base);
}

/* ------------------------------------------------------------------ */
/* WatchHealth                                                        */

typedef struct {
  af_svc_health_t *svc;
  bool include_score_changes;
  /* fill only (never concurrent with itself) */
  bool sent_any;
  summary_t last;
  /* latest membership event, under mu (on_event vs fill) */
  pthread_mutex_t mu;
  bool member_pending;
  bool member_present; /* true: registered, false: unregistered */
  char member_name[AF_NAME_MAX + 1];
} watch_t;

/* One message with the report it points into; freed after packing. */
typedef struct {
  Antifragility__V1__WatchHealthResponse msg; /* first: cast target */
  report_t rep;
  bool has_report;
} watch_msg_t;

static void watch_msg_free(ProtobufCMessage *m)
{
  watch_msg_t *wm = (watch_msg_t *)m;
  if (wm->has_report) {
    report_free(&wm->rep);
  }
  af_free(wm);
}

static uint64_t mono_now_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static bool report_has(const af_health_report_t *r, const char *name)
{
  size_t lo = 0, hi = r->breaker_count;
  while (lo < hi) { /* breakers are sorted by name */
    size_t mid = lo + (hi - lo) / 2;
    int c = strcmp(r->breakers[mid].name, name);
    if (c == 0) {
      return true;
    }
    if (c < 0) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return false;
}

/* Builds the current report, waiting briefly for the aggregator to reflect
 * the latest membership event (see the ordering caveat at the top). */
static af_status_t watch_build(watch_t *w, report_t *rep)
{
  char name[AF_NAME_MAX + 1];
  bool pending, present = false;
  pthread_mutex_lock(&w->mu);
  pending = w->member_pending;
  if (pending) {
    present = w->member_present;
    memcpy(name, w->member_name, sizeof name);
    w->member_pending = false;
  }
  pthread_mutex_unlock(&w->mu);
  af_status_t st = report_build(w->svc->app, rep);
  if (st != AF_OK || !pending || report_has(&rep->r, name) == present) {
    return st;
  }
  uint64_t deadline = mono_now_ns() + MEMBERSHIP_WAIT_NS;
  do {
    sched_yield();
    af_health_report_t r;
    if (af_health_report(af_engine_health(w->svc->app->engine), &r) != AF_OK) {
      break;
    }
    bool caught_up = report_has(&r, name) == present;
    af_health_report_free(&r);
    if (caught_up) {
      report_free(rep);
      memset(rep, 0, sizeof *rep);
      return report_build(w->svc->app, rep);
    }
  } while (mono_now_ns() < deadline);
  return AF_OK; /* send what we have; a later event or heartbeat corrects */
}

static bool is_news(const watch_t *w, const summary_t *s)
{
  const summary_t *l = &w->last;
  if (!w->sent_any) {
    return true;
  }
  if (s->status != l->status || s->total != l->total ||
      s->closed != l->closed || s->half_open != l->half_open ||
      s->open != l->open || s->disabled != l->disabled ||
      s->stale != l->stale || s->lists != l->lists) {
    return true;
  }
  return w->include_score_changes && s->score != l->score;
}

static ProtobufCMessage *watch_fill(af_stream_t *st, bool heartbeat, void *user,
                                    af_msg_free_fn *free_out)
{
  watch_t *w = user;
  watch_msg_t *wm = af_calloc(1, sizeof *wm);
  if (wm == NULL) {
    af_log(AF_LOG_ERROR, "WatchHealth: out of memory building a report");
    return NULL;
  }
  antifragility__v1__watch_health_response__init(&wm->msg);
  if (watch_build(w, &wm->rep) != AF_OK) {
    af_log(AF_LOG_ERROR, "WatchHealth: out of memory building a report");
    af_free(wm);
    return NULL;
  }
  wm->has_report = true;
  summary_t now;
  summarize(&wm->rep.r, &now);
  if (!is_news(w, &now)) {
    report_free(&wm->rep);
    wm->has_report = false;
    if (!heartbeat) {
      af_free(wm);
      return NULL;
    }
    wm->msg.sequence = af_stream_seq_next(st);
    wm->msg.heartbeat = true;
    *free_out = watch_msg_free;
    return &wm->msg.base;
  }
  wm->msg.sequence = af_stream_seq_next(st);
  wm->msg.changed = !w->sent_any || now.status != w->last.status;
  wm->msg.previous_status = w->sent_any ? af_health_status_to_pb(w->last.status)
                                        : PB_STATUS(UNSPECIFIED);
  wm->msg.report = &wm->rep.pb;
  w->last = now;
  w->sent_any = true;
  *free_out = watch_msg_free;
  return &wm->msg.base;
}

/* Hub lock held: record, notify, nothing else. */
static void watch_on_event(af_stream_t *st, void *user,
                           const af_engine_event_t *ev)
{
  watch_t *w = user;
  if (ev->kind == AF_ENGINE_EV_BREAKER) {
    const af_breaker_event_t *be = ev->breaker;
    if (be->kind != AF_BREAKER_EVENT_REGISTERED &&
        be->kind != AF_BREAKER_EVENT_UNREGISTERED) {
      return;
    }
    size_t len = strnlen(be->name, AF_NAME_MAX);
    pthread_mutex_lock(&w->mu);
    w->member_pending = true;
    w->member_present = be->kind == AF_BREAKER_EVENT_REGISTERED;
    memcpy(w->member_name, be->name, len);
    w->member_name[len] = '\0';
    pthread_mutex_unlock(&w->mu);
  } else if (ev->kind != AF_ENGINE_EV_HEALTH) {
    return;
  }
  af_stream_notify(st);
}

static void watch_free(watch_t *w)
{
  pthread_mutex_destroy(&w->mu);
  af_free(w);
}

static void watch_done(af_stream_t *st, void *user)
{
  watch_t *w = user;
  af_hub_remove(w->svc->app->health_hub, st);
  watch_free(w);
}

static void on_watch_health(af_stream_t *st, const ProtobufCMessage *msg,
                            void *ctx)
{
  af_svc_health_t *svc = ctx;
  const Antifragility__V1__WatchHealthRequest *req =
      (const Antifragility__V1__WatchHealthRequest *)msg;
  watch_t *w = af_calloc(1, sizeof *w);
  if (w == NULL) {
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  w->svc = svc;
  w->include_score_changes = req->include_score_changes;
  pthread_mutex_init(&w->mu, NULL);
  if (af_hub_add(svc->app->health_hub, st, w, watch_on_event) != AF_OK) {
    watch_free(w);
    af_stream_fail(st, GRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (af_stream_set_producer(st, watch_fill, watch_done, w) != AF_OK) {
    af_hub_remove(svc->app->health_hub, st);
    watch_free(w);
    af_stream_fail(st, GRPC_STATUS_INTERNAL, "cannot start the stream");
  }
}

/* ------------------------------------------------------------------ */
/* Engine hooks and registration                                      */

/* Engine subscriber (any thread, no engine lock): breakers joining or
 * leaving change the report without a health change event; hand them to
 * the watchers too. */
static void on_engine_event(const af_engine_event_t *ev, void *ctx)
{
  af_svc_health_t *svc = ctx;
  if (ev->kind == AF_ENGINE_EV_BREAKER &&
      (ev->breaker->kind == AF_BREAKER_EVENT_REGISTERED ||
       ev->breaker->kind == AF_BREAKER_EVENT_UNREGISTERED)) {
    af_hub_publish(svc->app->health_hub, ev);
  }
}

static int on_status_change(const af_health_change_t *c, void *ctx)
{
  (void)c;
  af_svc_health_t *svc = ctx;
  atomic_fetch_add(&svc->status_changes, 1);
  return 0;
}

#define HEALTH_METHOD(m) "/antifragility.v1.HealthService/" m

af_status_t af_svc_health_register(af_app_t *app)
{
  if (app == NULL || app->engine == NULL || app->srv == NULL) {
    return AF_EINVAL;
  }
  af_svc_health_t *svc = af_calloc(1, sizeof *svc);
  if (svc == NULL) {
    return AF_ENOMEM;
  }
  svc->app = app;
  atomic_init(&svc->status_changes, 0);
  app->health = svc;

  int id = af_engine_subscribe(app->engine, on_engine_event, svc);
  if (id <= 0) {
    return id < 0 ? (af_status_t)id : AF_EINTERNAL;
  }
  svc->engine_sub_id = id;
  id =
      af_health_on_change(af_engine_health(app->engine), on_status_change, svc);
  if (id <= 0) {
    return id < 0 ? (af_status_t)id : AF_EINTERNAL;
  }
  svc->change_cb_id = id;

  af_server_t *srv = app->srv;
  af_status_t st = af_server_add_unary(
      srv, HEALTH_METHOD("GetSystemHealth"),
      &antifragility__v1__get_system_health_request__descriptor,
      on_get_system_health, svc);
  if (st == AF_OK) {
    st = af_server_add_unary(
        srv, HEALTH_METHOD("GetHealthHistory"),
        &antifragility__v1__get_health_history_request__descriptor,
        on_get_health_history, svc);
  }
  if (st == AF_OK) {
    st = af_server_add_server_stream(
        srv, HEALTH_METHOD("WatchHealth"),
        &antifragility__v1__watch_health_request__descriptor, on_watch_health,
        svc);
  }
  if (st == AF_OK) {
    st = af_server_add_unary(
        srv, HEALTH_METHOD("GetHealthMetrics"),
        &antifragility__v1__get_health_metrics_request__descriptor,
        on_get_health_metrics, svc);
  }
  return st; /* on failure af_app_destroy calls af_svc_health_destroy */
}

void af_svc_health_destroy(af_app_t *app)
{
  if (app == NULL || app->health == NULL) {
    return;
  }
  af_svc_health_t *svc = app->health;
  if (app->engine != NULL) {
    if (svc->change_cb_id > 0) {
      af_health_remove_callback(af_engine_health(app->engine),
                                svc->change_cb_id);
    }
    if (svc->engine_sub_id > 0) {
      af_engine_unsubscribe(app->engine, svc->engine_sub_id);
    }
  }
  app->health = NULL;
  af_free(svc);
}
