//! `resty_ffi_echo`: a reference lua-resty-ffi runtime that echoes each request.
//!
//! It is written against the lua-resty-ffi C contract only, so it loads under the project's own
//! host and under the real lua-resty-ffi alike. Tests use its `cfg` knobs (delays, rc, response
//! shapes, init failures, cancellation probing) to exercise a host.
//!
//! ```text
//!  nginx main thread         libffi_init ──► parse cfg ──► spawn threads, return 0
//!  Lua obj:call(req) ──► tq ──► echo-poll: task_poll ─► get_req ─► malloc copy ─┬─► respond
//!                                                                              │
//!                                         (delay_ms) echo-timer: BinaryHeap ◄──┘──► respond
//! ```
//!
//! Modules: [`config`] parses the cfg string and pins threads to its CPU list; `host` is the
//! only code that calls the host's C functions and enforces the ownership rules (malloc'd
//! responses, respond exactly once); `timer` is the delayed-answer thread; `runtime` runs the
//! threads. The C export is below.

pub mod config;
mod host;
mod runtime;
mod timer;

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use config::Config;

/// `libffi_init` result: the cfg string was refused.
pub const INIT_BAD_CONFIG: c_int = 2;
/// `libffi_init` result: `tq` was NULL or a thread could not be started.
pub const INIT_START_FAILED: c_int = 3;
/// `libffi_init` result: a panic was caught.
pub const INIT_PANIC: c_int = 4;

/// The lua-resty-ffi entry point: parses `cfg`, starts the instance's threads and returns at once.
///
/// Returns 0 on success, `init_rc` when the cfg sets it (starting nothing), [`INIT_BAD_CONFIG`],
/// [`INIT_START_FAILED`] or [`INIT_PANIC`].
///
/// # Safety
///
/// `cfg` must be NULL or a NUL-terminated string valid for the duration of the call. `tq` must be
/// the task queue the host created for this instance; it is polled from one thread until
/// `task_poll` returns NULL. The host library exporting `ngx_http_lua_ffi_task_poll`,
/// `ngx_http_lua_ffi_get_req` and `ngx_http_lua_ffi_respond` must be loaded globally.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *const c_char, tq: *mut c_void) -> c_int {
    let cfg_text = if cfg.is_null() {
        String::new()
    } else {
        // SAFETY: the caller passes a NUL-terminated string valid during this call; we copy it
        // because the host frees it when we return.
        unsafe { CStr::from_ptr(cfg) }
            .to_string_lossy()
            .into_owned()
    };
    let result = catch_unwind(AssertUnwindSafe(|| {
        let config = match Config::parse(&cfg_text) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("resty_ffi_echo: bad cfg {cfg_text:?}: {e}");
                return INIT_BAD_CONFIG;
            }
        };
        if let Some(rc) = config.init_rc {
            return rc;
        }
        // SAFETY: `tq` is this instance's fresh queue (the caller's contract) and is wrapped
        // exactly once, here.
        let Some(queue) = (unsafe { host::Queue::from_raw(tq) }) else {
            eprintln!("resty_ffi_echo: libffi_init called with a NULL queue");
            return INIT_START_FAILED;
        };
        match runtime::start(cfg_text.clone(), config, queue) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("resty_ffi_echo: cannot start threads: {e}");
                INIT_START_FAILED
            }
        }
    }));
    result.unwrap_or_else(|_| {
        eprintln!("resty_ffi_echo: panic in libffi_init");
        INIT_PANIC
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ptr;

    #[test]
    fn init_results_without_a_queue() {
        // SAFETY: NUL-terminated literals; no queue is touched on these paths.
        unsafe {
            assert_eq!(
                libffi_init(c"bogus=1".as_ptr(), ptr::null_mut()),
                INIT_BAD_CONFIG
            );
            assert_eq!(libffi_init(c"init_rc=9,tag=a".as_ptr(), ptr::null_mut()), 9);
            assert_eq!(libffi_init(ptr::null(), ptr::null_mut()), INIT_START_FAILED);
        }
    }
}
