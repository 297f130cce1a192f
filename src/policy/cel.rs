//! The `cel` policy kind: rules of your own in CEL, as a ValidatingAdmissionPolicy writes them.
//!
//! A `cel` policy's params hold `validations` (each an `expression`, with a `message` or a
//! `messageExpression` and a `reason`), `variables`, `matchConditions`, `auditAnnotations`,
//! `failurePolicy` (`Fail` by default) and `params` (the object expressions see as `params`).
//! Expressions see `object`, `oldObject`, `request`, `params` and `variables`, as in a VAP;
//! `namespaceObject` and `authorizer` need API access Gatehouse does not have, so an expression
//! that uses them is refused at load.
//!
//! Every expression compiles at load. Evaluation is bounded by the API server's budgets (see
//! [`value`]) and a time limit; the object is decoded into CEL values only when a CEL policy
//! matches, once per review. Native `ValidatingAdmissionPolicy` and
//! `ValidatingAdmissionPolicyBinding` manifests are read by [`vap`] into the same compiled form.

pub mod library;
pub mod value;
pub mod vap;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ::cel::common::ast::{EntryExpr, Expr, IdedExpr};
use ::cel::common::traits::Indexer;
use ::cel::common::types::{CelBool, CelMapKey, CelNull, CelString, Type};
use ::cel::common::value::{CowVal, Val};
use ::cel::context::VariableResolver;
use ::cel::{Context, ExecutionError, Program, Value};
use serde::Deserialize;

use value::{BudgetGuard, Owned, PER_EXPRESSION_COST, PER_POLICY_COST, SharedMap};

/// How long one policy's expressions may run in all before the review gets the
/// failurePolicy answer.
pub const TIME_LIMIT: Duration = Duration::from_millis(250);

/// What happens when an expression cannot be evaluated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum FailurePolicy {
    /// The request is denied (the default, as in Kubernetes).
    #[default]
    Fail,
    /// The request is admitted.
    Ignore,
}

/// A named expression (`variables`, `matchConditions`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedExpression {
    /// The name (a variable's name is how `variables.<name>` reads it).
    pub name: String,
    /// The CEL expression.
    pub expression: String,
}

/// One validation.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ValidationSpec {
    /// A CEL expression that must evaluate to true for the request to pass.
    pub expression: String,
    /// The message when it is false.
    #[serde(default)]
    pub message: Option<String>,
    /// A CEL expression giving the message (a string); wins over `message` when it works.
    #[serde(default)]
    pub message_expression: Option<String>,
    /// `Unauthorized`, `Forbidden`, `Invalid` (the default) or `RequestEntityTooLarge`.
    #[serde(default)]
    pub reason: Option<String>,
}

/// An audit annotation: a key and an expression giving its value (or null for none).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuditAnnotationSpec {
    /// The key (`<policy>/<key>` in the audit event).
    pub key: String,
    /// A CEL expression giving a string, or null.
    pub value_expression: String,
}

/// The params of a `cel` policy in a Gatehouse policy file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CelParams {
    /// What an evaluation error does.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Expressions that must all be true for the policy to judge the request.
    #[serde(default)]
    pub match_conditions: Vec<NamedExpression>,
    /// Named expressions the others read as `variables.<name>` (evaluated at most once).
    #[serde(default)]
    pub variables: Vec<NamedExpression>,
    /// The checks.
    #[serde(default)]
    pub validations: Vec<ValidationSpec>,
    /// Audit annotations.
    #[serde(default)]
    pub audit_annotations: Vec<AuditAnnotationSpec>,
    /// The object expressions see as `params` (null when absent).
    #[serde(default)]
    pub params: Option<serde_json::Value>,
}

const REASONS: &[&str] = &["Unauthorized", "Forbidden", "Invalid", "RequestEntityTooLarge"];

/// A compiled expression with its source.
#[derive(Debug)]
struct Compiled {
    source: String,
    program: Program,
}

#[derive(Debug)]
struct CompiledValidation {
    expression: Compiled,
    message: Option<String>,
    message_expression: Option<Compiled>,
    reason: String,
}

#[derive(Debug)]
struct Inner {
    failure_policy: FailurePolicy,
    match_conditions: Vec<(String, Compiled)>,
    variables: Vec<(String, Compiled)>,
    validations: Vec<CompiledValidation>,
    audit_annotations: Vec<(String, Compiled)>,
    params: Owned,
}

/// A compiled `cel` policy (cheap to clone).
#[derive(Debug, Clone)]
pub struct CelPolicy {
    inner: Arc<Inner>,
}

/// A verdict of one CEL policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every validation held (or a match condition was false, or an error was ignored).
    Pass,
    /// A validation was false.
    Violation {
        /// Its message.
        message: String,
        /// Its reason (`Invalid` by default).
        reason: String,
    },
    /// An expression could not be evaluated and the failurePolicy is `Fail`: deny with this
    /// message.
    Error(String),
}

/// A verdict with the audit annotations the policy produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// The verdict.
    pub verdict: Verdict,
    /// `(key, value)` pairs from `auditAnnotations`.
    pub audit_annotations: Vec<(String, String)>,
}

/// `group`, `version` and `kind` (or `resource`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupVersion {
    /// API group (`""` for core).
    pub group: String,
    /// API version.
    pub version: String,
    /// Kind or resource name.
    pub name: String,
}

/// Who sent the request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserInfo {
    /// User name.
    pub username: String,
    /// User uid.
    pub uid: String,
    /// Groups.
    pub groups: Vec<String>,
    /// Extra attributes.
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The request attributes CEL expressions see as `request` (besides the objects).
#[derive(Debug, Clone, Default)]
pub struct Attributes {
    /// Review uid.
    pub uid: String,
    /// Kind of the object.
    pub kind: GroupVersion,
    /// Resource being admitted.
    pub resource: GroupVersion,
    /// Subresource (`""` for none).
    pub sub_resource: String,
    /// Object name (may be empty on CREATE).
    pub name: String,
    /// Namespace (`""` for cluster-scoped objects).
    pub namespace: String,
    /// `CREATE`, `UPDATE`, `DELETE`, `CONNECT`.
    pub operation: String,
    /// Who sent it.
    pub user_info: UserInfo,
    /// Whether this is a dry run.
    pub dry_run: bool,
    /// The operation's options object as raw JSON, if any.
    pub options: Option<Vec<u8>>,
}

/// What one review shows CEL policies: its attributes and the raw JSON of its objects, decoded
/// into CEL values on first use and shared by every CEL policy that judges the review.
pub struct Activation<'a> {
    attrs: &'a Attributes,
    object: Option<&'a [u8]>,
    old_object: Option<&'a [u8]>,
    object_val: OnceLock<Result<Owned, String>>,
    old_object_val: OnceLock<Result<Owned, String>>,
    request_val: OnceLock<Owned>,
}

impl<'a> Activation<'a> {
    /// A review's attributes and raw `object` / `oldObject` JSON (absent or `null` → null).
    pub fn new(attrs: &'a Attributes, object: Option<&'a [u8]>, old_object: Option<&'a [u8]>) -> Self {
        Activation {
            attrs,
            object,
            old_object,
            object_val: OnceLock::new(),
            old_object_val: OnceLock::new(),
            request_val: OnceLock::new(),
        }
    }

    fn decode(raw: Option<&[u8]>) -> Result<Owned, String> {
        match raw {
            None => Ok(Box::new(CelNull)),
            Some(bytes) => value::from_json(bytes).map_err(|e| format!("the object is not valid JSON: {e}")),
        }
    }

    fn object(&self) -> Result<&dyn Val, String> {
        match self.object_val.get_or_init(|| Self::decode(self.object)) {
            Ok(v) => Ok(v.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    fn old_object(&self) -> Result<&dyn Val, String> {
        match self.old_object_val.get_or_init(|| Self::decode(self.old_object)) {
            Ok(v) => Ok(v.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    /// The object's labels (for VAP objectSelector), read from the decoded object or oldObject.
    pub(crate) fn labels(&self, old: bool) -> BTreeMap<String, String> {
        let raw = if old { self.old_object } else { self.object };
        #[derive(Deserialize)]
        struct Meta {
            #[serde(default)]
            metadata: Option<Labels>,
        }
        #[derive(Deserialize)]
        struct Labels {
            #[serde(default)]
            labels: Option<BTreeMap<String, String>>,
        }
        raw.and_then(|b| serde_json::from_slice::<Meta>(b).ok())
            .and_then(|m| m.metadata)
            .and_then(|m| m.labels)
            .unwrap_or_default()
    }

    /// Whether the review has an object (or an old object, when `old`).
    pub(crate) fn has_object(&self, old: bool) -> bool {
        let raw = if old { self.old_object } else { self.object };
        raw.is_some_and(|b| b.trim_ascii() != b"null")
    }

    fn request(&self) -> &dyn Val {
        self.request_val.get_or_init(|| request_value(self.attrs)).as_ref()
    }
}

fn s(v: &str) -> Owned {
    Box::new(CelString::from(v.to_owned()))
}

fn map(entries: Vec<(&str, Owned)>) -> Owned {
    Box::new(SharedMap::new(
        entries
            .into_iter()
            .map(|(k, v)| (CelMapKey::from(k.to_owned()), v))
            .collect(),
    ))
}

fn strings(items: &[String]) -> Owned {
    Box::new(value::SharedList::new(items.iter().map(|i| s(i)).collect()))
}

fn gvk(g: &GroupVersion, last: &str) -> Owned {
    map(vec![("group", s(&g.group)), ("version", s(&g.version)), (last, s(&g.name))])
}

fn request_value(a: &Attributes) -> Owned {
    let extra = Box::new(SharedMap::new(
        a.user_info
            .extra
            .iter()
            .map(|(k, v)| (CelMapKey::from(k.clone()), strings(v)))
            .collect(),
    ));
    let options = a
        .options
        .as_deref()
        .and_then(|o| value::from_json(o).ok())
        .unwrap_or_else(|| Box::new(CelNull));
    map(vec![
        ("uid", s(&a.uid)),
        ("kind", gvk(&a.kind, "kind")),
        ("resource", gvk(&a.resource, "resource")),
        ("subResource", s(&a.sub_resource)),
        ("requestKind", gvk(&a.kind, "kind")),
        ("requestResource", gvk(&a.resource, "resource")),
        ("requestSubResource", s(&a.sub_resource)),
        ("name", s(&a.name)),
        ("namespace", s(&a.namespace)),
        ("operation", s(&a.operation)),
        (
            "userInfo",
            map(vec![
                ("username", s(&a.user_info.username)),
                ("uid", s(&a.user_info.uid)),
                ("groups", strings(&a.user_info.groups)),
                ("extra", extra),
            ]),
        ),
        ("dryRun", Box::new(CelBool::from(a.dry_run))),
        ("options", options),
    ])
}

// ---------------------------------------------------------------------------------------------
// Compiling
// ---------------------------------------------------------------------------------------------

/// Names expressions may use besides variables bound by macros.
const ROOTS: &[&str] = &["object", "oldObject", "request", "params", "variables"];
/// Type names and function namespaces that parse as identifiers.
const BUILTIN_IDENTS: &[&str] = &[
    "int", "uint", "double", "bool", "string", "bytes", "list", "map", "null_type", "type", "dyn",
    "optional", "strings", "math", "base64",
];

fn compile(field: &str, source: &str, known_vars: &[String]) -> Result<Compiled, String> {
    let program = library::ENV.compile(source).map_err(|e| {
        let first = e.errors.first();
        match first {
            Some(p) => format!(
                "{field}: syntax error at line {}, column {}: {} (in `{source}`)",
                p.pos.0, p.pos.1 + 1, p.msg
            ),
            None => format!("{field}: syntax error (in `{source}`)"),
        }
    })?;
    let mut bound = Vec::new();
    check_names(program.expression(), &mut bound, known_vars)
        .map_err(|why| format!("{field}: {why} (in `{source}`)"))?;
    Ok(Compiled {
        source: source.to_owned(),
        program,
    })
}

/// Refuses identifiers the environment does not declare: `namespaceObject` and `authorizer`
/// with the reason, a `variables.<name>` not declared before, and any other unknown name.
fn check_names(e: &IdedExpr, bound: &mut Vec<String>, vars: &[String]) -> Result<(), String> {
    match &e.expr {
        Expr::Ident(name) => {
            if bound.iter().any(|b| b == name)
                || ROOTS.contains(&name.as_str())
                || BUILTIN_IDENTS.contains(&name.as_str())
                || name.starts_with('@')
                || name.starts_with("__")
            {
                Ok(())
            } else if name == "namespaceObject" {
                Err("`namespaceObject` is not available: Gatehouse has no API access to read the namespace".into())
            } else if name == "authorizer" {
                Err("`authorizer` is not available: Gatehouse has no API access to make authorization checks".into())
            } else {
                Err(format!("undeclared reference to `{name}`"))
            }
        }
        Expr::Select(sel) => {
            if let Expr::Ident(root) = &sel.operand.expr
                && root == "variables"
                && !bound.iter().any(|b| b == "variables")
                && !vars.iter().any(|v| v == &sel.field)
            {
                return Err(format!(
                    "undeclared reference to `variables.{}` (a variable can only use the ones declared before it)",
                    sel.field
                ));
            }
            check_names(&sel.operand, bound, vars)
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                check_names(t, bound, vars)?;
            }
            call.args.iter().try_for_each(|a| check_names(a, bound, vars))
        }
        Expr::List(list) => list.elements.iter().try_for_each(|a| check_names(a, bound, vars)),
        Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => {
                check_names(&me.key, bound, vars)?;
                check_names(&me.value, bound, vars)
            }
            EntryExpr::StructField(f) => check_names(&f.value, bound, vars),
        }),
        Expr::Struct(st) => st.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => check_names(&me.value, bound, vars),
            EntryExpr::StructField(f) => check_names(&f.value, bound, vars),
        }),
        Expr::Comprehension(c) => {
            check_names(&c.iter_range, bound, vars)?;
            check_names(&c.accu_init, bound, vars)?;
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            let r = check_names(&c.loop_cond, bound, vars)
                .and_then(|_| check_names(&c.loop_step, bound, vars))
                .and_then(|_| check_names(&c.result, bound, vars));
            bound.truncate(before);
            r
        }
        Expr::Literal(_) | Expr::Unspecified => Ok(()),
    }
}

impl CelPolicy {
    /// Compiles a `cel` policy's params; the error names the field and the expression.
    pub fn from_params(params: CelParams) -> Result<Self, String> {
        let params_val: Owned = match &params.params {
            Some(p) => value::from_json_value(p),
            None => Box::new(CelNull),
        };
        Self::compile_spec(
            params.failure_policy,
            &params.match_conditions,
            &params.variables,
            &params.validations,
            &params.audit_annotations,
            params_val,
        )
    }

    pub(crate) fn compile_spec(
        failure_policy: FailurePolicy,
        match_conditions: &[NamedExpression],
        variables: &[NamedExpression],
        validations: &[ValidationSpec],
        audit_annotations: &[AuditAnnotationSpec],
        params: Owned,
    ) -> Result<Self, String> {
        if validations.is_empty() && audit_annotations.is_empty() {
            return Err("validations: at least one validation (or audit annotation) is required".into());
        }
        let mut declared: Vec<String> = Vec::new();
        let mut vars = Vec::new();
        for (i, v) in variables.iter().enumerate() {
            if v.name.is_empty() || declared.contains(&v.name) {
                return Err(format!("variables[{i}].name: `{}` is empty or declared twice", v.name));
            }
            vars.push((v.name.clone(), compile(&format!("variables[{i}].expression"), &v.expression, &declared)?));
            declared.push(v.name.clone());
        }
        let mut names = HashSet::new();
        let mut conditions = Vec::new();
        for (i, c) in match_conditions.iter().enumerate() {
            if !names.insert(c.name.clone()) {
                return Err(format!("matchConditions[{i}].name: `{}` is declared twice", c.name));
            }
            // Match conditions run before variables exist, as in Kubernetes.
            conditions.push((c.name.clone(), compile(&format!("matchConditions[{i}].expression"), &c.expression, &[])?));
        }
        let mut compiled = Vec::new();
        for (i, v) in validations.iter().enumerate() {
            let reason = v.reason.clone().unwrap_or_else(|| "Invalid".into());
            if !REASONS.contains(&reason.as_str()) {
                return Err(format!(
                    "validations[{i}].reason: `{reason}` is not one of {}",
                    REASONS.join(", ")
                ));
            }
            if let Some(m) = &v.message
                && m.contains('\n')
            {
                return Err(format!("validations[{i}].message: must not contain line breaks"));
            }
            compiled.push(CompiledValidation {
                expression: compile(&format!("validations[{i}].expression"), &v.expression, &declared)?,
                message: v.message.clone().filter(|m| !m.trim().is_empty()),
                message_expression: v
                    .message_expression
                    .as_deref()
                    .map(|m| compile(&format!("validations[{i}].messageExpression"), m, &declared))
                    .transpose()?,
                reason,
            });
        }
        let mut audits = Vec::new();
        for (i, a) in audit_annotations.iter().enumerate() {
            audits.push((
                a.key.clone(),
                compile(&format!("auditAnnotations[{i}].valueExpression"), &a.value_expression, &declared)?,
            ));
        }
        Ok(CelPolicy {
            inner: Arc::new(Inner {
                failure_policy,
                match_conditions: conditions,
                variables: vars,
                validations: compiled,
                audit_annotations: audits,
                params,
            }),
        })
    }

    /// The failurePolicy.
    pub fn failure_policy(&self) -> FailurePolicy {
        self.inner.failure_policy
    }

    /// Evaluates the policy against a review.
    pub fn evaluate(&self, act: &Activation<'_>) -> Evaluation {
        let inner = &*self.inner;
        let run = Run {
            act,
            inner,
            vars: Variables {
                inner,
                act,
                cache: (0..inner.variables.len()).map(|_| OnceLock::new()).collect(),
            },
            remaining: std::cell::Cell::new(PER_POLICY_COST),
            deadline: Instant::now() + TIME_LIMIT,
        };
        let fail = |message: String| -> Evaluation {
            Evaluation {
                verdict: match inner.failure_policy {
                    FailurePolicy::Fail => Verdict::Error(message),
                    FailurePolicy::Ignore => Verdict::Pass,
                },
                audit_annotations: Vec::new(),
            }
        };
        for (name, cond) in &inner.match_conditions {
            match run.eval(cond).and_then(|v| as_bool(&v)) {
                Ok(true) => {}
                Ok(false) => {
                    return Evaluation {
                        verdict: Verdict::Pass,
                        audit_annotations: Vec::new(),
                    };
                }
                Err(e) => return fail(format!("matchCondition '{name}': expression '{}' resulted in error: {e}", cond.source)),
            }
        }
        let mut verdict = Verdict::Pass;
        for v in &inner.validations {
            match run.eval(&v.expression).and_then(|r| as_bool(&r)) {
                Ok(true) => {}
                Ok(false) => {
                    let message = v
                        .message_expression
                        .as_ref()
                        .and_then(|m| match run.eval(m) {
                            Ok(Value::String(s)) if !s.trim().is_empty() && !s.contains('\n') => {
                                Some(s.trim().to_owned())
                            }
                            _ => None,
                        })
                        .or_else(|| v.message.clone())
                        .unwrap_or_else(|| format!("failed expression: {}", v.expression.source));
                    verdict = Verdict::Violation {
                        message,
                        reason: v.reason.clone(),
                    };
                    break;
                }
                Err(e) => {
                    return fail(format!("expression '{}' resulted in error: {e}", v.expression.source));
                }
            }
        }
        let mut audit_annotations = Vec::new();
        for (key, expr) in &inner.audit_annotations {
            match run.eval(expr) {
                Ok(Value::String(s)) => audit_annotations.push((key.clone(), s.to_string())),
                Ok(Value::Null) => {}
                Ok(other) => {
                    return fail(format!(
                        "auditAnnotations '{key}': valueExpression '{}' must evaluate to a string or null, not {other:?}",
                        expr.source
                    ));
                }
                Err(e) => {
                    return fail(format!("auditAnnotations '{key}': expression '{}' resulted in error: {e}", expr.source));
                }
            }
        }
        Evaluation {
            verdict,
            audit_annotations,
        }
    }
}

fn as_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => Ok(*b),
        other => Err(format!("the expression must evaluate to a bool, not {}", other.type_of())),
    }
}

/// One policy evaluation: its budget and its lazily evaluated variables.
struct Run<'r, 'a> {
    act: &'r Activation<'a>,
    inner: &'r Inner,
    vars: Variables<'r, 'a>,
    remaining: std::cell::Cell<u64>,
    deadline: Instant,
}

impl Run<'_, '_> {
    fn eval(&self, c: &Compiled) -> Result<Value, String> {
        let left = self.remaining.get();
        if left == 0 {
            return Err("validation failed due to running out of cost budget, no further validation rules will be run".into());
        }
        let guard = BudgetGuard::start(left.min(PER_EXPRESSION_COST), Some(self.deadline));
        let scope = Scope {
            act: self.act,
            params: self.inner.params.as_ref(),
            vars: &self.vars,
        };
        let result = execute(c, &scope);
        self.remaining.set(left - guard.spent().min(left));
        if let Some(why) = guard.exhausted() {
            return Err(why.to_string());
        }
        result
    }
}

fn execute(c: &Compiled, scope: &Scope<'_, '_, '_>) -> Result<Value, String> {
    if let Some(e) = scope.act_error() {
        return Err(e);
    }
    let mut ctx = Context::with_env(Arc::clone(&library::ENV));
    ctx.set_variable_resolver(scope);
    c.program.execute(&ctx).map_err(|e| e.to_string())
}

/// What expressions resolve their root names against.
struct Scope<'s, 'r, 'a> {
    act: &'s Activation<'a>,
    params: &'s dyn Val,
    vars: &'s Variables<'r, 'a>,
}

impl Scope<'_, '_, '_> {
    fn act_error(&self) -> Option<String> {
        self.act.object().err().or_else(|| self.act.old_object().err())
    }
}

impl VariableResolver for Scope<'_, '_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if !value::charge(1) {
            return None;
        }
        match variable {
            "object" => self.act.object().ok().map(CowVal::Borrowed),
            "oldObject" => self.act.old_object().ok().map(CowVal::Borrowed),
            "request" => Some(CowVal::Borrowed(self.act.request())),
            "params" => Some(CowVal::Borrowed(self.params)),
            "variables" => Some(CowVal::Borrowed(self.vars)),
            _ => None,
        }
    }
}

// Scope is only used on the evaluating thread, but the resolver trait asks for Send + Sync:
// every field is a shared reference to Send + Sync data.

/// `variables`: each evaluated on first use, at most once per policy evaluation.
struct Variables<'r, 'a> {
    inner: &'r Inner,
    act: &'r Activation<'a>,
    cache: Vec<OnceLock<Result<Owned, String>>>,
}

impl fmt::Debug for Variables<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("variables")
    }
}

const VARIABLES_TYPE: Type = Type::new_unspecified_type("kubernetes.variables");
static VARIABLES_TYPE_STATIC: Type = VARIABLES_TYPE;

impl Val for Variables<'_, '_> {
    fn get_type(&self) -> &Type {
        &VARIABLES_TYPE_STATIC
    }

    fn cel_type() -> &'static Type {
        &VARIABLES_TYPE_STATIC
    }

    fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
    where
        Self: 'w,
    {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        // Variables are only ever selected from (`variables.x`), never copied whole.
        Box::new(CelNull)
    }
}

impl Indexer for Variables<'_, '_> {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let name = idx
            .downcast_ref::<CelString>()
            .map(|s| s.inner().to_owned())
            .unwrap_or_default();
        let i = self
            .inner
            .variables
            .iter()
            .position(|(n, _)| *n == name)
            .ok_or_else(|| ExecutionError::no_such_key(&name))?;
        let result = self.cache[i].get_or_init(|| {
            let scope = Scope {
                act: self.act,
                params: self.inner.params.as_ref(),
                vars: self,
            };
            let v = execute(&self.inner.variables[i].1, &scope)?;
            let boxed: Owned = v
                .try_into()
                .map_err(|_| format!("variable `{name}` has a value CEL cannot hold"))?;
            Ok(value::share(boxed))
        });
        match result {
            Ok(v) => Ok(CowVal::Borrowed(v.as_ref())),
            Err(e) => Err(ExecutionError::function_error(&format!("variables.{name}"), e)),
        }
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(idx).map(|v| v.into_owned())
    }
}

