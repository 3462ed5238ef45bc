//! Metadata both ways: a call's request head out (path, `grpc-timeout`, the metadata Lua
//! gave, `-bin` values encoded by tonic), response headers and trailers in as (key, raw value)
//! pairs.

use std::str::FromStr;
use std::time::Duration;

use http::uri::PathAndQuery;
use tonic::metadata::{
    AsciiMetadataKey, AsciiMetadataValue, BinaryMetadataKey, KeyAndValueRef, MetadataMap,
    MetadataValue,
};
use tonic::Status;

use super::op::CallSpec;

/// The request of a call: its messages, `grpc-timeout`, metadata and (on a retry)
/// `grpc-previous-rpc-attempts`.
pub(super) fn request<S>(
    msgs: S,
    call: &CallSpec,
    timeout: Option<Duration>,
    previous_attempts: u32,
) -> Result<(tonic::Request<S>, PathAndQuery), Status> {
    let path = PathAndQuery::from_str(&call.path)
        .map_err(|e| Status::invalid_argument(format!("bad path {:?}: {e}", call.path)))?;
    let mut req = tonic::Request::new(msgs);
    if let Some(t) = timeout {
        req.set_timeout(t);
    }
    for (k, v) in &call.metadata {
        add_metadata(req.metadata_mut(), k, v)?;
    }
    if previous_attempts > 0 {
        // gRFC A6: every retry and hedge says how many attempts went before it.
        req.metadata_mut()
            .insert("grpc-previous-rpc-attempts", previous_attempts.into());
    }
    Ok((req, path))
}

fn add_metadata(md: &mut MetadataMap, key: &str, value: &[u8]) -> Result<(), Status> {
    let bad = |what: &str| Status::invalid_argument(format!("metadata {key:?}: {what}"));
    if key.ends_with("-bin") {
        let k = BinaryMetadataKey::from_str(key).map_err(|_| bad("bad key"))?;
        md.append_bin(k, MetadataValue::from_bytes(value));
    } else {
        let k = AsciiMetadataKey::from_str(key).map_err(|_| bad("bad key"))?;
        let v = AsciiMetadataValue::try_from(value).map_err(|_| bad("bad value"))?;
        md.append(k, v);
    }
    Ok(())
}

/// A map's entries as (key, raw value) pairs; `-bin` values decoded (undecodable ones kept as
/// sent). The status itself (`grpc-status`, `grpc-message`, `grpc-status-details-bin`) is not
/// metadata, as in grpc-go.
pub fn metadata_list(md: &MetadataMap) -> Vec<(String, Vec<u8>)> {
    md.iter()
        .filter(|kv| {
            let key = match kv {
                KeyAndValueRef::Ascii(k, _) => k.as_str(),
                KeyAndValueRef::Binary(k, _) => k.as_str(),
            };
            !matches!(
                key,
                "grpc-status" | "grpc-message" | "grpc-status-details-bin"
            )
        })
        .map(|kv| match kv {
            KeyAndValueRef::Ascii(k, v) => (k.as_str().to_owned(), v.as_bytes().to_vec()),
            KeyAndValueRef::Binary(k, v) => (
                k.as_str().to_owned(),
                v.to_bytes()
                    .map_or_else(|_| v.as_encoded_bytes().to_vec(), |b| b.to_vec()),
            ),
        })
        .collect()
}
