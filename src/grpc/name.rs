//! Target names, as gRPC's naming doc (grpc/doc/naming.md) spells them: what to resolve and
//! where to connect.
//!
//! | name | resolves to |
//! |---|---|
//! | `host:port`, `[v6]:port`, `host` | `dns:///host:port` (an IP literal: that address) |
//! | `http://host[:port]`, `https://host[:port]` | as above; https turns TLS on |
//! | `dns:[//dns-server[:port]/]host[:port]` | A and AAAA records of `host`, asked of `dns-server` or of /etc/resolv.conf |
//! | `ipv4:addr[:port][,addr[:port],...]` | those addresses |
//! | `ipv6:addr` / `ipv6:[addr]:port[,...]` | those addresses |
//! | `unix:path`, `unix:///abs/path` | a Unix domain socket |
//! | `unix-abstract:name` | a socket in the abstract namespace |
//!
//! The default port is 443 (the naming doc's), 80 for `http://`; a DNS server's is 53.
//!
//! Choices where the doc leaves room:
//! - A scheme is recognised before the first `:` only when it is one of the above (in any
//!   case); otherwise the target is `host:port`, so `localhost:50051` is a host and a port.
//!   `foo:bar` is neither (the port is not a number) and is refused, not passed through.
//! - Port 0 is refused: nothing can be connected to on it.
//! - Hosts are checked as DNS names (labels of letters, digits, `-` and `_`, 63 bytes at
//!   most, not starting or ending in `-`; 253 bytes in all, a trailing `.` allowed), so a
//!   mistyped target fails here rather than at the first resolution.
//! - An IP literal where a DNS host may stand (`10.0.0.1:80`, `https://[::1]`,
//!   `dns:///10.0.0.1`) needs no resolution: it is that one address.
//! - No percent-decoding: paths and names are taken as written.
//! - `unix-abstract:` takes every byte after the colon as the name, an empty name included
//!   (Linux accepts it); 107 bytes at most, as for `unix:` paths (`sun_path` is 108 bytes,
//!   one of them the path's NUL or the abstract name's leading NUL).
//! - Several static addresses have "localhost" as authority: the list is no authority, and
//!   no one address of it names the service more than the others.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

/// One address to connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
    /// The name in the abstract namespace (without the leading NUL).
    UnixAbstract(Vec<u8>),
}

/// Where a name's addresses come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolve {
    /// Ask DNS (A and AAAA) for `host`, of `server` (host, port 53 by default) or of the
    /// system's resolver configuration.
    Dns {
        server: Option<SocketAddr>,
        host: String,
        port: u16,
    },
    /// These addresses, in this order.
    Static(Vec<Address>),
}

/// A parsed target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub resolve: Resolve,
    /// The scheme asks for TLS (`https://`).
    pub tls: bool,
    /// The default `:authority` (and TLS server name): the host (and port, unless it is the
    /// default) of a DNS name, the address of a single static address, "localhost" for Unix
    /// sockets.
    pub authority: String,
}

/// The longest Unix socket path or abstract name (`sun_path` less one byte).
const MAX_UNIX_PATH: usize = 107;
/// The port of a name that gives none (the naming doc's), but `http://`'s.
const DEFAULT_PORT: u16 = 443;
const HTTP_PORT: u16 = 80;
const DNS_SERVER_PORT: u16 = 53;
/// The authority of names whose addresses name no host.
const LOCALHOST: &str = "localhost";

/// Parses `target`; the error reads `target "<target>": <problem>`, naming the part that is
/// wrong (the caller prefixes "INVALID_ARGUMENT").
pub fn parse(target: &str) -> Result<Name, String> {
    parse_target(target).map_err(|e| format!("target {target:?}: {e}"))
}

/// [`parse`] without the target in front of its errors.
fn parse_target(target: &str) -> Result<Name, String> {
    if target.is_empty() {
        return Err("empty".to_owned());
    }
    // A bare IPv6 address (`fe80::1`) has no scheme before its first colon.
    let bare_v6 = target.parse::<Ipv6Addr>().is_ok();
    if let Some((scheme, rest)) = target.split_once(':').filter(|_| !bare_v6) {
        if let Some(name) = parse_scheme(scheme, rest)? {
            return Ok(name);
        }
    }
    host_port_name(target, None, DEFAULT_PORT, false)
}

/// The name for a known `scheme` (`rest` after its colon); `None` when `scheme` is none but
/// the host of `host:port`.
fn parse_scheme(scheme: &str, rest: &str) -> Result<Option<Name>, String> {
    let name = match scheme.to_ascii_lowercase().as_str() {
        "dns" => dns(rest)?,
        "ipv4" => static_list(rest, "ipv4", ipv4_addr)?,
        "ipv6" => static_list(rest, "ipv6", ipv6_addr)?,
        "unix" => unix(rest)?,
        "unix-abstract" => unix_abstract(rest)?,
        "http" => http(rest, "http", HTTP_PORT, false)?,
        "https" => http(rest, "https", DEFAULT_PORT, true)?,
        _ if is_scheme(scheme) && (rest.starts_with("//") || !is_port_text(rest)) => {
            return Err(format!(
                "unknown scheme {scheme:?} (or, as host:port, port {rest:?} is not a number)"
            ));
        }
        _ => return Ok(None),
    };
    Ok(Some(name))
}

/// `scheme` has URI scheme syntax (RFC 3986: a letter, then letters, digits, `+`, `-`, `.`).
fn is_scheme(scheme: &str) -> bool {
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

/// `text` may be a port: empty (refused later, as a port) or digits.
fn is_port_text(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit())
}

/// `dns:[//server[:port]/]host[:port]`.
fn dns(rest: &str) -> Result<Name, String> {
    let Some(after) = rest.strip_prefix("//") else {
        return host_port_name(rest, None, DEFAULT_PORT, false);
    };
    let Some((server, endpoint)) = after.split_once('/') else {
        return Err(format!("dns server {after:?} is not followed by \"/host\""));
    };
    let server = if server.is_empty() {
        None
    } else {
        Some(dns_server(server)?)
    };
    host_port_name(endpoint, server, DEFAULT_PORT, false)
}

/// A DNS server: an IP literal (IPv6 in brackets) and an optional port (53).
fn dns_server(text: &str) -> Result<SocketAddr, String> {
    let not_ip = || format!("dns server {text:?} is not an IP address");
    let (host, port) = split_host_port(text).map_err(|_| not_ip())?;
    let ip = host.parse::<IpAddr>().map_err(|_| not_ip())?;
    let port = match port {
        Some(p) => parse_port(p).map_err(|e| format!("dns server {text:?}: {e}"))?,
        None => DNS_SERVER_PORT,
    };
    Ok(SocketAddr::new(ip, port))
}

/// `http://host[:port]` and `https://...` (`rest` after the colon; a trailing `/` allowed).
fn http(rest: &str, scheme: &str, default_port: u16, tls: bool) -> Result<Name, String> {
    let Some(after) = rest.strip_prefix("//") else {
        return Err(format!("{scheme}: needs \"//host\""));
    };
    let authority = after.strip_suffix('/').unwrap_or(after);
    if authority.contains('/') {
        return Err(format!(
            "{scheme}: {after:?} has a path (only host[:port] is allowed)"
        ));
    }
    host_port_name(authority, None, default_port, tls)
}

/// `host[:port]` (`[v6][:port]`, or a bare IPv6 address) resolved by DNS (asked of
/// `server`), or the address itself when the host is an IP literal. The authority leaves out
/// `default_port`.
fn host_port_name(
    text: &str,
    server: Option<SocketAddr>,
    default_port: u16,
    tls: bool,
) -> Result<Name, String> {
    // A bare IPv6 address: its colons are no port separator.
    let (host, port) = match text.parse::<Ipv6Addr>() {
        Ok(_) => (text, None),
        Err(_) => split_host_port(text)?,
    };
    let port = match port {
        Some(p) => parse_port(p)?,
        None => default_port,
    };
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Name {
            tls,
            ..static_one(SocketAddr::new(ip, port))
        });
    }
    check_hostname(host)?;
    let authority = if port == default_port {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    Ok(Name {
        resolve: Resolve::Dns {
            server,
            host: host.to_owned(),
            port,
        },
        tls,
        authority,
    })
}

/// Splits `host[:port]` or `[v6][:port]`; a bracketed host must be an IPv6 address.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(after) = text.strip_prefix('[') {
        let Some((inside, tail)) = after.split_once(']') else {
            return Err(format!("{text:?} has no closing ']'"));
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("[{inside}] is not an IPv6 address"));
        }
        return match tail {
            "" => Ok((inside, None)),
            _ => match tail.strip_prefix(':') {
                Some(port) => Ok((inside, Some(port))),
                None => Err(format!("{tail:?} after [{inside}] is not \":port\"")),
            },
        };
    }
    match text.split_once(':') {
        None => Ok((text, None)),
        Some((host, port)) if !port.contains(':') => Ok((host, Some(port))),
        Some(_) => Err(format!(
            "{text:?}: an IPv6 address with a port goes in brackets"
        )),
    }
}

/// A port: digits, 1..=65535.
fn parse_port(text: &str) -> Result<u16, String> {
    let bad = || format!("port {text:?} is not a number in 1..65535");
    if text.is_empty() || !is_port_text(text) {
        return Err(bad());
    }
    match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(bad()),
        Ok(port) => Ok(port),
    }
}

/// Checks `host` as a DNS name (see the module doc).
fn check_hostname(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty host".to_owned());
    }
    let bad = |why: &str| Err(format!("host {host:?} is not a DNS name ({why})"));
    if host.len() > 253 {
        return bad("longer than 253 bytes");
    }
    let labels = host.strip_suffix('.').unwrap_or(host);
    for label in labels.split('.') {
        if label.is_empty() {
            return bad("empty label");
        }
        if label.len() > 63 {
            return bad("a label longer than 63 bytes");
        }
        if label.starts_with('-') || label.ends_with('-') {
            return bad("a label starts or ends with '-'");
        }
        if let Some(c) = label
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return bad(&format!("{c:?} is not allowed"));
        }
    }
    Ok(())
}

/// The name of one address: its authority is the address.
fn static_one(addr: SocketAddr) -> Name {
    Name {
        resolve: Resolve::Static(vec![Address::Tcp(addr)]),
        tls: false,
        authority: addr.to_string(),
    }
}

/// `ipv4:` / `ipv6:` lists: `addr[:port]` entries separated by commas, each parsed by `one`.
fn static_list(
    rest: &str,
    scheme: &str,
    one: fn(&str) -> Result<SocketAddr, String>,
) -> Result<Name, String> {
    if rest.is_empty() {
        return Err(format!("{scheme}: no addresses"));
    }
    let addrs = rest
        .split(',')
        .map(|entry| match entry {
            "" => Err(format!("{scheme}: empty address in the list")),
            _ => one(entry),
        })
        .collect::<Result<Vec<_>, _>>()?;
    if let [addr] = addrs[..] {
        return Ok(static_one(addr));
    }
    Ok(Name {
        resolve: Resolve::Static(addrs.into_iter().map(Address::Tcp).collect()),
        tls: false,
        authority: LOCALHOST.to_owned(),
    })
}

/// One `ipv4:` entry: `a.b.c.d[:port]`.
fn ipv4_addr(entry: &str) -> Result<SocketAddr, String> {
    let (host, port) = entry.split_once(':').unwrap_or((entry, ""));
    let Ok(ip) = host.parse::<Ipv4Addr>() else {
        return Err(format!("ipv4 address {host:?} is not an IPv4 address"));
    };
    Ok(SocketAddr::new(IpAddr::V4(ip), entry_port(entry, port)?))
}

/// One `ipv6:` entry: `addr`, or `[addr]` with an optional `:port`.
fn ipv6_addr(entry: &str) -> Result<SocketAddr, String> {
    let not_v6 = |a: &str| format!("ipv6 address {a:?} is not an IPv6 address");
    let Some(after) = entry.strip_prefix('[') else {
        let ip = entry.parse::<Ipv6Addr>().map_err(|_| not_v6(entry))?;
        return Ok(SocketAddr::new(IpAddr::V6(ip), DEFAULT_PORT));
    };
    let (inside, tail) = after.split_once(']').ok_or_else(|| not_v6(entry))?;
    let ip = inside.parse::<Ipv6Addr>().map_err(|_| not_v6(inside))?;
    let port = match tail {
        "" => "",
        _ => tail.strip_prefix(':').ok_or_else(|| {
            format!("ipv6 address {entry:?}: {tail:?} after ']' is not \":port\"")
        })?,
    };
    Ok(SocketAddr::new(IpAddr::V6(ip), entry_port(entry, port)?))
}

/// A list entry's port: `port`, or the default when the entry gives none.
fn entry_port(entry: &str, port: &str) -> Result<u16, String> {
    if port.is_empty() && !entry.ends_with(':') {
        return Ok(DEFAULT_PORT);
    }
    parse_port(port).map_err(|e| format!("address {entry:?}: {e}"))
}

/// `unix:path` (relative or absolute) and `unix:///absolute/path`.
fn unix(rest: &str) -> Result<Name, String> {
    let path = match rest.strip_prefix("//") {
        Some(abs) if abs.starts_with('/') => abs,
        Some(_) => return Err("unix:// needs an absolute path (unix:///path)".to_owned()),
        None => rest,
    };
    if path.is_empty() {
        return Err("empty unix socket path".to_owned());
    }
    check_unix_bytes("unix socket path", path.as_bytes())?;
    if path.contains('\0') {
        return Err("unix socket path has a NUL byte".to_owned());
    }
    Ok(local(Address::Unix(PathBuf::from(path))))
}

/// `unix-abstract:name`: every byte after the colon.
fn unix_abstract(rest: &str) -> Result<Name, String> {
    check_unix_bytes("unix-abstract name", rest.as_bytes())?;
    Ok(local(Address::UnixAbstract(rest.as_bytes().to_vec())))
}

/// A Unix socket path or abstract name fits `sun_path`.
fn check_unix_bytes(what: &str, bytes: &[u8]) -> Result<(), String> {
    if bytes.len() > MAX_UNIX_PATH {
        return Err(format!(
            "{what} is {} bytes, longer than {MAX_UNIX_PATH}",
            bytes.len()
        ));
    }
    Ok(())
}

/// The name of one local socket.
fn local(addr: Address) -> Name {
    Name {
        resolve: Resolve::Static(vec![addr]),
        tls: false,
        authority: LOCALHOST.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(s: &str) -> Address {
        Address::Tcp(s.parse().unwrap())
    }

    fn dns_name(host: &str, port: u16, authority: &str) -> Name {
        Name {
            resolve: Resolve::Dns {
                server: None,
                host: host.to_owned(),
                port,
            },
            tls: false,
            authority: authority.to_owned(),
        }
    }

    fn static_name(addrs: &[&str], authority: &str) -> Name {
        Name {
            resolve: Resolve::Static(addrs.iter().map(|a| tcp(a)).collect()),
            tls: false,
            authority: authority.to_owned(),
        }
    }

    fn err(target: &str) -> String {
        parse(target).unwrap_err()
    }

    #[test]
    fn host_and_port() {
        assert_eq!(
            parse("localhost:50051").unwrap(),
            dns_name("localhost", 50051, "localhost:50051")
        );
        assert_eq!(
            parse("svc.ns.svc.cluster.local:443").unwrap(),
            dns_name("svc.ns.svc.cluster.local", 443, "svc.ns.svc.cluster.local")
        );
        assert_eq!(
            parse("my-host_1.example.com.:8080").unwrap(),
            dns_name(
                "my-host_1.example.com.",
                8080,
                "my-host_1.example.com.:8080"
            )
        );
    }

    #[test]
    fn bare_host_defaults_to_443() {
        assert_eq!(
            parse("example.com").unwrap(),
            dns_name("example.com", 443, "example.com")
        );
    }

    #[test]
    fn ip_literals_are_static() {
        assert_eq!(
            parse("10.0.0.1:50051").unwrap(),
            static_name(&["10.0.0.1:50051"], "10.0.0.1:50051")
        );
        assert_eq!(
            parse("10.0.0.1").unwrap(),
            static_name(&["10.0.0.1:443"], "10.0.0.1:443")
        );
        assert_eq!(
            parse("[::1]:50051").unwrap(),
            static_name(&["[::1]:50051"], "[::1]:50051")
        );
        assert_eq!(
            parse("[::1]").unwrap(),
            static_name(&["[::1]:443"], "[::1]:443")
        );
        assert_eq!(
            parse("fe80::1").unwrap(),
            static_name(&["[fe80::1]:443"], "[fe80::1]:443")
        );
        assert_eq!(
            parse("dns:///10.1.2.3:8080").unwrap(),
            static_name(&["10.1.2.3:8080"], "10.1.2.3:8080")
        );
    }

    #[test]
    fn http_and_https() {
        assert_eq!(parse("http://h").unwrap(), dns_name("h", 80, "h"));
        assert_eq!(parse("http://h:80/").unwrap(), dns_name("h", 80, "h"));
        assert_eq!(
            parse("http://h:8080").unwrap(),
            dns_name("h", 8080, "h:8080")
        );
        let https = parse("https://api.example.com").unwrap();
        assert!(https.tls);
        assert_eq!(
            https.resolve,
            Resolve::Dns {
                server: None,
                host: "api.example.com".into(),
                port: 443
            }
        );
        assert_eq!(https.authority, "api.example.com");
        assert_eq!(parse("HTTPS://h:8443").unwrap().authority, "h:8443");
        let v6 = parse("https://[::1]:8443").unwrap();
        assert!(v6.tls);
        assert_eq!(v6.resolve, Resolve::Static(vec![tcp("[::1]:8443")]));
    }

    #[test]
    fn dns_forms() {
        assert_eq!(
            parse("dns:///svc.ns:50051").unwrap(),
            dns_name("svc.ns", 50051, "svc.ns:50051")
        );
        assert_eq!(parse("dns:svc").unwrap(), dns_name("svc", 443, "svc"));
        assert_eq!(
            parse("dns:///svc:443").unwrap(),
            dns_name("svc", 443, "svc")
        );
        let with_server = parse("dns://8.8.8.8/svc:81").unwrap();
        assert_eq!(
            with_server.resolve,
            Resolve::Dns {
                server: Some("8.8.8.8:53".parse().unwrap()),
                host: "svc".into(),
                port: 81
            }
        );
        assert_eq!(with_server.authority, "svc:81");
        let v6_server = parse("dns://[::1]:5353/svc").unwrap();
        assert_eq!(
            v6_server.resolve,
            Resolve::Dns {
                server: Some("[::1]:5353".parse().unwrap()),
                host: "svc".into(),
                port: 443
            }
        );
    }

    #[test]
    fn ipv4_lists() {
        assert_eq!(
            parse("ipv4:1.2.3.4").unwrap(),
            static_name(&["1.2.3.4:443"], "1.2.3.4:443")
        );
        assert_eq!(
            parse("ipv4:1.2.3.4:80,5.6.7.8").unwrap(),
            static_name(&["1.2.3.4:80", "5.6.7.8:443"], "localhost")
        );
    }

    #[test]
    fn ipv6_lists() {
        assert_eq!(
            parse("ipv6:::1").unwrap(),
            static_name(&["[::1]:443"], "[::1]:443")
        );
        assert_eq!(
            parse("ipv6:[::1]:81,[2607:f8b0:400e:c00::ef],fe80::2").unwrap(),
            static_name(
                &["[::1]:81", "[2607:f8b0:400e:c00::ef]:443", "[fe80::2]:443"],
                "localhost"
            )
        );
    }

    #[test]
    fn unix_sockets() {
        let local = |a: Address| Name {
            resolve: Resolve::Static(vec![a]),
            tls: false,
            authority: "localhost".into(),
        };
        assert_eq!(
            parse("unix:relative/s.sock").unwrap(),
            local(Address::Unix("relative/s.sock".into()))
        );
        assert_eq!(
            parse("unix:/run/s.sock").unwrap(),
            local(Address::Unix("/run/s.sock".into()))
        );
        assert_eq!(
            parse("unix:///run/s.sock").unwrap(),
            local(Address::Unix("/run/s.sock".into()))
        );
        assert_eq!(
            parse("unix-abstract:grpc\0x:y").unwrap(),
            local(Address::UnixAbstract(b"grpc\0x:y".to_vec()))
        );
        assert_eq!(
            parse("unix-abstract:").unwrap(),
            local(Address::UnixAbstract(Vec::new()))
        );
    }

    #[test]
    fn empty_and_unknown_scheme() {
        assert_eq!(err(""), r#"target "": empty"#);
        assert_eq!(
            err("foo:bar"),
            r#"target "foo:bar": unknown scheme "foo" (or, as host:port, port "bar" is not a number)"#
        );
        assert!(err("xds:///svc").contains(r#"unknown scheme "xds""#));
        assert!(err("passthrough:///h:1").contains(r#"unknown scheme "passthrough""#));
    }

    #[test]
    fn bad_ports() {
        assert!(err("h:0").ends_with(r#"port "0" is not a number in 1..65535"#));
        assert!(err("h:65536").contains(r#"port "65536""#));
        assert!(err("h:").contains(r#"port """#));
        assert!(err("[::1]:x").contains(r#"port "x""#));
        assert!(err("10.0.0.1:+80").contains(r#"port "+80""#));
        assert!(err("ipv4:1.2.3.4:").contains(r#"address "1.2.3.4:": port """#));
        assert!(err("dns://1.1.1.1:99999/h").contains(r#"dns server "1.1.1.1:99999": port"#));
    }

    #[test]
    fn bad_hosts() {
        assert!(err("dns:///").ends_with("empty host"));
        assert!(err(":80").ends_with("empty host"));
        assert!(err("http://:80").ends_with("empty host"));
        assert!(err("a..b").contains("empty label"));
        assert!(err("bad host:80").contains("' ' is not allowed"));
        assert!(err("-a.b").contains("starts or ends with '-'"));
        assert!(err(&"a".repeat(64)).contains("longer than 63"));
        assert!(err(&["a"; 130].join(".")).contains("longer than 253"));
        assert!(err("10.0.0.1:1:2").contains("an IPv6 address with a port goes in brackets"));
        assert!(err("[::1").contains("no closing ']'"));
        assert!(err("[h]:80").contains("[h] is not an IPv6 address"));
        assert!(err("[::1]80").contains(r#""80" after [::1]"#));
    }

    #[test]
    fn bad_dns_server() {
        assert_eq!(
            err("dns://x/foo"),
            r#"target "dns://x/foo": dns server "x" is not an IP address"#
        );
        assert!(err("dns://8.8.8.8").contains("is not followed by"));
        assert!(err("dns://::1/foo").contains(r#"dns server "::1" is not an IP address"#));
    }

    #[test]
    fn bad_static_lists() {
        assert_eq!(
            err("ipv4:1.2.3:80"),
            r#"target "ipv4:1.2.3:80": ipv4 address "1.2.3" is not an IPv4 address"#
        );
        assert!(err("ipv4:").ends_with("ipv4: no addresses"));
        assert!(err("h:1:2").contains(r#"unknown scheme "h""#));
        assert!(err("ipv4:1.2.3.4,").ends_with("ipv4: empty address in the list"));
        assert!(err("ipv4:::1").contains("is not an IPv4 address"));
        assert!(err("ipv6:1.2.3.4").contains(r#"ipv6 address "1.2.3.4" is not an IPv6"#));
        assert!(err("ipv6:[::1").contains(r#"ipv6 address "[::1""#));
        assert!(err("ipv6:[::1]x").contains(r#""x" after ']'"#));
        assert!(err("ipv6:[::1]:0").contains(r#"port "0""#));
    }

    #[test]
    fn bad_http() {
        assert!(err("http:h").ends_with(r#"http: needs "//host""#));
        assert!(err("https://h/path").contains("has a path"));
    }

    #[test]
    fn bad_unix() {
        assert!(err("unix:").ends_with("empty unix socket path"));
        assert!(err("unix://").contains("needs an absolute path"));
        assert!(err("unix://relative").contains("needs an absolute path"));
        assert!(err("unix:a\0b").ends_with("NUL byte"));
        assert!(err(&format!("unix:/{}", "a".repeat(107))).contains("longer than 107"));
        assert!(err(&format!("unix-abstract:{}", "a".repeat(108))).contains("longer than 107"));
        assert!(parse(&format!("unix:/{}", "a".repeat(106))).is_ok());
    }
}
