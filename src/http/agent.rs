//! `/v1/agent/self` and `/v1/status/*`: what this agent is and who leads.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query};
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, Ctx};
use crate::gossip::MemberInfo;

pub use crate::model::CONSUL_API_VERSION;

pub async fn status_leader(ctx: Ctx) -> Json<String> {
    Json(ctx.cluster.leader().map(|l| l.address).unwrap_or_default())
}

pub async fn status_peers(ctx: Ctx) -> Json<Vec<String>> {
    Json(ctx.cluster.peers())
}

/// One gossip member in Consul's shape (an entry of `/v1/agent/members`, `Member` of
/// `/v1/agent/self`).
fn member_json(m: &MemberInfo) -> Value {
    json!({
        "Name": m.id.name,
        "Addr": m.id.addr.ip().to_string(),
        "Port": m.id.addr.port(),
        "Tags": m.id.tags(),
        "Status": m.status as u8,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    })
}

/// The pool `?wan` asks for: the WAN pool (servers only), else the LAN pool. `None` when
/// the WAN pool was asked of an agent that has none.
fn pool<'a>(ctx: &'a super::HttpContext, params: &HashMap<String, String>) -> Option<&'a crate::gossip::Gossip> {
    if wants_wan(params) {
        ctx.wan.as_ref()
    } else {
        Some(&ctx.gossip)
    }
}

/// `?wan`, `?wan=1`, `?wan=true` (Consul's flag forms); `?wan=0` and `?wan=false` do not.
fn wants_wan(params: &HashMap<String, String>) -> bool {
    params.get("wan").is_some_and(|v| !matches!(v.as_str(), "0" | "false"))
}

/// `GET /v1/agent/members`: the LAN pool as this agent sees it; `?wan`: the WAN pool of
/// servers (members named `node.dc`), `[]` on an agent without one (a client), as Consul.
/// `?segment=` is accepted and ignored.
pub async fn agent_members(
    ctx: Ctx,
    acl: super::acl_gate::RequestAcl,
    Query(params): Query<HashMap<String, String>>,
) -> Json<Value> {
    match pool(&ctx, &params) {
        Some(gossip) => {
            let mut members = gossip.members().as_ref().clone();
            // WAN members are named `node.dc`: the node's name is what rules name.
            let wan = params.contains_key("wan");
            acl.retain(&mut members, |a, m| {
                let name =
                    if wan { m.id.name.rsplit_once('.').map_or(m.id.name.as_str(), |(n, _)| n) } else { &m.id.name };
                a.allows(crate::acl::Resource::Node, name, crate::acl::Access::Read)
            });
            Json(Value::Array(members.iter().map(member_json).collect()))
        }
        None => Json(json!([])),
    }
}

/// `PUT /v1/agent/join/{addr}`: joins the pool through `addr` (host or host:port); `?wan`:
/// the WAN pool, through a server of another datacenter (servers only).
pub async fn agent_join(
    ctx: Ctx,
    Path(addr): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<&'static str, ApiError> {
    let gossip = pool(&ctx, &params).ok_or_else(wan_refused)?;
    gossip.join(&[addr]).await.map_err(|e| ApiError::Internal(format!("Failed to join: {e}")))?;
    Ok("")
}

fn wan_refused() -> ApiError {
    ApiError::BadRequest("this agent is not in a WAN pool: only servers with ports.serf_wan join one (`?wan`)".into())
}

/// `PUT /v1/agent/force-leave/{node}`: a failed member becomes left everywhere (and the
/// leader deregisters it); `?prune` also drops it from the member list; `?wan`: a member
/// of the WAN pool (`node.dc`).
pub async fn agent_force_leave(
    ctx: Ctx,
    Path(node): Path<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Result<&'static str, ApiError> {
    let prune = params.contains_key("prune");
    let gossip = pool(&ctx, &params).ok_or_else(wan_refused)?;
    match gossip.force_leave(&node, prune).await {
        Ok(true) => Ok(""),
        Ok(false) => {
            let known = gossip.members().iter().any(|m| m.id.name == node);
            Err(if known {
                ApiError::BadRequest(format!(
                    "Node {node} is not in a failed state: only failed members can be force-left"
                ))
            } else {
                ApiError::NotFound(format!("Unknown node {node}"))
            })
        }
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `PUT /v1/agent/leave`: answers, then the agent shuts down gracefully (as SIGTERM).
pub async fn agent_leave(ctx: Ctx) -> &'static str {
    ctx.leave.notify_one();
    ""
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
        "Member": ctx.gossip.members().first().map(member_json),
        "Stats": {
            "cairn": {
                "version": env!("CARGO_PKG_VERSION"),
                "blocking_queries": ctx.blocking_queries_in_flight().to_string(),
                "blocking_topics": ctx.store.watches().topic_count().to_string(),
            },
            "serf_lan": ctx.gossip.stats(),
            "raft": {
                "leader": ctx.cluster.is_leader().to_string(),
                "applied_index": ctx.cluster.last_applied().to_string(),
            },
        },
        "Meta": {},
        "xDS": null,
    }))
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KeyringRequest {
    key: String,
}

/// `/v1/operator/keyring`: GET lists the keys every alive member holds; POST installs `Key`
/// everywhere, PUT makes it the primary, DELETE removes it. 500 naming each member that
/// failed, as Consul.
pub async fn operator_keyring(
    ctx: Ctx,
    method: axum::http::Method,
    headers: axum::http::HeaderMap,
    body: axum::body::Body,
) -> Result<axum::response::Response, ApiError> {
    use crate::gossip::keyring::KeyringOp;
    use axum::http::Method;
    use axum::response::IntoResponse;
    let op = if method == Method::GET {
        KeyringOp::List
    } else {
        let bytes = super::body::read_limited(&headers, body, ctx.limits.http_max_body_bytes).await?;
        let KeyringRequest { key } = super::body::decode_json(&bytes)?;
        match method {
            Method::POST => KeyringOp::Install(key),
            Method::PUT => KeyringOp::Use(key),
            _ => KeyringOp::Remove(key),
        }
    };
    // As Consul: on a server the WAN pool first, then the LAN pool; one answer per pool.
    let pools = ctx.wan.iter().map(|g| (g, true)).chain([(&ctx.gossip, false)]);
    let mut answers = Vec::new();
    for (gossip, wan) in pools {
        let replies = gossip.keyring(op.clone()).await;
        let failures: Vec<String> =
            replies.iter().filter_map(|r| r.error.as_ref().map(|e| format!("{}: {e}", r.node))).collect();
        if !failures.is_empty() {
            return Err(ApiError::Internal(format!(
                "{} of {} {} members failed: {}",
                failures.len(),
                replies.len(),
                if wan { "WAN" } else { "LAN" },
                failures.join("; ")
            )));
        }
        let mut keys: BTreeMap<String, usize> = BTreeMap::new();
        let mut primary: BTreeMap<String, usize> = BTreeMap::new();
        for r in &replies {
            for k in &r.keys {
                *keys.entry(k.clone()).or_default() += 1;
            }
            if let Some(k) = r.keys.first() {
                *primary.entry(k.clone()).or_default() += 1;
            }
        }
        answers.push(json!({
            "WAN": wan,
            "Datacenter": ctx.identity.datacenter,
            "Segment": "",
            "Partition": "",
            "Keys": keys,
            "PrimaryKeys": primary,
            "NumNodes": replies.len(),
            "Messages": {},
        }));
    }
    if op != KeyringOp::List {
        return Ok(().into_response());
    }
    Ok(Json(Value::Array(answers)).into_response())
}

/// `GET /v1/agent/metrics`: every metric the agent keeps (README "Metrics"), in Consul's
/// JSON shape, or with `?format=prometheus` in Prometheus' text format — only when
/// `telemetry.prometheus_retention_time` is above zero (else 415, as Consul).
pub async fn agent_metrics(
    ctx: Ctx,
    Query(params): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let prometheus = match params.get("format").map(String::as_str) {
        None | Some("") | Some("json") => false,
        Some("prometheus") => true,
        Some(other) => {
            return Err(ApiError::BadRequest(format!("Unsupported metrics format {other:?}: json or prometheus")))
        }
    };
    if prometheus && ctx.prometheus_retention_time.is_zero() {
        return Ok((
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Prometheus is not enabled since its retention time is not positive",
        )
            .into_response());
    }
    let collected = ctx.metrics.collect(gauges(&ctx), counters(&ctx), histograms(&ctx));
    if prometheus {
        let content_type = [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")];
        return Ok((content_type, collected.prometheus()).into_response());
    }
    Ok(Json(collected.consul_json(consul_timestamp(std::time::SystemTime::now()))).into_response())
}

/// The gauges, read now: Raft, blocking queries, gossip members by pool and status, local
/// checks by status, the LMDB map, the process.
fn gauges(ctx: &super::HttpContext) -> Vec<crate::metrics::Gauge> {
    use crate::gossip::MemberStatus;
    use crate::metrics::Gauge;
    let plain = |name: &'static str, value: f64| Gauge { name, labels: Vec::new(), value };
    let mut gauges = vec![
        plain("raft_applied_index", ctx.cluster.last_applied() as f64),
        plain("raft_leader", if ctx.cluster.is_leader() { 1.0 } else { 0.0 }),
        plain("http_blocking_queries", ctx.blocking_queries_in_flight() as f64),
    ];
    let pools = [("lan", Some(&ctx.gossip)), ("wan", ctx.wan.as_ref())];
    for (pool, gossip) in pools {
        let Some(gossip) = gossip else { continue };
        let members = gossip.members();
        for status in [MemberStatus::Alive, MemberStatus::Leaving, MemberStatus::Left, MemberStatus::Failed] {
            let count = members.iter().filter(|m| m.status == status).count() as f64;
            let labels = vec![("pool", pool.to_string()), ("status", status.name().to_string())];
            gauges.push(Gauge { name: "serf_members", labels, value: count });
        }
        let stats = gossip.stats();
        let number = |key: &str| stats.get(key).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        for (name, key) in [("serf_health_score", "health_score"), ("serf_packets_refused", "packets_refused")] {
            gauges.push(Gauge { name, labels: vec![("pool", pool.to_string())], value: number(key) });
        }
    }
    let statuses: Vec<crate::model::CheckStatus> =
        ctx.local.read(|state| state.checks.values().map(|c| c.status).collect());
    for status in
        [crate::model::CheckStatus::Passing, crate::model::CheckStatus::Warning, crate::model::CheckStatus::Critical]
    {
        let count = statuses.iter().filter(|s| **s == status).count() as f64;
        gauges.push(Gauge { name: "checks", labels: vec![("status", status.as_str().to_string())], value: count });
    }
    let (room, size) = ctx.store.map_room();
    gauges.push(plain("lmdb_map_size_bytes", size as f64));
    gauges.push(plain("lmdb_map_used_bytes", size.saturating_sub(room) as f64));
    let (rss, fds) = crate::metrics::process_figures();
    gauges.extend(rss.map(|v| plain("process_resident_memory_bytes", v)));
    gauges.extend(fds.map(|v| plain("process_open_fds", v)));
    gauges
}

/// The counters other modules keep: Raft leader changes, gossip probes and suspicions.
fn counters(ctx: &super::HttpContext) -> Vec<crate::metrics::Counter> {
    use crate::metrics::Counter;
    let mut counters =
        vec![Counter { name: "raft_leader_changes_total", labels: Vec::new(), value: ctx.cluster.leader_changes() }];
    let pools = [("lan", Some(&ctx.gossip)), ("wan", ctx.wan.as_ref())];
    for (pool, gossip) in pools {
        let Some(gossip) = gossip else { continue };
        let stats = gossip.core_stats();
        for (name, value) in [
            ("serf_probes_total", stats.probes_sent),
            ("serf_probes_failed_total", stats.probes_failed),
            ("serf_suspicions_total", stats.suspicions),
        ] {
            counters.push(Counter { name, labels: vec![("pool", pool.to_string())], value });
        }
    }
    counters
}

/// The histograms other modules keep: Raft commit time, fsync time, check probe time.
fn histograms(ctx: &super::HttpContext) -> Vec<crate::metrics::NamedHistogram> {
    use crate::metrics::NamedHistogram;
    let mut histograms = vec![
        NamedHistogram { name: "raft_commit_seconds", labels: Vec::new(), values: ctx.cluster.commit_seconds() },
        NamedHistogram { name: "fsync_seconds", labels: Vec::new(), values: ctx.store.sync_seconds() },
    ];
    for (kind, values) in ctx.local.probe_seconds() {
        histograms.push(NamedHistogram {
            name: "check_probe_seconds",
            labels: vec![("kind", kind.to_string())],
            values,
        });
    }
    histograms
}

/// Go's `time.Time` string in UTC, as Consul's metrics `Timestamp`: `2026-12-04 16:57:00 +0000 UTC`.
fn consul_timestamp(at: std::time::SystemTime) -> String {
    let secs = at.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} +0000 UTC", rest / 3600, rest % 3600 / 60, rest % 60)
}

/// `GET /v1/agent/monitor?loglevel=`: streams this agent's log, one line per event at that
/// level or above (default info), until the client goes away or the agent stops. A client
/// too slow to read is told how many lines it missed. An unknown level is a 400.
pub async fn agent_monitor(
    ctx: Ctx,
    Query(params): Query<HashMap<String, String>>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    use tokio::sync::broadcast::error::RecvError;
    let name = params.get("loglevel").map_or("info", String::as_str);
    let level = match name.to_ascii_lowercase().as_str() {
        "trace" => tracing::Level::TRACE,
        "debug" => tracing::Level::DEBUG,
        "info" => tracing::Level::INFO,
        "warn" => tracing::Level::WARN,
        "err" | "error" => tracing::Level::ERROR,
        _ => return Err(ApiError::BadRequest(format!("Unknown log level: {name}"))),
    };
    let watch = ctx.log_tap.watch(level);
    let shutdown = ctx.shutdown.clone();
    // The `Watch` lives in the stream's state: a client that disconnects drops the body,
    // which ends the monitor.
    let lines = futures_util::stream::unfold((watch, shutdown), move |(mut watch, shutdown)| async move {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = watch.lines.recv() => r,
            };
            let line = match received {
                Ok((line_level, line)) if line_level <= level => line.to_string(),
                Ok(_) => continue,
                Err(RecvError::Lagged(n)) => format!("[monitor: {n} log lines dropped: reading too slowly]\n"),
                Err(RecvError::Closed) => return None,
            };
            return Some((Ok::<_, std::io::Error>(line), (watch, shutdown)));
        }
    });
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; charset=utf-8")], axum::body::Body::from_stream(lines))
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::consul_timestamp;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn timestamps_read_as_gos() {
        assert_eq!(consul_timestamp(UNIX_EPOCH), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(consul_timestamp(UNIX_EPOCH + Duration::from_secs(951_782_400)), "2000-02-29 00:00:00 +0000 UTC");
        assert_eq!(consul_timestamp(UNIX_EPOCH + Duration::from_secs(1_796_403_420)), "2026-12-04 16:57:00 +0000 UTC");
    }
}
