//! The scenarios: start a fresh cluster, run the workload, strike, heal, check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::disk::Tmpfs;
use crate::net::Net;
use crate::support::cluster::{agent_args, agent_args_listening, agreed_leader, leader_index, leader_of, FORM};
use crate::support::{try_http_request, Agent, Response};
use crate::{linear, workload};

/// Workers writing at once through each agent.
const WORKERS_PER_AGENT: usize = 2;
/// The workload runs this long before the fault, and this long after the heal.
const BEFORE_FAULT: Duration = Duration::from_secs(2);
const AFTER_HEAL: Duration = Duration::from_secs(3);
/// How long a fault lasts: longer than an election timeout (1.2–1.6 s at the defaults) and
/// than `WRITE_GAP_MAX`, so the others elect a new leader meanwhile and writes must resume
/// before the fault ends.
const FAULT_FOR: Duration = Duration::from_secs(5);
/// Regression check "writes resume while the leader is paused": with two of three servers
/// healthy, no stretch without an acknowledged write may last longer than this (an
/// election, the old leader's lease, a retry). Followers used to wait out a 20 s RPC to a
/// paused or stalled leader, holding every write queued behind it. Also regression check
/// "a leader whose disk stalls or fills steps aside": such a leader kept heartbeating while
/// its state machine waited on the disk, so nothing was answered anywhere for the whole
/// stall (a 5,010 ms gap seen in about one run of 30). Not applied to a lossy or slow link,
/// where TCP (retransmissions, a round trip that jumps twentyfold) sets the pace, not
/// a failover (reported only; the slow link must keep its leader instead).
const WRITE_GAP_MAX: Duration = Duration::from_secs(4);
/// After the heal, every server must hold every acknowledged write within this.
const CONVERGE: Duration = Duration::from_secs(30);
/// Once the servers hold every write, DNS on every agent must agree with the catalog
/// within this.
const DNS_CONVERGE: Duration = Duration::from_secs(2);
/// After the heal, every agent must see every other one alive in gossip within this.
const MEMBERS_CONVERGE: Duration = Duration::from_secs(30);
/// A lossy link drops this share of its packets, both ways.
const LOSS_PERCENT: u32 = 20;
/// A slow link holds every packet this long, each way: a 20 ms round trip, a hundred times
/// loopback's. openraft times every append out at the heartbeat interval (100 ms at the
/// default `raft_multiplier`), which must cover the round trip plus the follower's fsync: at
/// 30 ms each way leadership already moved in one run of four on this machine (README).
const LINK_DELAY: Duration = Duration::from_millis(10);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fault {
    /// SIGKILL the leader, restart it on its data dir after `FAULT_FOR`.
    KillLeader,
    /// SIGKILL a follower, restart it after `FAULT_FOR`.
    KillFollower,
    /// SIGSTOP the leader for `FAULT_FOR`, then SIGCONT: it must not serve a stale default
    /// read once it runs again.
    PauseLeader,
    /// Every fsync and state-machine commit on the leader hangs for `FAULT_FOR`.
    StallLeaderDisk,
    /// Five servers and two clients: the leader, one follower and a client cut off from
    /// the other three servers and the other client for `FAULT_FOR`, then healed. The old
    /// leader must serve no stale default read; the majority elects a new leader.
    PartitionLeaderWithMinority,
    /// Five servers and two clients split in two for `FAULT_FOR`: the leader with two
    /// followers and a client, the other two followers with the other client. The minority
    /// cannot elect; on the heal it must rejoin without losing or reordering anything.
    SplitLeaderWithMajority,
    /// `LOSS_PERCENT` of the packets between the leader and every other agent dropped for
    /// `FAULT_FOR`: slower, but no healthy member may be marked failed in gossip.
    LossyLeaderLink,
    /// Every packet between the leader and every other agent delayed `LINK_DELAY` each way
    /// for `FAULT_FOR`: slower, but no healthy member may be marked failed in gossip and
    /// writes must go on.
    SlowLeaderLink,
    /// The leader's data dir (a small tmpfs) filled to the last byte for `FAULT_FOR`, then
    /// freed: writes through it must be refused with a clear error meanwhile, nothing may be
    /// lost or corrupted, and it must take writes again once space returns, without a
    /// restart.
    FullLeaderDisk,
}

/// What a scenario needs of the machine beyond running processes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Needs {
    Nothing,
    /// Network namespaces, veth, a bridge and nftables (`net.rs`).
    Namespaces,
    /// Those, and iptables' NFQUEUE target with a reader (`delay.rs`).
    Delay,
    /// tmpfs mounts (`disk.rs`).
    Mounts,
}

pub struct Scenario {
    pub name: &'static str,
    pub fault: Fault,
}

impl Fault {
    /// Whether writes must resume within `WRITE_GAP_MAX` while this fault lasts.
    fn bounds_write_gap(self) -> bool {
        !matches!(self, Fault::LossyLeaderLink | Fault::SlowLeaderLink)
    }

    /// Whether the leader cannot go on leading, so another is elected: the write gap is then
    /// the failover as clients see it.
    fn replaces_leader(self) -> bool {
        matches!(
            self,
            Fault::KillLeader
                | Fault::PauseLeader
                | Fault::StallLeaderDisk
                | Fault::PartitionLeaderWithMinority
                | Fault::FullLeaderDisk
        )
    }

    pub fn needs(self) -> Needs {
        match self {
            Fault::PartitionLeaderWithMinority | Fault::SplitLeaderWithMajority | Fault::LossyLeaderLink => {
                Needs::Namespaces
            }
            Fault::SlowLeaderLink => Needs::Delay,
            Fault::FullLeaderDisk => Needs::Mounts,
            _ => Needs::Nothing,
        }
    }

    /// How many servers and client agents it runs.
    fn topology(self) -> (usize, usize) {
        match self {
            Fault::PartitionLeaderWithMinority | Fault::SplitLeaderWithMajority => (5, 2),
            _ => (3, 1),
        }
    }
}

pub const ALL: [Scenario; 9] = [
    Scenario { name: "leader-kill-restart", fault: Fault::KillLeader },
    Scenario { name: "follower-kill-restart", fault: Fault::KillFollower },
    Scenario { name: "leader-sigstop", fault: Fault::PauseLeader },
    Scenario { name: "leader-disk-stall", fault: Fault::StallLeaderDisk },
    Scenario { name: "partition-leader-with-minority", fault: Fault::PartitionLeaderWithMinority },
    Scenario { name: "split-leader-with-majority", fault: Fault::SplitLeaderWithMajority },
    Scenario { name: "lossy-leader-link", fault: Fault::LossyLeaderLink },
    Scenario { name: "slow-leader-link", fault: Fault::SlowLeaderLink },
    Scenario { name: "leader-disk-full", fault: Fault::FullLeaderDisk },
];

/// What a scenario found.
pub struct Outcome {
    pub name: &'static str,
    pub fault: Fault,
    pub seed: u64,
    pub operations: u64,
    pub acknowledged: usize,
    pub refused: u64,
    pub unknown: u64,
    /// Acknowledged unique writes missing from some server after the heal (must be 0).
    pub lost: Vec<String>,
    pub history_len: usize,
    pub linearizable: bool,
    /// Registered and deregistered nodes checked in DNS, and the answers that disagreed with
    /// the catalog after `DNS_CONVERGE` (must be none).
    pub dns_checked: usize,
    pub dns_wrong: Vec<String>,
    /// Times a lock worker held the lock, and pairs of those that overlapped (must be 0).
    pub lock_holds: usize,
    pub lock_overlaps: usize,
    /// What gossip got wrong (must be none): a member some agent still did not see alive
    /// `MEMBERS_CONVERGE` after the heal, or — with a lossy or slow link only — a healthy
    /// member some agent marked failed.
    pub gossip_wrong: Vec<String>,
    /// What the fault's own checks found wrong (must be none): e.g. a full disk's writes not
    /// refused with a clear error, or not taken again once space returned.
    pub fault_wrong: Vec<String>,
    /// (agent, member) pairs where the agent saw the member failed at some point: expected
    /// for a killed agent or across a partition, then healed.
    pub gossip_failed_seen: usize,
    /// How long after the heal some agent still listed some member failed (while the
    /// workload ran), if any did.
    pub gossip_healed_after: Option<Duration>,
    /// The longest time without an acknowledged write from the fault on: what clients saw
    /// of the failover.
    pub write_gap: Duration,
    /// Whether `write_gap` is checked against `WRITE_GAP_MAX` (else only reported).
    pub gap_bounded: bool,
    /// Set when the scenario could not run to its checks.
    pub error: Option<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.error.is_none()
            && self.lost.is_empty()
            && self.linearizable
            && self.lock_overlaps == 0
            && self.dns_wrong.is_empty()
            && self.gossip_wrong.is_empty()
            && self.fault_wrong.is_empty()
            && (!self.gap_bounded || self.write_gap <= WRITE_GAP_MAX)
    }

    pub fn line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{}: ERROR {e}", self.name);
        }
        format!(
            "{}: {} ops, {} writes acknowledged, {} lost, {} refused, {} unknown; counter history {} ops {}; \
             lock held {} times, {} overlapping; DNS {} nodes checked on every agent, {} wrong; \
             gossip: {} saw-failed pairs{}, {};{} longest write gap after the fault {} ms ({}); {}",
            self.name,
            self.operations,
            self.acknowledged,
            self.lost.len(),
            self.refused,
            self.unknown,
            self.history_len,
            if self.linearizable { "linearizable" } else { "NOT LINEARIZABLE" },
            self.lock_holds,
            self.lock_overlaps,
            self.dns_checked,
            self.dns_wrong.len(),
            self.gossip_failed_seen,
            self.gossip_healed_after
                .map(|d| format!(" (the last {} ms after the heal)", d.as_millis()))
                .unwrap_or_default(),
            if self.gossip_wrong.is_empty() {
                "all alive after the heal".to_string()
            } else {
                self.gossip_wrong.join(", ")
            },
            self.fault_wrong.iter().map(|w| format!(" {w};")).collect::<String>(),
            self.write_gap.as_millis(),
            if self.gap_bounded { format!("at most {} ms", WRITE_GAP_MAX.as_millis()) } else { "reported only".into() },
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

pub fn print_summary(results: &[Outcome]) {
    println!(
        "\n| scenario | seed | ops | acknowledged writes | lost | linearizable | lock holds (overlapping) | \
         DNS nodes checked (wrong) | gossip or fault check wrong | longest write gap ms | result |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} | {} |",
            r.name,
            r.seed,
            r.operations,
            r.acknowledged,
            r.lost.len(),
            if r.linearizable { "yes" } else { "NO" },
            r.lock_holds,
            r.lock_overlaps,
            r.dns_checked,
            r.dns_wrong.len(),
            r.gossip_wrong.len() + r.fault_wrong.len(),
            r.write_gap.as_millis(),
            if r.passed() { "pass" } else { r.error.as_deref().unwrap_or("FAIL") }
        );
    }

    // By scenario, over every run (the long mode's record).
    println!(
        "\n| scenario | runs | passed | ops | acknowledged writes | lost | linearizable | lock holds (overlapping) | \
         DNS wrong | gossip or fault check wrong | write gap ms, median (max) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|");
    for scenario in ALL.iter() {
        let runs: Vec<&Outcome> = results.iter().filter(|r| r.name == scenario.name).collect();
        if runs.is_empty() {
            continue;
        }
        let sum = |f: fn(&Outcome) -> usize| runs.iter().map(|r| f(r)).sum::<usize>();
        let gaps = percentiles(runs.iter().filter(|r| r.error.is_none()).map(|r| r.write_gap));
        println!(
            "| {} | {} | {} | {} | {} | {} | {}/{} | {} ({}) | {} | {} | {} |",
            scenario.name,
            runs.len(),
            sum(|r| r.passed() as usize),
            sum(|r| r.operations as usize),
            sum(|r| r.acknowledged),
            sum(|r| r.lost.len()),
            sum(|r| r.linearizable as usize),
            runs.len(),
            sum(|r| r.lock_holds),
            sum(|r| r.lock_overlaps),
            sum(|r| r.dns_wrong.len()),
            sum(|r| r.gossip_wrong.len() + r.fault_wrong.len()),
            gaps.map(|(p50, _, max)| format!("{p50} ({max})")).unwrap_or_default(),
        );
    }
    let lost: usize = results.iter().map(|r| r.lost.len()).sum();
    let not_linear = results.iter().filter(|r| r.error.is_none() && !r.linearizable).count();
    println!(
        "\n{} scenarios ({} faults injected), {} operations, {} acknowledged writes lost, {} linearizability \
         violations, {} failed",
        results.len(),
        results.len(),
        results.iter().map(|r| r.operations).sum::<u64>(),
        lost,
        not_linear,
        results.iter().filter(|r| !r.passed()).count()
    );
    let failovers = results.iter().filter(|r| r.error.is_none() && r.fault.replaces_leader());
    if let Some((p50, p99, _)) = percentiles(failovers.map(|r| r.write_gap)) {
        println!(
            "leader failover as clients see it (longest write gap after a leader fault): p50 {p50} ms, p99 {p99} ms"
        );
    }
    if let Some((p50, p99, _)) = percentiles(results.iter().filter(|r| r.error.is_none()).map(|r| r.write_gap)) {
        println!("longest write gap after any fault: p50 {p50} ms, p99 {p99} ms");
    }
}

/// p50, p99 and the maximum of `gaps`, in milliseconds; `None` for none.
fn percentiles(gaps: impl Iterator<Item = Duration>) -> Option<(u128, u128, u128)> {
    let mut gaps: Vec<u128> = gaps.map(|g| g.as_millis()).collect();
    gaps.sort();
    let pick = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize];
    (!gaps.is_empty()).then(|| (pick(0.5), pick(0.99), pick(1.0)))
}

/// One agent of the harness's cluster, with what it takes to start it again.
struct Node {
    agent: Option<Agent>,
    args: Vec<String>,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    /// What the agent runs behind (`ip netns exec NAME` in a namespace), if anything.
    wrapper: Vec<String>,
    /// The stall failpoint's file (servers only): while it exists, this server's disk hangs.
    stall: Option<PathBuf>,
    /// The logs of this node's earlier runs (before a kill and restart).
    earlier_logs: Vec<String>,
    /// Where its log goes when the scenario fails (`Node::drop`).
    log_file: PathBuf,
    /// Set when the scenario failed: the log is kept.
    keep_log: bool,
}

impl Drop for Node {
    /// A failed scenario (a check that failed, or a panic: a wait past its deadline) keeps
    /// every agent's whole log, earlier runs included, for the post-mortem.
    fn drop(&mut self) {
        if !(self.keep_log || std::thread::panicking()) {
            return;
        }
        let mut log = self.earlier_logs.join("\n--- restarted ---\n");
        if let Some(agent) = &self.agent {
            log.push_str(&agent.log());
        }
        if let Some(dir) = self.log_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(&self.log_file, log) {
            Ok(()) => println!("  log kept: {}", self.log_file.display()),
            Err(e) => println!("  could not keep {}: {e}", self.log_file.display()),
        }
    }
}

impl Node {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("running")
    }

    fn start(&mut self) {
        self.start_joining(None);
    }

    /// Starts the agent, also joining `rejoin` (a restarted agent on loopback comes back on
    /// new ports and must find the others, as one with `retry_join` in its config does).
    fn start_joining(&mut self, rejoin: Option<String>) {
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut args = self.args.clone();
        args.extend(rejoin.into_iter().flat_map(|addr| ["-retry-join".to_string(), addr]));
        if let Some(earlier) = self.agent.take() {
            self.earlier_logs.push(earlier.log());
        }
        self.agent = Some(Agent::spawn_wrapped(&self.wrapper, args, self.dir.clone(), &env, "DNS listening"));
    }
}

/// `servers` servers (s1, s2, ...), each with a stall file, and `clients` client agents
/// (c1, ...): on loopback, or each in its own namespace of `net` (node `i` of the net is
/// `nodes[i]`) on the default ports. A failed scenario keeps their logs in `logs`.
fn start_cluster(dir: &Path, servers: usize, clients: usize, net: Option<&Net>, logs: &Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut join: Option<String> = None;
    for i in 0..servers + clients {
        let server = i < servers;
        let name = if server { format!("s{}", i + 1) } else { format!("c{}", i - servers + 1) };
        let expect = server.then_some(servers);
        let (args, wrapper) = match net {
            Some(net) => {
                let ip = net.addr(i).to_string();
                let listen = ["-bind".to_string(), ip.clone(), "-client".to_string(), ip];
                (agent_args_listening(&name, dir, expect, join.as_deref(), &listen), net.wrapper(i))
            }
            None => (agent_args(&name, dir, expect, join.as_deref()), Vec::new()),
        };
        let stall = server.then(|| dir.join(format!("stall-{name}")));
        let env = stall.iter().map(|f| ("CAIRN_TEST_STALL_SYNC_WHILE", f.display().to_string())).collect();
        let mut node = Node {
            agent: None,
            args,
            dir: dir.join(&name),
            env,
            wrapper,
            stall,
            earlier_logs: Vec::new(),
            log_file: logs.join(format!("{name}.log")),
            keep_log: false,
        };
        node.start();
        join.get_or_insert_with(|| node.agent().gossip.to_string());
        nodes.push(node);
    }
    for node in &nodes[..servers] {
        node.agent().wait_log("registered this server in the catalog", FORM);
    }
    for node in &nodes[servers..] {
        node.agent().wait_log("registered this client in the catalog through a server", FORM);
    }
    nodes
}

pub fn run(scenario: &Scenario, seed: u64, namespaces: bool) -> Outcome {
    let mut outcome = Outcome {
        name: scenario.name,
        fault: scenario.fault,
        seed,
        operations: 0,
        acknowledged: 0,
        refused: 0,
        unknown: 0,
        lost: Vec::new(),
        history_len: 0,
        linearizable: false,
        lock_holds: 0,
        lock_overlaps: 0,
        dns_checked: 0,
        dns_wrong: Vec::new(),
        gossip_wrong: Vec::new(),
        fault_wrong: Vec::new(),
        gossip_failed_seen: 0,
        gossip_healed_after: None,
        write_gap: Duration::ZERO,
        gap_bounded: scenario.fault.bounds_write_gap(),
        error: None,
    };
    // A panic inside (a wait past its deadline) is this scenario's error, not the run's end.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_checked(scenario, seed, namespaces, &mut outcome)
    }));
    if let Err(panic) = result {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panicked".into());
        outcome.error = Some(why);
    }
    outcome
}

fn run_checked(scenario: &Scenario, seed: u64, namespaces: bool, outcome: &mut Outcome) {
    let temp = tempfile::tempdir().expect("tempdir");
    let (server_count, client_count) = scenario.fault.topology();
    let net = namespaces.then(|| Net::create(server_count + client_count).unwrap_or_else(|e| panic!("{e}")));
    // Declared after `temp`, so unmounted before it is deleted.
    let disks: Vec<Tmpfs> = match scenario.fault {
        Fault::FullLeaderDisk => (1..=server_count)
            .map(|i| Tmpfs::mount(&temp.path().join(format!("s{i}"))).unwrap_or_else(|e| panic!("{e}")))
            .collect(),
        _ => Vec::new(),
    };
    let logs = Path::new(env!("CARGO_TARGET_TMPDIR")).join("faults-logs").join(format!("{}-seed{seed}", scenario.name));
    let mut nodes = start_cluster(temp.path(), server_count, client_count, net.as_ref(), &logs);
    let servers: Vec<&Agent> = nodes[..server_count].iter().map(Node::agent).collect();
    let leader_addr = agreed_leader(&servers, FORM);
    let leader = leader_index(&servers, &leader_addr);
    let targets: workload::Targets = Arc::new(Mutex::new(nodes.iter().map(|n| n.agent().http).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let prefix = format!("faults/{}", scenario.name);
    let workers = WORKERS_PER_AGENT * nodes.len();
    let workers = workload::start(workers, &prefix, Arc::clone(&targets), seed, Arc::clone(&stop));
    let lockers = workload::start_lockers(&prefix, &targets, &stop);
    let members = workload::watch_members(&targets, &stop);

    std::thread::sleep(BEFORE_FAULT);
    let struck = Instant::now();
    let plan = Plan::new(scenario.fault, leader, server_count, client_count, seed);
    strike(&mut nodes, net.as_ref(), &disks, scenario.fault, &plan);
    if scenario.fault == Fault::FullLeaderDisk {
        outcome.fault_wrong.extend(full_disk_refuses(nodes[plan.victim].agent()));
    }
    if scenario.fault == Fault::SlowLeaderLink {
        outcome.fault_wrong.extend(link_is_slow(nodes[(plan.victim + 1) % server_count].agent()));
    }
    std::thread::sleep((struck + FAULT_FOR).saturating_duration_since(Instant::now()));
    if scenario.fault == Fault::SlowLeaderLink {
        // Regression check "a slow link keeps its leader": nothing failed, so no election.
        for node in &nodes[..server_count] {
            let seen = leader_of(node.agent());
            if seen.as_deref() != Some(leader_addr.as_str()) {
                let why = format!("leadership moved under delay only: {} reports {seen:?}", node.agent().http);
                outcome.fault_wrong.push(why);
            }
        }
    }
    let healed = Instant::now();
    heal(&mut nodes, net.as_ref(), &disks, scenario.fault, &plan);
    if scenario.fault == Fault::FullLeaderDisk {
        outcome.fault_wrong.extend(takes_writes_again(nodes[plan.victim].agent()));
    }
    targets.lock().unwrap_or_else(|e| e.into_inner())[plan.victim] = nodes[plan.victim].agent().http;
    std::thread::sleep(AFTER_HEAL);
    stop.store(true, Ordering::Relaxed);
    let records: Vec<workload::Record> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    let holds: Vec<workload::Held> = lockers.into_iter().flat_map(|l| l.join().expect("lock worker")).collect();
    let failed_seen = members.join().expect("members watcher");
    outcome.lock_holds = holds.len();
    let overlaps = workload::overlapping_holds(&holds);
    for (a, b) in overlaps.iter().take(3) {
        println!("  two holders at once: {a:?} and {b:?}");
    }
    outcome.lock_overlaps = overlaps.len();
    outcome.gossip_failed_seen = failed_seen.pairs.len();
    outcome.gossip_healed_after = failed_seen.last.filter(|t| *t > healed).map(|t| t - healed);
    if matches!(scenario.fault, Fault::LossyLeaderLink | Fault::SlowLeaderLink) {
        let fault = if scenario.fault == Fault::LossyLeaderLink { "loss" } else { "delay" };
        outcome.gossip_wrong.extend(failed_seen.pairs.into_iter().map(|seen| format!("{seen} under {fault} only")));
    }

    let history: Vec<linear::Event> = records.iter().flat_map(|r| r.history.iter().copied()).collect();
    let acknowledged: Vec<&String> = records.iter().flat_map(|r| &r.acknowledged).collect();
    let mut write_times: Vec<Instant> = records.iter().flat_map(|r| r.write_times.iter().copied()).collect();
    write_times.sort();
    outcome.operations = records.iter().map(|r| r.operations).sum();
    outcome.refused = records.iter().map(|r| r.refused).sum();
    outcome.unknown = records.iter().map(|r| r.unknown).sum();
    outcome.acknowledged = acknowledged.len();
    outcome.history_len = history.len();
    outcome.write_gap = longest_gap(&write_times, struck);
    if let Some((read, newer)) = linear::first_stale_read(&history) {
        println!(
            "  stale read: {:?} at +{} ms, though {:?} was acknowledged at +{} ms (from the fault)",
            read.op,
            read.start.saturating_duration_since(struck).as_millis(),
            newer.op,
            newer.end.map_or(0, |e| e.saturating_duration_since(struck).as_millis()),
        );
    }
    outcome.linearizable = linearizable(history);

    // Every acknowledged write on every server, the one that was struck included.
    let servers: Vec<&Agent> = nodes[..server_count].iter().map(Node::agent).collect();
    agreed_leader(&servers, FORM);
    let wanted: BTreeSet<&str> = acknowledged.iter().map(|k| k.as_str()).collect();
    let mut lost = BTreeSet::new();
    for server in &servers {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let present = keys_on(server, &prefix);
            let missing: Vec<&str> = wanted.iter().filter(|k| !present.contains(**k)).copied().collect();
            if missing.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                lost.extend(missing.iter().map(|k| format!("{k} (missing on {})", server.http)));
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    outcome.lost = lost.into_iter().collect();
    if scenario.fault == Fault::FullLeaderDisk {
        let rejoin = nodes[(plan.victim + 1) % server_count].agent().gossip.to_string();
        outcome.fault_wrong.extend(restarts_whole(&mut nodes[plan.victim], rejoin, &prefix, &wanted));
    }

    // DNS on every agent, the client included, answers for exactly the nodes the catalog has.
    let registered: Vec<&String> = records.iter().flat_map(|r| &r.registered).collect();
    let deregistered: Vec<&String> = records.iter().flat_map(|r| &r.deregistered).collect();
    outcome.dns_checked = registered.len() + deregistered.len();
    let expect = registered.iter().map(|n| (n, true)).chain(deregistered.iter().map(|n| (n, false)));
    let expect: Vec<(&String, bool)> = expect.map(|(n, present)| (*n, present)).collect();
    let deadline = Instant::now() + DNS_CONVERGE;
    for node in &nodes {
        let mut wrong = wrong_dns_answers(node.agent(), &expect);
        while !wrong.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            wrong = wrong_dns_answers(node.agent(), &expect);
        }
        outcome.dns_wrong.extend(wrong.into_iter().map(|w| format!("{w} on {}", node.agent().dns)));
    }
    for wrong in outcome.dns_wrong.iter().take(3) {
        println!("  DNS disagrees with the catalog: {wrong}");
    }

    // Gossip heals too: every agent sees every other one alive.
    let names: Vec<String> = nodes.iter().map(|n| n.dir.file_name().unwrap().to_string_lossy().into_owned()).collect();
    let deadline = healed + MEMBERS_CONVERGE;
    for node in &nodes {
        let mut not_alive = members_not_alive(node.agent(), &names);
        while !not_alive.is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            not_alive = members_not_alive(node.agent(), &names);
        }
        outcome.gossip_wrong.extend(not_alive.into_iter().map(|m| {
            format!("{m} not alive on {} {} s after the heal", node.agent().http, MEMBERS_CONVERGE.as_secs())
        }));
    }
    if !outcome.passed() {
        for node in &mut nodes {
            node.keep_log = true;
        }
    }
}

/// The members of `names` that `agent` does not list as alive.
fn members_not_alive(agent: &Agent, names: &[String]) -> Vec<String> {
    let members = workload::members(agent.http).unwrap_or_default();
    names
        .iter()
        .filter(|n| members.get(*n) != Some(&workload::ALIVE))
        .map(|n| format!("{n} ({:?})", members.get(n)))
        .collect()
}

/// Who a fault strikes.
struct Plan {
    /// The agent the fault is on (killed, paused, stalled, or with the lossy link).
    victim: usize,
    /// For a partition: the agents cut off from all the others.
    side: Vec<usize>,
    rest: Vec<usize>,
}

impl Plan {
    /// Followers are chosen from the seed, so a scenario repeats with its seed.
    fn new(fault: Fault, leader: usize, servers: usize, clients: usize, seed: u64) -> Plan {
        let mut followers: Vec<usize> = (0..servers).filter(|s| *s != leader).collect();
        let turn = seed as usize % followers.len();
        followers.rotate_left(turn);
        let victim = if fault == Fault::KillFollower { followers[0] } else { leader };
        let with_leader = match fault {
            Fault::PartitionLeaderWithMinority => servers / 2 - 1,
            Fault::SplitLeaderWithMajority => servers / 2,
            _ => 0,
        };
        let mut side = vec![leader];
        side.extend(&followers[..with_leader]);
        if with_leader > 0 {
            // A client on each side: its workers see what an application there sees.
            side.push(servers);
        }
        let rest = (0..servers + clients).filter(|n| !side.contains(n)).collect();
        Plan { victim, side, rest }
    }
}

/// [`linear::linearizable`] on a thread of its own: its search recurses once per operation,
/// and a scenario's history (thousands of operations, frames of a debug build) overflowed
/// the main thread's 8 MiB stack.
fn linearizable(history: Vec<linear::Event>) -> bool {
    const STACK: usize = 1 << 30; // reserved, not touched: a page is used only when reached
    std::thread::Builder::new()
        .name("linearizability".into())
        .stack_size(STACK)
        .spawn(move || linear::linearizable(&history, 0))
        .expect("spawn the linearizability check")
        .join()
        .expect("the linearizability check")
}

/// The nodes in `expect` whose `<node>.node.consul` answer from `agent` is not what the
/// catalog says (an address if registered, NXDOMAIN if deregistered).
fn wrong_dns_answers(agent: &Agent, expect: &[(&String, bool)]) -> Vec<String> {
    expect
        .iter()
        .filter_map(|(node, present)| {
            let answer = crate::support::dns::udp(agent.dns, &format!("{node}.node.consul."), RecordType::A, None);
            let found = answer.metadata.response_code == ResponseCode::NoError && !answer.answers.is_empty();
            let gone = answer.metadata.response_code == ResponseCode::NXDomain;
            let right = if *present { found } else { gone };
            (!right).then(|| format!("{node} ({})", answer.metadata.response_code))
        })
        .collect()
}

/// Regression check "a full disk refuses writes clearly": once the victim's disk is full, a
/// write through it must be answered 500 saying so within `WRITE_GAP_MAX` (not hang, not
/// crash the agent). The probe's value is large, so it needs pages LMDB's file does not have
/// free yet (small writes may fit in freed pages for a while, which is not a failure); the
/// first write that meets the full disk may hang until it is answered as unknown, so each
/// try waits only a second.
fn full_disk_refuses(agent: &Agent) -> Option<String> {
    let value = vec![b'x'; 256 << 10];
    let refused = |r: &Response| r.status == 500 && r.text().contains("out of space");
    let last = put_until(agent, &value, Duration::from_secs(1), WRITE_GAP_MAX, refused)?;
    Some(format!("a write through the server with a full disk was not refused as out of space (last: {last})"))
}

/// PUTs `value` to the full-disk probe key through `agent`, each try waiting up to
/// `per_try`, until an answer passes `wanted` (`None`) or `within` has passed (`Some`: the
/// last answer, or "no answer").
fn put_until(
    agent: &Agent,
    value: &[u8],
    per_try: Duration,
    within: Duration,
    wanted: impl Fn(&Response) -> bool,
) -> Option<String> {
    let deadline = Instant::now() + within;
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        match try_http_request(agent.http, "PUT", "/v1/kv/faults/full-disk-probe", value, per_try) {
            Some(r) if wanted(&r) => return None,
            Some(r) => last = format!("{} {}", r.status, r.text().trim()),
            None => last = String::from("no answer"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(last)
}

/// The delay is in effect: a write through a follower crosses the slow link at least four
/// times (forwarded to the leader and back, replicated and acknowledged), so it takes at
/// least two delays.
fn link_is_slow(follower: &Agent) -> Option<String> {
    let started = Instant::now();
    let answer = try_http_request(follower.http, "PUT", "/v1/kv/faults/slow-link-probe", b"x", WRITE_GAP_MAX);
    let took = started.elapsed();
    println!("  a write through a follower over the slow link took {} ms", took.as_millis());
    match answer {
        Some(r) if r.status == 200 && took >= 2 * LINK_DELAY => None,
        Some(r) if r.status == 200 => {
            Some(format!("the delay is not in effect: a write through a follower took {} ms", took.as_millis()))
        }
        other => Some(format!(
            "a write through a follower over the slow link failed: {:?}",
            other.map(|r| (r.status, r.text()))
        )),
    }
}

/// "Corrupts nothing": the server whose disk was full, killed and started again on its data
/// dir, opens it and holds every acknowledged write in its own replica.
fn restarts_whole(node: &mut Node, rejoin: String, prefix: &str, wanted: &BTreeSet<&str>) -> Option<String> {
    if let Some(agent) = node.agent.as_mut() {
        agent.kill();
    }
    let started = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| node.start_joining(Some(rejoin))));
    if started.is_err() {
        return Some("the server whose disk was full did not start again on its data dir".into());
    }
    let deadline = Instant::now() + CONVERGE;
    loop {
        let present = keys_on(node.agent(), prefix);
        let missing = wanted.iter().filter(|k| !present.contains(**k)).count();
        if missing == 0 {
            return None;
        }
        if Instant::now() >= deadline {
            return Some(format!("restarted after the full disk, it lacks {missing} acknowledged writes"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Once space is back, a write through the server that was full must succeed (no restart).
fn takes_writes_again(agent: &Agent) -> Option<String> {
    let taken = |r: &Response| r.status == 200 && r.body == b"true";
    let last = put_until(agent, b"y", WRITE_GAP_MAX, CONVERGE, taken)?;
    Some(format!(
        "the server whose disk was full took no write {} s after space returned (last: {last})",
        CONVERGE.as_secs()
    ))
}

fn strike(nodes: &mut [Node], net: Option<&Net>, disks: &[Tmpfs], fault: Fault, plan: &Plan) {
    let node = &mut nodes[plan.victim];
    let net = || net.expect("a network fault runs only with namespaces");
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            if let Some(agent) = node.agent.as_mut() {
                agent.kill();
            }
        }
        Fault::PauseLeader => node.agent().signal(libc::SIGSTOP),
        Fault::StallLeaderDisk => std::fs::write(node.stall.as_ref().expect("a server"), "").expect("stall file"),
        Fault::PartitionLeaderWithMinority | Fault::SplitLeaderWithMajority => net().cut(&plan.side, &plan.rest),
        Fault::LossyLeaderLink => {
            let others: Vec<usize> = (0..nodes.len()).filter(|n| *n != plan.victim).collect();
            net().lose(plan.victim, &others, LOSS_PERCENT);
        }
        Fault::SlowLeaderLink => {
            let others: Vec<usize> = (0..nodes.len()).filter(|n| *n != plan.victim).collect();
            net().delay(plan.victim, &others, LINK_DELAY);
        }
        Fault::FullLeaderDisk => disks[plan.victim].fill(),
    }
}

fn heal(nodes: &mut [Node], net: Option<&Net>, disks: &[Tmpfs], fault: Fault, plan: &Plan) {
    let rejoin = nodes[(plan.victim + 1) % nodes.len()].agent().gossip.to_string();
    let node = &mut nodes[plan.victim];
    match fault {
        Fault::KillLeader | Fault::KillFollower => node.start_joining(Some(rejoin)),
        Fault::PauseLeader => node.agent().signal(libc::SIGCONT),
        Fault::StallLeaderDisk => {
            std::fs::remove_file(node.stall.as_ref().expect("a server")).expect("the disk recovers")
        }
        Fault::PartitionLeaderWithMinority
        | Fault::SplitLeaderWithMajority
        | Fault::LossyLeaderLink
        | Fault::SlowLeaderLink => net.expect("namespaces").heal(),
        Fault::FullLeaderDisk => disks[plan.victim].free(),
    }
}

/// Keys under `prefix/acked/` on `server`, read from its own replica.
fn keys_on(server: &Agent, prefix: &str) -> BTreeSet<String> {
    let path = format!("/v1/kv/{prefix}/acked/?keys&stale");
    match try_http_request(server.http, "GET", &path, b"", Duration::from_secs(5)) {
        Some(r) if r.status == 200 => serde_json::from_slice(&r.body).unwrap_or_default(),
        _ => BTreeSet::new(),
    }
}

/// The longest stretch without an acknowledged write from `from` on.
fn longest_gap(sorted: &[Instant], from: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for t in sorted.iter().filter(|t| **t >= from) {
        longest = longest.max(t.duration_since(last));
        last = *t;
    }
    longest
}
