//! gRPC over tonic: channels shared per target, and calls that run on the instance's tokio
//! runtime. Safe Rust only; payloads arrive as `Bytes` over arena slots and leave as arena
//! slots ([`crate::codec`]).
//!
//! Every operation Lua posts becomes an [`Op`]; [`Grpc::start`] runs it on the runtime and
//! hands its [`OpResult`] to a callback on a runtime thread. Unary calls are one task each;
//! streams are a driver task each, addressed by a stream id.
//!
//! ```text
//! Grpc (this file: the facade, operations dispatched)
//!  ├─ channel.rs   ConnectOpts, the connection table, targets
//!  │   └─ connection.rs  an endpoint's HTTP/2 connection (TLS/mTLS, hyper), what calls go through
//!  │       └─ handshake.rs  its socket (TCP, unix:), connect_timeout over the whole setup
//!  ├─ op.rs        Op, CallSpec, Received: what the runtime posts and gets back
//!  ├─ unary.rs     the unary call
//!  ├─ stream.rs    streams: driver tasks, send / recv / close_send
//!  ├─ response.rs  responses that are not gRPC, messages cut short
//!  ├─ status.rs    local and transport failures in grpc-go's words
//!  ├─ metrics.rs   gRFC A66 client instruments per target and method, the JSON snapshot
//!  └─ metadata.rs  request head out, headers and trailers in
//! ```
//!
//! The gRPC layer sits below the runtime and above the codec: it imports nothing from
//! `runtime`, `ffi` or `queue`; the payload limit comes in through [`Grpc::new`].
#![forbid(unsafe_code)]

mod balancer;
mod channel;
mod connection;
mod endpoint;
mod handshake;
mod metadata;
mod metrics;
mod name;
mod op;
mod replay;
mod resolver;
mod response;
mod retry;
mod service_config;
mod status;
mod stream;
mod unary;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tonic::Status;

use self::channel::{Conn, Connections};
use self::status::too_large_to_send;
use self::stream::Streams;
use crate::arena::Arena;
use crate::codec::ArenaCodec;
use crate::config::CpuList;
pub use channel::{ConnectOpts, DEFAULT_MAX_RECV};
pub use metadata::metadata_list;
pub use metrics::{EndpointView, MethodMetrics, Metrics, TargetMetrics};
pub use op::{CallSpec, Kind, Op, OpResult, Received};

/// The instance's gRPC side: a small tokio runtime, its connections and its streams.
pub struct Grpc {
    /// Where calls run: the instance's event loop (on its poll thread), or `owned`.
    rt: tokio::runtime::Handle,
    /// A runtime of its own, when the host cannot be polled asynchronously.
    _owned: Option<tokio::runtime::Runtime>,
    conns: Connections,
    streams: Streams,
    /// Connection and stream ids, from one counter.
    next_id: AtomicU64,
    arena: Arena,
    /// The largest message payload the arena carries (sent or received).
    max_message: usize,
    /// The instance's name, for log lines.
    instance: String,
    /// Client metrics of every call made here.
    metrics: Metrics,
}

/// A call past its checks: a unary call's work, or the id of the stream just opened.
enum Started {
    /// A unary call to run: its connection, codec, call and deadline.
    Unary(Conn, ArenaCodec, Box<CallSpec>, Option<Duration>),
    /// A stream opened under this id (its driver runs).
    Stream(u64),
}

impl Grpc {
    /// Starts the tokio runtime (`threads` workers, named `grpc_zc-io`), its threads pinned to
    /// `cpus` when given (cfg `cpus`). Messages are limited to `max_message` bytes.
    pub fn new(
        arena: Arena,
        instance: &str,
        max_message: usize,
        threads: usize,
        cpus: Option<CpuList>,
    ) -> std::io::Result<Grpc> {
        let name = instance.to_owned();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("grpc_zc-io")
            .on_thread_start(move || {
                if let Some(Err(e)) = cpus.as_ref().map(CpuList::pin_current_thread) {
                    crate::log!(
                        Warn,
                        crate::log::Origin::instance(&name),
                        "grpc_zc-io thread: sched_setaffinity: {e}"
                    );
                }
            })
            .enable_all()
            .build()?;
        let mut g = Grpc::with_handle(arena, instance, max_message, rt.handle().clone());
        g._owned = Some(rt);
        Ok(g)
    }

    /// Runs calls on an existing runtime (the instance's poll thread event loop); messages
    /// are limited to `max_message` bytes.
    pub fn with_handle(
        arena: Arena,
        instance: &str,
        max_message: usize,
        rt: tokio::runtime::Handle,
    ) -> Grpc {
        Grpc {
            rt,
            _owned: None,
            conns: Connections::default(),
            streams: Streams::default(),
            next_id: AtomicU64::new(1),
            arena,
            max_message,
            instance: instance.to_owned(),
            metrics: Metrics::default(),
        }
    }

    /// Returns a connection id for `opts`, sharing the target (its endpoints, each connecting
    /// and reconnecting on its own) of any earlier connection with the same transport settings.
    pub fn connect(&self, opts: &ConnectOpts) -> Result<u64, Status> {
        let origin = crate::log::Origin::instance(&self.instance);
        self.conns.connect(
            opts,
            self.max_message,
            &self.rt,
            &origin,
            &self.metrics,
            || self.next_id.fetch_add(1, Ordering::Relaxed),
        )
    }

    /// Counts a `connect` of `id` down; the id goes with its last one (calls in flight finish
    /// on their own), and the channel with its last id.
    pub fn close(&self, id: u64) -> bool {
        self.conns
            .close(id, &crate::log::Origin::instance(&self.instance))
    }

    /// Connection ids and channels held (for tests and stats).
    pub fn connections(&self) -> (usize, usize) {
        self.conns.counts()
    }

    /// The client metrics registry (the balancer records retries, hedges and picks in it).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics snapshot as JSON (the shape is documented in `metrics.rs`).
    pub fn metrics_json(&self) -> String {
        self.metrics
            .snapshot_json(&|target| self.conns.endpoints(target))
    }

    /// Streams open (started and not yet cancelled or forgotten).
    pub fn streams_open(&self) -> usize {
        self.streams.len()
    }

    /// Cancels a stream (RST_STREAM CANCEL if it is still on the wire) and forgets it;
    /// operations waiting on it end with CANCELLED. Callable from any thread.
    pub fn cancel_stream(&self, id: u64) -> bool {
        self.streams.cancel(id)
    }

    /// Starts `op`; `done` gets its result, always on a runtime thread (never inside this
    /// call). Aborting the returned handle drops the operation (and a unary call on the wire:
    /// RST_STREAM CANCEL), and `done` is never called. The second value is the stream the
    /// operation works on, which the caller cancels when Lua abandons the operation.
    pub fn start(
        &self,
        op: Op,
        done: impl FnOnce(OpResult) + Send + 'static,
    ) -> (tokio::task::AbortHandle, Option<u64>) {
        match op {
            // Each outcome is spawned as its own future type: the unary call's state machine
            // (kilobytes) is built inside its task, so it is moved once, into the task, and
            // the small outcomes do not take its size (moving it through wrappers cost 5-10 %
            // at 64 calls in flight: docs/benchmarks.md).
            Op::Call(call) => match self.begin(call) {
                Ok(Started::Unary(conn, codec, call, timeout)) => {
                    let task = self.rt.spawn(async move {
                        done(unary::call(conn, codec, *call, timeout).await);
                    });
                    (task.abort_handle(), None)
                }
                Ok(Started::Stream(id)) => (
                    self.spawn(
                        std::future::ready(Ok(Received {
                            stream_id: id,
                            ..Default::default()
                        })),
                        done,
                    ),
                    None,
                ),
                Err(st) => (self.spawn(std::future::ready(Err(st)), done), None),
            },
            Op::Send { stream, payload } => (
                self.spawn(self.streams.send(stream, payload), done),
                Some(stream),
            ),
            Op::Recv {
                stream,
                headers_only,
            } => (
                self.spawn(self.streams.recv(stream, headers_only), done),
                Some(stream),
            ),
            Op::CloseSend { stream, finish } => (
                self.spawn(self.streams.close_send(stream, finish), done),
                Some(stream),
            ),
        }
    }

    /// Checks a call against its connection; a stream is opened here (its driver spawned).
    fn begin(&self, call: Box<CallSpec>) -> Result<Started, Status> {
        let Some(conn) = self.conns.get(call.conn) else {
            return Err(Status::invalid_argument(format!(
                "unknown connection {}",
                call.conn
            )));
        };
        let max_send = conn.max_send_for(conn.target.config.method(&call.path));
        if call.payload.len() > max_send {
            return Err(too_large_to_send(call.payload.len(), max_send));
        }
        let codec = ArenaCodec::new(self.arena.clone());
        let timeout = call.timeout.or(conn.default_timeout);
        if call.kind == Kind::Unary {
            return Ok(Started::Unary(conn, codec, call, timeout));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.streams
            .open(&self.rt, id, conn, codec, *call, timeout)
            .map(|()| Started::Stream(id))
    }

    /// Runs `work` on the runtime and hands its result to `done`.
    fn spawn(
        &self,
        work: impl Future<Output = OpResult> + Send + 'static,
        done: impl FnOnce(OpResult) + Send + 'static,
    ) -> tokio::task::AbortHandle {
        self.rt
            .spawn(async move { done(work.await) })
            .abort_handle()
    }
}
