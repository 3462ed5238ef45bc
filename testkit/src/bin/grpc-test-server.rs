//! `grpc-test-server`: serves `helloworld.Greeter`, `zctest.Test`, `routeguide.RouteGuide` and
//! gRPC server reflection (see `testkit::grpc`) for the integration tests and benchmarks.
//!
//! ```text
//! grpc-test-server [--listen ADDR | --uds PATH]
//!                  [--tls-cert PEM --tls-key PEM [--client-ca PEM]]
//!                  [--max-recv BYTES] [--max-send BYTES]
//!                  [--threads N] [--no-echo-meta] [--no-gzip-replies]
//!                  [--name NAME] [--delay-ms N] [--no-health]
//! ```
//!
//! `--threads`: tokio worker threads (default 2); `0` runs everything on the main thread
//! (a current-thread runtime). `--no-echo-meta` leaves out the metadata-echo layer (for
//! measuring what it costs; tests rely on it). `--no-gzip-replies`: `zctest.Test` replies are
//! never compressed, even to clients that accept gzip (benchmarks).
//!
//! `--name NAME`: every response carries `x-backend: NAME` (which backend of a fleet
//! answered). `--delay-ms N`: `zctest.Test/Unary` and `helloworld.Greeter/SayHello` wait N ms
//! before answering, on top of the request's `sleep_ms` (a slow backend). The health service
//! `grpc.health.v1.Health` reports `""` and every service SERVING; SIGUSR1 turns them all
//! NOT_SERVING, SIGUSR2 SERVING again (logged on stderr once in effect). `--no-health`: no
//! health service (its calls answer UNIMPLEMENTED; the two signals are then ignored).
//! Failure injection by request metadata (`x-fail-until-attempt`): see `testkit::grpc`'s
//! `inject` module.
//!
//! Prints `listening 127.0.0.1:PORT` (or `listening unix:/path`) on stdout once it accepts.
//! SIGTERM or SIGINT: graceful shutdown (GOAWAY, in-flight calls drain).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use testkit::grpc::{serve, Counters, HealthSwitch, Listen, ServeConfig, TlsPem};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: grpc-test-server [--listen ADDR | --uds PATH] \
[--tls-cert PEM --tls-key PEM [--client-ca PEM]] [--max-recv BYTES] [--max-send BYTES] \
[--threads N] [--no-echo-meta] [--no-gzip-replies] [--name NAME] [--delay-ms N] [--no-health]";

/// Tokio worker threads unless `--threads` says otherwise.
const DEFAULT_THREADS: usize = 2;

/// What `main` runs: the server configuration and its runtime's thread count.
struct Args {
    config: ServeConfig,
    threads: usize,
}

fn read_pem(path: &str) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("reading {path}: {e}"))
}

fn parse_args() -> Result<Args, String> {
    let mut listen = Listen::Tcp(SocketAddr::from(([127, 0, 0, 1], 0)));
    let (mut cert, mut key, mut client_ca) = (None, None, None);
    let mut config = ServeConfig::new(listen.clone());
    let mut threads = DEFAULT_THREADS;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--help" | "-h" => return Err(USAGE.to_owned()),
            "--no-echo-meta" => {
                config.echo_meta = false;
                continue;
            }
            "--no-gzip-replies" => {
                config.gzip_replies = false;
                continue;
            }
            "--no-health" => {
                config.health = None;
                continue;
            }
            _ => {}
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let size = |v: &str| {
            v.parse::<usize>()
                .map_err(|e| format!("{flag} {v}: {e}\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => {
                let addr = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e}"))?;
                listen = Listen::Tcp(addr);
            }
            "--uds" => listen = Listen::Unix(PathBuf::from(value)),
            "--tls-cert" => cert = Some(read_pem(&value)?),
            "--tls-key" => key = Some(read_pem(&value)?),
            "--client-ca" => client_ca = Some(read_pem(&value)?),
            "--max-recv" => config.limits.max_recv = size(&value)?,
            "--max-send" => config.limits.max_send = size(&value)?,
            "--threads" => threads = size(&value)?,
            "--name" => config.name = Some(value),
            "--delay-ms" => config.delay = Duration::from_millis(size(&value)? as u64),
            _ => return Err(format!("unknown flag {flag}\n{USAGE}")),
        }
    }
    config.listen = listen;
    config.tls = match (cert, key, client_ca) {
        (Some(cert), Some(key), client_ca) => Some(TlsPem {
            cert,
            key,
            client_ca,
        }),
        (None, None, None) => None,
        _ => {
            return Err(format!(
                "--tls-cert and --tls-key go together (--client-ca needs both)\n{USAGE}"
            ))
        }
    };
    Ok(Args { config, threads })
}

async fn shutdown_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        eprintln!("grpc-test-server: cannot install signal handlers; SIGTERM kills");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Follows SIGUSR1 (NOT_SERVING) and SIGUSR2 (SERVING) with `health` (`None`: the signals are
/// only caught, so that they do not kill a server without health). The handlers are installed
/// before this returns, hence before the server says it listens.
fn follow_health_signals(health: Option<HealthSwitch>) {
    let (Ok(mut usr1), Ok(mut usr2)) = (
        signal(SignalKind::user_defined1()),
        signal(SignalKind::user_defined2()),
    ) else {
        eprintln!("grpc-test-server: cannot install SIGUSR1/SIGUSR2 handlers");
        return;
    };
    tokio::spawn(async move {
        loop {
            let serving = tokio::select! {
                _ = usr1.recv() => false,
                _ = usr2.recv() => true,
            };
            if let Some(health) = &health {
                health.set_serving(serving);
            }
        }
    });
}

fn main() -> ExitCode {
    let Args { config, threads } = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let mut builder = if threads == 0 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    let runtime = builder
        .enable_all()
        .build()
        .expect("starting the tokio runtime");
    let ready = |addr: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening {addr}");
        let _ = out.flush();
    };
    let served = runtime.block_on(async {
        follow_health_signals(config.health.clone());
        serve(
            config,
            Arc::new(Counters::default()),
            ready,
            shutdown_signal(),
        )
        .await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("grpc-test-server: {e}");
            ExitCode::FAILURE
        }
    }
}
