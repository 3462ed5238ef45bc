//! Lines for nginx's error log through the host's `resty_ffi_log` (looked up with dlsym, so the
//! loader also runs on the real lua-resty-ffi), or `[level] msg` on stderr without it.

use std::ffi::{c_char, c_int};
use std::io::Write;
use std::sync::OnceLock;

/// nginx's `NGX_LOG_ERR`.
pub const ERR: c_int = 4;

type LogFn = unsafe extern "C" fn(level: c_int, msg: *const c_char, len: usize) -> c_int;

fn log_fn() -> Option<LogFn> {
    static FN: OnceLock<Option<LogFn>> = OnceLock::new();
    *FN.get_or_init(|| {
        // SAFETY: a NUL-terminated name; dlsym only reads the global symbol table.
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_log".as_ptr()) };
        if sym.is_null() {
            None
        } else {
            // SAFETY: the host exports `resty_ffi_log` with exactly this signature.
            Some(unsafe { std::mem::transmute::<*mut libc::c_void, LogFn>(sym) })
        }
    })
}

/// Writes `msg` at nginx level `level` (2 alert .. 8 debug), from any thread.
pub fn write(level: c_int, msg: &str) {
    if let Some(f) = log_fn() {
        // SAFETY: `msg` is `msg.len()` readable bytes; the host copies them.
        if unsafe { f(level, msg.as_ptr().cast(), msg.len()) } == 0 {
            return;
        }
    }
    let name = match level {
        ..=2 => "alert",
        3 => "crit",
        4 => "error",
        5 => "warn",
        6 => "notice",
        7 => "info",
        _ => "debug",
    };
    let _ = writeln!(std::io::stderr(), "[{name}] {msg}");
}

/// Writes `msg` at `[error]`.
pub fn error(msg: &str) {
    write(ERR, msg);
}
