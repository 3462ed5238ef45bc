#!/usr/bin/env python3
"""CPU budget of one gRPC call from nginx Lua, both threads, step by step (issue 15).

Starts the test gRPC server and one nginx worker running `resty.grpc_zc`, makes sequential and
64-in-flight SayHello calls, samples the worker's threads with `perf record` (cpu-clock, call
graphs off: self time), and splits the worker's CPU time per call (from /proc, all threads)
over the steps of a call by where the samples fell (thread, library, symbol). Then the same
calls from the native client (testkit's `grpc-native-client`: tonic on a current-thread
runtime) under the same perf, split over the same stack's steps, so each step of the poll
thread stands next to what native_ct pays for it. Placements: everything on one CPU
(`taskset`/`worker_cpu_affinity`), and unpinned.

    benches/budget.py [--calls N] [--busy-poll adaptive|fixed|off] [--quick]

Writes target/bench/cpu-budget.json and prints a markdown table per case (make bench puts it in
docs/benchmarks.md between the cpu-budget markers). Needs perf (linux-perf) and a release
build (make build).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIB = os.path.join(REPO, "target", "release")

# Steps of a call, by thread; first match wins. (dso pattern, symbol pattern) -> step.
NGINX_STEPS = [
    ("Lua: envelope building, reply decode, resume (LuaJIT)", r"luajit|^\[JIT\]|perf-\d+\.map|^\[unknown\]", r""),
    ("ngx.semaphore wait/post, coroutine resume (lua-nginx-module)", r"ngx_http_lua_module", r""),
    ("nginx event loop (epoll, eventfd handler, timers)", r"^nginx$", r""),
    ("host: post, spin, wait, result, release (libresty_ffi)", r"libresty_ffi", r""),
    ("arena lease and release (libresty_grpc_zc, called from Lua)", r"libresty_grpc_zc", r""),
    ("libc: malloc, memcpy", r"libc\.so|ld-linux", r""),
    ("kernel: epoll_wait, eventfd, futex, scheduling", r"kernel", r""),
]


def stack_steps(dso):
    """The steps of the gRPC stack a client runs on its event loop, whose Rust code is linked
    into `dso` (the runtime library, or the native client's binary); first match wins."""
    return [
        ("tonic, tower (codec, Channel, buffer)", dso, r"tonic|tower"),
        ("hyper, h2, http (HTTP/2 framing, HPACK, headers)", dso, r"h2::|hyper|http::|hpack|httparse"),
        ("tokio (scheduler, reactor, wakers, mpsc)", dso, r"tokio"),
        ("allocation (malloc, free, Rust alloc)", r"", r"malloc|free|_int_|__rust_alloc|__rust_dealloc|__rdl_|realloc|cfree"),
        ("other Rust code (bytes, hashbrown, core)", dso, r""),
        ("libc: memcpy, send/recv wrappers, clock", r"libc\.so|ld-linux|vdso", r""),
        ("kernel: TCP/IP send and receive", r"kernel", r"tcp|ip_|skb|sock|inet|net_|__dev|loopback|napi|_rcv|__sys_send|__sys_recv|sendto|recvfrom|__x64_sys_send|__x64_sys_recv|softirq|irq"),
        ("kernel: sched_yield, epoll, eventfd, futex, scheduling", r"kernel", r""),
    ]


POLL_STEPS = [
    ("queue hand-off: spin, pop, respond (libresty_ffi)", r"libresty_ffi", r""),
    ("runtime: envelope verify, command, call set-up, reply", r"libresty_grpc_zc", r"resty_grpc_zc::(runtime|wire|codec|arena|queue|copy|ffi)|flatbuffers::"),
    ("runtime: gRPC layer (retry, balancer, metrics, streams)", r"libresty_grpc_zc", r"resty_grpc_zc::grpc"),
] + stack_steps(r"libresty_grpc_zc")
# The native client (testkit's grpc-native-client, tonic on a current-thread runtime): its one
# thread's comm, and the same stack's steps.
NATIVE_COMM = "grpc-native-cli"
NATIVE_STEPS = stack_steps(r"grpc-native-cli")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def ticks(pid, tid=None):
    path = f"/proc/{pid}/task/{tid}/stat" if tid else f"/proc/{pid}/stat"
    with open(path) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def threads(pid):
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{tid}/comm") as f:
            out[tid] = f.read().strip()
    return out


def start_server(work, placement):
    """The test gRPC server (one tokio thread; on CPU 0 for "one CPU"): (process, address)."""
    server_cmd = [os.path.join(LIB, "grpc-test-server"), "--listen", "127.0.0.1:0",
                  "--threads", "0", "--no-gzip-replies"]
    if placement == "one CPU":
        server_cmd = ["taskset", "-c", "0"] + server_cmd
    out = open(os.path.join(work, "grpc.out"), "w")
    server = subprocess.Popen(server_cmd, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(100):
        with open(os.path.join(work, "grpc.out")) as f:
            m = re.search(r"^listening (\S+)", f.read(), re.M)
        if m:
            return server, m.group(1)
        time.sleep(0.05)
    server.kill()
    sys.exit("budget: the gRPC server did not start")


def start(work, placement, busy_poll):
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    os.makedirs(os.path.join(work, "conf"), exist_ok=True)
    server, addr = start_server(work, placement)
    port = free_port()
    aff = "worker_cpu_affinity 0001;" if placement == "one CPU" else ""
    user = "user root;" if os.geteuid() == 0 else ""
    conf = f"""{user}
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1; {aff}
daemon off; master_process on; error_log logs/error.log warn; pid logs/nginx.pid;
env LD_LIBRARY_PATH;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  lua_package_path "{REPO}/lua/?.lua;;";
  lua_package_cpath "{LIB}/lib?.so;;";
  client_body_temp_path {work}/tmp; proxy_temp_path {work}/tmp; fastcgi_temp_path {work}/tmp;
  uwsgi_temp_path {work}/tmp; scgi_temp_path {work}/tmp;
  init_worker_by_lua_block {{
    require "resty_ffi"
    assert(require("resty.grpc_zc").init({{ busy_poll = "{busy_poll}" }}))
  }}
  server {{
    listen 127.0.0.1:{port};
    location /calls {{ content_by_lua_block {{
      local ok, conn = require("resty.grpc_zc").connect("{addr}")
      assert(ok, conn)
      local n, c = tonumber(ngx.var.arg_n), tonumber(ngx.var.arg_c)
      local function run(k)
        for _ = 1, k do
          local ok, r = conn:unary("/helloworld.Greeter/SayHello", "")
          if not ok then error(r) end
        end
      end
      local th = {{}}
      for i = 1, c do th[i] = ngx.thread.spawn(run, n / c) end
      for i = 1, c do assert(ngx.thread.wait(th[i])) end
      ngx.say("ok")
    }} }}
  }}
}}
"""
    with open(os.path.join(work, "conf", "nginx.conf"), "w") as f:
        f.write(conf)
    env = dict(os.environ, LD_LIBRARY_PATH=LIB)
    nginx = subprocess.Popen(["nginx", "-p", work, "-c", "conf/nginx.conf"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/calls"
    for _ in range(100):
        try:
            urllib.request.urlopen(f"{url}?n=64&c=1", timeout=5).read()
            break
        except OSError:
            time.sleep(0.05)
    if placement == "one CPU":
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(server.pid)],
                       stdout=subprocess.DEVNULL, check=True)
    worker = int(subprocess.check_output(["pgrep", "-P", str(nginx.pid)]).split()[0])
    return server, nginx, worker, url


def categorize(report, steps_by_comm):
    """Self samples per (comm, step) from `perf report --sort comm,dso,sym` lines."""
    totals = {}
    line_re = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s+(\S+)\s+\[[.k]\]\s+(.*)$")
    for line in report.splitlines():
        m = line_re.match(line)
        if not m:
            continue
        pct, comm, dso, sym = float(m.group(1)), m.group(2), m.group(3), m.group(4)
        steps = steps_by_comm.get(comm)
        if steps is None:
            continue
        for name, dso_re, sym_re in steps:
            if (not dso_re or re.search(dso_re, dso)) and (not sym_re or re.search(sym_re, sym)):
                totals[(comm, name)] = totals.get((comm, name), 0.0) + pct
                break
        else:
            totals[(comm, "other")] = totals.get((comm, "other"), 0.0) + pct
    return totals


def measure(placement, case, calls, busy_poll, warmup):
    work = tempfile.mkdtemp(prefix="budget.")
    server, nginx, worker, url = start(work, placement, busy_poll)
    c = 1 if case == "sequential" else 64
    try:
        urllib.request.urlopen(f"{url}?n={warmup}&c={c}", timeout=120).read()
        tids = threads(worker)
        before = {tid: ticks(worker, tid) for tid in tids}
        data = os.path.join(work, "perf.data")
        perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999",
                                 "-p", str(worker), "-o", data],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)
        t0 = time.monotonic()
        urllib.request.urlopen(f"{url}?n={calls}&c={c}", timeout=600).read()
        wall = time.monotonic() - t0
        perf.send_signal(signal.SIGINT)
        perf.wait()
        after = {tid: ticks(worker, tid) for tid in tids}
        hz = os.sysconf("SC_CLK_TCK")
        per_thread = {}
        for tid, comm in tids.items():
            us = (after[tid] - before[tid]) * 1e6 / hz / calls
            per_thread[comm] = per_thread.get(comm, 0.0) + us
        allocs = count_allocations(worker, tids, url, max(200, calls // 5), c)
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "-g", "none",
                                 "--sort", "comm,dso,sym", "--stdio"],
                                capture_output=True, text=True).stdout
        shares = categorize(report, {"nginx": NGINX_STEPS, "grpc_zc-poll": POLL_STEPS})
        # Each thread's CPU per call split by its own samples' shares.
        steps = []
        for comm, steps_def in (("nginx", NGINX_STEPS), ("grpc_zc-poll", POLL_STEPS)):
            names = [s[0] for s in steps_def] + ["other"]
            total = sum(v for (c2, _), v in shares.items() if c2 == comm) or 1.0
            for name in names:
                pct = shares.get((comm, name), 0.0)
                steps.append({"thread": comm, "step": name,
                              "us_per_call": per_thread.get(comm, 0.0) * pct / total,
                              "share_of_thread": pct / total})
        return {"placement": placement, "case": case, "busy_poll": busy_poll, "calls": calls,
                "us_per_call" if c == 1 else "calls_per_second":
                    wall * 1e6 / calls if c == 1 else calls / wall,
                "cpu_us_per_call": per_thread, "allocations_per_call": allocs, "steps": steps}
    finally:
        nginx.send_signal(signal.SIGQUIT)
        server.terminate()
        nginx.wait()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


def measure_native(placement, case, calls):
    """The same case made by the native client (tonic, current-thread runtime) under perf: its
    CPU per call (its own getrusage) split over the same stack's steps, and its allocations
    (glibc's: the binary uses the system allocator) in a separate pass."""
    work = tempfile.mkdtemp(prefix="budget-native.")
    server, addr = start_server(work, placement)
    c = 1 if case == "sequential" else 64

    def command(n):
        cmd = [os.path.join(LIB, "grpc-native-client"), "--target", addr, "--calls", str(n),
               "--in-flight", str(c)]
        return ["taskset", "-c", "0"] + cmd if placement == "one CPU" else cmd

    if placement == "one CPU":
        subprocess.run(["taskset", "-a", "-p", "-c", "0", str(server.pid)],
                       stdout=subprocess.DEVNULL, check=True)
    try:
        data = os.path.join(work, "perf.data")
        out = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "4999", "-o", data,
                              "--"] + command(calls), capture_output=True, text=True, check=True).stdout
        m = re.search(r"seconds (\S+) cpu_us_per_call (\S+)", out)
        if not m:
            sys.exit(f"budget: grpc-native-client said {out!r}")
        secs, cpu = float(m.group(1)), float(m.group(2))
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "-g", "none",
                                 "--sort", "comm,dso,sym", "--stdio"],
                                capture_output=True, text=True).stdout
        shares = categorize(report, {NATIVE_COMM: NATIVE_STEPS})
        total = sum(shares.values()) or 1.0
        steps = [{"thread": NATIVE_COMM, "step": name,
                  "us_per_call": cpu * shares.get((NATIVE_COMM, name), 0.0) / total,
                  "share_of_thread": shares.get((NATIVE_COMM, name), 0.0) / total}
                 for name in [st[0] for st in NATIVE_STEPS] + ["other"]]
        allocs = None
        if probes_ready():
            n = max(200, calls // 5)
            events = ",".join(f"probe_libc:{fn}" for fn in PROBES)
            err = subprocess.run(["perf", "stat", "-e", events, "-x", ",", "--"] + command(n),
                                 capture_output=True, text=True).stderr
            counted = sum(int(l.split(",")[0]) for l in err.splitlines()
                          if l.split(",")[0].strip().isdigit())
            # The run's warm-up (100 calls) and connect are in the count too.
            allocs = counted / (n + 100)
        return {"placement": placement, "case": case, "side": "native_ct", "calls": calls,
                "us_per_call" if c == 1 else "calls_per_second":
                    secs * 1e6 / calls if c == 1 else calls / secs,
                "cpu_us_per_call": {NATIVE_COMM: cpu}, "allocations_per_call": allocs,
                "steps": steps}
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


PROBES = ("malloc", "calloc", "realloc")
# The runtime library's Rust allocations go to mimalloc (src/alloc.rs), linked into it: its
# aligned entry points are what Rust's allocator calls.
RUST_PROBES = ("mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned")


def probes_ready():
    """uprobes on libc's allocation functions (perf probe, once per boot) and on the runtime
    library's mimalloc (again each run: a rebuild moves its functions), or False."""
    listed = subprocess.run(["perf", "probe", "-l"], capture_output=True, text=True).stdout
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    for fn in PROBES:
        if f"probe_libc:{fn} " not in listed:
            r = subprocess.run(["perf", "probe", "-q", "-x", libc, "--add", fn],
                               capture_output=True, text=True)
            if r.returncode != 0:
                return False
    subprocess.run(["perf", "probe", "-q", "--del", "zcalloc:*"], capture_output=True)
    lib = os.path.join(LIB, "libresty_grpc_zc.so")
    for fn in RUST_PROBES:
        r = subprocess.run(["perf", "probe", "-q", "-x", lib, "--add", f"zcalloc:{fn}={fn}"],
                           capture_output=True, text=True)
        if r.returncode != 0:
            return False
    return True


def count_allocations(worker, tids, url, calls, c):
    """Allocations per call, per thread name: libc's (malloc + calloc + realloc) and the
    runtime library's Rust ones (mimalloc), as {"libc": {...}, "rust": {...}} (a separate
    pass: uprobes slow every allocation down)."""
    if not probes_ready():
        return None
    events = ",".join([f"probe_libc:{fn}" for fn in PROBES]
                      + [f"zcalloc:{fn}" for fn in RUST_PROBES])
    stat = subprocess.Popen(["perf", "stat", "-e", events, "--per-thread", "-x", ",",
                             "-p", str(worker)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    urllib.request.urlopen(f"{url}?n={calls}&c={c}", timeout=600).read()
    stat.send_signal(signal.SIGINT)
    _, err = stat.communicate()
    per = {"libc": {}, "rust": {}}
    for line in err.splitlines():
        parts = line.split(",")
        if len(parts) < 4 or not parts[1].strip().isdigit():
            continue
        name = parts[0].rsplit("-", 1)[0]
        kind = "rust" if any("zcalloc:" in p for p in parts) else "libc"
        per[kind][name] = per[kind].get(name, 0) + int(parts[1])
    return {kind: {name: n / calls for name, n in v.items() if name in tids.values()}
            for kind, v in per.items()}


def table(r):
    lines = []
    speed = (f"{r['us_per_call']:.1f} µs per call" if "us_per_call" in r
             else f"{r['calls_per_second']:.0f} calls/s")
    cpu = r["cpu_us_per_call"]
    lines.append(f"**{r['case']}, {r['placement']}** (busy_poll = {r['busy_poll']}): {speed}; "
                 f"worker CPU {sum(cpu.values()):.1f} µs per call (nginx thread "
                 f"{cpu.get('nginx', 0):.1f}, poll thread {cpu.get('grpc_zc-poll', 0):.1f})")
    a = r.get("allocations_per_call")
    if a:
        libc, rust = a["libc"], a["rust"]
        lines[-1] += (f"; allocations per call: nginx thread {libc.get('nginx', 0):.1f} libc + "
                      f"{rust.get('nginx', 0):.1f} Rust, poll thread "
                      f"{libc.get('grpc_zc-poll', 0):.1f} libc + "
                      f"{rust.get('grpc_zc-poll', 0):.1f} Rust (mimalloc)")
    lines.append("")
    lines.append("| thread | step | µs CPU per call | share of the thread |")
    lines.append("|---|---|---|---|")
    for s in r["steps"]:
        if s["us_per_call"] < 0.05:
            continue
        lines.append(f"| {s['thread']} | {s['step']} | {s['us_per_call']:.1f} | "
                     f"{100 * s['share_of_thread']:.0f} % |")
    return "\n".join(lines)


def compare(r, nat):
    """The call's CPU next to native_ct's, step by step: the stack both run, then what only the
    Lua path does (the runtime's own steps on the poll thread, the nginx thread)."""
    def us(result, thread, step):
        return sum(x["us_per_call"] for x in result["steps"]
                   if x["thread"] == thread and x["step"] == step)

    speed = (f"{nat['us_per_call']:.1f} µs per call" if "us_per_call" in nat
             else f"{nat['calls_per_second']:.0f} calls/s")
    a = nat.get("allocations_per_call")
    lines = [f"**{r['case']}, {r['placement']}: the poll thread next to native_ct** (tonic on a "
             f"current-thread runtime, `grpc-native-client`, the same calls): native_ct {speed}, "
             f"CPU {nat['cpu_us_per_call'][NATIVE_COMM]:.1f} µs per call"
             + (f", {a:.1f} allocations per call (glibc)" if a is not None else ""), "",
             "| step | Lua path, µs CPU per call | native_ct | Lua path − native_ct |",
             "|---|---|---|---|"]
    rows = [(name, us(r, "grpc_zc-poll", name), us(nat, NATIVE_COMM, name))
            for name in [st[0] for st in NATIVE_STEPS] + ["other"]]
    rows += [(f"poll thread: {st[0]}", us(r, "grpc_zc-poll", st[0]), 0.0)
             for st in POLL_STEPS[:3]]
    rows.append(("nginx thread: Lua, host, arena, its wake-ups (all of it)",
                 r["cpu_us_per_call"].get("nginx", 0.0), 0.0))
    for name, lua, native in rows:
        if lua < 0.05 and native < 0.05:
            continue
        lines.append(f"| {name} | {lua:.1f} | {native:.1f} | {lua - native:+.1f} |")
    lua_total = sum(r["cpu_us_per_call"].values())
    native_total = nat["cpu_us_per_call"][NATIVE_COMM]
    lines.append(f"| **whole client** | **{lua_total:.1f}** | **{native_total:.1f}** | "
                 f"**{lua_total - native_total:+.1f}** ({lua_total / native_total:.2f}x) |")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=20000)
    ap.add_argument("--busy-poll", default="adaptive")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    calls = args.calls // 10 if args.quick else args.calls
    results, tables = [], []
    for placement in ("one CPU", "unpinned"):
        for case, n in (("sequential", calls), ("64 in flight", calls * 5)):
            r = measure(placement, case, n, args.busy_poll, warmup=max(1000, n // 10))
            nat = measure_native(placement, case, n)
            results += [r, nat]
            tables += [table(r), compare(r, nat)]
            print(tables[-2], tables[-1], sep="\n\n", end="\n\n", flush=True)
    os.makedirs(os.path.join(REPO, "target", "bench"), exist_ok=True)
    with open(os.path.join(REPO, "target", "bench", "cpu-budget.json"), "w") as f:
        json.dump({"benchmark": "cpu-budget", "results": results}, f, indent=1)
    # The cpu-budget section of docs/benchmarks.md.
    cmd = "make bench (`benches/budget.py" + (" --quick" if args.quick else "") + "`)"
    with open("/proc/cpuinfo") as f:
        model = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "?")
    section = (f"Command: {cmd}. Machine: {model}, {os.cpu_count()} vCPU. perf samples "
               f"(cpu-clock, 4999 Hz, self time) of the worker's threads over {calls} sequential "
               f"and {calls * 5} concurrent calls, split by thread, library and symbol; each "
               f"thread's CPU per call from /proc; allocations counted in a separate pass "
               f"(uprobes on libc's malloc, calloc and realloc, and on the mimalloc the "
               f"runtime library links for its Rust allocations). After each case, the same "
               f"calls from tonic on a current-thread runtime (native_ct, testkit's "
               f"`grpc-native-client`, its own CPU time from getrusage) profiled the same way, "
               f"step by step next to the poll thread. Results also in "
               f"`target/bench/cpu-budget.json`.\n\n"
               + "\n\n".join(tables) + "\n")
    doc = os.path.join(REPO, "docs", "benchmarks.md")
    with open(doc) as f:
        text = f.read()
    begin, end = "<!-- BEGIN cpu-budget -->", "<!-- END cpu-budget -->"
    if begin in text and end in text:
        text = text[:text.index(begin) + len(begin)] + "\n" + section + text[text.index(end):]
    else:
        text += f"\n### The CPU budget of one call\n\n{begin}\n{section}{end}\n"
    with open(doc, "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
