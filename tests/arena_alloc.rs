//! Proves that leasing, claiming and releasing arena slots allocate nothing after warm-up.
//!
//! A test binary of its own, because it installs a counting global allocator: it counts the
//! allocations made by the current thread while counting is switched on for that thread, and
//! passes everything through to the system allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use resty_grpc_zc::arena::{Arena, ArenaConfig, ArenaErrorKind, Lease, PAGE_SIZE};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

fn note_alloc() {
    // `try_with`: the thread-local may already be gone while a thread shuts down.
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCS.try_with(|n| n.set(n.get() + 1));
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`'s
// guarantees hold; the bookkeeping touches only const-initialized thread-locals without
// destructors, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_alloc();
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by this thread while running `f`.
fn allocations_in(f: impl FnOnce()) -> u64 {
    ALLOCS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get)
}

#[test]
fn lease_claim_release_do_not_allocate_after_warm_up() {
    let arena = Arena::new(ArenaConfig {
        size: 16 << 20,
        max_message: 4 << 20,
    })
    .unwrap();
    let mut held: Vec<Lease> = Vec::with_capacity(4096);
    let round = |arena: &Arena, held: &mut Vec<Lease>| {
        // Every small class, page runs, raw handles, hand-offs, a shorter committed length.
        for len in [
            1usize, 300, 700, 1500, 3000, 6000, 12_000, 30_000, 40_000, 200_000,
        ] {
            let mut lease = arena.lease(len).unwrap();
            lease.as_mut_slice().fill(len as u8);
            let handle = lease.into_handle();
            let mut lease = arena.claim(handle).unwrap();
            assert!(arena.release(handle).is_err());
            lease.set_len(len / 2).unwrap();
            held.push(lease);
            let raw = arena.lease_raw(len).unwrap();
            arena.release(raw).unwrap();
        }
        // Fill pages up and empty them again (pages move between classes and the pool).
        for _ in 0..600 {
            held.push(arena.lease(100).unwrap());
        }
        let big = arena.lease(4 << 20).unwrap();
        assert_eq!(
            arena.lease(usize::MAX).unwrap_err().kind(),
            ArenaErrorKind::TooLarge
        );
        drop(big);
        held.clear();
        let _ = arena.stats();
        let _ = arena.capacity_for(PAGE_SIZE);
    };
    // Warm-up: the test's own Vec reaches its capacity; the allocator needs none.
    round(&arena, &mut held);
    let n = allocations_in(|| {
        for _ in 0..50 {
            round(&arena, &mut held);
        }
    });
    assert_eq!(n, 0, "allocations during lease/claim/release after warm-up");

    // Exhaustion (with its error value) does not allocate either.
    let mut fill: Vec<Lease> = Vec::with_capacity(1024);
    let n = allocations_in(|| {
        while let Ok(lease) = arena.lease(PAGE_SIZE) {
            fill.push(lease);
        }
        assert_eq!(
            arena.lease(1).unwrap_err().kind(),
            ArenaErrorKind::Exhausted
        );
        fill.clear();
    });
    assert_eq!(n, 0, "allocations while exhausting the arena");
    assert_eq!(arena.stats().slots_in_use, 0);

    // The counter itself works.
    assert_eq!(allocations_in(|| drop(Vec::<u8>::with_capacity(10))), 1);
}
