//! From an admission request and its decision to the facts a message needs: which events it
//! is, replicas and images (old and new), and whether an UPDATE changed more than bookkeeping.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde_json::Value;

use super::rule::EventKind;
use super::{Change, ImageChange};
use crate::policy::Decision;

/// The events a decided request is, before the UPDATE bookkeeping check: a denied request
/// is only `denied`; an allowed one is `created` (CREATE) or `updated` (UPDATE), and `warned`
/// when it got warnings.
pub fn kinds(req: &AdmissionRequest<DynamicObject>, decision: &Decision) -> Vec<EventKind> {
    if !decision.allowed() {
        return vec![EventKind::Denied];
    }
    let mut out = Vec::with_capacity(2);
    match req.operation {
        Operation::Create => out.push(EventKind::Created),
        Operation::Update => out.push(EventKind::Updated),
        _ => {}
    }
    if !decision.warnings.is_empty() {
        out.push(EventKind::Warned);
    }
    out
}

/// The headline event: denied, else created or updated, else warned.
pub fn primary(kinds: &[EventKind]) -> Option<EventKind> {
    [
        EventKind::Denied,
        EventKind::Created,
        EventKind::Updated,
        EventKind::Warned,
    ]
    .into_iter()
    .find(|k| kinds.contains(k))
}

/// `create`, `update`, `delete`, `connect`.
pub fn operation(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "create",
        Operation::Update => "update",
        Operation::Delete => "delete",
        Operation::Connect => "connect",
    }
}

/// JSON pointers parsed into their tokens (`/metadata/annotations/a~1b` → metadata,
/// annotations, a/b).
pub fn parse_pointers(pointers: &[String]) -> Vec<Vec<String>> {
    pointers
        .iter()
        .map(|p| {
            p.split('/')
                .skip(1)
                .map(|t| t.replace("~1", "/").replace("~0", "~"))
                .collect()
        })
        .collect()
}

/// Whether an UPDATE changed anything outside the ignored pointers. Without an old object
/// there is nothing to compare with, and it counts as a change.
pub fn meaningful_update(req: &AdmissionRequest<DynamicObject>, ignored: &[Vec<String>]) -> bool {
    let (Some(new), Some(old)) = (req.object.as_ref(), req.old_object.as_ref()) else {
        return true;
    };
    if ignored.is_empty() {
        return true;
    }
    let meta = |o: &DynamicObject| serde_json::to_value(&o.metadata).unwrap_or(Value::Null);
    let meta_ignored: Vec<&[String]> = ignored
        .iter()
        .filter(|p| p.first().map(String::as_str) == Some("metadata"))
        .map(|p| &p[1..])
        .collect();
    if meta_ignored.iter().any(|p| p.is_empty()) {
        // All of metadata is ignored.
    } else if !eq_ignoring(&meta(old), &meta(new), &meta_ignored) {
        return true;
    }
    let data_ignored: Vec<&[String]> = ignored.iter().map(Vec::as_slice).collect();
    !eq_ignoring(&old.data, &new.data, &data_ignored)
}

/// Equality of two JSON values, leaving out the paths in `ignored` (relative to them).
fn eq_ignoring(a: &Value, b: &Value, ignored: &[&[String]]) -> bool {
    if ignored.is_empty() {
        return a == b;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys = x.keys().chain(y.keys().filter(|k| !x.contains_key(*k)));
            for key in keys {
                let sub: Vec<&[String]> = ignored
                    .iter()
                    .filter(|p| p.first() == Some(key))
                    .map(|p| &p[1..])
                    .collect();
                if sub.iter().any(|p| p.is_empty()) {
                    continue;
                }
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if !eq_ignoring(u, v, &sub) {
                            return false;
                        }
                    }
                    (None, None) => {}
                    _ => return false,
                }
            }
            true
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).enumerate().all(|(i, (u, v))| {
                    let idx = i.to_string();
                    let sub: Vec<&[String]> = ignored
                        .iter()
                        .filter(|p| p.first() == Some(&idx))
                        .map(|p| &p[1..])
                        .collect();
                    sub.iter().any(|p| p.is_empty()) || eq_ignoring(u, v, &sub)
                })
        }
        _ => a == b,
    }
}

/// The pod spec inside a workload object: `spec` of a Pod, `spec.template.spec` of a
/// Deployment, StatefulSet, DaemonSet, ReplicaSet or Job, `spec.jobTemplate.spec.template.spec`
/// of a CronJob.
fn pod_spec(data: &Value) -> Option<&Value> {
    let spec = data.get("spec")?;
    if let Some(s) = spec.pointer("/template/spec") {
        return Some(s);
    }
    if let Some(s) = spec.pointer("/jobTemplate/spec/template/spec") {
        return Some(s);
    }
    spec.get("containers").map(|_| spec)
}

/// `(container, image)` of the init containers and containers, in order.
fn images_of(obj: Option<&DynamicObject>) -> Vec<(String, String)> {
    let Some(spec) = obj.and_then(|o| pod_spec(&o.data)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for list in ["initContainers", "containers"] {
        for c in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let name = c.get("name").and_then(Value::as_str).unwrap_or("?");
            if let Some(image) = c.get("image").and_then(Value::as_str) {
                out.push((name.to_owned(), image.to_owned()));
            }
        }
    }
    out
}

/// Images of the new object paired by container name with the old object's.
pub fn images(req: &AdmissionRequest<DynamicObject>) -> Vec<ImageChange> {
    let new = images_of(req.object.as_ref());
    let old = images_of(req.old_object.as_ref());
    let mut out: Vec<ImageChange> = new
        .iter()
        .map(|(c, image)| ImageChange {
            container: c.clone(),
            old: old.iter().find(|(o, _)| o == c).map(|(_, i)| i.clone()),
            new: Some(image.clone()),
        })
        .collect();
    if req.object.is_none() {
        out = old
            .into_iter()
            .map(|(c, i)| ImageChange {
                container: c,
                old: Some(i),
                new: None,
            })
            .collect();
    }
    out
}

/// `spec.replicas` of the new and old object, for kinds that have it (a missing value on a
/// workload is the API default of 1; on a Scale it means 0).
pub fn replicas(req: &AdmissionRequest<DynamicObject>) -> Option<Change<i64>> {
    let scale = req.sub_resource.as_deref() == Some("scale") || req.kind.kind == "Scale";
    let workload = matches!(
        req.kind.kind.as_str(),
        "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController"
    );
    if !scale && !workload {
        return None;
    }
    let count = |o: Option<&DynamicObject>| {
        o.map(|o| {
            o.data
                .pointer("/spec/replicas")
                .and_then(Value::as_i64)
                .unwrap_or(if scale { 0 } else { 1 })
        })
    };
    let change = Change {
        old: count(req.old_object.as_ref()),
        new: count(req.object.as_ref()),
    };
    (change.old.is_some() || change.new.is_some()).then_some(change)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::request;
    use crate::notify::settings::DEFAULT_IGNORED_UPDATE_FIELDS;
    use rstest::rstest;
    use serde_json::json;

    fn deployment(meta: Value, spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec, "status": status})
    }

    fn update(old: Value, new: Value) -> AdmissionRequest<DynamicObject> {
        request(json!({
            "uid": "u", "operation": "UPDATE", "name": "web", "namespace": "app",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "alice"},
            "object": new, "oldObject": old,
        }))
    }

    fn spec(image: &str, replicas: i64) -> Value {
        json!({"replicas": replicas, "template": {"spec": {"containers": [{"name": "app", "image": image}]}}})
    }

    fn defaults() -> Vec<Vec<String>> {
        parse_pointers(
            &DEFAULT_IGNORED_UPDATE_FIELDS
                .iter()
                .map(|s| (*s).to_owned())
                .collect::<Vec<_>>(),
        )
    }

    #[rstest]
    #[case::bookkeeping_only(
        deployment(json!({"name": "web", "resourceVersion": "1", "generation": 1,
            "managedFields": [{"manager": "a"}], "annotations": {"deployment.kubernetes.io/revision": "1"}}),
            spec("a:1", 3), json!({"replicas": 3})),
        deployment(json!({"name": "web", "resourceVersion": "2", "generation": 2,
            "managedFields": [{"manager": "b"}], "annotations": {"deployment.kubernetes.io/revision": "2"}}),
            spec("a:1", 3), json!({"replicas": 2, "readyReplicas": 2})),
        false
    )]
    #[case::image(
        deployment(json!({"name": "web"}), spec("a:1", 3), json!({})),
        deployment(json!({"name": "web"}), spec("a:2", 3), json!({})),
        true
    )]
    #[case::replicas(
        deployment(json!({"name": "web"}), spec("a:1", 3), json!({})),
        deployment(json!({"name": "web"}), spec("a:1", 4), json!({})),
        true
    )]
    #[case::label(
        deployment(json!({"name": "web", "labels": {"a": "1"}}), spec("a:1", 3), json!({})),
        deployment(json!({"name": "web", "labels": {"a": "2"}}), spec("a:1", 3), json!({})),
        true
    )]
    #[case::other_annotation(
        deployment(json!({"name": "web"}), spec("a:1", 3), json!({})),
        deployment(json!({"name": "web", "annotations": {"team": "x"}}), spec("a:1", 3), json!({})),
        true
    )]
    fn bookkeeping_is_not_an_update(
        #[case] old: Value,
        #[case] new: Value,
        #[case] meaningful: bool,
    ) {
        let req = update(old, new);
        assert_eq!(meaningful_update(&req, &defaults()), meaningful);
        // With the list emptied, every UPDATE counts.
        assert!(meaningful_update(&req, &[]));
    }

    fn finding(message: &str) -> crate::policy::Finding {
        crate::policy::Finding {
            policy: "p".into(),
            message: message.into(),
        }
    }

    #[rstest]
    #[case::created("CREATE", false, false, vec![EventKind::Created])]
    #[case::created_with_warning("CREATE", false, true, vec![EventKind::Created, EventKind::Warned])]
    #[case::updated("UPDATE", false, false, vec![EventKind::Updated])]
    #[case::denied_create("CREATE", true, true, vec![EventKind::Denied])]
    #[case::denied_delete("DELETE", true, false, vec![EventKind::Denied])]
    #[case::allowed_delete("DELETE", false, false, vec![])]
    #[case::warned_delete("DELETE", false, true, vec![EventKind::Warned])]
    fn events_of_a_decision(
        #[case] op: &str,
        #[case] denied: bool,
        #[case] warned: bool,
        #[case] expected: Vec<EventKind>,
    ) {
        let req = request(json!({
            "uid": "u", "operation": op, "name": "web", "namespace": "app",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "alice"},
            "object": {"metadata": {"name": "web"}},
        }));
        let decision = Decision {
            denials: if denied { vec![finding("no")] } else { vec![] },
            warnings: if warned {
                vec![finding("careful")]
            } else {
                vec![]
            },
            ..Decision::default()
        };
        let got = kinds(&req, &decision);
        assert_eq!(got, expected);
        assert_eq!(primary(&got), expected.first().copied());
    }

    #[test]
    fn images_pair_old_and_new_by_container() {
        let old = deployment(
            json!({"name": "web"}),
            json!({"template": {"spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "app", "image": "alpine:3.9.1"}, {"name": "side", "image": "envoy:1"}]}}}),
            json!({}),
        );
        let new = deployment(
            json!({"name": "web"}),
            json!({"replicas": 5, "template": {"spec": {"initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [{"name": "app", "image": "alpine:3"}, {"name": "new", "image": "nginx"}]}}}),
            json!({}),
        );
        let req = update(old, new);
        let imgs = images(&req);
        let pairs: Vec<_> = imgs
            .iter()
            .map(|i| (i.container.as_str(), i.old.as_deref(), i.new.as_deref()))
            .collect();
        assert_eq!(
            pairs,
            vec![
                ("init", Some("busybox"), Some("busybox")),
                ("app", Some("alpine:3.9.1"), Some("alpine:3")),
                ("new", None, Some("nginx")),
            ]
        );
        assert_eq!(
            replicas(&req),
            Some(Change {
                old: Some(1),
                new: Some(5)
            })
        );
    }

    #[test]
    fn pods_and_cronjobs_have_images_and_no_replicas() {
        let pod = request(json!({
            "uid": "u", "operation": "CREATE", "name": "p", "namespace": "app",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "userInfo": {},
            "object": {"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "nginx:1"}]}},
        }));
        assert_eq!(images(&pod)[0].new.as_deref(), Some("nginx:1"));
        assert_eq!(replicas(&pod), None);
        let cron = request(json!({
            "uid": "u", "operation": "CREATE", "name": "c", "namespace": "app",
            "kind": {"group": "batch", "version": "v1", "kind": "CronJob"},
            "resource": {"group": "batch", "version": "v1", "resource": "cronjobs"},
            "userInfo": {},
            "object": {"metadata": {"name": "c"}, "spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "job:2"}]}}}}}},
        }));
        assert_eq!(images(&cron)[0].new.as_deref(), Some("job:2"));
    }
}
