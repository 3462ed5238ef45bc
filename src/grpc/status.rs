//! The statuses this client reports for what happened on its side, in grpc-go's words: local
//! and transport failures ([`local_status`]), a passed deadline (any failure seen at or after
//! it, [`at_deadline`]), a message over a limit, a second response message where the call has
//! one. Statuses a server sent pass through unchanged.

use tonic::{Code, Status};

/// The status codes by number, named as in `google.rpc.Code` (service configs name them so;
/// the metrics' `grpc.status` attribute too).
pub(super) const CODE_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Statuses made by the local side mapped to what grpc-go reports: transport failures are
/// UNAVAILABLE ([`transport_is_unavailable`]), a received message over the limit is
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), and tonic's own `grpc-timeout` timer
/// (`TimeoutExpired`, which tonic reports as CANCELLED "Timeout expired") is
/// DEADLINE_EXCEEDED: it fires at the call's deadline, racing ours.
pub(super) fn local_status(st: Status) -> Status {
    if timeout_expired(&st) {
        return deadline_exceeded();
    }
    if st.code() == Code::OutOfRange
        && st
            .message()
            .starts_with("Error, decoded message length too large")
    {
        return Status::resource_exhausted(format!(
            "received message larger than max: {}",
            st.message()
        ));
    }
    transport_is_unavailable(st)
}

/// A call that failed in the local transport is reported as grpc-go reports it. Such statuses
/// carry the transport error as their source; statuses sent by a server have none and pass
/// through unchanged.
/// - A stream reset (RST_STREAM from the server, or sent by h2 over the server's protocol
///   error): the code of the gRPC HTTP/2 spec for its reason (INTERNAL for most, UNAVAILABLE
///   for REFUSED_STREAM, ...). tonic maps these only when built with its `server` feature.
/// - An error of the HTTP/2 connection as a whole (a GOAWAY, the socket failing, a peer that
///   does not speak HTTP/2), a refused TLS handshake, a connection closed before any response:
///   UNAVAILABLE. tonic says UNKNOWN "transport error", CANCELLED or INTERNAL, depending on
///   when the call saw it.
fn transport_is_unavailable(st: Status) -> Status {
    let Some(local) = std::error::Error::source(&st) else {
        return st;
    };
    match h2_error(local) {
        Some(h2) if h2.is_reset() => {
            let reason = h2.reason().unwrap_or(h2::Reason::INTERNAL_ERROR);
            return Status::new(
                code_of_reset(reason),
                format!("stream terminated by RST_STREAM with error code: {reason:?}"),
            );
        }
        Some(h2) if h2.is_go_away() || h2.is_io() => {
            return Status::unavailable(format!("{}: {local}", st.message()));
        }
        _ => {}
    }
    match st.code() {
        Code::Unknown | Code::Cancelled => {
            Status::unavailable(format!("{}: {local}", st.message()))
        }
        _ => st,
    }
}

/// Whether tonic's `grpc-timeout` timer ended the call (a `TimeoutExpired` in the source chain).
fn timeout_expired(st: &Status) -> bool {
    let mut e = std::error::Error::source(st);
    while let Some(err) = e {
        if err.is::<tonic::TimeoutExpired>() {
            return true;
        }
        e = err.source();
    }
    false
}

/// A failure observed at or after the call's deadline is DEADLINE_EXCEEDED, whatever error
/// tonic or the transport reported at that moment (grpc-go reports the context's error once
/// the deadline has passed). Statuses the server sent before the deadline pass unchanged.
pub(super) fn at_deadline(st: Status, deadline: Option<tokio::time::Instant>) -> Status {
    match deadline {
        Some(d) if tokio::time::Instant::now() >= d => deadline_exceeded(),
        _ => st,
    }
}

/// The first HTTP/2 error in `e`'s source chain.
fn h2_error<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a h2::Error> {
    let mut e = Some(e);
    while let Some(err) = e {
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return Some(h2);
        }
        e = err.source();
    }
    None
}

/// The gRPC code of an RST_STREAM reason (PROTOCOL-HTTP2.md, "Errors").
fn code_of_reset(reason: h2::Reason) -> Code {
    match reason {
        h2::Reason::REFUSED_STREAM => Code::Unavailable,
        h2::Reason::CANCEL => Code::Cancelled,
        h2::Reason::ENHANCE_YOUR_CALM => Code::ResourceExhausted,
        h2::Reason::INADEQUATE_SECURITY => Code::PermissionDenied,
        _ => Code::Internal,
    }
}

/// What a call past its deadline reports, whatever the server or the transport said at that
/// moment (as grpc-go does when the context's deadline has passed).
pub(super) fn deadline_exceeded() -> Status {
    Status::deadline_exceeded("deadline exceeded")
}

/// A message of `len` bytes over the connection's `max_send`: RESOURCE_EXHAUSTED, in grpc-go's
/// words.
pub(super) fn too_large_to_send(len: usize, max_send: usize) -> Status {
    Status::resource_exhausted(format!(
        "trying to send message larger than max ({len} vs. {max_send})"
    ))
}

/// A second response message on a call that has one (unary, client-streaming): INTERNAL, in
/// grpc-go's words.
pub(super) fn second_response_message() -> Status {
    Status::internal(
        "cardinality violation: expected <EOF> for non server-streaming RPCs, but received \
         another message",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resets_map_to_the_codes_of_the_http2_spec() {
        assert_eq!(code_of_reset(h2::Reason::REFUSED_STREAM), Code::Unavailable);
        assert_eq!(code_of_reset(h2::Reason::CANCEL), Code::Cancelled);
        assert_eq!(code_of_reset(h2::Reason::PROTOCOL_ERROR), Code::Internal);
        assert_eq!(deadline_exceeded().code(), Code::DeadlineExceeded);
    }

    #[test]
    fn server_statuses_pass_through() {
        let st = local_status(Status::unknown("from the server"));
        assert_eq!(
            (st.code(), st.message()),
            (Code::Unknown, "from the server")
        );
        let st = local_status(Status::out_of_range(
            "Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes",
        ));
        assert_eq!(st.code(), Code::ResourceExhausted);
    }

    #[test]
    fn tonic_timeouts_and_failures_after_the_deadline_are_deadline_exceeded() {
        let st = Status::from_error(Box::new(tonic::TimeoutExpired(())));
        assert_eq!(local_status(st).code(), Code::DeadlineExceeded);
        let past = Some(tokio::time::Instant::now());
        let st = at_deadline(Status::unavailable("transport error"), past);
        assert_eq!(st.code(), Code::DeadlineExceeded);
        let future = Some(tokio::time::Instant::now() + std::time::Duration::from_secs(60));
        let st = at_deadline(Status::unavailable("transport error"), future);
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(
            at_deadline(Status::internal("x"), None).code(),
            Code::Internal
        );
    }
}
