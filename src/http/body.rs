//! Request bodies: read under a size limit, decoded into typed structs.

use axum::body::Body;
use axum::http::HeaderMap;
use bytes::Bytes;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Reads the whole body, refusing more than `max` bytes with 413 (before reading, when the
/// client declared its length).
pub async fn read_limited(headers: &HeaderMap, body: Body, max: u64) -> Result<Bytes, ApiError> {
    if let Some(len) = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > max {
            return Err(ApiError::BodyTooLarge { size: len, max });
        }
    }
    let limited = http_body_util::Limited::new(body, max as usize);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { size: max + 1, max })
        }
        Err(e) => Err(ApiError::BadRequest(format!(
            "Failed to read request body: {e}"
        ))),
    }
}

/// Decodes JSON; fields the type does not know are ignored, as Consul does.
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest(
            "Request decode failed: empty body".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}
