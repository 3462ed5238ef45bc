//! The task queue between Lua (producer, nginx main thread) and a runtime's poll thread.
//!
//! One queue per loaded runtime. The poll thread spins for a bounded time before it parks on the
//! condition variable: on these machines waking a parked thread on the other core costs ~25 µs,
//! more than a whole echo call, while a hot poller picks a task up in a fraction of a microsecond.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::task::Task;

/// Why a post was refused.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub(crate) enum PostError {
    /// `max_queue` tasks are already waiting for the poll thread.
    Full,
    /// The finish marker was appended: the queue takes no more tasks.
    Finished,
}

enum Item {
    Task(*mut Task),
    Finish,
}

// SAFETY: a `*mut Task` in the queue is owned by the queue until the poll thread takes it; tasks
// are `Send` (see task.rs).
unsafe impl Send for Item {}

struct Inner {
    items: VecDeque<Item>,
    /// The finish marker is in `items` (or was already consumed).
    finishing: bool,
    /// The poll thread is parked on `cv` (so a post must notify it).
    parked: bool,
}

/// A bounded FIFO of tasks with one finish marker at its end.
pub struct Queue {
    inner: Mutex<Inner>,
    cv: Condvar,
    /// Number of items (tasks and marker) in `items`, readable without the lock while spinning.
    len: AtomicUsize,
    max: usize,
    spin: Duration,
    /// The poll thread consumed the finish marker.
    finished: AtomicBool,
    /// CPUs the two sides last ran on (-1: unknown), so a spinning side can tell whether the
    /// other one shares its CPU (then it must yield, not spin).
    poller_cpu: AtomicI32,
    poster_cpu: AtomicI32,
}

impl Queue {
    /// A queue that holds at most `max` pending tasks; its poll thread spins `spin` before
    /// parking.
    pub(crate) fn new(max: usize, spin: Duration) -> Queue {
        Queue {
            inner: Mutex::new(Inner {
                items: VecDeque::with_capacity(max.min(1024)),
                finishing: false,
                parked: false,
            }),
            cv: Condvar::new(),
            len: AtomicUsize::new(0),
            max,
            spin,
            finished: AtomicBool::new(false),
            poller_cpu: AtomicI32::new(-1),
            poster_cpu: AtomicI32::new(-1),
        }
    }

    /// CPU the poll thread last ran on (-1: unknown).
    pub(crate) fn poller_cpu(&self) -> &AtomicI32 {
        &self.poller_cpu
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A poisoned lock only means a panic elsewhere while holding it; the queue's state is a
        // plain deque that stays consistent, so keep going.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends a task. On error the caller keeps ownership of `task`.
    pub(crate) fn post(&self, task: *mut Task) -> Result<(), PostError> {
        self.poster_cpu.store(current_cpu(), Ordering::Relaxed);
        let mut inner = self.lock();
        if inner.finishing {
            return Err(PostError::Finished);
        }
        if inner.items.len() >= self.max {
            return Err(PostError::Full);
        }
        inner.items.push_back(Item::Task(task));
        self.len.store(inner.items.len(), Ordering::Release);
        let parked = inner.parked;
        drop(inner);
        if parked {
            self.cv.notify_one();
        }
        Ok(())
    }

    /// Appends the finish marker behind the pending tasks. Idempotent.
    pub(crate) fn finish(&self) {
        let mut inner = self.lock();
        if inner.finishing {
            return;
        }
        inner.finishing = true;
        inner.items.push_back(Item::Finish);
        self.len.store(inner.items.len(), Ordering::Release);
        let parked = inner.parked;
        drop(inner);
        if parked {
            self.cv.notify_one();
        }
    }

    /// Blocks until a task arrives; `None` once the finish marker is consumed.
    pub(crate) fn poll(&self) -> Option<*mut Task> {
        self.poller_cpu.store(current_cpu(), Ordering::Relaxed);
        if !self.spin.is_zero() {
            spin_until(self.spin, &self.poster_cpu, || {
                self.len.load(Ordering::Acquire) != 0
            });
        }
        let mut inner = self.lock();
        loop {
            match inner.items.pop_front() {
                Some(item) => {
                    self.len.store(inner.items.len(), Ordering::Release);
                    return match item {
                        Item::Task(t) => Some(t),
                        Item::Finish => {
                            self.finished.store(true, Ordering::Release);
                            None
                        }
                    };
                }
                None => {
                    inner.parked = true;
                    inner = self.cv.wait(inner).unwrap_or_else(|e| e.into_inner());
                    inner.parked = false;
                }
            }
        }
    }

    /// True once the poll thread consumed the finish marker.
    pub(crate) fn is_finished(&self) -> bool {
        self.finished.load(Ordering::Acquire)
    }
}

/// A bounded spin-wait for `ready`, up to `max`. Returns whether `ready` became true.
///
/// When the other side of the hand-off runs on another CPU, a busy wait catches it within a
/// microsecond. When it shares our CPU (a pinned worker, whose runtime threads inherit its
/// affinity, or two threads the scheduler put on one core), busy waiting only delays it, so we
/// `sched_yield` to let it run. `other_cpu` is where the other side last ran.
pub(crate) fn spin_until(
    max: Duration,
    other_cpu: &AtomicI32,
    mut ready: impl FnMut() -> bool,
) -> bool {
    let deadline = Instant::now() + max;
    let single = single_cpu();
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        if single || other_cpu.load(Ordering::Relaxed) == current_cpu() {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
        } else {
            for _ in 0..16 {
                std::hint::spin_loop();
            }
        }
    }
}

/// The CPU this thread runs on (vDSO, no system call), or -1.
pub(crate) fn current_cpu() -> i32 {
    // SAFETY: sched_getcpu has no preconditions.
    unsafe { libc::sched_getcpu() }
}

/// Read once per thread: nginx applies `worker_cpu_affinity` before any Lua code runs.
fn single_cpu() -> bool {
    thread_local! {
        static SINGLE: bool = {
            // SAFETY: `set` is a zeroed cpu_set_t of the size we pass; pid 0 is this thread.
            unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0
                    && libc::CPU_COUNT(&set) == 1
            }
        };
    }
    SINGLE.with(|s| *s)
}

impl Drop for Queue {
    fn drop(&mut self) {
        // Tasks still queued when the last reference goes (a runtime that stopped polling before
        // the marker) were never seen by a runtime: free them rather than leak.
        let inner = self.inner.get_mut().unwrap_or_else(|e| e.into_inner());
        for item in inner.items.drain(..) {
            if let Item::Task(t) = item {
                // SAFETY: queued tasks are owned by the queue (see `post`) and were created by
                // `Box::into_raw` in the FFI layer.
                drop(unsafe { Box::from_raw(t) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn task() -> *mut Task {
        Box::into_raw(Task::new(Some(b"t")).unwrap())
    }

    fn free(t: *mut Task) {
        // SAFETY: created by `task()` above.
        drop(unsafe { Box::from_raw(t) });
    }

    #[test]
    fn fifo_then_finish() {
        let q = Queue::new(4, Duration::ZERO);
        let (a, b) = (task(), task());
        q.post(a).unwrap();
        q.post(b).unwrap();
        q.finish();
        let refused = task();
        assert_eq!(q.post(refused), Err(PostError::Finished));
        free(refused);
        assert_eq!(q.poll(), Some(a));
        assert_eq!(q.poll(), Some(b));
        assert!(!q.is_finished());
        assert_eq!(q.poll(), None);
        assert!(q.is_finished());
        free(a);
        free(b);
    }

    #[test]
    fn bounded() {
        let q = Queue::new(1, Duration::ZERO);
        let a = task();
        q.post(a).unwrap();
        let b = task();
        assert_eq!(q.post(b), Err(PostError::Full));
        free(b);
    }

    #[test]
    fn parked_poller_is_woken() {
        let q = Arc::new(Queue::new(16, Duration::from_micros(10)));
        let q2 = q.clone();
        let h = std::thread::spawn(move || {
            let mut n = 0;
            while let Some(t) = q2.poll() {
                free(t);
                n += 1;
            }
            n
        });
        for _ in 0..100 {
            std::thread::sleep(Duration::from_micros(50));
            while q.post(task()).is_err() {
                std::thread::yield_now();
            }
        }
        q.finish();
        assert_eq!(h.join().unwrap(), 100);
    }
}
