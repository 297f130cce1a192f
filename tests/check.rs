//! `gatehouse check`: the real binary on `examples/`, on a directory of mixed manifests
//! (`tests/data/check/mixed`), on unreadable input, and with JSON output.

mod common;

use common::gatehouse;

use std::io::Write;
use std::process::Stdio;

fn check(args: &[&str]) -> (i32, String, String) {
    let out = gatehouse().arg("check").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const POLICIES: &str = "tests/data/check/policies.yaml";

#[test]
fn examples_directory_with_the_default_policies() {
    let (code, stdout, stderr) = check(&["-f", "examples/"]);
    assert_eq!(code, 1, "{stderr}");
    let deny = "  deny min-replicas: asks for 2 replicas; policy min-replicas requires at least 3";
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "examples/deployment-2-replicas.yaml:1: Deployment app-ns/alpine-deploy: denied",
            deny,
            "examples/deployment-3-replicas.yaml:1: Deployment app-ns/alpine-deploy: allowed",
            "examples/deployment-image-update.yaml:1: Deployment app-ns/alpine-deploy: allowed",
            // No default policy matches a Namespace: visible, not a silent pass.
            "examples/namespace.yaml:1: Namespace app-ns: allowed (no policy matched)",
            // examples/reviews/*.json are AdmissionReviews, evaluated as the API server sent them.
            "examples/reviews/create-2-replicas-v1beta1.json:1: Deployment app-ns/alpine-deploy: denied",
            deny,
            "examples/reviews/create-2-replicas.json:1: Deployment app-ns/alpine-deploy: denied",
            deny,
            "examples/reviews/create-3-replicas.json:1: Deployment app-ns/alpine-deploy: allowed",
            "examples/reviews/delete.json:1: Deployment app-ns/alpine-deploy: allowed (no policy matched)",
            "examples/reviews/scale-to-1.json:1: Deployment app-ns/alpine-deploy (scale): denied",
            "  deny min-replicas: asks for 1 replica; policy min-replicas requires at least 3",
            "examples/reviews/update-image.json:1: Deployment app-ns/alpine-deploy: allowed",
        ]
    );
    assert!(
        stderr.contains("10 objects: 6 allowed, 4 denied, 0 warned, 0 audited, 0 with skipped policies; 0 unreadable inputs"),
        "{stderr}"
    );

    let (code, stdout, _) = check(&[
        "-f",
        "examples/deployment-3-replicas.yaml",
        "-f",
        "examples/namespace.yaml",
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        stdout,
        "examples/deployment-3-replicas.yaml:1: Deployment app-ns/alpine-deploy: allowed\n\
         examples/namespace.yaml:1: Namespace app-ns: allowed (no policy matched)\n"
    );
}

#[test]
fn mixed_manifests_one_line_per_object_and_exit_1() {
    let (code, stdout, stderr) = check(&["-f", "tests/data/check/mixed", "--policies", POLICIES]);
    assert_eq!(code, 1, "{stderr}");
    let registries =
        "policy approved-registries allows images only from myregistry.io, docker.io/library";
    let resources = "policy container-resources requires requests cpu and limits memory set; memory limit at most 2Gi";
    let m = "tests/data/check/mixed";
    let expected = [
        // batch/cronjob.yaml: a registry port is another registry; the forward policy is skipped.
        format!("{m}/batch/cronjob.yaml:1: CronJob shop/nightly-report: denied"),
        format!(
            "  deny approved-registries: container report image `myregistry.io:5000/shop/report:3` \
             (myregistry.io:5000/shop/report) is not from an allowed registry; {registries}"
        ),
        format!("  deny container-resources: container report: memory limit 3Gi is above 2Gi; {resources}"),
        "  skip nightly-approval: policy nightly-approval forwards to approvals.example.com and is not called offline".to_owned(),
        // deployments.yaml: no namespace → the default one; initContainer pinned by digest.
        format!("{m}/deployments.yaml:1: Deployment default/api: allowed"),
        // Missing only the memory limit, and a port one above the range.
        format!("{m}/deployments.yaml:2: Deployment jobs/worker: denied"),
        format!("  deny container-resources: container worker has no memory limit; {resources}"),
        "  deny web-ports: container worker containerPort 8090/TCP not allowed; policy web-ports allows containerPorts 80, 8080-8089 and hostPorts none".to_owned(),
        format!("{m}/deployments.yaml:3: Deployment shop/frontend: warned"),
        "  warn team-label: label team is missing on the pod template; policy team-label requires labels team on the pod template".to_owned(),
        // list.json
        format!("{m}/list.json:1 items[0]: ConfigMap shop/shop-settings: allowed (no policy matched)"),
        format!("{m}/list.json:1 items[1]: Service shop/web: allowed (no policy matched)"),
        // namespace.yml
        format!("{m}/namespace.yml:1: Namespace shop: allowed (no policy matched)"),
        // pods.yaml
        format!("{m}/pods.yaml:1: Pod shop/web: allowed"),
        format!("{m}/pods.yaml:2: Pod shop/look-alike: denied"),
        format!(
            "  deny approved-registries: container web image `myregistry.io.evil.com/shop/web:1.4` \
             (myregistry.io.evil.com/shop/web) is not from an allowed registry; {registries}"
        ),
        format!("{m}/pods.yaml:3: Pod shop/debugged: denied"),
        format!(
            "  deny approved-registries: ephemeralContainer debugger image `registry.evil.io/tools/debug` \
             (registry.evil.io/tools/debug) is not from an allowed registry; {registries}"
        ),
    ];
    assert_eq!(stdout.lines().collect::<Vec<_>>(), expected);
    // notes.txt and .hidden.yaml (not valid YAML) are not read.
    assert!(
        !stderr.contains("hidden") && !stderr.contains("notes"),
        "{stderr}"
    );
    assert!(
        stderr.contains("10 objects: 5 allowed, 4 denied, 1 warned, 0 audited, 1 with skipped policies; 0 unreadable inputs"),
        "{stderr}"
    );
}

#[test]
fn json_output_carries_findings_user_and_sources() {
    let (code, stdout, _) = check(&[
        "-f",
        "tests/data/check/mixed/deployments.yaml",
        "-f",
        "tests/data/check/mixed/batch",
        "--policies",
        POLICIES,
        "-o",
        "json",
        "--user",
        "ci-bot",
        "--group",
        "ci",
        "-n",
        "staging",
    ]);
    assert_eq!(code, 1);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["errors"], serde_json::json!([]));
    let objects = v["objects"].as_array().unwrap();
    let summary: Vec<_> = objects
        .iter()
        .map(|o| {
            (
                o["kind"].as_str().unwrap(),
                o["namespace"].as_str().unwrap(),
                o["name"].as_str().unwrap(),
                o["decision"].as_str().unwrap(),
                o["source"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "Deployment",
                "staging",
                "api",
                "allowed",
                "tests/data/check/mixed/deployments.yaml:1"
            ),
            (
                "Deployment",
                "jobs",
                "worker",
                "denied",
                "tests/data/check/mixed/deployments.yaml:2"
            ),
            (
                "Deployment",
                "shop",
                "frontend",
                "warned",
                "tests/data/check/mixed/deployments.yaml:3"
            ),
            (
                "CronJob",
                "shop",
                "nightly-report",
                "denied",
                "tests/data/check/mixed/batch/cronjob.yaml:1"
            ),
        ]
    );
    for o in objects {
        assert_eq!(o["operation"], "CREATE");
        assert_eq!(o["user"], "ci-bot");
    }
    let worker = &objects[1];
    let policies: Vec<_> = worker["denials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["policy"].as_str().unwrap())
        .collect();
    assert_eq!(policies, vec!["container-resources", "web-ports"]);
    assert_eq!(worker["allowed"], false);
    // Which policies matched and were evaluated, so an allow from a match that never fired
    // shows.
    let evaluated: Vec<_> = objects[0]["evaluated"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(objects[0]["matched"], true);
    assert!(evaluated.contains(&"approved-registries"), "{evaluated:?}");
    let cron = &objects[3];
    assert_eq!(cron["skipped"][0]["policy"], "nightly-approval");
    assert_eq!(objects[2]["warnings"][0]["policy"], "team-label");
}

#[test]
fn unreadable_input_exits_2_and_still_reports_the_readable_objects() {
    let (code, stdout, stderr) = check(&["-f", "tests/data/check/broken", "--policies", POLICIES]);
    assert_eq!(code, 2, "{stderr}");
    assert_eq!(
        stdout,
        "tests/data/check/broken/good.yaml:1: Pod shop/fine: allowed\n\
         tests/data/check/broken/half.yaml:1: ConfigMap shop/before-the-break: allowed (no policy matched)\n"
    );
    assert!(
        stderr.contains("gatehouse check: tests/data/check/broken/half.yaml:2: not valid YAML"),
        "{stderr}"
    );
    assert!(
        stderr.contains("gatehouse check: tests/data/check/broken/no-kind.yaml:1: not a Kubernetes object: no kind"),
        "{stderr}"
    );

    let (code, stdout, stderr) = check(&["-f", "tests/data/check/no-such-dir"]);
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("tests/data/check/no-such-dir: cannot read"),
        "{stderr}"
    );

    let empty = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check(&["-f", empty.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("no manifests (*.yaml, *.yml, *.json)"),
        "{stderr}"
    );

    // A bad policy file is unusable configuration: exit 2, naming file, policy and field.
    let (code, _, stderr) = check(&[
        "-f",
        "examples/",
        "--policies",
        "tests/data/check/mixed/pods.yaml",
    ]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("tests/data/check/mixed/pods.yaml"),
        "{stderr}"
    );
}

#[test]
fn stdin_and_all_allowed_exit_0() {
    let mut child = gatehouse()
        .args(["check", "-f", "-", "--policies", POLICIES])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&common::read("tests/data/check/broken/good.yaml"))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "stdin:1: Pod shop/fine: allowed\n"
    );
}

#[test]
fn only_skipped_policies_are_not_reported_as_passed() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("cron.yaml");
    std::fs::write(
        &manifest,
        "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: tidy, namespace: shop}\nspec:\n  schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          containers:\n            - {name: tidy, image: myregistry.io/tidy:1, resources: {requests: {cpu: 10m}, limits: {memory: 32Mi}}}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = check(&["-f", manifest.to_str().unwrap(), "--policies", POLICIES]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        format!(
            "{}:1: CronJob shop/tidy: skipped\n  skip nightly-approval: policy nightly-approval forwards to approvals.example.com and is not called offline\n",
            manifest.display()
        )
    );
    assert!(stderr.contains("1 object: 0 allowed, 0 denied"), "{stderr}");
}

#[test]
fn a_closed_output_pipe_ends_the_listing_without_a_panic() {
    use std::io::{BufRead, BufReader, Read};
    // More output than a pipe buffers (3000 lines of ~50 bytes), so the writer meets the
    // closed pipe for sure.
    let items: Vec<_> = (0..3000)
        .map(|i| serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("settings-{i}"), "namespace": "shop"}}))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("many.json");
    std::fs::write(
        &file,
        serde_json::to_vec(
            &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}),
        )
        .unwrap(),
    )
    .unwrap();
    let mut child = gatehouse()
        .args(["check", "-f", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert_eq!(
        first,
        format!(
            "{}:1 items[0]: ConfigMap shop/settings-0: allowed (no policy matched)\n",
            file.display()
        )
    );
    // The reader is dropped here, closing the pipe like `| head -1`.
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
