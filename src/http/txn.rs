//! `PUT /v1/txn`: KV operations applied atomically, with Consul's result and error shapes.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::acl_gate::RequestAcl;
use super::body::{parse_consul_json, read_limited};
use super::error::ApiError;
use super::kv::KvView;
use super::Ctx;
use crate::acl::{Access, Resource};
use crate::model::{Command, CommandResult, TxnKvOp, TxnKvVerb};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TxnOpBody {
    #[serde(rename = "KV")]
    kv: Option<KvOpBody>,
    node: Option<serde_json::Value>,
    service: Option<serde_json::Value>,
    check: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvOpBody {
    verb: String,
    key: Option<String>,
    value: Option<String>,
    flags: Option<u64>,
    index: Option<u64>,
    session: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct TxnResponse {
    results: Option<Vec<KvResult>>,
    errors: Option<Vec<ErrorView>>,
}

#[derive(Serialize)]
struct KvResult {
    #[serde(rename = "KV")]
    kv: KvView,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorView {
    op_index: usize,
    what: String,
}

fn parse_verb(verb: &str) -> Result<TxnKvVerb, String> {
    Ok(match verb {
        "set" => TxnKvVerb::Set,
        "cas" => TxnKvVerb::Cas,
        "get" => TxnKvVerb::Get,
        "get-tree" => TxnKvVerb::GetTree,
        "check-index" => TxnKvVerb::CheckIndex,
        "check-not-exists" => TxnKvVerb::CheckNotExists,
        "delete" => TxnKvVerb::Delete,
        "delete-tree" => TxnKvVerb::DeleteTree,
        "delete-cas" => TxnKvVerb::DeleteCas,
        "lock" => TxnKvVerb::Lock,
        "unlock" => TxnKvVerb::Unlock,
        "check-session" => TxnKvVerb::CheckSession,
        other => return Err(format!("unknown KV verb {other:?}")),
    })
}

/// Turns the body into validated ops; every problem is reported with its op index, as
/// Consul does, and nothing is applied.
fn decode_ops(body: Vec<TxnOpBody>) -> Result<Vec<TxnKvOp>, Vec<ErrorView>> {
    let mut ops = Vec::with_capacity(body.len());
    let mut errors = Vec::new();
    for (op_index, op) in body.into_iter().enumerate() {
        let result = match op {
            TxnOpBody { kv: Some(kv), .. } => (|| {
                let verb = parse_verb(&kv.verb)?;
                let session = kv.session.filter(|s| !s.is_empty());
                if matches!(verb, TxnKvVerb::Lock | TxnKvVerb::Unlock) && session.is_none() {
                    return Err(format!("verb {:?} needs a Session", kv.verb));
                }
                let key = kv.key.unwrap_or_default();
                let needs_key = !matches!(verb, TxnKvVerb::GetTree | TxnKvVerb::DeleteTree);
                if needs_key && key.is_empty() {
                    return Err("Key cannot be empty".to_string());
                }
                if key.len() > 511 {
                    return Err(format!("Key is {} bytes long; at most 511 are allowed", key.len()));
                }
                let value = match kv.value {
                    Some(v) => Some(STANDARD.decode(v).map_err(|e| format!("Value is not valid base64: {e}"))?),
                    None => None,
                };
                Ok(TxnKvOp { verb, key, value, flags: kv.flags.unwrap_or(0), index: kv.index.unwrap_or(0), session })
            })(),
            TxnOpBody { node: Some(_), .. } | TxnOpBody { service: Some(_), .. } | TxnOpBody { check: Some(_), .. } => {
                Err("Node, Service and Check operations are not implemented by cairn yet".to_string())
            }
            _ => Err("operation has no KV, Node, Service or Check part".to_string()),
        };
        match result {
            Ok(op) => ops.push(op),
            Err(what) => errors.push(ErrorView { op_index, what }),
        }
    }
    if errors.is_empty() {
        Ok(ops)
    } else {
        Err(errors)
    }
}

fn conflict(errors: Vec<ErrorView>) -> Response {
    (StatusCode::CONFLICT, Json(TxnResponse { results: None, errors: Some(errors) })).into_response()
}

/// The operations the token may not run (Consul answers them as errors of the transaction).
fn denied_ops(acl: &RequestAcl, ops: &[TxnKvOp]) -> Vec<ErrorView> {
    let a = acl.authorizer();
    ops.iter()
        .enumerate()
        .filter(|(_, op)| {
            let allowed = match op.verb {
                TxnKvVerb::Get | TxnKvVerb::CheckIndex | TxnKvVerb::CheckNotExists | TxnKvVerb::CheckSession => {
                    a.allows(Resource::Key, &op.key, Access::Read)
                }
                TxnKvVerb::GetTree => a.allows_prefix(Resource::Key, &op.key, Access::Read),
                TxnKvVerb::DeleteTree => a.allows_prefix(Resource::Key, &op.key, Access::Write),
                _ => a.allows(Resource::Key, &op.key, Access::Write),
            };
            !allowed
        })
        .map(|(i, _)| ErrorView { op_index: i, what: "Permission denied".into() })
        .collect()
}

pub async fn txn(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    let body: Vec<TxnOpBody> =
        parse_consul_json(&bytes).map_err(|e| ApiError::BadRequest(format!("Failed to parse body: {e}")))?;
    let max = ctx.limits.txn_max_ops as usize;
    if body.len() > max {
        return Err(ApiError::TooLarge(format!("Transaction contains too many operations ({} > {max})", body.len())));
    }
    let ops = match decode_ops(body) {
        Ok(ops) => ops,
        Err(errors) => return Ok(conflict(errors)),
    };
    let denied = denied_ops(&acl, &ops);
    if !denied.is_empty() {
        return Ok(conflict(denied));
    }
    match ctx.cluster.write(Command::Txn { ops }).await? {
        CommandResult::TxnCommitted(results) => {
            let results = results.into_iter().map(|r| KvResult { kv: r.entry.into() }).collect();
            Ok(Json(TxnResponse { results: Some(results), errors: None }).into_response())
        }
        CommandResult::TxnRolledBack(errors) => {
            Ok(conflict(errors.into_iter().map(|e| ErrorView { op_index: e.op_index, what: e.what }).collect()))
        }
        other => Err(ApiError::Internal(format!("unexpected transaction result {other:?}"))),
    }
}
