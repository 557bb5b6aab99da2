//! Pre-encoded answers for the UDP hot path.
//!
//! A plain query (one question, class IN, at most an OPT record without options) is parsed
//! in place without allocating. Its answer is built once per (name, type, client size, DO)
//! as a template for a canonical request (id 0, RD and CD clear, lowercase name), in a few
//! differently shuffled variants; serving it copies a variant and patches the id, the RD/CD
//! bits and the question's original case. Anything else takes the full path.
//!
//! Invariant: templates are valid only for the directory index they were built from (and
//! answers carrying an SOA, whose serial is the clock, only within the second); the cache
//! is emptied when either moves on. Each UDP loop owns its cache: no lock on the hot path.
//! Only complete answers are cached (their order is reshuffled over time); an answer that
//! holds a subset of the records (a limit or the size cut them) takes the full path every
//! time, so which records a client gets stays random per response.

use std::collections::HashMap;

use super::service::DnsService;
use super::wire::{Reply, Transport, UDP_PAYLOAD_MAX};

/// Shuffled variants kept per answer with more than one record ("random order per response"
/// picks one of them).
const VARIANTS: usize = 4;
/// One variant is rebuilt with a fresh shuffle every this many hits, so that over time every
/// order comes up, not just the first shuffles. A rebuild takes the full path: at 16 the
/// rebuilds were 3-4% of a loaded server's core (perf during bench/dns: building, address
/// parsing, encoding); 64 cuts that by four, and a name asked 1,000 times a second still gets
/// a fresh order 16 times a second.
const RESHUFFLE_EVERY: u32 = 64;
/// Entries at most per loop; when full the cache is emptied (it refills from hot names).
const ENTRIES_MAX: usize = 16_384;
const HEADER_LEN: usize = 12;

/// The parts of a plain query the cache needs, borrowed from the packet.
#[derive(Debug, PartialEq, Eq)]
pub struct PlainQuery<'a> {
    pub id: [u8; 2],
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question name in wire form, as received (case kept).
    pub qname: &'a [u8],
    pub qtype: u16,
    /// `Some((payload, do_bit))` when the query has an OPT record.
    pub edns: Option<(u16, bool)>,
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Parses `packet` if it is a plain query; `None` sends it down the full path.
pub fn parse_plain(packet: &[u8]) -> Option<PlainQuery<'_>> {
    if packet.len() < HEADER_LEN + 5 {
        return None;
    }
    // QR=0, opcode QUERY, TC=0; one question, no answers or authorities, at most the OPT.
    if packet[2] & 0xfa != 0 || be16(packet, 4) != 1 || be16(packet, 6) != 0 || be16(packet, 8) != 0 {
        return None;
    }
    let additional = be16(packet, 10);
    if additional > 1 {
        return None;
    }
    let mut at = HEADER_LEN;
    loop {
        let len = *packet.get(at)? as usize;
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None; // compression pointers and extended labels: the full path decides
        }
        at += 1 + len;
        if at - HEADER_LEN > 255 {
            return None;
        }
    }
    let qname = &packet[HEADER_LEN..at];
    if packet.len() < at + 4 || be16(packet, at + 2) != 1 {
        return None;
    }
    let qtype = be16(packet, at);
    at += 4;
    let edns = if additional == 1 {
        // Root owner, type OPT, no options (options such as client subnet need the full path).
        if packet.len() != at + 11 || packet[at] != 0 || be16(packet, at + 1) != 41 || be16(packet, at + 9) != 0 {
            return None;
        }
        if packet[at + 6] != 0 {
            return None; // EDNS version > 0: BADVERS, via the full path
        }
        Some((be16(packet, at + 3), packet[at + 7] & 0x80 != 0))
    } else {
        if packet.len() != at {
            return None;
        }
        None
    };
    Some(PlainQuery {
        id: [packet[0], packet[1]],
        recursion_desired: packet[2] & 0x01 != 0,
        checking_disabled: packet[3] & 0x10 != 0,
        qname,
        qtype,
        edns,
    })
}

/// A cache key, built on the stack per query: the lowercase question name in wire form, then
/// the type, the client's effective UDP size (512 without EDNS) and the EDNS and DO flags.
struct Key {
    bytes: [u8; KEY_MAX],
    len: usize,
    /// Where the lowercase name ends in `bytes`.
    name_len: usize,
}

/// `parse_plain` admits names of at most 256 bytes in wire form (labels up to 255, then the
/// root); type, size and flags add 5.
const KEY_MAX: usize = 256 + 5;

impl Key {
    fn new(query: &PlainQuery<'_>) -> Key {
        let mut bytes = [0u8; KEY_MAX];
        let name_len = query.qname.len();
        for (to, from) in bytes.iter_mut().zip(query.qname) {
            *to = from.to_ascii_lowercase();
        }
        let size = query.edns.map_or(512, |(payload, _)| payload.clamp(512, UDP_PAYLOAD_MAX));
        let flags = u8::from(query.edns.is_some()) | u8::from(query.edns.is_some_and(|(_, dnssec_ok)| dnssec_ok)) << 1;
        bytes[name_len..name_len + 2].copy_from_slice(&query.qtype.to_be_bytes());
        bytes[name_len + 2..name_len + 4].copy_from_slice(&size.to_be_bytes());
        bytes[name_len + 4] = flags;
        Key { bytes, len: name_len + 5, name_len }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }

    fn qname_lower(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }
}

enum Entry {
    /// Pre-encoded answers (one per variant).
    Answer { variants: Vec<Vec<u8>>, expires_with_second: bool, hits: u32 },
    /// Not one of cairn's names.
    NotOurs,
    /// An answer that holds only some of the records (cut by a limit or for size): which
    /// ones must be drawn at random per response, so it always takes the full path.
    FullPath,
}

#[derive(Default)]
pub struct AnswerCache {
    /// `DnsService::answers_version` the entries were built under.
    version: (u64, u64),
    second: u32,
    entries: HashMap<Box<[u8]>, Entry>,
    next_variant: usize,
}

impl AnswerCache {
    /// Drops what the current answers no longer match: everything when the directory or the
    /// settings moved on, answers with an SOA when the second did.
    /// Called before each batch of queries: every query of the batch arrived before it, so
    /// answering it from the state of that moment is fresh.
    pub fn refresh(&mut self, service: &DnsService, now_secs: u32) {
        let version = service.answers_version();
        if version != self.version {
            self.entries.clear();
            self.version = version;
        }
        if now_secs != self.second {
            self.entries.retain(|_, e| !matches!(e, Entry::Answer { expires_with_second: true, .. }));
            self.second = now_secs;
        }
    }

    /// Answers `packet` from the cache, building the entry on a miss; `None` when the packet
    /// is not a plain query. [`AnswerCache::refresh`] must have run since the packet arrived.
    pub fn reply(&mut self, packet: &[u8], service: &DnsService) -> Option<Reply> {
        let query = parse_plain(packet)?;
        let key = Key::new(&query);
        let entry = match self.entries.get_mut(key.as_bytes()) {
            Some(entry) => entry,
            None => {
                let built = build_entry(&key, &query, service)?;
                if self.entries.len() >= ENTRIES_MAX {
                    self.entries.clear();
                }
                self.entries.entry(key.as_bytes().into()).or_insert(built)
            }
        };
        match entry {
            Entry::NotOurs => Some(Reply::NotOurs),
            Entry::FullPath => None,
            Entry::Answer { variants, hits, .. } => {
                self.next_variant = self.next_variant.wrapping_add(1);
                let slot = self.next_variant % variants.len();
                *hits = hits.wrapping_add(1);
                if variants.len() > 1 && *hits % RESHUFFLE_EVERY == 0 {
                    let request = canonical_request(&key, &query);
                    if let Reply::Bytes(fresh) = service.reply_fast(&request, Transport::Udp) {
                        variants[slot] = fresh;
                    }
                }
                Some(Reply::Bytes(patch(&variants[slot], &query)))
            }
        }
    }
}

/// The canonical request for `key`: id 0, RD/CD clear, lowercase name.
fn canonical_request(key: &Key, query: &PlainQuery<'_>) -> Vec<u8> {
    let mut packet = Vec::with_capacity(HEADER_LEN + key.name_len + 15);
    packet.extend_from_slice(&[0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(query.edns.is_some())]);
    packet.extend_from_slice(key.qname_lower());
    packet.extend_from_slice(&query.qtype.to_be_bytes());
    packet.extend_from_slice(&1u16.to_be_bytes());
    if let Some((payload, dnssec_ok)) = query.edns {
        packet.push(0);
        packet.extend_from_slice(&41u16.to_be_bytes());
        packet.extend_from_slice(&payload.to_be_bytes());
        packet.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    }
    packet
}

fn build_entry(key: &Key, query: &PlainQuery<'_>, service: &DnsService) -> Option<Entry> {
    let request = canonical_request(key, query);
    let mut variants = Vec::new();
    for _ in 0..VARIANTS {
        match service.reply_fast(&request, Transport::Udp) {
            Reply::NotOurs => return Some(Entry::NotOurs),
            Reply::Drop => return None,
            Reply::Bytes(bytes) => {
                // The question must sit right after the header, uncompressed, for `patch`.
                let end = HEADER_LEN + key.name_len;
                if bytes.len() < end || !bytes[HEADER_LEN..end].eq_ignore_ascii_case(key.qname_lower()) {
                    return None;
                }
                let answers = be16(&bytes, 6);
                if variants.is_empty() && answers > 0 && answers < full_answer_count(service, &request) {
                    return Some(Entry::FullPath);
                }
                // Anything carrying an SOA (negative answers, SOA queries) has the clock as serial.
                let has_soa = be16(&bytes, 8) > 0 || query.qtype == u16::from(hickory_proto::rr::RecordType::SOA);
                variants.push(bytes);
                if answers <= 1 || has_soa {
                    return Some(Entry::Answer { variants, expires_with_second: has_soa, hits: 0 });
                }
            }
        }
    }
    Some(Entry::Answer { variants, expires_with_second: false, hits: 0 })
}

/// How many answers the full set has (as TCP would return it).
fn full_answer_count(service: &DnsService, request: &[u8]) -> u16 {
    match service.reply_fast(request, Transport::Tcp) {
        Reply::Bytes(bytes) if bytes.len() >= HEADER_LEN => be16(&bytes, 6),
        _ => 0,
    }
}

/// The template answered to this query: its id, RD/CD bits and question case.
fn patch(template: &[u8], query: &PlainQuery<'_>) -> Vec<u8> {
    let mut bytes = template.to_vec();
    bytes[0..2].copy_from_slice(&query.id);
    bytes[2] = (bytes[2] & !0x01) | u8::from(query.recursion_desired);
    bytes[3] = (bytes[3] & !0x10) | (u8::from(query.checking_disabled) << 4);
    bytes[HEADER_LEN..HEADER_LEN + query.qname.len()].copy_from_slice(query.qname);
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::{Name, RecordType};

    fn packet(name: &str, edns: Option<u16>) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0xbeef;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).expect("name"), RecordType::A));
        if let Some(payload) = edns {
            let mut e = Edns::new();
            e.set_max_payload(payload);
            m.set_edns(e);
        }
        m.to_vec().expect("encode")
    }

    #[test]
    fn plain_queries_parse_in_place() {
        let p = packet("Web.Service.Consul.", None);
        let q = parse_plain(&p).expect("plain");
        assert_eq!((q.id, q.recursion_desired, q.qtype, q.edns), ([0xbe, 0xef], true, 1, None));
        assert_eq!(q.qname, b"\x03Web\x07Service\x06Consul\x00");
        let p = packet("web.service.consul.", Some(1232));
        assert_eq!(parse_plain(&p).expect("plain").edns, Some((1232, false)));
        // Responses, trailing bytes, compression pointers: not plain.
        let mut response = packet("a.consul.", None);
        response[2] |= 0x80;
        assert!(parse_plain(&response).is_none());
        let mut trailing = packet("a.consul.", None);
        trailing.push(0);
        assert!(parse_plain(&trailing).is_none());
        let mut pointer = packet("a.consul.", None)[..12].to_vec();
        pointer.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1]);
        assert!(parse_plain(&pointer).is_none());
        for cut in 0..p.len() {
            let _ = parse_plain(&p[..cut]);
        }
    }

    #[test]
    fn the_longest_plain_name_fits_a_key() {
        let mut p = vec![0xbe, 0xef, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        for len in [63u8, 63, 63, 62] {
            p.push(len);
            p.extend(std::iter::repeat_n(b'X', usize::from(len)));
        }
        p.extend_from_slice(&[0, 0, 1, 0, 1]);
        let query = parse_plain(&p).expect("255 bytes of labels and the root: plain");
        let key = Key::new(&query);
        assert_eq!(key.qname_lower().len(), 256);
        assert_eq!(key.as_bytes().len(), KEY_MAX);
        assert!(key.qname_lower()[1..64].iter().all(|&b| b == b'x'));
    }

    #[test]
    fn patch_restores_id_flags_and_case() {
        let q_packet = packet("WeB.service.consul.", None);
        let query = parse_plain(&q_packet).expect("plain");
        let key = Key::new(&query);
        assert_eq!(key.qname_lower(), b"\x03web\x07service\x06consul\x00");
        let template = canonical_request(&key, &query);
        let patched = patch(&template, &query);
        assert_eq!(&patched[..2], &[0xbe, 0xef]);
        assert_eq!(patched[2] & 1, 1);
        assert_eq!(&patched[12..12 + query.qname.len()], query.qname);
    }
}
