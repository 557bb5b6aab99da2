//! The web UI in a real browser: Debian's headless `chromium`, driven over WebDriver by
//! `chromedriver` (both installed by tests/setup.sh), against a running agent. Each page is
//! checked through what a person sees (rows, badges, messages) and what the API then holds.
//! Screenshots of every page are kept in `target/tmp/ui-screenshots/` for review.

mod support;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use support::Agent;

/// Every wait in the browser: generous for a loaded CI machine; a live page normally
/// updates well within a second (the elapsed time is printed).
const WAIT: Duration = Duration::from_secs(15);

/// `chromedriver` on a port it picks, and a headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
    shots: PathBuf,
}

impl Browser {
    async fn start() -> Browser {
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run chromedriver ({e}): run `bash tests/setup.sh` (Debian's chromium and chromium-driver)"
                )
            });
        let stdout = driver.stdout.take().expect("stdout piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line.split("started successfully on port ").nth(1) {
                    let _ = tx.send(port.trim_end_matches('.').parse::<u16>().ok());
                }
            }
        });
        let port = rx.recv_timeout(support::START_TIMEOUT).ok().flatten().expect("chromedriver reports its port");
        let profile = tempfile::tempdir().expect("tempdir");
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--window-size=1280,900", "--force-prefers-reduced-motion",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a chromium session through chromedriver");
        let shots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-screenshots");
        std::fs::create_dir_all(&shots).expect("screenshot dir");
        Browser { client, driver, _profile: profile, shots }
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Polls `script` until it returns something other than null/false; panics after WAIT
    /// with `what`. Returns the value and how long it took.
    async fn wait_for(&self, what: &str, script: &str) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let value = self.eval(script).await;
            if !value.is_null() && value != Value::Bool(false) {
                return (value, started.elapsed());
            }
            if started.elapsed() > WAIT {
                let page = self.eval("return document.body.innerText").await;
                panic!("timed out after {WAIT:?} waiting for {what}; the page shows:\n{page}");
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
    }

    async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .expect("click");
    }

    async fn click_link(&self, text: &str) {
        self.client
            .find(Locator::LinkText(text))
            .await
            .unwrap_or_else(|e| panic!("no link {text:?}: {e}"))
            .click()
            .await
            .expect("click");
    }

    /// Clicks the button or link whose visible text is exactly `text`.
    async fn click_link_or_button(&self, text: &str) {
        let xpath = format!("//*[(self::button or self::a) and normalize-space(.)='{text}' and not(@hidden)]");
        self.client
            .find(Locator::XPath(&xpath))
            .await
            .unwrap_or_else(|e| panic!("no button or link {text:?}: {e}"))
            .click()
            .await
            .expect("click");
    }

    async fn type_into(&self, css: &str, text: &str) {
        let field = self.client.find(Locator::Css(css)).await.unwrap_or_else(|e| panic!("no {css}: {e}"));
        field.send_keys(text).await.expect("type");
    }

    async fn path(&self) -> String {
        self.client.current_url().await.expect("url").path().to_string()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn kv_raw(agent: &Agent, key: &str) -> Option<String> {
    let response = agent.get(&format!("/v1/kv/{key}?raw"));
    (response.status == 200).then(|| response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_shows_the_catalog_live_and_edits_kv() {
    let agent = Agent::start(&["-ui"]);
    let service = json!({
        "Name": "web", "ID": "web-1", "Port": 8080, "Tags": ["v2", "primary"],
        "Check": {"CheckID": "web-ttl", "Name": "web answers", "TTL": "10m"}
    });
    assert_eq!(agent.put("/v1/agent/service/register", service.to_string()).status, 200);
    assert_eq!(agent.put("/v1/agent/check/pass/web-ttl?note=serving", "").status, 200);

    let browser = Browser::start().await;
    let base = format!("http://{}", agent.http);
    let c = &browser.client;

    // `/` leads to the services page, which lists the service as passing.
    c.goto(&format!("{base}/")).await.expect("open /");
    let row = r#"return document.querySelector('tr[data-service="web"]')?.dataset.status ?? null"#;
    let (status, _) = browser.wait_for("the web service row", row).await;
    assert_eq!(status, "passing");
    assert_eq!(browser.path().await, "/ui/dc1/services");
    let text = browser.eval(r#"return document.querySelector('tr[data-service="web"]').innerText"#).await;
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("1 passing") && text.contains("primary"), "row shows health and tags: {text}");
    browser.screenshot("services").await;

    // The search box filters by name and tag.
    browser.type_into("input[type=search]", "nomatch").await;
    browser.wait_for("the search to hide web", r#"return !document.querySelector('tr[data-service="web"]')"#).await;
    let search = c.find(Locator::Css("input[type=search]")).await.expect("search");
    search.clear().await.expect("clear");
    search.send_keys("primary").await.expect("type");
    browser.wait_for("web found by its tag", r#"return !!document.querySelector('tr[data-service="web"]')"#).await;

    // A check turning critical turns the row red, live: the page is not reloaded.
    browser.eval("window.cairnNotReloaded = true; return null").await;
    assert_eq!(agent.put("/v1/agent/check/fail/web-ttl?note=connection%20refused", "").status, 200);
    let critical = r#"const r = document.querySelector('tr[data-service="web"]');
        return r && r.dataset.status === 'critical' ? getComputedStyle(r).backgroundColor : null"#;
    let (background, took) = browser.wait_for("the web row to turn critical", critical).await;
    println!("critical shown {took:?} after the check failed");
    let rgb: Vec<u32> = background
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("rgb(")
        .trim_end_matches(')')
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(rgb.len() == 3 && rgb[0] > rgb[1] + 10 && rgb[0] > rgb[2] + 10, "row is red: {background}");
    assert_eq!(browser.eval("return window.cairnNotReloaded === true").await, true, "no reload");
    browser.screenshot("services-critical").await;

    // One service: its instances, nodes and checks with their output.
    browser.click_link("web").await;
    let instance = r#"const p = document.querySelector('[data-instance="web-1"]');
        return p && p.dataset.status === 'critical' ? p.innerText : null"#;
    let (text, _) = browser.wait_for("the web-1 instance", instance).await;
    let text = text.as_str().unwrap_or_default();
    assert!(text.contains("connection refused") && text.contains("test-node"), "instance panel: {text}");
    assert_eq!(browser.path().await, "/ui/dc1/services/web");
    browser.screenshot("service").await;

    // Nodes, then one node (reached by keyboard: Tab to the Nodes link, Enter).
    browser.eval("document.activeElement.blur(); window.scrollTo(0, 0); return null").await;
    let mut reached = false;
    for _ in 0..8 {
        c.active_element().await.expect("focus").send_keys(&Key::Tab.to_string()).await.expect("tab");
        if browser.eval("return document.activeElement.textContent === 'Nodes'").await == true {
            reached = true;
            break;
        }
    }
    assert!(reached, "the Nodes link is reachable with Tab");
    c.active_element().await.expect("focus").send_keys(&Key::Enter.to_string()).await.expect("enter");
    let node_row = r#"return document.querySelector('tr[data-node="test-node"]')?.innerText ?? null"#;
    let (text, _) = browser.wait_for("the test-node row", node_row).await;
    assert!(text.as_str().unwrap_or_default().contains("web"), "node row lists its services: {text}");
    browser.screenshot("nodes").await;
    browser.click_link("test-node").await;
    let node_checks = r#"return document.querySelector('[data-check="serfHealth"]') ? document.querySelector('main').innerText : null"#;
    let (text, _) = browser.wait_for("the node's checks", node_checks).await;
    assert!(text.as_str().unwrap_or_default().contains("web answers"), "node page lists service checks: {text}");
    browser.screenshot("node").await;

    // KV: create a key in the UI, then read it over the API.
    browser.click_link("Key/Value").await;
    browser.wait_for("the KV root", "return document.querySelector('main h1')?.textContent === 'Key/Value'").await;
    browser.click("main .toolbar button.primary").await;
    browser.type_into("#kv-new-key", "app/config").await;
    browser.type_into("#kv-new-value", "hello").await;
    browser.click("form.editor button[type=submit]").await;
    browser.wait_for("the created message", "return document.querySelector('.message.ok')?.textContent ?? null").await;
    assert_eq!(kv_raw(&agent, "app/config").as_deref(), Some("hello"));
    browser
        .wait_for("the app/ folder in the listing", r#"return !!document.querySelector('li[data-key="app/"]')"#)
        .await;
    browser.screenshot("kv-folder").await;

    // Creating a key that exists is refused (create is check-and-set on index 0).
    browser.click("main .toolbar button.primary").await;
    browser.type_into("#kv-new-key", "app/config").await;
    browser.type_into("#kv-new-value", "other").await;
    browser.click("form.editor button[type=submit]").await;
    let (text, _) = browser
        .wait_for("the exists error", "return document.querySelector('.message.error')?.textContent ?? null")
        .await;
    assert!(text.as_str().unwrap_or_default().contains("already exists"), "{text}");
    assert_eq!(kv_raw(&agent, "app/config").as_deref(), Some("hello"));

    // Edit with check-and-set: a change made elsewhere meanwhile is shown, and saving over it
    // is refused with an error; nothing is overwritten.
    c.goto(&format!("{base}/ui/dc1/kv/app/config")).await.expect("open key");
    browser.wait_for("the value in the editor", "return document.querySelector('#kv-value')?.value === 'hello'").await;
    browser.type_into("#kv-value", " world").await;
    assert_eq!(agent.put("/v1/kv/app/config", "changed elsewhere").status, 200);
    browser
        .wait_for(
            "the changed-on-server note",
            "return document.querySelector('#kv-notice .message')?.textContent ?? null",
        )
        .await;
    browser.click("form.editor button[type=submit]").await;
    let (text, _) =
        browser.wait_for("the CAS error", "return document.querySelector('.message.error')?.textContent ?? null").await;
    assert!(text.as_str().unwrap_or_default().contains("check-and-set conflict"), "{text}");
    assert_eq!(kv_raw(&agent, "app/config").as_deref(), Some("changed elsewhere"));
    browser.screenshot("kv-cas-conflict").await;

    // Load the current value, edit it, save: the API has the new value.
    browser.click_link_or_button("Load the current value").await;
    browser
        .wait_for("the current value", "return document.querySelector('#kv-value').value === 'changed elsewhere'")
        .await;
    let editor = c.find(Locator::Css("#kv-value")).await.expect("editor");
    editor.clear().await.expect("clear");
    editor.send_keys("v3").await.expect("type");
    browser.click("form.editor button[type=submit]").await;
    browser.wait_for("the saved message", "return document.querySelector('.message.ok')?.textContent ?? null").await;
    assert_eq!(kv_raw(&agent, "app/config").as_deref(), Some("v3"));

    // Delete asks first; cancelling keeps the key, confirming removes it.
    browser.click_link_or_button("Delete").await;
    browser.click_link_or_button("Cancel").await;
    assert_eq!(kv_raw(&agent, "app/config").as_deref(), Some("v3"));
    browser.click_link_or_button("Delete").await;
    browser.screenshot("kv-delete-confirm").await;
    browser.click_link_or_button("Yes, delete").await;
    browser.wait_for("the parent folder", "return location.pathname === '/ui/dc1/kv/app/'").await;
    assert_eq!(kv_raw(&agent, "app/config"), None);

    // A value that is not UTF-8 text is shown as such and cannot be saved over from the editor.
    assert_eq!(agent.put("/v1/kv/app/blob", [0xffu8, 0xfe, 0x00, 0x80]).status, 200);
    c.goto(&format!("{base}/ui/dc1/kv/app/blob")).await.expect("open blob");
    let binary = "return document.querySelector('main').innerText.includes('4 bytes, not UTF-8 text') \
        && document.querySelector('#kv-value').disabled \
        && document.querySelector('form.editor button[type=submit]').disabled";
    browser.wait_for("the binary value's note, and no editing", binary).await;

    // Members and Raft peers.
    browser.click_link("Members").await;
    let member = r#"return document.querySelector('tr[data-member="test-node"]')?.dataset.status ?? null"#;
    assert_eq!(browser.wait_for("the member row", member).await.0, "alive");
    browser.screenshot("members").await;
    browser.click_link("Raft").await;
    let peer = r#"return document.querySelector('tr[data-peer="test-node"]')?.innerText ?? null"#;
    let (text, _) = browser.wait_for("the Raft peer row", peer).await;
    assert!(text.as_str().unwrap_or_default().contains("leader"), "{text}");
    browser.screenshot("raft").await;

    // Nothing was fetched from anywhere but the agent.
    let foreign = browser
        .eval("return performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))")
        .await;
    assert_eq!(foreign, json!([]), "resources from elsewhere");

    // Phone width: no sideways scrolling, the table turns into labelled cards.
    c.set_window_size(390, 844).await.expect("resize");
    c.goto(&format!("{base}/ui/dc1/services")).await.expect("open services");
    browser.wait_for("the web row", r#"return !!document.querySelector('tr[data-service="web"]')"#).await;
    let overflow =
        browser.eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth").await;
    assert_eq!(overflow, 0, "the services page fits a phone's width");
    browser.screenshot("services-phone").await;
    c.goto(&format!("{base}/ui/dc1/services/web")).await.expect("open service");
    browser.wait_for("the instance", r#"return !!document.querySelector('[data-instance="web-1"]')"#).await;
    let overflow =
        browser.eval("return document.documentElement.scrollWidth - document.documentElement.clientWidth").await;
    assert_eq!(overflow, 0, "the service page fits a phone's width");
    browser.screenshot("service-phone").await;

    c.clone().close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_acls_the_ui_shows_what_the_token_set_on_its_token_page_may_read() {
    const ROOT: &str = "0c8e5f2a-6b1d-4f3e-9a7c-5d2e1f0a9b8c";
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("acl.json");
    let acl = json!({"acl": {"enabled": true, "default_policy": "deny", "tokens": {"initial_management": ROOT}}});
    std::fs::write(&config, acl.to_string()).expect("write config");
    let agent = Agent::start(&["-ui", "-config-file", config.to_str().expect("utf-8 path")]);
    support::wait_for("the initial management token", WAIT, || {
        let r = support::http_request_with_headers(
            agent.http,
            "GET",
            "/v1/acl/token/self",
            &[("X-Consul-Token", ROOT)],
            b"",
        );
        (r.status == 200).then_some(())
    });
    let browser = Browser::start().await;
    let base = format!("http://{}", agent.http);
    let c = &browser.client;
    let consul_row = r#"return !!document.querySelector('tr[data-service="consul"]')"#;

    // Anonymous under default deny: the page loads (no agent read needed), lists nothing and
    // says that ACLs hid what it cannot read.
    c.goto(&format!("{base}/")).await.expect("open /");
    let hidden = r#"return document.querySelector('[data-acl-hidden]')?.innerText ?? null"#;
    let (note, _) = browser.wait_for("the note that ACLs hide services", hidden).await;
    assert!(note.as_str().unwrap_or_default().contains("hidden by ACLs"), "{note}");
    assert_eq!(browser.path().await, "/ui/dc1/services");
    assert_eq!(browser.eval(consul_row).await, json!(false), "anonymous sees no service");
    browser.screenshot("services-acl-hidden").await;

    // A wrong token is reported as such.
    browser.click_link("Token").await;
    browser.wait_for("the token page", "return !!document.querySelector('#acl-token')").await;
    browser.type_into("#acl-token", "not-a-token").await;
    browser.click_link_or_button("Save").await;
    let (text, _) = browser
        .wait_for("the refusal", r#"return document.querySelector('main .message.error')?.innerText ?? null"#)
        .await;
    assert!(text.as_str().unwrap_or_default().contains("ACL not found"), "{text}");

    // The management token: accepted, and the services page now shows the catalog.
    let field = c.find(Locator::Css("#acl-token")).await.expect("field");
    field.clear().await.expect("clear");
    field.send_keys(ROOT).await.expect("type");
    browser.click_link_or_button("Save").await;
    let (text, _) = browser
        .wait_for("the token's description", r#"return document.querySelector('main .message.ok')?.innerText ?? null"#)
        .await;
    assert!(text.as_str().unwrap_or_default().contains("global-management"), "{text}");
    browser.screenshot("token").await;
    browser.click_link("Services").await;
    browser.wait_for("the consul service with the token", consul_row).await;
    // Kept across a reload (this browser's storage), and gone once cleared.
    c.refresh().await.expect("reload");
    browser.wait_for("the consul service after a reload", consul_row).await;
    browser.click_link("Token").await;
    browser.wait_for("the token page", "return !!document.querySelector('#acl-token')").await;
    browser.click_link_or_button("Clear").await;
    browser
        .wait_for(
            "no token",
            r#"return document.querySelector('main .message.ok')?.innerText.includes('No token set') ?? null"#,
        )
        .await;
    browser.click_link("Services").await;
    browser.wait_for("the note that ACLs hide services again", hidden).await;
    assert_eq!(browser.eval(consul_row).await, json!(false), "cleared: anonymous again");
    c.clone().close().await.expect("close the browser");
}
