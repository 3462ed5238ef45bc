//! `testkit::dns::DnsServer` answering a real resolver (`hickory-resolver`) over UDP and TCP:
//! records set, changed and removed while the server runs.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::xfer::Protocol;
use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{ResolveError, TokioResolver};
use testkit::DnsServer;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| ip(s)).collect()
}

/// A resolver asking only `server` over `protocol`; `cache`: hickory's cache on (it honours
/// the TTLs), else every lookup is a query.
fn resolver(server: SocketAddr, protocol: Protocol, cache: bool) -> TokioResolver {
    let mut config = ResolverConfig::new();
    config.add_name_server(NameServerConfig::new(server, protocol));
    let mut opts = ResolverOpts::default();
    opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    opts.cache_size = if cache { 32 } else { 0 };
    opts.attempts = 1;
    opts.timeout = Duration::from_secs(2);
    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build()
}

async fn lookup(resolver: &TokioResolver, name: &str) -> Result<BTreeSet<IpAddr>, ResolveError> {
    Ok(resolver.lookup_ip(name).await?.iter().collect())
}

#[tokio::test]
async fn set_change_remove_over_udp_and_tcp() {
    let dns = DnsServer::start();
    assert_eq!(dns.zone(), "fleet.test.");
    assert_eq!(dns.fqdn("svc"), "svc.fleet.test.");
    for protocol in [Protocol::Udp, Protocol::Tcp] {
        let r = resolver(dns.addr(), protocol, false);
        dns.set("svc", &[ip("127.0.0.2"), ip("127.0.0.3"), ip("::1")]);
        let got = lookup(&r, "svc.fleet.test.").await.unwrap();
        assert_eq!(got, ips(&["127.0.0.2", "127.0.0.3", "::1"]), "{protocol:?}");

        dns.set("svc.fleet.test.", &[ip("127.0.0.4")]);
        let got = lookup(&r, "svc.fleet.test.").await.unwrap();
        assert_eq!(got, ips(&["127.0.0.4"]), "{protocol:?}");

        dns.remove("svc");
        let err = lookup(&r, "svc.fleet.test.").await.unwrap_err();
        assert!(err.is_nx_domain(), "{protocol:?}: {err:?}");
    }
}

#[tokio::test]
async fn unknown_names_nxdomain_and_empty_names_nodata() {
    let dns = DnsServer::start();
    let r = resolver(dns.addr(), Protocol::Udp, false);
    let err = lookup(&r, "nobody.fleet.test.").await.unwrap_err();
    assert!(err.is_nx_domain(), "{err:?}");
    dns.set("empty", &[]);
    let err = lookup(&r, "empty.fleet.test.").await.unwrap_err();
    assert!(err.is_no_records_found() && !err.is_nx_domain(), "{err:?}");
    // Outside the zone: refused, not NXDOMAIN (the server is no recursor).
    let err = lookup(&r, "example.com.").await.unwrap_err();
    assert!(!err.is_nx_domain(), "{err:?}");
}

#[tokio::test]
async fn a_caching_resolver_sees_a_change_after_the_ttl() {
    let dns = DnsServer::start();
    let r = resolver(dns.addr(), Protocol::Udp, true);
    dns.set("svc", &[ip("127.0.0.2")]);
    assert_eq!(
        lookup(&r, "svc.fleet.test.").await.unwrap(),
        ips(&["127.0.0.2"])
    );
    let asked = dns.queries();
    dns.set("svc", &[ip("127.0.0.3")]);
    let changed = Instant::now();
    let deadline = changed + Duration::from_secs(10);
    loop {
        let got = lookup(&r, "svc.fleet.test.").await.unwrap();
        if got == ips(&["127.0.0.3"]) {
            break;
        }
        assert_eq!(
            got,
            ips(&["127.0.0.2"]),
            "neither the old nor the new record"
        );
        assert!(Instant::now() < deadline, "still the old record after 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The cache answered until the 1 s TTL ran out, then the resolver asked again.
    assert!(
        changed.elapsed() < Duration::from_secs(5),
        "{:?}",
        changed.elapsed()
    );
    assert!(dns.queries() > asked, "no new query reached the server");
}

#[tokio::test]
async fn queries_are_counted() {
    let dns = DnsServer::start();
    let r = resolver(dns.addr(), Protocol::Udp, false);
    dns.set("svc", &[ip("127.0.0.2")]);
    assert_eq!(dns.queries(), 0);
    for _ in 0..3 {
        lookup(&r, "svc.fleet.test.").await.unwrap();
    }
    // Ipv4AndIpv6: an A and an AAAA query per lookup.
    assert_eq!(dns.queries(), 6);
}
