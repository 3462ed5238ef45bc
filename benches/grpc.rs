//! gRPC benchmark: `resty.grpc_zc` from nginx Lua against the native tonic client, same server,
//! same run, rounds interleaved (the first side rotates from round to round), medians of rounds.
//!
//! ```text
//!  nginx worker (1, unpinned) ── conn:unary ──┐
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

use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use bytes::Bytes;
use serde_json::{json, Value};
use testkit::bench::{machine, median, replace_section};
use testkit::grpc::pb::helloworld::{greeter_client::GreeterClient, HelloRequest};
use testkit::grpc::pb::zctest::{test_client::TestClient, EchoRequest};
use testkit::tonic::transport::Channel;
use testkit::{payload, repo_root, GrpcServer, GrpcServerOpts, Nginx, NginxBuilder, LUA_PAYLOAD};
use tokio::runtime::Runtime;

/// Rounds per case; every side runs once per round.
const ROUNDS: usize = 5;
/// Sequential SayHello calls per side, over all rounds.
const SEQUENTIAL_CALLS: usize = 100_000;
/// Payload sweep: (payload bytes, calls per side over all rounds).
const PAYLOADS: &[(usize, usize)] = &[
    (0, 10_000),
    (512, 10_000),
    (4_096, 10_000),
    (102_400, 3_000),
    (1_048_576, 500),
];
/// Concurrency sweep: (calls in flight, calls per side over all rounds).
const CONCURRENCY: &[(usize, usize)] = &[(1, 5_000), (16, 20_000), (64, 20_000), (256, 20_000)];
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
init_worker_by_lua_block { assert(require("resty.grpc_zc").init()) }
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
        end
        calls(conn, path, req, WARMUP, want)
        local t0 = bench_now()
        calls(conn, path, req, n, want)
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

/// Runs every side once per round, the first side rotating, and returns the seconds per side
/// and round.
fn interleave(sides: &mut [&mut dyn FnMut() -> f64]) -> Vec<Vec<f64>> {
    let mut times = vec![Vec::new(); sides.len()];
    for round in 0..ROUNDS {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            times[side].push((sides[side])());
        }
    }
    times
}

/// Medians of one case: µs per call of each side, and the round-paired ratios and
/// differences of Lua against each native side.
struct Case {
    us_per_call: [f64; 3],
    /// Lua time / native time, median of rounds: [current-thread, multi-thread].
    ratio: [f64; 2],
    /// Lua µs per call minus native µs per call, median of rounds.
    overhead_us: [f64; 2],
}

impl Case {
    fn new(times: &[Vec<f64>], calls: usize) -> Case {
        let us = |t: f64| t * 1e6 / calls as f64;
        let paired = |native: usize, f: &dyn Fn(f64, f64) -> f64| {
            median(
                times[0]
                    .iter()
                    .zip(&times[native])
                    .map(|(&l, &n)| f(l, n))
                    .collect(),
            )
        };
        Case {
            us_per_call: [0, 1, 2].map(|s| median(times[s].iter().map(|&t| us(t)).collect())),
            ratio: [1, 2].map(|s| paired(s, &|l, n| l / n)),
            overhead_us: [1, 2].map(|s| paired(s, &|l, n| us(l) - us(n))),
        }
    }

    fn json(&self, times: &[Vec<f64>], calls: usize) -> Value {
        json!({
            "calls_per_round": calls,
            "seconds": { "grpc_zc": times[0], "tonic_current_thread": times[1],
                         "tonic_multi_thread": times[2] },
            "us_per_call": { "grpc_zc": self.us_per_call[0],
                             "tonic_current_thread": self.us_per_call[1],
                             "tonic_multi_thread": self.us_per_call[2] },
            "ratio_vs_tonic_current_thread": self.ratio[0],
            "ratio_vs_tonic_multi_thread": self.ratio[1],
            "overhead_us_vs_tonic_current_thread": self.overhead_us[0],
            "overhead_us_vs_tonic_multi_thread": self.overhead_us[1],
        })
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
    let nginx = NginxBuilder::new("bench-grpc")
        .workers(1)
        .error_log_level("warn")
        .http_conf(
            &HTTP_CONF
                .replace("@PAYLOAD@", LUA_PAYLOAD)
                .replace("@WARMUP@", &WARMUP.to_string()),
        )
        .server_conf(SERVER_CONF)
        .start();
    let current = Native::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap(),
        &server,
    );
    let multi = Native::new(Runtime::new().unwrap(), &server);

    // Sequential SayHello.
    let calls = scale(SEQUENTIAL_CALLS) / ROUNDS;
    let times = interleave(&mut [
        &mut || lua(&nginx, &server, &format!("/seq?m=hello&size=0&n={calls}")),
        &mut || current.hello(calls),
        &mut || multi.hello(calls),
    ]);
    let seq = Case::new(&times, calls);
    let seq_json = seq.json(&times, calls);
    eprintln!(
        "sequential SayHello: {:.1} / {:.1} / {:.1} µs per call ({} vs current-thread)",
        seq.us_per_call[0],
        seq.us_per_call[1],
        seq.us_per_call[2],
        pct(seq.ratio[0])
    );

    // Payload sweep.
    let mut sweep = Vec::new();
    for &(size, total) in PAYLOADS {
        let calls = (scale(total) / ROUNDS).max(1);
        let times = interleave(&mut [
            &mut || {
                lua(
                    &nginx,
                    &server,
                    &format!("/seq?m=echo&size={size}&n={calls}"),
                )
            },
            &mut || current.echo(size, calls),
            &mut || multi.echo(size, calls),
        ]);
        let case = Case::new(&times, calls);
        eprintln!(
            "echo {:>8}: {:.1} / {:.1} / {:.1} µs per call ({} vs current-thread)",
            size_name(size),
            case.us_per_call[0],
            case.us_per_call[1],
            case.us_per_call[2],
            pct(case.ratio[0])
        );
        sweep.push((size, calls, case.json(&times, calls), case));
    }

    // Concurrency sweep: calls per second.
    let mut conc = Vec::new();
    for &(c, total) in CONCURRENCY {
        let calls = (scale(total) / ROUNDS).max(c);
        let times = interleave(&mut [
            &mut || lua(&nginx, &server, &format!("/conc?c={c}&n={calls}")),
            &mut || current.concurrent(c, calls),
            &mut || multi.concurrent(c, calls),
        ]);
        let per_sec: Vec<f64> = (0..3)
            .map(|s| median(times[s].iter().map(|&t| calls as f64 / t).collect()))
            .collect();
        // Lua throughput / native throughput, paired by round.
        let rel = |n: usize| {
            median(
                times[0]
                    .iter()
                    .zip(&times[n])
                    .map(|(&l, &t)| t / l)
                    .collect(),
            )
        };
        let rel = [rel(1), rel(2)];
        eprintln!(
            "{c:>3} in flight: {:.0} / {:.0} / {:.0} calls/s (Lua = {:.0} % / {:.0} % of native)",
            per_sec[0],
            per_sec[1],
            per_sec[2],
            rel[0] * 100.0,
            rel[1] * 100.0
        );
        let json = json!({
            "in_flight": c, "calls_per_round": calls,
            "seconds": { "grpc_zc": times[0], "tonic_current_thread": times[1],
                         "tonic_multi_thread": times[2] },
            "calls_per_second": { "grpc_zc": per_sec[0], "tonic_current_thread": per_sec[1],
                                  "tonic_multi_thread": per_sec[2] },
            "throughput_vs_tonic_current_thread": rel[0],
            "throughput_vs_tonic_multi_thread": rel[1],
        });
        conc.push((c, calls, per_sec, rel, json));
    }
    nginx.assert_log_clean(&[]);

    // Targets (issue 4), against the faster native client of each comparison.
    let best = |r: [f64; 2]| r[0].max(r[1]);
    let seq_overhead = best(seq.ratio) - 1.0;
    let at = |size: usize| &sweep.iter().find(|s| s.0 == size).unwrap().3;
    let (o512, o100k) = (at(512).overhead_us[0], at(102_400).overhead_us[0]);
    // Meaningless when the 512 B overhead is within noise of zero.
    let growth = if o512 > 0.0 { o100k / o512 } else { f64::NAN };
    let c64 = conc.iter().find(|c| c.0 == 64).unwrap();
    let rel64 = c64.3[0].min(c64.3[1]);
    let elapsed = started.elapsed().as_secs_f64();

    let machine = machine();
    let doc = json!({
        "benchmark": "grpc", "machine": machine, "quick": quick, "rounds": ROUNDS,
        "server": "grpc-test-server --threads 0 --no-gzip-replies (one tokio thread)",
        "nginx": "1 worker, unpinned",
        "ping_pong_us": { "one_vcpu": same, "two_vcpus": cross },
        "sequential_say_hello": seq_json,
        "payload_sweep": sweep.iter().map(|s| {
            let mut v = s.2.clone();
            v["payload_bytes"] = json!(s.0);
            v
        }).collect::<Vec<_>>(),
        "concurrency_sweep": conc.iter().map(|c| c.4.clone()).collect::<Vec<_>>(),
        "targets": {
            "sequential_overhead": seq_overhead,
            "overhead_100k_over_512": growth,
            "throughput_64_vs_native": rel64,
        },
        "elapsed_s": elapsed,
    });
    fs::write(
        root.join("target/bench/grpc.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();

    let mut t = String::new();
    let _ = writeln!(
        t,
        "Command: `make bench` (`cargo bench --bench grpc`{}). Machine: {machine}.\n\
         Server: testkit's `grpc-test-server --threads 0 --no-gzip-replies` (one tokio thread) on\n\
         127.0.0.1; one nginx worker, unpinned; native clients: tonic 0.14 on a current-thread\n\
         runtime and on a default multi-thread runtime (2 workers). Sides interleaved, {ROUNDS}\n\
         rounds, medians of rounds; ratios and overheads are paired by round. This run: {:.0} s.\n\
         Results also in `target/bench/grpc.json`.\n",
        if quick { ", BENCH_QUICK=1" } else { "" },
        elapsed
    );
    let _ = writeln!(
        t,
        "Floor (this run): 1-byte TCP ping-pong between two threads, {same:.1} µs per round \
         trip on one vCPU, {cross:.1} µs across two.\n"
    );
    let _ = writeln!(
        t,
        "**Sequential SayHello** (empty name), {} calls a side:\n\n\
         | side | µs per call | Lua vs this side |\n|---|---|---|",
        calls * ROUNDS
    );
    for (s, name) in SIDES.iter().enumerate() {
        let vs = match s {
            0 => "".to_owned(),
            _ => format!(
                "{} ({:+.1} µs)",
                pct(seq.ratio[s - 1]),
                seq.overhead_us[s - 1]
            ),
        };
        let _ = writeln!(t, "| {name} | {:.1} | {vs} |", seq.us_per_call[s]);
    }
    let _ = writeln!(
        t,
        "\n**Payload sweep**: `zctest.Test/Unary` echoing a bytes field of that size (reply \
         the same size). Overhead: Lua µs minus native µs per call.\n\n\
         | payload | calls a side | Lua µs | tonic current-thread µs | tonic multi-thread µs \
         | Lua vs current-thread | overhead µs | Lua vs multi-thread | overhead µs |\n\
         |---|---|---|---|---|---|---|---|---|"
    );
    for (size, calls, _, c) in &sweep {
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:+.1} | {} | {:+.1} |",
            size_name(*size),
            calls * ROUNDS,
            c.us_per_call[0],
            c.us_per_call[1],
            c.us_per_call[2],
            pct(c.ratio[0]),
            c.overhead_us[0],
            pct(c.ratio[1]),
            c.overhead_us[1]
        );
    }
    let _ = writeln!(
        t,
        "\n**Concurrency sweep**: SayHello calls in flight on one connection (Lua: light \
         threads of one request in one worker; native: tokio tasks), calls per second.\n\n\
         | in flight | calls a side | Lua calls/s | tonic current-thread calls/s \
         | tonic multi-thread calls/s | Lua / current-thread | Lua / multi-thread |\n\
         |---|---|---|---|---|---|---|"
    );
    for (c, calls, per_sec, rel, _) in &conc {
        let _ = writeln!(
            t,
            "| {c} | {} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} % |",
            calls * ROUNDS,
            per_sec[0],
            per_sec[1],
            per_sec[2],
            rel[0] * 100.0,
            rel[1] * 100.0
        );
    }
    let _ = writeln!(
        t,
        "\nTargets (against the faster native client): sequential overhead ≤ 10 %: {:+.0} %, \
         {}; overhead at 100 KiB ≤ 1.5x the overhead at 512 B (vs current-thread): {:.1} µs / \
         {:.1} µs = {:.1}x, {}; throughput at 64 in flight ≥ 90 % of native: {:.0} %, {}.\n",
        seq_overhead * 100.0,
        met(seq_overhead <= 0.10),
        o100k,
        o512,
        growth,
        met(growth <= 1.5),
        rel64 * 100.0,
        met(rel64 >= 0.90)
    );
    replace_section(&root.join("docs/benchmarks.md"), "grpc", &t);
    println!("{t}");
}
