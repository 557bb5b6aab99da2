//! `cairn watch -type TYPE [...] [-- HANDLER ARGS...]`: follows one view of the catalog or KV
//! with blocking queries and runs the handler with the view's JSON on stdin each time it
//! changes, as `consul watch` does (api/watch's plan):
//!
//! - the first result always fires;
//! - a wake-up whose index did not move, or whose result equals the last one, does not;
//! - an index that goes backwards (a restore, another server) resets the wait to 0;
//! - errors back off by the square of consecutive failures (1 s, 4 s, 9 s, ... at most
//!   [`BACKOFF_MAX`]), so a restarting agent is picked up again without a storm.
//!
//! Without a handler, each result is printed on stdout. The handler gets `CAIRN_INDEX` and
//! `CONSUL_INDEX` (the result's index) in its environment; a handler that fails is reported
//! and the watch goes on.

use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::{encode_path, CliError, Client, ClientFlags};

const BLOCKING_WAIT: Duration = Duration::from_secs(300);
const BACKOFF_MAX: Duration = Duration::from_secs(20);

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
    /// The name `-type` takes.
    fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default()
    }
}

#[derive(clap::Args, Debug)]
pub struct WatchFlags {
    #[command(flatten)]
    pub client: ClientFlags,
    #[arg(long = "type", value_enum)]
    pub kind: WatchType,
    /// The key (`-type key`).
    #[arg(long)]
    pub key: Option<String>,
    /// The prefix (`-type keyprefix`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// The service (`-type service`; optional for `-type checks`).
    #[arg(long)]
    pub service: Option<String>,
    /// Only instances with this tag (`-type service`).
    #[arg(long)]
    pub tag: Option<String>,
    /// Only passing instances (`-type service`).
    #[arg(long)]
    pub passingonly: bool,
    /// Checks in this state (`-type checks`: any, passing, warning, critical).
    #[arg(long)]
    pub state: Option<String>,
    /// The handler and its arguments, after `--`.
    #[arg(last = true, value_name = "HANDLER")]
    pub handler: Vec<String>,
}

/// The API path a watch follows, or the flag it is missing.
pub fn watch_path(flags: &WatchFlags) -> Result<String, CliError> {
    let need = |value: &Option<String>, flag: &str| {
        value
            .as_deref()
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .ok_or_else(|| CliError::Usage(format!("Error! -type {} needs -{flag}", flags.kind.name())))
    };
    Ok(match flags.kind {
        WatchType::Key => format!("/v1/kv/{}", encode_path(&need(&flags.key, "key")?)),
        WatchType::Keyprefix => format!("/v1/kv/{}?recurse", encode_path(&need(&flags.prefix, "prefix")?)),
        WatchType::Services => "/v1/catalog/services".to_string(),
        WatchType::Nodes => "/v1/catalog/nodes".to_string(),
        WatchType::Service => {
            let mut path = format!("/v1/health/service/{}?", encode_path(&need(&flags.service, "service")?));
            if let Some(tag) = &flags.tag {
                path.push_str(&format!("tag={}&", form_urlencoded::byte_serialize(tag.as_bytes()).collect::<String>()));
            }
            if flags.passingonly {
                path.push_str("passing&");
            }
            path.trim_end_matches(['?', '&']).to_string()
        }
        WatchType::Checks => match (&flags.service, &flags.state) {
            (Some(service), _) => format!("/v1/health/checks/{}", encode_path(service)),
            (None, state) => format!("/v1/health/state/{}", state.as_deref().unwrap_or("any")),
        },
    })
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

/// Runs the watch until interrupted (or the handler cannot be started).
pub fn run(flags: WatchFlags) -> Result<(), CliError> {
    let path = watch_path(&flags)?;
    let client = Client::with_timeout(&flags.client, None)?;
    client.block_on(follow(&client, &flags, &path))
}

async fn follow(client: &Client, flags: &WatchFlags, path: &str) -> Result<(), CliError> {
    let mut plan = Plan::default();
    let mut failures = 0u32;
    loop {
        let answer = match client.blocking_get(path, plan.index(), BLOCKING_WAIT).await {
            // A missing key or prefix is a result (null), as Consul's watch reports it.
            Ok(answer) if answer.status == 404 && path.starts_with("/v1/kv/") => Ok((answer.index, Value::Null)),
            Ok(answer) => answer.success().and_then(|a| {
                let value = serde_json::from_slice(&a.body)
                    .map_err(|e| CliError::Usage(format!("invalid answer from the agent: {e}")))?;
                Ok((a.index, value))
            }),
            Err(e) => Err(e),
        };
        let (index, result) = match answer {
            Ok(answer) => {
                failures = 0;
                answer
            }
            Err(e) => {
                failures += 1;
                let pause = backoff(failures);
                eprintln!("cairn: watch: {e}; retrying in {pause:?}");
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if let Step::Fire(result) = plan.next(index.unwrap_or(0), result) {
            handle(flags, plan.index(), &result).await?;
        }
    }
}

/// Prints `result`, or runs the handler with it on stdin.
async fn handle(flags: &WatchFlags, index: u64, result: &Value) -> Result<(), CliError> {
    let json = serde_json::to_vec_pretty(result).unwrap_or_default();
    let Some((program, args)) = flags.handler.split_first() else {
        println!("{}", String::from_utf8_lossy(&json));
        return Ok(());
    };
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("CAIRN_INDEX", index.to_string())
        .env("CONSUL_INDEX", index.to_string())
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| CliError::Usage(format!("Error! Cannot run the handler {program:?}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A handler that does not read its input is its own business.
        let _ = stdin.write_all(&json).await;
    }
    match child.wait().await {
        Ok(status) if status.success() => {}
        Ok(status) => eprintln!("cairn: watch: handler {program:?} exited with {status}"),
        Err(e) => eprintln!("cairn: watch: waiting for the handler {program:?}: {e}"),
    }
    Ok(())
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
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            flags: WatchFlags,
        }
        let path = |args: &[&str]| {
            let cli = Cli::try_parse_from(std::iter::once("watch").chain(args.iter().copied())).expect("flags parse");
            watch_path(&cli.flags).map_err(|e| e.to_string())
        };
        assert_eq!(path(&["--type", "key", "--key", "a b/c"]).unwrap(), "/v1/kv/a%20b/c");
        assert_eq!(path(&["--type", "keyprefix", "--prefix", "app/"]).unwrap(), "/v1/kv/app/?recurse");
        assert_eq!(path(&["--type", "services"]).unwrap(), "/v1/catalog/services");
        assert_eq!(path(&["--type", "nodes"]).unwrap(), "/v1/catalog/nodes");
        assert_eq!(
            path(&["--type", "service", "--service", "web", "--tag", "v1", "--passingonly"]).unwrap(),
            "/v1/health/service/web?tag=v1&passing"
        );
        assert_eq!(path(&["--type", "service", "--service", "web"]).unwrap(), "/v1/health/service/web");
        assert_eq!(path(&["--type", "checks"]).unwrap(), "/v1/health/state/any");
        assert_eq!(path(&["--type", "checks", "--state", "critical"]).unwrap(), "/v1/health/state/critical");
        assert_eq!(path(&["--type", "checks", "--service", "web"]).unwrap(), "/v1/health/checks/web");
        assert_eq!(path(&["--type", "key"]).unwrap_err(), "Error! -type key needs -key");
    }

    #[test]
    fn backoff_grows_with_the_square_of_failures() {
        let secs: Vec<u64> = (1..=6).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(secs, [1, 4, 9, 16, 20, 20]);
    }
}
