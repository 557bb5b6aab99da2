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

/// The value of `key` (any case) in a JSON object body, as a string.
fn field(body: &[u8], key: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let object = value.as_object()?;
    let found = object.iter().find(|(k, _)| k.eq_ignore_ascii_case(key))?.1;
    found.as_str().map(str::to_string)
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

/// `PUT /v1/catalog/register`: a refused body leaves the catalog index where it was.
pub fn check_catalog_register(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let before = agent.must("GET", "/v1/catalog/nodes", b"").index;
    let answer = agent.must("PUT", "/v1/catalog/register", body);
    if answer.status == 200 {
        if let Some(node) = field(body, "Node").filter(|n| n != "fuzz") {
            let deregister = serde_json::json!({ "Node": node }).to_string();
            agent.must("PUT", "/v1/catalog/deregister", deregister.as_bytes());
        }
    } else {
        let after = agent.must("GET", "/v1/catalog/nodes", b"").index;
        assert_eq!(after, before, "a refused registration ({}) changed the catalog", answer.status);
    }
}

/// `PUT /v1/agent/service/register`: a refused body leaves the agent's services as they were.
pub fn check_service_register(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let before = agent.must("GET", "/v1/agent/services", b"").body;
    let answer = agent.must("PUT", "/v1/agent/service/register", body);
    if answer.status == 200 {
        let id = field(body, "ID").filter(|id| !id.is_empty()).or_else(|| field(body, "Name"));
        if let Some(id) = id {
            agent.must("PUT", &format!("/v1/agent/service/deregister/{}", encode(&id)), b"");
        }
    } else {
        let after = agent.must("GET", "/v1/agent/services", b"").body;
        assert!(after == before, "a refused service registration ({}) changed the agent's services", answer.status);
    }
}

/// `PUT /v1/agent/check/register`: as services, for the agent's checks.
pub fn check_check_register(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let before = agent.must("GET", "/v1/agent/checks", b"").body;
    let answer = agent.must("PUT", "/v1/agent/check/register", body);
    if answer.status == 200 {
        let id = field(body, "CheckID").or_else(|| field(body, "ID")).filter(|id| !id.is_empty());
        if let Some(id) = id.or_else(|| field(body, "Name")) {
            agent.must("PUT", &format!("/v1/agent/check/deregister/{}", encode(&id)), b"");
        }
    } else {
        let after = agent.must("GET", "/v1/agent/checks", b"").body;
        assert!(after == before, "a refused check registration ({}) changed the agent's checks", answer.status);
    }
}

/// `PUT /v1/txn`: a refused or rolled-back transaction leaves the KV index where it was.
pub fn check_txn(body: &[u8]) {
    let mut agent = agent().lock().unwrap_or_else(|e| e.into_inner());
    let before = agent.must("GET", "/v1/kv/?keys", b"").index;
    let answer = agent.must("PUT", "/v1/txn", body);
    if answer.status == 200 {
        agent.must("DELETE", "/v1/kv/?recurse", b"");
    } else {
        let after = agent.must("GET", "/v1/kv/?keys", b"").index;
        assert_eq!(after, before, "a refused transaction ({}) changed the KV store", answer.status);
    }
}
