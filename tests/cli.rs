//! The `gatehouse` binary: `review` exit codes, config and policy errors at start, and
//! `serve` on its embedded defaults (dev certificate, default policies) until SIGTERM.

mod common;

use common::gatehouse;

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

fn review(file: &str) -> (i32, String, String) {
    let out = gatehouse().args(["review", file]).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn review_exit_codes_on_the_examples() {
    for (file, code, allowed) in [
        ("examples/reviews/create-2-replicas.json", 1, false),
        ("examples/reviews/create-3-replicas.json", 0, true),
        ("examples/reviews/update-image.json", 0, true),
        ("examples/reviews/create-2-replicas-v1beta1.json", 1, false),
        ("examples/reviews/scale-to-1.json", 1, false),
        ("examples/reviews/delete.json", 0, true),
    ] {
        let (got, stdout, stderr) = review(file);
        assert_eq!(got, code, "{file}: {stderr}");
        let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert_eq!(v["response"]["allowed"], allowed, "{file}");
        assert_eq!(v["kind"], "AdmissionReview");
    }
}

#[test]
fn review_reads_stdin_and_reports_unreadable_input_with_exit_2() {
    let mut child = gatehouse()
        .args(["review", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&common::read("examples/reviews/create-2-replicas.json"))
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"]["uid"], "8d1c6a3e-0b52-4c3f-9d8e-2a1f6b7c0d01");

    let (code, stdout, stderr) = review("examples/no-such-file.json");
    assert_eq!(code, 2);
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("examples/no-such-file.json: cannot read"),
        "{stderr}"
    );

    let (code, _, stderr) = review("examples/namespace.yaml");
    assert_eq!(code, 2);
    assert!(
        stderr.contains("body is not an AdmissionReview"),
        "{stderr}"
    );
}

#[test]
fn invalid_config_fails_with_one_line_naming_the_key() {
    let out = gatehouse()
        .env("GATEHOUSE_LISTEN", "somewhere")
        .args(["review", "examples/reviews/delete.json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("key `listen`") && stderr.contains("GATEHOUSE_LISTEN"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.yaml");
    std::fs::write(&file, "limits:\n  max_body_byte: 10\n").unwrap();
    let out = gatehouse()
        .args(["--config", file.to_str().unwrap(), "serve"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("max_body_byte") && stderr.contains("gatehouse.yaml"),
        "{stderr}"
    );

    // In the file's own terms: no Rust type names, no doubled backticks.
    for (text, expected) in [
        (
            "lisen: 1\n",
            "key `lisen`: unknown field `lisen`, expected one of `listen`, ",
        ),
        (
            "notify:\n  concurrency: many\n",
            "key `notify.concurrency`: expected a whole number of 0 or more, found the text \"many\"",
        ),
        (
            "excluded_namespaces: kube-system\n",
            "key `excluded_namespaces`: expected a list, found the text \"kube-system\"",
        ),
    ] {
        std::fs::write(&file, text).unwrap();
        let out = gatehouse()
            .args(["--config", file.to_str().unwrap(), "serve"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{stderr}");
        for bad in ["``", "usize", "u32", "sequence", "struct "] {
            assert!(!stderr.contains(bad), "{bad} in {stderr}");
        }
    }
}

#[test]
fn bad_policy_file_fails_at_start_naming_file_policy_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.yaml");
    std::fs::write(
        &file,
        "- name: min-replicas\n  kind: replicas\n  match: {resources: [deployments]}\n  params: {minimum: 3}\n",
    )
    .unwrap();
    let out = gatehouse()
        .env("GATEHOUSE_POLICIES", &file)
        .env("GATEHOUSE_DATA_DIR", dir.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "team.yaml: policy \"min-replicas\": params.minimum: unknown field `minimum`"
        ),
        "{stderr}"
    );
}

#[test]
fn empty_policy_file_fails_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("team.yaml");
    std::fs::write(&file, "# every policy moved away\n").unwrap();
    let out = gatehouse()
        .env("GATEHOUSE_POLICIES", &file)
        .env("GATEHOUSE_DATA_DIR", dir.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("team.yaml: the file holds no policies; an empty file would allow everything, so write `policies: []` if an empty set is meant"),
        "{stderr}"
    );
}

/// `gatehouse serve` with nothing configured but free ports and a private data directory:
/// it makes a development CA, prints a curl line, answers over TLS, and exits on SIGTERM.
#[tokio::test]
async fn serve_runs_on_embedded_defaults_and_stops_on_sigterm() {
    let data = tempfile::tempdir().unwrap();
    let mut child = gatehouse()
        .env("XDG_DATA_HOME", data.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut lines = Vec::new();
    let mut curl = None;
    for line in stdout.lines() {
        let line = line.unwrap();
        lines.push(line.clone());
        if line.trim_start().starts_with("curl ") {
            curl = Some(line);
            break;
        }
    }
    let curl = curl.unwrap_or_else(|| panic!("no curl line in {lines:?}"));
    let ca_path = data.path().join("gatehouse/dev-certs/ca.crt");
    assert!(
        curl.contains(&format!("--cacert {}", ca_path.display())),
        "{curl}"
    );
    assert!(
        curl.contains("@examples/reviews/create-2-replicas.json"),
        "{curl}"
    );
    let url = curl.split_whitespace().last().unwrap().to_owned();
    let port: u16 = url
        .trim_start_matches("https://localhost:")
        .trim_end_matches("/validate")
        .parse()
        .unwrap();

    let ca = std::fs::read_to_string(&ca_path).unwrap();
    let client = common::https_client(&ca);
    let resp = client
        .post(format!("https://127.0.0.1:{port}/validate"))
        .body(common::read("examples/reviews/create-2-replicas.json"))
        .send()
        .await
        .unwrap();
    let v: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(v["response"]["allowed"], false);

    common::sigterm(&child);
    let exit = common::wait_exit(&mut child).await;
    assert!(exit.success(), "{exit:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(stderr.contains("received SIGTERM"), "{stderr}");
    assert!(
        stderr.contains("decision=denied") || stderr.contains("decision=\"denied\""),
        "{stderr}"
    );

    // A second start reuses the same development CA.
    let mut again = gatehouse()
        .env("XDG_DATA_HOME", data.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .arg("serve")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let first = BufReader::new(again.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(first.contains("listening"), "{first}");
    common::sigterm(&again);
    again.wait().unwrap();
    assert_eq!(std::fs::read_to_string(&ca_path).unwrap(), ca);
}
