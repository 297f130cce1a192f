//! Native `ValidatingAdmissionPolicy` / `ValidatingAdmissionPolicyBinding` manifests
//! (`admissionregistration.k8s.io/v1`), as users keep them for their clusters.
//!
//! [`documents`] splits a file into its documents (multi-document YAML separated by `---`, and
//! `List` objects), [`load`] pairs each binding with its policy and compiles the pair into one
//! [`VapPolicy`]. What Gatehouse cannot honour without API access is refused with the reason:
//! a `paramRef` to an object that is not in the policy files, a `paramRef.selector`, a
//! `namespaceSelector` that needs namespace labels.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{
    Activation, Attributes, AuditAnnotationSpec, CelPolicy, Evaluation, FailurePolicy,
    NamedExpression, ValidationSpec, Verdict, value,
};

const API_VERSIONS: &[&str] = &[
    "admissionregistration.k8s.io/v1",
    "admissionregistration.k8s.io/v1beta1",
    "admissionregistration.k8s.io/v1alpha1",
];

/// Splits YAML text into its documents, expanding `List` objects (`kind: List` or `…List`
/// with `items`). Empty documents are skipped.
pub fn documents(text: &str) -> Result<Vec<serde_json::Value>, String> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let value =
            serde_json::Value::deserialize(doc).map_err(|e| format!("document {}: {e}", i + 1))?;
        expand(value, &mut out);
    }
    Ok(out)
}

fn expand(value: serde_json::Value, out: &mut Vec<serde_json::Value>) {
    if value.is_null() {
        return;
    }
    let is_list = value
        .get("kind")
        .and_then(|k| k.as_str())
        .is_some_and(|k| k == "List" || (k.ends_with("List") && value.get("items").is_some()));
    if is_list && let Some(serde_json::Value::Array(items)) = value.get("items").cloned() {
        for item in items {
            expand(item, out);
        }
        return;
    }
    out.push(value);
}

/// Whether a document is a VAP or a VAP binding.
pub fn is_vap_document(doc: &serde_json::Value) -> bool {
    let api = doc.get("apiVersion").and_then(|v| v.as_str()).unwrap_or("");
    let kind = doc.get("kind").and_then(|v| v.as_str()).unwrap_or("");
    API_VERSIONS.contains(&api)
        && matches!(
            kind,
            "ValidatingAdmissionPolicy" | "ValidatingAdmissionPolicyBinding"
        )
}

/// What a binding does with a failed validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ValidationAction {
    /// Deny the request.
    Deny,
    /// Admit it with a warning.
    Warn,
    /// Admit it with an audit annotation.
    Audit,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Metadata {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest<S> {
    #[serde(default)]
    metadata: Metadata,
    spec: S,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicySpec {
    #[serde(default)]
    param_kind: Option<ParamKind>,
    #[serde(default)]
    match_constraints: Option<MatchResources>,
    #[serde(default)]
    validations: Vec<ValidationSpec>,
    #[serde(default)]
    failure_policy: Option<FailurePolicy>,
    #[serde(default)]
    audit_annotations: Vec<AuditAnnotationSpec>,
    #[serde(default)]
    match_conditions: Vec<NamedExpression>,
    #[serde(default)]
    variables: Vec<NamedExpression>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ParamKind {
    api_version: String,
    kind: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BindingSpec {
    policy_name: String,
    #[serde(default)]
    param_ref: Option<ParamRef>,
    #[serde(default)]
    match_resources: Option<MatchResources>,
    #[serde(default)]
    validation_actions: Vec<ValidationAction>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ParamRef {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    selector: Option<serde_json::Value>,
    #[serde(default)]
    parameter_not_found_action: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MatchResources {
    #[serde(default)]
    namespace_selector: Option<Selector>,
    #[serde(default)]
    object_selector: Option<Selector>,
    #[serde(default)]
    resource_rules: Vec<Rule>,
    #[serde(default)]
    exclude_resource_rules: Vec<Rule>,
    #[serde(default)]
    match_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Selector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
    #[serde(default)]
    match_expressions: Vec<SelectorRequirement>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SelectorRequirement {
    key: String,
    operator: String,
    #[serde(default)]
    values: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Rule {
    #[serde(default)]
    api_groups: Vec<String>,
    #[serde(default)]
    api_versions: Vec<String>,
    #[serde(default)]
    resources: Vec<String>,
    #[serde(default)]
    operations: Vec<String>,
    #[serde(default)]
    scope: Option<String>,
    #[serde(default)]
    resource_names: Vec<String>,
}

impl Selector {
    fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        for (i, r) in self.match_expressions.iter().enumerate() {
            match r.operator.as_str() {
                "In" | "NotIn" if r.values.is_empty() => {
                    return Err(format!(
                        "{field}.matchExpressions[{i}].values: must be non-empty for {}",
                        r.operator
                    ));
                }
                "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
                other => {
                    return Err(format!(
                        "{field}.matchExpressions[{i}].operator: `{other}` is not one of In, NotIn, Exists, DoesNotExist"
                    ));
                }
            }
        }
        Ok(())
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator.as_str() {
                    "In" => value.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => value.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => value.is_some(),
                    "DoesNotExist" => value.is_none(),
                    _ => false,
                }
            })
    }
}

fn any_or(list: &[String], value: &str) -> bool {
    list.iter().any(|x| x == "*" || x == value)
}

impl Rule {
    fn validate(&self, field: &str) -> Result<(), String> {
        for (name, list) in [
            ("apiGroups", &self.api_groups),
            ("apiVersions", &self.api_versions),
            ("resources", &self.resources),
            ("operations", &self.operations),
        ] {
            if list.is_empty() {
                return Err(format!(
                    "{field}.{name}: must list at least one value (or `*`)"
                ));
            }
        }
        for op in &self.operations {
            if !matches!(
                op.as_str(),
                "*" | "CREATE" | "UPDATE" | "DELETE" | "CONNECT"
            ) {
                return Err(format!(
                    "{field}.operations: `{op}` is not one of CREATE, UPDATE, DELETE, CONNECT, *"
                ));
            }
        }
        if let Some(scope) = &self.scope
            && !matches!(scope.as_str(), "*" | "Cluster" | "Namespaced")
        {
            return Err(format!(
                "{field}.scope: `{scope}` is not one of Cluster, Namespaced, *"
            ));
        }
        Ok(())
    }

    fn matches(&self, a: &Attributes) -> bool {
        any_or(&self.api_groups, &a.resource.group)
            && any_or(&self.api_versions, &a.resource.version)
            && any_or(&self.operations, &a.operation)
            && self.resources.iter().any(|r| resource_matches(r, a))
            && match self.scope.as_deref() {
                Some("Cluster") => a.namespace.is_empty(),
                Some("Namespaced") => !a.namespace.is_empty(),
                _ => true,
            }
            && (self.resource_names.is_empty() || self.resource_names.contains(&a.name))
    }
}

/// `pods`, `pods/status`, `*` (resources, not subresources), `*/*`, `pods/*`, `*/scale`.
fn resource_matches(pattern: &str, a: &Attributes) -> bool {
    let (res, sub) = pattern.split_once('/').unwrap_or((pattern, ""));
    (res == "*" || res == a.resource.name) && (sub == "*" || sub == a.sub_resource)
}

impl MatchResources {
    fn validate(&self, field: &str) -> Result<(), String> {
        if let Some(ns) = &self.namespace_selector
            && !ns.is_empty()
        {
            return Err(format!(
                "{field}.namespaceSelector: selects namespaces by their labels, which Gatehouse cannot read without API access; match namespaces with a matchCondition on `request.namespace` instead"
            ));
        }
        if let Some(obj) = &self.object_selector {
            obj.validate(&format!("{field}.objectSelector"))?;
        }
        if let Some(policy) = &self.match_policy
            && !matches!(policy.as_str(), "Exact" | "Equivalent")
        {
            return Err(format!(
                "{field}.matchPolicy: `{policy}` is not one of Exact, Equivalent"
            ));
        }
        for (i, r) in self.resource_rules.iter().enumerate() {
            r.validate(&format!("{field}.resourceRules[{i}]"))?;
        }
        for (i, r) in self.exclude_resource_rules.iter().enumerate() {
            r.validate(&format!("{field}.excludeResourceRules[{i}]"))?;
        }
        Ok(())
    }

    /// Whether the request is in scope; `needs_rules` for the policy's own constraints (a
    /// binding without resourceRules inherits the policy's).
    fn matches(&self, a: &Attributes, act: &Activation<'_>, needs_rules: bool) -> bool {
        if (needs_rules || !self.resource_rules.is_empty())
            && !self.resource_rules.iter().any(|r| r.matches(a))
        {
            return false;
        }
        if self.exclude_resource_rules.iter().any(|r| r.matches(a)) {
            return false;
        }
        if let Some(sel) = &self.object_selector
            && !sel.is_empty()
        {
            let on_new = act.has_object(false) && sel.matches(&act.labels(false));
            let on_old = act.has_object(true) && sel.matches(&act.labels(true));
            if !on_new && !on_old {
                return false;
            }
        }
        true
    }
}

/// One binding of one policy, compiled.
#[derive(Debug, Clone)]
pub struct VapPolicy {
    /// `metadata.name` of the ValidatingAdmissionPolicy.
    pub policy_name: String,
    /// `metadata.name` of the binding.
    pub binding_name: String,
    /// The binding's validationActions.
    pub actions: Vec<ValidationAction>,
    constraints: MatchResources,
    binding_match: Option<MatchResources>,
    cel: CelPolicy,
}

impl VapPolicy {
    /// `<policy>/<binding>`, how Gatehouse names the pair.
    pub fn name(&self) -> String {
        format!("{}/{}", self.policy_name, self.binding_name)
    }

    /// Whether the policy's matchConstraints and the binding's matchResources select the
    /// request.
    pub fn matches(&self, attrs: &Attributes, act: &Activation<'_>) -> bool {
        self.constraints.matches(attrs, act, true)
            && self
                .binding_match
                .as_ref()
                .is_none_or(|m| m.matches(attrs, act, false))
    }

    /// Evaluates the pair; messages read as the API server's.
    pub fn evaluate(&self, act: &Activation<'_>) -> Evaluation {
        let mut e = self.cel.evaluate(act);
        if e.verdict == Verdict::Pass {
            return e;
        }
        let prefix = format!(
            "ValidatingAdmissionPolicy '{}' with binding '{}' denied request: ",
            self.policy_name, self.binding_name
        );
        e.verdict = match e.verdict {
            Verdict::Pass => Verdict::Pass,
            Verdict::Violation { message, reason } => Verdict::Violation {
                message: format!("{prefix}{message}"),
                reason,
            },
            Verdict::Error(message) => Verdict::Error(format!("{prefix}{message}")),
        };
        e
    }
}

fn parse<T: serde::de::DeserializeOwned>(doc: &serde_json::Value, what: &str) -> Result<T, String> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        format!("{what}: {path}: {}", e.inner())
    })
}

/// Compiles every binding among `docs` with its policy. Documents that are neither VAPs nor
/// bindings are parameter objects a `paramRef` may name. A policy with no binding is not
/// enforced, as in a cluster.
pub fn load(docs: &[serde_json::Value]) -> Result<Vec<VapPolicy>, String> {
    let tagged: Vec<(&str, &serde_json::Value)> = docs.iter().map(|d| ("", d)).collect();
    let mut at = "";
    load_tagged(&tagged, &mut at).map(|v| v.into_iter().map(|(p, _)| p).collect())
}

/// [`load`] over documents tagged with the file they come from (a policy directory's files
/// form one set: a binding may name a policy or params in another file). Returns each policy
/// with its binding's file; on an error, `at` is the file the error is in.
fn load_tagged<'d>(
    docs: &[(&'d str, &'d serde_json::Value)],
    at: &mut &'d str,
) -> Result<Vec<(VapPolicy, &'d str)>, String> {
    let mut policies: BTreeMap<String, (PolicySpec, String)> = BTreeMap::new();
    let mut bindings: Vec<(String, BindingSpec, &'d str)> = Vec::new();
    let mut others: Vec<&serde_json::Value> = Vec::new();
    let mut others_at: Vec<&'d str> = Vec::new();
    for &(source, doc) in docs {
        *at = source;
        if !is_vap_document(doc) {
            others.push(doc);
            others_at.push(source);
            continue;
        }
        let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("");
        let named = match doc.pointer("/metadata/name").and_then(|n| n.as_str()) {
            Some(name) => format!("{kind} '{name}'"),
            None => kind.to_owned(),
        };
        if kind == "ValidatingAdmissionPolicy" {
            let m: Manifest<PolicySpec> = parse(doc, &named)?;
            let what = format!("ValidatingAdmissionPolicy '{}'", m.metadata.name);
            if m.metadata.name.is_empty() {
                return Err("ValidatingAdmissionPolicy: metadata.name is required".into());
            }
            if policies.contains_key(&m.metadata.name) {
                return Err(format!("{what}: defined twice"));
            }
            let constraints = m
                .spec
                .match_constraints
                .clone()
                .ok_or_else(|| format!("{what}: spec.matchConstraints is required"))?;
            if constraints.resource_rules.is_empty() {
                return Err(format!(
                    "{what}: spec.matchConstraints.resourceRules must list at least one rule"
                ));
            }
            constraints
                .validate("spec.matchConstraints")
                .map_err(|e| format!("{what}: {e}"))?;
            policies.insert(m.metadata.name.clone(), (m.spec, what));
        } else {
            let m: Manifest<BindingSpec> = parse(doc, &named)?;
            if m.metadata.name.is_empty() {
                return Err("ValidatingAdmissionPolicyBinding: metadata.name is required".into());
            }
            bindings.push((m.metadata.name, m.spec, source));
        }
    }
    let mut used = vec![false; others.len()];
    let mut out = Vec::new();
    for (name, b, source) in bindings {
        *at = source;
        let what = format!("ValidatingAdmissionPolicyBinding '{name}'");
        let (spec, policy_what) = policies.get(&b.policy_name).ok_or_else(|| {
            format!(
                "{what}: spec.policyName: no ValidatingAdmissionPolicy '{}' in the policy files",
                b.policy_name
            )
        })?;
        if b.validation_actions.is_empty() {
            return Err(format!(
                "{what}: spec.validationActions: list at least one of Deny, Warn, Audit"
            ));
        }
        if b.validation_actions.contains(&ValidationAction::Deny)
            && b.validation_actions.contains(&ValidationAction::Warn)
        {
            return Err(format!(
                "{what}: spec.validationActions: Deny and Warn may not be used together"
            ));
        }
        if let Some(m) = &b.match_resources {
            m.validate("spec.matchResources")
                .map_err(|e| format!("{what}: {e}"))?;
        }
        let params =
            params_for(spec, &b, &others, &mut used).map_err(|e| format!("{what}: {e}"))?;
        let cel = CelPolicy::compile_spec(
            spec.failure_policy.unwrap_or_default(),
            &spec.match_conditions,
            &spec.variables,
            &spec.validations,
            &spec.audit_annotations,
            params,
        )
        .map_err(|e| format!("{policy_what}: spec.{e}"))?;
        out.push((
            VapPolicy {
                policy_name: b.policy_name.clone(),
                binding_name: name,
                actions: b.validation_actions.clone(),
                constraints: spec.match_constraints.clone().unwrap_or_default(),
                binding_match: b.match_resources.clone(),
                cel,
            },
            source,
        ));
    }
    if let Some(i) = used.iter().position(|u| !u) {
        *at = others_at[i];
        let doc = others[i];
        let kind = doc.get("kind").and_then(|k| k.as_str()).unwrap_or("object");
        let name = doc
            .pointer("/metadata/name")
            .and_then(|n| n.as_str())
            .unwrap_or("");
        return Err(format!(
            "{kind} '{name}': not a ValidatingAdmissionPolicy, a binding, or params a binding names (Gatehouse does not apply other Kubernetes objects)"
        ));
    }
    Ok(out)
}

/// The `params` of a binding: the object its `paramRef` names among the policy files' other
/// documents, or null for a policy without `paramKind`.
fn params_for(
    spec: &PolicySpec,
    b: &BindingSpec,
    others: &[&serde_json::Value],
    used: &mut [bool],
) -> Result<value::Owned, String> {
    let Some(kind) = &spec.param_kind else {
        if b.param_ref.is_some() {
            return Err(
                "spec.paramRef: the policy has no paramKind, so the binding takes no params".into(),
            );
        }
        return Ok(Box::new(::cel::common::types::CelNull));
    };
    let r = b.param_ref.as_ref().ok_or_else(|| {
        format!(
            "spec.paramRef: the policy takes params of kind {} ({}); name one in the policy files",
            kind.kind, kind.api_version
        )
    })?;
    if r.selector.is_some() {
        return Err("spec.paramRef.selector: selecting params among cluster objects needs API access; name one object in the policy files with paramRef.name".into());
    }
    let name = r.name.as_deref().ok_or_else(|| {
        "spec.paramRef.name: required (Gatehouse reads params from the policy files)".to_string()
    })?;
    if let Some(action) = &r.parameter_not_found_action
        && !matches!(action.as_str(), "Allow" | "Deny")
    {
        return Err(format!(
            "spec.paramRef.parameterNotFoundAction: `{action}` is not one of Allow, Deny"
        ));
    }
    let found = others.iter().position(|doc| {
        let meta: Metadata = doc
            .get("metadata")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        doc.get("apiVersion").and_then(|v| v.as_str()) == Some(kind.api_version.as_str())
            && doc.get("kind").and_then(|v| v.as_str()) == Some(kind.kind.as_str())
            && meta.name == name
            && (r.namespace.is_none() || meta.namespace == r.namespace)
    });
    match found {
        Some(i) => {
            used[i] = true;
            Ok(value::from_json_value(others[i]))
        }
        None => Err(format!(
            "spec.paramRef: no {} '{name}' ({}) in the policy files; Gatehouse cannot read params from the cluster",
            kind.kind, kind.api_version
        )),
    }
}

impl crate::policy::Check for VapPolicy {
    fn evaluate<'r>(&'r self, ctx: &'r crate::policy::EvalCtx<'r, '_>) -> crate::policy::Eval<'r> {
        let user = self as *const Self as usize;
        let e = super::with_activation(ctx.review, user, |attrs, act| {
            self.matches(attrs, act)
                .then(|| VapPolicy::evaluate(self, act))
        });
        let verdict = match e {
            Some(e) => {
                super::annotate(ctx, &self.policy_name, e.audit_annotations);
                e.verdict
            }
            None => Verdict::Pass,
        };
        crate::policy::Eval::Done(super::outcome(verdict))
    }
}

impl VapPolicy {
    /// The Gatehouse action of the binding's validationActions: Deny, else Warn, else Audit.
    pub fn action(&self) -> crate::policy::Action {
        use crate::policy::Action;
        if self.actions.contains(&ValidationAction::Deny) {
            Action::Deny
        } else if self.actions.contains(&ValidationAction::Warn) {
            Action::Warn
        } else {
            Action::Audit
        }
    }
}

/// The Gatehouse policies of a policy file's Kubernetes objects: one per binding, named
/// `<policy>/<binding>`, applying to every request its own match rules select (the binding's
/// validationActions give the action).
pub(crate) fn policies(
    docs: Vec<serde_yaml::Value>,
    source: &str,
) -> Result<Vec<crate::policy::Policy>, String> {
    policies_in_files(vec![(source.to_owned(), docs)]).map_err(|e| e.message)
}

/// The VAPs bound among the Kubernetes objects of several files (a policy directory): a
/// binding may name a policy or params of another file. An error names the file it is in.
pub(crate) fn policies_in_files(
    files: Vec<(String, Vec<serde_yaml::Value>)>,
) -> Result<Vec<crate::policy::Policy>, crate::policy::LoadError> {
    use crate::policy::LoadError;
    let mut json: Vec<(usize, serde_json::Value)> = Vec::new();
    for (f, (source, docs)) in files.iter().enumerate() {
        for (i, doc) in docs.iter().enumerate() {
            let value = serde_json::to_value(doc).map_err(|e| {
                LoadError::new(source, format!("Kubernetes object #{}: {e}", i + 1))
            })?;
            let mut expanded = Vec::new();
            expand(value, &mut expanded);
            json.extend(expanded.into_iter().map(|v| (f, v)));
        }
    }
    let tagged: Vec<(&str, &serde_json::Value)> = json
        .iter()
        .map(|(f, v)| (files[*f].0.as_str(), v))
        .collect();
    let mut at = "";
    let loaded = load_tagged(&tagged, &mut at).map_err(|m| LoadError::new(at, m))?;
    let everything: crate::policy::matching::MatchSpec =
        serde_json::from_value(serde_json::json!({"resources": ["*", "*/*"], "operations": ["*"]}))
            .map_err(|e| LoadError::new("", e.to_string()))?;
    let mut out = Vec::new();
    for (vap, source) in loaded {
        out.push(crate::policy::Policy {
            name: vap.name(),
            action: vap.action(),
            description: None,
            matcher: crate::policy::matching::Matcher::compile(everything.clone())
                .map_err(|m| LoadError::new(source, m))?,
            kind: crate::policy::Kind {
                name: "ValidatingAdmissionPolicy",
                check: std::sync::Arc::new(vap),
            },
            // Gatehouse's rule for every kind: cleanup updates (deletion, bookkeeping) are
            // not judged.
            judge_cleanup: false,
            source: source.to_owned(),
        });
    }
    Ok(out)
}

/// Whether a YAML document is a Kubernetes object (it has `apiVersion` and `kind`) rather than
/// a Gatehouse policy document.
pub fn is_kubernetes_object(doc: &serde_yaml::Value) -> bool {
    doc.get("apiVersion").is_some() && doc.get("kind").is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::cel::tests::{deployment, deployment_attrs};
    use rstest::rstest;

    const DEMO_POLICY: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: "demo-policy.example.com"
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups:   ["apps"]
      apiVersions: ["v1"]
      operations:  ["CREATE", "UPDATE"]
      resources:   ["deployments"]
  validations:
    - expression: "object.spec.replicas <= 5"
"#;

    const DEMO_BINDING: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: "demo-binding-test.example.com"
spec:
  policyName: "demo-policy.example.com"
  validationActions: [Deny]
  matchResources:
    namespaceSelector:
      matchLabels:
        environment: test
"#;

    const REPLICA_LIMIT: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: "replicalimit-policy.example.com"
spec:
  failurePolicy: Fail
  paramKind:
    apiVersion: rules.example.com/v1
    kind: ReplicaLimit
  matchConstraints:
    resourceRules:
    - apiGroups:   ["apps"]
      apiVersions: ["v1"]
      operations:  ["CREATE", "UPDATE"]
      resources:   ["deployments"]
  validations:
    - expression: "object.spec.replicas <= params.maxReplicas"
      reason: Invalid
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: "replicalimit-binding-test.example.com"
spec:
  policyName: "replicalimit-policy.example.com"
  validationActions: [Deny]
  paramRef:
    name: "replica-limit-test.example.com"
    namespace: "default"
    parameterNotFoundAction: Deny
---
apiVersion: rules.example.com/v1
kind: ReplicaLimit
metadata:
  name: "replica-limit-test.example.com"
  namespace: "default"
maxReplicas: 3
"#;

    const MESSAGE_EXPRESSION: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: "deploy-replica-policy.example.com"
spec:
  paramKind:
    apiVersion: rules.example.com/v1
    kind: ReplicaLimit
  matchConstraints:
    resourceRules:
    - apiGroups:   ["apps"]
      apiVersions: ["v1"]
      operations:  ["CREATE", "UPDATE"]
      resources:   ["deployments"]
  validations:
  - expression: "object.spec.replicas <= params.maxReplicas"
    messageExpression: "'object.spec.replicas must be no greater than ' + string(params.maxReplicas)"
    reason: Invalid
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: "demo-binding-test.example.com"
spec:
  policyName: "deploy-replica-policy.example.com"
  validationActions: [Deny]
  paramRef:
    name: "demo-params"
---
apiVersion: rules.example.com/v1
kind: ReplicaLimit
metadata:
  name: "demo-params"
maxReplicas: 3
"#;

    const MATCH_CONDITIONS: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: "demo-policy.example.com"
spec:
  matchConstraints:
    resourceRules:
      - apiGroups:   ["*"]
        apiVersions: ["*"]
        operations:  ["CREATE", "UPDATE"]
        resources:   ["*"]
  matchConditions:
    - name: 'exclude-leases'
      expression: '!(request.resource.group == "coordination.k8s.io" && request.resource.resource == "leases")'
    - name: 'exclude-kubelet-requests'
      expression: '!("system:nodes" in request.userInfo.groups)'
    - name: 'rbac'
      expression: 'request.resource.group != "rbac.authorization.k8s.io"'
  validations:
    - expression: "!object.metadata.name.contains('demo') || object.metadata.namespace == 'demo'"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: "demo-binding"
spec:
  policyName: "demo-policy.example.com"
  validationActions: [Deny]
"#;

    const AUDIT: &str = r#"
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicy
metadata:
  name: "demo-policy.example.com"
spec:
  failurePolicy: Fail
  matchConstraints:
    resourceRules:
    - apiGroups:   ["apps"]
      apiVersions: ["v1"]
      operations:  ["CREATE", "UPDATE"]
      resources:   ["deployments"]
  validations:
    - expression: "object.spec.replicas > 50"
      messageExpression: "'Deployment spec.replicas set to ' + string(object.spec.replicas)"
  auditAnnotations:
    - key: "high-replica-count"
      valueExpression: "object.spec.replicas > 50 ? 'Deployment spec.replicas set to ' + string(object.spec.replicas) : null"
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingAdmissionPolicyBinding
metadata:
  name: "demo-binding"
spec:
  policyName: "demo-policy.example.com"
  validationActions: [Audit]
"#;

    fn load_text(text: &str) -> Result<Vec<VapPolicy>, String> {
        load(&documents(text)?)
    }

    /// Evaluates the only binding in `text` on a Deployment `name` with `replicas`.
    fn run(text: &str, name: &str, replicas: i64) -> (bool, Evaluation) {
        let policies = load_text(text).unwrap();
        assert_eq!(policies.len(), 1);
        let mut attrs = deployment_attrs("CREATE");
        attrs.name = name.into();
        let object = deployment(replicas, "nginx:1.27").replace(
            "\"name\":\"web\",\"namespace\"",
            &format!("\"name\":\"{name}\",\"namespace\""),
        );
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        (
            policies[0].matches(&attrs, &act),
            policies[0].evaluate(&act),
        )
    }

    fn denied(message: &str) -> Verdict {
        Verdict::Violation {
            message: message.into(),
            reason: "Invalid".into(),
        }
    }

    /// The Kubernetes documentation's ValidatingAdmissionPolicy examples, with the verdicts
    /// it documents.
    #[rstest]
    #[case::basic_denied(
        format!("{DEMO_POLICY}---\n{}", DEMO_BINDING.replace("namespaceSelector", "objectSelector").replace("environment: test", "app: web")),
        6,
        denied("ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding-test.example.com' denied request: failed expression: object.spec.replicas <= 5")
    )]
    #[case::basic_admitted(
        format!("{DEMO_POLICY}---\n{}", DEMO_BINDING.replace("namespaceSelector", "objectSelector").replace("environment: test", "app: web")),
        5,
        Verdict::Pass
    )]
    #[case::params_denied(
        REPLICA_LIMIT.to_string(),
        4,
        denied("ValidatingAdmissionPolicy 'replicalimit-policy.example.com' with binding 'replicalimit-binding-test.example.com' denied request: failed expression: object.spec.replicas <= params.maxReplicas")
    )]
    #[case::params_admitted(REPLICA_LIMIT.to_string(), 3, Verdict::Pass)]
    #[case::message_expression(
        MESSAGE_EXPRESSION.to_string(),
        5,
        denied("ValidatingAdmissionPolicy 'deploy-replica-policy.example.com' with binding 'demo-binding-test.example.com' denied request: object.spec.replicas must be no greater than 3")
    )]
    fn documented_examples(#[case] text: String, #[case] replicas: i64, #[case] expected: Verdict) {
        let (matched, e) = run(&text, "web", replicas);
        assert!(matched);
        assert_eq!(e.verdict, expected);
    }

    #[test]
    fn documented_match_conditions_example() {
        let (matched, e) = run(MATCH_CONDITIONS, "demo-app", 1);
        assert!(matched);
        assert_eq!(
            e.verdict,
            denied(
                "ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding' denied request: failed expression: !object.metadata.name.contains('demo') || object.metadata.namespace == 'demo'"
            )
        );
        let (_, e) = run(MATCH_CONDITIONS, "web", 1);
        assert_eq!(e.verdict, Verdict::Pass);
        // A kubelet request is excluded by a match condition: admitted.
        let policies = load_text(MATCH_CONDITIONS).unwrap();
        let mut attrs = deployment_attrs("CREATE");
        attrs.user_info.groups.push("system:nodes".into());
        let object = deployment(1, "x").replace(
            "\"name\":\"web\",\"namespace\"",
            "\"name\":\"demo-app\",\"namespace\"",
        );
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        assert_eq!(policies[0].evaluate(&act).verdict, Verdict::Pass);
    }

    #[test]
    fn documented_audit_annotations_example() {
        let policies = load_text(AUDIT).unwrap();
        assert_eq!(policies[0].actions, vec![ValidationAction::Audit]);
        let (_, e) = run(AUDIT, "web", 51);
        assert_eq!(e.verdict, Verdict::Pass);
        assert_eq!(
            e.audit_annotations,
            vec![(
                "high-replica-count".into(),
                "Deployment spec.replicas set to 51".into()
            )]
        );
        let (_, e) = run(AUDIT, "web", 3);
        assert_eq!(
            e.verdict,
            denied(
                "ValidatingAdmissionPolicy 'demo-policy.example.com' with binding 'demo-binding' denied request: Deployment spec.replicas set to 3"
            )
        );
        assert!(e.audit_annotations.is_empty());
    }

    /// What Gatehouse cannot honour is refused at load, with the reason.
    #[rstest]
    #[case::namespace_selector(format!("{DEMO_POLICY}---\n{DEMO_BINDING}"), "ValidatingAdmissionPolicyBinding 'demo-binding-test.example.com': spec.matchResources.namespaceSelector: selects namespaces by their labels, which Gatehouse cannot read without API access")]
    #[case::param_not_in_files(REPLICA_LIMIT.replace("name: \"replica-limit-test.example.com\"\n  namespace", "name: \"other\"\n  namespace"), "spec.paramRef: no ReplicaLimit 'replica-limit-test.example.com' (rules.example.com/v1) in the policy files; Gatehouse cannot read params from the cluster")]
    #[case::param_selector(REPLICA_LIMIT.replace("name: \"replica-limit-test.example.com\"\n    namespace: \"default\"", "selector: {matchLabels: {a: b}}"), "spec.paramRef.selector: selecting params among cluster objects needs API access")]
    #[case::no_param_ref(MESSAGE_EXPRESSION.replace("  paramRef:\n    name: \"demo-params\"\n", ""), "spec.paramRef: the policy takes params of kind ReplicaLimit")]
    #[case::namespace_object(
        DEMO_POLICY.replace("object.spec.replicas <= 5", "namespaceObject.metadata.name != 'x'") + "---\n" + &DEMO_BINDING.replace("    namespaceSelector:\n      matchLabels:\n        environment: test\n", "    {}\n"),
        "ValidatingAdmissionPolicy 'demo-policy.example.com': spec.validations[0].expression: `namespaceObject` is not available"
    )]
    #[case::unknown_policy(DEMO_BINDING.replace("namespaceSelector", "objectSelector"), "spec.policyName: no ValidatingAdmissionPolicy 'demo-policy.example.com' in the policy files")]
    #[case::deny_and_warn(format!("{DEMO_POLICY}---\n{}", DEMO_BINDING.replace("[Deny]", "[Deny, Warn]").replace("namespaceSelector", "objectSelector")), "Deny and Warn may not be used together")]
    #[case::typo(DEMO_POLICY.replace("validations:", "validation:"), "ValidatingAdmissionPolicy 'demo-policy.example.com': spec.validation: unknown field `validation`")]
    #[case::bad_operation(DEMO_POLICY.replace("\"CREATE\", \"UPDATE\"", "\"PATCH\""), "spec.matchConstraints.resourceRules[0].operations: `PATCH` is not one of CREATE, UPDATE, DELETE, CONNECT, *")]
    fn refused_at_load(#[case] text: String, #[case] expected: &str) {
        let err = load_text(&text).expect_err(&text);
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn list_objects_and_multiple_documents() {
        let policy: serde_json::Value = serde_yaml::from_str(DEMO_POLICY).unwrap();
        let binding: serde_json::Value =
            serde_yaml::from_str(&DEMO_BINDING.replace("namespaceSelector", "objectSelector"))
                .unwrap();
        let list =
            serde_json::json!({"apiVersion": "v1", "kind": "List", "items": [policy, binding]});
        let text = format!("---\n{}\n---\n", serde_yaml::to_string(&list).unwrap());
        let docs = documents(&text).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            load(&docs).unwrap()[0].name(),
            "demo-policy.example.com/demo-binding-test.example.com"
        );
        assert!(documents("a: [").unwrap_err().starts_with("document 1: "));
    }

    #[rstest]
    #[case("deployments", "", "CREATE", "default", true)]
    #[case("deployments", "scale", "UPDATE", "default", false)]
    #[case("pods", "", "CREATE", "default", false)]
    #[case("deployments", "", "DELETE", "default", false)]
    fn resource_rules_select_resource_subresource_and_operation(
        #[case] resource: &str,
        #[case] sub: &str,
        #[case] op: &str,
        #[case] ns: &str,
        #[case] expected: bool,
    ) {
        let policies = load_text(&format!(
            "{DEMO_POLICY}---\n{}",
            DEMO_BINDING.replace(
                "    namespaceSelector:\n      matchLabels:\n        environment: test\n",
                "    excludeResourceRules: []\n"
            )
        ))
        .unwrap();
        let mut attrs = deployment_attrs(op);
        attrs.resource.name = resource.into();
        attrs.sub_resource = sub.into();
        attrs.namespace = ns.into();
        let object = deployment(3, "x");
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        assert_eq!(policies[0].matches(&attrs, &act), expected);
    }

    #[rstest]
    #[case("pods/*", "pods", "log", true)]
    #[case("*/scale", "deployments", "scale", true)]
    #[case("*", "deployments", "scale", false)]
    #[case("*/*", "deployments", "scale", true)]
    #[case("deployments", "deployments", "", true)]
    fn resource_patterns(
        #[case] pattern: &str,
        #[case] res: &str,
        #[case] sub: &str,
        #[case] expected: bool,
    ) {
        let mut attrs = deployment_attrs("CREATE");
        attrs.resource.name = res.into();
        attrs.sub_resource = sub.into();
        assert_eq!(resource_matches(pattern, &attrs), expected);
    }

    #[test]
    fn object_selector_and_excludes() {
        let binding = DEMO_BINDING
            .replace("namespaceSelector", "objectSelector")
            .replace(
                "matchLabels:\n        environment: test",
                "matchExpressions:\n      - {key: team, operator: In, values: [payments]}",
            );
        let policies = load_text(&format!("{DEMO_POLICY}---\n{binding}")).unwrap();
        let attrs = deployment_attrs("CREATE");
        let object = deployment(3, "x");
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        assert!(policies[0].matches(&attrs, &act));
        let other = object.replace("\"team\":\"payments\"", "\"team\":\"search\"");
        let act = Activation::new(&attrs, Some(other.as_bytes()), None);
        assert!(!policies[0].matches(&attrs, &act));
        let excluded = DEMO_POLICY.replace(
            "  validations:",
            "    excludeResourceRules:\n    - {apiGroups: [apps], apiVersions: ['*'], operations: ['*'], resources: [deployments], resourceNames: [web]}\n  validations:",
        );
        let policies = load_text(&format!("{excluded}---\n{binding}")).unwrap();
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        assert!(!policies[0].matches(&attrs, &act));
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;
    use crate::policy::cel::tests::{deployment, deployment_attrs};
    use rstest::rstest;

    fn example(file: &str) -> Vec<VapPolicy> {
        let path = format!(
            "{}/policies/examples/vap/{file}",
            env!("CARGO_MANIFEST_DIR")
        );
        let text = std::fs::read_to_string(&path).unwrap();
        load(&documents(&text).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn judge(file: &str, object: &str) -> (Verdict, Vec<ValidationAction>) {
        let policies = example(file);
        assert_eq!(policies.len(), 1, "{file}");
        let attrs = deployment_attrs("CREATE");
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        assert!(policies[0].matches(&attrs, &act), "{file}");
        (
            policies[0].evaluate(&act).verdict,
            policies[0].actions.clone(),
        )
    }

    #[rstest]
    #[case::replicas_ok("replicas.yaml", deployment(3, "nginx:1.27"), None)]
    #[case::replicas_low(
        "replicas.yaml",
        deployment(2, "nginx:1.27"),
        Some(
            "ValidatingAdmissionPolicy 'min-replicas.gatehouse.example.com' with binding 'min-replicas-binding' denied request: at least 3 replicas are required, got 2"
        )
    )]
    #[case::pinned("no-latest.yaml", deployment(3, "nginx:1.27"), None)]
    #[case::latest(
        "no-latest.yaml",
        deployment(3, "nginx:latest"),
        Some("denied request: images must name a version, not :latest: web=nginx:latest")
    )]
    #[case::untagged(
        "no-latest.yaml",
        deployment(3, "registry:5000/nginx"),
        Some("web=registry:5000/nginx")
    )]
    #[case::team_ok("team-label.yaml", deployment(3, "x"), None)]
    #[case::team_bad("team-label.yaml", deployment(3, "x").replace("\"team\":\"payments\"", "\"team\":\"Payments!\""), Some("the team label must match ^[a-z][a-z0-9-]{1,30}$"))]
    #[case::team_missing("team-label.yaml", deployment(3, "x").replace(",\"team\":\"payments\"", ""), Some("the team label must match"))]
    #[case::memory_ok("memory-cap.yaml", deployment(3, "x"), None)]
    #[case::memory_high("memory-cap.yaml", deployment(3, "x").replace("512Mi", "5Gi"), Some("no container may use more than 4Gi of memory: 5Gi"))]
    fn vap_examples(#[case] file: &str, #[case] object: String, #[case] denied: Option<&str>) {
        let (verdict, _) = judge(file, &object);
        match (denied, verdict) {
            (None, Verdict::Pass) => {}
            (Some(want), Verdict::Violation { message, .. }) => {
                assert!(message.contains(want), "{file}: {message}")
            }
            (want, got) => panic!("{file}: wanted {want:?}, got {got:?}"),
        }
    }

    #[test]
    fn team_label_only_warns() {
        assert_eq!(
            judge("team-label.yaml", &deployment(3, "x")).1,
            vec![ValidationAction::Warn]
        );
    }

    #[test]
    fn no_latest_judges_pods_too() {
        let policies = example("no-latest.yaml");
        let mut attrs = deployment_attrs("CREATE");
        attrs.resource = crate::policy::cel::GroupVersion {
            group: String::new(),
            version: "v1".into(),
            name: "pods".into(),
        };
        let pod = serde_json::json!({"kind": "Pod", "metadata": {"name": "p"}, "spec": {
            "initContainers": [{"name": "init", "image": "busybox"}],
            "containers": [{"name": "app", "image": "app:2"}]}})
        .to_string();
        let act = Activation::new(&attrs, Some(pod.as_bytes()), None);
        assert!(policies[0].matches(&attrs, &act));
        assert!(matches!(
            policies[0].evaluate(&act).verdict,
            Verdict::Violation { message, .. } if message.ends_with("not :latest: init=busybox")
        ));
    }
}
