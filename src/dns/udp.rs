//! The UDP listeners: one `SO_REUSEPORT` socket per core, each with a tight receive → answer
//! → send loop that answers cairn's names inline (no task per datagram). Only answers that
//! need I/O (static zones, forwarding) leave the loop, as tasks bounded by the service's
//! slow-path permits. Every answer passes the response-rate limit first, when one is set.

use std::net::SocketAddr;
use std::sync::Arc;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cache::AnswerCache;
use super::service::DnsService;
use super::wire::{Reply, Transport};

/// Receive buffer: the largest UDP query cairn reads.
const DATAGRAM_MAX: usize = 4096;

/// Binds `count` sockets to `addr` with `SO_REUSEPORT` (port 0: the first picks a port, the
/// rest share it).
pub fn bind(addr: SocketAddr, count: usize) -> std::io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        socket.set_nonblocking(true)?;
        // Room for bursts: a few thousand queries queue in the kernel, not in cairn.
        let _ = socket.set_recv_buffer_size(4 << 20);
        socket.bind(&addr.into())?;
        let socket = UdpSocket::from_std(socket.into())?;
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Serves one socket until `shutdown`.
pub async fn serve(socket: UdpSocket, service: Arc<DnsService>, shutdown: CancellationToken, tasks: TaskTracker) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; DATAGRAM_MAX];
    let mut cache = AnswerCache::default();
    let counters = service.loop_counters();
    loop {
        let (len, src) = tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => match received {
                Ok(pair) => pair,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems; keep going.
                    tracing::debug!(error = %e, "DNS UDP receive failed");
                    continue;
                }
            },
        };
        let started = counters.time_this_one().then(std::time::Instant::now);
        let took = move || started.map(|at| at.elapsed());
        let packet = &buf[..len];
        let now_secs =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
        let reply = match cache.reply(packet, &service, now_secs) {
            Some(reply) => {
                counters.cache(matches!(reply, Reply::Bytes(_)));
                reply
            }
            None => {
                counters.cache(false);
                service.reply_fast(packet, Transport::Udp)
            }
        };
        match reply {
            Reply::Drop => {}
            Reply::Bytes(answer) => {
                if let Some(answer) = service.rate_limited(src.ip(), answer) {
                    send(&socket, &answer, src).await;
                    counters.answered(packet, &answer, took());
                }
            }
            Reply::NotOurs => match service.try_slow_permit() {
                Some(permit) => {
                    let (socket, service, packet) = (Arc::clone(&socket), Arc::clone(&service), packet.to_vec());
                    // Not the loop's own counters: those have one writer, the loop.
                    let counters = service.slow_counters();
                    tasks.spawn(async move {
                        let answer = service.reply_elsewhere(packet.clone(), src, Transport::Udp).await;
                        if let Some(answer) = service.rate_limited(src.ip(), answer) {
                            send(&socket, &answer, src).await;
                            counters.answered(&packet, &answer, took());
                        }
                        drop(permit);
                    });
                }
                None => {
                    if let Some(answer) = DnsService::servfail(packet).and_then(|a| service.rate_limited(src.ip(), a)) {
                        send(&socket, &answer, src).await;
                        counters.answered(packet, &answer, took());
                    }
                }
            },
        }
    }
}

async fn send(socket: &UdpSocket, answer: &[u8], to: SocketAddr) {
    if answer.is_empty() {
        return;
    }
    if let Err(e) = socket.send_to(answer, to).await {
        tracing::debug!(error = %e, client = %to, "DNS UDP send failed");
    }
}
