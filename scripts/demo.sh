#!/usr/bin/env bash
# `make demo`: starts nginx on 127.0.0.1 with the host and the echo runtime, makes real calls
# with curl, prints what came back, and stops nginx. (The gRPC demo replaces this once the gRPC
# layer lands.)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
libdir="$repo/target/release"
prefix="$repo/target/demo"
port=${DEMO_PORT:-18480}

rm -rf "$prefix"
mkdir -p "$prefix/conf" "$prefix/logs" "$prefix/tmp"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@REPO@|$repo|g" -e "s|@LIBDIR@|$libdir|g" \
    -e "s|@PORT@|$port|g" "$repo/demo/nginx.conf.in" >"$prefix/conf/nginx.conf"
[ "$(id -u)" -eq 0 ] && sed -i '1i user root;' "$prefix/conf/nginx.conf"

LD_LIBRARY_PATH="$libdir" nginx -p "$prefix" -c "$prefix/conf/nginx.conf" &
nginx_pid=$!
stop() {
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
}
trap stop EXIT

for _ in $(seq 100); do
  curl -fs -o /dev/null "http://127.0.0.1:$port/echo" -d x 2>/dev/null && break
  sleep 0.1
done

run() {
  echo "\$ $*"
  "$@"
  echo
}
base="http://127.0.0.1:$port"
run curl -s "$base/echo" --data-binary 'hello from nginx Lua, through a Rust thread'
run curl -s "$base/rc"
run curl -s "$base/timeout"
run curl -s "$base/loop"

stop
trap - EXIT
if grep -E '\[(alert|crit|emerg|error)\]' "$prefix/logs/error.log"; then
  echo "demo: error.log has errors (above)" >&2
  exit 1
fi
echo "demo: nginx stopped; error.log clean ($prefix/logs/error.log)"
