//! Several server processes on loopback forming one Raft cluster through gossip and
//! `-bootstrap-expect`: writes through any server, reads and DNS fresh on the server that
//! answered, a SIGKILLed leader replaced while a client keeps writing, and every
//! acknowledged write present on every server afterwards, the restarted one included.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use support::dns::{answers, udp};
use support::{try_http_request, wait_for, Agent};

const FORM: Duration = Duration::from_secs(60);

/// Flags of server `name` on loopback, expecting `expect` servers, joining `join` if given.
fn server_args(name: &str, dir: &std::path::Path, expect: usize, join: Option<&str>) -> Vec<String> {
    let data_dir = dir.join(name).display().to_string();
    let expect = expect.to_string();
    let mut args: Vec<String> = [
        "agent",
        "-server",
        "-bootstrap-expect",
        &expect,
        "-http-port",
        "0",
        "-dns-port",
        "0",
        "-serf-lan-port",
        "0",
        "-server-port",
        "0",
        "-bind",
        "127.0.0.1",
        "-node",
        name,
        "-data-dir",
        &data_dir,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    if let Some(join) = join {
        args.extend(["-retry-join".to_string(), join.to_string()]);
    }
    args
}

/// Starts a server and waits until it listens (not until it has a leader: the first of a
/// cluster has none until the others arrive).
fn spawn_server(name: &str, dir: &std::path::Path, expect: usize, join: Option<&str>) -> Agent {
    Agent::spawn_until(server_args(name, dir, expect, join), dir.join(name), &[], "DNS listening")
}

/// Starts `n` servers expecting `n`, the others joining the first; waits until each has
/// registered itself through the cluster's leader.
fn form_cluster(n: usize, dir: &std::path::Path) -> Vec<Agent> {
    let first = spawn_server("s1", dir, n, None);
    let join = first.gossip.to_string();
    let mut servers = vec![first];
    for i in 2..=n {
        servers.push(spawn_server(&format!("s{i}"), dir, n, Some(&join)));
    }
    for s in &servers {
        s.wait_log("registered this server in the catalog", FORM);
    }
    servers
}

fn leader_of(agent: &Agent) -> Option<String> {
    let r = try_http_request(agent.http, "GET", "/v1/status/leader", b"", Duration::from_secs(5))?;
    let leader: String = serde_json::from_slice(&r.body).ok()?;
    (!leader.is_empty()).then_some(leader)
}

/// The leader address every server in `servers` agrees on.
fn agreed_leader(servers: &[&Agent], timeout: Duration) -> String {
    wait_for("every server to report the same leader", timeout, || {
        let leaders: Vec<Option<String>> = servers.iter().map(|s| leader_of(s)).collect();
        let first = leaders[0].clone()?;
        leaders.iter().all(|l| l.as_deref() == Some(&first)).then_some(first)
    })
}

/// Index in `servers` of the one whose Raft address is `leader`.
fn leader_index(servers: &[&Agent], leader: &str) -> usize {
    servers
        .iter()
        .position(|s| {
            let config = s.get("/v1/operator/raft/configuration").json();
            let me = s.get("/v1/agent/self").json()["Config"]["NodeName"].clone();
            config["Servers"].as_array().unwrap().iter().any(|srv| srv["Node"] == me && srv["Address"] == leader)
        })
        .expect("the leader is one of the servers")
}

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
