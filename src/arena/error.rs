//! The arena's error type: a kind callers branch on, a detail for the message, a stable code for
//! the C ABI. Building one never allocates (failed leases stay allocation-free too).

use std::fmt;

use super::layout::Handle;

/// What went wrong, for callers that branch on it. Mapped to integers by [`code`](Self::code).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ArenaErrorKind {
    /// No free slot of the needed size right now; releasing slots makes room again.
    Exhausted,
    /// The request is larger than the arena accepts (`max_message`, or a slot's capacity).
    TooLarge,
    /// The handle was valid once, but its slot was released or leased again since.
    StaleHandle,
    /// The handle was never issued by this arena in this form (out of range, not at an object
    /// start, wrong length, generation 0) or it names a slot that a Rust `Lease` owns.
    BadHandle,
    /// The arena configuration is invalid.
    Config,
    /// The allocator lock was poisoned by a panic; the arena refuses all further work rather than
    /// risk handing out overlapping slots.
    Internal,
}

impl ArenaErrorKind {
    /// Stable integer code for the C ABI: always negative, so a C function can return either a
    /// non-negative result or one of these.
    ///
    /// | kind | code |
    /// |---|---|
    /// | `Exhausted` | -1 |
    /// | `TooLarge` | -2 |
    /// | `StaleHandle` | -3 |
    /// | `BadHandle` | -4 |
    /// | `Config` | -5 |
    /// | `Internal` | -6 |
    pub const fn code(self) -> i32 {
        match self {
            ArenaErrorKind::Exhausted => -1,
            ArenaErrorKind::TooLarge => -2,
            ArenaErrorKind::StaleHandle => -3,
            ArenaErrorKind::BadHandle => -4,
            ArenaErrorKind::Config => -5,
            ArenaErrorKind::Internal => -6,
        }
    }

    /// The kind for a [`code`](Self::code), if it is one.
    pub const fn from_code(code: i32) -> Option<ArenaErrorKind> {
        Some(match code {
            -1 => ArenaErrorKind::Exhausted,
            -2 => ArenaErrorKind::TooLarge,
            -3 => ArenaErrorKind::StaleHandle,
            -4 => ArenaErrorKind::BadHandle,
            -5 => ArenaErrorKind::Config,
            -6 => ArenaErrorKind::Internal,
            _ => return None,
        })
    }
}

/// An arena operation failed. Inspect it with [`kind`](Self::kind) and [`code`](Self::code);
/// its `Display` says what was asked and why it could not be done.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ArenaError {
    kind: ArenaErrorKind,
    detail: Detail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Detail {
    Exhausted {
        len: usize,
        need: usize,
        in_use: u64,
        capacity: u64,
    },
    TooLarge {
        what: &'static str,
        len: usize,
        limit: usize,
    },
    Handle {
        handle: Handle,
        why: &'static str,
    },
    Config {
        what: &'static str,
        value: u64,
        limit: u64,
    },
    Internal {
        why: &'static str,
    },
    Map {
        size: usize,
        errno: i32,
    },
}

impl ArenaError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ArenaErrorKind {
        self.kind
    }

    /// The kind's stable C ABI code (see [`ArenaErrorKind::code`]).
    pub fn code(&self) -> i32 {
        self.kind.code()
    }

    pub(super) fn exhausted(len: usize, need: usize, in_use: u64, capacity: u64) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::Exhausted,
            detail: Detail::Exhausted {
                len,
                need,
                in_use,
                capacity,
            },
        }
    }

    pub(super) fn too_large(what: &'static str, len: usize, limit: usize) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::TooLarge,
            detail: Detail::TooLarge { what, len, limit },
        }
    }

    pub(super) fn stale(handle: Handle, why: &'static str) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::StaleHandle,
            detail: Detail::Handle { handle, why },
        }
    }

    pub(super) fn bad(handle: Handle, why: &'static str) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::BadHandle,
            detail: Detail::Handle { handle, why },
        }
    }

    pub(super) fn config(what: &'static str, value: u64, limit: u64) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::Config,
            detail: Detail::Config { what, value, limit },
        }
    }

    pub(super) fn map_failed(size: usize, err: &std::io::Error) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::Config,
            detail: Detail::Map {
                size,
                errno: err.raw_os_error().unwrap_or(0),
            },
        }
    }

    pub(super) fn internal(why: &'static str) -> ArenaError {
        ArenaError {
            kind: ArenaErrorKind::Internal,
            detail: Detail::Internal { why },
        }
    }
}

impl fmt::Display for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.detail {
            Detail::Exhausted {
                len,
                need,
                in_use,
                capacity,
            } => write!(
                f,
                "arena exhausted: no free slot for a {len}-byte lease (needs a {need}-byte slot; \
                 {in_use} of {capacity} bytes in use); release slots or configure a larger arena"
            ),
            Detail::TooLarge { what, len, limit } => {
                write!(
                    f,
                    "{what}: {len} bytes is more than the limit of {limit} bytes"
                )
            }
            Detail::Handle { handle, why } => {
                let which = match self.kind {
                    ArenaErrorKind::StaleHandle => "stale",
                    _ => "bad",
                };
                write!(
                    f,
                    "{which} arena handle (offset {}, len {}, gen {}): {why}",
                    handle.offset, handle.len, handle.gen
                )
            }
            Detail::Config { what, value, limit } => {
                write!(
                    f,
                    "invalid arena config: {what} (got {value}, limit {limit})"
                )
            }
            Detail::Internal { why } => write!(f, "arena internal error: {why}"),
            Detail::Map { size, errno } => write!(
                f,
                "could not map a {size}-byte arena: {}",
                std::io::Error::from_raw_os_error(errno)
            ),
        }
    }
}

impl fmt::Debug for ArenaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ArenaError")
            .field("kind", &self.kind)
            .field("code", &self.code())
            .field("message", &format_args!("{self}"))
            .finish()
    }
}

impl std::error::Error for ArenaError {}
