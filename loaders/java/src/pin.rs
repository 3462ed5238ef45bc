//! Keeps this library loaded once it started the JVM: with `unpin = true`, `resty_ffi.lua`
//! dlcloses the handle after `__unload`, but the JVM's threads run this library's natives and
//! its abort hook for the rest of the worker's life.

use std::sync::Once;

use crate::log;

static PINNED: Once = Once::new();

/// Takes an extra, never released reference on this library (`RTLD_NODELETE`), once.
pub fn pin_self() {
    PINNED.call_once(|| {
        if let Err(e) = loader_common::pin::pin_self() {
            log::error(&format!(
                "resty_ffi_java: {e}; this library may be unloaded"
            ));
        }
    });
}
