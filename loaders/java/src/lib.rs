//! `libffi_java.so`: the lua-resty-ffi loader for Java. One JVM per nginx worker, created at the
//! first `libffi_init` and shared by every later `ngx.load_ffi("ffi_java", cfg)`; each cfg
//! `pkg.Class[?],method[,rest]` calls `static int method(String rest, long tq)`.
//!
//! ```text
//!  nginx main thread                       resty-ffi-jvm thread (nginx's signals blocked)
//!  libffi_init(cfg, tq) ─ parse cfg ─ Job ──► JNI_CreateJavaVM (first job only), define the
//!        ▲                                    resty.ffi classes, RegisterNatives(Host)
//!        └──────────── rc ◄────────────────── resty.ffi.Boot.init(class, fresh, method, rest, tq)
//!                                               └─► user's init: starts its threads, returns
//!  Java threads (daemon): Host.poll/request/respond/cancelled ──► natives ──► host's C calls
//! ```
//!
//! Modules: [`mod@cfg`] parses the cfg string; `jvm` finds and starts the JVM on its own thread
//! and runs the init calls there; `classes` defines the embedded Java side (`resty.ffi.*`,
//! compiled by build.rs) and registers its natives; `natives` is the only code that calls the
//! host's task functions; `log` writes to nginx's error log; `pin` keeps this library loaded.
//! The C export is below; it is the crate's only door to C callers.

pub mod cfg;
mod classes;
mod hooks;
mod jvm;
mod log;
mod natives;
mod pin;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// `libffi_init` result: the cfg string is not `pkg.Class[?],method[,rest]` (or tq is NULL).
pub const RC_BAD_CFG: c_int = 2;
/// `libffi_init` result: the JVM cannot start (libjvm not found, bad `JAVA_OPTS`, ...); sticky
/// for the worker's life.
pub const RC_NO_JVM: c_int = 3;
/// `libffi_init` result: the class cannot be found or loaded (its static initializer threw).
pub const RC_NO_CLASS: c_int = 4;
/// `libffi_init` result: no `static int method(String, long)` in the class.
pub const RC_NO_METHOD: c_int = 5;
/// `libffi_init` result: the init method threw.
pub const RC_INIT_THREW: c_int = 6;
/// `libffi_init` result: an internal error (a JNI failure, a caught panic).
pub const RC_INTERNAL: c_int = 7;

/// The lua-resty-ffi entry point. Starts the worker's JVM at the first call, then calls the
/// cfg's init method on the JVM's thread and returns its int (or one of the `RC_*` constants;
/// the reason is in nginx's error log).
///
/// # Safety
///
/// `cfg` is NULL or a NUL-terminated string valid during the call; `tq` is the queue the host
/// created for this runtime. Called on the nginx main thread of a worker, after the host library
/// (`libresty_ffi.so`) was loaded globally.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *const c_char, tq: *mut c_void) -> c_int {
    let text = if cfg.is_null() {
        String::new()
    } else {
        // SAFETY: a NUL-terminated string valid during this call (the caller's contract); it is
        // copied because the host frees it when we return.
        unsafe { CStr::from_ptr(cfg) }
            .to_string_lossy()
            .into_owned()
    };
    let tq = tq as usize;
    catch_unwind(AssertUnwindSafe(|| init(&text, tq))).unwrap_or_else(|_| {
        log::error(&format!(
            "resty_ffi_java: panic in libffi_init (cfg {text:?})"
        ));
        RC_INTERNAL
    })
}

fn init(text: &str, tq: usize) -> c_int {
    pin::pin_self();
    let cfg = match cfg::Cfg::parse(text) {
        Ok(cfg) => cfg,
        Err(e) => {
            log::error(&format!("resty_ffi_java: bad cfg {text:?}: {e}"));
            return RC_BAD_CFG;
        }
    };
    if tq == 0 {
        log::error("resty_ffi_java: libffi_init called with a NULL queue");
        return RC_BAD_CFG;
    }
    jvm::init(cfg, tq)
}
