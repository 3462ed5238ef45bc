//! Client-side load balancing over the endpoints a name resolves to: the channel of one target.
//!
//! ```text
//! Balancer ── resolve task: static addresses once, or DNS every resolve_interval and soon
//!    │                      after a connect failure (at most once a second)
//!    ├─ endpoints (address order) ── each: its connection task (endpoint.rs), health watch
//!    └─ pick(policy): pick_first (sticky) │ round_robin │ least_request (power of choices)
//! ```
//!
//! An address that leaves the list drains: no new picks, calls in flight finish on the
//! connection they hold, which closes with the last of them. A call that finds no READY (and
//! healthy) endpoint waits while some endpoint is still connecting, or with `waitForReady`;
//! otherwise it fails at once with UNAVAILABLE and the last connection error, as gRPC's
//! fail-fast calls do. Everything here is per runtime, that is per nginx worker.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tonic::Status;

use super::connection::Transport;
use super::endpoint::{Change, Endpoint, Health, Observer, Picked, State};
use super::metrics::EndpointView;
use super::name::{Address, Resolve};
use super::resolver::Dns;
use super::service_config::LbPolicy;

/// Re-resolution after a connect failure waits at least this long after the last one.
const MIN_RERESOLVE: Duration = Duration::from_secs(1);

/// The default `resolve_interval`.
pub const DEFAULT_RESOLVE_INTERVAL: Duration = Duration::from_secs(30);

/// How a balancer's endpoints connect.
pub(super) struct Settings {
    /// How every connection is made (the target's authority, TLS, keepalive).
    pub transport: Arc<Transport>,
    pub connect_timeout: Option<Duration>,
    pub health_service: Option<String>,
    pub resolve_interval: Duration,
    /// For log lines and metrics: the instance and the target as given.
    pub instance: String,
    pub target: String,
}

/// The endpoints of one target and how calls pick among them.
pub(super) struct Balancer {
    shared: Arc<Shared>,
    policy: LbPolicy,
    resolving: tokio::task::AbortHandle,
}

/// What the resolve task, the endpoint tasks and picks share.
struct Shared {
    settings: Settings,
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    /// Round robin's cursor.
    next: AtomicUsize,
    /// pick_first's endpoint (an index into `endpoints`).
    sticky: AtomicUsize,
    /// Bumped on every change that may let a waiting pick through.
    version: watch::Sender<u64>,
    /// The last resolution or connection error, for fail-fast calls.
    last_error: Mutex<Option<String>>,
    /// The first resolution has ended (well or not).
    resolved: AtomicBool,
    reresolve: Notify,
    closed: AtomicBool,
}

impl Balancer {
    /// The target as given to connect.
    pub fn target(&self) -> &str {
        &self.shared.settings.target
    }

    /// Starts resolving `resolve` (on the current runtime: call inside it).
    pub fn start(resolve: Resolve, policy: LbPolicy, settings: Settings) -> Balancer {
        let (version, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            settings,
            endpoints: RwLock::new(Arc::new(Vec::new())),
            next: AtomicUsize::new(0),
            sticky: AtomicUsize::new(0),
            version,
            last_error: Mutex::new(None),
            resolved: AtomicBool::new(false),
            reresolve: Notify::new(),
            closed: AtomicBool::new(false),
        });
        let resolving = tokio::spawn(resolve_loop(Arc::clone(&shared), resolve)).abort_handle();
        Balancer {
            shared,
            policy,
            resolving,
        }
    }

    /// An endpoint for one attempt: at once if one is usable; else waits while one may become
    /// so (connecting, or `wait_for_ready`); else UNAVAILABLE. The caller bounds the wait by
    /// the call's deadline.
    ///
    /// Before a fail-fast call fails, it asks the endpoints in TRANSIENT_FAILURE to connect
    /// once more (`Endpoint::kick`) and waits for that.
    pub async fn pick(&self, wait_for_ready: bool) -> Result<Picked, Status> {
        let mut kicked = false;
        if let Some(p) = self.try_pick(wait_for_ready, &mut kicked)? {
            return Ok(p);
        }
        let mut changes = self.shared.version.subscribe();
        loop {
            if let Some(p) = self.try_pick(wait_for_ready, &mut kicked)? {
                return Ok(p);
            }
            if changes.changed().await.is_err() {
                return Err(Status::unavailable("channel closed"));
            }
        }
    }

    /// A pick now (`None`: wait for a change).
    fn try_pick(&self, wait_for_ready: bool, kicked: &mut bool) -> Result<Option<Picked>, Status> {
        let list = Arc::clone(
            &self
                .shared
                .endpoints
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let picked = match self.policy {
            LbPolicy::PickFirst => self.pick_first(&list),
            LbPolicy::RoundRobin => self.round_robin(&list),
            LbPolicy::LeastRequest { choice_count } => least_request(&list, choice_count),
        };
        if picked.is_some() || wait_for_ready {
            return Ok(picked);
        }
        match self.shared.fail_fast(&list) {
            Err(_) if !*kicked && list.iter().any(|e| e.state() == State::TransientFailure) => {
                *kicked = true;
                list.iter().for_each(|e| e.kick());
                Ok(None)
            }
            r => r.map(|()| None),
        }
    }

    /// The endpoint picked before while it stays usable, else the first usable one.
    fn pick_first(&self, list: &[Arc<Endpoint>]) -> Option<Picked> {
        let sticky = self.shared.sticky.load(Ordering::Relaxed);
        if let Some(p) = list
            .get(sticky)
            .filter(|e| e.usable())
            .and_then(|e| e.pick())
        {
            return Some(p);
        }
        let (i, p) = list
            .iter()
            .enumerate()
            .filter(|(_, e)| e.usable())
            .find_map(|(i, e)| e.pick().map(|p| (i, p)))?;
        self.shared.sticky.store(i, Ordering::Relaxed);
        Some(p)
    }

    /// The usable endpoints in turn: the cursor counts over the usable ones only, so an
    /// endpoint that is down does not hand its turn to its neighbour (which would get twice
    /// the calls).
    fn round_robin(&self, list: &[Arc<Endpoint>]) -> Option<Picked> {
        let usable = list.iter().filter(|e| e.usable()).count();
        if usable == 0 {
            return None;
        }
        let turn = self.shared.next.fetch_add(1, Ordering::Relaxed) % usable;
        list.iter()
            .filter(|e| e.usable())
            .cycle()
            .skip(turn)
            .take(usable)
            .find_map(|e| e.pick())
    }

    /// The endpoints' states now, in address order (for metrics).
    pub fn endpoint_views(&self) -> Vec<EndpointView> {
        let list = Arc::clone(
            &self
                .shared
                .endpoints
                .read()
                .unwrap_or_else(PoisonError::into_inner),
        );
        list.iter()
            .map(|e| EndpointView {
                address: address_text(&e.address),
                state: e.state().name(),
                health: e.health().name(),
                in_flight: e.in_flight(),
                picks: e.picks(),
            })
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.resolving.abort();
        self.shared.closed.store(true, Ordering::Release);
        let list = std::mem::take(
            &mut *self
                .shared
                .endpoints
                .write()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for e in list.iter() {
            e.remove();
        }
    }
}

/// gRFC A48: `choice_count` distinct endpoints drawn at random (each the first usable one from
/// a random start), the one with the fewest calls in flight. Distinct: with two draws of three
/// endpoints, drawing the slow one twice would send it a ninth of the calls whatever its load.
fn least_request(list: &[Arc<Endpoint>], choice_count: u32) -> Option<Picked> {
    const MAX_CHOICES: usize = 10;
    let n = list.len();
    let mut chosen = [usize::MAX; MAX_CHOICES];
    let mut best: Option<usize> = None;
    for k in 0..(choice_count as usize).clamp(1, MAX_CHOICES) {
        let start = fastrand::usize(..n.max(1));
        let Some(i) = (0..n)
            .map(|j| (start + j) % n)
            .find(|&i| list[i].usable() && !chosen[..k].contains(&i))
        else {
            break;
        };
        chosen[k] = i;
        if best.is_none_or(|b| list[i].in_flight() < list[b].in_flight()) {
            best = Some(i);
        }
    }
    best.and_then(|i| list[i].pick())
}

impl Shared {
    /// Whether a fail-fast call that found no usable endpoint should wait (Ok) or fail.
    fn fail_fast(&self, list: &[Arc<Endpoint>]) -> Result<(), Status> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Status::unavailable("channel closed"));
        }
        let waiting = if list.is_empty() {
            !self.resolved.load(Ordering::Acquire)
        } else {
            // Connecting, or connected and waiting for the health service's first answer.
            list.iter().any(|e| {
                matches!(e.state(), State::Idle | State::Connecting)
                    || e.kick_pending()
                    || (e.state() == State::Ready && e.health() == Health::Pending)
            })
        };
        if waiting {
            return Ok(());
        }
        let last = self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let why = if list.is_empty() {
            "no addresses".to_owned()
        } else if list.iter().all(|e| e.state() == State::Ready) {
            "no healthy endpoint (health service: NOT_SERVING)".to_owned()
        } else {
            "no endpoint ready".to_owned()
        };
        Err(Status::unavailable(match last {
            Some(e) => format!("{why}: {e}"),
            None => why,
        }))
    }

    fn bump(&self) {
        self.version.send_modify(|v| *v += 1);
    }

    fn origin(&self) -> crate::log::Origin<'_> {
        crate::log::Origin::instance(&self.settings.instance).target(&self.settings.target)
    }

    /// Replaces the address list: new addresses get endpoints (connecting at once), gone ones
    /// drain.
    fn update(self: &Arc<Self>, addrs: Vec<Address>) {
        if self.closed.load(Ordering::Acquire) {
            return;
        }
        let mut guard = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let old = Arc::clone(&guard);
        let sticky = old
            .get(self.sticky.load(Ordering::Relaxed))
            .map(|e| e.address.clone());
        let mut list: Vec<Arc<Endpoint>> = Vec::with_capacity(addrs.len());
        for a in addrs {
            if list.iter().any(|e| e.address == a) {
                continue;
            }
            match old.iter().find(|e| e.address == a) {
                Some(e) => list.push(Arc::clone(e)),
                None => {
                    let e = Arc::new(Endpoint::new(
                        a,
                        Arc::clone(&self.settings.transport),
                        self.settings.connect_timeout,
                        self.settings.health_service.is_some(),
                    ));
                    crate::log!(
                        Notice,
                        self.origin(),
                        "endpoint {} added",
                        address_text(&e.address)
                    );
                    let obs: Arc<dyn Observer> = Arc::<Shared>::clone(self);
                    tokio::spawn(Arc::clone(&e).run(obs, self.settings.health_service.clone()));
                    list.push(e);
                }
            }
        }
        for e in old
            .iter()
            .filter(|e| !list.iter().any(|n| n.address == e.address))
        {
            e.remove();
            crate::log!(
                Notice,
                self.origin(),
                "endpoint {} removed (calls in flight finish)",
                address_text(&e.address)
            );
        }
        let sticky_at = sticky
            .and_then(|a| list.iter().position(|e| e.address == a))
            .unwrap_or(0);
        self.sticky.store(sticky_at, Ordering::Relaxed);
        *guard = Arc::new(list);
        drop(guard);
        self.resolved.store(true, Ordering::Release);
        self.bump();
    }

    fn resolution_failed(&self, error: String) {
        crate::log!(Warn, self.origin(), "resolution failed: {error}");
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(format!("resolution failed: {error}"));
        self.resolved.store(true, Ordering::Release);
        self.bump();
    }
}

impl Observer for Shared {
    fn changed(&self, ep: &Endpoint, what: Change) {
        let addr = address_text(&ep.address);
        match &what {
            Change::State(State::Ready) => {
                crate::log!(Info, self.origin(), "endpoint {addr} READY");
            }
            Change::State(_) => {}
            Change::ConnectFailed { error: e, again } => {
                // Once per outage at warn; the retries of a dead endpoint at info.
                if *again {
                    crate::log!(
                        Info,
                        self.origin(),
                        "endpoint {addr} TRANSIENT_FAILURE: {e}"
                    );
                } else {
                    crate::log!(
                        Warn,
                        self.origin(),
                        "endpoint {addr} TRANSIENT_FAILURE: {e}"
                    );
                }
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(format!("{addr}: {e}"));
                self.reresolve.notify_one();
            }
            // Unchecked: the server has no health service (said just below).
            Change::Health(Health::Unchecked) => {}
            Change::Health(h) => {
                crate::log!(Notice, self.origin(), "endpoint {addr} health {}", h.name());
            }
            Change::NoHealthService => {
                crate::log!(
                    Notice,
                    self.origin(),
                    "endpoint {addr} has no health service (UNIMPLEMENTED): counted healthy"
                );
            }
        }
        self.bump();
    }
}

/// Resolves the name: static addresses once; DNS every `resolve_interval`, and soon after a
/// connect failure.
async fn resolve_loop(shared: Arc<Shared>, resolve: Resolve) {
    let (server, host, port) = match resolve {
        Resolve::Static(addrs) => return shared.update(addrs),
        Resolve::Dns { server, host, port } => (server, host, port),
    };
    let interval = shared.settings.resolve_interval;
    // The resolver's own set-up (the system's configuration) is tried again every interval.
    let dns = loop {
        match Dns::new(server) {
            Ok(d) => break d,
            Err(e) => shared.resolution_failed(e),
        }
        tokio::time::sleep(interval).await;
    };
    loop {
        let at = tokio::time::Instant::now();
        match dns.lookup(&host, port).await {
            Ok(addrs) if !addrs.is_empty() => {
                shared.update(addrs.into_iter().map(Address::Tcp).collect());
            }
            Ok(_) => shared.resolution_failed(format!("{host:?} has no A or AAAA records")),
            Err(e) => shared.resolution_failed(e),
        }
        tokio::select! {
            () = tokio::time::sleep_until(at + interval) => {}
            () = shared.reresolve.notified() => {
                tokio::time::sleep_until(at + MIN_RERESOLVE).await;
            }
        }
    }
}

/// An address as log lines and stats show it.
pub(super) fn address_text(a: &Address) -> String {
    match a {
        Address::Tcp(s) => s.to_string(),
        Address::Unix(p) => format!("unix:{}", p.display()),
        Address::UnixAbstract(n) => format!("unix-abstract:{}", String::from_utf8_lossy(n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Quiet;
    impl Observer for Quiet {
        fn changed(&self, _: &Endpoint, _: Change) {}
    }

    #[test]
    fn least_request_avoids_the_busy_endpoint() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _g = rt.enter();
        let transport = Arc::new(Transport::plaintext("localhost"));
        let mut peers = Vec::new();
        let list: Vec<Arc<Endpoint>> = (0..3)
            .map(|i| {
                let e = Arc::new(Endpoint::new(
                    Address::Tcp(format!("127.0.0.{}:1", i + 2).parse().unwrap()),
                    Arc::clone(&transport),
                    None,
                    false,
                ));
                let (ours, theirs) = tokio::io::duplex(1 << 16);
                peers.push(theirs);
                e.force_ready(rt.block_on(transport.over(ours)), &Quiet);
                e
            })
            .collect();
        let busy: Vec<Picked> = (0..5).map(|_| list[0].pick().unwrap()).collect();
        let mut to_busy = 0;
        for _ in 0..1000 {
            let p = least_request(&list, 2).unwrap();
            if Arc::ptr_eq(&p.endpoint, &list[0]) {
                to_busy += 1;
            }
        }
        assert_eq!(to_busy, 0);
        drop(busy);
    }
}
