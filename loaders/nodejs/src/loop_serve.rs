//! Serving a queue from Node's event loop itself, on this host's asynchronous polling
//! extension: libuv watches (a dup of) the queue's eventfd, and each wake-up drains the queue
//! with `resty_ffi_task_try_poll` on the loop's thread, then re-arms it. No poll thread, so a
//! call costs one thread hand-off less than the poll-thread path (`binding::serve`'s other
//! branch), which stays for hosts without the extension (the real lua-resty-ffi).
//!
//! ```text
//!  Lua post ──► host queue ──(armed: eventfd write)──► uv_poll on Node's loop
//!                                                        try_poll … deliver(task) … arm
//! ```
//!
//! Lifetime: a [`Source`] lives from `start` until libuv closed its handle, after the finish
//! marker or when the environment is torn down (an async cleanup hook, so Node.js keeps the loop
//! running until the handle is closed).

use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr;

use crate::binding;
use crate::host::{AsyncPoll, Queue, TryPoll};
use crate::napi::{self, Env, Persistent, RawCleanup, RawLoop, Value};
use crate::registry::{self, Id};

extern "C" {
    // shim/node_shim.cc
    fn resty_uv_poll_start(
        l: RawLoop,
        fd: c_int,
        cb: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    ) -> *mut c_void;
    fn resty_uv_poll_close(
        poll: *mut c_void,
        closed: unsafe extern "C" fn(*mut c_void),
        data: *mut c_void,
    );
}

/// Tasks handed to JavaScript per callback scope (microtasks run between batches).
const BATCH: usize = 64;

struct Source {
    api: &'static AsyncPoll,
    q: Queue,
    tq: Id,
    /// Our dup of the queue's eventfd (the queue closes its own when it is freed).
    fd: c_int,
    poll: *mut c_void,
    js: Option<Persistent>,
    cleanup: RawCleanup,
    closing: bool,
}

/// Serves `q` (claimed by the caller as `tq`) with `on_task` on this environment's loop. Err
/// when the loop cannot watch the queue (nothing was started: use a poll thread).
///
/// # Safety
/// `registry::claim_serve` made the caller the queue's only poller; `env` is the running
/// callback's.
pub unsafe fn start(
    env: Env,
    api: &'static AsyncPoll,
    q: Queue,
    tq: Id,
    on_task: Value,
) -> napi::Result<()> {
    // napi_generic_failure
    let fail = napi::Failed(9);
    // SAFETY: the caller's contract: a live queue, ours to poll.
    let fd = unsafe { api.fd(q) };
    if fd < 0 {
        return Err(fail);
    }
    // SAFETY: duplicates a valid descriptor, the queue's eventfd.
    let fd = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(fail);
    }
    let close_fd = || {
        // SAFETY: our dup, closed once on this failure path.
        unsafe { libc::close(fd) };
    };
    let js = match Persistent::new(env, on_task, "resty_ffi.serve") {
        Ok(js) => js,
        Err(e) => {
            close_fd();
            return Err(e);
        }
    };
    let event_loop = match js.event_loop() {
        Ok(l) => l,
        Err(e) => {
            close_fd();
            // SAFETY: on the environment's thread, outside `enter`.
            unsafe { js.release() };
            return Err(e);
        }
    };
    let src = Box::into_raw(Box::new(Source {
        api,
        q,
        tq,
        fd,
        poll: ptr::null_mut(),
        js: Some(js),
        cleanup: ptr::null_mut(),
        closing: false,
    }));
    // SAFETY: `src` is ours until handed to libuv below; `on_readable` and `on_teardown` take
    // it as the `Source` it is, on the loop's thread.
    unsafe {
        let poll = resty_uv_poll_start(event_loop, fd, on_readable, src.cast());
        let js = (*src).js.as_ref().expect("set above");
        let hook = if poll.is_null() {
            Err(fail)
        } else {
            js.add_cleanup_hook(on_teardown, src.cast())
        };
        match hook {
            Ok(h) => {
                (*src).poll = poll;
                (*src).cleanup = h;
            }
            Err(e) => {
                if !poll.is_null() {
                    resty_uv_poll_close(poll, forget, ptr::null_mut());
                }
                let s = Box::from_raw(src);
                libc::close(s.fd);
                if let Some(js) = s.js {
                    js.release();
                }
                return Err(e);
            }
        }
        // Tasks may be queued already: the first wake-up drains them, then arms the queue.
        let one: u64 = 1;
        libc::write(fd, (&one as *const u64).cast(), 8);
    }
    Ok(())
}

unsafe extern "C" fn forget(_data: *mut c_void) {}

/// The eventfd is readable: drain the queue, hand the tasks to JavaScript, arm again.
unsafe extern "C" fn on_readable(data: *mut c_void) {
    let run = AssertUnwindSafe(|| {
        // SAFETY: `data` is the live `Source` (freed only in `on_closed`, after libuv stopped
        // calling us); we are on the loop's thread.
        let src = unsafe { &mut *data.cast::<Source>() };
        if src.closing {
            return;
        }
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes into a u64 from our non-blocking eventfd (EAGAIN is fine).
        unsafe { libc::read(src.fd, (&mut counter as *mut u64).cast(), 8) };
        let finished = loop {
            let Some(js) = src.js.as_ref() else {
                return;
            };
            let (api, q, tq) = (src.api, src.q, src.tq);
            // SAFETY: a libuv callback on the environment's thread with no JavaScript on the
            // stack; the environment is alive (teardown closes us first).
            let batch = unsafe { js.enter(|env, on_task| drain(env, on_task, api, q, tq)) };
            match batch {
                Ok(Drained::More) => continue,
                Ok(Drained::Armed) => break false,
                Ok(Drained::Finished) => break true,
                // Node.js can no longer run JavaScript (stopping): the teardown hook closes us.
                Err(_) => return,
            }
        };
        if finished {
            close(src);
        }
    });
    if catch_unwind(run).is_err() {
        crate::host::log(
            crate::host::ALERT,
            "resty_ffi_nodejs: panic serving a queue (caught)",
        );
    }
}

enum Drained {
    /// A batch went to JavaScript; more may be queued.
    More,
    /// Empty and armed: the next post wakes us.
    Armed,
    /// The finish marker was consumed (JavaScript was told).
    Finished,
}

fn drain(env: Env, on_task: Value, api: &AsyncPoll, q: Queue, tq: Id) -> Drained {
    for _ in 0..BATCH {
        // SAFETY: this source is the queue's only poller and the queue is live: the finish
        // marker has not been taken (after it, `close` stops the callbacks).
        match unsafe { api.try_poll(q) } {
            TryPoll::Task(t) => {
                let id = registry::add_task(t);
                binding::deliver(env, on_task, id);
            }
            TryPoll::Finished => {
                registry::finished(tq);
                binding::deliver(env, on_task, 0);
                return Drained::Finished;
            }
            TryPoll::Empty => {
                // SAFETY: as above.
                if unsafe { api.arm(q) } {
                    return Drained::Armed;
                }
            }
        }
    }
    Drained::More
}

/// Stops watching (once): the handle closes on a later turn of the loop, then `on_closed`
/// frees the source.
fn close(src: &mut Source) {
    if src.closing {
        return;
    }
    src.closing = true;
    // SAFETY: our live handle, closed once; `on_closed` gets the source when libuv is done.
    unsafe { resty_uv_poll_close(src.poll, on_closed, (src as *mut Source).cast()) };
}

unsafe extern "C" fn on_closed(data: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the `Source` boxed in `start`; libuv no longer calls `on_readable`, and this is
        // the last use.
        let src = unsafe { Box::from_raw(data.cast::<Source>()) };
        // SAFETY: our dup; the hook handle from `start`, removed once (this also completes a
        // teardown that is waiting for us); `js` released on the environment's thread.
        unsafe {
            libc::close(src.fd);
            napi::remove_cleanup_hook(src.cleanup);
            if let Some(js) = src.js {
                js.release();
            }
        }
    }));
}

/// The environment is being torn down: close the handle (Node.js keeps the loop running until
/// `on_closed` removed the hook). Tasks still in the host's queue are the host's to free.
unsafe extern "C" fn on_teardown(_handle: RawCleanup, data: *mut c_void) {
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the live `Source` (the hook is removed before it is freed).
        let src = unsafe { &mut *data.cast::<Source>() };
        close(src);
    }));
}
