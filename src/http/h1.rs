//! cairn's own HTTP/1.1 loop for plain-text connections. It serves the requests that make up
//! almost all of the API's traffic — `GET` without a body (a watcher's), and `PUT`, `POST`
//! and `DELETE` whose body has a `Content-Length` of at most [`MAX_SERVED_BODY`] (a writer's)
//! — through the same router as hyper, writing each response as one `writev`; identical
//! blocking queries are answered together ([`super::fanout`]). At the first request it does
//! not serve itself (a chunked or larger body, an upgrade, `HEAD`, `Expect`, the streaming
//! monitor) it hands the connection to hyper, the bytes it has read included, so every other
//! request keeps hyper's full HTTP/1.1.
//!
//! Kept from hyper's behaviour: each request head must arrive within
//! `limits.http_header_read_timeout` of when it is awaited (an idle keep-alive connection is
//! closed after it too), at most 100 headers and hyper's 408 KiB of head (431 past them),
//! 400 for a malformed head, 414 for an overlong target; pipelined requests are answered in
//! order; `Connection: close` (and HTTP/1.0 without `keep-alive`) closes after the answer; a
//! client that hangs up while its request runs ends the request; at shutdown an idle
//! connection closes and a busy one after its answer (which says `Connection: close`). As in
//! hyper, a body has no time limit of its own (only the connection caps bound the clients
//! that send one slowly), and a client that hangs up mid-body ends the connection.

use std::io::IoSlice;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, HttpBody as _};
use axum::extract::MatchedPath;
use axum::http::{header, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::fanout::{self, Delivery, Encoded, FanOut, GroupWake, Role};
use super::query::Query;
use super::HttpContext;

/// hyper's defaults, so that what hyper took this loop takes too.
const MAX_HEADERS: usize = 100;
const MAX_HEAD_BYTES: usize = 8192 + 4096 * 100;
/// The longest request target the `http` crate parses (hyper answers 414 past it).
const MAX_URI_BYTES: usize = u16::MAX as usize - 1;
/// The read buffer's first size (it grows only for long heads and bodies).
const READ_BYTES: usize = 4096;
/// The largest request body this loop reads itself; larger ones go to hyper, whose handlers
/// stream them under their own limits. A KV write's value is usually far smaller.
const MAX_SERVED_BODY: usize = 64 << 10;

/// What the loop needs, shared by every plain-text connection.
pub(super) struct H1 {
    pub router: axum::Router,
    pub ctx: Arc<HttpContext>,
    pub fanout: FanOut,
    pub header_timeout: Duration,
    pub shutdown: CancellationToken,
}

/// A request head this loop serves itself.
struct Served {
    request: Request<Body>,
    /// The length of its body, still to read after the head (0: none).
    body_len: usize,
    /// Close after the answer (`Connection: close`, HTTP/1.0 without `keep-alive`).
    close: bool,
    /// What makes this request's answer the same as another's, for a blocking query on a
    /// keep-alive connection.
    group_key: Option<Vec<u8>>,
}

enum Head {
    Served(Box<Served>),
    /// Not for this loop: hyper takes the connection from this request on.
    HandOff,
    /// Answer this status and close.
    Refuse(StatusCode),
}

/// Why the loop stopped reading.
enum Stop {
    /// The client closed, went silent past the timeout, or the agent drains.
    Close,
    /// Hand the connection and the bytes read to hyper.
    HandOff,
}

impl H1 {
    /// Serves `stream` until it closes; `hand_off` serves the rest of a connection with hyper.
    pub async fn serve<F, Fut>(self: Arc<Self>, stream: TcpStream, peer: SocketAddr, hand_off: F)
    where
        F: FnOnce(Prefixed) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let stream = Arc::new(stream);
        let mut buf = BytesMut::with_capacity(READ_BYTES);
        let stop = self.serve_requests(&stream, &mut buf, peer).await;
        if let Stop::HandOff = stop {
            tracing::debug!(client = %peer, "HTTP connection handed to hyper");
            match Arc::try_unwrap(stream) {
                Ok(stream) => hand_off(Prefixed { prefix: buf.freeze(), stream }).await,
                Err(_) => tracing::warn!(client = %peer, "HTTP connection still shared at hand-off; closed"),
            }
        }
    }

    async fn serve_requests(&self, stream: &Arc<TcpStream>, buf: &mut BytesMut, peer: SocketAddr) -> Stop {
        loop {
            let head = match self.read_head(stream, buf).await {
                Ok(Some(head)) => head,
                Ok(None) => return Stop::Close,
                Err(status) => Head::Refuse(status),
            };
            let served = match head {
                Head::Served(served) => served,
                Head::HandOff => return Stop::HandOff,
                Head::Refuse(status) => {
                    tracing::debug!(client = %peer, %status, "HTTP request refused before routing");
                    let _ = write_all(stream, &[IoSlice::new(&refusal_head(status))]).await;
                    return Stop::Close;
                }
            };
            let Served { mut request, body_len, close, group_key } = *served;
            if body_len > 0 {
                match read_body(stream, buf, body_len).await {
                    Some(body) => *request.body_mut() = Body::from(body),
                    None => return Stop::Close,
                }
            }
            let version = request.version();
            let result = match group_key {
                Some(key) => self.answer_grouped(stream, buf, key, request).await,
                None => self.answer(stream, buf, request, version, close).await,
            };
            if result.is_err() || close || self.shutdown.is_cancelled() {
                return Stop::Close;
            }
            // One long head grew the buffer: not kept for the connection's life.
            if buf.is_empty() && buf.capacity() > 16 * READ_BYTES {
                *buf = BytesMut::with_capacity(READ_BYTES);
            }
        }
    }

    /// Reads until `buf` holds a whole request head and says what to do with it; `None` when
    /// the connection closes (or times out, or the agent drains) between requests. The head's
    /// bytes are consumed from `buf` only when the loop serves the request itself.
    async fn read_head(&self, stream: &TcpStream, buf: &mut BytesMut) -> Result<Option<Head>, StatusCode> {
        let deadline = tokio::time::Instant::now() + self.header_timeout;
        loop {
            if !buf.is_empty() {
                if let Some(head) = parse(buf)? {
                    return Ok(Some(head));
                }
                if buf.len() >= MAX_HEAD_BYTES {
                    return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
                }
            }
            let idle = buf.is_empty();
            tokio::select! {
                ready = stream.readable() => if ready.is_err() { return Ok(None) },
                _ = tokio::time::sleep_until(deadline) => {
                    tracing::debug!("HTTP request head not received within limits.http_header_read_timeout; closed");
                    return Ok(None);
                }
                _ = self.shutdown.cancelled(), if idle => return Ok(None),
            }
            buf.reserve(READ_BYTES.min(MAX_HEAD_BYTES.saturating_sub(buf.len())).max(1));
            if !read_ready(stream, buf) {
                return Ok(None);
            }
        }
    }

    /// Runs `request` through the router and writes its response; a client that closes its
    /// side meanwhile ends the request, as hyper does (a blocking query's permit and the
    /// connection's slot are released at once).
    async fn answer(
        &self,
        stream: &TcpStream,
        buf: &mut BytesMut,
        request: Request<Body>,
        version: Version,
        close: bool,
    ) -> std::io::Result<()> {
        let response = tokio::select! {
            response = self.route(request) => response,
            () = client_gone(stream, buf) => return Err(std::io::Error::other("the client closed")),
        };
        self.write_response(stream, response, version, close).await
    }

    async fn write_response(
        &self,
        stream: &TcpStream,
        response: Response<Body>,
        version: Version,
        close: bool,
    ) -> std::io::Result<()> {
        let close = close || self.shutdown.is_cancelled();
        let (parts, mut body) = response.into_parts();
        let bodiless = matches!(parts.status, StatusCode::NO_CONTENT | StatusCode::NOT_MODIFIED);
        if bodiless || body.size_hint().exact().is_some() {
            let body = if bodiless { Bytes::new() } else { collect(body).await? };
            let framing = if bodiless { Framing::None } else { Framing::Length(body.len()) };
            let head = encode_head(&parts, framing, version, close);
            return write_all(stream, &[IoSlice::new(&head), IoSlice::new(&body)]).await;
        }
        // A stream: framed by the length its handler set, else chunked (HTTP/1.0: until the
        // connection closes).
        let framing = if parts.headers.contains_key(header::CONTENT_LENGTH) {
            Framing::Given
        } else if version == Version::HTTP_10 {
            Framing::UntilClose
        } else {
            Framing::Chunked
        };
        let head = encode_head(&parts, framing, version, close || framing == Framing::UntilClose);
        write_all(stream, &[IoSlice::new(&head)]).await?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(std::io::Error::other)?;
            let Ok(data) = frame.into_data() else { continue };
            if data.is_empty() {
                continue;
            }
            if framing == Framing::Chunked {
                let size = format!("{:x}\r\n", data.len());
                write_all(stream, &[IoSlice::new(size.as_bytes()), IoSlice::new(&data), IoSlice::new(b"\r\n")]).await?;
            } else {
                write_all(stream, &[IoSlice::new(&data)]).await?;
            }
        }
        match framing {
            Framing::Chunked => write_all(stream, &[IoSlice::new(b"0\r\n\r\n")]).await,
            // The caller closes.
            Framing::UntilClose => Err(std::io::Error::other("an HTTP/1.0 stream ends by closing")),
            _ => Ok(()),
        }
    }

    /// A blocking query that may share its answer with identical ones.
    async fn answer_grouped(
        &self,
        stream: &Arc<TcpStream>,
        buf: &mut BytesMut,
        key: Vec<u8>,
        request: Request<Body>,
    ) -> std::io::Result<()> {
        let arrived = Instant::now();
        // Joining must not make a query less fresh than running alone: the barrier its
        // consistency mode asks for (a follower catching up with the leader) comes first.
        if self.fanout.has_waiting(&key) {
            let fresh = match Query::parse(request.uri().query(), &self.ctx.identity.datacenter) {
                Ok(q) => self.ctx.check_consistency(&q).await.is_ok(),
                Err(_) => false,
            };
            if !fresh {
                return self.answer(stream, buf, request, Version::HTTP_11, false).await;
            }
        }
        let permit = || self.ctx.blocking_permits.clone().try_acquire_owned().ok();
        match self.fanout.enter(key.clone(), stream, permit) {
            Role::Alone => self.answer(stream, buf, request, Version::HTTP_11, false).await,
            Role::Joined { answer, id } => {
                let delivery = tokio::select! {
                    delivery = answer => delivery.unwrap_or(Delivery::Failed),
                    () = client_gone(stream, buf) => {
                        self.fanout.leave(&key, id);
                        return Err(std::io::Error::other("the client closed"));
                    }
                };
                if let Delivery::Sent(encoded) | Delivery::Rest { encoded, .. } = &delivery {
                    self.ctx.metrics.http_request(&encoded.route, "GET", encoded.status, arrived.elapsed());
                }
                match delivery {
                    Delivery::RunAlone => self.answer(stream, buf, request, Version::HTTP_11, false).await,
                    delivery => deliver_rest(stream, delivery).await,
                }
            }
            Role::Lead(wake) => self.lead(stream, buf, &key, wake, request).await,
        }
    }

    /// Runs the request of a group and answers every member with its response.
    async fn lead(
        &self,
        stream: &Arc<TcpStream>,
        buf: &mut BytesMut,
        key: &[u8],
        wake: Arc<GroupWake>,
        mut request: Request<Body>,
    ) -> std::io::Result<()> {
        // Members are never left waiting: if this future is dropped (a panic in a handler),
        // the guard closes the group and they run their requests alone.
        let guard = LeadGuard { fanout: &self.fanout, key, wake: &wake };
        request.extensions_mut().insert(Arc::clone(&wake));
        let routed = self.route(request);
        tokio::pin!(routed);
        // The leader's client leaving ends the query only if nobody joined it.
        let mut gone = false;
        let response = loop {
            tokio::select! {
                response = &mut routed => break response,
                () = client_gone(stream, buf), if !gone => {
                    if self.fanout.close_if_alone(key, &wake) {
                        return Err(std::io::Error::other("the client closed"));
                    }
                    gone = true;
                }
            }
        };
        let (parts, body) = response.into_parts();
        let shareable = parts.status != StatusCode::NO_CONTENT
            && parts.status != StatusCode::NOT_MODIFIED
            && body.size_hint().exact().is_some();
        if !shareable {
            // Blocking endpoints answer whole bodies; anything else is not shared.
            self.fanout.finish(key, &wake, None);
            return self.write_response(stream, Response::from_parts(parts, body), Version::HTTP_11, false).await;
        }
        let body = collect(body).await?;
        let route = parts.extensions.get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
        let encoded = Arc::new(Encoded {
            head: encode_head(&parts, Framing::Length(body.len()), Version::HTTP_11, false),
            body,
            status: parts.status.as_u16(),
            route: route.to_string(),
        });
        // The leader's own answer first (it came first), then every member's.
        let own = fanout::send_now(stream, &encoded);
        let members = self.fanout.finish(key, &wake, Some(&encoded));
        if members > 0 {
            tracing::debug!(members, "one answer written to identical blocking queries");
        }
        drop(guard); // finds the group closed: nothing to do
        deliver_rest(stream, own).await
    }

    async fn route(&self, request: Request<Body>) -> Response<Body> {
        match self.router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Closes a group whose leader ends without an answer to share (closing it again after
/// [`FanOut::finish`] does nothing).
struct LeadGuard<'a> {
    fanout: &'a FanOut,
    key: &'a [u8],
    wake: &'a Arc<GroupWake>,
}

impl Drop for LeadGuard<'_> {
    fn drop(&mut self) {
        self.fanout.finish(self.key, self.wake, None);
    }
}

/// Finishes what [`fanout::send_now`] left.
async fn deliver_rest(stream: &TcpStream, delivery: Delivery) -> std::io::Result<()> {
    match delivery {
        Delivery::Sent(_) => Ok(()),
        Delivery::Rest { encoded, offset } => write_all(stream, &encoded.slices_from(offset)).await,
        Delivery::Failed | Delivery::RunAlone => Err(std::io::Error::other("the shared answer was not written")),
    }
}

/// Completes when the client closes its side of the connection (or it fails). Bytes it sends
/// meanwhile (pipelined requests) are kept in `buf`; once that holds a whole head's worth,
/// the watch stops (the request in progress then finishes as if the client were there).
async fn client_gone(stream: &TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_HEAD_BYTES {
            return std::future::pending().await;
        }
        if stream.readable().await.is_err() {
            return;
        }
        buf.reserve(READ_BYTES);
        if !read_ready(stream, buf) {
            return;
        }
    }
}

/// How a response's body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// No body (204, 304).
    None,
    /// `Content-Length` of the collected body (unless the handler set it).
    Length(usize),
    /// The handler set `Content-Length` on a stream.
    Given,
    Chunked,
    /// HTTP/1.0 without a length: the body ends when the connection closes.
    UntilClose,
}

async fn collect(body: Body) -> std::io::Result<Bytes> {
    body.collect().await.map(|c| c.to_bytes()).map_err(std::io::Error::other)
}

/// Parses the head at the start of `buf`, if whole.
fn parse(buf: &mut BytesMut) -> Result<Option<Head>, StatusCode> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE),
        Err(_) => return Err(StatusCode::BAD_REQUEST),
    };
    let (Some(method), Some(target), Some(minor)) = (parsed.method, parsed.path, parsed.version) else {
        return Err(StatusCode::BAD_REQUEST);
    };
    let method = match method {
        "GET" => Method::GET,
        "PUT" => Method::PUT,
        "POST" => Method::POST,
        "DELETE" => Method::DELETE,
        _ => return Ok(Some(Head::HandOff)),
    };
    let uri: axum::http::Uri = match target.parse() {
        Ok(uri) => uri,
        // What hyper answers: 414 past the longest URI `http` takes, else 400.
        Err(_) if target.len() > MAX_URI_BYTES => return Ok(Some(Head::Refuse(StatusCode::URI_TOO_LONG))),
        Err(_) => return Ok(Some(Head::Refuse(StatusCode::BAD_REQUEST))),
    };
    if uri.path().starts_with("/v1/agent/monitor") {
        return Ok(Some(Head::HandOff));
    }
    let version = if minor == 1 { Version::HTTP_11 } else { Version::HTTP_10 };
    // HTTP/1.0 closes unless it asks to be kept alive; HTTP/1.1 stays open unless it asks not.
    let mut close = version == Version::HTTP_10;
    let mut request = Request::new(Body::empty());
    let get = method == Method::GET;
    let mut body_len = None;
    *request.method_mut() = method;
    *request.version_mut() = version;
    *request.uri_mut() = uri;
    let mut group_key = Vec::with_capacity(target.len() + 64);
    group_key.extend_from_slice(target.as_bytes());
    let map = request.headers_mut();
    map.reserve(parsed.headers.len());
    for h in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (HeaderName::from_bytes(h.name.as_bytes()), HeaderValue::from_bytes(h.value))
        else {
            return Ok(Some(Head::Refuse(StatusCode::BAD_REQUEST)));
        };
        if name == header::TRANSFER_ENCODING || name == header::UPGRADE || name == header::EXPECT {
            return Ok(Some(Head::HandOff));
        }
        if name == header::CONTENT_LENGTH {
            // One plain length this loop reads whole, else hyper's rules and answers (400
            // for a malformed or repeated length, streaming for a large one).
            match served_body_len(h.value) {
                Some(len) if body_len.is_none() && (len == 0 || !get) => body_len = Some(len),
                _ => return Ok(Some(Head::HandOff)),
            }
        }
        if name == header::CONNECTION {
            let tokens = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if tokens.split(',').any(|t| t.trim() == "upgrade") {
                return Ok(Some(Head::HandOff));
            }
            if tokens.split(',').any(|t| t.trim() == "close") {
                close = true;
            } else if version == Version::HTTP_10 && tokens.split(',').any(|t| t.trim() == "keep-alive") {
                close = false;
            }
        }
        // Headers that cannot change an answer are left out of what tells requests apart.
        if !matches!(
            name,
            header::HOST | header::USER_AGENT | header::ACCEPT | header::ACCEPT_ENCODING | header::CONNECTION
        ) {
            group_key.push(0);
            group_key.extend_from_slice(name.as_str().as_bytes());
            group_key.push(b':');
            group_key.extend_from_slice(h.value);
        }
        map.append(name, value);
    }
    buf.advance(head_len);
    let blocking = get && request.uri().query().is_some_and(has_index);
    let group_key = (blocking && !close && version == Version::HTTP_11).then_some(group_key);
    let body_len = body_len.unwrap_or(0);
    Ok(Some(Head::Served(Box::new(Served { request, body_len, close, group_key }))))
}

/// A `Content-Length` value this loop reads the body of: decimal digits only, at most
/// [`MAX_SERVED_BODY`].
fn served_body_len(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // Too many digits for a usize fails to parse, and goes to hyper too.
    let len = std::str::from_utf8(value).ok()?.parse::<usize>().ok()?;
    (len <= MAX_SERVED_BODY).then_some(len)
}

/// Whether a query string asks to block (`index=` other than 0).
fn has_index(query: &str) -> bool {
    query
        .split('&')
        .any(|pair| pair.strip_prefix("index=").is_some_and(|v| !v.is_empty() && !v.trim_start_matches('0').is_empty()))
}

/// The status line and headers of `parts`, with the framing header, `Date`, and
/// `Connection: close` when closing (`keep-alive` to an HTTP/1.0 client when not).
fn encode_head(parts: &axum::http::response::Parts, framing: Framing, version: Version, close: bool) -> Vec<u8> {
    let mut head = Vec::with_capacity(256);
    head.extend_from_slice(if version == Version::HTTP_10 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    head.extend_from_slice(parts.status.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    head.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // The framing headers are this loop's to write (a stream keeps the length it was given).
        let skip = name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && framing != Framing::Given);
        if skip {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match framing {
        Framing::Length(n) => head.extend_from_slice(format!("content-length: {n}\r\n").as_bytes()),
        Framing::Chunked => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Framing::None | Framing::Given | Framing::UntilClose => {}
    }
    head.extend_from_slice(b"date: ");
    head.extend_from_slice(&http_date());
    head.extend_from_slice(b"\r\n");
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        head.extend_from_slice(b"connection: keep-alive\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The current time as an HTTP date, formatted at most once a second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::RefCell;
    thread_local! {
        static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let second = now.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cell = cell.borrow_mut();
        if cell.0 != second {
            let text = httpdate::fmt_http_date(now);
            let mut bytes = [b' '; 29];
            let n = text.len().min(29);
            bytes[..n].copy_from_slice(&text.as_bytes()[..n]);
            *cell = (second, bytes);
        }
        cell.1
    })
}

/// A bodiless answer that closes the connection.
fn refusal_head(status: StatusCode) -> Vec<u8> {
    let date = http_date();
    format!(
        "HTTP/1.1 {status}\r\ncontent-length: 0\r\ndate: {}\r\nconnection: close\r\n\r\n",
        String::from_utf8_lossy(&date)
    )
    .into_bytes()
}

/// Writes every byte of `slices`.
async fn write_all(stream: &TcpStream, slices: &[IoSlice<'_>]) -> std::io::Result<()> {
    let total: usize = slices.iter().map(|s| s.len()).sum();
    let mut written = 0;
    while written < total {
        let remaining = remaining_slices(slices, written);
        match stream.try_write_vectored(&remaining) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => stream.writable().await?,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `slices` without their first `skip` bytes.
fn remaining_slices<'a>(slices: &'a [IoSlice<'a>], mut skip: usize) -> Vec<IoSlice<'a>> {
    let mut out = Vec::with_capacity(slices.len());
    for slice in slices {
        let bytes: &'a [u8] = slice;
        if skip >= bytes.len() {
            skip -= bytes.len();
            continue;
        }
        out.push(IoSlice::new(&bytes[skip..]));
        skip = 0;
    }
    out
}

/// Reads until `buf` holds `len` body bytes and takes them; `None` when the client closes
/// first or the connection fails.
async fn read_body(stream: &TcpStream, buf: &mut BytesMut, len: usize) -> Option<Bytes> {
    while buf.len() < len {
        buf.reserve(len - buf.len());
        stream.readable().await.ok()?;
        if !read_ready(stream, buf) {
            return None;
        }
    }
    Some(buf.split_to(len).freeze())
}

/// One non-blocking read into `buf` once the socket was reported readable: `false` when the
/// client closed or the connection failed (a spurious wake-up or an interrupted read is
/// neither).
fn read_ready(stream: &TcpStream, buf: &mut BytesMut) -> bool {
    match stream.try_read_buf(buf) {
        Ok(0) => false,
        Ok(_) => true,
        Err(e) => matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted),
    }
}

/// A connection handed to hyper: the bytes this loop read but did not serve come first.
pub(super) struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() && out.remaining() > 0 {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Frees the read buffer the prefix was cut from.
                self.prefix = Bytes::new();
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_nonzero_index_blocks() {
        assert!(has_index("index=12&wait=5m"));
        assert!(has_index("wait=5m&index=7"));
        assert!(!has_index("index=0"));
        assert!(!has_index("index="));
        assert!(!has_index("recurse&xindex=5"));
    }

    #[test]
    fn heads_are_served_handed_off_or_refused() {
        let served = |text: &str| {
            let mut buf = BytesMut::from(text);
            match parse(&mut buf) {
                Ok(Some(Head::Served(s))) => Some((s.close, s.group_key.is_some(), buf.len())),
                _ => None,
            }
        };
        assert_eq!(served("GET /v1/kv/a HTTP/1.1\r\nHost: x\r\n\r\nGET /next"), Some((false, false, 9)));
        assert_eq!(served("GET /v1/kv/a?index=5 HTTP/1.1\r\n\r\n"), Some((false, true, 0)));
        assert_eq!(served("GET /v1/kv/a?index=5 HTTP/1.1\r\nConnection: close\r\n\r\n"), Some((true, false, 0)));
        assert_eq!(served("GET /v1/kv/a?index=5 HTTP/1.0\r\n\r\n"), Some((true, false, 0)));
        assert_eq!(served("GET /v1/kv/a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"), Some((false, false, 0)));
        // A body stays in the buffer for the loop to read; a write never joins a group.
        assert_eq!(served("PUT /v1/kv/a?index=5 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"), Some((false, false, 3)));
        let kind = |text: &str| match parse(&mut BytesMut::from(text)) {
            Ok(Some(Head::HandOff)) => "hand-off",
            Ok(Some(Head::Refuse(_))) | Err(_) => "refused",
            Ok(Some(Head::Served(_))) => "served",
            Ok(None) => "partial",
        };
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\n\r\nx"), "served");
        assert_eq!(kind("POST /v1/txn HTTP/1.1\r\nContent-Length: 65536\r\n\r\n"), "served");
        assert_eq!(kind("DELETE /v1/kv/a HTTP/1.1\r\n\r\n"), "served");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 65537\r\n\r\n"), "hand-off");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n"), "hand-off");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"), "hand-off");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nContent-Length: +1\r\n\r\nx"), "hand-off");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nContent-Length: 1, 1\r\n\r\nx"), "hand-off");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"), "hand-off");
        assert_eq!(kind("PUT /v1/kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), "hand-off");
        assert_eq!(kind("PATCH /v1/kv/a HTTP/1.1\r\n\r\n"), "hand-off");
        assert_eq!(kind("OPTIONS * HTTP/1.1\r\n\r\n"), "hand-off");
        assert_eq!(kind("GET /v1/kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"), "hand-off");
        assert_eq!(kind("GET /v1/kv/a HTTP/1.1\r\nContent-Length: 3\r\n\r\n"), "hand-off");
        assert_eq!(kind("GET /v1/kv/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"), "served");
        assert_eq!(kind("GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"), "hand-off");
        assert_eq!(kind("HEAD /v1/kv/a HTTP/1.1\r\n\r\n"), "hand-off");
        assert_eq!(kind("GET /v1/agent/monitor HTTP/1.1\r\n\r\n"), "hand-off");
        assert_eq!(kind("GET http://h/v1/agent/monitor?loglevel=debug HTTP/1.1\r\n\r\n"), "hand-off");
        assert_eq!(kind("GET /v1/kv/a HTTP/1.1\r\nHost"), "partial");
        assert_eq!(kind("GET /v1/kv/a HTTP/9\r\n\r\n"), "refused");
        assert_eq!(kind("\x01\x02 nonsense\r\n\r\n"), "refused");
    }

    #[test]
    fn identical_requests_share_a_key_and_tokens_tell_them_apart() {
        let key = |text: &str| match parse(&mut BytesMut::from(text)) {
            Ok(Some(Head::Served(s))) => s.group_key,
            _ => None,
        };
        let a = key("GET /v1/kv/a?index=5 HTTP/1.1\r\nHost: one\r\nUser-Agent: x\r\n\r\n");
        let b = key("GET /v1/kv/a?index=5 HTTP/1.1\r\nHost: two\r\n\r\n");
        let c = key("GET /v1/kv/a?index=5 HTTP/1.1\r\nX-Consul-Token: t\r\n\r\n");
        let d = key("GET /v1/kv/a?index=6 HTTP/1.1\r\n\r\n");
        assert!(a.is_some());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn heads_carry_length_date_and_close() {
        let response = Response::builder().status(200).header("x-consul-index", "7").body(()).expect("response");
        let (parts, ()) = response.into_parts();
        let head = String::from_utf8(encode_head(&parts, Framing::Length(5), Version::HTTP_11, true)).expect("text");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\nx-consul-index: 7\r\ncontent-length: 5\r\ndate: "), "{head}");
        assert!(head.ends_with("GMT\r\nconnection: close\r\n\r\n"), "{head}");
        let chunked = String::from_utf8(encode_head(&parts, Framing::Chunked, Version::HTTP_11, false)).expect("text");
        assert!(chunked.contains("transfer-encoding: chunked\r\n") && !chunked.contains("connection"), "{chunked}");
        // A stream whose handler gave its length keeps it, and is not chunked as well.
        let sized = Response::builder().header("content-length", "9").body(()).expect("response").into_parts().0;
        let given = String::from_utf8(encode_head(&sized, Framing::Given, Version::HTTP_11, false)).expect("text");
        assert!(given.contains("content-length: 9\r\n") && !given.contains("transfer-encoding"), "{given}");
        let length = String::from_utf8(encode_head(&sized, Framing::Length(3), Version::HTTP_11, false)).expect("text");
        assert_eq!(length.matches("content-length").count(), 1, "{length}");
        let old = String::from_utf8(encode_head(&parts, Framing::Length(0), Version::HTTP_10, false)).expect("text");
        assert!(old.starts_with("HTTP/1.0 200 OK") && old.contains("connection: keep-alive"), "{old}");
    }
}
