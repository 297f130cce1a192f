//! Review decoding plus policy evaluation: any body gives a response or a DecodeError, never a
//! panic. Evaluated against every example policy that needs no I/O, and the defaults.
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

fuzz_target!(|data: &[u8]| {
    let Ok(req) = gatehouse::admission::decode(data) else {
        return;
    };
    // Offline: kinds that need the network or a database report Skipped instead of waiting.
    let opts = EvalOptions { offline: true };
    for set in POLICIES.iter() {
        if let Some(decision) = set.evaluate_with(&req, &opts).now_or_never() {
            let review = gatehouse::admission::respond(&req, &decision);
            let _ = serde_json::to_vec(&review);
        }
    }
});
