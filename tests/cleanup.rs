//! Never block cleanup, through the real HTTPS server: UPDATEs shaped as the garbage collector
//! and the Deployment controller send them for an under-replicated Deployment that predates
//! the policy are allowed and never notified; a real change is still denied and notified; a
//! policy with `judgeCleanup: true` still judges them.

mod common;
mod standin;

use common::TestServer;
use gatehouse::secret::Secret;
use serde_json::{Value, json};
use standin::chat::ChatStandIn;

const POLICIES: &str = "
policies:
  - name: min-replicas
    kind: replicas
    match: {resources: [apps/deployments, apps/deployments/scale]}
    params: {min: 3}
  - name: team-label
    kind: labels
    match: {resources: [apps/deployments]}
    params: {required: [{key: team}]}
notifications:
  - name: chat-ops
    events: [created, updated, denied]
    match: {resources: [apps/deployments]}
    channels: [webhook]
";

const GC: &str = "system:serviceaccount:kube-system:generic-garbage-collector";
const DEPLOYMENT_CONTROLLER: &str = "system:serviceaccount:kube-system:deployment-controller";

/// The Deployment as stored: 1 replica, no team label (it predates both policies).
fn legacy(meta: Value) -> Value {
    let mut metadata = json!({
        "name": "legacy-orphan", "namespace": "ctl-ns", "uid": "5f1c2d6e-0000-4000-8000-000000000001",
        "resourceVersion": "4711", "generation": 1,
        "creationTimestamp": "2026-11-01T08:00:00Z",
        "annotations": {"deployment.kubernetes.io/revision": "1"},
        "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update",
                           "apiVersion": "apps/v1", "time": "2026-11-01T08:00:00Z"}],
    });
    for (k, v) in meta.as_object().unwrap() {
        metadata[k] = v.clone();
    }
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "legacy"}},
                 "template": {"metadata": {"labels": {"app": "legacy"}},
                              "spec": {"containers": [{"name": "app", "image": "alpine:3"}]}}},
        "status": {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1},
    })
}

/// An UPDATE review as the API server sends it for `user`'s write (a patch for the garbage
/// collector, an update for the controller).
fn update(uid: &str, user: &str, options: &str, old: Value, new: Value) -> Vec<u8> {
    let gvk = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let gvr = json!({"group": "apps", "version": "v1", "resource": "deployments"});
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": gvk, "resource": gvr, "requestKind": gvk, "requestResource": gvr,
            "name": "legacy-orphan", "namespace": "ctl-ns", "operation": "UPDATE",
            "userInfo": {"username": user, "uid": "b3c1",
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": new, "oldObject": old, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": options},
        }
    }))
    .unwrap()
}

async fn server(chat: &ChatStandIn, policies: &str) -> TestServer {
    standin::logs::capture();
    let url = chat.url.clone();
    TestServer::start_with(Some(policies), move |c| {
        c.notify.webhook.url = Some(Secret::new(url));
        c.notify.concurrency = 1;
    })
    .await
}

fn verdict(body: &Value) -> (bool, String) {
    (
        body["response"]["allowed"].as_bool().unwrap(),
        body["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

/// A marker that is denied and notified: anything queued before it arrives before it.
async fn marker(s: &TestServer) {
    let mut review: Value = serde_json::from_slice(&update(
        "marker",
        "alice",
        "UpdateOptions",
        legacy(json!({"name": "marker", "labels": {"team": "a"}})),
        legacy(json!({"name": "marker", "labels": {"team": "a", "tier": "web"}})),
    ))
    .unwrap();
    review["request"]["name"] = json!("marker");
    let (_, body) = s.post(serde_json::to_vec(&review).unwrap()).await;
    assert!(!verdict(&body).0, "{body}");
}

const DELETING: &str = "2026-11-28T23:00:00Z";

#[tokio::test]
async fn cleanup_updates_are_allowed_and_never_notified() {
    let chat = ChatStandIn::start().await;
    let s = server(&chat, POLICIES).await;
    let cases = [
        // kubectl delete --cascade=orphan: the GC removes the orphan finalizer.
        update(
            "gc-orphan",
            GC,
            "PatchOptions",
            legacy(
                json!({"finalizers": ["orphan"], "deletionTimestamp": DELETING, "deletionGracePeriodSeconds": 0}),
            ),
            legacy(
                json!({"deletionTimestamp": DELETING, "deletionGracePeriodSeconds": 0, "resourceVersion": "4712"}),
            ),
        ),
        // --cascade=foreground (Argo CD's default): the GC removes foregroundDeletion.
        update(
            "gc-foreground",
            GC,
            "PatchOptions",
            legacy(
                json!({"finalizers": ["foregroundDeletion"], "deletionTimestamp": DELETING, "deletionGracePeriodSeconds": 0}),
            ),
            legacy(
                json!({"deletionTimestamp": DELETING, "deletionGracePeriodSeconds": 0, "resourceVersion": "4713"}),
            ),
        ),
        // The Deployment controller's bookkeeping: revision annotation and managedFields.
        update(
            "controller-revision",
            DEPLOYMENT_CONTROLLER,
            "UpdateOptions",
            legacy(json!({})),
            legacy(json!({
                "annotations": {"deployment.kubernetes.io/revision": "2"},
                "resourceVersion": "4714",
                "managedFields": [{"manager": "kube-controller-manager", "operation": "Update",
                                   "apiVersion": "apps/v1", "time": "2026-11-28T23:00:01Z"}],
            })),
        ),
        // An owner adopts it (ownerReferences) and adds its own finalizer.
        update(
            "adopted",
            "system:serviceaccount:argocd:argocd-application-controller",
            "UpdateOptions",
            legacy(json!({})),
            legacy(
                json!({"ownerReferences": [{"apiVersion": "argoproj.io/v1alpha1", "kind": "Application", "name": "a", "uid": "o1"}],
                          "finalizers": ["resources-finalizer.argocd.argoproj.io"]}),
            ),
        ),
    ];
    for review in cases {
        let (status, body) = s.post(review).await;
        assert_eq!(status, 200);
        assert_eq!(verdict(&body), (true, String::new()), "{body}");
    }
    // A real change by a person is judged: still denied (both policies), and notified.
    let (_, body) = s
        .post(update(
            "alice-scale",
            "alice",
            "UpdateOptions",
            legacy(json!({})),
            {
                let mut d = legacy(json!({}));
                d["spec"]["replicas"] = json!(2);
                d
            },
        ))
        .await;
    let (allowed, message) = verdict(&body);
    assert!(!allowed);
    assert!(
        message.contains("asks for 2 replicas; policy min-replicas requires at least 3")
            && message.contains("label team is missing"),
        "{message}"
    );
    marker(&s).await;
    let texts = chat.wait_texts(2).await;
    assert_eq!(texts.len(), 2, "{texts:#?}");
    assert!(
        texts[0].contains("DENIED update of Deployment ctl-ns/legacy-orphan"),
        "{texts:#?}"
    );
    assert!(
        texts[1].contains("DENIED update of Deployment ctl-ns/marker"),
        "{texts:#?}"
    );
}

#[tokio::test]
async fn a_policy_can_opt_in_to_judging_cleanup_and_it_is_still_not_notified() {
    let chat = ChatStandIn::start().await;
    let strict = POLICIES.replace(
        "    params: {required: [{key: team}]}\n",
        "    params: {required: [{key: team}]}\n    judgeCleanup: true\n",
    );
    let s = server(&chat, &strict).await;
    let (_, body) = s
        .post(update(
            "gc-orphan",
            GC,
            "PatchOptions",
            legacy(json!({"finalizers": ["orphan"], "deletionTimestamp": DELETING})),
            legacy(json!({"deletionTimestamp": DELETING})),
        ))
        .await;
    let (allowed, message) = verdict(&body);
    assert!(!allowed, "{body}");
    // Only the opted-in policy judged it; min-replicas did not.
    assert_eq!(
        message,
        "Deployment ctl-ns/legacy-orphan: label team is missing; policy team-label requires labels team"
    );
    marker(&s).await;
    let texts = chat.wait_texts(1).await;
    assert_eq!(texts.len(), 1, "{texts:#?}");
    assert!(texts[0].contains("ctl-ns/marker"), "{texts:#?}");
}
