//! The runtime's echo path makes no heap allocation per call after warm-up: Lua's side of a call
//! (lease a request slot, write the envelope), the poll thread's (claim, verify, lease a reply
//! slot, write the reply, record it) and Lua's release, driven through the same functions the C
//! ABI calls, minus the host queue. (The host queue itself mallocs the 16-byte descriptors, as
//! the lua-resty-ffi contract requires; that is outside this crate.)

use resty_grpc_zc::arena::Handle;
use resty_grpc_zc::config::Config;
use resty_grpc_zc::queue::Desc;
use resty_grpc_zc::runtime::{Answer, Instance};
use resty_grpc_zc::wire;

fn envelope(payload: &[u8]) -> Vec<u8> {
    wire::echo_request(payload, 0)
}

/// One echo call; returns the reply payload's length.
fn call(inst: &Instance, env: &[u8]) -> usize {
    let h: Handle = inst.begin_call(env.len()).expect("lease");
    // SAFETY: `h` names a live slot of at least `env.len()` bytes inside the mapping, owned by
    // this "Lua side" until the runtime claims it below; nothing else touches it meanwhile.
    unsafe {
        let dst = inst.arena().base_ptr().add(h.offset as usize);
        std::ptr::copy_nonoverlapping(env.as_ptr(), dst, env.len());
    }
    let desc = Desc {
        slot_offset: h.offset,
        slot_gen: h.gen,
        buf_offset: 0,
        buf_len: env.len() as u32,
    };
    let Answer::Reply(reply) = inst.serve_request(&desc.encode()) else {
        panic!("echo failed");
    };
    // SAFETY: the reply slot is live until finish_call below; the runtime wrote it and does
    // not touch it again.
    let bytes = unsafe {
        std::slice::from_raw_parts(
            inst.arena().base_ptr().add(reply.slot_offset as usize),
            reply.buf_len as usize,
        )
    };
    let n = wire::parse_reply(bytes)
        .ok()
        .and_then(|r| r.payload())
        .map_or(0, |p| p.len());
    inst.finish_call(&h, true, false);
    n
}

#[test]
fn echo_path_allocates_nothing_after_warm_up() {
    let inst = Instance::new(Config::parse("instance=alloc-test").unwrap()).unwrap();
    let envs: Vec<Vec<u8>> = [0usize, 1, 512, 4096, 100_000, 1 << 20]
        .iter()
        .map(|&n| envelope(&vec![7u8; n]))
        .collect();
    for env in &envs {
        call(&inst, env);
    }
    let mut total = 0;
    let allocs = resty_grpc_zc::alloc::count(|| {
        for _ in 0..2000 {
            for env in &envs {
                total += call(&inst, env);
            }
        }
    });
    assert_eq!(total, 2000 * (1 + 512 + 4096 + 100_000 + (1 << 20)));
    assert_eq!(allocs, 0, "heap allocations on the echo path");
    let s = inst.stats();
    assert_eq!((s.slots_in_use, s.bytes_in_use), (0, 0));
    assert_eq!(inst.calls_in_flight(), 0);
}

/// `cargo test --release --test echo_alloc -- --ignored --nocapture`: cost of one echo call
/// through the runtime's functions (no host queue, no Lua), for profiling.
#[test]
#[ignore]
fn echo_path_cost() {
    let inst = Instance::new(Config::parse("instance=cost").unwrap()).unwrap();
    for size in [512usize, 100_000] {
        let env = envelope(&vec![7u8; size]);
        let n = 200_000;
        let t = std::time::Instant::now();
        for _ in 0..n {
            call(&inst, &env);
        }
        println!(
            "{size} B: {:.0} ns/call",
            t.elapsed().as_nanos() as f64 / n as f64
        );
    }
}
