//! Running sides in rounds: every side once per round, the first side rotating, with the CPU
//! time and page faults each run cost its client process and the server.

use testkit::bench::{cpu_seconds, minor_faults, thread_name_cpu_seconds};

use crate::ROUNDS;

/// One run of one side: wall seconds of its timed loop, and CPU seconds used meanwhile by the
/// client process (the nginx worker, all its threads; or this process) and by the server,
/// warm-up included.
#[derive(Debug, Clone)]
pub struct Run {
    pub secs: f64,
    pub client_cpu: f64,
    pub server_cpu: f64,
    /// Minor page faults of the client process and of the server.
    pub client_faults: f64,
    pub server_faults: f64,
    /// CPU seconds per thread name of the client process (threads of one name summed).
    pub threads: Vec<(String, f64)>,
}

/// A side to measure: the pid whose CPU time is the client's, and one run of its loop.
pub type Side<'a> = (i32, &'a mut dyn FnMut() -> f64);

/// Runs every side once per round, the first side rotating, and returns the runs per side.
pub fn interleave(server: i32, sides: &mut [Side<'_>]) -> Vec<Vec<Run>> {
    interleave_rounds(server, ROUNDS, sides)
}

/// [`interleave`] with `rounds` rounds.
pub fn interleave_rounds(server: i32, rounds: usize, sides: &mut [Side<'_>]) -> Vec<Vec<Run>> {
    let cpu = |pid: i32| cpu_seconds(pid).unwrap_or(f64::NAN);
    let mut runs = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            let (pid, run) = &mut sides[side];
            let faults = |pid: i32| minor_faults(pid).map_or(f64::NAN, |f| f as f64);
            let (c0, s0, t0) = (cpu(*pid), cpu(server), thread_name_cpu_seconds(*pid));
            let (cf0, sf0) = (faults(*pid), faults(server));
            let secs = run();
            let threads = thread_name_cpu_seconds(*pid)
                .into_iter()
                .map(|(name, after)| {
                    let before = t0.iter().find(|(n, _)| *n == name).map_or(0.0, |t| t.1);
                    (name, after - before)
                })
                .collect();
            runs[side].push(Run {
                secs,
                client_cpu: cpu(*pid) - c0,
                server_cpu: cpu(server) - s0,
                client_faults: faults(*pid) - cf0,
                server_faults: faults(server) - sf0,
                threads,
            });
        }
    }
    runs
}
