//! Query-string options shared by the read endpoints, and blocking queries.
//!
//! A blocking query (`?index=N&wait=D`) subscribes to the one topic its answer depends on
//! *before* reading, returns at once if the answer's index is already past N, and otherwise
//! sleeps until that topic is touched, the wait ends, or the agent shuts down — never polling.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use rand::Rng;
use serde::Serialize;

use super::acl_gate::RequestAcl;
use super::error::ApiError;
use super::fanout::GroupWake;
use super::HttpContext;
use crate::config::parse_duration;
use crate::filter::Filter;
use crate::store::{ReadView, StoreError, Subscription, Table, Topic};

const WAIT_DEFAULT: Duration = Duration::from_secs(300);
const WAIT_MAX: Duration = Duration::from_secs(600);

/// Parsed query string: the well-known options plus every parameter in order (repeatable
/// ones such as `tag` included). As an extractor it also keeps the request's path, which
/// together with the parameters tells requests apart (see `request_key`).
#[derive(Debug, Default)]
pub struct Query {
    /// The request's path; empty when parsed with [`Query::parse`] alone.
    pub path: String,
    pub params: Vec<(String, String)>,
    pub index: u64,
    pub wait: Duration,
    pub stale: bool,
    pub consistent: bool,
    /// `?filter=`: Consul's filter expression, parsed (list endpoints apply it).
    pub filter: Option<Arc<Filter>>,
    /// The request's ACL token (ACLs off when parsed with [`Query::parse`] alone).
    pub acl: RequestAcl,
    /// Set when identical blocking queries may join this one while it waits (`h1`).
    pub group: Option<Arc<GroupWake>>,
}

impl Query {
    /// Parses and validates the query string; `dc` must be the local datacenter.
    pub fn parse(raw: Option<&str>, datacenter: &str) -> Result<Query, ApiError> {
        let params: Vec<(String, String)> = form_urlencoded::parse(raw.unwrap_or("").as_bytes()).into_owned().collect();
        let mut q = Query { wait: WAIT_DEFAULT, ..Default::default() };
        for (key, value) in &params {
            match key.as_str() {
                "index" => {
                    q.index = value.parse().map_err(|_| ApiError::BadRequest("Invalid index".into()))?;
                }
                "wait" => {
                    let wait = parse_duration(value).map_err(|_| ApiError::BadRequest("Invalid wait time".into()))?;
                    q.wait = wait.min(WAIT_MAX);
                }
                "stale" => q.stale = true,
                "filter" if !value.is_empty() => {
                    let filter = Filter::parse(value).map_err(|e| {
                        ApiError::BadRequest(format!("Failed to create boolean expression evaluator: {e}"))
                    })?;
                    q.filter = Some(Arc::new(filter));
                }
                "consistent" => q.consistent = true,
                "dc" if !value.is_empty() && value != datacenter => {
                    return Err(ApiError::Internal("No path to datacenter".into()));
                }
                _ => {}
            }
        }
        q.params = params;
        if q.stale && q.consistent {
            return Err(ApiError::BadRequest("Conflicting flags: stale and consistent".into()));
        }
        Ok(q)
    }

    pub fn has(&self, key: &str) -> bool {
        self.params.iter().any(|(k, _)| k == key)
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.params.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    }

    /// Whether `element` passes `?filter=` (always, without one); an expression that does not
    /// fit the element (an unknown selector, a value of the wrong type) is a 400.
    pub fn keeps(&self, element: &impl Serialize) -> Result<bool, ApiError> {
        let Some(filter) = &self.filter else { return Ok(true) };
        filter.matches(&json_value(element)?).map_err(filter_error)
    }

    /// `answer` (a list, or a map of id to element) as a JSON body, keeping the elements
    /// `?filter=` matches.
    pub fn filtered_json(&self, answer: &impl Serialize) -> Result<Vec<u8>, ApiError> {
        let Some(filter) = &self.filter else { return json_bytes(answer) };
        json_bytes(&filter.retain(json_value(answer)?).map_err(filter_error)?)
    }

    /// An optional unsigned integer parameter; a malformed one is a 400 naming it.
    pub fn u64(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::BadRequest(format!("Invalid {key} value {v:?}: expected an unsigned integer"))
                })
            })
            .transpose()
    }
}

impl FromRequestParts<Arc<HttpContext>> for Query {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &Arc<HttpContext>) -> Result<Query, ApiError> {
        let mut q = Query::parse(parts.uri.query(), &ctx.identity.datacenter)?;
        q.path = parts.uri.path().to_string();
        q.acl = parts.extensions.get::<RequestAcl>().cloned().unwrap_or_else(RequestAcl::off);
        q.group = parts.extensions.get::<Arc<GroupWake>>().cloned();
        Ok(q)
    }
}

/// An encoded answer of a blocking-capable endpoint: the index it reflects, and what to send.
/// Every blocking query of the same request that one write woke sends the same one, so the
/// header values that depend on it are encoded here once, not once per response.
pub struct Answer {
    pub index: u64,
    pub status: StatusCode,
    /// `None` for an empty body.
    pub content_type: Option<&'static str>,
    pub body: Bytes,
    /// `X-Consul-Index` for `index`.
    index_value: HeaderValue,
    /// `Content-Length` of `body`.
    length_value: HeaderValue,
    /// ACLs left something out (`X-Consul-Results-Filtered-By-ACLs`).
    filtered: bool,
}

impl Answer {
    fn new(index: u64, status: StatusCode, content_type: Option<&'static str>, body: Bytes) -> Answer {
        let length_value = HeaderValue::from(body.len());
        Answer { index, status, content_type, body, index_value: index_value(index), length_value, filtered: false }
    }

    /// `value` as JSON, 200.
    pub fn json(index: u64, value: &impl Serialize) -> Result<Answer, ApiError> {
        Ok(Answer::new(index, StatusCode::OK, Some("application/json"), json_bytes(value)?.into()))
    }

    /// 404 with an empty body (and the index headers), as Consul answers a missing KV key.
    pub fn not_found(index: u64) -> Answer {
        Answer::new(index, StatusCode::NOT_FOUND, None, Bytes::new())
    }

    /// Raw bytes, 200.
    pub fn bytes(index: u64, body: Vec<u8>) -> Answer {
        Answer::new(index, StatusCode::OK, Some("application/octet-stream"), body.into())
    }
}

fn json_value(value: &impl Serialize) -> Result<serde_json::Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::Internal(format!("cannot encode the answer: {e}")))
}

fn filter_error(e: crate::filter::FilterError) -> ApiError {
    ApiError::BadRequest(format!("Failed to apply filter: {e}"))
}

/// `value` encoded as a JSON answer body.
pub fn json_bytes(value: &impl Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(value).map_err(|e| ApiError::Internal(format!("cannot encode the answer: {e}")))
}

/// What makes two requests' answers the same: the path, every parameter but `index` and
/// `wait`, in order, and the ACL token (what it may see).
fn request_key(q: &Query) -> String {
    let mut key = q.path.clone();
    key.push('\0');
    key.push_str(q.acl.accessor_id());
    for (name, value) in q.params.iter().filter(|(name, _)| name != "index" && name != "wait") {
        key.push('\0');
        key.push_str(name);
        key.push('=');
        key.push_str(value);
    }
    key
}

impl HttpContext {
    /// Waits until this server's replica may answer in the query's consistency mode:
    /// `?stale` at once (unless the replica is still replaying its log after a restart: then
    /// as the default); the default once it holds what the leader has applied; `?consistent`
    /// once it holds everything committed, confirmed by a quorum.
    pub(super) async fn check_consistency(&self, q: &Query) -> Result<(), ApiError> {
        self.cluster.require_server()?;
        if q.stale && !q.consistent && self.cluster.replayed() {
            return Ok(());
        }
        Ok(self.cluster.read_barrier(q.consistent).await?)
    }

    /// Answers a read that may block on `topic`: `answer` reads and encodes; a
    /// blocking query (`?index=`) returns as soon as an answer's index passes `q.index`.
    /// After a wake-up, the queries of the same request share one answer
    /// ([`crate::store::Subscription::shared`]): one read and one encoding per write, not one
    /// per waiting client.
    pub async fn blocking_answer(
        &self,
        q: &Query,
        topic: Topic,
        answer: impl Fn(&ReadView<'_>) -> Result<Answer, ApiError>,
    ) -> Result<Response, ApiError> {
        self.check_consistency(q).await?;
        let answer_now = || -> Result<Answer, ApiError> {
            let filtered_before = q.acl.filtered();
            let mut answer = answer(&self.store.read()?)?;
            answer.filtered = q.acl.filtered() > filtered_before;
            Ok(answer)
        };
        if q.index == 0 {
            return Ok(self.respond(&answer_now()?));
        }
        let _permit = self.blocking_permit()?;
        let mut subscription = self.store.watches().subscribe(topic);
        // A token revoked while its query waits is refused at once.
        let mut acl_changes =
            q.acl.authorizer().enabled().then(|| self.store.watches().subscribe(Topic::Table(Table::Acl)));
        let key = request_key(q);
        let jitter_ms =
            if q.wait.as_millis() >= 16 { rand::rng().random_range(0..q.wait.as_millis() as u64 / 16) } else { 0 };
        let deadline = tokio::time::Instant::now() + q.wait + Duration::from_millis(jitter_ms);
        let first = answer_now()?;
        if first.index > q.index {
            return Ok(self.respond(&first));
        }
        // Not kept while waiting: 10,000 waiting queries would each hold an answer that no
        // one will be sent (a few hundred MB when answers are large).
        drop(first);
        // Identical queries may join this one only while it waits, so that whatever it
        // answers them is read after they came (`fanout`).
        let group = q.group.as_deref();
        let reading = || group.inspect(|g| g.reading());
        group.inspect(|g| g.waiting());
        loop {
            tokio::select! {
                wake = subscription.changed() => {
                    reading();
                    // A group shares its answer already, and must read after its members
                    // came: an answer another query cached for this wake may be older.
                    let answer = match group {
                        Some(_) => Arc::new(answer_now()?),
                        None => subscription.shared(&key, wake, answer_now)?,
                    };
                    if answer.index > q.index {
                        return Ok(self.respond(&answer));
                    }
                    group.inspect(|g| g.waiting());
                }
                // Revoked: refused. Still valid: the next answer follows its current rules.
                _ = acl_change(&mut acl_changes) => {
                    reading();
                    q.acl.refresh(self.resolve_token(q.acl.secret()).await?);
                    group.inspect(|g| g.waiting());
                }
                _ = tokio::time::sleep_until(deadline) => {
                    reading();
                    return Ok(self.respond(&answer_now()?));
                }
                _ = self.shutdown.cancelled() => {
                    reading();
                    return Ok(self.respond(&answer_now()?));
                }
            }
        }
    }

    /// [`HttpContext::blocking_answer`] for endpoints that answer `read`'s value as JSON.
    pub async fn blocking_json<T: Serialize>(
        &self,
        q: &Query,
        topic: Topic,
        read: impl Fn(&ReadView<'_>) -> Result<(u64, T), StoreError>,
    ) -> Result<Response, ApiError> {
        self.blocking_encoded(q, topic, read, |value| json_bytes(value)).await
    }

    /// [`HttpContext::blocking_json`] for list endpoints: `?filter=` keeps the elements it
    /// matches (of a list, or of a map of id to element).
    pub async fn blocking_list<T: Serialize>(
        &self,
        q: &Query,
        topic: Topic,
        read: impl Fn(&ReadView<'_>) -> Result<(u64, T), StoreError>,
    ) -> Result<Response, ApiError> {
        self.blocking_encoded(q, topic, read, |value| q.filtered_json(value)).await
    }

    async fn blocking_encoded<T>(
        &self,
        q: &Query,
        topic: Topic,
        read: impl Fn(&ReadView<'_>) -> Result<(u64, T), StoreError>,
        encode: impl Fn(&T) -> Result<Vec<u8>, ApiError>,
    ) -> Result<Response, ApiError> {
        self.blocking_answer(q, topic, |view| {
            let (index, value) = read(view)?;
            Ok(Answer::new(index, StatusCode::OK, Some("application/json"), encode(&value)?.into()))
        })
        .await
    }

    /// The response for `answer`; no Content-Type unless the answer names one (an empty 404).
    /// Runs once per woken blocking query, so it allocates only what hyper needs per
    /// response (the header map and the boxed body): names are constants and values shared.
    fn respond(&self, answer: &Answer) -> Response {
        let mut response = Response::new(Body::from(answer.body.clone()));
        *response.status_mut() = answer.status;
        let headers = response.headers_mut();
        headers.reserve(RESPONSE_HEADERS_MAX);
        self.insert_index_headers(headers, answer.index_value.clone());
        headers.insert(header::CONTENT_LENGTH, answer.length_value.clone());
        if let Some(content_type) = answer.content_type {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        }
        if answer.filtered {
            let (name, value) = super::acl_gate::filtered_header();
            headers.insert(name, value);
        }
        response
    }

    /// One of `limits.max_blocking_queries` permits, held while a query blocks; none left:
    /// 429 at once.
    pub fn blocking_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.blocking_permits.clone().try_acquire_owned().map_err(|_| {
            ApiError::TooMany(format!(
                "too many blocking queries in progress (limit {}); retry later",
                self.limits.max_blocking_queries
            ))
        })
    }

    /// The headers every blocking-capable endpoint sends.
    pub fn index_headers(&self, index: u64) -> HeaderMap {
        let mut headers = HeaderMap::with_capacity(RESPONSE_HEADERS_MAX);
        self.insert_index_headers(&mut headers, index_value(index));
        headers
    }

    fn insert_index_headers(&self, headers: &mut HeaderMap, index_value: HeaderValue) {
        headers.insert(X_CONSUL_INDEX, index_value);
        let known = if self.cluster.knows_leader() { "true" } else { "false" };
        headers.insert(X_CONSUL_KNOWN_LEADER, HeaderValue::from_static(known));
        headers.insert(X_CONSUL_LAST_CONTACT, HeaderValue::from_static("0"));
    }
}

/// The next change to the ACL tables; never, without a subscription.
async fn acl_change(subscription: &mut Option<Subscription>) {
    match subscription {
        Some(subscription) => {
            subscription.changed().await;
        }
        None => std::future::pending().await,
    }
}

const X_CONSUL_INDEX: HeaderName = HeaderName::from_static("x-consul-index");
const X_CONSUL_KNOWN_LEADER: HeaderName = HeaderName::from_static("x-consul-knownleader");
const X_CONSUL_LAST_CONTACT: HeaderName = HeaderName::from_static("x-consul-lastcontact");
/// The index headers, Content-Type, Content-Length and the ACL filter flag.
const RESPONSE_HEADERS_MAX: usize = 6;

/// `X-Consul-Index` for `index`: never 0, as Consul sends it.
fn index_value(index: u64) -> HeaderValue {
    HeaderValue::from(index.max(1))
}
