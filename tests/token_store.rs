//! One suite, two backends: the token store on SQLite and on PostgreSQL (the server in
//! GATEHOUSE_TEST_POSTGRES_URL, a fresh schema per test; skipped by name without it).
//! Issue, consume, reuse, expiry, namespace scope, revoke, dryRun (check without consuming),
//! prune, and values kept only as SHA-256.

mod common;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::tokens::TestStore;
use gatehouse::store::{self, IssueSpec, Tokens, UsedBy, Verdict};
use sqlx::Row as _;

const T0: i64 = 1_800_000_000;
const TIMEOUT: Duration = Duration::from_secs(10);

fn spec(count: u32, ttl_secs: u64, namespace: Option<&str>, note: &str) -> IssueSpec {
    IssueSpec {
        count,
        ttl: Duration::from_secs(ttl_secs),
        namespace: namespace.map(str::to_owned),
        note: note.to_owned(),
    }
}

fn by(uid: &str) -> UsedBy {
    UsedBy {
        user: "alice".into(),
        kind: "Deployment".into(),
        object: "app/web".into(),
        uid: uid.into(),
    }
}

async fn issue_one(tokens: &Tokens, ttl: u64, namespace: Option<&str>) -> (i64, String) {
    let t = tokens
        .issue(&spec(1, ttl, namespace, ""), T0)
        .await
        .unwrap()
        .remove(0);
    (t.id, t.token)
}

/// The behaviour every backend must have.
async fn suite(tokens: &Tokens) {
    // Issue: distinct, prefixed values; metadata listed, values not.
    let issued = tokens
        .issue(&spec(3, 60, None, "release 1.2"), T0)
        .await
        .unwrap();
    assert_eq!(issued.len(), 3);
    let values: HashSet<_> = issued.iter().map(|t| t.token.clone()).collect();
    assert_eq!(values.len(), 3);
    assert!(issued.iter().all(|t| t.token.starts_with("gate_")
        && t.token.len() >= 5 + 22
        && t.expires_at == T0 + 60));
    let listed = tokens.list().await.unwrap();
    assert_eq!(listed.len(), 3);
    assert!(listed.iter().all(|r| r.note == "release 1.2"
        && r.created_at == T0
        && r.expires_at == T0 + 60
        && r.state(T0) == "unused"));
    let listed_text = format!("{listed:?}{}", serde_json::to_string(&listed).unwrap());
    for v in &values {
        assert!(!listed_text.contains(v.as_str()));
    }

    // Consume, then reuse.
    let a = &issued[0];
    assert_eq!(
        tokens
            .consume(&a.token, Some("app"), T0 + 1, &by("uid-1"))
            .await
            .unwrap(),
        Verdict::Accepted { id: a.id }
    );
    match tokens
        .consume(&a.token, Some("app"), T0 + 2, &by("uid-2"))
        .await
        .unwrap()
    {
        Verdict::Used(r) => {
            assert_eq!(r.id, a.id);
            assert_eq!(r.used_at, Some(T0 + 1));
            assert_eq!(r.used_by, Some(by("uid-1")), "the first use is recorded");
        }
        other => panic!("reuse: {other:?}"),
    }
    // Surrounding whitespace (a YAML block scalar) does not matter.
    let b = &issued[1];
    assert_eq!(
        tokens
            .consume(
                &format!(" {}\n", b.token),
                Some("app"),
                T0 + 1,
                &by("uid-3")
            )
            .await
            .unwrap(),
        Verdict::Accepted { id: b.id }
    );

    // Unknown values.
    for bad in ["gate_not-a-real-token", "x", &"y".repeat(10_000)] {
        assert_eq!(
            tokens
                .consume(bad, Some("app"), T0, &by("u"))
                .await
                .unwrap(),
            Verdict::Unknown
        );
        assert_eq!(
            tokens.check(bad, Some("app"), T0).await.unwrap(),
            Verdict::Unknown
        );
    }

    // Expiry: valid through its last second, expired from `expires_at` on.
    let c = &issued[2];
    assert_eq!(
        tokens.check(&c.token, Some("app"), T0 + 59).await.unwrap(),
        Verdict::Accepted { id: c.id }
    );
    assert!(
        matches!(tokens.check(&c.token, Some("app"), T0 + 60).await.unwrap(), Verdict::Expired(r) if r.id == c.id)
    );
    assert!(matches!(
        tokens
            .consume(&c.token, Some("app"), T0 + 61, &by("u"))
            .await
            .unwrap(),
        Verdict::Expired(_)
    ));
    assert!(
        tokens
            .list()
            .await
            .unwrap()
            .iter()
            .any(|r| r.id == c.id && r.used_at.is_none())
    );

    // Namespace scope.
    let (d_id, d) = issue_one(tokens, 600, Some("team-a")).await;
    match tokens
        .consume(&d, Some("team-b"), T0 + 1, &by("u"))
        .await
        .unwrap()
    {
        Verdict::WrongNamespace(r) => assert_eq!(r.namespace.as_deref(), Some("team-a")),
        other => panic!("other namespace: {other:?}"),
    }
    assert!(matches!(
        tokens.consume(&d, None, T0 + 1, &by("u")).await.unwrap(),
        Verdict::WrongNamespace(_)
    ));
    assert_eq!(
        tokens
            .consume(&d, Some("team-a"), T0 + 2, &by("u"))
            .await
            .unwrap(),
        Verdict::Accepted { id: d_id }
    );
    // An unscoped token works anywhere, including for cluster-scoped objects.
    let (e_id, e) = issue_one(tokens, 600, None).await;
    assert_eq!(
        tokens.consume(&e, None, T0 + 1, &by("u")).await.unwrap(),
        Verdict::Accepted { id: e_id }
    );

    // Revoke.
    let (f_id, f) = issue_one(tokens, 600, None).await;
    let revoked = tokens.revoke(f_id, T0 + 5).await.unwrap().expect("revoked");
    assert_eq!(revoked.revoked_at, Some(T0 + 5));
    assert_eq!(
        tokens
            .revoke(f_id, T0 + 9)
            .await
            .unwrap()
            .unwrap()
            .revoked_at,
        Some(T0 + 5),
        "first revocation time kept"
    );
    assert!(matches!(
        tokens
            .consume(&f, Some("app"), T0 + 6, &by("u"))
            .await
            .unwrap(),
        Verdict::Revoked(_)
    ));
    assert!(matches!(
        tokens.check(&f, Some("app"), T0 + 6).await.unwrap(),
        Verdict::Revoked(_)
    ));
    assert_eq!(tokens.revoke(999_999, T0).await.unwrap(), None);

    // dryRun: checking does not consume, however often.
    let (g_id, g) = issue_one(tokens, 600, Some("app")).await;
    for _ in 0..3 {
        assert_eq!(
            tokens.check(&g, Some("app"), T0 + 1).await.unwrap(),
            Verdict::Accepted { id: g_id }
        );
    }
    assert!(matches!(
        tokens.check(&g, Some("other"), T0 + 1).await.unwrap(),
        Verdict::WrongNamespace(_)
    ));
    assert_eq!(
        tokens
            .consume(&g, Some("app"), T0 + 2, &by("real"))
            .await
            .unwrap(),
        Verdict::Accepted { id: g_id }
    );
    assert!(matches!(
        tokens.check(&g, Some("app"), T0 + 3).await.unwrap(),
        Verdict::Used(_)
    ));

    // Prune: nothing ended 10 minutes before T0+100; then everything that ended goes, the one
    // still usable stays.
    let (h_id, _h) = issue_one(tokens, 3600, None).await;
    assert_eq!(
        tokens
            .prune(Duration::from_secs(600), T0 + 100)
            .await
            .unwrap(),
        0
    );
    let before = tokens.list().await.unwrap().len();
    let removed = tokens.prune(Duration::ZERO, T0 + 100).await.unwrap();
    let left = tokens.list().await.unwrap();
    assert_eq!(removed as usize, before - 1);
    assert_eq!(left.iter().map(|r| r.id).collect::<Vec<_>>(), vec![h_id]);
}

/// Many consumers racing for one token: exactly one wins, the rest are told it was used.
async fn race(tokens: &Tokens) {
    let (id, token) = issue_one(tokens, 600, Some("app")).await;
    let tokens = Arc::new(tokens.clone());
    let token = Arc::new(token);
    let tasks: Vec<_> = (0..20)
        .map(|i| {
            let (tokens, token) = (tokens.clone(), token.clone());
            tokio::spawn(async move {
                tokens
                    .consume(&token, Some("app"), T0 + 1, &by(&format!("race-{i}")))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut accepted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Verdict::Accepted { id: got } => {
                assert_eq!(got, id);
                accepted += 1;
            }
            Verdict::Used(r) => assert_eq!(r.id, id),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(accepted, 1);
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let s = TestStore::sqlite();
    let tokens = s.open(TIMEOUT).await;
    suite(&tokens).await;
    race(&tokens).await;
    tokens.close().await;
    s.cleanup().await;
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let Some(s) = TestStore::postgres("store_suite_on_postgres").await else {
        return;
    };
    let tokens = s.open(TIMEOUT).await;
    suite(&tokens).await;
    race(&tokens).await;
    tokens.close().await;
    s.cleanup().await;
}

#[tokio::test]
async fn sqlite_keeps_only_hashes_in_an_owner_only_file() {
    let s = TestStore::sqlite();
    let tokens = s.open(TIMEOUT).await;
    let issued = tokens.issue(&spec(2, 60, None, ""), T0).await.unwrap();
    tokens.close().await;
    let TestStore::Sqlite(dir) = &s else {
        unreachable!()
    };
    let file = dir.path().join(store::SQLITE_FILE);
    let mut bytes = std::fs::read(&file).unwrap();
    if let Ok(wal) = std::fs::read(dir.path().join("tokens.db-wal")) {
        bytes.extend(wal);
    }
    for t in &issued {
        let hash = store::hash_token(&t.token);
        assert!(
            !contains(&bytes, t.token.as_bytes()),
            "token value in the database file"
        );
        assert!(
            !contains(&bytes, &t.token.as_bytes()[5..]),
            "token body in the database file"
        );
        assert!(contains(&bytes, &hash), "the SHA-256 is what is stored");
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{mode:o}");
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn postgres_keeps_only_hashes() {
    let Some(s) = TestStore::postgres("postgres_keeps_only_hashes").await else {
        return;
    };
    let tokens = s.open(TIMEOUT).await;
    let issued = tokens
        .issue(&spec(2, 60, Some("app"), "n"), T0)
        .await
        .unwrap();
    let TestStore::Postgres(pg) = &s else {
        unreachable!()
    };
    let mut conn = pg.connect().await;
    let rows = sqlx::query(
        "SELECT row_to_json(t)::text AS j, token_sha256 FROM gatehouse_tokens t ORDER BY id",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    for (row, t) in rows.iter().zip(&issued) {
        let json: String = row.try_get("j").unwrap();
        let hash: Vec<u8> = row.try_get("token_sha256").unwrap();
        assert!(
            !json.contains(&t.token) && !json.contains(&t.token[5..]),
            "{json}"
        );
        assert_eq!(hash, store::hash_token(&t.token).to_vec());
    }
    drop(conn);
    tokens.close().await;
    s.cleanup().await;
}

/// Opening twice (a restart, or a second replica) finds the migrations applied and the data
/// kept.
async fn reopen(s: &TestStore) {
    let first = s.open(TIMEOUT).await;
    let (id, token) = issue_one(&first, 600, None).await;
    first.close().await;
    let second = s.open(TIMEOUT).await;
    assert_eq!(
        second.check(&token, Some("x"), T0 + 1).await.unwrap(),
        Verdict::Accepted { id }
    );
    second.close().await;
}

#[tokio::test]
async fn reopening_keeps_tokens_on_sqlite() {
    let s = TestStore::sqlite();
    reopen(&s).await;
    s.cleanup().await;
}

#[tokio::test]
async fn reopening_keeps_tokens_on_postgres() {
    let Some(s) = TestStore::postgres("reopening_keeps_tokens_on_postgres").await else {
        return;
    };
    reopen(&s).await;
    s.cleanup().await;
}
