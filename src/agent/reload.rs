//! Config reload (SIGHUP, `cairn reload`, `PUT /v1/agent/reload`): re-reads the same config
//! files and flags, and applies what can change at run time — config-file services and
//! checks, `log_level`, `dns_config`, `recursors`, `watches`, the static zones, the agent's
//! ACL tokens (`acl.tokens.default` and `agent`; ones set through the API still win), and the
//! TLS settings and files of HTTPS and the server RPC (a renewed certificate is read again even
//! when the config is unchanged). Any other changed key is logged as needing a restart. A config that
//! fails to load, or whose TLS files do not, changes nothing.

use std::sync::{Arc, Mutex};

use crate::checks::LocalAgent;
use crate::config::{AgentFlags, Config, LogLevel};
use crate::dns::DnsService;
use crate::tls::{RpcTls, TlsServer};

use super::watches::Watches;

/// Applies a new log level to the running subscriber.
pub type SetLogLevel = Box<dyn Fn(LogLevel) + Send + Sync>;

/// The TLS a reload reads again.
pub struct Tls {
    /// The HTTPS listener's, when it runs.
    pub https: Option<Arc<TlsServer>>,
    /// The server RPC's, when it has any.
    pub rpc: Option<Arc<RpcTls>>,
}

pub struct Reloader {
    flags: AgentFlags,
    /// The config in effect: reloadable keys from the last reload, the others from start.
    running: Mutex<Config>,
    dns: Arc<DnsService>,
    local: LocalAgent,
    watches: Mutex<Watches>,
    tls: Tls,
    set_log_level: SetLogLevel,
    agent_tokens: Arc<crate::acl::tokens::AgentTokens>,
}

/// What a reload changes in the running agent.
pub struct Reloadable {
    pub dns: Arc<DnsService>,
    pub local: LocalAgent,
    pub watches: Watches,
    pub tls: Tls,
    pub set_log_level: SetLogLevel,
    pub agent_tokens: Arc<crate::acl::tokens::AgentTokens>,
}

impl Reloader {
    pub fn new(flags: AgentFlags, config: Config, parts: Reloadable) -> Self {
        let Reloadable { dns, local, watches, tls, set_log_level, agent_tokens } = parts;
        Reloader {
            flags,
            running: Mutex::new(config),
            dns,
            local,
            watches: Mutex::new(watches),
            tls,
            set_log_level,
            agent_tokens,
        }
    }

    /// Reloads; blocking work (reading files, parsing zones), so run it off the async
    /// workers. The error is one line naming the file and key at fault.
    pub fn reload(&self) -> Result<(), String> {
        let (mut new, warnings) = Config::load(&self.flags).map_err(|e| e.to_string())?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        for key in restart_only_changes(&running, &new) {
            tracing::warn!(key, "config key changed; restart the agent to apply it");
        }
        keep_restart_only(&running, &mut new);
        let dns_settings = crate::dns::settings_from_config(&new).map_err(|e| e.to_string())?;
        // Every file read before anything changes: a bad certificate leaves all as it was.
        let https = self.tls.https.as_ref().map(|tls| tls.prepare(&new.tls_https)).transpose();
        let https = https.map_err(|e| e.to_string())?;
        let rpc = self.tls.rpc.as_ref().map(|tls| tls.prepare(&new.tls_rpc)).transpose().map_err(|e| e.to_string())?;
        if let (Some(tls), Some(config)) = (&self.tls.https, https) {
            tls.install(config);
        }
        if let (Some(tls), Some(configs)) = (&self.tls.rpc, rpc) {
            tls.install(configs);
        }
        if new.log_level != running.log_level {
            (self.set_log_level)(new.log_level);
        }
        if new.dns_config != running.dns_config || new.recursors != running.recursors {
            self.dns.reconfigure(dns_settings);
        }
        if self.agent_tokens.reload_config(new.acl.default_token.clone(), new.acl.agent_token.clone()) {
            self.local.resync();
        }
        let zones = self.dns.reload_zones();
        self.local.replace_config_services(new.services.clone());
        self.watches.lock().unwrap_or_else(|e| e.into_inner()).replace(&new.watches);
        tracing::info!(services = new.services.len(), zones, watches = new.watches.len(), "config reloaded");
        *running = new;
        Ok(())
    }
}

/// Keys a reload does not apply that differ between `old` and `new`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |key, differs: bool| {
        if differs {
            changed.push(key);
        }
    };
    check("datacenter", old.datacenter != new.datacenter);
    check("data_dir", old.data_dir != new.data_dir);
    check("node_name", old.node_name != new.node_name);
    check("node_id", old.node_id != new.node_id);
    check("server", old.server != new.server);
    check("bootstrap_expect", old.bootstrap_expect != new.bootstrap_expect);
    check("bind_addr", old.bind_addr != new.bind_addr);
    check("advertise_addr", old.advertise_addr != new.advertise_addr);
    check("client_addr", old.client_addr != new.client_addr);
    check("ports", old.ports != new.ports);
    check("addresses", old.addresses != new.addresses);
    check("domain", old.domain != new.domain);
    check("alt_domain", old.alt_domain != new.alt_domain);
    check("limits", old.limits != new.limits);
    check("lmdb_map_size_mb", old.lmdb_map_size_bytes != new.lmdb_map_size_bytes);
    check("zones_dir", old.zones_dir != new.zones_dir);
    check("check_update_interval", old.check_update_interval != new.check_update_interval);
    check("anti_entropy_interval", old.anti_entropy_interval != new.anti_entropy_interval);
    let tokenless = |c: &Config| crate::acl::AclConfig { default_token: None, agent_token: None, ..c.acl.clone() };
    check("acl", tokenless(old) != tokenless(new));
    changed
}

/// Puts the running values of restart-only keys back into `new`, so they keep warning until
/// a restart and the DNS settings keep the domain they serve.
fn keep_restart_only(old: &Config, new: &mut Config) {
    let reloadable = (
        std::mem::take(&mut new.services),
        new.log_level,
        new.dns_config.clone(),
        std::mem::take(&mut new.recursors),
        new.enable_local_script_checks,
        std::mem::take(&mut new.watches),
        std::mem::take(&mut new.tls_https),
        std::mem::take(&mut new.tls_rpc),
        new.acl.default_token.take(),
        new.acl.agent_token.take(),
    );
    *new = old.clone();
    (
        new.services,
        new.log_level,
        new.dns_config,
        new.recursors,
        new.enable_local_script_checks,
        new.watches,
        new.tls_https,
        new.tls_rpc,
        new.acl.default_token,
        new.acl.agent_token,
    ) = reloadable;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        let flags = AgentFlags { dev: true, ..Default::default() };
        Config::from_sources(&[("a.json".into(), json.into())], &flags).expect("valid").0
    }

    #[test]
    fn only_restart_only_keys_are_reported_and_kept() {
        let old = config(r#"{"datacenter": "dc1", "log_level": "info"}"#);
        let mut new = config(r#"{"datacenter": "dc2", "log_level": "debug", "recursors": ["1.1.1.1"]}"#);
        assert_eq!(restart_only_changes(&old, &new), ["datacenter"]);
        keep_restart_only(&old, &mut new);
        assert_eq!(new.datacenter, "dc1");
        assert_eq!(new.log_level, LogLevel::Debug);
        assert_eq!(new.recursors.len(), 1);
    }

    #[test]
    fn acl_tokens_reload_but_the_rest_of_acl_needs_a_restart() {
        let old = config(r#"{"acl": {"enabled": true, "tokens": {"default": "a"}}}"#);
        let mut new = config(r#"{"acl": {"enabled": true, "tokens": {"default": "b", "agent": "c"}}}"#);
        assert!(restart_only_changes(&old, &new).is_empty());
        keep_restart_only(&old, &mut new);
        assert_eq!((new.acl.default_token.as_deref(), new.acl.agent_token.as_deref()), (Some("b"), Some("c")));
        let mut new = config(r#"{"acl": {"enabled": false, "default_policy": "deny", "tokens": {"default": "b"}}}"#);
        assert_eq!(restart_only_changes(&old, &new), ["acl"]);
        keep_restart_only(&old, &mut new);
        assert!(new.acl.enabled && new.acl.default_allow, "kept until a restart");
        assert_eq!(new.acl.default_token.as_deref(), Some("b"));
    }
}
