//! gRPC over tonic: channels shared per target, and calls that run on the instance's tokio
//! runtime. Safe Rust only; payloads arrive as `Bytes` over arena slots and leave as arena
//! slots ([`crate::codec`]).
//!
//! Every operation Lua posts becomes an [`Op`]; [`Grpc::start`] runs it on the runtime and
//! hands its [`OpResult`] to a callback on a runtime thread. Unary calls are one task each;
//! streams are a driver task each (`stream.rs`), addressed by a stream id.
#![forbid(unsafe_code)]

mod handshake;
mod response;
mod stream;

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::codec::CompressionEncoding;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, KeyAndValueRef, MetadataMap,
    MetadataValue,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use self::response::CheckedChannel;
use crate::arena::Arena;
use crate::codec::{ArenaCodec, Inbound};
use crate::config::CpuList;
pub use stream::Streams;

/// Default limit of a received message, as in grpc-go.
pub const DEFAULT_MAX_RECV: usize = 4 << 20;

/// What `Connect` asks for (owned: it outlives the request slot).
#[derive(Debug, Default, Clone)]
pub struct ConnectOpts {
    pub target: String,
    pub authority: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub default_timeout: Option<Duration>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
    /// TLS: trusted CA (PEM); none means the webpki roots.
    pub ca_pem: Option<Vec<u8>>,
    /// mTLS: client certificate and key (PEM).
    pub cert_pem: Option<Vec<u8>>,
    pub key_pem: Option<Vec<u8>>,
    /// Plaintext h2c even if the target says otherwise.
    pub insecure: bool,
    /// Largest message sent (bytes; 0: the arena's limit).
    pub max_send: usize,
    /// Largest message received (bytes; 0: [`DEFAULT_MAX_RECV`]).
    pub max_recv: usize,
    /// "gzip" or none.
    pub compression: Option<String>,
}

impl ConnectOpts {
    /// TLS is on for `https://` targets and whenever certificates are given, unless `insecure`.
    fn tls(&self) -> bool {
        !self.insecure
            && (self.target.starts_with("https://")
                || self.ca_pem.is_some()
                || self.cert_pem.is_some())
    }

    /// What makes two connections share a channel: everything that shapes the transport.
    fn channel_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.ca_pem, &self.cert_pem, &self.key_pem).hash(&mut h);
        format!(
            "{}|{:?}|{}|{:?}|{:?}|{:?}|{:x}",
            self.target,
            self.authority,
            self.insecure,
            self.connect_timeout,
            self.keepalive_interval,
            self.keepalive_timeout,
            h.finish()
        )
    }
}

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
    /// A new stream's id.
    pub handle: u64,
    pub headers: Option<Vec<(String, Vec<u8>)>>,
    pub trailers: Option<Vec<(String, Vec<u8>)>>,
}

/// The result handed to an operation's callback: an error status carries the trailers as its
/// metadata and `grpc-status-details-bin` as its details, as tonic reports them.
pub type OpResult = Result<Received, Status>;

/// Per-connection settings that calls take.
#[derive(Clone)]
struct Conn {
    channel: Channel,
    key: String,
    default_timeout: Option<Duration>,
    max_send: usize,
    max_recv: usize,
    compression: Option<CompressionEncoding>,
}

/// Connection ids and channels.
///
/// `connect` with the same settings returns the same id (Lua typically connects in every
/// request and never closes: that must not grow anything), counting the connects; `close`
/// counts them down. Channels are shared by every id with the same transport settings
/// ([`ConnectOpts::channel_key`]): all calls to one target multiplex one HTTP/2 connection.
#[derive(Default)]
struct Conns {
    /// Connection id by everything `connect` was given.
    ids: HashMap<String, u64>,
    /// A connection id's settings, its key in `ids`, and its connects not yet closed.
    by_id: HashMap<u64, (Conn, String, usize)>,
    /// Channels, with the number of connection ids using each.
    channels: HashMap<String, (Channel, usize)>,
}

/// The instance's gRPC side: a small tokio runtime, its connections and its streams.
pub struct Grpc {
    /// Where calls run: the instance's event loop (on its poll thread), or `owned`.
    rt: tokio::runtime::Handle,
    /// A runtime of its own, when the host cannot be polled asynchronously.
    _owned: Option<tokio::runtime::Runtime>,
    conns: Mutex<Conns>,
    streams: Streams,
    next_id: AtomicU64,
    arena: Arena,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Grpc {
    /// Starts the tokio runtime (`threads` workers, named `grpc_zc-io`), its threads pinned to
    /// `cpus` when given (cfg `cpus`).
    pub fn new(arena: Arena, threads: usize, cpus: Option<CpuList>) -> std::io::Result<Grpc> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("grpc_zc-io")
            .on_thread_start(move || {
                if let Some(Err(e)) = cpus.as_ref().map(CpuList::pin_current_thread) {
                    eprintln!("resty_grpc_zc: grpc_zc-io thread: sched_setaffinity: {e}");
                }
            })
            .enable_all()
            .build()?;
        let mut g = Grpc::with_handle(arena, rt.handle().clone());
        g._owned = Some(rt);
        Ok(g)
    }

    /// Runs calls on an existing runtime (the instance's poll thread event loop).
    pub fn with_handle(arena: Arena, rt: tokio::runtime::Handle) -> Grpc {
        Grpc {
            rt,
            _owned: None,
            conns: Mutex::new(Conns::default()),
            streams: Streams::default(),
            next_id: AtomicU64::new(1),
            arena,
        }
    }

    /// Returns a connection id for `opts`, sharing the channel (connected lazily, reconnecting
    /// as needed) of any earlier connection with the same transport settings.
    pub fn connect(&self, opts: &ConnectOpts) -> Result<u64, Status> {
        let compression = match opts.compression.as_deref() {
            None | Some("") | Some("identity") => None,
            Some("gzip") => Some(CompressionEncoding::Gzip),
            Some(other) => {
                return Err(Status::invalid_argument(format!(
                    "compression {other:?} not supported (gzip)"
                )))
            }
        };
        let max_message = self.arena.max_message() - crate::runtime::ENVELOPE_SLACK;
        let limit = |v: usize, default: usize| if v == 0 { default } else { v.min(max_message) };
        let max_send = limit(opts.max_send, max_message);
        let max_recv = limit(opts.max_recv, DEFAULT_MAX_RECV.min(max_message));
        let key = opts.channel_key();
        let full = format!(
            "{key}|{:?}|{max_send}|{max_recv}|{compression:?}",
            opts.default_timeout
        );
        let mut conns = lock(&self.conns);
        if let Some(&id) = conns.ids.get(&full) {
            if let Some((_, _, refs)) = conns.by_id.get_mut(&id) {
                *refs += 1;
                return Ok(id);
            }
        }
        let channel = match conns.channels.get_mut(&key) {
            Some((ch, refs)) => {
                *refs += 1;
                ch.clone()
            }
            None => {
                let ch = self.channel(opts)?;
                conns.channels.insert(key.clone(), (ch.clone(), 1));
                ch
            }
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Conn {
            channel,
            key,
            default_timeout: opts.default_timeout,
            max_send,
            max_recv,
            compression,
        };
        conns.ids.insert(full.clone(), id);
        conns.by_id.insert(id, (conn, full, 1));
        Ok(id)
    }

    /// A new lazily connected channel.
    fn channel(&self, opts: &ConnectOpts) -> Result<Channel, Status> {
        let tls = opts.tls();
        if let Some(path) = opts.target.strip_prefix("unix:") {
            return self.unix_channel(path, opts);
        }
        let uri = normalize_target(&opts.target, tls)?;
        let mut ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| Status::invalid_argument(format!("bad target {:?}: {e}", opts.target)))?;
        if tls {
            let mut cfg = ClientTlsConfig::new();
            let host = match &opts.authority {
                Some(a) => a.rsplit_once(':').map_or(a.as_str(), |(h, _)| h).to_owned(),
                None => ep.uri().host().unwrap_or_default().to_owned(),
            };
            cfg = cfg.domain_name(host.trim_matches(|c| c == '[' || c == ']'));
            cfg = match &opts.ca_pem {
                Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
                None => cfg.with_webpki_roots(),
            };
            match (&opts.cert_pem, &opts.key_pem) {
                (Some(c), Some(k)) => cfg = cfg.identity(Identity::from_pem(c, k)),
                (None, None) => {}
                _ => {
                    return Err(Status::invalid_argument(
                        "mTLS needs both cert and priv_key",
                    ))
                }
            }
            ep = ep
                .tls_config(cfg)
                .map_err(|e| Status::invalid_argument(format!("TLS settings: {e}")))?;
        }
        ep = endpoint_options(ep, opts, tls)?;
        // connect_lazy needs a runtime context for its background task.
        let _guard = self.rt.enter();
        Ok(match opts.connect_timeout {
            // The whole setup, the server's first bytes included (handshake.rs).
            Some(t) => {
                ep.connect_with_connector_lazy(handshake::connector(handshake::Dest::Tcp, t))
            }
            None => ep.connect_lazy(),
        })
    }

    /// A channel over a Unix domain socket (plaintext h2c; `:authority` "localhost" unless
    /// `host` says otherwise).
    fn unix_channel(&self, path: &str, opts: &ConnectOpts) -> Result<Channel, Status> {
        if path.is_empty() {
            return Err(Status::invalid_argument("empty unix: socket path"));
        }
        let ep = Endpoint::from_static("http://localhost");
        let ep = endpoint_options(ep, opts, false)?;
        let path = std::path::PathBuf::from(path);
        if let Some(t) = opts.connect_timeout {
            let _guard = self.rt.enter();
            let c = handshake::connector(handshake::Dest::Unix(path), t);
            return Ok(ep.connect_with_connector_lazy(c));
        }
        let connector = tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        });
        let _guard = self.rt.enter();
        Ok(ep.connect_with_connector_lazy(connector))
    }

    /// Counts a `connect` of `id` down; the id goes with its last one (calls in flight finish
    /// on their own), and the channel with its last id.
    pub fn close(&self, id: u64) -> bool {
        let mut conns = lock(&self.conns);
        let Some((_, _, refs)) = conns.by_id.get_mut(&id) else {
            return false;
        };
        *refs -= 1;
        if *refs > 0 {
            return true;
        }
        let Some((conn, full, _)) = conns.by_id.remove(&id) else {
            return true;
        };
        conns.ids.remove(&full);
        if let Some((_, refs)) = conns.channels.get_mut(&conn.key) {
            *refs -= 1;
            if *refs == 0 {
                conns.channels.remove(&conn.key);
            }
        }
        true
    }

    /// Connection ids and channels held (for tests and stats).
    pub fn connections(&self) -> (usize, usize) {
        let conns = lock(&self.conns);
        (conns.by_id.len(), conns.channels.len())
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
            Op::Call(call) => {
                let conn = lock(&self.conns).by_id.get(&call.conn).map(|c| c.0.clone());
                let Some(conn) = conn else {
                    let st = Status::invalid_argument(format!("unknown connection {}", call.conn));
                    return (self.spawn_done(done, Err(st)), None);
                };
                if call.payload.len() > conn.max_send {
                    return (
                        self.spawn_done(done, Err(too_large_to_send(&call.payload, &conn))),
                        None,
                    );
                }
                let codec = ArenaCodec::new(self.arena.clone());
                let timeout = call.timeout.or(conn.default_timeout);
                if call.kind == Kind::Unary {
                    return (self.spawn_unary(conn, codec, *call, timeout, done), None);
                }
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let r = self.streams.open(&self.rt, id, conn, codec, *call, timeout);
                (
                    self.spawn_done(
                        done,
                        r.map(|()| Received {
                            handle: id,
                            ..Default::default()
                        }),
                    ),
                    None,
                )
            }
            Op::Send { stream, payload } => {
                let task = self.streams.send(&self.rt, stream, payload, done);
                (task, Some(stream))
            }
            Op::Recv {
                stream,
                headers_only,
            } => {
                let task = self.streams.recv(&self.rt, stream, headers_only, done);
                (task, Some(stream))
            }
            Op::CloseSend { stream, finish } => {
                let task = self.streams.close_send(&self.rt, stream, finish, done);
                (task, Some(stream))
            }
        }
    }

    fn spawn_done(
        &self,
        done: impl FnOnce(OpResult) + Send + 'static,
        r: OpResult,
    ) -> tokio::task::AbortHandle {
        self.rt.spawn(async move { done(r) }).abort_handle()
    }

    fn spawn_unary(
        &self,
        conn: Conn,
        codec: ArenaCodec,
        call: CallSpec,
        timeout: Option<Duration>,
        done: impl FnOnce(OpResult) + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let task = self.rt.spawn(async move {
            let started = tokio::time::Instant::now();
            let work = unary(conn, codec, call, timeout);
            let result = match timeout {
                // The server gets `grpc-timeout`; this bound holds even when it ignores it.
                Some(t) => match tokio::time::timeout(t, work).await {
                    Ok(Err(_)) if started.elapsed() >= t => Err(deadline_exceeded()),
                    Ok(r) => r,
                    Err(_) => Err(deadline_exceeded()),
                },
                None => work.await,
            };
            done(result);
        });
        task.abort_handle()
    }
}

/// The endpoint settings shared by TCP and Unix channels.
fn endpoint_options(mut ep: Endpoint, opts: &ConnectOpts, tls: bool) -> Result<Endpoint, Status> {
    if let Some(a) = &opts.authority {
        let scheme = if tls { "https" } else { "http" };
        let origin = format!("{scheme}://{a}")
            .parse()
            .map_err(|e| Status::invalid_argument(format!("bad authority {a:?}: {e}")))?;
        ep = ep.origin(origin);
    }
    if let Some(t) = opts.connect_timeout {
        ep = ep.connect_timeout(t);
    }
    if let Some(t) = opts.keepalive_interval {
        ep = ep.http2_keep_alive_interval(t).keep_alive_while_idle(true);
    }
    if let Some(t) = opts.keepalive_timeout {
        ep = ep.keep_alive_timeout(t);
    }
    Ok(ep.tcp_nodelay(true))
}

fn too_large_to_send(payload: &Bytes, conn: &Conn) -> Status {
    Status::resource_exhausted(format!(
        "trying to send message larger than max ({} vs. {})",
        payload.len(),
        conn.max_send
    ))
}

/// A tonic client for `conn`'s settings and the call's compression.
fn client(
    conn: &Conn,
    compression: Option<&str>,
) -> Result<tonic::client::Grpc<CheckedChannel>, Status> {
    let mut c = tonic::client::Grpc::new(CheckedChannel(conn.channel.clone()))
        .max_decoding_message_size(conn.max_recv)
        .max_encoding_message_size(conn.max_send)
        .accept_compressed(CompressionEncoding::Gzip);
    let send = match compression {
        None => conn.compression,
        Some("gzip") => Some(CompressionEncoding::Gzip),
        Some("" | "identity") => None,
        Some(other) => {
            return Err(Status::invalid_argument(format!(
                "compression {other:?} not supported (gzip)"
            )))
        }
    };
    if let Some(enc) = send {
        c = c.send_compressed(enc);
    }
    Ok(c)
}

/// The request of a call: its messages, `grpc-timeout` and metadata.
fn request<S>(
    msgs: S,
    call: &CallSpec,
    timeout: Option<Duration>,
) -> Result<(tonic::Request<S>, PathAndQuery), Status> {
    let path = PathAndQuery::from_str(&call.path)
        .map_err(|e| Status::invalid_argument(format!("bad path {:?}: {e}", call.path)))?;
    let mut req = tonic::Request::new(msgs);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    for (k, v) in &call.metadata {
        add_metadata(req.metadata_mut(), k, v)?;
    }
    Ok((req, path))
}

async fn unary(
    conn: Conn,
    codec: ArenaCodec,
    mut call: CallSpec,
    timeout: Option<Duration>,
) -> OpResult {
    let payload = std::mem::take(&mut call.payload);
    let (req, path) = request(tokio_stream::once(payload), &call, timeout)?;
    let mut client = client(&conn, call.compression.as_deref())?;
    client
        .ready()
        .await
        .map_err(|e| Status::new(Code::Unavailable, e.to_string()))?;
    // As tonic's own unary call, but with headers and trailers kept apart.
    let (headers, mut body, _) = client
        .streaming(req, path, codec)
        .await
        .map_err(local_status)?
        .into_parts();
    let message = body
        .message()
        .await
        .map_err(local_status)?
        .ok_or_else(|| Status::internal("missing response message"))?;
    // tonic's `trailers()` would drop further messages unseen.
    if body.message().await.map_err(local_status)?.is_some() {
        return Err(second_response_message());
    }
    let trailers = body.trailers().await.map_err(local_status)?;
    let want = call.want_metadata;
    Ok(Received {
        message: Some(message),
        handle: 0,
        headers: want.then(|| metadata_list(&headers)),
        trailers: want.then(|| trailers.as_ref().map(metadata_list).unwrap_or_default()),
    })
}

/// A second response message on a call that has one (unary, client-streaming): INTERNAL, in
/// grpc-go's words.
fn second_response_message() -> Status {
    Status::internal(
        "cardinality violation: expected <EOF> for non server-streaming RPCs, but received \
         another message",
    )
}

/// A map's entries as (key, raw value) pairs; `-bin` values decoded (undecodable ones kept as
/// sent). The status itself (`grpc-status`, `grpc-message`, `grpc-status-details-bin`) is not
/// metadata, as in grpc-go.
pub fn metadata_list(md: &MetadataMap) -> Vec<(String, Vec<u8>)> {
    md.iter()
        .filter(|kv| {
            let key = match kv {
                KeyAndValueRef::Ascii(k, _) => k.as_str(),
                KeyAndValueRef::Binary(k, _) => k.as_str(),
            };
            !matches!(
                key,
                "grpc-status" | "grpc-message" | "grpc-status-details-bin"
            )
        })
        .map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => (k.as_str().to_owned(), v.as_bytes().to_vec()),
            KeyAndValueRef::Binary(k, v) => (
                k.as_str().to_owned(),
                v.to_bytes()
                    .map_or_else(|_| v.as_encoded_bytes().to_vec(), |b| b.to_vec()),
            ),
        })
        .collect()
}

/// Statuses made by the local side mapped to what grpc-go reports: transport failures are
/// UNAVAILABLE ([`transport_is_unavailable`]), a received message over the limit is
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), and tonic's own `grpc-timeout` timer
/// (`TimeoutExpired`, which tonic reports as CANCELLED "Timeout expired") is
/// DEADLINE_EXCEEDED: it fires at the call's deadline, racing ours.
fn local_status(st: Status) -> Status {
    if timeout_expired(&st) {
        return deadline_exceeded();
    }
    if st.code() == Code::OutOfRange
        && st
            .message()
            .starts_with("Error, decoded message length too large")
    {
        return Status::resource_exhausted(format!(
            "received message larger than max: {}",
            st.message()
        ));
    }
    transport_is_unavailable(st)
}

/// A call that failed in the local transport is reported as grpc-go reports it. Such statuses
/// carry the transport error as their source; statuses sent by a server have none and pass
/// through unchanged.
/// - A stream reset (RST_STREAM from the server, or sent by h2 over the server's protocol
///   error): the code of the gRPC HTTP/2 spec for its reason (INTERNAL for most, UNAVAILABLE
///   for REFUSED_STREAM, ...). tonic maps these only when built with its `server` feature.
/// - An error of the HTTP/2 connection as a whole (a GOAWAY, the socket failing, a peer that
///   does not speak HTTP/2), a refused TLS handshake, a connection closed before any response:
///   UNAVAILABLE. tonic says UNKNOWN "transport error", CANCELLED or INTERNAL, depending on
///   when the call saw it.
fn transport_is_unavailable(st: Status) -> Status {
    let Some(local) = std::error::Error::source(&st) else {
        return st;
    };
    match h2_error(local) {
        Some(h2) if h2.is_reset() => {
            let reason = h2.reason().unwrap_or(h2::Reason::INTERNAL_ERROR);
            return Status::new(
                code_of_reset(reason),
                format!("stream terminated by RST_STREAM with error code: {reason:?}"),
            );
        }
        Some(h2) if h2.is_go_away() || h2.is_io() => {
            return Status::unavailable(format!("{}: {local}", st.message()));
        }
        _ => {}
    }
    match st.code() {
        Code::Unknown | Code::Cancelled => {
            Status::unavailable(format!("{}: {local}", st.message()))
        }
        _ => st,
    }
}

/// Whether tonic's `grpc-timeout` timer ended the call (a `TimeoutExpired` in the source chain).
fn timeout_expired(st: &Status) -> bool {
    let mut e = std::error::Error::source(st);
    while let Some(err) = e {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        e = err.source();
    }
    false
}

/// A failure observed at or after the call's deadline is DEADLINE_EXCEEDED, whatever error
/// tonic or the transport reported at that moment (grpc-go reports the context's error once
/// the deadline has passed). Statuses the server sent before the deadline pass unchanged.
fn at_deadline(st: Status, deadline: Option<tokio::time::Instant>) -> Status {
    match deadline {
        Some(d) if tokio::time::Instant::now() >= d => deadline_exceeded(),
        _ => st,
    }
}

/// The first HTTP/2 error in `e`'s source chain.
fn h2_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut e = Some(e);
    while let Some(err) = e {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        e = err.source();
    }
    None
}

/// The gRPC code of an RST_STREAM reason (PROTOCOL-HTTP2.md, "Errors").
fn code_of_reset(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

fn add_metadata(md: &mut MetadataMap, key: &str, value: &[u8]) -> Result<(), Status> {
    let bad = |what: &str| Status::invalid_argument(format!("metadata {key:?}: {what}"));
    if key.ends_with("-bin") {
        let k = BinaryMetadataKey::from_str(key).map_err(|_| bad("bad key"))?;
        md.append_bin(k, MetadataValue::from_bytes(value));
    } else {
        let k = AsciiMetadataKey::from_str(key).map_err(|_| bad("bad key"))?;
        let v = AsciiMetadataValue::try_from(value).map_err(|_| bad("bad value"))?;
        md.append(k, v);
    }
    Ok(())
}

/// What a call past its deadline reports, whatever the server or the transport said at that
/// moment (as grpc-go does when the context's deadline has passed).
fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("deadline exceeded")
}

/// "host:port", "[::1]:port" → "http(s)://…"; "https://…" as is; "http://…" as is (or
/// upgraded to https when TLS settings are given).
fn normalize_target(t: &str, tls: bool) -> Result<String, Status> {
    if let Some(rest) = t.strip_prefix("http://") {
        return Ok(if tls {
            format!("https://{rest}")
        } else {
            t.to_owned()
        });
    }
    if t.starts_with("https://") {
        return Ok(t.to_owned());
    }
    if t.is_empty() {
        return Err(Status::invalid_argument("empty target"));
    }
    Ok(format!("{}://{t}", if tls { "https" } else { "http" }))
}

/// The canonical name of a status code ("DEADLINE_EXCEEDED").
pub fn code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        2 => "UNKNOWN",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connects_with_the_same_settings_share_an_id_and_a_channel() {
        let arena = Arena::new(crate::arena::ArenaConfig {
            size: 1 << 20,
            max_message: 64 << 10,
        })
        .unwrap();
        let g = Grpc::new(arena, 1, None).unwrap();
        let opts = |t: &str, timeout: u64| ConnectOpts {
            target: t.into(),
            default_timeout: Some(Duration::from_millis(timeout)),
            ..Default::default()
        };
        let a = g.connect(&opts("127.0.0.1:1", 10)).unwrap();
        for _ in 0..1000 {
            assert_eq!(g.connect(&opts("127.0.0.1:1", 10)).unwrap(), a);
        }
        let b = g.connect(&opts("127.0.0.1:1", 20)).unwrap();
        let c = g.connect(&opts("127.0.0.1:2", 10)).unwrap();
        assert!(a != b && b != c);
        // a and b differ in call settings only: one channel.
        assert_eq!(g.connections(), (3, 2));
        for _ in 0..1000 {
            assert!(g.close(a));
        }
        assert_eq!(g.connections(), (3, 2), "one connect of a is still open");
        assert!(g.close(a));
        assert!(!g.close(a));
        assert!(g.close(b) && g.close(c));
        assert_eq!(g.connections(), (0, 0));
        assert!(g
            .connect(&ConnectOpts {
                compression: Some("brotli".into()),
                ..opts("127.0.0.1:1", 10)
            })
            .is_err());
    }

    #[test]
    fn closing_an_id_more_often_than_it_was_connected_leaves_other_ids_alone() {
        let arena = Arena::new(crate::arena::ArenaConfig {
            size: 1 << 20,
            max_message: 64 << 10,
        })
        .unwrap();
        let g = Grpc::new(arena, 1, None).unwrap();
        let opts = |timeout: u64| ConnectOpts {
            target: "127.0.0.1:1".into(),
            default_timeout: Some(Duration::from_millis(timeout)),
            ..Default::default()
        };
        // a and b share a channel, under two ids
        let a = g.connect(&opts(10)).unwrap();
        let b = g.connect(&opts(20)).unwrap();
        assert_eq!(g.connections(), (2, 1));
        assert!(g.close(a));
        for _ in 0..5 {
            assert!(!g.close(a), "a closed id stays closed");
        }
        assert_eq!(g.connections(), (1, 1), "b keeps its id and the channel");
        assert!(lock(&g.conns).by_id.contains_key(&b));
        assert!(g.close(b));
        assert_eq!(g.connections(), (0, 0));
    }

    #[test]
    fn tonic_timeouts_and_failures_after_the_deadline_are_deadline_exceeded() {
        let st = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(local_status(st).code(), Code::DeadlineExceeded);
        let past = Some(tokio::time::Instant::now());
        let st = at_deadline(Status::unavailable("transport error"), past);
        assert_eq!(st.code(), Code::DeadlineExceeded);
        let future = Some(tokio::time::Instant::now() + Duration::from_secs(60));
        let st = at_deadline(Status::unavailable("transport error"), future);
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(
            at_deadline(Status::internal("x"), None).code(),
            Code::Internal
        );
    }

    #[test]
    fn targets() {
        let n = |t: &str, tls: bool| normalize_target(t, tls).unwrap();
        assert_eq!(n("127.0.0.1:50051", false), "http://127.0.0.1:50051");
        assert_eq!(n("[::1]:50051", false), "http://[::1]:50051");
        assert_eq!(n("h:1", true), "https://h:1");
        assert_eq!(n("http://h:1", true), "https://h:1");
        assert_eq!(n("https://h:1", false), "https://h:1");
        assert!(normalize_target("", false).is_err());
        assert_eq!(code_name(4), "DEADLINE_EXCEEDED");
    }
}
