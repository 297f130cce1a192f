//! Replays tests/data/fuzz/ (hand-made hostile inputs and crashers kept from fuzzing with
//! scripts/fuzz.sh) through the same paths as the fuzz targets: each must end in an answer or
//! a clean error, never a panic, and the known ones must end the way recorded here.

use std::path::PathBuf;

use futures_util::FutureExt;
use gatehouse::PolicySet;
use gatehouse::policy::{EvalOptions, parse_policies};

fn files(target: &str) -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/fuzz")
        .join(target);
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "{} holds no inputs", dir.display());
    out
}

fn policy_sets() -> Vec<PolicySet> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut sets = vec![PolicySet::load(None, vec!["kube-system".into()]).unwrap()];
    let examples = root.join("policies/examples");
    if examples.is_dir() {
        sets.push(PolicySet::load(Some(&examples), vec![]).unwrap());
    }
    sets
}

/// Decodes and evaluates; `Some(allowed)` for a review that decoded, `None` for a clean error.
fn review(body: &[u8], sets: &[PolicySet]) -> Option<Vec<bool>> {
    let req = gatehouse::admission::decode(body).ok()?;
    let opts = EvalOptions { offline: true };
    Some(
        sets.iter()
            .map(|set| {
                let decision = set
                    .evaluate_with(&req, &opts)
                    .now_or_never()
                    .expect("offline evaluation does no I/O");
                let out =
                    serde_json::to_value(gatehouse::admission::respond(&req, &decision)).unwrap();
                assert_eq!(out["response"]["uid"].as_str(), Some(req.uid.as_ref()));
                decision.allowed()
            })
            .collect(),
    )
}

#[test]
fn hostile_reviews_end_in_an_answer_or_a_clean_error() {
    let sets = policy_sets();
    for path in files("review") {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let body = std::fs::read(&path).unwrap();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| review(&body, &sets)))
                .unwrap_or_else(|_| panic!("{name}: panicked"));
        // The default set (first) decides the replica cases; the rest only must not panic.
        let default_allowed = result.as_ref().map(|r| r[0]);
        let expected = match name.as_str() {
            // Not a whole number in range: denied with "not a whole number", never allowed.
            "replicas-huge" | "replicas-float" => Some(false),
            "replicas-negative" => Some(false),
            // A spec that is not an object has no replicas: the API default 1 → denied.
            "spec-is-array" => Some(false),
            // The object must be an object: a clean decode error.
            "object-is-array" | "labels-wrong-type" => None,
            // Pod-template shape errors are a policy matter, not a decode error; replicas 3.
            "containers-is-object" | "image-not-string" => Some(true),
            // A Deployment without a namespace is judged like any other.
            "namespace-null" => Some(true),
            "unicode-uid" => Some(true),
            _ => continue,
        };
        assert_eq!(default_allowed, expected, "{name}");
    }
}

#[test]
fn hostile_policy_files_end_in_policies_or_a_clean_error() {
    for path in files("policy_file") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).unwrap();
        let result = std::panic::catch_unwind(|| parse_policies(&text, &name).map(|p| p.len()))
            .unwrap_or_else(|_| panic!("{name}: panicked"));
        let expected_error = match name.as_str() {
            "billion-laughs.yaml" => Some("repetition limit exceeded"),
            "deep-nesting.yaml" => Some("recursion limit exceeded"),
            "min-overflow.yaml" => Some(
                "params.min: expected a whole number from 0 to 4294967295, found the number 4294967296",
            ),
            "resource-slash.yaml" => Some("match.resources[0]: resource `/` has an empty"),
            _ => None,
        };
        if let Some(expected) = expected_error {
            let err = result.expect_err(&name).to_string();
            assert!(
                err.starts_with(&format!("{name}: ")) && err.contains(expected),
                "{err}"
            );
            continue;
        }
        if name == "star-namespace.yaml" {
            assert_eq!(result.ok(), Some(1), "{name}");
        }
    }
}
