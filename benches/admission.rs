//! In-process cost of one admission: decode → evaluate → encode, as the handler does it.
//!
//! Run: `cargo bench --bench admission`. Targets (BENCHMARKS.md): the ~5 KB Deployment CREATE
//! against the default policies within 25 µs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use gatehouse::admission;
use gatehouse::policy::PolicySet;
use std::hint::black_box;

fn example(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/examples/reviews/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The whole in-process path of the `/validate` handler for one body.
fn admit(policies: &PolicySet, body: &[u8]) -> Vec<u8> {
    let req = admission::decode(body).expect("valid review");
    let decision = policies
        .evaluate(&req)
        .now_or_never()
        .expect("these policies do no I/O");
    serde_json::to_vec(&admission::respond(&req, &decision)).expect("encode")
}

fn bench(c: &mut Criterion) {
    let defaults = PolicySet::load(None, vec!["kube-system".into()]).expect("default policies");
    let mut group = c.benchmark_group("admission");
    for name in [
        "create-3-replicas",
        "create-2-replicas",
        "scale-to-1",
        "update-image",
    ] {
        let body = example(name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_function(format!("{name} ({} B) default policies", body.len()), |b| {
            b.iter(|| admit(black_box(&defaults), black_box(&body)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
