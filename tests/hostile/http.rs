//! HTTP request bodies for the endpoints that change state, sent to a whole agent running
//! in this process (`-dev`, its HTTP API on loopback): `PUT /v1/catalog/register`,
//! `/v1/agent/service/register`, `/v1/agent/check/register` and `/v1/txn`.
//!
//! Invariants: every answer is a well-formed HTTP response with a status below 500 (a body
//! is the client's fault or fine, never the server's) — except Consul's 500 "No path to
//! datacenter" for a `Datacenter` no server knows; a refused body changed nothing (the
//! catalog or KV index, or the agent's own list, is as it was). What a body did register is
//! removed again, so the state stays small whatever the number of inputs.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

struct Agent {
    addr: SocketAddr,
    connection: Option<BufReader<TcpStream>>,
}

struct Answer {
    status: u16,
    index: Option<u64>,
    body: Vec<u8>,
}

fn agent() -> &'static Mutex<Agent> {
    static AGENT: OnceLock<Mutex<Agent>> = OnceLock::new();
    AGENT.get_or_init(|| {
        let free = |what| std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect(what).port();
        let http = free("a free HTTP port");
        let json = serde_json::json!({
            "node_name": "fuzz",
            "ports": {"http": http, "dns": free("a free DNS port"), "server": 0, "serf_lan": 0, "serf_wan": -1},
            "log_level": "error",
        });
        let flags = cairn::config::AgentFlags { dev: true, ..Default::default() };
        let (config, _) =
            cairn::config::Config::from_sources(&[("fuzz.json".into(), json.to_string())], &flags).expect("config");
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
            let options =
                cairn::agent::AgentOptions { flags, set_log_level: Box::new(|_| {}), log_tap: Default::default() };
            let result = runtime.expect("runtime").block_on(cairn::agent::run(config, options));
            panic!("the in-process agent stopped: {result:?}");
        });
        let mut agent = Agent { addr: SocketAddr::from(([127, 0, 0, 1], http)), connection: None };
        let deadline = Instant::now() + Duration::from_secs(30);
        while agent.call("GET", "/v1/status/leader", b"").map(|a| a.body.len() > 2) != Some(true) {
            assert!(Instant::now() < deadline, "the in-process agent did not elect itself within 30 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        Mutex::new(agent)
    })
}

impl Agent {
    /// One request on a kept-alive connection; `None` when the agent could not be reached.
    fn call(&mut self, method: &str, path: &str, body: &[u8]) -> Option<Answer> {
        for _ in 0..2 {
            if self.connection.is_none() {
                let stream = TcpStream::connect(self.addr).ok()?;
                stream.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
                // One write per request, sent at once: Nagle's algorithm against the server's
                // delayed ACK would add 40 ms to every request.
                stream.set_nodelay(true).ok()?;
                self.connection = Some(BufReader::new(stream));
            }
            let connection = self.connection.as_mut()?;
            let mut request =
                format!("{method} {path} HTTP/1.1\r\nHost: fuzz\r\nContent-Length: {}\r\n\r\n", body.len())
                    .into_bytes();
            request.extend_from_slice(body);
            let sent = connection.get_mut().write_all(&request);
            match sent.ok().and_then(|()| read_answer(connection)) {
                Some((answer, close)) => {
                    if close {
                        self.connection = None;
                    }
                    return Some(answer);
                }
                None => self.connection = None,
            }
        }
        None
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

/// An answer, and whether the server closes the connection after it.
fn read_answer(connection: &mut BufReader<TcpStream>) -> Option<(Answer, bool)> {
    let mut line = String::new();
    connection.read_line(&mut line).ok()?;
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut index, mut close) = (0usize, None, false);
    loop {
        line.clear();
        connection.read_line(&mut line).ok()?;
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':')?;
        match name.to_ascii_lowercase().as_str() {
            "content-length" => length = value.trim().parse().ok()?,
            "x-consul-index" => index = value.trim().parse().ok(),
            "connection" => close = value.trim().eq_ignore_ascii_case("close"),
            "transfer-encoding" => panic!("a chunked answer where cairn sends lengths"),
            _ => {}
        }
    }
    let mut body = vec![0; length];
    connection.read_exact(&mut body).ok()?;
    Some((Answer { status, index, body }, close))
}

/// Sends `body` to `path`. When it is refused, what `state` reads must be as it was; a first
/// difference is measured again around the same body sent once more, so a write in the
/// background (anti-entropy repairing the agent's own node, say) is not taken for the body's.
fn send_checked(agent: &mut Agent, path: &str, body: &[u8], state: impl Fn(&mut Agent) -> Vec<u8>) -> Answer {
    let before = state(agent);
    let answer = agent.must("PUT", path, body);
    if answer.status != 200 && state(agent) != before {
        let before = state(agent);
        let again = agent.must("PUT", path, body);
        assert_eq!(again.status, answer.status, "the same body to {path} was answered differently");
        assert!(state(agent) == before, "a refused body ({}) to {path} changed the state", answer.status);
    }
    answer
}

fn index_of(agent: &mut Agent, path: &str) -> Vec<u8> {
    agent.must("GET", path, b"").index.unwrap_or(0).to_be_bytes().to_vec()
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

/// `PUT /v1/catalog/register`: a refused body leaves the catalog index where it was; what a
/// body registered (any node but the agent's own) is deregistered.
pub fn check_catalog_register(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let answer = send_checked(&mut agent, "/v1/catalog/register", body, |a| index_of(a, "/v1/catalog/nodes"));
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

/// `PUT /v1/txn`: a refused or rolled-back transaction leaves the KV index where it was.
pub fn check_txn(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    if send_checked(&mut agent, "/v1/txn", body, |a| index_of(a, "/v1/kv/?keys")).status == 200 {
        agent.must("DELETE", "/v1/kv/?recurse", b"");
    }
}
