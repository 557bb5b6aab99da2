//! The log tap behind `/v1/agent/monitor`: a tracing layer that formats events only while
//! someone monitors, at the most verbose level any monitor asked for, and hands each line to
//! a bounded broadcast channel.
//!
//! The tap has its own filter, apart from the agent's `log_level`: `cairn monitor -log-level
//! debug` shows debug lines from an agent that logs at info, as Consul's monitor does, and
//! costs nothing while no one watches.

use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;
use tracing::Level;

/// Log lines buffered per monitor; a monitor that falls further behind is told how many it
/// missed, and goes on.
pub const MONITOR_LINES_MAX: usize = 4096;

/// Shared by the tracing layer and the HTTP handler.
pub struct LogTap {
    lines: broadcast::Sender<(Level, Arc<str>)>,
    /// Active monitors per level (index: TRACE 0 … ERROR 4).
    watchers: [AtomicUsize; 5],
}

fn slot(level: Level) -> usize {
    match level {
        Level::TRACE => 0,
        Level::DEBUG => 1,
        Level::INFO => 2,
        Level::WARN => 3,
        Level::ERROR => 4,
    }
}

impl Default for LogTap {
    fn default() -> Self {
        LogTap { lines: broadcast::Sender::new(MONITOR_LINES_MAX), watchers: Default::default() }
    }
}

impl LogTap {
    /// Whether some monitor wants events of `level`.
    pub fn wants(&self, level: &Level) -> bool {
        self.watchers[..=slot(*level)].iter().any(|w| w.load(Ordering::Relaxed) > 0)
    }

    /// Starts a monitor of events at `level` and above; it stops when the guard drops.
    pub fn watch(self: &Arc<Self>, level: Level) -> Watch {
        self.watchers[slot(level)].fetch_add(1, Ordering::Relaxed);
        // Each callsite's interest was cached while no one watched.
        tracing::callsite::rebuild_interest_cache();
        Watch { tap: Arc::clone(self), level, lines: self.lines.subscribe() }
    }
}

/// One monitor: its lines, and its place in the tap's count.
pub struct Watch {
    tap: Arc<LogTap>,
    pub level: Level,
    pub lines: broadcast::Receiver<(Level, Arc<str>)>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.tap.watchers[slot(self.level)].fetch_sub(1, Ordering::Relaxed);
        tracing::callsite::rebuild_interest_cache();
    }
}

/// The tap as a tracing layer: Consul-like text lines, enabled only while a monitor wants
/// that level.
pub fn layer<S>(tap: &Arc<LogTap>) -> impl tracing_subscriber::Layer<S> + Send + Sync
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::Layer;
    tracing_subscriber::fmt::layer()
        .with_writer(TapWriter { tap: Arc::clone(tap) })
        .with_ansi(false)
        .with_target(false)
        .with_filter(TapFilter { tap: Arc::clone(tap) })
}

/// The tap's per-layer filter. Its interest per callsite and its level hint follow the
/// monitors (the interest cache is rebuilt as they come and go), so while no one watches
/// the hint is OFF and disabled `debug!` calls still stop at the level check, as before.
struct TapFilter {
    tap: Arc<LogTap>,
}

impl<S> tracing_subscriber::layer::Filter<S> for TapFilter {
    fn enabled(&self, meta: &tracing::Metadata<'_>, _: &tracing_subscriber::layer::Context<'_, S>) -> bool {
        self.tap.wants(meta.level())
    }

    fn callsite_enabled(&self, meta: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if self.tap.wants(meta.level()) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn max_level_hint(&self) -> Option<tracing_subscriber::filter::LevelFilter> {
        use tracing_subscriber::filter::LevelFilter;
        let levels = [Level::TRACE, Level::DEBUG, Level::INFO, Level::WARN, Level::ERROR];
        let most_verbose = levels.into_iter().find(|l| self.tap.watchers[slot(*l)].load(Ordering::Relaxed) > 0);
        Some(most_verbose.map_or(LevelFilter::OFF, LevelFilter::from_level))
    }
}

/// The `MakeWriter` of the tap's fmt layer: each event is formatted into a buffer that is
/// sent as one line when dropped.
#[derive(Clone)]
pub struct TapWriter {
    tap: Arc<LogTap>,
}

pub struct LineWriter {
    tap: Arc<LogTap>,
    level: Level,
    buf: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            let line: Arc<str> = String::from_utf8_lossy(&self.buf).into();
            // No receiver: nobody watches any more; nothing to do.
            let _ = self.tap.lines.send((self.level, line));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for TapWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter { tap: Arc::clone(&self.tap), level: Level::INFO, buf: Vec::new() }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> LineWriter {
        LineWriter { tap: Arc::clone(&self.tap), level: *meta.level(), buf: Vec::new() }
    }
}
