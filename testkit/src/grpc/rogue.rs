//! [`RogueServer`]: an HTTP/2 peer that misbehaves on purpose, for tests of what a gRPC client
//! makes of servers that break the protocol.
//!
//! ```text
//!  test ── RogueServer::start() ──► thread "rogue" (current-thread tokio runtime)
//!    │                                ├─ 127.0.0.1:A  h2 (raw `h2::server`): /rogue.Rogue/<Misbehaviour>
//!    │                                │     each request answered with the misbehaviour its method
//!    │                                │     names (unknown methods: grpc-status 12)
//!    │                                ├─ 127.0.0.1:B  plain TCP: junk bytes, then close
//!    │                                └─ 127.0.0.1:C  plain TCP: accepts, reads, never writes
//!    ├── addr() / garbage_addr() / silent_addr() / Misbehaviour::path() / STALL_PATH
//!    ├── connections() ── HTTP/2 connections accepted so far
//!    └── drop ── stops the runtime (every connection closed) and joins the thread
//! ```
//!
//! The server is `h2` itself rather than hyper or tonic, because it has to do what those refuse
//! to: frames whose prefix lies about their length, RST_STREAM before any response, a GOAWAY or
//! a hang-up in the middle of a call. It never reads the request body: answers go out as soon
//! as the request headers arrive, so unary, server-streaming and bidi calls all get them.
//!
//! "A message" below is a well-formed gRPC frame carrying [`REPLY`], a `helloworld.HelloReply`
//! (and `zctest.EchoReply`) whose field 1 is `"rogue"`.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{Reason, RecvStream};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

/// The protobuf a well-formed message of the server carries: field 1 (bytes) = `"rogue"`.
pub const REPLY: &[u8] = b"\x0a\x05rogue";

/// What the [`RogueServer::garbage_addr`] listener writes before it closes the connection: an
/// HTTP/1.1 answer, as a server that does not speak HTTP/2 would give to the client's preface.
pub const GARBAGE: &[u8] =
    b"HTTP/1.1 400 Bad Request\r\ncontent-length: 11\r\nconnection: close\r\n\r\nbad request";

/// A request path the HTTP/2 listener never answers (no headers, no reset: the stream stays
/// open until the client lets go), for deadlines that pass before the response headers. It is
/// not a [`Misbehaviour`] because it never ends by itself.
pub const STALL_PATH: &str = "/rogue.Rogue/Stall";

/// How long the server lets frames already queued reach the wire before it drops a connection
/// ([`Misbehaviour::GoAway`], [`Misbehaviour::Hangup`]).
const FLUSH: Duration = Duration::from_millis(20);

/// The ways the server answers, by the method of the request path
/// (`/rogue.Rogue/<variant name>`, see [`Misbehaviour::path`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// HTTP 200 with `content-type: text/html` and an HTML body; no grpc-status anywhere.
    NotGrpc,
    /// HTTP 503 with no body and no grpc-status (END_STREAM on the headers).
    Http503,
    /// HTTP 404 with no body and no grpc-status.
    Http404,
    /// HTTP 502 with `content-type: text/html` and an HTML body, no grpc-status: what a proxy
    /// in front of a dead backend sends.
    ProxyError,
    /// A message whose 5-byte prefix announces 100 bytes of which 10 follow, then trailers
    /// `grpc-status: 0`.
    Truncated,
    /// As [`Misbehaviour::Truncated`], but the body ends (END_STREAM on the data) without
    /// trailers.
    TruncatedEof,
    /// A message with the compressed flag set, and no `grpc-encoding` header.
    CompressedNoEncoding,
    /// A prefix announcing 0x7fff_ffff bytes (and a few bytes of them), then trailers
    /// `grpc-status: 0`.
    Huge,
    /// A message, then END_STREAM on the data: no trailers, no grpc-status.
    NoTrailers,
    /// Two messages, then `grpc-status: 0` (for a unary call: one too many).
    TwoMessages,
    /// Headers and trailers `grpc-status: 0`, no message (for a unary call: one too few).
    NoMessage,
    /// A message, then trailers with `grpc-status: abc`.
    BadStatus,
    /// RST_STREAM with INTERNAL_ERROR before any response.
    Reset,
    /// Response headers and a message, then GOAWAY (NO_ERROR) and the connection closed while
    /// the call is still open.
    GoAway,
    /// Response headers and a message, then the TCP connection closed (no GOAWAY, no
    /// RST_STREAM).
    Hangup,
}

impl Misbehaviour {
    /// Every misbehaviour of the HTTP/2 listener.
    pub const ALL: [Misbehaviour; 15] = [
        Misbehaviour::NotGrpc,
        Misbehaviour::Http503,
        Misbehaviour::Http404,
        Misbehaviour::ProxyError,
        Misbehaviour::Truncated,
        Misbehaviour::TruncatedEof,
        Misbehaviour::CompressedNoEncoding,
        Misbehaviour::Huge,
        Misbehaviour::NoTrailers,
        Misbehaviour::TwoMessages,
        Misbehaviour::NoMessage,
        Misbehaviour::BadStatus,
        Misbehaviour::Reset,
        Misbehaviour::GoAway,
        Misbehaviour::Hangup,
    ];

    /// The request path that asks for it: `/rogue.Rogue/<name>`.
    pub fn path(self) -> String {
        format!("/rogue.Rogue/{self:?}")
    }

    fn from_path(path: &str) -> Option<Misbehaviour> {
        let name = path.strip_prefix("/rogue.Rogue/")?;
        Misbehaviour::ALL
            .into_iter()
            .find(|m| format!("{m:?}") == name)
    }
}

impl fmt::Display for Misbehaviour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A running misbehaving server (see the module docs). Dropping it stops it.
pub struct RogueServer {
    addr: SocketAddr,
    garbage_addr: SocketAddr,
    silent_addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl RogueServer {
    /// Binds the three listeners on `127.0.0.1:0` and serves them on a thread of its own.
    pub fn start() -> RogueServer {
        let h2 = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the h2 listener");
        let junk = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the junk listener");
        let mute = std::net::TcpListener::bind("127.0.0.1:0").expect("binding the silent listener");
        let addr = h2.local_addr().expect("h2 listener address");
        let garbage_addr = junk.local_addr().expect("junk listener address");
        let silent_addr = mute.local_addr().expect("silent listener address");
        for l in [&h2, &junk, &mute] {
            l.set_nonblocking(true).expect("non-blocking listener");
        }
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        let (stop, stopped) = oneshot::channel();
        let thread = thread::Builder::new()
            .name("rogue".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("starting the rogue server's runtime");
                rt.block_on(async move {
                    let h2 = TcpListener::from_std(h2).expect("tokio h2 listener");
                    let junk = TcpListener::from_std(junk).expect("tokio junk listener");
                    let mute = TcpListener::from_std(mute).expect("tokio silent listener");
                    tokio::select! {
                        _ = stopped => {}
                        _ = serve_h2(h2, counter) => {}
                        _ = serve_garbage(junk) => {}
                        _ = serve_silent(mute) => {}
                    }
                });
                // Dropping the runtime drops every connection task: all sockets close.
            })
            .expect("spawning the rogue server thread");
        RogueServer {
            addr,
            garbage_addr,
            silent_addr,
            connections,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT` of the HTTP/2 listener (a target for `grpc.connect`).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    /// `127.0.0.1:PORT` of the listener that answers every connection with [`GARBAGE`] and
    /// closes it.
    pub fn garbage_addr(&self) -> String {
        self.garbage_addr.to_string()
    }

    /// `127.0.0.1:PORT` of the listener that accepts every connection, reads what comes and
    /// never writes a byte (a server that hangs after `accept`: no HTTP/2 SETTINGS, no TLS
    /// handshake).
    pub fn silent_addr(&self) -> String {
        self.silent_addr.to_string()
    }

    /// HTTP/2 connections accepted so far (handshake done or not).
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for RogueServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve_garbage(listener: TcpListener) {
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let _ = sock.write_all(GARBAGE).await;
            let _ = sock.shutdown().await;
        });
    }
}

async fn serve_silent(listener: TcpListener) {
    use tokio::io::AsyncReadExt;
    loop {
        let Ok((mut sock, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            while matches!(sock.read(&mut buf).await, Ok(n) if n > 0) {}
        });
    }
}

async fn serve_h2(listener: TcpListener, connections: Arc<AtomicUsize>) {
    loop {
        let Ok((sock, _)) = listener.accept().await else {
            continue;
        };
        connections.fetch_add(1, Ordering::Relaxed);
        let _ = sock.set_nodelay(true);
        tokio::spawn(connection(sock));
    }
}

/// What a request handler asks of its connection.
enum ConnEnd {
    /// GOAWAY, then close once it is flushed.
    GoAway,
    /// Close the socket at once.
    Hangup,
}

/// One HTTP/2 connection: accepts requests and spawns a handler for each, until a handler asks
/// for the connection to go.
async fn connection(sock: TcpStream) {
    let Ok(mut conn) = h2::server::handshake(sock).await else {
        return;
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    loop {
        tokio::select! {
            req = conn.accept() => match req {
                Some(Ok((req, respond))) => {
                    tokio::spawn(answer(req, respond, tx.clone()));
                }
                _ => return,
            },
            what = rx.recv() => match what {
                Some(ConnEnd::GoAway) => {
                    conn.abrupt_shutdown(Reason::NO_ERROR);
                    // Polled on until h2 has flushed the GOAWAY and closed the connection.
                    while let Some(Ok(_)) = conn.accept().await {}
                    return;
                }
                Some(ConnEnd::Hangup) | None => return,
            },
        }
    }
}

/// A gRPC frame: the compressed flag, the length the prefix announces, and `body` (which may
/// be shorter or longer than announced).
fn frame(compressed: bool, announced: u32, body: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + body.len());
    b.put_u8(u8::from(compressed));
    b.put_u32(announced);
    b.put_slice(body);
    b.freeze()
}

/// A well-formed frame carrying [`REPLY`].
fn message() -> Bytes {
    frame(false, REPLY.len() as u32, REPLY)
}

fn status_trailers(status: &'static str) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_static(status));
    t
}

fn response(status: StatusCode, content_type: Option<&'static str>) -> Response<()> {
    let mut r = Response::builder().status(status);
    if let Some(ct) = content_type {
        r = r.header("content-type", ct);
    }
    r.body(()).expect("a valid response head")
}

/// Answers one request with the misbehaviour its path names. Errors (the client reset the
/// stream, the connection went) end the handler quietly.
async fn answer(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    conn: mpsc::UnboundedSender<ConnEnd>,
) {
    if req.uri().path() == STALL_PATH {
        // Neither headers nor a reset: held until the client resets the stream or the
        // connection goes (then `respond` reports it).
        let mut respond = respond;
        let _body = req.into_body();
        let _ = std::future::poll_fn(|cx| respond.poll_reset(cx)).await;
        return;
    }
    let what = Misbehaviour::from_path(req.uri().path());
    // The request body is held (unread) until the answer is complete, so that h2 does not
    // reset the stream early.
    let _body = req.into_body();
    let _ = misbehave(what, respond, &conn).await;
}

async fn misbehave(
    what: Option<Misbehaviour>,
    mut respond: SendResponse<Bytes>,
    conn: &mpsc::UnboundedSender<ConnEnd>,
) -> Result<(), h2::Error> {
    use Misbehaviour as M;
    const GRPC: Option<&str> = Some("application/grpc");
    let Some(what) = what else {
        // Trailers-only UNIMPLEMENTED, as a real server answers an unknown method.
        let mut r = response(StatusCode::OK, GRPC);
        r.headers_mut()
            .insert("grpc-status", HeaderValue::from_static("12"));
        respond.send_response(r, true)?;
        return Ok(());
    };
    let html = Bytes::from_static(b"<html><body><h1>not grpc</h1></body></html>\n");
    match what {
        M::NotGrpc => {
            let mut s =
                respond.send_response(response(StatusCode::OK, Some("text/html")), false)?;
            s.send_data(html, true)?;
        }
        M::Http503 => {
            respond.send_response(response(StatusCode::SERVICE_UNAVAILABLE, None), true)?;
        }
        M::Http404 => {
            respond.send_response(response(StatusCode::NOT_FOUND, None), true)?;
        }
        M::ProxyError => {
            let r = response(StatusCode::BAD_GATEWAY, Some("text/html"));
            respond.send_response(r, false)?.send_data(html, true)?;
        }
        M::Truncated | M::TruncatedEof => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(frame(false, 100, &[7; 10]), what == M::TruncatedEof)?;
            if what == M::Truncated {
                s.send_trailers(status_trailers("0"))?;
            }
        }
        M::CompressedNoEncoding => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(frame(true, 10, &[7; 10]), false)?;
            s.send_trailers(status_trailers("0"))?;
        }
        M::Huge => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(frame(false, 0x7fff_ffff, &[7; 16]), false)?;
            s.send_trailers(status_trailers("0"))?;
        }
        M::NoTrailers => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(message(), true)?;
        }
        M::TwoMessages => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(message(), false)?;
            s.send_data(message(), false)?;
            s.send_trailers(status_trailers("0"))?;
        }
        M::NoMessage => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_trailers(status_trailers("0"))?;
        }
        M::BadStatus => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(message(), false)?;
            s.send_trailers(status_trailers("abc"))?;
        }
        M::Reset => respond.send_reset(Reason::INTERNAL_ERROR),
        M::GoAway | M::Hangup => {
            let mut s = respond.send_response(response(StatusCode::OK, GRPC), false)?;
            s.send_data(message(), false)?;
            // The headers and the message reach the client: the call is under way.
            tokio::time::sleep(FLUSH).await;
            let _ = conn.send(if what == M::GoAway {
                ConnEnd::GoAway
            } else {
                ConnEnd::Hangup
            });
            // Kept open until the connection takes it down.
            conn.closed().await;
        }
    }
    // Long enough for the frames to be written while the stream is still referenced.
    tokio::time::sleep(FLUSH).await;
    Ok(())
}
