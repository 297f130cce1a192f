//! The `one-time-token` policy through the real HTTPS server, on SQLite and on PostgreSQL:
//! the original flow (denied without a token → issue → annotate → admitted → the same token
//! again denied), dryRun, 50 concurrent admissions with one token (exactly one admitted), and
//! the database going away mid-run (token requests denied with "token store unavailable",
//! replicas-only requests answered as usual).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestServer;
use common::tokens::{TOKEN_POLICIES, TcpRelay, TestStore, redirect_url, review_with_token};
use gatehouse::policy::LoadContext;
use gatehouse::store::{
    self, DatabaseUrl, IssueSpec, StoreSettings, TokenStoreSlot, Tokens, Verdict,
};

fn one(namespace: Option<&str>) -> IssueSpec {
    IssueSpec {
        count: 1,
        ttl: Duration::from_secs(600),
        namespace: namespace.map(str::to_owned),
        note: "test".into(),
    }
}

async fn issue(tokens: &Tokens, namespace: Option<&str>) -> (i64, String) {
    let t = tokens
        .issue(&one(namespace), store::now_unix())
        .await
        .unwrap()
        .remove(0);
    (t.id, t.token)
}

async fn start(ctx: LoadContext) -> TestServer {
    TestServer::start_with_context(Some(TOKEN_POLICIES), |_| {}, ctx).await
}

fn message(body: &serde_json::Value) -> String {
    body["response"]["status"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn flow(s: TestStore) {
    let ctx = s.context(Duration::from_secs(10)).await;
    let tokens = ctx.token_store.tokens().unwrap().clone();
    let server = start(ctx).await;

    // kubectl apply without a token: denied, and the message says what to do.
    let (status, body) = server.post(review_with_token("u-1", None, false)).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(
        message(&body),
        "Deployment app-ns/alpine-deploy has no one-time token in annotation gatehouse.dev/token; policy deploy-token requires one (issue it with `gatehouse tokens issue`)"
    );

    // Issue a token and put it in the annotation: admitted.
    let (id, token) = issue(&tokens, Some("app-ns")).await;
    let (_, body) = server
        .post(review_with_token("u-2", Some(&token), false))
        .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(body["response"]["uid"], "u-2");

    // The same token again: denied as already used, the value never echoed.
    let (_, body) = server
        .post(review_with_token("u-3", Some(&token), false))
        .await;
    assert_eq!(body["response"]["allowed"], false);
    let msg = message(&body);
    assert!(
        msg.starts_with(&format!(
            "Deployment app-ns/alpine-deploy carries token #{id} (annotation gatehouse.dev/token), which was already used at "
        )),
        "{msg}"
    );
    assert!(
        msg.ends_with(
            "for Deployment app-ns/alpine-deploy; policy deploy-token accepts each token once"
        ),
        "{msg}"
    );
    assert!(!body.to_string().contains(&token));
    let used = tokens
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    let by = used.used_by.unwrap();
    assert_eq!(
        (
            by.user.as_str(),
            by.kind.as_str(),
            by.object.as_str(),
            by.uid.as_str()
        ),
        (
            "kubernetes-admin",
            "Deployment",
            "app-ns/alpine-deploy",
            "u-2"
        )
    );

    // Unknown, wrong namespace.
    let (_, body) = server
        .post(review_with_token("u-4", Some("gate_made-up"), false))
        .await;
    assert!(
        message(&body).contains("carries an unknown token"),
        "{body}"
    );
    let (other_id, other) = issue(&tokens, Some("team-b")).await;
    let (_, body) = server
        .post(review_with_token("u-5", Some(&other), false))
        .await;
    assert!(
        message(&body).contains(&format!("token #{other_id} (annotation gatehouse.dev/token), which is valid only in namespace team-b; policy deploy-token requires a token for namespace app-ns")),
        "{body}"
    );
    // Both policies speak when both fail.
    let two = common::example_review("create-2-replicas", |v| {
        v["request"]["object"]["metadata"]["annotations"] =
            serde_json::json!({"gatehouse.dev/token": "gate_nope"});
    });
    let (_, body) = server.post(two).await;
    let msg = message(&body);
    assert!(
        msg.contains("asks for 2 replicas") && msg.contains("unknown token"),
        "{msg}"
    );

    // Denied by another policy: the token is checked, not spent.
    let (spare_id, spare) = issue(&tokens, Some("app-ns")).await;
    let denied = common::example_review("create-2-replicas", |v| {
        v["request"]["object"]["metadata"]["annotations"] =
            serde_json::json!({"gatehouse.dev/token": spare});
    });
    let (_, body) = server.post(denied).await;
    assert_eq!(
        message(&body),
        "Deployment app-ns/alpine-deploy asks for 2 replicas; policy min-replicas requires at least 3"
    );
    assert_eq!(
        tokens
            .check(&spare, Some("app-ns"), store::now_unix())
            .await
            .unwrap(),
        Verdict::Accepted { id: spare_id }
    );

    // dryRun checks without consuming: twice admitted, the token still unused, then usable.
    let (dry_id, dry) = issue(&tokens, None).await;
    for uid in ["d-1", "d-2"] {
        let (_, body) = server.post(review_with_token(uid, Some(&dry), true)).await;
        assert_eq!(body["response"]["allowed"], true, "{body}");
    }
    assert_eq!(
        tokens
            .check(&dry, Some("app-ns"), store::now_unix())
            .await
            .unwrap(),
        Verdict::Accepted { id: dry_id }
    );
    let (_, body) = server
        .post(review_with_token("d-3", Some(&dry), false))
        .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    let (_, body) = server
        .post(review_with_token("d-4", Some(&dry), true))
        .await;
    assert!(
        message(&body).contains("already used"),
        "a dry run of a used token is denied: {body}"
    );

    // Counted in metrics.
    let metrics = server
        .plain
        .get(server.health_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "gatehouse_token_checks_total{result=\"missing\"} 1",
        "gatehouse_token_checks_total{result=\"consumed\"} 2",
        "gatehouse_token_checks_total{result=\"used\"} 2",
        "gatehouse_token_checks_total{result=\"valid_not_consumed\"} 3",
        "gatehouse_token_checks_total{result=\"wrong_namespace\"} 1",
        "gatehouse_token_store_errors_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in\n{metrics}");
    }
    server.shutdown().await.unwrap();
    tokens.close().await;
    s.cleanup().await;
}

#[tokio::test]
async fn original_flow_on_sqlite() {
    flow(TestStore::sqlite()).await;
}

#[tokio::test]
async fn original_flow_on_postgres() {
    if let Some(s) = TestStore::postgres("original_flow_on_postgres").await {
        flow(s).await;
    }
}

/// 50 admissions with the same token at once, over HTTPS: exactly one admitted.
async fn fifty(s: TestStore) {
    let ctx = s.context(Duration::from_secs(30)).await;
    let tokens = ctx.token_store.tokens().unwrap().clone();
    let server = Arc::new(start(ctx).await);
    let (id, token) = issue(&tokens, Some("app-ns")).await;
    let barrier = Arc::new(tokio::sync::Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|i| {
            let (server, token, barrier) = (server.clone(), token.clone(), barrier.clone());
            tokio::spawn(async move {
                let body = review_with_token(&format!("race-{i}"), Some(&token), false);
                barrier.wait().await;
                server.post(body).await
            })
        })
        .collect();
    let mut admitted = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(body["response"]["uid"], format!("race-{i}"));
        if body["response"]["allowed"] == true {
            admitted.push(format!("race-{i}"));
        } else {
            assert!(
                message(&body).contains(&format!(
                    "token #{id} (annotation gatehouse.dev/token), which was already used"
                )),
                "{body}"
            );
        }
    }
    assert_eq!(admitted.len(), 1, "admitted: {admitted:?}");
    let rec = tokens
        .list()
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.id == id)
        .unwrap();
    assert_eq!(
        rec.used_by.unwrap().uid,
        admitted[0],
        "the store names the admitted request"
    );
    tokens.close().await;
    s.cleanup().await;
}

#[tokio::test]
async fn fifty_concurrent_admissions_one_token_on_sqlite() {
    fifty(TestStore::sqlite()).await;
}

#[tokio::test]
async fn fifty_concurrent_admissions_one_token_on_postgres() {
    if let Some(s) = TestStore::postgres("fifty_concurrent_admissions_one_token_on_postgres").await
    {
        fifty(s).await;
    }
}

/// The database goes away mid-run (a TCP relay in front of PostgreSQL is cut): the token
/// policy denies with "token store unavailable" and counts the failure; a request only the
/// replicas policy matches is answered as before.
#[tokio::test]
async fn store_outage_denies_token_requests_and_spares_other_policies() {
    let Some(TestStore::Postgres(pg)) =
        TestStore::postgres("store_outage_denies_token_requests_and_spares_other_policies").await
    else {
        return;
    };
    let (_, target) = redirect_url(&pg.url, "127.0.0.1:1".parse().unwrap());
    let target = tokio::net::lookup_host(&target)
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = TcpRelay::start(target).await;
    let (relayed, _) = redirect_url(&pg.url, relay.addr);
    let settings = StoreSettings {
        url: Some(DatabaseUrl::new(relayed)),
        data_dir: std::env::temp_dir(),
        timeout: Duration::from_secs(1),
    };
    let tokens = store::open(&settings)
        .await
        .expect("open through the relay");
    let ctx = LoadContext {
        token_store: TokenStoreSlot::with_tokens(tokens.clone()),
    };
    let server = start(ctx).await;

    // Before: a token works through the relay.
    let (_, token) = issue(&tokens, None).await;
    let (_, body) = server
        .post(review_with_token("before", Some(&token), false))
        .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");

    relay.cut();

    // Issue directly (not through the relay): the token exists, the server cannot see it.
    let direct = store::open(&StoreSettings {
        url: Some(DatabaseUrl::new(pg.url.clone())),
        data_dir: std::env::temp_dir(),
        timeout: Duration::from_secs(10),
    })
    .await
    .unwrap();
    let (_, fresh_token) = issue(&direct, None).await;
    direct.close().await;

    let (status, body) = server
        .post(review_with_token("during", Some(&fresh_token), false))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
    assert_eq!(
        message(&body),
        "Deployment app-ns/alpine-deploy: token store unavailable; policy deploy-token cannot check its one-time token"
    );
    assert!(!body.to_string().contains(&fresh_token));

    // Replicas only (the scale subresource is not matched by the token policy).
    let (status, body) = server
        .post(common::example_review("scale-to-1", |_| {}))
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        message(&body),
        "Deployment app-ns/alpine-deploy (scale) asks for 1 replica; policy min-replicas requires at least 3"
    );
    let (_, body) = server
        .post(common::example_review("scale-to-1", |v| {
            v["request"]["object"]["spec"]["replicas"] = serde_json::json!(4);
        }))
        .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");

    let metrics = server
        .plain
        .get(server.health_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("gatehouse_token_checks_total{result=\"store_unavailable\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatehouse_token_store_errors_total 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "gatehouse_policy_evaluations_total{policy=\"deploy-token\",result=\"deny\"} 1"
        ),
        "{metrics}"
    );
    server.shutdown().await.unwrap();
    pg.drop_schema().await;
}
