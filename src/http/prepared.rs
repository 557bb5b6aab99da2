//! `/v1/query`: prepared queries — create, list, read, update, delete, execute and explain.
//! What a query matches and how it fails over is `crate::prepared_query`'s.

use axum::body::Body;
use axum::extract::Path;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::acl_gate::RequestAcl;
use super::body::{decode_json, read_limited};
use super::health::ServiceEntry;
use super::query::Query;
use super::{ApiError, Ctx};
use crate::acl::{Access, Authorizer, Resource};
use crate::model::{format_duration, Command, CommandResult, PreparedQuery};
use crate::store::{Table, Topic};

/// A definition from a request body (fields cairn does not know are ignored, as Consul).
async fn definition(ctx: &Ctx, headers: &HeaderMap, body: Body) -> Result<PreparedQuery, ApiError> {
    let bytes = read_limited(headers, body, ctx.limits.http_max_body_bytes).await?;
    let value: Value = decode_json(&bytes)?;
    PreparedQuery::from_request(value).map_err(|e| ApiError::BadRequest(format!("Request decode failed: {e}")))
}

async fn store(ctx: &Ctx, query: PreparedQuery) -> Result<(), ApiError> {
    if let Some(why) = query.invalid() {
        return Err(ApiError::BadRequest(why));
    }
    match ctx.cluster.write(Command::PreparedQuerySet(Box::new(query))).await? {
        CommandResult::Done => Ok(()),
        CommandResult::Rejected(why) => Err(ApiError::BadRequest(why)),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

/// Prepared queries are governed by `query` rules on their name (an unnamed query by its
/// service's `service` rules, for reading).
fn may_read(a: &Authorizer, query: &PreparedQuery) -> bool {
    if query.name.is_empty() {
        a.allows(Resource::Service, &query.service.service, Access::Read)
    } else {
        a.allows(Resource::Query, &query.name, Access::Read)
    }
}

/// `POST /v1/query` → `{"ID": ...}`.
pub async fn create(ctx: Ctx, acl: RequestAcl, headers: HeaderMap, body: Body) -> Result<Json<Value>, ApiError> {
    let mut query = definition(&ctx, &headers, body).await?;
    acl.require(Resource::Query, &query.name, Access::Write)?;
    query.id = uuid::Uuid::new_v4().to_string();
    let id = query.id.clone();
    store(&ctx, query).await?;
    Ok(Json(json!({ "ID": id })))
}

/// `GET /v1/query`: every prepared query (blocking on the table's index).
pub async fn list(ctx: Ctx, q: Query) -> Result<Response, ApiError> {
    ctx.blocking_list(&q, Topic::Table(Table::PreparedQueries), |view| {
        let mut queries = view.prepared_queries()?;
        q.acl.retain(&mut queries, may_read);
        Ok((view.table_index(Table::PreparedQueries)?, queries))
    })
    .await
}

/// `GET /v1/query/{id}` → `[query]`, 404 when there is none.
pub async fn read(ctx: Ctx, Path(id): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.check_consistency(&q).await?;
    let view = ctx.store.read()?;
    let query = view.prepared_query(&id)?.ok_or_else(not_found)?;
    if !may_read(&q.acl.authorizer(), &query) {
        return Err(ApiError::Forbidden("Permission denied".into()));
    }
    let index = view.table_index(Table::PreparedQueries)?;
    Ok((ctx.index_headers(index), Json(vec![query])).into_response())
}

/// `PUT /v1/query/{id}`: replaces the definition of an existing query.
pub async fn update(
    ctx: Ctx,
    acl: RequestAcl,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<(), ApiError> {
    let mut query = definition(&ctx, &headers, body).await?;
    ctx.cluster.read_barrier(false).await?;
    let Some(old) = ctx.store.read()?.prepared_query(&id)? else {
        return Err(ApiError::NotFound(format!("Cannot modify non-existent prepared query: '{id}'")));
    };
    acl.require(Resource::Query, &old.name, Access::Write)?;
    acl.require(Resource::Query, &query.name, Access::Write)?;
    query.id = id;
    store(&ctx, query).await
}

/// `DELETE /v1/query/{id}`.
pub async fn delete(ctx: Ctx, acl: RequestAcl, Path(id): Path<String>) -> Result<(), ApiError> {
    if let Some(old) = ctx.store.read()?.prepared_query(&id)? {
        acl.require(Resource::Query, &old.name, Access::Write)?;
    }
    match ctx.cluster.write(Command::PreparedQueryDelete { id }).await? {
        CommandResult::Bool(true) => Ok(()),
        CommandResult::Bool(false) => Err(not_found()),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

/// `GET /v1/query/{id or name}/execute[?limit=N]`: `{Service, Nodes, DNS, Datacenter,
/// Failovers}`, the nodes as `/v1/health/service` lists them.
pub async fn execute(ctx: Ctx, Path(id): Path<String>, q: Query) -> Result<Response, ApiError> {
    let limit = match q.get("limit") {
        Some(text) => Some(text.parse::<usize>().map_err(|_| ApiError::BadRequest(format!("Invalid limit '{text}'")))?),
        None => None,
    };
    ctx.check_consistency(&q).await?;
    let (query, index) = {
        let view = ctx.store.read()?;
        (view.resolve_prepared_query(&id)?.ok_or_else(not_found)?, view.table_index(Table::PreparedQueries)?)
    };
    if !may_read(&q.acl.authorizer(), &query) {
        return Err(ApiError::Forbidden("Permission denied".into()));
    }
    q.acl.require(Resource::Service, &query.service.service, Access::Read)?;
    let execution = crate::prepared_query::execute(&ctx.store, &ctx.cluster, &ctx.identity.datacenter, &query, limit)
        .await
        .map_err(|e| match e {
            crate::prepared_query::ExecuteError::Store(e) => ApiError::Store(e),
            crate::prepared_query::ExecuteError::Write(e) => ApiError::Write(e),
        })?;
    let nodes: Vec<ServiceEntry> = execution.nodes.into_iter().map(ServiceEntry::from).collect();
    let answer = json!({
        "Service": execution.service,
        "Nodes": nodes,
        "DNS": {"TTL": execution.dns_ttl.map(format_duration).unwrap_or_default()},
        "Datacenter": execution.datacenter,
        "Failovers": execution.failovers,
    });
    Ok((ctx.index_headers(index), Json(answer)).into_response())
}

/// `GET /v1/query/{id or name}/explain` → `{"Query": query}`.
pub async fn explain(ctx: Ctx, Path(id): Path<String>, q: Query) -> Result<Response, ApiError> {
    ctx.check_consistency(&q).await?;
    let view = ctx.store.read()?;
    let query = view.resolve_prepared_query(&id)?.ok_or_else(not_found)?;
    if !may_read(&q.acl.authorizer(), &query) {
        return Err(ApiError::Forbidden("Permission denied".into()));
    }
    let index = view.table_index(Table::PreparedQueries)?;
    Ok((ctx.index_headers(index), Json(json!({ "Query": query }))).into_response())
}

fn not_found() -> ApiError {
    ApiError::NotFound("Query not found".into())
}
