//! The host's eventfd: any thread signals it, nginx's event loop reads it on the main thread.
//!
//! One descriptor serves every reason to wake the main thread (answered tasks, queued log lines),
//! and one flag folds the signals: at most one write is pending until the handler acknowledges
//! it. A thread may also hold its signals ([`hold`]) and give them in one write where it
//! chooses ([`flush`]): a runtime that answers many tasks per turn of its event loop then
//! wakes nginx once per turn rather than once per answer. A leaf module: it imports nothing of
//! the crate.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The eventfd; -1 until the host attached to the event loop.
static EVENT_FD: AtomicI32 = AtomicI32::new(-1);
/// A write is pending that the handler has not consumed yet.
static SIGNALLED: AtomicBool = AtomicBool::new(false);

/// The eventfd, or -1 before [`set_fd`].
pub(crate) fn fd() -> i32 {
    EVENT_FD.load(Ordering::Acquire)
}

/// Main thread, once: the eventfd nginx now watches.
pub(crate) fn set_fd(fd: i32) {
    EVENT_FD.store(fd, Ordering::Release);
}

/// This thread's held signals.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Signals are given at once.
    No,
    /// Held; none came since the last flush.
    Clear,
    /// Held, and one came: the next flush writes.
    Pending,
}

thread_local! {
    static HELD: Cell<Held> = const { Cell::new(Held::No) };
}

/// Any thread: makes the eventfd readable unless a write is already pending (or, on a thread
/// that holds its signals, at its next [`flush`]).
pub(crate) fn signal() {
    let held = HELD.with(|h| {
        let held = h.get() != Held::No;
        if held {
            h.set(Held::Pending);
        }
        held
    });
    if !held {
        write();
    }
}

/// The calling thread holds its signals from now on (`true`) until it stops (`false`, which
/// flushes).
pub(crate) fn hold(on: bool) {
    flush();
    HELD.with(|h| h.set(if on { Held::Clear } else { Held::No }));
}

/// The calling thread's held signal, if one came since the last flush, is given now.
pub(crate) fn flush() {
    let pending = HELD.with(|h| {
        let pending = h.get() == Held::Pending;
        if pending {
            h.set(Held::Clear);
        }
        pending
    });
    if pending {
        write();
    }
}

/// Makes the eventfd readable unless a write is already pending.
fn write() {
    let fd = fd();
    if fd >= 0 && !SIGNALLED.swap(true, Ordering::AcqRel) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our eventfd; EAGAIN (counter overflow) is
        // impossible with one pending write at a time.
        unsafe { libc::write(fd, &one as *const u64 as *const c_void, 8) };
    }
}

/// Main thread, in the read handler: consumes the pending write, so the next [`signal`] writes
/// again. Work queued before this call must be drained after it.
pub(crate) fn acknowledge() {
    let mut counter: u64 = 0;
    // SAFETY: reading 8 bytes into a live u64 from our non-blocking eventfd.
    unsafe { libc::read(fd(), &mut counter as *mut u64 as *mut c_void, 8) };
    SIGNALLED.store(false, Ordering::Release);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held() -> Held {
        HELD.with(Cell::get)
    }

    #[test]
    fn a_holding_thread_signals_at_its_flush_only() {
        assert!(held() == Held::No);
        hold(true);
        assert!(held() == Held::Clear);
        signal();
        signal();
        assert!(held() == Held::Pending, "held, not written");
        let other = std::thread::spawn(|| {
            signal();
            held() == Held::No
        });
        assert!(
            other.join().unwrap(),
            "another thread's signals are not held"
        );
        flush();
        assert!(held() == Held::Clear, "one flush gives them");
        signal();
        hold(false);
        assert!(
            held() == Held::No,
            "stopping flushes and lets signals through"
        );
    }
}
