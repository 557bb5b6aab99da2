//! Section "cluster": three servers on loopback. Durable KV writes at 1, 16 and 64
//! closed-loop clients through the leader and through a follower, cairn against a 3-member
//! etcd cluster (its JSON gateway) in the same run, each cell on a fresh cluster; then cairn's
//! leader failover: the leader SIGKILLed `FAILOVER_TRIALS` times under writes through a
//! follower, timing until a survivor reports a new leader and until a write through a
//! survivor succeeds again. Every server process is pinned to the same core as in the other
//! sections, or, with `--unpinned`, free to use every core (as deployed).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::client::HttpConn;
use crate::load::{self, Percentiles, Stop};
use crate::server::{self, free_port, logged_addr, temp_dir, Server};
use crate::Settings;

const CLIENTS: [usize; 3] = [1, 16, 64];
const WARMUP: Duration = Duration::from_millis(500);
const FAILOVER_TRIALS: usize = 20;
/// How long a cluster may take to form or to recover after a kill.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(5);
/// Targets: writes/s at 64 clients at least twice etcd's with p99 no worse; failover median.
const TARGET_RATIO: f64 = 2.0;
const FAILOVER_TARGET: Duration = Duration::from_secs(2);

/// One member of a cluster under test.
struct Member {
    server: Server,
    http: SocketAddr,
    /// cairn: the Raft address `/v1/status/leader` reports; etcd: its member id.
    id: String,
    /// cairn: its arguments, to restart it on the same data dir.
    args: Vec<String>,
    /// cairn: its gossip address (another member joins through it).
    gossip: Option<SocketAddr>,
}

struct Cluster {
    system: &'static str,
    members: Vec<Option<Member>>,
    _dir: tempfile::TempDir,
}

async fn start_cairn_cluster(settings: &Settings) -> Result<Cluster> {
    let dir = temp_dir("cairn-cluster-bench-")?;
    let config = dir.path().join("limits.json");
    std::fs::write(&config, server::RAISED_LIMITS_CONFIG).context("write cairn config")?;
    let mut members: Vec<Option<Member>> = Vec::new();
    for i in 0..3 {
        let mut args = server::cairn_server_args(&dir.path().join(format!("s{i}")), 0, Some(&config));
        let expect = args.iter().position(|a| a == "-bootstrap-expect").context("bootstrap flag")? + 1;
        args[expect] = "3".into();
        let node = args.iter().position(|a| a == "-node").context("node flag")? + 1;
        args[node] = format!("s{i}");
        // Three on one host: each its own DNS port.
        args.extend(["-dns-port".to_string(), "0".to_string()]);
        let join = members.first().and_then(|m: &Option<Member>| m.as_ref()?.gossip);
        members.push(Some(spawn_cairn(settings, i, args, join).await?));
    }
    for m in members.iter_mut().flatten() {
        m.server.wait_for_log("registered this server in the catalog").await?;
    }
    let cluster = Cluster { system: "cairn", members, _dir: dir };
    cluster.agreed_leader().await?;
    Ok(cluster)
}

/// Starts cairn server `i` with `args`, joining `join` (replacing any earlier `-retry-join`).
async fn spawn_cairn(settings: &Settings, i: usize, mut args: Vec<String>, join: Option<SocketAddr>) -> Result<Member> {
    if let Some(at) = args.iter().position(|a| a == "-retry-join") {
        args.drain(at..at + 2);
    }
    if let Some(join) = join {
        args.extend(["-retry-join".to_string(), join.to_string()]);
    }
    let mut server = Server::spawn(&format!("cairn s{i}"), &settings.bins.cairn, &args)?;
    let http = logged_addr(&mut server, "HTTP API listening addr=").await?;
    let rpc = logged_addr(&mut server, "server RPC listening addr=").await?;
    let gossip = logged_addr(&mut server, "gossip listening (UDP and TCP) addr=").await?;
    Ok(Member { server, http, id: rpc.to_string(), args, gossip: Some(gossip) })
}

async fn start_etcd_cluster(settings: &Settings) -> Result<Cluster> {
    let dir = temp_dir("etcd-cluster-bench-")?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| Ok((free_port()?, free_port()?))).collect::<Result<_>>()?;
    let initial = ports
        .iter()
        .enumerate()
        .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let args: Vec<String> = [
            "--name",
            &format!("m{i}"),
            "--data-dir",
            &dir.path().join(format!("m{i}")).display().to_string(),
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
            "--initial-cluster",
            &initial,
            "--initial-cluster-state",
            "new",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let server = Server::spawn(&format!("etcd m{i}"), &settings.bins.etcd, &args)?;
        let http: SocketAddr = format!("127.0.0.1:{client}").parse()?;
        members.push(Some(Member { server, http, id: String::new(), args, gossip: None }));
    }
    for m in members.iter_mut().flatten() {
        m.server.wait_for_log("ready to serve client requests").await?;
        m.id = etcd_status(m.http).await?.0;
    }
    let cluster = Cluster { system: "etcd", members, _dir: dir };
    cluster.agreed_leader().await?;
    Ok(cluster)
}

/// An etcd member's own id and the leader's id, from `/v3/maintenance/status`.
async fn etcd_status(addr: SocketAddr) -> Result<(String, String)> {
    let mut conn = HttpConn::connect(addr).await?;
    let r = conn.request("POST", "/v3/maintenance/status", b"{}").await?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).context("etcd status JSON")?;
    let text = |v: &serde_json::Value| v.as_str().map(String::from).unwrap_or_else(|| v.to_string());
    Ok((text(&v["header"]["member_id"]), text(&v["leader"])))
}

impl Cluster {
    /// The leader's id as `member` sees it, if any.
    async fn leader_seen_by(&self, member: &Member) -> Option<String> {
        if self.system == "etcd" {
            let (_, leader) = etcd_status(member.http).await.ok()?;
            return (leader != "0" && !leader.is_empty()).then_some(leader);
        }
        let mut conn = HttpConn::connect(member.http).await.ok()?;
        let r = conn.request("GET", "/v1/status/leader", b"").await.ok()?;
        let leader: String = serde_json::from_slice(&r.body).ok()?;
        (!leader.is_empty()).then_some(leader)
    }

    /// The index of the leader every running member agrees on.
    async fn agreed_leader(&self) -> Result<usize> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let mut seen = Vec::new();
            for m in self.members.iter().flatten() {
                seen.push(self.leader_seen_by(m).await);
            }
            if let Some(Some(first)) = seen.first() {
                if seen.iter().all(|l| l.as_ref() == Some(first)) {
                    if let Some(i) = self.members.iter().position(|m| m.as_ref().is_some_and(|m| &m.id == first)) {
                        return Ok(i);
                    }
                }
            }
            if Instant::now() > deadline {
                bail!("{}: no agreed leader within {SETTLE_TIMEOUT:?}: {seen:?}", self.system);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn member(&self, i: usize) -> &Member {
        self.members[i].as_ref().expect("running member")
    }
}

fn put_requests(system: &'static str) -> load::MakeRequest {
    if system == "cairn" {
        return load::cairn_kv_put("bench/");
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let value_b64 = b64.encode(load::value());
    std::sync::Arc::new(move |_, seq| load::Request {
        method: "POST",
        path: "/v3/kv/put".to_owned(),
        body: format!(r#"{{"key":"{}","value":"{value_b64}"}}"#, b64.encode(load::kv_key("bench/", seq))).into_bytes(),
    })
}

struct Cell {
    system: &'static str,
    via: &'static str,
    clients: usize,
    per_second: f64,
    latency: Percentiles,
    errors: u64,
}

pub async fn run(settings: &Settings) -> Result<()> {
    println!(
        "## Three-server clusters: durable writes ({} s per cell, {} B values, fresh cluster per cell; {})\n",
        settings.seconds,
        load::VALUE_BYTES,
        server::placement()
    );
    let mut cells = Vec::new();
    for system in ["cairn", "etcd"] {
        for via in ["leader", "follower"] {
            for clients in CLIENTS {
                let cluster = match system {
                    "cairn" => start_cairn_cluster(settings).await?,
                    _ => start_etcd_cluster(settings).await?,
                };
                let leader = cluster.agreed_leader().await?;
                let target = if via == "leader" { leader } else { (leader + 1) % 3 };
                let stop = Stop::Timed { warmup: WARMUP, measure: Duration::from_secs(settings.seconds) };
                let mut outcome = load::drive(cluster.member(target).http, clients, stop, put_requests(system)).await?;
                let cell = Cell {
                    system,
                    via,
                    clients,
                    per_second: outcome.per_second(),
                    latency: Percentiles::of(&mut outcome.latencies_us),
                    errors: outcome.errors,
                };
                eprintln!("  {system} via {via} x{clients}: {:.0} writes/s", cell.per_second);
                cells.push(cell);
            }
        }
    }
    println!("| system | through | clients | writes/s | p50 ms | p99 ms | errors |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for c in &cells {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            c.system, c.via, c.clients, c.per_second, c.latency.p50_ms, c.latency.p99_ms, c.errors
        );
    }
    println!();
    for via in ["leader", "follower"] {
        let at_64 = |system| cells.iter().find(|c| c.system == system && c.via == via && c.clients == 64);
        if let (Some(cairn), Some(etcd)) = (at_64("cairn"), at_64("etcd")) {
            let ratio = cairn.per_second / etcd.per_second;
            let p99_ok = cairn.latency.p99_ms <= etcd.latency.p99_ms;
            println!(
                "through the {via}, 64 clients: cairn/etcd {ratio:.2}x writes/s (target >= {TARGET_RATIO}x), p99 {:.2} vs {:.2} ms ({}): target {}",
                cairn.latency.p99_ms,
                etcd.latency.p99_ms,
                if p99_ok { "no worse" } else { "WORSE" },
                if ratio >= TARGET_RATIO && p99_ok && cairn.errors == 0 { "MET" } else { "NOT MET" }
            );
        }
    }
    println!();
    failover(settings).await
}

/// `FAILOVER_TRIALS` leader kills, each under writes through a follower; the killed server
/// restarts on its data dir before the next.
async fn failover(settings: &Settings) -> Result<()> {
    println!("## cairn leader failover ({FAILOVER_TRIALS} SIGKILLs of the leader, writes through a follower)\n");
    let mut cluster = start_cairn_cluster(settings).await?;
    let mut to_leader = Vec::new();
    let mut to_write = Vec::new();
    for trial in 0..FAILOVER_TRIALS {
        let leader = cluster.agreed_leader().await?;
        let survivor = (leader + 1) % 3;
        let writer_addr = cluster.member(survivor).http;
        let old = cluster.member(leader).id.clone();
        let mut seq = 0u64;
        let mut conn = HttpConn::connect(writer_addr).await?;
        for _ in 0..10 {
            seq += 1;
            conn.request("PUT", &format!("/v1/kv/failover/{trial}/{seq}"), b"v").await?;
        }
        let killed = cluster.members[leader].take().context("leader running")?;
        let args = killed.args.clone();
        let killed_at = Instant::now();
        drop(killed);
        // A new leader, as a survivor reports it.
        let deadline = killed_at + SETTLE_TIMEOUT;
        loop {
            if let Some(l) = cluster.leader_seen_by(cluster.member(survivor)).await {
                if l != old {
                    break;
                }
            }
            if Instant::now() > deadline {
                bail!("trial {trial}: no new leader within {SETTLE_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL).await;
        }
        to_leader.push(killed_at.elapsed());
        // A write through the survivor succeeds again (it waited for the new leader).
        loop {
            seq += 1;
            let ok = match conn.request("PUT", &format!("/v1/kv/failover/{trial}/{seq}"), b"v").await {
                Ok(r) => r.status == 200,
                Err(_) => {
                    conn = HttpConn::connect(writer_addr).await?;
                    false
                }
            };
            if ok {
                break;
            }
            if Instant::now() > deadline {
                bail!("trial {trial}: no successful write within {SETTLE_TIMEOUT:?}");
            }
        }
        to_write.push(killed_at.elapsed());
        eprintln!("  trial {trial}: new leader after {:?}, write after {:?}", to_leader[trial], to_write[trial]);
        // Restart the old leader on its data dir (new ports), joining a survivor.
        let join = cluster.member(survivor).gossip;
        cluster.members[leader] = Some(spawn_cairn(settings, leader, args, join).await?);
        cluster.agreed_leader().await?;
    }
    let summary = |samples: &mut Vec<Duration>| {
        samples.sort();
        (samples[samples.len() / 2], *samples.last().expect("trials"))
    };
    let (leader_median, leader_max) = summary(&mut to_leader);
    let (write_median, write_max) = summary(&mut to_write);
    println!("| measured from the SIGKILL | median | max |");
    println!("|---|---:|---:|");
    println!("| a survivor reports a new leader | {leader_median:.2?} | {leader_max:.2?} |");
    println!("| a write through a survivor succeeds | {write_median:.2?} | {write_max:.2?} |");
    println!(
        "\nfailover median {leader_median:.2?} (target <= {FAILOVER_TARGET:?}): {}\n",
        if leader_median <= FAILOVER_TARGET { "MET" } else { "NOT MET" }
    );
    Ok(())
}
