//! The only module that calls the host's C functions (lua-resty-ffi's three, this host's
//! `ngx_http_lua_ffi_task_cancelled` and `resty_ffi_log`, both looked up with dlsym so the
//! loader also runs on the real lua-resty-ffi).
//!
//! Ownership rules live here once: a [`Task`] is answered at most once ([`Task::respond`]
//! consumes it), responses are libc `malloc`ed ([`Response`]).

use std::ffi::{c_char, c_int, c_void};
use std::ptr::{self, NonNull};
use std::sync::OnceLock;

extern "C" {
    // Resolved at load time from the host library, which nginx loaded RTLD_GLOBAL before us.
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
}

/// nginx log levels (`resty_ffi_log` takes nginx's numbers).
pub const ALERT: c_int = 2;
pub const ERR: c_int = 4;
pub const WARN: c_int = 5;
pub const NOTICE: c_int = 6;
pub const INFO: c_int = 7;

/// The queue handed to `libffi_init`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Queue(NonNull<c_void>);

// SAFETY: the queue functions are thread-safe (the contract); who may poll is enforced by
// `registry`, which hands each queue to one poller at a time.
unsafe impl Send for Queue {}

impl Queue {
    pub fn new(tq: *mut c_void) -> Option<Queue> {
        NonNull::new(tq).map(Queue)
    }

    /// Blocks until the next task; `None` once the finish marker was consumed (the host then
    /// freed its side of the queue: it must not be polled again).
    ///
    /// # Safety
    /// The queue is live (its poll has not returned NULL yet) and the caller is its only
    /// poller.
    pub unsafe fn poll(self) -> Option<Task> {
        // SAFETY: the caller's contract.
        NonNull::new(unsafe { ngx_http_lua_ffi_task_poll(self.0.as_ptr()) }).map(Task)
    }
}

/// What [`Queue::try_poll`] found.
pub enum TryPoll {
    Task(Task),
    Empty,
    /// The finish marker: the queue must not be touched again.
    Finished,
}

/// This host's asynchronous polling (`resty_ffi_task_poll_fd`, `_try_poll`, `_arm`), so an
/// event loop can wait for tasks on an eventfd instead of a thread blocking in
/// `ngx_http_lua_ffi_task_poll`. `None` on a host without it (the real lua-resty-ffi).
pub struct AsyncPoll {
    poll_fd: unsafe extern "C" fn(*mut c_void) -> c_int,
    try_poll: unsafe extern "C" fn(*mut c_void, *mut c_int) -> *mut c_void,
    arm: unsafe extern "C" fn(*mut c_void) -> c_int,
}

impl AsyncPoll {
    pub fn get() -> Option<&'static AsyncPoll> {
        static API: OnceLock<Option<AsyncPoll>> = OnceLock::new();
        API.get_or_init(|| {
            let (fd, try_poll, arm) = (
                dlsym(c"resty_ffi_task_poll_fd"),
                dlsym(c"resty_ffi_task_try_poll"),
                dlsym(c"resty_ffi_task_arm"),
            );
            if fd.is_null() || try_poll.is_null() || arm.is_null() {
                return None;
            }
            // SAFETY: the host exports them with these signatures (host/src/ffi.rs); function
            // and data pointers have the same size on Linux.
            Some(unsafe {
                AsyncPoll {
                    poll_fd: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(*mut c_void) -> c_int,
                    >(fd),
                    try_poll: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(*mut c_void, *mut c_int) -> *mut c_void,
                    >(try_poll),
                    arm: std::mem::transmute::<
                        *mut c_void,
                        unsafe extern "C" fn(*mut c_void) -> c_int,
                    >(arm),
                }
            })
        })
        .as_ref()
    }

    /// The queue's eventfd (closed with the queue: watch a dup).
    ///
    /// # Safety
    /// As [`Queue::poll`]: a live queue, polled by the caller only.
    pub unsafe fn fd(&self, q: Queue) -> c_int {
        // SAFETY: the caller's contract.
        unsafe { (self.poll_fd)(q.0.as_ptr()) }
    }

    /// The next item without waiting.
    ///
    /// # Safety
    /// As [`Queue::poll`].
    pub unsafe fn try_poll(&self, q: Queue) -> TryPoll {
        let mut finished: c_int = 0;
        // SAFETY: the caller's contract; `finished` is writable.
        let t = unsafe { (self.try_poll)(q.0.as_ptr(), &mut finished) };
        match NonNull::new(t) {
            Some(t) => TryPoll::Task(Task(t)),
            None if finished != 0 => TryPoll::Finished,
            None => TryPoll::Empty,
        }
    }

    /// About to wait on the eventfd: true means wait (the next post makes it readable), false
    /// means an item is already queued.
    ///
    /// # Safety
    /// As [`Queue::poll`].
    pub unsafe fn arm(&self, q: Queue) -> bool {
        // SAFETY: the caller's contract.
        unsafe { (self.arm)(q.0.as_ptr()) == 1 }
    }
}

/// A polled, unanswered task.
#[derive(Debug)]
pub struct Task(NonNull<c_void>);

// SAFETY: `get_req`, `respond` and `task_cancelled` are thread-safe; `Task` is not `Clone`, so
// one owner answers it.
unsafe impl Send for Task {}

impl Task {
    /// The request bytes; `None` for a nil request. Valid until the task is answered, which
    /// takes `self` by value.
    pub fn request(&self) -> Option<&[u8]> {
        let mut len: c_int = 0;
        // SAFETY: a polled, unanswered task; `len` is writable.
        let req = unsafe { ngx_http_lua_ffi_get_req(self.0.as_ptr(), &mut len) };
        if req.is_null() {
            return None;
        }
        // SAFETY: the host keeps `len` bytes at `req` until the task is answered; the slice
        // borrows `self`.
        Some(unsafe { std::slice::from_raw_parts(req.cast(), usize::try_from(len).unwrap_or(0)) })
    }

    /// 1 from the host's `ngx_http_lua_ffi_task_cancelled`: nobody waits for the answer any
    /// more (the call timed out or its request was aborted). False on a host without it.
    pub fn cancelled(&self) -> bool {
        static CANCELLED: OnceLock<Option<unsafe extern "C" fn(*mut c_void) -> c_int>> =
            OnceLock::new();
        let probe = CANCELLED.get_or_init(|| {
            let sym = dlsym(c"ngx_http_lua_ffi_task_cancelled");
            // SAFETY: the host exports it as `int (void *task)`; function and data pointers have
            // the same size on Linux.
            (!sym.is_null()).then(|| unsafe {
                std::mem::transmute::<*mut c_void, unsafe extern "C" fn(*mut c_void) -> c_int>(sym)
            })
        });
        // SAFETY: the host's function, on a polled, unanswered task.
        probe.is_some_and(|f| unsafe { f(self.0.as_ptr()) } == 1)
    }

    /// Answers the task, handing the response buffer to the host.
    pub fn respond(self, rc: c_int, rsp: Response) {
        let task = self.0;
        std::mem::forget(self);
        let (p, len) = rsp.into_raw();
        // SAFETY: answered once (`self` is forgotten, so Drop does not answer again); `p` is
        // NULL or malloc'd, owned by the host from here on.
        unsafe { ngx_http_lua_ffi_respond(task.as_ptr(), rc, p, len) };
    }
}

/// rc of a task dropped without an answer (a bug or a panic on the way): Lua sees
/// `false, -1, nil` instead of waiting forever.
pub const RC_ABANDONED: c_int = -1;

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: an unanswered task (respond forgets `self`), answered here once.
        unsafe { ngx_http_lua_ffi_respond(self.0.as_ptr(), RC_ABANDONED, ptr::null_mut(), 0) };
    }
}

/// A response: NULL, or a buffer from libc `malloc` that the host frees.
pub struct Response {
    ptr: *mut c_char,
    len: c_int,
}

/// The response is larger than a C `int` or `malloc` failed.
#[derive(Debug)]
pub struct TooLarge;

impl Response {
    /// NULL: Lua sees `nil`.
    pub fn nil() -> Response {
        Response {
            ptr: ptr::null_mut(),
            len: 0,
        }
    }

    /// A malloc'd buffer of `len` bytes and a NUL after them (so an empty body is the empty
    /// string under the `rsp_len == 0` C-string rule). `fill` gets all `len + 1` bytes; the
    /// last is set to NUL after it.
    pub fn with_len(len: usize, fill: impl FnOnce(&mut [u8])) -> Result<Response, TooLarge> {
        let n = c_int::try_from(len).map_err(|_| TooLarge)?;
        // SAFETY: malloc has no preconditions; NULL is handled.
        let p = unsafe { libc::malloc(len + 1) }.cast::<u8>();
        if p.is_null() {
            return Err(TooLarge);
        }
        // SAFETY: `p` has `len + 1` writable bytes, owned by us until handed over; zeroed first
        // so the slice is initialized.
        let buf = unsafe {
            ptr::write_bytes(p, 0, len + 1);
            std::slice::from_raw_parts_mut(p, len + 1)
        };
        fill(buf);
        buf[len] = 0;
        Ok(Response {
            ptr: p.cast(),
            len: n,
        })
    }

    pub fn copy(bytes: &[u8]) -> Result<Response, TooLarge> {
        Response::with_len(bytes.len(), |b| b[..bytes.len()].copy_from_slice(bytes))
    }

    fn into_raw(self) -> (*mut c_char, c_int) {
        let raw = (self.ptr, self.len);
        std::mem::forget(self);
        raw
    }
}

impl Drop for Response {
    fn drop(&mut self) {
        // SAFETY: NULL or our malloc'd buffer, not handed over (into_raw forgets `self`).
        unsafe { libc::free(self.ptr.cast()) };
    }
}

fn dlsym(name: &std::ffi::CStr) -> *mut c_void {
    // SAFETY: NUL-terminated name; RTLD_DEFAULT searches the global scope only.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr()) }
}

/// Writes a line to nginx's error log through the host's `resty_ffi_log` (any thread), or to
/// stderr (which nginx points at its error log) as `[level] msg` on a host without it.
pub fn log(level: c_int, msg: &str) {
    type LogFn = unsafe extern "C" fn(c_int, *const c_char, usize) -> c_int;
    static LOG: OnceLock<Option<LogFn>> = OnceLock::new();
    let f = LOG.get_or_init(|| {
        let sym = dlsym(c"resty_ffi_log");
        // SAFETY: the host exports `int resty_ffi_log(int, const char *, size_t)`.
        (!sym.is_null()).then(|| unsafe { std::mem::transmute::<*mut c_void, LogFn>(sym) })
    });
    if let Some(f) = f {
        // SAFETY: `msg` is `len` readable bytes; the function copies them. A line the host
        // drops (its list is full) is counted and reported by the host.
        unsafe { f(level, msg.as_ptr().cast(), msg.len()) };
        return;
    }
    let name = match level {
        ALERT => "alert",
        ERR => "error",
        WARN => "warn",
        NOTICE => "notice",
        INFO => "info",
        _ => "debug",
    };
    eprintln!("[{name}] {msg}");
}
