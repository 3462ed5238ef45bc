//! Connections: what `connect` asks for ([`ConnectOpts`]), the target behind them (its name
//! resolved to endpoints by a [`Balancer`], its service config, TLS/mTLS, keepalive) and the
//! table that shares one target between every connection id with the same transport settings.
//!
//! ```text
//! connect(opts) ─► connection id (same opts: same id, counted) ─► Conn: call settings
//!                                                                   └─► Target (shared per
//!                                                                       target + transport):
//!                                                                       balancer, config
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use std::sync::Arc;

use tokio::runtime::Handle;
use tonic::codec::CompressionEncoding;
use tonic::Status;

use super::balancer::{Balancer, Settings, DEFAULT_RESOLVE_INTERVAL};
use super::connection::{Connection, Transport, TransportOpts};
use super::metrics::{EndpointView, Metrics, TargetMetrics};
use super::name::{self, Name};
use super::retry::Throttle;
use super::service_config::{MethodConfig, ServiceConfig};
use crate::log::Origin;

/// The shortest `resolve_interval` (a DNS server is not to be asked every millisecond).
const MIN_RESOLVE_INTERVAL: Duration = Duration::from_millis(100);

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
    fn tls(&self, name: &Name) -> bool {
        !self.insecure && (name.tls || self.ca_pem.is_some() || self.cert_pem.is_some())
    }

    /// What makes two connections share a channel: everything that shapes the transport.
    fn channel_key(&self) -> String {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&self.ca_pem, &self.cert_pem, &self.key_pem).hash(&mut h);
        // The config as parsed, keys sorted: the same config written in another key order
        // (a Lua table's encoding) shares the channel. Text that does not parse keeps its own
        // key; connect refuses it anyway.
        let text = self.service_config.as_deref().unwrap_or_default();
        match serde_json::from_str::<serde_json::Value>(text) {
            Ok(v) => v.to_string().hash(&mut h),
            Err(_) => text.hash(&mut h),
        }
        format!(
            "{}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:x}",
            self.target,
            self.authority,
            self.insecure,
            self.connect_timeout,
            self.keepalive_interval,
            self.keepalive_timeout,
            self.resolve_interval,
            h.finish()
        )
    }
}

/// One target: its endpoints and how calls use them. Shared by the connection ids of the same
/// transport settings.
pub(super) struct Target {
    pub balancer: Balancer,
    pub config: ServiceConfig,
    pub throttle: Option<Throttle>,
    pub metrics: Arc<TargetMetrics>,
}

/// Per-connection settings that calls take.
#[derive(Clone)]
pub(super) struct Conn {
    pub(super) target: Arc<Target>,
    key: String,
    pub(super) default_timeout: Option<Duration>,
    pub(super) max_send: usize,
    max_recv: usize,
    compression: Option<CompressionEncoding>,
}

impl Conn {
    /// A tonic client on `connection` (a picked endpoint's) for this connection's settings, a
    /// call's compression (`None`: the connection's) and its receive limit.
    pub(super) fn client(
        &self,
        connection: Connection,
        compression: Option<&str>,
        max_recv: usize,
    ) -> Result<tonic::client::Grpc<Connection>, Status> {
        let mut c = tonic::client::Grpc::new(connection)
            .max_decoding_message_size(max_recv)
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

    /// The largest request message of a method: the connection's limit, or the method
    /// config's `maxRequestMessageBytes` when smaller.
    pub(super) fn max_send_for(&self, method: Option<&MethodConfig>) -> usize {
        match method.and_then(|m| m.max_request_bytes) {
            Some(m) => m.min(self.max_send),
            None => self.max_send,
        }
    }

    /// The largest response message of a method (`maxResponseMessageBytes`).
    pub(super) fn max_recv_for(&self, method: Option<&MethodConfig>) -> usize {
        match method.and_then(|m| m.max_response_bytes) {
            Some(m) => m.min(self.max_recv),
            None => self.max_recv,
        }
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
    /// Targets, with the number of connection ids using each.
    channels: HashMap<String, (Arc<Target>, usize)>,
}

impl Connections {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns a connection id for `opts` (a new one from `new_id`), sharing the target
    /// (resolved and connected on `rt`, reconnecting as needed) of any earlier connection with
    /// the same transport settings. Message limits are capped at `max_message`.
    pub(super) fn connect(
        &self,
        opts: &ConnectOpts,
        max_message: usize,
        rt: &Handle,
        origin: &Origin<'_>,
        metrics: &Metrics,
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
        let target = match table.channels.get_mut(&key) {
            Some((t, refs)) => {
                *refs += 1;
                Arc::clone(t)
            }
            None => {
                let t = Arc::new(target(opts, rt, origin, metrics)?);
                table.channels.insert(key.clone(), (Arc::clone(&t), 1));
                crate::log!(Info, origin.target(&opts.target), "channel opened");
                t
            }
        };
        let id = new_id();
        let conn = Conn {
            target,
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

    /// The endpoints of `target` (of every channel made for it).
    pub(super) fn endpoints(&self, target: &str) -> Vec<EndpointView> {
        self.table()
            .channels
            .values()
            .filter(|(t, _)| t.balancer.target() == target)
            .flat_map(|(t, _)| t.balancer.endpoint_views())
            .collect()
    }

    /// Connection ids and channels held.
    pub(super) fn counts(&self) -> (usize, usize) {
        let table = self.table();
        (table.by_id.len(), table.channels.len())
    }
}

/// A new target: its name parsed, its service config checked (nothing is started before both
/// pass), its balancer resolving on `rt`.
fn target(
    opts: &ConnectOpts,
    rt: &Handle,
    origin: &Origin<'_>,
    metrics: &Metrics,
) -> Result<Target, Status> {
    let name = name::parse(&opts.target).map_err(Status::invalid_argument)?;
    if opts
        .resolve_interval
        .is_some_and(|i| i < MIN_RESOLVE_INTERVAL)
    {
        return Err(Status::invalid_argument(format!(
            "resolve_interval: at least {} ms",
            MIN_RESOLVE_INTERVAL.as_millis()
        )));
    }
    let config = match opts.service_config.as_deref() {
        None | Some("") => ServiceConfig::default(),
        Some(json) => ServiceConfig::parse(json)
            .map_err(|e| Status::invalid_argument(format!("service_config: {e}")))?,
    };
    let tls = opts.tls(&name);
    let authority = opts
        .authority
        .clone()
        .unwrap_or_else(|| name.authority.clone());
    let transport = Transport::new(&TransportOpts {
        authority: &authority,
        tls,
        ca_pem: opts.ca_pem.as_deref(),
        cert_pem: opts.cert_pem.as_deref(),
        key_pem: opts.key_pem.as_deref(),
        keepalive_interval: opts.keepalive_interval,
        keepalive_timeout: opts.keepalive_timeout,
    })
    .map_err(|e| Status::invalid_argument(format!("target {:?}: {e}", opts.target)))?;
    let settings = Settings {
        transport: Arc::new(transport),
        connect_timeout: opts.connect_timeout,
        health_service: config.health_check_service.clone(),
        resolve_interval: opts.resolve_interval.unwrap_or(DEFAULT_RESOLVE_INTERVAL),
        instance: origin.instance_name().to_owned(),
        target: opts.target.clone(),
    };
    // The balancer's tasks need the runtime's context.
    let _guard = rt.enter();
    Ok(Target {
        balancer: Balancer::start(name.resolve, config.lb, settings),
        throttle: config.retry_throttling.as_ref().map(Throttle::new),
        metrics: metrics.target(&opts.target),
        config,
    })
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
    fn a_service_config_in_another_key_order_shares_the_id() {
        let g = grpc();
        let with = |sc: &str| ConnectOpts {
            service_config: Some(sc.into()),
            ..opts("127.0.0.1:1", 10)
        };
        let a = g
            .connect(&with(
                r#"{"loadBalancingConfig":[{"round_robin":{}}],"methodConfig":[]}"#,
            ))
            .unwrap();
        let b = g
            .connect(&with(
                r#"{ "methodConfig": [], "loadBalancingConfig": [{"round_robin": {}}] }"#,
            ))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(g.connections(), (1, 1));
        let e = g
            .connect(&ConnectOpts {
                resolve_interval: Some(Duration::from_millis(5)),
                ..opts("127.0.0.1:1", 10)
            })
            .unwrap_err();
        assert_eq!(e.message(), "resolve_interval: at least 100 ms");
        assert_eq!(g.connections(), (1, 1), "nothing made by a refused connect");
    }
}
