//! A malicious CEL expression over a ~7 MiB object is cut off by the evaluation budget, the
//! policy answers with its failurePolicy, and the process's peak memory grows by less than
//! 64 MiB while it runs. One test in its own process, so the peak is this test's alone.

use gatehouse::policy::cel::{Activation, Attributes, CelParams, CelPolicy, Verdict};

/// Peak resident memory of this process (VmHWM), in bytes.
fn peak_rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM line");
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .expect("VmHWM value");
    kib * 1024
}

fn policy(expression: &str, failure_policy: &str) -> CelPolicy {
    let yaml = format!(
        "failurePolicy: {failure_policy}\nvariables:\n- name: items\n  expression: object.items\nvalidations:\n- expression: {}\n",
        serde_json::to_string(expression).unwrap()
    );
    let params: CelParams = serde_yaml::from_str(&yaml).unwrap();
    CelPolicy::from_params(params).unwrap()
}

#[test]
fn malicious_expressions_over_a_7_mib_object_stay_within_budget_and_memory() {
    // 7 MiB: 400,000 sixteen-digit strings (a list of shorter ones is past what CEL converts
    // out of one object, so its evaluation would stop before any expression ran).
    let items: Vec<String> = (0..400_000).map(|i| format!("{i:016}")).collect();
    let object = serde_json::to_vec(&serde_json::json!({ "items": items })).unwrap();
    assert!(object.len() > 7 * 1024 * 1024, "{}", object.len());
    let attrs = Attributes {
        operation: "CREATE".into(),
        ..Attributes::default()
    };
    let act = Activation::new(&attrs, Some(&object), None);

    // Decode the object first (what any CEL policy matching this review costs).
    let before_decode = peak_rss();
    assert_eq!(
        policy("object.items.size() > 0", "Fail")
            .evaluate(&act)
            .verdict,
        Verdict::Pass
    );
    let decoded = peak_rss();
    eprintln!(
        "decoding the 7 MiB object: peak +{} MiB",
        (decoded - before_decode) / (1024 * 1024)
    );

    for expression in [
        "object.items.map(x, object.items.map(y, x + y)).size() > 0",
        "object.items.all(x, object.items.exists(y, x + y == ''))",
        "variables.items.map(x, [x + x, x + x, x + x, x + x, x + x, x + x, x + x, x + x]).size() == 0",
        "object.items.map(x, object.items.filter(y, y.startsWith(x))).size() == 0",
        "object.items.join('').split('').map(c, c + c).size() == 0",
        "object.items.map(x, x.replace('', object.items[0])).size() == 0",
    ] {
        let start = peak_rss();
        let verdict = policy(expression, "Fail").evaluate(&act).verdict;
        assert!(
            matches!(&verdict, Verdict::Error(m) if m.contains("cost limit exceeded") || m.contains("time limit")),
            "{expression}: {verdict:?}"
        );
        assert_eq!(
            policy(expression, "Ignore").evaluate(&act).verdict,
            Verdict::Pass,
            "{expression}"
        );
        let grown = peak_rss().saturating_sub(start);
        eprintln!("{expression}: peak +{} MiB", grown / (1024 * 1024));
        assert!(
            grown < 64 * 1024 * 1024,
            "{expression}: peak memory grew by {} MiB",
            grown / (1024 * 1024)
        );
    }
}
