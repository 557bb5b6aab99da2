//! Two datacenters on loopback, one server each plus a client agent in dc1, joined through
//! the WAN gossip pool: `?dc=dc2` over HTTP (catalog, KV, blocking queries) and
//! `*.dc2.consul` over DNS answered by dc2's server through dc1's agents, an unknown
//! datacenter refused, and dc2 lost without dc1 losing anything of its own.

mod support;

use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use support::cluster::{agent_args, server_args, FORM};
use support::dns::{answers, tcp, udp};
use support::{wait_for, Agent};

/// WAN timings fast enough for a test: a dead server is noticed within a few seconds.
const FAST_WAN: &str = r#"{"gossip_wan": {"probe_interval": "400ms", "probe_timeout": "200ms", "suspicion_mult": 2}}"#;

/// The gossip key of every agent here: the WAN pool is encrypted with the LAN's key.
const KEY: &str = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=";

/// A one-server datacenter `dc`, joining the WAN pool through `join_wan` if given.
fn server(dc: &str, name: &str, dir: &std::path::Path, join_wan: Option<&str>) -> Agent {
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, FAST_WAN).expect("config");
    let mut args = server_args(name, dir, 1, None);
    args.extend(["-datacenter", dc, "-config-file", &config.display().to_string(), "-encrypt", KEY].map(String::from));
    if let Some(join) = join_wan {
        args.extend(["-join-wan".to_string(), join.to_string()]);
    }
    Agent::spawn(args, dir.join(name))
}

/// The WAN gossip address of a server (its own entry comes first).
fn wan_addr(agent: &Agent) -> String {
    let members = agent.get("/v1/agent/members?wan").json();
    format!("{}:{}", members[0]["Addr"].as_str().expect("Addr"), members[0]["Port"])
}

/// A client agent of dc1, joined through `s1`.
fn spawn_client(s1: &Agent, dir: &std::path::Path) -> Agent {
    let mut args = agent_args("c1", dir, None, Some(&s1.gossip.to_string()));
    args.extend(["-encrypt".to_string(), KEY.to_string()]);
    Agent::spawn_client(args, dir.join("c1"))
}

fn wan_members(agent: &Agent) -> Vec<(String, u64)> {
    let members = agent.get("/v1/agent/members?wan=1").json();
    let mut list: Vec<(String, u64)> = members
        .as_array()
        .expect("members")
        .iter()
        .map(|m| (m["Name"].as_str().unwrap_or_default().to_string(), m["Status"].as_u64().unwrap_or_default()))
        .collect();
    list.sort();
    list
}

#[test]
fn two_datacenters_answer_for_each_other() {
    let temp = tempfile::tempdir().expect("tempdir");
    let s1 = server("dc1", "s1", temp.path(), None);
    let mut s2 = server("dc2", "s2", temp.path(), Some(&wan_addr(&s1)));
    let client = spawn_client(&s1, temp.path());

    // The WAN pool: both servers, named node.dc, on both; the client has none.
    let both = vec![("s1.dc1".to_string(), 1), ("s2.dc2".to_string(), 1)];
    for s in [&s1, &s2] {
        wait_for("both servers in the WAN pool", FORM, || (wan_members(s) == both).then_some(()));
    }
    assert_eq!(client.get("/v1/agent/members?wan").json(), json!([]));
    let cli = std::process::Command::new(support::cairn_bin())
        .args(["members", "-wan", "-http-addr", &s2.http.to_string()])
        .output()
        .expect("run cairn members");
    let out = String::from_utf8_lossy(&cli.stdout);
    assert!(cli.status.success() && out.contains("s1.dc1") && out.contains("s2.dc2"), "{out}");
    // The WAN keyring holds the configured key on both servers (the pool is encrypted).
    let rings = s1.get("/v1/operator/keyring").json();
    let wan_ring = rings.as_array().and_then(|r| r.iter().find(|p| p["WAN"] == true).cloned()).expect("a WAN ring");
    assert_eq!(wan_ring["Keys"], json!({KEY: 2}), "{rings}");
    let r = client.request("PUT", "/v1/agent/join/127.0.0.1:1?wan", b"");
    assert_eq!(r.status, 400, "a client joins no WAN pool: {}", r.text());
    // Every datacenter known, this one first.
    wait_for("dc2 listed", FORM, || (s1.get("/v1/catalog/datacenters").json() == json!(["dc1", "dc2"])).then_some(()));
    assert_eq!(s2.get("/v1/catalog/datacenters").json(), json!(["dc2", "dc1"]));
    wait_for("the client lists dc2", FORM, || {
        (client.get("/v1/catalog/datacenters").json() == json!(["dc1", "dc2"])).then_some(())
    });

    // A service registered in dc2 only.
    let redis = json!({
        "Node": "cache1", "Address": "10.0.2.7",
        "Service": {"Service": "redis", "Port": 6379, "Tags": ["primary"]},
        "Check": {"CheckID": "redis-alive", "Name": "alive", "Status": "passing", "ServiceID": "redis"}
    });
    assert_eq!(s2.put("/v1/catalog/register", redis.to_string()).text(), "true");
    let local = s2.get("/v1/catalog/service/redis");
    for agent in [&s1, &client] {
        let r = agent.get("/v1/catalog/service/redis?dc=dc2");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json(), local.json(), "dc2's answer, unchanged");
        assert_eq!(r.json()[0]["Datacenter"], "dc2");
        assert_eq!(r.header("X-Consul-Index"), local.header("X-Consul-Index"), "dc2's index");
        assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
        let healthy = agent.get("/v1/health/service/redis?dc=dc2&passing").json();
        assert_eq!(healthy.as_array().map(Vec::len), Some(1), "{healthy}");
        // The web UI's summaries follow its datacenter menu the same way.
        let summary = agent.get("/v1/internal/ui/services?dc=dc2").json();
        let redis = summary.as_array().and_then(|s| s.iter().find(|s| s["Name"] == "redis")).cloned();
        let redis = redis.unwrap_or_else(|| panic!("redis in dc2's summary: {summary}"));
        assert_eq!((redis["Datacenter"].as_str(), redis["InstancesPassing"].as_u64()), (Some("dc2"), Some(1)));
    }
    assert_eq!(s1.get("/v1/catalog/service/redis").json(), json!([]), "dc1's catalog is its own");

    // KV: written through dc1's agents into dc2, nothing replicated into dc1.
    assert_eq!(client.put("/v1/kv/app/config?dc=dc2", "v1").text(), "true");
    assert_eq!(s2.get("/v1/kv/app/config?raw").text(), "v1");
    assert_eq!(s1.get("/v1/kv/app/config").status, 404);
    // A blocking query across datacenters wakes on dc2's write.
    let first = client.get("/v1/kv/app/config?dc=dc2");
    let index = first.index();
    let http = client.http;
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let path = format!("/v1/kv/app/config?dc=dc2&index={index}&wait=20s&raw");
        let r = support::http_request(http, "GET", &path, b"");
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(s2.put("/v1/kv/app/config", "v2").text(), "true");
    let (r, took) = waiter.join().expect("waiter");
    assert_eq!((r.status, r.text()), (200, "v2".to_string()));
    assert!(r.index() > index && took < Duration::from_secs(15), "woken by the write after {took:?}");

    // DNS through dc1's server and client: answered by dc2's server.
    for agent in [&s1, &client] {
        wait_for("redis.service.dc2 in DNS", FORM, || {
            (answers(&udp(agent.dns, "redis.service.dc2.consul", RecordType::A, None)) == ["A 10.0.2.7"]).then_some(())
        });
        let srv = tcp(agent.dns, "_redis._primary.service.dc2.consul", RecordType::SRV);
        assert_eq!(answers(&srv), ["SRV 1 1 6379 cache1.node.dc2.consul."], "{srv:?}");
        let node = udp(agent.dns, "Cache1.Node.DC2.consul", RecordType::A, None);
        assert_eq!(answers(&node), ["A 10.0.2.7"]);
        assert_eq!(node.queries[0].name().to_ascii(), "Cache1.Node.DC2.consul.", "the question's case is echoed");
        let unknown = udp(agent.dns, "redis.service.dc3.consul", RecordType::A, None);
        assert_eq!(unknown.metadata.response_code, ResponseCode::NXDomain, "an unknown datacenter");
    }
    assert_eq!(udp(s1.dns, "redis.service.consul", RecordType::A, None).metadata.response_code, ResponseCode::NXDomain);

    // An unknown datacenter over HTTP.
    for agent in [&s1, &client] {
        let r = agent.get("/v1/catalog/services?dc=dc3");
        assert_eq!((r.status, r.text()), (500, "No path to datacenter".to_string()));
    }

    // dc2 lost: dc1 says so within a bounded time, and keeps serving its own.
    s2.kill();
    let lost = Instant::now();
    wait_for("dc2 unreachable from dc1", Duration::from_secs(30), || {
        let r = s1.get("/v1/kv/app/config?dc=dc2");
        (r.status == 500 && r.text() == "No path to datacenter").then_some(())
    });
    let r = client.get("/v1/catalog/service/redis?dc=dc2");
    assert_eq!((r.status, r.text()), (500, "No path to datacenter".to_string()));
    wait_for("dc2 dropped from the datacenters", Duration::from_secs(30), || {
        (s1.get("/v1/catalog/datacenters").json() == json!(["dc1"])).then_some(())
    });
    let dns = udp(s1.dns, "redis.service.dc2.consul", RecordType::A, None);
    assert_eq!(dns.metadata.response_code, ResponseCode::NXDomain, "no server of dc2 known any more");
    println!("dc2 refused {:?} after its server died", lost.elapsed());
    assert_eq!(s1.get("/v1/catalog/services").status, 200);
    let services: Value = client.get("/v1/catalog/services").json();
    assert!(services.get("consul").is_some(), "{services}");
    assert_eq!(answers(&udp(client.dns, "s1.node.consul", RecordType::A, None)), ["A 127.0.0.1"]);
}

fn register(agent: &Agent, node: &str, address: &str, status: &str) {
    let body = json!({
        "Node": node, "Address": address,
        "Service": {"Service": "redis", "Port": 6379},
        "Check": {"CheckID": "redis-alive", "Name": "alive", "Status": status, "ServiceID": "redis"}
    });
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");
}

/// A prepared query answers from dc1 while dc1 has a healthy instance, from dc2 (its
/// failover) when dc1's turn critical, and from dc1 again when they recover — over HTTP and
/// DNS, through the server and a client agent.
#[test]
fn a_prepared_query_fails_over_to_another_datacenter_and_back() {
    let temp = tempfile::tempdir().expect("tempdir");
    let s1 = server("dc1", "s1", temp.path(), None);
    let s2 = server("dc2", "s2", temp.path(), Some(&wan_addr(&s1)));
    let client = spawn_client(&s1, temp.path());
    wait_for("dc2 known", FORM, || (s1.get("/v1/catalog/datacenters").json() == json!(["dc1", "dc2"])).then_some(()));
    register(&s1, "db1", "10.0.1.5", "passing");
    register(&s2, "cache1", "10.0.2.7", "passing");

    // Definitions: checked, stored, listed, read by ID and explained by name.
    let bad = client.request("POST", "/v1/query", json!({"Name": "x", "Service": {}}).to_string().as_bytes());
    assert_eq!((bad.status, bad.text()), (400, "Must provide a Service name to query".to_string()));
    let definition = json!({
        "Name": "redis-q",
        "Service": {"Service": "redis", "OnlyPassing": true, "Tags": ["!canary"], "Failover": {"Datacenters": ["dc2"]}},
        "DNS": {"TTL": "7s"},
        "SomethingNewer": true
    });
    let created = client.request("POST", "/v1/query", definition.to_string().as_bytes());
    assert_eq!(created.status, 200, "{}", created.text());
    let id = created.json()["ID"].as_str().expect("ID").to_string();
    let again = s1.request("POST", "/v1/query", definition.to_string().as_bytes());
    assert_eq!(again.status, 400, "a second query of the same name: {}", again.text());
    let listed = s1.get("/v1/query").json();
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["ID"], id.as_str());
    let read = client.get(&format!("/v1/query/{id}"));
    assert_eq!(read.json()[0]["Service"]["Failover"]["Datacenters"], json!(["dc2"]));
    assert!(read.index() > 0);
    assert_eq!(s1.get("/v1/query/REDIS-Q/explain").json()["Query"]["ID"], id.as_str());
    assert_eq!(s1.get("/v1/query/nope/execute").status, 404);
    assert_eq!(s1.get("/v1/query?dc=dc2").json(), json!([]), "queries stay in their datacenter");

    let execute = |agent: &Agent| {
        let r = agent.get("/v1/query/redis-q/execute");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        (v["Datacenter"].as_str().unwrap_or_default().to_string(), v["Failovers"].as_u64(), v["Nodes"].clone())
    };
    let dns_a = |agent: &Agent| answers(&udp(agent.dns, "redis-q.query.consul", RecordType::A, None));
    for agent in [&s1, &client] {
        let (dc, failovers, nodes) = execute(agent);
        assert_eq!((dc.as_str(), failovers), ("dc1", Some(0)));
        assert_eq!(nodes[0]["Node"]["Address"], "10.0.1.5");
        assert_eq!(dns_a(agent), ["A 10.0.1.5"]);
    }
    let ttl = udp(s1.dns, "redis-q.query.consul", RecordType::A, None).answers[0].ttl;
    assert_eq!(ttl, 7, "the query's DNS TTL");

    // dc1's instance fails: dc2 answers.
    register(&s1, "db1", "10.0.1.5", "critical");
    for agent in [&s1, &client] {
        let (dc, failovers, nodes) = execute(agent);
        assert_eq!((dc.as_str(), failovers), ("dc2", Some(1)));
        assert_eq!(nodes[0]["Node"]["Address"], "10.0.2.7");
        assert_eq!(nodes[0]["Node"]["Datacenter"], "dc2");
        assert_eq!(dns_a(agent), ["A 10.0.2.7"]);
        let srv = tcp(agent.dns, "redis-q.query.consul", RecordType::SRV);
        assert_eq!(answers(&srv), ["SRV 1 1 6379 cache1.node.dc2.consul."]);
    }
    // And back.
    register(&s1, "db1", "10.0.1.5", "passing");
    assert_eq!(execute(&client).0, "dc1");
    assert_eq!(dns_a(&client), ["A 10.0.1.5"]);

    // Updated, then deleted.
    let mut changed = definition.clone();
    changed["Service"]["Tags"] = json!(["primary"]);
    assert_eq!(s1.request("PUT", &format!("/v1/query/{id}"), changed.to_string().as_bytes()).status, 200);
    let (dc, _, nodes) = execute(&s1);
    assert_eq!((dc.as_str(), nodes), ("dc1", json!([])), "no instance has the tag anywhere");
    assert_eq!(udp(s1.dns, "redis-q.query.consul", RecordType::A, None).metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(s1.request("PUT", "/v1/query/no-such-id", changed.to_string().as_bytes()).status, 404);
    assert_eq!(client.delete(&format!("/v1/query/{id}")).status, 200);
    assert_eq!(s1.get(&format!("/v1/query/{id}")).status, 404);
    assert_eq!(client.delete(&format!("/v1/query/{id}")).status, 404);
    drop(s2);
}
