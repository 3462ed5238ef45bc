//! The figures of one case: medians of rounds per side, ratios and overheads of Lua against the
//! native clients paired by round, CPU and page faults per call; as JSON too.

use serde_json::{json, Value};
use testkit::bench::median;

use crate::rounds::Run;

/// Medians of one case: µs per call of each side, the round-paired ratios and differences of
/// Lua against each native side, and CPU µs per call.
pub struct Case {
    pub us_per_call: [f64; 3],
    /// Lua time / native time, median of rounds: [current-thread, multi-thread].
    pub ratio: [f64; 2],
    /// Lua µs per call minus native µs per call, median of rounds.
    pub overhead_us: [f64; 2],
    /// CPU µs per call of the client process, per side.
    pub client_cpu_us: [f64; 3],
    /// CPU µs per call of the server while each side ran.
    pub server_cpu_us: [f64; 3],
    /// Minor page faults per call of the client process and of the server, per side.
    pub client_faults: [f64; 3],
    pub server_faults: [f64; 3],
    /// CPU µs per call of each thread (by name) of the Lua side's nginx worker.
    pub lua_threads_us: Vec<(String, f64)>,
}

impl Case {
    /// `calls` timed per run, after `warmup` untimed ones (which the CPU figures include).
    pub fn new(runs: &[Vec<Run>], calls: usize, warmup: usize) -> Case {
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

    pub fn json(&self, runs: &[Vec<Run>], calls: usize) -> Value {
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
pub fn spins_off_first(runs: &[Vec<Run>]) -> Vec<Vec<Run>> {
    vec![runs[3].clone(), runs[1].clone(), runs[2].clone()]
}

/// A measured case: its runs (Lua, tonic current-thread, tonic multi-thread, Lua with spins
/// off) and the figures with either Lua side first.
pub struct Measured {
    pub calls: usize,
    pub runs: Vec<Vec<Run>>,
    /// Lua with the default spins against the native clients.
    pub case: Case,
    /// Lua with spins off against the native clients.
    pub spins_off: Case,
}

impl Measured {
    pub fn new(runs: Vec<Vec<Run>>, calls: usize, warmup: usize) -> Measured {
        Measured {
            case: Case::new(&runs[..3], calls, warmup),
            spins_off: Case::new(&spins_off_first(&runs), calls, warmup),
            calls,
            runs,
        }
    }

    /// The case's JSON, with the spins-off Lua side as `grpc_zc_spins_off`.
    pub fn json(&self) -> Value {
        let mut json = self.case.json(&self.runs, self.calls);
        json["grpc_zc_spins_off"] = self
            .spins_off
            .json(&spins_off_first(&self.runs), self.calls)["grpc_zc"]
            .clone();
        json
    }
}

/// A ratio as a signed percentage change, `+12 %`.
pub fn pct(ratio: f64) -> String {
    format!("{:+.0} %", (ratio - 1.0) * 100.0)
}

/// A payload size as `0 B`, `512 B`, `4 KiB`, `1 MiB`.
pub fn size_name(n: usize) -> String {
    match n {
        0 => "0 B".into(),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1024 && n % 1024 == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} B"),
    }
}
