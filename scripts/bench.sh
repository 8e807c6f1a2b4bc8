#!/usr/bin/env bash
# Every benchmark, one command: builds the release tree (warnings as
# errors, RelWithDebInfo), runs the core micro-benchmarks, the RPC
# benchmark (h2load against the bare gRPC core echo server, afd's
# framework with empty handlers and afd, in the same run), the WatchHealth
# fan-out and the scaling tables; prints the tables and writes
# build/bench-results.json. See tests/bench/ and BENCHMARKS.md.
#
#   scripts/bench.sh                       everything (about 10 minutes)
#   scripts/bench.sh --only core,watch     some parts (core rpc watch scale)
#   scripts/bench.sh --quick               smoke run: tiny counts, seconds
#   scripts/bench.sh --rounds 5 --runs 5   repetitions (medians are quoted)
#
# Exit status: 0 every budget met, 1 a budget missed, 2 a benchmark failed
# (e.g. a request the server did not answer with OK).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

cmake -S . -B build/release -G Ninja -DAF_WERROR=ON \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$(nproc)" \
      --target bench_core bench_server bench_watch

exec python3 tests/bench/bench.py --bin build/release/tests/bench \
     --out build/bench-results.json "$@"
