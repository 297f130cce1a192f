//! Slow, idle and hostile clients against the real server over real TLS on 127.0.0.1, each
//! while an API-server-like load runs: HTTP/1.1 keep-alive connections opened before the attack
//! and reused (as the API server's pool does, never retrying a POST after EOF) plus new
//! connections. The legitimate load comes from 127.0.0.1, attackers from other loopback
//! addresses (127.0.0.2 …), so per-source caps can tell them apart.
//!
//! Each attack test asserts outcomes first (0 errors for the legitimate load, what the attacker
//! got, the counters) and then that the load's p99 stays within 2× its own baseline measured in
//! the same test, plus 300 ms of slack: the harm an attack would do is a review waiting
//! seconds (a body grace, a handshake timeout, the request deadline), while the machine running
//! the tests is shared and its scheduling noise alone reaches tens of milliseconds. The tests
//! of this file take turns (one lock) so they do not load each other's measurements.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{TestServer, example_review};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::TlsConnector;

/// The tests of this file run one at a time: the attack tests compare latencies with a
/// baseline, which another test's load on the same two cores would skew.
static ONE_ATTACK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LEGIT: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);

/// A TCP connection to `addr` from the loopback address `from`.
async fn tcp_from(from: Ipv4Addr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(from), 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn connector(ca_pem: &str, alpn: &[u8]) -> TlsConnector {
    let cfg = common::client_tls(
        ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[alpn],
    );
    TlsConnector::from(Arc::new(cfg))
}

fn localhost() -> ServerName<'static> {
    ServerName::try_from("localhost").expect("server name")
}

// ---------------------------------------------------------------------------------------------
// The API server's client: HTTP/1.1 only, one connection per request in flight, up to
// `max_idle` idle connections kept for `idle_limit`, no retry after EOF.

struct ApiClient {
    addr: SocketAddr,
    connector: TlsConnector,
    idle: Mutex<Vec<(http1::SendRequest<Full<Bytes>>, Instant)>>,
    idle_limit: Duration,
    max_idle: usize,
    dialed: AtomicUsize,
    path: String,
}

impl ApiClient {
    fn new(s: &TestServer, idle_limit: Duration, max_idle: usize) -> Arc<Self> {
        Arc::new(Self {
            addr: s.addr,
            connector: connector(&s.ca_pem, b"http/1.1"),
            idle: Mutex::new(Vec::new()),
            idle_limit,
            max_idle,
            dialed: AtomicUsize::new(0),
            path: "/validate?timeout=10s".into(),
        })
    }

    async fn dial(&self) -> Result<http1::SendRequest<Full<Bytes>>, String> {
        let tcp = tcp_from(LEGIT, self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = self
            .connector
            .connect(localhost(), tcp)
            .await
            .map_err(|e| format!("TLS: {e}"))?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        self.dialed.fetch_add(1, Ordering::Relaxed);
        Ok(sender)
    }

    /// The most recently used idle connection that is still open and not past the idle limit
    /// (as Go's transport picks one), else a new one.
    async fn checkout(&self) -> Result<http1::SendRequest<Full<Bytes>>, String> {
        loop {
            let next = self.idle.lock().unwrap().pop();
            match next {
                Some((sender, since)) => {
                    if since.elapsed() < self.idle_limit && !sender.is_closed() {
                        return Ok(sender);
                    }
                }
                None => return self.dial().await,
            }
        }
    }

    /// POSTs `body`; any failure is returned, never retried.
    async fn post(&self, body: Bytes) -> Result<(u16, Bytes), String> {
        let mut sender = self.checkout().await?;
        sender
            .ready()
            .await
            .map_err(|e| format!("connection not ready: {e}"))?;
        let req = hyper::Request::post(&self.path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(body))
            .expect("request");
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        let mut idle = self.idle.lock().unwrap();
        if idle.len() < self.max_idle {
            idle.push((sender, Instant::now()));
        }
        Ok((status, bytes))
    }
}

/// What a run of the legitimate load saw.
#[derive(Debug)]
struct Load {
    answered: usize,
    errors: Vec<String>,
    latencies: Vec<Duration>,
}

impl Load {
    fn p99(&self) -> Duration {
        let mut l = self.latencies.clone();
        l.sort();
        let i = (l.len() * 99).div_ceil(100).saturating_sub(1);
        l.get(i).copied().unwrap_or_default()
    }
}

/// `requests` reviews, `pooled` at a time over the pooled client and `fresh` at a time over
/// new connections; every answer must be a 200 that allows the review.
async fn load(pool: &Arc<ApiClient>, fresh: &Arc<ApiClient>, requests: usize) -> Load {
    let body = Bytes::from(example_review("create-3-replicas", |_| {}));
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for (client, workers) in [(pool, 10), (fresh, 2)] {
        for _ in 0..workers {
            let (client, body, next) = (client.clone(), body.clone(), next.clone());
            tasks.spawn(async move {
                let mut seen = Vec::new();
                while next.fetch_add(1, Ordering::Relaxed) < requests {
                    let started = Instant::now();
                    let result = client.post(body.clone()).await;
                    let took = started.elapsed();
                    seen.push(match result {
                        Ok((200, b)) => {
                            let v: serde_json::Value =
                                serde_json::from_slice(&b).unwrap_or_default();
                            if v["response"]["allowed"] == true {
                                Ok(took)
                            } else {
                                Err(format!("200 without allowed: {v}"))
                            }
                        }
                        Ok((status, b)) => {
                            Err(format!("{status}: {}", String::from_utf8_lossy(&b)))
                        }
                        Err(e) => Err(e),
                    });
                }
                seen
            });
        }
    }
    let mut out = Load {
        answered: 0,
        errors: Vec::new(),
        latencies: Vec::new(),
    };
    while let Some(r) = tasks.join_next().await {
        for one in r.expect("load worker") {
            match one {
                Ok(t) => {
                    out.answered += 1;
                    out.latencies.push(t);
                }
                Err(e) => out.errors.push(e),
            }
        }
    }
    out
}

/// A server, its pooled and fresh API clients (the pool already holds open connections), and
/// the baseline load.
async fn setup(
    tweak: impl FnOnce(&mut gatehouse::Config),
) -> (TestServer, Arc<ApiClient>, Arc<ApiClient>, Load) {
    let s = TestServer::start_with(None, tweak).await;
    let pool = ApiClient::new(&s, Duration::from_secs(90), 25);
    let fresh = ApiClient::new(&s, Duration::from_secs(90), 0);
    let base = load(&pool, &fresh, 300).await;
    assert!(base.errors.is_empty(), "baseline errors: {:?}", base.errors);
    assert_eq!(base.answered, 300);
    assert!(
        pool.idle.lock().unwrap().len() >= 8,
        "the pool holds open connections"
    );
    (s, pool, fresh, base)
}

/// The load under attack: every review answered and allowed, over connections opened before
/// the attack and new ones, and p99 within 2× the baseline (plus scheduler slack).
async fn assert_unharmed(name: &str, pool: &Arc<ApiClient>, fresh: &Arc<ApiClient>, base: &Load) {
    let dialed_before = pool.dialed.load(Ordering::Relaxed);
    let fresh_before = fresh.dialed.load(Ordering::Relaxed);
    let under = load(pool, fresh, 300).await;
    println!(
        "{name}: baseline p99 {:?}, under attack p99 {:?} ({} answered, {} errors)",
        base.p99(),
        under.p99(),
        under.answered,
        under.errors.len()
    );
    assert!(
        under.errors.is_empty(),
        "{name}: errors under attack: {:?}",
        &under.errors[..under.errors.len().min(5)]
    );
    assert_eq!(under.answered, 300);
    assert!(
        pool.dialed.load(Ordering::Relaxed) - dialed_before < 10,
        "{name}: the pooled connections opened before the attack were reused"
    );
    assert!(
        fresh.dialed.load(Ordering::Relaxed) - fresh_before > 10,
        "{name}: new connections too"
    );
    // The harm these attacks would do is measured in seconds: a review queued behind an
    // attacker waits for the body-rate grace (1 s), the handshake timeout or the request
    // deadline. The slack above twice the baseline is kept well below that but wide enough for
    // a shared two-core machine's scheduling noise (a CI run saw 100 ms against a 27 ms
    // baseline with nothing wrong), so the check fails on harm, not on a busy machine.
    let bound = base.p99() * 2 + Duration::from_millis(300);
    assert!(
        under.p99() <= bound,
        "{name}: p99 under attack {:?} above 2x the baseline {:?} (+300 ms)",
        under.p99(),
        base.p99()
    );
}

/// `gatehouse_rejected_requests_total{reason}` from the in-process metrics.
fn rejected(s: &TestServer, reason: &str) -> u64 {
    let text = s.state.metrics.encode();
    let key = format!("gatehouse_rejected_requests_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

/// Tasks of an attack, stopped together.
struct Attack {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Attack {
    fn new() -> Self {
        Self {
            stop: tokio::sync::watch::channel(false).0,
            tasks: tokio::task::JoinSet::new(),
        }
    }

    fn spawn<F: std::future::Future<Output = ()> + Send + 'static>(
        &mut self,
        f: impl FnOnce(tokio::sync::watch::Receiver<bool>) -> F,
    ) {
        let rx = self.stop.subscribe();
        self.tasks.spawn(f(rx));
    }

    async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        self.tasks.abort_all();
    }
}

async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

// ---------------------------------------------------------------------------------------------
// Attack 1: bodies that announce 7 MB (or no length) and trickle 1 byte a second.

#[tokio::test]
async fn trickling_bodies_are_cut_off_and_do_not_delay_the_api_servers_reviews() {
    let _turn = ONE_ATTACK.lock().await;
    let (s, pool, fresh, base) = setup(|_| {}).await;
    let cut_off = Arc::new(AtomicUsize::new(0));
    let mut attack = Attack::new();
    for i in 0..6 {
        let (addr, tls, cut_off) = (s.addr, connector(&s.ca_pem, b"http/1.1"), cut_off.clone());
        attack.spawn(move |mut stop| async move {
            loop {
                let Ok(tcp) = tcp_from(Ipv4Addr::new(127, 0, 0, 2), addr).await else { return };
                let Ok(mut conn) = tls.connect(localhost(), tcp).await else { return };
                let head = if i < 4 {
                    "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 7000000\r\n\r\n"
                } else {
                    "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                };
                if conn.write_all(head.as_bytes()).await.is_err() {
                    continue;
                }
                let (mut rd, mut wr) = tokio::io::split(conn);
                let chunked = i >= 4;
                let trickle = async move {
                    loop {
                        let byte: &[u8] = if chunked { b"1\r\n{\r\n" } else { b"{" };
                        if wr.write_all(byte).await.is_err() || wr.flush().await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                };
                let mut answer = Vec::new();
                tokio::select! {
                    () = trickle => {}
                    _ = tokio::io::AsyncReadExt::read_to_end(&mut rd, &mut answer) => {}
                    () = stopped(&mut stop) => return,
                }
                if answer.starts_with(b"HTTP/1.1 408") {
                    cut_off.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_unharmed("trickling bodies", &pool, &fresh, &base).await;
    // Give the attackers time to be cut off at least once each.
    let started = Instant::now();
    while cut_off.load(Ordering::Relaxed) < 6 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    attack.stop().await;
    assert!(
        cut_off.load(Ordering::Relaxed) >= 6,
        "each trickling body got a 408"
    );
    assert!(rejected(&s, "body_too_slow") >= 6);
    assert_eq!(
        rejected(&s, "timeout"),
        0,
        "none waited for the request deadline"
    );
    assert_eq!(rejected(&s, "request_limit"), 0);
}

// ---------------------------------------------------------------------------------------------
// Attack 2: one HTTP/2 connection opening 256 streams whose bodies never come.

#[tokio::test]
async fn one_http2_connection_cannot_take_every_request_slot() {
    let _turn = ONE_ATTACK.lock().await;
    let (s, pool, fresh, base) = setup(|c| c.limits.max_streams_per_connection = 32).await;
    let tcp = tcp_from(Ipv4Addr::new(127, 0, 0, 3), s.addr).await.unwrap();
    let tls = connector(&s.ca_pem, b"h2")
        .connect(localhost(), tcp)
        .await
        .unwrap();
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake::<_, http_body_util::StreamBody<
            futures_util::stream::Pending<Result<hyper::body::Frame<Bytes>, std::io::Error>>,
        >>(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    let statuses = Arc::new(Mutex::new(Vec::<u16>::new()));
    let mut attack = Attack::new();
    for _ in 0..256 {
        let (mut sender, statuses) = (sender.clone(), statuses.clone());
        attack.spawn(move |mut stop| async move {
            loop {
                let req = hyper::Request::post("https://localhost/validate")
                    .header("content-type", "application/json")
                    .header("content-length", "2000")
                    .body(http_body_util::StreamBody::new(
                        futures_util::stream::pending(),
                    ))
                    .unwrap();
                tokio::select! {
                    r = sender.send_request(req) => match r {
                        Ok(resp) => statuses.lock().unwrap().push(resp.status().as_u16()),
                        Err(_) => return,
                    },
                    () = stopped(&mut stop) => return,
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_unharmed("256 streams on one connection", &pool, &fresh, &base).await;
    // The stalled streams are cut off by the minimum body rate, long before their deadline.
    let started = Instant::now();
    while statuses.lock().unwrap().len() < 32 && started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    attack.stop().await;
    assert_eq!(
        rejected(&s, "request_limit"),
        0,
        "the legitimate load never met the request cap"
    );
    let statuses = statuses.lock().unwrap().clone();
    assert!(statuses.len() >= 32, "{statuses:?}");
    assert!(
        statuses.iter().all(|&s| s == 408),
        "stalled streams get 408: {statuses:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Attack 3: HTTP/2 connections that sent one request and then only PINGs.

#[tokio::test]
async fn pings_do_not_keep_idle_connections_and_a_source_cannot_take_the_connection_cap() {
    let _turn = ONE_ATTACK.lock().await;
    let (s, pool, fresh, base) = setup(|c| {
        c.limits.request_timeout = Duration::from_secs(1);
        c.limits.idle_timeout = Duration::from_secs(3);
        c.limits.max_connections = 200;
        c.limits.max_connections_per_source = 40;
    })
    .await;
    let attacker = Ipv4Addr::new(127, 0, 0, 4);
    let body = Bytes::from(example_review("create-3-replicas", |_| {}));
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..200 {
        let Ok(tcp) = tcp_from(attacker, s.addr).await else {
            refused += 1;
            continue;
        };
        let Ok(tls) = connector(&s.ca_pem, b"h2").connect(localhost(), tcp).await else {
            refused += 1;
            continue;
        };
        let (mut sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_millis(300))
            .keep_alive_while_idle(true)
            .handshake::<_, Full<Bytes>>(TokioIo::new(tls))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let req = hyper::Request::post("https://localhost/validate")
            .body(Full::new(body.clone()))
            .unwrap();
        match sender.send_request(req).await {
            Ok(r) => assert_eq!(r.status(), 200),
            Err(_) => {
                refused += 1;
                continue;
            }
        }
        held.push((sender, driver));
    }
    assert_eq!(
        held.len(),
        40,
        "one source gets its per-source cap, no more"
    );
    assert_eq!(refused, 160);
    assert!(rejected(&s, "source_connection_limit") >= 160);

    // While the attacker's connections sit idle, sending only PINGs, the API server's
    // reviews (pooled and new connections) go through.
    assert_unharmed(
        "idle HTTP/2 connections sending PINGs",
        &pool,
        &fresh,
        &base,
    )
    .await;

    // PINGs are not requests: every attacker connection is closed (GOAWAY) after the idle
    // timeout, although its PINGs never stopped.
    let started = Instant::now();
    for (_, driver) in held {
        let left = Duration::from_secs(15).saturating_sub(started.elapsed());
        tokio::time::timeout(left, driver)
            .await
            .expect("the idle connection was closed despite its PINGs")
            .expect("driver")
            .expect("closed gracefully (GOAWAY), not reset");
    }
}

// ---------------------------------------------------------------------------------------------
// Attack 4: sockets that never finish a ClientHello, reconnecting as soon as they are closed.

// Two workers: the 300 attacker tasks live in this process, and on a single-threaded runtime
// they would queue the server's own tasks behind theirs, which no real attacker can do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_handshakes_from_one_source_leave_room_for_everyone_else() {
    let _turn = ONE_ATTACK.lock().await;
    raise_own_open_file_limit();
    let (s, pool, fresh, base) = setup(|c| {
        c.limits.tls_handshake_timeout = Duration::from_secs(1);
        c.limits.max_connections = 400;
        c.limits.max_connections_per_source = 100;
    })
    .await;
    let mut attack = Attack::new();
    let opened = Arc::new(AtomicUsize::new(0));
    for _ in 0..300 {
        let (addr, opened) = (s.addr, opened.clone());
        attack.spawn(move |mut stop| async move {
            loop {
                let Ok(mut tcp) = tcp_from(Ipv4Addr::new(127, 0, 0, 5), addr).await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                opened.fetch_add(1, Ordering::Relaxed);
                // Half a TLS record header, then nothing until the server closes.
                let _ = tcp.write_all(&[0x16, 0x03]).await;
                let mut sink = Vec::new();
                tokio::select! {
                    _ = tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut sink) => {}
                    () = stopped(&mut stop) => return,
                }
                // Reconnect soon, as a half-open client does, but without a busy loop: the
                // attacker shares this test's two cores with the server and the load, and a
                // loop that spins on refused connections measures the test machine, not
                // whether the server stays fair. 200 refused sockets still knock 2000 times a
                // second.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_unharmed("half-open handshakes", &pool, &fresh, &base).await;
    attack.stop().await;
    assert!(opened.load(Ordering::Relaxed) >= 300);
    assert!(
        rejected(&s, "source_connection_limit") > 0,
        "the attacker met its per-source cap"
    );
    assert_eq!(
        rejected(&s, "connection_limit"),
        0,
        "the listener's cap was never reached"
    );
}

fn raise_own_open_file_limit() {
    let _ = gatehouse::rlimit::raise_nofile();
}

// ---------------------------------------------------------------------------------------------
// The idle-close race: a client that keeps idle connections for less than the server's idle
// timeout (as the API server's 90 s against the 120 s default) and never retries never meets
// a connection Gatehouse closed, at any interval between requests.

/// Log lines captured from this thread's tracing output.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn requests_at_any_interval_never_meet_a_connection_closed_by_gatehouse() {
    let _turn = ONE_ATTACK.lock().await;
    // One thread: the server's tasks log to the subscriber set here.
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("gatehouse=debug"))
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Every server timeout scaled down 240×: header 100 ms, deadline 200 ms, idle 500 ms; the
    // client keeps idle connections for 400 ms (the API server: 90 s against 120 s).
    let s = TestServer::start_with(None, |c| {
        c.limits.header_read_timeout = Duration::from_millis(100);
        c.limits.request_timeout = Duration::from_millis(200);
        c.limits.idle_timeout = Duration::from_millis(500);
    })
    .await;
    let client = ApiClient::new(&s, Duration::from_millis(400), 25);
    // Intervals straddling every timeout, client and server.
    const GAPS_MS: [u64; 14] = [
        10, 90, 100, 110, 190, 200, 210, 390, 400, 410, 490, 500, 510, 600,
    ];
    const SENDERS: usize = 4;
    const TRIES: usize = 70;
    let body = Bytes::from(example_review("create-3-replicas", |_| {}));
    let mut senders = tokio::task::JoinSet::new();
    for k in 0..SENDERS {
        let (client, body) = (client.clone(), body.clone());
        senders.spawn(async move {
            let mut failures = Vec::new();
            for i in 0..TRIES {
                let gap = GAPS_MS[(i * 5 + k * 3) % GAPS_MS.len()];
                tokio::time::sleep(Duration::from_millis(gap)).await;
                match client.post(body.clone()).await {
                    Ok((200, _)) => {}
                    Ok((status, b)) => failures.push(format!(
                        "after {gap} ms: {status} {}",
                        String::from_utf8_lossy(&b)
                    )),
                    Err(e) => failures.push(format!("after {gap} ms: {e}")),
                }
            }
            failures
        });
    }
    let mut failures = Vec::new();
    while let Some(r) = senders.join_next().await {
        failures.extend(r.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {failures:?}",
        failures.len(),
        SENDERS * TRIES
    );
    assert!(
        client.dialed.load(Ordering::Relaxed) < SENDERS * TRIES,
        "connections were reused"
    );
    assert!(
        !logs.text().contains("header_read_timeout"),
        "no header timeout between requests"
    );

    // A connection left idle past the server's idle timeout is closed by Gatehouse, and the
    // close is logged at debug with its reason.
    let mut idle = client.dial().await.unwrap();
    let req = hyper::Request::post("/validate")
        .header("host", "localhost")
        .body(Full::new(body.clone()))
        .unwrap();
    assert_eq!(idle.send_request(req).await.unwrap().status(), 200);
    let started = Instant::now();
    while !idle.is_closed() {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the idle connection was never closed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "{:?}",
        started.elapsed()
    );
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("closing an idle connection"))
        .unwrap_or_else(|| panic!("no idle close logged: {text}"));
    assert!(line.contains("DEBUG"), "{line}");
    assert!(line.contains("reason=\"idle_timeout\""), "{line}");
    assert!(line.contains("listener=\"webhook\""), "{line}");
}

// ---------------------------------------------------------------------------------------------
// Descriptor exhaustion: the real binary under a low open-file limit; idle connections on the
// health and token ports, from two other addresses, cannot stop the webhook or /healthz.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn idle_connections_on_the_health_and_token_ports_cannot_exhaust_descriptors() {
    let _turn = ONE_ATTACK.lock().await;
    gatehouse::tls::install_default_provider();
    raise_own_open_file_limit();
    let dir = tempfile::tempdir().unwrap();
    let (webhook, health, admin) = (free_port(), free_port(), free_port());
    let key = dir.path().join("admin.key");
    std::fs::write(&key, "0123456789abcdef0123456789abcdef0123").unwrap();
    let stderr = std::fs::File::create(dir.path().join("stderr")).unwrap();
    // `ulimit -n` sets the soft and the hard limit: Gatehouse cannot raise it.
    let mut cmd = std::process::Command::new("sh");
    cmd.args([
        "-c",
        "ulimit -n 512 && exec \"$0\" serve",
        env!("CARGO_BIN_EXE_gatehouse"),
    ])
    .current_dir(common::repo());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .env("GATEHOUSE_LISTEN", format!("127.0.0.1:{webhook}"))
        .env("GATEHOUSE_HEALTH_LISTEN", format!("127.0.0.1:{health}"))
        .env(
            "GATEHOUSE_TOKEN_ADMIN__LISTEN",
            format!("127.0.0.1:{admin}"),
        )
        .env("GATEHOUSE_TOKEN_ADMIN__KEY_FILE", &key)
        .env("GATEHOUSE_DATA_DIR", dir.path().join("data"))
        .env("GATEHOUSE_RELOAD_INTERVAL", "1s")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn gatehouse");
    let plain = reqwest::Client::builder().no_proxy().build().unwrap();
    let healthz = format!("http://127.0.0.1:{health}/healthz");
    let started = Instant::now();
    loop {
        if plain
            .get(&healthz)
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "gatehouse did not start"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ca = std::fs::read_to_string(dir.path().join("data/dev-certs/ca.crt")).unwrap();

    // Two attacking addresses hold every idle connection they can get on both ports.
    let mut held = Vec::new();
    let mut held_tls = Vec::new();
    let admin_tls = connector(&ca, b"http/1.1");
    for attacker in [Ipv4Addr::new(127, 0, 0, 6), Ipv4Addr::new(127, 0, 0, 7)] {
        for _ in 0..300 {
            if let Ok(mut tcp) =
                tcp_from(attacker, SocketAddr::from(([127, 0, 0, 1], health))).await
            {
                let _ = tcp
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await;
                held.push(tcp);
            }
            if let Ok(tcp) = tcp_from(attacker, SocketAddr::from(([127, 0, 0, 1], admin))).await
                && let Ok(Ok(tls)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    admin_tls.connect(localhost(), tcp),
                )
                .await
            {
                held_tls.push(tls);
            }
        }
    }

    // The kubelet's probe and the API server's reviews, on new connections.
    let review = example_review("create-3-replicas", |_| {});
    for _ in 0..10 {
        let probe = reqwest::Client::builder().no_proxy().build().unwrap();
        let r = probe.get(&healthz).send().await.expect("/healthz answers");
        assert_eq!(r.status(), 200);
        let api = common::https_client(&ca);
        let r = api
            .post(format!("https://localhost:{webhook}/validate"))
            .header("content-type", "application/json")
            .body(review.clone())
            .send()
            .await
            .expect("the webhook answers");
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["response"]["allowed"], true);
    }
    let metrics = plain
        .get(format!("http://127.0.0.1:{health}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gatehouse_rejected_requests_total{reason=\"source_connection_limit\"}"),
        "the attackers met their per-source caps"
    );
    drop(held);
    drop(held_tls);
    common::sigterm(&child);
    let status = common::wait_exit(&mut child).await;
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(!log.contains("Too many open files"), "{log}");
    assert!(!log.contains("cannot accept"), "{log}");
    assert!(
        log.contains("connection cap lowered to fit the open-file limit"),
        "{log}"
    );
}

// ---------------------------------------------------------------------------------------------
// Handshakes in progress per source address.

#[tokio::test]
async fn handshakes_in_progress_are_capped_per_source_address() {
    let _turn = ONE_ATTACK.lock().await;
    let s = TestServer::start_with(None, |c| {
        c.limits.max_handshakes_per_source = 2;
        c.limits.tls_handshake_timeout = Duration::from_secs(20);
    })
    .await;
    let hog = Ipv4Addr::new(127, 0, 0, 8);
    // Two sockets that never send a ClientHello take this address's two turns.
    let mut silent = vec![
        tcp_from(hog, s.addr).await.unwrap(),
        tcp_from(hog, s.addr).await.unwrap(),
    ];
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tls = connector(&s.ca_pem, b"http/1.1");
    let third = tokio::spawn({
        let tls = tls.clone();
        let addr = s.addr;
        async move {
            let tcp = tcp_from(hog, addr).await.unwrap();
            tls.connect(localhost(), tcp).await
        }
    });
    // Another address is not held up: its handshake and a review go through at once.
    let other = tcp_from(Ipv4Addr::new(127, 0, 0, 9), s.addr).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), tls.connect(localhost(), other))
        .await
        .expect("another address's handshake is not queued behind the hog's")
        .expect("handshake");
    // The same address's third handshake waits for a turn …
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "the third handshake waits for a turn");
    // … which it gets as soon as one of the silent sockets goes away.
    drop(silent.pop());
    let done = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("the turn came once a silent socket closed")
        .unwrap();
    assert!(done.is_ok(), "{done:?}");
}
