//! Unit tests of the store: apply semantics, indexes, watches, snapshots, record bytes.

use super::*;
use crate::model::{
    CheckDefinition, CheckStatus, Command, CommandResult, DeregisterRequest, KvEntry, RegisterRequest,
    ServiceDefinition, TxnKvOp, TxnKvVerb, Weights,
};

fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("open store");
    (dir, store)
}

fn apply(store: &Store, index: u64, commands: Vec<Command>) -> Vec<CommandResult> {
    let batch = [AppliedBatch { index, commands: &commands, leader_time_ms: Some(index * 1000) }];
    store.apply(&batch, &[]).expect("apply").remove(0)
}

fn register(node: &str, service: Option<(&str, &str)>, checks: Vec<CheckDefinition>) -> Command {
    Command::Register(Box::new(RegisterRequest {
        id: String::new(),
        node: node.into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        tagged_addresses: Default::default(),
        node_meta: Default::default(),
        service: service.map(|(id, name)| ServiceDefinition {
            id: id.into(),
            service: name.into(),
            tags: vec!["t".into()],
            address: String::new(),
            meta: Default::default(),
            port: 80,
            weights: Weights::default(),
            enable_tag_override: false,
            tagged_addresses: Default::default(),
        }),
        checks,
        skip_node_update: false,
    }))
}

fn check(id: &str, service_id: &str, status: CheckStatus) -> CheckDefinition {
    CheckDefinition {
        check_id: id.into(),
        name: id.into(),
        status,
        notes: String::new(),
        output: String::new(),
        service_id: service_id.into(),
        check_type: String::new(),
    }
}

fn kv_set(key: &str, value: &str, cas: Option<u64>) -> Command {
    Command::KvSet { key: key.into(), value: Some(value.as_bytes().to_vec()), flags: 0, cas }
}

#[test]
fn register_then_health_then_deregister() {
    let (_dir, store) = open();
    apply(&store, 5, vec![register("n1", Some(("web1", "web")), vec![check("c1", "web1", CheckStatus::Warning)])]);
    let view = store.read().expect("read");
    let health = view.service_health("web").expect("health");
    assert_eq!(health.len(), 1);
    assert_eq!(health[0].service.create_index, 5);
    assert_eq!(health[0].checks[0].service_name, "web");
    assert_eq!(health[0].status(), CheckStatus::Warning);
    assert_eq!(view.service_index("web").expect("index"), 5);
    assert_eq!(view.table_index(Table::Services).expect("index"), 5);
    drop(view);

    apply(
        &store,
        6,
        vec![Command::Deregister(DeregisterRequest {
            node: "n1".into(),
            service_id: Some("web1".into()),
            check_id: None,
        })],
    );
    let view = store.read().expect("read");
    assert!(view.service_health("web").expect("health").is_empty());
    assert!(view.node_checks("n1").expect("checks").is_empty(), "service checks go with it");
    assert_eq!(view.service_index("web").expect("index"), 6);
}

/// Names that come and go leave no index row behind (the table would grow forever), and a
/// gone name's index never goes backwards: it is the table's, which its removal moved.
#[test]
fn index_rows_of_gone_names_are_deleted_and_their_index_stays_monotonic() {
    let (_dir, store) = open();
    let rows = |store: &Store| {
        let rtxn = store.env().read_txn().expect("txn");
        store.sm.indexes.len(&rtxn).expect("len")
    };
    apply(&store, 2, vec![register("keep", Some(("k1", "kept")), vec![])]);
    let baseline = rows(&store);
    let mut index = 3;
    for i in 0..50 {
        let node = format!("n{i}");
        apply(&store, index, vec![register(&node, Some(("s1", &format!("svc{i}"))), vec![])]);
        apply(
            &store,
            index + 1,
            vec![Command::Deregister(DeregisterRequest { node, service_id: None, check_id: None })],
        );
        let view = store.read().expect("read");
        assert_eq!(view.service_index(&format!("svc{i}")).expect("index"), index + 1);
        assert_eq!(view.catalog_node_index(&format!("n{i}")).expect("index"), index + 1);
        index += 2;
    }
    assert_eq!(rows(&store), baseline, "index rows of deregistered names");
    // A service removed instance by instance keeps its row until the last one goes.
    apply(&store, 200, vec![register("a", Some(("w1", "web")), vec![]), register("b", Some(("w2", "web")), vec![])]);
    let dereg = |node: &str, id: &str| {
        Command::Deregister(DeregisterRequest { node: node.into(), service_id: Some(id.into()), check_id: None })
    };
    apply(&store, 201, vec![dereg("a", "w1")]);
    apply(&store, 202, vec![kv_set("elsewhere", "x", None)]);
    assert_eq!(store.read().expect("read").service_index("web").expect("index"), 201);
    apply(&store, 203, vec![dereg("b", "w2")]);
    apply(&store, 204, vec![register("c", Some(("x1", "other")), vec![])]);
    let view = store.read().expect("read");
    assert_eq!(view.service_index("web").expect("index"), 204, "a gone name reports the table's index");
    assert_eq!(view.service_index("never-was").expect("index"), 204);
    drop(view);
    apply(&store, 205, vec![register("a", Some(("w1", "web")), vec![])]);
    assert_eq!(store.read().expect("read").service_index("web").expect("index"), 205, "back with a new row");
}

#[test]
fn unchanged_registration_keeps_indexes() {
    let (_dir, store) = open();
    apply(&store, 5, vec![register("n1", Some(("web1", "web")), vec![])]);
    apply(&store, 9, vec![register("n1", Some(("web1", "web")), vec![])]);
    let view = store.read().expect("read");
    assert_eq!(view.service_index("web").expect("index"), 5, "same data must not bump the index");
    assert_eq!(view.node("n1").expect("node").expect("exists").modify_index, 5);
}

#[test]
fn check_for_unknown_service_is_rejected_without_trace() {
    let (_dir, store) = open();
    let results = apply(&store, 3, vec![register("n1", None, vec![check("c", "nope", CheckStatus::Passing)])]);
    assert!(matches!(&results[0], CommandResult::Rejected(why) if why.contains("Unknown service ID")));
    assert!(store.read().expect("read").node("n1").expect("node").is_none(), "rejected command left a node behind");
}

#[test]
fn kv_cas_and_tombstone_indexes() {
    let (_dir, store) = open();
    assert_eq!(apply(&store, 2, vec![kv_set("a/b", "1", Some(0))]), vec![CommandResult::Bool(true)]);
    assert_eq!(apply(&store, 3, vec![kv_set("a/b", "2", Some(0))]), vec![CommandResult::Bool(false)]);
    assert_eq!(apply(&store, 4, vec![kv_set("a/b", "3", Some(2))]), vec![CommandResult::Bool(true)]);
    let view = store.read().expect("read");
    let entry = view.kv_get("a/b").expect("get").expect("exists");
    assert_eq!((entry.create_index, entry.modify_index, entry.value.as_deref()), (2, 4, Some(&b"3"[..])));
    drop(view);
    apply(&store, 7, vec![Command::KvDelete { key: "a/".into(), recurse: true, cas: None }]);
    let view = store.read().expect("read");
    assert!(view.kv_get("a/b").expect("get").is_none());
    assert_eq!(view.kv_get_indexed("a/b").expect("index").1, 7, "a deleted key reports its deletion index");
    assert_eq!(view.kv_prefix_index("a/").expect("index"), 7);
    assert_eq!(view.kv_get_indexed("never").expect("index").1, 0);
}

#[test]
fn txn_rolls_back_as_a_whole() {
    let (_dir, store) = open();
    apply(&store, 2, vec![kv_set("k", "v", None)]);
    let op = |verb, key: &str, index| TxnKvOp {
        verb,
        key: key.into(),
        value: Some(b"x".to_vec()),
        flags: 0,
        index,
        session: None,
    };
    let results =
        apply(&store, 3, vec![Command::Txn { ops: vec![op(TxnKvVerb::Set, "new", 0), op(TxnKvVerb::Cas, "k", 99)] }]);
    match &results[0] {
        CommandResult::TxnRolledBack(errors) => {
            assert_eq!(errors.len(), 1);
            assert_eq!(errors[0].op_index, 1);
            assert_eq!(errors[0].what, "failed to set key \"k\", index is stale");
        }
        other => panic!("expected rollback, got {other:?}"),
    }
    assert!(store.read().expect("read").kv_get("new").expect("get").is_none(), "rolled-back set was kept");
}

#[tokio::test]
async fn watches_wake_only_touched_topics() {
    let (_dir, store) = open();
    let mut key_sub = store.watches().subscribe(Topic::Kv("a/b".into()));
    let mut prefix_sub = store.watches().subscribe(Topic::KvPrefix("a/".into()));
    let mut other_sub = store.watches().subscribe(Topic::Kv("z".into()));
    apply(&store, 4, vec![kv_set("a/b", "1", None)]);
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), key_sub.changed()).await;
    assert_eq!(woke.expect("key watcher woke"), 4);
    let woke = tokio::time::timeout(std::time::Duration::from_secs(5), prefix_sub.changed()).await;
    assert_eq!(woke.expect("prefix watcher woke"), 4);
    let slept = tokio::time::timeout(std::time::Duration::from_millis(50), other_sub.changed()).await;
    assert!(slept.is_err(), "an unrelated write woke a watcher");
    drop((key_sub, prefix_sub, other_sub));
    assert_eq!(store.watches().topic_count(), 0, "dropped subscriptions must unregister");
}

#[test]
fn snapshot_round_trip_and_damage_detected() {
    let (_dir, store) = open();
    apply(&store, 2, vec![kv_set("k", "v", None), register("n1", Some(("web1", "web")), vec![])]);
    let (bytes, _) = store.snapshot(&[]).expect("snapshot");
    let (_dir2, other) = open();
    other.restore_snapshot(&bytes[..], bytes.len() as u64, &[], 2).expect("restore");
    let view = other.read().expect("read");
    assert_eq!(view.kv_get("k").expect("get").expect("exists").value.as_deref(), Some(&b"v"[..]));
    assert_eq!(view.service_instances("web").expect("instances").len(), 1);
    drop(view);
    // Another state, damaged in the middle or in its checksum (found only once every record
    // is in the transaction): refused, and the state is what it was.
    let (_dir3, third) = open();
    apply(&third, 2, vec![kv_set("other", "x", None)]);
    let (other_bytes, _) = third.snapshot(&[]).expect("snapshot");
    for at in [other_bytes.len() / 2, other_bytes.len() - 1] {
        let mut damaged = other_bytes.clone();
        damaged[at] ^= 0xff;
        let restored = other.restore_snapshot(&damaged[..], damaged.len() as u64, &[], 3);
        assert!(matches!(restored, Err(StoreError::BadSnapshot(_))), "{restored:?}");
        let view = other.read().expect("read");
        assert!(view.kv_get("k").expect("get").is_some(), "a refused snapshot changed the state");
        assert!(view.kv_get("other").expect("get").is_none(), "a refused snapshot changed the state");
    }
}

/// Prepared queries: created and replaced (create index kept), names unique case aside,
/// deleted once, and carried by snapshots.
#[test]
fn prepared_queries_are_stored_renamed_deleted_and_snapshotted() {
    use crate::model::{PreparedQuery, QueryService};
    let (_dir, store) = open();
    let query = |id: &str, name: &str| PreparedQuery {
        id: id.into(),
        name: name.into(),
        service: QueryService { service: "web".into(), ..Default::default() },
        ..Default::default()
    };
    let set = |q: PreparedQuery| Command::PreparedQuerySet(Box::new(q));
    assert_eq!(apply(&store, 2, vec![set(query("q1", "web"))]), [CommandResult::Done]);
    assert_eq!(apply(&store, 3, vec![set(query("q1", "web-renamed"))]), [CommandResult::Done]);
    let stored = store.read().expect("read").prepared_query("q1").expect("row").expect("exists");
    assert_eq!((stored.name.as_str(), stored.create_index, stored.modify_index), ("web-renamed", 2, 3));
    let clash = apply(&store, 4, vec![set(query("q2", "WEB-RENAMED"))]);
    assert!(matches!(&clash[0], CommandResult::Rejected(why) if why.contains("aliases")), "{clash:?}");
    let invalid = apply(&store, 5, vec![set(PreparedQuery { id: "q3".into(), ..Default::default() })]);
    assert!(matches!(&invalid[0], CommandResult::Rejected(_)), "{invalid:?}");
    assert_eq!(apply(&store, 6, vec![set(query("q2", ""))]), [CommandResult::Done]);
    let view = store.read().expect("read");
    assert_eq!(view.table_index(Table::PreparedQueries).expect("index"), 6);
    assert_eq!(view.resolve_prepared_query("Web-Renamed").expect("resolve").map(|q| q.id), Some("q1".into()));
    assert_eq!(view.resolve_prepared_query("q2").expect("resolve").map(|q| q.id), Some("q2".into()));
    drop(view);

    let (bytes, _) = store.snapshot(&[]).expect("snapshot");
    let (_dir2, other) = open();
    other.restore_snapshot(&bytes[..], bytes.len() as u64, &[], 6).expect("restore");
    assert_eq!(other.read().expect("read").prepared_queries().expect("list").len(), 2);

    let delete = |id: &str| Command::PreparedQueryDelete { id: id.into() };
    assert_eq!(
        apply(&store, 7, vec![delete("q1"), delete("q1")]),
        [CommandResult::Bool(true), CommandResult::Bool(false)]
    );
    assert_eq!(store.read().expect("read").prepared_queries().expect("list").len(), 1);
}

/// Pins the stored bytes of a KV record (see `codec::encode_kv`).
#[test]
fn record_bytes_are_pinned() {
    let entry = KvEntry {
        key: "k".into(),
        flags: 1,
        value: Some(b"v".to_vec()),
        lock_index: 0,
        session: Some("s".into()),
        create_index: 2,
        modify_index: 3,
    };
    let bytes = codec::encode_kv(&entry);
    let mut expected = Vec::new();
    for word in [1u64, 2, 3, 0] {
        expected.extend_from_slice(&word.to_be_bytes());
    }
    expected.extend_from_slice(&[0, 1, b's', b'v']);
    assert_eq!(bytes, expected);
    assert_eq!(codec::decode_kv(b"k", &bytes).expect("decode"), entry);
    assert!(codec::decode_kv(b"k", &bytes[..20]).is_err());
}

/// What DNS would answer from, in a comparable form.
fn directory_contents(store: &Store) -> Vec<(String, String, String, u16, CheckStatus)> {
    let directory = store.directory();
    let mut out: Vec<_> = directory
        .services
        .iter()
        .flat_map(|(name, instances)| {
            instances.values().map(move |i| (name.clone(), i.node.name.clone(), i.service_id.clone(), i.port, i.status))
        })
        .collect();
    out.sort();
    out
}

/// The directory kept up to date batch by batch equals one rebuilt from LMDB, through
/// registrations, moves between names of different case, health changes and removals.
#[test]
fn refreshed_directory_equals_a_rebuilt_one() {
    let (_dir, store) = open();
    for (round, index) in (0..6u64).zip(2..) {
        let mut batch = Vec::new();
        for n in 0..8u64 {
            let node = format!("n{}", (n * 3 + round) % 8);
            let name = if (n + round) % 3 == 0 { "Web" } else { "web" };
            let status = if (n + round) % 4 == 0 { CheckStatus::Critical } else { CheckStatus::Passing };
            let id = format!("s{}", n % 3);
            batch.push(register(&node, Some((&id, name)), vec![check(&format!("c-{id}"), &id, status)]));
        }
        if round % 2 == 1 {
            let node = format!("n{round}");
            batch.push(Command::Deregister(DeregisterRequest { node, service_id: Some("s1".into()), check_id: None }));
        }
        if round == 4 {
            batch.push(Command::Deregister(DeregisterRequest { node: "n2".into(), service_id: None, check_id: None }));
        }
        apply(&store, index, batch);
        let refreshed = directory_contents(&store);
        assert!(!refreshed.is_empty());
        store.rebuild_directory().expect("rebuild");
        assert_eq!(refreshed, directory_contents(&store), "round {round}");
    }
}

#[test]
fn directory_follows_every_applied_batch() {
    let (_dir, store) = open();
    assert!(store.directory().service("web").is_none());
    apply(&store, 3, vec![register("n1", Some(("web1", "web")), vec![check("c1", "web1", CheckStatus::Passing)])]);
    let directory = store.directory();
    let web = directory.service("WEB").expect("case-insensitive lookup");
    let first = web.values().next().expect("one");
    assert_eq!((web.len(), first.status, first.effective_address()), (1, CheckStatus::Passing, "10.0.0.1"));
    assert_eq!(directory.index, 3);

    // A node check going critical changes the instance's health without naming the service.
    apply(&store, 4, vec![register("n1", None, vec![check("node-down", "", CheckStatus::Critical)])]);
    assert_eq!(
        store.directory().service("web").expect("web").values().next().expect("one").status,
        CheckStatus::Critical
    );

    // Names that differ only in case are one DNS name.
    apply(&store, 5, vec![register("n2", Some(("Web2", "Web")), vec![])]);
    assert_eq!(store.directory().service("web").expect("web").len(), 2);
    assert_eq!(store.directory().node("N2").expect("node").name, "n2");

    apply(
        &store,
        6,
        vec![Command::Deregister(DeregisterRequest { node: "n1".into(), service_id: None, check_id: None })],
    );
    let directory = store.directory();
    assert_eq!(directory.service("web").expect("web").len(), 1);
    assert!(directory.node("n1").is_none());
    drop(directory);

    // A reopened store rebuilds the same view from LMDB.
    let path = store.env().path().to_path_buf();
    drop(store);
    let reopened = Store::open(&path, 64 << 20).expect("reopen");
    assert_eq!(reopened.directory().service("web").expect("web").values().next().expect("one").service_id, "Web2");
}

#[test]
fn node_names_are_case_insensitive() {
    let (_dir, store) = open();
    apply(&store, 2, vec![register("web", None, vec![])]);
    let results = apply(&store, 3, vec![register("WEB", None, vec![])]);
    assert!(matches!(&results[0], CommandResult::Rejected(why) if why.contains("differs only in case")), "{results:?}");
    assert!(store.read().expect("read").node("WEB").expect("node").is_none());
    // Updating the node under its own spelling still works.
    assert_eq!(apply(&store, 4, vec![register("web", None, vec![])]), vec![CommandResult::Done]);
    // Only a whole-name case variant conflicts: not a longer or shorter name, not another
    // character; digits and punctuation have one case.
    let many: Vec<Command> = (0..2_000).map(|i| register(&format!("Host-{i}.dc"), None, vec![])).collect();
    assert!(apply(&store, 5, many).iter().all(|r| *r == CommandResult::Done));
    let results =
        apply(&store, 6, vec![register("hOST-1999.DC", None, vec![]), register("Host-1999.dcx", None, vec![])]);
    assert!(matches!(&results[0], CommandResult::Rejected(why) if why.contains("\"Host-1999.dc\"")), "{results:?}");
    assert_eq!(results[1], CommandResult::Done);
    assert_eq!(
        apply(&store, 7, vec![register("we", None, vec![]), register("Web2", None, vec![])]),
        vec![CommandResult::Done, CommandResult::Done]
    );
}

#[test]
fn old_tombstones_are_reaped_without_indexes_going_back() {
    let (_dir, store) = open();
    apply(&store, 10, vec![kv_set("gone", "1", None)]);
    apply(&store, 11, vec![Command::KvDelete { key: "gone".into(), recurse: false, cas: None }]);
    assert_eq!(store.read().expect("read").kv_get_indexed("gone").expect("index").1, 11);
    // Far later, a batch at a reaping index drops the tombstone but keeps the index as floor.
    apply(&store, 4096 * 40, vec![kv_set("other", "1", None)]);
    let view = store.read().expect("read");
    assert_eq!(view.kv_get_indexed("gone").expect("index").1, 11, "index went backwards after reaping");
    assert_eq!(view.kv_prefix_index("go").expect("index"), 11);
    let rtxn = store.env().read_txn().expect("txn");
    assert_eq!(store.sm.kv_tombstones.len(&rtxn).expect("len"), 0, "the old tombstone was kept");
}

// ---- sessions and locks ------------------------------------------------------------------

fn session(id: &str, node: &str, checks: &[&str], behavior: crate::model::SessionBehavior) -> Command {
    Command::SessionCreate(Box::new(crate::model::Session {
        id: id.into(),
        name: String::new(),
        node: node.into(),
        node_checks: checks.iter().map(|c| c.to_string()).collect(),
        service_checks: Vec::new(),
        lock_delay_ms: 5_000,
        behavior,
        ttl_ms: 0,
        create_index: 0,
        modify_index: 0,
    }))
}

fn lock(key: &str, value: &str, session: &str, op: crate::model::KvLockOp) -> Command {
    Command::KvLock { key: key.into(), value: Some(value.as_bytes().to_vec()), flags: 0, session: session.into(), op }
}

use crate::model::KvLockOp::{Acquire, Release};
use crate::model::SessionBehavior::{Delete as DeleteKeys, Release as ReleaseKeys};

#[test]
fn sessions_need_their_node_and_healthy_checks() {
    let (_dir, store) = open();
    let missing = apply(&store, 2, vec![session("s1", "n1", &[], ReleaseKeys)]);
    assert!(matches!(&missing[0], CommandResult::Rejected(why) if why.contains("Missing node")), "{missing:?}");
    apply(
        &store,
        3,
        vec![register(
            "n1",
            None,
            vec![check("ok", "", CheckStatus::Passing), check("bad", "", CheckStatus::Critical)],
        )],
    );
    let unknown = apply(&store, 4, vec![session("s1", "n1", &["nope"], ReleaseKeys)]);
    assert!(matches!(&unknown[0], CommandResult::Rejected(why) if why == "Missing check 'nope' registration"));
    let critical = apply(&store, 5, vec![session("s1", "n1", &["bad"], ReleaseKeys)]);
    assert!(matches!(&critical[0], CommandResult::Rejected(why) if why == "Check 'bad' is in critical state"));
    assert_eq!(apply(&store, 6, vec![session("s1", "n1", &["ok"], ReleaseKeys)]), vec![CommandResult::Done]);
    let view = store.read().expect("read");
    let stored = view.session("s1").expect("read").expect("exists");
    assert_eq!((stored.create_index, stored.modify_index), (6, 6));
    assert_eq!(view.node_sessions("n1").expect("read").len(), 1);
    assert_eq!(view.table_index(Table::Sessions).expect("index"), 6);
}

#[test]
fn locks_are_exclusive_and_count_acquisitions() {
    let (_dir, store) = open();
    apply(
        &store,
        2,
        vec![register("n1", None, vec![]), session("a", "n1", &[], ReleaseKeys), session("b", "n1", &[], ReleaseKeys)],
    );
    assert_eq!(apply(&store, 3, vec![lock("k", "1", "a", Acquire)]), vec![CommandResult::Bool(true)]);
    assert_eq!(apply(&store, 4, vec![lock("k", "2", "b", Acquire)]), vec![CommandResult::Bool(false)], "held by a");
    assert_eq!(apply(&store, 5, vec![lock("k", "3", "a", Acquire)]), vec![CommandResult::Bool(true)], "re-acquire");
    let entry = store.read().expect("read").kv_get("k").expect("get").expect("exists");
    assert_eq!((entry.lock_index, entry.session.as_deref(), entry.value.as_deref()), (1, Some("a"), Some(&b"3"[..])));
    assert_eq!(apply(&store, 6, vec![lock("k", "4", "b", Release)]), vec![CommandResult::Bool(false)], "not b's");
    assert_eq!(apply(&store, 7, vec![lock("k", "5", "a", Release)]), vec![CommandResult::Bool(true)]);
    // A plain write to a held key keeps the lock; an explicit release needs no lock delay.
    assert_eq!(apply(&store, 8, vec![lock("k", "6", "b", Acquire)]), vec![CommandResult::Bool(true)]);
    apply(&store, 9, vec![kv_set("k", "7", None)]);
    let entry = store.read().expect("read").kv_get("k").expect("get").expect("exists");
    assert_eq!((entry.lock_index, entry.session.as_deref(), entry.value.as_deref()), (2, Some("b"), Some(&b"7"[..])));
    let invalid = apply(&store, 10, vec![lock("k", "8", "gone", Acquire)]);
    assert!(matches!(&invalid[0], CommandResult::Rejected(why) if why.contains("invalid session")), "{invalid:?}");
}

#[test]
fn invalidation_releases_or_deletes_and_starts_the_lock_delay() {
    let (_dir, store) = open();
    apply(
        &store,
        2,
        vec![
            register("n1", None, vec![check("c", "", CheckStatus::Passing)]),
            session("r", "n1", &["c"], ReleaseKeys),
            session("d", "n1", &[], DeleteKeys),
        ],
    );
    apply(&store, 3, vec![lock("held/r", "x", "r", Acquire), lock("held/d", "y", "d", Acquire)]);
    // The check turns critical: `r` ends, its key stays, unlocked, and is in lock delay.
    apply(&store, 4, vec![register("n1", None, vec![check("c", "", CheckStatus::Critical)])]);
    let view = store.read().expect("read");
    assert!(view.session("r").expect("read").is_none(), "a critical check invalidates its sessions");
    let entry = view.kv_get("held/r").expect("get").expect("release keeps the key");
    assert_eq!((entry.session, entry.modify_index), (None, 4));
    assert!(view.session("d").expect("read").is_some(), "d is not tied to the check");
    drop(view);
    apply(&store, 5, vec![session("r2", "n1", &[], ReleaseKeys)]);
    // Entry 6 runs at 6 s by the leader's clock, within r's 5 s delay from 4 s; 9 s is past it.
    assert_eq!(apply(&store, 6, vec![lock("held/r", "z", "r2", Acquire)]), vec![CommandResult::Bool(false)]);
    assert_eq!(apply(&store, 9, vec![lock("held/r", "z", "r2", Acquire)]), vec![CommandResult::Bool(true)]);
    // Deregistering the node ends every session on it; `d` deletes its key.
    apply(
        &store,
        10,
        vec![Command::Deregister(DeregisterRequest { node: "n1".into(), service_id: None, check_id: None })],
    );
    let view = store.read().expect("read");
    assert!(view.sessions().expect("read").is_empty());
    assert!(view.kv_get("held/d").expect("get").is_none(), "behavior delete removes held keys");
    assert_eq!(view.kv_get("held/r").expect("get").expect("kept").session, None);
    assert_eq!(view.session_refs_count().expect("count"), 0, "no ref outlives its session");
}

#[test]
fn txn_lock_unlock_and_check_session() {
    let (_dir, store) = open();
    apply(&store, 2, vec![register("n1", None, vec![]), session("a", "n1", &[], ReleaseKeys)]);
    let op = |verb, session: Option<&str>| TxnKvOp {
        verb,
        key: "k".into(),
        value: Some(b"v".to_vec()),
        flags: 0,
        index: 0,
        session: session.map(str::to_string),
    };
    let locked = apply(
        &store,
        3,
        vec![Command::Txn { ops: vec![op(TxnKvVerb::Lock, Some("a")), op(TxnKvVerb::CheckSession, Some("a"))] }],
    );
    assert!(matches!(&locked[0], CommandResult::TxnCommitted(r) if r.len() == 2), "{locked:?}");
    let wrong = apply(&store, 4, vec![Command::Txn { ops: vec![op(TxnKvVerb::CheckSession, None)] }]);
    assert!(
        matches!(&wrong[0], CommandResult::TxnRolledBack(e) if e[0].what.contains("failed session check")),
        "{wrong:?}"
    );
    let unlocked = apply(
        &store,
        5,
        vec![Command::Txn { ops: vec![op(TxnKvVerb::Unlock, Some("a")), op(TxnKvVerb::Unlock, Some("a"))] }],
    );
    assert!(matches!(&unlocked[0], CommandResult::TxnRolledBack(e) if e[0].op_index == 1), "{unlocked:?}");
    assert_eq!(
        store.read().expect("read").kv_get("k").expect("get").expect("exists").session.as_deref(),
        Some("a"),
        "rolled back"
    );
}

#[test]
fn a_write_that_meets_a_full_disk_waits_for_space_and_says_so_meanwhile() {
    let (_dir, store) = open();
    let full = || heed::Error::Io(std::io::Error::from_raw_os_error(libc::ENOSPC));
    assert!(full().is_out_of_space());
    assert!(heed::Error::Mdb(heed::MdbError::Other(libc::EDQUOT)).is_out_of_space());
    assert!(!heed::Error::Io(std::io::Error::from_raw_os_error(libc::EIO)).is_out_of_space());
    assert!(!heed::Error::Mdb(heed::MdbError::MapFull).is_out_of_space());

    // Fails once for want of space (seen from outside meanwhile), then succeeds: the caller
    // gets the success, and the flag is gone.
    let mut tries = 0;
    let mut seen_full = None;
    let result = store.raft_write("a test write", || {
        tries += 1;
        if tries == 1 {
            return Err(full());
        }
        seen_full = store.out_of_space();
        Ok(tries)
    });
    assert_eq!(result.expect("the retry succeeds"), 2);
    assert!(seen_full.expect("the flag was up during the wait").contains("No space left"));
    assert_eq!(store.out_of_space(), None);
    assert_eq!(store.raft_writes_stuck_for(), None, "no write in flight");

    // Any other error goes back to the caller at once, without the flag.
    let mut tries = 0;
    let other = store.raft_write("a test write", || {
        tries += 1;
        Err::<(), _>(heed::Error::Io(std::io::Error::from_raw_os_error(libc::EIO)))
    });
    assert!(other.is_err());
    assert_eq!(tries, 1);
    assert_eq!(store.out_of_space(), None);
}

#[test]
fn a_raft_write_in_flight_is_timed_until_one_finishes() {
    let (_dir, store) = open();
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (finish_tx, finish_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            store.raft_write("a slow write", || {
                started_tx.send(()).expect("send");
                finish_rx.recv().expect("recv");
                Ok::<_, heed::Error>(())
            })
        })
    };
    started_rx.recv().expect("the write started");
    std::thread::sleep(std::time::Duration::from_millis(50));
    let stuck = store.raft_writes_stuck_for().expect("a write is in flight");
    assert!(stuck >= std::time::Duration::from_millis(50), "{stuck:?}");
    finish_tx.send(()).expect("send");
    writer.join().expect("writer").expect("the write");
    assert_eq!(store.raft_writes_stuck_for(), None);
}

/// One command of a random sequence: KV writes, deletes and transactions over a few keys,
/// registrations and deregistrations over a few nodes and services, sessions.
fn arbitrary_command() -> impl proptest::strategy::Strategy<Value = Command> {
    use proptest::prelude::*;
    let key = prop::sample::select(vec!["a", "a/b", "a/c", "b"]);
    let node = prop::sample::select(vec!["n1", "n2", "n3"]);
    let status = prop::sample::select(vec![CheckStatus::Passing, CheckStatus::Warning, CheckStatus::Critical]);
    let verb = prop::sample::select(vec![TxnKvVerb::Set, TxnKvVerb::Cas, TxnKvVerb::Delete, TxnKvVerb::DeleteTree]);
    prop_oneof![
        (key.clone(), any::<u8>(), prop::option::of(0u64..8)).prop_map(|(k, v, cas)| Command::KvSet {
            key: k.into(),
            value: Some(vec![v]),
            flags: 0,
            cas,
        }),
        (key.clone(), any::<bool>()).prop_map(|(k, recurse)| Command::KvDelete { key: k.into(), recurse, cas: None }),
        prop::collection::vec((verb, key, 0u64..8), 1..4).prop_map(|ops| Command::Txn {
            ops: ops
                .into_iter()
                .map(|(verb, key, index)| TxnKvOp {
                    verb,
                    key: key.into(),
                    value: Some(b"x".to_vec()),
                    flags: 0,
                    index,
                    session: None,
                })
                .collect(),
        }),
        (node.clone(), prop::option::of(prop::sample::select(vec!["web", "db"])), status).prop_map(
            |(node, service, status)| {
                let checks = service.map(|s| vec![check(&format!("c-{s}"), s, status)]).unwrap_or_default();
                register(node, service.map(|s| (s, s)), checks)
            }
        ),
        (node.clone(), prop::option::of(prop::sample::select(vec!["web", "db"]))).prop_map(|(node, service)| {
            Command::Deregister(DeregisterRequest {
                node: node.into(),
                service_id: service.map(str::to_string),
                check_id: None,
            })
        }),
        node.prop_map(|node| Command::SessionCreate(Box::new(crate::model::Session {
            id: format!("s-{node}"),
            name: String::new(),
            node: node.into(),
            node_checks: Vec::new(),
            service_checks: Vec::new(),
            lock_delay_ms: 0,
            behavior: Default::default(),
            ttl_ms: 0,
            create_index: 0,
            modify_index: 0,
        }))),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Whatever the commands, no index a reader can see goes backwards: each table's index,
    /// the catalog's, and every row's ModifyIndex, which never exceeds its table's.
    #[test]
    fn indexes_never_go_backwards(commands in proptest::collection::vec(arbitrary_command(), 1..40)) {
        let (_dir, store) = open();
        let tables = [Table::Nodes, Table::Services, Table::Checks, Table::Kv, Table::Sessions];
        let mut seen = vec![0u64; tables.len() + 1];
        for (i, command) in commands.into_iter().enumerate() {
            apply(&store, i as u64 + 2, vec![command]);
            let view = store.read().expect("read");
            let mut now: Vec<u64> = tables.iter().map(|t| view.table_index(*t).expect("index")).collect();
            now.push(view.catalog_index().expect("catalog index"));
            for (before, after) in seen.iter().zip(&now) {
                proptest::prop_assert!(after >= before, "an index went backwards: {seen:?} -> {now:?}");
            }
            for key in ["a", "a/b", "a/c", "b"] {
                if let Some(entry) = view.kv_get(key).expect("kv") {
                    proptest::prop_assert!(entry.create_index <= entry.modify_index);
                    proptest::prop_assert!(entry.modify_index <= now[3], "{key} beyond the KV index");
                }
            }
            seen = now;
        }
    }
}

/// A backup archive of `store`'s state, as `GET /v1/snapshot` writes one.
fn archive_of(store: &Store) -> Vec<u8> {
    let mut file = tempfile::tempfile().expect("tempfile");
    super::archive::write(store, &mut file, &[], |_| Ok((10, 1)), 0).expect("archive");
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes).expect("read back");
    bytes
}

/// An archive restored into several servers in parts: parts must follow each other, a new
/// restore's first part supersedes an unfinished one, the restore happens only when every
/// part is held, and the parts are gone afterwards either way.
#[test]
fn an_archive_restored_in_parts_needs_every_part_in_order() {
    use crate::model::{RestorePart, RestoreParts};
    let (_source_dir, source) = open();
    apply(&source, 2, vec![kv_set("from/archive", "v", None)]);
    let archive = archive_of(&source);
    let checksum = u64::from_be_bytes(archive[archive.len() - 8..].try_into().expect("8 bytes"));
    let (len, half) = (archive.len(), archive.len() / 2);
    let part = |restore: &str, from: usize, to: usize| {
        Command::RestorePart(RestorePart {
            restore: restore.into(),
            offset: from as u64,
            bytes: archive[from..to].to_vec(),
        })
    };
    let parts = |restore: &str| {
        Command::RestoreParts(RestoreParts { restore: restore.into(), size_bytes: len as u64, checksum })
    };
    let rejected = |results: Vec<CommandResult>| matches!(&results[0], CommandResult::Rejected(_));
    let (_dir, store) = open();
    apply(&store, 2, vec![kv_set("live", "v", None)]);
    assert!(rejected(apply(&store, 3, vec![part("r1", half, len)])), "a part that follows nothing");
    assert_eq!(apply(&store, 4, vec![part("r1", 0, half)]), [CommandResult::Done]);
    assert_eq!(apply(&store, 5, vec![part("r2", 0, half)]), [CommandResult::Done]);
    assert!(rejected(apply(&store, 6, vec![part("r1", half, len)])), "r1 was superseded by r2");
    assert!(rejected(apply(&store, 7, vec![parts("r1")])), "r1 lacks its parts");
    assert!(rejected(apply(&store, 8, vec![part("r2", half, len)])), "the refused restore dropped every part");
    assert!(store.read().expect("read").kv_get("live").expect("get").is_some(), "nothing was restored");
    let _ = apply(&store, 9, vec![part("r3", 0, half)]);
    let _ = apply(&store, 10, vec![part("r3", half, len)]);
    assert_eq!(apply(&store, 11, vec![parts("r3")]), [CommandResult::Done]);
    let view = store.read().expect("read");
    assert!(view.kv_get("live").expect("get").is_none());
    assert!(view.kv_get("from/archive").expect("get").is_some());
    drop(view);
    assert!(rejected(apply(&store, 12, vec![part("r3", half, len)])), "the parts are gone after the restore");
}
