//! Policy kind `forward` against a stand-in serverless function on 127.0.0.1: an HTTPS server
//! with a certificate from a test CA (and a plain-HTTP one for the localhost exception) that
//! behaves like an Azure Function behind a function key: it answers 401 unless the
//! `x-functions-key` header carries the key, and otherwise whatever the test asks for. It counts
//! accepted TCP connections and records every request it gets.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::{TestServer, example_review};
use gatehouse::policy::{Decision, EvalOptions, PolicySet, parse_policies};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

/// What the stand-in answers: an HTTP status and a JSON body, given the review it got.
type Responder = Arc<dyn Fn(&Value) -> (u16, Value) + Send + Sync>;

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone)]
struct FnState {
    key: Option<String>,
    respond: Responder,
    hold: Option<Arc<Notify>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A listener that counts accepted TCP connections and optionally speaks TLS.
struct Counting {
    tcp: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    accepted: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Counting {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            self.accepted.fetch_add(1, Ordering::SeqCst);
            match &self.tls {
                None => return (Box::new(tcp), addr),
                Some(acceptor) => {
                    if let Ok(tls) = acceptor.accept(tcp).await {
                        return (Box::new(tls), addr);
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The stand-in function.
struct StandIn {
    addr: SocketAddr,
    tls: bool,
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    /// The test CA's certificate file (HTTPS stand-ins).
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

const KEY: &str = "s3cr3t-function-key";

impl StandIn {
    async fn start(
        tls: bool,
        key: Option<&str>,
        hold: Option<Arc<Notify>>,
        respond: Responder,
    ) -> Self {
        gatehouse::tls::install_default_provider();
        let dir = tempfile::tempdir().unwrap();
        let (bundle, files) = common::test_certs(dir.path());
        let acceptor = tls.then(|| {
            let cfg = gatehouse::tls::server_config_from_pem(
                bundle.cert_pem.as_bytes(),
                bundle.key_pem.as_bytes(),
                Path::new("cert"),
                Path::new("key"),
            )
            .unwrap();
            tokio_rustls::TlsAcceptor::from(cfg)
        });
        let accepted = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let state = FnState {
            key: key.map(str::to_owned),
            respond,
            hold,
            seen: seen.clone(),
        };
        let app = axum::Router::new()
            .route("/api/validate", post(function))
            .with_state(state);
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = Counting {
            tcp,
            tls: acceptor,
            accepted: accepted.clone(),
        };
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            addr,
            tls,
            accepted,
            seen,
            ca_file: files.ca,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}/api/validate", self.addr.port())
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Like an Azure Function with `authLevel: function`: 401 without the right key.
async fn function(
    State(s): State<FnState>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> (StatusCode, axum::Json<Value>) {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    s.seen.lock().unwrap().push(Seen {
        headers: headers.clone(),
        body: body.clone(),
    });
    if let Some(key) = &s.key
        && headers.get("x-functions-key").and_then(|v| v.to_str().ok()) != Some(key.as_str())
    {
        return (StatusCode::UNAUTHORIZED, axum::Json(json!({})));
    }
    if let Some(hold) = &s.hold {
        hold.notified().await;
    }
    let (status, answer) = (s.respond)(&body);
    (StatusCode::from_u16(status).unwrap(), axum::Json(answer))
}

fn simple(answer: Value) -> Responder {
    Arc::new(move |_| (200, answer.clone()))
}

/// Answers with a full AdmissionReview of the request's apiVersion and uid.
fn full_review(allowed: bool, message: &str, warnings: &[&str]) -> Responder {
    let message = message.to_owned();
    let warnings: Vec<String> = warnings.iter().map(|s| (*s).to_owned()).collect();
    Arc::new(move |review| {
        let mut response = json!({
            "uid": review["request"]["uid"],
            "allowed": allowed,
        });
        if !allowed {
            response["status"] = json!({"code": 403, "message": message});
        }
        if !warnings.is_empty() {
            response["warnings"] = json!(warnings);
        }
        (
            200,
            json!({"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}),
        )
    })
}

/// A forward policy for `f` (trusting its CA when it speaks TLS), with extra params lines.
fn policy_yaml(f: &StandIn, extra: &str) -> String {
    let ca = if f.tls {
        format!("\n      caFile: '{}'", f.ca_file.display())
    } else {
        String::new()
    };
    format!(
        "
- name: remote
  kind: forward
  match: {{resources: [deployments, pods]}}
  params:
      url: '{}'{ca}{extra}
",
        f.url()
    )
}

fn set(yaml: &str) -> PolicySet {
    PolicySet::new(parse_policies(yaml, "forward.yaml").unwrap(), vec![]).unwrap()
}

fn review(name: &str, edit: impl FnOnce(&mut Value)) -> gatehouse::admission::Review<'static> {
    gatehouse::admission::testing::leak(example_review(name, edit)).unwrap()
}

async fn decide(set: &PolicySet) -> Decision {
    set.evaluate(&review("create-3-replicas", |_| {})).await
}

fn key_file(dir: &Path) -> PathBuf {
    let path = dir.join("function-key");
    std::fs::write(&path, format!("{KEY}\n")).unwrap();
    path
}

#[tokio::test]
async fn each_answer_format_decides_the_admission() {
    let cases: Vec<(Responder, bool, Option<&str>, Vec<&str>)> = vec![
        (
            full_review(false, "change freeze until Monday", &[]),
            false,
            Some("change freeze until Monday"),
            vec![],
        ),
        (full_review(true, "", &[]), true, None, vec![]),
        (
            full_review(true, "", &["image is 400 days old"]),
            true,
            None,
            vec!["image is 400 days old"],
        ),
        (
            simple(json!({"allow": true, "message": "fine"})),
            true,
            None,
            vec![],
        ),
        (
            simple(json!({"allow": false, "message": "not on Fridays"})),
            false,
            Some("not on Fridays"),
            vec![],
        ),
        (simple(json!({"allow": "true"})), true, None, vec![]),
        (
            simple(json!({"allow": "false", "message": "budget exceeded"})),
            false,
            Some("budget exceeded"),
            vec![],
        ),
        (
            simple(json!({"allow": false})),
            false,
            Some("denied without a message"),
            vec![],
        ),
    ];
    for (i, (responder, allowed, message, warnings)) in cases.into_iter().enumerate() {
        let f = StandIn::start(true, None, None, responder).await;
        let d = decide(&set(&policy_yaml(&f, ""))).await;
        assert_eq!(d.allowed(), allowed, "case {i}: {d:?}");
        let endpoint = format!("127.0.0.1:{}", f.addr.port());
        match message {
            Some(m) => assert_eq!(
                d.deny_message(),
                format!("Deployment app-ns/alpine-deploy: {m} (policy remote, {endpoint})"),
                "case {i}"
            ),
            None => assert!(d.denials.is_empty(), "case {i}: {d:?}"),
        }
        let got: Vec<&str> = d.warnings.iter().map(|w| w.message.as_str()).collect();
        let want: Vec<String> = warnings
            .iter()
            .map(|w| format!("{w} (policy remote, {endpoint})"))
            .collect();
        assert_eq!(got, want, "case {i}");
        assert_eq!(f.seen().len(), 1, "case {i}");
    }
}

#[tokio::test]
async fn the_review_is_posted_with_the_function_key_from_a_file() {
    let f = StandIn::start(true, Some(KEY), None, full_review(true, "", &[])).await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let with_key = set(&policy_yaml(
        &f,
        &format!(
            "\n      headers:\n        x-functions-key: {{file: '{}'}}\n        x-team: {{value: payments}}",
            key.display()
        ),
    ));
    // A v1beta1 review goes out as v1beta1 with its uid, object and user.
    let req = review("create-2-replicas-v1beta1", |_| {});
    let d = with_key.evaluate(&req).await;
    assert!(d.allowed(), "{d:?}");
    let seen = f.seen();
    assert_eq!(seen.len(), 1);
    let s = &seen[0];
    assert_eq!(s.headers["x-functions-key"], KEY);
    assert_eq!(s.headers["x-team"], "payments");
    assert_eq!(s.headers["content-type"], "application/json");
    assert!(
        s.headers["user-agent"]
            .to_str()
            .unwrap()
            .starts_with("gatehouse/")
    );
    assert_eq!(s.body["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(s.body["kind"], "AdmissionReview");
    assert_eq!(s.body["request"]["uid"], req.uid.as_ref());
    assert_eq!(s.body["request"]["object"]["spec"]["replicas"], 2);
    assert_eq!(
        s.body["request"]["userInfo"]["username"],
        "kubernetes-admin"
    );

    // Without the key the function answers 401, and the policy fails closed.
    let without = set(&policy_yaml(&f, ""));
    let d = decide(&without).await;
    assert_eq!(
        d.deny_message(),
        format!(
            "Deployment app-ns/alpine-deploy: policy remote could not get an answer from 127.0.0.1:{} (it answered HTTP 401 Unauthorized) and fails closed",
            f.addr.port()
        )
    );
    // A rotated key file is picked up without a reload; the old key is refused.
    std::fs::write(&key, "old-key").unwrap();
    let later = std::time::SystemTime::now() + Duration::from_secs(10);
    std::fs::File::options()
        .write(true)
        .open(&key)
        .unwrap()
        .set_modified(later)
        .unwrap();
    let d = decide(&with_key).await;
    assert!(d.deny_message().contains("HTTP 401"), "{d:?}");
    assert_eq!(
        f.seen().last().unwrap().headers["x-functions-key"],
        "old-key"
    );
}

#[tokio::test]
async fn slower_than_the_timeout_takes_the_failure_mode() {
    let release = Arc::new(Notify::new());
    let f = StandIn::start(
        true,
        None,
        Some(release.clone()),
        full_review(false, "too late", &[]),
    )
    .await;
    let port = f.addr.port();

    let closed = set(&policy_yaml(&f, "\n      timeout: 300ms"));
    let d = decide(&closed).await;
    assert_eq!(
        d.deny_message(),
        format!(
            "Deployment app-ns/alpine-deploy: policy remote could not get an answer from 127.0.0.1:{port} (no answer within 300ms) and fails closed"
        )
    );

    let open = set(&policy_yaml(
        &f,
        "\n      timeout: 300ms\n      failureMode: open",
    ));
    let d = decide(&open).await;
    assert!(d.allowed(), "{d:?}");
    assert_eq!(
        d.warnings[0].message,
        format!(
            "policy remote could not get an answer from 127.0.0.1:{port} (no answer within 300ms); allowed because it fails open"
        )
    );
    // The function did get both calls; it answers only now, after both admissions returned.
    assert_eq!(f.seen().len(), 2);
    release.notify_waiters();
}

#[tokio::test]
async fn server_errors_and_garbage_take_the_failure_mode() {
    for (responder, reason) in [
        (
            Arc::new(|_: &Value| (500u16, json!({"error": "boom"}))) as Responder,
            "it answered HTTP 500 Internal Server Error",
        ),
        (
            simple(json!({"verdict": "yes"})),
            "the answer is neither an AdmissionReview nor",
        ),
        (
            simple(json!({"response": {"uid": "someone-else", "allowed": true}})),
            "the AdmissionReview answer is for uid someone-else",
        ),
    ] {
        let f = StandIn::start(true, None, None, responder).await;
        let d = decide(&set(&policy_yaml(&f, ""))).await;
        assert!(!d.allowed());
        assert!(d.deny_message().contains(reason), "{}", d.deny_message());
        assert!(d.deny_message().ends_with("and fails closed"));

        let d = decide(&set(&policy_yaml(&f, "\n      failureMode: open"))).await;
        assert!(d.allowed());
        assert!(d.warnings[0].message.contains(reason), "{:?}", d.warnings);
    }
}

#[tokio::test]
async fn connections_are_pooled_and_reused() {
    let f = StandIn::start(true, None, None, simple(json!({"allow": true}))).await;
    let s = set(&policy_yaml(&f, ""));
    for _ in 0..10 {
        assert!(decide(&s).await.allowed());
    }
    assert_eq!(f.seen().len(), 10);
    assert_eq!(
        f.accepted.load(Ordering::SeqCst),
        1,
        "one TCP connection for ten calls"
    );

    // Plain HTTP to localhost pools the same way.
    let plain = StandIn::start(false, None, None, simple(json!({"allow": "true"}))).await;
    let s = set(&policy_yaml(&plain, ""));
    for _ in 0..5 {
        assert!(decide(&s).await.allowed());
    }
    assert_eq!(plain.accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_endpoint_the_ca_does_not_vouch_for_is_a_failure() {
    let f = StandIn::start(true, None, None, simple(json!({"allow": true}))).await;
    // Another CA than the stand-in's.
    let other = tempfile::tempdir().unwrap();
    let (_, other_files) = common::test_certs(other.path());
    let yaml = format!(
        "- name: remote\n  kind: forward\n  match: {{resources: [deployments]}}\n  params: {{url: '{}', caFile: '{}'}}\n",
        f.url(),
        other_files.ca.display()
    );
    let d = decide(&set(&yaml)).await;
    let m = d.deny_message();
    assert!(
        m.contains("could not get an answer") && m.contains("certificate"),
        "{m}"
    );
    assert!(
        f.seen().is_empty(),
        "no request may reach an unverified endpoint"
    );
}

#[tokio::test]
async fn offline_evaluation_does_not_call_the_function() {
    let f = StandIn::start(true, None, None, simple(json!({"allow": false}))).await;
    let s = set(&policy_yaml(&f, ""));
    let d = s
        .evaluate_with(
            &review("create-3-replicas", |_| {}),
            &EvalOptions { offline: true },
        )
        .await;
    assert!(d.allowed());
    assert_eq!(d.skipped.len(), 1);
    assert_eq!(
        d.skipped[0].message,
        format!(
            "policy remote forwards to 127.0.0.1:{} and is not called offline",
            f.addr.port()
        )
    );
    assert_eq!(f.accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn forward_through_the_real_webhook_server() {
    let f = StandIn::start(
        true,
        Some(KEY),
        None,
        full_review(false, "deployments are frozen", &[]),
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let yaml = policy_yaml(
        &f,
        &format!(
            "\n      headers:\n        x-functions-key: {{file: '{}'}}",
            key.display()
        ),
    );
    let s = TestServer::start_with(Some(&yaml), |_| {}).await;
    let (status, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(status, 200);
    let r = &body["response"];
    assert_eq!(r["uid"], "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d02");
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["message"],
        format!(
            "Deployment app-ns/alpine-deploy: deployments are frozen (policy remote, 127.0.0.1:{})",
            f.addr.port()
        )
    );
    // Several admissions through the webhook share one connection to the function.
    for _ in 0..3 {
        let (_, body) = s.post(example_review("create-3-replicas", |_| {})).await;
        assert_eq!(body["response"]["allowed"], false);
    }
    assert_eq!(f.seen().len(), 4);
    assert!(f.seen().iter().all(|s| s.headers["x-functions-key"] == KEY));
    assert_eq!(f.accepted.load(Ordering::SeqCst), 1);
}

/// `policies/examples/forward.yaml` through the real binary: `gatehouse review` (which calls
/// out, unlike `check`) with the example's URLs pointed at stand-ins, its key file written and
/// its environment variable set.
#[tokio::test]
async fn the_forward_example_policies_call_their_functions() {
    let freeze = StandIn::start(
        false,
        Some(KEY),
        None,
        simple(json!({"allow": "false", "message": "change freeze"})),
    )
    .await;
    let cost = StandIn::start(false, None, None, Arc::new(|_: &Value| (503u16, json!({})))).await;
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path());
    let example =
        std::fs::read_to_string(common::repo().join("policies/examples/forward.yaml")).unwrap();
    let rewritten = example
        .replace(
            "https://gatehouse-freeze.azurewebsites.net/api/validate",
            &freeze.url(),
        )
        .replace(
            "https://service-abc123-1250000000.gz.apigw.tencentcs.com/release/cost-check",
            &cost.url(),
        )
        .replace(
            "/etc/gatehouse/secrets/freeze-function-key",
            &key.display().to_string(),
        );
    assert_ne!(rewritten, example);
    let policies = dir.path().join("forward.yaml");
    std::fs::write(&policies, rewritten).unwrap();
    let review_file = dir.path().join("review.json");
    std::fs::write(
        &review_file,
        example_review("create-3-replicas", |v| {
            v["request"]["namespace"] = json!("prod-shop");
            v["request"]["object"]["metadata"]["namespace"] = json!("prod-shop");
        }),
    )
    .unwrap();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .env("GATEHOUSE_POLICIES", &policies)
            .env("COST_CHECK_API_KEY", "cost-key")
            .env("RUST_LOG", "error")
            .args(["review", review_file.to_str().unwrap()])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(
        v["response"]["status"]["message"],
        format!(
            "Deployment prod-shop/alpine-deploy: change freeze (policy change-freeze, 127.0.0.1:{})",
            freeze.addr.port()
        )
    );
    assert_eq!(
        v["response"]["warnings"],
        json!([format!(
            "policy cost-check could not get an answer from 127.0.0.1:{} (it answered HTTP 503 Service Unavailable); allowed because it fails open",
            cost.addr.port()
        )])
    );
    assert_eq!(freeze.seen()[0].headers["x-functions-key"], KEY);
    assert_eq!(cost.seen()[0].headers["x-api-key"], "cost-key");
}

#[test]
fn serve_refuses_to_start_without_a_header_file_or_with_too_long_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    let policies = dir.path().join("fwd.yaml");
    let run = |text: &str| {
        std::fs::write(&policies, text).unwrap();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .env("GATEHOUSE_POLICIES", &policies)
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_LIMITS__REQUEST_TIMEOUT", "4s")
            .env("RUST_LOG", "error")
            .arg("serve")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // It must stop by itself; a server that started anyway is killed and fails the test.
        let started = std::time::Instant::now();
        while child.try_wait().unwrap().is_none() {
            if started.elapsed() > Duration::from_secs(60) {
                child.kill().unwrap();
                panic!("gatehouse serve started despite the bad forward policy");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = dir.path().join("no-such-key");
    let (code, stderr) = run(&format!(
        "- name: fn\n  kind: forward\n  match: {{resources: [pods]}}\n  params: {{url: 'https://fn.example.com/api', headers: {{x-functions-key: {{file: '{}'}}}}}}\n",
        missing.display()
    ));
    assert_eq!(code, Some(2));
    assert!(
        stderr
            .contains("fwd.yaml: policy \"fn\": params.headers.x-functions-key.file: cannot read")
            && stderr.contains("no-such-key"),
        "{stderr}"
    );
    let (code, stderr) = run(
        "- name: fn\n  kind: forward\n  match: {resources: [pods]}\n  params: {url: 'https://fn.example.com/api', timeout: 5s}\n",
    );
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("policy \"fn\": params.timeout: the forward policies' timeouts add up to 5s, which must be below limits.request_timeout (4s)"),
        "{stderr}"
    );
}
