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

/// A one-server datacenter `dc`, joining the WAN pool through `join_wan` if given.
fn server(dc: &str, name: &str, dir: &std::path::Path, join_wan: Option<&str>) -> Agent {
    let config = dir.join(format!("{name}.json"));
    std::fs::write(&config, FAST_WAN).expect("config");
    let mut args = server_args(name, dir, 1, None);
    args.extend(["-datacenter", dc, "-config-file", &config.display().to_string()].map(String::from));
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
    let client =
        Agent::spawn_client(agent_args("c1", temp.path(), None, Some(&s1.gossip.to_string())), temp.path().join("c1"));

    // The WAN pool: both servers, named node.dc, on both; the client has none.
    let both = vec![("s1.dc1".to_string(), 1), ("s2.dc2".to_string(), 1)];
    for s in [&s1, &s2] {
        wait_for("both servers in the WAN pool", FORM, || (wan_members(s) == both).then_some(()));
    }
    assert_eq!(client.get("/v1/agent/members?wan").json(), json!([]));
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
