//! Notifications through the real HTTPS server: admission reviews go in over TLS, SMS come out
//! at a Twilio stand-in on 127.0.0.1 that checks every request against the contract of
//! Twilio's Messages API (written into tests/standin/twilio.rs) and answers as Twilio does.
//!
//! "Nothing was sent" is checked without sleeping: deliveries run one at a time in queue
//! order (`notify.concurrency: 1`), so after the request under test a marker request is
//! posted, and once the marker's SMS has arrived anything the first request queued would have
//! arrived before it.

mod common;
mod standin;

use std::time::{Duration, Instant};

use common::{TestServer, example_review};
use gatehouse::Config;
use gatehouse::notify::message::{SMS_LIMIT, is_gsm7_basic};
use gatehouse::notify::settings::RetryConfig;
use gatehouse::secret::Secret;
use serde_json::json;
use standin::chat::{ChatStandIn, SECRET_PATH};
use standin::twilio::{ACCOUNT_SID, AUTH_TOKEN, FROM, Received, Reply, TwilioStandIn, segments};

const OPS: &str = "+15551230001";

fn use_twilio(c: &mut Config, t: &TwilioStandIn) {
    let n = &mut c.notify;
    n.twilio.account_sid = Some(ACCOUNT_SID.into());
    n.twilio.auth_token = Some(Secret::new(AUTH_TOKEN));
    n.twilio.from = Some(FROM.into());
    n.twilio.api_base = t.base_url.clone();
    n.ca_file = Some(t.ca_file.clone());
    n.sms_to = vec![OPS.into()];
    n.concurrency = 1;
    n.storm.max_messages = 0;
    n.retry = RetryConfig {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_secs(2),
    };
}

async fn server(t: &TwilioStandIn, tweak: impl FnOnce(&mut Config)) -> TestServer {
    standin::logs::capture();
    TestServer::start_with(None, |c| {
        use_twilio(c, t);
        tweak(c);
    })
    .await
}

/// A CREATE of a 3-replica Deployment named `name` with its own uid.
fn create(uid: &str, name: &str) -> Vec<u8> {
    example_review("create-3-replicas", |v| {
        v["request"]["uid"] = json!(uid);
        v["request"]["name"] = json!(name);
        v["request"]["object"]["metadata"]["name"] = json!(name);
    })
}

async fn post_marker(s: &TestServer, n: u32) {
    let (status, body) = s
        .post(create(&format!("marker-{n}"), &format!("marker-{n}")))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], true);
}

/// Every request keeps to Twilio's contract and to two GSM-7 segments, from our number to ops.
fn assert_contract(got: &[Received]) {
    for r in got {
        assert!(r.violations.is_empty(), "contract violations: {r:#?}");
        assert_eq!(r.field("To"), Some(OPS), "{r:#?}");
        assert_eq!(r.field("From"), Some(FROM), "{r:#?}");
        let body = r.body();
        assert!(body.chars().count() <= SMS_LIMIT, "{body}");
        assert!(is_gsm7_basic(body), "{body}");
        assert!(segments(body) <= 2, "{body}");
    }
}

async fn metrics(s: &TestServer) -> String {
    s.plain
        .get(s.health_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one sample (`name{labels}`), 0 when absent.
async fn metric(s: &TestServer, sample: &str) -> f64 {
    metrics(s)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits (bounded) until a sample reaches `value`.
async fn wait_metric(s: &TestServer, sample: &str, value: f64) {
    let deadline = Instant::now() + standin::twilio::WAIT;
    while metric(s, sample).await < value {
        assert!(
            Instant::now() < deadline,
            "{sample} never reached {value}:\n{}",
            metrics(s).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the captured log holds a line with every one of `parts`.
async fn wait_log(parts: &[&str]) -> String {
    let deadline = Instant::now() + standin::twilio::WAIT;
    loop {
        let text = standin::logs::text();
        if let Some(line) = text.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no log line with {parts:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_created_deployment_sends_one_sms_with_what_who_replicas_and_image() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |_| {}).await;
    let (_, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(body["response"]["allowed"], true);
    post_marker(&s, 1).await;
    let got = t.wait_created(2).await;
    assert_contract(&got);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        got[0].body(),
        "Gatehouse: Deployment app-ns/alpine-deploy created by kubernetes-admin\nreplicas 3; image alpine:3.9.1"
    );
    assert!(got[1].body().contains("app-ns/marker-1 created"));
    assert_eq!(
        metric(&s, "gatehouse_notifications_sent_total{channel=\"sms\"}").await,
        2.0
    );
    assert_eq!(
        metric(&s, "gatehouse_notifications_queued_total{channel=\"sms\"}").await,
        2.0
    );
    let m = metrics(&s).await;
    assert!(
        m.contains("gatehouse_notification_delivery_seconds_count{channel=\"sms\"} 2"),
        "{m}"
    );
}

#[tokio::test]
async fn an_image_update_sends_one_sms_naming_old_and_new_image() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |_| {}).await;
    let (_, body) = s.post(example_review("update-image", |_| {})).await;
    assert_eq!(body["response"]["allowed"], true);
    post_marker(&s, 1).await;
    let got = t.wait_created(2).await;
    assert_contract(&got);
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(
        got[0].body(),
        "Gatehouse: Deployment app-ns/alpine-deploy updated by kubernetes-admin\nreplicas 3; image alpine:3.9.1 -> alpine:3"
    );
}

#[tokio::test]
async fn a_deny_sends_one_sms_with_the_reason() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |_| {}).await;
    let (_, body) = s.post(example_review("create-2-replicas", |_| {})).await;
    assert_eq!(body["response"]["allowed"], false);
    // kubectl scale goes through the scale subresource; its deny is notified too.
    let (_, body) = s.post(example_review("scale-to-1", |_| {})).await;
    assert_eq!(body["response"]["allowed"], false);
    post_marker(&s, 1).await;
    let got = t.wait_created(3).await;
    assert_contract(&got);
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(
        got[0].body(),
        "Gatehouse: DENIED create of Deployment app-ns/alpine-deploy by kubernetes-admin\nreplicas 2; image alpine:3.9.1\nReason: Deployment app-ns/alpine-deploy asks for 2 replicas; policy min-replicas requires at least 3"
    );
    assert_eq!(
        got[1].body(),
        "Gatehouse: DENIED update of Deployment app-ns/alpine-deploy (scale) by kubernetes-admin\nreplicas 3 -> 1\nReason: Deployment app-ns/alpine-deploy (scale) asks for 1 replica; policy min-replicas requires at least 3"
    );
}

#[tokio::test]
async fn dry_run_requests_send_nothing() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |_| {}).await;
    for name in ["create-3-replicas", "create-2-replicas", "update-image"] {
        let (status, _) = s
            .post(example_review(name, |v| {
                v["request"]["dryRun"] = json!(true)
            }))
            .await;
        assert_eq!(status, 200);
    }
    post_marker(&s, 1).await;
    let got = t.wait_created(1).await;
    assert_eq!(got.len(), 1, "only the marker: {got:#?}");
    assert!(got[0].body().contains("marker-1"));
    assert_eq!(
        metric(&s, "gatehouse_notifications_queued_total{channel=\"sms\"}").await,
        1.0
    );
}

#[tokio::test]
async fn the_same_uid_twice_sends_one_sms() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |_| {}).await;
    for _ in 0..2 {
        let (_, body) = s.post(example_review("create-2-replicas", |_| {})).await;
        assert_eq!(body["response"]["allowed"], false, "each retry is answered");
    }
    post_marker(&s, 1).await;
    let got = t.wait_created(2).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert!(got[0].body().starts_with("Gatehouse: DENIED create"));
    assert!(got[1].body().contains("marker-1"));
}

/// The update of examples/reviews/update-image.json with the spec unchanged: only status,
/// resourceVersion, generation, managedFields and the controller's revision annotation differ.
fn bookkeeping_update() -> Vec<u8> {
    example_review("update-image", |v| {
        let mut new = v["request"]["oldObject"].clone();
        new["metadata"]["resourceVersion"] = json!("2001");
        new["metadata"]["generation"] = json!(7);
        new["metadata"]["managedFields"] =
            json!([{"manager": "kube-controller-manager", "operation": "Update"}]);
        new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("9");
        new["status"] = json!({"replicas": 3, "readyReplicas": 2, "observedGeneration": 7});
        v["request"]["object"] = new;
    })
}

#[tokio::test]
async fn an_update_of_bookkeeping_only_is_not_notified_unless_configured() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |_| {}).await;
    let (_, body) = s.post(bookkeeping_update()).await;
    assert_eq!(body["response"]["allowed"], true);
    post_marker(&s, 1).await;
    let got = t.wait_created(1).await;
    assert_eq!(got.len(), 1, "only the marker: {got:#?}");
    assert!(got[0].body().contains("marker-1"));

    // With the list of ignored fields emptied, every UPDATE counts.
    let t = TwilioStandIn::start().await;
    let s = server(&t, |c| c.notify.ignore_update_fields.clear()).await;
    s.post(bookkeeping_update()).await;
    let got = t.wait_created(1).await;
    assert_eq!(
        got[0].body(),
        "Gatehouse: Deployment app-ns/alpine-deploy updated by kubernetes-admin\nreplicas 3; image alpine:3.9.1"
    );
}

#[tokio::test]
async fn admission_answers_while_twilio_holds_its_answer() {
    let t = TwilioStandIn::start().await;
    t.hold();
    let s = server(&t, |c| c.notify.request_timeout = Duration::from_secs(60)).await;
    let (_, body) = s.post(example_review("create-3-replicas", |_| {})).await;
    assert_eq!(body["response"]["allowed"], true);
    // Twilio has the SMS request and is sitting on it.
    let held = t.wait_received(1).await;
    assert_eq!(held[0].status, None);
    // Meanwhile admissions are answered: the answer does not wait for Twilio. (The bound only
    // keeps a broken build from hanging; the proof is that Twilio has not answered yet.)
    for review in ["create-2-replicas", "update-image"] {
        let answered = tokio::time::timeout(
            Duration::from_secs(10),
            s.post(example_review(review, |_| {})),
        )
        .await
        .expect("admission answered while Twilio held its answer");
        assert_eq!(answered.0, 200);
    }
    assert!(
        t.received().iter().all(|r| r.status.is_none()),
        "Twilio had not answered anything yet"
    );
    t.release();
    let got = t.wait_created(3).await;
    assert_contract(&got);
    assert_eq!(got.len(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_and_the_sms_delivered_once() {
    let t = TwilioStandIn::start().await;
    t.plan([Reply::Error(500), Reply::Error(500)]);
    let s = server(&t, |_| {}).await;
    s.post(example_review("create-3-replicas", |_| {})).await;
    post_marker(&s, 1).await;
    let got = t.wait_created(2).await;
    assert_contract(&got);
    let statuses: Vec<_> = got.iter().map(|r| r.status).collect();
    assert_eq!(
        statuses,
        vec![Some(500), Some(500), Some(201), Some(201)],
        "{got:#?}"
    );
    assert!(got[..3].iter().all(|r| r.body() == got[0].body()));
    assert!(got[3].body().contains("marker-1"));
    assert_eq!(
        metric(&s, "gatehouse_notifications_sent_total{channel=\"sms\"}").await,
        2.0
    );
    assert_eq!(
        metric(&s, "gatehouse_notifications_failed_total{channel=\"sms\"}").await,
        0.0
    );
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let t = TwilioStandIn::start().await;
    t.plan([Reply::TooMany(1)]);
    let s = server(&t, |_| {}).await;
    s.post(example_review("create-3-replicas", |_| {})).await;
    let got = t.wait_created(1).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].status, Some(429));
    // The backoff alone would be 10-20 ms; Retry-After asked for a second.
    let gap = got[1].at - got[0].at;
    assert!(gap >= Duration::from_millis(990), "retried after {gap:?}");
}

#[tokio::test]
async fn unauthorized_is_not_retried_and_the_error_is_logged_without_the_token() {
    const WRONG: &str = "wr0ng-t0ken-1e5a9c77d3f24b08a6c1d0e2f3b4a5c6";
    let t = TwilioStandIn::start().await;
    let s = server(&t, |c| {
        c.notify.twilio.auth_token = Some(Secret::new(WRONG));
    })
    .await;
    let review = example_review("create-3-replicas", |v| {
        v["request"]["uid"] = json!("unauth-1")
    });
    let (_, body) = s.post(review).await;
    assert_eq!(body["response"]["allowed"], true);
    wait_metric(
        &s,
        "gatehouse_notifications_failed_total{channel=\"sms\"}",
        1.0,
    )
    .await;
    let got = t.received();
    assert_eq!(got.len(), 1, "not retried: {got:#?}");
    assert_eq!(got[0].status, Some(401));
    assert!(got[0].violations.is_empty(), "{got:#?}");
    let line = wait_log(&["notification failed", "unauth-1"]).await;
    assert!(
        line.contains("HTTP 401") && line.contains("Twilio error 20003: Authenticate"),
        "{line}"
    );
    assert!(line.contains("attempts=1"), "{line}");
    let logs = standin::logs::text();
    assert!(!logs.contains(WRONG), "the token is in the log");
    assert!(!logs.contains(AUTH_TOKEN), "the token is in the log");
    let m = metrics(&s).await;
    assert!(!m.contains(WRONG) && !m.contains(AUTH_TOKEN));
}

#[tokio::test]
async fn a_bad_request_answer_is_not_retried() {
    let t = TwilioStandIn::start().await;
    t.plan([Reply::Error(400)]);
    let s = server(&t, |_| {}).await;
    s.post(example_review("create-3-replicas", |_| {})).await;
    post_marker(&s, 1).await;
    let got = t.wait_created(1).await;
    let statuses: Vec<_> = got.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![Some(400), Some(201)], "{got:#?}");
    assert_eq!(
        metric(&s, "gatehouse_notifications_failed_total{channel=\"sms\"}").await,
        1.0
    );
}

#[tokio::test]
async fn network_errors_are_retried_then_given_up() {
    let t = TwilioStandIn::start().await;
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let s = server(&t, |c| {
        c.notify.twilio.api_base = format!("https://127.0.0.1:{port}");
        c.notify.retry.max_attempts = 3;
    })
    .await;
    let review = example_review("create-3-replicas", |v| {
        v["request"]["uid"] = json!("net-err-1")
    });
    s.post(review).await;
    wait_metric(
        &s,
        "gatehouse_notifications_failed_total{channel=\"sms\"}",
        1.0,
    )
    .await;
    let logs = standin::logs::text();
    let retries = logs
        .lines()
        .filter(|l| l.contains("net-err-1") && l.contains("retrying"))
        .count();
    assert_eq!(retries, 2, "{logs}");
    let line = wait_log(&["notification failed", "net-err-1"]).await;
    assert!(line.contains("attempts=3"), "{line}");
}

#[tokio::test]
async fn a_burst_of_creates_becomes_the_storm_summary() {
    let t = TwilioStandIn::start().await;
    let s = server(&t, |c| {
        c.notify.storm.max_messages = 5;
        c.notify.storm.window = Duration::from_secs(3);
    })
    .await;
    let posts = (0..50).map(|i| s.post(create(&format!("burst-{i}"), &format!("web-{i}"))));
    for (status, body) in futures_util::future::join_all(posts).await {
        assert_eq!(status, 200);
        assert_eq!(body["response"]["allowed"], true);
    }
    let got = t.wait_created(6).await;
    assert_contract(&got);
    assert_eq!(got.len(), 6, "{got:#?}");
    for r in &got[..5] {
        assert!(
            r.body().contains(" created by kubernetes-admin"),
            "{}",
            r.body()
        );
    }
    let summary = got[5].body();
    assert!(
        summary.starts_with(
            "Gatehouse: 45 more notifications in the last 3s (storm control): 45 created. Latest: Deployment app-ns/web-"
        ),
        "{summary}"
    );
    assert_eq!(
        metric(
            &s,
            "gatehouse_notifications_summarized_total{channel=\"sms\"}"
        )
        .await,
        45.0
    );
    // A new window: the next message goes out on its own.
    post_marker(&s, 1).await;
    let got = t.wait_created(7).await;
    assert!(got[6].body().contains("marker-1"));
}

#[tokio::test]
async fn a_full_queue_drops_and_counts_without_slowing_admission() {
    let t = TwilioStandIn::start().await;
    t.hold();
    let s = server(&t, |c| {
        c.notify.queue_capacity = 1;
        c.notify.request_timeout = Duration::from_secs(60);
    })
    .await;
    s.post(create("q-0", "q-0")).await;
    t.wait_received(1).await;
    // The one delivery slot is taken by a held SMS: the queue fills and overflows.
    let dropped = "gatehouse_notifications_dropped_total{channel=\"sms\",reason=\"queue_full\"}";
    let mut posted = 1;
    while metric(&s, dropped).await < 1.0 {
        assert!(posted < 20, "the queue never filled");
        let (status, _) = s
            .post(create(&format!("q-{posted}"), &format!("q-{posted}")))
            .await;
        assert_eq!(status, 200);
        posted += 1;
    }
    let dropped_n = metric(&s, dropped).await as usize;
    t.release();
    let delivered = posted - dropped_n;
    let got = t.wait_created(delivered).await;
    post_marker(&s, 1).await;
    let got_after = t.wait_created(delivered + 1).await;
    assert_eq!(got_after.len(), got.len() + 1, "{got_after:#?}");
    assert_eq!(
        metric(&s, "gatehouse_notifications_sent_total{channel=\"sms\"}").await,
        (delivered + 1) as f64
    );
}

const WEBHOOK_RULES: &str = "
policies:
  - name: min-replicas
    kind: replicas
    match: {resources: [apps/deployments]}
    params: {min: 3}
notifications:
  - name: chat-ops
    events: [created, updated, denied]
    match: {resources: [apps/deployments]}
    channels: [webhook]
";

#[tokio::test]
async fn the_webhook_channel_posts_slack_compatible_text() {
    standin::logs::capture();
    let chat = ChatStandIn::start().await;
    let url = chat.url.clone();
    let s = TestServer::start_with(Some(WEBHOOK_RULES), move |c| {
        c.notify.webhook.url = Some(Secret::new(url));
        c.notify.concurrency = 1;
    })
    .await;
    s.post(example_review("update-image", |_| {})).await;
    s.post(example_review("create-2-replicas", |_| {})).await;
    let texts = chat.wait_texts(2).await;
    assert_eq!(
        texts[0],
        "Gatehouse: Deployment app-ns/alpine-deploy updated by kubernetes-admin\nreplicas 3; image alpine:3.9.1 → alpine:3"
    );
    assert!(texts[1].starts_with("Gatehouse: DENIED create of Deployment app-ns/alpine-deploy"));
    assert_eq!(chat.paths(), vec![SECRET_PATH, SECRET_PATH]);
    wait_metric(
        &s,
        "gatehouse_notifications_sent_total{channel=\"webhook\"}",
        2.0,
    )
    .await;
    assert!(
        !standin::logs::text().contains("s3cr3tW3bh00kPath"),
        "the webhook URL is a credential and stays out of the log"
    );
}

#[tokio::test]
async fn without_twilio_the_sms_text_is_logged() {
    standin::logs::capture();
    let s = TestServer::start_with(None, |c| c.notify.sms_to = vec![OPS.into()]).await;
    let review = example_review("create-3-replicas", |v| {
        v["request"]["uid"] = json!("log-1")
    });
    s.post(review).await;
    let line = wait_log(&[
        "notification (SMS not sent: Twilio is not configured",
        "log-1",
    ])
    .await;
    assert!(
        line.contains(
            r#"text="Gatehouse: Deployment app-ns/alpine-deploy created by kubernetes-admin\nreplicas 3; image alpine:3.9.1""#
        ),
        "{line}"
    );
    assert!(line.contains(r#"to="+*******0001""#), "{line}");
    wait_metric(
        &s,
        "gatehouse_notifications_sent_total{channel=\"log\"}",
        1.0,
    )
    .await;
}

#[tokio::test]
async fn the_stand_in_refuses_what_twilio_would_refuse() {
    let t = TwilioStandIn::start().await;
    let ca = std::fs::read(&t.ca_file).unwrap();
    let client = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
        .no_proxy()
        .build()
        .unwrap();
    let url = |sid: &str| format!("{}/2010-04-01/Accounts/{sid}/Messages.json", t.base_url);
    async fn send(
        client: &reqwest::Client,
        url: String,
        form: &[(&str, &str)],
        auth: bool,
    ) -> reqwest::Response {
        let mut r = client.post(url).form(form);
        if auth {
            r = r.basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN));
        }
        r.send().await.unwrap()
    }
    let good = vec![("To", OPS), ("From", FROM), ("Body", "hello")];

    let resp = send(&client, url(ACCOUNT_SID), &good, true).await;
    assert_eq!(resp.status(), 201);
    let m: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(m["num_segments"], "1");
    assert_eq!(m["to"], OPS);
    assert!(m["sid"].as_str().unwrap().starts_with("SM"));

    /// URL, form, with basic auth, expected status, expected violation.
    type Case<'a> = (String, Vec<(&'a str, &'a str)>, bool, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            url(ACCOUNT_SID),
            good.clone(),
            false,
            401,
            "no HTTP basic authorization",
        ),
        (
            url("AC123"),
            good.clone(),
            true,
            401,
            "AccountSid: shorter than 34",
        ),
        (
            url(ACCOUNT_SID),
            vec![("To", OPS), ("Body", "x")],
            true,
            400,
            "one of [\"From\", \"MessagingServiceSid\"]",
        ),
        (
            url(ACCOUNT_SID),
            vec![("From", FROM), ("Body", "x")],
            true,
            400,
            "required form field To missing",
        ),
        (
            url(ACCOUNT_SID),
            vec![("To", OPS), ("From", FROM)],
            true,
            400,
            "one of [\"Body\", \"MediaUrl\", \"ContentSid\"]",
        ),
        (
            url(ACCOUNT_SID),
            vec![("To", "0151 2345"), ("From", FROM), ("Body", "x")],
            true,
            400,
            "To: `0151 2345` is not an E.164",
        ),
        (
            url(ACCOUNT_SID),
            vec![("To", OPS), ("MessagingServiceSid", "MG1"), ("Body", "x")],
            true,
            400,
            "MessagingServiceSid: shorter than 34",
        ),
        (
            url(ACCOUNT_SID),
            vec![("To", OPS), ("From", FROM), ("Bodyy", "x")],
            true,
            400,
            "unknown form field Bodyy",
        ),
    ];
    for (i, (u, form, auth, status, violation)) in cases.into_iter().enumerate() {
        let resp = send(&client, u, &form, auth).await;
        assert_eq!(resp.status(), status, "case {i}");
        let err: serde_json::Value = resp.json().await.unwrap();
        assert!(
            err["code"].is_number() && err["more_info"].is_string(),
            "{err}"
        );
        let got = t.received();
        let last = got.last().unwrap();
        assert!(
            last.violations.iter().any(|v| v.contains(violation)),
            "case {i}: {:?} should name {violation:?}",
            last.violations
        );
    }
    let long = "x".repeat(1601);
    let resp = client
        .post(url(ACCOUNT_SID))
        .basic_auth(ACCOUNT_SID, Some(AUTH_TOKEN))
        .form(&[("To", OPS), ("From", FROM), ("Body", long.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(t.received().last().unwrap().violations[0].contains("Body longer than 1600"));
    let resp = client.get(url(ACCOUNT_SID)).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(
        t.received()
            .last()
            .unwrap()
            .violations
            .iter()
            .any(|v| v.contains("method GET"))
    );
}

#[tokio::test]
async fn the_drain_deadline_bounds_shutdown_and_counts_what_is_left() {
    let t = TwilioStandIn::start().await;
    t.hold();
    let s = server(&t, |c| {
        c.notify.drain_timeout = Duration::from_secs(1);
        c.notify.request_timeout = Duration::from_secs(60);
    })
    .await;
    for i in 0..3 {
        s.post(create(&format!("d-{i}"), &format!("d-{i}"))).await;
    }
    t.wait_received(1).await;
    let metrics = s.state.metrics.clone();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(20), s.shutdown())
        .await
        .expect("shutdown ends at the drain deadline")
        .expect("clean exit");
    // Twilio never answered, so only the deadline can have ended the drain.
    assert!(started.elapsed() >= Duration::from_secs(1));
    let text = metrics.encode();
    assert!(
        text.contains(
            "gatehouse_notifications_dropped_total{channel=\"sms\",reason=\"shutdown\"} 3"
        ),
        "{text}"
    );
    assert!(t.received().iter().all(|r| r.status.is_none()));
    t.release();
}

#[tokio::test]
async fn twilio_without_recipients_fails_the_start_naming_the_rule() {
    let t = TwilioStandIn::start().await;
    let dir = tempfile::tempdir().unwrap();
    let (_, files) = common::test_certs(dir.path());
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        health_listen: "127.0.0.1:0".parse().unwrap(),
        ..Config::default()
    };
    use_twilio(&mut c, &t);
    c.notify.sms_to.clear();
    c.validate().unwrap();
    let set = gatehouse::PolicySet::load(None, vec![]).unwrap();
    let tls = gatehouse::tls::load_server_config(&files.cert, &files.key).unwrap();
    let err = match gatehouse::Server::bind(&c, set, tls) {
        Ok(_) => panic!("started without anyone to send SMS to"),
        Err(e) => e.to_string(),
    };
    assert_eq!(
        err,
        "policies/default.yaml (embedded): notification \"deployment-created\": sends SMS but has no recipients: set GATEHOUSE_SMS_TO (notify.sms_to) or the rule's recipients"
    );
}

/// The facts the Twilio stand-in enforces (tests/standin/twilio.rs) against Twilio's own
/// OpenAPI description, when it sits beside the repository (it does in CI; scripts/test.sh
/// refuses to run there without it). Elsewhere this says SKIPPED: the tests need nothing
/// outside the repository.
#[test]
fn twilio_stand_in_contract_agrees_with_twilio_openapi() {
    use standin::twilio::facts::{self, Kind};
    use std::collections::BTreeSet;

    let path = standin::twilio::openapi_path();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "SKIPPED twilio_stand_in_contract_agrees_with_twilio_openapi: {} is not there",
                path.display()
            );
            return;
        }
        Err(e) => panic!("{}: {e}", path.display()),
    };
    let spec: serde_json::Value = serde_json::from_str(&text).expect("the spec is JSON");
    let resolve = |schema: &serde_json::Value| -> serde_json::Value {
        match schema.get("$ref").and_then(|r| r.as_str()) {
            Some(r) => spec
                .pointer(r.trim_start_matches('#'))
                .unwrap_or_else(|| panic!("spec: unresolvable $ref {r}"))
                .clone(),
            None => schema.clone(),
        }
    };

    assert_eq!(spec["servers"][0]["url"], facts::API_BASE);
    let op = &spec["paths"][facts::MESSAGES_PATH][facts::METHOD.to_ascii_lowercase()];
    assert_eq!(op["operationId"], "CreateMessage", "{op}");

    let sid = op["parameters"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == "AccountSid"))
        .expect("spec: AccountSid parameter");
    assert_eq!(sid["in"], "path");
    assert_eq!(sid["required"], true);
    assert_eq!(sid["schema"]["pattern"], facts::ACCOUNT_SID_PATTERN);
    assert_eq!(sid["schema"]["minLength"], 34);
    assert_eq!(sid["schema"]["maxLength"], 34);

    let scheme_name = op["security"][0]
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .expect("spec: the operation's security");
    let scheme = &spec["components"]["securitySchemes"][&scheme_name];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], facts::AUTH_SCHEME);

    let content = op["requestBody"]["content"]
        .as_object()
        .expect("spec: requestBody");
    assert_eq!(
        content.keys().collect::<Vec<_>>(),
        vec![facts::CONTENT_TYPE],
        "content types"
    );
    let schema = resolve(&content[facts::CONTENT_TYPE]["schema"]);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    assert_eq!(required, facts::REQUIRED);

    // Every property, and only those, with the same constraint.
    let properties = schema["properties"].as_object().expect("properties");
    let spec_names: BTreeSet<&str> = properties.keys().map(String::as_str).collect();
    let our_names: BTreeSet<&str> = facts::FIELDS.iter().map(|f| f.name).collect();
    assert_eq!(our_names, spec_names, "form parameters");
    for field in facts::FIELDS {
        let prop = resolve(&properties[field.name]);
        let (repeated, item) = if prop["type"] == "array" {
            (true, resolve(&prop["items"]))
        } else {
            (false, prop.clone())
        };
        assert_eq!(field.repeated, repeated, "{}: repeated", field.name);
        let kind = if let Some(options) = item["enum"].as_array() {
            let words: Vec<&str> = options.iter().filter_map(|o| o.as_str()).collect();
            match field.kind {
                Kind::OneOf(ours) => assert_eq!(ours, words.as_slice(), "{}", field.name),
                other => panic!("{}: ours is {other:?}, the spec's an enum", field.name),
            }
            field.kind
        } else {
            match (item["type"].as_str(), item["format"].as_str()) {
                (Some("string"), Some("phone-number")) => Kind::Phone,
                (Some("string"), Some("uri")) => Kind::Url,
                (Some("string"), Some("date-time")) => Kind::DateTime,
                (Some("string"), None) => match item["pattern"].as_str() {
                    Some(p) => {
                        assert_eq!(item["minLength"], 34, "{}", field.name);
                        assert_eq!(item["maxLength"], 34, "{}", field.name);
                        match field.kind {
                            Kind::Sid(ours) => assert_eq!(ours, p, "{}", field.name),
                            other => panic!("{}: ours is {other:?}, spec's {p}", field.name),
                        }
                        field.kind
                    }
                    None => Kind::Text,
                },
                (Some("boolean"), _) => Kind::Boolean,
                (Some("integer"), _) => Kind::Integer,
                (Some("number"), _) => Kind::Number,
                other => panic!(
                    "{}: a schema the stand-in cannot check: {other:?}",
                    field.name
                ),
            }
        };
        assert_eq!(field.kind, kind, "{}", field.name);
    }

    let groups: Vec<Vec<String>> = op["x-twilio"]["conditional"]
        .as_array()
        .expect("spec: x-twilio.conditional")
        .iter()
        .map(|g| {
            g.as_array()
                .expect("a group")
                .iter()
                .map(|f| {
                    // `messaging_service_sid` → `MessagingServiceSid`.
                    f.as_str()
                        .expect("a name")
                        .split('_')
                        .map(|p| p[..1].to_ascii_uppercase() + &p[1..])
                        .collect()
                })
                .collect()
        })
        .collect();
    let ours: Vec<Vec<String>> = facts::ONE_OF
        .iter()
        .map(|g| g.iter().map(|f| (*f).to_owned()).collect())
        .collect();
    assert_eq!(ours, groups, "conditional groups");

    let body_desc = properties["Body"]["description"].as_str().unwrap_or("");
    assert!(
        body_desc.contains(&format!(
            "up to {},{:03} characters",
            facts::BODY_MAX_CHARS / 1000,
            facts::BODY_MAX_CHARS % 1000
        )),
        "Body: {body_desc}"
    );

    // The 201 answer: the members of the spec's example, and the SID patterns.
    let created = &op["responses"]["201"]["content"]["application/json"];
    let example = created["examples"]["create"]["value"]
        .as_object()
        .expect("spec: a 201 example");
    let example_members: BTreeSet<&str> = example.keys().map(String::as_str).collect();
    let our_members: BTreeSet<&str> = facts::MESSAGE_MEMBERS.iter().copied().collect();
    assert_eq!(our_members, example_members, "message members");
    let message = resolve(&created["schema"]);
    assert_eq!(
        message["properties"]["sid"]["pattern"],
        facts::MESSAGE_SID_PATTERN
    );
    assert_eq!(
        message["properties"]["account_sid"]["pattern"],
        facts::ACCOUNT_SID_PATTERN
    );
    for member in facts::MESSAGE_MEMBERS {
        assert!(
            message["properties"].get(*member).is_some(),
            "{member} is in the message schema"
        );
    }
}
