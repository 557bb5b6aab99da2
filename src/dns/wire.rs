//! Request → response bytes for names in cairn's domains, shared by UDP and TCP: header
//! flags, EDNS, the policy limits (`udp_answer_limit`, `a_record_limit`, which never set TC)
//! and the size limit (which does).
//!
//! Hostile input is handled here on purpose: a packet shorter than a header or with QR=1 is
//! dropped (no reflection), a readable header with an unparsable body gets FORMERR.

use hickory_proto::op::{Edns, Message, MessageType, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::Rng;

use super::answer::{self, AnswerSettings, Question};
use super::lookup;
use crate::store::Directory;

/// Largest UDP payload cairn sends, whatever a client advertises.
pub const UDP_PAYLOAD_MAX: u16 = 4096;
/// The DNS message limit on TCP.
pub const TCP_MESSAGE_MAX: usize = 65_535;
const UDP_PLAIN_MAX: u16 = 512;

/// Everything an answer depends on besides the question.
pub struct Responder {
    pub answers: AnswerSettings,
    /// `consul.` first, then the alt domain; lowercase, fully qualified.
    pub domains: Vec<Name>,
    /// Cap on answers for clients limited to 512 bytes (no TC).
    pub udp_answer_limit: usize,
    /// Cap on A/AAAA/ANY answers on any transport, 0 = none (no TC).
    pub a_record_limit: usize,
    /// RA flag: set exactly when recursors are configured.
    pub recursion_available: bool,
    /// False on a client agent, which holds no catalog: names in cairn's domains take the
    /// slow path, where a server answers them (SERVFAIL when none does: a resolver tries
    /// another server and caches nothing, where an NXDOMAIN would be wrong and cached).
    pub holds_catalog: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// Where names of other datacenters and prepared queries are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Routing {
    /// On the slow path (a server of theirs, the query's execution): [`Reply::NotOurs`] here.
    OtherDatacentersElsewhere,
    /// Here, as unknown names (NXDOMAIN).
    AllHere,
}

/// Whether answering `lookup` awaits something (another datacenter, a query's execution).
fn needs_slow_path(lookup: &lookup::Lookup) -> bool {
    matches!(lookup, lookup::Lookup::OtherDatacenter { .. } | lookup::Lookup::PreparedQuery { .. })
}

fn now_secs() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32)
}

/// What to do with a packet.
#[derive(Debug)]
pub enum Reply {
    /// Not worth an answer (too short, a response, ...).
    Drop,
    Bytes(Vec<u8>),
    /// A name outside cairn's domains (the static zones or the forwarder decide), or of
    /// another datacenter (a server of it answers), or any Consul name on a client agent.
    NotOurs,
}

/// The 12-byte header fields needed to answer even when the body cannot be parsed.
pub fn peek_header(packet: &[u8]) -> Option<Metadata> {
    if packet.len() < 12 {
        return None;
    }
    let mut metadata = Metadata::new(
        u16::from_be_bytes([packet[0], packet[1]]),
        if packet[2] & 0x80 != 0 { MessageType::Response } else { MessageType::Query },
        OpCode::from_u8((packet[2] >> 3) & 0x0f),
    );
    metadata.recursion_desired = packet[2] & 0x01 != 0;
    metadata.checking_disabled = packet[3] & 0x10 != 0;
    Some(metadata)
}

/// An error response: the request's header (ID, opcode, RD, CD) and, when given, its
/// question. Resolvers match an answer to their query by its question, and some discard one
/// that lacks it, so it is echoed whenever the request has exactly one.
pub fn error_reply(request: &Metadata, question: Option<&Query>, code: ResponseCode) -> Vec<u8> {
    let mut metadata = Metadata::response_from_request(request);
    metadata.response_code = code;
    let mut message = Message::new(metadata.id, MessageType::Response, metadata.op_code);
    message.metadata = metadata;
    message.add_queries(question.cloned());
    message.to_vec().unwrap_or_default()
}

/// [`error_reply`] to a raw packet: its question is echoed when the packet has exactly one
/// that decodes (the rest of the packet may be broken). `None` for less than a header.
pub fn error_reply_to(packet: &[u8], code: ResponseCode) -> Option<Vec<u8>> {
    use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
    let header = peek_header(packet)?;
    // Decoded from the whole packet: a compression pointer in the name counts from its start.
    let question = (packet[4..6] == [0, 1])
        .then(|| {
            let mut decoder = BinDecoder::new(packet);
            decoder.read_slice(12).ok()?;
            Query::read(&mut decoder).ok()
        })
        .flatten();
    Some(error_reply(&header, question.as_ref(), code))
}

/// A message's question, when it has exactly one.
pub fn single_question(message: &Message) -> Option<&Query> {
    match message.queries.as_slice() {
        [query] => Some(query),
        _ => None,
    }
}

impl Responder {
    /// Which of cairn's domains `name` is in, if any.
    pub fn domain_of(&self, name: &Name) -> Option<&Name> {
        self.domains.iter().find(|d| d.zone_of(name))
    }

    /// Answers a raw packet (the UDP path). A name of another datacenter is [`Reply::NotOurs`]:
    /// the slow path sends it to that datacenter ([`Responder::other_datacenter`]).
    pub fn reply_to_packet(&self, packet: &[u8], transport: Transport, dir: &Directory, rng: &mut impl Rng) -> Reply {
        self.reply_to_packet_with(packet, transport, dir, rng, Routing::OtherDatacentersElsewhere)
    }

    /// Answers a raw packet, a name of another datacenter as one no server is known for
    /// (NXDOMAIN).
    pub fn reply_here(&self, packet: &[u8], transport: Transport, dir: &Directory, rng: &mut impl Rng) -> Reply {
        self.reply_to_packet_with(packet, transport, dir, rng, Routing::AllHere)
    }

    fn reply_to_packet_with(
        &self,
        packet: &[u8],
        transport: Transport,
        dir: &Directory,
        rng: &mut impl Rng,
        routing: Routing,
    ) -> Reply {
        let Some(header) = peek_header(packet) else { return Reply::Drop };
        if header.message_type == MessageType::Response {
            return Reply::Drop;
        }
        let request = match Message::from_vec(packet) {
            Ok(request) => request,
            Err(_) => return Reply::Bytes(error_reply_to(packet, ResponseCode::FormErr).unwrap_or_default()),
        };
        self.reply_with(&request, transport, dir, rng, routing)
    }

    /// What `request` asks when it is a Consul name the fast path leaves to the slow one:
    /// another datacenter's name, or a prepared query.
    pub fn slow_lookup(&self, request: &Message) -> Option<lookup::Lookup> {
        let [query] = request.queries.as_slice() else { return None };
        let domain = self.domain_of(&query.name)?;
        let lookup = self.lookup_of(query, domain);
        needs_slow_path(&lookup).then_some(lookup)
    }

    /// The answer to `request`, a prepared query, from its execution's `results`.
    pub fn reply_query(
        &self,
        request: &Message,
        transport: Transport,
        dir: &Directory,
        results: &answer::QueryResults,
    ) -> Vec<u8> {
        let Some((query, domain)) = request.queries.first().and_then(|q| Some((q, self.domain_of(&q.name)?))) else {
            return error_reply(&request.metadata, single_question(request), ResponseCode::ServFail);
        };
        let question = Question {
            name: &query.name,
            qtype: query.query_type,
            domain,
            lookup: self.lookup_of(query, domain),
            now_secs: now_secs(),
        };
        let built = answer::build_query(&self.answers, dir, &question, results);
        self.encode(request, &question, built, transport)
    }

    /// What a name in `domain` asks for.
    fn lookup_of(&self, query: &Query, domain: &Name) -> lookup::Lookup {
        let lowered = query.name.to_lowercase();
        // `iter().count()`, not `num_labels()`: the latter does not count a leading `*`.
        let relative = lowered.iter().count().saturating_sub(domain.iter().count());
        let labels: Vec<&str> =
            lowered.iter().take(relative).map(|l| std::str::from_utf8(l).unwrap_or("\u{fffd}")).collect();
        lookup::parse(&labels, &self.answers.datacenter)
    }

    /// Answers a parsed request.
    pub fn reply(&self, request: &Message, transport: Transport, dir: &Directory, rng: &mut impl Rng) -> Reply {
        self.reply_with(request, transport, dir, rng, Routing::OtherDatacentersElsewhere)
    }

    fn reply_with(
        &self,
        request: &Message,
        transport: Transport,
        dir: &Directory,
        rng: &mut impl Rng,
        routing: Routing,
    ) -> Reply {
        let header = &request.metadata;
        if header.op_code != OpCode::Query {
            return Reply::Bytes(error_reply(header, single_question(request), ResponseCode::NotImp));
        }
        let query = match request.queries.as_slice() {
            [query] => query,
            _ => return Reply::Bytes(error_reply(header, None, ResponseCode::FormErr)),
        };
        if let Some(edns) = &request.edns {
            if edns.version() > 0 {
                return Reply::Bytes(self.badvers(request));
            }
        }
        let Some(domain) = self.domain_of(&query.name) else { return Reply::NotOurs };
        if matches!(query.query_type, RecordType::AXFR | RecordType::IXFR) {
            return Reply::Bytes(error_reply(header, Some(query), ResponseCode::NotImp));
        }
        if !self.holds_catalog {
            // A client agent: a server answers (the slow path asks it).
            return Reply::NotOurs;
        }
        let lookup = self.lookup_of(query, domain);
        if routing == Routing::OtherDatacentersElsewhere && needs_slow_path(&lookup) {
            return Reply::NotOurs;
        }
        let question = Question { name: &query.name, qtype: query.query_type, domain, lookup, now_secs: now_secs() };
        Reply::Bytes(self.answer(request, question, transport, dir, rng))
    }

    fn badvers(&self, request: &Message) -> Vec<u8> {
        let mut message = self.response_shell(request);
        message.metadata.response_code = ResponseCode::BADVERS;
        let mut edns = Edns::new();
        edns.set_max_payload(UDP_PAYLOAD_MAX);
        edns.set_rcode_high(ResponseCode::BADVERS.high());
        message.set_edns(edns);
        message.to_vec().unwrap_or_default()
    }

    fn response_shell(&self, request: &Message) -> Message {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = self.recursion_available;
        let mut message = Message::new(metadata.id, MessageType::Response, metadata.op_code);
        message.metadata = metadata;
        message.add_queries(request.queries.iter().cloned());
        message
    }

    fn answer(
        &self,
        request: &Message,
        question: Question<'_>,
        transport: Transport,
        dir: &Directory,
        rng: &mut impl Rng,
    ) -> Vec<u8> {
        let built = answer::build(&self.answers, dir, &question, rng);
        self.encode(request, &question, built, transport)
    }

    /// The most answers a response may carry by policy (load spreading, never TC):
    /// `a_record_limit` for address queries on any transport, `udp_answer_limit` for UDP
    /// clients of 512 bytes (no EDNS, or EDNS asking no more). `None`: no cap.
    pub fn policy_cap(&self, qtype: RecordType, transport: Transport, client_size: u16) -> Option<usize> {
        let is_address_query = matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY);
        let by_type = (self.a_record_limit > 0 && is_address_query).then_some(self.a_record_limit);
        let by_size = (transport == Transport::Udp && client_size <= UDP_PLAIN_MAX && self.udp_answer_limit > 0)
            .then_some(self.udp_answer_limit);
        match (by_type, by_size) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The response bytes for `built`: header flags, EDNS, the policy limits and the size
    /// limit.
    fn encode(
        &self,
        request: &Message,
        question: &Question<'_>,
        mut built: answer::Answer,
        transport: Transport,
    ) -> Vec<u8> {
        let mut message = self.response_shell(request);
        message.metadata.authoritative = true;
        message.metadata.response_code = built.rcode;
        let client_size = request.edns.as_ref().map_or(UDP_PLAIN_MAX, |e| e.max_payload().max(UDP_PLAIN_MAX));
        if let Some(client_edns) = &request.edns {
            message.set_edns(response_edns(client_edns));
        }

        if let Some(cap) = self.policy_cap(question.qtype, transport, client_size) {
            built.answers.truncate(cap);
        }
        let max = match transport {
            Transport::Udp => client_size.min(UDP_PAYLOAD_MAX) as usize,
            Transport::Tcp => TCP_MESSAGE_MAX,
        };
        encode_within(message, built.answers, built.authorities, built.additionals, max)
    }
}

/// The response's OPT record: our payload size, the client's subnet echoed with scope 0.
fn response_edns(client: &Edns) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(UDP_PAYLOAD_MAX);
    edns.set_dnssec_ok(client.flags().dnssec_ok);
    if let Some(EdnsOption::Subnet(subnet)) = client.option(EdnsCode::Subnet) {
        let echoed = ClientSubnet::new(subnet.addr(), subnet.source_prefix(), 0);
        edns.options_mut().insert(EdnsOption::Subnet(echoed));
    }
    edns
}

/// Encodes `message` with as many answers as fit in `max` bytes. Additional records are kept
/// only for the answers that are kept; when an answer had to be cut for size, TC is set so
/// the client retries over TCP.
pub fn encode_within(
    mut message: Message,
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
    max: usize,
) -> Vec<u8> {
    let total = answers.len();
    let encode = |message: &mut Message, kept: usize, with_additionals: bool| -> Option<Vec<u8>> {
        message.answers = answers[..kept].to_vec();
        message.authorities = authorities.clone();
        message.additionals = if with_additionals { related(&additionals, &answers[..kept]) } else { Vec::new() };
        message.metadata.truncation = kept < total;
        let bytes = message.to_vec().ok()?;
        (bytes.len() <= max).then_some(bytes)
    };
    if let Some(bytes) = encode(&mut message, total, true) {
        return bytes;
    }
    if let Some(bytes) = encode(&mut message, total, false) {
        return bytes;
    }
    // Largest prefix of the answers that fits (answers are already in random order).
    let (mut low, mut high) = (0, total);
    while low + 1 < high {
        let mid = (low + high) / 2;
        if encode(&mut message, mid, false).is_some() {
            low = mid;
        } else {
            high = mid;
        }
    }
    encode(&mut message, low, true)
        .or_else(|| encode(&mut message, low, false))
        .or_else(|| encode(&mut message, 0, false))
        .unwrap_or_else(|| {
            // Not even an empty answer fits or encodes: a bug or a record hickory rejects.
            tracing::error!(id = message.metadata.id, max, "DNS answer could not be encoded; sending SERVFAIL");
            error_reply(&message.metadata, single_question(&message), ResponseCode::ServFail)
        })
}

/// The additional records that belong to `answers`: glue and meta of SRV targets, and
/// records owned by the answers' own names.
fn related(additionals: &[Record], answers: &[Record]) -> Vec<Record> {
    let owners: Vec<&Name> = answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(srv) => &srv.target,
            _ => &r.name,
        })
        .collect();
    additionals.iter().filter(|a| owners.iter().any(|n| **n == a.name)).cloned().collect()
}
