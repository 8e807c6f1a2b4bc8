"""Shared helpers for the interop suite: stub generation and an afd process.

Runs under Debian's /usr/bin/python3 (python3-grpcio). Nothing here talks to
anything but 127.0.0.1.
"""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
import time

GRPC_PROTO_DIR = "/usr/share/grpc-proto"


def generate_stubs(protoc, plugin, proto_root, out_dir):
    """Generates *_pb2.py / *_pb2_grpc.py for our protos and for grpc's
    health and reflection protos into out_dir, and puts out_dir on sys.path.

    grpc's own protos are generated under out_dir/grpcproto so that their
    package path (grpc.health.v1) cannot shadow the grpcio package; they are
    loaded by file path (see load_module)."""
    os.makedirs(out_dir, exist_ok=True)
    ours = sorted(
        os.path.join("antifragility", "v1", f)
        for f in os.listdir(os.path.join(proto_root, "antifragility", "v1"))
        if f.endswith(".proto"))
    subprocess.run(
        [protoc, "-I" + proto_root, "-I/usr/include",
         "--python_out=" + out_dir, "--grpc_python_out=" + out_dir,
         "--plugin=protoc-gen-grpc_python=" + plugin] + ours,
        check=True)
    extra = os.path.join(out_dir, "grpcproto")
    os.makedirs(extra, exist_ok=True)
    subprocess.run(
        [protoc, "-I" + GRPC_PROTO_DIR, "--python_out=" + extra,
         "grpc/health/v1/health.proto",
         "grpc/reflection/v1/reflection.proto",
         "grpc/reflection/v1alpha/reflection.proto"],
        check=True)
    for d, _, _ in os.walk(os.path.join(out_dir, "antifragility")):
        init = os.path.join(d, "__init__.py")
        if not os.path.exists(init):
            open(init, "w").close()
    if out_dir not in sys.path:
        sys.path.insert(0, out_dir)


def load_module(name, path):
    """Loads a generated module by file path under a private name."""
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Afd:
    """An afd process listening on 127.0.0.1:<free port>, in-memory state.

    The port is read from afd's own "listening on" log line, so the test
    never guesses a free port."""

    LISTEN_RE = re.compile(r"listening on (\S+):(\d+)")

    def __init__(self, binary, extra_args=()):
        self.binary = binary
        self.extra_args = list(extra_args)
        self.proc = None
        self.port = None
        self.log = []
        self._reader = None

    def start(self, timeout=15.0):
        args = [self.binary, "--listen", "127.0.0.1:0", "--memory",
                "--log-level", "info"] + self.extra_args
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        found = threading.Event()

        def read():
            for line in self.proc.stderr:
                self.log.append(line.rstrip("\n"))
                m = self.LISTEN_RE.search(line)
                if m and self.port is None:
                    self.port = int(m.group(2))
                    found.set()

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if not found.wait(timeout):
            self.stop()
            raise RuntimeError("afd did not report its port:\n" +
                               "\n".join(self.log))
        return self

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def stop(self, sig=signal.SIGTERM, timeout=15.0):
        """Stops afd with sig and returns its exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        code = self.proc.returncode
        self.proc = None
        return code


def wait_for(pred, timeout=5.0, interval=0.01):
    """Polls pred() until it is truthy or timeout passes; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() > deadline:
            return v
        time.sleep(interval)
