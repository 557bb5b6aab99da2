//! The gossip state machine without I/O: foca, its timers on a clock the caller supplies,
//! Lifeguard's additions, and the member list with left/failed told apart.
//!
//! The caller (the UDP/TCP task in `transport`, or the simulated network in tests) feeds it
//! packets, fires its due timers and sends what lands in its outbox. Nothing here reads a
//! clock, a socket or a random source it was not handed, so a seeded simulation replays
//! exactly.
//!
//! What cairn adds to foca (which has neither), after Lifeguard (Dadgar et al., 2018):
//! - **Local health.** A member that fails its own probes, or whose timers fire late (it was
//!   paused or starved), raises a score; each probe interval and probe timeout is stretched by
//!   `score + 1` (up to `awareness_max`). A successful probe lowers it. So a member that is
//!   itself the slow one waits longer instead of accusing healthy peers.
//! - **Suspicion that shortens with independent confirmations.** foca declares a member down
//!   when a suspicion timer it asked for fires; cairn decides when that is. Every member whose
//!   own probe fails broadcasts "I suspect X" (a foca custom broadcast); the timeout starts at
//!   `suspicion_max` and shrinks logarithmically towards `suspicion_min` as distinct members
//!   confirm, as memberlist's does. A member that hears of a suspicion it does not hold
//!   checks at once with a direct *confirmation probe* (its own ping, outside foca's probe
//!   rotation) and broadcasts its own "I suspect X" only if that goes unanswered for a probe
//!   timeout; so a dead member collects its confirmations within a gossip round and a probe
//!   timeout, while a live one answers them and keeps the full timeout to refute.
//!
//! Payloads (inside the envelope) start with a kind byte: `0` foca, `1` confirmation ping
//! `(nonce u64 BE)`, `2` its ack `(nonce u64 BE)`.
//! - **Left versus failed.** A graceful leave is broadcast first, so peers record the member
//!   as left (3), not failed (4), once foca marks it down.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroU8, NonZeroUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use foca::{BroadcastHandler, Foca, Invalidates, Member, Message, Notification, PostcardCodec, State, Timer};
use rand_foca::rngs::StdRng;
use rand_foca::SeedableRng;
use serde::{Deserialize, Serialize};

use super::event::UserEvent;
use super::member::{MemberId, MemberInfo, MemberStatus};

/// Members' SWIM timings; see `Timings::lan`.
#[derive(Debug, Clone, PartialEq)]
pub struct Timings {
    pub probe_interval: Duration,
    pub probe_timeout: Duration,
    pub indirect_checks: usize,
    /// The base suspicion timeout is this × max(1, log10 N) × `probe_interval`.
    pub suspicion_mult: f64,
    /// `suspicion_max` = base × this (cairn 1; memberlist 6).
    pub suspicion_max_ratio: f64,
    /// `suspicion_min` = base × this (cairn 1/8; memberlist 1).
    pub suspicion_min_ratio: f64,
    /// Confirm others' suspicions with a direct ping (cairn's addition; off in memberlist's
    /// profile, whose confirmations come only from members' own failed probes).
    pub confirmation_probes: bool,
    /// Independent confirmations after which the suspicion timeout is `suspicion_min`.
    pub suspicion_confirmations: usize,
    /// Local-health multiplier cap: probe interval and timeout grow up to this many times.
    pub awareness_max: u32,
    pub gossip_interval: Duration,
    pub gossip_nodes: usize,
    /// Full-state exchange with one random member this often (scaled up above 32 members).
    pub push_pull_interval: Duration,
    /// Down members are forgotten by foca after this long (`reconnect_timeout`).
    pub reconnect_timeout: Duration,
    /// Every this long, announce to `RECONNECT_MEMBERS` members believed down: how two sides
    /// of a healed partition find each other again (Serf's reconnect; no other traffic
    /// crosses once each side has declared the other down).
    pub reconnect_interval: Duration,
}

/// Members believed down that each member announces to every `reconnect_interval`.
const RECONNECT_MEMBERS: usize = 2;

impl Timings {
    /// cairn's LAN profile: memberlist's timings (probe 1 s, timeout 500 ms, 3 indirect
    /// checks, gossip every 200 ms to 3 members, push/pull every 30 s), with a suspicion of
    /// 4·max(1, log10 N) s that shrinks to an eighth as independent members confirm it, and
    /// confirmation probes.
    pub fn lan() -> Timings {
        Timings {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 3,
            suspicion_mult: 4.0,
            suspicion_max_ratio: 1.0,
            suspicion_min_ratio: 0.125,
            confirmation_probes: true,
            suspicion_confirmations: 2,
            awareness_max: 8,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            push_pull_interval: Duration::from_secs(30),
            reconnect_timeout: Duration::from_secs(72 * 3600),
            // Serf tries one failed member every 30 s, foca's LAN profile two every 65 s:
            // after a partition heals, half a minute or more with each side listing the
            // other failed (seen in the fault harness's split scenario). A packet to two
            // members every 5 s costs nothing beside the probes.
            reconnect_interval: Duration::from_secs(5),
        }
    }

    /// cairn's WAN profile, for the pool of every datacenter's servers: memberlist's
    /// `DefaultWANConfig` timings (probe 5 s, timeout 3 s, suspicion multiplier 6, gossip
    /// every 500 ms to 4 members, push/pull every 60 s) with the LAN profile's suspicion
    /// rules.
    pub fn wan() -> Timings {
        Timings {
            probe_interval: Duration::from_secs(5),
            probe_timeout: Duration::from_secs(3),
            suspicion_mult: 6.0,
            gossip_interval: Duration::from_millis(500),
            gossip_nodes: 4,
            push_pull_interval: Duration::from_secs(60),
            ..Timings::lan()
        }
    }

    /// memberlist's `DefaultLANConfig` suspicion as Consul runs it, for comparison in the
    /// bench: the timeout starts at 6× 4·max(1, log10 N) s and shrinks to 1× with two
    /// confirmations, which come only from other members' own failed probes.
    pub fn memberlist_lan() -> Timings {
        Timings { suspicion_max_ratio: 6.0, suspicion_min_ratio: 1.0, confirmation_probes: false, ..Timings::lan() }
    }

    /// The longest and shortest suspicion timeouts at `members` members.
    pub fn suspicion_bounds(&self, members: usize) -> (Duration, Duration) {
        let scale = (members.max(1) as f64).log10().max(1.0);
        let base = self.probe_interval.mul_f64(self.suspicion_mult * scale);
        (base.mul_f64(self.suspicion_max_ratio), base.mul_f64(self.suspicion_min_ratio))
    }

    /// The push/pull interval at `members` members: memberlist's scaling, so a large cluster
    /// does not spend its bandwidth on full-state exchanges.
    pub fn push_pull_interval_at(&self, members: usize) -> Duration {
        const THRESHOLD: f64 = 32.0;
        let n = members as f64;
        if n <= THRESHOLD {
            return self.push_pull_interval;
        }
        let mult = ((n.log2() - THRESHOLD.log2()).ceil() + 1.0).max(1.0);
        self.push_pull_interval.mul_f64(mult)
    }

    fn foca_config(&self, members: usize) -> foca::Config {
        let size = NonZeroU32::new(members.clamp(1, u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
        let mut config = foca::Config::new_lan(size);
        config.probe_period = self.probe_interval;
        config.probe_rtt = self.probe_timeout;
        config.num_indirect_probes = NonZeroUsize::new(self.indirect_checks.max(1)).unwrap_or(NonZeroUsize::MIN);
        // cairn schedules the suspect→down timer itself (Lifeguard); foca's value is only a
        // fallback that is never used.
        config.suspect_to_down_after = self.suspicion_bounds(members).0;
        config.remove_down_after = Some(self.reconnect_timeout);
        config.notify_down_members = true;
        config.periodic_announce_to_down_members = Some(foca::PeriodicParams {
            frequency: self.reconnect_interval,
            num_members: NonZeroUsize::new(RECONNECT_MEMBERS).unwrap_or(NonZeroUsize::MIN),
        });
        // Room for the envelope (1 + 12 + 8 + 16 bytes) inside a 1,400-byte datagram.
        config.max_packet_size = NonZeroUsize::new(MAX_FOCA_PACKET).unwrap_or(NonZeroUsize::MIN);
        config.periodic_gossip = Some(foca::PeriodicParams {
            frequency: self.gossip_interval,
            num_members: NonZeroUsize::new(self.gossip_nodes.max(1)).unwrap_or(NonZeroUsize::MIN),
        });
        config.max_transmissions = config.max_transmissions.max(NonZeroU8::new(4).unwrap_or(NonZeroU8::MIN));
        config
    }
}

/// foca's packets at most, so that with the envelope one fits a 1,400-byte datagram.
pub const MAX_FOCA_PACKET: usize = 1360;

/// What cairn adds to foca's gossip, as custom broadcasts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Broadcast {
    /// `by`'s own probe of `of` (that incarnation of it: `boot`) failed.
    Suspect { by: SocketAddr, of: SocketAddr, boot: u64 },
    /// The member left gracefully, or was force-left by an operator.
    Left { addr: SocketAddr, boot: u64 },
    /// A user event (`/v1/event/fire`).
    UserEvent(super::event::UserEvent),
}

impl Invalidates for Broadcast {
    fn invalidates(&self, other: &Self) -> bool {
        self == other
    }
}

/// Broadcasts remembered to tell a new one from a relayed copy; the oldest are forgotten.
const SEEN_BROADCASTS_MAX: usize = 16_384;
/// Confirmations kept for members not (yet) suspected here; when full, new ones are dropped
/// (this member then waits the longer timeout, which is safe).
const EARLY_CONFIRMATIONS_MAX: usize = 4_096;
/// Early confirmations older than this are forgotten: by then the suspicion has ended
/// one way or the other.
const EARLY_CONFIRMATION_TTL: Duration = Duration::from_secs(120);
/// User events waiting for the transport to take them (it does every loop turn); more are
/// dropped here (they still spread to others).
const EVENTS_PENDING_MAX: usize = 1024;
/// Confirmation probes in flight at most; a suspicion heard while full is not confirmed by
/// this member (others still can).
const CONFIRM_PROBES_MAX: usize = 64;
const KIND_FOCA: u8 = 0;
const KIND_CONFIRM_PING: u8 = 1;
const KIND_CONFIRM_ACK: u8 = 2;

/// A direct ping sent to confirm someone else's suspicion.
struct ConfirmProbe {
    of: SocketAddr,
    boot: u64,
    deadline: Instant,
}

/// A timer that fires later than this after its deadline counts against local health.
const TIMER_LATE: Duration = Duration::from_millis(100);

/// Decodes custom broadcasts for foca, passes new ones on and hands them to [`Core`].
struct BroadcastInbox {
    shared: Arc<Mutex<Vec<Broadcast>>>,
    seen: super::seen::RecentSet<Broadcast>,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable custom broadcast: {0}")]
pub struct BroadcastError(String);

impl BroadcastHandler<MemberId> for BroadcastInbox {
    type Key = Broadcast;
    type Error = BroadcastError;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&MemberId>) -> Result<Option<Broadcast>, BroadcastError> {
        let item: Broadcast = postcard::from_bytes(data).map_err(|e| BroadcastError(e.to_string()))?;
        if !self.seen.insert(item.clone()) {
            return Ok(None);
        }
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).push(item.clone());
        Ok(Some(item))
    }
}

type Swim = Foca<MemberId, PostcardCodec, StdRng, BroadcastInbox>;

/// One suspicion this member's own failed probe raised.
struct Suspicion {
    boot: u64,
    started: Instant,
    confirmers: HashSet<SocketAddr>,
    /// Where its timer sits in `Core::timers`.
    timer: (Instant, u64),
}

/// Everything a runtime call may touch besides foca itself.
struct Effects {
    now: Instant,
    own_addr: SocketAddr,
    timers: BTreeMap<(Instant, u64), Timer<MemberId>>,
    timer_seq: u64,
    outbox: Vec<(SocketAddr, Vec<u8>)>,
    health_score: u32,
    suspicions: HashMap<SocketAddr, Suspicion>,
    /// Confirmations of suspicions this member does not hold (yet), with when the first
    /// arrived; forgotten after [`EARLY_CONFIRMATION_TTL`].
    early_confirmations: HashMap<(SocketAddr, u64), (Instant, HashSet<SocketAddr>)>,
    /// Broadcasts to add once foca's call returns.
    to_broadcast: Vec<Broadcast>,
    own_incarnation: u16,
    membership_changed: bool,
    timings: Timings,
    members: usize,
    probes_sent: u64,
    probes_failed: u64,
    suspicions_started: u64,
}

impl Effects {
    fn schedule(&mut self, at: Instant, timer: Timer<MemberId>) -> (Instant, u64) {
        self.timer_seq += 1;
        let key = (at, self.timer_seq);
        self.timers.insert(key, timer);
        key
    }

    fn awareness(&self) -> u32 {
        self.health_score.min(self.timings.awareness_max.saturating_sub(1)) + 1
    }

    fn raise_health_score(&mut self) {
        self.health_score = (self.health_score + 1).min(self.timings.awareness_max.saturating_sub(1));
    }

    fn suspicion_timeout(&self, confirmations: usize) -> Duration {
        let (max, min) = self.timings.suspicion_bounds(self.members);
        let expected = self.timings.suspicion_confirmations.min(self.members.saturating_sub(2));
        if expected == 0 {
            return min;
        }
        let c = confirmations.min(expected) as f64;
        let shrink = (c + 1.0).ln() / (expected as f64 + 1.0).ln();
        max.saturating_sub((max.saturating_sub(min)).mul_f64(shrink)).max(min)
    }

    /// Adds `by` as a confirmation of a suspicion about `of`, moving its timer earlier.
    fn confirm(&mut self, of: SocketAddr, boot: u64, by: SocketAddr) {
        if by == self.own_addr {
            return;
        }
        let Some(s) = self.suspicions.get_mut(&of).filter(|s| s.boot == boot) else {
            let now = self.now;
            self.early_confirmations.retain(|_, (first, _)| now.duration_since(*first) < EARLY_CONFIRMATION_TTL);
            if self.early_confirmations.len() < EARLY_CONFIRMATIONS_MAX
                || self.early_confirmations.contains_key(&(of, boot))
            {
                self.early_confirmations.entry((of, boot)).or_insert_with(|| (now, HashSet::new())).1.insert(by);
            }
            return;
        };
        if !s.confirmers.insert(by) {
            return;
        }
        let (started, old_key, count) = (s.started, s.timer, s.confirmers.len());
        let deadline = (started + self.suspicion_timeout(count)).max(self.now);
        if deadline < old_key.0 {
            if let Some(timer) = self.timers.remove(&old_key) {
                let key = self.schedule(deadline, timer);
                if let Some(s) = self.suspicions.get_mut(&of) {
                    s.timer = key;
                }
            }
        }
    }
}

impl foca::Runtime<MemberId> for Effects {
    fn notify(&mut self, notification: Notification<'_, MemberId>) {
        match notification {
            Notification::Rename(old, new) => {
                self.membership_changed = true;
                if old.node_id != new.node_id {
                    // Node names must be unique: two agents sharing one replace each other
                    // in turn. Consul refuses the second; cairn says which two they are.
                    tracing::warn!(
                        node = %new.name,
                        old_addr = %old.addr,
                        new_addr = %new.addr,
                        "two agents use the same node name with different node IDs; node names must be unique"
                    );
                }
            }
            Notification::MemberUp(_)
            | Notification::MemberDown(_)
            | Notification::Rejoin(_)
            | Notification::Active
            | Notification::Idle => self.membership_changed = true,
            Notification::Defunct => {
                self.membership_changed = true;
                tracing::warn!("this agent was declared failed by the cluster and could not rejoin");
            }
            Notification::ProbeFailed(_, member) => {
                self.probes_failed += 1;
                self.raise_health_score();
                self.to_broadcast.push(Broadcast::Suspect { by: self.own_addr, of: member.addr, boot: member.boot });
            }
            Notification::DataReceived(header) => {
                if matches!(header.message, Message::Ack(_) | Message::ForwardedAck { .. }) {
                    self.health_score = self.health_score.saturating_sub(1);
                }
            }
            Notification::DataSent(header) => {
                self.own_incarnation = header.src_incarnation;
                if matches!(header.message, Message::Ping(_)) {
                    self.probes_sent += 1;
                }
            }
        }
    }

    fn send_to(&mut self, to: MemberId, data: &[u8]) {
        let mut packet = Vec::with_capacity(1 + data.len());
        packet.push(KIND_FOCA);
        packet.extend_from_slice(data);
        self.outbox.push((to.addr, packet));
    }

    fn submit_after(&mut self, event: Timer<MemberId>, after: Duration) {
        match &event {
            Timer::ProbeRandomMember(_) | Timer::SendIndirectProbe { .. } => {
                let at = self.now + after * self.awareness();
                self.schedule(at, event);
            }
            Timer::ChangeSuspectToDown { member_id, .. } => {
                let (addr, boot) = (member_id.addr, member_id.boot);
                // A renewed suspicion of the same incarnation keeps its start and confirmers;
                // any earlier one's timer goes (this one replaces it).
                let (started, mut confirmers) = match self.suspicions.remove(&addr) {
                    Some(s) if s.boot == boot => {
                        self.timers.remove(&s.timer);
                        (s.started, s.confirmers)
                    }
                    earlier => {
                        if let Some(s) = earlier {
                            self.timers.remove(&s.timer);
                        }
                        self.suspicions_started += 1;
                        (self.now, HashSet::new())
                    }
                };
                confirmers.extend(self.early_confirmations.remove(&(addr, boot)).map(|(_, c)| c).unwrap_or_default());
                let at = (started + self.suspicion_timeout(confirmers.len())).max(self.now);
                let timer = self.schedule(at, event);
                self.suspicions.insert(addr, Suspicion { boot, started, confirmers, timer });
            }
            _ => {
                self.schedule(self.now + after, event);
            }
        }
    }
}

/// The full state one member sends another on join and on each push/pull.
#[derive(Debug, Serialize, Deserialize)]
pub struct PushPull {
    pub from: MemberId,
    pub members: Vec<Member<MemberId>>,
    /// Members that left (rather than failed), by address and boot.
    pub left: Vec<(SocketAddr, u64)>,
}

/// Why a packet that passed the envelope was not used.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error(transparent)]
    Swim(foca::Error),
    #[error("malformed gossip payload (kind {0})")]
    Malformed(u8),
}

/// Counted outcomes, for `/v1/agent/self` (`Stats.serf_lan`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CoreStats {
    pub packets_in: u64,
    /// Timers that fired late (the loop was paused or starved).
    pub late_timers: u64,
    /// Lifeguard's local health multiplier minus one (0 = healthy).
    pub health_score: u32,
    /// Direct probes (pings of foca's probe rotation) sent.
    pub probes_sent: u64,
    /// Probes that got no answer, direct or indirect, within the probe timeout.
    pub probes_failed: u64,
    /// Members this agent began to suspect (from its own probe or another member's word).
    pub suspicions: u64,
}

pub struct Core {
    swim: Swim,
    inbox: Arc<Mutex<Vec<Broadcast>>>,
    fx: Effects,
    /// Members known to have left (by address, boot).
    left: HashMap<SocketAddr, u64>,
    /// Force-left members removed from the list with `?prune`.
    pruned: HashSet<SocketAddr>,
    /// Confirmation probes in flight, by nonce.
    confirms: HashMap<u64, ConfirmProbe>,
    /// User events received (or fired here) and not yet taken by the transport.
    events: Vec<UserEvent>,
    /// Lamport clock of user events.
    event_clock: u64,
    confirm_seq: u64,
    leaving: bool,
    stats: CoreStats,
}

impl Core {
    pub fn new(id: MemberId, timings: Timings, seed: u64, now: Instant) -> Core {
        let shared = Arc::new(Mutex::new(Vec::new()));
        let handler =
            BroadcastInbox { shared: Arc::clone(&shared), seen: super::seen::RecentSet::new(SEEN_BROADCASTS_MAX) };
        let own_addr = id.addr;
        let swim = Foca::with_custom_broadcast(
            id,
            timings.foca_config(1),
            StdRng::seed_from_u64(seed),
            PostcardCodec,
            handler,
        );
        Core {
            swim,
            inbox: shared,
            fx: Effects {
                now,
                own_addr,
                timers: BTreeMap::new(),
                timer_seq: 0,
                outbox: Vec::new(),
                health_score: 0,
                suspicions: HashMap::new(),
                early_confirmations: HashMap::new(),
                to_broadcast: Vec::new(),
                own_incarnation: 0,
                membership_changed: true,
                timings,
                members: 1,
                probes_sent: 0,
                probes_failed: 0,
                suspicions_started: 0,
            },
            left: HashMap::new(),
            pruned: HashSet::new(),
            confirms: HashMap::new(),
            events: Vec::new(),
            event_clock: 0,
            confirm_seq: seed,
            leaving: false,
            stats: CoreStats::default(),
        }
    }

    pub fn identity(&self) -> &MemberId {
        self.swim.identity()
    }

    pub fn timings(&self) -> &Timings {
        &self.fx.timings
    }

    /// The local-health multiplier now applied to probe timings (1 = healthy).
    pub fn awareness(&self) -> u32 {
        self.fx.awareness()
    }

    pub fn stats(&self) -> CoreStats {
        CoreStats {
            health_score: self.fx.awareness() - 1,
            probes_sent: self.fx.probes_sent,
            probes_failed: self.fx.probes_failed,
            suspicions: self.fx.suspicions_started,
            ..self.stats
        }
    }

    /// Handles a packet from `from` that passed the envelope.
    pub fn handle_packet(&mut self, now: Instant, from: SocketAddr, payload: &[u8]) -> Result<(), PacketError> {
        self.fx.now = now;
        self.stats.packets_in += 1;
        let result = match payload.split_first() {
            Some((&KIND_FOCA, rest)) => self.swim.handle_data(rest, &mut self.fx).map_err(PacketError::Swim),
            Some((&KIND_CONFIRM_PING, rest)) if rest.len() == 8 => {
                let mut ack = Vec::with_capacity(9);
                ack.push(KIND_CONFIRM_ACK);
                ack.extend_from_slice(rest);
                self.fx.outbox.push((from, ack));
                Ok(())
            }
            Some((&KIND_CONFIRM_ACK, rest)) if rest.len() == 8 => {
                let nonce = u64::from_be_bytes(rest.try_into().unwrap_or_default());
                self.confirms.remove(&nonce);
                Ok(())
            }
            Some((&kind, _)) => Err(PacketError::Malformed(kind)),
            None => Err(PacketError::Malformed(0xff)),
        };
        self.after_call();
        result
    }

    /// When the next timer is due.
    pub fn next_deadline(&self) -> Option<Instant> {
        let timer = self.fx.timers.keys().next().map(|(at, _)| *at);
        let confirm = self.confirms.values().map(|c| c.deadline).min();
        match (timer, confirm) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every timer due at `now`, in deadline order.
    pub fn fire_due(&mut self, now: Instant) {
        self.fx.now = now;
        let expired: Vec<u64> = self.confirms.iter().filter(|(_, c)| c.deadline <= now).map(|(n, _)| *n).collect();
        for nonce in expired {
            let Some(probe) = self.confirms.remove(&nonce) else { continue };
            // Unanswered: confirm the suspicion if it still stands here.
            let still_suspect = self
                .swim
                .iter_membership_state()
                .any(|m| m.id().addr == probe.of && m.id().boot == probe.boot && m.state() == State::Suspect);
            if still_suspect {
                self.fx.to_broadcast.push(Broadcast::Suspect { by: self.fx.own_addr, of: probe.of, boot: probe.boot });
            }
        }
        if !self.fx.to_broadcast.is_empty() {
            self.after_call();
        }
        while let Some(entry) = self.fx.timers.first_entry() {
            let (at, _) = *entry.key();
            if at > now {
                break;
            }
            let timer = entry.remove();
            if now.duration_since(at) > TIMER_LATE {
                self.stats.late_timers += 1;
                self.fx.raise_health_score();
            }
            if let Timer::ChangeSuspectToDown { member_id, .. } = &timer {
                if self.fx.suspicions.get(&member_id.addr).is_some_and(|s| s.boot == member_id.boot) {
                    self.fx.suspicions.remove(&member_id.addr);
                }
            }
            if let Err(e) = self.swim.handle_timer(timer, &mut self.fx) {
                tracing::debug!(error = %e, "gossip timer failed");
            }
            self.after_call();
        }
    }

    /// Applies the state another member sent (join or push/pull).
    pub fn apply_push_pull(&mut self, now: Instant, state: PushPull) -> Result<(), foca::Error> {
        self.fx.now = now;
        for (addr, boot) in &state.left {
            self.record_left(*addr, *boot);
        }
        let mut members = state.members;
        members.push(Member::alive(state.from));
        let result = self.swim.apply_many(members.into_iter(), true, &mut self.fx);
        self.after_call();
        result
    }

    /// This member's full state for a join or push/pull.
    pub fn push_pull_state(&self) -> PushPull {
        PushPull {
            from: self.swim.identity().clone(),
            members: self.swim.iter_membership_state().cloned().collect(),
            left: self.left.iter().map(|(a, b)| (*a, *b)).collect(),
        }
    }

    /// A digest of this member's view: every member (itself included) with its boot,
    /// incarnation and state, and the left set. Two members with the same view have the same
    /// digest, so a periodic push/pull sends the full state only when views differ.
    pub fn digest(&self) -> u64 {
        let mut entries: Vec<(String, u64, u16, u8)> = self
            .swim
            .iter_membership_state()
            .map(|m| (m.id().name.clone(), m.id().boot, m.incarnation(), m.state() as u8))
            .collect();
        let me = self.swim.identity();
        entries.push((me.name.clone(), me.boot, self.fx.own_incarnation, State::Alive as u8));
        entries.sort_unstable();
        let mut left: Vec<(SocketAddr, u64)> = self.left.iter().map(|(a, b)| (*a, *b)).collect();
        left.sort_unstable();
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut feed = |bytes: &[u8]| {
            for b in bytes {
                hash ^= u64::from(*b);
                hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
            }
        };
        for (name, boot, incarnation, state) in &entries {
            feed(name.as_bytes());
            feed(&[0]);
            feed(&boot.to_be_bytes());
            feed(&incarnation.to_be_bytes());
            feed(&[*state]);
        }
        for (addr, boot) in &left {
            feed(addr.to_string().as_bytes());
            feed(&boot.to_be_bytes());
        }
        hash
    }

    /// Announces this member to `dst` over UDP (after a join, so it answers with its view).
    pub fn announce(&mut self, now: Instant, dst: MemberId) {
        self.fx.now = now;
        if let Err(e) = self.swim.announce(dst, &mut self.fx) {
            tracing::debug!(error = %e, "gossip announce failed");
        }
        self.after_call();
    }

    /// Starts a graceful leave: peers record this member as left, then foca says goodbye.
    pub fn leave(&mut self, now: Instant) {
        self.fx.now = now;
        self.leaving = true;
        let id = self.swim.identity().clone();
        self.add_broadcast(Broadcast::Left { addr: id.addr, boot: id.boot });
        // Push the broadcast out at once, then the goodbye.
        if let Err(e) = self.swim.gossip(&mut self.fx) {
            tracing::debug!(error = %e, "gossip before leave failed");
        }
        if let Err(e) = self.swim.leave_cluster(&mut self.fx) {
            tracing::debug!(error = %e, "leave_cluster failed");
        }
        self.fx.membership_changed = true;
    }

    /// Marks a failed member as left everywhere (`force-leave`); with `prune`, also drops it
    /// from this member's list. False if no failed member has that name.
    pub fn force_leave(&mut self, now: Instant, name: &str, prune: bool) -> bool {
        self.fx.now = now;
        let target = self
            .swim
            .iter_membership_state()
            .find(|m| m.id().name == name && m.state() == State::Down)
            .map(|m| m.id().clone());
        let Some(target) = target else {
            return false;
        };
        self.add_broadcast(Broadcast::Left { addr: target.addr, boot: target.boot });
        if prune {
            self.pruned.insert(target.addr);
        }
        self.fx.membership_changed = true;
        true
    }

    /// Fires a user event: it is gossiped to every member and delivered here too.
    pub fn fire_event(&mut self, now: Instant, mut event: UserEvent) {
        self.fx.now = now;
        self.event_clock += 1;
        event.ltime = self.event_clock;
        self.add_broadcast(Broadcast::UserEvent(event));
    }

    /// Takes the user events received since the last call (each once).
    pub fn take_events(&mut self) -> Vec<UserEvent> {
        std::mem::take(&mut self.events)
    }

    /// Takes the packets to send: (destination, foca payload).
    pub fn take_outbox(&mut self) -> Vec<(SocketAddr, Vec<u8>)> {
        std::mem::take(&mut self.fx.outbox)
    }

    /// Whether the member list changed since the last call.
    pub fn take_membership_changed(&mut self) -> bool {
        std::mem::take(&mut self.fx.membership_changed)
    }

    /// Every member this agent knows, itself first.
    pub fn members(&self) -> Vec<MemberInfo> {
        let me = self.swim.identity().clone();
        let mut list =
            vec![MemberInfo { id: me, status: if self.leaving { MemberStatus::Leaving } else { MemberStatus::Alive } }];
        list.extend(self.entries().map(|(id, status)| MemberInfo { id: id.clone(), status }));
        list
    }

    /// Each other member with its status (pruned ones left out), without copying.
    fn entries(&self) -> impl Iterator<Item = (&MemberId, MemberStatus)> + '_ {
        self.swim.iter_membership_state().filter(|m| !self.pruned.contains(&m.id().addr)).map(|m| {
            let id = m.id();
            let status = match m.state() {
                State::Alive | State::Suspect => MemberStatus::Alive,
                State::Down if self.left.get(&id.addr) == Some(&id.boot) => MemberStatus::Left,
                State::Down => MemberStatus::Failed,
            };
            (id, status)
        })
    }

    /// Each other member's address and status (cheap enough for the simulator to call per
    /// member).
    pub fn statuses(&self) -> impl Iterator<Item = (SocketAddr, MemberStatus)> + '_ {
        self.entries().map(|(id, status)| (id.addr, status))
    }

    /// Whom to push/pull with this round: a random active member, and a random failed one
    /// (not left) so that a healed partition finds its way back.
    pub fn push_pull_targets(&self, pick: &mut impl FnMut(usize) -> usize) -> Vec<SocketAddr> {
        let active: Vec<SocketAddr> = self.swim.iter_members().map(|m| m.id().addr).collect();
        let failed: Vec<SocketAddr> =
            self.statuses().filter(|(_, status)| *status == MemberStatus::Failed).map(|(addr, _)| addr).collect();
        let mut targets = Vec::new();
        for list in [active, failed] {
            if !list.is_empty() {
                targets.extend(list.get(pick(list.len())).copied());
            }
        }
        targets
    }

    /// Updates and broadcasts still waiting to be disseminated.
    pub fn backlog(&self) -> usize {
        self.swim.updates_backlog() + self.swim.custom_broadcast_backlog()
    }

    pub fn peer_count(&self) -> usize {
        self.swim.num_members()
    }

    fn add_broadcast(&mut self, item: Broadcast) {
        match postcard::to_allocvec(&item) {
            Ok(bytes) => {
                if let Err(e) = self.swim.add_broadcast(&bytes) {
                    tracing::debug!(error = %e, "gossip broadcast not added");
                }
            }
            Err(e) => tracing::debug!(error = %e, "gossip broadcast not encoded"),
        }
        self.after_call();
    }

    /// Acts on a broadcast seen for the first time (foca's handler filtered repeats).
    fn receive(&mut self, item: Broadcast) {
        match item {
            Broadcast::Suspect { by, of, boot } => {
                self.fx.confirm(of, boot, by);
                self.start_confirm_probe(of, boot, by);
            }
            Broadcast::Left { addr, boot } => self.record_left(addr, boot),
            Broadcast::UserEvent(event) => {
                self.event_clock = self.event_clock.max(event.ltime);
                if self.events.len() < EVENTS_PENDING_MAX {
                    self.events.push(event);
                }
            }
        }
    }

    /// Pings `of` directly to confirm `by`'s suspicion, unless this member already suspects
    /// it (its own timer runs), already probes it, or is `of` itself.
    fn start_confirm_probe(&mut self, of: SocketAddr, boot: u64, by: SocketAddr) {
        let own = self.fx.own_addr;
        if !self.fx.timings.confirmation_probes
            || by == own
            || of == own
            || self.fx.suspicions.get(&of).is_some_and(|s| s.boot == boot)
            || self.confirms.len() >= CONFIRM_PROBES_MAX
            || self.confirms.values().any(|c| c.of == of && c.boot == boot)
        {
            return;
        }
        self.confirm_seq = self.confirm_seq.wrapping_add(1);
        let nonce = self.confirm_seq;
        let deadline = self.fx.now + self.fx.timings.probe_timeout * self.fx.awareness();
        self.confirms.insert(nonce, ConfirmProbe { of, boot, deadline });
        let mut ping = Vec::with_capacity(9);
        ping.push(KIND_CONFIRM_PING);
        ping.extend_from_slice(&nonce.to_be_bytes());
        self.fx.outbox.push((of, ping));
    }

    fn record_left(&mut self, addr: SocketAddr, boot: u64) {
        let newer = self.left.get(&addr).is_none_or(|b| *b < boot);
        if newer {
            self.left.insert(addr, boot);
            self.fx.membership_changed = true;
        }
    }

    /// Work that follows every foca call: broadcasts raised inside it, received broadcasts,
    /// and foca's config as the cluster grows.
    fn after_call(&mut self) {
        // Broadcasts received during the call, and those it raised: adding one of ours puts it
        // in the inbox too (foca hands it to the handler), so loop until both are empty. Ours
        // raise nothing further, so this ends after at most two rounds.
        loop {
            let received: Vec<Broadcast> = std::mem::take(&mut *self.inbox.lock().unwrap_or_else(|e| e.into_inner()));
            let raised = std::mem::take(&mut self.fx.to_broadcast);
            if received.is_empty() && raised.is_empty() {
                break;
            }
            for item in received {
                self.receive(item);
            }
            for item in raised {
                if let Ok(bytes) = postcard::to_allocvec(&item) {
                    let _ = self.swim.add_broadcast(&bytes);
                }
            }
        }
        let members = self.swim.num_members() + 1;
        if members != self.fx.members {
            let old = self.fx.members;
            self.fx.members = members;
            // foca's dissemination count follows the size; re-derive only on a real change of
            // scale (its config is cheap to set but not free).
            if (old as f64).log10().floor() != (members as f64).log10().floor() || old.abs_diff(members) > 8 {
                if let Err(e) = self.swim.set_config(self.fx.timings.foca_config(members)) {
                    tracing::debug!(error = %e, "gossip config not updated");
                }
            }
        }
    }
}
