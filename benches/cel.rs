//! In-process cost of a CEL policy: the built-in default rule written in CEL,
//! `object.spec.replicas >= 3` on a Deployment.
//!
//! Run: `cargo bench --bench cel`. Target (issue 14): evaluation ≤ 2 µs. Measurements:
//! - `evaluate`: the policy against an activation whose object is already converted (what
//!   each CEL policy after the first costs, as the conversion is shared);
//! - `fresh activation+evaluate`: a fresh activation of the raw object (the parts the rule
//!   reaches converted lazily, plus the JSON check `Activation::new` makes of unchecked text);
//! - `vap`: the same rule as a ValidatingAdmissionPolicy with its binding, matching included;
//! - `review/…`: a fresh review as the webhook judges it, decode + PolicySet evaluation, with
//!   the rule as a `cel` policy, as a VAP, and as the built-in `replicas` kind (the difference
//!   is what CEL costs per admission in process).

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use gatehouse::admission;
use gatehouse::policy::cel::vap;
use gatehouse::policy::cel::{Activation, Attributes, CelParams, CelPolicy, GroupVersion, Verdict};
use gatehouse::policy::{PolicySet, parse_policies};
use std::hint::black_box;

fn attrs() -> Attributes {
    Attributes {
        uid: "705ab4f5-6393-11e8-b7cc-42010a800002".into(),
        kind: GroupVersion {
            group: "apps".into(),
            version: "v1".into(),
            name: "Deployment".into(),
        },
        resource: GroupVersion {
            group: "apps".into(),
            version: "v1".into(),
            name: "deployments".into(),
        },
        name: "alpine".into(),
        namespace: "default".into(),
        operation: "CREATE".into(),
        ..Attributes::default()
    }
}

/// The `object` of examples/reviews/create-3-replicas.json.
fn object() -> Vec<u8> {
    let path = format!(
        "{}/examples/reviews/create-3-replicas.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let review: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).expect("example review")).expect("json");
    serde_json::to_vec(&review["request"]["object"]).expect("object")
}

fn bench(c: &mut Criterion) {
    let params: CelParams = serde_yaml::from_str(
        "validations:\n- expression: object.spec.replicas >= 3\n  message: at least 3 replicas\n",
    )
    .expect("params");
    let policy = CelPolicy::from_params(params).expect("compiles");
    let attrs = attrs();
    let object = object();

    let act = Activation::new(&attrs, Some(&object), None);
    assert_eq!(policy.evaluate(&act).verdict, Verdict::Pass);
    c.bench_function("cel/evaluate replicas >= 3", |b| {
        b.iter(|| black_box(policy.evaluate(black_box(&act))))
    });

    c.bench_function("cel/fresh activation+evaluate replicas >= 3", |b| {
        b.iter(|| {
            let act = Activation::new(&attrs, Some(black_box(&object)), None);
            black_box(policy.evaluate(&act))
        })
    });

    let manifests = std::fs::read_to_string(format!(
        "{}/policies/examples/vap/replicas.yaml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("vap example");
    let vaps = vap::load(&vap::documents(&manifests).expect("documents")).expect("loads");
    let act = Activation::new(&attrs, Some(&object), None);
    assert!(vaps[0].matches(&attrs, &act));
    c.bench_function("cel/vap match+evaluate replicas >= 3", |b| {
        b.iter(|| {
            let v = &vaps[0];
            if v.matches(black_box(&attrs), &act) {
                black_box(v.evaluate(&act));
            }
        })
    });
}

/// The rule in each form, as a policy set (match on Deployments CREATE/UPDATE as the default).
fn policy_set(kind: &str) -> PolicySet {
    let yaml = match kind {
        "replicas" => POLICY.replace("KIND", "replicas").replace("PARAMS", "min: 3"),
        "cel" => POLICY.replace("KIND", "cel").replace(
            "PARAMS",
            "validations:\n      - expression: object.spec.replicas >= 3\n        message: at least 3 replicas",
        ),
        _ => unreachable!(),
    };
    let policies = parse_policies(&yaml, "bench.yaml").expect("bench policy");
    PolicySet::new(policies, vec!["kube-system".into()]).expect("policy set")
}

const POLICY: &str = "policies:
  - name: min-replicas
    kind: KIND
    action: deny
    match:
      resources: [apps/deployments]
      operations: [CREATE, UPDATE]
    params:
      PARAMS
";

fn review_bench(c: &mut Criterion) {
    let body = std::fs::read(format!(
        "{}/examples/reviews/create-3-replicas.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example review");
    let vap_dir = format!("{}/policies/examples/vap", env!("CARGO_MANIFEST_DIR"));
    let vap_file = format!("{vap_dir}/replicas.yaml");
    let vap_set = PolicySet::new(
        gatehouse::policy::load_policies(Some(std::path::Path::new(&vap_file))).expect("vap"),
        vec!["kube-system".into()],
    )
    .expect("vap set");
    let mut group = c.benchmark_group("review");
    for (name, set) in [
        ("replicas kind", policy_set("replicas")),
        ("cel kind", policy_set("cel")),
        ("vap", vap_set),
    ] {
        let req = admission::decode(&body).expect("review");
        let d = set.evaluate(&req).now_or_never().expect("no I/O");
        assert!(d.allowed() && !d.evaluated.is_empty(), "{name}: {d:?}");
        group.bench_function(format!("decode+evaluate, {name}"), |b| {
            b.iter(|| {
                let req = admission::decode(black_box(&body)).expect("review");
                black_box(set.evaluate(&req).now_or_never().expect("no I/O"))
            })
        });
    }
    group.bench_function("decode only", |b| {
        b.iter(|| {
            black_box(admission::decode(black_box(&body)).expect("review"))
                .uid
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench, review_bench);
criterion_main!(benches);
