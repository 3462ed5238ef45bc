//! Lines for nginx's error log: through the host's `resty_ffi_log` when it has one (this
//! host's extension, looked up with `dlsym`), else `[level] msg` on stderr, which nginx points
//! at its error log.

use std::io::Write;
use std::os::raw::{c_char, c_int};
use std::sync::OnceLock;

/// `NGX_LOG_ERR`.
pub const ERR: c_int = 4;
/// `NGX_LOG_WARN`.
pub const WARN: c_int = 5;
/// `NGX_LOG_NOTICE`.
pub const NOTICE: c_int = 6;

type LogFn = unsafe extern "C" fn(level: c_int, msg: *const c_char, len: usize) -> c_int;

fn host_log() -> Option<LogFn> {
    static LOG: OnceLock<Option<LogFn>> = OnceLock::new();
    *LOG.get_or_init(|| {
        // SAFETY: a NUL-terminated name; dlsym with RTLD_DEFAULT only reads the global symbol
        // table (the host is loaded RTLD_GLOBAL before any runtime).
        let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"resty_ffi_log".as_ptr()) };
        if sym.is_null() {
            None
        } else {
            // SAFETY: the host exports `int resty_ffi_log(int, const char *, size_t)`;
            // function and data pointers have the same size on Linux.
            Some(unsafe { std::mem::transmute::<*mut libc::c_void, LogFn>(sym) })
        }
    })
}

/// Writes `ffi_python3: msg` at `level` (one line; a traceback keeps its newlines, as nginx
/// keeps Lua's).
pub fn log(level: c_int, msg: &str) {
    let line = format!("ffi_python3: {msg}");
    if let Some(log) = host_log() {
        // SAFETY: `line` is valid for `len` bytes during the call; the host copies it.
        if unsafe { log(level, line.as_ptr().cast(), line.len()) } == 0 {
            return;
        }
    }
    let name = match level {
        ERR => "error",
        WARN => "warn",
        NOTICE => "notice",
        _ => "info",
    };
    let _ = writeln!(std::io::stderr(), "[{name}] {line}");
}
