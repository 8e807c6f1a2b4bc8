/*
 * afclient_example.c - a service outside the tree using libafclient: a
 * guarded call, a metering event, a synchronous RPC, clean shutdown.
 *
 *   cc afclient_example.c $(pkg-config --cflags --libs afclient) -o example
 *   ./example 127.0.0.1:50051
 */
#include <stdio.h>
#include <stdlib.h>

#include <af/client.h>

/* The dependency we protect; fails every third call. */
static int call_payment_provider(int i) { return i % 3 != 2; }

int main(int argc, char **argv)
{
  af_client_config_t cfg;
  af_client_config_init(&cfg);
  if (argc > 1) {
    cfg.addr = argv[1];
  }
  af_client_t *c = NULL;
  af_error_t err;
  if (af_client_create(&c, &cfg, &err) != AF_OK) {
    fprintf(stderr, "af_client_create: %s\n", err.message);
    return 1;
  }

  af_guard_t *g = NULL;
  if (af_guard_get(c, "payments", NULL, &g, &err) != AF_OK) {
    fprintf(stderr, "af_guard_get: %s\n", err.message);
    return 1;
  }
  int passed = 0, rejected = 0;
  for (int i = 0; i < 10; i++) {
    if (af_guard_allow(g) != AF_GUARD_PASS) {
      rejected++;
      continue;
    }
    passed++;
    if (call_payment_provider(i)) {
      af_guard_success(g);
    } else {
      af_guard_failure(g, "timeout");
    }
  }
  printf("guard payments: %d passed, %d rejected, state %s\n", passed, rejected,
         af_breaker_state_name(af_guard_state(g)));

  af_meter_event_t ev;
  af_meter_event_init(&ev, "acme", AF_OP_AGENT_MESSAGE);
  ev.units = 3;
  if (af_client_meter_enqueue(c, &ev, &err) == AF_OK) {
    printf("metering event %s queued\n", ev.event_id);
  }

  antifragility_v1_GetSystemHealthRequest req =
      antifragility_v1_GetSystemHealthRequest_init_zero;
  antifragility_v1_GetSystemHealthResponse *resp = calloc(1, sizeof *resp);
  af_call_status_t st;
  if (resp != NULL &&
      af_client_get_system_health(c, &req, resp, 2000, &st) == 0) {
    printf("server health score %.2f, %u breakers\n", resp->report.health_score,
           (unsigned)resp->report.total_breakers);
  } else {
    printf("GetSystemHealth: %s %s\n", af_call_code_name(st.code), st.message);
  }
  free(resp);

  size_t unsent = af_client_shutdown(c, 2000);
  printf("shutdown: %zu metering events unsent\n", unsent);
  af_client_destroy(c);
  return 0;
}
