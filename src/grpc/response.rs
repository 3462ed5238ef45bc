//! Responses that are not gRPC at all: a proxy's 502 page, a web server's 404, a plain HTTP
//! server on the target's port. tonic reads such a body as gRPC frames and reports whatever
//! the first bytes look like (`INTERNAL: invalid compression flag: 60` for `<html>`); grpc-go
//! looks at the response head first and maps the HTTP status (`UNAVAILABLE` for 502, 503,
//! 504 and 429, `UNIMPLEMENTED` for 404, ...). [`checked`] does what grpc-go does, before
//! tonic sees the response.
//!
//! It also watches the gRPC framing of the body ([`FrameCheck`]): trailers that come in the
//! middle of a message end a stream cleanly in tonic, the partial message dropped without a
//! word; grpc-go fails the call with INTERNAL, and so does this runtime.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use http::header::CONTENT_TYPE;
use http::StatusCode;
use hyper::body::Incoming;
use tonic::body::Body;
use tonic::{Code, Status};
use tower::BoxError;

/// A response head checked for being gRPC: one that is not (a content type other than
/// `application/grpc[+|;...]`, or an HTTP status other than 200) fails with the status grpc-go
/// gives it, as a boxed [`Status`], which tonic passes on unchanged. The body of one that is
/// gets its framing watched ([`FrameCheck`]).
pub(super) fn checked(resp: http::Response<Incoming>) -> Result<http::Response<Body>, BoxError> {
    match not_grpc(resp.status(), resp.headers()) {
        Some(st) => Err(Box::new(st)),
        None => Ok(resp.map(|inner| {
            Body::new(FrameCheck {
                inner,
                framing: Framing::default(),
            })
        })),
    }
}

/// A response body that fails with INTERNAL when its trailers come in the middle of a gRPC
/// message (length-prefixed frames: a flag byte, a 4-byte big-endian length, the bytes).
#[derive(Debug)]
struct FrameCheck {
    inner: Incoming,
    framing: Framing,
}

/// Where the body is in its gRPC framing.
#[derive(Debug, Default)]
struct Framing {
    /// The current prefix, `seen` bytes of it so far.
    prefix: [u8; 5],
    seen: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl Framing {
    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = data
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = data.len().min(5 - self.seen);
            self.prefix[self.seen..self.seen + n].copy_from_slice(&data[..n]);
            self.seen += n;
            data = &data[n..];
            if self.seen == 5 {
                let len = [
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ];
                self.remaining = u64::from(u32::from_be_bytes(len));
                self.seen = 0;
            }
        }
    }

    fn mid_message(&self) -> bool {
        self.seen > 0 || self.remaining > 0
    }
}

impl http_body::Body for FrameCheck {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx))
            .map(|f| f.map_err(|e| Status::from_error(Box::new(e))));
        if let Some(Ok(f)) = &frame {
            if let Some(data) = f.data_ref() {
                this.framing.feed(data);
            } else if f.is_trailers() && this.framing.mid_message() {
                let missing = match this.framing.remaining {
                    0 => "in its length prefix".to_owned(),
                    n => format!("{n} bytes missing"),
                };
                return Poll::Ready(Some(Err(Status::internal(format!(
                    "server sent trailers in the middle of a message ({missing})"
                )))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
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
    fn framing_follows_messages_across_chunks() {
        let mut f = Framing::default();
        assert!(!f.mid_message());
        // An empty message, then one of 3 bytes split across chunks, prefix included.
        f.feed(&[0, 0, 0, 0, 0]);
        assert!(!f.mid_message());
        f.feed(&[0, 0, 0]);
        assert!(f.mid_message());
        f.feed(&[0, 3, b'a']);
        assert!(f.mid_message());
        f.feed(b"bc");
        assert!(!f.mid_message());
        // Two whole messages in one chunk, then half a prefix.
        f.feed(&[1, 0, 0, 0, 1, b'x', 0, 0, 0, 0, 2, b'y', b'z', 0, 0]);
        assert!(f.mid_message());
        f.feed(&[0, 0, 0]);
        assert!(!f.mid_message());
        // A big announced length is waited for.
        f.feed(&[0, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(f.remaining, 0x7fff_ffff);
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
