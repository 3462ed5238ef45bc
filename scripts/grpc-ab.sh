#!/usr/bin/env bash
# A/B of two builds of the runtime on the gRPC path, side by side in one run (the machines are
# noisy: only a paired comparison means anything). A is the tree's release build, B the
# libresty_grpc_zc.so in the directory given. Rounds alternate A and B; each prints µs per call
# and the CPU µs per call of the nginx worker's main thread and of its runtime poll thread
# (`perf stat --per-thread`).
#
#   cp target/release/libresty_grpc_zc.so /tmp/base/      # the build to compare against
#   ...change, cargo build --release --workspace --lib --bins...
#   scripts/grpc-ab.sh /tmp/base [rounds]
#
# Cases: 64 SayHello calls in flight (100,000 calls) and sequential SayHello (10,000 calls).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
libb=$(cd "${1:?usage: grpc-ab.sh <dir of build B> [rounds]}" && pwd)
rounds=${2:-3}
[ -f "$libb/libresty_grpc_zc.so" ] || { echo "no libresty_grpc_zc.so in $libb" >&2; exit 1; }
command -v perf >/dev/null || { echo "perf is needed (linux-perf)" >&2; exit 1; }

work=$(mktemp -d)
fifo="$work/stdin"
mkfifo "$fifo"
cd "$repo"
# The bench waits for a line on stdin; holding the fifo open keeps it serving until we close it.
GRPC_BENCH_SERVE_B="$libb" cargo bench --bench grpc <"$fifo" >"$work/serve.log" 2>&1 &
bench=$!
exec 3>"$fifo"
cleanup() { exec 3>&-; wait "$bench" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
for _ in $(seq 600); do grep -q '^curl B' "$work/serve.log" && break; sleep 1; done
grep -q '^curl B' "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }

url_a=$(sed -n "s/^curl '\(.*\)'$/\1/p" "$work/serve.log")
url_b=$(sed -n "s/^curl B '\(.*\)'$/\1/p" "$work/serve.log")
target=${url_a##*t=}
pids=$(grep -o 'worker pids \[[0-9]*\] / B \[[0-9]*' "$work/serve.log" | grep -o '[0-9]\+')
worker_a=$(echo "$pids" | sed -n 1p)
worker_b=$(echo "$pids" | sed -n 2p)

poll_tid() { ps -L -o tid=,comm= -p "$1" | awk '/grpc_zc-poll/ {print $1}'; }

# measure <label> <base url> <worker pid> <query> <calls>
measure() {
  local label=$1 base=${2%%/seq*} worker=$3 query=$4 calls=$5 poll secs
  poll=$(poll_tid "$worker")
  secs=$(perf stat -e task-clock -t "$worker,$poll" --per-thread -x, -o "$work/stat" -- \
    curl -sf "$base/$query&t=$target")
  python3 - "$label" "$query" "$calls" "$secs" "$work/stat" <<'PY'
import sys
label, query, calls, secs, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
cpu = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and not f[0].startswith("#"):
        cpu[f[0].rsplit("-", 1)[0]] = float(f[1])  # task-clock in ms
per = "  ".join(f"{k} {v * 1000 / calls:6.2f}" for k, v in sorted(cpu.items()))
print(f"{label}  {query.split('&')[0]:10s} {secs / calls * 1e6:7.1f} µs/call  CPU µs/call: {per}")
PY
}

for url in "$url_a" "$url_b"; do  # warm-up
  curl -sf "${url%%/seq*}/conc?c=64&n=20000&t=$target" >/dev/null
done
for r in $(seq "$rounds"); do
  for q in "conc?c=64&n=100000 100000" "seq?m=hello&size=0&n=10000 10000"; do
    set -- $q
    if [ $((r % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
    for side in $order; do
      if [ "$side" = A ]; then measure A "$url_a" "$worker_a" "$1" "$2"
      else measure B "$url_b" "$worker_b" "$1" "$2"; fi
    done
  done
done
