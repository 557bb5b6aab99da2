//! The UDP listeners: one `SO_REUSEPORT` socket per core, each served by a thread of its own
//! that takes a batch of datagrams with one `recvmmsg`, answers cairn's names inline (no
//! task per datagram) and sends the batch's answers with one `sendmmsg`. Only answers that
//! need I/O (static zones, forwarding) leave the thread, as tasks on the runtime bounded by
//! the service's slow-path permits. Every answer passes the response-rate limit first, when
//! one is set.
//!
//! Why threads and not runtime tasks: a task on tokio's shared I/O driver costs, per
//! datagram, a readiness round trip and — with several workers — wake-ups across cores;
//! a thread blocked in `recvmmsg` is woken by the kernel directly and answers everything
//! queued in one pass (see bench/README.md, "DNS on every core").

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cache::AnswerCache;
use super::service::DnsService;
use super::wire::{Reply, Transport};

/// Receive buffer: the largest UDP query cairn reads.
const DATAGRAM_MAX: usize = 4096;
/// Datagrams taken per `recvmmsg` (and answers sent per `sendmmsg`).
const BATCH: usize = 32;
/// How long a receive blocks before the thread looks at the shutdown token again (shutdown
/// normally wakes it at once by shutting the socket down for reading).
const RECEIVE_WAKE: Duration = Duration::from_millis(500);

/// Binds `count` sockets to `addr` with `SO_REUSEPORT` (port 0: the first picks a port, the
/// rest share it), each asking the kernel for `receive_buffer` bytes of queue.
pub fn bind(addr: SocketAddr, count: usize, receive_buffer: usize) -> io::Result<Vec<Socket>> {
    let mut sockets = Vec::with_capacity(count);
    let mut addr = addr;
    for n in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        socket.set_reuse_port(true)?;
        if addr.is_ipv6() {
            socket.set_only_v6(true)?;
        }
        // Room for bursts and stalls: queries queue in the kernel, not in cairn. Linux caps the
        // request at `net.core.rmem_max`, then doubles it for its bookkeeping.
        let _ = socket.set_recv_buffer_size(receive_buffer);
        if n == 0 {
            let granted = socket.recv_buffer_size().unwrap_or(0);
            if granted < receive_buffer {
                // Info, not a warning: most hosts' default cap (208 KiB) is below the default ask.
                tracing::info!(
                    requested = receive_buffer,
                    granted,
                    "the DNS UDP receive buffer is smaller than limits.dns_udp_receive_buffer_bytes asks \
                     (the kernel caps it at net.core.rmem_max; raise that sysctl for more): fewer queries \
                     wait through a busy moment, more are dropped"
                );
            }
        }
        socket.set_read_timeout(Some(RECEIVE_WAKE))?;
        socket.bind(&addr.into())?;
        addr = socket.local_addr()?.as_socket().ok_or_else(|| io::Error::other("UDP socket has no IP address"))?;
        sockets.push(socket);
    }
    Ok(sockets)
}

/// Serves each socket on a thread of its own until `shutdown`; `tasks` tracks them (a task
/// per thread ends when its thread has), so waiting on `tasks` waits for the threads too.
/// Slow-path answers run as tasks on the current runtime.
pub fn spawn(
    sockets: Vec<Socket>,
    service: Arc<DnsService>,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> io::Result<()> {
    let runtime = tokio::runtime::Handle::current();
    for (n, socket) in sockets.into_iter().enumerate() {
        let socket = Arc::new(socket);
        let (exited, thread_gone) = tokio::sync::oneshot::channel::<()>();
        let worker = Worker {
            socket: Arc::clone(&socket),
            service: Arc::clone(&service),
            shutdown: shutdown.clone(),
            runtime: runtime.clone(),
            tasks: tasks.clone(),
        };
        std::thread::Builder::new().name(format!("cairn-dns-udp-{n}")).spawn(move || {
            worker.serve();
            drop(exited);
        })?;
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let mut thread_gone = thread_gone;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {}
                _ = &mut thread_gone => {
                    // Only a panic ends a thread before shutdown.
                    tracing::error!(socket = n, "a DNS UDP thread stopped; queries the kernel hands its socket go unanswered");
                    return;
                }
            }
            // Wakes the thread out of its receive (Linux lets an unconnected UDP socket be
            // shut down for reading: receives return at once from then on).
            let _ = socket.shutdown(std::net::Shutdown::Read);
            let _ = thread_gone.await;
        });
    }
    Ok(())
}

/// One socket's thread.
struct Worker {
    socket: Arc<Socket>,
    service: Arc<DnsService>,
    shutdown: CancellationToken,
    runtime: tokio::runtime::Handle,
    tasks: TaskTracker,
}

/// An answer of the current batch: the slot its query came in, the bytes, when the query was
/// taken (for the one query in many the counters time).
struct Pending {
    slot: usize,
    answer: Vec<u8>,
    started: Option<Instant>,
}

impl Worker {
    fn serve(self) {
        let mut batch = Batch::new();
        let mut cache = AnswerCache::default();
        let mut answers: Vec<Pending> = Vec::with_capacity(BATCH);
        let counters = self.service.loop_counters();
        while !self.shutdown.is_cancelled() {
            let received = match batch.receive(&self.socket) {
                Ok(received) => received,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                    ) {
                        // ICMP errors from earlier sends surface here on some systems.
                        tracing::debug!(error = %e, "DNS UDP receive failed");
                    }
                    continue;
                }
            };
            let now_secs =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
            cache.refresh(&self.service, now_secs);
            for slot in 0..received {
                let (packet, src) = batch.datagram(slot);
                let Some(src) = src else { continue };
                let started = counters.time_this_one().then(Instant::now);
                let reply = match cache.reply(packet, &self.service) {
                    Some(reply) => {
                        counters.cache(matches!(reply, Reply::Bytes(_)));
                        reply
                    }
                    None => {
                        counters.cache(false);
                        self.service.reply_fast(packet, Transport::Udp)
                    }
                };
                match reply {
                    Reply::Drop => {}
                    Reply::Bytes(answer) => {
                        if let Some(answer) = self.service.rate_limited(src.ip(), answer) {
                            answers.push(Pending { slot, answer, started });
                        }
                    }
                    Reply::NotOurs => match self.service.try_slow_permit() {
                        Some(permit) => {
                            let (socket, service, packet) =
                                (Arc::clone(&self.socket), Arc::clone(&self.service), packet.to_vec());
                            // Not the thread's own counters: those have one writer, the thread.
                            let counters = service.slow_counters();
                            self.tasks.spawn_on(
                                async move {
                                    let answer = service.reply_elsewhere(packet.clone(), src, Transport::Udp).await;
                                    if let Some(answer) = service.rate_limited(src.ip(), answer) {
                                        send_one(&socket, &answer, src);
                                        counters.answered(&packet, &answer, started.map(|at| at.elapsed()));
                                    }
                                    drop(permit);
                                },
                                &self.runtime,
                            );
                        }
                        None => {
                            if let Some(answer) =
                                DnsService::servfail(packet).and_then(|a| self.service.rate_limited(src.ip(), a))
                            {
                                answers.push(Pending { slot, answer, started });
                            }
                        }
                    },
                }
            }
            batch.send(&self.socket, &answers);
            for pending in answers.drain(..) {
                let (packet, _) = batch.datagram(pending.slot);
                counters.answered(packet, &pending.answer, pending.started.map(|at| at.elapsed()));
            }
        }
    }
}

/// Sends one answer from a slow-path task without blocking its runtime thread: a full send
/// buffer drops the answer, as the network may (the client retries).
fn send_one(socket: &Socket, answer: &[u8], to: SocketAddr) {
    if answer.is_empty() {
        return;
    }
    if let Err(e) = socket.send_to_with_flags(answer, &SockAddr::from(to), libc::MSG_DONTWAIT) {
        tracing::debug!(error = %e, client = %to, "DNS UDP send failed");
    }
}

/// The buffers of one `recvmmsg`/`sendmmsg` pair: `BATCH` datagram buffers and their
/// source addresses, and the kernel's message headers pointing into them (rewritten before
/// every system call; the heap buffers they point into never move). Lives on its thread.
struct Batch {
    buffers: Box<[[u8; DATAGRAM_MAX]]>,
    sources: Box<[libc::sockaddr_storage]>,
    iovecs: Box<[libc::iovec]>,
    headers: Box<[libc::mmsghdr]>,
    /// Bytes received in each slot of the last receive.
    lengths: [usize; BATCH],
    /// Source address length of each slot.
    source_lengths: [libc::socklen_t; BATCH],
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: all-zero bytes are valid values of these plain C structs.
        let zeroed = || unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        Batch {
            buffers: vec![[0u8; DATAGRAM_MAX]; BATCH].into_boxed_slice(),
            sources: (0..BATCH).map(|_| zeroed()).collect(),
            iovecs: (0..BATCH).map(|_| libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }).collect(),
            // SAFETY: as above.
            headers: (0..BATCH).map(|_| unsafe { MaybeUninit::<libc::mmsghdr>::zeroed().assume_init() }).collect(),
            lengths: [0; BATCH],
            source_lengths: [0; BATCH],
        }
    }

    /// Blocks until at least one datagram arrives (or the read timeout passes), then takes
    /// every one already queued, up to `BATCH`. Returns how many.
    fn receive(&mut self, socket: &Socket) -> io::Result<usize> {
        for slot in 0..BATCH {
            self.iovecs[slot] = libc::iovec { iov_base: self.buffers[slot].as_mut_ptr().cast(), iov_len: DATAGRAM_MAX };
            let header = &mut self.headers[slot].msg_hdr;
            header.msg_name = std::ptr::from_mut(&mut self.sources[slot]).cast();
            header.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            header.msg_iov = std::ptr::from_mut(&mut self.iovecs[slot]);
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
            self.headers[slot].msg_len = 0;
        }
        // SAFETY: `headers` holds BATCH initialized headers whose name and iovec pointers
        // point into this batch's buffers, valid for the lengths given.
        let received = unsafe {
            libc::recvmmsg(
                socket.as_raw_fd(),
                self.headers.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        let received = received as usize;
        for slot in 0..received {
            self.lengths[slot] = (self.headers[slot].msg_len as usize).min(DATAGRAM_MAX);
            self.source_lengths[slot] = self.headers[slot].msg_hdr.msg_namelen;
        }
        Ok(received)
    }

    /// The datagram in `slot` of the last receive and where it came from (`None`: an address
    /// family cairn does not answer).
    fn datagram(&self, slot: usize) -> (&[u8], Option<SocketAddr>) {
        (&self.buffers[slot][..self.lengths[slot]], socket_addr(&self.sources[slot], self.source_lengths[slot]))
    }

    /// Sends each answer to the source of its slot, as many per system call as the kernel
    /// takes. A datagram the kernel refuses is skipped (logged); the rest still go.
    fn send(&mut self, socket: &Socket, answers: &[Pending]) {
        let answers: Vec<&Pending> = answers.iter().filter(|p| !p.answer.is_empty()).collect();
        for (n, pending) in answers.iter().enumerate() {
            self.iovecs[n] =
                libc::iovec { iov_base: pending.answer.as_ptr().cast_mut().cast(), iov_len: pending.answer.len() };
            let header = &mut self.headers[n].msg_hdr;
            header.msg_name = std::ptr::from_mut(&mut self.sources[pending.slot]).cast();
            header.msg_namelen = self.source_lengths[pending.slot];
            header.msg_iov = std::ptr::from_mut(&mut self.iovecs[n]);
            header.msg_iovlen = 1;
            header.msg_control = std::ptr::null_mut();
            header.msg_controllen = 0;
            header.msg_flags = 0;
        }
        let mut from = 0;
        while from < answers.len() {
            // SAFETY: headers[from..answers.len()] were set above; their iovecs point into
            // answers that outlive this call, their names into `sources`.
            let sent = unsafe {
                libc::sendmmsg(
                    socket.as_raw_fd(),
                    self.headers[from..].as_mut_ptr(),
                    (answers.len() - from) as libc::c_uint,
                    0,
                )
            };
            if sent > 0 {
                from += sent as usize;
                continue;
            }
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let to = socket_addr(&self.sources[answers[from].slot], self.source_lengths[answers[from].slot]);
            tracing::debug!(error = %e, client = ?to, "DNS UDP send failed");
            from += 1;
        }
    }
}

/// The socket address in `storage` (IPv4 or IPv6), as the kernel filled it.
fn socket_addr(storage: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(storage.ss_family) {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough.
            let v4 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(v4.sin_port))))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let v6 = unsafe { &*std::ptr::from_ref(storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(v6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(v6.sin6_port), v6.sin6_flowinfo, v6.sin6_scope_id)))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_takes_what_is_queued_answers_each_source_and_shutdown_wakes_the_receive() {
        let socket = bind("127.0.0.1:0".parse().unwrap(), 1, 1 << 20).unwrap().remove(0);
        socket.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let server = socket.local_addr().unwrap().as_socket().unwrap();
        let clients: Vec<std::net::UdpSocket> =
            (0..3).map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap()).collect();
        for (n, client) in clients.iter().enumerate() {
            client.send_to(format!("query {n}").as_bytes(), server).unwrap();
        }
        let mut batch = Batch::new();
        let mut received = 0;
        let mut answers = Vec::new();
        while received < 3 {
            let got = batch.receive(&socket).unwrap();
            for slot in 0..got {
                let (packet, src) = batch.datagram(slot);
                let mut answer = b"answer to ".to_vec();
                answer.extend_from_slice(packet);
                assert!(clients.iter().any(|c| Some(c.local_addr().unwrap()) == src));
                answers.push(Pending { slot, answer, started: None });
            }
            batch.send(&socket, &answers);
            answers.clear();
            received += got;
        }
        for (n, client) in clients.iter().enumerate() {
            client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 64];
            let len = client.recv(&mut buf).unwrap();
            assert_eq!(&buf[..len], format!("answer to query {n}").as_bytes());
        }
        // A receive blocked for up to 30 s returns as soon as the socket is shut down for reading.
        let socket = Arc::new(socket);
        let blocked = {
            let socket = Arc::clone(&socket);
            std::thread::spawn(move || {
                let started = Instant::now();
                let _ = Batch::new().receive(&socket);
                started.elapsed()
            })
        };
        // Either order passes (a receive after the shutdown returns at once too); the pause
        // makes the blocked case the one tested.
        std::thread::sleep(Duration::from_millis(100));
        socket.shutdown(std::net::Shutdown::Read).unwrap_or(());
        let waited = blocked.join().unwrap();
        assert!(waited < Duration::from_secs(5), "the receive stayed blocked for {waited:?}");
    }

    #[test]
    fn sockets_ask_for_the_receive_buffer_given() {
        let granted = |ask: usize| {
            let socket = bind("127.0.0.1:0".parse().unwrap(), 1, ask).unwrap().remove(0);
            socket.recv_buffer_size().unwrap()
        };
        // Linux doubles what is asked (below its cap, net.core.rmem_max: 208 KiB by default).
        assert_eq!(granted(64 << 10), 128 << 10);
        assert!(granted(1 << 20) > 128 << 10);
    }

    #[test]
    fn socket_addresses_convert_both_families() {
        for addr in ["127.0.0.1:8600", "[::1]:53", "[fe80::1%2]:5353"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let raw = SockAddr::from(addr);
            // SAFETY: a sockaddr_storage is at least as large as any address socket2 holds.
            let storage = unsafe { *raw.as_ptr().cast::<libc::sockaddr_storage>() };
            assert_eq!(socket_addr(&storage, raw.len()), Some(addr));
        }
        let mut storage = unsafe { MaybeUninit::<libc::sockaddr_storage>::zeroed().assume_init() };
        storage.ss_family = libc::AF_UNIX as libc::sa_family_t;
        assert_eq!(socket_addr(&storage, 110), None);
    }
}
