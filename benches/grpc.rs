//! gRPC benchmark: `resty.grpc_zc` from nginx Lua against the native tonic client, same server,
//! same run, rounds interleaved (the first side rotates from round to round), medians of rounds.
//!
//! ```text
//!  nginx worker (1, unpinned) ── conn:unary ──┐
//!  same, host spins off (2nd nginx) ──────────┤
//!  tonic, current-thread runtime ─────────────┼──► grpc-test-server --threads 0 --no-gzip-replies
//!  tonic, multi-thread runtime (2 workers) ───┘        (one tokio thread, 127.0.0.1)
//! ```
//!
//! Cases: sequential `helloworld.Greeter/SayHello` (empty name, 100,000 calls a side); a
//! payload sweep of `zctest.Test/Unary` echoing a bytes field (0 B to 1 MiB); a concurrency
//! sweep (1 to 256 calls in flight: that many Lua light threads in one request, or that many
//! tokio tasks, each calling in a loop on one connection). Also measured each run: the round
//! trip of a 1-byte TCP ping-pong between two threads on one vCPU and on two, the floor
//! every hop between threads adds to a call on this machine.
//!
//! Writes `target/bench/grpc.json` and the `grpc` section of `docs/benchmarks.md`. Run with
//! `make bench` (or `cargo bench --bench grpc`); `BENCH_QUICK=1` runs 10x fewer calls.
//! `GRPC_BENCH_PIN=1` runs everything pinned (the nginx worker and the native clients on CPU 0,
//! the server on CPU 1) and writes `target/bench/grpc-pinned.json` and the `grpc-pinned`
//! section instead (not part of `make bench`: it did not change the picture, see
//! docs/benchmarks.md). `GRPC_BENCH_SPIN="spin_us,poll_spin_us,busy_poll_us"` sets the first
//! nginx's host spins and busy polling. `GRPC_BENCH_SERVE=1` measures nothing: it starts the
//! server and nginx, prints their pids and a `curl` line for the Lua loop, and waits for Enter
//! (for `perf`, `strace -c`, `ps -L`).
//! `GRPC_BENCH_SERVE_B=<dir>[:<dir>...]` does the same with one more nginx per directory, each
//! loading the `libresty_grpc_zc.so` found there: builds side by side (`scripts/grpc-ab.sh`
//! drives it).
//!
//! Every case also runs a second nginx whose runtime is loaded with every spin off
//! (`spin_us = 0, poll_spin_us = 0, busy_poll_us = 0` instead of the defaults 20, 50 and 500 µs):
//! what the spins buy in time and cost in CPU.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};
use testkit::bench::{
    cpu_seconds, machine, median, minor_faults, replace_section, thread_cpu_seconds,
};
use testkit::grpc::pb::helloworld::{greeter_client::GreeterClient, HelloRequest};
use testkit::grpc::pb::zctest::{test_client::TestClient, EchoRequest};
use testkit::tonic::transport::Channel;
use testkit::{payload, repo_root, GrpcServer, GrpcServerOpts, Nginx, NginxBuilder, LUA_PAYLOAD};
use tokio::runtime::Runtime;

/// Rounds per case; every side runs once per round.
const ROUNDS: usize = 8;
/// Sequential SayHello calls per side, over all rounds.
const SEQUENTIAL_CALLS: usize = 100_000;
/// Payload sweep: (payload bytes, calls per side over all rounds).
const PAYLOADS: &[(usize, usize)] = &[
    (0, 10_000),
    (512, 10_000),
    (4_096, 10_000),
    (102_400, 3_200),
    (1_048_576, 480),
];
/// Concurrency sweep: (calls in flight, calls per side over all rounds).
const CONCURRENCY: &[(usize, usize)] = &[(1, 8_000), (16, 40_000), (64, 40_000), (256, 40_000)];
/// Tables vs strings (issue 5): (method, payload bytes, calls per side over all rounds).
const TABLE_CASES: &[(&str, usize, usize)] = &[("hello", 0, 120_000), ("echo", 102_400, 9_600)];
/// Rounds of the tables-vs-strings cases: one round's ratio moves by ±20-30 % on these machines
/// (a round is ~1 s), so the 5 % and 10 % bounds need the median of many.
const TABLE_ROUNDS: usize = 24;
/// Calls before each timed loop (per request / per client), not timed.
const WARMUP: usize = 100;
/// Round trips per ping-pong measurement.
const PING_PONGS: usize = 10_000;

const SIDES: [&str; 3] = [
    "resty.grpc_zc (Lua)",
    "tonic, current-thread runtime",
    "tonic, multi-thread runtime",
];

const HTTP_CONF: &str = r#"
init_worker_by_lua_block {
    -- GRPC_BENCH_SPIN="spin_us,poll_spin_us,busy_poll_us": load the runtime with these host
    -- spins and this busy polling first (grpc.init then finds it); empty: the defaults.
    local spin = os.getenv("GRPC_BENCH_SPIN")
    if spin and spin ~= "" then
        local s, p, b = spin:match("^(%d+),(%d+),(%d+)$")
        assert(s, "GRPC_BENCH_SPIN: spin_us,poll_spin_us,busy_poll_us expected")
        require "resty_ffi"
        -- The cfg string grpc.init builds for these opts: the same cache key.
        assert(ngx.load_ffi("resty_grpc_zc",
                            "instance=grpc_zc-" .. ngx.worker.pid() .. ",busy_poll_us=" .. b,
                            { spin_us = tonumber(s), poll_spin_us = tonumber(p) }))
        assert(require("resty.grpc_zc").init({ busy_poll_us = tonumber(b) }))
    end
    assert(require("resty.grpc_zc").init())
}
init_by_lua_block {
    local ffi = require "ffi"
    ffi.cdef [[
        typedef struct { long tv_sec; long tv_nsec; } bench_timespec;
        int clock_gettime(int clk, bench_timespec *ts);
    ]]
    local ts = ffi.new("bench_timespec")
    function bench_now()
        ffi.C.clock_gettime(1, ts)
        return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
    end
    local function varint(n)
        local t = {}
        repeat
            local b = n % 128
            n = math.floor(n / 128)
            t[#t + 1] = string.char(n > 0 and b + 128 or b)
        until n == 0
        return table.concat(t)
    end
    -- A message whose field 1 (string or bytes) is s; proto3 leaves an empty one out.
    function field1(s)
        if #s == 0 then return "" end
        return "\10" .. varint(#s) .. s
    end
    @PAYLOAD@
    WARMUP = @WARMUP@
    HELLO = "/helloworld.Greeter/SayHello"
    UNARY = "/zctest.Test/Unary"
    -- n calls; every reply must be want_len bytes (nil: any length).
    function calls(conn, path, req, n, want_len)
        for _ = 1, n do
            local ok, res = conn:unary(path, req)
            if not ok then error(res) end
            if want_len and #res ~= want_len then
                error("reply of " .. #res .. " bytes, want " .. want_len)
            end
        end
    end
    function connect()
        local ok, conn = require("resty.grpc_zc").connect(ngx.var.arg_t)
        assert(ok, conn)
        return conn
    end
    -- Message types for the table path (issue 5).
    assert(require("resty.grpc_zc").load_proto({ "helloworld.proto", "zctest.proto" },
                                                { import_paths = { "@PROTO@" } }))
}
"#;

const SERVER_CONF: &str = r#"
location /seq {
    content_by_lua_block {
        local conn = connect()
        local size, n = tonumber(ngx.var.arg_size), tonumber(ngx.var.arg_n)
        local path, req, want = HELLO, "", nil
        if ngx.var.arg_m == "echo" then
            req = field1(payload(size, 1))
            path, want = UNARY, #req
            -- &sleep=ms (below 128): the server answers that late (EchoRequest.sleep_ms, a
            -- field the reply does not echo).
            local sleep = tonumber(ngx.var.arg_sleep)
            if sleep then
                req = req .. "\32" .. string.char(sleep)
            end
        end
        calls(conn, path, req, WARMUP, want)
        local t0 = bench_now()
        calls(conn, path, req, n, want)
        ngx.say(bench_now() - t0)
    }
}
location /tables {
    content_by_lua_block {
        -- The same calls with Lua tables (encoded into the arena, replies decoded from it) or
        -- with pre-encoded strings.
        local conn = connect()
        local size, n = tonumber(ngx.var.arg_size), tonumber(ngx.var.arg_n)
        local tables = ngx.var.arg_mode == "table"
        local path, req, want
        if ngx.var.arg_m == "echo" then
            local p = payload(size, 1)
            path, want = UNARY, size
            req = tables and { payload = p } or field1(p)
        else
            path = HELLO
            req = tables and { name = "world" } or field1("world")
        end
        local function run(k)
            for _ = 1, k do
                local ok, res = conn:unary(path, req)
                if not ok then error(res) end
                if want and #(tables and res.payload or res) < want then
                    error("short reply")
                end
            end
        end
        run(WARMUP)
        local t0 = bench_now()
        run(n)
        ngx.say(bench_now() - t0)
    }
}
location /conc {
    content_by_lua_block {
        local conn = connect()
        local c, n = tonumber(ngx.var.arg_c), tonumber(ngx.var.arg_n)
        local function run(each, extra)
            local threads = {}
            for i = 1, c do
                threads[i] = ngx.thread.spawn(calls, conn, HELLO, "",
                                              each + (i <= extra and 1 or 0))
            end
            for i = 1, c do
                local ok, err = ngx.thread.wait(threads[i])
                if not ok then error(err) end
            end
        end
        run(math.ceil(WARMUP / c), 0)
        local t0 = bench_now()
        run(math.floor(n / c), n % c)
        ngx.say(bench_now() - t0)
    }
}
"#;

/// The native client on one runtime, connected once.
struct Native {
    rt: Runtime,
    greeter: GreeterClient<Channel>,
    test: TestClient<Channel>,
}

impl Native {
    fn new(rt: Runtime, server: &GrpcServer) -> Native {
        let channel = rt.block_on(server.channel());
        Native {
            greeter: GreeterClient::new(channel.clone()),
            test: TestClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            rt,
        }
    }

    /// Seconds for `n` sequential SayHello calls with an empty name.
    fn hello(&self, n: usize) -> f64 {
        let mut client = self.greeter.clone();
        self.rt.block_on(async move {
            for _ in 0..WARMUP {
                client.say_hello(HelloRequest::default()).await.unwrap();
            }
            let t0 = Instant::now();
            for _ in 0..n {
                client.say_hello(HelloRequest::default()).await.unwrap();
            }
            t0.elapsed().as_secs_f64()
        })
    }

    /// Seconds for `n` sequential Unary echoes of a `size`-byte payload.
    fn echo(&self, size: usize, n: usize) -> f64 {
        let client = self.test.clone();
        let data = Bytes::from(payload(size, 1));
        self.rt.block_on(async move {
            let call = || {
                let req = EchoRequest {
                    payload: data.clone(),
                    ..Default::default()
                };
                let mut client = client.clone();
                async move {
                    let reply = client.unary(req).await.unwrap().into_inner();
                    assert_eq!(reply.payload.len(), size);
                }
            };
            for _ in 0..WARMUP {
                call().await;
            }
            let t0 = Instant::now();
            for _ in 0..n {
                call().await;
            }
            t0.elapsed().as_secs_f64()
        })
    }

    /// Seconds for `n` SayHello calls made by `c` tasks calling in a loop.
    fn concurrent(&self, c: usize, n: usize) -> f64 {
        let run = |each: usize, extra: usize| {
            let tasks: Vec<_> = (0..c)
                .map(|i| {
                    let mut client = self.greeter.clone();
                    let k = each + usize::from(i < extra);
                    self.rt.spawn(async move {
                        for _ in 0..k {
                            client.say_hello(HelloRequest::default()).await.unwrap();
                        }
                    })
                })
                .collect();
            self.rt.block_on(async {
                for t in tasks {
                    t.await.unwrap();
                }
            });
        };
        run(WARMUP.div_ceil(c), 0);
        let t0 = Instant::now();
        run(n / c, n % c);
        t0.elapsed().as_secs_f64()
    }
}

/// Seconds for a Lua request (`/seq` or `/conc`), as Lua measured it.
fn lua(nginx: &Nginx, server: &GrpcServer, query: &str) -> f64 {
    let url = format!("{query}&t={}", server.addr());
    let text = nginx.get_ok(&url);
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{url}: {text}"))
}

/// One run of one side: wall seconds of its timed loop, and CPU seconds used meanwhile by the
/// client process (the nginx worker, all its threads; or this process) and by the server,
/// warm-up included.
#[derive(Debug, Clone)]
struct Run {
    secs: f64,
    client_cpu: f64,
    server_cpu: f64,
    /// Minor page faults of the client process and of the server.
    client_faults: f64,
    server_faults: f64,
    /// CPU seconds per thread name of the client process (threads of one name summed).
    threads: Vec<(String, f64)>,
}

/// CPU seconds per thread name of `pid` (threads of one name summed).
fn by_thread_name(pid: i32) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = Vec::new();
    for (name, secs) in thread_cpu_seconds(pid) {
        match out.iter_mut().find(|(n, _)| *n == name) {
            Some((_, total)) => *total += secs,
            None => out.push((name, secs)),
        }
    }
    out
}

/// A side to measure: the pid whose CPU time is the client's, and one run of its loop.
type Side<'a> = (i32, &'a mut dyn FnMut() -> f64);

/// Runs every side once per round, the first side rotating, and returns the runs per side.
fn interleave(server: i32, sides: &mut [Side<'_>]) -> Vec<Vec<Run>> {
    interleave_rounds(server, ROUNDS, sides)
}

/// [`interleave`] with `rounds` rounds.
fn interleave_rounds(server: i32, rounds: usize, sides: &mut [Side<'_>]) -> Vec<Vec<Run>> {
    let cpu = |pid: i32| cpu_seconds(pid).unwrap_or(f64::NAN);
    let mut runs = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            let (pid, run) = &mut sides[side];
            let faults = |pid: i32| minor_faults(pid).map_or(f64::NAN, |f| f as f64);
            let (c0, s0, t0) = (cpu(*pid), cpu(server), by_thread_name(*pid));
            let (cf0, sf0) = (faults(*pid), faults(server));
            let secs = run();
            let threads = by_thread_name(*pid)
                .into_iter()
                .map(|(name, after)| {
                    let before = t0.iter().find(|(n, _)| *n == name).map_or(0.0, |t| t.1);
                    (name, after - before)
                })
                .collect();
            runs[side].push(Run {
                secs,
                client_cpu: cpu(*pid) - c0,
                server_cpu: cpu(server) - s0,
                client_faults: faults(*pid) - cf0,
                server_faults: faults(server) - sf0,
                threads,
            });
        }
    }
    runs
}

/// Medians of one case: µs per call of each side, the round-paired ratios and differences of
/// Lua against each native side, and CPU µs per call.
struct Case {
    us_per_call: [f64; 3],
    /// Lua time / native time, median of rounds: [current-thread, multi-thread].
    ratio: [f64; 2],
    /// Lua µs per call minus native µs per call, median of rounds.
    overhead_us: [f64; 2],
    /// CPU µs per call of the client process, per side.
    client_cpu_us: [f64; 3],
    /// CPU µs per call of the server while each side ran.
    server_cpu_us: [f64; 3],
    /// Minor page faults per call of the client process and of the server, per side.
    client_faults: [f64; 3],
    server_faults: [f64; 3],
    /// CPU µs per call of each thread (by name) of the Lua side's nginx worker.
    lua_threads_us: Vec<(String, f64)>,
}

impl Case {
    /// `calls` timed per run, after `warmup` untimed ones (which the CPU figures include).
    fn new(runs: &[Vec<Run>], calls: usize, warmup: usize) -> Case {
        let us = |t: f64| t * 1e6 / calls as f64;
        let cpu_us = |t: f64| t * 1e6 / (calls + warmup) as f64;
        let paired = |native: usize, f: &dyn Fn(f64, f64) -> f64| {
            median(
                runs[0]
                    .iter()
                    .zip(&runs[native])
                    .map(|(l, n)| f(l.secs, n.secs))
                    .collect(),
            )
        };
        let per_side =
            |f: &dyn Fn(&Run) -> f64| [0, 1, 2].map(|s| median(runs[s].iter().map(f).collect()));
        Case {
            us_per_call: per_side(&|r| us(r.secs)),
            ratio: [1, 2].map(|s| paired(s, &|l, n| l / n)),
            overhead_us: [1, 2].map(|s| paired(s, &|l, n| us(l) - us(n))),
            client_cpu_us: per_side(&|r| cpu_us(r.client_cpu)),
            server_cpu_us: per_side(&|r| cpu_us(r.server_cpu)),
            client_faults: per_side(&|r| r.client_faults / (calls + warmup) as f64),
            server_faults: per_side(&|r| r.server_faults / (calls + warmup) as f64),
            lua_threads_us: runs[0][0]
                .threads
                .iter()
                .map(|(name, _)| {
                    let per_round = runs[0].iter().map(|r| {
                        r.threads
                            .iter()
                            .find(|(n, _)| n == name)
                            .map_or(0.0, |t| cpu_us(t.1))
                    });
                    (name.clone(), median(per_round.collect()))
                })
                .collect(),
        }
    }

    fn json(&self, runs: &[Vec<Run>], calls: usize) -> Value {
        let side = |s: usize| {
            json!({
                "seconds": runs[s].iter().map(|r| r.secs).collect::<Vec<_>>(),
                "us_per_call": self.us_per_call[s],
                "client_cpu_us_per_call": self.client_cpu_us[s],
                "server_cpu_us_per_call": self.server_cpu_us[s],
                "client_page_faults_per_call": self.client_faults[s],
                "server_page_faults_per_call": self.server_faults[s],
            })
        };
        let mut lua = side(0);
        lua["thread_cpu_us_per_call"] = self
            .lua_threads_us
            .iter()
            .map(|(n, us)| (n.clone(), json!(us)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        let side = |s: usize| match s {
            0 => lua.clone(),
            s => side(s),
        };
        json!({
            "calls_per_round": calls,
            "grpc_zc": side(0),
            "tonic_current_thread": side(1),
            "tonic_multi_thread": side(2),
            "ratio_vs_tonic_current_thread": self.ratio[0],
            "ratio_vs_tonic_multi_thread": self.ratio[1],
            "overhead_us_vs_tonic_current_thread": self.overhead_us[0],
            "overhead_us_vs_tonic_multi_thread": self.overhead_us[1],
        })
    }
}

/// The runs of a 4-side case reordered as a 3-side one for the Lua side with spins off:
/// [spins off, tonic current-thread, tonic multi-thread].
fn spins_off_first(runs: &[Vec<Run>]) -> Vec<Vec<Run>> {
    vec![runs[3].clone(), runs[1].clone(), runs[2].clone()]
}

/// Where the clients and the server run (`GRPC_BENCH_PIN=1`: pinned).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    /// Left to the scheduler.
    Unpinned,
    /// Each client (the nginx worker with its runtime's threads, or the native client with
    /// its runtime) on CPU 0, the server on CPU 1: `worker_cpu_affinity`, as nginx users run
    /// it, with the server on another core as it would be on another machine.
    Pinned,
}

impl Placement {
    fn from_env(cpus: usize) -> Placement {
        let pin = std::env::var("GRPC_BENCH_PIN").is_ok_and(|v| v == "1");
        assert!(!pin || cpus >= 2, "GRPC_BENCH_PIN=1 needs two CPUs");
        if pin {
            Placement::Pinned
        } else {
            Placement::Unpinned
        }
    }

    fn worker_conf(self) -> &'static str {
        match self {
            Placement::Unpinned => "",
            Placement::Pinned => "worker_cpu_affinity 0001;",
        }
    }

    /// The suffix of this placement's JSON file and docs section.
    fn suffix(self) -> &'static str {
        match self {
            Placement::Unpinned => "",
            Placement::Pinned => "-pinned",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Placement::Unpinned => "one nginx worker, unpinned; native clients unpinned",
            Placement::Pinned => {
                "pinned: the nginx worker (its runtime's threads inherit the mask) and the \
                 native clients on CPU 0, the server on CPU 1"
            }
        }
    }
}

/// Pins the calling thread to `cpus`.
fn pin_thread(cpus: &[usize]) {
    // SAFETY: an all-zero cpu_set_t is a valid empty set and CPU_SET only writes inside it.
    let set = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        set
    };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
    assert_eq!(
        rc,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// µs per round trip of one byte between two threads over loopback TCP (TCP_NODELAY,
/// blocking sockets): `cpus` are the vCPUs of the two threads.
fn ping_pong(cpus: [usize; 2]) -> f64 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let echo = std::thread::spawn(move || {
        pin_thread(&[cpus[1]]);
        let (mut s, _) = listener.accept().unwrap();
        s.set_nodelay(true).unwrap();
        let mut b = [0u8; 1];
        while s.read_exact(&mut b).is_ok() {
            s.write_all(&b).unwrap();
        }
    });
    let all: Vec<usize> =
        (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    pin_thread(&[cpus[0]]);
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let mut b = [0u8; 1];
    let mut trip = |s: &mut TcpStream| {
        s.write_all(&b).unwrap();
        s.read_exact(&mut b).unwrap();
    };
    for _ in 0..100 {
        trip(&mut s);
    }
    let t0 = Instant::now();
    for _ in 0..PING_PONGS {
        trip(&mut s);
    }
    let us = t0.elapsed().as_secs_f64() * 1e6 / PING_PONGS as f64;
    drop(s);
    echo.join().unwrap();
    pin_thread(&all);
    us
}

fn pct(ratio: f64) -> String {
    format!("{:+.0} %", (ratio - 1.0) * 100.0)
}

fn size_name(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = Instant::now();
    // Before any pinning: machine() counts the CPUs this thread may use.
    let machine = machine();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let scale = |n: usize| if quick { (n / 10).max(ROUNDS) } else { n };
    let root = repo_root();
    fs::create_dir_all(root.join("target/bench")).unwrap();

    // The machine's floor: a hand-off between threads on one vCPU and across two.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut same, mut cross) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        same.push(ping_pong([0, 0]));
        cross.push(ping_pong([0, 1 % cpus]));
    }
    let (same, cross) = (median(same), median(cross));
    eprintln!("TCP ping-pong round trip: {same:.1} µs on one vCPU, {cross:.1} µs across two");

    let server = GrpcServer::start(GrpcServerOpts::default().threads(0).no_gzip_replies());
    let placement = Placement::from_env(cpus);
    if placement == Placement::Pinned {
        // Every thread of the server (tokio's blocking pool included) on CPU 1.
        let pinned = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &server.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .status();
        assert!(
            pinned.is_ok_and(|s| s.success()),
            "taskset of the server failed"
        );
    }
    // `lib_dir`: where the dynamic loader finds libresty_grpc_zc.so (None: the build's).
    let start_nginx = |name: &str, spin: &str, lib_dir: Option<&str>| {
        let mut b = NginxBuilder::new(name);
        if let Some(dir) = lib_dir {
            b = b.env("LD_LIBRARY_PATH", dir);
        }
        b.workers(1)
            // The runtime's threads start in init_worker, after nginx set the worker's mask,
            // and inherit it.
            .main_conf(placement.worker_conf())
            .env("GRPC_BENCH_SPIN", spin)
            .error_log_level("warn")
            .http_conf(
                &HTTP_CONF
                    .replace("@PAYLOAD@", LUA_PAYLOAD)
                    .replace("@WARMUP@", &WARMUP.to_string())
                    .replace("@PROTO@", &root.join("testkit/proto").to_string_lossy()),
            )
            .server_conf(SERVER_CONF)
            .start()
    };
    // GRPC_BENCH_SPIN (see HTTP_CONF) also sets the first nginx's spins, for experiments.
    let nginx = start_nginx(
        "bench-grpc",
        &std::env::var("GRPC_BENCH_SPIN").unwrap_or_default(),
        None,
    );
    if let Some(dirs) = std::env::var_os("GRPC_BENCH_SERVE_B") {
        // Builds of the runtime side by side: one more nginx per directory, loading the
        // libresty_grpc_zc.so found there (the dynamic loader's search; the host stays the
        // same) with the default spins. Each nginx is a line "side <name> <worker pid> <url>".
        let dirs = dirs.to_string_lossy().into_owned();
        let others: Vec<(String, Nginx)> = dirs
            .split(':')
            .enumerate()
            .map(|(i, dir)| {
                let name = format!("B{}", i + 1);
                let n = start_nginx(&format!("bench-grpc-{name}"), "", Some(dir));
                (format!("{name}={dir}"), n)
            })
            .collect();
        println!("server pid {}", server.pid());
        let seq = format!("/seq?m=hello&size=0&n=20000&t={}", server.addr());
        println!("side A {} {}", nginx.worker_pids()[0], nginx.url(&seq));
        for (name, n) in &others {
            println!("side {name} {} {}", n.worker_pids()[0], n.url(&seq));
        }
        println!("ready");
        let _ = std::io::stdin().read_line(&mut String::new());
        return;
    }
    let nospin = start_nginx("bench-grpc-nospin", "0,0,0", None);
    if std::env::var_os("GRPC_BENCH_SERVE").is_some() {
        println!(
            "server pid {}, nginx worker pids {:?}\n\
             curl '{}'",
            server.pid(),
            nginx.worker_pids(),
            nginx.url(&format!("/seq?m=hello&size=0&n=20000&t={}", server.addr()))
        );
        let _ = std::io::stdin().read_line(&mut String::new());
        return;
    }
    if placement == Placement::Pinned {
        // The native clients on CPU 0 like the nginx worker; the multi-thread runtime's
        // workers inherit this thread's mask.
        pin_thread(&[0]);
    }
    let current = Native::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        &server,
    );
    let multi = Native::new(Runtime::new().unwrap(), &server);
    let (spid, wpid, wpid0, me) = (
        server.pid(),
        nginx.worker_pids()[0],
        nospin.worker_pids()[0],
        std::process::id() as i32,
    );

    // Sequential SayHello.
    let calls = scale(SEQUENTIAL_CALLS) / ROUNDS;
    let runs = interleave(
        spid,
        &mut [
            (wpid, &mut || {
                lua(&nginx, &server, &format!("/seq?m=hello&size=0&n={calls}"))
            }),
            (me, &mut || current.hello(calls)),
            (me, &mut || multi.hello(calls)),
            (wpid0, &mut || {
                lua(&nospin, &server, &format!("/seq?m=hello&size=0&n={calls}"))
            }),
        ],
    );
    let seq = Case::new(&runs[..3], calls, WARMUP);
    let seq0 = Case::new(&spins_off_first(&runs), calls, WARMUP);
    let mut seq_json = seq.json(&runs, calls);
    seq_json["grpc_zc_spins_off"] = seq0.json(&spins_off_first(&runs), calls)["grpc_zc"].clone();
    seq_json["spins_off_ratio_vs_tonic_current_thread"] = json!(seq0.ratio[0]);
    seq_json["spins_off_ratio_vs_tonic_multi_thread"] = json!(seq0.ratio[1]);
    eprintln!(
        "sequential SayHello: Lua {:.1} (spins off {:.1}) / tonic {:.1} / {:.1} µs per call \
         ({} vs current-thread)",
        seq.us_per_call[0],
        seq0.us_per_call[0],
        seq.us_per_call[1],
        seq.us_per_call[2],
        pct(seq.ratio[0])
    );

    // Payload sweep.
    let mut sweep = Vec::new();
    for &(size, total) in PAYLOADS {
        let calls = (scale(total) / ROUNDS).max(1);
        let runs = interleave(
            spid,
            &mut [
                (wpid, &mut || {
                    lua(
                        &nginx,
                        &server,
                        &format!("/seq?m=echo&size={size}&n={calls}"),
                    )
                }),
                (me, &mut || current.echo(size, calls)),
                (me, &mut || multi.echo(size, calls)),
                (wpid0, &mut || {
                    lua(
                        &nospin,
                        &server,
                        &format!("/seq?m=echo&size={size}&n={calls}"),
                    )
                }),
            ],
        );
        let case = Case::new(&runs[..3], calls, WARMUP);
        let case0 = Case::new(&spins_off_first(&runs), calls, WARMUP);
        eprintln!(
            "echo {:>8}: {:.1} / {:.1} / {:.1} µs per call ({} vs current-thread)",
            size_name(size),
            case.us_per_call[0],
            case.us_per_call[1],
            case.us_per_call[2],
            pct(case.ratio[0])
        );
        let mut json = case.json(&runs, calls);
        json["grpc_zc_spins_off"] = case0.json(&spins_off_first(&runs), calls)["grpc_zc"].clone();
        json["spins_off_ratio_vs_tonic_current_thread"] = json!(case0.ratio[0]);
        sweep.push((size, calls, json, case, case0));
    }

    // Concurrency sweep: calls per second.
    let mut conc = Vec::new();
    for &(c, total) in CONCURRENCY {
        let calls = (scale(total) / ROUNDS).max(c);
        let runs = interleave(
            spid,
            &mut [
                (wpid, &mut || {
                    lua(&nginx, &server, &format!("/conc?c={c}&n={calls}"))
                }),
                (me, &mut || current.concurrent(c, calls)),
                (me, &mut || multi.concurrent(c, calls)),
                (wpid0, &mut || {
                    lua(&nospin, &server, &format!("/conc?c={c}&n={calls}"))
                }),
            ],
        );
        let warm = WARMUP.div_ceil(c) * c;
        let case = Case::new(&runs[..3], calls, warm);
        let case0 = Case::new(&spins_off_first(&runs), calls, warm);
        let per_sec: Vec<f64> = (0..4)
            .map(|s| median(runs[s].iter().map(|r| calls as f64 / r.secs).collect()))
            .collect();
        // Lua throughput / native throughput, paired by round.
        let rel = |lua: usize, n: usize| {
            median(
                runs[lua]
                    .iter()
                    .zip(&runs[n])
                    .map(|(l, t)| t.secs / l.secs)
                    .collect(),
            )
        };
        let rel = [rel(0, 1), rel(0, 2), rel(3, 1), rel(3, 2)];
        eprintln!(
            "{c:>3} in flight: Lua {:.0} (spins off {:.0}) / tonic {:.0} / {:.0} calls/s \
             (Lua = {:.0} % / {:.0} % of native)",
            per_sec[0],
            per_sec[3],
            per_sec[1],
            per_sec[2],
            rel[0] * 100.0,
            rel[1] * 100.0
        );
        let mut json = case.json(&runs, calls);
        json["grpc_zc_spins_off"] = case0.json(&spins_off_first(&runs), calls)["grpc_zc"].clone();
        json["in_flight"] = json!(c);
        json["calls_per_second"] = json!({ "grpc_zc": per_sec[0],
            "tonic_current_thread": per_sec[1], "tonic_multi_thread": per_sec[2],
            "grpc_zc_spins_off": per_sec[3] });
        json["throughput_vs_tonic_current_thread"] = json!(rel[0]);
        json["throughput_vs_tonic_multi_thread"] = json!(rel[1]);
        json["spins_off_throughput_vs_tonic_current_thread"] = json!(rel[2]);
        json["spins_off_throughput_vs_tonic_multi_thread"] = json!(rel[3]);
        conc.push((c, calls, per_sec, rel, json, case, case0));
    }
    nginx.assert_log_clean(&[]);
    nospin.assert_log_clean(&[]);

    // Tables vs pre-encoded strings (issue 5), both from Lua, same nginx, rounds interleaved.
    let mut tables = Vec::new();
    // Tables vs strings compares two Lua paths in one worker: measured in the default
    // placement only.
    let table_cases = if placement == Placement::Pinned {
        &[][..]
    } else {
        TABLE_CASES
    };
    for &(m, size, total) in table_cases {
        let calls = (scale(total) / TABLE_ROUNDS).max(1);
        let q = |mode: &str| format!("/tables?m={m}&mode={mode}&size={size}&n={calls}");
        let runs = interleave_rounds(
            spid,
            TABLE_ROUNDS,
            &mut [
                (wpid, &mut || lua(&nginx, &server, &q("table"))),
                (wpid, &mut || lua(&nginx, &server, &q("string"))),
            ],
        );
        let ratio = median(
            runs[0]
                .iter()
                .zip(&runs[1])
                .map(|(t, s)| t.secs / s.secs)
                .collect(),
        );
        let us = |k: usize| {
            median(
                runs[k]
                    .iter()
                    .map(|r| r.secs * 1e6 / calls as f64)
                    .collect(),
            )
        };
        eprintln!(
            "tables {m} {size} B: {:.1} vs {:.1} µs per call ({})",
            us(0),
            us(1),
            pct(ratio)
        );
        tables.push((m, size, calls * TABLE_ROUNDS, us(0), us(1), ratio));
    }

    // Targets (issue 4), against the faster native client of each comparison.
    let best = |r: [f64; 2]| r[0].max(r[1]);
    let seq_overhead = best(seq.ratio) - 1.0;
    let at = |size: usize| &sweep.iter().find(|s| s.0 == size).unwrap().3;
    let (o512, o100k) = (at(512).overhead_us[0], at(102_400).overhead_us[0]);
    // Met when the 100 KiB overhead is at most 1.5x the 512 B one (or not positive at all);
    // the ratio means nothing when the 512 B overhead is not positive.
    let growth = if o512 > 0.0 { o100k / o512 } else { f64::NAN };
    let growth_met = o100k <= 0.0 || growth <= 1.5;
    let growth_text = if growth.is_nan() {
        "ratio undefined".to_owned()
    } else {
        format!("{growth:.1}x")
    };
    let c64 = conc.iter().find(|c| c.0 == 64).unwrap();
    let rel64 = c64.3[0].min(c64.3[1]);
    let elapsed = started.elapsed().as_secs_f64();

    let doc = json!({
        "benchmark": "grpc", "machine": machine, "quick": quick, "rounds": ROUNDS,
        "server": "grpc-test-server --threads 0 --no-gzip-replies (one tokio thread)",
        "placement": placement.describe(),
        "spins_off": "second nginx, runtime loaded with spin_us = 0, poll_spin_us = 0, busy_poll_us = 0",
        "ping_pong_us": { "one_vcpu": same, "two_vcpus": cross },
        "sequential_say_hello": seq_json,
        "payload_sweep": sweep.iter().map(|s| {
            let mut v = s.2.clone();
            v["payload_bytes"] = json!(s.0);
            v
        }).collect::<Vec<_>>(),
        "concurrency_sweep": conc.iter().map(|c| c.4.clone()).collect::<Vec<_>>(),
        "tables_vs_strings": tables.iter().map(|t| json!({
            "method": t.0, "payload_bytes": t.1, "calls_a_side": t.2, "rounds": TABLE_ROUNDS,
            "tables_us_per_call": t.3, "strings_us_per_call": t.4, "ratio": t.5,
        })).collect::<Vec<_>>(),
        "targets": {
            "sequential_overhead": seq_overhead,
            "overhead_100k_over_512": if growth.is_nan() { Value::Null } else { json!(growth) },
            "overhead_100k_us": o100k,
            "overhead_512_us": o512,
            "throughput_64_vs_native": rel64,
        },
        "elapsed_s": elapsed,
    });
    fs::write(
        root.join(format!("target/bench/grpc{}.json", placement.suffix())),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();

    let mut t = String::new();
    let _ = writeln!(
        t,
        "Command: `make bench` (`{}cargo bench --bench grpc`{}). Machine: {machine}.\n\
         Server: testkit's `grpc-test-server --threads 0 --no-gzip-replies` (one tokio thread) on\n\
         127.0.0.1; one nginx worker; native clients: tonic 0.14 on a current-thread\n\
         runtime and on a default multi-thread runtime (2 workers). Placement: {}.\n\
         Sides interleaved, {ROUNDS} rounds, medians of rounds; ratios and overheads are paired\n\
         by round. This run: {:.0} s.\n\
         \"Spins off\": a second nginx (1 worker) whose runtime is loaded with the host's\n\
         `spin_us = 0, poll_spin_us = 0` and `busy_poll_us = 0` (defaults 20, 50 and 500).\n\
         Results also in\n\
         `target/bench/grpc{}.json`.\n",
        if placement == Placement::Pinned {
            "GRPC_BENCH_PIN=1 "
        } else {
            ""
        },
        if quick { ", BENCH_QUICK=1" } else { "" },
        placement.describe(),
        elapsed,
        placement.suffix(),
    );
    let _ = writeln!(
        t,
        "Floor (this run): 1-byte TCP ping-pong between two threads, {same:.1} µs per round \
         trip on one vCPU, {cross:.1} µs across two.\n"
    );
    let _ = writeln!(
        t,
        "**Sequential SayHello** (empty name), {} calls a side. CPU: µs of CPU time per call \
         used by the client process (the nginx worker with its runtime threads, or the tonic \
         client) and by the server while that side ran.\n\n\
         | side | µs per call | vs tonic current-thread | vs tonic multi-thread \
         | client CPU µs per call | server CPU µs per call |\n|---|---|---|---|---|---|",
        calls * ROUNDS
    );
    let vs = |c: &Case, k: usize| format!("{} ({:+.1} µs)", pct(c.ratio[k]), c.overhead_us[k]);
    let rows = [
        (SIDES[0], &seq, 0, true),
        ("resty.grpc_zc (Lua), spins off", &seq0, 0, true),
        (SIDES[1], &seq, 1, false),
        (SIDES[2], &seq, 2, false),
    ];
    for (name, case, s, is_lua) in rows {
        let (a, b) = if is_lua {
            (vs(case, 0), vs(case, 1))
        } else {
            (String::new(), String::new())
        };
        let _ = writeln!(
            t,
            "| {name} | {:.1} | {a} | {b} | {:.1} | {:.1} |",
            case.us_per_call[s], case.client_cpu_us[s], case.server_cpu_us[s]
        );
    }
    let _ = writeln!(
        t,
        "\n**Payload sweep**: `zctest.Test/Unary` echoing a bytes field of that size (reply \
         the same size). Overhead: Lua µs minus native µs per call.\n\n\
         | payload | calls a side | Lua µs | tonic current-thread µs | tonic multi-thread µs \
         | Lua vs current-thread | overhead µs | Lua vs multi-thread | overhead µs \
         | client CPU µs (Lua / current-thread) | client page faults (Lua / current-thread) \
         | Lua, spins off µs | spins off vs current-thread |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (size, calls, _, c, c0) in &sweep {
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:+.1} | {} | {:+.1} | {:.1} / {:.1} \
             | {:.1} / {:.1} | {:.1} | {} |",
            size_name(*size),
            calls * ROUNDS,
            c.us_per_call[0],
            c.us_per_call[1],
            c.us_per_call[2],
            pct(c.ratio[0]),
            c.overhead_us[0],
            pct(c.ratio[1]),
            c.overhead_us[1],
            c.client_cpu_us[0],
            c.client_cpu_us[1],
            c.client_faults[0],
            c.client_faults[1],
            c0.us_per_call[0],
            pct(c0.ratio[0])
        );
    }
    let _ = writeln!(
        t,
        "\n**Concurrency sweep**: SayHello calls in flight on one connection (Lua: light \
         threads of one request in one worker; native: tokio tasks), calls per second.\n\n\
         | in flight | calls a side | Lua | Lua, spins off | tonic current-thread \
         | tonic multi-thread | Lua / current-thread | Lua / multi-thread \
         | spins off / current-thread | spins off / multi-thread \
         | client CPU µs per call (Lua / spins off / ct / mt) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (c, calls, per_sec, rel, _, case, case0) in &conc {
        let _ = writeln!(
            t,
            "| {c} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} % | {:.0} % | {:.0} % \
             | {:.1} / {:.1} / {:.1} / {:.1} |",
            calls * ROUNDS,
            per_sec[0],
            per_sec[3],
            per_sec[1],
            per_sec[2],
            rel[0] * 100.0,
            rel[1] * 100.0,
            rel[2] * 100.0,
            rel[3] * 100.0,
            case.client_cpu_us[0],
            case0.client_cpu_us[0],
            case.client_cpu_us[1],
            case.client_cpu_us[2]
        );
    }
    let split = |c: &Case| {
        let get = |name: &str| {
            c.lua_threads_us
                .iter()
                .find(|(n, _)| n == name)
                .map_or(f64::NAN, |t| t.1)
        };
        // `grpc_zc-io` exists only on a host without asynchronous polling (then the tokio
        // worker runs the calls); with this repository's host it reads "-".
        let io = get("grpc_zc-io");
        let io = if io.is_nan() {
            "-".to_owned()
        } else {
            format!("{io:.1}")
        };
        format!("{:.1} / {:.1} / {io}", get("nginx"), get("grpc_zc-poll"))
    };
    let _ = writeln!(
        t,
        "\n**Where the Lua side's CPU goes**: CPU µs per call of the nginx worker's threads \
         (main thread running Lua and the host / the runtime's poll thread, which is also its \
         event loop / a tokio worker, only on a host without asynchronous polling), median of \
         rounds.\n\n\
         | case | default spins: nginx / grpc_zc-poll / grpc_zc-io | spins off: nginx / \
         grpc_zc-poll / grpc_zc-io |\n|---|---|---|\n\
         | sequential SayHello | {} | {} |",
        split(&seq),
        split(&seq0)
    );
    for (c, _, _, _, _, case, case0) in &conc {
        let _ = writeln!(t, "| {c} in flight | {} | {} |", split(case), split(case0));
    }
    let _ = writeln!(
        t,
        "\nTargets (against the faster native client): sequential overhead ≤ 10 %: {:+.0} %, \
         {}; overhead at 100 KiB ≤ 1.5x the overhead at 512 B (vs current-thread): {:.1} µs / \
         {:.1} µs = {growth_text}, {}; throughput at 64 in flight ≥ 90 % of native: {:.0} %, \
         {}.\n",
        seq_overhead * 100.0,
        met(seq_overhead <= 0.10),
        o100k,
        o512,
        met(growth_met),
        rel64 * 100.0,
        met(rel64 >= 0.90)
    );
    replace_section(
        &root.join("docs/benchmarks.md"),
        &format!("grpc{}", placement.suffix()),
        &t,
    );

    if tables.is_empty() {
        return;
    }
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Command: `make bench` (`cargo bench --bench grpc`{}). Machine: {machine}. The same \
         nginx worker calls the same server with Lua tables (`resty.grpc_zc.pb` encodes into \
         the arena, decodes replies from it; types from `grpc.load_proto`) and with \
         pre-encoded protobuf strings; {TABLE_ROUNDS} rounds interleaved, ratio paired by round \
         (median). Targets: tables add at most 5 % for SayHello and 10 % at 100 KB.\n\n\
         | call | calls a side | tables µs | strings µs | tables vs strings | target |\n\
         |---|---|---|---|---|---|",
        if quick { ", BENCH_QUICK=1" } else { "" },
    );
    for (m, size, calls, tus, sus, ratio) in &tables {
        let (name, limit) = if *m == "hello" {
            ("SayHello {name = \"world\"}".to_owned(), 1.05)
        } else {
            (
                format!("zctest.Test/Unary {{payload = {}}}", size_name(*size)),
                1.10,
            )
        };
        let _ = writeln!(
            t,
            "| {name} | {calls} | {tus:.1} | {sus:.1} | {:+.1} % | {} |",
            (ratio - 1.0) * 100.0,
            met(*ratio <= limit)
        );
    }
    replace_section(&root.join("docs/benchmarks.md"), "grpc-tables", &t);
    println!("{t}");
}
