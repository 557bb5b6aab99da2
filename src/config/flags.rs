//! The agent's command-line flags (Consul's spellings) and their normalisation.

use std::net::IpAddr;
use std::path::PathBuf;

use super::decode::{valid_datacenter, DATACENTER_EXPECTED, LOG_LEVEL_EXPECTED};
use super::LogLevel;

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
    /// WAN gossip port, servers only (0 = any free port, -1 = no WAN pool).
    #[arg(long, value_name = "PORT", allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1..=65535))]
    pub serf_wan_port: Option<i32>,
    /// Address to advertise to servers of other datacenters (default: -advertise).
    #[arg(long, value_name = "IP")]
    pub advertise_wan: Option<IpAddr>,
    /// Join the WAN pool through this server of another datacenter at start (host or
    /// host:port, default port 8302; repeatable). The agent fails to start if none answers.
    #[arg(long, value_name = "ADDR")]
    pub join_wan: Vec<String>,
    /// Like -join-wan, but retried with backoff until it succeeds (repeatable).
    #[arg(long, value_name = "ADDR")]
    pub retry_join_wan: Vec<String>,
    /// HTTPS API port (0 = any free port, -1 = none, the default); needs tls cert_file and key_file.
    #[arg(long, value_name = "PORT", allow_negative_numbers = true, value_parser = clap::value_parser!(i32).range(-1..=65535))]
    pub https_port: Option<i32>,
    /// Serve the web UI at /ui/ on the HTTP port (on by default with -dev).
    #[arg(long)]
    pub ui: bool,
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
