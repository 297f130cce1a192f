//! Logging setup: human-readable or JSON lines on stderr, filtered by `RUST_LOG`.
//!
//! Lines are formatted on the thread that logs and appended to a shared buffer; a dedicated
//! thread writes the buffer to stderr in batches. So a slow or blocked stderr (a full pipe, a
//! stalled log collector) never holds up a request thread: past [`MAX_BUFFERED`] bytes waiting,
//! new lines are dropped (and counted in a line of their own once stderr takes lines again)
//! rather than waited for. The writer thread is woken once per batch, not once per line: after
//! the first line of a batch it waits [`BATCH_WINDOW`] for more, so a busy webhook pays for
//! one wake-up per 10 ms instead of one per admission (`tracing-appender`'s non-blocking writer,
//! used before, woke it for every line: about 2 µs of CPU per admission on the 2-core bench
//! machine, see BENCHMARKS.md).

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Bytes of log lines held for the writer thread at most; lines past it are dropped.
pub const MAX_BUFFERED: usize = 8 * 1024 * 1024;
/// How long the writer thread gathers lines after the first of a batch.
pub const BATCH_WINDOW: Duration = Duration::from_millis(10);

/// Installs the global subscriber; `RUST_LOG` overrides the default `info` filter.
/// Calling it twice is harmless (the second call is ignored). Keep the returned guard alive
/// until the process ends: dropping it writes out the lines still buffered.
#[must_use = "dropping the guard stops log output"]
pub fn init(format: LogFormat) -> LogGuard {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = batched(std::io::stderr());
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

/// A log writer that hands lines to a writer thread writing them to `out` in batches, and the
/// guard that stops that thread (writing out what is buffered) when dropped.
pub fn batched<W: Write + Send + 'static>(out: W) -> (BatchedWriter, LogGuard) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
    });
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("gatehouse-log".into())
            .spawn(move || write_batches(&shared, out))
            .ok()
    };
    (
        BatchedWriter {
            shared: shared.clone(),
        },
        LogGuard { shared, thread },
    )
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    dropped: u64,
    /// The writer thread waits for a first line (and must be woken).
    parked: bool,
    closed: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn write_batches(shared: &Shared, mut out: impl Write) {
    let mut batch = Vec::new();
    loop {
        let mut state = shared.lock();
        while state.buf.is_empty() && state.dropped == 0 && !state.closed {
            state.parked = true;
            state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        state.parked = false;
        if !state.closed {
            drop(state);
            std::thread::sleep(BATCH_WINDOW);
            state = shared.lock();
        }
        std::mem::swap(&mut batch, &mut state.buf);
        let dropped = std::mem::take(&mut state.dropped);
        let closed = state.closed;
        drop(state);
        if dropped > 0 {
            let _ = writeln!(
                batch,
                "gatehouse: {dropped} log lines dropped: the log output did not keep up"
            );
        }
        // A failed write (stderr closed) loses this batch and nothing else.
        let _ = out.write_all(&batch).and_then(|()| out.flush());
        batch.clear();
        if batch.capacity() > 1024 * 1024 {
            batch = Vec::new();
        }
        if closed && shared.lock().buf.is_empty() {
            return;
        }
    }
}

/// The writer handed to the `tracing` subscriber: appends each line to the batch.
#[derive(Clone)]
pub struct BatchedWriter {
    shared: Arc<Shared>,
}

impl Write for &BatchedWriter {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut state = self.shared.lock();
        if state.closed {
            return Ok(line.len());
        }
        if state.buf.len() + line.len() > MAX_BUFFERED {
            state.dropped += 1;
        } else {
            state.buf.extend_from_slice(line);
        }
        if state.parked {
            state.parked = false;
            drop(state);
            self.shared.wake.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for BatchedWriter {
    type Writer = &'a BatchedWriter;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Stops the log writer thread when dropped, after it has written what is buffered.
pub struct LogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_BUFFERED, batched};
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    /// Collects what the writer thread writes; `gate` held blocks it (a stalled stderr).
    #[derive(Clone, Default)]
    struct Sink {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<Mutex<()>>,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _g = self.gate.lock().unwrap();
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_arrive_in_order_and_the_guard_writes_out_the_rest() {
        let sink = Sink::default();
        let (writer, guard) = batched(sink.clone());
        for i in 0..1000 {
            writeln!(&writer, "line {i}").unwrap();
        }
        drop(guard);
        let text = String::from_utf8(sink.out.lock().unwrap().clone()).unwrap();
        let expected: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        assert_eq!(text, expected);
    }

    #[test]
    fn a_line_is_written_without_waiting_for_more() {
        let sink = Sink::default();
        let (writer, _guard) = batched(sink.clone());
        writeln!(&writer, "alone").unwrap();
        let start = std::time::Instant::now();
        while sink.out.lock().unwrap().is_empty() {
            assert!(start.elapsed().as_secs() < 5, "the line was never written");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!(&*sink.out.lock().unwrap(), b"alone\n");
    }

    #[test]
    fn a_stalled_output_drops_lines_instead_of_blocking_and_says_how_many() {
        let sink = Sink::default();
        let gate = sink.gate.lock().unwrap();
        let (writer, guard) = batched(sink.clone());
        let mut line = vec![b'x'; 1023];
        line.push(b'\n');
        // The writer thread takes the first batch and blocks on the stalled output; the
        // buffer then fills up and what does not fit is dropped, without the logging
        // thread ever waiting.
        (&writer).write_all(b"first\n").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let lines = MAX_BUFFERED / 1024 + 100;
        let start = std::time::Instant::now();
        for _ in 0..lines {
            (&writer).write_all(&line).unwrap();
        }
        assert!(
            start.elapsed().as_secs() < 5,
            "logging waited for the output"
        );
        drop(gate);
        drop(guard);
        let out = sink.out.lock().unwrap();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with("first\n"));
        let kept = text.lines().filter(|l| l.starts_with('x')).count();
        assert!(kept < lines && kept > lines - 200, "kept {kept} of {lines}");
        assert!(
            text.contains("log lines dropped: the log output did not keep up"),
            "no drop notice"
        );
    }
}
