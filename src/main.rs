//! `cairn`: parse the command line and hand off to the agent or a client subcommand.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cairn::config::{normalize_args, AgentFlags, Config};

#[derive(Parser)]
#[command(name = "cairn", about = "DNS-centric service discovery that speaks Consul's API", version)]
struct Cli {
    #[command(subcommand)]
    command: CliCommand,
}

#[derive(Subcommand)]
enum CliCommand {
    /// Run an agent (the daemon).
    Agent(AgentFlags),
    /// Register or deregister services with the local agent.
    #[command(subcommand)]
    Services(cairn::cli::ServicesCommand),
    /// Make the agent reload its config files.
    Reload(cairn::cli::ClientFlags),
    /// Read and write the KV store.
    #[command(subcommand)]
    Kv(cairn::cli::kv::KvCommand),
    /// List services and nodes of the catalog.
    #[command(subcommand)]
    Catalog(cairn::cli::catalog::CatalogCommand),
    /// List the members of the cluster (gossip pool).
    Members(cairn::cli::operator::MembersFlags),
    /// Join the gossip pool through another member.
    Join(cairn::cli::operator::JoinFlags),
    /// Mark a failed member as left.
    ForceLeave(cairn::cli::operator::ForceLeaveFlags),
    /// Print a new gossip encryption key (for `encrypt`).
    Keygen,
    /// Fire a user event to every member.
    Event(cairn::cli::operator::EventFlags),
    /// Stream the agent's log.
    Monitor(cairn::cli::operator::MonitorFlags),
    /// List or rotate the gossip encryption keys of every member.
    Keyring(cairn::cli::operator::KeyringFlags),
    /// Cluster operations.
    #[command(subcommand)]
    Operator(cairn::cli::operator::OperatorCommand),
    /// Run a command while holding a lock (or a semaphore slot) in KV.
    Lock(cairn::cli::lock::LockFlags),
    /// Run a handler each time a view of the catalog or KV changes.
    Watch(cairn::cli::watch::WatchFlags),
    /// Save, restore or inspect archives of all replicated state.
    #[command(subcommand)]
    Snapshot(cairn::cli::snapshot::SnapshotCommand),
    /// Make the agent leave and shut down gracefully.
    Leave(cairn::cli::ClientFlags),
    /// Manage ACL tokens and policies.
    #[command(subcommand)]
    Acl(cairn::cli::acl::AclCommand),
    /// Create a CA and certificates for the agents' TLS (no agent needed).
    #[command(subcommand)]
    Tls(cairn::cli::tls::TlsCommand),
    /// Print the version.
    Version,
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(normalize_args(std::env::args()));
    match cli.command {
        CliCommand::Version => {
            println!("cairn v{} (Consul API {})", env!("CARGO_PKG_VERSION"), cairn::http::CONSUL_API_VERSION);
            ExitCode::SUCCESS
        }
        CliCommand::Agent(flags) => run_agent(&flags),
        CliCommand::Services(command) => client_exit(cairn::cli::services::run(command)),
        CliCommand::Reload(flags) => client_exit(cairn::cli::reload(&flags)),
        CliCommand::Kv(command) => client_exit(cairn::cli::kv::run(command)),
        CliCommand::Catalog(command) => client_exit(cairn::cli::catalog::run(command)),
        CliCommand::Members(flags) => client_exit(cairn::cli::operator::members(&flags)),
        CliCommand::Join(flags) => client_exit(cairn::cli::operator::join(&flags)),
        CliCommand::ForceLeave(flags) => client_exit(cairn::cli::operator::force_leave(&flags)),
        CliCommand::Monitor(flags) => client_exit(cairn::cli::operator::monitor(&flags)),
        CliCommand::Event(flags) => client_exit(cairn::cli::operator::event(&flags)),
        CliCommand::Keyring(flags) => client_exit(cairn::cli::operator::keyring(&flags)),
        CliCommand::Keygen => {
            cairn::cli::operator::keygen();
            ExitCode::SUCCESS
        }
        CliCommand::Operator(command) => client_exit(cairn::cli::operator::run(command)),
        CliCommand::Snapshot(command) => client_exit(cairn::cli::snapshot::run(command)),
        CliCommand::Watch(flags) => client_exit(cairn::cli::watch::run(flags)),
        CliCommand::Lock(flags) => match cairn::cli::lock::run(flags) {
            Ok(code) => ExitCode::from(code),
            Err(e) => {
                eprintln!("cairn: {e}");
                ExitCode::FAILURE
            }
        },
        CliCommand::Leave(flags) => client_exit(cairn::cli::leave(&flags)),
        CliCommand::Tls(command) => client_exit(cairn::cli::tls::run(command)),
        CliCommand::Acl(command) => client_exit(cairn::cli::acl::run(command)),
    }
}

fn client_exit(result: Result<(), cairn::cli::CliError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Which events are logged at `level`: openraft's own lifecycle chatter only from debug on.
fn log_filter(level: tracing::Level) -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let raft_level = if level >= tracing::Level::DEBUG { LevelFilter::from_level(level) } else { LevelFilter::WARN };
    Targets::new().with_default(level).with_target("openraft", raft_level)
}

/// Logs to stderr at `level`, as text or one JSON object per line, and into `tap` while
/// someone monitors; returns how to change the stderr level later (config reload).
fn init_logging(
    level: tracing::Level,
    json: bool,
    tap: &std::sync::Arc<cairn::http::monitor::LogTap>,
) -> cairn::agent::SetLogLevel {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::Layer;

    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(level));
    let stderr = if json {
        tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_target(false).boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(false)
            .boxed()
    };
    tracing_subscriber::registry().with(stderr.with_filter(filter)).with(cairn::http::monitor::layer(tap)).init();
    Box::new(move |level| {
        let level = tracing::Level::from(level);
        match handle.reload(log_filter(level)) {
            Ok(()) => tracing::info!(%level, "log level changed"),
            Err(e) => tracing::warn!(error = %e, "could not change the log level"),
        }
    })
}

fn run_agent(flags: &AgentFlags) -> ExitCode {
    cairn::agent::memory::tune_allocator();
    let (config, warnings) = match Config::load(flags) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::FAILURE;
        }
    };
    let log_tap = std::sync::Arc::new(cairn::http::monitor::LogTap::default());
    let set_log_level = init_logging(tracing::Level::from(config.log_level), config.log_json, &log_tap);
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let options = cairn::agent::AgentOptions { flags: flags.clone(), set_log_level, log_tap, api: None };
    match runtime.block_on(cairn::agent::run(config, options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cairn: {e}");
            ExitCode::FAILURE
        }
    }
}
