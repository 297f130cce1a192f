//! Never block cleanup: which UPDATEs the policies do not judge.
//!
//! The garbage collector removes the `orphan` or `foregroundDeletion` finalizer of an object
//! being deleted, and controllers write `ownerReferences`, `status`, `resourceVersion`,
//! `managedFields` and their own annotations (`deployment.kubernetes.io/revision`). Denying
//! such an UPDATE because the object violates a policy (one it existed before, or one made
//! stricter since) blocks the deletion forever, with a notification per retry. So an UPDATE of
//! an object whose `metadata.deletionTimestamp` is set, or one that changes only bookkeeping,
//! is not judged by any policy that has not opted out (`judgeCleanup: true`), and is never
//! notified.
//!
//! The comparison reads the raw objects: top-level fields other than `status` and `metadata`
//! are compared as JSON text (the API server encodes the old and the new object the same way;
//! if it ever did not, the update counts as a change and is judged, failing closed).

use std::borrow::Cow;

use kube::core::admission::Operation;

use crate::admission::{Raw, Review};

/// Why an UPDATE is cleanup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// The object has `metadata.deletionTimestamp`: it is being deleted.
    BeingDeleted,
    /// Only bookkeeping differs between the old and the new object.
    Bookkeeping,
}

impl Cleanup {
    /// For people: `being deleted`, `bookkeeping only`.
    pub fn as_str(self) -> &'static str {
        match self {
            Cleanup::BeingDeleted => "being deleted",
            Cleanup::Bookkeeping => "bookkeeping only",
        }
    }
}

/// Metadata fields the API server, the garbage collector and controllers maintain.
const BOOKKEEPING_METADATA: &[&str] = &[
    "finalizers",
    "ownerReferences",
    "managedFields",
    "resourceVersion",
    "generation",
    "deletionGracePeriodSeconds",
];

/// Annotation prefixes written by controllers, not by people.
const CONTROLLER_ANNOTATION_PREFIXES: &[&str] = &["deployment.kubernetes.io/"];

/// Whether the review is an UPDATE that is cleanup, and why.
pub fn classify<'a>(req: &Review<'a>) -> Option<Cleanup> {
    if req.operation != Operation::Update {
        return None;
    }
    let (new, old) = (req.object.as_ref()?, req.old_object.as_ref()?);
    let deleting = |m: Option<Raw<'_>>| {
        m.and_then(|m| m.get("deletionTimestamp"))
            .is_some_and(|t| !t.is_null())
    };
    if deleting(new.metadata) || deleting(old.metadata) {
        return Some(Cleanup::BeingDeleted);
    }
    // The common change first: a different spec is judged, without walking the rest.
    if new.spec.map(Raw::text) != old.spec.map(Raw::text) {
        return None;
    }
    let top = |r: Raw<'a>| content(r, &["status", "metadata"], &[]);
    let meta = |m: Option<Raw<'a>>| {
        m.map(|m| content(m, BOOKKEEPING_METADATA, &["annotations"]))
            .unwrap_or_default()
    };
    (top(new.raw) == top(old.raw) && meta(new.metadata) == meta(old.metadata))
        .then_some(Cleanup::Bookkeeping)
}

/// The entries of an object without the `skip` keys, sorted by key; the values as JSON text,
/// except the `filtered` keys (annotations), whose controller-written entries are left out.
fn content<'a>(obj: Raw<'a>, skip: &[&str], filtered: &[&str]) -> Vec<(Cow<'a, str>, String)> {
    let mut out: Vec<(Cow<'a, str>, String)> = obj
        .entries()
        .into_iter()
        .filter(|(k, _)| !skip.contains(&k.as_ref()))
        .map(|(k, v)| {
            let text = if filtered.contains(&k.as_ref()) {
                let mut kept: Vec<(Cow<'_, str>, &str)> = v
                    .entries()
                    .into_iter()
                    .filter(|(ak, _)| {
                        !CONTROLLER_ANNOTATION_PREFIXES
                            .iter()
                            .any(|p| ak.starts_with(p))
                    })
                    .map(|(ak, av)| (ak, av.text()))
                    .collect();
                kept.sort();
                format!("{kept:?}")
            } else {
                v.text().to_owned()
            };
            (k, text)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::request;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn deployment(meta: Value, replicas: i64, image: &str) -> Value {
        let mut metadata = json!({"name": "legacy", "namespace": "ctl-ns", "uid": "u-1",
                                  "resourceVersion": "100", "generation": 1});
        if let (Some(m), Some(extra)) = (metadata.as_object_mut(), meta.as_object()) {
            for (k, v) in extra {
                m.insert(k.clone(), v.clone());
            }
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata,
               "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "a", "image": image}]}}},
               "status": {"replicas": replicas}})
    }

    fn update(old: Value, new: Value) -> Review<'static> {
        request(json!({
            "uid": "u", "operation": "UPDATE", "name": "legacy", "namespace": "ctl-ns",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "system:serviceaccount:kube-system:generic-garbage-collector"},
            "object": new, "oldObject": old,
        }))
    }

    #[rstest]
    #[case::gc_removes_orphan_finalizer(
        deployment(json!({"finalizers": ["orphan"], "deletionTimestamp": "2026-11-28T10:00:00Z"}), 1, "alpine"),
        deployment(json!({"deletionTimestamp": "2026-11-28T10:00:00Z", "resourceVersion": "101"}), 1, "alpine"),
        Some(Cleanup::BeingDeleted)
    )]
    #[case::controller_revision_status_and_managed_fields(
        deployment(json!({"annotations": {"deployment.kubernetes.io/revision": "1", "team": "a"}}), 1, "alpine"),
        deployment(json!({"annotations": {"team": "a", "deployment.kubernetes.io/revision": "2"}, "resourceVersion": "101",
                          "managedFields": [{"manager": "kube-controller-manager"}]}), 1, "alpine"),
        Some(Cleanup::Bookkeeping)
    )]
    #[case::owner_references_and_finalizers_added(
        deployment(json!({}), 1, "alpine"),
        deployment(json!({"ownerReferences": [{"kind": "App", "name": "x", "uid": "o"}], "finalizers": ["x/y"]}), 1, "alpine"),
        Some(Cleanup::Bookkeeping)
    )]
    #[case::replicas_changed(deployment(json!({}), 3, "alpine"), deployment(json!({}), 1, "alpine"), None)]
    #[case::image_changed(deployment(json!({}), 3, "alpine"), deployment(json!({}), 3, "evil.io/x"), None)]
    #[case::label_changed(
        deployment(json!({"labels": {"team": "a"}}), 3, "alpine"),
        deployment(json!({"labels": {"team": "b"}}), 3, "alpine"),
        None
    )]
    #[case::user_annotation_changed(
        deployment(json!({"annotations": {"team": "a"}}), 3, "alpine"),
        deployment(json!({"annotations": {"team": "b", "deployment.kubernetes.io/revision": "2"}}), 3, "alpine"),
        None
    )]
    #[case::annotation_removed(
        deployment(json!({"annotations": {"team": "a"}}), 3, "alpine"),
        deployment(json!({}), 3, "alpine"),
        None
    )]
    fn classify_table(#[case] old: Value, #[case] new: Value, #[case] expected: Option<Cleanup>) {
        assert_eq!(classify(&update(old, new)), expected);
    }

    #[test]
    fn create_and_updates_without_an_old_object_are_judged() {
        let d = deployment(
            json!({"deletionTimestamp": "2026-11-28T10:00:00Z"}),
            1,
            "alpine",
        );
        let mut r = update(d.clone(), d);
        r.old_object = None;
        assert_eq!(classify(&r), None);
        r.operation = Operation::Create;
        assert_eq!(classify(&r), None);
    }
}
