//! [`DnsServer`]: a real authoritative DNS server for one zone whose A/AAAA records a test
//! changes while clients resolve them, for DNS discovery tests.
//!
//! ```text
//!  test ── DnsServer::start() ──► thread "dns-server": tokio runtime + hickory-server
//!    │                              UDP and TCP on 127.0.0.1:<port> (one port for both)
//!    ├── set("svc", &[127.0.0.2, 127.0.0.3]) ─► svc.fleet.test. A 127.0.0.2, A 127.0.0.3 (TTL 1 s)
//!    ├── remove("svc") ────────────────────────► svc.fleet.test. NXDOMAIN
//!    └── queries() ◄── how many queries it answered (re-resolution happened)
//! ```
//!
//! The sockets and protocol handling are `hickory-server`'s ([`ServerFuture`]); the answers
//! come from `Zone`, a table of names to addresses, rather than from hickory's in-memory
//! authority: records there are replaced through its dynamic-update path or by rebuilding
//! the authority, while a test wants "these names now resolve to these addresses", at once
//! and without serials. Every answer is authoritative with TTL 1 s; a name without the
//! queried type answers NOERROR with no records (NODATA), an unknown name in the zone
//! NXDOMAIN, both with the zone's SOA (negative TTL 1 s) so resolvers cache misses briefly
//! too; names outside the zone are REFUSED.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use hickory_proto::op::{Header, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::authority::MessageResponseBuilder;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::ServerFuture;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;

/// The zone [`DnsServer::start`] serves.
pub const ZONE: &str = "fleet.test.";

/// TTL of every record, and the negative-caching TTL (SOA minimum): a change is visible to a
/// caching resolver within a second.
pub const TTL: u32 = 1;

/// How long a TCP connection may stay idle between queries.
const TCP_TIMEOUT: Duration = Duration::from_secs(10);

/// The records of the zone and what was asked, shared by the test and the server thread.
#[derive(Debug)]
struct Zone {
    origin: LowerName,
    soa: Record,
    names: Mutex<HashMap<LowerName, Vec<IpAddr>>>,
    queries: AtomicU64,
}

impl Zone {
    fn new(origin: Name) -> Zone {
        let soa = SOA::new(
            Name::from_ascii("ns")
                .and_then(|ns| ns.append_domain(&origin))
                .expect("ns name"),
            Name::from_ascii("hostmaster")
                .and_then(|h| h.append_domain(&origin))
                .expect("rname"),
            1,
            3600,
            600,
            86400,
            TTL,
        );
        Zone {
            origin: LowerName::from(&origin),
            soa: Record::from_rdata(origin, TTL, RData::SOA(soa)),
            names: Mutex::new(HashMap::new()),
            queries: AtomicU64::new(0),
        }
    }

    /// `name` as a name in the zone: absolute (`svc.fleet.test.`, `svc.fleet.test`) or
    /// relative to the origin (`svc`). Panics for a name outside the zone.
    fn name(&self, name: &str) -> LowerName {
        let parsed = Name::from_str(name).unwrap_or_else(|e| panic!("DNS name {name:?}: {e}"));
        let mut absolute = parsed.clone();
        absolute.set_fqdn(true);
        let absolute = LowerName::from(absolute);
        if self.origin.zone_of(&absolute) {
            return absolute;
        }
        assert!(
            !name.ends_with('.'),
            "{name} is outside the zone {}",
            self.origin
        );
        let relative = parsed
            .append_domain(&Name::from(&self.origin))
            .unwrap_or_else(|e| panic!("{name} in {}: {e}", self.origin));
        LowerName::from(relative)
    }

    /// The answer records for `name` and `qtype`, or `None` when the name does not exist.
    fn lookup(&self, name: &LowerName, qtype: RecordType) -> Option<Vec<Record>> {
        let names = self.names.lock().expect("zone lock");
        let Some(ips) = names.get(name) else {
            // The apex exists (it has the SOA) even with no addresses of its own.
            return (*name == self.origin).then(|| self.apex(qtype));
        };
        let owner = Name::from(name);
        let wants = |t: RecordType| qtype == t || qtype == RecordType::ANY;
        Some(
            ips.iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) if wants(RecordType::A) => Some(RData::A(A(*v4))),
                    IpAddr::V6(v6) if wants(RecordType::AAAA) => Some(RData::AAAA(AAAA(*v6))),
                    _ => None,
                })
                .map(|rdata| Record::from_rdata(owner.clone(), TTL, rdata))
                .collect(),
        )
    }

    fn apex(&self, qtype: RecordType) -> Vec<Record> {
        match qtype {
            RecordType::SOA | RecordType::ANY => vec![self.soa.clone()],
            _ => Vec::new(),
        }
    }
}

/// Answers queries from the [`Zone`] (see the module docs).
#[derive(Debug, Clone)]
struct Handler(Arc<Zone>);

#[tonic::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let zone = &self.0;
        zone.queries.fetch_add(1, Ordering::SeqCst);
        let mut header = Header::response_from_request(request.header());
        let builder = MessageResponseBuilder::from_message_request(request);
        let query = match request.request_info() {
            Ok(info)
                if request.message_type() == MessageType::Query
                    && request.op_code() == OpCode::Query =>
            {
                info.query.clone()
            }
            _ => {
                header.set_response_code(ResponseCode::NotImp);
                let response = builder.build_no_records(header);
                return response_handle
                    .send_response(response)
                    .await
                    .unwrap_or_else(|_| header.into());
            }
        };
        if !zone.origin.zone_of(query.name()) {
            header.set_response_code(ResponseCode::Refused);
            let response = builder.build_no_records(header);
            return response_handle
                .send_response(response)
                .await
                .unwrap_or_else(|_| header.into());
        }
        header.set_authoritative(true);
        let answers = zone.lookup(query.name(), query.query_type());
        let soa: &[Record] = match &answers {
            Some(answers) if !answers.is_empty() => &[],
            _ => std::slice::from_ref(&zone.soa),
        };
        if answers.is_none() {
            header.set_response_code(ResponseCode::NXDomain);
        }
        let answers = answers.unwrap_or_default();
        let response = builder.build(header, answers.iter(), [], soa.iter(), []);
        response_handle
            .send_response(response)
            .await
            .unwrap_or_else(|_| header.into())
    }
}

/// A DNS server for [`ZONE`] on 127.0.0.1 (see the module docs); stopped on drop.
#[derive(Debug)]
pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Zone>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

/// Binds UDP on a free port of 127.0.0.1 and TCP on the same port (another port when TCP's is
/// taken).
async fn bind() -> std::io::Result<(UdpSocket, TcpListener)> {
    let mut last = None;
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        match TcpListener::bind(udp.local_addr()?).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one try"))
}

impl DnsServer {
    /// Serves [`ZONE`] (no records yet) and returns once both sockets are bound.
    pub fn start() -> DnsServer {
        Self::start_zone(ZONE)
    }

    /// Serves `zone` (e.g. `"svc.test."`).
    pub fn start_zone(zone: &str) -> DnsServer {
        let mut origin = Name::from_str(zone).unwrap_or_else(|e| panic!("zone {zone:?}: {e}"));
        origin.set_fqdn(true);
        let zone = Arc::new(Zone::new(origin));
        let handler = Handler(Arc::clone(&zone));
        let (ready_tx, ready_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = thread::Builder::new()
            .name("dns-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("starting the DNS server's runtime");
                runtime.block_on(async move {
                    let (udp, tcp) = match bind().await {
                        Ok(sockets) => sockets,
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    };
                    let addr = udp.local_addr();
                    let mut server = ServerFuture::new(handler);
                    server.register_socket(udp);
                    server.register_listener(tcp, TCP_TIMEOUT);
                    let _ = ready_tx.send(addr);
                    // Dropped sender (the DnsServer is gone) stops the server too.
                    let _ = stop_rx.await;
                    let _ = server.shutdown_gracefully().await;
                });
            })
            .expect("spawning the DNS server thread");
        let addr = ready_rx
            .recv()
            .expect("the DNS server thread ended before binding")
            .unwrap_or_else(|e| panic!("binding the DNS server: {e}"));
        DnsServer {
            addr,
            zone,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT`, UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The zone's origin, e.g. `fleet.test.`.
    pub fn zone(&self) -> String {
        self.zone.origin.to_string()
    }

    /// The absolute name `name` stands for (`svc` → `svc.fleet.test.`).
    pub fn fqdn(&self, name: &str) -> String {
        self.zone.name(name).to_string()
    }

    /// Replaces the A and AAAA records of `name` (absolute, or relative to the zone) with
    /// `ips`: v4 addresses as A, v6 as AAAA, TTL 1 s. An empty list leaves the name existing
    /// with no addresses (NODATA). Panics for a name outside the zone.
    pub fn set(&self, name: &str, ips: &[IpAddr]) {
        let name = self.zone.name(name);
        self.zone
            .names
            .lock()
            .expect("zone lock")
            .insert(name, ips.to_vec());
    }

    /// Removes `name`: it answers NXDOMAIN from now on.
    pub fn remove(&self, name: &str) {
        let name = self.zone.name(name);
        self.zone.names.lock().expect("zone lock").remove(&name);
    }

    /// How many queries the server answered (any name, UDP and TCP).
    pub fn queries(&self) -> u64 {
        self.zone.queries.load(Ordering::SeqCst)
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
