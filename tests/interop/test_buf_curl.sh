#!/usr/bin/env bash
# buf curl (npm @bufbuild/buf) against a real afd with NO proto files: every
# schema comes from afd's server reflection. Usage: test_buf_curl.sh AFD SRCDIR
set -euo pipefail
afd=$1
src=$2
"$src/scripts/install-tools.sh"
buf="$src/tools/node_modules/.bin/buf"

log=$(mktemp)
"$afd" --listen 127.0.0.1:0 --memory >/dev/null 2>"$log" &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"; }
trap cleanup EXIT
port=""
for _ in $(seq 1 150); do
  port=$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\).*/\1/p' "$log" | head -1)
  [ -n "$port" ] && break
  sleep 0.1
done
[ -n "$port" ] || { echo "afd did not start:"; cat "$log"; exit 1; }
url="http://127.0.0.1:$port"
curl_() { "$buf" curl --protocol grpc --http2-prior-knowledge "$@"; }

pass=0
fail=0
check() { # check NAME EXPECTED_SUBSTRING OUTPUT
  if grep -qF -- "$2" <<<"$3"; then
    pass=$((pass + 1)); echo "ok   $1"
  else
    fail=$((fail + 1)); echo "FAIL $1: expected '$2' in:"; echo "$3"
  fi
}

out=$(curl_ --list-services "$url")
for s in antifragility.v1.BreakerService antifragility.v1.HealthService \
         antifragility.v1.RecoveryService antifragility.v1.ChaosService \
         antifragility.v1.MeteringService grpc.health.v1.Health \
         grpc.reflection.v1.ServerReflection grpc.reflection.v1alpha.ServerReflection; do
  check "list-services has $s" "$s" "$out"
done
out=$(curl_ --list-methods "$url")
check "list-methods has GetSystemHealth" "antifragility.v1.HealthService/GetSystemHealth" "$out"
check "list-methods has WatchHealth" "antifragility.v1.HealthService/WatchHealth" "$out"
out=$(curl_ --reflect-protocol grpc-v1alpha --list-services "$url")
check "v1alpha reflection lists services" "antifragility.v1.ChaosService" "$out"
out=$(curl_ -d '{"service":""}' "$url/grpc.health.v1.Health/Check")
check "health Check via reflection" '"SERVING"' "$out"
out=$(curl_ -d '{}' "$url/antifragility.v1.HealthService/GetSystemHealth")
check "unary GetSystemHealth" '"HEALTH_STATUS_HEALTHY"' "$out"
out=$(curl_ -d '{"name":"buf-breaker"}' "$url/antifragility.v1.BreakerService/RegisterBreaker")
check "unary RegisterBreaker" 'buf-breaker' "$out"
# A server stream: the first message is the current state; a short deadline
# ends the stream after it (buf exits non-zero on DEADLINE_EXCEEDED).
out=$(curl_ --connect-timeout 5 --timeout 1s -d '{}' "$url/antifragility.v1.HealthService/WatchHealth" 2>&1 || true)
check "server stream WatchHealth first message" '"sequence"' "$out"
out=$(curl_ -d '{"name":"nope"}' "$url/antifragility.v1.BreakerService/GetBreaker" 2>&1 || true)
check "error status via buf" 'not_found' "$out"

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
