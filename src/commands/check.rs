//! `gatehouse check -f FILE_OR_DIR [-f …]`: evaluate Kubernetes manifests against the policies
//! offline, as if each object were created (`CREATE`) by a configurable user, for CI pipelines
//! and dev machines.
//!
//! Inputs are read as `kubectl apply -f` reads them: multi-document YAML or JSON files,
//! directories recursively (`*.yaml`, `*.yml`, `*.json`; hidden entries skipped), `-` for stdin,
//! `kind: List` (and any `…List` with `items`) expanded. A document that is itself an
//! `AdmissionReview` is evaluated as the API server would send it (its own operation, user and
//! old object), so recorded reviews can sit next to manifests.
//!
//! Policies that need the outside world (`forward`) are not called and are reported as
//! skipped, never as passed.
//!
//! Exit code: 0 when every object is allowed, 1 when any is denied, 2 when an input cannot be
//! read or is not a Kubernetes object (the readable ones are still checked and printed).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::admission::{self, describe_object};
use crate::config::Config;
use crate::policy::{Decision, EvalOptions, Finding, PolicySet};

/// Exit code when every object is allowed.
pub const EXIT_ALLOWED: u8 = 0;
/// Exit code when any object is denied.
pub const EXIT_DENIED: u8 = 1;
/// Exit code when an input (or the configuration) cannot be used.
pub const EXIT_UNUSABLE: u8 = 2;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// One line per object: `file:document Kind ns/name: verdict`, then one indented line per finding.
    Text,
    /// One JSON document with every object's findings and the input errors.
    Json,
}

/// The command line of `gatehouse check`.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    /// A manifest file, a directory (read recursively) or `-` for stdin; repeatable.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "FILE_OR_DIR",
        required = true
    )]
    pub files: Vec<PathBuf>,
    /// Policy file or directory (default: the `policies` setting, else the embedded defaults).
    #[arg(long, value_name = "PATH")]
    pub policies: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Output,
    /// The user the objects are created as.
    #[arg(long, value_name = "NAME", default_value = "gatehouse-check")]
    pub user: String,
    /// A group of that user; repeatable.
    #[arg(long = "group", value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Namespace for namespaced objects that name none (as kubectl's current namespace).
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = "default")]
    pub namespace: String,
}

/// Kinds without a namespace (the built-in ones; custom resources count as namespaced).
const CLUSTER_SCOPED: &[&str] = &[
    "APIService",
    "CSIDriver",
    "CSINode",
    "CertificateSigningRequest",
    "ClusterRole",
    "ClusterRoleBinding",
    "ComponentStatus",
    "CustomResourceDefinition",
    "DeviceClass",
    "FlowSchema",
    "IPAddress",
    "IngressClass",
    "MutatingAdmissionPolicy",
    "MutatingAdmissionPolicyBinding",
    "MutatingWebhookConfiguration",
    "Namespace",
    "Node",
    "PersistentVolume",
    "PriorityClass",
    "PriorityLevelConfiguration",
    "RuntimeClass",
    "ServiceCIDR",
    "StorageClass",
    "StorageVersionMigration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "ValidatingWebhookConfiguration",
    "VolumeAttachment",
];

/// The plural resource name of a kind, as the API server's fallback guesses it
/// (`Deployment` → `deployments`, `Ingress` → `ingresses`, `NetworkPolicy` →
/// `networkpolicies`), with the irregular built-ins spelled out.
pub(crate) fn resource_of(kind: &str) -> String {
    let lower = kind.to_ascii_lowercase();
    match lower.as_str() {
        "endpoints" => return lower,
        "podsecuritypolicy" => return "podsecuritypolicies".into(),
        _ => {}
    }
    if lower.ends_with('s') || lower.ends_with('x') || lower.ends_with("ch") {
        format!("{lower}es")
    } else if let Some(stem) = lower.strip_suffix('y')
        && !stem.ends_with(['a', 'e', 'i', 'o', 'u'])
    {
        format!("{stem}ies")
    } else {
        format!("{lower}s")
    }
}

/// An input that could not be used; the message names the file and document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InputError(pub(crate) String);

/// One object to evaluate and where it came from: the review body the API server would send
/// (checked to decode when the item was made; decoded again, cheaply, when used).
pub(crate) struct Item {
    /// `file:document` (documents counted from 1), `file:2 items[0]` inside a List.
    pub(crate) source: String,
    body: Vec<u8>,
}

impl Item {
    /// The review request, decoded from the body.
    pub(crate) fn request(&self) -> Result<admission::Review<'_>, String> {
        admission::decode(&self.body).map_err(|e| format!("{}: {e}", self.source))
    }
}

/// The manifest files under `path` (itself, or recursively for a directory), sorted.
fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, InputError> {
    let shown = path.display();
    let meta =
        std::fs::metadata(path).map_err(|e| InputError(format!("{shown}: cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = std::fs::read_dir(&dir)
            .map_err(|e| InputError(format!("{}: cannot read: {e}", dir.display())))?;
        for entry in entries {
            let entry =
                entry.map_err(|e| InputError(format!("{}: cannot read: {e}", dir.display())))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                dirs.push(p);
            } else if [".yaml", ".yml", ".json"].iter().any(|x| name.ends_with(x)) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(InputError(format!(
            "{shown}: no manifests (*.yaml, *.yml, *.json) in this directory"
        )));
    }
    Ok(out)
}

/// Reads every input into (name, text) pairs; unreadable ones become errors.
fn read_inputs(files: &[PathBuf], errors: &mut Vec<InputError>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in files {
        if f == Path::new("-") {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => out.push(("stdin".to_owned(), text)),
                Err(e) => errors.push(InputError(format!("stdin: cannot read: {e}"))),
            }
            continue;
        }
        let paths = match manifest_files(f) {
            Ok(p) => p,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        for p in paths {
            match std::fs::read_to_string(&p) {
                Ok(text) => out.push((p.display().to_string(), text)),
                Err(e) => errors.push(InputError(format!("{}: cannot read: {e}", p.display()))),
            }
        }
    }
    out
}

/// The body of the review the API server would send for creating `obj`.
fn create_request(obj: Value, uid: &str, args: &CheckArgs) -> Result<Vec<u8>, String> {
    let mut obj = obj;
    let text = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_owned);
    let api_version = text(&obj, "apiVersion").ok_or("not a Kubernetes object: no apiVersion")?;
    let kind = text(&obj, "kind").ok_or("not a Kubernetes object: no kind")?;
    let meta = obj.get("metadata").cloned().unwrap_or(Value::Null);
    let name = text(&meta, "name");
    if name.is_none() && text(&meta, "generateName").is_none() {
        return Err(format!("{kind}: no metadata.name"));
    }
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g.to_owned(), v.to_owned()),
        None => (String::new(), api_version.clone()),
    };
    let namespace = if CLUSTER_SCOPED.contains(&kind.as_str()) {
        None
    } else {
        let ns = text(&meta, "namespace").unwrap_or_else(|| args.namespace.clone());
        // The API server fills in the namespace before admission.
        if let Some(m) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            m.insert("namespace".into(), Value::String(ns.clone()));
        }
        Some(ns)
    };
    let gvk = json!({"group": group, "version": version, "kind": kind});
    let gvr = json!({"group": group, "version": version, "resource": resource_of(&kind)});
    let mut request = json!({
        "uid": uid,
        "kind": gvk, "requestKind": gvk,
        "resource": gvr, "requestResource": gvr,
        "name": name.unwrap_or_default(),
        "operation": "CREATE",
        "userInfo": {"username": args.user, "groups": args.groups},
        "object": obj,
        "dryRun": false,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
    });
    if let Some(ns) = namespace {
        request["namespace"] = Value::String(ns);
    }
    let review =
        json!({"apiVersion": admission::V1, "kind": "AdmissionReview", "request": request});
    let body = serde_json::to_vec(&review).map_err(|e| e.to_string())?;
    admission::decode(&body).map_err(|e| e.to_string())?;
    Ok(body)
}

/// Turns one parsed document into items (several for a `List`).
fn collect(
    doc: Value,
    source: &str,
    args: &CheckArgs,
    items: &mut Vec<Item>,
    errors: &mut Vec<InputError>,
) {
    let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
    if kind == "AdmissionReview" {
        let result = serde_json::to_vec(&doc)
            .map_err(|e| e.to_string())
            .and_then(|b| match admission::decode(&b) {
                Ok(_) => Ok(b),
                Err(e) => Err(e.to_string()),
            });
        match result {
            Ok(body) => items.push(Item {
                source: source.to_owned(),
                body,
            }),
            Err(e) => errors.push(InputError(format!("{source}: {e}"))),
        }
        return;
    }
    if kind.ends_with("List")
        && let Some(list) = doc.get("items").and_then(Value::as_array)
    {
        for (i, item) in list.iter().enumerate() {
            collect(
                item.clone(),
                &format!("{source} items[{i}]"),
                args,
                items,
                errors,
            );
        }
        return;
    }
    let uid = format!("gatehouse-check-{}", items.len() + 1);
    match create_request(doc, &uid, args) {
        Ok(body) => items.push(Item {
            source: source.to_owned(),
            body,
        }),
        Err(e) => errors.push(InputError(format!("{source}: {e}"))),
    }
}

/// Parses every document of every input.
pub(crate) fn parse_inputs(
    inputs: Vec<(String, String)>,
    args: &CheckArgs,
    errors: &mut Vec<InputError>,
) -> Vec<Item> {
    let mut items = Vec::new();
    for (name, text) in inputs {
        for (i, de) in serde_yaml::Deserializer::from_str(&text).enumerate() {
            let source = format!("{name}:{}", i + 1);
            let doc = match serde_yaml::Value::deserialize(de) {
                Ok(serde_yaml::Value::Null) => continue,
                Ok(v @ serde_yaml::Value::Mapping(_)) => v,
                Ok(_) => {
                    errors.push(InputError(format!(
                        "{source}: not a Kubernetes object (not a mapping)"
                    )));
                    continue;
                }
                Err(e) => {
                    // The YAML stream cannot be resumed after a syntax error.
                    errors.push(InputError(format!("{source}: not valid YAML: {e}")));
                    break;
                }
            };
            match serde_json::to_value(&doc) {
                Ok(v) => collect(v, &source, args, &mut items, errors),
                Err(e) => errors.push(InputError(format!(
                    "{source}: cannot be read as a Kubernetes object: {e}"
                ))),
            }
        }
    }
    items
}

/// The findings of a decision, one per line: `deny min-replicas: asks for 1 replica; …`,
/// then warnings, audits and skipped policies. Messages that start with the object's
/// description (`object`, as the policies write them for the API server) lose that prefix,
/// since the object's line already names it.
pub(crate) fn finding_lines(decision: &Decision, object: &str) -> Vec<String> {
    let short = |m: &'_ str| -> String {
        match m.strip_prefix(object) {
            Some(rest) if rest.starts_with(": ") => rest[2..].to_owned(),
            Some(rest) if rest.starts_with(' ') => rest[1..].to_owned(),
            _ => m.to_owned(),
        }
    };
    let mut out = Vec::new();
    for (what, findings) in [
        ("deny", &decision.denials),
        ("warn", &decision.warnings),
        ("audit", &decision.audits),
        ("skip", &decision.skipped),
    ] {
        for f in findings {
            out.push(format!("{what} {}: {}", f.policy, short(&f.message)));
        }
    }
    out
}

/// The verdict on an object's line: `denied`, `warned`, `audited`, `skipped`, `allowed`,
/// `allowed (no policy matched)` or `allowed (namespace excluded from every policy)`.
pub(crate) fn verdict(decision: &Decision) -> &'static str {
    match decision_label(decision) {
        "allowed" if decision.excluded => "allowed (namespace excluded from every policy)",
        "allowed" if decision.cleanup.is_some() && decision.evaluated.is_empty() => {
            "allowed (cleanup update: not judged)"
        }
        "allowed" if decision.evaluated.is_empty() => "allowed (no policy matched)",
        other => other,
    }
}

pub(crate) fn decision_label(d: &Decision) -> &'static str {
    match d.label() {
        "allowed" if !d.skipped.is_empty() => "skipped",
        other => other,
    }
}

fn findings_json(fs: &[Finding]) -> Value {
    Value::Array(
        fs.iter()
            .map(|f| json!({"policy": f.policy, "message": f.message}))
            .collect(),
    )
}

/// Reads, evaluates and prints; returns the exit code.
pub(crate) async fn run(policies: &PolicySet, args: &CheckArgs) -> u8 {
    let mut errors = Vec::new();
    let inputs = read_inputs(&args.files, &mut errors);
    let items = parse_inputs(inputs, args, &mut errors);
    let offline = EvalOptions { offline: true };
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        let decision = match item.request() {
            Ok(request) => policies.evaluate_with(&request, &offline).await,
            Err(e) => {
                errors.push(InputError(e));
                continue;
            }
        };
        results.push((item, decision));
    }
    let denied = results.iter().filter(|(_, d)| !d.allowed()).count();
    let mut stdout = std::io::stdout().lock();
    match args.output {
        Output::Text => {
            'objects: for (item, d) in &results {
                let Ok(request) = item.request() else {
                    continue;
                };
                let object = describe_object(&request);
                // A closed pipe (`| head`) ends the listing, not the process.
                if writeln!(stdout, "{}: {object}: {}", item.source, verdict(d)).is_err() {
                    break;
                }
                for line in finding_lines(d, &object) {
                    if writeln!(stdout, "  {line}").is_err() {
                        break 'objects;
                    }
                }
            }
            for e in &errors {
                eprintln!("gatehouse check: {}", e.0);
            }
            let count = |label: &str| {
                results
                    .iter()
                    .filter(|(_, d)| decision_label(d) == label)
                    .count()
            };
            let n = |n: usize, what: &str| admission::plural(n as i64, what);
            eprintln!(
                "{}: {} allowed, {denied} denied, {} warned, {} audited, {} with skipped policies; {}",
                n(results.len(), "object"),
                count("allowed"),
                count("warned"),
                count("audited"),
                results
                    .iter()
                    .filter(|(_, d)| !d.skipped.is_empty())
                    .count(),
                n(errors.len(), "unreadable input"),
            );
        }
        Output::Json => {
            let objects: Vec<Value> = results
                .iter()
                .filter_map(|(item, d)| {
                    let r = item.request().ok()?;
                    Some(json!({
                        "source": item.source,
                        "kind": r.kind.kind,
                        "namespace": r.namespace,
                        "name": admission::object_name(&r),
                        "operation": r.operation,
                        "user": r.user_info.username,
                        "decision": decision_label(d),
                        "allowed": d.allowed(),
                        "excluded": d.excluded,
                        "evaluated": d.evaluated,
                        "matched": !d.evaluated.is_empty(),
                        "cleanup": d.cleanup.map(|c| c.as_str()),
                        "denials": findings_json(&d.denials),
                        "warnings": findings_json(&d.warnings),
                        "audits": findings_json(&d.audits),
                        "skipped": findings_json(&d.skipped),
                    }))
                })
                .collect();
            let errors: Vec<&str> = errors.iter().map(|e| e.0.as_str()).collect();
            let doc = json!({"objects": objects, "errors": errors});
            match serde_json::to_string_pretty(&doc) {
                Ok(text) => {
                    let _ = writeln!(stdout, "{text}");
                }
                Err(e) => {
                    eprintln!("gatehouse check: cannot encode the result: {e}");
                    return EXIT_UNUSABLE;
                }
            }
        }
    }
    if !errors.is_empty() {
        EXIT_UNUSABLE
    } else if denied > 0 {
        EXIT_DENIED
    } else {
        EXIT_ALLOWED
    }
}

/// Loads the policies (`--policies`, else the configuration's) and runs the check.
pub async fn main(config: &Config, args: &CheckArgs) -> u8 {
    let path = args.policies.as_deref().or(config.policies.as_deref());
    let policies = match PolicySet::load(path, config.excluded_namespaces.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("gatehouse check: {e}");
            return EXIT_UNUSABLE;
        }
    };
    run(&policies, args).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn args() -> CheckArgs {
        CheckArgs {
            files: vec![],
            policies: None,
            output: Output::Text,
            user: "ci-bot".into(),
            groups: vec!["ci".into()],
            namespace: "staging".into(),
        }
    }

    #[rstest]
    #[case("Deployment", "deployments")]
    #[case("Pod", "pods")]
    #[case("Ingress", "ingresses")]
    #[case("NetworkPolicy", "networkpolicies")]
    #[case("Gateway", "gateways")]
    #[case("Endpoints", "endpoints")]
    #[case("ConfigMap", "configmaps")]
    #[case("CronJob", "cronjobs")]
    #[case("StorageClass", "storageclasses")]
    fn plural_resource_names(#[case] kind: &str, #[case] resource: &str) {
        assert_eq!(resource_of(kind), resource);
    }

    #[test]
    fn documents_become_create_requests_as_the_api_server_sends_them() {
        let text = "
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 1}
---
# only a comment
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: ConfigMap, metadata: {name: c, namespace: other}}
- {apiVersion: v1, kind: Pod, metadata: {generateName: job-}}
";
        let mut errors = Vec::new();
        let items = parse_inputs(vec![("m.yaml".into(), text.into())], &args(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        let seen: Vec<_> = items
            .iter()
            .map(|i| (i.source.clone(), describe_object(&i.request().unwrap())))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("m.yaml:1".to_owned(), "Deployment staging/web".to_owned()),
                ("m.yaml:3".to_owned(), "Namespace team-a".to_owned()),
                (
                    "m.yaml:4 items[0]".to_owned(),
                    "ConfigMap other/c".to_owned()
                ),
                (
                    "m.yaml:4 items[1]".to_owned(),
                    "Pod staging/job-*".to_owned()
                ),
            ]
        );
        let r = items[0].request().unwrap();
        assert_eq!(r.resource.group, "apps");
        assert_eq!(r.resource.resource, "deployments");
        assert_eq!(r.user_info.username.as_deref(), Some("ci-bot"));
        assert_eq!(r.user_info.groups().collect::<Vec<_>>(), vec!["ci"]);
        assert!(matches!(
            r.operation,
            kube::core::admission::Operation::Create
        ));
        let meta = r.object.as_ref().unwrap().metadata.unwrap();
        assert_eq!(
            meta.get("namespace").and_then(|n| n.as_str()).as_deref(),
            Some("staging")
        );
        assert_eq!(items[1].request().unwrap().namespace, None);
    }

    #[rstest]
    #[case(
        "- just\n- a list\n",
        "m.yaml:1: not a Kubernetes object (not a mapping)"
    )]
    #[case(
        "kind: Pod\nmetadata: {name: p}\n",
        "m.yaml:1: not a Kubernetes object: no apiVersion"
    )]
    #[case(
        "apiVersion: v1\nmetadata: {name: p}\n",
        "m.yaml:1: not a Kubernetes object: no kind"
    )]
    #[case("apiVersion: v1\nkind: Pod\n", "m.yaml:1: Pod: no metadata.name")]
    #[case(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: [\n",
        "m.yaml:1: not valid YAML"
    )]
    #[case(
        "apiVersion: admission.k8s.io/v1\nkind: AdmissionReview\n",
        "m.yaml:1: AdmissionReview has no request"
    )]
    fn unusable_documents_are_named(#[case] text: &str, #[case] expected: &str) {
        let mut errors = Vec::new();
        let items = parse_inputs(vec![("m.yaml".into(), text.into())], &args(), &mut errors);
        assert!(items.is_empty());
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].0.starts_with(expected), "{:?}", errors[0]);
    }

    #[test]
    fn one_finding_per_line() {
        let f = |p: &str, m: &str| Finding {
            policy: p.into(),
            message: m.into(),
        };
        let mut d = Decision::default();
        let lines = |d: &Decision| finding_lines(d, "Pod ns/p");
        assert!(lines(&d).is_empty());
        assert_eq!(verdict(&d), "allowed (no policy matched)");
        d.evaluated.push("fn".into());
        assert_eq!(verdict(&d), "allowed");
        d.skipped
            .push(f("fn", "policy fn forwards to x and is not called offline"));
        assert_eq!(
            lines(&d),
            vec!["skip fn: policy fn forwards to x and is not called offline"]
        );
        assert_eq!(verdict(&d), "skipped");
        d.warnings.push(f("w", "careful"));
        d.denials.push(f(
            "a",
            "Pod ns/p: container a has no memory limit; policy a requires …",
        ));
        d.denials
            .push(f("b", "Pod ns/p asks for 2 replicas; policy b requires …"));
        d.denials.push(f("c", "Pod ns/pod-2 is something else"));
        assert_eq!(
            lines(&d),
            vec![
                "deny a: container a has no memory limit; policy a requires …",
                "deny b: asks for 2 replicas; policy b requires …",
                "deny c: Pod ns/pod-2 is something else",
                "warn w: careful",
                "skip fn: policy fn forwards to x and is not called offline",
            ]
        );
        assert_eq!(verdict(&d), "denied");
    }
}
