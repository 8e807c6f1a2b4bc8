/*
 * probe.c - TCP, HTTP and grpc.health.v1 probes, and the prober pool.
 *
 * Probes are plain blocking code bounded by a deadline: sockets are
 * non-blocking and every connect / write / read waits in poll() for at most
 * the time left; the gRPC probe uses the call deadline. Name resolution
 * (getaddrinfo) is the one step not bounded by the timeout; targets are
 * usually addresses or names in /etc/hosts.
 *
 * The pool: a fixed set of threads taking jobs from a bounded FIFO under
 * one mutex. A job is copied in; done runs on the pool thread after the
 * probe, with no lock held. Shutdown drops what is queued (a restart
 * forgets in-memory recovery tasks anyway) and joins the threads once the
 * running probes have reported.
 */
#include "probe.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/slice.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "af/alloc.h"
#include "grpc/health/v1/health.pb-c.h"

#define HOST_MAX 256
#define PATH_MAX_LEN 256

/* ------------------------------------------------------------------ */
/* Targets                                                            */

typedef struct {
  char host[HOST_MAX];
  char port[8];
  char path[PATH_MAX_LEN];
} endpoint_t;

/* "host:port" or "[v6]:port" into ep. */
static bool parse_hostport(const char *s, endpoint_t *ep)
{
  const char *colon;
  size_t hl;
  const char *h = s;
  if (s[0] == '[') {
    const char *close = strchr(s, ']');
    if (close == NULL || close[1] != ':')
      return false;
    h = s + 1;
    hl = (size_t)(close - h);
    colon = close + 1;
  } else {
    colon = strrchr(s, ':');
    if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
      return false;
    hl = (size_t)(colon - s);
  }
  if (hl == 0 || hl >= sizeof ep->host)
    return false;
  const char *p = colon + 1;
  size_t pl = strlen(p);
  if (pl == 0 || pl > 5 || strspn(p, "0123456789") != pl)
    return false;
  long port = strtol(p, NULL, 10);
  if (port < 1 || port > 65535)
    return false;
  memcpy(ep->host, h, hl);
  ep->host[hl] = '\0';
  memcpy(ep->port, p, pl + 1);
  ep->path[0] = '\0';
  return true;
}

/* "http://host[:port][/path]" into ep (port 80, path "/" by default). */
static bool parse_http_url(const char *url, endpoint_t *ep)
{
  static const char scheme[] = "http://";
  if (strncmp(url, scheme, sizeof scheme - 1) != 0)
    return false;
  const char *auth = url + sizeof scheme - 1;
  size_t al = strcspn(auth, "/?#");
  if (al == 0 || al >= HOST_MAX + 8)
    return false;
  char hp[HOST_MAX + 8];
  memcpy(hp, auth, al);
  hp[al] = '\0';
  bool has_port =
      hp[0] == '[' ? strstr(hp, "]:") != NULL : strchr(hp, ':') != NULL;
  if (has_port) {
    if (!parse_hostport(hp, ep))
      return false;
  } else {
    const char *h = hp;
    size_t hl = al;
    if (hp[0] == '[') {
      if (hp[al - 1] != ']' || al < 3)
        return false;
      h = hp + 1;
      hl = al - 2;
    }
    if (hl >= sizeof ep->host)
      return false;
    memcpy(ep->host, h, hl);
    ep->host[hl] = '\0';
    memcpy(ep->port, "80", 3);
  }
  const char *path = auth + al;
  if (path[0] == '\0')
    path = "/";
  if (strlen(path) >= sizeof ep->path || path[0] != '/' ||
      strpbrk(path, " \r\n") != NULL)
    return false;
  memcpy(ep->path, path, strlen(path) + 1);
  return true;
}

af_status_t af_probe_target_check(af_probe_kind_t kind, const char *target,
                                  af_error_t *err)
{
  endpoint_t ep;
  if (target == NULL)
    target = "";
  switch (kind) {
  case AF_PROBE_TCP:
  case AF_PROBE_GRPC_HEALTH:
    if (!parse_hostport(target, &ep))
      return af_error_set(err, AF_EINVAL,
                          "probe_target must be host:port for probe %s",
                          af_probe_kind_name(kind));
    return AF_OK;
  case AF_PROBE_HTTP:
    if (!parse_http_url(target, &ep))
      return af_error_set(err, AF_EINVAL,
                          "probe_target must be an http:// URL for probe HTTP");
    return AF_OK;
  default:
    return AF_OK;
  }
}

/* ------------------------------------------------------------------ */
/* Sockets with a deadline                                            */

static int64_t mono_ms(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int left_ms(int64_t deadline)
{
  int64_t l = deadline - mono_ms();
  if (l <= 0)
    return 0;
  return l > 60000 ? 60000 : (int)l;
}

/* Waits for events on fd until the deadline: 1 ready, 0 timeout, -1 error
 * (errno). */
static int wait_fd(int fd, short events, int64_t deadline)
{
  for (;;) {
    struct pollfd p = {.fd = fd, .events = events, .revents = 0};
    int ms = left_ms(deadline);
    if (ms == 0)
      return 0;
    int r = poll(&p, 1, ms);
    if (r > 0)
      return 1;
    if (r == 0)
      continue; /* the loop re-checks the deadline */
    if (errno != EINTR)
      return -1;
  }
}

/* Connects to ep before the deadline. Returns the connected non-blocking
 * fd, or -1 with msg set. */
static int connect_ep(const endpoint_t *ep, int64_t deadline, char *msg,
                      size_t cap)
{
  struct addrinfo hints;
  memset(&hints, 0, sizeof hints);
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  struct addrinfo *res = NULL;
  int gai = getaddrinfo(ep->host, ep->port, &hints, &res);
  if (gai != 0) {
    snprintf(msg, cap, "cannot resolve %s: %s", ep->host, gai_strerror(gai));
    return -1;
  }
  int fd = -1;
  snprintf(msg, cap, "connect to %s:%s: no address", ep->host, ep->port);
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                ai->ai_protocol);
    if (fd < 0) {
      snprintf(msg, cap, "socket: %s", strerror(errno));
      continue;
    }
    int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
    int e = rc == 0 ? 0 : errno;
    if (e == EINPROGRESS) {
      int w = wait_fd(fd, POLLOUT, deadline);
      if (w == 0) {
        e = ETIMEDOUT;
      } else if (w < 0) {
        e = errno;
      } else {
        socklen_t len = sizeof e;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &len) != 0)
          e = errno;
      }
    }
    if (e == 0)
      break;
    if (e == ETIMEDOUT)
      snprintf(msg, cap, "connect to %s:%s: timed out", ep->host, ep->port);
    else
      snprintf(msg, cap, "connect to %s:%s: %s", ep->host, ep->port,
               strerror(e));
    close(fd);
    fd = -1;
    if (left_ms(deadline) == 0)
      break;
  }
  freeaddrinfo(res);
  return fd;
}

bool af_probe_tcp(const char *target, uint64_t timeout_ms, char *msg,
                  size_t cap)
{
  endpoint_t ep;
  if (!parse_hostport(target, &ep)) {
    snprintf(msg, cap, "bad target %s", target);
    return false;
  }
  int fd = connect_ep(&ep, mono_ms() + (int64_t)timeout_ms, msg, cap);
  if (fd < 0)
    return false;
  close(fd);
  snprintf(msg, cap, "connected to %s", target);
  return true;
}

bool af_probe_http(const char *url, uint64_t timeout_ms, char *msg, size_t cap)
{
  endpoint_t ep;
  if (!parse_http_url(url, &ep)) {
    snprintf(msg, cap, "bad URL %s", url);
    return false;
  }
  int64_t deadline = mono_ms() + (int64_t)timeout_ms;
  int fd = connect_ep(&ep, deadline, msg, cap);
  if (fd < 0)
    return false;
  char req[PATH_MAX_LEN + HOST_MAX + 96];
  bool v6 = strchr(ep.host, ':') != NULL;
  int n = snprintf(req, sizeof req,
                   "GET %s HTTP/1.1\r\nHost: %s%s%s:%s\r\n"
                   "User-Agent: afd-probe\r\nConnection: close\r\n\r\n",
                   ep.path, v6 ? "[" : "", ep.host, v6 ? "]" : "", ep.port);
  size_t off = 0, len = (size_t)n;
  bool ok = false;
  while (off < len) {
    ssize_t w = send(fd, req + off, len - off, MSG_NOSIGNAL);
    if (w > 0) {
      off += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) &&
        wait_fd(fd, POLLOUT, deadline) > 0)
      continue;
    snprintf(msg, cap, "HTTP request to %s failed: %s", url,
             w < 0 ? strerror(errno) : "timed out");
    goto out;
  }
  /* Read until the status line is complete. */
  char buf[128];
  size_t got = 0;
  while (got < sizeof buf - 1 && memchr(buf, '\n', got) == NULL) {
    ssize_t r = recv(fd, buf + got, sizeof buf - 1 - got, 0);
    if (r > 0) {
      got += (size_t)r;
      continue;
    }
    if (r == 0)
      break;
    if (errno == EINTR)
      continue;
    if ((errno == EAGAIN || errno == EWOULDBLOCK)) {
      int wr = wait_fd(fd, POLLIN, deadline);
      if (wr > 0)
        continue;
      snprintf(msg, cap, "HTTP %s: %s", url,
               wr == 0 ? "no response before the timeout" : strerror(errno));
      goto out;
    }
    snprintf(msg, cap, "HTTP %s: %s", url, strerror(errno));
    goto out;
  }
  buf[got] = '\0';
  int code = 0;
  if (sscanf(buf, "HTTP/%*u.%*u %3d", &code) != 1 || code < 100 || code > 999) {
    snprintf(msg, cap, "HTTP %s: not an HTTP response", url);
    goto out;
  }
  ok = code >= 200 && code <= 299;
  snprintf(msg, cap, "HTTP %d from %s", code, url);
out:
  close(fd);
  return ok;
}

/* ------------------------------------------------------------------ */
/* grpc.health.v1                                                     */

static const char *serving_name(int s)
{
  switch (s) {
  case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING:
    return "SERVING";
  case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING:
    return "NOT_SERVING";
  case GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
    return "SERVICE_UNKNOWN";
  default:
    return "UNKNOWN";
  }
}

bool af_probe_grpc_health(const char *target, const char *service,
                          uint64_t timeout_ms, char *msg, size_t cap)
{
  endpoint_t ep;
  if (!parse_hostport(target, &ep)) {
    snprintf(msg, cap, "bad target %s", target);
    return false;
  }
  Grpc__Health__V1__HealthCheckRequest req =
      GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(service != NULL ? service : "");
  size_t n = grpc__health__v1__health_check_request__get_packed_size(&req);
  grpc_slice s = grpc_slice_malloc(n);
  grpc__health__v1__health_check_request__pack(&req, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *send_bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);

  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  grpc_channel *ch = grpc_channel_create(target, cr, NULL);
  grpc_channel_credentials_release(cr);
  grpc_completion_queue *cq = grpc_completion_queue_create_for_next(NULL);
  gpr_timespec deadline =
      gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                   gpr_time_from_millis((int64_t)timeout_ms, GPR_TIMESPAN));
  grpc_slice method =
      grpc_slice_from_static_string("/grpc.health.v1.Health/Check");
  grpc_call *call = grpc_channel_create_call(ch, NULL, GRPC_PROPAGATE_DEFAULTS,
                                             cq, method, NULL, deadline, NULL);
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_byte_buffer *recv_bb = NULL;
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  grpc_op ops[6];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send_bb;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv_bb;
  ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[5].data.recv_status_on_client.trailing_metadata = &trail_md;
  ops[5].data.recv_status_on_client.status = &code;
  ops[5].data.recv_status_on_client.status_details = &details;
  bool ok = false;
  int tag = 0;
  grpc_call_error ce = call != NULL
                           ? grpc_call_start_batch(call, ops, 6, &tag, NULL)
                           : GRPC_CALL_ERROR;
  if (ce != GRPC_CALL_OK) {
    snprintf(msg, cap, "grpc health %s: cannot start the call", target);
  } else {
    /* The call deadline bounds the batch; a margin covers scheduling. */
    grpc_event ev = grpc_completion_queue_next(
        cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
    (void)ev;
    if (code != GRPC_STATUS_OK) {
      char *d = grpc_slice_to_c_string(details);
      snprintf(msg, cap, "grpc health %s: status %d %s", target, (int)code, d);
      gpr_free(d);
    } else if (recv_bb == NULL) {
      snprintf(msg, cap, "grpc health %s: no response", target);
    } else {
      grpc_byte_buffer_reader rd;
      Grpc__Health__V1__HealthCheckResponse *resp = NULL;
      if (grpc_byte_buffer_reader_init(&rd, recv_bb)) {
        grpc_slice all = grpc_byte_buffer_reader_readall(&rd);
        resp = grpc__health__v1__health_check_response__unpack(
            NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
        grpc_slice_unref(all);
        grpc_byte_buffer_reader_destroy(&rd);
      }
      if (resp == NULL) {
        snprintf(msg, cap, "grpc health %s: bad response", target);
      } else {
        ok = resp->status ==
             GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
        snprintf(msg, cap, "grpc health %s: %s", target,
                 serving_name((int)resp->status));
        grpc__health__v1__health_check_response__free_unpacked(resp, NULL);
      }
    }
  }
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  if (recv_bb != NULL)
    grpc_byte_buffer_destroy(recv_bb);
  grpc_byte_buffer_destroy(send_bb);
  if (call != NULL)
    grpc_call_unref(call);
  grpc_channel_destroy(ch);
  grpc_completion_queue_shutdown(cq);
  while (
      grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
          .type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
  return ok;
}

bool af_probe_run(const af_recovery_policy_t *policy, char *msg, size_t cap)
{
  uint64_t t = policy->probe_timeout_ms > 0 ? policy->probe_timeout_ms : 1;
  switch (policy->probe) {
  case AF_PROBE_TCP:
    return af_probe_tcp(policy->probe_target, t, msg, cap);
  case AF_PROBE_HTTP:
    return af_probe_http(policy->probe_target, t, msg, cap);
  case AF_PROBE_GRPC_HEALTH:
    return af_probe_grpc_health(policy->probe_target, policy->probe_service, t,
                                msg, cap);
  default:
    snprintf(msg, cap, "no probe");
    return true;
  }
}

/* ------------------------------------------------------------------ */
/* The pool                                                           */

struct af_prober {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  af_probe_job_t *ring; /* max_queue slots */
  size_t cap, head, count;
  bool stopping, joined;
  pthread_t *threads;
  int nthreads;
  af_probe_done_fn done;
  void *ctx;
};

static void *worker(void *arg)
{
  af_prober_t *p = arg;
  for (;;) {
    pthread_mutex_lock(&p->mu);
    while (!p->stopping && p->count == 0)
      pthread_cond_wait(&p->cv, &p->mu);
    if (p->stopping) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    af_probe_job_t job = p->ring[p->head];
    p->head = (p->head + 1) % p->cap;
    p->count--;
    pthread_mutex_unlock(&p->mu);

    char msg[256];
    int64_t t0 = mono_ms();
    bool healthy = af_probe_run(&job.policy, msg, sizeof msg);
    int64_t el = mono_ms() - t0;
    p->done(&job, healthy, msg, el > 0 ? (uint64_t)el : 0, p->ctx);
  }
}

af_status_t af_prober_create(af_prober_t **out, int threads, size_t max_queue,
                             af_probe_done_fn done, void *ctx)
{
  if (out == NULL || done == NULL || threads < 1 || threads > 64 ||
      max_queue < 1)
    return AF_EINVAL;
  af_prober_t *p = af_calloc(1, sizeof *p);
  if (p == NULL)
    return AF_ENOMEM;
  p->ring = af_calloc(max_queue, sizeof *p->ring);
  p->threads = af_calloc((size_t)threads, sizeof *p->threads);
  if (p->ring == NULL || p->threads == NULL) {
    af_free(p->ring);
    af_free(p->threads);
    af_free(p);
    return AF_ENOMEM;
  }
  p->cap = max_queue;
  p->done = done;
  p->ctx = ctx;
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv, NULL);
  grpc_init();
  for (int i = 0; i < threads; i++) {
    if (pthread_create(&p->threads[i], NULL, worker, p) != 0) {
      p->nthreads = i;
      af_prober_destroy(p);
      return AF_ENOMEM;
    }
  }
  p->nthreads = threads;
  *out = p;
  return AF_OK;
}

af_status_t af_prober_submit(af_prober_t *p, const af_probe_job_t *job)
{
  if (p == NULL || job == NULL)
    return AF_EINVAL;
  af_status_t st = AF_OK;
  pthread_mutex_lock(&p->mu);
  if (p->stopping) {
    st = AF_ESHUTDOWN;
  } else if (p->count == p->cap) {
    st = AF_EFULL;
  } else {
    p->ring[(p->head + p->count) % p->cap] = *job;
    p->count++;
    pthread_cond_signal(&p->cv);
  }
  pthread_mutex_unlock(&p->mu);
  return st;
}

void af_prober_shutdown(af_prober_t *p)
{
  if (p == NULL)
    return;
  pthread_mutex_lock(&p->mu);
  p->stopping = true;
  p->count = 0;
  bool join = !p->joined;
  p->joined = true;
  pthread_cond_broadcast(&p->cv);
  pthread_mutex_unlock(&p->mu);
  if (join)
    for (int i = 0; i < p->nthreads; i++)
      pthread_join(p->threads[i], NULL);
}

void af_prober_destroy(af_prober_t *p)
{
  if (p == NULL)
    return;
  af_prober_shutdown(p);
  pthread_cond_destroy(&p->cv);
  pthread_mutex_destroy(&p->mu);
  af_free(p->threads);
  af_free(p->ring);
  af_free(p);
  grpc_shutdown();
}
