//! Answer-building rules, on a real store filled through `apply`.

use std::collections::BTreeMap;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RData, RecordType};
use rand::SeedableRng;

use super::answer::{build, Answer, AnswerSettings, Question, SoaSettings};
use super::lookup;
use crate::model::{CheckDefinition, CheckStatus, Command, RegisterRequest, ServiceDefinition, Weights};
use crate::store::{AppliedBatch, Store};

fn settings() -> AnswerSettings {
    AnswerSettings {
        datacenter: "dc1".into(),
        node_ttl: 7,
        service_ttl: vec![("*".into(), 5), ("web*".into(), 10), ("web-api".into(), 30)],
        only_passing: false,
        soa: SoaSettings { refresh: 3600, retry: 600, expire: 86400, min_ttl: 2 },
        acl: Default::default(),
    }
}

struct Instance {
    node: &'static str,
    node_addr: &'static str,
    id: &'static str,
    name: &'static str,
    addr: &'static str,
    tags: &'static [&'static str],
    status: Option<CheckStatus>,
}

fn store_with(instances: &[Instance]) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), 64 << 20).expect("store");
    let commands: Vec<Command> = instances
        .iter()
        .map(|i| {
            Command::Register(Box::new(RegisterRequest {
                id: String::new(),
                node: i.node.into(),
                address: i.node_addr.into(),
                datacenter: "dc1".into(),
                tagged_addresses: BTreeMap::new(),
                node_meta: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
                service: Some(ServiceDefinition {
                    id: i.id.into(),
                    service: i.name.into(),
                    tags: i.tags.iter().map(|t| t.to_string()).collect(),
                    address: i.addr.into(),
                    meta: BTreeMap::new(),
                    port: 8080,
                    weights: Weights { passing: 10, warning: 1 },
                    enable_tag_override: false,
                    tagged_addresses: Default::default(),
                }),
                checks: i
                    .status
                    .map(|status| CheckDefinition {
                        check_id: format!("{}-check", i.id),
                        name: "c".into(),
                        status,
                        notes: String::new(),
                        output: String::new(),
                        service_id: i.id.into(),
                        check_type: String::new(),
                    })
                    .into_iter()
                    .collect(),
                skip_node_update: false,
            }))
        })
        .collect();
    store.apply(&[AppliedBatch { index: 2, commands: &commands, leader_time_ms: None }], &[]).expect("apply");
    (dir, store)
}

fn ask(store: &Store, settings: &AnswerSettings, qname: &str, qtype: RecordType) -> Answer {
    let name = Name::from_ascii(qname).expect("name");
    let domain = Name::from_ascii("consul.").expect("domain");
    let lowered = name.to_lowercase();
    let labels: Vec<String> =
        lowered.iter().take(lowered.iter().count() - 1).map(|l| String::from_utf8_lossy(l).into_owned()).collect();
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let question = Question { name: &name, qtype, domain: &domain, lookup: lookup::parse(&labels, "dc1"), now_secs: 1 };
    build(settings, &store.directory(), &question, &mut rand::rngs::StdRng::seed_from_u64(7))
}

fn addresses(answer: &Answer) -> Vec<String> {
    let mut out: Vec<String> = answer
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::CNAME(c) => format!("cname:{}", c.0),
            other => format!("{other:?}"),
        })
        .collect();
    out.sort();
    out
}

const FLEET: &[Instance] = &[
    Instance {
        node: "n1",
        node_addr: "10.0.0.1",
        id: "web1",
        name: "web",
        addr: "",
        tags: &["primary"],
        status: Some(CheckStatus::Passing),
    },
    Instance {
        node: "n2",
        node_addr: "10.0.0.2",
        id: "web2",
        name: "web",
        addr: "10.9.9.2",
        tags: &[],
        status: Some(CheckStatus::Warning),
    },
    Instance {
        node: "n3",
        node_addr: "10.0.0.3",
        id: "web3",
        name: "web",
        addr: "",
        tags: &[],
        status: Some(CheckStatus::Critical),
    },
    Instance {
        node: "n4",
        node_addr: "10.0.0.4",
        id: "web4",
        name: "web",
        addr: "web4.example.com",
        tags: &[],
        status: None,
    },
    Instance { node: "n5", node_addr: "fd00::5", id: "web5", name: "web", addr: "", tags: &[], status: None },
];

#[test]
fn a_records_return_only_healthy_instances() {
    let (_d, store) = store_with(FLEET);
    let answer = ask(&store, &settings(), "web.service.consul.", RecordType::A);
    assert_eq!(answer.rcode, ResponseCode::NoError);
    assert_eq!(addresses(&answer), ["10.0.0.1", "10.9.9.2", "cname:web4.example.com."]);
    assert!(answer.answers.iter().all(|r| r.ttl == 10), "web* pattern TTL");
    assert_eq!(
        addresses(&ask(&store, &settings(), "web.service.consul.", RecordType::AAAA)),
        ["cname:web4.example.com.", "fd00::5"]
    );

    let strict = AnswerSettings { only_passing: true, ..settings() };
    assert_eq!(
        addresses(&ask(&store, &strict, "web.service.consul.", RecordType::A)),
        ["10.0.0.1", "cname:web4.example.com."]
    );
    assert_eq!(addresses(&ask(&store, &settings(), "PRIMARY.Web.service.dc1.consul.", RecordType::A)), ["10.0.0.1"]);
    // The owner name echoes the question's case.
    assert_eq!(
        ask(&store, &settings(), "Web.Service.Consul.", RecordType::A).answers[0].name.to_ascii(),
        "Web.Service.Consul."
    );
}

#[test]
fn srv_targets_weights_and_additional_records() {
    let (_d, store) = store_with(FLEET);
    let answer = ask(&store, &settings(), "_web._tcp.service.consul.", RecordType::SRV);
    let mut srvs: Vec<(String, u16, u16)> = answer
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.target.to_ascii(), s.weight, s.port),
            other => panic!("not SRV: {other:?}"),
        })
        .collect();
    srvs.sort();
    assert_eq!(
        srvs,
        [
            ("0a090902.addr.dc1.consul.".to_string(), 1, 8080),
            ("n1.node.dc1.consul.".to_string(), 10, 8080),
            ("n5.node.dc1.consul.".to_string(), 10, 8080),
            ("web4.example.com.".to_string(), 10, 8080),
        ]
    );
    let additional: Vec<String> =
        answer.additionals.iter().map(|r| format!("{} {:?}", r.name, r.record_type())).collect();
    assert!(additional.contains(&"n1.node.dc1.consul. A".to_string()), "{additional:?}");
    assert!(additional.contains(&"n1.node.dc1.consul. TXT".to_string()), "{additional:?}");
    assert!(additional.contains(&"0a090902.addr.dc1.consul. A".to_string()), "{additional:?}");
    assert!(additional.contains(&"n5.node.dc1.consul. AAAA".to_string()), "{additional:?}");
}

#[test]
fn negative_answers_carry_the_soa() {
    let (_d, store) = store_with(FLEET);
    for (name, qtype, rcode) in [
        ("nope.service.consul.", RecordType::A, ResponseCode::NXDomain),
        ("critical.service.consul.", RecordType::A, ResponseCode::NXDomain),
        ("web.service.dc2.consul.", RecordType::A, ResponseCode::NXDomain),
        ("x.query.consul.", RecordType::A, ResponseCode::NXDomain),
        ("n9.node.consul.", RecordType::A, ResponseCode::NXDomain),
        ("web.service.consul.", RecordType::MX, ResponseCode::NoError),
        ("n1.node.consul.", RecordType::AAAA, ResponseCode::NoError),
        ("0a000001.addr.dc1.consul.", RecordType::AAAA, ResponseCode::NoError),
    ] {
        let answer = ask(&store, &settings(), name, qtype);
        assert_eq!(answer.rcode, rcode, "{name} {qtype}");
        assert!(answer.answers.is_empty(), "{name} {qtype}");
        let soa = answer.authorities.first().expect("SOA in authority");
        assert_eq!(soa.ttl, 2, "negative TTL is min_ttl");
        assert!(matches!(&soa.data, RData::SOA(s) if s.minimum == 2 && s.mname.to_ascii() == "ns.consul."));
    }
    // The critical-only service: a name with instances but none healthy is NXDOMAIN too.
    let (_d2, only_bad) = store_with(&[Instance {
        node: "n",
        node_addr: "10.0.0.9",
        id: "b",
        name: "bad",
        addr: "",
        tags: &[],
        status: Some(CheckStatus::Critical),
    }]);
    assert_eq!(ask(&only_bad, &settings(), "bad.service.consul.", RecordType::A).rcode, ResponseCode::NXDomain);
}

#[test]
fn nodes_addrs_and_the_apex() {
    let (_d, store) = store_with(FLEET);
    let node = ask(&store, &settings(), "n1.node.consul.", RecordType::A);
    assert_eq!(addresses(&node), ["10.0.0.1"]);
    assert_eq!(node.answers[0].ttl, 7);
    assert!(matches!(&node.additionals[0].data, RData::TXT(t) if t.to_string().contains("rack=r1")));
    let txt = ask(&store, &settings(), "n1.node.consul.", RecordType::TXT);
    assert_eq!(txt.answers.len(), 1);
    assert_eq!(addresses(&ask(&store, &settings(), "0a000001.addr.dc1.consul.", RecordType::A)), ["10.0.0.1"]);
    let soa = ask(&store, &settings(), "consul.", RecordType::SOA);
    assert!(matches!(soa.answers[0].data, RData::SOA(_)));
    let soa_anywhere = ask(&store, &settings(), "web.service.consul.", RecordType::SOA);
    assert!(matches!(soa_anywhere.answers[0].data, RData::SOA(_)));
}

#[test]
fn awkward_names_and_meta_never_break_answers() {
    // A non-ASCII service name against a prefix TTL pattern must not panic (byte-wise compare).
    let (_d, store) = store_with(&[Instance {
        node: "web_1",
        node_addr: "10.0.0.7",
        id: "u",
        name: "a\u{e9}",
        addr: "",
        tags: &[],
        status: None,
    }]);
    let patterned = AnswerSettings { service_ttl: vec![("ab*".into(), 9)], ..settings() };
    let name = Name::from_utf8("a\u{e9}.service.consul.").expect("name");
    let domain = Name::from_ascii("consul.").expect("domain");
    let question = Question {
        name: &name,
        qtype: RecordType::A,
        domain: &domain,
        lookup: lookup::parse(&["a\u{e9}"], "dc1"),
        now_secs: 1,
    };
    let _ = build(&patterned, &store.directory(), &question, &mut rand::rngs::StdRng::seed_from_u64(1));

    // A node name that is no hostname (underscore) keeps its own SRV target, never the apex.
    let (_d, store) = store_with(&[Instance {
        node: "web_1",
        node_addr: "10.0.0.7",
        id: "w",
        name: "w",
        addr: "",
        tags: &[],
        status: None,
    }]);
    let srv = ask(&store, &settings(), "w.service.consul.", RecordType::SRV);
    match &srv.answers[0].data {
        RData::SRV(s) => assert_eq!(s.target.to_ascii(), "web_1.node.dc1.consul."),
        other => panic!("not SRV: {other:?}"),
    }
    // `*.consul.` is not the apex.
    assert_eq!(ask(&store, &settings(), "*.consul.", RecordType::A).rcode, ResponseCode::NXDomain);
}

#[test]
fn long_meta_values_split_into_txt_strings() {
    let (_d, store) = store_with(&[Instance {
        node: "n1",
        node_addr: "10.0.0.1",
        id: "w",
        name: "w",
        addr: "",
        tags: &[],
        status: None,
    }]);
    let commands = vec![Command::Register(Box::new(RegisterRequest {
        id: String::new(),
        node: "n1".into(),
        address: "10.0.0.1".into(),
        datacenter: "dc1".into(),
        tagged_addresses: BTreeMap::new(),
        node_meta: BTreeMap::from([("big".to_string(), "x".repeat(600))]),
        service: None,
        checks: vec![],
        skip_node_update: false,
    }))];
    store.apply(&[AppliedBatch { index: 3, commands: &commands, leader_time_ms: None }], &[]).expect("apply");
    let txt = ask(&store, &settings(), "n1.node.consul.", RecordType::TXT);
    match &txt.answers[0].data {
        RData::TXT(t) => {
            assert_eq!(t.txt_data.len(), 3, "604 bytes split into 255-byte strings");
            assert!(t.txt_data.iter().all(|s| s.len() <= 255));
        }
        other => panic!("not TXT: {other:?}"),
    }
}
