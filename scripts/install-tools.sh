#!/usr/bin/env bash
# Installs test-time tools that come from npm (buf, for `buf curl` reflection
# checks) into tools/node_modules. Never committed. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/../tools"
if [ ! -x node_modules/.bin/buf ]; then
  npm install --no-audit --no-fund --no-package-lock >/dev/null 2>&1 ||
    npm install --no-audit --no-fund --no-package-lock
fi
node_modules/.bin/buf --version >/dev/null
