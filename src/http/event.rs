//! `/v1/event/fire/{name}` and `/v1/event/list`: user events over gossip, as Consul's.

use axum::body::{Body, Bytes};
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde_json::{json, Value};

use super::body::read_limited;
use super::query::Query;
use super::{ApiError, Ctx};
use crate::acl::{Access, Resource};
use crate::gossip::event::{UserEvent, USER_EVENT_MAX_BYTES};

fn event_json(e: &UserEvent) -> Value {
    let payload = (!e.payload.is_empty()).then(|| base64::engine::general_purpose::STANDARD.encode(&e.payload));
    json!({
        "ID": e.id_string(),
        "Name": e.name,
        "Payload": payload,
        "NodeFilter": e.node_filter,
        "ServiceFilter": e.service_filter,
        "TagFilter": e.tag_filter,
        "Version": 1,
        "LTime": e.ltime,
    })
}

/// `PUT /v1/event/fire/{name}?node=&service=&tag=` with the payload as the body: gossips the
/// event to every member; answers the event (its `LTime` is assigned as it is sent).
pub async fn fire(
    ctx: Ctx,
    Path(name): Path<String>,
    q: Query,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let payload: Bytes = read_limited(&headers, body, USER_EVENT_MAX_BYTES as u64 + 1).await.map_err(|_| too_big())?;
    let filter = |key: &str| -> Result<String, ApiError> {
        let value = q.get(key).unwrap_or("").to_string();
        if !value.is_empty() {
            regex::Regex::new(&value).map_err(|e| {
                ApiError::BadRequest(format!("Invalid {key} filter {value:?}: not a regular expression ({e})"))
            })?;
        }
        Ok(value)
    };
    let event = UserEvent {
        id: *uuid::Uuid::new_v4().as_bytes(),
        name,
        payload: payload.to_vec(),
        node_filter: filter("node")?,
        service_filter: filter("service")?,
        tag_filter: filter("tag")?,
        ltime: 0,
    };
    if event.name.is_empty() {
        return Err(ApiError::BadRequest("Missing name".into()));
    }
    if !event.tag_filter.is_empty() && event.service_filter.is_empty() {
        return Err(ApiError::BadRequest("Cannot provide tag filter without service filter".into()));
    }
    if event.size() > USER_EVENT_MAX_BYTES {
        return Err(too_big());
    }
    let answer = event_json(&event);
    ctx.gossip.fire(event).map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(Json(answer).into_response())
}

fn too_big() -> ApiError {
    ApiError::TooLarge(format!(
        "User event exceeds {USER_EVENT_MAX_BYTES} bytes (name, payload and filters together): gossip carries small events only"
    ))
}

/// `GET /v1/event/list?name=`: the events this agent kept, oldest first. Blocks on
/// `?index=` until the newest event's index differs (Consul's rule for this endpoint).
pub async fn list(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    let name = q.get("name").filter(|n| !n.is_empty()).map(str::to_string);
    let (mut events, mut index) = ctx.events.list(name.as_deref());
    if q.index > 0 && index.max(1) == q.index {
        let _permit = ctx.blocking_permit()?;
        let mut changes = ctx.events.subscribe();
        let deadline = tokio::time::Instant::now() + q.wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = ctx.shutdown.cancelled() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
            if (*changes.borrow_and_update()).max(1) != q.index {
                break;
            }
        }
        (events, index) = ctx.events.list(name.as_deref());
    }
    let mut events: Vec<_> = events.iter().collect();
    q.acl.retain(&mut events, |a, e| a.allows(Resource::Event, &e.name, Access::Read));
    let body: Vec<Value> = events.into_iter().map(event_json).collect();
    Ok((ctx.index_headers(index), Json(body)).into_response())
}
