#!/usr/bin/env bash
# `make demo`: starts the demo gRPC server (Greeter, RouteGuide), a fleet of three backends on
# 127.0.0.2-4 and nginx on 127.0.0.1, calls unary and streaming gRPC locations (resty.grpc_zc,
# Lua tables), bad input refused with clear errors, the host's echo runtime, runtimes in Python,
# Go, Java and Node.js, busy polling that measures, and the fleet
# (round_robin, a backend killed under a retry policy, the Prometheus page) with curl, prints
# what came back and the runtime's own error-log lines, and stops them all.
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

# A fleet of three (b0, b1, b2) on 127.0.0.2-4, one port: what a DNS name with three A records
# or a Kubernetes headless service looks like to the client.
"$libdir/grpc-test-server" --listen 127.0.0.2:0 --name b0 >"$prefix/logs/b0.out" 2>&1 &
fleet_pids=($!)
for _ in $(seq 100); do
  fleet_port=$(sed -n 's/^listening 127.0.0.2://p' "$prefix/logs/b0.out")
  [ -n "$fleet_port" ] && break
  sleep 0.1
done
[ -n "$fleet_port" ] || { echo "demo: backend b0 did not start" >&2; exit 1; }
for i in 1 2; do
  "$libdir/grpc-test-server" --listen "127.0.0.$((i + 2)):$fleet_port" --name "b$i" \
      >"$prefix/logs/b$i.out" 2>&1 &
  fleet_pids+=($!)
done
for i in 1 2; do
  for _ in $(seq 100); do grep -q '^listening' "$prefix/logs/b$i.out" && break; sleep 0.1; done
done
fleet="ipv4:127.0.0.2:$fleet_port,127.0.0.3:$fleet_port,127.0.0.4:$fleet_port"
echo "demo: fleet on $fleet"
sed -e "s|@PREFIX@|$prefix|g" -e "s|@REPO@|$repo|g" -e "s|@LIBDIR@|$libdir|g" \
    -e "s|@PORT@|$port|g" -e "s|@GRPC@|$grpc_addr|g" -e "s|@FLEET@|$fleet|g" \
    "$repo/demo/nginx.conf.in" \
    >"$prefix/conf/nginx.conf"
[ "$(id -u)" -eq 0 ] && sed -i '1i user root;' "$prefix/conf/nginx.conf"

# The Java runtime the demo calls, compiled against the loader's jar (make build).
mkdir -p "$prefix/java"
/usr/lib/jvm/default-java/bin/javac -cp "$libdir/resty-ffi.jar" -d "$prefix/java" \
  "$repo/t/runtimes/java/rt/Echo.java"
LD_LIBRARY_PATH="$libdir" PYTHONPATH="$repo/t/runtimes/python:$repo/loaders/python" \
  CLASSPATH="$prefix/java" NODE_PATH="$repo/t/runtimes/nodejs" nginx -p "$prefix" -c "$prefix/conf/nginx.conf" &
nginx_pid=$!
stop() {
  kill -QUIT "$nginx_pid" 2>/dev/null || true
  wait "$nginx_pid" 2>/dev/null || true
  kill "$grpc_pid" "${fleet_pids[@]}" 2>/dev/null || true
  wait "$grpc_pid" "${fleet_pids[@]}" 2>/dev/null || true
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
run curl -s "$base/busy"
run curl -s "$base/runtimes"
run curl -s "$base/fleet"
echo "\$ kill -9 b1   # one backend dies: its endpoint leaves the picks, calls in flight on it are retried"
disown "${fleet_pids[1]}"   # bash would print "Killed" when it reaps it
kill -9 "${fleet_pids[1]}"
while kill -0 "${fleet_pids[1]}" 2>/dev/null; do sleep 0.05; done
echo
run curl -s "$base/fleet"
sleep 1.2   # metrics_sync publishes each worker's snapshot every second
echo "\$ curl -s $base/metrics | grep zctest.Test/Unary...   # every worker's metrics, summed"
curl -s "$base/metrics" >"$prefix/logs/metrics.txt"
grep -E '^grpc_client_(attempt_started|call_retries)_total\{grpc_method="zctest.Test/Unary"' "$prefix/logs/metrics.txt" || true
grep -E '^grpc_zc_endpoint_state\{.* 1$' "$prefix/logs/metrics.txt" | grep -F "$fleet" || true
echo

stop
trap - EXIT
if grep -E '\[(alert|crit|emerg|error)\]' "$prefix/logs/error.log"; then
  echo "demo: error.log has errors (above)" >&2
  exit 1
fi
echo
echo "The runtime's own lines in nginx's error log (its format, through the host):"
grep -m 4 'resty_grpc_zc: instance' "$prefix/logs/error.log" || true
echo "Busy polling: each runtime's plan, and the measured plan's switches (if any):"
grep 'busy polling: ' "$prefix/logs/error.log" | sed 's/.*busy polling: /  busy polling: /' | head -6 || true
echo "demo: nginx stopped; error.log clean ($prefix/logs/error.log)"
