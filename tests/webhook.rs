//! The webhook over real TLS on 127.0.0.1: decisions, review versions, bad input, listeners.

mod common;

use std::sync::Arc;

use common::{TestServer, example_review};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn two_replicas_are_denied_with_the_exact_message_and_uid() {
    let s = TestServer::start().await;
    let (status, body) = s.post(example_review("create-2-replicas", |_| {})).await;
    assert_eq!(status, 200);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    let r = &body["response"];
    assert_eq!(r["uid"], "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d01");
    assert_eq!(r["allowed"], false);
    assert_eq!(
        r["status"]["message"],
        "Deployment app-ns/alpine-deploy asks for 2 replicas; policy min-replicas requires at least 3"
    );
    assert_eq!(r["status"]["code"], 403);
    assert!(r.get("patch").is_none() && r.get("patchType").is_none());
}

#[tokio::test]
async fn three_replicas_are_allowed() {
    let s = TestServer::start().await;
    let (status, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["response"]["uid"],
        "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d02"
    );
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"].get("warnings").is_none());
}

#[tokio::test]
async fn missing_replicas_count_as_one_and_are_denied() {
    let s = TestServer::start().await;
    let review = example_review("create-3-replicas", |v| {
        v["request"]["object"]["spec"]
            .as_object_mut()
            .unwrap()
            .remove("replicas");
    });
    let (_, body) = s.post(review).await;
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(
        body["response"]["status"]["message"],
        "Deployment app-ns/alpine-deploy asks for 1 replica (spec.replicas unset: the API default); policy min-replicas requires at least 3"
    );
}

#[tokio::test]
async fn scaling_to_one_through_the_scale_subresource_is_denied() {
    let s = TestServer::start().await;
    let (_, body) = s.post(example_review("scale-to-1", |_| {})).await;
    assert_eq!(
        body["response"]["uid"],
        "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d05"
    );
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(
        body["response"]["status"]["message"],
        "Deployment app-ns/alpine-deploy (scale) asks for 1 replica; policy min-replicas requires at least 3"
    );
}

#[tokio::test]
async fn v1beta1_review_gets_a_v1beta1_response_with_the_uid() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post(example_review("create-2-replicas-v1beta1", |_| {}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1beta1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(
        body["response"]["uid"],
        "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d04"
    );
    assert_eq!(body["response"]["allowed"], false);
}

#[tokio::test]
async fn excluded_namespace_is_allowed() {
    let s = TestServer::start().await;
    let review = example_review("create-2-replicas", |v| {
        v["request"]["namespace"] = json!("kube-system");
        v["request"]["object"]["metadata"]["namespace"] = json!("kube-system");
    });
    let (_, body) = s.post(review).await;
    assert_eq!(body["response"]["allowed"], true);

    // The list is configurable: with it emptied, kube-system is checked like any namespace.
    let s = TestServer::start_with(None, |c| c.excluded_namespaces.clear()).await;
    let review = example_review("create-2-replicas", |v| {
        v["request"]["namespace"] = json!("kube-system")
    });
    let (_, body) = s.post(review).await;
    assert_eq!(body["response"]["allowed"], false);
}

const WARN_POLICY: &str = "
policies:
  - name: prefer-five
    kind: replicas
    action: warn
    match: {resources: [deployments]}
    params: {min: 5}
  - name: audit-ten
    kind: replicas
    action: audit
    match: {resources: [deployments]}
    params: {min: 10}
";

#[tokio::test]
async fn warn_policy_allows_with_the_warning_and_audit_policy_annotates() {
    let s = TestServer::start_with(Some(WARN_POLICY), |_| {}).await;
    let (_, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    let r = &body["response"];
    assert_eq!(r["allowed"], true);
    assert_eq!(
        r["warnings"],
        json!([
            "Deployment app-ns/alpine-deploy asks for 3 replicas; policy prefer-five requires at least 5"
        ])
    );
    assert_eq!(
        r["auditAnnotations"],
        json!({"audit-ten": "Deployment app-ns/alpine-deploy asks for 3 replicas; policy audit-ten requires at least 10"})
    );
}

#[tokio::test]
async fn delete_and_connect_are_allowed() {
    let s = TestServer::start().await;
    let (status, body) = s.post(example_review("delete", |_| {})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["response"]["uid"],
        "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d06"
    );
    assert_eq!(body["response"]["allowed"], true);

    // A policy that asks for DELETE too still passes a DELETE (there is no new object).
    let all_ops = "- name: all\n  kind: replicas\n  match: {resources: [deployments], operations: ['*']}\n  params: {min: 3}\n";
    let s = TestServer::start_with(Some(all_ops), |_| {}).await;
    let (_, body) = s.post(example_review("delete", |_| {})).await;
    assert_eq!(body["response"]["allowed"], true);
    let connect = example_review("delete", |v| {
        v["request"]["operation"] = json!("CONNECT");
        v["request"]["oldObject"] = serde_json::Value::Null;
    });
    let (_, body) = s.post(connect).await;
    assert_eq!(body["response"]["allowed"], true);
}

#[tokio::test]
async fn malformed_json_is_a_400_with_a_reason() {
    let s = TestServer::start().await;
    let (status, body) = s.post("{\"apiVersion\": ").await;
    assert_eq!(status, 400);
    let msg = body["error"].as_str().unwrap();
    assert!(msg.starts_with("body is not an AdmissionReview"), "{msg}");

    let (status, body) = s.post(r#"{"apiVersion":"v1","kind":"Pod"}"#).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "kind is `Pod`, expected AdmissionReview");

    let (status, body) = s
        .post(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"], "AdmissionReview has no request");

    // The server is still answering after the bad requests.
    let (status, _) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oversize_body_is_a_413() {
    let s = TestServer::start_with(None, |c| c.limits.max_body_bytes = 8 * 1024).await;
    let big = example_review("create-3-replicas", |v| {
        v["request"]["object"]["metadata"]["annotations"]["filler"] = json!("x".repeat(16 * 1024));
    });
    let (status, _) = s.post(big).await;
    assert_eq!(status, 413);
    let (status, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn default_body_limit_takes_a_seven_mib_review() {
    let s = TestServer::start().await;
    // An object of about 6 MiB (object and oldObject may each be up to 3 MiB) is served.
    let review = example_review("create-3-replicas", |v| {
        v["request"]["object"]["metadata"]["annotations"]["filler"] =
            json!("x".repeat(6 * 1024 * 1024));
    });
    let (status, body) = s.post(review).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
    let review = example_review("create-3-replicas", |v| {
        v["request"]["object"]["metadata"]["annotations"]["filler"] =
            json!("x".repeat(8 * 1024 * 1024));
    });
    let (status, _) = s.post(review).await;
    assert_eq!(status, 413);
}

#[tokio::test]
async fn timeout_query_from_the_api_server_is_accepted() {
    let s = TestServer::start().await;
    let (status, body) = s
        .post_to(
            "/validate?timeout=10s",
            example_review("create-2-replicas", |_| {}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
}

#[tokio::test]
async fn plain_http_to_the_tls_port_gets_no_http_answer() {
    let s = TestServer::start().await;
    let mut stream = tokio::net::TcpStream::connect(s.addr).await.unwrap();
    let body = example_review("create-2-replicas", |_| {});
    let head = format!(
        "POST /validate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(&body).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut answer),
    )
    .await;
    assert!(read.is_ok(), "the server should close the connection");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        !text.contains("HTTP/1."),
        "no HTTP answer on the TLS port: {text:?}"
    );
    assert!(!text.contains("allowed"), "{text:?}");

    let plain = s
        .plain
        .post(format!("http://127.0.0.1:{}/validate", s.addr.port()))
        .body(body)
        .send()
        .await;
    assert!(plain.is_err(), "a plain-HTTP client gets no response");
}

#[tokio::test]
async fn tls12_and_tls13_with_http2_and_http1_via_alpn() {
    let s = TestServer::start().await;
    let body = example_review("create-3-replicas", |_| {});
    for (versions, alpn, expect) in [
        (
            vec![&rustls::version::TLS13],
            vec![&b"h2"[..]],
            reqwest::Version::HTTP_2,
        ),
        (
            vec![&rustls::version::TLS12],
            vec![&b"h2"[..]],
            reqwest::Version::HTTP_2,
        ),
        (
            vec![&rustls::version::TLS13],
            vec![&b"http/1.1"[..]],
            reqwest::Version::HTTP_11,
        ),
    ] {
        let tls = common::client_tls(&s.ca_pem, &versions, &alpn);
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy();
        if expect == reqwest::Version::HTTP_11 {
            builder = builder.http1_only();
        }
        let client = builder.build().unwrap();
        let resp = client
            .post(s.url("/validate"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.version(), expect);
        assert_eq!(resp.status(), 200);
    }
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_ca_is_refused() {
    let s = TestServer::start().await;
    let other = common::test_certs(&s.dir.path().join("other")).0;
    let client = common::https_client(&other.ca_pem);
    let err = client
        .post(s.url("/validate"))
        .body(example_review("create-3-replicas", |_| {}))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn health_readiness_and_metrics_on_the_plain_listener() {
    let s = TestServer::start().await;
    let get = |path: &str| s.plain.get(s.health_url(path)).send();
    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 200);

    s.post(example_review("create-2-replicas", |_| {})).await;
    s.post(example_review("create-3-replicas", |_| {})).await;
    s.post("not json").await;
    let text = get("/metrics").await.unwrap().text().await.unwrap();
    assert!(
        text.contains("gatehouse_admissions_total{decision=\"denied\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gatehouse_admissions_total{decision=\"allowed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(
            "gatehouse_policy_evaluations_total{policy=\"min-replicas\",result=\"deny\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "gatehouse_policy_evaluations_total{policy=\"min-replicas\",result=\"pass\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("gatehouse_rejected_requests_total{reason=\"malformed\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gatehouse_admission_duration_seconds_count 2"),
        "{text}"
    );
    // The webhook is not served on the health port.
    let r = s
        .plain
        .post(s.health_url("/validate"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn shutdown_marks_not_ready_and_stops_accepting() {
    let s = TestServer::start().await;
    let addr = s.addr;
    let ready = s.state.ready.clone();
    assert!(ready.load(std::sync::atomic::Ordering::Relaxed));
    tokio::time::timeout(std::time::Duration::from_secs(10), s.shutdown())
        .await
        .expect("shutdown finishes in time")
        .expect("clean exit");
    assert!(!ready.load(std::sync::atomic::Ordering::Relaxed));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn a_panicking_handler_answers_500_and_the_router_keeps_serving() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let metrics = Arc::new(gatehouse::metrics::Metrics::new());
    let routes = axum::Router::new()
        .route(
            "/boom",
            axum::routing::post(|| async { panic!("boom") as &'static str }),
        )
        .route("/fine", axum::routing::post(|| async { "fine" }));
    let limits = gatehouse::api::RouteLimits {
        max_body_bytes: 1024,
        request_timeout: std::time::Duration::from_secs(1),
        max_concurrent_requests: 8,
        max_inflight_body_bytes: 1 << 20,
    };
    let app = gatehouse::api::harden(routes, limits, metrics.clone());
    let resp = app
        .clone()
        .oneshot(Request::post("/boom").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 500);
    let resp = app
        .oneshot(Request::post("/fine").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        metrics
            .encode()
            .contains("gatehouse_rejected_requests_total{reason=\"panic\"} 1")
    );
}

#[tokio::test]
async fn router_answers_without_a_socket() {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;
    let state = gatehouse::api::AppState::new(gatehouse::PolicySet::load(None, vec![]).unwrap());
    let limits = gatehouse::api::RouteLimits {
        max_body_bytes: 1 << 20,
        request_timeout: std::time::Duration::from_secs(1),
        max_concurrent_requests: 8,
        max_inflight_body_bytes: 1 << 20,
    };
    let app = gatehouse::api::router(state, limits);
    let resp = app
        .oneshot(
            Request::post("/validate")
                .body(Body::from(example_review("create-2-replicas", |_| {})))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["response"]["allowed"], false);
}
