//! `gatehouse test PATH…`: policy test suites, as `kyverno test` and `gator verify` run them.
//!
//! A suite is a YAML file with `kind: PolicyTest`:
//!
//! ```yaml
//! kind: PolicyTest
//! name: default policies              # optional; the file name otherwise
//! policies: [../default.yaml]         # policy files or directories, relative to the suite
//! namespace: default                  # for objects that name none (default: default)
//! user: alice                         # who creates the objects (default: gatehouse-test)
//! cases:
//!   - name: two replicas are denied
//!     file: ../../examples/deployment-2-replicas.yaml   # manifests or AdmissionReviews
//!     expect: denied                  # allowed | denied | warned | audited | skipped
//!     message: "requires at least 3"  # optional regular expression over the findings
//!     fired: [min-replicas]           # optional: policies that must report a violation
//!   - name: inline object
//!     object: {apiVersion: v1, kind: Pod, metadata: {name: p}, spec: {...}}
//!     expect: allowed
//! ```
//!
//! `file` and `object` are read as `gatehouse check` reads manifests (several documents,
//! `List`s, `AdmissionReview`s evaluated as sent); every object they hold must meet the
//! expectation. Policies are evaluated offline (`forward` policies are skipped).
//!
//! A directory is searched recursively for suites (other YAML files are ignored). One line per
//! case, then a summary. Exit code: 0 when every case passes, 1 when any fails, 2 when a suite
//! cannot be used (unreadable, malformed, its policies do not load) or none is found.

use std::path::{Path, PathBuf};

use regex::Regex;
use serde::Deserialize;

use super::check::{CheckArgs, Output, decision_label, finding_lines, parse_inputs};
use crate::admission::describe_object;
use crate::policy::messages::{humanize, regex_error};
use crate::policy::{EvalOptions, PolicySet, load_all};

/// Exit code when every case passes.
pub const EXIT_PASSED: u8 = 0;
/// Exit code when a case fails.
pub const EXIT_FAILED: u8 = 1;
/// Exit code when a suite cannot be used.
pub const EXIT_UNUSABLE: u8 = 2;

/// The command line of `gatehouse test`.
#[derive(Debug, Clone, clap::Args)]
pub struct TestArgs {
    /// Suite files, or directories searched recursively for them.
    #[arg(value_name = "SUITE_OR_DIR", required = true)]
    pub paths: Vec<PathBuf>,
}

/// The `kind` that marks a YAML file as a suite.
const SUITE_KIND: &str = "PolicyTest";

/// A suite file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Suite {
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    name: Option<String>,
    policies: Vec<PathBuf>,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "default_user")]
    user: String,
    #[serde(default)]
    groups: Vec<String>,
    cases: Vec<Case>,
}

fn default_namespace() -> String {
    "default".into()
}

fn default_user() -> String {
    "gatehouse-test".into()
}

/// One case of a suite.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Case {
    name: String,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    object: Option<serde_yaml::Value>,
    expect: Expect,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    fired: Vec<String>,
}

/// The expected verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Expect {
    Allowed,
    Denied,
    Warned,
    Audited,
    Skipped,
}

impl Expect {
    fn as_str(self) -> &'static str {
        match self {
            Expect::Allowed => "allowed",
            Expect::Denied => "denied",
            Expect::Warned => "warned",
            Expect::Audited => "audited",
            Expect::Skipped => "skipped",
        }
    }
}

/// What running the suites found.
#[derive(Debug, Default)]
struct Tally {
    passed: usize,
    failed: usize,
    unusable: usize,
}

/// The suite files under `path`: the file itself, or every YAML file below the directory
/// whose top level says `kind: PolicyTest`.
fn find_suites(path: &Path) -> Result<Vec<PathBuf>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("{}: cannot read: {e}", dir.display()))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let p = entry.path();
            if name.starts_with('.') {
                continue;
            }
            if p.is_dir() {
                dirs.push(p);
            } else if (name.ends_with(".yaml") || name.ends_with(".yml")) && is_suite(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(format!(
            "{shown}: no test suites (YAML files with kind: {SUITE_KIND}) in this directory"
        ));
    }
    Ok(out)
}

fn is_suite(path: &Path) -> bool {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_yaml::from_str::<serde_yaml::Value>(&t).ok())
        .is_some_and(|v| v.get("kind").and_then(|k| k.as_str()) == Some(SUITE_KIND))
}

/// Reads and checks a suite file; the error names the file and field.
fn read_suite(path: &Path) -> Result<Suite, String> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let value: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| format!("{shown}: not valid YAML: {e}"))?;
    if value.get("kind").and_then(|k| k.as_str()) != Some(SUITE_KIND) {
        return Err(format!(
            "{shown}: not a test suite (a suite is a mapping with kind: {SUITE_KIND})"
        ));
    }
    let suite: Suite = serde_path_to_error::deserialize(value).map_err(|e| {
        let message = humanize(&e.inner().to_string());
        match e.path().to_string().as_str() {
            "." => format!("{shown}: {message}"),
            p => format!("{shown}: {p}: {message}"),
        }
    })?;
    if suite.policies.is_empty() {
        return Err(format!("{shown}: policies: name at least one policy file"));
    }
    if suite.cases.is_empty() {
        return Err(format!("{shown}: cases: list at least one case"));
    }
    for (i, c) in suite.cases.iter().enumerate() {
        let at = format!("{shown}: cases[{i}] ({})", c.name);
        match (&c.file, &c.object) {
            (Some(_), Some(_)) => return Err(format!("{at}: set file or object, not both")),
            (None, None) => return Err(format!("{at}: set file or object")),
            _ => {}
        }
        if let Some(m) = &c.message {
            Regex::new(m).map_err(|e| format!("{at}: message: {}", regex_error(m, &e)))?;
        }
    }
    Ok(suite)
}

/// Loads the suite's policies, resolving paths against the suite's directory.
fn load_suite_policies(suite: &Suite, dir: &Path) -> Result<PolicySet, String> {
    let mut policies = Vec::new();
    let mut rules = Vec::new();
    for p in &suite.policies {
        let (ps, rs) = load_all(Some(&dir.join(p))).map_err(|e| e.to_string())?;
        policies.extend(ps);
        rules.extend(rs);
    }
    PolicySet::new(policies, Vec::new())
        .and_then(|s| s.with_notifications(rules))
        .map_err(|e| e.to_string())
}

/// Runs one case; `Ok(())` when it passes, else why not.
async fn run_case(
    case: &Case,
    dir: &Path,
    policies: &PolicySet,
    args: &CheckArgs,
) -> Result<(), String> {
    let input = match (&case.file, &case.object) {
        (Some(f), _) => {
            let path = dir.join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("file {}: cannot read: {e}", path.display()))?;
            (path.display().to_string(), text)
        }
        (None, Some(obj)) => (
            "object".to_owned(),
            serde_yaml::to_string(obj).map_err(|e| format!("object: {e}"))?,
        ),
        (None, None) => return Err("set file or object".into()),
    };
    let mut errors = Vec::new();
    let items = parse_inputs(vec![input], args, &mut errors);
    if let Some(e) = errors.first() {
        return Err(e.0.clone());
    }
    if items.is_empty() {
        return Err("no object to evaluate".into());
    }
    let pattern = case
        .message
        .as_deref()
        .map(Regex::new)
        .transpose()
        .map_err(|e| format!("message: {e}"))?;
    let offline = EvalOptions { offline: true };
    for item in items {
        let request = item.request()?;
        let d = policies.evaluate_with(&request, &offline).await;
        let object = describe_object(&request);
        let got = decision_label(&d);
        let findings = finding_lines(&d, &object);
        let shown = if findings.is_empty() {
            String::new()
        } else {
            format!(" ({})", findings.join("; "))
        };
        if got != case.expect.as_str() {
            return Err(format!(
                "{}: {object}: expected {}, got {got}{shown}",
                item.source,
                case.expect.as_str()
            ));
        }
        if let Some(re) = &pattern {
            let messages: Vec<&str> = d
                .denials
                .iter()
                .chain(&d.warnings)
                .chain(&d.audits)
                .chain(&d.skipped)
                .map(|f| f.message.as_str())
                .collect();
            if !messages.iter().any(|m| re.is_match(m)) {
                return Err(format!(
                    "{}: {object}: no message matches `{}`{shown}",
                    item.source,
                    re.as_str()
                ));
            }
        }
        let fired = d.fired();
        let missing: Vec<&str> = case
            .fired
            .iter()
            .map(String::as_str)
            .filter(|p| !fired.contains(p))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "{}: {object}: expected {} to fire, fired: {}",
                item.source,
                missing.join(", "),
                if fired.is_empty() {
                    "none".to_owned()
                } else {
                    fired.join(", ")
                }
            ));
        }
    }
    Ok(())
}

/// Runs one suite file, printing one line per case.
async fn run_suite(path: &Path, tally: &mut Tally) {
    let suite = match read_suite(path) {
        Ok(s) => s,
        Err(e) => {
            println!("ERROR {e}");
            tally.unusable += 1;
            return;
        }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let policies = match load_suite_policies(&suite, dir) {
        Ok(p) => p,
        Err(e) => {
            println!("ERROR {}: policies: {e}", path.display());
            tally.unusable += 1;
            return;
        }
    };
    let args = CheckArgs {
        files: Vec::new(),
        policies: None,
        output: Output::Text,
        user: suite.user.clone(),
        groups: suite.groups.clone(),
        namespace: suite.namespace.clone(),
    };
    let label = suite
        .name
        .clone()
        .unwrap_or_else(|| path.display().to_string());
    for case in &suite.cases {
        match run_case(case, dir, &policies, &args).await {
            Ok(()) => {
                tally.passed += 1;
                println!("PASS {label}: {}", case.name);
            }
            Err(why) => {
                tally.failed += 1;
                println!("FAIL {label}: {}: {why}", case.name);
            }
        }
    }
}

/// Finds and runs the suites; returns the exit code.
pub async fn run(args: &TestArgs) -> u8 {
    let mut tally = Tally::default();
    for path in &args.paths {
        match find_suites(path) {
            Ok(suites) => {
                for s in suites {
                    run_suite(&s, &mut tally).await;
                }
            }
            Err(e) => {
                println!("ERROR {e}");
                tally.unusable += 1;
            }
        }
    }
    let n = |n: usize, what: &str| crate::admission::plural(n as i64, what);
    println!(
        "{}: {} passed, {} failed; {}",
        n(tally.passed + tally.failed, "case"),
        tally.passed,
        tally.failed,
        n(tally.unusable, "unusable suite")
    );
    if tally.unusable > 0 {
        EXIT_UNUSABLE
    } else if tally.failed > 0 {
        EXIT_FAILED
    } else {
        EXIT_PASSED
    }
}
