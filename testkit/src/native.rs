//! The native yardstick: tonic 0.14 clients of the gRPC test server on a given tokio runtime,
//! the side the benchmarks (`benches/grpc`, `benches/cpu`) and the budget's native pass
//! (`grpc-native-client`) compare the Lua path with.

use std::time::Instant;

use bytes::Bytes;
use tokio::runtime::Runtime;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::pb::helloworld::{greeter_client::GreeterClient, HelloRequest};
use crate::grpc::pb::zctest::{test_client::TestClient, EchoRequest};
use crate::{payload, GrpcServer};

/// The native client on one runtime, connected once; every timed run is preceded by `warmup`
/// untimed calls (rounded up to whole batches in flight by [`Native::concurrent`]).
pub struct Native {
    rt: Runtime,
    greeter: GreeterClient<Channel>,
    test: TestClient<Channel>,
    warmup: usize,
}

/// A current-thread runtime, the kind `native_ct` runs on.
pub fn current_thread() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("starting a current-thread runtime")
}

impl Native {
    /// The two clients every comparison runs: on a current-thread runtime and on a default
    /// multi-thread runtime (a worker per CPU), in that order.
    pub fn both(server: &GrpcServer, warmup: usize) -> (Native, Native) {
        let multi = Runtime::new().expect("starting a multi-thread runtime");
        (
            Native::over(current_thread(), server, warmup),
            Native::over(multi, server, warmup),
        )
    }

    /// A client of `server` (TLS as it serves) on `rt`.
    pub fn over(rt: Runtime, server: &GrpcServer, warmup: usize) -> Native {
        let channel = rt.block_on(server.channel());
        Native::new(rt, channel, warmup)
    }

    /// A plaintext client of `host:port` on `rt`.
    pub fn connect(rt: Runtime, addr: &str, warmup: usize) -> Native {
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap_or_else(|e| panic!("target {addr}: {e}"));
        let channel = rt
            .block_on(endpoint.connect())
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e:?}"));
        Native::new(rt, channel, warmup)
    }

    fn new(rt: Runtime, channel: Channel, warmup: usize) -> Native {
        Native {
            greeter: GreeterClient::new(channel.clone()),
            test: TestClient::new(channel)
                .max_decoding_message_size(64 << 20)
                .max_encoding_message_size(64 << 20),
            rt,
            warmup,
        }
    }

    /// Seconds for `n` sequential SayHello calls with an empty name.
    pub fn hello(&self, n: usize) -> f64 {
        let mut client = self.greeter.clone();
        let warmup = self.warmup;
        self.rt.block_on(async move {
            for _ in 0..warmup {
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
        let warmup = self.warmup;
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
            for _ in 0..warmup {
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
        run(self.warmup.div_ceil(c), 0);
        let t0 = Instant::now();
        run(n / c, n % c);
        t0.elapsed().as_secs_f64()
    }
}
