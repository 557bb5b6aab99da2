//! Config files: finding them, parsing, merging (scalars replaced, objects merged, arrays
//! appended) and decoding each key onto [`Config`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Map, Value};

use super::decode::{
    decode_bool, decode_cidr, decode_datacenter, decode_domain, decode_duration, decode_encrypt_key, decode_ip,
    decode_join_addr, decode_list, decode_log_level, decode_node_id, decode_node_name, decode_optional_port,
    decode_path, decode_port, decode_positive_duration, decode_recursor, decode_service_ttl, decode_strategy,
    decode_tls_version, decode_token, decode_u32, decode_u64, decode_uint, describe, set_if_some, Mismatch, Section,
};
use super::watches::decode_watch;
use super::{quote, Config, ConfigError, DnsConfig, TlsSettings, TlsVersion, MIB};
use crate::model::agent::{decode_service, ScriptPolicy, ServiceRegistration, Strictness};

/// The `*.json` files of a config dir in lexical order. Other files are skipped, but `.hcl`
/// ones get a warning: a Consul user moving their directory over would otherwise lose them
/// silently.
pub(super) fn json_files_in(dir: &Path, warnings: &mut Vec<String>) -> Result<Vec<PathBuf>, ConfigError> {
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

pub(super) fn parse_object(name: &str, text: &str) -> Result<Map<String, Value>, ConfigError> {
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
pub(super) fn merge_objects(into: &mut Map<String, Value>, from: Map<String, Value>) {
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
pub(super) const TOP_NOT_IMPLEMENTED: &str = "
    acl_agent_master_token acl_datacenter
    acl_down_policy acl_enable_key_list_policy acl_replication_token
    acl_ttl advertise_addr_ipv4 advertise_addr_ipv6
    advertise_addr_wan_ipv4 advertise_addr_wan_ipv6 advertise_reconnect_timeout audit
    auto_config auto_encrypt auto_reload_config autopilot  ca_path cache
     check_output_max_size checks cloud config_entries
    connect default_query_time disable_anonymous_signature disable_coordinates
    disable_host_node_id disable_http_unprintable_char_filter disable_keyring_file
    disable_remote_exec disable_update_check discard_check_output discovery_max_stale
    enable_acl_replication enable_agent_tls_for_checks enable_central_service_config
    enable_debug  enable_syslog 
    encrypt_verify_incoming encrypt_verify_outgoing experiments http_config 
     license_path locality log_file log_rotate_bytes
    log_rotate_duration log_rotate_max_files max_query_time node_meta non_voting_server
    peering pid_file primary_datacenter primary_gateways raft_logstore
    raft_protocol raft_snapshot_interval
     reconnect_timeout_wan rejoin_after_leave retry_interval
    retry_interval_wan retry_max retry_max_wan rpc segment
    segments serf_lan serf_lan_allowed_cidrs serf_wan_allowed_cidrs server_name
    session_ttl_min skip_leave_on_interrupt
    syslog_facility  translate_wan_addrs ui_content_path
    ui_dir unix_sockets use_streaming_backend  
      
";
pub(super) const UI_CONFIG_NOT_IMPLEMENTED: &str = "
    content_path dashboard_url_templates metrics_provider metrics_provider_files
    metrics_provider_options_json metrics_proxy
";
pub(super) const ACL_NOT_IMPLEMENTED: &str = "
    down_policy enable_key_list_policy enable_token_replication policy_ttl role_ttl msp_disable_bootstrap
";
pub(super) const ACL_TOKENS_NOT_IMPLEMENTED: &str = "
    agent_recovery agent_master replication config_file_service_registration dns
";
pub(super) const TLS_NOT_IMPLEMENTED: &str = "
    grpc
";
/// Keys of `tls.defaults` and `tls.https` cairn does not implement.
pub(super) const TLS_LISTENER_NOT_IMPLEMENTED: &str = "
    ca_path tls_cipher_suites tls_prefer_server_cipher_suites use_auto_cert
";
pub(super) const PERFORMANCE_NOT_IMPLEMENTED: &str = "
    leave_drain_time rpc_hold_timeout
";
pub(super) const GOSSIP_NOT_IMPLEMENTED: &str = "
    deadline_timeout indirect_checks retransmit_mult
";
pub(super) const TELEMETRY_NOT_IMPLEMENTED: &str = "
    circonus_api_app circonus_api_token circonus_api_url circonus_broker_id
    circonus_broker_select_tag circonus_check_display_name circonus_check_force_metric_activation
    circonus_check_id circonus_check_instance_id circonus_check_search_tag circonus_check_tags
    circonus_submission_interval circonus_submission_url disable_compat_1.9 disable_hostname
    dogstatsd_addr dogstatsd_tags enable_host_metrics filter_default metrics_prefix
    prefix_filter retry_failed_connection statsd_address statsite_address
";
pub(super) const PORTS_NOT_IMPLEMENTED: &str = "
    expose_max_port expose_min_port grpc grpc_tls  sidecar_max_port
    sidecar_min_port
";
pub(super) const ADDRESSES_NOT_IMPLEMENTED: &str = "
    grpc grpc_tls 
";
pub(super) const DNS_CONFIG_NOT_IMPLEMENTED: &str = "
    cache_max_age disable_compression enable_additional_node_meta_txt prefer_namespace
    use_cache
";
pub(super) const LIMITS_NOT_IMPLEMENTED: &str = "
     request_limits rpc_client_timeout rpc_handshake_timeout
    rpc_max_burst rpc_max_conns_per_client rpc_rate txn_max_req_len xds_server
";

/// One `service` block (or `services` element) of one file, decoded once the merged config
/// says whether scripts are allowed.
pub(super) struct ServiceBlock {
    source: String,
    /// `service` or `services[i]`.
    key: String,
    value: Value,
}

pub(super) fn service_blocks_of(source: &str, object: &Map<String, Value>) -> Result<Vec<ServiceBlock>, ConfigError> {
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

pub(super) fn decode_service_blocks(
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
pub(super) fn apply_object(
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
    top.set("advertise_addr_wan", &mut config.advertise_addr_wan, |v| decode_ip(v).map(Some))?;
    top.set("client_addr", &mut config.client_addr, decode_ip)?;
    if let Some(mut ports) = top.section("ports")? {
        ports.set("http", &mut config.ports.http, decode_port)?;
        ports.set("dns", &mut config.ports.dns, decode_port)?;
        ports.set("server", &mut config.ports.server, decode_port)?;
        ports.set("serf_lan", &mut config.ports.serf_lan, decode_port)?;
        ports.set("serf_wan", &mut config.ports.serf_wan, decode_optional_port)?;
        ports.set("https", &mut config.ports.https, decode_optional_port)?;
        ports.finish(PORTS_NOT_IMPLEMENTED, warnings)?;
    }
    if let Some(mut addresses) = top.section("addresses")? {
        let addrs = &mut config.addresses;
        addresses.set("http", &mut addrs.http, |v| decode_ip(v).map(Some))?;
        addresses.set("dns", &mut addrs.dns, |v| decode_ip(v).map(Some))?;
        addresses.set("https", &mut addrs.https, |v| decode_ip(v).map(Some))?;
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
        limits.set("snapshot_saves_in_flight", &mut l.snapshot_saves_in_flight, |v| decode_uint(v, 1, 1024))?;
        limits.set("https_handshake_timeout", &mut l.https_handshake_timeout, decode_positive_duration)?;
        limits.set("http_max_conns", &mut l.http_max_conns, |v| decode_uint(v, 1, u32::MAX.into()))?;
        limits.set("dns_tcp_max_conns", &mut l.dns_tcp_max_conns, |v| decode_uint(v, 1, u32::MAX.into()))?;
        limits.set("dns_tcp_max_conns_per_client", &mut l.dns_tcp_max_conns_per_client, |v| {
            decode_uint(v, 1, u32::MAX.into())
        })?;
        limits.set("dns_udp_receive_buffer_bytes", &mut l.dns_udp_receive_buffer_bytes, |v| {
            decode_uint(v, 64 * 1024, 1 << 30)
        })?;
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
    top.set("start_join_wan", &mut config.start_join_wan, |v| decode_list(v, decode_join_addr))?;
    top.set("retry_join_wan", &mut config.retry_join_wan, |v| decode_list(v, decode_join_addr))?;
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
    for (name, g) in [("gossip_lan", &mut config.gossip_lan), ("gossip_wan", &mut config.gossip_wan)] {
        if let Some(mut gossip) = top.section(name)? {
            gossip.set("probe_interval", &mut g.probe_interval, decode_positive_duration)?;
            gossip.set("probe_timeout", &mut g.probe_timeout, decode_positive_duration)?;
            gossip.set("suspicion_mult", &mut g.suspicion_mult, |v| decode_uint(v, 1, 100))?;
            gossip.set("gossip_interval", &mut g.gossip_interval, decode_positive_duration)?;
            gossip.set("gossip_nodes", &mut g.gossip_nodes, |v| decode_uint(v, 1, 64))?;
            gossip.finish(GOSSIP_NOT_IMPLEMENTED, warnings)?;
        }
    }
    (config.tls_https, config.tls_rpc) = decode_tls(&mut top, warnings)?;
    // `ui` is the pre-1.9 spelling of `ui_config.enabled`; the section wins when both are set.
    top.set("ui", &mut config.ui_enabled, decode_bool)?;
    if let Some(mut ui) = top.section("ui_config")? {
        ui.set("enabled", &mut config.ui_enabled, decode_bool)?;
        ui.finish(UI_CONFIG_NOT_IMPLEMENTED, warnings)?;
    }
    decode_acl(&mut top, &mut config.acl, warnings)?;
    if let Some(mut telemetry) = top.section("telemetry")? {
        telemetry.set("prometheus_retention_time", &mut config.prometheus_retention_time, decode_duration)?;
        telemetry.finish(TELEMETRY_NOT_IMPLEMENTED, warnings)?;
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

pub(super) fn apply_dns_config(
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
    if let Some(mut limit) = section.section("rate_limit")? {
        let rl = &mut dns.rate_limit;
        limit.set("responses_per_second", &mut rl.responses_per_second, decode_u32)?;
        limit.set("slip", &mut rl.slip, |v| decode_uint(v, 0, 100))?;
        limit.set("ipv4_prefix_length", &mut rl.ipv4_prefix_length, |v| decode_uint(v, 0, 32))?;
        limit.set("ipv6_prefix_length", &mut rl.ipv6_prefix_length, |v| decode_uint(v, 0, 128))?;
        limit.set("table_size", &mut rl.table_size, |v| decode_uint(v, 1, 10_000_000))?;
        limit.finish("", warnings)?;
    }
    section.finish(DNS_CONFIG_NOT_IMPLEMENTED, warnings)
}

/// Some of a listener's TLS settings, from one place of the config.
#[derive(Default, Clone)]
struct TlsLayer {
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    verify_incoming: Option<bool>,
    verify_outgoing: Option<bool>,
    verify_server_hostname: Option<bool>,
    min_version: Option<TlsVersion>,
}

/// The `acl` section, after Consul's older top-level keys (which it overrides).
fn decode_acl(
    top: &mut Section<'_>,
    acl: &mut crate::acl::AclConfig,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    let token = decode_token;
    top.set("acl_default_policy", &mut acl.default_allow, decode_default_policy)?;
    if let Some(t) = top.get("acl_master_token", token)? {
        acl.initial_management = Some(t);
    }
    if let Some(t) = top.get("acl_token", token)? {
        acl.default_token = Some(t);
    }
    if let Some(t) = top.get("acl_agent_token", token)? {
        acl.agent_token = Some(t);
    }
    let Some(mut section) = top.section("acl")? else { return Ok(()) };
    section.set("enabled", &mut acl.enabled, decode_bool)?;
    section.set("default_policy", &mut acl.default_allow, decode_default_policy)?;
    section.set("token_ttl", &mut acl.token_ttl, decode_duration)?;
    section.set("token_min_expiration_ttl", &mut acl.token_min_expiration_ttl, decode_duration)?;
    section.set("token_max_expiration_ttl", &mut acl.token_max_expiration_ttl, decode_duration)?;
    section.set("enable_token_persistence", &mut acl.enable_token_persistence, decode_bool)?;
    if let Some(mut tokens) = section.section("tokens")? {
        // `master` is the older name of `initial_management`, which wins when both are set.
        if let Some(t) = tokens.get("master", token)? {
            acl.initial_management = Some(t);
        }
        for (key, target) in [
            ("initial_management", &mut acl.initial_management),
            ("agent", &mut acl.agent_token),
            ("default", &mut acl.default_token),
        ] {
            if let Some(t) = tokens.get(key, token)? {
                *target = Some(t);
            }
        }
        tokens.finish(ACL_TOKENS_NOT_IMPLEMENTED, warnings)?;
    }
    section.finish(ACL_NOT_IMPLEMENTED, warnings)
}

fn decode_default_policy(value: &Value) -> Result<bool, Mismatch> {
    match value.as_str() {
        Some("allow") => Ok(true),
        Some("deny") => Ok(false),
        _ => Err(Mismatch::new("\"allow\" or \"deny\"", value)),
    }
}

impl TlsLayer {
    /// Reads the keys a TLS section and Consul's older top-level keys share.
    fn read(section: &mut Section<'_>) -> Result<TlsLayer, ConfigError> {
        Ok(TlsLayer {
            ca_file: section.get("ca_file", decode_path)?,
            cert_file: section.get("cert_file", decode_path)?,
            key_file: section.get("key_file", decode_path)?,
            verify_incoming: section.get("verify_incoming", decode_bool)?,
            verify_outgoing: section.get("verify_outgoing", decode_bool)?,
            verify_server_hostname: section.get("verify_server_hostname", decode_bool)?,
            min_version: section.get("tls_min_version", decode_tls_version)?,
        })
    }

    /// This layer where it has a value, else `under`.
    fn over(self, under: TlsLayer) -> TlsLayer {
        TlsLayer {
            ca_file: self.ca_file.or(under.ca_file),
            cert_file: self.cert_file.or(under.cert_file),
            key_file: self.key_file.or(under.key_file),
            verify_incoming: self.verify_incoming.or(under.verify_incoming),
            verify_outgoing: self.verify_outgoing.or(under.verify_outgoing),
            verify_server_hostname: self.verify_server_hostname.or(under.verify_server_hostname),
            min_version: self.min_version.or(under.min_version),
        }
    }
}

/// The HTTPS listener's and the server RPC's TLS: `tls.https` or `tls.internal_rpc` over
/// `tls.defaults` over Consul's older top-level keys (`ca_file`, `cert_file`, `key_file`,
/// `verify_incoming`, `verify_outgoing`, `tls_min_version`; `verify_incoming_https` under
/// https, `verify_incoming_rpc` and `verify_server_hostname` under internal_rpc).
fn decode_tls(top: &mut Section<'_>, warnings: &mut Vec<String>) -> Result<(TlsSettings, TlsSettings), ConfigError> {
    let mut legacy = TlsLayer::read(top)?;
    // Only meaningful for the RPC: read here so the https layer does not inherit it.
    let legacy_hostname = legacy.verify_server_hostname.take();
    let legacy_https =
        TlsLayer { verify_incoming: top.get("verify_incoming_https", decode_bool)?, ..TlsLayer::default() };
    let legacy_rpc = TlsLayer {
        verify_incoming: top.get("verify_incoming_rpc", decode_bool)?,
        verify_server_hostname: legacy_hostname,
        ..TlsLayer::default()
    };
    let (mut defaults, mut https, mut rpc) = (TlsLayer::default(), TlsLayer::default(), TlsLayer::default());
    if let Some(mut tls) = top.section("tls")? {
        for (name, layer) in [("defaults", &mut defaults), ("https", &mut https), ("internal_rpc", &mut rpc)] {
            if let Some(mut section) = tls.section(name)? {
                *layer = TlsLayer::read(&mut section)?;
                section.finish(TLS_LISTENER_NOT_IMPLEMENTED, warnings)?;
            }
        }
        tls.finish(TLS_NOT_IMPLEMENTED, warnings)?;
    }
    // Consul's translation: the older keys sit under the sections they became.
    let base = defaults.over(legacy);
    let https = https.over(legacy_https).over(base.clone());
    let rpc = rpc.over(legacy_rpc).over(base);
    Ok((https.settings(), rpc.settings()))
}

impl TlsLayer {
    fn settings(self) -> TlsSettings {
        let verify_server_hostname = self.verify_server_hostname.unwrap_or(false);
        TlsSettings {
            ca_file: self.ca_file,
            cert_file: self.cert_file,
            key_file: self.key_file,
            verify_incoming: self.verify_incoming.unwrap_or(false),
            // Checking a server's name means checking its certificate (Consul implies it too).
            verify_outgoing: self.verify_outgoing.unwrap_or(false) || verify_server_hostname,
            verify_server_hostname,
            min_version: self.min_version.unwrap_or_default(),
        }
    }
}
