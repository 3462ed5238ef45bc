//! `grpc-test-server` driven by a tonic client: every method of `zctest.Test`, metadata echo,
//! limits, cancellation accounting, TLS, mTLS, unix sockets and restarts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use testkit::grpc::pb::helloworld::greeter_client::GreeterClient;
use testkit::grpc::pb::helloworld::HelloRequest;
use testkit::grpc::pb::zctest::test_client::TestClient;
use testkit::grpc::pb::zctest::EchoRequest;
use testkit::{certs, GrpcServer, GrpcServerOpts};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request};

const BIN: &str = env!("CARGO_BIN_EXE_grpc-test-server");
const MIB: usize = 1024 * 1024;
const SECS5: Duration = Duration::from_secs(5);

fn start(opts: GrpcServerOpts) -> GrpcServer {
    GrpcServer::start_bin(BIN.as_ref(), opts)
}

/// A fresh directory under `target/t-grpc/`.
fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = testkit::repo_root().join(format!("target/t-grpc/{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn test_client(server: &GrpcServer) -> TestClient<tonic::transport::Channel> {
    TestClient::new(server.channel().await)
        .max_decoding_message_size(64 * MIB)
        .max_encoding_message_size(64 * MIB)
}

async fn hello(endpoint: Endpoint, name: &str) -> Result<String, String> {
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let reply = GreeterClient::new(channel)
        .say_hello(HelloRequest { name: name.into() })
        .await
        .map_err(|s| format!("{s:?}"))?;
    Ok(reply.into_inner().message)
}

fn echo(payload: &[u8]) -> EchoRequest {
    EchoRequest {
        payload: payload.to_vec().into(),
        ..Default::default()
    }
}

fn values(metadata: &MetadataMap, key: &str) -> Vec<String> {
    metadata
        .get_all(key)
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect()
}

fn binary_values(metadata: &MetadataMap, key: &str) -> Vec<Vec<u8>> {
    metadata
        .get_all_bin(key)
        .iter()
        .map(|v| v.to_bytes().unwrap().to_vec())
        .collect()
}

const BINARY: &[u8] = &[0, 1, 2, 0xff, 0xfe, b'\n', 0x80];

fn with_metadata<T>(message: T) -> Request<T> {
    let mut request = Request::new(message);
    let md = request.metadata_mut();
    md.insert("x-token", MetadataValue::from_static("abc"));
    md.append("x-multi", MetadataValue::from_static("one"));
    md.append("x-multi", MetadataValue::from_static("two"));
    md.insert_bin("x-blob-bin", MetadataValue::from_bytes(BINARY));
    md.insert("other", MetadataValue::from_static("not echoed"));
    request
}

#[test]
fn service_names() {
    use testkit::grpc::pb::helloworld::greeter_server::GreeterServer;
    use testkit::grpc::pb::zctest::test_server::TestServer;
    use testkit::grpc::{GreeterService, TestService};
    use tonic::server::NamedService;
    assert_eq!(GreeterServer::<GreeterService>::NAME, "helloworld.Greeter");
    assert_eq!(TestServer::<TestService>::NAME, "zctest.Test");
}

#[tokio::test]
async fn greeter_says_hello() {
    let server = start(GrpcServerOpts::default());
    assert!(server.addr().starts_with("127.0.0.1:"));
    assert_eq!(server.url(), format!("http://{}", server.addr()));
    assert_eq!(
        hello(server.endpoint(), "world").await.unwrap(),
        "Hello world"
    );
    // The blocking variant works inside a runtime too (no call of this runtime is in flight).
    assert_eq!(server.stats(), (0, 1));
}

#[tokio::test]
async fn unary_echoes_payload_pattern_and_metadata() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;

    let reply = client.unary(echo(b"ping")).await.unwrap().into_inner();
    assert_eq!((&reply.payload[..], reply.index), (&b"ping"[..], 0));

    let sized = EchoRequest {
        size: 1000,
        ..Default::default()
    };
    let reply = client.unary(sized).await.unwrap().into_inner();
    assert_eq!(reply.payload, testkit::payload(1000, 0));

    // tonic merges a unary call's trailers into its metadata, trailer values replacing header
    // values of the same key (server_stream_* below sees headers and trailers apart).
    let response = client.unary(with_metadata(echo(b"md"))).await.unwrap();
    let md = response.metadata();
    assert_eq!(values(md, "x-token"), ["abc"]);
    assert_eq!(values(md, "x-multi"), ["one", "two"]);
    assert_eq!(binary_values(md, "x-blob-bin"), [BINARY]);
    assert_eq!(values(md, "x-server"), ["zctest"]);
    assert_eq!(values(md, "x-trailer"), ["done"]);
    assert!(md.get("other").is_none());
}

#[tokio::test]
async fn unary_status_message_details_and_trailers_only_metadata() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;
    let details = vec![8u8, 0, 0xff, 0x10];
    let request = EchoRequest {
        status: Code::FailedPrecondition as i32,
        message: "déjà vu ✓ 失败".into(),
        details: details.clone().into(),
        ..Default::default()
    };
    let status = client.unary(with_metadata(request)).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(status.message(), "déjà vu ✓ 失败");
    assert_eq!(status.details(), &details[..]);
    // Trailers-Only: one header block, echoed once, with both markers.
    let md = status.metadata();
    assert_eq!(values(md, "x-token"), ["abc"]);
    assert_eq!(binary_values(md, "x-blob-bin"), [BINARY]);
    assert_eq!(values(md, "x-server"), ["zctest"]);
    assert_eq!(values(md, "x-trailer"), ["done"]);

    let unknown_code = EchoRequest {
        status: 99,
        ..Default::default()
    };
    let status = client.unary(unknown_code).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown);
}

#[tokio::test]
async fn four_mib_messages_pass_by_default() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;
    let big = testkit::payload(4 * MIB, 3);
    let reply = client.unary(echo(&big)).await.unwrap().into_inner();
    assert!(reply.payload == big);
    let sized = EchoRequest {
        size: (4 * MIB) as u32,
        ..Default::default()
    };
    let reply = client.unary(sized).await.unwrap().into_inner();
    assert_eq!(reply.payload.len(), 4 * MIB);
    // Over the default limit (4 MiB + 64 KiB) both ways.
    let status = client.unary(echo(&vec![7; 5 * MIB])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let too_big = EchoRequest {
        size: (5 * MIB) as u32,
        ..Default::default()
    };
    let status = client.unary(too_big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn max_recv_and_max_send_flags() {
    let server = start(GrpcServerOpts::default().max_recv(1024).max_send(2048));
    let mut client = test_client(&server).await;
    client.unary(echo(&[1; 1000])).await.unwrap();
    let status = client.unary(echo(&[1; 1100])).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let sized = |size| EchoRequest {
        size,
        ..Default::default()
    };
    client.unary(sized(2000)).await.unwrap();
    let status = client.unary(sized(3000)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test]
async fn server_stream_counts_sleeps_and_ends_with_status() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;
    let request = EchoRequest {
        count: 5,
        size: 100,
        sleep_ms: 10,
        ..Default::default()
    };
    let response = client.server_stream(with_metadata(request)).await.unwrap();
    assert_eq!(values(response.metadata(), "x-token"), ["abc"]);
    assert_eq!(values(response.metadata(), "x-multi"), ["one", "two"]);
    assert_eq!(binary_values(response.metadata(), "x-blob-bin"), [BINARY]);
    assert_eq!(values(response.metadata(), "x-server"), ["zctest"]);
    assert!(response.metadata().get("x-trailer").is_none());
    let mut stream = response.into_inner();
    let mut indexes = Vec::new();
    while let Some(reply) = stream.message().await.unwrap() {
        assert_eq!(reply.payload, testkit::payload(100, 0));
        indexes.push(reply.index);
    }
    assert_eq!(indexes, [0, 1, 2, 3, 4]);
    let trailers = stream.trailers().await.unwrap().expect("trailers");
    assert_eq!(values(&trailers, "x-token"), ["abc"]);
    assert_eq!(values(&trailers, "x-multi"), ["one", "two"]);
    assert_eq!(binary_values(&trailers, "x-blob-bin"), [BINARY]);
    assert!(trailers.get("x-server").is_none());
    assert_eq!(values(&trailers, "x-trailer"), ["done"]);

    let failing = EchoRequest {
        count: 3,
        payload: b"p".to_vec().into(),
        status: Code::Aborted as i32,
        message: "after three".into(),
        ..Default::default()
    };
    let mut stream = client.server_stream(failing).await.unwrap().into_inner();
    for index in 0..3 {
        let reply = stream.message().await.unwrap().unwrap();
        assert_eq!((&reply.payload[..], reply.index), (&b"p"[..], index));
    }
    let status = stream.message().await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::Aborted, "after three")
    );
    assert_eq!(server.wait_stats_async(SECS5, |_, d| d == 2).await, (0, 2));
}

#[tokio::test]
async fn client_stream_concatenates() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;
    let messages = vec![echo(b"ab"), echo(b""), echo(b"cde")];
    let reply = client
        .client_stream(tokio_stream::iter(messages))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((&reply.payload[..], reply.index), (&b"abcde"[..], 3));

    let last_fails = vec![
        echo(b"x"),
        EchoRequest {
            status: Code::DataLoss as i32,
            ..Default::default()
        },
    ];
    let status = client
        .client_stream(tokio_stream::iter(last_fails))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DataLoss);
}

#[tokio::test]
async fn bidi_echoes_each_message_before_the_next_is_sent() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;
    let (tx, rx) = mpsc::channel(1);
    let mut inbound = client
        .bidi(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    for i in 0..10u8 {
        tx.send(echo(&[i; 3])).await.unwrap();
        let reply = inbound.message().await.unwrap().unwrap();
        assert_eq!(
            (&reply.payload[..], reply.index),
            (&[i; 3][..], u32::from(i))
        );
    }
    drop(tx); // half-close
    assert!(inbound.message().await.unwrap().is_none());

    let (tx, rx) = mpsc::channel(1);
    let mut inbound = client
        .bidi(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(echo(b"a")).await.unwrap();
    inbound.message().await.unwrap().unwrap();
    tx.send(EchoRequest {
        status: Code::OutOfRange as i32,
        ..Default::default()
    })
    .await
    .unwrap();
    let status = inbound.message().await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(server.wait_stats_async(SECS5, |_, d| d == 2).await, (0, 2));
}

#[tokio::test]
async fn cancellations_are_counted() {
    let server = start(GrpcServerOpts::default());
    let mut client = test_client(&server).await;
    let slow = EchoRequest {
        sleep_ms: 10_000,
        ..Default::default()
    };
    // The client gives up (drops the call: RST_STREAM).
    let gave_up =
        tokio::time::timeout(Duration::from_millis(200), client.unary(slow.clone())).await;
    assert!(gave_up.is_err());
    assert_eq!(server.wait_stats_async(SECS5, |c, _| c == 1).await, (1, 0));

    // A deadline (grpc-timeout): the server drops the handler when it expires.
    let mut request = Request::new(slow);
    request.set_timeout(Duration::from_millis(200));
    let status = client.unary(request).await.unwrap_err();
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled),
        "{status:?}"
    );
    assert_eq!(server.wait_stats_async(SECS5, |c, _| c == 2).await, (2, 0));

    // A server stream dropped half-way.
    let endless = EchoRequest {
        count: 1000,
        sleep_ms: 20,
        ..Default::default()
    };
    let mut stream = client.server_stream(endless).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    drop(stream);
    assert_eq!(server.wait_stats_async(SECS5, |c, _| c == 3).await, (3, 0));

    client.unary(echo(b"done")).await.unwrap();
    assert_eq!(server.stats_async().await, (3, 1));
}

#[tokio::test]
async fn tls_and_wrong_ca() {
    let certs = certs(scratch("tls"));
    assert!(certs.server_key_path().exists() && certs.other_ca_path().exists());
    let server = start(GrpcServerOpts::default().tls(&certs));
    assert!(server.url().starts_with("https://127.0.0.1:"));
    assert_eq!(hello(server.endpoint(), "tls").await.unwrap(), "Hello tls");

    let wrong_ca = Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&certs.other_ca_pem))
                .domain_name("localhost"),
        )
        .unwrap();
    let err = hello(wrong_ca, "x").await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    let wrong_name = Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(&certs.ca_pem))
                .domain_name("example.com"),
        )
        .unwrap();
    let err = hello(wrong_name, "x").await.unwrap_err();
    assert!(err.contains("NotValidForName"), "{err}");

    let plaintext = Endpoint::from_shared(format!("http://{}", server.addr())).unwrap();
    assert!(hello(plaintext, "x").await.is_err());
}

#[tokio::test]
async fn mtls_requires_a_client_certificate_of_the_ca() {
    let certs = certs(scratch("mtls"));
    let server = start(GrpcServerOpts::default().mtls(&certs));
    assert_eq!(
        hello(server.endpoint(), "mtls").await.unwrap(),
        "Hello mtls"
    );
    assert_eq!(server.stats_async().await, (0, 1));

    let client_tls = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&certs.ca_pem))
            .domain_name("localhost")
    };
    let anonymous = Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(client_tls())
        .unwrap();
    assert!(hello(anonymous, "x").await.is_err());

    let foreign = Endpoint::from_shared(server.url())
        .unwrap()
        .tls_config(client_tls().identity(Identity::from_pem(
            &certs.other_client_cert_pem,
            &certs.other_client_key_pem,
        )))
        .unwrap();
    assert!(hello(foreign, "x").await.is_err());
    assert_eq!(server.stats_async().await, (0, 1));
}

#[tokio::test]
async fn unix_socket() {
    let path = scratch("uds").join("grpc.sock");
    let server = start(GrpcServerOpts::default().uds(&path));
    assert_eq!(server.addr(), format!("unix:{}", path.display()));
    assert_eq!(hello(server.endpoint(), "uds").await.unwrap(), "Hello uds");
    drop(server);
    assert!(!path.exists());
}

#[test]
fn restart_keeps_the_port_and_resets_stats() {
    let mut server = start(GrpcServerOpts::default());
    let addr = server.addr();
    let pid = server.pid();
    let rt = testkit::tokio::runtime::Runtime::new().unwrap();
    let channel = rt.block_on(server.channel());
    let call = |channel: tonic::transport::Channel| {
        rt.block_on(async move {
            TestClient::new(channel)
                .unary(echo(b"r"))
                .await
                .map(|r| r.into_inner().payload)
        })
    };
    call(channel.clone()).unwrap();
    assert_eq!(server.stats(), (0, 1));

    server.restart();
    assert_eq!(server.addr(), addr);
    assert_ne!(server.pid(), pid);
    assert_eq!(server.stats(), (0, 0));
    // The old channel reconnects (its first call may see the reset connection).
    let again = call(channel.clone()).or_else(|_| call(channel.clone()));
    assert_eq!(&again.unwrap()[..], b"r");

    server.stop();
    assert!(!server.is_running());
    assert!(call(channel.clone()).is_err());
    server.restart();
    assert_eq!(server.addr(), addr);
    let again = call(channel.clone()).or_else(|_| call(channel.clone()));
    assert!(again.is_ok());

    server.stop_graceful();
    assert!(!server.is_running());
}
