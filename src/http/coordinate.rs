//! `/v1/coordinate/*`: Consul's network-coordinate endpoints, in Consul's shapes. cairn does
//! not compute Vivaldi coordinates yet, so every list is empty: clients that ask (`consul
//! rtt`, `?near=` helpers) get a well-formed "nothing known" instead of a 404 for the path.

use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::query::Query;
use super::{ApiError, Ctx};
use crate::store::{Table, Topic};

/// `GET /v1/coordinate/datacenters`: every datacenter this agent reaches (nearest first, as
/// `/v1/catalog/datacenters`), with no coordinates.
pub async fn datacenters(ctx: Ctx) -> Json<serde_json::Value> {
    let datacenters = ctx.cluster.datacenters();
    Json(json!(datacenters
        .iter()
        .map(|dc| json!({"Datacenter": dc, "AreaID": "WAN", "Coordinates": []}))
        .collect::<Vec<_>>()))
}

/// `GET /v1/coordinate/nodes`: `[]`, blocking like the node list (the index is the nodes
/// table's), so a watch on it behaves.
pub async fn nodes(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_json(&q, Topic::Table(Table::Nodes), |view| Ok((view.table_index(Table::Nodes)?, Vec::<()>::new())))
        .await
}

/// `GET /v1/coordinate/node/{node}`: 404 with the index headers, as Consul answers a node
/// without a coordinate.
pub async fn node(ctx: Ctx, Path(_node): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.check_consistency(&q).await?;
    let index = ctx.store.read()?.table_index(Table::Nodes)?;
    Ok((StatusCode::NOT_FOUND, ctx.index_headers(index)).into_response())
}
