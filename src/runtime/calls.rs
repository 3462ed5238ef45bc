//! Calls in flight, keyed by their request slot, so that no reply slot outlives the interest of
//! the Lua side: a call that timed out or whose request was aborted gives its slots back.
//!
//! ```text
//!  Lua lease ──► Pending ──(runtime replied)──► Replied(reply) ──(Lua done)──► gone, reply freed
//!                   │                                  │
//!                   └─(Lua abandon)─► Abandoned ──(runtime replies)──► gone, reply freed
//!                                                      └─(Lua abandon)──────► gone, reply freed
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use crate::arena::Handle;

/// Key of a call: its request slot.
pub(crate) fn key(h: &Handle) -> u64 {
    (u64::from(h.offset) << 32) | u64::from(h.gen)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Pending,
    Replied(Handle),
    Abandoned,
}

/// What the runtime must do with a reply it produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Deliver {
    /// Lua still waits: send the descriptor.
    Send,
    /// Lua gave up: free the reply slot, answer without it.
    Drop,
}

/// What to free after Lua finished with a call.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Finished {
    /// Nothing more to free.
    Nothing,
    /// This reply slot.
    Reply(Handle),
    /// The call was never seen by the runtime: free its request slot.
    Request,
}

pub(crate) struct Calls {
    map: Mutex<HashMap<u64, State>>,
}

impl Calls {
    /// A table sized for `capacity` concurrent calls without reallocating.
    pub(crate) fn with_capacity(capacity: usize) -> Calls {
        Calls {
            map: Mutex::new(HashMap::with_capacity(capacity)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, State>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Lua leased a request slot for a new call.
    pub(crate) fn begin(&self, req: &Handle) {
        self.lock().insert(key(req), State::Pending);
    }

    /// The runtime took the request. False when the call was abandoned (or is unknown): the
    /// runtime must then drop the request unprocessed; the entry is gone.
    pub(crate) fn start(&self, req: &Handle) -> bool {
        let mut map = self.lock();
        match map.get(&key(req)) {
            Some(State::Pending) => true,
            Some(_) | None => {
                map.remove(&key(req));
                false
            }
        }
    }

    /// The runtime produced `reply` for the call.
    pub(crate) fn replied(&self, req: &Handle, reply: Handle) -> Deliver {
        let mut map = self.lock();
        match map.get_mut(&key(req)) {
            Some(s @ State::Pending) => {
                *s = State::Replied(reply);
                Deliver::Send
            }
            _ => {
                map.remove(&key(req));
                Deliver::Drop
            }
        }
    }

    /// The runtime answered without a reply slot (an error): forget the call unless Lua must
    /// still acknowledge it. Either way nothing is left to free.
    pub(crate) fn failed(&self, req: &Handle) {
        self.lock().remove(&key(req));
    }

    /// Lua read the reply (or the error) and is done with the call.
    pub(crate) fn done(&self, req: &Handle) -> Finished {
        match self.lock().remove(&key(req)) {
            Some(State::Replied(h)) => Finished::Reply(h),
            _ => Finished::Nothing,
        }
    }

    /// Lua stopped waiting (timeout, aborted request, failed post when `posted` is false).
    pub(crate) fn abandon(&self, req: &Handle, posted: bool) -> Finished {
        let mut map = self.lock();
        let k = key(req);
        match map.get(&k).copied() {
            Some(State::Replied(h)) => {
                map.remove(&k);
                Finished::Reply(h)
            }
            Some(State::Pending) if !posted => {
                map.remove(&k);
                Finished::Request
            }
            Some(State::Pending) => {
                map.insert(k, State::Abandoned);
                Finished::Nothing
            }
            Some(State::Abandoned) | None => Finished::Nothing,
        }
    }

    /// Calls currently tracked.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}
