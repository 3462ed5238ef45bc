//! [`Fleet`]: N `grpc-test-server`s on one port of N loopback addresses, the backends of
//! client-side load-balancing tests.
//!
//! ```text
//!  Fleet::start(3, |opts| opts) ──► b0 on 127.0.0.2:P   b1 on 127.0.0.3:P   b2 on 127.0.0.4:P
//!                                   (x-backend: b0)     (x-backend: b1)     (x-backend: b2)
//!  ipv4_target() = "ipv4:127.0.0.2:P,127.0.0.3:P,127.0.0.4:P"
//!  a DNS name resolving to 127.0.0.2..4 + port P reaches the same three
//! ```
//!
//! One port for all makes the fleet look like a real service behind DNS: a name resolves to
//! addresses, the port is the target's. Linux routes all of 127.0.0.0/8 to `lo`, so binding
//! 127.0.0.2 and up needs no setup.

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::ops::{Index, IndexMut};
use std::path::{Path, PathBuf};

use super::process::{GrpcServer, GrpcServerOpts, ServerStats};

/// Ports [`Fleet::start`] tries before giving up (another process may take a port between the
/// check and the servers' binds).
const PORT_TRIES: usize = 5;

/// Options of server `i`, given the fleet's defaults (name, address) already applied.
type Configure = Box<dyn Fn(usize, GrpcServerOpts) -> GrpcServerOpts + Send + Sync>;

/// N servers named `b0`, `b1`, ... on 127.0.0.2, 127.0.0.3, ... and one port (see the module
/// docs); all killed on drop. Index it (`fleet[1]`) for the [`GrpcServer`] itself.
pub struct Fleet {
    bin: PathBuf,
    port: u16,
    configure: Configure,
    servers: Vec<GrpcServer>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("port", &self.port)
            .field("servers", &self.servers)
            .finish_non_exhaustive()
    }
}

/// The address of server `i`: 127.0.0.(2 + i).
fn ipv4(i: usize) -> Ipv4Addr {
    let last = u8::try_from(2 + i).unwrap_or_else(|_| panic!("a fleet has at most 253 servers"));
    Ipv4Addr::new(127, 0, 0, last)
}

/// A port free on every one of `ips` (checked by binding them all at once).
fn free_port_on(ips: &[Ipv4Addr]) -> u16 {
    loop {
        let first = TcpListener::bind((ips[0], 0)).expect("binding a loopback port");
        let port = first.local_addr().expect("a bound address").port();
        let rest: Result<Vec<_>, _> = ips[1..]
            .iter()
            .map(|ip| TcpListener::bind((*ip, port)))
            .collect();
        if rest.is_ok() {
            return port;
        }
    }
}

impl Fleet {
    /// `n` servers of [`GrpcServer::binary`], each with the options `configure` makes of the
    /// fleet's (name `b<i>`, address); returns once all serve (a Stats call answered).
    pub fn start(
        n: usize,
        configure: impl Fn(GrpcServerOpts) -> GrpcServerOpts + Send + Sync + 'static,
    ) -> Fleet {
        Self::start_bin_each(&GrpcServer::binary(), n, move |_, opts| configure(opts))
    }

    /// [`Fleet::start`] of `bin` (tests of this crate pass
    /// `env!("CARGO_BIN_EXE_grpc-test-server")`).
    pub fn start_bin(
        bin: &Path,
        n: usize,
        configure: impl Fn(GrpcServerOpts) -> GrpcServerOpts + Send + Sync + 'static,
    ) -> Fleet {
        Self::start_bin_each(bin, n, move |_, opts| configure(opts))
    }

    /// [`Fleet::start`] with options per server: `configure(i, opts)` (e.g. one slow backend).
    pub fn start_each(
        n: usize,
        configure: impl Fn(usize, GrpcServerOpts) -> GrpcServerOpts + Send + Sync + 'static,
    ) -> Fleet {
        Self::start_bin_each(&GrpcServer::binary(), n, configure)
    }

    /// [`Fleet::start_each`] of `bin`.
    pub fn start_bin_each(
        bin: &Path,
        n: usize,
        configure: impl Fn(usize, GrpcServerOpts) -> GrpcServerOpts + Send + Sync + 'static,
    ) -> Fleet {
        assert!(n > 0, "a fleet of no servers");
        let ips: Vec<Ipv4Addr> = (0..n).map(ipv4).collect();
        let mut fleet = Fleet {
            bin: bin.to_path_buf(),
            port: 0,
            configure: Box::new(configure),
            servers: Vec::with_capacity(n),
        };
        let mut errors = Vec::new();
        for _ in 0..PORT_TRIES {
            fleet.port = free_port_on(&ips);
            let started: Result<Vec<GrpcServer>, String> =
                (0..n).map(|i| fleet.try_launch(i)).collect();
            match started {
                Ok(servers) => {
                    fleet.servers = servers;
                    fleet.servers.iter().for_each(wait_serving);
                    return fleet;
                }
                // The servers that did start are dropped (killed) with the Vec.
                Err(e) => errors.push(e),
            }
        }
        panic!("no port worked for a fleet of {n} after {PORT_TRIES} tries: {errors:?}");
    }

    /// Starts server `i` on its address.
    fn try_launch(&self, i: usize) -> Result<GrpcServer, String> {
        let opts = (self.configure)(i, GrpcServerOpts::default().name(&format!("b{i}")));
        assert!(opts.uds.is_none(), "fleet servers listen on TCP");
        let opts = opts.listen(&format!("{}:{}", ipv4(i), self.port));
        GrpcServer::try_start_bin(&self.bin, opts)
    }

    pub fn len(&self) -> usize {
        self.servers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    /// The one port every server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Server `i`'s address: 127.0.0.(2 + i) (whether it runs or not).
    pub fn ip(&self, i: usize) -> IpAddr {
        IpAddr::V4(ipv4(i))
    }

    /// `127.0.0.(2 + i):PORT`.
    pub fn addr(&self, i: usize) -> String {
        format!("{}:{}", ipv4(i), self.port)
    }

    /// Every server's address, in index order.
    pub fn addrs(&self) -> Vec<String> {
        (0..self.len()).map(|i| self.addr(i)).collect()
    }

    /// Every server's IP, in index order (what a DNS name of the fleet resolves to).
    pub fn ips(&self) -> Vec<IpAddr> {
        (0..self.len()).map(|i| self.ip(i)).collect()
    }

    /// `ipv4:127.0.0.2:P,127.0.0.3:P,...`: a gRPC target naming every server, stopped or not.
    pub fn ipv4_target(&self) -> String {
        format!("ipv4:{}", self.addrs().join(","))
    }

    /// Server `i`'s name, `b<i>` (its `x-backend` header).
    pub fn name(&self, i: usize) -> String {
        format!("b{i}")
    }

    /// Kills server `i` (SIGKILL: connections reset, no GOAWAY). No-op when stopped.
    pub fn kill9(&mut self, i: usize) {
        self.servers[i].stop();
    }

    /// (Re)starts server `i` on its address with its options; returns once it serves.
    pub fn restart(&mut self, i: usize) {
        self.servers[i].restart();
        wait_serving(&self.servers[i]);
    }

    /// Starts one more server on the next address (same port, options from the fleet's
    /// `configure`) and returns its index. Panics when the port is taken on that address.
    pub fn add(&mut self) -> usize {
        let i = self.servers.len();
        let server = self.try_launch(i).unwrap_or_else(|e| {
            panic!("adding {} to the fleet: {e}", self.addr(i));
        });
        wait_serving(&server);
        self.servers.push(server);
        i
    }

    /// Server `i`'s counters (see [`GrpcServer::server_stats`]).
    pub fn stats(&self, i: usize) -> ServerStats {
        self.servers[i].server_stats()
    }

    /// [`Fleet::stats`] inside an async test.
    pub async fn stats_async(&self, i: usize) -> ServerStats {
        self.servers[i].server_stats_async().await
    }

    /// Every server's counters, in index order (all must run).
    pub fn all_stats(&self) -> Vec<ServerStats> {
        self.servers.iter().map(GrpcServer::server_stats).collect()
    }
}

/// Returns once `server` answers a Stats call: it listens and its services run.
fn wait_serving(server: &GrpcServer) {
    server.server_stats();
}

impl Index<usize> for Fleet {
    type Output = GrpcServer;

    fn index(&self, i: usize) -> &GrpcServer {
        &self.servers[i]
    }
}

impl IndexMut<usize> for Fleet {
    fn index_mut(&mut self, i: usize) -> &mut GrpcServer {
        &mut self.servers[i]
    }
}
