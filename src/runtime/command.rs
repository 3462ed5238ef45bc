//! Wire command → operation: a claimed request's envelope is verified, its command read out, and
//! turned into what the runtime does next ([`Run`]).
//!
//! ```text
//! request slot R ─► verify (bounded) ─► Echo     ─► reply around the payload, in R (no copy),
//!                                   │               or a copy into a new slot
//!                                   ├─► Connect / Close / StreamCancel / Metrics
//!                                   │     ─► reply now (new slot)
//!                                   └─► Call / StreamSend / StreamRecv / StreamCloseSend
//!                                         ─► fields read out (owned), the message's range in R
//!                                         ─► Op, its message Bytes::from_owner(R) sliced once
//! ```
//!
//! The envelope borrows R while it is read; R is handed on (to the echo reply, or as the owner of
//! the message's `Bytes`) only after, so every field the operation needs is copied out first and
//! the message is addressed by its range in R ([`Lease::range_of`]).

use std::ops::Range;
use std::time::Duration;

use bytes::Bytes;
use tonic::Status;

use super::answer::{Answer, RC_BAD_REQUEST};
use super::reply::status_parts;
use super::Instance;
use crate::arena::{Handle, Lease};
use crate::grpc::{CallSpec, ConnectOpts, Kind, Op};
use crate::queue::Desc;
use crate::wire::{self, CallKind, Command, ReplyParts, Request};

/// What running a claimed request produced.
pub(super) enum Run {
    /// The reply, written: its slot and length.
    Reply(Lease, u32),
    /// A gRPC operation to start; its reply comes when it finishes.
    Grpc(Op),
    /// The echo test hook (`Echo.delay_ms`) asked for a delay: run the request again after it,
    /// with [`Delays::Ignore`].
    Later(Duration, Claimed),
}

/// A request whose slot the runtime owns now.
pub(super) struct Claimed {
    pub(super) lease: Lease,
    pub(super) desc: Desc,
    /// The request slot's handle as Lua posted it: the call's key.
    pub(super) req: Handle,
}

/// Whether [`Instance::run`] honours the echo test hook's delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Delays {
    Honour,
    Ignore,
}

/// A command read out of its envelope, owning what it needs, so the request slot can go on.
enum Read {
    /// Answered already (a reply in a new slot).
    Replied(Lease, u32),
    /// An echo whose payload vector starts at this offset of the request slot, with room for
    /// the reply's fixed part in front of it.
    EchoInPlace(usize),
    /// A gRPC operation; its message, if it has one, stays in the request slot.
    Grpc(GrpcRead),
}

/// A gRPC operation read from the envelope; `message`: the range of its message in the request
/// slot.
enum GrpcRead {
    Call(Box<CallRead>),
    Send {
        stream_id: u64,
        message: Range<usize>,
    },
    Recv {
        stream_id: u64,
        headers_only: bool,
    },
    CloseSend {
        stream_id: u64,
        finish: bool,
    },
}

/// A `Call` command's fields (a [`CallSpec`] but for its payload).
struct CallRead {
    conn_id: u64,
    kind: Kind,
    path: String,
    timeout: Option<Duration>,
    metadata: Vec<(String, Vec<u8>)>,
    want_metadata: bool,
    compression: Option<String>,
    message: Range<usize>,
}

impl GrpcRead {
    /// The operation, its message (if any) `Bytes` over the request slot, which then lives until
    /// tonic has sent it; otherwise the slot is freed here.
    fn into_op(self, slot: Lease) -> Op {
        let message = |range: Range<usize>| Bytes::from_owner(slot).slice(range);
        match self {
            GrpcRead::Call(c) => {
                let c = *c;
                Op::Call(Box::new(CallSpec {
                    payload: message(c.message),
                    conn: c.conn_id,
                    kind: c.kind,
                    path: c.path,
                    timeout: c.timeout,
                    metadata: c.metadata,
                    want_metadata: c.want_metadata,
                    compression: c.compression,
                }))
            }
            GrpcRead::Send {
                stream_id,
                message: range,
            } => Op::Send {
                stream: stream_id,
                payload: message(range),
            },
            GrpcRead::Recv {
                stream_id,
                headers_only,
            } => Op::Recv {
                stream: stream_id,
                headers_only,
            },
            GrpcRead::CloseSend { stream_id, finish } => Op::CloseSend {
                stream: stream_id,
                finish,
            },
        }
    }
}

/// A refusal of the request (rc [`RC_BAD_REQUEST`]).
fn bad(msg: impl Into<String>) -> Answer {
    Answer::Error(RC_BAD_REQUEST, msg.into())
}

/// A command's table, or a refusal when the envelope names the command without one.
fn table<T>(t: Option<T>, command: &str) -> Result<T, Answer> {
    t.ok_or_else(|| bad(format!("{command} without a table")))
}

/// Milliseconds as an optional duration (0: none).
fn ms(v: u32) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(u64::from(v)))
}

impl Instance {
    /// Verifies the envelope of a claimed request and runs its command. With
    /// [`Delays::Honour`], an echo with `delay_ms` comes back untouched as [`Run::Later`].
    pub(super) fn run(&self, claimed: Claimed, delays: Delays) -> Result<Run, Answer> {
        let read = {
            let request = self.verify(&claimed.lease, &claimed.desc)?;
            if delays == Delays::Honour {
                if let Some(delay) = echo_delay(&request) {
                    return Ok(Run::Later(delay, claimed));
                }
            }
            self.read(&claimed.lease, &request)?
        };
        let mut lease = claimed.lease;
        match read {
            Read::Replied(reply, len) => Ok(Run::Reply(reply, len)),
            Read::EchoInPlace(vector_at) => {
                let len = wire::write_reply_around(lease.as_mut_slice(), vector_at)
                    .map_err(|e| bad(e.to_string()))?;
                Ok(Run::Reply(lease, len as u32))
            }
            Read::Grpc(op) => Ok(Run::Grpc(op.into_op(lease))),
        }
    }

    /// The verified envelope inside the request slot.
    fn verify<'a>(&self, lease: &'a Lease, desc: &Desc) -> Result<Request<'a>, Answer> {
        let bytes = lease
            .as_slice()
            .get(desc.buf_offset as usize..)
            .ok_or_else(|| bad("envelope outside its slot"))?;
        wire::parse_request(bytes, self.config.max_message).map_err(|e| bad(e.to_string()))
    }

    /// Reads the command out of the envelope; commands that answer at once run here.
    fn read(&self, slot: &Lease, req: &Request<'_>) -> Result<Read, Answer> {
        let message = |v: Option<flatbuffers::Vector<'_, u8>>| match v {
            None => Ok(0..0),
            Some(v) => slot
                .range_of(v.bytes())
                .ok_or_else(|| bad("message outside its slot")),
        };
        let replied = |parts: ReplyParts<'_>| {
            self.reply_slot(parts)
                .map(|(lease, len)| Read::Replied(lease, len))
        };
        match req.command_type() {
            Command::Echo => {
                let payload = req.command_as_echo().and_then(|e| e.payload());
                let Some(payload) = payload else {
                    return replied(ReplyParts {
                        payload: Some(&[]),
                        ..Default::default()
                    });
                };
                // The payload already lies in the request's slot, which the runtime owns now:
                // answer in that slot, writing the reply's fixed part in front of the payload,
                // when Lua left room for it (resty.grpc_zc does). Otherwise copy it.
                let vector_at = slot
                    .range_of(payload.bytes())
                    .and_then(|r| r.start.checked_sub(4));
                match vector_at {
                    Some(at) if at >= wire::REPLY_HEADER_LEN => Ok(Read::EchoInPlace(at)),
                    _ => replied(ReplyParts {
                        payload: Some(payload.bytes()),
                        ..Default::default()
                    }),
                }
            }
            Command::Connect => {
                let c = table(req.command_as_connect(), "Connect")?;
                let opts = ConnectOpts {
                    target: c.target().to_owned(),
                    authority: c.authority().map(str::to_owned),
                    connect_timeout: ms(c.connect_timeout_ms()),
                    default_timeout: ms(c.default_timeout_ms()),
                    keepalive_interval: ms(c.keepalive_interval_ms()),
                    keepalive_timeout: ms(c.keepalive_timeout_ms()),
                    ca_pem: c.ca_pem().map(|v| v.bytes().to_vec()),
                    cert_pem: c.cert_pem().map(|v| v.bytes().to_vec()),
                    key_pem: c.key_pem().map(|v| v.bytes().to_vec()),
                    insecure: c.insecure(),
                    max_send: c.max_send_msg_size() as usize,
                    max_recv: c.max_recv_msg_size() as usize,
                    compression: c.compression().map(str::to_owned),
                    service_config: c.service_config().map(str::to_owned),
                    resolve_interval: ms(c.resolve_interval_ms()),
                };
                let grpc = self
                    .grpc()
                    .map_err(|_| Status::internal("no tokio runtime"));
                match grpc.and_then(|g| g.connect(&opts)) {
                    Ok(conn_id) => replied(ReplyParts {
                        id: conn_id,
                        ..Default::default()
                    }),
                    Err(st) => replied(status_parts(&st)),
                }
            }
            Command::Close => {
                let conn_id = req.command_as_close().map_or(0, |c| c.conn());
                if let Some(g) = self.grpc.get() {
                    g.close(conn_id);
                }
                replied(ReplyParts::default())
            }
            Command::Call => {
                let c = table(req.command_as_call(), "Call")?;
                let kind = match c.kind() {
                    CallKind::Unary => Kind::Unary,
                    CallKind::ClientStreaming => Kind::ClientStreaming,
                    CallKind::ServerStreaming => Kind::ServerStreaming,
                    CallKind::Bidi => Kind::Bidi,
                    other => {
                        return replied(ReplyParts {
                            status: Some((3, &format!("unknown call kind {}", other.0))),
                            ..Default::default()
                        })
                    }
                };
                let metadata = c
                    .metadata()
                    .iter()
                    .flatten()
                    .map(|m| {
                        let v = m.value().map_or(Vec::new(), |v| v.bytes().to_vec());
                        (m.key().to_owned(), v)
                    })
                    .collect();
                Ok(Read::Grpc(GrpcRead::Call(Box::new(CallRead {
                    conn_id: c.conn(),
                    kind,
                    path: c.path().to_owned(),
                    timeout: ms(c.timeout_ms()),
                    metadata,
                    want_metadata: c.want_metadata(),
                    compression: c.compression().map(str::to_owned),
                    message: message(c.payload())?,
                }))))
            }
            Command::StreamSend => {
                let c = table(req.command_as_stream_send(), "StreamSend")?;
                Ok(Read::Grpc(GrpcRead::Send {
                    stream_id: c.stream(),
                    message: message(c.payload())?,
                }))
            }
            Command::StreamRecv => {
                let c = table(req.command_as_stream_recv(), "StreamRecv")?;
                Ok(Read::Grpc(GrpcRead::Recv {
                    stream_id: c.stream(),
                    headers_only: c.headers_only(),
                }))
            }
            Command::StreamCloseSend => {
                let c = table(req.command_as_stream_close_send(), "StreamCloseSend")?;
                Ok(Read::Grpc(GrpcRead::CloseSend {
                    stream_id: c.stream(),
                    finish: c.finish(),
                }))
            }
            Command::StreamCancel => {
                let stream_id = req.command_as_stream_cancel().map_or(0, |c| c.stream());
                self.cancel_stream(stream_id);
                replied(ReplyParts::default())
            }
            Command::Metrics => {
                // Before the first connect there is nothing to count: an empty snapshot, without
                // starting the gRPC side for it.
                let json = match self.grpc.get() {
                    Some(g) => g.metrics_json(),
                    None => crate::grpc::Metrics::default().snapshot_json(&|_| Vec::new()),
                };
                replied(ReplyParts {
                    payload: Some(json.as_bytes()),
                    ..Default::default()
                })
            }
            other => replied(ReplyParts {
                status: Some((12, &format!("UNIMPLEMENTED: command {other:?}"))),
                ..Default::default()
            }),
        }
    }
}

/// The delay of an `Echo` request with `delay_ms` (a test hook).
fn echo_delay(req: &Request<'_>) -> Option<Duration> {
    ms(req.command_as_echo()?.delay_ms())
}
