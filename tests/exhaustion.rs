//! Hostile load that must not stop the agent serving everyone else: thousands of idle TCP
//! connections to DNS and HTTP, slow-loris HTTP clients, a 1 GiB request body, a 100 MB
//! config file, a hundred concurrent backups. The attackers connect from 127.0.0.2 (any
//! 127/8 address is loopback on Linux), the well-behaved client from 127.0.0.1.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use support::Agent;

const ATTACKER: [u8; 4] = [127, 0, 0, 2];

/// A TCP connection to `to` from the attacker's address.
fn connect_from_attacker(to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    // The port is chosen at connect, per destination: binding port 0 before connect would
    // search the whole ephemeral range for each of thousands of sockets.
    let yes: libc::c_int = 1;
    // SAFETY: setsockopt on a socket this function owns, with a valid int option value.
    unsafe {
        use std::os::fd::AsRawFd;
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&yes as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SocketAddr::from((ATTACKER, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(5))?;
    Ok(socket.into())
}

/// `count` connections to `to` from the attacker, opened by 16 threads at once: a connect
/// that meets a port still in TIME_WAIT on the agent's side waits a second for its SYN to be
/// sent again, and in parallel those waits overlap.
fn open_from_attacker(to: SocketAddr, count: usize) -> Vec<TcpStream> {
    const THREADS: usize = 16;
    let openers: Vec<_> = (0..THREADS)
        .map(|i| {
            let share = count / THREADS + usize::from(i < count % THREADS);
            std::thread::spawn(move || {
                (0..share)
                    .map(|n| connect_from_attacker(to).unwrap_or_else(|e| panic!("connection {n} to {to} failed: {e}")))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    openers.into_iter().flat_map(|t| t.join().expect("opener")).collect()
}

/// Raises this process's open-file limit to its hard limit; returns the soft limit now.
fn raise_fd_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

/// The agent's resident memory, from /proc.
fn rss_bytes(agent: &Agent) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS");
    kb * 1024
}

/// Everything a well-behaved client does still works.
fn still_serves(agent: &Agent) {
    assert_eq!(agent.get("/v1/status/leader").status, 200, "HTTP");
    let udp = support::dns::udp(agent.dns, "consul.service.consul", RecordType::A, None);
    assert_eq!(udp.metadata.response_code, ResponseCode::NoError, "DNS over UDP");
    let tcp = support::dns::tcp(agent.dns, "consul.service.consul", RecordType::A);
    assert_eq!(tcp.answers.len(), 1, "DNS over TCP");
}

/// Memory the agent may use while under attack (a debug build).
const RSS_BOUND: u64 = 512 * 1024 * 1024;

#[test]
fn ten_thousand_idle_connections_to_dns_and_http_leave_others_served() {
    let want = 10_000u64;
    let fds = raise_fd_limit();
    let count = want.min(fds.saturating_sub(500));
    if count < want {
        println!("open-file limit {fds}: opening {count} connections per listener, not {want}");
    }
    let agent = Agent::start(&[]);
    for (what, addr) in [("DNS", agent.dns), ("HTTP", agent.http)] {
        let started = Instant::now();
        let mut held = open_from_attacker(addr, count as usize);
        println!("{what}: {count} idle connections opened in {:?}", started.elapsed());
        still_serves(&agent);
        let rss = rss_bytes(&agent);
        println!("{what}: agent RSS {} MiB with {count} connections held", rss / (1024 * 1024));
        assert!(rss < RSS_BOUND, "{what}: RSS {rss}");
        // Past the per-client cap the agent closed the attacker's connections at once.
        let mut last = held.pop().expect("held");
        last.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut buf = [0u8; 512];
        let read = last.read(&mut buf);
        assert!(
            matches!(read, Ok(0))
                || matches!(read, Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 429"))
                || read.is_err(),
            "{what}: a connection over the cap is refused: {read:?}"
        );
    }
    agent.wait_log(
        "DNS TCP connections from one address at limits.dns_tcp_max_conns_per_client",
        Duration::from_secs(5),
    );
    agent.wait_log("HTTP connection limit reached", Duration::from_secs(5));
}

#[test]
fn the_global_caps_refuse_new_connections_until_idle_ones_time_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("limits.json");
    std::fs::write(
        &config,
        r#"{"limits": {"http_max_conns": 50, "http_header_read_timeout": "1s",
                       "dns_tcp_max_conns": 50, "dns_tcp_max_conns_per_client": 1000}}"#,
    )
    .expect("config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    // 50 idle HTTP connections fill the agent; the next gets 503 at once.
    let held: Vec<TcpStream> = (0..50).map(|_| connect_from_attacker(agent.http).expect("connect")).collect();
    let refused = support::wait_for("a 503 past http_max_conns", Duration::from_secs(5), || {
        let r = support::try_http_request(agent.http, "GET", "/v1/status/leader", b"", Duration::from_secs(5))?;
        (r.status == 503).then_some(r)
    });
    assert_eq!(refused.header("Retry-After"), Some("1"));
    // Idle connections that send no request are closed after http_header_read_timeout, and
    // new clients get in again, while the attacker still holds its sockets.
    support::wait_for("HTTP served again", Duration::from_secs(10), || {
        let r = support::try_http_request(agent.http, "GET", "/v1/status/leader", b"", Duration::from_secs(5))?;
        (r.status == 200).then_some(())
    });
    drop(held);

    // DNS TCP: 50 connections fill it; the 51st is closed without an answer.
    let held: Vec<TcpStream> = (0..50).map(|_| connect_from_attacker(agent.dns).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(200)); // let the agent accept them all
    let mut extra = TcpStream::connect(agent.dns).expect("connect");
    extra.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut buf = [0u8; 2];
    assert!(matches!(extra.read(&mut buf), Ok(0) | Err(_)), "closed at once");
    agent.wait_log("DNS TCP connections at limits.dns_tcp_max_conns", Duration::from_secs(5));
    drop(held);
    // The attacker's connections gone, TCP answers again; UDP never stopped.
    let query = support::dns::query_message("consul.service.consul", RecordType::A, None).to_vec().expect("encode");
    support::wait_for("DNS TCP served again", Duration::from_secs(10), || {
        support::dns::try_raw_tcp(agent.dns, &query).ok().filter(|answer| !answer.is_empty())
    });
}

#[test]
fn slow_loris_clients_are_cut_off_while_others_are_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("limits.json");
    std::fs::write(&config, r#"{"limits": {"http_header_read_timeout": "1s"}}"#).expect("config");
    let agent = Agent::start(&["-config-file", &config.display().to_string()]);
    // 150 clients that send a header line and then one byte every 300 ms, never finishing.
    let mut slow: Vec<TcpStream> = (0..150)
        .map(|_| {
            let mut s = connect_from_attacker(agent.http).expect("connect");
            s.write_all(b"GET /v1/status/leader HTTP/1.1\r\nX-Slow: ").expect("write");
            s
        })
        .collect();
    let started = Instant::now();
    let mut closed = 0;
    while started.elapsed() < Duration::from_secs(8) && closed < slow.len() {
        still_serves(&agent);
        closed = 0;
        for s in &mut slow {
            if s.write_all(b"a").is_err() {
                closed += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    // Writes to a closed socket fail once the peer's reset arrives: every slow client is
    // gone within 8 s (the header timeout is 1 s) although each kept sending.
    assert_eq!(closed, slow.len(), "slow clients still connected after {:?}", started.elapsed());
    println!("150 slow-loris clients cut off after {:?}", started.elapsed());
}

#[test]
fn a_gigabyte_body_is_refused_without_being_read() {
    let agent = Agent::start(&[]);
    let index_before = agent.get("/v1/kv/?recurse").index();
    // Declared up front: refused on the header.
    let mut stream = TcpStream::connect(agent.http).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(b"PUT /v1/kv/huge HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n").expect("write head");
    let chunk = vec![b'x'; 1 << 20];
    let _ = stream.write_all(&chunk);
    let answer = support::read_response(&mut stream);
    assert_eq!(answer.status, 413, "{}", answer.text());
    // Chunked, with no length: the agent stops reading at its limit; the client gets 413
    // long before it has sent a gigabyte.
    let mut stream = TcpStream::connect(agent.http).expect("connect");
    stream.set_write_timeout(Some(Duration::from_secs(10))).expect("timeout");
    stream.write_all(b"PUT /v1/kv/huge HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").expect("head");
    let mut sent: u64 = 0;
    let frame = [format!("{:x}\r\n", chunk.len()).into_bytes(), chunk.clone(), b"\r\n".to_vec()].concat();
    while sent < 1 << 30 {
        if stream.write_all(&frame).is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    assert!(sent < 256 << 20, "the agent read {sent} bytes of a body over its limit");
    println!("chunked body: the agent stopped it after {} MiB sent", sent >> 20);
    assert!(rss_bytes(&agent) < RSS_BOUND);
    assert_eq!(agent.get("/v1/kv/huge").status, 404, "nothing written");
    assert_eq!(agent.get("/v1/kv/?recurse").index(), index_before, "no write at all");
    still_serves(&agent);
}

#[test]
fn a_hundred_megabyte_config_file_is_refused_by_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let big = dir.path().join("big.json");
    let mut file = std::fs::File::create(&big).expect("create");
    file.write_all(b"{\"node_meta\": {\"pad\": \"").expect("write");
    let line = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        file.write_all(&line).expect("write");
    }
    file.write_all(b"\"}}").expect("write");
    drop(file);
    let started = Instant::now();
    let path = big.display().to_string();
    let data = dir.path().join("data").display().to_string();
    let mut args = vec!["agent", "-server", "-bootstrap", "-data-dir", &data, "-config-file", &path];
    args.extend(support::LOOPBACK_FLAGS);
    let exited = Agent::run_to_exit(&args);
    assert!(!exited.status.success());
    assert!(exited.stderr.contains(&format!("config {path}: larger than 16 MiB")), "{}", exited.stderr);
    println!("refused in {:?}", started.elapsed());
}

#[test]
fn a_hundred_concurrent_backups_get_an_archive_or_429_and_the_agent_serves_on() {
    let agent = Agent::start(&[]);
    for i in 0..50 {
        assert_eq!(agent.put(&format!("/v1/kv/k{i}"), "v".repeat(1000)).status, 200);
    }
    let http = agent.http;
    let backups: Vec<_> =
        (0..100).map(|_| std::thread::spawn(move || support::http_request(http, "GET", "/v1/snapshot", b""))).collect();
    still_serves(&agent);
    let (mut archives, mut busy) = (0, 0);
    for backup in backups {
        let r = backup.join().expect("backup thread");
        match r.status {
            200 => {
                cairn::backup::verify_archive(&r.body).expect("a whole, valid archive");
                archives += 1;
            }
            429 => busy += 1,
            other => panic!("backup answered {other}: {}", r.text()),
        }
    }
    println!("100 concurrent backups: {archives} archives, {busy} refused with 429");
    assert!(archives >= 1 && archives + busy == 100);
    assert!(rss_bytes(&agent) < RSS_BOUND);
}

#[test]
fn a_udp_flood_from_one_source_is_rate_limited_and_other_sources_are_answered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("rrl.json");
    let rrl = serde_json::json!({"dns_config": {"rate_limit": {"responses_per_second": 50, "slip": 2, "ipv4_prefix_length": 32}}});
    std::fs::write(&config, rrl.to_string()).expect("config");
    let agent = Agent::start(&["-config-file", config.to_str().expect("utf-8")]);
    let flooder = std::net::UdpSocket::bind(SocketAddr::from((ATTACKER, 0))).expect("attacker socket");
    let query = support::dns::query_message("consul.service.consul", RecordType::A, None).to_vec().expect("encode");
    let sent = 1000;
    let started = Instant::now();
    for _ in 0..sent {
        flooder.send_to(&query, agent.dns).expect("send");
    }
    let sending = started.elapsed();
    flooder.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    let (mut full, mut slipped) = (0u32, 0u32);
    let mut buf = [0u8; 4096];
    while let Ok(n) = flooder.recv(&mut buf) {
        let answer = hickory_proto::op::Message::from_vec(&buf[..n]).expect("an answer parses");
        if answer.metadata.truncation {
            assert!(answer.answers.is_empty(), "a slipped answer carries no records");
            slipped += 1;
        } else {
            full += 1;
        }
    }
    // 50 per second, one second of burst, over the time the flood took to send.
    let allowed = 50 + (50.0 * sending.as_secs_f64()).ceil() as u32 + 5;
    println!("flood of {sent} in {sending:?}: {full} answered, {slipped} slipped (TC), allowed {allowed}");
    assert!(full <= allowed, "{full} full answers; the limit allows {allowed}");
    assert!(full >= 40, "the burst is answered: {full}");
    assert!(slipped > 0 && full + slipped < sent, "limited answers slip or drop: {slipped}");
    // Another source is answered meanwhile, and over TCP the limited source is too.
    for _ in 0..20 {
        let answer = support::dns::udp(agent.dns, "consul.service.consul", RecordType::A, None);
        assert_eq!(answer.answers.len(), 1, "another source");
    }
    still_serves(&agent);
    agent.wait_log("DNS UDP answers rate-limited", Duration::from_secs(5));
}
