//! Forwarding names cairn does not own to the configured recursors, over the transport the
//! client used, relaying the upstream answer unchanged.
//!
//! Rules (Consul's): recursors are tried in order (`sequential`) or shuffled (`random`); an
//! answer counts only if its rcode is NOERROR or NXDOMAIN, else the next recursor is tried;
//! when all fail the client gets SERVFAIL. Each attempt has `recursor_timeout`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use rand::seq::SliceRandom;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::wire::Transport;

/// Largest upstream UDP answer read (EDNS payloads above this are not offered by cairn).
const UDP_RECEIVE_MAX: usize = 65_535;

pub struct Forwarder {
    recursors: Vec<SocketAddr>,
    timeout: Duration,
    random: bool,
}

/// Why a forward produced no answer.
#[derive(Debug, PartialEq, Eq)]
pub enum ForwardError {
    /// Every recursor failed, timed out or answered with another rcode.
    AllFailed,
}

impl Forwarder {
    pub fn new(recursors: Vec<SocketAddr>, timeout: Duration, random: bool) -> Self {
        Forwarder { recursors, timeout, random }
    }

    pub fn is_empty(&self) -> bool {
        self.recursors.is_empty()
    }

    /// Sends `query` (raw bytes) upstream and returns the first acceptable answer's bytes.
    pub async fn forward(&self, query: &[u8], transport: Transport) -> Result<Vec<u8>, ForwardError> {
        let mut order = self.recursors.clone();
        if self.random {
            order.shuffle(&mut rand::rng());
        }
        let id = [query[0], query[1]];
        for upstream in order {
            let attempt: Attempt<'_> = match transport {
                Transport::Udp => Box::pin(ask_udp(upstream, query, id)),
                Transport::Tcp => Box::pin(ask_tcp(upstream, query)),
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(answer)) if acceptable(&answer, id) => return Ok(answer),
                Ok(Ok(_)) => tracing::debug!(%upstream, "recursor answered with an unusable rcode; trying the next"),
                Ok(Err(e)) => tracing::debug!(%upstream, error = %e, "recursor failed; trying the next"),
                Err(_) => tracing::debug!(%upstream, "recursor timed out; trying the next"),
            }
        }
        Err(ForwardError::AllFailed)
    }
}

/// An answer is relayed only if it is a response to our query with NOERROR or NXDOMAIN.
fn acceptable(answer: &[u8], id: [u8; 2]) -> bool {
    answer.len() >= 12 && answer[..2] == id && answer[2] & 0x80 != 0 && matches!(answer[3] & 0x0f, 0 | 3)
}

type Attempt<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<u8>>> + Send + 'a>>;

async fn ask_udp(upstream: SocketAddr, query: &[u8], id: [u8; 2]) -> std::io::Result<Vec<u8>> {
    {
        let local: IpAddr =
            if upstream.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        // A fresh connected socket per forward: the kernel drops datagrams from anyone but the
        // upstream, and its random source port defends against spoofed answers.
        let socket = UdpSocket::bind(SocketAddr::new(local, 0)).await?;
        socket.connect(upstream).await?;
        socket.send(query).await?;
        let mut buf = vec![0; UDP_RECEIVE_MAX];
        loop {
            let n = socket.recv(&mut buf).await?;
            if n >= 2 && buf[..2] == id {
                buf.truncate(n);
                return Ok(buf);
            }
        }
    }
}

async fn ask_tcp(upstream: SocketAddr, query: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len()).map_err(|_| std::io::Error::other("query longer than 65535 bytes"))?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut answer = vec![0; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut answer).await?;
    Ok(answer)
}
