//! One task per HTTP, TCP or script check: waits a random stagger within the interval (so
//! thousands of checks do not fire together), then runs the probe every interval under a
//! permit of the agent's probe cap, and records what it saw.
//!
//! A slow or hanging target delays only its own check: each check has its own task, and a
//! probe never outlives its timeout.

use std::sync::Arc;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{probe, Inner};
use crate::model::agent::CheckSpec;

pub(super) async fn run(
    inner: Arc<Inner>,
    id: String,
    generation: u64,
    spec: Arc<CheckSpec>,
    cancel: CancellationToken,
) {
    let interval = spec.interval;
    let stagger_ms = rand::rng().random_range(0..(interval.as_millis() as u64).max(1));
    let mut next = Instant::now() + std::time::Duration::from_millis(stagger_ms);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = cancel.cancelled() => return,
        }
        let permit = tokio::select! {
            permit = Arc::clone(&inner.probe_permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            _ = cancel.cancelled() => return,
        };
        // Boxed: an HTTP probe's future is ~9 KB, and held inline it would stay allocated in
        // every check's task between runs (45 MB for 5,000 checks).
        let seen = tokio::select! {
            seen = Box::pin(probe::run(&spec.kind, spec.timeout, &inner.clients, &inner.probe_times)) => seen,
            _ = cancel.cancelled() => return,
        };
        drop(permit);
        let Some(seen) = seen else { return };
        let changed = {
            let mut state = inner.lock();
            if state.checks.get(&id).map(|c| c.generation) != Some(generation) {
                return;
            }
            let version = state.version;
            state.observe(&id, generation, seen, inner.config.check_update_interval, Instant::now());
            state.version != version
        };
        if changed {
            inner.after_change();
        }
        // A fixed rhythm, as a ticker: a slow run does not push later runs back, and a run
        // that overran its slot is followed by the next one at once.
        next = (next + interval).max(Instant::now());
    }
}
