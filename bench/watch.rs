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
//!
//! A calibration row, the "write floor", runs the one-key case against no server at all: the
//! bench run again as a bare server on the servers' core, which accepts the same watchers and,
//! at the write, sends each of them the bytes cairn answered, one after the other, doing
//! nothing else. With the same client on the same machine, it is what the kernel alone costs
//! to deliver 10,000 answers over loopback TCP from one core; cairn's own cost is what it takes
//! beyond that.

use std::io::{IoSlice, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::{self, HttpConn};
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
/// Distinct keys: p99 below this.
const TARGET_P99_MS: f64 = 100.0;
/// One key: p99 at most this many times the write floor's, measured in the same run (the
/// 100 ms of the first target is below what loopback TCP costs from one core here).
const TARGET_FLOOR_TIMES: f64 = 1.25;
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

/// What is measured with every watcher waiting, just before the write.
struct Waiting {
    /// Blocking queries the server counted.
    server_counted: usize,
    /// Watchers that had already answered (should be 0).
    early: usize,
    /// The server's VmRSS.
    server_rss_kib: u64,
}

impl Waiting {
    fn now(server_counted: usize, watchers: &Watchers, server: &Server) -> Result<Waiting> {
        let early = watchers.state.answered.load(Ordering::Relaxed);
        Ok(Waiting { server_counted, early, server_rss_kib: server.vm_rss_kib()? })
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

#[derive(Clone, Copy, PartialEq)]
enum Target {
    None,
    /// p99 below this many milliseconds.
    BelowMs(f64),
    /// p99 at most this many times the write floor's.
    FloorTimes(f64),
}

/// One row of the section's table.
struct Report {
    case: &'static str,
    sent: usize,
    failed: usize,
    waiting: Waiting,
    /// Affected watchers that answered, and those that answered with something other than 200.
    answered: usize,
    affected: usize,
    not_ok: usize,
    latency: Percentiles,
    /// Distinct keys only: watchers of unwritten keys that answered within `QUIET_PERIOD`.
    unaffected_answered: Option<usize>,
    /// The p99 target this case has.
    target: Target,
    /// From just before the first write until the affected watchers had answered.
    cpu: CpuUse,
    first_error: Option<String>,
}

pub async fn run(settings: &Settings) -> Result<()> {
    println!("## Blocking-query fan-out (cairn, {WATCHERS} watchers, one connection each)\n");
    let (one, answer) = one_key(&server::start_cairn_server(&settings.bins).await?).await?;
    eprintln!("  one key: p99 {:.1} ms", one.latency.p99_ms);
    let mut reports = vec![one];
    // A calibration, not a measure of cairn: if it cannot run, say so and go on.
    match write_floor(answer).await {
        Ok(floor) => {
            eprintln!("  write floor: p99 {:.1} ms", floor.latency.p99_ms);
            reports.push(floor);
        }
        Err(e) => println!("write floor: not measured: {e:#}\n"),
    }
    let distinct = distinct_keys(&server::start_cairn_server(&settings.bins).await?).await?;
    eprintln!("  distinct keys: p99 {:.1} ms", distinct.latency.p99_ms);
    let large = large_answer(&server::start_cairn_server(&settings.bins).await?).await?;
    eprintln!("  large answer: p99 {:.1} ms", large.latency.p99_ms);
    reports.extend([distinct, large]);
    print_reports(&reports);
    Ok(())
}

/// (i) Every watcher on `watch/one`; one write; every watcher should answer. Also returns the
/// answer as sent (a GET of the key after the write), for the write floor.
async fn one_key(running: &Running) -> Result<(Report, Vec<u8>)> {
    let mut writer = HttpConn::connect(running.http).await?;
    expect_ok(&writer.request("PUT", "/v1/kv/watch/one", b"0").await?, "create watch/one")?;
    let index = index_of(&mut writer, "/v1/kv/watch/one").await?;
    let path = format!("/v1/kv/watch/one?index={index}&wait=5m");
    let mut report =
        all_answer_one_write("one key", running, &mut writer, vec![path; WATCHERS], "/v1/kv/watch/one", b"1".to_vec())
            .await?;
    report.target = Target::FloorTimes(TARGET_FLOOR_TIMES);
    let answer = writer.request("GET", "/v1/kv/watch/one", b"").await?;
    expect_ok(&answer, "read watch/one")?;
    Ok((report, answer.to_bytes()))
}

/// (i') The write floor: the one-key case against no server. A process of its own (this
/// bench, run as `--write-floor-server`, see [`serve_write_floor`]) pinned to the servers'
/// core accepts `WATCHERS` watchers and reads their requests; at T0 it writes `answer` to each
/// in turn (head and body in one `writev`, as hyper sends them). No target: it shows how much of
/// the one-key latency is the kernel's, on this machine, whatever the server.
async fn write_floor(answer: Vec<u8>) -> Result<Report> {
    let exe = std::env::current_exe().context("path of the bench executable")?;
    let mut server = Server::spawn("write floor", &exe, &[WRITE_FLOOR_FLAG.to_owned(), WATCHERS.to_string()])?;
    let addr = server::logged_addr(&mut server, WRITE_FLOOR_LISTENING).await?;
    let mut control = tokio::net::TcpStream::connect(addr).await.context("connect to the write floor")?;
    control.write_all(&(answer.len() as u32).to_be_bytes()).await?;
    control.write_all(&answer).await?;
    let watchers = open_watchers(addr, vec!["/v1/kv/watch/one?index=1&wait=5m".to_owned(); WATCHERS]).await?;
    let mut ready = [0u8; 1];
    tokio::time::timeout(REGISTER_TIMEOUT, control.read_exact(&mut ready))
        .await
        .context("the write floor did not read every request in time")?
        .with_context(|| format!("the write floor failed:\n{}", server.log_tail()))?;
    let waiting = Waiting::now(WATCHERS, &watchers, &server)?;

    let cpu_before = CpuUse::now(&server)?;
    let t0 = Instant::now();
    control.write_all(b"g").await.context("tell the write floor to write")?;
    let state = &watchers.state;
    let _ = poll_until(ANSWER_TIMEOUT, || state.answered.load(Ordering::Relaxed) >= state.sent.load(Ordering::Relaxed))
        .await;
    let cpu = cpu_before.since(&server)?;
    let starts = vec![Some(t0); watchers.count];
    let mut report = report("write floor (no server, no target)", &watchers, waiting, &starts, None, cpu);
    report.target = Target::None;
    Ok(report)
}

/// The argument that makes this bench the write floor's server instead ([`serve_write_floor`]).
pub const WRITE_FLOOR_FLAG: &str = "--write-floor-server";
/// Logged by the write floor's server, followed by its address.
const WRITE_FLOOR_LISTENING: &str = "write floor listening on ";

/// The write floor's server: logs its address; takes a control connection that sends the
/// answer (a u32 length, big-endian, then the bytes); accepts `watchers` connections and reads
/// one request head from each; sends one byte on the control connection; waits for one byte
/// back; then writes the answer to every watcher in turn and keeps them open until the control
/// connection closes. Blocking I/O on one thread, and nothing else.
pub fn serve_write_floor(watchers: usize) -> Result<()> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    // Holds every connect in flight, as cairn's backlog does.
    socket.listen(1024)?;
    let listener: std::net::TcpListener = socket.into();
    eprintln!("{WRITE_FLOOR_LISTENING}{}", listener.local_addr()?);
    let (mut control, _) = listener.accept().context("accept the control connection")?;
    let mut len = [0u8; 4];
    control.read_exact(&mut len).context("read the answer's length")?;
    let mut answer = vec![0u8; u32::from_be_bytes(len) as usize];
    control.read_exact(&mut answer).context("read the answer")?;
    let head_len = client::head_end(&answer).context("the answer has no complete head")?;
    let (head, body) = answer.split_at(head_len);

    let mut streams = Vec::with_capacity(watchers);
    let mut buf = [0u8; 1024];
    for i in 0..watchers {
        let (mut stream, _) = listener.accept().with_context(|| format!("accept watcher {i}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(OPEN_TIMEOUT))?;
        let mut request = Vec::new();
        while client::head_end(&request).is_none() {
            let read = stream.read(&mut buf).with_context(|| format!("read watcher {i}'s request"))?;
            if read == 0 {
                bail!("watcher {i} closed before its request was complete");
            }
            request.extend_from_slice(&buf[..read]);
        }
        streams.push(stream);
    }
    control.write_all(b"r").context("report ready")?;
    control.read_exact(&mut [0u8; 1]).context("wait for the go")?;
    for stream in &mut streams {
        let written = stream.write_vectored(&[IoSlice::new(head), IoSlice::new(body)])?;
        if written != answer.len() {
            bail!("short write to a watcher: {written} of {} bytes", answer.len());
        }
    }
    // Open until the bench is done, as cairn keeps its connections.
    let _ = control.read(&mut [0u8; 1]);
    Ok(())
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
        expect_ok(&writer.request("PUT", "/v1/catalog/register", &register(i)).await?, "register big")?;
    }
    let index = index_of(&mut writer, "/v1/health/service/big").await?;
    let path = format!("/v1/health/service/big?index={index}&wait=5m");
    let watchers = vec![path; LARGE_WATCHERS];
    let write = register(LARGE_INSTANCES);
    let mut report =
        all_answer_one_write("large answer (no target)", running, &mut writer, watchers, "/v1/catalog/register", write)
            .await?;
    report.target = Target::None;
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
    let waiting = Waiting::now(server_counted, &watchers, &running.server)?;

    let cpu_before = CpuUse::now(&running.server)?;
    let t0 = Instant::now();
    expect_ok(&writer.request("PUT", write_path, &body).await?, "the write the watchers wait for")?;
    let state = &watchers.state;
    let _ = poll_until(ANSWER_TIMEOUT, || state.answered.load(Ordering::Relaxed) >= state.sent.load(Ordering::Relaxed))
        .await;
    let cpu = cpu_before.since(&running.server)?;
    let starts = vec![Some(t0); watchers.count];
    Ok(report(case, &watchers, waiting, &starts, None, cpu))
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
    let waiting = Waiting::now(server_counted, &watchers, &running.server)?;

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
    Ok(report("distinct keys", &watchers, waiting, &starts, Some(unaffected), cpu))
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
        expect_ok(&resp?, "write a watched key")?;
        starts[k] = Some(start);
    }
    Ok(starts)
}

fn expect_ok(resp: &crate::client::Response, what: &str) -> Result<()> {
    if resp.status != 200 {
        bail!("{what}: {} {}", resp.status, resp.text().trim());
    }
    Ok(())
}

/// Latencies of the watchers with a write start in `starts`, from that start to their answer.
fn report(
    case: &'static str,
    watchers: &Watchers,
    waiting: Waiting,
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
        waiting,
        answered,
        affected,
        not_ok,
        latency: Percentiles::of(&mut latencies_us),
        unaffected_answered,
        target: Target::BelowMs(TARGET_P99_MS),
        cpu,
        first_error,
    }
}

fn print_reports(reports: &[Report]) {
    let floor = reports.iter().find(|r| r.target == Target::None && r.case.starts_with("write floor"));
    println!("| case | watchers open | server counted | answered / affected | p50 ms | p99 ms | max ms | unaffected answered | CPU server / bench ms | server RSS MB | target |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in reports {
        let clean = r.failed == 0
            && r.waiting.early == 0
            && r.not_ok == 0
            && r.answered == r.affected
            && r.unaffected_answered.unwrap_or(0) == 0;
        let verdict = |met: bool| if clean && met { "MET" } else { "NOT MET" };
        let target = match r.target {
            Target::None => "-".to_owned(),
            Target::BelowMs(ms) => format!("p99 < {ms} ms: {}", verdict(r.latency.p99_ms < ms)),
            Target::FloorTimes(times) => match floor {
                Some(floor) => {
                    let ratio = r.latency.p99_ms / floor.latency.p99_ms;
                    format!("p99 ≤ {times}× floor: {ratio:.2}×, {}", verdict(ratio <= times))
                }
                None => format!("p99 ≤ {times}× floor: no floor measured"),
            },
        };
        println!(
            "| {} | {} | {} | {} / {} | {:.1} | {:.1} | {:.1} | {} | {} / {} | {:.1} | {} |",
            r.case,
            r.sent,
            r.waiting.server_counted,
            r.answered,
            r.affected,
            r.latency.p50_ms,
            r.latency.p99_ms,
            r.latency.max_ms,
            r.unaffected_answered.map_or("-".to_owned(), |n| n.to_string()),
            r.cpu.server.as_millis(),
            r.cpu.bench.as_millis(),
            r.waiting.server_rss_kib as f64 * 1024.0 / 1e6,
            target
        );
    }
    println!(
        "CPU: time each process used from the first write until the affected watchers had \
         answered (clock-tick resolution, 10 ms). RSS: the server's VmRSS with every watcher \
         waiting, just before the write (MB = 10^6 bytes).\n"
    );
    for r in reports {
        if r.failed > 0 || r.waiting.early > 0 || r.not_ok > 0 {
            println!(
                "{}: {} watchers failed to open, {} answered before the write, {} answered non-200",
                r.case, r.failed, r.waiting.early, r.not_ok
            );
        }
        if let Some(e) = &r.first_error {
            println!("{}: first error: {e}", r.case);
        }
    }
}
