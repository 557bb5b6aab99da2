//! Section "sessions": what sessions cost the leader, and how fast a lock changes hands.
//!
//! - 1,000 sessions with a 10 s TTL, each renewed every 5 s by clients (200 renewals a
//!   second, spread evenly) for 30 s: Raft entries per second (renewals must not be writes:
//!   the TTL timers live in the leader's memory) and the server's CPU.
//! - 100 lock hand-overs between two holders over HTTP, as `cairn lock` does between its
//!   processes: the waiting holder blocks on the lock key, the other releases it, and the
//!   hand-over time is from the release being sent to the waiter's acquire answering `true`.
//! - 100 hand-overs between `cairn lock` processes, each running a child that notes when it
//!   starts and ends: the time from one child's end to the next child's start (the holder
//!   sees its child exit, releases; the waiting `cairn lock` wakes, acquires and starts its
//!   child). Each child holds 200 ms, so the next `cairn lock` is already waiting.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::checks::{applied_index, ms, percentile};
use crate::client::HttpConn;
use crate::server;
use crate::Settings;

const SESSIONS: usize = 1_000;
const RENEW_EVERY: Duration = Duration::from_secs(5);
const RENEW_CLIENTS: usize = 8;
const STEADY: Duration = Duration::from_secs(30);
const HANDOVERS: usize = 100;
/// "≈ 0" entries per second for renewals alone.
const TARGET_RENEWAL_WRITES_PER_S: f64 = 1.0 / 60.0;

pub async fn run(settings: &Settings) -> Result<()> {
    println!("## Sessions: {SESSIONS} TTL sessions renewed by clients; lock hand-over (cairn)\n");
    let mut cairn = server::start_cairn_server(&settings.bins).await?;
    let http = cairn.http;

    let ids = create_sessions(http, SESSIONS).await?;
    let (cpu_before, index_before, t0) = (cairn.server.cpu_time()?, applied_index(http).await?, Instant::now());
    let renewed = renew_for(http, &ids, STEADY).await?;
    let elapsed = t0.elapsed().as_secs_f64();
    let writes_per_s = (applied_index(http).await? - index_before) as f64 / elapsed;
    let cpu = (cairn.server.cpu_time()? - cpu_before).as_secs_f64() / elapsed * 100.0;
    println!("| measure | value | target | met |");
    println!("|---|---|---|---|");
    println!("| renewals per second | {:.0} | | |", renewed as f64 / elapsed);
    println!(
        "| Raft entries per second while renewing | {writes_per_s:.3} | ≈ 0 | {} |",
        crate::checks::yes(writes_per_s <= TARGET_RENEWAL_WRITES_PER_S)
    );
    println!("| server CPU while renewing | {cpu:.1} % of a core | | |");

    let mut handovers = handovers(http, HANDOVERS).await?;
    handovers.sort();
    println!(
        "| lock hand-over p50 / p99 ({HANDOVERS}) | {:.2} / {:.2} ms | | |",
        ms(percentile(&handovers, 0.5)),
        ms(percentile(&handovers, 0.99))
    );
    let mut processes = process_handovers(&settings.bins.cairn, http, HANDOVERS).await?;
    processes.sort();
    println!(
        "| `cairn lock` process hand-over p50 / p99 ({HANDOVERS}) | {:.2} / {:.2} ms | | |",
        ms(percentile(&processes, 0.5)),
        ms(percentile(&processes, 0.99))
    );
    println!();
    cairn.server.terminate().await?;
    Ok(())
}

async fn expect_ok(conn: &mut HttpConn, method: &str, path: &str, body: &[u8]) -> Result<crate::client::Response> {
    let r = conn.request(method, path, body).await.with_context(|| format!("{method} {path}"))?;
    if r.status != 200 {
        bail!("{method} {path}: {} {}", r.status, r.text());
    }
    Ok(r)
}

async fn create_sessions(http: SocketAddr, count: usize) -> Result<Vec<String>> {
    let mut conn = HttpConn::connect(http).await?;
    let mut ids = Vec::with_capacity(count);
    for i in 0..count {
        let body = format!(r#"{{"Name": "bench-{i}", "TTL": "10s", "LockDelay": "0s"}}"#);
        let r = expect_ok(&mut conn, "PUT", "/v1/session/create", body.as_bytes()).await?;
        let created: serde_json::Value = serde_json::from_slice(&r.body).context("create JSON")?;
        ids.push(created["ID"].as_str().context("no ID")?.to_string());
    }
    Ok(ids)
}

/// Renews every session once per [`RENEW_EVERY`], evenly spread, for `span`; returns how
/// many renewals were made.
async fn renew_for(http: SocketAddr, ids: &[String], span: Duration) -> Result<usize> {
    let gap = RENEW_EVERY / ids.len() as u32 * RENEW_CLIENTS as u32;
    let mut tasks = Vec::new();
    for client in 0..RENEW_CLIENTS {
        let mine: Vec<String> = ids.iter().skip(client).step_by(RENEW_CLIENTS).cloned().collect();
        tasks.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(http).await?;
            let start = Instant::now();
            let mut done = 0usize;
            let mut next = tokio::time::Instant::now();
            'outer: loop {
                for id in &mine {
                    if start.elapsed() >= span {
                        break 'outer;
                    }
                    expect_ok(&mut conn, "PUT", &format!("/v1/session/renew/{id}"), b"").await?;
                    done += 1;
                    next += gap;
                    tokio::time::sleep_until(next).await;
                }
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.context("renewal task")??;
    }
    Ok(total)
}

/// Times `count` hand-overs of one lock between two sessions.
async fn handovers(http: SocketAddr, count: usize) -> Result<Vec<Duration>> {
    let ids = create_sessions(http, 2).await?;
    let key = "/v1/kv/bench/handover/.lock";
    let mut holder_conn = HttpConn::connect(http).await?;
    let mut waiter_conn = HttpConn::connect(http).await?;
    let r = expect_ok(&mut holder_conn, "PUT", &format!("{key}?acquire={}", ids[0]), b"").await?;
    if r.body != b"true" {
        bail!("the first acquire failed: {}", r.text());
    }
    let mut times = Vec::with_capacity(count);
    for i in 0..count {
        let (holder, waiter) = (&ids[i % 2], &ids[(i + 1) % 2]);
        let index = expect_ok(&mut waiter_conn, "GET", key, b"").await?.consul_index().context("no index")?;
        // The waiter blocks on the key; the holder releases it meanwhile.
        let wait_path = format!("{key}?index={index}&wait=30s");
        let waiting = async {
            let woke = expect_ok(&mut waiter_conn, "GET", &wait_path, b"").await?;
            let r = expect_ok(&mut waiter_conn, "PUT", &format!("{key}?acquire={waiter}"), b"").await?;
            anyhow::Ok((woke, r, Instant::now()))
        };
        let releasing = async {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let sent = Instant::now();
            expect_ok(&mut holder_conn, "PUT", &format!("{key}?release={holder}"), b"").await?;
            anyhow::Ok(sent)
        };
        let (waited, sent) = tokio::join!(waiting, releasing);
        let ((_, acquired, at), sent) = (waited?, sent?);
        if acquired.body != b"true" {
            bail!("hand-over {i}: the waiter could not acquire: {}", acquired.text());
        }
        times.push(at - sent);
        std::mem::swap(&mut holder_conn, &mut waiter_conn);
    }
    Ok(times)
}

/// Times `count` hand-overs between `cairn lock` processes (see the module notes): two are
/// alive at any time, one holding and one waiting.
async fn process_handovers(cairn: &std::path::Path, http: SocketAddr, count: usize) -> Result<Vec<Duration>> {
    let dir = tempfile::tempdir().context("temp dir")?;
    let log = dir.path().join("children.log");
    let child = format!("echo start $(date +%s%N) >> {0}; sleep 0.2; echo end $(date +%s%N) >> {0}", log.display());
    let spawn = || {
        tokio::process::Command::new(cairn)
            .args(["lock", "-http-addr", &http.to_string(), "bench/processes", "--", "sh", "-c", &child])
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("spawn cairn lock")
    };
    // count + 1 holders make count hand-overs.
    let mut running = std::collections::VecDeque::from([spawn()?, spawn()?]);
    let mut spawned = 2;
    while let Some(mut holder) = running.pop_front() {
        let status =
            tokio::time::timeout(Duration::from_secs(30), holder.wait()).await.context("cairn lock hung")??;
        if !status.success() {
            bail!("cairn lock exited with {status}");
        }
        if spawned < count + 1 {
            running.push_back(spawn()?);
            spawned += 1;
        }
    }
    let text = std::fs::read_to_string(&log).context("read the children's log")?;
    let stamps = text.lines().map(|line| {
        let (what, ns) = line.split_once(' ').unwrap_or_default();
        (what.to_string(), ns.parse::<u64>().unwrap_or_default())
    });
    let mut times = Vec::with_capacity(count);
    let mut last_end = None;
    for (what, ns) in stamps {
        match (what.as_str(), last_end) {
            ("start", Some(end)) => times.push(Duration::from_nanos(ns.saturating_sub(end))),
            ("start", None) => {}
            ("end", _) => last_end = Some(ns),
            _ => bail!("unexpected line in the children's log: {what} {ns}"),
        }
    }
    if times.len() < count {
        bail!("only {} hand-overs recorded", times.len());
    }
    Ok(times)
}
