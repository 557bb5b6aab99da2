//! The agent's local services and health checks: registration (API and config files),
//! check runners, time-driven rules (TTL expiry, deregister-after), persistence in the data
//! dir, and anti-entropy into the catalog.
//!
//! ```text
//!  HTTP /v1/agent/* ─┐                      ┌─ runner task per HTTP/TCP/script check
//!  config services ──┼─► LocalState (mutex) ◄┤─ timekeeper (TTL, deregister-after, output due)
//!                    │        │  dirty       └─ persister (agent-local.json)
//!                    │        ▼
//!                    │   anti-entropy ── Register/Deregister ──► cluster::write (Raft)
//! ```
//!
//! Architecture Invariant: nothing here writes the catalog except anti-entropy, and it only
//! ever writes through `Cluster::write`. Why: the catalog is replicated state; the local
//! state is the truth for this node and the catalog converges to it.
//!
//! Limits: at most `checks_max_concurrent` probes run at once (a check whose turn comes
//! while none is free waits for one; each probe holds its permit at most its timeout), and
//! anti-entropy keeps at most [`sync::WRITES_IN_FLIGHT_MAX`] catalog writes in flight.

mod persist;
mod probe;
mod runner;
pub mod state;
mod sync;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use persist::PersistError;
pub use probe::{read_body_capped, read_capped, root_cause};
pub use state::{LocalCheck, LocalError, LocalService, LocalState, Source};

use crate::cluster::Cluster;
use crate::model::acl::Secret;
use crate::model::agent::{CheckKind, CheckSpec, ServiceRegistration};
use crate::model::{CheckStatus, RegisterRequest};
use crate::store::Store;

/// How often time-driven rules are applied: TTLs expire and deregister-after acts within
/// this of their deadline.
const TICK: Duration = Duration::from_millis(250);
/// Check statuses are saved at most this often (registrations are saved before they are
/// acknowledged).
const STATUS_SAVE_EVERY: Duration = Duration::from_secs(10);

pub const SERVICE_MAINTENANCE_PREFIX: &str = "_service_maintenance:";
pub const NODE_MAINTENANCE_ID: &str = "_node_maintenance";
const MAINTENANCE_DEFAULT_REASON: &str =
    "Maintenance mode is enabled for this service, but no reason was provided. This is a default message.";
const NODE_MAINTENANCE_DEFAULT_REASON: &str =
    "Maintenance mode is enabled for this node, but no reason was provided. This is a default message.";

#[derive(Debug, Clone)]
pub struct LocalAgentConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// Output-only changes reach the catalog at most this often (Consul: 5m).
    pub check_update_interval: Duration,
    /// Full comparison of local state and catalog.
    pub anti_entropy_interval: Duration,
    pub checks_max_concurrent: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Persist(#[from] PersistError),
    #[error("cannot build the HTTP client for health checks: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// Handle to the agent's local services and checks; cheap to clone.
#[derive(Clone)]
pub struct LocalAgent {
    inner: Arc<Inner>,
}

struct Inner {
    config: LocalAgentConfig,
    state: Mutex<LocalState>,
    /// Running check tasks by check ID, with the generation they run.
    runners: Mutex<HashMap<String, (u64, CancellationToken)>>,
    /// `LocalState::version` after each change, for blocking agent reads.
    changes: watch::Sender<u64>,
    sync_wake: Notify,
    /// Registration changes waiting to be saved (a generation counter) and the last one saved
    /// with its error, if saving failed.
    save_requested: watch::Sender<u64>,
    saved: watch::Sender<(u64, Option<String>)>,
    probe_permits: Arc<Semaphore>,
    clients: probe::HttpClients,
    probe_times: probe::ProbeTimes,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl LocalAgent {
    /// Loads the saved local state, adds `config_services`, and starts runners, the
    /// timekeeper, the persister and anti-entropy (which first writes `self_registration`,
    /// this server's node, `consul` service and `serfHealth` check).
    pub fn start(
        config: LocalAgentConfig,
        config_services: Vec<ServiceRegistration>,
        self_registration: RegisterRequest,
        cluster: Cluster,
        store: Store,
        shutdown: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<LocalAgent, CheckError> {
        let saved = persist::load(&config.data_dir.join(persist::FILE_NAME))?;
        let inner = Arc::new(Inner {
            state: Mutex::new(LocalState::default()),
            runners: Mutex::default(),
            changes: watch::Sender::new(0),
            sync_wake: Notify::new(),
            save_requested: watch::Sender::new(0),
            saved: watch::Sender::new((0, None)),
            probe_permits: Arc::new(Semaphore::new(config.checks_max_concurrent.max(1))),
            clients: probe::HttpClients::new()?,
            probe_times: probe::ProbeTimes::new(),
            shutdown,
            tasks: tasks.clone(),
            config,
        });
        let agent = LocalAgent { inner };
        {
            let now = Instant::now();
            let mut state = agent.lock();
            for service in saved.services {
                let id = service.id.clone();
                let checks = saved.checks.iter().filter(|c| c.service_id == id && !is_maintenance(c)).cloned();
                state.add_service(service, checks.collect(), Source::Api, false, now);
            }
            for check in saved.checks.iter().filter(|c| c.service_id.is_empty() || is_maintenance(c)) {
                state.add_check(check.clone(), Source::Api, now);
            }
            state.mark_all_dirty();
        }
        agent.replace_config_services(config_services);
        {
            let now = Instant::now();
            let mut state = agent.lock();
            for s in saved.statuses {
                state.restore_status(&s.id, s.status, s.output, now);
            }
            let ids: Vec<String> = state.checks.keys().cloned().collect();
            drop(state);
            agent.inner.reconcile_runners(&ids);
        }
        let inner = &agent.inner;
        // On a client agent the catalog is read and written through a server.
        tasks.spawn(sync::run(Arc::clone(inner), cluster, store, self_registration));
        tasks.spawn(timekeeper(Arc::clone(inner)));
        tasks.spawn(persister(Arc::clone(inner)));
        Ok(agent)
    }

    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.inner.lock()
    }

    /// How long this agent's check probes took, by kind (http, tcp, script).
    pub fn probe_seconds(&self) -> [(&'static str, crate::metrics::HistogramValues); 3] {
        self.inner.probe_times.snapshot()
    }

    /// Reads the local state.
    pub fn read<T>(&self, f: impl FnOnce(&LocalState) -> T) -> T {
        f(&self.lock())
    }

    /// Notified after every change the agent API shows.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    pub fn node_name(&self) -> &str {
        &self.inner.config.node_name
    }

    /// Registers (or replaces) a service with its checks; returns once saved to disk.
    pub async fn register_service(&self, reg: ServiceRegistration, replace_checks: bool) -> Result<(), LocalError> {
        let started = {
            let mut state = self.lock();
            state.add_service(reg.service, reg.checks, Source::Api, replace_checks, Instant::now())
        };
        self.changed(&started);
        self.save().await
    }

    pub async fn deregister_service(&self, id: &str) -> Result<(), LocalError> {
        let stopped = self.lock().remove_service(id)?;
        self.changed(&stopped);
        self.save().await
    }

    /// Registers a check on its own; its `ServiceID`, if any, must be a local service.
    pub async fn register_check(&self, spec: CheckSpec) -> Result<(), LocalError> {
        let started = {
            let mut state = self.lock();
            if !spec.service_id.is_empty() && !state.services.contains_key(&spec.service_id) {
                return Err(LocalError::NoSuchService(spec.service_id.clone()));
            }
            state.add_check(spec, Source::Api, Instant::now())
        };
        self.changed(started.as_slice());
        self.save().await
    }

    pub async fn deregister_check(&self, id: &str) -> Result<(), LocalError> {
        if !self.lock().remove_check(id) {
            return Err(LocalError::UnknownCheck(id.to_string()));
        }
        self.changed(&[id.to_string()]);
        self.save().await
    }

    /// `PUT /v1/agent/check/pass|warn|fail|update/{id}`.
    pub fn update_ttl(&self, id: &str, status: CheckStatus, output: String) -> Result<(), LocalError> {
        let delay = self.inner.config.check_update_interval;
        self.lock().update_ttl(id, status, output, delay, Instant::now())?;
        self.changed(&[]);
        Ok(())
    }

    /// Adds or removes the critical `_service_maintenance:<id>` check.
    /// Its token: the request's, else the service's.
    pub async fn service_maintenance(
        &self,
        id: &str,
        enable: bool,
        reason: &str,
        token: Option<Secret>,
    ) -> Result<(), LocalError> {
        let check_id = format!("{SERVICE_MAINTENANCE_PREFIX}{id}");
        {
            let mut state = self.lock();
            let Some(service) = state.services.get(id) else {
                return Err(LocalError::UnknownService(id.to_string()));
            };
            if enable {
                let reason = if reason.is_empty() { MAINTENANCE_DEFAULT_REASON } else { reason };
                let token = token.or_else(|| service.spec.token.clone());
                state.add_check(
                    maintenance_check(check_id, "Service Maintenance Mode", id, reason, token),
                    Source::Api,
                    Instant::now(),
                );
            } else {
                state.remove_check(&check_id);
            }
        }
        self.changed(&[]);
        self.save().await
    }

    /// Adds or removes the critical `_node_maintenance` check.
    pub async fn node_maintenance(&self, enable: bool, reason: &str, token: Option<Secret>) -> Result<(), LocalError> {
        {
            let mut state = self.lock();
            if enable {
                let reason = if reason.is_empty() { NODE_MAINTENANCE_DEFAULT_REASON } else { reason };
                let check = maintenance_check(NODE_MAINTENANCE_ID.into(), "Node Maintenance Mode", "", reason, token);
                state.add_check(check, Source::Api, Instant::now());
            } else {
                state.remove_check(NODE_MAINTENANCE_ID);
            }
        }
        self.changed(&[]);
        self.save().await
    }

    /// Makes the config-file services exactly `services`: ones no longer listed go, new and
    /// changed ones are (re)registered, unchanged checks keep their status and runner.
    pub fn replace_config_services(&self, services: Vec<ServiceRegistration>) {
        let (mut started, stopped) = {
            let mut state = self.lock();
            let now = Instant::now();
            let listed: std::collections::HashSet<String> = services.iter().map(|r| r.service.id.clone()).collect();
            let gone: Vec<String> = state
                .services
                .values()
                .filter(|s| s.source == Source::Config && !listed.contains(&s.spec.id))
                .map(|s| s.spec.id.clone())
                .collect();
            let mut stopped = Vec::new();
            for id in gone {
                stopped.extend(state.remove_service(&id).unwrap_or_default());
            }
            let mut started = Vec::new();
            for reg in services {
                started.extend(state.add_service(reg.service, reg.checks, Source::Config, true, now));
            }
            (started, stopped)
        };
        started.extend(stopped);
        self.changed(&started);
    }

    /// Compares everything with the catalog now: after the agent's tokens change, what was
    /// refused may pass.
    pub fn resync(&self) {
        self.lock().mark_all_dirty();
        self.inner.sync_wake.notify_one();
    }

    /// After a change to the checks `ids`: runners follow, anti-entropy and blocking readers
    /// wake.
    fn changed(&self, ids: &[String]) {
        self.inner.reconcile_runners(ids);
        self.inner.after_change();
    }

    /// Asks the persister to save, and waits until it has.
    async fn save(&self) -> Result<(), LocalError> {
        let mut target = 0;
        self.inner.save_requested.send_modify(|g| {
            *g += 1;
            target = *g;
        });
        let mut saved = self.inner.saved.subscribe();
        let stopping = || LocalError::NotSaved("the agent is shutting down".into());
        // The persister's last save happens at shutdown; a change made after it is not saved.
        let result = tokio::select! {
            result = saved.wait_for(|(generation, _)| *generation >= target) => result.map(|r| r.1.clone()),
            _ = self.inner.shutdown.cancelled() => return Err(stopping()),
        };
        match result {
            Ok(None) => Ok(()),
            Ok(Some(error)) => Err(LocalError::NotSaved(error)),
            Err(_) => Err(stopping()),
        }
    }
}

fn is_maintenance(check: &CheckSpec) -> bool {
    check.kind == CheckKind::Maintenance
}

fn maintenance_check(id: String, name: &str, service_id: &str, reason: &str, token: Option<Secret>) -> CheckSpec {
    CheckSpec {
        id,
        name: name.to_string(),
        service_id: service_id.to_string(),
        notes: reason.to_string(),
        kind: CheckKind::Maintenance,
        interval: Duration::ZERO,
        timeout: Duration::ZERO,
        initial_status: CheckStatus::Critical,
        success_before_passing: 0,
        failures_before_warning: 0,
        failures_before_critical: 0,
        deregister_critical_after: None,
        token,
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, LocalState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn after_change(&self) {
        let version = self.lock().version;
        self.changes.send_if_modified(|v| {
            let modified = *v != version;
            *v = version;
            modified
        });
        self.sync_wake.notify_one();
    }

    /// Makes the runners of checks `ids` match the state: one per HTTP, TCP or script check
    /// at its current generation, none for anything else (removed, TTL, maintenance). Done
    /// under the state lock (order: state, then runners), so a removal that lost a race with
    /// a re-registration cannot cancel the new runner.
    fn reconcile_runners(self: &Arc<Self>, ids: &[String]) {
        let state = self.lock();
        let mut runners = self.runners.lock().unwrap_or_else(|e| e.into_inner());
        for id in ids {
            let wanted =
                state.checks.get(id).filter(|c| !matches!(c.spec.kind, CheckKind::Ttl { .. } | CheckKind::Maintenance));
            let running = runners.get(id).map(|(generation, _)| *generation);
            if running.is_some() && running == wanted.map(|c| c.generation) {
                continue;
            }
            if let Some((_, old)) = runners.remove(id) {
                old.cancel();
            }
            if let Some(check) = wanted {
                let cancel = self.shutdown.child_token();
                runners.insert(id.clone(), (check.generation, cancel.clone()));
                let spec = Arc::clone(&check.spec);
                self.tasks.spawn(runner::run(Arc::clone(self), id.clone(), check.generation, spec, cancel));
            }
        }
    }

    /// Encodes what is saved (API registrations, every check's status) and saves it.
    /// Blocking (encoding under the state lock, then fsync): run on a blocking thread.
    fn save_blocking(&self, path: &std::path::Path) -> Result<(), PersistError> {
        let state = self.lock();
        let bytes = persist::encode(&persist::PersistedRef {
            services: state.services.values().filter(|s| s.source == Source::Api).map(|s| &s.spec).collect(),
            checks: state.checks.values().filter(|c| c.source == Source::Api).map(|c| &*c.spec).collect(),
            statuses: state
                .checks
                .values()
                .map(|c| persist::PersistedStatusRef { id: &c.spec.id, status: c.status, output: &c.output })
                .collect(),
        })
        .map_err(|e| PersistError::Io { path: path.to_path_buf(), source: std::io::Error::other(e) })?;
        drop(state);
        persist::save(path, &bytes)
    }
}

/// Applies time-driven rules every [`TICK`].
async fn timekeeper(inner: Arc<Inner>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = inner.shutdown.cancelled() => return,
        }
        let (reaped, dirty) = {
            let mut state = inner.lock();
            let version = state.version;
            let reaped = state.tick(Instant::now());
            (reaped, state.version != version || !state.dirty.is_empty())
        };
        for (service, checks) in &reaped {
            tracing::info!(service = %service, "service critical past DeregisterCriticalServiceAfter: deregistered");
            inner.reconcile_runners(checks);
        }
        if !reaped.is_empty() {
            inner.save_requested.send_modify(|g| *g += 1);
        }
        if dirty {
            inner.after_change();
        }
    }
}

/// Saves the local state when a registration changed (callers wait for it), every
/// [`STATUS_SAVE_EVERY`] when only statuses changed, and once more at shutdown.
async fn persister(inner: Arc<Inner>) {
    let path = inner.config.data_dir.join(persist::FILE_NAME);
    let mut requested = inner.save_requested.subscribe();
    let mut saved_version = u64::MAX;
    let mut statuses = tokio::time::interval(STATUS_SAVE_EVERY);
    statuses.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            changed = requested.changed() => changed.is_err(),
            _ = statuses.tick() => false,
            _ = inner.shutdown.cancelled() => true,
        };
        let generation = *requested.borrow_and_update();
        let version = inner.lock().version;
        let pending = generation > inner.saved.borrow().0;
        if pending || version != saved_version {
            let (saver, path) = (Arc::clone(&inner), path.clone());
            let result = tokio::task::spawn_blocking(move || saver.save_blocking(&path))
                .await
                .unwrap_or_else(|e| Err(PersistError::Io { path: PathBuf::new(), source: std::io::Error::other(e) }));
            let error = result.err().map(|e| {
                tracing::error!(error = %e, "could not save the agent's local state");
                e.to_string()
            });
            if error.is_none() {
                saved_version = version;
            }
            inner.saved.send_replace((generation, error));
        }
        if stopping {
            return;
        }
    }
}
