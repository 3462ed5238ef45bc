//! What the runtime hands the gRPC layer ([`Op`], [`CallSpec`]) and what it gets back
//! ([`OpResult`]): owned values, since operations run after the poll thread moved on.

use std::time::Duration;

use bytes::Bytes;
use tonic::Status;

use crate::codec::Inbound;

/// The shape of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Unary,
    ClientStreaming,
    ServerStreaming,
    Bidi,
}

/// A call to start (owned: it runs after the poll thread moved on).
pub struct CallSpec {
    pub conn: u64,
    pub kind: Kind,
    pub path: String,
    pub timeout: Option<Duration>,
    pub metadata: Vec<(String, Vec<u8>)>,
    /// The request of unary and server-streaming calls.
    pub payload: Bytes,
    /// Unary: report response headers and trailers.
    pub want_metadata: bool,
    /// "gzip", "identity" (none) or `None` (the connection's setting).
    pub compression: Option<String>,
}

/// One operation Lua posted.
pub enum Op {
    /// Start a call: a unary call runs to its end; a stream answers with its id at once.
    Call(Box<CallSpec>),
    /// Queue a message on a stream (answered once the stream took it).
    Send { stream: u64, payload: Bytes },
    /// The next message of a stream (or, with `headers_only`, its response headers).
    Recv { stream: u64, headers_only: bool },
    /// Half-close; with `finish`, wait for the one response and the end of the call.
    CloseSend { stream: u64, finish: bool },
}

/// What an operation produced.
#[derive(Default)]
pub struct Received {
    /// The message, in its arena slot.
    pub message: Option<Inbound>,
    /// A new stream's id (0: none).
    pub stream_id: u64,
    pub headers: Option<Vec<(String, Vec<u8>)>>,
    pub trailers: Option<Vec<(String, Vec<u8>)>>,
}

/// The result handed to an operation's callback: an error status carries the trailers as its
/// metadata and `grpc-status-details-bin` as its details, as tonic reports them.
pub type OpResult = Result<Received, Status>;
