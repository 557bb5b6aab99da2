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
    }
}

/// Logs to stderr at `level`; openraft's own lifecycle chatter only from debug on.
fn init_logging(level: tracing::Level) {
    use std::io::IsTerminal;
    use tracing_subscriber::filter::{LevelFilter, Targets};
    use tracing_subscriber::prelude::*;

    let raft_level = if level >= tracing::Level::DEBUG { LevelFilter::from_level(level) } else { LevelFilter::WARN };
    let filter = Targets::new().with_default(level).with_target("openraft", raft_level);
    let format = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    tracing_subscriber::registry().with(format).with(filter).init();
}

fn run_agent(flags: &AgentFlags) -> ExitCode {
    let (config, warnings) = match Config::load(flags) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("cairn: {e}");
            return ExitCode::FAILURE;
        }
    };
    init_logging(tracing::Level::from(config.log_level));
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
    match runtime.block_on(cairn::agent::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("cairn: {e}");
            ExitCode::FAILURE
        }
    }
}
