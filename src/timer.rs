//! A timer with microsecond resolution for the poll thread's event loop: tokio's timers tick
//! in milliseconds, and busy polling plans its wake-ups tens of microseconds ahead of an
//! answer. A `timerfd` watched by the event loop's reactor, so a sleeping loop wakes for
//! whichever comes first: the timer, a task, or a socket.
//!
//! Hand-written: tokio offers no sub-millisecond timer and no timerfd type; this is the few
//! system calls it takes.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// A one-shot monotonic timer (call `new` inside the tokio runtime that waits on it).
pub struct Timer {
    fd: AsyncFd<File>,
    armed: bool,
}

impl Timer {
    pub fn new() -> io::Result<Timer> {
        // SAFETY: plain system call; the result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new descriptor that nothing else owns.
        let file = unsafe { File::from_raw_fd(raw) };
        // SAFETY: the AsyncFd owns `file`, a descriptor nothing else owns, so it stays open and
        // is the same descriptor for as long as the registration lives.
        let fd = unsafe { AsyncFd::register_with_interest(file, Interest::READABLE) }?;
        Ok(Timer { fd, armed: false })
    }

    /// Fires once, `after` from now (at least 1 ns; re-arming replaces the old deadline).
    pub fn arm(&mut self, after: Duration) -> io::Result<()> {
        let after = after.max(Duration::from_nanos(1));
        self.set(libc::timespec {
            tv_sec: after.as_secs().min(i64::MAX as u64) as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        })?;
        self.armed = true;
        Ok(())
    }

    /// Cancels a deadline not yet reached.
    pub fn disarm(&mut self) -> io::Result<()> {
        if self.armed {
            self.set(libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            })?;
            self.armed = false;
        }
        Ok(())
    }

    pub fn is_armed(&self) -> bool {
        self.armed
    }

    fn set(&self, value: libc::timespec) -> io::Result<()> {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: value,
        };
        // SAFETY: the descriptor is our timerfd; `spec` is a valid itimerspec and the old
        // value is not asked for.
        let rc =
            unsafe { libc::timerfd_settime(self.fd.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Waits until the armed deadline passes (forever when disarmed), then clears it.
    pub async fn fired(&mut self) -> io::Result<()> {
        loop {
            let mut ready = self.fd.readable().await?;
            let mut expirations = [0u8; 8];
            let mut f: &File = self.fd.get_ref();
            match f.read(&mut expirations) {
                Ok(_) => {
                    ready.clear_ready();
                    self.armed = false;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn fires_after_its_deadline_and_not_when_disarmed() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut t = Timer::new().unwrap();
            let t0 = Instant::now();
            t.arm(Duration::from_micros(300)).unwrap();
            assert!(t.is_armed());
            t.fired().await.unwrap();
            assert!(t0.elapsed() >= Duration::from_micros(300));
            assert!(!t.is_armed());

            t.arm(Duration::from_millis(5)).unwrap();
            t.disarm().unwrap();
            let waited = tokio::time::timeout(Duration::from_millis(20), t.fired()).await;
            assert!(waited.is_err(), "a disarmed timer does not fire");
        });
    }
}
