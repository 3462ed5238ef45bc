//! `x-backend: NAME` on every response, as a tower layer around all routes of the test server.
//!
//! A fleet of servers behind one client-side load balancer is told apart by this header: a test
//! reads which backend answered a call without asking every server for its counters. The value
//! is built once, so the layer costs one header insert per response (nothing without a name).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::header::HeaderValue;
use tonic::body::Body;
use tower_layer::Layer;
use tower_service::Service;

/// Wraps a service in [`BackendName`].
#[derive(Debug, Clone)]
pub struct BackendNameLayer {
    name: Option<HeaderValue>,
}

impl BackendNameLayer {
    /// `None`: responses pass unchanged. Panics when `name` cannot be a header value
    /// (control characters).
    pub fn new(name: Option<&str>) -> BackendNameLayer {
        let name = name.map(|name| {
            HeaderValue::from_str(name)
                .unwrap_or_else(|e| panic!("backend name {name:?} is not a header value: {e}"))
        });
        BackendNameLayer { name }
    }
}

impl<S> Layer<S> for BackendNameLayer {
    type Service = BackendName<S>;

    fn layer(&self, inner: S) -> BackendName<S> {
        BackendName {
            inner,
            name: self.name.clone(),
        }
    }
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct BackendName<S> {
    inner: S,
    name: Option<HeaderValue>,
}

impl<S, B> Service<http::Request<B>> for BackendName<S>
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
        let response = self.inner.call(request);
        let name = self.name.clone();
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(name) = name {
                response.headers_mut().insert("x-backend", name);
            }
            Ok(response)
        })
    }
}
