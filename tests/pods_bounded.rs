//! A huge list of containers, each of them violating the pod-spec policies, gives messages of
//! bounded size: every policy names its first 20 findings and counts the rest.

use futures_util::FutureExt;
use gatehouse::admission;
use gatehouse::policy::{PolicySet, parse_policies};
use serde_json::json;

fn policies() -> PolicySet {
    let mut all = Vec::new();
    for name in ["registries", "resources", "ports"] {
        let path = format!(
            "{}/policies/examples/{name}.yaml",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).expect("example");
        all.extend(parse_policies(&text, &path).expect("example policies"));
    }
    PolicySet::new(all, vec![]).expect("policy set")
}

/// A Pod CREATE with `n` containers, each from a registry not allowed, without resources and
/// with a port outside the allowed ones.
fn pod(n: usize) -> Vec<u8> {
    let containers: Vec<_> = (0..n)
        .map(|i| {
            json!({"name": format!("c{i}"), "image": format!("evil.io/app-{i}:1"),
                   "ports": [{"containerPort": 7000}]})
        })
        .collect();
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web", "namespace": "app-ns", "operation": "CREATE",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": "web", "namespace": "app-ns"},
                       "spec": {"containers": containers}},
        }
    }))
    .expect("encode")
}

#[test]
fn a_hundred_thousand_bad_containers_give_bounded_messages() {
    let set = policies();
    let body = pod(100_000);
    let req = admission::decode(&body).expect("valid review");
    let decision = set.evaluate(&req).now_or_never().expect("no I/O");
    let mut by_policy: Vec<_> = decision
        .denials
        .iter()
        .map(|f| (f.policy.as_str(), f.message.as_str()))
        .collect();
    by_policy.sort();
    let names: Vec<_> = by_policy.iter().map(|(p, _)| *p).collect();
    assert_eq!(
        names,
        [
            "allowed-ports",
            "approved-registries",
            "container-resources"
        ]
    );
    for (policy, message) in &by_policy {
        assert!(message.len() < 4096, "{policy}: {} bytes", message.len());
        assert!(message.contains(" and 99980 more"), "{policy}: {message}");
        // The first findings are named, in order, the later ones are not.
        assert!(message.contains("container c0 "), "{policy}: {message}");
        assert!(message.contains("container c19"), "{policy}: {message}");
        assert!(!message.contains("container c20"), "{policy}: {message}");
    }
    let answer = admission::answer(&req, &decision);
    assert!(answer.len() < 16 * 1024, "{} bytes", answer.len());
}

#[test]
fn twenty_findings_are_all_named_without_a_count() {
    let set = policies();
    let body = pod(20);
    let req = admission::decode(&body).expect("valid review");
    let decision = set.evaluate(&req).now_or_never().expect("no I/O");
    assert_eq!(decision.denials.len(), 3);
    for f in &decision.denials {
        assert!(!f.message.contains("more"), "{}", f.message);
        assert!(f.message.contains("container c19"), "{}", f.message);
    }
    // 21 containers: the 21st is counted.
    let body = pod(21);
    let req = admission::decode(&body).expect("valid review");
    let decision = set.evaluate(&req).now_or_never().expect("no I/O");
    for f in &decision.denials {
        assert!(f.message.contains(" and 1 more"), "{}", f.message);
        assert!(!f.message.contains("container c20"), "{}", f.message);
    }
}
