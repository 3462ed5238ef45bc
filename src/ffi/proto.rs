//! C exports of the `.proto` compiler ([`crate::proto`]) for `resty/grpc_zc/pb.lua`:
//! `grpc_zc_proto_compile` and `grpc_zc_free`. Synchronous, no runtime instance needed, so
//! they work in any Lua phase, `init_by_lua` included.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

use super::{guard, E_BAD_ARGUMENT, E_PANIC};

/// The files did not compile; the error text is in `*out`.
pub const E_PROTO_COMPILE: c_int = 1;

/// Copies `bytes` into a fresh `malloc` block with a NUL after them (so an error text is also
/// a C string). NULL when malloc fails.
fn malloc_copy(bytes: &[u8]) -> *mut u8 {
    // SAFETY: plain allocation; the size is at least 1.
    let p = unsafe { libc::malloc(bytes.len() + 1) }.cast::<u8>();
    if !p.is_null() {
        // SAFETY: `p` has room for len + 1 bytes and does not overlap `bytes` (fresh block).
        unsafe {
            ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len());
            p.add(bytes.len()).write(0);
        }
    }
    p
}

/// Splits a newline-separated list, skipping empty lines (and `\r`).
fn lines(text: &str) -> Vec<&str> {
    text.split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.is_empty())
        .collect()
}

/// Compiles the `.proto` files listed in `files` (newline-separated), resolving imports in the
/// newline-separated `import_paths` (NULL or empty: the current directory).
///
/// Returns 0 and sets `*out`/`*out_len` to the encoded `google.protobuf.FileDescriptorSet`
/// (imports included); or [`E_PROTO_COMPILE`] and sets them to the error text
/// (`file:line:column: problem`, NUL-terminated, `*out_len` without the NUL). Either way
/// `*out` is a `malloc` block the caller frees with `grpc_zc_free` (`*out` stays NULL only if
/// malloc failed). [`E_BAD_ARGUMENT`] for NULL `files`/`out`/`out_len` or lists that are not
/// UTF-8; [`E_PANIC`] for a bug.
///
/// # Safety
/// `files` and `import_paths` are NULL or NUL-terminated strings; `out` and `out_len` are NULL
/// or writable. Any thread.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_proto_compile(
    files: *const c_char,
    import_paths: *const c_char,
    out: *mut *mut u8,
    out_len: *mut usize,
) -> c_int {
    guard("grpc_zc_proto_compile", E_PANIC, || {
        if files.is_null() || out.is_null() || out_len.is_null() {
            return E_BAD_ARGUMENT;
        }
        // SAFETY: both are writable per the caller.
        unsafe {
            out.write(ptr::null_mut());
            out_len.write(0);
        }
        // SAFETY: NUL-terminated per the caller, read during this call only.
        let Ok(files) = unsafe { CStr::from_ptr(files) }.to_str() else {
            return E_BAD_ARGUMENT;
        };
        let imports = if import_paths.is_null() {
            ""
        } else {
            // SAFETY: as above.
            match unsafe { CStr::from_ptr(import_paths) }.to_str() {
                Ok(s) => s,
                Err(_) => return E_BAD_ARGUMENT,
            }
        };
        let (rc, bytes) = match crate::proto::compile(&lines(files), &lines(imports)) {
            Ok(fds) => (0, fds),
            Err(e) => (E_PROTO_COMPILE, e.to_string().into_bytes()),
        };
        let p = malloc_copy(&bytes);
        // SAFETY: writable per the caller; the length is only published with its block.
        unsafe {
            out.write(p);
            out_len.write(if p.is_null() { 0 } else { bytes.len() });
        }
        rc
    })
}

/// Frees a block returned by a `grpc_zc_*` function (`grpc_zc_proto_compile`'s `*out`).
/// NULL is allowed.
///
/// # Safety
/// `p` is NULL or a block from this library not freed yet.
#[no_mangle]
pub unsafe extern "C" fn grpc_zc_free(p: *mut c_void) {
    guard("grpc_zc_free", (), || {
        // SAFETY: `p` came from libc::malloc in this library (or is NULL), per the caller.
        unsafe { libc::free(p) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_errors() {
        assert_eq!(lines("a.proto\r\n\nb.proto\n"), ["a.proto", "b.proto"]);
        let mut out = ptr::null_mut();
        let mut len = 0usize;
        // SAFETY: valid C strings and out-parameters on this stack frame.
        let rc = unsafe {
            grpc_zc_proto_compile(c"nope.proto".as_ptr(), c"".as_ptr(), &mut out, &mut len)
        };
        assert_eq!(rc, E_PROTO_COMPILE);
        assert!(!out.is_null());
        // SAFETY: the export wrote `len` bytes plus a NUL at `out`.
        let text = unsafe { std::slice::from_raw_parts(out, len) };
        assert!(String::from_utf8_lossy(text).contains("nope.proto"));
        // SAFETY: `out` came from grpc_zc_proto_compile.
        unsafe { grpc_zc_free(out.cast()) };
        // SAFETY: NULL arguments are allowed and rejected.
        let rc = unsafe { grpc_zc_proto_compile(ptr::null(), ptr::null(), &mut out, &mut len) };
        assert_eq!(rc, E_BAD_ARGUMENT);
    }
}
