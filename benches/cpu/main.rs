//! CPU per call (issue 15): what a gRPC call costs the client's CPUs, nginx with
//! `resty.grpc_zc` under each busy-polling plan next to the native tonic client, in three
//! placements, in one run: rounds interleaved (each round visits every placement, the first
//! rotating, and runs every side there, the first side rotating), medians of rounds, ratios
//! paired by round.
//!
//! ```text
//!  nginx, grpc.init({ busy_poll = "adaptive" }) ──┐
//!  nginx, grpc.init({ busy_poll = "fixed" }) ─────┤
//!  nginx, grpc.init({ busy_poll = "off" }) ───────┼──► grpc-test-server --threads 0 --no-gzip-replies
//!  tonic, current-thread runtime (native_ct) ─────┤        (one tokio thread, 127.0.0.1)
//!  tonic, multi-thread runtime (native) ──────────┘
//! ```
//!
//! Placements: pinned (the nginx worker, with `worker_cpu_affinity 0001;` its runtime's
//! threads too, and the native clients on CPU 0, the server on CPU 1), one CPU (all of them on
//! CPU 0) and unpinned. Each placement has three nginx of its own (one worker each), since a
//! runtime chooses its busy-polling plan once, from where its poll thread starts; the server
//! and this process (the native clients) are moved with `taskset` as the round enters a
//! placement.
//!
//! Cases: sequential `helloworld.Greeter/SayHello` (empty name), and 64 calls in flight (64 Lua
//! light threads of one request, or 64 tokio tasks), each side on one connection. Per run: the
//! wall time of the timed loop and the CPU time of the client (an nginx worker, all its
//! threads and each of them, from `/proc`; the native clients, this process, from
//! `getrusage`) and of the server, warm-up included.
//!
//! Writes `target/bench/cpu.json` and the `cpu` section of `docs/benchmarks.md`. Run with
//! `make bench` (or `cargo bench --bench cpu`; needs two CPUs); `BENCH_QUICK=1` runs 10x fewer
//! calls.
//!
//! Modules: `nginx` (the Lua, starting an nginx per placement and plan), `placement` (pinning),
//! `rounds` (interleaved runs and their CPU time), `figures` (medians and paired ratios of one
//! case), `report` (JSON, the markdown section and the issue's targets). The tonic clients are
//! `testkit::native`'s.

mod figures;
mod nginx;
mod placement;
mod report;
mod rounds;

use std::fs;
use std::time::Instant;

use resty_grpc_zc::cpu::current_affinity;
use testkit::bench::machine;
use testkit::{repo_root, GrpcServer, GrpcServerOpts, Nginx};

use figures::Figures;
use placement::Placement;
use report::Results;
use rounds::{interleave, measure, Client};
use testkit::native::Native;

/// Rounds; every side runs every case once per round in every placement.
pub const ROUNDS: usize = 5;
/// Calls before each timed loop (per request / per client), not timed.
pub const WARMUP: usize = 100;
/// Calls in flight in the concurrent case.
pub const IN_FLIGHT: usize = 64;

/// The sides, in order: three nginx (one per `busy_poll` mode, `nginx::MODES`), then the two
/// native clients.
pub const SIDES: usize = 5;
pub const NGINX_SIDES: usize = 3;
pub const NATIVE_CT: usize = 3;
pub const NATIVE: usize = 4;
/// The sides' keys in the JSON and their names in the tables.
pub const SIDE_KEYS: [&str; SIDES] = ["adaptive", "fixed", "off", "native_ct", "native"];
pub const SIDE_NAMES: [&str; SIDES] = [
    "nginx, `busy_poll = \"adaptive\"` (the default)",
    "nginx, `busy_poll = \"fixed\"` (always polls from the last task)",
    "nginx, `busy_poll = \"off\"`",
    "native_ct: tonic, current-thread runtime",
    "native: tonic, multi-thread runtime",
];

/// One case: its key, whether its calls are sequential (else 64 in flight), and the timed
/// calls a run without `BENCH_QUICK`: enough that a 10 ms clock tick stays under 2 % of an
/// nginx worker's CPU time in a run (it spends about 40 µs or more a sequential call, 20 µs or
/// more at 64 in flight, on these machines), few enough that the whole run takes about 5
/// minutes on 2 vCPUs.
pub struct Case {
    pub key: &'static str,
    pub sequential: bool,
    pub calls: usize,
}

pub const CASES: [Case; 2] = [
    Case {
        key: "sequential",
        sequential: true,
        calls: 20_000,
    },
    Case {
        key: "in_flight_64",
        sequential: false,
        calls: 75_000,
    },
];

impl Case {
    /// Timed calls a run (a tenth with `BENCH_QUICK`).
    pub fn calls(&self, quick: bool) -> usize {
        if quick {
            self.calls / 10
        } else {
            self.calls
        }
    }

    /// Untimed calls before them: `WARMUP`, rounded up to whole batches in flight.
    pub fn warmup(&self) -> usize {
        if self.sequential {
            WARMUP
        } else {
            WARMUP.div_ceil(IN_FLIGHT) * IN_FLIGHT
        }
    }

    /// Seconds of `calls` timed calls of the native client `n`.
    fn native(&self, n: &Native, calls: usize) -> f64 {
        if self.sequential {
            n.hello(calls)
        } else {
            n.concurrent(IN_FLIGHT, calls)
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = Instant::now();
    // Before any pinning: machine() counts the CPUs this thread may use, and "unpinned" is
    // the mask this process started with.
    let machine = machine();
    let cpus = current_affinity().expect("sched_getaffinity");
    assert!(
        cpus.len() >= 2 && cpus[..2] == [0, 1],
        "the cpu bench needs CPUs 0 and 1, has {cpus:?}"
    );
    let all = cpus
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let root = repo_root();
    fs::create_dir_all(root.join("target/bench")).unwrap();

    let server = GrpcServer::start(GrpcServerOpts::default().threads(0).no_gzip_replies());
    // Every nginx starts before any pinning (an unpinned worker inherits this process's mask).
    let nginx: Vec<Vec<(Nginx, String)>> = Placement::ALL
        .iter()
        .map(|&p| nginx::MODES.iter().map(|m| nginx::start(p, m)).collect())
        .collect();
    for (p, sides) in Placement::ALL.iter().zip(&nginx) {
        let plans: Vec<String> = sides.iter().map(|(_, plan)| plan.clone()).collect();
        eprintln!("{}: busy-polling plans {plans:?}", p.title());
    }
    // The native clients too: the multi-thread runtime gets a worker per CPU, and its threads
    // move with this process.
    let (current, multi) = Native::both(&server, WARMUP);
    // One untimed run of each case on every side first (connections, LuaJIT traces, buffers),
    // so that no side's first round pays for them.
    for case in &CASES {
        for (n, _) in nginx.iter().flatten() {
            nginx::timed(n, &server, &nginx::query(case.sequential, WARMUP));
        }
        for n in [&current, &multi] {
            case.native(n, WARMUP);
        }
    }

    let me = Client::ThisProcess;
    let runs = interleave(
        ROUNDS,
        (Placement::ALL.len(), CASES.len(), SIDES),
        |p| Placement::ALL[p].apply(server.pid(), &all),
        |p, c, s| {
            let case = &CASES[c];
            let calls = case.calls(quick);
            match s {
                NATIVE_CT => measure(me, server.pid(), || (case.native(&current, calls), 0.0)),
                NATIVE => measure(me, server.pid(), || (case.native(&multi, calls), 0.0)),
                s => {
                    let n = &nginx[p][s].0;
                    let query = nginx::query(case.sequential, calls);
                    measure(Client::Worker(n.worker_pids()[0]), server.pid(), || {
                        nginx::timed(n, &server, &query)
                    })
                }
            }
        },
        |round, p, c, last| {
            let case = &CASES[c];
            let n = (case.calls(quick) + case.warmup()) as f64;
            let sides: Vec<String> = last
                .iter()
                .zip(SIDE_KEYS)
                .map(|(r, key)| {
                    format!(
                        "{key} {:.1} µs ({:.1} CPU)",
                        r.secs * 1e6 / case.calls(quick) as f64,
                        r.client_cpu * 1e6 / n
                    )
                })
                .collect();
            eprintln!(
                "round {}/{ROUNDS}, {}, {}: {}",
                round + 1,
                Placement::ALL[p].title(),
                case.key,
                sides.join(", ")
            );
        },
    );
    // Back to where the process started.
    Placement::Unpinned.apply(server.pid(), &all);
    for sides in &nginx {
        for (n, _) in sides {
            n.assert_log_clean(&[]);
        }
    }

    let figures: Vec<Vec<Figures>> = runs
        .iter()
        .map(|cases| {
            cases
                .iter()
                .zip(&CASES)
                .map(|(runs, case)| Figures::new(runs, case.calls(quick), case.warmup()))
                .collect()
        })
        .collect();
    let results = Results {
        machine,
        quick,
        workers: cpus.len(),
        plans: nginx
            .iter()
            .map(|sides| sides.iter().map(|(_, plan)| plan.clone()).collect())
            .collect(),
        runs,
        figures,
        elapsed: started.elapsed().as_secs_f64(),
    };
    report::write(&results, &root);
}
