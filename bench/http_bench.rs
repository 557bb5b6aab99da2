//! cairn's HTTP benchmark: durable writes against etcd, blocking-query fan-out, and memory and
//! restart footprint. Run it with `bash bench/run.sh`, which builds it, pins it to core 1 and
//! has it start every server on core 0; `bench/README.md` says what each section measures.
//!
//! The bench drives the servers through its own small HTTP/1.1 client (`client.rs`) on a
//! single-threaded runtime, so its cost per request is small, fixed and on its own core.

mod bulk;
mod checks;
mod client;
mod cluster;
mod footprint;
mod load;
mod server;
mod sessions;
mod watch;
mod writes;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::server::Binaries;

const USAGE: &str = "usage: http_bench [--only writes|watch|footprint|checks|cluster|sessions|bulk]... [--seconds N] \
                     [--unpinned] [--cairn PATH] [--etcd PATH]";

/// Longest a section may run: a base, plus a share per `--seconds` (the writes section runs
/// nine cells of `--seconds` each).
const SECTION_TIMEOUT_BASE: Duration = Duration::from_secs(600);
const SECTION_TIMEOUT_PER_SECOND: Duration = Duration::from_secs(20);

/// What every section needs to know.
pub struct Settings {
    /// Measured seconds per cell in the writes section.
    pub seconds: u64,
    pub bins: Binaries,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Section {
    Writes,
    Watch,
    Footprint,
    Checks,
    Cluster,
    Sessions,
    Bulk,
}

impl Section {
    const ALL: [Section; 7] = [
        Section::Writes,
        Section::Watch,
        Section::Footprint,
        Section::Checks,
        Section::Cluster,
        Section::Sessions,
        Section::Bulk,
    ];

    fn parse(name: &str) -> Result<Section> {
        Ok(match name {
            "writes" => Section::Writes,
            "watch" => Section::Watch,
            "footprint" => Section::Footprint,
            "checks" => Section::Checks,
            "cluster" => Section::Cluster,
            "sessions" => Section::Sessions,
            "bulk" => Section::Bulk,
            _ => bail!("unknown section {name:?}; {USAGE}"),
        })
    }
}

fn parse_args(args: &[String]) -> Result<(Vec<Section>, Settings)> {
    let mut sections = Vec::new();
    let mut settings = Settings {
        seconds: 5,
        bins: Binaries {
            // The release cairn next to this bench when built by `cargo build --release --bench`.
            cairn: PathBuf::from(env!("CARGO_BIN_EXE_cairn")),
            etcd: PathBuf::from("etcd"),
        },
    };
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        let mut value = || rest.next().with_context(|| format!("{arg} needs a value; {USAGE}"));
        match arg.as_str() {
            "--only" => {
                for name in value()?.split(',') {
                    sections.push(Section::parse(name)?);
                }
            }
            "--seconds" => {
                let text = value()?;
                settings.seconds = text
                    .parse()
                    .ok()
                    .filter(|&s| s > 0)
                    .with_context(|| format!("--seconds {text:?}: want a whole number > 0"))?;
            }
            // Every server free to use every core, as deployed (run.sh then leaves the bench
            // unpinned too).
            "--unpinned" => server::unpin_servers(),
            "--cairn" => settings.bins.cairn = PathBuf::from(value()?),
            "--etcd" => settings.bins.etcd = PathBuf::from(value()?),
            // `cargo bench` passes this to every bench binary.
            "--bench" => {}
            "-h" | "--help" => bail!("{USAGE}"),
            _ => bail!("unknown argument {arg:?}; {USAGE}"),
        }
    }
    if sections.is_empty() {
        sections = Section::ALL.to_vec();
    }
    Ok((sections, settings))
}

/// Raises the soft open-files limit to the hard limit (10,000 watcher connections need it);
/// returns the new soft limit.
fn raise_nofile_limit() -> Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(limit.rlim_cur)
}

/// `N cores, <model name>, Linux <release>`.
fn machine_line() -> String {
    // SAFETY: sysconf has no preconditions.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown CPU", |(_, m)| m.trim())
        .to_owned();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {model}, Linux {}", kernel.trim())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(watch::WRITE_FLOOR_FLAG) {
        // The watch section runs this same executable as its write floor's server.
        let watchers = args.get(2).and_then(|n| n.parse().ok()).unwrap_or(0);
        let served = raise_nofile_limit().and_then(|_| watch::serve_write_floor(watchers));
        return match served {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("write floor: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let (sections, settings) = match parse_args(&args[1..]) {
        Ok(parsed) => parsed,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::from(2);
        }
    };
    let nofile = match raise_nofile_limit() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("{e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("# cairn HTTP benchmark\n");
    println!("machine: {}", machine_line());
    // Other work on the machine skews every figure; the load average shows whether there was any.
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average at start: {}", loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
    println!("command: {}", args.join(" "));
    println!(
        "cairn: {}; etcd: {}; {}; open-files limit {nofile}\n",
        settings.bins.cairn.display(),
        settings.bins.etcd.display(),
        server::placement()
    );
    let mut failed = false;
    for section in sections {
        let run = async {
            match section {
                Section::Writes => writes::run(&settings).await,
                Section::Watch => watch::run(&settings).await,
                Section::Footprint => footprint::run(&settings).await,
                Section::Checks => checks::run(&settings).await,
                Section::Cluster => cluster::run(&settings).await,
                Section::Sessions => sessions::run(&settings).await,
                Section::Bulk => bulk::run(&settings).await,
            }
        };
        // A backstop over the per-step deadlines: no section can hang the bench.
        let limit = SECTION_TIMEOUT_BASE + SECTION_TIMEOUT_PER_SECOND * settings.seconds as u32;
        let result = tokio::time::timeout(limit, run)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("did not finish within {limit:?}")));
        if let Err(e) = result {
            // Report and go on: one section's failure says nothing about the others.
            println!("{section:?} section FAILED: {e:#}\n");
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
