//! Logging of refused connections without letting a flood flood the log: the first refusal
//! is logged at once, later ones at most every [`LOG_EVERY`] with how many were refused
//! meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one log line per kind of refusal this often.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// One kind of refusal (one limit of one listener).
#[derive(Default)]
pub struct Refusals {
    last_logged: Mutex<Option<Instant>>,
    since_logged: AtomicU64,
}

impl Refusals {
    /// Counts a refusal; returns how many to report now (this one included) when a log line
    /// is due, else `None`.
    pub fn refused(&self) -> Option<u64> {
        let count = self.since_logged.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last_logged.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < LOG_EVERY) {
            return None;
        }
        *last = Some(Instant::now());
        self.since_logged.fetch_sub(count, Ordering::Relaxed);
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_is_reported_and_a_flood_only_counted() {
        let refusals = Refusals::default();
        assert_eq!(refusals.refused(), Some(1));
        assert_eq!((0..1000).filter_map(|_| refusals.refused()).count(), 0, "within LOG_EVERY: counted only");
        *refusals.last_logged.lock().unwrap() = Some(Instant::now() - LOG_EVERY);
        assert_eq!(refusals.refused(), Some(1001), "the next line says how many were refused meanwhile");
    }
}
