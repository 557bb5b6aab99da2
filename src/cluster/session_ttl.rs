//! Session TTLs, kept by the leader only, as Consul does: a renewal resets a timer in the
//! leader's memory and is never a Raft write, so 1,000 sessions renewed every few seconds
//! cost the log nothing; only an expiry is (one `SessionDestroy` entry).
//!
//! A timer runs for [`Session::TTL_GRACE_FACTOR`] times the TTL. Every timer is re-armed
//! from scratch when this server becomes leader (a new leader does not know when the last
//! renewals reached the old one), and sessions created meanwhile are armed when the
//! sessions table changes. Followers keep no timers: a renewal they receive goes to the
//! leader ([`Cluster::renew_session`]).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::rpc::{Request, Response, RpcError};
use super::{Cluster, WriteError, LEADER_WAIT, RETRY_PAUSE};
use crate::model::{Command, Session};
use crate::store::{StoreError, Table, Topic};

/// After an expiry's `SessionDestroy` could not be committed, the next attempt waits this long.
const DESTROY_RETRY: Duration = Duration::from_secs(2);
/// Expired sessions destroyed at once (their writes share proposals).
const DESTROYS_AT_ONCE: usize = 64;
/// The timer task wakes at least this often, to notice a lost leadership promptly.
const TICK_MAX: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct SessionTimers(Mutex<TimerState>);

#[derive(Default)]
struct TimerState {
    /// The term in which this server armed the timers; `None` while it does not lead.
    term: Option<u64>,
    /// Session ID → when it expires unless renewed.
    deadlines: HashMap<String, Instant>,
}

fn grace(ttl: Duration) -> Duration {
    ttl * Session::TTL_GRACE_FACTOR
}

impl SessionTimers {
    fn lock(&self) -> std::sync::MutexGuard<'_, TimerState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the timers in line with leadership (`leading_term`) and the stored `sessions`
    /// (`None`: unchanged since the last call), and returns the sessions that expired, whose
    /// deadlines move [`DESTROY_RETRY`] ahead, plus when to look again.
    fn step(
        &self,
        leading_term: Option<u64>,
        sessions: Option<Vec<(String, Duration)>>,
        now: Instant,
    ) -> (Vec<String>, Instant) {
        let mut state = self.lock();
        let Some(term) = leading_term else {
            state.term = None;
            state.deadlines.clear();
            return (Vec::new(), now + TICK_MAX);
        };
        if let Some(sessions) = sessions {
            let fresh = state.term != Some(term);
            let mut deadlines = HashMap::with_capacity(sessions.len());
            for (id, ttl) in sessions {
                let deadline = match state.deadlines.get(&id) {
                    Some(at) if !fresh => *at,
                    _ => now + grace(ttl),
                };
                deadlines.insert(id, deadline);
            }
            state.deadlines = deadlines;
            state.term = Some(term);
        }
        let mut expired = Vec::new();
        let mut next = now + TICK_MAX;
        for (id, deadline) in state.deadlines.iter_mut() {
            if *deadline <= now {
                if expired.len() < DESTROYS_AT_ONCE {
                    expired.push(id.clone());
                    *deadline = now + DESTROY_RETRY;
                }
            } else {
                next = next.min(*deadline);
            }
        }
        (expired, next)
    }

    /// Whether the timers were armed in `term` (leadership seen by the task).
    fn armed_in(&self, term: u64) -> bool {
        self.lock().term == Some(term)
    }

    /// Restarts `id`'s timer (on the leader).
    fn renew(&self, id: &str, ttl: Duration) {
        self.lock().deadlines.insert(id.to_string(), Instant::now() + grace(ttl));
    }

    /// Sessions with a timer (for tests).
    #[cfg(test)]
    fn armed(&self) -> usize {
        self.lock().deadlines.len()
    }
}

/// Every session with a TTL, and its TTL.
fn ttl_sessions(cluster: &Cluster) -> Result<Vec<(String, Duration)>, StoreError> {
    let view = cluster.store.read()?;
    Ok(view.sessions()?.into_iter().filter_map(|s| Some((s.id.clone(), s.ttl()?))).collect())
}

/// Keeps the timers on the leader and destroys the sessions that expire, until `shutdown`.
pub(super) async fn run(cluster: Cluster, shutdown: CancellationToken) {
    let mut metrics = cluster.raft.metrics();
    let mut changes = cluster.store.watches().subscribe(Topic::Table(Table::Sessions));
    let mut table_changed = true;
    loop {
        let leading_term = {
            let m = metrics.borrow_and_update();
            (m.running_state.is_ok() && m.current_leader == Some(cluster.config.node_id)).then_some(m.current_term)
        };
        let sessions = match leading_term {
            Some(term) if table_changed || !cluster.session_timers.armed_in(term) => {
                let reader = cluster.clone();
                match tokio::task::spawn_blocking(move || ttl_sessions(&reader)).await {
                    Ok(Ok(sessions)) => Some(sessions),
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "cannot read sessions to arm their TTL timers");
                        None
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "the session reader stopped");
                        None
                    }
                }
            }
            _ => None,
        };
        table_changed = false;
        let (expired, next) = cluster.session_timers.step(leading_term, sessions, Instant::now());
        if !expired.is_empty() {
            let cluster = cluster.clone();
            tokio::spawn(async move {
                let writes = expired.iter().map(|id| cluster.write(Command::SessionDestroy { id: id.clone() }));
                for (id, result) in expired.iter().zip(futures_util::future::join_all(writes).await) {
                    match result {
                        Ok(_) => tracing::info!(session = %id, "session TTL expired; session invalidated"),
                        Err(e) => tracing::warn!(session = %id, error = %e, "cannot invalidate an expired session yet"),
                    }
                }
            });
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            changed = metrics.changed() => if changed.is_err() { return },
            _ = changes.changed() => table_changed = true,
            _ = tokio::time::sleep_until(next) => {}
        }
    }
}

impl Cluster {
    /// `PUT /v1/session/renew/{id}` on a server: restarts the session's TTL timer on the
    /// leader (asked over RPC when this server does not lead; a client agent forwards the
    /// HTTP request to a server). `None` when there is no such session.
    pub async fn renew_session(&self, id: &str) -> Result<Option<Session>, WriteError> {
        self.require_server()?;
        let request = Request::RenewSession { id: id.to_string() };
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let leader = self.wait_for_leader_until(deadline).await.ok_or(WriteError::NoLeader)?;
            if leader.node_id == self.config.node_id {
                return self.renew_as_leader(id).await;
            }
            match self.call_server(leader.node_id, &leader.address, &request, &[], deadline).await {
                Ok((Response::RenewSession(Err(WriteError::NoLeader)), _)) => {}
                Ok((Response::RenewSession(result), _)) => return result,
                Ok(_) => return Err(WriteError::Forward("the leader answered a renewal with something else".into())),
                Err(e @ (RpcError::Connect { .. } | RpcError::Refused(_))) => {
                    tracing::debug!(error = %e, "cannot reach the leader to renew a session; retrying")
                }
                Err(e) => return Err(WriteError::Forward(e.to_string())),
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(WriteError::NoLeader);
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// The leader's side of [`Cluster::renew_session`].
    async fn renew_as_leader(&self, id: &str) -> Result<Option<Session>, WriteError> {
        if !self.is_leader() {
            return Err(WriteError::NoLeader);
        }
        let (store, key) = (self.store.clone(), id.to_string());
        let session = tokio::task::spawn_blocking(move || store.read().and_then(|view| view.session(&key)))
            .await
            .map_err(|e| WriteError::Stopped(e.to_string()))?
            .map_err(|e| WriteError::Stopped(e.to_string()))?;
        if let Some(ttl) = session.as_ref().and_then(Session::ttl) {
            self.session_timers.renew(id, ttl);
        }
        Ok(session)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_run_on_the_leader_only_and_restart_with_each_term() {
        let timers = SessionTimers::default();
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        let sessions = || Some(vec![("a".to_string(), ttl), ("b".to_string(), ttl * 2)]);
        // Not leading: nothing is armed, nothing expires.
        assert!(timers.step(None, sessions(), t0).0.is_empty());
        assert_eq!(timers.armed(), 0);
        // Leading in term 3: armed at twice the TTL.
        let (expired, next) = timers.step(Some(3), sessions(), t0);
        assert!(expired.is_empty());
        assert_eq!(next, t0 + TICK_MAX);
        assert_eq!(timers.armed(), 2);
        assert!(timers.step(Some(3), None, t0 + Duration::from_secs(19)).0.is_empty());
        assert_eq!(timers.step(Some(3), None, t0 + Duration::from_secs(20)).0, ["a"]);
        // Its destroy is retried later, not at every tick.
        assert!(timers.step(Some(3), None, t0 + Duration::from_secs(21)).0.is_empty());
        // A table change keeps running timers; a session gone from the table is dropped.
        timers.step(Some(3), Some(vec![("b".to_string(), ttl * 2)]), t0 + Duration::from_secs(22));
        assert_eq!(timers.armed(), 1);
        assert_eq!(timers.step(Some(3), None, t0 + Duration::from_secs(40)).0, ["b"]);
        // A new term re-arms every timer from now.
        timers.step(Some(4), Some(vec![("b".to_string(), ttl * 2)]), t0 + Duration::from_secs(41));
        assert!(timers.step(Some(4), None, t0 + Duration::from_secs(80)).0.is_empty());
        assert_eq!(timers.step(Some(4), None, t0 + Duration::from_secs(81)).0, ["b"]);
        // Losing leadership forgets them.
        timers.step(None, None, t0 + Duration::from_secs(82));
        assert_eq!(timers.armed(), 0);
    }
}
