//! The gossip keyring: the keys an agent opens packets with, the first of them (the primary)
//! also sealing what it sends, kept in `<data_dir>/keyring.json` so a rotation survives a
//! restart (as Consul's `serf/local.keyring`; the file then wins over `encrypt`).
//!
//! Rotation, cluster-wide (`cairn keyring`, `/v1/operator/keyring`): install the new key on
//! every member, make it primary everywhere, then remove the old one. Each step is run by the
//! agent that received the call on itself and then on every alive member over the gossip
//! stream, which is sealed with the current keys: only a key holder can change keys.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::envelope::GossipKey;

/// One keyring operation, as it travels to other members.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyringOp {
    List,
    Install(String),
    Use(String),
    Remove(String),
}

/// One member's keyring after an operation (or why it failed there).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyringReply {
    pub node: String,
    /// Primary first, base64.
    pub keys: Vec<String>,
    pub error: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct KeyringFile {
    /// Primary first, base64.
    keys: Vec<String>,
}

pub struct Keyring {
    path: Option<PathBuf>,
    keys: Vec<GossipKey>,
}

impl Keyring {
    /// The keyring in `dir` if there is one, else `configured` (written to `dir` for next
    /// time). A file that disagrees with `configured` wins, with a warning returned.
    pub fn load(dir: Option<&Path>, configured: Vec<GossipKey>) -> Result<(Keyring, Option<String>), String> {
        let path = dir.map(|d| d.join("keyring.json"));
        if let Some(path) = path.as_ref().filter(|p| p.exists()) {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let file: KeyringFile =
                serde_json::from_str(&text).map_err(|e| format!("{}: not a keyring file: {e}", path.display()))?;
            let keys = file
                .keys
                .iter()
                .map(|k| GossipKey::from_base64(k))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: a key is invalid: {e}", path.display()))?;
            let warning = (!configured.is_empty() && configured.first() != keys.first()).then(|| {
                format!(
                    "{} holds the gossip keys (rotated with `cairn keyring`); the configured encrypt key is ignored",
                    path.display()
                )
            });
            return Ok((Keyring { path: path.clone().into(), keys }, warning));
        }
        let keyring = Keyring { path, keys: configured };
        if !keyring.keys.is_empty() {
            keyring.persist()?;
        }
        Ok((keyring, None))
    }

    pub fn keys(&self) -> &[GossipKey] {
        &self.keys
    }

    /// Applies `op`; the keyring is unchanged on error.
    pub fn apply(&mut self, op: &KeyringOp) -> Result<(), String> {
        if self.keys.is_empty() && *op != KeyringOp::List {
            return Err("gossip encryption is not enabled on this agent (set encrypt)".into());
        }
        let parse = |k: &str| GossipKey::from_base64(k).map_err(|e| format!("invalid key: {e}"));
        let mut keys = self.keys.clone();
        match op {
            KeyringOp::List => return Ok(()),
            KeyringOp::Install(k) => {
                let key = parse(k)?;
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
            KeyringOp::Use(k) => {
                let key = parse(k)?;
                let at = keys.iter().position(|x| *x == key).ok_or("key is not installed")?;
                let key = keys.remove(at);
                keys.insert(0, key);
            }
            KeyringOp::Remove(k) => {
                let key = parse(k)?;
                if keys.first() == Some(&key) {
                    return Err("removing the primary key is not allowed".into());
                }
                keys.retain(|x| *x != key);
            }
        }
        let before = std::mem::replace(&mut self.keys, keys);
        if let Err(e) = self.persist() {
            self.keys = before;
            return Err(e);
        }
        Ok(())
    }

    pub fn reply(&self, node: &str, error: Option<String>) -> KeyringReply {
        KeyringReply { node: node.to_string(), keys: self.keys.iter().map(GossipKey::to_base64).collect(), error }
    }

    /// Writes the keyring (temporary file, fsync, rename), 0600: it holds secrets.
    fn persist(&self) -> Result<(), String> {
        let Some(path) = &self.path else { return Ok(()) };
        let file = KeyringFile { keys: self.keys.iter().map(GossipKey::to_base64).collect() };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&text)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)
        };
        write().map_err(|e| format!("cannot write {}: {e}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_steps_persist_and_refuse_what_would_cut_the_agent_off() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (GossipKey::generate(), GossipKey::generate());
        let (mut ring, warning) = Keyring::load(Some(dir.path()), vec![a.clone()]).unwrap();
        assert!(warning.is_none());
        assert!(ring.apply(&KeyringOp::Use(b.to_base64())).unwrap_err().contains("not installed"));
        ring.apply(&KeyringOp::Install(b.to_base64())).unwrap();
        ring.apply(&KeyringOp::Use(b.to_base64())).unwrap();
        assert!(ring.apply(&KeyringOp::Remove(b.to_base64())).unwrap_err().contains("primary"));
        ring.apply(&KeyringOp::Remove(a.to_base64())).unwrap();
        assert_eq!(ring.keys(), std::slice::from_ref(&b));
        assert!(ring.apply(&KeyringOp::Install("nope".into())).unwrap_err().contains("invalid key"));
        // A restart finds the rotated keyring, which wins over the configured key.
        let (ring, warning) = Keyring::load(Some(dir.path()), vec![a]).unwrap();
        assert_eq!(ring.keys(), [b]);
        assert!(warning.unwrap().contains("ignored"));
        let (mut plain, _) = Keyring::load(None, vec![]).unwrap();
        assert!(plain
            .apply(&KeyringOp::Install(GossipKey::generate().to_base64()))
            .unwrap_err()
            .contains("not enabled"));
    }
}
