//! Logging setup: human-readable or JSON lines on stderr, filtered by `RUST_LOG`.
//!
//! Lines are formatted on the thread that logs and written to stderr by a dedicated thread
//! (`tracing-appender`'s non-blocking writer), so a slow or blocked stderr (a full pipe, a
//! stalled log collector) never holds up a request thread: past 128 000 buffered lines,
//! new lines are dropped rather than waited for.

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` filter.
/// Calling it twice is harmless (the second call is ignored). Keep the returned guard alive
/// until the process ends: dropping it flushes the lines still buffered.
#[must_use = "dropping the guard stops log output"]
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .thread_name("gatehouse-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    guard
}
