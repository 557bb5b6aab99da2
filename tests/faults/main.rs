//! The fault harness (issue 19): three servers and a client agent on this machine (five and
//! two for the partitions), a workload through all of them, one fault per scenario, then the
//! checks — no acknowledged write lost on any server, the counter's history (default and
//! `?consistent` reads, CAS) linearizable, no two lock holders at once, DNS and gossip
//! converged (`scenarios.rs` lists the scenarios and their own checks).
//!
//! ```sh
//! cargo test --test faults                                 # short mode (CI): each scenario once, seed 1
//! cargo test --release --test faults -- --minutes 30       # long mode: scenarios in turn, new seed each
//! cargo test --test faults -- --seed 7 leader-sigstop      # one scenario, another seed
//! ```
//!
//! Each agent runs in a network namespace of its own, linked to the others through one
//! bridge (`net.rs`), where the harness can make them (root or `CAP_NET_ADMIN`, `ip` and
//! `nft`; `iptables` for delay, `delay.rs`); then every scenario runs there, partitions,
//! lossy and slow links included. Where it cannot (or with `--loopback`), the agents share
//! loopback and only the fault kinds that need no namespace run (SIGKILL, SIGSTOP, a stalled
//! disk, and a full one where tmpfs can be mounted, `disk.rs`); the output says which and why.
//! Every wait has a deadline; a scenario's workload runs for a fixed time.

mod delay;
mod disk;
#[path = "../cluster/linear.rs"]
mod linear;
mod net;
mod scenarios;
#[path = "../support/mod.rs"]
mod support;
mod workload;

use std::process::ExitCode;
use std::time::{Duration, Instant};

/// What to run, from the command line.
struct Options {
    seed: u64,
    /// Long mode: keep running scenarios (a new seed each round) until this much time passed.
    minutes: Option<u64>,
    /// Only scenarios whose name contains this.
    filter: Option<String>,
    /// Loopback even where namespaces can be made.
    loopback: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options { seed: 1, minutes: None, filter: None, loopback: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut number = |flag: &str| -> Result<u64, String> {
            let value = args.next().ok_or(format!("{flag} needs a number"))?;
            value.parse().map_err(|_| format!("{flag} {value:?}: not a whole number"))
        };
        match arg.as_str() {
            "--seed" => options.seed = number("--seed")?,
            "--minutes" => options.minutes = Some(number("--minutes")?),
            "--loopback" => options.loopback = true,
            // What `cargo test` hands every test binary; nothing to do with them here.
            "--nocapture" | "--quiet" | "-q" | "--show-output" | "--test-threads" => {}
            flag if flag.starts_with('-') => return Err(format!("unknown flag {flag:?}")),
            name => options.filter = Some(name.to_string()),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("faults: {e}\nusage: faults [--seed N] [--minutes M] [--loopback] [SCENARIO]");
            return ExitCode::from(2);
        }
    };
    let net = if options.loopback { Err("--loopback given".to_string()) } else { net::Net::create(1) };
    let delay = net.as_ref().map_err(Clone::clone).and_then(net::Net::probe_delay);
    let namespaces = net.map(drop);
    match (&namespaces, &delay) {
        (Ok(()), Ok(())) => println!("fault harness: each agent in its own network namespace; all fault kinds"),
        (Ok(()), Err(why)) => println!(
            "fault harness: each agent in its own network namespace; no delay on a link ({why}): the slow-link \
             scenario SKIPPED"
        ),
        (Err(why), _) => println!(
            "fault harness: on loopback, network namespaces unavailable ({why}): SIGKILL, SIGSTOP and \
             disk faults run; partitions, lossy and slow links SKIPPED"
        ),
    }
    let mounts = disk::probe();
    if let Err(why) = &mounts {
        println!("fault harness: cannot mount tmpfs ({why}): the full-disk scenario SKIPPED");
    }
    let chosen: Vec<&scenarios::Scenario> = scenarios::ALL
        .iter()
        .filter(|s| options.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .filter(|s| match s.fault.needs() {
            scenarios::Needs::Nothing => true,
            scenarios::Needs::Namespaces => namespaces.is_ok(),
            scenarios::Needs::Delay => delay.is_ok(),
            scenarios::Needs::Mounts => mounts.is_ok(),
        })
        .collect();
    if chosen.is_empty() {
        eprintln!("faults: no scenario to run matches {:?} in this mode", options.filter.as_deref().unwrap_or(""));
        return ExitCode::from(2);
    }
    let deadline = options.minutes.map(|m| Instant::now() + Duration::from_secs(m * 60));
    let mut results = Vec::new();
    let mut seed = options.seed;
    loop {
        for scenario in &chosen {
            println!("scenario {} (seed {seed}) ...", scenario.name);
            let result = scenarios::run(scenario, seed, namespaces.is_ok());
            println!("  {}", result.line());
            results.push(result);
        }
        seed += 1;
        if deadline.is_none_or(|d| Instant::now() >= d) {
            break;
        }
    }
    scenarios::print_summary(&results);
    if results.iter().all(|r| r.passed()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
