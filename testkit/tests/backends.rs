//! The test server as a load-balancing backend: `--name` (`x-backend`), `--delay-ms`, failure
//! injection by metadata (`x-fail-until-attempt`, `x-attempt`, pushback), the health service
//! and its switch, the extended Stats, and `Fleet` (servers on one port of 127.0.0.2, .3, ...).

use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use testkit::grpc::pb::helloworld::greeter_client::GreeterClient;
use testkit::grpc::pb::helloworld::HelloRequest;
use testkit::grpc::pb::zctest::test_client::TestClient;
use testkit::grpc::pb::zctest::EchoRequest;
use testkit::tonic_health::pb::health_check_response::ServingStatus;
use testkit::tonic_health::pb::health_client::HealthClient;
use testkit::tonic_health::pb::HealthCheckRequest;
use testkit::{Fleet, GrpcServer, GrpcServerOpts, ServerStats};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::Channel;
use tonic::{Code, Request};

const BIN: &str = env!("CARGO_BIN_EXE_grpc-test-server");
const SECS5: Duration = Duration::from_secs(5);

fn start(opts: GrpcServerOpts) -> GrpcServer {
    GrpcServer::start_bin(BIN.as_ref(), opts)
}

fn value(metadata: &MetadataMap, key: &str) -> Option<String> {
    metadata.get(key).map(|v| v.to_str().unwrap().to_owned())
}

fn echo(payload: &'static [u8]) -> EchoRequest {
    EchoRequest {
        payload: Bytes::from_static(payload),
        ..Default::default()
    }
}

/// A Unary request carrying these metadata entries.
fn unary_with(entries: &[(&'static str, &str)]) -> Request<EchoRequest> {
    let mut request = Request::new(echo(b"hi"));
    for (key, value) in entries {
        request
            .metadata_mut()
            .insert(*key, MetadataValue::try_from(*value).unwrap());
    }
    request
}

#[tokio::test]
async fn name_header_on_every_service_and_delay_on_unary_and_say_hello() {
    let server = start(GrpcServerOpts::default().name("alpha").delay_ms(200));
    let channel = server.channel().await;

    let started = Instant::now();
    let reply = TestClient::new(channel.clone())
        .unary(echo(b"x"))
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        value(reply.metadata(), "x-backend").as_deref(),
        Some("alpha")
    );

    let started = Instant::now();
    let reply = GreeterClient::new(channel.clone())
        .say_hello(HelloRequest { name: "a".into() })
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        value(reply.metadata(), "x-backend").as_deref(),
        Some("alpha")
    );

    // Not delayed, still named: Stats, health, and an error reply (Trailers-Only).
    let started = Instant::now();
    let reply = TestClient::new(channel.clone())
        .stats(testkit::grpc::pb::zctest::StatsRequest {})
        .await
        .unwrap();
    assert_eq!(
        value(reply.metadata(), "x-backend").as_deref(),
        Some("alpha")
    );
    let reply = HealthClient::new(channel.clone())
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(
        value(reply.metadata(), "x-backend").as_deref(),
        Some("alpha")
    );
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "{:?}",
        started.elapsed()
    );
    let status = TestClient::new(channel)
        .unary(EchoRequest {
            status: Code::NotFound as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        value(status.metadata(), "x-backend").as_deref(),
        Some("alpha")
    );

    // Without --name there is no header.
    let plain = start(GrpcServerOpts::default());
    let reply = TestClient::new(plain.channel().await)
        .unary(echo(b"x"))
        .await
        .unwrap();
    assert_eq!(value(reply.metadata(), "x-backend"), None);
}

#[tokio::test]
async fn injected_failures_until_the_attempt_with_pushback_and_attempt_headers() {
    let server = start(GrpcServerOpts::default().name("b"));
    let mut client = TestClient::new(server.channel().await);
    let fail = [("x-fail-until-attempt", "2"), ("x-pushback-ms", "40")];

    // Attempt 0 (no grpc-previous-rpc-attempts) and attempt 1 fail without the handler.
    for attempt in ["", "1"] {
        let mut entries = fail.to_vec();
        if !attempt.is_empty() {
            entries.push(("grpc-previous-rpc-attempts", attempt));
        }
        let status = client.unary(unary_with(&entries)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert_eq!(status.message(), "injected failure");
        let md = status.metadata();
        let want = if attempt.is_empty() { "0" } else { attempt };
        assert_eq!(value(md, "x-attempt").as_deref(), Some(want));
        assert_eq!(value(md, "grpc-retry-pushback-ms").as_deref(), Some("40"));
        assert_eq!(value(md, "x-backend").as_deref(), Some("b"));
    }

    // Attempt 2 reaches the handler.
    let mut entries = fail.to_vec();
    entries.push(("grpc-previous-rpc-attempts", "2"));
    let reply = client.unary(unary_with(&entries)).await.unwrap();
    assert_eq!(&reply.get_ref().payload[..], b"hi");
    assert_eq!(value(reply.metadata(), "x-attempt").as_deref(), Some("2"));
    assert_eq!(value(reply.metadata(), "grpc-retry-pushback-ms"), None);

    // Another code, no pushback; and a streaming method is injected too.
    let status = client
        .unary(unary_with(&[
            ("x-fail-until-attempt", "1"),
            ("x-fail-code", "8"),
        ]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(value(status.metadata(), "grpc-retry-pushback-ms"), None);
    let mut request = Request::new(echo(b"s"));
    request
        .metadata_mut()
        .insert("x-fail-until-attempt", MetadataValue::from_static("1"));
    let status = client.server_stream(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // 5 calls reached the server, 4 injected, 1 handler ran; Stats itself is not counted.
    let stats = server.server_stats_async().await;
    assert_eq!(
        stats,
        ServerStats {
            cancelled: 0,
            completed: 1,
            received: 5,
            injected: 4,
            health_watches: 0,
        }
    );
}

/// The injected reply on the wire: HTTP 200, gRPC content type, one HEADERS frame that ends
/// the stream (Trailers-Only) with the status, pushback and attempt in it.
#[tokio::test]
async fn an_injected_failure_is_trailers_only() {
    let server = start(GrpcServerOpts::default());
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = http::Request::post(format!("http://{}/zctest.Test/Unary", server.addr()))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-previous-rpc-attempts", "3")
        .header("x-fail-until-attempt", "4")
        .header("x-fail-code", "14")
        .header("x-pushback-ms", "0")
        .body(tonic::body::Body::empty())
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    use http_body::Body as _;
    assert_eq!(response.status(), 200);
    assert!(response.body().is_end_stream(), "not Trailers-Only");
    let headers = response.headers();
    let header = |name: &str| headers.get(name).map(|v| v.to_str().unwrap().to_owned());
    assert_eq!(header("content-type").as_deref(), Some("application/grpc"));
    assert_eq!(header("grpc-status").as_deref(), Some("14"));
    assert_eq!(
        header("grpc-message").as_deref(),
        Some("injected%20failure")
    );
    assert_eq!(header("grpc-retry-pushback-ms").as_deref(), Some("0"));
    assert_eq!(header("x-attempt").as_deref(), Some("3"));
}

async fn check(channel: &Channel, service: &str) -> ServingStatus {
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

#[tokio::test]
async fn health_serving_not_serving_watch_and_no_health() {
    let server = start(GrpcServerOpts::default());
    let channel = server.channel().await;
    for service in [
        "",
        "zctest.Test",
        "helloworld.Greeter",
        "routeguide.RouteGuide",
    ] {
        assert_eq!(
            check(&channel, service).await,
            ServingStatus::Serving,
            "{service}"
        );
    }
    let unknown = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "nope.Nope".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    server
        .wait_server_stats_async(SECS5, |s| s.health_watches == 1)
        .await;

    server.set_serving_async(false).await;
    for service in ["", "zctest.Test", "helloworld.Greeter"] {
        assert_eq!(
            check(&channel, service).await,
            ServingStatus::NotServing,
            "{service}"
        );
    }
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    // NOT_SERVING is advisory: calls are still answered.
    TestClient::new(channel.clone())
        .unary(echo(b"x"))
        .await
        .unwrap();

    server.set_serving_async(true).await;
    assert_eq!(check(&channel, "zctest.Test").await, ServingStatus::Serving);
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::Serving);

    drop(watch);
    server
        .wait_server_stats_async(SECS5, |s| s.health_watches == 0)
        .await;
    // Health calls are not counted as received; the one Unary is.
    assert_eq!(server.server_stats_async().await.received, 1);

    let bare = start(GrpcServerOpts::default().no_health());
    let status = HealthClient::new(bare.channel().await)
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    // The health signals do not kill a server without health.
    assert!(testkit::procfs::signal(bare.pid(), libc::SIGUSR1));
    let reply = TestClient::new(bare.channel().await)
        .unary(echo(b"x"))
        .await;
    assert!(reply.is_ok(), "{reply:?}");
}

async fn backend_of(addr: &str) -> String {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(SECS5)
        .connect()
        .await
        .unwrap_or_else(|e| panic!("connecting to {addr}: {e:?}"));
    let reply = TestClient::new(channel).unary(echo(b"x")).await.unwrap();
    value(reply.metadata(), "x-backend").unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fleet_of_three_on_one_port() {
    let mut fleet = Fleet::start_bin(BIN.as_ref(), 3, |opts| opts.delay_ms(1));
    let port = fleet.port();
    assert_eq!(fleet.len(), 3);
    for i in 0..3 {
        assert_eq!(fleet.addr(i), format!("127.0.0.{}:{port}", i + 2));
        assert_eq!(fleet[i].addr(), fleet.addr(i));
        assert_eq!(fleet.ip(i).to_string(), format!("127.0.0.{}", i + 2));
        assert_eq!(backend_of(&fleet.addr(i)).await, format!("b{i}"));
    }
    assert_eq!(
        fleet.ipv4_target(),
        format!("ipv4:127.0.0.2:{port},127.0.0.3:{port},127.0.0.4:{port}")
    );
    for i in 0..3 {
        assert_eq!(fleet.stats_async(i).await.received, 1, "b{i}");
    }

    fleet.kill9(1);
    assert!(!fleet[1].is_running());
    let refused = Channel::from_shared(format!("http://{}", fleet.addr(1)))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err(), "b1 still accepts after SIGKILL");
    fleet.restart(1);
    assert_eq!(backend_of(&fleet.addr(1)).await, "b1");
    // A fresh process: its counters start again.
    assert_eq!(fleet.stats_async(1).await.received, 1);

    let i = fleet.add();
    assert_eq!(i, 3);
    assert_eq!(fleet.addr(3), format!("127.0.0.5:{port}"));
    assert_eq!(backend_of(&fleet.addr(3)).await, "b3");
    assert!(fleet.ipv4_target().ends_with(&format!(",127.0.0.5:{port}")));
}
