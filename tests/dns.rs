//! DNS through real packets (UDP and TCP) against a running agent: every Consul query form,
//! health filtering, limits and truncation, EDNS, negative answers, static zones and reload,
//! forwarding, and hostile packets.

mod support;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use serde_json::json;
use support::dns::{answers, raw_udp, tcp, udp, DNS_TIMEOUT};
use support::{wait_for, Agent};

fn register(agent: &Agent, body: serde_json::Value) {
    let r = agent.put("/v1/catalog/register", body.to_string());
    assert_eq!((r.status, r.text().as_str()), (200, "true"), "register {body}");
}

fn redis(agent: &Agent) {
    register(
        agent,
        json!({"Node": "my-node", "Address": "192.168.10.10", "NodeMeta": {"rack": "r1", "rfc1035-note": "hello"},
               "Service": {"ID": "redis1", "Service": "redis", "Tags": ["master"], "Port": 8000}}),
    );
    register(
        agent,
        json!({"Node": "other-node", "Address": "192.168.10.11",
               "Service": {"ID": "redis2", "Service": "redis", "Tags": ["replica"], "Port": 8001, "Address": "10.5.5.5",
                           "Weights": {"Passing": 7, "Warning": 1}}}),
    );
}

#[test]
fn every_query_form_over_udp_and_tcp() {
    let agent = Agent::start(&[]);
    redis(&agent);
    let dns = agent.dns;

    // A write is visible in DNS as soon as the HTTP call returned: no retry here.
    let m = udp(dns, "redis.service.consul.", RecordType::A, None);
    assert_eq!(answers(&m), ["A 10.5.5.5", "A 192.168.10.10"]);
    assert!(m.metadata.authoritative);
    assert_eq!(answers(&tcp(dns, "redis.service.consul.", RecordType::A)), ["A 10.5.5.5", "A 192.168.10.10"]);
    assert_eq!(answers(&udp(dns, "master.redis.service.consul.", RecordType::A, None)), ["A 192.168.10.10"]);
    assert_eq!(answers(&udp(dns, "master.redis.service.dc1.consul.", RecordType::A, None)), ["A 192.168.10.10"]);
    assert_eq!(answers(&udp(dns, "replica.redis.service.dc1.dc.consul.", RecordType::A, None)), ["A 10.5.5.5"]);

    let srv = udp(dns, "_redis._tcp.service.consul.", RecordType::SRV, None);
    assert_eq!(answers(&srv), ["SRV 1 1 8000 my-node.node.dc1.consul.", "SRV 1 7 8001 0a050505.addr.dc1.consul."]);
    let additional: Vec<String> =
        srv.additionals.iter().map(|r| format!("{} {}", r.name, support::dns::rdata_text(&r.data))).collect();
    assert!(additional.contains(&"my-node.node.dc1.consul. A 192.168.10.10".to_string()), "{additional:?}");
    assert!(additional.contains(&"0a050505.addr.dc1.consul. A 10.5.5.5".to_string()), "{additional:?}");
    assert!(additional.contains(&"my-node.node.dc1.consul. TXT rack=r1".to_string()), "{additional:?}");
    assert!(additional.contains(&"my-node.node.dc1.consul. TXT hello".to_string()), "{additional:?}");
    assert_eq!(answers(&udp(dns, "_redis._master.service.consul.", RecordType::SRV, None)).len(), 1);
    assert_eq!(answers(&udp(dns, "_redis._tcp.consul.", RecordType::SRV, None)).len(), 2);

    assert_eq!(answers(&udp(dns, "my-node.node.consul.", RecordType::A, None)), ["A 192.168.10.10"]);
    assert_eq!(answers(&udp(dns, "my-node.node.dc1.consul.", RecordType::TXT, None)), ["TXT hello", "TXT rack=r1"]);
    assert_eq!(answers(&udp(dns, "c0a80a0a.addr.dc1.consul.", RecordType::A, None)), ["A 192.168.10.10"]);
    assert_eq!(answers(&tcp(dns, "consul.", RecordType::SOA)), ["SOA ns.consul."]);
    assert_eq!(answers(&udp(dns, "consul.", RecordType::NS, None)), ["NS test-node.node.dc1.consul."]);

    // The question (and the answers' owner) echo the client's case exactly (DNS 0x20).
    let m = udp(dns, "ReDiS.SeRvIcE.CoNsUl.", RecordType::A, None);
    assert_eq!(m.queries[0].name.to_ascii(), "ReDiS.SeRvIcE.CoNsUl.");
    assert!(m.answers.iter().all(|r| r.name.to_ascii() == "ReDiS.SeRvIcE.CoNsUl."));
}

fn assert_negative(m: &Message, rcode: ResponseCode, what: &str) {
    assert_eq!(m.metadata.response_code, rcode, "{what}");
    assert!(m.answers.is_empty(), "{what}: {:?}", m.answers);
    assert!(
        m.authorities.iter().any(|r| r.record_type() == RecordType::SOA),
        "{what}: no SOA in authority: {:?}",
        m.authorities
    );
}

#[test]
fn health_filtering_and_negative_answers() {
    let agent = Agent::start(&[]);
    redis(&agent);
    let dns = agent.dns;
    // A critical check on the instance, then on the node, hides it.
    register(
        &agent,
        json!({"Node": "other-node", "Address": "192.168.10.11",
               "Check": {"CheckID": "svc", "Name": "svc", "Status": "critical", "ServiceID": "redis2"}}),
    );
    assert_eq!(answers(&udp(dns, "redis.service.consul.", RecordType::A, None)), ["A 192.168.10.10"]);
    register(
        &agent,
        json!({"Node": "my-node", "Address": "192.168.10.10", "Check": {"CheckID": "_node_maintenance", "Name": "maint",
               "Status": "critical"}}),
    );
    assert_negative(&udp(dns, "redis.service.consul.", RecordType::A, None), ResponseCode::NXDomain, "all critical");
    // Warning stays in (only_passing is off by default).
    register(
        &agent,
        json!({"Node": "my-node", "Address": "192.168.10.10", "Check": {"CheckID": "_node_maintenance", "Name": "maint",
               "Status": "warning"}}),
    );
    assert_eq!(answers(&udp(dns, "redis.service.consul.", RecordType::A, None)), ["A 192.168.10.10"]);

    assert_negative(&udp(dns, "nope.service.consul.", RecordType::A, None), ResponseCode::NXDomain, "unknown service");
    assert_negative(&udp(dns, "nope.node.consul.", RecordType::A, None), ResponseCode::NXDomain, "unknown node");
    assert_negative(&udp(dns, "redis.service.dc2.consul.", RecordType::A, None), ResponseCode::NXDomain, "other dc");
    assert_negative(&udp(dns, "redis.service.consul.", RecordType::AAAA, None), ResponseCode::NoError, "NODATA");
    assert_negative(&tcp(dns, "garbage.consul.", RecordType::A), ResponseCode::NXDomain, "malformed name");
}

fn many(agent: &Agent, n: usize) {
    for i in 0..n {
        register(
            agent,
            json!({"Node": format!("web-{i}"), "Address": format!("10.1.{}.{}", i / 200, i % 200 + 1),
                   "Service": {"Service": "web", "Port": 80}}),
        );
    }
}

#[test]
fn limits_truncation_and_edns() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("dns.json");
    std::fs::write(&config, json!({"dns_config": {"a_record_limit": 0, "udp_answer_limit": 3}}).to_string())
        .expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    many(&agent, 60);
    let dns = agent.dns;

    // A 512-byte client: the policy limit, no TC.
    let m = udp(dns, "web.service.consul.", RecordType::A, None);
    assert_eq!((m.answers.len(), m.metadata.truncation), (3, false));
    // SRV answers for a 512-byte client are cut too; with EDNS at 1232 they are cut for size: TC.
    let m = udp(dns, "web.service.consul.", RecordType::SRV, Some(1232));
    assert!(m.metadata.truncation, "size cut must set TC");
    assert!(m.answers.len() < 60);
    assert_eq!(m.edns.as_ref().map(|e| e.max_payload()), Some(4096));
    // Then TCP brings every record.
    let m = tcp(dns, "web.service.consul.", RecordType::SRV);
    assert_eq!((m.answers.len(), m.metadata.truncation), (60, false));
    // An EDNS client with room gets all 60 A records over UDP.
    let m = udp(dns, "web.service.consul.", RecordType::A, Some(4096));
    assert_eq!((m.answers.len(), m.metadata.truncation), (60, false));
    // Order is shuffled per response.
    let first: Vec<String> =
        (0..10).map(|_| answers(&udp(dns, "web.service.consul.", RecordType::A, Some(4096)))[0].clone()).collect();
    let orders: Vec<Vec<String>> = (0..10)
        .map(|_| {
            udp(dns, "web.service.consul.", RecordType::A, Some(4096))
                .answers
                .iter()
                .map(|r| format!("{:?}", r.data))
                .collect()
        })
        .collect();
    assert!(orders.windows(2).any(|w| w[0] != w[1]), "answers never reordered");
    drop(first);
}

#[test]
fn hostile_packets_are_answered_or_dropped_and_the_server_lives() {
    let agent = Agent::start(&[]);
    redis(&agent);
    let dns = agent.dns;
    let short_wait = Duration::from_millis(300);
    // Truncated header, QR=1: dropped.
    assert!(raw_udp(dns, &[0x12, 0x34, 0x01], short_wait).is_none());
    let mut response =
        support::dns::query_message("redis.service.consul.", RecordType::A, None).to_vec().expect("encode");
    response[2] |= 0x80;
    assert!(raw_udp(dns, &response, short_wait).is_none());
    // Readable header, unparsable body: FORMERR.
    let mut bad = response[..12].to_vec();
    bad[2] &= 0x7f;
    bad.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]); // a compression pointer to itself
    let m = Message::from_vec(&raw_udp(dns, &bad, DNS_TIMEOUT).expect("FORMERR")).expect("parses");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // An oversized label (64 bytes).
    let mut long = response[..12].to_vec();
    long[2] &= 0x7f;
    long.push(64);
    long.extend_from_slice(&[b'a'; 64]);
    long.extend_from_slice(&[0, 0, 1, 0, 1]);
    let m = Message::from_vec(&raw_udp(dns, &long, DNS_TIMEOUT).expect("FORMERR")).expect("parses");
    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
    // Random garbage, many times.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    for _ in 0..3000 {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let len = (seed % 200) as usize;
        let bytes: Vec<u8> = (0..len).map(|i| (seed.rotate_left(i as u32 % 64) & 0xff) as u8).collect();
        let _ = socket.send_to(&bytes, dns);
    }
    // Still answering, on both transports.
    assert_eq!(answers(&udp(dns, "redis.service.consul.", RecordType::A, None)).len(), 2);
    assert_eq!(answers(&tcp(dns, "redis.service.consul.", RecordType::A)).len(), 2);
}

#[test]
fn static_zones_serve_and_reload_on_sighup() {
    let temp = tempfile::tempdir().expect("tempdir");
    let zones = temp.path().join("zones");
    std::fs::create_dir(&zones).expect("mkdir");
    let zone = |a: &str| {
        format!(
            "$ORIGIN corp.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 3600 600 86400 60\n@ IN NS ns\nns IN A 127.0.0.1\nwww IN A {a}\n"
        )
    };
    std::fs::write(zones.join("corp.zone"), zone("10.7.0.1")).expect("write zone");
    let config = temp.path().join("zones.json");
    std::fs::write(&config, json!({"zones_dir": zones.display().to_string()}).to_string()).expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    let dns = agent.dns;
    let m = udp(dns, "www.corp.test.", RecordType::A, None);
    assert_eq!(answers(&m), ["A 10.7.0.1"]);
    assert!(m.metadata.authoritative);
    assert_eq!(answers(&tcp(dns, "www.corp.test.", RecordType::A)), ["A 10.7.0.1"]);
    assert_eq!(udp(dns, "nope.corp.test.", RecordType::A, None).metadata.response_code, ResponseCode::NXDomain);

    std::fs::write(zones.join("corp.zone"), zone("10.7.0.2")).expect("rewrite zone");
    agent.signal(libc::SIGHUP);
    wait_for("the reloaded zone", Duration::from_secs(10), || {
        (answers(&udp(dns, "www.corp.test.", RecordType::A, None)) == ["A 10.7.0.2"]).then_some(())
    });

    // A broken file is reported with file and line, and its previous version keeps serving.
    std::fs::write(zones.join("corp.zone"), zone("10.7.0.2") + "bad IN A 999.1.1.1\n").expect("break zone");
    agent.signal(libc::SIGHUP);
    wait_for("the zone error in the log", Duration::from_secs(10), || {
        agent.log().lines().any(|l| l.contains("corp.zone") && l.contains("line 7")).then_some(())
    });
    assert_eq!(answers(&udp(dns, "www.corp.test.", RecordType::A, None)), ["A 10.7.0.2"]);
}

/// A tiny upstream DNS server on UDP and TCP that answers every A query with 10.99.0.1
/// (and `fail.` names with SERVFAIL).
struct Upstream {
    addr: SocketAddr,
}

impl Upstream {
    fn start() -> Upstream {
        // UDP and TCP on one port: the TCP port of a free UDP port may be taken (by another
        // test's connection), so try fresh ports until both bind.
        let (udp_socket, tcp_listener, addr) = (0..100)
            .find_map(|_| {
                let udp_socket = UdpSocket::bind("127.0.0.1:0").expect("bind upstream");
                let addr = udp_socket.local_addr().expect("addr");
                let tcp_listener = std::net::TcpListener::bind(addr).ok()?;
                Some((udp_socket, tcp_listener, addr))
            })
            .expect("no port free for both UDP and TCP in 100 tries");
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok((n, from)) = udp_socket.recv_from(&mut buf) {
                if let Some(answer) = Upstream::answer(&buf[..n]) {
                    let _ = udp_socket.send_to(&answer, from);
                }
            }
        });
        std::thread::spawn(move || {
            use std::io::{Read, Write};
            for mut stream in tcp_listener.incoming().flatten() {
                let mut len = [0u8; 2];
                if stream.read_exact(&mut len).is_err() {
                    continue;
                }
                let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
                if stream.read_exact(&mut query).is_err() {
                    continue;
                }
                if let Some(answer) = Upstream::answer(&query) {
                    let _ = stream.write_all(&(answer.len() as u16).to_be_bytes());
                    let _ = stream.write_all(&answer);
                }
            }
        });
        Upstream { addr }
    }

    fn answer(query: &[u8]) -> Option<Vec<u8>> {
        use hickory_proto::rr::{rdata::A, RData, Record};
        let query = Message::from_vec(query).ok()?;
        let mut answer = Message::response(query.metadata.id, query.metadata.op_code);
        answer.metadata.recursion_available = true;
        answer.add_queries(query.queries.clone());
        let name = query.queries.first()?.name.clone();
        if name.to_ascii().starts_with("fail.") {
            answer.metadata.response_code = ResponseCode::ServFail;
        } else {
            answer.add_answer(Record::from_rdata(name, 30, RData::A(A::new(10, 99, 0, 1))));
        }
        answer.to_vec().ok()
    }
}

#[test]
fn forwarding_to_recursors_only_for_allowed_sources() {
    let upstream = Upstream::start();
    let temp = tempfile::tempdir().expect("tempdir");
    // A first recursor that never answers: the second must still be used (sequential).
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind silent");
    let config = temp.path().join("fwd.json");
    std::fs::write(
        &config,
        json!({"recursors": [silent.local_addr().expect("addr").to_string(), upstream.addr.to_string()],
               "dns_config": {"recursor_timeout": "300ms"}})
        .to_string(),
    )
    .expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    let m = udp(agent.dns, "example.org.", RecordType::A, None);
    assert_eq!(answers(&m), ["A 10.99.0.1"]);
    assert!(m.metadata.recursion_available);
    assert_eq!(answers(&tcp(agent.dns, "example.org.", RecordType::A)), ["A 10.99.0.1"]);
    // An upstream SERVFAIL is not relayed as an answer: all recursors failed → SERVFAIL.
    assert_eq!(udp(agent.dns, "fail.example.org.", RecordType::A, None).metadata.response_code, ResponseCode::ServFail);
    // cairn's own answers carry RA when recursors are configured.
    assert!(udp(agent.dns, "consul.", RecordType::SOA, None).metadata.recursion_available);

    // A source outside recursor_allow is REFUSED: cairn is never an open resolver.
    let config = temp.path().join("closed.json");
    std::fs::write(
        &config,
        json!({"recursors": [upstream.addr.to_string()], "dns_config": {"recursor_allow": ["10.0.0.0/8"]}}).to_string(),
    )
    .expect("write config");
    let closed = Agent::start(&["-config-file", &config.display().to_string()]);
    assert_eq!(udp(closed.dns, "example.org.", RecordType::A, None).metadata.response_code, ResponseCode::Refused);
    // No recursors at all: REFUSED too.
    let plain = Agent::start(&[]);
    assert_eq!(tcp(plain.dns, "example.org.", RecordType::A).metadata.response_code, ResponseCode::Refused);
}

/// `recursors` reload with the config (SIGHUP): added, they forward at once; removed, names
/// outside cairn's domains are REFUSED again.
#[test]
fn recursors_follow_a_reload() {
    let upstream = Upstream::start();
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("dns.json");
    std::fs::write(&config, "{}").expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    let refused = |agent: &Agent| udp(agent.dns, "example.org.", RecordType::A, None).metadata.response_code;
    assert_eq!(refused(&agent), ResponseCode::Refused);

    std::fs::write(&config, json!({"recursors": [upstream.addr.to_string()]}).to_string()).expect("add recursor");
    agent.signal(libc::SIGHUP);
    wait_for("forwarding after the reload", Duration::from_secs(10), || {
        (answers(&udp(agent.dns, "example.org.", RecordType::A, None)) == ["A 10.99.0.1"]).then_some(())
    });
    assert_eq!(answers(&tcp(agent.dns, "example.org.", RecordType::A)), ["A 10.99.0.1"]);

    std::fs::write(&config, "{}").expect("remove recursor");
    agent.signal(libc::SIGHUP);
    wait_for("REFUSED after the reload", Duration::from_secs(10), || {
        (refused(&agent) == ResponseCode::Refused).then_some(())
    });
    assert_eq!(tcp(agent.dns, "example.org.", RecordType::A).metadata.response_code, ResponseCode::Refused);
}

#[test]
fn a_custom_domain_and_the_alt_domain_both_answer() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("domains.json");
    std::fs::write(&config, json!({"domain": "sd.example", "alt_domain": "cairn.internal"}).to_string())
        .expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    redis(&agent);
    assert_eq!(answers(&udp(agent.dns, "redis.service.sd.example.", RecordType::A, None)).len(), 2);
    let srv = udp(agent.dns, "_redis._tcp.service.cairn.internal.", RecordType::SRV, None);
    assert!(
        answers(&srv).contains(&"SRV 1 1 8000 my-node.node.dc1.cairn.internal.".to_string()),
        "{:?}",
        answers(&srv)
    );
    // `consul.` is no longer cairn's: with no recursors it is refused.
    assert_eq!(
        udp(agent.dns, "redis.service.consul.", RecordType::A, None).metadata.response_code,
        ResponseCode::Refused
    );
}

#[test]
fn dns_over_ipv6() {
    let temp = tempfile::tempdir().expect("tempdir");
    let config = temp.path().join("v6.json");
    std::fs::write(&config, json!({"addresses": {"dns": "::1"}}).to_string()).expect("write config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    assert!(agent.dns.is_ipv6(), "DNS bound to {}", agent.dns);
    register(&agent, json!({"Node": "v6-node", "Address": "fd00::10", "Service": {"Service": "v6", "Port": 1}}));
    assert_eq!(answers(&udp(agent.dns, "v6.service.consul.", RecordType::AAAA, None)), ["AAAA fd00::10"]);
    assert_eq!(answers(&tcp(agent.dns, "v6-node.node.consul.", RecordType::AAAA)), ["AAAA fd00::10"]);
}

#[test]
fn answer_limits_rotate_through_every_instance_over_time() {
    let agent = Agent::start(&[]);
    many(&agent, 20);
    // A plain client sees 3 of 20 per answer; across many answers every instance must appear,
    // not only those of the first few shuffles.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..400 {
        seen.extend(answers(&udp(agent.dns, "web.service.consul.", RecordType::A, None)));
        if seen.len() == 20 {
            break;
        }
    }
    assert_eq!(seen.len(), 20, "only {} of 20 instances ever answered", seen.len());
}
