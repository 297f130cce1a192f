//! The `match` block of a policy: which requests a policy applies to.

use std::collections::BTreeMap;

use kube::core::admission::Operation;

use crate::admission::Review;
use serde::Deserialize;

/// Built-in Kubernetes API groups whose names have no dot, so `apps/deployments` can be told
/// apart from `deployments/scale`.
const DOTLESS_GROUPS: &[&str] = &[
    "apps",
    "batch",
    "autoscaling",
    "policy",
    "extensions",
    "core",
];

/// The `match` block as written in a policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchSpec {
    /// `deployments`, `apps/deployments`, `deployments/scale`, `apps/deployments/scale`, `*`.
    pub resources: Vec<String>,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT` or `*`; default CREATE and UPDATE.
    #[serde(default)]
    pub operations: Vec<OperationMatch>,
    /// Namespaces to include (empty: all) and exclude.
    #[serde(default)]
    pub namespaces: NamespaceMatch,
    /// A Kubernetes label selector on the object's own labels.
    #[serde(default)]
    pub label_selector: Option<LabelSelector>,
}

/// An operation in a `match` block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum OperationMatch {
    /// CREATE
    #[serde(rename = "CREATE")]
    Create,
    /// UPDATE
    #[serde(rename = "UPDATE")]
    Update,
    /// DELETE
    #[serde(rename = "DELETE")]
    Delete,
    /// CONNECT
    #[serde(rename = "CONNECT")]
    Connect,
    /// Any operation.
    #[serde(rename = "*")]
    Any,
}

impl OperationMatch {
    fn matches(self, op: &Operation) -> bool {
        matches!(
            (self, op),
            (OperationMatch::Any, _)
                | (OperationMatch::Create, Operation::Create)
                | (OperationMatch::Update, Operation::Update)
                | (OperationMatch::Delete, Operation::Delete)
                | (OperationMatch::Connect, Operation::Connect)
        )
    }
}

/// Namespaces to include and exclude; a trailing `*` matches a prefix (`team-*`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceMatch {
    /// Only these namespaces (empty: every namespace, and cluster-scoped objects).
    #[serde(default)]
    pub include: Vec<String>,
    /// Never these namespaces.
    #[serde(default)]
    pub exclude: Vec<String>,
}

/// A Kubernetes label selector.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels that must be present with these values.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

/// One set-based label requirement.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    /// The label key.
    pub key: String,
    /// `In`, `NotIn`, `Exists`, `DoesNotExist`.
    pub operator: LabelOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default)]
    pub values: Vec<String>,
}

/// Label selector operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LabelOperator {
    /// The label's value is one of `values`.
    In,
    /// The label is absent or its value is none of `values`.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// A parsed resource pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourcePattern {
    /// API group; `None` matches any group.
    pub group: Option<String>,
    /// Plural resource name or `*`.
    pub resource: String,
    /// `None` matches only the main resource; `Some("*")` any subresource.
    pub subresource: Option<String>,
}

impl ResourcePattern {
    /// Parses `deployments`, `apps/deployments`, `deployments/scale`, `apps/deployments/scale`.
    /// A first segment that holds a dot or is a dot-less built-in group (`apps`, `batch`, …) is
    /// a group; write `core/pods` for the core group.
    pub fn parse(text: &str) -> Result<Self, String> {
        let parts: Vec<&str> = text.split('/').collect();
        if parts
            .iter()
            .any(|p| p.is_empty() || p.contains(char::is_whitespace))
        {
            return Err(format!("resource `{text}` has an empty or blank segment"));
        }
        let is_group = |s: &str| s.contains('.') || DOTLESS_GROUPS.contains(&s);
        let (group, resource, sub) = match parts.as_slice() {
            [r] => (None, *r, None),
            [a, b] if is_group(a) => (Some(*a), *b, None),
            [r, s] => (None, *r, Some(*s)),
            [g, r, s] => (Some(*g), *r, Some(*s)),
            _ => return Err(format!("resource `{text}` has more than three segments")),
        };
        let group = group.map(|g| {
            if g == "core" {
                String::new()
            } else {
                g.to_owned()
            }
        });
        if resource != "*" && resource.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(format!(
                "resource `{text}`: use the lower-case plural resource name (e.g. deployments), not the Kind"
            ));
        }
        Ok(Self {
            group,
            resource: resource.to_owned(),
            subresource: sub.map(str::to_owned),
        })
    }

    fn matches(&self, group: &str, resource: &str, sub: Option<&str>) -> bool {
        if let Some(g) = &self.group
            && g != group
        {
            return false;
        }
        if self.resource != "*" && self.resource != resource {
            return false;
        }
        match (&self.subresource, sub) {
            (None, None) => true,
            (None, Some(s)) => s.is_empty(),
            (Some(p), Some(s)) => p == "*" || p == s,
            (Some(_), None) => false,
        }
    }
}

/// A compiled `match` block.
#[derive(Debug, Clone)]
pub struct Matcher {
    resources: Vec<ResourcePattern>,
    operations: Vec<OperationMatch>,
    namespaces: NamespaceMatch,
    selector: Option<LabelSelector>,
}

impl Matcher {
    /// Checks and compiles a `match` block; the error names the field.
    pub fn compile(spec: MatchSpec) -> Result<Self, String> {
        if spec.resources.is_empty() {
            return Err("match.resources: at least one resource is required".into());
        }
        let resources = spec
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| {
                ResourcePattern::parse(r)
                    .and_then(|p| super::api_resources::check(r, &p).map(|()| p))
                    .map_err(|e| format!("match.resources[{i}]: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let operations = if spec.operations.is_empty() {
            vec![OperationMatch::Create, OperationMatch::Update]
        } else {
            spec.operations
        };
        for (which, list) in [
            ("include", &spec.namespaces.include),
            ("exclude", &spec.namespaces.exclude),
        ] {
            for (i, p) in list.iter().enumerate() {
                check_namespace_pattern(p)
                    .map_err(|e| format!("match.namespaces.{which}[{i}]: {e}"))?;
            }
        }
        if let Some(sel) = &spec.label_selector {
            for (i, e) in sel.match_expressions.iter().enumerate() {
                let needs_values = matches!(e.operator, LabelOperator::In | LabelOperator::NotIn);
                if needs_values == e.values.is_empty() {
                    return Err(format!(
                        "match.labelSelector.matchExpressions[{i}]: operator {:?} {} values",
                        e.operator,
                        if needs_values { "needs" } else { "takes no" }
                    ));
                }
            }
        }
        Ok(Self {
            resources,
            operations,
            namespaces: spec.namespaces,
            selector: spec.label_selector,
        })
    }

    /// Whether some resource pattern of this block covers `resource` in `group` (with `sub`),
    /// whatever the operation, namespace and labels.
    pub(crate) fn reaches(&self, group: &str, resource: &str, sub: Option<&str>) -> bool {
        self.resources
            .iter()
            .any(|p| p.matches(group, resource, sub))
    }

    /// Whether the request falls under this block.
    pub fn matches(&self, req: &Review<'_>) -> bool {
        if !self.operations.iter().any(|o| o.matches(&req.operation)) {
            return false;
        }
        let sub = req.sub_resource.as_deref();
        if !self
            .resources
            .iter()
            .any(|p| p.matches(&req.resource.group, &req.resource.resource, sub))
        {
            return false;
        }
        let ns = req.namespace.as_deref().unwrap_or("");
        if !self.namespaces.include.is_empty()
            && !self
                .namespaces
                .include
                .iter()
                .any(|p| namespace_matches(p, ns))
        {
            return false;
        }
        if self
            .namespaces
            .exclude
            .iter()
            .any(|p| namespace_matches(p, ns))
        {
            return false;
        }
        if let Some(sel) = &self.selector {
            let obj = req.object.as_ref().or(req.old_object.as_ref());
            let label = |key: &str| obj.and_then(|o| o.label(key));
            if !selector_matches(sel, label) {
                return false;
            }
        }
        true
    }
}

/// A namespace pattern is a name, or a prefix followed by one `*` at the end (`team-*`).
pub(crate) fn check_namespace_pattern(pattern: &str) -> Result<(), String> {
    let body = pattern.strip_suffix('*').unwrap_or(pattern);
    if body.contains('*') {
        return Err(format!(
            "`{pattern}`: `*` may only end a namespace pattern (team-* matches every namespace starting with team-); a `*` elsewhere would be taken literally"
        ));
    }
    if pattern.is_empty() {
        return Err("a namespace pattern must not be empty".into());
    }
    Ok(())
}

/// `team-*` matches every namespace starting with `team-`; otherwise names must be equal.
pub fn namespace_matches(pattern: &str, ns: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => !ns.is_empty() && ns.starts_with(prefix),
        None => pattern == ns,
    }
}

fn selector_matches<'a>(
    sel: &LabelSelector,
    label: impl Fn(&str) -> Option<std::borrow::Cow<'a, str>>,
) -> bool {
    sel.match_labels
        .iter()
        .all(|(k, v)| label(k).as_deref() == Some(v.as_str()))
        && sel.match_expressions.iter().all(|e| {
            let value = label(&e.key);
            let value = value.as_ref().map(|v| v.to_string());
            let value = value.as_ref();
            match e.operator {
                LabelOperator::In => value.is_some_and(|v| e.values.contains(v)),
                LabelOperator::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                LabelOperator::Exists => value.is_some(),
                LabelOperator::DoesNotExist => value.is_none(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::request;
    use rstest::rstest;
    use serde_json::json;

    #[rstest]
    #[case("deployments", None, "deployments", None)]
    #[case("apps/deployments", Some("apps"), "deployments", None)]
    #[case("deployments/scale", None, "deployments", Some("scale"))]
    #[case("apps/deployments/scale", Some("apps"), "deployments", Some("scale"))]
    #[case(
        "networking.k8s.io/ingresses",
        Some("networking.k8s.io"),
        "ingresses",
        None
    )]
    #[case("core/pods", Some(""), "pods", None)]
    #[case("pods/*", None, "pods", Some("*"))]
    fn resource_patterns_parse(
        #[case] text: &str,
        #[case] group: Option<&str>,
        #[case] resource: &str,
        #[case] sub: Option<&str>,
    ) {
        let p = ResourcePattern::parse(text).unwrap();
        assert_eq!(p.group.as_deref(), group);
        assert_eq!(p.resource, resource);
        assert_eq!(p.subresource.as_deref(), sub);
    }

    #[rstest]
    #[case("")]
    #[case("apps//deployments")]
    #[case("a/b/c/d")]
    #[case("Deployment")]
    fn bad_resource_patterns_are_rejected(#[case] text: &str) {
        assert!(ResourcePattern::parse(text).is_err(), "{text}");
    }

    fn matcher(yaml: &str) -> Matcher {
        Matcher::compile(serde_yaml::from_str(yaml).unwrap()).unwrap()
    }

    fn deployment(
        ns: &str,
        op: &str,
        sub: Option<&str>,
        labels: serde_json::Value,
    ) -> crate::admission::Review<'static> {
        request(json!({
            "uid": "u1",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "subResource": sub,
            "name": "web", "namespace": ns, "operation": op,
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "apps/v1", "kind": "Deployment",
                       "metadata": {"name": "web", "namespace": ns, "labels": labels},
                       "spec": {"replicas": 3}},
        }))
    }

    #[rstest]
    #[case::plain("resources: [deployments]", "app", "CREATE", None, true)]
    #[case::group("resources: [apps/deployments]", "app", "UPDATE", None, true)]
    #[case::wrong_group("resources: [example.com/deployments]", "app", "CREATE", None, false)]
    #[case::main_does_not_match_sub(
        "resources: [deployments]",
        "app",
        "UPDATE",
        Some("scale"),
        false
    )]
    #[case::sub("resources: [deployments/scale]", "app", "UPDATE", Some("scale"), true)]
    #[case::sub_not_main("resources: [deployments/scale]", "app", "UPDATE", None, false)]
    #[case::any_sub("resources: [deployments/*]", "app", "UPDATE", Some("status"), true)]
    #[case::default_ops_skip_delete("resources: [deployments]", "app", "DELETE", None, false)]
    #[case::delete_listed(
        "{resources: [deployments], operations: [DELETE]}",
        "app",
        "DELETE",
        None,
        true
    )]
    #[case::any_op("{resources: ['*'], operations: ['*']}", "app", "CONNECT", None, true)]
    #[case::include(
        "{resources: [deployments], namespaces: {include: [prod]}}",
        "app",
        "CREATE",
        None,
        false
    )]
    #[case::include_prefix(
        "{resources: [deployments], namespaces: {include: [ap*]}}",
        "app",
        "CREATE",
        None,
        true
    )]
    #[case::exclude(
        "{resources: [deployments], namespaces: {exclude: [app]}}",
        "app",
        "CREATE",
        None,
        false
    )]
    fn match_table(
        #[case] yaml: &str,
        #[case] ns: &str,
        #[case] op: &str,
        #[case] sub: Option<&str>,
        #[case] expected: bool,
    ) {
        let m = matcher(yaml);
        assert_eq!(
            m.matches(&deployment(ns, op, sub, json!({}))),
            expected,
            "{yaml}"
        );
    }

    #[rstest]
    #[case::labels_equal("{matchLabels: {tier: web}}", json!({"tier": "web"}), true)]
    #[case::labels_differ("{matchLabels: {tier: web}}", json!({"tier": "db"}), false)]
    #[case::in_set("{matchExpressions: [{key: env, operator: In, values: [prod, stage]}]}", json!({"env": "prod"}), true)]
    #[case::not_in_absent("{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}", json!({}), true)]
    #[case::not_in_present("{matchExpressions: [{key: env, operator: NotIn, values: [prod]}]}", json!({"env": "prod"}), false)]
    #[case::exists("{matchExpressions: [{key: env, operator: Exists}]}", json!({}), false)]
    #[case::does_not_exist("{matchExpressions: [{key: env, operator: DoesNotExist}]}", json!({}), true)]
    fn label_selector_table(
        #[case] sel: &str,
        #[case] labels: serde_json::Value,
        #[case] expected: bool,
    ) {
        let m = matcher(&format!(
            "{{resources: [deployments], labelSelector: {sel}}}"
        ));
        assert_eq!(
            m.matches(&deployment("app", "CREATE", None, labels)),
            expected,
            "{sel}"
        );
    }

    #[rstest]
    #[case("resources: []", "at least one resource")]
    #[case("resources: [Deployment]", "lower-case plural")]
    #[case(
        "{resources: [pods], namespaces: {include: ['*prod']}}",
        "match.namespaces.include[0]: `*prod`: `*` may only end a namespace pattern"
    )]
    #[case(
        "{resources: [pods], namespaces: {exclude: [team, 'a*b*']}}",
        "match.namespaces.exclude[1]: `a*b*`: `*` may only end"
    )]
    #[case(
        "{resources: [pods], labelSelector: {matchExpressions: [{key: a, operator: In}]}}",
        "needs values"
    )]
    #[case(
        "{resources: [pods], labelSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}",
        "takes no values"
    )]
    fn bad_match_blocks_name_the_field(#[case] yaml: &str, #[case] expected: &str) {
        let err = Matcher::compile(serde_yaml::from_str(yaml).unwrap()).unwrap_err();
        assert!(err.contains(expected), "{err}");
        assert!(err.starts_with("match."), "{err}");
    }
}
