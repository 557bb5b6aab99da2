//! Static zones: every `*.zone` file (RFC 1035 master format) in the zones directory, served
//! authoritatively through a hickory `Catalog`. Reloading builds a new catalog; a file that no
//! longer parses keeps its previous version and is reported.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hickory_proto::rr::{LowerName, Name};
use hickory_server::store::file::{FileConfig, FileZoneHandler};
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};

/// The zones currently served, with the handler of each file (kept to survive a bad reload).
#[derive(Default)]
pub struct Zones {
    pub catalog: Catalog,
    loaded: HashMap<PathBuf, (LowerName, Arc<dyn ZoneHandler>)>,
}

/// One problem found while loading.
#[derive(Debug)]
pub struct ZoneError {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for ZoneError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "zone file {}: {}", self.file.display(), self.message)
    }
}

impl Zones {
    /// Whether some zone holds `name`.
    pub fn covers(&self, name: &LowerName) -> bool {
        self.loaded.values().any(|(origin, _)| origin.zone_of(name))
    }

    pub(super) fn len(&self) -> usize {
        self.loaded.len()
    }
}

/// The origin of a zone file: its `$ORIGIN`, else the file name without `.zone`.
fn origin_of(path: &Path, text: &str) -> Result<Name, String> {
    let declared = text.lines().find_map(|line| {
        let line = line.trim_start();
        line.strip_prefix("$ORIGIN").map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
    });
    let origin = match declared {
        Some(origin) => origin,
        None => path.file_stem().and_then(|s| s.to_str()).map(|s| format!("{s}.")).unwrap_or_default(),
    };
    let mut name = Name::from_ascii(&origin).map_err(|e| format!("invalid origin {origin:?}: {e}"))?;
    name.set_fqdn(true);
    Ok(name)
}

/// Loads every `*.zone` file in `dir`. Files that fail keep their entry from `previous` (if
/// any) and are reported in the returned errors.
pub fn load(dir: &Path, previous: Option<&Zones>) -> (Zones, Vec<ZoneError>) {
    let mut zones = Zones::default();
    let mut errors = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "zone"))
            .collect(),
        Err(e) => {
            errors
                .push(ZoneError { file: dir.to_path_buf(), message: format!("cannot read the zones directory: {e}") });
            Vec::new()
        }
    };
    files.sort();
    for file in files {
        match load_file(&file) {
            Ok((origin, handler)) => {
                zones.loaded.insert(file, (origin, handler));
            }
            Err(message) => {
                if let Some(kept) = previous.and_then(|p| p.loaded.get(&file)) {
                    zones.loaded.insert(file.clone(), kept.clone());
                }
                errors.push(ZoneError { file, message });
            }
        }
    }
    for (origin, handler) in zones.loaded.values() {
        zones.catalog.upsert(origin.clone(), vec![Arc::clone(handler)]);
    }
    (zones, errors)
}

fn load_file(path: &Path) -> Result<(LowerName, Arc<dyn ZoneHandler>), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    let origin = origin_of(path, &text)?;
    let config = FileConfig { zone_path: path.to_path_buf() };
    let handler = FileZoneHandler::try_from_config(origin.clone(), ZoneType::Primary, AxfrPolicy::Deny, None, &config)
        .map_err(|e| with_line(path, &text, &origin, e))?;
    Ok((LowerName::from(origin), Arc::new(handler)))
}

/// hickory's zone errors name no line: find the first line at which a prefix of the file
/// fails to parse (a prefix that only ends inside parentheses does not count), and put it in
/// the message. Skipped for very large files, where the scan would be slow.
fn with_line(path: &Path, text: &str, origin: &Name, error: String) -> String {
    const LINES_SCANNED_MAX: usize = 5_000;
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() > LINES_SCANNED_MAX {
        return error;
    }
    let fails_at = |n: usize| {
        let prefix = lines[..n].join("\n");
        let parser = hickory_proto::serialize::txt::Parser::new(prefix, Some(path.to_path_buf()), Some(origin.clone()));
        match parser.parse() {
            Ok(_) => false,
            Err(e) => !format!("{e:?}").contains("UnclosedList"),
        }
    };
    match (1..=lines.len()).find(|n| fails_at(*n)) {
        Some(n) => format!("line {n}: {error}"),
        None => error,
    }
}
