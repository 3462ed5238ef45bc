//! The loader is named by its SONAME (Debian's packages keep libraries in the system folder
//! only with one; `ngx.load_ffi("ffi_python3")` opens it by that name).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libffi_python3.so");
}
