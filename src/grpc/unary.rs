//! The unary call: one request message, one response message, headers and trailers kept
//! apart (as tonic's own unary call, which would drop both), its attempts bounded by the
//! call's deadline even when the server ignores `grpc-timeout`.

use std::time::Duration;

use tonic::{Code, Status};

use super::channel::Conn;
use super::endpoint::Picked;
use super::metadata::{metadata_list, request};
use super::op::{CallSpec, OpResult, Received};
use super::retry::{self, Clock, Failure};
use super::status::{deadline_exceeded, local_status, second_response_message};
use crate::codec::ArenaCodec;

/// Runs the unary `call` on `conn` to its end, or to its deadline `timeout` from the first
/// poll: its attempts as the method's config says (retry.rs), each on an endpoint the
/// balancer picks.
pub(super) async fn call(
    conn: Conn,
    codec: ArenaCodec,
    mut call: CallSpec,
    timeout: Option<Duration>,
) -> OpResult {
    let started = tokio::time::Instant::now();
    let method = conn.target.config.method(&call.path);
    let timeout = match (timeout, method.and_then(|m| m.timeout)) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let deadline = timeout.map(|t| started + t);
    let wait_for_ready = method.and_then(|m| m.wait_for_ready).unwrap_or(false);
    let max_recv = conn.max_recv_for(method);
    let payload = std::mem::take(&mut call.payload);
    let rec = conn.target.metrics.method(&call.path);
    let mut clock = Clock::call(&*rec);
    let work = retry::run(
        method.and_then(|m| m.policy.as_ref()),
        conn.target.throttle.as_ref(),
        &*rec,
        || conn.target.balancer.pick(wait_for_ready),
        // Boxed: an attempt's state (tonic's request and response futures) is kilobytes, and
        // every layer above (the retry loop, its timer, the call's deadline, the task's stage)
        // would otherwise hold and move it by value. (memmove is 8-10 % of the poll thread's
        // samples at 64 in flight, nearly all of it now inside h2.)
        |previous, picked| {
            Box::pin(exchange(
                &conn,
                codec.clone(),
                &call,
                payload.clone(),
                previous,
                deadline,
                max_recv,
                picked,
            ))
        },
    );
    let result = match timeout {
        // The server gets `grpc-timeout`; this bound holds even when it ignores it.
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(Err(_)) if started.elapsed() >= t => Err(deadline_exceeded()),
            Ok(r) => r,
            Err(_) => Err(deadline_exceeded()),
        },
        None => work.await,
    };
    clock.stop(result.as_ref().map_or_else(Status::code, |_| Code::Ok));
    result
}

/// One attempt: the request out, the one response message and the trailers in.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    conn: &Conn,
    codec: ArenaCodec,
    call: &CallSpec,
    payload: bytes::Bytes,
    previous: u32,
    deadline: Option<tokio::time::Instant>,
    max_recv: usize,
    picked: Picked,
) -> Result<Received, Failure> {
    let timeout = deadline.map(|d| d.saturating_duration_since(tokio::time::Instant::now()));
    let (req, path) = request(tokio_stream::once(payload), call, timeout, previous)
        .map_err(Failure::uncommitted)?;
    let mut client = conn
        .client(
            picked.connection.clone(),
            call.compression.as_deref(),
            max_recv,
        )
        .map_err(Failure::uncommitted)?;
    if let Err(e) = client.ready().await {
        return Err(Failure {
            status: Status::new(Code::Unavailable, e.to_string()),
            committed: false,
            unsent: true,
        });
    }
    let (headers, mut body, _) = match client.streaming(req, path, codec).await {
        Ok(r) => r.into_parts(),
        Err(st) => {
            let unsent = refused(&st);
            return Err(Failure {
                status: local_status(st),
                committed: false,
                unsent,
            });
        }
    };
    let committed = |st: Status| Failure {
        status: local_status(st),
        committed: true,
        unsent: false,
    };
    let message = body
        .message()
        .await
        .map_err(committed)?
        .ok_or_else(|| committed(Status::internal("missing response message")))?;
    // tonic's `trailers()` would drop further messages unseen.
    if body.message().await.map_err(committed)?.is_some() {
        return Err(Failure {
            status: second_response_message(),
            committed: true,
            unsent: false,
        });
    }
    let trailers = body.trailers().await.map_err(committed)?;
    drop(picked);
    let want = call.want_metadata;
    Ok(Received {
        message: Some(message),
        stream_id: 0,
        headers: want.then(|| metadata_list(&headers)),
        trailers: want.then(|| trailers.as_ref().map(metadata_list).unwrap_or_default()),
    })
}

/// The server refused the stream before reading it (RST_STREAM or GOAWAY with
/// REFUSED_STREAM): A6 lets it go again.
pub(super) fn refused(st: &Status) -> bool {
    let mut source = std::error::Error::source(st);
    while let Some(e) = source {
        if let Some(h2) = e.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = e.source();
    }
    false
}
