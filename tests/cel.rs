//! CEL policies and ValidatingAdmissionPolicy manifests through the real webhook server over
//! TLS: `policies/examples/cel.yaml`, the `policies/examples/vap/` directory, and the budget
//! answering with the failurePolicy.

mod common;
mod standin;

use common::{TestServer, example_review};
use gatehouse::secret::Secret;
use serde_json::{Value, json};
use standin::twilio::{ACCOUNT_SID, AUTH_TOKEN, FROM, TwilioStandIn};

fn review(object: Value) -> Vec<u8> {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let resource = format!("{}s", kind.to_lowercase());
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "3b0f2f4a-9d6c-4e01-8c83-0e7c3b1a5d7e",
            "kind": {"group": "apps", "version": "v1", "kind": kind},
            "resource": {"group": "apps", "version": "v1", "resource": resource},
            "name": object["metadata"]["name"],
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "dev@example.com", "groups": ["system:authenticated"]},
            "object": object,
        }
    }))
    .unwrap()
}

fn deployment(replicas: i64, image: &str, team: &str, memory: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": "shop", "labels": {"team": team}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [
            {"name": "app", "image": image, "resources": {"limits": {"memory": memory}}}
        ]}}}
    })
}

async fn judge(server: &TestServer, object: Value) -> (bool, String, Vec<String>) {
    let (status, body) = server.post(review(object)).await;
    assert_eq!(status, 200, "{body}");
    let response = &body["response"];
    (
        response["allowed"].as_bool().expect("allowed"),
        response["status"]["message"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        response["warnings"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    )
}

fn policies_at(path: &str) -> impl FnOnce(&mut gatehouse::config::Config) {
    let path = common::repo().join(path);
    move |c| c.policies = Some(path)
}

#[tokio::test]
async fn cel_example_policies_through_the_webhook() {
    let server = TestServer::start_with(None, policies_at("policies/examples/cel.yaml")).await;

    let (allowed, message, warnings) =
        judge(&server, deployment(3, "shop:1.4", "payments", "1Gi")).await;
    assert!(allowed, "{message}");
    assert!(warnings.is_empty(), "{warnings:?}");

    let (allowed, message, _) = judge(&server, deployment(2, "shop:1.4", "payments", "1Gi")).await;
    assert!(!allowed);
    assert!(
        message.contains("at least 3 replicas are required, got 2"),
        "{message}"
    );

    let (allowed, message, _) =
        judge(&server, deployment(3, "shop:latest", "payments", "1Gi")).await;
    assert!(!allowed);
    assert!(
        message.contains("images must name a version: shop:latest"),
        "{message}"
    );

    let (allowed, message, _) = judge(&server, deployment(3, "shop:1.4", "payments", "8Gi")).await;
    assert!(!allowed);
    assert!(
        message.contains("no container may use more than 4Gi of memory"),
        "{message}"
    );

    let (allowed, _, warnings) =
        judge(&server, deployment(3, "shop:1.4", "Payments!", "1Gi")).await;
    assert!(allowed);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("the team label must match ^[a-z][a-z0-9-]{1,30}$"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn vap_manifest_directory_through_the_webhook() {
    let server = TestServer::start_with(None, policies_at("policies/examples/vap")).await;

    let (allowed, message, warnings) =
        judge(&server, deployment(3, "shop:1.4", "payments", "1Gi")).await;
    assert!(allowed, "{message}");
    assert!(warnings.is_empty(), "{warnings:?}");

    let (allowed, message, _) = judge(&server, deployment(2, "shop:1.4", "payments", "1Gi")).await;
    assert!(!allowed);
    assert!(
        message.contains("ValidatingAdmissionPolicy 'min-replicas.gatehouse.example.com' with binding 'min-replicas-binding' denied request: at least 3 replicas are required, got 2"),
        "{message}"
    );

    let (allowed, message, _) = judge(&server, deployment(3, "shop:1.4", "payments", "5Gi")).await;
    assert!(!allowed);
    assert!(
        message.contains("no container may use more than 4Gi of memory: 5Gi"),
        "{message}"
    );

    // validationActions [Warn]: admitted with the message as a warning.
    let (allowed, _, warnings) =
        judge(&server, deployment(3, "shop:1.4", "Payments!", "1Gi")).await;
    assert!(allowed);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("the team label must match"),
        "{warnings:?}"
    );
}

#[tokio::test]
async fn a_policy_file_with_gatehouse_policies_and_manifests_loads_both() {
    let text = format!(
        "policies:\n  - name: min-replicas\n    kind: replicas\n    match: {{resources: [apps/deployments]}}\n    params: {{min: 2}}\n---\n{}",
        std::fs::read_to_string(common::repo().join("policies/examples/vap/replicas.yaml"))
            .unwrap()
    );
    let server = TestServer::start_with(Some(&text), |_| {}).await;
    let (allowed, message, _) = judge(&server, deployment(1, "shop:1.4", "payments", "1Gi")).await;
    assert!(!allowed);
    // Both policies deny: the built-in one and the VAP.
    assert!(message.contains("min-replicas"), "{message}");
    assert!(
        message.contains("with binding 'min-replicas-binding'"),
        "{message}"
    );
}

/// A pathological expression over a large object is cut off by the budget; the review gets
/// the policy's failurePolicy answer.
#[tokio::test]
async fn budget_cut_off_answers_with_the_failure_policy() {
    let policy = |failure: &str| {
        format!(
            "policies:\n  - name: quadratic\n    kind: cel\n    match: {{resources: [apps/deployments]}}\n    params:\n      failurePolicy: {failure}\n      validations:\n        - expression: \"object.spec.items.all(x, object.spec.items.all(y, x != -1))\"\n"
        )
    };
    let mut object = deployment(3, "shop:1.4", "payments", "1Gi");
    object["spec"]["items"] = json!((0..20_000).collect::<Vec<i64>>());

    let server = TestServer::start_with(Some(&policy("Fail")), |_| {}).await;
    let (allowed, message, _) = judge(&server, object.clone()).await;
    assert!(!allowed);
    // The cost budget, or in a slow debug build the time limit, cuts it off.
    assert!(
        message.contains("operation cancelled: actual cost limit exceeded")
            || message.contains("operation cancelled: evaluation time limit exceeded"),
        "{message}"
    );

    let server = TestServer::start_with(Some(&policy("Ignore")), |_| {}).await;
    let (allowed, message, _) = judge(&server, object).await;
    assert!(allowed, "{message}");
}

#[tokio::test]
async fn a_manifest_gatehouse_cannot_honour_is_refused_at_load() {
    let text = std::fs::read_to_string(common::repo().join("policies/examples/vap/replicas.yaml"))
        .unwrap()
        .replace(
            "  validationActions: [Deny]",
            "  validationActions: [Deny]\n  matchResources:\n    namespaceSelector:\n      matchLabels: {environment: prod}",
        );
    let err = gatehouse::policy::parse_policies(&text, "vap.yaml").unwrap_err();
    assert_eq!(err.file, "vap.yaml");
    assert!(
        err.message.contains("ValidatingAdmissionPolicyBinding 'min-replicas-binding': spec.matchResources.namespaceSelector: selects namespaces by their labels, which Gatehouse cannot read without API access"),
        "{}",
        err.message
    );
}

/// A deny by a CEL policy sends the SMS a built-in policy's deny sends, with its message.
#[tokio::test]
async fn a_cel_deny_sends_an_sms_with_the_reason() {
    let t = TwilioStandIn::start().await;
    let policies = r#"
policies:
  - name: min-replicas-cel
    kind: cel
    match: {resources: [apps/deployments]}
    params:
      validations:
        - expression: object.spec.replicas >= 3
          messageExpression: "'at least 3 replicas are required, got ' + string(object.spec.replicas)"
notifications:
  - name: any-denied
    events: [denied]
    match: {resources: ['*', '*/*'], operations: ['*']}
"#;
    standin::logs::capture();
    let s = TestServer::start_with(Some(policies), |c| {
        let n = &mut c.notify;
        n.twilio.account_sid = Some(ACCOUNT_SID.into());
        n.twilio.auth_token = Some(Secret::new(AUTH_TOKEN));
        n.twilio.from = Some(FROM.into());
        n.twilio.api_base = t.base_url.clone();
        n.ca_file = Some(t.ca_file.clone());
        n.sms_to = vec!["+15551230001".into()];
        n.concurrency = 1;
        n.storm.max_messages = 0;
    })
    .await;
    let (_, body) = s.post(example_review("create-2-replicas", |_| {})).await;
    assert_eq!(body["response"]["allowed"], false);
    let got = t.wait_created(1).await;
    assert_eq!(got.len(), 1, "{got:#?}");
    assert_eq!(
        got[0].body(),
        "Gatehouse: DENIED create of Deployment app-ns/alpine-deploy by kubernetes-admin\nreplicas 2; image alpine:3.9.1\nReason: at least 3 replicas are required, got 2"
    );
}

/// `auditAnnotations` of a `cel` policy and of a ValidatingAdmissionPolicy reach the answer's
/// `response.auditAnnotations`, keyed `<policy name>/<key>` as the API server keys them; a
/// null value adds none.
#[tokio::test]
async fn audit_annotations_reach_the_answer() {
    let policies = r#"
policies:
  - name: replica-audit
    kind: cel
    match: {resources: [apps/deployments]}
    params:
      validations:
        - expression: "true"
      auditAnnotations:
        - key: high-replica-count
          valueExpression: "object.spec.replicas > 3 ? 'spec.replicas set to ' + string(object.spec.replicas) : null"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: demo-policy.example.com
spec:
  matchConstraints:
    resourceRules:
      - apiGroups: ["apps"]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["deployments"]
  validations:
    - expression: "object.spec.replicas < 10"
  auditAnnotations:
    - key: team
      valueExpression: "'team ' + object.metadata.labels['team']"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: demo-binding
spec:
  policyName: demo-policy.example.com
  validationActions: [Deny]
"#;
    let server = TestServer::start_with(Some(policies), |_| {}).await;
    let (status, body) = server
        .post(review(deployment(5, "shop:1.4", "payments", "1Gi")))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["allowed"], true, "{body}");
    assert_eq!(
        body["response"]["auditAnnotations"],
        json!({
            "replica-audit/high-replica-count": "spec.replicas set to 5",
            "demo-policy.example.com/team": "team payments",
        }),
        "{body}"
    );

    // Three replicas: the cel policy's value is null, the VAP's still there; a denied
    // request carries its annotations too.
    let (_, body) = server
        .post(review(deployment(3, "shop:1.4", "web", "1Gi")))
        .await;
    assert_eq!(
        body["response"]["auditAnnotations"],
        json!({"demo-policy.example.com/team": "team web"}),
        "{body}"
    );
    let (_, body) = server
        .post(review(deployment(12, "shop:1.4", "web", "1Gi")))
        .await;
    assert_eq!(body["response"]["allowed"], false, "{body}");
    assert_eq!(
        body["response"]["auditAnnotations"]["replica-audit/high-replica-count"],
        "spec.replicas set to 12",
        "{body}"
    );
}

/// A policy directory's files are one set: a binding in one file binds a VAP (and params) of
/// another, and a binding whose policy is in no file is refused naming its file.
#[tokio::test]
async fn vap_and_binding_bind_across_the_files_of_a_directory() {
    let manifests =
        std::fs::read_to_string(common::repo().join("policies/examples/vap/replicas.yaml"))
            .unwrap();
    let (policy, binding) = manifests.split_once("\n---\n").expect("two documents");
    assert!(binding.contains("kind: ValidatingAdmissionPolicyBinding"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a-binding.yaml"), binding).unwrap();
    std::fs::write(dir.path().join("b-policy.yaml"), policy).unwrap();

    let path = dir.path().to_path_buf();
    let server = TestServer::start_with(None, move |c| c.policies = Some(path)).await;
    let (allowed, message, _) = judge(&server, deployment(2, "shop:1.4", "payments", "1Gi")).await;
    assert!(!allowed);
    assert!(
        message.contains("ValidatingAdmissionPolicy 'min-replicas.gatehouse.example.com' with binding 'min-replicas-binding' denied request: at least 3 replicas are required, got 2"),
        "{message}"
    );
    let (allowed, message, _) = judge(&server, deployment(3, "shop:1.4", "payments", "1Gi")).await;
    assert!(allowed, "{message}");

    // Without the policy's file the binding names nothing: refused, naming the binding's file.
    std::fs::remove_file(dir.path().join("b-policy.yaml")).unwrap();
    std::fs::write(
        dir.path().join("c-other.yaml"),
        "policies:\n  - name: min-replicas\n    kind: replicas\n    match: {resources: [apps/deployments]}\n    params: {min: 2}\n",
    )
    .unwrap();
    let err = gatehouse::policy::load_policies(Some(dir.path())).unwrap_err();
    assert!(err.file.ends_with("a-binding.yaml"), "{}", err.file);
    assert!(
        err.message.contains("ValidatingAdmissionPolicyBinding 'min-replicas-binding': spec.policyName: no ValidatingAdmissionPolicy 'min-replicas.gatehouse.example.com' in the policy files"),
        "{}",
        err.message
    );
}
