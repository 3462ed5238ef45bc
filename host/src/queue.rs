//! The task queue between Lua (producer, nginx main thread) and a runtime's poll thread.
//!
//! One queue per loaded runtime. The poll thread spins for a bounded time before it parks on the
//! condition variable: on these machines waking a parked thread on the other core costs ~25 µs,
//! more than a whole echo call, while a hot poller picks a task up in a fraction of a microsecond.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
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
    /// An eventfd an asynchronous poller waits on instead of the condition variable (see
    /// [`Queue::poll_fd`]); created on first request, closed with the queue.
    notify_fd: OnceLock<i32>,
    /// The asynchronous poller is about to wait on `notify_fd`: the next post writes it.
    fd_armed: AtomicBool,
}

/// What [`Queue::try_poll`] found.
pub(crate) enum TryPoll {
    Task(*mut Task),
    Empty,
    /// The finish marker was consumed.
    Finished,
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
            notify_fd: OnceLock::new(),
            fd_armed: AtomicBool::new(false),
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
        let inner = self.lock();
        if inner.finishing {
            return Err(PostError::Finished);
        }
        if inner.items.len() >= self.max {
            return Err(PostError::Full);
        }
        self.push_and_wake(inner, Item::Task(task));
        Ok(())
    }

    /// Appends `item`, releases the lock and wakes the poll thread (parked or asynchronous).
    fn push_and_wake(&self, mut inner: MutexGuard<'_, Inner>, item: Item) {
        inner.items.push_back(item);
        self.len.store(inner.items.len(), Ordering::Release);
        let parked = inner.parked;
        drop(inner);
        if parked {
            self.cv.notify_one();
        }
        self.notify_async();
    }

    /// Wakes an asynchronous poller that armed its eventfd (after an item was queued).
    fn notify_async(&self) {
        // Pairs with the fence in `arm`: either the poller sees the new length, or we see its
        // flag.
        fence(Ordering::SeqCst);
        if self.fd_armed.swap(false, Ordering::AcqRel) {
            if let Some(&fd) = self.notify_fd.get() {
                let one: u64 = 1;
                // SAFETY: writing 8 bytes from a live u64 to our eventfd; a full counter (never
                // reached) would only fail with EAGAIN, and the poller then still has a wake-up
                // pending.
                unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
            }
        }
    }

    /// The eventfd of the asynchronous poll protocol (non-blocking, close-on-exec), created on
    /// first use: a runtime whose thread runs an event loop waits for it to become readable
    /// instead of blocking in [`Queue::poll`]:
    ///
    /// ```text
    /// loop { while let Task(t) = try_poll() { serve(t) }
    ///        if arm() { wait until poll_fd is readable; read it } }
    /// ```
    pub(crate) fn poll_fd(&self) -> i32 {
        *self.notify_fd.get_or_init(|| {
            // SAFETY: eventfd has no memory preconditions.
            unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) }
        })
    }

    /// Takes the next item without waiting.
    pub(crate) fn try_poll(&self) -> TryPoll {
        self.poller_cpu.store(current_cpu(), Ordering::Relaxed);
        let mut inner = self.lock();
        match inner.items.pop_front() {
            Some(item) => {
                self.len.store(inner.items.len(), Ordering::Release);
                match item {
                    Item::Task(t) => TryPoll::Task(t),
                    Item::Finish => {
                        self.finished.store(true, Ordering::Release);
                        TryPoll::Finished
                    }
                }
            }
            None => TryPoll::Empty,
        }
    }

    /// The asynchronous poller is about to wait on [`Queue::poll_fd`]. Returns false when an
    /// item is already queued (take it with `try_poll` instead of waiting): after a true return
    /// the next post writes the eventfd.
    pub(crate) fn arm(&self) -> bool {
        self.fd_armed.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if self.len.load(Ordering::Acquire) != 0 {
            self.fd_armed.store(false, Ordering::Release);
            return false;
        }
        true
    }

    /// Spins (or yields, when the poster shares this CPU) up to the queue's poll spin for an
    /// item; returns whether one is queued.
    pub(crate) fn spin_for_item(&self) -> bool {
        self.poller_cpu.store(current_cpu(), Ordering::Relaxed);
        if self.len.load(Ordering::Acquire) != 0 {
            return true;
        }
        !self.spin.is_zero()
            && spin_until(self.spin, &self.poster_cpu, || {
                self.len.load(Ordering::Acquire) != 0
            })
    }

    /// Appends the finish marker behind the pending tasks. Idempotent.
    pub(crate) fn finish(&self) {
        let mut inner = self.lock();
        if inner.finishing {
            return;
        }
        inner.finishing = true;
        self.push_and_wake(inner, Item::Finish);
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
        // Yield only when the other side shares our CPU (it last ran here, or we may only run
        // on one CPU and do not know where it is): a sched_yield with nothing else runnable
        // still costs ~0.65 µs here, which busy-spinning across CPUs avoids (measured with
        // the runtime pinned to the other CPU: 512 B echo 2.4-4.0 µs -> 1.6-1.9 µs).
        let other = other_cpu.load(Ordering::Relaxed);
        if other == current_cpu() || (other < 0 && single) {
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
        if let Some(&fd) = self.notify_fd.get() {
            if fd >= 0 {
                // SAFETY: the eventfd is ours and nobody uses it once the queue is gone (the
                // runtime stops waiting on it when it consumed the finish marker).
                unsafe { libc::close(fd) };
            }
        }
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
    fn async_poll_protocol() {
        let q = Arc::new(Queue::new(8, Duration::ZERO));
        let fd = q.poll_fd();
        assert!(fd >= 0);
        assert_eq!(fd, q.poll_fd(), "one eventfd per queue");
        assert!(matches!(q.try_poll(), TryPoll::Empty));
        let readable = |fd: i32| {
            let mut pfd = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one live pollfd, no wait.
            unsafe { libc::poll(&mut pfd, 1, 0) == 1 }
        };
        // Not armed: posting does not write the eventfd.
        let t = task();
        q.post(t).unwrap();
        assert!(!readable(fd));
        assert!(!q.arm(), "an item is queued: take it instead of waiting");
        assert!(matches!(q.try_poll(), TryPoll::Task(p) if p == t));
        free(t);
        // Armed: the next post wakes the poller, once.
        assert!(q.arm());
        let t = task();
        let poster = {
            let q = q.clone();
            let t = t as usize;
            std::thread::spawn(move || q.post(t as *mut Task).unwrap())
        };
        poster.join().unwrap();
        assert!(readable(fd));
        let mut v = 0u64;
        // SAFETY: reading 8 bytes into a live u64.
        assert_eq!(unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) }, 8);
        assert_eq!(v, 1);
        assert!(matches!(q.try_poll(), TryPoll::Task(p) if p == t));
        free(t);
        q.post(task()).map_err(|_| ()).unwrap();
        assert!(!readable(fd), "disarmed after one wake-up");
        if let TryPoll::Task(p) = q.try_poll() {
            free(p);
        }
        assert!(q.arm());
        q.finish();
        assert!(readable(fd));
        assert!(matches!(q.try_poll(), TryPoll::Finished));
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
