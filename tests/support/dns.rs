//! A small DNS client for tests: queries over UDP and TCP built with hickory-proto, raw
//! packets, and bounded waits.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

pub const DNS_TIMEOUT: Duration = Duration::from_secs(10);

pub fn query_message(name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Message {
    let mut message = Message::query();
    message.metadata.id = rand_id();
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name).expect("valid name"), qtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        message.set_edns(edns);
    }
    message
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.subsec_nanos()) & 0xffff) as u16
}

/// Sends raw bytes over UDP; `None` if nothing came back within `wait`.
pub fn raw_udp(server: SocketAddr, packet: &[u8], wait: Duration) -> Option<Vec<u8>> {
    // Loopback for a server on loopback (the tests' usual case), else whatever address
    // reaches it (the fault harness's agents live in network namespaces).
    let local = match (server.is_ipv4(), server.ip().is_loopback()) {
        (true, true) => "127.0.0.1:0",
        (true, false) => "0.0.0.0:0",
        (false, true) => "[::1]:0",
        (false, false) => "[::]:0",
    };
    let socket = UdpSocket::bind(local).expect("bind");
    socket.set_read_timeout(Some(wait)).expect("timeout");
    socket.send_to(packet, server).expect("send");
    let mut buf = vec![0u8; 65_535];
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    buf.truncate(n);
    Some(buf)
}

pub fn raw_tcp(server: SocketAddr, packet: &[u8]) -> Vec<u8> {
    try_raw_tcp(server, packet).unwrap_or_else(|e| panic!("DNS over TCP to {server}: {e}"))
}

/// [`raw_tcp`] that reports a refused or reset connection instead of panicking.
pub fn try_raw_tcp(server: SocketAddr, packet: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&server, DNS_TIMEOUT)?;
    stream.set_read_timeout(Some(DNS_TIMEOUT))?;
    stream.write_all(&(packet.len() as u16).to_be_bytes())?;
    stream.write_all(packet)?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len)?;
    let mut answer = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer)?;
    Ok(answer)
}

pub fn udp(server: SocketAddr, name: &str, qtype: RecordType, edns_payload: Option<u16>) -> Message {
    let query = query_message(name, qtype, edns_payload);
    let bytes = raw_udp(server, &query.to_vec().expect("encode"), DNS_TIMEOUT).expect("a UDP answer");
    let answer = Message::from_vec(&bytes).expect("answer parses");
    assert_eq!(answer.metadata.id, query.metadata.id, "answer id");
    answer
}

pub fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let query = query_message(name, qtype, None);
    let answer = Message::from_vec(&raw_tcp(server, &query.to_vec().expect("encode"))).expect("answer parses");
    assert_eq!(answer.metadata.id, query.metadata.id, "answer id");
    answer
}

/// The answer section as sorted text, one record each (`A 10.0.0.1`, `SRV 1 1 80 n1.node.dc1.consul.`).
pub fn answers(message: &Message) -> Vec<String> {
    let mut out: Vec<String> = message.answers.iter().map(|r| rdata_text(&r.data)).collect();
    out.sort();
    out
}

pub fn rdata_text(data: &RData) -> String {
    match data {
        RData::A(a) => format!("A {}", a.0),
        RData::AAAA(a) => format!("AAAA {}", a.0),
        RData::SRV(s) => format!("SRV {} {} {} {}", s.priority, s.weight, s.port, s.target),
        RData::CNAME(c) => format!("CNAME {}", c.0),
        RData::TXT(t) => format!("TXT {t}"),
        RData::SOA(s) => format!("SOA {}", s.mname),
        RData::NS(n) => format!("NS {}", n.0),
        other => format!("{other:?}"),
    }
}
