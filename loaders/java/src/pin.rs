//! Keeps this library loaded once it started the JVM: with `unpin = true`, `resty_ffi.lua`
//! dlcloses the handle after `__unload`, but the JVM's threads run this library's natives and
//! its abort hook for the rest of the worker's life.

use std::ffi::c_void;
use std::sync::Once;

use crate::log;

static PINNED: Once = Once::new();

/// Takes an extra, never released reference on this library (`RTLD_NODELETE`), once.
pub fn pin_self() {
    PINNED.call_once(|| {
        let mut info = std::mem::MaybeUninit::<libc::Dl_info>::zeroed();
        let addr = pin_self as *const c_void;
        // SAFETY: dladdr only reads the loader's tables; `info` is writable.
        let found = unsafe { libc::dladdr(addr, info.as_mut_ptr()) } != 0;
        // SAFETY: dladdr filled `info` when it returned non-zero (zeroed otherwise).
        let info = unsafe { info.assume_init() };
        if !found || info.dli_fname.is_null() {
            log::error("resty_ffi_java: dladdr cannot name this library; it may be unloaded");
            return;
        }
        // SAFETY: `dli_fname` is the NUL-terminated path of a library that is loaded (us);
        // RTLD_NOLOAD only takes a reference on it.
        let handle = unsafe {
            libc::dlopen(
                info.dli_fname,
                libc::RTLD_NOW | libc::RTLD_NODELETE | libc::RTLD_NOLOAD,
            )
        };
        if handle.is_null() {
            log::error("resty_ffi_java: cannot pin this library; it may be unloaded");
        }
        // The handle is never closed: that reference is the pin.
    });
}
