#!/usr/bin/python3
"""Soak: a sustained mixed load against a real afd process for
AF_SOAK_SECONDS (default 300), label `soak` (not part of every CI run:
`ctest -L soak`).

Four client threads run, each on its own connection: outcome reports over
200 breakers (transitions included), usage recording with unique event ids
(plus a replayed id now and then: counted once), reads (GetSystemHealth,
ListBreakers, QueryUsage), and stream churn (WatchHealth / WatchBreakers
opened, read, cancelled) with a chaos scenario injected and expiring every
few seconds. Every call must succeed; VmRSS is sampled every 2 s and the
median of the last quarter may exceed the median of the second quarter
(after warm-up) by at most max(16 MiB, 15 %). At the end metering must have
counted every unique event exactly once. The in-memory ledger keeps every
event id (exactly-once needs it), so the memory allowance grows by 512 B
per unique event recorded between the two quarters.

Exit code 0 when every check passed; the last line says "N passed, M failed".
"""

import argparse
import os
import statistics
import sys
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import afd_harness  # noqa: E402

import grpc  # noqa: E402

TIMEOUT = 10.0
LEDGER_KIB_PER_EVENT = 0.5  # 512 B: key, aggregates share, hash slot


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Load:
    def __init__(self, afd, m, seconds):
        self.afd, self.m, self.seconds = afd, m, seconds
        self.stop = threading.Event()
        self.errors = []
        self.calls = 0
        self.unique_events = 0
        self.lock = threading.Lock()

    def channel(self):
        return grpc.insecure_channel(
            self.afd.address, options=[("grpc.use_local_subchannel_pool", 1)])

    @staticmethod
    def unary(ch, path, req, resp_cls):
        return ch.unary_unary(path,
                              request_serializer=type(req).SerializeToString,
                              response_deserializer=resp_cls.FromString)(
                                  req, timeout=TIMEOUT)

    def run(self, fn):
        ch = self.channel()
        i = 0
        try:
            while not self.stop.is_set():
                try:
                    fn(ch, i)
                    with self.lock:
                        self.calls += 1
                except Exception as e:  # noqa: BLE001
                    with self.lock:
                        if len(self.errors) < 20:
                            self.errors.append("%s: %s" % (fn.__name__, e))
                i += 1
        finally:
            ch.close()

    def reports(self, ch, i):
        B, C = self.m["breaker"], self.m["common"]
        if i % 10 == 0:
            state = C.BREAKER_STATE_OPEN if i % 20 == 0 \
                else C.BREAKER_STATE_CLOSED
            self.unary(ch, "/antifragility.v1.BreakerService/ReportState",
                       B.ReportStateRequest(name="soak-%d" % (i % 200),
                                            state=state, auto_register=True),
                       B.ReportStateResponse)
        else:
            self.unary(ch, "/antifragility.v1.BreakerService/ReportOutcome",
                       B.ReportOutcomeRequest(breaker_name="soak-%d" % (i % 200),
                                              success=i % 7 != 0,
                                              auto_register=True),
                       B.ReportOutcomeResponse)

    def usage(self, ch, i):
        M = self.m["metering"]
        if i % 50 == 49 and self.last_id:
            eid = self.last_id  # a retry: must count once
        else:
            eid = uuid.uuid4().hex
            with self.lock:
                self.unique_events += 1
        self.last_id = eid
        r = self.unary(ch, "/antifragility.v1.MeteringService/RecordUsage",
                       M.RecordUsageRequest(event=M.UsageEvent(
                           tenant_id="soak", event_id=eid, operation=1,
                           tokens_processed=3)),
                       M.RecordUsageResponse)
        return r

    def reads(self, ch, i):
        H, B, M = self.m["health"], self.m["breaker"], self.m["metering"]
        k = i % 3
        if k == 0:
            self.unary(ch, "/antifragility.v1.HealthService/GetSystemHealth",
                       H.GetSystemHealthRequest(), H.GetSystemHealthResponse)
        elif k == 1:
            self.unary(ch, "/antifragility.v1.BreakerService/ListBreakers",
                       B.ListBreakersRequest(page_size=16),
                       B.ListBreakersResponse)
        else:
            self.unary(ch, "/antifragility.v1.MeteringService/QueryUsage",
                       M.QueryUsageRequest(tenant_id="soak"),
                       M.QueryUsageResponse)

    def streams(self, ch, i):
        H, B, Ch = self.m["health"], self.m["breaker"], self.m["chaos"]
        if i % 20 == 0:
            from google.protobuf import duration_pb2
            self.unary(ch, "/antifragility.v1.ChaosService/InjectLatency",
                       Ch.InjectLatencyRequest(
                           target="soak-%d" % (i % 200),
                           delay=duration_pb2.Duration(nanos=1000000),
                           duration=duration_pb2.Duration(seconds=2)),
                       Ch.InjectLatencyResponse)
        if i % 2 == 0:
            call = ch.unary_stream(
                "/antifragility.v1.HealthService/WatchHealth",
                request_serializer=H.WatchHealthRequest.SerializeToString,
                response_deserializer=H.WatchHealthResponse.FromString)(
                    H.WatchHealthRequest(), timeout=TIMEOUT)
        else:
            call = ch.unary_stream(
                "/antifragility.v1.BreakerService/WatchBreakers",
                request_serializer=B.WatchBreakersRequest.SerializeToString,
                response_deserializer=B.WatchBreakersResponse.FromString)(
                    B.WatchBreakersRequest(), timeout=TIMEOUT)
        next(call)
        call.cancel()


def main():
    ap = argparse.ArgumentParser()
    for a in ("--afd", "--protos", "--gen", "--protoc", "--plugin"):
        ap.add_argument(a, required=True)
    args = ap.parse_args()
    seconds = float(os.environ.get("AF_SOAK_SECONDS", "300"))
    afd_harness.generate_stubs(args.protoc, args.plugin, args.protos,
                               args.gen)
    from antifragility.v1 import (breaker_pb2, chaos_pb2, common_pb2,
                                  health_pb2, metering_pb2)
    m = {"breaker": breaker_pb2, "chaos": chaos_pb2, "common": common_pb2,
         "health": health_pb2, "metering": metering_pb2}
    afd = afd_harness.Afd(args.afd, ["--flush-interval-ms", "100"]).start()
    load = Load(afd, m, seconds)
    load.last_id = None
    threads = [threading.Thread(target=load.run, args=(fn,), daemon=True)
               for fn in (load.reports, load.usage, load.reads, load.streams)]
    samples = []
    events = []  # unique metering events recorded at each sample
    t0 = time.monotonic()
    for t in threads:
        t.start()
    try:
        while time.monotonic() - t0 < seconds:
            time.sleep(2)
            samples.append(rss_kib(afd.proc.pid))
            events.append(load.unique_events)
            print("t=%5.0fs rss %6.1f MiB calls %d errors %d" % (
                time.monotonic() - t0, samples[-1] / 1024.0, load.calls,
                len(load.errors)))
            sys.stdout.flush()
    finally:
        load.stop.set()
        for t in threads:
            t.join(30)
    passed = failed = 0
    # Every unique event counted once (duplicates refused as duplicates).
    M = m["metering"]
    ch = grpc.insecure_channel(afd.address)
    q = None

    def counted():
        nonlocal q
        q = Load.unary(ch, "/antifragility.v1.MeteringService/QueryUsage",
                       M.QueryUsageRequest(tenant_id="soak"),
                       M.QueryUsageResponse)
        return q.total.count == load.unique_events
    ok = afd_harness.wait_for(counted, timeout=10)
    total = q.total.count if q else -1
    print("metering: %d unique events sent, %d counted" % (
        load.unique_events, total))
    passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
    ch.close()
    code = afd.stop()
    if load.errors:
        failed += 1
        print("FAIL %d call errors, first: %s" % (len(load.errors),
                                                   load.errors[:5]))
    else:
        passed += 1
    n = len(samples)
    if n >= 8:
        early = statistics.median(samples[n // 4: n // 2])
        late = statistics.median(samples[3 * n // 4:])
        # The ledger keeps every (tenant, event id) forever, by design
        # (exactly-once); in --memory mode that is RAM, so the allowance
        # grows by LEDGER_KIB_PER_EVENT for each event recorded meanwhile.
        new_events = (statistics.median(events[3 * n // 4:]) -
                      statistics.median(events[n // 4: n // 2]))
        allowed = max(16 * 1024, early * 0.15) + \
            new_events * LEDGER_KIB_PER_EVENT
        per_event = (late - early) * 1024.0 / new_events if new_events else 0
        print("memory: median %.1f MiB in the 2nd quarter, %.1f MiB in the "
              "last (allowed growth %.1f MiB for %d new ledger events; "
              "measured %.0f B/event); %d calls in %.0f s (%.0f/s)" % (
                  early / 1024.0, late / 1024.0, allowed / 1024.0,
                  new_events, per_event, load.calls, seconds,
                  load.calls / seconds))
        if late - early > allowed:
            failed += 1
            print("FAIL memory grew")
        else:
            passed += 1
    if code != 0:
        failed += 1
        print("FAIL afd exited with %s" % code)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
