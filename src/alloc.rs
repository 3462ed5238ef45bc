//! The library's Rust allocator: mimalloc, which also counts the allocations of a thread that
//! asks ([`count`]), so tests can prove a hot path allocates nothing with the allocator that
//! ships.
//!
//! tonic, hyper, h2 and http allocate about 40 times per call on the poll thread; mimalloc's
//! thread-local free lists serve those faster than glibc's arenas (docs/benchmarks.md, "CPU
//! per call"). The C side's memory stays glibc's: the answers the host frees are
//! `libc::malloc`ed (`queue`).

use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;

use mimalloc::MiMalloc;

/// mimalloc, counting the allocations of threads inside [`count`].
pub struct Alloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the thread-locals may be gone while a thread shuts down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `MiMalloc` with the caller's arguments unchanged, so its
// guarantees hold; the bookkeeping touches only const-initialized thread-locals without
// destructors, which never allocate.
unsafe impl GlobalAlloc for Alloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { MiMalloc.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { MiMalloc.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
}

/// Runs `f` and returns how many allocations this thread made meanwhile.
pub fn count(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_this_threads_allocations_only() {
        let n = super::count(|| {
            let v: Vec<u8> = Vec::with_capacity(64);
            std::hint::black_box(&v);
            std::thread::spawn(|| std::hint::black_box(Vec::<u8>::with_capacity(8)))
                .join()
                .unwrap();
        });
        // The Vec, and the spawn's own bookkeeping on this thread; the other thread's Vec
        // is not counted.
        assert!(n >= 1, "{n}");
        assert_eq!(super::count(|| ()), 0);
    }
}
