//! `gatehouse test`: the real binary on the shipped suites, on suites that pass and fail, and
//! on suite files it cannot use.

mod common;

use common::gatehouse;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = gatehouse().arg("test").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const POLICY: &str = "\
policies:
  - name: min-replicas
    kind: replicas
    match: {resources: [apps/deployments, apps/deployments/scale]}
    params: {min: 3}
  - name: team-label
    kind: labels
    action: warn
    match: {resources: [apps/deployments]}
    params: {on: [object], required: [{key: team}]}
";

/// A directory with `policy.yaml`, a manifest and the given suite files.
fn workspace(suites: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    std::fs::write(
        dir.path().join("manifests/two.yaml"),
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: two, namespace: shop, labels: {team: a}}\nspec: {replicas: 2}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: one, namespace: shop, labels: {team: a}}\nspec: {replicas: 1}\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("tests")).unwrap();
    for (name, text) in suites {
        std::fs::write(dir.path().join("tests").join(name), text).unwrap();
    }
    dir
}

const PASSING: &str = "\
kind: PolicyTest
name: replicas
policies: [../policy.yaml]
namespace: shop
cases:
  - name: both manifests are denied
    file: ../manifests/two.yaml
    expect: denied
    message: 'asks for \\d replicas?; policy min-replicas requires at least 3'
    fired: [min-replicas]
  - name: three replicas without a team are warned
    object: {apiVersion: apps/v1, kind: Deployment, metadata: {name: w}, spec: {replicas: 3}}
    expect: warned
    fired: [team-label]
  - name: a DaemonSet has no replicas to judge
    object: {apiVersion: apps/v1, kind: DaemonSet, metadata: {name: ds}, spec: {}}
    expect: allowed
";

#[test]
fn the_shipped_suites_pass() {
    let (code, stdout, stderr) = run(&["policies/tests"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        stdout.contains("PASS default: a Deployment with 2 replicas is denied"),
        "{stdout}"
    );
    let summary = stdout.lines().last().unwrap();
    assert!(summary.ends_with("failed; 0 unusable suites"), "{summary}");
    assert!(summary.contains(" passed, 0 failed"), "{summary}");
    // One line per case plus the summary; every shipped policy file has a suite.
    for name in [
        "default",
        "examples/annotations",
        "examples/forward",
        "examples/labels",
        "examples/one-time-token",
        "examples/ports",
        "examples/registries",
        "examples/replicas",
        "examples/resources",
    ] {
        assert!(
            stdout.contains(&format!("PASS {name}: ")),
            "no suite for {name}: {stdout}"
        );
    }
}

#[test]
fn passing_suites_exit_0_with_one_line_per_case() {
    let dir = workspace(&[("replicas.yaml", PASSING), ("not-a-suite.yaml", "a: 1\n")]);
    let (code, stdout, _) = run(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "PASS replicas: both manifests are denied",
            "PASS replicas: three replicas without a team are warned",
            "PASS replicas: a DaemonSet has no replicas to judge",
            "3 cases: 3 passed, 0 failed; 0 unusable suites",
        ]
    );
}

#[test]
fn failing_cases_are_named_with_the_reason_and_exit_1() {
    let failing = "\
kind: PolicyTest
policies: [../policy.yaml]
namespace: shop
cases:
  - name: wrong verdict
    object: {apiVersion: apps/v1, kind: Deployment, metadata: {name: w, labels: {team: a}}, spec: {replicas: 1}}
    expect: allowed
  - name: wrong message
    object: {apiVersion: apps/v1, kind: Deployment, metadata: {name: w, labels: {team: a}}, spec: {replicas: 1}}
    expect: denied
    message: at most
  - name: wrong policy
    object: {apiVersion: apps/v1, kind: Deployment, metadata: {name: w, labels: {team: a}}, spec: {replicas: 1}}
    expect: denied
    fired: [team-label]
  - name: right
    object: {apiVersion: apps/v1, kind: Deployment, metadata: {name: w, labels: {team: a}}, spec: {replicas: 5}}
    expect: allowed
";
    let dir = workspace(&[("failing.yaml", failing)]);
    let suite = dir.path().join("tests/failing.yaml");
    let (code, stdout, _) = run(&[suite.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}");
    let s = suite.display();
    let deny = "deny min-replicas: asks for 1 replica; policy min-replicas requires at least 3";
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            format!(
                "FAIL {s}: wrong verdict: object:1: Deployment shop/w: expected allowed, got denied ({deny})"
            ),
            format!(
                "FAIL {s}: wrong message: object:1: Deployment shop/w: no message matches `at most` ({deny})"
            ),
            format!(
                "FAIL {s}: wrong policy: object:1: Deployment shop/w: expected team-label to fire, fired: min-replicas"
            ),
            format!("PASS {s}: right"),
            "4 cases: 1 passed, 3 failed; 0 unusable suites".to_owned(),
        ]
    );
}

#[test]
fn unusable_suites_are_named_and_exit_2() {
    let bad_field = "kind: PolicyTest\npolicies: [../policy.yaml]\ncases:\n  - name: c\n    object: {apiVersion: v1, kind: Pod, metadata: {name: p}}\n    expect: allowd\n";
    let bad_policies = "kind: PolicyTest\npolicies: [../missing.yaml]\ncases:\n  - {name: c, object: {apiVersion: v1, kind: Pod, metadata: {name: p}}, expect: allowed}\n";
    let bad_regex = "kind: PolicyTest\npolicies: [../policy.yaml]\ncases:\n  - {name: c, object: {apiVersion: v1, kind: Pod, metadata: {name: p}}, expect: denied, message: '(open'}\n";
    let both = "kind: PolicyTest\npolicies: [../policy.yaml]\ncases:\n  - {name: c, file: x.yaml, object: {kind: Pod}, expect: denied}\n";
    let dir = workspace(&[
        ("a-field.yaml", bad_field),
        ("b-policies.yaml", bad_policies),
        ("c-regex.yaml", bad_regex),
        ("d-both.yaml", both),
        ("e-good.yaml", PASSING),
    ]);
    let (code, stdout, _) = run(&[dir.path().to_str().unwrap()]);
    assert_eq!(code, 2, "{stdout}");
    let t = dir.path().join("tests");
    let t = t.display();
    let lines: Vec<_> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "ERROR {t}/a-field.yaml: cases[0].expect: unknown variant `allowd`, expected one of `allowed`, `denied`, `warned`, `audited`, `skipped`"
        )
    );
    assert!(
        lines[1].starts_with(&format!(
            "ERROR {t}/b-policies.yaml: policies: {t}/../missing.yaml: cannot read"
        )),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        format!(
            "ERROR {t}/c-regex.yaml: cases[0] (c): message: `(open` is not a valid regular expression: unclosed group"
        )
    );
    assert_eq!(
        lines[3],
        format!("ERROR {t}/d-both.yaml: cases[0] (c): set file or object, not both")
    );
    // The usable suite still runs.
    assert_eq!(lines[4], "PASS replicas: both manifests are denied");
    assert_eq!(
        lines.last().unwrap(),
        &"3 cases: 3 passed, 0 failed; 4 unusable suites"
    );

    // A directory without suites, and a file that is not one.
    let empty = tempfile::tempdir().unwrap();
    let (code, stdout, _) = run(&[empty.path().to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stdout.contains("no test suites (YAML files with kind: PolicyTest)"),
        "{stdout}"
    );
    let (code, stdout, _) = run(&[dir.path().join("policy.yaml").to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(stdout.contains("policy.yaml: not a test suite"), "{stdout}");
}
