//! Section "footprint": cairn's resident memory idle and loaded, and how long a restart takes
//! before a key can be read again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::HttpConn;
use crate::load::{self, Registration};
use crate::server::{self, Server};
use crate::Settings;

const IDLE: Duration = Duration::from_secs(10);
const NODES: u64 = 1_000;
const SERVICES_PER_NODE: u64 = 10;
/// Distinct service names; each node's ten services are ten different ones.
const SERVICE_NAMES: u64 = 100;
const KV_KEYS: u64 = 10_000;
const RESTART_KEYS: u64 = 100_000;
/// Time after loading before memory is read, for background work (compaction of the Raft
/// log, allocator trimming) to happen as it would in service.
const SETTLE: Duration = Duration::from_secs(2);
const LOAD_CLIENTS: usize = 16;
/// The restart probe: one connect + GET every `PROBE_INTERVAL`, each bounded, all within
/// `RESTART_TIMEOUT`.
const PROBE_INTERVAL: Duration = Duration::from_millis(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
const RESTART_TIMEOUT: Duration = Duration::from_secs(30);

/// Targets, in decimal megabytes (10^6 bytes) and milliseconds.
const TARGET_IDLE_MB: f64 = 15.0;
const TARGET_LOADED_MB: f64 = 64.0;
const TARGET_RESTART_MS: f64 = 100.0;

struct Row {
    what: String,
    value: String,
    target: String,
    met: bool,
}

fn memory_row(what: &str, kib: u64, target_mb: f64) -> Row {
    let mb = kib as f64 * 1024.0 / 1e6;
    Row {
        what: what.to_owned(),
        value: format!("{mb:.1} MB (VmRSS {kib} kB)"),
        target: format!("<= {target_mb} MB"),
        met: mb <= target_mb,
    }
}

pub async fn run(settings: &Settings) -> Result<()> {
    println!("## Footprint (cairn)\n");
    let mut rows = Vec::new();
    let dev = server::start_cairn_dev(&settings.bins).await?;
    tokio::time::sleep(IDLE).await;
    rows.push(memory_row("RSS, `agent -dev` idle 10 s", dev.server.vm_rss_kib()?, TARGET_IDLE_MB));
    let load_started = Instant::now();
    load_catalog_and_kv(dev.http).await?;
    eprintln!("  loaded catalog and KV in {:.1} s", load_started.elapsed().as_secs_f64());
    tokio::time::sleep(SETTLE).await;
    rows.push(memory_row(
        &format!(
            "RSS, `agent -dev` with {} service instances ({NODES} nodes) + {KV_KEYS} keys",
            NODES * SERVICES_PER_NODE
        ),
        dev.server.vm_rss_kib()?,
        TARGET_LOADED_MB,
    ));
    drop(dev);

    let restart = restart_time(&settings.bins).await?;
    let restart_ms = restart.as_secs_f64() * 1000.0;
    rows.push(Row {
        what: format!("restart with {RESTART_KEYS} keys: exec -> first GET 200"),
        value: format!("{restart_ms:.1} ms"),
        target: format!("< {TARGET_RESTART_MS} ms"),
        met: restart_ms < TARGET_RESTART_MS,
    });

    println!("| measure | value | target | met |");
    println!("|---|---:|---|---|");
    for r in &rows {
        let met = if r.met { "MET" } else { "NOT MET" };
        println!("| {} | {} | {} | {met} |", r.what, r.value, r.target);
    }
    println!();
    Ok(())
}

/// 1,000 nodes × 10 services through `/v1/catalog/register`, then 10,000 keys through
/// `/v1/txn` in batches of 64.
async fn load_catalog_and_kv(http: SocketAddr) -> Result<()> {
    let register = load::cairn_register(|_, seq| {
        let node = seq / SERVICES_PER_NODE;
        Registration {
            node: format!("node-{node:04}"),
            address: format!("10.0.{}.{}", node / 256, node % 256),
            service: format!("svc-{:02}", seq % SERVICE_NAMES),
        }
    });
    load::load(http, LOAD_CLIENTS, NODES * SERVICES_PER_NODE, register).await.context("registering services")?;
    load::load(http, LOAD_CLIENTS, load::txn_batches(KV_KEYS), load::cairn_txn_set("footprint/", KV_KEYS))
        .await
        .context("writing keys")
}

/// Loads 100,000 keys into a persistent server, stops it with SIGTERM, and returns the time
/// from starting a new process on the same data dir to its first 200 answer for one of them.
async fn restart_time(bins: &server::Binaries) -> Result<Duration> {
    let dir = server::temp_dir("cairn-restart-")?;
    let data = dir.path().join("data");
    let prefix = "restart/";
    let mut first = Server::spawn("cairn", &bins.cairn, &server::cairn_server_args(&data, 0, None))?;
    let http = server::wait_cairn_ready(&mut first).await?;
    let load_started = Instant::now();
    load::load(http, LOAD_CLIENTS, load::txn_batches(RESTART_KEYS), load::cairn_txn_set(prefix, RESTART_KEYS))
        .await
        .context("writing keys before the restart")?;
    eprintln!("  loaded {RESTART_KEYS} keys in {:.1} s", load_started.elapsed().as_secs_f64());
    let status = first.terminate().await?;
    if !status.success() {
        bail!("cairn exited with {status} after SIGTERM:\n{}", first.log_tail());
    }
    drop(first);

    let port = server::free_port()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let path = format!("/v1/kv/{}", load::kv_key(prefix, RESTART_KEYS - 1));
    let args = server::cairn_server_args(&data, port, None);
    // The clock starts before fork+exec, so it includes them.
    let started = Instant::now();
    let mut second = Server::spawn("cairn", &bins.cairn, &args)?;
    loop {
        let probe = tokio::time::timeout(PROBE_TIMEOUT, async {
            HttpConn::connect(addr).await?.request("GET", &path, b"").await
        })
        .await;
        if let Ok(Ok(resp)) = probe {
            if resp.status == 200 {
                return Ok(started.elapsed());
            }
        }
        if let Some(status) = second.exited()? {
            bail!("restarted cairn exited ({status}):\n{}", second.log_tail());
        }
        if started.elapsed() > RESTART_TIMEOUT {
            bail!(
                "restarted cairn did not answer GET {path} with 200 within {RESTART_TIMEOUT:?}:\n{}",
                second.log_tail()
            );
        }
        tokio::time::sleep(PROBE_INTERVAL).await;
    }
}
