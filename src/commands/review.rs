//! `gatehouse review [FILE|-]`: evaluate one AdmissionReview offline with the same engine.

use std::io::{IsTerminal as _, Read};
use std::path::Path;

use crate::admission;
use crate::policy::PolicySet;

/// Exit code when the review is allowed.
pub const EXIT_ALLOWED: u8 = 0;
/// Exit code when the review is denied.
pub const EXIT_DENIED: u8 = 1;
/// Exit code when the input (or the configuration) cannot be used.
pub const EXIT_UNUSABLE: u8 = 2;

/// Reads the review from `input` (`-` or `None` for stdin), prints the response review as
/// JSON to stdout and returns the exit code.
pub async fn run(policies: &PolicySet, input: Option<&Path>) -> u8 {
    let body = match read_input(input) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("gatehouse review: {e}");
            return EXIT_UNUSABLE;
        }
    };
    let req = match admission::decode(&body) {
        Ok(r) => r,
        Err(e) => {
            match not_a_review(&body) {
                Some(what) => eprintln!(
                    "gatehouse review: {}: {e}: {what}; `gatehouse review` reads one AdmissionReview as the API server sends it; to evaluate manifests run `gatehouse check {}`",
                    shown(input),
                    input.map_or_else(|| "FILE".into(), |p| p.display().to_string())
                ),
                None => eprintln!("gatehouse review: {}: {e}", shown(input)),
            }
            return EXIT_UNUSABLE;
        }
    };
    let decision = policies.evaluate(&req).await;
    let review = admission::respond(&req, &decision);
    match serde_json::to_string_pretty(&review) {
        // A closed stdout (`| head`) does not change the verdict's exit code.
        Ok(text) => {
            super::print_line(text);
        }
        Err(e) => {
            eprintln!("gatehouse review: cannot encode the response: {e}");
            return EXIT_UNUSABLE;
        }
    }
    if decision.allowed() {
        EXIT_ALLOWED
    } else {
        EXIT_DENIED
    }
}

/// Why a document that failed to decode is probably not a review at all.
fn not_a_review(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?.trim_start();
    if text.is_empty() {
        return None;
    }
    if !text.starts_with('{') {
        return Some("the input is not JSON (YAML, or a Kubernetes manifest?)".into());
    }
    let value: serde_json::Value = serde_json::from_str(text).ok()?;
    match value.get("kind").and_then(serde_json::Value::as_str) {
        Some("AdmissionReview") => None,
        Some(kind) => Some(format!(
            "the input is a {kind}, not an AdmissionReview (a manifest?)"
        )),
        None => None,
    }
}

fn shown(input: Option<&Path>) -> String {
    match input {
        Some(p) if p != Path::new("-") => p.display().to_string(),
        _ => "stdin".into(),
    }
}

fn read_input(input: Option<&Path>) -> Result<Vec<u8>, String> {
    match input {
        Some(p) if p != Path::new("-") => {
            std::fs::read(p).map_err(|e| format!("{}: cannot read: {e}", p.display()))
        }
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!(
                    "gatehouse review: reading an AdmissionReview from standard input (end it with Ctrl-D, or give a FILE)"
                );
            }
            let mut buf = Vec::new();
            stdin
                .lock()
                .read_to_end(&mut buf)
                .map_err(|e| format!("stdin: cannot read: {e}"))?;
            Ok(buf)
        }
    }
}
