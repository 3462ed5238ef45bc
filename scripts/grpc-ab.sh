#!/usr/bin/env bash
# Builds of the runtime side by side on the gRPC path, in one run (the machines are noisy: only
# a paired comparison means anything). Side A is the tree's release build; B1, B2, ... are the
# builds in the directories given: each directory's libresty_grpc_zc.so, and, when it has
# them, its libresty_ffi.so (the host) and its lua/ tree, so a whole old build can be paired
# against the new one. Every round runs each case on every side, in
# an order that rotates from round to round, and prints µs per call and the CPU µs per call of
# the nginx worker's main thread and of its runtime poll thread (`perf stat --per-thread`); the
# end prints each side's median.
#
#   cp target/release/libresty_grpc_zc.so /tmp/base/      # the build to compare against
#   cp target/release/libresty_ffi.so /tmp/base/ && cp -r lua /tmp/base/   # optional: all of it
#   ...change, cargo build --release --workspace --lib --bins...
#   scripts/grpc-ab.sh [-r rounds] /tmp/base [/tmp/other ...]
#
# Cases: 64 SayHello calls in flight (100,000 calls) and sequential SayHello (10,000 calls), or
# the benchmark locations' queries given as "query calls" pairs in AB_CASES, e.g.
#   AB_CASES="seq?m=echo&size=102400&n=2000 2000;seq?m=hello&size=0&n=10000 10000"
# and the transport bench's paths (no gRPC: the host + echo runtime, the arena echo):
#   AB_CASES="transport?path=ffi&size=512&n=200000 200000;transport?path=zc_inplace&size=102400&n=50000 50000"
# AB_QUOTA=<CPUs> (e.g. 1 or 0.5; root, cgroup v1 or v2 with the cpu controller) starts the
# nginx sides in a cgroup of their own with that CPU quota (cpu.max, or v1's cfs_quota_us),
# as a container's CPU limit does, and moves the server back out. GRPC_BENCH_BUSY_POLL=<plan>
# starts side A with that busy_poll plan (e.g. fixed, to pair it against the default).
# AB_CASES=tables runs every row of the gRPC bench's tables (sequential SayHello, the payload
# sweep, the concurrency sweep) and of the transport table's paths at both sizes.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
rounds=3
if [ "${1:-}" = -r ]; then rounds=$2; shift 2; fi
[ $# -ge 1 ] || { echo "usage: grpc-ab.sh [-r rounds] <dir of build B1> [<dir of B2> ...]" >&2; exit 1; }
dirs=()
for d in "$@"; do
  d=$(cd "$d" && pwd)
  [ -f "$d/libresty_grpc_zc.so" ] || { echo "no libresty_grpc_zc.so in $d" >&2; exit 1; }
  dirs+=("$d")
done
command -v perf >/dev/null || { echo "perf is needed (linux-perf)" >&2; exit 1; }

if [ "${AB_CASES:-}" = tables ]; then
  AB_CASES="seq?m=hello&size=0&n=5000 5000;seq?m=echo&size=0&n=3000 3000"
  AB_CASES+=";seq?m=echo&size=512&n=3000 3000;seq?m=echo&size=4096&n=3000 3000"
  AB_CASES+=";seq?m=echo&size=102400&n=1000 1000;seq?m=echo&size=1048576&n=100 100"
  AB_CASES+=";conc?c=1&n=3000 3000;conc?c=16&n=30000 30000;conc?c=64&n=40000 40000"
  AB_CASES+=";conc?c=256&n=40000 40000"
  for path in ffi zc_inplace zc_string; do
    AB_CASES+=";transport?path=$path&size=512&n=200000 200000"
  done
  AB_CASES+=";transport?path=ffi&size=102400&n=30000 30000"
  AB_CASES+=";transport?path=zc_inplace&size=102400&n=100000 100000"
  AB_CASES+=";transport?path=zc_string&size=102400&n=50000 50000"
  export AB_CASES
fi

work=$(mktemp -d)
fifo="$work/stdin"
mkfifo "$fifo"
cd "$repo"
cgroup=
run_in=()
if [ -n "${AB_QUOTA:-}" ]; then
  period=100000
  quota=$(python3 -c "print(int(float('$AB_QUOTA') * $period))")
  if [ -f /sys/fs/cgroup/cpu/cpu.cfs_quota_us ]; then
    cgroup=/sys/fs/cgroup/cpu/grpc-ab-$$ root_group=/sys/fs/cgroup/cpu
    mkdir "$cgroup"
    echo "$period" >"$cgroup/cpu.cfs_period_us"
    echo "$quota" >"$cgroup/cpu.cfs_quota_us"
  elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null; then
    cgroup=/sys/fs/cgroup/grpc-ab-$$ root_group=/sys/fs/cgroup
    echo +cpu >/sys/fs/cgroup/cgroup.subtree_control
    mkdir "$cgroup"
    echo "$quota $period" >"$cgroup/cpu.max"
  else
    echo "grpc-ab: AB_QUOTA needs the cgroup cpu controller (v1 or v2)" >&2; exit 1
  fi
  # Built outside the quota; the bench (and the nginx it starts) then runs inside it.
  cargo bench --no-run --bench grpc >/dev/null 2>&1
  run_in=(sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$cgroup")
  echo "nginx sides in $cgroup: a quota of $AB_QUOTA CPU ($quota µs every $period µs)"
fi
# The bench serves until it reads a line; holding the fifo open keeps it serving.
GRPC_BENCH_SERVE_B=$(IFS=:; echo "${dirs[*]}") "${run_in[@]}" cargo bench --bench grpc \
  <"$fifo" >"$work/serve.log" 2>&1 &
bench=$!
exec 3>"$fifo"
cleanup() {
  exec 3>&-; wait "$bench" 2>/dev/null || true; rm -rf "$work"
  if [ -n "$cgroup" ]; then
    # The nginx masters exit a moment after the bench.
    for _ in $(seq 50); do rmdir "$cgroup" 2>/dev/null && break; sleep 0.1; done
  fi
}
trap cleanup EXIT
for _ in $(seq 600); do
  grep -q '^ready' "$work/serve.log" && break
  kill -0 "$bench" 2>/dev/null || break  # the bench failed (its log follows)
  sleep 1
done
grep -q '^ready' "$work/serve.log" || { cat "$work/serve.log" >&2; exit 1; }
if [ -n "$cgroup" ]; then
  # The server is another machine's: out of the quota.
  grep '^server pid ' "$work/serve.log" | awk '{print $3}' >"$root_group/cgroup.procs"
fi

names=(); workers=(); bases=()
while read -r _ name pid url; do
  names+=("$name"); workers+=("$pid"); bases+=("${url%%/seq*}")
done < <(grep '^side ' "$work/serve.log")
target=$(grep '^side A ' "$work/serve.log" | sed 's/.*t=//')
for i in "${!names[@]}"; do echo "${names[$i]%%=*}: ${names[$i]#*=}"; done
grep '^plan ' "$work/serve.log" | sed 's/^plan \([^ ]*\) /\1 busy polling: /'

poll_tid() { ps -L -o tid=,comm= -p "$1" | awk '/grpc_zc-poll/ {print $1}'; }

# measure <side index> <query> <calls>: one line "side query µs nginx-cpu poll-cpu"
measure() {
  local i=$1 query=$2 calls=$3 worker poll secs
  worker=${workers[$i]}
  poll=$(poll_tid "$worker")
  secs=$(perf stat -e task-clock -t "$worker,$poll" --per-thread -x, -o "$work/stat" -- \
    curl -sf "${bases[$i]}/$query&t=$target") || {
    # e.g. a B directory without libresty_ffi_echo.so for the transport?path=ffi case
    echo "grpc-ab: $query failed on side ${names[$i]}" >&2; exit 1; }
  python3 - "${names[$i]%%=*}" "$query" "$calls" "$secs" "$work/stat" <<'PY'
import sys
side, query, calls, secs, path = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
cpu = {}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0] and not f[0].startswith("#"):
        # task-clock ms -> µs per call; "<not counted>": the thread did not run
        ms = float(f[1]) if f[1].replace(".", "", 1).isdigit() else 0.0
        cpu[f[0].rsplit("-", 1)[0]] = ms * 1000 / calls
print(side, query.split("&n=")[0], f"{secs / calls * 1e6:.1f}",
      f"{cpu.get('nginx', float('nan')):.2f}", f"{cpu.get('grpc_zc-poll', float('nan')):.2f}")
PY
}

IFS=';' read -r -a cases <<<"${AB_CASES:-conc?c=64&n=100000 100000;seq?m=hello&size=0&n=10000 10000}"
for i in "${!names[@]}"; do  # warm-up
  curl -sf "${bases[$i]}/conc?c=64&n=20000&t=$target" >/dev/null
done
n=${#names[@]}
for r in $(seq "$rounds"); do
  for q in "${cases[@]}"; do
    set -- $q
    for k in $(seq 0 $((n - 1))); do
      measure $(((k + r) % n)) "$1" "$2"
    done
  done
done | tee "$work/rows"
echo "medians (µs per call; CPU µs per call: nginx thread, poll thread):"
python3 - "$work/rows" <<'PY'
import statistics, sys, collections
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    side, query, us, ng, poll = line.split()
    rows[(query, side)].append((float(us), float(ng), float(poll)))
for (query, side), v in sorted(rows.items()):
    med = [statistics.median(x) for x in zip(*v)]
    print(f"{query:28s} {side:3s} {med[0]:8.1f}   {med[1]:6.2f} {med[2]:7.2f}   ({len(v)} rounds)")
PY
