//! Serving one listener: the accept loop, the caps on connections (in total and per client
//! address), TLS handshakes (with a timeout and a per-address cap on those in progress), and
//! per-connection timers that count *requests*, not bytes:
//!
//! - idle: a connection that has carried no request for `idle_timeout` is closed (HTTP/2 with a
//!   graceful GOAWAY, HTTP/1.1 only while no request is on it). PINGs and other frames do not
//!   keep a connection open. The default outlasts the API server's 90 s idle keep-alive, so the
//!   client closes first and no POST can meet a connection Gatehouse just closed.
//! - header: once the first byte of an HTTP/1.1 request has arrived, its headers must follow
//!   within `header_read_timeout`. Between requests this timer does not run (hyper's own
//!   header timeout also runs on idle keep-alive connections, which is why it is off here).
//!
//! axum-server's accept loop has no per-connection hook for these timers, so this module runs
//! hyper-util's connection builder itself.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Version};
use axum_server::tls_rustls::RustlsConfig;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::ServiceExt as _;

use crate::metrics::Metrics;

/// The limits of one listener.
#[derive(Debug, Clone)]
pub struct ListenerLimits {
    /// What the listener serves, for logs (`webhook`, `health`, `token endpoint`).
    pub name: &'static str,
    /// Open connections.
    pub max_connections: usize,
    /// Open connections from one client address.
    pub max_connections_per_source: usize,
    /// TLS handshakes in progress from one client address; more wait their turn.
    pub max_handshakes_per_source: usize,
    /// Time for the TLS handshake (including the wait for a turn).
    pub handshake_timeout: Duration,
    /// Time for an HTTP/1.1 request's headers once their first byte has arrived.
    pub header_read_timeout: Duration,
    /// A connection without a request for this long is closed.
    pub idle_timeout: Duration,
    /// Concurrent streams on one HTTP/2 connection.
    pub max_streams_per_connection: u32,
}

impl ListenerLimits {
    /// The webhook listener's limits.
    pub fn webhook(l: &crate::config::Limits) -> Self {
        Self {
            name: "webhook",
            max_connections: l.max_connections,
            max_connections_per_source: l.max_connections_per_source,
            max_handshakes_per_source: l.max_handshakes_per_source,
            handshake_timeout: l.tls_handshake_timeout,
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            max_streams_per_connection: u32::try_from(
                l.max_streams_per_connection
                    .min(l.max_concurrent_requests / 2)
                    .max(1),
            )
            .unwrap_or(u32::MAX),
        }
    }

    /// The health and metrics listener's limits.
    pub fn health(l: &crate::config::Limits) -> Self {
        Self {
            name: "health",
            max_connections: l.health_max_connections,
            max_connections_per_source: l.health_max_connections_per_source,
            max_streams_per_connection: 8,
            ..Self::webhook(l)
        }
    }

    /// The token endpoint's limits.
    pub fn token_admin(l: &crate::config::Limits) -> Self {
        Self {
            name: "token endpoint",
            max_connections: l.token_admin_max_connections,
            max_connections_per_source: l.token_admin_max_connections_per_source,
            max_streams_per_connection: 8,
            ..Self::webhook(l)
        }
    }
}

/// What a listener serves: a service that answers every request (a [`axum::Router`], or the
/// webhook's own [`crate::api::Webhook`]).
pub trait App:
    tower::Service<
        Request<Body>,
        Response = axum::response::Response,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl App for axum::Router {}

/// Serves `app` on `listener` (over TLS when `tls` is set) until `shutdown` completes; then
/// stops accepting, closes idle connections (GOAWAY on HTTP/2), lets requests in progress
/// finish for up to `grace` and drops what is left.
pub async fn serve<A: App>(
    listener: TcpListener,
    tls: Option<RustlsConfig>,
    app: A,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) -> io::Result<()> {
    let ctx = Arc::new(ConnCtx::new(tls, app, limits, metrics));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut last_accept_warning: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = &mut shutdown => break,
        };
        while tasks.try_join_next().is_some() {}
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) if is_resource_error(&e) => {
                // Out of descriptors or memory: wait a little instead of spinning, and say so
                // (at most once a second).
                if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(listener = ctx.limits.name, error = %e, "cannot accept a connection");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            Err(e) => {
                // A connection that went away before it was accepted, and the like.
                tracing::debug!(listener = ctx.limits.name, error = %e, "accept failed");
                continue;
            }
        };
        let Some(slot) = ctx.admit(peer.ip()) else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        tasks.spawn(serve_connection(
            ctx.clone(),
            tcp,
            peer,
            slot,
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained =
        tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        tracing::info!(
            listener = ctx.limits.name,
            left = tasks.len(),
            "shutdown grace over: dropping the connections still open"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    Ok(())
}

/// Out of descriptors (EMFILE, ENFILE) or memory (ENOBUFS, ENOMEM): accepting again at once
/// would fail the same way.
fn is_resource_error(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(12 | 23 | 24 | 105))
}

/// What every connection of one listener shares.
struct ConnCtx<A> {
    tls: Option<RustlsConfig>,
    app: A,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
    slots: Arc<Semaphore>,
    sources: Arc<Sources>,
    builder: auto::Builder<TokioExecutor>,
    h2_builder: auto::Builder<TokioExecutor>,
}

impl<A> ConnCtx<A> {
    fn new(
        tls: Option<RustlsConfig>,
        app: A,
        limits: ListenerLimits,
        metrics: Arc<Metrics>,
    ) -> Self {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            // Our own header timer starts with a request's first byte (see the module docs).
            .header_read_timeout(None)
            .keep_alive(true);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(Some(limits.max_streams_per_connection.max(1)))
            // Detects dead peers; a PONG does not count as activity for the idle timer.
            .keep_alive_interval(Some(Duration::from_secs(30)))
            .keep_alive_timeout(Duration::from_secs(10));
        let h2_builder = builder.clone().http2_only();
        Self {
            tls,
            app,
            slots: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            sources: Arc::new(Sources::default()),
            limits,
            metrics,
            builder,
            h2_builder,
        }
    }

    /// A slot for a new connection from `ip`, or `None` (counted, and the connection closed)
    /// when the listener or that address is at its cap.
    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let Ok(permit) = self.slots.clone().try_acquire_owned() else {
            self.metrics.reject("connection_limit");
            tracing::debug!(listener = self.limits.name, peer = %ip, "connection refused: the listener is at limits.max_connections");
            return None;
        };
        let ip = ip.to_canonical();
        let handshakes = {
            let mut map = self.sources.map.lock().unwrap_or_else(|e| e.into_inner());
            let entry = map.entry(ip).or_insert_with(|| Source {
                connections: 0,
                handshakes: Arc::new(Semaphore::new(self.limits.max_handshakes_per_source.max(1))),
            });
            if entry.connections >= self.limits.max_connections_per_source {
                drop(map);
                self.metrics.reject("source_connection_limit");
                tracing::debug!(listener = self.limits.name, peer = %ip, "connection refused: this address is at its per-source connection cap");
                return None;
            }
            entry.connections += 1;
            entry.handshakes.clone()
        };
        Some(Slot {
            _permit: permit,
            sources: self.sources.clone(),
            ip,
            handshakes,
        })
    }
}

/// Connections and handshakes in progress, per client address.
#[derive(Default)]
struct Sources {
    map: Mutex<HashMap<IpAddr, Source>>,
}

struct Source {
    connections: usize,
    handshakes: Arc<Semaphore>,
}

/// A connection's place under the caps; given back when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    sources: Arc<Sources>,
    ip: IpAddr,
    handshakes: Arc<Semaphore>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self.sources.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = map.get_mut(&self.ip) {
            entry.connections = entry.connections.saturating_sub(1);
            if entry.connections == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// What a connection's timers need to know, shared by its stream, its service and its task.
///
/// Nothing here wakes the connection's task: its one timer is re-armed lazily (see [`drive`]),
/// so a request costs no timer registration and no extra poll of the connection.
struct ConnState {
    inner: Mutex<Activity>,
}

struct Activity {
    /// Requests being answered.
    in_flight: usize,
    /// Requests seen.
    requests: u64,
    /// When the last request ended (or the connection began).
    idle_since: Instant,
    /// When the first byte of a request whose headers are not complete yet arrived.
    head_started: Option<Instant>,
    /// HTTP/2: no header timer (a PING's bytes are not a request's).
    h2: bool,
}

impl ConnState {
    fn new(h2: bool) -> Arc<Self> {
        Arc::new(Self {
            inner: Mutex::new(Activity {
                in_flight: 0,
                requests: 0,
                idle_since: Instant::now(),
                head_started: None,
                h2,
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bytes arrived: on an idle HTTP/1.1 connection they start a request's header timer.
    fn bytes_read(&self) {
        let mut a = self.lock();
        if !a.h2 && a.in_flight == 0 && a.head_started.is_none() {
            a.head_started = Some(Instant::now());
        }
    }

    fn request_started(self: &Arc<Self>, version: Version) -> RequestGuard {
        let mut a = self.lock();
        a.in_flight += 1;
        a.requests += 1;
        a.head_started = None;
        if version == Version::HTTP_2 {
            a.h2 = true;
        }
        drop(a);
        RequestGuard(self.clone())
    }
}

/// A request on the connection; when its answer has been sent (or given up), the connection
/// is idle again from that moment.
struct RequestGuard(Arc<ConnState>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let mut a = self.0.lock();
        a.in_flight = a.in_flight.saturating_sub(1);
        if a.in_flight == 0 {
            a.idle_since = Instant::now();
        }
    }
}

/// Why Gatehouse closes a connection on its own.
#[derive(Debug, Clone, Copy)]
enum Close {
    Idle,
    Header,
}

/// After an idle close (GOAWAY), the time the client has to close its side while no request
/// is in progress.
const IDLE_DRAIN: Duration = Duration::from_secs(2);

/// While draining, how often a connection with a request still in progress is looked at.
const DRAIN_POLL: Duration = Duration::from_millis(50);

/// The next deadline of a connection's timers (none while a request is in progress: the
/// request deadline bounds it).
fn next_deadline(state: &ConnState, limits: &ListenerLimits) -> Option<(Instant, Close)> {
    let a = state.lock();
    if a.in_flight > 0 {
        return None;
    }
    match a.head_started {
        Some(t) if !a.h2 => Some((t + limits.header_read_timeout, Close::Header)),
        _ => Some((a.idle_since + limits.idle_timeout, Close::Idle)),
    }
}

async fn serve_connection<A: App>(
    ctx: Arc<ConnCtx<A>>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) {
    match ctx.tls.clone() {
        None => {
            let state = ConnState::new(false);
            drive(
                &ctx,
                TrackedIo::new(tcp, state.clone()),
                peer,
                state,
                false,
                &mut stop,
            )
            .await
        }
        Some(tls) => {
            let handshake = async {
                // A turn among this address's handshakes, then the handshake itself, both
                // within the handshake timeout.
                let _turn = slot.handshakes.clone().acquire_owned().await;
                tokio_rustls::TlsAcceptor::from(tls.get_inner())
                    .accept(tcp)
                    .await
            };
            let stream = tokio::select! {
                r = tokio::time::timeout(ctx.limits.handshake_timeout, handshake) => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::debug!(listener = ctx.limits.name, %peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(listener = ctx.limits.name, %peer, reason = "tls_handshake_timeout", "closing a connection: the TLS handshake did not finish in time");
                        return;
                    }
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let state = ConnState::new(h2);
            drive(
                &ctx,
                TrackedIo::new(stream, state.clone()),
                peer,
                state,
                h2,
                &mut stop,
            )
            .await
        }
    }
    drop(slot);
}

/// Serves HTTP on one connection with its idle and header timers.
async fn drive<A: App, I>(
    ctx: &ConnCtx<A>,
    io: TrackedIo<I>,
    peer: SocketAddr,
    state: Arc<ConnState>,
    h2: bool,
    stop: &mut watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let app = ctx.app.clone();
    let svc_state = state.clone();
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        let guard = svc_state.request_started(req.version());
        req.extensions_mut().insert(ConnectInfo(peer));
        let app = app.clone();
        async move {
            let resp = match app.oneshot(req.map(Body::new)).await {
                Ok(r) => r,
                Err(never) => match never {},
            };
            Ok::<_, Infallible>(resp.map(|body| GuardedBody {
                inner: body,
                _guard: guard,
            }))
        }
    });
    let builder = if h2 { &ctx.h2_builder } else { &ctx.builder };
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    // One timer, re-armed only when it fires: requests neither wake this task nor touch the
    // timer. It looks at the connection at least once a `period`, so a request's first bytes
    // (which start its header timer without a wake-up) are never missed: checked at `c`, the
    // timer fires by `c + period`, before a header deadline set after `c` can pass, and is
    // then set to that deadline exactly.
    let period = check_period(&ctx.limits);
    let timer = tokio::time::sleep(period);
    let mut timer = std::pin::pin!(timer);
    // Set once Gatehouse has begun to close the connection: on shutdown (the caller's grace
    // bounds it) or when idle (bounded here: the client has this long to go after GOAWAY).
    let mut closing = false;
    let mut drain_until: Option<Instant> = None;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(listener = ctx.limits.name, %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = timer.as_mut() => {
                let now = Instant::now();
                if let Some(at) = drain_until {
                    // A request that began just before the GOAWAY is answered first.
                    if state.lock().in_flight > 0 {
                        timer.as_mut().reset(now + DRAIN_POLL);
                    } else if now >= at {
                        return;
                    } else {
                        timer.as_mut().reset(at);
                    }
                    continue;
                }
                let Some((at, why)) = next_deadline(&state, &ctx.limits).filter(|_| !closing) else {
                    // A request in progress (its deadline bounds it), or shutting down (the
                    // caller's grace bounds it).
                    timer.as_mut().reset(now + period);
                    continue;
                };
                if now < at {
                    timer.as_mut().reset(at.min(now + period));
                    continue;
                }
                let requests = state.lock().requests;
                match why {
                    Close::Idle => {
                        tracing::debug!(
                            listener = ctx.limits.name, %peer, requests,
                            reason = "idle_timeout", idle = ?ctx.limits.idle_timeout,
                            "closing an idle connection (HTTP/2: GOAWAY)"
                        );
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                        drain_until = Some(now + IDLE_DRAIN);
                        timer.as_mut().reset(now + IDLE_DRAIN);
                    }
                    Close::Header => {
                        tracing::debug!(
                            listener = ctx.limits.name, %peer, requests,
                            reason = "header_read_timeout", timeout = ?ctx.limits.header_read_timeout,
                            "closing a connection: a request's headers did not arrive in time"
                        );
                        return;
                    }
                }
            }
            _ = stop.wait_for(|s| *s), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
        }
    }
}

/// How long a connection's timer may sleep before it looks at the connection again: the
/// shorter of its timeouts (at least a millisecond).
fn check_period(limits: &ListenerLimits) -> Duration {
    limits
        .header_read_timeout
        .min(limits.idle_timeout)
        .max(Duration::from_millis(1))
}

/// The response body, holding the request's place on its connection until it is sent.
struct GuardedBody {
    inner: Body,
    _guard: RequestGuard,
}

impl HttpBody for GuardedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A connection's byte stream; reports arriving bytes to the header timer.
struct TrackedIo<I> {
    inner: I,
    state: Arc<ConnState>,
}

impl<I> TrackedIo<I> {
    fn new(inner: I, state: Arc<ConnState>) -> Self {
        Self { inner, state }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.state.bytes_read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for TrackedIo<I> {
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
