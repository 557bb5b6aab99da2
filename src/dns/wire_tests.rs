//! Wire rules on bytes: limits, truncation, EDNS, and hostile packets.

use std::collections::BTreeMap;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use rand::SeedableRng;

use super::answer::{AnswerSettings, SoaSettings};
use super::wire::{Reply, Responder, Transport};
use crate::model::{Command, RegisterRequest, ServiceDefinition, Weights};
use crate::store::{AppliedBatch, Store};

pub(super) fn responder(udp_answer_limit: usize, a_record_limit: usize) -> Responder {
    Responder {
        answers: AnswerSettings {
            datacenter: "dc1".into(),
            node_ttl: 0,
            service_ttl: vec![],
            only_passing: false,
            soa: SoaSettings { refresh: 3600, retry: 600, expire: 86400, min_ttl: 0 },
            acl: Default::default(),
        },
        domains: vec![Name::from_ascii("consul.").expect("name")],
        udp_answer_limit,
        a_record_limit,
        recursion_available: false,
        holds_catalog: true,
    }
}

/// A store with `n` healthy instances of `big` on distinct nodes.
fn store(n: usize) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("store");
    let commands: Vec<Command> = (0..n).map(|i| register(i, "big", "big")).collect();
    store.apply(&[AppliedBatch { index: 2, commands: &commands, leader_time_ms: None }], &[]).expect("apply");
    (dir, store)
}

/// Registers node `node-I` (address 10.0.x.y from I) with one instance `id` of `service`, no checks.
pub(super) fn register(i: usize, id: &str, service: &str) -> Command {
    Command::Register(Box::new(RegisterRequest {
        id: String::new(),
        node: format!("node-{i}"),
        address: format!("10.0.{}.{}", i / 250, i % 250 + 1),
        datacenter: "dc1".into(),
        tagged_addresses: BTreeMap::new(),
        node_meta: BTreeMap::new(),
        service: Some(ServiceDefinition {
            id: id.into(),
            service: service.into(),
            tags: vec![],
            address: String::new(),
            meta: BTreeMap::new(),
            port: 80,
            weights: Weights::default(),
            enable_tag_override: false,
            tagged_addresses: Default::default(),
        }),
        checks: vec![],
        skip_node_update: false,
    }))
}

fn query(name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Vec<u8> {
    let mut message = Message::query();
    message.metadata.id = 4242;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message.to_vec().expect("encode")
}

fn ask(responder: &Responder, store: &Store, packet: &[u8], transport: Transport) -> Option<Message> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    match responder.reply_to_packet(packet, transport, &store.directory(), &mut rng) {
        Reply::Bytes(bytes) => {
            if transport == Transport::Udp {
                assert!(bytes.len() <= 4096, "UDP answer of {} bytes", bytes.len());
            }
            Some(Message::from_vec(&bytes).expect("our own answer parses"))
        }
        Reply::Drop => None,
        Reply::NotOurs => panic!("unexpected NotOurs"),
    }
}

#[test]
fn policy_limits_cut_without_tc_and_size_cuts_set_tc() {
    let (_d, store) = store(60);
    let packet = query("big.service.consul.", RecordType::A, None);

    // A plain 512-byte client gets udp_answer_limit answers and no TC.
    let m = ask(&responder(3, 0), &store, &packet, Transport::Udp).expect("answer");
    assert_eq!((m.answers.len(), m.metadata.truncation, m.metadata.id), (3, false, 4242));
    assert!(m.metadata.authoritative);

    // Without the policy limit, 60 A records do not fit in 512 bytes: cut for size → TC.
    let m = ask(&responder(0, 0), &store, &packet, Transport::Udp).expect("answer");
    assert!(m.metadata.truncation, "size cut must set TC");
    assert!(!m.answers.is_empty() && m.answers.len() < 60, "{} answers", m.answers.len());

    // Over TCP every record comes back.
    let m = ask(&responder(0, 0), &store, &packet, Transport::Tcp).expect("answer");
    assert_eq!((m.answers.len(), m.metadata.truncation), (60, false));

    // An EDNS client with 4096 bytes gets all 60 (no 512 policy limit for it), OPT echoed.
    let m = ask(&responder(3, 0), &store, &query("big.service.consul.", RecordType::A, Some(4096)), Transport::Udp)
        .expect("answer");
    assert_eq!((m.answers.len(), m.metadata.truncation), (60, false));
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(4096));

    // a_record_limit applies on every transport, without TC.
    let m = ask(&responder(3, 5), &store, &packet, Transport::Tcp).expect("answer");
    assert_eq!((m.answers.len(), m.metadata.truncation), (5, false));
}

#[test]
fn srv_cut_for_size_keeps_glue_only_for_kept_answers() {
    let (_d, store) = store(60);
    let m = ask(&responder(0, 0), &store, &query("big.service.consul.", RecordType::SRV, Some(1232)), Transport::Udp)
        .expect("answer");
    assert!(m.metadata.truncation);
    let targets: Vec<Name> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            hickory_proto::rr::RData::SRV(s) => Some(s.target.clone()),
            _ => None,
        })
        .collect();
    assert!(m.additionals.iter().all(|a| targets.contains(&a.name)), "glue for a dropped answer");
}

#[test]
fn hostile_and_unusual_packets() {
    let (_d, store) = store(1);
    let r = responder(3, 0);
    // Too short for a header, and responses (QR=1): dropped.
    assert!(ask(&r, &store, &[1, 2, 3], Transport::Udp).is_none());
    let mut response = query("big.service.consul.", RecordType::A, None);
    response[2] |= 0x80;
    assert!(ask(&r, &store, &response, Transport::Udp).is_none());
    // A readable header with garbage after it: FORMERR with the same id.
    let mut garbage = query("big.service.consul.", RecordType::A, None)[..12].to_vec();
    garbage.extend_from_slice(&[0xff; 40]);
    let m = ask(&r, &store, &garbage, Transport::Udp).expect("formerr");
    assert_eq!((m.metadata.response_code, m.metadata.id), (ResponseCode::FormErr, 4242));
    // A compression-pointer loop in the question name.
    let mut looped = query("big.service.consul.", RecordType::A, None)[..12].to_vec();
    looped.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    let m = ask(&r, &store, &looped, Transport::Udp).expect("formerr");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Random bytes never panic.
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for _ in 0..2000 {
        use rand::Rng;
        let len = rng.random_range(0..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = r.reply_to_packet(&bytes, Transport::Udp, &store.directory(), &mut rng);
    }
    // Non-QUERY opcodes and zone transfers: NOTIMP.
    let mut notify = Message::new(7, MessageType::Query, OpCode::Notify);
    notify.add_query(Query::query(Name::from_ascii("consul.").expect("name"), RecordType::SOA));
    let m = ask(&r, &store, &notify.to_vec().expect("encode"), Transport::Udp).expect("notimp");
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(m.queries.len(), 1, "an error answer echoes the question (resolvers match on it)");
    let m = ask(&r, &store, &query("CoNsUl.", RecordType::AXFR, None), Transport::Tcp).expect("notimp");
    assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    assert_eq!(m.queries[0].name.to_ascii(), "CoNsUl.");
    // Raw bytes: the question is echoed when it decodes, even if what follows does not.
    let mut trailing = query("web.service.consul.", RecordType::SRV, None);
    trailing[11] = 1; // claims an additional record that is not there
    let m = Message::from_vec(&super::wire::error_reply_to(&trailing, ResponseCode::FormErr).expect("header"))
        .expect("parses");
    assert_eq!((m.metadata.response_code, m.queries[0].query_type), (ResponseCode::FormErr, RecordType::SRV));
    // EDNS version 1: BADVERS.
    let mut v1 = Message::query();
    v1.add_query(Query::query(Name::from_ascii("big.service.consul.").expect("name"), RecordType::A));
    let mut edns = Edns::new();
    edns.set_version(1);
    v1.set_edns(edns);
    let m = ask(&r, &store, &v1.to_vec().expect("encode"), Transport::Udp).expect("badvers");
    // Code 16 on the wire; the parser names it BADSIG (it shares the number with BADVERS).
    assert_eq!(u16::from(m.metadata.response_code), u16::from(ResponseCode::BADVERS));
    // The question comes back exactly as asked (DNS 0x20).
    let m = ask(&r, &store, &query("BiG.SeRvIcE.CoNsUl.", RecordType::A, None), Transport::Udp).expect("answer");
    assert_eq!(m.queries[0].name.to_ascii(), "BiG.SeRvIcE.CoNsUl.");
    assert_eq!(m.answers[0].name.to_ascii(), "BiG.SeRvIcE.CoNsUl.");
}

/// One instance of a random catalog: node index, service, tag, its check's status.
type Instance = (usize, &'static str, &'static str, crate::model::CheckStatus);

fn arbitrary_catalog() -> impl proptest::strategy::Strategy<Value = Vec<Instance>> {
    use crate::model::CheckStatus;
    use proptest::prelude::*;
    let instance = (
        0usize..6,
        prop::sample::select(vec!["web", "db"]),
        prop::sample::select(vec!["v1", "v2"]),
        prop::sample::select(vec![CheckStatus::Passing, CheckStatus::Warning, CheckStatus::Critical]),
    );
    prop::collection::vec(instance, 0..12)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// The answer builder against a model of Consul's rule: `[tag.]name.service.consul` A
    /// answers the addresses of the nodes with an instance of `name` (with `tag`) whose
    /// checks are not critical; SRV answers one record per such instance; a service never
    /// registered is NXDOMAIN.
    #[test]
    fn service_answers_are_the_healthy_instances(catalog in arbitrary_catalog()) {
        use crate::model::{CheckDefinition, CheckStatus};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path(), 64 << 20).expect("store");
        // A later registration of the same service on a node replaces the earlier one.
        let mut latest: BTreeMap<(usize, &str), (&str, CheckStatus)> = BTreeMap::new();
        let commands: Vec<Command> = catalog
            .iter()
            .map(|&(node, service, tag, status)| {
                latest.insert((node, service), (tag, status));
                Command::Register(Box::new(RegisterRequest {
                    id: String::new(),
                    node: format!("node-{node}"),
                    address: format!("10.0.0.{}", node + 1),
                    datacenter: "dc1".into(),
                    tagged_addresses: BTreeMap::new(),
                    node_meta: BTreeMap::new(),
                    service: Some(ServiceDefinition {
                        id: service.into(),
                        service: service.into(),
                        tags: vec![tag.into()],
                        address: String::new(),
                        meta: BTreeMap::new(),
                        port: 80,
                        weights: Weights::default(),
                        enable_tag_override: false,
                        tagged_addresses: Default::default(),
                    }),
                    checks: vec![CheckDefinition {
                        check_id: format!("check-{service}"),
                        name: "check".into(),
                        status,
                        notes: String::new(),
                        output: String::new(),
                        service_id: service.into(),
                        check_type: "ttl".into(),
                    }],
                    skip_node_update: false,
                }))
            })
            .collect();
        store.apply(&[AppliedBatch { index: 2, commands: &commands, leader_time_ms: None }], &[]).expect("apply");
        let r = responder(8, 0);
        for (service, tag) in [("web", None), ("db", None), ("web", Some("v1")), ("db", Some("v2"))] {
            let mut expected: Vec<String> = latest
                .iter()
                .filter(|((_, s), (t, status))| *s == service && tag.is_none_or(|tag| tag == *t) && *status != CheckStatus::Critical)
                .map(|((node, _), _)| format!("A 10.0.0.{}", node + 1))
                .collect();
            expected.sort();
            let name = match tag {
                Some(tag) => format!("{tag}.{service}.service.consul."),
                None => format!("{service}.service.consul."),
            };
            let a = ask(&r, &store, &query(&name, RecordType::A, None), Transport::Tcp).expect("answer");
            let mut answers: Vec<String> = a.answers.iter().map(|rec| format!("{} {}", rec.record_type(), rec.data)).collect();
            answers.sort();
            proptest::prop_assert_eq!(&answers, &expected, "{}", name);
            let srv = ask(&r, &store, &query(&name, RecordType::SRV, None), Transport::Tcp).expect("answer");
            proptest::prop_assert_eq!(srv.answers.len(), expected.len());
            if !latest.keys().any(|(_, s)| *s == service) {
                proptest::prop_assert_eq!(a.metadata.response_code, ResponseCode::NXDomain, "{}", name);
            }
        }
    }
}
