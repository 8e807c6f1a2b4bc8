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
#include "auth.h"
#include "grpc_health.h"
#include "log.h"
#include "reflection.h"

struct af_afd {
  af_config_t cfg;
  af_server_t *srv;
  af_app_t *app;
  af_auth_t *auth; /* NULL: no tokens configured */
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

/* True for addresses only this machine can reach. */
static bool is_loopback(const char *listen)
{
  if (strncmp(listen, "unix:", 5) == 0)
    return true;
  char host[AF_CONFIG_STR_MAX];
  listen_host(listen, host, sizeof host);
  if (strncmp(host, "ipv4:", 5) == 0)
    memmove(host, host + 5, strlen(host + 5) + 1);
  if (strncmp(host, "ipv6:", 5) == 0)
    memmove(host, host + 5, strlen(host + 5) + 1);
  return strncmp(host, "127.", 4) == 0 || strcmp(host, "localhost") == 0 ||
         strcmp(host, "[::1]") == 0 || strcmp(host, "::1") == 0;
}

/* Reads a whole PEM file into a NUL-terminated owned string. */
static af_status_t read_pem(const char *flag, const char *path, char **out,
                            af_error_t *err)
{
  *out = NULL;
  if (!path[0])
    return AF_OK;
  FILE *f = fopen(path, "rb");
  if (!f)
    return af_error_set(err, AF_EIO, "%s: cannot read %s: %s", flag, path,
                        strerror(errno));
  size_t cap = 4096, len = 0;
  char *buf = af_malloc(cap);
  size_t n;
  while (buf && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (len + 1 == cap) {
      if (cap >= (1u << 20)) {
        af_free(buf);
        fclose(f);
        return af_error_set(err, AF_EINVAL, "%s: %s is larger than 1 MiB", flag,
                            path);
      }
      char *nb = af_realloc(buf, cap * 2);
      if (!nb) {
        af_free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  fclose(f);
  if (!buf)
    return af_error_set(err, AF_ENOMEM, "out of memory");
  buf[len] = '\0';
  if (!strstr(buf, "-----BEGIN ")) {
    af_free(buf);
    return af_error_set(err, AF_EINVAL, "%s: %s is not a PEM file", flag, path);
  }
  *out = buf;
  return AF_OK;
}

/* Tokens, TLS material and the loopback rule, before anything listens. */
static af_status_t security_setup(af_afd_t *afd, char **cert, char **key,
                                  char **ca, af_error_t *err)
{
  const af_config_t *cfg = &afd->cfg;
  *cert = *key = *ca = NULL;
  if (cfg->tokens_file[0]) {
    af_status_t s = af_auth_load(&afd->auth, cfg->tokens_file, err);
    if (s != AF_OK)
      return s;
  } else if (!is_loopback(cfg->listen) && !cfg->insecure_open) {
    return af_error_set(err, AF_EINVAL,
                        "refusing to listen on %s without --tokens-file: "
                        "anyone who can reach it could drive chaos and "
                        "recovery (use --insecure-open to allow)",
                        cfg->listen);
  }
  if (!cfg->tls_cert[0] != !cfg->tls_key[0])
    return af_error_set(err, AF_EINVAL, "--tls-cert and --tls-key go together");
  if (cfg->tls_client_ca[0] && !cfg->tls_cert[0])
    return af_error_set(err, AF_EINVAL,
                        "--tls-client-ca needs --tls-cert and --tls-key");
  af_status_t s = read_pem("--tls-cert", cfg->tls_cert, cert, err);
  if (s == AF_OK)
    s = read_pem("--tls-key", cfg->tls_key, key, err);
  if (s == AF_OK)
    s = read_pem("--tls-client-ca", cfg->tls_client_ca, ca, err);
  return s;
}

static void free_pem(char *pem)
{
  if (pem) {
    memset(pem, 0, strlen(pem)); /* private key material */
    af_free(pem);
  }
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

  char *cert = NULL, *key = NULL, *ca = NULL;
  af_status_t s = security_setup(afd, &cert, &key, &ca, err);
  af_server_options_t opt;
  af_server_options_init(&opt);
  opt.listen_addr = afd->cfg.listen;
  opt.threads = afd->cfg.threads;
  opt.max_watchers = afd->cfg.max_watchers;
  opt.max_watchers_per_conn = afd->cfg.max_watchers_per_conn;
  opt.max_message_bytes = afd->cfg.max_message_bytes;
  opt.heartbeat_ms = afd->cfg.heartbeat_ms;
  opt.hash = afd->cfg.hash;
  opt.shutdown_grace_ms = afd->cfg.shutdown_grace_ms;
  opt.tls_cert_pem = cert;
  opt.tls_key_pem = key;
  opt.tls_client_ca_pem = ca;
  if (s == AF_OK)
    s = af_server_create(&afd->srv, &opt, err);
  free_pem(cert);
  free_pem(key);
  free_pem(ca);
  if (s != AF_OK)
    goto fail;
  s = af_server_set_authorizer(afd->srv, af_auth_authorize, afd->auth);
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
  af_log(AF_LOG_INFO, "transport: %s",
         afd->cfg.tls_client_ca[0] ? "TLS, client certificates required (mTLS)"
         : afd->cfg.tls_cert[0]    ? "TLS"
                                   : "plaintext");
  if (afd->auth)
    af_log(AF_LOG_INFO, "authentication: %zu bearer token(s) from %s",
           af_auth_count(afd->auth), afd->cfg.tokens_file);
  else if (is_loopback(afd->cfg.listen))
    af_log(AF_LOG_WARN, "authentication: none (no --tokens-file); listening "
                        "on loopback only, every local caller is admin");
  else
    af_log(AF_LOG_WARN,
           "authentication: none, and --insecure-open: anyone "
           "who reaches %s can drive chaos and recovery",
           afd->cfg.listen);
  if (port)
    *port = afd->port;
  *out = afd;
  return AF_OK;

fail:
  if (afd->srv)
    af_server_shutdown(afd->srv);
  af_app_destroy(afd->app);
  af_server_destroy(afd->srv);
  af_auth_destroy(afd->auth);
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
  af_auth_destroy(afd->auth);
  close(afd->pipe_fd[0]);
  close(afd->pipe_fd[1]);
  af_free(afd);
  af_log(AF_LOG_INFO, "afd stopped");
}
