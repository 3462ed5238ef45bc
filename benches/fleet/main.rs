//! Fleet benchmark: resty.grpc_zc's client-side load balancing from nginx Lua, against one
//! backend and three, next to tonic against one and balanced over three, in one run with
//! rounds interleaved; then a rolling restart of the three under load, without and with a
//! retry policy.
//!
//! ```text
//!  nginx worker ── 127.0.0.2:P ─────────────────────────┐
//!  nginx worker ── ipv4:.2,.3,.4 (round_robin) ────────┐│   b0 127.0.0.2:P
//!  tonic Channel ── b0 ────────────────────────────────┼┼─► b1 127.0.0.3:P   grpc-test-server
//!  tonic Channel::balance_list ── b0, b1, b2 (p2c) ────┘    b2 127.0.0.4:P   --threads 0 each
//! ```
//!
//! Cases: unary `zctest.Test/Unary` calls with an 8-byte payload, 1 and 64 in flight (Lua
//! light threads of one request, or tokio tasks), calls per second of each side; the
//! balancing cost (nginx three-backend calls/s over one-backend calls/s) and nginx's ratio to
//! tonic with one and with three backends, all paired by round. Then the rolling restart: a
//! Lua request calls for 10 s at 64 in flight and answers its per-100 ms series while the
//! bench restarts each backend in turn.
//!
//! Writes `target/bench/fleet.json`, `target/bench/fleet-restart.json`,
//! `docs/img/rolling-restart.svg` and the `fleet` section of `docs/benchmarks.md`. Run with
//! `make bench` (or `cargo bench --bench fleet`); `BENCH_QUICK=1` runs 10x fewer calls (the
//! rolling restart is the same).
//!
//! A bench target of its own rather than cases of `benches/grpc`: that one is built around one
//! server and four sides of one client each (two nginx, two tonic runtimes), this one around a
//! fleet it restarts, and both stay within their three minutes.
//!
//! Modules: `nginx` (the Lua load drivers), `native` (the tonic clients), `rounds`
//! (interleaved runs), `throughput` (the cases, medians and ratios), `restart` (the rolling
//! restart), `plot` (the SVG), `report` (JSON and the markdown section).

mod native;
mod nginx;
mod plot;
mod report;
mod restart;
mod rounds;
mod throughput;

use std::fs;
use std::time::Instant;

use serde_json::json;
use testkit::bench::machine;
use testkit::grpc::Fleet;
use testkit::repo_root;

use native::Native;
use report::Results;
use throughput::Sides;

/// Rounds per case; every side runs once per round.
pub const ROUNDS: usize = 12;
/// Calls before each timed loop, not timed.
pub const WARMUP: usize = 256;
/// The payload of every call.
pub const PAYLOAD: &str = "fleet-01";
/// How the backends run.
pub const SERVER: &str = "grpc-test-server --threads 0 --no-gzip-replies";
/// (calls in flight, calls a run).
const CASES: &[(usize, usize)] = &[(1, 1_500), (64, 20_000)];
/// Calls in flight during the rolling restart.
const ROLL_IN_FLIGHT: usize = 64;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let started = Instant::now();
    let machine = machine();
    let quick = std::env::var_os("BENCH_QUICK").is_some();
    let root = repo_root();
    fs::create_dir_all(root.join("target/bench")).unwrap();

    let mut fleet = Fleet::start(3, |o| o.threads(0).no_gzip_replies());
    let nginx = nginx::start("bench-fleet");
    let native = Native::new(&fleet);
    let three = fleet.ipv4_target();
    let round_robin = json!({ "loadBalancingConfig": [{ "round_robin": {} }] });
    let sides = Sides {
        fleet: &fleet,
        nginx: &nginx,
        native: &native,
        one: fleet.addr(0),
        three: three.clone(),
        round_robin: round_robin.clone(),
    };
    let steps: Vec<_> = CASES
        .iter()
        .map(|&(c, n)| {
            let n = if quick { (n / 10).max(c) } else { n };
            sides.measure(c, n, ROUNDS)
        })
        .collect();

    let retrying = json!({
        "loadBalancingConfig": [{ "round_robin": {} }],
        "methodConfig": [{
            "name": [{ "service": "zctest.Test" }],
            "retryPolicy": {
                "maxAttempts": 5, "initialBackoff": "0.01s", "maxBackoff": "0.1s",
                "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]
            }
        }]
    });
    let rolls = vec![
        restart::roll(
            &mut fleet,
            &nginx,
            "round_robin",
            &three,
            round_robin,
            ROLL_IN_FLIGHT,
        ),
        restart::roll(
            &mut fleet,
            &nginx,
            "round_robin + retryPolicy",
            &three,
            retrying,
            ROLL_IN_FLIGHT,
        ),
    ];
    let results = Results {
        machine,
        quick,
        steps,
        rolls,
        elapsed: started.elapsed().as_secs_f64(),
    };
    report::write(&results, &root);
}
