/*
 * config.h - afd's configuration: defaults, AF_* environment, flags.
 *
 * Thread-safety: thread-compatible (plain data; af_config_from_env reads
 * the environment, so do not setenv concurrently).
 *
 * Precedence: defaults < environment < flags.
 */
#ifndef AF_CONFIG_H
#define AF_CONFIG_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "af/status.h"
#include "log.h"

#ifdef __cplusplus
extern "C" {
#endif

#define AF_CONFIG_STR_MAX 256

typedef struct {
  char listen[AF_CONFIG_STR_MAX]; /* --listen, AF_LISTEN, 127.0.0.1:50051 */
  int threads;                    /* --threads, AF_THREADS, 1 (1..64) */
  uint32_t health_interval_ms;    /* AF_HEALTH_INTERVAL_MS, 1000 */
  uint32_t history_size;          /* AF_HISTORY_SIZE, 300 */
  uint32_t max_watchers;          /* AF_MAX_WATCHERS, 10000 */
  uint32_t queue_size;            /* AF_QUEUE_SIZE, 10000 */
  uint32_t flush_interval_ms;     /* AF_FLUSH_INTERVAL_MS, 1000 */
  char hash[AF_CONFIG_STR_MAX];   /* AF_CONSTITUTIONAL_HASH, cdd01ef066bc6cf2 */
  af_log_level_t log_level;       /* AF_LOG_LEVEL, info */
  uint32_t heartbeat_ms;          /* AF_HEARTBEAT_MS, 15000 */
  char data_dir[AF_CONFIG_STR_MAX]; /* AF_DATA_DIR, ./afd-data */
  bool memory;                      /* --memory, AF_MEMORY=1: no persistence */
  uint32_t shutdown_grace_ms;       /* AF_SHUTDOWN_GRACE_MS, 2000 */
  uint32_t drain_ms;   /* --drain-ms, AF_DRAIN_MS, 5000: metering drain */
  uint32_t batch_size; /* --batch-size, AF_BATCH_SIZE, 500: events/commit */
  /* Security (README "Security"): PEM file paths, "" = none. */
  char tls_cert[AF_CONFIG_STR_MAX];      /* AF_TLS_CERT */
  char tls_key[AF_CONFIG_STR_MAX];       /* AF_TLS_KEY */
  char tls_client_ca[AF_CONFIG_STR_MAX]; /* AF_TLS_CLIENT_CA: mTLS */
  char tokens_file[AF_CONFIG_STR_MAX];   /* AF_TOKENS_FILE */
  bool insecure_open; /* AF_INSECURE_OPEN: non-loopback without tokens */
  /* Limits. */
  uint32_t max_watchers_per_conn; /* AF_MAX_WATCHERS_PER_CONN, 1000 */
  uint32_t max_message_bytes;     /* AF_MAX_MESSAGE_BYTES, 4194304 */
} af_config_t;

/* Fills *cfg with the defaults. Cannot fail. */
void af_config_init(af_config_t *cfg);

/* Applies AF_* variables from the environment. AF_EINVAL with err naming
 * the variable ("AF_THREADS: expected an integer in 1..64, got 'x'"); on
 * failure *cfg may be partly updated. */
af_status_t af_config_from_env(af_config_t *cfg, af_error_t *err);

/* What af_config_parse_args found besides settings. */
typedef enum {
  AF_CONFIG_RUN = 0,
  AF_CONFIG_HELP = 1,    /* --help / -h */
  AF_CONFIG_VERSION = 2, /* --version */
} af_config_action_t;

/* Parses argv[1..argc-1] ("--flag value" or "--flag=value") over *cfg.
 * AF_EINVAL with err naming the flag for an unknown flag, a missing or bad
 * value. *action (may be NULL) gets what to do. */
af_status_t af_config_parse_args(af_config_t *cfg, int argc, char *const argv[],
                                 af_config_action_t *action, af_error_t *err);

/* Writes the --help text. */
void af_config_usage(FILE *out, const char *prog);

#ifdef __cplusplus
}
#endif
#endif /* AF_CONFIG_H */
