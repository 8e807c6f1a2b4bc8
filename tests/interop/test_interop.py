#!/usr/bin/python3
"""Interop: Python grpcio plays a foreign service against a real afd.

Stubs are generated at test time from protos/ (protoc + grpc_python_plugin);
grpc.health.v1 and reflection come from Debian's grpc-proto and are loaded by
path. Every check talks to an afd process on 127.0.0.1:<free port>.

Exit code 0 when every check passed; the last line says "N passed, M failed".
"""

import argparse
import os
import queue
import socket
import sys
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import afd_harness  # noqa: E402

import grpc  # noqa: E402

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


class Ctx:
    pass


def expect_status(fn, code, message_part=None):
    """Calls fn(); it must fail with code (and a message containing
    message_part); returns the error."""
    try:
        fn()
    except grpc.RpcError as e:
        assert e.code() == code, "expected %s, got %s: %s" % (
            code, e.code(), e.details())
        if message_part is not None:
            assert message_part in (e.details() or ""), (
                "message %r lacks %r" % (e.details(), message_part))
        return e
    raise AssertionError("expected %s, call succeeded" % code)


class Watch:
    """A server stream read on its own thread into a queue."""

    def __init__(self, call):
        self.call = call
        self.q = queue.Queue()
        self.done = threading.Event()
        self.error = None
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        try:
            for msg in self.call:
                self.q.put((time.monotonic(), msg))
        except grpc.RpcError as e:
            self.error = e
        finally:
            self.done.set()

    def next(self, timeout=5.0, pred=lambda m: True):
        """The next message satisfying pred (others are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("no matching stream message in %.1fs" %
                                     timeout)
            try:
                at, msg = self.q.get(timeout=left)
            except queue.Empty:
                continue
            if pred(msg):
                return at, msg

    def cancel(self):
        self.call.cancel()
        self.done.wait(5)


# ---------------------------------------------------------------- checks


@check
def grpc_health_check_maps_server_services_and_unknown(c):
    H = c.health_pb2
    r = c.health_check(H.HealthCheckRequest(service=""), timeout=5)
    assert r.status == H.HealthCheckResponse.SERVING, r
    for svc in ("BreakerService", "HealthService", "RecoveryService",
                "ChaosService", "MeteringService"):
        r = c.health_check(
            H.HealthCheckRequest(service="antifragility.v1." + svc),
            timeout=5)
        assert r.status == H.HealthCheckResponse.SERVING, svc
    expect_status(
        lambda: c.health_check(H.HealthCheckRequest(service="no.such"),
                               timeout=5), grpc.StatusCode.NOT_FOUND)


@check
def reflection_v1_and_v1alpha_list_and_describe(c):
    for mod, path in ((c.refl_v1, "grpc.reflection.v1"),
                      (c.refl_v1alpha, "grpc.reflection.v1alpha")):
        call = c.channel.stream_stream(
            "/%s.ServerReflection/ServerReflectionInfo" % path,
            request_serializer=mod.ServerReflectionRequest.SerializeToString,
            response_deserializer=mod.ServerReflectionResponse.FromString)
        reqs = [
            mod.ServerReflectionRequest(list_services=""),
            mod.ServerReflectionRequest(
                file_containing_symbol="antifragility.v1.BreakerService"),
            mod.ServerReflectionRequest(
                file_containing_symbol="antifragility.v1.No"),
        ]
        resps = list(call(iter(reqs), timeout=10))
        assert len(resps) == 3, len(resps)
        names = {s.name for s in resps[0].list_services_response.service}
        for want in ("antifragility.v1.BreakerService",
                     "antifragility.v1.HealthService",
                     "antifragility.v1.RecoveryService",
                     "antifragility.v1.ChaosService",
                     "antifragility.v1.MeteringService",
                     "grpc.health.v1.Health"):
            assert want in names, (path, want, names)
        from google.protobuf import descriptor_pb2
        files = resps[1].file_descriptor_response.file_descriptor_proto
        assert files, path
        fdp = descriptor_pb2.FileDescriptorProto.FromString(files[0])
        assert fdp.package == "antifragility.v1"
        svc = [s for s in fdp.service if s.name == "BreakerService"]
        assert svc and any(m.name == "WatchBreakers" for m in svc[0].method)
        assert resps[2].error_response.error_code == 5  # NOT_FOUND


@check
def unknown_method_is_unimplemented_at_once(c):
    call = c.channel.unary_unary("/antifragility.v1.Nope/Nothing")
    t0 = time.monotonic()
    expect_status(lambda: call(b"", timeout=5),
                  grpc.StatusCode.UNIMPLEMENTED)
    assert time.monotonic() - t0 < 2.0


@check
def foreign_service_drives_health_healthy_degraded_critical_and_back(c):
    B, Hs, C = c.breaker_pb2, c.health_pb2_ours, c.common_pb2
    from google.protobuf import duration_pb2, wrappers_pb2
    watch = Watch(c.health.WatchHealth(Hs.WatchHealthRequest(), timeout=60))
    try:
        _, first = watch.next()
        assert first.sequence >= 1
        cfg = B.BreakerConfig(fail_max=wrappers_pb2.UInt32Value(value=3),
                              reset_timeout=duration_pb2.Duration(seconds=60))
        for n in ("py-a", "py-b", "py-c"):
            r = c.breakers.RegisterBreaker(
                B.RegisterBreakerRequest(name=n, config=cfg), timeout=5)
            assert r.breaker.name == n
            assert r.breaker.state == C.BREAKER_STATE_CLOSED
        _, m = watch.next(pred=lambda m: not m.heartbeat and
                          m.report.total_breakers == 3)
        assert m.report.status == C.HEALTH_STATUS_HEALTHY

        def fail_until_open(name):
            for i in range(3):
                r = c.breakers.ReportOutcome(
                    B.ReportOutcomeRequest(breaker_name=name, success=False,
                                           error_type="timeout",
                                           instance_id="py-1"), timeout=5)
            assert r.state == C.BREAKER_STATE_OPEN, r
            assert r.transitioned
            return time.monotonic()

        t_open = fail_until_open("py-a")
        at, m = watch.next(pred=lambda m: m.report.status ==
                           C.HEALTH_STATUS_DEGRADED)
        c.delays.append(at - t_open)
        assert "py-a" in m.report.critical_services
        assert abs(m.report.health_score - 2.0 / 3.0) < 1e-6
        t_open = fail_until_open("py-b")
        at, m = watch.next(pred=lambda m: m.report.status ==
                           C.HEALTH_STATUS_CRITICAL)
        c.delays.append(at - t_open)
        assert m.report.open_breakers == 2
        seq_before = m.sequence
        for n in ("py-a", "py-b"):
            c.breakers.ResetBreaker(B.ResetBreakerRequest(name=n), timeout=5)
        _, m = watch.next(pred=lambda m: m.report.status ==
                          C.HEALTH_STATUS_HEALTHY)
        assert m.sequence > seq_before
    finally:
        watch.cancel()
    # the history remembers what the watchers saw
    h = c.health.GetSystemHealth(Hs.GetSystemHealthRequest(), timeout=5)
    assert h.report.status == C.HEALTH_STATUS_HEALTHY
    assert h.report.constitutional_hash == "cdd01ef066bc6cf2"


@check
def grpc_health_follows_a_breaker(c):
    B, C, H = c.breaker_pb2, c.common_pb2, c.health_pb2
    from google.protobuf import wrappers_pb2
    c.breakers.RegisterBreaker(
        B.RegisterBreakerRequest(
            name="py-h",
            config=B.BreakerConfig(fail_max=wrappers_pb2.UInt32Value(
                value=1))), timeout=5)
    w = Watch(c.health_watch(H.HealthCheckRequest(service="py-h"),
                             timeout=30))
    try:
        _, m = w.next()
        assert m.status == H.HealthCheckResponse.SERVING
        c.breakers.ReportOutcome(
            B.ReportOutcomeRequest(breaker_name="py-h", success=False),
            timeout=5)
        _, m = w.next(pred=lambda m: m.status ==
                      H.HealthCheckResponse.NOT_SERVING)
        r = c.health_check(H.HealthCheckRequest(service="py-h"), timeout=5)
        assert r.status == H.HealthCheckResponse.NOT_SERVING
    finally:
        w.cancel()
    w = Watch(c.health_watch(H.HealthCheckRequest(service="py-nobody"),
                             timeout=30))
    try:
        _, m = w.next()
        assert m.status == H.HealthCheckResponse.SERVICE_UNKNOWN
        time.sleep(0.2)
        assert not w.done.is_set(), "Watch of an unknown name must stay open"
    finally:
        w.cancel()
    c.breakers.ResetBreaker(B.ResetBreakerRequest(name="py-h"), timeout=5)


@check
def recovery_with_a_real_tcp_probe_closes_the_breaker(c):
    B, R, C = c.breaker_pb2, c.recovery_pb2, c.common_pb2
    from google.protobuf import duration_pb2, wrappers_pb2
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    port = lsock.getsockname()[1]
    try:
        c.breakers.RegisterBreaker(
            B.RegisterBreakerRequest(
                name="py-rec",
                config=B.BreakerConfig(
                    fail_max=wrappers_pb2.UInt32Value(value=1),
                    reset_timeout=duration_pb2.Duration(seconds=600))),
            timeout=5)
        r = c.breakers.ReportOutcome(
            B.ReportOutcomeRequest(breaker_name="py-rec", success=False),
            timeout=5)
        assert r.state == C.BREAKER_STATE_OPEN
        expect_status(
            lambda: c.recovery.SetRecoveryPolicy(
                R.SetRecoveryPolicyRequest(
                    service_name="py-rec",
                    policy=R.RecoveryPolicy(
                        max_retry_attempts=wrappers_pb2.UInt32Value(
                            value=0))), timeout=5),
            grpc.StatusCode.INVALID_ARGUMENT,
            "max_retry_attempts must be >= 1")
        policy = R.RecoveryPolicy(
            max_retry_attempts=wrappers_pb2.UInt32Value(value=3),
            initial_delay=duration_pb2.Duration(nanos=50000000),
            probe=R.PROBE_KIND_TCP, probe_target="127.0.0.1:%d" % port,
            probe_timeout=duration_pb2.Duration(seconds=2))
        c.recovery.SetRecoveryPolicy(
            R.SetRecoveryPolicyRequest(service_name="py-rec", policy=policy),
            timeout=5)
        c.recovery.ScheduleRecovery(
            R.ScheduleRecoveryRequest(
                service_name="py-rec",
                strategy=R.RECOVERY_STRATEGY_IMMEDIATE), timeout=5)

        def succeeded():
            s = c.recovery.GetRecoveryStatus(
                R.GetRecoveryStatusRequest(service_name="py-rec"), timeout=5)
            return any(t.state == R.RECOVERY_STATE_SUCCEEDED
                       for t in s.tasks)

        assert afd_harness.wait_for(succeeded, timeout=10), "no success"
        g = c.breakers.GetBreaker(B.GetBreakerRequest(name="py-rec"),
                                  timeout=5)
        assert g.breaker.state == C.BREAKER_STATE_CLOSED
    finally:
        lsock.close()
    expect_status(
        lambda: c.recovery.CancelRecovery(
            R.CancelRecoveryRequest(service_name="py-none"), timeout=5),
        grpc.StatusCode.NOT_FOUND)


@check
def chaos_errors_inject_then_expire_and_are_watched(c):
    Ch = c.chaos_pb2
    from google.protobuf import duration_pb2
    expect_status(
        lambda: c.chaos.InjectErrors(
            Ch.InjectErrorsRequest(target="py-c", error_rate=1.5), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        "error_rate must be between 0.0 and 1.0")
    w = Watch(c.chaos.WatchScenarios(Ch.WatchScenariosRequest(), timeout=30))
    try:
        w.next()  # the current state
        r = c.chaos.InjectErrors(
            Ch.InjectErrorsRequest(target="py-c", error_rate=1.0,
                                   duration=duration_pb2.Duration(seconds=1),
                                   actor="interop"), timeout=5)
        name = r.scenario.name
        assert r.scenario.active
        chk = c.chaos.CheckInjection(Ch.CheckInjectionRequest(target="py-c"),
                                     timeout=5)
        assert chk.inject_error
        w.next(pred=lambda m: m.kind == Ch.SCENARIO_EVENT_KIND_ACTIVATED)
        w.next(timeout=5,
               pred=lambda m: m.kind == Ch.SCENARIO_EVENT_KIND_EXPIRED and
               m.scenario.name == name)
        chk = c.chaos.CheckInjection(Ch.CheckInjectionRequest(target="py-c"),
                                     timeout=5)
        assert not chk.inject_error
    finally:
        w.cancel()


@check
def chaos_force_open_and_emergency_stop(c):
    Ch, B, C = c.chaos_pb2, c.breaker_pb2, c.common_pb2
    r = c.chaos.ForceCircuitOpen(
        Ch.ForceCircuitOpenRequest(breaker_name="py-c", actor="interop"),
        timeout=5)
    g = c.breakers.GetBreaker(B.GetBreakerRequest(name="py-c"), timeout=5)
    assert g.breaker.state == C.BREAKER_STATE_FORCED_OPEN
    c.chaos.DeactivateScenario(
        Ch.DeactivateScenarioRequest(name=r.scenario.name), timeout=5)
    g = c.breakers.GetBreaker(B.GetBreakerRequest(name="py-c"), timeout=5)
    assert g.breaker.state == C.BREAKER_STATE_CLOSED
    c.chaos.EmergencyStop(Ch.EmergencyStopRequest(reason="drill"), timeout=5)
    expect_status(
        lambda: c.chaos.InjectErrors(
            Ch.InjectErrorsRequest(target="py-c", error_rate=0.5), timeout=5),
        grpc.StatusCode.FAILED_PRECONDITION, "emergency stop is active")
    c.chaos.ResetChaos(Ch.ResetChaosRequest(actor="interop"), timeout=5)
    c.chaos.InjectErrors(
        Ch.InjectErrorsRequest(target="py-c", error_rate=0.5), timeout=5)
    c.chaos.ResetChaos(Ch.ResetChaosRequest(actor="interop"), timeout=5)


@check
def metering_records_once_and_queries_totals(c):
    M = c.metering_pb2

    def ev(i, tenant="py-tenant"):
        return M.UsageEvent(tenant_id=tenant, event_id="ev-%d" % i,
                            operation=M.OPERATION_AGENT_MESSAGE,
                            tier=M.METERING_TIER_STANDARD, units=1,
                            tokens_processed=10, latency_ms=1.5,
                            compliance_score=1.0,
                            constitutional_valid=True)

    r = c.metering.RecordUsage(M.RecordUsageRequest(event=ev(0)), timeout=5)
    assert r.accepted and not r.duplicate and r.event_id == "ev-0"
    r = c.metering.RecordUsage(M.RecordUsageRequest(event=ev(0)), timeout=5)
    assert r.duplicate, r
    expect_status(
        lambda: c.metering.RecordUsage(
            M.RecordUsageRequest(event=M.UsageEvent(
                operation=M.OPERATION_AGENT_MESSAGE)), timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT, "tenant_id")
    s = c.metering.RecordUsageStream(
        iter([M.RecordUsageRequest(event=ev(i)) for i in range(1, 101)] +
             [M.RecordUsageRequest(event=ev(5))]), timeout=20)
    assert s.received == 101, s
    assert s.accepted == 100 and s.duplicates == 1, s
    q = c.metering.QueryUsage(
        M.QueryUsageRequest(tenant_id="py-tenant",
                            group_by=M.USAGE_GROUP_BY_OPERATION), timeout=5)
    assert q.total.count == 101, q.total
    assert q.total.tokens == 1010, q.total
    other = c.metering.RecordUsage(
        M.RecordUsageRequest(event=ev(0, tenant="py-other")), timeout=5)
    assert other.accepted and not other.duplicate


@check
def constitutional_hash_mismatch_is_refused(c):
    B = c.breaker_pb2
    expect_status(
        lambda: c.breakers.GetBreaker(
            B.GetBreakerRequest(name="py-a"), timeout=5,
            metadata=(("x-constitutional-hash", "deadbeefdeadbeef"),)),
        grpc.StatusCode.FAILED_PRECONDITION, "constitutional hash")
    c.breakers.GetBreaker(
        B.GetBreakerRequest(name="py-a"), timeout=5,
        metadata=(("x-constitutional-hash", "cdd01ef066bc6cf2"),))


@check
def unknown_breaker_is_not_found(c):
    B = c.breaker_pb2
    expect_status(
        lambda: c.breakers.GetBreaker(B.GetBreakerRequest(name="py-zz"),
                                      timeout=5), grpc.StatusCode.NOT_FOUND)


@check
def sigterm_ends_open_streams_cleanly_and_exits_zero(c):
    Hs = c.health_pb2_ours
    w = Watch(c.health.WatchHealth(Hs.WatchHealthRequest(), timeout=30))
    w.next()
    code = c.afd.stop()
    assert code == 0, "afd exit code %s" % code
    assert w.done.wait(5)
    assert w.error is None, "stream ended with %s" % (
        w.error and w.error.code())


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--afd", required=True)
    ap.add_argument("--protos", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--protoc", default="protoc")
    ap.add_argument("--plugin", default="/usr/bin/grpc_python_plugin")
    args = ap.parse_args()

    afd_harness.generate_stubs(args.protoc, args.plugin, args.protos,
                               args.gen)
    c = Ctx()
    c.delays = []
    from antifragility.v1 import (breaker_pb2, breaker_pb2_grpc, chaos_pb2,
                                  chaos_pb2_grpc, common_pb2, health_pb2,
                                  health_pb2_grpc, metering_pb2,
                                  metering_pb2_grpc, recovery_pb2,
                                  recovery_pb2_grpc)
    gp = os.path.join(args.gen, "grpcproto", "grpc")
    c.health_pb2 = afd_harness.load_module(
        "gh_health_pb2", os.path.join(gp, "health", "v1", "health_pb2.py"))
    c.refl_v1 = afd_harness.load_module(
        "gh_refl_v1", os.path.join(gp, "reflection", "v1",
                                   "reflection_pb2.py"))
    c.refl_v1alpha = afd_harness.load_module(
        "gh_refl_v1alpha", os.path.join(gp, "reflection", "v1alpha",
                                        "reflection_pb2.py"))
    c.breaker_pb2, c.common_pb2 = breaker_pb2, common_pb2
    c.health_pb2_ours, c.recovery_pb2 = health_pb2, recovery_pb2
    c.chaos_pb2, c.metering_pb2 = chaos_pb2, metering_pb2

    c.afd = afd_harness.Afd(args.afd).start()
    c.channel = grpc.insecure_channel(c.afd.address)
    c.breakers = breaker_pb2_grpc.BreakerServiceStub(c.channel)
    c.health = health_pb2_grpc.HealthServiceStub(c.channel)
    c.recovery = recovery_pb2_grpc.RecoveryServiceStub(c.channel)
    c.chaos = chaos_pb2_grpc.ChaosServiceStub(c.channel)
    c.metering = metering_pb2_grpc.MeteringServiceStub(c.channel)
    H = c.health_pb2
    c.health_check = c.channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=H.HealthCheckRequest.SerializeToString,
        response_deserializer=H.HealthCheckResponse.FromString)
    c.health_watch = c.channel.unary_stream(
        "/grpc.health.v1.Health/Watch",
        request_serializer=H.HealthCheckRequest.SerializeToString,
        response_deserializer=H.HealthCheckResponse.FromString)

    passed = failed = 0
    for fn in CHECKS:
        t0 = time.monotonic()
        try:
            fn(c)
            passed += 1
            print("PASS %-70s %6.0f ms" % (fn.__name__,
                                           (time.monotonic() - t0) * 1000))
        except Exception:  # noqa: BLE001 - report and go on
            failed += 1
            print("FAIL %s" % fn.__name__)
            traceback.print_exc()
        sys.stdout.flush()
    if c.afd.proc is not None:
        c.afd.stop()
    if c.delays:
        ds = sorted(c.delays)
        print("transition -> WatchHealth delay: median %.2f ms, max %.2f ms "
              "(%d samples)" % (ds[len(ds) // 2] * 1000, ds[-1] * 1000,
                                len(ds)))
    if failed:
        print("--- afd log ---")
        print("\n".join(c.afd.log[-60:]))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
