//! The tokens this agent acts with itself: `default` (requests and DNS queries that present
//! none) and `agent` (the agent's own registrations, which a client agent sends to a server).
//! They come from the config (`acl.tokens`) and can be replaced at run time through
//! `PUT /v1/agent/token/{kind}`; with `acl.enable_token_persistence` those replacements are
//! kept in `<data_dir>/acl-tokens.json` (owner-only) and win over the config at the next
//! start, as in Consul.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

/// The file persisted tokens live in, under the data dir (Consul's name).
pub const PERSISTED_FILE: &str = "acl-tokens.json";

/// A kind of agent token `/v1/agent/token/{kind}` sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    Default,
    Agent,
}

impl TokenKind {
    /// The kind a path segment names; Consul's older `acl_token` and `acl_agent_token`
    /// included.
    pub fn parse(name: &str) -> Option<TokenKind> {
        match name {
            "default" | "acl_token" => Some(TokenKind::Default),
            "agent" | "acl_agent_token" => Some(TokenKind::Agent),
            _ => None,
        }
    }
}

/// The tokens in effect. `None`: not set (the default token falls back to anonymous, the
/// agent token to the default token).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct TokenSet {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    default: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    agent: Option<String>,
}

impl TokenSet {
    fn slot(&mut self, kind: TokenKind) -> &mut Option<String> {
        match kind {
            TokenKind::Default => &mut self.default,
            TokenKind::Agent => &mut self.agent,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
}

/// Where the tokens in effect come from.
#[derive(Default)]
struct Sources {
    /// Set through the API (and persisted): these win over the config, also on reload.
    by_api: TokenSet,
    /// From the config, as last loaded.
    config: TokenSet,
}

pub struct AgentTokens {
    current: ArcSwap<TokenSet>,
    /// Changed, and `current` recomputed from it, under this one lock.
    sources: Mutex<Sources>,
    /// Moves on every change, so what caches a token's rules (DNS) resolves again.
    generation: AtomicU64,
    /// Where API-set tokens are kept, with `enable_token_persistence`.
    persisted: Option<PathBuf>,
}

impl AgentTokens {
    /// Tokens from the config only, none persisted.
    pub fn from_config(default: Option<String>, agent: Option<String>) -> AgentTokens {
        let config = TokenSet { default, agent };
        AgentTokens {
            current: ArcSwap::from_pointee(config.clone()),
            sources: Mutex::new(Sources { by_api: TokenSet::default(), config }),
            generation: AtomicU64::new(0),
            persisted: None,
        }
    }

    /// With `enable_token_persistence`: tokens an earlier run set through the API are read
    /// from `data_dir` and win over the config; later ones are written there.
    pub fn persisted_in(mut self, data_dir: &Path) -> Result<AgentTokens, TokensError> {
        let path = data_dir.join(PERSISTED_FILE);
        let bad = |reason: String| TokensError::File { path: path.clone(), reason };
        match std::fs::read(&path) {
            Ok(bytes) => {
                let saved: TokenSet = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
                self.sources.get_mut().unwrap_or_else(|e| e.into_inner()).by_api = saved;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(bad(e.to_string())),
        }
        self.persisted = Some(path);
        let sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        self.recompute(&sources);
        drop(sources);
        Ok(self)
    }

    /// The token requests that present none act with.
    pub fn default_token(&self) -> Option<String> {
        self.current.load().default.clone()
    }

    /// The token the agent presents for its own registrations: `agent`, else `default`.
    pub fn agent_token(&self) -> Option<String> {
        let current = self.current.load();
        current.agent.clone().or_else(|| current.default.clone())
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Sets `kind` (an empty secret clears it), persisting first when asked to: a token the
    /// API acknowledged is the one the next start uses.
    pub fn set(&self, kind: TokenKind, secret: &str) -> Result<(), TokensError> {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        let mut next = sources.by_api.clone();
        *next.slot(kind) = Some(secret.to_string()).filter(|s| !s.is_empty());
        if let Some(path) = &self.persisted {
            let bytes = serde_json::to_vec(&next)
                .map_err(|e| TokensError::File { path: path.clone(), reason: e.to_string() })?;
            crate::durable_file::replace_file_durably(path, &[&bytes])
                .map_err(|e| TokensError::File { path: path.clone(), reason: e.to_string() })?;
        }
        sources.by_api = next;
        self.recompute(&sources);
        Ok(())
    }

    /// The config's tokens after a reload (API-set ones still win); whether the tokens in
    /// effect changed.
    pub fn reload_config(&self, default: Option<String>, agent: Option<String>) -> bool {
        let mut sources = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        sources.config = TokenSet { default, agent };
        self.recompute(&sources)
    }

    /// Makes `current` what `sources` (locked by the caller) say; whether it changed.
    fn recompute(&self, sources: &Sources) -> bool {
        let (api, config) = (&sources.by_api, &sources.config);
        let next = TokenSet {
            default: api.default.clone().or_else(|| config.default.clone()),
            agent: api.agent.clone().or_else(|| config.agent.clone()),
        };
        if **self.current.load() == next {
            return false;
        }
        self.current.store(std::sync::Arc::new(next));
        self.generation.fetch_add(1, Ordering::AcqRel);
        true
    }
}

impl Default for AgentTokens {
    /// No tokens set.
    fn default() -> Self {
        AgentTokens::from_config(None, None)
    }
}

impl std::fmt::Debug for AgentTokens {
    // Never the secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.load();
        f.debug_struct("AgentTokens")
            .field("default", &current.default.is_some())
            .field("agent", &current.agent.is_some())
            .field("persisted", &self.persisted)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_tokens_win_over_the_config_and_survive_a_restart_when_persisted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = AgentTokens::from_config(Some("cfg-default".into()), None).persisted_in(dir.path()).expect("load");
        assert_eq!(tokens.agent_token().as_deref(), Some("cfg-default"), "agent falls back to default");
        let before = tokens.generation();
        tokens.set(TokenKind::Agent, "api-agent").expect("set");
        assert!(tokens.generation() > before);
        tokens.reload_config(Some("cfg-default-2".into()), Some("cfg-agent".into()));
        assert_eq!(tokens.agent_token().as_deref(), Some("api-agent"));
        assert_eq!(tokens.default_token().as_deref(), Some("cfg-default-2"));

        let restarted =
            AgentTokens::from_config(None, Some("cfg-agent".into())).persisted_in(dir.path()).expect("reload");
        assert_eq!(restarted.agent_token().as_deref(), Some("api-agent"));
        let path = dir.path().join(PERSISTED_FILE);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "secrets are owner-only");

        restarted.set(TokenKind::Agent, "").expect("clear");
        assert_eq!(restarted.agent_token().as_deref(), Some("cfg-agent"), "cleared: the config's again");

        std::fs::write(&path, b"{not json").expect("corrupt");
        let e = AgentTokens::from_config(None, None).persisted_in(dir.path()).expect_err("corrupt file");
        assert!(e.to_string().contains(PERSISTED_FILE), "{e}");
    }

    #[test]
    fn without_persistence_nothing_is_written() {
        let tokens = AgentTokens::from_config(None, None);
        tokens.set(TokenKind::Default, "d").expect("set");
        assert_eq!(tokens.default_token().as_deref(), Some("d"));
        assert_eq!(TokenKind::parse("acl_agent_token"), Some(TokenKind::Agent));
        assert_eq!(TokenKind::parse("replication"), None);
    }
}
