//! `/v1/kv/*`: reads (single, `?recurse`, `?keys`, `?raw`), writes with `?cas`/`?flags`, and
//! deletes.

use axum::body::Body;
use axum::extract::{Path, RawQuery};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::Json;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::Serialize;

use super::acl_gate::RequestAcl;
use super::body::read_limited;
use super::error::ApiError;
use super::query::{Answer, Query};
use super::Ctx;
use crate::acl::{Access, Resource};
use crate::model::{Command, CommandResult, KvEntry, KvLockOp};
use crate::store::Topic;

/// A KV entry in Consul's JSON shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct KvView {
    lock_index: u64,
    key: String,
    flags: u64,
    value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session: Option<String>,
    create_index: u64,
    modify_index: u64,
}

impl From<KvEntry> for KvView {
    fn from(e: KvEntry) -> Self {
        KvView {
            lock_index: e.lock_index,
            key: e.key,
            flags: e.flags,
            value: e.value.map(|v| STANDARD.encode(v)),
            session: e.session,
            create_index: e.create_index,
            modify_index: e.modify_index,
        }
    }
}

/// LMDB's key size limit.
const KEY_BYTES_MAX: usize = 511;

fn key_of(path: Option<Path<String>>) -> Result<String, ApiError> {
    let key = path.map(|Path(k)| k).unwrap_or_default();
    if key.len() > KEY_BYTES_MAX {
        return Err(ApiError::BadRequest(format!(
            "Key is {} bytes long; at most {KEY_BYTES_MAX} are allowed",
            key.len()
        )));
    }
    Ok(key)
}

/// Collapses keys below `separator` after `prefix`, as `?keys&separator=/` does.
fn collapse_keys(prefix: &str, keys: Vec<String>, separator: Option<&str>) -> Vec<String> {
    let Some(sep) = separator.filter(|s| !s.is_empty()) else {
        return keys;
    };
    let mut out: Vec<String> = Vec::with_capacity(keys.len());
    for key in keys {
        let rest = &key[prefix.len()..];
        let shown = match rest.find(sep) {
            Some(at) => key[..prefix.len() + at + sep.len()].to_string(),
            None => key,
        };
        if out.last() != Some(&shown) {
            out.push(shown);
        }
    }
    out
}

pub async fn get(ctx: Ctx, path: Option<Path<String>>, q: Query) -> Result<Response, ApiError> {
    let key = key_of(path)?;
    let recurse = q.has("recurse");
    let keys_only = q.has("keys");
    let raw = q.has("raw");
    if key.is_empty() && !recurse && !keys_only {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    if !recurse && !keys_only {
        q.acl.require(Resource::Key, &key, Access::Read)?;
    }
    let separator = q.get("separator").map(str::to_string);
    let topic = if recurse || keys_only { Topic::KvPrefix(key.clone()) } else { Topic::Kv(key.clone()) };
    ctx.blocking_answer(&q, topic, |view| {
        if keys_only {
            let mut keys = view.kv_keys(&key)?;
            q.acl.retain(&mut keys, |a, k| a.allows(Resource::Key, k, Access::List));
            let keys = collapse_keys(&key, keys, separator.as_deref());
            let index = view.kv_prefix_index(&key)?;
            if keys.is_empty() && !key.is_empty() {
                Ok(Answer::not_found(index))
            } else {
                Answer::json(index, &keys)
            }
        } else if recurse {
            let mut entries = view.kv_list(&key)?;
            q.acl.retain(&mut entries, |a, e| a.allows(Resource::Key, &e.key, Access::Read));
            let index = view.kv_prefix_index(&key)?;
            if entries.is_empty() {
                Ok(Answer::not_found(index))
            } else {
                Answer::json(index, &entries.into_iter().map(KvView::from).collect::<Vec<_>>())
            }
        } else {
            // Again here: a blocking query's token may have lost the right while it waited.
            q.acl.require(Resource::Key, &key, Access::Read)?;
            let (entry, index) = view.kv_get_indexed(&key)?;
            match entry {
                None => Ok(Answer::not_found(index)),
                Some(entry) if raw => Ok(Answer::bytes(index, entry.value.unwrap_or_default())),
                Some(entry) => Answer::json(index, &[KvView::from(entry)]),
            }
        }
    })
    .await
}

/// The lock operation `?acquire=` or `?release=` asks for, with its session.
fn lock_op(q: &Query) -> Result<Option<(String, KvLockOp)>, ApiError> {
    let op = match (q.get("acquire"), q.get("release")) {
        (Some(_), Some(_)) => return Err(ApiError::BadRequest("Conflicting flags: acquire and release".into())),
        (Some(session), None) => (session, KvLockOp::Acquire),
        (None, Some(session)) => (session, KvLockOp::Release),
        (None, None) => return Ok(None),
    };
    if op.0.is_empty() {
        return Err(ApiError::BadRequest("?acquire and ?release need a session ID".into()));
    }
    Ok(Some((op.0.to_string(), op.1)))
}

fn bool_result(result: CommandResult) -> Result<Json<bool>, ApiError> {
    match result {
        CommandResult::Bool(b) => Ok(Json(b)),
        CommandResult::Rejected(why) => Err(ApiError::BadRequest(why)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

pub async fn put(
    ctx: Ctx,
    acl: RequestAcl,
    path: Option<Path<String>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<bool>, ApiError> {
    let key = key_of(path)?;
    let q = Query::parse(raw.as_deref(), &ctx.identity.datacenter)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    acl.require(Resource::Key, &key, Access::Write)?;
    let lock = lock_op(&q)?;
    let flags = q.u64("flags")?.unwrap_or(0);
    let cas = q.u64("cas")?;
    let value = Some(read_limited(&headers, body, ctx.limits.kv_max_value_size).await?.to_vec());
    // As in Consul, a lock operation takes precedence over `?cas`.
    let command = match lock {
        Some((session, op)) => Command::KvLock { key, value, flags, session, op },
        None => Command::KvSet { key, value, flags, cas },
    };
    bool_result(ctx.cluster.write(command).await?)
}

pub async fn delete(ctx: Ctx, path: Option<Path<String>>, q: Query) -> Result<Json<bool>, ApiError> {
    let key = key_of(path)?;
    let recurse = q.has("recurse");
    if key.is_empty() && !recurse {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let cas = q.u64("cas")?;
    if recurse && cas.is_some() {
        return Err(ApiError::BadRequest("Conflicting flags: cas and recurse".into()));
    }
    let allowed = if recurse {
        q.acl.authorizer().allows_prefix(Resource::Key, &key, Access::Write)
    } else {
        q.acl.can(Resource::Key, &key, Access::Write)
    };
    if !allowed {
        return Err(ApiError::Forbidden("Permission denied".into()));
    }
    bool_result(ctx.cluster.write(Command::KvDelete { key, recurse, cas }).await?)
}

#[cfg(test)]
mod tests {
    use super::collapse_keys;

    #[test]
    fn keys_collapse_below_the_separator() {
        let keys = ["a/b", "a/c/d", "a/c/e", "a/f/"].map(String::from).to_vec();
        assert_eq!(collapse_keys("a/", keys.clone(), Some("/")), ["a/b", "a/c/", "a/f/"]);
        assert_eq!(collapse_keys("a/", keys.clone(), None), keys);
        assert_eq!(collapse_keys("", keys, Some("/")), ["a/"]);
    }
}
