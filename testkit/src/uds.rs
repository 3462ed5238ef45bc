//! Runs the `uds-echo` binary for the proxy-model benchmark.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

/// Lua defining `uds_echo_once(sock, buf)`: a function that sends `buf` to `uds-echo` on the
/// connected cosocket `sock` in one frame (a 4-byte big-endian length, the bytes) and checks
/// that the same bytes come back (for an `init_by_lua_block`, like [`crate::LUA_PAYLOAD`]).
pub const LUA_UDS_ECHO: &str = r#"
    function uds_echo_once(sock, buf)
        local ffi, bit = require "ffi", require "bit"
        local hdr = ffi.new("unsigned char[4]")
        local len = #buf
        for i = 3, 0, -1 do
            hdr[i] = bit.band(len, 255)
            len = bit.rshift(len, 8)
        end
        local frame = { ffi.string(hdr, 4), buf }
        return function()
            assert(sock:send(frame) == #buf + 4)
            local h = assert(sock:receive(4))
            local b1, b2, b3, b4 = h:byte(1, 4)
            local l = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
            if assert(sock:receive(l)) ~= buf then error("bad echo") end
        end
    end
"#;

/// A running `uds-echo`; killed (and its socket file removed) on drop.
pub struct UdsEcho {
    child: Child,
    path: PathBuf,
    _stdout: BufReader<ChildStdout>,
}

impl UdsEcho {
    /// The binary: `<repo>/target/release/uds-echo` (`cargo build --release -p testkit`).
    pub fn binary() -> PathBuf {
        crate::repo_root().join("target/release/uds-echo")
    }

    /// Starts [`UdsEcho::binary`] on `path` and returns once it listens.
    pub fn start(path: impl AsRef<Path>) -> UdsEcho {
        Self::start_bin(&Self::binary(), path)
    }

    /// Starts `<bin> <path>` and returns once it listens (tests of this crate pass
    /// `env!("CARGO_BIN_EXE_uds-echo")`, the binary of their own profile).
    pub fn start_bin(bin: &Path, path: impl AsRef<Path>) -> UdsEcho {
        let path = path.as_ref().to_path_buf();
        assert!(
            bin.exists(),
            "{} is missing: run `cargo build --release -p testkit`",
            bin.display()
        );
        let mut child = Command::new(bin)
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", bin.display()));
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        let _ = stdout.read_line(&mut line);
        let echo = UdsEcho {
            child,
            path,
            _stdout: stdout,
        };
        assert_eq!(
            line.trim_end(),
            format!("listening {}", echo.path.display()),
            "uds-echo did not start (its stderr is above)"
        );
        echo
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Connects and echoes one frame: a helper for smoke tests.
    pub fn roundtrip(&self, payload: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut s = UnixStream::connect(&self.path)?;
        let len = u32::try_from(payload.len()).map_err(std::io::Error::other)?;
        s.write_all(&len.to_be_bytes())?;
        s.write_all(payload)?;
        let mut header = [0u8; 4];
        s.read_exact(&mut header)?;
        let mut back = vec![0u8; u32::from_be_bytes(header) as usize];
        s.read_exact(&mut back)?;
        Ok(back)
    }
}

impl Drop for UdsEcho {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}
