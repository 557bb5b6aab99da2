//! Config files: up to three JSON files (the input split at 0xFF bytes) loaded and merged as
//! the agent loads `-config-dir`. Invariant: a config either loads, or fails with an error
//! that names the file at fault — or, for a rule spanning several keys (checked on the
//! merged config, where no one file is at fault), one that says which keys.

use cairn::config::{AgentFlags, Config, ConfigError};

pub fn check_files(data: &[u8]) {
    let sources: Vec<(String, String)> = data
        .split(|b| *b == 0xFF)
        .take(3)
        .enumerate()
        .map(|(i, part)| (format!("part{i}.json"), String::from_utf8_lossy(part).into_owned()))
        .collect();
    let flags = AgentFlags { dev: true, ..Default::default() };
    match Config::from_sources(&sources, &flags) {
        Ok(_) => {}
        Err(ConfigError::Invalid { what }) => {
            let names_a_key = what.contains('_') || what.contains('.') || what.contains(':');
            assert!(names_a_key, "a config error that names neither file nor key: {what}");
        }
        Err(e) => {
            let message = e.to_string();
            assert!(
                sources.iter().any(|(name, _)| message.contains(name.as_str())),
                "a config error that names no file: {message}"
            );
        }
    }
}
