//! A tonic [`Codec`] over arena bytes, so messages cross between Lua and the network with one
//! copy each way and no protobuf work in Rust:
//!
//! - out: the request payload is `Bytes` that borrow its arena slot (`Bytes::from_owner` over
//!   the request's [`Lease`]); the encoder copies it once into tonic's send buffer;
//! - both copies go through [`crate::copy`], which avoids glibc `memcpy`'s slow band;
//! - in: the decoder copies the message once from tonic's receive buffer into a fresh arena
//!   slot, as a byte vector placed so that a `Reply` can be written in front of it
//!   ([`wire::write_reply_around`]): the bytes are never moved again.

use bytes::{Buf, BufMut, Bytes};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use crate::arena::{Arena, Lease};
use crate::wire;

/// Where an inbound message's byte vector starts in its slot.
pub const INBOUND_VECTOR_AT: usize = wire::REPLY_HEADER_LEN;

/// A message received into the arena: its slot, with the message as a byte vector (`u32`
/// length, bytes) at [`INBOUND_VECTOR_AT`].
pub struct Inbound {
    pub lease: Lease,
}

/// Raw-bytes codec: sends `Bytes`, receives [`Inbound`] arena slots.
#[derive(Clone)]
pub struct ArenaCodec {
    arena: Arena,
}

impl ArenaCodec {
    pub fn new(arena: Arena) -> ArenaCodec {
        ArenaCodec { arena }
    }
}

impl Codec for ArenaCodec {
    type Encode = Bytes;
    type Decode = Inbound;
    type Encoder = BytesEncoder;
    type Decoder = ArenaDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ArenaDecoder {
        ArenaDecoder {
            arena: self.arena.clone(),
        }
    }
}

/// Copies outgoing bytes into tonic's buffer.
pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let n = item.len();
        dst.reserve(n);
        let chunk = dst.chunk_mut();
        if chunk.len() < n {
            // Not contiguous (does not happen with tonic's BytesMut after `reserve`).
            dst.put(item);
            return Ok(());
        }
        // SAFETY: `chunk` has at least `n` writable bytes (checked above), which do not overlap
        // `item` (an arena slot); `advance_mut(n)` then marks exactly those bytes initialized.
        unsafe {
            crate::copy::copy_raw(chunk.as_mut_ptr(), item.as_ptr(), n);
            dst.advance_mut(n);
        }
        Ok(())
    }
}

/// Copies incoming messages into arena slots.
pub struct ArenaDecoder {
    arena: Arena,
}

impl Decoder for ArenaDecoder {
    type Item = Inbound;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Inbound>, Status> {
        let n = src.remaining();
        let mut lease = self
            .arena
            .lease(INBOUND_VECTOR_AT + 4 + n)
            .map_err(|e| Status::resource_exhausted(format!("arena: {e}")))?;
        let buf = lease.as_mut_slice();
        buf[INBOUND_VECTOR_AT..INBOUND_VECTOR_AT + 4].copy_from_slice(&(n as u32).to_le_bytes());
        let mut at = INBOUND_VECTOR_AT + 4;
        while src.has_remaining() {
            let chunk = src.chunk();
            let len = chunk.len();
            crate::copy::copy(&mut buf[at..at + len], chunk);
            at += len;
            src.advance(len);
        }
        Ok(Some(Inbound { lease }))
    }
}
