//! Notifications from the real `gatehouse serve` binary: configured only through Twilio's
//! environment variables (the token from a file), it delivers the SMS still queued when it
//! gets SIGTERM before it exits; without Twilio it logs the text it would have sent.

mod common;
mod standin;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use standin::twilio::{ACCOUNT_SID, AUTH_TOKEN, FROM, TwilioStandIn};

const OPS: &str = "+15551230002";

fn gatehouse(data: &std::path::Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    cmd.current_dir(common::repo());
    for (k, _) in std::env::vars() {
        if k.starts_with("GATEHOUSE_") || k.starts_with("TWILIO_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info")
        .env("XDG_DATA_HOME", data)
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A started `gatehouse serve`: its webhook port, its CA, and its stderr as it comes.
struct Running {
    child: Child,
    port: u16,
    ca: String,
    stderr: Arc<Mutex<String>>,
}

impl Running {
    fn start(mut cmd: Command, data: &std::path::Path) -> Self {
        let mut child = cmd.spawn().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => panic!("serve exited early: {}", stderr.lock().unwrap()),
            };
            if let Some(rest) = line.strip_prefix("Gatehouse is listening on https://localhost:") {
                break rest.trim_end_matches("/validate").parse().unwrap();
            }
        };
        // Keep reading stdout so the process never writes into a closed pipe.
        std::thread::spawn(move || for _ in lines {});
        let ca = std::fs::read_to_string(data.join("gatehouse/dev-certs/ca.crt")).unwrap();
        Self {
            child,
            port,
            ca,
            stderr,
        }
    }

    async fn post(&self, review: &str) -> serde_json::Value {
        let client = common::https_client(&self.ca);
        client
            .post(format!("https://127.0.0.1:{}/validate", self.port))
            .body(common::read(&format!("examples/reviews/{review}.json")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    fn sigterm(&self) {
        common::sigterm(&self.child);
    }

    /// Waits (bounded) for the exit; returns whether it was a success.
    async fn wait_exit(&mut self) -> bool {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "did not exit: {}",
                self.stderr()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn sigterm_delivers_the_queued_sms_before_exit() {
    let t = TwilioStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("twilio-token");
    std::fs::write(&token_file, format!("{AUTH_TOKEN}\n")).unwrap();
    let mut cmd = gatehouse(dir.path());
    cmd.env("TWILIO_ACCOUNT_SID", ACCOUNT_SID)
        .env("TWILIO_AUTH_TOKEN_FILE", &token_file)
        .env("TWILIO_FROM", FROM)
        .env("TWILIO_API_BASE", &t.base_url)
        .env("GATEHOUSE_SMS_TO", OPS)
        .env("GATEHOUSE_NOTIFY__CA_FILE", &t.ca_file)
        .env("GATEHOUSE_NOTIFY__CONCURRENCY", "1")
        .env("GATEHOUSE_NOTIFY__DRAIN_TIMEOUT", "25s")
        .env("GATEHOUSE_NOTIFY__REQUEST_TIMEOUT", "60s");
    t.hold();
    let mut gh = Running::start(cmd, dir.path());

    // Three notifications: the first is at Twilio, held; two wait in the queue. Each is queued
    // before its admission is answered.
    let v = gh.post("create-3-replicas").await;
    assert_eq!(v["response"]["allowed"], true);
    t.wait_received(1).await;
    assert_eq!(
        gh.post("create-2-replicas").await["response"]["allowed"],
        false
    );
    assert_eq!(gh.post("update-image").await["response"]["allowed"], true);

    gh.sigterm();
    // It is draining: still running while Twilio holds the first SMS.
    let drain_line = Instant::now() + Duration::from_secs(30);
    while !gh.stderr().contains("draining notifications") {
        assert!(Instant::now() < drain_line, "{}", gh.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        gh.child.try_wait().unwrap().is_none(),
        "exited before delivering"
    );
    t.release();
    assert!(gh.wait_exit().await, "{}", gh.stderr());

    // Exited after all three were answered 201.
    let got = t.received();
    let bodies: Vec<(Option<u16>, &str)> = got.iter().map(|r| (r.status, r.body())).collect();
    assert_eq!(bodies.len(), 3, "{got:#?}");
    assert!(
        got.iter()
            .all(|r| r.status == Some(201) && r.violations.is_empty()),
        "{got:#?}"
    );
    assert!(bodies[0].1.contains("alpine-deploy created"), "{bodies:?}");
    assert!(
        bodies[1].1.starts_with("Gatehouse: DENIED create"),
        "{bodies:?}"
    );
    assert!(
        bodies[2].1.contains("alpine:3.9.1 -> alpine:3"),
        "{bodies:?}"
    );
    let stderr = gh.stderr();
    assert!(stderr.contains("notifications drained"), "{stderr}");
    assert!(!stderr.contains(AUTH_TOKEN), "the token is in the log");
}

#[tokio::test]
async fn serve_without_twilio_logs_the_sms_it_would_send() {
    let dir = tempfile::tempdir().unwrap();
    let mut gh = Running::start(gatehouse(dir.path()), dir.path());
    assert_eq!(
        gh.post("create-3-replicas").await["response"]["allowed"],
        true
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !gh
        .stderr()
        .contains("SMS not sent: Twilio is not configured")
    {
        assert!(Instant::now() < deadline, "{}", gh.stderr());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gh.sigterm();
    assert!(gh.wait_exit().await);
    let stderr = gh.stderr();
    assert!(
        stderr.contains(
            r#"text="Gatehouse: Deployment app-ns/alpine-deploy created by kubernetes-admin\nreplicas 3; image alpine:3.9.1""#
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("Twilio is not configured: SMS notifications are written to the log"),
        "{stderr}"
    );
}
