//! Streaming calls (client, server and bidi). Each stream is a driver task that owns tonic's
//! response (headers, messages, trailers) and answers Lua's receive operations in order; sends
//! go straight into the bounded channel that tonic's request body reads.
//!
//! ```text
//! Lua send ─► op task ─► outbound mpsc (2) ─► tonic request body ─► h2
//! Lua recv ─► op task ─► Waiter ─► driver: open ► headers ► message… ► trailers / status
//!                         oneshot ◄──────────┘
//! cancel (stream:close(), GC, abandoned op) ─► entry removed, driver aborted ─► RST_STREAM
//! ```
//!
//! The deadline is the driver's: when it passes, the response is dropped (RST_STREAM CANCEL on
//! the wire) and every later operation reports DEADLINE_EXCEEDED.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use tokio::time::Instant;
use tonic::{Code, Response, Status, Streaming};

use super::channel::Conn;
use super::endpoint::Picked;
use super::metadata::{metadata_list, request};
use super::metrics::MethodMetrics;
use super::op::{CallSpec, Kind, OpResult, Received};
use super::replay::Replay;
use super::retry::{Backoff, Failure};
use super::service_config::{Policy, RetryPolicy};
use super::status::{
    at_deadline, deadline_exceeded, local_status, second_response_message, too_large_to_send,
};
use super::unary::refused;
use crate::codec::{ArenaCodec, Inbound};

/// Messages queued between a `send` and tonic (a send is answered once queued).
const OUTBOUND_QUEUE: usize = 2;

/// What a waiting operation wants from the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// The next message, or the end of the stream.
    Message,
    /// The response headers.
    Headers,
    /// The one response message of a client-streaming call, once the call has ended.
    Finish,
    /// The final status (after a send found the stream gone).
    Final,
}

struct Waiter {
    want: Want,
    tx: oneshot::Sender<OpResult>,
}

struct Entry {
    /// `None` once half-closed (or for server streaming, whose one message is queued at open).
    outbound: Option<mpsc::Sender<Bytes>>,
    waiters: mpsc::UnboundedSender<Waiter>,
    driver: AbortHandle,
    deadline: Option<Instant>,
    max_send: usize,
    /// Set by the driver once the call has ended (sends then report how).
    ended: Arc<AtomicBool>,
}

/// The open streams of an instance, by id.
#[derive(Default)]
pub(super) struct Streams {
    map: Mutex<HashMap<u64, Entry>>,
}

fn unknown(id: u64) -> Status {
    Status::failed_precondition(format!("unknown or closed stream {id}"))
}

/// Hands `want` to the driver and waits for its answer.
async fn ask(waiters: &mpsc::UnboundedSender<Waiter>, want: Want) -> OpResult {
    let (tx, rx) = oneshot::channel();
    if waiters.send(Waiter { want, tx }).is_err() {
        return Err(Status::cancelled("stream cancelled"));
    }
    rx.await
        .unwrap_or_else(|_| Err(Status::cancelled("stream cancelled")))
}

impl Streams {
    fn map(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        self.map.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Streams registered.
    pub(super) fn len(&self) -> usize {
        self.map().len()
    }

    /// Starts a stream under `id`: its driver opens the call on the wire at once (on `rt`).
    pub(super) fn open(
        &self,
        rt: &Handle,
        id: u64,
        conn: Conn,
        codec: ArenaCodec,
        mut call: CallSpec,
        timeout: Option<Duration>,
    ) -> Result<(), Status> {
        let method = conn.target.config.method(&call.path);
        let wait_for_ready = method.and_then(|m| m.wait_for_ready).unwrap_or(false);
        let max_recv = conn.max_recv_for(method);
        let max_send = conn.max_send_for(method);
        let timeout = match (timeout, method.and_then(|m| m.timeout)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let outbound = if call.kind == Kind::ServerStreaming {
            // The one request goes in now; the channel closes with the sender.
            out_tx
                .try_send(std::mem::take(&mut call.payload))
                .map_err(|_| Status::internal("outbound queue"))?;
            None
        } else {
            Some(out_tx)
        };
        // Checked now, so that a bad path or metadata fails the open, not the first attempt.
        request(tokio_stream::empty::<Bytes>(), &call, timeout, 0)?;
        let retry = match method.and_then(|m| m.policy.as_ref()) {
            Some(Policy::Retry(p)) => Some(p.clone()),
            _ => None,
        };
        let replay = Replay::new(out_rx, retry.as_ref().map_or(0, |p| p.per_rpc_buffer_limit));
        let deadline = timeout.map(|t| Instant::now() + t);
        let (wtx, wrx) = mpsc::unbounded_channel();
        let rec = conn.target.metrics.method(&call.path);
        let clock = StreamClock::start(Arc::clone(&rec));
        let opening = open_attempts(
            conn,
            codec,
            call,
            deadline,
            wait_for_ready,
            max_recv,
            retry,
            replay,
            rec,
        );
        let ended = Arc::new(AtomicBool::new(false));
        let driver = rt
            .spawn(drive(opening, wrx, deadline, Arc::clone(&ended), clock))
            .abort_handle();
        self.map().insert(
            id,
            Entry {
                outbound,
                waiters: wtx,
                driver,
                deadline,
                max_send,
                ended,
            },
        );
        Ok(())
    }

    /// Queues a message on stream `id`. The stream is looked up now; the returned future
    /// (run on the runtime) waits for room in the outbound queue.
    pub(super) fn send(
        &self,
        id: u64,
        payload: Bytes,
    ) -> impl Future<Output = OpResult> + Send + 'static {
        let found = self.map().get(&id).map(|e| {
            let ended = Arc::clone(&e.ended);
            (
                e.outbound.clone(),
                e.waiters.clone(),
                e.deadline,
                e.max_send,
                ended,
            )
        });
        let checked = match found {
            None => Err(unknown(id)),
            Some((None, ..)) => Err(Status::failed_precondition("send after close_send")),
            Some((Some(_), _, _, max_send, _)) if payload.len() > max_send => {
                Err(too_large_to_send(payload.len(), max_send))
            }
            Some((Some(tx), waiters, deadline, _, ended)) => {
                Ok((tx, waiters, deadline, ended, payload))
            }
        };
        // A refused payload is dropped here, its slot freed at once.
        async move {
            let (tx, waiters, deadline, ended, payload) = checked?;
            if ended.load(Ordering::Acquire) {
                return ask(&waiters, Want::Final).await;
            }
            let sent = match deadline {
                Some(d) => match tokio::time::timeout_at(d, tx.send(payload)).await {
                    Ok(r) => r.map_err(|_| ()),
                    Err(_) => return Err(deadline_exceeded()),
                },
                None => tx.send(payload).await.map_err(|_| ()),
            };
            match sent {
                Ok(()) => Ok(Received::default()),
                // tonic dropped the request body: the call is over; report how it ended.
                Err(()) => ask(&waiters, Want::Final).await,
            }
        }
    }

    /// The next message of stream `id` (or its headers).
    pub(super) fn recv(
        &self,
        id: u64,
        headers_only: bool,
    ) -> impl Future<Output = OpResult> + Send + 'static {
        let waiters = self.map().get(&id).map(|e| e.waiters.clone());
        let want = if headers_only {
            Want::Headers
        } else {
            Want::Message
        };
        async move {
            let waiters = waiters.ok_or_else(|| unknown(id))?;
            ask(&waiters, want).await
        }
    }

    /// Half-closes stream `id` now; with `finish`, the returned future answers with the
    /// response once the call ended.
    pub(super) fn close_send(
        &self,
        id: u64,
        finish: bool,
    ) -> impl Future<Output = OpResult> + Send + 'static {
        let finishing = match self.map().get_mut(&id) {
            None => Err(unknown(id)),
            Some(e) => {
                // Dropping the sender ends tonic's request body: END_STREAM after queued
                // messages.
                e.outbound = None;
                Ok(finish.then(|| e.waiters.clone()))
            }
        };
        async move {
            match finishing? {
                Some(waiters) => ask(&waiters, Want::Finish).await,
                None => Ok(Received::default()),
            }
        }
    }

    /// Forgets stream `id`; if it is still on the wire, cancels it (RST_STREAM CANCEL), and
    /// operations waiting on it end with CANCELLED.
    pub(super) fn cancel(&self, id: u64) -> bool {
        let entry = self.map().remove(&id);
        match entry {
            Some(e) => {
                e.driver.abort();
                true
            }
            None => false,
        }
    }
}

/// Opens the stream on the wire: an attempt on a picked endpoint, and (with a retryPolicy)
/// more while the call is uncommitted and its messages fit the replay buffer; an attempt that
/// never left the client goes once more whatever the policy. Response headers commit the call.
#[allow(clippy::too_many_arguments)]
async fn open_attempts(
    conn: Conn,
    codec: ArenaCodec,
    call: CallSpec,
    deadline: Option<Instant>,
    wait_for_ready: bool,
    max_recv: usize,
    retry: Option<RetryPolicy>,
    replay: Arc<Replay>,
    rec: Arc<MethodMetrics>,
) -> Result<Opened, Status> {
    let mut backoff = retry.as_ref().map(Backoff::new);
    let mut transparent = 1;
    let mut n = 0u32;
    loop {
        rec.attempt_started();
        let t0 = std::time::Instant::now();
        let failure = match open_once(
            &conn,
            codec.clone(),
            &call,
            deadline,
            wait_for_ready,
            max_recv,
            &replay,
            n,
        )
        .await
        {
            Ok(opened) => {
                replay.commit();
                if let Some(t) = conn.target.throttle.as_ref() {
                    t.success();
                }
                return Ok(opened);
            }
            Err(f) => f,
        };
        rec.attempt_done(failure.status.code(), t0.elapsed());
        n += 1;
        let delay = match backoff.as_mut() {
            Some(b) if replay.replayable() => {
                b.after(&failure, n, conn.target.throttle.as_ref(), &*rec)
            }
            _ if failure.unsent && transparent > 0 && replay.replayable() => {
                transparent -= 1;
                Some(Duration::ZERO)
            }
            _ => None,
        };
        match delay {
            Some(d) => tokio::time::sleep(d).await,
            None => return Err(failure.status),
        }
    }
}

/// One attempt at opening: pick, ready, request head (`grpc-previous-rpc-attempts` on a
/// retry), the response headers.
#[allow(clippy::too_many_arguments)]
async fn open_once(
    conn: &Conn,
    codec: ArenaCodec,
    call: &CallSpec,
    deadline: Option<Instant>,
    wait_for_ready: bool,
    max_recv: usize,
    replay: &Arc<Replay>,
    previous: u32,
) -> Result<Opened, Failure> {
    let picked = conn
        .target
        .balancer
        .pick(wait_for_ready)
        .await
        .map_err(Failure::uncommitted)?;
    let timeout = deadline.map(|d| d.saturating_duration_since(Instant::now()));
    let (req, path) =
        request(replay.body(), call, timeout, previous).map_err(Failure::uncommitted)?;
    let mut grpc = conn
        .client(
            picked.connection.clone(),
            call.compression.as_deref(),
            max_recv,
        )
        .map_err(Failure::uncommitted)?;
    if let Err(e) = grpc.ready().await {
        return Err(Failure {
            status: Status::unavailable(e.to_string()),
            committed: false,
            unsent: true,
        });
    }
    match grpc.streaming(req, path, codec).await {
        // The stream counts in flight on its endpoint while it runs.
        Ok(resp) => Ok((resp, picked)),
        Err(st) => Err(Failure {
            unsent: refused(&st),
            status: local_status(st),
            committed: false,
        }),
    }
}

/// A stream's metrics: the call and its last attempt end with the stream (CANCELLED if the
/// driver is dropped first: Lua closed or forgot the stream).
struct StreamClock {
    rec: Arc<MethodMetrics>,
    started: std::time::Instant,
    /// When the attempt that went on (the committed one) started.
    attempt: std::time::Instant,
    done: bool,
}

impl StreamClock {
    fn start(rec: Arc<MethodMetrics>) -> StreamClock {
        let now = std::time::Instant::now();
        StreamClock {
            rec,
            started: now,
            attempt: now,
            done: false,
        }
    }

    /// The committed attempt began now-ish (its headers arrived).
    fn committed(&mut self, attempt_started: std::time::Instant) {
        self.attempt = attempt_started;
    }

    fn end(&mut self, code: Code, with_attempt: bool) {
        if std::mem::replace(&mut self.done, true) {
            return;
        }
        if with_attempt {
            self.rec.attempt_done(code, self.attempt.elapsed());
        }
        self.rec.call_done(code, self.started.elapsed());
    }
}

impl Drop for StreamClock {
    fn drop(&mut self) {
        self.end(Code::Cancelled, true);
    }
}

/// The call on the wire, and the endpoint it went to (counted in flight while the driver runs).
type Opened = (Response<Streaming<Inbound>>, Picked);

type Opening = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Opened, Status>> + Send>>;

/// How the call ended: its trailers, or its status.
type End = Result<Vec<(String, Vec<u8>)>, Status>;

/// A stream's driver: opens the call, then serves waiters in order until it is aborted (the
/// entry was removed) or every sender of waiters is gone.
async fn drive(
    opening: impl std::future::Future<Output = Result<Opened, Status>> + Send + 'static,
    mut waiters: mpsc::UnboundedReceiver<Waiter>,
    deadline: Option<Instant>,
    ended: Arc<AtomicBool>,
    mut clock: StreamClock,
) {
    let mut opening: Option<Opening> = Some(Box::pin(opening));
    // Whether an attempt is open on the wire (its end is recorded with the call's).
    let mut attempt_open = false;
    let mut _endpoint: Option<Picked> = None;
    let mut body: Option<Streaming<Inbound>> = None;
    let mut headers: Option<Vec<(String, Vec<u8>)>> = None;
    let mut headers_sent = false;
    let mut end: Option<End> = None;
    let mut finish_msg: Option<Inbound> = None;
    let mut queue: VecDeque<Waiter> = VecDeque::new();

    loop {
        if let Some(e) = &end {
            ended.store(true, Ordering::Release);
            clock.end(
                e.as_ref().map_or_else(Status::code, |_| Code::Ok),
                attempt_open,
            );
        }
        // Answer whatever can be answered without waiting.
        while let Some(w) = queue.front() {
            let want = w.want;
            let r = match (&end, want) {
                (Some(Err(st)), _) => Err(st.clone()),
                (Some(Ok(trailers)), Want::Message) => Ok(Received {
                    trailers: Some(trailers.clone()),
                    ..Default::default()
                }),
                (Some(Ok(trailers)), Want::Finish) => match finish_msg.take() {
                    Some(m) => Ok(Received {
                        message: Some(m),
                        trailers: Some(trailers.clone()),
                        ..Default::default()
                    }),
                    None => Err(Status::internal("missing response message")),
                },
                (Some(Ok(_)), Want::Final) => {
                    Err(Status::failed_precondition("the call has already ended"))
                }
                (_, Want::Headers) if headers.is_some() || end.is_some() => Ok(Received::default()),
                _ => break,
            };
            let Some(w) = queue.pop_front() else { break };
            answer(w, r, &headers, &mut headers_sent);
        }
        let want_message = end.is_none()
            && body.is_some()
            && matches!(
                queue.front().map(|w| w.want),
                Some(Want::Message | Want::Finish)
            );
        tokio::select! {
            // The deadline first: when it has passed it wins over whatever else is ready.
            biased;
            _ = sleep_until(deadline), if deadline.is_some() && end.is_none() => {
                // Dropping the response resets the stream on the wire.
                if opening.is_some() {
                    // The attempt being opened ends here too.
                    attempt_open = true;
                }
                opening = None;
                body = None;
                end = Some(Err(deadline_exceeded()));
            }
            w = waiters.recv() => match w {
                Some(w) => queue.push_back(w),
                None => return,
            },
            r = async { opening.as_mut().expect("guarded by the branch condition").await },
                if opening.is_some() => {
                opening = None;
                match r {
                    Ok((resp, picked)) => {
                        _endpoint = Some(picked);
                        attempt_open = true;
                        clock.committed(std::time::Instant::now());
                        let (md, b, _) = resp.into_parts();
                        headers = Some(metadata_list(&md));
                        body = Some(b);
                    }
                    Err(st) => end = Some(Err(at_deadline(st, deadline))),
                }
            }
            m = async { body.as_mut().expect("guarded by the branch condition").message().await },
                if want_message => {
                match m {
                    Ok(Some(msg)) => {
                        if let Some(w) = queue.pop_front() {
                            if w.want == Want::Finish {
                                if finish_msg.is_some() {
                                    body = None;
                                    end = Some(Err(second_response_message()));
                                } else {
                                    finish_msg = Some(msg);
                                }
                                queue.push_front(w);
                            } else {
                                let r = Ok(Received { message: Some(msg), ..Default::default() });
                                answer(w, r, &headers, &mut headers_sent);
                            }
                        }
                    }
                    Ok(None) => {
                        let t = match body.as_mut() {
                            Some(b) => b.trailers().await,
                            None => Ok(None),
                        };
                        body = None;
                        end = Some(
                            t.map(|t| t.as_ref().map(metadata_list).unwrap_or_default())
                                .map_err(|st| at_deadline(local_status(st), deadline)),
                        );
                    }
                    Err(st) => {
                        body = None;
                        end = Some(Err(at_deadline(local_status(st), deadline)));
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Sends `r` to a waiter, with the response headers on the first answer that has them.
fn answer(
    w: Waiter,
    mut r: OpResult,
    headers: &Option<Vec<(String, Vec<u8>)>>,
    headers_sent: &mut bool,
) {
    if let Ok(rec) = &mut r {
        if (!*headers_sent || w.want == Want::Headers) && headers.is_some() {
            rec.headers = headers.clone();
            *headers_sent = true;
        }
    }
    // The waiter may be gone (its operation was aborted): nothing to do then.
    let _ = w.tx.send(r);
}
