//! HTTP/1.1 on the plain-text port, where cairn serves bodiless GETs and small-bodied writes
//! itself and hands a connection to hyper at its first other request: pipelined requests
//! answered in order across the hand-off, bodies arriving in pieces, large and chunked
//! request bodies, a client hanging up mid-body, `Connection: close` and HTTP/1.0, oversized
//! and malformed heads, idle keep-alive connections timed out, a streamed response framed once,
//! waiting watchers that hang up releasing what they held, and identical blocking queries
//! answered together (each watcher its answer, its connection usable afterwards).

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use support::{Agent, Response};

fn connect(agent: &Agent) -> BufReader<TcpStream> {
    let stream = TcpStream::connect(agent.http).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    BufReader::new(stream)
}

fn send(conn: &mut BufReader<TcpStream>, bytes: &[u8]) {
    conn.get_mut().write_all(bytes).expect("write");
}

/// Reads exactly one response (Content-Length or chunked body).
fn read_one(conn: &mut BufReader<TcpStream>) -> Response {
    let mut raw = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = conn.read_until(b'\n', &mut line).expect("read head");
        assert!(n > 0, "closed before a whole head: {}", String::from_utf8_lossy(&raw));
        raw.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let head = support::parse_response(&raw);
    let length = head.header("content-length").map(|v| v.parse::<usize>().expect("length"));
    let mut body = Vec::new();
    if let Some(length) = length {
        body.resize(length, 0);
        conn.read_exact(&mut body).expect("read body");
    } else if head.header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        loop {
            let mut size = String::new();
            conn.read_line(&mut size).expect("chunk size");
            let size = usize::from_str_radix(size.trim(), 16).expect("hex size");
            let mut chunk = vec![0; size + 2];
            conn.read_exact(&mut chunk).expect("chunk");
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    }
    Response { status: head.status, headers: head.headers, body }
}

/// Whether the server closes the connection within `within` (EOF), reading any bytes left.
fn closed_within(conn: &mut BufReader<TcpStream>, within: Duration) -> bool {
    conn.get_mut().set_read_timeout(Some(within)).expect("timeout");
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).is_ok()
}

#[test]
fn pipelined_requests_are_answered_in_order_across_the_hand_off_to_hyper() {
    let agent = Agent::start(&[]);
    let mut conn = connect(&agent);
    // Four requests in one write, all served by cairn's loop: two GETs, a PUT with a body, a
    // GET after it, on one connection.
    send(
        &mut conn,
        b"GET /v1/kv/pipelined HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /v1/status/leader HTTP/1.1\r\nHost: a\r\n\r\n\
          PUT /v1/kv/pipelined HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nvalue\
          GET /v1/kv/pipelined?raw HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let missing = read_one(&mut conn);
    assert_eq!(missing.status, 404);
    assert!(missing.header("x-consul-index").is_some() && missing.header("date").is_some());
    let leader = read_one(&mut conn);
    assert_eq!(leader.status, 200);
    assert!(leader.text().contains("127.0.0.1"), "{}", leader.text());
    assert_eq!(read_one(&mut conn).text(), "true");
    assert_eq!(read_one(&mut conn).text(), "value");
    // Chunked request bodies go to hyper (from here on, for this connection).
    send(
        &mut conn,
        b"PUT /v1/kv/chunked HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    );
    assert_eq!(read_one(&mut conn).text(), "true");
    assert_eq!(agent.get("/v1/kv/chunked?raw").text(), "abc");
}

#[test]
fn close_http10_bad_heads_and_idle_connections() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("limits.json");
    std::fs::write(&config, r#"{"limits": {"http_header_read_timeout": "1s"}}"#).expect("config");
    let agent = Agent::start(&["-config-file", config.to_str().expect("utf-8")]);
    assert_eq!(agent.put("/v1/kv/k", "v").text(), "true");

    let mut conn = connect(&agent);
    send(&mut conn, b"GET /v1/kv/k?raw HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    let r = read_one(&mut conn);
    assert_eq!((r.status, r.text().as_str(), r.header("connection")), (200, "v", Some("close")));
    assert!(closed_within(&mut conn, Duration::from_secs(5)), "closed after Connection: close");

    let mut conn = connect(&agent);
    send(&mut conn, b"GET /v1/kv/k?raw HTTP/1.0\r\n\r\n");
    let r = read_one(&mut conn);
    assert_eq!((r.status, r.text().as_str()), (200, "v"));
    assert!(closed_within(&mut conn, Duration::from_secs(5)), "HTTP/1.0 closes after the answer");

    let mut conn = connect(&agent);
    send(&mut conn, b"GET /v1/kv/k?raw HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = read_one(&mut conn);
    assert_eq!((r.status, r.header("connection")), (200, Some("keep-alive")));
    send(&mut conn, b"GET /v1/kv/k?raw HTTP/1.0\r\n\r\n");
    assert_eq!(read_one(&mut conn).text(), "v", "kept alive for a second request");

    let mut conn = connect(&agent);
    send(&mut conn, b"GET /v1/kv/k HTTP/1.1\r\nBad Header\r\n\r\n");
    assert_eq!(read_one(&mut conn).status, 400);

    let mut conn = connect(&agent);
    send(&mut conn, format!("GET /v1/kv/{} HTTP/1.1\r\n\r\n", "k".repeat(70_000)).as_bytes());
    assert_eq!(read_one(&mut conn).status, 414);

    let mut conn = connect(&agent);
    let huge = format!("GET /v1/kv/k HTTP/1.1\r\nX-Big: {}\r\n", "a".repeat(500 * 1024));
    let _ = conn.get_mut().write_all(huge.as_bytes());
    assert_eq!(read_one(&mut conn).status, 431);

    // Kept alive, then idle: closed after the header timeout, as hyper does.
    let mut conn = connect(&agent);
    send(&mut conn, b"GET /v1/kv/k?raw HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(read_one(&mut conn).text(), "v");
    let idle = Instant::now();
    assert!(closed_within(&mut conn, Duration::from_secs(10)), "an idle connection is closed");
    assert!(idle.elapsed() >= Duration::from_millis(900), "closed too early: {:?}", idle.elapsed());
    // The agent serves on.
    assert_eq!(agent.get("/v1/kv/k?raw").text(), "v");
}

#[test]
fn identical_blocking_queries_are_answered_together_and_their_connections_go_on() {
    const WATCHERS: usize = 50;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("metrics.json");
    std::fs::write(&config, r#"{"telemetry": {"prometheus_retention_time": "60s"}}"#).expect("config");
    let agent = Agent::start(&["-config-file", config.to_str().expect("utf-8"), "-log-level", "debug"]);
    let (index, request) = blocking_get(&agent, "shared", "one");
    let mut watchers = group(&agent, &request, WATCHERS);
    // Another token's query is not answered with theirs: a different request.
    let mut other = connect(&agent);
    send(&mut other, format!("GET /v1/kv/shared?index={index}&wait=60s&stale HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
    support::wait_for("every watcher waiting", Duration::from_secs(10), || {
        (blocking_count(&agent) == Some(WATCHERS + 1)).then_some(())
    });
    assert_eq!(agent.put("/v1/kv/shared", "two").text(), "true");
    let mut bodies = Vec::new();
    for conn in watchers.iter_mut().chain(std::iter::once(&mut other)) {
        let r = read_one(conn);
        assert_eq!(r.status, 200);
        assert!(r.index() > index);
        bodies.push(r.body);
    }
    let value = |body: &[u8]| {
        let entries: serde_json::Value = serde_json::from_slice(body).expect("json");
        entries[0]["Value"].as_str().map(str::to_string)
    };
    assert!(bodies.iter().all(|b| value(b).as_deref() == Some("dHdv")), "every watcher sees \"two\"");
    // One leader, every other watcher answered with its response (the line is logged after
    // the writes; the harness reads the log through a pipe).
    let members = format!("members={}", WATCHERS - 1);
    support::wait_for("the fan-out's log line", Duration::from_secs(5), || {
        agent
            .log()
            .lines()
            .any(|l| l.contains("one answer written to identical blocking queries") && l.contains(&members))
            .then_some(())
    });
    // Each connection goes on: a second request on every one.
    for conn in &mut watchers {
        send(conn, b"GET /v1/kv/shared?raw HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(read_one(conn).text(), "two");
    }
    // Every request counted: the index read, 51 blocking queries (leader, members, the other
    // one), 50 second requests.
    let metrics = agent.get("/v1/agent/metrics?format=prometheus").text();
    let counted = metrics
        .lines()
        .find_map(|l| l.strip_prefix(r#"cairn_http_requests_total{route="/v1/kv/{*key}",method="GET",status="200"} "#))
        .unwrap_or_else(|| panic!("no KV GET count in:\n{metrics}"));
    assert_eq!(counted, (1 + WATCHERS + 1 + WATCHERS).to_string(), "members are counted under their route");
    assert_eq!(blocking_count(&agent), Some(0), "no permit left behind");
}

#[test]
fn a_query_arriving_after_a_write_is_answered_with_it() {
    let agent = Agent::start(&[]);
    let (_, request) = blocking_get(&agent, "fresh", "one");
    let mut first = connect(&agent);
    send(&mut first, request.as_bytes());
    support::wait_for("the first watcher waiting", Duration::from_secs(10), || {
        (blocking_count(&agent) == Some(1)).then_some(())
    });
    for round in 2..6 {
        // A write acknowledged, then the same request: its answer holds the write at once.
        let value = format!("v{round}");
        assert_eq!(agent.put("/v1/kv/fresh", &value).text(), "true");
        let mut late = connect(&agent);
        let started = Instant::now();
        send(&mut late, request.as_bytes());
        let r = read_one(&mut late);
        let entries: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
        let seen = entries[0]["Value"].as_str().expect("value").to_string();
        use base64::Engine;
        let expected = base64::engine::general_purpose::STANDARD.encode(&value);
        assert_eq!(seen, expected, "round {round}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert_eq!(read_one(&mut first).status, 200);
}

/// `count` connections sending `request`: the first leads (it waits before the others come,
/// so they all join it). Expects no other blocking query.
fn group(agent: &Agent, request: &str, count: usize) -> Vec<BufReader<TcpStream>> {
    let mut watchers: Vec<_> = (0..count).map(|_| connect(agent)).collect();
    send(&mut watchers[0], request.as_bytes());
    support::wait_for("the leader waiting", Duration::from_secs(10), || {
        (blocking_count(agent) == Some(1)).then_some(())
    });
    for conn in &mut watchers[1..] {
        send(conn, request.as_bytes());
    }
    watchers
}

/// Writes `value` to KV `key`; its index and a blocking GET of it waiting for the next change.
fn blocking_get(agent: &Agent, key: &str, value: &str) -> (u64, String) {
    assert_eq!(agent.put(&format!("/v1/kv/{key}"), value).text(), "true");
    let index = agent.get(&format!("/v1/kv/{key}")).index();
    (index, format!("GET /v1/kv/{key}?index={index}&wait=60s HTTP/1.1\r\nHost: a\r\n\r\n"))
}

fn blocking_count(agent: &Agent) -> Option<usize> {
    agent.get("/v1/agent/self").json()["Stats"]["cairn"]["blocking_queries"].as_str()?.parse().ok()
}

#[test]
fn watchers_that_hang_up_release_their_blocking_query_at_once() {
    let agent = Agent::start(&[]);
    let (index, request) = blocking_get(&agent, "gone", "v");
    let mut watchers = group(&agent, &request, 5);
    // Alone: a different request.
    let mut alone = connect(&agent);
    send(&mut alone, format!("GET /v1/kv/gone?index={index}&wait=60s&stale HTTP/1.1\r\n\r\n").as_bytes());
    support::wait_for("six waiting", Duration::from_secs(10), || (blocking_count(&agent) == Some(6)).then_some(()));
    // Members leave, then the leader (the first), then the one alone: each releases at once.
    for (left, conn) in watchers.drain(1..).enumerate() {
        drop(conn);
        let expected = 6 - (left + 1);
        support::wait_for("a member released", Duration::from_secs(5), || {
            (blocking_count(&agent) == Some(expected)).then_some(())
        });
    }
    drop(watchers);
    support::wait_for("the leader released", Duration::from_secs(5), || {
        (blocking_count(&agent) == Some(1)).then_some(())
    });
    drop(alone);
    support::wait_for("the lone query released", Duration::from_secs(5), || {
        (blocking_count(&agent) == Some(0)).then_some(())
    });
    // A leader whose client left keeps answering those who joined it.
    let mut leader = connect(&agent);
    send(&mut leader, request.as_bytes());
    support::wait_for("the leader waiting", Duration::from_secs(5), || {
        (blocking_count(&agent) == Some(1)).then_some(())
    });
    let mut member = connect(&agent);
    send(&mut member, request.as_bytes());
    support::wait_for("the member waiting", Duration::from_secs(5), || {
        (blocking_count(&agent) == Some(2)).then_some(())
    });
    drop(leader);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(agent.put("/v1/kv/gone", "w").text(), "true");
    let r = read_one(&mut member);
    assert_eq!(r.status, 200);
    assert!(r.index() > index);
}

#[test]
fn a_streamed_backup_is_framed_by_its_length_alone() {
    let agent = Agent::start(&[]);
    assert_eq!(agent.put("/v1/kv/backed-up", "v").text(), "true");
    let mut conn = connect(&agent);
    send(&mut conn, b"GET /v1/snapshot HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = read_one(&mut conn);
    assert_eq!(r.status, 200);
    assert!(r.header("content-length").is_some() && r.header("transfer-encoding").is_none(), "{:?}", r.headers);
    // The connection is still in step: a second request is answered.
    send(&mut conn, b"GET /v1/kv/backed-up?raw HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(read_one(&mut conn).text(), "v");
}

/// Writes with small bodies are served by cairn's loop, whatever pieces their bodies arrive
/// in; a body over 64 KiB goes to hyper with the connection; a client that hangs up mid-body
/// writes nothing and costs the agent nothing.
#[test]
fn small_bodied_writes_are_served_and_larger_bodies_go_to_hyper() {
    let agent = Agent::start(&["-log-level", "debug"]);
    let handed_off = |agent: &Agent| agent.log().matches("HTTP connection handed to hyper").count();
    let mut conn = connect(&agent);
    // Head, then the body in two pieces, with pauses longer than a read takes.
    send(&mut conn, b"PUT /v1/kv/pieces HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\n");
    std::thread::sleep(Duration::from_millis(50));
    send(&mut conn, b"hello ");
    std::thread::sleep(Duration::from_millis(50));
    send(&mut conn, b"world");
    assert_eq!(read_one(&mut conn).text(), "true");
    // A read, a transaction, a POST where only PUT is routed, a delete and a read, pipelined
    // in one segment and answered in order.
    send(
        &mut conn,
        b"GET /v1/kv/pieces?raw HTTP/1.1\r\nHost: a\r\n\r\n\
          PUT /v1/txn HTTP/1.1\r\nHost: a\r\nContent-Length: 50\r\n\r\n\
          [{\"KV\":{\"Verb\":\"set\",\"Key\":\"txn\",\"Value\":\"dHhu\"}}]\
          POST /v1/txn HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n[]\
          DELETE /v1/kv/pieces HTTP/1.1\r\nHost: a\r\n\r\n\
          GET /v1/kv/pieces HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(read_one(&mut conn).text(), "hello world");
    let txn = read_one(&mut conn);
    assert_eq!(txn.status, 200, "{}", txn.text());
    assert!(txn.text().contains("\"Key\":\"txn\""), "{}", txn.text());
    assert_eq!(read_one(&mut conn).status, 405, "the method reaches the router as sent");
    assert_eq!(read_one(&mut conn).text(), "true");
    assert_eq!(read_one(&mut conn).status, 404);
    assert_eq!(agent.get("/v1/kv/txn?raw").text(), "txn", "the transaction's write is there");
    assert_eq!(handed_off(&agent), 0, "every write so far served by cairn's loop:\n{}", agent.log());

    // 100 KiB: hyper reads it (the connection is hyper's from here on) and the loop's
    // replayed bytes keep the request whole.
    let big = vec![b'x'; 100 << 10];
    let mut request =
        format!("PUT /v1/kv/big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n", big.len()).into_bytes();
    request.extend_from_slice(&big[..1000]);
    send(&mut conn, &request);
    std::thread::sleep(Duration::from_millis(20));
    send(&mut conn, &big[1000..]);
    assert_eq!(read_one(&mut conn).text(), "true");
    send(&mut conn, b"GET /v1/kv/big?raw HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(read_one(&mut conn).body.len(), big.len());
    support::wait_for("the hand-off's log line", Duration::from_secs(5), || (handed_off(&agent) == 1).then_some(()));

    // Hanging up after 3 of 10 body bytes: nothing written, the agent serves on.
    let mut gone = connect(&agent);
    send(&mut gone, b"PUT /v1/kv/half HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc");
    gone.get_mut().shutdown(std::net::Shutdown::Write).expect("half-close");
    assert!(closed_within(&mut gone, Duration::from_secs(5)), "the agent closes a connection whose body ended early");
    drop(gone);
    assert_eq!(agent.get("/v1/kv/half").status, 404, "a partial body writes nothing");
    let mut fresh = connect(&agent);
    send(&mut fresh, b"PUT /v1/kv/after HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok");
    assert_eq!(read_one(&mut fresh).text(), "true");
    assert_eq!(agent.get("/v1/kv/after?raw").text(), "ok");
}
