//! The agent's local services and checks with their current status: the truth for this node
//! that anti-entropy copies into the catalog. Pure data and rules (thresholds, TTL expiry,
//! deregister-after, output deferral); no I/O and no clock of its own — callers pass `now`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::model::acl::Secret;
use crate::model::agent::{CheckKind, CheckSpec, ServiceSpec};
use crate::model::CheckStatus;

/// Output kept per check (Consul's `check_output_max_size` default).
pub const OUTPUT_BYTES_MAX: usize = 4096;

/// Where a registration came from: config files are reloaded as a set; API registrations
/// are persisted in the data dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Source {
    Api,
    Config,
}

#[derive(Debug, Clone)]
pub struct LocalService {
    pub spec: ServiceSpec,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct LocalCheck {
    /// Shared with the check's runner task (one copy per check, however many readers).
    pub spec: Arc<CheckSpec>,
    pub source: Source,
    /// Distinguishes this registration from an earlier one with the same ID, so a runner of
    /// the old definition cannot report into the new one.
    pub generation: u64,
    pub status: CheckStatus,
    pub output: String,
    successes: u32,
    failures: u32,
    pub critical_since: Option<Instant>,
    pub ttl_deadline: Option<Instant>,
    /// Set when only the output changed: it reaches the catalog at this time, not before.
    pub output_due: Option<Instant>,
}

/// What anti-entropy has to look at next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Dirty {
    /// Compare everything (periodic sync, or after a failed write).
    pub full: bool,
    pub services: BTreeSet<String>,
    pub checks: BTreeSet<String>,
}

impl Dirty {
    pub fn is_empty(&self) -> bool {
        !self.full && self.services.is_empty() && self.checks.is_empty()
    }
}

/// What a probe (or the application, for TTL checks) observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub status: CheckStatus,
    pub output: String,
}

/// Tokens of removed services and checks, kept until the catalog no longer has them, so
/// their deregistration is made with the token that registered them (removing a service
/// needs write on it; the agent token may not have that). In memory only: after a restart
/// a pending deregistration uses the agent token.
#[derive(Debug, Default, Clone)]
pub struct RemovedTokens {
    pub services: BTreeMap<String, Secret>,
    pub checks: BTreeMap<String, Secret>,
}

/// Removed entries whose token is remembered, at most (per kind); beyond, their
/// deregistration uses the agent token.
pub const REMOVED_TOKENS_MAX: usize = 4096;

impl RemovedTokens {
    fn remember(map: &mut BTreeMap<String, Secret>, id: &str, token: Option<Secret>) {
        match token {
            Some(token) if map.len() < REMOVED_TOKENS_MAX || map.contains_key(id) => {
                map.insert(id.to_string(), token);
            }
            _ => {
                map.remove(id);
            }
        }
    }
}

#[derive(Debug, Default)]
pub struct LocalState {
    pub services: BTreeMap<String, LocalService>,
    pub checks: BTreeMap<String, LocalCheck>,
    pub removed_tokens: RemovedTokens,
    pub dirty: Dirty,
    next_generation: u64,
    /// Bumped on every change the agent API shows (blocking `?hash=` reads wait on it).
    pub version: u64,
}

/// Why a change to the local state was refused; the API answers 404 or 400 with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LocalError {
    #[error("Unknown service ID {0:?}")]
    UnknownService(String),
    #[error("Unknown check ID {0:?}")]
    UnknownCheck(String),
    /// A check registered for a service this agent does not have (Consul: 404).
    #[error("ServiceID {0:?} does not exist")]
    NoSuchService(String),
    #[error("{0}")]
    Invalid(String),
    /// Applied in memory but not saved to the data dir.
    #[error("could not save the agent's local state: {0}")]
    NotSaved(String),
}

/// Cuts `output` to [`OUTPUT_BYTES_MAX`] on a character boundary.
pub fn cut_output(mut output: String) -> String {
    if output.len() > OUTPUT_BYTES_MAX {
        let mut end = OUTPUT_BYTES_MAX;
        while !output.is_char_boundary(end) {
            end -= 1;
        }
        output.truncate(end);
    }
    output
}

impl LocalState {
    fn changed(&mut self) {
        self.version += 1;
    }

    /// Adds or replaces a service and its checks. With `replace_checks`, the service's other
    /// checks are removed (`?replace-existing-checks`). Returns the IDs of the checks added,
    /// changed or removed (whose runners may have to change).
    pub fn add_service(
        &mut self,
        service: ServiceSpec,
        checks: Vec<CheckSpec>,
        source: Source,
        replace_checks: bool,
        now: Instant,
    ) -> Vec<String> {
        let id = service.id.clone();
        let mut affected = Vec::new();
        if replace_checks {
            let keep: BTreeSet<&str> = checks.iter().map(|c| c.id.as_str()).collect();
            let stale: Vec<String> = self
                .checks
                .values()
                .filter(|c| c.spec.service_id == id && !keep.contains(c.spec.id.as_str()))
                .filter(|c| c.spec.kind != CheckKind::Maintenance)
                .map(|c| c.spec.id.clone())
                .collect();
            for check in &stale {
                self.remove_check(check);
            }
            affected.extend(stale);
        }
        self.removed_tokens.services.remove(&id);
        self.services.insert(id.clone(), LocalService { spec: service, source });
        self.dirty.services.insert(id);
        self.changed();
        affected.extend(checks.into_iter().filter_map(|c| self.add_check(c, source, now)));
        affected
    }

    /// Adds or replaces a check; returns its ID when its runner must (re)start (a new or
    /// changed definition). The status of an unchanged definition is kept.
    pub fn add_check(&mut self, spec: CheckSpec, source: Source, now: Instant) -> Option<String> {
        if let Some(old) = self.checks.get_mut(&spec.id) {
            if *old.spec == spec {
                old.source = source;
                return None;
            }
        }
        self.next_generation += 1;
        let id = spec.id.clone();
        let ttl_deadline = match &spec.kind {
            CheckKind::Ttl { ttl } => Some(now + *ttl),
            _ => None,
        };
        let status = spec.initial_status;
        self.removed_tokens.checks.remove(&id);
        let check = LocalCheck {
            source,
            generation: self.next_generation,
            status,
            output: String::new(),
            successes: 0,
            failures: 0,
            critical_since: (status == CheckStatus::Critical).then_some(now),
            ttl_deadline,
            output_due: None,
            spec: Arc::new(spec),
        };
        self.checks.insert(id.clone(), check);
        self.dirty.checks.insert(id.clone());
        self.changed();
        Some(id)
    }

    /// Restores a status remembered from before a restart, so a restart does not flap the
    /// instance out of DNS until its first run.
    pub fn restore_status(&mut self, id: &str, status: CheckStatus, output: String, now: Instant) {
        if let Some(check) = self.checks.get_mut(id) {
            if check.spec.kind != CheckKind::Maintenance {
                check.status = status;
                check.output = output;
                check.critical_since = (status == CheckStatus::Critical).then_some(now);
            }
        }
    }

    /// Removes a service and its checks. Returns the removed check IDs (their runners stop).
    pub fn remove_service(&mut self, id: &str) -> Result<Vec<String>, LocalError> {
        let removed = self.services.remove(id).ok_or_else(|| LocalError::UnknownService(id.to_string()))?;
        RemovedTokens::remember(&mut self.removed_tokens.services, id, removed.spec.token);
        let checks: Vec<String> =
            self.checks.values().filter(|c| c.spec.service_id == id).map(|c| c.spec.id.clone()).collect();
        for check in &checks {
            self.remove_check(check);
        }
        self.dirty.services.insert(id.to_string());
        self.changed();
        Ok(checks)
    }

    pub fn remove_check(&mut self, id: &str) -> bool {
        let removed = self.checks.remove(id);
        if let Some(check) = &removed {
            RemovedTokens::remember(&mut self.removed_tokens.checks, id, check.spec.token.clone());
            self.dirty.checks.insert(id.to_string());
            self.changed();
        }
        removed.is_some()
    }

    /// Records a probe result through the check's thresholds (Consul's rules): successes
    /// count toward `SuccessBeforePassing`, failures toward `FailuresBeforeWarning` and
    /// `FailuresBeforeCritical`; below a threshold the status stays as it was. Returns
    /// whether the status changed. A result from an older `generation` is ignored. An
    /// output-only change reaches the catalog after `output_delay`.
    pub fn observe(
        &mut self,
        id: &str,
        generation: u64,
        seen: Observation,
        output_delay: Duration,
        now: Instant,
    ) -> bool {
        let Some(check) = self.checks.get_mut(id) else { return false };
        if check.generation != generation {
            return false;
        }
        let spec = &check.spec;
        let next = if seen.status == CheckStatus::Critical {
            check.failures = check.failures.saturating_add(1);
            check.successes = 0;
            if check.failures >= spec.failures_before_critical {
                Some(CheckStatus::Critical)
            } else if check.failures >= spec.failures_before_warning {
                Some(CheckStatus::Warning)
            } else {
                None
            }
        } else {
            check.successes = check.successes.saturating_add(1);
            check.failures = 0;
            (check.successes >= spec.success_before_passing).then_some(seen.status)
        };
        let Some(status) = next else { return false };
        let status_changed = self.set(id, status, seen.output, now);
        if !status_changed {
            self.defer_output(id, output_delay, now);
        }
        status_changed
    }

    /// Sets a check's status and output now (TTL updates, maintenance, expiry). A status
    /// change is synced at once; an output-only change waits for `output_due`.
    fn set(&mut self, id: &str, status: CheckStatus, output: String, now: Instant) -> bool {
        let Some(check) = self.checks.get_mut(id) else { return false };
        let output = cut_output(output);
        let status_changed = check.status != status;
        if !status_changed && check.output == output {
            return false;
        }
        if status_changed {
            check.critical_since = (status == CheckStatus::Critical).then_some(now);
            check.output_due = None;
            self.dirty.checks.insert(id.to_string());
        }
        check.status = status;
        check.output = output;
        self.changed();
        status_changed
    }

    /// `PUT /v1/agent/check/pass|warn|fail|update`: only TTL checks take updates; each one
    /// also restarts the TTL.
    pub fn update_ttl(
        &mut self,
        id: &str,
        status: CheckStatus,
        output: String,
        output_delay: Duration,
        now: Instant,
    ) -> Result<(), LocalError> {
        let check = self.checks.get_mut(id).ok_or_else(|| LocalError::UnknownCheck(id.to_string()))?;
        let CheckKind::Ttl { ttl } = check.spec.kind else {
            return Err(LocalError::Invalid(format!("CheckID {id:?} does not have an associated TTL")));
        };
        check.ttl_deadline = Some(now + ttl);
        let status_changed = self.set(id, status, output, now);
        if !status_changed {
            self.defer_output(id, output_delay, now);
        }
        Ok(())
    }

    /// Schedules an output-only change for the catalog, unless one is already scheduled.
    pub fn defer_output(&mut self, id: &str, delay: Duration, now: Instant) {
        if let Some(check) = self.checks.get_mut(id) {
            if check.output_due.is_none() && !self.dirty.checks.contains(id) {
                check.output_due = Some(now + delay);
            }
        }
    }

    /// Applies what time makes happen: TTLs expire, deferred outputs fall due, services
    /// critical for longer than their `DeregisterCriticalServiceAfter` go. Returns the
    /// services removed, each with its removed checks.
    pub fn tick(&mut self, now: Instant) -> Vec<(String, Vec<String>)> {
        let mut expired = Vec::new();
        let mut reap = BTreeSet::new();
        for check in self.checks.values_mut() {
            if check.ttl_deadline.is_some_and(|d| d <= now) {
                check.ttl_deadline = None;
                expired.push(check.spec.id.clone());
            }
            if check.output_due.is_some_and(|d| d <= now) {
                check.output_due = None;
                self.dirty.checks.insert(check.spec.id.clone());
            }
            if let (Some(after), Some(since)) = (check.spec.deregister_critical_after, check.critical_since) {
                if !check.spec.service_id.is_empty() && since + after <= now {
                    reap.insert(check.spec.service_id.clone());
                }
            }
        }
        for id in expired {
            let last = self.checks.get(&id).map(|c| c.output.clone()).unwrap_or_default();
            let output = if last.is_empty() {
                "TTL expired".to_string()
            } else {
                format!("TTL expired (last output before timeout follows): {last}")
            };
            if !self.set(&id, CheckStatus::Critical, output, now) {
                // Already critical: the catalog still gets the "TTL expired" output now.
                self.dirty.checks.insert(id);
            }
        }
        reap.into_iter().filter_map(|id| self.remove_service(&id).ok().map(|checks| (id, checks))).collect()
    }

    pub fn take_dirty(&mut self) -> Dirty {
        std::mem::take(&mut self.dirty)
    }

    pub fn mark_all_dirty(&mut self) {
        self.dirty.full = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::agent::{decode_service, ScriptPolicy, Strictness};

    fn state_with(check: serde_json::Value) -> (LocalState, String, u64, Instant) {
        let reg = decode_service(
            &serde_json::json!({"Name": "web", "Check": check}),
            Strictness::Lenient,
            ScriptPolicy::Refused,
        )
        .expect("valid");
        let now = Instant::now();
        let mut state = LocalState::default();
        let started = state.add_service(reg.service, reg.checks, Source::Api, false, now);
        let id = started[0].clone();
        let generation = state.checks[&id].generation;
        (state, id, generation, now)
    }

    fn seen(status: CheckStatus) -> Observation {
        Observation { status, output: status.as_str().to_string() }
    }

    #[test]
    fn thresholds_hold_the_status_until_reached() {
        let (mut s, id, g, now) = state_with(serde_json::json!({
            "TCP": "h:1", "Interval": "1s", "Status": "passing",
            "SuccessBeforePassing": 2, "FailuresBeforeWarning": 1, "FailuresBeforeCritical": 3
        }));
        let mut run = |status| {
            s.observe(&id, g, seen(status), Duration::ZERO, now);
            s.checks[&id].status
        };
        assert_eq!(run(CheckStatus::Critical), CheckStatus::Warning, "1 failure: warning");
        assert_eq!(run(CheckStatus::Critical), CheckStatus::Warning);
        assert_eq!(run(CheckStatus::Critical), CheckStatus::Critical, "3 failures: critical");
        assert_eq!(run(CheckStatus::Passing), CheckStatus::Critical, "1 success is not enough");
        assert_eq!(run(CheckStatus::Passing), CheckStatus::Passing);
    }

    #[test]
    fn results_of_a_replaced_definition_are_ignored() {
        let (mut s, id, g, now) = state_with(serde_json::json!({"TCP": "h:1", "Interval": "1s"}));
        assert!(s.observe(&id, g, seen(CheckStatus::Passing), Duration::ZERO, now));
        assert!(!s.observe(&id, g + 1, seen(CheckStatus::Critical), Duration::ZERO, now));
        assert_eq!(s.checks[&id].status, CheckStatus::Passing);
    }

    #[test]
    fn ttl_expires_and_output_only_changes_wait() {
        let (mut s, id, _, now) = state_with(serde_json::json!({"TTL": "10s"}));
        s.take_dirty();
        let delay = Duration::from_secs(300);
        s.update_ttl(&id, CheckStatus::Passing, "ok".into(), delay, now).expect("ttl check");
        assert!(s.take_dirty().checks.contains(&id), "a status change syncs at once");
        s.update_ttl(&id, CheckStatus::Passing, "ok 2".into(), delay, now).expect("ttl check");
        assert!(s.take_dirty().is_empty(), "output alone waits");
        s.tick(now + delay);
        assert!(s.take_dirty().checks.contains(&id), "then falls due");
        s.update_ttl(&id, CheckStatus::Passing, "ok".into(), delay, now + delay).expect("ttl");
        s.tick(now + delay + Duration::from_secs(10));
        assert_eq!(s.checks[&id].status, CheckStatus::Critical);
        assert!(s.checks[&id].output.starts_with("TTL expired"), "{}", s.checks[&id].output);
        assert!(s.update_ttl("nope", CheckStatus::Passing, String::new(), delay, now).is_err());
    }

    #[test]
    fn critical_services_are_reaped_after_their_deadline() {
        let (mut s, _, _, now) = state_with(serde_json::json!({"TTL": "60s", "DeregisterCriticalServiceAfter": "1s"}));
        assert!(s.tick(now + Duration::from_millis(900)).is_empty());
        assert_eq!(s.tick(now + Duration::from_secs(1)), [("web".to_string(), vec!["service:web".to_string()])]);
        assert!(s.services.is_empty() && s.checks.is_empty());
    }

    #[test]
    fn output_is_cut_on_a_character_boundary() {
        let long = "é".repeat(OUTPUT_BYTES_MAX);
        let cut = cut_output(long);
        assert!(cut.len() <= OUTPUT_BYTES_MAX && cut.len() >= OUTPUT_BYTES_MAX - 1);
    }
}
