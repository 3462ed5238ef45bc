//! The numbers JavaScript holds for queues and tasks, mapped to the host's pointers.
//!
//! JavaScript never sees a pointer: `tq` and `task` are plain numbers, never reused, and a
//! number that is unknown, finished or already answered is refused with an error instead of
//! reaching the host. This is also where "one poller per queue" and "answer each task once"
//! are enforced for JavaScript code.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use crate::host::{Queue, Task};

/// A queue or task number (at most 2^53, exact as a JavaScript number).
pub type Id = u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Handed to the init function; nobody polls it yet.
    Fresh,
    /// `serve()` owns it: the loader's poll thread feeds the event loop.
    Serving,
    /// Polled by `poll_task` (a Worker thread); `busy` while a poll blocks.
    Raw { busy: bool },
    /// Its init failed and the loader drains it.
    Draining,
    /// The finish marker was consumed: the host freed its side.
    Finished,
}

struct Entry {
    q: Queue,
    state: State,
}

static NEXT: AtomicU64 = AtomicU64::new(1);
static QUEUES: Mutex<Option<HashMap<Id, Entry>>> = Mutex::new(None);
static TASKS: Mutex<Option<HashMap<Id, Task>>> = Mutex::new(None);

fn next_id() -> Id {
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn lock<T>(
    m: &'static Mutex<Option<HashMap<Id, T>>>,
) -> MutexGuard<'static, Option<HashMap<Id, T>>> {
    // A panic while holding the lock leaves consistent maps (every update is one insert or
    // assignment), so a poisoned lock is used as is.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn with_map<T, R>(
    m: &'static Mutex<Option<HashMap<Id, T>>>,
    f: impl FnOnce(&mut HashMap<Id, T>) -> R,
) -> R {
    f(lock(m).get_or_insert_with(HashMap::new))
}

/// Why a queue number was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueError {
    Unknown,
    /// Already served or polled by someone else.
    Taken,
    /// Another thread is blocked in `poll_task` on it.
    Busy,
}

impl QueueError {
    pub fn message(self) -> &'static str {
        match self {
            QueueError::Unknown => {
                "unknown task queue (tq is the number given to the init function)"
            }
            QueueError::Taken => {
                "this task queue already has its poller (one serve() or poll_task user per queue)"
            }
            QueueError::Busy => "another thread is polling this task queue",
        }
    }
}

/// Registers the queue of a `libffi_init` call.
pub fn add_queue(q: Queue) -> Id {
    let id = next_id();
    with_map(&QUEUES, |m| {
        m.insert(
            id,
            Entry {
                q,
                state: State::Fresh,
            },
        )
    });
    id
}

/// `serve(tq)`: the queue becomes the loader's poll thread's.
pub fn claim_serve(id: Id) -> Result<Queue, QueueError> {
    with_map(&QUEUES, |m| match m.get_mut(&id) {
        None => Err(QueueError::Unknown),
        Some(e) if e.state == State::Fresh => {
            e.state = State::Serving;
            Ok(e.q)
        }
        Some(_) => Err(QueueError::Taken),
    })
}

/// Undoes `claim_serve` when serving could not start.
pub fn unclaim(id: Id) {
    with_map(&QUEUES, |m| {
        if let Some(e) = m.get_mut(&id) {
            if e.state == State::Serving {
                e.state = State::Fresh;
            }
        }
    })
}

/// Starts a `poll_task(tq)`: the queue to poll, or `None` when it is finished (the poll
/// returns 0 again without touching the host).
pub fn raw_begin(id: Id) -> Result<Option<Queue>, QueueError> {
    with_map(&QUEUES, |m| match m.get_mut(&id) {
        None => Err(QueueError::Unknown),
        Some(e) => match e.state {
            State::Fresh | State::Raw { busy: false } => {
                e.state = State::Raw { busy: true };
                Ok(Some(e.q))
            }
            State::Raw { busy: true } => Err(QueueError::Busy),
            State::Finished => Ok(None),
            State::Serving | State::Draining => Err(QueueError::Taken),
        },
    })
}

/// Ends a `poll_task(tq)`; `finished` when it consumed the finish marker.
pub fn raw_end(id: Id, finished: bool) {
    with_map(&QUEUES, |m| {
        if let Some(e) = m.get_mut(&id) {
            e.state = if finished {
                State::Finished
            } else {
                State::Raw { busy: false }
            };
        }
    })
}

/// A poller (serve's or the drain's) consumed the finish marker.
pub fn finished(id: Id) {
    with_map(&QUEUES, |m| {
        if let Some(e) = m.get_mut(&id) {
            e.state = State::Finished;
        }
    })
}

/// After a failed init: the queue to drain when nobody took it.
pub fn take_fresh(id: Id) -> Option<Queue> {
    with_map(&QUEUES, |m| match m.get_mut(&id) {
        Some(e) if e.state == State::Fresh => {
            e.state = State::Draining;
            Some(e.q)
        }
        _ => None,
    })
}

/// Registers a polled task; its number goes to JavaScript.
pub fn add_task(t: Task) -> Id {
    let id = next_id();
    with_map(&TASKS, |m| m.insert(id, t));
    id
}

/// Takes a task to answer it; `None` when the number is unknown or already answered.
pub fn take_task(id: Id) -> Option<Task> {
    with_map(&TASKS, |m| m.remove(&id))
}

/// Runs `f` on a pending task; the lock keeps it from being answered meanwhile.
pub fn with_task<R>(id: Id, f: impl FnOnce(&Task) -> R) -> Option<R> {
    with_map(&TASKS, |m| m.get(&id).map(f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::c_void;

    fn queue(addr: usize) -> Queue {
        Queue::new(addr as *mut c_void).unwrap()
    }

    #[test]
    fn queue_states() {
        let a = add_queue(queue(0x1000));
        assert_eq!(claim_serve(a), Ok(queue(0x1000)));
        assert_eq!(claim_serve(a), Err(QueueError::Taken));
        assert_eq!(raw_begin(a), Err(QueueError::Taken));
        assert_eq!(take_fresh(a), None);
        finished(a);
        assert_eq!(raw_begin(a), Ok(None));

        let b = add_queue(queue(0x2000));
        assert_ne!(a, b);
        assert_eq!(raw_begin(b), Ok(Some(queue(0x2000))));
        assert_eq!(raw_begin(b), Err(QueueError::Busy));
        raw_end(b, false);
        assert_eq!(raw_begin(b), Ok(Some(queue(0x2000))));
        raw_end(b, true);
        assert_eq!(raw_begin(b), Ok(None));
        assert_eq!(claim_serve(b), Err(QueueError::Taken));

        let c = add_queue(queue(0x3000));
        assert_eq!(take_fresh(c), Some(queue(0x3000)));
        assert_eq!(take_fresh(c), None);
        assert_eq!(claim_serve(c), Err(QueueError::Taken));

        assert_eq!(claim_serve(999_999), Err(QueueError::Unknown));
        assert_eq!(raw_begin(999_999), Err(QueueError::Unknown));
    }
}
