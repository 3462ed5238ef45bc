#!/usr/bin/env bash
# `make demo`: starts the demo gRPC server (Greeter, RouteGuide) and nginx on 127.0.0.1, calls
# unary and streaming gRPC locations (resty.grpc_zc, Lua tables), bad input refused with clear
# errors, and the host's echo runtime with curl, prints what came back and the runtime's own
# error-log lines, and stops both.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
libdir="$repo/target/release"
prefix="$repo/target/demo"
port=${DEMO_PORT:-18480}

rm -rf "$prefix"
mkdir -p "$prefix/conf" "$prefix/logs" "$prefix/tmp"

# The demo gRPC service (testkit's grpc-test-server: helloworld.Greeter, routeguide.RouteGuide
# and zctest.Test).
"$libdir/grpc-test-server" --listen 127.0.0.1:0 >"$prefix/logs/grpc.out" 2>&1 &
grpc_pid=$!
for _ in $(seq 100); do
  grpc_addr=$(sed -n 's/^listening //p' "$prefix/logs/grpc.out")
  [ -n "$grpc_addr" ] && break
  sleep 0.1
done
[ -n "$grpc_addr" ] || { echo "demo: the gRPC server did not start" >&2; cat "$prefix/logs/grpc.out" >&2; exit 1; }
echo "demo: gRPC server on $grpc_addr"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@REPO@|$repo|g" -e "s|@LIBDIR@|$libdir|g" \
    -e "s|@PORT@|$port|g" -e "s|@GRPC@|$grpc_addr|g" "$repo/demo/nginx.conf.in" \
    >"$prefix/conf/nginx.conf"
[ "$(id -u)" -eq 0 ] && sed -i '1i user root;' "$prefix/conf/nginx.conf"

LD_LIBRARY_PATH="$libdir" nginx -p "$prefix" -c "$prefix/conf/nginx.conf" &
nginx_pid=$!
stop() {
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  kill "$grpc_pid" 2>/dev/null || true
  wait "$grpc_pid" 2>/dev/null || true
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
run curl -s "$base/hello?name=world"
run curl -s "$base/routeguide"
run curl -s "$base/refused"
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
echo
echo "The runtime's own lines in nginx's error log (its format, through the host):"
grep -m 4 'resty_grpc_zc: instance' "$prefix/logs/error.log" || true
echo "demo: nginx stopped; error.log clean ($prefix/logs/error.log)"
