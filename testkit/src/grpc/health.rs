//! The standard health service (`grpc.health.v1.Health`, from `tonic-health`) of the test
//! server, with one switch that turns every status it reports at once.
//!
//! Load-balancing tests take a backend out of rotation without killing it: [`HealthSwitch`]
//! sets `""` and every served service NOT_SERVING (or SERVING again), and `Watch` streams see
//! the change. The binary flips the switch on SIGUSR1 / SIGUSR2. [`WatchCount`] keeps the
//! number of open `Watch` streams in [`Counters`], so a test can check that a client really
//! watches (and stops watching when it should).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use http_body::{Frame, SizeHint};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::Status;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::HealthService;
use tonic_health::ServingStatus;
use tower_service::Service;

use super::service::Counters;

/// Turns every status of a server's health service (see the module docs). Cloning shares the
/// switch; the health service follows it until the last clone is dropped.
#[derive(Debug, Clone)]
pub struct HealthSwitch {
    serving: Arc<watch::Sender<bool>>,
}

impl Default for HealthSwitch {
    /// Serving.
    fn default() -> HealthSwitch {
        HealthSwitch {
            serving: Arc::new(watch::channel(true).0),
        }
    }
}

impl HealthSwitch {
    /// `true`: SERVING, `false`: NOT_SERVING, for `""` and every service.
    pub fn set_serving(&self, serving: bool) {
        self.serving.send_replace(serving);
    }

    pub fn is_serving(&self) -> bool {
        *self.serving.borrow()
    }
}

fn status(serving: bool) -> ServingStatus {
    if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    }
}

/// The health service reporting `""` and each of `services` as `switch` says, its `Watch`
/// streams counted in `counters`. Call inside a tokio runtime: a task follows the switch.
pub async fn health_service(
    switch: &HealthSwitch,
    services: &'static [&'static str],
    counters: Arc<Counters>,
) -> WatchCount<HealthServer<HealthService>> {
    let (reporter, _) = tonic_health::server::health_reporter();
    let mut serving = switch.serving.subscribe();
    let initial = *serving.borrow_and_update();
    for name in std::iter::once(&"").chain(services) {
        reporter.set_service_status(name, status(initial)).await;
    }
    let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
    tokio::spawn(async move {
        while serving.changed().await.is_ok() {
            let now = *serving.borrow_and_update();
            for name in std::iter::once(&"").chain(services) {
                reporter.set_service_status(name, status(now)).await;
            }
            // The log line says the change is in effect (set_serving waits on Check instead).
            eprintln!("grpc-test-server: health {:?}", status(now));
        }
    });
    WatchCount {
        inner: server,
        counters,
    }
}

/// The health service, counting its open `Watch` streams (see the module docs).
#[derive(Debug, Clone)]
pub struct WatchCount<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: NamedService> NamedService for WatchCount<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for WatchCount<S>
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
        let watch = request.uri().path().ends_with("/Watch");
        // Counted from here, so the stream is open as soon as the call reached the server.
        let open = watch.then(|| OpenWatch::new(Arc::clone(&self.counters)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match open {
                None => response,
                Some(open) => response.map(|inner| Body::new(WatchBody { inner, _open: open })),
            })
        })
    }
}

/// One open `Watch` stream in [`Counters`], until dropped.
struct OpenWatch(Arc<Counters>);

impl OpenWatch {
    fn new(counters: Arc<Counters>) -> OpenWatch {
        counters.count_watch(true);
        OpenWatch(counters)
    }
}

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.count_watch(false);
    }
}

/// A `Watch` reply body holding its [`OpenWatch`]: hyper drops it when the stream ends or the
/// client resets it.
struct WatchBody {
    inner: Body,
    _open: OpenWatch,
}

impl http_body::Body for WatchBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        Poll::Ready(ready!(Pin::new(&mut this.inner).poll_frame(cx)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
