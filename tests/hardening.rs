//! Hostile and broken clients against the real server over real TLS on 127.0.0.1: handshake,
//! header and body timeouts, the connection and request caps, the request deadline that follows
//! the API server's `?timeout=`, old TLS versions, deep or huge JSON, and the shutdown delay.
//!
//! Every limit is set small so each test takes about a second; bounds are generous ("closed
//! within 5 s" for a 300 ms limit). Where order matters it is made certain rather than timed:
//! `Expect: 100-continue` tells the test that the server has taken the request (cap slot and
//! deadline included) and is reading its body.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{TestServer, example_review};
use rustls_pki_types::ServerName;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The longest any single step may take before the test fails.
const BOUND: Duration = Duration::from_secs(5);
/// The small limit the timeout tests use.
const SHORT: Duration = Duration::from_millis(300);

// ---------------------------------------------------------------------------------------------
// Helpers: raw TLS connections and a minimal HTTP/1.1 reader.

/// A TLS connector trusting the test CA, offering `alpn` (TLS 1.2 and 1.3).
fn connector(s: &TestServer, alpn: &[u8]) -> TlsConnector {
    let cfg = common::client_tls(
        &s.ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[alpn],
    );
    TlsConnector::from(Arc::new(cfg))
}

/// A finished TLS handshake with the webhook listener.
async fn tls(s: &TestServer, alpn: &[u8]) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(s.addr).await?;
    let name = ServerName::try_from("localhost").expect("server name");
    tokio::time::timeout(BOUND, connector(s, alpn).connect(name, tcp))
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("TLS handshake did not finish")))
}

/// An HTTP/1.1 connection over TLS.
async fn h1(s: &TestServer) -> TlsStream<TcpStream> {
    tls(s, b"http/1.1").await.expect("TLS handshake")
}

/// Reads until the peer closes (EOF or reset), failing the test after [`BOUND`]. Returns what
/// was read and when the close came.
async fn until_closed(io: &mut (impl AsyncRead + Unpin)) -> (Vec<u8>, Instant) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, io.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open for {BOUND:?}; read so far: {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, Instant::now()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The head of a `POST` of `len` bytes to `path`.
fn post_head(path: &str, len: usize, expect_continue: bool) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {len}\r\n{}\r\n",
        if expect_continue {
            "Expect: 100-continue\r\n"
        } else {
            ""
        }
    )
}

/// One HTTP/1.1 response.
#[derive(Debug)]
struct Resp {
    status: u16,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads the next response (a 1xx has no body) from `io`, keeping what follows in `buf`.
/// `None` if the connection closed first.
async fn read_response(io: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Option<Resp> {
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status: u16 = head
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not an HTTP response: {head:?}"));
            let len = if status < 200 {
                0
            } else {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or_else(|| panic!("no content-length: {head:?}"))
            };
            if buf.len() >= end + 4 + len {
                let body = buf[end + 4..end + 4 + len].to_vec();
                buf.drain(..end + 4 + len);
                return Some(Resp { status, body });
            }
        }
        match io.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// [`read_response`] within [`BOUND`].
async fn response(io: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Resp {
    tokio::time::timeout(BOUND, read_response(io, buf))
        .await
        .expect("a response within the bound")
        .expect("a response before the connection closed")
}

async fn send(io: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) {
    io.write_all(bytes).await.expect("write");
    io.flush().await.expect("flush");
}

/// Sends a `POST` head with `Expect: 100-continue` and waits for the `100 Continue`: from then
/// on the server has taken the request (its slot under the cap, its deadline running) and is
/// reading the body.
async fn start_post(io: &mut TlsStream<TcpStream>, buf: &mut Vec<u8>, path: &str, len: usize) {
    send(io, post_head(path, len, true).as_bytes()).await;
    let cont = response(io, buf).await;
    assert_eq!(
        cont.status, 100,
        "100 Continue once the handler reads the body"
    );
}

/// The value of `gatehouse_rejected_requests_total{reason="…"}` on /metrics (0 if absent).
async fn rejected(s: &TestServer, reason: &str) -> u64 {
    let text = s
        .plain
        .get(s.health_url("/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    let key = format!("gatehouse_rejected_requests_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&key))
        .map_or(0, |v| v.trim().parse().expect("counter value"))
}

/// A normal review is still answered, and allowed.
async fn still_serving(s: &TestServer) {
    let (status, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], true, "{body}");
}

// ---------------------------------------------------------------------------------------------
// 1. TLS handshake timeout.

#[tokio::test]
async fn a_client_that_never_sends_a_client_hello_is_disconnected() {
    let s = TestServer::start_with(None, |c| c.limits.tls_handshake_timeout = SHORT).await;

    // The server's clock for a connection starts after the client's `connect` begins, so the
    // time from there to the close is at least the timeout.
    let connecting = Instant::now();
    let mut silent = TcpStream::connect(s.addr).await.unwrap();
    // Half a ClientHello: a record header and a few bytes, then nothing.
    let mut partial = TcpStream::connect(s.addr).await.unwrap();
    send(&mut partial, &client_hello(0x0303, SUITES, true)[..20]).await;

    // Meanwhile everyone else is served.
    still_serving(&s).await;

    let (got, closed) = until_closed(&mut silent).await;
    assert!(
        got.is_empty(),
        "nothing is sent to a silent client: {got:?}"
    );
    let took = closed - connecting;
    assert!(
        took >= SHORT,
        "closed by the timeout, not at once: {took:?}"
    );
    let (got, _) = until_closed(&mut partial).await;
    assert!(!got.starts_with(&[0x16]), "no ServerHello: {got:?}");
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 2. Header read timeout and first-request timeout.

#[tokio::test]
async fn a_client_that_sends_part_of_the_headers_is_disconnected() {
    let s = TestServer::start_with(None, |c| c.limits.header_read_timeout = SHORT).await;
    let connecting = Instant::now();
    let mut conn = h1(&s).await;
    send(
        &mut conn,
        b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Ty",
    )
    .await;
    let (got, closed) = until_closed(&mut conn).await;
    let took = closed - connecting;
    assert!(
        got.is_empty(),
        "no answer, just closed: {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        took >= SHORT,
        "closed by the timeout, not at once: {took:?}"
    );
    still_serving(&s).await;
}

#[tokio::test]
async fn a_stalled_second_request_on_a_kept_alive_connection_is_disconnected() {
    // The header timer starts with the first byte of the second request (not when the first
    // one ended: an idle kept-alive connection waits for the idle timeout).
    let s = TestServer::start_with(None, |c| c.limits.header_read_timeout = SHORT).await;
    let mut conn = h1(&s).await;
    let mut buf = Vec::new();
    let body = example_review("create-3-replicas", |_| {});
    send(
        &mut conn,
        post_head("/validate", body.len(), false).as_bytes(),
    )
    .await;
    send(&mut conn, &body).await;
    let first = response(&mut conn, &mut buf).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.json()["response"]["allowed"], true);

    send(&mut conn, b"POST /validate HTTP/1.1\r\nHost: loc").await;
    let (got, _) = until_closed(&mut conn).await;
    assert!(
        got.is_empty(),
        "no answer, just closed: {:?}",
        String::from_utf8_lossy(&got)
    );
}

#[tokio::test]
async fn a_client_that_completes_tls_and_sends_nothing_is_closed_after_the_idle_timeout() {
    // Only requests count as activity: a connection that never carries one is idle from the
    // start, and closed after `idle_timeout` (not the header timeout, which only starts with a
    // request's first byte: a client may open a connection before it has a request for it).
    let s = TestServer::start_with(None, |c| {
        c.limits.request_timeout = Duration::from_millis(200);
        c.limits.idle_timeout = SHORT * 2;
        c.limits.header_read_timeout = Duration::from_millis(100);
    })
    .await;
    // Over HTTP/1.1 and over HTTP/2 (where the client does not even send the preface).
    let connecting = Instant::now();
    let mut over_h1 = tls(&s, b"http/1.1").await.unwrap();
    let mut over_h2 = tls(&s, b"h2").await.unwrap();
    assert_eq!(over_h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (got, closed) = until_closed(&mut over_h1).await;
    assert!(got.is_empty(), "{got:?}");
    let took = closed - connecting;
    assert!(
        took >= SHORT * 2,
        "closed by the idle timeout, not the header timeout: {took:?}"
    );
    let (_, closed) = until_closed(&mut over_h2).await;
    assert!(closed - connecting >= SHORT * 2);
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 3. A slow body meets the request deadline; others are served meanwhile.

#[tokio::test]
async fn a_trickled_body_gets_503_deadline_exceeded_and_others_are_served_meanwhile() {
    let s = TestServer::start_with(None, |c| {
        c.limits.request_timeout = Duration::from_secs(1);
        // The minimum body rate off: only the deadline can end this request.
        c.limits.min_body_bytes_per_second = 0;
    })
    .await;
    let body = example_review("create-3-replicas", |_| {});
    let conn = h1(&s).await;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let mut buf = Vec::new();
    send(&mut wr, post_head("/validate", body.len(), true).as_bytes()).await;
    let started = Instant::now();
    assert_eq!(response(&mut rd, &mut buf).await.status, 100);

    // One byte every 50 ms: it never stops sending, so only a total deadline ends it.
    let trickle = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let answer = tokio::spawn(async move {
        let resp = read_response(&mut rd, &mut buf).await;
        (resp, Instant::now())
    });

    // While the trickle holds its request, another client is served.
    still_serving(&s).await;
    let served_at = Instant::now();

    let (resp, answered_at) = tokio::time::timeout(BOUND, answer).await.unwrap().unwrap();
    trickle.abort();
    let resp = resp.expect("an answer before the connection closed");
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json(), json!({"error": "deadline exceeded"}));
    assert!(answered_at - started < BOUND);
    assert!(
        served_at < answered_at,
        "the other client was served while the slow one was still sending"
    );
    assert_eq!(rejected(&s, "timeout").await, 1);
    still_serving(&s).await;
}

#[tokio::test]
async fn a_trickled_body_gets_408_long_before_the_deadline() {
    let s = TestServer::start_with(None, |c| {
        c.limits.request_timeout = Duration::from_secs(8);
        c.limits.body_rate_grace = SHORT;
    })
    .await;
    let body = example_review("create-3-replicas", |_| {});
    let conn = h1(&s).await;
    let (mut rd, mut wr) = tokio::io::split(conn);
    let mut buf = Vec::new();
    send(&mut wr, post_head("/validate", body.len(), true).as_bytes()).await;
    assert_eq!(response(&mut rd, &mut buf).await.status, 100);
    let trickle = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[b]).await.is_err() || wr.flush().await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Answered within the bound, which is shorter than the 8 s deadline: the rate cut it off.
    let resp = response(&mut rd, &mut buf).await;
    trickle.abort();
    assert_eq!(resp.status, 408);
    assert_eq!(
        resp.json(),
        json!({"error": "request body arrived too slowly"})
    );
    assert_eq!(rejected(&s, "body_too_slow").await, 1);
    assert_eq!(rejected(&s, "timeout").await, 0);
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 4. Connection cap.

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once() {
    let s = TestServer::start_with(None, |c| {
        c.limits.max_connections = 3;
        // Long enough that nothing here is closed by a timeout: only the cap closes.
        c.limits.tls_handshake_timeout = Duration::from_secs(30);
        c.limits.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(h1(&s).await);
    }

    // A fourth TCP connection is closed before any TLS: nothing comes back.
    let mut fourth = TcpStream::connect(s.addr).await.unwrap();
    let (got, _) = until_closed(&mut fourth).await;
    assert!(got.is_empty(), "{got:?}");
    // A TLS handshake fails too.
    assert!(tls(&s, b"http/1.1").await.is_err());
    assert_eq!(rejected(&s, "connection_limit").await, 2);

    // The held connections still work.
    let body = example_review("create-2-replicas", |_| {});
    let mut buf = Vec::new();
    send(
        &mut held[0],
        post_head("/validate", body.len(), false).as_bytes(),
    )
    .await;
    send(&mut held[0], &body).await;
    let resp = response(&mut held[0], &mut buf).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["response"]["allowed"], false);

    // One closes; its slot is free once the server has seen the close.
    drop(held.pop());
    let started = Instant::now();
    let mut refused = 0;
    let mut conn = loop {
        match tls(&s, b"http/1.1").await {
            Ok(c) => break c,
            Err(_) => {
                refused += 1;
                assert!(started.elapsed() < BOUND, "no slot freed after a close");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let body = example_review("create-3-replicas", |_| {});
    send(
        &mut conn,
        post_head("/validate", body.len(), false).as_bytes(),
    )
    .await;
    send(&mut conn, &body).await;
    let mut buf = Vec::new();
    assert_eq!(response(&mut conn, &mut buf).await.status, 200);
    assert_eq!(rejected(&s, "connection_limit").await, 2 + refused);
}

// ---------------------------------------------------------------------------------------------
// 5. Request cap.

#[tokio::test]
async fn requests_over_the_cap_get_503_at_once() {
    let s = TestServer::start_with(None, |c| {
        c.limits.max_concurrent_requests = 1;
        // The held body below stalls on purpose: no minimum rate cuts it off here.
        c.limits.body_rate_grace = Duration::from_secs(30);
    })
    .await;
    let body = example_review("create-3-replicas", |_| {});

    // A request whose body stalls holds the only slot.
    let mut slow = h1(&s).await;
    let mut buf = Vec::new();
    start_post(&mut slow, &mut buf, "/validate", body.len()).await;
    send(&mut slow, &body[..10]).await;

    let started = Instant::now();
    let (status, answer) = s.post(body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer, json!({"error": "too many requests in progress"}));
    assert!(started.elapsed() < BOUND);
    assert_eq!(rejected(&s, "request_limit").await, 1);

    // The held request finishes normally; then requests are served again.
    send(&mut slow, &body[10..]).await;
    let resp = response(&mut slow, &mut buf).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["response"]["allowed"], true);
    still_serving(&s).await;
    still_serving(&s).await;
    assert_eq!(rejected(&s, "request_limit").await, 1);
}

#[tokio::test]
async fn an_idle_http2_connection_gives_its_slot_back() {
    let s = TestServer::start_with(None, |c| {
        c.limits.max_connections = 1;
        c.limits.request_timeout = Duration::from_millis(200);
        c.limits.idle_timeout = SHORT;
    })
    .await;
    // One request over HTTP/2, then the client keeps the connection open and says nothing
    // (HTTP/2 has no header timeout between requests).
    let tls = common::client_tls(&s.ca_pem, &[&rustls::version::TLS13], &[b"h2"]);
    let idle = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .unwrap();
    let r = idle
        .post(s.url("/validate"))
        .body(example_review("create-3-replicas", |_| {}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    tokio::time::sleep(SHORT * 4).await;
    // The idle connection was closed, so the only slot is free for another client.
    still_serving(&s).await;
    drop(idle);
}

#[tokio::test]
async fn bodies_in_progress_share_a_byte_budget() {
    let body = example_review("create-3-replicas", |_| {});
    assert!(body.len() > 2048 && body.len() < 3072, "{}", body.len());
    // Room for three bodies' bytes, but each request counts twice its body (the body and
    // what decoding and judging it may take: `limits::MEMORY_PER_BODY_BYTE`).
    assert_eq!(gatehouse::limits::MEMORY_PER_BODY_BYTE, 2);
    let budget = 3 * body.len();
    let s = TestServer::start_with(None, |c| {
        c.limits.max_body_bytes = 4096;
        c.limits.max_inflight_body_bytes = budget;
        c.limits.body_rate_grace = Duration::from_secs(30);
    })
    .await;
    // A request announcing its ~2.5 KiB body and stalling holds two thirds of the budget.
    let mut slow = h1(&s).await;
    let mut buf = Vec::new();
    start_post(&mut slow, &mut buf, "/validate", body.len()).await;
    send(&mut slow, &body[..10]).await;

    // A second request of the same size would fit by its bytes alone, but not with what it
    // takes to judge it: it waits, and its deadline answers it.
    let started = Instant::now();
    let (status, answer) = s.post_to("/validate?timeout=1s", body.clone()).await;
    assert_eq!(status, 503, "{answer}");
    assert_eq!(answer, json!({"error": "deadline exceeded"}));
    assert!(started.elapsed() < BOUND);

    // Once the first is done its bytes are free again.
    send(&mut slow, &body[10..]).await;
    let resp = response(&mut slow, &mut buf).await;
    assert_eq!(resp.status, 200);
    still_serving(&s).await;
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 6. The deadline follows the API server's `?timeout=`.

#[tokio::test]
async fn the_deadline_follows_the_api_server_timeout() {
    let s = TestServer::start_with(None, |c| {
        c.limits.request_timeout = Duration::from_secs(9);
    })
    .await;
    let body = example_review("create-3-replicas", |_| {});

    // Without `?timeout=` the configured 9 s apply.
    let mut plain = h1(&s).await;
    let mut plain_buf = Vec::new();
    start_post(&mut plain, &mut plain_buf, "/validate", body.len()).await;
    send(&mut plain, &body[..10]).await;

    // With `?timeout=1s` the deadline is 800 ms.
    let mut hinted = h1(&s).await;
    let mut buf = Vec::new();
    let started = Instant::now();
    start_post(&mut hinted, &mut buf, "/validate?timeout=1s", body.len()).await;
    send(&mut hinted, &body[..10]).await;
    let resp = response(&mut hinted, &mut buf).await;
    let took = started.elapsed();
    assert_eq!(resp.status, 503);
    assert_eq!(resp.json(), json!({"error": "deadline exceeded"}));
    assert!(
        took > Duration::from_millis(500) && took < BOUND,
        "answered after {took:?}"
    );
    assert_eq!(rejected(&s, "timeout").await, 1);

    // The request without the hint is still waiting for its body, and completes.
    let early = tokio::time::timeout(
        Duration::from_millis(50),
        read_response(&mut plain, &mut plain_buf),
    )
    .await;
    assert!(early.is_err(), "not answered yet: {early:?}");
    send(&mut plain, &body[10..]).await;
    let resp = response(&mut plain, &mut plain_buf).await;
    assert_eq!(resp.status, 200);
    assert_eq!(rejected(&s, "timeout").await, 1);
}

// ---------------------------------------------------------------------------------------------
// 7. TLS 1.0 and 1.1 are refused.

/// Suites a TLS 1.0/1.1 client offers (CBC with SHA-1, ECDHE and RSA key exchange) and the
/// TLS 1.2 AEAD suites the server supports, so that only the version can be the reason for a
/// refusal.
const SUITES: &[u16] = &[
    0xc009, 0xc00a, 0xc013, 0xc014, 0x002f, 0x0035, 0x000a, 0xc02b, 0xc02f, 0xcca9, 0xcca8,
];

/// A minimal ClientHello record: `version` as legacy_version (no supported_versions
/// extension), SNI localhost, X25519 and P-256, uncompressed points, and optionally
/// signature_algorithms (a TLS 1.2 extension).
fn client_hello(version: u16, suites: &[u16], sig_algs: bool) -> Vec<u8> {
    fn ext(out: &mut Vec<u8>, kind: u16, data: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(data);
    }
    let mut exts = Vec::new();
    let host = b"localhost";
    let mut sni = Vec::new();
    sni.extend_from_slice(&((host.len() + 3) as u16).to_be_bytes());
    sni.push(0);
    sni.extend_from_slice(&(host.len() as u16).to_be_bytes());
    sni.extend_from_slice(host);
    ext(&mut exts, 0x0000, &sni);
    ext(&mut exts, 0x000a, &[0, 4, 0x00, 0x1d, 0x00, 0x17]);
    ext(&mut exts, 0x000b, &[1, 0]);
    if sig_algs {
        ext(
            &mut exts,
            0x000d,
            &[0, 8, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03],
        );
    }
    ext(&mut exts, 0xff01, &[0]);

    let mut hello = Vec::new();
    hello.extend_from_slice(&version.to_be_bytes());
    hello.extend((0..32u8).map(|i| i.wrapping_mul(37)));
    hello.push(0); // no session id
    hello.extend_from_slice(&((suites.len() * 2) as u16).to_be_bytes());
    for s in suites {
        hello.extend_from_slice(&s.to_be_bytes());
    }
    hello.extend_from_slice(&[1, 0]); // null compression only
    hello.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    hello.extend_from_slice(&exts);

    let mut handshake = vec![0x01];
    handshake.extend_from_slice(&(hello.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&hello);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The TLS records in `bytes` as (content type, payload), as far as they are complete.
fn records(bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push((rest[0], rest[5..5 + len].to_vec()));
        rest = &rest[5 + len..];
    }
    out
}

/// Sends a hand-made ClientHello and returns the records the server answered with, up to the
/// close (or the first few kilobytes when it carries on with the handshake).
async fn answer_to_hello(s: &TestServer, hello: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut tcp = TcpStream::connect(s.addr).await.unwrap();
    send(&mut tcp, hello).await;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(BOUND, tcp.read(&mut buf)).await {
            Err(_) => break,
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
        // A ServerHello flight: enough to judge.
        if records(&got)
            .iter()
            .any(|(t, p)| *t == 0x16 && p.first() == Some(&2))
        {
            break;
        }
    }
    records(&got)
}

fn is_server_hello((kind, payload): &(u8, Vec<u8>)) -> bool {
    *kind == 0x16 && payload.first() == Some(&2)
}

#[tokio::test]
async fn tls_1_0_and_1_1_client_hellos_are_refused() {
    let s = TestServer::start().await;
    // The same hello with legacy_version TLS 1.2 gets a ServerHello: the records are well
    // formed, so the refusals below are about the version.
    let answer = answer_to_hello(&s, &client_hello(0x0303, SUITES, true)).await;
    assert!(
        answer.iter().any(is_server_hello),
        "a TLS 1.2 hello is answered with a ServerHello: {answer:?}"
    );

    for (version, name) in [(0x0302u16, "TLS 1.1"), (0x0301, "TLS 1.0")] {
        for sig_algs in [false, true] {
            let answer = answer_to_hello(&s, &client_hello(version, SUITES, sig_algs)).await;
            assert!(
                !answer.iter().any(is_server_hello),
                "{name}: no ServerHello: {answer:?}"
            );
            // At most a fatal alert, then the close. With signature_algorithms present (a
            // TLS 1.2 extension an old client may still send) the alert names the version
            // (protocol_version, 70); without it rustls stops earlier with
            // handshake_failure (40).
            let expected = if sig_algs { [2, 70] } else { [2, 40] };
            for (kind, payload) in &answer {
                assert_eq!(*kind, 0x15, "{name}: only an alert: {answer:?}");
                assert_eq!(payload[..], expected, "{name}: fatal alert");
            }
        }
    }
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// 8. Deep and huge JSON.

#[tokio::test]
async fn deeply_nested_json_is_a_400_with_a_message() {
    let s = TestServer::start().await;
    // As the whole body: refused at the first bracket.
    let deep = "[".repeat(100_000);
    let (status, body) = s.post(deep.clone()).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("body is not an AdmissionReview"), "{msg}");

    // Nested inside an otherwise valid review's object.
    let review = String::from_utf8(example_review("create-3-replicas", |v| {
        v["request"]["object"]["spec"]["deep"] = json!("DEEP");
    }))
    .unwrap()
    .replace("\"DEEP\"", &deep);
    let (status, body) = s.post(review).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("body is not an AdmissionReview"), "{msg}");
    assert!(msg.contains("recursion limit exceeded"), "{msg}");
    still_serving(&s).await;
}

#[tokio::test]
async fn huge_json_arrays_under_the_body_limit_are_answered_and_over_it_refused() {
    const LIMIT: usize = 2 * 1024 * 1024;
    let s = TestServer::start_with(None, |c| c.limits.max_body_bytes = LIMIT).await;

    // A body that is one array of about a million numbers: 400, refused at the first bracket.
    let n = (LIMIT - 2) / 2;
    let mut array = String::with_capacity(LIMIT);
    array.push('[');
    for i in 0..n {
        array.push_str(if i == 0 { "0" } else { ",0" });
    }
    array.push(']');
    assert!(array.len() <= LIMIT);
    let (status, body) = s.post(array).await;
    assert_eq!(status, 400, "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("body is not an AdmissionReview"), "{msg}");

    // A review carrying an array of about 700 000 empty arrays in its object, just under the
    // limit. With the wrong kind it is parsed whole and then refused with a message ...
    let review = |kind: &str| {
        let frame = String::from_utf8(example_review("create-3-replicas", |v| {
            v["kind"] = json!(kind);
            v["request"]["object"]["spec"]["junk"] = json!("HUGE");
        }))
        .unwrap();
        let n = (LIMIT - frame.len() - 64) / 3;
        let mut huge = String::with_capacity(LIMIT);
        huge.push('[');
        for i in 0..n {
            huge.push_str(if i == 0 { "[]" } else { ",[]" });
        }
        huge.push(']');
        let review = frame.replace("\"HUGE\"", &huge);
        assert!(review.len() <= LIMIT && review.len() > LIMIT - 1024);
        review
    };
    let (status, body) = s.post(review("Pod")).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "kind is `Pod`, expected AdmissionReview");

    // ... and as an AdmissionReview it is evaluated and answered.
    let valid = review("AdmissionReview");
    let (status, body) = s.post(valid.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], true, "{body}");

    // A little more than the limit: a JSON 413, counted, nothing parsed; over HTTP/1.1 and
    // HTTP/2, announced or streamed without a length.
    let over = valid.replacen("[[],", &format!("[{}", "[],".repeat(1000)), 1);
    assert!(over.len() > LIMIT);
    let message = format!("request body is larger than limits.max_body_bytes ({LIMIT} bytes)");
    let h2 = reqwest::Client::builder()
        .use_preconfigured_tls(common::client_tls(
            &s.ca_pem,
            &[&rustls::version::TLS13],
            &[b"h2"],
        ))
        .no_proxy()
        .build()
        .unwrap();
    let h1 = reqwest::Client::builder()
        .use_preconfigured_tls(common::client_tls(
            &s.ca_pem,
            &[&rustls::version::TLS13],
            &[b"http/1.1"],
        ))
        .http1_only()
        .no_proxy()
        .build()
        .unwrap();
    let mut sent = 0;
    for (client, version) in [
        (&h2, reqwest::Version::HTTP_2),
        (&h1, reqwest::Version::HTTP_11),
    ] {
        for streamed in [false, true] {
            let body = if streamed {
                let chunks: Vec<Result<http_body::Frame<bytes::Bytes>, std::io::Error>> = over
                    .as_bytes()
                    .chunks(64 * 1024)
                    .map(|c| Ok(http_body::Frame::data(bytes::Bytes::copy_from_slice(c))))
                    .collect();
                reqwest::Body::wrap(http_body_util::StreamBody::new(futures_util::stream::iter(
                    chunks,
                )))
            } else {
                reqwest::Body::from(over.clone())
            };
            let resp = client
                .post(s.url("/validate"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{version:?} streamed={streamed}: {e:?}"));
            sent += 1;
            assert_eq!(resp.version(), version);
            assert_eq!(resp.status(), 413, "{version:?} streamed={streamed}");
            let answer: serde_json::Value = resp.json().await.expect("a JSON 413");
            assert_eq!(answer, json!({ "error": message }));
        }
    }
    assert_eq!(rejected(&s, "body_too_large").await, sent);
    still_serving(&s).await;
}

// ---------------------------------------------------------------------------------------------
// Shutdown delay.

#[tokio::test]
async fn after_the_shutdown_signal_it_serves_on_while_not_ready_for_the_delay() {
    const DELAY: Duration = Duration::from_secs(2);
    let mut s = TestServer::start_with(None, |c| {
        c.limits.shutdown_delay = DELAY;
        c.limits.shutdown_grace = Duration::from_secs(1);
    })
    .await;
    let ready = |s: &TestServer| {
        let req = s.plain.get(s.health_url("/readyz")).send();
        async move { req.await.expect("readyz").status() }
    };
    assert_eq!(ready(&s).await, 200);
    still_serving(&s).await;

    let signalled = Instant::now();
    s.begin_shutdown();
    loop {
        if ready(&s).await == 503 {
            break;
        }
        assert!(signalled.elapsed() < BOUND, "/readyz never said not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Not ready, yet answering: on the kept connection and on a new one (the Service may still
    // send new connections here until the endpoints controller drops the pod).
    still_serving(&s).await;
    let fresh = common::https_client(&s.ca_pem);
    let resp = fresh
        .post(s.url("/validate"))
        .body(example_review("create-2-replicas", |_| {}))
        .send()
        .await
        .expect("a new connection during the delay");
    assert_eq!(resp.status(), 200);
    let answer: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(answer["response"]["allowed"], false);

    let addr = s.addr;
    tokio::time::timeout(Duration::from_secs(15), s.shutdown())
        .await
        .expect("shutdown finishes")
        .expect("clean exit");
    assert!(signalled.elapsed() >= DELAY, "{:?}", signalled.elapsed());
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}
