//! `/v1/agent/self` and `/v1/status/*`: what this agent is and who leads.

use std::collections::BTreeMap;

use axum::Json;
use serde_json::{json, Value};

use super::Ctx;

/// The Consul API version cairn implements; clients branch on `Config.Version`.
pub const CONSUL_API_VERSION: &str = "1.20.0";

pub async fn status_leader(ctx: Ctx) -> Json<String> {
    Json(ctx.cluster.leader().map(|l| l.address).unwrap_or_default())
}

pub async fn status_peers(ctx: Ctx) -> Json<Vec<String>> {
    Json(ctx.cluster.peers())
}

/// This agent as a gossip member (`Member` of `/v1/agent/self`, an entry of
/// `/v1/agent/members`); until gossip exists it is the only member it knows.
fn member(ctx: &super::HttpContext) -> Value {
    let id = &ctx.identity;
    let tags = BTreeMap::from([
        ("role", if id.server { "consul" } else { "node" }.to_string()),
        ("dc", id.datacenter.clone()),
        ("port", id.server_port.to_string()),
        ("build", format!("{CONSUL_API_VERSION}:cairn-{}", env!("CARGO_PKG_VERSION"))),
        ("vsn", "2".to_string()),
        ("id", id.node_id.clone()),
    ]);
    json!({
        "Name": id.node_name,
        "Addr": id.advertise_addr,
        "Port": id.serf_lan_port,
        "Tags": tags,
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

pub async fn agent_members(ctx: Ctx) -> Json<Value> {
    Json(json!([member(&ctx)]))
}

/// `PUT /v1/agent/leave`: answers, then the agent shuts down gracefully (as SIGTERM).
pub async fn agent_leave(ctx: Ctx) -> &'static str {
    ctx.leave.notify_one();
    ""
}

/// `GET /v1/operator/raft/configuration`: the Raft voters (this server, for now).
pub async fn raft_configuration(ctx: Ctx) -> Json<Value> {
    let id = &ctx.identity;
    Json(json!({
        "Servers": [{
            "ID": id.node_id,
            "Node": id.node_name,
            "Address": format!("{}:{}", id.advertise_addr, id.server_port),
            "Leader": ctx.cluster.is_leader(),
            "Voter": true,
            "ProtocolVersion": "3",
        }],
        "Index": ctx.cluster.last_applied(),
    }))
}

pub async fn agent_self(ctx: Ctx) -> Json<Value> {
    let id = &ctx.identity;
    Json(json!({
        "Config": {
            "Datacenter": id.datacenter,
            "PrimaryDatacenter": id.datacenter,
            "NodeName": id.node_name,
            "NodeID": id.node_id,
            "Server": id.server,
            "Revision": format!("cairn-{}", env!("CARGO_PKG_VERSION")),
            "Version": CONSUL_API_VERSION,
            "BuildDate": "",
        },
        "DebugConfig": {},
        "Coord": null,
        "Member": member(&ctx),
        "Stats": {
            "cairn": {
                "version": env!("CARGO_PKG_VERSION"),
                "blocking_queries": ctx.blocking_queries_in_flight().to_string(),
                "blocking_topics": ctx.store.watches().topic_count().to_string(),
            },
            "raft": {
                "leader": ctx.cluster.is_leader().to_string(),
                "applied_index": ctx.cluster.last_applied().to_string(),
            },
        },
        "Meta": {},
        "xDS": null,
    }))
}
