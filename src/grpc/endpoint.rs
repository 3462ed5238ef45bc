//! One backend of a target: its address, its HTTP/2 connection,
//! its connectivity state, health and calls in flight.
//!
//! Each endpoint has a task ([`Endpoint::run`]) that keeps it connected, as a gRPC subchannel
//! does: it connects at once (CONNECTING), is READY while the connection lives
//! ([`Liveness`]), then connects again (IDLE → CONNECTING); a failed connect is
//! TRANSIENT_FAILURE, retried after gRPC's connection backoff (1 s × 1.6ⁿ, ±20 %, at most
//! 120 s). With a health service named in the service config, a second task watches
//! `grpc.health.v1.Health/Watch` on the connection (gRFC A17).
//!
//! ```text
//! IDLE ─► CONNECTING ─► READY ─(connection ends)─► IDLE ─► CONNECTING ...
//!              └──(connect fails)─► TRANSIENT_FAILURE ─(backoff)─► CONNECTING
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tonic::Code;

use super::connection::{Connection, Transport};
use super::handshake::Liveness;
use super::name::Address;

/// Connectivity states, as gRPC names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    Idle = 0,
    Connecting = 1,
    Ready = 2,
    TransientFailure = 3,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            1 => State::Connecting,
            2 => State::Ready,
            3 => State::TransientFailure,
            _ => State::Idle,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "IDLE",
            State::Connecting => "CONNECTING",
            State::Ready => "READY",
            State::TransientFailure => "TRANSIENT_FAILURE",
        }
    }
}

/// The shortest time between two connects of an endpoint that calls asked for.
const MIN_CONNECT_GAP: Duration = Duration::from_millis(100);

/// What the health service says of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// No health checking, or the server has no health service: picks allowed.
    Unchecked = 0,
    /// Checked, and SERVING.
    Serving = 1,
    /// Checked and not SERVING: no picks.
    NotServing = 2,
    /// Checked, no answer yet (gRFC A17: the endpoint counts as CONNECTING): no picks.
    Pending = 3,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            1 => Health::Serving,
            2 => Health::NotServing,
            3 => Health::Pending,
            _ => Health::Unchecked,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Health::Unchecked => "UNCHECKED",
            Health::Serving => "SERVING",
            Health::NotServing => "NOT_SERVING",
            Health::Pending => "UNKNOWN",
        }
    }
}

/// What a state change tells the balancer.
pub(super) trait Observer: Send + Sync + 'static {
    /// Something about `ep` changed (state, health): picks may go elsewhere now.
    fn changed(&self, ep: &Endpoint, what: Change);
}

/// A change [`Observer::changed`] hears of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Change {
    State(State),
    /// A connect failed (with this error): worth resolving the name again. `again`: the one
    /// before failed too.
    ConnectFailed {
        error: String,
        again: bool,
    },
    Health(Health),
    /// The server has no health service: counted healthy.
    NoHealthService,
}

/// One backend.
pub(super) struct Endpoint {
    pub address: Address,
    /// How its connections are made (`:authority`, TLS, keepalive): the target's.
    transport: Arc<Transport>,
    connect_timeout: Option<Duration>,
    /// The live connection (replaced on each reconnect; calls in flight keep theirs).
    connection: Mutex<Option<Connection>>,
    state: AtomicU8,
    health: AtomicU8,
    in_flight: AtomicUsize,
    picks: AtomicU64,
    /// Set when the endpoint left the target's address list: no picks, no reconnects.
    removed: AtomicBool,
    stop: Notify,
    /// A call asked for a connect now (instead of at the end of the backoff), and it has not
    /// been tried yet.
    kicked: AtomicBool,
    kick: Notify,
    /// The "no health service" line was logged.
    said_no_health: AtomicBool,
}

/// An endpoint picked for one attempt: its connection, counted in flight until dropped.
pub(super) struct Picked {
    pub endpoint: Arc<Endpoint>,
    pub connection: Connection,
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Endpoint {
    pub fn new(
        address: Address,
        transport: Arc<Transport>,
        connect_timeout: Option<Duration>,
        health_checked: bool,
    ) -> Endpoint {
        Endpoint {
            address,
            transport,
            connect_timeout,
            connection: Mutex::new(None),
            state: AtomicU8::new(State::Idle as u8),
            health: AtomicU8::new(if health_checked {
                Health::Pending as u8
            } else {
                Health::Unchecked as u8
            }),
            in_flight: AtomicUsize::new(0),
            picks: AtomicU64::new(0),
            removed: AtomicBool::new(false),
            stop: Notify::new(),
            kicked: AtomicBool::new(false),
            kick: Notify::new(),
            said_no_health: AtomicBool::new(false),
        }
    }

    /// Asks a TRANSIENT_FAILURE endpoint to connect again now rather than at the end of its
    /// backoff (but not sooner than [`MIN_CONNECT_GAP`] after its last failure): a call that
    /// found nothing ready tries once before it fails, as a channel that connects on demand
    /// would (a server restarted moments ago serves the next call).
    pub fn kick(&self) {
        if self.state() == State::TransientFailure && !self.is_removed() {
            self.kicked.store(true, Ordering::Release);
            self.kick.notify_one();
        }
    }

    /// A kick has not been tried yet.
    pub fn kick_pending(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Acquire))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    pub fn picks(&self) -> u64 {
        self.picks.load(Ordering::Relaxed)
    }

    /// Whether a call may go here now.
    pub fn usable(&self) -> bool {
        self.state() == State::Ready
            && matches!(self.health(), Health::Unchecked | Health::Serving)
            && !self.removed.load(Ordering::Acquire)
    }

    /// This endpoint for one attempt (`None` if it has no live connection).
    pub fn pick(self: &Arc<Self>) -> Option<Picked> {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()?;
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.picks.fetch_add(1, Ordering::Relaxed);
        Some(Picked {
            endpoint: Arc::clone(self),
            connection,
        })
    }

    /// READY on `connection` (tests of the pickers).
    #[cfg(test)]
    pub fn force_ready(&self, connection: Connection, obs: &dyn Observer) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection);
        self.set_state(State::Ready, obs);
    }

    /// Takes the endpoint out of service: no more picks or reconnects; calls in flight finish
    /// on the connection they hold, which closes with the last of them.
    pub fn remove(&self) {
        self.removed.store(true, Ordering::Release);
        self.stop.notify_waiters();
        self.stop.notify_one();
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }

    fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    fn set_state(&self, s: State, obs: &dyn Observer) {
        if State::from_u8(self.state.swap(s as u8, Ordering::AcqRel)) != s {
            obs.changed(self, Change::State(s));
        }
    }

    pub(super) fn set_health(&self, h: Health, obs: &dyn Observer) {
        if Health::from_u8(self.health.swap(h as u8, Ordering::AcqRel)) != h {
            obs.changed(self, Change::Health(h));
        }
    }

    /// Keeps the endpoint connected until it is removed.
    pub async fn run(self: Arc<Self>, obs: Arc<dyn Observer>, health_service: Option<String>) {
        let mut backoff = Backoff::default();
        let mut failing = false;
        while !self.is_removed() {
            // A kick is answered by this connect, whatever its outcome.
            self.kicked.store(false, Ordering::Release);
            self.set_state(State::Connecting, &*obs);
            let live = Arc::new(Liveness::default());
            let connect = self.transport.connect(
                self.address.clone(),
                self.connect_timeout,
                Arc::clone(&live),
            );
            // grpc's minimum connect timeout, when none is set.
            let bound = self.connect_timeout.unwrap_or(Duration::from_secs(20));
            let connecting = tokio::time::timeout(bound, connect);
            let result = tokio::select! {
                r = connecting => r,
                () = self.stop.notified() => return,
            };
            let error = match result {
                Ok(Ok(connection)) => {
                    *self
                        .connection
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
                    if self.is_removed() {
                        self.remove();
                        return;
                    }
                    backoff = Backoff::default();
                    failing = false;
                    self.set_state(State::Ready, &*obs);
                    let watch = health_service.clone().map(|svc| {
                        tokio::spawn(watch_health(
                            Arc::clone(&self),
                            connection,
                            svc,
                            Arc::clone(&obs),
                        ))
                    });
                    tokio::select! {
                        () = live.lost() => {}
                        () = self.stop.notified() => {}
                    }
                    if let Some(w) = watch {
                        w.abort();
                    }
                    if health_service.is_some() {
                        self.set_health(Health::Pending, &*obs);
                    }
                    self.connection
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .take();
                    if self.is_removed() {
                        return;
                    }
                    self.set_state(State::Idle, &*obs);
                    continue;
                }
                Ok(Err(e)) => {
                    let mut text = e.to_string();
                    let mut source = e.source();
                    while let Some(s) = source {
                        text = format!("{text}: {s}");
                        source = s.source();
                    }
                    text
                }
                Err(_) => format!("connect timed out after {} ms", bound.as_millis()),
            };
            self.set_state(State::TransientFailure, &*obs);
            obs.changed(
                &self,
                Change::ConnectFailed {
                    error,
                    again: std::mem::replace(&mut failing, true),
                },
            );
            let failed = tokio::time::Instant::now();
            tokio::select! {
                () = tokio::time::sleep(backoff.next()) => {}
                () = self.kick.notified() => {
                    tokio::time::sleep_until(failed + MIN_CONNECT_GAP).await;
                }
                () = self.stop.notified() => return,
            }
        }
    }
}

/// Watches the endpoint's health on `connection` until the stream ends (gRFC A17): SERVING
/// allows picks, anything else stops them; UNIMPLEMENTED (no health service) counts as
/// healthy. A broken stream is opened again after a backoff.
async fn watch_health(
    ep: Arc<Endpoint>,
    connection: Connection,
    service: String,
    obs: Arc<dyn Observer>,
) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let mut backoff = Backoff::default();
    loop {
        let mut client = HealthClient::new(connection.clone());
        let req = HealthCheckRequest {
            service: service.clone(),
        };
        match client.watch(req).await {
            Ok(resp) => {
                let mut stream = resp.into_inner();
                while let Ok(Some(m)) = stream.message().await {
                    backoff = Backoff::default();
                    let serving = m.status == ServingStatus::Serving as i32;
                    ep.set_health(
                        if serving {
                            Health::Serving
                        } else {
                            Health::NotServing
                        },
                        &*obs,
                    );
                }
            }
            Err(st) if st.code() == Code::Unimplemented => {
                ep.set_health(Health::Unchecked, &*obs);
                // Said once per endpoint, not on every reconnect.
                if !ep.said_no_health.swap(true, Ordering::Relaxed) {
                    obs.changed(&ep, Change::NoHealthService);
                }
                return;
            }
            Err(_) => {}
        }
        ep.set_health(Health::NotServing, &*obs);
        tokio::time::sleep(backoff.next()).await;
    }
}

/// gRPC's connection backoff (doc/connection-backoff.md): 1 s, × 1.6 each time, ±20 %
/// jitter, at most 120 s.
pub(super) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            next: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    pub fn next(&mut self) -> Duration {
        let base = self.next;
        self.next = base.mul_f64(1.6).min(Duration::from_secs(120));
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }
}
