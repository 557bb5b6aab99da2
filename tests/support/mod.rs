//! The one harness every integration test uses: starts the real `cairn` binary on ephemeral
//! ports with its own temp dir, speaks raw HTTP/1.1 to it, and stops it with SIGTERM or
//! SIGKILL. Every wait has a deadline.

#![allow(dead_code)] // each test binary uses a different part of the harness

pub mod cluster;
pub mod dns;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const START_TIMEOUT: Duration = Duration::from_secs(30);
pub const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Every listener of a test agent on loopback, on a port the kernel picks (the agent logs
/// each bound address; [`Agent::spawn_until`] reads them back).
pub const LOOPBACK_FLAGS: [&str; 12] = [
    "-http-port",
    "0",
    "-dns-port",
    "0",
    "-serf-lan-port",
    "0",
    "-serf-wan-port",
    "0",
    "-server-port",
    "0",
    "-bind",
    "127.0.0.1",
];

pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

/// Polls `check` until it returns `Some`, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running agent process.
pub struct Agent {
    child: Option<Child>,
    pub http: SocketAddr,
    /// UDP and TCP share this address.
    pub dns: SocketAddr,
    /// LAN gossip (UDP and TCP).
    pub gossip: SocketAddr,
    pub data_dir: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    _temp: Option<tempfile::TempDir>,
}

/// Output of an agent that exited (or failed to start).
pub struct Exited {
    pub status: ExitStatus,
    pub stderr: String,
}

/// Runs `cairn` with `args` (behind `wrapper`, e.g. `ip netns exec NAME`, if not empty),
/// collecting its stderr lines.
fn spawn_logged(
    wrapper: &[String],
    args: &[String],
    env: &[(&str, String)],
) -> (Child, Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut command = Command::new(program);
            command.args(rest).arg(cairn_bin());
            command
        }
        None => Command::new(cairn_bin()),
    };
    let mut child = command
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cairn");
    let log = Arc::new(Mutex::new(Vec::new()));
    let stderr = child.stderr.take().expect("stderr piped");
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
    (child, log, reader)
}

impl Agent {
    /// Starts a server with a fresh data dir (`-server -bootstrap-expect 1`), plus `extra`.
    pub fn start(extra: &[&str]) -> Agent {
        let temp = tempfile::tempdir().expect("tempdir");
        let data_dir = temp.path().join("data");
        let mut agent = Agent::start_in(&data_dir, extra);
        agent._temp = Some(temp);
        agent
    }

    /// Starts a server on `data_dir` (kept after the agent stops).
    pub fn start_in(data_dir: &Path, extra: &[&str]) -> Agent {
        Agent::spawn(Agent::server_args(data_dir, extra), data_dir.to_path_buf())
    }

    /// The arguments [`Agent::start_in`] runs a one-server cluster on `data_dir` with.
    pub fn server_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
        // Loopback everywhere: the tests must not depend on the host's interfaces.
        let flags = ["agent", "-server", "-bootstrap-expect", "1", "-node", "test-node"];
        let mut args: Vec<String> = flags.iter().chain(LOOPBACK_FLAGS.iter()).map(|s| s.to_string()).collect();
        args.push("-data-dir".into());
        args.push(data_dir.display().to_string());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Starts `cairn` with exactly `args` and waits until it serves HTTP and has a leader.
    pub fn spawn(args: Vec<String>, data_dir: PathBuf) -> Agent {
        Agent::spawn_with_env(args, data_dir, &[])
    }

    /// [`Agent::spawn`] with extra environment variables.
    pub fn spawn_with_env(args: Vec<String>, data_dir: PathBuf, env: &[(&str, String)]) -> Agent {
        Agent::spawn_until(args, data_dir, env, "registered this server in the catalog")
    }

    /// Starts a client agent (no `-server`) and waits until it serves HTTP and DNS.
    pub fn spawn_client(args: Vec<String>, data_dir: PathBuf) -> Agent {
        Agent::spawn_until(args, data_dir, &[], "DNS listening")
    }

    /// Starts `cairn` with `args` and waits until it listens and has logged `ready`.
    pub fn spawn_until(args: Vec<String>, data_dir: PathBuf, env: &[(&str, String)], ready: &str) -> Agent {
        Agent::spawn_wrapped(&[], args, data_dir, env, ready)
    }

    /// [`Agent::spawn_until`] behind `wrapper`, a command that execs `cairn` in place (so
    /// signals reach the agent itself), e.g. `ip netns exec NAME`.
    pub fn spawn_wrapped(
        wrapper: &[String],
        args: Vec<String>,
        data_dir: PathBuf,
        env: &[(&str, String)],
        ready: &str,
    ) -> Agent {
        let (mut child, log, _reader) = spawn_logged(wrapper, &args, env);
        let (http, dns, gossip) = wait_for("the agent to listen and register itself", START_TIMEOUT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("agent exited during start ({status}):\n{}", log.lock().unwrap().join("\n"));
            }
            let lines = log.lock().unwrap();
            if !lines.iter().any(|l| l.contains(ready)) {
                return None;
            }
            let addr_after = |marker: &str| {
                lines.iter().find_map(|l| {
                    let rest = l.split(marker).nth(1)?;
                    rest.split_whitespace().next()?.parse::<SocketAddr>().ok()
                })
            };
            Some((
                addr_after("HTTP API listening addr=")?,
                addr_after("DNS listening (UDP and TCP) addr=")?,
                addr_after("gossip listening (UDP and TCP) addr=")?,
            ))
        });
        Agent { child: Some(child), http, dns, gossip, data_dir, log, _temp: None }
    }

    /// Runs `cairn` with `args`, expecting it to exit by itself within the deadline.
    pub fn run_to_exit(args: &[&str]) -> Exited {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (mut child, log, reader) = spawn_logged(&[], &args, &[]);
        let status = wait_for("cairn to exit", START_TIMEOUT, || child.try_wait().ok().flatten());
        // The pipe closes when the process exits, which ends the reader.
        let _ = reader.join();
        let stderr = log.lock().unwrap().join("\n");
        Exited { status, stderr }
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Waits until the agent's log has a line containing `marker`.
    pub fn wait_log(&self, marker: &str, timeout: Duration) {
        wait_for(&format!("log line {marker:?}"), timeout, || {
            self.log.lock().unwrap().iter().any(|l| l.contains(marker)).then_some(())
        })
    }

    /// Sends a signal (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the agent to exit by itself (e.g. after `cairn leave`).
    pub fn wait_exit(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        wait_for("the agent to exit", Duration::from_secs(15), || child.try_wait().ok().flatten())
    }

    /// SIGTERM, then waits for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("agent running");
        // SAFETY: plain kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        wait_for("the agent to exit after SIGTERM", Duration::from_secs(15), || child.try_wait().ok().flatten())
    }

    pub fn get(&self, path: &str) -> Response {
        self.request("GET", path, b"")
    }

    pub fn put(&self, path: &str, body: impl AsRef<[u8]>) -> Response {
        self.request("PUT", path, body.as_ref())
    }

    pub fn delete(&self, path: &str) -> Response {
        self.request("DELETE", path, b"")
    }

    pub fn request(&self, method: &str, path: &str, body: &[u8]) -> Response {
        http_request(self.http, method, path, body)
    }

    pub fn request_with_headers(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        http_request_with_headers(self.http, method, path, headers, b"")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {} {}", self.status, self.text()))
    }

    pub fn index(&self) -> u64 {
        self.header("X-Consul-Index").expect("X-Consul-Index header").parse().expect("numeric index")
    }
}

/// [`http_request`] that reports a refused connection or a failed exchange as `None`
/// instead of panicking (for agents that may have been killed), within `timeout`.
pub fn try_http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
    timeout: Duration,
) -> Option<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).ok()?;
    stream.write_all(body).ok()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).ok()?;
    raw.windows(4).any(|w| w == b"\r\n\r\n").then(|| parse_response(&raw))
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`), read to the end.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    http_request_with_headers(addr, method, path, &[], body)
}

/// [`http_request`] with extra request headers.
pub fn http_request_with_headers(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(700))).expect("timeout");
    let extra: String = headers.iter().map(|(name, value)| format!("{name}: {value}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).expect("write head");
    // A server refusing the body (413) may answer and close before reading all of it: the
    // write then fails, and the answer is what the test wants to see.
    let _ = stream.write_all(body);
    read_response(&mut stream)
}

pub fn read_response(stream: &mut impl Read) -> Response {
    let mut raw = Vec::new();
    // A reset after a complete answer (the server closed with our body unread) still leaves
    // the answer in `raw`.
    if let Err(e) = stream.read_to_end(&mut raw) {
        assert!(!raw.is_empty(), "read response: {e}");
    }
    parse_response(&raw)
}

pub fn parse_response(raw: &[u8]) -> Response {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("end of headers");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split_whitespace().nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Response { status, headers, body }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 || data.len() < eol + 4 + size {
            break;
        }
        out.extend_from_slice(&data[eol + 2..eol + 2 + size]);
        data = &data[eol + 2 + size + 2..];
    }
    out
}
