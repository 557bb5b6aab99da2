//! Section "checks": one agent running 5,000 health checks (half HTTP, half TCP) at a 10 s
//! interval against targets this bench serves on its own core. Reports the agent's CPU and
//! RSS, Raft entries per second while nothing changes, and the delay from a check's target
//! flipping to the instance leaving (and rejoining) DNS.
//!
//! Each service has its own name (`svc-N`) and one check, so `svc-N.service.consul` has one
//! A record while the check passes and none once it is critical. HTTP targets answer
//! `/t/N` with the status the bench sets for N; TCP checks all connect to one listener (they
//! are load, not flipped).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

use crate::client::HttpConn;
use crate::server;
use crate::Settings;

const SERVICES: usize = 5_000;
const HTTP_SERVICES: usize = SERVICES / 2;
const INTERVAL: Duration = Duration::from_secs(10);
const CHECK_TIMEOUT: &str = "2s";
const REGISTER_CLIENTS: usize = 16;
/// Longest wait for every check to pass after registration (each first runs within one
/// interval of it).
const ALL_PASSING_TIMEOUT: Duration = Duration::from_secs(60);
const STEADY: Duration = Duration::from_secs(30);
const FLIPS: usize = 100;
/// Flips start this far apart, so their check runs fall at independent points of the interval.
const FLIP_SPACING: Duration = Duration::from_millis(97);
const DNS_POLL: Duration = Duration::from_millis(20);
const FLIP_TIMEOUT: Duration = Duration::from_secs(30);

const TARGET_FLIP_SLACK: Duration = Duration::from_millis(250);
const TARGET_RSS_MB: f64 = 64.0;
/// "≈ 0": less than one Raft entry per minute while nothing changes.
const TARGET_STEADY_WRITES_PER_S: f64 = 1.0 / 60.0;

pub async fn run(settings: &Settings) -> Result<()> {
    println!("## Health checks: {SERVICES} checks at a {}s interval (cairn)\n", INTERVAL.as_secs());
    let statuses: Arc<Vec<AtomicU16>> = Arc::new((0..HTTP_SERVICES).map(|_| AtomicU16::new(200)).collect());
    let http_target = serve_http_targets(Arc::clone(&statuses)).await?;
    let tcp_target = serve_tcp_target().await?;

    let dir = server::temp_dir("cairn-bench-checks-")?;
    let config = dir.path().join("bench.json");
    std::fs::write(&config, server::RAISED_LIMITS_CONFIG).context("write cairn config")?;
    let mut args = server::cairn_server_args(&dir.path().join("data"), 0, Some(&config));
    args.extend(["-dns-port".into(), "0".into()]);
    let mut cairn = server::Server::spawn("cairn", &settings.bins.cairn, &args)?;
    let http = server::wait_cairn_ready(&mut cairn).await?;
    let dns = server::logged_addr(&mut cairn, "DNS listening (UDP and TCP) addr=").await?;

    let started = Instant::now();
    register_all(http, http_target, tcp_target).await?;
    let registered_in = started.elapsed();
    wait_all_passing(http).await?;
    let passing_in = started.elapsed();
    println!(
        "registered {SERVICES} services in {:.1} s; all passing {:.1} s after the first registration\n",
        registered_in.as_secs_f64(),
        passing_in.as_secs_f64()
    );

    let (cpu_before, index_before, t0) = (cairn.cpu_time()?, applied_index(http).await?, Instant::now());
    tokio::time::sleep(STEADY).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = (cairn.cpu_time()? - cpu_before).as_secs_f64() / elapsed;
    let writes_per_s = (applied_index(http).await? - index_before) as f64 / elapsed;
    let rss_kib = cairn.vm_rss_kib()?;

    let leave = flip_all(&statuses, dns, 500, 0).await?;
    let rejoin = flip_all(&statuses, dns, 200, 1).await?;
    let rss_after_kib = cairn.vm_rss_kib()?;

    let target_flip = INTERVAL + TARGET_FLIP_SLACK;
    let rss_mb = rss_kib.max(rss_after_kib) as f64 * 1024.0 / 1e6;
    println!("| measure | value | target | met |");
    println!("|---|---|---|---|");
    println!("| CPU, steady {} s | {:.1} % of one core | | |", STEADY.as_secs(), cpu * 100.0);
    let writes_met = writes_per_s <= TARGET_STEADY_WRITES_PER_S;
    println!("| Raft entries/s, steady | {writes_per_s:.3} | ≈ 0 (< 1/min) | {} |", yes(writes_met));
    let rss_met = rss_mb <= TARGET_RSS_MB;
    println!("| RSS (max of steady, after flips) | {rss_mb:.1} MB | <= {TARGET_RSS_MB} MB | {} |", yes(rss_met));
    for (what, delays) in [("flip to leaving DNS", &leave), ("flip back to rejoining DNS", &rejoin)] {
        let (p50, p99, max) = (percentile(delays, 0.50), percentile(delays, 0.99), percentile(delays, 1.0));
        println!(
            "| {what} ({FLIPS} HTTP checks) p50 / p99 / max | {:.0} / {:.0} / {:.0} ms | p99 <= {} ms | {} |",
            ms(p50),
            ms(p99),
            ms(max),
            target_flip.as_millis(),
            yes(p99 <= target_flip)
        );
    }
    println!();
    cairn.terminate().await?;
    Ok(())
}

pub(crate) fn yes(met: bool) -> &'static str {
    if met {
        "yes"
    } else {
        "**no**"
    }
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub(crate) fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Serves `/t/N` with `statuses[N]`, one connection per request.
async fn serve_http_targets(statuses: Arc<Vec<AtomicU16>>) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the HTTP target")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { continue };
            let statuses = Arc::clone(&statuses);
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&head);
                let index = text.split_whitespace().nth(1).and_then(|p| p.strip_prefix("/t/")?.parse::<usize>().ok());
                let code = index.and_then(|i| statuses.get(i)).map_or(404, |s| s.load(Ordering::Relaxed));
                let reply = format!("HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                let _ = stream.write_all(reply.as_bytes()).await;
            });
        }
    });
    Ok(addr)
}

/// Accepts and closes connections: what a TCP check needs to pass.
async fn serve_tcp_target() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("bind the TCP target")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let _ = listener.accept().await;
        }
    });
    Ok(addr)
}

async fn register_all(http: SocketAddr, http_target: SocketAddr, tcp_target: SocketAddr) -> Result<()> {
    let mut clients = Vec::new();
    for client in 0..REGISTER_CLIENTS {
        clients.push(tokio::spawn(async move {
            let mut conn = HttpConn::connect(http).await?;
            for i in (client..SERVICES).step_by(REGISTER_CLIENTS) {
                let check = if i < HTTP_SERVICES {
                    format!(r#"{{"HTTP":"http://{http_target}/t/{i}","Interval":"10s","Timeout":"{CHECK_TIMEOUT}"}}"#)
                } else {
                    format!(r#"{{"TCP":"{tcp_target}","Interval":"10s","Timeout":"{CHECK_TIMEOUT}"}}"#)
                };
                let body = format!(r#"{{"Name":"svc-{i}","Port":{},"Check":{check}}}"#, 10_000 + i);
                let r = conn.request("PUT", "/v1/agent/service/register", body.as_bytes()).await?;
                if r.status != 200 {
                    bail!("register svc-{i}: {} {}", r.status, r.text());
                }
            }
            Ok(())
        }));
    }
    for client in clients {
        client.await.context("register task")??;
    }
    Ok(())
}

async fn wait_all_passing(http: SocketAddr) -> Result<()> {
    let deadline = Instant::now() + ALL_PASSING_TIMEOUT;
    let mut conn = HttpConn::connect(http).await?;
    loop {
        let r = conn.request("GET", "/v1/health/state/passing", b"").await?;
        let checks: serde_json::Value = serde_json::from_slice(&r.body).context("health state JSON")?;
        let passing = checks
            .as_array()
            .map_or(0, |a| a.iter().filter(|c| c["ServiceID"].as_str().is_some_and(|s| s.starts_with("svc-"))).count());
        if passing == SERVICES {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("only {passing} of {SERVICES} checks passing after {ALL_PASSING_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn applied_index(http: SocketAddr) -> Result<u64> {
    let mut conn = HttpConn::connect(http).await?;
    let r = conn.request("GET", "/v1/agent/self", b"").await?;
    let body: serde_json::Value = serde_json::from_slice(&r.body).context("agent/self JSON")?;
    body["Stats"]["raft"]["applied_index"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .context("no Stats.raft.applied_index in /v1/agent/self")
}

/// Sets `status` on `FLIPS` HTTP targets spread over the services, one every
/// `FLIP_SPACING`, and measures for each how long until its name has `answers_wanted` A
/// records. Returns the delays, sorted.
async fn flip_all(
    statuses: &Arc<Vec<AtomicU16>>,
    dns: SocketAddr,
    status: u16,
    answers_wanted: u16,
) -> Result<Vec<Duration>> {
    let mut tasks = Vec::new();
    for k in 0..FLIPS {
        let i = k * (HTTP_SERVICES / FLIPS);
        let statuses = Arc::clone(statuses);
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(FLIP_SPACING * k as u32).await;
            let socket = UdpSocket::bind("127.0.0.1:0").await?;
            socket.connect(dns).await?;
            let query = a_query(&format!("svc-{i}.service.consul"), k as u16);
            statuses[i].store(status, Ordering::Relaxed);
            let flipped = Instant::now();
            let mut buf = [0u8; 1500];
            loop {
                socket.send(&query).await?;
                if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
                    if n >= 12 && u16::from_be_bytes([buf[6], buf[7]]) == answers_wanted {
                        return Ok(flipped.elapsed());
                    }
                }
                if flipped.elapsed() > FLIP_TIMEOUT {
                    bail!("svc-{i} did not reach {answers_wanted} answers within {FLIP_TIMEOUT:?}");
                }
                tokio::time::sleep(DNS_POLL).await;
            }
        }));
    }
    let mut delays = Vec::with_capacity(FLIPS);
    for task in tasks {
        delays.push(task.await.context("flip task")??);
    }
    delays.sort();
    Ok(delays)
}

/// A plain A query for `name`, no EDNS.
fn a_query(name: &str, id: u16) -> Vec<u8> {
    let mut packet = Vec::with_capacity(64);
    packet.extend_from_slice(&id.to_be_bytes());
    packet.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}
