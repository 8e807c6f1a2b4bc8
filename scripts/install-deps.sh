#!/usr/bin/env bash
# Installs every Debian package the build, the tests and the server need.
# Idempotent: runs apt-get only when something is missing. Needs root.
set -euo pipefail

PKGS=(
  build-essential cmake ninja-build pkg-config clang libclang-rt-14-dev
  libgrpc-dev libprotobuf-dev protobuf-compiler protobuf-c-compiler libprotobuf-c-dev
  nanopb libnanopb-dev libcmocka-dev grpc-proto libsqlite3-dev
  python3-grpcio python3-grpc-tools protobuf-compiler-grpc
  nghttp2-client openssl python3-h2 valgrind
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  if [ "$(id -u)" -ne 0 ]; then
    echo "install-deps: missing packages and not root; run as root" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Node.js + npm are only needed for the `buf curl` reflection check; the
# machine image ships them. Install Debian's only where neither exists.
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm || true
  fi
fi
