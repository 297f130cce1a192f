//! What the `annotations` and `labels` kinds share: required keys with optional value
//! patterns, checked on the object's own metadata and/or on its pod template's.

use regex::Regex;
use serde::Deserialize;

use super::Outcome;
use super::podspec::join_and;
use crate::admission::{Raw, Review, describe_object};

/// Labels or annotations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    /// `metadata.labels`
    Labels,
    /// `metadata.annotations`
    Annotations,
}

impl Field {
    fn key(self) -> &'static str {
        match self {
            Field::Labels => "labels",
            Field::Annotations => "annotations",
        }
    }

    fn singular(self) -> &'static str {
        match self {
            Field::Labels => "label",
            Field::Annotations => "annotation",
        }
    }
}

/// Where the keys are required.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) enum Target {
    /// The object's own metadata (a Deployment's, a Namespace's, a Pod's).
    Object,
    /// The pod template's metadata (what the Pods get); for a Pod, its own metadata. Objects
    /// without a pod template are not checked here.
    Template,
}

/// `params` of an `annotations` or `labels` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct RequiredKeys {
    /// The keys that must be present.
    required: Vec<Requirement>,
    /// `object`, `template` or both; default `[object]`.
    #[serde(default = "default_targets")]
    on: Vec<Target>,
}

fn default_targets() -> Vec<Target> {
    vec![Target::Object]
}

/// One required key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Requirement {
    /// The key, e.g. `team` or `app.kubernetes.io/part-of`.
    key: String,
    /// A regular expression the whole value must match.
    #[serde(default)]
    pattern: Option<String>,
    #[serde(skip)]
    compiled: Option<Regex>,
}

impl RequiredKeys {
    /// Checks the parameters and compiles the patterns (anchored at both ends).
    pub(crate) fn validate(&mut self) -> Result<(), String> {
        if self.required.is_empty() {
            return Err("params.required: list at least one key".into());
        }
        if self.on.is_empty() {
            return Err("params.on: list object, template or both".into());
        }
        for (i, r) in self.required.iter_mut().enumerate() {
            if r.key.is_empty() {
                return Err(format!("params.required[{i}].key: must not be empty"));
            }
            if let Some(p) = &r.pattern {
                let re = Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                    format!(
                        "params.required[{i}].pattern: {}",
                        super::messages::regex_error(p, &e)
                    )
                })?;
                r.compiled = Some(re);
            }
        }
        Ok(())
    }

    fn check(&self, field: Field, map: Option<Raw<'_>>, place: &str, problems: &mut Vec<String>) {
        for r in &self.required {
            let value = map.and_then(|m| m.get(&r.key));
            match (value.and_then(Raw::as_str), &r.compiled) {
                (None, _) => {
                    problems.push(format!("{} {} is missing{place}", field.singular(), r.key))
                }
                (Some(v), Some(re)) if !re.is_match(&v) => problems.push(format!(
                    "{} {}{place} is `{v}`, which does not match {}",
                    field.singular(),
                    r.key,
                    r.pattern.as_deref().unwrap_or_default()
                )),
                _ => {}
            }
        }
    }

    /// What the policy asks for: `labels team (^[a-z-]+$) and owner`.
    fn requirement(&self, field: Field) -> String {
        let keys: Vec<String> = self
            .required
            .iter()
            .map(|r| match &r.pattern {
                Some(p) => format!("{} matching {p}", r.key),
                None => r.key.clone(),
            })
            .collect();
        let on = match (
            self.on.contains(&Target::Object),
            self.on.contains(&Target::Template),
        ) {
            (true, true) => " on the object and its pod template",
            (false, true) => " on the pod template",
            _ => "",
        };
        format!("{} {}{on}", field.key(), join_and(&keys))
    }

    /// Evaluates the request's new object (DELETE and CONNECT pass).
    pub(crate) fn evaluate(&self, field: Field, policy: &str, req: &Review<'_>) -> Outcome {
        let Some(obj) = req.object.as_ref() else {
            return Outcome::Pass;
        };
        let own = match field {
            Field::Labels => obj.labels,
            Field::Annotations => obj.annotations,
        };
        let template = req.pod_template();
        let both = self.on.contains(&Target::Object) && self.on.contains(&Target::Template);
        let mut problems = Vec::new();
        if self.on.contains(&Target::Object) {
            let place = if both && template.is_some_and(|t| !t.is_pod) {
                " on the object"
            } else {
                ""
            };
            self.check(field, own, place, &mut problems);
        }
        if self.on.contains(&Target::Template)
            && let Some(t) = template
        {
            if t.is_pod {
                // A Pod is its own template: checked once, on its own metadata.
                if !self.on.contains(&Target::Object) {
                    self.check(field, own, "", &mut problems);
                }
            } else {
                let map = t.metadata.and_then(|m| m.get(field.key()));
                self.check(field, map, " on the pod template", &mut problems);
            }
        }
        if problems.is_empty() {
            return Outcome::Pass;
        }
        Outcome::Violation(format!(
            "{}: {}; policy {policy} requires {}",
            describe_object(req),
            join_and(&problems),
            self.requirement(field)
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::podspec::tests::{create, cronjob, deployment, pod};
    use rstest::rstest;
    use serde_json::{Value, json};

    fn params(yaml: &str) -> RequiredKeys {
        let mut p: RequiredKeys = serde_yaml::from_str(yaml).unwrap();
        p.validate().unwrap();
        p
    }

    fn labelled(mut obj: Value, own: Value, template: Value) -> Value {
        obj["metadata"]["labels"] = own;
        if obj["kind"] == "CronJob" {
            obj["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"] = template;
        } else if obj["kind"] != "Pod" {
            obj["spec"]["template"]["metadata"]["labels"] = template;
        }
        obj
    }

    const TEAM: &str =
        "required: [{key: team, pattern: '[a-z][a-z-]*'}, {key: owner}]\non: [object, template]\n";

    #[rstest]
    #[case::both_fine(json!({"team": "payments", "owner": "ana"}), json!({"team": "payments", "owner": "ana"}), None)]
    #[case::template_missing_owner(
        json!({"team": "payments", "owner": "ana"}), json!({"team": "payments"}),
        Some("label owner is missing on the pod template")
    )]
    #[case::object_bad_value(
        json!({"team": "Payments", "owner": "ana"}), json!({"team": "payments", "owner": "ana"}),
        Some("label team on the object is `Payments`, which does not match [a-z][a-z-]*")
    )]
    #[case::anchored_pattern(
        json!({"team": "payments!", "owner": "ana"}), json!({"team": "payments", "owner": "ana"}),
        Some("label team on the object is `payments!`, which does not match [a-z][a-z-]*")
    )]
    #[case::nothing(
        json!(null), json!(null),
        Some("label team is missing on the object, label owner is missing on the object, label team is missing on the pod template and label owner is missing on the pod template")
    )]
    fn deployment_object_and_template(
        #[case] own: Value,
        #[case] template: Value,
        #[case] expected: Option<&str>,
    ) {
        let p = params(TEAM);
        let obj = labelled(deployment(json!({"containers": []})), own, template);
        let got = p.evaluate(Field::Labels, "team-labels", &create(obj));
        match expected {
            None => assert_eq!(got, Outcome::Pass),
            Some(m) => assert_eq!(
                got,
                Outcome::Violation(format!(
                    "Deployment app-ns/web: {m}; policy team-labels requires labels team matching [a-z][a-z-]* and owner on the object and its pod template"
                ))
            ),
        }
    }

    #[test]
    fn template_only_checks_pods_cronjob_templates_and_skips_other_objects() {
        let p = params("required: [{key: team}]\non: [template]\n");
        let cj = labelled(cronjob(json!({})), json!({"team": "x"}), json!({}));
        assert_eq!(
            p.evaluate(Field::Labels, "t", &create(cj)),
            Outcome::Violation(
                "CronJob app-ns/nightly: label team is missing on the pod template; policy t requires labels team on the pod template".into()
            )
        );
        let cj = labelled(cronjob(json!({})), json!({}), json!({"team": "x"}));
        assert_eq!(p.evaluate(Field::Labels, "t", &create(cj)), Outcome::Pass);
        let bare = pod(json!({}));
        assert_eq!(
            p.evaluate(Field::Labels, "t", &create(bare)),
            Outcome::Violation(
                "Pod app-ns/web: label team is missing; policy t requires labels team on the pod template".into()
            )
        );
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}});
        assert_eq!(p.evaluate(Field::Labels, "t", &create(ns)), Outcome::Pass);
    }

    #[test]
    fn pods_are_checked_once_when_both_targets_are_set() {
        let p = params(TEAM);
        let got = p.evaluate(Field::Labels, "t", &create(pod(json!({}))));
        let Outcome::Violation(m) = got else {
            panic!("passed")
        };
        assert!(
            m.starts_with("Pod app-ns/web: label team is missing and label owner is missing;"),
            "{m}"
        );
    }

    #[test]
    fn annotations_on_the_object_by_default() {
        let p = params("required: [{key: example.com/contact, pattern: '.+@example\\.com'}]\n");
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": "team-a", "annotations": {"example.com/contact": "ops@example.org"}}});
        assert_eq!(
            p.evaluate(Field::Annotations, "contact", &create(ns.clone())),
            Outcome::Violation(
                "Namespace app-ns/team-a: annotation example.com/contact is `ops@example.org`, which does not match .+@example\\.com; \
                 policy contact requires annotations example.com/contact matching .+@example\\.com"
                    .into()
            )
        );
        ns["metadata"]["annotations"]["example.com/contact"] = json!("ops@example.com");
        assert_eq!(
            p.evaluate(Field::Annotations, "contact", &create(ns)),
            Outcome::Pass
        );
    }

    #[rstest]
    #[case("required: []", "params.required: list at least one key")]
    #[case(
        "required: [{key: a}]\non: []",
        "params.on: list object, template or both"
    )]
    #[case("required: [{key: ''}]", "params.required[0].key: must not be empty")]
    #[case(
        "required: [{key: a, pattern: '(unclosed'}]",
        "params.required[0].pattern: `(unclosed` is not a valid regular expression: unclosed group"
    )]
    fn bad_params(#[case] yaml: &str, #[case] expected: &str) {
        let mut p: RequiredKeys = serde_yaml::from_str(yaml).unwrap();
        let err = p.validate().unwrap_err();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn unknown_target_is_a_parse_error() {
        let err = serde_yaml::from_str::<RequiredKeys>("required: [{key: a}]\non: [pods]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown variant `pods`"), "{err}");
    }
}
