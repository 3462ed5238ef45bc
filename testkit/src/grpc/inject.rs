//! Failure injection by request metadata, and the attempt number on every response: what retry
//! and hedging tests need from a backend.
//!
//! A request with `x-fail-until-attempt: N` whose `grpc-previous-rpc-attempts` (absent: 0) is
//! below N is answered at once, without running the handler, by a Trailers-Only response:
//! HTTP 200, `content-type: application/grpc`, `grpc-status: C` (`x-fail-code`, default 14
//! UNAVAILABLE, the code gRPC retries by default), `grpc-message: injected failure`, and
//! `grpc-retry-pushback-ms: P` when the request carries `x-pushback-ms: P`. So attempts 0..N-1
//! fail and attempt N reaches the handler, whichever server of a fleet each attempt lands on.
//!
//! Every response, injected or not, carries `x-attempt: <grpc-previous-rpc-attempts or 0>` in
//! its headers, so a test sees which attempt reached which server.
//!
//! `zctest.Test/Stats` and `grpc.health.v1.Health` are exempt from injection and from the
//! `received` count: a test's bookkeeping and health probes must not be what it measures.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use http::HeaderMap;
use tonic::body::Body;
use tonic::Code;
use tower_layer::Layer;
use tower_service::Service;

use super::service::Counters;

/// The header a gRPC client sets on retries and hedges: how many attempts went before.
const PREVIOUS_ATTEMPTS: &str = "grpc-previous-rpc-attempts";

/// Wraps a service in [`Inject`], counting into `counters`.
#[derive(Debug, Clone)]
pub struct InjectLayer {
    counters: Arc<Counters>,
}

impl InjectLayer {
    pub fn new(counters: Arc<Counters>) -> InjectLayer {
        InjectLayer { counters }
    }
}

impl<S> Layer<S> for InjectLayer {
    type Service = Inject<S>;

    fn layer(&self, inner: S) -> Inject<S> {
        Inject {
            inner,
            counters: Arc::clone(&self.counters),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Inject<S> {
    inner: S,
    counters: Arc<Counters>,
}

/// `name`'s value as a number, if present and numeric.
fn number<T: std::str::FromStr>(headers: &HeaderMap, name: &str) -> Option<T> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

/// Whether calls to `path` are left alone (see the module docs).
fn exempt(path: &str) -> bool {
    path == "/zctest.Test/Stats" || path.starts_with("/grpc.health.v1.Health/")
}

/// The Trailers-Only failure for a request with these headers, if it asks for one.
fn injected(headers: &HeaderMap, attempt: u32) -> Option<http::Response<Body>> {
    let until: u32 = number(headers, "x-fail-until-attempt")?;
    if attempt >= until {
        return None;
    }
    let code: i32 = number(headers, "x-fail-code").unwrap_or(Code::Unavailable as i32);
    let mut response = http::Response::new(Body::empty());
    let out = response.headers_mut();
    out.insert("content-type", HeaderValue::from_static("application/grpc"));
    out.insert("grpc-status", HeaderValue::from(code));
    out.insert(
        "grpc-message",
        HeaderValue::from_static("injected%20failure"),
    );
    // As given, so that tests can send the negative and unreadable values A6 speaks of.
    if let Some(pushback) = headers.get("x-pushback-ms") {
        out.insert("grpc-retry-pushback-ms", pushback.clone());
    }
    Some(response)
}

impl<S, B> Service<http::Request<B>> for Inject<S>
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
        let attempt: u32 = number(request.headers(), PREVIOUS_ATTEMPTS).unwrap_or(0);
        let attempt_header = HeaderValue::from(attempt);
        if !exempt(request.uri().path()) {
            self.counters.count_received();
            if let Some(mut response) = injected(request.headers(), attempt) {
                self.counters.count_injected();
                response.headers_mut().insert("x-attempt", attempt_header);
                return Box::pin(async move { Ok(response) });
            }
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            response.headers_mut().insert("x-attempt", attempt_header);
            Ok(response)
        })
    }
}
