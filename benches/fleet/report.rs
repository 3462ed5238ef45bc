//! The report: `target/bench/fleet.json`, `target/bench/fleet-restart.json`,
//! `docs/img/rolling-restart.svg` and the `fleet` section of `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::json;
use testkit::bench::replace_section;

use crate::restart::Roll;
use crate::throughput::{Step, SIDES};
use crate::{plot, PAYLOAD, ROUNDS, SERVER};

/// Everything one run measured.
pub struct Results {
    pub machine: String,
    pub quick: bool,
    pub steps: Vec<Step>,
    pub rolls: Vec<Roll>,
    /// Seconds the whole run took.
    pub elapsed: f64,
}

pub fn write(r: &Results, root: &Path) {
    let bench = root.join("target/bench");
    let doc = json!({
        "benchmark": "fleet", "machine": r.machine, "quick": r.quick, "rounds": ROUNDS,
        "server": SERVER, "call": format!("/zctest.Test/Unary, payload {:?} ({} B)", PAYLOAD,
                                          PAYLOAD.len()),
        "cases": r.steps.iter().map(Step::json).collect::<Vec<_>>(),
        "elapsed_s": r.elapsed,
    });
    fs::write(
        bench.join("fleet.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    let doc = json!({
        "benchmark": "fleet-restart", "machine": r.machine,
        "runs": r.rolls.iter().map(Roll::json).collect::<Vec<_>>(),
    });
    fs::write(
        bench.join("fleet-restart.json"),
        serde_json::to_string_pretty(&doc).unwrap() + "\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("docs/img")).unwrap();
    fs::write(
        root.join("docs/img/rolling-restart.svg"),
        plot::svg(&r.rolls),
    )
    .unwrap();
    let section = section(r);
    replace_section(&root.join("docs/benchmarks.md"), "fleet", &section);
    println!("{section}");
}

/// A gRPC status code as Lua reported it (a number) with its name.
fn code_name(code: &str) -> String {
    let name = match code {
        "1" => "CANCELLED",
        "2" => "UNKNOWN",
        "4" => "DEADLINE_EXCEEDED",
        "13" => "INTERNAL",
        "14" => "UNAVAILABLE",
        _ => return code.to_owned(),
    };
    format!("{name} ({code})")
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "**not met**"
    }
}

fn section(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Command: `make bench` (`cargo bench --bench fleet`{}). Machine: {}.\n\
         Backends: three testkit `{SERVER}` on 127.0.0.2, .3 and .4, one port (`testkit::grpc::Fleet`);\n\
         one nginx worker, unpinned; native: tonic 0.14 on a current-thread runtime. Call:\n\
         `zctest.Test/Unary` with a {}-byte payload. nginx's one-backend side connects to\n\
         `127.0.0.2:P` (no service config); its three-backend side to `ipv4:127.0.0.2:P,127.0.0.3:P,127.0.0.4:P`\n\
         with `{{\"loadBalancingConfig\":[{{\"round_robin\":{{}}}}]}}`. Sides interleaved (the first side rotates),\n\
         {ROUNDS} rounds, medians of rounds; ratios paired by round. This run: {:.0} s. Results also\n\
         in `target/bench/fleet.json` and `target/bench/fleet-restart.json`.\n",
        if r.quick { ", BENCH_QUICK=1" } else { "" },
        r.machine,
        PAYLOAD.len(),
        r.elapsed,
    );
    let _ = writeln!(
        t,
        "| in flight | calls a run | {} | {} | {} | {} | nginx three / one (rounds' quartiles) | tonic three / one \
         | nginx / tonic, one backend | nginx / tonic, three backends |\n\
         |---|---|---|---|---|---|---|---|---|---|",
        SIDES[0], SIDES[1], SIDES[2], SIDES[3]
    );
    for s in &r.steps {
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} % ({:.0}-{:.0} %) | {:.1} % | {:.0} % \
             | {:.0} % |",
            s.in_flight,
            s.calls,
            s.per_sec[0],
            s.per_sec[1],
            s.per_sec[2],
            s.per_sec[3],
            s.balancing * 100.0,
            s.balancing_quartiles[0] * 100.0,
            s.balancing_quartiles[1] * 100.0,
            s.native_balancing * 100.0,
            s.vs_native[0] * 100.0,
            s.vs_native[1] * 100.0
        );
    }
    let shares = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{:.0}", x * 100.0))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let _ = writeln!(
        t,
        "\nShare of the calls each backend received (b0 / b1 / b2, %, all rounds, from the \
         servers' counters):\n"
    );
    for s in &r.steps {
        let _ = writeln!(
            t,
            "- {} in flight: nginx three backends {}; tonic balance_list {}.",
            s.in_flight,
            shares(&s.shares[1]),
            shares(&s.shares[3])
        );
    }
    let _ = writeln!(t, "\nTargets:\n");
    for s in &r.steps {
        let _ = writeln!(
            t,
            "- {} in flight: balancing cost ≤ 3 % per call: {:+.1} %, {}; three-backend ratio \
             to native no worse than one-backend: {:.0} % vs {:.0} %, {}.",
            s.in_flight,
            s.cost() * 100.0,
            met(s.cost_met()),
            s.vs_native[1] * 100.0,
            s.vs_native[0] * 100.0,
            met(s.ratio_met())
        );
    }
    let _ = writeln!(
        t,
        "\n**Rolling restart** under load: one Lua request (`/load`: {} light threads calling \
         in a loop for 10 s, counting per 100 ms bucket the calls that ended ok and failed) \
         against the three backends with round_robin, while the bench restarts b0, b1, b2 in \
         turn, 2 s apart (`Fleet::restart`: SIGKILL, started again on its address, returns when \
         it serves). Twice: round_robin alone, then with a retryPolicy for `zctest.Test` \
         (maxAttempts 5, backoff 0.01-0.1 s, UNAVAILABLE retryable). Series in \
         `target/bench/fleet-restart.json`.\n\n\
         | run | calls ok | calls failed | failed by status | restarts: killed at s (serving again at s) |\n\
         |---|---|---|---|---|",
        r.rolls.first().map_or(0, |x| x.in_flight)
    );
    for roll in &r.rolls {
        let restarts: Vec<String> = roll
            .restarts
            .iter()
            .map(|m| format!("b{} {:.2} ({:.2})", m.backend, m.down, m.up))
            .collect();
        let codes = roll
            .codes
            .as_object()
            .filter(|o| !o.is_empty())
            .map_or("-".to_owned(), |o| {
                o.iter()
                    .map(|(k, v)| format!("{}: {v}", code_name(k)))
                    .collect::<Vec<_>>()
                    .join(", ")
            });
        let _ = writeln!(
            t,
            "| {} | {} | {} | {codes} | {} |",
            roll.name,
            roll.total_ok(),
            roll.total_failed(),
            restarts.join(", ")
        );
    }
    let _ = writeln!(t, "\n![rolling restart](img/rolling-restart.svg)\n");
    t
}
