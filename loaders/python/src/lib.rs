//! `libffi_python3.so`: the lua-resty-ffi loader for Python. It embeds CPython 3 (the
//! libpython it was built against) once per nginx worker and starts Python runtimes named by
//! `cfg`, so that a runtime is a plain Python module:
//!
//! ```text
//! ngx.load_ffi("ffi_python3", "ffi.echo?,init")            nginx main thread
//!   └─ libffi_init(cfg, tq)
//!        ├─ cfg::Spec::parse          module[?],func[,rest]
//!        ├─ loader_common::signals::Blocked  nginx's signals blocked while Python may start threads
//!        ├─ interp::ensure            first call: pin, Py_InitializeFromConfig, drop the GIL
//!        └─ module::start             attach: sys.path, import / reload, func(cfg, tq) -> rc
//!                                     detach: the nginx thread holds no GIL between calls
//! Python threads started by func:     task_poll(tq) ─► get_req ─► respond   (cffi, ctypes,
//!                                     or the resty_ffi helper package next to this crate)
//! ```
//!
//! Modules: [`cfg`](mod@cfg) parses the cfg string; `signals` keeps nginx's signals on the main thread;
//! `interp` owns the interpreter's start; `module` imports and calls under the GIL; `log`
//! writes error.log lines through the host's `resty_ffi_log`. The C export is below, the only
//! `extern "C"` of the crate; a panic never crosses it.

pub mod cfg;
mod interp;
mod log;
mod module;

use std::ffi::CStr;
use std::os::raw::{c_char, c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use cfg::Spec;

/// `libffi_init` result: the cfg string was refused, or the queue was NULL.
pub const INIT_BAD_CFG: c_int = 2;
/// `libffi_init` result: the interpreter cannot start (or could not earlier in this worker).
pub const INIT_NO_INTERPRETER: c_int = 3;
/// `libffi_init` result: the module does not import (or reload).
pub const INIT_IMPORT_FAILED: c_int = 4;
/// `libffi_init` result: the module has no such function, or it is not callable.
pub const INIT_NO_FUNC: c_int = 5;
/// `libffi_init` result: the function raised.
pub const INIT_RAISED: c_int = 6;
/// `libffi_init` result: the function returned something other than an int that fits a C int.
pub const INIT_BAD_RESULT: c_int = 7;
/// `libffi_init` result: a panic was caught.
pub const INIT_PANIC: c_int = 8;

/// The lua-resty-ffi entry point: imports the module `cfg` names and returns what its
/// function returned, or one of the `INIT_*` codes (the reason, with the traceback, goes to
/// error.log).
///
/// # Safety
///
/// `cfg` is NULL or a NUL-terminated string valid during the call; `tq` is the queue the host
/// created for this instance. Called on the nginx main thread, as the host does.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *const c_char, tq: *mut c_void) -> c_int {
    let cfg = if cfg.is_null() {
        None
    } else {
        // SAFETY: the caller passes a NUL-terminated string valid during this call; it is
        // copied because the host frees it when we return.
        Some(unsafe { CStr::from_ptr(cfg) }.to_bytes().to_vec())
    };
    catch_unwind(AssertUnwindSafe(|| init(cfg.as_deref(), tq))).unwrap_or_else(|_| {
        log::log(log::ERR, "panic in libffi_init");
        INIT_PANIC
    })
}

fn init(cfg: Option<&[u8]>, tq: *mut c_void) -> c_int {
    let shown = cfg.map_or_else(
        || "NULL".to_owned(),
        |c| format!("{:?}", String::from_utf8_lossy(c)),
    );
    let spec = match Spec::parse(cfg) {
        Ok(spec) => spec,
        Err(e) => {
            log::log(log::ERR, &format!("bad cfg {shown}: {e}"));
            return INIT_BAD_CFG;
        }
    };
    if tq.is_null() {
        log::log(log::ERR, "libffi_init called with a NULL queue");
        return INIT_BAD_CFG;
    }
    // Threads Python starts from here on never take nginx's signals.
    let _blocked = loader_common::signals::Blocked::new();
    if let Err(why) = interp::ensure() {
        log::log(
            log::ERR,
            &format!("cfg {shown}: the Python interpreter cannot start: {why}"),
        );
        return INIT_NO_INTERPRETER;
    }
    match module::start(&spec, tq as usize) {
        Ok(rc) => rc,
        Err(failure) => {
            log::log(log::ERR, &format!("cfg {shown}: {}", failure.msg));
            failure.rc
        }
    }
}
