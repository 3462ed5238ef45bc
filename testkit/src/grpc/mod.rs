//! gRPC test servers for the integration tests: the `grpc-test-server` binary's services, the
//! process handle tests start it with, fleets of them for load balancing, test certificates,
//! and a misbehaving HTTP/2 peer.
//!
//! ```text
//!  test ── GrpcServer::start(opts) ──spawn──► target/release/grpc-test-server --listen 127.0.0.1:0
//!    │        waits for "listening 127.0.0.1:PORT" on its stdout (10 s)      │
//!    ├── addr() / url() / channel() ──────── gRPC over h2 (TLS, mTLS) ──────►├─ helloworld.Greeter
//!    ├── stats() / server_stats() ── /zctest.Test/Stats ────────────────────►├─ zctest.Test
//!    │                                                                       ├─ routeguide.RouteGuide
//!    │                                                                       ├─ server reflection (v1)
//!    ├── set_serving(bool) ── SIGUSR1/SIGUSR2, then Health/Check ───────────►├─ grpc.health.v1.Health
//!    │                                                                       ├─ EchoMetaLayer
//!    │                                                                       ├─ BackendNameLayer (x-backend)
//!    └── restart() / stop() ── SIGKILL, same port again ────────────────────►└─ InjectLayer (x-fail-*, x-attempt)
//!
//!  Fleet::start(n, ..) ── n GrpcServers "b0".. on 127.0.0.2.. and one port
//! ```
//!
//! Modules: [`pb`] (prost messages and tonic stubs generated from `testkit/proto/*.proto` by
//! `build.rs` with `protox`, into `OUT_DIR`), `service` (what each method does, [`serve`]),
//! [`routeguide`] (`routeguide.RouteGuide` and its generated feature database), `echo_meta`
//! (request `x-*` metadata echoed as response headers and trailers), `backend`
//! (`x-backend: NAME` on every response), `inject` (failures injected by request metadata, the
//! attempt number on every response), `health` (the standard health service and the switch
//! that turns all its statuses), `process` ([`GrpcServer`]), `fleet` ([`Fleet`]), `certs`
//! ([`certs()`], [`TestCerts`]), `rogue` ([`RogueServer`], an HTTP/2 peer that breaks the
//! protocol in the ways [`Misbehaviour`] lists).

mod backend;
mod certs;
mod echo_meta;
mod fleet;
mod health;
mod inject;
mod process;
mod rogue;
pub mod routeguide;
mod service;

pub use backend::{BackendName, BackendNameLayer};
pub use certs::{certs, TestCerts};
pub use echo_meta::{EchoMeta, EchoMetaLayer};
pub use fleet::Fleet;
pub use health::{health_service, HealthSwitch, WatchCount};
pub use inject::{Inject, InjectLayer};
pub use process::{GrpcServer, GrpcServerOpts, ServerStats};
pub use rogue::{Misbehaviour, RogueServer, GARBAGE, REPLY, STALL_PATH};
pub use routeguide::RouteGuideService;
pub use service::{
    serve, Counters, Echoes, GreeterService, Limits, Listen, Replies, ServeConfig, TestService,
    TlsPem, DEFAULT_MAX_MESSAGE,
};

/// Code generated from `testkit/proto/*.proto` (messages, `*_client` and `*_server` modules).
pub mod pb {
    /// `package helloworld`: `/helloworld.Greeter/SayHello`.
    pub mod helloworld {
        tonic::include_proto!("helloworld");
    }
    /// `package zctest`: `/zctest.Test/{Unary,ServerStream,ClientStream,Bidi,Stats}`.
    pub mod zctest {
        tonic::include_proto!("zctest");
    }
    /// `package routeguide`:
    /// `/routeguide.RouteGuide/{GetFeature,ListFeatures,RecordRoute,RouteChat}`.
    pub mod routeguide {
        tonic::include_proto!("routeguide");
    }
    /// The encoded `FileDescriptorSet` of all the above (for server reflection).
    pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"));
}
