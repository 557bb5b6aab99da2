//! The DNS handler fed raw packets, over UDP and TCP rules, with a catalog of a few services,
//! a static zone, and a stub recursor on loopback (the whole path the listeners take: the
//! directory's fast path, then zones and forwarding).
//!
//! Invariants: a packet is dropped only when it is shorter than a header or is a response;
//! every answer parses back, carries the query's ID and (for a parsed single-question query)
//! its question with the case as sent; over UDP it never exceeds what the client can take;
//! and TC is set exactly when answer records were cut for size (the TCP answer has more).

use std::net::{SocketAddr, UdpSocket};
use std::sync::{Arc, OnceLock};

use cairn::config::{AgentFlags, Config};
use cairn::dns::wire::{Reply, Transport, UDP_PAYLOAD_MAX};
use cairn::dns::DnsService;
use cairn::model::CheckStatus;
use cairn::store::{AppliedBatch, Store};

use super::register;
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, Record, RecordType};

const ZONE: &str = "$ORIGIN example.internal.
$TTL 300
@       IN SOA  ns.example.internal. hostmaster.example.internal. 1 3600 600 86400 60
        IN NS   ns.example.internal.
ns      IN A    127.0.0.1
gateway IN A    10.0.0.1
gateway IN AAAA fd00::1
www     IN CNAME gateway.example.internal.
info    IN TXT  \"served by cairn\"
";

/// `dns_config.udp_answer_limit`: answers over UDP to a client without EDNS (or one taking
/// 512 bytes at most), a cut by policy that never sets TC.
const UDP_ANSWER_LIMIT: usize = 8;

struct Fixture {
    _dir: tempfile::TempDir,
    runtime: tokio::runtime::Runtime,
    dns: Arc<DnsService>,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(build)
}

/// Answers every query it can parse with one A record, anything else with FORMERR.
fn stub_recursor() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("stub recursor");
    let addr = socket.local_addr().expect("addr");
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let Ok(request) = Message::from_vec(&buf[..n]) else { continue };
            let mut response = Message::new(request.metadata.id, MessageType::Response, request.metadata.op_code);
            response.metadata.recursion_available = true;
            response.add_queries(request.queries.iter().cloned());
            if let Some(q) = request.queries.first() {
                let a = RData::A(hickory_proto::rr::rdata::A::new(192, 0, 2, 1));
                response.add_answer(Record::from_rdata(q.name.clone(), 60, a));
            }
            if let Ok(bytes) = response.to_vec() {
                let _ = socket.send_to(&bytes, from);
            }
        }
    });
    addr
}

fn build() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let zones = dir.path().join("zones");
    std::fs::create_dir(&zones).expect("zones dir");
    std::fs::write(zones.join("example.zone"), ZONE).expect("zone");
    let config = serde_json::json!({
        "server": true,
        "alt_domain": "cairn",
        "recursors": [stub_recursor().to_string()],
        "zones_dir": zones,
        // Policy cuts (never TC): none by record count, `UDP_ANSWER_LIMIT` answers over plain UDP.
        "dns_config": {"udp_answer_limit": UDP_ANSWER_LIMIT, "a_record_limit": 0, "recursor_timeout": "500ms"},
    });
    let flags = AgentFlags { dev: true, ..Default::default() };
    let (config, _) =
        Config::from_sources(&[("fuzz.json".into(), config.to_string())], &flags).expect("fixture config");
    let store = Store::open(&dir.path().join("lmdb"), 64 << 20).expect("store");
    let mut commands = vec![
        register("web-1", "10.0.0.11", Some(("web1", "web", &["primary", "v1"])), CheckStatus::Passing),
        register("web-2", "10.0.0.12", Some(("web2", "web", &["v1"])), CheckStatus::Warning),
        register("web-3", "10.0.0.13", Some(("web3", "web", &[])), CheckStatus::Critical),
        register("db-1", "fd00::5", Some(("db", "db", &["master"])), CheckStatus::Passing),
        register("ext", "api.example.com", Some(("ext", "external", &[])), CheckStatus::Passing),
    ];
    // Enough instances that an SRV answer outgrows 512 bytes.
    for i in 0..40 {
        let address = format!("10.1.0.{}", i + 1);
        commands.push(register(&format!("big-{i}"), &address, Some(("big", "big", &["t"])), CheckStatus::Passing));
    }
    store.apply(&[AppliedBatch { index: 2, commands: &commands, leader_time_ms: None }], &[]).expect("apply");
    let dns = cairn::dns::service_from_config(&config, store, None).expect("DNS service");
    dns.reload_zones();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    Fixture { _dir: dir, runtime, dns: Arc::new(dns) }
}

impl Fixture {
    /// What a listener would send back for `packet`; `None` when it would send nothing.
    fn reply(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        match self.dns.reply_fast(packet, transport) {
            Reply::Drop => None,
            Reply::Bytes(bytes) => Some(bytes),
            Reply::NotOurs => {
                let src: SocketAddr = "127.0.0.1:5353".parse().expect("addr");
                let bytes = self.runtime.block_on(self.dns.reply_elsewhere(packet.to_vec(), src, transport));
                (!bytes.is_empty()).then_some(bytes)
            }
        }
    }
}

/// One raw packet, as received over UDP and over TCP.
pub fn check_packet(packet: &[u8]) {
    let f = fixture();
    let request = Message::from_vec(packet).ok();
    let udp = f.reply(packet, Transport::Udp);
    let tcp = f.reply(packet, Transport::Tcp);
    let udp = check_reply(packet, request.as_ref(), udp, Transport::Udp);
    let tcp = check_reply(packet, request.as_ref(), tcp, Transport::Tcp);
    if let (Some(udp), Some(tcp)) = (udp, tcp) {
        let same_outcome = udp.metadata.response_code == tcp.metadata.response_code;
        if same_outcome && udp.metadata.response_code == ResponseCode::NoError && !tcp.metadata.truncation {
            let plain = request.as_ref().is_none_or(|r| r.edns.as_ref().is_none_or(|e| e.max_payload() <= 512));
            let allowed = if plain { tcp.answers.len().min(UDP_ANSWER_LIMIT) } else { tcp.answers.len() };
            let cut = udp.answers.len() < allowed;
            assert_eq!(
                udp.metadata.truncation,
                cut,
                "TC must be set exactly when answers were cut for size: UDP {} answers, TCP {}",
                udp.answers.len(),
                tcp.answers.len()
            );
        }
    }
}

fn check_reply(
    packet: &[u8],
    request: Option<&Message>,
    reply: Option<Vec<u8>>,
    transport: Transport,
) -> Option<Message> {
    let Some(bytes) = reply else {
        let is_response = packet.len() >= 3 && packet[2] & 0x80 != 0;
        assert!(packet.len() < 12 || is_response, "{transport:?}: a query of {} bytes got no answer", packet.len());
        return None;
    };
    assert!(packet.len() >= 12, "{transport:?}: an answer to {} bytes, shorter than a header", packet.len());
    let response = Message::from_vec(&bytes)
        .unwrap_or_else(|e| panic!("{transport:?}: the answer does not parse back ({e}): {bytes:02x?}"));
    assert_eq!(response.metadata.id, u16::from_be_bytes([packet[0], packet[1]]), "{transport:?}: ID");
    assert_eq!(response.metadata.message_type, MessageType::Response, "{transport:?}: QR");
    if let Some(request) = request {
        if transport == Transport::Udp {
            let limit = request.edns.as_ref().map_or(512, |e| e.max_payload().clamp(512, UDP_PAYLOAD_MAX)) as usize;
            assert!(bytes.len() <= limit, "UDP answer of {} bytes for a client taking {limit}", bytes.len());
        }
        let echoed = request.queries.len() == 1
            && request.metadata.message_type == MessageType::Query
            && response.metadata.response_code != ResponseCode::FormErr;
        if echoed {
            let asked = &request.queries[0];
            let question = response.queries.first().unwrap_or_else(|| {
                panic!("{transport:?}: the answer ({}) drops the question", response.metadata.response_code)
            });
            assert_eq!(question.name.to_ascii(), asked.name.to_ascii(), "{transport:?}: question name (case kept)");
            assert_eq!((question.query_type, question.query_class), (asked.query_type, asked.query_class));
        }
    }
    Some(response)
}

/// A query for a name built from the input: two bytes pick the type and EDNS payload, the
/// rest is the name (Consul's grammar is what this exercises).
pub fn check_name(data: &[u8]) {
    if data.len() < 2 {
        return;
    }
    let qtype = [RecordType::A, RecordType::AAAA, RecordType::SRV, RecordType::ANY, RecordType::TXT, RecordType::PTR]
        [data[0] as usize % 6];
    let Ok(text) = std::str::from_utf8(&data[2..]) else { return };
    let Ok(name) = Name::from_utf8(text) else { return };
    let mut message = Message::query();
    message.metadata.id = u16::from(data[1]) << 8 | u16::from(data[0]);
    message.add_query(Query::query(name, qtype));
    if data[1] & 1 == 1 {
        let mut edns = Edns::new();
        edns.set_max_payload(u16::from(data[1]) * 16);
        message.set_edns(edns);
    }
    let Ok(packet) = message.to_vec() else { return };
    check_packet(&packet);
}
