//! `testkit`: what the integration tests (`t/*.rs`) and benches need around a real nginx.
//!
//! ```text
//!  test ── NginxBuilder::new("name")....start() ──► target/t-nginx/<name>-<pid>-<n>/
//!    │                                                  conf/nginx.conf  logs/error.log
//!    │                                                  logs/{stdout,stderr}.log  tmp/
//!    ├── nginx.get("/path") / post / get_many ──► 127.0.0.1:<port> ──► worker(s) ──► Lua
//!    ├── reload() / quit() / stop() ── signals ──► master (child of the test process)
//!    └── assert_log_clean(&[..]) ◄── logs/error.log
//! ```
//!
//! The generated `nginx.conf` loads Debian's ndk and lua modules, runs `daemon off;
//! master_process on;` (the test owns the master), `user root;` when the test runs as root,
//! keeps every path inside the prefix, sets `lua_package_path "<repo>/lua/?.lua;;"` and
//! `lua_package_cpath "<lib_dir>/lib?.so;;"`, passes `LD_LIBRARY_PATH=<lib_dir>` to the workers,
//! and serves one `server` on a free port of 127.0.0.1.
//!
//! Modules: `nginx` (builder and process control), `http` (blocking client and [`get_many`]),
//! [`by_id`] (the echo-by-id calls the runtime tests check across reloads and quits),
//! [`procfs`] (pids, rss, signals), `uds` ([`UdsEcho`], the proxy-model echo server), [`grpc`]
//! (the `grpc-test-server` binary's services, [`GrpcServer`] to run it, [`certs()`] for TLS,
//! [`RogueServer`], a misbehaving HTTP/2 peer, [`Fleet`], N servers on one port for load
//! balancing), [`dns`] ([`DnsServer`], an authoritative DNS server whose records tests change),
//! [`native`] (the tonic clients the benchmarks measure the Lua path against).

pub mod bench;
pub mod by_id;
pub mod dns;
pub mod grpc;
mod http;
pub mod native;
mod nginx;
pub mod procfs;
mod uds;

use std::path::PathBuf;

pub use dns::DnsServer;
pub use grpc::{
    certs, Fleet, GrpcServer, GrpcServerOpts, Misbehaviour, RogueServer, ServerStats, TestCerts,
};
pub use http::{get_many, Client, Resp, TIMEOUT};
pub use nginx::{Nginx, NginxBuilder, MODULES_DIR, NGINX_BIN};
pub use uds::{UdsEcho, LUA_UDS_ECHO};

/// The tokio this crate uses, for tests that drive [`get_many`] without a tokio dependency of
/// their own (`testkit::tokio::runtime::Runtime::new()`).
pub use tokio;

/// The tonic the generated [`grpc::pb`] clients are built on, for tests without a tonic
/// dependency of their own.
pub use tonic;

/// The standard health service's generated client and messages (`tonic_health::pb`), for
/// tests of health checking.
pub use tonic_health;

/// [`get_many`] on a fresh multi-thread runtime, for plain `#[test]` functions. Panics when
/// called from inside a tokio runtime (use `get_many(..).await` there).
pub fn get_many_blocking(urls: Vec<String>, concurrency: usize) -> Vec<(u16, Vec<u8>)> {
    tokio::runtime::Runtime::new()
        .expect("starting a tokio runtime")
        .block_on(get_many(urls, concurrency))
}

/// [`get_many_blocking`] that panics on any reply other than 200 (naming the request and
/// showing its body), and returns the bodies in the order of `urls`.
pub fn get_all_ok(urls: Vec<String>, concurrency: usize) -> Vec<Vec<u8>> {
    get_many_blocking(urls, concurrency)
        .into_iter()
        .enumerate()
        .map(|(i, (status, body))| {
            assert_eq!(
                status,
                200,
                "request {i}: {}",
                String::from_utf8_lossy(&body)
            );
            body
        })
        .collect()
}

/// Lua (for `init_by_lua`) defining the global `payload(n, seed)`: `n` deterministic bytes
/// covering every byte value, NUL included. [`payload`] computes the same bytes in Rust.
pub const LUA_PAYLOAD: &str = r#"
    function payload(n, seed)
        local chunk = {}
        for i = 0, 255 do chunk[#chunk + 1] = string.char((i * 7 + seed) % 256) end
        chunk = table.concat(chunk)
        local reps = math.floor(n / 256)
        local s = string.rep(chunk, reps) .. chunk:sub(1, n - reps * 256)
        assert(#s == n)
        return s
    end
"#;

/// Lua (inside an `init_by_lua_block`) defining the local `varint(n)`: the protobuf varint of a
/// non-negative integer, for tests and benchmarks that write their messages by hand.
pub const LUA_VARINT: &str = r#"
    local function varint(n)
        local t = {}
        repeat
            local b = n % 128
            n = math.floor(n / 128)
            t[#t + 1] = string.char(n > 0 and b + 128 or b)
        until n == 0
        return table.concat(t)
    end
"#;

/// The bytes of [`LUA_PAYLOAD`]'s `payload(n, seed)`.
pub fn payload(n: usize, seed: usize) -> Vec<u8> {
    let chunk: Vec<u8> = (0..256usize)
        .map(|i| ((i * 7 + seed) % 256) as u8)
        .collect();
    chunk.iter().copied().cycle().take(n).collect()
}

/// The workspace root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .expect("testkit lives inside the workspace")
        .to_path_buf()
}

/// Where the runtime libraries are: `$RESTY_LIB_DIR`, or `<repo>/target/release`.
pub fn lib_dir() -> PathBuf {
    match std::env::var_os("RESTY_LIB_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => repo_root().join("target/release"),
    }
}
