//! The unary call: one request message, one response message, headers and trailers kept
//! apart (as tonic's own unary call, which would drop both), bounded by the call's deadline
//! even when the server ignores `grpc-timeout`.

use std::time::Duration;

use tonic::{Code, Status};

use super::channel::Conn;
use super::metadata::{metadata_list, request};
use super::op::{CallSpec, OpResult, Received};
use super::status::{deadline_exceeded, local_status, second_response_message};
use crate::codec::ArenaCodec;

/// Runs the unary `call` on `conn` to its end, or to its deadline `timeout` from the first
/// poll.
pub(super) async fn call(
    conn: Conn,
    codec: ArenaCodec,
    call: CallSpec,
    timeout: Option<Duration>,
) -> OpResult {
    let started = tokio::time::Instant::now();
    let work = exchange(conn, codec, call, timeout);
    match timeout {
        // The server gets `grpc-timeout`; this bound holds even when it ignores it.
        Some(t) => match tokio::time::timeout(t, work).await {
            Ok(Err(_)) if started.elapsed() >= t => Err(deadline_exceeded()),
            Ok(r) => r,
            Err(_) => Err(deadline_exceeded()),
        },
        None => work.await,
    }
}

/// The request out, the one response message and the trailers in.
async fn exchange(
    conn: Conn,
    codec: ArenaCodec,
    mut call: CallSpec,
    timeout: Option<Duration>,
) -> OpResult {
    let payload = std::mem::take(&mut call.payload);
    let (req, path) = request(tokio_stream::once(payload), &call, timeout)?;
    let mut client = conn.client(call.compression.as_deref())?;
    client
        .ready()
        .await
        .map_err(|e| Status::new(Code::Unavailable, e.to_string()))?;
    let (headers, mut body, _) = client
        .streaming(req, path, codec)
        .await
        .map_err(local_status)?
        .into_parts();
    let message = body
        .message()
        .await
        .map_err(local_status)?
        .ok_or_else(|| Status::internal("missing response message"))?;
    // tonic's `trailers()` would drop further messages unseen.
    if body.message().await.map_err(local_status)?.is_some() {
        return Err(second_response_message());
    }
    let trailers = body.trailers().await.map_err(local_status)?;
    let want = call.want_metadata;
    Ok(Received {
        message: Some(message),
        stream_id: 0,
        headers: want.then(|| metadata_list(&headers)),
        trailers: want.then(|| trailers.as_ref().map(metadata_list).unwrap_or_default()),
    })
}
