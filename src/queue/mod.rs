//! The runtime's side of the lua-resty-ffi contract: the only module that calls
//! `ngx_http_lua_ffi_task_poll`, `ngx_http_lua_ffi_get_req` and `ngx_http_lua_ffi_respond`, and
//! the place where their ownership rules are enforced once:
//!
//! - a polled [`Task`] is answered exactly once: [`Task::respond`] consumes it, and dropping an
//!   unanswered task answers it with [`RC_DROPPED`];
//! - responses are copied into libc `malloc` memory (the host frees them with `free`);
//! - the request bytes are borrowed from the task and cannot outlive it.
//!
//! Requests and responses of this runtime are 16-byte [`Desc`]riptors pointing into the arena.
//!
//! - `host.rs`: the exports of this project's host that lua-resty-ffi's lacks (asynchronous
//!   polling, the log), found with `dlsym` once;
//! - `ready.rs`: the queue's eventfd as an awaitable "readable" for the poll thread's event loop.

pub(crate) mod host;
mod ready;

pub use ready::Readable;

use std::ffi::{c_char, c_int, c_void};
use std::ptr::{self, NonNull};

extern "C" {
    fn ngx_http_lua_ffi_task_poll(tq: *mut c_void) -> *mut c_void;
    fn ngx_http_lua_ffi_get_req(task: *mut c_void, len: *mut c_int) -> *mut c_char;
    fn ngx_http_lua_ffi_respond(task: *mut c_void, rc: c_int, rsp: *mut c_char, rsp_len: c_int);
}

/// rc of a task dropped without an answer (a bug or a panic on the way).
pub const RC_DROPPED: c_int = -1;

/// The queue handed to `libffi_init`, owned by the thread that polls it.
pub struct TaskQueue {
    tq: *mut c_void,
}

// SAFETY: the host's queue is thread-safe (contract: "all three are thread-safe"); it is polled
// by the one thread that owns this value.
unsafe impl Send for TaskQueue {}

impl TaskQueue {
    /// # Safety
    /// `tq` is the queue pointer given to `libffi_init`, polled only through this value.
    pub unsafe fn new(tq: *mut c_void) -> Option<TaskQueue> {
        (!tq.is_null()).then_some(TaskQueue { tq })
    }

    /// Blocks for the next task; `None` once the finish marker is consumed. The host frees the
    /// queue then, so every later call returns `None` without touching it.
    pub fn poll(&mut self) -> Option<Task> {
        if self.tq.is_null() {
            return None;
        }
        // SAFETY: the queue is live until poll returns NULL; after that `tq` is cleared.
        let t = unsafe { ngx_http_lua_ffi_task_poll(self.tq) };
        let task = NonNull::new(t).map(Task);
        if task.is_none() {
            self.tq = ptr::null_mut();
        }
        task
    }
}

/// What [`TaskQueue::try_poll`] found.
pub enum TryPoll {
    Task(Task),
    Empty,
    /// The finish marker was consumed: the queue is gone.
    Finished,
}

impl TaskQueue {
    /// The host's eventfd for asynchronous polling, when the host offers that protocol (see
    /// `resty_ffi_task_poll_fd` in host/src/ffi.rs): readable after [`TaskQueue::arm`] returned
    /// true and a task was posted. The host owns it.
    pub fn poll_fd(&self) -> Option<std::os::fd::RawFd> {
        let ops = host::async_poll()?;
        if self.tq.is_null() {
            return None;
        }
        // SAFETY: the queue is live (not finished).
        let fd = unsafe { (ops.poll_fd)(self.tq) };
        (fd >= 0).then_some(fd)
    }

    /// The next task without waiting (asynchronous protocol; only after `poll_fd` returned
    /// `Some`).
    pub fn try_poll(&mut self) -> TryPoll {
        let (Some(ops), false) = (host::async_poll(), self.tq.is_null()) else {
            return TryPoll::Finished;
        };
        let mut finished: c_int = 0;
        // SAFETY: the queue is live until the marker is consumed; `finished` is a live int.
        let t = unsafe { (ops.try_poll)(self.tq, &mut finished) };
        match NonNull::new(t) {
            Some(t) => TryPoll::Task(Task(t)),
            None if finished != 0 => {
                self.tq = ptr::null_mut();
                TryPoll::Finished
            }
            None => TryPoll::Empty,
        }
    }

    /// About to wait on the eventfd: true means wait, false means a task is already queued.
    pub fn arm(&self) -> bool {
        let (Some(ops), false) = (host::async_poll(), self.tq.is_null()) else {
            return false;
        };
        // SAFETY: the queue is live.
        unsafe { (ops.arm)(self.tq) != 0 }
    }

    /// Spins up to the queue's poll spin for a task; true if one is queued.
    pub fn spin_poll(&self) -> bool {
        let (Some(ops), false) = (host::async_poll(), self.tq.is_null()) else {
            return false;
        };
        // SAFETY: the queue is live.
        unsafe { (ops.spin_poll)(self.tq) != 0 }
    }
}

/// The calling thread's answers, held: while a `HeldWakes` lives, the answers this thread gives
/// wake nginx's main thread only at [`HeldWakes::flush`] (one write for all of them) and when
/// it is dropped. Without the host's batching (lua-resty-ffi's host) answers wake at once.
pub struct HeldWakes(Option<host::WakeBatch>);

impl HeldWakes {
    /// Holds the calling thread's wake-ups until the next flush.
    pub fn hold() -> HeldWakes {
        let batch = host::wake_batch();
        if let Some(b) = batch {
            // SAFETY: the host's function takes any int and only touches this thread's state.
            unsafe { (b.hold)(1) };
        }
        HeldWakes(batch)
    }

    /// Gives the wake-up the answers since the last flush need (none if they need none).
    pub fn flush(&self) {
        flush_wakes(self.0);
    }

    /// What [`HeldWakes::flush`] does, for code that does not hold the `HeldWakes` (the event
    /// loop's park hook on the same thread).
    pub fn flusher() -> impl Fn() + Send + Sync + 'static {
        let batch = host::wake_batch();
        move || flush_wakes(batch)
    }
}

fn flush_wakes(batch: Option<host::WakeBatch>) {
    if let Some(b) = batch {
        // SAFETY: the host's function takes no arguments and only touches this thread's state.
        unsafe { (b.flush)() };
    }
}

impl Drop for HeldWakes {
    fn drop(&mut self) {
        if let Some(b) = self.0 {
            // SAFETY: as in `hold`.
            unsafe { (b.hold)(0) };
        }
    }
}

/// A polled task, answered exactly once.
pub struct Task(NonNull<c_void>);

// SAFETY: a task may be answered from any thread (contract).
unsafe impl Send for Task {}

impl Task {
    /// The request bytes (empty for a nil request), valid until the task is answered.
    pub fn request(&self) -> &[u8] {
        let mut len: c_int = 0;
        // SAFETY: the task is polled and unanswered; `len` is a live int.
        let p = unsafe { ngx_http_lua_ffi_get_req(self.0.as_ptr(), &mut len) };
        if p.is_null() || len <= 0 {
            return &[];
        }
        // SAFETY: the host keeps `len` bytes at `p` alive until the task is answered, which
        // needs `self` by value, so the borrow cannot outlive it.
        unsafe { std::slice::from_raw_parts(p as *const u8, len as usize) }
    }

    /// Answers with `rc` and a copy of `rsp` in malloc'd memory (NULL for `None`).
    pub fn respond(self, rc: c_int, rsp: Option<&[u8]>) {
        let (p, len) = match rsp {
            None => (ptr::null_mut(), 0),
            Some(bytes) => match malloc_copy(bytes) {
                Some(p) => (p, bytes.len() as c_int),
                None => (ptr::null_mut(), 0),
            },
        };
        let t = self.0.as_ptr();
        std::mem::forget(self);
        // SAFETY: the task is polled and answered once here (`self` is consumed and its Drop
        // skipped); `p` is NULL or malloc'd memory whose ownership passes to the host. A
        // zero-length response is sent with a NUL-terminated buffer, so the host's "len 0 means
        // C string" rule reads it as empty.
        unsafe { ngx_http_lua_ffi_respond(t, rc, p, len) };
    }

    /// Answers with an error text (`rc != 0`), as a NUL-terminated string.
    pub fn respond_error(self, rc: c_int, msg: &str) {
        self.respond(rc, Some(msg.as_bytes()));
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        // SAFETY: an unanswered task (respond() forgets self) is answered once, here.
        unsafe { ngx_http_lua_ffi_respond(self.0.as_ptr(), RC_DROPPED, ptr::null_mut(), 0) };
    }
}

/// A malloc'd copy of `bytes` with a NUL after them.
fn malloc_copy(bytes: &[u8]) -> Option<*mut c_char> {
    // SAFETY: malloc has no preconditions; checked for NULL.
    let p = unsafe { libc::malloc(bytes.len() + 1) } as *mut u8;
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` has room for len + 1 bytes and does not overlap `bytes`.
    unsafe {
        ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
        *p.add(bytes.len()) = 0;
    }
    Some(p as *mut c_char)
}

/// The 16-byte descriptor that travels through the host queue in both directions: an arena slot
/// (`slot_offset`, `slot_gen`) and the FlatBuffer inside it (`buf_offset` from the slot start,
/// `buf_len`). Little-endian `u32`s, in this order; `lua/resty/grpc_zc/lib.lua` declares the same
/// layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Desc {
    pub slot_offset: u32,
    pub slot_gen: u32,
    pub buf_offset: u32,
    pub buf_len: u32,
}

impl Desc {
    /// Encoded size.
    pub const LEN: usize = 16;

    /// Decodes a request; `None` unless exactly [`Desc::LEN`] bytes.
    pub fn decode(b: &[u8]) -> Option<Desc> {
        if b.len() != Self::LEN {
            return None;
        }
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Some(Desc {
            slot_offset: u(0),
            slot_gen: u(4),
            buf_offset: u(8),
            buf_len: u(12),
        })
    }

    /// Encodes for a response.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        for (i, v) in [
            self.slot_offset,
            self.slot_gen,
            self.buf_offset,
            self.buf_len,
        ]
        .into_iter()
        .enumerate()
        {
            out[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desc_roundtrip() {
        let d = Desc {
            slot_offset: 0x0102_0304,
            slot_gen: 7,
            buf_offset: 24,
            buf_len: 1 << 20,
        };
        assert_eq!(Desc::decode(&d.encode()), Some(d));
        assert_eq!(Desc::decode(&[0; 15]), None);
        assert_eq!(Desc::decode(&[0; 17]), None);
    }
}
