//! `/v1/operator/raft/*` and `/v1/operator/autopilot/*`: the Raft configuration, removing a
//! server, handing over leadership, and autopilot's health view. Changes are made by the
//! leader wherever they are asked (`cluster::operator`); servers are named from gossip.

use std::collections::HashMap;

use axum::extract::Query;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, Ctx};
use crate::cluster::{raft_node_id, NodeId};
use crate::gossip::{MemberInfo, Role};

/// The gossip member of Raft server `id`, if gossip knows it.
fn member_of(members: &[MemberInfo], id: NodeId) -> Option<&MemberInfo> {
    members.iter().find(|m| m.id.role == Role::Server && raft_node_id(m.id.node_id) == id)
}

/// Consul's `ID` (the node UUID) and `Node` of Raft server `id`; its Raft id for both when
/// gossip no longer knows it.
fn names(members: &[MemberInfo], id: NodeId) -> (String, String) {
    member_of(members, id)
        .map_or_else(|| (id.to_string(), id.to_string()), |m| (m.id.node_id_string(), m.id.name.clone()))
}

/// `GET /v1/operator/raft/configuration`.
pub async fn raft_configuration(ctx: Ctx) -> Json<Value> {
    let (servers, index) = ctx.cluster.configuration();
    let members = ctx.gossip.members();
    let servers: Vec<Value> = servers
        .iter()
        .map(|server| {
            let (id, node) = names(&members, server.id);
            json!({
                "ID": id,
                "Node": node,
                "Address": server.address,
                "Leader": server.leader,
                "Voter": server.voter,
                "ProtocolVersion": "3",
            })
        })
        .collect();
    Json(json!({ "Servers": servers, "Index": index }))
}

/// The Raft id of the server `?id=` (node UUID, node name or Raft id) or `?address=`
/// (`ip:port`) names; `None` when neither is given.
fn target(ctx: &Ctx, params: &HashMap<String, String>) -> Result<Option<NodeId>, ApiError> {
    let (servers, _) = ctx.cluster.configuration();
    let members = ctx.gossip.members();
    if let Some(address) = params.get("address").filter(|a| !a.is_empty()) {
        return servers.iter().find(|s| &s.address == address).map(|s| Some(s.id)).ok_or_else(|| {
            ApiError::BadRequest(format!("address {address:?} was not found in the Raft configuration"))
        });
    }
    match params.get("id").filter(|i| !i.is_empty()) {
        Some(wanted) => servers
            .iter()
            .find(|s| {
                let (uuid, name) = names(&members, s.id);
                &uuid == wanted || &name == wanted || &s.id.to_string() == wanted
            })
            .map(|s| Some(s.id))
            .ok_or_else(|| ApiError::BadRequest(format!("id {wanted:?} was not found in the Raft configuration"))),
        None => Ok(None),
    }
}

/// `DELETE /v1/operator/raft/peer?id=|address=`.
pub async fn raft_remove_peer(
    ctx: Ctx,
    Query(params): Query<HashMap<String, String>>,
) -> Result<&'static str, ApiError> {
    let id = target(&ctx, &params)?.ok_or_else(|| {
        ApiError::BadRequest(
            "Must specify either ?id with the server's ID or ?address with IP:port of peer to remove".into(),
        )
    })?;
    ctx.cluster.remove_server(id).await?;
    Ok("")
}

/// `POST /v1/operator/raft/transfer-leader[?id=]`.
pub async fn raft_transfer_leader(
    ctx: Ctx,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = target(&ctx, &params)?;
    ctx.cluster.transfer_leader(id).await?;
    Ok(Json(json!({ "Success": true })))
}

/// `GET /v1/operator/autopilot/configuration`: cairn's fixed autopilot settings.
pub async fn autopilot_configuration() -> Json<Value> {
    Json(json!({
        "CleanupDeadServers": true,
        "LastContactThreshold": "200ms",
        "MaxTrailingLogs": 250,
        "MinQuorum": 0,
        "ServerStabilizationTime": "0s",
        "RedundancyZoneTag": "",
        "DisableUpgradeMigration": false,
        "UpgradeVersionTag": "",
        "CreateIndex": 0,
        "ModifyIndex": 0,
    }))
}

/// `GET /v1/operator/autopilot/health`: each server's health as the leader sees it; 429
/// (as Consul) when the cluster cannot lose a server.
pub async fn autopilot_health(ctx: Ctx) -> Result<(axum::http::StatusCode, Json<Value>), ApiError> {
    let servers = ctx.cluster.autopilot_health().await?;
    let members = ctx.gossip.members();
    let voters = servers.iter().filter(|s| s.voter).count();
    let healthy_voters = servers.iter().filter(|s| s.voter && s.healthy).count();
    let failure_tolerance = healthy_voters.saturating_sub(voters / 2 + 1);
    let healthy = servers.iter().all(|s| s.healthy);
    let listed: Vec<Value> = servers
        .iter()
        .map(|s| {
            let (id, name) = names(&members, s.id);
            let serf = member_of(&members, s.id).map_or("none", |m| m.status.name());
            json!({
                "ID": id,
                "Name": name,
                "Address": s.address,
                "SerfStatus": serf,
                "Version": crate::model::CONSUL_API_VERSION,
                "Leader": s.leader,
                "LastContact": "0s",
                "LastTerm": s.last_term,
                "LastIndex": s.last_index,
                "Healthy": s.healthy,
                "Voter": s.voter,
                "StableSince": "",
            })
        })
        .collect();
    let status = if healthy { axum::http::StatusCode::OK } else { axum::http::StatusCode::TOO_MANY_REQUESTS };
    Ok((status, Json(json!({ "Healthy": healthy, "FailureTolerance": failure_tolerance, "Servers": listed }))))
}
