#!/usr/bin/python3
"""Bad input, every RPC: a real afd process is sent, for each method of the
five antifragility.v1 services, an empty message, undecodable bytes, a
truncated message, an oversized message, and for each field of its request
a NUL byte / invalid UTF-8 (strings), an unknown value (enums), NaN, infinity
and negative numbers (floats, integers), negative and huge durations. Then,
over raw HTTP/2 (nghttp), a truncated gRPC frame and a wrong content-type.

Every case must get a status of its own (never INTERNAL, UNKNOWN or
UNAVAILABLE, never a crash), a refusal must carry a message and change
nothing (a digest of breakers, scenarios, recovery and metering state is
compared before and after), and afd must still serve and stop cleanly at
the end. The catalogue of what each case got is printed.

Exit code 0 when every check passed; the last line says "N passed, M failed".
"""

import argparse
import collections
import math
import os
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "interop"))
import afd_harness  # noqa: E402

import grpc  # noqa: E402

SC = grpc.StatusCode
NEVER = {SC.INTERNAL, SC.UNKNOWN, SC.UNAVAILABLE, SC.DATA_LOSS}
CALL_TIMEOUT = 5.0
HASH = "cdd01ef066bc6cf2"


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field_bytes(number, wire_type, payload):
    key = varint((number << 3) | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


class Runner:
    def __init__(self, afd, modules):
        self.afd = afd
        self.ch = grpc.insecure_channel(
            afd.address,
            options=[("grpc.max_send_message_length", 64 << 20),
                     ("grpc.max_receive_message_length", 64 << 20)])
        self.m = modules
        self.catalogue = collections.Counter()
        self.rows = []
        self.failures = []
        self.cases = 0

    # -- raw calls ---------------------------------------------------
    def call(self, path, cs, ss, payload):
        """Sends raw request bytes; returns (code, details, response)."""
        try:
            if not cs and not ss:
                return SC.OK, "", self.ch.unary_unary(path)(
                    payload, timeout=CALL_TIMEOUT)
            elif cs and not ss:
                return SC.OK, "", self.ch.stream_unary(path)(
                    iter([payload]), timeout=CALL_TIMEOUT)
            else:
                it = self.ch.unary_stream(path)(payload, timeout=CALL_TIMEOUT)
                try:
                    next(it)  # the first message: the stream was accepted
                finally:
                    it.cancel()
            return SC.OK, "", b""
        except grpc.RpcError as e:
            return e.code(), e.details() or "", b""

    # -- state digest ------------------------------------------------
    def digest(self):
        B, Ch, R, M = (self.m["breaker"], self.m["chaos"], self.m["recovery"],
                       self.m["metering"])
        unary = self.ch.unary_unary
        out = []
        token = ""
        while True:
            r = B.ListBreakersResponse.FromString(unary(
                "/antifragility.v1.BreakerService/ListBreakers")(
                    B.ListBreakersRequest(page_size=16,
                                          page_token=token)
                    .SerializeToString(), timeout=CALL_TIMEOUT))
            out += [(b.name, b.state, b.config.SerializeToString())
                    for b in r.breakers]
            token = r.next_page_token
            if not token:
                break
        sc = Ch.ListScenariosResponse.FromString(unary(
            "/antifragility.v1.ChaosService/ListScenarios")(
                Ch.ListScenariosRequest().SerializeToString(),
                timeout=CALL_TIMEOUT))
        out.append(sorted(s.name for s in sc.scenarios))
        rs = R.GetRecoveryStatusResponse.FromString(unary(
            "/antifragility.v1.RecoveryService/GetRecoveryStatus")(
                R.GetRecoveryStatusRequest().SerializeToString(),
                timeout=CALL_TIMEOUT))
        out.append((rs.total_scheduled, len(rs.tasks),
                    sorted((t.service_name, t.state) for t in rs.tasks)))
        pol = R.GetRecoveryPolicyResponse.FromString(unary(
            "/antifragility.v1.RecoveryService/GetRecoveryPolicy")(
                R.GetRecoveryPolicyRequest(service_name="rb")
                .SerializeToString(), timeout=CALL_TIMEOUT))
        out.append(pol.SerializeToString())
        mm = M.GetMeteringMetricsResponse.FromString(unary(
            "/antifragility.v1.MeteringService/GetMeteringMetrics")(
                M.GetMeteringMetricsRequest().SerializeToString(),
                timeout=CALL_TIMEOUT))
        out.append((mm.queued, mm.flushed, mm.duplicates))
        return out

    # -- one case ----------------------------------------------------
    def case(self, method, name, payload, expect=None, message_part=None):
        self.cases += 1
        path, cs, ss, out_cls = method
        before = self.digest()
        code, details, resp = self.call(path, cs, ss, payload)
        after = self.digest()
        short = path.split(".")[-1]
        shown = code.name
        problems = []
        if cs and code == SC.OK:
            # A client stream answers one summary: a bad message is
            # rejected in it (rejected, first_error), not with a status.
            summary = out_cls.FromString(resp)
            if summary.rejected:
                shown = "OK(rejected)"
                details = summary.first_error
                if before != after:
                    problems.append("rejected but the state changed")
                if not details:
                    problems.append("rejected without first_error")
                if message_part is not None and message_part not in details:
                    problems.append("first_error %r lacks %r" % (
                        details, message_part))
                expect = message_part = None
        self.rows.append((short, name, shown, details[:90]))
        self.catalogue[(name.split(":")[0], shown)] += 1
        if code in NEVER:
            problems.append("got %s: %s" % (code.name, details))
        if expect is not None and code not in expect:
            problems.append("expected %s, got %s: %s" % (
                "/".join(c.name for c in expect), code.name, details))
        if message_part is not None and message_part not in details:
            problems.append("message %r lacks %r" % (details, message_part))
        if code != SC.OK and not details:
            problems.append("%s without a message" % code.name)
        if code != SC.OK and before != after:
            problems.append("refused (%s) but the state changed" % code.name)
        if problems:
            self.failures.append("%s %s: %s" % (short, name,
                                                "; ".join(problems)))


def methods_of(modules):
    """(path, client_streaming, server_streaming, input descriptor)."""
    from google.protobuf import descriptor_pb2
    out = []
    for key in ("breaker", "health", "recovery", "chaos", "metering"):
        fd = modules[key].DESCRIPTOR
        for svc in fd.services_by_name.values():
            sp = descriptor_pb2.ServiceDescriptorProto()
            svc.CopyToProto(sp)
            for mp, md in zip(sp.method, svc.methods):
                out.append(("/%s/%s" % (svc.full_name, md.name),
                            mp.client_streaming, mp.server_streaming,
                            md.input_type, md.output_type))
    return out


def valid_request(desc, classes):
    """A plausible request: every top-level name-like string set."""
    msg = classes[desc.full_name]()
    for f in desc.fields:
        if f.type == f.TYPE_STRING and f.label != f.LABEL_REPEATED:
            setattr(msg, f.name, HASH if f.name == "constitutional_hash"
                    else "rb")
    return msg


def mutations(desc, classes):
    """(case name, bytes, expected codes or None, message part or None)."""
    FD = desc.fields[0].__class__ if desc.fields else None
    base = valid_request(desc, classes).SerializeToString()
    out = []
    for f in desc.fields:
        n = f.number
        tag = "%s.%s" % (desc.name, f.name)
        if f.type == FD.TYPE_STRING:
            out.append(("nul:" + f.name,
                        base + field_bytes(n, 2, b"r\x00b"),
                        {SC.INVALID_ARGUMENT}, tag + " contains a NUL byte"))
            out.append(("utf8:" + f.name,
                        base + field_bytes(n, 2, b"r\xc3\x28b"),
                        {SC.INVALID_ARGUMENT}, tag + " is not valid UTF-8"))
            out.append(("long:" + f.name,
                        base + field_bytes(n, 2, b"x" * 100000), None, None))
        elif f.type == FD.TYPE_ENUM:
            out.append(("enum99:" + f.name, base + field_bytes(n, 0,
                                                             varint(99)),
                        None, None))
            out.append(("enum-1:" + f.name,
                        base + field_bytes(n, 0, varint((1 << 64) - 1)),
                        None, None))
        elif f.type in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
            fmt = "<d" if f.type == FD.TYPE_DOUBLE else "<f"
            wt = 1 if f.type == FD.TYPE_DOUBLE else 5
            for label, v in (("nan", math.nan), ("inf", math.inf),
                             ("neg", -1.0)):
                out.append(("%s:%s" % (label, f.name),
                            base + field_bytes(n, wt, struct.pack(fmt, v)),
                            None, None))
        elif f.type in (FD.TYPE_INT32, FD.TYPE_INT64):
            out.append(("neg:" + f.name,
                        base + field_bytes(n, 0, varint((1 << 64) - 5)),
                        None, None))
        elif f.type in (FD.TYPE_UINT32, FD.TYPE_UINT64):
            out.append(("huge:" + f.name,
                        base + field_bytes(n, 0, varint((1 << 64) - 1)),
                        None, None))
        elif f.type == FD.TYPE_MESSAGE:
            sub = f.message_type.full_name
            if sub == "google.protobuf.Duration":
                for label, secs in (("negdur", -5), ("hugedur", 10 ** 12)):
                    d = field_bytes(1, 0, varint(secs & ((1 << 64) - 1)))
                    out.append(("%s:%s" % (label, f.name),
                                base + field_bytes(n, 2, d), None, None))
                d = field_bytes(2, 0, varint(2000000000))
                out.append(("badnanos:" + f.name,
                            base + field_bytes(n, 2, d), None, None))
            elif sub in ("google.protobuf.DoubleValue",):
                d = field_bytes(1, 1, struct.pack("<d", math.nan))
                out.append(("nan:" + f.name, base + field_bytes(n, 2, d),
                            None, None))
            elif sub in ("google.protobuf.UInt32Value",):
                d = field_bytes(1, 0, varint(0))
                out.append(("zero:" + f.name, base + field_bytes(n, 2, d),
                            None, None))
            elif not sub.startswith("google.protobuf."):
                # A nested message with a NUL in its first string field.
                for sf in f.message_type.fields:
                    if sf.type == FD.TYPE_STRING:
                        d = field_bytes(sf.number, 2, b"a\x00")
                        out.append(("nul:%s.%s" % (f.name, sf.name),
                                    base + field_bytes(n, 2, d),
                                    {SC.INVALID_ARGUMENT}, "NUL byte"))
                        break
    return out


def generic_cases(desc, classes):
    base = valid_request(desc, classes).SerializeToString()
    cases = [
        ("empty", b"", None, None),
        ("garbage", b"\x0f\xff\xff", {SC.INVALID_ARGUMENT},
         "malformed request"),
        ("badlength", b"\x0a\xff\xff\xff\xff\x0f", {SC.INVALID_ARGUMENT},
         "malformed request"),
        ("oversized", field_bytes(1, 2, b"z" * (5 << 20)),
         {SC.RESOURCE_EXHAUSTED}, None),
    ]
    if len(base) > 2:
        cases.append(("truncated", base[:-1], {SC.INVALID_ARGUMENT},
                      "malformed request"))
    return cases


def raw_h2(afd, path, content_type, body):
    """POSTs body over h2c with nghttp; returns the response headers and
    trailers as text."""
    with tempfile.NamedTemporaryFile(delete=False) as f:
        f.write(body)
        name = f.name
    try:
        r = subprocess.run(
            ["nghttp", "-v", "-t", "5", "-H", "content-type: " + content_type,
             "-H", "te: trailers", "-d", name,
             "http://%s%s" % (afd.address, path)],
            capture_output=True, text=True, timeout=15)
        return r.stdout + r.stderr
    finally:
        os.unlink(name)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--afd", required=True)
    ap.add_argument("--protos", required=True)
    ap.add_argument("--gen", required=True)
    ap.add_argument("--protoc", required=True)
    ap.add_argument("--plugin", required=True)
    args = ap.parse_args()
    afd_harness.generate_stubs(args.protoc, args.plugin, args.protos,
                               args.gen)
    from antifragility.v1 import (breaker_pb2, chaos_pb2, health_pb2,
                                  metering_pb2, recovery_pb2)
    modules = {"breaker": breaker_pb2, "chaos": chaos_pb2,
               "health": health_pb2, "metering": metering_pb2,
               "recovery": recovery_pb2}
    from google.protobuf import message_factory
    classes = {}
    for mod in modules.values():
        for name in mod.DESCRIPTOR.message_types_by_name.values():
            classes[name.full_name] = message_factory.MessageFactory() \
                .GetPrototype(name)

    afd = afd_harness.Afd(args.afd).start()
    r = Runner(afd, modules)
    passed = failed = 0
    try:
        # Some state for bad input to (not) change.
        B = breaker_pb2
        r.ch.unary_unary("/antifragility.v1.BreakerService/RegisterBreaker")(
            B.RegisterBreakerRequest(name="rb").SerializeToString(),
            timeout=CALL_TIMEOUT)
        # A recovery a case schedules must not move by itself later (the
        # digest would change under an unrelated case): MANUAL waits.
        R = recovery_pb2
        r.ch.unary_unary(
            "/antifragility.v1.RecoveryService/SetRecoveryPolicy")(
                R.SetRecoveryPolicyRequest(
                    service_name="rb",
                    policy=R.RecoveryPolicy(
                        strategy=R.RECOVERY_STRATEGY_MANUAL))
                .SerializeToString(), timeout=CALL_TIMEOUT)
        for path, cs, ss, desc, out_desc in methods_of(modules):
            out_cls = classes[out_desc.full_name]
            for name, payload, expect, part in (
                    generic_cases(desc, classes) + mutations(desc, classes)):
                r.case((path, cs, ss, out_cls), name, payload, expect, part)
        # Raw HTTP/2: a frame that promises 100 bytes and brings 10, and a
        # request that is not gRPC at all.
        req = B.GetBreakerRequest(name="rb").SerializeToString()
        before = r.digest()
        out = raw_h2(afd, "/antifragility.v1.BreakerService/GetBreaker",
                     "application/grpc",
                     b"\x00" + struct.pack(">I", 100) + req[:10])
        r.rows.append(("GetBreaker", "h2:truncated-frame",
                       "grpc-status " + (
                           out.split("grpc-status: ")[1].split()[0]
                           if "grpc-status: " in out else "none"), ""))
        out2 = raw_h2(afd, "/antifragility.v1.BreakerService/GetBreaker",
                      "text/plain", req)
        status_line = [ln for ln in out2.splitlines()
                       if ":status:" in ln or "grpc-status:" in ln]
        r.rows.append(("GetBreaker", "h2:wrong-content-type",
                       " ".join(s.split("]")[-1].strip()
                                for s in status_line)[:60], ""))
        r.cases += 2
        # Request metadata beyond the server's limit (16 KiB), and far
        # beyond it (gRPC drops that connection; others carry on).
        for size, want in ((20000, SC.RESOURCE_EXHAUSTED), (100000, None)):
            r.cases += 1
            own = grpc.insecure_channel(  # its connection may be dropped
                afd.address, options=[("grpc.use_local_subchannel_pool", 1)])
            try:
                own.unary_unary("/antifragility.v1.BreakerService/GetBreaker")(
                    req, timeout=CALL_TIMEOUT, metadata=[("x-big", "a" * size)])
                code, details = SC.OK, ""
            except grpc.RpcError as e:
                code, details = e.code(), e.details() or ""
            finally:
                own.close()
            r.rows.append(("GetBreaker", "metadata:%d" % size, code.name,
                           details[:90]))
            if want is not None and code != want:
                r.failures.append("metadata %d: expected %s, got %s" % (
                    size, want.name, code.name))
            if code == SC.OK:
                r.failures.append("metadata %d was accepted" % size)
        if r.digest() != before:
            r.failures.append("raw HTTP/2 cases changed the state")
        # Still serving, still the same state.
        H = health_pb2
        hr = H.GetSystemHealthResponse.FromString(r.ch.unary_unary(
            "/antifragility.v1.HealthService/GetSystemHealth")(
                H.GetSystemHealthRequest().SerializeToString(),
                timeout=CALL_TIMEOUT))
        if hr.ByteSize() == 0:
            r.failures.append("GetSystemHealth after the cases: empty")
    finally:
        r.ch.close()
        code = afd.stop()
    if code != 0:
        r.failures.append("afd exited with %s after the cases" % code)

    print("%-26s %-28s %-20s %s" % ("method", "case", "status", "message"))
    for row in r.rows:
        print("%-26s %-28s %-20s %s" % row)
    print("\ncatalogue (case kind -> status: count)")
    for (kind, code), n in sorted(r.catalogue.items()):
        print("  %-12s %-20s %d" % (kind, code, n))
    for f in r.failures:
        print("FAIL " + f)
    failed = len(r.failures)
    passed = r.cases - min(failed, r.cases)
    if failed:
        print("--- afd log ---")
        print("\n".join(afd.log[-40:]))
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
