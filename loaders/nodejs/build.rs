//! Finds Debian's libnode (Node.js 18, `libnode108` + `libnode-dev`), compiles the C++ embedding
//! shim against its headers and links the loader with `libnode.so.108`.
//!
//! Where libnode is looked for, first match wins:
//! 1. `$RESTY_LIBNODE_ROOT` when set (a root holding `usr/include/node/node.h` and
//!    `usr/lib/<multiarch>/libnode.so`), and nowhere else;
//! 2. `/`: the packages installed by apt (`apt-get install libnode-dev`);
//! 3. `/var/cache/resty-grpc-zc/libnode108`: the same two packages unpacked by
//!    `scripts/deps.sh` where apt cannot install them (next to NodeSource's nodejs).
//!
//! Outside `/`, the library gets an rpath to that root's lib directory, so nginx finds
//! `libnode.so.108` without `LD_LIBRARY_PATH`.

use std::env;
use std::path::{Path, PathBuf};

const CACHE_ROOT: &str = "/var/cache/resty-grpc-zc/libnode108";

struct Libnode {
    include: PathBuf,
    lib_dir: PathBuf,
    system: bool,
}

fn multiarch() -> String {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".to_owned());
    format!("{arch}-linux-gnu")
}

fn probe(root: &Path) -> Option<Libnode> {
    let include = root.join("usr/include/node");
    let lib_dir = root.join("usr/lib").join(multiarch());
    (include.join("node.h").is_file() && lib_dir.join("libnode.so").exists()).then(|| Libnode {
        include,
        lib_dir,
        system: root == Path::new("/"),
    })
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=shim/node_shim.cc");
    println!("cargo:rerun-if-env-changed=RESTY_LIBNODE_ROOT");

    let roots: Vec<PathBuf> = match env::var_os("RESTY_LIBNODE_ROOT") {
        Some(r) if !r.is_empty() => vec![PathBuf::from(r)],
        _ => vec![PathBuf::from("/"), PathBuf::from(CACHE_ROOT)],
    };
    let Some(node) = roots.iter().find_map(|r| probe(r)) else {
        panic!(
            "libnode (Debian's libnode-dev 18) not found in {roots:?}: run scripts/deps.sh \
             (or set RESTY_LIBNODE_ROOT to a root with usr/include/node and usr/lib/{}/libnode.so)",
            multiarch()
        );
    };
    for f in ["node.h", "node_api.h"] {
        println!("cargo:rerun-if-changed={}", node.include.join(f).display());
    }

    cc::Build::new()
        .cpp(true)
        .std("c++17")
        .file("shim/node_shim.cc")
        .include(&node.include)
        // V8's headers are not warning-clean under -Wextra.
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-missing-field-initializers")
        .flag_if_supported("-Wno-cast-function-type")
        .compile("resty_node_shim");

    // Named by its SONAME (Debian keeps libraries in the system folder only with one;
    // `ngx.load_ffi("ffi_nodejs")` opens it by that name).
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libffi_nodejs.so");
    println!("cargo:rustc-link-search=native={}", node.lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=node");
    // The shim's uv_poll_* (libnode's own libuv, libuv1-dev's libuv.so).
    println!("cargo:rustc-link-lib=dylib=uv");
    if !node.system {
        // Also for the unit-test binary, which loads libnode too.
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", node.lib_dir.display());
    }
    // The host's functions (`ngx_http_lua_ffi_*`) come from libresty_ffi.so, loaded globally in
    // nginx before any runtime; the unit-test binary never calls them.
    println!("cargo:rustc-link-arg=-Wl,--unresolved-symbols=ignore-in-object-files");
}
