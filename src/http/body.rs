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
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::BodyTooLarge { size: max + 1, max }),
        Err(e) => Err(ApiError::BadRequest(format!("Failed to read request body: {e}"))),
    }
}

/// Decodes a request body as Consul does: fields the type does not know are ignored, and
/// field names match whatever their case (Go's decoder does; py-consul sends `{"node": ..}`).
pub fn decode_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut value = decode_json_value(bytes)?;
    canonicalize_field_names(&mut value);
    serde_json::from_value(value).map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}

/// [`decode_json`], but an empty body is `T::default()` (Consul allows it where every field
/// is optional: session create, ACL tokens, policies and roles).
pub fn decode_json_or_default<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        decode_json(bytes)
    }
}

/// A body as plain JSON, for decoders that match field names themselves
/// (`model::agent`); empty or malformed → 400 `Request decode failed: ...`.
pub fn decode_json_value(bytes: &[u8]) -> Result<serde_json::Value, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("Request decode failed: empty body".into()));
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}

/// Field names of the request bodies cairn reads, in their canonical case.
const FIELD_NAMES: &[&str] = &[
    "ID",
    "Node",
    "Address",
    "Datacenter",
    "TaggedAddresses",
    "NodeMeta",
    "Service",
    "Check",
    "Checks",
    "SkipNodeUpdate",
    "Tags",
    "Meta",
    "Port",
    "Weights",
    "Passing",
    "Warning",
    "EnableTagOverride",
    "CheckID",
    "Name",
    "Status",
    "Notes",
    "Output",
    "ServiceID",
    "Type",
    "KV",
    "Verb",
    "Key",
    "Value",
    "Flags",
    "Index",
    "Session",
    "LockDelay",
    "NodeChecks",
    "ServiceChecks",
    "Behavior",
    "TTL",
    "Namespace",
    "AccessorID",
    "SecretID",
    "Description",
    "Policies",
    "Roles",
    "ServiceIdentities",
    "NodeIdentities",
    "Local",
    "Rules",
    "Datacenters",
    "ServiceName",
    "NodeName",
];

/// Fields holding user maps, whose keys are data and keep their case.
const FREE_FORM_FIELDS: &[&str] = &["Meta", "NodeMeta", "TaggedAddresses"];

/// Parses JSON with Consul's leniency about field-name case.
pub fn parse_consul_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(bytes)?;
    canonicalize_field_names(&mut value);
    serde_json::from_value(value)
}

fn canonicalize_field_names(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, mut inner) in std::mem::take(map) {
                let canonical = FIELD_NAMES.iter().find(|f| f.eq_ignore_ascii_case(&key)).copied();
                if !canonical.is_some_and(|c| FREE_FORM_FIELDS.contains(&c)) {
                    canonicalize_field_names(&mut inner);
                }
                map.insert(canonical.map_or(key, str::to_string), inner);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(canonicalize_field_names),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "PascalCase")]
    struct Body {
        node: String,
        node_meta: std::collections::BTreeMap<String, String>,
    }

    #[test]
    fn field_names_match_any_case_but_map_keys_keep_theirs() {
        let body: Body = parse_consul_json(br#"{"node":"n","NODEMETA":{"rack":"r1"},"extra":1}"#).expect("decodes");
        assert_eq!(body, Body { node: "n".into(), node_meta: [("rack".to_string(), "r1".to_string())].into() });
    }
}
