//! What a new user meets in the first hour: commands piped into a reader that stops early
//! (`| head`), `review` given a manifest, `certs --out` given a file.

mod common;

use std::process::{Command, Stdio};

use common::gatehouse;

struct Out {
    code: Option<i32>,
    stderr: String,
}

/// Runs `cmd` with a stdout whose reading end is already closed, so the first write fails with
/// a broken pipe, as under `| head` once head has exited.
fn with_closed_stdout(cmd: &mut Command) -> Out {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = cmd
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run gatehouse");
    Out {
        code: out.status.code(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn assert_no_panic(what: &str, out: &Out, code: i32) {
    assert_eq!(out.code, Some(code), "{what}: {}", out.stderr);
    assert!(
        !out.stderr.contains("panicked") && !out.stderr.contains("Broken pipe"),
        "{what}: {}",
        out.stderr
    );
}

#[test]
fn review_certs_and_tokens_keep_their_exit_codes_when_stdout_closes() {
    for (file, code) in [
        ("examples/reviews/create-3-replicas.json", 0),
        ("examples/reviews/create-2-replicas.json", 1),
    ] {
        let out = with_closed_stdout(gatehouse().args(["review", file]));
        assert_no_panic(file, &out, code);
    }

    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let out = with_closed_stdout(gatehouse().args([
        "certs",
        "--service",
        "gatehouse",
        "--namespace",
        "gatehouse",
        "--out",
        certs.to_str().unwrap(),
    ]));
    assert_no_panic("certs", &out, 0);
    assert!(certs.join("ca.crt").is_file() && certs.join("tls.key").is_file());
    assert!(
        out.stderr
            .contains("stdout is closed; the caBundle is base64 of"),
        "{}",
        out.stderr
    );

    let tokens = |args: &[&str]| {
        let mut cmd = gatehouse();
        cmd.env("XDG_DATA_HOME", dir.path())
            .arg("tokens")
            .args(args);
        cmd
    };
    let out = with_closed_stdout(&mut tokens(&["issue", "--count", "3"]));
    assert_no_panic("tokens issue", &out, 0);
    assert!(
        out.stderr
            .contains("stdout closed before every token was printed")
            && out.stderr.contains("issued 3 tokens"),
        "{}",
        out.stderr
    );
    for args in [&["list"][..], &["list", "--json"], &["prune"]] {
        let out = with_closed_stdout(&mut tokens(args));
        assert_no_panic(&format!("tokens {args:?}"), &out, 0);
    }
    // The store holds what was issued although nobody saw it.
    let listed = tokens(&["list", "--json"]).output().unwrap();
    let records: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(records.as_array().map(Vec::len), Some(3), "{records}");
}

#[test]
fn review_given_a_manifest_points_to_check() {
    let out = gatehouse()
        .args(["review", "examples/deployment-2-replicas.yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the input is not JSON (YAML, or a Kubernetes manifest?)")
            && stderr.contains("run `gatehouse check examples/deployment-2-replicas.yaml`"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn certs_out_naming_a_file_says_it_wants_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.crt");
    std::fs::write(&file, "keep me").unwrap();
    let out = gatehouse()
        .args(["certs", "--service", "a", "--namespace", "b", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        stderr.trim(),
        format!(
            "gatehouse certs: --out {} is a file: --out names the directory for ca.crt, tls.crt and tls.key",
            file.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
}

/// Starts `gatehouse serve` with `env`, returns the start summary block from its stderr, and
/// stops it with SIGTERM.
fn start_summary(env: &[(&str, &str)]) -> Vec<String> {
    use std::io::{BufRead, BufReader};
    let data = tempfile::tempdir().unwrap();
    let mut cmd = gatehouse();
    cmd.env("XDG_DATA_HOME", data.path())
        .env("GATEHOUSE_LISTEN", "localhost:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut block = Vec::new();
    let mut seen = Vec::new();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line == "Gatehouse starts with:" || !block.is_empty() {
            block.push(line.clone());
        }
        if line.starts_with("  listening: ") {
            break;
        }
    }
    common::sigterm(&child);
    seen.extend(lines.map_while(Result::ok));
    let status = child.wait().unwrap();
    assert!(!block.is_empty(), "no start summary in {seen:#?}");
    assert!(status.success(), "{status:?}: {seen:#?}");
    block
}

#[test]
fn the_start_summary_says_what_is_in_force() {
    let block = start_summary(&[
        ("GATEHOUSE_SMS_TO", "+15551230001,+4930123456"),
        ("GATEHOUSE_EXCLUDED_NAMESPACES", "kube-system,gatehouse"),
    ]);
    assert_eq!(block.len(), 10, "{block:#?}");
    assert_eq!(
        block[1..9],
        [
            "  1 policy from policies/default.yaml (embedded):",
            "    min-replicas (replicas, deny)",
            "  3 notification rules:",
            "    deployment-created: on created; channels sms; 2 SMS recipients (GATEHOUSE_SMS_TO: +*******0001, +******3456)",
            "    deployment-updated: on updated; channels sms; 2 SMS recipients (GATEHOUSE_SMS_TO: +*******0001, +******3456)",
            "    any-denied: on denied; channels sms; 2 SMS recipients (GATEHOUSE_SMS_TO: +*******0001, +******3456)",
            "  Twilio: not configured: SMS are written to the log instead",
            "  excluded namespaces: kube-system, gatehouse",
        ],
        "{block:#?}"
    );
    // `localhost` was resolved at start; both listeners on ports the OS chose.
    let listening = &block[9];
    let re = regex::Regex::new(
        r"^  listening: webhook https://127\.0\.0\.1:[1-9][0-9]*/validate; health and metrics http://127\.0\.0\.1:[1-9][0-9]*$",
    )
    .unwrap();
    assert!(re.is_match(listening), "{listening}");
    assert!(
        !block.iter().any(|l| l.contains("5551230001")),
        "numbers are masked: {block:#?}"
    );
}

#[test]
fn a_policies_setting_replaces_the_defaults_and_the_summary_says_so() {
    let block = start_summary(&[
        ("GATEHOUSE_POLICIES", "policies/examples/replicas.yaml"),
        ("GATEHOUSE_SMS_TO", "+15551230001"),
    ]);
    assert_eq!(
        block[1..4],
        [
            "  1 policy from policies/examples/replicas.yaml; `policies` replaces the embedded defaults, their notification rules included:",
            "    min-replicas-prod (replicas, deny)",
            "  0 notification rules:",
        ],
        "{block:#?}"
    );
}

#[test]
fn a_start_error_is_printed_once_in_either_log_format() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.yaml");
    std::fs::write(
        &file,
        "- name: min-replicas\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {minimum: 3}\n",
    )
    .unwrap();
    for (format, wanted) in [
        (
            "text",
            "team.yaml: policy \"min-replicas\": params.minimum: unknown field `minimum`",
        ),
        (
            "json",
            "team.yaml: policy \\\"min-replicas\\\": params.minimum: unknown field `minimum`",
        ),
    ] {
        let out = gatehouse()
            .env("GATEHOUSE_POLICIES", &file)
            .env("GATEHOUSE_DATA_DIR", dir.path())
            .env("GATEHOUSE_LOG_FORMAT", format)
            .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
            .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
            .arg("serve")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{format}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.matches(wanted).count(), 1, "{format}: {stderr}");
    }
}

#[test]
fn unknown_nested_variables_warn_and_the_server_starts() {
    let block = start_summary(&[
        ("GATEHOUSE_LIMITS__MAX_BODY", "10"),
        ("GATEHOUSE_EXCLUDED_NAMESPACES", "team-a"),
    ]);
    assert!(
        block.iter().any(|l| l == "  excluded namespaces: team-a"),
        "{block:#?}"
    );
}
