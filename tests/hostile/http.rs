//! HTTP request bodies for the endpoints that change state, sent to a whole agent running
//! in this process (`-dev`, its HTTP API's router called directly): `PUT /v1/catalog/register`,
//! `/v1/agent/service/register`, `/v1/agent/check/register` and `/v1/txn`.
//!
//! Invariants: every answer has a status below 500 (a body is the client's fault or fine,
//! never the server's) — except Consul's 500 "No path to datacenter" for a `Datacenter` no
//! server knows; a refused body changed nothing (no index of the store moved, or the agent's
//! own list is as it was). What a body did register is
//! removed again, so the state stays small whatever the number of inputs.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use tower::ServiceExt;

/// The agent's HTTP API, called in process: the router the agent serves on its socket, run
/// on the agent's runtime from the fuzzing thread. No TCP or HTTP parsing per input (hyper's
/// parser is not what these targets fuzz), and the store's indexes are read directly.
struct Agent {
    ctx: std::sync::Arc<cairn::http::HttpContext>,
    router: axum::Router,
    runtime: tokio::runtime::Handle,
}

struct Answer {
    status: u16,
    body: Vec<u8>,
}

fn agent() -> &'static Mutex<Agent> {
    static AGENT: OnceLock<Mutex<Agent>> = OnceLock::new();
    AGENT.get_or_init(|| {
        let free = |what| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect(what).port();
        let json = serde_json::json!({
            "node_name": "fuzz",
            "ports": {"http": free("a free HTTP port"), "dns": free("a free DNS port"), "server": 0, "serf_lan": 0, "serf_wan": -1},
            "log_level": "error",
        });
        let flags = cairn::config::AgentFlags { dev: true, ..Default::default() };
        let (config, _) =
            cairn::config::Config::from_sources(&[("fuzz.json".into(), json.to_string())], &flags).expect("config");
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let handle = runtime.handle().clone();
        let (api_tx, api_rx) = tokio::sync::oneshot::channel();
        std::thread::spawn(move || {
            let options = cairn::agent::AgentOptions {
                flags,
                set_log_level: Box::new(|_| {}),
                log_tap: Default::default(),
                api: Some(api_tx),
            };
            let result = runtime.block_on(cairn::agent::run(config, options));
            panic!("the in-process agent stopped: {result:?}");
        });
        let ctx = handle
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), api_rx).await })
            .expect("the in-process agent did not serve within 30 s")
            .expect("the in-process agent stopped before serving");
        let mut agent = Agent { router: cairn::http::router(ctx.clone()), ctx, runtime: handle };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.call("GET", "/v1/status/leader", b"").map(|a| a.body.len() > 2) != Some(true) {
            assert!(Instant::now() < deadline, "the in-process agent did not elect itself within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mutex::new(agent)
    })
}

impl Agent {
    /// One request through the router; `None` when it cannot be made (a path `http` refuses).
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Option<Answer> {
        let request = axum::http::Request::builder()
            .method(method)
            .uri(path)
            .header("content-length", body.len())
            .body(axum::body::Body::from(body.to_vec()))
            .ok()?;
        let router = self.router.clone();
        self.runtime.block_on(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            let (parts, body) = response.into_parts();
            let body = axum::body::to_bytes(body, usize::MAX).await.ok()?.to_vec();
            Some(Answer { status: parts.status.as_u16(), body })
        })
    }

    fn must(&mut self, method: &str, path: &str, body: &[u8]) -> Answer {
        let answer = self.call(method, path, body).unwrap_or_else(|| panic!("{method} {path}: no answer"));
        let no_path = answer.status == 500 && answer.body == b"No path to datacenter";
        assert!(
            answer.status < 500 || no_path,
            "{method} {path}: {} {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
        answer
    }
}

/// Sends `body` to `path`. When it is refused, what `state` reads must be as it was. A
/// difference is measured again, up to three times, around the same body sent once more
/// after the state has settled: a burst of writes in the background (anti-entropy putting
/// back the agent's own node after a body changed it, say) is not the body's doing, while a
/// refused body that changes the state does so every time.
fn send_checked(agent: &mut Agent, path: &str, body: &[u8], state: impl Fn(&mut Agent) -> Vec<u8>) -> Answer {
    let before = state(agent);
    let answer = agent.must("PUT", path, body);
    if answer.status == 200 || state(agent) == before {
        return answer;
    }
    for _ in 0..3 {
        let before = settled(agent, &state);
        let again = agent.must("PUT", path, body);
        assert_eq!(again.status, answer.status, "the same body to {path} was answered differently");
        if state(agent) == before {
            return answer;
        }
    }
    panic!("a refused body ({}) to {path} changed the state, three times out of three", answer.status);
}

/// `state` once two reads 10 ms apart agree (at most 1 s).
fn settled(agent: &mut Agent, state: &impl Fn(&mut Agent) -> Vec<u8>) -> Vec<u8> {
    let mut last = state(agent);
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(10));
        let now = state(agent);
        if now == last {
            break;
        }
        last = now;
    }
    last
}

/// The index of every table of the store: any change to the catalog, KV, sessions,
/// prepared queries or ACLs raises one.
fn store_indexes(agent: &mut Agent) -> Vec<u8> {
    use cairn::store::Table;
    let view = agent.ctx.store.read().expect("a store read");
    [Table::Nodes, Table::Services, Table::Checks, Table::Kv, Table::Sessions, Table::PreparedQueries, Table::Acl]
        .into_iter()
        .flat_map(|table| view.table_index(table).expect("a table index").to_be_bytes())
        .collect()
}

/// The names a list answers: the keys of an object, or `field` of each element of an array.
fn names(body: &[u8], field: &str) -> Vec<String> {
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(serde_json::Value::Object(map)) => map.keys().cloned().collect(),
        Ok(serde_json::Value::Array(items)) => {
            items.iter().filter_map(|i| i.get(field).and_then(|v| v.as_str()).map(str::to_string)).collect()
        }
        _ => Vec::new(),
    }
}

fn encode(path: &str) -> String {
    path.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `PUT /v1/catalog/register`: a refused body leaves every table index where it was; what a
/// body registered (any node but the agent's own) is deregistered.
pub fn check_catalog_register(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let answer = send_checked(&mut agent, "/v1/catalog/register", body, store_indexes);
    if answer.status == 200 {
        let nodes = agent.must("GET", "/v1/catalog/nodes", b"").body;
        for node in names(&nodes, "Node").into_iter().filter(|n| n != "fuzz") {
            let deregister = serde_json::json!({ "Node": node }).to_string();
            agent.must("PUT", "/v1/catalog/deregister", deregister.as_bytes());
        }
    }
}

/// A body to one of the agent's own register endpoints: refused, it leaves the agent's list
/// (`list`) as it was; accepted, everything listed is removed again through `deregister`.
fn check_agent_register(body: &[u8], register: &str, list: &str, id_field: &str, deregister: &str) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let state = |a: &mut Agent| a.must("GET", list, b"").body;
    if send_checked(&mut agent, register, body, state).status == 200 {
        for id in names(&state(&mut agent), id_field) {
            agent.must("PUT", &format!("{deregister}{}", encode(&id)), b"");
        }
    }
}

/// `PUT /v1/agent/service/register`: a refused body leaves the agent's services as they were.
pub fn check_service_register(body: &[u8]) {
    check_agent_register(
        body,
        "/v1/agent/service/register",
        "/v1/agent/services",
        "ID",
        "/v1/agent/service/deregister/",
    );
}

/// `PUT /v1/agent/check/register`: as services, for the agent's checks.
pub fn check_check_register(body: &[u8]) {
    check_agent_register(
        body,
        "/v1/agent/check/register",
        "/v1/agent/checks",
        "CheckID",
        "/v1/agent/check/deregister/",
    );
}

/// `PUT /v1/txn`: a refused or rolled-back transaction leaves every table index where it was
/// (a transaction may hold catalog operations too).
pub fn check_txn(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    if send_checked(&mut agent, "/v1/txn", body, store_indexes).status == 200 {
        agent.must("DELETE", "/v1/kv/?recurse", b"");
    }
}
