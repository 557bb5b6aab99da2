//! The Consul-compatible HTTP API: routes, the server with its connection limits, and the
//! shared context handlers read.
//!
//! Architecture Invariant: handlers decode a request, call one store read or one
//! `Cluster::write`, and encode the answer; catalog and KV semantics live in `store`.
//! Why: DNS and HTTP must agree on what "healthy" means, and the state machine must be the
//! only writer.

mod acl;
mod acl_gate;
mod agent;
mod agent_local;
mod body;
mod catalog;
mod coordinate;
mod error;
mod event;
mod fanout;
mod forward;
mod h1;
mod health;
mod internal_ui;
mod kv;
pub mod monitor;
mod operator;
mod prepared;
mod query;
mod server;
mod session;
mod snapshot;
mod txn;

use std::sync::Arc;

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::Router;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;

pub use agent::CONSUL_API_VERSION;
pub use error::ApiError;
pub use forward::answer_forwarded;
pub use server::serve;

use crate::checks::LocalAgent;
use crate::cluster::Cluster;
use crate::config::Limits;
use crate::model::acl::{AclPolicy, AclRole};
use crate::store::Store;

/// What the API reports about this agent.
#[derive(Debug, Clone)]
pub struct AgentIdentity {
    pub datacenter: String,
    pub node_name: String,
    pub node_id: String,
    pub server: bool,
    /// Address other agents reach this one at (LAN).
    pub advertise_addr: String,
    pub server_port: u16,
    pub serf_lan_port: u16,
}

/// A reload request (`PUT /v1/agent/reload`); the agent answers on the sender once done.
pub type ReloadReply = oneshot::Sender<Result<(), String>>;

/// Shared by every handler.
pub struct HttpContext {
    pub cluster: Cluster,
    pub store: Store,
    /// The agent's own services and checks.
    pub local: LocalAgent,
    /// Reload requests for the agent (bounded: a request while one is queued gets 429).
    pub reload: mpsc::Sender<ReloadReply>,
    /// `PUT /v1/agent/leave`: the agent shuts down when notified.
    pub leave: Arc<tokio::sync::Notify>,
    pub identity: AgentIdentity,
    pub limits: Limits,
    /// One permit per blocking query in progress (`limits.max_blocking_queries`); when none is
    /// left a new blocking query gets 429 at once.
    pub blocking_permits: Arc<Semaphore>,
    /// One permit per backup being written or sent (`limits.snapshot_saves_in_flight`);
    /// when none is left a backup gets 429 at once.
    pub snapshot_save_permits: Arc<Semaphore>,
    /// Cancelled at shutdown: blocking queries answer at once with their current data.
    pub shutdown: CancellationToken,
    /// LAN gossip: members, join, force-leave, user events.
    pub gossip: crate::gossip::Gossip,
    /// WAN gossip (servers with `ports.serf_wan`): the servers of every datacenter.
    pub wan: Option<crate::gossip::Gossip>,
    /// User events this agent received (`/v1/event/list`).
    pub events: Arc<crate::gossip::event::EventLog>,
    /// The log, for `/v1/agent/monitor`.
    pub log_tap: Arc<monitor::LogTap>,
    /// Script checks may be registered through the API (`enable_script_checks`).
    pub script_checks_via_api: bool,
    /// What `/v1/agent/metrics` reports from (and where requests are counted).
    pub metrics: crate::metrics::Metrics,
    /// `telemetry.prometheus_retention_time`: zero refuses `?format=prometheus`, as Consul.
    pub prometheus_retention_time: std::time::Duration,
    /// Serve the web UI at `/ui/`.
    pub ui_enabled: bool,
    /// Resolves ACL tokens (from the local replica on a server).
    pub acl: Arc<crate::acl::AclResolver>,
    /// On a client agent: tokens a server resolved, kept for `acl.token_ttl`.
    pub remote_tokens: acl_gate::RemoteTokens,
}

/// What the agent hands the HTTP API; [`HttpContext::new`] adds the API's own state.
pub struct HttpServices {
    pub cluster: Cluster,
    pub store: Store,
    pub local: LocalAgent,
    pub reload: mpsc::Sender<ReloadReply>,
    pub identity: AgentIdentity,
    pub limits: Limits,
    pub shutdown: CancellationToken,
    pub gossip: crate::gossip::Gossip,
    pub wan: Option<crate::gossip::Gossip>,
    pub events: Arc<crate::gossip::event::EventLog>,
    pub log_tap: Arc<monitor::LogTap>,
    pub script_checks_via_api: bool,
    pub metrics: crate::metrics::Metrics,
    pub prometheus_retention_time: std::time::Duration,
    pub ui_enabled: bool,
    pub acl: Arc<crate::acl::AclResolver>,
}

impl HttpContext {
    pub fn new(s: HttpServices) -> Self {
        let blocking_permits = Arc::new(Semaphore::new(s.limits.max_blocking_queries as usize));
        let snapshot_save_permits = Arc::new(Semaphore::new(s.limits.snapshot_saves_in_flight as usize));
        HttpContext {
            cluster: s.cluster,
            store: s.store,
            local: s.local,
            reload: s.reload,
            leave: Arc::default(),
            identity: s.identity,
            limits: s.limits,
            blocking_permits,
            snapshot_save_permits,
            shutdown: s.shutdown,
            gossip: s.gossip,
            wan: s.wan,
            events: s.events,
            log_tap: s.log_tap,
            script_checks_via_api: s.script_checks_via_api,
            metrics: s.metrics,
            prometheus_retention_time: s.prometheus_retention_time,
            ui_enabled: s.ui_enabled,
            acl: s.acl,
            remote_tokens: acl_gate::RemoteTokens::default(),
        }
    }

    /// Blocking queries waiting right now.
    pub fn blocking_queries_in_flight(&self) -> usize {
        (self.limits.max_blocking_queries as usize).saturating_sub(self.blocking_permits.available_permits())
    }
}

pub type Ctx = axum::extract::State<Arc<HttpContext>>;

/// Every route of the API, and the web UI's when it is on.
pub fn router(ctx: Arc<HttpContext>) -> Router {
    let ui = crate::ui::routes(ctx.ui_enabled, &ctx.identity.datacenter);
    Router::new()
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/deregister/{service_id}", get(catalog::deregister_by_id).put(catalog::deregister_by_id))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{service}", get(catalog::service))
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route("/v1/health/service/{service}", get(health::service))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/checks/{service}", get(health::checks))
        .route("/v1/health/state/{state}", get(health::state))
        .route("/v1/kv/", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/kv/{*key}", get(kv::get).put(kv::put).delete(kv::delete))
        .route("/v1/txn", put(txn::txn))
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/status/leader", get(agent::status_leader))
        .route("/v1/status/peers", get(agent::status_peers))
        .route("/v1/agent/self", get(agent::agent_self))
        .route("/v1/agent/members", get(agent::agent_members))
        .route("/v1/agent/metrics", get(agent::agent_metrics))
        .route("/v1/agent/monitor", get(agent::agent_monitor))
        .route("/v1/agent/leave", put(agent::agent_leave))
        .route("/v1/agent/join/{addr}", put(agent::agent_join))
        .route("/v1/agent/force-leave/{node}", put(agent::agent_force_leave))
        .route("/v1/operator/raft/configuration", get(operator::raft_configuration))
        .route("/v1/operator/raft/peer", axum::routing::delete(operator::raft_remove_peer))
        .route("/v1/operator/raft/transfer-leader", axum::routing::post(operator::raft_transfer_leader))
        .route("/v1/operator/autopilot/configuration", get(operator::autopilot_configuration))
        .route("/v1/operator/autopilot/health", get(operator::autopilot_health))
        .route(
            "/v1/operator/keyring",
            get(agent::operator_keyring)
                .post(agent::operator_keyring)
                .put(agent::operator_keyring)
                .delete(agent::operator_keyring),
        )
        .route("/v1/agent/services", get(agent_local::services))
        .route("/v1/agent/service/register", put(agent_local::register_service))
        .route("/v1/agent/service/deregister/{id}", put(agent_local::deregister_service))
        .route("/v1/agent/service/maintenance/{id}", put(agent_local::service_maintenance))
        .route("/v1/agent/service/{id}", get(agent_local::service))
        .route("/v1/agent/checks", get(agent_local::checks))
        .route("/v1/agent/check/register", put(agent_local::register_check))
        .route("/v1/agent/check/deregister/{id}", put(agent_local::deregister_check))
        .route("/v1/agent/check/pass/{id}", put(agent_local::check_pass))
        .route("/v1/agent/check/warn/{id}", put(agent_local::check_warn))
        .route("/v1/agent/check/fail/{id}", put(agent_local::check_fail))
        .route("/v1/agent/check/update/{id}", put(agent_local::check_update))
        .route("/v1/agent/maintenance", put(agent_local::node_maintenance))
        .route("/v1/agent/reload", put(agent_local::reload))
        .route("/v1/agent/token/{kind}", put(acl::set_agent_token))
        .route("/v1/snapshot", get(snapshot::save).put(snapshot::restore))
        .route("/v1/coordinate/datacenters", get(coordinate::datacenters))
        .route("/v1/coordinate/nodes", get(coordinate::nodes))
        .route("/v1/coordinate/node/{node}", get(coordinate::node))
        .route("/v1/query", get(prepared::list).post(prepared::create))
        .route("/v1/query/{id}", get(prepared::read).put(prepared::update).delete(prepared::delete))
        .route("/v1/query/{id}/execute", get(prepared::execute))
        .route("/v1/query/{id}/explain", get(prepared::explain))
        .route("/v1/event/fire/{name}", put(event::fire))
        .route("/v1/event/list", get(event::list))
        .route("/v1/internal/ui/services", get(internal_ui::services))
        .route("/v1/internal/ui/nodes", get(internal_ui::nodes))
        .route("/v1/internal/ui/node/{node}", get(internal_ui::node))
        .route(acl_gate::GRANTS_PATH, get(acl::grants))
        .route("/v1/acl/bootstrap", put(acl::bootstrap))
        .route("/v1/acl/token", put(acl::token_create))
        .route("/v1/acl/token/self", get(acl::token_self))
        .route("/v1/acl/token/{accessor}", get(acl::token_read).put(acl::token_update).delete(acl::token_delete))
        .route("/v1/acl/token/{accessor}/clone", put(acl::token_clone))
        .route("/v1/acl/tokens", get(acl::token_list))
        .route("/v1/acl/policy", put(acl::create::<AclPolicy>))
        .route("/v1/acl/policy/name/{name}", get(acl::read_by_name::<AclPolicy>))
        .route(
            "/v1/acl/policy/{id}",
            get(acl::read::<AclPolicy>).put(acl::update::<AclPolicy>).delete(acl::delete::<AclPolicy>),
        )
        .route("/v1/acl/policies", get(acl::list::<AclPolicy>))
        .route("/v1/acl/role", put(acl::create::<AclRole>))
        .route("/v1/acl/role/name/{name}", get(acl::read_by_name::<AclRole>))
        .route(
            "/v1/acl/role/{id}",
            get(acl::read::<AclRole>).put(acl::update::<AclRole>).delete(acl::delete::<AclRole>),
        )
        .route("/v1/acl/roles", get(acl::list::<AclRole>))
        .fallback(unknown_path)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&ctx), forward::forward_elsewhere))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&ctx), acl_gate::acl_gate))
        .layer(axum::middleware::from_fn_with_state(Arc::clone(&ctx), measure))
        .with_state(ctx)
        .merge(ui)
}

/// Counts every request by its route (the matched path template), method and status, with
/// its latency (a blocking query's included).
async fn measure(
    axum::extract::State(ctx): axum::extract::State<Arc<HttpContext>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let matched = request.extensions().get::<axum::extract::MatchedPath>().cloned();
    // Known methods only: a label per made-up method would let clients grow the metrics.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    };
    let mut response = next.run(request).await;
    let route = matched.as_ref().map_or("unmatched", axum::extract::MatchedPath::as_str);
    ctx.metrics.http_request(route, method, response.status().as_u16(), started.elapsed());
    // Requests answered together with this one are counted under the same route (`h1`).
    if let Some(matched) = matched {
        response.extensions_mut().insert(matched);
    }
    response
}

async fn unknown_path() -> ApiError {
    ApiError::NotFound("Invalid URL path: not a recognized HTTP API endpoint".into())
}

async fn wrong_method(method: Method, _req: Request) -> Response {
    let mut response = ApiError::MethodNotAllowed { method: method.to_string() }.into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}
