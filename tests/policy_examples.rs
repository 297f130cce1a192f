//! Every file in `policies/examples/` loads, and each one's policies do what its comments say,
//! through the real webhook server over TLS. (`forward.yaml` calls out: its calls are exercised
//! against stand-in functions in tests/forward.rs; here it loads and is skipped offline.)

mod common;

use common::TestServer;
use gatehouse::policy::{EvalOptions, KINDS, PolicySet, parse_policies};
use serde_json::{Value, json};

fn example(kind: &str) -> String {
    String::from_utf8(common::read(&format!("policies/examples/{kind}.yaml"))).unwrap()
}

/// An AdmissionReview v1 for `op` on `object` (its kind, apiVersion, namespace and name).
fn review(op: &str, object: Value, sub: Option<&str>) -> Vec<u8> {
    let kind = object["kind"].as_str().unwrap().to_owned();
    let api = object["apiVersion"].as_str().unwrap().to_owned();
    let (group, version) = api.split_once('/').unwrap_or(("", &api));
    // A Scale is the scale subresource of the StatefulSet of the same name.
    let (rgroup, rversion, resource) = match kind.as_str() {
        "Scale" => ("apps", "v1", "statefulsets".to_owned()),
        k => (group, version, format!("{}s", k.to_lowercase())),
    };
    let mut request = json!({
        "uid": "0e7c3b1a-5d7e-4c83-9b0f-2f4a9d6c1e01",
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": rgroup, "version": rversion, "resource": resource},
        "name": object["metadata"]["name"],
        "operation": op,
        "userInfo": {"username": "dev@example.com", "groups": ["system:authenticated"]},
        "object": object,
    });
    if let Some(ns) = request["object"]["metadata"]["namespace"].as_str() {
        request["namespace"] = json!(ns);
    }
    if let Some(sub) = sub {
        request["subResource"] = json!(sub);
    }
    serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}))
        .unwrap()
}

fn deployment(ns: &str, replicas: i64, pod: Value) -> Value {
    let mut d = json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "shop", "namespace": ns, "labels": {"team": "payments", "app.kubernetes.io/name": "shop"},
                     "annotations": {"example.com/owner-email": "payments@example.com", "example.com/runbook": "https://wiki/shop"}},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "shop"}},
                 "template": {"metadata": {"labels": {"app": "shop", "team": "payments", "app.kubernetes.io/name": "shop"},
                                           "annotations": {"prometheus.io/scrape": "true"}},
                              "spec": pod}},
    });
    if pod.is_null() {
        d["spec"]["template"]["spec"] = json!({"containers": [good_container()]});
    }
    d
}

fn good_container() -> Value {
    json!({"name": "shop", "image": "myregistry.io/shop/web:1.4",
           "ports": [{"containerPort": 8080}],
           "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}}})
}

fn pod(ns: &str, containers: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "shop-7d9f", "namespace": ns, "labels": {"team": "payments", "app.kubernetes.io/name": "shop"}},
           "spec": {"containers": containers}})
}

/// Posts and returns (allowed, message, warnings, audit annotations).
async fn decide(s: &TestServer, body: Vec<u8>) -> (bool, String, Value, Value) {
    let (status, v) = s.post(body).await;
    assert_eq!(status, 200, "{v}");
    let r = &v["response"];
    (
        r["allowed"].as_bool().unwrap(),
        r["status"]["message"].as_str().unwrap_or("").to_owned(),
        r.get("warnings").cloned().unwrap_or(json!([])),
        r.get("auditAnnotations").cloned().unwrap_or(json!({})),
    )
}

#[test]
fn every_kind_has_an_example_file_that_loads() {
    for (kind, _) in KINDS {
        let text = example(kind);
        let policies =
            parse_policies(&text, &format!("{kind}.yaml")).unwrap_or_else(|e| panic!("{e}"));
        assert!(!policies.is_empty(), "{kind}");
        assert!(policies.iter().all(|p| p.kind.name() == *kind), "{kind}");
    }
    // All of them together, as a policy directory: names are unique across files.
    PolicySet::load(Some(&common::repo().join("policies/examples")), vec![]).unwrap();
}

#[tokio::test]
async fn replicas_example() {
    let s = TestServer::start_with(Some(&example("replicas")), |_| {}).await;
    let (ok, msg, _, _) = decide(
        &s,
        review("CREATE", deployment("prod-shop", 2, Value::Null), None),
    )
    .await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Deployment prod-shop/shop asks for 2 replicas; policy min-replicas-prod requires at least 3"
    );
    let (ok, msg, _, _) = decide(
        &s,
        review("UPDATE", deployment("prod-shop", 60, Value::Null), None),
    )
    .await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Deployment prod-shop/shop asks for 60 replicas; policy min-replicas-prod allows at most 50"
    );
    assert!(
        decide(
            &s,
            review("CREATE", deployment("prod-shop", 3, Value::Null), None)
        )
        .await
        .0
    );
    assert!(
        decide(
            &s,
            review("CREATE", deployment("dev-alice", 1, Value::Null), None)
        )
        .await
        .0
    );
    let scale = json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
                       "metadata": {"name": "db", "namespace": "prod-shop"},
                       "spec": {"replicas": 1}});
    let (ok, msg, _, _) = decide(&s, review("UPDATE", scale, Some("scale"))).await;
    assert!(!ok);
    assert_eq!(
        msg,
        "StatefulSet prod-shop/db (scale) asks for 1 replica; policy min-replicas-prod requires at least 3"
    );
}

#[tokio::test]
async fn registries_example() {
    let s = TestServer::start_with(Some(&example("registries")), |_| {}).await;
    let image = |img: &str| json!([{"name": "web", "image": img}]);
    assert!(
        decide(&s, review("CREATE", pod("shop", image("nginx:1.27")), None))
            .await
            .0
    );
    assert!(
        decide(
            &s,
            review(
                "CREATE",
                pod("shop", image("registry.internal:5000/tools/kubectl:1.33")),
                None
            )
        )
        .await
        .0
    );
    let (ok, msg, _, _) = decide(
        &s,
        review(
            "CREATE",
            pod("shop", image("myregistry.io.evil.com/web:1")),
            None,
        ),
    )
    .await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Pod shop/shop-7d9f: container web image `myregistry.io.evil.com/web:1` (myregistry.io.evil.com/web) is not from an allowed registry; \
         policy approved-registries allows images only from myregistry.io, registry.internal:5000, ghcr.io/acme, docker.io/library"
    );

    // An image ID is not a pullable reference: the node would run whatever it has cached.
    let id = "sha256:4b7ce07a7c0f1e3ef2f39b36ad4e8a5c4a2b3b8b8e1e1f5f6a7b8c9d0e1f2a3b";
    let (ok, msg, _, _) = decide(&s, review("CREATE", pod("shop", image(id)), None)).await;
    assert!(!ok);
    assert!(
        msg.starts_with(&format!(
            "Pod shop/shop-7d9f: container web image `{id}` is an image ID, not a pullable registry/repository[:tag][@digest] reference"
        )),
        "{msg}"
    );

    // kubectl debug: an UPDATE of pods/ephemeralcontainers whose object is the whole Pod.
    let mut debugged = pod("shop", image("myregistry.io/web:1"));
    debugged["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger-x7k2q", "image": "ghcr.io/acme-tools/netshoot"}]);
    let (ok, msg, _, _) = decide(
        &s,
        review("UPDATE", debugged.clone(), Some("ephemeralcontainers")),
    )
    .await;
    assert!(!ok);
    assert!(msg.starts_with("Pod shop/shop-7d9f (ephemeralcontainers): ephemeralContainer debugger-x7k2q image `ghcr.io/acme-tools/netshoot`"), "{msg}");
    debugged["spec"]["ephemeralContainers"][0]["image"] = json!("busybox:1.36");
    assert!(
        decide(&s, review("UPDATE", debugged, Some("ephemeralcontainers")))
            .await
            .0
    );

    // In prod-* a tag is allowed with a warning; a digest is quiet.
    let (ok, _, warnings, _) = decide(
        &s,
        review("CREATE", deployment("prod-shop", 3, Value::Null), None),
    )
    .await;
    assert!(ok);
    assert_eq!(
        warnings,
        json!([
            "Deployment prod-shop/shop: container shop image `myregistry.io/shop/web:1.4` is not pinned by digest (@sha256:…); \
                policy pinned-images-prod allows images only from myregistry.io, ghcr.io/acme, pinned by digest"
        ])
    );
    let pinned = json!({"containers": [{"name": "shop", "image": "myregistry.io/shop/web@sha256:4b7ce07a7c0f1e3ef2f39b36ad4e8a5c4a2b3b8b8e1e1f5f6a7b8c9d0e1f2a3b"}]});
    let (ok, _, warnings, _) = decide(
        &s,
        review("CREATE", deployment("prod-shop", 3, pinned), None),
    )
    .await;
    assert!(ok);
    assert_eq!(warnings, json!([]));
}

#[tokio::test]
async fn resources_example() {
    let s = TestServer::start_with(Some(&example("resources")), |_| {}).await;
    assert!(
        decide(
            &s,
            review("CREATE", deployment("shop", 3, Value::Null), None)
        )
        .await
        .0
    );
    let mut c = good_container();
    c["resources"]["limits"] = json!({"cpu": "2"});
    let (ok, msg, _, _) = decide(
        &s,
        review(
            "CREATE",
            deployment("shop", 3, json!({"containers": [c.clone()]})),
            None,
        ),
    )
    .await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Deployment shop/shop: container shop has no memory limit; policy container-resources requires requests cpu, memory and limits memory set; \
         cpu request at most 4, memory request at most 16Gi and memory limit at most 32Gi"
    );
    // The same manifest is fine where the policy does not apply.
    assert!(
        decide(
            &s,
            review(
                "CREATE",
                deployment("sandbox", 3, json!({"containers": [c]})),
                None
            )
        )
        .await
        .0
    );
    let mut big = good_container();
    big["resources"]["requests"]["cpu"] = json!("4001m");
    let (ok, msg, _, _) = decide(&s, review("CREATE", pod("shop", json!([big])), None)).await;
    assert!(!ok);
    assert!(
        msg.starts_with("Pod shop/shop-7d9f: container shop: cpu request 4001m is above 4;"),
        "{msg}"
    );
}

#[tokio::test]
async fn ports_example() {
    let s = TestServer::start_with(Some(&example("ports")), |_| {}).await;
    let with = |ports: Value| {
        pod(
            "shop",
            json!([{"name": "web", "image": "nginx", "ports": ports}]),
        )
    };
    for port in [80, 443, 8000, 8999, 9090] {
        let (ok, msg, _, _) = decide(
            &s,
            review("CREATE", with(json!([{"containerPort": port}])), None),
        )
        .await;
        assert!(ok, "{port}: {msg}");
    }
    // The host network without any declared port: every port it opens is a host port.
    let mut host = with(json!([]));
    host["spec"]["hostNetwork"] = json!(true);
    let (ok, msg, _, _) = decide(&s, review("CREATE", host, None)).await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Pod shop/shop-7d9f: hostNetwork: true (every port a container opens is a host port; set allowHostNetwork to accept it) not allowed; policy allowed-ports allows containerPorts 80, 443, 8000-8999, 9090 and hostPorts none"
    );
    for port in [7999, 9000, 9091] {
        let (ok, msg, _, _) = decide(
            &s,
            review("CREATE", with(json!([{"containerPort": port}])), None),
        )
        .await;
        assert!(!ok, "{port}");
        assert_eq!(
            msg,
            format!(
                "Pod shop/shop-7d9f: container web containerPort {port}/TCP not allowed; policy allowed-ports allows containerPorts 80, 443, 8000-8999, 9090 and hostPorts none"
            )
        );
    }
    let (ok, msg, _, _) = decide(
        &s,
        review(
            "CREATE",
            with(json!([{"containerPort": 80, "hostPort": 80}])),
            None,
        ),
    )
    .await;
    assert!(!ok);
    assert!(
        msg.contains("container web hostPort 80/TCP not allowed"),
        "{msg}"
    );
}

#[tokio::test]
async fn annotations_example() {
    let s = TestServer::start_with(Some(&example("annotations")), |_| {}).await;
    let (ok, _, warnings, _) = decide(
        &s,
        review("CREATE", deployment("shop", 3, Value::Null), None),
    )
    .await;
    assert!(ok);
    assert_eq!(warnings, json!([]));
    let mut d = deployment("shop", 3, Value::Null);
    d["metadata"]["annotations"]["example.com/owner-email"] = json!("payments@gmail.com");
    d["spec"]["template"]["metadata"]["annotations"] = json!({"prometheus.io/scrape": "yes"});
    let (ok, msg, warnings, _) = decide(&s, review("CREATE", d, None)).await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Deployment shop/shop: annotation example.com/owner-email is `payments@gmail.com`, which does not match [a-z0-9._-]+@example\\.com; \
         policy owner-contact requires annotations example.com/owner-email matching [a-z0-9._-]+@example\\.com and example.com/runbook"
    );
    assert_eq!(
        warnings,
        json!([
            "Deployment shop/shop: annotation prometheus.io/scrape on the pod template is `yes`, which does not match true|false; \
                policy scrape-annotations requires annotations prometheus.io/scrape matching true|false on the pod template"
        ])
    );
}

#[tokio::test]
async fn labels_example() {
    let s = TestServer::start_with(Some(&example("labels")), |_| {}).await;
    assert!(
        decide(
            &s,
            review("CREATE", deployment("shop", 3, Value::Null), None)
        )
        .await
        .0
    );
    let mut d = deployment("shop", 3, Value::Null);
    d["spec"]["template"]["metadata"]["labels"] =
        json!({"app": "shop", "app.kubernetes.io/name": "shop"});
    let (ok, msg, _, _) = decide(&s, review("CREATE", d, None)).await;
    assert!(!ok);
    assert_eq!(
        msg,
        "Deployment shop/shop: label team is missing on the pod template; \
         policy team-labels requires labels team matching [a-z][a-z0-9-]{1,30} and app.kubernetes.io/name on the object and its pod template"
    );
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"cost-center": "1234"}}});
    let (ok, _, _, audits) = decide(&s, review("CREATE", ns, None)).await;
    assert!(ok);
    assert_eq!(
        audits,
        json!({"namespace-cost-center": "Namespace shop: label cost-center is `1234`, which does not match cc-[0-9]{4}; policy namespace-cost-center requires labels cost-center matching cc-[0-9]{4}"})
    );
}

#[tokio::test]
async fn forward_example_loads_and_is_skipped_offline() {
    let set = PolicySet::new(
        parse_policies(&example("forward"), "forward.yaml").unwrap(),
        vec![],
    )
    .unwrap();
    let body = review("CREATE", deployment("prod-shop", 3, Value::Null), None);
    let req = gatehouse::admission::decode(&body).unwrap();
    let d = set
        .evaluate_with(&req, &EvalOptions { offline: true })
        .await;
    assert!(d.allowed());
    let skipped: Vec<_> = d.skipped.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(
        skipped,
        vec![
            "policy change-freeze forwards to gatehouse-freeze.azurewebsites.net and is not called offline",
            "policy cost-check forwards to service-abc123-1250000000.gz.apigw.tencentcs.com and is not called offline",
        ]
    );
}
