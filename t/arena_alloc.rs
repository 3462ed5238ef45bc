//! Proves that leasing, claiming and releasing arena slots allocate nothing after warm-up.
//!
//! It counts with the library's own allocator (`resty_grpc_zc::alloc`, mimalloc): the
//! allocations made by the current thread while counting is switched on for that thread.

use resty_grpc_zc::alloc::count as allocations_in;
use resty_grpc_zc::arena::{Arena, ArenaConfig, ArenaErrorKind, Lease, PAGE_SIZE};

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
    assert_eq!(
        allocations_in(|| drop(std::hint::black_box(Vec::<u8>::with_capacity(10)))),
        1
    );
}
