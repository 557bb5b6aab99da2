//! Agent configuration: the `cairn agent` flags, Consul-compatible JSON config files, and the
//! validated [`Config`] the rest of the daemon is built from.
//!
//! This module owns the whole path from argv and files to a `Config`: rewriting Consul's
//! single-dash flags ([`normalize_args`]), reading `-config-dir` / `-config-file` sources,
//! merging them as Consul does (objects merged key by key, arrays appended, scalars replaced),
//! applying flags last, and every check on the result. Nothing else in cairn reads config
//! files or holds their `serde_json::Value`s.
//!
//! Architecture Invariant: every unknown key, wrong type or bad value is reported with the
//! file that holds it.
//! Why: operators keep a directory of files; "bad port" without a file name sends them
//! hunting. So each file is decoded on its own before the merge, and only the checks that
//! span several sources and flags (`data_dir` required, `bootstrap_expect` needs `server`)
//! run on the merged result.
//!
//! Architecture Invariant: the decoding code is the schema. `Section::get` reads a key *and*
//! records it as known, so the unknown-key check and the did-you-mean candidates cannot drift
//! from what is implemented.
//!
//! This module never logs: tracing is not set up while the config loads (its level comes
//! from here), so warnings are returned for the caller to log once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use crate::model::agent::{decode_service, ScriptPolicy, ServiceRegistration, Strictness};
pub use crate::model::parse_duration;
use crate::watch::{Handler, HttpHandler, WatchDefinition, WatchSpec, WatchType};

/// Rewrites Consul-style single-dash long flags (`-dev`, `-http-port=0`) to clap's `--dev`,
/// `--http-port=0`.
///
/// Only a token shaped like `-name` or `-name=value` is rewritten, where `name` starts with an
/// ASCII letter and `-` is followed by at least two characters: so negative numbers (`-1`),
/// one-letter short flags (`-h`) and `--long` stay as they are. Nothing after a bare `--` is
/// rewritten. A flag *value* that itself looks like `-name` would be rewritten too (there is
/// no way to know which flags take values here); real values such as paths and addresses do
/// not start with `-`.
pub fn normalize_args<I: IntoIterator<Item = String>>(args: I) -> Vec<String> {
    let mut rewriting = true;
    args.into_iter()
        .map(|arg| {
            if arg == "--" {
                rewriting = false;
            }
            if rewriting && is_single_dash_long_flag(&arg) {
                format!("-{arg}")
            } else {
                arg
            }
        })
        .collect()
}

fn is_single_dash_long_flag(arg: &str) -> bool {
    let Some(rest) = arg.strip_prefix('-') else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_alphabetic()) && rest.chars().count() >= 2
}

/// Flags of `cairn agent`. Every setting is optional so "not given" never overrides a file.
#[derive(clap::Args, Debug, Default, Clone)]
pub struct AgentFlags {
    /// Run a single-node development server on loopback; no data_dir needed (the agent
    /// uses a temporary one).
    #[arg(long)]
    pub dev: bool,
    /// Run as a server (takes part in Raft).
    #[arg(long)]
    pub server: bool,
    /// Number of servers to wait for before bootstrapping the cluster.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub bootstrap_expect: Option<u32>,
    /// Bootstrap a single server (same as -bootstrap-expect 1).
    #[arg(long, conflicts_with = "bootstrap_expect")]
    pub bootstrap: bool,
    /// Directory of *.json config files, read in lexical order (repeatable).
    #[arg(long, value_name = "DIR")]
    pub config_dir: Vec<PathBuf>,
    /// JSON config file, read after all config dirs (repeatable, in order).
    #[arg(long, value_name = "FILE")]
    pub config_file: Vec<PathBuf>,
    /// Directory for persistent state.
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Datacenter name (default dc1).
    #[arg(long, value_name = "DC", value_parser = parse_datacenter_flag)]
    pub datacenter: Option<String>,
    /// Node name (default: the hostname).
    #[arg(long, value_name = "NAME", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub node: Option<String>,
    /// Address for cluster communication (default 0.0.0.0).
    #[arg(long, value_name = "IP")]
    pub bind: Option<IpAddr>,
    /// Address the HTTP and DNS listeners bind (default 127.0.0.1).
    #[arg(long, value_name = "IP")]
    pub client: Option<IpAddr>,
    /// HTTP API port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub http_port: Option<u16>,
    /// DNS port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub dns_port: Option<u16>,
    /// Server RPC port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub server_port: Option<u16>,
    /// LAN gossip port (0 = any free port).
    #[arg(long, value_name = "PORT")]
    pub serf_lan_port: Option<u16>,
    /// Address to advertise to other members (default: -bind unless it is a wildcard).
    #[arg(long, value_name = "IP")]
    pub advertise: Option<IpAddr>,
    /// Join the gossip pool through this member at start (host or host:port; repeatable).
    /// The agent fails to start if none answers.
    #[arg(long, value_name = "ADDR")]
    pub join: Vec<String>,
    /// Like -join, but retried with backoff until it succeeds (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub retry_join: Vec<String>,
    /// Gossip encryption key: base64 of 32 bytes (`cairn keygen` prints one).
    #[arg(long, value_name = "KEY")]
    pub encrypt: Option<String>,
    /// trace, debug, info, warn or error.
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level_flag)]
    pub log_level: Option<LogLevel>,
    /// Log one JSON object per line (for journald and log shippers).
    #[arg(long)]
    pub log_json: bool,
}

fn parse_datacenter_flag(s: &str) -> Result<String, String> {
    valid_datacenter(s).then(|| s.to_string()).ok_or_else(|| format!("must be {DATACENTER_EXPECTED}"))
}

fn parse_log_level_flag(s: &str) -> Result<LogLevel, String> {
    LogLevel::parse(s).ok_or_else(|| format!("must be {LOG_LEVEL_EXPECTED}"))
}

/// The resolved agent configuration: defaults ← config files (in order) ← flags, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub datacenter: String,
    /// `None` only in dev mode, where the agent makes a temporary directory.
    pub data_dir: Option<PathBuf>,
    pub node_name: String,
    /// Lowercase 8-4-4-4-12 hex UUID.
    pub node_id: Option<String>,
    pub server: bool,
    pub dev: bool,
    pub bootstrap_expect: Option<u32>,
    pub bind_addr: IpAddr,
    pub advertise_addr: Option<IpAddr>,
    pub client_addr: IpAddr,
    pub ports: Ports,
    pub addresses: Addresses,
    /// Lowercase, with a trailing dot.
    pub domain: String,
    /// Lowercase, with a trailing dot.
    pub alt_domain: Option<String>,
    /// Upstream DNS servers; a missing port means 53.
    pub recursors: Vec<SocketAddr>,
    pub dns_config: DnsConfig,
    pub log_level: LogLevel,
    /// One JSON object per log line instead of text.
    pub log_json: bool,
    pub limits: Limits,
    pub lmdb_map_size_bytes: u64,
    pub zones_dir: Option<PathBuf>,
    /// `service` and `services` blocks of every file, in load order.
    pub services: Vec<ServiceRegistration>,
    /// Script checks run only when set, and only from config files.
    pub enable_local_script_checks: bool,
    /// Script checks may also be registered through the HTTP API (Consul's
    /// `enable_script_checks`: anyone who reaches the API can then run programs here).
    pub enable_script_checks: bool,
    /// Output-only check changes reach the catalog at most this often.
    pub check_update_interval: Duration,
    /// cairn: how often anti-entropy compares all local services and checks with the catalog.
    pub anti_entropy_interval: Duration,
    /// Gossip addresses to join at start (`start_join`, `-join`); the start fails if none answers.
    pub start_join: Vec<String>,
    /// Gossip addresses retried until one answers (`retry_join`, `-retry-join`).
    pub retry_join: Vec<String>,
    /// The gossip key (`encrypt`), base64 of 32 bytes, checked when loaded.
    pub encrypt: Option<String>,
    /// A failed member is removed from the catalog after this long (`reconnect_timeout`).
    pub reconnect_timeout: Duration,
    /// Leave the gossip pool gracefully on SIGTERM (default: clients yes, servers no).
    pub leave_on_terminate: Option<bool>,
    /// `gossip_lan` timings.
    pub gossip_lan: GossipLan,
    /// `watches`: views the agent follows, running a script or calling a URL on each change.
    pub watches: Vec<WatchDefinition>,
    /// Raft timings and log compaction (`performance.raft_multiplier`,
    /// `raft_snapshot_threshold`, `raft_trailing_logs`).
    pub raft: RaftTuning,
}

/// Raft's timings and when it compacts its log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftTuning {
    /// Scales every Raft timing (`performance.raft_multiplier`, 1 to 10). At 1: heartbeats
    /// every 50 ms, elections after 200-400 ms of silence plus a leader lease of 400 ms.
    pub multiplier: u32,
    /// A snapshot is taken after this many log entries since the last one.
    pub snapshot_threshold: u64,
    /// Log entries kept behind a snapshot for followers that lag a little.
    pub trailing_logs: u64,
}

impl Default for RaftTuning {
    fn default() -> Self {
        // Multiplier 2: a leader SIGKILL is replaced in about 1.5 s, and a leader must be
        // silent for 1.2 s or more before followers elect another.
        RaftTuning { multiplier: 2, snapshot_threshold: 5_000, trailing_logs: 500 }
    }
}

/// `gossip_lan`: SWIM timings (memberlist's LAN profile by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipLan {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspicion_mult: u32,
    pub gossip_interval: Duration,
    pub gossip_nodes: u32,
}

impl Default for GossipLan {
    fn default() -> Self {
        GossipLan {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
        }
    }
}

/// Listener ports; 0 asks the OS for any free port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    pub http: u16,
    pub dns: u16,
    pub server: u16,
    pub serf_lan: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { http: 8500, dns: 8600, server: 8300, serf_lan: 8301 }
    }
}

/// Per-listener bind addresses; `None` means `client_addr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addresses {
    pub http: Option<IpAddr>,
    pub dns: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub allow_stale: bool,
    pub max_stale: Duration,
    pub node_ttl: Duration,
    /// Service name → TTL; a name ending in `*` is a prefix (an exact name wins over it).
    pub service_ttl: Vec<(String, Duration)>,
    /// 1..=8; applies to clients limited to 512-byte answers.
    pub udp_answer_limit: u32,
    /// 0 = unlimited.
    pub a_record_limit: u32,
    pub only_passing: bool,
    pub enable_truncate: bool,
    pub recursor_timeout: Duration,
    pub recursor_strategy: RecursorStrategy,
    /// CIDRs (`ip/prefix`, syntax checked) allowed to use the recursors.
    pub recursor_allow: Vec<String>,
    pub soa: Soa,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            allow_stale: true,
            max_stale: Duration::from_secs(87_600 * 3600),
            node_ttl: Duration::ZERO,
            service_ttl: Vec::new(),
            udp_answer_limit: 3,
            a_record_limit: 0,
            only_passing: false,
            enable_truncate: false,
            recursor_timeout: Duration::from_secs(2),
            recursor_strategy: RecursorStrategy::Sequential,
            recursor_allow: vec!["127.0.0.0/8".to_string(), "::1/128".to_string()],
            soa: Soa::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RecursorStrategy {
    #[default]
    Sequential,
    Random,
}

/// SOA timers in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Soa {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub min_ttl: u32,
}

impl Default for Soa {
    fn default() -> Self {
        Soa { refresh: 3600, retry: 600, expire: 86_400, min_ttl: 0 }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub http_max_conns_per_client: u32,
    pub kv_max_value_size: u64,
    pub http_max_body_bytes: u64,
    pub http_header_read_timeout: Duration,
    pub max_blocking_queries: u32,
    pub txn_max_ops: u32,
    /// Writes waiting for a Raft proposal; past it writes get 429 at once.
    pub max_pending_writes: u32,
    /// DNS answers in flight that need I/O (static zones, forwarding); past it SERVFAIL.
    pub dns_max_forwards_in_flight: u32,
    /// Health-check probes running at once; past it a check waits for a free slot.
    pub checks_max_concurrent: u32,
    /// Largest snapshot archive `PUT /v1/snapshot` accepts; past it 413.
    pub snapshot_max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http_max_conns_per_client: 200,
            kv_max_value_size: 512 * 1024,
            http_max_body_bytes: 1024 * 1024,
            http_header_read_timeout: Duration::from_secs(30),
            max_blocking_queries: 20_000,
            txn_max_ops: 64,
            max_pending_writes: 16_384,
            dns_max_forwards_in_flight: 1024,
            checks_max_concurrent: 512,
            snapshot_max_bytes: 4 * 1024 * MIB,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogLevel {
    Trace,
    Debug,
    #[default]
    Info,
    Warn,
    Error,
}

impl LogLevel {
    /// Consul's spellings, case-insensitive.
    fn parse(s: &str) -> Option<LogLevel> {
        Some(match s.to_ascii_lowercase().as_str() {
            "trace" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" => LogLevel::Warn,
            "err" | "error" => LogLevel::Error,
            _ => return None,
        })
    }
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Trace => tracing::Level::TRACE,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Error => tracing::Level::ERROR,
        }
    }
}

/// Why the configuration could not be loaded. `Display` is one line, meant for
/// `cairn: <error>` on stderr.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {}: cannot read: {}", path.display(), io_reason(source))]
    Io { path: PathBuf, source: std::io::Error },
    #[error("config {path}: invalid JSON at line {line} column {column}: {msg}")]
    Parse { path: String, line: usize, column: usize, msg: String },
    #[error("config {path}: the top level must be a JSON object, got {found}")]
    NotAnObject { path: String, found: String },
    #[error("config {path}: unknown key {}{}", quote(key), did_you_mean(suggestion.as_deref()))]
    UnknownKey {
        path: String,
        /// Dotted path, e.g. `dns_config.udp_answer_limt`.
        key: String,
        suggestion: Option<String>,
    },
    /// A key holds a value of the wrong JSON type, or of the right type but not allowed.
    #[error("config {path}: key {} must be {expected}, got {found}", quote(key))]
    WrongType { path: String, key: String, expected: String, found: String },
    /// A semantic error, usually spanning several keys or sources.
    #[error("{what}")]
    Invalid { what: String },
}

/// `io::Error`'s text without the " (os error 2)" tail, which tells an operator nothing.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.rfind(" (os error ") {
        Some(i) if text.ends_with(')') => text[..i].to_string(),
        _ => text,
    }
}

fn did_you_mean(suggestion: Option<&str>) -> String {
    suggestion.map_or_else(String::new, |s| format!(" (did you mean {}?)", quote(s)))
}

/// JSON-quotes user text so messages stay on one line whatever the text holds.
fn quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| format!("{s:?}"))
}

const MIB: u64 = 1024 * 1024;

impl Config {
    /// Loads defaults, then each `--config-dir`'s `*.json` files in lexical order, then each
    /// `--config-file` in order, then flags. Returns warnings to log once at start (keys
    /// cairn accepts but ignores, doubtful settings).
    pub fn load(flags: &AgentFlags) -> Result<(Config, Vec<String>), ConfigError> {
        let mut warnings = Vec::new();
        let mut paths = Vec::new();
        for dir in &flags.config_dir {
            paths.extend(json_files_in(dir, &mut warnings)?);
        }
        paths.extend(flags.config_file.iter().cloned());
        let mut sources = Vec::with_capacity(paths.len());
        for path in paths {
            let text =
                std::fs::read_to_string(&path).map_err(|source| ConfigError::Io { path: path.clone(), source })?;
            sources.push((path.display().to_string(), text));
        }
        let (config, more) = Config::from_sources(&sources, flags)?;
        warnings.extend(more);
        Ok((config, warnings))
    }

    /// [`Config::load`] from already-read `(source_name, json_text)` pairs, in order.
    pub fn from_sources(
        sources: &[(String, String)],
        flags: &AgentFlags,
    ) -> Result<(Config, Vec<String>), ConfigError> {
        let defaults = Config::defaults(flags.dev);
        let mut warnings = Vec::new();
        let mut merged = Map::new();
        let mut service_blocks = Vec::new();
        for (name, text) in sources {
            let object = parse_object(name, text)?;
            service_blocks.extend(service_blocks_of(name, &object)?);
            // Decoding each file alone is what lets errors name the file; the result is
            // thrown away and the merged object decoded again below.
            apply_object(&mut defaults.clone(), name, &object, &mut warnings)?;
            merge_objects(&mut merged, object);
        }
        let mut config = defaults;
        let all_names: Vec<&str> = sources.iter().map(|(name, _)| name.as_str()).collect();
        // Every key, type and value was checked per file above, so this can only fail on a
        // conflict between files; its warnings repeat the per-file ones.
        apply_object(&mut config, &all_names.join(", "), &merged, &mut Vec::new())?;
        config.apply_flags(flags);
        config.validate(&mut warnings)?;
        let scripts = config.enable_local_script_checks || config.enable_script_checks;
        config.services = decode_service_blocks(service_blocks, scripts, &mut warnings)?;
        Ok((config, warnings))
    }

    fn defaults(dev: bool) -> Config {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        Config {
            datacenter: "dc1".to_string(),
            data_dir: None,
            node_name: hostname().unwrap_or_else(|| "cairn".to_string()),
            node_id: None,
            // Dev mode is a source under the files, as in Consul: files may still set these,
            // and `validate` rejects what a single dev server cannot run with.
            server: dev,
            dev,
            bootstrap_expect: dev.then_some(1),
            bind_addr: if dev { loopback } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
            advertise_addr: None,
            client_addr: loopback,
            ports: Ports::default(),
            addresses: Addresses::default(),
            domain: "consul.".to_string(),
            alt_domain: None,
            recursors: Vec::new(),
            dns_config: DnsConfig::default(),
            log_level: LogLevel::Info,
            log_json: false,
            limits: Limits::default(),
            lmdb_map_size_bytes: 1024 * MIB,
            zones_dir: None,
            services: Vec::new(),
            enable_local_script_checks: false,
            enable_script_checks: false,
            check_update_interval: Duration::from_secs(300),
            anti_entropy_interval: Duration::from_secs(60),
            start_join: Vec::new(),
            retry_join: Vec::new(),
            encrypt: None,
            reconnect_timeout: Duration::from_secs(72 * 3600),
            leave_on_terminate: None,
            gossip_lan: GossipLan::default(),
            watches: Vec::new(),
            raft: RaftTuning::default(),
        }
    }

    fn apply_flags(&mut self, flags: &AgentFlags) {
        if flags.server {
            self.server = true;
        }
        if flags.bootstrap {
            self.bootstrap_expect = Some(1);
        }
        set_if_some(&mut self.bootstrap_expect, flags.bootstrap_expect.map(Some));
        set_if_some(&mut self.data_dir, flags.data_dir.clone().map(Some));
        set_if_some(&mut self.datacenter, flags.datacenter.clone());
        set_if_some(&mut self.node_name, flags.node.clone());
        set_if_some(&mut self.bind_addr, flags.bind);
        set_if_some(&mut self.client_addr, flags.client);
        set_if_some(&mut self.ports.http, flags.http_port);
        set_if_some(&mut self.ports.dns, flags.dns_port);
        set_if_some(&mut self.ports.server, flags.server_port);
        set_if_some(&mut self.ports.serf_lan, flags.serf_lan_port);
        set_if_some(&mut self.log_level, flags.log_level);
        set_if_some(&mut self.advertise_addr, flags.advertise.map(Some));
        self.start_join.extend(flags.join.iter().cloned());
        self.retry_join.extend(flags.retry_join.iter().cloned());
        set_if_some(&mut self.encrypt, flags.encrypt.clone().map(Some));
        if flags.log_json {
            self.log_json = true;
        }
    }

    /// Checks that need the merged files and the flags together.
    fn validate(&self, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let invalid = |what: &str| Err(ConfigError::Invalid { what: what.to_string() });
        if self.enable_script_checks {
            warnings.push(
                "enable_script_checks is on: anyone who can reach the HTTP API can run programs on \
                 this host through a script check; prefer enable_local_script_checks"
                    .to_string(),
            );
        }
        if self.dev && !self.server {
            return invalid("-dev runs a single server: remove \"server\": false");
        }
        if self.dev && self.bootstrap_expect != Some(1) {
            return invalid("-dev runs a single server: bootstrap_expect must be 1 or unset");
        }
        if let Some(key) = &self.encrypt {
            if let Err(e) = crate::gossip::GossipKey::from_base64(key) {
                return Err(ConfigError::Invalid {
                    what: format!("encrypt (or -encrypt): {e}; `cairn keygen` prints a valid key"),
                });
            }
        }
        if self.gossip_lan.probe_timeout >= self.gossip_lan.probe_interval {
            return invalid("gossip_lan.probe_timeout must be shorter than gossip_lan.probe_interval");
        }
        if !self.dev && self.data_dir.is_none() {
            return invalid("data_dir is required: set \"data_dir\" in a config file or pass -data-dir");
        }
        if let Some(expect) = self.bootstrap_expect {
            if !self.server {
                return invalid(
                    "bootstrap_expect (or bootstrap) is set but this agent is not a server: \
                     set \"server\": true or pass -server",
                );
            }
            // Consul warns about these too: they run, but give up fault tolerance.
            if expect == 2 {
                warnings.push("bootstrap_expect = 2: a cluster of 2 servers tolerates no server failure".to_string());
            } else if expect % 2 == 0 {
                warnings.push(format!(
                    "bootstrap_expect = {expect}: an even number of servers tolerates no more \
                     failures than {} servers",
                    expect - 1
                ));
            }
        }
        Ok(())
    }
}

fn set_if_some<T>(target: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *target = value;
    }
}

/// The `*.json` files of a config dir in lexical order. Other files are skipped, but `.hcl`
/// ones get a warning: a Consul user moving their directory over would otherwise lose them
/// silently.
fn json_files_in(dir: &Path, warnings: &mut Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
    let io_error = |source| ConfigError::Io { path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error)? {
        let path = entry.map_err(io_error)?.path();
        if path.is_dir() {
            continue;
        }
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => files.push(path),
            Some("hcl") => warnings.push(format!(
                "config {}: HCL is not supported by cairn; file ignored (convert it to JSON)",
                path.display()
            )),
            _ => {}
        }
    }
    files.sort();
    Ok(files)
}

fn parse_object(name: &str, text: &str) -> Result<Map<String, Value>, ConfigError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        // serde_json appends " at line L column C"; the variant carries those separately.
        let full = e.to_string();
        let location = format!(" at line {} column {}", e.line(), e.column());
        ConfigError::Parse {
            path: name.to_string(),
            line: e.line(),
            column: e.column(),
            msg: full.strip_suffix(&location).unwrap_or(&full).to_string(),
        }
    })?;
    match value {
        Value::Object(object) => Ok(object),
        other => Err(ConfigError::NotAnObject { path: name.to_string(), found: describe(&other) }),
    }
}

/// Consul's merge: objects merged key by key, arrays appended, anything else replaced.
fn merge_objects(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(&key), value) {
            (Some(Value::Object(old)), Value::Object(new)) => merge_objects(old, new),
            (Some(Value::Array(old)), Value::Array(new)) => old.extend(new),
            (_, value) => {
                into.insert(key, value);
            }
        }
    }
}

// Keys Consul documents that cairn accepts with a warning and otherwise ignores, per section,
// separated by whitespace.
const TOP_NOT_IMPLEMENTED: &str = "
    acl acl_agent_master_token acl_agent_token acl_datacenter acl_default_policy
    acl_down_policy acl_enable_key_list_policy acl_master_token acl_replication_token
    acl_token acl_ttl advertise_addr_ipv4 advertise_addr_ipv6 advertise_addr_wan
    advertise_addr_wan_ipv4 advertise_addr_wan_ipv6 advertise_reconnect_timeout audit
    auto_config auto_encrypt auto_reload_config autopilot ca_file ca_path cache
    cert_file check_output_max_size checks cloud config_entries
    connect default_query_time disable_anonymous_signature disable_coordinates
    disable_host_node_id disable_http_unprintable_char_filter disable_keyring_file
    disable_remote_exec disable_update_check discard_check_output discovery_max_stale
    enable_acl_replication enable_agent_tls_for_checks enable_central_service_config
    enable_debug  enable_syslog 
    encrypt_verify_incoming encrypt_verify_outgoing experiments http_config key_file
     license_path locality log_file log_rotate_bytes
    log_rotate_duration log_rotate_max_files max_query_time node_meta non_voting_server
    peering pid_file primary_datacenter primary_gateways raft_logstore
    raft_protocol raft_snapshot_interval
     reconnect_timeout_wan rejoin_after_leave retry_interval
    retry_interval_wan  retry_join_wan retry_max retry_max_wan rpc segment
    segments serf_lan serf_lan_allowed_cidrs serf_wan serf_wan_allowed_cidrs server_name
    session_ttl_min skip_leave_on_interrupt  start_join_wan
    syslog_facility telemetry tls translate_wan_addrs ui ui_config ui_content_path
    ui_dir unix_sockets use_streaming_backend verify_incoming verify_incoming_https
    verify_incoming_rpc verify_outgoing verify_server_hostname
";
const PERFORMANCE_NOT_IMPLEMENTED: &str = "
    leave_drain_time rpc_hold_timeout
";
const GOSSIP_LAN_NOT_IMPLEMENTED: &str = "
    deadline_timeout indirect_checks retransmit_mult
";
const PORTS_NOT_IMPLEMENTED: &str = "
    expose_max_port expose_min_port grpc grpc_tls https serf_wan sidecar_max_port
    sidecar_min_port
";
const ADDRESSES_NOT_IMPLEMENTED: &str = "
    grpc grpc_tls https
";
const DNS_CONFIG_NOT_IMPLEMENTED: &str = "
    cache_max_age disable_compression enable_additional_node_meta_txt prefer_namespace
    use_cache
";
const LIMITS_NOT_IMPLEMENTED: &str = "
    https_handshake_timeout request_limits rpc_client_timeout rpc_handshake_timeout
    rpc_max_burst rpc_max_conns_per_client rpc_rate txn_max_req_len xds_server
";

/// One `service` block (or `services` element) of one file, decoded once the merged config
/// says whether scripts are allowed.
struct ServiceBlock {
    source: String,
    /// `service` or `services[i]`.
    key: String,
    value: Value,
}

fn service_blocks_of(source: &str, object: &Map<String, Value>) -> Result<Vec<ServiceBlock>, ConfigError> {
    let block = |key: String, value: &Value| ServiceBlock { source: source.to_string(), key, value: value.clone() };
    let mut blocks = Vec::new();
    if let Some(value) = object.get("service") {
        blocks.push(block("service".to_string(), value));
    }
    match object.get("services") {
        None => {}
        Some(Value::Array(items)) => {
            blocks.extend(items.iter().enumerate().map(|(i, v)| block(format!("services[{i}]"), v)));
        }
        Some(other) => {
            return Err(ConfigError::WrongType {
                path: source.to_string(),
                key: "services".to_string(),
                expected: "a list of service definitions".to_string(),
                found: describe(other),
            })
        }
    }
    Ok(blocks)
}

fn decode_service_blocks(
    blocks: Vec<ServiceBlock>,
    scripts_allowed: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<ServiceRegistration>, ConfigError> {
    let policy = if scripts_allowed { ScriptPolicy::Allowed } else { ScriptPolicy::Refused };
    let mut services: Vec<ServiceRegistration> = Vec::with_capacity(blocks.len());
    for block in blocks {
        let reg = decode_service(&block.value, Strictness::Strict, policy)
            .map_err(|e| ConfigError::Invalid { what: format!("config {}: {}: {e}", block.source, block.key) })?;
        if let Some(earlier) = services.iter_mut().find(|s| s.service.id == reg.service.id) {
            warnings.push(format!(
                "config {}: {}: service ID {} is defined more than once; the last definition is used",
                block.source,
                block.key,
                quote(&reg.service.id)
            ));
            *earlier = reg;
        } else {
            services.push(reg);
        }
    }
    Ok(services)
}

/// Decodes one config object onto `config`, key by key; keys it does not hold keep their
/// value. Used for each file alone (to check it) and for the merged object.
fn apply_object(
    config: &mut Config,
    source: &str,
    object: &Map<String, Value>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let mut top = Section::new(source, String::new(), object);
    top.set("datacenter", &mut config.datacenter, decode_datacenter)?;
    top.set("data_dir", &mut config.data_dir, |v| decode_path(v).map(Some))?;
    top.set("node_name", &mut config.node_name, decode_node_name)?;
    top.set("node_id", &mut config.node_id, |v| decode_node_id(v).map(Some))?;
    top.set("server", &mut config.server, decode_bool)?;
    let bootstrap = top.get("bootstrap", decode_bool)?;
    let expect = top.get("bootstrap_expect", |v| decode_uint::<u32>(v, 1, u32::MAX.into()))?;
    config.bootstrap_expect = match (bootstrap, expect) {
        (Some(true), Some(n)) if n != 1 => {
            return Err(ConfigError::Invalid {
                what: format!(
                    "config {source}: \"bootstrap\": true and \"bootstrap_expect\": {n} \
                     contradict each other; set only one"
                ),
            })
        }
        (Some(true), _) => Some(1),
        (_, Some(n)) => Some(n),
        _ => config.bootstrap_expect,
    };
    top.set("bind_addr", &mut config.bind_addr, decode_ip)?;
    top.set("advertise_addr", &mut config.advertise_addr, |v| decode_ip(v).map(Some))?;
    top.set("client_addr", &mut config.client_addr, decode_ip)?;
    if let Some(mut ports) = top.section("ports")? {
        ports.set("http", &mut config.ports.http, decode_port)?;
        ports.set("dns", &mut config.ports.dns, decode_port)?;
        ports.set("server", &mut config.ports.server, decode_port)?;
        ports.set("serf_lan", &mut config.ports.serf_lan, decode_port)?;
        ports.finish(PORTS_NOT_IMPLEMENTED, warnings)?;
    }
    if let Some(mut addresses) = top.section("addresses")? {
        let addrs = &mut config.addresses;
        addresses.set("http", &mut addrs.http, |v| decode_ip(v).map(Some))?;
        addresses.set("dns", &mut addrs.dns, |v| decode_ip(v).map(Some))?;
        addresses.finish(ADDRESSES_NOT_IMPLEMENTED, warnings)?;
    }
    top.set("domain", &mut config.domain, decode_domain)?;
    top.set("alt_domain", &mut config.alt_domain, |v| decode_domain(v).map(Some))?;
    // "recursor" is Consul's old single-server spelling; it adds to "recursors".
    let recursor = top.get("recursor", decode_recursor)?;
    let recursors = top.get("recursors", |v| decode_list(v, decode_recursor))?;
    if recursor.is_some() || recursors.is_some() {
        config.recursors = recursor.into_iter().chain(recursors.into_iter().flatten()).collect();
    }
    if let Some(dns) = top.section("dns_config")? {
        apply_dns_config(&mut config.dns_config, dns, warnings)?;
    }
    top.set("log_level", &mut config.log_level, decode_log_level)?;
    top.set("log_json", &mut config.log_json, decode_bool)?;
    if let Some(mut limits) = top.section("limits")? {
        let l = &mut config.limits;
        limits.set("http_max_conns_per_client", &mut l.http_max_conns_per_client, decode_u32)?;
        limits.set("kv_max_value_size", &mut l.kv_max_value_size, decode_u64)?;
        limits.set("http_max_body_bytes", &mut l.http_max_body_bytes, decode_u64)?;
        limits.set("http_header_read_timeout", &mut l.http_header_read_timeout, decode_duration)?;
        limits.set("max_blocking_queries", &mut l.max_blocking_queries, decode_u32)?;
        limits.set("txn_max_ops", &mut l.txn_max_ops, |v| decode_uint(v, 1, u32::MAX.into()))?;
        limits.set("max_pending_writes", &mut l.max_pending_writes, |v| decode_uint(v, 1, u32::MAX.into()))?;
        limits.set("dns_max_forwards_in_flight", &mut l.dns_max_forwards_in_flight, |v| {
            decode_uint(v, 1, u32::MAX.into())
        })?;
        limits.set("checks_max_concurrent", &mut l.checks_max_concurrent, |v| decode_uint(v, 1, 1_000_000))?;
        limits.set("snapshot_max_bytes", &mut l.snapshot_max_bytes, decode_u64)?;
        limits.finish(LIMITS_NOT_IMPLEMENTED, warnings)?;
    }
    let map_size_mb = top.get("lmdb_map_size_mb", |v| decode_uint::<u64>(v, 1, u64::MAX / MIB))?;
    set_if_some(&mut config.lmdb_map_size_bytes, map_size_mb.map(|mb| mb * MIB));
    top.set("zones_dir", &mut config.zones_dir, |v| decode_path(v).map(Some))?;
    top.set("enable_local_script_checks", &mut config.enable_local_script_checks, decode_bool)?;
    top.set("enable_script_checks", &mut config.enable_script_checks, decode_bool)?;
    top.set("check_update_interval", &mut config.check_update_interval, decode_duration)?;
    top.set("anti_entropy_interval", &mut config.anti_entropy_interval, |v| {
        decode_duration(v).and_then(|d| {
            if d < Duration::from_secs(1) {
                Err(Mismatch::new("a duration of at least 1s", v))
            } else {
                Ok(d)
            }
        })
    })?;
    top.set("start_join", &mut config.start_join, |v| decode_list(v, decode_join_addr))?;
    top.set("retry_join", &mut config.retry_join, |v| decode_list(v, decode_join_addr))?;
    top.set("encrypt", &mut config.encrypt, |v| decode_encrypt_key(v).map(Some))?;
    top.set("reconnect_timeout", &mut config.reconnect_timeout, |v| {
        decode_duration(v).and_then(|d| {
            // Consul's floor: shorter would reap members that are only rebooting.
            if d < Duration::from_secs(8 * 3600) {
                Err(Mismatch::new("a duration of at least 8h", v))
            } else {
                Ok(d)
            }
        })
    })?;
    top.set("leave_on_terminate", &mut config.leave_on_terminate, |v| decode_bool(v).map(Some))?;
    if let Some(mut gossip) = top.section("gossip_lan")? {
        let g = &mut config.gossip_lan;
        gossip.set("probe_interval", &mut g.probe_interval, decode_positive_duration)?;
        gossip.set("probe_timeout", &mut g.probe_timeout, decode_positive_duration)?;
        gossip.set("suspicion_mult", &mut g.suspicion_mult, |v| decode_uint(v, 1, 100))?;
        gossip.set("gossip_interval", &mut g.gossip_interval, decode_positive_duration)?;
        gossip.set("gossip_nodes", &mut g.gossip_nodes, |v| decode_uint(v, 1, 64))?;
        gossip.finish(GOSSIP_LAN_NOT_IMPLEMENTED, warnings)?;
    }
    if let Some(mut performance) = top.section("performance")? {
        performance.set("raft_multiplier", &mut config.raft.multiplier, |v| decode_uint(v, 1, 10))?;
        performance.finish(PERFORMANCE_NOT_IMPLEMENTED, warnings)?;
    }
    top.set("raft_snapshot_threshold", &mut config.raft.snapshot_threshold, |v| decode_uint(v, 1, 1 << 32))?;
    top.set("raft_trailing_logs", &mut config.raft.trailing_logs, |v| decode_uint(v, 0, 1 << 32))?;
    let watches =
        top.get("watches", |v| v.as_array().ok_or_else(|| Mismatch::new("a list of watch definitions", v)))?;
    if let Some(items) = watches {
        config.watches = items
            .iter()
            .enumerate()
            .map(|(i, item)| decode_watch(source, format!("watches[{i}]"), item, warnings))
            .collect::<Result<_, _>>()?;
    }
    // Decoded per file by `service_blocks_of`, which names the file in its errors.
    top.get("service", |_| Ok(()))?;
    top.get("services", |_| Ok(()))?;
    top.finish(TOP_NOT_IMPLEMENTED, warnings)
}

fn apply_dns_config(
    dns: &mut DnsConfig,
    mut section: Section<'_>,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    section.set("allow_stale", &mut dns.allow_stale, decode_bool)?;
    section.set("max_stale", &mut dns.max_stale, decode_duration)?;
    section.set("node_ttl", &mut dns.node_ttl, decode_duration)?;
    section.set("service_ttl", &mut dns.service_ttl, decode_service_ttl)?;
    section.set("udp_answer_limit", &mut dns.udp_answer_limit, |v| decode_uint(v, 1, 8))?;
    section.set("a_record_limit", &mut dns.a_record_limit, decode_u32)?;
    section.set("only_passing", &mut dns.only_passing, decode_bool)?;
    section.set("enable_truncate", &mut dns.enable_truncate, decode_bool)?;
    section.set("recursor_timeout", &mut dns.recursor_timeout, decode_duration)?;
    section.set("recursor_strategy", &mut dns.recursor_strategy, decode_strategy)?;
    section.set("recursor_allow", &mut dns.recursor_allow, |v| decode_list(v, decode_cidr))?;
    if let Some(mut soa) = section.section("soa")? {
        soa.set("refresh", &mut dns.soa.refresh, decode_u32)?;
        soa.set("retry", &mut dns.soa.retry, decode_u32)?;
        soa.set("expire", &mut dns.soa.expire, decode_u32)?;
        soa.set("min_ttl", &mut dns.soa.min_ttl, decode_u32)?;
        soa.finish("", warnings)?;
    }
    section.finish(DNS_CONFIG_NOT_IMPLEMENTED, warnings)
}

/// Keys of a watch Consul documents that cairn accepts and ignores.
const WATCH_NOT_IMPLEMENTED: &str = "token filter";

/// One `watches` entry, checked as Consul's agent checks it (`watch.ParseExempt` and the
/// handler rules): a known type with only its own parameters, and exactly one handler.
fn decode_watch(
    source: &str,
    path: String,
    value: &Value,
    warnings: &mut Vec<String>,
) -> Result<WatchDefinition, ConfigError> {
    let object = value.as_object().ok_or_else(|| ConfigError::WrongType {
        path: source.to_string(),
        key: path.clone(),
        expected: "a watch definition (an object)".to_string(),
        found: describe(value),
    })?;
    let invalid = |what: String| ConfigError::Invalid { what: format!("config {source}: {path}: {what}") };
    let mut s = Section::new(source, path.clone(), object);
    let kind = s.get("type", |v| {
        let name = decode_str(v, "a watch type")?;
        let types: Vec<&str> = WatchType::ALL.iter().map(|t| t.name()).collect();
        WatchType::parse(name).ok_or_else(|| Mismatch::bad_string(format!("one of {}", types.join(", ")), name))
    })?;
    let kind = kind.ok_or_else(|| invalid("\"type\" is required".to_string()))?;
    let mut spec = WatchSpec::new(kind);
    let mut given = Vec::new();
    let mut note = |key: &'static str, present: bool| {
        if present {
            given.push(key);
        }
    };
    spec.key = s.get("key", |v| decode_str(v, "a string").map(str::to_string))?;
    note("key", spec.key.is_some());
    spec.prefix = s.get("prefix", |v| decode_str(v, "a string").map(str::to_string))?;
    note("prefix", spec.prefix.is_some());
    spec.service = s.get("service", |v| decode_str(v, "a string").map(str::to_string))?;
    note("service", spec.service.is_some());
    let tags = s.get("tag", |v| match v {
        Value::String(tag) => Ok(vec![tag.clone()]),
        _ => decode_list(v, |t| decode_str(t, "a string").map(str::to_string)),
    })?;
    note("tag", tags.is_some());
    spec.tags = tags.unwrap_or_default();
    let passingonly = s.get("passingonly", decode_bool)?;
    note("passingonly", passingonly.is_some());
    spec.passingonly = passingonly.unwrap_or(false);
    spec.state = s.get("state", |v| {
        let state = decode_str(v, "a check state")?;
        match state {
            "any" | "passing" | "warning" | "critical" => Ok(state.to_string()),
            _ => Err(Mismatch::bad_string("one of any, passing, warning, critical", state)),
        }
    })?;
    note("state", spec.state.is_some());
    if let Some(extra) = given.iter().find(|key| !kind.params().contains(key)) {
        return Err(invalid(format!("{} does not apply to a {} watch", quote(extra), quote(kind.name()))));
    }
    spec.stale = s.get("stale", decode_bool)?.unwrap_or(false);
    spec.datacenter = s.get("datacenter", decode_datacenter)?;
    spec.path().map_err(|param| invalid(format!("a {} watch needs {}", quote(kind.name()), quote(param))))?;

    let handler_type = s.get("handler_type", |v| {
        let name = decode_str(v, "a handler type")?;
        match name {
            "script" | "http" => Ok(name),
            _ => Err(Mismatch::bad_string("\"script\" or \"http\"", name)),
        }
    })?;
    let args = s.get("args", |v| {
        let args = decode_list(v, |a| decode_str(a, "a string").map(str::to_string))?;
        if args.is_empty() {
            return Err(Mismatch::new("a program and its arguments (a non-empty list)", v));
        }
        Ok(args)
    })?;
    let shell = s.get("handler", |v| decode_str(v, "a shell command").map(str::to_string))?;
    let http = match s.section("http_handler_config")? {
        Some(section) => Some(decode_http_handler(section, warnings)?),
        None => None,
    };
    let handler = match (handler_type, args, shell, http) {
        (Some("http"), None, None, Some(http)) => Handler::Http(http),
        (Some("http"), None, None, None) => {
            return Err(invalid("\"handler_type\": \"http\" needs \"http_handler_config\"".to_string()))
        }
        (_, _, _, Some(_)) if handler_type != Some("http") => {
            return Err(invalid("\"http_handler_config\" needs \"handler_type\": \"http\"".to_string()))
        }
        (Some("script") | None, Some(args), None, None) => Handler::Script { args, capture: true },
        (Some("script") | None, None, Some(command), None) => {
            warnings.push(format!(
                "config {source}: {path}: \"handler\" is deprecated; use \"args\" (a program and its arguments)"
            ));
            Handler::Script { args: vec!["/bin/sh".to_string(), "-c".to_string(), command], capture: true }
        }
        (_, None, None, None) => {
            return Err(invalid("needs a handler: \"args\" or \"http_handler_config\"".to_string()))
        }
        _ => {
            return Err(invalid(
                "only one handler allowed: \"args\", \"handler\" or \"http_handler_config\"".to_string(),
            ))
        }
    };
    s.finish(WATCH_NOT_IMPLEMENTED, warnings)?;
    Ok(WatchDefinition { spec, handler })
}

/// A watch's `http_handler_config`: `path` (the URL), `method` (POST), `header`
/// (name → list of values), `timeout` (10s), `tls_skip_verify`.
fn decode_http_handler(mut s: Section<'_>, warnings: &mut Vec<String>) -> Result<HttpHandler, ConfigError> {
    let url = s.get("path", |v| {
        let url = decode_str(v, "an http:// or https:// URL")?;
        match reqwest::Url::parse(url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") && parsed.has_host() => Ok(url.to_string()),
            _ => Err(Mismatch::bad_string("an http:// or https:// URL", url)),
        }
    })?;
    let method = s.get("method", |v| {
        let method = decode_str(v, "an HTTP method")?;
        http::Method::from_bytes(method.to_ascii_uppercase().as_bytes())
            .map_err(|_| Mismatch::bad_string("an HTTP method such as \"POST\"", method))
    })?;
    let headers = s.get("header", |v| {
        let object = v.as_object().ok_or_else(|| Mismatch::new("an object of header name to list of values", v))?;
        let mut headers = Vec::new();
        for (name, values) in object {
            let at = |mut m: Mismatch| {
                m.at = format!(".{name}{}", m.at);
                m
            };
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(at(Mismatch::bad_string("a list of values under a valid header name", name)));
            }
            let values = decode_list(values, |value| {
                let value = decode_str(value, "a string")?;
                http::HeaderValue::from_str(value)
                    .map(|_| value.to_string())
                    .map_err(|_| Mismatch::bad_string("a header value (visible ASCII)", value))
            })
            .map_err(at)?;
            headers.extend(values.into_iter().map(|value| (name.clone(), value)));
        }
        Ok(headers)
    })?;
    let timeout = s.get("timeout", decode_positive_duration)?;
    let tls_skip_verify = s.get("tls_skip_verify", decode_bool)?;
    let url = url.ok_or_else(|| ConfigError::Invalid {
        what: format!("config {}: {}: \"path\" (the URL to call) is required", s.source, s.path),
    })?;
    s.finish("", warnings)?;
    Ok(HttpHandler {
        url,
        method: method.unwrap_or(http::Method::POST),
        headers: headers.unwrap_or_default(),
        timeout: timeout.unwrap_or(crate::watch::HTTP_HANDLER_TIMEOUT),
        tls_skip_verify: tls_skip_verify.unwrap_or(false),
    })
}

/// One JSON object of a config source, read key by key. Every key asked for is recorded as
/// known, which is what [`Section::finish`] checks the object's keys against.
struct Section<'a> {
    source: &'a str,
    /// Dotted path of this object ("" at the top level).
    path: String,
    object: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Section<'a> {
    fn new(source: &'a str, path: String, object: &'a Map<String, Value>) -> Self {
        Section { source, path, object, known: Vec::new() }
    }

    fn key_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    fn get<T>(
        &mut self,
        key: &'static str,
        decode: impl FnOnce(&'a Value) -> Result<T, Mismatch>,
    ) -> Result<Option<T>, ConfigError> {
        self.known.push(key);
        let Some(value) = self.object.get(key) else {
            return Ok(None);
        };
        decode(value).map(Some).map_err(|m| ConfigError::WrongType {
            path: self.source.to_string(),
            key: self.key_path(key) + &m.at,
            expected: m.expected,
            found: m.found,
        })
    }

    fn set<T>(
        &mut self,
        key: &'static str,
        target: &mut T,
        decode: impl FnOnce(&'a Value) -> Result<T, Mismatch>,
    ) -> Result<(), ConfigError> {
        set_if_some(target, self.get(key, decode)?);
        Ok(())
    }

    fn section(&mut self, key: &'static str) -> Result<Option<Section<'a>>, ConfigError> {
        let object = self.get(key, |v| v.as_object().ok_or_else(|| Mismatch::new("an object", v)))?;
        Ok(object.map(|object| Section::new(self.source, self.key_path(key), object)))
    }

    /// Warns once per key Consul documents but cairn ignores; fails on the first other key
    /// that was not asked for.
    fn finish(self, not_implemented: &str, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let not_implemented = not_implemented.split_whitespace();
        for key in self.object.keys() {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            if not_implemented.clone().any(|k| k == key) {
                warnings.push(format!(
                    "config {}: key {} is not implemented by cairn yet and is ignored",
                    self.source,
                    quote(&self.key_path(key))
                ));
                continue;
            }
            let candidates = self.known.iter().copied().chain(not_implemented);
            return Err(ConfigError::UnknownKey {
                path: self.source.to_string(),
                key: self.key_path(key),
                suggestion: closest(key, candidates).map(str::to_string),
            });
        }
        Ok(())
    }
}

/// The candidate nearest to a mistyped key, if near enough to be a plausible typo.
fn closest<'c>(key: &str, candidates: impl Iterator<Item = &'c str>) -> Option<&'c str> {
    let limit = 2.max(key.chars().count() / 3);
    candidates
        .map(|c| {
            let distance = if c.eq_ignore_ascii_case(key) { 0 } else { levenshtein(key, c) };
            (distance, c)
        })
        .filter(|&(distance, _)| distance <= limit)
        .min_by_key(|&(distance, _)| distance)
        .map(|(_, c)| c)
}

fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// What a value should have been and what it was; the `Section` adds file and key.
struct Mismatch {
    expected: String,
    found: String,
    /// Appended to the key path: `[2]` for a list element, `.web` for a map entry.
    at: String,
}

impl Mismatch {
    /// The value has the wrong JSON type: show its type and value.
    fn new(expected: impl Into<String>, found: &Value) -> Self {
        Mismatch { expected: expected.into(), found: describe(found), at: String::new() }
    }

    /// The value is a string of the right type but not allowed: show just the string.
    fn bad_string(expected: impl Into<String>, found: &str) -> Self {
        Mismatch { expected: expected.into(), found: quote(found), at: String::new() }
    }
}

fn describe(value: &Value) -> String {
    match value {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("string {}", quote(s)),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

fn decode_str<'v>(value: &'v Value, expected: &str) -> Result<&'v str, Mismatch> {
    value.as_str().ok_or_else(|| Mismatch::new(expected, value))
}

fn decode_bool(value: &Value) -> Result<bool, Mismatch> {
    value.as_bool().ok_or_else(|| Mismatch::new("true or false", value))
}

fn decode_uint<T: TryFrom<u64>>(value: &Value, min: u64, max: u64) -> Result<T, Mismatch> {
    let mismatch = || Mismatch::new(format!("an integer from {min} to {max}"), value);
    let n = value.as_u64().filter(|n| (min..=max).contains(n)).ok_or_else(mismatch)?;
    T::try_from(n).map_err(|_| mismatch())
}

fn decode_u32(value: &Value) -> Result<u32, Mismatch> {
    decode_uint(value, 0, u32::MAX.into())
}

fn decode_u64(value: &Value) -> Result<u64, Mismatch> {
    decode_uint(value, 0, u64::MAX)
}

fn decode_port(value: &Value) -> Result<u16, Mismatch> {
    decode_uint(value, 0, u16::MAX.into()).map_err(|mut m| {
        // Consul disables a listener with -1; say plainly that cairn cannot.
        if value.as_i64().is_some_and(|n| n < 0) {
            m.expected += " (a negative port to disable a listener is not supported)";
        }
        m
    })
}

fn decode_path(value: &Value) -> Result<PathBuf, Mismatch> {
    match decode_str(value, "a path")? {
        "" => Err(Mismatch::bad_string("a non-empty path", "")),
        s => Ok(PathBuf::from(s)),
    }
}

fn decode_node_name(value: &Value) -> Result<String, Mismatch> {
    match decode_str(value, "a node name")? {
        "" => Err(Mismatch::bad_string("a non-empty node name", "")),
        s => Ok(s.to_string()),
    }
}

const DATACENTER_EXPECTED: &str = "a datacenter name of lowercase letters, digits, '-' and '_'";

fn valid_datacenter(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn decode_datacenter(value: &Value) -> Result<String, Mismatch> {
    let s = decode_str(value, DATACENTER_EXPECTED)?;
    if valid_datacenter(s) {
        Ok(s.to_string())
    } else {
        Err(Mismatch::bad_string(DATACENTER_EXPECTED, s))
    }
}

fn decode_node_id(value: &Value) -> Result<String, Mismatch> {
    const EXPECTED: &str = "a UUID (8-4-4-4-12 hex digits)";
    let s = decode_str(value, EXPECTED)?;
    let groups: Vec<&str> = s.split('-').collect();
    let shaped = groups.len() == 5
        && groups
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(g, len)| g.len() == len && g.bytes().all(|b| b.is_ascii_hexdigit()));
    if shaped {
        Ok(s.to_ascii_lowercase())
    } else {
        Err(Mismatch::bad_string(EXPECTED, s))
    }
}

fn decode_ip(value: &Value) -> Result<IpAddr, Mismatch> {
    const EXPECTED: &str = "an IP address";
    let s = decode_str(value, EXPECTED)?;
    s.parse().map_err(|_| {
        // Consul takes go-sockaddr templates here; cairn does not, which is worth saying.
        if s.contains("{{") {
            Mismatch::bad_string(format!("{EXPECTED} (templates are not supported)"), s)
        } else {
            Mismatch::bad_string(EXPECTED, s)
        }
    })
}

fn decode_domain(value: &Value) -> Result<String, Mismatch> {
    const EXPECTED: &str = "a domain name such as \"consul\" or \"example.internal.\"";
    let s = decode_str(value, EXPECTED)?;
    let domain = s.to_ascii_lowercase();
    let name = domain.strip_suffix('.').unwrap_or(&domain);
    let valid = !name.is_empty()
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid {
        Ok(format!("{name}."))
    } else {
        Err(Mismatch::bad_string(EXPECTED, s))
    }
}

fn decode_recursor(value: &Value) -> Result<SocketAddr, Mismatch> {
    const EXPECTED: &str = "an IP address or IP:port (\"[v6]:port\" for IPv6)";
    let s = decode_str(value, EXPECTED)?;
    let bare = s.strip_prefix('[').and_then(|rest| rest.strip_suffix(']')).unwrap_or(s);
    s.parse::<SocketAddr>()
        .or_else(|_| bare.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
        .map_err(|_| Mismatch::bad_string(EXPECTED, s))
}

fn decode_cidr(value: &Value) -> Result<String, Mismatch> {
    const EXPECTED: &str = "a CIDR such as \"10.0.0.0/8\" or \"fd00::/8\"";
    let s = decode_str(value, EXPECTED)?;
    let valid = s.split_once('/').is_some_and(|(ip, prefix)| {
        let max = match ip.parse::<IpAddr>() {
            Ok(IpAddr::V4(_)) => 32,
            Ok(IpAddr::V6(_)) => 128,
            Err(_) => return false,
        };
        prefix.bytes().all(|b| b.is_ascii_digit()) && prefix.parse::<u8>().is_ok_and(|p| p <= max)
    });
    if valid {
        Ok(s.to_string())
    } else {
        Err(Mismatch::bad_string(EXPECTED, s))
    }
}

const DURATION_EXPECTED: &str = "a duration string such as \"10s\", \"1h30m\" or \"250ms\"";

fn decode_duration(value: &Value) -> Result<Duration, Mismatch> {
    let s = decode_str(value, DURATION_EXPECTED)?;
    parse_duration(s).map_err(|reason| Mismatch {
        expected: DURATION_EXPECTED.to_string(),
        found: format!("{} ({reason})", quote(s)),
        at: String::new(),
    })
}

fn decode_service_ttl(value: &Value) -> Result<Vec<(String, Duration)>, Mismatch> {
    const EXPECTED: &str = "an object of service name (or prefix ending in '*') to duration";
    let object = value.as_object().ok_or_else(|| Mismatch::new(EXPECTED, value))?;
    object
        .iter()
        .map(|(name, ttl)| {
            let at = |mut m: Mismatch| {
                m.at = format!(".{name}");
                m
            };
            let stem = name.strip_suffix('*').unwrap_or(name);
            if stem.contains('*') || name.is_empty() {
                return Err(at(Mismatch::bad_string("a service name, optionally ending in '*'", name)));
            }
            Ok((name.clone(), decode_duration(ttl).map_err(at)?))
        })
        .collect()
}

fn decode_strategy(value: &Value) -> Result<RecursorStrategy, Mismatch> {
    const EXPECTED: &str = "\"sequential\" or \"random\"";
    match decode_str(value, EXPECTED)? {
        "sequential" => Ok(RecursorStrategy::Sequential),
        "random" => Ok(RecursorStrategy::Random),
        other => Err(Mismatch::bad_string(EXPECTED, other)),
    }
}

const LOG_LEVEL_EXPECTED: &str = "one of trace, debug, info, warn, error";

fn decode_log_level(value: &Value) -> Result<LogLevel, Mismatch> {
    let s = decode_str(value, LOG_LEVEL_EXPECTED)?;
    LogLevel::parse(s).ok_or_else(|| Mismatch::bad_string(LOG_LEVEL_EXPECTED, s))
}

/// A `-join`/`retry_join` address: `host`, `host:port`, an IP or `[v6]:port`.
fn decode_join_addr(value: &Value) -> Result<String, Mismatch> {
    let s = decode_str(value, "an address (host or host:port)")?.trim();
    if s.is_empty() || s.contains(char::is_whitespace) {
        return Err(Mismatch::new("an address (host or host:port)", value));
    }
    Ok(s.to_string())
}

fn decode_encrypt_key(value: &Value) -> Result<String, Mismatch> {
    let s = decode_str(value, "a base64 key of 32 bytes (cairn keygen)")?;
    crate::gossip::GossipKey::from_base64(s)
        .map(|_| s.trim().to_string())
        .map_err(|_| Mismatch::new("a base64 key of 32 bytes (cairn keygen)", value))
}

fn decode_positive_duration(value: &Value) -> Result<Duration, Mismatch> {
    decode_duration(value)
        .and_then(|d| if d.is_zero() { Err(Mismatch::new("a duration above 0", value)) } else { Ok(d) })
}

fn decode_list<T>(value: &Value, decode_item: impl Fn(&Value) -> Result<T, Mismatch>) -> Result<Vec<T>, Mismatch> {
    let items = value.as_array().ok_or_else(|| Mismatch::new("a list", value))?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            decode_item(item).map_err(|mut m| {
                m.at = format!("[{i}]");
                m
            })
        })
        .collect()
}

/// The machine's hostname, Consul's default node name.
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes, which is the length passed;
    // gethostname writes no more than that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    // POSIX leaves a truncated name without a NUL; then the whole buffer is the name.
    let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    let name = std::str::from_utf8(&buf[..len]).ok()?.trim();
    (!name.is_empty()).then(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    /// Sources named a.json, b.json, ... in order.
    fn load_with(files: &[&str], flags: &AgentFlags) -> Result<(Config, Vec<String>), ConfigError> {
        let sources: Vec<(String, String)> =
            files.iter().zip('a'..).map(|(text, name)| (format!("{name}.json"), text.to_string())).collect();
        Config::from_sources(&sources, flags)
    }

    fn load(files: &[&str]) -> Config {
        match load_with(files, &AgentFlags::default()) {
            Ok((config, _)) => config,
            Err(e) => panic!("{files:?} should load, got: {e}"),
        }
    }

    fn load_error(files: &[&str]) -> String {
        match load_with(files, &AgentFlags::default()) {
            Ok(_) => panic!("{files:?} should fail to load"),
            Err(e) => e.to_string(),
        }
    }

    const DATA_DIR: &str = r#"{"data_dir": "/var/lib/cairn"}"#;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentFlags,
    }

    fn parse_flags(args: &[&str]) -> Result<AgentFlags, clap::Error> {
        let argv = normalize_args(strings(&[&["cairn"], args].concat()));
        Cli::try_parse_from(argv).map(|cli| cli.agent)
    }

    #[test]
    fn gossip_settings_are_checked_with_the_file_and_key_named() {
        let err = load_error(&[DATA_DIR, r#"{"encrypt": "c2hvcnQ="}"#]);
        assert!(err.contains("b.json") && err.contains("encrypt") && err.contains("32 bytes"), "{err}");
        let err = load_error(&[DATA_DIR, r#"{"reconnect_timeout": "1h"}"#]);
        assert!(err.contains("reconnect_timeout") && err.contains("at least 8h"), "{err}");
        let err = load_error(&[DATA_DIR, r#"{"retry_join": "10.0.0.1"}"#]);
        assert!(err.contains("retry_join"), "{err}");
        let err = load_error(&[DATA_DIR, r#"{"gossip_lan": {"probe_interval": "1s", "probe_timeout": "2s"}}"#]);
        assert!(err.contains("probe_timeout must be shorter"), "{err}");
        let err = load_error(&[DATA_DIR, r#"{"gossip_lan": {"probe_intervall": "1s"}}"#]);
        assert!(err.contains("probe_intervall") && err.contains("probe_interval"), "{err}");
        // A bad -encrypt flag is refused with the flag named.
        let flags = parse_flags(&["-encrypt", "nope"]).expect("flags parse");
        let err = load_with(&[DATA_DIR], &flags).map(|_| ()).unwrap_err().to_string();
        assert!(err.contains("-encrypt") && err.contains("cairn keygen"), "{err}");
        // Joins from files and flags add up; leave_on_terminate defaults by role.
        let flags = parse_flags(&["-join", "a", "-retry-join", "b:1"]).expect("flags parse");
        let (config, _) = load_with(&[DATA_DIR, r#"{"retry_join": ["c"]}"#], &flags).unwrap();
        assert_eq!(
            (config.start_join, config.retry_join),
            (vec!["a".to_string()], vec!["c".to_string(), "b:1".to_string()])
        );
        assert_eq!(config.leave_on_terminate, None);
    }

    #[test]
    fn normalize_args_rewrites_only_single_dash_long_flags() {
        let cases: &[(&[&str], &[&str])] = &[
            (&["-dev"], &["--dev"]),
            (&["--dev"], &["--dev"]),
            (&["-bootstrap-expect", "3"], &["--bootstrap-expect", "3"]),
            (&["-http-port=0"], &["--http-port=0"]),
            (&["-x=1"], &["--x=1"]),
            (&["-h"], &["-h"]),
            (&["-1", "-1.5"], &["-1", "-1.5"]),
            (&["-data-dir", "/tmp/-x"], &["--data-dir", "/tmp/-x"]),
            (&["-http-port=-1"], &["--http-port=-1"]),
            (&["-", "agent"], &["-", "agent"]),
            (&["-dev", "--", "-server"], &["--dev", "--", "-server"]),
        ];
        for (input, expected) in cases {
            assert_eq!(normalize_args(strings(input)), strings(expected), "{input:?}");
        }
    }

    #[test]
    fn consul_style_flags_parse() {
        let flags = parse_flags(&[
            "-server",
            "-bootstrap-expect",
            "3",
            "-http-port=0",
            "-config-dir",
            "/a",
            "-config-dir=/b",
            "-log-level",
            "ERR",
            "--bind",
            "10.0.0.1",
            "-datacenter",
            "east-1",
        ])
        .expect("flags parse");
        assert!(flags.server && !flags.dev);
        assert_eq!(flags.bootstrap_expect, Some(3));
        assert_eq!(flags.http_port, Some(0));
        assert_eq!(flags.config_dir, [PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(flags.log_level, Some(LogLevel::Error));
        assert_eq!(flags.bind, Some("10.0.0.1".parse().expect("ip")));
        assert_eq!(flags.datacenter.as_deref(), Some("east-1"));
    }

    #[test]
    fn bad_flags_are_clap_errors_naming_the_flag() {
        let cases: &[(&[&str], &str)] = &[
            (&["-bootstrap-expect", "0"], "--bootstrap-expect"),
            (&["-bootstrap", "-bootstrap-expect", "3"], "--bootstrap"),
            (&["-log-level", "loud"], "--log-level"),
            (&["-datacenter", "DC1"], "--datacenter"),
            (&["-http-port", "70000"], "--http-port"),
            (&["-bind", "10.0.0.x"], "--bind"),
        ];
        for (args, flag) in cases {
            let error = parse_flags(args).expect_err("should be rejected").to_string();
            assert!(error.contains(flag), "{args:?}: {error}");
        }
    }

    #[test]
    fn plain_file_loads_with_defaults() {
        let config = load(&[r#"{"datacenter":"dc1","data_dir":"/var/lib/cairn"}"#]);
        assert_eq!(config.datacenter, "dc1");
        assert_eq!(config.data_dir, Some(PathBuf::from("/var/lib/cairn")));
        assert!(!config.server && !config.dev);
        assert_eq!(config.bootstrap_expect, None);
        assert_eq!(config.bind_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(config.client_addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.ports, Ports::default());
        assert_eq!(config.ports.dns, 8600);
        assert_eq!(config.domain, "consul.");
        assert_eq!(config.dns_config, DnsConfig::default());
        assert_eq!(config.dns_config.max_stale, Duration::from_secs(87_600 * 3600));
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.log_level, LogLevel::Info);
        assert_eq!(config.lmdb_map_size_bytes, 1024 * MIB);
        assert!(!config.node_name.is_empty());
    }

    #[test]
    fn every_implemented_key_is_decoded() {
        let config = load(&[r#"{
            "datacenter": "east_2", "data_dir": "/d", "node_name": "n1",
            "node_id": "ADF4238A-882B-9DDC-4A9D-5B6758E4159E",
            "server": true, "bootstrap_expect": 3,
            "bind_addr": "10.0.0.1", "advertise_addr": "192.0.2.1", "client_addr": "::",
            "ports": {"http": 1, "dns": 2, "server": 3, "serf_lan": 0},
            "addresses": {"http": "127.0.0.2", "dns": "::1"},
            "domain": "Example.Internal", "alt_domain": "cluster.local.",
            "recursor": "9.9.9.9", "recursors": ["8.8.8.8", "1.1.1.1:5353", "[::1]:5353", "::1"],
            "dns_config": {
                "allow_stale": false, "max_stale": "10s", "node_ttl": "1m",
                "service_ttl": {"*": "5s", "web": "30s", "db-*": "1.5s"},
                "udp_answer_limit": 8, "a_record_limit": 5, "only_passing": true,
                "enable_truncate": true, "recursor_timeout": "250ms",
                "recursor_strategy": "random", "recursor_allow": ["10.0.0.0/8", "fd00::/8"],
                "soa": {"refresh": 1, "retry": 2, "expire": 3, "min_ttl": 4}
            },
            "log_level": "WARN",
            "limits": {
                "http_max_conns_per_client": 10, "kv_max_value_size": 11,
                "http_max_body_bytes": 12, "http_header_read_timeout": "5s",
                "max_blocking_queries": 13, "txn_max_ops": 14, "max_pending_writes": 15,
                "dns_max_forwards_in_flight": 16, "checks_max_concurrent": 17
            },
            "lmdb_map_size_mb": 2, "zones_dir": "/z",
            "enable_local_script_checks": true, "check_update_interval": "1m",
            "anti_entropy_interval": "2s",
            "start_join": ["10.0.0.2"], "retry_join": ["consul.example:8301", "[::1]:1"],
            "encrypt": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "reconnect_timeout": "9h",
            "leave_on_terminate": true,
            "performance": {"raft_multiplier": 5}, "raft_snapshot_threshold": 100,
            "raft_trailing_logs": 7,
            "gossip_lan": {"probe_interval": "2s", "probe_timeout": "1s", "suspicion_mult": 5,
                           "gossip_interval": "300ms", "gossip_nodes": 4},
            "service": {"name": "a", "check": {"args": ["/bin/true"], "interval": "5s"}},
            "services": [{"name": "b"}]
        }"#]);
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        let sock = |s: &str| s.parse::<SocketAddr>().expect("socket address");
        let expected = Config {
            datacenter: "east_2".into(),
            data_dir: Some("/d".into()),
            node_name: "n1".into(),
            node_id: Some("adf4238a-882b-9ddc-4a9d-5b6758e4159e".into()),
            server: true,
            dev: false,
            bootstrap_expect: Some(3),
            bind_addr: ip("10.0.0.1"),
            advertise_addr: Some(ip("192.0.2.1")),
            client_addr: ip("::"),
            ports: Ports { http: 1, dns: 2, server: 3, serf_lan: 0 },
            addresses: Addresses { http: Some(ip("127.0.0.2")), dns: Some(ip("::1")) },
            domain: "example.internal.".into(),
            alt_domain: Some("cluster.local.".into()),
            recursors: vec![
                sock("9.9.9.9:53"),
                sock("8.8.8.8:53"),
                sock("1.1.1.1:5353"),
                sock("[::1]:5353"),
                sock("[::1]:53"),
            ],
            dns_config: DnsConfig {
                allow_stale: false,
                max_stale: Duration::from_secs(10),
                node_ttl: Duration::from_secs(60),
                service_ttl: vec![
                    ("*".into(), Duration::from_secs(5)),
                    ("db-*".into(), Duration::from_millis(1500)),
                    ("web".into(), Duration::from_secs(30)),
                ],
                udp_answer_limit: 8,
                a_record_limit: 5,
                only_passing: true,
                enable_truncate: true,
                recursor_timeout: Duration::from_millis(250),
                recursor_strategy: RecursorStrategy::Random,
                recursor_allow: vec!["10.0.0.0/8".into(), "fd00::/8".into()],
                soa: Soa { refresh: 1, retry: 2, expire: 3, min_ttl: 4 },
            },
            log_level: LogLevel::Warn,
            log_json: false,
            limits: Limits {
                http_max_conns_per_client: 10,
                kv_max_value_size: 11,
                http_max_body_bytes: 12,
                http_header_read_timeout: Duration::from_secs(5),
                max_blocking_queries: 13,
                txn_max_ops: 14,
                max_pending_writes: 15,
                dns_max_forwards_in_flight: 16,
                checks_max_concurrent: 17,
                snapshot_max_bytes: 4 * 1024 * MIB,
            },
            lmdb_map_size_bytes: 2 * MIB,
            zones_dir: Some("/z".into()),
            services: ["a", "b"]
                .iter()
                .map(|name| {
                    let def = if *name == "a" {
                        serde_json::json!({"name": "a", "check": {"args": ["/bin/true"], "interval": "5s"}})
                    } else {
                        serde_json::json!({"name": "b"})
                    };
                    decode_service(&def, Strictness::Strict, ScriptPolicy::Allowed).expect("valid")
                })
                .collect(),
            enable_local_script_checks: true,
            enable_script_checks: false,
            check_update_interval: Duration::from_secs(60),
            anti_entropy_interval: Duration::from_secs(2),
            start_join: vec!["10.0.0.2".into()],
            retry_join: vec!["consul.example:8301".into(), "[::1]:1".into()],
            encrypt: Some("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into()),
            reconnect_timeout: Duration::from_secs(9 * 3600),
            leave_on_terminate: Some(true),
            gossip_lan: GossipLan {
                probe_interval: Duration::from_secs(2),
                probe_timeout: Duration::from_secs(1),
                suspicion_mult: 5,
                gossip_interval: Duration::from_millis(300),
                gossip_nodes: 4,
            },
            raft: RaftTuning { multiplier: 5, snapshot_threshold: 100, trailing_logs: 7 },
            watches: Vec::new(),
        };
        assert_eq!(config, expected);
    }

    #[test]
    fn merge_replaces_scalars_merges_objects_appends_arrays() {
        let mut merged = Map::new();
        for text in
            [r#"{"a": 1, "o": {"x": 1, "y": [1]}, "l": [1]}"#, r#"{"a": 2, "o": {"z": 3, "y": [2]}, "l": [2, 3]}"#]
        {
            merge_objects(&mut merged, parse_object("t.json", text).expect("object"));
        }
        let expected = serde_json::json!({"a": 2, "o": {"x": 1, "y": [1, 2], "z": 3}, "l": [1, 2, 3]});
        assert_eq!(Value::Object(merged), expected);

        let config = load(&[
            r#"{"datacenter": "one", "data_dir": "/d", "recursors": ["1.1.1.1"],
                "dns_config": {"node_ttl": "5s", "service_ttl": {"web": "1s", "db": "1s"}}}"#,
            r#"{"datacenter": "two", "recursors": ["8.8.8.8"],
                "dns_config": {"only_passing": true, "service_ttl": {"db": "2s"}}}"#,
        ]);
        assert_eq!(config.datacenter, "two");
        assert_eq!(config.recursors, ["1.1.1.1:53", "8.8.8.8:53"].map(|s| s.parse::<SocketAddr>().expect("addr")));
        assert_eq!(config.dns_config.node_ttl, Duration::from_secs(5));
        assert!(config.dns_config.only_passing);
        assert_eq!(
            config.dns_config.service_ttl,
            [("db".to_string(), Duration::from_secs(2)), ("web".to_string(), Duration::from_secs(1))]
        );
    }

    #[test]
    fn a_list_set_in_a_file_replaces_its_default() {
        let config = load(&[DATA_DIR, r#"{"dns_config": {"recursor_allow": ["10.0.0.0/8"]}}"#]);
        assert_eq!(config.dns_config.recursor_allow, ["10.0.0.0/8"]);
    }

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("cairn-config-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("create temp dir");
            TempDir(dir)
        }

        fn write(&self, name: &str, text: &str) -> PathBuf {
            let path = self.0.join(name);
            std::fs::write(&path, text).expect("write temp file");
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn config_dir_is_read_in_lexical_order_then_config_files() {
        let dir = TempDir::new("lexical");
        dir.write("b.json", r#"{"datacenter": "from-b", "recursors": ["2.2.2.2"]}"#);
        dir.write("10-first.json", r#"{"datacenter": "from-10", "data_dir": "/d"}"#);
        dir.write("a.json", r#"{"datacenter": "from-a", "recursors": ["1.1.1.1"]}"#);
        dir.write("notes.txt", "not json at all");
        dir.write("old.hcl", "datacenter = \"x\"");
        let flags = AgentFlags { config_dir: vec![dir.0.clone()], ..AgentFlags::default() };
        let (config, warnings) = Config::load(&flags).expect("loads");
        assert_eq!(config.datacenter, "from-b");
        assert_eq!(config.recursors, ["1.1.1.1:53", "2.2.2.2:53"].map(|s| s.parse::<SocketAddr>().expect("addr")));
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("old.hcl"), "{warnings:?}");

        let outside = TempDir::new("lexical-file");
        let file = outside.write("z.json", r#"{"datacenter": "from-file"}"#);
        let flags = AgentFlags { config_file: vec![file], ..flags };
        assert_eq!(Config::load(&flags).expect("loads").0.datacenter, "from-file");
    }

    #[test]
    fn missing_sources_are_io_errors_naming_them() {
        let dir = TempDir::new("missing");
        let missing = dir.0.join("nope");
        let flags = AgentFlags { config_dir: vec![missing.clone()], ..AgentFlags::default() };
        let error = Config::load(&flags).expect_err("missing dir").to_string();
        assert_eq!(error, format!("config {}: cannot read: No such file or directory", missing.display()));

        let flags = AgentFlags { config_file: vec![missing.join("a.json")], ..AgentFlags::default() };
        let error = Config::load(&flags).expect_err("missing file").to_string();
        assert!(error.contains("nope/a.json: cannot read"), "{error}");
    }

    #[test]
    fn bad_files_are_reported_with_file_key_and_value() {
        let cases: &[(&str, &str)] = &[
            (r#"{"dns_confg": {}}"#, r#"config a.json: unknown key "dns_confg" (did you mean "dns_config"?)"#),
            (
                r#"{"dns_config": {"udp_answer_limt": 3}}"#,
                r#"config a.json: unknown key "dns_config.udp_answer_limt" (did you mean "udp_answer_limit"?)"#,
            ),
            (
                r#"{"dns_config": {"soa": {"minttl": 3}}}"#,
                r#"config a.json: unknown key "dns_config.soa.minttl" (did you mean "min_ttl"?)"#,
            ),
            (r#"{"Datacenter": "dc1"}"#, r#"config a.json: unknown key "Datacenter" (did you mean "datacenter"?)"#),
            (r#"{"telemetri": {}}"#, r#"config a.json: unknown key "telemetri" (did you mean "telemetry"?)"#),
            (r#"{"flux_capacitor": 1}"#, r#"config a.json: unknown key "flux_capacitor""#),
            (
                r#"{"ports": {"http": "abc"}}"#,
                r#"config a.json: key "ports.http" must be an integer from 0 to 65535, got string "abc""#,
            ),
            (
                r#"{"ports": {"dns": -1}}"#,
                r#"config a.json: key "ports.dns" must be an integer from 0 to 65535 (a negative port to disable a listener is not supported), got -1"#,
            ),
            (
                r#"{"ports": {"http": 70000}}"#,
                r#"config a.json: key "ports.http" must be an integer from 0 to 65535, got 70000"#,
            ),
            (r#"{"ports": 8500}"#, r#"config a.json: key "ports" must be an object, got 8500"#),
            (r#"{"server": "true"}"#, r#"config a.json: key "server" must be true or false, got string "true""#),
            (r#"{"bind_addr": "10.0.0.x"}"#, r#"config a.json: key "bind_addr" must be an IP address, got "10.0.0.x""#),
            (
                r#"{"bind_addr": "{{ GetPrivateIP }}"}"#,
                r#"config a.json: key "bind_addr" must be an IP address (templates are not supported), got "{{ GetPrivateIP }}""#,
            ),
            (
                r#"{"datacenter": "DC 1"}"#,
                r#"config a.json: key "datacenter" must be a datacenter name of lowercase letters, digits, '-' and '_', got "DC 1""#,
            ),
            (
                r#"{"node_id": "not-a-uuid"}"#,
                r#"config a.json: key "node_id" must be a UUID (8-4-4-4-12 hex digits), got "not-a-uuid""#,
            ),
            (
                r#"{"dns_config": {"max_stale": 10}}"#,
                r#"config a.json: key "dns_config.max_stale" must be a duration string such as "10s", "1h30m" or "250ms", got 10"#,
            ),
            (
                r#"{"dns_config": {"node_ttl": "10"}}"#,
                r#"config a.json: key "dns_config.node_ttl" must be a duration string such as "10s", "1h30m" or "250ms", got "10" (missing unit after 10)"#,
            ),
            (
                r#"{"dns_config": {"service_ttl": {"web": "5x"}}}"#,
                r#"config a.json: key "dns_config.service_ttl.web" must be a duration string such as "10s", "1h30m" or "250ms", got "5x" (unknown unit "x")"#,
            ),
            (
                r#"{"dns_config": {"service_ttl": {"w*b": "5s"}}}"#,
                r#"config a.json: key "dns_config.service_ttl.w*b" must be a service name, optionally ending in '*', got "w*b""#,
            ),
            (
                r#"{"dns_config": {"udp_answer_limit": 9}}"#,
                r#"config a.json: key "dns_config.udp_answer_limit" must be an integer from 1 to 8, got 9"#,
            ),
            (
                r#"{"dns_config": {"recursor_strategy": "fastest"}}"#,
                r#"config a.json: key "dns_config.recursor_strategy" must be "sequential" or "random", got "fastest""#,
            ),
            (
                r#"{"dns_config": {"recursor_allow": ["10.0.0.0/8", "10.0.0.0/33"]}}"#,
                r#"config a.json: key "dns_config.recursor_allow[1]" must be a CIDR such as "10.0.0.0/8" or "fd00::/8", got "10.0.0.0/33""#,
            ),
            (
                r#"{"recursors": ["8.8.8.8", "dns.google"]}"#,
                r#"config a.json: key "recursors[1]" must be an IP address or IP:port ("[v6]:port" for IPv6), got "dns.google""#,
            ),
            (r#"{"recursors": "8.8.8.8"}"#, r#"config a.json: key "recursors" must be a list, got string "8.8.8.8""#),
            (
                r#"{"domain": "consul..local"}"#,
                r#"config a.json: key "domain" must be a domain name such as "consul" or "example.internal.", got "consul..local""#,
            ),
            (
                r#"{"log_level": "loud"}"#,
                r#"config a.json: key "log_level" must be one of trace, debug, info, warn, error, got "loud""#,
            ),
            (
                r#"{"bootstrap_expect": 0}"#,
                r#"config a.json: key "bootstrap_expect" must be an integer from 1 to 4294967295, got 0"#,
            ),
            (
                r#"{"server": true, "bootstrap": true, "bootstrap_expect": 3}"#,
                r#"config a.json: "bootstrap": true and "bootstrap_expect": 3 contradict each other; set only one"#,
            ),
            (
                r#"{"lmdb_map_size_mb": 0}"#,
                r#"config a.json: key "lmdb_map_size_mb" must be an integer from 1 to 17592186044415, got 0"#,
            ),
            (r#"{"data_dir": ""}"#, r#"config a.json: key "data_dir" must be a non-empty path, got """#),
            (
                "{\n  \"datacenter\": \"dc1\",\n  \"server\": true,,\n}",
                "config a.json: invalid JSON at line 3 column 18: key must be a string",
            ),
            ("", "config a.json: invalid JSON at line 1 column 0: EOF while parsing a value"),
            ("[1, 2]", "config a.json: the top level must be a JSON object, got an array"),
        ];
        for (text, expected) in cases {
            assert_eq!(load_error(&[text]), *expected, "{text}");
        }
    }

    #[test]
    fn errors_name_the_file_that_holds_the_key() {
        let error = load_error(&[DATA_DIR, r#"{"server": true}"#, r#"{"ports": {"http": true}}"#]);
        assert!(error.starts_with("config c.json: "), "{error}");
    }

    #[test]
    fn a_multi_line_value_still_gives_a_one_line_error() {
        let error = load_error(&[r#"{"bind_addr": "10.0.0.1\nx"}"#]);
        assert!(!error.contains('\n'), "{error}");
    }

    #[test]
    fn not_implemented_keys_warn_once_each_and_load() {
        let (config, warnings) = load_with(
            &[
                DATA_DIR,
                r#"{"telemetry": {"statsd_address": "x"}, "ports": {"grpc": 8502, "http": 1},
                    "dns_config": {"use_cache": true}, "limits": {"rpc_rate": 5}}"#,
            ],
            &AgentFlags::default(),
        )
        .expect("loads");
        assert_eq!(config.ports.http, 1);
        assert_eq!(
            warnings,
            [
                r#"config b.json: key "ports.grpc" is not implemented by cairn yet and is ignored"#,
                r#"config b.json: key "dns_config.use_cache" is not implemented by cairn yet and is ignored"#,
                r#"config b.json: key "limits.rpc_rate" is not implemented by cairn yet and is ignored"#,
                r#"config b.json: key "telemetry" is not implemented by cairn yet and is ignored"#,
            ]
        );
    }

    #[test]
    fn flags_win_over_files() {
        let flags = parse_flags(&[
            "-data-dir",
            "/flag",
            "-datacenter",
            "flagdc",
            "-node",
            "flagnode",
            "-bind",
            "10.1.1.1",
            "-client",
            "0.0.0.0",
            "-http-port",
            "0",
            "-dns-port",
            "53",
            "-server-port",
            "1",
            "-serf-lan-port",
            "2",
            "-log-level",
            "debug",
            "-server",
            "-bootstrap",
        ])
        .expect("flags parse");
        let file = r#"{"data_dir": "/file", "datacenter": "filedc", "node_name": "filenode",
            "bind_addr": "10.2.2.2", "client_addr": "127.0.0.5", "log_level": "trace",
            "ports": {"http": 1, "dns": 2, "server": 3, "serf_lan": 4}, "bootstrap_expect": 5}"#;
        let (config, _) = load_with(&[file], &flags).expect("loads");
        assert_eq!(config.data_dir, Some(PathBuf::from("/flag")));
        assert_eq!(config.datacenter, "flagdc");
        assert_eq!(config.node_name, "flagnode");
        assert_eq!(config.bind_addr, "10.1.1.1".parse::<IpAddr>().expect("ip"));
        assert_eq!(config.client_addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(config.ports, Ports { http: 0, dns: 53, server: 1, serf_lan: 2 });
        assert_eq!(config.log_level, LogLevel::Debug);
        assert!(config.server);
        assert_eq!(config.bootstrap_expect, Some(1));
    }

    #[test]
    fn dev_mode_defaults() {
        let flags = AgentFlags { dev: true, ..AgentFlags::default() };
        let (config, warnings) = load_with(&[], &flags).expect("dev needs no files");
        assert!(config.dev && config.server);
        assert_eq!(config.bootstrap_expect, Some(1));
        assert_eq!(config.bind_addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.client_addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.data_dir, None);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn semantic_errors_after_merge() {
        let dev = AgentFlags { dev: true, ..AgentFlags::default() };
        let server = AgentFlags { server: true, ..AgentFlags::default() };
        let cases: &[(&[&str], &AgentFlags, &str)] = &[
            (&[], &server, r#"data_dir is required: set "data_dir" in a config file or pass -data-dir"#),
            (
                &[r#"{"datacenter": "dc1"}"#],
                &AgentFlags::default(),
                r#"data_dir is required: set "data_dir" in a config file or pass -data-dir"#,
            ),
            (
                &[DATA_DIR, r#"{"bootstrap_expect": 3}"#],
                &AgentFlags::default(),
                r#"bootstrap_expect (or bootstrap) is set but this agent is not a server: set "server": true or pass -server"#,
            ),
            (
                &[r#"{"server": true, "bootstrap_expect": 3}"#, r#"{"bootstrap": true}"#],
                &AgentFlags::default(),
                r#"config a.json, b.json: "bootstrap": true and "bootstrap_expect": 3 contradict each other; set only one"#,
            ),
            (&[r#"{"bootstrap_expect": 3}"#], &dev, "-dev runs a single server: bootstrap_expect must be 1 or unset"),
            (&[r#"{"server": false}"#], &dev, r#"-dev runs a single server: remove "server": false"#),
        ];
        for (files, flags, expected) in cases {
            match load_with(files, flags) {
                Ok(_) => panic!("{files:?} should fail"),
                Err(e) => assert_eq!(e.to_string(), *expected, "{files:?}"),
            }
        }
    }

    #[test]
    fn even_bootstrap_expect_warns() {
        let flags = AgentFlags { server: true, bootstrap_expect: Some(4), ..AgentFlags::default() };
        let (_, warnings) = load_with(&[DATA_DIR], &flags).expect("loads");
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].starts_with("bootstrap_expect = 4"), "{warnings:?}");
    }

    #[test]
    fn durations_parse_as_go_does() {
        let ok: &[(&str, Duration)] = &[
            ("10s", Duration::from_secs(10)),
            ("5m", Duration::from_secs(300)),
            ("1h30m", Duration::from_secs(5400)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            (".5s", Duration::from_millis(500)),
            ("0", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("+3s", Duration::from_secs(3)),
            ("87600h", Duration::from_secs(87_600 * 3600)),
            ("1h1m1s1ms1us1µs1ns", Duration::from_nanos(3_661_001_002_001)),
            ("0.000000001s", Duration::from_nanos(1)),
        ];
        for (input, expected) in ok {
            assert_eq!(parse_duration(input), Ok(*expected), "{input}");
        }
        for input in ["", "10", "s", "-1s", "10x", ".s", "1..5s", "1s2", "3000000h", "1 s"] {
            assert!(parse_duration(input).is_err(), "{input} should be rejected");
        }
    }

    #[test]
    fn recursors_parse() {
        let cases = [
            ("8.8.8.8", "8.8.8.8:53"),
            ("8.8.8.8:5353", "8.8.8.8:5353"),
            ("::1", "[::1]:53"),
            ("[::1]", "[::1]:53"),
            ("[::1]:5353", "[::1]:5353"),
        ];
        for (input, expected) in cases {
            let parsed = decode_recursor(&Value::from(input)).ok();
            assert_eq!(parsed, expected.parse().ok(), "{input}");
        }
        for input in ["dns.google", "8.8.8.8:", "8.8.8.8:99999", "::1:53x", ""] {
            assert!(decode_recursor(&Value::from(input)).is_err(), "{input}");
        }
    }

    #[test]
    fn domains_are_normalised() {
        for (input, expected) in [
            ("consul", "consul."),
            ("Consul.", "consul."),
            ("Example.Internal", "example.internal."),
            ("my_zone.local.", "my_zone.local."),
        ] {
            let config = load(&[DATA_DIR, &format!(r#"{{"domain": "{input}", "alt_domain": "{input}"}}"#)]);
            assert_eq!(config.domain, expected, "{input}");
            assert_eq!(config.alt_domain.as_deref(), Some(expected), "{input}");
        }
        for input in ["", ".", "a..b", "a b", "a.b/c"] {
            assert!(decode_domain(&Value::from(input)).is_err(), "{input}");
        }
    }

    #[test]
    fn did_you_mean_needs_a_plausible_typo() {
        let known = ["datacenter", "data_dir", "domain", "dns_config"];
        let cases = [
            ("datacentre", Some("datacenter")),
            ("data-dir", Some("data_dir")),
            ("DNS_CONFIG", Some("dns_config")),
            ("domian", Some("domain")),
            ("zzz", None),
            ("acl", None),
        ];
        for (key, expected) in cases {
            assert_eq!(closest(key, known.into_iter()), expected, "{key}");
        }
    }

    #[test]
    fn watches_load_from_every_file_in_order() {
        let (config, warnings) = load_with(
            &[
                DATA_DIR,
                r#"{"watches": [{"type": "key", "key": "app/config", "args": ["/usr/bin/reload", "-x"]}]}"#,
                r#"{"watches": [
                    {"type": "service", "service": "web", "tag": "v1", "passingonly": true, "stale": true,
                     "handler_type": "http",
                     "http_handler_config": {"path": "https://hooks.example/x", "method": "put",
                        "header": {"X-Auth": ["a", "b"]}, "timeout": "3s", "tls_skip_verify": true}},
                    {"type": "checks", "state": "critical", "handler": "echo hi", "token": "t"}
                ]}"#,
            ],
            &AgentFlags::default(),
        )
        .expect("loads");
        assert_eq!(config.watches.len(), 3);
        assert_eq!(config.watches[0].spec.path().as_deref(), Ok("/v1/kv/app/config"));
        assert_eq!(
            config.watches[0].handler,
            Handler::Script { args: strings(&["/usr/bin/reload", "-x"]), capture: true }
        );
        assert_eq!(config.watches[1].spec.path().as_deref(), Ok("/v1/health/service/web?tag=v1&passing&stale"));
        assert_eq!(
            config.watches[1].handler,
            Handler::Http(HttpHandler {
                url: "https://hooks.example/x".into(),
                method: http::Method::PUT,
                headers: vec![("X-Auth".into(), "a".into()), ("X-Auth".into(), "b".into())],
                timeout: Duration::from_secs(3),
                tls_skip_verify: true,
            })
        );
        assert_eq!(
            config.watches[2].handler,
            Handler::Script { args: strings(&["/bin/sh", "-c", "echo hi"]), capture: true }
        );
        assert_eq!(
            warnings,
            [
                r#"config c.json: watches[1]: "handler" is deprecated; use "args" (a program and its arguments)"#,
                r#"config c.json: key "watches[1].token" is not implemented by cairn yet and is ignored"#,
            ]
        );
    }

    #[test]
    fn bad_watches_are_refused_naming_the_file_and_entry() {
        let script = r#""args": ["/bin/true"]"#;
        let cases = [
            (r#"{"watches": {}}"#.to_string(), r#"key "watches" must be a list of watch definitions, got an object"#),
            (r#"{"watches": [1]}"#.to_string(), r#"key "watches[0]" must be a watch definition (an object), got 1"#),
            (format!(r#"{{"watches": [{{{script}}}]}}"#), r#"watches[0]: "type" is required"#),
            (
                format!(r#"{{"watches": [{{"type": "event", {script}}}]}}"#),
                r#"key "watches[0].type" must be one of key, keyprefix, services, nodes, service, checks, got "event""#,
            ),
            (format!(r#"{{"watches": [{{"type": "key", {script}}}]}}"#), r#"watches[0]: a "key" watch needs "key""#),
            (
                format!(r#"{{"watches": [{{"type": "services", "key": "x", {script}}}]}}"#),
                r#"watches[0]: "key" does not apply to a "services" watch"#,
            ),
            (
                format!(r#"{{"watches": [{{"type": "checks", "state": "bad", {script}}}]}}"#),
                r#"key "watches[0].state" must be one of any, passing, warning, critical, got "bad""#,
            ),
            (
                r#"{"watches": [{"type": "nodes"}]}"#.to_string(),
                r#"watches[0]: needs a handler: "args" or "http_handler_config""#,
            ),
            (
                format!(r#"{{"watches": [{{"type": "nodes", "handler": "x", {script}}}]}}"#),
                r#"watches[0]: only one handler allowed: "args", "handler" or "http_handler_config""#,
            ),
            (
                r#"{"watches": [{"type": "nodes", "args": []}]}"#.to_string(),
                r#"key "watches[0].args" must be a program and its arguments (a non-empty list), got an array"#,
            ),
            (
                r#"{"watches": [{"type": "nodes", "handler_type": "http"}]}"#.to_string(),
                r#"watches[0]: "handler_type": "http" needs "http_handler_config""#,
            ),
            (
                r#"{"watches": [{"type": "nodes", "http_handler_config": {"path": "http://h/"}}]}"#.to_string(),
                r#"watches[0]: "http_handler_config" needs "handler_type": "http""#,
            ),
            (
                r#"{"watches": [{"type": "nodes", "handler_type": "http", "http_handler_config": {"path": "ftp://h/"}}]}"#
                    .to_string(),
                r#"key "watches[0].http_handler_config.path" must be an http:// or https:// URL, got "ftp://h/""#,
            ),
            (
                r#"{"watches": [{"type": "nodes", "handler_type": "http", "http_handler_config": {"timeout": "1s"}}]}"#
                    .to_string(),
                r#"watches[0].http_handler_config: "path" (the URL to call) is required"#,
            ),
            (
                r#"{"watches": [{"type": "nodes", "handler_type": "http",
                    "http_handler_config": {"path": "http://h/", "header": {"X": ["a\nb"]}}}]}"#
                    .to_string(),
                r#"key "watches[0].http_handler_config.header.X[0]" must be a header value (visible ASCII), got "a\nb""#,
            ),
            (
                format!(r#"{{"watches": [{{"type": "nodes", "passingonly": true, {script}}}]}}"#),
                r#"watches[0]: "passingonly" does not apply to a "nodes" watch"#,
            ),
            (
                format!(r#"{{"watches": [{{"type": "nodes", "stal": true, {script}}}]}}"#),
                r#"unknown key "watches[0].stal" (did you mean "stale"?)"#,
            ),
        ];
        for (file, expected) in cases {
            let error = load_error(&[DATA_DIR, &file]);
            assert!(error.starts_with("config b.json: "), "{file}: {error}");
            assert!(error.ends_with(expected), "{file}:\n got {error}\nwant {expected}");
        }
    }
}
