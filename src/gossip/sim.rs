//! A deterministic simulated network for [`Core`], used by the tests and by `bench/gossip.rs`: no sockets, a virtual clock, seeded loss,
//! delay, partitions and pauses. Each node is a `Core`; packets are queued with a delivery
//! time; a paused node's packets wait until it resumes and are handled before its timers, as
//! the real loop does.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::core::{Core, Timings};
use super::member::{MemberId, MemberStatus, Role, PROTOCOL_VERSION};

/// A packet on the wire: (delivery time, sequence, destination node, payload).
type InFlight = Reverse<(Instant, u64, usize, (usize, Vec<u8>))>;

pub struct SimNode {
    pub core: Core,
    pub up: bool,
    pub paused_until: Option<Instant>,
    next_push_pull: Instant,
}

pub struct Sim {
    pub nodes: Vec<SimNode>,
    pub start: Instant,
    pub now: Instant,
    queue: BinaryHeap<InFlight>,
    seq: u64,
    rng: StdRng,
    pub loss: f64,
    /// One-way delay of every packet, plus a uniform random share of `jitter`.
    pub delay: Duration,
    pub jitter: Duration,
    /// Pairs (a, b) with a < b that cannot reach each other.
    pub cut: HashSet<(usize, usize)>,
    index: HashMap<SocketAddr, usize>,
    pub bytes_sent: u64,
    pub packets_sent: u64,
}

pub fn addr_of(i: usize) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8)), 8301)
}

pub fn id_of(i: usize, boot: u64) -> MemberId {
    MemberId {
        name: format!("node{i}"),
        addr: addr_of(i),
        boot,
        role: if i == 0 { Role::Server } else { Role::Client },
        datacenter: "dc1".into(),
        server_port: 8300,
        node_id: [i as u8; 16],
        build: "0.1.0".into(),
        protocol: PROTOCOL_VERSION,
    }
}

impl Sim {
    /// `n` nodes that have all joined through node 0 (by push/pull), at time 0.
    pub fn new(n: usize, timings: Timings, seed: u64) -> Sim {
        let start = Instant::now();
        let mut rng = StdRng::seed_from_u64(seed);
        let nodes = (0..n)
            .map(|i| SimNode {
                core: Core::new(id_of(i, 1), timings.clone(), rng.random(), start),
                up: true,
                paused_until: None,
                next_push_pull: start + timings.push_pull_interval.mul_f64(rng.random::<f64>()),
            })
            .collect();
        let mut sim = Sim {
            nodes,
            start,
            now: start,
            queue: BinaryHeap::new(),
            seq: 0,
            rng,
            loss: 0.0,
            delay: Duration::from_micros(200),
            jitter: Duration::ZERO,
            cut: HashSet::new(),
            index: (0..n).map(|i| (addr_of(i), i)).collect(),
            bytes_sent: 0,
            packets_sent: 0,
        };
        for i in 0..n {
            sim.nodes[i].core.fire_due(start);
        }
        for i in 1..n {
            sim.exchange(i, 0, true);
        }
        // A second round: node 0 now knows everyone, so every node starts with the full view
        // (as after each has completed a push/pull), instead of waiting for gossip to spread
        // the joins.
        for i in 1..n {
            sim.exchange(i, 0, true);
        }
        sim.bytes_sent = 0;
        sim.flush_all();
        sim
    }

    /// A push/pull from `a` to `b` as the transport runs it: a join sends full states; a
    /// periodic one sends a digest first and full states only if the views differ.
    pub fn exchange(&mut self, a: usize, b: usize, join: bool) {
        if !self.reachable(a, b) || !self.nodes[b].up || !self.nodes[a].up {
            return;
        }
        // Frame header, envelope, TCP/IP, and a digest message's identity and hash.
        const FRAME: u64 = 4 + 37 + 52;
        if !join {
            self.bytes_sent += FRAME + 64;
            if self.nodes[a].core.digest() == self.nodes[b].core.digest() {
                self.bytes_sent += FRAME;
                return;
            }
        }
        let now = self.now;
        let sa = self.nodes[a].core.push_pull_state();
        let sb = self.nodes[b].core.push_pull_state();
        self.bytes_sent += 2 * FRAME
            + (postcard::to_allocvec(&sa).map_or(0, |v| v.len()) + postcard::to_allocvec(&sb).map_or(0, |v| v.len()))
                as u64;
        let _ = self.nodes[b].core.apply_push_pull(now, sa);
        let _ = self.nodes[a].core.apply_push_pull(now, sb);
    }

    fn reachable(&self, a: usize, b: usize) -> bool {
        !self.cut.contains(&(a.min(b), a.max(b)))
    }

    pub fn flush_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.flush(i);
        }
    }

    pub fn flush(&mut self, from: usize) {
        for (to, payload) in self.nodes[from].core.take_outbox() {
            let Some(&to) = self.index.get(&to) else { continue };
            self.packets_sent += 1;
            // Envelope overhead (encrypted) and UDP/IP headers: what the wire carries.
            self.bytes_sent += payload.len() as u64 + 37 + 28;
            if !self.reachable(from, to) || self.rng.random::<f64>() < self.loss {
                continue;
            }
            self.seq += 1;
            let delay = self.delay + self.jitter.mul_f64(self.rng.random::<f64>());
            self.queue.push(Reverse((self.now + delay, self.seq, to, (from, payload))));
        }
    }

    /// Runs the network until `until` (virtual).
    pub fn run_until(&mut self, until: Instant) {
        loop {
            let next_packet = self.queue.peek().map(|Reverse((t, ..))| *t);
            let next_timer = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].up)
                .filter_map(|i| {
                    let n = &self.nodes[i];
                    let t = n.core.next_deadline()?.min(n.next_push_pull);
                    Some(n.paused_until.map_or(t, |p| t.max(p)))
                })
                .min();
            let next = match (next_packet, next_timer) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            self.now = next;
            if next_packet == Some(next) {
                let Some(Reverse((_, _, to, payload))) = self.queue.pop() else { break };
                let node = &mut self.nodes[to];
                if !node.up {
                    continue;
                }
                if let Some(p) = node.paused_until.filter(|p| *p > self.now) {
                    // Waits in the socket buffer until the node runs again; queued ahead of
                    // its timers (same instant, lower sequence).
                    self.seq += 1;
                    self.queue.push(Reverse((p, 0, to, payload)));
                    continue;
                }
                let _ = node.core.handle_packet(self.now, addr_of(payload.0), &payload.1);
                self.flush(to);
                continue;
            }
            for i in 0..self.nodes.len() {
                let node = &mut self.nodes[i];
                if !node.up || node.paused_until.is_some_and(|p| p > self.now) {
                    continue;
                }
                node.paused_until = None;
                node.core.fire_due(self.now);
                if node.next_push_pull <= self.now {
                    let interval = node.core.timings().push_pull_interval_at(node.core.peer_count() + 1);
                    node.next_push_pull = self.now + interval;
                    let rng = &mut self.rng;
                    let targets = self.nodes[i].core.push_pull_targets(&mut |n| rng.random_range(0..n));
                    for t in targets {
                        if let Some(&j) = self.index.get(&t) {
                            self.exchange(i, j, false);
                            self.flush(j);
                        }
                    }
                }
                self.flush(i);
            }
        }
        self.now = until;
    }

    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    pub fn kill(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    pub fn status_seen_by(&self, observer: usize, of: usize) -> Option<MemberStatus> {
        if observer == of {
            return Some(MemberStatus::Alive);
        }
        let addr = addr_of(of);
        self.nodes[observer].core.statuses().find(|(a, _)| *a == addr).map(|(_, s)| s)
    }

    fn live_addrs(&self) -> HashSet<SocketAddr> {
        (0..self.nodes.len()).filter(|i| self.nodes[*i].up).map(addr_of).collect()
    }

    /// Whether every live node sees every other live node alive and has nothing left to
    /// disseminate (the joins' updates have all been sent their number of times).
    pub fn settled(&self) -> bool {
        self.converged() && self.nodes.iter().filter(|n| n.up).all(|n| n.core.backlog() == 0)
    }

    /// Whether every live node sees every other live node alive.
    pub fn converged(&self) -> bool {
        let live = self.live_addrs();
        self.nodes.iter().filter(|n| n.up).all(|n| {
            let alive = n.core.statuses().filter(|(a, s)| live.contains(a) && *s == MemberStatus::Alive).count();
            alive + 1 == live.len()
        })
    }

    /// Failed verdicts any live node holds about another live node.
    pub fn false_failures(&self) -> usize {
        let live = self.live_addrs();
        self.nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| n.core.statuses().filter(|(a, s)| live.contains(a) && *s == MemberStatus::Failed).count())
            .sum()
    }

    /// Runs until every live node sees `of` failed; the virtual time it took.
    pub fn time_until_failed(&mut self, of: usize, limit: Duration) -> Option<Duration> {
        let started = self.now;
        let step = Duration::from_millis(10);
        while self.now - started < limit {
            self.run_for(step);
            let all = (0..self.nodes.len())
                .filter(|i| *i != of && self.nodes[*i].up)
                .all(|i| self.status_seen_by(i, of) == Some(MemberStatus::Failed));
            if all {
                return Some(self.now - started);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn converged_sim(n: usize, seed: u64) -> Sim {
        let mut sim = Sim::new(n, Timings::lan(), seed);
        sim.run_for(Duration::from_secs(5));
        assert!(sim.converged(), "{n} nodes did not converge in 5 s");
        sim
    }

    #[test]
    fn a_killed_member_is_failed_everywhere_within_seconds() {
        let mut times = Vec::new();
        for seed in 0..10 {
            let mut sim = converged_sim(5, seed);
            sim.run_for(Duration::from_millis(seed * 97));
            let before: Vec<_> = sim.nodes.iter().map(|n| n.core.stats()).collect();
            assert!(before.iter().all(|s| s.probes_sent > 0 && s.suspicions == 0), "{before:?}");
            sim.kill(3);
            let t = sim.time_until_failed(3, Duration::from_secs(30)).expect("failure detected");
            times.push(t);
            assert_eq!(sim.false_failures(), 0);
            // The metrics' counts: someone's probe of 3 failed and someone suspected it (a
            // member may hear of the failure before it hears of the suspicion).
            let after: Vec<_> = sim.nodes.iter().map(|n| n.core.stats()).collect();
            let failed_probes: u64 = after.iter().zip(&before).map(|(a, b)| a.probes_failed - b.probes_failed).sum();
            let suspicions: u64 = after.iter().map(|s| s.suspicions).sum();
            assert!(failed_probes >= 1 && suspicions >= 1, "{after:?}");
        }
        times.sort();
        let median = times[times.len() / 2];
        assert!(median < Duration::from_secs(6), "median detection {median:?} ({times:?})");
    }

    #[test]
    fn settled_views_share_one_digest_so_push_pull_sends_no_state() {
        let mut sim = converged_sim(8, 21);
        sim.run_for(Duration::from_secs(10));
        let digests: HashSet<u64> = sim.nodes.iter().map(|n| n.core.digest()).collect();
        assert_eq!(digests.len(), 1, "settled members must agree on their view");
        sim.kill(5);
        sim.time_until_failed(5, Duration::from_secs(30)).expect("failure detected");
        sim.run_for(Duration::from_secs(5));
        let live: HashSet<u64> = sim.nodes.iter().filter(|n| n.up).map(|n| n.core.digest()).collect();
        assert_eq!(live.len(), 1, "views agree again once the failure has spread");
        assert_ne!(live, digests);
    }

    #[test]
    fn one_percent_loss_causes_no_false_failures() {
        let mut sim = converged_sim(10, 7);
        sim.loss = 0.01;
        sim.run_for(Duration::from_secs(120));
        assert_eq!(sim.false_failures(), 0);
        assert!(sim.converged());
    }

    #[test]
    fn slow_links_cause_no_false_failures_and_a_failure_is_still_found() {
        let mut sim = converged_sim(10, 13);
        // 50-150 ms one way: round trips up to 300 ms against a 500 ms probe timeout.
        sim.delay = Duration::from_millis(50);
        sim.jitter = Duration::from_millis(100);
        sim.run_for(Duration::from_secs(120));
        assert_eq!(sim.false_failures(), 0);
        sim.kill(7);
        let t = sim.time_until_failed(7, Duration::from_secs(30)).expect("failure detected over slow links");
        assert!(t < Duration::from_secs(10), "{t:?}");
        assert_eq!(sim.false_failures(), 0);
    }

    #[test]
    fn a_member_paused_400ms_every_2s_is_not_declared_failed() {
        let mut sim = converged_sim(5, 11);
        for _ in 0..60 {
            sim.nodes[2].paused_until = Some(sim.now + Duration::from_millis(400));
            sim.run_for(Duration::from_secs(2));
            assert_eq!(sim.false_failures(), 0, "at {:?}", sim.now - sim.start);
        }
        assert!(sim.converged());
    }

    #[test]
    fn a_partition_is_detected_and_heals() {
        let mut sim = converged_sim(6, 3);
        for a in 0..3 {
            for b in 3..6 {
                sim.cut.insert((a, b));
            }
        }
        sim.run_for(Duration::from_secs(30));
        assert_eq!(sim.status_seen_by(0, 4), Some(MemberStatus::Failed));
        assert_eq!(sim.status_seen_by(5, 1), Some(MemberStatus::Failed));
        sim.cut.clear();
        let deadline = sim.now + Duration::from_secs(120);
        while !sim.converged() && sim.now < deadline {
            sim.run_for(Duration::from_secs(1));
        }
        assert!(sim.converged(), "partition did not heal within 120 s after the cut was removed");
    }

    #[test]
    fn a_graceful_leave_is_left_not_failed() {
        let mut sim = converged_sim(5, 5);
        let now = sim.now;
        sim.nodes[4].core.leave(now);
        sim.flush(4);
        sim.run_for(Duration::from_secs(1));
        sim.kill(4);
        sim.run_for(Duration::from_secs(10));
        for i in 0..4 {
            assert_eq!(sim.status_seen_by(i, 4), Some(MemberStatus::Left), "as seen by node {i}");
        }
    }

    #[test]
    fn a_restarted_member_replaces_its_old_self() {
        let mut sim = converged_sim(4, 9);
        sim.kill(2);
        sim.time_until_failed(2, Duration::from_secs(30)).expect("failure detected");
        let now = sim.now;
        sim.nodes[2] = SimNode {
            core: Core::new(id_of(2, 99), Timings::lan(), 1234, now),
            up: true,
            paused_until: None,
            next_push_pull: now + Duration::from_secs(30),
        };
        sim.nodes[2].core.fire_due(now);
        sim.exchange(2, 0, true);
        sim.flush_all();
        sim.run_for(Duration::from_secs(5));
        assert!(sim.converged());
        let seen = sim.nodes[1].core.members().into_iter().find(|m| m.id.addr == addr_of(2)).unwrap();
        assert_eq!(seen.id.boot, 99);
    }
}
