//! The runtime's only door to C: `libffi_init` (the lua-resty-ffi entry point) and the functions
//! `lua/resty/grpc_zc/lib.lua` binds with LuaJIT FFI. Every export runs under `guard`: a panic is
//! logged and becomes an error code, never an unwind into nginx.
//!
//! Error codes (negative; see `grpc_zc_strerror`): arena errors as `ArenaError::code`, plus
//! [`E_BAD_ARGUMENT`].

use std::ffi::{c_char, c_int, CStr};
use std::ptr;

use crate::arena::{Handle, Stats};
use crate::config::Config;
use crate::log;
use crate::log::Origin;
use crate::queue::TaskQueue;
use crate::runtime::Instance;

mod proto;

/// Version of the C ABI below and of the descriptor layout; `lua/resty/grpc_zc/lib.lua` checks it.
/// 2: `grpc_zc_busy_polled_us`.
pub const ABI_VERSION: c_int = 2;

/// A NULL instance or handle pointer, or another unusable argument.
pub const E_BAD_ARGUMENT: c_int = -100;
/// A panic was caught (a bug): the operation did nothing.
pub const E_PANIC: c_int = -101;

/// [`crate::guard::guard`] for exports that run before (or without) an instance.
fn guard<T>(what: &str, on_panic: T, f: impl FnOnce() -> T) -> T {
    crate::guard::guard(&Origin::unknown(), what, on_panic, f)
}

/// lua-resty-ffi entry point: parses `cfg`, creates the instance (arena, poll thread).
/// Returns 0, or 1 for a bad cfg, 2 when the instance cannot start (logged: `src/log.rs`).
///
/// # Safety
/// `cfg` is NULL or a NUL-terminated string; `tq` is the host's task queue.
#[no_mangle]
pub unsafe extern "C" fn libffi_init(cfg: *const c_char, tq: *mut std::ffi::c_void) -> c_int {
    guard("libffi_init", 3, || {
        let text = if cfg.is_null() {
            String::new()
        } else {
            // SAFETY: the host passes a NUL-terminated string, valid during this call.
            unsafe { CStr::from_ptr(cfg) }
                .to_string_lossy()
                .into_owned()
        };
        let config = match Config::parse(&text) {
            Ok(c) => c,
            Err(e) => {
                log!(Error, Origin::unknown(), "{e}");
                return 1;
            }
        };
        // SAFETY: `tq` is the host's queue, polled only by the instance's poll thread.
        let Some(queue) = (unsafe { TaskQueue::new(tq) }) else {
            log!(Error, Origin::instance(&config.instance), "NULL task queue");
            return 2;
        };
        tune_malloc();
        let name = config.instance.clone();
        match Instance::start(config, queue) {
            Ok(_) => 0,
            Err(e) => {
                log!(Error, Origin::instance(&name), "{e}");
                2
            }
        }
    })
}

/// Tells glibc's malloc to keep freed memory for reuse (once per process). By default it hands
/// blocks of 128 KiB and more back to the kernel on free, so every call with a large message
/// (tonic's receive and send buffers) faulted its pages in again: measured 2-20 page faults per
/// 100 KiB call and up to 514 per 1 MiB call on the tokio thread, ~15 % of a 100 KiB call. With
/// blocks up to 16 MiB taken from the heap and the heap trimmed only above 64 MiB free, the
/// buffers are reused. This is process-wide (the nginx worker's own mallocs too); a worker keeps
/// at most 64 MiB of freed heap.
fn tune_malloc() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: mallopt only changes allocator parameters; these two are valid for glibc.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, 16 << 20);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 64 << 20);
        }
    });
}

/// The C ABI version (see [`ABI_VERSION`]).
#[no_mangle]
pub extern "C" fn grpc_zc_abi_version() -> c_int {
    ABI_VERSION
}

/// C declarations of the arena header, handle and stats types, for `ffi.cdef` (NUL-terminated,
/// static).
#[no_mangle]
pub extern "C" fn grpc_zc_cdef() -> *const c_char {
    static CDEF: std::sync::OnceLock<std::ffi::CString> = std::sync::OnceLock::new();
    guard("grpc_zc_cdef", ptr::null(), || {
        CDEF.get_or_init(|| {
            std::ffi::CString::new(crate::arena::ARENA_HEADER_CDEF).unwrap_or_default()
        })
        .as_ptr()
    })
}

/// The instance registered under `name` by `libffi_init`, or NULL. The pointer stays valid for
/// the life of the process.
///
/// # Safety
/// `name` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_instance(name: *const c_char) -> *const Instance {
    guard("grpc_zc_instance", ptr::null(), || {
        if name.is_null() {
            return ptr::null();
        }
        // SAFETY: NUL-terminated per the caller.
        let name = unsafe { CStr::from_ptr(name) }.to_string_lossy();
        match Instance::find(&name) {
            // Instances are never dropped (the registry holds them), so the pointer outlives
            // this Arc.
            Some(inst) => std::sync::Arc::as_ptr(&inst),
            None => ptr::null(),
        }
    })
}

/// Runs `f` on the instance behind `inst`, or returns [`E_BAD_ARGUMENT`] for NULL.
/// A panic in `f` is logged with the instance's name and becomes [`E_PANIC`].
fn with_instance(inst: *const Instance, what: &str, f: impl FnOnce(&Instance) -> c_int) -> c_int {
    if inst.is_null() {
        return E_BAD_ARGUMENT;
    }
    // SAFETY: non-NULL instance pointers come from `grpc_zc_instance`, and instances live
    // until the process exits.
    let inst = unsafe { &*inst };
    crate::guard::guard(&inst.origin(), what, E_PANIC, || f(inst))
}

/// Base address of the instance's arena mapping (the `ArenaHeader` is at offset 0), or NULL.
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_arena_base(inst: *const Instance) -> *mut u8 {
    guard("grpc_zc_arena_base", ptr::null_mut(), || {
        if inst.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: as in `with_instance`.
        unsafe { &*inst }.arena.base_ptr()
    })
}

/// Leases a request slot of at least `len` bytes for a new call and writes its handle to `out`.
/// 0 or a negative error code.
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_call_begin(
    inst: *const Instance,
    len: u32,
    out: *mut Handle,
) -> c_int {
    with_instance(inst, "grpc_zc_call_begin", |i| {
        if out.is_null() {
            return E_BAD_ARGUMENT;
        }
        match i.begin_call(len as usize) {
            Ok(h) => {
                // SAFETY: `out` is writable per the caller.
                unsafe { out.write(h) };
                0
            }
            Err(e) => e.code(),
        }
    })
}

/// Lua is done with a call. `posted` = 0 when the request never reached the queue;
/// `abandoned` = 1 when Lua stopped waiting (timeout, abort) rather than read the answer.
/// Frees whatever slots of the call are left.
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`; `req` is NULL or points to a handle.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_call_end(
    inst: *const Instance,
    req: *const Handle,
    posted: c_int,
    abandoned: c_int,
) -> c_int {
    with_instance(inst, "grpc_zc_call_end", |i| {
        if req.is_null() {
            return E_BAD_ARGUMENT;
        }
        // SAFETY: readable per the caller.
        let h = unsafe { req.read() };
        i.finish_call(&h, posted != 0, abandoned != 0);
        0
    })
}

/// Copies the arena's usage figures to `out`.
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_stats(inst: *const Instance, out: *mut Stats) -> c_int {
    with_instance(inst, "grpc_zc_stats", |i| {
        if out.is_null() {
            return E_BAD_ARGUMENT;
        }
        // SAFETY: writable per the caller.
        unsafe { out.write(i.stats()) };
        i32::try_from(i.calls_in_flight()).unwrap_or(i32::MAX)
    })
}

/// Cancels stream `id` (RST_STREAM CANCEL if it is still on the wire) and forgets it.
/// Synchronous and non-blocking, so Lua can call it from a finalizer. 1 if the stream was open,
/// 0 if unknown (already closed), or a negative error code.
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_stream_cancel(inst: *const Instance, id: u64) -> c_int {
    with_instance(inst, "grpc_zc_stream_cancel", |i| {
        c_int::from(i.cancel_stream(id))
    })
}

/// Streams open in the instance (started, not yet closed or cancelled).
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_streams_open(inst: *const Instance) -> c_int {
    with_instance(inst, "grpc_zc_streams_open", |i| {
        c_int::try_from(i.streams_open()).unwrap_or(c_int::MAX)
    })
}

/// Writes the microseconds the instance's poll thread has spent busy-polling (`busy_poll_us`)
/// to `*us`; returns 0, or an error code.
///
/// # Safety
/// `inst` is NULL or from `grpc_zc_instance`; `us` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_busy_polled_us(inst: *const Instance, us: *mut u64) -> c_int {
    with_instance(inst, "grpc_zc_busy_polled_us", |i| {
        if us.is_null() {
            return E_BAD_ARGUMENT;
        }
        // SAFETY: non-NULL and writable per the caller.
        unsafe { us.write(i.busy_polled_us()) };
        0
    })
}

/// Copies `len` bytes from `src` to `dst` like `memcpy`, avoiding its slow band on these
/// machines (see `copy`); `lua/resty/grpc_zc/lib.lua` uses it for large payloads.
///
/// # Safety
/// `src` is readable and `dst` writable for `len` bytes, and the ranges do not overlap.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_copy(dst: *mut u8, src: *const u8, len: usize) {
    if len == 0 || dst.is_null() || src.is_null() {
        return;
    }
    // SAFETY: per the caller.
    unsafe { crate::copy::copy_raw(dst, src, len) }
}

/// A static description of an error code.
#[no_mangle]
pub extern "C" fn grpc_zc_strerror(code: c_int) -> *const c_char {
    let s: &'static CStr = match code {
        0 => c"ok",
        E_BAD_ARGUMENT => c"bad argument",
        E_PANIC => c"internal error (panic)",
        proto::E_PROTO_COMPILE => c".proto files did not compile",
        c => match crate::arena::ArenaErrorKind::from_code(c) {
            Some(crate::arena::ArenaErrorKind::Exhausted) => c"arena exhausted",
            Some(crate::arena::ArenaErrorKind::TooLarge) => c"message larger than max_message",
            Some(crate::arena::ArenaErrorKind::StaleHandle) => c"stale arena handle",
            Some(crate::arena::ArenaErrorKind::BadHandle) => c"bad arena handle",
            Some(crate::arena::ArenaErrorKind::Config) => c"bad arena configuration",
            Some(_) => c"arena internal error",
            None => c"unknown error",
        },
    };
    s.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(code: c_int) -> &'static str {
        // SAFETY: grpc_zc_strerror returns a static NUL-terminated string for any code.
        unsafe { CStr::from_ptr(grpc_zc_strerror(code)) }
            .to_str()
            .unwrap()
    }

    #[test]
    fn every_code_this_library_returns_has_a_text() {
        assert_eq!(text(0), "ok");
        assert_eq!(text(E_BAD_ARGUMENT), "bad argument");
        assert_eq!(text(E_PANIC), "internal error (panic)");
        assert_eq!(text(proto::E_PROTO_COMPILE), ".proto files did not compile");
        let exhausted = crate::arena::ArenaErrorKind::Exhausted.code();
        assert_eq!(text(exhausted), "arena exhausted");
        assert_eq!(text(-12345), "unknown error");
    }
}
