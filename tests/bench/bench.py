#!/usr/bin/env python3
"""Runs every benchmark, prints the tables and writes one result file.

    bench.py --bin DIR [--out FILE] [--quick] [--rounds N] [--only PARTS]

DIR holds bench_core, bench_server and bench_watch (build/release/tests/bench).
PARTS is a comma list of core, rpc, watch, scale, instr (default: all).

RPC: each round starts the bare gRPC core echo server, afd's framework with
empty handlers, and afd itself (one at a time, same flags), and drives each
RPC with h2load: first at full speed (throughput), then at half of the
throughput just measured (latency percentiles from h2load's per-request
log). h2load counts HTTP 200 and ignores grpc-status, so after every h2load
run the server's own count of OK statuses must have grown by exactly the
number of requests h2load completed, with no other status: anything else
fails the benchmark. Figures are medians over rounds; the servers are
interleaved within a round so a change in background load hits all three.

Watch: a fresh afd per watcher count; bench_watch does the measuring.

Exit status: 0 all budgets met, 1 a budget missed, 2 a benchmark failed.
Standard library only.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RPCS = [
    ("ReportOutcome", "/antifragility.v1.BreakerService/ReportOutcome",
     "report_outcome.bin"),
    ("GetSystemHealth", "/antifragility.v1.HealthService/GetSystemHealth",
     "get_system_health.bin"),
    ("RecordUsage", "/antifragility.v1.MeteringService/RecordUsage",
     "record_usage.bin"),
]
SERVERS = ["echo", "fwecho", "afd"]
# h2load shape for throughput: 1 thread, 4 connections x 32 streams (the
# plateau on 2 cores, see the gRPC notes section 10).
H2_CLIENTS, H2_STREAMS = 4, 32

results = []
failures = []


def add(group, name, param, value, unit, budget=None, higher=False,
        spread=None):
    verdict = ""
    if budget is not None:
        ok = value >= budget if higher else value <= budget
        verdict = "met" if ok else "MISSED"
    results.append(dict(group=group, name=name, param=param, value=value,
                        spread=spread, unit=unit, budget=budget,
                        higher_is_better=higher, verdict=verdict))


class Server:
    """A bench_server process driven over its stdin."""

    def __init__(self, bin_dir, mode, args=(), wrapper=()):
        self.p = subprocess.Popen(
            [*wrapper, os.path.join(bin_dir, "bench_server"), mode, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.p.stdout.readline().split()
        if len(line) < 4 or line[0] != "port":
            raise RuntimeError(f"bench_server {mode} did not start: {line}")
        self.port, self.pid = int(line[1]), int(line[3])

    def cmd(self, text):
        self.p.stdin.write(text + "\n")
        self.p.stdin.flush()
        return self.p.stdout.readline().strip()

    def stats(self):
        return json.loads(self.cmd("stats"))

    def cpu_ns(self):
        """CPU time of every thread of the server so far (schedstat, ns)."""
        total = 0
        task_dir = f"/proc/{self.pid}/task"
        for tid in os.listdir(task_dir):
            try:
                with open(f"{task_dir}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except OSError:
                pass  # thread ended meanwhile
        return total

    def stop(self):
        self.p.stdin.write("quit\n")
        self.p.stdin.flush()
        self.p.wait(timeout=60)


def h2load(port, path, body, n, rps=None, log=None, clients=H2_CLIENTS,
           streams=H2_STREAMS):
    cmd = ["h2load", "-t", "1", "-c", str(clients), "-m", str(streams),
           "-n", str(n), "-d", body, "-H", "content-type: application/grpc",
           "-H", "te: trailers"]
    if rps:
        cmd += [f"--rps={max(1, int(rps))}"]
    if log:
        cmd += [f"--log-file={log}"]
    cmd.append(f"http://127.0.0.1:{port}{path}")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    text = out.stdout + out.stderr
    m = re.search(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s", text)
    d = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, "
                  r"(\d+) succeeded, (\d+) failed", text)
    if not m or not d:
        raise RuntimeError("cannot parse h2load output:\n" + text)
    return dict(rps=float(m.group(3)), done=int(d.group(3)),
                succeeded=int(d.group(4)), failed=int(d.group(5)),
                cmd=" ".join(cmd))


def checked_h2load(srv, label, path, body, n, **kw):
    """h2load plus the server-side check that every request got OK."""
    before = srv.stats()
    cpu0 = srv.cpu_ns()
    r = h2load(srv.port, path, body, n, **kw)
    r["cpu_us_per_req"] = (srv.cpu_ns() - cpu0) / 1000.0 / max(r["done"], 1)
    # A server counts a call when its final batch completes, which can be
    # a moment after h2load saw the response: let the counts settle
    # (bounded) before comparing, so the next run's "before" is clean too.
    deadline = time.monotonic() + 2.0
    while True:
        after = srv.stats()
        ok = after["ok"] - before["ok"]
        bad = after["failed"] - before["failed"]
        if (ok + bad >= r["done"] and bad == 0) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if bad != 0 or ok != r["done"] or r["succeeded"] != r["done"]:
        failures.append(f"{label}: h2load done={r['done']} "
                        f"succeeded={r['succeeded']}, server OK={ok} "
                        f"non-OK={bad}")
    return r


def percentiles(log):
    lat = []
    with open(log) as f:
        for line in f:
            cols = line.split("\t")
            if len(cols) >= 3:
                lat.append(int(cols[2]))
    lat.sort()
    if not lat:
        return None

    def pct(p):
        return lat[min(len(lat) - 1, int(p / 100.0 * len(lat)))] / 1000.0

    return dict(p50=pct(50), p90=pct(90), p99=pct(99), p999=pct(99.9),
                max=lat[-1] / 1000.0)


def run_core(args, out_dir):
    path = os.path.join(out_dir, "core.jsonl")
    cmd = [os.path.join(args.bin, "bench_core"), "--json", path]
    cmd += ["--quick"] if args.quick else ["--runs", str(args.runs)]
    rc = subprocess.run(cmd).returncode
    if rc not in (0, 1):
        failures.append(f"bench_core exited {rc}")
    load_jsonl(path)


def load_jsonl(path):
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                results.append(json.loads(line))


def latency_at_half(srv, label, path, body, target_rps, seconds, tmp,
                    quick=False):
    """Closed loop on one connection with the fewest streams in flight that
    reach half of the maximum throughput; percentiles from h2load's log.

    Not h2load --rps: it paces each client with a timer of at least 10 ms,
    so requests leave in bursts and the percentiles measure the bursts."""
    best = None
    for m in (1, 4) if quick else (1, 2, 3, 4, 6, 8, 12, 16, 24, 32):
        log = os.path.join(tmp, "lat.log")
        if os.path.exists(log):
            os.unlink(log)
        nreq = max(int(target_rps * seconds), 200)
        r = checked_h2load(srv, label, path, body, nreq, log=log, clients=1,
                           streams=m)
        p = percentiles(log)
        if p is None:
            continue
        best = dict(p, streams=m, rps=r["rps"], cmd=r["cmd"])
        if r["rps"] >= target_rps:
            break
    return best


def run_rpc(args, bodies, rounds, n):
    thr = {(s, r[0]): [] for s in SERVERS for r in RPCS}
    cpu = {(s, r[0]): [] for s in SERVERS for r in RPCS}
    ratios = {(s, r[0]): [] for s in SERVERS for r in RPCS}
    cmds = {}
    # All three servers run at once (idle when not loaded) and are loaded in
    # turn, run after run, so a change in background load hits each of them
    # within seconds; ratios compare runs of the same repetition.
    servers = {mode: Server(args.bin, mode) for mode in SERVERS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for name, path, body in RPCS:
                b = os.path.join(bodies, body)
                for mode, srv in servers.items():
                    # warm-up: connections, allocator, breaker creation
                    checked_h2load(srv, f"{mode} {name}", path, b,
                                   max(n // 10, 100))
                for rep in range(rounds):
                    order = SERVERS[rep % 3:] + SERVERS[:rep % 3]
                    got = {}
                    for mode in order:
                        r = checked_h2load(servers[mode], f"{mode} {name}",
                                           path, b, n)
                        got[mode] = r["rps"]
                        thr[(mode, name)].append(r["rps"])
                        cpu[(mode, name)].append(r["cpu_us_per_req"])
                        cmds[f"throughput {name}"] = r["cmd"]
                    for mode in SERVERS:
                        ratios[(mode, name)].append(got[mode] / got["echo"])
                    print(f"{name:15s} rep {rep}: " + ", ".join(
                        f"{m} {got[m]:.0f} req/s "
                        f"{cpu[(m, name)][-1]:.1f} us/req" for m in SERVERS),
                        flush=True)
                for mode in SERVERS:
                    v = statistics.median(thr[(mode, name)])
                    add("rpc", f"{name} throughput", f"server={mode}", v,
                        "req/s", spread=min(thr[(mode, name)]))
                for mode in SERVERS:
                    v = statistics.median(cpu[(mode, name)])
                    add("rpc", f"{name} server CPU per request",
                        f"server={mode}", v, "us",
                        spread=min(cpu[(mode, name)]))
                for mode in ("fwecho", "afd"):
                    rs = ratios[(mode, name)]
                    add("rpc", f"{name} throughput {mode}/echo",
                        f"server={mode}", statistics.median(rs), "ratio",
                        budget=0.9 if (mode == "afd" and
                                       name == "ReportOutcome") else None,
                        higher=True, spread=min(rs))
                for mode in SERVERS:
                    half = statistics.median(thr[(mode, name)]) / 2
                    lat = latency_at_half(servers[mode], f"{mode} {name}",
                                          path, b, half,
                                          0.02 if args.quick else 2.0, tmp,
                                          args.quick)
                    if lat is None:
                        continue
                    cmds[f"latency {name} {mode}"] = lat["cmd"]
                    print(f"{name:15s} {mode:6s} at {lat['rps']:.0f} req/s "
                          f"(-m {lat['streams']}): p50 {lat['p50']:.3f} "
                          f"p99 {lat['p99']:.3f} p99.9 {lat['p999']:.3f} ms",
                          flush=True)
                    param = f"server={mode} m={lat['streams']}"
                    for key, label in (("p50", "p50"), ("p99", "p99"),
                                       ("p999", "p99.9")):
                        budget = 1.0 if (mode == "afd" and key == "p99" and
                                         name == "ReportOutcome") else None
                        add("rpc", f"{name} {label} at half max throughput",
                            param, lat[key], "ms", budget=budget,
                            spread=lat["rps"] if key == "p50" else None)
    finally:
        for srv in servers.values():
            srv.stop()
    return cmds


def run_watch(args, counts, rounds):
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            srv = Server(args.bin, "afd", ["--heartbeat-ms", "0",
                                           "--max-watchers", "20000"])
            path = os.path.join(tmp, f"watch-{n}.jsonl")
            try:
                rc = subprocess.run(
                    [os.path.join(args.bin, "bench_watch"), "--port",
                     str(srv.port), "--pid", str(srv.pid), "--watchers",
                     str(n), "--rounds", str(rounds), "--json", path],
                    timeout=600).returncode
                if rc not in (0, 1):
                    failures.append(f"bench_watch {n} exited {rc}")
            finally:
                srv.stop()
            load_jsonl(path)


def run_scale(args, bodies, n):
    """Throughput of an RPC as the server holds more breakers / tenants."""
    dims = [
        ("breakers", "GetSystemHealth", [10, 1000, 10000]),
        ("breakers", "ReportOutcome", [10, 10000, 100000]),
        ("tenants", "RecordUsage", [1, 1000, 100000]),
    ]
    if args.quick:
        dims = [(d, r, [10]) for d, r, _ in dims]
    rpc = {name: (path, body) for name, path, body in RPCS}
    for dim, name, sizes in dims:
        path, body = rpc[name]
        b = os.path.join(bodies, body)
        for size in sizes:
            srv = Server(args.bin, "afd")
            try:
                # ReportOutcome auto-registers its own breaker: size in all
                # (afd's default limit is 100000 breakers).
                fill = size - 1 if name == "ReportOutcome" else size
                if srv.cmd(f"{dim} {fill}") != "done":
                    failures.append(f"populate {dim} {size}")
                label = f"afd {name} {dim}={size}"
                checked_h2load(srv, label, path, b, max(n // 20, 100))
                vals = [checked_h2load(srv, label, path, b, n)["rps"]
                        for _ in range(1 if args.quick else 3)]
                add("scale", f"{name} throughput", f"{dim}={size}",
                    statistics.median(vals), "req/s", spread=min(vals))
                print(f"scale {name} {dim}={size}: "
                      f"{statistics.median(vals):.0f} req/s", flush=True)
            finally:
                srv.stop()


def run_scale_watchers(args, bodies, n):
    """ReportOutcome on a server that holds N idle WatchHealth streams."""
    sizes = [0, 50] if args.quick else [0, 1000, 10000]
    name, path, body = RPCS[0]
    b = os.path.join(bodies, body)
    for size in sizes:
        srv = Server(args.bin, "afd", ["--heartbeat-ms", "0",
                                       "--max-watchers", "20000"])
        watch = None
        try:
            if size:
                watch = subprocess.Popen(
                    [os.path.join(args.bin, "bench_watch"), "--port",
                     str(srv.port), "--pid", str(srv.pid), "--watchers",
                     str(size), "--rounds", "1", "--hold-ms",
                     str(1500 if args.quick else 20000)],
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                    text=True)
                for line in watch.stdout:
                    if line.strip() == "holding":
                        break
            label = f"afd {name} watchers={size}"
            checked_h2load(srv, label, path, b, max(n // 20, 100))
            runs = [checked_h2load(srv, label, path, b, n)
                    for _ in range(1 if args.quick else 3)]
            rps = statistics.median(r["rps"] for r in runs)
            cpu = statistics.median(r["cpu_us_per_req"] for r in runs)
            add("scale", f"{name} throughput", f"idle watchers={size}", rps,
                "req/s", spread=min(r["rps"] for r in runs))
            add("scale", f"{name} server CPU per request",
                f"idle watchers={size}", cpu, "us")
            print(f"scale {name} idle watchers={size}: {rps:.0f} req/s, "
                  f"{cpu:.1f} us/req", flush=True)
        finally:
            if watch is not None:
                watch.stdout.read()
                watch.wait(timeout=120)
            srv.stop()


def run_instructions(args, bodies):
    """User-space instructions per request under callgrind: immune to the
    background load that moves every timing on a shared machine."""
    if not shutil.which("valgrind"):
        failures.append("valgrind not installed (scripts/install-deps.sh)")
        return
    n = 500 if args.quick else 10000
    with tempfile.TemporaryDirectory() as tmp:
        for name, path, body in RPCS:
            b = os.path.join(bodies, body)
            per = {}
            for mode in SERVERS:
                out = os.path.join(tmp, f"{mode}-{name}.cg")
                srv = Server(args.bin, mode, wrapper=[
                    "valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={out}"])
                try:
                    label = f"{mode} {name} (callgrind)"
                    checked_h2load(srv, label, path, b, max(n // 5, 100),
                                   clients=1, streams=8)
                    ctl = ["callgrind_control"]
                    subprocess.run(ctl + ["-i", "on", str(srv.pid)],
                                   capture_output=True)
                    checked_h2load(srv, label, path, b, n, clients=1,
                                   streams=8)
                    subprocess.run(ctl + ["-d", str(srv.pid)],
                                   capture_output=True)
                    subprocess.run(ctl + ["-i", "off", str(srv.pid)],
                                   capture_output=True)
                finally:
                    srv.stop()
                total = 0  # the dump taken with -d (file .1)
                dump = os.path.join(tmp, f"{mode}-{name}.cg.1")
                if os.path.exists(dump):
                    with open(dump) as fh:
                        for line in fh:
                            if line.startswith("totals:"):
                                total = int(line.split()[1])
                per[mode] = total / n
                add("instr", f"{name} instructions per request",
                    f"server={mode}", per[mode], "instr")
            for mode in ("fwecho", "afd"):
                if per.get("echo"):
                    add("instr", f"{name} instructions {mode}/echo",
                        f"server={mode}", per[mode] / per["echo"], "ratio")
            print(f"{name:15s} instructions/request: " + ", ".join(
                f"{m} {per[m]:.0f}" for m in SERVERS), flush=True)


def fmt(v):
    if v is None:
        return ""
    if isinstance(v, float) and (v != v):
        return ""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def print_tables():
    groups = []
    for r in results:
        if r["group"] not in groups:
            groups.append(r["group"])
    for g in groups:
        print(f"\n== {g} ==")
        print(f"{'benchmark':52s} {'param':22s} {'median':>12s} "
              f"{'other':>10s} {'unit':7s} {'budget':>9s}")
        for r in results:
            if r["group"] != g:
                continue
            b = r.get("budget")
            bs = "" if b is None else \
                (">=" if r.get("higher_is_better") else "<=") + fmt(b)
            print(f"{r['name']:52s} {r['param']:22s} {fmt(r['value']):>12s} "
                  f"{fmt(r.get('spread')):>10s} {r['unit']:7s} {bs:>9s} "
                  f"{r.get('verdict', '')}")
    print("\n== budgets ==")
    for r in results:
        if r.get("budget") is not None:
            print(f"{r['verdict']:7s} {r['name']} [{r['param']}]: "
                  f"{fmt(r['value'])} {r['unit']} (budget "
                  f"{'>=' if r.get('higher_is_better') else '<='}"
                  f"{fmt(r['budget'])})")


def write_markdown(path, info):
    """The same tables as Markdown (pasted into BENCHMARKS.md)."""
    def row(r):
        b = r.get("budget")
        bs = "" if b is None else \
            ("≥ " if r.get("higher_is_better") else "≤ ") + fmt(b)
        return (f"| {r['name']} | {r['param']} | {fmt(r['value'])} | "
                f"{fmt(r.get('spread'))} | {r['unit']} | {bs} | "
                f"{r.get('verdict', '')} |")

    head = ("| benchmark | param | median | other | unit | budget | |\n"
            "|---|---|---:|---:|---|---|---|")
    out = [f"Machine: {info.get('cpu', '?')}, {info.get('cpus')} CPUs, "
           f"kernel {info.get('kernel')}, load average at start "
           f"{' '.join(info.get('loadavg_start', []))}, at end "
           f"{' '.join(info.get('loadavg_end', []))}.", ""]
    out += ["### Budgets", "", head]
    out += [row(r) for r in results if r.get("budget") is not None]
    groups = []
    for r in results:
        if r["group"] not in groups:
            groups.append(r["group"])
    for g in groups:
        out += ["", f"### {g}", "", head]
        out += [row(r) for r in results if r["group"] == g]
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def machine():
    info = dict(host=platform.node(), kernel=platform.release(),
                cpus=os.cpu_count())
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/loadavg") as f:
            info["loadavg_start"] = f.read().split()[:3]
        info["h2load"] = subprocess.run(
            ["h2load", "--version"], capture_output=True,
            text=True).stdout.strip()
    except OSError:
        pass
    return info


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", default="build/bench-results.json")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--only", default="core,rpc,watch,scale,instr")
    args = ap.parse_args()
    parts = args.only.split(",")
    rounds = 1 if args.quick else args.rounds
    n = 2000 if args.quick else args.requests
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    info = machine()
    commands = {}
    with tempfile.TemporaryDirectory() as out_dir:
        bodies = os.path.join(out_dir, "bodies")
        subprocess.run([os.path.join(args.bin, "bench_server"), "bodies",
                        bodies], check=True)
        try:
            if "core" in parts:
                run_core(args, out_dir)
            if "rpc" in parts:
                commands.update(run_rpc(args, bodies, rounds, n))
            if "watch" in parts:
                counts = [50] if args.quick else [100, 1000, 10000]
                run_watch(args, counts, 2 if args.quick else 5)
            if "scale" in parts:
                run_scale(args, bodies, n)
                run_scale_watchers(args, bodies, n)
            if "instr" in parts:
                run_instructions(args, bodies)
        except (RuntimeError, subprocess.SubprocessError, OSError) as e:
            failures.append(str(e))
    try:
        with open("/proc/loadavg") as f:
            info["loadavg_end"] = f.read().split()[:3]
    except OSError:
        pass
    print_tables()
    doc = dict(started=started,
               finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               machine=info, quick=args.quick, rounds=rounds,
               requests=n, h2load_commands=commands, failures=failures,
               results=results)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=1)
    md = os.path.splitext(args.out)[0] + ".md"
    write_markdown(md, info)
    print(f"\nresults: {args.out} (tables as Markdown: {md})")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 2
    if args.quick:
        return 0
    return 1 if any(r.get("verdict") == "MISSED" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
