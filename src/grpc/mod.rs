//! gRPC over tonic: channels per connection id, and calls that run on the instance's tokio
//! runtime. Safe Rust only; payloads arrive as `Bytes` over arena slots and leave as arena
//! slots ([`crate::codec`]).
//!
//! Status: unary calls over plaintext HTTP/2, with deadlines and request metadata. Streams, TLS,
//! response metadata and cancellation on the wire when Lua gives up are the gRPC issue's
//! remaining work.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

use crate::arena::Arena;
use crate::codec::{ArenaCodec, Inbound};

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
}

impl ConnectOpts {
    /// TLS is on for `https://` targets and whenever certificates are given, unless `insecure`.
    fn tls(&self) -> bool {
        !self.insecure
            && (self.target.starts_with("https://")
                || self.ca_pem.is_some()
                || self.cert_pem.is_some())
    }
}

/// One unary call (owned: it runs after the poll thread moved on).
pub struct UnaryCall {
    pub conn: u64,
    pub path: String,
    pub timeout: Option<Duration>,
    pub metadata: Vec<(String, Vec<u8>)>,
    pub payload: Bytes,
}

struct Conn {
    channel: Channel,
    default_timeout: Option<Duration>,
}

/// The instance's gRPC side: a small tokio runtime and its connections.
pub struct Grpc {
    rt: tokio::runtime::Runtime,
    conns: Mutex<HashMap<u64, Conn>>,
    next_id: AtomicU64,
    arena: Arena,
}

impl Grpc {
    /// Starts the tokio runtime (`threads` workers, named `grpc_zc-io`).
    pub fn new(arena: Arena, threads: usize) -> std::io::Result<Grpc> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("grpc_zc-io")
            .enable_all()
            .build()?;
        Ok(Grpc {
            rt,
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            arena,
        })
    }

    /// Creates a channel (connected lazily, reconnecting as needed) and returns its id.
    pub fn connect(&self, opts: &ConnectOpts) -> Result<u64, Status> {
        let tls = opts.tls();
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
        // connect_lazy needs a runtime context for its background task.
        let _guard = self.rt.enter();
        let channel = ep.connect_lazy();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.conns.lock().unwrap_or_else(|e| e.into_inner()).insert(
            id,
            Conn {
                channel,
                default_timeout: opts.default_timeout,
            },
        );
        Ok(id)
    }

    /// Forgets a connection id (its calls in flight finish on their own).
    pub fn close(&self, id: u64) -> bool {
        self.conns
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)
            .is_some()
    }

    /// Runs a unary call; `done` gets the reply message or the status, always on a runtime
    /// thread (never inside this call). Aborting the returned handle drops the call (tonic
    /// resets the stream: RST_STREAM CANCEL) and `done` is never called.
    pub fn unary(
        &self,
        call: UnaryCall,
        done: impl FnOnce(Result<Inbound, Status>) + Send + 'static,
    ) -> tokio::task::AbortHandle {
        let conn = {
            let conns = self.conns.lock().unwrap_or_else(|e| e.into_inner());
            conns
                .get(&call.conn)
                .map(|c| (c.channel.clone(), c.default_timeout))
        };
        let Some((channel, default_timeout)) = conn else {
            // `done` always runs on a runtime thread, never inside this call.
            let st = Status::invalid_argument(format!("unknown connection {}", call.conn));
            return self.rt.spawn(async move { done(Err(st)) }).abort_handle();
        };
        let codec = ArenaCodec::new(self.arena.clone());
        let timeout = call.timeout.or(default_timeout);
        let task = self.rt.spawn(async move {
            let started = tokio::time::Instant::now();
            let work = unary(channel, codec, call, timeout);
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

async fn unary(
    channel: Channel,
    codec: ArenaCodec,
    call: UnaryCall,
    timeout: Option<Duration>,
) -> Result<Inbound, Status> {
    let path = PathAndQuery::from_str(&call.path)
        .map_err(|e| Status::invalid_argument(format!("bad path {:?}: {e}", call.path)))?;
    let mut req = tonic::Request::new(call.payload);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    for (k, v) in call.metadata {
        add_metadata(req.metadata_mut(), &k, v)?;
    }
    let mut client = tonic::client::Grpc::new(channel);
    client
        .ready()
        .await
        .map_err(|e| Status::new(Code::Unavailable, e.to_string()))?;
    client
        .unary(req, path, codec)
        .await
        .map(|r| r.into_inner())
        .map_err(transport_is_unavailable)
}

/// A call that failed in the local transport (a refused TLS handshake, a connection closed
/// before any response) is UNAVAILABLE, as grpc-go reports it; tonic says UNKNOWN "transport
/// error" or CANCELLED depending on how the connection died. Such statuses carry the transport
/// error as their source; statuses sent by a server have none and pass through unchanged.
fn transport_is_unavailable(st: Status) -> Status {
    let local = std::error::Error::source(&st);
    match (st.code(), local) {
        (Code::Unknown | Code::Cancelled, Some(e)) => {
            Status::unavailable(format!("{}: {e}", st.message()))
        }
        _ => st,
    }
}

fn add_metadata(
    md: &mut tonic::metadata::MetadataMap,
    key: &str,
    value: Vec<u8>,
) -> Result<(), Status> {
    let bad = |what: &str| Status::invalid_argument(format!("metadata {key:?}: {what}"));
    if key.ends_with("-bin") {
        let k = BinaryMetadataKey::from_str(key).map_err(|_| bad("bad key"))?;
        md.append_bin(k, MetadataValue::from_bytes(&value));
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
    if t.starts_with("unix:") {
        return Err(Status::unimplemented("unix: targets are not supported yet"));
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
