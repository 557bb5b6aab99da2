//! Anti-entropy: makes the catalog's entries for this node match the local state.
//!
//! Changes are pushed at once: every change marks the service or check dirty and wakes this
//! task, which compares just those entries with the catalog and writes the difference. Every
//! `anti_entropy_interval` it compares everything, which repairs drift (an entry deleted
//! behind the agent's back comes back; one the agent no longer has goes away). An unchanged
//! entry is never written, so a steady state makes no Raft writes.
//!
//! The server's own `consul` service and `serfHealth` check belong to the agent's
//! self-registration: written once at start (and again only if the node vanished), never
//! removed here.
//!
//! ACL tokens (a client agent's writes are checked by the server): a service, and its checks,
//! are written with the token it was registered with, a node-level check with its own; the
//! node itself, and anything registered without a token, with the agent token. A removed
//! entry is deregistered with the token it had.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::state::{Dirty, LocalCheck, LocalService, RemovedTokens};
use super::Inner;
use crate::cluster::{Cluster, WriteError};
use crate::model::acl::Secret;
use crate::model::{
    CheckDefinition, Command, CommandResult, DeregisterRequest, HealthCheck, Node, RegisterRequest, Service,
    ServiceDefinition,
};
use crate::store::{Store, StoreError, Topic};

/// Catalog writes one sync keeps in flight (they share Raft entries in the proposer).
pub const WRITES_IN_FLIGHT_MAX: usize = 64;
/// Pause after a failed sync before trying again (with a full comparison).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How long to wait for a leader before the first self-registration attempt gives up.
const LEADER_WAIT: Duration = Duration::from_secs(30);
use crate::model::agent::{RESERVED_CHECK_ID as SELF_CHECK_ID, RESERVED_SERVICE_ID as SELF_SERVICE_ID};

pub(super) async fn run(inner: Arc<Inner>, cluster: Cluster, store: Store, self_registration: RegisterRequest) {
    let shutdown = inner.shutdown.clone();
    let ready = async {
        if cluster.is_server() {
            cluster.wait_for_leader(LEADER_WAIT).await
        } else {
            cluster.wait_for_servers(LEADER_WAIT).await
        }
    };
    if !tokio::select! {
        ok = ready => ok,
        _ = shutdown.cancelled() => return,
    } {
        tracing::warn!("no leader elected (or no server known) yet; catalog sync will keep retrying");
    }
    match cluster.write(Command::Register(Box::new(self_registration.clone()))).await {
        Ok(CommandResult::Rejected(why)) => {
            tracing::warn!(reason = %why, "the catalog refused this agent's node registration (acl.tokens.agent?); will retry")
        }
        Ok(_) if cluster.is_server() => {
            tracing::info!(node = %self_registration.node, "registered this server in the catalog")
        }
        Ok(_) => {
            tracing::info!(node = %self_registration.node, "registered this client in the catalog through a server")
        }
        Err(WriteError::Stopped(_)) => return,
        Err(e) => tracing::warn!(error = %e, "could not register this server in the catalog yet"),
    }
    let every = inner.config.anti_entropy_interval;
    let mut next_full = tokio::time::Instant::now() + every;
    // A restored catalog may lack this agent's services: compare everything at once.
    let mut replaced = store.watches().subscribe(Topic::Replaced);
    loop {
        // Checked every turn, not only when idle: steady churn must not starve the full
        // comparison that repairs drift.
        if tokio::time::Instant::now() >= next_full {
            inner.lock().mark_all_dirty();
            next_full = tokio::time::Instant::now() + every;
        }
        let dirty = inner.lock().take_dirty();
        if dirty.is_empty() {
            tokio::select! {
                _ = inner.sync_wake.notified() => {}
                _ = replaced.changed() => inner.lock().mark_all_dirty(),
                _ = tokio::time::sleep_until(next_full) => {}
                _ = shutdown.cancelled() => return,
            }
            continue;
        }
        // After a failure: when to compare everything again, and whether a local change (or
        // new agent tokens) should not wait for it.
        let retry = match sync_once(&inner, &cluster, &store, &self_registration, &dirty).await {
            Ok(writes) => {
                if writes > 0 {
                    tracing::debug!(writes, full = dirty.full, "catalog synced");
                }
                None
            }
            // Retrying soon cannot help: only new tokens or rules can.
            Err(SyncError::Write(WriteError::PermissionDenied(why))) => {
                tracing::warn!(
                    reason = %why,
                    "catalog sync refused by ACLs (acl.tokens.agent?); retrying at the next anti-entropy pass or when this agent's tokens or services change"
                );
                Some((next_full, true))
            }
            Err(e) => {
                tracing::warn!(error = %e, "catalog sync failed; retrying");
                Some((tokio::time::Instant::now() + RETRY_AFTER, false))
            }
        };
        if let Some((until, on_change)) = retry {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = inner.sync_wake.notified(), if on_change => {}
                _ = shutdown.cancelled() => return,
            }
            inner.lock().mark_all_dirty();
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The catalog's current entries for this node, as far as a sync needs them.
#[derive(Debug, Default)]
struct CatalogView {
    node: Option<Node>,
    services: BTreeMap<String, Service>,
    checks: BTreeMap<String, HealthCheck>,
}

/// The local entries a sync needs, copied out of the lock.
#[derive(Debug, Default)]
struct LocalView {
    services: BTreeMap<String, LocalService>,
    checks: BTreeMap<String, LocalCheck>,
    /// Of the removed entries in scope.
    removed: RemovedTokens,
}

/// A catalog write and the token it is made with (`None`: the agent token).
#[derive(Debug)]
struct PlannedWrite {
    command: Command,
    token: Option<Secret>,
}

async fn sync_once(
    inner: &Inner,
    cluster: &Cluster,
    store: &Store,
    self_registration: &RegisterRequest,
    dirty: &Dirty,
) -> Result<usize, SyncError> {
    let node = self_registration.node.as_str();
    let (local, scope) = {
        let state = inner.lock();
        if dirty.full {
            let local = LocalView {
                services: state.services.clone(),
                checks: state.checks.clone(),
                removed: state.removed_tokens.clone(),
            };
            (local, None)
        } else {
            let mut services = dirty.services.clone();
            let mut local = LocalView::default();
            for id in &dirty.checks {
                if let Some(check) = state.checks.get(id) {
                    if !check.spec.service_id.is_empty() {
                        services.insert(check.spec.service_id.clone());
                    }
                    local.checks.insert(id.clone(), check.clone());
                }
            }
            for id in &services {
                if let Some(service) = state.services.get(id) {
                    local.services.insert(id.clone(), service.clone());
                }
                if let Some(token) = state.removed_tokens.services.get(id) {
                    local.removed.services.insert(id.clone(), token.clone());
                }
            }
            for id in &dirty.checks {
                if let Some(token) = state.removed_tokens.checks.get(id) {
                    local.removed.checks.insert(id.clone(), token.clone());
                }
            }
            (local, Some((services, dirty.checks.clone())))
        }
    };
    let catalog = if cluster.is_server() {
        let view = store.read()?;
        match &scope {
            None => CatalogView {
                node: view.node(node)?,
                services: view.node_services(node)?.into_iter().map(|s| (s.id.clone(), s)).collect(),
                checks: view.node_checks(node)?.into_iter().map(|c| (c.check_id.clone(), c)).collect(),
            },
            Some((services, checks)) => {
                let mut catalog = CatalogView { node: view.node(node)?, ..Default::default() };
                for id in services {
                    if let Some(s) = view.service(node, id)? {
                        catalog.services.insert(id.clone(), s);
                    }
                }
                for id in checks {
                    if let Some(c) = view.check(node, id)? {
                        catalog.checks.insert(id.clone(), c);
                    }
                }
                catalog
            }
        }
    } else {
        // A client agent holds no catalog: a server reads this node's entries, and a scoped
        // sync keeps only the ones in scope (the rest are not compared).
        let remote = cluster.node_catalog(node).await?;
        let in_scope = |service: &str, check: Option<&str>| match &scope {
            None => true,
            Some((services, checks)) => match check {
                Some(id) => checks.contains(id),
                None => services.contains(service),
            },
        };
        CatalogView {
            node: remote.node,
            services: remote
                .services
                .into_iter()
                .filter(|s| in_scope(&s.id, None))
                .map(|s| (s.id.clone(), s))
                .collect(),
            checks: remote
                .checks
                .into_iter()
                .filter(|c| in_scope("", Some(&c.check_id)))
                .map(|c| (c.check_id.clone(), c))
                .collect(),
        }
    };
    forget_deregistered(inner, &local.removed, &catalog);
    let (first, rest) = plan(self_registration, &local, &catalog, scope.is_none());
    let mut writes = 0;
    if let Some(command) = first {
        writes += 1;
        report(cluster.write(command).await?);
    }
    let mut in_flight = JoinSet::new();
    let mut result = Ok(());
    for PlannedWrite { command, token } in rest {
        writes += 1;
        if in_flight.len() >= WRITES_IN_FLIGHT_MAX {
            result = result.and(collect_one(&mut in_flight).await);
        }
        let cluster = cluster.clone();
        in_flight.spawn(async move { cluster.write_as(command, token).await });
    }
    while !in_flight.is_empty() {
        result = result.and(collect_one(&mut in_flight).await);
    }
    result.map(|()| writes)
}

async fn collect_one(in_flight: &mut JoinSet<Result<CommandResult, WriteError>>) -> Result<(), SyncError> {
    match in_flight.join_next().await {
        Some(Ok(written)) => {
            report(written?);
            Ok(())
        }
        Some(Err(e)) => Err(SyncError::Write(WriteError::Stopped(e.to_string()))),
        None => Ok(()),
    }
}

/// A rejected command is the catalog refusing this entry (it would be refused again):
/// logged, not retried.
/// Removed entries the catalog no longer has need their token no more.
fn forget_deregistered(inner: &Inner, removed: &RemovedTokens, catalog: &CatalogView) {
    let services: Vec<&String> = removed.services.keys().filter(|id| !catalog.services.contains_key(*id)).collect();
    let checks: Vec<&String> = removed.checks.keys().filter(|id| !catalog.checks.contains_key(*id)).collect();
    if services.is_empty() && checks.is_empty() {
        return;
    }
    // Only the token seen: one removed again meanwhile keeps its new token.
    let mut state = inner.lock();
    for id in services {
        if state.removed_tokens.services.get(id) == removed.services.get(id) {
            state.removed_tokens.services.remove(id);
        }
    }
    for id in checks {
        if state.removed_tokens.checks.get(id) == removed.checks.get(id) {
            state.removed_tokens.checks.remove(id);
        }
    }
}

fn report(result: CommandResult) {
    if let CommandResult::Rejected(why) = result {
        tracing::warn!(reason = %why, "the catalog refused a local service or check");
    }
}

/// The commands that make the catalog match the local entries in scope: the node's
/// registration first when it must be (re)written (with the agent token), then the rest in
/// any order, each with its token.
fn plan(
    self_registration: &RegisterRequest,
    local: &LocalView,
    catalog: &CatalogView,
    full: bool,
) -> (Option<Command>, Vec<PlannedWrite>) {
    let node_missing = catalog.node.is_none();
    let first = (node_missing || (full && node_differs(self_registration, catalog.node.as_ref())))
        .then(|| Command::Register(Box::new(self_registration.clone())));
    let mut commands = Vec::new();
    let mut service_ids: BTreeSet<&String> = local.services.keys().collect();
    let mut check_ids: BTreeSet<&String> = local.checks.keys().collect();
    service_ids.extend(catalog.services.keys());
    check_ids.extend(catalog.checks.keys());

    // By service (its token), and node-level checks by their token.
    let mut register: BTreeMap<(&str, Option<&Secret>), Vec<CheckDefinition>> = BTreeMap::new();
    let service_token = |id: &str| local.services.get(id).and_then(|s| s.spec.token.as_ref());
    let mut removed_services = BTreeSet::new();
    for id in service_ids {
        match (local.services.get(id), catalog.services.get(id)) {
            (Some(l), c) if c.is_none_or(|c| service_differs(l, c)) => {
                register.entry((id, l.spec.token.as_ref())).or_default();
            }
            (None, Some(_)) if id != SELF_SERVICE_ID => {
                removed_services.insert(id.as_str());
                let command = deregister(self_registration, Some(id), None);
                commands.push(PlannedWrite { command, token: local.removed.services.get(id).cloned() });
            }
            _ => {}
        }
    }
    for id in check_ids {
        match (local.checks.get(id), catalog.checks.get(id)) {
            (Some(l), c) => {
                // A periodic comparison leaves a deferred output-only change to its time.
                let with_output = !full || l.output_due.is_none();
                if c.is_none_or(|c| check_differs(l, c, with_output)) {
                    let service_id = l.spec.service_id.as_str();
                    let token = if service_id.is_empty() { l.spec.token.as_ref() } else { service_token(service_id) };
                    register.entry((service_id, token)).or_default().push(check_definition(l));
                }
            }
            (None, Some(c)) if id != SELF_CHECK_ID && !removed_services.contains(c.service_id.as_str()) => {
                let command = deregister(self_registration, None, Some(id));
                commands.push(PlannedWrite { command, token: local.removed.checks.get(id).cloned() });
            }
            _ => {}
        }
    }
    for ((service_id, token), checks) in register {
        // A check's service goes with it: harmless when unchanged, needed when the catalog
        // lost it.
        let service = local.services.get(service_id).map(service_definition);
        if !service_id.is_empty() && service.is_none() {
            continue;
        }
        let command = Command::Register(Box::new(RegisterRequest {
            service,
            checks,
            skip_node_update: true,
            ..node_only(self_registration)
        }));
        commands.push(PlannedWrite { command, token: token.cloned() });
    }
    (first, commands)
}

fn node_only(r: &RegisterRequest) -> RegisterRequest {
    RegisterRequest { service: None, checks: Vec::new(), ..r.clone() }
}

fn deregister(r: &RegisterRequest, service_id: Option<&str>, check_id: Option<&str>) -> Command {
    Command::Deregister(DeregisterRequest {
        node: r.node.clone(),
        service_id: service_id.map(str::to_string),
        check_id: check_id.map(str::to_string),
    })
}

fn node_differs(r: &RegisterRequest, node: Option<&Node>) -> bool {
    node.is_none_or(|n| {
        n.id != r.id || n.address != r.address || n.tagged_addresses != r.tagged_addresses || n.meta != r.node_meta
    })
}

fn service_definition(s: &LocalService) -> ServiceDefinition {
    let spec = &s.spec;
    ServiceDefinition {
        id: spec.id.clone(),
        service: spec.name.clone(),
        tags: spec.tags.clone(),
        address: spec.address.clone(),
        meta: spec.meta.clone(),
        port: spec.port,
        weights: spec.weights,
        enable_tag_override: spec.enable_tag_override,
        // As Consul's agent: the defaults it answers with are what the catalog gets.
        tagged_addresses: spec.tagged_addresses_with_defaults(),
    }
}

fn service_differs(l: &LocalService, c: &Service) -> bool {
    let d = service_definition(l);
    d.service != c.service
        || d.tags != c.tags
        || d.address != c.address
        || d.meta != c.meta
        || d.port != c.port
        || d.weights != c.weights
        || d.enable_tag_override != c.enable_tag_override
        || d.tagged_addresses != c.tagged_addresses
}

fn check_definition(l: &LocalCheck) -> CheckDefinition {
    CheckDefinition {
        check_id: l.spec.id.clone(),
        name: l.spec.name.clone(),
        status: l.status,
        notes: l.spec.notes.clone(),
        output: l.output.clone(),
        service_id: l.spec.service_id.clone(),
        check_type: l.spec.kind.type_name().to_string(),
    }
}

fn check_differs(l: &LocalCheck, c: &HealthCheck, with_output: bool) -> bool {
    l.status != c.status
        || l.spec.name != c.name
        || l.spec.notes != c.notes
        || l.spec.service_id != c.service_id
        || l.spec.kind.type_name() != c.r#type
        || (with_output && l.output != c.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::state::{LocalState, Source};
    use crate::model::acl::Secret;
    use crate::model::agent::{decode_service, ScriptPolicy, Strictness};
    use crate::model::CheckStatus;
    use tokio::time::Instant;

    fn self_registration() -> RegisterRequest {
        RegisterRequest {
            id: "id".into(),
            node: "n1".into(),
            address: "10.0.0.1".into(),
            datacenter: "dc1".into(),
            tagged_addresses: Default::default(),
            node_meta: Default::default(),
            service: None,
            checks: Vec::new(),
            skip_node_update: false,
        }
    }

    fn local_with_web() -> LocalState {
        let reg = decode_service(
            &serde_json::json!({"Name": "web", "Port": 80, "Check": {"TTL": "10s", "Status": "passing"}}),
            Strictness::Lenient,
            ScriptPolicy::Refused,
        )
        .expect("valid");
        let mut state = LocalState::default();
        state.add_service(reg.service, reg.checks, Source::Api, false, Instant::now());
        state
    }

    fn view(state: &LocalState) -> LocalView {
        LocalView {
            services: state.services.clone(),
            checks: state.checks.clone(),
            removed: state.removed_tokens.clone(),
        }
    }

    fn commands_of(planned: Vec<PlannedWrite>) -> Vec<Command> {
        planned.into_iter().map(|w| w.command).collect()
    }

    /// The catalog as it would be after applying `commands` (enough for these tests).
    fn catalog_after(commands: &[Command]) -> CatalogView {
        let reg = self_registration();
        let mut catalog = CatalogView {
            node: Some(Node {
                id: reg.id,
                node: reg.node.clone(),
                address: reg.address,
                datacenter: reg.datacenter,
                tagged_addresses: reg.tagged_addresses,
                meta: reg.node_meta,
                create_index: 1,
                modify_index: 1,
            }),
            ..Default::default()
        };
        for command in commands {
            let Command::Register(r) = command else { continue };
            if let Some(s) = &r.service {
                catalog.services.insert(
                    s.id.clone(),
                    Service {
                        node: r.node.clone(),
                        id: s.id.clone(),
                        service: s.service.clone(),
                        tags: s.tags.clone(),
                        address: s.address.clone(),
                        meta: s.meta.clone(),
                        port: s.port,
                        weights: s.weights,
                        enable_tag_override: s.enable_tag_override,
                        tagged_addresses: s.tagged_addresses.clone(),
                        create_index: 2,
                        modify_index: 2,
                    },
                );
            }
            for c in &r.checks {
                catalog.checks.insert(
                    c.check_id.clone(),
                    HealthCheck {
                        node: r.node.clone(),
                        check_id: c.check_id.clone(),
                        name: c.name.clone(),
                        status: c.status,
                        notes: c.notes.clone(),
                        output: c.output.clone(),
                        service_id: c.service_id.clone(),
                        service_name: String::new(),
                        service_tags: Vec::new(),
                        r#type: c.check_type.clone(),
                        create_index: 2,
                        modify_index: 2,
                    },
                );
            }
        }
        catalog
    }

    #[test]
    fn a_synced_state_plans_no_writes() {
        let state = local_with_web();
        let (first, planned) = plan(&self_registration(), &view(&state), &catalog_after(&[]), true);
        let commands = commands_of(planned);
        assert!(first.is_none());
        assert_eq!(commands.len(), 1, "one register for the service and its check: {commands:?}");
        let catalog = catalog_after(&commands);
        let (first, again) = plan(&self_registration(), &view(&state), &catalog, true);
        let again = commands_of(again);
        assert!(first.is_none() && again.is_empty(), "steady state writes nothing: {again:?}");
    }

    #[test]
    fn drift_is_repaired_both_ways_but_the_servers_own_entries_stay() {
        let state = local_with_web();
        let commands = commands_of(plan(&self_registration(), &view(&state), &catalog_after(&[]), true).1);
        let mut catalog = catalog_after(&commands);
        let stray = catalog.services["web"].clone();
        catalog.services.insert("old".into(), Service { id: "old".into(), ..stray.clone() });
        catalog.services.insert("consul".into(), Service { id: "consul".into(), ..stray });
        let serf = catalog.checks["service:web"].clone();
        catalog.checks.insert(
            "serfHealth".into(),
            HealthCheck { check_id: "serfHealth".into(), service_id: String::new(), ..serf },
        );
        catalog.checks.remove("service:web");
        let commands = commands_of(plan(&self_registration(), &view(&state), &catalog, true).1);
        let text = format!("{commands:?}");
        assert_eq!(commands.len(), 2, "{text}");
        assert!(text.contains("service_id: Some(\"old\")") && text.contains("check_id: \"service:web\""), "{text}");
        assert!(!text.contains("consul") && !text.contains("serfHealth"), "{text}");
    }

    #[test]
    fn deferred_output_waits_for_its_time_in_a_full_sync() {
        let mut state = local_with_web();
        let commands = commands_of(plan(&self_registration(), &view(&state), &catalog_after(&[]), true).1);
        let catalog = catalog_after(&commands);
        state.take_dirty();
        let now = Instant::now();
        state
            .update_ttl("service:web", CheckStatus::Passing, "new output".into(), Duration::from_secs(300), now)
            .expect("ttl");
        let commands = commands_of(plan(&self_registration(), &view(&state), &catalog, true).1);
        assert!(commands.is_empty(), "output alone waits: {commands:?}");
        state.tick(now + Duration::from_secs(300));
        let commands = commands_of(plan(&self_registration(), &view(&state), &catalog, false).1);
        assert_eq!(commands.len(), 1, "falls due: {commands:?}");
    }

    #[test]
    fn each_write_carries_the_token_its_entry_was_registered_with() {
        let mut state = LocalState::default();
        let now = Instant::now();
        let reg = decode_service(
            &serde_json::json!({"Name": "web", "Token": "svc-token", "Check": {"TTL": "10s"}}),
            Strictness::Lenient,
            ScriptPolicy::Refused,
        )
        .expect("valid");
        assert_eq!(reg.checks[0].token, Some(Secret("svc-token".into())), "a service's checks have its token");
        state.add_service(reg.service, reg.checks, Source::Api, false, now);
        for (id, token) in [("disk", Some("node-token")), ("mem", None)] {
            let mut check = crate::model::agent::decode_check(
                &serde_json::json!({"Name": id, "TTL": "10s"}),
                Strictness::Lenient,
                ScriptPolicy::Refused,
            )
            .expect("valid");
            check.token = token.map(|t| Secret(t.into()));
            state.add_check(check, Source::Api, now);
        }
        let (_, planned) = plan(&self_registration(), &view(&state), &catalog_after(&[]), true);
        let mut tokens: Vec<(Option<&str>, usize)> = planned
            .iter()
            .map(|w| {
                let Command::Register(r) = &w.command else { panic!("a registration: {w:?}") };
                (w.token.as_ref().map(|t| t.0.as_str()), r.checks.len())
            })
            .collect();
        tokens.sort();
        assert_eq!(tokens, [(None, 1), (Some("node-token"), 1), (Some("svc-token"), 1)]);

        // Removed: deregistered with the token it had, which is then forgotten once gone.
        let catalog = catalog_after(&commands_of(planned));
        state.remove_service("web").expect("known");
        state.remove_check("disk");
        let (_, planned) = plan(&self_registration(), &view(&state), &catalog, true);
        let mut removals: Vec<(String, Option<&str>)> = planned
            .iter()
            .map(|w| (format!("{:?}", w.command), w.token.as_ref().map(|t| t.0.as_str())))
            .map(|(c, t)| (if c.contains("\"web\"") { "web".into() } else { "disk".into() }, t))
            .collect();
        removals.sort();
        assert_eq!(removals, [("disk".into(), Some("node-token")), ("web".into(), Some("svc-token"))]);
    }
}
