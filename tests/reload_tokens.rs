//! Live reload and the token store: a reload that brings the first one-time-token policy opens
//! the store the server was started with, so the new policy checks real tokens instead of
//! denying everything as "token store unavailable".

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, example_review};
use gatehouse::policy::LoadContext;
use gatehouse::store::{self, IssueSpec, StoreSettings, TokenStoreSlot};
use serde_json::json;

const TOKEN_POLICY: &str = "
policies:
  - name: deploy-token
    kind: one-time-token
    match:
      resources: [apps/deployments]
      namespaces: {include: [secure]}
";

fn secure_review(token: Option<&str>, uid: &str) -> Vec<u8> {
    example_review("create-3-replicas", |v| {
        v["request"]["uid"] = json!(uid);
        v["request"]["namespace"] = json!("secure");
        v["request"]["object"]["metadata"]["namespace"] = json!("secure");
        if let Some(t) = token {
            v["request"]["object"]["metadata"]["annotations"]["gatehouse.dev/token"] = json!(t);
        }
    })
}

#[tokio::test]
async fn a_reload_that_adds_the_first_token_policy_opens_the_store() {
    let data = tempfile::tempdir().unwrap();
    let settings = StoreSettings {
        url: None,
        data_dir: data.path().to_path_buf(),
        timeout: Duration::from_secs(2),
    };
    let ctx = LoadContext {
        token_store: TokenStoreSlot::new(settings.clone()),
    };
    // Started with the defaults only: no policy wants the store, so it is not opened.
    let defaults = std::fs::read_to_string(common::repo().join("policies/default.yaml")).unwrap();
    let s = TestServer::start_with_context(
        Some(&defaults),
        |c| c.reload_interval = Duration::from_millis(100),
        ctx.clone(),
    )
    .await;
    assert!(ctx.token_store.tokens().is_none());
    let (_, body) = s.post(secure_review(None, "before")).await;
    assert_eq!(body["response"]["allowed"], true, "{body}");

    // The ConfigMap gains a token policy.
    let path = s.dir.path().join("policies.yaml");
    std::fs::write(
        &path,
        format!(
            "{TOKEN_POLICY}\n{}",
            defaults.replacen("policies:\n", "", 1)
        ),
    )
    .unwrap();
    let started = Instant::now();
    let denied = loop {
        let (_, body) = s.post(secure_review(None, "during")).await;
        if body["response"]["allowed"] == false {
            break body;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "reload not applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let message = denied["response"]["status"]["message"].as_str().unwrap();
    assert!(!message.contains("unavailable"), "{message}");
    assert!(message.contains("deploy-token"), "{message}");
    assert!(
        ctx.token_store.tokens().is_some(),
        "the reload opened the store"
    );

    // Tokens issued into that store are honoured once.
    let tokens = store::open(&settings).await.unwrap();
    let issued = tokens
        .issue(
            &IssueSpec {
                count: 1,
                ttl: Duration::from_secs(600),
                namespace: Some("secure".into()),
                note: "reload test".into(),
            },
            store::now_unix(),
        )
        .await
        .unwrap();
    let token = issued[0].token.clone();
    let (_, body) = s.post(secure_review(Some(&token), "first")).await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    let (_, body) = s.post(secure_review(Some(&token), "second")).await;
    assert_eq!(body["response"]["allowed"], false, "{body}");
}
