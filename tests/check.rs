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
    let denied = "denied: asks for 2 replicas; policy min-replicas requires at least 3";
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            format!("Deployment app-ns/alpine-deploy: {denied}").as_str(),
            "Deployment app-ns/alpine-deploy: allowed",
            "Deployment app-ns/alpine-deploy: allowed",
            "Namespace app-ns: allowed",
            // examples/reviews/*.json are AdmissionReviews, evaluated as the API server sent them.
            format!("Deployment app-ns/alpine-deploy: {denied}").as_str(), // create-2-replicas-v1beta1
            format!("Deployment app-ns/alpine-deploy: {denied}").as_str(), // create-2-replicas
            "Deployment app-ns/alpine-deploy: allowed",                    // create-3-replicas
            "Deployment app-ns/alpine-deploy: allowed",                    // delete
            "Deployment app-ns/alpine-deploy (scale): denied: asks for 1 replica; policy min-replicas requires at least 3",
            "Deployment app-ns/alpine-deploy: allowed", // update-image
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
        "Deployment app-ns/alpine-deploy: allowed\nNamespace app-ns: allowed\n"
    );
}

#[test]
fn mixed_manifests_one_line_per_object_and_exit_1() {
    let (code, stdout, stderr) = check(&["-f", "tests/data/check/mixed", "--policies", POLICIES]);
    assert_eq!(code, 1, "{stderr}");
    let registries =
        "policy approved-registries allows images only from myregistry.io, docker.io/library";
    let resources = "policy container-resources requires requests cpu and limits memory set; memory limit at most 2Gi";
    let expected = [
        // batch/cronjob.yaml: a registry port is another registry; the forward policy is skipped.
        format!(
            "CronJob shop/nightly-report: denied: container report image `myregistry.io:5000/shop/report:3` \
             (myregistry.io:5000/shop/report) is not from an allowed registry; {registries}; \
             container report: memory limit 3Gi is above 2Gi; {resources} \
             | skipped: policy nightly-approval forwards to approvals.example.com and is not called offline"
        ),
        // deployments.yaml: no namespace → the default one; initContainer pinned by digest.
        "Deployment default/api: allowed".to_owned(),
        // Missing only the memory limit, and a port one above the range.
        format!(
            "Deployment jobs/worker: denied: container worker has no memory limit; {resources}; \
             container worker containerPort 8090/TCP not allowed; policy web-ports allows containerPorts 80, 8080-8089 and hostPorts none"
        ),
        "Deployment shop/frontend: warning: label team is missing on the pod template; policy team-label requires labels team on the pod template".to_owned(),
        // list.json
        "ConfigMap shop/shop-settings: allowed".to_owned(),
        "Service shop/web: allowed".to_owned(),
        // namespace.yml
        "Namespace shop: allowed".to_owned(),
        // pods.yaml
        "Pod shop/web: allowed".to_owned(),
        format!(
            "Pod shop/look-alike: denied: container web image `myregistry.io.evil.com/shop/web:1.4` \
             (myregistry.io.evil.com/shop/web) is not from an allowed registry; {registries}"
        ),
        format!(
            "Pod shop/debugged: denied: ephemeralContainer debugger image `registry.evil.io/tools/debug` \
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
                "tests/data/check/mixed/deployments.yaml document 1"
            ),
            (
                "Deployment",
                "jobs",
                "worker",
                "denied",
                "tests/data/check/mixed/deployments.yaml document 2"
            ),
            (
                "Deployment",
                "shop",
                "frontend",
                "warned",
                "tests/data/check/mixed/deployments.yaml document 3"
            ),
            (
                "CronJob",
                "shop",
                "nightly-report",
                "denied",
                "tests/data/check/mixed/batch/cronjob.yaml document 1"
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
        "Pod shop/fine: allowed\nConfigMap shop/before-the-break: allowed\n"
    );
    assert!(
        stderr.contains(
            "gatehouse check: tests/data/check/broken/half.yaml document 2: not valid YAML"
        ),
        "{stderr}"
    );
    assert!(
        stderr.contains("gatehouse check: tests/data/check/broken/no-kind.yaml document 1: not a Kubernetes object: no kind"),
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
        "Pod shop/fine: allowed\n"
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
        "CronJob shop/tidy: skipped: policy nightly-approval forwards to approvals.example.com and is not called offline\n"
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
    assert_eq!(first, "ConfigMap shop/settings-0: allowed\n");
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
