//! The HTTP API driven over real sockets against a running agent: the published how-to flow,
//! KV and transactions, blocking queries, and bad input.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::Agent;

const REDIS: &str = r#"{"Datacenter":"dc1","Node":"my-node","Address":"192.168.10.10",
  "Service":{"ID":"redis1","Service":"redis","Tags":["primary","master"],"Address":"127.0.0.1","Port":8000},
  "Check":{"Node":"my-node","CheckID":"service:redis1","Name":"Redis health check","Notes":"Script based health check",
  "Status":"passing","ServiceID":"redis1"}}"#;

#[test]
fn how_to_register_query_and_deregister_with_plain_curl() {
    let agent = Agent::start(&[]);
    let r = agent.put("/v1/catalog/register", REDIS);
    assert_eq!((r.status, r.text().as_str()), (200, "true"));

    let r = agent.get("/v1/health/service/redis?tag=master");
    assert_eq!(r.status, 200);
    assert!(r.index() > 0);
    assert_eq!(r.header("X-Consul-KnownLeader"), Some("true"));
    assert!(r.header("X-Consul-LastContact").is_some());
    let entries = r.json();
    let entry = &entries[0];
    assert_eq!(entries.as_array().map(Vec::len), Some(1));
    assert_eq!(entry["Node"]["Node"], "my-node");
    assert_eq!(entry["Node"]["Address"], "192.168.10.10");
    assert_eq!(entry["Service"]["ID"], "redis1");
    assert_eq!(entry["Service"]["Port"], 8000);
    assert_eq!(entry["Service"]["Tags"], json!(["primary", "master"]));
    assert_eq!(entry["Checks"][0]["CheckID"], "service:redis1");
    assert_eq!(entry["Checks"][0]["Status"], "passing");
    assert_eq!(entry["Checks"][0]["ServiceName"], "redis");

    let catalog = agent.get("/v1/catalog/service/redis").json();
    assert_eq!(catalog[0]["ServiceAddress"], "127.0.0.1");
    assert_eq!(catalog[0]["ServiceTags"], json!(["primary", "master"]));
    assert!(catalog[0].get("ServiceProxy").is_some() && catalog[0].get("ServiceKind").is_some());
    assert_eq!(agent.get("/v1/health/service/redis?tag=nope").json(), json!([]));
    assert_eq!(agent.get("/v1/catalog/services").json()["redis"], json!(["master", "primary"]));

    // A GET from a web page (a browser adds Origin or Sec-Fetch-Site) cannot deregister.
    for header in ["Origin: https://attacker.example", "Sec-Fetch-Site: cross-site"] {
        let mut stream = std::net::TcpStream::connect(agent.http).expect("connect");
        let request =
            format!("GET /v1/catalog/deregister/redis1 HTTP/1.1\r\nHost: x\r\n{header}\r\nConnection: close\r\n\r\n");
        std::io::Write::write_all(&mut stream, request.as_bytes()).expect("send");
        let r = support::read_response(&mut stream);
        assert_eq!(r.status, 403, "{header}: {}", r.text());
        assert!(r.text().contains("use PUT"), "{}", r.text());
    }
    assert_eq!(agent.get("/v1/catalog/service/redis").json()[0]["ServiceID"], "redis1", "still registered");

    // The published how-to deregisters with a plain GET.
    let r = agent.get("/v1/catalog/deregister/redis1");
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(agent.get("/v1/catalog/service/redis").json(), json!([]));
    let r = agent.get("/v1/catalog/deregister/redis1");
    assert_eq!(r.status, 404, "second deregister must say nothing holds it: {}", r.text());
    assert!(r.text().contains("redis1"));
}

#[test]
fn catalog_reads_and_the_servers_own_registration() {
    let agent = Agent::start(&[]);
    assert_eq!(agent.get("/v1/catalog/datacenters").json(), json!(["dc1"]));
    // Network coordinates are not computed yet: Consul's shapes, empty.
    assert_eq!(
        agent.get("/v1/coordinate/datacenters").json(),
        json!([{"Datacenter": "dc1", "AreaID": "WAN", "Coordinates": []}])
    );
    let r = agent.get("/v1/coordinate/nodes");
    assert_eq!((r.status, r.json()), (200, json!([])));
    assert!(r.index() >= 1);
    let r = agent.get("/v1/coordinate/node/test-node");
    assert_eq!(r.status, 404);
    assert!(r.header("X-Consul-Index").is_some());
    // Agent metrics in Consul's JSON shape, with cairn's gauges; Prometheus only when
    // telemetry.prometheus_retention_time is set (see `metrics_in_prometheus_text_format`).
    let metrics = agent.get("/v1/agent/metrics").json();
    assert!(metrics["Timestamp"].as_str().unwrap().ends_with(" +0000 UTC"), "{metrics}");
    let gauge = |name: &str, labels: Value| {
        metrics["Gauges"].as_array().unwrap().iter().find(|g| g["Name"] == name && g["Labels"] == labels).cloned()
    };
    assert!(gauge("cairn.raft.applied_index", json!({})).unwrap()["Value"].as_f64().unwrap() >= 1.0, "{metrics}");
    assert_eq!(gauge("cairn.serf.members", json!({"pool": "lan", "status": "alive"})).unwrap()["Value"], 1.0);
    let r = agent.get("/v1/agent/metrics?format=prometheus");
    assert_eq!(
        (r.status, r.text()),
        (415, "Prometheus is not enabled since its retention time is not positive".to_string())
    );
    assert_eq!(agent.get("/v1/agent/metrics?format=xml").status, 400);
    let consul = agent.get("/v1/catalog/service/consul").json();
    assert_eq!(consul[0]["Node"], "test-node");
    let checks = agent.get("/v1/health/node/test-node").json();
    assert_eq!(checks[0]["CheckID"], "serfHealth");
    assert_eq!(checks[0]["Name"], "Serf Health Status");
    assert_eq!(checks[0]["Status"], "passing");

    // A service registered without checks is passing; a warning check is not.
    let body = json!({"Node": "n2", "Address": "10.0.0.2", "Service": {"Service": "web", "Port": 80}});
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).status, 200);
    assert_eq!(agent.get("/v1/health/service/web?passing").json().as_array().map(Vec::len), Some(1));
    let body = json!({"Node": "n2", "Address": "10.0.0.2", "Check": {"Name": "disk", "Status": "warning"}});
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).status, 200);
    assert_eq!(agent.get("/v1/health/service/web?passing").json(), json!([]));
    assert_eq!(agent.get("/v1/health/state/warning").json()[0]["CheckID"], "disk");

    let node = agent.get("/v1/catalog/node/n2").json();
    assert_eq!(node["Node"]["Address"], "10.0.0.2");
    assert_eq!(node["Services"]["web"]["Port"], 80);
    assert_eq!(agent.get("/v1/catalog/node/nope").text(), "null");
    let nodes = agent.get("/v1/catalog/nodes").json();
    assert_eq!(nodes.as_array().map(Vec::len), Some(2));

    let r = agent.put("/v1/catalog/deregister", r#"{"Node":"n2"}"#);
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    assert_eq!(agent.get("/v1/catalog/service/web").json(), json!([]));
    assert_eq!(agent.get("/v1/status/leader").json(), json!(agent.get("/v1/status/peers").json()[0]));
    let me = agent.get("/v1/agent/self").json();
    assert_eq!(me["Config"]["Datacenter"], "dc1");
    assert_eq!(me["Config"]["NodeName"], "test-node");
    assert_eq!(me["Config"]["Server"], true);
    assert!(me["Config"]["Version"].as_str().is_some_and(|v| v.starts_with("1.")));
}

fn kv(agent: &Agent, key: &str) -> Value {
    let r = agent.get(&format!("/v1/kv/{key}"));
    assert_eq!(r.status, 200, "GET {key}: {}", r.text());
    r.json()[0].clone()
}

#[test]
fn kv_round_trips_cas_recurse_keys_and_raw() {
    let agent = Agent::start(&[]);
    assert_eq!(agent.put("/v1/kv/app/config/db?flags=42", "postgres://x").text(), "true");
    let entry = kv(&agent, "app/config/db");
    assert_eq!(entry["Value"], "cG9zdGdyZXM6Ly94");
    assert_eq!(entry["Flags"], 42);
    let modify = entry["ModifyIndex"].as_u64().expect("ModifyIndex");
    assert_eq!(agent.get("/v1/kv/app/config/db?raw").body, b"postgres://x");

    // CAS: a stale index loses, the current one wins; cas=0 only creates.
    assert_eq!(agent.put(&format!("/v1/kv/app/config/db?cas={}", modify - 1), "lost").text(), "false");
    assert_eq!(agent.put("/v1/kv/app/config/db?cas=0", "lost").text(), "false");
    assert_eq!(agent.put(&format!("/v1/kv/app/config/db?cas={modify}"), "won").text(), "true");
    assert_eq!(agent.get("/v1/kv/app/config/db?raw").body, b"won");
    assert!(kv(&agent, "app/config/db")["ModifyIndex"].as_u64() > Some(modify));

    agent.put("/v1/kv/app/config/cache", "redis");
    agent.put("/v1/kv/app/name", "demo");
    agent.put("/v1/kv/app/empty", "");
    assert_eq!(kv(&agent, "app/empty")["Value"], Value::Null);
    let all = agent.get("/v1/kv/app?recurse").json();
    assert_eq!(all.as_array().map(Vec::len), Some(4));
    assert_eq!(agent.get("/v1/kv/app/?keys&separator=/").json(), json!(["app/config/", "app/empty", "app/name"]));
    assert_eq!(agent.get("/v1/kv/?keys").json().as_array().map(Vec::len), Some(4));

    let missing = agent.get("/v1/kv/app/nope");
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
    assert_eq!(missing.header("Content-Type"), None, "an empty 404 names no content type");
    assert!(missing.index() > 0, "a missing key still carries X-Consul-Index");
    assert_eq!(missing.header("X-Consul-KnownLeader"), Some("true"));
    assert_eq!(agent.get("/v1/kv/nothing/?keys").status, 404);

    let current = kv(&agent, "app/name")["ModifyIndex"].as_u64().expect("index");
    assert_eq!(agent.delete(&format!("/v1/kv/app/name?cas={}", current + 100)).text(), "false");
    assert_eq!(agent.delete(&format!("/v1/kv/app/name?cas={current}")).text(), "true");
    assert_eq!(agent.delete("/v1/kv/app/config?recurse").text(), "true");
    assert_eq!(agent.get("/v1/kv/app?keys").json(), json!(["app/empty"]));
}

#[test]
fn txn_applies_all_or_nothing() {
    let agent = Agent::start(&[]);
    let ok = json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": "MQ=="}},
        {"KV": {"Verb": "set", "Key": "t/b", "Value": "Mg==", "Flags": 3}},
        {"KV": {"Verb": "get", "Key": "t/a"}},
    ]);
    let r = agent.put("/v1/txn", ok.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Errors"], Value::Null);
    assert_eq!(body["Results"].as_array().map(Vec::len), Some(3));
    assert_eq!(body["Results"][2]["KV"]["Value"], "MQ==");
    assert_eq!(body["Results"][0]["KV"]["Value"], Value::Null);

    let index = kv(&agent, "t/a")["ModifyIndex"].as_u64().expect("index");
    let bad = json!([
        {"KV": {"Verb": "set", "Key": "t/c", "Value": "Mw=="}},
        {"KV": {"Verb": "cas", "Key": "t/a", "Value": "eA==", "Index": index + 7}},
        {"KV": {"Verb": "delete", "Key": "t/b"}},
    ]);
    let r = agent.put("/v1/txn", bad.to_string());
    assert_eq!(r.status, 409, "{}", r.text());
    let body = r.json();
    assert_eq!(body["Results"], Value::Null);
    assert_eq!(body["Errors"][0]["OpIndex"], 1);
    assert!(body["Errors"][0]["What"].as_str().is_some_and(|w| w.contains("index is stale")));
    assert_eq!(agent.get("/v1/kv/t/c").status, 404, "rolled-back set was applied");
    assert_eq!(agent.get("/v1/kv/t/b").status, 200, "rolled-back delete was applied");

    let too_many: Vec<Value> = (0..65).map(|i| json!({"KV": {"Verb": "get", "Key": format!("k{i}")}})).collect();
    let r = agent.put("/v1/txn", Value::Array(too_many).to_string());
    assert_eq!(r.status, 413);
    assert_eq!(r.text(), "Transaction contains too many operations (65 > 64)");
    let r = agent.put("/v1/txn", "[{");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Failed to parse body"));
}

#[test]
fn blocking_query_wakes_on_its_key_and_sleeps_through_others() {
    let agent = Agent::start(&[]);
    agent.put("/v1/kv/watched", "1");
    let index = agent.get("/v1/kv/watched").index();

    // A write to another key must not wake it: it returns only when its wait ends.
    let addr = agent.http;
    let started = Instant::now();
    let sleeper = std::thread::spawn(move || {
        support::http_request(addr, "GET", &format!("/v1/kv/watched?index={index}&wait=2s"), b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    agent.put("/v1/kv/unrelated", "x");
    let r = sleeper.join().expect("sleeper");
    assert!(started.elapsed() >= Duration::from_secs(2), "woken by an unrelated write after {:?}", started.elapsed());
    assert_eq!(r.index(), index, "index changed although the key did not");

    // A write to the key wakes it at once.
    let started = Instant::now();
    let waiter = std::thread::spawn(move || {
        support::http_request(addr, "GET", &format!("/v1/kv/watched?index={index}&wait=60s"), b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    agent.put("/v1/kv/watched", "2");
    let r = waiter.join().expect("waiter");
    assert!(started.elapsed() < Duration::from_secs(30), "not woken by the write");
    assert!(r.index() > index);
    assert_eq!(r.json()[0]["Value"], "Mg==");

    // Catalog reads block too: a registration of the service wakes a health watcher.
    let index = agent.get("/v1/health/service/api").index();
    let waiter = std::thread::spawn(move || {
        support::http_request(addr, "GET", &format!("/v1/health/service/api?index={index}&wait=60s"), b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    let body = json!({"Node": "n3", "Address": "10.0.0.3", "Service": {"Service": "api", "Port": 9000}});
    agent.put("/v1/catalog/register", body.to_string());
    let r = waiter.join().expect("waiter");
    assert_eq!(r.json()[0]["Service"]["Service"], "api");
}

/// Watchers of one key woken by one write share an encoded answer: every one still gets the
/// new value, in the shape its own request asked for (JSON or `?raw`).
#[test]
fn watchers_woken_by_one_write_each_get_their_own_shape_of_the_answer() {
    let agent = Agent::start(&[]);
    agent.put("/v1/kv/fan", "a");
    let index = agent.get("/v1/kv/fan").index();
    let addr = agent.http;
    let paths: Vec<String> = (0..6)
        .map(|i| {
            let raw = if i % 2 == 0 { "raw&" } else { "" };
            format!("/v1/kv/fan?{raw}index={index}&wait=60s")
        })
        .collect();
    let watchers: Vec<_> = paths
        .iter()
        .cloned()
        .map(|path| std::thread::spawn(move || support::http_request(addr, "GET", &path, b"")))
        .collect();
    support::wait_for("6 blocking queries", Duration::from_secs(10), || {
        let counted: usize =
            agent.get("/v1/agent/self").json()["Stats"]["cairn"]["blocking_queries"].as_str()?.parse().ok()?;
        (counted >= 6).then_some(())
    });
    agent.put("/v1/kv/fan", "b");
    for (path, watcher) in paths.iter().zip(watchers) {
        let r = watcher.join().expect("watcher");
        assert_eq!(r.status, 200, "{path}");
        assert!(r.index() > index, "{path}: index did not move");
        if path.contains("raw") {
            assert_eq!(r.text(), "b", "{path}");
            assert_eq!(r.header("content-type"), Some("application/octet-stream"), "{path}");
        } else {
            assert_eq!(r.json()[0]["Value"], "Yg==", "{path}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        }
    }
}

#[test]
fn bad_input_gets_a_precise_4xx_and_the_agent_keeps_serving() {
    let agent = Agent::start(&[]);
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        ("PUT", "/v1/catalog/register", "{not json".into(), 400, "Request decode failed"),
        ("PUT", "/v1/catalog/register", "".into(), 400, "Request decode failed"),
        ("PUT", "/v1/catalog/register", r#"{"Address":"10.0.0.1"}"#.into(), 400, "Must provide node"),
        ("PUT", "/v1/catalog/register", r#"{"Node":"n"}"#.into(), 400, "Must provide address"),
        (
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"a","Service":{"Service":"s","Port":"80"}}"#.into(),
            400,
            "invalid type",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"a","Service":{"Service":"s","Port":70000}}"#.into(),
            400,
            "Request decode failed",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"a","Check":{"Name":"c","Status":"bogus"}}"#.into(),
            400,
            "Invalid check status",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"a","Check":{"Name":"c","ServiceID":"ghost"}}"#.into(),
            400,
            "Unknown service ID",
        ),
        (
            "PUT",
            "/v1/catalog/register",
            r#"{"Node":"n","Address":"a","Datacenter":"dc9"}"#.into(),
            500,
            "No path to datacenter",
        ),
        ("PUT", "/v1/kv/big", "x".repeat(524_289), 413, "Request body(524289 bytes) too large, max size: 524288 bytes"),
        ("PUT", "/v1/kv/k?flags=abc", "v".into(), 400, "Invalid flags"),
        ("PUT", "/v1/kv/k?acquire=abc", "v".into(), 400, "invalid session \"abc\""),
        ("GET", "/v1/no/such/endpoint", String::new(), 404, "Invalid URL path"),
        ("POST", "/v1/kv/k", String::new(), 405, "method POST not allowed"),
        ("DELETE", "/v1/catalog/nodes", String::new(), 405, "method DELETE not allowed"),
        ("GET", "/v1/kv/k?index=1&wait=forever", String::new(), 400, "Invalid wait time"),
        ("GET", "/v1/kv/k?index=abc", String::new(), 400, "Invalid index"),
        ("GET", "/v1/kv/k?stale&consistent", String::new(), 400, "Conflicting flags"),
        ("GET", "/v1/kv/k?dc=elsewhere", String::new(), 500, "No path to datacenter"),
        ("GET", "/v1/kv/", String::new(), 400, "Missing key name"),
        ("GET", "/v1/health/state/sideways", String::new(), 400, "Invalid check state"),
    ];
    for (method, path, body, status, text) in cases {
        let r = agent.request(method, path, body.as_bytes());
        assert_eq!(r.status, status, "{method} {path}: {}", r.text());
        assert!(r.text().contains(text), "{method} {path}: {:?} lacks {text:?}", r.text());
        assert!(
            r.header("Content-Type").is_some_and(|c| c.starts_with("text/plain")),
            "{method} {path}: not plain text"
        );
    }
    let r = agent.request("POST", "/v1/kv/k", b"");
    assert!(r.header("Allow").is_some_and(|a| a.contains("PUT")), "405 without Allow header");

    // Fields cairn does not know, and nulls as Go clients send them, are accepted.
    let lenient = json!({"Node": "n4", "Address": "10.0.0.4", "NodeMeta": null, "TaggedAddresses": null, "Namespace": "default",
        "Service": {"Service": "lenient", "Kind": "", "Proxy": {}, "Connect": {}, "Tags": null, "Weights": null, "Port": 1}});
    assert_eq!(agent.put("/v1/catalog/register?token=abc&dc=dc1", lenient.to_string()).status, 200);
    // Still serving.
    assert_eq!(agent.get("/v1/catalog/service/lenient").json()[0]["ServiceName"], "lenient");
}

#[test]
fn consul_leniencies_skip_node_update_and_cas_delete_of_a_missing_key() {
    let agent = Agent::start(&[]);
    // SkipNodeUpdate lets a tool add a service to an existing node without its address.
    assert_eq!(
        agent.put("/v1/catalog/register", r#"{"Node":"n","Address":"10.0.0.1","NodeMeta":{"k":"v"}}"#).status,
        200
    );
    let r =
        agent.put("/v1/catalog/register", r#"{"Node":"n","SkipNodeUpdate":true,"Service":{"Service":"s","Port":1}}"#);
    assert_eq!((r.status, r.text().as_str()), (200, "true"));
    let node = agent.get("/v1/catalog/node/n").json();
    assert_eq!((node["Node"]["Address"].as_str(), node["Node"]["Meta"]["k"].as_str()), (Some("10.0.0.1"), Some("v")));
    assert_eq!(node["Services"]["s"]["Port"], 1);
    // ... but a new node still needs one.
    let r = agent.put("/v1/catalog/register", r#"{"Node":"fresh","SkipNodeUpdate":true}"#);
    assert_eq!(r.status, 400, "{}", r.text());

    // Deleting a missing key with ?cas succeeds, as in Consul, and so does delete-cas in a txn.
    assert_eq!(agent.delete("/v1/kv/never?cas=5").text(), "true");
    let txn = json!([{"KV": {"Verb": "delete-cas", "Key": "never", "Index": 9}}]);
    assert_eq!(agent.put("/v1/txn", txn.to_string()).status, 200);

    // Names longer than anything storable are simply unknown, not a server error.
    let long = "n".repeat(600);
    assert_eq!(agent.get(&format!("/v1/catalog/node/{long}")).text(), "null");
    assert_eq!(agent.get(&format!("/v1/catalog/service/{long}")).json(), json!([]));
    assert_eq!(agent.get(&format!("/v1/health/service/{long}")).json(), json!([]));
}

#[test]
fn a_check_flip_wakes_health_watchers_but_not_catalog_watchers() {
    let agent = Agent::start(&[]);
    let reg = |status: &str| {
        json!({"Node": "n5", "Address": "10.0.0.5", "Service": {"ID": "api1", "Service": "api", "Port": 1},
               "Check": {"CheckID": "c", "Name": "c", "Status": status, "ServiceID": "api1"}})
        .to_string()
    };
    assert_eq!(agent.put("/v1/catalog/register", reg("passing")).status, 200);
    let catalog_index = agent.get("/v1/catalog/service/api").index();
    let health_index = agent.get("/v1/health/service/api").index();
    let addr = agent.http;
    let started = Instant::now();
    let catalog = std::thread::spawn(move || {
        support::http_request(addr, "GET", &format!("/v1/catalog/service/api?index={catalog_index}&wait=2s"), b"")
    });
    let health = std::thread::spawn(move || {
        support::http_request(addr, "GET", &format!("/v1/health/service/api?index={health_index}&wait=60s"), b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(agent.put("/v1/catalog/register", reg("critical")).status, 200);
    let health = health.join().expect("health");
    assert_eq!(health.json()[0]["Checks"][0]["Status"], "critical");
    assert!(health.index() > health_index);
    let catalog = catalog.join().expect("catalog");
    assert!(started.elapsed() >= Duration::from_secs(2), "catalog watcher woken by a check change");
    assert_eq!(catalog.index(), catalog_index, "catalog index moved although its rows did not");
}

#[test]
fn agent_monitor_streams_the_log_at_the_level_asked() {
    use std::io::{Read, Write};
    let agent = Agent::start(&[]);
    assert_eq!(agent.get("/v1/agent/monitor?loglevel=loud").status, 400);
    let mut stream = std::net::TcpStream::connect(agent.http).expect("connect");
    stream.set_read_timeout(Some(std::time::Duration::from_millis(200))).expect("timeout");
    stream.write_all(b"GET /v1/agent/monitor?loglevel=info HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
    // Debug lines are off in the agent's own log (info) and in this monitor; a reload logs at
    // info, and must reach the stream.
    let mut seen = Vec::new();
    let line = support::wait_for("the reload's log line on the monitor", std::time::Duration::from_secs(20), || {
        assert_eq!(agent.put("/v1/agent/reload", "").status, 200);
        let mut buf = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        text.lines().find(|l| l.contains("config reloaded")).map(str::to_string)
    });
    assert!(line.contains("INFO"), "{line}");
    let text = String::from_utf8_lossy(&seen);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains(" DEBUG "), "an info monitor shows no debug lines");
}

/// Percent-encodes a query value (what `curl --data-urlencode` or a client library sends).
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn names(answer: &Value, field: &str) -> Vec<String> {
    let rows: Vec<&Value> = match answer {
        Value::Array(rows) => rows.iter().collect(),
        Value::Object(map) => map.values().collect(),
        _ => panic!("not a list: {answer}"),
    };
    let mut names: Vec<String> =
        rows.iter().map(|r| r.pointer(field).and_then(Value::as_str).unwrap_or("?").to_string()).collect();
    names.sort();
    names
}

/// `?filter=` with Consul's expression language on the catalog, health and agent list
/// endpoints: selectors through nested fields, maps and lists, `and`/`or`/`not`, bad
/// expressions refused with 400.
#[test]
fn filter_expressions_select_like_consuls() {
    let agent = Agent::start(&[]);
    let register = |node: &str, env: &str, id: &str, tags: &[&str], version: &str, status: &str| {
        let body = json!({"Node": node, "Address": format!("10.0.0.{}", node.len()), "NodeMeta": {"env": env},
            "Service": {"ID": id, "Service": "web", "Tags": tags, "Port": 80, "Meta": {"version": version}},
            "Check": {"CheckID": format!("c-{id}"), "Name": "web", "Status": status, "ServiceID": id}});
        assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");
    };
    register("a1", "prod", "web-a", &["primary"], "2", "passing");
    register("bb2", "prod", "web-b", &["secondary"], "1", "critical");
    register("ccc3", "dev", "web-c", &["primary", "canary"], "1", "passing");
    let get = |path: &str, filter: &str| {
        let sep = if path.contains('?') { '&' } else { '?' };
        agent.get(&format!("{path}{sep}filter={}", encode(filter)))
    };

    let r = get("/v1/catalog/nodes", "Meta.env == prod and Node != a1");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.index() > 0);
    assert_eq!(names(&r.json(), "/Node"), ["bb2"]);
    let r = get("/v1/catalog/service/web", r#"ServiceTags contains "primary" and NodeMeta.env != dev"#);
    assert_eq!(names(&r.json(), "/Node"), ["a1"]);
    let r = get("/v1/catalog/service/web", r#"ServiceMeta.version != "2" and Address matches "^10\\.0\\.0\\.[34]$""#);
    assert_eq!(names(&r.json(), "/Node"), ["bb2", "ccc3"]);
    let r = get("/v1/health/service/web", "Service.Tags contains primary and not Checks.Status != passing");
    assert_eq!(names(&r.json(), "/Node/Node"), ["a1", "ccc3"]);
    let r = get("/v1/health/service/web?passing", r#"Node.Meta.env == dev or Service.ID == "web-b""#);
    assert_eq!(names(&r.json(), "/Node/Node"), ["ccc3"], "?passing and the filter both apply");
    let r = get("/v1/health/state/any", "ServiceID is not empty and Status == critical");
    assert_eq!(names(&r.json(), "/Node"), ["bb2"]);
    let r = get("/v1/catalog/services", r#"ServiceMeta.version == "1" and "canary" not in ServiceTags"#);
    assert_eq!(r.json(), json!({"web": ["secondary"]}), "tags of the matching instances only");
    let r = get("/v1/catalog/node/ccc3", "Tags contains canary");
    assert_eq!(names(&r.json()["Services"], "/ID"), ["web-c"]);
    let r = get("/v1/catalog/node/ccc3", r#"Tags contains "nothing-has-this""#);
    assert_eq!((r.json()["Node"]["Node"].clone(), r.json()["Services"].clone()), (json!("ccc3"), json!({})));

    // The agent's own services and checks.
    let svc = json!({"ID": "api1", "Name": "api", "Port": 9000, "Tags": ["v2"]});
    assert_eq!(agent.put("/v1/agent/service/register", svc.to_string()).status, 200);
    let svc = json!({"ID": "db1", "Name": "db", "Port": 5432});
    assert_eq!(agent.put("/v1/agent/service/register", svc.to_string()).status, 200);
    let r = get("/v1/agent/services", "v2 in Tags");
    assert_eq!(r.json().as_object().map(|m| m.keys().cloned().collect::<Vec<_>>()), Some(vec!["api1".to_string()]));
    let r = get("/v1/agent/checks", "ServiceName == db");
    assert_eq!(r.json(), json!({}));

    // Bad expressions: 400 with what is wrong, and nothing else changes.
    let r = get("/v1/catalog/nodes", "Meta.env ==");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Failed to create boolean expression evaluator: at offset"), "{}", r.text());
    let r = get("/v1/health/service/web", "Servce.Tags contains primary");
    assert_eq!(r.status, 400);
    assert!(r.text().contains(r#"Selector "Servce" is not valid"#), "{}", r.text());
    let r = get("/v1/catalog/nodes", "Node matches \"(\"");
    assert_eq!(r.status, 400, "{}", r.text());
    let r = get("/v1/catalog/service/web", "ServicePort == eighty");
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(names(&agent.get("/v1/catalog/service/web").json(), "/Node"), ["a1", "bb2", "ccc3"]);
}

/// A service whose last instance went reports the services list's index (as Consul), which
/// its removal moved: a blocking reader of the name sees the change and never an index going
/// backwards, and the store keeps no per-name row for names that are gone.
#[test]
fn a_gone_service_reports_the_index_of_its_removal() {
    let agent = Agent::start(&[]);
    let body = json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "gone1", "Service": "gone", "Port": 1}});
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");
    let registered = agent.get("/v1/health/service/gone").index();
    let deregister = json!({"Node": "n1", "ServiceID": "gone1"});
    assert_eq!(agent.put("/v1/catalog/deregister", deregister.to_string()).text(), "true");
    let after = agent.get("/v1/health/service/gone");
    assert_eq!(after.json(), json!([]));
    assert!(after.index() > registered, "{} after {registered}", after.index());
    assert_eq!(after.index(), agent.get("/v1/catalog/services").index(), "the services list's index");
    assert_eq!(agent.get("/v1/catalog/service/gone").index(), after.index());
}

/// `/v1/agent/metrics?format=prometheus` with `telemetry.prometheus_retention_time` set: DNS
/// answers by type and rcode with their latency, HTTP requests by route, method and status,
/// Raft, gossip, LMDB and process gauges, each family typed once.
#[test]
fn metrics_in_prometheus_text_format() {
    use hickory_proto::rr::RecordType;
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("telemetry.json");
    std::fs::write(&config, r#"{"telemetry": {"prometheus_retention_time": "60s"}}"#).expect("config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    assert_eq!(agent.put("/v1/kv/metrics-test", "v").status, 200);
    for _ in 0..3 {
        let answer = support::dns::udp(agent.dns, "nothing.service.consul", RecordType::A, None);
        assert_eq!(answer.metadata.response_code, hickory_proto::op::ResponseCode::NXDomain);
    }
    let srv = support::dns::tcp(agent.dns, "consul.service.consul", RecordType::SRV);
    assert_eq!(srv.answers.len(), 1);
    assert_eq!(agent.request("FROB", "/v1/kv/metrics-test", b"").status, 405);
    let check = json!({"Name": "http-port", "TCP": agent.http.to_string(), "Interval": "1s"});
    assert_eq!(agent.put("/v1/agent/check/register", check.to_string()).status, 200);
    // The check's first probe runs within its interval (staggered).
    let r = support::wait_for("a timed TCP probe", Duration::from_secs(10), || {
        let r = agent.get("/v1/agent/metrics?format=prometheus");
        r.text().contains("cairn_check_probe_seconds_count{kind=\"tcp\"} 1").then_some(r)
    });
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = r.text();
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix).and_then(|rest| rest.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
            .parse()
            .expect("a number")
    };
    assert_eq!(value(r#"cairn_dns_queries_total{qtype="A",rcode="NXDOMAIN"}"#), 3.0);
    assert_eq!(value(r#"cairn_dns_queries_total{qtype="SRV",rcode="NOERROR"}"#), 1.0);
    // Every TCP answer is timed; a UDP loop times one query in 16.
    assert!((1.0..=4.0).contains(&value("cairn_dns_answer_seconds_count")));
    assert_eq!(value(r#"cairn_http_requests_total{route="/v1/kv/{*key}",method="PUT",status="200"}"#), 1.0);
    assert_eq!(value(r#"cairn_http_requests_total{route="/v1/kv/{*key}",method="other",status="405"}"#), 1.0);
    assert!(!text.contains("FROB"), "a made-up method is no label");
    assert!(value("cairn_raft_applied_index") >= 1.0);
    assert_eq!(value("cairn_raft_leader"), 1.0);
    assert_eq!(value("cairn_raft_leader_changes_total"), 1.0, "this server became leader once");
    assert!(value("cairn_raft_commit_seconds_count") >= 1.0, "the KV write was committed");
    assert!(value("cairn_fsync_seconds_count") >= 1.0, "and made durable");
    assert_eq!(value(r#"cairn_serf_probes_total{pool="lan"}"#), 0.0, "alone: nobody to probe");
    assert_eq!(value(r#"cairn_serf_suspicions_total{pool="lan"}"#), 0.0);
    assert_eq!(value(r#"cairn_serf_members{pool="lan",status="alive"}"#), 1.0);
    assert_eq!(value(r#"cairn_serf_members{pool="wan",status="alive"}"#), 1.0);
    assert!(value("cairn_lmdb_map_used_bytes") > 0.0);
    assert!(value("cairn_process_resident_memory_bytes") > 1e6);
    assert!(value("cairn_process_open_fds") > 3.0);
    for family in ["cairn_dns_answer_seconds histogram", "cairn_http_request_seconds histogram", "cairn_checks gauge"] {
        assert_eq!(text.matches(&format!("# TYPE {family}")).count(), 1, "{family} in:\n{text}");
    }
}

#[test]
fn internal_ui_summaries_count_instances_by_health_and_block() {
    let agent = Agent::start(&[]);
    for (node, status) in [("web-a", "passing"), ("web-b", "critical")] {
        let body = json!({
            "Node": node, "Address": "10.0.0.1",
            "Service": {"Service": "web", "Tags": ["v1"], "Port": 80},
            "Check": {"CheckID": "http", "Name": "http", "ServiceID": "web", "Status": status}
        });
        assert_eq!(agent.put("/v1/catalog/register", body.to_string()).status, 200);
    }
    let r = agent.get("/v1/internal/ui/services");
    assert_eq!(r.status, 200);
    let services = r.json();
    let web = services.as_array().expect("a list").iter().find(|s| s["Name"] == "web").expect("web listed");
    assert_eq!(web["InstanceCount"], 2);
    assert_eq!(web["Nodes"], json!(["web-a", "web-b"]));
    assert_eq!(web["Tags"], json!(["v1"]));
    assert_eq!((web["InstancesPassing"].clone(), web["InstancesCritical"].clone()), (json!(1), json!(1)));
    assert_eq!((web["ChecksPassing"].clone(), web["ChecksCritical"].clone()), (json!(1), json!(1)));

    // A check flip wakes a blocked summary.
    let index = r.index();
    let waiter = {
        let http = agent.http;
        std::thread::spawn(move || {
            support::http_request(http, "GET", &format!("/v1/internal/ui/services?index={index}&wait=20s"), b"")
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let flip = json!({"Node": "web-b", "Address": "10.0.0.1",
        "Check": {"CheckID": "http", "Name": "http", "ServiceID": "web", "Status": "passing"}});
    assert_eq!(agent.put("/v1/catalog/register", flip.to_string()).status, 200);
    let woken = waiter.join().expect("waiter");
    assert!(woken.index() > index);
    let web = woken.json().as_array().expect("a list").iter().find(|s| s["Name"] == "web").cloned().expect("web");
    assert_eq!(web["InstancesPassing"], 2);

    let nodes = agent.get("/v1/internal/ui/nodes").json();
    let b = nodes.as_array().expect("a list").iter().find(|n| n["Node"] == "web-b").expect("web-b").clone();
    assert_eq!(b["Services"][0]["Service"], "web");
    assert_eq!(b["Checks"][0]["Status"], "passing");
    let one = agent.get("/v1/internal/ui/node/web-b");
    assert_eq!(one.status, 200);
    assert_eq!(one.json()["Node"], "web-b");
    assert_eq!(agent.get("/v1/internal/ui/node/nowhere").status, 404);
}

#[test]
fn the_web_ui_is_served_only_when_on() {
    let off = Agent::start(&[]);
    let r = off.get("/");
    assert_eq!(r.status, 200);
    assert!(r.text().contains("ui_config.enabled"), "{}", r.text());
    assert_eq!(off.get("/ui/").status, 404);
    drop(off);

    let on = Agent::start(&["-ui"]);
    let r = on.get("/");
    assert_eq!((r.status, r.header("location")), (307, Some("/ui/")));
    let r = on.get("/ui/");
    assert_eq!((r.status, r.header("location")), (307, Some("/ui/dc1/services")));
    // Any page of the app is the app's one HTML file; the browser routes from there.
    let page = on.get("/ui/dc1/kv/some/folder/");
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(page.text().contains("/ui/assets/app.js"));
    let csp = page.header("content-security-policy").expect("a CSP").to_string();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let script = on.get("/ui/assets/app.js");
    assert_eq!(script.header("content-type"), Some("text/javascript; charset=utf-8"));
    let etag = script.header("etag").expect("an etag").to_string();
    let again = on.request_with_headers("GET", "/ui/assets/app.js", &[("If-None-Match", &etag)]);
    assert_eq!(again.status, 304);
    assert_eq!(on.get("/ui/assets/nothing.js").status, 404);
}
