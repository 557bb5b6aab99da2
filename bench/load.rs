//! Closed-loop load: N clients, each one keep-alive connection sending its next request as
//! soon as the previous one is answered, either for a measured time or until a number of
//! requests is done. Also the request bodies every section shares and latency percentiles.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::client::HttpConn;

/// Bytes in every value the bench writes.
pub const VALUE_BYTES: usize = 64;
/// Operations per `/v1/txn` when loading keys (the server's default `txn_max_ops`).
pub const TXN_OPS: u64 = 64;
/// How long one request may take; past it the request counts as an error and its client stops.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Request {
    pub method: &'static str,
    pub path: String,
    pub body: Vec<u8>,
}

/// Builds request number `seq` (unique across all clients) for client `client`.
pub type MakeRequest = Arc<dyn Fn(usize, u64) -> Request + Send + Sync>;

#[derive(Clone, Copy)]
pub enum Stop {
    /// Run for `warmup` unmeasured, then count what completes during `measure`.
    Timed { warmup: Duration, measure: Duration },
    /// Send requests 0..n between all clients; every one must succeed.
    Count(u64),
}

/// What a run did. Latencies are of the requests completed inside the measured window.
pub struct Outcome {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub measured: Duration,
    pub latencies_us: Vec<u32>,
}

impl Outcome {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.measured.as_secs_f64()
    }
}

/// Runs `clients` closed-loop clients against `addr`. Connections are opened before the clock
/// starts. A client stops at its first I/O error (the error is counted); a non-200 answer is
/// counted and the client goes on.
pub async fn drive(addr: SocketAddr, clients: usize, stop: Stop, make: MakeRequest) -> Result<Outcome> {
    let mut conns = Vec::with_capacity(clients);
    for _ in 0..clients {
        conns.push(HttpConn::connect(addr).await.with_context(|| format!("connect to {addr}"))?);
    }
    let started = Instant::now();
    let (window_start, window_end) = match stop {
        Stop::Timed { warmup, measure } => (started + warmup, Some(started + warmup + measure)),
        Stop::Count(_) => (started, None),
    };
    let next_seq = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (client, mut conn) in conns.into_iter().enumerate() {
        let next_seq = Arc::clone(&next_seq);
        let make = Arc::clone(&make);
        tasks.spawn(async move {
            let mut tally = Tally::default();
            loop {
                let seq = next_seq.fetch_add(1, Ordering::Relaxed);
                match (stop, window_end) {
                    (Stop::Count(n), _) if seq >= n => break,
                    (_, Some(end)) if Instant::now() >= end => break,
                    _ => {}
                }
                let req = make(client, seq);
                let sent = Instant::now();
                let result = tokio::time::timeout(REQUEST_TIMEOUT, conn.request(req.method, &req.path, &req.body))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()));
                let done = Instant::now();
                let in_window = done >= window_start && window_end.is_none_or(|end| done < end);
                match result {
                    Ok(resp) if resp.status == 200 => {
                        if in_window {
                            tally.ok += 1;
                            tally.latencies_us.push(micros(done - sent));
                        }
                    }
                    Ok(resp) => {
                        tally.error(format!("{} {}: {} {}", req.method, req.path, resp.status, resp.text().trim()))
                    }
                    Err(e) => {
                        tally.error(format!("{} {}: {e}", req.method, req.path));
                        break;
                    }
                }
            }
            tally
        });
    }
    let mut total = Tally::default();
    while let Some(tally) = tasks.join_next().await {
        let tally = tally.context("client task panicked")?;
        total.ok += tally.ok;
        total.errors += tally.errors;
        total.first_error = total.first_error.or(tally.first_error);
        total.latencies_us.extend(tally.latencies_us);
    }
    let measured = match stop {
        Stop::Timed { measure, .. } => measure,
        Stop::Count(_) => started.elapsed(),
    };
    Ok(Outcome {
        ok: total.ok,
        errors: total.errors,
        first_error: total.first_error,
        measured,
        latencies_us: total.latencies_us,
    })
}

/// Sends requests 0..n with `clients` connections; fails unless every one answers 200.
pub async fn load(addr: SocketAddr, clients: usize, n: u64, make: MakeRequest) -> Result<()> {
    let outcome = drive(addr, clients, Stop::Count(n), make).await?;
    if outcome.errors > 0 || outcome.ok != n {
        bail!(
            "load: {} of {n} requests succeeded, {} failed; first failure: {}",
            outcome.ok,
            outcome.errors,
            outcome.first_error.unwrap_or_default()
        );
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
}

impl Tally {
    fn error(&mut self, message: String) {
        self.errors += 1;
        self.first_error.get_or_insert(message);
    }
}

pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// The 64-byte value every write stores, the same bytes for every system.
pub fn value() -> Vec<u8> {
    (0..VALUE_BYTES).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `PUT /v1/kv/{prefix}{seq}`: one new key per request.
pub fn cairn_kv_put(prefix: &'static str) -> MakeRequest {
    let value = value();
    Arc::new(move |_, seq| Request { method: "PUT", path: format!("/v1/kv/{prefix}{seq:08}"), body: value.clone() })
}

/// `PUT /v1/txn` setting keys `{prefix}{i}` for i in `seq*64 .. min(n, seq*64+64)`; send
/// `txn_batches(n)` of them to set n keys.
pub fn cairn_txn_set(prefix: &'static str, n: u64) -> MakeRequest {
    let value_b64 = base64::engine::general_purpose::STANDARD.encode(value());
    Arc::new(move |_, seq| {
        let ops: Vec<serde_json::Value> = (seq * TXN_OPS..n.min((seq + 1) * TXN_OPS))
            .map(|i| serde_json::json!({"KV": {"Verb": "set", "Key": kv_key(prefix, i), "Value": value_b64}}))
            .collect();
        Request { method: "PUT", path: "/v1/txn".to_owned(), body: serde_json::to_vec(&ops).expect("JSON of strings") }
    })
}

pub fn txn_batches(n: u64) -> u64 {
    n.div_ceil(TXN_OPS)
}

/// The key `cairn_txn_set` writes as number `i`.
pub fn kv_key(prefix: &str, i: u64) -> String {
    format!("{prefix}{i:08}")
}

/// Where a catalog registration goes: `node`, and service `service` on it.
pub struct Registration {
    pub node: String,
    pub address: String,
    pub service: String,
}

/// `PUT /v1/catalog/register` of one node with one service, as `place` says.
pub fn cairn_register(place: impl Fn(usize, u64) -> Registration + Send + Sync + 'static) -> MakeRequest {
    Arc::new(move |client, seq| {
        let r = place(client, seq);
        let body = serde_json::json!({
            "Node": r.node,
            "Address": r.address,
            "Service": {"ID": r.service, "Service": r.service, "Port": 8000 + seq % 1000},
        });
        Request {
            method: "PUT",
            path: "/v1/catalog/register".to_owned(),
            body: serde_json::to_vec(&body).expect("JSON of strings"),
        }
    })
}

/// Latency percentiles over a set of samples.
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles; all zero for no samples.
    pub fn of(samples_us: &mut [u32]) -> Percentiles {
        samples_us.sort_unstable();
        let rank = |p: f64| -> f64 {
            if samples_us.is_empty() {
                return 0.0;
            }
            let i = ((p * samples_us.len() as f64).ceil() as usize).clamp(1, samples_us.len());
            samples_us[i - 1] as f64 / 1000.0
        };
        Percentiles { p50_ms: rank(0.50), p99_ms: rank(0.99), max_ms: rank(1.0) }
    }
}
