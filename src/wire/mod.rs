//! The FlatBuffers envelope between Lua and the runtime (`schema/envelope.fbs`).
//!
//! - Requests are written by Lua (flatc-generated Lua accessors over arena memory) and are
//!   untrusted: [`parse_request`] runs the FlatBuffers verifier with bounded options before any
//!   field is read.
//! - Replies are written by the runtime straight into an arena slot by [`write_reply`]: the
//!   `flatbuffers` builder owns its buffer and allocates per build, and its `reset` zeroes the
//!   previous output (which by then belongs to Lua), so for the one hot shape (status, id,
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

/// A complete `Echo` request envelope (for tests, fuzzing and tools: Lua builds its requests in
/// place with the generated Lua accessors).
pub fn echo_request(payload: &[u8], delay_ms: u32) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let p = fbb.create_vector(payload);
    let echo = Echo::create(
        &mut fbb,
        &EchoArgs {
            payload: Some(p),
            delay_ms,
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
    fbb.finished_data().to_vec()
}

/// Response metadata as the runtime hands it to Lua: keys, and raw values (`-bin` values already
/// decoded from base64).
pub type MetadataList = [(String, Vec<u8>)];

/// The parts of a reply that the runtime writes in place.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReplyParts<'a> {
    /// gRPC status; `None` means OK and no status table.
    pub status: Option<(i32, &'a str)>,
    /// `grpc-status-details-bin`, with a status.
    pub details: Option<&'a [u8]>,
    /// Connection or stream id (0: none).
    pub id: u64,
    /// The message, when there is one (an empty slice is a zero-length message).
    pub payload: Option<&'a [u8]>,
    /// Response headers.
    pub headers: Option<&'a MetadataList>,
    /// Response trailers (for a failed call: the status's metadata).
    pub trailers: Option<&'a MetadataList>,
}

// Offsets of the fixed part of the layout written by `write_reply` (see its diagram).
const REPLY_FIELDS: usize = 7;
const REPLY_VTABLE: usize = 4;
const REPLY_VTABLE_LEN: usize = 4 + 2 * REPLY_FIELDS;
const REPLY_TABLE: usize = 24;
const REPLY_TABLE_LEN: usize = 32;
const PAYLOAD_VECTOR: usize = REPLY_TABLE + REPLY_TABLE_LEN;
// Field slots inside the Reply table.
const AT_STATUS: usize = 4;
const AT_ID: usize = 8;
const AT_PAYLOAD: usize = 16;
const AT_HEADERS: usize = 20;
const AT_TRAILERS: usize = 24;
const AT_HAS_MESSAGE: usize = 28;
const STATUS_VTABLE_LEN: usize = 4 + 2 * 3;
const STATUS_TABLE_LEN: usize = 16;

/// Most padding [`write_reply`] puts before the payload vector to co-align the copy.
const COALIGN_MAX_PAD: usize = 60;

/// Offset of the payload vector in a reply written at `buf`, from `PAYLOAD_VECTOR` on, chosen so
/// that the payload bytes start at the same address modulo 64 as `src` (rounded to 4): memcpy
/// between buffers whose alignments differ by 8 runs ~14x slower on these machines (measured).
fn coaligned_vector_pos(buf: *const u8, src: *const u8) -> usize {
    let want = (src as usize) & 63 & !3;
    let at = (buf as usize + PAYLOAD_VECTOR + 4) & 63;
    PAYLOAD_VECTOR + ((want + 64 - at) & 63)
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Upper bound of the bytes a metadata vector takes (see [`metadata_chunk`]).
fn metadata_len(md: &MetadataList) -> usize {
    // root offset, vector length, alignment slack; per entry: its offset, vtable (8), table
    // (8), key string (len, bytes, NUL, pad) and value vector (len, bytes, pad).
    16 + md
        .iter()
        .map(|(k, v)| 4 + 8 + 8 + align4(4 + k.len() + 1) + align4(4 + v.len()) + 8)
        .sum::<usize>()
}

/// Bytes of the status, details, headers and trailers that follow the payload (at most).
fn tail_len(parts: &ReplyParts<'_>) -> usize {
    let mut n = 0;
    if let Some((_, msg)) = parts.status {
        n += align4(STATUS_VTABLE_LEN) + STATUS_TABLE_LEN + align4(4 + msg.len() + 1);
        if let Some(d) = parts.details {
            n += align4(4 + d.len());
        }
    }
    n += parts.headers.map_or(0, |m| 8 + metadata_len(m));
    n += parts.trailers.map_or(0, |m| 8 + metadata_len(m));
    n
}

/// Bytes [`write_reply`] needs at most for `parts` (it returns the exact length it wrote).
pub fn reply_len(parts: &ReplyParts<'_>) -> usize {
    let mut n = PAYLOAD_VECTOR;
    if let Some(p) = parts.payload {
        n += COALIGN_MAX_PAD + align4(4 + p.len());
    }
    n + tail_len(parts)
}

/// Writes a `Reply` FlatBuffer at the start of `buf` and returns its length. `buf` must start
/// 8-byte aligned (arena slots do), so the `id` field is naturally aligned.
///
/// ```text
/// 0   u32 root → 24
/// 4   Reply vtable: size 18, table size 29, field offsets (version absent, status 4,
///     id 8, has_message 28, payload 16, headers 20, trailers 24; absent ones 0)
/// 24  Reply table: soffset 20 (vtable at 4) | status uoffset | id u64 | payload uoffset
///     | headers uoffset | trailers uoffset | has_message u8 | pad
/// 56  payload vector: u32 len, bytes, pad to 4
/// ..  Status vtable (size 10, table size 16, code 4, message 8, details 12), Status table
///     (soffset, code i32, message uoffset, details uoffset), message string (u32 len, bytes,
///     NUL, pad), details vector
/// ..  headers, trailers: `[Metadata]` vectors (laid out by the `flatbuffers` builder, copied)
/// ```
///
/// Metadata and details are off the hot path (they are only asked for, or come with errors):
/// they cost an allocation each; a plain reply with a payload costs none.
pub fn write_reply(buf: &mut [u8], parts: &ReplyParts<'_>) -> Result<usize, WireError> {
    let need = reply_len(parts);
    if buf.len() < need {
        return Err(WireError::NoRoom {
            need,
            have: buf.len(),
        });
    }
    let buf = &mut buf[..need];
    put_reply_table(buf, parts.id, parts.payload.is_some());
    let t = REPLY_TABLE;
    let mut pos = PAYLOAD_VECTOR;
    if let Some(p) = parts.payload {
        pos = coaligned_vector_pos(buf.as_ptr(), p.as_ptr());
        buf[PAYLOAD_VECTOR..pos].fill(0);
        put_u32(buf, t + AT_PAYLOAD, (pos - (t + AT_PAYLOAD)) as u32);
        put_u32(buf, pos, p.len() as u32);
        buf[pos + 4..pos + 4 + p.len()].copy_from_slice(p);
        let end = pos + 4 + p.len();
        pos = align4(end);
        buf[end..pos].fill(0);
    }
    let pos = write_tail(buf, pos, parts);
    debug_assert!(pos <= need);
    Ok(pos)
}

/// Writes the status, details, headers and trailers of `parts` from `pos` on (4-aligned; the
/// room was checked by the caller with [`tail_len`]) and links them from the Reply table.
/// Returns the end.
fn write_tail(buf: &mut [u8], mut pos: usize, parts: &ReplyParts<'_>) -> usize {
    let t = REPLY_TABLE;
    if let Some((code, msg)) = parts.status {
        let svt = pos;
        let st = svt + align4(STATUS_VTABLE_LEN);
        buf[svt..st].fill(0);
        put_u16(buf, svt, STATUS_VTABLE_LEN as u16);
        put_u16(buf, svt + 2, STATUS_TABLE_LEN as u16);
        put_u16(buf, svt + 4, 4); // code
        put_u16(buf, svt + 6, 8); // message
        put_u32(buf, st, (st - svt) as u32);
        put_u32(buf, st + 4, code as u32);
        put_u32(buf, st + 12, 0);
        let m = st + STATUS_TABLE_LEN;
        put_u32(buf, st + 8, (m - (st + 8)) as u32);
        put_u16(buf, REPLY_VTABLE + 4 + 2, AT_STATUS as u16); // field 1: status
        put_u32(buf, t + AT_STATUS, (st - (t + AT_STATUS)) as u32);
        put_u32(buf, m, msg.len() as u32);
        buf[m + 4..m + 4 + msg.len()].copy_from_slice(msg.as_bytes());
        let end = m + 4 + msg.len();
        pos = align4(end + 1);
        buf[end..pos].fill(0);
        if let Some(d) = parts.details {
            put_u16(buf, svt + 8, 12); // details
            put_u32(buf, st + 12, (pos - (st + 12)) as u32);
            put_u32(buf, pos, d.len() as u32);
            buf[pos + 4..pos + 4 + d.len()].copy_from_slice(d);
            let end = pos + 4 + d.len();
            pos = align4(end);
            buf[end..pos].fill(0);
        }
    }
    for (md, slot, field) in [
        (parts.headers, AT_HEADERS, 5),
        (parts.trailers, AT_TRAILERS, 6),
    ] {
        let Some(md) = md else { continue };
        // 8-aligned start: the chunk's alignment holds relative to its start.
        let at = (pos + 7) & !7;
        buf[pos..at].fill(0);
        let chunk = metadata_chunk(md);
        buf[at..at + chunk.len()].copy_from_slice(&chunk);
        let root = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) as usize;
        put_u16(buf, REPLY_VTABLE + 4 + 2 * field, slot as u16);
        put_u32(buf, t + slot, (at + root - (t + slot)) as u32);
        pos = at + chunk.len();
    }
    pos
}

/// A `[Metadata]` vector as a standalone FlatBuffers chunk: a root `u32` offset to the vector,
/// then the vector, tables and strings, all addressed relatively (so the chunk can be copied to
/// any 8-aligned position).
fn metadata_chunk(md: &MetadataList) -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::with_capacity(metadata_len(md));
    let entries: Vec<_> = md
        .iter()
        .map(|(k, v)| {
            let key = fbb.create_string(k);
            let value = fbb.create_vector(v);
            Metadata::create(
                &mut fbb,
                &MetadataArgs {
                    key: Some(key),
                    value: Some(value),
                },
            )
        })
        .collect();
    let vec = fbb.create_vector(&entries);
    fbb.finish_minimal(vec);
    fbb.finished_data().to_vec()
}

/// Writes the fixed part of the layout (root offset, Reply vtable and table) into
/// `buf[..PAYLOAD_VECTOR]`; the other offsets are filled in as their parts are written.
fn put_reply_table(buf: &mut [u8], id: u64, payload: bool) {
    buf[..PAYLOAD_VECTOR].fill(0);
    put_u32(buf, 0, REPLY_TABLE as u32);
    let vt = REPLY_VTABLE;
    put_u16(buf, vt, REPLY_VTABLE_LEN as u16);
    put_u16(buf, vt + 2, (AT_HAS_MESSAGE + 1) as u16);
    // field 0 version: absent (default Current); 1 status, 5 headers, 6 trailers: by write_tail.
    if id != 0 {
        put_u16(buf, vt + 4 + 2 * 2, AT_ID as u16);
    }
    put_u16(buf, vt + 4 + 2 * 3, AT_HAS_MESSAGE as u16);
    if payload {
        put_u16(buf, vt + 4 + 2 * 4, AT_PAYLOAD as u16);
    }
    let t = REPLY_TABLE;
    put_u32(buf, t, (t - vt) as u32); // soffset: vtable = table - soffset
    put_u64(buf, t + AT_ID, id);
    buf[t + AT_HAS_MESSAGE] = u8::from(payload);
}

/// Bytes a reply needs in front of a payload vector it reuses ([`write_reply_around`]).
pub const REPLY_HEADER_LEN: usize = PAYLOAD_VECTOR;

/// Turns a buffer that already holds a byte vector at `vector_at` (its `u32` length prefix; for
/// instance the payload of an echo request, in the request's own slot) into a `Reply` carrying
/// that vector as its payload, by writing the reply's fixed part in front of it: no payload
/// copy. Returns the reply's length (up to the vector's end).
pub fn write_reply_around(buf: &mut [u8], vector_at: usize) -> Result<usize, WireError> {
    write_reply_around_with(buf, vector_at, &ReplyParts::default())
}

/// [`write_reply_around`] plus the id, status and metadata of `parts` (its payload is
/// ignored), written after the vector.
pub fn write_reply_around_with(
    buf: &mut [u8],
    vector_at: usize,
    parts: &ReplyParts<'_>,
) -> Result<usize, WireError> {
    let end = reply_around_end(buf, vector_at)?;
    let need = align4(end) + tail_len(parts);
    if need > buf.len() {
        return Err(WireError::NoRoom {
            need,
            have: buf.len(),
        });
    }
    put_reply_table(buf, parts.id, true);
    let t = REPLY_TABLE;
    put_u32(buf, t + AT_PAYLOAD, (vector_at - (t + AT_PAYLOAD)) as u32);
    if tail_len(parts) == 0 {
        return Ok(end);
    }
    let pos = align4(end);
    buf[end..pos].fill(0);
    Ok(write_tail(buf, pos, parts))
}

/// Bytes [`write_reply_around_with`] needs for a vector of `len` bytes at `vector_at`.
pub fn reply_around_len(vector_at: usize, len: usize, parts: &ReplyParts<'_>) -> usize {
    align4(vector_at + 4 + len) + tail_len(parts)
}

/// The end of the byte vector at `vector_at`, checked.
fn reply_around_end(buf: &[u8], vector_at: usize) -> Result<usize, WireError> {
    let bad = || WireError::NoRoom {
        need: vector_at.max(PAYLOAD_VECTOR) + 4,
        have: buf.len(),
    };
    if vector_at < PAYLOAD_VECTOR || !vector_at.is_multiple_of(4) {
        return Err(bad());
    }
    let len_bytes = buf.get(vector_at..vector_at + 4).ok_or_else(bad)?;
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    vector_at
        .checked_add(4 + len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or_else(bad)
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
        assert!(n <= reply_len(&parts));
        let r = parse_reply(&buf[..n]).unwrap();
        assert_eq!(r.version().0, WIRE_VERSION);
        assert_eq!(r.id(), parts.id);
        assert_eq!(r.has_message(), parts.payload.is_some());
        assert_eq!(r.payload().map(|v| v.bytes()), parts.payload);
        check_tail(&r, &parts);
    }

    fn check_tail(r: &Reply<'_>, parts: &ReplyParts<'_>) {
        match parts.status {
            None => assert!(r.status().is_none()),
            Some((code, msg)) => {
                let st = r.status().unwrap();
                assert_eq!(st.code(), code);
                assert_eq!(st.message(), Some(msg));
                assert_eq!(st.details().map(|d| d.bytes()), parts.details);
            }
        }
        let list =
            |v: Option<flatbuffers::Vector<'_, flatbuffers::ForwardsUOffset<Metadata<'_>>>>| {
                v.map(|v| {
                    v.iter()
                        .map(|m| (m.key().to_owned(), m.value().unwrap().bytes().to_vec()))
                        .collect::<Vec<_>>()
                })
            };
        assert_eq!(list(r.headers()).as_deref(), parts.headers);
        assert_eq!(list(r.trailers()).as_deref(), parts.trailers);
    }

    fn md(n: usize) -> Vec<(String, Vec<u8>)> {
        (0..n)
            .map(|i| {
                let k = format!("key-{i}{}", "k".repeat(i % 5));
                let v: Vec<u8> = (0..i * 7).map(|b| (b * 31 + i) as u8).collect();
                (k, v)
            })
            .collect()
    }

    #[test]
    fn replies_with_details_and_metadata() {
        for (h, t) in [(0, 0), (1, 0), (0, 1), (3, 5), (40, 2)] {
            let (hs, ts) = (md(h), md(t));
            for status in [None, Some((13, "boom ✓")), Some((4, ""))] {
                for details in [None, Some(&b"\x00\x01details"[..]), Some(&b""[..])] {
                    for payload in [None, Some(&b""[..]), Some(&b"payload!"[..])] {
                        let parts = ReplyParts {
                            status,
                            details: status.and(details),
                            id: 77,
                            payload,
                            headers: (h > 0).then_some(&hs[..]),
                            trailers: (t > 0).then_some(&ts[..]),
                        };
                        roundtrip(parts);
                    }
                }
            }
        }
    }

    #[test]
    fn reply_around_with_a_tail() {
        let (hs, ts) = (md(4), md(2));
        let parts = ReplyParts {
            status: Some((2, "trailing")),
            details: Some(b"d"),
            id: 5,
            headers: Some(&hs),
            trailers: Some(&ts),
            ..Default::default()
        };
        for n in [0usize, 1, 5, 300] {
            let at = REPLY_HEADER_LEN;
            let need = reply_around_len(at, n, &parts);
            let mut s = slot(need);
            let buf = bytes(&mut s);
            buf[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
            let p: Vec<u8> = (0..n).map(|i| i as u8).collect();
            buf[at + 4..at + 4 + n].copy_from_slice(&p);
            let len = write_reply_around_with(buf, at, &parts).unwrap();
            assert!(len <= need);
            let r = parse_reply(&buf[..len]).unwrap();
            assert_eq!(r.payload().unwrap().bytes(), &p[..]);
            assert_eq!(r.id(), 5);
            check_tail(&r, &parts);
            let mut small = slot(need - 64);
            let small = bytes(&mut small);
            small[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
            assert!(write_reply_around_with(small, at, &parts).is_err());
        }
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
                id: n as u64 * 0x1_0000_0001,
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
                id: 9,
                ..Default::default()
            });
        }
    }

    #[test]
    fn reply_around_an_existing_vector() {
        for n in [0usize, 1, 3, 4, 5, 1000] {
            let p: Vec<u8> = (0..n).map(|i| (i * 3) as u8).collect();
            for at in [REPLY_HEADER_LEN, REPLY_HEADER_LEN + 4, 100, 256] {
                let mut s = slot(at + 4 + n + 40);
                let buf = bytes(&mut s);
                buf[at..at + 4].copy_from_slice(&(n as u32).to_le_bytes());
                buf[at + 4..at + 4 + n].copy_from_slice(&p);
                let len = write_reply_around(buf, at).unwrap();
                assert_eq!(len, at + 4 + n);
                let r = parse_reply(&buf[..len]).unwrap();
                assert!(r.has_message());
                assert_eq!(r.payload().unwrap().bytes(), &p[..]);
                assert!(r.status().is_none());
            }
        }
        let mut s = slot(256);
        let buf = bytes(&mut s);
        assert!(
            write_reply_around(buf, REPLY_HEADER_LEN - 4).is_err(),
            "no room in front"
        );
        assert!(write_reply_around(buf, 58).is_err(), "misaligned");
        buf[200..204].copy_from_slice(&100u32.to_le_bytes());
        assert!(write_reply_around(buf, 200).is_err(), "vector past the end");
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
        let data = &echo_request(b"hello", 0)[..];
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
