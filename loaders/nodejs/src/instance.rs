//! The worker's one Node.js instance: its thread, start-up, the loads `libffi_init` asks for,
//! and its end when the process exits.
//!
//! ```text
//!  nginx main thread                      node thread (signals blocked)
//!  libffi_init ── start() ── spawn ─────► resty_node_run: Node.js + bootstrap.js
//!      │  wait Ready ◄─────────────────── binding start(load) ── instance::ready()
//!      │  post_load ── load TSFN ───────► load(id, module, func, rest, tq, reload)
//!      │  wait rc ◄────────────────────── binding loaded(id, rc) ── instance::loaded()
//!  exit() ── atexit: resty_node_stop ───► event loop stops, Node.js torn down, thread ends
//! ```

use std::collections::HashMap;
use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use loader_common::pin;

use crate::binding::{self, LoadRequest};
use crate::cfg::Spec;
use crate::host;
use crate::registry::Id;

/// `libffi_init` results of the loader's own (the JavaScript side's failures are 1).
pub const RC_BAD_CFG: c_int = 2;
pub const RC_NODE_FAILED: c_int = 3;
pub const RC_PANIC: c_int = 4;
pub const RC_INIT_TIMEOUT: c_int = 5;

/// How long the first `libffi_init` waits for Node.js to start.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long `libffi_init` waits for the init function (and a Promise it returns).
const INIT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long process exit waits for Node.js to stop before it skips the rest of `exit()`.
const EXIT_TIMEOUT: Duration = Duration::from_secs(1);
/// V8 platform threads (background compilation and GC) per worker.
const PLATFORM_THREADS: c_int = 2;
/// Stack of the Node.js thread (V8 keeps to under 1 MiB of it by default).
const NODE_STACK: usize = 8 << 20;

/// The loader's main script.
const BOOTSTRAP: &str = concat!(include_str!("../js/bootstrap.js"), "\0");

#[repr(C)]
struct NodeOptions {
    bootstrap: *const c_char,
    binding_name: *const c_char,
    register_binding: unsafe extern "C" fn(
        *mut crate::napi::OpaqueEnv,
        crate::napi::RawValue,
    ) -> crate::napi::RawValue,
    platform_threads: c_int,
    report: unsafe extern "C" fn(c_int, *const c_char, usize),
    exit_requested: unsafe extern "C" fn(c_int),
}

extern "C" {
    // shim/node_shim.cc
    fn resty_node_run(o: *const NodeOptions) -> c_int;
    fn resty_node_stop();
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Idle,
    Starting,
    Ready,
    /// Node.js could not start, or stopped: it cannot start again in this process.
    Down(String),
}

static PHASE: Mutex<Phase> = Mutex::new(Phase::Idle);
static PHASE_CV: Condvar = Condvar::new();

/// Results of loads in flight, by load id (`None` while running).
static LOADS: Mutex<Option<HashMap<u64, Option<c_int>>>> = Mutex::new(None);
static LOADS_CV: Condvar = Condvar::new();

fn phase() -> MutexGuard<'static, Phase> {
    PHASE.lock().unwrap_or_else(|e| e.into_inner())
}

fn loads() -> MutexGuard<'static, Option<HashMap<u64, Option<c_int>>>> {
    LOADS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts Node.js once per process and waits until its bootstrap runs. The reason when it
/// cannot (then every later call fails the same way).
pub fn start() -> Result<(), String> {
    let mut p = phase();
    if *p == Phase::Idle {
        if let Err(e) = pin_libraries() {
            // Node.js runs without it; only an unload or an addon would find out.
            host::log(host::WARN, &format!("resty_ffi_nodejs: {e}"));
        }
        *p = Phase::Starting;
        let spawned = spawn_quiet("node", NODE_STACK, node_thread);
        if let Err(e) = spawned {
            *p = Phase::Down(format!("cannot start the Node.js thread: {e}"));
        }
    }
    let deadline = Instant::now() + START_TIMEOUT;
    while *p == Phase::Starting {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("Node.js did not start within {START_TIMEOUT:?}"));
        }
        p = PHASE_CV
            .wait_timeout(p, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
    match &*p {
        Phase::Ready => Ok(()),
        Phase::Down(why) => Err(why.clone()),
        Phase::Idle | Phase::Starting => Err("Node.js did not start".into()),
    }
}

fn node_thread() {
    let opts = NodeOptions {
        bootstrap: BOOTSTRAP.as_ptr().cast(),
        binding_name: c"resty_ffi".as_ptr(),
        register_binding: binding::register,
        platform_threads: PLATFORM_THREADS,
        report,
        exit_requested,
    };
    // SAFETY: `opts` and the strings it points to outlive the call (static or on this frame);
    // the callbacks have the signatures the shim declares.
    unsafe { resty_node_run(&opts) };
    let mut p = phase();
    *p = Phase::Down(if *p == Phase::Starting {
        let why = std::mem::take(&mut *startup_errors());
        if why.is_empty() {
            "Node.js did not start".into()
        } else {
            format!("Node.js did not start: {}", why.join("; "))
        }
    } else {
        "Node.js stopped".into()
    });
    PHASE_CV.notify_all();
}

/// What the shim reported while Node.js was starting: it becomes the reason `libffi_init`
/// logs, on the nginx thread, in order.
static STARTUP_ERRORS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn startup_errors() -> MutexGuard<'static, Vec<String>> {
    STARTUP_ERRORS.lock().unwrap_or_else(|e| e.into_inner())
}

/// The bootstrap called `start(load)`: Node.js serves loads from now on.
pub fn ready() {
    let mut p = phase();
    if *p == Phase::Starting {
        *p = Phase::Ready;
        // Registered now, after libnode set up its own exit-time state, so it runs first.
        // SAFETY: `at_exit` is a plain `extern "C" fn()` that never unwinds.
        unsafe { libc::atexit(at_exit) };
    }
    PHASE_CV.notify_all();
}

/// Runs the init function of `spec` with queue `tq` and returns its rc.
pub fn load(spec: Spec, tq: Id) -> c_int {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let id = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let what = format!("{},{}", spec.module, spec.func);
    loads().get_or_insert_with(HashMap::new).insert(id, None);
    if binding::post_load(LoadRequest { id, spec, tq }).is_err() {
        loads().get_or_insert_with(HashMap::new).remove(&id);
        host::log(host::ERR, "resty_ffi_nodejs: Node.js is not running");
        return RC_NODE_FAILED;
    }
    let deadline = Instant::now() + INIT_TIMEOUT;
    let mut l = loads();
    loop {
        let map = l.get_or_insert_with(HashMap::new);
        if let Some(Some(rc)) = map.get(&id) {
            let rc = *rc;
            map.remove(&id);
            return rc;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            map.remove(&id);
            host::log(
                host::ERR,
                &format!(
                    "resty_ffi_nodejs: {what}: the init function did not finish within \
                     {INIT_TIMEOUT:?} (is the event loop blocked, or a returned Promise never \
                     settled?)"
                ),
            );
            return RC_INIT_TIMEOUT;
        }
        l = LOADS_CV
            .wait_timeout(l, left)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

/// A load finished (from the event loop).
pub fn loaded(id: u64, rc: c_int) {
    let mut l = loads();
    if let Some(slot) = l.get_or_insert_with(HashMap::new).get_mut(&id) {
        *slot = Some(rc);
    }
    LOADS_CV.notify_all();
}

unsafe extern "C" fn report(level: c_int, msg: *const c_char, len: usize) {
    let _ = catch_unwind(|| {
        // SAFETY: the shim passes `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(msg.cast::<u8>(), len) };
        let text = String::from_utf8_lossy(bytes).into_owned();
        if *phase() == Phase::Starting {
            startup_errors().push(text);
        } else {
            host::log(level, &format!("resty_ffi_nodejs: {text}"));
        }
    });
}

unsafe extern "C" fn exit_requested(code: c_int) {
    let _ = catch_unwind(|| {
        host::log(
            host::ERR,
            &format!(
                "resty_ffi_nodejs: process.exit({code}) ignored: the nginx worker keeps running, \
                 and so does Node.js"
            ),
        );
    });
}

/// Process exit (nginx's worker exit, after the host finished every queue): Node.js stops and
/// its thread tears it down before the C++ static destructors of libnode run. If that takes
/// longer than [`EXIT_TIMEOUT`], the process ends here instead, skipping those destructors.
extern "C" fn at_exit() {
    let _ = catch_unwind(|| {
        if *phase() != Phase::Ready {
            return;
        }
        // SAFETY: thread-safe; Node.js is running (Ready).
        unsafe { resty_node_stop() };
        let deadline = Instant::now() + EXIT_TIMEOUT;
        let mut p = phase();
        while *p == Phase::Ready {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(p);
                // SAFETY: ends the process without running what is left of exit(): libnode's
                // destructors must not run while its thread still does.
                unsafe { libc::_exit(0) };
            }
            p = PHASE_CV
                .wait_timeout(p, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    });
}

/// Keeps this library and libnode loaded for good (Node.js cannot be unloaded, and LuaJIT
/// dlcloses a runtime loaded with `unpin = true`), and makes libnode's symbols global so
/// native addons (`.node` files) find the Node-API they import, whatever `is_global` was.
fn pin_libraries() -> Result<(), String> {
    pin::pin_self()?;
    pin::pin_loaded(c"libnode.so.108", true).map(drop)
}

/// Spawns a thread with every asynchronous signal blocked: nginx's signals must reach nginx's
/// thread, never one of ours (threads inherit the mask, so Node's and libuv's threads are
/// covered too).
pub fn spawn_quiet(
    name: &str,
    stack: usize,
    f: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    // SAFETY: sigset operations on local sets; pthread_sigmask changes this thread's mask and
    // the previous one is restored right after the spawn.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        for s in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGFPE,
            libc::SIGILL,
            libc::SIGTRAP,
        ] {
            libc::sigdelset(&mut all, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
        let r = std::thread::Builder::new()
            .name(name.to_owned())
            .stack_size(stack)
            .spawn(f)
            .map(drop);
        libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        r
    }
}

/// Drains a queue nobody serves (its init failed): answers stray tasks with rc 1 and takes
/// the finish marker, so the host can free the queue.
pub fn drain(q: host::Queue, tq: Id) {
    let spawned = spawn_quiet("node-drain", 256 << 10, move || {
        let run = AssertUnwindSafe(|| {
            // SAFETY: `take_fresh` made this thread the queue's only poller; the loop stops at
            // the finish marker.
            while let Some(t) = unsafe { q.poll() } {
                let msg = host::Response::copy(b"the Node.js runtime failed to start")
                    .unwrap_or_else(|_| host::Response::nil());
                t.respond(1, msg);
            }
            crate::registry::finished(tq);
        });
        let _ = catch_unwind(run);
    });
    if let Err(e) = spawned {
        host::log(
            host::WARN,
            &format!("resty_ffi_nodejs: cannot drain a queue: {e}"),
        );
    }
}
