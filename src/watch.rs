//! Watches: follow one view of the catalog or KV with blocking queries and run a handler each
//! time it changes, as Consul's watch plans do (api/watch). Used by `cairn watch` and by the
//! agent's config `watches`.
//!
//! - the first result always fires;
//! - a wake-up whose index did not move, or whose result equals the last one, does not;
//! - an index that goes backwards (a restore, another server) resets the wait to 0;
//! - errors back off by the square of consecutive failures (1 s, 4 s, 9 s, ... at most
//!   [`BACKOFF_MAX`]), so a restarting agent is picked up again without a storm.
//!
//! Bounds: one blocking query and at most one handler run per watch at a time; changes that
//! happen while the handler runs are coalesced into the next result.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use crate::api_client::{encode_path, ApiClient};

/// How long each blocking query waits (Consul's default).
pub const BLOCKING_WAIT: Duration = Duration::from_secs(300);
pub const BACKOFF_MAX: Duration = Duration::from_secs(20);
/// An HTTP handler's timeout unless configured (Consul's).
pub const HTTP_HANDLER_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchType {
    Key,
    Keyprefix,
    Services,
    Nodes,
    Service,
    Checks,
}

impl WatchType {
    pub const ALL: [WatchType; 6] = [
        WatchType::Key,
        WatchType::Keyprefix,
        WatchType::Services,
        WatchType::Nodes,
        WatchType::Service,
        WatchType::Checks,
    ];

    /// The name `-type` and the config's `type` take.
    pub fn name(self) -> &'static str {
        match self {
            WatchType::Key => "key",
            WatchType::Keyprefix => "keyprefix",
            WatchType::Services => "services",
            WatchType::Nodes => "nodes",
            WatchType::Service => "service",
            WatchType::Checks => "checks",
        }
    }

    pub fn parse(name: &str) -> Option<WatchType> {
        WatchType::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The parameters this type takes besides `datacenter` and `stale`, as Consul names them.
    pub fn params(self) -> &'static [&'static str] {
        match self {
            WatchType::Key => &["key"],
            WatchType::Keyprefix => &["prefix"],
            WatchType::Services | WatchType::Nodes => &["filter"],
            WatchType::Service => &["service", "tag", "passingonly", "filter"],
            WatchType::Checks => &["service", "state", "filter"],
        }
    }
}

/// What a watch follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchSpec {
    pub kind: WatchType,
    pub key: Option<String>,
    pub prefix: Option<String>,
    pub service: Option<String>,
    /// Instances carrying every one of these tags (`service`).
    pub tags: Vec<String>,
    pub passingonly: bool,
    /// `checks` in this state: any, passing, warning, critical.
    pub state: Option<String>,
    /// Any server may answer (`?stale`).
    pub stale: bool,
    pub datacenter: Option<String>,
    /// `?filter=`: a Consul filter expression over the view's entries (not for KV views).
    pub filter: Option<String>,
}

impl WatchSpec {
    pub fn new(kind: WatchType) -> WatchSpec {
        WatchSpec {
            kind,
            key: None,
            prefix: None,
            service: None,
            tags: Vec::new(),
            passingonly: false,
            state: None,
            stale: false,
            datacenter: None,
            filter: None,
        }
    }

    /// The API path the watch follows, or the name of the parameter it is missing.
    pub fn path(&self) -> Result<String, &'static str> {
        let need = |value: &Option<String>, param: &'static str| {
            value.as_deref().filter(|v| !v.is_empty()).map(encode_path).ok_or(param)
        };
        let (path, mut query) = match self.kind {
            WatchType::Key => (format!("/v1/kv/{}", need(&self.key, "key")?), Vec::new()),
            WatchType::Keyprefix => (format!("/v1/kv/{}", need(&self.prefix, "prefix")?), vec!["recurse".to_string()]),
            WatchType::Services => ("/v1/catalog/services".to_string(), Vec::new()),
            WatchType::Nodes => ("/v1/catalog/nodes".to_string(), Vec::new()),
            WatchType::Service => {
                let path = format!("/v1/health/service/{}", need(&self.service, "service")?);
                let mut query: Vec<String> = self.tags.iter().map(|t| format!("tag={}", encoded(t))).collect();
                if self.passingonly {
                    query.push("passing".to_string());
                }
                (path, query)
            }
            WatchType::Checks => match (&self.service, &self.state) {
                (Some(service), _) => (format!("/v1/health/checks/{}", encode_path(service)), Vec::new()),
                (None, state) => {
                    (format!("/v1/health/state/{}", encoded(state.as_deref().unwrap_or("any"))), Vec::new())
                }
            },
        };
        if let Some(dc) = &self.datacenter {
            query.push(format!("dc={}", encoded(dc)));
        }
        if self.stale {
            query.push("stale".to_string());
        }
        if let Some(filter) = self.filter.as_deref().filter(|f| !f.is_empty()) {
            query.push(format!("filter={}", encoded(filter)));
        }
        Ok(if query.is_empty() { path } else { format!("{path}?{}", query.join("&")) })
    }
}

fn encoded(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// One `watches` entry of the agent config: what to follow and what to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchDefinition {
    pub spec: WatchSpec,
    pub handler: Handler,
    /// The ACL token its queries present (none: the agent's default token).
    pub token: Option<crate::model::acl::Secret>,
}

/// What runs when the view changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handler {
    /// Print the result on stdout (`cairn watch` without a handler).
    Print,
    /// Run a program (no shell) with the result on stdin and `CONSUL_INDEX` in its
    /// environment. `capture`: its output is kept (up to 4 KiB) for the report, else it
    /// inherits this process's stdout and stderr.
    Script { args: Vec<String>, capture: bool },
    /// Send the result to a URL.
    Http(HttpHandler),
}

/// Consul's `http_handler_config`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpHandler {
    pub url: String,
    pub method: http::Method,
    /// Sent as given (names and values checked when the config loaded).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub tls_skip_verify: bool,
}

/// What the watch loop tells its owner.
#[derive(Debug)]
pub enum Report<'a> {
    /// The handler ran for the result at `index`; `output` is what it printed (captured
    /// scripts) or answered (HTTP).
    Ran { index: u64, output: &'a str },
    /// The handler failed for the result at `index`; the watch goes on.
    HandlerFailed { index: u64, error: &'a str },
    /// The agent could not answer; the next try is after `retry_in`.
    Unavailable { error: &'a str, retry_in: Duration },
}

/// What the watch loop decides about one answer.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Run the handler with this result.
    Fire(Value),
    /// Nothing changed.
    Skip,
}

/// The watch's memory between answers: Consul's plan rules, without I/O.
#[derive(Default)]
pub struct Plan {
    index: u64,
    last: Option<Value>,
}

impl Plan {
    /// The index to block on next.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Takes an answer at `index` with `result`.
    pub fn next(&mut self, index: u64, result: Value) -> Step {
        // Index 0 means "no index": treat it as 1, as Consul.
        let index = index.max(1);
        if index < self.index {
            // Gone backwards: start over, and fire only if the result differs.
            self.index = 0;
        }
        if self.last.is_some() && index == self.index {
            return Step::Skip;
        }
        self.index = index;
        if self.last.as_ref() == Some(&result) {
            return Step::Skip;
        }
        self.last = Some(result.clone());
        Step::Fire(result)
    }
}

/// The pause after `failures` consecutive errors.
pub fn backoff(failures: u32) -> Duration {
    Duration::from_secs(u64::from(failures).saturating_pow(2)).min(BACKOFF_MAX)
}

/// Follows `path` on the agent behind `api` forever (the caller drops the future to stop),
/// running `handler` on each change and telling `report` what happened. Fails only when an
/// HTTP handler's client cannot be built (a TLS setup error).
pub async fn follow(api: &ApiClient, path: &str, handler: &Handler, report: impl Fn(Report<'_>)) -> Result<(), String> {
    let runner = Runner::new(handler)?;
    let mut plan = Plan::default();
    let mut failures = 0u32;
    loop {
        let answer = match api.blocking_get(path, plan.index(), BLOCKING_WAIT).await {
            // A missing key or prefix is a result (null), as Consul's watch reports it.
            Ok(answer) if answer.status == 404 && path.starts_with("/v1/kv/") => Ok((answer.index, Value::Null)),
            Ok(answer) => answer.success().map_err(|e| e.to_string()).and_then(|a| {
                let value =
                    serde_json::from_slice(&a.body).map_err(|e| format!("invalid answer from the agent: {e}"))?;
                Ok((a.index, value))
            }),
            Err(e) => Err(e.to_string()),
        };
        let (index, result) = match answer {
            Ok(answer) => {
                failures = 0;
                answer
            }
            Err(error) => {
                failures += 1;
                let retry_in = backoff(failures);
                report(Report::Unavailable { error: &error, retry_in });
                tokio::time::sleep(retry_in).await;
                continue;
            }
        };
        if let Step::Fire(result) = plan.next(index.unwrap_or(0), result) {
            let index = plan.index();
            match runner.run(index, &result).await {
                Ok(output) => report(Report::Ran { index, output: &output }),
                Err(error) => report(Report::HandlerFailed { index, error: &error }),
            }
        }
    }
}

/// A handler ready to run (an HTTP handler's client built once).
enum Runner<'h> {
    Print,
    Script { args: &'h [String], capture: bool },
    Http { config: &'h HttpHandler, client: reqwest::Client },
}

impl<'h> Runner<'h> {
    fn new(handler: &'h Handler) -> Result<Runner<'h>, String> {
        Ok(match handler {
            Handler::Print => Runner::Print,
            Handler::Script { args, capture } => Runner::Script { args, capture: *capture },
            Handler::Http(config) => {
                let client = reqwest::Client::builder()
                    .timeout(config.timeout)
                    .danger_accept_invalid_certs(config.tls_skip_verify)
                    .build()
                    .map_err(|e| format!("cannot set up the HTTP handler for {}: {e}", config.url))?;
                Runner::Http { config, client }
            }
        })
    }

    /// Runs once with `result`; what it printed or answered, or why it failed.
    async fn run(&self, index: u64, result: &Value) -> Result<String, String> {
        let json = serde_json::to_vec_pretty(result).unwrap_or_default();
        match self {
            Runner::Print => {
                println!("{}", String::from_utf8_lossy(&json));
                Ok(String::new())
            }
            Runner::Script { args, capture } => run_script(args, *capture, index, &json).await,
            Runner::Http { config, client } => {
                let mut request = client
                    .request(config.method.clone(), &config.url)
                    .header("Content-Type", "application/json")
                    .header("X-Consul-Index", index.to_string());
                for (name, value) in &config.headers {
                    request = request.header(name, value);
                }
                let failed =
                    |e: reqwest::Error| format!("{} {}: {}", config.method, config.url, crate::checks::root_cause(&e));
                let mut response = request.body(json).send().await.map_err(failed)?;
                let status = response.status();
                let body = crate::checks::read_body_capped(&mut response).await.map_err(failed)?;
                let text = String::from_utf8_lossy(&body);
                if status.is_success() {
                    Ok(format!("{status}"))
                } else {
                    Err(format!("{} {} answered {status}: {}", config.method, config.url, text.trim()))
                }
            }
        }
    }
}

async fn run_script(args: &[String], capture: bool, index: u64, json: &[u8]) -> Result<String, String> {
    let Some((program, rest)) = args.split_first() else {
        return Err("no handler program".to_string());
    };
    let output = || if capture { std::process::Stdio::piped() } else { std::process::Stdio::inherit() };
    let mut child = tokio::process::Command::new(program)
        .args(rest)
        .env("CAIRN_INDEX", index.to_string())
        .env("CONSUL_INDEX", index.to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(output())
        .stderr(output())
        .spawn()
        .map_err(|e| format!("cannot run the handler {program:?}: {e}"))?;
    let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
    let feed = async move {
        if let Some(mut stdin) = stdin {
            // A handler that does not read its input is its own business.
            let _ = stdin.write_all(json).await;
        }
    };
    use crate::checks::read_capped;
    let ((), out, err, status) = tokio::join!(feed, read_capped(stdout), read_capped(stderr), child.wait());
    let mut output = String::from_utf8_lossy(&out).into_owned();
    output.push_str(&String::from_utf8_lossy(&err));
    match status {
        Ok(status) if status.success() => Ok(output),
        Ok(status) => Err(format!("the handler {program:?} exited with {status}: {}", output.trim())),
        Err(e) => Err(format!("waiting for the handler {program:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fires_once_per_change_and_starts_over_when_the_index_goes_back() {
        let mut plan = Plan::default();
        assert_eq!(plan.next(0, json!([])), Step::Fire(json!([])), "the first result fires, index 0 as 1");
        assert_eq!(plan.index(), 1);
        assert_eq!(plan.next(1, json!([])), Step::Skip, "same index");
        assert_eq!(plan.next(7, json!([])), Step::Skip, "index moved, result equal");
        assert_eq!(plan.next(9, json!(["a"])), Step::Fire(json!(["a"])));
        assert_eq!(plan.next(9, json!(["b"])), Step::Skip, "no new index, no new result");
        assert_eq!(plan.next(4, json!(["a"])), Step::Skip, "backwards, equal: reset only");
        assert_eq!(plan.index(), 4);
        assert_eq!(plan.next(3, json!(["c"])), Step::Fire(json!(["c"])), "backwards and changed");
    }

    #[test]
    fn each_type_follows_its_endpoint() {
        let path = |kind, edit: &dyn Fn(&mut WatchSpec)| {
            let mut spec = WatchSpec::new(kind);
            edit(&mut spec);
            spec.path()
        };
        assert_eq!(path(WatchType::Key, &|s| s.key = Some("a b/c".into())).unwrap(), "/v1/kv/a%20b/c");
        assert_eq!(path(WatchType::Keyprefix, &|s| s.prefix = Some("app/".into())).unwrap(), "/v1/kv/app/?recurse");
        assert_eq!(path(WatchType::Services, &|_| {}).unwrap(), "/v1/catalog/services");
        assert_eq!(path(WatchType::Nodes, &|s| s.stale = true).unwrap(), "/v1/catalog/nodes?stale");
        assert_eq!(
            path(WatchType::Service, &|s| {
                s.service = Some("web".into());
                s.tags = vec!["v1".into(), "a&b".into()];
                s.passingonly = true;
                s.datacenter = Some("dc1".into());
            })
            .unwrap(),
            "/v1/health/service/web?tag=v1&tag=a%26b&passing&dc=dc1"
        );
        assert_eq!(path(WatchType::Checks, &|_| {}).unwrap(), "/v1/health/state/any");
        assert_eq!(
            path(WatchType::Checks, &|s| s.state = Some("critical".into())).unwrap(),
            "/v1/health/state/critical"
        );
        assert_eq!(path(WatchType::Checks, &|s| s.service = Some("web".into())).unwrap(), "/v1/health/checks/web");
        assert_eq!(path(WatchType::Key, &|_| {}).unwrap_err(), "key");
        assert_eq!(path(WatchType::Service, &|s| s.service = Some(String::new())).unwrap_err(), "service");
        for kind in WatchType::ALL {
            assert_eq!(WatchType::parse(kind.name()), Some(kind));
            use clap::ValueEnum;
            assert_eq!(kind.to_possible_value().map(|v| v.get_name().to_string()).as_deref(), Some(kind.name()));
        }
    }

    #[test]
    fn backoff_grows_with_the_square_of_failures() {
        let secs: Vec<u64> = (1..=6).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 4, 9, 16, 20, 20]);
    }

    #[tokio::test]
    async fn a_script_gets_the_result_and_its_output_is_kept() {
        let args: Vec<String> = ["sh", "-c", "cat; echo \" index=$CONSUL_INDEX\""].map(String::from).to_vec();
        let output = run_script(&args, true, 7, b"[1]").await.expect("runs");
        assert_eq!(output.trim(), "[1] index=7");
        let failing: Vec<String> = ["sh", "-c", "echo oops >&2; exit 3"].map(String::from).to_vec();
        let error = run_script(&failing, true, 7, b"").await.unwrap_err();
        assert!(error.contains("exit status: 3") && error.ends_with("oops"), "{error}");
        let missing = run_script(&["/nonexistent/handler".to_string()], true, 1, b"").await.unwrap_err();
        assert!(missing.starts_with("cannot run the handler \"/nonexistent/handler\""), "{missing}");
    }
}
