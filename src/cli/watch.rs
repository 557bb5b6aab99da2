//! `cairn watch -type TYPE [...] [-- HANDLER ARGS...]`: follows one view of the catalog or KV
//! and runs the handler with the view's JSON on stdin each time it changes, as `consul watch`
//! does (the rules are in [`crate::watch`]).
//!
//! Without a handler, each result is printed on stdout. The handler gets `CAIRN_INDEX` and
//! `CONSUL_INDEX` (the result's index) in its environment and this process's stdout and
//! stderr; a handler that fails is reported and the watch goes on.

use crate::watch::{follow, Handler, Report, WatchSpec, WatchType};

use super::{CliError, Client, ClientFlags};

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
    /// A filter expression over the view's entries (`-type services|nodes|service|checks`).
    #[arg(long)]
    pub filter: Option<String>,
    /// The handler and its arguments, after `--`.
    #[arg(last = true, value_name = "HANDLER")]
    pub handler: Vec<String>,
}

/// The API path the flags ask to follow, or the flag that is missing.
pub fn watch_path(flags: &WatchFlags) -> Result<String, CliError> {
    if flags.filter.is_some() && !flags.kind.params().contains(&"filter") {
        return Err(CliError::Usage(format!("Error! -filter does not apply to -type {}", flags.kind.name())));
    }
    let spec = WatchSpec {
        key: flags.key.clone(),
        prefix: flags.prefix.clone(),
        service: flags.service.clone(),
        tags: flags.tag.iter().cloned().collect(),
        passingonly: flags.passingonly,
        state: flags.state.clone(),
        filter: flags.filter.clone(),
        ..WatchSpec::new(flags.kind)
    };
    spec.path().map_err(|param| CliError::Usage(format!("Error! -type {} needs -{param}", flags.kind.name())))
}

/// Runs the watch until interrupted.
pub fn run(flags: WatchFlags) -> Result<(), CliError> {
    let path = watch_path(&flags)?;
    let client = Client::with_timeout(&flags.client, None)?;
    let handler = if flags.handler.is_empty() {
        Handler::Print
    } else {
        Handler::Script { args: flags.handler.clone(), capture: false }
    };
    let report = |report: Report<'_>| match report {
        Report::Ran { .. } => {}
        Report::HandlerFailed { error, .. } => eprintln!("cairn: watch: {error}"),
        Report::Unavailable { error, retry_in } => eprintln!("cairn: watch: {error}; retrying in {retry_in:?}"),
    };
    client.block_on(follow(&client, &path, &handler, report)).map_err(CliError::Usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_say_what_to_follow() {
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
        assert_eq!(
            path(&["--type", "service", "--service", "web", "--tag", "v1", "--passingonly"]).unwrap(),
            "/v1/health/service/web?tag=v1&passing"
        );
        assert_eq!(path(&["--type", "checks", "--state", "critical"]).unwrap(), "/v1/health/state/critical");
        assert_eq!(
            path(&["--type", "nodes", "--filter", "Meta.env == prod"]).unwrap(),
            "/v1/catalog/nodes?filter=Meta.env+%3D%3D+prod"
        );
        assert_eq!(
            path(&["--type", "key", "--key", "k", "--filter", "a == b"]).unwrap_err(),
            "Error! -filter does not apply to -type key"
        );
        assert_eq!(path(&["--type", "key"]).unwrap_err(), "Error! -type key needs -key");
        assert_eq!(path(&["--type", "keyprefix"]).unwrap_err(), "Error! -type keyprefix needs -prefix");
    }
}
