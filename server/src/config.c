/*
 * config.c - afd configuration from defaults, AF_* environment and flags.
 *
 * One table describes every setting (flag, variable, type, range), so
 * --help, the environment and the flag parser cannot drift apart.
 * Stateless apart from the caller's af_config_t; thread-compatible.
 */
#include "config.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "af/types.h"

typedef enum { T_STR, T_INT, T_U32, T_BOOL, T_LEVEL } opt_type_t;

typedef struct {
  const char *flag;
  const char *env;
  opt_type_t type;
  size_t offset;
  long long min, max;
  const char *help;
} opt_t;

#define OFF(f) offsetof(af_config_t, f)
static const opt_t g_opts[] = {
    {"listen", "AF_LISTEN", T_STR, OFF(listen), 0, 0,
     "HOST:PORT to listen on (port 0 picks one) [127.0.0.1:50051]"},
    {"threads", "AF_THREADS", T_INT, OFF(threads), 1, 64,
     "completion-queue worker threads [1]"},
    {"health-interval-ms", "AF_HEALTH_INTERVAL_MS", T_U32,
     OFF(health_interval_ms), 1, 3600000, "health snapshot interval [1000]"},
    {"history-size", "AF_HISTORY_SIZE", T_U32, OFF(history_size), 1, 1000000,
     "health snapshots kept [300]"},
    {"max-watchers", "AF_MAX_WATCHERS", T_U32, OFF(max_watchers), 1, 1000000,
     "open watch streams allowed [10000]"},
    {"queue-size", "AF_QUEUE_SIZE", T_U32, OFF(queue_size), 1, 10000000,
     "metering queue capacity [10000]"},
    {"flush-interval-ms", "AF_FLUSH_INTERVAL_MS", T_U32, OFF(flush_interval_ms),
     1, 3600000, "metering flush interval [1000]"},
    {"hash", "AF_CONSTITUTIONAL_HASH", T_STR, OFF(hash), 0, 0,
     "constitutional hash [cdd01ef066bc6cf2]"},
    {"log-level", "AF_LOG_LEVEL", T_LEVEL, OFF(log_level), 0, 0,
     "error|warn|info|debug [info]"},
    {"heartbeat-ms", "AF_HEARTBEAT_MS", T_U32, OFF(heartbeat_ms), 0, 3600000,
     "stream heartbeat after this idle time, 0 = off [15000]"},
    {"data-dir", "AF_DATA_DIR", T_STR, OFF(data_dir), 0, 0,
     "directory for the SQLite store [./afd-data]"},
    {"memory", "AF_MEMORY", T_BOOL, OFF(memory), 0, 0,
     "keep all state in memory, no persistence (AF_MEMORY=1)"},
    {"shutdown-grace-ms", "AF_SHUTDOWN_GRACE_MS", T_U32, OFF(shutdown_grace_ms),
     0, 600000,
     "wait this long for calls on shutdown before cancelling [2000]"},
    {"drain-ms", "AF_DRAIN_MS", T_U32, OFF(drain_ms), 0, 3600000,
     "on shutdown, write queued metering events for at most this long "
     "[5000]"},
    {"batch-size", "AF_BATCH_SIZE", T_U32, OFF(batch_size), 1, 100000,
     "metering events per store commit at most (group commit) [500]"},
    {"max-watchers-per-conn", "AF_MAX_WATCHERS_PER_CONN", T_U32,
     OFF(max_watchers_per_conn), 1, 1000000,
     "open watch streams allowed per connection [1000]"},
    {"max-message-bytes", "AF_MAX_MESSAGE_BYTES", T_U32, OFF(max_message_bytes),
     1024, 67108864, "largest request or response message [4194304]"},
    {"tls-cert", "AF_TLS_CERT", T_STR, OFF(tls_cert), 0, 0,
     "PEM server certificate chain: serve TLS [off]"},
    {"tls-key", "AF_TLS_KEY", T_STR, OFF(tls_key), 0, 0,
     "PEM private key of --tls-cert"},
    {"tls-client-ca", "AF_TLS_CLIENT_CA", T_STR, OFF(tls_client_ca), 0, 0,
     "PEM CA that client certificates must chain to (mTLS) [off]"},
    {"tokens-file", "AF_TOKENS_FILE", T_STR, OFF(tokens_file), 0, 0,
     "bearer tokens: lines 'identity role token' [off]"},
    {"insecure-open", "AF_INSECURE_OPEN", T_BOOL, OFF(insecure_open), 0, 0,
     "allow a non-loopback --listen without --tokens-file"},
};
#define N_OPTS (sizeof g_opts / sizeof g_opts[0])

void af_config_init(af_config_t *cfg)
{
  if (!cfg)
    return;
  memset(cfg, 0, sizeof *cfg);
  snprintf(cfg->listen, sizeof cfg->listen, "%s", "127.0.0.1:50051");
  cfg->threads = 1;
  cfg->health_interval_ms = 1000;
  cfg->history_size = 300;
  cfg->max_watchers = 10000;
  cfg->queue_size = 10000;
  cfg->flush_interval_ms = 1000;
  snprintf(cfg->hash, sizeof cfg->hash, "%s", AF_CONSTITUTIONAL_HASH_DEFAULT);
  cfg->log_level = AF_LOG_INFO;
  cfg->heartbeat_ms = 15000;
  snprintf(cfg->data_dir, sizeof cfg->data_dir, "%s", "./afd-data");
  cfg->memory = false;
  cfg->shutdown_grace_ms = 2000;
  cfg->drain_ms = 5000;
  cfg->batch_size = 500;
  cfg->max_watchers_per_conn = 1000;
  cfg->max_message_bytes = 4u * 1024u * 1024u;
}

/* Sets one option from text; `who` names the flag or variable. */
static af_status_t apply(af_config_t *cfg, const opt_t *o, const char *who,
                         const char *val, af_error_t *err)
{
  char *base = (char *)cfg + o->offset;
  switch (o->type) {
  case T_STR:
    if (!val[0])
      return af_error_set(err, AF_EINVAL, "%s: value must not be empty", who);
    if (strlen(val) >= AF_CONFIG_STR_MAX)
      return af_error_set(err, AF_EINVAL, "%s: value longer than %d bytes", who,
                          AF_CONFIG_STR_MAX - 1);
    if (o->offset == OFF(hash) && strlen(val) > AF_HASH_MAX)
      return af_error_set(err, AF_EINVAL, "%s: value longer than %d bytes", who,
                          AF_HASH_MAX);
    memcpy(base, val, strlen(val) + 1);
    return AF_OK;
  case T_INT:
  case T_U32: {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(val, &end, 10);
    if (!val[0] || errno || !end || *end || v < o->min || v > o->max)
      return af_error_set(err, AF_EINVAL,
                          "%s: expected an integer in %lld..%lld, got '%s'",
                          who, o->min, o->max, val);
    if (o->type == T_INT)
      *(int *)(void *)base = (int)v;
    else
      *(uint32_t *)(void *)base = (uint32_t)v;
    return AF_OK;
  }
  case T_BOOL:
    if (strcmp(val, "1") == 0 || strcmp(val, "true") == 0)
      *(bool *)(void *)base = true;
    else if (strcmp(val, "0") == 0 || strcmp(val, "false") == 0)
      *(bool *)(void *)base = false;
    else
      return af_error_set(err, AF_EINVAL,
                          "%s: expected 1, 0, true or false, got '%s'", who,
                          val);
    return AF_OK;
  case T_LEVEL: {
    af_log_level_t lv;
    if (!af_log_level_parse(val, &lv))
      return af_error_set(err, AF_EINVAL,
                          "%s: expected error, warn, info or debug, got '%s'",
                          who, val);
    *(af_log_level_t *)(void *)base = lv;
    return AF_OK;
  }
  }
  return af_error_set(err, AF_EINTERNAL, "%s: bad option type", who);
}

af_status_t af_config_from_env(af_config_t *cfg, af_error_t *err)
{
  if (!cfg)
    return af_error_set(err, AF_EINVAL, "cfg must not be NULL");
  for (size_t i = 0; i < N_OPTS; i++) {
    const char *v = getenv(g_opts[i].env);
    if (!v)
      continue;
    af_status_t s = apply(cfg, &g_opts[i], g_opts[i].env, v, err);
    if (s != AF_OK)
      return s;
  }
  return AF_OK;
}

af_status_t af_config_parse_args(af_config_t *cfg, int argc, char *const argv[],
                                 af_config_action_t *action, af_error_t *err)
{
  if (!cfg)
    return af_error_set(err, AF_EINVAL, "cfg must not be NULL");
  if (action)
    *action = AF_CONFIG_RUN;
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
      if (action)
        *action = AF_CONFIG_HELP;
      return AF_OK;
    }
    if (strcmp(arg, "--version") == 0) {
      if (action)
        *action = AF_CONFIG_VERSION;
      return AF_OK;
    }
    if (strncmp(arg, "--", 2) != 0)
      return af_error_set(err, AF_EINVAL, "unexpected argument '%s'", arg);
    const char *name = arg + 2;
    const char *eq = strchr(name, '=');
    size_t nlen = eq ? (size_t)(eq - name) : strlen(name);
    const opt_t *o = NULL;
    for (size_t k = 0; k < N_OPTS; k++)
      if (strlen(g_opts[k].flag) == nlen &&
          strncmp(g_opts[k].flag, name, nlen) == 0)
        o = &g_opts[k];
    if (!o)
      return af_error_set(err, AF_EINVAL, "unknown flag '%.*s'",
                          (int)(nlen + 2), arg);
    char who[64];
    snprintf(who, sizeof who, "--%s", o->flag);
    const char *val;
    if (eq) {
      val = eq + 1;
    } else if (o->type == T_BOOL) {
      val = "1";
    } else {
      if (i + 1 >= argc)
        return af_error_set(err, AF_EINVAL, "%s: missing value", who);
      val = argv[++i];
    }
    af_status_t s = apply(cfg, o, who, val, err);
    if (s != AF_OK)
      return s;
  }
  return AF_OK;
}

void af_config_usage(FILE *out, const char *prog)
{
  fprintf(out,
          "usage: %s [flags]\n"
          "afd: the antifragility service (gRPC). Flags win over the AF_* "
          "environment.\n\n",
          prog ? prog : "afd");
  for (size_t i = 0; i < N_OPTS; i++) {
    char flag[64];
    snprintf(flag, sizeof flag, "--%s%s", g_opts[i].flag,
             g_opts[i].type == T_BOOL ? "" : " V");
    fprintf(out, "  %-24s %-24s %s\n", flag, g_opts[i].env, g_opts[i].help);
  }
  fprintf(out, "  %-24s %-24s %s\n", "--help", "", "print this help");
  fprintf(out, "  %-24s %-24s %s\n", "--version", "", "print the version");
  fprintf(out, "\nExit status: 0 after a clean shutdown (SIGTERM/SIGINT), 1 "
               "on a start error\n(e.g. port in use) or a forced stop (second "
               "signal), 2 on a bad flag or value.\n");
}
