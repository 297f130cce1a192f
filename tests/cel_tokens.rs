//! A `one-time-token` policy after a `cel` policy, through the real HTTPS server on SQLite:
//! a CEL deny stops the review before the token is consumed (the token stays unused and is
//! accepted on the next, valid request), and a CEL pass lets the token policy consume it.

mod common;

use std::time::Duration;

use common::TestServer;
use common::tokens::{TestStore, review_with_token};
use gatehouse::store::{self, IssueSpec};

/// The token policy first in the file: it still runs after the CEL policy, as kinds that
/// consume run last.
const POLICIES: &str = r#"
- name: deploy-token
  kind: one-time-token
  match: {resources: [apps/deployments], operations: [CREATE, UPDATE]}
- name: no-old-alpine
  kind: cel
  match: {resources: [apps/deployments]}
  params:
    validations:
      - expression: "object.spec.template.spec.containers.all(c, c.image != 'alpine:3.9.1')"
        messageExpression: "'image alpine:3.9.1 is not allowed in ' + object.metadata.name"
"#;

fn with_image(uid: &str, token: &str, image: &str) -> Vec<u8> {
    let mut v: serde_json::Value =
        serde_json::from_slice(&review_with_token(uid, Some(token), false)).unwrap();
    v["request"]["object"]["spec"]["template"]["spec"]["containers"][0]["image"] =
        serde_json::json!(image);
    serde_json::to_vec(&v).unwrap()
}

#[tokio::test]
async fn a_cel_deny_leaves_the_token_and_a_cel_pass_consumes_it() {
    let s = TestStore::sqlite();
    let ctx = s.context(Duration::from_secs(10)).await;
    let tokens = ctx.token_store.tokens().unwrap().clone();
    let server = TestServer::start_with_context(Some(POLICIES), |_| {}, ctx).await;
    let issued = tokens
        .issue(
            &IssueSpec {
                count: 1,
                ttl: Duration::from_secs(600),
                namespace: Some("app-ns".into()),
                note: "cel test".into(),
            },
            store::now_unix(),
        )
        .await
        .unwrap()
        .remove(0);
    let consumed = |records: Vec<store::TokenRecord>| {
        records
            .into_iter()
            .find(|r| r.id == issued.id)
            .expect("the issued token")
            .used_at
    };

    // The example review's image is alpine:3.9.1: the CEL policy denies, the token is kept.
    let (status, body) = server
        .post(review_with_token("u-1", Some(&issued.token), false))
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false, "{body}");
    let message = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        message.contains("image alpine:3.9.1 is not allowed in alpine-deploy"),
        "{message}"
    );
    assert!(!message.contains("token"), "{message}");
    assert_eq!(consumed(tokens.list().await.unwrap()), None);

    // A passing image: admitted, and the token is consumed.
    let (_, body) = server
        .post(with_image("u-2", &issued.token, "alpine:3.20"))
        .await;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert!(consumed(tokens.list().await.unwrap()).is_some());

    // The same token again, on a request CEL passes: denied as already used.
    let (_, body) = server
        .post(with_image("u-3", &issued.token, "alpine:3.20"))
        .await;
    assert_eq!(body["response"]["allowed"], false, "{body}");
    assert!(
        body["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("which was already used"),
        "{body}"
    );
}
