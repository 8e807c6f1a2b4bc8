/*
 * fuzz_afd.c - libFuzzer harness for the whole request path: decoder,
 * hash check and handler of every RPC (fuzz_table.h), grpc.health.v1 and
 * reflection, through a real afd started once in this process on
 * 127.0.0.1:0 and a raw gRPC core client on loopback.
 *
 * Each input: the first byte picks the method, the rest is sent as its one
 * request message (client streams: one message then half-close; server
 * streams and reflection: the first response is read, then the call is
 * cancelled). The server must answer every call with some status; engine
 * state accumulates across inputs, as it would in production. Run with
 * -detect_leaks=0: the server's threads live until exit (the ASan suite
 * checks shutdown for leaks).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/time.h>

#include "afd.h"
#include "config.h"
#include "fuzz_table.h"

static af_afd_t *g_afd;
static grpc_channel *g_ch;
static grpc_completion_queue *g_cq;
static grpc_slice g_paths[64];

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  af_config_t cfg;
  af_config_init(&cfg);
  snprintf(cfg.listen, sizeof cfg.listen, "127.0.0.1:0");
  cfg.memory = true;
  cfg.log_level = AF_LOG_ERROR;
  cfg.heartbeat_ms = 0;
  af_error_t err;
  af_error_clear(&err);
  int port = 0;
  if (af_afd_start(&cfg, &g_afd, &port, &err) != AF_OK) {
    fprintf(stderr, "fuzz_afd: cannot start afd: %s\n", err.message);
    abort();
  }
  grpc_init();
  char target[64];
  snprintf(target, sizeof target, "127.0.0.1:%d", port);
  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  g_ch = grpc_channel_create(target, cr, NULL);
  grpc_channel_credentials_release(cr);
  g_cq = grpc_completion_queue_create_for_pluck(NULL);
  if (fz_method_count > sizeof g_paths / sizeof g_paths[0])
    abort();
  for (size_t i = 0; i < fz_method_count; i++)
    g_paths[i] = grpc_slice_from_static_string(fz_methods[i].path);
  return 0;
}

static void wait_tag(void *tag)
{
  grpc_event ev = grpc_completion_queue_pluck(
      g_cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  if (ev.type != GRPC_OP_COMPLETE)
    abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  if (size < 1)
    return 0;
  size_t idx = data[0] % fz_method_count;
  gpr_timespec deadline = gpr_time_add(
      gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(5000, GPR_TIMESPAN));
  grpc_call *call =
      grpc_channel_create_call(g_ch, NULL, GRPC_PROPAGATE_DEFAULTS, g_cq,
                               g_paths[idx], NULL, deadline, NULL);
  grpc_slice body =
      grpc_slice_from_copied_buffer((const char *)data + 1, size - 1);
  grpc_byte_buffer *send = grpc_raw_byte_buffer_create(&body, 1);
  grpc_slice_unref(body);
  grpc_metadata_array init_md, trail_md;
  grpc_metadata_array_init(&init_md);
  grpc_metadata_array_init(&trail_md);
  grpc_byte_buffer *recv = NULL;
  grpc_status_code code = GRPC_STATUS_OK;
  grpc_slice details = grpc_empty_slice();

  grpc_op ops[5];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[1].op = GRPC_OP_SEND_MESSAGE;
  ops[1].data.send_message.send_message = send;
  ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
  ops[3].data.recv_initial_metadata.recv_initial_metadata = &init_md;
  ops[4].op = GRPC_OP_RECV_MESSAGE;
  ops[4].data.recv_message.recv_message = &recv;
  int tag_a = 0, tag_b = 0;
  if (grpc_call_start_batch(call, ops, 5, &tag_a, NULL) != GRPC_CALL_OK)
    abort();
  wait_tag(&tag_a);
  /* Done reading: unary calls have their status already, streams end. */
  grpc_call_cancel(call, NULL);
  grpc_op st;
  memset(&st, 0, sizeof st);
  st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  st.data.recv_status_on_client.trailing_metadata = &trail_md;
  st.data.recv_status_on_client.status = &code;
  st.data.recv_status_on_client.status_details = &details;
  if (grpc_call_start_batch(call, &st, 1, &tag_b, NULL) != GRPC_CALL_OK)
    abort();
  wait_tag(&tag_b);
  /* A server that died or hung shows as UNAVAILABLE / DEADLINE_EXCEEDED. */
  if (code == GRPC_STATUS_UNAVAILABLE ||
      code == GRPC_STATUS_DEADLINE_EXCEEDED) {
    fprintf(stderr, "fuzz_afd: %s answered status %d\n", fz_methods[idx].path,
            (int)code);
    abort();
  }
  grpc_slice_unref(details);
  grpc_metadata_array_destroy(&init_md);
  grpc_metadata_array_destroy(&trail_md);
  if (recv != NULL)
    grpc_byte_buffer_destroy(recv);
  grpc_byte_buffer_destroy(send);
  grpc_call_unref(call);
  return 0;
}
