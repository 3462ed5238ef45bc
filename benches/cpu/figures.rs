//! The figures of one case in one placement: medians of rounds per side, the nginx sides'
//! ratios to the native clients paired by round, CPU per call; as JSON too.

use serde_json::{json, Map, Value};
use testkit::bench::median;

use crate::rounds::Run;
use crate::{NATIVE, NATIVE_CT, NGINX_SIDES, SIDES};

/// One case's figures in one placement.
pub struct Figures {
    /// Timed calls a run, and the untimed warm-up calls before them (which the CPU figures
    /// include).
    pub calls: usize,
    pub warmup: usize,
    /// Medians of rounds, per side.
    pub us_per_call: Vec<f64>,
    pub calls_per_sec: Vec<f64>,
    /// CPU µs per call of the client process (nginx worker or this process) and the server.
    pub client_cpu_us: Vec<f64>,
    pub server_cpu_us: Vec<f64>,
    /// CPU µs per call of each thread name of an nginx side's worker (empty for the native
    /// sides).
    pub threads_us: Vec<Vec<(String, f64)>>,
    /// Medians of the share of a run's time the runtime busy-polled, per side (0 for the
    /// native sides).
    pub polled_share: Vec<f64>,
    /// Per nginx side, against [native_ct, native]: medians of the per-round ratios of time
    /// (nginx / native), throughput (native time / nginx time) and CPU per call (nginx /
    /// native).
    pub time_ratio: Vec<[f64; 2]>,
    pub throughput_ratio: Vec<[f64; 2]>,
    pub cpu_ratio: Vec<[f64; 2]>,
}

/// Per-round values of one side.
struct Series<'a> {
    runs: &'a [Run],
    calls: usize,
    warmup: usize,
}

impl Series<'_> {
    fn us_per_call(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| r.secs * 1e6 / self.calls as f64)
            .collect()
    }

    fn polled_share(&self) -> Vec<f64> {
        self.runs.iter().map(|r| r.polled / r.secs).collect()
    }

    fn calls_per_sec(&self) -> Vec<f64> {
        self.runs
            .iter()
            .map(|r| self.calls as f64 / r.secs)
            .collect()
    }

    /// CPU µs per call of `secs(run)`, over the timed and the warm-up calls.
    fn cpu_us(&self, secs: impl Fn(&Run) -> f64) -> Vec<f64> {
        let n = (self.calls + self.warmup) as f64;
        self.runs.iter().map(|r| secs(r) * 1e6 / n).collect()
    }

    fn thread_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (name, _) in self.runs.iter().flat_map(|r| &r.threads) {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    }

    fn thread_us(&self, name: &str) -> Vec<f64> {
        self.cpu_us(|r| {
            r.threads
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |t| t.1)
        })
    }
}

/// The median of `f(a, b)` over the rounds of two sides.
fn paired(a: &[Run], b: &[Run], f: impl Fn(&Run, &Run) -> f64) -> f64 {
    median(a.iter().zip(b).map(|(x, y)| f(x, y)).collect())
}

impl Figures {
    /// `runs[side][round]` of one case: `calls` timed calls a run after `warmup` untimed ones.
    pub fn new(runs: &[Vec<Run>], calls: usize, warmup: usize) -> Figures {
        assert_eq!(runs.len(), SIDES);
        let series = |s: usize| Series {
            runs: &runs[s],
            calls,
            warmup,
        };
        let per_side = |f: &dyn Fn(&Series) -> Vec<f64>| -> Vec<f64> {
            (0..SIDES).map(|s| median(f(&series(s)))).collect()
        };
        let against = |f: &dyn Fn(&Run, &Run) -> f64| -> Vec<[f64; 2]> {
            (0..NGINX_SIDES)
                .map(|s| [NATIVE_CT, NATIVE].map(|n| paired(&runs[s], &runs[n], f)))
                .collect()
        };
        Figures {
            calls,
            warmup,
            us_per_call: per_side(&|s| s.us_per_call()),
            calls_per_sec: per_side(&|s| s.calls_per_sec()),
            client_cpu_us: per_side(&|s| s.cpu_us(|r| r.client_cpu)),
            server_cpu_us: per_side(&|s| s.cpu_us(|r| r.server_cpu)),
            threads_us: (0..SIDES)
                .map(|s| {
                    let s = series(s);
                    s.thread_names()
                        .into_iter()
                        .map(|name| {
                            let us = median(s.thread_us(&name));
                            (name, us)
                        })
                        .collect()
                })
                .collect(),
            polled_share: per_side(&|s| s.polled_share()),
            time_ratio: against(&|a, b| a.secs / b.secs),
            throughput_ratio: against(&|a, b| b.secs / a.secs),
            cpu_ratio: against(&|a, b| a.client_cpu / b.client_cpu),
        }
    }

    /// CPU µs per call of the thread `name` of side `s` (NaN when it has none of that name).
    pub fn thread_us(&self, s: usize, name: &str) -> f64 {
        self.threads_us[s]
            .iter()
            .find(|(n, _)| n == name)
            .map_or(f64::NAN, |t| t.1)
    }

    /// This case's JSON: every side's rounds and medians, the nginx sides' paired ratios.
    pub fn json(&self, runs: &[Vec<Run>], keys: &[&str; SIDES]) -> Value {
        let mut sides = Map::new();
        for (s, key) in keys.iter().enumerate() {
            let series = Series {
                runs: &runs[s],
                calls: self.calls,
                warmup: self.warmup,
            };
            let mut rounds = json!({
                "seconds": runs[s].iter().map(|r| r.secs).collect::<Vec<_>>(),
                "us_per_call": series.us_per_call(),
                "calls_per_second": series.calls_per_sec(),
                "client_cpu_us_per_call": series.cpu_us(|r| r.client_cpu),
                "server_cpu_us_per_call": series.cpu_us(|r| r.server_cpu),
                "busy_polled_share": series.polled_share(),
            });
            let mut side = json!({});
            let mut medians = json!({
                "us_per_call": self.us_per_call[s],
                "calls_per_second": self.calls_per_sec[s],
                "client_cpu_us_per_call": self.client_cpu_us[s],
                "server_cpu_us_per_call": self.server_cpu_us[s],
                "busy_polled_share": self.polled_share[s],
            });
            if s < NGINX_SIDES {
                let names = series.thread_names();
                rounds["thread_cpu_us_per_call"] = names
                    .iter()
                    .map(|n| (n.clone(), json!(series.thread_us(n))))
                    .collect::<Map<_, _>>()
                    .into();
                medians["thread_cpu_us_per_call"] = self.threads_us[s]
                    .iter()
                    .map(|(n, us)| (n.clone(), json!(us)))
                    .collect::<Map<_, _>>()
                    .into();
                let per_round = |n: usize, f: &dyn Fn(&Run, &Run) -> f64| -> Vec<f64> {
                    runs[s].iter().zip(&runs[n]).map(|(a, b)| f(a, b)).collect()
                };
                let vs = |k: usize, n: usize| {
                    json!({
                        "time": { "rounds": per_round(n, &|a, b| a.secs / b.secs),
                                  "median": self.time_ratio[s][k] },
                        "throughput": { "rounds": per_round(n, &|a, b| b.secs / a.secs),
                                        "median": self.throughput_ratio[s][k] },
                        "client_cpu_per_call": {
                            "rounds": per_round(n, &|a, b| a.client_cpu / b.client_cpu),
                            "median": self.cpu_ratio[s][k] },
                    })
                };
                side["ratios"] = json!({
                    keys[NATIVE_CT]: vs(0, NATIVE_CT),
                    keys[NATIVE]: vs(1, NATIVE),
                });
            }
            side["rounds"] = rounds;
            side["medians"] = medians;
            sides.insert(key.to_string(), side);
        }
        json!({
            "calls_per_run": self.calls,
            "warmup_calls_per_run": self.warmup,
            "sides": sides,
        })
    }
}
