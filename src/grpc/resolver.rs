//! DNS: A and AAAA records of a name, asked of the server the target names or of the system's
//! configuration (/etc/resolv.conf, /etc/hosts), with hickory's resolver on the runtime's event
//! loop (never a blocking lookup on the poll thread).
//!
//! The resolver's cache is off: the balancer resolves on its own schedule (`resolve_interval`
//! and after connection failures), and each of those must ask the server.

use std::net::SocketAddr;

use hickory_resolver::config::{
    LookupIpStrategy, NameServerConfigGroup, ResolverConfig, ResolverOpts,
};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::TokioResolver;

/// A resolver for one target.
pub(super) struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// Asks `server` (UDP, TCP on truncation), or the system's name servers.
    pub fn new(server: Option<SocketAddr>) -> Result<Dns, String> {
        let builder = match server {
            Some(s) => TokioResolver::builder_with_config(
                ResolverConfig::from_parts(
                    None,
                    vec![],
                    NameServerConfigGroup::from_ips_clear(&[s.ip()], s.port(), true),
                ),
                TokioConnectionProvider::default(),
            ),
            None => TokioResolver::builder_tokio()
                .map_err(|e| format!("system resolver configuration: {e}"))?,
        };
        let mut opts = builder_options(server.is_some());
        if server.is_none() {
            // Keep resolv.conf's ndots, timeout, attempts; override what must hold here.
            let system = hickory_resolver::system_conf::read_system_conf()
                .map(|(_, o)| o)
                .unwrap_or_default();
            opts.ndots = system.ndots;
            opts.timeout = system.timeout;
            opts.attempts = system.attempts;
        }
        Ok(Dns {
            resolver: builder.with_options(opts).build(),
        })
    }

    /// The addresses of `host` (v4 first, as the server ordered them), on `port`.
    pub async fn lookup(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        // A trailing dot: the name is absolute (no search domains).
        let lookup = self
            .resolver
            .lookup_ip(host)
            .await
            .map_err(|e| format!("resolving {host:?}: {e}"))?;
        let mut addrs: Vec<SocketAddr> =
            lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        addrs.sort_by_key(|a| a.is_ipv6());
        addrs.dedup();
        Ok(addrs)
    }
}

/// Both record types, no cache; the hosts file only when asking the system's servers.
fn builder_options(own_server: bool) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = 0;
    opts.use_hosts_file = if own_server {
        hickory_resolver::config::ResolveHosts::Never
    } else {
        hickory_resolver::config::ResolveHosts::Always
    };
    opts
}
