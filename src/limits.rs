//! Per-request limits that keep slow, large or too many requests from starving the API
//! server's reviews: a cap on requests in progress, a budget of body bytes in progress that
//! lets any request that fits go ahead, and reading the body with a size limit and a minimum
//! data rate. (Connection caps and timers live in [`crate::conn`].)

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt as _;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

use crate::metrics::Metrics;

/// A JSON error answer (`{"error": "…"}`), the shape of every error Gatehouse sends.
pub fn error_response(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// Requests in progress, capped; over the cap a request is answered 503 at once (the API
/// server retries or applies its failurePolicy) instead of queueing behind slow ones.
#[derive(Clone)]
pub struct RequestLimit {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl RequestLimit {
    /// A cap of `max` requests in progress.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            metrics,
        }
    }
}

impl RequestLimit {
    /// A place among the requests in progress, if one is free.
    pub fn admit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The 503 for a request that found no place, counted as `request_limit`.
    pub fn refuse(&self) -> Response {
        self.metrics.reject("request_limit");
        error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many requests in progress",
        )
    }
}

/// What a request takes in memory while its body is read, decoded and judged, as a multiple of
/// the body's size: the body itself, plus at most as much again for decoding and the policies
/// (the decoder builds nothing whose size follows the body's but a bit per nesting level, and
/// policy kinds keep a bounded number of findings; `bench/load.sh` with `MEMORY=1` measures the
/// hostile shapes). Each request reserves this much from the [`BodyBudget`].
pub const MEMORY_PER_BODY_BYTE: usize = 2;

/// A budget of the memory request bodies in progress take while read, decoded and judged: the
/// sum of bodies in progress, not only each body, is what bounds memory. A request reserves
/// [`MEMORY_PER_BODY_BYTE`] times its `Content-Length` (or the body limit when the length is
/// not announced) before its body is read. It is not first come, first served: a
/// request that fits in what is free goes ahead even while a larger one waits (within its
/// deadline) for room.
#[derive(Clone)]
pub struct BodyBudget {
    inner: Arc<BudgetInner>,
}

struct BudgetInner {
    free: Mutex<usize>,
    total: usize,
    released: Notify,
    /// Requests waiting for room: a release wakes nobody (and takes no lock of the
    /// [`Notify`]) while there are none.
    waiting: AtomicUsize,
}

/// A request counted among those waiting for room while this lives.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Bytes reserved from a [`BodyBudget`]; given back when dropped.
pub struct Reservation {
    budget: Arc<BudgetInner>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut free = self.budget.free.lock().unwrap_or_else(|e| e.into_inner());
        *free += self.bytes;
        drop(free);
        // A waiter counts itself before it looks at `free` under the lock, so either it sees
        // these bytes or this sees it.
        if self.budget.waiting.load(Ordering::SeqCst) > 0 {
            self.budget.released.notify_waiters();
        }
    }
}

impl BodyBudget {
    /// `total` bytes of bodies at once.
    pub fn new(total: usize) -> Self {
        let total = total.max(1);
        Self {
            inner: Arc::new(BudgetInner {
                free: Mutex::new(total),
                total,
                released: Notify::new(),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// Takes `bytes` (at least 1, at most the whole budget: a body larger than the budget
    /// still gets in, alone) if they are free now.
    pub fn try_reserve(&self, bytes: usize) -> Option<Reservation> {
        let want = bytes.clamp(1, self.inner.total);
        let mut free = self.inner.free.lock().unwrap_or_else(|e| e.into_inner());
        if *free < want {
            return None;
        }
        *free -= want;
        Some(Reservation {
            budget: self.inner.clone(),
            bytes: want,
        })
    }

    /// Waits until `bytes` are free and takes them. Waiters do not queue: whichever fits
    /// when bytes are given back goes ahead.
    pub async fn reserve(&self, bytes: usize) -> Reservation {
        if let Some(r) = self.try_reserve(bytes) {
            return r;
        }
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        let _waiting = Waiting(&self.inner.waiting);
        loop {
            let released = self.inner.released.notified();
            let mut released = std::pin::pin!(released);
            released.as_mut().enable();
            if let Some(r) = self.try_reserve(bytes) {
                return r;
            }
            released.await;
        }
    }
}

/// The minimum data rate of a request body.
#[derive(Debug, Clone, Copy)]
pub struct BodyRate {
    /// Slowest accepted body after `grace`, in bytes per second (0: no minimum).
    pub min_bytes_per_second: u64,
    /// Time before the minimum applies.
    pub grace: Duration,
}

impl Default for BodyRate {
    fn default() -> Self {
        let l = crate::config::Limits::default();
        Self::from_config(&l)
    }
}

impl BodyRate {
    /// The rate a configuration sets.
    pub fn from_config(l: &crate::config::Limits) -> Self {
        Self {
            min_bytes_per_second: l.min_body_bytes_per_second,
            grace: l.body_rate_grace,
        }
    }
}

/// How request bodies are read: size limit, byte budget and minimum data rate.
#[derive(Clone)]
pub struct BodyReader {
    /// Largest body; larger gets 413.
    pub max_body_bytes: usize,
    /// Bodies in progress.
    pub budget: BodyBudget,
    /// Slowest accepted body after `grace`, in bytes per second (0: no minimum).
    pub min_bytes_per_second: u64,
    /// Time before the minimum rate applies.
    pub grace: Duration,
    /// Where refusals are counted.
    pub metrics: Arc<Metrics>,
}

/// Why a body was not read whole.
#[derive(Debug, PartialEq, Eq)]
enum BodyError {
    TooLarge,
    TooSlow,
    Broken,
}

impl BodyReader {
    /// The latest moment the next part of the body may arrive, `received` bytes in.
    fn allowed_until(&self, started: Instant, received: usize) -> Option<Instant> {
        if self.min_bytes_per_second == 0 {
            return None;
        }
        let secs = received as f64 / self.min_bytes_per_second as f64;
        Some(started + self.grace + Duration::from_secs_f64(secs.min(86_400.0)))
    }

    async fn read(&self, body: Body, expected: Option<usize>) -> Result<Bytes, BodyError> {
        let started = Instant::now();
        let mut body = body;
        let mut buf = BodyBuf::new(expected.map(|n| n.min(self.max_body_bytes)));
        loop {
            let frame = match self.allowed_until(started, buf.len()) {
                Some(until) => tokio::time::timeout_at(until, body.frame())
                    .await
                    .map_err(|_| BodyError::TooSlow)?,
                None => body.frame().await,
            };
            match frame {
                None => return Ok(buf.into_bytes()),
                Some(Err(_)) => return Err(BodyError::Broken),
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if buf.len() + data.len() > self.max_body_bytes {
                            return Err(BodyError::TooLarge);
                        }
                        buf.extend(&data)?;
                    }
                }
            }
        }
    }
}

/// Bodies announced at least this large are read into memory mapped for them alone and
/// unmapped as soon as the review is answered. Through the allocator they would stay: glibc's
/// malloc raises its mmap threshold to the size of the first large buffer freed, so later large
/// bodies come from its heap, and the heap keeps their pages after they are freed (a 7 MiB
/// review left RSS ~8–11 MiB above idle).
pub const MAPPED_BODY_BYTES: usize = 1 << 20;

/// A body being read: allocated at its announced length at once, so it is never copied as it
/// grows (untouched pages take no memory until the bytes arrive).
enum BodyBuf {
    Heap(Vec<u8>),
    Mapped { map: memmap2::MmapMut, len: usize },
}

impl BodyBuf {
    fn new(expected: Option<usize>) -> Self {
        match expected {
            Some(n) if n >= MAPPED_BODY_BYTES => match memmap2::MmapMut::map_anon(n) {
                Ok(map) => BodyBuf::Mapped { map, len: 0 },
                Err(_) => BodyBuf::Heap(Vec::with_capacity(n)),
            },
            Some(n) => BodyBuf::Heap(Vec::with_capacity(n)),
            None => BodyBuf::Heap(Vec::with_capacity(64 << 10)),
        }
    }

    fn len(&self) -> usize {
        match self {
            BodyBuf::Heap(v) => v.len(),
            BodyBuf::Mapped { len, .. } => *len,
        }
    }

    /// Appends; more than the announced length is a broken body (HTTP itself forbids it).
    fn extend(&mut self, data: &[u8]) -> Result<(), BodyError> {
        match self {
            BodyBuf::Heap(v) => v.extend_from_slice(data),
            BodyBuf::Mapped { map, len } => {
                let end = *len + data.len();
                map.get_mut(*len..end)
                    .ok_or(BodyError::Broken)?
                    .copy_from_slice(data);
                *len = end;
            }
        }
        Ok(())
    }

    fn into_bytes(self) -> Bytes {
        match self {
            BodyBuf::Heap(v) => Bytes::from(v),
            BodyBuf::Mapped { map, len } => Bytes::from_owner(MappedBody { map, len }),
        }
    }
}

/// A body read into its own mapping; unmapped when the last reference to it goes.
struct MappedBody {
    map: memmap2::MmapMut,
    len: usize,
}

impl AsRef<[u8]> for MappedBody {
    fn as_ref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

/// The answer to a body larger than the limit: a JSON 413, counted as `body_too_large`.
fn too_large(reader: &BodyReader) -> Response {
    reader.metrics.reject("body_too_large");
    error_response(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!(
            "request body is larger than limits.max_body_bytes ({} bytes)",
            reader.max_body_bytes
        ),
    )
}

/// Refuses an announced length over the limit at once, reserves the body's bytes from the
/// budget (waiting, within the deadline, while they are not free), then reads the whole body
/// with the size limit and the minimum rate, and hands `handler` the request's head and the
/// bytes. The reservation is held until the answer is ready.
pub async fn read_body_then<F, Fut>(reader: &BodyReader, req: Request, handler: F) -> Response
where
    F: FnOnce(axum::http::request::Parts, Bytes) -> Fut,
    Fut: std::future::Future<Output = Response>,
{
    let length = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(n) = length
        && n > reader.max_body_bytes as u64
    {
        return keep_body_until_sent(req, too_large(reader));
    }
    let expected = length.map_or(reader.max_body_bytes, |n| n as usize);
    let _reservation = reader
        .budget
        .reserve(expected.saturating_mul(MEMORY_PER_BODY_BYTE))
        .await;
    let (parts, body) = req.into_parts();
    match reader.read(body, length.map(|n| n as usize)).await {
        Ok(bytes) => handler(parts, bytes).await,
        Err(BodyError::TooLarge) => too_large(reader),
        Err(BodyError::TooSlow) => {
            reader.metrics.reject("body_too_slow");
            tracing::info!(
                min_bytes_per_second = reader.min_bytes_per_second,
                "request body arrived too slowly; answered 408"
            );
            error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request body arrived too slowly",
            )
        }
        Err(BodyError::Broken) => {
            reader.metrics.reject("body_error");
            error_response(
                StatusCode::BAD_REQUEST,
                "the request body could not be read",
            )
        }
    }
}

/// Answers `resp` while the request's unread body stays open until the answer has been sent:
/// over HTTP/2, dropping the body first resets the stream, and the client never sees the
/// answer.
fn keep_body_until_sent(req: Request, resp: Response) -> Response {
    let unread = req.into_body();
    resp.map(|body| {
        Body::new(KeepAlong {
            body,
            _unread: unread,
        })
    })
}

struct KeepAlong {
    body: Body,
    _unread: Body,
}

impl http_body::Body for KeepAlong {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_that_fits_goes_ahead_of_a_larger_waiter() {
        let budget = BodyBudget::new(10);
        let first = budget.try_reserve(6).expect("6 of 10 free");
        let large = tokio::spawn({
            let budget = budget.clone();
            async move { budget.reserve(8).await }
        });
        tokio::task::yield_now().await;
        // 4 bytes are free: a small request is not queued behind the waiting 8.
        let small = budget
            .try_reserve(4)
            .expect("a request that fits goes ahead");
        assert!(budget.try_reserve(1).is_none());
        drop(first);
        drop(small);
        let large = tokio::time::timeout(Duration::from_secs(5), large)
            .await
            .expect("the waiter gets its bytes once they are free")
            .unwrap();
        assert!(budget.try_reserve(3).is_none());
        assert!(budget.try_reserve(2).is_some());
        drop(large);
        assert!(budget.try_reserve(100).is_some(), "larger than all: alone");
    }

    #[tokio::test]
    async fn bodies_are_read_within_the_size_limit_and_rate() {
        let reader = BodyReader {
            max_body_bytes: 8,
            budget: BodyBudget::new(16),
            min_bytes_per_second: 1000,
            grace: Duration::from_millis(100),
            metrics: Arc::new(Metrics::new()),
        };
        assert_eq!(
            reader.read(Body::from("12345678"), Some(8)).await,
            Ok(Bytes::from("12345678"))
        );
        assert_eq!(
            reader.read(Body::from("123456789"), None).await,
            Err(BodyError::TooLarge)
        );
        // Fewer bytes than announced are what arrived; more than announced is broken.
        assert_eq!(
            reader.read(Body::from("1234"), Some(8)).await,
            Ok(Bytes::from("1234"))
        );
        // A body that never comes is cut off after the grace, not at the request deadline.
        let (_tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let stalled = Body::from_stream(tokio_stream(rx));
        let started = std::time::Instant::now();
        assert_eq!(reader.read(stalled, Some(8)).await, Err(BodyError::TooSlow));
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn large_bodies_are_read_into_a_mapping_of_their_own() {
        let reader = BodyReader {
            max_body_bytes: 4 * MAPPED_BODY_BYTES,
            budget: BodyBudget::new(16 * MAPPED_BODY_BYTES),
            min_bytes_per_second: 0,
            grace: Duration::ZERO,
            metrics: Arc::new(Metrics::new()),
        };
        let n = 2 * MAPPED_BODY_BYTES + 123;
        let data: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
        // Sent in pieces, as a connection delivers it.
        let chunks: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(16 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let body = Body::from_stream(futures_util::stream::iter(chunks));
        let read = reader.read(body, Some(n)).await.expect("read");
        assert_eq!(read.len(), n);
        assert!(read[..] == data[..], "the bytes differ");
        assert!(matches!(BodyBuf::new(Some(n)), BodyBuf::Mapped { .. }));
        assert!(matches!(BodyBuf::new(Some(1000)), BodyBuf::Heap(_)));
        // A mapped body takes no more than announced.
        let mut buf = BodyBuf::new(Some(MAPPED_BODY_BYTES));
        buf.extend(&vec![1; MAPPED_BODY_BYTES]).expect("fits");
        assert_eq!(buf.extend(b"x"), Err(BodyError::Broken));
    }

    fn tokio_stream(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
