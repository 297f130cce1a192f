//! Captures this test process's log output (every line from every test), so a test can look
//! for a line and check a secret appears in none.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Clone)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn sink() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        let sink = Sink(Arc::new(Mutex::new(Vec::new())));
        let writer = sink.clone();
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("info,gatehouse=debug"))
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .init();
        sink
    })
}

/// Starts capturing (idempotent).
pub fn capture() {
    sink();
}

/// Everything logged so far.
pub fn text() -> String {
    String::from_utf8_lossy(&sink().0.lock().unwrap()).into_owned()
}
