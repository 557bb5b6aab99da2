//! Client agents hold no replicated state: the API requests that read or change it are sent
//! whole to a server over the server RPC, and its answer — status, index headers, body — is
//! returned unchanged, blocking queries included. The agent's own endpoints (`/v1/agent/*`,
//! events, keyring) stay local. In the same way a server sends a request for another
//! datacenter (`?dc=dc2`, one the WAN pool knows) to a server of that datacenter.
//!
//! On the server, a forwarded request runs through the same router as a local one, but
//! only for the paths clients forward ([`forwardable`]): a peer cannot open a streaming
//! endpoint such as the monitor through RPC.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use http_body_util::BodyExt;
use std::sync::Arc;
use tower::ServiceExt;

use super::body::read_limited;
use super::{ApiError, HttpContext};
use crate::cluster::{HttpAnswer, HttpCall};

/// Paths whose answers come from the replicated state, which a client forwards.
pub fn forwardable(path: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "/v1/catalog/",
        "/v1/health/",
        "/v1/kv/",
        "/v1/session/",
        "/v1/status/",
        "/v1/operator/raft/",
        "/v1/operator/autopilot/",
        "/v1/query/",
        "/v1/internal/ui/",
        "/v1/acl/",
        "/v1/internal/acl/",
    ];
    matches!(path, "/v1/txn" | "/v1/kv" | "/v1/query") || PREFIXES.iter().any(|p| path.starts_with(p))
}

/// Request headers a forwarded request keeps: what the handlers read. The browser-facing
/// ones (Origin, Sec-Fetch-*) were checked on the client agent already.
const FORWARDED_REQUEST_HEADERS: &[&str] = &["content-type", "x-consul-token", "authorization"];

/// Middleware: on a client agent, sends [`forwardable`] requests to a server; on a server,
/// sends those for another datacenter the WAN pool knows to one of its servers. (A `?dc=`
/// naming no known datacenter is the handler's to refuse: "No path to datacenter".)
pub async fn forward_elsewhere(State(ctx): State<Arc<HttpContext>>, request: Request, next: Next) -> Response {
    let Some(target) = target(&ctx, &request) else {
        return next.run(request).await;
    };
    match forward(&ctx, request, target).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// Whether [`forward_elsewhere`] sends `request` to another agent (which then checks it).
pub fn goes_elsewhere(ctx: &HttpContext, request: &Request) -> bool {
    target(ctx, request).is_some()
}

fn target(ctx: &HttpContext, request: &Request) -> Option<Target> {
    if !forwardable(request.uri().path()) {
        return None;
    }
    if !ctx.cluster.is_server() {
        return Some(Target::AnyServer);
    }
    requested_datacenter(request.uri().query()).filter(|dc| ctx.cluster.knows_datacenter(dc)).map(Target::Datacenter)
}

/// Where a request is sent.
enum Target {
    /// A server of this datacenter (from a client agent).
    AnyServer,
    /// A server of another datacenter (from a server).
    Datacenter(String),
}

/// The `dc` parameter of a query string, if it has a non-empty one.
fn requested_datacenter(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, v)| k == "dc" && !v.is_empty()).map(|(_, v)| v.into_owned())
}

async fn forward(ctx: &HttpContext, request: Request, target: Target) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    // The server applies each endpoint's own limit; this one only bounds what is buffered.
    let max = ctx.limits.http_max_body_bytes.max(ctx.limits.kv_max_value_size);
    let body = read_limited(&parts.headers, body, max).await?;
    let mut headers: Vec<(String, String)> = FORWARDED_REQUEST_HEADERS
        .iter()
        .filter_map(|name| Some((name.to_string(), parts.headers.get(*name)?.to_str().ok()?.to_string())))
        .collect();
    // Who is asking: the default `Node` of a session this agent creates (kept from a client
    // agent whose request a server sends on to another datacenter).
    let node = parts.headers.get(super::session::AGENT_NODE_HEADER).and_then(|v| v.to_str().ok());
    let node = node.filter(|_| ctx.cluster.is_server()).unwrap_or(&ctx.identity.node_name);
    headers.push((super::session::AGENT_NODE_HEADER.to_string(), node.to_string()));
    let uri = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |pq| pq.as_str().to_string());
    let call = HttpCall { method: parts.method.to_string(), uri, headers };
    let (answer, body) = match target {
        Target::AnyServer => ctx.cluster.forward_http(call, body.to_vec()).await?,
        Target::Datacenter(dc) => ctx.cluster.forward_http_to(&dc, call, body.to_vec()).await?,
    };
    let status = StatusCode::from_u16(answer.status)
        .map_err(|_| ApiError::Internal(format!("a server answered with status {}", answer.status)))?;
    let mut response = (status, body).into_response();
    for (name, value) in answer.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            response.headers_mut().insert(name, value);
        }
    }
    Ok(response)
}

/// Response headers not passed back: they describe the server's connection, not the answer.
const HOP_BY_HOP: &[&str] = &["connection", "content-length", "transfer-encoding", "keep-alive"];

/// A server's answer to a request a client forwarded, through `router` as if it had arrived
/// over HTTP. The body is cut at `body_max` bytes (answered 500 instead).
pub async fn answer_forwarded(router: Router, call: HttpCall, body: Vec<u8>, body_max: usize) -> (HttpAnswer, Vec<u8>) {
    let refuse = |status: StatusCode, text: String| {
        let headers = vec![("content-type".to_string(), "text/plain; charset=utf-8".to_string())];
        (HttpAnswer { status: status.as_u16(), headers }, text.into_bytes())
    };
    let path = call.uri.split('?').next().unwrap_or_default();
    if !forwardable(path) {
        return refuse(StatusCode::FORBIDDEN, format!("{path} is not forwarded from client agents"));
    }
    let mut request =
        match axum::http::Request::builder().method(call.method.as_str()).uri(&call.uri).body(Body::from(body)) {
            Ok(request) => request,
            Err(e) => return refuse(StatusCode::BAD_REQUEST, format!("malformed forwarded request: {e}")),
        };
    for (name, value) in &call.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(name.as_str()), HeaderValue::try_from(value.as_str())) {
            request.headers_mut().insert(name, value);
        }
    }
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let (parts, body) = response.into_parts();
    let body = match http_body_util::Limited::new(body, body_max).collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("answer too large to forward: {e}")),
    };
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| !HOP_BY_HOP.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    (HttpAnswer { status: parts.status.as_u16(), headers }, body)
}

#[cfg(test)]
mod tests {
    use super::forwardable;

    #[test]
    fn only_replicated_state_is_forwarded() {
        for path in ["/v1/catalog/services", "/v1/health/service/web", "/v1/kv/a/b", "/v1/kv", "/v1/txn"] {
            assert!(forwardable(path), "{path}");
        }
        for path in ["/v1/agent/monitor", "/v1/agent/self", "/v1/event/fire/x", "/v1/snapshot", "/v1/txnx", "/ui/"] {
            assert!(!forwardable(path), "{path}");
        }
    }
}
