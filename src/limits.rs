//! Caps that keep idle, slow or too many clients from starving the API server's requests: a
//! connection cap on the webhook listener and a cap on requests in progress.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::Metrics;

/// Accepts a TCP connection only while fewer than the cap are open; over the cap the
/// connection is closed at once (before the TLS handshake) and counted. Sets TCP_NODELAY.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl ConnectionLimit {
    /// A cap of `max` open connections.
    pub fn new(max: usize, metrics: Arc<Metrics>) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            metrics,
        }
    }
}

/// A TCP stream that holds its slot under the connection cap until it is dropped.
pub struct LimitedStream {
    inner: TcpStream,
    _permit: OwnedSemaphorePermit,
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
        Pin::new(&mut self.inner).poll_read(cx, buf)
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
