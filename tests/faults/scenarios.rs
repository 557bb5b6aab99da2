//! The scenarios: start a fresh cluster, run the workload, strike, heal, check.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;

use crate::support::cluster::{agent_args, agreed_leader, leader_index, server_args, FORM};
use crate::support::{try_http_request, Agent};
use crate::{linear, workload};

/// Workers writing at once: two through each of the four agents.
const WORKERS: usize = 8;
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
/// paused or stalled leader, holding every write queued behind it. Not applied to the
/// stalled disk: a leader whose disk stalls is replaced only once its Raft core blocks on
/// the disk, which some runs do not reach within the stall (an open finding; the gap is
/// reported).
const WRITE_GAP_MAX: Duration = Duration::from_secs(4);
/// After the heal, every server must hold every acknowledged write within this.
const CONVERGE: Duration = Duration::from_secs(30);
/// Once the servers hold every write, DNS on every agent must agree with the catalog
/// within this.
const DNS_CONVERGE: Duration = Duration::from_secs(2);

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
}

pub struct Scenario {
    pub name: &'static str,
    pub fault: Fault,
}

impl Fault {
    /// Whether writes must resume within `WRITE_GAP_MAX` while this fault lasts.
    fn bounds_write_gap(self) -> bool {
        self != Fault::StallLeaderDisk
    }
}

pub const ALL: [Scenario; 4] = [
    Scenario { name: "leader-kill-restart", fault: Fault::KillLeader },
    Scenario { name: "follower-kill-restart", fault: Fault::KillFollower },
    Scenario { name: "leader-sigstop", fault: Fault::PauseLeader },
    Scenario { name: "leader-disk-stall", fault: Fault::StallLeaderDisk },
];

/// What a scenario found.
pub struct Outcome {
    pub name: &'static str,
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
            && (!self.gap_bounded || self.write_gap <= WRITE_GAP_MAX)
    }

    pub fn line(&self) -> String {
        if let Some(e) = &self.error {
            return format!("{}: ERROR {e}", self.name);
        }
        format!(
            "{}: {} ops, {} writes acknowledged, {} lost, {} refused, {} unknown; counter history {} ops {}; \
             lock held {} times, {} overlapping; DNS {} nodes checked on every agent, {} wrong; \
             longest write gap after the fault {} ms ({}); {}",
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
            self.write_gap.as_millis(),
            if self.gap_bounded { format!("at most {} ms", WRITE_GAP_MAX.as_millis()) } else { "reported only".into() },
            if self.passed() { "PASS" } else { "FAIL" }
        )
    }
}

pub fn print_summary(results: &[Outcome]) {
    println!(
        "\n| scenario | seed | ops | acknowledged writes | lost | linearizable | lock holds (overlapping) | \
         DNS nodes checked (wrong) | longest write gap ms | result |"
    );
    println!("|---|---:|---:|---:|---:|---|---:|---:|---:|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} ({}) | {} ({}) | {} | {} |",
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
            r.write_gap.as_millis(),
            if r.passed() { "pass" } else { r.error.as_deref().unwrap_or("FAIL") }
        );
    }
    let mut gaps: Vec<Duration> = results.iter().filter(|r| r.error.is_none()).map(|r| r.write_gap).collect();
    gaps.sort();
    if !gaps.is_empty() {
        let pick = |q: f64| gaps[((gaps.len() - 1) as f64 * q).round() as usize].as_millis();
        println!("\nlongest write gap over {} scenarios: p50 {} ms, p99 {} ms", gaps.len(), pick(0.5), pick(0.99));
    }
}

/// One agent of the harness's cluster, with what it takes to start it again.
struct Node {
    agent: Option<Agent>,
    args: Vec<String>,
    dir: PathBuf,
    env: Vec<(&'static str, String)>,
    /// The stall failpoint's file (servers only): while it exists, this server's disk hangs.
    stall: Option<PathBuf>,
}

impl Node {
    fn agent(&self) -> &Agent {
        self.agent.as_ref().expect("running")
    }

    fn start(&mut self) {
        self.start_joining(None);
    }

    /// Starts the agent, also joining `rejoin` (a restarted agent comes back on new ports
    /// and must find the others, as one with `retry_join` in its config does).
    fn start_joining(&mut self, rejoin: Option<String>) {
        let env: Vec<(&str, String)> = self.env.iter().map(|(k, v)| (*k, v.clone())).collect();
        let mut args = self.args.clone();
        args.extend(rejoin.into_iter().flat_map(|addr| ["-retry-join".to_string(), addr]));
        self.agent = Some(Agent::spawn_until(args, self.dir.clone(), &env, "DNS listening"));
    }
}

/// Three servers (s1..s3) and a client agent on loopback, each server with a stall file.
fn start_cluster(dir: &Path) -> Vec<Node> {
    let mut nodes: Vec<Node> = Vec::new();
    let mut join: Option<String> = None;
    for i in 1..=3 {
        let name = format!("s{i}");
        let stall = dir.join(format!("stall-{name}"));
        let env = vec![("CAIRN_TEST_STALL_SYNC_WHILE", stall.display().to_string())];
        let mut node = Node {
            agent: None,
            args: server_args(&name, dir, 3, join.as_deref()),
            dir: dir.join(&name),
            env,
            stall: Some(stall),
        };
        node.start();
        join.get_or_insert_with(|| node.agent().gossip.to_string());
        nodes.push(node);
    }
    let mut client = Node {
        agent: None,
        args: agent_args("client", dir, None, join.as_deref()),
        dir: dir.join("client"),
        env: Vec::new(),
        stall: None,
    };
    client.start();
    nodes.push(client);
    for node in &nodes[..3] {
        node.agent().wait_log("registered this server in the catalog", FORM);
    }
    nodes[3].agent().wait_log("registered this client in the catalog through a server", FORM);
    nodes
}

pub fn run(scenario: &Scenario, seed: u64) -> Outcome {
    let mut outcome = Outcome {
        name: scenario.name,
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
        write_gap: Duration::ZERO,
        gap_bounded: scenario.fault.bounds_write_gap(),
        error: None,
    };
    // A panic inside (a wait past its deadline) is this scenario's error, not the run's end.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_checked(scenario, seed, &mut outcome)));
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

fn run_checked(scenario: &Scenario, seed: u64, outcome: &mut Outcome) {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut nodes = start_cluster(temp.path());
    let servers: Vec<&Agent> = nodes[..3].iter().map(Node::agent).collect();
    let leader = leader_index(&servers, &agreed_leader(&servers, FORM));
    let targets: workload::Targets = Arc::new(Mutex::new(nodes.iter().map(|n| n.agent().http).collect()));
    let stop = Arc::new(AtomicBool::new(false));
    let prefix = format!("faults/{}", scenario.name);
    let workers = workload::start(WORKERS, &prefix, Arc::clone(&targets), seed, Arc::clone(&stop));
    let lockers = workload::start_lockers(&prefix, &targets, &stop);

    std::thread::sleep(BEFORE_FAULT);
    let struck = Instant::now();
    let victim = match scenario.fault {
        Fault::KillFollower => (leader + 1) % 3,
        _ => leader,
    };
    strike(&mut nodes[victim], scenario.fault);
    std::thread::sleep(FAULT_FOR);
    let rejoin = nodes[(victim + 1) % 3].agent().gossip.to_string();
    heal(&mut nodes[victim], scenario.fault, rejoin);
    targets.lock().unwrap_or_else(|e| e.into_inner())[victim] = nodes[victim].agent().http;
    std::thread::sleep(AFTER_HEAL);
    stop.store(true, Ordering::Relaxed);
    let records: Vec<workload::Record> = workers.into_iter().map(|w| w.join().expect("worker")).collect();
    let holds: Vec<workload::Held> = lockers.into_iter().flat_map(|l| l.join().expect("lock worker")).collect();
    outcome.lock_holds = holds.len();
    let overlaps = workload::overlapping_holds(&holds);
    for (a, b) in overlaps.iter().take(3) {
        println!("  two holders at once: {a:?} and {b:?}");
    }
    outcome.lock_overlaps = overlaps.len();

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
    outcome.linearizable = linear::linearizable(&history, 0);

    // Every acknowledged write on every server, the one that was struck included.
    let servers: Vec<&Agent> = nodes[..3].iter().map(Node::agent).collect();
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

fn strike(node: &mut Node, fault: Fault) {
    match fault {
        Fault::KillLeader | Fault::KillFollower => {
            if let Some(agent) = node.agent.as_mut() {
                agent.kill();
            }
        }
        Fault::PauseLeader => node.agent().signal(libc::SIGSTOP),
        Fault::StallLeaderDisk => std::fs::write(node.stall.as_ref().expect("a server"), "").expect("stall file"),
    }
}

fn heal(node: &mut Node, fault: Fault, rejoin: String) {
    match fault {
        Fault::KillLeader | Fault::KillFollower => node.start_joining(Some(rejoin)),
        Fault::PauseLeader => node.agent().signal(libc::SIGCONT),
        Fault::StallLeaderDisk => {
            std::fs::remove_file(node.stall.as_ref().expect("a server")).expect("the disk recovers")
        }
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
