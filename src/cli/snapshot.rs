//! `cairn snapshot save|restore|inspect FILE`.

use std::path::PathBuf;

use reqwest::Method;

use super::{print_table, CliError, Client, ClientFlags};
use crate::backup;

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Save a point-in-time archive of all replicated state to FILE.
    Save(SnapshotFile),
    /// Replace all replicated state with the archive in FILE.
    Restore(SnapshotFile),
    /// Describe the archive in FILE (no agent needed).
    Inspect(InspectFile),
}

#[derive(clap::Args, Debug)]
pub struct SnapshotFile {
    #[command(flatten)]
    pub client: ClientFlags,
    pub file: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct InspectFile {
    pub file: PathBuf,
}

fn read(file: &PathBuf) -> Result<Vec<u8>, CliError> {
    std::fs::read(file).map_err(|e| CliError::Usage(format!("Error reading {}: {e}", file.display())))
}

pub fn run(command: SnapshotCommand) -> Result<(), CliError> {
    match command {
        SnapshotCommand::Save(a) => {
            let client = Client::with_timeout(&a.client, None)?;
            let answer = client.request(Method::GET, "/v1/snapshot", None)?.success()?;
            // Checked before it is kept: a damaged transfer must not pass for a backup.
            let verified = backup::verify_archive(&answer.body)
                .map_err(|e| CliError::Usage(format!("Error verifying snapshot: {e}")))?;
            crate::durable_file::replace_file_durably(&a.file, &[&answer.body])
                .map_err(|e| CliError::Usage(format!("Error writing {}: {e}", a.file.display())))?;
            println!("Saved and verified snapshot to index {}", verified.header.index);
            Ok(())
        }
        SnapshotCommand::Restore(a) => {
            let bytes = read(&a.file)?;
            backup::verify_archive(&bytes).map_err(|e| CliError::Usage(format!("Error verifying snapshot: {e}")))?;
            Client::with_timeout(&a.client, None)?.request(Method::PUT, "/v1/snapshot", Some(bytes))?.success()?;
            println!("Restored snapshot");
            Ok(())
        }
        SnapshotCommand::Inspect(a) => {
            let bytes = read(&a.file)?;
            let verified = backup::verify_archive(&bytes)
                .map_err(|e| CliError::Usage(format!("Error verifying snapshot: {e}")))?;
            let h = &verified.header;
            let rows: Vec<Vec<String>> = [
                ("Index", h.index.to_string()),
                ("Term", h.term.to_string()),
                ("Version", h.version.to_string()),
                ("Created", h.created_unix.to_string()),
                ("Size", bytes.len().to_string()),
                ("Checksum", format!("{:016x}", verified.checksum)),
                ("Nodes", h.nodes.to_string()),
                ("Services", h.services.to_string()),
                ("Checks", h.checks.to_string()),
                ("KV entries", h.kv.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| vec![k.to_string(), v])
            .collect();
            print_table(&rows);
            Ok(())
        }
    }
}
