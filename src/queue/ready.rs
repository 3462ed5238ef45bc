//! The task queue's eventfd as an awaitable "readable", for the poll thread's event loop
//! (asynchronous protocol only; see `resty_ffi_task_poll_fd` in host/src/ffi.rs).
//!
//! ```text
//! TaskQueue::arm() == true ──► Readable::wait().await ──► (a post writes the eventfd)
//!                               epoll in the same tokio event loop as tonic's sockets;
//!                               the 8-byte counter is drained, the readiness cleared
//! ```
//!
//! The runtime watches its own `dup` of the host's eventfd: the host closes the queue's one
//! when the queue goes, which may happen before the event loop drops its registration.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::BorrowedFd;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::TaskQueue;

/// The queue's eventfd, registered with the current tokio runtime.
pub struct Readable {
    /// Our own descriptor of the eventfd (a `File` only to own and read it).
    fd: AsyncFd<File>,
}

impl TaskQueue {
    /// Watches the queue's eventfd from the current tokio runtime (call inside it). An error
    /// when the host offers no asynchronous polling, or the descriptor cannot be duplicated or
    /// registered.
    pub fn readable(&self) -> io::Result<Readable> {
        let raw = self
            .poll_fd()
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no asynchronous polling"))?;
        // SAFETY: `raw` is the queue's eventfd, which the host keeps open at least until the
        // finish marker is consumed; the queue is live (poll_fd returned it), and the borrow
        // ends with this statement, after the duplicate is made.
        let own = unsafe { BorrowedFd::borrow_raw(raw) }.try_clone_to_owned()?;
        let file = File::from(own);
        // SAFETY: the AsyncFd owns `file`, a descriptor nothing else owns, so it stays open and
        // is the same descriptor for as long as the registration lives.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }?;
        Ok(Readable { fd })
    }
}

impl Readable {
    /// Waits until the eventfd is readable (a task was posted after `arm` returned true), then
    /// drains its counter and clears the readiness. An error means the event loop cannot watch
    /// the queue any more.
    pub async fn wait(&self) -> io::Result<()> {
        let mut ready = self.fd.readable().await?;
        let mut counter = [0u8; 8];
        // A non-blocking eventfd: WouldBlock when another wake-up already drained it, which
        // is fine (the readiness is cleared either way).
        let mut eventfd: &File = self.fd.get_ref();
        let _ = eventfd.read(&mut counter);
        ready.clear_ready();
        Ok(())
    }
}
