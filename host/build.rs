//! The host is loaded into nginx, which provides the `ngx_*` symbols it imports. Test binaries of
//! this crate are plain executables, so let them link with those symbols unresolved (the unit
//! tests never call them).
//!
//! The library is named by its SONAME too (Debian's packages keep libraries in the system
//! folder only with one; runtimes and resty_ffi.lua open it by that name).
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--unresolved-symbols=ignore-in-object-files");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libresty_ffi.so");
}
