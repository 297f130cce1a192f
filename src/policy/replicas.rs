//! Policy kind `replicas`: a minimum (and optional maximum) replica count for Deployments,
//! StatefulSets, ReplicaSets and their `scale` subresource.

use serde::Deserialize;

use super::matching::Matcher;
use super::{Check, Eval, EvalCtx, Outcome, Params};
use crate::admission::{Review, describe_object, plural};

/// The resources whose objects have replicas (Kubernetes 1.33), as `(group, resource)`; each
/// also has a `scale` subresource.
pub(crate) const REPLICATED: [(&str, &str); 4] = [
    ("apps", "deployments"),
    ("apps", "statefulsets"),
    ("apps", "replicasets"),
    ("", "replicationcontrollers"),
];

/// Whether a request for `resource` in `group` (and `sub`resource) carries a replica count.
pub(crate) fn replicated(group: &str, resource: &str, sub: Option<&str>) -> bool {
    matches!(sub, None | Some("") | Some("scale"))
        && REPLICATED.iter().any(|&(g, r)| g == group && r == resource)
}

/// `params` of a `replicas` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Replicas {
    /// Fewest replicas allowed.
    #[serde(default)]
    pub min: Option<u32>,
    /// Most replicas allowed.
    #[serde(default)]
    pub max: Option<u32>,
}

impl Replicas {
    /// Checks the parameters after parsing.
    pub fn validate(&self) -> Result<(), String> {
        match (self.min, self.max) {
            (None, None) => Err("params: set `min`, `max` or both".into()),
            (Some(min), Some(max)) if min > max => {
                Err(format!("params: min ({min}) is greater than max ({max})"))
            }
            _ => Ok(()),
        }
    }

    /// Refuses a policy whose `match` can reach no resource that has replicas.
    pub(crate) fn check_reach(&self, matcher: &Matcher) -> Result<(), String> {
        let reaches = REPLICATED
            .iter()
            .any(|&(g, r)| matcher.reaches(g, r, None) || matcher.reaches(g, r, Some("scale")));
        if reaches {
            Ok(())
        } else {
            Err("match.resources: a replicas policy judges only deployments, statefulsets, replicasets, replicationcontrollers and their scale subresource, and this match reaches none of them".into())
        }
    }

    /// Evaluates the request's object (the new one; DELETE and CONNECT pass). Only objects
    /// that have replicas are judged (see [`REPLICATED`]); a DaemonSet, Pod or Service passes.
    pub fn evaluate(&self, policy: &str, req: &Review<'_>) -> Outcome {
        let sub = req.sub_resource.as_deref();
        if !replicated(&req.resource.group, &req.resource.resource, sub) {
            return Outcome::Pass;
        }
        let Some(obj) = req.object.as_ref() else {
            return Outcome::Pass;
        };
        let is_scale = req.is_scale();
        // Only `spec.replicas` is read, found when the review was decoded.
        let (count, unset) = match obj.replicas {
            Some(v) => match v.as_i64() {
                Some(n) => (n, false),
                None => {
                    return Outcome::Violation(format!(
                        "{} has a spec.replicas that is not a whole number; policy {policy} cannot check it",
                        describe_object(req)
                    ));
                }
            },
            // The API server defaults a missing spec.replicas to 1; on a Scale object,
            // 0 is omitted from the JSON (omitempty), so a missing value there means 0.
            None => (if is_scale { 0 } else { 1 }, true),
        };
        let unset_note = if unset && !is_scale {
            " (spec.replicas unset: the API default)"
        } else {
            ""
        };
        if let Some(min) = self.min
            && count < i64::from(min)
        {
            return Outcome::Violation(format!(
                "{} asks for {}{unset_note}; policy {policy} requires at least {min}",
                describe_object(req),
                plural(count, "replica"),
            ));
        }
        if let Some(max) = self.max
            && count > i64::from(max)
        {
            return Outcome::Violation(format!(
                "{} asks for {}; policy {policy} allows at most {max}",
                describe_object(req),
                plural(count, "replica"),
            ));
        }
        Outcome::Pass
    }
}

impl Params for Replicas {
    fn validate(&mut self) -> Result<(), String> {
        Replicas::validate(self)
    }
}

impl Check for Replicas {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Done(Replicas::evaluate(self, ctx.policy, ctx.review))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::request;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn deployment(replicas: Value) -> Review<'static> {
        let mut spec = json!({"template": {}});
        if !replicas.is_null() {
            spec["replicas"] = replicas;
        }
        request(json!({
            "uid": "u", "operation": "CREATE", "name": "alpine-deploy", "namespace": "app-ns",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "alpine-deploy", "namespace": "app-ns"}, "spec": spec},
        }))
    }

    fn scale(replicas: Option<i64>) -> Review<'static> {
        let spec = match replicas {
            Some(n) => json!({"replicas": n}),
            None => json!({}),
        };
        request(json!({
            "uid": "u", "operation": "UPDATE", "name": "alpine-deploy", "namespace": "app-ns",
            "kind": {"group": "autoscaling", "version": "v1", "kind": "Scale"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "subResource": "scale",
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "autoscaling/v1", "kind": "Scale",
                       "metadata": {"name": "alpine-deploy", "namespace": "app-ns"}, "spec": spec},
        }))
    }

    const MIN3: Replicas = Replicas {
        min: Some(3),
        max: None,
    };

    #[rstest]
    #[case::two(json!(2), Some("Deployment app-ns/alpine-deploy asks for 2 replicas; policy min-replicas requires at least 3"))]
    #[case::one(json!(1), Some("Deployment app-ns/alpine-deploy asks for 1 replica; policy min-replicas requires at least 3"))]
    #[case::zero(json!(0), Some("Deployment app-ns/alpine-deploy asks for 0 replicas; policy min-replicas requires at least 3"))]
    #[case::three(json!(3), None)]
    #[case::many(json!(50), None)]
    #[case::missing(
        Value::Null,
        Some(
            "Deployment app-ns/alpine-deploy asks for 1 replica (spec.replicas unset: the API default); policy min-replicas requires at least 3"
        )
    )]
    #[case::not_a_number(json!("3"), Some("Deployment app-ns/alpine-deploy has a spec.replicas that is not a whole number; policy min-replicas cannot check it"))]
    fn min_table(#[case] replicas: Value, #[case] expected: Option<&str>) {
        let got = MIN3.evaluate("min-replicas", &deployment(replicas));
        match expected {
            Some(msg) => assert_eq!(got, Outcome::Violation(msg.into())),
            None => assert_eq!(got, Outcome::Pass),
        }
    }

    #[rstest]
    #[case(
        Some(1),
        Some(
            "Deployment app-ns/alpine-deploy (scale) asks for 1 replica; policy min-replicas requires at least 3"
        )
    )]
    #[case(
        None,
        Some(
            "Deployment app-ns/alpine-deploy (scale) asks for 0 replicas; policy min-replicas requires at least 3"
        )
    )]
    #[case(Some(3), None)]
    fn scale_subresource(#[case] replicas: Option<i64>, #[case] expected: Option<&str>) {
        let got = MIN3.evaluate("min-replicas", &scale(replicas));
        match expected {
            Some(msg) => assert_eq!(got, Outcome::Violation(msg.into())),
            None => assert_eq!(got, Outcome::Pass),
        }
    }

    #[test]
    fn max_is_enforced() {
        let p = Replicas {
            min: Some(1),
            max: Some(10),
        };
        assert_eq!(
            p.evaluate("cap", &deployment(json!(11))),
            Outcome::Violation(
                "Deployment app-ns/alpine-deploy asks for 11 replicas; policy cap allows at most 10".into()
            )
        );
        assert_eq!(p.evaluate("cap", &deployment(json!(10))), Outcome::Pass);
    }

    #[rstest]
    #[case::daemonset("apps", "daemonsets", None, "DaemonSet")]
    #[case::pod("", "pods", None, "Pod")]
    #[case::service("", "services", None, "Service")]
    #[case::deployment_status("apps", "deployments", Some("status"), "Deployment")]
    fn objects_without_replicas_pass(
        #[case] group: &str,
        #[case] resource: &str,
        #[case] sub: Option<&str>,
        #[case] kind: &str,
    ) {
        let req = request(json!({
            "uid": "u", "operation": "CREATE", "name": "x", "namespace": "app-ns",
            "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": resource},
            "subResource": sub,
            "userInfo": {"username": "alice"},
            "object": {"metadata": {"name": "x", "namespace": "app-ns"}, "spec": {}},
        }));
        assert_eq!(MIN3.evaluate("min-replicas", &req), Outcome::Pass);
    }

    #[rstest]
    #[case("resources: ['apps/*']", true)]
    #[case("resources: ['*']", true)]
    #[case("resources: [deployments/scale]", true)]
    #[case("resources: [replicationcontrollers]", true)]
    #[case("resources: [daemonsets, pods]", false)]
    #[case("resources: [apps/daemonsets]", false)]
    #[case("resources: [example.com/deployments]", false)]
    fn a_match_must_reach_something_with_replicas(#[case] yaml: &str, #[case] ok: bool) {
        let m = Matcher::compile(serde_yaml::from_str(yaml).unwrap()).unwrap();
        let got = MIN3.check_reach(&m);
        assert_eq!(got.is_ok(), ok, "{yaml}: {got:?}");
    }

    #[rstest]
    #[case(None, None, "set `min`, `max` or both")]
    #[case(Some(5), Some(2), "min (5) is greater than max (2)")]
    fn bad_params(#[case] min: Option<u32>, #[case] max: Option<u32>, #[case] expected: &str) {
        let err = Replicas { min, max }.validate().unwrap_err();
        assert!(err.contains(expected), "{err}");
    }
}
