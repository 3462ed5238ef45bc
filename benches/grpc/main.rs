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
//! nginx's host spins and busy polling, `GRPC_BENCH_BUSY_POLL=<plan>` its `busy_poll` plan.
//! `GRPC_BENCH_SERVE=1` measures nothing: it starts the
//! server and nginx, prints their pids and a `curl` line for the Lua loop, and waits for Enter
//! (for `perf`, `strace -c`, `ps -L`).
//! `GRPC_BENCH_SERVE_B=<dir>[:<dir>...]` does the same with one more nginx per directory, each
//! loading the `libresty_grpc_zc.so` found there: builds side by side (`scripts/grpc-ab.sh`
//! drives it).
//!
//! Every case also runs a second nginx whose runtime is loaded with every spin off
//! (`spin_us = 0, poll_spin_us = 0, busy_poll_us = 0` instead of the defaults 20, 50 and 500 µs):
//! what the spins buy in time and cost in CPU.

//! Modules: `nginx` (the Lua locations, starting an nginx), `placement` (pinning), `floor`
//! (the ping-pong), `rounds` (interleaved runs and their CPU time), `case` (medians and ratios
//! of one case), `cases` (the cases), `report` (JSON and the markdown sections). The tonic
//! clients are `testkit::native`'s.

mod case;
mod cases;
mod floor;
mod nginx;
mod placement;
mod report;
mod rounds;

use std::fs;
use std::time::{Duration, Instant};

use testkit::bench::{busy_poll_plan, machine};
use testkit::{repo_root, GrpcServer, GrpcServerOpts, Nginx};

use cases::Bench;
use floor::Floor;
use placement::Placement;
use report::Results;
use testkit::native::Native;

/// Rounds per case; every side runs once per round.
const ROUNDS: usize = 8;
/// Calls before each timed loop (per request / per client), not timed.
const WARMUP: usize = 100;

const SIDES: [&str; 3] = [
    "resty.grpc_zc (Lua)",
    "tonic, current-thread runtime",
    "tonic, multi-thread runtime",
];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = Instant::now();
    // Before any pinning: machine() counts the CPUs this thread may use.
    let machine = machine();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let root = repo_root();
    fs::create_dir_all(root.join("target/bench")).unwrap();

    let floor = Floor::measure();
    eprintln!(
        "TCP ping-pong round trip: {:.1} µs on one vCPU, {:.1} µs across two",
        floor.same, floor.cross
    );

    let server = GrpcServer::start(GrpcServerOpts::default().threads(0).no_gzip_replies());
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let placement = Placement::from_env(cpus);
    placement.pin_server(server.pid());
    let start_nginx = |name: &str, spin: &str, plan: &str, lib_dir| {
        nginx::start(name, spin, plan, lib_dir, placement, &root)
    };
    // GRPC_BENCH_SPIN and GRPC_BENCH_BUSY_POLL (see the Lua in `nginx`) also set the first
    // nginx's spins and busy-polling plan.
    let nginx = start_nginx(
        "bench-grpc",
        &std::env::var("GRPC_BENCH_SPIN").unwrap_or_default(),
        &std::env::var("GRPC_BENCH_BUSY_POLL").unwrap_or_default(),
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
                let n = start_nginx(&format!("bench-grpc-{name}"), "", "", Some(dir));
                (format!("{name}={dir}"), n)
            })
            .collect();
        println!("server pid {}", server.pid());
        let seq = format!("/seq?m=hello&size=0&n=20000&t={}", server.addr());
        println!("side A {} {}", nginx.worker_pids()[0], nginx.url(&seq));
        for (name, n) in &others {
            println!("side {name} {} {}", n.worker_pids()[0], n.url(&seq));
        }
        // A build from before the plans logs none.
        let plan = |n: &Nginx| {
            busy_poll_plan(n, Duration::from_secs(3)).unwrap_or_else(|| "not logged".into())
        };
        println!("plan A {}", plan(&nginx));
        for (name, n) in &others {
            let side = name.split('=').next().unwrap_or(name);
            println!("plan {side} {}", plan(n));
        }
        println!("ready");
        let _ = std::io::stdin().read_line(&mut String::new());
        return;
    }
    let nospin = start_nginx("bench-grpc-nospin", "0,0,0", "", None);
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
    placement.pin_native_clients();
    let (current, multi) = Native::both(&server, WARMUP);
    let bench = Bench {
        server: &server,
        nginx: &nginx,
        nospin: &nospin,
        current: &current,
        multi: &multi,
        quick,
    };

    let seq = bench.sequential();
    let sweep = bench.payload_sweep();
    let conc = bench.concurrency_sweep();
    nginx.assert_log_clean(&[]);
    nospin.assert_log_clean(&[]);
    // Tables vs strings compares two Lua paths in one worker: measured in the default
    // placement only.
    let tables = if placement == Placement::Pinned {
        Vec::new()
    } else {
        bench.tables()
    };

    let results = Results {
        machine,
        quick,
        placement,
        floor,
        seq,
        sweep,
        conc,
        tables,
        elapsed: started.elapsed().as_secs_f64(),
    };
    report::write(&results, &root);
}
