//! `connect_timeout` over the whole connection setup, as grpc-go's: TCP connect, TLS handshake
//! and the server's first HTTP/2 bytes.
//!
//! tonic applies `Endpoint::connect_timeout` to the connector (TCP, and TLS when the connector
//! is custom) but not to the HTTP/2 handshake: h2 sends its preface and returns at once, so a
//! server that accepts and stays silent held every call to its deadline. [`connector`] makes
//! the sockets of a channel with a `connect_timeout`; each is wrapped in [`FirstBytes`], whose
//! reads fail with `TimedOut` if nothing at all has arrived from the server by the time the
//! connect timeout (counted from the start of the connect) runs out. The connection then fails,
//! and its calls with it (UNAVAILABLE); the channel reconnects on the next call.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

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

/// Where a channel's sockets go.
#[derive(Clone)]
pub enum Dest {
    /// The endpoint's URI (host and port; 80 or 443 by scheme when absent).
    Tcp,
    Unix(std::path::PathBuf),
}

type Connecting =
    Pin<Box<dyn Future<Output = io::Result<TokioIo<FirstBytes<Socket>>>> + Send + 'static>>;

/// A TCP or Unix socket.
pub enum Socket {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// The connector (a `tower::Service<Uri>`) of a channel with a connect timeout of `timeout`.
pub fn connector(
    dest: Dest,
    timeout: Duration,
) -> impl tower::Service<
    http::Uri,
    Response = TokioIo<FirstBytes<Socket>>,
    Error = io::Error,
    Future = Connecting,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |uri: http::Uri| -> Connecting {
        let dest = dest.clone();
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            let socket = match dest {
                Dest::Unix(path) => Socket::Unix(tokio::net::UnixStream::connect(path).await?),
                Dest::Tcp => {
                    let host = uri.host().unwrap_or_default();
                    let host = host.trim_matches(|c| c == '[' || c == ']').to_owned();
                    let port = uri
                        .port_u16()
                        .unwrap_or(if uri.scheme_str() == Some("https") {
                            443
                        } else {
                            80
                        });
                    let s = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
                    s.set_nodelay(true)?;
                    Socket::Tcp(s)
                }
            };
            Ok(TokioIo::new(FirstBytes::new(socket, deadline)))
        })
    })
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
