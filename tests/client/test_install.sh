#!/usr/bin/env bash
# test_install.sh BUILD_DIR SOURCE_DIR AFD
# The "outside the tree" check: installs the build into a temporary prefix,
# builds client/examples/afclient_example.c against it twice (pkg-config,
# and CMake find_package(afclient)), and runs both against a real afd.
set -euo pipefail
build=$1 src=$2 afd=$3
tmp=$(mktemp -d)
afd_pid=
cleanup() {
  if [ -n "$afd_pid" ]; then kill "$afd_pid" 2>/dev/null || true; wait "$afd_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT

cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
export PKG_CONFIG_PATH=$tmp/prefix/lib/pkgconfig
mkdir "$tmp/app"
cp "$src/client/examples/afclient_example.c" "$tmp/app/"

# 1. pkg-config
cc -Wall -Wextra -Werror "$tmp/app/afclient_example.c" \
   $(pkg-config --cflags --libs afclient) \
   -Wl,-rpath,"$(pkg-config --variable=libdir afclient)" -o "$tmp/app/example_pc"

# 2. CMake package
cat > "$tmp/app/CMakeLists.txt" <<'CM'
cmake_minimum_required(VERSION 3.16)
project(example C)
find_package(afclient 0.1 REQUIRED)
add_executable(example_cmake afclient_example.c)
target_link_libraries(example_cmake PRIVATE afclient::afclient)
CM
cmake -S "$tmp/app" -B "$tmp/app/build" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/app/build" >/dev/null

# A real server on a free port.
"$afd" --listen 127.0.0.1:0 --memory --log-level info 2>"$tmp/afd.log" &
afd_pid=$!
port=
for _ in $(seq 100); do
  port=$(sed -n 's/.*listening on 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$tmp/afd.log" | head -1)
  [ -n "$port" ] && break
  sleep 0.05
done
[ -n "$port" ] || { echo "afd did not start"; cat "$tmp/afd.log"; exit 1; }

for bin in "$tmp/app/example_pc" "$tmp/app/build/example_cmake"; do
  out=$("$bin" "127.0.0.1:$port")
  echo "$out"
  grep -q 'guard payments: 10 passed, 0 rejected, state CLOSED' <<<"$out"
  grep -q 'server health score 1.00' <<<"$out"
  grep -q 'shutdown: 0 metering events unsent' <<<"$out"
done
echo "install test: ok"
