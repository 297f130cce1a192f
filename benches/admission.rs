//! In-process cost of one admission: decode → evaluate → answer (the response bytes), as the
//! handler does it.
//!
//! Run: `cargo bench --bench admission`. Targets (BENCHMARKS.md): the ~5 KB Deployment CREATE
//! against the default policies within 25 µs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::FutureExt;
use gatehouse::admission;
use gatehouse::policy::{PolicySet, parse_policies};
use serde_json::json;
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
    admission::answer(&req, &decision)
}

/// Every example policy that runs in process (forward and one-time-token need the network or
/// a database and are measured by the load script instead).
fn example_policies() -> PolicySet {
    example_policies_but(&[])
}

/// The in-process example policies, without the files named in `skip`.
fn example_policies_but(skip: &[&str]) -> PolicySet {
    let dir = format!("{}/policies/examples", env!("CARGO_MANIFEST_DIR"));
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("policies/examples") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        // Only policy files (policies/examples/vap/ holds Kubernetes manifests).
        if name == "forward.yaml"
            || name == "one-time-token.yaml"
            || !name.ends_with(".yaml")
            || skip.contains(&name.as_str())
        {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        all.extend(parse_policies(&text, &name).expect("example policies"));
    }
    PolicySet::new(all, vec!["kube-system".into()]).expect("example policy set")
}

/// A Pod CREATE with 10 containers (2 init, 8 app) that every example policy allows.
fn pod_with_ten_containers() -> Vec<u8> {
    let container = |i: usize| {
        json!({
            "name": format!("c{i}"),
            "image": format!("myregistry.io/team/app-{i}:1.{i}.0"),
            "ports": [{"containerPort": 8000 + i, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "250m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
            "env": [{"name": "MODE", "value": "production"}],
            "imagePullPolicy": "IfNotPresent",
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
        })
    };
    let review = json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "3b1f6f2e-8a49-4bd7-9d1e-5d0c7a2f9e10",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": "web-0", "namespace": "app-ns", "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "web-0", "namespace": "app-ns",
                             "labels": {"team": "payments", "app.kubernetes.io/name": "web"},
                             "annotations": {"prometheus.io/scrape": "true"}},
                "spec": {
                    "initContainers": (0..2).map(container).collect::<Vec<_>>(),
                    "containers": (2..10).map(container).collect::<Vec<_>>(),
                    "restartPolicy": "Always", "dnsPolicy": "ClusterFirst",
                },
            },
            "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    });
    serde_json::to_vec(&review).expect("encode")
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
    // Where the time of the 5 KB CREATE goes.
    let body = example("create-3-replicas");
    let req = admission::decode(&body).expect("valid review");
    let decision = defaults.evaluate(&req).now_or_never().expect("no I/O");
    let review = admission::respond(&req, &decision);
    group.bench_function("create-3-replicas: decode only", |b| {
        b.iter(|| admission::decode(black_box(&body)).expect("valid review"))
    });
    group.bench_function("create-3-replicas: evaluate only", |b| {
        b.iter(|| {
            defaults
                .evaluate(black_box(&req))
                .now_or_never()
                .expect("no I/O")
        })
    });
    group.bench_function("create-3-replicas: respond + encode only", |b| {
        b.iter(|| {
            serde_json::to_vec(&admission::respond(black_box(&req), black_box(&decision)))
                .expect("encode")
        })
    });
    group.bench_function("create-3-replicas: answer only", |b| {
        b.iter(|| admission::answer(black_box(&req), black_box(&decision)))
    });
    group.bench_function("create-3-replicas: encode only", |b| {
        b.iter(|| serde_json::to_vec(black_box(&review)).expect("encode"))
    });

    let examples = example_policies();
    let pod = pod_with_ten_containers();
    let answer: serde_json::Value = serde_json::from_slice(&admit(&examples, &pod)).expect("json");
    assert_eq!(answer["response"]["allowed"], true, "{answer}");
    group.throughput(Throughput::Bytes(pod.len() as u64));
    group.bench_function(
        format!("pod-10-containers ({} B) example policies", pod.len()),
        |b| b.iter(|| admit(black_box(&examples), black_box(&pod))),
    );
    // The same without cel.yaml: what the pod-spec kinds (and replicas, labels, annotations)
    // cost on their own.
    let no_cel = example_policies_but(&["cel.yaml"]);
    group.bench_function(
        format!(
            "pod-10-containers ({} B) example policies but cel",
            pod.len()
        ),
        |b| b.iter(|| admit(black_box(&no_cel), black_box(&pod))),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
