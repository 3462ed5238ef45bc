//! Responses that are not gRPC at all: a proxy's 502 page, a web server's 404, a plain HTTP
//! server on the target's port. tonic reads such a body as gRPC frames and reports whatever
//! the first bytes look like (`INTERNAL: invalid compression flag: 60` for `<html>`); grpc-go
//! looks at the response head first and maps the HTTP status (`UNAVAILABLE` for 502, 503,
//! 504 and 429, `UNIMPLEMENTED` for 404, ...). [`CheckedChannel`] does what grpc-go does, before
//! tonic sees the response.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::CONTENT_TYPE;
use http::StatusCode;
use tonic::body::Body;
use tonic::transport::channel::ResponseFuture;
use tonic::transport::Channel;
use tonic::{Code, Status};
use tower::Service;

/// A [`Channel`] whose responses without a gRPC status fail with the status grpc-go gives them
/// when they are not gRPC (a content type other than `application/grpc[+|;...]`, or an HTTP
/// status other than 200). The error is a boxed [`Status`], which tonic passes on unchanged.
#[derive(Clone, Debug)]
pub struct CheckedChannel(pub Channel);

impl Service<http::Request<Body>> for CheckedChannel {
    type Response = http::Response<Body>;
    type Error = tower::BoxError;
    type Future = CheckedResponse;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<Body>) -> CheckedResponse {
        CheckedResponse(self.0.call(req))
    }
}

/// The future of [`CheckedChannel::call`].
#[derive(Debug)]
pub struct CheckedResponse(ResponseFuture);

impl Future for CheckedResponse {
    type Output = Result<http::Response<Body>, tower::BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let resp = ready!(Pin::new(&mut self.0).poll(cx))?;
        Poll::Ready(match not_grpc(resp.status(), resp.headers()) {
            Some(st) => Err(Box::new(st)),
            None => Ok(resp),
        })
    }
}

/// The status of a response head that is not a gRPC response, as grpc-go reports it; `None`
/// for a gRPC response. A head that carries `grpc-status` (a trailers-only response) is left to
/// tonic, which reports that status.
fn not_grpc(status: StatusCode, headers: &http::HeaderMap) -> Option<Status> {
    if headers.contains_key("grpc-status") {
        return None;
    }
    let content_type = headers.get(CONTENT_TYPE);
    let grpc = content_type.is_some_and(|v| is_grpc_content_type(v.as_bytes()));
    if grpc && status == StatusCode::OK {
        return None;
    }
    let mut problems = Vec::with_capacity(2);
    if status != StatusCode::OK {
        problems.push(format!(
            "unexpected HTTP status code received from server: {} ({})",
            status.as_u16(),
            status.canonical_reason().unwrap_or("unknown")
        ));
    }
    if !grpc {
        problems.push(match content_type {
            Some(v) => format!(
                "transport: received unexpected content-type {:?}",
                String::from_utf8_lossy(v.as_bytes())
            ),
            None => "malformed header: missing HTTP content-type".to_owned(),
        });
    }
    Some(Status::new(
        code_of_http_status(status),
        problems.join("; "),
    ))
}

/// `application/grpc`, `application/grpc+proto`, `application/grpc;charset=...`.
fn is_grpc_content_type(v: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    v.len() >= GRPC.len()
        && v[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(v.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// grpc-go's table (`HTTPStatusConvTab`); UNKNOWN for the others, 200 included.
fn code_of_http_status(status: StatusCode) -> Code {
    match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(ct: Option<&str>, grpc_status: bool) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(CONTENT_TYPE, ct.parse().unwrap());
        }
        if grpc_status {
            h.insert("grpc-status", "5".parse().unwrap());
        }
        h
    }

    #[test]
    fn grpc_responses_pass() {
        for ct in [
            "application/grpc",
            "application/grpc+proto",
            "application/grpc;charset=utf-8",
            "Application/GRPC",
        ] {
            assert!(
                not_grpc(StatusCode::OK, &head(Some(ct), false)).is_none(),
                "{ct}"
            );
        }
        // Trailers-only responses are tonic's to read, whatever their head says.
        assert!(not_grpc(StatusCode::BAD_GATEWAY, &head(Some("text/html"), true)).is_none());
    }

    #[test]
    fn other_responses_map_like_grpc_go() {
        let st = not_grpc(StatusCode::BAD_GATEWAY, &head(Some("text/html"), false)).unwrap();
        assert_eq!(st.code(), Code::Unavailable);
        assert_eq!(
            st.message(),
            "unexpected HTTP status code received from server: 502 (Bad Gateway); \
             transport: received unexpected content-type \"text/html\""
        );
        let st = not_grpc(StatusCode::OK, &head(Some("application/grpcx"), false)).unwrap();
        assert_eq!(st.code(), Code::Unknown);
        let st = not_grpc(StatusCode::OK, &head(None, false)).unwrap();
        assert_eq!(
            (st.code(), st.message()),
            (Code::Unknown, "malformed header: missing HTTP content-type")
        );
        let st = not_grpc(
            StatusCode::NOT_FOUND,
            &head(Some("application/grpc"), false),
        );
        assert_eq!(st.unwrap().code(), Code::Unimplemented);
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (429, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
        ] {
            let s = StatusCode::from_u16(http).unwrap();
            assert_eq!(
                not_grpc(s, &head(None, false)).unwrap().code(),
                code,
                "{http}"
            );
        }
    }
}
