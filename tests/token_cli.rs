//! The `gatehouse` binary and tokens: `tokens issue|list|revoke|prune` on SQLite and on
//! PostgreSQL, `review` using the same store, a bad `database_url`, and `serve` with a token
//! policy and the token endpoint enabled, end to end.

mod common;

use common::gatehouse;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use common::tokens::{PgSchema, review_with_token};

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(cmd: &mut Command) -> Out {
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `gatehouse` with the store in `data` (SQLite) or at `url`.
fn with_store(data: &Path, url: Option<&str>) -> Command {
    let mut cmd = gatehouse();
    cmd.env("GATEHOUSE_DATA_DIR", data);
    if let Some(url) = url {
        cmd.env("GATEHOUSE_DATABASE_URL", url);
    }
    cmd
}

fn tokens_commands(data: &Path, url: Option<&str>) {
    let g = |args: &[&str]| run(with_store(data, url).arg("tokens").args(args));

    let out = g(&[
        "issue",
        "--count",
        "2",
        "--ttl",
        "30m",
        "--namespace",
        "app-ns",
        "--note",
        "release 1.2",
    ]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let values: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(values.len(), 2, "{}", out.stdout);
    assert!(
        values
            .iter()
            .all(|v| v.starts_with("gate_") && v.len() == 48),
        "{values:?}"
    );
    assert_ne!(values[0], values[1]);
    assert!(
        out.stderr
            .contains("issued 2 tokens (#1, #2), valid until ")
            && out
                .stderr
                .contains(" in namespace app-ns; tokens are shown only this once"),
        "{}",
        out.stderr
    );

    let list = g(&["list"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let lines: Vec<&str> = list.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", list.stdout);
    assert!(lines[0].starts_with("ID  STATE"), "{}", list.stdout);
    for (line, id) in lines[1..].iter().zip(["1", "2"]) {
        assert!(
            line.starts_with(id)
                && line.contains("unused")
                && line.contains("app-ns")
                && line.ends_with("release 1.2"),
            "{line}"
        );
    }
    for v in &values {
        assert!(!list.stdout.contains(v) && !list.stdout.contains(&v[5..]));
    }

    // `review` uses the same store: the first review consumes the token, the second is denied.
    let review = data.join("review.json");
    std::fs::write(&review, review_with_token("cli-1", Some(values[0]), false)).unwrap();
    let policies = common::repo().join("policies/examples/one-time-token.yaml");
    let r = run(with_store(data, url)
        .env("GATEHOUSE_POLICIES", &policies)
        .arg("review")
        .arg(&review));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = run(with_store(data, url)
        .env("GATEHOUSE_POLICIES", &policies)
        .arg("review")
        .arg(&review));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stdout.contains("which was already used at"),
        "{}",
        r.stdout
    );
    assert!(!r.stdout.contains(values[0]));

    let json = g(&["list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v[0]["id"], 1);
    assert!(v[0]["usedAt"].as_str().unwrap().ends_with('Z'));
    assert_eq!(v[0]["usedBy"]["uid"], "cli-1");
    assert_eq!(v[1]["usedAt"], serde_json::Value::Null);
    assert_eq!(v[1]["namespace"], "app-ns");

    let out = g(&["revoke", "2"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stdout.starts_with("revoked token #2 at "),
        "{}",
        out.stdout
    );
    let out = g(&["revoke", "99"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no token #99"), "{}", out.stderr);

    let out = g(&["prune", "--older-than", "1h"]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.starts_with("pruned 0 tokens"), "{}", out.stdout);
    let out = g(&["prune", "--older-than", "0s"]);
    assert!(
        out.stdout
            .starts_with("pruned 2 tokens expired, used or revoked before "),
        "{}",
        out.stdout
    );
    let list = g(&["list"]);
    assert_eq!(list.stdout.lines().count(), 1, "{}", list.stdout);

    let out = g(&["issue", "--count", "0"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("--count: 0 is not between 1 and 1000"),
        "{}",
        out.stderr
    );
    let out = g(&["issue", "--namespace", "App_NS"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("--namespace: `App_NS` is not a namespace name"),
        "{}",
        out.stderr
    );
    let out = g(&["issue", "--ttl", "soon"]);
    assert_eq!(out.code, 2);
    assert!(
        out.stderr.contains("`soon` is not a duration"),
        "{}",
        out.stderr
    );

    let out = g(&["issue", "--json", "--note", "ci"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert!(v[0]["token"].as_str().unwrap().starts_with("gate_"));
    assert!(v[0]["expiresAt"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn tokens_commands_on_sqlite() {
    let data = tempfile::tempdir().unwrap();
    tokens_commands(data.path(), None);
    assert!(data.path().join("tokens.db").is_file());
}

#[tokio::test]
async fn tokens_commands_on_postgres() {
    let Some(pg) = PgSchema::create("tokens_commands_on_postgres").await else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let url = pg.url.clone();
    let dir = data.path().to_path_buf();
    tokio::task::spawn_blocking(move || tokens_commands(&dir, Some(&url)))
        .await
        .unwrap();
    assert!(
        !data.path().join("tokens.db").exists(),
        "PostgreSQL, not SQLite"
    );
    pg.drop_schema().await;
}

#[test]
fn a_bad_database_url_fails_naming_the_key() {
    let data = tempfile::tempdir().unwrap();
    let out = run(with_store(data.path(), Some("mysql://db/x")).args(["tokens", "list"]));
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("database_url: `mysql://db/x` is not a postgres://"),
        "{}",
        out.stderr
    );

    // Unreachable PostgreSQL: the start fails, naming the store without its password.
    let out = run(
        with_store(data.path(), Some("postgres://gh:s3cret@127.0.0.1:1/gh"))
            .env("GATEHOUSE_DATABASE_TIMEOUT", "1s")
            .args(["tokens", "list"]),
    );
    assert_eq!(out.code, 2);
    assert!(
        out.stderr
            .contains("cannot open the token store (PostgreSQL postgres://gh:***@127.0.0.1:1/gh)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("s3cret"));
}

#[test]
fn embedded_defaults_do_not_open_the_store() {
    let data = tempfile::tempdir().unwrap();
    // A review on the defaults works even with an unusable store configured, and creates no file.
    let out = run(
        with_store(data.path(), Some("postgres://nobody@127.0.0.1:1/x"))
            .args(["review", "examples/reviews/create-3-replicas.json"]),
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let out =
        run(with_store(data.path(), None)
            .args(["review", "examples/reviews/create-3-replicas.json"]));
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(!data.path().join("tokens.db").exists());
}

/// `gatehouse serve` with the example token policy and the token endpoint: a pipeline gets a
/// token over HTTPS with the bearer key, the webhook admits it once, then SIGTERM stops all.
#[tokio::test]
async fn serve_with_token_endpoint_end_to_end() {
    let data = tempfile::tempdir().unwrap();
    let key = "k3y-for-the-test-0123456789abcdefghijkl";
    let key_file = data.path().join("admin.key");
    std::fs::write(&key_file, format!("{key}\n")).unwrap();
    let mut child = gatehouse()
        .env("XDG_DATA_HOME", data.path())
        .env("GATEHOUSE_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_TOKEN_ADMIN__LISTEN", "127.0.0.1:0")
        .env("GATEHOUSE_TOKEN_ADMIN__KEY_FILE", &key_file)
        .env(
            "GATEHOUSE_POLICIES",
            common::repo().join("policies/examples/one-time-token.yaml"),
        )
        .arg("serve")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let (mut webhook, mut endpoint) = (None, None);
    for line in stdout.lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("Gatehouse is listening on ") {
            webhook = Some(rest.replace("localhost", "127.0.0.1"));
        }
        if let Some(rest) = line.strip_prefix("Token endpoint: ") {
            endpoint = Some(rest.replace("localhost", "127.0.0.1"));
        }
        // The curl line is the last one `serve` prints: stop reading there (stdout closing
        // while it still prints would end the process).
        if line.trim_start().starts_with("curl ") {
            break;
        }
    }
    let (webhook, endpoint) = (
        webhook.expect("webhook line"),
        endpoint.expect("token endpoint line"),
    );
    let ca = std::fs::read_to_string(data.path().join("gatehouse/dev-certs/ca.crt")).unwrap();
    let client = common::https_client(&ca);

    let resp = client.post(&endpoint).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .post(&endpoint)
        .bearer_auth(key)
        .body(r#"{"ttl": "10m", "namespace": "app-ns", "note": "pipeline 7"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let v: serde_json::Value = resp.json().await.unwrap();
    let token = v["tokens"][0]["token"].as_str().unwrap().to_owned();

    let post = |uid: &str| {
        client
            .post(&webhook)
            .body(review_with_token(uid, Some(&token), false))
            .send()
    };
    let v: serde_json::Value = post("e2e-1").await.unwrap().json().await.unwrap();
    assert_eq!(v["response"]["allowed"], true, "{v}");
    let v: serde_json::Value = post("e2e-2").await.unwrap().json().await.unwrap();
    assert_eq!(v["response"]["allowed"], false);
    assert!(
        v["response"]["status"]["message"]
            .as_str()
            .unwrap()
            .contains("already used"),
        "{v}"
    );

    common::sigterm(&child);
    let exit = common::wait_exit(&mut child).await;
    assert!(exit.success(), "{exit:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!stderr.contains(&token), "the token value is never logged");
    assert!(!stderr.contains(key), "the key is never logged");
    assert!(data.path().join("gatehouse/tokens.db").is_file());
}
