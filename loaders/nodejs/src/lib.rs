//! `libffi_nodejs.so`: runs lua-resty-ffi runtimes written in JavaScript, in one embedded
//! Node.js (Debian's shared `libnode108`, Node 18) per nginx worker.
//!
//! ```lua
//! local rt = ngx.load_ffi("ffi_nodejs", "echo,init")   -- require("echo").init(null, tq)
//! local ok, res = rt:echo("hello")
//! ```
//!
//! ```js
//! // echo.js, found through NODE_PATH
//! const ffi = require('resty_ffi');
//! exports.init = (cfg, tq) => { ffi.serve(tq, async (req) => req); return 0; };
//! ```
//!
//! ```text
//!  nginx main thread          node thread (event loop)
//!  libffi_init(cfg, tq) ────► load: require(module)[func](rest, tq)
//!                             serve(tq, handler): watch tq's eventfd (uv_poll)
//!  Lua obj:call(req) ──tq──► (eventfd) ──► try_poll: task
//!                             handler(req, task) ──► respond(task, rc, rsp) ──► host ──► Lua
//! ```
//!
//! On a host without the eventfd protocol (the real lua-resty-ffi), `serve` polls with a
//! native thread that blocks in `task_poll` and hands tasks to the loop through a thread-safe
//! function instead.
//!
//! Modules: [`cfg`](mod@cfg) parses `module[?],func[,rest]`; `host` is the only code calling the host's
//! C functions; `registry` maps the numbers JavaScript holds to queues and tasks; `binding` is
//! the Node-API binding (`process._linkedBinding('resty_ffi')`) over them, with `loop_serve`
//! for serving on the event loop, `napi` the part of Node-API they use; `instance` runs the Node.js thread (through the C++ shim,
//! `shim/node_shim.cc`) and stops it at exit. The JavaScript side: `js/bootstrap.js` (the
//! main script) and `js/resty_ffi.js` (`require('resty_ffi')`). The only export to nginx is
//! `libffi_init`, below.

mod binding;
pub mod cfg;
mod host;
mod instance;
mod loop_serve;
mod napi;
mod registry;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use instance::{RC_BAD_CFG, RC_INIT_TIMEOUT, RC_NODE_FAILED, RC_PANIC};

/// The lua-resty-ffi entry point. The first call starts the worker's Node.js; every call
/// requires `module` and runs `func(rest, tq)` on Node's event loop, waiting for its result
/// (a Promise is awaited). Returns that result (0: running), 1 when the module does not load,
/// lacks `func`, or `func` throws, rejects or returns something other than an integer,
/// [`RC_BAD_CFG`], [`RC_NODE_FAILED`], [`RC_PANIC`] or [`RC_INIT_TIMEOUT`]. Reasons go to
/// error.log.
///
/// # Safety
/// `cfg` is NULL or a NUL-terminated string valid during the call; `tq` is the fresh queue the
/// host made for this call (polled from then on by the loader only). The host library with
/// `ngx_http_lua_ffi_task_poll`, `_get_req` and `_respond` is loaded globally.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *const c_char, tq: *mut c_void) -> c_int {
    let text = if cfg.is_null() {
        String::new()
    } else {
        // SAFETY: the caller's contract; copied, since the host frees it when we return.
        unsafe { CStr::from_ptr(cfg) }
            .to_string_lossy()
            .into_owned()
    };
    catch_unwind(AssertUnwindSafe(|| init(&text, tq))).unwrap_or_else(|_| {
        host::log(
            host::ALERT,
            "resty_ffi_nodejs: panic in libffi_init (caught)",
        );
        RC_PANIC
    })
}

fn init(text: &str, tq: *mut c_void) -> c_int {
    let spec = match cfg::Spec::parse(text) {
        Ok(s) => s,
        Err(e) => {
            host::log(host::ERR, &format!("resty_ffi_nodejs: {e}"));
            return RC_BAD_CFG;
        }
    };
    let Some(q) = host::Queue::new(tq) else {
        host::log(
            host::ERR,
            "resty_ffi_nodejs: libffi_init called with a NULL queue",
        );
        return RC_NODE_FAILED;
    };
    let id = registry::add_queue(q);
    let rc = match instance::start() {
        Ok(()) => instance::load(spec, id),
        Err(why) => {
            host::log(host::ERR, &format!("resty_ffi_nodejs: {why}"));
            RC_NODE_FAILED
        }
    };
    if rc != 0 {
        // Nobody will poll the queue: take its finish marker ourselves.
        if let Some(q) = registry::take_fresh(id) {
            instance::drain(q, id);
        }
    }
    rc
}
