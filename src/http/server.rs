//! The HTTP listener: accept loop, per-client connection limit, header read timeout, and
//! graceful shutdown (stop accepting, let in-flight requests finish for at most the drain
//! time).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::fanout::FanOut;
use super::h1::H1;
use super::{router, HttpContext};
use crate::per_address::PerAddress;
use crate::refusals::Refusals;
use crate::tls::TlsServer;

/// Consul's answer to a client over `http_max_conns_per_client`.
const TOO_MANY_CONNECTIONS_BODY: &str =
    "Your IP is issuing too many concurrent connections, please rate limit your calls";

/// The buffer that holds an HTTPS connection's first bytes while they are waited for.
const FIRST_READ_BYTES: usize = 4096;

type Service = TowerToHyperService<axum::Router>;

/// Serves HTTP/1.1 on one connection until it ends or the server drains.
async fn serve_one<I>(
    builder: &Builder<TokioExecutor>,
    io: I,
    service: Service,
    watcher: hyper_util::server::graceful::Watcher,
    peer: SocketAddr,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(connection.into_owned()).await {
        tracing::debug!(client = %peer, error = %e, "HTTP connection ended with an error");
    }
}

/// The answer to a connection past `limits.http_max_conns`.
fn service_unavailable() -> Vec<u8> {
    const BODY: &str = "Too many open connections to this agent; try again later";
    format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Retry-After: 1\r\nConnection: close\r\n\r\n{BODY}",
        BODY.len()
    )
    .into_bytes()
}

fn too_many_connections() -> Vec<u8> {
    format!(
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{TOO_MANY_CONNECTIONS_BODY}",
        TOO_MANY_CONNECTIONS_BODY.len()
    )
    .into_bytes()
}

/// Serves the API on `listener` until `shutdown` is cancelled, then drains open connections
/// for at most `drain`. With `tls`, each connection first completes a TLS handshake within
/// `limits.https_handshake_timeout` (a refused or slow one is logged with its reason and
/// closed); it holds its per-client slot from accept on, so handshakes count against the cap.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<HttpContext>,
    shutdown: CancellationToken,
    drain: Duration,
    tls: Option<Arc<TlsServer>>,
) {
    let app = router(ctx.clone());
    let service = TowerToHyperService::new(app.clone());
    let h1 = Arc::new(H1 {
        router: app,
        ctx: Arc::clone(&ctx),
        fanout: FanOut::default(),
        header_timeout: ctx.limits.http_header_read_timeout,
        shutdown: shutdown.clone(),
    });
    let connections = TaskTracker::new();
    // HTTP/1.1 only, as Consul serves plain-text clients: cleartext h2 would let one
    // connection carry many concurrent requests past the per-client connection limit.
    let mut builder = Builder::new(TokioExecutor::new()).http1_only();
    builder.http1().timer(TokioTimer::new()).header_read_timeout(ctx.limits.http_header_read_timeout);
    let builder = Arc::new(builder);
    let handshake_timeout = ctx.limits.https_handshake_timeout;
    let header_timeout = ctx.limits.http_header_read_timeout;
    let graceful = GracefulShutdown::new();
    let counts = PerAddress::default();
    let max_per_client = ctx.limits.http_max_conns_per_client.max(1);
    let max_total = ctx.limits.http_max_conns.max(1);
    let total = Arc::new(tokio::sync::Semaphore::new(max_total as usize));
    let (over_total, over_client) = (Refusals::default(), Refusals::default());
    loop {
        let (mut stream, peer): (_, SocketAddr) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let total_slot = Arc::clone(&total).try_acquire_owned().ok();
        let slot = total_slot.as_ref().and_then(|_| counts.try_take(peer.ip(), max_per_client));
        let (Some(total_slot), Some(slot)) = (total_slot, slot) else {
            let (refusals, answer) = if total.available_permits() == 0 {
                (&over_total, service_unavailable())
            } else {
                (&over_client, too_many_connections())
            };
            if let Some(refused) = refusals.refused() {
                tracing::warn!(client = %peer.ip(), refused, per_client = max_per_client, total = max_total,
                    "HTTP connection limit reached (limits.http_max_conns_per_client or limits.http_max_conns); closing new connections");
            }
            let plain = tls.is_none();
            // Bounded like any connection: the refusal is written within the header timeout.
            tokio::spawn(async move {
                // Over TLS the client cannot read a plain answer: just close.
                if plain {
                    let _ = tokio::time::timeout(header_timeout, stream.write_all(&answer)).await;
                }
                let _ = stream.shutdown().await;
            });
            continue;
        };
        let slot = (slot, total_slot);
        let _ = stream.set_nodelay(true);
        let (acceptor, builder, service, watcher) =
            (tls.as_ref().map(|t| t.acceptor()), Arc::clone(&builder), service.clone(), graceful.watcher());
        let h1 = Arc::clone(&h1);
        connections.spawn(async move {
            // Plain text: cairn's own loop, which hands the connection to hyper at the first
            // request it does not serve itself (`h1`).
            let Some(acceptor) = acceptor else {
                h1.serve(stream, peer, |io| async move { serve_one(&builder, io, service, watcher, peer).await }).await;
                drop(slot);
                return;
            };
            let stream = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => {
                    tracing::warn!(client = %peer, error = %e, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::warn!(client = %peer, timeout = ?handshake_timeout, "TLS handshake not finished in time; closed");
                    return;
                }
            };
            // Buffered so the first request's bytes can be waited for without losing them.
            let mut stream = tokio::io::BufReader::with_capacity(FIRST_READ_BYTES, stream);
            if matches!(tokio::time::timeout(header_timeout, stream.fill_buf()).await, Ok(Ok(b)) if !b.is_empty()) {
                serve_one(&builder, stream, service, watcher, peer).await;
            } else {
                tracing::debug!(client = %peer, "HTTPS connection sent nothing in time; closed");
            }
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    let drained = async {
        graceful.shutdown().await;
        connections.wait().await;
    };
    tokio::select! {
        _ = drained => tracing::debug!("HTTP connections drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(?drain, "HTTP drain timed out; closing remaining connections"),
    }
}
