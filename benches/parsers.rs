//! Which JSON parser to read reviews with (issue 11): what reading a review costs in
//! serde_json, sonic-rs, simd-json and Gatehouse's own scanner (`src/admission/json.rs`), on
//! the 5 KB Deployment CREATE as written in examples/ (indented), the same review compact (as
//! the API server sends it), and the 9.5 KB UPDATE.
//!
//! - `validate`: check the whole body is JSON without building anything (serde_json:
//!   `IgnoredAny`; sonic-rs: a `LazyValue` of the whole document, which validates it;
//!   simd-json: its tape, the cheapest thing it builds, after copying the body, which it
//!   parses in place; gatehouse: `admission::testing::check_json`).
//! - `skip unchecked` (sonic-rs only): its SIMD skip that does not validate, for reference:
//!   the cost of finding the end of the value and nothing else.
//! - `envelope`: the fields Gatehouse reads plus `object.spec.replicas` (serde_json: borrowed
//!   structs with `&RawValue`; sonic-rs: `get_many` with the same paths; gatehouse:
//!   `admission::decode`, which reads more: all of the envelope, metadata, labels, the pod
//!   template's place).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/examples/reviews/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example review")
}

fn compact(body: &[u8]) -> Vec<u8> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("json");
    serde_json::to_vec(&v).expect("json")
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SerdeEnvelope<'a> {
    #[serde(borrow)]
    api_version: &'a str,
    #[serde(borrow)]
    request: SerdeRequest<'a>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SerdeRequest<'a> {
    #[serde(borrow)]
    uid: &'a str,
    #[serde(borrow)]
    operation: &'a str,
    #[serde(borrow)]
    object: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct SerdeObject<'a> {
    #[serde(borrow)]
    spec: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct SerdeSpec {
    replicas: Option<i64>,
}

fn serde_replicas(body: &[u8]) -> Option<i64> {
    let env: SerdeEnvelope = serde_json::from_slice(body).ok()?;
    black_box((env.api_version, env.request.uid, env.request.operation));
    let obj: SerdeObject = serde_json::from_str(env.request.object?.get()).ok()?;
    let spec: SerdeSpec = serde_json::from_str(obj.spec?.get()).ok()?;
    spec.replicas
}

fn sonic_tree() -> sonic_rs::PointerTree {
    let mut tree = sonic_rs::PointerTree::new();
    tree.add_path(["apiVersion"]);
    tree.add_path(["request", "uid"]);
    tree.add_path(["request", "operation"]);
    tree.add_path(["request", "object", "spec", "replicas"]);
    tree
}

fn sonic_replicas(body: &[u8], tree: &sonic_rs::PointerTree) -> Option<i64> {
    let found = sonic_rs::get_many(body, tree).ok()?;
    black_box(&found);
    found.get(3)?.as_ref()?.as_raw_str().parse().ok()
}

fn gatehouse_replicas(body: &[u8]) -> Option<i64> {
    let review = gatehouse::admission::decode(body).ok()?;
    review.object?.replicas?.as_i64()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parsers");
    let tree = sonic_tree();
    let mut buffers = simd_json::Buffers::default();
    let mut copy = Vec::new();
    let pretty = example("create-3-replicas");
    for (name, body) in [
        ("create-3-replicas", pretty.clone()),
        ("create-3-replicas compact", compact(&pretty)),
        ("update-image", example("update-image")),
    ] {
        let name = format!("{name} ({} B)", body.len());
        group.throughput(Throughput::Bytes(body.len() as u64));
        assert!(gatehouse::admission::testing::check_json(&body));
        assert_eq!(serde_replicas(&body), gatehouse_replicas(&body));
        assert_eq!(sonic_replicas(&body, &tree), gatehouse_replicas(&body));
        group.bench_function(format!("{name}: validate, serde_json"), |b| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).is_ok())
        });
        group.bench_function(format!("{name}: validate, sonic-rs"), |b| {
            b.iter(|| sonic_rs::from_slice::<sonic_rs::LazyValue>(black_box(&body)).is_ok())
        });
        group.bench_function(format!("{name}: validate, simd-json (copy + tape)"), |b| {
            b.iter(|| {
                copy.clear();
                copy.extend_from_slice(black_box(&body));
                simd_json::to_tape_with_buffers(&mut copy, &mut buffers).is_ok()
            })
        });
        group.bench_function(format!("{name}: validate, gatehouse"), |b| {
            b.iter(|| gatehouse::admission::testing::check_json(black_box(&body)))
        });
        group.bench_function(format!("{name}: skip unchecked, sonic-rs"), |b| {
            // SAFETY: the body is valid JSON (checked above); the unchecked skip is only
            // unsafe on invalid input.
            b.iter(|| {
                unsafe { sonic_rs::get_unchecked(black_box(&body[..]), &[] as &[&str]) }.is_ok()
            })
        });
        group.bench_function(format!("{name}: envelope, serde_json"), |b| {
            b.iter(|| serde_replicas(black_box(&body)))
        });
        group.bench_function(format!("{name}: envelope, sonic-rs"), |b| {
            b.iter(|| sonic_replicas(black_box(&body), &tree))
        });
        group.bench_function(format!("{name}: envelope, gatehouse decode"), |b| {
            b.iter(|| gatehouse_replicas(black_box(&body)))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
