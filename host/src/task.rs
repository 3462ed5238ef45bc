//! One call in flight: the request copy, the response, and who owns the task right now.
//!
//! A task is created on the nginx main thread by `post`, handed to the runtime through the queue,
//! answered once by `respond` on any runtime thread, and freed on the main thread when both sides
//! are done with it. Ownership is a small state machine in one atomic byte:
//!
//! ```text
//!            respond                          Lua sees DONE_DIRECT, reads, releases → free
//!   SPIN ─────────────────► DONE_DIRECT
//!    │ Lua stops spinning
//!    ▼      respond                handler posts the semaphore         Lua reads, releases → free
//!   WAIT ─────────────────► DONE_QUEUED ─────────────────────► DELIVERED
//!    │ Lua releases                 │ Lua releases (timeout raced the answer)
//!    ▼      respond                 ▼
//! ABANDONED ──────────────► DONE_ABANDONED ── handler frees
//! ```
//!
//! Only `respond` runs off the main thread, and it only ever moves a task out of `SPIN`, `WAIT`
//! or `ABANDONED`; every other transition happens on the main thread. So the only race is between
//! `respond` and the main thread leaving `SPIN`/`WAIT`, and a compare-and-swap settles it.

use std::cell::UnsafeCell;
use std::ffi::{c_char, c_int, c_void};
use std::ptr;
use std::sync::atomic::{AtomicU8, Ordering};

pub(crate) const SPIN: u8 = 0;
pub(crate) const WAIT: u8 = 1;
pub(crate) const ABANDONED: u8 = 2;
pub(crate) const DONE_DIRECT: u8 = 3;
pub(crate) const DONE_QUEUED: u8 = 4;
pub(crate) const DONE_ABANDONED: u8 = 5;
pub(crate) const DELIVERED: u8 = 6;

/// What `respond` found, which tells it whether the main thread must be woken.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answered {
    /// Lua is spinning on this task and will see the answer itself.
    Direct,
    /// The task must go on the done list for the event handler.
    Queue,
}

/// What the main thread does with a task taken from the done list.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Lua waits on the task's semaphore: post it.
    Wake,
    /// Lua is gone: free the task.
    Free,
}

/// What `release` (Lua dropping its reference) must do.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Release {
    /// Both sides are done: free the task now.
    Free,
    /// The runtime still holds it (or the handler has yet to see it); it frees the task later.
    Later,
}

/// The answer fields, written once by the responding thread before the state is published.
struct Answer {
    rc: c_int,
    rsp: *mut c_char,
    rsp_len: usize,
}

/// A call in flight. Heap-allocated by [`Task::new`]; its address is the `void *task` of the
/// lua-resty-ffi contract.
pub struct Task {
    state: AtomicU8,
    /// malloc'd, NUL-terminated copy of the request (NULL when Lua passed nil).
    req: *mut c_char,
    req_len: usize,
    answer: UnsafeCell<Answer>,
    /// The semaphore Lua waits on once it stops spinning; created and freed on the main thread.
    sema: UnsafeCell<*mut c_void>,
}

// SAFETY: the raw pointers are owned by the task and handed over between threads under the
// protocol above: `answer` is written only by the single `respond` call before a Release
// publication and read only after an Acquire load has seen a DONE state; `sema` and the request
// copy are touched only on the nginx main thread or, for `req`, read-only by the runtime between
// poll and respond.
unsafe impl Send for Task {}
// SAFETY: see `Send`; shared access goes through the atomic state.
unsafe impl Sync for Task {}

impl Task {
    /// Copies `req` into a malloc'd NUL-terminated buffer (the contract's request format) and
    /// returns a new task in the `SPIN` state, or `None` when malloc fails.
    pub(crate) fn new(req: Option<&[u8]>) -> Option<Box<Task>> {
        let (ptr, len) = match req {
            None => (ptr::null_mut(), 0),
            Some(bytes) => {
                // SAFETY: malloc has no preconditions; the result is checked for NULL.
                let p = unsafe { libc::malloc(bytes.len() + 1) } as *mut c_char;
                if p.is_null() {
                    return None;
                }
                // SAFETY: `p` has room for len + 1 bytes and does not overlap `bytes`.
                unsafe {
                    ptr::copy_nonoverlapping(bytes.as_ptr(), p as *mut u8, bytes.len());
                    *p.add(bytes.len()) = 0;
                }
                (p, bytes.len())
            }
        };
        Some(Box::new(Task {
            state: AtomicU8::new(SPIN),
            req: ptr,
            req_len: len,
            answer: UnsafeCell::new(Answer {
                rc: 0,
                rsp: ptr::null_mut(),
                rsp_len: 0,
            }),
            sema: UnsafeCell::new(ptr::null_mut()),
        }))
    }

    /// The request copy, as the contract's `get_req` returns it.
    pub(crate) fn request(&self) -> (*mut c_char, usize) {
        (self.req, self.req_len)
    }

    /// Stores the runtime's answer and publishes it. Called once per task, on any thread.
    ///
    /// # Safety
    /// Must be called at most once per task, and the task must not have been freed: both are the
    /// runtime's duty under the contract ("respond exactly once, then never touch the task").
    pub(crate) unsafe fn answer(&self, rc: c_int, rsp: *mut c_char, rsp_len: usize) -> Answered {
        // SAFETY: the caller guarantees this is the only `answer` call; nobody reads `answer`
        // before observing a DONE state, which is stored below with Release ordering.
        unsafe {
            *self.answer.get() = Answer { rc, rsp, rsp_len };
        }
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let (next, result) = match cur {
                SPIN => (DONE_DIRECT, Answered::Direct),
                WAIT => (DONE_QUEUED, Answered::Queue),
                ABANDONED => (DONE_ABANDONED, Answered::Queue),
                other => unreachable_state("answer", other),
            };
            match self
                .state
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return result,
                Err(actual) => cur = actual,
            }
        }
    }

    /// True once the answer is readable by the main thread without waiting.
    pub(crate) fn is_done_direct(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE_DIRECT
    }

    /// True when Lua no longer waits for this task (timeout or aborted request).
    pub(crate) fn is_cancelled(&self) -> bool {
        matches!(
            self.state.load(Ordering::Acquire),
            ABANDONED | DONE_ABANDONED
        )
    }

    /// Main thread: Lua stops spinning and will wait on the semaphore. Returns false when the
    /// answer is already there (no wait needed).
    pub(crate) fn start_waiting(&self) -> bool {
        self.state
            .compare_exchange(SPIN, WAIT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Main thread: the event handler took this task from the done list.
    pub(crate) fn deliver(&self) -> Delivery {
        match self.state.load(Ordering::Acquire) {
            DONE_QUEUED => {
                self.state.store(DELIVERED, Ordering::Release);
                Delivery::Wake
            }
            DONE_ABANDONED => Delivery::Free,
            other => unreachable_state("deliver", other),
        }
    }

    /// Main thread: Lua drops its reference (after reading the answer, on timeout, or from the
    /// finalizer of an aborted request). When the task outlives this, its semaphore (no longer
    /// waited on) is handed back through `take_sema` by the caller.
    pub(crate) fn release(&self) -> Release {
        let mut cur = self.state.load(Ordering::Acquire);
        loop {
            let next = match cur {
                DONE_DIRECT | DELIVERED => return Release::Free,
                // Answered and queued, but the handler has not run yet: it will free.
                DONE_QUEUED => {
                    self.state.store(DONE_ABANDONED, Ordering::Release);
                    return Release::Later;
                }
                SPIN | WAIT => ABANDONED,
                other => unreachable_state("release", other),
            };
            match self
                .state
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Release::Later,
                Err(actual) => cur = actual,
            }
        }
    }

    /// The answer: `(rc, rsp, rsp_len)`. Only meaningful once a DONE state was observed.
    pub(crate) fn result(&self) -> (c_int, *mut c_char, usize) {
        debug_assert!(matches!(
            self.state.load(Ordering::Acquire),
            DONE_DIRECT | DELIVERED
        ));
        // SAFETY: a DONE state was observed with Acquire ordering by the caller (see above), so
        // the single write in `answer` happened before and no other write follows.
        let a = unsafe { &*self.answer.get() };
        (a.rc, a.rsp, a.rsp_len)
    }

    /// Main thread: the semaphore slot.
    pub(crate) fn sema(&self) -> *mut c_void {
        // SAFETY: only the main thread touches `sema`.
        unsafe { *self.sema.get() }
    }

    /// Main thread: takes the semaphore out of the task (to free it early).
    pub(crate) fn take_sema(&self) -> *mut c_void {
        // SAFETY: only the main thread touches `sema`.
        unsafe { std::mem::replace(&mut *self.sema.get(), ptr::null_mut()) }
    }

    /// Main thread: stores the semaphore created for waiting.
    pub(crate) fn set_sema(&self, sema: *mut c_void) {
        // SAFETY: only the main thread touches `sema`.
        unsafe { *self.sema.get() = sema }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let a = self.answer.get_mut();
        // SAFETY: the request copy and the response were allocated with malloc (ours and the
        // runtime's, as the contract requires); the task is being destroyed, so nobody else holds
        // them. free(NULL) is a no-op.
        unsafe {
            libc::free(self.req as *mut c_void);
            libc::free(a.rsp as *mut c_void);
        }
    }
}

#[cold]
fn unreachable_state(op: &str, state: u8) -> ! {
    // A broken invariant here means a runtime answered a task twice or after it was freed.
    // Aborting is safer than guessing ownership; the panic guard at the C boundary catches this.
    panic!("resty_ffi: task in state {state} cannot {op}");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer_with(t: &Task, text: &str) -> Answered {
        // SAFETY: malloc'd copy handed over to the task, which frees it.
        let p = unsafe { libc::strdup(std::ffi::CString::new(text).unwrap().as_ptr()) };
        // SAFETY: single answer per task in each test.
        unsafe { t.answer(0, p, text.len()) }
    }

    #[test]
    fn spin_path_needs_no_wakeup() {
        let t = Task::new(Some(b"abc")).unwrap();
        let (req, len) = t.request();
        assert_eq!(len, 3);
        // SAFETY: NUL-terminated copy of len + 1 bytes.
        assert_eq!(unsafe { *req.add(3) }, 0);
        assert_eq!(answer_with(&t, "xyz"), Answered::Direct);
        assert!(t.is_done_direct());
        assert!(!t.start_waiting());
        assert_eq!(t.result().2, 3);
        assert_eq!(t.release(), Release::Free);
    }

    #[test]
    fn wait_path_goes_through_the_handler() {
        let t = Task::new(None).unwrap();
        assert!(t.start_waiting());
        assert_eq!(answer_with(&t, "r"), Answered::Queue);
        assert_eq!(t.deliver(), Delivery::Wake);
        assert_eq!(t.release(), Release::Free);
    }

    #[test]
    fn abandoned_task_is_freed_by_the_handler() {
        let t = Task::new(Some(b"")).unwrap();
        assert!(t.start_waiting());
        assert_eq!(t.release(), Release::Later);
        assert!(t.is_cancelled());
        assert_eq!(answer_with(&t, "late"), Answered::Queue);
        assert_eq!(t.deliver(), Delivery::Free);
    }

    #[test]
    fn release_while_spinning_is_cancellation() {
        let t = Task::new(Some(b"x")).unwrap();
        assert_eq!(t.release(), Release::Later);
        assert_eq!(answer_with(&t, "late"), Answered::Queue);
        assert_eq!(t.deliver(), Delivery::Free);
    }

    #[test]
    fn timeout_racing_the_answer() {
        let t = Task::new(Some(b"x")).unwrap();
        assert!(t.start_waiting());
        assert_eq!(answer_with(&t, "r"), Answered::Queue);
        // Lua timed out before the handler drained the list.
        assert_eq!(t.release(), Release::Later);
        assert_eq!(t.deliver(), Delivery::Free);
    }

    #[test]
    fn concurrent_answer_and_start_waiting() {
        for _ in 0..2000 {
            let t = std::sync::Arc::new(*Task::new(Some(b"x")).unwrap());
            let t2 = t.clone();
            let h = std::thread::spawn(move || answer_with(&t2, "y"));
            let waiting = t.start_waiting();
            let answered = h.join().unwrap();
            match (waiting, answered) {
                (true, Answered::Queue) => assert_eq!(t.deliver(), Delivery::Wake),
                (false, Answered::Direct) => assert!(t.is_done_direct()),
                other => panic!("inconsistent outcome {other:?}"),
            }
            assert_eq!(t.release(), Release::Free);
        }
    }
}
