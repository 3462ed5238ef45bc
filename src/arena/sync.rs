//! The arena's synchronization primitives, in one place.
//!
//! Everything the arena uses to share state between threads is imported from here, so a loom
//! model can swap these for `loom::sync` equivalents behind a `cfg(loom)` switch without touching
//! the allocator (the shape bytes' `src/loom.rs` uses). Today the only shared state is the
//! allocator behind one `Mutex` and the `Arc` that keeps the mapping alive; the atomics are only
//! used to read bytes that Lua may be writing (see `racy_copy` in `mod.rs`), which is a
//! foreign-memory question, not something loom models.

pub(crate) use std::sync::atomic::{AtomicU8, Ordering};
pub(crate) use std::sync::{Arc, Mutex, MutexGuard};
