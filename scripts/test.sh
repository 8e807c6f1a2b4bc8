#!/usr/bin/env bash
# The whole test suite, from nothing: installs what is missing, builds with
# warnings as errors, runs every ctest label, then builds again with
# ASan+UBSan and runs the suite under the sanitizers, then runs each
# libFuzzer harness for AF_FUZZ_SECONDS (30) (scripts/fuzz.sh).
#
#   scripts/test.sh            everything (default)
#   AF_TEST_FAST=1 scripts/test.sh   skip the sanitizer and fuzzing passes
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
scripts/install-tools.sh

jobs=$(nproc)
passed=0
# Adds the number of tests a ctest run passed (its "out of N" line) to
# $passed; the run itself fails the script if any test failed.
count() { passed=$((passed + $(grep -oE 'out of [0-9]+' "$1" | tail -1 | grep -oE '[0-9]+'))); }

echo "== build (warnings as errors) =="
cmake -S . -B build/release -G Ninja -DAF_WERROR=ON \
      -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$jobs"
echo "== tests =="
ctest --test-dir build/release --output-on-failure -j "$jobs" -LE 'soak|slow' |
  tee build/release/ctest.out
count build/release/ctest.out

if [ "${AF_TEST_FAST:-0}" != 1 ]; then
  echo "== build (ASan + UBSan) =="
  cmake -S . -B build/asan -G Ninja -DAF_WERROR=ON -DAF_SANITIZE=ON \
        -DCMAKE_BUILD_TYPE=Debug >/dev/null
  cmake --build build/asan -j "$jobs"
  echo "== tests under ASan + UBSan =="
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir build/asan --output-on-failure -j "$jobs" -LE 'soak|slow|bench' |
    tee build/asan/ctest.out
  count build/asan/ctest.out
fi
if [ "${AF_TEST_FAST:-0}" != 1 ]; then
  echo "== fuzzing (libFuzzer, ASan + UBSan) =="
  AF_FUZZ_SECONDS=${AF_FUZZ_SECONDS:-30} scripts/fuzz.sh
  passed=$((passed + 3)) # the three harnesses
fi
echo "== all tests passed =="
echo "suite: $passed passed, 0 failed"
