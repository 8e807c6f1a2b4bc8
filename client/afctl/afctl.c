/*
 * afctl - the operator's command line for afd: one command per RPC, built
 * on libafclient's synchronous calls (no background threads).
 *
 *   afctl [--addr HOST:PORT] [--json] [--timeout MS] GROUP [COMMAND] [ARGS]
 *
 * Output: human-readable tables (or "name: value" lines) on stdout; with
 * --json, each response as one line of proto3 JSON (streams: one line per
 * message), printed through protobuf-c's descriptors. Errors go to stderr
 * as "afctl: CODE: message".
 *
 * Exit codes (stable, for scripts):
 *   0        success
 *   1        local failure (out of memory, cannot create the client)
 *   2        usage error (unknown command or option, bad value)
 *   10 + N   the call ended with gRPC status N (e.g. 15 NOT_FOUND,
 *            13 INVALID_ARGUMENT, 19 FAILED_PRECONDITION, 22
 *            UNIMPLEMENTED, 24 UNAVAILABLE, 14 DEADLINE_EXCEEDED)
 */
#include <ctype.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "af/client.h"
#include "pbprint.h"

#include "antifragility/v1/breaker.pb-c.h"
#include "antifragility/v1/chaos.pb-c.h"
#include "antifragility/v1/health.pb-c.h"
#include "antifragility/v1/metering.pb-c.h"
#include "antifragility/v1/recovery.pb-c.h"

#define EXIT_LOCAL 1
#define EXIT_USAGE 2
#define EXIT_RPC_BASE 10

/* protobuf-c descriptor of each RPC's response (for --json and text). */
static const ProtobufCMessageDescriptor *const resp_desc[AF_RPC_COUNT] = {
#define AFCTL_DESC(ID, fn, svc, m, rq, rs, kind)                               \
  [AF_RPC_##ID] = &antifragility__v1__##fn##_response__descriptor,
    AF_CLIENT_RPCS(AFCTL_DESC)
#undef AFCTL_DESC
};

/* ---- options ------------------------------------------------------------ */

#define MAX_OPTS 64
#define MAX_POS 32

typedef struct {
  const char *name;
  const char *value; /* NULL for a flag */
  bool used;
} opt_t;

typedef struct {
  const char *addr;
  const char *token, *tls_ca, *tls_cert, *tls_key;
  bool json;
  uint32_t timeout_ms;
  opt_t opts[MAX_OPTS];
  int nopts;
  const char *pos[MAX_POS];
  int npos;
  af_client_t *client;
  const char *cmd_usage; /* usage line of the running command */
} ctx_t;

/* Flags that take no value. */
static const char *const bool_flags[] = {
    "json",  "help",          "h",       "success", "failure", "all", "update",
    "score", "auto-register", "invalid", NULL};

static bool is_bool_flag(const char *n)
{
  for (int i = 0; bool_flags[i] != NULL; i++) {
    if (strcmp(bool_flags[i], n) == 0) {
      return true;
    }
  }
  return false;
}

static int usage_error(ctx_t *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(ctx_t *c, const char *fmt, ...)
{
  va_list ap;
  va_start(ap, fmt);
  fputs("afctl: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  if (c != NULL && c->cmd_usage != NULL) {
    fprintf(stderr, "usage: afctl %s\n", c->cmd_usage);
  }
  return EXIT_USAGE;
}

static const char *opt(ctx_t *c, const char *name)
{
  for (int i = 0; i < c->nopts; i++) {
    if (strcmp(c->opts[i].name, name) == 0) {
      c->opts[i].used = true;
      return c->opts[i].value ? c->opts[i].value : "";
    }
  }
  return NULL;
}

static bool flag(ctx_t *c, const char *name) { return opt(c, name) != NULL; }

/* Every option given must have been read by the command. */
static int check_unused(ctx_t *c)
{
  for (int i = 0; i < c->nopts; i++) {
    if (!c->opts[i].used) {
      return usage_error(c, "unknown option --%s", c->opts[i].name);
    }
  }
  return 0;
}

static bool parse_u64(const char *s, uint64_t *out)
{
  if (s == NULL || *s == '\0' || *s == '-') {
    return false;
  }
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (*end != '\0') {
    return false;
  }
  *out = v;
  return true;
}

static bool parse_double(const char *s, double *out)
{
  if (s == NULL || *s == '\0') {
    return false;
  }
  char *end;
  double v = strtod(s, &end);
  if (*end != '\0' || !isfinite(v)) {
    return false;
  }
  *out = v;
  return true;
}

/* "250ms", "1.5s", "5m", "2h"; a bare number is seconds. */
static bool parse_duration_ms(const char *s, uint64_t *ms)
{
  if (s == NULL || *s == '\0') {
    return false;
  }
  char *end;
  double v = strtod(s, &end);
  if (end == s || v < 0 || !isfinite(v)) {
    return false;
  }
  double mul;
  if (strcmp(end, "ms") == 0) {
    mul = 1;
  } else if (strcmp(end, "s") == 0 || *end == '\0') {
    mul = 1000;
  } else if (strcmp(end, "m") == 0) {
    mul = 60000;
  } else if (strcmp(end, "h") == 0) {
    mul = 3600000;
  } else {
    return false;
  }
  *ms = (uint64_t)llround(v * mul);
  return true;
}

static void set_duration(google_protobuf_Duration *d, uint64_t ms)
{
  d->seconds = (int64_t)(ms / 1000);
  d->nanos = (int32_t)(ms % 1000) * 1000000;
}

/* Reads --name as a u32/u64/double/duration into *out; *has (may be NULL)
 * is set when present. Returns 0 or a usage error. */
static int opt_u64(ctx_t *c, const char *name, uint64_t max, uint64_t *out,
                   bool *has)
{
  const char *v = opt(c, name);
  if (v == NULL) {
    return 0;
  }
  if (!parse_u64(v, out) || *out > max) {
    return usage_error(c,
                       "--%s: expected an integer in 0..%" PRIu64 ", got '%s'",
                       name, max, v);
  }
  if (has != NULL) {
    *has = true;
  }
  return 0;
}

static int opt_double(ctx_t *c, const char *name, double *out, bool *has)
{
  const char *v = opt(c, name);
  if (v == NULL) {
    return 0;
  }
  if (!parse_double(v, out)) {
    return usage_error(c, "--%s: expected a number, got '%s'", name, v);
  }
  if (has != NULL) {
    *has = true;
  }
  return 0;
}

static int opt_duration(ctx_t *c, const char *name, bool *has,
                        google_protobuf_Duration *d)
{
  const char *v = opt(c, name);
  if (v == NULL) {
    return 0;
  }
  uint64_t ms;
  if (!parse_duration_ms(v, &ms)) {
    return usage_error(c,
                       "--%s: expected a duration like 250ms, 30s, 5m, "
                       "got '%s'",
                       name, v);
  }
  set_duration(d, ms);
  if (has != NULL) {
    *has = true;
  }
  return 0;
}

/* Matches s (case-insensitive) against the enum's short or full names. */
static bool parse_enum(const ProtobufCEnumDescriptor *d, const char *s,
                       int *out)
{
  for (unsigned i = 0; i < d->n_values; i++) {
    const char *full = d->values[i].name;
    const char *shrt = pbp_enum_short(d, d->values[i].value);
    if (strcasecmp(s, full) == 0 || strcasecmp(s, shrt) == 0) {
      *out = d->values[i].value;
      return d->values[i].value != 0;
    }
  }
  return false;
}

static int opt_enum(ctx_t *c, const char *name,
                    const ProtobufCEnumDescriptor *d, int *out)
{
  const char *v = opt(c, name);
  if (v == NULL) {
    return 0;
  }
  if (!parse_enum(d, v, out)) {
    fprintf(stderr, "afctl: --%s: unknown value '%s'; one of:", name, v);
    for (unsigned i = 1; i < d->n_values; i++) {
      char low[64];
      snprintf(low, sizeof low, "%s", pbp_enum_short(d, d->values[i].value));
      for (char *p = low; *p; p++) {
        *p = (char)tolower((unsigned char)*p);
      }
      fprintf(stderr, " %s", low);
    }
    fputc('\n', stderr);
    return EXIT_USAGE;
  }
  return 0;
}

/* Copies --name (or def) into a fixed nanopb string field. */
static int opt_str(ctx_t *c, const char *name, char *dst, size_t cap)
{
  const char *v = opt(c, name);
  if (v == NULL) {
    return 0;
  }
  if (strlen(v) >= cap) {
    return usage_error(c, "--%s: at most %zu bytes", name, cap - 1);
  }
  memcpy(dst, v, strlen(v) + 1);
  return 0;
}

static int copy_arg(ctx_t *c, const char *what, const char *v, char *dst,
                    size_t cap)
{
  if (v == NULL) {
    return usage_error(c, "missing %s", what);
  }
  if (strlen(v) >= cap || *v == '\0') {
    return usage_error(c, "%s must be 1..%zu bytes", what, cap - 1);
  }
  memcpy(dst, v, strlen(v) + 1);
  return 0;
}

/* --blast a,b,c into a repeated string field of 8 x 129. */
static int opt_blast(ctx_t *c, char (*dst)[129], pb_size_t *count)
{
  const char *v = opt(c, "blast");
  if (v == NULL) {
    return 0;
  }
  char buf[2048];
  snprintf(buf, sizeof buf, "%s", v);
  char *save = NULL;
  for (char *t = strtok_r(buf, ",", &save); t != NULL;
       t = strtok_r(NULL, ",", &save)) {
    if (*count >= 8 || strlen(t) >= 129) {
      return usage_error(c, "--blast: at most 8 targets of 128 bytes");
    }
    memcpy(dst[*count], t, strlen(t) + 1);
    (*count)++;
  }
  return 0;
}

#define TRY(x)                                                                 \
  do {                                                                         \
    int rc_ = (x);                                                             \
    if (rc_ != 0)                                                              \
      return rc_;                                                              \
  } while (0)

/* ---- calls and output ---------------------------------------------------- */

static void *xcalloc(size_t size)
{
  void *p = calloc(1, size);
  if (p == NULL) {
    fputs("afctl: out of memory\n", stderr);
    exit(EXIT_LOCAL);
  }
  return p;
}

static int rpc_failed(const af_call_status_t *st)
{
  fprintf(stderr, "afctl: %s: %s\n", af_call_code_name(st->code),
          st->message[0] ? st->message : "(no message)");
  return EXIT_RPC_BASE + st->code;
}

static void print_json(af_rpc_id_t rpc, const void *resp)
{
  ProtobufCMessage *m =
      pbp_from_nanopb(af_rpc_info(rpc)->resp_fields, resp, resp_desc[rpc]);
  if (m == NULL) {
    fputs("{}\n", stdout);
    return;
  }
  pbp_json(stdout, m);
  fputc('\n', stdout);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void print_text(af_rpc_id_t rpc, const void *resp)
{
  ProtobufCMessage *m =
      pbp_from_nanopb(af_rpc_info(rpc)->resp_fields, resp, resp_desc[rpc]);
  if (m != NULL) {
    pbp_text(stdout, m, 0);
    protobuf_c_message_free_unpacked(m, NULL);
  }
}

typedef void (*table_fn)(const void *resp);

/* Runs a unary call and prints the response: JSON with --json, else
 * table(resp) or the generic text form. */
static int run_unary(ctx_t *c, af_rpc_id_t rpc, const void *req, void *resp,
                     table_fn table)
{
  TRY(check_unused(c));
  af_call_status_t st;
  if (af_client_unary(c->client, rpc, req, resp, c->timeout_ms, &st) != 0) {
    return rpc_failed(&st);
  }
  if (c->json) {
    print_json(rpc, resp);
  } else if (table != NULL) {
    table(resp);
  } else {
    print_text(rpc, resp);
  }
  return 0;
}

/* Allocates request and response of rpc, runs fill(req) then the call. */
#define UNARY(c, ID, fill_block, table)                                        \
  do {                                                                         \
    const af_rpc_info_t *info_ = af_rpc_info(AF_RPC_##ID);                     \
    void *req_ = xcalloc(info_->req_size);                                     \
    void *resp_ = xcalloc(info_->resp_size);                                   \
    int rc_ = 0;                                                               \
    {                                                                          \
      fill_block                                                               \
    }                                                                          \
    if (rc_ == 0) {                                                            \
      rc_ = run_unary(c, AF_RPC_##ID, req_, resp_, table);                     \
    }                                                                          \
    free(req_);                                                                \
    free(resp_);                                                               \
    return rc_;                                                                \
  } while (0)

#define FILL(x)                                                                \
  do {                                                                         \
    if (rc_ == 0)                                                              \
      rc_ = (x);                                                               \
  } while (0)

static const char *state_name(antifragility_v1_BreakerState s)
{
  return pbp_enum_short(&antifragility__v1__breaker_state__descriptor, (int)s);
}

static const char *health_name(antifragility_v1_HealthStatus s)
{
  return pbp_enum_short(&antifragility__v1__health_status__descriptor, (int)s);
}

static void fmt_ts(char *buf, size_t cap, bool has,
                   const google_protobuf_Timestamp *t)
{
  if (!has) {
    snprintf(buf, cap, "-");
  } else {
    pbp_format_time(buf, cap, t->seconds, t->nanos);
  }
}

/* ---- health ---------------------------------------------------------------
 */

static void table_health(const void *r)
{
  const antifragility_v1_GetSystemHealthResponse *resp = r;
  const antifragility_v1_SystemHealthReport *h = &resp->report;
  printf("status    %s\n", health_name(h->status));
  printf("score     %.2f\n", h->health_score);
  printf("breakers  %" PRIu32 " total: %" PRIu32 " closed, %" PRIu32
         " half-open, %" PRIu32 " open, %" PRIu32 " disabled, %" PRIu32
         " stale\n",
         h->total_breakers, h->closed_breakers, h->half_open_breakers,
         h->open_breakers, h->disabled_breakers, h->stale_breakers);
  if (h->circuit_details_count > 0) {
    printf("\n%-32s %-12s %10s %10s %7s %s\n", "NAME", "STATE", "FAILURES",
           "SUCCESSES", "WEIGHT", "STALE");
    for (pb_size_t i = 0; i < h->circuit_details_count; i++) {
      const antifragility_v1_CircuitDetail *d = &h->circuit_details[i];
      printf("%-32s %-12s %10" PRIu64 " %10" PRIu64 " %7.2f %s\n", d->name,
             state_name(d->state), d->fail_counter, d->success_counter,
             d->weight, d->stale ? "yes" : "no");
    }
  }
  if (h->truncated) {
    printf("(lists truncated)\n");
  }
}

static void table_history(const void *r)
{
  const antifragility_v1_GetHealthHistoryResponse *resp = r;
  printf("%-24s %-10s %6s %6s %6s %9s %6s\n", "TIME", "STATUS", "SCORE",
         "TOTAL", "CLOSED", "HALF_OPEN", "OPEN");
  for (pb_size_t i = 0; i < resp->snapshots_count; i++) {
    const antifragility_v1_HealthSnapshot *s = &resp->snapshots[i];
    char t[40];
    fmt_ts(t, sizeof t, s->has_timestamp, &s->timestamp);
    printf("%-24s %-10s %6.2f %6" PRIu32 " %6" PRIu32 " %9" PRIu32 " %6" PRIu32
           "\n",
           t, health_name(s->status), s->health_score, s->total_breakers,
           s->closed_breakers, s->half_open_breakers, s->open_breakers);
  }
  printf("(%u snapshots)\n", (unsigned)resp->snapshots_count);
}

static volatile sig_atomic_t g_interrupted;
static void on_sigint(int sig)
{
  (void)sig;
  g_interrupted = 1;
}

typedef void (*stream_line_fn)(const void *msg);

/* Runs a server stream, printing each message (heartbeats only with
 * --json) until interrupted, --count messages, or the stream ends. */
static int run_stream(ctx_t *c, af_rpc_id_t rpc, const void *req,
                      stream_line_fn line)
{
  uint64_t count = 0;
  TRY(opt_u64(c, "count", UINT32_MAX, &count, NULL));
  TRY(check_unused(c));
  af_client_stream_t *s = NULL;
  if (af_client_watch_open(c->client, rpc, req, 0, &s) != AF_OK) {
    fputs("afctl: cannot open the stream\n", stderr);
    return EXIT_LOCAL;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigint;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
  void *msg = xcalloc(af_rpc_info(rpc)->resp_size);
  uint64_t seen = 0;
  int rc = 0;
  /* The first field of every Watch*Response is sequence, the second
   * heartbeat; read them through the JSON-free text path instead of
   * casting: each table knows its type. */
  while (!g_interrupted) {
    int r = af_client_stream_next(s, msg, 100);
    if (r == 0) {
      continue;
    }
    if (r < 0) {
      af_call_status_t st;
      af_client_stream_status(s, &st);
      if (st.code != 0) {
        rc = rpc_failed(&st);
      }
      break;
    }
    /* All Watch*Response messages start with uint64 sequence; bool
     * heartbeat (see the protos). */
    bool heartbeat = false;
    switch (rpc) {
    case AF_RPC_WATCH_HEALTH:
      heartbeat = ((antifragility_v1_WatchHealthResponse *)msg)->heartbeat;
      break;
    case AF_RPC_WATCH_BREAKERS:
      heartbeat = ((antifragility_v1_WatchBreakersResponse *)msg)->heartbeat;
      break;
    case AF_RPC_WATCH_SCENARIOS:
      heartbeat = ((antifragility_v1_WatchScenariosResponse *)msg)->heartbeat;
      break;
    case AF_RPC_WATCH_RECOVERY:
      heartbeat = ((antifragility_v1_WatchRecoveryResponse *)msg)->heartbeat;
      break;
    default:
      break;
    }
    if (c->json) {
      print_json(rpc, msg);
    } else if (!heartbeat) {
      if (line != NULL) {
        line(msg);
      } else {
        print_text(rpc, msg);
        fputs("--\n", stdout);
      }
    }
    fflush(stdout);
    if (!heartbeat && count > 0 && ++seen >= count) {
      break;
    }
  }
  af_client_stream_cancel(s);
  af_client_stream_close(s);
  free(msg);
  return rc;
}

static void line_health(const void *m)
{
  const antifragility_v1_WatchHealthResponse *w = m;
  const antifragility_v1_SystemHealthReport *h = &w->report;
  char t[40];
  fmt_ts(t, sizeof t, h->has_timestamp, &h->timestamp);
  printf("%s seq=%" PRIu64 " %s score=%.2f breakers=%" PRIu32 " open=%" PRIu32
         " half_open=%" PRIu32,
         t, w->sequence, health_name(h->status), h->health_score,
         h->total_breakers, h->open_breakers, h->half_open_breakers);
  if (w->changed && w->previous_status != 0) {
    printf(" (was %s)", health_name(w->previous_status));
  }
  putchar('\n');
}

static int cmd_health(ctx_t *c)
{
  UNARY(c, GET_SYSTEM_HEALTH, {}, table_health);
}

static int cmd_health_watch(ctx_t *c)
{
  antifragility_v1_WatchHealthRequest req =
      antifragility_v1_WatchHealthRequest_init_zero;
  req.include_score_changes = flag(c, "score");
  return run_stream(c, AF_RPC_WATCH_HEALTH, &req, line_health);
}

static int cmd_health_history(ctx_t *c)
{
  UNARY(
      c, GET_HEALTH_HISTORY,
      {
        antifragility_v1_GetHealthHistoryRequest *r = req_;
        FILL(opt_duration(c, "window", &r->has_window, &r->window));
        uint64_t limit = 0;
        FILL(opt_u64(c, "limit", 300, &limit, NULL));
        r->limit = (uint32_t)limit;
      },
      table_history);
}

static int cmd_health_metrics(ctx_t *c)
{
  UNARY(c, GET_HEALTH_METRICS, {}, NULL);
}

/* ---- breakers ------------------------------------------------------------ */

static void breaker_row_header(void)
{
  printf("%-32s %-12s %9s %9s %9s %6s %-24s\n", "NAME", "STATE", "FAILURES",
         "SUCCESSES", "REJECTED", "CONSEC", "LAST_TRANSITION");
}

static void breaker_row(const antifragility_v1_BreakerInfo *b)
{
  char t[40];
  fmt_ts(t, sizeof t, b->has_last_transition, &b->last_transition);
  printf("%-32s %-12s %9" PRIu64 " %9" PRIu64 " %9" PRIu64 " %6" PRIu32
         " %-24s\n",
         b->name, state_name(b->state), b->fail_counter, b->success_counter,
         b->rejected_count, b->consecutive_failures, t);
}

static int cmd_breaker_list(ctx_t *c)
{
  antifragility_v1_ListBreakersRequest *req = xcalloc(sizeof *req);
  antifragility_v1_ListBreakersResponse *resp = xcalloc(sizeof *resp);
  int state = 0, rc = 0;
  rc = opt_enum(c, "state", &antifragility__v1__breaker_state__descriptor,
                &state);
  if (rc == 0) {
    rc = opt_str(c, "prefix", req->name_prefix, sizeof req->name_prefix);
  }
  if (rc == 0) {
    rc = check_unused(c);
  }
  req->state_filter = (antifragility_v1_BreakerState)state;
  bool header = false;
  if (c->json && rc == 0) {
    fputs("{\"breakers\":[", stdout);
  }
  size_t printed = 0;
  uint32_t total = 0;
  while (rc == 0) {
    af_call_status_t st;
    if (af_client_list_breakers(c->client, req, resp, c->timeout_ms, &st) !=
        0) {
      if (c->json) {
        fputs("]}\n", stdout);
      }
      rc = rpc_failed(&st);
      break;
    }
    total = resp->total;
    for (pb_size_t i = 0; i < resp->breakers_count; i++) {
      if (c->json) {
        ProtobufCMessage *m = pbp_from_nanopb(
            &antifragility_v1_BreakerInfo_msg, &resp->breakers[i],
            &antifragility__v1__breaker_info__descriptor);
        if (m != NULL) {
          fputs(printed > 0 ? "," : "", stdout);
          pbp_json(stdout, m);
          protobuf_c_message_free_unpacked(m, NULL);
        }
      } else {
        if (!header) {
          breaker_row_header();
          header = true;
        }
        breaker_row(&resp->breakers[i]);
      }
      printed++;
    }
    if (resp->next_page_token[0] == '\0') {
      break;
    }
    memcpy(req->page_token, resp->next_page_token, sizeof req->page_token);
  }
  if (rc == 0) {
    if (c->json) {
      printf("],\"total\":%" PRIu32 "}\n", total);
    } else {
      printf("(%zu breakers)\n", printed);
    }
  }
  free(req);
  free(resp);
  return rc;
}

static int cmd_breaker_get(ctx_t *c)
{
  UNARY(
      c, GET_BREAKER,
      {
        antifragility_v1_GetBreakerRequest *r = req_;
        FILL(copy_arg(c, "breaker name", c->npos > 0 ? c->pos[0] : NULL,
                      r->name, sizeof r->name));
      },
      NULL);
}

static int fill_breaker_config(ctx_t *c, antifragility_v1_BreakerConfig *cfg,
                               bool *any)
{
  uint64_t v = 0;
  TRY(opt_u64(c, "fail-max", UINT32_MAX, &v, &cfg->has_fail_max));
  cfg->fail_max.value = (uint32_t)v;
  TRY(opt_duration(c, "reset-timeout", &cfg->has_reset_timeout,
                   &cfg->reset_timeout));
  v = 0;
  TRY(opt_u64(c, "half-open-max-calls", UINT32_MAX, &v,
              &cfg->has_half_open_max_calls));
  cfg->half_open_max_calls.value = (uint32_t)v;
  v = 0;
  TRY(opt_u64(c, "success-threshold", UINT32_MAX, &v,
              &cfg->has_success_threshold));
  cfg->success_threshold.value = (uint32_t)v;
  TRY(opt_double(c, "weight", &cfg->weight.value, &cfg->has_weight));
  TRY(opt_str(c, "description", cfg->description, sizeof cfg->description));
  const char *ex = opt(c, "exclude");
  if (ex != NULL) {
    char buf[2048];
    snprintf(buf, sizeof buf, "%s", ex);
    char *save = NULL;
    for (char *t = strtok_r(buf, ",", &save); t != NULL;
         t = strtok_r(NULL, ",", &save)) {
      if (cfg->excluded_errors_count >= 8 || strlen(t) >= 129) {
        return usage_error(c, "--exclude: at most 8 error types");
      }
      memcpy(cfg->excluded_errors[cfg->excluded_errors_count++], t,
             strlen(t) + 1);
    }
  }
  *any = cfg->has_fail_max || cfg->has_reset_timeout ||
         cfg->has_half_open_max_calls || cfg->has_success_threshold ||
         cfg->has_weight || cfg->description[0] != '\0' ||
         cfg->excluded_errors_count > 0;
  return 0;
}

static int cmd_breaker_register(ctx_t *c)
{
  UNARY(
      c, REGISTER_BREAKER,
      {
        antifragility_v1_RegisterBreakerRequest *r = req_;
        FILL(copy_arg(c, "breaker name", c->npos > 0 ? c->pos[0] : NULL,
                      r->name, sizeof r->name));
        bool any = false;
        FILL(fill_breaker_config(c, &r->config, &any));
        r->has_config = any;
        r->update_config = flag(c, "update");
      },
      NULL);
}

static int cmd_breaker_report(ctx_t *c)
{
  const char *name = c->npos > 0 ? c->pos[0] : NULL;
  const char *state_s = opt(c, "state");
  if (state_s != NULL) {
    UNARY(
        c, REPORT_STATE,
        {
          antifragility_v1_ReportStateRequest *r = req_;
          FILL(copy_arg(c, "breaker name", name, r->name, sizeof r->name));
          int st = 0;
          if (!parse_enum(&antifragility__v1__breaker_state__descriptor,
                          state_s, &st)) {
            FILL(usage_error(c, "--state: closed, open or half_open"));
          }
          r->state = (antifragility_v1_BreakerState)st;
          FILL(opt_str(c, "instance", r->instance_id, sizeof r->instance_id));
          r->auto_register = flag(c, "auto-register");
        },
        NULL);
  }
  bool ok = flag(c, "success"), bad = flag(c, "failure");
  if (ok == bad) {
    return usage_error(c, "give exactly one of --success, --failure "
                          "(or --state)");
  }
  antifragility_v1_ReportOutcomeRequest one =
      antifragility_v1_ReportOutcomeRequest_init_zero;
  TRY(copy_arg(c, "breaker name", name, one.breaker_name,
               sizeof one.breaker_name));
  one.success = ok;
  TRY(opt_str(c, "error-type", one.error_type, sizeof one.error_type));
  TRY(opt_str(c, "instance", one.instance_id, sizeof one.instance_id));
  TRY(opt_double(c, "latency-ms", &one.latency_ms, NULL));
  one.auto_register = flag(c, "auto-register");
  uint64_t count = 1;
  TRY(opt_u64(c, "count", 100000, &count, NULL));
  if (count <= 1) {
    UNARY(
        c, REPORT_OUTCOME, { memcpy(req_, &one, sizeof one); }, NULL);
  }
  /* --count N: N outcomes on one ReportOutcomes stream. */
  TRY(check_unused(c));
  antifragility_v1_ReportOutcomeRequest *reqs = xcalloc(count * sizeof *reqs);
  for (uint64_t i = 0; i < count; i++) {
    reqs[i] = one;
  }
  antifragility_v1_ReportOutcomesResponse resp;
  memset(&resp, 0, sizeof resp);
  af_call_status_t st;
  int code = af_client_report_outcomes(c->client, reqs, (size_t)count, &resp,
                                       c->timeout_ms, &st);
  free(reqs);
  if (code != 0) {
    return rpc_failed(&st);
  }
  if (c->json) {
    print_json(AF_RPC_REPORT_OUTCOMES, &resp);
  } else {
    print_text(AF_RPC_REPORT_OUTCOMES, &resp);
  }
  return 0;
}

static int cmd_breaker_reset(ctx_t *c)
{
  if (flag(c, "all")) {
    UNARY(c, RESET_ALL_BREAKERS, {}, NULL);
  }
  UNARY(
      c, RESET_BREAKER,
      {
        antifragility_v1_ResetBreakerRequest *r = req_;
        FILL(copy_arg(c, "breaker name (or --all)",
                      c->npos > 0 ? c->pos[0] : NULL, r->name, sizeof r->name));
      },
      NULL);
}

static int cmd_breaker_unregister(ctx_t *c)
{
  UNARY(
      c, UNREGISTER_BREAKER,
      {
        antifragility_v1_UnregisterBreakerRequest *r = req_;
        FILL(copy_arg(c, "breaker name", c->npos > 0 ? c->pos[0] : NULL,
                      r->name, sizeof r->name));
      },
      NULL);
}

static void line_breaker(const void *m)
{
  const antifragility_v1_WatchBreakersResponse *w = m;
  char t[40];
  fmt_ts(t, sizeof t, w->has_timestamp, &w->timestamp);
  const char *kind = pbp_enum_short(
      &antifragility__v1__breaker_event_kind__descriptor, (int)w->kind);
  if (w->kind ==
      antifragility_v1_BreakerEventKind_BREAKER_EVENT_KIND_TRANSITION) {
    printf("%s seq=%" PRIu64 " %s %s %s -> %s\n", t, w->sequence, kind,
           w->breaker.name, state_name(w->from_state), state_name(w->to_state));
  } else {
    printf("%s seq=%" PRIu64 " %s %s %s\n", t, w->sequence, kind,
           w->has_breaker ? w->breaker.name : "-",
           w->has_breaker ? state_name(w->breaker.state) : "");
  }
}

static int cmd_breaker_watch(ctx_t *c)
{
  antifragility_v1_WatchBreakersRequest *req = xcalloc(sizeof *req);
  for (int i = 0; i < c->npos && i < 16; i++) {
    snprintf(req->names[i], sizeof req->names[i], "%s", c->pos[i]);
    req->names_count++;
  }
  int rc = run_stream(c, AF_RPC_WATCH_BREAKERS, req, line_breaker);
  free(req);
  return rc;
}

/* ---- recovery ------------------------------------------------------------ */

static int fill_policy(ctx_t *c, antifragility_v1_RecoveryPolicy *p,
                       bool with_strategy, bool *any)
{
  if (with_strategy) {
    int st = 0;
    TRY(opt_enum(c, "strategy",
                 &antifragility__v1__recovery_strategy__descriptor, &st));
    p->strategy = (antifragility_v1_RecoveryStrategy)st;
  }
  uint64_t v = 0;
  TRY(opt_u64(c, "max-retries", UINT32_MAX, &v, &p->has_max_retry_attempts));
  p->max_retry_attempts.value = (uint32_t)v;
  TRY(opt_double(c, "multiplier", &p->backoff_multiplier.value,
                 &p->has_backoff_multiplier));
  TRY(opt_duration(c, "initial-delay", &p->has_initial_delay,
                   &p->initial_delay));
  TRY(opt_duration(c, "max-delay", &p->has_max_delay, &p->max_delay));
  int e = 0;
  TRY(opt_enum(c, "jitter", &antifragility__v1__jitter_mode__descriptor, &e));
  p->jitter = (antifragility_v1_JitterMode)e;
  e = 0;
  TRY(opt_enum(c, "probe", &antifragility__v1__probe_kind__descriptor, &e));
  p->probe = (antifragility_v1_ProbeKind)e;
  TRY(opt_str(c, "probe-target", p->probe_target, sizeof p->probe_target));
  TRY(opt_str(c, "probe-service", p->probe_service, sizeof p->probe_service));
  TRY(opt_duration(c, "probe-timeout", &p->has_probe_timeout,
                   &p->probe_timeout));
  *any = p->strategy != 0 || p->has_max_retry_attempts ||
         p->has_backoff_multiplier || p->has_initial_delay ||
         p->has_max_delay || p->jitter != 0 || p->probe != 0 ||
         p->probe_target[0] || p->probe_service[0] || p->has_probe_timeout;
  return 0;
}

static void task_row(const antifragility_v1_RecoveryTask *t)
{
  char next[40];
  fmt_ts(next, sizeof next, t->has_next_attempt_at, &t->next_attempt_at);
  printf("%-24s %-16s %-20s %8" PRIu32 " %-24s %s\n", t->service_name,
         pbp_enum_short(&antifragility__v1__recovery_state__descriptor,
                        (int)t->state),
         pbp_enum_short(&antifragility__v1__recovery_strategy__descriptor,
                        (int)t->strategy),
         t->attempt_count, next, t->last_error[0] ? t->last_error : "-");
}

static void table_recovery_status(const void *r)
{
  const antifragility_v1_GetRecoveryStatusResponse *s = r;
  printf("running %s, active %" PRIu32 ", scheduled %" PRIu64
         ", succeeded %" PRIu64 ", failed %" PRIu64 ", cancelled %" PRIu64
         ", attempts %" PRIu64 ", retry budget %" PRIu32 "\n",
         s->running ? "yes" : "no", s->active_recoveries, s->total_scheduled,
         s->total_succeeded, s->total_failed, s->total_cancelled,
         s->total_attempts, s->retry_budget_remaining);
  if (s->tasks_count > 0) {
    printf("\n%-24s %-16s %-20s %8s %-24s %s\n", "SERVICE", "STATE", "STRATEGY",
           "ATTEMPTS", "NEXT_ATTEMPT", "LAST_ERROR");
    for (pb_size_t i = 0; i < s->tasks_count; i++) {
      task_row(&s->tasks[i]);
    }
  }
  if (s->recent_results_count > 0) {
    printf("\n%-24s %8s %-8s %10s %s\n", "SERVICE", "ATTEMPT", "RESULT",
           "ELAPSED_MS", "ERROR");
    for (pb_size_t i = 0; i < s->recent_results_count; i++) {
      const antifragility_v1_RecoveryResult *x = &s->recent_results[i];
      printf("%-24s %8" PRIu32 " %-8s %10.1f %s\n", x->service_name,
             x->attempt_number, x->success ? "ok" : "failed",
             x->elapsed_time_ms, x->error_message[0] ? x->error_message : "-");
    }
  }
}

static const char *svc_arg(ctx_t *c) { return c->npos > 0 ? c->pos[0] : NULL; }

static int cmd_recovery_schedule(ctx_t *c)
{
  UNARY(
      c, SCHEDULE_RECOVERY,
      {
        antifragility_v1_ScheduleRecoveryRequest *r = req_;
        FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                      sizeof r->service_name));
        int e = 0;
        FILL(opt_enum(c, "strategy",
                      &antifragility__v1__recovery_strategy__descriptor, &e));
        r->strategy = (antifragility_v1_RecoveryStrategy)e;
        const char *pr = opt(c, "priority");
        if (pr != NULL) {
          char *end;
          long v = strtol(pr, &end, 10);
          if (*end != '\0' || v < INT32_MIN || v > INT32_MAX) {
            FILL(usage_error(c, "--priority: expected an integer"));
          }
          r->priority = (int32_t)v;
        }
        bool any = false;
        FILL(fill_policy(c, &r->policy, false, &any));
        r->has_policy = any;
      },
      NULL);
}

static int cmd_recovery_execute(ctx_t *c)
{
  UNARY(
      c, EXECUTE_RECOVERY,
      {
        antifragility_v1_ExecuteRecoveryRequest *r = req_;
        FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                      sizeof r->service_name));
      },
      NULL);
}

static int cmd_recovery_status(ctx_t *c)
{
  UNARY(
      c, GET_RECOVERY_STATUS,
      {
        antifragility_v1_GetRecoveryStatusRequest *r = req_;
        if (svc_arg(c) != NULL) {
          FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                        sizeof r->service_name));
        }
      },
      table_recovery_status);
}

static int cmd_recovery_cancel(ctx_t *c)
{
  UNARY(
      c, CANCEL_RECOVERY,
      {
        antifragility_v1_CancelRecoveryRequest *r = req_;
        FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                      sizeof r->service_name));
        FILL(opt_str(c, "reason", r->reason, sizeof r->reason));
      },
      NULL);
}

static int cmd_recovery_approve(ctx_t *c)
{
  UNARY(
      c, APPROVE_RECOVERY,
      {
        antifragility_v1_ApproveRecoveryRequest *r = req_;
        FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                      sizeof r->service_name));
        FILL(opt_str(c, "actor", r->actor, sizeof r->actor));
        FILL(opt_str(c, "reason", r->reason, sizeof r->reason));
      },
      NULL);
}

static int cmd_recovery_policy(ctx_t *c)
{
  antifragility_v1_RecoveryPolicy pol;
  memset(&pol, 0, sizeof pol);
  bool any = false;
  TRY(fill_policy(c, &pol, true, &any));
  if (any) {
    UNARY(
        c, SET_RECOVERY_POLICY,
        {
          antifragility_v1_SetRecoveryPolicyRequest *r = req_;
          FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                        sizeof r->service_name));
          r->has_policy = true;
          r->policy = pol;
        },
        NULL);
  }
  UNARY(
      c, GET_RECOVERY_POLICY,
      {
        antifragility_v1_GetRecoveryPolicyRequest *r = req_;
        FILL(copy_arg(c, "service name", svc_arg(c), r->service_name,
                      sizeof r->service_name));
      },
      NULL);
}

static int cmd_recovery_watch(ctx_t *c)
{
  antifragility_v1_WatchRecoveryRequest req =
      antifragility_v1_WatchRecoveryRequest_init_zero;
  if (svc_arg(c) != NULL) {
    TRY(copy_arg(c, "service name", svc_arg(c), req.service_name,
                 sizeof req.service_name));
  }
  return run_stream(c, AF_RPC_WATCH_RECOVERY, &req, NULL);
}

/* ---- chaos --------------------------------------------------------------- */

static void print_scenario_line(const antifragility_v1_ChaosScenario *s)
{
  char exp[40], detail[64];
  fmt_ts(exp, sizeof exp, s->has_expires_at, &s->expires_at);
  switch (s->kind) {
  case antifragility_v1_ChaosKind_CHAOS_KIND_LATENCY:
  case antifragility_v1_ChaosKind_CHAOS_KIND_TIMEOUT:
    snprintf(detail, sizeof detail, "delay=%" PRId64 "ms",
             s->delay.seconds * 1000 + s->delay.nanos / 1000000);
    break;
  case antifragility_v1_ChaosKind_CHAOS_KIND_ERROR:
    snprintf(detail, sizeof detail, "rate=%g", s->error_rate);
    break;
  case antifragility_v1_ChaosKind_CHAOS_KIND_RESOURCE_EXHAUSTION:
    snprintf(detail, sizeof detail, "%s=%g",
             pbp_enum_short(&antifragility__v1__resource_type__descriptor,
                            (int)s->resource_type),
             s->resource_level);
    break;
  default:
    snprintf(detail, sizeof detail, "-");
  }
  printf(
      "%-36s %-20s %-24s %-16s %-24s %10" PRIu64 "\n", s->name,
      pbp_enum_short(&antifragility__v1__chaos_kind__descriptor, (int)s->kind),
      s->target, detail, exp, s->injections);
}

static void scenario_header(void)
{
  printf("%-36s %-20s %-24s %-16s %-24s %10s\n", "NAME", "KIND", "TARGET",
         "DETAIL", "EXPIRES", "INJECTIONS");
}

static void table_scenario(const void *r)
{
  /* Every activation response is { ChaosScenario scenario = 1; }. */
  const antifragility_v1_InjectLatencyResponse *resp = r;
  scenario_header();
  print_scenario_line(&resp->scenario);
}

static void table_scenarios(const void *r)
{
  const antifragility_v1_ListScenariosResponse *resp = r;
  if (resp->emergency_stopped) {
    printf("EMERGENCY STOP is latched (afctl chaos reset releases it)\n");
  }
  scenario_header();
  for (pb_size_t i = 0; i < resp->scenarios_count; i++) {
    print_scenario_line(&resp->scenarios[i]);
  }
  printf("(%u active%s)\n", (unsigned)resp->scenarios_count,
         resp->truncated ? ", truncated" : "");
}

static const char *target_arg(ctx_t *c)
{
  return c->npos > 0 ? c->pos[0] : NULL;
}

/* Fields every activation shares, by name, into the request r. */
#define CHAOS_COMMON(r)                                                        \
  do {                                                                         \
    FILL(opt_duration(c, "duration", &(r)->has_duration, &(r)->duration));     \
    FILL(opt_blast(c, (r)->blast_radius, &(r)->blast_radius_count));           \
    FILL(opt_str(c, "name", (r)->name, sizeof(r)->name));                      \
    FILL(opt_str(c, "actor", (r)->actor, sizeof(r)->actor));                   \
    FILL(opt_str(c, "reason", (r)->reason, sizeof(r)->reason));                \
  } while (0)

static int cmd_chaos_latency(ctx_t *c)
{
  UNARY(
      c, INJECT_LATENCY,
      {
        antifragility_v1_InjectLatencyRequest *r = req_;
        FILL(copy_arg(c, "target", target_arg(c), r->target, sizeof r->target));
        if (opt(c, "delay") == NULL) {
          FILL(usage_error(c, "--delay is required"));
        }
        FILL(opt_duration(c, "delay", &r->has_delay, &r->delay));
        CHAOS_COMMON(r);
      },
      table_scenario);
}

static int cmd_chaos_errors(ctx_t *c)
{
  UNARY(
      c, INJECT_ERRORS,
      {
        antifragility_v1_InjectErrorsRequest *r = req_;
        FILL(copy_arg(c, "target", target_arg(c), r->target, sizeof r->target));
        if (opt(c, "rate") == NULL) {
          FILL(usage_error(c, "--rate is required"));
        }
        FILL(opt_double(c, "rate", &r->error_rate, NULL));
        FILL(opt_str(c, "error-type", r->error_type, sizeof r->error_type));
        CHAOS_COMMON(r);
      },
      table_scenario);
}

static int cmd_chaos_open(ctx_t *c)
{
  UNARY(
      c, FORCE_CIRCUIT_OPEN,
      {
        antifragility_v1_ForceCircuitOpenRequest *r = req_;
        FILL(copy_arg(c, "breaker name", target_arg(c), r->breaker_name,
                      sizeof r->breaker_name));
        CHAOS_COMMON(r);
      },
      table_scenario);
}

static int cmd_chaos_exhaust(ctx_t *c)
{
  UNARY(
      c, SIMULATE_RESOURCE_EXHAUSTION,
      {
        antifragility_v1_SimulateResourceExhaustionRequest *r = req_;
        FILL(copy_arg(c, "target", target_arg(c), r->target, sizeof r->target));
        int e = 0;
        if (opt(c, "resource") == NULL || opt(c, "level") == NULL) {
          FILL(usage_error(c, "--resource and --level are required"));
        }
        FILL(opt_enum(c, "resource",
                      &antifragility__v1__resource_type__descriptor, &e));
        r->resource_type = (antifragility_v1_ResourceType)e;
        FILL(opt_double(c, "level", &r->resource_level, NULL));
        CHAOS_COMMON(r);
      },
      table_scenario);
}

static int cmd_chaos_list(ctx_t *c)
{
  UNARY(c, LIST_SCENARIOS, {}, table_scenarios);
}

static int cmd_chaos_deactivate(ctx_t *c)
{
  UNARY(
      c, DEACTIVATE_SCENARIO,
      {
        antifragility_v1_DeactivateScenarioRequest *r = req_;
        FILL(copy_arg(c, "scenario name", target_arg(c), r->name,
                      sizeof r->name));
        FILL(opt_str(c, "actor", r->actor, sizeof r->actor));
        FILL(opt_str(c, "reason", r->reason, sizeof r->reason));
      },
      table_scenario);
}

static int cmd_chaos_stop(ctx_t *c)
{
  UNARY(
      c, EMERGENCY_STOP,
      {
        antifragility_v1_EmergencyStopRequest *r = req_;
        FILL(opt_str(c, "actor", r->actor, sizeof r->actor));
        FILL(opt_str(c, "reason", r->reason, sizeof r->reason));
      },
      NULL);
}

static int cmd_chaos_reset(ctx_t *c)
{
  UNARY(
      c, RESET_CHAOS,
      {
        antifragility_v1_ResetChaosRequest *r = req_;
        FILL(opt_str(c, "actor", r->actor, sizeof r->actor));
        FILL(opt_str(c, "reason", r->reason, sizeof r->reason));
      },
      NULL);
}

static int cmd_chaos_metrics(ctx_t *c)
{
  UNARY(c, GET_CHAOS_METRICS, {}, NULL);
}

static int cmd_chaos_check(ctx_t *c)
{
  UNARY(
      c, CHECK_INJECTION,
      {
        antifragility_v1_CheckInjectionRequest *r = req_;
        FILL(copy_arg(c, "target", target_arg(c), r->target, sizeof r->target));
      },
      NULL);
}

static void line_scenario_event(const void *m)
{
  const antifragility_v1_WatchScenariosResponse *w = m;
  char t[40];
  fmt_ts(t, sizeof t, w->has_timestamp, &w->timestamp);
  printf("%s seq=%" PRIu64 " %s %s active=%u%s\n", t, w->sequence,
         pbp_enum_short(&antifragility__v1__scenario_event_kind__descriptor,
                        (int)w->kind),
         w->has_scenario ? w->scenario.name : "-", (unsigned)w->active_count,
         w->emergency_stopped ? " STOPPED" : "");
}

static int cmd_chaos_watch(ctx_t *c)
{
  antifragility_v1_WatchScenariosRequest req =
      antifragility_v1_WatchScenariosRequest_init_zero;
  req.include_active = true;
  return run_stream(c, AF_RPC_WATCH_SCENARIOS, &req, line_scenario_event);
}

/* ---- usage --------------------------------------------------------------- */

static int fill_event(ctx_t *c, antifragility_v1_UsageEvent *e)
{
  TRY(copy_arg(c, "tenant id", c->npos > 0 ? c->pos[0] : NULL, e->tenant_id,
               sizeof e->tenant_id));
  if (opt(c, "operation") == NULL) {
    return usage_error(c, "--operation is required");
  }
  int v = 0;
  TRY(opt_enum(c, "operation",
               &antifragility__v1__meterable_operation__descriptor, &v));
  e->operation = (antifragility_v1_MeterableOperation)v;
  v = 0;
  TRY(opt_enum(c, "tier", &antifragility__v1__metering_tier__descriptor, &v));
  e->tier = (antifragility_v1_MeteringTier)v;
  TRY(opt_u64(c, "units", UINT64_MAX, &e->units, NULL));
  TRY(opt_u64(c, "tokens", UINT64_MAX, &e->tokens_processed, NULL));
  TRY(opt_double(c, "latency-ms", &e->latency_ms, NULL));
  e->compliance_score = 1.0;
  TRY(opt_double(c, "compliance", &e->compliance_score, NULL));
  e->constitutional_valid = !flag(c, "invalid");
  TRY(opt_str(c, "event-id", e->event_id, sizeof e->event_id));
  TRY(opt_str(c, "agent", e->agent_id, sizeof e->agent_id));
  return 0;
}

static int cmd_usage_record(ctx_t *c)
{
  antifragility_v1_UsageEvent ev;
  memset(&ev, 0, sizeof ev);
  TRY(fill_event(c, &ev));
  uint64_t count = 1;
  TRY(opt_u64(c, "count", 100000, &count, NULL));
  if (count <= 1) {
    UNARY(
        c, RECORD_USAGE,
        {
          antifragility_v1_RecordUsageRequest *r = req_;
          r->has_event = true;
          r->event = ev;
        },
        NULL);
  }
  /* --count N: N events on one RecordUsageStream; with --event-id ID
   * they get keys ID-1 .. ID-N (so re-running counts nothing twice). */
  TRY(check_unused(c));
  antifragility_v1_RecordUsageRequest *reqs = xcalloc(count * sizeof *reqs);
  for (uint64_t i = 0; i < count; i++) {
    reqs[i].has_event = true;
    reqs[i].event = ev;
    if (ev.event_id[0] != '\0') {
      snprintf(reqs[i].event.event_id, sizeof reqs[i].event.event_id,
               "%.40s-%" PRIu64, ev.event_id, i + 1);
    }
  }
  antifragility_v1_RecordUsageStreamResponse resp;
  memset(&resp, 0, sizeof resp);
  af_call_status_t st;
  int code = af_client_record_usage_stream(c->client, reqs, (size_t)count,
                                           &resp, c->timeout_ms, &st);
  free(reqs);
  if (code != 0) {
    return rpc_failed(&st);
  }
  if (c->json) {
    print_json(AF_RPC_RECORD_USAGE_STREAM, &resp);
  } else {
    print_text(AF_RPC_RECORD_USAGE_STREAM, &resp);
  }
  return 0;
}

static void bucket_row(const char *label, const antifragility_v1_UsageBucket *b)
{
  printf("%-28s %10" PRIu64 " %12" PRIu64 " %12" PRIu64 " %12.2f %10.3f\n",
         label, b->count, b->units, b->tokens, b->latency_avg_ms,
         b->compliance_avg);
}

static void table_usage(const void *r)
{
  const antifragility_v1_QueryUsageResponse *resp = r;
  printf("%-28s %10s %12s %12s %12s %10s\n", "BUCKET", "EVENTS", "UNITS",
         "TOKENS", "AVG_LAT_MS", "COMPLIANCE");
  for (pb_size_t i = 0; i < resp->buckets_count; i++) {
    const antifragility_v1_UsageBucket *b = &resp->buckets[i];
    char label[48];
    if (b->has_bucket_start) {
      fmt_ts(label, sizeof label, true, &b->bucket_start);
    } else if (b->operation != 0) {
      snprintf(
          label, sizeof label, "%s",
          pbp_enum_short(&antifragility__v1__meterable_operation__descriptor,
                         (int)b->operation));
    } else if (b->tier != 0) {
      snprintf(label, sizeof label, "%s",
               pbp_enum_short(&antifragility__v1__metering_tier__descriptor,
                              (int)b->tier));
    } else {
      snprintf(label, sizeof label, "all");
    }
    bucket_row(label, b);
  }
  bucket_row("TOTAL", &resp->total);
  if (resp->truncated) {
    printf("(buckets truncated)\n");
  }
}

static bool parse_time(const char *s, google_protobuf_Timestamp *t)
{
  struct tm tm;
  memset(&tm, 0, sizeof tm);
  const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
  if (end == NULL || (*end != '\0' && strcmp(end, "Z") != 0)) {
    return false;
  }
  t->seconds = (int64_t)timegm(&tm);
  t->nanos = 0;
  return true;
}

static int cmd_usage_query(ctx_t *c)
{
  UNARY(
      c, QUERY_USAGE,
      {
        antifragility_v1_QueryUsageRequest *r = req_;
        FILL(copy_arg(c, "tenant id", c->npos > 0 ? c->pos[0] : NULL,
                      r->tenant_id, sizeof r->tenant_id));
        const char *since = opt(c, "since");
        if (since != NULL) {
          uint64_t ms;
          if (!parse_duration_ms(since, &ms)) {
            FILL(usage_error(c, "--since: expected a duration like 1h"));
          }
          r->has_start = true;
          r->start.seconds = (int64_t)time(NULL) - (int64_t)(ms / 1000);
        }
        const char *start = opt(c, "start");
        const char *end = opt(c, "end");
        if (start != NULL && !(r->has_start = parse_time(start, &r->start))) {
          FILL(usage_error(c, "--start: expected YYYY-MM-DDTHH:MM:SSZ"));
        }
        if (end != NULL && !(r->has_end = parse_time(end, &r->end))) {
          FILL(usage_error(c, "--end: expected YYYY-MM-DDTHH:MM:SSZ"));
        }
        int v = 0;
        FILL(opt_enum(c, "group-by",
                      &antifragility__v1__usage_group_by__descriptor, &v));
        r->group_by = (antifragility_v1_UsageGroupBy)v;
        v = 0;
        FILL(opt_enum(c, "operation",
                      &antifragility__v1__meterable_operation__descriptor, &v));
        r->operation = (antifragility_v1_MeterableOperation)v;
        v = 0;
        FILL(opt_enum(c, "tier", &antifragility__v1__metering_tier__descriptor,
                      &v));
        r->tier = (antifragility_v1_MeteringTier)v;
      },
      table_usage);
}

static int cmd_usage_metrics(ctx_t *c)
{
  UNARY(c, GET_METERING_METRICS, {}, NULL);
}

/* ---- metrics ------------------------------------------------------------- */

static int cmd_metrics(ctx_t *c)
{
  TRY(check_unused(c));
  static const af_rpc_id_t rpcs[] = {AF_RPC_GET_HEALTH_METRICS,
                                     AF_RPC_GET_CHAOS_METRICS,
                                     AF_RPC_GET_METERING_METRICS};
  static const char *const names[] = {"health", "chaos", "metering"};
  int rc = 0;
  if (c->json) {
    fputc('{', stdout);
  }
  for (size_t i = 0; i < 3; i++) {
    const af_rpc_info_t *info = af_rpc_info(rpcs[i]);
    void *req = xcalloc(info->req_size);
    void *resp = xcalloc(info->resp_size);
    af_call_status_t st;
    if (af_client_unary(c->client, rpcs[i], req, resp, c->timeout_ms, &st) !=
        0) {
      rc = rpc_failed(&st);
    } else if (c->json) {
      ProtobufCMessage *m =
          pbp_from_nanopb(info->resp_fields, resp, resp_desc[rpcs[i]]);
      printf("%s\"%s\":", i > 0 ? "," : "", names[i]);
      if (m != NULL) {
        pbp_json(stdout, m);
        protobuf_c_message_free_unpacked(m, NULL);
      } else {
        fputs("{}", stdout);
      }
    } else {
      printf("%s[%s]\n", i > 0 ? "\n" : "", names[i]);
      print_text(rpcs[i], resp);
    }
    free(req);
    free(resp);
    if (rc != 0) {
      break;
    }
  }
  if (c->json) {
    fputs("}\n", stdout);
  }
  return rc;
}

/* ---- command table and help ---------------------------------------------- */

typedef struct {
  const char *group;
  const char *name; /* NULL: the group itself */
  int (*fn)(ctx_t *c);
  const char *usage;
  const char *summary;
} command_t;

static const command_t commands[] = {
    {"health", NULL, cmd_health, "health", "current system health report"},
    {"health", "watch", cmd_health_watch, "health watch [--score] [--count N]",
     "print every health change live until interrupted"},
    {"health", "history", cmd_health_history,
     "health history [--window 5m] [--limit N]", "health snapshots"},
    {"health", "metrics", cmd_health_metrics, "health metrics",
     "health aggregator counters"},
    {"breaker", "list", cmd_breaker_list,
     "breaker list [--state open] [--prefix P]", "all breakers (every page)"},
    {"breaker", "get", cmd_breaker_get, "breaker get NAME", "one breaker"},
    {"breaker", "register", cmd_breaker_register,
     "breaker register NAME [--fail-max N] [--reset-timeout 30s] "
     "[--half-open-max-calls N] [--success-threshold N] [--weight W] "
     "[--description D] [--exclude E1,E2] [--update]",
     "get-or-create a breaker"},
    {"breaker", "report", cmd_breaker_report,
     "breaker report NAME (--success | --failure [--error-type T] | --state "
     "S) [--instance I] [--latency-ms X] [--auto-register] [--count N]",
     "report outcomes (--count N: N on one stream) or a client state"},
    {"breaker", "reset", cmd_breaker_reset, "breaker reset (NAME | --all)",
     "reset a breaker (or all) to CLOSED"},
    {"breaker", "unregister", cmd_breaker_unregister, "breaker unregister NAME",
     "remove a breaker"},
    {"breaker", "watch", cmd_breaker_watch,
     "breaker watch [NAME...] [--count N]", "stream breaker events"},
    {"recovery", "schedule", cmd_recovery_schedule,
     "recovery schedule SERVICE [--strategy exponential_backoff] "
     "[--priority N] [policy options]",
     "queue a service for recovery"},
    {"recovery", "execute", cmd_recovery_execute, "recovery execute SERVICE",
     "run one recovery attempt now"},
    {"recovery", "status", cmd_recovery_status, "recovery status [SERVICE]",
     "tasks, recent results and counters"},
    {"recovery", "cancel", cmd_recovery_cancel,
     "recovery cancel SERVICE [--reason R]", "cancel a service's task"},
    {"recovery", "approve", cmd_recovery_approve,
     "recovery approve SERVICE [--actor A] [--reason R]",
     "approve the next attempt of a MANUAL task"},
    {"recovery", "policy", cmd_recovery_policy,
     "recovery policy SERVICE [--strategy S] [--max-retries N] "
     "[--multiplier X] "
     "[--initial-delay 1s] [--max-delay 60s] [--jitter none|full|"
     "decorrelated] [--probe none|grpc_health|tcp|http] [--probe-target T] "
     "[--probe-service S] [--probe-timeout 2s]",
     "show a service's policy, or set it when options are given"},
    {"recovery", "watch", cmd_recovery_watch,
     "recovery watch [SERVICE] [--count N]", "stream recovery events"},
    {"chaos", "latency", cmd_chaos_latency,
     "chaos latency TARGET --delay 100ms [--duration 30s] [--blast A,B] "
     "[--name N] [--actor A] [--reason R]",
     "add latency to a target"},
    {"chaos", "errors", cmd_chaos_errors,
     "chaos errors TARGET --rate 0.5 [--error-type T] [--duration 30s] "
     "[--blast A,B] [--name N] [--actor A] [--reason R]",
     "fail calls to a target at random"},
    {"chaos", "open", cmd_chaos_open,
     "chaos open BREAKER [--duration 30s] [--blast A,B] [--name N] "
     "[--actor A] [--reason R]",
     "hold a breaker open"},
    {"chaos", "exhaust", cmd_chaos_exhaust,
     "chaos exhaust TARGET --resource cpu|memory|connections|disk_io|"
     "network_bandwidth --level 0.8 [--duration 30s] [--blast A,B] "
     "[--name N] [--actor A] [--reason R]",
     "simulate resource exhaustion"},
    {"chaos", "list", cmd_chaos_list, "chaos list", "active scenarios"},
    {"chaos", "deactivate", cmd_chaos_deactivate,
     "chaos deactivate NAME [--actor A] [--reason R]", "end one scenario"},
    {"chaos", "stop", cmd_chaos_stop, "chaos stop [--actor A] [--reason R]",
     "EMERGENCY STOP: end all chaos, refuse new scenarios until reset"},
    {"chaos", "reset", cmd_chaos_reset, "chaos reset [--actor A] [--reason R]",
     "clear every scenario and release the emergency stop"},
    {"chaos", "metrics", cmd_chaos_metrics, "chaos metrics",
     "chaos engine counters"},
    {"chaos", "check", cmd_chaos_check, "chaos check TARGET",
     "what chaos applies to a target right now"},
    {"chaos", "watch", cmd_chaos_watch, "chaos watch [--count N]",
     "stream scenario events"},
    {"usage", "record", cmd_usage_record,
     "usage record TENANT --operation agent_message [--tier standard] "
     "[--units N] [--tokens N] [--latency-ms X] [--compliance X] [--invalid] "
     "[--event-id ID] [--agent A] [--count N]",
     "record a usage event (--count N: N events on one stream)"},
    {"usage", "query", cmd_usage_query,
     "usage query TENANT [--since 1h | --start T --end T] [--group-by "
     "hour|day|operation|tier] [--operation OP] [--tier T]",
     "usage aggregates of a tenant"},
    {"usage", "metrics", cmd_usage_metrics, "usage metrics",
     "metering queue counters"},
    {"metrics", NULL, cmd_metrics, "metrics",
     "health, chaos and metering counters"},
};
#define NCOMMANDS (sizeof commands / sizeof commands[0])

static void help_top(FILE *out)
{
  fputs("usage: afctl [--addr HOST:PORT] [--json] [--timeout MS] [--token T] "
        "GROUP "
        "[COMMAND] [ARGS]\n\n"
        "Operator CLI of the antifragility service (afd).\n\n"
        "Global options (anywhere on the line):\n"
        "  --addr HOST:PORT  server address (env AF_ADDR, default "
        "127.0.0.1:50051)\n"
        "  --json            one line of proto3 JSON per response\n"
        "  --timeout MS      deadline of each call (default 5000)\n"
        "  --token TOKEN     bearer token (env AF_TOKEN)\n"
        "  --tls-ca PEM      use TLS, trusting this CA (env AF_TLS_CA)\n"
        "  --tls-cert PEM --tls-key PEM  client certificate (mTLS)\n"
        "  --help, -h        help for afctl, a group or a command\n\n"
        "Commands:\n",
        out);
  for (size_t i = 0; i < NCOMMANDS; i++) {
    char name[64];
    snprintf(name, sizeof name, "%s%s%s", commands[i].group,
             commands[i].name ? " " : "",
             commands[i].name ? commands[i].name : "");
    fprintf(out, "  %-20s %s\n", name, commands[i].summary);
  }
  fputs("\nExit codes: 0 ok, 1 local failure, 2 usage error, 10+N the call "
        "ended with gRPC\nstatus N (15 NOT_FOUND, 13 INVALID_ARGUMENT, 19 "
        "FAILED_PRECONDITION,\n22 UNIMPLEMENTED, 24 UNAVAILABLE, 14 "
        "DEADLINE_EXCEEDED).\n",
        out);
}

static void help_group(FILE *out, const char *group)
{
  fprintf(out, "usage: afctl %s COMMAND [ARGS]\n\nCommands:\n", group);
  for (size_t i = 0; i < NCOMMANDS; i++) {
    if (strcmp(commands[i].group, group) == 0) {
      fprintf(out, "  afctl %s\n      %s\n", commands[i].usage,
              commands[i].summary);
    }
  }
}

static bool group_exists(const char *g)
{
  for (size_t i = 0; i < NCOMMANDS; i++) {
    if (strcmp(commands[i].group, g) == 0) {
      return true;
    }
  }
  return false;
}

int main(int argc, char **argv)
{
  ctx_t c;
  memset(&c, 0, sizeof c);
  c.addr = getenv("AF_ADDR");
  if (c.addr == NULL || *c.addr == '\0') {
    c.addr = "127.0.0.1:50051";
  }
  c.timeout_ms = 5000;
  c.token = getenv("AF_TOKEN");
  c.tls_ca = getenv("AF_TLS_CA");
  bool help = false;
  for (int i = 1; i < argc; i++) {
    char *a = argv[i];
    if (strcmp(a, "-h") == 0) {
      help = true;
      continue;
    }
    if (strncmp(a, "--", 2) != 0 || a[2] == '\0') {
      if (c.npos == MAX_POS) {
        return usage_error(NULL, "too many arguments");
      }
      c.pos[c.npos++] = a;
      continue;
    }
    char *name = a + 2;
    char *value = NULL;
    char *eq = strchr(name, '=');
    if (eq != NULL) {
      *eq = '\0';
      value = eq + 1;
    } else if (!is_bool_flag(name)) {
      if (i + 1 >= argc) {
        return usage_error(NULL, "--%s needs a value", name);
      }
      value = argv[++i];
    }
    if (strcmp(name, "help") == 0) {
      help = true;
    } else if (strcmp(name, "json") == 0) {
      c.json = true;
    } else if (strcmp(name, "addr") == 0) {
      c.addr = value;
    } else if (strcmp(name, "token") == 0) {
      c.token = value;
    } else if (strcmp(name, "tls-ca") == 0) {
      c.tls_ca = value;
    } else if (strcmp(name, "tls-cert") == 0) {
      c.tls_cert = value;
    } else if (strcmp(name, "tls-key") == 0) {
      c.tls_key = value;
    } else if (strcmp(name, "timeout") == 0) {
      uint64_t t;
      if (!parse_u64(value, &t) || t == 0 || t > UINT32_MAX) {
        return usage_error(NULL, "--timeout: expected milliseconds >= 1");
      }
      c.timeout_ms = (uint32_t)t;
    } else {
      if (c.nopts == MAX_OPTS) {
        return usage_error(NULL, "too many options");
      }
      c.opts[c.nopts].name = name;
      c.opts[c.nopts].value = value;
      c.nopts++;
    }
  }
  if (c.npos == 0) {
    help_top(help ? stdout : stderr);
    return help ? 0 : EXIT_USAGE;
  }
  const char *group = c.pos[0];
  if (!group_exists(group)) {
    fprintf(stderr, "afctl: unknown command '%s'\n", group);
    help_top(stderr);
    return EXIT_USAGE;
  }
  const command_t *cmd = NULL;
  int shift = 1;
  for (size_t i = 0; i < NCOMMANDS && c.npos > 1; i++) {
    if (strcmp(commands[i].group, group) == 0 && commands[i].name != NULL &&
        strcmp(commands[i].name, c.pos[1]) == 0) {
      cmd = &commands[i];
      shift = 2;
    }
  }
  for (size_t i = 0; i < NCOMMANDS && cmd == NULL && c.npos == 1; i++) {
    if (strcmp(commands[i].group, group) == 0 && commands[i].name == NULL) {
      cmd = &commands[i];
    }
  }
  bool has_subcommands = false;
  for (size_t i = 0; i < NCOMMANDS; i++) {
    if (strcmp(commands[i].group, group) == 0 && commands[i].name != NULL) {
      has_subcommands = true;
    }
  }
  if (help) {
    if (cmd == NULL || (cmd->name == NULL && has_subcommands)) {
      help_group(stdout, group);
    } else {
      printf("usage: afctl %s\n\n%s\n", cmd->usage, cmd->summary);
    }
    return 0;
  }
  if (cmd == NULL) {
    if (c.npos > 1) {
      fprintf(stderr, "afctl: unknown command '%s %s'\n", group, c.pos[1]);
    }
    help_group(stderr, group);
    return EXIT_USAGE;
  }
  memmove(c.pos, c.pos + shift, (size_t)(c.npos - shift) * sizeof c.pos[0]);
  c.npos -= shift;
  c.cmd_usage = cmd->usage;

  af_client_config_t cfg;
  af_client_config_init(&cfg);
  cfg.addr = c.addr;
  cfg.token = c.token;
  cfg.tls_ca_file = c.tls_ca;
  cfg.tls_cert_file = c.tls_cert;
  cfg.tls_key_file = c.tls_key;
  cfg.deadline_ms = c.timeout_ms;
  cfg.background = false;
  cfg.follow_chaos = false;
  af_error_t err;
  af_error_clear(&err);
  if (af_client_create(&c.client, &cfg, &err) != AF_OK) {
    fprintf(stderr, "afctl: %s\n", err.message);
    return EXIT_LOCAL;
  }
  int rc = cmd->fn(&c);
  af_client_destroy(c.client);
  return rc;
}
