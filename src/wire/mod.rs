//! The FlatBuffers envelope between Lua and the runtime (`schema/envelope.fbs`).
//!
//! - Requests are written by Lua (flatc-generated Lua accessors over arena memory) and are
//!   untrusted: [`parse_request`] runs the FlatBuffers verifier with bounded options before any
//!   field is read.
//! - Replies are written by the runtime straight into an arena slot by [`write_reply`]: the
//!   `flatbuffers` builder owns its buffer and allocates per build, and its `reset` zeroes the
//!   previous output (which by then belongs to Lua), so for the one hot shape (status, handle,
//!   one payload) the runtime lays the table out itself. The layout is checked against the
//!   generated reader and the verifier in the tests below.

#[allow(
    clippy::all,
    clippy::undocumented_unsafe_blocks,
    unsafe_op_in_unsafe_fn,
    unused_imports,
    dead_code,
    missing_docs,
    mismatched_lifetime_syntaxes
)]
#[rustfmt::skip]
mod envelope_generated;

pub use envelope_generated::resty::grpc_zc::wire::*;

use std::fmt;

/// Wire layout version (`WireVersion.Current` in the schema).
pub const WIRE_VERSION: u16 = 1;

/// Why an envelope was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The bytes are not a valid `Request` (the verifier's message).
    Invalid(String),
    /// A valid envelope of another wire version.
    Version(u16),
    /// The reply does not fit the slot it was to be written into.
    NoRoom { need: usize, have: usize },
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Invalid(e) => write!(f, "invalid request envelope: {e}"),
            WireError::Version(v) => {
                write!(
                    f,
                    "wire version {v} not supported (runtime speaks {WIRE_VERSION})"
                )
            }
            WireError::NoRoom { need, have } => {
                write!(f, "reply needs {need} bytes, slot has {have}")
            }
        }
    }
}

impl std::error::Error for WireError {}

/// Verifies `bytes` as a `Request` with bounds derived from `max_message` and returns it.
pub fn parse_request(bytes: &[u8], max_message: usize) -> Result<Request<'_>, WireError> {
    let opts = flatbuffers::VerifierOptions {
        max_depth: 8,
        // A call's metadata is the only repeated table; 8192 entries is far beyond any real use.
        max_tables: 8192,
        max_apparent_size: max_message.saturating_add(1 << 20),
        ignore_missing_null_terminator: false,
    };
    let req = flatbuffers::root_with_opts::<Request>(&opts, bytes)
        .map_err(|e| WireError::Invalid(e.to_string()))?;
    let v = req.version().0;
    if v != WIRE_VERSION {
        return Err(WireError::Version(v));
    }
    Ok(req)
}

/// The parts of a reply that the runtime writes in place.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplyParts<'a> {
    /// gRPC status; `None` means OK and no status table.
    pub status: Option<(i32, &'a str)>,
    /// Connection or stream id (0: none).
    pub handle: u64,
    /// The message, when there is one (an empty slice is a zero-length message).
    pub payload: Option<&'a [u8]>,
}

// Offsets of the fixed part of the layout written by `write_reply` (see its diagram).
const REPLY_FIELDS: usize = 7;
const REPLY_VTABLE: usize = 4;
const REPLY_VTABLE_LEN: usize = 4 + 2 * REPLY_FIELDS;
const REPLY_TABLE: usize = 24;
const REPLY_TABLE_LEN: usize = 24;
const PAYLOAD_VECTOR: usize = REPLY_TABLE + REPLY_TABLE_LEN;
const STATUS_VTABLE_LEN: usize = 4 + 2 * 3;
const STATUS_TABLE_LEN: usize = 12;

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Bytes [`write_reply`] needs for `parts`.
pub fn reply_len(parts: &ReplyParts<'_>) -> usize {
    let mut n = PAYLOAD_VECTOR;
    if let Some(p) = parts.payload {
        n += align4(4 + p.len());
    }
    if let Some((_, msg)) = parts.status {
        n += align4(STATUS_VTABLE_LEN) + STATUS_TABLE_LEN + align4(4 + msg.len() + 1);
    }
    n
}

/// Writes a `Reply` FlatBuffer at the start of `buf` and returns its length. `buf` must start
/// 8-byte aligned (arena slots do), so the `handle` field is naturally aligned.
///
/// ```text
/// 0   u32 root → 24
/// 4   Reply vtable: size 18, table size 21, field offsets (version absent, status 4,
///     handle 8, has_message 20, payload 16, headers/trailers absent)
/// 24  Reply table: soffset 20 (vtable at 4) | status uoffset | handle u64 | payload uoffset
///     | has_message u8 | pad
/// 48  payload vector: u32 len, bytes, pad to 4
/// ..  Status vtable (size 10, table size 12, code 4, message 8), Status table
///     (soffset, code i32, message uoffset), message string (u32 len, bytes, NUL, pad)
/// ```
pub fn write_reply(buf: &mut [u8], parts: &ReplyParts<'_>) -> Result<usize, WireError> {
    let need = reply_len(parts);
    if buf.len() < need {
        return Err(WireError::NoRoom {
            need,
            have: buf.len(),
        });
    }
    let buf = &mut buf[..need];
    buf[..PAYLOAD_VECTOR].fill(0);

    put_u32(buf, 0, REPLY_TABLE as u32);

    // Reply vtable.
    let vt = REPLY_VTABLE;
    put_u16(buf, vt, REPLY_VTABLE_LEN as u16);
    put_u16(buf, vt + 2, 21);
    // field 0 version: absent (default Current).
    if parts.status.is_some() {
        put_u16(buf, vt + 4 + 2, 4);
    }
    if parts.handle != 0 {
        put_u16(buf, vt + 4 + 2 * 2, 8);
    }
    put_u16(buf, vt + 4 + 2 * 3, 20);
    if parts.payload.is_some() {
        put_u16(buf, vt + 4 + 2 * 4, 16);
    }

    // Reply table.
    let t = REPLY_TABLE;
    put_u32(buf, t, (t - vt) as u32); // soffset: vtable = table - soffset
    put_u64(buf, t + 8, parts.handle);
    buf[t + 20] = u8::from(parts.payload.is_some());

    let mut pos = PAYLOAD_VECTOR;
    if let Some(p) = parts.payload {
        put_u32(buf, t + 16, (pos - (t + 16)) as u32);
        put_u32(buf, pos, p.len() as u32);
        buf[pos + 4..pos + 4 + p.len()].copy_from_slice(p);
        let end = pos + 4 + p.len();
        pos = align4(end);
        buf[end..pos].fill(0);
    }

    if let Some((code, msg)) = parts.status {
        let svt = pos;
        let st = svt + align4(STATUS_VTABLE_LEN);
        buf[svt..st].fill(0);
        put_u16(buf, svt, STATUS_VTABLE_LEN as u16);
        put_u16(buf, svt + 2, STATUS_TABLE_LEN as u16);
        put_u16(buf, svt + 4, 4); // code
        put_u16(buf, svt + 6, 8); // message
                                  // details: absent
        put_u32(buf, st, (st - svt) as u32);
        put_u32(buf, st + 4, code as u32);
        let m = st + STATUS_TABLE_LEN;
        put_u32(buf, st + 8, (m - (st + 8)) as u32);
        put_u32(buf, t + 4, (st - (t + 4)) as u32);
        put_u32(buf, m, msg.len() as u32);
        buf[m + 4..m + 4 + msg.len()].copy_from_slice(msg.as_bytes());
        let end = m + 4 + msg.len();
        let padded = align4(end + 1);
        buf[end..padded].fill(0);
        pos = padded;
    }
    debug_assert_eq!(pos, need);
    Ok(need)
}

fn put_u16(buf: &mut [u8], at: usize, v: u16) {
    buf[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, v: u32) {
    buf[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, v: u64) {
    buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Verifies a reply (tests and the fuzz target use it to check `write_reply`).
pub fn parse_reply(bytes: &[u8]) -> Result<Reply<'_>, WireError> {
    let opts = flatbuffers::VerifierOptions::default();
    flatbuffers::root_with_opts::<Reply>(&opts, bytes)
        .map_err(|e| WireError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An 8-aligned scratch buffer, like an arena slot.
    fn slot(len: usize) -> Vec<u64> {
        vec![0xA5A5_A5A5_A5A5_A5A5; len.div_ceil(8)]
    }

    fn bytes(v: &mut [u64]) -> &mut [u8] {
        // SAFETY: u64 storage reinterpreted as bytes; alignment of u8 is 1 and the length is the
        // same number of bytes.
        unsafe { std::slice::from_raw_parts_mut(v.as_mut_ptr() as *mut u8, v.len() * 8) }
    }

    fn roundtrip(parts: ReplyParts<'_>) {
        let mut s = slot(reply_len(&parts) + 16);
        let buf = bytes(&mut s);
        let n = write_reply(buf, &parts).unwrap();
        assert_eq!(n, reply_len(&parts));
        let r = parse_reply(&buf[..n]).unwrap();
        assert_eq!(r.version().0, WIRE_VERSION);
        assert_eq!(r.handle(), parts.handle);
        assert_eq!(r.has_message(), parts.payload.is_some());
        assert_eq!(r.payload().map(|v| v.bytes()), parts.payload);
        match parts.status {
            None => assert!(r.status().is_none()),
            Some((code, msg)) => {
                let st = r.status().unwrap();
                assert_eq!(st.code(), code);
                assert_eq!(st.message(), Some(msg));
                assert!(st.details().is_none());
            }
        }
        assert!(r.headers().is_none() && r.trailers().is_none());
    }

    #[test]
    fn replies_read_back_through_the_generated_reader() {
        roundtrip(ReplyParts::default());
        roundtrip(ReplyParts {
            payload: Some(b""),
            ..Default::default()
        });
        for n in [1usize, 2, 3, 4, 5, 1000, 65_537] {
            let p: Vec<u8> = (0..n).map(|i| i as u8).collect();
            roundtrip(ReplyParts {
                payload: Some(&p),
                handle: n as u64 * 0x1_0000_0001,
                ..Default::default()
            });
        }
        for msg in [
            "",
            "x",
            "four",
            "非ASCII message ✓",
            "DEADLINE_EXCEEDED: 12345",
        ] {
            roundtrip(ReplyParts {
                status: Some((4, msg)),
                ..Default::default()
            });
            roundtrip(ReplyParts {
                status: Some((-7, msg)),
                payload: Some(b"abc"),
                handle: 9,
            });
        }
    }

    #[test]
    fn reply_needs_room() {
        let mut s = slot(16);
        let err = write_reply(
            bytes(&mut s),
            &ReplyParts {
                payload: Some(&[0; 64]),
                ..Default::default()
            },
        )
        .unwrap_err();
        assert!(matches!(err, WireError::NoRoom { .. }));
    }

    #[test]
    fn requests_are_verified() {
        let mut fbb = flatbuffers::FlatBufferBuilder::new();
        let payload = fbb.create_vector(b"hello".as_slice());
        let echo = Echo::create(
            &mut fbb,
            &EchoArgs {
                payload: Some(payload),
            },
        );
        let req = Request::create(
            &mut fbb,
            &RequestArgs {
                version: WireVersion::Current,
                command_type: Command::Echo,
                command: Some(echo.as_union_value()),
            },
        );
        fbb.finish(req, None);
        let data = fbb.finished_data();
        let r = parse_request(data, 1 << 20).unwrap();
        assert_eq!(
            r.command_as_echo().unwrap().payload().unwrap().bytes(),
            b"hello"
        );
        // Every truncation and many corruptions are refused, never a crash.
        for cut in 0..data.len() {
            let _ = parse_request(&data[..cut], 1 << 20);
        }
        let mut bad = data.to_vec();
        for i in 0..bad.len() {
            for v in [0u8, 0xFF, 0x7F, 0x80] {
                let keep = bad[i];
                bad[i] = v;
                if let Ok(r) = parse_request(&bad, 1 << 20) {
                    // A verified buffer must be fully readable.
                    let _ = r
                        .command_as_echo()
                        .and_then(|e| e.payload())
                        .map(|p| p.len());
                }
                bad[i] = keep;
            }
        }
        assert!(matches!(
            parse_request(&[], 1 << 20),
            Err(WireError::Invalid(_))
        ));
    }
}
