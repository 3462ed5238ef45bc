//! Request metadata echo, as a tower layer around all routes of the test server.
//!
//! Every request header whose name starts with `x-` is copied, value for value, into the
//! response headers and into the trailers. Values are copied as they are on the wire, so a
//! `-bin` key's base64 text comes back unchanged and decodes to the same bytes. The layer adds
//! `x-server: zctest` to the headers and `x-trailer: done` to the trailers.
//!
//! A Trailers-Only response (tonic answers a handler's `Err(status)` with one HEADERS frame
//! that carries `grpc-status`) has a single header block: it gets the echoed entries once, plus
//! both `x-server` and `x-trailer`.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http::header::HeaderValue;
use http::HeaderMap;
use http_body::{Frame, SizeHint};
use tonic::body::Body;
use tonic::Status;
use tower_layer::Layer;
use tower_service::Service;

/// Wraps a service in [`EchoMeta`].
#[derive(Debug, Clone, Copy, Default)]
pub struct EchoMetaLayer;

impl<S> Layer<S> for EchoMetaLayer {
    type Service = EchoMeta<S>;

    fn layer(&self, inner: S) -> EchoMeta<S> {
        EchoMeta { inner }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct EchoMeta<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for EchoMeta<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let mut echo = HeaderMap::new();
        for (name, value) in request.headers() {
            if name.as_str().starts_with("x-") {
                echo.append(name.clone(), value.clone());
            }
        }
        let response = self.inner.call(request);
        Box::pin(async move { Ok(with_echo(response.await?, echo)) })
    }
}

fn with_echo(response: http::Response<Body>, echo: HeaderMap) -> http::Response<Body> {
    let (mut parts, body) = response.into_parts();
    let trailers_only = parts.headers.contains_key("grpc-status");
    for (name, value) in &echo {
        parts.headers.append(name.clone(), value.clone());
    }
    parts
        .headers
        .insert("x-server", HeaderValue::from_static("zctest"));
    let done = HeaderValue::from_static("done");
    if trailers_only {
        parts.headers.insert("x-trailer", done);
        return http::Response::from_parts(parts, body);
    }
    let mut trailers = echo;
    trailers.insert("x-trailer", done);
    let body = Body::new(WithTrailers {
        inner: body,
        extra: Some(trailers),
    });
    http::Response::from_parts(parts, body)
}

/// A response body whose trailers get `extra` appended (or that ends with `extra` as its
/// trailers if the inner body had none).
struct WithTrailers {
    inner: Body,
    extra: Option<HeaderMap>,
}

impl http_body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(extra) = this.extra.take() {
                        for (name, value) in &extra {
                            trailers.append(name.clone(), value.clone());
                        }
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(frame) => Poll::Ready(Some(Ok(frame))),
            },
            None => Poll::Ready(this.extra.take().map(|t| Ok(Frame::trailers(t)))),
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.extra.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
