//! The cases: sequential SayHello, the payload sweep, the concurrency sweep, and tables against
//! pre-encoded strings. Each runs its sides in interleaved rounds and prints a summary line.

use testkit::bench::median;
use testkit::{GrpcServer, Nginx};

use crate::case::{pct, size_name, Measured};
use crate::nginx::timed;
use crate::rounds::{interleave, interleave_rounds, Run};
use crate::{ROUNDS, WARMUP};
use testkit::native::Native;

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
pub const TABLE_ROUNDS: usize = 24;

/// One payload of the sweep.
pub struct Payload {
    pub size: usize,
    pub measured: Measured,
}

/// One step of the concurrency sweep.
pub struct InFlight {
    pub in_flight: usize,
    pub measured: Measured,
    /// Calls per second of each side (Lua, current-thread, multi-thread, Lua with spins off).
    pub per_sec: Vec<f64>,
    /// Lua throughput / native throughput, paired by round: Lua against current-thread and
    /// multi-thread, then Lua with spins off against the same two.
    pub rel: [f64; 4],
}

/// One tables-vs-strings case.
pub struct TableCase {
    pub method: &'static str,
    pub size: usize,
    /// Calls a side, over all rounds.
    pub calls: usize,
    pub tables_us: f64,
    pub strings_us: f64,
    /// Tables time / strings time, median of rounds.
    pub ratio: f64,
}

/// What the cases call: the server, the two nginx (default spins, spins off) and the two native
/// clients.
pub struct Bench<'a> {
    pub server: &'a GrpcServer,
    pub nginx: &'a Nginx,
    pub nospin: &'a Nginx,
    pub current: &'a Native,
    pub multi: &'a Native,
    /// `BENCH_QUICK`: a tenth of the calls.
    pub quick: bool,
}

impl Bench<'_> {
    fn scale(&self, n: usize) -> usize {
        if self.quick {
            (n / 10).max(ROUNDS)
        } else {
            n
        }
    }

    /// Runs the four sides of a case: the Lua request `query` in both nginx, `native` on both
    /// runtimes.
    fn four_sides(&self, query: &str, native: impl Fn(&Native) -> f64) -> Vec<Vec<Run>> {
        let me = std::process::id() as i32;
        interleave(
            self.server.pid(),
            &mut [
                (self.nginx.worker_pids()[0], &mut || {
                    timed(self.nginx, self.server, query)
                }),
                (me, &mut || native(self.current)),
                (me, &mut || native(self.multi)),
                (self.nospin.worker_pids()[0], &mut || {
                    timed(self.nospin, self.server, query)
                }),
            ],
        )
    }

    /// Sequential SayHello with an empty name.
    pub fn sequential(&self) -> Measured {
        let calls = self.scale(SEQUENTIAL_CALLS) / ROUNDS;
        let runs = self.four_sides(&format!("/seq?m=hello&size=0&n={calls}"), |n| {
            n.hello(calls)
        });
        let m = Measured::new(runs, calls, WARMUP);
        eprintln!(
            "sequential SayHello: Lua {:.1} (spins off {:.1}) / tonic {:.1} / {:.1} µs per call \
             ({} vs current-thread)",
            m.case.us_per_call[0],
            m.spins_off.us_per_call[0],
            m.case.us_per_call[1],
            m.case.us_per_call[2],
            pct(m.case.ratio[0])
        );
        m
    }

    /// `zctest.Test/Unary` echoing a bytes field of each size.
    pub fn payload_sweep(&self) -> Vec<Payload> {
        let mut sweep = Vec::new();
        for &(size, total) in PAYLOADS {
            let calls = (self.scale(total) / ROUNDS).max(1);
            let runs = self.four_sides(&format!("/seq?m=echo&size={size}&n={calls}"), |n| {
                n.echo(size, calls)
            });
            let m = Measured::new(runs, calls, WARMUP);
            eprintln!(
                "echo {:>8}: {:.1} / {:.1} / {:.1} µs per call ({} vs current-thread)",
                size_name(size),
                m.case.us_per_call[0],
                m.case.us_per_call[1],
                m.case.us_per_call[2],
                pct(m.case.ratio[0])
            );
            sweep.push(Payload { size, measured: m });
        }
        sweep
    }

    /// SayHello calls in flight on one connection, calls per second.
    pub fn concurrency_sweep(&self) -> Vec<InFlight> {
        let mut conc = Vec::new();
        for &(c, total) in CONCURRENCY {
            let calls = (self.scale(total) / ROUNDS).max(c);
            let runs = self.four_sides(&format!("/conc?c={c}&n={calls}"), |n| {
                n.concurrent(c, calls)
            });
            let per_sec: Vec<f64> = (0..4)
                .map(|s| median(runs[s].iter().map(|r| calls as f64 / r.secs).collect()))
                .collect();
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
            conc.push(InFlight {
                in_flight: c,
                measured: Measured::new(runs, calls, WARMUP.div_ceil(c) * c),
                per_sec,
                rel,
            });
        }
        conc
    }

    /// Tables vs pre-encoded strings (issue 5), both from Lua, same nginx, rounds interleaved.
    pub fn tables(&self) -> Vec<TableCase> {
        let wpid = self.nginx.worker_pids()[0];
        let mut tables = Vec::new();
        for &(method, size, total) in TABLE_CASES {
            let calls = (self.scale(total) / TABLE_ROUNDS).max(1);
            let q = |mode: &str| format!("/tables?m={method}&mode={mode}&size={size}&n={calls}");
            let runs = interleave_rounds(
                self.server.pid(),
                TABLE_ROUNDS,
                &mut [
                    (wpid, &mut || timed(self.nginx, self.server, &q("table"))),
                    (wpid, &mut || timed(self.nginx, self.server, &q("string"))),
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
            let (tables_us, strings_us) = (us(0), us(1));
            eprintln!(
                "tables {method} {size} B: {tables_us:.1} vs {strings_us:.1} µs per call ({})",
                pct(ratio)
            );
            tables.push(TableCase {
                method,
                size,
                calls: calls * TABLE_ROUNDS,
                tables_us,
                strings_us,
                ratio,
            });
        }
        tables
    }
}
