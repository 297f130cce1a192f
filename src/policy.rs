//! Policies: loading policy files, matching requests, evaluating kinds, combining verdicts.
//!
//! A policy file is YAML: either a list of policies or a mapping with a `policies:` list.
//! Each policy has a `name`, a `kind` (one of the built-in kinds in `policy/<kind>.rs`), a
//! `match` block, an `action` (`deny`, `warn`, `audit`) and `params` typed by its kind.
//!
//! # Adding a kind
//!
//! A kind is one file, `policy/<kind>.rs`, plus one line in [`KINDS`]:
//!
//! 1. Its params are a struct that deserializes from the policy's `params` (deny unknown
//!    fields, so a typo is a load error naming the field).
//! 2. It implements [`Params`] (`validate`: checks that need more than types, such as
//!    `min <= max`, or compiling patterns; the error names the field, `params.max: …`) and
//!    [`Check`] (`evaluate`: the verdict on one [`Review`]). A kind whose params need more
//!    than [`load_params`] does (a store, files) writes its own [`Loader`].
//! 3. `evaluate` reads only what it judges from the review's raw objects
//!    ([`crate::admission::Raw`]; the pod template is read once per review and shared, see
//!    [`Review::pod_template`]). It returns [`Eval::Done`] with the [`Outcome`], or
//!    [`Eval::Pending`] with a boxed future for a kind that waits on the outside world (it
//!    must then honour [`EvalOptions::offline`] by returning [`Outcome::Skipped`]).
//! 4. A kind with a side effect on admission (consuming a one-time token) returns true from
//!    [`Check::consumes`]: it runs after every other policy, and [`EvalCtx::may_consume`] says
//!    whether the request is still allowed so far.
//! 5. Register it: `("my-kind", load_params::<my_kind::MyKind>)` in [`KINDS`]. The name is
//!    what policy files write in `kind:`, and appears in the "unknown kind" message.

pub mod annotations;
mod api_resources;
pub mod cel;
pub mod cleanup;
mod exempt;
pub mod forward;
pub mod labels;
pub mod matching;
pub mod messages;
pub mod one_time_token;
pub(crate) mod podspec;
pub mod ports;
mod quantity;
pub mod registries;
pub mod replicas;
mod required_keys;
pub mod resources;

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

pub use crate::admission::Review;

use crate::notify::rule::NotifyRule;
use matching::{MatchSpec, Matcher, namespace_matches};

/// The shipped default policies, embedded so the binary works outside the repository.
pub const DEFAULT_POLICIES: &str = include_str!("../policies/default.yaml");
/// How the embedded defaults are named in messages.
pub const DEFAULT_POLICIES_NAME: &str = "policies/default.yaml (embedded)";

/// What a policy does when its check fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The request is denied.
    #[default]
    Deny,
    /// The request is allowed and the client is shown a warning.
    Warn,
    /// The request is allowed and an audit annotation is recorded.
    Audit,
}

impl Action {
    /// `deny`, `warn`, `audit`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Warn => "warn",
            Action::Audit => "audit",
        }
    }
}

/// What one policy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The request satisfies the policy.
    Pass,
    /// The request violates the policy; the message says how.
    Violation(String),
    /// The policy could not be judged in this mode (for example a kind that needs the
    /// outside world in an offline `check`); the message says why. Not a pass.
    Skipped(String),
    /// The request passes, with a warning for the client whatever the policy's action (for
    /// example a `forward` policy that fails open).
    Warning(String),
}

/// How an evaluation runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EvalOptions {
    /// No network or database: kinds that need the outside world report `Skipped`.
    pub offline: bool,
}

/// What loading policies may hand to the kinds that need more than their params.
#[derive(Debug, Clone, Default)]
pub struct LoadContext {
    /// Where `one-time-token` policies find the token store (opened after loading, only if
    /// such a policy was loaded). The default has no store settings: such policies still load,
    /// are `Skipped` offline and deny with "token store unavailable" otherwise.
    pub token_store: crate::store::TokenStoreSlot,
}

/// A boxed future of an [`Outcome`], for kinds that wait on the outside world.
pub type PendingOutcome<'r> = Pin<Box<dyn Future<Output = Outcome> + Send + 'r>>;

/// What [`Check::evaluate`] returns: the outcome at once, or a future of it.
pub enum Eval<'r> {
    /// Judged without waiting (every kind that only reads the review).
    Done(Outcome),
    /// Judged after waiting (a call out, a database).
    Pending(PendingOutcome<'r>),
}

impl Eval<'_> {
    /// The outcome, waiting for it when needed.
    pub async fn outcome(self) -> Outcome {
        match self {
            Eval::Done(o) => o,
            Eval::Pending(f) => f.await,
        }
    }
}

/// Everything one policy's evaluation may look at.
#[derive(Debug)]
pub struct EvalCtx<'r, 'a> {
    /// The policy's name, for messages.
    pub policy: &'r str,
    /// The review being judged.
    pub review: &'r Review<'a>,
    /// How the evaluation runs (offline or not).
    pub opts: &'r EvalOptions,
    /// For kinds that [`Check::consumes`]: true while no other policy has denied the request,
    /// so admitting it will happen and the side effect may take place.
    pub may_consume: bool,
    /// Audit annotations the policy adds to the answer (`cel` and VAP `auditAnnotations`),
    /// keyed `<policy name>/<key>`; they go into [`Decision::audit_annotations`].
    pub audit_annotations: std::sync::Mutex<Vec<(String, String)>>,
}

/// A policy kind's check: the one interface every kind implements (see the module docs).
pub trait Check: Any + Send + Sync + fmt::Debug {
    /// Judges one review.
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r>;

    /// Whether admitting a request has a side effect (a one-time token is consumed). Such
    /// kinds run after all others.
    fn consumes(&self) -> bool {
        false
    }
}

/// Params of a kind loaded by [`load_params`]: deserialized from `params`, then validated.
pub trait Params: Check + DeserializeOwned {
    /// Checks that need more than types; the error names the field (`params.max: …`).
    fn validate(&mut self) -> Result<(), String>;
}

/// Builds a kind's check from the policy's `params`; the error names the parameter.
pub type Loader = fn(serde_yaml::Value, &LoadContext) -> Result<Arc<dyn Check>, String>;

/// The [`Loader`] of a kind whose params are all it needs.
pub fn load_params<T: Params>(
    params: serde_yaml::Value,
    _ctx: &LoadContext,
) -> Result<Arc<dyn Check>, String> {
    let mut p: T = typed_params(params)?;
    p.validate()?;
    Ok(Arc::new(p))
}

/// The built-in kinds: the name policy files use and how to load it. One line per kind.
pub const KINDS: &[(&str, Loader)] = &[
    ("replicas", load_params::<replicas::Replicas>),
    ("registries", load_params::<registries::Registries>),
    ("resources", load_params::<resources::Resources>),
    ("ports", load_params::<ports::Ports>),
    ("annotations", load_params::<annotations::Annotations>),
    ("labels", load_params::<labels::Labels>),
    ("forward", forward::load),
    ("one-time-token", one_time_token::load),
    ("cel", cel::load),
];

/// A policy's kind: its name and its loaded check.
#[derive(Debug, Clone)]
pub struct Kind {
    name: &'static str,
    check: Arc<dyn Check>,
}

impl Kind {
    /// Loads `params` for `kind`; the error names the parameter.
    fn parse(kind: &str, params: serde_yaml::Value, ctx: &LoadContext) -> Result<Self, String> {
        match KINDS.iter().find(|(name, _)| *name == kind) {
            Some((name, load)) => Ok(Kind {
                name,
                check: load(params, ctx)?,
            }),
            None => Err(format!(
                "kind: unknown kind `{kind}` (known kinds: {})",
                KINDS
                    .iter()
                    .map(|(name, _)| *name)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// The kind's name as written in policy files.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The loaded check.
    pub fn check(&self) -> &dyn Check {
        &*self.check
    }

    /// The check as its concrete kind, when it is one (`forward` start-time checks).
    pub fn downcast<T: Check>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.check;
        any.downcast_ref::<T>()
    }

    fn consumes(&self) -> bool {
        self.check.consumes()
    }
}

/// Deserializes `params`, naming the path of a bad field (`params.min: invalid type …`).
fn typed_params<T: serde::de::DeserializeOwned>(params: serde_yaml::Value) -> Result<T, String> {
    let params = if params.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        params
    };
    serde_path_to_error::deserialize(params).map_err(|e| {
        let path = e.path().to_string();
        let message = messages::humanize(&e.inner().to_string());
        if path == "." || path.is_empty() {
            format!("params: {message}")
        } else {
            format!("params.{path}: {message}")
        }
    })
}

/// A policy as written in a file, before its kind's params are typed.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPolicy {
    name: String,
    kind: String,
    #[serde(rename = "match")]
    match_spec: MatchSpec,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    params: serde_yaml::Value,
    /// Judge cleanup UPDATEs too (see [`cleanup`]); default false.
    #[serde(default)]
    judge_cleanup: bool,
}

/// A policy ready to evaluate.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Unique name, a DNS label.
    pub name: String,
    /// What to do on a violation.
    pub action: Action,
    /// Free text for people.
    pub description: Option<String>,
    /// Which requests it applies to.
    pub matcher: Matcher,
    /// The check.
    pub kind: Kind,
    /// The file it came from.
    pub source: String,
    /// Whether it judges cleanup UPDATEs (`judgeCleanup: true`; see [`cleanup`]).
    pub judge_cleanup: bool,
}

/// A policy file (or the embedded defaults) that could not be loaded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{file}: {message}")]
pub struct LoadError {
    /// The file.
    pub file: String,
    /// What is wrong, naming the policy and field.
    pub message: String,
}

impl LoadError {
    pub(crate) fn new(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            message: message.into(),
        }
    }
}

/// The top level of a policy file written as a mapping.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    /// Absent (and no notifications either) means an empty file, which is refused.
    #[serde(default)]
    policies: Option<Vec<serde_yaml::Value>>,
    /// Notification rules (see `notify::rule`).
    #[serde(default)]
    notifications: Vec<serde_yaml::Value>,
}

/// Why an empty policy file is refused.
const EMPTY_FILE: &str = "the file holds no policies; an empty file would allow everything, so write `policies: []` if an empty set is meant";

/// Parses one policy file's text; `source` names it in errors.
pub fn parse_policies(text: &str, source: &str) -> Result<Vec<Policy>, LoadError> {
    parse_policies_with(text, source, &LoadContext::default())
}

/// [`parse_policies`] with a [`LoadContext`] for kinds that need one.
pub fn parse_policies_with(
    text: &str,
    source: &str,
    ctx: &LoadContext,
) -> Result<Vec<Policy>, LoadError> {
    parse_file_with(text, source, ctx).map(|(policies, _)| policies)
}

/// Parses one policy file's text into its policies and its notification rules.
pub fn parse_file(text: &str, source: &str) -> Result<(Vec<Policy>, Vec<NotifyRule>), LoadError> {
    parse_file_with(text, source, &LoadContext::default())
}

/// [`parse_file`] with a [`LoadContext`] for kinds that need one.
pub fn parse_file_with(
    text: &str,
    source: &str,
    ctx: &LoadContext,
) -> Result<(Vec<Policy>, Vec<NotifyRule>), LoadError> {
    let (mut policies, rules, kubernetes) = parse_file_parts(text, source, ctx)?;
    if !kubernetes.is_empty() {
        policies
            .extend(cel::vap::policies(kubernetes, source).map_err(|m| LoadError::new(source, m))?);
    }
    Ok((policies, rules))
}

/// A file's policies, notification rules and Kubernetes objects.
type FileParts = (Vec<Policy>, Vec<NotifyRule>, Vec<serde_yaml::Value>);

/// [`parse_file_with`], the file's Kubernetes objects (VAPs, bindings, params) returned
/// unbound, so a directory's files can be bound as one set.
fn parse_file_parts(text: &str, source: &str, ctx: &LoadContext) -> Result<FileParts, LoadError> {
    // A file may hold several YAML documents (`---`): Gatehouse policy documents and
    // Kubernetes objects (ValidatingAdmissionPolicies, their bindings, their params).
    let mut roots = Vec::new();
    let mut kubernetes = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let root = serde_yaml::Value::deserialize(doc)
            .map_err(|e| LoadError::new(source, format!("not valid YAML: {e}")))?;
        if cel::vap::is_kubernetes_object(&root) {
            kubernetes.push(root);
        } else {
            roots.push(root);
        }
    }
    let mut notifications = Vec::new();
    let mut items = Vec::new();
    // Written on purpose: a list, or a mapping with `policies:` or `notifications:`. A file
    // with nothing of the kind would allow everything, so it is refused.
    let mut written = !kubernetes.is_empty();
    for root in roots {
        match root {
            serde_yaml::Value::Null => {}
            serde_yaml::Value::Sequence(list) => {
                written = true;
                items.extend(list);
            }
            serde_yaml::Value::Mapping(_) => {
                let doc: Document = serde_path_to_error::deserialize(root).map_err(|e| {
                    let message = messages::humanize(&e.inner().to_string());
                    LoadError::new(source, format!("{}: {message}", e.path()))
                })?;
                if doc.policies.is_none() && doc.notifications.is_empty() {
                    return Err(LoadError::new(source, EMPTY_FILE));
                }
                written = true;
                notifications.extend(doc.notifications);
                items.extend(doc.policies.unwrap_or_default());
            }
            _ => {
                return Err(LoadError::new(
                    source,
                    "expected a list of policies or a mapping with `policies:`",
                ));
            }
        }
    }
    if !written {
        return Err(LoadError::new(source, EMPTY_FILE));
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let label = item_label(&item, "policy", i);
        let fail = |msg: String| LoadError::new(source, format!("{label}: {msg}"));
        let raw: RawPolicy = deserialize_item(item, fail)?;
        validate_name(&raw.name).map_err(|m| fail(format!("name: {m}")))?;
        let matcher = Matcher::compile(raw.match_spec).map_err(&fail)?;
        let kind = Kind::parse(&raw.kind, raw.params, ctx).map_err(&fail)?;
        if let Some(p) = kind.downcast::<replicas::Replicas>() {
            p.check_reach(&matcher).map_err(&fail)?;
        }
        out.push(Policy {
            name: raw.name,
            action: raw.action,
            description: raw.description,
            matcher,
            kind,
            source: source.to_owned(),
            judge_cleanup: raw.judge_cleanup,
        });
    }
    let rules = crate::notify::rule::parse_rules(notifications, source)?;
    Ok((out, rules, kubernetes))
}

/// How an item of a policy file's list is named in errors: `policy "min-replicas"`, or
/// `policy #2` when it has no name.
pub(crate) fn item_label(item: &serde_yaml::Value, what: &str, index: usize) -> String {
    match item.get("name").and_then(|n| n.as_str()) {
        Some(name) => format!("{what} \"{name}\""),
        None => format!("{what} #{}", index + 1),
    }
}

/// Deserializes one item of a policy file's list; `fail` labels the error, which names the
/// path of the bad field (`match.operations[0]: unknown variant …`).
pub(crate) fn deserialize_item<T: serde::de::DeserializeOwned>(
    item: serde_yaml::Value,
    fail: impl Fn(String) -> LoadError,
) -> Result<T, LoadError> {
    serde_path_to_error::deserialize(item).map_err(|e| {
        let path = e.path().to_string();
        let message = messages::humanize(&e.inner().to_string());
        if path == "." {
            fail(message)
        } else {
            fail(format!("{path}: {message}"))
        }
    })
}

pub(crate) fn validate_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` must be 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

/// The policy files under `path`: the file itself, or every `*.yaml`/`*.yml` in the directory
/// (sorted by name; hidden files such as Kubernetes' `..data` links skipped).
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let shown = path.display().to_string();
    let meta =
        std::fs::metadata(path).map_err(|e| LoadError::new(&shown, format!("cannot read: {e}")))?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let entries =
        std::fs::read_dir(path).map_err(|e| LoadError::new(&shown, format!("cannot read: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| LoadError::new(&shown, format!("cannot read: {e}")))?;
        let p = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let yaml = name.ends_with(".yaml") || name.ends_with(".yml");
        if yaml && !name.starts_with('.') && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    if files.is_empty() {
        return Err(LoadError::new(
            &shown,
            "directory holds no *.yaml or *.yml policy file",
        ));
    }
    Ok(files)
}

/// Loads policies from a file or directory, or the embedded defaults when `path` is `None`.
pub fn load_policies(path: Option<&Path>) -> Result<Vec<Policy>, LoadError> {
    load_policies_with(path, &LoadContext::default())
}

/// [`load_policies`] with a [`LoadContext`] for kinds that need one.
pub fn load_policies_with(
    path: Option<&Path>,
    ctx: &LoadContext,
) -> Result<Vec<Policy>, LoadError> {
    load_all_with(path, ctx).map(|(policies, _)| policies)
}

/// Loads policies and notification rules from a file or directory, or the embedded defaults
/// when `path` is `None`.
pub fn load_all(path: Option<&Path>) -> Result<(Vec<Policy>, Vec<NotifyRule>), LoadError> {
    load_all_with(path, &LoadContext::default())
}

/// [`load_all`] with a [`LoadContext`] for kinds that need one.
pub fn load_all_with(
    path: Option<&Path>,
    ctx: &LoadContext,
) -> Result<(Vec<Policy>, Vec<NotifyRule>), LoadError> {
    let Some(path) = path else {
        return parse_file_with(DEFAULT_POLICIES, DEFAULT_POLICIES_NAME, ctx);
    };
    let mut all: Vec<Policy> = Vec::new();
    let mut rules: Vec<NotifyRule> = Vec::new();
    let mut kubernetes = Vec::new();
    for file in policy_files(path)? {
        let shown = file.display().to_string();
        let text = std::fs::read_to_string(&file)
            .map_err(|e| LoadError::new(&shown, format!("cannot read: {e}")))?;
        let (p, r, k) = parse_file_parts(&text, &shown, ctx)?;
        all.extend(p);
        rules.extend(r);
        if !k.is_empty() {
            kubernetes.push((shown, k));
        }
    }
    // A directory's VAPs, bindings and params are bound as one set, across its files.
    if !kubernetes.is_empty() {
        all.extend(cel::vap::policies_in_files(kubernetes)?);
    }
    Ok((all, rules))
}

/// Every policy in force plus the namespaces none of them applies to.
#[derive(Debug, Clone)]
pub struct PolicySet {
    policies: Vec<Policy>,
    excluded_namespaces: Vec<String>,
    /// Notification rules from the same files, so a reload swaps both together.
    notifications: Vec<NotifyRule>,
}

/// One policy's finding in a decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The policy's name.
    pub policy: String,
    /// The violation message.
    pub message: String,
}

/// Everything the policies said about one request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Violations of `deny` policies.
    pub denials: Vec<Finding>,
    /// Violations of `warn` policies.
    pub warnings: Vec<Finding>,
    /// Violations of `audit` policies.
    pub audits: Vec<Finding>,
    /// Policies that could not be judged in this mode (see [`Outcome::Skipped`]).
    pub skipped: Vec<Finding>,
    /// Names of the policies that matched and were evaluated.
    pub evaluated: Vec<String>,
    /// Set when the namespace is excluded from every policy.
    pub excluded: bool,
    /// Set for an UPDATE found to be cleanup (see [`cleanup`]; worked out only when a
    /// matching policy needed to know): only policies with `judgeCleanup: true` judged it.
    pub cleanup: Option<cleanup::Cleanup>,
    /// Audit annotations from CEL policies' `auditAnnotations`, `(<policy name>/<key>, value)`
    /// in the order the policies ran; the answer's `response.auditAnnotations`.
    pub audit_annotations: Vec<(String, String)>,
}

impl Decision {
    /// Allowed unless a `deny` policy was violated.
    pub fn allowed(&self) -> bool {
        self.denials.is_empty()
    }

    /// `denied`, `warned`, `audited` or `allowed`: the strongest outcome.
    pub fn label(&self) -> &'static str {
        if !self.denials.is_empty() {
            "denied"
        } else if !self.warnings.is_empty() {
            "warned"
        } else if !self.audits.is_empty() {
            "audited"
        } else {
            "allowed"
        }
    }

    /// Every deny message, joined, for the response's status message.
    pub fn deny_message(&self) -> String {
        self.denials
            .iter()
            .map(|f| f.message.as_str())
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Names of the policies whose check failed.
    pub fn fired(&self) -> Vec<&str> {
        self.denials
            .iter()
            .chain(&self.warnings)
            .chain(&self.audits)
            .map(|f| f.policy.as_str())
            .collect()
    }
}

impl PolicySet {
    /// Builds the set; policy names must be unique across all files.
    pub fn new(policies: Vec<Policy>, excluded_namespaces: Vec<String>) -> Result<Self, LoadError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for p in &policies {
            if let Some(first) = seen.insert(&p.name, &p.source) {
                return Err(LoadError::new(
                    &p.source,
                    format!("policy \"{}\": name: already defined in {first}", p.name),
                ));
            }
        }
        Ok(Self {
            policies,
            excluded_namespaces,
            notifications: Vec::new(),
        })
    }

    /// Adds notification rules; their names must be unique across all files.
    pub fn with_notifications(mut self, rules: Vec<NotifyRule>) -> Result<Self, LoadError> {
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for r in &rules {
            if let Some(first) = seen.insert(&r.name, &r.source) {
                return Err(LoadError::new(
                    &r.source,
                    format!(
                        "notification \"{}\": name: already defined in {first}",
                        r.name
                    ),
                ));
            }
        }
        self.notifications = rules;
        Ok(self)
    }

    /// Loads from a path (or the embedded defaults) with the given excluded namespaces.
    pub fn load(path: Option<&Path>, excluded_namespaces: Vec<String>) -> Result<Self, LoadError> {
        Self::load_with(path, excluded_namespaces, &LoadContext::default())
    }

    /// The notification rules, in file order.
    pub fn notifications(&self) -> &[NotifyRule] {
        &self.notifications
    }

    /// [`PolicySet::load`] with a [`LoadContext`] for kinds that need one.
    pub fn load_with(
        path: Option<&Path>,
        excluded_namespaces: Vec<String>,
        ctx: &LoadContext,
    ) -> Result<Self, LoadError> {
        let (policies, rules) = load_all_with(path, ctx)?;
        Self::new(policies, excluded_namespaces)?.with_notifications(rules)
    }

    /// The policies, in file order.
    pub fn policies(&self) -> &[Policy] {
        &self.policies
    }

    /// Evaluates every matching policy and combines their findings.
    pub async fn evaluate(&self, req: &Review<'_>) -> Decision {
        self.evaluate_with(req, &EvalOptions::default()).await
    }

    /// [`PolicySet::evaluate`] with options (offline mode).
    pub async fn evaluate_with(&self, req: &Review<'_>, opts: &EvalOptions) -> Decision {
        let mut decision = Decision::default();
        if let Some(ns) = req.namespace.as_deref()
            && self
                .excluded_namespaces
                .iter()
                .any(|p| namespace_matches(p, ns))
        {
            decision.excluded = true;
            return decision;
        }
        // Kinds with a side effect on admission (a one-time token is consumed) run last, and
        // only check when another policy has already denied the request.
        let plain = self.policies.iter().filter(|p| !p.kind.consumes());
        let consuming = self.policies.iter().filter(|p| p.kind.consumes());
        // Whether the request is a cleanup UPDATE, worked out once a policy needs to know.
        let mut is_cleanup: Option<Option<cleanup::Cleanup>> = None;
        for policy in plain.chain(consuming) {
            if !policy.matcher.matches(req) {
                continue;
            }
            if !policy.judge_cleanup
                && is_cleanup
                    .get_or_insert_with(|| cleanup::classify(req))
                    .is_some()
            {
                continue;
            }
            decision.evaluated.push(policy.name.clone());
            let finding = |message| Finding {
                policy: policy.name.clone(),
                message,
            };
            let ctx = EvalCtx {
                policy: &policy.name,
                review: req,
                opts,
                may_consume: decision.denials.is_empty(),
                audit_annotations: Default::default(),
            };
            let outcome = policy.kind.check.evaluate(&ctx).outcome().await;
            if let Ok(mut annotations) = ctx.audit_annotations.lock() {
                decision.audit_annotations.append(&mut annotations);
            }
            match outcome {
                Outcome::Pass => {}
                Outcome::Skipped(message) => decision.skipped.push(finding(message)),
                Outcome::Warning(message) => decision.warnings.push(finding(message)),
                Outcome::Violation(message) => match policy.action {
                    Action::Deny => decision.denials.push(finding(message)),
                    Action::Warn => decision.warnings.push(finding(message)),
                    Action::Audit => decision.audits.push(finding(message)),
                },
            }
        }
        decision.cleanup = is_cleanup.flatten();
        decision
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {})",
            self.name,
            self.kind.name(),
            self.action.as_str()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::testing::request;
    use rstest::rstest;
    use serde_json::json;

    #[test]
    fn embedded_defaults_load() {
        let set = PolicySet::load(None, vec!["kube-system".into()]).unwrap();
        let names: Vec<_> = set.policies().iter().map(|p| p.name.as_str()).collect();
        assert!(names.contains(&"min-replicas"), "{names:?}");
    }

    #[rstest]
    #[case::unknown_field(
        "- name: p\n  kind: replicas\n  acton: deny\n  match: {resources: [deployments]}\n  params: {min: 3}\n",
        "policy \"p\": acton: unknown field `acton`"
    )]
    #[case::unknown_kind(
        "- name: p\n  kind: replica\n  match: {resources: [deployments]}\n",
        "policy \"p\": kind: unknown kind `replica` (known kinds: replicas"
    )]
    #[case::bad_param_name(
        "- name: p\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {mn: 3}\n",
        "policy \"p\": params.mn: unknown field `mn`, expected `min` or `max`"
    )]
    #[case::bad_param_type(
        "- name: p\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {min: three}\n",
        "policy \"p\": params.min: expected a whole number from 0 to 4294967295, found the text \"three\""
    )]
    #[case::bad_action(
        "- name: p\n  kind: replicas\n  action: block\n  match: {resources: [deployments]}\n  params: {min: 3}\n",
        "policy \"p\": action: unknown variant `block`"
    )]
    #[case::bad_operation(
        "- name: p\n  kind: replicas\n  match: {resources: [deployments], operations: [PATCH]}\n  params: {min: 3}\n",
        "policy \"p\": match.operations[0]: unknown variant `PATCH`"
    )]
    #[case::missing_match(
        "- name: p\n  kind: replicas\n  params: {min: 3}\n",
        "policy \"p\": missing field `match`"
    )]
    #[case::no_name(
        "- kind: replicas\n  match: {resources: [deployments]}\n",
        "policy #1: missing field `name`"
    )]
    #[case::bad_name(
        "- name: Min_Replicas\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {min: 1}\n",
        "policy \"Min_Replicas\": name: `Min_Replicas` must be"
    )]
    #[case::unknown_top_level("polices: []\n", "polices: unknown field `polices`")]
    #[case::not_yaml("- name: [\n", "not valid YAML")]
    #[case::scalar("42\n", "expected a list of policies")]
    #[case::empty(
        "",
        "the file holds no policies; an empty file would allow everything, so write `policies: []` if an empty set is meant"
    )]
    #[case::comments_only("# all policies moved elsewhere\n", "the file holds no policies")]
    #[case::replicas_without_replicas(
        "- name: p\n  kind: replicas\n  match: {resources: ['apps/daemonsets', pods]}\n  params: {min: 1}\n",
        "policy \"p\": match.resources: a replicas policy judges only deployments"
    )]
    fn load_errors_name_file_policy_and_field(#[case] text: &str, #[case] expected: &str) {
        let err = parse_policies(text, "team.yaml").unwrap_err().to_string();
        assert!(err.starts_with("team.yaml: "), "{err}");
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }

    #[rstest]
    #[case("policies: []\n")]
    #[case("[]\n")]
    #[case("policies: []\nnotifications: []\n")]
    fn an_explicitly_empty_set_loads(#[case] text: &str) {
        assert!(parse_policies(text, "none.yaml").unwrap().is_empty());
    }

    #[test]
    fn duplicate_names_across_files_are_rejected() {
        let text = "- name: p\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {min: 1}\n";
        let mut all = parse_policies(text, "a.yaml").unwrap();
        all.extend(parse_policies(text, "b.yaml").unwrap());
        let err = PolicySet::new(all, vec![]).unwrap_err().to_string();
        assert_eq!(err, "b.yaml: policy \"p\": name: already defined in a.yaml");
    }

    #[test]
    fn directory_loads_yaml_files_in_order_and_skips_others() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.yaml"),
            "- name: b\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {min: 1}\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.yml"),
            "policies:\n- name: a\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {max: 9}\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not policies").unwrap();
        let names: Vec<_> = load_policies(Some(dir.path()))
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["a", "b"]);

        let empty = tempfile::tempdir().unwrap();
        let err = load_policies(Some(empty.path())).unwrap_err().to_string();
        assert!(err.contains("no *.yaml"), "{err}");
    }

    fn deployment_request(ns: &str, replicas: i64) -> Review<'static> {
        request(json!({
            "uid": "u", "operation": "CREATE", "name": "web", "namespace": ns,
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "alice"},
            "object": {"metadata": {"name": "web", "namespace": ns}, "spec": {"replicas": replicas}},
        }))
    }

    const THREE_ACTIONS: &str = "
- name: deny-min
  kind: replicas
  match: {resources: [deployments]}
  params: {min: 3}
- name: warn-min
  kind: replicas
  action: warn
  match: {resources: [deployments]}
  params: {min: 5}
- name: audit-min
  kind: replicas
  action: audit
  match: {resources: [deployments]}
  params: {min: 7}
";

    #[rstest]
    #[case(2, "denied", 1, 1, 1)]
    #[case(4, "warned", 0, 1, 1)]
    #[case(6, "audited", 0, 0, 1)]
    #[case(8, "allowed", 0, 0, 0)]
    #[tokio::test]
    async fn every_matching_policy_is_evaluated_and_deny_wins(
        #[case] replicas: i64,
        #[case] label: &str,
        #[case] denials: usize,
        #[case] warnings: usize,
        #[case] audits: usize,
    ) {
        let set = PolicySet::new(parse_policies(THREE_ACTIONS, "t.yaml").unwrap(), vec![]).unwrap();
        let d = set.evaluate(&deployment_request("app", replicas)).await;
        assert_eq!(d.label(), label);
        assert_eq!(d.denials.len(), denials);
        assert_eq!(d.warnings.len(), warnings);
        assert_eq!(d.audits.len(), audits);
        assert_eq!(d.evaluated, vec!["deny-min", "warn-min", "audit-min"]);
        assert_eq!(d.allowed(), denials == 0);
    }

    #[tokio::test]
    async fn excluded_namespaces_skip_every_policy() {
        let set = PolicySet::new(
            parse_policies(THREE_ACTIONS, "t.yaml").unwrap(),
            vec!["kube-system".into(), "infra-*".into()],
        )
        .unwrap();
        for ns in ["kube-system", "infra-monitoring"] {
            let d = set.evaluate(&deployment_request(ns, 1)).await;
            assert!(d.excluded && d.allowed() && d.evaluated.is_empty(), "{ns}");
        }
        assert!(
            !set.evaluate(&deployment_request("kube-public", 1))
                .await
                .allowed()
        );
    }
}
