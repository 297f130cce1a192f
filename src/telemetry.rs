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

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
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
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if installed.is_ok() {
        let _ = DIRECT.set(Direct {
            json: matches!(format, LogFormat::Json),
            writer: guard.writer(),
        });
    }
    guard
}

/// Where [`info_line`] writes: the writer and format of the subscriber [`init`] installed.
static DIRECT: OnceLock<Direct> = OnceLock::new();

struct Direct {
    json: bool,
    writer: BatchedWriter,
}

thread_local! {
    static LINE: RefCell<(Vec<u8>, String)> = const { RefCell::new((Vec::new(), String::new())) };
}

/// Writes one INFO line for `target` straight to the log writer, laid out as the installed
/// subscriber lays out its own lines (text or JSON), with the fields `fields` adds. For the
/// per-admission line: the subscriber's field visitors, `dyn` formatting and per-line
/// allocations cost about 3 µs a line, this a fraction of it (BENCHMARKS.md). The caller checks
/// `tracing::enabled!` first, so `RUST_LOG` still decides whether the line is written.
///
/// Returns false, writing nothing, when [`init`] did not install the global subscriber (tests
/// and programs with a subscriber of their own): the caller then logs through `tracing`.
pub fn info_line(target: &str, message: &str, fields: impl FnOnce(&mut Line<'_>)) -> bool {
    let Some(direct) = DIRECT.get() else {
        return false;
    };
    LINE.with_borrow_mut(|(buf, scratch)| {
        buf.clear();
        let mut line = Line {
            buf,
            scratch,
            json: direct.json,
        };
        line.head(time::OffsetDateTime::now_utc(), target, message);
        fields(&mut line);
        line.tail(target);
        let _ = (&direct.writer).write(buf);
        if buf.capacity() > 64 * 1024 {
            *buf = Vec::new();
            *scratch = String::new();
        }
    });
    true
}

/// The fields `fields` adds, as a text line writes them after its message (each preceded by a
/// space): for the callers of [`info_line`] to log through `tracing` when it returns false.
pub fn text_fields(fields: impl FnOnce(&mut Line<'_>)) -> String {
    let (mut buf, mut scratch) = (Vec::new(), String::new());
    fields(&mut Line {
        buf: &mut buf,
        scratch: &mut scratch,
        json: false,
    });
    String::from_utf8_lossy(&buf).into_owned()
}

/// A log line being written by [`info_line`]: its fields, in order.
pub struct Line<'b> {
    buf: &'b mut Vec<u8>,
    scratch: &'b mut String,
    json: bool,
}

impl Line<'_> {
    fn head(&mut self, now: time::OffsetDateTime, target: &str, message: &str) {
        if self.json {
            self.buf.extend_from_slice(b"{\"timestamp\":\"");
            timestamp(self.buf, now);
            self.buf
                .extend_from_slice(b"\",\"level\":\"INFO\",\"message\":");
            json_string(self.buf, message);
        } else {
            timestamp(self.buf, now);
            self.buf.extend_from_slice(b"  INFO ");
            self.buf.extend_from_slice(target.as_bytes());
            self.buf.extend_from_slice(b": ");
            self.buf.extend_from_slice(message.as_bytes());
        }
    }

    fn tail(&mut self, target: &str) {
        if self.json {
            self.buf.extend_from_slice(b",\"target\":");
            json_string(self.buf, target);
            self.buf.extend_from_slice(b"}\n");
        } else {
            self.buf.push(b'\n');
        }
    }

    fn key(&mut self, key: &str) {
        if self.json {
            self.buf.push(b',');
            json_string(self.buf, key);
            self.buf.push(b':');
        } else {
            self.buf.push(b' ');
            self.buf.extend_from_slice(key.as_bytes());
            self.buf.push(b'=');
        }
    }

    /// A text field. In text lines it is written bare when it is made only of characters that
    /// cannot be mistaken for the line's structure (letters, digits, `-._:/@*,()+`), quoted and
    /// escaped otherwise, so a value from a review (a `uid`, a user name) cannot forge a field
    /// or a line.
    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        if self.json {
            json_string(self.buf, value);
        } else if !value.is_empty() && value.bytes().all(bare) {
            self.buf.extend_from_slice(value.as_bytes());
        } else {
            let _ = write!(self.buf, "{value:?}");
        }
    }

    /// A text field from a `Display` value, as [`Line::str`].
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        let mut scratch = std::mem::take(self.scratch);
        scratch.clear();
        let _ = std::fmt::Write::write_fmt(&mut scratch, format_args!("{value}"));
        self.str(key, &scratch);
        *self.scratch = scratch;
    }

    /// A number field.
    pub fn u64(&mut self, key: &str, value: u64) {
        self.key(key);
        let _ = write!(self.buf, "{value}");
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.buf
            .extend_from_slice(if value { b"true" } else { b"false" });
    }
}

/// Characters a text field's value may have without quotes.
fn bare(b: u8) -> bool {
    BARE[b as usize]
}

/// [`bare`] as a table.
static BARE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        t[i] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.' | b'_' | b':' | b'/' | b'@' | b'*' | b',' | b'(' | b')' | b'+'
            );
        i += 1;
    }
    t
};

fn json_string(buf: &mut Vec<u8>, s: &str) {
    // Writing a string into a vector cannot fail.
    let _ = serde_json::to_writer(&mut *buf, s);
}

/// `2026-12-02T19:03:53.644739Z`, as the subscriber writes its timestamps (UTC, microseconds).
fn timestamp(buf: &mut Vec<u8>, t: time::OffsetDateTime) {
    // Digits written by hand: `write!` spends more on formatting machinery than on the line.
    let mut out = *b"0000-00-00T00:00:00.000000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, t.year().clamp(0, 9999) as u32);
    put(5, 2, u8::from(t.month()).into());
    put(8, 2, t.day().into());
    put(11, 2, t.hour().into());
    put(14, 2, t.minute().into());
    put(17, 2, t.second().into());
    put(20, 6, t.microsecond());
    buf.extend_from_slice(&out);
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

impl LogGuard {
    fn writer(&self) -> BatchedWriter {
        BatchedWriter {
            shared: self.shared.clone(),
        }
    }
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
mod line_tests {
    use super::Line;

    fn render(json: bool, fields: impl FnOnce(&mut Line<'_>)) -> String {
        let (mut buf, mut scratch) = (Vec::new(), String::new());
        let mut line = Line {
            buf: &mut buf,
            scratch: &mut scratch,
            json,
        };
        let at = time::Date::from_calendar_date(2026, time::Month::December, 2)
            .and_then(|d| d.with_hms_micro(19, 3, 53, 644_739))
            .expect("a valid date")
            .assume_utc();
        line.head(at, "gatehouse::api", "admission");
        fields(&mut line);
        line.tail("gatehouse::api");
        String::from_utf8(buf).expect("utf-8")
    }

    fn fields(l: &mut Line<'_>) {
        l.str("uid", "8d1c-01");
        l.display("object", format_args!("{}/{}", "app-ns", "web"));
        l.str("sub_resource", "");
        l.str("user", "system:serviceaccount:kube-system:deployer");
        l.bool("dry_run", false);
        l.u64("latency_us", 42);
    }

    #[test]
    fn text_lines_look_like_the_subscribers() {
        assert_eq!(
            render(false, fields),
            "2026-12-02T19:03:53.644739Z  INFO gatehouse::api: admission uid=8d1c-01 \
             object=app-ns/web sub_resource=\"\" user=system:serviceaccount:kube-system:deployer \
             dry_run=false latency_us=42\n"
        );
    }

    #[test]
    fn json_lines_hold_the_subscribers_keys_in_its_order() {
        let line = render(true, fields);
        assert!(
            line.ends_with("}\n") && line.matches('\n').count() == 1,
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).expect("one JSON object");
        assert_eq!(
            v,
            serde_json::json!({"timestamp": "2026-12-02T19:03:53.644739Z", "level": "INFO",
                "message": "admission", "uid": "8d1c-01", "object": "app-ns/web",
                "sub_resource": "", "user": "system:serviceaccount:kube-system:deployer",
                "dry_run": false, "latency_us": 42, "target": "gatehouse::api"})
        );
        assert!(line.starts_with("{\"timestamp\":"), "{line}");
        assert!(
            line.ends_with(",\"target\":\"gatehouse::api\"}\n"),
            "{line}"
        );
    }

    #[test]
    fn values_from_a_review_cannot_forge_fields_or_lines() {
        let hostile = "x decision=allowed\n2026-12-02T00:00:00Z  INFO forged \"q\"";
        let text = render(false, |l| l.str("uid", hostile));
        assert_eq!(text.matches('\n').count(), 1, "{text}");
        assert!(text.contains(&format!("uid={hostile:?}")), "{text}");
        let json = render(true, |l| l.str("uid", hostile));
        let v: serde_json::Value = serde_json::from_str(&json).expect("still one object");
        assert_eq!(v["uid"], hostile);
        // Bare values are only those that cannot be taken for structure.
        let text = render(false, |l| l.str("user", "a=b"));
        assert!(text.contains("user=\"a=b\""), "{text}");
    }

    #[test]
    fn timestamps_are_padded_like_the_subscribers() {
        for (y, mo, d, h, mi, s, us) in [
            (2026, time::Month::January, 1, 0, 0, 0, 0),
            (2026, time::Month::December, 31, 23, 59, 59, 999_999),
            (999, time::Month::March, 9, 7, 5, 3, 1_020),
        ] {
            let t = time::Date::from_calendar_date(y, mo, d)
                .and_then(|d| d.with_hms_micro(h, mi, s, us))
                .expect("a valid date")
                .assume_utc();
            let mut buf = Vec::new();
            super::timestamp(&mut buf, t);
            let expected = format!(
                "{y:04}-{:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{us:06}Z",
                u8::from(mo)
            );
            assert_eq!(String::from_utf8(buf).expect("ascii"), expected);
        }
    }

    #[test]
    fn bare_characters_are_exactly_the_listed_ones() {
        for b in 0..=255u8 {
            let listed = b.is_ascii_alphanumeric() || b"-._:/@*,()+".contains(&b);
            assert_eq!(super::bare(b), listed, "byte {b}");
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
