//! How a task is answered: the rc codes of the runtime and the [`Answer`] a task gets.

use std::ffi::c_int;

use crate::queue::{Desc, Task};

/// rc of a request the runtime could not use (bad descriptor, stale slot, invalid envelope).
pub const RC_BAD_REQUEST: c_int = 2;
/// rc when the arena has no room for the reply.
pub const RC_EXHAUSTED: c_int = 3;
/// rc of a call that Lua abandoned before the runtime saw it (nobody reads it).
pub const RC_ABANDONED: c_int = 4;

/// How a task is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Answer {
    /// rc 0 and the reply's descriptor.
    Reply(Desc),
    /// rc and an error text.
    Error(c_int, String),
    /// rc and no response.
    Empty(c_int),
}

impl Answer {
    /// Answers the task (consumes it: a task is answered exactly once).
    pub(crate) fn send(self, task: Task) {
        match self {
            Answer::Reply(d) => task.respond(0, Some(&d.encode())),
            Answer::Error(rc, msg) => task.respond_error(rc, &msg),
            Answer::Empty(rc) => task.respond(rc, None),
        }
    }
}
