//! From an admission request and its decision to the facts a message needs: which events it
//! is, replicas and images (old and new), and whether an UPDATE changed more than bookkeeping.

use kube::core::admission::Operation;

use crate::admission::{Object, Raw, Review};

use super::rule::EventKind;
use super::{Change, ImageChange};
use crate::policy::Decision;

/// The events a decided request is, before the UPDATE bookkeeping check: a denied request
/// is only `denied`; an allowed one is `created` (CREATE) or `updated` (UPDATE), and `warned`
/// when it got warnings.
pub fn kinds(req: &Review<'_>, decision: &Decision) -> Vec<EventKind> {
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
/// there is nothing to compare with, and it counts as a change. The objects are compared
/// from their raw JSON, part by part, without building either.
pub fn meaningful_update(req: &Review<'_>, ignored: &[Vec<String>]) -> bool {
    let (Some(new), Some(old)) = (req.object.as_ref(), req.old_object.as_ref()) else {
        return true;
    };
    if ignored.is_empty() {
        return true;
    }
    let ignored: Vec<&[String]> = ignored.iter().map(Vec::as_slice).collect();
    !eq_ignoring(old.raw, new.raw, &ignored)
}

/// Equality of two JSON values, leaving out the paths in `ignored` (relative to them).
fn eq_ignoring<'a>(a: Raw<'a>, b: Raw<'a>, ignored: &[&[String]]) -> bool {
    if a.text() == b.text() {
        return true;
    }
    let sub = |key: &str| -> Option<Vec<&[String]>> {
        let sub: Vec<&[String]> = ignored
            .iter()
            .filter(|p| p.first().map(String::as_str) == Some(key))
            .map(|p| &p[1..])
            .collect();
        // A path that ends here ignores the whole member.
        (!sub.iter().any(|p| p.is_empty())).then_some(sub)
    };
    match (a.text().as_bytes().first(), b.text().as_bytes().first()) {
        (Some(b'{'), Some(b'{')) => {
            let x = a.entries();
            let y = b.entries();
            fn find<'a>(m: &[(std::borrow::Cow<'a, str>, Raw<'a>)], k: &str) -> Option<Raw<'a>> {
                m.iter().rev().find(|(key, _)| key == k).map(|(_, v)| *v)
            }
            let keys = x
                .iter()
                .map(|(k, _)| k)
                .chain(y.iter().map(|(k, _)| k).filter(|k| find(&x, k).is_none()));
            for key in keys {
                let Some(sub) = sub(key) else {
                    continue;
                };
                match (find(&x, key), find(&y, key)) {
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
        (Some(b'['), Some(b'[')) => {
            let x = a.items();
            let y = b.items();
            x.len() == y.len()
                && x.iter().zip(&y).enumerate().all(|(i, (u, v))| {
                    sub(&i.to_string()).is_none_or(|sub| eq_ignoring(*u, *v, &sub))
                })
        }
        // Scalars, or values of different types: compare as values (a string with escapes
        // equals its unescaped twin).
        _ => a.to_value() == b.to_value(),
    }
}

/// The pod spec inside a workload object: `spec` of a Pod, `spec.template.spec` of a
/// Deployment, StatefulSet, DaemonSet, ReplicaSet or Job, `spec.jobTemplate.spec.template.spec`
/// of a CronJob.
fn pod_spec<'a>(obj: &Object<'a>) -> Option<Raw<'a>> {
    // The parts of `spec` were found when the review was decoded.
    let spec = obj.spec?;
    if let Some(s) = obj.spec_template.and_then(|t| t.get("spec")) {
        return Some(s);
    }
    if let Some(s) = obj
        .job_template
        .and_then(|t| t.pointer(&["spec", "template", "spec"]))
    {
        return Some(s);
    }
    obj.spec_containers.map(|_| spec)
}

/// `(container, image)` of the init containers and containers, in order. Reads only the
/// containers' name and image.
fn images_of(obj: Option<&Object<'_>>) -> Vec<(String, String)> {
    let Some(spec) = obj.and_then(pod_spec) else {
        return Vec::new();
    };
    let [init, main] = spec.fields(["initContainers", "containers"]);
    let mut out = Vec::new();
    for list in [init, main].into_iter().flatten() {
        for c in list.items() {
            let [name, image] = c.fields(["name", "image"]);
            let name = name.and_then(Raw::as_str);
            if let Some(image) = image.and_then(Raw::as_str) {
                out.push((
                    name.as_deref().unwrap_or("?").to_owned(),
                    image.into_owned(),
                ));
            }
        }
    }
    out
}

/// Images of the new object paired by container name with the old object's.
pub fn images(req: &Review<'_>) -> Vec<ImageChange> {
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
pub fn replicas(req: &Review<'_>) -> Option<Change<i64>> {
    let scale = req.is_scale();
    let workload = matches!(
        req.kind.kind.as_ref(),
        "Deployment" | "StatefulSet" | "ReplicaSet" | "ReplicationController"
    );
    if !scale && !workload {
        return None;
    }
    let count = |o: Option<&Object<'_>>| {
        o.map(|o| {
            o.replicas
                .and_then(Raw::as_i64)
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
    use serde_json::Value;
    use serde_json::json;

    fn deployment(meta: Value, spec: Value, status: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": spec, "status": status})
    }

    fn update(old: Value, new: Value) -> Review<'static> {
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
