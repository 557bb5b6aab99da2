//! Server RPC (port 8300): the wire framing, the connection used by callers, and the
//! listener that answers. Raft's append/vote/install-snapshot calls, forwarded writes and read
//! barriers all travel here; what each request *does* is decided in `peer` (calls out) and
//! `serve` (answers), not here.
//!
//! Wire: every message is one frame, `version u8 | json_len u32 BE | blob_len u32 BE | json |
//! blob`. The JSON part is a [`Request`] or a [`Response`]; the blob carries raw bytes
//! (snapshot chunks), which JSON would inflate fourfold. A connection opens with
//! [`Request::Hello`], naming the cluster (the datacenter) and the node id it is meant for;
//! a mismatch is answered with [`Response::Refused`] and the connection closed. Then
//! requests and responses alternate, one at a time; callers keep connections for reuse.
//!
//! Invariant: a frame is decoded completely (both lengths bounded first) before anything acts
//! on it. Why: a truncated or forged frame must be refused with nothing applied.

use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotResponse, VoteRequest, VoteResponse};
use openraft::{BasicNode, SnapshotMeta, Vote};

use super::{NodeId, TypeConfig, WriteError};
use crate::model::acl::Secret;
use crate::model::{CommandResult, Proposal};
use crate::tls::RpcTls;

/// The only frame version so far. A frame with another is refused, so a later format can
/// change anything after this byte.
pub const RPC_VERSION: u8 = 1;
const HEADER_BYTES: usize = 9;
/// Largest JSON part of a frame. An append carries at most `max_payload_entries` (16)
/// entries of at most ~5.5 MiB each (a full proposal, values in base64).
pub const JSON_BYTES_MAX: usize = 128 << 20;
/// Largest blob: a snapshot chunk (1 MiB), or an HTTP body a client agent forwards either
/// way (a catalog listing of 100,000 nodes is ~40 MiB).
pub const BLOB_BYTES_MAX: usize = 64 << 20;
/// Connecting and the hello exchange, at most.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// What a caller asks. Variants are appended, never renamed: peers of two versions talk
/// during a rolling upgrade.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    /// First frame of every connection.
    Hello {
        cluster: String,
        from: NodeId,
        to: NodeId,
    },
    AppendEntries(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot; its bytes are the frame's blob.
    InstallSnapshot(SnapshotChunk),
    /// A batch of writes from a server that does not lead; answered once committed.
    Forward(Proposal),
    /// The log index a read must wait for on the asking server: the leader's applied index
    /// (`consistent: false`, Consul's default mode) or a read index confirmed by a quorum.
    ReadIndex {
        consistent: bool,
    },
    /// Whether this server's Raft has been initialized (bootstrap-expect asks before it
    /// bootstraps, so a cluster that already formed is never bootstrapped twice).
    Status,
    /// An HTTP API request a client agent forwards; its body is the frame's blob. Its token
    /// travels in its headers and is checked where it is answered.
    Http(HttpCall),
    /// A DNS query a client agent forwards (the packet is the blob), as received over TCP
    /// (`tcp`) or UDP, which decides the answer's size limit.
    Dns {
        tcp: bool,
    },
    /// A node's catalog entries (a client agent's anti-entropy compares its own with them),
    /// read with the agent's token (node read needed).
    NodeCatalog {
        node: String,
        #[serde(default)]
        token: Option<Secret>,
    },
    /// An operator action for the leader (or a transfer target).
    Operator(super::operator::OperatorRequest),
    /// Restart a session's TTL timer, which only the leader keeps.
    RenewSession {
        id: String,
    },
    /// First frame of a connection from a server of another datacenter (`from_datacenter`)
    /// to server `to` of `datacenter`. Only [`Request::Http`], [`Request::Dns`] and
    /// [`Request::Status`] are answered on it: nothing crosses datacenters into Raft.
    HelloWan {
        from_datacenter: String,
        datacenter: String,
        from: NodeId,
        to: NodeId,
    },
    /// A client agent's own catalog writes (its anti-entropy), each with the token it acts
    /// with (`tokens[i]` for `proposal.commands[i]`): the token its service or check was
    /// registered with, else `acl.tokens.agent`, else `default`. With ACLs on, each command is
    /// checked against its token; a refused one is answered [`CommandResult::Rejected`], the
    /// others applied.
    AgentWrite {
        proposal: Proposal,
        tokens: Vec<Option<Secret>>,
    },
}

impl Request {
    /// Whether a server of another datacenter may send this (see [`Request::HelloWan`]).
    pub fn crosses_datacenters(&self) -> bool {
        matches!(self, Request::Http(_) | Request::Dns { .. } | Request::Status)
    }

    /// Whether only a server may send this: Raft itself, writes and reads that skip the
    /// ACL checks (a server checked them where they arrived), and leader chores. A peer whose
    /// certificate proves it is not a server may not (`verify_server_hostname`).
    pub fn server_only(&self) -> bool {
        !matches!(
            self,
            Request::Hello { .. }
                | Request::HelloWan { .. }
                | Request::Status
                | Request::Http(_)
                | Request::Dns { .. }
                | Request::NodeCatalog { .. }
                | Request::AgentWrite { .. }
        )
    }
}

/// An HTTP request as a client agent received it, minus its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpCall {
    pub method: String,
    /// Path and query string.
    pub uri: String,
    pub headers: Vec<(String, String)>,
}

/// A server's HTTP answer, minus its body.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
}

/// A node's entries in the catalog.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeCatalog {
    pub node: Option<crate::model::Node>,
    pub services: Vec<crate::model::Service>,
    pub checks: Vec<crate::model::HealthCheck>,
}

/// An install-snapshot request without its data, which travels as the frame's blob.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotChunk {
    pub vote: Vote<NodeId>,
    pub meta: SnapshotMeta<NodeId, BasicNode>,
    pub offset: u64,
    pub done: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Hello,
    /// The request was not for this server or cluster, or was malformed; the connection
    /// closes after this frame.
    Refused(String),
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Forward(Result<Forwarded, WriteError>),
    ReadIndex(Result<u64, WriteError>),
    Status {
        initialized: bool,
    },
    /// The answer's body is the blob.
    Http(HttpAnswer),
    /// The answer packet is the blob.
    Dns,
    NodeCatalog(Result<NodeCatalog, WriteError>),
    Operator(Result<super::operator::OperatorAnswer, WriteError>),
    /// The renewed session; `None` when it does not exist.
    RenewSession(Result<Option<crate::model::Session>, WriteError>),
}

/// The outcome of a forwarded proposal: each command's result and the log index it was
/// committed at (the forwarding server waits until it has applied that index itself).
#[derive(Debug, Serialize, Deserialize)]
pub struct Forwarded {
    pub results: Vec<CommandResult>,
    pub index: u64,
}

/// Why a call failed. `Connect` means nothing was sent.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{0}")]
    Frame(#[from] FrameError),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("refused by the peer: {0}")]
    Refused(String),
    #[error("unexpected answer from the peer: {0}")]
    Unexpected(&'static str),
}

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported frame version {0} (this build speaks {RPC_VERSION})")]
    Version(u8),
    #[error("frame too large: {what} of {len} bytes (limit {max})")]
    TooLarge { what: &'static str, len: usize, max: usize },
    #[error("undecodable frame: {0}")]
    Decode(String),
}

/// Reads one whole frame: both lengths are checked against their limits first, the buffers
/// grow only as bytes arrive (a peer that announces 128 MiB and sends nothing holds none of
/// it), and the JSON is decoded before it is returned.
pub async fn read_frame<T: DeserializeOwned>(
    reader: &mut (impl AsyncRead + Unpin),
) -> Result<(T, Vec<u8>), FrameError> {
    let mut header = [0u8; HEADER_BYTES];
    match reader.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(FrameError::Closed),
        Err(e) => return Err(e.into()),
    }
    if header[0] != RPC_VERSION {
        return Err(FrameError::Version(header[0]));
    }
    let json_len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
    let blob_len = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) as usize;
    if json_len > JSON_BYTES_MAX {
        return Err(FrameError::TooLarge { what: "message", len: json_len, max: JSON_BYTES_MAX });
    }
    if blob_len > BLOB_BYTES_MAX {
        return Err(FrameError::TooLarge { what: "data", len: blob_len, max: BLOB_BYTES_MAX });
    }
    let json = read_exactly(reader, json_len).await?;
    let blob = read_exactly(reader, blob_len).await?;
    let message = serde_json::from_slice(&json).map_err(|e| FrameError::Decode(e.to_string()))?;
    Ok((message, blob))
}

/// Bytes buffered ahead of their arrival, at most.
const READ_AHEAD_BYTES: usize = 64 << 10;

/// The next `len` bytes, in a buffer that grows as they arrive.
async fn read_exactly(reader: &mut (impl AsyncRead + Unpin), len: usize) -> Result<Vec<u8>, FrameError> {
    let mut bytes = Vec::with_capacity(len.min(READ_AHEAD_BYTES));
    reader.take(len as u64).read_to_end(&mut bytes).await?;
    if bytes.len() < len {
        return Err(FrameError::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("frame cut short: {} of {len} bytes", bytes.len()),
        )));
    }
    Ok(bytes)
}

/// Writes one frame with a single write call.
pub async fn write_frame(
    writer: &mut (impl AsyncWrite + Unpin),
    message: &impl Serialize,
    blob: &[u8],
) -> Result<(), FrameError> {
    let json = serde_json::to_vec(message).map_err(|e| FrameError::Decode(e.to_string()))?;
    if json.len() > JSON_BYTES_MAX {
        return Err(FrameError::TooLarge { what: "message", len: json.len(), max: JSON_BYTES_MAX });
    }
    if blob.len() > BLOB_BYTES_MAX {
        return Err(FrameError::TooLarge { what: "data", len: blob.len(), max: BLOB_BYTES_MAX });
    }
    let mut frame = Vec::with_capacity(HEADER_BYTES + json.len() + blob.len());
    frame.push(RPC_VERSION);
    frame.extend_from_slice(&(json.len() as u32).to_be_bytes());
    frame.extend_from_slice(&(blob.len() as u32).to_be_bytes());
    frame.extend_from_slice(&json);
    frame.extend_from_slice(blob);
    writer.write_all(&frame).await?;
    Ok(())
}

/// Who a connection is from and for, sent in its hello.
#[derive(Debug, Clone)]
pub struct Route {
    /// The caller's datacenter.
    pub cluster: String,
    pub from: NodeId,
    pub to: NodeId,
    pub addr: String,
    /// The target's datacenter when it is another one (a WAN call, [`Request::HelloWan`]).
    pub remote: Option<String>,
    /// TLS for the connection, when `verify_outgoing` asks for it.
    pub tls: Option<Arc<RpcTls>>,
}

/// A connection's bytes: plain TCP, or TLS over it.
pub trait RpcStream: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> RpcStream for T {}

/// One open connection to a server, past its hello. Calls on it are sequential.
pub struct Connection {
    stream: Box<dyn RpcStream>,
}

impl Connection {
    /// Connects to `route.addr` and exchanges the hello, within [`CONNECT_TIMEOUT`].
    pub async fn open(route: &Route) -> Result<Connection, RpcError> {
        let connect_error = |reason: String| RpcError::Connect { addr: route.addr.clone(), reason };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&route.addr))
            .await
            .map_err(|_| connect_error(format!("no connection within {CONNECT_TIMEOUT:?}")))?
            .map_err(|e| connect_error(e.to_string()))?;
        let _ = stream.set_nodelay(true);
        let datacenter = route.remote.as_deref().unwrap_or(&route.cluster);
        let stream: Box<dyn RpcStream> = match route.tls.as_ref().and_then(|tls| tls.connector(datacenter)) {
            Some((connector, name)) => Box::new(
                tokio::time::timeout(CONNECT_TIMEOUT, connector.connect(name, stream))
                    .await
                    .map_err(|_| connect_error(format!("no TLS handshake within {CONNECT_TIMEOUT:?}")))?
                    .map_err(|e| connect_error(format!("TLS handshake failed: {e}")))?,
            ),
            None => Box::new(stream),
        };
        let mut connection = Connection { stream };
        let hello = match &route.remote {
            None => Request::Hello { cluster: route.cluster.clone(), from: route.from, to: route.to },
            Some(datacenter) => Request::HelloWan {
                from_datacenter: route.cluster.clone(),
                datacenter: datacenter.clone(),
                from: route.from,
                to: route.to,
            },
        };
        match connection.call(&hello, &[], CONNECT_TIMEOUT).await.map_err(|e| connect_error(e.to_string()))? {
            (Response::Hello, _) => Ok(connection),
            (Response::Refused(why), _) => Err(RpcError::Refused(why)),
            _ => Err(RpcError::Unexpected("not a hello")),
        }
    }

    /// Sends `request` and waits up to `timeout` for its answer. After an error the
    /// connection is in an unknown state: drop it.
    pub async fn call(
        &mut self,
        request: &Request,
        blob: &[u8],
        timeout: Duration,
    ) -> Result<(Response, Vec<u8>), RpcError> {
        tokio::time::timeout(timeout, async {
            write_frame(&mut self.stream, request, blob).await?;
            let (response, blob): (Response, Vec<u8>) = read_frame(&mut self.stream).await?;
            match response {
                Response::Refused(why) => Err(RpcError::Refused(why)),
                response => Ok((response, blob)),
            }
        })
        .await
        .map_err(|_| RpcError::Timeout(timeout))?
    }
}

/// A lazily opened connection that reopens after a failure.
pub struct Channel {
    route: Route,
    connection: Option<Connection>,
}

impl Channel {
    pub fn new(route: Route) -> Channel {
        Channel { route, connection: None }
    }

    pub fn route(&self) -> &Route {
        &self.route
    }

    pub async fn call(
        &mut self,
        request: &Request,
        blob: &[u8],
        timeout: Duration,
    ) -> Result<(Response, Vec<u8>), RpcError> {
        // Taken out for the call and put back only after a whole exchange. openraft bounds
        // its calls with timeouts of its own and drops the future when one fires: a
        // connection left in place mid-call would hand the next call the previous call's
        // late answer (a success for entries never received — acknowledgements Raft counts
        // towards a quorum). Found by the fault harness: a partitioned leader committed
        // entries the new leader lacked, and two servers stopped on openraft's assertion.
        let mut connection = match self.connection.take() {
            Some(c) => c,
            None => Connection::open(&self.route).await?,
        };
        let result = connection.call(request, blob, timeout).await;
        if result.is_ok() {
            self.connection = Some(connection);
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn roundtrip(bytes: Vec<u8>) -> Result<(Request, Vec<u8>), FrameError> {
        let mut reader = std::io::Cursor::new(bytes);
        read_frame(&mut reader).await
    }

    fn frame(version: u8, json: &[u8], blob: &[u8]) -> Vec<u8> {
        let mut f = vec![version];
        f.extend_from_slice(&(json.len() as u32).to_be_bytes());
        f.extend_from_slice(&(blob.len() as u32).to_be_bytes());
        f.extend_from_slice(json);
        f.extend_from_slice(blob);
        f
    }

    /// A call dropped mid-exchange (openraft's own timeouts do that) must not leave its
    /// late answer on the connection for the next call to take as its own.
    #[tokio::test]
    async fn a_dropped_call_does_not_hand_its_answer_to_the_next_one() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let server = tokio::spawn(async move {
            let mut answered = 0u64;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let Ok((Request::Hello { .. }, _)) = read_frame::<Request>(&mut stream).await else { return };
                write_frame(&mut stream, &Response::Hello, &[]).await.expect("hello");
                while let Ok((request, _)) = read_frame::<Request>(&mut stream).await {
                    assert!(matches!(request, Request::ReadIndex { .. }));
                    answered += 1;
                    if answered == 1 {
                        // The first answer comes late, after its caller gave up.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    let answer = Response::ReadIndex(Ok(answered));
                    if write_frame(&mut stream, &answer, &[]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let route = Route { cluster: "dc1".into(), from: 1, to: 2, addr, remote: None, tls: None };
        let mut channel = Channel::new(route);
        let request = Request::ReadIndex { consistent: false };
        let first =
            tokio::time::timeout(Duration::from_millis(100), channel.call(&request, &[], Duration::from_secs(5))).await;
        assert!(first.is_err(), "the first call is dropped by the outer timeout");
        tokio::time::sleep(Duration::from_millis(400)).await; // its answer has arrived by now
        let (second, _) = channel.call(&request, &[], Duration::from_secs(5)).await.expect("second call");
        assert!(matches!(second, Response::ReadIndex(Ok(2))), "got {second:?}: the first call's answer");
        server.abort();
    }

    #[tokio::test]
    async fn frames_round_trip_with_their_blob() {
        let mut out = Vec::new();
        write_frame(&mut out, &Request::ReadIndex { consistent: true }, b"chunk").await.expect("write");
        let (request, blob) = roundtrip(out).await.expect("read");
        assert!(matches!(request, Request::ReadIndex { consistent: true }));
        assert_eq!(blob, b"chunk");
    }

    #[tokio::test]
    async fn hostile_frames_are_refused_before_allocation_or_decoding() {
        let status = br#""Status""#;
        assert!(matches!(roundtrip(frame(2, status, b"")).await, Err(FrameError::Version(2))));
        let mut huge = frame(1, b"", b"");
        huge[1..5].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(roundtrip(huge).await, Err(FrameError::TooLarge { what: "message", .. })));
        let mut huge_blob = frame(1, b"", b"");
        huge_blob[5..9].copy_from_slice(&(BLOB_BYTES_MAX as u32 + 1).to_be_bytes());
        assert!(matches!(roundtrip(huge_blob).await, Err(FrameError::TooLarge { what: "data", .. })));
        let mut truncated = frame(1, status, b"abc");
        truncated.truncate(truncated.len() - 1);
        assert!(matches!(roundtrip(truncated).await, Err(FrameError::Io(_))));
        assert!(matches!(roundtrip(frame(1, b"{\"Nope\":1}", b"")).await, Err(FrameError::Decode(_))));
        assert!(matches!(roundtrip(Vec::new()).await, Err(FrameError::Closed)));
        assert!(matches!(roundtrip(frame(1, status, b"")).await, Ok((Request::Status, _))));
    }
}
