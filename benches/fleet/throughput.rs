//! The throughput cases: unary calls per second at a number of calls in flight, four sides
//! (nginx against one backend and against three with round_robin, tonic against one and
//! balanced over three), rounds interleaved, medians and round-paired ratios.

use serde_json::{json, Value};
use testkit::bench::median;
use testkit::grpc::Fleet;
use testkit::Nginx;

use crate::native::Native;
use crate::nginx::burst;
use crate::rounds::{interleave, Run};

/// The sides, in the order of every per-side array.
pub const SIDES: [&str; 4] = [
    "nginx + resty.grpc_zc, one backend",
    "nginx + resty.grpc_zc, three backends (round_robin)",
    "tonic, one backend (Channel)",
    "tonic, three backends (Channel::balance_list, p2c)",
];
/// Keys of the sides in the JSON.
const KEYS: [&str; 4] = [
    "nginx_one",
    "nginx_three",
    "tonic_one",
    "tonic_balance_list",
];

/// One case: `in_flight` calls at a time, `calls` timed per run.
pub struct Step {
    pub in_flight: usize,
    pub calls: usize,
    pub runs: Vec<Vec<Run>>,
    /// Median calls per second of each side.
    pub per_sec: [f64; 4],
    /// nginx three-backend calls/s over one-backend calls/s, median of rounds (paired).
    pub balancing: f64,
    /// The quartiles of the rounds' nginx three-over-one ratios (how far one round is from
    /// another on this machine).
    pub balancing_quartiles: [f64; 2],
    /// The same for tonic: balance_list over one plain Channel.
    pub native_balancing: f64,
    /// nginx calls/s over tonic calls/s, paired by round: [one backend, three backends].
    pub vs_native: [f64; 2],
    /// Share of the calls each backend received, per side (all rounds, warm-up included).
    pub shares: Vec<Vec<f64>>,
}

/// What a case calls: the fleet, the nginx, the native clients.
pub struct Sides<'a> {
    pub fleet: &'a Fleet,
    pub nginx: &'a Nginx,
    pub native: &'a Native,
    /// `127.0.0.2:P`: the one backend.
    pub one: String,
    /// `ipv4:127.0.0.2:P,127.0.0.3:P,127.0.0.4:P`.
    pub three: String,
    /// The service config of the three-backend side: round_robin.
    pub round_robin: Value,
}

impl Sides<'_> {
    /// Measures one case over `rounds` rounds.
    pub fn measure(&self, in_flight: usize, calls: usize, rounds: usize) -> Step {
        let (c, n) = (in_flight, calls);
        let native = self.native;
        let runs = interleave(
            self.fleet,
            rounds,
            &mut [
                &mut || burst(self.nginx, &self.one, &Value::Null, c, n),
                &mut || burst(self.nginx, &self.three, &self.round_robin, c, n),
                &mut || native.burst(&native.one, c, n),
                &mut || native.burst(&native.balanced, c, n),
            ],
        );
        // Throughput of side a over side b, paired by round.
        let paired = |a: usize, b: usize| -> Vec<f64> {
            runs[a]
                .iter()
                .zip(&runs[b])
                .map(|(x, y)| y.secs / x.secs)
                .collect()
        };
        let rel = |a: usize, b: usize| median(paired(a, b));
        let per_sec =
            [0, 1, 2, 3].map(|s| median(runs[s].iter().map(|r| n as f64 / r.secs).collect()));
        let shares = runs
            .iter()
            .map(|side| {
                let mut by = vec![0u64; self.fleet.len()];
                for r in side {
                    by.iter_mut().zip(&r.received).for_each(|(t, x)| *t += x);
                }
                let total = by.iter().sum::<u64>().max(1) as f64;
                by.iter().map(|&x| x as f64 / total).collect()
            })
            .collect();
        let step = Step {
            in_flight,
            calls,
            per_sec,
            balancing: rel(1, 0),
            balancing_quartiles: quartiles(paired(1, 0)),
            native_balancing: rel(3, 2),
            vs_native: [rel(0, 2), rel(1, 3)],
            shares,
            runs,
        };
        eprintln!(
            "{c:>2} in flight: nginx {:.0} / {:.0} calls/s (one / three backends), tonic {:.0} / \
             {:.0}; balancing cost {:+.1} %; nginx / tonic {:.0} % (one), {:.0} % (three)",
            step.per_sec[0],
            step.per_sec[1],
            step.per_sec[2],
            step.per_sec[3],
            step.cost() * 100.0,
            step.vs_native[0] * 100.0,
            step.vs_native[1] * 100.0,
        );
        step
    }
}

impl Step {
    /// The balancing cost per call: 1 - three-backend calls/s over one-backend calls/s.
    pub fn cost(&self) -> f64 {
        1.0 - self.balancing
    }

    /// Target: the balancing cost is at most 3 %.
    pub fn cost_met(&self) -> bool {
        self.cost() <= 0.03
    }

    /// Target: against native, three backends do no worse than one.
    pub fn ratio_met(&self) -> bool {
        self.vs_native[1] >= self.vs_native[0]
    }

    pub fn json(&self) -> Value {
        let sides: serde_json::Map<String, Value> = (0..4)
            .map(|s| {
                let runs = &self.runs[s];
                (
                    KEYS[s].to_owned(),
                    json!({
                        "side": SIDES[s],
                        "seconds": runs.iter().map(|r| r.secs).collect::<Vec<_>>(),
                        "calls_per_second": runs.iter().map(|r| self.calls as f64 / r.secs)
                            .collect::<Vec<_>>(),
                        "received_by_backend": runs.iter().map(|r| r.received.clone())
                            .collect::<Vec<_>>(),
                        "median_calls_per_second": self.per_sec[s],
                        "backend_shares": self.shares[s],
                    }),
                )
            })
            .collect();
        json!({
            "in_flight": self.in_flight,
            "calls_per_run": self.calls,
            "sides": sides,
            "nginx_three_over_one": self.balancing,
            "nginx_three_over_one_per_round": self.runs[1].iter().zip(&self.runs[0])
                .map(|(t, o)| o.secs / t.secs).collect::<Vec<_>>(),
            "nginx_three_over_one_quartiles": self.balancing_quartiles,
            "balancing_cost": self.cost(),
            "tonic_balance_list_over_one": self.native_balancing,
            "nginx_over_tonic_one_backend": self.vs_native[0],
            "nginx_over_tonic_three_backends": self.vs_native[1],
            "targets": {
                "balancing_cost_at_most_3_percent": self.cost_met(),
                "three_backend_ratio_no_worse_than_one": self.ratio_met(),
            },
        })
    }
}

/// The first and third quartiles of `v` (nearest rank).
fn quartiles(mut v: Vec<f64>) -> [f64; 2] {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    [at(0.25), at(0.75)]
}
