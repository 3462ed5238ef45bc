//! The runtime library is named by its SONAME (Debian's packages keep libraries in the system
//! folder only with one; `ngx.load_ffi("resty_grpc_zc")` opens it by that name).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libresty_grpc_zc.so");
}
