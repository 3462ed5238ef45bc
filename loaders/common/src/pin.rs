//! Keeps a loader's library, and the runtime library it embeds, loaded for the worker's life.
//!
//! With `unpin = true`, `resty_ffi.lua` dlcloses a loader after `__unload`, but an embedded
//! interpreter or VM cannot be unloaded: its threads run the loader's code (natives, hooks,
//! callbacks) until the worker exits. A pin is one more reference on an object that is already
//! loaded (`RTLD_NOLOAD | RTLD_NODELETE`), never released. Each loader's cdylib links its own
//! copy of this crate, so [`pin_self`] pins the library it is called from.
//!
//! Written against `dladdr`/`dlopen` by hand: libloading has no `dladdr` (naming the library
//! an address is in) and its handles close when dropped, and the few calls are the whole job.

use std::ffi::{c_void, CStr, CString};

/// A handle taken by a pin; never closed (that reference is the pin).
#[derive(Debug, Clone, Copy)]
pub struct Pinned(*mut c_void);

impl Pinned {
    /// The name of the library that defines `symbol`: the pinned one or one of its
    /// dependencies.
    pub fn library_of(self, symbol: &CStr) -> Result<CString, String> {
        // SAFETY: the handle is live (never closed); `symbol` is NUL-terminated.
        let sym = unsafe { libc::dlsym(self.0, symbol.as_ptr()) };
        if sym.is_null() {
            return Err(format!(
                "{} not found: {}",
                symbol.to_string_lossy(),
                dlerror()
            ));
        }
        library_of(sym)
    }
}

/// Pins the library this code is linked into.
pub fn pin_self() -> Result<Pinned, String> {
    pin_loaded(&library_of(pin_self as *const c_void)?, false)
}

/// Pins the loaded library `path` (a path as the loader names it, or a soname), adding its
/// symbols to the global scope when `global` (so objects it loads later find them). Fails
/// when it is not loaded.
pub fn pin_loaded(path: &CStr, global: bool) -> Result<Pinned, String> {
    let mut flags = libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE;
    if global {
        flags |= libc::RTLD_GLOBAL;
    }
    // SAFETY: `path` is NUL-terminated; with RTLD_NOLOAD dlopen loads nothing, it only takes
    // a reference on an object already loaded.
    let handle = unsafe { libc::dlopen(path.as_ptr(), flags) };
    if handle.is_null() {
        return Err(format!(
            "cannot pin {}: {}",
            path.to_string_lossy(),
            dlerror()
        ));
    }
    Ok(Pinned(handle))
}

/// The name of the loaded library that holds `addr`.
fn library_of(addr: *const c_void) -> Result<CString, String> {
    // SAFETY: an all-zero Dl_info is valid storage for dladdr to fill.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables; `info` is a valid out-pointer.
    if unsafe { libc::dladdr(addr, &mut info) } == 0 || info.dli_fname.is_null() {
        return Err("dladdr cannot name a loaded library".to_owned());
    }
    // SAFETY: dli_fname points at the loader's NUL-terminated name of a loaded object.
    Ok(unsafe { CStr::from_ptr(info.dli_fname) }.to_owned())
}

/// The dynamic loader's last error on this thread (after a `dlopen` or `dlsym` that failed).
pub fn dlerror() -> String {
    // SAFETY: dlerror returns NULL or a NUL-terminated message valid until the next dl* call
    // on this thread; it is copied at once.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".to_owned()
    } else {
        // SAFETY: see above.
        unsafe { CStr::from_ptr(e) }.to_string_lossy().into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_a_loaded_library_and_finds_its_symbols() {
        // libc is loaded in every test binary.
        let libc_path = library_of(libc::malloc as *const c_void).expect("malloc's library");
        let pinned = pin_loaded(&libc_path, false).expect("pin libc");
        assert_eq!(pinned.library_of(c"free").expect("free"), libc_path);
        let missing = pinned.library_of(c"no_such_symbol_here").unwrap_err();
        assert!(missing.contains("no_such_symbol_here"), "{missing}");
    }

    #[test]
    fn a_library_not_loaded_is_not_loaded_by_a_pin() {
        let err = pin_loaded(c"libresty-no-such-library.so.9", true).unwrap_err();
        assert!(
            err.starts_with("cannot pin libresty-no-such-library.so.9"),
            "{err}"
        );
    }
}
