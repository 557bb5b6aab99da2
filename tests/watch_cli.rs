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
    args.extend(
        ["-dns-port", "0", "-serf-lan-port", "0", "-serf-wan-port", "0", "-server-port", "0", "-bind", "127.0.0.1"]
            .map(String::from),
    );
    args.extend(["-data-dir".to_string(), data.display().to_string()]);
    Agent::spawn(args, data.to_path_buf())
}

/// `cairn watch` against `agent` with `flags`, its handler appending each result to `log`
/// (read back with [`runs`]).
fn spawn_watch(agent: &Agent, flags: &[&str], log: &std::path::Path) -> std::process::Child {
    Command::new(cairn_bin())
        .args(["watch", "-http-addr", &agent.http.to_string()])
        .args(flags)
        .arg("--")
        .args(["sh", "-c", &format!("cat >> {0}; printf '\\n---\\n' >> {0}", log.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn cairn watch")
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
    let mut watch = spawn_watch(&agent, &["-type", "key", "-key", "app/config"], &log);

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

/// `-filter` reaches the agent: every result the handler gets holds only the matching nodes.
#[test]
fn cairn_watch_filter_selects_what_the_handler_sees() {
    let temp = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&[]);
    let register = |node: &str, env: &str| {
        let body = serde_json::json!({"Node": node, "Address": "10.0.0.1", "NodeMeta": {"env": env}});
        assert_eq!(agent.put("/v1/catalog/register", body.to_string()).text(), "true");
    };
    register("prod1", "prod");
    register("dev1", "dev");
    let log = temp.path().join("runs.log");
    let mut watch = spawn_watch(&agent, &["-type", "nodes", "-filter", "Meta.env == prod"], &log);
    let names = |run: &serde_json::Value| -> Vec<String> {
        run.as_array().expect("nodes").iter().map(|n| n["Node"].as_str().unwrap_or("?").to_string()).collect()
    };
    wait_for("the first run", WAIT, || (runs(&log).len() == 1).then_some(()));
    assert_eq!(names(&runs(&log)[0]), ["prod1"]);
    register("prod2", "prod");
    wait_for("a run for prod2", WAIT, || (runs(&log).len() == 2).then_some(()));
    assert_eq!(names(&runs(&log)[1]), ["prod1", "prod2"]);
    watch.kill().expect("stop the watch");
    let _ = watch.wait();
}

/// One request a hook received.
#[derive(Debug, Clone)]
struct Hook {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: serde_json::Value,
}

impl Hook {
    fn header(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// An HTTP server on 127.0.0.1 that records every request; paths under `/fail` answer 500.
fn hook_server() -> (std::net::SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<Hook>>>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let sink = std::sync::Arc::clone(&sink);
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
                let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                // Each connection may carry several requests (keep-alive).
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        break;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let mut headers = Vec::new();
                    loop {
                        let mut header = String::new();
                        reader.read_line(&mut header).expect("header");
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        let (name, value) = header.split_once(':').expect("name: value");
                        headers.push((name.trim().to_string(), value.trim().to_string()));
                    }
                    let length = headers
                        .iter()
                        .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                        .map_or(0, |(_, v)| v.parse().expect("length"));
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).expect("body");
                    let status = if path.starts_with("/fail") { "500 Internal Server Error" } else { "200 OK" };
                    let body = serde_json::from_slice(&body).expect("the hook gets JSON");
                    sink.lock().unwrap().push(Hook { method, path, headers, body });
                    let answer = format!("HTTP/1.1 {status}\r\ncontent-length: 4\r\n\r\nnope");
                    if stream.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, seen)
}

#[test]
fn config_watches_call_their_http_handler_once_per_change_and_follow_reloads() {
    let temp = tempfile::tempdir().expect("tempdir");
    let (hook, hooks) = hook_server();
    let script_log = temp.path().join("script.log");
    let config = temp.path().join("watches.json");
    let first = serde_json::json!({"watches": [
        {"type": "keyprefix", "prefix": "app/", "handler_type": "http",
         "http_handler_config": {"path": format!("http://{hook}/app"), "header": {"X-Token": ["s3cret"]}, "timeout": "5s"}},
        {"type": "key", "key": "flaky", "handler_type": "http",
         "http_handler_config": {"path": format!("http://{hook}/fail")}},
        {"type": "key", "key": "app/a",
         "args": ["sh", "-c", format!("cat >> {0}; printf '\\n---\\n' >> {0}", script_log.display())]}
    ]});
    std::fs::write(&config, first.to_string()).expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    let posts =
        |path: &str| -> Vec<Hook> { hooks.lock().unwrap().iter().filter(|h| h.path == path).cloned().collect() };

    // Each watch fires for its first result: nothing under app/ yet.
    let first_post = wait_for("the first POST", WAIT, || posts("/app").first().cloned());
    assert_eq!(first_post.method, "POST");
    assert_eq!(first_post.body, serde_json::Value::Null);
    assert_eq!(first_post.header("X-Token"), ["s3cret"]);
    assert_eq!(first_post.header("Content-Type"), ["application/json"]);
    assert!(first_post.header("X-Consul-Index")[0].parse::<u64>().expect("an index") > 0);
    wait_for("the script's first run", WAIT, || (runs(&script_log).len() == 1).then_some(()));

    assert_eq!(agent.put("/v1/kv/app/a", "1").status, 200);
    let second = wait_for("a POST for app/a", WAIT, || posts("/app").get(1).cloned());
    assert_eq!(second.body[0]["Key"], "app/a");
    wait_for("the script's run for app/a", WAIT, || (runs(&script_log).len() == 2).then_some(()));
    // Writes outside the prefix call nothing; the next change under it calls once.
    assert_eq!(agent.put("/v1/kv/other", "x").status, 200);
    assert_eq!(agent.put("/v1/kv/app/b", "2").status, 200);
    let third = wait_for("a POST for app/b", WAIT, || posts("/app").get(2).cloned());
    assert_eq!(third.body.as_array().map(Vec::len), Some(2), "{third:?}");
    assert_eq!(posts("/app").len(), 3, "one POST per change");
    assert_eq!(runs(&script_log).len(), 2, "the script watches app/a only");

    // A handler that answers 500 is reported, and its watch goes on.
    agent.wait_log("watch handler failed", WAIT);
    assert!(agent.log().contains("answered 500 Internal Server Error: nope"), "{}", agent.log());
    assert_eq!(agent.put("/v1/kv/flaky", "1").status, 200);
    wait_for("the failing hook called again", WAIT, || (posts("/fail").len() == 2).then_some(()));

    // A reload stops removed watches, starts new ones, and leaves unchanged ones alone.
    let second_config = serde_json::json!({"watches": [
        first["watches"][2].clone(),
        {"type": "services", "handler_type": "http", "http_handler_config": {"path": format!("http://{hook}/services"), "method": "PUT"}}
    ]});
    std::fs::write(&config, second_config.to_string()).expect("rewrite config");
    let reload = Command::new(cairn_bin())
        .args(["reload", "-http-addr", &agent.http.to_string()])
        .output()
        .expect("cairn reload");
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let services = wait_for("the new watch's first call", WAIT, || posts("/services").first().cloned());
    assert_eq!(services.method, "PUT");
    assert!(services.body["consul"].is_array(), "{:?}", services.body);
    wait_for("both removed watches stopped", WAIT, || {
        (agent.log().matches("config watch stopped").count() == 2).then_some(())
    });
    assert_eq!(agent.put("/v1/kv/app/c", "3").status, 200);
    assert_eq!(agent.put("/v1/kv/app/a", "4").status, 200);
    wait_for("the kept script watch fires for app/a", WAIT, || (runs(&script_log).len() == 3).then_some(()));
    assert_eq!(posts("/app").len(), 3, "a removed watch still called its hook");
}
