//! After a restart, holds the reads a server answers from its own replica (`?stale`, DNS)
//! until its state machine has applied everything its log held when it started.
//!
//! Architecture Invariant: indexes a server serves never go backwards, restarts and power
//! losses included. The state machine commits without an fsync of its own (see
//! `Store::commit_durably`), so a power loss can take back applies that reads and DNS had
//! already served; the durable log still holds those entries, and Raft applies them again
//! once it knows they are committed (a leader, or news from one). Until the replica has
//! applied the last entry the log held at start, or a truncation has shown the entries
//! past some point were never committed (so nobody read them), answering from it could
//! serve an older index than before the crash.
//!
//! After a clean stop or a SIGKILL the replica has already applied everything (the page
//! cache survives), so the gate opens at start and costs nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

#[derive(Debug)]
pub struct ReplayGate {
    /// The last log index a local read must wait for.
    target: AtomicU64,
    /// Latched once reached: from then on only the leader-contact rules apply.
    open: AtomicBool,
}

impl ReplayGate {
    /// A gate for a log whose last entry at start is `last_log_index`.
    pub fn new(last_log_index: u64) -> ReplayGate {
        ReplayGate { target: AtomicU64::new(last_log_index), open: AtomicBool::new(false) }
    }

    /// Says so in the log when a replica that has applied `applied` must wait.
    pub fn log_if_waiting(&self, applied: u64) {
        if !self.passed(|| applied) {
            tracing::info!(
                applied,
                last_log_index = self.target.load(Ordering::Acquire),
                "replaying the log written before the restart: stale reads and DNS wait until it is applied"
            );
        }
    }

    /// The log was truncated from `index` on: those entries were never committed, so no
    /// read saw them and none needs to wait for them.
    pub fn truncated(&self, index: u64) {
        self.target.fetch_min(index.saturating_sub(1), Ordering::AcqRel);
    }

    /// Whether local reads may be answered by a replica that has applied `applied()` (asked
    /// only while the gate is still closed: once open, a read pays one atomic load).
    pub fn passed(&self, applied: impl FnOnce() -> u64) -> bool {
        if self.open.load(Ordering::Acquire) {
            return true;
        }
        let applied = applied();
        if applied < self.target.load(Ordering::Acquire) {
            return false;
        }
        if !self.open.swap(true, Ordering::AcqRel) {
            tracing::info!(applied, "replayed the log written before the restart: stale reads and DNS answer again");
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::ReplayGate;

    #[test]
    fn opens_once_the_start_log_is_applied_and_stays_open() {
        let gate = ReplayGate::new(10);
        gate.log_if_waiting(7);
        assert!(!gate.passed(|| 7));
        assert!(!gate.passed(|| 9));
        assert!(gate.passed(|| 10));
        assert!(gate.passed(|| 3), "latched open");
    }

    #[test]
    fn a_truncation_lowers_what_reads_wait_for() {
        let gate = ReplayGate::new(10);
        gate.truncated(12);
        assert!(!gate.passed(|| 9), "a truncation past the target changes nothing");
        gate.truncated(9);
        assert!(gate.passed(|| 8), "entries 9 and 10 were never committed");
    }

    #[test]
    fn a_replica_that_applied_everything_is_open_at_once() {
        assert!(ReplayGate::new(5).passed(|| 5));
        assert!(ReplayGate::new(0).passed(|| 0));
    }
}
