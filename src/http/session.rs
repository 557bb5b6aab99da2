//! `/v1/session/*`: create, destroy, renew, and the blocking reads (info, node, list).

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::acl_gate::RequestAcl;
use super::body::{decode_json_or_default, read_limited};
use super::error::ApiError;
use super::query::Query;
use super::Ctx;
use crate::acl::{Access, Resource};
use crate::model::{
    format_duration, parse_duration, Command, CommandResult, ServiceCheckRef, Session, SessionBehavior,
};
use crate::store::{Table, Topic};

/// Request header a client agent adds to the requests it forwards: its node name, the
/// default `Node` of a session it creates (the server's own name would be wrong).
pub const AGENT_NODE_HEADER: &str = "x-cairn-agent-node";

/// The check every session is tied to unless told otherwise: the node's liveness in gossip.
const DEFAULT_CHECK: &str = "serfHealth";

#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct CreateBody {
    name: Option<String>,
    node: Option<String>,
    /// A duration string (`"15s"`), or a number: seconds below 1000, nanoseconds above (as
    /// Consul reads it).
    lock_delay: Option<Value>,
    /// Node checks, the form older clients send.
    checks: Option<Vec<String>>,
    node_checks: Option<Vec<String>>,
    service_checks: Option<Vec<ServiceCheckRef>>,
    behavior: Option<String>,
    #[serde(rename = "TTL")]
    ttl: Option<String>,
}

/// A session in Consul's JSON shape.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct SessionView {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    node: String,
    /// Nanoseconds, as Go encodes a duration.
    lock_delay: u64,
    behavior: SessionBehavior,
    #[serde(rename = "TTL")]
    ttl: String,
    /// Every check, as clients from before Consul 1.7 read them.
    checks: Vec<String>,
    node_checks: Vec<String>,
    service_checks: Option<Vec<ServiceCheckRef>>,
    create_index: u64,
    modify_index: u64,
}

impl From<Session> for SessionView {
    fn from(s: Session) -> Self {
        SessionView {
            checks: s.check_ids().map(str::to_string).collect(),
            ttl: s.ttl().map(format_duration).unwrap_or_default(),
            id: s.id,
            name: s.name,
            node: s.node,
            lock_delay: s.lock_delay_ms.saturating_mul(1_000_000),
            behavior: s.behavior,
            node_checks: s.node_checks,
            service_checks: (!s.service_checks.is_empty()).then_some(s.service_checks),
            create_index: s.create_index,
            modify_index: s.modify_index,
        }
    }
}

fn lock_delay(value: Option<&Value>) -> Result<Duration, ApiError> {
    let bad = |why: String| ApiError::BadRequest(format!("Invalid LockDelay: {why}"));
    let delay = match value {
        None | Some(Value::Null) => Session::LOCK_DELAY_DEFAULT,
        Some(Value::String(text)) => parse_duration(text).map_err(bad)?,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(n) if n < 1000 => Duration::from_secs(n),
            Some(n) => Duration::from_nanos(n),
            None => return Err(bad(format!("{n} is not a whole non-negative number"))),
        },
        Some(other) => return Err(bad(format!("expected a duration string or a number, found {other}"))),
    };
    if delay > Session::LOCK_DELAY_MAX {
        return Err(bad(format!(
            "{} exceeds the maximum of {}",
            format_duration(delay),
            format_duration(Session::LOCK_DELAY_MAX)
        )));
    }
    Ok(delay)
}

fn ttl(text: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = text.filter(|t| !t.is_empty()) else { return Ok(None) };
    let ttl =
        parse_duration(text).map_err(|why| ApiError::BadRequest(format!("Invalid Session TTL '{text}': {why}")))?;
    if ttl.is_zero() {
        return Ok(None);
    }
    if ttl < Session::TTL_MIN || ttl > Session::TTL_MAX {
        return Err(ApiError::BadRequest(format!(
            "Invalid Session TTL '{text}', must be between [{}={}]",
            format_duration(Session::TTL_MIN),
            format_duration(Session::TTL_MAX)
        )));
    }
    Ok(Some(ttl))
}

/// `PUT /v1/session/create` → `{"ID": ...}`.
pub async fn create(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let bytes = read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
    // An empty body creates a session with every default, as Consul allows.
    let req: CreateBody = decode_json_or_default(&bytes)?;
    let behavior = match req.behavior.as_deref().filter(|b| !b.is_empty()) {
        None => SessionBehavior::Release,
        Some(text) => SessionBehavior::parse(text)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid Behavior setting '{text}'")))?,
    };
    let ttl = ttl(req.ttl.as_deref())?;
    let lock_delay = lock_delay(req.lock_delay.as_ref())?;
    let default_node = headers.get(AGENT_NODE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or(&ctx.identity.node_name);
    let node = req.node.filter(|n| !n.is_empty()).unwrap_or_else(|| default_node.to_string());
    acl.require(Resource::Session, &node, Access::Write)?;
    let explicit = req.checks.is_some() || req.node_checks.is_some() || req.service_checks.is_some();
    let mut node_checks: Vec<String> = req.checks.into_iter().chain(req.node_checks).flatten().collect();
    if !explicit {
        node_checks.push(DEFAULT_CHECK.to_string());
    }
    node_checks.sort();
    node_checks.dedup();
    let id = uuid::Uuid::new_v4().to_string();
    let session = Session {
        id: id.clone(),
        name: req.name.unwrap_or_default(),
        node,
        node_checks,
        service_checks: req.service_checks.unwrap_or_default(),
        lock_delay_ms: lock_delay.as_millis() as u64,
        behavior,
        ttl_ms: ttl.map_or(0, |t| t.as_millis() as u64),
        create_index: 0,
        modify_index: 0,
    };
    match ctx.cluster.write(Command::SessionCreate(Box::new(session))).await? {
        CommandResult::Done => Ok(Json(serde_json::json!({ "ID": id }))),
        CommandResult::Rejected(why) => Err(ApiError::BadRequest(why)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

/// `PUT /v1/session/destroy/{id}` → `true` (also for a session that no longer exists).
/// Ending or renewing a session needs write on sessions of its node.
fn require_session_write(ctx: &Ctx, acl: &RequestAcl, id: &str) -> Result<(), ApiError> {
    if !acl.authorizer().enabled() {
        return Ok(());
    }
    match ctx.store.read()?.session(id)? {
        Some(session) => acl.require(Resource::Session, &session.node, Access::Write),
        None => Ok(()),
    }
}

pub async fn destroy(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Json<bool>, ApiError> {
    require_session_write(&ctx, &acl, &id)?;
    match ctx.cluster.write(Command::SessionDestroy { id }).await? {
        CommandResult::Done => Ok(Json(true)),
        CommandResult::Rejected(why) => Err(ApiError::BadRequest(why)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

/// `PUT /v1/session/renew/{id}` → `[session]`, 404 when it is gone.
pub async fn renew(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<Json<Vec<SessionView>>, ApiError> {
    require_session_write(&ctx, &acl, &id)?;
    match ctx.cluster.renew_session(&id).await? {
        Some(session) => Ok(Json(vec![session.into()])),
        None => Err(ApiError::NotFound(format!("Session id '{id}' not found"))),
    }
}

/// `GET /v1/session/info/{id}` → `[session]`, or `[]`.
pub async fn info(ctx: Ctx, Path(id): Path<String>, q: Query) -> Result<axum::response::Response, ApiError> {
    ctx.blocking_json(&q, Topic::Table(Table::Sessions), |view| {
        let mut sessions: Vec<_> = view.session(&id)?.into_iter().collect();
        q.acl.retain(&mut sessions, |a, s| a.allows(Resource::Session, &s.node, Access::Read));
        let sessions: Vec<SessionView> = sessions.into_iter().map(SessionView::from).collect();
        Ok((view.table_index(Table::Sessions)?, sessions))
    })
    .await
}

/// `GET /v1/session/node/{node}`.
pub async fn node(ctx: Ctx, Path(node): Path<String>, q: Query) -> Result<axum::response::Response, ApiError> {
    ctx.blocking_json(&q, Topic::Table(Table::Sessions), |view| {
        let mut sessions: Vec<_> = view.node_sessions(&node)?.into_iter().collect();
        q.acl.retain(&mut sessions, |a, s| a.allows(Resource::Session, &s.node, Access::Read));
        let sessions: Vec<SessionView> = sessions.into_iter().map(SessionView::from).collect();
        Ok((view.table_index(Table::Sessions)?, sessions))
    })
    .await
}

/// `GET /v1/session/list`.
pub async fn list(ctx: Ctx, q: Query) -> Result<axum::response::Response, ApiError> {
    ctx.blocking_json(&q, Topic::Table(Table::Sessions), |view| {
        let mut sessions: Vec<_> = view.sessions()?.into_iter().collect();
        q.acl.retain(&mut sessions, |a, s| a.allows(Resource::Session, &s.node, Access::Read));
        let sessions: Vec<SessionView> = sessions.into_iter().map(SessionView::from).collect();
        Ok((view.table_index(Table::Sessions)?, sessions))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_and_lock_delay_are_read_as_consul_reads_them() {
        assert_eq!(ttl(None).unwrap(), None);
        assert_eq!(ttl(Some("0s")).unwrap(), None);
        assert_eq!(ttl(Some("10s")).unwrap(), Some(Duration::from_secs(10)));
        let short = ttl(Some("5s")).unwrap_err().to_string();
        assert_eq!(short, "Invalid Session TTL '5s', must be between [10s=24h0m0s]");
        assert!(ttl(Some("86401s")).is_err());
        assert!(ttl(Some("soon")).unwrap_err().to_string().contains("Invalid Session TTL 'soon'"));
        assert_eq!(lock_delay(None).unwrap(), Duration::from_secs(15));
        assert_eq!(lock_delay(Some(&Value::from("1s"))).unwrap(), Duration::from_secs(1));
        assert_eq!(lock_delay(Some(&Value::from(5))).unwrap(), Duration::from_secs(5));
        assert_eq!(lock_delay(Some(&Value::from(2_000_000_000u64))).unwrap(), Duration::from_secs(2));
        assert!(lock_delay(Some(&Value::from("2m"))).is_err());
        assert!(lock_delay(Some(&Value::from(-1))).is_err());
    }
}
