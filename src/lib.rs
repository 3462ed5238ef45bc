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
//! Modules: `alloc` (the Rust allocator: mimalloc, with allocation counts for tests), `arena` (the shared mapping), `wire` (the FlatBuffers envelope), `queue` (the
//! lua-resty-ffi task queue), `runtime` (an instance and its poll thread), `grpc` and `codec`
//! (tonic over arena bytes), `proto` (.proto compilation for the Lua codec), `copy` (payload
//! copies that avoid a slow `memcpy` band), `cpu` (affinity and cgroup CPU quota), `timer` (a
//! microsecond timer for the event loop), `ffi` (the C door), `log` (the one logging path:
//! nginx's levels, to the host's log or stderr) and `guard` (the one panic guard).
#![deny(unsafe_op_in_unsafe_fn)]

/// Rust's allocations in this library go to mimalloc (`alloc`).
#[global_allocator]
static ALLOC: alloc::Alloc = alloc::Alloc;

/// Version of this crate, as Cargo knows it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub mod alloc;
pub mod arena;
pub mod codec;
pub mod config;
pub mod copy;
pub mod cpu;
pub mod ffi;
pub mod grpc;
mod guard;
pub mod log;
pub mod proto;
pub mod queue;
pub mod runtime;
pub mod timer;
pub mod wire;
