//! Where the pod spec lives in the objects that carry one, and the containers in it.
//!
//! Shared by the kinds that look inside pods (`registries`, `resources`, `ports`,
//! `annotations`, `labels`). A Pod carries its spec at `spec`; the workload kinds carry a pod
//! template whose spec becomes every Pod's spec:
//!
//! | kind | pod template |
//! | --- | --- |
//! | Pod | the Pod itself (`metadata`, `spec`) |
//! | PodTemplate | `template` |
//! | Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job | `spec.template` |
//! | CronJob | `spec.jobTemplate.spec.template` |
//!
//! Objects are walked as JSON so a half-valid manifest (in `gatehouse check`) is still judged
//! on what it has instead of failing to decode.

use kube::core::DynamicObject;
use kube::core::admission::AdmissionRequest;
use serde_json::Value;

/// The three lists of containers a pod spec has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    /// `containers`
    Containers,
    /// `initContainers` (sidecars included: they are init containers with `restartPolicy: Always`)
    InitContainers,
    /// `ephemeralContainers` (added by `kubectl debug` through `pods/ephemeralcontainers`)
    EphemeralContainers,
}

impl Section {
    /// All sections, in the order the kubelet starts them.
    pub(crate) const ALL: [Section; 3] = [
        Section::InitContainers,
        Section::Containers,
        Section::EphemeralContainers,
    ];

    /// The field name in the pod spec.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Section::Containers => "containers",
            Section::InitContainers => "initContainers",
            Section::EphemeralContainers => "ephemeralContainers",
        }
    }

    /// How one container of this section is named in messages.
    pub(crate) fn singular(self) -> &'static str {
        match self {
            Section::Containers => "container",
            Section::InitContainers => "initContainer",
            Section::EphemeralContainers => "ephemeralContainer",
        }
    }
}

/// One container of a pod spec.
#[derive(Debug, Clone)]
pub(crate) struct Container<'a> {
    /// Which list it is in.
    pub(crate) section: Section,
    /// Its `name` (`#N` when it has none, N counted from 1).
    pub(crate) name: std::borrow::Cow<'a, str>,
    /// The container object.
    pub(crate) spec: &'a Value,
}

impl Container<'_> {
    /// `container web`, `initContainer migrate`.
    pub(crate) fn label(&self) -> String {
        format!("{} {}", self.section.singular(), self.name)
    }

    /// The `image` field, when it is a string.
    pub(crate) fn image(&self) -> Option<&str> {
        self.spec.get("image").and_then(Value::as_str)
    }
}

impl<'a> Container<'a> {
    fn new(section: Section, index: usize, spec: &'a Value) -> Self {
        let name = match spec.get("name").and_then(Value::as_str) {
            Some(n) if !n.is_empty() => std::borrow::Cow::Borrowed(n),
            _ => std::borrow::Cow::Owned(format!("#{}", index + 1)),
        };
        Self {
            section,
            name,
            spec,
        }
    }
}

/// The pod template of an object: the metadata and spec its Pods get.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PodTemplate<'a> {
    /// The template's `metadata` (for a Pod, `None`: its metadata is the object's own).
    pub(crate) metadata: Option<&'a Value>,
    /// The pod spec.
    pub(crate) spec: &'a Value,
    /// Whether the object is a Pod (its template is itself).
    pub(crate) is_pod: bool,
}

impl<'a> PodTemplate<'a> {
    /// Finds the pod template of an object of `kind` whose fields other than `metadata` are
    /// `data` (a [`DynamicObject`]'s `data`). `None` for kinds that have none.
    pub(crate) fn of(kind: &str, data: &'a Value) -> Option<Self> {
        let template = |t: &'a Value| -> Option<Self> {
            Some(Self {
                metadata: t.get("metadata"),
                spec: t.get("spec")?,
                is_pod: false,
            })
        };
        match kind {
            "Pod" => Some(Self {
                metadata: None,
                spec: data.get("spec")?,
                is_pod: true,
            }),
            "PodTemplate" => template(data.get("template")?),
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "ReplicationController"
            | "Job" => template(data.get("spec")?.get("template")?),
            "CronJob" => template(
                data.get("spec")?
                    .get("jobTemplate")?
                    .get("spec")?
                    .get("template")?,
            ),
            _ => None,
        }
    }

    /// The pod template of the request's new object (`None` on DELETE and CONNECT, for kinds
    /// without one, and for subresources such as `scale` whose object is not the workload).
    pub(crate) fn of_request(req: &'a AdmissionRequest<DynamicObject>) -> Option<Self> {
        let obj = req.object.as_ref()?;
        Self::of(&req.kind.kind, &obj.data)
    }

    /// Every container in `sections`, in that order.
    pub(crate) fn containers_in(
        &self,
        sections: &'a [Section],
    ) -> impl Iterator<Item = Container<'a>> + 'a {
        let spec = self.spec;
        sections.iter().flat_map(move |&section| {
            spec.get(section.field())
                .and_then(Value::as_array)
                .map(|list| list.as_slice())
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(move |(i, c)| Container::new(section, i, c))
        })
    }

    /// Every container: init containers, containers, ephemeral containers.
    pub(crate) fn containers(&self) -> impl Iterator<Item = Container<'a>> + 'a {
        self.containers_in(&Section::ALL)
    }

    /// `spec.hostNetwork`.
    pub(crate) fn host_network(&self) -> bool {
        self.spec
            .get("hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false)
    }
}

/// Joins findings as `a, b and c`.
pub(crate) fn join_and(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::admission::testing::request;
    use rstest::rstest;
    use serde_json::json;

    /// A review request for `object` (a whole manifest) created in namespace `app-ns`.
    pub(crate) fn create(object: Value) -> AdmissionRequest<DynamicObject> {
        let kind = object["kind"].as_str().unwrap_or("Pod").to_owned();
        let api_version = object["apiVersion"].as_str().unwrap_or("v1").to_owned();
        let (group, version) = match api_version.split_once('/') {
            Some((g, v)) => (g.to_owned(), v.to_owned()),
            None => (String::new(), api_version),
        };
        let resource = format!("{}s", kind.to_lowercase());
        let name = object["metadata"]["name"].as_str().unwrap_or("").to_owned();
        request(json!({
            "uid": "u", "operation": "CREATE", "name": name, "namespace": "app-ns",
            "kind": {"group": group, "version": version, "kind": kind},
            "resource": {"group": group, "version": version, "resource": resource},
            "userInfo": {"username": "alice"},
            "object": object,
        }))
    }

    /// A Pod with the given pod spec.
    pub(crate) fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "web", "namespace": "app-ns", "labels": {"app": "web"}},
               "spec": spec})
    }

    /// A Deployment whose pod template has the given spec.
    pub(crate) fn deployment(spec: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "app-ns"},
               "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": spec}}})
    }

    /// A CronJob whose job's pod template has the given spec.
    pub(crate) fn cronjob(spec: Value) -> Value {
        json!({"apiVersion": "batch/v1", "kind": "CronJob",
               "metadata": {"name": "nightly", "namespace": "app-ns"},
               "spec": {"schedule": "0 3 * * *",
                        "jobTemplate": {"spec": {"template": {
                            "metadata": {"labels": {"app": "nightly"}},
                            "spec": spec}}}}})
    }

    fn all_kinds(spec: Value) -> Vec<Value> {
        let mut out = vec![
            pod(spec.clone()),
            deployment(spec.clone()),
            cronjob(spec.clone()),
        ];
        for (kind, api) in [
            ("StatefulSet", "apps/v1"),
            ("DaemonSet", "apps/v1"),
            ("ReplicaSet", "apps/v1"),
            ("ReplicationController", "v1"),
            ("Job", "batch/v1"),
        ] {
            let mut d = deployment(spec.clone());
            d["kind"] = json!(kind);
            d["apiVersion"] = json!(api);
            out.push(d);
        }
        out.push(json!({"apiVersion": "v1", "kind": "PodTemplate",
                        "metadata": {"name": "t"}, "template": {"spec": spec}}));
        out
    }

    #[test]
    fn every_pod_carrying_kind_yields_all_three_sections() {
        let spec = json!({
            "initContainers": [{"name": "migrate", "image": "a"}],
            "containers": [{"name": "web", "image": "b"}, {"image": "c"}],
            "ephemeralContainers": [{"name": "debugger", "image": "d"}],
        });
        for obj in all_kinds(spec) {
            let req = create(obj.clone());
            let t = PodTemplate::of_request(&req).unwrap_or_else(|| panic!("{obj}"));
            let seen: Vec<_> = t
                .containers()
                .map(|c| (c.label(), c.image().unwrap_or("").to_owned()))
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("initContainer migrate".to_owned(), "a".to_owned()),
                    ("container web".to_owned(), "b".to_owned()),
                    ("container #2".to_owned(), "c".to_owned()),
                    ("ephemeralContainer debugger".to_owned(), "d".to_owned()),
                ],
                "{}",
                obj["kind"]
            );
            assert_eq!(t.is_pod, obj["kind"] == "Pod");
        }
    }

    #[rstest]
    #[case::service(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}, "spec": {"ports": []}}))]
    #[case::deployment_without_template(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {}}))]
    #[case::scale(json!({"apiVersion": "autoscaling/v1", "kind": "Scale", "metadata": {"name": "d"}, "spec": {"replicas": 1}}))]
    fn objects_without_a_pod_template(#[case] obj: Value) {
        let req = create(obj);
        assert!(PodTemplate::of_request(&req).is_none());
    }

    #[test]
    fn section_subsets_and_odd_shapes() {
        let spec = json!({"containers": "not a list", "initContainers": [{"name": "i"}]});
        let d = deployment(spec);
        let t = PodTemplate::of("Deployment", &d).unwrap();
        let names: Vec<_> = t
            .containers_in(&[Section::Containers, Section::InitContainers])
            .map(|c| c.label())
            .collect();
        assert_eq!(names, vec!["initContainer i"]);
        assert!(!t.host_network());
    }

    #[rstest]
    #[case(&[], "")]
    #[case(&["a"], "a")]
    #[case(&["a", "b"], "a and b")]
    #[case(&["a", "b", "c"], "a, b and c")]
    fn join_and_reads_like_prose(#[case] items: &[&str], #[case] expected: &str) {
        let items: Vec<String> = items.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(join_and(&items), expected);
    }
}
