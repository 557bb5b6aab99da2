//! `Server`: one process under test (cairn or etcd), pinned to `SERVER_CPU`, its stderr kept
//! for readiness checks and error reports. Dropping a `Server` SIGKILLs and reaps the process,
//! so an error anywhere in the bench never leaves a server running.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::client::HttpConn;

/// Every server runs on this core (the bench itself runs on another, see `run.sh`), so each
/// system gets exactly one core, and the same one — unless `--unpinned`.
pub const SERVER_CPU: usize = 0;
/// Cleared by `--unpinned`: servers (and the bench) may then use every core.
static PIN_SERVERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// `--unpinned`: servers started from now on are free to use every core.
pub fn unpin_servers() {
    PIN_SERVERS.store(false, std::sync::atomic::Ordering::Relaxed);
}

/// Where servers run, for the report.
pub fn placement() -> String {
    if PIN_SERVERS.load(std::sync::atomic::Ordering::Relaxed) {
        format!("servers pinned to core {SERVER_CPU}, the bench to another")
    } else {
        format!(
            "unpinned: servers and the bench share all {} cores",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )
    }
}

/// How long a server may take to start or to stop after SIGTERM.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// Lines of server stderr kept for readiness checks and error reports.
const LOG_LINES_MAX: usize = 10_000;

/// Pins the calling thread (in a child before exec: the process) to `SERVER_CPU`. Builds a
/// cpu_set_t on the stack and makes one system call, so it is async-signal-safe.
pub fn pin_to_server_cpu() -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // read and write that set, which lives on this stack.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(SERVER_CPU, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

pub struct Server {
    name: String,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts `program args` pinned to `SERVER_CPU` (as `taskset -c 0` would; not with
    /// `--unpinned`), stdout discarded, stderr captured. Does not wait for anything.
    pub fn spawn(name: &str, program: &Path, args: &[String]) -> Result<Server> {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        if PIN_SERVERS.load(std::sync::atomic::Ordering::Relaxed) {
            // SAFETY: runs in the forked child before exec; `pin_to_server_cpu` only builds a
            // cpu_set_t on the stack and makes one system call, both async-signal-safe.
            unsafe {
                command.pre_exec(pin_to_server_cpu);
            }
        }
        let mut child = command.spawn().with_context(|| format!("cannot start {name} ({})", program.display()))?;
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("stderr was piped")?;
        let sink = Arc::clone(&log);
        // Ends by itself when the process exits and the pipe closes.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let mut lines = sink.lock().unwrap_or_else(|e| e.into_inner());
                if lines.len() < LOG_LINES_MAX {
                    lines.push(line);
                }
            }
        });
        Ok(Server { name: name.to_owned(), child, log })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stderr line containing `needle` and returns it; fails if the process exits
    /// or `START_TIMEOUT` passes first.
    pub async fn wait_for_log(&mut self, needle: &str) -> Result<String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(line) = self.find_log(needle) {
                return Ok(line);
            }
            if let Some(status) = self.exited()? {
                bail!("{} exited ({status}) before logging {needle:?}:\n{}", self.name, self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{} did not log {needle:?} within {START_TIMEOUT:?}:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn find_log(&self, needle: &str) -> Option<String> {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        lines.iter().find(|l| l.contains(needle)).cloned()
    }

    /// The last lines of stderr, for error messages.
    pub fn log_tail(&self) -> String {
        let lines = self.log.lock().unwrap_or_else(|e| e.into_inner());
        let start = lines.len().saturating_sub(20);
        lines[start..].join("\n")
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Resident set size from /proc/PID/status, in KiB.
    pub fn vm_rss_kib(&self) -> Result<u64> {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .with_context(|| format!("no VmRSS in {path}"))
    }

    /// User + system CPU time the process has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        cpu_time_of(&self.pid().to_string())
    }

    /// SIGTERM, then waits for the process to exit.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        // SAFETY: kill(2) on our own child, which has not been reaped yet.
        unsafe { libc::kill(self.pid() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} still running {STOP_TIMEOUT:?} after SIGTERM", self.name);
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Both fail harmlessly if the process has already exited and been reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// User + system CPU time of `/proc/{pid}` (`"self"` for the bench), at clock-tick resolution
/// (usually 10 ms).
pub fn cpu_time_of(pid: &str) -> Result<Duration> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, 12 and 13 after the name.
    let ticks: u64 = fields.get(11..13).into_iter().flatten().filter_map(|f| f.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_micros(ticks * 1_000_000 / per_second))
}

/// A port that was free a moment ago (bound to :0 and released). Another process could take
/// it before the server binds it; on this otherwise idle machine that does not happen.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// A fresh temporary directory under /tmp, removed when dropped.
pub fn temp_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(prefix).tempdir_in("/tmp").context("create a temp dir under /tmp")
}

/// Where the server binaries are and how to start them.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub cairn: PathBuf,
    pub etcd: PathBuf,
}

/// A server with its HTTP address and the temp dir it owns (removed after it is killed: the
/// `Server` field drops first).
pub struct Running {
    pub server: Server,
    pub http: SocketAddr,
    _dir: Option<tempfile::TempDir>,
}

/// Config that lifts the limits the watch section would otherwise hit (200 connections per
/// client IP, 8,192 connections in all, 20,000 blocking queries) and gives LMDB room for the
/// write runs.
pub const RAISED_LIMITS_CONFIG: &str = r#"{"limits": {"http_max_conns_per_client": 30000, "http_max_conns": 30000,
    "max_blocking_queries": 30000}, "lmdb_map_size_mb": 4096}"#;

/// Starts `cairn agent -server -bootstrap-expect 1` on a fresh data dir with
/// `RAISED_LIMITS_CONFIG`, and waits until it takes writes.
pub async fn start_cairn_server(bins: &Binaries) -> Result<Running> {
    let dir = temp_dir("cairn-bench-")?;
    let config = dir.path().join("limits.json");
    std::fs::write(&config, RAISED_LIMITS_CONFIG).context("write cairn config")?;
    let data = dir.path().join("data");
    let args = cairn_server_args(&data, 0, Some(&config));
    let mut server = Server::spawn("cairn", &bins.cairn, &args)?;
    let http = wait_cairn_ready(&mut server).await?;
    Ok(Running { server, http, _dir: Some(dir) })
}

/// Arguments for a persistent single server on `data_dir` (`http_port` 0: any free port).
pub fn cairn_server_args(data_dir: &Path, http_port: u16, config: Option<&Path>) -> Vec<String> {
    let mut args: Vec<String> = [
        "agent",
        "-server",
        "-bootstrap-expect",
        "1",
        "-serf-lan-port",
        "0",
        "-serf-wan-port",
        "0",
        "-server-port",
        "0",
        "-bind",
        "127.0.0.1",
        "-node",
        "bench",
    ]
    .map(String::from)
    .to_vec();
    args.extend(["-data-dir".into(), data_dir.display().to_string()]);
    args.extend(["-http-port".into(), http_port.to_string()]);
    if let Some(config) = config {
        args.extend(["-config-file".into(), config.display().to_string()]);
    }
    args
}

/// Starts `cairn agent -dev -http-port 0` and waits until it takes writes.
pub async fn start_cairn_dev(bins: &Binaries) -> Result<Running> {
    let args = ["agent", "-dev", "-http-port", "0", "-serf-lan-port", "0", "-serf-wan-port", "0", "-server-port", "0"]
        .map(String::from);
    let mut server = Server::spawn("cairn", &bins.cairn, &args)?;
    let http = wait_cairn_ready(&mut server).await?;
    Ok(Running { server, http, _dir: None })
}

/// Waits until cairn has registered itself (it then has a leader and takes writes); returns
/// the HTTP address it logged.
pub async fn wait_cairn_ready(server: &mut Server) -> Result<SocketAddr> {
    server.wait_for_log("registered this server in the catalog").await?;
    logged_addr(server, "HTTP API listening addr=").await
}

/// The address cairn logged right after `marker` (e.g. `DNS listening (UDP and TCP) addr=`).
pub async fn logged_addr(server: &mut Server, marker: &str) -> Result<SocketAddr> {
    let line = server.wait_for_log(marker).await?;
    line.split(marker)
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|addr| addr.parse().ok())
        .with_context(|| format!("no address in cairn log line {line:?}"))
}

/// Starts a single-member etcd with default durability (fsync per commit) on a fresh data dir
/// and waits until a put through the JSON gateway succeeds.
pub async fn start_etcd(bins: &Binaries) -> Result<Running> {
    let dir = temp_dir("etcd-bench-")?;
    let client_url = format!("http://127.0.0.1:{}", free_port()?);
    let peer_url = format!("http://127.0.0.1:{}", free_port()?);
    let args = [
        "--name".to_owned(),
        "bench".to_owned(),
        "--data-dir".to_owned(),
        dir.path().join("data").display().to_string(),
        "--listen-client-urls".to_owned(),
        client_url.clone(),
        "--advertise-client-urls".to_owned(),
        client_url.clone(),
        "--listen-peer-urls".to_owned(),
        peer_url.clone(),
        "--initial-advertise-peer-urls".to_owned(),
        peer_url.clone(),
        "--initial-cluster".to_owned(),
        format!("bench={peer_url}"),
    ];
    let mut server = Server::spawn("etcd", &bins.etcd, &args)?;
    server.wait_for_log("ready to serve client requests").await?;
    let http: SocketAddr = client_url.trim_start_matches("http://").parse().context("etcd client address")?;
    // A put proves there is a leader and the gateway answers.
    let mut conn = HttpConn::connect(http).await?;
    let probe = conn.request("POST", "/v3/kv/put", br#"{"key":"cHJvYmU=","value":"MQ=="}"#).await?;
    if probe.status != 200 {
        bail!("etcd probe put: {} {}", probe.status, probe.text());
    }
    Ok(Running { server, http, _dir: Some(dir) })
}
