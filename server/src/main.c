/*
 * main.c - the afd daemon: config (defaults < AF_* env < flags), start,
 * wait for SIGTERM/SIGINT, graceful stop.
 *
 * Exit status: 0 after a clean shutdown, 1 if start fails (e.g. port in
 * use) or on a second signal during shutdown (forced, _exit(1)), 2 for a
 * bad flag or environment value. The signal handler only writes to the
 * afd self-pipe (async-signal-safe).
 */
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <grpc/grpc.h>

#include "afd.h"
#include "config.h"
#include "log.h"

static af_afd_t *g_afd;
static volatile sig_atomic_t g_signals;

static void on_signal(int sig)
{
  (void)sig;
  g_signals++;
  if (g_signals > 1)
    _exit(1);
  if (g_afd)
    af_afd_request_stop(g_afd);
}

int main(int argc, char **argv)
{
  af_config_t cfg;
  af_config_init(&cfg);
  af_error_t err;
  af_error_clear(&err);
  af_config_action_t action = AF_CONFIG_RUN;
  if (af_config_from_env(&cfg, &err) != AF_OK ||
      af_config_parse_args(&cfg, argc, argv, &action, &err) != AF_OK) {
    fprintf(stderr, "afd: %s\n(see afd --help)\n", err.message);
    return 2;
  }
  if (action == AF_CONFIG_HELP) {
    af_config_usage(stdout, "afd");
    return 0;
  }
  if (action == AF_CONFIG_VERSION) {
    printf("afd 0.1.0 (gRPC core %s)\n", grpc_version_string());
    return 0;
  }

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  signal(SIGPIPE, SIG_IGN);

  af_afd_t *afd = NULL;
  int port = 0;
  if (af_afd_start(&cfg, &afd, &port, &err) != AF_OK) {
    af_log(AF_LOG_ERROR, "cannot start: %s", err.message);
    return 1;
  }
  g_afd = afd;
  if (g_signals > 0)
    af_afd_request_stop(afd);
  af_afd_wait(afd);
  af_afd_stop(afd);
  g_afd = NULL;
  return 0;
}
