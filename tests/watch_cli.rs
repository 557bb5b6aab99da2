//! `cairn watch` end to end: the handler runs once per change of the watched view (not on
//! every wake-up), with the result on stdin, and the watch survives an agent restart.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use base64::Engine;
use support::{cairn_bin, wait_for, Agent};

const WAIT: Duration = Duration::from_secs(40);

/// A port free right now on 127.0.0.1 (the agent must come back on the same one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// A one-server agent on `data` whose HTTP API is on `port` (other listeners ephemeral).
fn start_on(data: &std::path::Path, port: &str) -> Agent {
    let flags = ["agent", "-server", "-bootstrap-expect", "1", "-node", "test-node", "-http-port", port];
    let mut args: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
    args.extend(["-dns-port", "0", "-serf-lan-port", "0", "-server-port", "0", "-bind", "127.0.0.1"].map(String::from));
    args.extend(["-data-dir".to_string(), data.display().to_string()]);
    Agent::spawn(args, data.to_path_buf())
}

fn runs(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.split("\n---\n")
        .filter(|r| !r.trim().is_empty())
        .map(|r| serde_json::from_str(r).expect("handler input is JSON"))
        .collect()
}

#[test]
fn cairn_watch_runs_its_handler_once_per_change_and_survives_a_restart() {
    let temp = tempfile::tempdir().expect("tempdir");
    let data = temp.path().join("data");
    let port = free_port().to_string();
    let mut agent = start_on(&data, &port);
    let log = temp.path().join("runs.log");
    let mut watch = Command::new(cairn_bin())
        .args(["watch", "-http-addr", &agent.http.to_string(), "-type", "key", "-key", "app/config", "--"])
        .args(["sh", "-c", &format!("cat >> {0}; printf '\\n---\\n' >> {0}", log.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairn watch");

    // The first result fires even though the key does not exist yet.
    wait_for("the first run", WAIT, || (runs(&log).len() == 1).then_some(()));
    assert_eq!(runs(&log)[0], serde_json::Value::Null);
    assert_eq!(agent.put("/v1/kv/app/config", "v1").status, 200);
    wait_for("a run for v1", WAIT, || (runs(&log).len() == 2).then_some(()));
    let value = runs(&log)[1][0]["Value"].as_str().expect("value").to_string();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(value).expect("base64"), b"v1");
    // Writes elsewhere do not run the handler.
    for i in 0..5 {
        assert_eq!(agent.put(&format!("/v1/kv/app/other{i}"), "x").status, 200);
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(runs(&log).len(), 2, "the handler ran for a change to another key");

    // The agent restarts on its data dir and port: the watch backs off, reconnects, and
    // fires only for the next change.
    assert!(agent.terminate().success());
    agent = start_on(&data, &port);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(runs(&log).len(), 2, "a restart alone is no change");
    assert_eq!(agent.put("/v1/kv/app/config", "v2").status, 200);
    wait_for("a run for v2 after the restart", WAIT, || (runs(&log).len() == 3).then_some(()));
    let value = runs(&log)[2][0]["Value"].as_str().expect("value").to_string();
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(value).expect("base64"), b"v2");
    watch.kill().expect("stop the watch");
    let _ = watch.wait();
}
