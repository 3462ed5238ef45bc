//! The host's eventfd: any thread signals it, nginx's event loop reads it on the main thread.
//!
//! One descriptor serves every reason to wake the main thread (answered tasks, queued log lines),
//! and one flag folds the signals: at most one write is pending until the handler acknowledges
//! it. A leaf module: it imports nothing of the crate.

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

/// Any thread: makes the eventfd readable unless a write is already pending.
pub(crate) fn signal() {
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
