//! Caps that keep idle, slow or too many clients from starving the API server's requests: a
//! connection cap on the webhook listener and a cap on requests in progress.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

use crate::metrics::Metrics;

/// Accepts a TCP connection only while fewer than the cap are open; over the cap the
/// connection is closed at once (before the TLS handshake) and counted. Sets TCP_NODELAY.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    idle: Duration,
    metrics: Arc<Metrics>,
}

impl ConnectionLimit {
    /// A cap of `max` open connections, each closed after `idle` without a byte from the
    /// client (keep `idle` above the request deadline).
    pub fn new(max: usize, idle: Duration, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            idle,
            metrics,
        }
    }
}

/// A TCP stream that holds its slot under the connection cap until it is dropped, and ends
/// when the client has sent nothing for the idle timeout (HTTP/2 connections have no header
/// timeout between requests, so without this an idle one would keep its slot for ever).
pub struct LimitedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
    idle: Duration,
    idle_deadline: Pin<Box<Sleep>>,
}

impl<S: Send + 'static> Accept<TcpStream, S> for ConnectionLimit {
    type Stream = LimitedStream;
    type Service = S;
    type Future = std::future::Ready<io::Result<(LimitedStream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let result = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let _ = stream.set_nodelay(true);
                Ok((
                    LimitedStream {
                        inner: stream,
                        _permit: permit,
                        idle: self.idle,
                        idle_deadline: Box::pin(tokio::time::sleep(self.idle)),
                    },
                    service,
                ))
            }
            Err(_) => {
                self.metrics.reject("connection_limit");
                Err(io::Error::other("connection limit reached"))
            }
        };
        std::future::ready(result)
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let next = Instant::now() + self.idle;
                    self.idle_deadline.as_mut().reset(next);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match self.idle_deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle too long",
                ))),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
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

/// axum middleware applying a [`RequestLimit`].
pub async fn limit_requests(
    State(limit): State<RequestLimit>,
    req: Request,
    next: Next,
) -> Response {
    match limit.permits.clone().try_acquire_owned() {
        Ok(_permit) => next.run(req).await,
        Err(_) => {
            limit.metrics.reject("request_limit");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(serde_json::json!({"error": "too many requests in progress"})),
            )
                .into_response()
        }
    }
}

/// A budget of request-body bytes being read or worked on at once. Parsing a review takes a
/// multiple of its size in memory, so the sum of bodies in progress, not only each body, is
/// what bounds memory. A request reserves its `Content-Length` (or the body limit when the
/// length is not announced) before its body is read, and waits, within its deadline, while
/// the budget is spent.
#[derive(Clone)]
pub struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: usize,
    max_body_kib: usize,
}

impl BodyBudget {
    /// `total` bytes of bodies at once; `max_body` is what a request without a length reserves.
    pub fn new(total: usize, max_body: usize) -> Self {
        let total_kib = total.div_ceil(1024).clamp(1, Semaphore::MAX_PERMITS);
        Self {
            kib: Arc::new(Semaphore::new(total_kib)),
            total_kib,
            max_body_kib: max_body.div_ceil(1024).max(1),
        }
    }

    fn want_kib(&self, content_length: Option<u64>) -> u32 {
        let kib = match content_length {
            Some(n) => usize::try_from(n.div_ceil(1024)).unwrap_or(usize::MAX),
            None => self.max_body_kib,
        };
        // A body larger than the whole budget still gets in (alone); the body limit refuses
        // it if it is too large.
        let kib = kib.clamp(1, self.total_kib);
        u32::try_from(kib).unwrap_or(u32::MAX)
    }
}

/// axum middleware applying a [`BodyBudget`].
pub async fn reserve_body(State(budget): State<BodyBudget>, req: Request, next: Next) -> Response {
    let length = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let want = budget.want_kib(length);
    match budget.kib.clone().acquire_many_owned(want).await {
        Ok(_permit) => next.run(req).await,
        // The semaphore is never closed; answer as overloaded if it ever is.
        Err(_) => StatusCode::SERVICE_UNAVAILABLE.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_budget_reserves_the_announced_length_within_bounds() {
        let b = BodyBudget::new(16 * 1024 * 1024, 7 * 1024 * 1024);
        assert_eq!(b.want_kib(Some(0)), 1);
        assert_eq!(b.want_kib(Some(5000)), 5);
        assert_eq!(b.want_kib(None), 7 * 1024);
        assert_eq!(b.want_kib(Some(u64::MAX)), 16 * 1024);
    }
}
