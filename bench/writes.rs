//! Section "writes": durable write throughput and latency at 1, 16 and 64 closed-loop
//! clients — cairn KV PUT against etcd's put (through its JSON gateway), and cairn catalog
//! registrations. Every cell runs on a freshly started server, so no cell inherits another's
//! data or warm state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use base64::Engine as _;

use crate::load::{self, MakeRequest, Percentiles, Registration, Request, Stop};
use crate::server::{self, Binaries, Running};
use crate::Settings;

const CLIENTS: [usize; 3] = [1, 16, 64];
/// Unmeasured time at the start of every cell (connections warm, first Raft entries written).
const WARMUP: Duration = Duration::from_millis(500);
/// Each client registers its own nodes, cycling through this many...
const NODES_PER_CLIENT: u64 = 16;
/// ...and this many services.
const SERVICES: u64 = 10;
/// The target: cairn at 64 clients does at least this many times etcd's writes/s.
const TARGET_RATIO: f64 = 2.0;

#[derive(Clone, Copy, PartialEq)]
enum WriteOp {
    CairnKvPut,
    EtcdPut,
    CairnRegister,
}

impl WriteOp {
    fn system(self) -> &'static str {
        match self {
            WriteOp::CairnKvPut | WriteOp::CairnRegister => "cairn",
            WriteOp::EtcdPut => "etcd",
        }
    }

    fn op(self) -> &'static str {
        match self {
            WriteOp::CairnKvPut => "kv put",
            WriteOp::EtcdPut => "kv put",
            WriteOp::CairnRegister => "catalog register",
        }
    }

    async fn start(self, bins: &Binaries) -> Result<Running> {
        match self {
            WriteOp::CairnKvPut | WriteOp::CairnRegister => server::start_cairn_server(bins).await,
            WriteOp::EtcdPut => server::start_etcd(bins).await,
        }
    }

    fn requests(self) -> MakeRequest {
        match self {
            WriteOp::CairnKvPut => load::cairn_kv_put("bench/"),
            WriteOp::EtcdPut => etcd_put("bench/"),
            WriteOp::CairnRegister => load::cairn_register(|client, seq| Registration {
                node: format!("c{client}-n{}", seq % NODES_PER_CLIENT),
                address: format!("10.{}.{}.1", client, seq % NODES_PER_CLIENT),
                service: format!("svc-{}", seq % SERVICES),
            }),
        }
    }
}

/// etcd v3 put through the grpc-gateway (`/v3/kv/put` in etcd 3.4): one new key per request,
/// the same key names and value bytes as cairn's.
fn etcd_put(prefix: &'static str) -> MakeRequest {
    let b64 = base64::engine::general_purpose::STANDARD;
    let value_b64 = b64.encode(load::value());
    Arc::new(move |_, seq| Request {
        method: "POST",
        path: "/v3/kv/put".to_owned(),
        body: format!(r#"{{"key":"{}","value":"{value_b64}"}}"#, b64.encode(load::kv_key(prefix, seq))).into_bytes(),
    })
}

struct Cell {
    op: WriteOp,
    clients: usize,
    per_second: f64,
    latency: Percentiles,
    errors: u64,
    first_error: Option<String>,
    /// Server CPU time over wall time for the whole cell (warmup included): near 100 means
    /// the server's one core was the limit.
    server_cpu_percent: f64,
}

pub async fn run(settings: &Settings) -> Result<()> {
    println!(
        "## Durable writes ({} s per cell, {} B values, fresh server per cell)\n",
        settings.seconds,
        load::VALUE_BYTES
    );
    let mut cells = Vec::new();
    for op in [WriteOp::CairnKvPut, WriteOp::EtcdPut, WriteOp::CairnRegister] {
        for clients in CLIENTS {
            let cell = measure(op, clients, settings).await?;
            eprintln!("  {} {} x{}: {:.0} writes/s", op.system(), op.op(), clients, cell.per_second);
            cells.push(cell);
        }
    }
    print_table(&cells);
    print_verdict(&cells);
    Ok(())
}

async fn measure(op: WriteOp, clients: usize, settings: &Settings) -> Result<Cell> {
    let running = op.start(&settings.bins).await?;
    let stop = Stop::Timed { warmup: WARMUP, measure: Duration::from_secs(settings.seconds) };
    let (cpu_before, started) = (running.server.cpu_time()?, Instant::now());
    let mut outcome = load::drive(running.http, clients, stop, op.requests()).await?;
    let cpu = running.server.cpu_time()? - cpu_before;
    Ok(Cell {
        op,
        clients,
        per_second: outcome.per_second(),
        latency: Percentiles::of(&mut outcome.latencies_us),
        errors: outcome.errors,
        first_error: outcome.first_error,
        server_cpu_percent: 100.0 * cpu.as_secs_f64() / started.elapsed().as_secs_f64(),
    })
}

fn print_table(cells: &[Cell]) {
    println!("| system | op | clients | writes/s | p50 ms | p99 ms | errors | server CPU % |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    for c in cells {
        println!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} | {:.0} |",
            c.op.system(),
            c.op.op(),
            c.clients,
            c.per_second,
            c.latency.p50_ms,
            c.latency.p99_ms,
            c.errors,
            c.server_cpu_percent
        );
    }
    for c in cells.iter().filter(|c| c.first_error.is_some()) {
        println!(
            "\nfirst error, {} {} x{}: {}",
            c.op.system(),
            c.op.op(),
            c.clients,
            c.first_error.as_deref().unwrap_or_default()
        );
    }
    println!();
}

fn print_verdict(cells: &[Cell]) {
    let at_64 = |op: WriteOp| cells.iter().find(|c| c.op == op && c.clients == 64);
    let (Some(cairn), Some(etcd)) = (at_64(WriteOp::CairnKvPut), at_64(WriteOp::EtcdPut)) else {
        return;
    };
    let ratio = cairn.per_second / etcd.per_second;
    let p99_no_worse = cairn.latency.p99_ms <= etcd.latency.p99_ms;
    let met = ratio >= TARGET_RATIO && p99_no_worse && cairn.errors == 0;
    println!(
        "cairn/etcd kv put writes/s at 64 clients: {ratio:.2}x (target >= {TARGET_RATIO}x); \
         p99 {:.2} ms vs {:.2} ms: {}; target {}\n",
        cairn.latency.p99_ms,
        etcd.latency.p99_ms,
        if p99_no_worse { "no worse" } else { "WORSE" },
        if met { "MET" } else { "NOT MET" }
    );
}
