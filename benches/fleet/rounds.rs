//! Running sides in rounds: every side once per round, the first side rotating from round to
//! round, and how many calls each backend received during each run.

use testkit::grpc::Fleet;

/// One run of one side: wall seconds of its timed loop (as the side measured it) and the
/// calls each backend received meanwhile (warm-up included).
#[derive(Debug, Clone)]
pub struct Run {
    pub secs: f64,
    pub received: Vec<u64>,
}

/// One run of a side's loop, returning its seconds.
pub type Side<'a> = &'a mut dyn FnMut() -> f64;

/// Runs every side once per round for `rounds` rounds and returns the runs per side.
pub fn interleave(fleet: &Fleet, rounds: usize, sides: &mut [Side<'_>]) -> Vec<Vec<Run>> {
    let received = || -> Vec<u64> { fleet.all_stats().iter().map(|s| s.received).collect() };
    let mut runs = vec![Vec::new(); sides.len()];
    for round in 0..rounds {
        for k in 0..sides.len() {
            let side = (round + k) % sides.len();
            let before = received();
            let secs = (sides[side])();
            let after = received();
            runs[side].push(Run {
                secs,
                received: after.iter().zip(&before).map(|(a, b)| a - b).collect(),
            });
        }
    }
    runs
}
