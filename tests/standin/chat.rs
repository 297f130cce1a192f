//! A stand-in chat webhook (Slack-compatible incoming webhook) on 127.0.0.1: records each
//! JSON body and answers `ok` as Slack does; a body without a string `text` is a 400.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use serde_json::Value;

struct Shared {
    received: Mutex<Vec<(String, Value)>>,
    changed: tokio::sync::Notify,
}

/// The running stand-in.
pub struct ChatStandIn {
    /// The webhook URL, with a secret-looking path.
    pub url: String,
    shared: Arc<Shared>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for ChatStandIn {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The path part of the URL: like Slack's, it is the credential.
pub const SECRET_PATH: &str = "/services/T000/B000/s3cr3tW3bh00kPath";

impl ChatStandIn {
    /// Starts it.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            received: Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
        });
        let app = Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        Self {
            url: format!("http://127.0.0.1:{}{SECRET_PATH}", addr.port()),
            shared,
            stop: Some(stop),
        }
    }

    /// Waits for `n` messages; returns their `text`s.
    pub async fn wait_texts(&self, n: usize) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + super::twilio::WAIT;
        loop {
            let notified = self.shared.changed.notified();
            {
                let r = self.shared.received.lock().unwrap();
                if r.len() >= n {
                    return r
                        .iter()
                        .map(|(_, v)| v["text"].as_str().unwrap_or_default().to_owned())
                        .collect();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!("chat stand-in: no {n} messages in time");
            }
        }
    }

    /// Paths the messages were posted to.
    pub fn paths(&self) -> Vec<String> {
        self.shared
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(p, _)| p.clone())
            .collect()
    }
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, &'static str) {
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let value: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if !json || !value["text"].is_string() {
        return (StatusCode::BAD_REQUEST, "invalid_payload");
    }
    shared
        .received
        .lock()
        .unwrap()
        .push((uri.path().to_owned(), value));
    shared.changed.notify_waiters();
    (StatusCode::OK, "ok")
}
