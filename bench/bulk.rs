//! Section "bulk": 100,000 nodes registered in batches, each with an instance of one shared
//! service (a fleet coming up), by 64 closed-loop clients whose registrations the server
//! batches into Raft entries. Printed per step of 10,000 nodes: registrations per second, so
//! that a cost growing with the catalog (a scan of every node, a rebuild of every instance
//! list) shows as a falling rate; then the server's memory and the time a DNS-sized catalog
//! read of the shared service takes at 100,000 instances.

use std::time::Instant;

use anyhow::{bail, Result};

use crate::client::HttpConn;
use crate::load::{self, Registration, Stop};
use crate::server;
use crate::Settings;

const NODES: u64 = 100_000;
const STEP: u64 = 10_000;
const CLIENTS: usize = 64;
/// The rate of the last step must stay within this share of the first step's rate for the
/// cost of a registration not to grow with the catalog.
const TARGET_LAST_OVER_FIRST: f64 = 0.5;

pub async fn run(settings: &Settings) -> Result<()> {
    println!("## Bulk registration: {NODES} nodes with one shared service, {CLIENTS} clients (cairn)\n");
    let cairn = server::start_cairn_server(&settings.bins).await?;
    let http = cairn.http;
    println!("| nodes registered | registrations/s in this step | p99 ms | errors | server RSS MiB |");
    println!("|---:|---:|---:|---:|---:|");
    let mut rates = Vec::new();
    let started = Instant::now();
    for step in 0..NODES / STEP {
        let base = step * STEP;
        let make = load::cairn_register(move |_, seq| {
            let n = base + seq;
            Registration {
                node: format!("bulk-{n}"),
                address: format!("10.{}.{}.{}", n >> 16, (n >> 8) & 0xff, n & 0xff),
                service: "web".to_owned(),
            }
        });
        let mut outcome = load::drive(http, CLIENTS, Stop::Count(STEP), make).await?;
        let latency = load::Percentiles::of(&mut outcome.latencies_us);
        if outcome.errors > 0 {
            bail!("{} registrations failed: {}", outcome.errors, outcome.first_error.unwrap_or_default());
        }
        let rss_mib = cairn.server.vm_rss_kib()? as f64 / 1024.0;
        println!(
            "| {} | {:.0} | {:.2} | {} | {rss_mib:.0} |",
            base + STEP,
            outcome.per_second(),
            latency.p99_ms,
            outcome.errors
        );
        rates.push(outcome.per_second());
    }
    let total = started.elapsed();

    let mut conn = HttpConn::connect(http).await?;
    let read_started = Instant::now();
    let answer = conn.request("GET", "/v1/health/service/web?passing", b"").await?;
    let read_ms = read_started.elapsed().as_secs_f64() * 1000.0;
    if answer.status != 200 {
        bail!("health read answered {}", answer.status);
    }
    let body = answer.body;
    let instances = serde_json::from_slice::<serde_json::Value>(&body)?.as_array().map_or(0, Vec::len);
    println!(
        "\n{NODES} nodes in {:.1} s ({:.0}/s overall); `/v1/health/service/web?passing` with {instances} \
         instances: {read_ms:.0} ms, {:.1} MB",
        total.as_secs_f64(),
        NODES as f64 / total.as_secs_f64(),
        body.len() as f64 / 1e6
    );
    let (first, last) = (rates[0], rates[rates.len() - 1]);
    println!(
        "last step / first step: {:.2} (target >= {TARGET_LAST_OVER_FIRST}: registration cost must not grow \
         with the catalog); {}\n",
        last / first,
        if last / first >= TARGET_LAST_OVER_FIRST { "MET" } else { "NOT MET" }
    );
    Ok(())
}
