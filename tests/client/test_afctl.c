/*
 * test_afctl.c - afctl end to end: every command run as a process against
 * a real afd started in-process on 127.0.0.1:0; exit codes and output
 * checked. The recovery commands run last (RecoveryService was the last
 * service to land).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <signal.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>
#include <time.h>

#include <cmocka.h>

#include "af_testclient.h"

#ifndef AFCTL_PATH
#error "AFCTL_PATH must name the afctl binary"
#endif

typedef struct {
  af_test_server_t *ts;
  int port;
  char out[1 << 16];
} fx_t;

static fx_t *g_fx;

/* Runs "afctl --addr 127.0.0.1:PORT <args>" (stdout and stderr), keeps the
 * output in fx->out and returns the exit code. */
static int afctl(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int afctl(const char *fmt, ...)
{
  fx_t *f = g_fx;
  char args[2048], cmd[4096];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(args, sizeof args, fmt, ap);
  va_end(ap);
  snprintf(cmd, sizeof cmd, "%s --addr 127.0.0.1:%d %s 2>&1", AFCTL_PATH,
           f->port, args);
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  size_t n = fread(f->out, 1, sizeof f->out - 1, p);
  f->out[n] = '\0';
  int st = pclose(p);
  assert_true(WIFEXITED(st));
  return WEXITSTATUS(st);
}

#define OUT_HAS(s)                                                             \
  do {                                                                         \
    if (strstr(g_fx->out, (s)) == NULL)                                        \
      fail_msg("output lacks \"%s\":\n%s", (s), g_fx->out);                    \
  } while (0)

#define OK(...)                                                                \
  do {                                                                         \
    int rc_ = afctl(__VA_ARGS__);                                              \
    if (rc_ != 0)                                                              \
      fail_msg("exit %d:\n%s", rc_, g_fx->out);                                \
  } while (0)

static int setup(void **state)
{
  fx_t *f = calloc(1, sizeof *f);
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  cfg.health_interval_ms = 100;
  cfg.flush_interval_ms = 20;
  f->ts = af_ts_start(&cfg);
  f->port = af_ts_port(f->ts);
  g_fx = f;
  *state = f;
  return 0;
}

static int teardown(void **state)
{
  fx_t *f = *state;
  af_ts_stop(f->ts);
  free(f);
  g_fx = NULL;
  return 0;
}

static void help_and_usage_errors(void **state)
{
  (void)state;
  OK("--help");
  OUT_HAS("Commands:");
  OUT_HAS("Exit codes");
  OK("chaos --help");
  OUT_HAS("afctl chaos latency TARGET --delay");
  OK("breaker get --help");
  OUT_HAS("usage: afctl breaker get NAME");
  OK("health --help");
  OUT_HAS("afctl health history");
  assert_int_equal(afctl("%s", ""), 2);
  assert_int_equal(afctl("bogus"), 2);
  OUT_HAS("unknown command 'bogus'");
  assert_int_equal(afctl("breaker bogus"), 2);
  assert_int_equal(afctl("chaos latency pay"), 2);
  OUT_HAS("--delay is required");
  assert_int_equal(afctl("breaker list --nope 1"), 2);
  OUT_HAS("unknown option --nope");
  assert_int_equal(afctl("usage query acme --group-by weekly"), 2);
  OUT_HAS("one of: hour day operation tier");
}

static void unreachable_server_exits_24_and_af_addr_is_used(void **state)
{
  fx_t *f = *state;
  char cmd[512];
  snprintf(cmd, sizeof cmd, "%s --timeout 2000 --addr 127.0.0.1:1 health 2>&1",
           AFCTL_PATH);
  FILE *p = popen(cmd, "r");
  size_t n = fread(f->out, 1, sizeof f->out - 1, p);
  f->out[n] = '\0';
  int st = pclose(p);
  assert_int_equal(WEXITSTATUS(st), 10 + 14);
  OUT_HAS("UNAVAILABLE");
  snprintf(cmd, sizeof cmd, "AF_ADDR=127.0.0.1:%d %s health 2>&1", f->port,
           AFCTL_PATH);
  p = popen(cmd, "r");
  n = fread(f->out, 1, sizeof f->out - 1, p);
  f->out[n] = '\0';
  st = pclose(p);
  assert_int_equal(WEXITSTATUS(st), 0);
  OUT_HAS("status    HEALTHY");
}

static void health_commands(void **state)
{
  (void)state;
  OK("health");
  OUT_HAS("status    HEALTHY");
  OUT_HAS("score     1.00");
  OK("--json health");
  OUT_HAS("{\"report\":{\"status\":\"HEALTH_STATUS_HEALTHY\"");
  OK("health watch --count 1");
  OUT_HAS("seq=1 HEALTHY score=1.00");
  OK("health watch --count 1 --json");
  OUT_HAS("\"sequence\":\"1\"");
  OK("health history --window 5m --limit 2");
  OUT_HAS("TIME ");
  OUT_HAS("snapshots)");
  OK("health metrics");
  OUT_HAS("snapshots_collected:");
  OK("metrics");
  OUT_HAS("[health]");
  OUT_HAS("[chaos]");
  OUT_HAS("[metering]");
  OK("--json metrics");
  OUT_HAS("{\"health\":{");
  OUT_HAS(",\"metering\":{");
}

/* Reads fd into buf until it holds needle or ms pass. */
static bool read_until(int fd, char *buf, size_t cap, size_t *len,
                       const char *needle, int ms)
{
  int64_t end = af_tc_now_ms() + ms;
  while (strstr(buf, needle) == NULL) {
    int64_t left = end - af_tc_now_ms();
    if (left <= 0) {
      return false;
    }
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, (int)left) <= 0) {
      continue;
    }
    ssize_t n = read(fd, buf + *len, cap - 1 - *len);
    if (n <= 0) {
      return strstr(buf, needle) != NULL;
    }
    *len += (size_t)n;
    buf[*len] = '\0';
  }
  return true;
}

static void health_watch_prints_changes_live_until_interrupted(void **state)
{
  fx_t *f = *state;
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  char addr[64];
  snprintf(addr, sizeof addr, "127.0.0.1:%d", f->port);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(pfd[1], 1);
    dup2(pfd[1], 2);
    close(pfd[0]);
    close(pfd[1]);
    execl(AFCTL_PATH, "afctl", "--addr", addr, "health", "watch", (char *)NULL);
    _exit(127);
  }
  close(pfd[1]);
  static char buf[1 << 16];
  size_t len = 0;
  buf[0] = '\0';
  bool first = read_until(pfd[0], buf, sizeof buf, &len, "seq=1 HEALTHY", 5000);
  if (first) {
    OK("breaker register w1 --fail-max 1");
    OK("breaker report w1 --failure");
  }
  bool change =
      first && read_until(pfd[0], buf, sizeof buf, &len, "CRITICAL", 5000);
  kill(pid, SIGINT);
  int st = 0;
  waitpid(pid, &st, 0);
  close(pfd[0]);
  if (!first || !change) {
    fail_msg("health watch printed:\n%s", buf);
  }
  assert_non_null(strstr(buf, "(was HEALTHY)"));
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

static void breaker_commands(void **state)
{
  (void)state;
  OK("breaker register payments --fail-max 2 --reset-timeout 30s "
     "--description 'card payments' --exclude NotFound");
  OUT_HAS("created: true");
  OUT_HAS("fail_max: 2");
  OUT_HAS("reset_timeout: 30s");
  OUT_HAS("excluded_errors: NotFound");
  OK("breaker get payments");
  OUT_HAS("state: CLOSED");
  OK("breaker report payments --failure --error-type timeout --count 2");
  OUT_HAS("received: 2");
  OUT_HAS("breakers_opened: 1");
  OK("breaker list");
  OUT_HAS("payments");
  OUT_HAS("OPEN");
  OUT_HAS("(1 breakers)");
  OK("breaker list --json --state open");
  OUT_HAS("{\"breakers\":[{\"name\":\"payments\"");
  OUT_HAS("\"total\":1}");
  OK("breaker list --state closed");
  OUT_HAS("(0 breakers)");
  OK("health");
  OUT_HAS("status    CRITICAL");
  OK("breaker report payments --state half_open --instance i-1");
  OUT_HAS("previous_state: OPEN");
  OUT_HAS("instance_ids: i-1");
  OK("breaker report payments --success");
  OUT_HAS("state: CLOSED");
  OUT_HAS("transitioned: true");
  OK("breaker report payments --failure --error-type NotFound");
  OUT_HAS("excluded: true");
  OK("breaker watch payments --count 1");
  OUT_HAS("SNAPSHOT payments CLOSED");
  OK("breaker reset payments");
  OUT_HAS("previous_state: CLOSED");
  OK("breaker reset --all");
  OUT_HAS("reset_count: 1");
  assert_int_equal(afctl("breaker get nope"), 10 + 5);
  OUT_HAS("afctl: NOT_FOUND:");
  assert_int_equal(afctl("breaker report nope --success"), 10 + 5);
  OK("breaker report auto --success --auto-register");
  OUT_HAS("registered: true");
  OK("breaker unregister auto");
  assert_int_equal(afctl("breaker get auto"), 10 + 5);
}

static void chaos_commands(void **state)
{
  (void)state;
  OK("chaos latency pay --delay 100ms --duration 30s --reason drill");
  OUT_HAS("latency_pay_100ms");
  OUT_HAS("delay=100ms");
  OK("chaos errors pay --rate 0.5 --name e1 --error-type Timeout");
  OUT_HAS("e1 ");
  OUT_HAS("rate=0.5");
  OK("chaos exhaust pay --resource memory --level 0.8 --blast pay,db");
  OUT_HAS("RESOURCE_EXHAUSTION");
  OUT_HAS("MEMORY=0.8");
  OK("breaker register gate");
  OK("chaos open gate --duration 10s");
  OUT_HAS("CIRCUIT_BREAKER");
  OK("breaker get gate");
  OUT_HAS("state: FORCED_OPEN");
  OK("chaos list");
  OUT_HAS("(4 active)");
  OK("--json chaos list");
  OUT_HAS("\"name\":\"e1\"");
  OK("chaos check pay");
  OUT_HAS("inject_latency: true");
  OUT_HAS("delay: 0.100s");
  OK("chaos watch --count 1");
  OUT_HAS("SNAPSHOT - active=4");
  OK("chaos deactivate e1 --reason done");
  OUT_HAS("e1 ");
  assert_int_equal(afctl("chaos deactivate e1"), 10 + 5);
  OK("chaos metrics");
  OUT_HAS("total_scenarios: 4");
  OK("chaos stop --reason incident");
  OUT_HAS("deactivated: 3");
  assert_int_equal(afctl("chaos latency pay --delay 1s"), 10 + 9);
  OUT_HAS("emergency stop is active");
  OK("chaos list");
  OUT_HAS("EMERGENCY STOP is latched");
  OK("chaos reset");
  OUT_HAS("emergency_stop_released: true");
  OK("breaker get gate");
  OUT_HAS("state: CLOSED");
  assert_int_equal(afctl("chaos errors pay --rate 1.5"), 10 + 3);
}

static void usage_commands(void **state)
{
  (void)state;
  OK("usage record acme --operation agent_message --units 3 --event-id k1 "
     "--tier enterprise --tokens 100");
  OUT_HAS("accepted: true");
  OUT_HAS("duplicate: false");
  OK("usage record acme --operation agent_message --units 3 --event-id k1");
  OUT_HAS("duplicate: true");
  OK("usage record acme --operation audit_write --count 3 --event-id s");
  OUT_HAS("accepted: 3");
  OK("usage record acme --operation audit_write --count 3 --event-id s");
  OUT_HAS("duplicates: 3");
  OK("usage query acme --group-by operation");
  OUT_HAS("AGENT_MESSAGE");
  OUT_HAS("AUDIT_WRITE");
  OK("--json usage query acme");
  OUT_HAS("\"total\":{\"count\":\"4\",\"units\":\"6\",\"tokens\":\"100\"");
  OK("usage query acme --since 1h --tier enterprise");
  OUT_HAS("TOTAL                                 1            3");
  OK("usage metrics");
  OUT_HAS("duplicates: 4");
  assert_int_equal(afctl("usage record '' --operation audit_write"), 2);
  assert_int_equal(afctl("usage record acme --operation audit_write "
                         "--compliance 2"),
                   10 + 3);
}

static int recovery_state_is(const char *svc, const char *state)
{
  for (int i = 0; i < 200; i++) {
    if (afctl("recovery status %s", svc) == 0 && strstr(g_fx->out, state)) {
      return 1;
    }
    struct timespec ts = {0, 20 * 1000000L};
    nanosleep(&ts, NULL);
  }
  return 0;
}

static void recovery_commands(void **state)
{
  (void)state;
  OK("recovery policy svc1");
  OUT_HAS("is_default: true");
  OK("recovery policy svc1 --max-retries 3 --initial-delay 1s "
     "--max-delay 10s --jitter full --strategy linear_backoff");
  OUT_HAS("max_retry_attempts: 3");
  OUT_HAS("strategy: LINEAR_BACKOFF");
  OUT_HAS("jitter: FULL");
  assert_int_equal(afctl("recovery policy svc1 --max-retries 0"), 10 + 3);
  OUT_HAS("max_retry_attempts must be >= 1");
  OK("breaker register man --fail-max 1");
  OK("breaker report man --failure");
  OK("recovery schedule man --strategy manual");
  OUT_HAS("state: AWAITING_MANUAL");
  assert_int_equal(afctl("recovery execute man"), 10 + 9);
  OUT_HAS("approve it with ApproveRecovery");
  OK("recovery approve man --actor oncall --reason fixed");
  assert_true(recovery_state_is("man", "SUCCEEDED"));
  OUT_HAS("man ");
  OK("breaker get man");
  OUT_HAS("state: CLOSED");
  OK("recovery schedule c1 --initial-delay 60s --priority 3");
  OUT_HAS("state: SCHEDULED");
  OK("recovery cancel c1 --reason 'not needed'");
  OUT_HAS("cancelled: true");
  assert_int_equal(afctl("recovery execute nobody"), 10 + 5);
  OK("recovery schedule ex1 --initial-delay 60s");
  OK("recovery execute ex1");
  OUT_HAS("success: true");
  OUT_HAS("state: SUCCEEDED");
  OK("recovery schedule imm --strategy immediate");
  OK("recovery status");
  OUT_HAS("SERVICE");
  OUT_HAS("c1 ");
  OK("--json recovery status c1");
  OUT_HAS("\"serviceName\":\"c1\"");
  OK("recovery watch c1 --count 1");
  OUT_HAS("kind: SNAPSHOT");
}

/* afd with TLS and bearer tokens: afctl talks to it with --tls-ca and
 * --token (or AF_TOKEN), and scripts can tell the refusals apart by exit
 * code (10 + UNAUTHENTICATED 16, 10 + PERMISSION_DENIED 7). Certificates
 * are made here with openssl, never committed. */
static char g_sec_dir[64];

static int setup_secure(void **state)
{
  snprintf(g_sec_dir, sizeof g_sec_dir, "/tmp/afctl-sec-XXXXXX");
  if (mkdtemp(g_sec_dir) == NULL)
    return -1;
  if (af_test_make_certs(g_sec_dir) != 0)
    return -1;
  char cmd[256];
  snprintf(cmd, sizeof cmd,
           "printf 'viewer read viewer-token-0123456789\\n"
           "ops admin admin-token-0123456789\\n' > %s/tokens",
           g_sec_dir);
  if (system(cmd) != 0)
    return -1;
  fx_t *f = calloc(1, sizeof *f);
  af_config_t cfg;
  af_ts_config_defaults(&cfg);
  snprintf(cfg.tls_cert, sizeof cfg.tls_cert, "%s/srv.pem", g_sec_dir);
  snprintf(cfg.tls_key, sizeof cfg.tls_key, "%s/srv.key", g_sec_dir);
  snprintf(cfg.tokens_file, sizeof cfg.tokens_file, "%s/tokens", g_sec_dir);
  f->ts = af_ts_start(&cfg);
  f->port = af_ts_port(f->ts);
  g_fx = f;
  *state = f;
  return 0;
}

static int teardown_secure(void **state)
{
  teardown(state);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", g_sec_dir);
  return system(cmd) == 0 ? 0 : -1;
}

static void tls_and_tokens_from_flags_and_environment(void **state)
{
  (void)state;
  const char *d = g_sec_dir;
  OK("--tls-ca %s/ca.pem --token viewer-token-0123456789 health", d);
  OUT_HAS("HEALTHY");
  /* No token: UNAUTHENTICATED (16) -> exit 26. */
  assert_int_equal(afctl("--tls-ca %s/ca.pem health", d), 26);
  OUT_HAS("missing bearer token");
  /* Too low a role: PERMISSION_DENIED (7) -> exit 17. */
  assert_int_equal(afctl("--tls-ca %s/ca.pem --token viewer-token-0123456789 "
                         "chaos latency pay --delay 10ms",
                         d),
                   17);
  OUT_HAS("needs admin");
  /* AF_TOKEN instead of --token, admin may. */
  assert_int_equal(setenv("AF_TOKEN", "admin-token-0123456789", 1), 0);
  OK("--tls-ca %s/ca.pem chaos latency pay --delay 10ms", d);
  OK("--tls-ca %s/ca.pem chaos list", d);
  OUT_HAS("pay");
  unsetenv("AF_TOKEN");
  /* Plaintext against a TLS server: UNAVAILABLE (14) -> exit 24. */
  assert_int_equal(afctl("--token viewer-token-0123456789 health"), 24);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(help_and_usage_errors, setup, teardown),
      cmocka_unit_test_setup_teardown(
          unreachable_server_exits_24_and_af_addr_is_used, setup, teardown),
      cmocka_unit_test_setup_teardown(health_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(
          health_watch_prints_changes_live_until_interrupted, setup, teardown),
      cmocka_unit_test_setup_teardown(breaker_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(chaos_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(usage_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(recovery_commands, setup, teardown),
      cmocka_unit_test_setup_teardown(tls_and_tokens_from_flags_and_environment,
                                      setup_secure, teardown_secure),
  };
  return cmocka_run_group_tests_name("afctl", tests, NULL, NULL);
}
