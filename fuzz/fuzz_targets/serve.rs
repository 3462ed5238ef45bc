//! Arbitrary bytes in a request slot and an arbitrary descriptor, through the runtime's whole
//! serving path (claim, verify, dispatch, reply): never a panic, and every slot and call comes
//! back.
#![no_main]

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use resty_grpc_zc::config::Config;
use resty_grpc_zc::queue::Desc;
use resty_grpc_zc::runtime::{Answer, Instance};

fn instance() -> &'static Arc<Instance> {
    static INST: OnceLock<Arc<Instance>> = OnceLock::new();
    INST.get_or_init(|| {
        let cfg = Config::parse("instance=fuzz,arena_size=4m,max_message=256k").unwrap();
        Instance::new(cfg).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let inst = instance();
    let body = &data[4..];
    let h = match inst.begin_call(body.len().max(1)) {
        Ok(h) => h,
        Err(_) => return,
    };
    // SAFETY: `h` is a live slot of at least body.len() bytes that this "Lua side" owns.
    unsafe {
        let dst = inst.arena().base_ptr().add(h.offset as usize);
        std::ptr::copy_nonoverlapping(body.as_ptr(), dst, body.len());
    }
    let off = u32::from(u16::from_le_bytes([data[0], data[1]])) % (body.len() as u32 + 1);
    let len = u32::from(u16::from_le_bytes([data[2], data[3]]));
    let desc = Desc {
        slot_offset: h.offset,
        slot_gen: h.gen,
        buf_offset: off,
        buf_len: len,
    };
    let answer = inst.serve_request(&desc.encode());
    // A refused descriptor leaves the request slot with us; a served one was claimed.
    let posted = !matches!(&answer, Answer::Error(_, m)
        if m.starts_with("request slot") || m.starts_with("bad request descriptor"));
    inst.finish_call(&h, posted, false);
    let s = inst.stats();
    assert_eq!((s.slots_in_use, inst.calls_in_flight()), (0, 0), "{answer:?}");
});
