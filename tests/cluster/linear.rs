//! A Wing–Gong linearizability checker for one KV key used as a counter: reads return a
//! value, compare-and-set writes move it from the value they read to the next. An operation
//! whose outcome is unknown (a timeout, a 500 after sending) may have taken effect at any
//! point after it started, or never.

use std::collections::HashSet;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        value: u64,
    },
    /// `ok`: `Some(true)` succeeded, `Some(false)` refused, `None` unknown.
    Cas {
        from: u64,
        to: u64,
        ok: Option<bool>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct Event {
    pub op: Op,
    pub start: Instant,
    /// `None`: the outcome is unknown, so it may take effect any time after `start`.
    pub end: Option<Instant>,
}

/// The state after `op` on `state`, or `None` when `op` could not have returned what it did.
fn step(state: u64, op: Op) -> Option<u64> {
    match op {
        Op::Read { value } => (value == state).then_some(state),
        Op::Cas { from, to, ok: Some(true) } => (from == state).then_some(to),
        // Values only grow, so a refused CAS means the counter had moved past `from`.
        Op::Cas { from, ok: Some(false), .. } => (from != state).then_some(state),
        Op::Cas { from, to, ok: None } => (from == state).then_some(to),
    }
}

/// Whether some total order of `history`, consistent with real time, explains every
/// result, starting from `initial`.
pub fn linearizable(history: &[Event], initial: u64) -> bool {
    let mut done = vec![false; history.len()];
    let mut seen = HashSet::new();
    search(history, &mut done, initial, &mut seen)
}

/// The plainest violation, to print when [`linearizable`] says no: a read that returned a
/// value some acknowledged compare-and-set had already moved past before the read began.
pub fn first_stale_read(history: &[Event]) -> Option<(Event, Event)> {
    let reads = history.iter().filter(|e| matches!(e.op, Op::Read { .. }));
    reads
        .filter_map(|read| {
            let Op::Read { value } = read.op else { return None };
            let newer = history.iter().find(|w| {
                matches!(w.op, Op::Cas { to, ok: Some(true), .. } if to > value)
                    && w.end.is_some_and(|end| end < read.start)
            })?;
            Some((*read, *newer))
        })
        .min_by_key(|(read, _)| read.start)
}

fn search(history: &[Event], done: &mut Vec<bool>, state: u64, seen: &mut HashSet<(Vec<bool>, u64)>) -> bool {
    // Every operation with a known end is placed; unknown ones may simply never happen.
    if history.iter().zip(done.iter()).all(|(e, d)| *d || e.end.is_none()) {
        return true;
    }
    if !seen.insert((done.clone(), state)) {
        return false;
    }
    // The next one may be any pending operation that started before every pending one ended.
    let horizon = history.iter().zip(done.iter()).filter(|(_, d)| !**d).filter_map(|(e, _)| e.end).min();
    for i in 0..history.len() {
        let event = history[i];
        if done[i] || horizon.is_some_and(|h| event.start > h) {
            continue;
        }
        if let Some(next) = step(state, event.op) {
            done[i] = true;
            if search(history, done, next, seen) {
                return true;
            }
            done[i] = false;
        }
    }
    false
}

#[test]
fn the_checker_accepts_concurrent_histories_and_catches_a_planted_stale_read() {
    use std::time::Duration;
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let ev = |op, start, end: Option<u64>| Event { op, start: at(start), end: end.map(at) };
    // Two overlapping CASes from 0: one wins; a read overlapping both may see either.
    let ok = [
        ev(Op::Cas { from: 0, to: 1, ok: Some(true) }, 0, Some(10)),
        ev(Op::Cas { from: 0, to: 1, ok: Some(false) }, 1, Some(12)),
        ev(Op::Read { value: 0 }, 2, Some(5)),
        ev(Op::Read { value: 1 }, 11, Some(20)),
        ev(Op::Cas { from: 1, to: 2, ok: None }, 21, None),
        ev(Op::Read { value: 1 }, 30, Some(31)),
    ];
    assert!(linearizable(&ok, 0));
    // The unknown CAS may take effect later: a later read of 2 is fine too.
    let mut later = ok.to_vec();
    later.push(ev(Op::Read { value: 2 }, 40, Some(41)));
    assert!(linearizable(&later, 0));
    // Planted stale read: a read that starts after a CAS to 1 returned still sees 0.
    let stale = [ev(Op::Cas { from: 0, to: 1, ok: Some(true) }, 0, Some(10)), ev(Op::Read { value: 0 }, 11, Some(12))];
    assert!(!linearizable(&stale, 0));
    // And a value going backwards.
    let back = [
        ev(Op::Cas { from: 0, to: 1, ok: Some(true) }, 0, Some(1)),
        ev(Op::Read { value: 1 }, 2, Some(3)),
        ev(Op::Read { value: 0 }, 4, Some(5)),
    ];
    assert!(!linearizable(&back, 0));
}
