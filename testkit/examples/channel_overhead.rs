//! How much tonic's `Channel` (tower buffer task, reconnect and origin layers) costs over a bare
//! hyper HTTP/2 connection, under the same generated client: 64 calls in flight on one
//! current-thread runtime against `grpc-test-server --threads 0`, rounds interleaved, wall time
//! and this thread's CPU per call. The runtime's calls go through a `Channel`; this measures
//! what a leaner path could save (docs/benchmarks.md, "Checked on 2026-11-25 evening").
//!
//! `cargo run --release -p testkit --example channel_overhead`
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use testkit::grpc::pb::helloworld::{greeter_client::GreeterClient, HelloRequest};
use testkit::tonic::body::Body;
use testkit::{GrpcServer, GrpcServerOpts};

/// One HTTP/2 connection, no buffer task and no layers.
#[derive(Clone)]
struct Raw(hyper::client::conn::http2::SendRequest<Body>);

impl tower_service::Service<http::Request<Body>> for Raw {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, hyper::Error>> + Send + 'static>>;
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), hyper::Error>> {
        self.0.poll_ready(cx)
    }
    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        Box::pin(self.0.send_request(req))
    }
}

fn thread_cpu() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes one timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

async fn run<T>(client: GreeterClient<T>, inflight: usize, per: usize)
where
    T: testkit::tonic::client::GrpcService<Body> + Clone + Send + 'static,
    T::ResponseBody: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as http_body::Body>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    T::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T::Future: Send,
{
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..inflight {
        let mut c = client.clone();
        set.spawn_local(async move {
            for _ in 0..per {
                c.say_hello(HelloRequest {
                    name: String::new(),
                })
                .await
                .unwrap();
            }
        });
    }
    while set.join_next().await.is_some() {}
}

fn main() {
    let server = GrpcServer::start(GrpcServerOpts::default().threads(0).no_gzip_replies());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    let addr = server.addr();
    let (chan, raw) = local.block_on(&rt, async {
        let chan = server.channel().await;
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tcp),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        (chan, send)
    });
    let origin: http::Uri = format!("http://{addr}").parse().unwrap();
    let inflight = 64;
    let per = 500;
    for round in 0..6 {
        for which in ["channel", "raw"] {
            let t0 = Instant::now();
            let c0 = thread_cpu();
            local.block_on(&rt, async {
                if which == "channel" {
                    run(GreeterClient::new(chan.clone()), inflight, per).await
                } else {
                    run(
                        GreeterClient::with_origin(Raw(raw.clone()), origin.clone()),
                        inflight,
                        per,
                    )
                    .await
                }
            });
            let n = (inflight * per) as f64;
            println!(
                "round {round} {which:8} {:6.1} us/call wall {:6.2} us/call client CPU",
                t0.elapsed().as_secs_f64() * 1e6 / n,
                (thread_cpu() - c0) * 1e6 / n
            );
        }
    }
}
