//! When the poll thread busy-polls the network instead of sleeping (`busy_poll_us`).
//!
//! A window opens when the event loop serves tasks and lasts `busy_poll_us`; while it is open and
//! gRPC operations are in flight, the loop polls its sockets instead of sleeping, so an answer
//! that comes within it needs no wake-up of a sleeping thread. A window that closes with
//! operations still in flight and none of them finished while it was open was wasted: the
//! servers are slower than the window. After such a miss the next window is skipped, after
//! another the next 2, then 4 ... up to 64, as the host does with its spins; the first window
//! in which an operation finishes ends the back-off. Slow servers thus cost one window of
//! polling per 64 batches of tasks instead of one per batch.

use std::time::{Duration, Instant};

/// Most windows skipped after consecutive misses.
const MAX_SKIP: u32 = 64;

pub(super) struct BusyPoll {
    window: Duration,
    /// When the current window opened (the last batch of tasks).
    opened: Instant,
    /// Operations finished when it opened.
    finished_at_open: u64,
    /// Whether the current window polls (it may be skipped), and is still undecided.
    open: bool,
    /// Windows still to skip, and how many the next miss skips.
    skip: u32,
    next_skip: u32,
}

impl BusyPoll {
    pub(super) fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            opened: Instant::now(),
            finished_at_open: 0,
            open: false,
            skip: 0,
            next_skip: 1,
        }
    }

    /// Tasks were served: a new window opens (or is skipped). `finished`: operations finished
    /// so far.
    pub(super) fn tasks_served(&mut self, finished: u64) {
        if self.open && finished != self.finished_at_open {
            self.hit();
        }
        self.opened = Instant::now();
        self.finished_at_open = finished;
        if self.window.is_zero() {
            self.open = false;
        } else if self.skip > 0 {
            self.skip -= 1;
            self.open = false;
        } else {
            self.open = true;
        }
    }

    /// Nothing queued and operations in flight: true to poll once more, false to sleep (the
    /// window is closed, skipped or over; an open one ending now is judged).
    pub(super) fn poll_again(&mut self, finished: u64) -> bool {
        if !self.open {
            return false;
        }
        if self.opened.elapsed() < self.window {
            return true;
        }
        self.open = false;
        if finished != self.finished_at_open {
            self.hit();
        } else {
            self.skip = self.next_skip;
            self.next_skip = (self.next_skip * 2).min(MAX_SKIP);
        }
        false
    }

    /// Nothing in flight any more: an open window served its purpose.
    pub(super) fn all_done(&mut self, finished: u64) {
        if self.open && finished != self.finished_at_open {
            self.hit();
        }
        self.open = false;
    }

    fn hit(&mut self) {
        self.skip = 0;
        self.next_skip = 1;
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

    /// Opens a window and lets it run out with nothing finished.
    fn miss(b: &mut BusyPoll, finished: u64) {
        b.tasks_served(finished);
        while b.poll_again(finished) {
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    #[test]
    fn polls_within_the_window_then_sleeps() {
        let mut b = BusyPoll::new(W);
        b.tasks_served(0);
        assert!(b.poll_again(0));
        std::thread::sleep(W + Duration::from_millis(1));
        assert!(!b.poll_again(0), "the window is over");
        assert!(!b.poll_again(0), "and stays closed");
    }

    #[test]
    fn misses_back_off_and_a_hit_ends_it() {
        let mut b = BusyPoll::new(W);
        miss(&mut b, 0);
        assert_eq!(b.skipping(), 1);
        b.tasks_served(0);
        assert!(!b.poll_again(0), "skipped window");
        miss(&mut b, 0);
        assert_eq!(b.skipping(), 2);
        for _ in 0..2 {
            b.tasks_served(0);
            assert!(!b.poll_again(0));
        }
        miss(&mut b, 0);
        assert_eq!(b.skipping(), 4);
        // Skipped windows are not judged: they keep the back-off as it is.
        for _ in 0..4 {
            b.tasks_served(0);
            b.all_done(1);
        }
        assert_eq!(b.skipping(), 0);
        // An answer inside an open window ends the back-off.
        b.tasks_served(1);
        assert!(b.poll_again(2));
        b.all_done(2);
        miss(&mut b, 2);
        assert_eq!(b.skipping(), 1, "back to the first step");
    }

    #[test]
    fn back_off_stops_at_64() {
        let mut b = BusyPoll::new(Duration::from_micros(1));
        for _ in 0..12 {
            miss(&mut b, 0);
            while b.skipping() > 0 {
                b.tasks_served(0);
            }
        }
        miss(&mut b, 0);
        assert_eq!(b.skipping(), MAX_SKIP);
    }

    #[test]
    fn zero_turns_it_off() {
        let mut b = BusyPoll::new(Duration::ZERO);
        b.tasks_served(0);
        assert!(!b.poll_again(0));
    }
}
