//! Reply writing and delivery: a reply is written into an arena slot (a new one, or around a
//! received message in its own slot), handed to its call, and the task answered with the reply's
//! descriptor.
//!
//! ```text
//! gRPC result ─► grpc_done ─► reply_around (message in slot P) / reply_slot (status, id)
//!                                   │
//! command reply ─────────────────► deliver ─► calls.replied: Lua waits ─► Answer::Reply(Desc)
//!                                                         gave up  ─► slot freed, RC_ABANDONED
//! ```

use std::time::Instant;

use tonic::Status;

use super::answer::{Answer, RC_ABANDONED, RC_BAD_REQUEST, RC_EXHAUSTED};
use super::calls::{self, Deliver};
use super::Instance;
use crate::arena::{Handle, Lease};
use crate::codec::{Inbound, INBOUND_VECTOR_AT};
use crate::grpc::{OpResult, Received};
use crate::queue::{Desc, Task};
use crate::wire::{self, ReplyParts};

/// A gRPC status as reply parts (the message with its code name first, as Lua reports it).
pub(super) fn status_parts(st: &Status) -> ReplyParts<'_> {
    ReplyParts {
        status: Some((st.code() as i32, st.message())),
        ..Default::default()
    }
}

/// No room in the arena for a reply.
fn exhausted(e: impl std::fmt::Display) -> Answer {
    Answer::Error(RC_EXHAUSTED, format!("RESOURCE_EXHAUSTED: reply: {e}"))
}

impl Instance {
    /// The answer to a request whose reply is written (handed to the call), or that failed
    /// (the call is forgotten then).
    pub(super) fn delivered(&self, req: &Handle, reply: Result<(Lease, u32), Answer>) -> Answer {
        match reply {
            Ok((lease, len)) => self.deliver(req, lease, len),
            Err(answer) => {
                self.calls.failed(req);
                answer
            }
        }
    }

    /// A gRPC operation launched at `began` (when the plan weighs waits) finished (on the
    /// event loop or a tokio thread): write the reply and answer the task.
    pub(super) fn grpc_done(
        &self,
        task: Task,
        req: &Handle,
        result: OpResult,
        began: Option<Instant>,
    ) {
        self.running().remove(&calls::key(req));
        self.finished_one(began);
        let opened = result.as_ref().map_or(0, |r| r.stream_id);
        let reply = match result {
            Ok(Received {
                message: Some(Inbound { lease }),
                stream_id,
                headers,
                trailers,
            }) => {
                let parts = ReplyParts {
                    id: stream_id,
                    headers: headers.as_deref(),
                    trailers: trailers.as_deref(),
                    ..Default::default()
                };
                self.reply_around(lease, &parts)
            }
            Ok(Received {
                message: None,
                stream_id,
                headers,
                trailers,
            }) => self.reply_slot(ReplyParts {
                id: stream_id,
                headers: headers.as_deref(),
                trailers: trailers.as_deref(),
                ..Default::default()
            }),
            Err(st) => {
                let trailers = crate::grpc::metadata_list(st.metadata());
                let details = (!st.details().is_empty()).then(|| st.details());
                self.reply_slot(ReplyParts {
                    details,
                    trailers: (!trailers.is_empty()).then_some(&trailers[..]),
                    ..status_parts(&st)
                })
            }
        };
        let answer = self.delivered(req, reply);
        if opened != 0 && answer == Answer::Empty(RC_ABANDONED) {
            // Nobody will learn this stream's id.
            self.cancel_stream(opened);
        }
        answer.send(task)
    }

    /// A reply around a received message: in its own slot when the tail fits there, else
    /// copied into a bigger slot (only when metadata makes the tail large).
    fn reply_around(
        &self,
        mut lease: Lease,
        parts: &ReplyParts<'_>,
    ) -> Result<(Lease, u32), Answer> {
        let at = INBOUND_VECTOR_AT;
        let len = lease.u32_at(at).ok_or_else(|| {
            Answer::Error(RC_BAD_REQUEST, "received message outside its slot".into())
        })? as usize;
        let need = wire::reply_around_len(at, len, parts);
        if need > lease.len() {
            let mut bigger = self.arena.lease(need).map_err(exhausted)?;
            bigger.as_mut_slice()[at..at + 4 + len]
                .copy_from_slice(&lease.as_slice()[at..at + 4 + len]);
            lease = bigger;
        }
        match wire::write_reply_around_with(lease.as_mut_slice(), at, parts) {
            Ok(n) => Ok((lease, n as u32)),
            Err(e) => Err(Answer::Error(RC_BAD_REQUEST, e.to_string())),
        }
    }

    /// Leases a slot and writes a reply into it.
    pub(super) fn reply_slot(&self, parts: ReplyParts<'_>) -> Result<(Lease, u32), Answer> {
        let need = wire::reply_len(&parts);
        let mut lease = self.arena.lease(need).map_err(exhausted)?;
        let len = wire::write_reply(lease.as_mut_slice(), &parts)
            .map_err(|e| Answer::Error(RC_EXHAUSTED, e.to_string()))?;
        Ok((lease, len as u32))
    }

    /// Hands the reply to the call (or frees it when Lua is gone).
    fn deliver(&self, req: &Handle, reply: Lease, len: u32) -> Answer {
        let h = reply.into_handle();
        match self.calls.replied(req, h) {
            Deliver::Send => Answer::Reply(Desc {
                slot_offset: h.offset,
                slot_gen: h.gen,
                buf_offset: 0,
                buf_len: len,
            }),
            Deliver::Drop => {
                let _ = self.arena.release(h);
                Answer::Empty(RC_ABANDONED)
            }
        }
    }
}
