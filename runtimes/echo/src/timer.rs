//! A single timer thread: jobs wait in a `BinaryHeap` ordered by due time and are fired in
//! order, so any number of delayed tasks cost one thread.
//!
//! Safe Rust only; it knows nothing about tasks.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Instant;

/// Handle to schedule jobs. Dropping it lets the thread fire what
/// is still queued, at its due time, and then exit.
pub struct Timer<T> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

struct State<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    closed: bool,
}

struct Entry<T> {
    due: Instant,
    /// Keeps jobs with the same due time in scheduling order.
    seq: u64,
    job: T,
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> Ord for Entry<T> {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest entry first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic in `fire` happens outside the lock, so poisoning cannot leave a torn state.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl<T: Send + 'static> Timer<T> {
    /// Starts the thread `name` (restricted to `cpus` unless empty); it calls `fire(job)` for
    /// each job once it is due. A panic in
    /// `fire` is logged and the thread goes on with the next job.
    pub fn start(
        name: &str,
        cpus: &[usize],
        mut fire: impl FnMut(T) + Send + 'static,
    ) -> io::Result<(Timer<T>, JoinHandle<()>)> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                heap: BinaryHeap::new(),
                next_seq: 0,
                closed: false,
            }),
            wake: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let cpus = cpus.to_vec();
        let handle = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                if let Err(e) = crate::config::pin_current_thread(&cpus) {
                    eprintln!("resty_ffi_echo: timer thread: sched_setaffinity: {e}");
                }
                run(&thread_shared, &mut fire)
            })?;
        Ok((Timer { shared }, handle))
    }

    /// Queues `job` to fire at `due`.
    pub fn schedule(&self, due: Instant, job: T) {
        let mut state = self.shared.lock();
        let seq = state.next_seq;
        state.next_seq += 1;
        let earliest = state.heap.peek().is_none_or(|e| due < e.due);
        state.heap.push(Entry { due, seq, job });
        drop(state);
        if earliest {
            self.shared.wake.notify_one();
        }
    }
}

impl<T> Drop for Timer<T> {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
    }
}

fn run<T>(shared: &Shared<T>, fire: &mut impl FnMut(T)) {
    let mut state = shared.lock();
    loop {
        let now = Instant::now();
        let due = match state.heap.peek() {
            None if state.closed => return,
            None => None,
            Some(entry) if entry.due <= now => {
                let Some(entry) = state.heap.pop() else {
                    continue;
                };
                drop(state);
                if catch_unwind(AssertUnwindSafe(|| fire(entry.job))).is_err() {
                    eprintln!("resty_ffi_echo: panic while answering a delayed task");
                }
                state = shared.lock();
                continue;
            }
            Some(entry) => Some(entry.due),
        };
        state = match due {
            None => shared.wake.wait(state).unwrap_or_else(|e| e.into_inner()),
            Some(due) => {
                shared
                    .wake
                    .wait_timeout(state, due - now)
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    #[test]
    fn fires_in_due_order_then_exits_after_close() {
        let (tx, rx) = mpsc::channel();
        let (timer, handle) = Timer::start("t", &[], move |n: u32| tx.send(n).unwrap()).unwrap();
        let t0 = Instant::now();
        timer.schedule(t0 + Duration::from_millis(60), 3);
        timer.schedule(t0 + Duration::from_millis(20), 1);
        timer.schedule(t0 + Duration::from_millis(40), 2);
        timer.schedule(t0 + Duration::from_millis(40), 22);
        drop(timer);
        handle.join().unwrap();
        let got: Vec<u32> = rx.iter().collect();
        assert_eq!(got, vec![1, 2, 22, 3]);
        assert!(t0.elapsed() >= Duration::from_millis(60));
    }

    #[test]
    fn survives_a_panicking_job() {
        let (tx, rx) = mpsc::channel();
        let (timer, handle) = Timer::start("t", &[], move |n: u32| {
            assert_ne!(n, 1, "boom");
            tx.send(n).unwrap();
        })
        .unwrap();
        let now = Instant::now();
        timer.schedule(now, 1);
        timer.schedule(now, 2);
        drop(timer);
        handle.join().unwrap();
        assert_eq!(rx.iter().collect::<Vec<_>>(), vec![2]);
    }
}
