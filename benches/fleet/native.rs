//! The native side: tonic 0.14 on a current-thread runtime, a plain `Channel` to one backend
//! and `Channel::balance_list` over all of them (tower's power-of-two-choices balancer).

use std::time::Instant;

use bytes::Bytes;
use testkit::grpc::pb::zctest::{test_client::TestClient, EchoRequest};
use testkit::grpc::Fleet;
use testkit::tonic::transport::Channel;
use tokio::runtime::Runtime;

use crate::{PAYLOAD, WARMUP};

/// Both native clients on one runtime.
pub struct Native {
    rt: Runtime,
    pub one: TestClient<Channel>,
    pub balanced: TestClient<Channel>,
}

impl Native {
    /// Connects `one` to backend 0 and `balanced` to every backend of `fleet`.
    pub fn new(fleet: &Fleet) -> Native {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let one = rt.block_on(fleet[0].channel());
        // The balancer spawns its worker: inside the runtime.
        let balanced = {
            let _in_rt = rt.enter();
            Channel::balance_list((0..fleet.len()).map(|i| fleet[i].endpoint()))
        };
        Native {
            one: TestClient::new(one),
            balanced: TestClient::new(balanced),
            rt,
        }
    }

    /// Seconds for `n` Unary calls made by `c` tasks calling in a loop on `client` (after
    /// [`WARMUP`] untimed ones).
    pub fn burst(&self, client: &TestClient<Channel>, c: usize, n: usize) -> f64 {
        let run = |n: usize| {
            let tasks: Vec<_> = (0..c)
                .map(|i| {
                    let mut client = client.clone();
                    let k = n / c + usize::from(i < n % c);
                    self.rt.spawn(async move {
                        for _ in 0..k {
                            let req = EchoRequest {
                                payload: Bytes::from_static(PAYLOAD.as_bytes()),
                                ..Default::default()
                            };
                            client.unary(req).await.unwrap();
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
        run(WARMUP);
        let t0 = Instant::now();
        run(n);
        t0.elapsed().as_secs_f64()
    }
}
