//! `uds-echo <socket-path>`: the unix-domain-socket echo server of the "proxy model" benchmark.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes; each frame is written back
//! unchanged. One thread per connection. Prints `listening <path>` on stdout once it accepts.

use std::io::{self, BufReader, BufWriter, ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::ExitCode;
use std::thread;

/// Buffer size of the reader and of the writer: a 100 KB frame goes out in one write.
const BUF_SIZE: usize = 256 * 1024;
/// Frames larger than this close the connection.
const MAX_FRAME: usize = 64 * 1024 * 1024;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), None) = (args.next(), args.next()) else {
        eprintln!("usage: uds-echo <socket-path>");
        return ExitCode::from(2);
    };
    // A socket file left by an earlier run makes bind fail.
    let _ = std::fs::remove_file(&path);
    let listener = match UnixListener::bind(&path) {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("uds-echo: bind {}: {e}", path.to_string_lossy());
            return ExitCode::FAILURE;
        }
    };
    println!("listening {}", path.to_string_lossy());
    let _ = io::stdout().flush();
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => {
                let spawned =
                    thread::Builder::new()
                        .name("uds-echo-conn".into())
                        .spawn(move || {
                            if let Err(e) = serve(stream) {
                                if !matches!(
                                    e.kind(),
                                    ErrorKind::ConnectionReset | ErrorKind::BrokenPipe
                                ) {
                                    eprintln!("uds-echo: connection: {e}");
                                }
                            }
                        });
                if let Err(e) = spawned {
                    eprintln!("uds-echo: cannot start a connection thread: {e}");
                }
            }
            Err(e) => eprintln!("uds-echo: accept: {e}"),
        }
    }
    ExitCode::SUCCESS
}

/// Echoes frames until the peer closes the connection between two frames.
fn serve(stream: UnixStream) -> io::Result<()> {
    let mut reader = BufReader::with_capacity(BUF_SIZE, stream.try_clone()?);
    let mut writer = BufWriter::with_capacity(BUF_SIZE, stream);
    let mut payload = Vec::new();
    let mut header = [0u8; 4];
    while read_header(&mut reader, &mut header)? {
        let len = u32::from_be_bytes(header) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("frame of {len} bytes exceeds {MAX_FRAME}"),
            ));
        }
        payload.resize(len, 0);
        reader.read_exact(&mut payload)?;
        writer.write_all(&header)?;
        writer.write_all(&payload)?;
        writer.flush()?;
    }
    Ok(())
}

/// Fills `header`; `false` on a clean end of stream before its first byte.
fn read_header(reader: &mut impl Read, header: &mut [u8; 4]) -> io::Result<bool> {
    let mut filled = 0;
    while filled < header.len() {
        match reader.read(&mut header[filled..]) {
            Ok(0) if filled == 0 => return Ok(false),
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}
