//! HTTPS on the agent: certificates made by `cairn tls`, served on `ports.https`, clients
//! checked with `verify_incoming` (missing, wrong-CA and expired certificates refused with a
//! log line saying why), the CLI over HTTPS, a certificate renewed with SIGHUP while an open
//! connection keeps working, slow handshakes cut off, and bad TLS config refused at start.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use support::{cairn_bin, Agent};

/// Runs `cairn args...` in `dir` to its end.
fn cairn(dir: &Path, args: &[&str]) -> Output {
    Command::new(cairn_bin()).args(args).current_dir(dir).output().expect("run cairn")
}

fn ok(output: Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "failed: {text}{}", String::from_utf8_lossy(&output.stderr));
    text
}

fn failed(output: Output) -> String {
    assert!(!output.status.success(), "succeeded: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// A CA, one server and one CLI certificate in a new directory, made by `cairn tls`.
struct Lab {
    dir: tempfile::TempDir,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().expect("tempdir");
        ok(cairn(dir.path(), &["tls", "ca", "create"]));
        ok(cairn(dir.path(), &["tls", "cert", "create", "-server"]));
        ok(cairn(dir.path(), &["tls", "cert", "create", "-cli"]));
        Lab { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn file(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    /// An agent serving HTTPS on a free port with the server certificate, plus `tls_extra`
    /// (keys of `tls.defaults`) and `top_extra` (top-level keys).
    fn agent(&self, tls_extra: &str, top_extra: &str) -> (Agent, SocketAddr) {
        let config = format!(
            r#"{{"ports": {{"https": 0}}, {top_extra}
                "tls": {{"defaults": {{"ca_file": "{}", "cert_file": "{}", "key_file": "{}" {tls_extra}}}}}}}"#,
            self.file("consul-agent-ca.pem"),
            self.file("dc1-server-consul-0.pem"),
            self.file("dc1-server-consul-0-key.pem"),
        );
        let path = self.path("agent.json");
        std::fs::write(&path, config).expect("config");
        let agent = Agent::start(&["-config-file", &path.display().to_string()]);
        let https = agent
            .log()
            .lines()
            .find_map(|l| l.split("HTTPS API listening addr=").nth(1)?.split_whitespace().next()?.parse().ok())
            .expect("the HTTPS address in the log");
        (agent, https)
    }

    /// `cairn members` over HTTPS, trusting the lab's CA, with `extra` flags.
    fn members(&self, https: SocketAddr, extra: &[&str]) -> Output {
        let addr = format!("https://{https}");
        let ca = self.file("consul-agent-ca.pem");
        let mut args = vec!["members", "-http-addr", &addr, "-ca-file", &ca];
        args.extend(extra);
        cairn(self.dir.path(), &args)
    }
}

#[test]
fn tls_command_makes_a_ca_and_certificates_and_never_overwrites() {
    let lab = Lab::new();
    let again = failed(cairn(lab.dir.path(), &["tls", "ca", "create"]));
    assert!(again.contains("already exists; not overwritten"), "{again}");
    let second = ok(cairn(lab.dir.path(), &["tls", "cert", "create", "-server", "-node", "s1"]));
    assert!(second.contains("dc1-server-consul-1.pem"), "numbered after the first: {second}");
    let none = failed(cairn(lab.dir.path(), &["tls", "cert", "create"]));
    assert!(none.contains("-server, -client or -cli"), "{none}");
    let mode = |name: &str| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(lab.path(name)).expect("file").permissions().mode() & 0o777
    };
    assert_eq!(mode("consul-agent-ca-key.pem"), 0o600, "keys are private");
    assert_eq!(mode("dc1-server-consul-1-key.pem"), 0o600);
    // The server certificate names its role, the node, localhost and 127.0.0.1 and chains to the CA.
    let roots = cairn::tls::load_roots(&lab.path("consul-agent-ca.pem")).expect("CA");
    let certs = cairn::tls::load_certs("cert_file", &lab.path("dc1-server-consul-1.pem")).expect("cert");
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), cairn::tls::provider())
        .build()
        .expect("verifier");
    use rustls::client::danger::ServerCertVerifier;
    for name in ["server.dc1.consul", "s1.server.dc1.consul", "localhost", "127.0.0.1"] {
        let name = rustls::pki_types::ServerName::try_from(name).expect("name");
        verifier
            .verify_server_cert(&certs[0], &[], &name, &[], rustls::pki_types::UnixTime::now())
            .unwrap_or_else(|e| panic!("{name:?}: {e}"));
    }
}

#[test]
fn https_serves_the_api_and_the_cli_checks_the_agent_certificate() {
    let lab = Lab::new();
    let (agent, https) = lab.agent("", "");
    let out = ok(lab.members(https, &[]));
    assert!(out.contains("test-node") && out.contains("alive"), "{out}");
    // Without the lab's CA the agent's certificate is not trusted.
    let addr = format!("https://{https}");
    let refused = failed(cairn(lab.dir.path(), &["members", "-http-addr", &addr]));
    assert!(refused.contains("cannot reach the cairn agent"), "{refused}");
    // CONSUL_HTTP_ADDR / CONSUL_HTTP_SSL / CONSUL_CACERT work as with Consul's CLI.
    let by_env = Command::new(cairn_bin())
        .args(["members"])
        .env("CONSUL_HTTP_ADDR", https.to_string())
        .env("CONSUL_HTTP_SSL", "true")
        .env("CONSUL_CACERT", lab.path("consul-agent-ca.pem"))
        .output()
        .expect("run");
    assert!(ok(by_env).contains("test-node"));
    // CONSUL_HTTP_SSL_VERIFY=false: the certificate is not checked (a lab's last resort).
    let unchecked = Command::new(cairn_bin())
        .args(["members", "-http-addr", &addr])
        .env("CONSUL_HTTP_SSL_VERIFY", "false")
        .output()
        .expect("run");
    assert!(ok(unchecked).contains("test-node"));
    // Plain HTTP keeps working beside it.
    assert_eq!(agent.get("/v1/status/leader").status, 200);
    // The server RPC with a certificate but without verify_incoming (the step between off and
    // enforced): TLS and plain text are both answered.
    let rpc = rpc_address(&agent);
    let hello = hello_to(&agent);
    let mut over_tls = rpc_connect(&lab, rpc, "dc1-cli-consul-0");
    let mut plain = TcpStream::connect(rpc).expect("connect");
    plain.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    for stream in [&mut over_tls as &mut dyn ReadWrite, &mut plain] {
        assert_eq!(rpc_call(stream, &hello), serde_json::json!("Hello"));
        assert_eq!(
            rpc_call(stream, &serde_json::json!("Status")),
            serde_json::json!({"Status": {"initialized": true}})
        );
    }
}

/// Makes a client certificate for `cn` signed by the lab's CA, valid `from`..`until`.
fn client_cert(lab: &Lab, name: &str, from: time::OffsetDateTime, until: time::OffsetDateTime) {
    let ca_key = rcgen::KeyPair::from_pem(&std::fs::read_to_string(lab.path("consul-agent-ca-key.pem")).expect("key"))
        .expect("CA key");
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&std::fs::read_to_string(lab.path("consul-agent-ca.pem")).expect("ca"), ca_key)
            .expect("issuer");
    let mut params = rcgen::CertificateParams::new(vec!["cli.dc1.consul".to_string()]).expect("params");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    params.not_before = from;
    params.not_after = until;
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = params.signed_by(&key, &issuer).expect("sign");
    std::fs::write(lab.path(&format!("{name}.pem")), cert.pem()).expect("write");
    std::fs::write(lab.path(&format!("{name}-key.pem")), key.serialize_pem()).expect("write");
}

#[test]
fn verify_incoming_refuses_missing_foreign_and_expired_client_certificates() {
    let lab = Lab::new();
    let (agent, https) = lab.agent(r#", "verify_incoming": true"#, "");
    let (cert, key) = (lab.file("dc1-cli-consul-0.pem"), lab.file("dc1-cli-consul-0-key.pem"));
    assert!(ok(lab.members(https, &["-client-cert", &cert, "-client-key", &key])).contains("test-node"));

    let without = failed(lab.members(https, &[]));
    assert!(without.contains("cannot reach"), "{without}");
    agent.wait_log("TLS handshake refused", Duration::from_secs(10));
    assert!(agent.log().contains("peer sent no certificates"), "{}", agent.log());

    // A certificate from another CA.
    let other = Lab::new();
    let (cert, key) = (other.file("dc1-cli-consul-0.pem"), other.file("dc1-cli-consul-0-key.pem"));
    failed(lab.members(https, &["-client-cert", &cert, "-client-key", &key]));
    agent.wait_log("UnknownIssuer", Duration::from_secs(10));

    // An expired certificate from the right CA.
    let now = time::OffsetDateTime::now_utc();
    client_cert(&lab, "expired", now - time::Duration::days(30), now - time::Duration::days(1));
    let (cert, key) = (lab.file("expired.pem"), lab.file("expired-key.pem"));
    failed(lab.members(https, &["-client-cert", &cert, "-client-key", &key]));
    agent.wait_log("certificate expired", Duration::from_secs(10));
    // The agent kept serving throughout.
    let (cert, key) = (lab.file("dc1-cli-consul-0.pem"), lab.file("dc1-cli-consul-0-key.pem"));
    assert!(ok(lab.members(https, &["-client-cert", &cert, "-client-key", &key])).contains("test-node"));
}

/// A TLS client that trusts the lab's CA, connected to `https`.
fn tls_connect(lab: &Lab, https: SocketAddr) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let roots = cairn::tls::load_roots(&lab.path("consul-agent-ca.pem")).expect("CA");
    let config = rustls::ClientConfig::builder_with_provider(cairn::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    handshake(config, "localhost", https)
}

/// A TLS connection to `addr` with `config`, expecting `name`, handshake done.
fn handshake(
    config: rustls::ClientConfig,
    name: &'static str,
    addr: SocketAddr,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from(name).expect("name");
    let connection = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let socket = TcpStream::connect(addr).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut stream = rustls::StreamOwned::new(connection, socket);
    while stream.conn.is_handshaking() {
        stream.conn.complete_io(&mut stream.sock).expect("handshake");
    }
    stream
}

/// One keep-alive GET on `stream`; the status code.
fn get_on(stream: &mut impl ReadWrite, path: &str) -> u16 {
    write!(stream, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("content-length");
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).expect("read body");
    head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status")
}

/// A server-RPC connection to `rpc` over TLS, presenting the lab's certificate `cert`.
fn rpc_connect(lab: &Lab, rpc: SocketAddr, cert: &str) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let roots = cairn::tls::load_roots(&lab.path("consul-agent-ca.pem")).expect("CA");
    let chain = cairn::tls::load_certs("cert_file", &lab.path(&format!("{cert}.pem"))).expect("cert");
    let key = cairn::tls::load_key(&lab.path(&format!("{cert}-key.pem"))).expect("key");
    let config = rustls::ClientConfig::builder_with_provider(cairn::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client certificate");
    handshake(config, "server.dc1.consul", rpc)
}

/// One server-RPC request (a frame without a blob) and the JSON of its answer.
fn rpc_call(stream: &mut (impl ReadWrite + ?Sized), request: &serde_json::Value) -> serde_json::Value {
    let json = request.to_string().into_bytes();
    let mut frame = vec![1u8];
    frame.extend((json.len() as u32).to_be_bytes());
    frame.extend(0u32.to_be_bytes());
    frame.extend(json);
    stream.write_all(&frame).expect("send");
    let mut head = [0u8; 9];
    stream.read_exact(&mut head).expect("answer header");
    let json_len = u32::from_be_bytes(head[1..5].try_into().expect("4 bytes")) as usize;
    let blob_len = u32::from_be_bytes(head[5..9].try_into().expect("4 bytes")) as usize;
    let mut body = vec![0u8; json_len + blob_len];
    stream.read_exact(&mut body).expect("answer");
    serde_json::from_slice(&body[..json_len]).expect("JSON answer")
}

/// Where `agent` serves the server RPC, from its log.
fn rpc_address(agent: &Agent) -> SocketAddr {
    agent
        .log()
        .lines()
        .find_map(|l| l.split("server RPC listening addr=").nth(1)?.split_whitespace().next()?.parse().ok())
        .expect("the RPC address in the log")
}

/// The first frame of a server-RPC connection to `agent`.
fn hello_to(agent: &Agent) -> serde_json::Value {
    let node_id = agent.get("/v1/agent/self").json()["Config"]["NodeID"].as_str().expect("id").replace('-', "");
    let uuid: [u8; 16] = (0..16)
        .map(|i| u8::from_str_radix(&node_id[2 * i..2 * i + 2], 16).expect("hex"))
        .collect::<Vec<u8>>()
        .try_into()
        .expect("16 bytes");
    serde_json::json!({"Hello": {"cluster": "dc1", "from": 4242, "to": cairn::cluster::raft_node_id(uuid)}})
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn served_certificate(stream: &rustls::StreamOwned<rustls::ClientConnection, TcpStream>) -> Vec<u8> {
    stream.conn.peer_certificates().expect("a certificate")[0].to_vec()
}

#[test]
fn sighup_serves_a_renewed_certificate_and_open_connections_keep_going() {
    let lab = Lab::new();
    let (agent, https) = lab.agent("", "");
    let mut open = tls_connect(&lab, https);
    assert_eq!(get_on(&mut open, "/v1/status/leader"), 200);
    let first = served_certificate(&open);

    // Renew: a new certificate in the configured files, then SIGHUP.
    ok(cairn(lab.dir.path(), &["tls", "cert", "create", "-server"]));
    std::fs::rename(lab.path("dc1-server-consul-1.pem"), lab.path("dc1-server-consul-0.pem")).expect("rename");
    std::fs::rename(lab.path("dc1-server-consul-1-key.pem"), lab.path("dc1-server-consul-0-key.pem")).expect("rename");
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reloaded", Duration::from_secs(10));
    let renewed = tls_connect(&lab, https);
    let second = served_certificate(&renewed);
    assert_ne!(first, second, "new handshakes get the renewed certificate");
    let on_disk = cairn::tls::load_certs("cert_file", &lab.path("dc1-server-consul-0.pem")).expect("cert");
    assert_eq!(second, on_disk[0].to_vec());
    assert_eq!(get_on(&mut open, "/v1/status/leader"), 200, "the connection opened before the reload still works");

    // A broken file on reload changes nothing: the reload fails, the last certificate stays.
    std::fs::write(lab.path("dc1-server-consul-0.pem"), "not a certificate").expect("write");
    agent.signal(libc::SIGHUP);
    agent.wait_log("config reload failed", Duration::from_secs(10));
    assert!(agent.log().contains("dc1-server-consul-0.pem: no certificate in it"), "{}", agent.log());
    assert_eq!(served_certificate(&tls_connect(&lab, https)), second);
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_cut_off() {
    let lab = Lab::new();
    let (agent, https) = lab.agent("", r#""limits": {"https_handshake_timeout": "500ms"},"#);
    let mut silent = TcpStream::connect(https).expect("connect");
    silent.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut buf = [0u8; 16];
    assert_eq!(silent.read(&mut buf).expect("closed, not timed out"), 0, "the agent closed the connection");
    agent.wait_log("TLS handshake not finished in time", Duration::from_secs(10));
    // Plain HTTP sent to the HTTPS port is refused the same way, with a reason.
    let mut plain = TcpStream::connect(https).expect("connect");
    plain.write_all(b"GET /v1/status/leader HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    agent.wait_log("TLS handshake refused", Duration::from_secs(10));
}

#[test]
fn bad_tls_config_stops_the_start_with_the_file_and_key_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data").display().to_string();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("write");
        path.display().to_string()
    };
    let start = |config: &str| {
        let mut args = vec!["agent", "-server", "-bootstrap", "-data-dir", &data, "-config-file", config];
        args.extend(support::LOOPBACK_FLAGS);
        Agent::run_to_exit(&args)
    };
    let no_cert = write("a.json", r#"{"ports": {"https": 0}}"#);
    let exited = start(&no_cert);
    assert!(!exited.status.success());
    assert!(
        exited.stderr.contains("ports.https is set but the certificate or its key is missing"),
        "{}",
        exited.stderr
    );

    let missing = write(
        "b.json",
        r#"{"ports": {"https": 0}, "tls": {"defaults": {"cert_file": "/nonexistent/c.pem", "key_file": "/nonexistent/k.pem"}}}"#,
    );
    let exited = start(&missing);
    assert!(!exited.status.success());
    assert!(exited.stderr.contains("tls cert_file /nonexistent/c.pem: No such file"), "{}", exited.stderr);

    let old = write("c.json", r#"{"tls": {"defaults": {"tls_min_version": "TLSv1_0"}}}"#);
    let exited = start(&old);
    assert!(exited.stderr.contains("tls.defaults.tls_min_version"), "{}", exited.stderr);

    // A key that belongs to another certificate.
    let lab = Lab::new();
    let mismatched = write(
        "d.json",
        &format!(
            r#"{{"ports": {{"https": 0}}, "tls": {{"defaults": {{"cert_file": "{}", "key_file": "{}"}}}}}}"#,
            lab.file("dc1-server-consul-0.pem"),
            lab.file("dc1-cli-consul-0-key.pem")
        ),
    );
    let exited = start(&mismatched);
    assert!(exited.stderr.contains("the key does not belong to the certificate"), "{}", exited.stderr);
}

#[test]
fn servers_replicate_over_mutual_tls_and_refuse_a_server_without_it() {
    use support::cluster::{server_args, FORM};
    let lab = Lab::new();
    let config = lab.path("rpc.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"tls": {{"defaults": {{"ca_file": "{}", "cert_file": "{}", "key_file": "{}"}},
                 "internal_rpc": {{"verify_incoming": true, "verify_outgoing": true, "verify_server_hostname": true}}}}}}"#,
            lab.file("consul-agent-ca.pem"),
            lab.file("dc1-server-consul-0.pem"),
            lab.file("dc1-server-consul-0-key.pem"),
        ),
    )
    .expect("config");
    let dir = tempfile::tempdir().expect("tempdir");
    let spawn = |name: &str, join: Option<&str>, tls: bool| {
        let mut args = server_args(name, dir.path(), 3, join);
        if tls {
            args.extend(["-config-file".to_string(), config.display().to_string()]);
        }
        Agent::spawn_until(args, dir.path().join(name), &[], "DNS listening")
    };
    let first = spawn("s1", None, true);
    let join = first.gossip.to_string();
    let servers = [first, spawn("s2", Some(&join), true), spawn("s3", Some(&join), true)];
    for s in &servers {
        s.wait_log("registered this server in the catalog", FORM);
    }
    // Writes through any server reach every server: Raft runs over TLS.
    assert_eq!(servers[1].put("/v1/kv/over-tls", "yes").text(), "true");
    for s in &servers {
        support::wait_for("the write on every server", FORM, || {
            let r = s.get("/v1/kv/over-tls?stale&raw");
            (r.status == 200 && r.text() == "yes").then_some(())
        });
    }
    // A client agent with its own certificate forwards through them.
    ok(cairn(lab.dir.path(), &["tls", "cert", "create", "-client"]));
    let client_config = lab.path("client.json");
    let text = std::fs::read_to_string(&config).expect("config");
    let text = text.replace("dc1-server-consul-0", "dc1-client-consul-0");
    std::fs::write(&client_config, text).expect("client config");
    let mut args = support::cluster::agent_args("c1", dir.path(), None, Some(&join));
    args.extend(["-config-file".to_string(), client_config.display().to_string()]);
    let client = Agent::spawn_client(args, dir.path().join("c1"));
    support::wait_for("a write through the client agent", FORM, || {
        (client.put("/v1/kv/from-client", "tls").text() == "true").then_some(())
    });
    assert_eq!(servers[0].get("/v1/kv/from-client?raw").text(), "tls");

    let rpc = rpc_address(&servers[0]);
    // The client's certificate is the CA's but names no server: with verify_server_hostname
    // it may ask what agents ask, never speak Raft or forward a write past the ACL checks.
    let mut as_client = rpc_connect(&lab, rpc, "dc1-client-consul-0");
    let hello = hello_to(&servers[0]);
    assert_eq!(rpc_call(&mut as_client, &hello), serde_json::json!("Hello"));
    assert_eq!(
        rpc_call(&mut as_client, &serde_json::json!("Status")),
        serde_json::json!({"Status": {"initialized": true}})
    );
    let forged = serde_json::json!({"Forward": {"v": 1, "commands": [
        {"KvSet": {"key": "forged", "value": null, "flags": 0, "cas": null}}]}});
    let refused = rpc_call(&mut as_client, &forged);
    assert!(refused["Refused"].as_str().is_some_and(|r| r.contains("servers only")), "{refused}");
    servers[0].wait_log("this request is for servers only", FORM);
    assert_eq!(servers[0].get("/v1/kv/forged").status, 404, "nothing applied");

    // Plain text to a server's RPC port is refused with the reason, before any hello is read.
    let mut plain_rpc = TcpStream::connect(rpc).expect("connect");
    plain_rpc.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    plain_rpc.write_all(&[1, 0, 0, 0, 2, 0, 0, 0, 0, b'{', b'}']).expect("write");
    let mut answer = Vec::new();
    let _ = plain_rpc.read_to_end(&mut answer);
    assert!(String::from_utf8_lossy(&answer).contains("accepts only TLS"), "{:?}", String::from_utf8_lossy(&answer));
    // A server without TLS is refused by the others, and they by it.
    let plain = spawn("s4", Some(&join), false);
    plain.wait_log("server RPC TLS connection refused: this server has no certificate", FORM);
    assert_eq!(plain.get("/v1/kv/over-tls?stale").status, 404, "nothing replicated to it");
}
