//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766): two-byte length-prefixed messages, answered in
//! order on each connection, by the same responder as UDP.
//!
//! Bounded: connections in all (`limits.dns_tcp_max_conns`) and per client address
//! (`limits.dns_tcp_max_conns_per_client`); past either a new connection is closed at once
//! and the refusal logged (at most once per 10 s, with a count). A connection that sends
//! nothing for [`IDLE_TIMEOUT`], or does not take its answer in that time, is closed. So
//! clients holding thousands of idle connections cost at most the caps, and other clients,
//! and UDP, keep being answered.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::DnsService;
use crate::per_address::PerAddress;
use crate::refusals::Refusals;

/// How long an idle connection stays open, and how long an answer may take to be taken.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The bounds of the TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    pub max_conns: u32,
    pub max_conns_per_client: u32,
}

/// Accepts connections on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    service: Arc<DnsService>,
    limits: TcpLimits,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let slots = Arc::new(Semaphore::new(limits.max_conns.max(1) as usize));
    let per_client = PerAddress::default();
    let (over_total, over_client) = (Refusals::default(), Refusals::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "DNS TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            if let Some(refused) = over_total.refused() {
                tracing::warn!(limit = limits.max_conns, refused, last_client = %peer,
                    "DNS TCP connections at limits.dns_tcp_max_conns; closing new ones");
            }
            continue;
        };
        let Some(client_slot) = per_client.try_take(peer.ip(), limits.max_conns_per_client.max(1)) else {
            if let Some(refused) = over_client.refused() {
                tracing::warn!(limit = limits.max_conns_per_client, refused, client = %peer.ip(),
                    "DNS TCP connections from one address at limits.dns_tcp_max_conns_per_client; closing new ones");
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (service, shutdown) = (Arc::clone(&service), shutdown.clone());
        tasks.spawn(async move {
            connection(stream, peer, &service, shutdown).await;
            drop((slot, client_slot));
        });
    }
}

/// Answers the messages of one connection in order until it closes, idles or errs.
async fn connection(mut stream: TcpStream, peer: SocketAddr, service: &DnsService, shutdown: CancellationToken) {
    loop {
        let mut length = [0u8; 2];
        let read = tokio::select! {
            _ = shutdown.cancelled() => return,
            read = tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut length)) => read,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(length))];
        if !matches!(tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut packet)).await, Ok(Ok(_))) {
            return;
        }
        let Some(answer) = service.answer_tcp(packet, peer).await else { continue };
        let Ok(length) = u16::try_from(answer.len()) else { continue };
        let mut frame = Vec::with_capacity(2 + answer.len());
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(&answer);
        if !matches!(tokio::time::timeout(IDLE_TIMEOUT, stream.write_all(&frame)).await, Ok(Ok(()))) {
            return;
        }
    }
}
