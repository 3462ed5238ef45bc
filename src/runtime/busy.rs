//! When the poll thread busy-polls the network instead of sleeping (`busy_poll`, `busy_poll_us`).
//!
//! A window opens when the event loop serves tasks; while it is open and gRPC operations are in
//! flight, the loop polls its sockets instead of sleeping, so an answer that comes within it
//! needs no wake-up of a sleeping thread (35-70 µs between vCPUs on these VMs). Where the
//! window sits is the plan, chosen once per poll thread from `busy_poll` ([`Plan::choose`]); the
//! thread logs where it runs with it (its CPUs, the worker's, a cgroup CPU quota), on which no
//! plan depends:
//!
//! - **Measured** (`busy_poll=adaptive`, the default, without a CPU quota): polls from the
//!   last task, as below, or sleeps, whichever way measures cheaper as the loop runs: CPU of
//!   the whole process plus the time answers wait, per answer, with the other way tried now
//!   and then (`trial.rs`). Neither way wins everywhere on these VMs (docs/benchmarks.md,
//!   "Where polling from the last task does not pay"), and the placement alone does not say
//!   which will. Under a cgroup CPU quota `adaptive` polls from the last task: there tries of
//!   sleeping cost more than they find (docs/benchmarks.md, "A plan that measures").
//! - **From the last task** (`busy_poll=fixed`, and `adaptive` under a quota): poll from the moment tasks were served for up
//!   to `busy_poll_us`. Each poll first yields the CPU (`sched_yield`), so on a CPU shared with
//!   the worker and the server waiting this way costs little. Under a cgroup CPU quota it was
//!   measured to save CPU, not spend it (docs/benchmarks.md, "Busy polling under a CPU quota":
//!   with it off, each answer costs the sleeping poll thread a wake-up, 3.2-3.6x the CPU per
//!   call at 16 and 64 calls in flight under quotas of 1 and 0.5 CPU, and 3.3-3.7x the time).
//! - **Ahead of the answer** (`busy_poll=ahead`, opt-in): the plan learns how long answers take
//!   (from the last task to the first operation finishing: its 10 % and 90 % quantiles) and how
//!   late its timer wakes it, sleeps until shortly before the early answers, and polls from
//!   there until a little after the late ones. Meant to keep a second CPU from polling through
//!   the whole call; measured on these VMs (docs/benchmarks.md, "CPU per call") it cost more
//!   CPU and time than polling from the last task: waking from a timer is as dear as the
//!   wake-up it hides. Answers slower than `busy_poll_us` are not polled for. Until it has
//!   learned, it polls from the last task.
//! - **Off** (`busy_poll=off`, `busy_poll_us=0`).
//!
//! A window that closes with operations still in flight and none finished while it polled was
//! wasted. After such a miss the next window is skipped, after another the next 2, then 4 ...
//! up to 64, as the host does with its spins; a window that catches an answer ends the
//! back-off.

use std::time::{Duration, Instant};

use super::trial::{Seen, Switched, Trial, Way};
use crate::config::BusyPollMode;

/// Most windows skipped after consecutive misses.
const MAX_SKIP: u32 = 64;
/// Planning ahead: the poll starts this much earlier than the plan says (the timer's lateness
/// is learned and added on top) and ends this much later.
const LEAD: Duration = Duration::from_micros(10);
const TAIL: Duration = Duration::from_micros(20);
/// A planned start sooner than this after the last task: poll at once instead of arming a
/// timer (its wake-up would come too late to matter).
const MIN_SLEEP: Duration = Duration::from_micros(15);
/// Before any timer fired: how late one is assumed to wake (a halted vCPU's wake-up here).
const INITIAL_LATENESS: Duration = Duration::from_micros(30);

/// Where the windows sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Plan {
    Off,
    FromLastTask,
    Measured,
    Ahead,
}

impl Plan {
    /// The plan for `mode` with a window of `window`, in a cgroup with a CPU quota or not.
    pub(super) fn choose(mode: BusyPollMode, window: Duration, quota: bool) -> Plan {
        match mode {
            _ if window.is_zero() => Plan::Off,
            BusyPollMode::Off => Plan::Off,
            BusyPollMode::Fixed => Plan::FromLastTask,
            // Under a quota its tries of sleeping cost more than they find: there it measured
            // 15-28 % slower than polling always at 16 and 64 calls in flight.
            BusyPollMode::Adaptive if quota => Plan::FromLastTask,
            BusyPollMode::Adaptive => Plan::Measured,
            BusyPollMode::Ahead => Plan::Ahead,
        }
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Plan::Off => "off",
            Plan::FromLastTask => "from the last task",
            Plan::Measured => "measured (from the last task or sleeping, whichever costs less)",
            Plan::Ahead => "ahead of the answers",
        }
    }
}

/// What the event loop does next while operations are in flight and nothing is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Poll the network once more without sleeping.
    Poll,
    /// Sleep, and have a timer wake the loop after this long (the window starts then).
    SleepFor(Duration),
    /// Sleep until a task or a socket wakes the loop.
    Sleep,
}

/// Running estimates of a low and a high quantile (10 % and 90 %) of a time, robust to the
/// outliers a loaded machine adds: each sample moves them by a small step relative to their
/// size, down nine steps when it falls below the low one (up one otherwise), and the other way
/// for the high one, so they settle where one sample in ten falls outside.
#[derive(Debug, Clone, Copy, Default)]
struct Quantiles {
    lo: f64,
    hi: f64,
    samples: u32,
}

impl Quantiles {
    fn add(&mut self, v: Duration) {
        let v = v.as_nanos() as f64;
        if self.samples == 0 {
            (self.lo, self.hi) = (v, v);
        } else {
            // Steps of 1/64 of the estimate, at least 100 ns.
            let step = |q: f64| (q / 64.0).max(100.0);
            if v < self.lo {
                self.lo = (self.lo - 9.0 * step(self.lo)).max(v);
            } else {
                self.lo = (self.lo + step(self.lo)).min(v.max(self.lo));
            }
            if v > self.hi {
                self.hi = (self.hi + 9.0 * step(self.hi)).min(v);
            } else {
                self.hi = (self.hi - step(self.hi)).max(v.min(self.hi));
            }
            self.hi = self.hi.max(self.lo);
        }
        self.samples = self.samples.saturating_add(1);
    }

    fn lo(&self) -> Duration {
        Duration::from_nanos(self.lo as u64)
    }

    fn hi(&self) -> Duration {
        Duration::from_nanos(self.hi as u64)
    }
}

pub(super) struct BusyPoll {
    plan: Plan,
    /// The longest window (`busy_poll_us`).
    window: Duration,
    /// When the current window opened (the last batch of tasks).
    opened: Instant,
    /// Operations finished when it opened.
    finished_at_open: u64,
    /// Whether the current window will poll, and is still undecided.
    open: bool,
    /// When it polls: from `start` to `end` after it opened.
    start: Duration,
    end: Duration,
    /// Whether the loop has been polling in this window (the timer fired, or no sleep).
    polling: bool,
    /// Windows still to skip, and how many the next miss skips.
    skip: u32,
    next_skip: u32,
    /// Time from a window's opening to its first finished operation.
    answer: Quantiles,
    /// How late the timer wakes the loop.
    lateness: Quantiles,
    /// When the timer was due, while it is armed.
    timer_due: Option<Instant>,
    /// The measured plan's experiment.
    trial: Option<Trial>,
}

impl BusyPoll {
    pub(super) fn new(plan: Plan, window: Duration) -> BusyPoll {
        BusyPoll {
            plan,
            window,
            opened: Instant::now(),
            finished_at_open: 0,
            open: false,
            start: Duration::ZERO,
            end: window,
            polling: false,
            skip: 0,
            next_skip: 1,
            answer: Quantiles::default(),
            lateness: Quantiles::default(),
            timer_due: None,
            trial: (plan == Plan::Measured).then(Trial::new),
        }
    }

    pub(super) fn plan(&self) -> Plan {
        self.plan
    }

    /// Tasks were served: the last window is judged and a new one opens (or is skipped).
    /// `in_flight` counts the operations in flight, asked only when the measured plan changes
    /// its way. Returns the way the measured plan switched to, when it did.
    pub(super) fn tasks_served(
        &mut self,
        seen: &Seen,
        in_flight: impl FnOnce() -> usize,
    ) -> Option<Switched> {
        let finished = seen.finished;
        self.learn(finished, seen.first_finish);
        if self.open && finished != self.finished_at_open && self.polling {
            self.hit();
        }
        let switched = self.trial.as_mut().and_then(|t| t.seen(seen, in_flight));
        self.opened = Instant::now();
        self.finished_at_open = finished;
        self.polling = false;
        self.timer_due = None;
        self.open = match self.plan {
            Plan::Off => false,
            Plan::Measured if self.trial.as_ref().is_some_and(|t| t.way() == Way::Sleep) => false,
            _ if self.skip > 0 => {
                self.skip -= 1;
                false
            }
            _ => true,
        };
        (self.start, self.end) = self.window_bounds();
        switched
    }

    /// Where the next window polls, after its opening.
    fn window_bounds(&self) -> (Duration, Duration) {
        if self.plan != Plan::Ahead || self.answer.samples == 0 {
            return (Duration::ZERO, self.window);
        }
        let late = if self.lateness.samples == 0 {
            INITIAL_LATENESS
        } else {
            self.lateness.hi()
        };
        let start = self.answer.lo().saturating_sub(late + LEAD);
        let end = (self.answer.hi() + TAIL).min(self.window);
        let start = if start < MIN_SLEEP {
            Duration::ZERO
        } else {
            start
        };
        (start, end)
    }

    /// Nothing queued and operations in flight: what to do next. An open window whose end
    /// passed is judged.
    pub(super) fn next(&mut self, finished: u64) -> Next {
        if !self.open {
            return Next::Sleep;
        }
        let since = self.opened.elapsed();
        if since >= self.end {
            self.open = false;
            if self.polling && finished != self.finished_at_open {
                self.hit();
            } else if self.polling {
                self.miss();
            }
            return Next::Sleep;
        }
        if self.start <= since || self.start >= self.end {
            if self.start >= self.end {
                // Answers come later than the longest window: do not poll for them.
                self.open = false;
                return Next::Sleep;
            }
            self.polling = true;
            return Next::Poll;
        }
        let after = self.start - since;
        self.timer_due = Some(Instant::now() + after);
        Next::SleepFor(after)
    }

    /// The timer armed by `SleepFor` fired: learn how late it was.
    pub(super) fn timer_fired(&mut self) {
        if let Some(due) = self.timer_due.take() {
            self.lateness
                .add(Instant::now().saturating_duration_since(due));
        }
    }

    /// Nothing in flight any more: an open window served its purpose. Returns the way the
    /// measured plan switched to, when it did.
    pub(super) fn all_done(&mut self, seen: &Seen) -> Option<Switched> {
        let finished = seen.finished;
        self.learn(finished, seen.first_finish);
        if self.open && finished != self.finished_at_open && self.polling {
            self.hit();
        }
        self.open = false;
        self.finished_at_open = finished;
        self.trial.as_mut().and_then(|t| t.seen(seen, || 0))
    }

    /// Learns the answer time of the window that just ended from its first finished operation.
    /// An answer that came while the loop slept was seen one wake-up late: that is taken off.
    fn learn(&mut self, finished: u64, first_finish: Option<Instant>) {
        if self.plan != Plan::Ahead || finished == self.finished_at_open {
            return;
        }
        let Some(at) = first_finish else { return };
        let Some(took) = at.checked_duration_since(self.opened) else {
            return;
        };
        let took = if self.polling && took >= self.start {
            took
        } else {
            let late = if self.lateness.samples == 0 {
                INITIAL_LATENESS
            } else {
                self.lateness.lo()
            };
            took.saturating_sub(late)
        };
        self.answer.add(took);
    }

    fn hit(&mut self) {
        self.skip = 0;
        self.next_skip = 1;
    }

    fn miss(&mut self) {
        self.skip = self.next_skip;
        self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
    }

    /// Windows that will be skipped (tests).
    #[cfg(test)]
    fn skipping(&self) -> u32 {
        self.skip
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_millis(2);

    fn seen(finished: u64, first_finish: Option<Instant>) -> Seen {
        Seen {
            finished,
            first_finish,
            ..Seen::default()
        }
    }

    fn fixed(window: Duration) -> BusyPoll {
        BusyPoll::new(Plan::FromLastTask, window)
    }

    /// Opens a window and lets it run out with nothing finished.
    fn miss(b: &mut BusyPoll, finished: u64) {
        b.tasks_served(&seen(finished, None), || 0);
        while b.next(finished) == Next::Poll {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn plans_by_mode() {
        // Under a real quota t/grpc.rs checks the plan too.
        let w = Duration::from_micros(500);
        assert_eq!(
            Plan::choose(BusyPollMode::Adaptive, w, false),
            Plan::Measured
        );
        assert_eq!(
            Plan::choose(BusyPollMode::Adaptive, w, true),
            Plan::FromLastTask
        );
        assert_eq!(Plan::choose(BusyPollMode::Ahead, w, false), Plan::Ahead);
        assert_eq!(
            Plan::choose(BusyPollMode::Fixed, w, false),
            Plan::FromLastTask
        );
        assert_eq!(Plan::choose(BusyPollMode::Off, w, true), Plan::Off);
        assert_eq!(
            Plan::choose(BusyPollMode::Fixed, Duration::ZERO, false),
            Plan::Off
        );
    }

    #[test]
    fn polls_within_the_window_then_sleeps() {
        let mut b = fixed(W);
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Poll);
        std::thread::sleep(W + Duration::from_millis(1));
        assert_eq!(b.next(0), Next::Sleep, "the window is over");
        assert_eq!(b.next(0), Next::Sleep, "and stays closed");
    }

    #[test]
    fn misses_back_off_and_a_hit_ends_it() {
        let mut b = fixed(W);
        miss(&mut b, 0);
        assert_eq!(b.skipping(), 1);
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Sleep, "skipped window");
        miss(&mut b, 0);
        assert_eq!(b.skipping(), 2);
        for _ in 0..2 {
            b.tasks_served(&seen(0, None), || 0);
            assert_eq!(b.next(0), Next::Sleep);
        }
        miss(&mut b, 0);
        assert_eq!(b.skipping(), 4);
        // Skipped windows are not judged: they keep the back-off as it is.
        for _ in 0..4 {
            b.tasks_served(&seen(0, None), || 0);
            b.all_done(&seen(1, Some(Instant::now())));
        }
        assert_eq!(b.skipping(), 0);
        // An answer inside an open window ends the back-off.
        b.tasks_served(&seen(1, None), || 0);
        assert_eq!(b.next(2), Next::Poll);
        b.all_done(&seen(2, Some(Instant::now())));
        miss(&mut b, 2);
        assert_eq!(b.skipping(), 1, "back to the first step");
    }

    #[test]
    fn back_off_stops_at_64() {
        let mut b = fixed(Duration::from_micros(1));
        for _ in 0..12 {
            miss(&mut b, 0);
            while b.skipping() > 0 {
                b.tasks_served(&seen(0, None), || 0);
            }
        }
        miss(&mut b, 0);
        assert_eq!(b.skipping(), MAX_SKIP);
    }

    #[test]
    fn measured_polls_from_the_last_task_unless_its_trial_sleeps() {
        let mut b = BusyPoll::new(Plan::Measured, W);
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Poll);
        b.trial.as_mut().unwrap().set_way(Way::Sleep);
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Sleep);
        assert_eq!(b.skipping(), 0, "a window slept through is not a miss");
        b.trial.as_mut().unwrap().set_way(Way::Poll);
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Poll);
    }

    #[test]
    fn off_never_polls() {
        let mut b = BusyPoll::new(Plan::Off, W);
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Sleep);
    }

    /// One window of the Ahead plan whose answer comes `took` after it opened (simulated by
    /// shifting `opened` back), seen while polling.
    fn answered_after(b: &mut BusyPoll, n: &mut u64, took: Duration) {
        b.tasks_served(&seen(*n, None), || 0);
        b.opened -= took;
        b.polling = true;
        let at = b.opened + took;
        *n += 1;
        b.all_done(&seen(*n, Some(at)));
    }

    #[test]
    fn ahead_polls_from_the_start_until_it_has_learned() {
        let mut b = BusyPoll::new(Plan::Ahead, Duration::from_micros(500));
        b.tasks_served(&seen(0, None), || 0);
        assert_eq!(b.next(0), Next::Poll);
    }

    #[test]
    fn ahead_sleeps_until_shortly_before_the_learned_answer_time() {
        let mut b = BusyPoll::new(Plan::Ahead, Duration::from_micros(500));
        let mut n = 0;
        for _ in 0..40 {
            answered_after(&mut b, &mut n, Duration::from_micros(200));
        }
        b.tasks_served(&seen(n, None), || 0);
        let Next::SleepFor(after) = b.next(n) else {
            panic!("expected a planned sleep");
        };
        // 200 µs answers, 30 µs assumed timer lateness, 10 µs lead: the poll starts about
        // 160 µs after the window opened, and the sleep is that less the time since (the
        // thread may have been preempted in between: `after` alone is not a fixed figure).
        assert!(
            b.start > Duration::from_micros(150) && b.start < Duration::from_micros(170),
            "{:?}",
            b.start
        );
        assert!(
            after <= b.start && after + b.opened.elapsed() >= b.start,
            "{after:?}"
        );
        // The timer fired: it polls until a little after the answer is due.
        b.opened -= Duration::from_micros(165);
        b.timer_fired();
        assert_eq!(b.next(n), Next::Poll);
        assert!(b.end < Duration::from_micros(260), "{:?}", b.end);
    }

    #[test]
    fn ahead_does_not_poll_for_answers_slower_than_the_window() {
        let mut b = BusyPoll::new(Plan::Ahead, Duration::from_micros(500));
        let mut n = 0;
        for _ in 0..40 {
            answered_after(&mut b, &mut n, Duration::from_millis(2));
        }
        b.tasks_served(&seen(n, None), || 0);
        assert_eq!(b.next(n), Next::Sleep);
    }

    #[test]
    fn ahead_polls_at_once_for_quick_answers() {
        let mut b = BusyPoll::new(Plan::Ahead, Duration::from_micros(500));
        let mut n = 0;
        for _ in 0..40 {
            answered_after(&mut b, &mut n, Duration::from_micros(30));
        }
        b.tasks_served(&seen(n, None), || 0);
        assert_eq!(b.next(n), Next::Poll);
    }

    #[test]
    fn answers_seen_after_sleeping_are_taken_one_wake_up_earlier() {
        let mut b = BusyPoll::new(Plan::Ahead, Duration::from_micros(500));
        b.tasks_served(&seen(0, None), || 0);
        let at = b.opened + Duration::from_micros(130);
        b.all_done(&seen(1, Some(at)));
        // Not polling: 130 µs seen, 30 µs assumed lateness.
        assert_eq!(b.answer.lo(), Duration::from_micros(100));
    }

    #[test]
    fn quantiles_settle_inside_the_spread_and_ignore_rare_outliers() {
        let mut q = Quantiles::default();
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            // 100-200 µs, and one in fifty at 5 ms (a loaded machine's hiccup).
            let us = if rng.u32(0..50) == 0 {
                5000
            } else {
                rng.u64(100..200)
            };
            q.add(Duration::from_micros(us));
        }
        let (lo, hi) = (q.lo().as_micros(), q.hi().as_micros());
        assert!((100..125).contains(&lo), "lo {lo}");
        assert!((170..260).contains(&hi), "hi {hi}");
    }
}
