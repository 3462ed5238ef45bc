//! The adaptive plan's experiment (`busy_poll = "adaptive"`): polling from the last task against
//! sleeping, judged by what each way costs per answer, measured as the loop runs.
//!
//! No rule read from the placement predicts which way is cheaper: on these VMs polling made 2.4x
//! the calls at 41 % of the CPU on one CPU at 64 in flight, broke even on sequential calls with
//! a CPU to spare, and lost on one CPU shared with the server (+49 µs a sequential call, and
//! CPU) (docs/benchmarks.md, "Where polling from the last task does not pay"). So the plan
//! measures both (but under a cgroup CPU quota, where `busy.rs` polls from the last task):
//!
//! - Answers are served in stretches of one way. A stretch's **cost per answer** is the CPU the
//!   whole process (every thread of the nginx worker) spent during it, plus the time its
//!   operations took from launch to being seen finished and the time from each answer to the
//!   next launch (the part of a call the runtime does not see: the nginx thread, Lua, the host
//!   queue; it tells where calls follow answers), each capped at 64 windows (`busy_poll_us`) or
//!   100 ms, over its answers: where calls queue, polling shortens every wait, not only those
//!   within a window. One µs of CPU weighs as much as one µs an answer waits: polling must save
//!   at least the CPU it spends. The burden of proof is on the try: its longer waits count
//!   against it in full, its shorter ones for it only where they stand out of their noise (more
//!   than twice the standard error of the difference of the two means): answers that take
//!   20 ms from a server whose timer ticks in milliseconds vary by more than a CPU's worth of
//!   polling, and there the CPU decides alone. (Counted as level either way, noisy waits let
//!   the way of less CPU win wherever the noise was high.)
//! - A way that gives answers closer together (wall time per answer, by [`DOMINANT`]) for no
//!   more CPU an answer wins outright, whatever the waits say: at 64 calls in flight on one
//!   CPU, sleeping starved the nginx thread, so fewer calls reached the runtime and the ones
//!   that did waited less (264 µs against 487), while calls took 2.6x as long.
//! - The way that measured cheaper serves [`STRETCH`]-answer stretches; between them, after a
//!   gap, the other way is tried for a [`TRY`]-answer stretch. After each change of way the
//!   answers of calls launched the old way settle unmeasured first. A try that costs less, by
//!   more than [`MARGIN`] of the chosen way's CPU so that noise does not flip the choice, and
//!   again in a second try right after, takes over (the margin is taken of the CPU, not of the
//!   whole cost: where answers wait 20 ms, a way that spends 300 µs of CPU more for nothing is
//!   only 1.5 % dearer in all). Each try doubles the gap, up to [`MAX_GAP`] stretches, so the
//!   way that loses serves about one answer in 40. When the chosen way's CPU or waits move by
//!   more than [`CHANGE`] against their average, and by more than 3 times how far its
//!   stretches stray from it, in two stretches in a row (the load or the placement changed, or
//!   a try won that should not have: a way whose cost builds up past its try), the other way
//!   is tried after the second; the gap stays as it was. One stray stretch is set aside.
//! - Waits between stretches stray by far more than their standard error says (queued
//!   calls' waits are not independent: at 64 in flight, 20-50 % where it says 1 %), so the
//!   chosen way keeps how far its stretches stray from its average, and a try must beat it by
//!   more than twice that too, in its waits, its CPU and its wall time per answer (batch
//!   means, the stretches being the batches). Where both ways cost the same (64 in flight
//!   with a CPU to spare) the choice then rarely flips.
//!
//! - A try that loses decisively (it costs [`DECISIVE`] times the chosen way: CPU plus waits,
//!   or wall time per answer for no less CPU) brings a gap of [`DECISIVE_GAP`] stretches at
//!   once: on one CPU at 64 in flight, tries of sleeping took 3x the time per answer, and the
//!   tries after 2, 4, 8 and 16 stretches cost the plan 10-15 % of the calls polling makes
//!   there, still 10 % with 32 stretches between them.
//! - After a lull (an answer followed by no launch for [`PAUSE`]) the measure starts again in
//!   the chosen way: a stretch settles unmeasured, the chosen way's average starts from the
//!   next two and its spread is learnt again from them, the other way is tried right after
//!   them (the gap stays, as after a move). The load that follows a lull may cost each way
//!   differently while neither way's figures move: on one CPU, 64 calls in flight cost the
//!   sleeping way what sequential calls had (120-160 µs an answer, where polling serves them
//!   in 40), and the plan slept on for 30 stretches, until its next try.
//!
//! It sees the worker's CPU and the answers' waits, not the server's CPU: where polling slows
//! a server that shares its CPU, that shows as answers that wait longer. The gaps were added
//! after unpinned sequential calls, where polling saved 35 µs a call end to end, of which the
//! waits from launch to finish showed 7.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Answers measured in a stretch of the chosen way, and in a try of the other.
pub(super) const STRETCH: u64 = 512;
pub(super) const TRY: u64 = 256;
/// After the way changes, answers that are not measured: those of calls launched the old way
/// (twice the calls in flight at the change), at least this many, at most `MAX_SETTLE`. At 64
/// calls in flight the first answers of a try otherwise carry the old way's state: tries of
/// sleeping after polling measured 30-55 µs of CPU a call on one CPU where sleeping costs 91.
const MIN_SETTLE: u64 = 128;
const MAX_SETTLE: u64 = 4096;
/// Stretches of the chosen way between tries: at first, and at most.
const MIN_GAP: u32 = 2;
pub(super) const MAX_GAP: u32 = 32;
/// A try takes over when it costs less than the chosen way by this share of the chosen way's
/// CPU per answer.
const MARGIN: f64 = 0.1;
/// A way whose answers come this much closer together (wall time per answer) for no more CPU
/// per answer is the cheaper, whatever the waits.
const DOMINANT: f64 = 0.1;
/// The chosen way's CPU or waits per answer moved by this much against their averages: try the
/// other soon.
const CHANGE: f64 = 0.5;
/// A try that costs this many times the chosen way loses decisively: the next comes after
/// `DECISIVE_GAP` stretches (65,536 answers: 2 s at 30,000 calls/s), a move or a lull
/// permitting; the one after that, if it loses by less, after `MAX_GAP` again.
const DECISIVE: f64 = 2.0;
const DECISIVE_GAP: u32 = 4 * MAX_GAP;
/// A time from an answer to the next launch this long is a lull, after which the load may be
/// another: the plan measures afresh ([`Trial::after_pause`]). Long enough that a client with
/// think time between its calls is not measured afresh at every call (below 1 call/s a
/// stretch takes over 8 minutes; polling then costs at most a window per call).
pub(super) const PAUSE: Duration = Duration::from_secs(1);

/// How the loop waits for answers while operations are in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Way {
    Poll,
    Sleep,
}

impl Way {
    fn other(self) -> Way {
        match self {
            Way::Poll => Way::Sleep,
            Way::Sleep => Way::Poll,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Way::Poll => "polling from the last task",
            Way::Sleep => "sleeping",
        }
    }
}

/// Times summed, in ns, and their squares summed, in µs²: running totals (they may wrap), so
/// two readings give the mean and its standard error between them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Samples {
    pub sum_ns: u64,
    pub sq_us: u64,
}

impl Samples {
    /// The samples added since `from`.
    fn since(self, from: Samples) -> Samples {
        Samples {
            sum_ns: self.sum_ns.wrapping_sub(from.sum_ns),
            sq_us: self.sq_us.wrapping_sub(from.sq_us),
        }
    }

    /// The mean per answer and its standard error (ns) over `n` answers; answers without a
    /// sample count as 0.
    fn mean_and_se(self, n: f64) -> (f64, f64) {
        let mean = self.sum_ns as f64 / n;
        let variance = (self.sq_us as f64 * 1e6 / n - mean * mean).max(0.0);
        (mean, (variance / n).sqrt())
    }
}

/// [`Samples`] added to from any thread (the instance's, read each turn of the loop).
#[derive(Debug, Default)]
pub(super) struct SampleSums {
    sum_ns: AtomicU64,
    sq_us: AtomicU64,
}

impl SampleSums {
    pub(super) fn add(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let us = ns / 1000;
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
        self.sq_us
            .fetch_add(us.saturating_mul(us), Ordering::Relaxed);
    }

    pub(super) fn load(&self) -> Samples {
        Samples {
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
            sq_us: self.sq_us.load(Ordering::Relaxed),
        }
    }
}

/// The counters a stretch is measured by, as the loop last read them.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Seen {
    /// Operations finished so far.
    pub finished: u64,
    /// Their times from launch to finish, each capped.
    pub waits: Samples,
    /// The times from an answer to the next launch, capped the same way.
    pub gaps: Samples,
    /// The part of those times beyond the cap, summed in ns (a running total): time with
    /// nothing asked, which the wall time per answer leaves out (a stretch that spans a pause
    /// between loads otherwise measures seconds per answer).
    pub idle_ns: u64,
    /// Those gaps of [`PAUSE`] or more, counted.
    pub pauses: u64,
    /// When the first of them since the last read finished, if one did (the ahead plan's).
    pub first_finish: Option<Instant>,
}

/// What a way costs per answer, in ns: the process's CPU, how long answers waited (the mean,
/// and its standard error), and the wall time per answer (how far apart they came).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub(super) struct Cost {
    pub cpu: f64,
    pub waited: f64,
    pub waited_se: f64,
    pub wall: f64,
}

impl Cost {
    /// `self` gives answers faster, by [`DOMINANT`] and beyond twice the spread of the wall
    /// time between stretches, for no more CPU per answer than `other`.
    fn dominates_by(self, other: Cost, spread: Cost) -> bool {
        self.wall < other.wall * (1.0 - DOMINANT) - 2.0 * spread.wall && self.cpu <= other.cpu
    }

    /// `self` is cheaper than `other` by the margin, where `spread` is how far the chosen
    /// way's stretches stray from their average (one each way).
    fn beats(self, other: Cost, spread: Cost) -> bool {
        let margin = (MARGIN * other.cpu).max(2.0 * spread.cpu);
        self.dominates_by(other, spread)
            || !other.dominates_by(self, spread) && self.more_than(other, spread) < -margin
    }

    /// How much more `self`, a try, costs than `other`, the chosen way (negative: less): the
    /// CPU, plus the waits. The burden of proof is on the try: its longer waits count against
    /// it in full, its shorter ones for it only where they stand out of their noise: twice the
    /// standard error of their difference, or twice the spread of the waits between
    /// stretches, whichever is more. Queued calls' waits are not independent, so the standard
    /// error alone understates them: at 64 in flight the stretches' waits strayed by 20-50 %
    /// where it said 1 %. Waits within their noise counted as level either way let the way of
    /// less CPU win wherever the waits were noisy: a spread carried over from 64 calls in
    /// flight (waits 20-50 % apart) hides the 48 µs sleeping adds to a sequential call
    /// (docs/benchmarks.md, seventh round).
    fn more_than(self, other: Cost, spread: Cost) -> f64 {
        let waits = self.waited - other.waited;
        let noise = (2.0 * self.waited_se.hypot(other.waited_se)).max(2.0 * spread.waited);
        let waits = if waits > 0.0 || -waits > noise {
            waits
        } else {
            0.0
        };
        self.cpu - other.cpu + waits
    }

    /// `self`, a try, costs the chosen way's `other` by [`DECISIVE`] times or more: its CPU
    /// plus waits, or its wall time per answer for no less CPU.
    fn loses_decisively_to(self, other: Cost) -> bool {
        self.wall > DECISIVE * other.wall && self.cpu >= other.cpu
            || self.cpu + self.waited > DECISIVE * (other.cpu + other.waited)
    }

    /// `self` moved from `avg` by more than [`CHANGE`], and by more than 3 spreads, in its
    /// CPU or its waits.
    fn moved_from(self, avg: Cost, spread: Cost) -> bool {
        let far =
            |x: f64, avg: f64, spread: f64| (x - avg).abs() > (CHANGE * avg).max(3.0 * spread);
        far(self.cpu, avg.cpu, spread.cpu) || far(self.waited, avg.waited, spread.waited)
    }

    /// Cost and waits together: which way a move went.
    fn total(self) -> f64 {
        self.cpu + self.waited
    }

    /// How far `self` strays from `avg`, field by field, as a share of `avg`.
    fn strays(self, avg: Cost) -> Cost {
        let share = |x: f64, avg: f64| {
            if avg > 0.0 {
                (x - avg).abs() / avg
            } else {
                0.0
            }
        };
        Cost {
            cpu: share(self.cpu, avg.cpu),
            waited: share(self.waited, avg.waited),
            waited_se: 0.0,
            wall: share(self.wall, avg.wall),
        }
    }

    /// `self` (shares) of `avg`, field by field.
    fn of(self, avg: Cost) -> Cost {
        Cost {
            cpu: self.cpu * avg.cpu,
            waited: self.waited * avg.waited,
            waited_se: 0.0,
            wall: self.wall * avg.wall,
        }
    }

    /// The larger of the two, field by field.
    fn max(self, other: Cost) -> Cost {
        Cost {
            cpu: self.cpu.max(other.cpu),
            waited: self.waited.max(other.waited),
            waited_se: self.waited_se.max(other.waited_se),
            wall: self.wall.max(other.wall),
        }
    }

    fn blend(self, weight: f64, new: Cost) -> Cost {
        Cost {
            cpu: (1.0 - weight) * self.cpu + weight * new.cpu,
            waited: (1.0 - weight) * self.waited + weight * new.waited,
            waited_se: (1.0 - weight) * self.waited_se + weight * new.waited_se,
            wall: (1.0 - weight) * self.wall + weight * new.wall,
        }
    }
}

/// A try that changed the way, with what both ways cost per answer: for the log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Switched {
    pub to: Way,
    pub poll: Cost,
    pub sleep: Cost,
}

/// Where a stretch began.
#[derive(Debug, Clone, Copy)]
struct Mark {
    finished: u64,
    waits: Samples,
    gaps: Samples,
    idle_ns: u64,
    cpu: Duration,
    wall: Duration,
}

/// The process's CPU time and a monotonic wall time, or `None` when the CPU clock cannot be
/// read.
fn clocks() -> Option<(Duration, Duration)> {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let wall = BASE.get_or_init(Instant::now).elapsed();
    Some((crate::cpu::process_cpu_time()?, wall))
}

pub(super) struct Trial {
    /// The way the loop waits in this stretch.
    way: Way,
    /// The way that measured cheaper.
    chosen: Way,
    /// Cost per answer by way: the chosen way's a running average, the other's its last try.
    cost: [Option<Cost>; 2],
    /// How far the chosen way's stretches stray from its average, field by field, as shares
    /// of it (a running average too): the noise between stretches, which a try must beat. A
    /// share, so that it carries over a change of load or of way (the machine's noise stays).
    spread: Cost,
    /// The spread is learnt again from the next stretch (after a lull: the load that follows
    /// may stray by more or less than the last).
    relearn: bool,
    /// A stretch of the chosen way that moved from its average, set aside until the next
    /// shows whether the load changed or it was one stray stretch.
    held: Option<Cost>,
    /// Where this stretch's measure began; `None` while it settles.
    from: Option<Mark>,
    /// Until this many operations finished, the stretch settles (at the start: a warm-up,
    /// connections opening and code warming).
    settle_until: u64,
    /// Stretches of the chosen way left before the next try, and the gap after it.
    left: u32,
    gap: u32,
    /// The try won once and runs again to confirm.
    confirming: bool,
    /// Lulls seen so far (`Seen::pauses`).
    pauses: u64,
    /// The process's CPU time and the wall time so far ([`clocks`]; tests give their own).
    clock: fn() -> Option<(Duration, Duration)>,
}

impl Trial {
    pub(super) fn new() -> Trial {
        Trial::with_clock(clocks)
    }

    fn with_clock(clock: fn() -> Option<(Duration, Duration)>) -> Trial {
        Trial {
            way: Way::Poll,
            chosen: Way::Poll,
            cost: [None, None],
            spread: Cost::default(),
            relearn: false,
            held: None,
            from: None,
            settle_until: STRETCH,
            left: 1,
            gap: MIN_GAP,
            confirming: false,
            pauses: 0,
            clock,
        }
    }

    /// The way the loop waits now.
    pub(super) fn way(&self) -> Way {
        self.way
    }

    /// The loop read its counters (after serving tasks, or with nothing in flight): a stretch
    /// that has its answers is judged. `in_flight` (the operations in flight) is asked only
    /// when the way changes. Returns the new way when a try took over.
    pub(super) fn seen(
        &mut self,
        seen: &Seen,
        in_flight: impl FnOnce() -> usize,
    ) -> Option<Switched> {
        if seen.pauses != self.pauses {
            self.pauses = seen.pauses;
            self.after_pause(seen);
            return None;
        }
        let Some(from) = self.from else {
            if seen.finished >= self.settle_until {
                self.from = self.mark(seen);
            }
            return None;
        };
        let answers = seen.finished.saturating_sub(from.finished);
        let wanted = if self.way == self.chosen {
            STRETCH
        } else {
            TRY
        };
        if answers < wanted {
            return None;
        }
        let now = self.mark(seen)?;
        let cpu = now.cpu.saturating_sub(from.cpu).as_nanos() as f64;
        let idle = Duration::from_nanos(now.idle_ns.wrapping_sub(from.idle_ns));
        let wall = now
            .wall
            .saturating_sub(from.wall)
            .saturating_sub(idle)
            .as_nanos() as f64;
        self.from = Some(now);
        let n = answers as f64;
        let (waits, waits_se) = now.waits.since(from.waits).mean_and_se(n);
        let (gaps, gaps_se) = now.gaps.since(from.gaps).mean_and_se(n);
        let was = self.way;
        let switched = self.judge(Cost {
            cpu: cpu / n,
            waited: waits + gaps,
            waited_se: waits_se.hypot(gaps_se),
            wall: wall / n,
        });
        if self.way != was {
            let settle = (2 * in_flight() as u64).clamp(MIN_SETTLE, MAX_SETTLE);
            self.from = None;
            self.settle_until = seen.finished + settle;
        }
        switched
    }

    /// A lull ended ([`PAUSE`]): the load that follows may cost each way differently while
    /// neither way's figures need move. On one CPU, 64 calls in flight cost the sleeping way
    /// about what sequential calls had (120-160 µs an answer, CPU and wall time, where polling
    /// serves them in 40), so no change showed and the plan slept on until its next try, 32
    /// stretches later. So the measure starts again, in the chosen way (a try under way ends):
    /// a stretch settles unmeasured (a load's first answers cost more: at 64 in flight the
    /// first stretch after a lull measured 47 % more CPU an answer than the next), the chosen
    /// way's average starts from the next two, how far its stretches stray is learnt again
    /// from the second, and the other way is tried right after them. A spread carried over from
    /// the load before, or taken from the load's first stretch, misjudges the try: a try of
    /// polling 35 % cheaper in CPU, waits and wall time lost to a spread of 32 % learnt from
    /// that first stretch, and the plan slept on for 32 stretches. The gap stays, as after a
    /// move: started again from [`MIN_GAP`] at each lull, the tries of the next few stretches
    /// made sequential runs of 20,000 calls 10-15 % slower where both ways cost about the
    /// same.
    fn after_pause(&mut self, seen: &Seen) {
        self.cost[self.chosen as usize] = None;
        self.held = None;
        self.confirming = false;
        self.relearn = true;
        self.left = 2;
        self.way = self.chosen;
        self.from = None;
        self.settle_until = seen.finished + STRETCH;
    }

    fn mark(&self, seen: &Seen) -> Option<Mark> {
        let (cpu, wall) = (self.clock)()?;
        Some(Mark {
            finished: seen.finished,
            waits: seen.waits,
            gaps: seen.gaps,
            idle_ns: seen.idle_ns,
            cpu,
            wall,
        })
    }

    /// A stretch of `self.way` cost `cost` per answer.
    fn judge(&mut self, cost: Cost) -> Option<Switched> {
        let i = self.way as usize;
        if self.way == self.chosen {
            self.cost[i] = Some(match (self.cost[i], self.held.take()) {
                (Some(avg), held) if cost.moved_from(avg, self.spread.of(avg)) => match held {
                    Some(h) if (h.total() > avg.total()) == (cost.total() > avg.total()) => {
                        // Two stretches in a row moved the same way: what the chosen way
                        // costs changed, and the other may be cheaper now. The average starts
                        // again from the two, and the other is tried after this stretch. The
                        // gap stays: where both ways cost about the same, stray stretches
                        // are common and a gap started again at each kept the tries (and the
                        // flips they bring) coming every few stretches.
                        self.left = self.left.min(1);
                        h.blend(0.5, cost)
                    }
                    _ => {
                        // One stray stretch: set aside; the next tells.
                        self.held = Some(cost);
                        avg
                    }
                },
                (Some(mut avg), held) => {
                    for c in held.into_iter().chain([cost]) {
                        let weight = if self.relearn { 1.0 } else { 0.25 };
                        self.spread = self.spread.blend(weight, c.strays(avg));
                        self.relearn = false;
                        avg = avg.blend(0.25, c);
                    }
                    avg
                }
                (None, _) => cost,
            });
            self.left = self.left.saturating_sub(1);
            if self.left == 0 {
                self.way = self.chosen.other();
            }
            return None;
        }
        // A try of the other way, or the confirming second half of one that won.
        let first = self.cost[i].replace(cost);
        let chosen = self.cost[self.chosen as usize];
        let spread = chosen.map_or_else(Cost::default, |c| self.spread.of(c));
        let switched = match chosen {
            Some(c) if cost.beats(c, spread) && !self.confirming => {
                // A win is confirmed by another try before it takes over: right after a
                // change, a way that builds up a queue or starves the nginx thread still looks
                // cheap (at 16 calls in flight sleeping's tries measured half the waits it
                // settled at).
                self.confirming = true;
                return None;
            }
            Some(c) if cost.beats(c, spread) => {
                // The gap grows on a win too: where both ways cost about the same, the choice
                // flips less and less often. A win that was a mistake (a way whose cost builds
                // up past its try) shows as a change of the new way's cost in two stretches,
                // which brings the next try after them. The new way's average starts from its
                // two tries; the spread stays, or grows to how far apart they came.
                if let Some(first) = first {
                    let avg = first.blend(0.5, cost);
                    self.spread = self.spread.max(cost.strays(avg));
                    self.cost[i] = Some(avg);
                }
                self.held = None;
                self.chosen = self.way;
                self.gap = (self.gap * 2).min(MAX_GAP);
                true
            }
            Some(c) if cost.loses_decisively_to(c) => {
                // A way that costs double will not turn cheaper unless the load changes, which
                // a move or a lull shows: the next try comes only after DECISIVE_GAP. On one
                // CPU at 64 in flight a try of sleeping took 3x the time per answer: tries
                // after 2, 4, 8 and 16 stretches cost the plan 10-15 % of the calls polling
                // makes there, and with MAX_GAP between them still 10 %.
                self.way = self.chosen;
                self.gap = DECISIVE_GAP;
                false
            }
            _ => {
                self.way = self.chosen;
                self.gap = (self.gap * 2).min(MAX_GAP);
                false
            }
        };
        self.left = self.gap;
        self.confirming = false;
        switched.then(|| Switched {
            to: self.chosen,
            poll: self.cost[Way::Poll as usize].unwrap_or_default(),
            sleep: self.cost[Way::Sleep as usize].unwrap_or_default(),
        })
    }

    /// Puts the loop in `way` for this stretch (tests).
    #[cfg(test)]
    pub(super) fn set_way(&mut self, way: Way) {
        self.way = way;
    }

    /// Cost per answer of a way, as last measured (tests).
    #[cfg(test)]
    fn cost(&self, way: Way) -> Option<Cost> {
        self.cost[way as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Answers until the first try has been judged: the warm-up, a stretch, the try's
    /// settling and the try.
    const FIRST_TRY: u64 = STRETCH + STRETCH + MIN_SETTLE + TRY;
    /// And until a first try that wins has been confirmed.
    const FIRST_SWITCH: u64 = FIRST_TRY + TRY;

    thread_local! {
        /// The CPU clock the tests drive.
        static CPU: Cell<Duration> = const { Cell::new(Duration::ZERO) };
        static WALL: Cell<Duration> = const { Cell::new(Duration::ZERO) };
    }

    fn clock() -> Option<(Duration, Duration)> {
        Some((CPU.with(Cell::get), WALL.with(Cell::get)))
    }

    /// A load where polling costs `poll` µs per answer (CPU and waiting half each) and
    /// sleeping `sleep`, or the CPU and waits of `by_way` when set, and answers wait `wait`
    /// µs more either way, give or take up to `jitter` µs (uniformly); answers are counted as
    /// the loop would count them.
    struct Load {
        t: Trial,
        seen: Seen,
        poll: f64,
        sleep: f64,
        by_way: Option<[(f64, f64); 2]>,
        /// Wall µs per answer by way (100 both ways when `None`).
        wall: Option<[f64; 2]>,
        wait: f64,
        jitter: f64,
        /// Each stretch's CPU, waits and wall time scaled by a factor drawn for it, uniformly
        /// within this share either side of 1 (a machine whose load moves between stretches).
        stray: f64,
        factor: f64,
        /// The waits' own share, where it is set (queued waits stray more than the CPU).
        wait_stray: Option<f64>,
        wait_factor: f64,
        rng: fastrand::Rng,
        /// Answers served each way.
        served: [u64; 2],
        /// Answers served the way that was not chosen (in tries).
        tried: u64,
        switches: Vec<Switched>,
    }

    impl Load {
        fn new(poll: f64, sleep: f64) -> Load {
            CPU.with(|c| c.set(Duration::ZERO));
            WALL.with(|c| c.set(Duration::ZERO));
            Load {
                t: Trial::with_clock(clock),
                seen: Seen::default(),
                poll,
                sleep,
                by_way: None,
                wall: None,
                wait: 0.0,
                jitter: 0.0,
                stray: 0.0,
                factor: 1.0,
                wait_stray: None,
                wait_factor: 1.0,
                rng: fastrand::Rng::with_seed(11),
                served: [0, 0],
                tried: 0,
                switches: Vec::new(),
            }
        }

        /// A load given as each way's CPU and waits per answer, and optionally its wall time
        /// per answer.
        fn by_way(by_way: [(f64, f64); 2], wall: Option<[f64; 2]>) -> Load {
            let mut l = Load::new(0.0, 0.0);
            l.by_way = Some(by_way);
            l.wall = wall;
            l
        }

        /// `n` answers, 16 at a time (a batch of tasks served).
        fn run(&mut self, n: u64) {
            for _ in 0..n / 16 {
                if self.seen.finished.is_multiple_of(STRETCH) {
                    self.factor = 1.0 + (self.rng.f64() * 2.0 - 1.0) * self.stray;
                    self.wait_factor = self
                        .wait_stray
                        .map_or(self.factor, |s| 1.0 + (self.rng.f64() * 2.0 - 1.0) * s);
                }
                let way = self.t.way();
                let (cpu, waits) = match (self.by_way, way) {
                    (Some(w), _) => w[way as usize],
                    (None, Way::Poll) => (self.poll / 2.0, self.poll / 2.0),
                    (None, Way::Sleep) => (self.sleep / 2.0, self.sleep / 2.0),
                };
                let (cpu, waits) = (cpu * self.factor, waits * self.wait_factor);
                CPU.with(|c| c.set(c.get() + Duration::from_nanos((cpu * 1000.0 * 16.0) as u64)));
                let wall = self.wall.map_or(100.0, |w| w[way as usize]) * self.factor;
                WALL.with(|c| c.set(c.get() + Duration::from_nanos((wall * 1000.0 * 16.0) as u64)));
                for _ in 0..16 {
                    let jitter = (self.rng.f64() * 2.0 - 1.0) * self.jitter;
                    let us = waits + self.wait + jitter;
                    self.seen.waits.sum_ns += (us * 1000.0) as u64;
                    self.seen.waits.sq_us += (us * us) as u64;
                }
                self.seen.finished += 16;
                self.served[way as usize] += 16;
                if way != self.t.chosen {
                    self.tried += 16;
                }
                if let Some(s) = self.t.seen(&self.seen, || 0) {
                    self.switches.push(s);
                }
            }
        }

        /// The share of answers served sleeping.
        fn slept(&self) -> f64 {
            self.served[Way::Sleep as usize] as f64 / (self.served[0] + self.served[1]) as f64
        }
    }

    #[test]
    fn keeps_polling_where_it_is_cheaper_and_tries_sleeping_ever_less_often() {
        let mut l = Load::new(40.0, 120.0);
        l.run(STRETCH);
        assert_eq!(l.t.way(), Way::Poll, "the warm-up stretch polls");
        l.run(400_000);
        assert_eq!(l.t.chosen, Way::Poll);
        assert!(l.switches.is_empty(), "{:?}", l.switches);
        // Tries of sleeping, at most one TRY per MAX_GAP stretches once the gap has grown.
        let bound = TRY as f64 / (TRY + MAX_GAP as u64 * STRETCH) as f64;
        assert!(l.slept() < 2.0 * bound, "slept {}", l.slept());
        assert!(l.slept() > 0.0, "sleeping was never tried");
        let poll = l.t.cost(Way::Poll).unwrap();
        let poll = poll.cpu + poll.waited;
        assert!((poll - 40_000.0).abs() < 1.0, "poll cost {poll}");
    }

    #[test]
    fn sleeps_where_sleeping_is_cheaper() {
        let mut l = Load::new(90.0, 60.0);
        l.run(FIRST_TRY);
        assert_eq!(l.t.chosen, Way::Poll, "a win is confirmed first");
        assert_eq!(l.t.way(), Way::Sleep);
        l.run(TRY);
        assert_eq!(l.t.chosen, Way::Sleep, "the confirmed try takes over");
        assert_eq!(
            l.switches,
            vec![Switched {
                to: Way::Sleep,
                poll: Cost {
                    cpu: 45_000.0,
                    waited: 45_000.0,
                    waited_se: 0.0,
                    wall: 100_000.0
                },
                sleep: Cost {
                    cpu: 30_000.0,
                    waited: 30_000.0,
                    waited_se: 0.0,
                    wall: 100_000.0
                },
            }]
        );
        l.run(400_000);
        assert_eq!(l.switches.len(), 1, "{:?}", l.switches);
        assert!(l.slept() > 0.97, "slept {}", l.slept());
    }

    #[test]
    fn a_try_within_the_margin_does_not_take_over() {
        // 2 µs less, within 5 % of polling's 50 µs of CPU.
        let mut l = Load::new(100.0, 98.0);
        l.run(100_000);
        assert!(l.switches.is_empty(), "{:?}", l.switches);
        assert_eq!(l.t.chosen, Way::Poll);
    }

    #[test]
    fn cpu_spent_for_nothing_counts_where_answers_wait_long() {
        // Answers wait 20 ms either way; polling costs 600 µs more per answer (300 of CPU),
        // 3 % of the whole cost: sleeping takes over.
        let mut l = Load::new(700.0, 100.0);
        l.wait = 20_000.0;
        l.run(FIRST_SWITCH);
        assert_eq!(l.t.chosen, Way::Sleep, "{:?}", l.switches);
    }

    #[test]
    fn faster_answers_for_no_more_cpu_win_whatever_the_waits() {
        // 64 calls in flight on one CPU, as measured (µs): polling 29 of CPU and 487 of
        // waits per answer, sleeping 82 and 264 (the nginx thread, starved, launched fewer
        // calls), and 50 against 130 between answers.
        let measured = [(29.0, 487.0), (82.0, 264.0)];
        let mut l = Load::by_way(measured, Some([50.0, 130.0]));
        l.run(100_000);
        assert!(l.switches.is_empty(), "{:?}", l.switches);
        assert_eq!(l.t.chosen, Way::Poll);
        // And where sleeping is chosen first, polling's try takes over.
        let mut l = Load::by_way(measured, Some([50.0, 130.0]));
        l.t.chosen = Way::Sleep;
        l.t.way = Way::Sleep;
        l.run(100_000);
        assert_eq!(l.t.chosen, Way::Poll, "{:?}", l.switches);
        // Without the wall times the waits would decide for sleeping.
        let mut l = Load::by_way(measured, None);
        l.run(FIRST_SWITCH);
        assert_eq!(l.t.chosen, Way::Sleep);
    }

    #[test]
    fn mean_and_standard_error_of_summed_samples() {
        // 100 and 300 µs: mean 200 µs, variance 10,000 µs², standard error √(10,000 / 2).
        let samples = |sum_ns, sq_us| Samples { sum_ns, sq_us };
        let (mean, se) = samples(400_000, 100 * 100 + 300 * 300).mean_and_se(2.0);
        assert_eq!(mean, 200_000.0);
        assert!((se - 70_710.7).abs() < 1.0, "{se}");
        // No samples: nothing.
        assert_eq!(samples(0, 0).mean_and_se(512.0), (0.0, 0.0));
        // Differences of running totals survive their wrapping.
        let from = samples(u64::MAX - 99, 0);
        assert_eq!(samples(300, 0).since(from), samples(400, 0));
        // Added as durations: ns summed, µs squared.
        let sums = SampleSums::default();
        sums.add(Duration::from_micros(100));
        sums.add(Duration::from_micros(300));
        assert_eq!(sums.load(), samples(400_000, 100 * 100 + 300 * 300));
    }

    #[test]
    fn waits_count_only_out_of_their_noise() {
        let cost = |cpu: f64, waited: f64, waited_se: f64| Cost {
            cpu,
            waited,
            waited_se,
            wall: 100.0,
        };
        // A try of polling, 400 µs shorter waits, with standard errors of 250 µs each (2 of
        // their difference: 707 µs): noise; its 400 µs of CPU more decide.
        let poll = cost(450.0, 20_000.0, 250.0);
        let sleep = cost(50.0, 20_400.0, 250.0);
        let none = Cost::default();
        assert_eq!(poll.more_than(sleep, none), 400.0);
        // A try of sleeping whose waits are 400 µs longer, within the same noise: they count
        // against it, the try must show itself cheaper.
        assert_eq!(sleep.more_than(poll, none), 0.0);
        // The same difference measured to 50 µs counts for polling's try.
        let poll = cost(450.0, 20_000.0, 50.0);
        let sleep = cost(50.0, 20_400.0, 50.0);
        assert_eq!(poll.more_than(sleep, none), 0.0);
        // But not where the stretches' waits stray by 300 µs from their average.
        let spread = Cost {
            waited: 300.0,
            ..none
        };
        assert_eq!(poll.more_than(sleep, spread), 400.0);
        assert_eq!(sleep.more_than(poll, spread), 0.0);
    }

    #[test]
    fn waits_shortened_beyond_their_noise_buy_polling_its_cpu() {
        // Answers take 20 ms ± 5 ms either way (a server's millisecond timer, a loaded
        // machine), 2 ms longer sleeping; polling spends 400 µs of CPU more.
        for seed in 0..20 {
            let mut l = Load::by_way([(450.0, 0.0), (50.0, 2_000.0)], None);
            l.rng = fastrand::Rng::with_seed(seed);
            l.wait = 20_000.0;
            l.jitter = 5_000.0;
            l.run(FIRST_TRY);
            assert_eq!(l.t.chosen, Way::Poll, "seed {seed}: {:?}", l.t.cost);
        }
    }

    #[test]
    fn at_a_tie_stray_stretches_do_not_flip_the_choice() {
        // 64 calls in flight with a CPU to spare, as measured: both ways about 40 µs of CPU
        // and 2.5 ms of waits per answer, each stretch up to 45 % off (in the cpu bench the
        // old rules, which trusted the standard error and took one stray stretch for a change,
        // flipped here every 10-20 stretches).
        for seed in 0..10 {
            let mut l = Load::by_way([(40.0, 2_500.0); 2], Some([45.0; 2]));
            l.stray = 0.45;
            l.rng = fastrand::Rng::with_seed(seed);
            l.run(400_000);
            // 0-5 switches in the ten seeds: about one in 150 stretches at most.
            assert!(l.switches.len() <= 6, "seed {seed}: {:?}", l.switches);
            let tried = l.tried as f64 / 400_000.0;
            assert!(tried < 0.05, "seed {seed}: {tried} of the answers in tries");
        }
    }

    #[test]
    fn one_stray_stretch_does_not_bring_a_try() {
        let mut l = Load::new(40.0, 60.0);
        l.run(100_000);
        let gap = l.t.gap;
        assert!(gap > MIN_GAP);
        // Wait for a stretch of the chosen way to begin.
        while l.t.way() != Way::Poll || l.t.left < 6 {
            l.run(16);
        }
        let left = l.t.left;
        l.poll = 200.0;
        l.run(STRETCH);
        l.poll = 40.0;
        l.run(2 * STRETCH);
        assert_eq!(l.t.way(), Way::Poll, "no try");
        assert!(
            l.t.left < left && l.t.left >= left - 3,
            "{} of {left}",
            l.t.left
        );
        assert_eq!(l.t.gap, gap, "the gap stays");
        assert!(l.switches.is_empty());
    }

    #[test]
    fn a_pause_between_loads_is_not_wall_time() {
        // Both ways give answers 50 µs apart for the same CPU. A stretch of polling that spans
        // a pause of a second would measure about 2 ms per answer; blended into polling's
        // average wall time, it would let sleeping's next try win outright.
        let mut l = Load::by_way([(40.0, 100.0); 2], Some([50.0; 2]));
        l.run(100_000);
        l.run(200);
        WALL.with(|c| c.set(c.get() + Duration::from_secs(1)));
        l.seen.idle_ns += 1_000_000_000;
        l.run(100_000);
        let poll = l.t.cost(Way::Poll).unwrap();
        assert!((poll.wall - 50_000.0).abs() < 1.0, "{poll:?}");
        assert!(l.switches.is_empty(), "{:?}", l.switches);
    }

    #[test]
    fn follows_a_change_of_load() {
        let mut l = Load::new(40.0, 120.0);
        l.run(200_000);
        assert_eq!(l.t.chosen, Way::Poll);
        // Polling turns dear (the server now shares the poll thread's CPU): the change in its
        // cost, seen in two stretches in a row, brings a try of sleeping after the second, and
        // sleeping takes over.
        l.poll = 200.0;
        l.run(5 * STRETCH);
        assert_eq!(l.t.chosen, Way::Sleep);
        assert_eq!(l.switches.len(), 1);
        // And back.
        l.poll = 40.0;
        l.sleep = 200.0;
        l.run(5 * STRETCH);
        assert_eq!(l.t.chosen, Way::Poll);
        assert_eq!(l.switches.len(), 2);
    }

    #[test]
    fn a_try_that_loses_decisively_brings_a_long_gap() {
        // Sleeping costs 3x: after its first try the next comes DECISIVE_GAP stretches later.
        let mut l = Load::new(40.0, 120.0);
        l.run(FIRST_TRY);
        assert_eq!(
            (l.t.way(), l.t.gap, l.t.left),
            (Way::Poll, DECISIVE_GAP, DECISIVE_GAP)
        );
        // Sleeping costs 1.5x: the gap doubles.
        let mut l = Load::new(40.0, 60.0);
        l.run(FIRST_TRY);
        assert_eq!((l.t.way(), l.t.gap), (Way::Poll, 2 * MIN_GAP));
        // Answers 3x as far apart for more CPU, whatever the waits: decisive too.
        let mut l = Load::by_way([(20.0, 1400.0), (60.0, 200.0)], Some([40.0, 120.0]));
        l.run(FIRST_TRY);
        assert_eq!((l.t.way(), l.t.gap), (Way::Poll, DECISIVE_GAP));
    }

    #[test]
    fn after_a_lull_it_measures_afresh() {
        // Sleeping is cheaper, and chosen long enough that the tries are MAX_GAP apart.
        let mut l = Load::new(120.0, 80.0);
        l.run(400_000);
        assert_eq!(l.t.chosen, Way::Sleep);
        assert_eq!(l.t.gap, MAX_GAP);
        // The load that follows a lull costs sleeping what the last one did, but polling far
        // less: no change shows, and without the lull the next try would come up to MAX_GAP
        // stretches later.
        let loads = |l: &mut Load| {
            l.poll = 30.0;
            l.run(6 * STRETCH);
        };
        let mut quiet = Load::new(120.0, 80.0);
        quiet.run(400_000);
        assert!(
            quiet.t.left > 6,
            "the next try is {} stretches off",
            quiet.t.left
        );
        loads(&mut quiet);
        assert_eq!(quiet.t.chosen, Way::Sleep, "no lull, no try yet");
        l.seen.pauses += 1;
        loads(&mut l);
        assert_eq!(l.t.chosen, Way::Poll, "measured afresh after the lull");
        assert_eq!(l.switches.last().map(|s| s.to), Some(Way::Poll));
    }

    #[test]
    fn a_lull_during_a_try_ends_it_and_the_average_starts_again() {
        let mut l = Load::new(40.0, 60.0);
        l.run(100_000);
        while l.t.way() == l.t.chosen {
            l.run(16);
        }
        let gap = l.t.gap;
        l.seen.pauses += 1;
        // The try ends at once; the gap stays.
        l.run(16);
        assert_eq!((l.t.way(), l.t.chosen), (Way::Poll, Way::Poll));
        assert_eq!(l.t.gap, gap);
        assert_eq!(l.t.cost(Way::Poll), None);
        // A stretch settles, the average starts from the next two, then sleeping is tried.
        let poll_for = |l: &mut Load, n: u64| {
            for _ in 0..n / 16 {
                assert_eq!(l.t.way(), Way::Poll);
                l.run(16);
            }
        };
        poll_for(&mut l, 3 * STRETCH - 16);
        let poll = l.t.cost(Way::Poll).expect("the two stretches' average");
        assert!((poll.cpu - 20_000.0).abs() < 1.0, "{poll:?}");
        // The stretches are counted from the first read after they begin (16 answers a read).
        let mut n = 0;
        while l.t.way() == Way::Poll && n < 64 {
            l.run(16);
            n += 16;
        }
        assert_eq!(l.t.way(), Way::Sleep, "no try after {n} answers more");
        assert!(l.switches.is_empty(), "{:?}", l.switches);
    }

    #[test]
    fn after_a_lull_the_first_stretch_settles_and_the_spread_is_learnt_again() {
        // Sleeping chosen under a load whose stretches' waits strayed by up to 40 %; after a
        // lull the next load's first stretch costs half again as much, then polling is a third
        // cheaper in everything, stretches within 5 %: the try after the lull wins. Learnt
        // from the first stretch, the spread would be a third and the try would lose.
        for seed in 0..10 {
            let mut l = Load::by_way([(40.0, 2_500.0), (30.0, 2_000.0)], Some([50.0; 2]));
            l.rng = fastrand::Rng::with_seed(seed);
            (l.t.chosen, l.t.way) = (Way::Sleep, Way::Sleep);
            l.stray = 0.05;
            l.wait_stray = Some(0.4);
            l.run(100_000);
            assert_eq!(l.t.chosen, Way::Sleep, "seed {seed}");
            l.seen.pauses += 1;
            l.by_way = Some([(45.0, 3_000.0), (75.0, 4_500.0)]);
            l.wall = Some([70.0, 105.0]);
            (l.stray, l.wait_stray) = (0.0, None);
            l.run(STRETCH);
            l.by_way = Some([(30.0, 2_000.0), (50.0, 3_000.0)]);
            l.wall = Some([47.0, 70.0]);
            l.stray = 0.05;
            l.run(4 * STRETCH);
            assert_eq!(l.t.chosen, Way::Poll, "seed {seed}: {:?}", l.switches);
        }
    }

    #[test]
    fn without_a_cpu_clock_it_keeps_polling() {
        let mut t = Trial::with_clock(|| None);
        let mut seen = Seen::default();
        for _ in 0..1000 {
            seen.finished += 16;
            assert_eq!(t.seen(&seen, || 0), None);
        }
        assert_eq!(t.way(), Way::Poll);
    }
}
