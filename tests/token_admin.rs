//! The token endpoint over real TLS: bearer key required (401 otherwise), bad requests named
//! (400), tokens issued (201, `Cache-Control: no-store`) into the store the webhook uses, and
//! a store that is gone answers 503.

mod common;

use std::time::Duration;

use common::tokens::{TOKEN_POLICIES, TestStore, review_with_token};
use common::{TestServer, test_certs};
use gatehouse::Config;
use gatehouse::metrics::Metrics;
use gatehouse::store::Tokens;
use gatehouse::token_admin::AdminServer;
use serde_json::json;

const KEY: &str = "0123456789abcdef0123456789abcdef-pipeline";

struct Endpoint {
    url: String,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: tokio::sync::oneshot::Sender<()>,
}

async fn endpoint(tokens: Tokens, tweak: impl FnOnce(&mut Config)) -> Endpoint {
    gatehouse::tls::install_default_provider();
    let dir = tempfile::tempdir().unwrap();
    let (bundle, files) = test_certs(&dir.path().join("certs"));
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let mut config = Config::default();
    config.token_admin.listen = Some("127.0.0.1:0".parse().unwrap());
    config.token_admin.key_file = Some(key_file);
    tweak(&mut config);
    let tls = gatehouse::tls::load_server_config(&files.cert, &files.key).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let server =
        AdminServer::bind(&config, tokens, tls, std::sync::Arc::new(Metrics::new())).unwrap();
    let url = format!("https://127.0.0.1:{}/v1/tokens", server.addr().port());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server.run(
        async {
            let _ = stopped.await;
        },
        Duration::from_secs(1),
    ));
    Endpoint {
        url,
        client: common::https_client(&bundle.ca_pem),
        _dir: dir,
        stop,
    }
}

impl Endpoint {
    async fn post(
        &self,
        key: Option<&str>,
        body: &str,
    ) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
        let mut req = self.client.post(&self.url).body(body.to_owned());
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        (
            status,
            headers,
            resp.json().await.unwrap_or(serde_json::Value::Null),
        )
    }
}

#[tokio::test]
async fn the_endpoint_issues_tokens_the_webhook_accepts() {
    let s = TestStore::sqlite();
    let ctx = s.context(Duration::from_secs(10)).await;
    let tokens = ctx.token_store.tokens().unwrap().clone();
    let ep = endpoint(tokens.clone(), |_| {}).await;
    let webhook = TestServer::start_with_context(Some(TOKEN_POLICIES), |_| {}, ctx).await;

    // No key, a wrong key, a key one character short, another scheme: 401, nothing issued.
    for key in [None, Some("wrong"), Some(&KEY[..KEY.len() - 1])] {
        let (status, headers, body) = ep.post(key, "{}").await;
        assert_eq!(status, 401, "{key:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(body, json!({"error": "missing or wrong bearer key"}));
    }
    let resp = ep
        .client
        .post(&ep.url)
        .basic_auth("admin", Some(KEY))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(tokens.list().await.unwrap().is_empty());

    // Bad requests name the field.
    for (body, expected) in [
        (r#"{"ttl": "soon"}"#, "ttl: `soon` is not a duration"),
        (
            r#"{"ttl": "2d"}"#,
            "ttl: 172800s is longer than token_admin.max_ttl (86400s)",
        ),
        (r#"{"count": 101}"#, "count: at most 100 tokens per request"),
        (r#"{"count": 0}"#, "count: 0 is not between 1"),
        (
            r#"{"namespace": "Bad NS"}"#,
            "namespace: `Bad NS` is not a namespace name",
        ),
        (r#"{"tll": "1h"}"#, "unknown field `tll`"),
        (r#"{"count": "two"}"#, "count: invalid type"),
        ("not json", "expected ident"),
    ] {
        let (status, _, v) = ep.post(Some(KEY), body).await;
        assert_eq!(status, 400, "{body}");
        assert!(
            v["error"].as_str().unwrap().contains(expected),
            "{body}: {v}"
        );
    }

    // An empty body: one token, valid for an hour, any namespace.
    let (status, headers, v) = ep.post(Some(KEY), "").await;
    assert_eq!(status, 201, "{v}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(v["tokens"].as_array().unwrap().len(), 1);
    assert_eq!(v["tokens"][0]["namespace"], serde_json::Value::Null);

    let (status, _, v) = ep
        .post(
            Some(KEY),
            r#"{"count": 2, "ttl": 600, "namespace": "app-ns", "note": "pipeline 42"}"#,
        )
        .await;
    assert_eq!(status, 201, "{v}");
    let issued = v["tokens"].as_array().unwrap();
    assert_eq!(issued.len(), 2);
    let token = issued[0]["token"].as_str().unwrap();
    assert!(token.starts_with("gate_"));
    assert!(issued[0]["expiresAt"].as_str().unwrap().ends_with('Z'));
    let listed = tokens.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert_eq!(listed[1].note, "pipeline 42");
    assert_eq!(listed[1].expires_at - listed[1].created_at, 600);

    let (_, body) = webhook
        .post(review_with_token("admin-1", Some(token), false))
        .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    let (_, body) = webhook
        .post(review_with_token("admin-2", Some(token), false))
        .await;
    assert_eq!(body["response"]["allowed"], false, "{body}");

    // The store is gone: 503, no detail.
    tokens.close().await;
    let (status, _, v) = ep.post(Some(KEY), "{}").await;
    assert_eq!(status, 503);
    assert_eq!(v, json!({"error": "token store unavailable"}));
    let _ = ep.stop.send(());
    s.cleanup().await;
}

#[tokio::test]
async fn a_short_or_missing_key_file_stops_the_start() {
    let s = TestStore::sqlite();
    let tokens = s.open(Duration::from_secs(5)).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = test_certs(&dir.path().join("certs"));
    let tls = gatehouse::tls::load_server_config(&files.cert, &files.key).unwrap();
    let tls = axum_server::tls_rustls::RustlsConfig::from_config(tls);
    let short = dir.path().join("short.key");
    std::fs::write(&short, "too-short").unwrap();
    for (file, expected) in [
        (short.clone(), "the key must be at least 32 characters"),
        (dir.path().join("missing.key"), "cannot read"),
    ] {
        let mut config = Config::default();
        config.token_admin.listen = Some("127.0.0.1:0".parse().unwrap());
        config.token_admin.key_file = Some(file.clone());
        let err = AdminServer::bind(
            &config,
            tokens.clone(),
            tls.clone(),
            std::sync::Arc::new(Metrics::new()),
        )
        .err()
        .expect("refused")
        .to_string();
        assert!(
            err.starts_with(&format!("token_admin.key_file {}: ", file.display())),
            "{err}"
        );
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("too-short"), "the key is not shown: {err}");
    }
    tokens.close().await;
}
