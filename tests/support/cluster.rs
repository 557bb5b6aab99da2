//! Several agents on loopback forming one cluster: their flags, starting them, and which one
//! leads. Shared by the cluster tests and the fault harness.

use std::time::Duration;

use super::{try_http_request, wait_for, Agent};

/// How long a cluster may take to form or to elect a leader.
pub const FORM: Duration = Duration::from_secs(60);

/// Flags of agent `name` on loopback: a server expecting `expect` servers, or a client
/// (`None`); joining `join` if given.
pub fn agent_args(name: &str, dir: &std::path::Path, expect: Option<usize>, join: Option<&str>) -> Vec<String> {
    let listen: Vec<String> = super::LOOPBACK_FLAGS.iter().map(|s| s.to_string()).collect();
    agent_args_listening(name, dir, expect, join, &listen)
}

/// [`agent_args`] with other listener flags than loopback's ephemeral ports.
pub fn agent_args_listening(
    name: &str,
    dir: &std::path::Path,
    expect: Option<usize>,
    join: Option<&str>,
    listen: &[String],
) -> Vec<String> {
    let mut args = vec!["agent".to_string()];
    if let Some(expect) = expect {
        args.extend(["-server".to_string(), "-bootstrap-expect".to_string(), expect.to_string()]);
    }
    args.extend(listen.iter().cloned());
    args.extend(["-node".to_string(), name.to_string(), "-data-dir".to_string(), dir.join(name).display().to_string()]);
    if let Some(join) = join {
        args.extend(["-retry-join".to_string(), join.to_string()]);
    }
    args
}

pub fn server_args(name: &str, dir: &std::path::Path, expect: usize, join: Option<&str>) -> Vec<String> {
    agent_args(name, dir, Some(expect), join)
}

/// Starts a server and waits until it listens (not until it has a leader: the first of a
/// cluster has none until the others arrive).
pub fn spawn_server(name: &str, dir: &std::path::Path, expect: usize, join: Option<&str>) -> Agent {
    Agent::spawn_until(server_args(name, dir, expect, join), dir.join(name), &[], "DNS listening")
}

/// Starts `n` servers expecting `n`, the others joining the first; waits until each has
/// registered itself through the cluster's leader.
pub fn form_cluster(n: usize, dir: &std::path::Path) -> Vec<Agent> {
    let first = spawn_server("s1", dir, n, None);
    let join = first.gossip.to_string();
    let mut servers = vec![first];
    for i in 2..=n {
        servers.push(spawn_server(&format!("s{i}"), dir, n, Some(&join)));
    }
    for s in &servers {
        s.wait_log("registered this server in the catalog", FORM);
    }
    servers
}

pub fn leader_of(agent: &Agent) -> Option<String> {
    let r = try_http_request(agent.http, "GET", "/v1/status/leader", b"", Duration::from_secs(5))?;
    let leader: String = serde_json::from_slice(&r.body).ok()?;
    (!leader.is_empty()).then_some(leader)
}

/// The leader address every server in `servers` agrees on.
pub fn agreed_leader(servers: &[&Agent], timeout: Duration) -> String {
    wait_for("every server to report the same leader", timeout, || {
        let leaders: Vec<Option<String>> = servers.iter().map(|s| leader_of(s)).collect();
        let first = leaders[0].clone()?;
        leaders.iter().all(|l| l.as_deref() == Some(&first)).then_some(first)
    })
}

/// Index in `servers` of the one whose Raft address is `leader`.
pub fn leader_index(servers: &[&Agent], leader: &str) -> usize {
    servers
        .iter()
        .position(|s| {
            let config = s.get("/v1/operator/raft/configuration").json();
            let me = s.get("/v1/agent/self").json()["Config"]["NodeName"].clone();
            config["Servers"].as_array().unwrap().iter().any(|srv| srv["Node"] == me && srv["Address"] == leader)
        })
        .expect("the leader is one of the servers")
}
