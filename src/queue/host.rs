//! Exports of this project's host (`host/src/ffi.rs`, libresty_ffi.so) that lua-resty-ffi's own
//! host does not have: asynchronous polling of the task queue, wake-up batching and the log. They are found with
//! `dlsym(RTLD_DEFAULT, …)` once per process, so the runtime works on either host: without
//! them it polls blockingly and logs to stderr.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// The host's asynchronous poll functions (see `resty_ffi_task_poll_fd` in host/src/ffi.rs).
#[derive(Clone, Copy)]
pub(crate) struct AsyncPoll {
    pub(crate) poll_fd: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) try_poll: unsafe extern "C" fn(*mut c_void, *mut c_int) -> *mut c_void,
    pub(crate) arm: unsafe extern "C" fn(*mut c_void) -> c_int,
    pub(crate) spin_poll: unsafe extern "C" fn(*mut c_void) -> c_int,
}

/// `int resty_ffi_log(int level, const char *msg, size_t len)`: callable from any thread,
/// never blocks; 0 when queued or written, -1 when dropped.
type LogFn = unsafe extern "C" fn(c_int, *const c_char, usize) -> c_int;

/// The address of the symbol `name` in the process, if it has one.
fn find(name: &CStr) -> Option<*mut c_void> {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name only looks up a symbol.
    let p = unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) };
    (!p.is_null()).then_some(p)
}

/// The asynchronous poll functions, when the host has all four.
pub(crate) fn async_poll() -> Option<AsyncPoll> {
    static FOUND: OnceLock<Option<AsyncPoll>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let poll_fd = find(c"resty_ffi_task_poll_fd")?;
        let try_poll = find(c"resty_ffi_task_try_poll")?;
        let arm = find(c"resty_ffi_task_arm")?;
        let spin_poll = find(c"resty_ffi_task_spin_poll")?;
        // SAFETY: the host (host/src/ffi.rs) defines these symbols with exactly these
        // signatures.
        unsafe {
            Some(AsyncPoll {
                poll_fd: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void) -> c_int,
                >(poll_fd),
                try_poll: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void, *mut c_int) -> *mut c_void,
                >(try_poll),
                arm: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void) -> c_int>(
                    arm,
                ),
                spin_poll: std::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void) -> c_int,
                >(spin_poll),
            })
        }
    })
}

/// `void resty_ffi_wake_hold(int on)` and `void resty_ffi_wake_flush(void)`.
#[derive(Clone, Copy)]
pub(crate) struct WakeBatch {
    pub(crate) hold: unsafe extern "C" fn(c_int),
    pub(crate) flush: unsafe extern "C" fn(),
}

/// The host's wake-up batching (see `resty_ffi_wake_hold` in host/src/ffi.rs), when it has it.
pub(crate) fn wake_batch() -> Option<WakeBatch> {
    static FOUND: OnceLock<Option<WakeBatch>> = OnceLock::new();
    *FOUND.get_or_init(|| {
        let hold = find(c"resty_ffi_wake_hold")?;
        let flush = find(c"resty_ffi_wake_flush")?;
        // SAFETY: the host (host/src/ffi.rs) defines these symbols with exactly these
        // signatures.
        unsafe {
            Some(WakeBatch {
                hold: std::mem::transmute::<*mut c_void, unsafe extern "C" fn(c_int)>(hold),
                flush: std::mem::transmute::<*mut c_void, unsafe extern "C" fn()>(flush),
            })
        }
    })
}

/// Hands one log line to the host (`level` as nginx numbers it): `Some(true)` when queued or
/// written, `Some(false)` when the host dropped it (its list was full; it counts the drops),
/// `None` when the host has no log export (the caller writes the line itself).
pub(crate) fn log(level: c_int, line: &[u8]) -> Option<bool> {
    static FOUND: OnceLock<Option<LogFn>> = OnceLock::new();
    let f = (*FOUND.get_or_init(|| {
        let p = find(c"resty_ffi_log")?;
        // SAFETY: the host (host/src/ffi.rs) defines `resty_ffi_log` with this signature.
        Some(unsafe { std::mem::transmute::<*mut c_void, LogFn>(p) })
    }))?;
    // SAFETY: `line` is `line.len()` readable bytes for the call; the host copies them and
    // needs no NUL. It may be called from any thread and does not block.
    Some(unsafe { f(level, line.as_ptr().cast(), line.len()) } == 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_symbols_of_the_process_and_not_missing_ones() {
        // The lookup the host exports go through, on a symbol every process has.
        assert!(find(c"getpid").is_some());
        assert!(find(c"resty_grpc_zc_no_such_symbol").is_none());
    }

    #[test]
    fn a_process_without_the_host_has_no_async_poll_and_no_log() {
        assert!(async_poll().is_none());
        assert_eq!(log(4, b"x"), None);
    }
}
