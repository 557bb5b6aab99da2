//! Section "watch": blocking-query fan-out in cairn. 10,000 watchers (one connection and one
//! blocking `GET /v1/kv/...?index=I&wait=5m` each) either all on one key, or each on its own
//! key; then writes, and the time from each write's start to each affected watcher's complete
//! answer. For distinct keys, watchers whose key was not written must stay silent. A third
//! case, with no target, has fewer watchers of a large answer (the health of a service with
//! many instances): what one shared encoding per write saves shows there.
//!
//! The watchers are tokio tasks on the bench's single core; each timestamps its own answer as
//! soon as it has read it, so the figures include the bench's cost of reading up to 10,000
//! answers in turn (a few microseconds each), which this bench keeps small but cannot remove.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::HttpConn;
use crate::load::{self, Percentiles};
use crate::server::{self, Running, Server};
use crate::Settings;

const WATCHERS: usize = 10_000;
/// Keys written in the distinct-keys case, spread evenly over the watched keys.
const WRITTEN_KEYS: usize = 100;
/// Connections being opened at once; more only overflows the server's accept backlog.
const CONNECTS_IN_FLIGHT: usize = 256;
const OPEN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for the server to report every watcher as a blocking query.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(10);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long watchers of unwritten keys are given to (wrongly) answer.
const QUIET_PERIOD: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(5);
const TARGET_P99_MS: f64 = 100.0;
const LOAD_CLIENTS: usize = 8;
/// The large-answer case: watchers of `/v1/health/service/big`, and its instances.
const LARGE_WATCHERS: usize = 2_000;
const LARGE_INSTANCES: usize = 100;

#[derive(Clone, Copy)]
struct Answer {
    at: Instant,
    /// HTTP status, or 0 if the connection failed while waiting.
    status: u16,
}

/// What all watcher tasks share with the section.
#[derive(Default)]
struct WatchState {
    answers: Mutex<Vec<Option<Answer>>>,
    /// Watchers whose request has been sent.
    sent: AtomicUsize,
    /// Watchers that could not connect or send.
    failed: AtomicUsize,
    answered: AtomicUsize,
    first_error: Mutex<Option<String>>,
}

impl WatchState {
    fn error(&self, message: String) {
        let mut first = self.first_error.lock().unwrap_or_else(|e| e.into_inner());
        first.get_or_insert(message);
    }

    fn answers(&self) -> Vec<Option<Answer>> {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// One task per watcher; dropping this aborts them and closes their connections. A task that
/// has its answer returns its connection, so it stays open (in the `JoinSet`) until the end:
/// closing 10,000 sockets while others are still being answered would add work to both sides
/// that a real watcher, which asks again on the same connection, does not cause.
struct Watchers {
    _tasks: tokio::task::JoinSet<Option<HttpConn>>,
    state: Arc<WatchState>,
    count: usize,
}

/// Opens one connection per path and sends a blocking GET for it on each; returns once every
/// request is sent (or has failed).
async fn open_watchers(addr: SocketAddr, paths: Vec<String>) -> Result<Watchers> {
    let count = paths.len();
    let state = Arc::new(WatchState { answers: Mutex::new(vec![None; count]), ..WatchState::default() });
    let connects = Arc::new(tokio::sync::Semaphore::new(CONNECTS_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, path) in paths.into_iter().enumerate() {
        let state = Arc::clone(&state);
        let connects = Arc::clone(&connects);
        tasks.spawn(async move {
            let permit = connects.acquire_owned().await;
            let conn = match HttpConn::connect(addr).await {
                Ok(mut conn) => conn.send("GET", &path, b"").await.map(|()| conn),
                Err(e) => Err(e),
            };
            drop(permit);
            let mut conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    state.error(format!("watcher {i}: connect/send: {e}"));
                    state.failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            };
            state.sent.fetch_add(1, Ordering::Relaxed);
            let result = conn.read_response().await;
            let at = Instant::now();
            let status = match result {
                Ok(resp) => resp.status,
                Err(e) => {
                    state.error(format!("watcher {i}: waiting: {e}"));
                    0
                }
            };
            state.answers.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(Answer { at, status });
            state.answered.fetch_add(1, Ordering::Relaxed);
            Some(conn)
        });
    }
    let watchers = Watchers { _tasks: tasks, state, count };
    let all_sent =
        || watchers.state.sent.load(Ordering::Relaxed) + watchers.state.failed.load(Ordering::Relaxed) >= count;
    poll_until(OPEN_TIMEOUT, all_sent).await.with_context(|| format!("opening {count} watchers"))?;
    Ok(watchers)
}

/// Polls `done` every `POLL_INTERVAL`; fails after `timeout`.
async fn poll_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("not done within {timeout:?}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    Ok(())
}

/// Waits until cairn counts at least `n` blocking queries in progress (`/v1/agent/self`,
/// `Stats.cairn.blocking_queries`), so the write does not race requests still being parsed.
/// Returns the last count seen; after `REGISTER_TIMEOUT` goes on with whatever it is.
async fn wait_server_counts(addr: SocketAddr, n: usize) -> Result<usize> {
    let mut conn = HttpConn::connect(addr).await?;
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    loop {
        let resp = conn.request("GET", "/v1/agent/self", b"").await?;
        let json: serde_json::Value = serde_json::from_slice(&resp.body).context("/v1/agent/self is not JSON")?;
        let counted = json["Stats"]["cairn"]["blocking_queries"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .context("no Stats.cairn.blocking_queries in /v1/agent/self")?;
        if counted >= n || Instant::now() > deadline {
            return Ok(counted);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// CPU time used by the server and by the bench, to tell whose work a latency is.
#[derive(Clone, Copy)]
struct CpuUse {
    server: Duration,
    bench: Duration,
}

impl CpuUse {
    fn now(server: &Server) -> Result<CpuUse> {
        Ok(CpuUse { server: server.cpu_time()?, bench: server::cpu_time_of("self")? })
    }

    /// What has been used since `self` was taken.
    fn since(self, server: &Server) -> Result<CpuUse> {
        let now = CpuUse::now(server)?;
        Ok(CpuUse { server: now.server - self.server, bench: now.bench - self.bench })
    }
}

/// One row of the section's table.
struct Report {
    case: &'static str,
    sent: usize,
    failed: usize,
    server_counted: usize,
    /// Answered before any write was sent (should be 0).
    early: usize,
    /// Affected watchers that answered, and those that answered with something other than 200.
    answered: usize,
    affected: usize,
    not_ok: usize,
    latency: Percentiles,
    /// Distinct keys only: watchers of unwritten keys that answered within `QUIET_PERIOD`.
    unaffected_answered: Option<usize>,
    /// Whether the p99 target applies to this case.
    has_target: bool,
    /// From just before the first write until the affected watchers had answered.
    cpu: CpuUse,
    first_error: Option<String>,
}

pub async fn run(settings: &Settings) -> Result<()> {
    println!("## Blocking-query fan-out (cairn, {WATCHERS} watchers, one connection each)\n");
    let one = one_key(&server::start_cairn_server(&settings.bins).await?).await?;
    eprintln!("  one key: p99 {:.1} ms", one.latency.p99_ms);
    let distinct = distinct_keys(&server::start_cairn_server(&settings.bins).await?).await?;
    eprintln!("  distinct keys: p99 {:.1} ms", distinct.latency.p99_ms);
    let large = large_answer(&server::start_cairn_server(&settings.bins).await?).await?;
    eprintln!("  large answer: p99 {:.1} ms", large.latency.p99_ms);
    print_reports(&[one, distinct, large]);
    Ok(())
}

/// (i) Every watcher on `watch/one`; one write; every watcher should answer.
async fn one_key(running: &Running) -> Result<Report> {
    let mut writer = HttpConn::connect(running.http).await?;
    expect_ok(writer.request("PUT", "/v1/kv/watch/one", b"0").await?, "create watch/one")?;
    let index = index_of(&mut writer, "/v1/kv/watch/one").await?;
    let path = format!("/v1/kv/watch/one?index={index}&wait=5m");
    all_answer_one_write("one key", running, &mut writer, vec![path; WATCHERS], "/v1/kv/watch/one", b"1".to_vec()).await
}

/// (iii) 2,000 watchers of the health of `big`, a service with 100 instances (~60 KB of JSON);
/// one more instance registered; every watcher should answer.
async fn large_answer(running: &Running) -> Result<Report> {
    let mut writer = HttpConn::connect(running.http).await?;
    let register = |i: usize| {
        serde_json::json!({
            "Node": format!("big-{i}"),
            "Address": format!("10.1.{}.{}", i / 250, i % 250 + 1),
            "Service": {"Service": "big", "ID": format!("big-{i}"), "Port": 8000 + i,
                        "Tags": ["primary", "v1"], "Meta": {"version": "1.2.3"}},
            "Check": {"CheckID": format!("big-{i}-alive"), "Name": "big alive", "Status": "passing",
                      "ServiceID": format!("big-{i}"), "Output": "HTTP GET http://10.1.0.1:8000/health: 200 OK"},
        })
        .to_string()
        .into_bytes()
    };
    for i in 0..LARGE_INSTANCES {
        expect_ok(writer.request("PUT", "/v1/catalog/register", &register(i)).await?, "register big")?;
    }
    let index = index_of(&mut writer, "/v1/health/service/big").await?;
    let path = format!("/v1/health/service/big?index={index}&wait=5m");
    let watchers = vec![path; LARGE_WATCHERS];
    let write = register(LARGE_INSTANCES);
    let mut report =
        all_answer_one_write("large answer (no target)", running, &mut writer, watchers, "/v1/catalog/register", write)
            .await?;
    report.has_target = false;
    Ok(report)
}

/// The `X-Consul-Index` of a GET of `path`.
async fn index_of(writer: &mut HttpConn, path: &str) -> Result<u64> {
    writer.request("GET", path, b"").await?.consul_index().with_context(|| format!("no X-Consul-Index on GET {path}"))
}

/// Opens a watcher per path, then PUTs `body` to `write_path` and waits until every watcher
/// has answered (a timeout shows in the answered count).
async fn all_answer_one_write(
    case: &'static str,
    running: &Running,
    writer: &mut HttpConn,
    paths: Vec<String>,
    write_path: &str,
    body: Vec<u8>,
) -> Result<Report> {
    let watchers = open_watchers(running.http, paths).await?;
    let server_counted = wait_server_counts(running.http, watchers.state.sent.load(Ordering::Relaxed)).await?;
    let early = watchers.state.answered.load(Ordering::Relaxed);

    let cpu_before = CpuUse::now(&running.server)?;
    let t0 = Instant::now();
    expect_ok(writer.request("PUT", write_path, &body).await?, "the write the watchers wait for")?;
    let state = &watchers.state;
    let _ = poll_until(ANSWER_TIMEOUT, || state.answered.load(Ordering::Relaxed) >= state.sent.load(Ordering::Relaxed))
        .await;
    let cpu = cpu_before.since(&running.server)?;
    let starts = vec![Some(t0); watchers.count];
    Ok(report(case, &watchers, server_counted, early, &starts, None, cpu))
}

/// (ii) Watcher i on its own key `watch/k{i}`; 100 of the keys written at once; only their
/// watchers may answer.
async fn distinct_keys(running: &Running) -> Result<Report> {
    let http = running.http;
    let prefix = "watch/k";
    let n = WATCHERS as u64;
    load::load(http, LOAD_CLIENTS, load::txn_batches(n), load::cairn_txn_set(prefix, n)).await?;
    // The index of the whole prefix is at least every key's own index, so each watcher waits
    // for its key's next write.
    let index = HttpConn::connect(http)
        .await?
        .request("GET", "/v1/kv/watch/?keys", b"")
        .await?
        .consul_index()
        .context("no X-Consul-Index on GET watch/?keys")?;
    let paths = (0..n).map(|i| format!("/v1/kv/{}?index={index}&wait=5m", load::kv_key(prefix, i))).collect();
    let watchers = open_watchers(http, paths).await?;
    let server_counted = wait_server_counts(http, watchers.state.sent.load(Ordering::Relaxed)).await?;
    let early = watchers.state.answered.load(Ordering::Relaxed);

    let written: Vec<usize> = (0..WRITTEN_KEYS).map(|j| j * (WATCHERS / WRITTEN_KEYS)).collect();
    let cpu_before = CpuUse::now(&running.server)?;
    let starts = write_concurrently(http, prefix, &written).await?;
    let state = &watchers.state;
    let _ = poll_until(ANSWER_TIMEOUT, || {
        let answers = state.answers.lock().unwrap_or_else(|e| e.into_inner());
        written.iter().all(|&k| answers[k].is_some())
    })
    .await;
    let cpu = cpu_before.since(&running.server)?;
    tokio::time::sleep(QUIET_PERIOD).await;
    let answers = state.answers();
    let unaffected = (0..WATCHERS).filter(|k| starts[*k].is_none() && answers[*k].is_some()).count();
    Ok(report("distinct keys", &watchers, server_counted, early, &starts, Some(unaffected), cpu))
}

/// Writes each of `keys` (by number) on its own pre-opened connection, all at once; returns
/// each written key's write start time, indexed by key number.
async fn write_concurrently(http: SocketAddr, prefix: &str, keys: &[usize]) -> Result<Vec<Option<Instant>>> {
    let mut conns = Vec::with_capacity(keys.len());
    for _ in keys {
        conns.push(HttpConn::connect(http).await?);
    }
    let mut writes = tokio::task::JoinSet::new();
    for (&k, mut conn) in keys.iter().zip(conns) {
        let path = format!("/v1/kv/{}", load::kv_key(prefix, k as u64));
        writes.spawn(async move {
            let start = Instant::now();
            let resp = conn.request("PUT", &path, b"written").await;
            (k, start, resp)
        });
    }
    let mut starts = vec![None; WATCHERS];
    while let Some(joined) = writes.join_next().await {
        let (k, start, resp) = joined.context("writer task panicked")?;
        expect_ok(resp?, "write a watched key")?;
        starts[k] = Some(start);
    }
    Ok(starts)
}

fn expect_ok(resp: crate::client::Response, what: &str) -> Result<()> {
    if resp.status != 200 {
        bail!("{what}: {} {}", resp.status, resp.text().trim());
    }
    Ok(())
}

/// Latencies of the watchers with a write start in `starts`, from that start to their answer.
fn report(
    case: &'static str,
    watchers: &Watchers,
    server_counted: usize,
    early: usize,
    starts: &[Option<Instant>],
    unaffected_answered: Option<usize>,
    cpu: CpuUse,
) -> Report {
    let answers = watchers.state.answers();
    let mut latencies_us = Vec::new();
    let (mut affected, mut answered, mut not_ok) = (0, 0, 0);
    for (start, answer) in starts.iter().zip(&answers) {
        let Some(start) = start else { continue };
        affected += 1;
        let Some(answer) = answer else { continue };
        if answer.at < *start {
            continue; // answered before the write: counted in `early`
        }
        answered += 1;
        if answer.status != 200 {
            not_ok += 1;
        }
        latencies_us.push(load::micros(answer.at - *start));
    }
    let first_error = watchers.state.first_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
    Report {
        case,
        sent: watchers.state.sent.load(Ordering::Relaxed),
        failed: watchers.state.failed.load(Ordering::Relaxed),
        server_counted,
        early,
        answered,
        affected,
        not_ok,
        latency: Percentiles::of(&mut latencies_us),
        unaffected_answered,
        has_target: true,
        cpu,
        first_error,
    }
}

fn print_reports(reports: &[Report]) {
    println!("| case | watchers open | server counted | answered / affected | p50 ms | p99 ms | max ms | unaffected answered | CPU server / bench ms | p99 < {TARGET_P99_MS} ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in reports {
        let clean = r.failed == 0
            && r.early == 0
            && r.not_ok == 0
            && r.answered == r.affected
            && r.unaffected_answered.unwrap_or(0) == 0;
        let met = clean && r.latency.p99_ms < TARGET_P99_MS;
        println!(
            "| {} | {} | {} | {} / {} | {:.1} | {:.1} | {:.1} | {} | {} / {} | {} |",
            r.case,
            r.sent,
            r.server_counted,
            r.answered,
            r.affected,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.unaffected_answered.map_or("-".to_owned(), |n| n.to_string()),
            r.cpu.server.as_millis(),
            r.cpu.bench.as_millis(),
            if !r.has_target {
                "-"
            } else if met {
                "MET"
            } else {
                "NOT MET"
            }
        );
    }
    println!(
        "CPU: time each process used from the first write until the affected watchers had \
         answered (clock-tick resolution, 10 ms).\n"
    );
    for r in reports {
        if r.failed > 0 || r.early > 0 || r.not_ok > 0 {
            println!(
                "{}: {} watchers failed to open, {} answered before the write, {} answered non-200",
                r.case, r.failed, r.early, r.not_ok
            );
        }
        if let Some(e) = &r.first_error {
            println!("{}: first error: {e}", r.case);
        }
    }
}
