//! Delay on a link without `sch_netem` (this machine's kernel has none): packets a node
//! sends to the delayed peers are handed to userspace by an `NFQUEUE` rule in the node's own
//! namespace, and a thread of the harness, inside that namespace, gives each one back
//! (`NF_ACCEPT`) once it has waited the delay — in order, so the link stays FIFO as a real
//! one does. A few netlink messages (nfnetlink_queue, `NFQNL_COPY_META`: only ids cross).
//!
//! Every wait is bounded: the thread polls with a timeout, stops when asked, and gives back
//! every packet it holds before it closes the queue (a closed queue drops what it held).

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;
const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NF_ACCEPT: u32 = 1;
/// Packets the kernel holds for the queue before it drops new ones.
const QUEUE_MAXLEN: u32 = 16_384;

/// One queue's reader, running until dropped.
pub struct Delayer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl Delayer {
    /// Reads queue `queue` in namespace `namespace` (a name under `/run/netns`), holding each
    /// packet `delay`. Returns once the queue is bound, so no packet meets an unread queue.
    pub fn start(namespace: &str, queue: u16, delay: Duration) -> Result<Delayer, String> {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = format!("/run/netns/{namespace}");
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let socket = match enter(&path).and_then(|()| bind(queue)) {
                Ok(socket) => socket,
                Err(e) => {
                    let why = format!("NFQUEUE {queue} in {path}: {e}");
                    let _ = ready_tx.send(Err(why.clone()));
                    return Err(why);
                }
            };
            let _ = ready_tx.send(Ok(()));
            relay(&socket, queue, delay, &flag).map_err(|e| format!("NFQUEUE {queue}: {e}"))
        });
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => Ok(Delayer { stop, thread: Some(thread) }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("NFQUEUE {queue} in {namespace}: not bound within 10 s")),
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            if let Ok(Err(e)) = thread.join() {
                println!("  delay: {e}");
            }
        }
    }
}

/// Moves this thread into the network namespace at `path`.
fn enter(path: &str) -> io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: setns(2) on a namespace file we hold open; it changes this thread only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn bind(queue: u16) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: a zeroed sockaddr_nl is valid; the kernel picks our port id.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as u16;
    let len = std::mem::size_of::<libc::sockaddr_nl>() as u32;
    // SAFETY: `addr` is a sockaddr_nl of `len` bytes.
    if unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_nl).cast(), len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let rcvbuf: i32 = 4 << 20;
    // SAFETY: an int option of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&rcvbuf as *const i32).cast(),
            std::mem::size_of::<i32>() as u32,
        )
    };
    let mut cmd = vec![NFQNL_CFG_CMD_BIND, 0];
    cmd.extend((libc::AF_INET as u16).to_be_bytes());
    send(&socket, NFQNL_MSG_CONFIG, queue, &[(NFQA_CFG_CMD, &cmd)], true)?;
    let mut params = 0xffffu32.to_be_bytes().to_vec();
    params.push(NFQNL_COPY_META);
    send(&socket, NFQNL_MSG_CONFIG, queue, &[(NFQA_CFG_PARAMS, &params)], true)?;
    send(&socket, NFQNL_MSG_CONFIG, queue, &[(NFQA_CFG_QUEUE_MAXLEN, &QUEUE_MAXLEN.to_be_bytes())], true)?;
    Ok(socket)
}

/// Sends one nfnetlink_queue message; with `ack`, waits for the kernel's answer to it.
fn send(socket: &OwnedFd, kind: u16, queue: u16, attrs: &[(u16, &[u8])], ack: bool) -> io::Result<()> {
    let mut body = vec![libc::AF_UNSPEC as u8, 0];
    body.extend(queue.to_be_bytes());
    for (kind, value) in attrs {
        body.extend((4 + value.len() as u16).to_ne_bytes());
        body.extend(kind.to_ne_bytes());
        body.extend(*value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    let flags = libc::NLM_F_REQUEST as u16 | if ack { libc::NLM_F_ACK as u16 } else { 0 };
    let mut message = Vec::with_capacity(16 + body.len());
    message.extend((16 + body.len() as u32).to_ne_bytes());
    message.extend(((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    message.extend(flags.to_ne_bytes());
    message.extend(0u32.to_ne_bytes()); // sequence
    message.extend(0u32.to_ne_bytes()); // port id: the kernel
    message.extend(body);
    // SAFETY: sending our own buffer.
    if unsafe { libc::send(socket.as_raw_fd(), message.as_ptr().cast(), message.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    if !ack {
        return Ok(());
    }
    let mut buf = [0u8; 512];
    let n = receive(socket, &mut buf, Duration::from_secs(5))?;
    // An NLMSG_ERROR with error 0 is the ack.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == libc::NLMSG_ERROR as u16 {
        let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if code != 0 {
            return Err(io::Error::from_raw_os_error(-code));
        }
    }
    Ok(())
}

/// Receives one datagram within `wait`; 0 bytes when none came.
fn receive(socket: &OwnedFd, buf: &mut [u8], wait: Duration) -> io::Result<usize> {
    let mut poll = libc::pollfd { fd: socket.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let millis = wait.as_millis().clamp(0, 1000) as i32;
    // SAFETY: one pollfd we own.
    let ready = unsafe { libc::poll(&mut poll, 1, millis) };
    if ready < 0 {
        return Err(io::Error::last_os_error());
    }
    if ready == 0 {
        return Ok(0);
    }
    // SAFETY: receiving into our own buffer of its length.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        let e = io::Error::last_os_error();
        // ENOBUFS: the kernel dropped notifications (its queue was full): they are lost
        // packets, as on a congested link; go on.
        return if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::ENOBUFS)) { Ok(0) } else { Err(e) };
    }
    Ok(n as usize)
}

/// Holds every queued packet `delay`, then accepts it; until `stop`, then accepts the rest.
fn relay(socket: &OwnedFd, queue: u16, delay: Duration, stop: &AtomicBool) -> io::Result<()> {
    let mut held: VecDeque<(u32, Instant)> = VecDeque::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        while let Some((id, due)) = held.front().copied() {
            if !stopping && due > Instant::now() {
                break;
            }
            held.pop_front();
            send(socket, NFQNL_MSG_VERDICT, queue, &[(NFQA_VERDICT_HDR, &verdict(id))], false)?;
        }
        if stopping {
            return Ok(());
        }
        let wait =
            held.front().map_or(Duration::from_millis(100), |(_, due)| due.saturating_duration_since(Instant::now()));
        let n = receive(socket, &mut buf, wait.min(Duration::from_millis(100)))?;
        let now = Instant::now();
        for id in packet_ids(&buf[..n]) {
            held.push_back((id, now + delay));
        }
    }
}

fn verdict(id: u32) -> [u8; 8] {
    let mut v = [0u8; 8];
    v[..4].copy_from_slice(&NF_ACCEPT.to_be_bytes());
    v[4..].copy_from_slice(&id.to_be_bytes());
    v
}

/// The packet ids in a datagram of netlink messages.
fn packet_ids(mut data: &[u8]) -> Vec<u32> {
    let mut ids = Vec::new();
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            break;
        }
        if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // After the nlmsghdr (16) and the nfgenmsg (4): attributes.
            let mut attrs = &data[20.min(len)..len];
            while attrs.len() >= 4 {
                let attr_len = u16::from_ne_bytes([attrs[0], attrs[1]]) as usize;
                let attr_kind = u16::from_ne_bytes([attrs[2], attrs[3]]) & 0x7fff;
                if attr_len < 4 || attr_len > attrs.len() {
                    break;
                }
                if attr_kind == NFQA_PACKET_HDR && attr_len >= 8 {
                    ids.push(u32::from_be_bytes([attrs[4], attrs[5], attrs[6], attrs[7]]));
                }
                attrs = &attrs[attr_len.next_multiple_of(4).min(attrs.len())..];
            }
        }
        data = &data[len.next_multiple_of(4).min(data.len())..];
    }
    ids
}
