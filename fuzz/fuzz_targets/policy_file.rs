//! Policy-file loading: any text gives policies or a LoadError, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(policies) = gatehouse::policy::parse_policies(text, "fuzz.yaml") {
            let _ = gatehouse::PolicySet::new(policies, vec!["kube-system".into()]);
        }
    }
});
