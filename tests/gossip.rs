//! Gossip membership and failure detection with real processes on loopback: one server and
//! four client agents with an encryption key. SIGKILL turns a member failed and its services
//! leave DNS; a short SIGSTOP declares nothing; a graceful leave deregisters; a wrong key is
//! refused; a restarted member is alive again.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use support::dns::{answers, udp};
use support::{wait_for, Agent};

const KEY: &str = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=";
const OTHER_KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";
const NEW_KEY: &str = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=";
const CONVERGE: Duration = Duration::from_secs(30);

/// Flags of a client agent on loopback, joining through `join` with `join_flag`.
fn client_args(name: &str, join_flag: &str, join: &str, key: &str, dir: &std::path::Path) -> Vec<String> {
    let data_dir = dir.join(name).display().to_string();
    let rest = ["-node", name, join_flag, join, "-encrypt", key, "-data-dir", &data_dir];
    ["agent"].iter().chain(support::LOOPBACK_FLAGS.iter()).chain(rest.iter()).map(|s| s.to_string()).collect()
}

fn client(name: &str, join: &str, key: &str, dir: &std::path::Path) -> Agent {
    Agent::spawn_client(client_args(name, "-retry-join", join, key, dir), dir.join(name))
}

/// Member name → status number, as `/v1/agent/members` on `agent` reports.
fn statuses(agent: &Agent) -> BTreeMap<String, u64> {
    let members = agent.get("/v1/agent/members").json();
    members
        .as_array()
        .expect("members array")
        .iter()
        .map(|m| (m["Name"].as_str().unwrap().to_string(), m["Status"].as_u64().unwrap()))
        .collect()
}

fn serf_health(agent: &Agent, node: &str) -> Option<String> {
    let checks = agent.get(&format!("/v1/health/node/{node}")).json();
    checks.as_array()?.iter().find(|c| c["CheckID"] == "serfHealth").map(|c| c["Status"].as_str().unwrap().to_string())
}

fn web_in_dns(server: &Agent) -> bool {
    let m = udp(server.dns, "web.service.consul", RecordType::A, None);
    m.metadata.response_code == ResponseCode::NoError && !answers(&m).is_empty()
}

#[test]
fn members_fail_leave_and_rejoin_through_gossip() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Agent::start(&["-encrypt", KEY]);
    let join = server.gossip.to_string();
    let mut clients: Vec<Agent> = (1..=4).map(|i| client(&format!("c{i}"), &join, KEY, temp.path())).collect();

    // All five alive everywhere, and each client has a catalog node with a passing serfHealth.
    wait_for("5 alive members on the server and on a client", CONVERGE, || {
        let all_alive = |a: &Agent| {
            let s = statuses(a);
            (s.len() == 5 && s.values().all(|v| *v == 1)).then_some(())
        };
        all_alive(&server)?;
        all_alive(&clients[3])
    });
    wait_for("reconciled catalog nodes", CONVERGE, || {
        (1..=4).all(|i| serf_health(&server, &format!("c{i}")).as_deref() == Some("passing")).then_some(())
    });
    let members = server.get("/v1/agent/members").json();
    let c1 = members.as_array().unwrap().iter().find(|m| m["Name"] == "c1").unwrap().clone();
    assert_eq!(c1["Tags"]["role"], "node");
    assert_eq!(c1["Addr"], "127.0.0.1");
    let me = members.as_array().unwrap().iter().find(|m| m["Name"] == "test-node").unwrap().clone();
    assert_eq!(me["Tags"]["role"], "consul");
    assert_eq!(server.get("/v1/agent/self").json()["Member"]["Name"], "test-node");
    // A client holds no catalog and answers through a server: its catalog reads (index
    // headers included), its DNS, and its own services, registered with it, reach the
    // catalog through anti-entropy.
    let r = clients[0].get("/v1/catalog/nodes");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert!(r.index() > 1);
    let body = r.json();
    let nodes: Vec<&str> = body.as_array().unwrap().iter().map(|n| n["Node"].as_str().unwrap()).collect();
    assert!(nodes.contains(&"c1") && nodes.contains(&"test-node"), "{nodes:?}");
    let m = udp(clients[0].dns, "consul.service.consul", RecordType::A, None);
    assert_eq!(answers(&m), vec!["A 127.0.0.1"], "a client's DNS answers as a server's");
    let r = clients[2].put("/v1/agent/service/register", json!({"Name": "api", "Port": 9090}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the client's service in the catalog", CONVERGE, || {
        let on_server = udp(server.dns, "api.service.consul", RecordType::SRV, None);
        let on_client = udp(clients[1].dns, "api.service.consul", RecordType::SRV, None);
        (!answers(&on_server).is_empty() && answers(&on_server) == answers(&on_client)).then_some(())
    });
    let r = clients[1].get("/v1/catalog/service/api");
    assert_eq!(r.json()[0]["Node"], "c3", "{}", r.text());

    // Hostile datagrams (garbage, an unknown version, a huge one, an unencrypted one) are
    // dropped and logged; the pool is unaffected.
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for packet in [vec![0xC1; 40], vec![0x42, 1, 2, 3], vec![0xC1; 60_000], vec![0xC0, 0, 1, 2], vec![]] {
        sock.send_to(&packet, server.gossip).unwrap();
    }
    wait_for("the hostile packets to be logged", CONVERGE, || {
        let log = server.log();
        (log.contains("unknown gossip protocol version") && log.contains("gossip from this peer refused")).then_some(())
    });
    assert!(statuses(&server).values().all(|s| *s == 1));
    let stats = &server.get("/v1/agent/self").json()["Stats"]["serf_lan"];
    assert_eq!((stats["members"].as_str(), stats["encrypted"].as_str()), (Some("5"), Some("true")));
    assert!(stats["packets_refused"].as_str().unwrap().parse::<u64>().unwrap() >= 4, "{stats}");

    // A service registered with c1 (kept in its data dir, synced through a server) is in
    // DNS while c1 lives.
    let body = json!({"ID": "web1", "Name": "web", "Port": 80});
    assert_eq!(clients[0].put("/v1/agent/service/register", body.to_string()).status, 200);
    wait_for("c1's service in DNS", CONVERGE, || web_in_dns(&server).then_some(()));

    // A SIGSTOP shorter than the suspicion timeout declares nothing.
    clients[1].signal(libc::SIGSTOP);
    let paused_at = Instant::now();
    while paused_at.elapsed() < Duration::from_millis(500) {
        std::thread::sleep(Duration::from_millis(50));
    }
    clients[1].signal(libc::SIGCONT);
    let watch_until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < watch_until {
        assert_eq!(statuses(&server).get("c2"), Some(&1), "c2 must not be declared failed by a 500 ms pause");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A session made through c1 belongs to c1's node and hangs on its serfHealth; the lock
    // it takes through c1 is held in the servers' KV.
    let r = clients[0].put("/v1/session/create", json!({"Name": "c1-lock", "LockDelay": "0s"}).to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let session = r.json()["ID"].as_str().expect("ID").to_string();
    assert_eq!(server.get(&format!("/v1/session/info/{session}")).json()[0]["Node"], "c1");
    let r = clients[0].put(&format!("/v1/kv/c1/lock?acquire={session}"), "c1");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));

    // SIGKILL: failed, serfHealth critical, its service out of DNS, its session invalidated
    // and its lock released.
    let killed_at = Instant::now();
    clients[0].kill();
    wait_for("c1 out of DNS", CONVERGE, || (!web_in_dns(&server)).then_some(()));
    wait_for("c1's session invalidated", CONVERGE, || {
        (server.get(&format!("/v1/session/info/{session}")).json() == json!([])).then_some(())
    });
    assert!(server.get("/v1/kv/c1/lock").json()[0].get("Session").is_none(), "the dead node's lock is released");
    let detection = killed_at.elapsed();
    assert_eq!(statuses(&server).get("c1"), Some(&4));
    assert_eq!(serf_health(&server, "c1").as_deref(), Some("critical"));
    eprintln!("SIGKILL to out of DNS: {detection:?}");

    // A graceful leave: left (3) and deregistered.
    let leaving = clients.remove(2);
    assert_eq!(leaving.put("/v1/agent/leave", "").status, 200);
    let mut leaving = leaving;
    assert!(leaving.wait_exit().success());
    wait_for("c3 left and deregistered", CONVERGE, || {
        (statuses(&server).get("c3") == Some(&3) && server.get("/v1/catalog/node/c3").json() == Value::Null)
            .then_some(())
    });

    // The wrong key cannot join, and the server logs the refusal with the peer's address.
    let args = client_args("intruder", "-join", &join, OTHER_KEY, temp.path());
    let out = Agent::run_to_exit(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains("could not join"), "{}", out.stderr);
    assert!(!statuses(&server).contains_key("intruder"));
    assert!(server.log().contains("gossip from this peer refused"), "{}", server.log());

    // c1 restarts on the same data dir: alive again, serfHealth passing, back in DNS.
    let _c1 = client("c1", &join, KEY, temp.path());
    wait_for("c1 alive again and back in DNS", CONVERGE, || {
        (statuses(&server).get("c1") == Some(&1) && web_in_dns(&server)).then_some(())
    });
    assert_eq!(serf_health(&server, "c1").as_deref(), Some("passing"));
    wait_for("every member to see c1 alive again", CONVERGE, || {
        clients[1..].iter().all(|c| statuses(c).get("c1") == Some(&1)).then_some(())
    });

    // Key rotation across the pool: install, use, remove; the pool keeps working throughout.
    let alive = statuses(&server).values().filter(|s| **s == 1).count() as u64;
    let pool = |agent: &Agent, wan: bool| {
        let answer = agent.get("/v1/operator/keyring").json();
        answer.as_array().and_then(|pools| pools.iter().find(|p| p["WAN"] == wan).cloned()).unwrap_or(answer)
    };
    let keyring = |agent: &Agent| pool(agent, false);
    assert_eq!(keyring(&server)["Keys"][KEY], alive);
    // A server also holds the WAN pool's keyring (here: itself alone), rotated with the LAN's.
    assert_eq!(pool(&server, true)["Keys"], json!({KEY: 1}));
    let body = json!({"Key": NEW_KEY}).to_string();
    assert_eq!(server.request("POST", "/v1/operator/keyring", body.as_bytes()).status, 200);
    let seen = keyring(&clients[1]);
    assert_eq!(
        seen["Keys"][NEW_KEY],
        alive,
        "installed on every member: {seen} (server: {}, members {:?})",
        keyring(&server),
        statuses(&clients[1])
    );
    let r = server.request("DELETE", "/v1/operator/keyring", json!({"Key": KEY}).to_string().as_bytes());
    assert_eq!(r.status, 500, "the primary cannot be removed");
    assert!(r.text().contains("primary"), "{}", r.text());
    assert_eq!(server.request("PUT", "/v1/operator/keyring", body.as_bytes()).status, 200);
    let r = server.request("DELETE", "/v1/operator/keyring", json!({"Key": KEY}).to_string().as_bytes());
    assert_eq!(r.status, 200, "{}", r.text());
    let ring = keyring(&clients[2]);
    assert_eq!(pool(&server, true)["Keys"], json!({NEW_KEY: 1}), "the WAN keyring rotated too");
    assert_eq!(ring["Keys"], json!({NEW_KEY: alive}));
    assert_eq!(ring["PrimaryKeys"], json!({NEW_KEY: alive}));
    let watch_until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < watch_until {
        assert_eq!(statuses(&server).values().filter(|s| **s == 1).count() as u64, alive, "nobody dropped out");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The rotated keyring is kept: a restarted member with the old key in its flags still joins.
    let c2 = clients.remove(1);
    drop(c2);
    let _c2 = client("c2", &join, KEY, temp.path());
    wait_for("c2 alive after a restart on the rotated keyring", CONVERGE, || {
        (statuses(&server).get("c2") == Some(&1)).then_some(())
    });
}

#[test]
fn keyring_and_members_commands() {
    let server = Agent::start(&["-encrypt", KEY]);
    let addr = server.http.to_string();
    let cairn = |args: &[&str]| {
        let out = std::process::Command::new(support::cairn_bin())
            .args(args)
            .args(["-http-addr", &addr])
            .output()
            .expect("run cairn");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = cairn(&["keyring", "-list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains(&format!("{KEY}  [1/1]  [primary]")), "{out}");
    assert_eq!(cairn(&["keyring", "-install", NEW_KEY]).0, Some(0));
    assert_eq!(cairn(&["keyring", "-use", NEW_KEY]).0, Some(0));
    let (code, _, err) = cairn(&["keyring", "-remove", NEW_KEY]);
    assert_eq!(code, Some(1));
    assert!(err.contains("removing the primary key is not allowed"), "{err}");
    assert_eq!(cairn(&["keyring", "-remove", KEY]).0, Some(0));
    let (_, out, _) = cairn(&["keyring"]);
    assert!(out.contains(&format!("{NEW_KEY}  [1/1]  [primary]")) && !out.contains(KEY), "{out}");
    let (code, out, _) = cairn(&["members", "-detailed"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("Node") && out.contains("test-node") && out.contains("role=consul"), "{out}");
    let (code, out, _) = cairn(&["members"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("alive") && out.contains("server"), "{out}");
}

#[test]
fn user_events_reach_the_members_they_are_for() {
    let temp = tempfile::tempdir().expect("tempdir");
    let server = Agent::start(&["-encrypt", KEY]);
    let join = server.gossip.to_string();
    let c1 = client("c1", &join, KEY, temp.path());
    let c2 = client("c2", &join, KEY, temp.path());
    wait_for("3 alive members on every agent", CONVERGE, || {
        [&server, &c1, &c2].iter().all(|a| statuses(a).values().filter(|s| **s == 1).count() == 3).then_some(())
    });
    let web = json!({"Name": "web", "Tags": ["blue"], "Port": 80}).to_string();
    assert_eq!(c1.put("/v1/agent/service/register", web).status, 200);
    let names = |agent: &Agent| -> Vec<String> {
        let list = agent.get("/v1/event/list").json();
        list.as_array().unwrap().iter().map(|e| e["Name"].as_str().unwrap().to_string()).collect()
    };

    let out = std::process::Command::new(support::cairn_bin())
        .args(["event", "-name", "deploy", "-http-addr", &server.http.to_string(), "v1.2.3"])
        .output()
        .expect("run cairn event");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.starts_with("Event ID: "), "{stdout}");
    let fired = wait_for("the event on the agent that fired it", CONVERGE, || {
        let list = server.get("/v1/event/list").json();
        list.as_array().unwrap().first().cloned()
    });
    assert_eq!(fired["Name"], "deploy");
    assert_eq!(fired["Payload"], "djEuMi4z", "base64 of the body");
    wait_for("deploy everywhere", CONVERGE, || {
        [&server, &c1, &c2].iter().all(|a| names(a) == ["deploy"]).then_some(())
    });
    assert_eq!(fired["ID"].as_str(), stdout.trim().strip_prefix("Event ID: "));
    let listed = c2.get("/v1/event/list?name=deploy");
    assert_eq!(listed.json()[0]["ID"], fired["ID"]);
    assert!(listed.index() > 1);

    // Filters: a service with a tag reaches c1 only; a node name reaches c2 only. A blocking
    // list on c2 wakes for the event meant for it.
    let index = c2.get("/v1/event/list").index();
    let c2_http = c2.http;
    let waiter = std::thread::spawn(move || {
        support::http_request(c2_http, "GET", &format!("/v1/event/list?index={index}&wait=20s"), b"")
    });
    assert_eq!(server.put("/v1/event/fire/restart?service=^web$&tag=blue", "").status, 200);
    assert_eq!(server.put("/v1/event/fire/drain?node=^c2$", "").status, 200);
    wait_for("the filtered events delivered", CONVERGE, || {
        (names(&c1) == ["deploy", "restart"] && names(&c2) == ["deploy", "drain"]).then_some(())
    });
    let woken = waiter.join().expect("blocking list");
    assert!(woken.index() != index, "the blocking list returned a new index");
    assert_eq!(names(&server), ["deploy"], "the server has no web service and is not c2");

    // Bad requests change nothing.
    let r = server.put("/v1/event/fire/x?tag=blue", "");
    assert_eq!((r.status, r.text().contains("without service filter")), (400, true), "{}", r.text());
    let r = server.put("/v1/event/fire/x?node=(", "");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = server.put("/v1/event/fire/x", vec![b'a'; 600]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(names(&server), ["deploy"]);
}
