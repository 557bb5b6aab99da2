use super::decode::{closest, decode_domain, decode_recursor};
use super::*;
use crate::model::agent::{decode_service, ScriptPolicy, Strictness};
use crate::watch::{Handler, HttpHandler};
use clap::Parser;
use serde_json::Value;

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
fn wan_settings_need_a_server_and_a_wan_port() {
    let err = load_error(&[DATA_DIR, r#"{"retry_join_wan": ["10.0.0.1"]}"#]);
    assert!(err.contains("retry_join_wan") && err.contains("not a server"), "{err}");
    let err = load_error(&[DATA_DIR, r#"{"server": true, "start_join_wan": ["a"], "ports": {"serf_wan": -1}}"#]);
    assert!(err.contains("serf_wan is -1"), "{err}");
    let err = load_error(&[DATA_DIR, r#"{"ports": {"serf_wan": -2}}"#]);
    assert!(err.contains("ports.serf_wan") && err.contains("-1 to turn it off"), "{err}");
    let err = load_error(&[DATA_DIR, r#"{"gossip_wan": {"probe_interval": "1s", "probe_timeout": "1s"}}"#]);
    assert!(err.contains("gossip_wan.probe_timeout must be shorter"), "{err}");
    let flags = parse_flags(&["-server", "-join-wan", "a", "-retry-join-wan", "b:1", "-serf-wan-port", "0"])
        .expect("flags parse");
    let (config, _) = load_with(&[DATA_DIR, r#"{"retry_join_wan": ["c"], "advertise_addr_wan": "10.9.9.9"}"#], &flags)
        .expect("loads");
    assert_eq!(
        (config.start_join_wan, config.retry_join_wan, config.ports.serf_wan),
        (vec!["a".to_string()], vec!["c".to_string(), "b:1".to_string()], Some(0))
    );
    assert_eq!(config.advertise_addr_wan, Some("10.9.9.9".parse().expect("ip")));
    let flags = parse_flags(&["-serf-wan-port", "-1"]).expect("flags parse");
    let (config, _) = load_with(&[DATA_DIR], &flags).expect("loads");
    assert_eq!(config.ports.serf_wan, None);
    assert_eq!(Config::defaults(false).gossip_wan, GossipTimings::wan());
    assert!(parse_flags(&["-serf-wan-port", "-2"]).is_err());
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
        "ports": {"http": 1, "dns": 2, "server": 3, "serf_lan": 0, "serf_wan": 4, "https": 5},
        "addresses": {"http": "127.0.0.2", "dns": "::1", "https": "127.0.0.3"},
        "ca_file": "/legacy/ca.pem", "verify_incoming_https": true,
        "tls": {"defaults": {"cert_file": "/d/c.pem", "key_file": "/d/k.pem", "verify_incoming": false,
                             "tls_min_version": "TLSv1_3"},
                "https": {"key_file": "/h/k.pem"}, "internal_rpc": {"verify_server_hostname": true}},
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
            "dns_max_forwards_in_flight": 16, "checks_max_concurrent": 17, "snapshot_saves_in_flight": 3,
            "https_handshake_timeout": "2s", "http_max_conns": 21, "dns_tcp_max_conns": 22,
            "dns_tcp_max_conns_per_client": 23, "dns_udp_receive_buffer_bytes": 1048576
        },
        "lmdb_map_size_mb": 2, "zones_dir": "/z",
        "enable_local_script_checks": true, "check_update_interval": "1m",
        "anti_entropy_interval": "2s",
        "start_join": ["10.0.0.2"], "retry_join": ["consul.example:8301", "[::1]:1"],
        "start_join_wan": ["10.1.0.2"], "retry_join_wan": ["dc2.example:8302"],
        "advertise_addr_wan": "198.51.100.1",
        "encrypt": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=", "reconnect_timeout": "9h",
        "leave_on_terminate": true,
        "performance": {"raft_multiplier": 5}, "raft_snapshot_threshold": 100,
        "telemetry": {"prometheus_retention_time": "60s"},
        "ui": false, "ui_config": {"enabled": true},
        "raft_trailing_logs": 7,
        "gossip_lan": {"probe_interval": "2s", "probe_timeout": "1s", "suspicion_mult": 5,
                       "gossip_interval": "300ms", "gossip_nodes": 4},
        "gossip_wan": {"probe_interval": "7s", "probe_timeout": "4s", "suspicion_mult": 3,
                       "gossip_interval": "1s", "gossip_nodes": 2},
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
        ports: Ports { http: 1, dns: 2, server: 3, serf_lan: 0, serf_wan: Some(4), https: Some(5) },
        addresses: Addresses { http: Some(ip("127.0.0.2")), dns: Some(ip("::1")), https: Some(ip("127.0.0.3")) },
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
            rate_limit: RateLimitConfig::default(),
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
            snapshot_saves_in_flight: 3,
            https_handshake_timeout: Duration::from_secs(2),
            http_max_conns: 21,
            dns_tcp_max_conns: 22,
            dns_tcp_max_conns_per_client: 23,
            dns_udp_receive_buffer_bytes: 1 << 20,
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
        start_join_wan: vec!["10.1.0.2".into()],
        retry_join_wan: vec!["dc2.example:8302".into()],
        advertise_addr_wan: Some(ip("198.51.100.1")),
        encrypt: Some("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".into()),
        reconnect_timeout: Duration::from_secs(9 * 3600),
        leave_on_terminate: Some(true),
        gossip_lan: GossipTimings {
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(1),
            suspicion_mult: 5,
            gossip_interval: Duration::from_millis(300),
            gossip_nodes: 4,
        },
        gossip_wan: GossipTimings {
            probe_interval: Duration::from_secs(7),
            probe_timeout: Duration::from_secs(4),
            suspicion_mult: 3,
            gossip_interval: Duration::from_secs(1),
            gossip_nodes: 2,
        },
        raft: RaftTuning { multiplier: 5, snapshot_threshold: 100, trailing_logs: 7 },
        ui_enabled: true,
        acl: crate::acl::AclConfig::default(),
        tls_https: TlsSettings {
            ca_file: Some("/legacy/ca.pem".into()),
            cert_file: Some("/d/c.pem".into()),
            key_file: Some("/h/k.pem".into()),
            // tls.https (from verify_incoming_https) is above tls.defaults.
            verify_incoming: true,
            verify_outgoing: false,
            verify_server_hostname: false,
            min_version: TlsVersion::Tls13,
        },
        tls_rpc: TlsSettings {
            ca_file: Some("/legacy/ca.pem".into()),
            cert_file: Some("/d/c.pem".into()),
            key_file: Some("/d/k.pem".into()),
            verify_incoming: false,
            verify_outgoing: true,
            verify_server_hostname: true,
            min_version: TlsVersion::Tls13,
        },
        prometheus_retention_time: Duration::from_secs(60),
        watches: Vec::new(),
    };
    assert_eq!(config, expected);
}

#[test]
fn merge_replaces_scalars_merges_objects_appends_arrays() {
    let mut merged = Map::new();
    for text in [r#"{"a": 1, "o": {"x": 1, "y": [1]}, "l": [1]}"#, r#"{"a": 2, "o": {"z": 3, "y": [2]}, "l": [2, 3]}"#]
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
            r#"{"limits": {"dns_udp_receive_buffer_bytes": 4096}}"#,
            r#"config a.json: key "limits.dns_udp_receive_buffer_bytes" must be an integer from 65536 to 1073741824, got 4096"#,
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
            r#"config b.json: key "telemetry.statsd_address" is not implemented by cairn yet and is ignored"#,
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
    assert_eq!(config.ports, Ports { http: 0, dns: 53, server: 1, serf_lan: 2, serf_wan: Some(8302), https: None });
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
    assert!(config.ui_enabled, "-dev serves the web UI");
    assert!(warnings.is_empty(), "{warnings:?}");
    let (config, _) = load_with(&[r#"{"ui_config": {"enabled": false}}"#], &flags).expect("ui off in dev");
    assert!(!config.ui_enabled, "a file turns the dev UI off");
    let ui = AgentFlags { ui: true, ..AgentFlags::default() };
    let (config, _) = load_with(&[DATA_DIR], &ui).expect("-ui");
    assert!(config.ui_enabled);
    let (config, _) = load_with(&[DATA_DIR], &AgentFlags::default()).expect("defaults");
    assert!(!config.ui_enabled, "off by default outside -dev");
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
                {"type": "checks", "state": "critical", "handler": "echo hi", "token": "t",
                 "filter": "ServiceName == web"}
            ]}"#,
        ],
        &AgentFlags::default(),
    )
    .expect("loads");
    assert_eq!(config.watches.len(), 3);
    assert_eq!(config.watches[0].spec.path().as_deref(), Ok("/v1/kv/app/config"));
    assert_eq!(config.watches[0].handler, Handler::Script { args: strings(&["/usr/bin/reload", "-x"]), capture: true });
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
    assert_eq!(config.watches[2].spec.path().as_deref(), Ok("/v1/health/state/critical?filter=ServiceName+%3D%3D+web"));
    assert_eq!(config.watches[2].token, Some(crate::model::acl::Secret("t".into())));
    assert_eq!(
        config.watches[2].handler,
        Handler::Script { args: strings(&["/bin/sh", "-c", "echo hi"]), capture: true }
    );
    assert_eq!(
        warnings,
        [r#"config c.json: watches[1]: "handler" is deprecated; use "args" (a program and its arguments)"#,]
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
            format!(r#"{{"watches": [{{"type": "nodes", "filter": "Meta.env ==", {script}}}]}}"#),
            r#"watches[0]: "filter": at offset 11: expected a value (a quoted string, a number or a word) after '==', found the end of the expression"#,
        ),
        (
            format!(r#"{{"watches": [{{"type": "key", "key": "k", "filter": "a == b", {script}}}]}}"#),
            r#"watches[0]: "filter" does not apply to a "key" watch"#,
        ),
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

#[test]
fn acl_section_and_consuls_older_keys_are_decoded() {
    let config = load(&[
        DATA_DIR,
        r#"{"acl_master_token": "old-root", "acl_token": "old-default",
        "acl": {"enabled": true, "default_policy": "deny", "token_ttl": "5s", "enable_token_persistence": true,
                "token_min_expiration_ttl": "10s", "token_max_expiration_ttl": "720h",
                "tokens": {"initial_management": "root", "agent": "agent-t", "default": "anon-t"}}}"#,
    ]);
    let acl = config.acl;
    assert!(acl.enabled && !acl.default_allow && acl.enable_token_persistence);
    assert_eq!(acl.token_ttl, Duration::from_secs(5));
    assert_eq!(
        (acl.token_min_expiration_ttl, acl.token_max_expiration_ttl),
        (Duration::from_secs(10), Duration::from_secs(720 * 3600))
    );
    assert_eq!(acl.initial_management.as_deref(), Some("root"));
    assert_eq!(acl.agent_token.as_deref(), Some("agent-t"));
    assert_eq!(acl.default_token.as_deref(), Some("anon-t"));
    let legacy = load(&[
        DATA_DIR,
        r#"{"acl_default_policy": "deny", "acl_master_token": "old-root", "acl": {"enabled": true}}"#,
    ])
    .acl;
    assert!(!legacy.default_allow);
    assert_eq!(legacy.initial_management.as_deref(), Some("old-root"));
    for (text, expected) in [
        (r#"{"acl": {"default_policy": "maybe"}}"#, "acl.default_policy"),
        (r#"{"acl": {"enabeld": true}}"#, "enabled"),
        (r#"{"acl": {"tokens": {"defualt": "x"}}}"#, "acl.tokens.defualt"),
        (r#"{"acl": {"tokens": {"default": ""}}}"#, "acl.tokens.default"),
        (r#"{"acl": {"enable_token_persistence": "yes"}}"#, "acl.enable_token_persistence"),
        (r#"{"acl": {"token_min_expiration_ttl": "0s"}}"#, "acl.token_min_expiration_ttl must be above 0"),
        (r#"{"acl": {"token_max_expiration_ttl": "30s"}}"#, "at most acl.token_max_expiration_ttl"),
        (r#"{"acl": {"token_max_expiration_ttl": "a day"}}"#, "acl.token_max_expiration_ttl"),
        (r#"{"dns_config": {"rate_limit": {"ipv4_prefix_length": 33}}}"#, "dns_config.rate_limit.ipv4_prefix_length"),
        (r#"{"dns_config": {"rate_limit": {"burst": 1}}}"#, "burst"),
    ] {
        let err = load_error(&[DATA_DIR, text]);
        assert!(err.contains(expected), "{text}: {err}");
    }
}

/// A JSON value over a few keys (so objects overlap), at most `depth` levels deep.
fn json_value(depth: u32) -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i32>().prop_map(Value::from),
        "[a-c]{0,2}".prop_map(Value::String),
    ];
    leaf.prop_recursive(depth, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map("[a-c]", inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn json_object() -> impl proptest::strategy::Strategy<Value = Map<String, Value>> {
    use proptest::strategy::Strategy;
    proptest::collection::btree_map("[a-d]", json_value(3), 0..4).prop_map(|m| m.into_iter().collect())
}

/// What merging `from` into `into` must give: `from`'s scalars replace, objects merge
/// (recursively), arrays append; keys of only one side stay as they are.
fn merge_model(into: &Map<String, Value>, from: &Map<String, Value>) -> Map<String, Value> {
    let mut out = into.clone();
    for (key, new) in from {
        let merged = match (into.get(key), new) {
            (Some(Value::Object(old)), Value::Object(new)) => Value::Object(merge_model(old, new)),
            (Some(Value::Array(old)), Value::Array(new)) => Value::Array(old.iter().chain(new).cloned().collect()),
            _ => new.clone(),
        };
        out.insert(key.clone(), merged);
    }
    out
}

proptest::proptest! {
    #[test]
    fn merging_config_files_replaces_scalars_merges_objects_appends_arrays(
        files in proptest::collection::vec(json_object(), 1..4)
    ) {
        let mut merged = Map::new();
        let mut model = Map::new();
        for file in files {
            model = merge_model(&model, &file);
            merge_objects(&mut merged, file);
        }
        proptest::prop_assert_eq!(merged, model);
    }
}
