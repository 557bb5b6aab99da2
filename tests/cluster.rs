//! Several server processes on loopback forming one Raft cluster through gossip and
//! `-bootstrap-expect`: writes through any server, reads and DNS fresh on the server that
//! answered, a SIGKILLed leader replaced while a client keeps writing, and every
//! acknowledged write present on every server afterwards, the restarted one included.

mod support;

#[path = "cluster/linear.rs"]
mod linear;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use support::cluster::{
    agent_args, agreed_leader, form_cluster, leader_index, leader_of, server_args, spawn_server, FORM,
};
use support::dns::{answers, udp};
use support::{try_http_request, wait_for, Agent};

fn kv_keys(agent: &Agent, stale: bool) -> BTreeSet<String> {
    let path = if stale { "/v1/kv/k/?keys&stale" } else { "/v1/kv/k/?keys" };
    let r = agent.get(path);
    if r.status == 404 {
        return BTreeSet::new();
    }
    assert_eq!(r.status, 200, "{}", r.text());
    serde_json::from_slice(&r.body).expect("keys")
}

#[test]
fn three_servers_form_one_cluster_forward_writes_and_survive_a_leader_kill() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut servers: Vec<Option<Agent>> = form_cluster(3, temp.path()).into_iter().map(Some).collect();
    let all: Vec<&Agent> = servers.iter().flatten().collect();
    let leader_addr = agreed_leader(&all, FORM);

    // One configuration of three voters, named from gossip, with one leader.
    let config = all[0].get("/v1/operator/raft/configuration").json();
    let listed = config["Servers"].as_array().expect("servers");
    let names: BTreeSet<&str> = listed.iter().map(|s| s["Node"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["s1", "s2", "s3"]), "{config}");
    assert!(listed.iter().all(|s| s["Voter"] == true), "{config}");
    assert_eq!(all[0].get("/v1/operator/autopilot/configuration").json()["CleanupDeadServers"], true);
    assert_eq!(listed.iter().filter(|s| s["Leader"] == true).count(), 1, "{config}");
    let peers = all[1].get("/v1/status/peers").json();
    assert_eq!(peers.as_array().map(Vec::len), Some(3), "{peers}");
    assert!(peers.as_array().unwrap().contains(&Value::String(leader_addr.clone())));

    // A write through a follower is forwarded; when it returns, that follower's HTTP reads
    // and DNS already show it.
    let leader = leader_index(&all, &leader_addr);
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (f1, f2) = (all[followers[0]], all[followers[1]]);
    let register = json!({"Node": "ext1", "Address": "10.1.2.3", "Service": {"Service": "web", "Port": 80}});
    let r = f1.put("/v1/catalog/register", register.to_string());
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let m = udp(f1.dns, "web.service.consul", RecordType::A, None);
    assert_eq!(answers(&m), vec!["A 10.1.2.3"], "DNS on the server that answered is fresh");
    let r = f1.put("/v1/kv/k/first", "1");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(f2.get("/v1/kv/k/first?raw").text(), "1", "a default read on another follower sees it");
    assert_eq!(f2.get("/v1/kv/k/first?raw&consistent").text(), "1");
    let r = f2.get("/v1/kv/k/first?stale");
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));

    // A TTL session made through one follower is renewed through the other (the timer
    // lives on the leader only).
    let r = f1.put("/v1/session/create", json!({"TTL": "10s"}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let session = r.json()["ID"].as_str().expect("ID").to_string();
    let r = f2.put(&format!("/v1/session/renew/{session}"), "");
    assert_eq!((r.status, r.json()[0]["ID"].as_str()), (200, Some(session.as_str())), "{}", r.text());

    // A client writes through a follower without pause; the leader is SIGKILLed meanwhile.
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (acked, stop, addr) = (Arc::clone(&acked), Arc::clone(&stop), f1.http);
        std::thread::spawn(move || {
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let key = format!("k/{i:05}");
                let r = try_http_request(addr, "PUT", &format!("/v1/{}", kv_path(&key)), b"v", Duration::from_secs(20));
                if r.is_some_and(|r| r.status == 200 && r.body == b"true") {
                    acked.lock().unwrap().push(key);
                }
            }
        })
    };
    let acked_count = || acked.lock().unwrap().len();
    wait_for("writes before the kill", FORM, || (acked_count() >= 20).then_some(()));
    let killed_at = Instant::now();
    servers[leader].as_mut().unwrap().kill();
    let survivors: Vec<&Agent> = followers.iter().map(|i| servers[*i].as_ref().unwrap()).collect();
    let new_leader = wait_for("a new leader among the survivors", FORM, || {
        let l = leader_of(survivors[0])?;
        (l != leader_addr && leader_of(survivors[1]).as_deref() == Some(&l)).then_some(l)
    });
    let failover = killed_at.elapsed();
    let before = acked_count();
    wait_for("writes after the failover", FORM, || (acked_count() >= before + 20).then_some(()));
    stop.store(true, Ordering::Relaxed);
    writer.join().expect("writer");
    eprintln!("failover after a leader SIGKILL: {failover:?}; new leader {new_leader}");
    // The new leader armed the session's timer afresh: it is still there and renewable.
    let r = survivors[1].put(&format!("/v1/session/renew/{session}"), "");
    assert_eq!(r.status, 200, "the session did not survive the failover: {}", r.text());

    // The killed server comes back on its data dir (new ports) and catches up.
    let leader_name = format!("s{}", leader + 1);
    let join = survivors[0].gossip.to_string();
    servers[leader] = Some(spawn_server(&leader_name, temp.path(), 3, Some(&join)));
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let mut expected = acked.clone();
    expected.insert("k/first".into());
    for server in servers.iter().flatten() {
        wait_for("every acknowledged write on every server", FORM, || {
            let keys = kv_keys(server, true);
            expected.is_subset(&keys).then_some(())
        });
    }
    let all: Vec<&Agent> = servers.iter().flatten().collect();
    agreed_leader(&all, FORM);
    // The restarted server is a voter again, at its new address.
    wait_for("three voters, the restarted one at its new address", FORM, || {
        let config = all[0].get("/v1/operator/raft/configuration").json();
        let listed = config["Servers"].as_array()?.clone();
        let voters = listed.iter().filter(|s| s["Voter"] == true).count();
        let back = listed.iter().any(|s| s["Node"] == leader_name.as_str());
        (voters == 3 && back).then_some(())
    });
}

fn kv_path(key: &str) -> String {
    format!("kv/{key}")
}

/// The counter's value and ModifyIndex as `addr` reads it (default consistency).
fn read_counter(addr: std::net::SocketAddr) -> Option<(u64, u64)> {
    let r = try_http_request(addr, "GET", "/v1/kv/counter", b"", Duration::from_secs(20))?;
    if r.status != 200 {
        return None;
    }
    let entries: Value = serde_json::from_slice(&r.body).ok()?;
    let entry = &entries[0];
    let value = base64_decode(entry["Value"].as_str()?)?;
    Some((std::str::from_utf8(&value).ok()?.parse().ok()?, entry["ModifyIndex"].as_u64()?))
}

fn base64_decode(text: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(text).ok()
}

/// Clients increment one counter with read + compare-and-set through `addrs` (one thread
/// each) for `rounds` rounds, recording every operation for the linearizability check.
fn cas_workload(
    addrs: Vec<std::net::SocketAddr>,
    rounds: usize,
    progress: Arc<std::sync::atomic::AtomicUsize>,
) -> Vec<std::thread::JoinHandle<Vec<linear::Event>>> {
    addrs
        .into_iter()
        .map(|addr| {
            let progress = Arc::clone(&progress);
            std::thread::spawn(move || {
                let mut history = Vec::new();
                for _ in 0..rounds {
                    progress.fetch_add(1, Ordering::Relaxed);
                    let start = Instant::now();
                    let Some((value, index)) = read_counter(addr) else { continue };
                    history.push(linear::Event { op: linear::Op::Read { value }, start, end: Some(Instant::now()) });
                    let next = (value + 1).to_string();
                    let start = Instant::now();
                    let path = format!("/v1/kv/counter?cas={index}");
                    let answer = try_http_request(addr, "PUT", &path, next.as_bytes(), Duration::from_secs(20));
                    let (ok, end) = match answer {
                        Some(r) if r.status == 200 && r.body == b"true" => (Some(true), Some(Instant::now())),
                        Some(r) if r.status == 200 && r.body == b"false" => (Some(false), Some(Instant::now())),
                        // Failed after sending, or no answer: it may or may not have happened.
                        _ => (None, None),
                    };
                    history.push(linear::Event { op: linear::Op::Cas { from: value, to: value + 1, ok }, start, end });
                }
                history
            })
        })
        .collect()
}

fn cairn_cli(agent: &Agent, args: &[&str]) -> (Option<i32>, String, String) {
    let out = std::process::Command::new(support::cairn_bin())
        .args(args)
        .args(["-http-addr", &agent.http.to_string()])
        .output()
        .expect("run cairn");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn voters(agent: &Agent) -> BTreeSet<String> {
    let config = agent.get("/v1/operator/raft/configuration").json();
    config["Servers"]
        .as_array()
        .map(|s| s.iter().filter(|s| s["Voter"] == true).map(|s| s["Node"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// Five servers and a client agent: a CAS history through four agents while the leader is
/// SIGKILLed is linearizable; leadership moves on request; a server that leaves gracefully
/// and one removed by the operator leave the voter set.
#[test]
fn five_servers_and_a_client_stay_linearizable_through_a_leader_kill() {
    let temp = tempfile::tempdir().expect("tempdir");
    let mut servers: Vec<Option<Agent>> = form_cluster(5, temp.path()).into_iter().map(Some).collect();
    let join = servers[0].as_ref().unwrap().gossip.to_string();
    let client_args = agent_args("client", temp.path(), None, Some(&join));
    let client = Agent::spawn_client(client_args, temp.path().join("client"));
    client.wait_log("registered this client in the catalog through a server", FORM);
    let all: Vec<&Agent> = servers.iter().flatten().collect();
    let leader_addr = agreed_leader(&all, FORM);
    let leader = leader_index(&all, &leader_addr);
    assert_eq!(voters(all[0]).len(), 5);

    // Autopilot sees five healthy voters: two may fail.
    wait_for("autopilot health", FORM, || {
        let r = all[0].get("/v1/operator/autopilot/health");
        (r.status == 200 && r.json()["FailureTolerance"] == 2).then_some(())
    });

    // Leadership moves on request, to the server named.
    let target = (leader + 1) % 5;
    let target_name = format!("s{}", target + 1);
    let (code, out, err) = cairn_cli(all[leader], &["operator", "raft", "transfer-leader", "-id", &target_name]);
    assert_eq!(code, Some(0), "{out}{err}");
    let moved = agreed_leader(&all, FORM);
    assert_eq!(leader_index(&all, &moved), target, "leadership went to {target_name}");
    let (code, out, _) = cairn_cli(all[0], &["operator", "raft", "list-peers"]);
    assert_eq!(code, Some(0));
    assert!(out.lines().any(|l| l.starts_with(&target_name) && l.contains("leader")), "{out}");
    let leader = target;

    // A counter, incremented with CAS through three followers and the client while the
    // leader is SIGKILLed.
    assert_eq!(client.put("/v1/kv/counter", "0").text(), "true");
    let followers: Vec<usize> = (0..5).filter(|i| *i != leader).collect();
    let mut addrs: Vec<std::net::SocketAddr> = followers[..3].iter().map(|i| all[*i].http).collect();
    addrs.push(client.http);
    let progress = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers = cas_workload(addrs, 40, Arc::clone(&progress));
    // The kill lands mid-history: a quarter of the rounds before it, the rest after.
    wait_for("a quarter of the CAS rounds", FORM, || (progress.load(Ordering::Relaxed) >= 40).then_some(()));
    servers[leader].as_mut().unwrap().kill();
    let history: Vec<linear::Event> = workers.into_iter().flat_map(|w| w.join().expect("worker")).collect();
    let cas_ok = history.iter().filter(|e| matches!(e.op, linear::Op::Cas { ok: Some(true), .. })).count();
    let unknown = history.iter().filter(|e| e.end.is_none()).count();
    eprintln!("CAS history: {} operations, {cas_ok} successful CAS, {unknown} with unknown outcome", history.len());
    assert!(cas_ok >= 20, "enough CAS operations succeeded to mean something: {cas_ok}");
    assert!(
        linear::linearizable(&history, 0),
        "the CAS history is not linearizable (first stale read, if that is it: {:?}): {history:#?}",
        linear::first_stale_read(&history)
    );

    // A graceful leave takes a server out of the voters; the operator removes the dead one.
    let survivors: Vec<usize> = followers.clone();
    let leaving = survivors[3];
    let r = servers[leaving].as_ref().unwrap().put("/v1/agent/leave", "");
    assert_eq!(r.status, 200);
    servers[leaving].as_mut().unwrap().wait_exit();
    let observer = servers[survivors[0]].as_ref().unwrap();
    let leaving_name = format!("s{}", leaving + 1);
    wait_for("the server that left out of the voters", FORM, || {
        (!voters(observer).contains(&leaving_name)).then_some(())
    });
    let dead_name = format!("s{}", leader + 1);
    let r = observer.request("DELETE", &format!("/v1/operator/raft/peer?id={dead_name}"), b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let expected: BTreeSet<String> = survivors[..3].iter().map(|i| format!("s{}", i + 1)).collect();
    wait_for("three voters left", FORM, || (voters(observer) == expected).then_some(()));
    let r = observer.request("DELETE", "/v1/operator/raft/peer?id=nope", b"");
    assert_eq!(r.status, 400, "{}", r.text());
    // Three voters still take writes, also through the client.
    assert_eq!(client.put("/v1/kv/after", "1").text(), "true");
    assert_eq!(observer.get("/v1/kv/after?raw").text(), "1");
}

/// A follower whose disk is wiped (same node id, empty data dir) catches up by snapshot
/// install once the leader has compacted the log it would need, and holds every key. The
/// snapshot (over 2 MB) travels in several chunks, streamed from file to file.
#[test]
fn a_wiped_follower_catches_up_by_snapshot() {
    let temp = tempfile::tempdir().expect("tempdir");
    let node_id = "3f2a0c1e-5b6d-4e7f-8a9b-0c1d2e3f4a5b";
    // Snapshots every 40 entries, 5 kept behind: a follower away for 90 writes needs one.
    let config = |name: &str, with_id: bool| {
        let path = temp.path().join(format!("{name}.json"));
        let id = if with_id { format!(r#", "node_id": "{node_id}""#) } else { String::new() };
        std::fs::write(&path, format!(r#"{{"raft_snapshot_threshold": 40, "raft_trailing_logs": 5{id}}}"#))
            .expect("config");
        path.display().to_string()
    };
    let with_config = |name: &str, join: Option<&str>, with_id: bool| {
        let mut args = server_args(name, temp.path(), 3, join);
        args.extend(["-config-file".to_string(), config(name, with_id)]);
        Agent::spawn_until(args, temp.path().join(name), &[], "DNS listening")
    };
    let s1 = with_config("s1", None, false);
    let join = s1.gossip.to_string();
    let s2 = with_config("s2", Some(&join), false);
    let mut s3 = with_config("s3", Some(&join), true);
    for s in [&s1, &s2, &s3] {
        s.wait_log("registered this server in the catalog", FORM);
    }
    let trio = [&s1, &s2, &s3];
    // s3 is the one wiped: it must not lead.
    if leader_index(&trio, &agreed_leader(&trio, FORM)) == 2 {
        let (code, out, err) = cairn_cli(&s3, &["operator", "raft", "transfer-leader", "-id", "s1"]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    let writer = if leader_index(&trio, &agreed_leader(&trio, FORM)) == 0 { &s2 } else { &s1 };
    for i in 0..60 {
        assert_eq!(writer.put(&format!("/v1/kv/k/{i:03}"), "v").text(), "true");
    }
    s3.kill();
    std::fs::remove_dir_all(temp.path().join("s3")).expect("wipe s3");
    // More writes while it is gone: the log it would need is compacted away. 40 KiB values
    // make the snapshot span several 1 MiB chunks.
    let big = |i: usize| format!("{i:03}").repeat(40 * 1024 / 3);
    for i in 60..150 {
        assert_eq!(writer.put(&format!("/v1/kv/k/{i:03}"), big(i)).text(), "true");
    }
    let s3 = with_config("s3", Some(&join), true);
    let expected: BTreeSet<String> = (0..150).map(|i| format!("k/{i:03}")).collect();
    wait_for("the wiped follower to hold every key", FORM, || (kv_keys(&s3, true) == expected).then_some(()));
    assert_eq!(s3.get("/v1/kv/k/149?raw&stale").text(), big(149));
    let lmdb = temp.path().join("s3").join("lmdb");
    let current = std::fs::read(lmdb.join("snapshot.json")).expect("caught up by installing a snapshot");
    let current: serde_json::Value = serde_json::from_slice(&current).expect("snapshot.json");
    let data = lmdb.join(current["data"].as_str().expect("its data file"));
    let size = std::fs::metadata(&data).expect("the data file").len();
    // At least the 50 values (2 MB) written before the leader's last snapshot: more than
    // one chunk.
    assert!(size > 1 << 20, "the snapshot is {size} bytes: it fit in one chunk");
    assert!(!lmdb.join("snapshot-receiving.part").exists(), "the received file became the snapshot");
    assert_eq!(voters(&s1).len(), 3);
}

/// With no leader, DNS keeps answering from the replica for `dns_config.max_stale` (then
/// SERVFAIL), and a client agent with no server left answers from its copies of the
/// servers' answers.
#[test]
fn dns_answers_without_a_leader_within_max_stale() {
    use hickory_proto::op::ResponseCode;
    let temp = tempfile::tempdir().expect("tempdir");
    let stale_config = temp.path().join("s1.json");
    std::fs::write(&stale_config, r#"{"dns_config": {"max_stale": "3s"}}"#).expect("config");
    let mut args = server_args("s1", temp.path(), 3, None);
    args.extend(["-config-file".to_string(), stale_config.display().to_string()]);
    let mut s1 = Agent::spawn_until(args, temp.path().join("s1"), &[], "DNS listening");
    let join = s1.gossip.to_string();
    let mut s2 = spawn_server("s2", temp.path(), 3, Some(&join));
    let mut s3 = spawn_server("s3", temp.path(), 3, Some(&join));
    let client_args = agent_args("client", temp.path(), None, Some(&join));
    let client = Agent::spawn_client(client_args, temp.path().join("client"));
    for s in [&s1, &s2, &s3] {
        s.wait_log("registered this server in the catalog", FORM);
    }
    let register = json!({"Node": "ext1", "Address": "10.1.2.3", "Service": {"Service": "web", "Port": 80}});
    assert_eq!(s2.put("/v1/catalog/register", register.to_string()).text(), "true");
    let web = |agent: &Agent| udp(agent.dns, "web.service.consul", RecordType::A, None);
    for agent in [&s1, &client] {
        wait_for("web in DNS", FORM, || (answers(&web(agent)) == ["A 10.1.2.3"]).then_some(()));
    }

    // s1 leads, so that losing the others also tests the leader lease: a leader cut off
    // from its quorum stops acting as one (openraft 0.9 alone would go on calling itself
    // leader).
    let trio = [&s1, &s2, &s3];
    if leader_index(&trio, &agreed_leader(&trio, FORM)) != 0 {
        let (code, out, err) = cairn_cli(&s1, &["operator", "raft", "transfer-leader", "-id", "s1"]);
        assert_eq!(code, Some(0), "{out}{err}");
    }
    assert_eq!(leader_index(&trio, &agreed_leader(&trio, FORM)), 0);

    // Two of three servers gone: s1 has no leader, and still answers from its replica.
    let lost_at = Instant::now();
    s2.kill();
    s3.kill();
    wait_for("s1 without a leader", FORM, || leader_of(&s1).is_none().then_some(()));
    if lost_at.elapsed() < Duration::from_secs(3) {
        assert_eq!(answers(&web(&s1)), ["A 10.1.2.3"], "within max_stale the replica answers");
    }
    let r = s1.get("/v1/catalog/service/web?stale");
    assert_eq!((r.status, r.header("X-Consul-KnownLeader")), (200, Some("false")));
    // Past max_stale: SERVFAIL rather than answers that old.
    wait_for("SERVFAIL past max_stale", FORM, || {
        (web(&s1).metadata.response_code == ResponseCode::ServFail).then_some(())
    });

    // No server at all: the client answers from what a server told it (its max_stale is
    // the default).
    s1.kill();
    let m = web(&client);
    assert_eq!(answers(&m), ["A 10.1.2.3"], "{m:?}");
}

/// A leader whose disk stalls (every fsync hangs, through the store's test failpoint) stops
/// heartbeating while its Raft core waits on the disk, so the others elect a new leader and
/// keep taking writes; when the disk recovers, the old leader follows. Consul keeps such a
/// leader (its issues #3552, #22064).
#[test]
fn a_leader_whose_disk_stalls_is_replaced() {
    let temp = tempfile::tempdir().expect("tempdir");
    let stall = |name: &str| temp.path().join(format!("stall-{name}"));
    let spawn = |name: &str, join: Option<&str>| {
        let env = [("CAIRN_TEST_STALL_SYNC_WHILE", stall(name).display().to_string())];
        Agent::spawn_until(server_args(name, temp.path(), 3, join), temp.path().join(name), &env, "DNS listening")
    };
    let s1 = spawn("s1", None);
    let join = s1.gossip.to_string();
    let servers = [s1, spawn("s2", Some(&join)), spawn("s3", Some(&join))];
    for s in &servers {
        s.wait_log("registered this server in the catalog", FORM);
    }
    let all: Vec<&Agent> = servers.iter().collect();
    let old_leader = agreed_leader(&all, FORM);
    let leader = leader_index(&all, &old_leader);
    let others: Vec<&Agent> = (0..3).filter(|i| *i != leader).map(|i| all[i]).collect();

    // The leader's disk stalls; a write to it starts an append that hangs.
    std::fs::write(stall(&format!("s{}", leader + 1)), "").expect("stall file");
    let stalled_http = all[leader].http;
    let hung =
        std::thread::spawn(move || try_http_request(stalled_http, "PUT", "/v1/kv/hung", b"1", Duration::from_secs(60)));
    let stalled_at = Instant::now();
    let new_leader = wait_for("a new leader while the old one's disk stalls", FORM, || {
        let l = leader_of(others[0])?;
        (l != old_leader && leader_of(others[1]).as_deref() == Some(&l)).then_some(l)
    });
    eprintln!("new leader {new_leader} {:?} after the disk stalled", stalled_at.elapsed());
    let r = others[0].put("/v1/kv/during-stall", "1");
    assert_eq!((r.status, r.text().as_str()), (200, "true"), "writes go on through the new leader");

    // The disk recovers: the old leader follows the new one and catches up.
    std::fs::remove_file(stall(&format!("s{}", leader + 1))).expect("unstall");
    let _ = hung.join();
    assert_eq!(agreed_leader(&all, FORM), new_leader);
    wait_for("the old leader caught up", FORM, || {
        let r =
            try_http_request(all[leader].http, "GET", "/v1/kv/during-stall?stale&raw", b"", Duration::from_secs(5))?;
        (r.status == 200 && r.body == b"1").then_some(())
    });
}

/// A backup taken from one server restores exactly into a fresh cluster of three through a
/// follower: every server holds the archive's KV entries (indexes included) and catalog.
/// The archive (over 3 MiB) is larger than one log entry carries, so it travels in parts.
#[test]
fn a_backup_restores_exactly_into_a_fresh_three_server_cluster() {
    let source = Agent::start(&[]);
    for i in 0..20 {
        assert_eq!(source.put(&format!("/v1/kv/app/k{i:02}?flags={i}"), format!("v{i}")).text(), "true");
    }
    for i in 0..8 {
        let value = format!("{i:04}").repeat(100 * 1024);
        assert_eq!(source.put(&format!("/v1/kv/app/big{i:02}"), value).text(), "true");
    }
    let register =
        json!({"Node": "ext1", "Address": "10.1.2.3", "Service": {"Service": "web", "Port": 80, "Tags": ["a"]}});
    assert_eq!(source.put("/v1/catalog/register", register.to_string()).text(), "true");
    let backup = source.get("/v1/snapshot");
    assert_eq!(backup.status, 200);
    assert!(backup.body.len() > 3 << 20, "the archive is {} bytes: a few parts", backup.body.len());
    let kv_before = source.get("/v1/kv/app/?recurse").json();
    let web_before = source.get("/v1/catalog/service/web").json();
    drop(source);

    let temp = tempfile::tempdir().expect("tempdir");
    let servers = form_cluster(3, temp.path());
    let all: Vec<&Agent> = servers.iter().collect();
    let leader = leader_index(&all, &agreed_leader(&all, FORM));
    let follower = all[(leader + 1) % 3];
    let r = follower.put("/v1/snapshot", &backup.body);
    assert_eq!(r.status, 200, "{}", r.text());
    follower.wait_log("backup archive sent through the Raft log in parts", FORM);
    for server in &all {
        wait_for("the restored KV and catalog on every server", FORM, || {
            let kv = server.get("/v1/kv/app/?recurse&stale");
            let web = server.get("/v1/catalog/service/web?stale");
            (kv.status == 200 && kv.json() == kv_before && web.json() == web_before).then_some(())
        });
    }
    // Not an archive: refused before any part is sent, nothing changed.
    let junk = vec![0u8; (1 << 20) + 1];
    let r = follower.put("/v1/snapshot", &junk);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("Invalid snapshot archive"), "{}", r.text());
    assert_eq!(follower.get("/v1/kv/app/?recurse").json(), kv_before);
}
