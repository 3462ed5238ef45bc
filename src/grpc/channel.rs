//! Connections: what `connect` asks for ([`ConnectOpts`]), the channels behind them (tonic
//! endpoints over TCP, TLS/mTLS or a Unix domain socket, connected lazily; with a
//! `connect_timeout`, over `handshake.rs`'s sockets so that it covers the whole setup) and the
//! table that shares one channel between every connection id with the same transport settings.
//!
//! ```text
//! connect(opts) ─► connection id (same opts: same id, counted) ─► Conn: call settings
//!                                                                   └─► channel (shared per
//!                                                                       target + transport)
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::runtime::Handle;
use tonic::codec::CompressionEncoding;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::Status;

use super::handshake::{self, Dest};
use super::response::CheckedChannel;
use crate::log::Origin;

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
    /// The service config (gRFC A2 JSON text), if any.
    pub service_config: Option<String>,
    /// How often DNS names are resolved again (none: 30 s).
    pub resolve_interval: Option<Duration>,
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

/// Per-connection settings that calls take.
#[derive(Clone)]
pub(super) struct Conn {
    channel: Channel,
    key: String,
    pub(super) default_timeout: Option<Duration>,
    pub(super) max_send: usize,
    max_recv: usize,
    compression: Option<CompressionEncoding>,
}

impl Conn {
    /// The target this connection was made for (the key starts with it: channel_key).
    pub(super) fn target(&self) -> &str {
        self.key.split('|').next().unwrap_or_default()
    }

    /// A tonic client for this connection's settings and a call's compression (`None`: the
    /// connection's).
    pub(super) fn client(
        &self,
        compression: Option<&str>,
    ) -> Result<tonic::client::Grpc<CheckedChannel>, Status> {
        let mut c = tonic::client::Grpc::new(CheckedChannel(self.channel.clone()))
            .max_decoding_message_size(self.max_recv)
            .max_encoding_message_size(self.max_send)
            .accept_compressed(CompressionEncoding::Gzip);
        let send = match compression {
            None => self.compression,
            Some(name) => encoding(name)?,
        };
        if let Some(enc) = send {
            c = c.send_compressed(enc);
        }
        Ok(c)
    }
}

/// A compression by name: "gzip", or none for "" and "identity".
fn encoding(name: &str) -> Result<Option<CompressionEncoding>, Status> {
    match name {
        "" | "identity" => Ok(None),
        "gzip" => Ok(Some(CompressionEncoding::Gzip)),
        other => Err(Status::invalid_argument(format!(
            "compression {other:?} not supported (gzip)"
        ))),
    }
}

/// Connection ids and channels.
///
/// `connect` with the same settings returns the same id (Lua typically connects in every
/// request and never closes: that must not grow anything), counting the connects; `close`
/// counts them down. Channels are shared by every id with the same transport settings
/// ([`ConnectOpts::channel_key`]): all calls to one target multiplex one HTTP/2 connection.
#[derive(Default)]
pub(super) struct Connections {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    /// Connection id by everything `connect` was given.
    ids: HashMap<String, u64>,
    /// A connection id's settings, its key in `ids`, and its connects not yet closed.
    by_id: HashMap<u64, (Conn, String, usize)>,
    /// Channels, with the number of connection ids using each.
    channels: HashMap<String, (Channel, usize)>,
}

impl Connections {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns a connection id for `opts` (a new one from `new_id`), sharing the channel
    /// (connected lazily on `rt`, reconnecting as needed) of any earlier connection with the
    /// same transport settings. Message limits are capped at `max_message`.
    pub(super) fn connect(
        &self,
        opts: &ConnectOpts,
        max_message: usize,
        rt: &Handle,
        origin: &Origin<'_>,
        new_id: impl FnOnce() -> u64,
    ) -> Result<u64, Status> {
        let compression = match opts.compression.as_deref() {
            None => None,
            Some(name) => encoding(name)?,
        };
        let limit = |v: usize, default: usize| if v == 0 { default } else { v.min(max_message) };
        let max_send = limit(opts.max_send, max_message);
        let max_recv = limit(opts.max_recv, DEFAULT_MAX_RECV.min(max_message));
        let key = opts.channel_key();
        let full = format!(
            "{key}|{:?}|{max_send}|{max_recv}|{compression:?}",
            opts.default_timeout
        );
        let mut table = self.table();
        if let Some(&id) = table.ids.get(&full) {
            if let Some((_, _, refs)) = table.by_id.get_mut(&id) {
                *refs += 1;
                return Ok(id);
            }
        }
        let channel = match table.channels.get_mut(&key) {
            Some((ch, refs)) => {
                *refs += 1;
                ch.clone()
            }
            None => {
                let ch = channel(opts, rt)?;
                table.channels.insert(key.clone(), (ch.clone(), 1));
                crate::log!(Info, origin.target(&opts.target), "channel opened");
                ch
            }
        };
        let id = new_id();
        let conn = Conn {
            channel,
            key,
            default_timeout: opts.default_timeout,
            max_send,
            max_recv,
            compression,
        };
        table.ids.insert(full.clone(), id);
        table.by_id.insert(id, (conn, full, 1));
        Ok(id)
    }

    /// The settings of connection `id`.
    pub(super) fn get(&self, id: u64) -> Option<Conn> {
        self.table().by_id.get(&id).map(|c| c.0.clone())
    }

    /// Counts a `connect` of `id` down; the id goes with its last one (calls in flight finish
    /// on their own), and the channel with its last id.
    pub(super) fn close(&self, id: u64, origin: &Origin<'_>) -> bool {
        let mut table = self.table();
        let Some((_, _, refs)) = table.by_id.get_mut(&id) else {
            return false;
        };
        *refs -= 1;
        if *refs > 0 {
            return true;
        }
        let Some((conn, full, _)) = table.by_id.remove(&id) else {
            return true;
        };
        table.ids.remove(&full);
        if let Some((_, refs)) = table.channels.get_mut(&conn.key) {
            *refs -= 1;
            if *refs == 0 {
                table.channels.remove(&conn.key);
                // The key starts with the target (channel_key).
                let target = conn.key.split('|').next().unwrap_or_default();
                crate::log!(Info, origin.target(target), "channel closed");
            }
        }
        true
    }

    /// Connection ids and channels held.
    pub(super) fn counts(&self) -> (usize, usize) {
        let table = self.table();
        (table.by_id.len(), table.channels.len())
    }
}

/// A new lazily connected channel (its background task on `rt`).
fn channel(opts: &ConnectOpts, rt: &Handle) -> Result<Channel, Status> {
    let tls = opts.tls();
    if let Some(path) = opts.target.strip_prefix("unix:") {
        return unix_channel(path, opts, rt);
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
    let _guard = rt.enter();
    Ok(match opts.connect_timeout {
        // The whole setup, the server's first bytes included (handshake.rs).
        Some(t) => ep.connect_with_connector_lazy(handshake::connector(Dest::Tcp, t)),
        None => ep.connect_lazy(),
    })
}

/// A channel over a Unix domain socket (plaintext h2c; `:authority` "localhost" unless
/// `host` says otherwise).
fn unix_channel(path: &str, opts: &ConnectOpts, rt: &Handle) -> Result<Channel, Status> {
    if path.is_empty() {
        return Err(Status::invalid_argument("empty unix: socket path"));
    }
    let ep = Endpoint::from_static("http://localhost");
    let ep = endpoint_options(ep, opts, false)?;
    let path = std::path::PathBuf::from(path);
    if let Some(t) = opts.connect_timeout {
        let _guard = rt.enter();
        return Ok(ep.connect_with_connector_lazy(handshake::connector(Dest::Unix(path), t)));
    }
    let connector = tower::service_fn(move |_: http::Uri| {
        let path = path.clone();
        async move {
            let s = tokio::net::UnixStream::connect(path).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
        }
    });
    let _guard = rt.enter();
    Ok(ep.connect_with_connector_lazy(connector))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arena::Arena;
    use crate::grpc::Grpc;

    /// A `Grpc` over a small arena, one runtime thread.
    fn grpc() -> Grpc {
        let arena = Arena::new(crate::arena::ArenaConfig {
            size: 1 << 20,
            max_message: 64 << 10,
        })
        .unwrap();
        Grpc::new(arena, "test", 60 << 10, 1, None).unwrap()
    }

    /// Options of a connection to `target` whose calls default to `timeout` ms.
    fn opts(target: &str, timeout: u64) -> ConnectOpts {
        ConnectOpts {
            target: target.into(),
            default_timeout: Some(Duration::from_millis(timeout)),
            ..Default::default()
        }
    }

    #[test]
    fn connects_with_the_same_settings_share_an_id_and_a_channel() {
        let g = grpc();
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
        let g = grpc();
        // a and b share a channel, under two ids
        let a = g.connect(&opts("127.0.0.1:1", 10)).unwrap();
        let b = g.connect(&opts("127.0.0.1:1", 20)).unwrap();
        assert_eq!(g.connections(), (2, 1));
        assert!(g.close(a));
        for _ in 0..5 {
            assert!(!g.close(a), "a closed id stays closed");
        }
        assert_eq!(g.connections(), (1, 1), "b keeps its id and the channel");
        assert!(g.conns.table().by_id.contains_key(&b));
        assert!(g.close(b));
        assert_eq!(g.connections(), (0, 0));
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
    }
}
