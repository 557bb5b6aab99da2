//! `HttpConn`: one HTTP/1.1 keep-alive connection over a tokio `TcpStream`, written for the
//! bench so that its own cost per request is small and visible: no pool, no retries, one
//! `write` per request, and a response read straight out of one reusable buffer.
//!
//! It understands what the servers under test send: a status line, headers, and a body framed
//! by `Content-Length`, `Transfer-Encoding: chunked`, or (with neither) the end of the
//! connection.

use std::io::{self, Write as _};
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response head larger than this is treated as garbage rather than buffered for ever.
const HEAD_BYTES_MAX: usize = 64 * 1024;
/// Bytes the read buffer grows by before each read. Small on purpose: the watch section keeps
/// 10,000 connections open, each with its own buffer, and their answers are a few hundred bytes.
const READ_CHUNK_BYTES: usize = 2048;

/// A complete response. Headers stay as the raw head text and are looked up on demand, so a
/// response that nobody inspects costs one allocation for the head and one for the body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    head: String,
    pub body: Vec<u8>,
}

impl Response {
    /// The first header called `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head
            .split("\r\n")
            .skip(1)
            .filter_map(|line| line.split_once(':'))
            .find(|(key, _)| key.trim().eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    }

    /// `X-Consul-Index`, if present and numeric.
    pub fn consul_index(&self) -> Option<u64> {
        self.header("X-Consul-Index")?.parse().ok()
    }

    /// The response as it came over the wire (head, blank line, body) when its body was framed
    /// by `Content-Length`, for replaying it.
    pub fn to_bytes(&self) -> Vec<u8> {
        [self.head.as_bytes(), b"\r\n\r\n", &self.body].concat()
    }

    /// The body as text, for error messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub struct HttpConn {
    stream: TcpStream,
    host: String,
    /// Received bytes not yet consumed by a response; always starts at a response boundary.
    buf: Vec<u8>,
    /// The request being written, kept to reuse its allocation.
    request: Vec<u8>,
}

/// How the body after a head is delimited (RFC 9112 §6.3).
enum Framing {
    Empty,
    Length(usize),
    Chunked,
    UntilClose,
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Where the head of an HTTP message ends (after its blank line), if it is complete.
pub fn head_end(message: &[u8]) -> Option<usize> {
    find(message, b"\r\n\r\n", 0).map(|at| at + 4)
}

impl HttpConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<HttpConn> {
        let stream = TcpStream::connect(addr).await?;
        // Requests are written in one piece; Nagle would only add delay to small ones.
        stream.set_nodelay(true)?;
        Ok(HttpConn { stream, host: addr.to_string(), buf: Vec::new(), request: Vec::new() })
    }

    /// Sends one request and reads its response.
    pub async fn request(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<Response> {
        self.send(method, path, body).await?;
        self.read_response().await
    }

    /// Writes one request (head and body in a single write). Pair with `read_response`.
    pub async fn send(&mut self, method: &str, path: &str, body: &[u8]) -> io::Result<()> {
        self.request.clear();
        write!(
            self.request,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        )?;
        self.request.extend_from_slice(body);
        self.stream.write_all(&self.request).await
    }

    /// Reads one complete response, leaving any bytes after it for the next one.
    pub async fn read_response(&mut self) -> io::Result<Response> {
        let head_end = loop {
            if let Some(end) = head_end(&self.buf) {
                break end;
            }
            if self.buf.len() > HEAD_BYTES_MAX {
                return Err(invalid("response head too long"));
            }
            self.read_more().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end - 4])
            .map_err(|_| invalid("response head is not UTF-8"))?
            .to_owned();
        let status = parse_status(&head)?;
        let (body, consumed) = match framing(&head, status)? {
            Framing::Empty => (Vec::new(), head_end),
            Framing::Length(len) => {
                self.fill_to(head_end + len).await?;
                (self.buf[head_end..head_end + len].to_vec(), head_end + len)
            }
            Framing::Chunked => self.read_chunked(head_end).await?,
            Framing::UntilClose => {
                while self.read_some().await? > 0 {}
                (self.buf[head_end..].to_vec(), self.buf.len())
            }
        };
        self.buf.drain(..consumed);
        Ok(Response { status, head, body })
    }

    /// Decodes a chunked body starting at `pos`; returns it and where the message ends.
    async fn read_chunked(&mut self, mut pos: usize) -> io::Result<(Vec<u8>, usize)> {
        let mut body = Vec::new();
        loop {
            let line_end = self.find_line(pos).await?;
            let size_text =
                std::str::from_utf8(&self.buf[pos..line_end]).map_err(|_| invalid("chunk size is not UTF-8"))?;
            // A chunk size may carry `;extensions`, which mean nothing to us.
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size_hex, 16).map_err(|_| invalid(format!("bad chunk size {size_text:?}")))?;
            pos = line_end + 2;
            if size == 0 {
                // Trailer fields, if any, end with an empty line.
                loop {
                    let end = self.find_line(pos).await?;
                    let empty = end == pos;
                    pos = end + 2;
                    if empty {
                        return Ok((body, pos));
                    }
                }
            }
            self.fill_to(pos + size + 2).await?;
            body.extend_from_slice(&self.buf[pos..pos + size]);
            if &self.buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(invalid("chunk not followed by CRLF"));
            }
            pos += size + 2;
        }
    }

    /// Position of the next CRLF at or after `from`, reading as needed.
    async fn find_line(&mut self, from: usize) -> io::Result<usize> {
        loop {
            if let Some(pos) = find(&self.buf, b"\r\n", from) {
                return Ok(pos);
            }
            if self.buf.len() - from > HEAD_BYTES_MAX {
                return Err(invalid("line too long in chunked body"));
            }
            self.read_more().await?;
        }
    }

    async fn fill_to(&mut self, len: usize) -> io::Result<()> {
        while self.buf.len() < len {
            self.read_more().await?;
        }
        Ok(())
    }

    /// Reads at least one byte, or fails if the server closed the connection.
    async fn read_more(&mut self) -> io::Result<()> {
        if self.read_some().await? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection mid-response"));
        }
        Ok(())
    }

    async fn read_some(&mut self) -> io::Result<usize> {
        self.buf.reserve(READ_CHUNK_BYTES);
        self.stream.read_buf(&mut self.buf).await
    }
}

fn parse_status(head: &str) -> io::Result<u16> {
    let line = head.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    match (parts.next(), parts.next().and_then(|s| s.parse().ok())) {
        (Some(version), Some(status)) if version.starts_with("HTTP/1.") => Ok(status),
        _ => Err(invalid(format!("bad status line {line:?}"))),
    }
}

fn framing(head: &str, status: u16) -> io::Result<Framing> {
    if status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(Framing::Empty);
    }
    let mut length = None;
    for (key, value) in head.split("\r\n").skip(1).filter_map(|line| line.split_once(':')) {
        let key = key.trim();
        if key.eq_ignore_ascii_case("transfer-encoding") {
            if value.to_ascii_lowercase().contains("chunked") {
                return Ok(Framing::Chunked);
            }
        } else if key.eq_ignore_ascii_case("content-length") {
            let len = value.trim().parse().map_err(|_| invalid(format!("bad Content-Length {value:?}")))?;
            length = Some(len);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(len) => Framing::Length(len),
        None => Framing::UntilClose,
    })
}
