//! In-process cost of a CEL policy: the built-in default rule written in CEL,
//! `object.spec.replicas >= 3` on a Deployment.
//!
//! Run: `cargo bench --bench cel`. Target (issue 14): evaluation ≤ 2 µs. Three measurements:
//! - `evaluate`: the policy against a review whose object is already decoded (what each CEL
//!   policy after the first costs, as the decoded object is shared);
//! - `decode+evaluate`: a fresh review, its object decoded from raw JSON into CEL values first
//!   (what the first CEL policy that matches a review costs);
//! - `vap`: the same rule as a ValidatingAdmissionPolicy with its binding, matching included.

use criterion::{Criterion, criterion_group, criterion_main};
use gatehouse::policy::cel::vap;
use gatehouse::policy::cel::{Activation, Attributes, CelParams, CelPolicy, GroupVersion, Verdict};
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

    c.bench_function("cel/decode+evaluate replicas >= 3", |b| {
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

criterion_group!(benches, bench);
criterion_main!(benches);
