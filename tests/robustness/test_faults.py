#!/usr/bin/python3
"""Faults against a real afd process: streams opened and cancelled
abruptly, connections dropped mid-stream (a client process killed with
SIGKILL), and clients that never read while the server has a lot to say.

After each round every stream must be reaped (HealthService reports its
watchers back at zero, and the watcher limit admits a full round again),
the server must keep answering, and its memory (VmRSS) must come back: a
warm-up round sets the baseline, and three more rounds may not grow it by
more than max(16 MiB, 15 %). Under ASan (--sanitized) the quarantine keeps
freed memory, so RSS is only reported and LeakSanitizer judges afd's exit.

Exit code 0 when every check passed; the last line says "N passed, M failed".
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import afd_harness  # noqa: E402

import grpc  # noqa: E402

STREAMS = 1000
CHANNELS = 10
TIMEOUT = 10.0


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


class Ctx:
    pass


def health_watchers(c):
    H = c.health_pb2
    return c.unary("/antifragility.v1.HealthService/GetHealthMetrics",
                   H.GetHealthMetricsRequest(),
                   H.GetHealthMetricsResponse).watchers


def wait_reaped(c, what, timeout=TIMEOUT):
    ok = afd_harness.wait_for(lambda: health_watchers(c) == 0, timeout)
    if not ok:
        raise AssertionError("%s: %d watchers still open after %.0f s" % (
            what, health_watchers(c), timeout))


def open_and_cancel(c):
    """STREAMS WatchHealth streams over CHANNELS connections, each read to
    its first message, then all cancelled at once."""
    H = c.health_pb2
    chans = [grpc.insecure_channel(c.afd.address,
                                   options=[("grpc.use_local_subchannel_pool",
                                             1)])
             for _ in range(CHANNELS)]
    calls = []
    try:
        for i in range(STREAMS):
            ch = chans[i % CHANNELS]
            call = ch.unary_stream(
                "/antifragility.v1.HealthService/WatchHealth",
                request_serializer=H.WatchHealthRequest.SerializeToString,
                response_deserializer=H.WatchHealthResponse.FromString)(
                    H.WatchHealthRequest(), timeout=60)
            calls.append(call)
        for call in calls:
            next(call)
        n = health_watchers(c)
        if n != STREAMS:
            raise AssertionError("expected %d watchers, server has %d" % (
                STREAMS, n))
    finally:
        for call in calls:
            call.cancel()
        for ch in chans:
            ch.close()
    wait_reaped(c, "cancelled streams")


KILLED_CLIENT = r"""
import sys, grpc
sys.path.insert(0, sys.argv[2])
from antifragility.v1 import health_pb2 as H
chans = [grpc.insecure_channel(sys.argv[1]) for _ in range(2)]
calls = []
for i in range(200):
    calls.append(chans[i % 2].unary_stream(
        "/antifragility.v1.HealthService/WatchHealth",
        request_serializer=H.WatchHealthRequest.SerializeToString,
        response_deserializer=H.WatchHealthResponse.FromString)(
            H.WatchHealthRequest(), timeout=120))
for call in calls:
    next(call)
print("ready", flush=True)
sys.stdin.read()
"""


def drop_connections(c):
    """A client process with 200 open streams is killed with SIGKILL: its
    connections drop without any HTTP/2 goodbye."""
    p = subprocess.Popen([sys.executable, "-c", KILLED_CLIENT,
                          c.afd.address, c.gen],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True)
    try:
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise AssertionError("client did not open its streams")
        n = health_watchers(c)
        if n != 200:
            raise AssertionError("expected 200 watchers, server has %d" % n)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    wait_reaped(c, "dropped connections")


def never_read(c):
    """Raw HTTP/2 clients ask for WatchBreakers and never read a byte, while
    the server produces thousands of breaker transitions; the server must
    keep serving others and drop the readers' streams when they go."""
    import h2.config
    import h2.connection
    B = c.breaker_pb2
    body = B.WatchBreakersRequest().SerializeToString()
    frame = b"\x00" + len(body).to_bytes(4, "big") + body
    socks = []
    for _ in range(20):
        s = socket.create_connection(("127.0.0.1", c.afd.port))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, [
            (":method", "POST"), (":scheme", "http"),
            (":authority", c.afd.address),
            (":path", "/antifragility.v1.BreakerService/WatchBreakers"),
            ("content-type", "application/grpc"), ("te", "trailers")])
        conn.send_data(sid, frame, end_stream=True)
        s.sendall(conn.data_to_send())
        socks.append(s)  # and never recv()
    t0 = time.monotonic()
    C = c.common_pb2
    for i in range(3000):  # every call a transition: OPEN, CLOSED, ...
        state = (C.BREAKER_STATE_OPEN if (i // 100) % 2 == 0
                 else C.BREAKER_STATE_CLOSED)
        r = c.unary("/antifragility.v1.BreakerService/ReportState",
                    B.ReportStateRequest(name="nr-%d" % (i % 100),
                                         state=state, auto_register=True),
                    B.ReportStateResponse)
        if not r.transitioned:
            raise AssertionError("ReportState %d did not transition" % i)
    took = time.monotonic() - t0
    # Others are still served promptly.
    t1 = time.monotonic()
    H = c.health_pb2
    c.unary("/antifragility.v1.HealthService/GetSystemHealth",
            H.GetSystemHealthRequest(), H.GetSystemHealthResponse)
    if time.monotonic() - t1 > 2.0:
        raise AssertionError("GetSystemHealth took %.1f s beside the "
                             "non-readers" % (time.monotonic() - t1))
    for s in socks:
        s.close()
    c.never_read_s = took


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--afd", required=True)
    ap.add_argument("--protos", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--protoc", required=True)
    ap.add_argument("--plugin", required=True)
    ap.add_argument("--sanitized", action="store_true",
                    help="afd runs under ASan: its quarantine keeps freed "
                    "memory, so RSS is reported but not judged (LeakSanitizer "
                    "checks the exit instead)")
    args = ap.parse_args()
    afd_harness.generate_stubs(args.protoc, args.plugin, args.protos,
                               args.gen)
    from antifragility.v1 import breaker_pb2, common_pb2, health_pb2
    c = Ctx()
    c.common_pb2 = common_pb2
    c.gen = args.gen
    c.breaker_pb2, c.health_pb2 = breaker_pb2, health_pb2
    c.afd = afd_harness.Afd(args.afd, ["--max-watchers", str(STREAMS + 50),
                                       "--heartbeat-ms", "1000"]).start()
    c.channel = grpc.insecure_channel(c.afd.address)

    def unary(path, req, resp_cls):
        return c.channel.unary_unary(
            path, request_serializer=type(req).SerializeToString,
            response_deserializer=resp_cls.FromString)(req, timeout=TIMEOUT)
    c.unary = unary

    passed = failed = 0
    rows = []
    baseline = None
    try:
        for rnd in range(4):
            for fn in (open_and_cancel, drop_connections, never_read):
                t0 = time.monotonic()
                try:
                    fn(c)
                    passed += 1
                    status = "PASS"
                except Exception as e:  # noqa: BLE001
                    failed += 1
                    status = "FAIL %s" % e
                rss = rss_kib(c.afd.proc.pid)
                rows.append((rnd, fn.__name__, status,
                             (time.monotonic() - t0) * 1000, rss))
                print("round %d %-18s %-6s %7.0f ms  rss %7.1f MiB" % (
                    rnd, fn.__name__, status, rows[-1][3], rss / 1024.0))
                sys.stdout.flush()
            if rnd == 0:
                baseline = rss_kib(c.afd.proc.pid)
        final = rss_kib(c.afd.proc.pid)
        allowed = max(16 * 1024, baseline * 0.15)
        print("memory: baseline after warm-up %.1f MiB, after 3 more rounds "
              "%.1f MiB (growth %.1f MiB, allowed %.1f MiB)" % (
                  baseline / 1024.0, final / 1024.0,
                  (final - baseline) / 1024.0, allowed / 1024.0))
        if args.sanitized:
            print("memory not judged under ASan (quarantine); LeakSanitizer "
                  "checks afd's exit")
        elif final - baseline > allowed:
            failed += 1
            print("FAIL memory did not return to its baseline")
        else:
            passed += 1
    finally:
        c.channel.close()
        code = c.afd.stop()
    if code != 0:
        failed += 1
        print("FAIL afd exited with %s" % code)
        print("\n".join(c.afd.log[-40:]))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
