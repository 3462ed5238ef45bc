//! Run-time compilation of `.proto` files, without `protoc`: the `protox` crate parses and
//! checks them and this module returns the serialized `google.protobuf.FileDescriptorSet`
//! (imports included, so every type a file refers to resolves), which the Lua codec
//! `resty.grpc_zc.pb` loads with `pb.load_descriptor`.
//!
//! ```text
//! pb.load_proto(files, {import_paths})   (Lua, any phase, init_by_lua included)
//!   └─ grpc_zc_proto_compile (src/ffi/proto.rs) ─► proto::compile ─► protox
//!        ◄─ malloc'd FileDescriptorSet bytes, or a malloc'd "file:line:col: problem" text
//! ```
//!
//! Safe Rust only; synchronous; needs no runtime instance.
#![forbid(unsafe_code)]

use std::fmt;
use std::path::Path;

/// Why a compilation failed; its text names the file, and the line and column when the
/// problem is in a file's contents (`helloworld.proto:7:3: expected ';', but found 'int32'`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    message: String,
}

impl CompileError {
    fn new(message: impl Into<String>) -> Self {
        CompileError {
            message: message.into(),
        }
    }
}

impl fmt::Display for CompileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CompileError {}

/// Compiles `files` (each a path under one of `import_paths`, or a name relative to them) and
/// returns the encoded `FileDescriptorSet` of them and of everything they import, dependencies
/// first. With no import path, the current directory is the only one (as with `protoc`).
pub fn compile<F, I>(files: &[F], import_paths: &[I]) -> Result<Vec<u8>, CompileError>
where
    F: AsRef<Path>,
    I: AsRef<Path>,
{
    if files.is_empty() {
        return Err(CompileError::new("no .proto file given"));
    }
    let includes: Vec<&Path> = if import_paths.is_empty() {
        vec![Path::new(".")]
    } else {
        import_paths.iter().map(AsRef::as_ref).collect()
    };
    let mut compiler = protox::Compiler::new(&includes).map_err(describe)?;
    compiler.include_imports(true);
    compiler.include_source_info(false);
    for file in files {
        let file = file.as_ref();
        let found = file.exists() || includes.iter().any(|dir| dir.join(file).exists());
        if !found {
            return Err(CompileError::new(format!(
                "{}: file not found (import paths: {})",
                file.display(),
                includes
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        compiler.open_file(file).map_err(describe)?;
    }
    Ok(compiler.encode_file_descriptor_set())
}

/// protox's `Debug` text carries `file:line:column:` for errors inside a file; its `Display`
/// text does not. Errors without a position (file not found) name the file in their message.
fn describe(e: protox::Error) -> CompileError {
    let text = format!("{e:?}");
    match e.file() {
        Some(file) if !text.contains(file) => CompileError::new(format!("{file}: {text}")),
        _ => CompileError::new(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> tempdir::Dir {
        tempdir::Dir::new()
    }

    /// A private scratch directory removed on drop (no extra dev-dependency for this).
    mod tempdir {
        use std::path::{Path, PathBuf};
        use std::sync::atomic::{AtomicUsize, Ordering};

        pub struct Dir(PathBuf);
        static N: AtomicUsize = AtomicUsize::new(0);

        impl Dir {
            pub fn new() -> Self {
                let p = std::env::temp_dir().join(format!(
                    "grpc_zc-proto-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &Path {
                &self.0
            }
            pub fn write(&self, name: &str, text: &str) {
                std::fs::write(self.0.join(name), text).unwrap();
            }
        }

        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn compiles_with_imports() {
        let d = dir();
        d.write(
            "a.proto",
            "syntax = \"proto3\";\npackage a;\nmessage A { int32 x = 1; }\n",
        );
        d.write(
            "b.proto",
            "syntax = \"proto3\";\npackage b;\nimport \"a.proto\";\nmessage B { a.A a = 1; }\n",
        );
        let fds = compile(&["b.proto"], &[d.path()]).unwrap();
        let text = String::from_utf8_lossy(&fds);
        assert!(
            text.contains("a.proto") && text.contains("b.proto"),
            "{text}"
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        let d = dir();
        d.write(
            "bad.proto",
            "syntax = \"proto3\";\nmessage M {\n  int32 x = 1\n}\n",
        );
        let e = compile(&["bad.proto"], &[d.path()])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bad.proto:4:1: "), "{e}");
        let e = compile(&["missing.proto"], &[d.path()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.proto"), "{e}");
        d.write(
            "t.proto",
            "syntax = \"proto3\";\nmessage M {\n  Nope x = 1;\n}\n",
        );
        let e = compile(&["t.proto"], &[d.path()]).unwrap_err().to_string();
        assert!(e.starts_with("t.proto:3:"), "{e}");
    }
}
