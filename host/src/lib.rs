//! `libresty_ffi.so`: a lua-resty-ffi host for stock nginx + lua-nginx-module.
//!
//! It gives nginx Lua `ngx.load_ffi(lib, cfg, opts)` (with `lua/resty_ffi.lua`) and gives
//! runtimes the three C functions of the lua-resty-ffi contract, without rebuilding nginx:
//!
//! ```text
//! main thread (Lua)                         runtime thread(s)
//! ─────────────────                         ─────────────────
//! obj:call(req) ─ post(copy of req) ─► Queue ─► ngx_http_lua_ffi_task_poll
//!     │ spin a few µs for the answer               ngx_http_lua_ffi_get_req
//!     │ (most fast calls end here)                 ngx_http_lua_ffi_respond(malloc'd rsp)
//!     ▼ otherwise wait on a semaphore ◄── post ◄── eventfd handler ◄── done list ◄┘
//! ```
//!
//! - `task`: one call's state machine (who owns the task when).
//! - `queue`: the bounded queue and its spinning poll.
//! - `wake`: the eventfd any thread signals to wake the main thread (a leaf).
//! - `log`: lines for nginx's error log from any thread, in nginx's format (on `wake`).
//! - `guard`: the panic guard every callback from C runs under (on `log`).
//! - `nginx`: the eventfd in nginx's event loop and its handler, the done list, semaphores,
//!   worker exit.
//! - `ffi`: every `extern "C"` export, each behind the guard.
//!
//! Imports go one way (no two files import each other): `ffi` uses `nginx`; both use `queue`,
//! `task`, `guard` and `log`; `queue` uses `task`; `guard` uses `log`; `log` and `nginx` use
//! `wake`.
#![deny(unsafe_op_in_unsafe_fn)]

mod ffi;
mod guard;
mod log;
mod nginx;
mod queue;
mod task;
mod wake;
