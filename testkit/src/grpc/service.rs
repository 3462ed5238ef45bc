//! What the test server does: `helloworld.Greeter`, `zctest.Test`, and [`serve`], which binds
//! and runs them and `routeguide.RouteGuide` ([`super::routeguide`]) behind
//! [`EchoMetaLayer`](super::EchoMetaLayer).
//!
//! `zctest.Test`, driven by the fields of `EchoRequest`:
//!
//! | method | behaviour |
//! |---|---|
//! | `Unary` | sleeps `sleep_ms`, then ends with `status` (+ `message`, `details`) if non-zero, else replies `payload` (or `size` bytes of [`crate::payload`]`(size, 0)`) |
//! | `ServerStream` | `count` replies of that payload, `index` 0.., `sleep_ms` between two replies, then `status` as for `Unary` |
//! | `ClientStream` | one reply: the concatenated payloads, `index` = number of messages; the last message's `status` applies |
//! | `Bidi` | echoes each message at once (`index` = sequence number); a message with a non-zero `status` ends the call with it; ends when the client half-closes |
//! | `Stats` | [`Counters`] since start |
//!
//! `--delay-ms` ([`ServeConfig::delay`]) adds a fixed wait to `Unary` and to
//! `helloworld.Greeter/SayHello`, the two methods load-balancing tests time.
//!
//! Message size limits are checked by the handlers, not by tonic (whose limits answer
//! OUT_OF_RANGE): a message over [`Limits`] ends the call with RESOURCE_EXHAUSTED, as grpc-go
//! does.
//!
//! Every invocation except `Stats` holds a drop guard: when the handler (or the reply stream)
//! is dropped before it finished — client cancel, RST_STREAM, deadline — it counts as
//! `cancelled`, otherwise as `completed`.

use std::error::Error;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio::net::{TcpListener, UnixListener};
use tokio::time::Sleep;
use tokio_stream::wrappers::UnixListenerStream;
use tokio_stream::Stream;
use tonic::codec::CompressionEncoding;
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic::{Code, Request, Response, Status, Streaming};

use super::backend::BackendNameLayer;
use super::echo_meta::EchoMetaLayer;
use super::health::{health_service, HealthSwitch};
use super::inject::InjectLayer;
use super::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use super::pb::helloworld::{HelloReply, HelloRequest};
use super::pb::routeguide::route_guide_server::RouteGuideServer;
use super::pb::zctest::test_server::{Test, TestServer};
use super::pb::zctest::{EchoReply, EchoRequest, StatsReply, StatsRequest};
use super::routeguide::RouteGuideService;

/// Default receive and send limit: grpc-go's 4 MiB plus 64 KiB, so that a message carrying
/// a 4 MiB payload (4 MiB + a few bytes of protobuf framing) passes. `--max-recv 4194304` is
/// grpc-go's exact limit.
pub const DEFAULT_MAX_MESSAGE: usize = 4 * 1024 * 1024 + 64 * 1024;

/// Message size limits (encoded protobuf bytes, as grpc-go counts them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message accepted.
    pub max_recv: usize,
    /// Largest reply message sent.
    pub max_send: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_recv: DEFAULT_MAX_MESSAGE,
            max_send: DEFAULT_MAX_MESSAGE,
        }
    }
}

impl Limits {
    fn check_recv(&self, msg: &impl Message) -> Result<(), Status> {
        let len = msg.encoded_len();
        if len > self.max_recv {
            return Err(Status::resource_exhausted(format!(
                "received message larger than max ({len} vs. {})",
                self.max_recv
            )));
        }
        Ok(())
    }

    fn check_send(&self, msg: &impl Message) -> Result<(), Status> {
        let len = msg.encoded_len();
        if len > self.max_send {
            return Err(Status::resource_exhausted(format!(
                "trying to send message larger than max ({len} vs. {})",
                self.max_send
            )));
        }
        Ok(())
    }
}

/// How long [`serve`] retries binding a TCP address that is still in use (a restart on the
/// port of a process that was just killed).
const BIND_RETRY: Duration = Duration::from_secs(5);

/// What a server counts since start: handler invocations (excluding `Stats` itself), the calls
/// that reached it ([`InjectLayer`](super::InjectLayer) counts them, injected failures too, so a
/// test can tell which backend of a fleet saw which attempt) and the health watches open.
#[derive(Debug, Default)]
pub struct Counters {
    cancelled: AtomicU64,
    completed: AtomicU64,
    received: AtomicU64,
    injected: AtomicU64,
    health_watches: AtomicU64,
}

impl Counters {
    /// `(cancelled, completed)`.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.cancelled.load(Ordering::SeqCst),
            self.completed.load(Ordering::SeqCst),
        )
    }

    /// Everything counted, as `zctest.Test/Stats` replies it.
    pub fn reply(&self) -> StatsReply {
        let (cancelled, completed) = self.snapshot();
        StatsReply {
            cancelled,
            completed,
            received: self.received.load(Ordering::SeqCst),
            injected: self.injected.load(Ordering::SeqCst),
            health_watches: self.health_watches.load(Ordering::SeqCst),
        }
    }

    /// A call reached the server (before its handler, if any, runs).
    pub(super) fn count_received(&self) {
        self.received.fetch_add(1, Ordering::SeqCst);
    }

    /// A call was answered by failure injection.
    pub(super) fn count_injected(&self) {
        self.injected.fetch_add(1, Ordering::SeqCst);
    }

    /// A health Watch stream opened (`true`) or ended (`false`).
    pub(super) fn count_watch(&self, open: bool) {
        if open {
            self.health_watches.fetch_add(1, Ordering::SeqCst);
        } else {
            self.health_watches.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn guard(self: &Arc<Self>) -> CallGuard {
        CallGuard {
            counters: Arc::clone(self),
            done: false,
        }
    }
}

/// Counts one invocation when dropped: `completed` after [`CallGuard::complete`], otherwise
/// `cancelled`.
#[derive(Debug)]
struct CallGuard {
    counters: Arc<Counters>,
    done: bool,
}

impl CallGuard {
    fn complete(mut self) {
        self.done = true;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let counter = if self.done {
            &self.counters.completed
        } else {
            &self.counters.cancelled
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// The status a request asks to end with, if any.
fn requested_status(req: &EchoRequest) -> Option<Status> {
    (req.status != 0).then(|| {
        Status::with_details(
            Code::from(req.status),
            req.message.clone(),
            req.details.clone(),
        )
    })
}

/// The payload a reply to `req` carries.
fn reply_payload(req: &EchoRequest) -> Bytes {
    if req.size > 0 {
        Bytes::from(crate::payload(req.size as usize, 0))
    } else {
        req.payload.clone()
    }
}

fn millis(ms: u32) -> Duration {
    Duration::from_millis(u64::from(ms))
}

/// `helloworld.Greeter`: replies "Hello " + name (after [`GreeterService::with_delay`]).
#[derive(Debug, Clone, Default)]
pub struct GreeterService {
    counters: Arc<Counters>,
    limits: Limits,
    delay: Duration,
}

#[tonic::async_trait]
impl Greeter for GreeterService {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let guard = self.counters.guard();
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let request = request.into_inner();
        let result = self.limits.check_recv(&request).and_then(|()| {
            let reply = HelloReply {
                message: format!("Hello {}", request.name),
            };
            self.limits.check_send(&reply)?;
            Ok(Response::new(reply))
        });
        guard.complete();
        result
    }
}

/// `zctest.Test` (see the module docs).
#[derive(Debug, Clone, Default)]
pub struct TestService {
    counters: Arc<Counters>,
    limits: Limits,
    delay: Duration,
}

impl TestService {
    /// A service counting into `counters` (share them with [`GreeterService`]).
    pub fn new(counters: Arc<Counters>, limits: Limits) -> TestService {
        TestService {
            counters,
            limits,
            delay: Duration::ZERO,
        }
    }

    /// `Unary` waits `delay` before answering, on top of the request's `sleep_ms`: a slow
    /// backend among fast ones.
    pub fn with_delay(self, delay: Duration) -> TestService {
        TestService { delay, ..self }
    }
}

impl GreeterService {
    /// A service counting into `counters`.
    pub fn new(counters: Arc<Counters>, limits: Limits) -> GreeterService {
        GreeterService {
            counters,
            limits,
            delay: Duration::ZERO,
        }
    }

    /// `SayHello` waits `delay` before answering (see [`TestService::with_delay`]).
    pub fn with_delay(self, delay: Duration) -> GreeterService {
        GreeterService { delay, ..self }
    }
}

#[tonic::async_trait]
impl Test for TestService {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let guard = self.counters.guard();
        let req = request.into_inner();
        let result = match self.limits.check_recv(&req) {
            Err(status) => Err(status),
            Ok(()) => {
                let wait = millis(req.sleep_ms) + self.delay;
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                match requested_status(&req) {
                    Some(status) => Err(status),
                    None => {
                        let reply = EchoReply {
                            payload: reply_payload(&req),
                            index: 0,
                        };
                        self.limits
                            .check_send(&reply)
                            .map(|()| Response::new(reply))
                    }
                }
            }
        };
        guard.complete();
        result
    }

    type ServerStreamStream = Replies;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<Replies>, Status> {
        let guard = self.counters.guard();
        let req = request.into_inner();
        if let Err(status) = self.limits.check_recv(&req) {
            guard.complete();
            return Err(status);
        }
        Ok(Response::new(Replies::new(req, self.limits, guard)))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let guard = self.counters.guard();
        let mut inbound = request.into_inner();
        let mut payload = Vec::new();
        let mut count = 0u32;
        let mut status = None;
        // An error here (client reset) returns early with the guard not completed: cancelled.
        while let Some(msg) = inbound.message().await? {
            if let Err(status) = self.limits.check_recv(&msg) {
                guard.complete();
                return Err(status);
            }
            payload.extend_from_slice(&msg.payload);
            count += 1;
            status = requested_status(&msg);
        }
        guard.complete();
        match status {
            Some(status) => Err(status),
            None => {
                let reply = EchoReply {
                    payload: payload.into(),
                    index: count,
                };
                self.limits.check_send(&reply)?;
                Ok(Response::new(reply))
            }
        }
    }

    type BidiStream = Echoes;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<Echoes>, Status> {
        let guard = self.counters.guard();
        Ok(Response::new(Echoes {
            inbound: request.into_inner(),
            limits: self.limits,
            next: 0,
            guard: Some(guard),
        }))
    }

    async fn stats(&self, _request: Request<StatsRequest>) -> Result<Response<StatsReply>, Status> {
        Ok(Response::new(self.counters.reply()))
    }
}

/// The reply stream of `ServerStream`.
#[derive(Debug)]
pub struct Replies {
    payload: Bytes,
    count: u32,
    next: u32,
    pause: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    end: Option<Status>,
    limits: Limits,
    guard: Option<CallGuard>,
}

impl Replies {
    fn new(req: EchoRequest, limits: Limits, guard: CallGuard) -> Replies {
        Replies {
            payload: reply_payload(&req),
            count: req.count,
            next: 0,
            pause: millis(req.sleep_ms),
            sleep: None,
            end: requested_status(&req),
            limits,
            guard: Some(guard),
        }
    }

    /// Ends the stream with `status` (the invocation completed).
    fn finish(&mut self, status: Option<Status>) -> Poll<Option<Result<EchoReply, Status>>> {
        self.next = self.count;
        if let Some(guard) = self.guard.take() {
            guard.complete();
        }
        Poll::Ready(status.map(Err))
    }
}

impl Stream for Replies {
    type Item = Result<EchoReply, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if let Some(sleep) = this.sleep.as_mut() {
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        if this.next < this.count {
            let reply = EchoReply {
                payload: this.payload.clone(),
                index: this.next,
            };
            if let Err(status) = this.limits.check_send(&reply) {
                return this.finish(Some(status));
            }
            this.next += 1;
            if this.next < this.count && !this.pause.is_zero() {
                this.sleep = Some(Box::pin(tokio::time::sleep(this.pause)));
            }
            return Poll::Ready(Some(Ok(reply)));
        }
        let end = this.end.take();
        this.finish(end)
    }
}

/// The reply stream of `Bidi`.
#[derive(Debug)]
pub struct Echoes {
    inbound: Streaming<EchoRequest>,
    limits: Limits,
    next: u32,
    guard: Option<CallGuard>,
}

impl Stream for Echoes {
    type Item = Result<EchoReply, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.guard.is_none() {
            return Poll::Ready(None);
        }
        match ready!(Pin::new(&mut this.inbound).poll_next(cx)) {
            Some(Ok(msg)) => {
                let reply = EchoReply {
                    payload: reply_payload(&msg),
                    index: this.next,
                };
                let end = this.limits.check_recv(&msg).err().or_else(|| {
                    requested_status(&msg).or_else(|| this.limits.check_send(&reply).err())
                });
                if let Some(status) = end {
                    if let Some(guard) = this.guard.take() {
                        guard.complete();
                    }
                    return Poll::Ready(Some(Err(status)));
                }
                this.next += 1;
                Poll::Ready(Some(Ok(reply)))
            }
            // The guard stays armed: dropping the stream after this counts as cancelled.
            Some(Err(status)) => Poll::Ready(Some(Err(status))),
            None => {
                if let Some(guard) = this.guard.take() {
                    guard.complete();
                }
                Poll::Ready(None)
            }
        }
    }
}

/// Where [`serve`] listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listen {
    Tcp(SocketAddr),
    /// A unix socket path; a stale socket file there is removed first.
    Unix(PathBuf),
}

/// PEM text of the server's TLS identity and, for mTLS, of the CA client certificates must
/// chain to.
#[derive(Debug, Clone)]
pub struct TlsPem {
    pub cert: String,
    pub key: String,
    pub client_ca: Option<String>,
}

/// What [`serve`] runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub listen: Listen,
    pub tls: Option<TlsPem>,
    pub limits: Limits,
    /// Wrap every route in [`EchoMetaLayer`] (the default). Off only for measurements.
    pub echo_meta: bool,
    /// `zctest.Test` gzips its replies to clients that accept gzip (the default). Off for
    /// benchmarks comparing clients that differ in what they accept.
    pub gzip_replies: bool,
    /// Every response carries `x-backend: <name>` ([`BackendNameLayer`]).
    pub name: Option<String>,
    /// `Unary` and `SayHello` wait this long before answering (a slow backend).
    pub delay: Duration,
    /// Serve `grpc.health.v1.Health`, its statuses following this switch (the default: one
    /// that starts SERVING). `None`: health calls answer UNIMPLEMENTED.
    pub health: Option<HealthSwitch>,
}

impl ServeConfig {
    /// Plaintext on `listen`, [`DEFAULT_MAX_MESSAGE`] both ways, metadata echo, gzipped
    /// replies and the health service on, no name, no delay.
    pub fn new(listen: Listen) -> ServeConfig {
        ServeConfig {
            listen,
            tls: None,
            limits: Limits::default(),
            echo_meta: true,
            gzip_replies: true,
            name: None,
            delay: Duration::ZERO,
            health: Some(HealthSwitch::default()),
        }
    }
}

type BoxError = Box<dyn Error + Send + Sync>;

async fn bind_tcp(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = Instant::now() + BIND_RETRY;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// The services [`serve`] runs besides health and reflection: what the health service reports
/// on (with `""`).
const HEALTH_REPORTED: &[&str] = &[
    <GreeterServer<GreeterService> as NamedService>::NAME,
    <TestServer<TestService> as NamedService>::NAME,
    <RouteGuideServer<RouteGuideService> as NamedService>::NAME,
    "grpc.reflection.v1.ServerReflection",
];

/// Binds `config.listen`, calls `ready` with the bound address (`127.0.0.1:PORT` or
/// `unix:/path`), then serves Greeter, Test, RouteGuide, reflection and (unless
/// `config.health` is `None`) health until `shutdown` completes (graceful: GOAWAY, then
/// in-flight calls drain).
///
/// Layers, outermost first: [`EchoMetaLayer`] (unless `echo_meta` is off), then
/// [`BackendNameLayer`] (with `name`), then [`InjectLayer`]: the echo sees the injected
/// Trailers-Only responses like any other.
pub async fn serve(
    config: ServeConfig,
    counters: Arc<Counters>,
    ready: impl FnOnce(&str),
    shutdown: impl Future<Output = ()>,
) -> Result<(), BoxError> {
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let mut tls_config =
            ServerTlsConfig::new().identity(Identity::from_pem(&tls.cert, &tls.key));
        if let Some(ca) = &tls.client_ca {
            tls_config = tls_config.client_ca_root(Certificate::from_pem(ca));
        }
        builder = builder.tls_config(tls_config)?;
    }
    // tonic's own limits off: the handlers check `config.limits` (see the module docs).
    let greeter = GreeterServer::new(
        GreeterService::new(Arc::clone(&counters), config.limits).with_delay(config.delay),
    )
    .max_decoding_message_size(usize::MAX)
    .max_encoding_message_size(usize::MAX);
    let test = TestServer::new(
        TestService::new(Arc::clone(&counters), config.limits).with_delay(config.delay),
    )
    .max_decoding_message_size(usize::MAX)
    .max_encoding_message_size(usize::MAX)
    // Compressed requests are accepted; replies are compressed when the client accepts it.
    .accept_compressed(CompressionEncoding::Gzip);
    let test = if config.gzip_replies {
        test.send_compressed(CompressionEncoding::Gzip)
    } else {
        test
    };
    let route_guide = RouteGuideServer::new(RouteGuideService::new());
    // gRPC server reflection (v1) over every service above.
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(super::pb::DESCRIPTORS)
        .build_v1()?;
    let health = match &config.health {
        Some(switch) => Some(health_service(switch, HEALTH_REPORTED, Arc::clone(&counters)).await),
        None => None,
    };
    let name = BackendNameLayer::new(config.name.as_deref());
    let inject = InjectLayer::new(counters);
    // The two router types differ (with and without the layer): one body for both.
    macro_rules! run {
        ($router:expr) => {
            match &config.listen {
                Listen::Tcp(addr) => {
                    let listener = bind_tcp(*addr).await?;
                    ready(&listener.local_addr()?.to_string());
                    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                    $router
                        .serve_with_incoming_shutdown(incoming, shutdown)
                        .await?;
                }
                Listen::Unix(path) => {
                    let _ = std::fs::remove_file(path);
                    let listener = UnixListener::bind(path)?;
                    ready(&format!("unix:{}", path.display()));
                    $router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
                        .await?;
                }
            }
        };
    }
    if config.echo_meta {
        run!(builder
            .layer(EchoMetaLayer)
            .layer(name)
            .layer(inject)
            .add_service(greeter)
            .add_service(test)
            .add_service(route_guide)
            .add_service(reflection)
            .add_optional_service(health));
    } else {
        run!(builder
            .layer(name)
            .layer(inject)
            .add_service(greeter)
            .add_service(test)
            .add_service(route_guide)
            .add_service(reflection)
            .add_optional_service(health));
    }
    Ok(())
}
