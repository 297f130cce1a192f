//! Which JSON parser to read reviews with (issue 11): the cost of what the decoder does with
//! a review, in serde_json (what Gatehouse uses) and sonic-rs, on the 5 KB Deployment CREATE
//! and the 10-container Pod.
//!
//! - `skip`: validate the whole body without building anything (serde_json: `IgnoredAny`;
//!   sonic-rs: `LazyValue` of the whole document, which validates it).
//! - `envelope`: read the envelope's fields and keep `object` as a raw slice (serde_json:
//!   `&RawValue`; sonic-rs: `LazyValue`), then read `object.spec.replicas`.
//! - `gatehouse decode`: `admission::decode` itself (serde_json), for reference.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn example(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/examples/reviews/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    ))
    .expect("example review")
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

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SonicEnvelope<'a> {
    #[serde(borrow)]
    api_version: &'a str,
    #[serde(borrow)]
    request: SonicRequest<'a>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct SonicRequest<'a> {
    #[serde(borrow)]
    uid: &'a str,
    #[serde(borrow)]
    operation: &'a str,
    #[serde(borrow)]
    object: Option<sonic_rs::LazyValue<'a>>,
}

fn serde_replicas(body: &[u8]) -> Option<i64> {
    let env: SerdeEnvelope = serde_json::from_slice(body).ok()?;
    black_box((env.api_version, env.request.uid, env.request.operation));
    let obj: SerdeObject = serde_json::from_str(env.request.object?.get()).ok()?;
    let spec: SerdeSpec = serde_json::from_str(obj.spec?.get()).ok()?;
    spec.replicas
}

fn sonic_replicas(body: &[u8]) -> Option<i64> {
    let env: SonicEnvelope = sonic_rs::from_slice(body).ok()?;
    black_box((env.api_version, env.request.uid, env.request.operation));
    let obj = env.request.object?;
    let v = sonic_rs::get(obj.as_raw_str(), ["spec", "replicas"]).ok()?;
    v.as_raw_str().parse().ok()
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("parsers");
    for name in ["create-3-replicas", "update-image"] {
        let body = example(name);
        group.throughput(Throughput::Bytes(body.len() as u64));
        assert_eq!(serde_replicas(&body), sonic_replicas(&body));
        group.bench_function(format!("{name}: skip, serde_json"), |b| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(&body)).is_ok())
        });
        group.bench_function(format!("{name}: skip, sonic-rs"), |b| {
            b.iter(|| sonic_rs::from_slice::<sonic_rs::LazyValue>(black_box(&body)).is_ok())
        });
        group.bench_function(format!("{name}: envelope + replicas, serde_json"), |b| {
            b.iter(|| serde_replicas(black_box(&body)))
        });
        group.bench_function(format!("{name}: envelope + replicas, sonic-rs"), |b| {
            b.iter(|| sonic_replicas(black_box(&body)))
        });
        group.bench_function(format!("{name}: gatehouse decode"), |b| {
            b.iter(|| gatehouse::admission::decode(black_box(&body)).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
