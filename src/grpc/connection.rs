//! One endpoint's HTTP/2 connection: its socket ([`handshake`]), TLS (rustls, ALPN `h2`) when
//! the target asks for it, and hyper's HTTP/2 client over them. [`Connection`] is the service
//! tonic's `Grpc` client calls through.
//!
//! tonic's `Channel` would put a stack in front of hyper: a tower `Buffer` (its own task, an
//! mpsc hop and a oneshot per call), reconnection, `grpc-timeout` enforcement (a timer per
//! call), origin and user-agent layers, each with a boxed future. The endpoint task
//! ([`super::endpoint`]) already reconnects, and every call already runs under its own
//! deadline, so a call here goes from tonic's codec straight to hyper's `SendRequest`: the
//! request's URI gets the target's scheme and authority, the head its `user-agent`, and the
//! response is checked for being gRPC at all ([`super::response`]).
//!
//! ```text
//! tonic::client::Grpc ─► Connection (origin, user-agent) ─► hyper http2::SendRequest
//!                            ▲ made by Transport::connect: socket ─► TLS ─► HTTP/2 handshake
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::header::USER_AGENT;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response};
use hyper::client::conn::http2::{Builder, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tonic::body::Body;

use super::handshake::{self, Liveness};
use super::name::Address;
use super::response;

/// The `user-agent` of every call (after the caller's own, as grpc-go puts it).
const AGENT: &str = concat!("resty-grpc-zc/", env!("CARGO_PKG_VERSION"));

/// ALPN's name of HTTP/2.
const ALPN_H2: &[u8] = b"h2";

/// How every connection of one target is made: the `:scheme` and `:authority` of its calls,
/// TLS, and the HTTP/2 settings (keepalive). Shared by the target's endpoints.
pub(super) struct Transport {
    scheme: Scheme,
    authority: Authority,
    tls: Option<Tls>,
    http2: Builder<TokioExecutor>,
}

/// A target's TLS client settings and the name its certificates are checked against.
struct Tls {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

/// What [`Transport::new`] needs of the connect options.
pub(super) struct TransportOpts<'a> {
    /// `host[:port]`, as `:authority` sends it.
    pub authority: &'a str,
    pub tls: bool,
    /// Trusted CA (PEM); none means the webpki roots.
    pub ca_pem: Option<&'a [u8]>,
    /// mTLS: client certificate and key (PEM), both or neither.
    pub cert_pem: Option<&'a [u8]>,
    pub key_pem: Option<&'a [u8]>,
    pub keepalive_interval: Option<Duration>,
    pub keepalive_timeout: Option<Duration>,
}

impl Transport {
    /// The transport of a target; the error says which setting is wrong.
    pub fn new(o: &TransportOpts<'_>) -> Result<Transport, String> {
        let authority: Authority = o
            .authority
            .parse()
            .map_err(|e| format!("bad authority {:?}: {e}", o.authority))?;
        let tls = if o.tls { Some(tls(o)?) } else { None };
        let mut http2 = Builder::new(TokioExecutor::new());
        http2.timer(TokioTimer::new());
        if let Some(t) = o.keepalive_interval {
            http2.keep_alive_interval(t).keep_alive_while_idle(true);
        }
        if let Some(t) = o.keepalive_timeout {
            http2.keep_alive_timeout(t);
        }
        Ok(Transport {
            scheme: if o.tls { Scheme::HTTPS } else { Scheme::HTTP },
            authority,
            tls,
            http2,
        })
    }

    /// A connection to `address`: the socket, TLS if the target uses it, the HTTP/2
    /// handshake. The connection's task runs on the current runtime until the connection
    /// ends; `live` learns when it does.
    pub async fn connect(
        &self,
        address: Address,
        timeout: Option<Duration>,
        live: Arc<Liveness>,
    ) -> Result<Connection, tower::BoxError> {
        let socket = handshake::connect(address, timeout, live).await?;
        let send = match &self.tls {
            None => self.handshake(socket).await?,
            Some(tls) => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&tls.config));
                let stream = connector
                    .connect(tls.server_name.clone(), socket)
                    .await
                    .map_err(|e| format!("TLS handshake: {e}"))?;
                if stream.get_ref().1.alpn_protocol() != Some(ALPN_H2) {
                    return Err("TLS: the server did not agree to HTTP/2 (ALPN h2)".into());
                }
                self.handshake(stream).await?
            }
        };
        Ok(self.connection(send))
    }

    /// A plaintext transport to `authority` with no keepalive (tests).
    #[cfg(test)]
    pub fn plaintext(authority: &str) -> Transport {
        Transport::new(&TransportOpts {
            authority,
            tls: false,
            ca_pem: None,
            cert_pem: None,
            key_pem: None,
            keepalive_interval: None,
            keepalive_timeout: None,
        })
        .unwrap()
    }

    /// A connection over `io` (tests: a socket that is not an endpoint's).
    #[cfg(test)]
    pub async fn over<S>(&self, io: S) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        self.connection(self.handshake(io).await.unwrap())
    }

    /// The calls' side of a connection whose handshake is done.
    fn connection(&self, send: SendRequest<Body>) -> Connection {
        Connection {
            send,
            scheme: self.scheme.clone(),
            authority: self.authority.clone(),
        }
    }

    /// The HTTP/2 handshake over `io`, its connection driven by a task of its own.
    async fn handshake<S>(&self, io: S) -> Result<SendRequest<Body>, hyper::Error>
    where
        S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (send, conn) = self.http2.handshake(TokioIo::new(io)).await?;
        // The connection's errors reach its calls (and the endpoint, through `Liveness`).
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(send)
    }
}

/// The rustls client settings of a target: its roots (the CA given, or webpki's), the client
/// certificate for mTLS, ALPN `h2`.
fn tls(o: &TransportOpts<'_>) -> Result<Tls, String> {
    let mut roots = RootCertStore::empty();
    match o.ca_pem {
        Some(pem) => {
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| format!("TLS settings: ca: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("TLS settings: ca: {e}"))?;
            }
            if roots.is_empty() {
                return Err("TLS settings: ca: no certificate in the PEM".to_owned());
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?
        .with_root_certificates(roots);
    let mut config = match (o.cert_pem, o.key_pem) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("TLS settings: cert: {e}"))?;
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("TLS settings: priv_key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("TLS settings: {e}"))?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => return Err("mTLS needs both cert and priv_key".to_owned()),
    };
    config.alpn_protocols.push(ALPN_H2.to_vec());
    // The host of the authority, without its port or an IPv6 literal's brackets.
    let host = o
        .authority
        .rsplit_once(':')
        .filter(|(h, p)| !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(o.authority, |(h, _)| h)
        .trim_matches(|c| c == '[' || c == ']');
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("TLS settings: server name {host:?}: {e}"))?;
    Ok(Tls {
        config: Arc::new(config),
        server_name,
    })
}

/// One HTTP/2 connection, as the service tonic's client calls (cheap to clone: calls in
/// flight keep the connection they started on).
#[derive(Clone)]
pub(super) struct Connection {
    send: SendRequest<Body>,
    scheme: Scheme,
    authority: Authority,
}

/// The future of a call's response head.
pub(super) type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Body>, tower::BoxError>> + Send>>;

impl tower::Service<Request<Body>> for Connection {
    type Response = Response<Body>;
    type Error = tower::BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.send.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Request<Body>) -> ResponseFuture {
        let (mut head, body) = req.into_parts();
        let mut uri = http::uri::Parts::from(head.uri);
        uri.scheme = Some(self.scheme.clone());
        uri.authority = Some(self.authority.clone());
        head.uri = match http::Uri::from_parts(uri) {
            Ok(u) => u,
            Err(e) => return Box::pin(std::future::ready(Err(e.into()))),
        };
        let agent = match head.headers.get(USER_AGENT) {
            None => HeaderValue::from_static(AGENT),
            Some(theirs) => {
                let mut v = Vec::with_capacity(theirs.len() + 1 + AGENT.len());
                v.extend_from_slice(theirs.as_bytes());
                v.push(b' ');
                v.extend_from_slice(AGENT.as_bytes());
                HeaderValue::from_bytes(&v).unwrap_or(HeaderValue::from_static(AGENT))
            }
        };
        head.headers.insert(USER_AGENT, agent);
        let sent = self.send.send_request(Request::from_parts(head, body));
        Box::pin(async move { response::checked(sent.await?) })
    }
}
