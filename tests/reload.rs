//! Live reload on the real server under load. The certificate and the policies live in
//! directories laid out as the kubelet lays out a Secret or ConfigMap volume (`tls.crt ->
//! ..data/tls.crt`, `..data -> ..<generation>`), and are replaced the way it replaces them: a
//! new generation directory, then one atomic rename of the `..data` symlink. Meanwhile clients
//! keep posting reviews, each on a new connection and on a kept-alive one.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use gatehouse::certs::{self, CertBundle, CertOptions};
use gatehouse::{Config, PolicySet, Server};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

/// A directory updated like a projected Secret/ConfigMap volume.
struct AtomicDir {
    root: PathBuf,
    generation: usize,
    names: Vec<String>,
}

impl AtomicDir {
    fn new(root: &Path, files: &[(&str, &[u8])]) -> Self {
        std::fs::create_dir_all(root).unwrap();
        let mut dir = Self {
            root: root.to_path_buf(),
            generation: 0,
            names: Vec::new(),
        };
        dir.swap(files);
        dir
    }

    /// Writes the files into a new hidden generation directory and points `..data` at it
    /// with one rename; then adds the visible links for new names, removes those of names
    /// gone, and deletes the previous generation, as the kubelet does.
    fn swap(&mut self, files: &[(&str, &[u8])]) {
        self.generation += 1;
        let gen_name = format!("..gen_{}", self.generation);
        let gen_dir = self.root.join(&gen_name);
        std::fs::create_dir(&gen_dir).unwrap();
        for (name, bytes) in files {
            std::fs::write(gen_dir.join(name), bytes).unwrap();
        }
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&gen_name, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
        for (name, _) in files {
            if !self.names.iter().any(|n| n == name) {
                std::os::unix::fs::symlink(format!("..data/{name}"), self.root.join(name)).unwrap();
            }
        }
        for old in &self.names {
            if !files.iter().any(|(n, _)| n == old) {
                std::fs::remove_file(self.root.join(old)).unwrap();
            }
        }
        self.names = files.iter().map(|(n, _)| (*n).to_owned()).collect();
        if self.generation > 1 {
            let old = self.root.join(format!("..gen_{}", self.generation - 1));
            std::fs::remove_dir_all(old).unwrap();
        }
    }
}

fn bundle(ca_name: &str) -> CertBundle {
    certs::generate(&CertOptions {
        sans: vec!["localhost".into(), "127.0.0.1".into()],
        days: 1,
        ca_name: ca_name.into(),
    })
    .unwrap()
}

fn leaf_der(b: &CertBundle) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(b.cert_pem.as_bytes()).unwrap()
}

fn tls_files(b: &CertBundle) -> [(&'static str, Vec<u8>); 2] {
    [
        ("tls.crt", b.cert_pem.clone().into_bytes()),
        ("tls.key", b.key_pem.clone().into_bytes()),
    ]
}

fn as_refs<'a>(files: &'a [(&'static str, Vec<u8>)]) -> Vec<(&'static str, &'a [u8])> {
    files.iter().map(|(n, b)| (*n, b.as_slice())).collect()
}

const MIN: &str = "policies:\n  - name: min-replicas\n    kind: replicas\n    match:\n      resources: [apps/deployments, apps/deployments/scale]\n    params: {min: MIN}\n";

fn min_policy(min: u32) -> Vec<u8> {
    MIN.replace("MIN", &min.to_string()).into_bytes()
}

struct Running {
    addr: SocketAddr,
    health: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn start(cert_dir: &Path, policy_dir: &Path) -> Running {
    gatehouse::tls::install_default_provider();
    let config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        health_listen: "127.0.0.1:0".parse().unwrap(),
        tls_cert: Some(cert_dir.join("tls.crt")),
        tls_key: Some(cert_dir.join("tls.key")),
        policies: Some(policy_dir.to_path_buf()),
        reload_interval: Duration::from_millis(100),
        data_dir: cert_dir.join("unused"),
        ..Config::default()
    };
    let set = PolicySet::load(
        config.policies.as_deref(),
        config.excluded_namespaces.clone(),
    )
    .unwrap();
    let tls = gatehouse::tls::load_server_config(
        config.tls_cert.as_ref().unwrap(),
        config.tls_key.as_ref().unwrap(),
    )
    .unwrap();
    let server = Server::bind(&config, set, tls).unwrap();
    let (addr, health) = (server.webhook_addr(), server.health_addr());
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addr,
        health,
        stop: Some(stop),
        task,
    }
}

/// Trusts every CA in `cas` (a caBundle may hold the old and the new CA during a rotation).
fn client_config(cas: &[&CertBundle], alpn: &[&[u8]]) -> rustls::ClientConfig {
    let pem: String = cas.iter().map(|b| b.ca_pem.as_str()).collect();
    common::client_tls(
        &pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        alpn,
    )
}

/// A fresh TLS connection: which leaf certificate did the server present?
async fn presented_leaf(
    addr: SocketAddr,
    cas: &[&CertBundle],
) -> (
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config(cas, &[b"http/1.1"])));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let leaf = stream.get_ref().1.peer_certificates().unwrap()[0]
        .clone()
        .into_owned();
    (leaf, stream)
}

/// One HTTP/1.1 POST on an open TLS stream; returns status and body.
async fn post_on(
    stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    body: &[u8],
) -> (u16, serde_json::Value) {
    let head = format!(
        "POST /validate HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    stream.flush().await.unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (header_end, content_length) = loop {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed before the response");
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..pos]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse::<usize>().unwrap())
                .expect("content-length");
            break (pos + 4, len);
        }
    };
    while buf.len() < header_end + content_length {
        let n = stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "connection closed in the body");
        buf.extend_from_slice(&chunk[..n]);
    }
    let status: u16 = String::from_utf8_lossy(&buf[9..12]).parse().unwrap();
    let body = serde_json::from_slice(&buf[header_end..header_end + content_length]).unwrap();
    (status, body)
}

/// The value of one sample line on `/metrics` (0 when absent).
async fn metric(health: SocketAddr, sample: &str) -> u64 {
    let text = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .get(format!("http://{health}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(sample))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits (generously) until a reload counter reaches `n`. The watcher polls every 100 ms.
async fn wait_metric(health: SocketAddr, sample: &str, n: u64) {
    for _ in 0..600 {
        if metric(health, sample).await >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{sample} did not reach {n} within 30 s");
}

const TLS_OK: &str = "gatehouse_reloads_total{source=\"tls\",result=\"success\"}";
const TLS_FAIL: &str = "gatehouse_reloads_total{source=\"tls\",result=\"failure\"}";
const POL_OK: &str = "gatehouse_reloads_total{source=\"policies\",result=\"success\"}";
const POL_FAIL: &str = "gatehouse_reloads_total{source=\"policies\",result=\"failure\"}";

/// Clients posting reviews until told to stop; every answer must be a 200 review with the
/// request's uid.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, cas: &[&CertBundle]) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Three HTTP/1.1 clients that open a new connection for every request (they meet
        // every certificate swap in a handshake), one that keeps its HTTP/2 connection.
        for worker in 0..4u32 {
            let fresh = worker < 3;
            let alpn: &[&[u8]] = if fresh { &[b"http/1.1"] } else { &[b"h2"] };
            let mut builder = reqwest::Client::builder()
                .use_preconfigured_tls(client_config(cas, alpn))
                .no_proxy();
            if fresh {
                builder = builder.pool_max_idle_per_host(0);
            }
            let client = builder.build().unwrap();
            let (stop, ok, failures) = (stop.clone(), ok.clone(), failures.clone());
            tasks.push(tokio::spawn(async move {
                // Bounded: stops when told, and in any case after 20 000 requests.
                for i in 0..20_000u32 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let uid = format!("load-{worker}-{i}");
                    let body = common::example_review("create-3-replicas", |v| {
                        v["request"]["uid"] = serde_json::json!(uid);
                    });
                    let result = client
                        .post(format!("https://localhost:{}/validate", addr.port()))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let outcome = match result {
                        Ok(resp) if resp.status() == 200 => {
                            match resp.json::<serde_json::Value>().await {
                                Ok(v) if v["response"]["uid"] == uid.as_str() => Ok(()),
                                Ok(v) => Err(format!("{uid}: wrong answer {v}")),
                                Err(e) => Err(format!("{uid}: body: {e}")),
                            }
                        }
                        Ok(resp) => Err(format!("{uid}: status {}", resp.status())),
                        Err(e) => Err(format!("{uid}: {e:?}")),
                    };
                    match outcome {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => failures.lock().unwrap().push(e),
                    }
                }
            }));
        }
        Self {
            stop,
            ok,
            failures,
            tasks,
        }
    }

    fn done(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until at least `more` further requests have succeeded (or any failed).
    async fn advance(&self, more: u64) {
        let target = self.done() + more;
        for _ in 0..3000 {
            if self.done() >= target || !self.failures.lock().unwrap().is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the load made no progress");
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second, third) = (bundle("CA one"), bundle("CA two"), bundle("CA three"));
    let first_files = tls_files(&first);
    let mut certs_dir = AtomicDir::new(&dir.path().join("tls"), &as_refs(&first_files));
    let policies = min_policy(3);
    let _policy_dir = AtomicDir::new(
        &dir.path().join("policies"),
        &[("policies.yaml", policies.as_slice())],
    );
    let server = start(&dir.path().join("tls"), &dir.path().join("policies")).await;
    let cas = [&first, &second, &third];

    let load = Load::start(server.addr, &cas);
    load.advance(30).await;

    // A connection opened before the rotation, with the first certificate.
    let (leaf, mut kept) = presented_leaf(server.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&first));
    let review = common::read("examples/reviews/create-3-replicas.json");
    assert_eq!(post_on(&mut kept, &review).await.0, 200);

    // Rotate: new connections get the second certificate, without a restart.
    let second_files = tls_files(&second);
    certs_dir.swap(&as_refs(&second_files));
    wait_metric(server.health, TLS_OK, 1).await;
    let (leaf, _) = presented_leaf(server.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&second));
    load.advance(30).await;

    // The connection opened before still works, on its first certificate.
    let (status, body) = post_on(&mut kept, &review).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
    let old = kept.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_eq!(old, leaf_der(&first));

    // A broken pair (the third certificate with the second key) is refused; the second
    // certificate keeps serving new connections.
    let broken = [
        ("tls.crt", third.cert_pem.clone().into_bytes()),
        ("tls.key", second.key_pem.clone().into_bytes()),
    ];
    certs_dir.swap(&as_refs(&broken));
    wait_metric(server.health, TLS_FAIL, 1).await;
    assert_eq!(metric(server.health, TLS_OK).await, 1);
    assert_eq!(
        metric(
            server.health,
            "gatehouse_reload_last_successful{source=\"tls\"}"
        )
        .await,
        0
    );
    let (leaf, _) = presented_leaf(server.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&second));
    load.advance(30).await;

    // So is garbage.
    let garbage = [
        ("tls.crt", b"not a certificate".to_vec()),
        ("tls.key", b"not a key".to_vec()),
    ];
    certs_dir.swap(&as_refs(&garbage));
    wait_metric(server.health, TLS_FAIL, 2).await;
    let (leaf, _) = presented_leaf(server.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&second));

    // And a good pair after a refused one is taken.
    let third_files = tls_files(&third);
    certs_dir.swap(&as_refs(&third_files));
    wait_metric(server.health, TLS_OK, 2).await;
    let (leaf, _) = presented_leaf(server.addr, &cas).await;
    assert_eq!(leaf, leaf_der(&third));
    load.advance(30).await;

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 150, "{ok}");
    let mut server = server;
    let _ = server.stop.take().map(|s| s.send(()));
    server.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_reload_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let tls = bundle("CA");
    let files = tls_files(&tls);
    let _certs_dir = AtomicDir::new(&dir.path().join("tls"), &as_refs(&files));
    let three = min_policy(3);
    let mut policy_dir = AtomicDir::new(
        &dir.path().join("policies"),
        &[("policies.yaml", three.as_slice())],
    );
    let server = start(&dir.path().join("tls"), &dir.path().join("policies")).await;
    let client = common::https_client(&tls.ca_pem);
    let url = format!("https://127.0.0.1:{}/validate", server.addr.port());
    let review = common::read("examples/reviews/create-3-replicas.json");
    let allowed = || async {
        let v: serde_json::Value = client
            .post(&url)
            .body(review.clone())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (
            v["response"]["allowed"].as_bool().unwrap(),
            v["response"]["status"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    assert!(allowed().await.0);

    let load = Load::start(server.addr, &[&tls]);
    load.advance(30).await;

    // A valid new set replaces the old one: 3 replicas are now too few.
    let five = min_policy(5);
    policy_dir.swap(&[("policies.yaml", five.as_slice())]);
    wait_metric(server.health, POL_OK, 1).await;
    let (ok, message) = allowed().await;
    assert!(!ok);
    assert!(message.contains("requires at least 5"), "{message}");
    load.advance(30).await;

    // An invalid set (a typo in a parameter) is refused; min 5 stays in force.
    let typo = String::from_utf8(five.clone())
        .unwrap()
        .replace("min: 5", "minimum: 2");
    policy_dir.swap(&[("policies.yaml", typo.as_bytes())]);
    wait_metric(server.health, POL_FAIL, 1).await;
    assert_eq!(
        metric(
            server.health,
            "gatehouse_reload_last_successful{source=\"policies\"}"
        )
        .await,
        0
    );
    let (ok, message) = allowed().await;
    assert!(!ok);
    assert!(message.contains("requires at least 5"), "{message}");
    load.advance(30).await;

    // A second file whose policy name clashes with the first: refused as a whole.
    let clash = min_policy(1);
    policy_dir.swap(&[("a.yaml", five.as_slice()), ("b.yaml", clash.as_slice())]);
    wait_metric(server.health, POL_FAIL, 2).await;
    assert!(!allowed().await.0);

    // A file that reloads empty (truncated, or every policy deleted) is refused, not taken as
    // "no policies": min 5 stays in force.
    policy_dir.swap(&[("policies.yaml", b"# emptied\n".as_slice())]);
    wait_metric(server.health, POL_FAIL, 3).await;
    let (ok, message) = allowed().await;
    assert!(!ok);
    assert!(message.contains("requires at least 5"), "{message}");

    // Back to a valid set: taken.
    policy_dir.swap(&[("policies.yaml", three.as_slice())]);
    wait_metric(server.health, POL_OK, 2).await;
    assert!(allowed().await.0);
    load.advance(30).await;

    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok >= 120, "{ok}");
    let mut server = server;
    let _ = server.stop.take().map(|s| s.send(()));
    server.task.await.unwrap().unwrap();
}
