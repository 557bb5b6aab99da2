//! The agent as a process: durability across SIGKILL, graceful SIGTERM, config and flag
//! errors, the data-dir lock, and the configured limits.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use serde_json::json;
use support::{Agent, IO_TIMEOUT};

#[test]
fn acknowledged_writes_survive_sigkill() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("data");
    let mut agent = Agent::start_in(&data_dir, &[]);
    let node_id = agent.get("/v1/agent/self").json()["Config"]["NodeID"].clone();

    // Concurrent writers: every PUT that answered `true` must be there after the kill.
    let addr = agent.http;
    let writers: Vec<_> = (0..8)
        .map(|w| {
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..40 {
                    let key = format!("durable/{w}/{i}");
                    let r = support::http_request(addr, "PUT", &format!("/v1/kv/{key}"), key.as_bytes());
                    if r.status == 200 && r.text() == "true" {
                        acked.push(key);
                    }
                }
                acked
            })
        })
        .collect();
    let acked: Vec<String> = writers.into_iter().flat_map(|h| h.join().expect("writer")).collect();
    assert_eq!(acked.len(), 320, "every write should have been acknowledged");
    let body = json!({"Node": "kept", "Address": "10.1.1.1", "Service": {"Service": "kept-svc", "Port": 1}});
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");
    let index_before = agent.get("/v1/catalog/service/kept-svc").index();

    agent.kill();
    let agent = Agent::start_in(&data_dir, &[]);
    for key in &acked {
        let r = agent.get(&format!("/v1/kv/{key}?raw"));
        assert_eq!((r.status, r.text()), (200, key.clone()), "acknowledged write {key} lost");
    }
    let r = agent.get("/v1/catalog/service/kept-svc");
    assert_eq!(r.json()[0]["Node"], "kept");
    assert_eq!(r.index(), index_before, "indexes must survive a restart unchanged");
    assert_eq!(agent.get("/v1/agent/self").json()["Config"]["NodeID"], node_id, "node ID must persist");
    // Writes keep going after recovery, with growing indexes.
    agent.put("/v1/kv/after", "1");
    assert!(agent.get("/v1/kv/after").index() > index_before);
}

/// A power loss keeps what was synced and loses the state-machine commits made since (they
/// skip their own fsync; the durable log has them). The failpoint copies the disk at every
/// sync; putting the copy back after a SIGKILL is that power loss. At restart the disk
/// stalls (the other failpoint), so no leader can commit the replay: meanwhile `?stale`
/// reads must wait rather than answer from the older state, and DNS must SERVFAIL rather
/// than deny a service it had answered.
#[test]
fn indexes_never_go_backwards_after_a_power_loss() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("data");
    let disk_at_sync = temp.path().join("disk-at-last-sync.mdb");
    let stall = temp.path().join("stall");
    let env = [
        ("CAIRN_TEST_COPY_ON_SYNC", disk_at_sync.display().to_string()),
        ("CAIRN_TEST_STALL_SYNC_WHILE", stall.display().to_string()),
    ];
    let mut agent = Agent::spawn_with_env(Agent::server_args(&data_dir, &[]), data_dir.clone(), &env);
    assert_eq!(agent.put("/v1/kv/k", "v1").text(), "true");
    let body = json!({"Node": "n1", "Address": "10.1.1.1", "Service": {"Service": "web", "Port": 80}});
    assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");
    assert_eq!(agent.put("/v1/kv/k", "v2").text(), "true");
    let acknowledged = agent.get("/v1/kv/k?stale").index();

    agent.kill();
    std::fs::copy(&disk_at_sync, data_dir.join("lmdb/data.mdb")).expect("power loss: back to the last sync");
    std::fs::write(&stall, "").expect("stall file");
    let agent = Agent::spawn_until(Agent::server_args(&data_dir, &[]), data_dir.clone(), &env, "DNS listening");
    agent.wait_log("replaying the log written before the restart", IO_TIMEOUT);
    let addr = agent.http;
    let stale_read = std::thread::spawn(move || support::http_request(addr, "GET", "/v1/kv/k?stale&raw", b""));
    for _ in 0..5 {
        let m = support::dns::udp(agent.dns, "web.service.consul.", RecordType::A, None);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "DNS while replaying: {m:?}\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!stale_read.is_finished(), "a stale read answered from the state before the power loss");

    std::fs::remove_file(&stall).expect("the disk recovers");
    let r = stale_read.join().expect("reader");
    assert_eq!((r.status, r.text()), (200, "v2".to_string()), "a stale read went back in time");
    assert!(r.index() >= acknowledged, "index {} after restart, {acknowledged} before", r.index());
    let m = support::wait_for("DNS to answer again", IO_TIMEOUT, || {
        let m = support::dns::udp(agent.dns, "web.service.consul.", RecordType::A, None);
        (m.metadata.response_code != ResponseCode::ServFail).then_some(m)
    });
    assert_eq!(support::dns::answers(&m), ["A 10.1.1.1"], "DNS after the replay: {m:?}");
    agent.wait_log("replayed the log written before the restart", IO_TIMEOUT);
}

#[test]
fn sigterm_answers_blocking_queries_at_once_and_exits_zero() {
    let mut agent = Agent::start(&[]);
    agent.put("/v1/kv/k", "v");
    let index = agent.get("/v1/kv/k").index();
    let addr = agent.http;
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let r = support::http_request(addr, "GET", &format!("/v1/kv/k?index={index}&wait=5m"), b"");
        (r, started.elapsed())
    });
    support::wait_for("the blocking query to be in flight", IO_TIMEOUT, || {
        // Nothing observable marks "in flight"; give the request a moment to arrive.
        std::thread::sleep(Duration::from_millis(300));
        Some(())
    });
    let status = agent.terminate();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    let (r, elapsed) = waiter.join().expect("waiter");
    assert_eq!(r.status, 200);
    assert!(elapsed < Duration::from_secs(10), "blocking query held the shutdown for {elapsed:?}");
    assert!(agent.log().contains("shutdown complete"));
}

#[test]
fn dev_mode_uses_a_temporary_data_dir_removed_on_exit() {
    let mut agent = Agent::spawn(
        ["agent", "-dev"].iter().chain(support::LOOPBACK_FLAGS.iter()).map(|s| s.to_string()).collect(),
        "".into(),
    );
    let log = agent.log();
    let dir =
        log.split("data_dir=").nth(1).and_then(|r| r.split_whitespace().next()).expect("data_dir logged").to_string();
    assert!(std::path::Path::new(&dir).exists());
    assert_eq!(agent.put("/v1/kv/dev", "1").text(), "true");
    assert!(agent.terminate().success());
    assert!(!std::path::Path::new(&dir).exists(), "dev data dir {dir} left behind");
}

#[test]
fn config_errors_name_the_file_and_key_and_exit_1() {
    let temp = tempfile::tempdir().expect("tempdir");
    let conf = temp.path().join("conf");
    std::fs::create_dir(&conf).expect("mkdir");
    let data = temp.path().join("data").display().to_string();
    let conf_s = conf.display().to_string();

    std::fs::write(conf.join("10-bad.json"), r#"{"dns_confg": {}}"#).expect("write");
    let out =
        Agent::run_to_exit(&["agent", "-server", "-bootstrap-expect", "1", "-data-dir", &data, "-config-dir", &conf_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("10-bad.json") && out.stderr.contains("dns_confg"), "{}", out.stderr);
    assert!(out.stderr.contains("did you mean \"dns_config\""), "{}", out.stderr);

    std::fs::write(conf.join("10-bad.json"), r#"{"ports": {"http": "eighty"}}"#).expect("write");
    let out =
        Agent::run_to_exit(&["agent", "-server", "-bootstrap-expect", "1", "-data-dir", &data, "-config-dir", &conf_s]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("ports.http") && out.stderr.contains("integer"), "{}", out.stderr);

    let out = Agent::run_to_exit(&["agent", "-server", "-http-port", "nope", "-data-dir", &data]);
    assert_ne!(out.status.code(), Some(0));
    assert!(out.stderr.contains("--http-port"), "flag error must name the flag: {}", out.stderr);

    let out = Agent::run_to_exit(&["agent", "-server"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("data_dir is required"), "{}", out.stderr);

    // A documented-but-unimplemented Consul key only warns.
    std::fs::write(conf.join("10-bad.json"), r#"{"telemetry": {"disable_hostname": true}, "datacenter": "dc1"}"#)
        .expect("write");
    let agent = Agent::spawn(
        [
            "agent",
            "-server",
            "-bootstrap-expect",
            "1",
            "-http-port",
            "0",
            "-dns-port",
            "0",
            "-data-dir",
            &data,
            "-config-dir",
            &conf_s,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        data.clone().into(),
    );
    assert!(agent.log().contains("telemetry"), "no warning for telemetry: {}", agent.log());
}

#[test]
fn a_second_agent_on_the_same_data_dir_is_refused() {
    let first = Agent::start(&[]);
    let data = first.data_dir.display().to_string();
    let out =
        Agent::run_to_exit(&["agent", "-server", "-bootstrap-expect", "1", "-http-port", "0", "-data-dir", &data]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("in use by another cairn agent"), "{}", out.stderr);
    assert_eq!(first.get("/v1/kv/x").status, 404, "the first agent must keep serving");

    let foreign = tempfile::tempdir().expect("tempdir");
    std::fs::write(foreign.path().join("precious.txt"), b"x").expect("write");
    let dir = foreign.path().display().to_string();
    let out = Agent::run_to_exit(&["agent", "-server", "-bootstrap-expect", "1", "-http-port", "0", "-data-dir", &dir]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stderr.contains("not a cairn data directory"), "{}", out.stderr);
}

#[test]
fn corrupt_lmdb_is_reported_with_its_path() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data_dir = temp.path().join("data");
    let mut agent = Agent::start_in(&data_dir, &[]);
    assert!(agent.terminate().success());
    let mdb = data_dir.join("lmdb").join("data.mdb");
    std::fs::write(&mdb, vec![0x5a; 64 * 1024]).expect("overwrite data.mdb");
    let data = data_dir.display().to_string();
    let out =
        Agent::run_to_exit(&["agent", "-server", "-bootstrap-expect", "1", "-http-port", "0", "-data-dir", &data]);
    assert_eq!(out.status.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(&data), "error must name the data dir: {}", out.stderr);
}

fn write_config(dir: &std::path::Path, json: serde_json::Value) -> String {
    let path = dir.join("limits.json");
    std::fs::write(&path, json.to_string()).expect("write config");
    path.display().to_string()
}

#[test]
fn limits_answer_429_and_the_agent_keeps_serving() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config =
        write_config(temp.path(), json!({"limits": {"http_max_conns_per_client": 3, "max_blocking_queries": 1}}));
    let agent = Agent::start(&["-config-file", &config]);

    // Connections: three idle ones fill the per-client quota; the fourth is told why.
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(agent.http).expect("connect")).collect();
    let r = support::wait_for("the fourth connection to be refused", IO_TIMEOUT, || {
        let mut extra = TcpStream::connect(agent.http).ok()?;
        extra.set_read_timeout(Some(IO_TIMEOUT)).ok()?;
        let _ = extra.write_all(b"GET /v1/kv/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        Some(support::read_response(&mut extra))
    });
    assert_eq!(r.status, 429);
    assert_eq!(r.text(), "Your IP is issuing too many concurrent connections, please rate limit your calls");
    drop(idle);
    support::wait_for("connections to be released", IO_TIMEOUT, || (agent.get("/v1/kv/x").status == 404).then_some(()));

    // Blocking queries: one may wait; the second is refused at once.
    let addr = agent.http;
    let index = agent.get("/v1/kv/x").index();
    let waiter = std::thread::spawn(move || {
        support::http_request(addr, "GET", &format!("/v1/kv/x?index={index}&wait=30s"), b"")
    });
    // Let the waiter's request arrive first; nothing outside the agent can observe it.
    std::thread::sleep(Duration::from_millis(500));
    let r = agent.get(&format!("/v1/kv/y?index={index}&wait=1s"));
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("too many blocking queries"), "{}", r.text());
    assert_eq!(agent.put("/v1/kv/x", "ok").text(), "true");
    let woken = waiter.join().expect("waiter");
    assert_eq!((woken.status, woken.json()[0]["Key"].as_str()), (200, Some("x")));
}

#[test]
fn a_full_lmdb_map_fails_writes_with_a_reason_while_reads_go_on() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = write_config(temp.path(), json!({"lmdb_map_size_mb": 4}));
    let agent = Agent::start(&["-config-file", &config]);
    agent.put("/v1/kv/small", "still here");
    let value = vec![b'v'; 400 * 1024];
    let full = support::wait_for("the map to fill", Duration::from_secs(60), || {
        let r = agent.put(&format!("/v1/kv/fill/{}", rand_suffix()), &value);
        (r.status != 200).then_some(r)
    });
    assert_eq!(full.status, 500, "{}", full.text());
    assert!(full.text().contains("data store is full"), "{}", full.text());
    assert_eq!(agent.get("/v1/kv/small?raw").text(), "still here", "reads must go on");
    assert_eq!(agent.get("/v1/catalog/nodes").status, 200);
    // Deleting data gives the room back: writes succeed again without a restart.
    assert_eq!(agent.delete("/v1/kv/fill/?recurse").text(), "true");
    support::wait_for("writes to be accepted again", Duration::from_secs(30), || {
        (agent.put("/v1/kv/after-full", "ok").status == 200).then_some(())
    });
    assert_eq!(agent.get("/v1/kv/after-full?raw").text(), "ok");
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[test]
fn readiness_and_stopping_reach_the_service_manager() {
    use std::os::unix::net::UnixDatagram;
    let temp = tempfile::tempdir().expect("tempdir");
    let socket_path = temp.path().join("notify.sock");
    let manager = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    manager.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
    let args: Vec<String> =
        ["agent", "-dev"].iter().chain(support::LOOPBACK_FLAGS.iter()).map(|s| s.to_string()).collect();
    let env = [("NOTIFY_SOCKET", socket_path.display().to_string())];
    let mut agent = Agent::spawn_with_env(args, temp.path().join("unused"), &env);
    let mut buf = [0u8; 512];
    let n = manager.recv(&mut buf).expect("READY within the deadline");
    let ready = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(ready.starts_with("READY=1\nSTATUS=DNS on 127.0.0.1:"), "{ready}");
    // READY came once both listeners were bound: they answer now.
    assert_eq!(agent.get("/v1/status/leader").status, 200);
    assert!(agent.terminate().success());
    let n = manager.recv(&mut buf).expect("STOPPING");
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn log_json_writes_one_json_object_per_line() {
    use std::io::BufRead;
    /// Kills the agent if the test fails half-way, so it cannot outlive the test.
    struct Reaped(std::process::Child);
    impl Drop for Reaped {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Reaped(
        std::process::Command::new(support::cairn_bin())
            .args(["agent", "-dev", "-log-json"])
            .args(support::LOOPBACK_FLAGS)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + IO_TIMEOUT;
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let logged = |seen: &[serde_json::Value], message: &str| seen.iter().any(|v| v["fields"]["message"] == message);
    // Self-registration may be logged before or after the listeners, depending on timing.
    while !(logged(&seen, "registered this server in the catalog") && logged(&seen, "HTTP API listening")) {
        let line =
            rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("log line before deadline");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
        seen.push(value);
    }
    let http = seen.iter().find(|v| v["fields"]["message"] == "HTTP API listening").expect("listening line");
    assert!(http["fields"]["addr"].as_str().is_some_and(|a| a.starts_with("127.0.0.1:")), "{http}");
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    assert!(child.0.wait().expect("wait").success());
}
