//! Review decoding plus policy evaluation: any body gives a response or a DecodeError, never a
//! panic. Evaluated against every example policy that needs no I/O, and the defaults.
//!
//! Two oracles besides "no panic":
//! - the decoder's JSON scanner accepts exactly what serde_json accepts (except nesting at
//!   the limit, where the two count differently, and escaped lone surrogates, which serde_json
//!   skips over and the scanner refuses);
//! - `admission::answer` writes byte for byte what kube's types serialize to (`respond`);
//! - on a JSON body, the trusted skip the policy kinds read checked text with ends its value
//!   where the checking skip does, and on any body it stays within the body.
#![no_main]

use std::sync::LazyLock;

use futures_util::FutureExt;
use gatehouse::policy::{EvalOptions, PolicySet};
use libfuzzer_sys::fuzz_target;

static POLICIES: LazyLock<Vec<PolicySet>> = LazyLock::new(|| {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let mut sets = vec![PolicySet::load(None, vec!["kube-system".into()]).expect("defaults")];
    let examples = std::path::Path::new(root).join("policies/examples");
    if let Ok(set) = PolicySet::load(Some(&examples), vec![]) {
        sets.push(set);
    }
    sets
});

/// Whether `text` has a `\u` escape of a surrogate (the one place the two parsers differ).
fn has_surrogate_escape(text: &str) -> bool {
    text.match_indices("\\u").any(|(i, _)| {
        text.get(i + 2..i + 3)
            .is_some_and(|d| d.eq_ignore_ascii_case("d"))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let ours = gatehouse::admission::testing::check_json(data);
        match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => assert!(
                ours || has_surrogate_escape(text),
                "serde_json accepts what the scanner refuses"
            ),
            Err(e) if !e.to_string().contains("recursion limit") => {
                assert!(!ours, "the scanner accepts what serde_json refuses: {e}")
            }
            Err(_) => {}
        }
    }
    let (checked, trusted) = gatehouse::admission::testing::value_ends(data);
    if checked.is_some() && gatehouse::admission::testing::check_json(data) {
        assert_eq!(trusted, checked, "the trusted skip ends elsewhere");
    }
    assert!(trusted.is_none_or(|end| end <= data.len()));
    let Ok(req) = gatehouse::admission::decode(data) else {
        return;
    };
    // Offline: kinds that need the network or a database report Skipped instead of waiting.
    let opts = EvalOptions { offline: true };
    for set in POLICIES.iter() {
        if let Some(decision) = set.evaluate_with(&req, &opts).now_or_never() {
            let review = gatehouse::admission::respond(&req, &decision);
            let kube = serde_json::to_vec(&review).expect("kube's response serializes");
            let ours = gatehouse::admission::answer(&req, &decision);
            if decision.audits.len() <= 1 {
                assert_eq!(ours, kube, "answer differs from kube's");
            } else {
                let ours: serde_json::Value = serde_json::from_slice(&ours).expect("json");
                let kube: serde_json::Value = serde_json::from_slice(&kube).expect("json");
                assert_eq!(ours, kube, "answer differs from kube's");
            }
        }
    }
});
