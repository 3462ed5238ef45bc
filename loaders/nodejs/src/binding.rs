//! The linked binding `process._linkedBinding('resty_ffi')`: the JavaScript side of the host's
//! calls, written against Node-API. `js/resty_ffi.js` (what runtimes `require`) and
//! `js/bootstrap.js` (the loader's main script) are built on it.
//!
//! | function | does |
//! |---|---|
//! | `start(load)` | main script only: `load` is what `libffi_init` calls; Node.js is ready |
//! | `loaded(id, rc)` | main script only: a `load` finished with `rc` |
//! | `serve(tq, onTask)` | `onTask(task, req)` per task on the event loop, `onTask(0, null)` once the queue finished; the loop watches the queue's eventfd (`loop_serve`), or a poll thread feeds it |
//! | `poll_task(tq)` | blocking poll (Worker threads only): a task number, 0 once finished |
//! | `get_req(task)` | the request as a Buffer (a copy), `null` for nil |
//! | `respond(task, rc, rsp)` | answers once; `rsp` a Buffer, TypedArray, DataView, ArrayBuffer, string, `null` or `undefined` |
//! | `cancelled(task)` | true once nobody waits for the task (timed out, aborted, or already answered) |
//! | `log(level, msg)` | a line in nginx's error.log at nginx's level number |
//!
//! Thread-safe functions carry work from other threads to the event loop. Each has a [`Gate`]
//! that its finalizer closes, so no thread calls one that Node.js tore down.

use std::ffi::{c_int, c_void, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Mutex};

use crate::host::{self, Response};
use crate::instance;
use crate::napi::{self, Env, RawCallbackInfo, RawEnv, RawTsfn, RawValue, Value};
use crate::registry::{self, Id};

/// The runtimes' module, compiled by the bootstrap as `require('resty_ffi')`.
const HELPER_SOURCE: &str = include_str!("../js/resty_ffi.js");

/// rc of a task Node.js can no longer run (it is shutting down).
const RC_STOPPING: c_int = 1;

/// The main environment (the one that called `start`); `poll_task` refuses to block it.
static MAIN_ENV: AtomicPtr<napi::OpaqueEnv> = AtomicPtr::new(ptr::null_mut());

/// The thread-safe function `libffi_init` reaches the bootstrap's `load` through.
static LOADER: Gate = Gate::new();

/// What a JavaScript-facing function returns when it fails.
enum Throw {
    Error(String),
    Type(String),
    /// A Node-API call failed; the exception it left pending (if any) is thrown.
    Napi(napi::Failed),
}

impl From<napi::Failed> for Throw {
    fn from(e: napi::Failed) -> Throw {
        Throw::Napi(e)
    }
}

type JsResult = Result<Value, Throw>;
type JsFn = fn(Env, [Value; 3]) -> JsResult;

/// Runs a JavaScript-facing function: its first three arguments, errors thrown as JavaScript
/// exceptions, panics caught (logged, thrown as an Error).
///
/// # Safety
/// `raw` and `info` are what Node-API passed to the running function callback.
unsafe fn trampoline(raw: RawEnv, info: RawCallbackInfo, f: JsFn) -> RawValue {
    // SAFETY: the caller's contract: a function callback on the environment's thread.
    let env = unsafe { Env::new(raw) };
    let run = AssertUnwindSafe(|| {
        // SAFETY: `info` is this callback's.
        let args = unsafe { env.args::<3>(info) }?;
        f(env, args)
    });
    let r = catch_unwind(run).unwrap_or_else(|_| {
        host::log(
            host::ALERT,
            "resty_ffi_nodejs: panic in the binding (caught)",
        );
        Err(Throw::Error("resty_ffi: internal error (panic)".into()))
    });
    match r {
        Ok(v) => v.raw(),
        Err(Throw::Error(m)) => {
            env.throw_error(&m);
            ptr::null_mut()
        }
        Err(Throw::Type(m)) => {
            env.throw_type_error(&m);
            ptr::null_mut()
        }
        Err(Throw::Napi(e)) => {
            env.throw_error(&format!("resty_ffi: Node-API call failed (status {})", e.0));
            ptr::null_mut()
        }
    }
}

macro_rules! js_functions {
    ($($name:ident => $body:path),* $(,)?) => {
        $(
            unsafe extern "C" fn $name(env: RawEnv, info: RawCallbackInfo) -> RawValue {
                // SAFETY: Node-API calls function callbacks with their env and info, on the
                // environment's thread.
                unsafe { trampoline(env, info, $body) }
            }
        )*
    };
}

js_functions! {
    js_start => start,
    js_loaded => loaded,
    js_serve => serve,
    js_poll_task => poll_task,
    js_get_req => get_req,
    js_respond => respond,
    js_cancelled => cancelled,
    js_log => log,
}

/// The binding's init function, registered with `node::AddLinkedBinding`; Node.js calls it in
/// the main environment and in every Worker that asks for the binding.
///
/// # Safety
/// Called by Node-API with a live env and the binding's exports object.
pub unsafe extern "C" fn register(raw: RawEnv, exports: RawValue) -> RawValue {
    // SAFETY: a binding init callback on the environment's thread.
    let env = unsafe { Env::new(raw) };
    let fill = || -> napi::Result<Value> {
        // SAFETY: `exports` is a handle of this callback.
        let exports = unsafe { Value::from_raw(exports) };
        let fns: [(&CStr, napi::Callback); 8] = [
            (c"start", js_start),
            (c"loaded", js_loaded),
            (c"serve", js_serve),
            (c"poll_task", js_poll_task),
            (c"get_req", js_get_req),
            (c"respond", js_respond),
            (c"cancelled", js_cancelled),
            (c"log", js_log),
        ];
        for (name, cb) in fns {
            env.set(exports, name, env.function(name, cb)?)?;
        }
        env.set(exports, c"helper_source", env.string(HELPER_SOURCE)?)?;
        Ok(exports)
    };
    match catch_unwind(AssertUnwindSafe(fill)) {
        Ok(Ok(v)) => v.raw(),
        _ => {
            env.throw_error("resty_ffi: cannot build the binding");
            ptr::null_mut()
        }
    }
}

fn id_arg(env: Env, v: Value, what: &str) -> Result<Id, Throw> {
    let bad = || {
        Throw::Type(format!(
            "resty_ffi: {what} must be a number given by resty_ffi"
        ))
    };
    if env.type_of(v)? != napi::T_NUMBER {
        return Err(bad());
    }
    let n = env.to_f64(v)?;
    if n.fract() != 0.0 || !(0.0..=9_007_199_254_740_992.0).contains(&n) {
        return Err(bad());
    }
    Ok(n as Id)
}

fn function_arg(env: Env, v: Value, what: &str) -> Result<Value, Throw> {
    if env.type_of(v)? == napi::T_FUNCTION {
        Ok(v)
    } else {
        Err(Throw::Type(format!("resty_ffi: {what} must be a function")))
    }
}

// ---------------------------------------------------------------------------------------------
// Gates: thread-safe functions guarded against use after Node.js tore them down.
// ---------------------------------------------------------------------------------------------

struct Tsfn(RawTsfn);
// SAFETY: thread-safe functions are made to be called from any thread; the gate serializes
// calls with the finalizer that invalidates the handle.
unsafe impl Send for Tsfn {}

/// A thread-safe function or nothing: closed by its finalizer (on the event loop, when
/// Node.js tears it down) or when its thread released it.
struct Gate(Mutex<Option<Tsfn>>);

impl Gate {
    const fn new() -> Gate {
        Gate(Mutex::new(None))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Tsfn>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open(&self, f: RawTsfn) {
        *self.lock() = Some(Tsfn(f));
    }

    /// Queues `item` for the event loop; gives it back when the gate is closed or Node.js
    /// refused it (shutting down).
    fn call<T>(&self, item: Box<T>) -> Result<(), Box<T>> {
        let g = self.lock();
        let Some(f) = g.as_ref() else {
            return Err(item);
        };
        let raw = Box::into_raw(item);
        // SAFETY: the gate is open, so the function is not finalized (the finalizer takes this
        // lock to close it) and not released.
        match unsafe { napi::tsfn_call(f.0, raw.cast()) } {
            napi::OK => Ok(()),
            // SAFETY: Node.js did not take `raw`; it is still ours.
            _ => Err(unsafe { Box::from_raw(raw) }),
        }
    }

    /// The calling thread's last use: releases its share and closes the gate.
    fn release(&self) {
        if let Some(f) = self.lock().take() {
            // SAFETY: open until now; nobody uses it after the gate is closed.
            unsafe { napi::tsfn_release(f.0) };
        }
    }

    fn close(&self) {
        self.lock().take();
    }
}

// ---------------------------------------------------------------------------------------------
// start / loaded: libffi_init → bootstrap's load(...) → loaded(id, rc).
// ---------------------------------------------------------------------------------------------

/// What `libffi_init` asks the bootstrap to do.
pub struct LoadRequest {
    pub id: u64,
    pub spec: crate::cfg::Spec,
    pub tq: Id,
}

/// Queues a load for the bootstrap's `load`; gives it back when Node.js is not running.
pub fn post_load(req: LoadRequest) -> Result<(), LoadRequest> {
    LOADER.call(Box::new(req)).map_err(|b| *b)
}

fn start(env: Env, [load, _, _]: [Value; 3]) -> JsResult {
    let load = function_arg(env, load, "start(load): load")?;
    if MAIN_ENV
        .compare_exchange(
            ptr::null_mut(),
            env.raw(),
            Ordering::AcqRel,
            Ordering::Acquire,
        )
        .is_err()
    {
        return Err(Throw::Error("resty_ffi: start() is the loader's".into()));
    }
    // SAFETY: `load_call_js` reads the items `post_load` queues (`LoadRequest`); the context and
    // finalize data are unused.
    let f = unsafe {
        env.threadsafe_function(
            load,
            "resty_ffi.load",
            ptr::null_mut(),
            loader_finalize,
            ptr::null_mut(),
            load_call_js,
        )
    }?;
    LOADER.open(f);
    instance::ready();
    Ok(env.undefined()?)
}

unsafe extern "C" fn loader_finalize(_env: RawEnv, _data: *mut c_void, _hint: *mut c_void) {
    let _ = catch_unwind(|| LOADER.close());
}

unsafe extern "C" fn load_call_js(
    raw: RawEnv,
    js_cb: RawValue,
    _ctx: *mut c_void,
    data: *mut c_void,
) {
    // SAFETY: `data` is a `LoadRequest` boxed by `post_load`, given to us once.
    let req = unsafe { Box::from_raw(data.cast::<LoadRequest>()) };
    let id = req.id;
    let run = AssertUnwindSafe(|| {
        if raw.is_null() {
            // Node.js is tearing the function down: nothing runs the load.
            instance::loaded(id, instance::RC_NODE_FAILED);
            return;
        }
        // SAFETY: a `call_js` callback on the environment's thread; `js_cb` is its handle.
        let (env, js_cb) = unsafe { (Env::new(raw), Value::from_raw(js_cb)) };
        let call = || -> napi::Result<()> {
            let s = &req.spec;
            let rest = match &s.rest {
                Some(r) => env.string(r)?,
                None => env.null()?,
            };
            let args = [
                env.number(id as f64)?,
                env.string(&s.module)?,
                env.string(&s.func)?,
                rest,
                env.number(req.tq as f64)?,
                env.boolean(s.reload)?,
            ];
            env.call(env.undefined()?, js_cb, &args).map(drop)
        };
        if call().is_err() {
            let why = exception_text(env);
            host::log(
                host::ERR,
                &format!("resty_ffi_nodejs: the loader's load() failed: {why}"),
            );
            instance::loaded(id, instance::RC_NODE_FAILED);
        }
    });
    if catch_unwind(run).is_err() {
        host::log(host::ALERT, "resty_ffi_nodejs: panic in load (caught)");
        instance::loaded(id, instance::RC_NODE_FAILED);
    }
}

/// The pending exception's stack (or its text), cleared.
fn exception_text(env: Env) -> String {
    pending_exception_text(env).unwrap_or_else(|| "Node.js is stopping".into())
}

/// The pending exception's stack (or its text), cleared; `None` without one, or when neither
/// can be read: that is Node.js terminating (a worker exiting with calls in flight), whose
/// termination exception runs no JavaScript, not even its `toString` (t/rt_nodejs.rs
/// `reload_with_calls_in_flight` saw it as an `[error] ... serve: exception` line).
fn pending_exception_text(env: Env) -> Option<String> {
    let e = env.take_exception()?;
    let stack = env
        .get(e, c"stack")
        .ok()
        .filter(|s| env.type_of(*s).ok() == Some(napi::T_STRING));
    env.to_string_lossy(stack.unwrap_or(e)).ok()
}

fn loaded(env: Env, [id, rc, _]: [Value; 3]) -> JsResult {
    let id = id_arg(env, id, "loaded(id)")?;
    let rc = int_arg(env, rc, "loaded(id, rc): rc")?;
    instance::loaded(id, rc);
    Ok(env.undefined()?)
}

fn int_arg(env: Env, v: Value, what: &str) -> Result<c_int, Throw> {
    let bad = || Throw::Type(format!("resty_ffi: {what} must be an integer (a C int)"));
    if env.type_of(v)? != napi::T_NUMBER {
        return Err(bad());
    }
    let n = env.to_f64(v)?;
    if n.fract() != 0.0 || n < f64::from(c_int::MIN) || n > f64::from(c_int::MAX) {
        return Err(bad());
    }
    Ok(n as c_int)
}

// ---------------------------------------------------------------------------------------------
// serve: a poll thread per queue, tasks handed to the event loop.
// ---------------------------------------------------------------------------------------------

enum Item {
    Task(Id),
    End,
}

fn serve(env: Env, [tq, on_task, _]: [Value; 3]) -> JsResult {
    let tq = id_arg(env, tq, "serve(tq): tq")?;
    let on_task = function_arg(env, on_task, "serve(tq, onTask): onTask")?;
    let q = registry::claim_serve(tq)
        .map_err(|e| Throw::Error(format!("resty_ffi: {}", e.message())))?;
    if let Some(api) = host::AsyncPoll::get().filter(|_| !poll_thread_forced()) {
        // SAFETY: `claim_serve` made us the queue's only poller; `env` is this callback's.
        if unsafe { crate::loop_serve::start(env, api, q, tq, on_task) }.is_ok() {
            return Ok(env.undefined()?);
        }
    }
    let gate = Arc::new(Gate::new());
    let fin = Arc::into_raw(gate.clone()) as *mut c_void;
    // SAFETY: `serve_call_js` reads `Item`s (what `serve_loop` queues); `serve_finalize` takes
    // back the `Arc<Gate>` passed as finalize data.
    let made = unsafe {
        env.threadsafe_function(
            on_task,
            "resty_ffi.serve",
            fin,
            serve_finalize,
            ptr::null_mut(),
            serve_call_js,
        )
    };
    let f = match made {
        Ok(f) => f,
        Err(e) => {
            // SAFETY: not handed to Node.js: the Arc made above is still ours.
            drop(unsafe { Arc::from_raw(fin as *const Gate) });
            registry::unclaim(tq);
            return Err(e.into());
        }
    };
    gate.open(f);
    let spawned = std::thread::Builder::new()
        .name(format!("node-serve-{tq}"))
        .spawn({
            let gate = gate.clone();
            move || serve_loop(q, tq, &gate)
        });
    if let Err(e) = spawned {
        gate.release();
        registry::unclaim(tq);
        return Err(Throw::Error(format!(
            "resty_ffi: cannot start a poll thread: {e}"
        )));
    }
    Ok(env.undefined()?)
}

/// `RESTY_FFI_NODEJS_POLL=thread`: serve with a poll thread even on a host with asynchronous
/// polling (to compare the two, or to test the path the real lua-resty-ffi takes).
fn poll_thread_forced() -> bool {
    static FORCED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| std::env::var_os("RESTY_FFI_NODEJS_POLL").is_some_and(|v| v == "thread"))
}

/// The queue's poller: every task goes to the event loop; the finish marker ends it.
fn serve_loop(q: host::Queue, tq: Id, gate: &Gate) {
    let run = AssertUnwindSafe(|| loop {
        // SAFETY: `claim_serve` made this thread the queue's only poller; the queue is live
        // until this poll returns None, after which the loop ends.
        let Some(task) = (unsafe { q.poll() }) else {
            registry::finished(tq);
            let _ = gate.call(Box::new(Item::End));
            return;
        };
        let id = registry::add_task(task);
        if gate.call(Box::new(Item::Task(id))).is_err() {
            if let Some(t) = registry::take_task(id) {
                t.respond(RC_STOPPING, stopping());
            }
        }
    });
    if catch_unwind(run).is_err() {
        host::log(
            host::ALERT,
            "resty_ffi_nodejs: panic in a poll thread (caught)",
        );
    }
    gate.release();
}

fn stopping() -> Response {
    Response::copy(b"Node.js is stopping").unwrap_or_else(|_| Response::nil())
}

unsafe extern "C" fn serve_finalize(_env: RawEnv, data: *mut c_void, _hint: *mut c_void) {
    // SAFETY: the `Arc<Gate>` leaked in `serve` for this function, taken back once.
    let gate = unsafe { Arc::from_raw(data as *const Gate) };
    let _ = catch_unwind(AssertUnwindSafe(|| gate.close()));
}

unsafe extern "C" fn serve_call_js(
    raw: RawEnv,
    js_cb: RawValue,
    _ctx: *mut c_void,
    data: *mut c_void,
) {
    // SAFETY: `data` is an `Item` boxed by `serve_loop`, given to us once.
    let item = unsafe { Box::from_raw(data.cast::<Item>()) };
    let run = AssertUnwindSafe(|| {
        if raw.is_null() {
            // Torn down before the event loop ran it.
            if let Item::Task(id) = *item {
                if let Some(t) = registry::take_task(id) {
                    t.respond(RC_STOPPING, stopping());
                }
            }
            return;
        }
        // SAFETY: a `call_js` callback on the environment's thread; `js_cb` is its handle.
        let (env, js_cb) = unsafe { (Env::new(raw), Value::from_raw(js_cb)) };
        let id = match *item {
            Item::Task(id) => id,
            Item::End => 0,
        };
        deliver(env, js_cb, id);
    });
    if catch_unwind(run).is_err() {
        host::log(
            host::ALERT,
            "resty_ffi_nodejs: panic delivering a task (caught)",
        );
    }
}

/// Hands task `id` to `on_task(id, req)` (`id` 0: the queue finished). When JavaScript cannot
/// take it (Node.js is stopping, or the callback threw, which is logged), the task is answered
/// with [`RC_STOPPING`].
pub(crate) fn deliver(env: Env, on_task: Value, id: Id) {
    let call = || -> napi::Result<()> {
        let req = if id == 0 {
            env.null()?
        } else {
            // The copy is made under the registry's lock, so the task cannot be answered (its
            // request freed) meanwhile.
            let req = registry::with_task(id, |t| match t.request() {
                Some(r) => env.buffer_copy(r),
                None => env.null(),
            });
            match req {
                Some(r) => r?,
                None => return Ok(()),
            }
        };
        env.call(env.undefined()?, on_task, &[env.number(id as f64)?, req])
            .map(drop)
    };
    if call().is_err() {
        // An exception from the helper's callback is a bug worth a line; without one,
        // Node.js is stopping and runs no more JavaScript.
        if let Some(why) = pending_exception_text(env) {
            host::log(host::ERR, &format!("resty_ffi_nodejs: serve: {why}"));
        }
        if let Some(t) = registry::take_task(id) {
            t.respond(RC_STOPPING, stopping());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The raw calls.
// ---------------------------------------------------------------------------------------------

fn poll_task(env: Env, [tq, _, _]: [Value; 3]) -> JsResult {
    let tq = id_arg(env, tq, "poll_task(tq): tq")?;
    if env.raw() == MAIN_ENV.load(Ordering::Acquire) {
        return Err(Throw::Error(
            "resty_ffi: poll_task blocks, and this is the event loop's thread: call it from a \
             worker_threads Worker, or use serve(tq, handler)"
                .into(),
        ));
    }
    let q = match registry::raw_begin(tq) {
        Ok(Some(q)) => q,
        Ok(None) => return Ok(env.number(0.0)?),
        Err(e) => return Err(Throw::Error(format!("resty_ffi: {}", e.message()))),
    };
    // SAFETY: `raw_begin` made this call the queue's only poller until `raw_end`; the queue is
    // live (not finished).
    let task = catch_unwind(AssertUnwindSafe(|| unsafe { q.poll() }));
    let (id, finished) = match task {
        Ok(Some(t)) => (registry::add_task(t), false),
        Ok(None) => (0, true),
        Err(_) => {
            registry::raw_end(tq, false);
            return Err(Throw::Error("resty_ffi: poll failed".into()));
        }
    };
    registry::raw_end(tq, finished);
    Ok(env.number(id as f64)?)
}

fn get_req(env: Env, [task, _, _]: [Value; 3]) -> JsResult {
    let id = id_arg(env, task, "get_req(task): task")?;
    let r = registry::with_task(id, |t| match t.request() {
        Some(r) => env.buffer_copy(r),
        None => env.null(),
    });
    match r {
        Some(v) => Ok(v?),
        None => Err(Throw::Error(
            "resty_ffi: unknown or already answered task".into(),
        )),
    }
}

fn respond(env: Env, [task, rc, rsp]: [Value; 3]) -> JsResult {
    let id = id_arg(env, task, "respond(task): task")?;
    let rc = int_arg(env, rc, "respond(task, rc): rc")?;
    let rsp = response(env, rsp)?;
    let Some(t) = registry::take_task(id) else {
        return Err(Throw::Error(
            "resty_ffi: unknown or already answered task".into(),
        ));
    };
    t.respond(rc, rsp);
    Ok(env.undefined()?)
}

/// A JavaScript response value as the host wants it.
fn response(env: Env, v: Value) -> Result<Response, Throw> {
    let too_large = |_| Throw::Error("resty_ffi: response too large (2 GiB at most)".into());
    match env.type_of(v)? {
        napi::T_UNDEFINED | napi::T_NULL => return Ok(Response::nil()),
        napi::T_STRING => {
            let len = env.utf8_len(v)?;
            let mut status = Ok(0);
            let r = Response::with_len(len, |buf| status = env.write_utf8(v, buf));
            status?;
            return r.map_err(too_large);
        }
        _ => {}
    }
    match env.with_bytes(v, Response::copy)? {
        Some(r) => r.map_err(too_large),
        None => Err(Throw::Type(
            "resty_ffi: a response is a Buffer, TypedArray, DataView, ArrayBuffer, string, null or \
             undefined"
                .into(),
        )),
    }
}

fn cancelled(env: Env, [task, _, _]: [Value; 3]) -> JsResult {
    let id = id_arg(env, task, "cancelled(task): task")?;
    // An answered (or unknown) task has nobody waiting for more work on it.
    let c = registry::with_task(id, |t| t.cancelled()).unwrap_or(true);
    Ok(env.boolean(c)?)
}

fn log(env: Env, [level, msg, _]: [Value; 3]) -> JsResult {
    let level = int_arg(env, level, "log(level): level")?;
    let msg = env.to_string_lossy(msg)?;
    host::log(level, &msg);
    Ok(env.undefined()?)
}
