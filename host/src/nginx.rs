//! Everything that touches nginx's event loop and lua-nginx-module: the host's eventfd
//! registered in the worker's event loop and its handler (which drains the done list and the
//! queued log lines), the semaphores, the worker-exit hook.
//!
//! All functions here except [`complete`] run on the nginx main thread.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nginx_sys as ngx;

use crate::guard::guard;
use crate::queue::Queue;
use crate::task::{Answered, Delivery, Task};
use crate::{log, wake};

// lua-nginx-module's semaphore API (exported by ngx_http_lua_module.so, which nginx loads with
// RTLD_GLOBAL); the same functions lua-resty-core's `ngx.semaphore` binds.
extern "C" {
    fn ngx_http_lua_ffi_sema_new(
        psem: *mut *mut c_void,
        n: c_int,
        errmsg: *mut *mut c_char,
    ) -> c_int;
    fn ngx_http_lua_ffi_sema_post(sem: *mut c_void, n: c_int) -> c_int;
    fn ngx_http_lua_ffi_sema_gc(sem: *mut c_void);
}

/// `NGX_READ_EVENT` of this nginx build (epoll: `EPOLLIN | EPOLLRDHUP`; Debian's nginx on Linux
/// always has epoll, and the event module is checked in [`init`]).
const NGX_READ_EVENT: ngx::ngx_int_t = (libc::EPOLLIN | libc::EPOLLRDHUP) as ngx::ngx_int_t;
const NGX_USE_EPOLL_EVENT: ngx::ngx_uint_t = 0x0000_0040;

/// How long worker exit waits for runtimes' poll threads to take their finish markers.
const EXIT_GRACE: Duration = Duration::from_secs(1);

/// Answered tasks waiting for the main thread.
static DONE: Mutex<Vec<TaskPtr>> = Mutex::new(Vec::new());
/// Every queue created in this worker, to finish them at worker exit.
static QUEUES: Mutex<Vec<Arc<Queue>>> = Mutex::new(Vec::new());

thread_local! {
    /// The handler's batch buffer, swapped with `DONE` so draining allocates nothing.
    static BATCH: RefCell<Vec<TaskPtr>> = const { RefCell::new(Vec::new()) };
}

struct TaskPtr(*mut Task);
// SAFETY: a task on the done list is owned by the list until the main thread takes it.
unsafe impl Send for TaskPtr {}

/// Why the host could not attach to the event loop.
#[derive(Debug)]
pub(crate) struct InitError(&'static str);

impl std::fmt::Display for InitError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

fn cycle() -> *mut ngx::ngx_cycle_t {
    // SAFETY: `ngx_cycle` is set by nginx before any Lua code runs and changes only on the main
    // thread: during a reload in the master, and to the exit cycle when a worker exits.
    unsafe { ptr::read_volatile(ptr::addr_of!(ngx::ngx_cycle)) }
}

/// Attaches the host to this worker's event loop (once per process): an eventfd watched by
/// nginx, and a hook that finishes every queue when the worker exits.
pub(crate) fn init() -> Result<(), InitError> {
    if wake::fd() >= 0 {
        return Ok(());
    }
    let cycle = cycle();
    if cycle.is_null() {
        return Err(InitError("no nginx cycle"));
    }
    // SAFETY: reading a plain global set by the event module at worker start.
    let flags = unsafe { ptr::read_volatile(ptr::addr_of!(ngx::ngx_event_flags)) };
    if flags & NGX_USE_EPOLL_EVENT == 0 {
        return Err(InitError("the host needs nginx's epoll event method"));
    }
    // SAFETY: eventfd has no memory preconditions; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(InitError("eventfd() failed"));
    }
    // SAFETY: main thread of a worker, after the event module initialised the connection pool
    // (Lua code runs from init_worker on); `fd` is a fresh descriptor we own.
    unsafe {
        let log = (*cycle).log;
        let c = ngx::ngx_get_connection(fd, log);
        if c.is_null() {
            libc::close(fd);
            return Err(InitError("no free nginx connection for the host's eventfd"));
        }
        let rev = (*c).read;
        (*rev).handler = Some(on_event);
        (*rev).log = log;
        (*(*c).write).log = log;
        // A channel is not a client connection: nginx neither closes it on graceful shutdown
        // nor reports it as an "open socket left" when the worker exits.
        (*rev).set_channel(1);
        let add = ngx::ngx_event_actions.add;
        let ok = match add {
            Some(add) => add(rev, NGX_READ_EVENT, 0) == ngx::NGX_OK as ngx::ngx_int_t,
            None => false,
        };
        if !ok {
            ngx::ngx_free_connection(c);
            libc::close(fd);
            return Err(InitError(
                "cannot add the host's eventfd to nginx's event loop",
            ));
        }
        let cln = ngx::ngx_pool_cleanup_add((*cycle).pool, 0);
        if !cln.is_null() {
            (*cln).handler = Some(on_worker_exit);
            (*cln).data = ptr::null_mut();
        }
    }
    wake::set_fd(fd);
    log::open(write_log);
    Ok(())
}

/// Main thread: one line through nginx's logger (`ngx_cycle->log`, so nginx's format), if the
/// `error_log` level lets it through. The writer [`log`] uses from [`init`] on.
fn write_log(level: log::Level, text: &[u8]) {
    let cycle = cycle();
    if cycle.is_null() {
        return;
    }
    // SAFETY: a non-NULL cycle is live on the main thread; during the worker-exit cleanup it is
    // nginx's exit cycle, whose log stays valid until the process exits.
    let log = unsafe { (*cycle).log };
    let level = ngx::ngx_uint_t::from(level.raw());
    // SAFETY: `log` is the cycle's live log (checked for NULL first); reading its level is what
    // nginx's own `ngx_log_error` macro does before it calls the logger.
    if log.is_null() || unsafe { (*log).log_level } < level {
        return;
    }
    // SAFETY: main thread; `%*s` reads a size_t length and a pointer to that many bytes, which
    // `text` provides for the duration of the call.
    unsafe { ngx::ngx_log_error_core(level, log, 0, c"%*s".as_ptr(), text.len(), text.as_ptr()) };
}

/// Registers a queue so worker exit finishes it.
pub(crate) fn track_queue(q: Arc<Queue>) {
    QUEUES.lock().unwrap_or_else(|e| e.into_inner()).push(q);
}

/// Any thread: a runtime answered `task`. Wakes the main thread unless Lua is spinning on it.
///
/// # Safety
/// `task` is live and this is its only answer (the runtime's duty under the contract).
pub(crate) unsafe fn complete(task: *mut Task, rc: c_int, rsp: *mut c_char, rsp_len: usize) {
    // SAFETY: guaranteed by the caller.
    let answered = unsafe { (*task).answer(rc, rsp, rsp_len) };
    if answered == Answered::Direct {
        return;
    }
    DONE.lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(TaskPtr(task));
    wake::signal();
}

/// The eventfd's read handler, on the main thread: writes queued log lines and delivers
/// answered tasks.
unsafe extern "C" fn on_event(_ev: *mut ngx::ngx_event_t) {
    guard("event handler", (), || {
        wake::acknowledge();
        log::drain();
        BATCH.with(|batch| {
            let mut batch = batch.borrow_mut();
            std::mem::swap(
                &mut *DONE.lock().unwrap_or_else(|e| e.into_inner()),
                &mut *batch,
            );
            for TaskPtr(t) in batch.drain(..) {
                // SAFETY: tasks on the done list are live and owned by the list; this is the
                // main thread.
                match unsafe { (*t).deliver() } {
                    // SAFETY: a task in DELIVERED has the semaphore Lua waits on.
                    Delivery::Wake => unsafe {
                        ngx_http_lua_ffi_sema_post((*t).sema(), 1);
                    },
                    // SAFETY: the task is abandoned by Lua and answered: nobody else holds it.
                    Delivery::Free => unsafe { free_task(t) },
                }
            }
        });
    })
}

/// Main thread: creates the semaphore Lua will wait on.
pub(crate) fn new_sema() -> Result<*mut c_void, String> {
    let mut sem: *mut c_void = ptr::null_mut();
    let mut err: *mut c_char = ptr::null_mut();
    // SAFETY: main thread; both out-pointers are live locals.
    let rc = unsafe { ngx_http_lua_ffi_sema_new(&mut sem, 0, &mut err) };
    if rc != 0 || sem.is_null() {
        let msg = if err.is_null() {
            "cannot create semaphore".to_owned()
        } else {
            // SAFETY: lua-nginx-module sets `err` to a static NUL-terminated message.
            unsafe { std::ffi::CStr::from_ptr(err) }
                .to_string_lossy()
                .into_owned()
        };
        return Err(msg);
    }
    Ok(sem)
}

/// Main thread: destroys a task and its semaphore.
///
/// # Safety
/// `task` came from `Box::into_raw`, and neither Lua nor the runtime nor the done list holds it.
pub(crate) unsafe fn free_task(task: *mut Task) {
    // SAFETY: guaranteed by the caller.
    let task = unsafe { Box::from_raw(task) };
    free_sema(task.take_sema());
}

/// Main thread: frees a semaphore made by [`new_sema`] that nobody waits on (NULL is a no-op).
pub(crate) fn free_sema(sem: *mut c_void) {
    if !sem.is_null() {
        // SAFETY: main thread; the semaphore came from `new_sema` and Lua returned from (or was
        // torn out of) its wait before releasing the task.
        unsafe { ngx_http_lua_ffi_sema_gc(sem) };
    }
}

/// Pool cleanup of the worker's cycle: runs when the worker exits (after modules' exit hooks,
/// before the Lua VM is closed). Gives every runtime its finish marker and a moment to take it.
unsafe extern "C" fn on_worker_exit(_data: *mut c_void) {
    guard("worker exit", (), || {
        let queues = std::mem::take(&mut *QUEUES.lock().unwrap_or_else(|e| e.into_inner()));
        for q in &queues {
            q.finish();
        }
        let deadline = Instant::now() + EXIT_GRACE;
        while queues.iter().any(|q| !q.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        // Keep the queues alive: runtime threads may still be answering earlier tasks while the
        // process exits.
        std::mem::forget(queues);
        // Lines runtimes logged up to here reach the log; later ones go to stderr.
        log::close();
    })
}
