//! The gossip task: one tokio task owns [`Core`], the UDP socket and the timers; a second
//! accepts TCP streams for joins and push/pull. Both speak through the [`Envelope`].
//!
//! Stream framing (TCP, same port as UDP): `len u32 BE | envelope(postcard(StreamMessage))`,
//! at most [`STREAM_FRAME_MAX`] bytes a frame, every read and write under [`STREAM_TIMEOUT`].
//! A join sends its full state and gets the peer's back. A periodic push/pull sends only a
//! digest of its view; the peer answers `Same`, or its full state, after which the initiator
//! sends its own: in a settled cluster a push/pull costs two small frames, not two copies of
//! the member list (at 10,000 members that is ~1 MB each way).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use serde::{Deserialize, Serialize};

use super::core::{Core, PushPull};
use super::envelope::{Envelope, Refusal};
use super::keyring::{Keyring, KeyringOp, KeyringReply};
use super::member::MemberInfo;
use super::{GossipCommand, GossipError};

/// A push/pull or join frame at most (about 10,000 members' state with room to spare).
pub const STREAM_FRAME_MAX: usize = 16 << 20;
/// Every stream read, write and connect.
pub const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Streams served at once; one more waits for a slot (the peer's timeout bounds the wait).
pub const STREAMS_MAX: usize = 64;
/// A loop turn slower than this is logged: a slow turn delays acks and gets this member
/// suspected.
const TURN_SLOW: Duration = Duration::from_millis(50);
/// How long a leave keeps gossiping so the goodbye spreads.
const LEAVE_PROPAGATE: Duration = Duration::from_millis(1000);
/// Refusals are logged at most this often per kind (key refusals once per peer).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);
/// Peers remembered for once-per-peer key refusal logs.
const KEY_REFUSED_PEERS_MAX: usize = 1024;

/// One frame of a gossip stream.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum StreamMessage {
    /// A joining member's state; answered with `State`.
    Join(PushPull),
    /// A periodic push/pull opens with the initiator's view digest.
    Digest {
        from: super::member::MemberId,
        digest: u64,
    },
    /// The views match: nothing to exchange.
    Same,
    /// A full state.
    State(PushPull),
    /// A keyring operation to apply (`/v1/operator/keyring`); answered with `KeyringReply`.
    Keyring(KeyringOp),
    KeyringReply(KeyringReply),
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Counts refused packets and logs them at a bounded rate.
#[derive(Default)]
pub struct RefusalLog {
    counts: HashMap<Refusal, u64>,
    last_logged: HashMap<Refusal, Instant>,
    key_refused: HashSet<SocketAddr>,
}

impl RefusalLog {
    pub fn record(&mut self, refusal: Refusal, from: SocketAddr) {
        let count = self.counts.entry(refusal).or_default();
        *count += 1;
        let count = *count;
        let key_problem = matches!(refusal, Refusal::BadKey | Refusal::PlainButKeyed | Refusal::SealedButNoKey);
        if key_problem {
            if self.key_refused.len() < KEY_REFUSED_PEERS_MAX && self.key_refused.insert(from) {
                tracing::warn!(peer = %from, reason = refusal.describe(), "gossip from this peer refused");
            }
            return;
        }
        let now = Instant::now();
        if self.last_logged.get(&refusal).is_none_or(|t| now.duration_since(*t) >= REFUSAL_LOG_EVERY) {
            self.last_logged.insert(refusal, now);
            tracing::warn!(peer = %from, reason = refusal.describe(), total = count, "gossip packet dropped");
        }
    }

    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

pub struct Endpoints {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

/// Binds UDP and TCP on one port at `addr` (port 0: any port free for both).
pub async fn bind(addr: SocketAddr) -> Result<Endpoints, GossipError> {
    let bind_error = |source| GossipError::Bind { addr, source };
    for _ in 0..16 {
        let udp = UdpSocket::bind(addr).await.map_err(bind_error)?;
        let bound = udp.local_addr().map_err(bind_error)?;
        match TcpListener::bind(bound).await {
            Ok(tcp) => return Ok(Endpoints { udp, tcp }),
            Err(e) if addr.port() == 0 && e.kind() == std::io::ErrorKind::AddrInUse => continue,
            Err(source) => return Err(GossipError::Bind { addr: bound, source }),
        }
    }
    Err(bind_error(std::io::Error::new(std::io::ErrorKind::AddrInUse, "no port free for both UDP and TCP")))
}

pub(super) struct Shared {
    pub envelope: Mutex<Envelope>,
    pub refusals: Mutex<RefusalLog>,
    pub keyring: Mutex<Keyring>,
    /// This agent's node name, for keyring replies.
    pub node: String,
    /// The gossip task's counters, copied after each turn.
    pub stats: Mutex<super::core::CoreStats>,
}

impl Shared {
    /// Applies a keyring operation here and re-keys the envelope.
    pub fn apply_keyring(&self, op: &KeyringOp) -> KeyringReply {
        let mut keyring = self.keyring.lock().unwrap_or_else(|e| e.into_inner());
        let error = keyring.apply(op).err();
        if error.is_none() && *op != KeyringOp::List {
            self.envelope.lock().unwrap_or_else(|e| e.into_inner()).set_keys(keyring.keys());
            tracing::info!(op = ?KeyringOpName(op), keys = keyring.keys().len(), "gossip keyring changed");
        }
        keyring.reply(&self.node, error)
    }

    fn open(&self, packet: &[u8], from: SocketAddr) -> Option<Vec<u8>> {
        let opened = self.envelope.lock().unwrap_or_else(|e| e.into_inner()).open(packet, now_ms());
        match opened {
            Ok(payload) => Some(payload),
            Err(refusal) => {
                self.refusals.lock().unwrap_or_else(|e| e.into_inner()).record(refusal, from);
                None
            }
        }
    }

    fn seal(&self, payload: &[u8]) -> Vec<u8> {
        self.envelope.lock().unwrap_or_else(|e| e.into_inner()).seal(payload, now_ms())
    }
}

/// The gossip task's channels: its command queue (and a sender for the tasks it spawns), and
/// where it publishes the member list.
pub(super) struct Channels {
    pub commands: mpsc::Receiver<GossipCommand>,
    pub command_tx: mpsc::Sender<GossipCommand>,
    pub members_tx: watch::Sender<Arc<Vec<MemberInfo>>>,
    /// Where received user events go; when full, an event is dropped and logged.
    pub user_events: mpsc::Sender<super::event::UserEvent>,
}

/// Runs the gossip loop until `shutdown`.
pub(super) async fn run(
    mut core: Core,
    endpoints: Endpoints,
    shared: Arc<Shared>,
    channels: Channels,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let Channels { mut commands, command_tx, members_tx, user_events } = channels;
    let Endpoints { udp, tcp } = endpoints;
    let udp = Arc::new(udp);
    tasks.spawn(accept_streams(tcp, Arc::clone(&shared), command_tx.clone(), shutdown.clone()));
    let mut buf = vec![0u8; 65_536];
    let mut leave_done: Option<(Instant, oneshot::Sender<()>)> = None;
    let mut next_push_pull = Instant::now() + core.timings().push_pull_interval;
    core.fire_due(Instant::now());
    loop {
        let deadline = core.next_deadline().unwrap_or_else(|| Instant::now() + Duration::from_secs(1));
        let deadline = leave_done.as_ref().map_or(deadline, |(at, _)| deadline.min(*at)).min(next_push_pull);
        let started;
        tokio::select! {
            // Packets before timers: after a pause, the acks that arrived meanwhile count
            // before the probe timers that would call them missing.
            biased;
            _ = shutdown.cancelled() => break,
            received = udp.recv_from(&mut buf) => {
                started = Instant::now();
                match received {
                    Ok((len, from)) => {
                        if let Some(payload) = shared.open(&buf[..len], from) {
                            if let Err(e) = core.handle_packet(started, from, &payload) {
                                tracing::debug!(peer = %from, error = %e, "gossip packet rejected");
                                shared.refusals.lock().unwrap_or_else(|e| e.into_inner()).record(Refusal::Undecodable, from);
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "gossip receive failed"),
                }
            }
            Some(command) = commands.recv() => {
                started = Instant::now();
                match command {
                    GossipCommand::Join { addrs, reply } => {
                        let state = shared.seal(&encode(&StreamMessage::Join(core.push_pull_state())));
                        tasks.spawn(join(addrs, state, Arc::clone(&shared), command_tx.clone(), reply));
                    }
                    GossipCommand::Exchange { state, reply } => {
                        let from = state.from.clone();
                        if let Err(e) = core.apply_push_pull(started, state) {
                            tracing::debug!(error = %e, "push/pull state not applied");
                        }
                        core.announce(started, from);
                        if let Some(reply) = reply {
                            let _ = reply.send(shared.seal(&encode(&StreamMessage::State(core.push_pull_state()))));
                        }
                    }
                    GossipCommand::Compare { digest, reply } => {
                        let answer = if digest == core.digest() {
                            StreamMessage::Same
                        } else {
                            StreamMessage::State(core.push_pull_state())
                        };
                        let _ = reply.send(shared.seal(&encode(&answer)));
                    }
                    GossipCommand::Leave { reply } => {
                        tracing::info!("leaving the gossip pool");
                        core.leave(started);
                        leave_done = Some((started + LEAVE_PROPAGATE, reply));
                    }
                    GossipCommand::ForceLeave { name, prune, reply } => {
                        let _ = reply.send(core.force_leave(started, &name, prune));
                    }
                    GossipCommand::Fire { event } => core.fire_event(started, event),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => {
                started = Instant::now();
                if leave_done.as_ref().is_some_and(|(at, _)| *at <= started) {
                    if let Some((_, reply)) = leave_done.take() {
                        flush(&mut core, &udp, &shared).await;
                        let _ = reply.send(());
                    }
                }
                if started >= next_push_pull {
                    let interval = core.timings().push_pull_interval_at(core.peer_count() + 1);
                    next_push_pull = started + interval.mul_f64(1.0 + rand::random::<f64>() * 0.1);
                    let targets = core.push_pull_targets(&mut |n| rand::random_range(0..n));
                    if !targets.is_empty() {
                        let opening = StreamMessage::Digest { from: core.identity().clone(), digest: core.digest() };
                        let opening = Arc::new(shared.seal(&encode(&opening)));
                        let state = Arc::new(shared.seal(&encode(&StreamMessage::State(core.push_pull_state()))));
                        for peer in targets {
                            let frames = (Arc::clone(&opening), Arc::clone(&state));
                            tasks.spawn(push_pull(peer, frames, Arc::clone(&shared), command_tx.clone()));
                        }
                    }
                }
            }
        }
        // Due timers fire on every turn, not only when the loop is idle: a stream of packets
        // (a busy pool, or a flood) must not starve probes. They come after the turn's
        // packet, as after a pause.
        core.fire_due(Instant::now());
        flush(&mut core, &udp, &shared).await;
        for event in core.take_events() {
            if user_events.try_send(event).is_err() {
                tracing::warn!("user event dropped: the agent's event queue is full");
            }
        }
        if core.take_membership_changed() {
            members_tx.send_replace(Arc::new(core.members()));
        }
        *shared.stats.lock().unwrap_or_else(|e| e.into_inner()) = core.stats();
        let elapsed = started.elapsed();
        if elapsed > TURN_SLOW {
            tracing::warn!(elapsed_ms = elapsed.as_millis() as u64, "slow gossip turn");
        }
    }
}

async fn flush(core: &mut Core, udp: &UdpSocket, shared: &Shared) {
    for (to, payload) in core.take_outbox() {
        let packet = shared.seal(&payload);
        if let Err(e) = udp.send_to(&packet, to).await {
            tracing::debug!(peer = %to, error = %e, "gossip send failed");
        }
    }
}

fn encode(message: &StreamMessage) -> Vec<u8> {
    // Encoding plain structs into a Vec cannot fail.
    postcard::to_allocvec(message).unwrap_or_default()
}

/// Joins through each address in turn; answers with how many exchanges succeeded.
async fn join(
    addrs: Vec<SocketAddr>,
    sealed_join: Vec<u8>,
    shared: Arc<Shared>,
    commands: mpsc::Sender<GossipCommand>,
    reply: oneshot::Sender<Result<usize, String>>,
) {
    let mut joined = 0;
    let mut errors = Vec::new();
    for addr in addrs {
        let result = async {
            let mut stream = connect(addr).await?;
            write_frame(&mut stream, &sealed_join).await?;
            match read_message(&mut stream, addr, &shared).await? {
                StreamMessage::State(theirs) => Ok(theirs),
                other => Err(format!("unexpected answer to a join: {}", kind(&other))),
            }
        }
        .await;
        match result {
            Ok(theirs) => {
                joined += 1;
                let _ = commands.send(GossipCommand::Exchange { state: theirs, reply: None }).await;
            }
            Err(e) => errors.push(format!("{addr}: {e}")),
        }
    }
    let _ = reply.send(if joined > 0 { Ok(joined) } else { Err(errors.join("; ")) });
}

/// One periodic push/pull as the initiator: digest first, full states only if views differ.
async fn push_pull(
    addr: SocketAddr,
    (sealed_digest, sealed_state): (Arc<Vec<u8>>, Arc<Vec<u8>>),
    shared: Arc<Shared>,
    commands: mpsc::Sender<GossipCommand>,
) {
    let result = async {
        let mut stream = connect(addr).await?;
        write_frame(&mut stream, &sealed_digest).await?;
        match read_message(&mut stream, addr, &shared).await? {
            StreamMessage::Same => Ok(None),
            StreamMessage::State(theirs) => {
                write_frame(&mut stream, &sealed_state).await?;
                Ok(Some(theirs))
            }
            other => Err(format!("unexpected answer to a digest: {}", kind(&other))),
        }
    }
    .await;
    match result {
        Ok(Some(theirs)) => {
            let _ = commands.send(GossipCommand::Exchange { state: theirs, reply: None }).await;
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(peer = %addr, error = %e, "push/pull failed"),
    }
}

/// Applies a keyring operation on a blocking thread: it may write and fsync `keyring.json`.
pub(super) async fn apply_keyring(shared: &Arc<Shared>, op: KeyringOp) -> KeyringReply {
    let (shared, node) = (Arc::clone(shared), shared.node.clone());
    tokio::task::spawn_blocking(move || shared.apply_keyring(&op)).await.unwrap_or_else(|e| KeyringReply {
        node,
        keys: Vec::new(),
        error: Some(format!("keyring task failed: {e}")),
    })
}

/// Sends `op` to the member at `addr` and returns its reply.
pub(super) async fn keyring_request(addr: SocketAddr, op: &KeyringOp, shared: &Shared) -> Result<KeyringReply, String> {
    let mut stream = connect(addr).await?;
    write_frame(&mut stream, &shared.seal(&encode(&StreamMessage::Keyring(op.clone())))).await?;
    match read_message(&mut stream, addr, shared).await? {
        StreamMessage::KeyringReply(reply) => Ok(reply),
        other => Err(format!("unexpected answer to a keyring request: {}", kind(&other))),
    }
}

/// Logs a keyring operation without its key.
struct KeyringOpName<'a>(&'a KeyringOp);

impl std::fmt::Debug for KeyringOpName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            KeyringOp::List => "list",
            KeyringOp::Install(_) => "install",
            KeyringOp::Use(_) => "use",
            KeyringOp::Remove(_) => "remove",
        })
    }
}

fn kind(message: &StreamMessage) -> &'static str {
    match message {
        StreamMessage::Keyring(_) => "keyring",
        StreamMessage::KeyringReply(_) => "keyring reply",
        StreamMessage::Join(_) => "join",
        StreamMessage::Digest { .. } => "digest",
        StreamMessage::Same => "same",
        StreamMessage::State(_) => "state",
    }
}

async fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    tokio::time::timeout(STREAM_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))
}

/// Reads, opens and decodes one frame; refuses another protocol version.
async fn read_message(stream: &mut TcpStream, from: SocketAddr, shared: &Shared) -> Result<StreamMessage, String> {
    let frame = read_frame(stream).await?;
    let payload = shared.open(&frame, from).ok_or("refused by the envelope (wrong encrypt key?)")?;
    let message: StreamMessage = postcard::from_bytes(&payload).map_err(|e| format!("undecodable frame: {e}"))?;
    let sender = match &message {
        StreamMessage::Join(state) | StreamMessage::State(state) => Some(&state.from),
        StreamMessage::Digest { from, .. } => Some(from),
        StreamMessage::Same | StreamMessage::Keyring(_) | StreamMessage::KeyringReply(_) => None,
    };
    if let Some(sender) = sender.filter(|s| s.protocol != super::member::PROTOCOL_VERSION) {
        return Err(format!(
            "peer speaks gossip protocol {}, this agent {}",
            sender.protocol,
            super::member::PROTOCOL_VERSION
        ));
    }
    Ok(message)
}

async fn write_frame(stream: &mut TcpStream, frame: &[u8]) -> Result<(), String> {
    let len = u32::try_from(frame.len()).map_err(|_| "frame too large".to_string())?;
    let mut out = Vec::with_capacity(4 + frame.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(frame);
    tokio::time::timeout(STREAM_TIMEOUT, stream.write_all(&out))
        .await
        .map_err(|_| "write timed out".to_string())?
        .map_err(|e| format!("write failed: {e}"))
}

async fn read_frame(stream: &mut TcpStream) -> Result<Vec<u8>, String> {
    tokio::time::timeout(STREAM_TIMEOUT, async {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await.map_err(|e| format!("read failed: {e}"))?;
        let len = u32::from_be_bytes(len) as usize;
        if len > STREAM_FRAME_MAX {
            return Err(format!("frame of {len} bytes exceeds {STREAM_FRAME_MAX}"));
        }
        let mut frame = vec![0u8; len];
        stream.read_exact(&mut frame).await.map_err(|e| format!("read failed: {e}"))?;
        Ok(frame)
    })
    .await
    .map_err(|_| "read timed out".to_string())?
}

async fn accept_streams(
    listener: TcpListener,
    shared: Arc<Shared>,
    commands: mpsc::Sender<GossipCommand>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(STREAMS_MAX));
    let streams = TaskTracker::new();
    loop {
        let (stream, from) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::debug!(error = %e, "gossip accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(peer = %from, "gossip stream refused: {STREAMS_MAX} in progress");
            continue;
        };
        let (shared, commands) = (Arc::clone(&shared), commands.clone());
        streams.spawn(async move {
            if let Err(e) = serve_stream(stream, from, &shared, &commands).await {
                tracing::debug!(peer = %from, error = %e, "gossip stream failed");
            }
            drop(permit);
        });
    }
    streams.close();
    streams.wait().await;
}

async fn serve_stream(
    mut stream: TcpStream,
    from: SocketAddr,
    shared: &Arc<Shared>,
    commands: &mpsc::Sender<GossipCommand>,
) -> Result<(), String> {
    let stopped = |_| "gossip stopped".to_string();
    match read_message(&mut stream, from, shared).await? {
        StreamMessage::Join(state) | StreamMessage::State(state) => {
            let (reply, answer) = oneshot::channel();
            commands.send(GossipCommand::Exchange { state, reply: Some(reply) }).await.map_err(stopped)?;
            let ours = answer.await.map_err(|_| "gossip stopped".to_string())?;
            write_frame(&mut stream, &ours).await
        }
        StreamMessage::Digest { digest, .. } => {
            let (reply, answer) = oneshot::channel();
            commands.send(GossipCommand::Compare { digest, reply }).await.map_err(stopped)?;
            let ours = answer.await.map_err(|_| "gossip stopped".to_string())?;
            write_frame(&mut stream, &ours).await?;
            // If ours was the full state, the initiator answers with its own; "same" ends it.
            match read_message(&mut stream, from, shared).await {
                Ok(StreamMessage::State(theirs)) => {
                    commands.send(GossipCommand::Exchange { state: theirs, reply: None }).await.map_err(stopped)
                }
                Ok(other) => Err(format!("unexpected frame after a digest: {}", kind(&other))),
                // The initiator closes the stream after "same".
                Err(_) => Ok(()),
            }
        }
        StreamMessage::Keyring(op) => {
            let reply = apply_keyring(shared, op).await;
            write_frame(&mut stream, &shared.seal(&encode(&StreamMessage::KeyringReply(reply)))).await
        }
        other => Err(format!("unexpected frame: {}", kind(&other))),
    }
}
