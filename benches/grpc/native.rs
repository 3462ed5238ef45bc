//! The native side: tonic 0.14 clients of the same server, on a given tokio runtime.

use std::time::Instant;

use bytes::Bytes;
use testkit::grpc::pb::helloworld::{greeter_client::GreeterClient, HelloRequest};
use testkit::grpc::pb::zctest::{test_client::TestClient, EchoRequest};
use testkit::tonic::transport::Channel;
use testkit::{payload, GrpcServer};
use tokio::runtime::Runtime;

use crate::WARMUP;

/// The native client on one runtime, connected once.
pub struct Native {
    rt: Runtime,
    greeter: GreeterClient<Channel>,
    test: TestClient<Channel>,
}

impl Native {
    /// The two clients every comparison runs: on a current-thread runtime and on a default
    /// multi-thread runtime (a worker per CPU), in that order.
    pub fn both(server: &GrpcServer) -> (Native, Native) {
        let current = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        (
            Native::new(current, server),
            Native::new(Runtime::new().unwrap(), server),
        )
    }

    fn new(rt: Runtime, server: &GrpcServer) -> Native {
        let channel = rt.block_on(server.channel());
        Native {
            greeter: GreeterClient::new(channel.clone()),
            test: TestClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            rt,
        }
    }

    /// Seconds for `n` sequential SayHello calls with an empty name.
    pub fn hello(&self, n: usize) -> f64 {
        let mut client = self.greeter.clone();
        self.rt.block_on(async move {
            for _ in 0..WARMUP {
                client.say_hello(HelloRequest::default()).await.unwrap();
            }
            let t0 = Instant::now();
            for _ in 0..n {
                client.say_hello(HelloRequest::default()).await.unwrap();
            }
            t0.elapsed().as_secs_f64()
        })
    }

    /// Seconds for `n` sequential Unary echoes of a `size`-byte payload.
    pub fn echo(&self, size: usize, n: usize) -> f64 {
        let client = self.test.clone();
        let data = Bytes::from(payload(size, 1));
        self.rt.block_on(async move {
            let call = || {
                let req = EchoRequest {
                    payload: data.clone(),
                    ..Default::default()
                };
                let mut client = client.clone();
                async move {
                    let reply = client.unary(req).await.unwrap().into_inner();
                    assert_eq!(reply.payload.len(), size);
                }
            };
            for _ in 0..WARMUP {
                call().await;
            }
            let t0 = Instant::now();
            for _ in 0..n {
                call().await;
            }
            t0.elapsed().as_secs_f64()
        })
    }

    /// Seconds for `n` SayHello calls made by `c` tasks calling in a loop.
    pub fn concurrent(&self, c: usize, n: usize) -> f64 {
        let run = |each: usize, extra: usize| {
            let tasks: Vec<_> = (0..c)
                .map(|i| {
                    let mut client = self.greeter.clone();
                    let k = each + usize::from(i < extra);
                    self.rt.spawn(async move {
                        for _ in 0..k {
                            client.say_hello(HelloRequest::default()).await.unwrap();
                        }
                    })
                })
                .collect();
            self.rt.block_on(async {
                for t in tasks {
                    t.await.unwrap();
                }
            });
        };
        run(WARMUP.div_ceil(c), 0);
        let t0 = Instant::now();
        run(n / c, n % c);
        t0.elapsed().as_secs_f64()
    }
}
