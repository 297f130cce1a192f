//! Policy kind `resources`: which resource requests and limits every container of a Pod or pod
//! template must set, and optional maxima for them.
//!
//! A request counts as set when the container sets the limit of the same resource: the API
//! server copies a limit into a missing request when it creates the Pod, so a Deployment whose
//! template has only limits makes Pods that have both. Ephemeral containers are not checked:
//! the API forbids resources on them, so requiring any would refuse every `kubectl debug`.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::exempt::ExemptImages;
use super::podspec::{Container, Findings, Section, join_and};
use super::quantity::{Quantity, parse_nanos};
use super::{Check, Eval, EvalCtx, Outcome, Params};
use crate::admission::describe_object;
use crate::admission::{Raw, Review};

/// The sections whose containers can have resources.
const SECTIONS: [Section; 2] = [Section::InitContainers, Section::Containers];

/// `params` of a `resources` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    /// Rules for `resources.requests`.
    #[serde(default)]
    requests: Rules,
    /// Rules for `resources.limits`.
    #[serde(default)]
    limits: Rules,
    /// Images whose containers are not checked (`safeimages.com/*`).
    #[serde(default)]
    exempt_images: ExemptImages,
}

/// What one of `requests` / `limits` must hold.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rules {
    /// Resource names that must be set (`cpu`, `memory`, `ephemeral-storage`, …).
    #[serde(default)]
    required: Vec<String>,
    /// Largest allowed value per resource name.
    #[serde(default)]
    max: BTreeMap<String, Quantity>,
}

/// Which of a container's resource maps a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Which {
    Requests,
    Limits,
}

impl Which {
    fn field(self) -> &'static str {
        match self {
            Which::Requests => "requests",
            Which::Limits => "limits",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Which::Requests => "request",
            Which::Limits => "limit",
        }
    }
}

/// A resource name Kubernetes knows, or an extended resource (`nvidia.com/gpu`).
fn valid_resource_name(name: &str) -> bool {
    matches!(name, "cpu" | "memory" | "ephemeral-storage")
        || name.starts_with("hugepages-")
        || (name.contains('/') && !name.starts_with('/') && !name.ends_with('/'))
}

impl Resources {
    /// Checks the parameters after parsing.
    pub fn validate(&self) -> Result<(), String> {
        for (which, rules) in [
            (Which::Requests, &self.requests),
            (Which::Limits, &self.limits),
        ] {
            for (i, name) in rules.required.iter().enumerate() {
                if !valid_resource_name(name) {
                    return Err(format!(
                        "params.{}.required[{i}]: `{name}` is not a resource name (cpu, memory, ephemeral-storage, hugepages-<size> or an extended resource such as nvidia.com/gpu)",
                        which.field()
                    ));
                }
            }
            for (name, max) in &rules.max {
                if !valid_resource_name(name) {
                    return Err(format!(
                        "params.{}.max.{name}: `{name}` is not a resource name (cpu, memory, ephemeral-storage, hugepages-<size> or an extended resource such as nvidia.com/gpu)",
                        which.field()
                    ));
                }
                if max.is_negative() {
                    return Err(format!(
                        "params.{}.max.{name}: `{max}` is negative; a maximum must be 0 or more",
                        which.field()
                    ));
                }
            }
        }
        self.exempt_images.validate("params.exemptImages")?;
        let empty = |r: &Rules| r.required.is_empty() && r.max.is_empty();
        if empty(&self.requests) && empty(&self.limits) {
            return Err(
                "params: set requests.required, requests.max, limits.required or limits.max".into(),
            );
        }
        Ok(())
    }

    /// Every resource name the rules name, once each.
    fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for rules in [&self.requests, &self.limits] {
            let named = rules.required.iter().chain(rules.max.keys());
            for name in named {
                if !names.contains(&name.as_str()) {
                    names.push(name);
                }
            }
        }
        names
    }

    fn check_container<'a>(
        &self,
        c: &Container<'a>,
        values: &mut Values<'_, 'a>,
        problems: &mut Findings,
    ) {
        values.read(c.resources);
        let mut missing = Vec::new();
        let mut over = Vec::new();
        for (which, rules) in [
            (Which::Requests, &self.requests),
            (Which::Limits, &self.limits),
        ] {
            for name in &rules.required {
                if values.get(which, name).is_none_or(Raw::is_null) {
                    missing.push((name.as_str(), which));
                }
            }
            for (name, max) in &rules.max {
                let Some(raw) = values.get(which, name) else {
                    continue;
                };
                let text = match raw.as_str() {
                    Some(s) => s,
                    None if raw.is_null() => continue,
                    None => raw.to_value().to_string().into(),
                };
                match parse_nanos(&text) {
                    Ok(n) if n > max.nanos() => {
                        over.push(format!("{name} {} {text} is above {max}", which.singular()))
                    }
                    Ok(_) => {}
                    Err(e) => over.push(format!("{name} {}: {e}", which.singular())),
                }
            }
        }
        if !missing.is_empty() {
            problems.push_with(|| {
                let missing: Vec<String> = missing
                    .iter()
                    .map(|(name, which)| format!("{name} {}", which.singular()))
                    .collect();
                format!("{} has no {}", c.label(), join_and(&missing))
            });
        }
        if !over.is_empty() {
            problems.push_with(|| format!("{}: {}", c.label(), join_and(&over)));
        }
    }

    /// What the policy asks for, for messages: `requests cpu, memory and limits memory set;
    /// limits memory at most 2Gi`.
    fn requirement(&self) -> String {
        let mut set = Vec::new();
        let mut caps = Vec::new();
        for (which, rules) in [
            (Which::Requests, &self.requests),
            (Which::Limits, &self.limits),
        ] {
            if !rules.required.is_empty() {
                set.push(format!("{} {}", which.field(), rules.required.join(", ")));
            }
            for (name, max) in &rules.max {
                caps.push(format!("{name} {} at most {max}", which.singular()));
            }
        }
        let mut parts = Vec::new();
        if !set.is_empty() {
            parts.push(format!("{} set", join_and(&set)));
        }
        if !caps.is_empty() {
            parts.push(join_and(&caps));
        }
        parts.join("; ")
    }

    /// Evaluates every (init) container of the request's Pod or pod template.
    pub fn evaluate(&self, policy: &str, req: &Review<'_>) -> Outcome {
        let Some(template) = req.pod_template() else {
            return Outcome::Pass;
        };
        let mut problems = Findings::new();
        let mut values = Values::new(self.names());
        for c in template.containers_in(&SECTIONS) {
            if self.exempt_images.covers(c.image()) {
                continue;
            }
            self.check_container(&c, &mut values, &mut problems);
        }
        if problems.is_empty() {
            return Outcome::Pass;
        }
        Outcome::Violation(format!(
            "{}: {}; policy {policy} requires {}",
            describe_object(req),
            problems.join_commas(),
            self.requirement()
        ))
    }
}

/// One container's values for the resource names a policy reads: its `requests` and `limits`
/// maps each walked once for all the names (not once per rule).
struct Values<'p, 'a> {
    names: Vec<&'p str>,
    /// The value of each name in `requests`, then in `limits`.
    found: Vec<Option<Raw<'a>>>,
}

impl<'p, 'a> Values<'p, 'a> {
    fn new(names: Vec<&'p str>) -> Self {
        let found = vec![None; 2 * names.len()];
        Self { names, found }
    }

    /// Reads the values of the container whose `resources` is `resources`.
    fn read(&mut self, resources: Option<Raw<'a>>) {
        let [requests, limits] = match resources {
            Some(r) => r.fields(["requests", "limits"]),
            None => [None, None],
        };
        let (in_requests, in_limits) = self.found.split_at_mut(self.names.len());
        for (map, out) in [(requests, in_requests), (limits, in_limits)] {
            match map {
                Some(m) => m.fields_into(&self.names, out),
                None => out.fill(None),
            }
        }
    }

    /// The value for `name` in `which`, with requests falling back to limits.
    fn get(&self, which: Which, name: &str) -> Option<Raw<'a>> {
        let i = self.names.iter().position(|n| *n == name)?;
        let limit = self.found[self.names.len() + i];
        match which {
            Which::Limits => limit,
            Which::Requests => self.found[i].or(limit),
        }
    }
}

impl Params for Resources {
    fn validate(&mut self) -> Result<(), String> {
        Resources::validate(self)
    }
}

impl Check for Resources {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Done(Resources::evaluate(self, ctx.policy, ctx.review))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::podspec::tests::{create, cronjob, deployment, pod};
    use rstest::rstest;
    use serde_json::{Value, json};

    fn policy(yaml: &str) -> Resources {
        let r: Resources = serde_yaml::from_str(yaml).unwrap();
        r.validate().unwrap();
        r
    }

    const ALL_FOUR: &str = "
requests: {required: [cpu, memory]}
limits: {required: [cpu, memory]}
";

    fn container(resources: Value) -> Value {
        json!({"name": "app", "image": "nginx", "resources": resources})
    }

    #[rstest]
    #[case::all_set(json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}}), None)]
    #[case::missing_cpu_request_only(
        json!({"requests": {"memory": "128Mi"}, "limits": {"memory": "256Mi", "cpu": "1"}}),
        None // the cpu limit stands in for the missing cpu request, as the API server defaults it
    )]
    #[case::missing_memory_limit_only(
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1"}}),
        Some("container app has no memory limit")
    )]
    #[case::missing_cpu_limit_only(
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}),
        Some("container app has no cpu limit")
    )]
    #[case::requests_only(
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}}),
        Some("container app has no cpu limit and memory limit")
    )]
    #[case::nothing(json!({}), Some("container app has no cpu request, memory request, cpu limit and memory limit"))]
    #[case::null_value(
        json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": null, "memory": "1Gi"}}),
        Some("container app has no cpu limit")
    )]
    fn each_missing_resource_is_named(#[case] resources: Value, #[case] expected: Option<&str>) {
        let p = policy(ALL_FOUR);
        let got = p.evaluate(
            "resources-set",
            &create(pod(json!({"containers": [container(resources)]}))),
        );
        match expected {
            None => assert_eq!(got, Outcome::Pass),
            Some(m) => assert_eq!(
                got,
                Outcome::Violation(format!(
                    "Pod app-ns/web: {m}; policy resources-set requires requests cpu, memory and limits cpu, memory set"
                ))
            ),
        }
    }

    #[test]
    fn each_container_is_judged_on_its_own_values() {
        // Values read for one container must not stand in for the next one's.
        let p = policy(ALL_FOUR);
        let full = json!({"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"cpu": "1", "memory": "1Gi"}});
        let named = |name: &str, resources: Value| json!({"name": name, "image": "nginx", "resources": resources});
        for containers in [
            json!([named("full", full.clone()), named("bare", json!({}))]),
            json!([named("bare", json!({})), named("full", full.clone())]),
        ] {
            let got = p.evaluate("r", &create(pod(json!({"containers": containers}))));
            let Outcome::Violation(m) = got else {
                panic!("{got:?}")
            };
            assert!(m.contains("container bare has no cpu request"), "{m}");
            assert!(!m.contains("container full"), "{m}");
        }
    }

    #[rstest]
    #[case::last_within(r#""cpu":"3","cpu":"1""#, None)]
    #[case::last_over(r#""cpu":"1","cpu":"3""#, Some("cpu request 3 is above 2"))]
    fn the_last_of_duplicate_resource_names_counts(
        #[case] members: &str,
        #[case] expected: Option<&str>,
    ) {
        // As the API server decodes it: a later member of the same name replaces the earlier.
        let p = policy(CAPPED);
        let resources = json!({"requests": {"memory": "1Gi", "cpu": "MARK"}});
        let review = serde_json::to_string(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u", "operation": "CREATE", "name": "web", "namespace": "app-ns",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "userInfo": {"username": "u"},
                "object": pod(json!({"containers": [container(resources)]})),
            }
        }))
        .unwrap()
        .replace(r#""cpu":"MARK""#, members);
        let req = crate::admission::testing::leak(review.into_bytes()).unwrap();
        match (p.evaluate("caps", &req), expected) {
            (Outcome::Pass, None) => {}
            (Outcome::Violation(m), Some(e)) => assert!(m.contains(e), "{m}"),
            (got, _) => panic!("{got:?}"),
        }
    }

    #[test]
    fn request_missing_without_a_limit_to_fall_back_on() {
        let p = policy("requests: {required: [memory]}\n");
        let got = p.evaluate(
            "mem",
            &create(pod(
                json!({"containers": [container(json!({"requests": {"cpu": "1"}}))]}),
            )),
        );
        assert_eq!(
            got,
            Outcome::Violation(
                "Pod app-ns/web: container app has no memory request; policy mem requires requests memory set".into()
            )
        );
    }

    const CAPPED: &str = "
requests: {required: [memory], max: {cpu: 2, memory: 4Gi}}
limits: {max: {memory: 8Gi, cpu: '4'}}
";

    #[rstest]
    #[case::at_the_max(json!({"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": "4000m", "memory": "8Gi"}}), None)]
    #[case::other_notation_at_the_max(json!({"requests": {"cpu": "2000m", "memory": "4096Mi"}, "limits": {"memory": "8589934592"}}), None)]
    #[case::one_milli_over(json!({"requests": {"cpu": "2001m", "memory": "1Gi"}}), Some("container app: cpu request 2001m is above 2"))]
    #[case::one_byte_over(json!({"requests": {"memory": "4294967297"}}), Some("container app: memory request 4294967297 is above 4Gi"))]
    #[case::exponent_over(json!({"requests": {"memory": "1Gi", "cpu": "1"}, "limits": {"cpu": "5e0"}}), Some("container app: cpu limit 5e0 is above 4"))]
    #[case::number_value(json!({"requests": {"memory": "1Gi", "cpu": 3}}), Some("container app: cpu request 3 is above 2"))]
    #[case::limit_stands_for_request(json!({"limits": {"memory": "5Gi"}}), Some("container app: memory request 5Gi is above 4Gi"))]
    #[case::garbage(json!({"requests": {"memory": "lots"}}), Some("container app: memory request: `lots` is not a Kubernetes quantity: it has no digits before the unit"))]
    fn maxima_compare_quantities(#[case] resources: Value, #[case] expected: Option<&str>) {
        let p = policy(CAPPED);
        let got = p.evaluate(
            "caps",
            &create(pod(json!({"containers": [container(resources)]}))),
        );
        match expected {
            None => assert_eq!(got, Outcome::Pass),
            Some(m) => assert_eq!(
                got,
                Outcome::Violation(format!(
                    "Pod app-ns/web: {m}; policy caps requires requests memory set; cpu request at most 2, memory request at most 4Gi, cpu limit at most 4 and memory limit at most 8Gi"
                ))
            ),
        }
    }

    #[test]
    fn deployments_and_cronjobs_init_containers_are_checked_ephemeral_ones_are_not() {
        let p = policy("limits: {required: [memory]}\n");
        let spec = json!({
            "initContainers": [{"name": "migrate", "image": "m"}],
            "containers": [
                {"name": "web", "image": "w", "resources": {"limits": {"memory": "1Gi"}}},
                {"name": "sidecar", "image": "s", "resources": {"requests": {"memory": "1Gi"}}},
            ],
            "ephemeralContainers": [{"name": "debugger", "image": "busybox"}],
        });
        assert_eq!(
            p.evaluate("mem-limit", &create(deployment(spec.clone()))),
            Outcome::Violation(
                "Deployment app-ns/web: initContainer migrate has no memory limit, container sidecar has no memory limit; \
                 policy mem-limit requires limits memory set"
                    .into()
            )
        );
        let Outcome::Violation(m) = p.evaluate("mem-limit", &create(cronjob(spec))) else {
            panic!("cronjob passed")
        };
        assert!(
            m.starts_with("CronJob app-ns/nightly: initContainer migrate"),
            "{m}"
        );
        assert!(!m.contains("debugger"), "{m}");

        let debug_only = pod(json!({
            "containers": [{"name": "web", "image": "w", "resources": {"limits": {"memory": "1Gi"}}}],
            "ephemeralContainers": [{"name": "debugger", "image": "busybox"}],
        }));
        assert_eq!(p.evaluate("mem-limit", &create(debug_only)), Outcome::Pass);
    }

    #[rstest]
    #[case("{}", "params: set requests.required")]
    #[case(
        "requests: {required: [mem]}",
        "params.requests.required[0]: `mem` is not a resource name"
    )]
    #[case(
        "limits: {max: {gpu: 1}}",
        "params.limits.max.gpu: `gpu` is not a resource name"
    )]
    #[case(
        "limits: {max: {cpu: \"-1\"}}",
        "params.limits.max.cpu: `-1` is negative; a maximum must be 0 or more"
    )]
    #[case(
        "requests: {max: {memory: -512Mi}}",
        "params.requests.max.memory: `-512Mi` is negative"
    )]
    #[case(
        "{limits: {required: [cpu]}, exemptImages: [busybox]}",
        "params.exemptImages[0]: `busybox` must start with a registry host"
    )]
    fn bad_params(#[case] yaml: &str, #[case] expected: &str) {
        let r: Resources = serde_yaml::from_str(yaml).unwrap();
        let err = r.validate().unwrap_err();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn exempt_images_skip_their_containers() {
        let p = policy("{limits: {required: [memory]}, exemptImages: ['safeimages.com/*']}");
        let obj = pod(json!({"containers": [
            {"name": "web", "image": "w", "resources": {"limits": {"memory": "1Gi"}}},
            {"name": "agent", "image": "safeimages.com/agent:1"}]}));
        assert_eq!(p.evaluate("mem-limit", &create(obj)), Outcome::Pass);
        let obj = pod(json!({"containers": [{"name": "agent", "image": "elsewhere.io/agent:1"}]}));
        assert!(matches!(
            p.evaluate("mem-limit", &create(obj)),
            Outcome::Violation(m) if m.contains("container agent has no memory limit")
        ));
    }

    #[test]
    fn bad_max_quantity_fails_to_parse() {
        let err = serde_yaml::from_str::<Resources>("limits: {max: {memory: 8GB}}")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`8GB` is not a Kubernetes quantity"), "{err}");
        let ok: Resources =
            serde_yaml::from_str("limits: {max: {nvidia.com/gpu: 1, hugepages-2Mi: 1Gi}}").unwrap();
        ok.validate().unwrap();
    }
}
