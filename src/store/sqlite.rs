//! SQLite backend: one file (by default `tokens.db` in the data directory), for one replica
//! and development. WAL journal; writers wait for each other up to the busy timeout, so the
//! conditional UPDATE that consumes a token runs for one caller at a time.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Row as _, SqlSafeStr as _};

use super::{
    NewToken, StoreError, TokenHash, TokenRecord, TokenStore, UsedBy, record_from_row,
    token_columns,
};

/// The SQLite token store.
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating if needed, readable by the owner only) the database file at `path`.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, StoreError> {
        let cannot = |e: std::io::Error| {
            StoreError::Config(format!("cannot create {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(cannot)?;
        }
        if !path.exists() {
            let mut open = std::fs::OpenOptions::new();
            open.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt as _;
                open.mode(0o600);
            }
            match open.open(path) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(cannot(e)),
            }
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(timeout.max(Duration::from_secs(5)));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(timeout)
            .connect_with(options)
            .await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn migrator() -> Migrator {
    let mut m = Migrator::with_migrations(vec![Migration::new(
        1,
        Cow::Borrowed("tokens"),
        MigrationType::Simple,
        include_str!("../../migrations/sqlite/0001_tokens.sql").into_sql_str(),
        false,
    )]);
    m.dangerous_set_table_name("_gatehouse_migrations");
    m
}

impl TokenStore for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            migrator().run(&self.pool).await?;
            Ok(())
        })
    }

    fn insert<'a>(&'a self, t: &'a NewToken) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "INSERT INTO gatehouse_tokens (token_sha256, created_at, expires_at, namespace, note)
                 VALUES (?1, ?2, ?3, ?4, ?5) RETURNING id",
            )
            .bind(&t.hash[..])
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.namespace.as_deref())
            .bind(&t.note)
            .fetch_one(&self.pool)
            .await?;
            Ok(row.try_get("id")?)
        })
    }

    fn find<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> BoxFuture<'a, Result<Option<TokenRecord>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM gatehouse_tokens WHERE token_sha256 = ?1"
            ))
            .bind(&hash[..])
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(row) => Ok(Some(record_from_row!(&row)?)),
                None => Ok(None),
            }
        })
    }

    fn try_consume<'a>(
        &'a self,
        hash: &'a TokenHash,
        namespace: Option<&'a str>,
        now: i64,
        by: &'a UsedBy,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(
                "UPDATE gatehouse_tokens
                    SET used_at = ?1, used_by_user = ?2, used_by_kind = ?3,
                        used_by_object = ?4, used_by_uid = ?5
                  WHERE token_sha256 = ?6
                    AND used_at IS NULL AND revoked_at IS NULL AND expires_at > ?1
                    AND (namespace IS NULL OR namespace = ?7)
                  RETURNING id",
            )
            .bind(now)
            .bind(&by.user)
            .bind(&by.kind)
            .bind(&by.object)
            .bind(&by.uid)
            .bind(&hash[..])
            .bind(namespace)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(row) => Ok(Some(row.try_get("id")?)),
                None => Ok(None),
            }
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>, StoreError>> {
        Box::pin(async move {
            let rows = sqlx::query(concat!(
                "SELECT ",
                token_columns!(),
                " FROM gatehouse_tokens ORDER BY id"
            ))
            .fetch_all(&self.pool)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for row in &rows {
                out.push(record_from_row!(row)?);
            }
            Ok(out)
        })
    }

    fn revoke(&self, id: i64, now: i64) -> BoxFuture<'_, Result<Option<TokenRecord>, StoreError>> {
        Box::pin(async move {
            let row = sqlx::query(concat!(
                "UPDATE gatehouse_tokens SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1 RETURNING ",
                token_columns!()
            ))
            .bind(id)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
            match row {
                Some(row) => Ok(Some(record_from_row!(&row)?)),
                None => Ok(None),
            }
        })
    }

    fn prune(&self, before: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
        Box::pin(async move {
            let done = sqlx::query(
                "DELETE FROM gatehouse_tokens
                  WHERE expires_at <= ?1 OR used_at <= ?1 OR revoked_at <= ?1",
            )
            .bind(before)
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.pool.close().await })
    }
}
