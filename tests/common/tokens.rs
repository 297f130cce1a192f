//! Helpers for the one-time token tests: a fresh store on either backend (PostgreSQL in a
//! schema of its own per test, so tests run in parallel and re-run cleanly), a TCP relay that
//! can be cut to take the database away mid-run, and reviews carrying a token.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse::policy::LoadContext;
use gatehouse::store::{self, DatabaseUrl, StoreSettings, TokenStoreSlot, Tokens};
use sqlx::Connection as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The variable naming the PostgreSQL server the PostgreSQL variants run against.
pub const PG_ENV: &str = "GATEHOUSE_TEST_POSTGRES_URL";

/// The PostgreSQL URL, or `None` after printing `SKIPPED <test>: …` to stderr.
pub fn pg_url_or_skip(test: &str) -> Option<String> {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.trim().is_empty() => Some(url),
        _ => {
            // Straight to the process's stderr, past the test harness's output capture, so a
            // plain `cargo test` shows which tests did not run.
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {PG_ENV} not set");
            None
        }
    }
}

/// A schema made for one test; dropped by [`PgSchema::drop_schema`], or when dropped (also
/// when the test panics).
pub struct PgSchema {
    /// The server URL with `search_path` set to the schema.
    pub url: String,
    base: String,
    schema: String,
    dropped: bool,
}

fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("randomness");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `base` with `search_path` set to `schema` through the startup `options`.
pub fn with_search_path(base: &str, schema: &str) -> String {
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

impl PgSchema {
    /// Creates `gh_<test>_<random>` on the server in [`PG_ENV`]; `None` (test skipped) when
    /// the variable is unset. Panics when it is set but the server cannot be used.
    pub async fn create(test: &str) -> Option<Self> {
        let base = pg_url_or_skip(test)?;
        let clean: String = test
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect();
        let mut schema = format!("gh_{clean}");
        schema.truncate(45);
        let schema = format!("{schema}_{}", random_hex(6));
        let mut conn = sqlx::PgConnection::connect(&base)
            .await
            .unwrap_or_else(|e| panic!("{PG_ENV} is set but PostgreSQL is unreachable: {e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
            .execute(&mut conn)
            .await
            .expect("create schema");
        let _ = conn.close().await;
        Some(Self {
            url: with_search_path(&base, &schema),
            base,
            schema,
            dropped: false,
        })
    }

    /// The schema's name.
    pub fn name(&self) -> &str {
        &self.schema
    }

    /// A direct connection into the schema (for looking at raw rows).
    pub async fn connect(&self) -> sqlx::PgConnection {
        sqlx::PgConnection::connect(&self.url)
            .await
            .expect("connect")
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(mut self) {
        drop_schema(&self.base, &self.schema).await;
        self.dropped = true;
    }
}

async fn drop_schema(base: &str, schema: &str) {
    if let Ok(mut conn) = sqlx::PgConnection::connect(base).await {
        let _ = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"
        )))
        .execute(&mut conn)
        .await;
        let _ = conn.close().await;
    }
}

impl Drop for PgSchema {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        // Not dropped explicitly (the test failed): clean up on a runtime of its own.
        let (base, schema) = (self.base.clone(), self.schema.clone());
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_schema(&base, &schema));
            }
        })
        .join();
    }
}

/// A store for one test on one backend.
pub enum TestStore {
    /// SQLite in a temporary directory.
    Sqlite(tempfile::TempDir),
    /// PostgreSQL in a schema of its own.
    Postgres(PgSchema),
}

impl TestStore {
    /// SQLite in a fresh temporary directory.
    pub fn sqlite() -> Self {
        TestStore::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    /// PostgreSQL in a fresh schema, or `None` (skipped) without [`PG_ENV`].
    pub async fn postgres(test: &str) -> Option<Self> {
        PgSchema::create(test).await.map(TestStore::Postgres)
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        match self {
            TestStore::Sqlite(_) => "sqlite",
            TestStore::Postgres(_) => "postgres",
        }
    }

    /// Store settings pointing at this store.
    pub fn settings(&self, timeout: Duration) -> StoreSettings {
        match self {
            TestStore::Sqlite(dir) => StoreSettings {
                url: None,
                data_dir: dir.path().to_path_buf(),
                timeout,
            },
            TestStore::Postgres(pg) => StoreSettings {
                url: Some(DatabaseUrl::new(pg.url.clone())),
                data_dir: std::env::temp_dir(),
                timeout,
            },
        }
    }

    /// Opens (and migrates) the store.
    pub async fn open(&self, timeout: Duration) -> Tokens {
        store::open(&self.settings(timeout))
            .await
            .unwrap_or_else(|e| panic!("open {} store: {e}", self.backend()))
    }

    /// A policy load context holding an open store.
    pub async fn context(&self, timeout: Duration) -> LoadContext {
        LoadContext {
            token_store: TokenStoreSlot::with_tokens(self.open(timeout).await),
        }
    }

    /// Removes what the test made (the PostgreSQL schema).
    pub async fn cleanup(self) {
        if let TestStore::Postgres(pg) = self {
            pg.drop_schema().await;
        }
    }
}

/// Forwards TCP connections to a target until cut: then the listener closes and every
/// forwarded connection is dropped, as when a database host goes away.
pub struct TcpRelay {
    /// Where clients connect.
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl TcpRelay {
    /// Starts relaying to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let tracked = conns.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tracked.lock().unwrap().push(task);
            }
        });
        Self {
            addr,
            accept,
            conns,
        }
    }

    /// Stops accepting and drops every relayed connection.
    pub fn cut(&self) {
        self.accept.abort();
        for task in self.conns.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// `url` with its `host:port` replaced by `addr`, and the host:port it named.
pub fn redirect_url(url: &str, addr: SocketAddr) -> (String, String) {
    let start = url.find("://").expect("scheme") + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5432")
    };
    (
        format!("{}{userinfo}{addr}{}", &url[..start], &rest[end..]),
        hostport,
    )
}

/// The create-3-replicas review (allowed by `min-replicas`) with uid `uid`, the token (if any)
/// in `gatehouse.dev/token`, and `dryRun` set as asked.
pub fn review_with_token(uid: &str, token: Option<&str>, dry_run: bool) -> Vec<u8> {
    super::example_review("create-3-replicas", |v| {
        v["request"]["uid"] = serde_json::json!(uid);
        v["request"]["dryRun"] = serde_json::json!(dry_run);
        if let Some(t) = token {
            v["request"]["object"]["metadata"]["annotations"] =
                serde_json::json!({"gatehouse.dev/token": t});
        }
    })
}

/// Policies: a `one-time-token` policy on Deployments plus `min-replicas` (listed second;
/// the token policy still runs last).
pub const TOKEN_POLICIES: &str = "
- name: deploy-token
  kind: one-time-token
  match: {resources: [apps/deployments], operations: [CREATE, UPDATE]}
- name: min-replicas
  kind: replicas
  match: {resources: [apps/deployments, apps/deployments/scale]}
  params: {min: 3}
";
