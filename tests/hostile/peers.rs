//! What other agents send: server-RPC frames (port 8300) and gossip packets (port 8301).
//!
//! RPC invariants: a frame decodes only when complete (every strict prefix of a decoded frame
//! is refused), and what decodes encodes back to a frame that decodes to the same message.
//! Gossip invariants: a packet the member refuses (a bad envelope, a malformed or foreign
//! message) changes nothing it knows about the cluster.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Instant;

use cairn::cluster::rpc::{read_frame, write_frame, Request};
use cairn::gossip::core::{Core, Timings};
use cairn::gossip::envelope::{Envelope, GossipKey};
use cairn::gossip::member::{MemberId, Role};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

fn decode(bytes: &[u8]) -> Option<(Request, Vec<u8>)> {
    let mut reader = bytes;
    runtime().block_on(read_frame::<Request>(&mut reader)).ok()
}

pub fn check_rpc_frame(data: &[u8]) {
    let Some((request, blob)) = decode(data) else { return };
    let json = serde_json::to_value(&request).expect("a decoded request encodes");
    let frame_len = 9 + u32::from_be_bytes(data[1..5].try_into().expect("4 bytes")) as usize + blob.len();
    assert!(decode(&data[..frame_len - 1]).is_none(), "a frame one byte short decoded");
    let mut again = Vec::new();
    runtime().block_on(write_frame(&mut again, &request, &blob)).expect("encode");
    let (decoded, decoded_blob) = decode(&again).expect("a re-encoded frame decodes");
    assert_eq!(serde_json::to_value(&decoded).expect("encodes"), json, "the message changed on a round trip");
    assert_eq!(decoded_blob, blob, "the data changed on a round trip");
}

pub fn member(name: &str, port: u16) -> MemberId {
    MemberId {
        name: name.into(),
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        boot: 1,
        role: Role::Server,
        datacenter: "dc1".into(),
        server_port: 8300,
        node_id: [7; 16],
        build: "fuzz".into(),
        protocol: 1,
    }
}

/// The key odd-mode packets are opened with, and the clock they are opened at.
pub const GOSSIP_KEY: &str = "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=";
pub const GOSSIP_NOW_MS: u64 = 1_700_000_000_000;

/// The first byte picks the path: even, the payload as it comes out of the envelope; odd,
/// the whole packet through an envelope with an encryption key.
pub fn check_gossip_packet(data: &[u8]) {
    let Some((&mode, packet)) = data.split_first() else { return };
    let now = Instant::now();
    let mut core = Core::new(member("self", 8301), Timings::lan(), 1, now);
    let before = (core.digest(), core.members().len());
    let from = SocketAddr::from(([127, 0, 0, 1], 9301));
    let payload = if mode % 2 == 0 {
        packet.to_vec()
    } else {
        let key = GossipKey::from_base64(GOSSIP_KEY).expect("key");
        match Envelope::new(&[key]).open(packet, GOSSIP_NOW_MS) {
            Ok(payload) => payload,
            Err(_) => return,
        }
    };
    if core.handle_packet(now, from, &payload).is_err() {
        assert_eq!((core.digest(), core.members().len()), before, "a refused packet changed the membership");
    }
}
