/*
 * afd.c - the daemon's lifecycle in-process (main.c and integration tests).
 *
 * Owns: a copy of the config, the server, the app and a self-pipe that
 * af_afd_request_stop (async-signal-safe) writes to and af_afd_wait reads.
 * Order on start: server, health, reflection, app (registers methods),
 * bind + threads, app start. Order on stop: the notes' graceful drain
 * (begin shutdown, app shutdown, server shutdown, destroy).
 */
#include "afd.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "af/alloc.h"
#include "app.h"
#include "grpc_health.h"
#include "log.h"
#include "reflection.h"

struct af_afd {
  af_config_t cfg;
  af_server_t *srv;
  af_app_t *app;
  int port;
  int pipe_fd[2];
  atomic_int stop_requests;
};

static void listen_host(const char *listen, char *host, size_t n)
{
  const char *colon = strrchr(listen, ':');
  size_t len = colon ? (size_t)(colon - listen) : strlen(listen);
  if (len >= n)
    len = n - 1;
  memcpy(host, listen, len);
  host[len] = '\0';
}

af_status_t af_afd_start(const af_config_t *cfg, af_afd_t **out, int *port,
                         af_error_t *err)
{
  if (!cfg || !out)
    return af_error_set(err, AF_EINVAL, "cfg and out must not be NULL");
  af_afd_t *afd = af_calloc(1, sizeof *afd);
  if (!afd)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  afd->cfg = *cfg;
  if (pipe(afd->pipe_fd) != 0) {
    af_free(afd);
    return af_error_set(err, AF_EIO, "pipe: %s", strerror(errno));
  }
  fcntl(afd->pipe_fd[1], F_SETFL, O_NONBLOCK);
  af_log_set_level(cfg->log_level);

  af_server_options_t opt;
  af_server_options_init(&opt);
  opt.listen_addr = afd->cfg.listen;
  opt.threads = afd->cfg.threads;
  opt.max_watchers = afd->cfg.max_watchers;
  opt.heartbeat_ms = afd->cfg.heartbeat_ms;
  opt.hash = afd->cfg.hash;
  opt.shutdown_grace_ms = afd->cfg.shutdown_grace_ms;
  af_status_t s = af_server_create(&afd->srv, &opt, err);
  if (s != AF_OK)
    goto fail;
  s = af_grpc_health_register(afd->srv, NULL, NULL);
  if (s == AF_OK)
    s = af_reflection_register_embedded(afd->srv);
  if (s != AF_OK) {
    af_error_set(err, s, "cannot register health/reflection: %s",
                 af_status_str(s));
    goto fail;
  }
  s = af_app_create(&afd->app, &afd->cfg, afd->srv);
  if (s != AF_OK) {
    af_error_set(err, s, "cannot create the app: %s", af_status_str(s));
    goto fail;
  }
  s = af_server_start(afd->srv, &afd->port, err);
  if (s != AF_OK)
    goto fail;
  s = af_app_start(afd->app);
  if (s != AF_OK) {
    af_error_set(err, s, "cannot start the app: %s", af_status_str(s));
    af_server_begin_shutdown(afd->srv);
    af_app_shutdown(afd->app);
    goto fail;
  }
  char host[AF_CONFIG_STR_MAX];
  listen_host(afd->cfg.listen, host, sizeof host);
  af_log(AF_LOG_INFO, "afd listening on %s:%d", host, afd->port);
  if (port)
    *port = afd->port;
  *out = afd;
  return AF_OK;

fail:
  if (afd->srv)
    af_server_shutdown(afd->srv);
  af_app_destroy(afd->app);
  af_server_destroy(afd->srv);
  close(afd->pipe_fd[0]);
  close(afd->pipe_fd[1]);
  af_free(afd);
  return s;
}

af_server_t *af_afd_server(af_afd_t *afd) { return afd ? afd->srv : NULL; }

af_engine_t *af_afd_engine(af_afd_t *afd)
{
  return afd ? af_app_engine(afd->app) : NULL;
}

void af_afd_request_stop(af_afd_t *afd)
{
  if (!afd)
    return;
  atomic_fetch_add(&afd->stop_requests, 1);
  char c = 1;
  ssize_t w = write(afd->pipe_fd[1], &c, 1);
  (void)w;
}

int af_afd_wait(af_afd_t *afd)
{
  if (!afd)
    return 0;
  while (atomic_load(&afd->stop_requests) == 0) {
    char c;
    ssize_t r = read(afd->pipe_fd[0], &c, 1);
    if (r < 0 && errno != EINTR)
      break;
  }
  return atomic_load(&afd->stop_requests);
}

void af_afd_stop(af_afd_t *afd)
{
  if (!afd)
    return;
  af_log(AF_LOG_INFO, "afd shutting down");
  af_server_begin_shutdown(afd->srv);
  af_app_shutdown(afd->app);
  af_server_shutdown(afd->srv);
  af_app_destroy(afd->app);
  af_server_destroy(afd->srv);
  close(afd->pipe_fd[0]);
  close(afd->pipe_fd[1]);
  af_free(afd);
  af_log(AF_LOG_INFO, "afd stopped");
}
