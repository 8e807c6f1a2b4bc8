#!/usr/bin/env bash
# Builds the libFuzzer harnesses (clang, ASan + UBSan) into build/fuzz,
# writes the seed corpora and runs each harness for a bounded time.
#
#   scripts/fuzz.sh                 30 s per harness
#   AF_FUZZ_SECONDS=600 scripts/fuzz.sh
#
# Inputs that once failed (tests/fuzz/regressions/<harness>/) are replayed
# first. A crash stops the run with libFuzzer's report and the input under
# build/fuzz/artifacts/ (add it to regressions/ with the fix); the corpora
# grow in build/fuzz/corpus/ across runs.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${AF_FUZZ_SECONDS:-30}
out=build/fuzz
CC=clang cmake -S . -B "$out" -G Ninja -DAF_FUZZ=ON \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$out" -j "$(nproc)" --target fuzz_seeds fuzz_decode \
  fuzz_client_decode fuzz_afd
mkdir -p "$out/corpus/requests" "$out/corpus/responses" \
  "$out/corpus/afd" "$out/artifacts"
"$out/tests/fuzz/fuzz_seeds" "$out/corpus/requests" "$out/corpus/responses"
cp -n "$out"/corpus/requests/seed-* "$out/corpus/afd/" 2>/dev/null || true

# UBSan reports are fatal, as in the ASan suite.
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1

# Every input that once crashed a harness (tests/fuzz/regressions/<harness>/)
# is replayed first: a fix that regresses fails here, before any fuzzing.
replay() {
  local name=$1
  shift
  local dir=tests/fuzz/regressions/$name
  [ -d "$dir" ] || return 0
  echo "== $name: replaying $(ls "$dir" | wc -l) regression input(s) =="
  "$out/tests/fuzz/$name" "$@" "$dir"/* >"$out/$name.replay.log" 2>&1 || {
    tail -40 "$out/$name.replay.log"
    echo "fuzz: $name regression input failed" >&2
    exit 1
  }
}

run() {
  local name=$1 corpus=$2
  shift 2
  echo "== $name: ${secs}s =="
  "$out/tests/fuzz/$name" -max_total_time="$secs" -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$name-" -timeout=20 "$@" \
    "$out/corpus/$corpus" 2>"$out/$name.log" || {
    tail -60 "$out/$name.log"
    echo "fuzz: $name failed (log: $out/$name.log)" >&2
    exit 1
  }
  grep -E 'stat::number_of_executed_units|stat::peak_rss_mb' "$out/$name.log" |
    sed "s/^/  $name /"
}
ASAN_OPTIONS=detect_leaks=1 replay fuzz_decode
ASAN_OPTIONS=detect_leaks=1 replay fuzz_client_decode
ASAN_OPTIONS=detect_leaks=0 replay fuzz_afd -detect_leaks=0
ASAN_OPTIONS=detect_leaks=1 run fuzz_decode requests
ASAN_OPTIONS=detect_leaks=1 run fuzz_client_decode responses
ASAN_OPTIONS=detect_leaks=0 run fuzz_afd afd -detect_leaks=0
echo "== fuzzing passed =="
