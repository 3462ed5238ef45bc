//! The sockets of an endpoint's connection: connected to the endpoint's address (TCP, Unix or
//! abstract), watched for the end of the connection ([`Liveness`]), and with `connect_timeout`
//! over the whole connection setup, as grpc-go's: TCP connect, TLS handshake and the server's
//! first HTTP/2 bytes.
//!
//! HTTP/2 clients send their preface and return at once, so a server that accepts and stays
//! silent would hold every call to its deadline. [`connect`] makes the sockets of a connection
//! with a `connect_timeout`; each is wrapped in [`FirstBytes`], whose reads fail with
//! `TimedOut` if nothing at all has arrived from the server by the time the connect timeout
//! (counted from the start of the connect) runs out. The connection then fails, and its calls
//! with it (UNAVAILABLE); the endpoint connects again.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::name::Address;

/// A socket whose reads fail once `deadline` passes with nothing read yet.
pub struct FirstBytes<S> {
    inner: S,
    /// Until the first byte arrives.
    deadline: Option<Pin<Box<Sleep>>>,
}

impl<S> FirstBytes<S> {
    pub fn new(inner: S, deadline: Instant) -> FirstBytes<S> {
        FirstBytes {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = match self.deadline.as_mut() {
                    Some(d) => d.as_mut().poll(cx).is_ready(),
                    None => false,
                };
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect_timeout: the server sent nothing (no TLS or HTTP/2 handshake)",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A TCP or Unix socket.
pub enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Whether a channel's connection still lives: set once a socket it made is dropped (hyper
/// drops it when the connection ends: EOF, error, GOAWAY and idle close alike), which is how
/// an endpoint learns it is no longer READY.
#[derive(Default)]
pub struct Liveness {
    lost: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Liveness {
    /// Waits until a socket of this channel was dropped.
    pub async fn lost(&self) {
        use std::sync::atomic::Ordering;
        loop {
            let notified = self.notify.notified();
            if self.lost.load(Ordering::Acquire) {
                return;
            }
            notified.await;
        }
    }

    fn mark_lost(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_waiters();
    }
}

/// A channel's socket: with a connect timeout, its first bytes bounded ([`FirstBytes`]); its
/// drop marks the [`Liveness`] lost.
pub struct Tracked {
    inner: FirstBytes<Socket>,
    live: std::sync::Arc<Liveness>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.live.mark_lost();
    }
}

/// A socket of an endpoint's connection, connected to `address`; with a `timeout`, the
/// server's first bytes must come within it (counted from the start of the connect). Its drop
/// marks `live` lost.
pub async fn connect(
    address: Address,
    timeout: Option<Duration>,
    live: std::sync::Arc<Liveness>,
) -> io::Result<Tracked> {
    // No timeout: the first-bytes bound never fires (a year out).
    let deadline = Instant::now() + timeout.unwrap_or(Duration::from_secs(365 * 86400));
    let socket = match address {
        Address::Unix(path) => Socket::Unix(tokio::net::UnixStream::connect(path).await?),
        Address::UnixAbstract(name) => {
            // tokio takes a leading NUL as the abstract namespace.
            use std::os::unix::ffi::OsStringExt;
            let mut raw = Vec::with_capacity(name.len() + 1);
            raw.push(0);
            raw.extend_from_slice(&name);
            let path = std::path::PathBuf::from(std::ffi::OsString::from_vec(raw));
            Socket::Unix(tokio::net::UnixStream::connect(path).await?)
        }
        Address::Tcp(addr) => {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Socket::Tcp(s)
        }
    };
    Ok(Tracked {
        inner: FirstBytes::new(socket, deadline),
        live,
    })
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn reads_fail_when_nothing_arrives_in_time_and_not_once_something_did() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let (a, mut b) = tokio::io::duplex(64);
            let mut silent = FirstBytes::new(a, Instant::now() + Duration::from_millis(20));
            let mut buf = [0u8; 8];
            let e = silent.read(&mut buf).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);

            let (a, mut c) = tokio::io::duplex(64);
            let mut talks = FirstBytes::new(a, Instant::now() + Duration::from_millis(20));
            c.write_all(b"x").await.unwrap();
            assert_eq!(talks.read(&mut buf).await.unwrap(), 1);
            tokio::time::sleep(Duration::from_millis(30)).await;
            c.write_all(b"y").await.unwrap();
            assert_eq!(
                talks.read(&mut buf).await.unwrap(),
                1,
                "no deadline after a byte"
            );
            b.shutdown().await.unwrap();
        });
    }
}
