//! `resty_grpc_zc`: a gRPC client runtime for nginx Lua that carries payloads in a shared arena.
//!
//! This crate is the runtime half of the project. It is loaded into every nginx worker by
//! `ngx.load_ffi("resty_grpc_zc", cfg)` (see the `host` workspace member, which provides
//! `ngx.load_ffi` on stock nginx) and serves requests that Lua posts through the
//! lua-resty-ffi task queue.
//!
//! ```text
//! nginx worker, main thread                         runtime threads (this crate)
//! ─────────────────────────                         ────────────────────────────
//! resty.grpc_zc (Lua) ── post descriptor ──► task queue ──► poll thread ──► tokio / tonic
//!        ▲                                                        │
//!        └──── eventfd handler ◄──── done list ◄──── respond ◄────┘
//! ```
//!
//! Status: the host, the reference echo runtime, the test harness and the transport benchmark
//! are in place; the arena, the wire format and the gRPC layer land with the following issues.
#![deny(unsafe_op_in_unsafe_fn)]

/// Version of this crate, as Cargo knows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod arena;
pub mod codec;
pub mod config;
pub mod ffi;
pub mod grpc;
pub mod proto;
pub mod queue;
pub mod runtime;
pub mod wire;
