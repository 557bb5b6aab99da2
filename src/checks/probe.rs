//! Runs one check once: an HTTP request, a TCP connect or a program, each under its timeout.
//! Knows nothing of thresholds or the catalog; it reports what it saw.

use crate::metrics::{Histogram, HistogramValues, PROBE_SECONDS};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use super::state::{cut_output, Observation, OUTPUT_BYTES_MAX};
use crate::model::agent::CheckKind;
use crate::model::CheckStatus;

/// HTTP clients shared by every HTTP check: one verifying certificates, one not
/// (`TLSSkipVerify`). No connection is kept between runs (as Consul's checks): each run
/// proves the target accepts connections now.
#[derive(Clone)]
pub struct HttpClients {
    verifying: reqwest::Client,
    skip_verify: reqwest::Client,
}

impl HttpClients {
    pub fn new() -> Result<Self, reqwest::Error> {
        let build = |skip: bool| {
            reqwest::Client::builder()
                .user_agent("Consul Health Check")
                .pool_max_idle_per_host(0)
                // Health checks go straight to their target, whatever proxy the agent's
                // environment names for other traffic.
                .no_proxy()
                .danger_accept_invalid_certs(skip)
                .build()
        };
        Ok(HttpClients { verifying: build(false)?, skip_verify: build(true)? })
    }
}

/// How long probes took, by kind (the metric `check_probe_seconds`).
pub struct ProbeTimes {
    http: Histogram,
    tcp: Histogram,
    script: Histogram,
}

impl ProbeTimes {
    pub fn new() -> ProbeTimes {
        ProbeTimes {
            http: Histogram::new(PROBE_SECONDS),
            tcp: Histogram::new(PROBE_SECONDS),
            script: Histogram::new(PROBE_SECONDS),
        }
    }

    /// Each kind's figures, with its name.
    pub fn snapshot(&self) -> [(&'static str, HistogramValues); 3] {
        [("http", self.http.snapshot()), ("tcp", self.tcp.snapshot()), ("script", self.script.snapshot())]
    }
}

/// Runs `kind` once, timing it into `times`. `None` for kinds that nothing runs (TTL,
/// maintenance).
pub async fn run(
    kind: &CheckKind,
    timeout: Duration,
    clients: &HttpClients,
    times: &ProbeTimes,
) -> Option<Observation> {
    let started = std::time::Instant::now();
    let (seen, took) = match kind {
        CheckKind::Http { url, method, headers, body, tls_skip_verify } => {
            let client = if *tls_skip_verify { &clients.skip_verify } else { &clients.verifying };
            (http(client, url, method, headers, body, timeout).await, &times.http)
        }
        CheckKind::Tcp { address } => (tcp(address, timeout).await, &times.tcp),
        CheckKind::Script { args } => (script(args, timeout).await, &times.script),
        CheckKind::Ttl { .. } | CheckKind::Maintenance => return None,
    };
    took.observe(started.elapsed(), false);
    Some(seen)
}

fn critical(output: String) -> Observation {
    Observation { status: CheckStatus::Critical, output: cut_output(output) }
}

/// 2xx passing, 429 warning, anything else (or no answer in time) critical.
async fn http(
    client: &reqwest::Client,
    url: &str,
    method: &str,
    headers: &std::collections::BTreeMap<String, Vec<String>>,
    body: &str,
    timeout: Duration,
) -> Observation {
    let Ok(method_value) = reqwest::Method::from_bytes(method.as_bytes()) else {
        return critical(format!("invalid HTTP method {method:?}"));
    };
    let mut request = client.request(method_value, url).timeout(timeout);
    for (name, values) in headers {
        for value in values {
            request = request.header(name, value);
        }
    }
    if !body.is_empty() {
        request = request.body(body.to_string());
    }
    let exchange = async {
        let mut response = request.send().await?;
        let status = response.status();
        let text = read_body_capped(&mut response).await?;
        Ok::<_, reqwest::Error>((status, text))
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok((status, text))) => {
            let code = status.as_u16();
            let state = match code {
                200..=299 => CheckStatus::Passing,
                429 => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            let output = format!("HTTP {method} {url}: {status} Output: {}", String::from_utf8_lossy(&text));
            Observation { status: state, output: cut_output(output) }
        }
        Ok(Err(e)) => critical(format!("HTTP {method} {url}: {}", root_cause(&e))),
        Err(_) => critical(format!("HTTP {method} {url}: timed out after {timeout:?}")),
    }
}

async fn tcp(address: &str, timeout: Duration) -> Observation {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
        Ok(Ok(_stream)) => {
            Observation { status: CheckStatus::Passing, output: format!("TCP connect {address}: Success") }
        }
        Ok(Err(e)) => critical(format!("dial tcp {address}: {e}")),
        Err(_) => critical(format!("dial tcp {address}: i/o timeout after {timeout:?}")),
    }
}

/// Runs `args` without a shell. Exit 0 passing, 1 warning, anything else critical; killed
/// at the timeout. Output is stdout then stderr, each read up to the output limit (the rest
/// is read and dropped, so a chatty program cannot block on a full pipe).
async fn script(args: &[String], timeout: Duration) -> Observation {
    let Some((program, rest)) = args.split_first() else {
        return critical("no program to run".to_string());
    };
    let spawned = tokio::process::Command::new(program)
        .args(rest)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own process group, so a timeout kills what it started too (`sh -c "a | b"`).
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return critical(format!("cannot run {program:?}: {e}")),
    };
    let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
    let group = child.id().and_then(|pid| i32::try_from(pid).ok());
    // Kills the whole group however this run ends (timeout, or the check being removed).
    let _group_guard = KillGroup(group);
    let finished = async {
        let (out, err, status) = tokio::join!(read_capped(stdout), read_capped(stderr), child.wait());
        (out, err, status)
    };
    match tokio::time::timeout(timeout, finished).await {
        Ok((out, err, Ok(status))) => {
            let mut output = String::from_utf8_lossy(&out).into_owned();
            output.push_str(&String::from_utf8_lossy(&err));
            let state = match status.code() {
                Some(0) => CheckStatus::Passing,
                Some(1) => CheckStatus::Warning,
                _ => CheckStatus::Critical,
            };
            Observation { status: state, output: cut_output(output) }
        }
        Ok((_, _, Err(e))) => critical(format!("waiting for {program:?}: {e}")),
        Err(_) => critical(format!("{program:?} timed out after {timeout:?} and was killed")),
    }
}

/// SIGKILLs a process group when dropped (a finished group is gone already: no effect).
struct KillGroup(Option<i32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            // SAFETY: killpg(2) on the group this probe created; no memory is involved.
            unsafe { libc::killpg(pgid, libc::SIGKILL) };
        }
    }
}

/// The start of a response's body: what arrives until the output limit is passed (the
/// rest is never read), so a huge body costs no memory.
pub async fn read_body_capped(response: &mut reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut text = Vec::new();
    while text.len() < OUTPUT_BYTES_MAX {
        match response.chunk().await? {
            Some(chunk) => text.extend_from_slice(&chunk),
            None => break,
        }
    }
    Ok(text)
}

pub async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else { return kept };
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = OUTPUT_BYTES_MAX.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// The innermost cause of an error: "Connection refused (os error 111)" rather than
/// reqwest's "error sending request for url ...".
pub fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}
