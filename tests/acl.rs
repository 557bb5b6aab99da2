//! ACLs through the HTTP API: default-deny refuses anonymous reads and writes and filters
//! lists, a `key_prefix` policy allows exactly its prefix, tokens by every carrier, bootstrap
//! once, a revoked token refused at once (a blocking query already waiting included), and
//! 401 while ACLs are off.

mod support;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::{http_request_with_headers, Agent, Response};

const ROOT: &str = "8c5d9bc1-3f7e-4a44-9d43-1b3b7c2a9e01";

fn acl_agent(extra_acl: Value) -> (Agent, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acl = json!({"enabled": true, "default_policy": "deny", "tokens": {"initial_management": ROOT}});
    if let (Some(acl), Some(extra)) = (acl.as_object_mut(), extra_acl.as_object()) {
        for (k, v) in extra {
            acl.insert(k.clone(), v.clone());
        }
    }
    let config = dir.path().join("acl.json");
    std::fs::write(&config, json!({ "acl": acl }).to_string()).expect("write config");
    let agent = Agent::start(&["-config-file", config.to_str().expect("utf-8 path")]);
    // The leader creates the initial management token shortly after it leads.
    support::wait_for("the initial management token", Duration::from_secs(15), || {
        (call(&agent, "GET", "/v1/acl/token/self", ROOT, b"").status == 200).then_some(())
    });
    (agent, dir)
}

fn call(agent: &Agent, method: &str, path: &str, token: &str, body: &[u8]) -> Response {
    let headers: Vec<(&str, &str)> = if token.is_empty() { vec![] } else { vec![("X-Consul-Token", token)] };
    http_request_with_headers(agent.http, method, path, &headers, body)
}

fn ok_json(r: Response) -> Value {
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A token whose only policy has `rules`; returns its secret and accessor.
fn token_with_rules(agent: &Agent, name: &str, rules: &str) -> (String, String) {
    let policy = ok_json(call(
        agent,
        "PUT",
        "/v1/acl/policy",
        ROOT,
        json!({"Name": name, "Rules": rules}).to_string().as_bytes(),
    ));
    let token = ok_json(call(
        agent,
        "PUT",
        "/v1/acl/token",
        ROOT,
        json!({"Description": name, "Policies": [{"ID": policy["ID"]}]}).to_string().as_bytes(),
    ));
    assert_eq!(token["Policies"][0]["Name"], name, "{token}");
    (
        token["SecretID"].as_str().expect("secret").to_string(),
        token["AccessorID"].as_str().expect("accessor").to_string(),
    )
}

#[test]
fn default_deny_refuses_the_anonymous_and_a_prefix_policy_allows_its_prefix_only() {
    let (agent, _dir) = acl_agent(json!({}));
    // Anonymous: refused, and lists come back empty and flagged.
    let r = call(&agent, "PUT", "/v1/kv/app/x", "", b"v");
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    assert_eq!(call(&agent, "GET", "/v1/kv/app/x", "", b"").status, 403);
    let services = call(&agent, "GET", "/v1/catalog/services", "", b"");
    assert_eq!(services.status, 200);
    assert_eq!(services.json(), json!({}));
    assert_eq!(services.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
    let nodes = call(&agent, "GET", "/v1/catalog/nodes", "", b"");
    assert_eq!(nodes.json(), json!([]));
    assert_eq!(call(&agent, "GET", "/v1/agent/self", "", b"").status, 403);
    assert_eq!(call(&agent, "GET", "/v1/operator/raft/configuration", "", b"").status, 403);
    assert_eq!(call(&agent, "GET", "/v1/snapshot", "", b"").status, 403);
    let r = call(&agent, "GET", "/v1/kv/app/x", "no-such-token", b"");
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    // The management token sees everything and no filter flag.
    let services = call(&agent, "GET", "/v1/catalog/services", ROOT, b"");
    assert!(services.json().get("consul").is_some(), "{}", services.text());
    assert_eq!(services.header("X-Consul-Results-Filtered-By-ACLs"), None);

    // HCL rules: write under app/, nothing else.
    let (secret, _) = token_with_rules(&agent, "app-writer", r#"key_prefix "app/" { policy = "write" }"#);
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/x", &secret, b"v").text(), "true");
    let r = call(&agent, "PUT", "/v1/kv/other/x", &secret, b"v");
    assert_eq!((r.status, r.text().as_str()), (403, "Permission denied"));
    assert_eq!(call(&agent, "PUT", "/v1/kv/other/x", ROOT, b"w").text(), "true");
    assert_eq!(call(&agent, "GET", "/v1/kv/other/x", &secret, b"").status, 403);
    // A recursive read shows only the prefix, flagged; the management token sees both.
    let all = call(&agent, "GET", "/v1/kv/?recurse", &secret, b"");
    let listed = all.json();
    let keys: Vec<&str> = listed.as_array().expect("list").iter().map(|e| e["Key"].as_str().expect("key")).collect();
    assert_eq!(keys, ["app/x"]);
    assert_eq!(all.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
    assert_eq!(ok_json(call(&agent, "GET", "/v1/kv/?keys", ROOT, b"")), json!(["app/x", "other/x"]));
    // Deleting the whole tree needs write on all of it.
    assert_eq!(call(&agent, "DELETE", "/v1/kv/?recurse", &secret, b"").status, 403);
    // Transactions: a denied operation fails the whole transaction, naming it.
    let txn =
        json!([{"KV": {"Verb": "set", "Key": "app/y", "Value": "dg=="}}, {"KV": {"Verb": "get", "Key": "other/x"}}]);
    let r = call(&agent, "PUT", "/v1/txn", &secret, txn.to_string().as_bytes());
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.json()["Errors"], json!([{"OpIndex": 1, "What": "Permission denied"}]));
    assert_eq!(call(&agent, "GET", "/v1/kv/app/y", ROOT, b"").status, 404, "nothing of a refused transaction applied");

    // Every carrier of a token: header, bearer, query parameter.
    let bearer = format!("Bearer {secret}");
    let r = http_request_with_headers(agent.http, "GET", "/v1/kv/app/x", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200);
    assert_eq!(call(&agent, "GET", &format!("/v1/kv/app/x?token={secret}"), "", b"").status, 200);

    // JSON rules, and services: read on one service filters the catalog to it.
    let (reader, _) = token_with_rules(
        &agent,
        "web-reader",
        r#"{"service": {"web": {"policy": "read"}}, "node_prefix": {"": {"policy": "read"}}}"#,
    );
    for (id, name) in [("web1", "web"), ("db1", "db")] {
        let body = json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": id, "Service": name, "Port": 80}});
        assert_eq!(call(&agent, "PUT", "/v1/catalog/register", ROOT, body.to_string().as_bytes()).status, 200);
    }
    let services = ok_json(call(&agent, "GET", "/v1/catalog/services", &reader, b""));
    assert_eq!(services.as_object().expect("map").keys().collect::<Vec<_>>(), ["web"]);
    assert_eq!(ok_json(call(&agent, "GET", "/v1/health/service/db", &reader, b"")), json!([]));
    assert_eq!(ok_json(call(&agent, "GET", "/v1/health/service/web", &reader, b"")).as_array().map(Vec::len), Some(1));
    // Registering needs write: a reader cannot.
    let body = json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"Service": "web", "Port": 81}});
    assert_eq!(call(&agent, "PUT", "/v1/catalog/register", &reader, body.to_string().as_bytes()).status, 403);
    assert_eq!(call(&agent, "PUT", "/v1/agent/service/register", &reader, br#"{"Name": "web"}"#).status, 403);
}

#[test]
fn bootstrap_works_once_and_acl_endpoints_need_acl_rights() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("acl.json");
    std::fs::write(&config, r#"{"acl": {"enabled": true, "default_policy": "deny"}}"#).expect("write");
    let agent = Agent::start(&["-config-file", config.to_str().expect("utf-8")]);
    let first = ok_json(call(&agent, "PUT", "/v1/acl/bootstrap", "", b""));
    let root = first["SecretID"].as_str().expect("secret").to_string();
    assert_eq!(first["Policies"][0]["Name"], "global-management");
    let again = call(&agent, "PUT", "/v1/acl/bootstrap", "", b"");
    assert_eq!((again.status, again.text().as_str()), (403, "ACL bootstrap no longer allowed"));
    // Listing tokens: the management token sees both (bootstrap and anonymous); others are
    // refused.
    let tokens = ok_json(call(&agent, "GET", "/v1/acl/tokens", &root, b""));
    assert_eq!(tokens.as_array().map(Vec::len), Some(2), "{tokens}");
    assert_eq!(call(&agent, "GET", "/v1/acl/tokens", "", b"").status, 403);
    // A bad policy is refused with the reason, and nothing is stored.
    let r = call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        &root,
        br#"{"Name": "bad", "Rules": "key_prefix \"a\" { policy = \"rwx\" }"}"#,
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("invalid policy \"rwx\""), "{}", r.text());
    assert_eq!(ok_json(call(&agent, "GET", "/v1/acl/policies", &root, b"")).as_array().map(Vec::len), Some(1));
    // The built-in policy cannot be deleted.
    let r = call(&agent, "DELETE", "/v1/acl/policy/00000000-0000-0000-0000-000000000001", &root, b"");
    assert_eq!(r.status, 403, "{}", r.text());

    // With ACLs off the endpoints say so.
    let off = Agent::start(&[]);
    let r = off.put("/v1/acl/bootstrap", b"");
    assert_eq!((r.status, r.text().as_str()), (401, "ACL support disabled"));
}

#[test]
fn a_revoked_token_is_refused_at_once_even_by_a_waiting_blocking_query() {
    let (agent, _dir) = acl_agent(json!({}));
    let (secret, accessor) = token_with_rules(&agent, "app-reader", r#"key_prefix "app/" { policy = "read" }"#);
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/x", ROOT, b"v").text(), "true");
    let first = call(&agent, "GET", "/v1/kv/app/x", &secret, b"");
    assert_eq!(first.status, 200);
    let index = first.index();
    let http = agent.http;
    let waiting_secret = secret.clone();
    let waiter = std::thread::spawn(move || {
        let path = format!("/v1/kv/app/x?index={index}&wait=60s");
        let started = Instant::now();
        let r = http_request_with_headers(http, "GET", &path, &[("X-Consul-Token", &waiting_secret)], b"");
        (r, started.elapsed())
    });
    // Let the query start waiting, then revoke the token.
    std::thread::sleep(Duration::from_millis(300));
    let deleted = Instant::now();
    assert_eq!(call(&agent, "DELETE", &format!("/v1/acl/token/{accessor}"), ROOT, b"").text(), "true");
    let (r, waited) = waiter.join().expect("waiter");
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    assert!(waited < Duration::from_secs(10) && deleted.elapsed() < Duration::from_secs(5), "waited {waited:?}");
    for path in ["/v1/kv/app/x", "/v1/catalog/services", "/v1/agent/services", "/v1/acl/token/self"] {
        let r = call(&agent, "GET", path, &secret, b"");
        assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"), "{path}");
    }
}

#[test]
fn dns_answers_only_what_the_default_token_may_read() {
    use hickory_proto::rr::RecordType;
    let (agent, _dir) = acl_agent(json!({}));
    let body = json!({"Node": "n1", "Address": "10.0.0.1", "Service": {"ID": "web1", "Service": "web", "Port": 80}});
    assert_eq!(call(&agent, "PUT", "/v1/catalog/register", ROOT, body.to_string().as_bytes()).status, 200);
    let rcode = |name: &str| support::dns::udp(agent.dns, name, RecordType::A, None).metadata.response_code;
    // Default deny, no default token: the anonymous token reads nothing.
    assert_eq!(rcode("web.service.consul"), hickory_proto::op::ResponseCode::NXDomain);
    assert_eq!(rcode("n1.node.consul"), hickory_proto::op::ResponseCode::NXDomain);
    // Granting the anonymous token read on services but not on node n1 still hides web's
    // only instance; adding the node shows it. Each change applies from the next query.
    let services_only = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        ROOT,
        json!({"Name": "dns-services", "Rules": "service_prefix \"\" { policy = \"read\" }"}).to_string().as_bytes(),
    ));
    let anonymous = "/v1/acl/token/00000000-0000-0000-0000-000000000002";
    let grant = |ids: Vec<&Value>| {
        let links: Vec<Value> = ids.into_iter().map(|id| json!({"ID": id})).collect();
        ok_json(call(&agent, "PUT", anonymous, ROOT, json!({"Policies": links}).to_string().as_bytes()));
    };
    grant(vec![&services_only["ID"]]);
    assert_eq!(rcode("web.service.consul"), hickory_proto::op::ResponseCode::NXDomain);
    let nodes = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        ROOT,
        json!({"Name": "dns-nodes", "Rules": "node_prefix \"n\" { policy = \"read\" }"}).to_string().as_bytes(),
    ));
    grant(vec![&services_only["ID"], &nodes["ID"]]);
    let answer = support::dns::udp(agent.dns, "web.service.consul", RecordType::A, None);
    assert_eq!(support::dns::answers(&answer), ["A 10.0.0.1"]);
    assert_eq!(rcode("n1.node.consul"), hickory_proto::op::ResponseCode::NoError);
    // Anonymous HTTP reads follow the same grants.
    assert_eq!(ok_json(call(&agent, "GET", "/v1/health/service/web", "", b"")).as_array().map(Vec::len), Some(1));
    // A default token set at run time takes over DNS from the next query; cleared, the
    // anonymous token's grants apply again.
    let (kv_only, _) = token_with_rules(&agent, "kv-only", r#"key_prefix "" { policy = "read" }"#);
    let set_default = |secret: &str| {
        let body = json!({"Token": secret}).to_string();
        assert_eq!(call(&agent, "PUT", "/v1/agent/token/default", ROOT, body.as_bytes()).status, 200);
    };
    set_default(&kv_only);
    assert_eq!(rcode("web.service.consul"), hickory_proto::op::ResponseCode::NXDomain);
    set_default("");
    assert_eq!(rcode("web.service.consul"), hickory_proto::op::ResponseCode::NoError);
}

#[test]
fn the_cli_bootstraps_creates_policies_and_tokens_and_presents_them() {
    use std::process::Command;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("acl.json");
    std::fs::write(&config, r#"{"acl": {"enabled": true, "default_policy": "deny"}}"#).expect("write");
    let agent = Agent::start(&["-config-file", config.to_str().expect("utf-8")]);
    let addr = agent.http.to_string();
    let cairn = |args: &[&str], env: &[(&str, &str)]| {
        let mut command = Command::new(support::cairn_bin());
        command.args(args).args(["-http-addr", &addr]).env_remove("CONSUL_HTTP_TOKEN").env_remove("CAIRN_HTTP_TOKEN");
        for (k, v) in env {
            command.env(k, v);
        }
        let out = command.output().expect("run cairn");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cairn(&["acl", "bootstrap", "-format", "json"], &[]);
    assert!(ok, "{text}");
    let root: Value = serde_json::from_str(&text).expect("json");
    let root = root["SecretID"].as_str().expect("secret").to_string();
    let (ok, text) = cairn(&["acl", "bootstrap"], &[]);
    assert!(!ok && text.contains("ACL bootstrap no longer allowed"), "{text}");
    let rules = dir.path().join("rules.hcl");
    std::fs::write(&rules, "key_prefix \"app/\" {\n  policy = \"write\"\n}\n").expect("write rules");
    let at_rules = format!("@{}", rules.display());
    let (ok, text) = cairn(&["acl", "policy", "create", "-name", "app", "-rules", &at_rules, "-token", &root], &[]);
    assert!(ok && text.contains("Name:         app"), "{text}");
    let (ok, text) = cairn(
        &["acl", "token", "create", "-description", "app", "-policy-name", "app"],
        &[("CONSUL_HTTP_TOKEN", &root)],
    );
    assert!(ok, "{text}");
    let secret = text.lines().find_map(|l| l.strip_prefix("SecretID:")).expect("SecretID line").trim().to_string();
    assert!(text.contains(" - app"), "{text}");
    // The new token through every way the CLI takes one.
    assert!(cairn(&["kv", "put", "app/x", "1"], &[("CONSUL_HTTP_TOKEN", &secret)]).0);
    assert!(cairn(&["kv", "put", "-token", &secret, "app/y", "2"], &[]).0);
    assert!(cairn(&["kv", "get", "app/x"], &[("CAIRN_HTTP_TOKEN", &secret)]).0);
    let (ok, text) = cairn(&["kv", "put", "-token", &secret, "other/x", "3"], &[]);
    assert!(!ok && text.contains("Permission denied"), "{text}");
    let (ok, text) = cairn(&["kv", "put", "app/z", "4"], &[]);
    assert!(!ok && text.contains("Permission denied"), "anonymous: {text}");
    let (ok, text) = cairn(&["acl", "token", "list", "-token", &root], &[]);
    assert!(ok && text.matches("AccessorID:").count() == 3, "{text}");
    let (ok, text) = cairn(&["acl", "policy", "delete", "-name", "app", "-token", &root], &[]);
    assert!(ok, "{text}");
    let (ok, text) = cairn(&["kv", "put", "-token", &secret, "app/x", "5"], &[]);
    assert!(!ok && text.contains("Permission denied"), "the policy is gone: {text}");
}

#[test]
fn roles_identities_and_token_updates_grant_what_they_say() {
    let (agent, _dir) = acl_agent(json!({}));
    let policy = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        ROOT,
        br#"{"Name": "kv-app", "Rules": "key_prefix \"app/\" { policy = \"write\" }"}"#,
    ));
    assert_eq!(ok_json(call(&agent, "GET", "/v1/acl/policy/name/kv-app", ROOT, b""))["ID"], policy["ID"]);
    // A role by policy name, with a service identity.
    let role = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/role",
        ROOT,
        br#"{"Name": "app", "Policies": [{"Name": "kv-app"}], "ServiceIdentities": [{"ServiceName": "api"}]}"#,
    ));
    assert_eq!(role["Policies"][0]["ID"], policy["ID"]);
    let token = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/token",
        ROOT,
        json!({"Roles": [{"ID": role["ID"]}]}).to_string().as_bytes(),
    ));
    let secret = token["SecretID"].as_str().expect("secret").to_string();
    let accessor = token["AccessorID"].as_str().expect("accessor").to_string();
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/x", &secret, b"v").text(), "true");
    let api =
        json!({"Node": "n1", "Address": "10.0.0.1", "SkipNodeUpdate": true, "Service": {"Service": "api", "Port": 1}});
    // The identity writes its service, but not the node (SkipNodeUpdate needs only the service).
    let r = call(&agent, "PUT", "/v1/catalog/register", &secret, api.to_string().as_bytes());
    assert_eq!(r.status, 403, "no node n1 yet: registering it needs node write");
    let node = json!({"Node": "n1", "Address": "10.0.0.1"});
    assert_eq!(call(&agent, "PUT", "/v1/catalog/register", ROOT, node.to_string().as_bytes()).status, 200);
    assert_eq!(call(&agent, "PUT", "/v1/catalog/register", &secret, api.to_string().as_bytes()).status, 200);
    let web = json!({"Node": "n1", "SkipNodeUpdate": true, "Service": {"Service": "web", "Port": 2}});
    assert_eq!(call(&agent, "PUT", "/v1/catalog/register", &secret, web.to_string().as_bytes()).status, 403);
    // A clone grants the same; an update that drops the role takes it all away.
    let clone = ok_json(call(&agent, "PUT", &format!("/v1/acl/token/{accessor}/clone"), ROOT, b""));
    let clone_secret = clone["SecretID"].as_str().expect("secret");
    assert_ne!(clone_secret, secret);
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/y", clone_secret, b"v").text(), "true");
    let updated = ok_json(call(&agent, "PUT", &format!("/v1/acl/token/{accessor}"), ROOT, br#"{"Roles": []}"#));
    assert_eq!(updated["SecretID"], secret, "the secret stays");
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/z", &secret, b"v").status, 403);
    let r = call(
        &agent,
        "PUT",
        &format!("/v1/acl/token/{accessor}"),
        ROOT,
        br#"{"SecretID": "9f2b8c8e-0000-4000-8000-000000000000"}"#,
    );
    assert_eq!(r.status, 400, "{}", r.text());
    // A token naming a policy that does not exist is refused, and a duplicate name too.
    let r = call(&agent, "PUT", "/v1/acl/token", ROOT, br#"{"Policies": [{"Name": "nope"}]}"#);
    assert_eq!(r.status, 400);
    assert!(r.text().contains("cannot find policy \"nope\""), "{}", r.text());
    let r = call(&agent, "PUT", "/v1/acl/policy", ROOT, br#"{"Name": "kv-app"}"#);
    assert!(r.status == 400 && r.text().contains("already exists"), "{}", r.text());
}

#[test]
fn a_client_agent_resolves_tokens_through_its_server_and_uses_its_default_token() {
    use support::cluster::{agent_args, FORM};
    let dir = tempfile::tempdir().expect("tempdir");
    let server_config = dir.path().join("server.json");
    std::fs::write(
        &server_config,
        json!({"acl": {"enabled": true, "default_policy": "deny", "token_min_expiration_ttl": "1s",
                       "tokens": {"initial_management": ROOT}}})
        .to_string(),
    )
    .expect("write");
    let mut server_args = agent_args("s1", dir.path(), Some(1), None);
    server_args.extend(["-config-file".to_string(), server_config.display().to_string()]);
    let server = Agent::spawn(server_args, dir.path().join("s1"));
    support::wait_for("the initial management token", Duration::from_secs(15), || {
        (call(&server, "GET", "/v1/acl/token/self", ROOT, b"").status == 200).then_some(())
    });
    // The client's default token reads app/; its agent token writes its node (nothing
    // else); the deployer's registers `web`.
    let reader = "5b0c1f7e-1111-4a1a-8a1a-000000000001";
    let deployer = "5b0c1f7e-2222-4a1a-8a1a-000000000002";
    let c1_agent = "5b0c1f7e-3333-4a1a-8a1a-000000000003";
    let c2_agent = "5b0c1f7e-4444-4a1a-8a1a-000000000004";
    for (name, rules, secret) in [
        ("reader", r#"key_prefix "app/" { policy = "read" }"#, reader),
        ("deployer", "service \"web\" { policy = \"write\" }\nservice_prefix \"\" { policy = \"read\" }", deployer),
        ("c1-agent", r#"node "c1" { policy = "write" }"#, c1_agent),
        ("c2-agent", "node \"c2\" { policy = \"write\" }\nservice \"db\" { policy = \"write\" }", c2_agent),
    ] {
        let policy = ok_json(call(
            &server,
            "PUT",
            "/v1/acl/policy",
            ROOT,
            json!({"Name": name, "Rules": rules}).to_string().as_bytes(),
        ));
        let body = json!({"SecretID": secret, "Policies": [{"ID": policy["ID"]}]});
        ok_json(call(&server, "PUT", "/v1/acl/token", ROOT, body.to_string().as_bytes()));
    }
    let client_config = dir.path().join("client.json");
    std::fs::write(
        &client_config,
        json!({"acl": {"enabled": true, "default_policy": "deny", "token_ttl": "1s",
                       "tokens": {"default": reader, "agent": c1_agent}}})
        .to_string(),
    )
    .expect("write");
    let mut client_args = agent_args("c1", dir.path(), None, Some(&server.gossip.to_string()));
    client_args.extend(["-config-file".to_string(), client_config.display().to_string()]);
    let client = Agent::spawn_client(client_args, dir.path().join("c1"));
    client.wait_log("registered this client in the catalog through a server", FORM);

    // Forwarded: the server checks, with the client's default token when none is given.
    assert_eq!(call(&client, "PUT", "/v1/kv/app/x", ROOT, b"v").text(), "true");
    assert_eq!(call(&client, "PUT", "/v1/kv/other/x", ROOT, b"v").text(), "true");
    assert_eq!(call(&client, "GET", "/v1/kv/app/x", "", b"").status, 200);
    assert_eq!(call(&client, "GET", "/v1/kv/other/x", "", b"").status, 403);
    assert_eq!(call(&client, "PUT", "/v1/kv/app/x", "", b"w").status, 403);
    // The client's own endpoints: tokens resolved through the server.
    let web = br#"{"Name": "web", "Port": 80}"#;
    assert_eq!(call(&client, "PUT", "/v1/agent/service/register", "", web).status, 403);
    assert_eq!(call(&client, "PUT", "/v1/agent/service/register", deployer, web).status, 200);
    let r = call(&client, "PUT", "/v1/agent/service/register", "not-a-token", web);
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    let listed = call(&client, "GET", "/v1/agent/services", "", b"");
    assert_eq!(listed.json(), json!({}));
    assert_eq!(listed.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
    assert!(ok_json(call(&client, "GET", "/v1/agent/services", deployer, b"")).get("web").is_some());
    // The server checks the client's own writes: `web` reaches the catalog with the token that
    // registered it (the agent token may not write it), and leaves it with that token too.
    let web_in_catalog = || call(&server, "GET", "/v1/catalog/service/web", ROOT, b"").json().as_array().map(Vec::len);
    support::wait_for("web in the catalog", Duration::from_secs(10), || (web_in_catalog() == Some(1)).then_some(()));
    assert_eq!(call(&client, "PUT", "/v1/agent/service/deregister/web", deployer, b"").status, 200);
    support::wait_for("web gone from the catalog", Duration::from_secs(10), || {
        (web_in_catalog() == Some(0)).then_some(())
    });
    assert_eq!(call(&client, "PUT", "/v1/agent/service/register", deployer, web).status, 200);
    support::wait_for("web back in the catalog", Duration::from_secs(10), || {
        (web_in_catalog() == Some(1)).then_some(())
    });
    // Revoked on the server: refused by the client once its copy expires (token_ttl 1s).
    let accessor = ok_json(call(&server, "GET", "/v1/acl/token/self", deployer, b""))["AccessorID"].clone();
    let accessor = accessor.as_str().expect("accessor");
    assert_eq!(call(&server, "DELETE", &format!("/v1/acl/token/{accessor}"), ROOT, b"").text(), "true");
    support::wait_for("the client to refuse the revoked token", Duration::from_secs(10), || {
        (call(&client, "GET", "/v1/agent/services", deployer, b"").status == 403).then_some(())
    });

    // A client whose agent token may not write its config-file service is refused, until one
    // that may is set through the API (kept on disk with enable_token_persistence).
    let c2_config = dir.path().join("c2.json");
    let c2_acl = json!({"acl": {"enabled": true, "default_policy": "deny", "enable_token_persistence": true,
                                "tokens": {"default": reader}},
                        "services": [{"name": "db", "port": 5432}]});
    std::fs::write(&c2_config, c2_acl.to_string()).expect("write");
    let mut c2_args = agent_args("c2", dir.path(), None, Some(&server.gossip.to_string()));
    c2_args.extend(["-config-file".to_string(), c2_config.display().to_string()]);
    let c2 = Agent::spawn_client(c2_args, dir.path().join("c2"));
    c2.wait_log("catalog sync refused by ACLs", FORM);
    assert!(c2.log().contains("lacks node:read on \"c2\""), "{}", c2.log());
    let db_in_catalog = || call(&server, "GET", "/v1/catalog/service/db", ROOT, b"").json().as_array().map(Vec::len);
    assert_eq!(db_in_catalog(), Some(0));
    let set = |token: &str, secret: &str| {
        let body = json!({"Token": secret}).to_string();
        call(&c2, "PUT", "/v1/agent/token/agent", token, body.as_bytes())
    };
    assert_eq!(set(reader, c2_agent).status, 403, "setting a token needs acl:write");
    let r = call(&c2, "PUT", "/v1/agent/token/replication", ROOT, br#"{"Token": "x"}"#);
    assert!(r.status == 400 && r.text().contains("does not use"), "{}", r.text());
    assert_eq!(call(&c2, "PUT", "/v1/agent/token/nonsense", ROOT, b"{}").status, 404);
    assert_eq!(set(ROOT, c2_agent).status, 200);
    support::wait_for("db registered with c2's new agent token", Duration::from_secs(10), || {
        (db_in_catalog() == Some(1)).then_some(())
    });
    let kept = std::fs::read_to_string(dir.path().join("c2").join("acl-tokens.json")).expect("persisted tokens");
    assert!(kept.contains(c2_agent), "{kept}");

    // c2 keeps resolved tokens for 30 s (the default token_ttl), but never past their
    // expiration time.
    let policy = ok_json(call(&server, "GET", "/v1/acl/policy/name/deployer", ROOT, b""));
    let body = json!({"Policies": [{"ID": policy["ID"]}], "ExpirationTTL": "2s"}).to_string();
    let expiring = ok_json(call(&server, "PUT", "/v1/acl/token", ROOT, body.as_bytes()));
    let secret = expiring["SecretID"].as_str().expect("secret");
    assert_eq!(call(&c2, "GET", "/v1/agent/services", secret, b"").status, 200, "resolved and kept");
    let started = Instant::now();
    support::wait_for("c2 to refuse the expired token", Duration::from_secs(8), || {
        (call(&c2, "GET", "/v1/agent/services", secret, b"").status == 403).then_some(())
    });
    assert!(started.elapsed() < Duration::from_secs(8), "refused by its expiration, not by token_ttl");
}

#[test]
fn a_waiting_blocking_query_answers_under_its_tokens_rules_as_they_are_when_it_wakes() {
    let (agent, _dir) = acl_agent(json!({}));
    let policy = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        ROOT,
        br#"{"Name": "app-reader", "Rules": "key_prefix \"app/\" { policy = \"read\" }"}"#,
    ));
    let id = policy["ID"].as_str().expect("id").to_string();
    let token =
        ok_json(call(&agent, "PUT", "/v1/acl/token", ROOT, json!({"Policies": [{"ID": id}]}).to_string().as_bytes()));
    let secret = token["SecretID"].as_str().expect("secret").to_string();
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/a", ROOT, b"1").text(), "true");
    let first = call(&agent, "GET", "/v1/kv/app/?recurse", &secret, b"");
    assert_eq!(first.status, 200);
    let (http, index, waiting) = (agent.http, first.index(), secret.clone());
    let waiter = std::thread::spawn(move || {
        let path = format!("/v1/kv/app/?recurse&index={index}&wait=30s");
        http_request_with_headers(http, "GET", &path, &[("X-Consul-Token", &waiting)], b"")
    });
    std::thread::sleep(Duration::from_millis(300));
    // The policy narrows to app/a while the query waits; then app/b is written.
    let narrowed = json!({"Name": "app-reader", "Rules": "key \"app/a\" { policy = \"read\" }"});
    ok_json(call(&agent, "PUT", &format!("/v1/acl/policy/{id}"), ROOT, narrowed.to_string().as_bytes()));
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/b", ROOT, b"2").text(), "true");
    let r = waiter.join().expect("waiter");
    assert_eq!(r.status, 200, "{}", r.text());
    let keys: Vec<String> =
        r.json().as_array().expect("list").iter().map(|e| e["Key"].as_str().expect("key").to_string()).collect();
    assert_eq!(keys, ["app/a"], "app/b is hidden by the narrowed policy");
    assert_eq!(r.header("X-Consul-Results-Filtered-By-ACLs"), Some("true"));
}

#[test]
fn a_config_watch_queries_with_its_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("watch.log");
    let script = format!("cat >> {0}; printf '\\n---\\n' >> {0}", log.display());
    let config = json!({
        "acl": {"enabled": true, "default_policy": "deny", "tokens": {"initial_management": ROOT}},
        "watches": [
            {"type": "key", "key": "app/x", "token": ROOT, "args": ["sh", "-c", script]},
            {"type": "key", "key": "app/y", "args": ["true"]},
        ],
    });
    let path = dir.path().join("acl.json");
    std::fs::write(&path, config.to_string()).expect("write config");
    let agent = Agent::start(&["-config-file", path.to_str().expect("utf-8")]);
    support::wait_for("the initial management token", Duration::from_secs(15), || {
        (call(&agent, "GET", "/v1/acl/token/self", ROOT, b"").status == 200).then_some(())
    });
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/x", ROOT, b"hello").text(), "true");
    support::wait_for("the watch with a token to see app/x", Duration::from_secs(15), || {
        std::fs::read_to_string(&log).ok().filter(|l| l.contains("\"Key\": \"app/x\"")).map(drop)
    });
    // Without one it acts as the anonymous token, which may read nothing here.
    agent.wait_log(
        "watch query failed; retrying watch=/v1/kv/app/y error=\"Unexpected response code: 403",
        Duration::from_secs(15),
    );
}

#[test]
fn a_token_expires_at_its_expiration_time_and_the_leader_deletes_it() {
    let (agent, _dir) = acl_agent(json!({"token_min_expiration_ttl": "1s", "token_max_expiration_ttl": "1h"}));
    let policy = ok_json(call(
        &agent,
        "PUT",
        "/v1/acl/policy",
        ROOT,
        json!({"Name": "app-read", "Rules": r#"key_prefix "app/" { policy = "read" }"#}).to_string().as_bytes(),
    ));
    let create = |body: Value| call(&agent, "PUT", "/v1/acl/token", ROOT, body.to_string().as_bytes());
    let links = json!([{"ID": policy["ID"]}]);

    // Consul's rules and messages; nothing is created by a refused body.
    let before = ok_json(call(&agent, "GET", "/v1/acl/tokens", ROOT, b"")).as_array().expect("list").len();
    for (body, message) in [
        (json!({"ExpirationTTL": "10s", "ExpirationTime": "2099-01-01T00:00:00Z"}), "cannot both be set".to_string()),
        (json!({"ExpirationTTL": "2h"}), "Token Expiration TTL '2h0m0s' should be between 1s and 1h0m0s".into()),
        (json!({"ExpirationTTL": "-5s"}), "Token Expiration TTL '-5s' should be > 0".into()),
        (json!({"ExpirationTTL": "soon"}), "ExpirationTTL \"soon\"".into()),
        (json!({"ExpirationTime": "2001-01-01T00:00:00Z"}), "ExpirationTime cannot be before CreateTime".into()),
        (json!({"ExpirationTime": "2099-01-01T00:00:00Z"}), "ExpirationTime cannot be more than 1h0m0s".into()),
        (json!({"ExpirationTime": "tomorrow"}), "not an RFC 3339 time".into()),
    ] {
        let r = create(body.clone());
        assert!(r.status == 400 && r.text().contains(&message), "{body}: {} {}", r.status, r.text());
    }
    let after = ok_json(call(&agent, "GET", "/v1/acl/tokens", ROOT, b"")).as_array().expect("list").len();
    assert_eq!(before, after, "a refused body created a token");

    // Go's client sends the TTL in nanoseconds; an hour-long token is not touched below.
    let long = ok_json(create(json!({"Policies": links, "ExpirationTTL": 3_600_000_000_000u64})));
    let long_accessor = long["AccessorID"].as_str().expect("accessor").to_string();
    assert!(long["ExpirationTime"].is_string(), "{long}");
    let r = call(
        &agent,
        "PUT",
        &format!("/v1/acl/token/{long_accessor}"),
        ROOT,
        json!({"ExpirationTTL": "5m"}).to_string().as_bytes(),
    );
    assert_eq!((r.status, r.text()), (400, format!("Cannot change expiration time of {long_accessor}")));
    let r = call(
        &agent,
        "PUT",
        &format!("/v1/acl/token/{long_accessor}"),
        ROOT,
        json!({"Description": "kept", "ExpirationTime": long["ExpirationTime"]}).to_string().as_bytes(),
    );
    assert_eq!(ok_json(r)["ExpirationTime"], long["ExpirationTime"], "repeating the time is an update");

    let short = ok_json(create(json!({"Policies": links, "ExpirationTTL": "3s"})));
    let (secret, accessor) = (
        short["SecretID"].as_str().expect("secret").to_string(),
        short["AccessorID"].as_str().expect("accessor").to_string(),
    );
    let created = time_of(&short["CreateTime"]);
    let expires = time_of(&short["ExpirationTime"]);
    assert_eq!(expires.duration_since(created).expect("after creation"), Duration::from_secs(3), "{short}");
    assert_eq!(call(&agent, "PUT", "/v1/kv/app/x", ROOT, b"v").text(), "true");
    let first = call(&agent, "GET", "/v1/kv/app/x", &secret, b"");
    assert_eq!(first.status, 200, "{}", first.text());

    // A query waiting with the token ends when it expires; afterwards every request with it
    // is refused and the token is gone from the list.
    let (http, index, waiting_secret) = (agent.http, first.index(), secret.clone());
    let waiter = std::thread::spawn(move || {
        let path = format!("/v1/kv/app/x?index={index}&wait=60s");
        let r = http_request_with_headers(http, "GET", &path, &[("X-Consul-Token", &waiting_secret)], b"");
        (r, std::time::SystemTime::now())
    });
    let (r, ended) = waiter.join().expect("waiter");
    assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"));
    assert!(ended >= expires, "the query ended {:?} before the expiration", expires.duration_since(ended));
    assert!(ended.duration_since(expires).expect("after") < Duration::from_secs(5), "ended long after expiring");
    for path in ["/v1/kv/app/x", "/v1/catalog/services", "/v1/acl/token/self"] {
        let r = call(&agent, "GET", path, &secret, b"");
        assert_eq!((r.status, r.text().as_str()), (403, "ACL not found"), "{path}");
    }
    support::wait_for("the expired token deleted", Duration::from_secs(10), || {
        (call(&agent, "GET", &format!("/v1/acl/token/{accessor}"), ROOT, b"").status == 404).then_some(())
    });
    let tokens = ok_json(call(&agent, "GET", "/v1/acl/tokens", ROOT, b""));
    let accessors: Vec<&str> =
        tokens.as_array().expect("list").iter().filter_map(|t| t["AccessorID"].as_str()).collect();
    assert!(!accessors.contains(&accessor.as_str()) && accessors.contains(&long_accessor.as_str()), "{tokens}");

    // The CLI: -expires-ttl is checked by name, and the time shown.
    let cli = |args: &[&str]| {
        let out = std::process::Command::new(support::cairn_bin())
            .args(args)
            .args(["-http-addr", &agent.http.to_string(), "-token", ROOT])
            .output()
            .expect("run cairn");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = cli(&["acl", "token", "create", "-policy-name", "app-read", "-expires-ttl", "30m"]);
    assert!(ok && text.contains("Expiration Time:"), "{text}");
    let (ok, text) = cli(&["acl", "token", "create", "-expires-ttl", "soon"]);
    assert!(!ok && text.contains("expires-ttl"), "{text}");
}

fn time_of(value: &Value) -> std::time::SystemTime {
    let text = value.as_str().unwrap_or_else(|| panic!("not a time: {value}"));
    let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).expect("RFC 3339");
    std::time::UNIX_EPOCH + Duration::from_nanos(u64::try_from(at.unix_timestamp_nanos()).expect("after 1970"))
}
