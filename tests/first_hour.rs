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
