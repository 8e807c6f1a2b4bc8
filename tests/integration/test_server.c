/*
 * test_server.c - framework-level behaviour of a real in-process afd.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "af_testclient.h"
#include "grpc/health/v1/health.pb-c.h"

#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH "/grpc.health.v1.Health/Watch"
#define ST(x) GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

static void health_check_empty_name_is_serving(void **state)
{
  (void)state;
  af_test_server_t *ts = af_ts_start(NULL);
  af_tc_t *c = af_tc_connect(af_ts_port(ts));
  Grpc__Health__V1__HealthCheckRequest req =
      GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = "";
  ProtobufCMessage *resp = NULL;
  af_tc_status_t st;
  assert_int_equal(
      af_tc_unary(c, HEALTH_CHECK, &req.base,
                  &grpc__health__v1__health_check_response__descriptor, &resp,
                  &st, NULL, 2000),
      GRPC_STATUS_OK);
  Grpc__Health__V1__HealthCheckResponse *r = (void *)resp;
  assert_int_equal(r->status, ST(SERVING));
  protobuf_c_message_free_unpacked(resp, NULL);

  af_tc_stream_t *s = af_tc_stream_open(
      c, HEALTH_WATCH, &req.base,
      &grpc__health__v1__health_check_response__descriptor, NULL, 10000);
  assert_int_equal(af_tc_stream_next(s, 2000, &resp), 1);
  r = (void *)resp;
  assert_int_equal(r->status, ST(SERVING));
  protobuf_c_message_free_unpacked(resp, NULL);
  assert_int_equal(af_tc_stream_next(s, 50, &resp), 0);
  af_tc_stream_close(s);
  af_tc_close(c);
  af_ts_stop(ts);
}

int main(void)
{
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(health_check_empty_name_is_serving),
  };
  return cmocka_run_group_tests_name("integration_server", tests, NULL, NULL);
}
