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
//!
//! Most expressions are answered by [`fast`], a direct evaluator planned at load that applies
//! the interpreter's own operations without its per-node set-up; whatever it does not plainly
//! answer (any error, an unexpected type, a construct it does not plan) goes to cel-rust's
//! interpreter, which then evaluates the expression from the start.

mod fast;
pub(crate) mod lazy;
pub mod library;
pub mod value;
pub mod vap;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use ::cel::common::ast::{EntryExpr, Expr, IdedExpr, operators};
use ::cel::common::traits::Indexer;
use ::cel::common::types::{CelBool, CelMapKey, CelNull, CelString, Kind, Type};
use ::cel::common::value::{CowVal, Val};
use ::cel::context::VariableResolver;
use ::cel::{Context, ExecutionError, Value};
use serde::Deserialize;

use fast::Plan;
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

const REASONS: &[&str] = &[
    "Unauthorized",
    "Forbidden",
    "Invalid",
    "RequestEntityTooLarge",
];

/// A compiled expression with its source.
#[derive(Debug)]
struct Compiled {
    source: String,
    /// The expression as evaluated (see [`rewrite`]).
    expr: IdedExpr,
    /// The expression when it is a comparison of a name with a literal (see [`Simple`]).
    simple: Option<Simple>,
    /// The expression planned for the direct evaluator, when it can be (see [`fast`]).
    plan: Option<fast::Plan>,
    /// Indices of the variables it reads directly.
    uses: Vec<usize>,
    /// Cost of one comprehension step: the node count of its largest loop body.
    step_cost: u64,
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
    attrs: Attrs<'a>,
    object: Option<&'a [u8]>,
    old_object: Option<&'a [u8]>,
    object_val: OnceLock<Result<Owned, String>>,
    old_object_val: OnceLock<Result<Owned, String>>,
    request_val: OnceLock<Owned>,
    /// Set when the text is known to be valid JSON (the review decoder checked it), with
    /// the policy to claim the review's shared conversion for (see [`lazy::shared_root`]).
    checked: Option<usize>,
    /// Where the review decoder found the parts of the object (`false`) and old object
    /// (`true`), made when an object is converted.
    found: Option<&'a (dyn Fn(bool) -> lazy::Found + Sync + 'a)>,
}

/// The request attributes an activation shows as `request`: given, or made from the review
/// the first time an expression reads `request` (most read only the object).
enum Attrs<'a> {
    Given(&'a Attributes),
    Review(&'a (dyn Fn() -> Attributes + Sync + 'a)),
}

impl<'a> Activation<'a> {
    /// A review's attributes and raw `object` / `oldObject` JSON (absent or `null` → null).
    pub fn new(
        attrs: &'a Attributes,
        object: Option<&'a [u8]>,
        old_object: Option<&'a [u8]>,
    ) -> Self {
        Activation {
            attrs: Attrs::Given(attrs),
            object,
            old_object,
            object_val: OnceLock::new(),
            old_object_val: OnceLock::new(),
            request_val: OnceLock::new(),
            checked: None,
            found: None,
        }
    }

    /// [`Activation::new`] for objects of a decoded review (whose body was checked to be
    /// JSON), evaluated by policy `user`: the conversion is shared with the review's other CEL
    /// policies.
    pub(crate) fn of_checked(
        attrs: &'a Attributes,
        object: Option<&'a [u8]>,
        old_object: Option<&'a [u8]>,
        user: usize,
        found: &'a (dyn Fn(bool) -> lazy::Found + Sync + 'a),
    ) -> Self {
        Activation {
            checked: Some(user),
            found: Some(found),
            ..Activation::new(attrs, object, old_object)
        }
    }

    /// The activation of a decoded review evaluated by policy `user`, as
    /// [`Activation::of_checked`], with the request attributes and the decoder's hints made
    /// from the review only when an expression needs them.
    fn of_review(
        attrs: &'a (dyn Fn() -> Attributes + Sync + 'a),
        object: Option<&'a [u8]>,
        old_object: Option<&'a [u8]>,
        user: usize,
        found: &'a (dyn Fn(bool) -> lazy::Found + Sync + 'a),
    ) -> Self {
        Activation {
            attrs: Attrs::Review(attrs),
            object,
            old_object,
            object_val: OnceLock::new(),
            old_object_val: OnceLock::new(),
            request_val: OnceLock::new(),
            checked: Some(user),
            found: Some(found),
        }
    }

    /// The scalar at `fields` of the object or old object (`root`) of a decoded review, read
    /// without converting the object ([`lazy::scalar_at`]); `None` when there is none or the
    /// text was not checked by the decoder.
    fn scalar_at(&self, root: &str, fields: &[String]) -> Option<Owned> {
        self.checked?;
        let (raw, old) = match root {
            "object" => (self.object?, false),
            "oldObject" => (self.old_object?, true),
            _ => return None,
        };
        lazy::scalar_at(raw, self.found.map(|f| f(old)).unwrap_or_default(), fields)
    }

    fn decode(&self, raw: Option<&[u8]>, old: bool) -> Result<Owned, String> {
        match (raw, self.checked) {
            (None, _) => Ok(Box::new(CelNull)),
            (Some(bytes), Some(user)) => lazy::shared_root(bytes, user, || {
                self.found.map(|f| f(old)).unwrap_or_default()
            }),
            (Some(bytes), None) => {
                serde_json::from_slice::<serde::de::IgnoredAny>(bytes)
                    .map_err(|e| format!("the object is not valid JSON: {e}"))?;
                lazy::root(bytes)
            }
        }
    }

    fn object(&self) -> Result<&dyn Val, String> {
        match self
            .object_val
            .get_or_init(|| self.decode(self.object, false))
        {
            Ok(v) => Ok(v.as_ref()),
            Err(e) => Err(e.clone()),
        }
    }

    fn old_object(&self) -> Result<&dyn Val, String> {
        match self
            .old_object_val
            .get_or_init(|| self.decode(self.old_object, true))
        {
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
        self.request_val
            .get_or_init(|| match self.attrs {
                Attrs::Given(a) => request_value(a),
                Attrs::Review(make) => request_value(&make()),
            })
            .as_ref()
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
    map(vec![
        ("group", s(&g.group)),
        ("version", s(&g.version)),
        (last, s(&g.name)),
    ])
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
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
    "optional",
    "strings",
    "math",
    "base64",
];

/// Deepest expression tree accepted: evaluation recurses once per level, and this keeps it
/// well inside a 2 MiB thread stack even in a debug build.
pub const MAX_DEPTH: usize = 48;
/// Longest expression accepted, in bytes.
pub const MAX_EXPRESSION_LEN: usize = 10 * 1024;
/// Stack for the parser thread: cel-rust's parser recurses deeply on nested input before its
/// own depth limit answers.
const PARSER_STACK: usize = 64 * 1024 * 1024;

fn compile(field: &str, source: &str, known_vars: &[String]) -> Result<Compiled, String> {
    if source.len() > MAX_EXPRESSION_LEN {
        return Err(format!(
            "{field}: the expression is {} bytes long, more than the {MAX_EXPRESSION_LEN} allowed",
            source.len()
        ));
    }
    let owned_field = field.to_owned();
    let owned_source = source.to_owned();
    let vars = known_vars.to_vec();
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("cel-compile".into())
            .stack_size(PARSER_STACK)
            .spawn_scoped(scope, move || {
                compile_here(&owned_field, &owned_source, &vars)
            })
            .map_err(|e| format!("{field}: cannot start the compiler: {e}"))?
            .join()
            .unwrap_or_else(|_| Err(format!("{field}: the compiler failed on `{source}`")))
    })
}

fn depth(e: &IdedExpr) -> usize {
    1 + children(e).into_iter().map(depth).max().unwrap_or(0)
}

/// Node count of an expression tree.
fn nodes(e: &IdedExpr) -> usize {
    1 + children(e).into_iter().map(nodes).sum::<usize>()
}

/// The largest comprehension step (condition and body) in an expression, in nodes.
fn step_cost(e: &IdedExpr) -> usize {
    let here = match &e.expr {
        Expr::Comprehension(c) => nodes(&c.loop_cond) + nodes(&c.loop_step),
        _ => 1,
    };
    let below = children(e).into_iter().map(step_cost).max().unwrap_or(1);
    here.max(below)
}

/// The direct sub-expressions of an expression (for the load-time walks above).
fn children(e: &IdedExpr) -> Vec<&IdedExpr> {
    match &e.expr {
        Expr::Select(sel) => vec![&sel.operand],
        Expr::Call(call) => call
            .target
            .iter()
            .map(|t| &**t)
            .chain(call.args.iter())
            .collect(),
        Expr::List(list) => list.elements.iter().collect(),
        Expr::Map(::cel::common::ast::MapExpr { entries: m })
        | Expr::Struct(::cel::common::ast::StructExpr { entries: m, .. }) => m
            .iter()
            .flat_map(|entry| match &entry.expr {
                EntryExpr::MapEntry(me) => vec![&me.key, &me.value],
                EntryExpr::StructField(f) => vec![&f.value],
            })
            .collect(),
        Expr::Comprehension(c) => vec![
            &c.iter_range,
            &c.accu_init,
            &c.loop_cond,
            &c.loop_step,
            &c.result,
        ],
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => Vec::new(),
    }
}

fn compile_here(field: &str, source: &str, known_vars: &[String]) -> Result<Compiled, String> {
    let program = library::ENV.compile(source).map_err(|e| {
        let first = e.errors.first();
        match first {
            Some(p) => format!(
                "{field}: syntax error at line {}, column {}: {} (in `{source}`)",
                p.pos.0,
                p.pos.1 + 1,
                p.msg
            ),
            None => format!("{field}: syntax error (in `{source}`)"),
        }
    })?;
    let d = depth(program.expression());
    if d > MAX_DEPTH {
        return Err(format!(
            "{field}: the expression nests {d} levels deep, more than the {MAX_DEPTH} allowed (in `{source}`)"
        ));
    }
    let mut bound = Vec::new();
    let mut uses = Vec::new();
    check_names(program.expression(), &mut bound, known_vars, &mut uses)
        .map_err(|why| format!("{field}: {why} (in `{source}`)"))?;
    let mut uses: Vec<usize> = uses
        .iter()
        .filter_map(|u| known_vars.iter().position(|v| v == u))
        .collect();
    uses.sort_unstable();
    uses.dedup();
    let step_cost = step_cost(program.expression()) as u64;
    let mut expr = program.expression().clone();
    rewrite(&mut expr);
    Ok(Compiled {
        source: source.to_owned(),
        simple: Simple::of(&expr),
        plan: Plan::of(&expr),
        expr,
        uses,
        step_cost,
    })
}

/// Sends `==`, `!=` and `in` whose operands could hold a plain list or map on one side and a
/// part of the object on the other to [`library::EQUALS`], [`library::NOT_EQUALS`] and
/// [`library::IN`], which compare values of every representation ([`value::equal`]): the
/// interpreter's own operators ask the left operand (or each item of the list) only, and
/// cel-rust's plain lists and maps compare equal to their own kind only, not to the object's
/// lazy parts. A comparison with a literal scalar, and `in` a literal map or a literal list of
/// scalars, keep the interpreter's operators: there the left side decides correctly.
fn rewrite(e: &mut IdedExpr) {
    let literal = |x: &IdedExpr| matches!(x.expr, Expr::Literal(_));
    match &mut e.expr {
        Expr::Call(call) if call.func_name == "matches" => {
            // `s.matches(re)` and `matches(s, re)` keep their compiled pattern
            // ([`library::MATCHES`]); a call of another arity is left to report itself. The
            // member form becomes `(re, s)`: the interpreter evaluates a method's arguments
            // before its target, and so it still does.
            match call.target.take() {
                Some(target) if call.args.len() == 1 => {
                    call.args.push(*target);
                    call.func_name = library::MATCHES.to_owned();
                }
                None if call.args.len() == 2 => call.func_name = library::MATCHES_FN.to_owned(),
                target => call.target = target,
            }
            if let Some(t) = &mut call.target {
                rewrite(t);
            }
            call.args.iter_mut().for_each(rewrite);
        }
        Expr::Call(call) => {
            if call.target.is_none() && call.args.len() == 2 {
                let (a, b) = (&call.args[0], &call.args[1]);
                let to = match call.func_name.as_str() {
                    operators::EQUALS if !literal(a) && !literal(b) => Some(library::EQUALS),
                    operators::NOT_EQUALS if !literal(a) && !literal(b) => {
                        Some(library::NOT_EQUALS)
                    }
                    operators::IN => {
                        let plain = match &b.expr {
                            Expr::List(l) => l.elements.iter().all(literal),
                            Expr::Map(_) => true,
                            _ => false,
                        };
                        (!literal(a) && !plain).then_some(library::IN)
                    }
                    _ => None,
                };
                if let Some(to) = to {
                    call.func_name = to.to_owned();
                }
            }
            if let Some(t) = &mut call.target {
                rewrite(t);
            }
            call.args.iter_mut().for_each(rewrite);
        }
        Expr::Select(sel) => rewrite(&mut sel.operand),
        Expr::List(list) => list.elements.iter_mut().for_each(rewrite),
        Expr::Map(::cel::common::ast::MapExpr { entries: m })
        | Expr::Struct(::cel::common::ast::StructExpr { entries: m, .. }) => {
            for entry in m {
                match &mut entry.expr {
                    EntryExpr::MapEntry(me) => {
                        rewrite(&mut me.key);
                        rewrite(&mut me.value);
                    }
                    EntryExpr::StructField(f) => rewrite(&mut f.value),
                }
            }
        }
        Expr::Comprehension(c) => {
            rewrite(&mut c.iter_range);
            rewrite(&mut c.accu_init);
            rewrite(&mut c.loop_cond);
            rewrite(&mut c.loop_step);
            rewrite(&mut c.result);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// An expression that compares a qualified name with a literal, such as
/// `object.spec.replicas >= 3`: evaluated as the interpreter evaluates it (the name resolved by
/// [`Scope::resolve_path`], charged alike; the operator as the interpreter applies it), without
/// the interpreter's set-up, when the name resolves and the values compare. Otherwise (a
/// missing field, values that do not compare) the interpreter evaluates it and reports the
/// error, the budget as it was before.
#[derive(Debug)]
struct Simple {
    root: String,
    path: String,
    /// `path`'s fields.
    fields: Vec<String>,
    op: Comparison,
    literal: ::cel::common::ast::LiteralValue,
    literal_first: bool,
}

#[derive(Debug, Clone, Copy)]
enum Comparison {
    Equal,
    NotEqual,
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

impl Simple {
    fn of(e: &IdedExpr) -> Option<Simple> {
        let Expr::Call(call) = &e.expr else {
            return None;
        };
        let op = match call.func_name.as_str() {
            operators::EQUALS => Comparison::Equal,
            operators::NOT_EQUALS => Comparison::NotEqual,
            operators::LESS => Comparison::Less,
            operators::LESS_EQUALS => Comparison::LessEqual,
            operators::GREATER => Comparison::Greater,
            operators::GREATER_EQUALS => Comparison::GreaterEqual,
            _ => return None,
        };
        if call.target.is_some() || call.args.len() != 2 {
            return None;
        }
        let (name, literal, literal_first) = match (&call.args[0].expr, &call.args[1].expr) {
            (Expr::Literal(l), name) => (name, l, true),
            (name, Expr::Literal(l)) => (name, l, false),
            _ => return None,
        };
        let mut fields = Vec::new();
        let mut at = name;
        let root = loop {
            match at {
                Expr::Select(sel) if !sel.test => {
                    fields.push(sel.field.as_str());
                    at = &sel.operand.expr;
                }
                Expr::Ident(root) => break root,
                _ => return None,
            }
        };
        if fields.is_empty()
            || !["object", "oldObject", "request", "params"].contains(&root.as_str())
        {
            return None;
        }
        fields.reverse();
        Some(Simple {
            root: root.clone(),
            path: fields.join("."),
            fields: fields.iter().map(|f| f.to_string()).collect(),
            op,
            literal: literal.clone(),
            literal_first,
        })
    }

    /// The comparison's result, or `None` for the interpreter to evaluate it.
    fn eval(&self, scope: &Scope<'_, '_, '_>) -> Option<bool> {
        // A field of a decoded review's object is read in place; anything else (or a field
        // that is not there or not a scalar) the lazy way.
        let value = match scope.act.scalar_at(&self.root, &self.fields) {
            Some(v) => CowVal::Owned(v),
            None => scope.resolve_path(&self.root, &self.path)?,
        };
        let literal = self.literal.to_val();
        let (left, right): (&dyn Val, &dyn Val) = if self.literal_first {
            (literal.as_ref(), value.as_ref())
        } else {
            (value.as_ref(), literal.as_ref())
        };
        let order = |want: fn(std::cmp::Ordering) -> bool| {
            left.as_comparer()?.compare(right).ok().map(want)
        };
        match self.op {
            Comparison::Equal => Some(left.equals(right)),
            Comparison::NotEqual => Some(!left.equals(right)),
            Comparison::Less => order(|o| o.is_lt()),
            Comparison::LessEqual => order(|o| o.is_le()),
            Comparison::Greater => order(|o| o.is_gt()),
            Comparison::GreaterEqual => order(|o| o.is_ge()),
        }
    }
}

/// Refuses identifiers the environment does not declare: `namespaceObject` and `authorizer`
/// with the reason, a `variables.<name>` not declared before, and any other unknown name.
fn check_names(
    e: &IdedExpr,
    bound: &mut Vec<String>,
    vars: &[String],
    uses: &mut Vec<String>,
) -> Result<(), String> {
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
            if let Expr::Ident(root) = &sel.operand.expr
                && root == "variables"
            {
                uses.push(sel.field.clone());
            }
            check_names(&sel.operand, bound, vars, uses)
        }
        Expr::Call(call) => {
            if let Some(t) = &call.target {
                check_names(t, bound, vars, uses)?;
            }
            call.args
                .iter()
                .try_for_each(|a| check_names(a, bound, vars, uses))
        }
        Expr::List(list) => list
            .elements
            .iter()
            .try_for_each(|a| check_names(a, bound, vars, uses)),
        Expr::Map(m) => m.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => {
                check_names(&me.key, bound, vars, uses)?;
                check_names(&me.value, bound, vars, uses)
            }
            EntryExpr::StructField(f) => check_names(&f.value, bound, vars, uses),
        }),
        Expr::Struct(st) => st.entries.iter().try_for_each(|entry| match &entry.expr {
            EntryExpr::MapEntry(me) => check_names(&me.value, bound, vars, uses),
            EntryExpr::StructField(f) => check_names(&f.value, bound, vars, uses),
        }),
        Expr::Comprehension(c) => {
            check_names(&c.iter_range, bound, vars, uses)?;
            check_names(&c.accu_init, bound, vars, uses)?;
            let before = bound.len();
            bound.push(c.iter_var.clone());
            if let Some(v2) = &c.iter_var2 {
                bound.push(v2.clone());
            }
            bound.push(c.accu_var.clone());
            let r = check_names(&c.loop_cond, bound, vars, uses)
                .and_then(|_| check_names(&c.loop_step, bound, vars, uses))
                .and_then(|_| check_names(&c.result, bound, vars, uses));
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
            return Err(
                "validations: at least one validation (or audit annotation) is required".into(),
            );
        }
        let mut declared: Vec<String> = Vec::new();
        let mut vars = Vec::new();
        for (i, v) in variables.iter().enumerate() {
            if v.name.is_empty() || declared.contains(&v.name) {
                return Err(format!(
                    "variables[{i}].name: `{}` is empty or declared twice",
                    v.name
                ));
            }
            vars.push((
                v.name.clone(),
                compile(
                    &format!("variables[{i}].expression"),
                    &v.expression,
                    &declared,
                )?,
            ));
            declared.push(v.name.clone());
        }
        let mut names = HashSet::new();
        let mut conditions = Vec::new();
        for (i, c) in match_conditions.iter().enumerate() {
            if !names.insert(c.name.clone()) {
                return Err(format!(
                    "matchConditions[{i}].name: `{}` is declared twice",
                    c.name
                ));
            }
            // Match conditions run before variables exist, as in Kubernetes.
            conditions.push((
                c.name.clone(),
                compile(
                    &format!("matchConditions[{i}].expression"),
                    &c.expression,
                    &[],
                )?,
            ));
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
                return Err(format!(
                    "validations[{i}].message: must not contain line breaks"
                ));
            }
            compiled.push(CompiledValidation {
                expression: compile(
                    &format!("validations[{i}].expression"),
                    &v.expression,
                    &declared,
                )?,
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
                compile(
                    &format!("auditAnnotations[{i}].valueExpression"),
                    &a.value_expression,
                    &declared,
                )?,
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
                cache: (0..inner.variables.len())
                    .map(|_| OnceLock::new())
                    .collect(),
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
                Err(e) => {
                    return fail(format!(
                        "matchCondition '{name}': expression '{}' resulted in error: {e}",
                        cond.source
                    ));
                }
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
                    return fail(format!(
                        "expression '{}' resulted in error: {e}",
                        v.expression.source
                    ));
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
                    return fail(format!(
                        "auditAnnotations '{key}': expression '{}' resulted in error: {e}",
                        expr.source
                    ));
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
        other => Err(format!(
            "the expression must evaluate to a bool, not {}",
            other.type_of()
        )),
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
        // The variables it needs, in declaration order (each only needs earlier ones), at
        // this level rather than nested in its evaluation: the stack stays one expression deep.
        let mut needed = vec![false; self.inner.variables.len()];
        for &u in &c.uses {
            needed[u] = true;
        }
        for i in (0..needed.len()).rev() {
            if needed[i] {
                for &u in &self.inner.variables[i].1.uses {
                    needed[u] = true;
                }
            }
        }
        for (i, _) in needed.iter().enumerate().filter(|(_, n)| **n) {
            self.vars.ensure(i);
        }
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
    with_result(c, scope, |v| {
        if matches!(v.get_type().kind(), Kind::List | Kind::Map) {
            // Only variables may be lists or maps; copying one into a result is never needed.
            return Err(format!(
                "the expression must evaluate to a bool or a string, not {}",
                v.get_type().name()
            ));
        }
        value::to_value(v).map_err(|e| e.to_string())
    })
}

/// Evaluates `c` and hands its result, still a CEL value borrowed where it can be, to `f`.
fn with_result<T>(
    c: &Compiled,
    scope: &Scope<'_, '_, '_>,
    f: impl FnOnce(&dyn Val) -> Result<T, String>,
) -> Result<T, String> {
    if let Some(e) = scope.act_error() {
        return Err(e);
    }
    if let Some(simple) = &c.simple {
        let before = value::BudgetSnapshot::take();
        if let Some(result) = simple.eval(scope) {
            return f(&CelBool::from(result));
        }
        before.restore();
    }
    let previous = value::set_iteration_cost(c.step_cost);
    let result = match c
        .plan
        .as_ref()
        .filter(|_| !testing::interpreter_only())
        .and_then(|plan| {
            // The direct evaluator gives the interpreter's result or none; on none the budget is
            // as it was and the interpreter starts over.
            let before = value::BudgetSnapshot::take();
            let v = plan.eval(scope);
            match v {
                Some(_) => testing::answered_directly(),
                None => before.restore(),
            }
            v
        }) {
        Some(v) => f(v.as_ref()),
        None => {
            let mut ctx = Context::with_env(Arc::clone(&library::ENV));
            ctx.set_variable_resolver(scope);
            Value::resolve_val(&c.expr, &ctx)
                .map_err(|e| e.to_string())
                .and_then(|v| f(v.as_ref()))
        }
    };
    value::set_iteration_cost(previous);
    result
}

/// Switches for tests that hold the direct evaluator ([`fast`]) to the interpreter: evaluate
/// with the interpreter alone, and count the expressions the direct evaluator answered.
#[cfg(test)]
pub(crate) mod testing {
    use std::cell::Cell;

    thread_local! {
        pub(crate) static INTERPRETER_ONLY: Cell<bool> = const { Cell::new(false) };
        pub(crate) static DIRECT_ANSWERS: Cell<usize> = const { Cell::new(0) };
    }

    pub(super) fn interpreter_only() -> bool {
        INTERPRETER_ONLY.with(Cell::get)
    }

    pub(super) fn answered_directly() {
        DIRECT_ANSWERS.with(|n| n.set(n.get() + 1));
    }
}

#[cfg(not(test))]
mod testing {
    pub(super) fn interpreter_only() -> bool {
        false
    }

    pub(super) fn answered_directly() {}
}

/// What expressions resolve their root names against.
struct Scope<'s, 'r, 'a> {
    act: &'s Activation<'a>,
    params: &'s dyn Val,
    vars: &'s Variables<'r, 'a>,
}

impl Scope<'_, '_, '_> {
    fn act_error(&self) -> Option<String> {
        // Text the decoder checked always converts: nothing to report, and nothing built
        // before an expression needs it.
        if self.act.checked.is_some() {
            return None;
        }
        self.act
            .object()
            .err()
            .or_else(|| self.act.old_object().err())
    }
}

impl VariableResolver for Scope<'_, '_, '_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        if let Some((root, path)) = variable.split_once('.') {
            return self.resolve_path(root, path);
        }
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

impl Scope<'_, '_, '_> {
    /// A qualified name (`object.spec.replicas`), which the interpreter asks for before its
    /// prefixes: walked field by field with the values' own indexers, so a lazy object is
    /// reached without building the maps on the way. `None` when a step is not a map or
    /// lacks the field: the interpreter then selects step by step and reports the error.
    fn resolve_path<'b>(&'b self, root: &str, path: &str) -> Option<CowVal<'b, 'b>> {
        let mut value: &'b dyn Val = match root {
            "object" => self.act.object().ok()?,
            "oldObject" => self.act.old_object().ok()?,
            "request" => self.act.request(),
            "params" => self.params,
            _ => return None,
        };
        let mut fields = path.split('.').peekable();
        while let Some(field) = fields.next() {
            if !value::charge(1) {
                return None;
            }
            let key = CelString::from(field);
            match value.as_indexer()?.get(&key).ok()? {
                CowVal::Borrowed(v) => value = v,
                owned @ CowVal::Owned(_) => {
                    return fields.peek().is_none().then_some(owned);
                }
            }
        }
        Some(CowVal::Borrowed(value))
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

impl Variables<'_, '_> {
    /// Variable `i`, evaluated on first use.
    fn ensure(&self, i: usize) -> &Result<Owned, String> {
        self.cache[i].get_or_init(|| {
            let scope = Scope {
                act: self.act,
                params: self.inner.params.as_ref(),
                vars: self,
            };
            let (name, program) = &self.inner.variables[i];
            with_result(program, &scope, |v| {
                // A variable's size is charged once computed, so chains of variables that
                // double a string or a list run out of budget rather than memory.
                let size = match v.as_sizer() {
                    Some(s) => (*s.size().inner()).max(1) as u64,
                    None => 1,
                };
                value::charge_or_fail(&format!("variables.{name}"), size)
                    .map_err(|e| e.to_string())?;
                // Parts of the object, and shared lists and maps, are shared, not copied.
                value::to_static(v).map_err(|e| e.to_string())
            })
        })
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
        match self.ensure(i) {
            Ok(v) => Ok(CowVal::Borrowed(v.as_ref())),
            Err(e) => Err(ExecutionError::function_error(
                &format!("variables.{name}"),
                e,
            )),
        }
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        self.get(idx).map(|v| v.into_owned())
    }
}

// ---------------------------------------------------------------------------------------------
// The `cel` kind in Gatehouse's policy engine
// ---------------------------------------------------------------------------------------------

/// Loads a `cel` policy's params (the [`Loader`](crate::policy::Loader) in `KINDS`).
pub fn load(
    params: serde_yaml::Value,
    _ctx: &crate::policy::LoadContext,
) -> Result<Arc<dyn crate::policy::Check>, String> {
    let params = if params.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        params
    };
    let typed: CelParams = serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        if path == "." || path.is_empty() {
            format!("params: {}", e.inner())
        } else {
            format!("params.{path}: {}", e.inner())
        }
    })?;
    let policy = CelPolicy::from_params(typed).map_err(|e| format!("params.{e}"))?;
    Ok(Arc::new(policy))
}

impl Attributes {
    /// The attributes of a decoded review.
    pub fn of(review: &crate::admission::Review<'_>) -> Self {
        use kube::core::admission::Operation;
        Attributes {
            uid: review.uid.to_string(),
            kind: GroupVersion {
                group: review.kind.group.to_string(),
                version: review.kind.version.to_string(),
                name: review.kind.kind.to_string(),
            },
            resource: GroupVersion {
                group: review.resource.group.to_string(),
                version: review.resource.version.to_string(),
                name: review.resource.resource.to_string(),
            },
            sub_resource: review.sub_resource.as_deref().unwrap_or("").to_owned(),
            name: review.name.to_string(),
            namespace: review.namespace.as_deref().unwrap_or("").to_owned(),
            operation: match review.operation {
                Operation::Create => "CREATE",
                Operation::Update => "UPDATE",
                Operation::Delete => "DELETE",
                Operation::Connect => "CONNECT",
            }
            .to_owned(),
            user_info: UserInfo {
                username: review
                    .user_info
                    .username
                    .as_deref()
                    .unwrap_or("")
                    .to_owned(),
                uid: String::new(),
                groups: review.user_info.groups().map(|g| g.into_owned()).collect(),
                extra: BTreeMap::new(),
            },
            dry_run: review.dry_run,
            options: None,
        }
    }
}

/// Runs `f` on the review's attributes and activation (objects decoded on first use).
/// `user` identifies the policy (see [`Activation::of_checked`]).
pub(crate) fn with_activation<T>(
    review: &crate::admission::Review<'_>,
    user: usize,
    f: impl FnOnce(&Attributes, &Activation<'_>) -> T,
) -> T {
    let attrs = Attributes::of(review);
    let object = review.object.as_ref().map(|o| o.raw.text().as_bytes());
    let old_object = review.old_object.as_ref().map(|o| o.raw.text().as_bytes());
    let found = |old: bool| found_in(review, old);
    let act = Activation::of_checked(&attrs, object, old_object, user, &found);
    f(&attrs, &act)
}

/// Where the decoder found the parts of the review's object (or old object, when `old`).
fn found_in(review: &crate::admission::Review<'_>, old: bool) -> lazy::Found {
    let o = if old {
        &review.old_object
    } else {
        &review.object
    };
    o.as_ref().map(hints).unwrap_or_default()
}

/// Where the decoder found the object's parts, as offsets into its text.
fn hints(o: &crate::admission::Object<'_>) -> lazy::Found {
    let base = o.raw.text();
    let at = |part: Option<crate::admission::Raw<'_>>| {
        let text = part?.text();
        let start = (text.as_ptr() as usize).checked_sub(base.as_ptr() as usize)?;
        let end = start + text.len();
        (end <= base.len()).then_some((start, end))
    };
    lazy::Found {
        metadata: at(o.metadata),
        spec: at(o.spec),
        template: at(o.template),
        labels: at(o.labels),
        annotations: at(o.annotations),
        replicas: at(o.replicas),
        spec_template: at(o.spec_template),
        job_template: at(o.job_template),
        containers: at(o.spec_containers),
    }
}

/// Hands a policy's audit annotations to the decision, keyed `<policy name>/<key>` as the
/// API server keys a ValidatingAdmissionPolicy's.
pub(crate) fn annotate(
    ctx: &crate::policy::EvalCtx<'_, '_>,
    policy: &str,
    annotations: Vec<(String, String)>,
) {
    if annotations.is_empty() {
        return;
    }
    if let Ok(mut out) = ctx.audit_annotations.lock() {
        out.extend(
            annotations
                .into_iter()
                .map(|(key, value)| (format!("{policy}/{key}"), value)),
        );
    }
}

/// A verdict as a policy outcome: an error under `failurePolicy: Fail` denies, like a
/// violation.
pub(crate) fn outcome(verdict: Verdict) -> crate::policy::Outcome {
    use crate::policy::Outcome;
    match verdict {
        Verdict::Pass => Outcome::Pass,
        Verdict::Violation { message, .. } | Verdict::Error(message) => Outcome::Violation(message),
    }
}

impl crate::policy::Check for CelPolicy {
    fn evaluate<'r>(&'r self, ctx: &'r crate::policy::EvalCtx<'r, '_>) -> crate::policy::Eval<'r> {
        let user = Arc::as_ptr(&self.inner) as usize;
        let review = ctx.review;
        let attrs = || Attributes::of(review);
        let found = |old: bool| found_in(review, old);
        let act = Activation::of_review(
            &attrs,
            review.object.as_ref().map(|o| o.raw.text().as_bytes()),
            review.old_object.as_ref().map(|o| o.raw.text().as_bytes()),
            user,
            &found,
        );
        let e = CelPolicy::evaluate(self, &act);
        annotate(ctx, ctx.policy, e.audit_annotations);
        crate::policy::Eval::Done(outcome(e.verdict))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    pub(crate) fn deployment_attrs(operation: &str) -> Attributes {
        Attributes {
            uid: "705ab4f5-6393-11e8-b7cc-42010a800002".into(),
            kind: GroupVersion {
                group: "apps".into(),
                version: "v1".into(),
                name: "Deployment".into(),
            },
            resource: GroupVersion {
                group: "apps".into(),
                version: "v1".into(),
                name: "deployments".into(),
            },
            sub_resource: String::new(),
            name: "web".into(),
            namespace: "default".into(),
            operation: operation.into(),
            user_info: UserInfo {
                username: "alice".into(),
                uid: "1".into(),
                groups: vec!["system:authenticated".into()],
                extra: BTreeMap::new(),
            },
            dry_run: false,
            options: None,
        }
    }

    pub(crate) fn deployment(replicas: i64, image: &str) -> String {
        serde_json::json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default", "labels": {"app": "web", "team": "payments"}},
            "spec": {
                "replicas": replicas,
                "template": {"spec": {"containers": [
                    {"name": "web", "image": image,
                     "resources": {"limits": {"memory": "512Mi", "cpu": "500m"}}},
                    {"name": "sidecar", "image": "registry.example.com/proxy:1.2"}
                ]}}
            }
        })
        .to_string()
    }

    fn policy(yaml: &str) -> Result<CelPolicy, String> {
        let params: CelParams = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
        CelPolicy::from_params(params)
    }

    /// `params` (a `cel` policy's params as YAML) judged on `object` with the direct
    /// evaluator and then with the interpreter alone, and how many expressions the direct
    /// evaluator answered.
    pub(crate) fn both_ways(params: &str, object: &str) -> (Evaluation, Evaluation, usize) {
        let p = policy(params).unwrap_or_else(|e| panic!("{params}: {e}"));
        let attrs = deployment_attrs("CREATE");
        let run = |interpreter_only: bool| {
            testing::INTERPRETER_ONLY.with(|f| f.set(interpreter_only));
            testing::DIRECT_ANSWERS.with(|n| n.set(0));
            let act = Activation::new(&attrs, Some(object.as_bytes()), None);
            let e = p.evaluate(&act);
            testing::INTERPRETER_ONLY.with(|f| f.set(false));
            (e, testing::DIRECT_ANSWERS.with(|n| n.get()))
        };
        let (direct, answered) = run(false);
        let (interpreted, none) = run(true);
        assert_eq!(none, 0, "the interpreter alone answered everything");
        (direct, interpreted, answered)
    }

    /// `expr` evaluated by cel-rust's own standard library, without Gatehouse's environment or
    /// rewriting: the reference for what Gatehouse's replacements must give.
    fn stdlib_result(expr: &str) -> Result<bool, String> {
        let env = Arc::new(::cel::Env::stdlib());
        let program = env.compile(expr).map_err(|e| format!("{e:?}"))?;
        let ctx = Context::with_env(Arc::clone(&env));
        let v = Value::resolve_val(program.expression(), &ctx).map_err(|e| e.to_string())?;
        v.downcast_ref::<CelBool>()
            .map(|b| *b.inner())
            .ok_or_else(|| "not a bool".to_owned())
    }

    /// `matches` keeps its compiled patterns (`library::MATCHES`) and still answers as the
    /// standard library's: results, an invalid pattern, arguments of the wrong types, in the
    /// member and the global form, and on the same pattern again (kept).
    #[rstest]
    #[case("'abc'.matches('^a')")]
    #[case("'abc'.matches('^b')")]
    #[case("matches('abc', 'c$')")]
    #[case("matches('abc', 'b$')")]
    #[case("'ABC'.matches('(?i)^abc$')")]
    #[case("'é'.matches('^.$') && !'é'.matches('^..$')")]
    #[case("'a-b'.matches('^[a-z]-[a-z]$') && 'a-b'.matches('^[a-z]-[a-z]$')")]
    #[case("'a'.matches('(')")]
    #[case("matches('a', '[')")]
    #[case("'a'.matches(1)")]
    #[case("matches(1, 'a')")]
    #[case("'a'.matches('a', 'b')")]
    fn matches_answers_as_the_standard_library(#[case] expr: &str) {
        let want = stdlib_result(expr);
        for round in 0..2 {
            let got = check(expr);
            match (&want, &got) {
                (Ok(true), Verdict::Pass) | (Ok(false), Verdict::Violation { .. }) => {}
                (Err(e), Verdict::Error(msg)) if msg.contains(e.as_str()) => {}
                _ => panic!(
                    "{expr} (round {round}): the standard library gives {want:?}, Gatehouse {got:?}"
                ),
            }
        }
    }

    fn verdict(p: &CelPolicy, object: &str) -> Verdict {
        let attrs = deployment_attrs("CREATE");
        let act = Activation::new(&attrs, Some(object.as_bytes()), None);
        p.evaluate(&act).verdict
    }

    fn check(expr: &str) -> Verdict {
        let p = policy(&format!(
            "validations:\n- expression: {}\n  message: no\n",
            serde_json::to_string(expr).unwrap()
        ))
        .unwrap_or_else(|e| panic!("{expr}: {e}"));
        verdict(&p, &deployment(3, "nginx:1.27"))
    }

    /// Expressions over the Kubernetes CEL libraries with the results the API server gives.
    #[rstest]
    // core, macros, has(), optional
    #[case("object.spec.replicas >= 3")]
    #[case("has(object.spec.replicas) && !has(object.spec.paused)")]
    #[case("object.spec.template.spec.containers.all(c, c.image != '')")]
    #[case("object.spec.template.spec.containers.exists_one(c, c.name == 'web')")]
    #[case("object.spec.template.spec.containers.map(c, c.name) == ['web', 'sidecar']")]
    #[case("object.spec.template.spec.containers.filter(c, c.image.endsWith(':1.2')).size() == 1")]
    #[case("object.metadata.labels['app'] == 'web' && 'team' in object.metadata.labels")]
    #[case("object.?spec.?paused.orValue(false) == false")]
    #[case("object.spec.?replicas.orValue(1) == 3")]
    #[case(
        "object.spec.template.spec.containers[0].resources.?limits.?memory.orValue('0') == '512Mi'"
    )]
    #[case(
        "object.spec.template.spec.containers[1].?resources.?limits.?memory.orValue('none') == 'none'"
    )]
    // equality and `in` between the object's parts and plain lists and maps, either side
    #[case("{'app': 'web', 'team': 'payments'} == object.metadata.labels")]
    #[case("object.metadata.labels == {'team': 'payments', 'app': 'web'}")]
    #[case("{'app': 'web'} != object.metadata.labels && object.metadata.labels != {'app': 'x'}")]
    #[case(
        "{'name': 'sidecar', 'image': 'registry.example.com/proxy:1.2'} == object.spec.template.spec.containers[1]"
    )]
    #[case("[{'app': 'web', 'team': 'payments'}] == [object.metadata.labels]")]
    #[case("[object.metadata.labels] == [{'app': 'web', 'team': 'payments'}]")]
    #[case(
        "object.spec.template.spec.containers.filter(c, c.name == 'web') == [object.spec.template.spec.containers[0]]"
    )]
    #[case("['web', 'sidecar'] == object.spec.template.spec.containers.map(c, c.name)")]
    #[case("object.metadata.labels in [{'app': 'web', 'team': 'payments'}]")]
    #[case("{'team': 'payments', 'app': 'web'} in [object.metadata.labels]")]
    #[case("object.metadata.name in [object.metadata.labels.app, 'x']")]
    #[case("optional.of({'app': 'web', 'team': 'payments'}) == object.metadata.?labels")]
    #[case("[{'app': 'web', 'team': 'payments'}].indexOf(object.metadata.labels) == 0")]
    #[case("object.spec.template == object.spec.template && object.spec != object.metadata")]
    #[case("optional.of(1).hasValue() && !optional.none().hasValue()")]
    #[case("{'a': 1}[?'a'].orValue(0) == 1 && {'a': 1}[?'b'].orValue(0) == 0")]
    #[case("optional.of(2).value() == 2 && !optional.ofNonZeroValue(0).hasValue()")]
    #[case("strings.quote('a') == '\"a\"' && 'abc'.reverse() == 'cba'")]
    #[case("oldObject == null")]
    #[case("request.operation == 'CREATE' && request.userInfo.username == 'alice'")]
    #[case("request.kind.group == 'apps' && request.resource.resource == 'deployments'")]
    #[case("'system:authenticated' in request.userInfo.groups")]
    #[case("params == null")]
    #[case("object.metadata.name.matches('^[a-z]+$')")]
    #[case("type(object.spec.replicas) == int")]
    // strings extension
    #[case("'TacoCat'.lowerAscii() == 'tacocat' && 'TacoCat'.upperAscii() == 'TACOCAT'")]
    #[case("'a,b,c'.split(',') == ['a', 'b', 'c'] && ['a', 'b'].join('-') == 'a-b'")]
    #[case("'hello'.indexOf('l') == 2 && 'hello'.lastIndexOf('l') == 3")]
    #[case("'  x '.trim() == 'x' && 'hello'.substring(1, 3) == 'el'")]
    #[case("'hello'.replace('l', 'L') == 'heLLo' && 'hello'.charAt(1) == 'e'")]
    #[case("'hello'.replace('l', 'L', 1) == 'heLlo' && 'ab'.replace('', '-') == '-a-b-'")]
    #[case(
        "'a,b,c'.split(',', 2) == ['a', 'b,c'] && 'abc'.split('') == ['a', 'b', 'c'] && 'abc'.split('', 2) == ['a', 'bc'] && 'a'.split(',', 0) == []"
    )]
    #[case("['a', 'b'].join() == 'ab'")]
    #[case(
        "'%s has %d replicas'.format([object.metadata.name, object.spec.replicas]) == 'web has 3 replicas'"
    )]
    // lists library
    #[case("[1, 2, 3].isSorted() && !['b', 'a'].isSorted()")]
    #[case("[1, 2, 3].sum() == 6 && [1.5, 2.0].sum() == 3.5 && [].sum() == 0")]
    #[case("[3, 1, 2].min() == 1 && [3, 1, 2].max() == 3")]
    #[case(
        "[1, 2, 2, 3].indexOf(2) == 1 && [1, 2, 2, 3].lastIndexOf(2) == 2 && [1].indexOf(5) == -1"
    )]
    // regex library
    #[case("'abc 123 def 456'.find('[0-9]+') == '123' && 'abc'.find('[0-9]+') == ''")]
    #[case("'123 abc 456'.findAll('[0-9]+') == ['123', '456']")]
    #[case("'1 2 3 4'.findAll('[0-9]', 2) == ['1', '2']")]
    // quantity library
    #[case("quantity('1Gi') == quantity('1024Mi')")]
    #[case("quantity('200M').isGreaterThan(quantity('0.1G'))")]
    #[case("quantity('100m').isLessThan(quantity('1'))")]
    #[case("quantity('50k').add(20).compareTo(quantity('50020')) == 0")]
    #[case("quantity('50k').sub(quantity('20k')) == quantity('30k')")]
    #[case("quantity('1.5').isInteger() == false && quantity('2').asInteger() == 2")]
    #[case("quantity('500m').asApproximateFloat() == 0.5 && quantity('-1').sign() == -1")]
    #[case("isQuantity('2Gi') && !isQuantity('2GB')")]
    #[case(
        "quantity(object.spec.template.spec.containers[0].resources.limits.memory).isLessThan(quantity('1Gi'))"
    )]
    // url library
    #[case("url('https://example.com:80/').getHost() == 'example.com:80'")]
    #[case(
        "url('https://example.com/').getHostname() == 'example.com' && url('https://example.com/').getPort() == ''"
    )]
    #[case(
        "url('https://[::1]:80/').getHostname() == '::1' && url('https://[::1]:80/').getPort() == '80'"
    )]
    #[case("url('https://example.com/path').getScheme() == 'https'")]
    #[case(
        "url('https://example.com/path%20with%20spaces/').getEscapedPath() == '/path%20with%20spaces/'"
    )]
    #[case("url('https://example.com/?k=a&k=b&x=1').getQuery() == {'k': ['a', 'b'], 'x': ['1']}")]
    #[case("isURL('https://example.com/') && isURL('/absolute-path') && !isURL('example.com')")]
    fn library_matches_the_api_server(#[case] expr: &str) {
        assert_eq!(check(expr), Verdict::Pass, "{expr}");
        // The same expression negated must fail: the check can fail.
        assert!(
            matches!(check(&format!("!({expr})")), Verdict::Violation { .. }),
            "!({expr})"
        );
    }

    #[rstest]
    #[case("[].min()", "min called on empty list")]
    #[case("quantity('1.5').asInteger()", "cannot convert value to integer")]
    #[case("quantity('12 GB') == quantity('1')", "quantities must match")]
    #[case("url('example.com').getHost() == ''", "invalid URI for request")]
    #[case("object.spec.missing == 1", "No such key: missing")]
    #[case("object.spec.replicas", "must evaluate to a bool, not int")]
    fn runtime_errors_follow_failure_policy(#[case] expr: &str, #[case] expected: &str) {
        match check(expr) {
            Verdict::Error(message) => {
                assert!(message.contains(expected), "{expr}: {message}");
                assert!(
                    message.starts_with(&format!("expression '{expr}' resulted in error: ")),
                    "{message}"
                );
            }
            other => panic!("{expr}: {other:?}"),
        }
        let ignoring = policy(&format!(
            "failurePolicy: Ignore\nvalidations:\n- expression: {}\n",
            serde_json::to_string(expr).unwrap()
        ))
        .unwrap();
        assert_eq!(verdict(&ignoring, &deployment(3, "nginx")), Verdict::Pass);
    }

    #[rstest]
    #[case(
        "validations:\n- expression: 'object.spec.replicas >='\n",
        "validations[0].expression: syntax error at line 1, column"
    )]
    #[case(
        "validations:\n- expression: \"namespaceObject.metadata.labels['env'] == 'prod'\"\n",
        "`namespaceObject` is not available: Gatehouse has no API access"
    )]
    #[case(
        "validations:\n- expression: \"authorizer.group('apps').resource('deployments').check('scale').allowed()\"\n",
        "`authorizer` is not available"
    )]
    #[case(
        "validations:\n- expression: 'objet.spec.replicas >= 3'\n",
        "validations[0].expression: undeclared reference to `objet` (in `objet.spec.replicas >= 3`)"
    )]
    #[case(
        "variables:\n- name: a\n  expression: variables.b\n- name: b\n  expression: '1'\nvalidations:\n- expression: variables.a == 1\n",
        "variables[0].expression: undeclared reference to `variables.b`"
    )]
    #[case(
        "validations:\n- expression: 'true'\n  reason: Teapot\n",
        "validations[0].reason: `Teapot` is not one of Unauthorized, Forbidden, Invalid, RequestEntityTooLarge"
    )]
    #[case("validations: []\n", "at least one validation")]
    #[case("validation:\n- expression: 'true'\n", "unknown field `validation`")]
    fn load_errors_name_field_and_expression(#[case] yaml: &str, #[case] expected: &str) {
        let err = policy(yaml).expect_err(yaml);
        assert!(err.contains(expected), "{err}");
        assert!(!err.contains("usize") && !err.contains("struct"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused_at_load() {
        let expr = format!("{}1{} == 1", "(".repeat(300), ")".repeat(300));
        let err = policy(&format!("validations:\n- expression: '{expr}'\n")).unwrap_err();
        assert!(
            err.starts_with("validations[0].expression: syntax error"),
            "{err}"
        );
        let expr = format!("{} == 60", vec!["1"; 60].join(" + "));
        let err = policy(&format!("validations:\n- expression: '{expr}'\n")).unwrap_err();
        assert!(
            err.contains("nests 61 levels deep, more than the 48 allowed"),
            "{err}"
        );
    }

    /// The deepest expressions accepted evaluate on a test thread's 2 MiB stack (debug build).
    #[test]
    fn the_deepest_accepted_expressions_evaluate() {
        let sum = format!("{} == 46", vec!["1"; 46].join(" + "));
        assert_eq!(check(&sum), Verdict::Pass);
        let nested = (0..10).fold("true".to_string(), |inner, i| {
            format!("[{i}].all(x{i}, {inner})")
        });
        assert_eq!(check(&nested), Verdict::Pass);
        let chain: Vec<String> = (0..20)
            .map(|i| {
                format!(
                    "  - name: v{i}\n    expression: {}\n",
                    if i == 0 {
                        "object.spec.replicas".to_string()
                    } else {
                        format!("variables.v{} + 1", i - 1)
                    }
                )
            })
            .collect();
        let p = policy(&format!(
            "variables:\n{}validations:\n- expression: variables.v19 == 22\n",
            chain.join("")
        ))
        .unwrap();
        assert_eq!(verdict(&p, &deployment(3, "x")), Verdict::Pass);
    }

    /// A comparison of a name with a literal, evaluated without the interpreter when it can
    /// be, answers as the interpreter does, errors included.
    #[rstest]
    #[case("object.spec.replicas >= 3")]
    #[case("3 <= object.spec.replicas")]
    #[case("object.spec.replicas > 3")]
    #[case("object.spec.replicas != 3")]
    #[case("object.spec.replicas < 3.5")]
    #[case("object.spec.replicas == 3u")]
    #[case("object.metadata.name == 'web'")]
    #[case("'web' != object.metadata.name")]
    #[case("object.metadata.name > 'a'")]
    #[case("object.metadata.labels == null")]
    #[case("request.operation == 'CREATE'")]
    #[case("params.min == null")]
    #[case("object.spec.replicas > 'a'")]
    #[case("object.spec.missing == 1")]
    #[case("object.spec.replicas.x == 1")]
    #[case("oldObject.spec == null")]
    fn comparisons_with_a_literal_answer_as_the_interpreter(#[case] expr: &str) {
        let run = |expr: &str| {
            let p = policy(&format!(
                "validations:\n- expression: {}\n  message: no\n",
                serde_json::to_string(expr).unwrap()
            ))
            .unwrap();
            assert_eq!(
                p.inner.validations[0].expression.simple.is_some(),
                !expr.starts_with("true &&"),
                "{expr}"
            );
            match verdict(&p, &deployment(3, "nginx")) {
                Verdict::Error(e) => {
                    Err(e.split_once(" resulted in error: ").unwrap().1.to_owned())
                }
                v => Ok(v),
            }
        };
        let fast = run(expr);
        assert_eq!(fast, run(&format!("true && ({expr})")), "{expr}");
    }

    #[test]
    fn messages_come_from_message_expression_then_message_then_the_expression() {
        let p = policy(
            r#"
params: {maxReplicas: 2}
validations:
- expression: object.spec.replicas <= params.maxReplicas
  messageExpression: "'object.spec.replicas must be no greater than ' + string(params.maxReplicas)"
  reason: Forbidden
- expression: "false"
"#,
        )
        .unwrap();
        assert_eq!(
            verdict(&p, &deployment(3, "nginx")),
            Verdict::Violation {
                message: "object.spec.replicas must be no greater than 2".into(),
                reason: "Forbidden".into()
            }
        );
        let p = policy("validations:\n- expression: object.spec.replicas < 3\n  message: too many\n  messageExpression: 'object.nope'\n").unwrap();
        assert_eq!(
            verdict(&p, &deployment(3, "nginx")),
            Verdict::Violation {
                message: "too many".into(),
                reason: "Invalid".into()
            }
        );
        let p = policy("validations:\n- expression: object.spec.replicas < 3\n").unwrap();
        assert_eq!(
            verdict(&p, &deployment(3, "nginx")),
            Verdict::Violation {
                message: "failed expression: object.spec.replicas < 3".into(),
                reason: "Invalid".into()
            }
        );
    }

    #[test]
    fn variables_are_evaluated_lazily_and_once() {
        // `boom` fails if evaluated; the validation never reads it.
        let p = policy(
            r#"
variables:
- name: containers
  expression: object.spec.template.spec.containers
- name: boom
  expression: object.spec.nothing.here
- name: bad
  expression: variables.containers.filter(c, c.image.endsWith(':latest'))
validations:
- expression: size(variables.bad) == 0
  messageExpression: "'images with :latest: ' + variables.bad.map(c, c.name).join(', ')"
"#,
        )
        .unwrap();
        assert_eq!(verdict(&p, &deployment(3, "nginx:1.27")), Verdict::Pass);
        assert_eq!(
            verdict(&p, &deployment(3, "nginx:latest")),
            Verdict::Violation {
                message: "images with :latest: web".into(),
                reason: "Invalid".into()
            }
        );
    }

    #[test]
    fn match_conditions_gate_the_validations() {
        let p = policy(
            r#"
matchConditions:
- name: only-web
  expression: object.metadata.name == 'web'
validations:
- expression: object.spec.replicas >= 3
"#,
        )
        .unwrap();
        assert!(matches!(
            verdict(&p, &deployment(1, "x")),
            Verdict::Violation { .. }
        ));
        let other = deployment(1, "x").replace(
            "\"name\":\"web\",\"namespace\"",
            "\"name\":\"api\",\"namespace\"",
        );
        assert_eq!(verdict(&p, &other), Verdict::Pass);
        let p = policy("matchConditions:\n- name: broken\n  expression: object.nope\nvalidations:\n- expression: 'true'\n").unwrap();
        assert!(
            matches!(verdict(&p, &deployment(1, "x")), Verdict::Error(m) if m.starts_with("matchCondition 'broken'"))
        );
    }

    #[test]
    fn delete_sees_old_object_and_null_object() {
        let p =
            policy("validations:\n- expression: object == null && oldObject.spec.replicas == 3\n")
                .unwrap();
        let attrs = deployment_attrs("DELETE");
        let old = deployment(3, "nginx");
        let act = Activation::new(&attrs, None, Some(old.as_bytes()));
        assert_eq!(p.evaluate(&act).verdict, Verdict::Pass);
    }

    #[test]
    fn audit_annotations_are_returned() {
        let p = policy(
            r#"
validations:
- expression: "true"
auditAnnotations:
- key: high-replica-count
  valueExpression: "object.spec.replicas > 2 ? 'Deployment spec.replicas set to ' + string(object.spec.replicas) : null"
"#,
        )
        .unwrap();
        let attrs = deployment_attrs("CREATE");
        let obj = deployment(5, "nginx");
        let e = p.evaluate(&Activation::new(&attrs, Some(obj.as_bytes()), None));
        assert_eq!(e.verdict, Verdict::Pass);
        assert_eq!(
            e.audit_annotations,
            vec![(
                "high-replica-count".to_string(),
                "Deployment spec.replicas set to 5".to_string()
            )]
        );
    }

    /// A huge list and nested comprehensions over it: cut off by the cost budget, answered with
    /// the failurePolicy.
    #[rstest]
    #[case("object.items.map(x, object.items.map(y, x + y)).size() > 0")]
    #[case("object.items.all(x, object.items.exists(y, y == -1))")]
    #[case("variables.all.all(x, variables.all.all(y, x != -1))")]
    #[case("object.items.map(x, [x, x, x, x]).map(l, object.items.size()).size() == 0")]
    #[case("object.items.map(x, [x, x, x, x, x, x, x, x, x, x, x, x, x, x, x, x]).size() == 0")]
    fn pathological_expressions_run_out_of_budget(#[case] expr: &str) {
        let items: Vec<u32> = (0..100_000).collect();
        let object = serde_json::json!({ "items": items }).to_string();
        for (policy_yaml, want_error) in [("Fail", true), ("Ignore", false)] {
            let p = policy(&format!(
                "failurePolicy: {policy_yaml}\nvariables:\n- name: all\n  expression: object.items\nvalidations:\n- expression: {}\n",
                serde_json::to_string(expr).unwrap()
            ))
            .unwrap();
            let attrs = deployment_attrs("CREATE");
            let act = Activation::new(&attrs, Some(object.as_bytes()), None);
            let started = Instant::now();
            let v = p.evaluate(&act).verdict;
            if want_error {
                assert!(
                    matches!(&v, Verdict::Error(m) if m.contains("cost limit exceeded") || m.contains("time limit")),
                    "{expr}: {v:?}"
                );
            } else {
                assert_eq!(v, Verdict::Pass, "{expr}");
            }
            // Not a timing assertion of speed, a bound on a runaway: without the budget these
            // run for hours.
            assert!(started.elapsed() < Duration::from_secs(30), "{expr}");
        }
    }

    #[test]
    fn variable_chains_that_double_a_string_run_out_of_budget() {
        let mut vars = String::from("variables:\n- name: v0\n  expression: object.s\n");
        for i in 1..40 {
            vars += &format!(
                "- name: v{i}\n  expression: variables.v{} + variables.v{}\n",
                i - 1,
                i - 1
            );
        }
        let p = policy(&format!(
            "{vars}validations:\n- expression: size(variables.v39) > 0\n"
        ))
        .unwrap();
        let object = serde_json::json!({"s": "x".repeat(1000)}).to_string();
        assert!(
            matches!(verdict(&p, &object), Verdict::Error(m) if m.contains("cost limit exceeded"))
        );
    }

    /// Through a decoded review (the decoder's hints, the shared conversion) expressions see
    /// what they see on the plain activation, duplicate keys and escapes included.
    #[rstest]
    #[case(r#"{"spec":{"replicas":1},"spec":{"replicas":3,"template":{"spec":{"containers":[{"name":"a"}]}}},"metadata":{"name":"web","labels":{"app":"web"}}}"#)]
    #[case(r#"{"metadata":null,"sp\u0065c":{"replicas":3,"replicas":4},"spec":{"replicas":5,"template":null}}"#)]
    #[case(
        r#"{"metadata":{"labels":{"app":"x"}},"metadata":{"name":"web"},"spec":{"replicas":"3"}}"#
    )]
    fn decoded_reviews_see_what_the_plain_activation_sees(#[case] object: &str) {
        let body = format!(
            r#"{{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"apps","version":"v1","kind":"Deployment"}},"resource":{{"group":"apps","version":"v1","resource":"deployments"}},"operation":"CREATE","userInfo":{{}},"object":{object}}}}}"#
        );
        let review = crate::admission::decode(body.as_bytes()).expect("review");
        for expr in [
            "object.spec.replicas == 3",
            "object.spec.replicas == 5",
            "has(object.spec.template) && object.spec.template.spec.containers[0].name == 'a'",
            "object.metadata.name == 'web'",
            "has(object.metadata.labels)",
            "object.metadata == null",
            "size(object) == 2",
            "object.spec == {'replicas': 3, 'template': null}",
        ] {
            let p = policy(&format!(
                "validations:\n- expression: {}\n  message: no\n",
                serde_json::to_string(expr).unwrap()
            ))
            .unwrap();
            let plain = verdict(&p, object);
            for user in [1, 2, 1] {
                let through = with_activation(&review, user, |_, act| p.evaluate(act).verdict);
                assert_eq!(through, plain, "{expr} on {object}");
            }
        }
    }

    #[test]
    fn an_unparsable_object_is_an_error_not_a_pass() {
        let p = policy("validations:\n- expression: 'true'\n").unwrap();
        assert!(
            matches!(verdict(&p, "{not json"), Verdict::Error(m) if m.contains("not valid JSON"))
        );
    }
}
