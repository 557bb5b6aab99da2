//! Storage tests: openraft's own suite against the LMDB store, and the durability order of
//! `append`.

use openraft::testing::{log_id, StoreBuilder, Suite};
use std::future::Future;

use openraft::{Entry, EntryPayload, StorageError};

use super::*;

struct LmdbBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for LmdbBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 64 << 20).expect("open store");
        Ok((dir, LogStore::new(store.clone())?, StateMachine::new(store)))
    }
}

#[test]
fn openraft_storage_suite() -> Result<(), StorageError<NodeId>> {
    Suite::test_all(LmdbBuilder)
}

fn blank(index: u64) -> Entry<TypeConfig> {
    Entry { log_id: log_id(1, 1, index), payload: EntryPayload::Blank }
}

/// Fails if completion is ever reported before the entries are on disk: at the moment
/// `done` runs, the segment files read afresh (a second open of the log) must hold every
/// entry, and a sync must have followed. SIGKILL tests cannot catch this, since the page
/// cache survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_acknowledges_only_entries_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    let log = LogStore::new(store.clone()).expect("log store");
    for round in 0..20u64 {
        let entries: Vec<_> = (round * 10 + 1..=round * 10 + 10).map(blank).collect();
        let (tx, rx) = std::sync::mpsc::channel();
        let probe = store.clone();
        let wal_dir = dir.path().join("raft-log");
        let syncs_before = store.sync_count();
        log.append_then(entries, move |result| {
            result.expect("append succeeded");
            let (reopened, _) = wal::Wal::open(&wal_dir, None, wal::SEGMENT_BYTES, probe.clone()).expect("reopen");
            tx.send((reopened.last_index(), probe.sync_count())).expect("send");
        })
        .await
        .expect("append");
        let (last, syncs) = rx.recv().expect("done was called");
        assert_eq!(last, Some((round + 1) * 10), "completion reported before the entries were written");
        assert!(syncs > syncs_before, "completion reported before the entries were synced");
    }
    // The vote and the state: commits fsync their pages; only the meta page waits for
    // `Store::sync` (NO_META_SYNC).
    let flags = store.env().get_flags().expect("flags");
    let weakening = heed::EnvFlags::NO_SYNC | heed::EnvFlags::MAP_ASYNC | heed::EnvFlags::WRITE_MAP;
    assert_eq!(flags & weakening.bits(), 0, "LMDB environment opened without page sync");
}

/// A data dir from before the log left LMDB: its entries are moved into segment files at
/// the first open, and the table emptied; what openraft reads is unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_kept_in_lmdb_moves_into_segment_files() {
    use openraft::storage::RaftLogStorage;
    use openraft::RaftLogReader;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    let mut wtxn = store.env().write_txn().expect("txn");
    for index in 5..=5000u64 {
        let bytes = serde_json::to_vec(&blank(index)).expect("encode");
        store.raft_log.put(&mut wtxn, &index.to_be_bytes(), &bytes).expect("put");
    }
    let purged = serde_json::to_vec(&log_id(1, 1, 4)).expect("encode");
    store.raft_meta.put(&mut wtxn, b"last_purged", &purged).expect("put");
    store.commit_durably(wtxn).expect("commit");

    let mut log = LogStore::new(store.clone()).expect("log store");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 4)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 5000)));
    let entries = log.try_get_log_entries(4990..).await.expect("read");
    assert_eq!(entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(), (4990..=5000).collect::<Vec<_>>());
    let rtxn = store.env().read_txn().expect("txn");
    assert!(store.raft_log.is_empty(&rtxn).expect("len"), "the LMDB table is emptied");
    drop(rtxn);
    assert!(dir.path().join("raft-log").is_dir() && !dir.path().join("raft-log.moving").exists());
    drop(log);

    let mut log = LogStore::new(store).expect("reopen");
    assert_eq!(log.get_log_state().await.expect("state").last_log_id, Some(log_id(1, 1, 5000)));
    assert_eq!(log.try_get_log_entries(5..6).await.expect("read")[0].log_id, log_id(1, 1, 5));
}

/// A bootstrapped one-server cluster on a fresh store, with a leader.
async fn one_server() -> (tempfile::TempDir, Cluster, CancellationToken) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    let shutdown = CancellationToken::new();
    let config = ClusterConfig {
        node_id: 1,
        datacenter: "dc1".into(),
        advertise: "127.0.0.1:8300".into(),
        bootstrap_expect: 1,
        rpc_tls: None,
        server: true,
        write_queue_max: 1024,
        tuning: RaftTuning::default(),
        agent_tokens: Arc::default(),
    };
    let (_, servers) = tokio::sync::watch::channel(Arc::default());
    let (_, remote) = tokio::sync::watch::channel(Arc::default());
    let cluster = Cluster::start(store, config, None, servers, remote, shutdown.clone(), &TaskTracker::new())
        .await
        .expect("start");
    assert!(cluster.wait_for_leader(Duration::from_secs(10)).await, "no leader");
    (dir, cluster, shutdown)
}

/// Issue 14, defect 1: a write abandoned while it waits (its client went away) must give
/// back its share of the queued bytes, or enough of them make every later write fail with
/// "map full" until restart. Polls `write` once (it queues and waits), then drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_writes_give_back_their_queued_bytes() {
    let (_dir, cluster, shutdown) = one_server().await;
    let big = || Command::KvSet { key: "k".into(), value: Some(vec![7; 256 << 10]), flags: 0, cas: None };
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    for _ in 0..100 {
        let mut write = std::pin::pin!(cluster.write(big()));
        if let std::task::Poll::Ready(r) = write.as_mut().poll(&mut cx) {
            panic!("write answered before Raft ran: {r:?} (map full: abandoned writes leaked their queued bytes)");
        }
        assert!(cluster.queued_bytes() > 0, "the queued write is counted");
    }
    assert_eq!(cluster.queued_bytes(), 0, "abandoned writes leaked their queued bytes");
    // And the store still takes writes.
    let result = cluster.write(big()).await.expect("write after abandoned ones");
    assert_eq!(result, CommandResult::Bool(true));
    shutdown.cancel();
    cluster.shutdown().await;
}

/// The agent's watchdog: `wait_stopped` resolves once the Raft core stops, with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_stopped_resolves_when_raft_stops() {
    let (_dir, cluster, shutdown) = one_server().await;
    let watcher = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.wait_stopped().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!watcher.is_finished(), "a running Raft is not stopped");
    cluster.shutdown().await;
    let why = tokio::time::timeout(Duration::from_secs(10), watcher).await.expect("resolved").expect("task");
    assert!(!why.is_empty());
    // A stopped core reports no leader (`/v1/status/leader` answers "", writes NoLeader).
    assert!(cluster.leader().is_none() && !cluster.knows_leader() && !cluster.is_leader());
    shutdown.cancel();
}

/// One server of an in-process cluster: its own store, RPC listener and shutdown token.
struct TestServer {
    _dir: tempfile::TempDir,
    cluster: Cluster,
    shutdown: CancellationToken,
}

impl TestServer {
    fn has_key(&self, key: &str) -> bool {
        self.cluster.store.read().expect("read view").kv_get(key).expect("kv_get").is_some()
    }

    async fn stop(&self) {
        self.shutdown.cancel();
        self.cluster.shutdown().await;
    }
}

/// Starts `ids.len()` servers with `bootstrap_expect` = that many, each told about all of
/// them through `known` (what gossip would report).
async fn servers(ids: &[NodeId]) -> (Vec<TestServer>, tokio::sync::watch::Sender<Arc<Vec<KnownServer>>>) {
    let mut listeners = Vec::new();
    for _ in ids {
        listeners.push(tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind"));
    }
    let known: Vec<KnownServer> = ids
        .iter()
        .zip(&listeners)
        .map(|(id, l)| KnownServer {
            id: *id,
            name: format!("s{id}"),
            addr: l.local_addr().expect("addr").to_string(),
            status: ServerStatus::Alive,
        })
        .collect();
    let (tx, rx) = tokio::sync::watch::channel(Arc::new(known.clone()));
    let mut started = Vec::new();
    for (server, listener) in known.iter().zip(listeners) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 64 << 20).expect("open store");
        let shutdown = CancellationToken::new();
        let tasks = TaskTracker::new();
        let config = ClusterConfig {
            node_id: server.id,
            datacenter: "dc1".into(),
            advertise: server.addr.clone(),
            bootstrap_expect: ids.len() as u32,
            rpc_tls: None,
            server: true,
            write_queue_max: 1024,
            tuning: RaftTuning::default(),
            agent_tokens: Arc::default(),
        };
        let (_, remote) = tokio::sync::watch::channel(Arc::default());
        let cluster = Cluster::start(store, config, Some(listener), rx.clone(), remote, shutdown.clone(), &tasks)
            .await
            .expect("start");
        started.push(TestServer { _dir: dir, cluster, shutdown });
    }
    (started, tx)
}

/// Waits until every running server in `servers` agrees on one leader; returns its index.
async fn agreed_leader(servers: &[&TestServer]) -> usize {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let leaders: Vec<Option<NodeId>> = servers.iter().map(|s| s.cluster.leader().map(|l| l.node_id)).collect();
        if let Some(Some(leader)) = leaders.first() {
            if leaders.iter().all(|l| *l == Some(*leader)) {
                if let Some(i) = servers.iter().position(|s| s.cluster.config.node_id == *leader) {
                    return i;
                }
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "no agreed leader: {leaders:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn kv_set(key: &str) -> Command {
    Command::KvSet { key: key.into(), value: Some(b"v".to_vec()), flags: 0, cas: None }
}

/// Three servers over loopback RPC: bootstrap-expect forms exactly one cluster with all
/// three voters; a follower's write is forwarded, and is applied on that follower when it
/// returns; a consistent read on the other follower sees it; with the leader stopped the
/// other two elect a new one and keep taking writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_bootstrap_forward_and_fail_over() {
    let (servers, known) = servers(&[21, 22, 23]).await;
    let all: Vec<&TestServer> = servers.iter().collect();
    let leader = agreed_leader(&all).await;
    let (voters, _) = servers[leader].cluster.configuration();
    assert_eq!(voters.iter().filter(|s| s.voter).count(), 3, "one cluster of three voters: {voters:?}");

    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let (f1, f2) = (&servers[followers[0]], &servers[followers[1]]);
    assert_eq!(f1.cluster.write(kv_set("a")).await.expect("forwarded write"), CommandResult::Bool(true));
    assert!(f1.has_key("a"), "a forwarded write is applied on the server that answered before it returns");
    f2.cluster.read_barrier(true).await.expect("consistent read barrier on a follower");
    assert!(f2.has_key("a"), "a consistent read on another follower sees the write");
    f2.cluster.read_barrier(false).await.expect("default read barrier on a follower");

    servers[leader].stop().await;
    known.send_modify(|k| {
        let mut k2 = (**k).clone();
        k2[leader].status = ServerStatus::Failed;
        *k = Arc::new(k2);
    });
    let survivors = [f1, f2];
    let new_leader = agreed_leader(&survivors).await;
    let other = survivors[1 - new_leader];
    assert_eq!(other.cluster.write(kv_set("b")).await.expect("write after failover"), CommandResult::Bool(true));
    survivors[new_leader].cluster.read_barrier(true).await.expect("barrier");
    assert!(survivors.iter().all(|s| s.has_key("a") && s.has_key("b")), "both survivors hold every acknowledged write");
    // Two of three voters remain: the failed one stays a voter until a replacement is healthy.
    let (voters, _) = survivors[new_leader].cluster.configuration();
    assert_eq!(voters.iter().filter(|s| s.voter).count(), 3);
    for s in survivors {
        s.stop().await;
    }
}

/// A connection from another datacenter's server carries status, HTTP and DNS requests
/// only: a vote (or any Raft request) over it is refused, and a hello naming another
/// datacenter than this server's is refused at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wan_connection_cannot_reach_raft() {
    use super::rpc::{Connection, Request, Response, Route, RpcError};
    let (servers, _known) = servers(&[31]).await;
    let server = &servers[0];
    agreed_leader(&[server]).await;
    let addr = server.cluster.config.advertise.clone();
    let term = server.cluster.raft.metrics().borrow().current_term;
    let route = |remote: &str| Route {
        tls: None,
        cluster: "dc9".into(),
        from: 99,
        to: 31,
        addr: addr.clone(),
        remote: Some(remote.into()),
    };
    let mut wan = Connection::open(&route("dc1")).await.expect("a WAN hello for this datacenter is accepted");
    let (status, _) = wan.call(&Request::Status, &[], Duration::from_secs(5)).await.expect("status");
    assert!(matches!(status, Response::Status { initialized: true }), "{status:?}");
    let vote = Request::Vote(openraft::raft::VoteRequest::new(openraft::Vote::new(99, 99), None));
    let refused = wan.call(&vote, &[], Duration::from_secs(5)).await;
    assert!(
        matches!(&refused, Err(RpcError::Refused(why)) if why.contains("across datacenters")),
        "a vote from another datacenter: {refused:?}"
    );
    let refused = Connection::open(&route("dc2")).await.map(|_| ());
    assert!(
        matches!(&refused, Err(RpcError::Connect { reason, .. }) if reason.contains("meant this for datacenter \"dc2\"")),
        "a hello for another datacenter: {refused:?}"
    );
    assert_eq!(server.cluster.raft.metrics().borrow().current_term, term, "the refused vote changed nothing");
}

async fn machine_with(keys: &[&str]) -> (tempfile::TempDir, Store, StateMachine) {
    use openraft::storage::RaftStateMachine;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    let mut sm = StateMachine::new(store.clone());
    let entries: Vec<Entry<TypeConfig>> = keys
        .iter()
        .zip(1..)
        .map(|(key, index)| Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Normal(Proposal {
                v: Proposal::VERSION,
                commands: vec![kv_set(key)],
                leader_time_ms: None,
            }),
        })
        .collect();
    sm.apply(entries).await.expect("apply");
    (dir, store, sm)
}

fn keys_of(store: &Store) -> Vec<String> {
    store.read().expect("read").kv_list("").expect("list").into_iter().map(|e| e.key).collect()
}

/// A snapshot goes from one state machine's file to another's as openraft sends it, chunk
/// by chunk at offsets, and is installed from the file; a damaged one is refused with the
/// state untouched. The received file becomes the current snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_streams_from_file_to_file_and_damage_is_refused() {
    use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine};
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
    let (_a_dir, _a_store, mut a) = machine_with(&["x/1", "x/2", "x/3"]).await;
    let built = a.get_snapshot_builder().await.build_snapshot().await.expect("build");
    let (b_dir, b_store, mut b) = machine_with(&["old"]).await;
    let read_all = |mut from: Box<tokio::fs::File>, damage: bool| async move {
        let mut bytes = Vec::new();
        from.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
        from.read_to_end(&mut bytes).await.expect("read");
        if damage {
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
        }
        bytes
    };
    for damage in [true, false] {
        let current = a.get_current_snapshot().await.expect("current").expect("a snapshot");
        assert_eq!(current.meta, built.meta);
        let bytes = read_all(current.snapshot, damage).await;
        let mut receiving = b.begin_receiving_snapshot().await.expect("begin");
        for (i, chunk) in bytes.chunks(7).enumerate() {
            receiving.seek(std::io::SeekFrom::Start(i as u64 * 7)).await.expect("seek");
            receiving.write_all(chunk).await.expect("write");
        }
        let installed = b.install_snapshot(&built.meta, receiving).await;
        if damage {
            assert!(installed.is_err(), "a damaged snapshot was installed");
            assert_eq!(keys_of(&b_store), ["old"], "a refused snapshot changed the state");
        } else {
            installed.expect("install");
            assert_eq!(keys_of(&b_store), ["x/1", "x/2", "x/3"]);
        }
    }
    let current = b.get_current_snapshot().await.expect("current").expect("b keeps the received snapshot");
    assert_eq!(current.meta, built.meta);
    let lmdb = b_dir.path();
    let names: Vec<String> = std::fs::read_dir(lmdb)
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("snapshot"))
        .collect();
    assert_eq!(names.len(), 2, "snapshot.json and one data file: {names:?}");
}

/// A snapshot in the one-file layout of earlier versions is converted when first read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legacy_snapshot_file_is_converted() {
    use openraft::storage::RaftStateMachine;
    let (dir, store, mut sm) = machine_with(&["k"]).await;
    let (data, _) = store.snapshot(&[]).expect("snapshot");
    let meta = openraft::SnapshotMeta::<NodeId, BasicNode> {
        last_log_id: Some(log_id(1, 1, 1)),
        last_membership: Default::default(),
        snapshot_id: "1-1-1".into(),
    };
    let meta_json = serde_json::to_vec(&meta).expect("meta");
    let legacy = [&(meta_json.len() as u64).to_be_bytes()[..], &meta_json, &data].concat();
    std::fs::write(dir.path().join("snapshot.bin"), legacy).expect("legacy file");
    let mut current = sm.get_current_snapshot().await.expect("read").expect("converted");
    assert_eq!(current.meta, meta);
    let mut read = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut *current.snapshot, &mut read).await.expect("read data");
    assert_eq!(read, data);
    assert!(!dir.path().join("snapshot.bin").exists());
    assert!(dir.path().join("snapshot.json").exists());
}

fn pending(key: &str) -> PendingWrite {
    PendingWrite { command: kv_set(key), token: None, reply: oneshot::channel().0 }
}

/// The proposer's gathering: a lone writer never waits; after a proposal of four writes the
/// next one waits for four, and goes as soon as they are there; it waits no longer than twice
/// what the last proposal took, nor than `GATHER_WAIT_MAX`. On a paused clock: time moves
/// only when every task waits, so the timings are exact.
#[tokio::test(start_paused = true)]
async fn a_proposal_gathers_the_writes_the_last_one_answered() {
    let one = LastProposal { writes: 1, took: Duration::from_secs(5) };
    assert_eq!(one.gather_wait(1), None, "one sequential writer never waits");
    assert_eq!(LastProposal::default().gather_wait(1), None);
    let four = LastProposal { writes: 4, took: Duration::from_secs(5) };
    assert_eq!(four.gather_wait(4), None);
    assert_eq!(four.gather_wait(1), Some(GATHER_WAIT_MAX), "bounded by GATHER_WAIT_MAX");
    let quick = LastProposal { writes: 4, took: Duration::from_millis(3) };
    assert_eq!(quick.gather_wait(2), Some(Duration::from_millis(6)), "bounded by twice the last proposal");

    // The other writes arrive 2 ms later: one proposal of four, before the bound.
    let (tx, mut rx) = mpsc::channel(16);
    tx.send(pending("a")).await.expect("send");
    let late = tx.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(2)).await;
        for key in ["b", "c", "d", "e"] {
            late.send(pending(key)).await.expect("send");
        }
    });
    let slow = LastProposal { writes: 4, took: Duration::from_secs(5) };
    let started = Instant::now();
    let batch = next_batch(&mut rx, slow).await.expect("a batch");
    assert_eq!(batch.len(), 4, "waits for as many writes as the last proposal carried, no more");
    assert_eq!(started.elapsed(), Duration::from_millis(2), "goes as soon as they are there");
    let rest = next_batch(&mut rx, LastProposal { writes: 4, took: Duration::ZERO }).await.expect("the fifth");
    assert_eq!(rest.len(), 1, "a zero wait takes what is queued");

    // Nobody comes back: the wait ends at the bound with what there is.
    tx.send(pending("f")).await.expect("send");
    let started = Instant::now();
    let batch = next_batch(&mut rx, quick).await.expect("a batch");
    assert_eq!(batch.len(), 1);
    assert_eq!(started.elapsed(), Duration::from_millis(6), "waits twice as long as the last proposal took");
    tx.send(pending("g")).await.expect("send");
    let started = Instant::now();
    next_batch(&mut rx, four).await.expect("a batch");
    assert_eq!(started.elapsed(), GATHER_WAIT_MAX, "and never longer than GATHER_WAIT_MAX");
    drop(tx);
    assert!(next_batch(&mut rx, four).await.is_none(), "a closed queue ends the proposer");
}

/// The leader lease after a pause: a metrics snapshot published just before the whole
/// process stopped (SIGSTOP, a VM pause) says "acknowledged 10 ms ago"; read after the pause
/// it must not renew the lease, or the old leader answers default reads from its old state
/// (the fault harness's leader-sigstop found it). A fresh snapshot renews it again.
#[test]
fn a_snapshot_read_after_a_pause_does_not_renew_the_lease() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("runtime");
    runtime.block_on(async {
        let mut acked = openraft::RaftMetrics::<NodeId, BasicNode>::new_initial(1);
        acked.millis_since_quorum_ack = Some(10);
        let (tx, rx) = watch::channel(acked.clone());
        let clock = Arc::new(QuorumClock::default());
        let shutdown = CancellationToken::new();
        let tracker = tokio::spawn(Arc::clone(&clock).track(rx, shutdown.clone()));
        let lease = Duration::from_millis(800);
        async fn renewed(clock: &QuorumClock, lease: Duration) -> bool {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !clock.acked_within(lease) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            clock.acked_within(lease)
        }
        assert!(renewed(&clock, lease).await, "a fresh snapshot renews the lease");

        tx.send(acked.clone()).expect("send");
        // The only runtime thread stops for a second, as a stopped process does.
        std::thread::sleep(Duration::from_secs(1));
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(!clock.acked_within(lease), "a snapshot from before the pause renewed the lease");

        tx.send(acked).expect("send");
        assert!(renewed(&clock, lease).await, "a snapshot published after the pause renews it");
        shutdown.cancel();
        tracker.await.expect("tracker");
    });
}
