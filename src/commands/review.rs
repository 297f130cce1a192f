//! `gatehouse review [FILE|-]`: evaluate one AdmissionReview offline with the same engine.

use std::io::Read;
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
            eprintln!("gatehouse review: {}: {e}", shown(input));
            return EXIT_UNUSABLE;
        }
    };
    let decision = policies.evaluate(&req).await;
    let review = admission::respond(&req, &decision);
    match serde_json::to_string_pretty(&review) {
        Ok(text) => println!("{text}"),
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
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("stdin: cannot read: {e}"))?;
            Ok(buf)
        }
    }
}
