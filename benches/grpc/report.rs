//! The report: `target/bench/grpc[-pinned].json`, and the `grpc[-pinned]` and `grpc-tables`
//! sections of `docs/benchmarks.md` (markdown tables and the issue 4 and 5 targets).

use std::fmt::Write as _;
use std::fs;
use std::path::Path;

use serde_json::{json, Value};
use testkit::bench::replace_section;

use crate::case::{pct, size_name, Case, Measured};
use crate::cases::{InFlight, Payload, TableCase, TABLE_ROUNDS};
use crate::floor::Floor;
use crate::placement::Placement;
use crate::{ROUNDS, SIDES};

/// Everything one run measured.
pub struct Results {
    pub machine: String,
    pub quick: bool,
    pub placement: Placement,
    pub floor: Floor,
    pub seq: Measured,
    pub sweep: Vec<Payload>,
    pub conc: Vec<InFlight>,
    /// Empty when pinned (tables vs strings compares two Lua paths in one worker).
    pub tables: Vec<TableCase>,
    /// Seconds the whole run took.
    pub elapsed: f64,
}

/// The targets of issue 4, against the faster native client of each comparison.
struct Targets {
    seq_overhead: f64,
    o512: f64,
    o100k: f64,
    /// The 100 KiB overhead over the 512 B one; NaN when the 512 B one is not positive.
    growth: f64,
    growth_met: bool,
    rel64: f64,
}

impl Targets {
    fn new(r: &Results) -> Targets {
        let best = |r: [f64; 2]| r[0].max(r[1]);
        let at = |size: usize| {
            &r.sweep
                .iter()
                .find(|s| s.size == size)
                .unwrap()
                .measured
                .case
        };
        let (o512, o100k) = (at(512).overhead_us[0], at(102_400).overhead_us[0]);
        // Met when the 100 KiB overhead is at most 1.5x the 512 B one (or not positive at
        // all); the ratio means nothing when the 512 B overhead is not positive.
        let growth = if o512 > 0.0 { o100k / o512 } else { f64::NAN };
        let c64 = r.conc.iter().find(|c| c.in_flight == 64).unwrap();
        Targets {
            seq_overhead: best(r.seq.case.ratio) - 1.0,
            o512,
            o100k,
            growth,
            growth_met: o100k <= 0.0 || growth <= 1.5,
            rel64: c64.rel[0].min(c64.rel[1]),
        }
    }
}

/// Writes the JSON file and the docs sections (and prints the tables section).
pub fn write(r: &Results, root: &Path) {
    let targets = Targets::new(r);
    fs::write(
        root.join(format!("target/bench/grpc{}.json", r.placement.suffix())),
        serde_json::to_string_pretty(&json_doc(r, &targets)).unwrap() + "\n",
    )
    .unwrap();
    replace_section(
        &root.join("docs/benchmarks.md"),
        &format!("grpc{}", r.placement.suffix()),
        &grpc_section(r, &targets),
    );
    if r.tables.is_empty() {
        return;
    }
    let t = tables_section(r);
    replace_section(&root.join("docs/benchmarks.md"), "grpc-tables", &t);
    println!("{t}");
}

fn json_doc(r: &Results, targets: &Targets) -> Value {
    let mut seq = r.seq.json();
    seq["spins_off_ratio_vs_tonic_current_thread"] = json!(r.seq.spins_off.ratio[0]);
    seq["spins_off_ratio_vs_tonic_multi_thread"] = json!(r.seq.spins_off.ratio[1]);
    let sweep: Vec<Value> = r
        .sweep
        .iter()
        .map(|p| {
            let mut v = p.measured.json();
            v["spins_off_ratio_vs_tonic_current_thread"] = json!(p.measured.spins_off.ratio[0]);
            v["payload_bytes"] = json!(p.size);
            v
        })
        .collect();
    let conc: Vec<Value> = r
        .conc
        .iter()
        .map(|c| {
            let (per_sec, rel) = (&c.per_sec, &c.rel);
            let mut v = c.measured.json();
            v["in_flight"] = json!(c.in_flight);
            v["calls_per_second"] = json!({ "grpc_zc": per_sec[0],
                "tonic_current_thread": per_sec[1], "tonic_multi_thread": per_sec[2],
                "grpc_zc_spins_off": per_sec[3] });
            v["throughput_vs_tonic_current_thread"] = json!(rel[0]);
            v["throughput_vs_tonic_multi_thread"] = json!(rel[1]);
            v["spins_off_throughput_vs_tonic_current_thread"] = json!(rel[2]);
            v["spins_off_throughput_vs_tonic_multi_thread"] = json!(rel[3]);
            v
        })
        .collect();
    let t = targets;
    json!({
        "benchmark": "grpc", "machine": r.machine, "quick": r.quick, "rounds": ROUNDS,
        "server": "grpc-test-server --threads 0 --no-gzip-replies (one tokio thread)",
        "placement": r.placement.describe(),
        "spins_off": "second nginx, runtime loaded with spin_us = 0, poll_spin_us = 0, busy_poll_us = 0",
        "ping_pong_us": { "one_vcpu": r.floor.same, "two_vcpus": r.floor.cross },
        "sequential_say_hello": seq,
        "payload_sweep": sweep,
        "concurrency_sweep": conc,
        "tables_vs_strings": r.tables.iter().map(|t| json!({
            "method": t.method, "payload_bytes": t.size, "calls_a_side": t.calls,
            "rounds": TABLE_ROUNDS, "tables_us_per_call": t.tables_us,
            "strings_us_per_call": t.strings_us, "ratio": t.ratio,
        })).collect::<Vec<_>>(),
        "targets": {
            "sequential_overhead": t.seq_overhead,
            "overhead_100k_over_512": if t.growth.is_nan() { Value::Null } else { json!(t.growth) },
            "overhead_100k_us": t.o100k,
            "overhead_512_us": t.o512,
            "throughput_64_vs_native": t.rel64,
        },
        "elapsed_s": r.elapsed,
    })
}

fn grpc_section(r: &Results, targets: &Targets) -> String {
    let (machine, placement, quick) = (&r.machine, r.placement, r.quick);
    let (same, cross) = (r.floor.same, r.floor.cross);
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
        r.elapsed,
        placement.suffix(),
    );
    let _ = writeln!(
        t,
        "Floor (this run): 1-byte TCP ping-pong between two threads, {same:.1} µs per round \
         trip on one vCPU, {cross:.1} µs across two.\n"
    );
    sequential_table(&mut t, &r.seq);
    sweep_table(&mut t, &r.sweep);
    concurrency_table(&mut t, &r.conc);
    cpu_split_table(&mut t, &r.seq, &r.conc);
    let tg = targets;
    let growth_text = if tg.growth.is_nan() {
        "ratio undefined".to_owned()
    } else {
        format!("{:.1}x", tg.growth)
    };
    let _ = writeln!(
        t,
        "\nTargets (against the faster native client): sequential overhead ≤ 10 %: {:+.0} %, \
         {}; overhead at 100 KiB ≤ 1.5x the overhead at 512 B (vs current-thread): {:.1} µs / \
         {:.1} µs = {growth_text}, {}; throughput at 64 in flight ≥ 90 % of native: {:.0} %, \
         {}.\n",
        tg.seq_overhead * 100.0,
        met(tg.seq_overhead <= 0.10),
        tg.o100k,
        tg.o512,
        met(tg.growth_met),
        tg.rel64 * 100.0,
        met(tg.rel64 >= 0.90)
    );
    t
}

fn sequential_table(t: &mut String, seq: &Measured) {
    let _ = writeln!(
        t,
        "**Sequential SayHello** (empty name), {} calls a side. CPU: µs of CPU time per call \
         used by the client process (the nginx worker with its runtime threads, or the tonic \
         client) and by the server while that side ran.\n\n\
         | side | µs per call | vs tonic current-thread | vs tonic multi-thread \
         | client CPU µs per call | server CPU µs per call |\n|---|---|---|---|---|---|",
        seq.calls * ROUNDS
    );
    let vs = |c: &Case, k: usize| format!("{} ({:+.1} µs)", pct(c.ratio[k]), c.overhead_us[k]);
    let rows = [
        (SIDES[0], &seq.case, 0, true),
        ("resty.grpc_zc (Lua), spins off", &seq.spins_off, 0, true),
        (SIDES[1], &seq.case, 1, false),
        (SIDES[2], &seq.case, 2, false),
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
}

fn sweep_table(t: &mut String, sweep: &[Payload]) {
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
    for p in sweep {
        let (c, c0) = (&p.measured.case, &p.measured.spins_off);
        let _ = writeln!(
            t,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} | {:+.1} | {} | {:+.1} | {:.1} / {:.1} \
             | {:.1} / {:.1} | {:.1} | {} |",
            size_name(p.size),
            p.measured.calls * ROUNDS,
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
}

fn concurrency_table(t: &mut String, conc: &[InFlight]) {
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
    for c in conc {
        let (per_sec, rel) = (&c.per_sec, &c.rel);
        let (case, case0) = (&c.measured.case, &c.measured.spins_off);
        let _ = writeln!(
            t,
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} % | {:.0} % | {:.0} % | {:.0} % \
             | {:.1} / {:.1} / {:.1} / {:.1} |",
            c.in_flight,
            c.measured.calls * ROUNDS,
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
}

/// CPU µs per call of the Lua side's threads: "nginx / grpc_zc-poll / grpc_zc-io".
fn thread_split(c: &Case) -> String {
    let get = |name: &str| {
        c.lua_threads_us
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |t| t.1)
    };
    // `grpc_zc-io` exists only on a host without asynchronous polling (then the tokio worker
    // runs the calls); with this repository's host it reads "-".
    let io = get("grpc_zc-io");
    let io = if io.is_nan() {
        "-".to_owned()
    } else {
        format!("{io:.1}")
    };
    format!("{:.1} / {:.1} / {io}", get("nginx"), get("grpc_zc-poll"))
}

fn cpu_split_table(t: &mut String, seq: &Measured, conc: &[InFlight]) {
    let _ = writeln!(
        t,
        "\n**Where the Lua side's CPU goes**: CPU µs per call of the nginx worker's threads \
         (main thread running Lua and the host / the runtime's poll thread, which is also its \
         event loop / a tokio worker, only on a host without asynchronous polling), median of \
         rounds.\n\n\
         | case | default spins: nginx / grpc_zc-poll / grpc_zc-io | spins off: nginx / \
         grpc_zc-poll / grpc_zc-io |\n|---|---|---|\n\
         | sequential SayHello | {} | {} |",
        thread_split(&seq.case),
        thread_split(&seq.spins_off)
    );
    for c in conc {
        let _ = writeln!(
            t,
            "| {} in flight | {} | {} |",
            c.in_flight,
            thread_split(&c.measured.case),
            thread_split(&c.measured.spins_off)
        );
    }
}

fn tables_section(r: &Results) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Command: `make bench` (`cargo bench --bench grpc`{}). Machine: {}. The same \
         nginx worker calls the same server with Lua tables (`resty.grpc_zc.pb` encodes into \
         the arena, decodes replies from it; types from `grpc.load_proto`) and with \
         pre-encoded protobuf strings; {TABLE_ROUNDS} rounds interleaved, ratio paired by round \
         (median). Targets: tables add at most 5 % for SayHello and 10 % at 100 KB.\n\n\
         | call | calls a side | tables µs | strings µs | tables vs strings | target |\n\
         |---|---|---|---|---|---|",
        if r.quick { ", BENCH_QUICK=1" } else { "" },
        r.machine,
    );
    for c in &r.tables {
        let (name, limit) = if c.method == "hello" {
            ("SayHello {name = \"world\"}".to_owned(), 1.05)
        } else {
            (
                format!("zctest.Test/Unary {{payload = {}}}", size_name(c.size)),
                1.10,
            )
        };
        let _ = writeln!(
            t,
            "| {name} | {} | {:.1} | {:.1} | {:+.1} % | {} |",
            c.calls,
            c.tables_us,
            c.strings_us,
            (c.ratio - 1.0) * 100.0,
            met(c.ratio <= limit)
        );
    }
    t
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "not met"
    }
}
