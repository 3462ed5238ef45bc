//! Running the sides in rounds: every round visits every placement (the first rotating from
//! round to round) and runs there every case, each side once (the first side rotating), with
//! the CPU time each run cost the client process, each of an nginx worker's threads, and the
//! server.

use testkit::bench::{cpu_seconds, thread_name_cpu_seconds};

/// Whose CPU time is the client's.
#[derive(Debug, Clone, Copy)]
pub enum Client {
    /// An nginx worker: all its threads, and each thread name's share (`/proc`, clock ticks).
    Worker(i32),
    /// This process, where the native clients run (`getrusage`, µs).
    ThisProcess,
}

/// One run of one side: wall seconds of its timed loop (as the side measured it), CPU seconds
/// used meanwhile by the client and by the server, warm-up included.
#[derive(Debug, Clone)]
pub struct Run {
    pub secs: f64,
    /// Seconds the runtime busy-polled during the run (0 for the native clients).
    pub polled: f64,
    pub client_cpu: f64,
    pub server_cpu: f64,
    /// CPU seconds per thread name of an nginx worker (threads of one name summed); empty for
    /// this process.
    pub threads: Vec<(String, f64)>,
}

/// Runs `rounds` rounds over `placements` x `cases` x `sides`: `enter(p)` moves to placement
/// `p`, `run(p, c, s)` is one run of side `s` of case `c` there, `done(round, p, c, runs)` sees
/// the runs of one case (by side) once every side ran it. Returns the runs as
/// `[placement][case][side][round]`.
pub fn interleave(
    rounds: usize,
    (placements, cases, sides): (usize, usize, usize),
    mut enter: impl FnMut(usize),
    mut run: impl FnMut(usize, usize, usize) -> Run,
    mut done: impl FnMut(usize, usize, usize, &[Run]),
) -> Vec<Vec<Vec<Vec<Run>>>> {
    let mut all = vec![vec![vec![Vec::new(); sides]; cases]; placements];
    for round in 0..rounds {
        for i in 0..placements {
            let p = (round + i) % placements;
            enter(p);
            for (c, case) in all[p].iter_mut().enumerate() {
                for k in 0..sides {
                    let s = (round + k) % sides;
                    case[s].push(run(p, c, s));
                }
                let last: Vec<Run> = case.iter().map(|runs| runs[round].clone()).collect();
                done(round, p, c, &last);
            }
        }
    }
    all
}

/// Runs `f` (which returns the seconds of its timed loop and those the runtime busy-polled
/// meanwhile) and measures what it cost `client` and the server.
pub fn measure(client: Client, server: i32, f: impl FnOnce() -> (f64, f64)) -> Run {
    let proc_cpu = |pid: i32| cpu_seconds(pid).unwrap_or(f64::NAN);
    let client_cpu = || match client {
        Client::Worker(pid) => proc_cpu(pid),
        Client::ThisProcess => testkit::bench::own_cpu_seconds(),
    };
    let threads = || match client {
        Client::Worker(pid) => thread_name_cpu_seconds(pid),
        Client::ThisProcess => Vec::new(),
    };
    let (c0, s0, t0) = (client_cpu(), proc_cpu(server), threads());
    let (secs, polled) = f();
    let (c1, s1, t1) = (client_cpu(), proc_cpu(server), threads());
    Run {
        secs,
        polled,
        client_cpu: c1 - c0,
        server_cpu: s1 - s0,
        threads: t1
            .into_iter()
            .map(|(name, after)| {
                let before = t0.iter().find(|(n, _)| *n == name).map_or(0.0, |t| t.1);
                (name, after - before)
            })
            .collect(),
    }
}
