//! The host's only door to C: the lua-resty-ffi contract for runtimes, the host's additions
//! for runtimes (asynchronous polling, logging), and the functions `resty_ffi.lua` binds. Every
//! export runs its body under [`guard`], so a panic is logged and turned into an error value
//! instead of unwinding into nginx.

use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::Arc;
use std::time::Duration;

use crate::guard::guard;
use crate::log::{self, Level};
use crate::nginx;
use crate::queue::{PostError, Queue, TryPoll};
use crate::task::{Release, Task};
use crate::wake;

// ---------------------------------------------------------------------------------------------
// The lua-resty-ffi contract, for runtimes (any thread).
// ---------------------------------------------------------------------------------------------

/// Blocks until a task is posted; returns NULL once the finish marker is consumed, after which
/// `tq` must not be used again.
///
/// # Safety
/// `tq` is the queue handed to `libffi_init`, polled by one thread, and not used after this
/// function returned NULL.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void {
    guard("task_poll", ptr::null_mut(), || {
        if tq.is_null() {
            return ptr::null_mut();
        }
        let q = tq as *const Queue;
        // SAFETY: the runtime's reference to the queue is alive until poll returns NULL.
        match unsafe { (*q).poll() } {
            Some(task) => task as *mut c_void,
            None => {
                // SAFETY: the runtime's reference is released exactly once, here, when the
                // marker is consumed (see `resty_ffi_queue_new`).
                unsafe { Arc::decrement_strong_count(q) };
                ptr::null_mut()
            }
        }
    })
}

/// Runs `f` on the queue `tq` under the guard; `fallback` when `tq` is NULL (or `f` panicked).
///
/// # Safety
/// `tq` is NULL or a queue the caller holds a reference to for the duration of the call.
unsafe fn with_queue<T: Copy>(
    what: &str,
    tq: *mut c_void,
    fallback: T,
    f: impl FnOnce(&Queue) -> T,
) -> T {
    guard(what, fallback, || {
        if tq.is_null() {
            return fallback;
        }
        // SAFETY: the caller's reference keeps the queue alive during this call.
        f(unsafe { &*(tq as *const Queue) })
    })
}

// ---------------------------------------------------------------------------------------------
// Asynchronous polling (this host's addition, for runtimes whose thread runs an event loop).
// Runtimes find these with dlsym and fall back to `ngx_http_lua_ffi_task_poll` without them.
// ---------------------------------------------------------------------------------------------

/// The queue's eventfd (non-blocking): readable after `resty_ffi_task_arm` returned 1 and an
/// item was queued. Owned by the queue; -1 if it cannot be created.
///
/// # Safety
/// `tq` is the queue handed to `libffi_init`, not yet finished (see `resty_ffi_task_try_poll`).
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_poll_fd(tq: *mut c_void) -> c_int {
    // SAFETY: `tq` is NULL or the runtime's live queue (the caller's contract).
    unsafe { with_queue("task_poll_fd", tq, -1, Queue::poll_fd) }
}

/// The next task without waiting, or NULL: then `*finished` is 1 if the finish marker was
/// consumed (the runtime's reference to the queue is released; `tq` must not be used again),
/// else 0 (the queue is empty).
///
/// # Safety
/// As `ngx_http_lua_ffi_task_poll`; `finished` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_try_poll(
    tq: *mut c_void,
    finished: *mut c_int,
) -> *mut c_void {
    guard("task_try_poll", ptr::null_mut(), || {
        if tq.is_null() {
            return ptr::null_mut();
        }
        let q = tq as *const Queue;
        // SAFETY: the runtime's reference is alive until the marker is consumed.
        let r = unsafe { (*q).try_poll() };
        let done = matches!(r, TryPoll::Finished);
        if !finished.is_null() {
            // SAFETY: writable per the caller.
            unsafe { finished.write(c_int::from(done)) };
        }
        match r {
            TryPoll::Task(t) => t as *mut c_void,
            TryPoll::Empty => ptr::null_mut(),
            TryPoll::Finished => {
                // SAFETY: released exactly once, as in `ngx_http_lua_ffi_task_poll`.
                unsafe { Arc::decrement_strong_count(q) };
                ptr::null_mut()
            }
        }
    })
}

/// The runtime is about to wait on `resty_ffi_task_poll_fd`: 1 means wait (the next post makes
/// the fd readable), 0 means an item is already queued (call `resty_ffi_task_try_poll`).
///
/// # Safety
/// As `resty_ffi_task_poll_fd`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_arm(tq: *mut c_void) -> c_int {
    // SAFETY: as above.
    unsafe { with_queue("task_arm", tq, 0, |q| c_int::from(q.arm())) }
}

/// Spins (or yields, when the poster shares the CPU) up to the queue's `poll_spin_us` for an
/// item: 1 if one is queued. For runtimes with nothing else to do.
///
/// # Safety
/// As `resty_ffi_task_poll_fd`.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_spin_poll(tq: *mut c_void) -> c_int {
    // SAFETY: as above.
    unsafe { with_queue("task_spin_poll", tq, 0, |q| c_int::from(q.spin_for_item())) }
}

/// The request of a polled task: a NUL-terminated copy, or NULL with length 0 for a nil request.
/// Valid until the task is answered.
///
/// # Safety
/// `task` was returned by `ngx_http_lua_ffi_task_poll` and not yet answered; `len` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_get_req(
    task: *mut c_void,
    len: *mut c_int,
) -> *mut c_char {
    guard("get_req", ptr::null_mut(), || {
        if task.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: the runtime holds a polled, unanswered task.
        let (req, n) = unsafe { (*(task as *const Task)).request() };
        if !len.is_null() {
            // SAFETY: the caller passes a writable int or NULL. Requests are limited to
            // i32::MAX bytes at post time.
            unsafe { *len = n as c_int };
        }
        req
    })
}

/// Answers a task, exactly once. `rsp` must come from libc `malloc` (the host frees it) or be
/// NULL; `rsp_len == 0` with a non-NULL `rsp` means a NUL-terminated string.
///
/// # Safety
/// `task` was polled and not yet answered; `rsp` is NULL or a malloc'd buffer of `rsp_len` bytes
/// (or a NUL-terminated string when `rsp_len` is 0) whose ownership passes to the host.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_respond(
    task: *mut c_void,
    rc: c_int,
    rsp: *mut c_char,
    rsp_len: c_int,
) {
    guard("respond", (), || {
        if task.is_null() {
            return;
        }
        let (rsp, len) = match rsp_len {
            _ if rsp.is_null() => (rsp, 0),
            // SAFETY: the contract: a NUL-terminated string when the length is 0.
            0 => (rsp, unsafe { libc::strlen(rsp) }),
            n if n > 0 => (rsp, n as usize),
            n => {
                log::host(
                    Level::ERROR,
                    &format!("runtime answered with negative rsp_len {n}; response dropped"),
                );
                // SAFETY: ownership of the malloc'd buffer passed to us.
                unsafe { libc::free(rsp as *mut c_void) };
                (ptr::null_mut(), 0)
            }
        };
        // SAFETY: the runtime answers a live task once (its contract duty).
        unsafe { nginx::complete(task as *mut Task, rc, rsp, len) };
    })
}

/// This host's extension: from now on (`on` ≠ 0) the calling thread's answers wake nginx's
/// main thread only at its next [`resty_ffi_wake_flush`] (one write for all of them); `on` = 0
/// gives a held wake-up now and answers wake at once again. A runtime that answers many tasks
/// per turn of its event loop flushes once per turn, and always before it sleeps: a held
/// wake-up is not given until then.
#[no_mangle]
pub extern "C" fn resty_ffi_wake_hold(on: c_int) {
    guard("wake_hold", (), || wake::hold(on != 0))
}

/// This host's extension: gives the calling thread's held wake-up, if its answers since the
/// last flush need one (see [`resty_ffi_wake_hold`]).
#[no_mangle]
pub extern "C" fn resty_ffi_wake_flush() {
    guard("wake_flush", (), wake::flush)
}

/// This host's extension: 1 when nobody waits for the task any more (the Lua call timed out or
/// its request was aborted), so a runtime can stop work early. It must still answer the task.
///
/// # Safety
/// `task` was polled and not yet answered.
#[no_mangle]
pub unsafe extern "C" fn ngx_http_lua_ffi_task_cancelled(task: *mut c_void) -> c_int {
    guard("task_cancelled", 0, || {
        if task.is_null() {
            return 0;
        }
        // SAFETY: the runtime holds a polled, unanswered task.
        c_int::from(unsafe { (*(task as *const Task)).is_cancelled() })
    })
}

// ---------------------------------------------------------------------------------------------
// Logging (this host's addition, for runtimes; any thread). Runtimes find it with dlsym and
// fall back to stderr without it.
// ---------------------------------------------------------------------------------------------

/// Writes one line to nginx's error log in nginx's format, obeying the `error_log` level.
/// `level` is nginx's number (`NGX_LOG_ALERT` 2, `NGX_LOG_ERR` 4, `NGX_LOG_WARN` 5,
/// `NGX_LOG_NOTICE` 6, `NGX_LOG_INFO` 7; others are clamped into 2..=8); `msg` is `len` bytes,
/// copied, without a newline. On the main thread the line is written at once; from any other
/// thread it is queued (at most 1024 lines; beyond that it is dropped and counted) and written by
/// the host's eventfd handler. Before `resty_ffi_init` and after the worker-exit cleanup it goes
/// to stderr as `[level] msg`. Never blocks beyond a short uncontended mutex.
///
/// Returns 0 when the line was written or queued, -1 when it was dropped or `msg` is NULL.
///
/// # Safety
/// `msg` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_log(level: c_int, msg: *const c_char, len: usize) -> c_int {
    guard("log", -1, || {
        if msg.is_null() {
            return -1;
        }
        // SAFETY: the caller passes `len` readable bytes.
        let text = unsafe { std::slice::from_raw_parts(msg as *const u8, len) };
        if log::write(Level::from_raw(level), text) {
            0
        } else {
            -1
        }
    })
}

// ---------------------------------------------------------------------------------------------
// For resty_ffi.lua (nginx main thread only).
// ---------------------------------------------------------------------------------------------

/// Version of the Lua-facing ABI below; `resty_ffi.lua` refuses a library with another one.
#[no_mangle]
pub extern "C" fn resty_ffi_abi_version() -> c_int {
    2
}

/// Attaches the host to the worker's event loop. 0 on success, else -1 with `*err` set to a
/// static message.
///
/// # Safety
/// Main thread of an nginx worker; `err` is writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_init(err: *mut *const c_char) -> c_int {
    guard("init", -1, || match nginx::init() {
        Ok(()) => 0,
        Err(e) => {
            // SAFETY: the caller passes a writable pointer.
            unsafe { *err = init_error_text(&e) };
            -1
        }
    })
}

fn init_error_text(e: &nginx::InitError) -> *const c_char {
    // The messages are few and static; leak one CString per distinct failure (init failures
    // happen at most once per worker).
    std::ffi::CString::new(e.to_string())
        .map(|c| c.into_raw() as *const c_char)
        .unwrap_or(c"init failed".as_ptr())
}

/// A new queue for one runtime. It has two owners: the Lua object (released by
/// `resty_ffi_queue_finish`) and the runtime (released when its poll returns NULL).
#[no_mangle]
pub extern "C" fn resty_ffi_queue_new(max_queue: c_int, poll_spin_us: c_int) -> *mut c_void {
    guard("queue_new", ptr::null_mut(), || {
        let q = Arc::new(Queue::new(
            max_queue.max(1) as usize,
            Duration::from_micros(poll_spin_us.max(0) as u64),
        ));
        nginx::track_queue(q.clone());
        let raw = Arc::into_raw(q);
        // SAFETY: `raw` came from `Arc::into_raw` just above; this is the runtime's reference.
        unsafe { Arc::increment_strong_count(raw) };
        raw as *mut c_void
    })
}

/// Appends the finish marker and drops the Lua object's reference to the queue.
///
/// # Safety
/// `tq` came from `resty_ffi_queue_new` and Lua calls this once per queue.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_queue_finish(tq: *mut c_void) {
    guard("queue_finish", (), || {
        if tq.is_null() {
            return;
        }
        // SAFETY: the Lua reference is still held (released right below, once).
        let q = unsafe { Arc::from_raw(tq as *const Queue) };
        q.finish();
    })
}

/// Posts a request (`req == NULL` means nil; it is copied). Returns the task, or NULL with
/// `*err` = 1 (queue full), 2 (finished), 3 (out of memory), 4 (request too large).
///
/// # Safety
/// `tq` is a live queue from `resty_ffi_queue_new`; `req` points to `len` readable bytes or is
/// NULL; `err` is writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_post(
    tq: *mut c_void,
    req: *const c_char,
    len: usize,
    err: *mut c_int,
) -> *mut c_void {
    guard("task_post", ptr::null_mut(), || {
        let fail = |code: c_int| {
            // SAFETY: the caller passes a writable int.
            unsafe { *err = code };
            ptr::null_mut()
        };
        if len > i32::MAX as usize {
            return fail(4);
        }
        let bytes = if req.is_null() {
            None
        } else {
            // SAFETY: the caller passes `len` readable bytes (a Lua string).
            Some(unsafe { std::slice::from_raw_parts(req as *const u8, len) })
        };
        let Some(task) = Task::new(bytes) else {
            return fail(3);
        };
        let task = Box::into_raw(task);
        // SAFETY: the Lua reference to the queue is alive while Lua posts.
        match unsafe { (*(tq as *const Queue)).post(task) } {
            Ok(()) => task as *mut c_void,
            Err(e) => {
                // SAFETY: a refused task was never seen by anyone else.
                drop(unsafe { Box::from_raw(task) });
                fail(match e {
                    PostError::Full => 1,
                    PostError::Finished => 2,
                })
            }
        }
    })
}

/// Spins up to `max_us` microseconds for the answer; 1 when it is there.
///
/// # Safety
/// `tq` is the live queue the task was posted to; `task` was returned by
/// `resty_ffi_task_post` and not released.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_spin(
    tq: *mut c_void,
    task: *mut c_void,
    max_us: c_int,
) -> c_int {
    guard("task_spin", 0, || {
        // SAFETY: Lua holds its references to the task and the queue.
        let (t, q) = unsafe { (&*(task as *const Task), &*(tq as *const Queue)) };
        if t.is_done_direct() {
            return 1;
        }
        let max = Duration::from_micros(max_us.max(0) as u64);
        c_int::from(crate::queue::spin_until(max, q.poller_cpu(), || {
            t.is_done_direct()
        }))
    })
}

/// Lua stops spinning and will wait. Returns the semaphore to wait on, or NULL when the answer
/// is already there (`*err` NULL) or the semaphore could not be made (`*err` set).
///
/// # Safety
/// As `resty_ffi_task_spin`; `err` is writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_wait(
    task: *mut c_void,
    err: *mut *const c_char,
) -> *mut c_void {
    guard("task_wait", ptr::null_mut(), || {
        // SAFETY: the caller passes a writable pointer.
        unsafe { *err = ptr::null() };
        // SAFETY: Lua holds its reference to the task.
        let t = unsafe { &*(task as *const Task) };
        let sem = if t.sema().is_null() {
            match nginx::new_sema() {
                Ok(s) => s,
                Err(_) => {
                    // SAFETY: as above.
                    unsafe { *err = c"cannot create semaphore".as_ptr() };
                    return ptr::null_mut();
                }
            }
        } else {
            t.sema()
        };
        t.set_sema(sem);
        if t.start_waiting() {
            sem
        } else {
            ptr::null_mut()
        }
    })
}

/// The answer of a finished task: returns rc, sets `*rsp` (NULL for none) and `*len`. The
/// response stays owned by the task (valid until release).
///
/// # Safety
/// `task` is held by Lua and finished (spin returned 1, wait returned NULL without error, or
/// the semaphore was posted); `rsp` and `len` are writable.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_result(
    task: *mut c_void,
    rsp: *mut *const c_char,
    len: *mut usize,
) -> c_int {
    guard("task_result", -1, || {
        // SAFETY: Lua holds its reference to a finished task.
        let (rc, r, n) = unsafe { (*(task as *const Task)).result() };
        // SAFETY: the caller passes writable out-parameters.
        unsafe {
            *rsp = r;
            *len = n;
        }
        rc
    })
}

/// Lua drops its reference: after reading the answer, on timeout, or from the finalizer of a
/// call whose request was aborted.
///
/// # Safety
/// `task` came from `resty_ffi_task_post` and this is Lua's only release of it.
#[no_mangle]
pub unsafe extern "C" fn resty_ffi_task_release(task: *mut c_void) {
    guard("task_release", (), || {
        if task.is_null() {
            return;
        }
        let t = task as *mut Task;
        // SAFETY: Lua's reference is alive until this call.
        match unsafe { (*t).release() } {
            // SAFETY: both sides are done with the task.
            Release::Free => unsafe { nginx::free_task(t) },
            // Lua no longer waits, so the semaphore goes back now: semaphores must all be freed
            // before lua-nginx-module's semaphore memory is at worker exit, while the task may
            // wait for an answer that never comes.
            // SAFETY: Lua's reference was alive at the start of this call; `release` moved the
            // task to a state where only the main thread (us) touches the semaphore.
            Release::Later => nginx::free_sema(unsafe { (*t).take_sema() }),
        }
    })
}
