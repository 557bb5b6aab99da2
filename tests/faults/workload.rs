//! The workload a scenario runs while faults strike: workers that write and read through
//! every agent, recording each operation with when it started and ended and what it got.
//!
//! - A counter key, incremented by read + compare-and-set; the reads are default or
//!   `?consistent` (both must be linearizable) and every one goes into the history the
//!   Wing–Gong checker (`tests/cluster/linear.rs`) judges.
//! - Unique keys, each written once; the acknowledged ones must all be on every server
//!   after the heal.
//! - Catalog registrations of nodes, each with an instance of one service, and
//!   deregistrations of some of them: after the heal, DNS on every agent must answer for
//!   exactly the registered ones.
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
    /// Nodes whose registration answered `true` and which no deregistration was sent for.
    pub registered: Vec<String>,
    /// Nodes whose deregistration answered `true`.
    pub deregistered: Vec<String>,
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
            7 => {
                let node = format!("fw{worker}x{unique}");
                unique += 1;
                let body = format!(
                    r#"{{"Node": "{node}", "Address": "10.77.{worker}.{}", "Service": {{"Service": "faults-web", "Port": 80}}}}"#,
                    unique % 250
                );
                match try_http_request(addr, "PUT", "/v1/catalog/register", body.as_bytes(), REQUEST_TIMEOUT) {
                    Some(r) if r.status == 200 && r.body == b"true" => record.registered.push(node),
                    Some(_) => record.refused += 1,
                    None => record.unknown += 1,
                }
            }
            8 if !record.registered.is_empty() => {
                // Once sent, its outcome decides: kept out of both lists unless answered.
                let node = record.registered.swap_remove(rng.random_range(0..record.registered.len()));
                let body = format!(r#"{{"Node": "{node}"}}"#);
                match try_http_request(addr, "PUT", "/v1/catalog/deregister", body.as_bytes(), REQUEST_TIMEOUT) {
                    Some(r) if r.status == 200 && r.body == b"true" => record.deregistered.push(node),
                    Some(_) => record.refused += 1,
                    None => record.unknown += 1,
                }
            }
            5..=6 => {
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

/// A time the lock was surely held by one session: from its acquire's `true` answer until
/// its holder first asked to release it (it may be released any time after).
#[derive(Clone, Copy, Debug)]
pub struct Held {
    pub worker: usize,
    pub from: Instant,
    pub until: Instant,
}

/// Starts one lock worker per agent: each holds a session of its own (no health checks, no
/// lock delay, so only its release ends a hold) and keeps taking `prefix/lock` with
/// `?acquire`, holding it briefly and releasing it, until `stop`.
pub fn start_lockers(
    prefix: &str,
    targets: &Targets,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Vec<Held>>> {
    let agents = targets.lock().unwrap_or_else(|e| e.into_inner()).len();
    (0..agents)
        .map(|w| {
            let (targets, stop, key) = (Arc::clone(targets), Arc::clone(stop), format!("{prefix}/lock"));
            std::thread::spawn(move || run_locker(w, &key, &targets, &stop))
        })
        .collect()
}

fn run_locker(worker: usize, key: &str, targets: &Targets, stop: &AtomicBool) -> Vec<Held> {
    let mut held = Vec::new();
    let mut session: Option<String> = None;
    while !stop.load(Ordering::Relaxed) {
        let addr = targets.lock().unwrap_or_else(|e| e.into_inner())[worker];
        let Some(id) = session.clone().or_else(|| create_session(addr)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        session = Some(id.clone());
        let acquire = try_http_request(addr, "PUT", &format!("/v1/kv/{key}?acquire={id}"), b"x", REQUEST_TIMEOUT);
        let from = Instant::now();
        let acquired = match acquire {
            Some(r) if r.status == 200 && r.body == b"true" => true,
            Some(r) if r.status == 200 => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            // Refused or unanswered: it may hold the lock (now or later); release, then
            // retire the session (below).
            _ => false,
        };
        let tainted = !acquired;
        if acquired {
            std::thread::sleep(Duration::from_millis(30));
        }
        let until = Instant::now();
        if acquired {
            held.push(Held { worker, from, until });
        }
        // The hold is certain only until the first release request goes out: a release
        // applied whose answer was lost (the agent killed meanwhile) frees the lock for
        // others. Keep asking until one is answered (through whichever address the agent
        // has now).
        let mut retries = 0;
        let released = until_answered(worker, targets, &format!("/v1/kv/{key}?release={id}"), &mut retries);
        // A request whose outcome is unknown may still be applied later — a stale release
        // would end this session's next hold, a stale acquire would take the lock back.
        // Such a session is destroyed (which releases what it holds and makes a late
        // acquire fail) and the next round starts with a new one, as a careful client does.
        if tainted || retries > 0 {
            until_answered(worker, targets, &format!("/v1/session/destroy/{id}"), &mut retries);
            session = None;
        }
        if !released {
            break;
        }
    }
    held
}

/// PUTs `path` through worker `worker`'s agent until it is answered 200 (at most 50 tries,
/// 100 ms apart), counting the tries that were not in `retries`.
fn until_answered(worker: usize, targets: &Targets, path: &str, retries: &mut u32) -> bool {
    (0..50).any(|_| {
        let addr = targets.lock().unwrap_or_else(|e| e.into_inner())[worker];
        let answered = try_http_request(addr, "PUT", path, b"", REQUEST_TIMEOUT).is_some_and(|r| r.status == 200);
        if !answered {
            *retries += 1;
            std::thread::sleep(Duration::from_millis(100));
        }
        answered
    })
}

fn create_session(addr: SocketAddr) -> Option<String> {
    let body = br#"{"Name": "faults", "NodeChecks": [], "LockDelay": "0s"}"#;
    let r = try_http_request(addr, "PUT", "/v1/session/create", body, REQUEST_TIMEOUT)?;
    let answer: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
    answer["ID"].as_str().map(str::to_string)
}

/// Pairs of holds by different workers that overlap: two sessions holding one lock at once.
pub fn overlapping_holds(holds: &[Held]) -> Vec<(Held, Held)> {
    let mut sorted = holds.to_vec();
    sorted.sort_by_key(|h| h.from);
    let mut overlaps = Vec::new();
    for (i, a) in sorted.iter().enumerate() {
        for b in sorted[i + 1..].iter().take_while(|b| b.from < a.until) {
            if b.worker != a.worker {
                overlaps.push((*a, *b));
            }
        }
    }
    overlaps
}

/// Gossip's status of a live member in `/v1/agent/members`.
pub const ALIVE: u64 = 1;
const FAILED: u64 = 4;

/// Every member `addr`'s agent lists, by name, with its gossip status.
pub fn members(addr: SocketAddr) -> Option<std::collections::BTreeMap<String, u64>> {
    let r = try_http_request(addr, "GET", "/v1/agent/members", b"", Duration::from_secs(2))?;
    let list: Vec<serde_json::Value> = serde_json::from_slice(&r.body).ok()?;
    Some(list.iter().filter_map(|m| Some((m["Name"].as_str()?.to_string(), m["Status"].as_u64()?))).collect())
}

/// What [`watch_members`] saw.
pub struct FailedSeen {
    /// Each (member, agent) pair where the agent listed the member failed, once
    /// ("s2 failed on 10.213.1.4:8500").
    pub pairs: Vec<String>,
    /// The last time any agent listed any member failed.
    pub last: Option<Instant>,
}

/// Polls every agent's member list until `stop`, four times a second, for failed members.
pub fn watch_members(targets: &Targets, stop: &Arc<AtomicBool>) -> std::thread::JoinHandle<FailedSeen> {
    let (targets, stop) = (Arc::clone(targets), Arc::clone(stop));
    std::thread::spawn(move || {
        let mut pairs = std::collections::BTreeSet::new();
        let mut last = None;
        while !stop.load(Ordering::Relaxed) {
            let addrs = targets.lock().unwrap_or_else(|e| e.into_inner()).clone();
            for addr in addrs {
                for (name, status) in members(addr).unwrap_or_default() {
                    if status == FAILED {
                        pairs.insert(format!("{name} failed on {addr}"));
                        last = Some(Instant::now());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        FailedSeen { pairs: pairs.into_iter().collect(), last }
    })
}
