//! Sessions and locks over HTTP against a running agent: competing holders, blocking on a
//! lock key, lock-delay, behaviors, invalidation by a failing check and by TTL, txn verbs,
//! and Consul's answers to bad input.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{wait_for, Agent};

fn create(agent: &Agent, body: Value) -> String {
    let r = agent.put("/v1/session/create", body.to_string());
    assert_eq!(r.status, 200, "create {body}: {}", r.text());
    r.json()["ID"].as_str().expect("an ID").to_string()
}

fn put_text(agent: &Agent, path: &str, body: &str) -> String {
    let r = agent.put(path, body);
    assert_eq!(r.status, 200, "PUT {path}: {}", r.text());
    r.text()
}

fn kv_entry(agent: &Agent, key: &str) -> Value {
    let r = agent.get(&format!("/v1/kv/{key}"));
    assert_eq!(r.status, 200, "GET {key}: {}", r.text());
    r.json()[0].clone()
}

#[test]
fn sessions_and_locks_behave_as_consul() {
    let agent = Agent::start(&[]);

    // Bad input: 400 with Consul's reasons, nothing created.
    for (body, reason) in [
        (json!({"TTL": "5s"}), "Invalid Session TTL '5s', must be between [10s=24h0m0s]"),
        (json!({"Behavior": "explode"}), "Invalid Behavior setting 'explode'"),
        (json!({"NodeChecks": ["nope"]}), "Missing check 'nope' registration"),
        (json!({"Node": "ghost"}), "Missing node registration"),
        (json!({"LockDelay": "2m"}), "Invalid LockDelay"),
    ] {
        let r = agent.put("/v1/session/create", body.to_string());
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert!(r.text().contains(reason), "{body}: {}", r.text());
    }
    assert_eq!(agent.get("/v1/session/list").json(), json!([]));

    // Defaults: this agent's node, tied to its serfHealth, 15 s lock delay, release.
    let a = create(&agent, json!({"Name": "a", "LockDelay": "1s"}));
    let info = agent.get(&format!("/v1/session/info/{a}"));
    assert!(info.index() > 0);
    let shown = &info.json()[0];
    assert_eq!(shown["Node"], "test-node");
    assert_eq!(shown["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(shown["Behavior"], "release");
    assert_eq!(shown["LockDelay"], 1_000_000_000u64);
    assert_eq!(shown["TTL"], "");
    let b = create(&agent, json!({"Name": "b", "LockDelay": 1, "TTL": "30s"}));
    assert_eq!(agent.get(&format!("/v1/session/info/{b}")).json()[0]["TTL"], "30s");
    assert_eq!(agent.get("/v1/session/node/test-node").json().as_array().map(Vec::len), Some(2));
    assert_eq!(agent.get("/v1/session/info/00000000-0000-0000-0000-000000000000").json(), json!([]));

    // Two competing holders.
    assert_eq!(put_text(&agent, &format!("/v1/kv/service/leader?acquire={a}"), "a"), "true");
    assert_eq!(put_text(&agent, &format!("/v1/kv/service/leader?acquire={b}"), "b"), "false");
    let held = kv_entry(&agent, "service/leader");
    assert_eq!((held["Session"].as_str(), held["LockIndex"].as_u64()), (Some(a.as_str()), Some(1)));

    // A blocking query on the lock key wakes when the holder releases it.
    let index = agent.get("/v1/kv/service/leader").index();
    let http = agent.http;
    let waiter = std::thread::spawn(move || {
        let started = Instant::now();
        let r = support::http_request(http, "GET", &format!("/v1/kv/service/leader?index={index}&wait=30s"), b"");
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(put_text(&agent, &format!("/v1/kv/service/leader?release={b}"), "x"), "false", "b holds nothing");
    assert_eq!(put_text(&agent, &format!("/v1/kv/service/leader?release={a}"), "released"), "true");
    let (woken, waited) = waiter.join().expect("waiter");
    assert!(waited < Duration::from_secs(10), "the blocking query waited {waited:?}");
    assert!(woken.index() > index);
    assert!(woken.json()[0].get("Session").is_none(), "{}", woken.text());

    // b takes it; destroying b frees it, but a cannot take it within b's 1 s lock delay.
    assert_eq!(put_text(&agent, &format!("/v1/kv/service/leader?acquire={b}"), "b"), "true");
    assert_eq!(kv_entry(&agent, "service/leader")["LockIndex"], 2);
    let destroyed_at = Instant::now();
    assert_eq!(put_text(&agent, &format!("/v1/session/destroy/{b}"), ""), "true");
    assert!(kv_entry(&agent, "service/leader").get("Session").is_none(), "destroy releases held keys");
    assert_eq!(put_text(&agent, &format!("/v1/kv/service/leader?acquire={a}"), "a"), "false", "lock delay");
    wait_for("the lock delay to pass", Duration::from_secs(10), || {
        (put_text(&agent, &format!("/v1/kv/service/leader?acquire={a}"), "a") == "true").then_some(())
    });
    assert!(destroyed_at.elapsed() >= Duration::from_millis(900), "acquired within the lock delay");
    assert_eq!(kv_entry(&agent, "service/leader")["LockIndex"], 3);

    // A destroyed session: renew 404, acquire 400 with the reason.
    let r = agent.put(&format!("/v1/session/renew/{b}"), "");
    assert_eq!(r.status, 404, "{}", r.text());
    let r = agent.put(&format!("/v1/kv/other?acquire={b}"), "x");
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("invalid session"), "{}", r.text());
    let r = agent.put(&format!("/v1/session/renew/{a}"), "");
    assert_eq!((r.status, r.json()[0]["ID"].as_str()), (200, Some(a.as_str())));
    let r = agent.put("/v1/kv/k?acquire=x&release=x", "");
    assert_eq!(r.status, 400, "{}", r.text());

    // Behavior delete removes the keys a session held.
    let d = create(&agent, json!({"Behavior": "delete", "LockDelay": "0s"}));
    assert_eq!(put_text(&agent, &format!("/v1/kv/ephemeral/d?acquire={d}"), "d"), "true");
    put_text(&agent, &format!("/v1/session/destroy/{d}"), "");
    assert_eq!(agent.get("/v1/kv/ephemeral/d").status, 404, "behavior delete");

    // A check turning critical invalidates the sessions tied to it.
    let node = |status: &str| {
        json!({"Node": "web1", "Address": "10.0.0.9",
               "Check": {"CheckID": "alive", "Name": "alive", "Status": status}})
        .to_string()
    };
    put_text(&agent, "/v1/catalog/register", &node("passing"));
    let w = create(&agent, json!({"Node": "web1", "NodeChecks": ["alive"], "LockDelay": "0s"}));
    assert_eq!(put_text(&agent, &format!("/v1/kv/web/leader?acquire={w}"), "w"), "true");
    put_text(&agent, "/v1/catalog/register", &node("critical"));
    assert_eq!(agent.get(&format!("/v1/session/info/{w}")).json(), json!([]));
    assert!(kv_entry(&agent, "web/leader").get("Session").is_none());
    let r = agent.put("/v1/session/create", json!({"Node": "web1", "NodeChecks": ["alive"]}).to_string());
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Check 'alive' is in critical state"), "{}", r.text());

    // Deregistering the node invalidates its sessions.
    put_text(&agent, "/v1/catalog/register", &node("passing"));
    let n = create(&agent, json!({"Node": "web1", "NodeChecks": []}));
    put_text(&agent, "/v1/catalog/deregister", &json!({"Node": "web1"}).to_string());
    assert_eq!(agent.get(&format!("/v1/session/info/{n}")).json(), json!([]));

    // Transactions: lock, check-session, unlock; a failed op rolls everything back.
    let ops = |verbs: &[(&str, &str)]| {
        Value::Array(
            verbs
                .iter()
                .map(|(verb, session)| json!({"KV": {"Verb": verb, "Key": "txn/lock", "Value": "dg==", "Session": session}}))
                .collect(),
        )
        .to_string()
    };
    let r = agent.put("/v1/txn", ops(&[("lock", &a), ("check-session", &a)]));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["Results"][0]["KV"]["Session"], a.as_str());
    let r = agent.put("/v1/txn", ops(&[("unlock", &a), ("lock", "00000000-0000-0000-0000-000000000000")]));
    assert_eq!(r.status, 409, "{}", r.text());
    assert!(r.json()["Errors"][0]["What"].as_str().unwrap_or_default().contains("invalid session"), "{}", r.text());
    assert_eq!(kv_entry(&agent, "txn/lock")["Session"], a.as_str(), "rolled back");
    let r = agent.put("/v1/txn", json!([{"KV": {"Verb": "lock", "Key": "txn/lock"}}]).to_string());
    assert_eq!(r.status, 409, "lock without a session: {}", r.text());

    // The sessions table has its own index: a blocking list wakes on a new session.
    let index = agent.get("/v1/session/list").index();
    let waiter = std::thread::spawn(move || {
        support::http_request(http, "GET", &format!("/v1/session/list?index={index}&wait=30s"), b"")
    });
    std::thread::sleep(Duration::from_millis(200));
    let late = create(&agent, json!({"Name": "late"}));
    let listed = waiter.join().expect("waiter");
    assert!(listed.index() > index);
    assert!(listed.json().as_array().expect("list").iter().any(|s| s["ID"] == late.as_str()));
}

#[test]
fn ttl_expiry_frees_the_lock_and_renewals_keep_a_session() {
    let agent = Agent::start(&[]);
    let lapsing = create(&agent, json!({"TTL": "10s", "LockDelay": "0s"}));
    let renewed = create(&agent, json!({"TTL": "10s"}));
    let created = Instant::now();
    assert_eq!(put_text(&agent, &format!("/v1/kv/ttl/lock?acquire={lapsing}"), "x"), "true");
    let mut gone_after = None;
    while created.elapsed() < Duration::from_secs(35) {
        let r = agent.put(&format!("/v1/session/renew/{renewed}"), "");
        assert_eq!(r.status, 200, "a renewed session expired: {}", r.text());
        if agent.get(&format!("/v1/session/info/{lapsing}")).json() == json!([]) {
            gone_after = Some(created.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    let gone_after = gone_after.expect("the unrenewed session never expired");
    // The leader allows twice the TTL, as Consul.
    assert!(gone_after >= Duration::from_secs(19), "expired after {gone_after:?}, before twice its TTL");
    assert!(kv_entry(&agent, "ttl/lock").get("Session").is_none(), "its lock was not freed");
    assert_eq!(agent.get(&format!("/v1/session/info/{renewed}")).json()[0]["ID"], renewed.as_str());
    assert!(agent.log().contains("session TTL expired"), "{}", agent.log());
}
