//! Keeps nginx's signals away from the interpreter's threads.
//!
//! A thread inherits its creator's signal mask. While [`Blocked`] lives on the nginx main
//! thread, nginx's signals are blocked there, so every thread Python starts meanwhile (and
//! every thread those start later) has them blocked too: the kernel then always delivers them
//! to the main thread, whose `epoll_wait` they interrupt as nginx expects. Signals that arrive
//! meanwhile stay pending and are delivered when the old mask comes back.

use std::marker::PhantomData;

/// The signals nginx handles in its processes.
const NGINX_SIGNALS: [libc::c_int; 10] = [
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGWINCH,
    libc::SIGCHLD,
    libc::SIGALRM,
    libc::SIGIO,
];

/// nginx's signals blocked on this thread until dropped (which restores the previous mask).
pub struct Blocked {
    old: libc::sigset_t,
    /// Not `Send`: the mask belongs to the thread that blocked it.
    _thread: PhantomData<*const ()>,
}

impl Default for Blocked {
    fn default() -> Blocked {
        Blocked::new()
    }
}

impl Blocked {
    /// Blocks nginx's signals on the calling thread until the guard drops.
    pub fn new() -> Blocked {
        // SAFETY: all-zero sigset_t values are valid storage; sigemptyset/sigaddset initialise
        // `set`, and pthread_sigmask only changes the calling thread's mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for sig in NGINX_SIGNALS {
                libc::sigaddset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old);
            Blocked {
                old,
                _thread: PhantomData,
            }
        }
    }
}

impl Drop for Blocked {
    fn drop(&mut self) {
        // SAFETY: `old` is the mask pthread_sigmask returned for this thread in `new` (the
        // guard is not Send, so it is dropped on the thread that made it).
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut()) };
    }
}
