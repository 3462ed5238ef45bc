//! [`GrpcServer`]: runs the `grpc-test-server` binary as a child of the test.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::certs::TestCerts;
use super::pb::zctest::test_client::TestClient;
use super::pb::zctest::StatsRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// How long [`GrpcServer::start`] waits for the `listening` line.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a graceful stop may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// How to run the server. `Default`: plaintext on `127.0.0.1:<free port>`, default limits.
#[derive(Debug, Clone, Default)]
pub struct GrpcServerOpts {
    /// Listen on this TCP address (e.g. `[::1]:0`) instead of `127.0.0.1:0`.
    pub listen: Option<String>,
    /// Serve on this unix socket instead of TCP.
    pub uds: Option<PathBuf>,
    /// Serve TLS with `server_cert_pem`/`server_key_pem` of these certificates.
    pub tls: Option<TestCerts>,
    /// With `tls`: require client certificates signed by its `ca_pem` (mTLS).
    pub mtls: bool,
    /// `--max-recv`: largest message the server decodes.
    pub max_recv: Option<usize>,
    /// `--max-send`: largest message the server encodes.
    pub max_send: Option<usize>,
    /// `--threads`: tokio worker threads (`0`: a current-thread runtime); the binary's default
    /// (2) when `None`.
    pub threads: Option<usize>,
    /// `--no-echo-meta`: serve without the metadata-echo layer (measurements only).
    pub no_echo_meta: bool,
    /// `--no-gzip-replies`: `zctest.Test` never compresses its replies (benchmarks).
    pub no_gzip_replies: bool,
    /// `--name`: every response carries `x-backend: <name>`.
    pub name: Option<String>,
    /// `--delay-ms`: `Unary` and `SayHello` wait this long before answering.
    pub delay_ms: Option<u64>,
    /// `--no-health`: no `grpc.health.v1.Health` (its calls answer UNIMPLEMENTED).
    pub no_health: bool,
}

impl GrpcServerOpts {
    /// TLS with the server certificate of `certs`.
    pub fn tls(mut self, certs: &TestCerts) -> Self {
        self.tls = Some(certs.clone());
        self
    }

    /// TLS with the server certificate of `certs`, and client certificates required (signed
    /// by `certs.ca_pem`).
    pub fn mtls(mut self, certs: &TestCerts) -> Self {
        self.tls = Some(certs.clone());
        self.mtls = true;
        self
    }

    pub fn uds(mut self, path: impl Into<PathBuf>) -> Self {
        self.uds = Some(path.into());
        self
    }

    /// Listen on `addr` (port 0: a free one), e.g. `[::1]:0`.
    pub fn listen(mut self, addr: &str) -> Self {
        self.listen = Some(addr.to_owned());
        self
    }

    pub fn max_recv(mut self, bytes: usize) -> Self {
        self.max_recv = Some(bytes);
        self
    }

    pub fn max_send(mut self, bytes: usize) -> Self {
        self.max_send = Some(bytes);
        self
    }

    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = Some(threads);
        self
    }

    pub fn no_echo_meta(mut self) -> Self {
        self.no_echo_meta = true;
        self
    }

    pub fn no_gzip_replies(mut self) -> Self {
        self.no_gzip_replies = true;
        self
    }

    /// Every response carries `x-backend: <name>` (which backend of a fleet answered).
    pub fn name(mut self, name: &str) -> Self {
        self.name = Some(name.to_owned());
        self
    }

    /// `Unary` and `SayHello` wait `ms` before answering, on top of the request's `sleep_ms`.
    pub fn delay_ms(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }

    /// Serve without the health service.
    pub fn no_health(mut self) -> Self {
        self.no_health = true;
        self
    }

    /// Command-line flags of the binary, listening on `listen` (ignored with `uds`).
    fn args(&self, listen: &str) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        match &self.uds {
            Some(path) => args.extend(["--uds".into(), path.into()]),
            None => args.extend(["--listen".into(), listen.into()]),
        }
        if let Some(certs) = &self.tls {
            args.extend([
                "--tls-cert".into(),
                certs.server_cert_path().into(),
                "--tls-key".into(),
                certs.server_key_path().into(),
            ]);
            if self.mtls {
                args.extend(["--client-ca".into(), certs.ca_path().into()]);
            }
        }
        if let Some(n) = self.max_recv {
            args.extend(["--max-recv".into(), n.to_string().into()]);
        }
        if let Some(n) = self.max_send {
            args.extend(["--max-send".into(), n.to_string().into()]);
        }
        if let Some(n) = self.threads {
            args.extend(["--threads".into(), n.to_string().into()]);
        }
        if self.no_echo_meta {
            args.push("--no-echo-meta".into());
        }
        if self.no_gzip_replies {
            args.push("--no-gzip-replies".into());
        }
        if let Some(name) = &self.name {
            args.extend(["--name".into(), name.into()]);
        }
        if let Some(ms) = self.delay_ms {
            args.extend(["--delay-ms".into(), ms.to_string().into()]);
        }
        if self.no_health {
            args.push("--no-health".into());
        }
        args
    }
}

/// What a server counted since it (re)started (`/zctest.Test/Stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Handler invocations dropped before they finished (client cancel, deadline, reset).
    pub cancelled: u64,
    /// Handler invocations that ran to the end.
    pub completed: u64,
    /// Calls that reached the server (every method but Stats and health), injected failures
    /// included.
    pub received: u64,
    /// Calls answered by failure injection (`x-fail-until-attempt`).
    pub injected: u64,
    /// `grpc.health.v1.Health/Watch` streams open now.
    pub health_watches: u64,
}

/// How long [`GrpcServer::set_serving`] waits for the health service to report the change.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// A running `grpc-test-server`, killed on drop.
#[derive(Debug)]
pub struct GrpcServer {
    bin: PathBuf,
    opts: GrpcServerOpts,
    /// What the server printed after `listening `: `127.0.0.1:PORT` or `unix:/path`.
    addr: String,
    child: Option<Child>,
}

impl GrpcServer {
    /// The binary: `<repo>/target/release/grpc-test-server` (`cargo build --release -p testkit`).
    pub fn binary() -> PathBuf {
        crate::repo_root().join("target/release/grpc-test-server")
    }

    /// Starts [`GrpcServer::binary`] and returns once it listens (panics after 10 s).
    pub fn start(opts: GrpcServerOpts) -> GrpcServer {
        Self::start_bin(&Self::binary(), opts)
    }

    /// Starts `bin` (tests of this crate pass `env!("CARGO_BIN_EXE_grpc-test-server")`).
    pub fn start_bin(bin: &Path, opts: GrpcServerOpts) -> GrpcServer {
        Self::try_start_bin(bin, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`GrpcServer::start_bin`] that returns why the server did not start (e.g. its address
    /// is taken) instead of panicking, for callers that try another address.
    pub fn try_start_bin(bin: &Path, opts: GrpcServerOpts) -> Result<GrpcServer, String> {
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p testkit`",
            bin.display()
        );
        let mut server = GrpcServer {
            bin: bin.to_path_buf(),
            opts,
            addr: String::new(),
            child: None,
        };
        let listen = server.opts.listen.clone();
        server.try_launch(listen.as_deref().unwrap_or("127.0.0.1:0"))?;
        Ok(server)
    }

    fn launch(&mut self, listen: &str) {
        self.try_launch(listen).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_launch(&mut self, listen: &str) -> Result<(), String> {
        let mut child = Command::new(&self.bin)
            .args(self.opts.args(listen))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", self.bin.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        // Reads the `listening` line, then drains stdout until the server exits.
        thread::Builder::new()
            .name("grpc-test-server-stdout".into())
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let first = lines.next().and_then(Result::ok);
                let _ = tx.send(first);
                lines.map_while(Result::ok).for_each(drop);
            })
            .expect("spawning the stdout reader");
        let line = rx.recv_timeout(START_TIMEOUT);
        let addr = match &line {
            Ok(Some(line)) => line.strip_prefix("listening ").map(str::to_owned),
            _ => None,
        };
        let Some(addr) = addr else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "grpc-test-server --listen {listen} did not start within {START_TIMEOUT:?} \
                 (got {line:?}; its stderr is above)"
            ));
        };
        self.addr = addr;
        self.child = Some(child);
        Ok(())
    }

    /// `127.0.0.1:PORT`, or `unix:/path` with [`GrpcServerOpts::uds`]. Stays the same across
    /// [`GrpcServer::restart`].
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// The TCP port (panics for a unix socket server).
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or_else(|| panic!("{} has no TCP port", self.addr))
    }

    /// `http://127.0.0.1:PORT`, `https://127.0.0.1:PORT` with TLS, or `unix:/path`.
    pub fn url(&self) -> String {
        if self.addr.starts_with("unix:") {
            self.addr.clone()
        } else if self.opts.tls.is_some() {
            format!("https://{}", self.addr)
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The options the server runs with.
    pub fn opts(&self) -> &GrpcServerOpts {
        &self.opts
    }

    /// The server's pid (panics while it is stopped).
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("the server is stopped").id() as i32
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Kills the server (SIGKILL: connections are reset, no GOAWAY). No-op when stopped.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM: the server sends GOAWAY, stops accepting and exits once in-flight calls end
    /// (killed after 10 s). No-op when stopped.
    pub fn stop_graceful(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        crate::procfs::signal(child.id() as i32, libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Freezes the server (SIGSTOP): its sockets stay open and the kernel still acknowledges
    /// what arrives, but nothing answers, not even HTTP/2 pings. [`GrpcServer::resume`] undoes it.
    pub fn pause(&self) {
        // SAFETY: signalling our own child, which has not been waited for.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGSTOP) };
        assert_eq!(rc, 0, "SIGSTOP: {}", std::io::Error::last_os_error());
    }

    /// Lets a [`GrpcServer::pause`]d server run again (SIGCONT).
    pub fn resume(&self) {
        // SAFETY: as in `pause`.
        let rc = unsafe { libc::kill(self.pid(), libc::SIGCONT) };
        assert_eq!(rc, 0, "SIGCONT: {}", std::io::Error::last_os_error());
    }

    /// Stops the server if it runs ([`GrpcServer::stop`]) and starts it again with the same
    /// options on the same address (port or socket path).
    pub fn restart(&mut self) {
        self.stop();
        let previous = self.addr.clone();
        self.launch(&previous);
        assert_eq!(self.addr, previous, "the restarted server moved");
    }

    /// An endpoint for [`GrpcServer::url`], with TLS configured as a well-behaved client would
    /// (trusting `ca_pem`, server name `localhost`, the client certificate with mTLS).
    pub fn endpoint(&self) -> Endpoint {
        let mut endpoint = Endpoint::from_shared(self.url())
            .expect("a valid url")
            .connect_timeout(Duration::from_secs(5));
        if let Some(certs) = &self.opts.tls {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&certs.ca_pem))
                .domain_name("localhost");
            if self.opts.mtls {
                tls = tls.identity(Identity::from_pem(
                    &certs.client_cert_pem,
                    &certs.client_key_pem,
                ));
            }
            endpoint = endpoint.tls_config(tls).expect("client TLS config");
        }
        endpoint
    }

    /// A connected channel to the server (inside a tokio runtime).
    pub async fn channel(&self) -> Channel {
        self.endpoint()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {}: {e:?}", self.url()))
    }

    /// `(cancelled, completed)` handler invocations since the server (re)started, from
    /// `/zctest.Test/Stats` on a fresh connection.
    pub async fn stats_async(&self) -> (u64, u64) {
        let stats = self.server_stats_async().await;
        (stats.cancelled, stats.completed)
    }

    /// Everything the server counted since it (re)started, from `/zctest.Test/Stats` on a
    /// fresh connection.
    pub async fn server_stats_async(&self) -> ServerStats {
        let channel = self
            .endpoint()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {} for Stats: {e:?}", self.url()));
        let reply = TestClient::new(channel)
            .stats(StatsRequest {})
            .await
            .expect("/zctest.Test/Stats")
            .into_inner();
        ServerStats {
            cancelled: reply.cancelled,
            completed: reply.completed,
            received: reply.received,
            injected: reply.injected,
            health_watches: reply.health_watches,
        }
    }

    /// [`GrpcServer::server_stats_async`] for plain `#[test]` functions (see
    /// [`GrpcServer::stats`]).
    pub fn server_stats(&self) -> ServerStats {
        on_own_thread(self.server_stats_async())
    }

    /// Polls [`GrpcServer::server_stats_async`] until `pred` holds and returns those stats;
    /// panics with the last ones after `timeout`.
    pub async fn wait_server_stats_async(
        &self,
        timeout: Duration,
        pred: impl Fn(&ServerStats) -> bool,
    ) -> ServerStats {
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.server_stats_async().await;
            if pred(&stats) {
                return stats;
            }
            assert!(
                Instant::now() < deadline,
                "stats still {stats:?} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`GrpcServer::wait_server_stats_async`] for plain `#[test]` functions (see
    /// [`GrpcServer::stats`]).
    pub fn wait_server_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(&ServerStats) -> bool + Send,
    ) -> ServerStats {
        on_own_thread(self.wait_server_stats_async(timeout, pred))
    }

    /// What `grpc.health.v1.Health/Check` reports for `service` (`""`: the whole server), on
    /// a fresh connection: the status, or the call's error (NOT_FOUND for an unknown service,
    /// UNIMPLEMENTED with [`GrpcServerOpts::no_health`]).
    pub async fn health_async(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        let channel = self
            .endpoint()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connecting to {} for Health: {e:?}", self.url()));
        let reply = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner();
        Ok(reply.status())
    }

    /// Turns every status of the server's health service SERVING (`true`) or NOT_SERVING
    /// (SIGUSR2 / SIGUSR1), and returns once `Health/Check` reports it: the change is in effect
    /// for any client that looks after this. Panics after 5 s, and with
    /// [`GrpcServerOpts::no_health`].
    pub async fn set_serving_async(&self, serving: bool) {
        assert!(
            !self.opts.no_health,
            "set_serving on a server started with no_health"
        );
        let (signal, want) = if serving {
            (libc::SIGUSR2, ServingStatus::Serving)
        } else {
            (libc::SIGUSR1, ServingStatus::NotServing)
        };
        assert!(
            crate::procfs::signal(self.pid(), signal),
            "signalling the server: {}",
            std::io::Error::last_os_error()
        );
        let deadline = Instant::now() + HEALTH_TIMEOUT;
        loop {
            let now = self.health_async("").await;
            if matches!(&now, Ok(status) if *status == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health still {now:?}, not {want:?}, {HEALTH_TIMEOUT:?} after the signal"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// [`GrpcServer::set_serving_async`] for plain `#[test]` functions (see
    /// [`GrpcServer::stats`]).
    pub fn set_serving(&self, serving: bool) {
        on_own_thread(self.set_serving_async(serving))
    }

    /// [`GrpcServer::stats_async`] for plain `#[test]` functions, on a runtime of its own in a
    /// helper thread. Inside an async test use `stats_async`: blocking the test's runtime
    /// would also stop its client connections (a cancelled call's RST_STREAM never leaves).
    pub fn stats(&self) -> (u64, u64) {
        on_own_thread(self.stats_async())
    }

    /// Polls [`GrpcServer::stats_async`] until `pred(cancelled, completed)` holds and returns
    /// those stats; panics with the last ones after `timeout` (the server sees a cancellation a
    /// little after the client gave up).
    pub async fn wait_stats_async(
        &self,
        timeout: Duration,
        pred: impl Fn(u64, u64) -> bool,
    ) -> (u64, u64) {
        let deadline = Instant::now() + timeout;
        loop {
            let (cancelled, completed) = self.stats_async().await;
            if pred(cancelled, completed) {
                return (cancelled, completed);
            }
            assert!(
                Instant::now() < deadline,
                "stats still cancelled={cancelled} completed={completed} after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`GrpcServer::wait_stats_async`] for plain `#[test]` functions (see
    /// [`GrpcServer::stats`]).
    pub fn wait_stats(
        &self,
        timeout: Duration,
        pred: impl Fn(u64, u64) -> bool + Send,
    ) -> (u64, u64) {
        on_own_thread(self.wait_stats_async(timeout, pred))
    }
}

/// Runs `work` to its end on a current-thread runtime in a helper thread (so a caller inside
/// another runtime is not blocked on its own event loop).
fn on_own_thread<T: Send>(work: impl std::future::Future<Output = T> + Send) -> T {
    thread::scope(|scope| {
        scope
            .spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("starting a tokio runtime")
                    .block_on(work)
            })
            .join()
            .expect("the Stats thread panicked")
    })
}

impl Drop for GrpcServer {
    fn drop(&mut self) {
        self.stop();
        if let Some(path) = &self.opts.uds {
            let _ = std::fs::remove_file(path);
        }
    }
}
