//! The only module that touches lua-resty-ffi's C functions.
//!
//! It turns the contract's ownership rules into types, so the rest of the crate cannot break them:
//!
//! | rule | enforced by |
//! |---|---|
//! | one poller thread per queue | [`Queue`] is `Send` but not `Clone`/`Sync`, and [`Queue::poll`] takes `&mut self` |
//! | after `task_poll` returned NULL, never touch `tq` again | [`Queue::poll`] consumes the handle's validity: it returns `None` forever after |
//! | respond exactly once | [`Task::respond`] consumes the task; dropping an unanswered task answers it with [`RC_ABANDONED`] |
//! | the request lives until `respond` | [`Task::request`] borrows the task |
//! | the response is libc `malloc`ed | [`Response`] owns a malloc'd buffer and hands it over in `respond`, or frees it on drop |

use std::os::raw::{c_char, c_int, c_void};
use std::ptr::{self, NonNull};

/// rc sent for a task that was dropped without an answer (a panic unwound past it, or the runtime
/// gave up on it). Lua sees `false, -1, nil`.
pub const RC_ABANDONED: c_int = -1;
/// rc sent when the response buffer could not be allocated.
pub const RC_NO_MEMORY: c_int = -2;

#[cfg(not(test))]
extern "C" {
    // Resolved at load time from the host library, which was loaded RTLD_GLOBAL before us.
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
}

#[cfg(test)]
use mock::{ngx_http_lua_ffi_get_req, ngx_http_lua_ffi_respond, ngx_http_lua_ffi_task_poll};

/// Signature of the optional host extension `int ngx_http_lua_ffi_task_cancelled(void *task)`.
pub type CancelledFn = unsafe extern "C" fn(task: *mut c_void) -> c_int;

/// Looks up the host extension `ngx_http_lua_ffi_task_cancelled` at run time, so that this library
/// still loads on the real lua-resty-ffi, which does not have it.
pub fn lookup_cancelled() -> Option<CancelledFn> {
    const NAME: &[u8] = b"ngx_http_lua_ffi_task_cancelled\0";
    // SAFETY: NAME is NUL-terminated; dlsym with RTLD_DEFAULT only reads the global symbol table.
    let sym = unsafe { libc::dlsym(libc::RTLD_DEFAULT, NAME.as_ptr().cast()) };
    if sym.is_null() {
        None
    } else {
        // SAFETY: the symbol is a function with the contract's extension signature
        // `int (void *)`; function and data pointers have the same size on every Linux target.
        Some(unsafe { std::mem::transmute::<*mut c_void, CancelledFn>(sym) })
    }
}

/// The task queue handed to `libffi_init`.
pub struct Queue {
    tq: Option<NonNull<c_void>>,
}

// SAFETY: the contract makes `task_poll` thread-safe and asks for one poller thread per queue;
// `Queue` is not `Clone` or `Sync` and `poll` takes `&mut self`, so moving it to that one
// thread is exactly what the contract expects.
unsafe impl Send for Queue {}

impl Queue {
    /// Wraps the `tq` argument of `libffi_init`; `None` when it is NULL.
    ///
    /// # Safety
    ///
    /// `tq` must be the queue pointer the host passed to `libffi_init`, not yet finished, and no
    /// other `Queue` may wrap it.
    pub unsafe fn from_raw(tq: *mut c_void) -> Option<Queue> {
        NonNull::new(tq).map(|tq| Queue { tq: Some(tq) })
    }

    /// Blocks until the next task; `None` once the finish marker was consumed (the host then has
    /// freed the queue, so every later call returns `None` without touching it).
    pub fn poll(&mut self) -> Option<Task> {
        let tq = self.tq?;
        // SAFETY: `tq` is the live queue (from_raw's contract) and has not returned NULL yet
        // (we forget it below when it does); this is the queue's single poller.
        let task = unsafe { ngx_http_lua_ffi_task_poll(tq.as_ptr()) };
        match NonNull::new(task) {
            Some(task) => Some(Task { task }),
            None => {
                self.tq = None;
                None
            }
        }
    }
}

/// One polled task. Answered exactly once: by [`Task::respond`], or by `Drop` with
/// [`RC_ABANDONED`].
pub struct Task {
    task: NonNull<c_void>,
}

// SAFETY: `get_req` and `respond` are thread-safe per the contract, and a task may be answered
// from any thread; `Task` is not `Clone`, so only one thread owns it at a time.
unsafe impl Send for Task {}

impl Task {
    /// The request bytes; `None` when Lua passed nil.
    pub fn request(&self) -> Option<&[u8]> {
        let mut len: c_int = 0;
        // SAFETY: `self.task` was returned by `task_poll` and not answered yet (respond consumes
        // `self`); `len` is a valid out-pointer.
        let req = unsafe { ngx_http_lua_ffi_get_req(self.task.as_ptr(), &mut len) };
        if req.is_null() {
            return None;
        }
        let len = usize::try_from(len).unwrap_or(0);
        // SAFETY: the host keeps a malloc'd copy of `len` bytes at `req` until the task is
        // answered, and the returned slice borrows `self`, which `respond` consumes.
        Some(unsafe { std::slice::from_raw_parts(req.cast::<u8>(), len) })
    }

    /// Asks the host extension whether the waiting request was aborted.
    pub fn is_cancelled(&self, probe: CancelledFn) -> bool {
        // SAFETY: `probe` is the host's `ngx_http_lua_ffi_task_cancelled` (or a test double) and
        // `self.task` is a live, unanswered task.
        unsafe { probe(self.task.as_ptr()) == 1 }
    }

    /// Answers the task, handing the response buffer to the host.
    pub fn respond(self, rc: c_int, rsp: Response) {
        let task = self.task;
        std::mem::forget(self);
        let (ptr, len) = rsp.into_raw();
        // SAFETY: `task` is live and answered here for the first and only time (`self` is
        // forgotten, so Drop will not answer it again); `ptr` is NULL or a libc malloc'd buffer
        // whose ownership passes to the host, which frees it.
        unsafe { ngx_http_lua_ffi_respond(task.as_ptr(), rc, ptr, len) };
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: an unanswered task (respond forgets `self`); answering it here keeps
        // "exactly once" true even when a panic unwinds past a task.
        unsafe { ngx_http_lua_ffi_respond(self.task.as_ptr(), RC_ABANDONED, ptr::null_mut(), 0) };
    }
}

/// A response body: NULL, or a buffer from libc `malloc` that the host will `free`.
pub struct Response {
    ptr: Option<NonNull<c_char>>,
    len: c_int,
}

// SAFETY: the buffer is plain malloc'd memory owned by this value alone.
unsafe impl Send for Response {}

/// `malloc` returned NULL, or the body is longer than a C `int`.
#[derive(Debug)]
pub struct AllocError;

impl Response {
    /// NULL, 0: Lua sees `nil`.
    pub fn nil() -> Response {
        Response { ptr: None, len: 0 }
    }

    /// A malloc'd copy of `bytes` with its real length. A NUL follows the copy, so an empty body
    /// (which the host reads as a C string because its length is 0) is the empty string.
    pub fn bytes(bytes: &[u8]) -> Result<Response, AllocError> {
        let len = c_int::try_from(bytes.len()).map_err(|_| AllocError)?;
        Ok(Response {
            ptr: Some(malloc_copy(bytes)?),
            len,
        })
    }

    /// A NUL-terminated malloc'd copy with length 0 (the C-string convention: the host uses
    /// `strlen`, so the body ends at the first NUL).
    pub fn c_str(bytes: &[u8]) -> Result<Response, AllocError> {
        Ok(Response {
            ptr: Some(malloc_copy(bytes)?),
            len: 0,
        })
    }

    fn into_raw(self) -> (*mut c_char, c_int) {
        let raw = (self.ptr.map_or(ptr::null_mut(), NonNull::as_ptr), self.len);
        std::mem::forget(self);
        raw
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        if let Some(ptr) = self.ptr {
            // SAFETY: `ptr` came from libc malloc in `malloc_copy` and was not handed over
            // (into_raw forgets `self`).
            unsafe { libc::free(ptr.as_ptr().cast()) };
        }
    }
}

/// `malloc(len + 1)`, copy, NUL-terminate.
fn malloc_copy(bytes: &[u8]) -> Result<NonNull<c_char>, AllocError> {
    let size = bytes.len().checked_add(1).ok_or(AllocError)?;
    // SAFETY: malloc has no preconditions; NULL is handled below.
    let ptr = NonNull::new(unsafe { libc::malloc(size) }.cast::<u8>()).ok_or(AllocError)?;
    // SAFETY: `ptr` points to `size = len + 1` writable bytes that do not overlap `bytes`.
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr(), ptr.as_ptr(), bytes.len());
        ptr.as_ptr().add(bytes.len()).write(0);
    }
    Ok(ptr.cast())
}

/// A fake host for unit tests: the same three functions over an in-process queue.
#[cfg(test)]
pub(crate) mod mock {
    use std::collections::VecDeque;
    use std::ffi::CStr;
    use std::os::raw::{c_char, c_int, c_void};
    use std::sync::{Condvar, Mutex};
    use std::time::{Duration, Instant};

    /// What the runtime answered for one task.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Answer {
        pub id: usize,
        pub rc: c_int,
        /// The body as the host reads it (`strlen` when the length is 0); `None` for NULL.
        pub body: Option<Vec<u8>>,
        pub raw_len: c_int,
        /// Time from the poll of the task to its answer.
        pub latency: Duration,
    }

    pub struct MockTask {
        id: usize,
        req: Option<Vec<u8>>,
        /// Address of the owning `MockQueue` (an integer keeps the task `Send`).
        queue: usize,
        polled_at: Mutex<Option<Instant>>,
        answered: Mutex<bool>,
    }

    #[derive(Default)]
    pub struct MockQueue {
        pending: Mutex<VecDeque<Option<Box<MockTask>>>>,
        pending_cv: Condvar,
        answers: Mutex<Vec<Answer>>,
        answers_cv: Condvar,
        finished: Mutex<bool>,
    }

    impl MockQueue {
        /// Queues a request (`None` = Lua nil) under `id`.
        pub fn post(&self, id: usize, req: Option<&[u8]>) {
            let task = Box::new(MockTask {
                id,
                req: req.map(|r| {
                    let mut v = r.to_vec();
                    v.push(0);
                    v
                }),
                queue: self as *const MockQueue as usize,
                polled_at: Mutex::new(None),
                answered: Mutex::new(false),
            });
            self.pending.lock().unwrap().push_back(Some(task));
            self.pending_cv.notify_one();
        }

        /// Queues the finish marker.
        pub fn finish(&self) {
            self.pending.lock().unwrap().push_back(None);
            self.pending_cv.notify_one();
        }

        pub fn is_finished(&self) -> bool {
            *self.finished.lock().unwrap()
        }

        /// Waits until `n` answers arrived (or 10 s passed) and returns them sorted by id.
        pub fn wait_answers(&self, n: usize) -> Vec<Answer> {
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut answers = self.answers.lock().unwrap();
            while answers.len() < n && Instant::now() < deadline {
                answers = self
                    .answers_cv
                    .wait_timeout(answers, Duration::from_millis(50))
                    .unwrap()
                    .0;
            }
            let mut out = answers.clone();
            out.sort_by_key(|a| a.id);
            out
        }
    }

    /// # Safety
    ///
    /// `tq` must point to a live `MockQueue`.
    pub unsafe extern "C" fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void {
        // SAFETY: caller's contract.
        let q = unsafe { &*(tq as *const MockQueue) };
        let mut pending = q.pending.lock().unwrap();
        loop {
            match pending.pop_front() {
                Some(Some(task)) => {
                    *task.polled_at.lock().unwrap() = Some(Instant::now());
                    return Box::into_raw(task).cast();
                }
                Some(None) => {
                    *q.finished.lock().unwrap() = true;
                    return std::ptr::null_mut();
                }
                None => pending = q.pending_cv.wait(pending).unwrap(),
            }
        }
    }

    /// # Safety
    ///
    /// `task` must be an unanswered task from `ngx_http_lua_ffi_task_poll`; `len` NULL or valid.
    pub unsafe extern "C" fn ngx_http_lua_ffi_get_req(
        task: *mut c_void,
        len: *mut c_int,
    ) -> *mut c_char {
        // SAFETY: caller's contract.
        let t = unsafe { &*(task as *const MockTask) };
        assert!(!*t.answered.lock().unwrap(), "get_req after respond");
        let (ptr, n) = match &t.req {
            Some(v) => (v.as_ptr() as *mut c_char, (v.len() - 1) as c_int),
            None => (std::ptr::null_mut(), 0),
        };
        if !len.is_null() {
            // SAFETY: caller's contract.
            unsafe { *len = n };
        }
        ptr
    }

    /// # Safety
    ///
    /// `task` must be an unanswered task from `ngx_http_lua_ffi_task_poll`; `rsp` NULL or malloc'd.
    pub unsafe extern "C" fn ngx_http_lua_ffi_respond(
        task: *mut c_void,
        rc: c_int,
        rsp: *mut c_char,
        rsp_len: c_int,
    ) {
        // SAFETY: caller's contract; the box is reclaimed once, here.
        let t = unsafe { Box::from_raw(task as *mut MockTask) };
        {
            let mut answered = t.answered.lock().unwrap();
            assert!(!*answered, "task answered twice");
            *answered = true;
        }
        let body = if rsp.is_null() {
            None
        } else if rsp_len == 0 {
            // SAFETY: the C-string convention: NUL-terminated.
            Some(unsafe { CStr::from_ptr(rsp) }.to_bytes().to_vec())
        } else {
            // SAFETY: `rsp` holds `rsp_len` bytes.
            Some(unsafe { std::slice::from_raw_parts(rsp as *const u8, rsp_len as usize) }.to_vec())
        };
        if !rsp.is_null() {
            // SAFETY: the contract says `rsp` is libc malloc'd; freeing a Rust allocation here
            // would crash the test.
            unsafe { libc::free(rsp.cast()) };
        }
        let latency = t.polled_at.lock().unwrap().unwrap().elapsed();
        // SAFETY: the queue outlives its tasks in every test.
        let q = unsafe { &*(t.queue as *const MockQueue) };
        q.answers.lock().unwrap().push(Answer {
            id: t.id,
            rc,
            body,
            raw_len: rsp_len,
            latency,
        });
        q.answers_cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::mock::MockQueue;
    use super::*;

    /// Posts one request and polls it back through the real wrappers.
    fn one_task(q: &MockQueue, req: &[u8]) -> (Queue, Task) {
        q.post(0, Some(req));
        // SAFETY: a live mock queue, wrapped once.
        let mut queue = unsafe { Queue::from_raw(q as *const MockQueue as *mut c_void) }.unwrap();
        let task = queue.poll().unwrap();
        (queue, task)
    }

    #[test]
    fn dropped_task_is_answered_once_as_abandoned() {
        let q = MockQueue::default();
        let (_queue, task) = one_task(&q, b"x");
        assert_eq!(task.request(), Some(&b"x"[..]));
        drop(task);
        let a = q.wait_answers(1);
        assert_eq!(
            (a.len(), a[0].rc, a[0].body.clone()),
            (1, RC_ABANDONED, None)
        );
    }

    #[test]
    fn cancel_probe_is_asked() {
        unsafe extern "C" fn always(_task: *mut c_void) -> c_int {
            1
        }
        unsafe extern "C" fn never(_task: *mut c_void) -> c_int {
            0
        }
        let q = MockQueue::default();
        let (_queue, task) = one_task(&q, b"y");
        assert!(task.is_cancelled(always));
        assert!(!task.is_cancelled(never));
        task.respond(0, Response::bytes(b"y").unwrap());
        assert_eq!(q.wait_answers(1)[0].body.as_deref(), Some(&b"y"[..]));
    }

    #[test]
    fn finished_queue_is_never_polled_again() {
        let q = MockQueue::default();
        q.finish();
        // SAFETY: a live mock queue, wrapped once.
        let mut queue = unsafe { Queue::from_raw(&q as *const MockQueue as *mut c_void) }.unwrap();
        assert!(queue.poll().is_none());
        // A second poll would block forever on the mock if it reached the host.
        assert!(queue.poll().is_none());
        assert!(q.is_finished());
    }

    #[test]
    fn no_cancel_extension_in_a_plain_process() {
        assert!(lookup_cancelled().is_none());
    }

    #[test]
    fn unsent_response_is_freed() {
        // Exercised under the system allocator's checks (and valgrind/ASan when run there).
        drop(Response::bytes(b"abc").unwrap());
        drop(Response::c_str(b"").unwrap());
        drop(Response::nil());
    }
}
