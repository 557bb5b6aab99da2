//! Query-string options shared by the read endpoints, and blocking queries.
//!
//! A blocking query (`?index=N&wait=D`) subscribes to the one topic its answer depends on
//! *before* reading, returns at once if the answer's index is already past N, and otherwise
//! sleeps until that topic is touched, the wait ends, or the agent shuts down — never polling.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue};
use rand::Rng;

use super::error::ApiError;
use super::HttpContext;
use crate::config::parse_duration;
use crate::store::{ReadView, StoreError, Topic};

const WAIT_DEFAULT: Duration = Duration::from_secs(300);
const WAIT_MAX: Duration = Duration::from_secs(600);

/// Parsed query string: the well-known options plus every parameter in order (repeatable
/// ones such as `tag` included).
#[derive(Debug, Default)]
pub struct Query {
    pub params: Vec<(String, String)>,
    pub index: u64,
    pub wait: Duration,
    pub stale: bool,
    pub consistent: bool,
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

/// A read result with the index it reflects.
pub struct Indexed<T> {
    pub index: u64,
    pub value: T,
}

impl HttpContext {
    /// Checks the consistency mode: the default and `?consistent` need a leader (this server,
    /// with one server per cluster); `?consistent` also confirms it with a quorum.
    async fn check_consistency(&self, q: &Query) -> Result<(), ApiError> {
        if q.consistent {
            return Ok(self.cluster.linearizable().await?);
        }
        if !q.stale && !self.cluster.is_leader() {
            return Err(ApiError::Write(crate::cluster::WriteError::NoLeader));
        }
        Ok(())
    }

    /// Runs `read` as a (possibly blocking) query on `topic`. `read` returns the index its
    /// answer reflects along with the answer.
    pub async fn blocking_read<T>(
        &self,
        q: &Query,
        topic: Topic,
        read: impl Fn(&ReadView<'_>) -> Result<(u64, T), StoreError>,
    ) -> Result<Indexed<T>, ApiError> {
        self.check_consistency(q).await?;
        let read_once = || -> Result<Indexed<T>, ApiError> {
            let view = self.store.read()?;
            let (index, value) = read(&view)?;
            Ok(Indexed { index, value })
        };
        if q.index == 0 {
            return read_once();
        }
        let _permit = self.blocking_permit()?;
        let mut subscription = self.store.watches().subscribe(topic);
        let jitter_ms =
            if q.wait.as_millis() >= 16 { rand::rng().random_range(0..q.wait.as_millis() as u64 / 16) } else { 0 };
        let deadline = tokio::time::Instant::now() + q.wait + Duration::from_millis(jitter_ms);
        loop {
            let result = read_once()?;
            if result.index > q.index {
                return Ok(result);
            }
            tokio::select! {
                _ = subscription.changed() => {}
                _ = tokio::time::sleep_until(deadline) => return read_once(),
                _ = self.shutdown.cancelled() => return read_once(),
            }
        }
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
        let mut headers = HeaderMap::new();
        headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
        let known = self.cluster.knows_leader();
        headers.insert("X-Consul-KnownLeader", HeaderValue::from_static(if known { "true" } else { "false" }));
        headers.insert("X-Consul-LastContact", HeaderValue::from_static("0"));
        headers
    }
}
