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
//! Files by job: `flags` (the command line), `files` (finding, parsing, merging and applying
//! config files key by key), `decode` (the key-by-key reader and value decoders), `watches`
//! (the `watches` entries); this file holds the resolved `Config`, its errors, and the load.
//!
//! This module never logs: tracing is not set up while the config loads (its level comes
//! from here), so warnings are returned for the caller to log once.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Map;

use crate::model::agent::ServiceRegistration;
pub use crate::model::parse_duration;
use crate::watch::WatchDefinition;

mod decode;
mod files;
mod flags;
#[cfg(test)]
mod tests;
mod watches;

use decode::set_if_some;
use files::{apply_object, decode_service_blocks, json_files_in, merge_objects, parse_object, service_blocks_of};
pub use flags::{normalize_args, AgentFlags};

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
    /// WAN gossip addresses (servers of other datacenters) to join at start
    /// (`start_join_wan`, `-join-wan`); the start fails if none answers.
    pub start_join_wan: Vec<String>,
    /// WAN gossip addresses retried until one answers (`retry_join_wan`, `-retry-join-wan`).
    pub retry_join_wan: Vec<String>,
    /// The address other datacenters' servers reach this one at (`advertise_addr_wan`,
    /// `-advertise-wan`; default: the LAN advertise address).
    pub advertise_addr_wan: Option<IpAddr>,
    /// The gossip key (`encrypt`), base64 of 32 bytes, checked when loaded.
    pub encrypt: Option<String>,
    /// A failed member is removed from the catalog after this long (`reconnect_timeout`).
    pub reconnect_timeout: Duration,
    /// Leave the gossip pool gracefully on SIGTERM (default: clients yes, servers no).
    pub leave_on_terminate: Option<bool>,
    /// `gossip_lan` timings.
    pub gossip_lan: GossipTimings,
    /// `gossip_wan` timings (the WAN pool of servers).
    pub gossip_wan: GossipTimings,
    /// TLS of the HTTPS listener (`ports.https`).
    pub tls_https: TlsSettings,
    /// TLS of the server RPC (port 8300), incoming and outgoing.
    pub tls_rpc: TlsSettings,
    /// Serve the web UI at `/ui/` (`ui_config.enabled`, `ui`, `-ui`; on by default in -dev).
    pub ui_enabled: bool,
    /// The `acl` section (and Consul's older `acl_*` keys).
    pub acl: crate::acl::AclConfig,
    /// `telemetry.prometheus_retention_time`: above zero, `/v1/agent/metrics?format=prometheus`
    /// answers (as Consul gates it); cairn keeps every metric for the process's lifetime.
    pub prometheus_retention_time: Duration,
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

/// `gossip_lan` and `gossip_wan`: SWIM timings (memberlist's LAN and WAN profiles by
/// default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GossipTimings {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub suspicion_mult: u32,
    pub gossip_interval: Duration,
    pub gossip_nodes: u32,
}

impl GossipTimings {
    /// memberlist's `DefaultLANConfig`.
    pub fn lan() -> Self {
        GossipTimings {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            suspicion_mult: 4,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
        }
    }

    /// memberlist's `DefaultWANConfig`: links between datacenters are slower and lossier.
    pub fn wan() -> Self {
        GossipTimings {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6,
            gossip_interval: Duration::from_millis(500),
            gossip_nodes: 4,
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
    /// WAN gossip (servers only); `None` (Consul's `-1`) turns the WAN pool off.
    pub serf_wan: Option<u16>,
    /// The HTTP API over TLS; `None` (Consul's default, `-1`) serves no HTTPS.
    pub https: Option<u16>,
}

impl Default for Ports {
    fn default() -> Self {
        Ports { http: 8500, dns: 8600, server: 8300, serf_lan: 8301, serf_wan: Some(8302), https: None }
    }
}

/// Per-listener bind addresses; `None` means `client_addr`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Addresses {
    pub http: Option<IpAddr>,
    pub dns: Option<IpAddr>,
    pub https: Option<IpAddr>,
}

/// The TLS settings of one listener: `tls.defaults` overlaid by `tls.https` or
/// `tls.internal_rpc` (Consul's older
/// top-level `ca_file`, `cert_file`, ... under both). Files are read when the listener starts
/// and again on every reload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificates of the authorities client certificates must chain to.
    pub ca_file: Option<PathBuf>,
    /// PEM certificate chain this agent presents, leaf first.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of that certificate (PKCS#8, PKCS#1 or SEC1).
    pub key_file: Option<PathBuf>,
    /// Require a client certificate that chains to `ca_file`.
    pub verify_incoming: bool,
    /// Check the certificates of the servers this agent connects to (kept for the server
    /// RPC; the HTTPS listener does not connect out).
    pub verify_outgoing: bool,
    /// Also check that a server's certificate names `server.<dc>.<domain>` (server RPC).
    pub verify_server_hostname: bool,
    pub min_version: TlsVersion,
}

/// The oldest TLS version a listener accepts (`tls_min_version`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    Tls12,
    Tls13,
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
    /// Response-rate limiting on UDP (`dns::rate_limit`).
    pub rate_limit: RateLimitConfig,
}

/// The `dns_config.rate_limit` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Answers per second to one source prefix; 0 turns the limit off.
    pub responses_per_second: u32,
    /// Every `slip`-th limited answer is sent empty with TC; 0 drops them all.
    pub slip: u32,
    pub ipv4_prefix_length: u8,
    pub ipv6_prefix_length: u8,
    /// Source prefixes tracked at most.
    pub table_size: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            responses_per_second: 0,
            slip: 2,
            ipv4_prefix_length: 24,
            ipv6_prefix_length: 56,
            table_size: 100_000,
        }
    }
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
            rate_limit: RateLimitConfig::default(),
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
    /// Open HTTP connections in all (HTTP and HTTPS each); past it new ones get 503 and close.
    pub http_max_conns: u32,
    /// Open DNS TCP connections in all; past it new ones are closed at once.
    pub dns_tcp_max_conns: u32,
    /// Open DNS TCP connections per client address; past it new ones are closed at once.
    pub dns_tcp_max_conns_per_client: u32,
    /// Receive buffer asked for each DNS UDP socket (`SO_RCVBUF`): how many queries wait in
    /// the kernel while a core is busy or stalled; past it the kernel drops them.
    pub dns_udp_receive_buffer_bytes: u32,
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
    /// Backups (`GET /v1/snapshot`) being written or sent at once; past it 429.
    pub snapshot_saves_in_flight: u32,
    /// A TLS client must finish its handshake within this; past it the connection is closed.
    pub https_handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            http_max_conns_per_client: 200,
            http_max_conns: 8192,
            dns_tcp_max_conns: 4096,
            dns_tcp_max_conns_per_client: 64,
            dns_udp_receive_buffer_bytes: 4 * MIB as u32,
            kv_max_value_size: 512 * 1024,
            http_max_body_bytes: 1024 * 1024,
            http_header_read_timeout: Duration::from_secs(30),
            max_blocking_queries: 20_000,
            txn_max_ops: 64,
            max_pending_writes: 16_384,
            dns_max_forwards_in_flight: 1024,
            checks_max_concurrent: 512,
            snapshot_max_bytes: 4 * 1024 * MIB,
            snapshot_saves_in_flight: 2,
            https_handshake_timeout: Duration::from_secs(5),
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
    #[error("config {}: larger than {} MiB; a config file is a few KiB (is this the right file?)", path.display(), CONFIG_FILE_MAX_BYTES / MIB)]
    TooLarge { path: PathBuf },
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
            let text = read_config_file(&path)?;
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
            start_join_wan: Vec::new(),
            retry_join_wan: Vec::new(),
            advertise_addr_wan: None,
            encrypt: None,
            reconnect_timeout: Duration::from_secs(72 * 3600),
            leave_on_terminate: None,
            gossip_lan: GossipTimings::lan(),
            gossip_wan: GossipTimings::wan(),
            tls_https: TlsSettings::default(),
            tls_rpc: TlsSettings::default(),
            ui_enabled: dev,
            acl: crate::acl::AclConfig::default(),
            prometheus_retention_time: Duration::ZERO,
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
        self.start_join_wan.extend(flags.join_wan.iter().cloned());
        self.retry_join_wan.extend(flags.retry_join_wan.iter().cloned());
        set_if_some(&mut self.advertise_addr_wan, flags.advertise_wan.map(Some));
        if let Some(port) = flags.serf_wan_port {
            self.ports.serf_wan = u16::try_from(port).ok();
        }
        set_if_some(&mut self.encrypt, flags.encrypt.clone().map(Some));
        if flags.log_json {
            self.log_json = true;
        }
        if flags.ui {
            self.ui_enabled = true;
        }
        if let Some(port) = flags.https_port {
            self.ports.https = u16::try_from(port).ok();
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
        if self.ports.https.is_some() {
            let tls = &self.tls_https;
            if tls.cert_file.is_none() || tls.key_file.is_none() {
                return invalid(
                    "ports.https is set but the certificate or its key is missing: set tls.defaults.cert_file and \
                     tls.defaults.key_file (or the same keys under tls.https)",
                );
            }
            if tls.verify_incoming && tls.ca_file.is_none() {
                return invalid(
                    "tls verify_incoming is on for HTTPS but no ca_file says which authority client certificates \
                     must chain to: set tls.defaults.ca_file",
                );
            }
        }
        let rpc = &self.tls_rpc;
        if rpc.verify_incoming && (rpc.cert_file.is_none() || rpc.key_file.is_none() || rpc.ca_file.is_none()) {
            return invalid(
                "tls verify_incoming is on for the server RPC but ca_file, cert_file or key_file is missing: set \
                 them under tls.defaults (or tls.internal_rpc)",
            );
        }
        if rpc.verify_outgoing && rpc.ca_file.is_none() {
            return invalid(
                "tls verify_outgoing is on for the server RPC but no ca_file says which authority servers' \
                 certificates must chain to: set tls.defaults.ca_file",
            );
        }
        if self.acl.token_min_expiration_ttl.is_zero()
            || self.acl.token_max_expiration_ttl < self.acl.token_min_expiration_ttl
        {
            return invalid("acl.token_min_expiration_ttl must be above 0 and at most acl.token_max_expiration_ttl");
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
        for (name, timings) in [("gossip_lan", &self.gossip_lan), ("gossip_wan", &self.gossip_wan)] {
            if timings.probe_timeout >= timings.probe_interval {
                return invalid(&format!("{name}.probe_timeout must be shorter than {name}.probe_interval"));
            }
        }
        let wan_asked = !self.start_join_wan.is_empty() || !self.retry_join_wan.is_empty();
        if wan_asked && !self.server {
            return invalid(
                "start_join_wan / retry_join_wan (or -join-wan / -retry-join-wan) are set but this agent \
                 is not a server: only servers join the WAN pool",
            );
        }
        if wan_asked && self.ports.serf_wan.is_none() {
            return invalid("start_join_wan / retry_join_wan are set but ports.serf_wan is -1 (the WAN pool is off)");
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

/// The largest config file read: far above any real one, so a wrong path (a log, a backup)
/// fails at once instead of being read whole and parsed.
pub const CONFIG_FILE_MAX_BYTES: u64 = 16 * MIB;

/// One config file's text, refused past [`CONFIG_FILE_MAX_BYTES`] without reading the rest.
fn read_config_file(path: &std::path::Path) -> Result<String, ConfigError> {
    use std::io::Read as _;
    let io = |source| ConfigError::Io { path: path.to_path_buf(), source };
    let mut text = String::new();
    std::fs::File::open(path).map_err(io)?.take(CONFIG_FILE_MAX_BYTES + 1).read_to_string(&mut text).map_err(io)?;
    if text.len() as u64 > CONFIG_FILE_MAX_BYTES {
        return Err(ConfigError::TooLarge { path: path.to_path_buf() });
    }
    Ok(text)
}
