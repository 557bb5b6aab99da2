//! Agent services and health checks through the real binary: each check kind flipping
//! against a real HTTP server and TCP listener run by the test, TTL expiry, thresholds,
//! deregister-after, maintenance, anti-entropy repair, persistence across restarts, config
//! reload, the CLI, and DNS plus `/v1/health/service?passing` following every change.
//!
//! Deadlines are generous (check interval + timeout + 2 s, or more): the tight figures belong
//! to `bench/checks`.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::rr::RecordType;
use serde_json::{json, Value};
use support::dns::{answers, udp};
use support::{cairn_bin, wait_for, Agent};

/// Interval 1 s + timeout 1 s + 2 s, and a little for a loaded CI machine's commit.
const FLIP: Duration = Duration::from_secs(6);

/// An HTTP server whose answer the test controls; counts requests; can hang.
struct Target {
    addr: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
    hang: Arc<AtomicBool>,
}

impl Target {
    fn start(status: u16) -> Target {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind target");
        let target = Target {
            addr: listener.local_addr().expect("addr"),
            status: Arc::new(AtomicU16::new(status)),
            hits: Arc::default(),
            hang: Arc::default(),
        };
        let (status, hits, hang) = (Arc::clone(&target.status), Arc::clone(&target.hits), Arc::clone(&target.hang));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let (status, hits, hang) = (Arc::clone(&status), Arc::clone(&hits), Arc::clone(&hang));
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).is_ok_and(|n| n == 1) {
                        head.push(byte[0]);
                    }
                    hits.fetch_add(1, Ordering::SeqCst);
                    if hang.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_secs(30));
                        return;
                    }
                    let code = status.load(Ordering::SeqCst);
                    let reply = format!("HTTP/1.1 {code} Test\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody");
                    let _ = stream.write_all(reply.as_bytes());
                });
            }
        });
        target
    }

    fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    fn set(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }
}

fn put_ok(agent: &Agent, path: &str, body: Value) {
    let r = agent.put(path, body.to_string());
    assert_eq!(r.status, 200, "PUT {path} {body}: {}", r.text());
}

fn dns_addresses(agent: &Agent, name: &str) -> usize {
    answers(&udp(agent.dns, name, RecordType::A, None)).len()
}

fn passing(agent: &Agent, service: &str) -> usize {
    agent.get(&format!("/v1/health/service/{service}?passing")).json().as_array().map_or(0, Vec::len)
}

fn agent_check(agent: &Agent, id: &str) -> Option<Value> {
    agent.get("/v1/agent/checks").json().get(id).cloned()
}

fn check_status(agent: &Agent, id: &str) -> Option<String> {
    agent_check(agent, id).and_then(|c| c["Status"].as_str().map(str::to_string))
}

/// Waits until `service` has `expected` instances in DNS and in `?passing`.
fn wait_visible(agent: &Agent, service: &str, expected: usize, timeout: Duration) {
    let name = format!("{service}.service.consul");
    wait_for(&format!("{service} to have {expected} healthy instance(s)"), timeout, || {
        (dns_addresses(agent, &name) == expected && passing(agent, service) == expected).then_some(())
    });
}

/// An agent started with `config` as a config file (kept with the agent's temp dir).
fn start_with_config(config: Value) -> Agent {
    let temp = tempfile::tempdir().expect("tempdir");
    let path = temp.path().join("c.json");
    std::fs::write(&path, config.to_string()).expect("config");
    let agent = Agent::start(&["-config-file", path.to_str().unwrap()]);
    // The file is read at start and on reload; these tests do not reload.
    drop(temp);
    agent
}

fn applied_index(agent: &Agent) -> u64 {
    let stats = agent.get("/v1/agent/self").json();
    stats["Stats"]["raft"]["applied_index"].as_str().and_then(|s| s.parse().ok()).expect("applied_index")
}

#[test]
fn http_check_moves_the_instance_in_and_out_of_dns() {
    let agent = Agent::start(&[]);
    let target = Target::start(200);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "web", "Port": 80, "Check": {"HTTP": target.url(), "Interval": "1s", "Timeout": "1s"}}),
    );
    // Starts critical (Consul's default) until the first run.
    wait_visible(&agent, "web", 1, FLIP);
    let check = agent_check(&agent, "service:web").expect("check listed");
    assert_eq!(check["Type"], "http");
    assert!(check["Output"].as_str().unwrap().contains(": 200 OK Output: body"), "{check}");

    target.set(500);
    wait_visible(&agent, "web", 0, FLIP);
    assert_eq!(check_status(&agent, "service:web").as_deref(), Some("critical"));
    let output = agent_check(&agent, "service:web").unwrap()["Output"].as_str().unwrap().to_string();
    assert!(output.contains("500"), "{output}");

    // 429 is a warning: still in DNS (only_passing is off), not in ?passing.
    target.set(429);
    wait_for("the instance to warn", FLIP, || {
        let warned = check_status(&agent, "service:web")? == "warning" && passing(&agent, "web") == 0;
        (warned && dns_addresses(&agent, "web.service.consul") == 1).then_some(())
    });

    target.set(200);
    wait_visible(&agent, "web", 1, FLIP);
}

#[test]
fn tcp_check_follows_the_listener() {
    let agent = Agent::start(&[]);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "db", "Port": addr.port(), "Check": {"TCP": addr.to_string(), "Interval": "1s", "Timeout": "1s"}}),
    );
    wait_visible(&agent, "db", 1, FLIP);
    drop(listener);
    wait_visible(&agent, "db", 0, FLIP);
    let _again = TcpListener::bind(addr).expect("rebind the same port");
    wait_visible(&agent, "db", 1, FLIP);
}

#[test]
fn ttl_checks_take_updates_and_expire() {
    let agent = Agent::start(&[]);
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "job", "Check": {"TTL": "2s"}}));
    assert_eq!(check_status(&agent, "service:job").as_deref(), Some("critical"), "TTL checks start critical");
    assert_eq!(agent.put("/v1/agent/check/pass/service:job?note=all%20good", "").status, 200);
    wait_visible(&agent, "job", 1, FLIP);
    assert_eq!(agent_check(&agent, "service:job").unwrap()["Output"], "all good");

    let r = agent.put("/v1/agent/check/update/service:job", r#"{"Status":"warning","Output":"slow"}"#);
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("warning", FLIP, || {
        (check_status(&agent, "service:job")? == "warning" && passing(&agent, "job") == 0).then_some(())
    });

    // Not renewed: expires to critical and leaves DNS.
    wait_visible(&agent, "job", 0, Duration::from_secs(2) + FLIP);
    let output = agent_check(&agent, "service:job").unwrap()["Output"].as_str().unwrap().to_string();
    assert!(output.starts_with("TTL expired"), "{output}");

    let bad = agent.put("/v1/agent/check/update/service:job", r#"{"Status":"fine"}"#);
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("Invalid check status"), "{}", bad.text());
    let unknown = agent.put("/v1/agent/check/pass/nope", "");
    assert_eq!((unknown.status, unknown.text().as_str()), (404, "Unknown check ID \"nope\""));
}

#[test]
fn thresholds_hold_the_status_until_enough_failures() {
    let agent = Agent::start(&[]);
    let target = Target::start(200);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "api", "Check": {"HTTP": target.url(), "Interval": "1s", "Timeout": "1s",
               "FailuresBeforeCritical": 3, "SuccessBeforePassing": 2}}),
    );
    wait_visible(&agent, "api", 1, FLIP);
    let hits_before = target.hits.load(Ordering::SeqCst);
    target.set(503);
    wait_visible(&agent, "api", 0, Duration::from_secs(3) + FLIP);
    let failed_runs = target.hits.load(Ordering::SeqCst) - hits_before;
    assert!(failed_runs >= 3, "critical after {failed_runs} failed runs; FailuresBeforeCritical is 3");
    let hits_before = target.hits.load(Ordering::SeqCst);
    target.set(200);
    wait_visible(&agent, "api", 1, Duration::from_secs(2) + FLIP);
    let good_runs = target.hits.load(Ordering::SeqCst) - hits_before;
    assert!(good_runs >= 2, "passing after {good_runs} good runs; SuccessBeforePassing is 2");
}

#[test]
fn a_service_critical_past_deregister_after_is_removed() {
    let agent = Agent::start(&[]);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "flaky", "Check": {"TTL": "30s", "DeregisterCriticalServiceAfter": "1s"}}),
    );
    let started = Instant::now();
    wait_for("flaky to be deregistered", Duration::from_secs(1) + FLIP, || {
        let local = agent.get("/v1/agent/services").json();
        let catalog = agent.get("/v1/catalog/service/flaky").json();
        (local.get("flaky").is_none() && catalog.as_array().is_some_and(Vec::is_empty)).then_some(())
    });
    assert!(started.elapsed() >= Duration::from_millis(900), "removed before its deadline");
}

#[test]
fn maintenance_hides_the_instance_and_the_node() {
    let agent = Agent::start(&[]);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "cache", "Check": {"TTL": "60s", "Status": "passing"}}),
    );
    wait_visible(&agent, "cache", 1, FLIP);
    assert_eq!(agent.put("/v1/agent/service/maintenance/cache?enable=true&reason=upgrade", "").status, 200);
    wait_visible(&agent, "cache", 0, FLIP);
    let check = agent_check(&agent, "_service_maintenance:cache").expect("maintenance check");
    assert_eq!((check["Status"].as_str(), check["Notes"].as_str()), (Some("critical"), Some("upgrade")));
    assert_eq!(agent.put("/v1/agent/service/maintenance/cache?enable=false", "").status, 200);
    wait_visible(&agent, "cache", 1, FLIP);

    assert_eq!(agent.put("/v1/agent/maintenance?enable=true", "").status, 200);
    wait_visible(&agent, "cache", 0, FLIP);
    assert_eq!(agent.put("/v1/agent/maintenance?enable=false", "").status, 200);
    wait_visible(&agent, "cache", 1, FLIP);

    for (path, status, text) in [
        ("/v1/agent/maintenance", 400, "Missing value for enable"),
        ("/v1/agent/maintenance?enable=maybe", 400, "Invalid value for enable"),
        ("/v1/agent/service/maintenance/ghost?enable=true", 404, "Unknown service ID \"ghost\""),
    ] {
        let r = agent.put(path, "");
        assert_eq!(r.status, status, "{path}: {}", r.text());
        assert!(r.text().contains(text), "{path}: {}", r.text());
    }
}

#[test]
fn invalid_definitions_get_400_naming_the_field() {
    let agent = Agent::start(&[]);
    let cases = [
        ("/v1/agent/service/register", json!({"Port": 80}), "field Name: missing service name"),
        ("/v1/agent/service/register", json!({"Name": "w", "Port": "80"}), "field Port: must be an integer"),
        (
            "/v1/agent/service/register",
            json!({"Name": "w", "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 70000}}}),
            "field TaggedAddresses.lan.Port: must be 0..65535, got 70000",
        ),
        ("/v1/agent/service/register", json!({"Name": "w", "Check": {"HTTP": "http://x/"}}), "field Check.Interval"),
        (
            "/v1/agent/service/register",
            json!({"Name": "w", "Check": {"TTL": "soon"}}),
            "field Check.TTL: invalid duration",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "w", "Checks": [{"TTL": "1s"}, {"Interval": "1s"}]}),
            "field Checks[1]: one of TTL, HTTP, TCP or Args",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "w", "Check": {"Args": ["/bin/true"], "Interval": "1s"}}),
            "script checks are disabled",
        ),
        (
            "/v1/agent/service/register",
            json!({"Name": "w", "Check": {"GRPC": "x:1", "Interval": "1s"}}),
            "GRPC checks are not supported",
        ),
        ("/v1/agent/check/register", json!({"TTL": "1s"}), "field Name: missing check name"),
    ];
    for (path, body, expected) in cases {
        let r = agent.put(path, body.to_string());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(expected), "{body}: {:?} should contain {expected:?}", r.text());
    }
    let r = agent.put("/v1/agent/service/register", "{not json");
    assert_eq!(r.status, 400);
    assert!(r.text().starts_with("Request decode failed"), "{}", r.text());
    // Unknown fields are ignored, as Consul does; nothing was registered by the failures.
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "ok", "Kind": "", "Proxy": null, "Whatever": 1}));
    let services = agent.get("/v1/agent/services").json();
    assert_eq!(services.as_object().unwrap().keys().collect::<Vec<_>>(), ["ok"]);
    assert_eq!(agent.put("/v1/agent/service/deregister/ghost", "").status, 404);
    // A check for a service this agent does not have: 404 with Consul's text.
    let r = agent.put("/v1/agent/check/register", json!({"Name": "c", "TTL": "1s", "ServiceID": "ghost"}).to_string());
    assert_eq!((r.status, r.text()), (404, "ServiceID \"ghost\" does not exist".to_string()));
    assert_eq!(agent.get("/v1/agent/checks").json(), json!({}), "nothing registered");
}

#[test]
fn a_hanging_target_does_not_delay_other_checks() {
    let agent = Agent::start(&[]);
    let stuck = Target::start(200);
    stuck.hang.store(true, Ordering::SeqCst);
    let fast = Target::start(200);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "stuck", "Check": {"HTTP": stuck.url(), "Interval": "1s", "Timeout": "20s"}}),
    );
    wait_for("the stuck target to be hit", FLIP, || (stuck.hits.load(Ordering::SeqCst) > 0).then_some(()));
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "fast", "Check": {"HTTP": fast.url(), "Interval": "1s"}}),
    );
    wait_visible(&agent, "fast", 1, FLIP);
    let before = fast.hits.load(Ordering::SeqCst);
    wait_for("the fast check to keep its 1 s rhythm", Duration::from_secs(6), || {
        (fast.hits.load(Ordering::SeqCst) >= before + 3).then_some(())
    });
    assert_eq!(check_status(&agent, "service:stuck").as_deref(), Some("critical"), "never answered");
}

#[test]
fn steady_checks_make_no_raft_writes_and_agent_reads_block_on_hash() {
    let agent = Agent::start(&[]);
    let target = Target::start(200);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "web", "Check": {"HTTP": target.url(), "Interval": "1s"}}),
    );
    wait_visible(&agent, "web", 1, FLIP);
    let index = applied_index(&agent);
    let hits = target.hits.load(Ordering::SeqCst);
    wait_for("three more check runs", Duration::from_secs(8), || {
        (target.hits.load(Ordering::SeqCst) >= hits + 3).then_some(())
    });
    assert_eq!(applied_index(&agent), index, "passing checks with unchanged output must not write");

    let first = agent.get("/v1/agent/services");
    let hash = first.header("X-Consul-ContentHash").expect("content hash").to_string();
    let addr = agent.http;
    let path = format!("/v1/agent/services?hash={hash}&wait=20s");
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        (support::http_request(addr, "GET", &path, b""), started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(300));
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "other"}));
    let (r, waited) = waiter.join().expect("waiter");
    assert!(waited < Duration::from_secs(10), "woke on the change, after {waited:?}");
    assert_ne!(r.header("X-Consul-ContentHash"), Some(hash.as_str()));
    assert!(r.json().get("other").is_some());
}

#[test]
fn anti_entropy_repairs_the_catalog_both_ways() {
    let agent = start_with_config(json!({"anti_entropy_interval": "1s"}));
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "web", "Check": {"TTL": "60s", "Status": "passing"}}));
    wait_visible(&agent, "web", 1, FLIP);

    // Deleted behind the agent's back: comes back.
    put_ok(&agent, "/v1/catalog/deregister", json!({"Node": "test-node", "ServiceID": "web"}));
    wait_visible(&agent, "web", 1, FLIP);
    // Registered on this node behind its back: goes away. The server's own entries stay.
    put_ok(
        &agent,
        "/v1/catalog/register",
        json!({"Node": "test-node", "Address": "127.0.0.1", "SkipNodeUpdate": true, "Service": {"Service": "stray"}}),
    );
    wait_for("the stray service to be removed", FLIP, || {
        agent.get("/v1/catalog/service/stray").json().as_array().is_some_and(Vec::is_empty).then_some(())
    });
    let node = agent.get("/v1/health/node/test-node").json();
    assert!(node.as_array().unwrap().iter().any(|c| c["CheckID"] == "serfHealth"), "{node}");
    assert_eq!(agent.get("/v1/catalog/service/consul").json().as_array().map(Vec::len), Some(1));
}

fn cairn(args: &[&str]) -> std::process::Output {
    std::process::Command::new(cairn_bin()).args(args).output().expect("run cairn")
}

fn write_service(dir: &Path, file: &str, body: Value) {
    std::fs::write(dir.join(file), body.to_string()).expect("write config");
}

#[test]
fn config_and_api_services_survive_restart_and_follow_reload() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config_dir = temp.path().join("conf");
    std::fs::create_dir(&config_dir).expect("config dir");
    write_service(
        &config_dir,
        "web.json",
        json!({"service": {"name": "web", "port": 80, "check": {"ttl": "60s", "status": "passing"}}}),
    );
    let data_dir = temp.path().join("data");
    let config_arg = ["-config-dir", config_dir.to_str().unwrap()];
    let mut agent = Agent::start_in(&data_dir, &config_arg);
    wait_visible(&agent, "web", 1, FLIP);
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "api", "Check": {"TTL": "60s", "Status": "passing"}}));
    wait_visible(&agent, "api", 1, FLIP);

    agent.kill();
    let agent = Agent::start_in(&data_dir, &config_arg);
    let services = agent.get("/v1/agent/services").json();
    assert!(services.get("web").is_some() && services.get("api").is_some(), "after SIGKILL: {services}");
    // Statuses survive too: no flap out of DNS after a restart.
    assert_eq!(check_status(&agent, "service:api").as_deref(), Some("passing"));
    wait_visible(&agent, "api", 1, FLIP);

    // Reload: web goes, db comes; the API-registered service is untouched.
    std::fs::remove_file(config_dir.join("web.json")).expect("remove");
    write_service(
        &config_dir,
        "db.json",
        json!({"services": [{"name": "db", "check": {"ttl": "60s", "status": "passing"}}]}),
    );
    let http = agent.http.to_string();
    let out = cairn(&["reload", "-http-addr", &http]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Configuration reload triggered");
    let services = agent.get("/v1/agent/services").json();
    let ids: Vec<&String> = services.as_object().unwrap().keys().collect();
    assert_eq!(ids, ["api", "db"]);
    wait_visible(&agent, "db", 1, FLIP);
    wait_visible(&agent, "web", 0, FLIP);

    // A broken file: the reload fails naming file and field, and nothing changes.
    write_service(&config_dir, "bad.json", json!({"service": {"name": "x", "check": {"http": "http://x/"}}}));
    let out = cairn(&["reload", "-http-addr", &http]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.json") && stderr.contains("field check.Interval: must be set"), "{stderr}");
    let after = agent.get("/v1/agent/services").json();
    assert_eq!(after.as_object().unwrap().keys().collect::<Vec<_>>(), ["api", "db"]);

    // SIGHUP reloads too.
    std::fs::remove_file(config_dir.join("bad.json")).expect("remove");
    write_service(
        &config_dir,
        "web.json",
        json!({"service": {"name": "web", "check": {"ttl": "60s", "status": "passing"}}}),
    );
    agent.signal(libc::SIGHUP);
    wait_for("SIGHUP to load web again", FLIP, || agent.get("/v1/agent/services").json().get("web").map(|_| ()));
}

#[test]
fn services_cli_registers_and_deregisters_and_names_an_unreachable_agent() {
    let agent = Agent::start(&[]);
    let temp = tempfile::tempdir().expect("tempdir");
    let file = temp.path().join("svc.json");
    std::fs::write(&file, json!({"service": {"name": "cli-web", "id": "cli1", "port": 81}}).to_string()).expect("file");
    let http = agent.http.to_string();
    let out = cairn(&["services", "register", "-http-addr", &http, file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Registered service: cli-web");
    wait_visible(&agent, "cli-web", 1, FLIP);

    let out = std::process::Command::new(cairn_bin())
        .args(["services", "deregister", "-id", "cli1"])
        .env("CONSUL_HTTP_ADDR", format!("http://{http}"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "Deregistered service: cli1");
    wait_visible(&agent, "cli-web", 0, FLIP);

    std::fs::write(&file, r#"{"service": {"name": "x", "prot": 1}}"#).expect("file");
    let out = cairn(&["services", "register", "-http-addr", &http, file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("svc.json") && stderr.contains("field prot: unknown field"),
        "{stderr}"
    );

    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = cairn(&["reload", "-http-addr", &closed.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.starts_with(&format!("cairn: cannot reach the cairn agent at http://{closed}")), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let _ = TcpStream::connect(agent.http);
}

#[test]
fn script_checks_from_config_and_a_reloaded_dns_config() {
    let temp = tempfile::tempdir().expect("tempdir");
    let code = temp.path().join("code");
    std::fs::write(&code, "0").expect("code");
    let config = temp.path().join("c.json");
    let write_config = |only_passing: bool| {
        let body = json!({
            "enable_local_script_checks": true,
            "dns_config": {"only_passing": only_passing},
            "log_level": if only_passing { "debug" } else { "info" },
            "service": {"name": "job", "check": {
                "args": ["/bin/sh", "-c", format!("echo out; exit $(cat {})", code.display())], "interval": "1s"}}
        });
        std::fs::write(&config, body.to_string()).expect("config");
    };
    write_config(false);
    let agent = Agent::start(&["-config-file", config.to_str().unwrap()]);
    wait_visible(&agent, "job", 1, FLIP);
    assert_eq!(agent_check(&agent, "service:job").unwrap()["Output"], "out\n");

    std::fs::write(&code, "1").expect("code");
    wait_for("exit 1 to warn", FLIP, || {
        (check_status(&agent, "service:job")? == "warning" && passing(&agent, "job") == 0).then_some(())
    });
    assert_eq!(dns_addresses(&agent, "job.service.consul"), 1, "warning instances stay in DNS by default");
    // only_passing is reloadable: the warning instance leaves DNS without a restart.
    write_config(true);
    assert_eq!(agent.put("/v1/agent/reload", "").status, 200);
    assert_eq!(dns_addresses(&agent, "job.service.consul"), 0);
    // log_level is reloadable too.
    assert!(agent.log().contains("log level changed"), "{}", agent.log());

    std::fs::write(&code, "2").expect("code");
    wait_for("exit 2 to be critical", FLIP, || (check_status(&agent, "service:job")? == "critical").then_some(()));
    std::fs::write(&code, "0").expect("code");
    wait_visible(&agent, "job", 1, FLIP);
}

/// An HTTPS server (Python's, with a self-signed certificate from `openssl`) answering 200.
struct HttpsTarget {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl HttpsTarget {
    fn start() -> HttpsTarget {
        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl (tests/setup.sh installs it)");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
        let script = r#"
import http.server, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&cert)
            .arg(&key)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut line)
            .expect("port line");
        let port = line.trim().parse().unwrap_or_else(|_| panic!("no port from the HTTPS target: {line:?}"));
        HttpsTarget { child, port, _dir: dir }
    }
}

impl Drop for HttpsTarget {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn https_checks_verify_certificates_unless_told_to_skip() {
    let agent = Agent::start(&[]);
    let target = HttpsTarget::start();
    let url = format!("https://127.0.0.1:{}/health", target.port);
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "tls-skip", "Check": {"HTTP": url, "Interval": "1s", "TLSSkipVerify": true}}),
    );
    put_ok(
        &agent,
        "/v1/agent/service/register",
        json!({"Name": "tls-verify", "Check": {"HTTP": url, "Interval": "1s"}}),
    );
    wait_visible(&agent, "tls-skip", 1, FLIP);
    let verified = wait_for("the verifying check to run", FLIP, || {
        let check = agent_check(&agent, "service:tls-verify")?;
        (!check["Output"].as_str()?.is_empty()).then_some(check)
    });
    assert_eq!(verified["Status"], "critical", "a self-signed certificate must fail verification: {verified}");
    let output = verified["Output"].as_str().unwrap().to_ascii_lowercase();
    assert!(output.contains("certificate"), "{output}");
}

#[test]
fn output_only_changes_reach_the_catalog_after_check_update_interval() {
    let agent = start_with_config(json!({"check_update_interval": "3s"}));
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "job", "Check": {"TTL": "60s", "Status": "passing"}}));
    wait_visible(&agent, "job", 1, FLIP);
    let catalog_output = || agent.get("/v1/health/checks/job").json()[0]["Output"].as_str().map(str::to_string);

    let changed = Instant::now();
    assert_eq!(agent.put("/v1/agent/check/pass/service:job?note=new%20output", "").status, 200);
    // The agent shows it at once; the catalog gets an output-only change only after the interval.
    assert_eq!(agent_check(&agent, "service:job").unwrap()["Output"], "new output");
    assert_eq!(catalog_output().as_deref(), Some(""), "written before check_update_interval");
    wait_for("the output to reach the catalog", Duration::from_secs(3) + FLIP, || {
        (catalog_output()? == "new output").then_some(())
    });
    assert!(changed.elapsed() >= Duration::from_millis(2500), "after {:?}", changed.elapsed());
}

#[test]
fn enable_script_checks_allows_script_checks_through_the_api() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("c.json");
    std::fs::write(&config, json!({"enable_script_checks": true}).to_string()).expect("config");
    let agent = Agent::start(&["-config-file", config.to_str().unwrap()]);
    assert!(agent.log().contains("enable_script_checks is on"), "the risk is logged: {}", agent.log());
    let body = json!({"Name": "api-job", "Check": {"Args": ["/bin/sh", "-c", "echo ran"], "Interval": "1s"}});
    let r = agent.put("/v1/agent/service/register", body.to_string());
    assert_eq!(r.status, 200, "{}", r.text());
    wait_for("the API-registered script check to pass", FLIP, || {
        (check_status(&agent, "service:api-job")? == "passing").then_some(())
    });
    assert_eq!(agent_check(&agent, "service:api-job").unwrap()["Output"], "ran\n");
}

#[test]
fn agent_service_answers_carry_consuls_fields_and_keep_tagged_addresses() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let mut agent = Agent::start_in(&data, &[]);
    let registration = json!({
        "Name": "web", "Address": "192.168.1.5", "Port": 8080,
        "TaggedAddresses": {"lan": {"Address": "10.0.0.1", "Port": 80}, "wan_ipv4": {"Address": "203.0.113.9", "Port": 443}},
        "Weights": {"Passing": 3, "Warning": 2}
    });
    put_ok(&agent, "/v1/agent/service/register", registration);
    let expected_tagged = json!({
        "lan": {"Address": "10.0.0.1", "Port": 80},
        "lan_ipv4": {"Address": "192.168.1.5", "Port": 8080},
        "wan_ipv4": {"Address": "203.0.113.9", "Port": 443},
    });
    let check = |agent: &Agent| {
        let one = agent.get("/v1/agent/service/web");
        assert_eq!(one.status, 200, "{}", one.text());
        let body = one.json();
        for field in ["Kind", "ID", "Service", "Tags", "Meta", "Port", "Address", "TaggedAddresses", "Weights"] {
            assert!(body.get(field).is_some(), "{field} missing from {body}");
        }
        assert!(body.get("EnableTagOverride").is_some() && body.get("Datacenter").is_some(), "{body}");
        assert_eq!(body["Kind"], "");
        assert_eq!(body["TaggedAddresses"], expected_tagged);
        assert_eq!(body["Weights"], json!({"Passing": 3, "Warning": 2}));
        assert_eq!(body["ContentHash"].as_str(), one.header("X-Consul-ContentHash"), "{body}");
        let all = agent.get("/v1/agent/services").json();
        assert_eq!(all["web"]["Kind"], "");
        assert_eq!(all["web"]["TaggedAddresses"], expected_tagged);
        assert!(all["web"].get("ContentHash").is_none(), "the list carries the hash in its header only");
    };
    check(&agent);
    // Anti-entropy gives the catalog the same tagged addresses, defaults included (as Consul's
    // agent): catalog rows as ServiceTaggedAddresses, health entries as Service.TaggedAddresses.
    support::wait_for("anti-entropy to write web's tagged addresses", Duration::from_secs(10), || {
        (agent.get("/v1/catalog/service/web").json()[0]["ServiceTaggedAddresses"] == expected_tagged).then_some(())
    });
    assert_eq!(agent.get("/v1/health/service/web").json()[0]["Service"]["TaggedAddresses"], expected_tagged);
    // Kept across a restart (agent-local.json).
    assert!(agent.terminate().success());
    let agent = Agent::start_in(&data, &[]);
    check(&agent);
    // A service without an IP address gets no default tagged addresses.
    put_ok(&agent, "/v1/agent/service/register", json!({"Name": "db", "Address": "db.internal", "Port": 5432}));
    assert_eq!(agent.get("/v1/agent/service/db").json()["TaggedAddresses"], json!({}));
    let catalog = support::wait_for("anti-entropy to register db", Duration::from_secs(10), || {
        Some(agent.get("/v1/catalog/service/db").json()).filter(|c| c[0].is_object())
    });
    assert_eq!(catalog[0]["ServiceTaggedAddresses"], json!({}), "{catalog}");
    assert!(agent.get("/v1/health/service/db").json()[0]["Service"].get("TaggedAddresses").is_none(), "omitempty");
    // Registered straight into the catalog, with Consul's shape.
    let direct = json!({"Node": "ext", "Address": "10.9.9.9",
        "Service": {"Service": "ext-svc", "Port": 1, "TaggedAddresses": {"wan": {"Address": "198.51.100.1", "Port": 2}}}});
    put_ok(&agent, "/v1/catalog/register", direct);
    let catalog = agent.get("/v1/catalog/service/ext-svc").json();
    assert_eq!(catalog[0]["ServiceTaggedAddresses"], json!({"wan": {"Address": "198.51.100.1", "Port": 2}}));
}
