//! Attempts of one call (gRFC A6): a single attempt, retries with jittered exponential backoff,
//! or hedging; retry throttling per target. The request's payload is `Bytes` over its arena
//! slot, so every attempt resends it without a copy.
//!
//! ```text
//! no policy     pick ─► attempt ─► (never left the client? once more)
//! retryPolicy   pick ─► attempt ─► retryable, uncommitted, attempts and tokens left?
//!                                   └─► wait (pushback, or random(0, backoff)) ─► again
//! hedgingPolicy attempt │ + hedgingDelay: attempt │ ... first OK or fatal status wins; the
//!                       others are dropped (RST_STREAM CANCEL on the wire)
//! ```
//!
//! An attempt is committed once the response headers arrived: it is never retried after that.
//! The caller bounds all attempts by the call's deadline.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tonic::{Code, Status};

use super::endpoint::Picked;
use super::service_config::{HedgingPolicy, Policy, RetryPolicy, Throttling};

/// How an attempt failed.
pub(super) struct Failure {
    pub status: Status,
    /// Response headers (or a message) arrived: the call is the server's now.
    pub committed: bool,
    /// The request never reached a server (no connection, stream refused): safe to send
    /// again whatever the policy (A6's transparent retry).
    pub unsent: bool,
}

impl Failure {
    pub fn uncommitted(status: Status) -> Failure {
        Failure {
            status,
            committed: false,
            unsent: false,
        }
    }
}

/// What a call's attempts record (the metrics of its method).
pub(super) trait Record: Sync {
    fn attempt_started(&self);
    fn attempt_done(&self, code: Code, elapsed: Duration);
    fn call_done(&self, code: Code, elapsed: Duration);
    fn retried(&self);
    fn hedged(&self);
    fn throttled(&self);
}

impl Record for super::metrics::MethodMetrics {
    fn attempt_started(&self) {
        super::metrics::MethodMetrics::attempt_started(self);
    }
    fn attempt_done(&self, code: Code, elapsed: Duration) {
        super::metrics::MethodMetrics::attempt_done(self, code, elapsed);
    }
    fn call_done(&self, code: Code, elapsed: Duration) {
        super::metrics::MethodMetrics::call_done(self, code, elapsed);
    }
    fn retried(&self) {
        super::metrics::MethodMetrics::retried(self);
    }
    fn hedged(&self) {
        super::metrics::MethodMetrics::hedged(self);
    }
    fn throttled(&self) {
        super::metrics::MethodMetrics::throttled(self);
    }
}

/// `retryThrottling` state of one target (A6): a token bucket; retries and hedges stop while
/// it is at or below half full. Stored in thousandths (the ratio has three decimals).
pub(super) struct Throttle {
    milli: AtomicU64,
    max: u64,
    ratio: u64,
}

impl Throttle {
    pub fn new(t: &Throttling) -> Throttle {
        let max = (t.max_tokens * 1000.0).round() as u64;
        Throttle {
            milli: AtomicU64::new(max),
            max,
            ratio: (t.token_ratio * 1000.0).round() as u64,
        }
    }

    fn allows(&self) -> bool {
        self.milli.load(Ordering::Relaxed) > self.max / 2
    }

    fn failure(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(1000))
            });
    }

    pub fn success(&self) {
        let _ = self
            .milli
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some((v + self.ratio).min(self.max))
            });
    }
}

/// Throttling, when the target has it.
fn allows(t: Option<&Throttle>) -> bool {
    t.is_none_or(Throttle::allows)
}

/// What the server asked of retries (`grpc-retry-pushback-ms`).
#[derive(Debug, PartialEq, Eq)]
enum Pushback {
    /// None given: the policy's backoff.
    Backoff,
    /// Wait exactly this long.
    After(Duration),
    /// Negative or unreadable: do not retry.
    Stop,
}

fn pushback(st: &Status) -> Pushback {
    match st.metadata().get("grpc-retry-pushback-ms") {
        None => Pushback::Backoff,
        Some(v) => match v.to_str().ok().and_then(|s| s.trim().parse::<i64>().ok()) {
            Some(ms) if ms >= 0 => Pushback::After(Duration::from_millis(ms as u64)),
            _ => Pushback::Stop,
        },
    }
}

/// Runs a call's attempts under `policy`. `pick` waits for an endpoint; `attempt(previous,
/// picked)` is one attempt, `previous` being the number of attempts before it (the
/// `grpc-previous-rpc-attempts` header when > 0).
pub(super) async fn run<T, P, PF, A, AF>(
    policy: Option<&Policy>,
    throttle: Option<&Throttle>,
    rec: &dyn Record,
    pick: P,
    attempt: A,
) -> Result<T, Status>
where
    P: Fn() -> PF,
    PF: Future<Output = Result<Picked, Status>>,
    A: Fn(u32, Picked) -> AF,
    AF: Future<Output = Result<T, Failure>>,
{
    match policy {
        None => single(rec, pick, attempt).await,
        Some(Policy::Retry(p)) => retry(p, throttle, rec, pick, attempt).await,
        Some(Policy::Hedging(p)) => hedge(p, throttle, rec, pick, attempt).await,
    }
}

/// One attempt, once more if it never left the client.
async fn single<T, P, PF, A, AF>(rec: &dyn Record, pick: P, attempt: A) -> Result<T, Status>
where
    P: Fn() -> PF,
    PF: Future<Output = Result<Picked, Status>>,
    A: Fn(u32, Picked) -> AF,
    AF: Future<Output = Result<T, Failure>>,
{
    let mut transparent = 1;
    let mut n = 0;
    loop {
        match timed(rec, picked_attempt(&pick, &attempt, n)).await {
            Ok(v) => return Ok(v),
            Err(f) if f.unsent && transparent > 0 => transparent -= 1,
            Err(f) => return Err(f.status),
        }
        n += 1;
    }
}

/// One attempt: its pick (a failed pick is an uncommitted failure, retried as the policy
/// says), then the exchange.
async fn picked_attempt<T, P, PF, A, AF>(pick: &P, attempt: &A, n: u32) -> Result<T, Failure>
where
    P: Fn() -> PF,
    PF: Future<Output = Result<Picked, Status>>,
    A: Fn(u32, Picked) -> AF,
    AF: Future<Output = Result<T, Failure>>,
{
    let picked = pick().await.map_err(Failure::uncommitted)?;
    attempt(n, picked).await
}

/// An attempt, its pick included, recorded (as CANCELLED if it is dropped unfinished: a hedge that lost, a call
/// Lua let go of).
async fn timed<T>(
    rec: &dyn Record,
    work: impl Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    let mut clock = Clock::attempt(rec);
    let r = work.await;
    clock.stop(match &r {
        Ok(_) => Code::Ok,
        Err(f) => f.status.code(),
    });
    r
}

/// Records the time from its start to [`Clock::stop`], or CANCELLED when dropped before.
pub(super) struct Clock<'a> {
    rec: &'a dyn Record,
    started: std::time::Instant,
    done: fn(&dyn Record, Code, Duration),
    stopped: bool,
}

impl<'a> Clock<'a> {
    /// An attempt's clock (the attempt counted started).
    fn attempt(rec: &'a dyn Record) -> Clock<'a> {
        rec.attempt_started();
        Clock {
            rec,
            started: std::time::Instant::now(),
            done: |r, c, e| r.attempt_done(c, e),
            stopped: false,
        }
    }

    /// A whole call's clock.
    pub fn call(rec: &'a dyn Record) -> Clock<'a> {
        Clock {
            rec,
            started: std::time::Instant::now(),
            done: |r, c, e| r.call_done(c, e),
            stopped: false,
        }
    }

    pub fn stop(&mut self, code: Code) {
        if !std::mem::replace(&mut self.stopped, true) {
            (self.done)(self.rec, code, self.started.elapsed());
        }
    }
}

impl Drop for Clock<'_> {
    fn drop(&mut self) {
        self.stop(Code::Cancelled);
    }
}

async fn retry<T, P, PF, A, AF>(
    p: &RetryPolicy,
    throttle: Option<&Throttle>,
    rec: &dyn Record,
    pick: P,
    attempt: A,
) -> Result<T, Status>
where
    P: Fn() -> PF,
    PF: Future<Output = Result<Picked, Status>>,
    A: Fn(u32, Picked) -> AF,
    AF: Future<Output = Result<T, Failure>>,
{
    let mut backoff = Backoff::new(p);
    let mut n = 0u32;
    loop {
        let f = match timed(rec, picked_attempt(&pick, &attempt, n)).await {
            Ok(v) => {
                throttle.map(Throttle::success);
                return Ok(v);
            }
            Err(f) => f,
        };
        n += 1;
        match backoff.after(&f, n, throttle, rec) {
            Some(delay) => tokio::time::sleep(delay).await,
            None => return Err(f.status),
        }
    }
}

/// A retry policy's state over one call's attempts.
pub(super) struct Backoff<'a> {
    p: &'a RetryPolicy,
    next: Duration,
}

impl<'a> Backoff<'a> {
    pub fn new(p: &'a RetryPolicy) -> Backoff<'a> {
        Backoff {
            p,
            next: p.initial_backoff,
        }
    }

    /// After failure `f` of attempt `n` (1-based), how long to wait before the next attempt,
    /// or `None`: the failure is the call's (committed, not retryable, attempts or tokens used
    /// up, the server said no). Counts the failure in `throttle`, and the retry in `rec`.
    pub fn after(
        &mut self,
        f: &Failure,
        n: u32,
        throttle: Option<&Throttle>,
        rec: &dyn Record,
    ) -> Option<Duration> {
        let p = self.p;
        let retryable = p.retryable.contains(&f.status.code());
        let push = pushback(&f.status);
        if retryable || push == Pushback::Stop {
            throttle.map(Throttle::failure);
        } else {
            throttle.map(Throttle::success);
        }
        if f.committed || !(retryable || f.unsent) || n >= p.max_attempts || push == Pushback::Stop
        {
            return None;
        }
        if !allows(throttle) {
            rec.throttled();
            return None;
        }
        let delay = match push {
            Pushback::After(d) => {
                self.next = p.initial_backoff;
                d
            }
            _ => {
                let d = self.next.mul_f64(fastrand::f64());
                self.next = self.next.mul_f64(p.backoff_multiplier).min(p.max_backoff);
                d
            }
        };
        rec.retried();
        Some(delay)
    }
}

async fn hedge<T, P, PF, A, AF>(
    p: &HedgingPolicy,
    throttle: Option<&Throttle>,
    rec: &dyn Record,
    pick: P,
    attempt: A,
) -> Result<T, Status>
where
    P: Fn() -> PF,
    PF: Future<Output = Result<Picked, Status>>,
    A: Fn(u32, Picked) -> AF,
    AF: Future<Output = Result<T, Failure>>,
{
    // One attempt: pick, then run; each hedge is the same future type.
    let one = |n: u32| {
        let pick = &pick;
        let attempt = &attempt;
        timed(rec, picked_attempt(pick, attempt, n))
    };
    let mut running = FuturesUnordered::new();
    running.push(one(0));
    let mut launched = 1u32;
    let mut next = tokio::time::Instant::now() + p.hedging_delay;
    let mut last: Option<Status> = None;
    loop {
        let more = launched < p.max_attempts;
        tokio::select! {
            r = running.next(), if !running.is_empty() => {
                let f = match r {
                    Some(Ok(v)) => {
                        throttle.map(Throttle::success);
                        return Ok(v);
                    }
                    Some(Err(f)) => f,
                    None => continue,
                };
                let non_fatal = p.non_fatal.contains(&f.status.code());
                // A committed attempt's end is the call's (A6).
                if !non_fatal || f.committed {
                    throttle.map(Throttle::success);
                    return Err(f.status);
                }
                throttle.map(Throttle::failure);
                match pushback(&f.status) {
                    Pushback::Stop => launched = p.max_attempts,
                    Pushback::After(d) => next = tokio::time::Instant::now() + d,
                    // A6: after a non-fatal failure, the next hedge goes at once.
                    Pushback::Backoff => next = tokio::time::Instant::now(),
                }
                last = Some(f.status);
                if running.is_empty() && launched >= p.max_attempts {
                    return Err(last.unwrap_or_else(|| Status::unavailable("hedging: no attempt left")));
                }
            }
            () = tokio::time::sleep_until(next), if more => {
                if !allows(throttle) {
                    rec.throttled();
                    launched = p.max_attempts;
                    if running.is_empty() {
                        return Err(last.unwrap_or_else(|| Status::unavailable("hedging throttled")));
                    }
                    continue;
                }
                rec.hedged();
                running.push(one(launched));
                launched += 1;
                next = tokio::time::Instant::now() + p.hedging_delay;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_stops_at_half_and_recovers_by_ratio() {
        let t = Throttle::new(&Throttling {
            max_tokens: 10.0,
            token_ratio: 0.5,
        });
        assert!(t.allows());
        for _ in 0..5 {
            t.failure();
        }
        assert!(!t.allows(), "5 of 10 tokens: at half, no retries");
        t.success();
        assert!(t.allows(), "5.5 > 5");
        for _ in 0..100 {
            t.success();
        }
        assert_eq!(t.milli.load(Ordering::Relaxed), 10_000, "capped at max");
    }

    #[test]
    fn pushback_values() {
        let mut st = Status::unavailable("x");
        assert_eq!(pushback(&st), Pushback::Backoff);
        st.metadata_mut()
            .insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        assert_eq!(pushback(&st), Pushback::After(Duration::from_millis(250)));
        st.metadata_mut()
            .insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(pushback(&st), Pushback::Stop);
        st.metadata_mut()
            .insert("grpc-retry-pushback-ms", "soon".parse().unwrap());
        assert_eq!(pushback(&st), Pushback::Stop);
    }
}
