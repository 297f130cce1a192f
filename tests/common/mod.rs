//! Shared test harness: the real server on 127.0.0.1 with OS-chosen ports and TLS from a CA
//! made in the test, and an HTTPS client that verifies the certificate against that CA.
#![allow(dead_code)]

pub mod tokens;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use gatehouse::certs::{self, CertBundle, CertFiles, CertOptions};
use gatehouse::{Config, PolicySet, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The repository root (for `examples/` and `policies/`).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `gatehouse` binary, run from the repository root with no `GATEHOUSE_*` variable from the
/// caller's environment and warnings-only logs.
pub fn gatehouse() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.current_dir(repo());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
}

/// Sends SIGTERM to a child process (a `gatehouse serve` a test started).
pub fn sigterm(child: &std::process::Child) {
    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("run kill")
        .success();
    assert!(ok, "kill -TERM {}", child.id());
}

/// Waits for the child to exit, failing the test after 15 s; polls without blocking the
/// test's runtime, so the test's own clients can still close their connections.
pub async fn wait_exit(child: &mut std::process::Child) -> std::process::ExitStatus {
    let started = std::time::Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "did not exit after SIGTERM"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Reads a file under the repository root.
pub fn read(path: &str) -> Vec<u8> {
    std::fs::read(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Reads a JSON file under the repository root.
pub fn json(path: &str) -> serde_json::Value {
    serde_json::from_slice(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A CA and serving certificate for 127.0.0.1 and localhost, written to `dir`.
pub fn test_certs(dir: &Path) -> (CertBundle, CertFiles) {
    let bundle = certs::generate(&CertOptions {
        sans: vec!["localhost".into(), "127.0.0.1".into()],
        days: 1,
        ca_name: "gatehouse test CA".into(),
    })
    .expect("generate test certificates");
    let files = CertFiles::in_dir(dir);
    files.write(&bundle).expect("write test certificates");
    (bundle, files)
}

/// rustls client configuration trusting only `ca_pem`.
pub fn client_tls(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> rustls::ClientConfig {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("add CA");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(gatehouse::tls::provider())
        .with_protocol_versions(versions)
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    cfg
}

/// An HTTPS client that verifies the server against `ca_pem` (HTTP/1.1 and HTTP/2 offered).
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    gatehouse::tls::install_default_provider();
    let tls = client_tls(
        ca_pem,
        &[&rustls::version::TLS13, &rustls::version::TLS12],
        &[b"h2", b"http/1.1"],
    );
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .build()
        .expect("build client")
}

/// A running server and what a test needs to talk to it.
pub struct TestServer {
    pub addr: SocketAddr,
    pub health: SocketAddr,
    pub client: reqwest::Client,
    pub plain: reqwest::Client,
    pub ca_pem: String,
    pub files: CertFiles,
    pub state: gatehouse::api::AppState,
    pub tls: axum_server::tls_rustls::RustlsConfig,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts the server with the embedded default policies.
    pub async fn start() -> Self {
        Self::start_with(None, |_| {}).await
    }

    /// Starts the server with `policies` (YAML text; `None` for the embedded defaults) and a
    /// chance to adjust the configuration.
    pub async fn start_with(policies: Option<&str>, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with_context(policies, tweak, gatehouse::policy::LoadContext::default()).await
    }

    /// [`TestServer::start_with`] with a policy [`LoadContext`](gatehouse::policy::LoadContext)
    /// (for example an open token store); the token metrics are registered.
    pub async fn start_with_context(
        policies: Option<&str>,
        tweak: impl FnOnce(&mut Config),
        ctx: gatehouse::policy::LoadContext,
    ) -> Self {
        gatehouse::tls::install_default_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let (bundle, files) = test_certs(&dir.path().join("certs"));
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            health_listen: "127.0.0.1:0".parse().unwrap(),
            tls_cert: Some(files.cert.clone()),
            tls_key: Some(files.key.clone()),
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        if let Some(text) = policies {
            let path = dir.path().join("policies.yaml");
            std::fs::write(&path, text).expect("write policies");
            config.policies = Some(path);
        }
        tweak(&mut config);
        config.validate().expect("valid test config");
        let set = PolicySet::load_with(
            config.policies.as_deref(),
            config.excluded_namespaces.clone(),
            &ctx,
        )
        .expect("policies load");
        let tls = gatehouse::tls::load_server_config(&files.cert, &files.key).expect("tls");
        let mut server = Server::bind(&config, set, tls).expect("bind");
        server.set_load_context(ctx.clone());
        let addr = server.webhook_addr();
        let health = server.health_addr();
        let state = server.state().clone();
        state
            .metrics
            .with_registry(|r| ctx.token_store.metrics().register(r));
        let tls = server.tls().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.run(async {
            let _ = stopped.await;
        }));
        Self {
            addr,
            health,
            client: https_client(&bundle.ca_pem),
            plain: reqwest::Client::builder().no_proxy().build().unwrap(),
            ca_pem: bundle.ca_pem,
            files,
            state,
            tls,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `https://127.0.0.1:PORT{path}`
    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.addr.port())
    }

    /// `http://127.0.0.1:HEALTH_PORT{path}`
    pub fn health_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.health.port())
    }

    /// POSTs a review body to `/validate` and returns status and parsed JSON body.
    pub async fn post(
        &self,
        body: impl Into<reqwest::Body>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        self.post_to("/validate", body).await
    }

    /// POSTs to a path on the webhook listener.
    pub async fn post_to(
        &self,
        path: &str,
        body: impl Into<reqwest::Body>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let resp = self
            .client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let bytes = resp.bytes().await.expect("body");
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
            serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
        });
        (status, value)
    }

    /// Sends the shutdown signal (as SIGTERM would) without waiting; [`TestServer::shutdown`]
    /// then waits for `run` to return.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Sends the shutdown signal and waits for `run` to return.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.expect("server task"),
            None => Ok(()),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A review from `examples/reviews/NAME.json`, optionally changed by `edit`.
pub fn example_review(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut v = json(&format!("examples/reviews/{name}.json"));
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}
