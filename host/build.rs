//! The host is loaded into nginx, which provides the `ngx_*` symbols it imports. Test binaries of
//! this crate are plain executables, so let them link with those symbols unresolved (the unit
//! tests never call them).
fn main() {
    println!("cargo:rustc-link-arg=-Wl,--unresolved-symbols=ignore-in-object-files");
}
