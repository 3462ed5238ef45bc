//! Arbitrary bytes as a request envelope: the verifier must refuse or accept, and an accepted
//! envelope must be fully readable. Also: any reply the runtime writes must verify and read back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resty_grpc_zc::wire::{self, Metadata, ReplyParts};

fn walk_metadata(m: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<Metadata<'_>>>>) {
    for e in m.iter().flatten() {
        let _ = e.key().len();
        let _ = e.value().map(|v| v.bytes().len());
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = wire::parse_request(data, 1 << 20) {
        let _ = req.version();
        if let Some(e) = req.command_as_echo() {
            let _ = (e.payload().map(|p| p.bytes().len()), e.delay_ms());
        }
        if let Some(c) = req.command_as_connect() {
            let _ = (c.target().len(), c.authority(), c.insecure(), c.compression());
            let _ = (c.ca_pem().map(|v| v.len()), c.cert_pem().map(|v| v.len()));
            let _ = (c.key_pem().map(|v| v.len()), c.max_recv_msg_size());
        }
        if let Some(c) = req.command_as_close() {
            let _ = c.conn();
        }
        if let Some(c) = req.command_as_call() {
            let _ = (c.conn(), c.kind(), c.path().len(), c.timeout_ms(), c.compression());
            let _ = c.payload().map(|p| p.bytes().len());
            walk_metadata(c.metadata());
        }
        if let Some(s) = req.command_as_stream_send() {
            let _ = (s.stream(), s.payload().map(|p| p.len()));
        }
        let _ = req.command_as_stream_recv().map(|s| s.stream());
        let _ = req.command_as_stream_close_send().map(|s| s.stream());
        let _ = req.command_as_stream_cancel().map(|s| s.stream());
    }

    // The other direction: the in-place reply writer, from arbitrary parts.
    if data.len() >= 6 {
        let code = i32::from_le_bytes([data[0], data[1], data[2], data[3]]);
        let split = (data[4] as usize).min(data.len() - 6);
        let (msg, payload) = data[6..].split_at(split);
        let msg = String::from_utf8_lossy(msg);
        let md = vec![(msg.to_string(), payload.to_vec())];
        let parts = ReplyParts {
            status: (data[5] & 1 == 1).then_some((code, msg.as_ref())),
            details: (data[5] & 4 == 4).then_some(payload),
            id: u64::from(data[5]),
            payload: (data[5] & 2 == 2).then_some(payload),
            headers: (data[5] & 8 == 8).then_some(&md[..]),
            trailers: (data[5] & 16 == 16).then_some(&md[..]),
        };
        let mut buf = vec![0u64; wire::reply_len(&parts).div_ceil(8)];
        // SAFETY: viewing u64 storage as bytes (8-aligned, as arena slots are).
        let bytes = unsafe {
            std::slice::from_raw_parts_mut(buf.as_mut_ptr() as *mut u8, buf.len() * 8)
        };
        let n = wire::write_reply(bytes, &parts).expect("room was computed");
        let r = wire::parse_reply(&bytes[..n]).expect("our own reply verifies");
        assert_eq!(r.payload().map(|p| p.bytes()), parts.payload);
        assert_eq!(r.status().map(|s| s.code()), parts.status.map(|s| s.0));
        assert_eq!(r.id(), parts.id);
    }
});
