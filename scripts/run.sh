#!/usr/bin/env bash
# Installs what is missing, builds, and starts the server on its defaults
# (127.0.0.1:50051). Extra arguments go to the server: scripts/run.sh --help
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh
cmake -S . -B build/release -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build/release -j "$(nproc)"
if [ -x build/release/server/afd ]; then
  exec build/release/server/afd "$@"
fi
echo "afd is not built yet; running the core self-check instead" >&2
exec ctest --test-dir build/release -L unit --output-on-failure
