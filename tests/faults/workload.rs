//! The workload a scenario runs while faults strike: workers that write and read through
//! every agent, recording each operation with when it started and ended and what it got.
//!
//! - A counter key, incremented by read + compare-and-set; the reads are default or
//!   `?consistent` (both must be linearizable) and every one goes into the history the
//!   Wing–Gong checker (`tests/cluster/linear.rs`) judges.
//! - Unique keys, each written once; the acknowledged ones must all be on every server
//!   after the heal.
//! - `?stale` reads, load only (a replica may lag; it must still answer or refuse cleanly).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::linear;
use crate::support::try_http_request;

/// Longest a single request may take before its outcome counts as unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one worker saw.
#[derive(Default)]
pub struct Record {
    pub history: Vec<linear::Event>,
    /// Unique keys whose PUT answered `true`.
    pub acknowledged: Vec<String>,
    /// When each acknowledged write (of any kind) returned.
    pub write_times: Vec<Instant>,
    pub operations: u64,
    /// Operations that failed with an answer (5xx, 429) — allowed during faults.
    pub refused: u64,
    /// Operations with no answer or a broken one: outcome unknown.
    pub unknown: u64,
}

/// The agents' HTTP addresses, replaceable while workers run (a restarted server may come
/// back on another port).
pub type Targets = Arc<Mutex<Vec<SocketAddr>>>;

/// Starts `workers` threads writing under `prefix` until `stop`, worker `w` through agent
/// `w % targets.len()` (as an application talks to its local agent: a fault on one agent
/// stalls only its own clients), each choosing operations with its own RNG from `seed`.
pub fn start(
    workers: usize,
    prefix: &str,
    targets: Targets,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Record>> {
    (0..workers)
        .map(|w| {
            let (targets, stop, prefix) = (Arc::clone(&targets), Arc::clone(&stop), prefix.to_string());
            std::thread::spawn(move || run_worker(w, &prefix, &targets, seed.wrapping_add(w as u64), &stop))
        })
        .collect()
}

fn run_worker(worker: usize, prefix: &str, targets: &Targets, seed: u64, stop: &AtomicBool) -> Record {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut record = Record::default();
    let counter = format!("{prefix}/counter");
    let mut unique = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let addr = {
            let targets = targets.lock().unwrap_or_else(|e| e.into_inner());
            targets[worker % targets.len()]
        };
        record.operations += 1;
        let unknown_before = record.unknown;
        match rng.random_range(0..10) {
            0..=4 => increment(addr, &counter, rng.random_bool(0.5), &mut record),
            5..=7 => {
                let key = format!("{prefix}/acked/{worker}-{unique}");
                unique += 1;
                match try_http_request(addr, "PUT", &format!("/v1/kv/{key}"), key.as_bytes(), REQUEST_TIMEOUT) {
                    Some(r) if r.status == 200 && r.body == b"true" => {
                        record.acknowledged.push(key);
                        record.write_times.push(Instant::now());
                    }
                    Some(r) if r.status >= 400 => record.refused += 1,
                    _ => record.unknown += 1,
                }
            }
            _ => match try_http_request(addr, "GET", &format!("/v1/kv/{counter}?stale"), b"", REQUEST_TIMEOUT) {
                Some(r) if r.status == 200 || r.status == 404 => {}
                Some(_) => record.refused += 1,
                None => record.unknown += 1,
            },
        }
        if record.unknown > unknown_before {
            // No answer (the agent is down): not a busy loop against it.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    record
}

/// One read (default or `?consistent`) and one compare-and-set of the counter, both into
/// the history.
fn increment(addr: SocketAddr, counter: &str, consistent: bool, record: &mut Record) {
    let start = Instant::now();
    let mode = if consistent { "?consistent" } else { "" };
    let read = try_http_request(addr, "GET", &format!("/v1/kv/{counter}{mode}"), b"", REQUEST_TIMEOUT);
    let Some((value, index)) = read.as_ref().and_then(|r| counter_value(r.status, &r.body)) else {
        // A failed read returns nothing to check: it may be left out of the history.
        match read {
            Some(_) => record.refused += 1,
            None => record.unknown += 1,
        }
        return;
    };
    record.history.push(linear::Event { op: linear::Op::Read { value }, start, end: Some(Instant::now()) });
    let start = Instant::now();
    let path = format!("/v1/kv/{counter}?cas={index}");
    let answer = try_http_request(addr, "PUT", &path, (value + 1).to_string().as_bytes(), REQUEST_TIMEOUT);
    let (ok, end) = match answer {
        Some(r) if r.status == 200 && r.body == b"true" => {
            record.write_times.push(Instant::now());
            (Some(true), Some(Instant::now()))
        }
        Some(r) if r.status == 200 && r.body == b"false" => (Some(false), Some(Instant::now())),
        // Refused or unanswered after sending: it may or may not have happened.
        other => {
            if other.is_some() {
                record.refused += 1;
            } else {
                record.unknown += 1;
            }
            (None, None)
        }
    };
    record.history.push(linear::Event { op: linear::Op::Cas { from: value, to: value + 1, ok }, start, end });
}

/// The counter's value and ModifyIndex from a KV answer (a missing key is 0 at index 0).
fn counter_value(status: u16, body: &[u8]) -> Option<(u64, u64)> {
    if status == 404 {
        return Some((0, 0));
    }
    if status != 200 {
        return None;
    }
    let entries: serde_json::Value = serde_json::from_slice(body).ok()?;
    let entry = &entries[0];
    use base64::Engine;
    let value = base64::engine::general_purpose::STANDARD.decode(entry["Value"].as_str()?).ok()?;
    Some((std::str::from_utf8(&value).ok()?.parse().ok()?, entry["ModifyIndex"].as_u64()?))
}
