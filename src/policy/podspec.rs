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
//! Objects are read from their raw JSON: only the template's metadata and the containers'
//! name, image, ports and resources are looked at, everything else (env, volumes, …) is
//! skipped without being built. A half-valid manifest (in `gatehouse check`) is still judged
//! on what it has instead of failing to decode.

use std::borrow::Cow;

use crate::admission::{Object, Raw};

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

/// One container of a pod spec: its name and image, and the raw parts kinds may read.
#[derive(Debug, Clone)]
pub(crate) struct Container<'a> {
    /// Which list it is in.
    pub(crate) section: Section,
    /// Its position in the list, from 0.
    index: usize,
    /// `name`, when it is a non-empty string.
    name: Option<Cow<'a, str>>,
    /// `image`, when it is a string.
    image: Option<Cow<'a, str>>,
    /// `ports`.
    pub(crate) ports: Option<Raw<'a>>,
    /// `resources`.
    pub(crate) resources: Option<Raw<'a>>,
}

/// The fields of a container that [`Container`] keeps.
const FIELDS: [&str; 4] = ["name", "image", "ports", "resources"];

impl<'a> Container<'a> {
    /// The containers of `list`, each read in one walk over its members.
    fn each(section: Section, list: Raw<'a>) -> impl Iterator<Item = Self> {
        list.iter_objects(FIELDS)
            .enumerate()
            .map(move |(n, (fields, _))| Self::of(section, n, fields))
    }

    fn of(section: Section, index: usize, fields: [Option<Raw<'a>>; 4]) -> Self {
        let [name, image, ports, resources] = fields;
        Self {
            section,
            index,
            name: name.and_then(Raw::as_str).filter(|n| !n.is_empty()),
            image: image.and_then(Raw::as_str),
            ports,
            resources,
        }
    }

    /// `container web`, `initContainer #2` (its position when it has no name).
    pub(crate) fn label(&self) -> String {
        match &self.name {
            Some(n) => format!("{} {n}", self.section.singular()),
            None => format!("{} #{}", self.section.singular(), self.index + 1),
        }
    }

    /// The image, when it is a string.
    pub(crate) fn image(&self) -> Option<&str> {
        self.image.as_deref()
    }
}

/// How many containers of each list are read once per review and kept; the rest of a longer
/// list is read again by each kind that walks it, so memory stays bounded for any list.
const KEPT: usize = 32;

/// The pod template of a workload (or the Pod itself): its metadata and the parts of its
/// spec the kinds read, taken from the raw object once per review.
#[derive(Debug, Clone)]
pub(crate) struct PodTemplate<'a> {
    /// The template's `metadata` (for a Pod: none; its own metadata is the object's).
    pub(crate) metadata: Option<Raw<'a>>,
    /// True for a Pod, false for a template inside a workload.
    pub(crate) is_pod: bool,
    /// `spec.hostNetwork`.
    host_network: bool,
    /// The three lists, in the order of `Section::ALL`.
    lists: [Option<Raw<'a>>; 3],
    /// The first `KEPT` containers of each list, read.
    kept: [Vec<Container<'a>>; 3],
    /// Whether a list has more than `KEPT` containers.
    longer: [bool; 3],
}

impl<'a> PodTemplate<'a> {
    /// The pod template of an object of `kind`, if that kind carries one.
    pub(crate) fn of(kind: &str, obj: &Object<'a>) -> Option<Self> {
        let (metadata, spec, is_pod) = match kind {
            "Pod" => (None, obj.spec?, true),
            "PodTemplate" => {
                let [m, s] = obj.template?.fields(["metadata", "spec"]);
                (m, s?, false)
            }
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "ReplicationController"
            | "Job" => {
                let [m, s] = obj.spec_template?.fields(["metadata", "spec"]);
                (m, s?, false)
            }
            "CronJob" => {
                let [m, s] = obj
                    .job_template?
                    .pointer(&["spec", "template"])?
                    .fields(["metadata", "spec"]);
                (m, s?, false)
            }
            _ => return None,
        };
        let [init, main, ephemeral, host_network] = spec.fields([
            Section::ALL[0].field(),
            Section::ALL[1].field(),
            Section::ALL[2].field(),
            "hostNetwork",
        ]);
        let lists = [init, main, ephemeral];
        let mut kept: [Vec<Container<'a>>; 3] = Default::default();
        let mut longer = [false; 3];
        for (i, section) in Section::ALL.into_iter().enumerate() {
            if let Some(list) = lists[i] {
                for (n, c) in Container::each(section, list).enumerate() {
                    if n == KEPT {
                        longer[i] = true;
                        break;
                    }
                    kept[i].push(c);
                }
            }
        }
        Some(Self {
            metadata,
            is_pod,
            host_network: host_network.and_then(Raw::as_bool).unwrap_or(false),
            lists,
            kept,
            longer,
        })
    }

    /// The containers of one section, in order.
    fn section(&self, s: Section) -> impl Iterator<Item = Container<'a>> + '_ {
        let i = Section::ALL.iter().position(|&x| x == s).unwrap_or(0);
        let tail = self.lists[i]
            .filter(|_| self.longer[i])
            .map(move |list| Container::each(s, list).skip(KEPT));
        self.kept[i]
            .iter()
            .cloned()
            .chain(tail.into_iter().flatten())
    }

    /// The containers in `sections`, in the order of `sections`.
    pub(crate) fn containers_in<'s>(
        &'s self,
        sections: &'s [Section],
    ) -> impl Iterator<Item = Container<'a>> + 's {
        sections.iter().flat_map(move |&s| self.section(s))
    }

    /// Every container, init containers first, then containers, then ephemeral ones.
    pub(crate) fn containers(&self) -> impl Iterator<Item = Container<'a>> + '_ {
        self.containers_in(&Section::ALL)
    }

    /// `spec.hostNetwork`.
    pub(crate) fn host_network(&self) -> bool {
        self.host_network
    }
}

/// How many findings one policy's message names; past it they are only counted, so a huge
/// list of containers gives a message of bounded size.
pub(crate) const MAX_FINDINGS: usize = 20;

/// The findings of one policy for one review: the first `MAX_FINDINGS`, and a count of the rest
/// (which are never formatted).
#[derive(Debug, Default)]
pub(crate) struct Findings {
    shown: Vec<String>,
    more: usize,
}

impl Findings {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    /// Adds a finding, built only if it will be shown.
    pub(crate) fn push_with(&mut self, finding: impl FnOnce() -> String) {
        if self.shown.len() < MAX_FINDINGS {
            self.shown.push(finding());
        } else {
            self.more += 1;
        }
    }

    /// Adds a finding.
    pub(crate) fn push(&mut self, finding: String) {
        self.push_with(|| finding);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.shown.is_empty()
    }

    /// `a, b and c`; past the cap `a, b, … t and 980 more`.
    pub(crate) fn join_and(&self) -> String {
        match self.more {
            0 => join_and(&self.shown),
            n => format!("{} and {n} more", self.shown.join(", ")),
        }
    }

    /// `a, b, c`; past the cap `a, b, … t and 980 more`.
    pub(crate) fn join_commas(&self) -> String {
        match self.more {
            0 => self.shown.join(", "),
            n => format!("{} and {n} more", self.shown.join(", ")),
        }
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
    use crate::admission::Review;
    use crate::admission::testing::request;
    use rstest::rstest;
    use serde_json::Value;
    use serde_json::json;

    /// A review request for `object` (a whole manifest) created in namespace `app-ns`.
    pub(crate) fn create(object: Value) -> Review<'static> {
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
            let t = req.pod_template().unwrap_or_else(|| panic!("{obj}"));
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
        assert!(req.pod_template().is_none());
    }

    #[test]
    fn section_subsets_and_odd_shapes() {
        let spec = json!({"containers": "not a list", "initContainers": [{"name": "i"}]});
        let req = create(deployment(spec));
        let t = req.pod_template().unwrap();
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
