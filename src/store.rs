//! The one-time token store: a [`TokenStore`] trait with two sqlx backends, SQLite
//! (`store/sqlite.rs`, the default: a file in the data directory) and PostgreSQL
//! (`store/postgres.rs`, for several replicas), and the logic both share: making tokens,
//! hashing them, telling why a token cannot be used, and consuming it exactly once.
//!
//! Token values are never stored: only their SHA-256, with metadata (created, expires,
//! namespace scope, note, used_at, used_by, revoked_at). Consuming is one conditional
//! `UPDATE … WHERE used_at IS NULL … RETURNING id`, so of any number of webhook replicas racing
//! for a token exactly one wins.

pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Every token starts with this, so it is recognisable (and findable by secret scanners).
pub const TOKEN_PREFIX: &str = "gate_";
/// Random bytes in a token (256 bits).
const TOKEN_BYTES: usize = 32;
/// Longest value ever looked up; anything longer is not a token.
const MAX_TOKEN_LEN: usize = 256;
/// The file the SQLite backend uses inside the data directory.
pub const SQLITE_FILE: &str = "tokens.db";
/// Most tokens one `issue` call makes.
pub const MAX_ISSUE_COUNT: u32 = 1000;
/// Longest note kept with a token, in characters.
pub const MAX_NOTE_CHARS: usize = 500;

/// SHA-256 of a token value: what the store keeps and looks up.
pub type TokenHash = [u8; 32];

/// A failure of the token store itself (not a token that fails a check).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database answered with an error or could not be reached.
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    /// The embedded migrations could not be applied.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The database did not answer in time.
    #[error("no answer within {}", crate::config::format_duration(*.0))]
    Timeout(Duration),
    /// The store is not configured or cannot be used as configured.
    #[error("{0}")]
    Config(String),
}

/// A database URL from `database_url` (`GATEHOUSE_DATABASE_URL`). Its password never appears
/// in `Debug` or `Display` output.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DatabaseUrl(String);

/// Which backend a [`DatabaseUrl`] names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// A PostgreSQL server.
    Postgres,
    /// An SQLite file.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password (only for connecting).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The backend the scheme names: `postgres://`/`postgresql://` or `sqlite:PATH`
    /// (`sqlite://PATH`).
    pub fn backend(&self) -> Result<Backend, String> {
        let url = self.0.trim();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Backend::Postgres);
        }
        if let Some(rest) = url.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            let path = path.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(
                    "an sqlite: URL needs a file path (sqlite:///var/lib/gatehouse/tokens.db)"
                        .into(),
                );
            }
            return Ok(Backend::Sqlite(PathBuf::from(path)));
        }
        Err(format!(
            "`{self}` is not a postgres://, postgresql:// or sqlite: URL"
        ))
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        let url = &self.0;
        let mut out = match url.find("://") {
            Some(i) => {
                let rest = &url[i + 3..];
                let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
                let authority = &rest[..authority_end];
                match authority.rfind('@') {
                    Some(at) => {
                        let userinfo = &authority[..at];
                        let user = userinfo.split(':').next().unwrap_or_default();
                        let masked = if userinfo.contains(':') {
                            format!("{user}:***")
                        } else {
                            user.to_owned()
                        };
                        format!("{}{masked}{}", &url[..i + 3], &url[i + 3 + at..])
                    }
                    None => url.clone(),
                }
            }
            None => url.clone(),
        };
        // A password may also be a query parameter.
        if let Some(q) = out.find('?') {
            let (base, query) = out.split_at(q + 1);
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
                    _ => kv.to_owned(),
                })
                .collect();
            out = format!("{base}{}", query.join("&"));
        }
        out
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// Where the store lives and how long one operation may take.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    /// `database_url`; unset: SQLite in `data_dir`.
    pub url: Option<DatabaseUrl>,
    /// The data directory (for the default SQLite file).
    pub data_dir: PathBuf,
    /// Deadline for one store operation (and for getting a connection).
    pub timeout: Duration,
}

impl StoreSettings {
    /// The settings from the configuration.
    pub fn from_config(config: &Config) -> Self {
        Self {
            url: config.database_url.clone(),
            data_dir: config.data_dir.clone(),
            timeout: config.database_timeout,
        }
    }

    /// The backend these settings select.
    pub fn backend(&self) -> Result<Backend, StoreError> {
        match &self.url {
            None => Ok(Backend::Sqlite(self.data_dir.join(SQLITE_FILE))),
            Some(url) => url
                .backend()
                .map_err(|m| StoreError::Config(format!("database_url: {m}"))),
        }
    }

    /// `SQLite /path/tokens.db` or `PostgreSQL postgres://user:***@host/db`, for logs.
    pub fn describe(&self) -> String {
        match (self.backend(), &self.url) {
            (Ok(Backend::Sqlite(path)), _) => format!("SQLite {}", path.display()),
            (Ok(Backend::Postgres), Some(url)) => format!("PostgreSQL {url}"),
            _ => "an unusable database_url".into(),
        }
    }
}

/// Who used a token, recorded with it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct UsedBy {
    /// The requesting user (`userInfo.username`).
    pub user: String,
    /// The object's kind.
    pub kind: String,
    /// `namespace/name` (or `name` for cluster-scoped objects).
    pub object: String,
    /// The admission request's uid.
    pub uid: String,
}

/// A token as the store keeps it: metadata only, never the value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    /// The public id (for `tokens list` and `tokens revoke`).
    pub id: i64,
    /// When it was issued (Unix seconds).
    #[serde(serialize_with = "ser_time")]
    pub created_at: i64,
    /// When it stops being valid (Unix seconds).
    #[serde(serialize_with = "ser_time")]
    pub expires_at: i64,
    /// The only namespace it is valid in; `None`: any namespace.
    pub namespace: Option<String>,
    /// Free text given when it was issued.
    pub note: String,
    /// When it was consumed (Unix seconds).
    #[serde(serialize_with = "ser_opt_time")]
    pub used_at: Option<i64>,
    /// Who consumed it.
    pub used_by: Option<UsedBy>,
    /// When it was revoked (Unix seconds).
    #[serde(serialize_with = "ser_opt_time")]
    pub revoked_at: Option<i64>,
}

/// Times in JSON output are RFC 3339 UTC strings.
fn ser_time<S: serde::Serializer>(t: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_time(*t))
}

fn ser_opt_time<S: serde::Serializer>(t: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_time(*t)),
        None => s.serialize_none(),
    }
}

impl TokenRecord {
    /// `unused`, `used`, `revoked` or `expired` at `now`.
    pub fn state(&self, now: i64) -> &'static str {
        if self.used_at.is_some() {
            "used"
        } else if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at <= now {
            "expired"
        } else {
            "unused"
        }
    }
}

/// A token to insert: its hash and metadata.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// SHA-256 of the value.
    pub hash: TokenHash,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub expires_at: i64,
    /// Namespace scope.
    pub namespace: Option<String>,
    /// Free text.
    pub note: String,
}

/// What to issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssueSpec {
    /// How many tokens (1 to [`MAX_ISSUE_COUNT`]).
    pub count: u32,
    /// How long each is valid.
    pub ttl: Duration,
    /// Restrict them to one namespace.
    pub namespace: Option<String>,
    /// Free text kept with them.
    pub note: String,
}

impl IssueSpec {
    /// Checks the request; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.count == 0 || self.count > MAX_ISSUE_COUNT {
            return Err(format!(
                "count: {} is not between 1 and {MAX_ISSUE_COUNT}",
                self.count
            ));
        }
        if self.ttl.as_secs() == 0 {
            return Err("ttl: must be at least 1s".into());
        }
        if self.ttl > Duration::from_secs(366 * 86_400) {
            return Err("ttl: must be at most 366d".into());
        }
        if let Some(ns) = &self.namespace
            && !is_dns_label(ns)
        {
            return Err(format!(
                "namespace: `{ns}` is not a namespace name (lower-case letters, digits and '-', at most 63)"
            ));
        }
        if self.note.chars().count() > MAX_NOTE_CHARS {
            return Err(format!("note: longer than {MAX_NOTE_CHARS} characters"));
        }
        if self.note.chars().any(char::is_control) {
            return Err("note: holds control characters".into());
        }
        Ok(())
    }
}

/// A freshly issued token: the only time its value exists outside the caller's hands.
#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedToken {
    /// The public id.
    pub id: i64,
    /// The value to put in the annotation.
    pub token: String,
    /// Unix seconds.
    #[serde(serialize_with = "ser_time")]
    pub expires_at: i64,
    /// Namespace scope.
    pub namespace: Option<String>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .field("token", &"***")
            .field("expires_at", &self.expires_at)
            .field("namespace", &self.namespace)
            .finish()
    }
}

/// Why a presented token can or cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Valid: consumed now (by `consume`) or usable (by `check`).
    Accepted {
        /// The token's id.
        id: i64,
    },
    /// No such token.
    Unknown,
    /// Already consumed.
    Used(TokenRecord),
    /// Revoked by an operator.
    Revoked(TokenRecord),
    /// Past its expiry.
    Expired(TokenRecord),
    /// Scoped to another namespace.
    WrongNamespace(TokenRecord),
}

impl Verdict {
    /// A short label for metrics: `accepted`, `unknown`, `used`, `revoked`, `expired`,
    /// `wrong_namespace`.
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Accepted { .. } => "accepted",
            Verdict::Unknown => "unknown",
            Verdict::Used(_) => "used",
            Verdict::Revoked(_) => "revoked",
            Verdict::Expired(_) => "expired",
            Verdict::WrongNamespace(_) => "wrong_namespace",
        }
    }
}

/// Judges a stored token (or its absence) for a request in `namespace` at `now`.
pub(crate) fn classify(record: Option<TokenRecord>, namespace: Option<&str>, now: i64) -> Verdict {
    let Some(r) = record else {
        return Verdict::Unknown;
    };
    if r.used_at.is_some() {
        Verdict::Used(r)
    } else if r.revoked_at.is_some() {
        Verdict::Revoked(r)
    } else if r.expires_at <= now {
        Verdict::Expired(r)
    } else if r.namespace.is_some() && r.namespace.as_deref() != namespace {
        Verdict::WrongNamespace(r)
    } else {
        Verdict::Accepted { id: r.id }
    }
}

/// The operations a backend provides. Backends are plain SQL; the rules live in [`Tokens`].
pub trait TokenStore: Send + Sync + 'static {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;
    /// Applies the embedded migrations.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    /// Inserts a token; returns its id.
    fn insert<'a>(&'a self, token: &'a NewToken) -> BoxFuture<'a, Result<i64, StoreError>>;
    /// The token with this hash.
    fn find<'a>(
        &'a self,
        hash: &'a TokenHash,
    ) -> BoxFuture<'a, Result<Option<TokenRecord>, StoreError>>;
    /// Marks the token used if it is unused, unrevoked, unexpired at `now` and valid in
    /// `namespace`, in one conditional UPDATE; returns its id when this call consumed it.
    fn try_consume<'a>(
        &'a self,
        hash: &'a TokenHash,
        namespace: Option<&'a str>,
        now: i64,
        by: &'a UsedBy,
    ) -> BoxFuture<'a, Result<Option<i64>, StoreError>>;
    /// Every token, oldest first.
    fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>, StoreError>>;
    /// Marks a token revoked (keeping an earlier revocation time); `None` if there is no such id.
    fn revoke(&self, id: i64, now: i64) -> BoxFuture<'_, Result<Option<TokenRecord>, StoreError>>;
    /// Deletes tokens that expired, were used or were revoked at or before `before`; returns
    /// how many.
    fn prune(&self, before: i64) -> BoxFuture<'_, Result<u64, StoreError>>;
    /// Closes the connections.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The token store in use: a backend plus the shared rules and a deadline per operation.
#[derive(Clone)]
pub struct Tokens {
    store: Arc<dyn TokenStore>,
    timeout: Duration,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("backend", &self.store.backend())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Tokens {
    /// Wraps a backend; every operation gets `timeout`.
    pub fn new(store: Arc<dyn TokenStore>, timeout: Duration) -> Self {
        Self { store, timeout }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.store.backend()
    }

    async fn timed<T>(
        &self,
        fut: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout(self.timeout)),
        }
    }

    /// Makes `spec.count` new tokens at `now`, stores their hashes and returns the values.
    pub async fn issue(&self, spec: &IssueSpec, now: i64) -> Result<Vec<IssuedToken>, StoreError> {
        spec.validate().map_err(StoreError::Config)?;
        let ttl = i64::try_from(spec.ttl.as_secs()).unwrap_or(i64::MAX);
        let expires_at = now.saturating_add(ttl);
        let mut out = Vec::with_capacity(spec.count as usize);
        for _ in 0..spec.count {
            let (token, hash) = generate_token()?;
            let new = NewToken {
                hash,
                created_at: now,
                expires_at,
                namespace: spec.namespace.clone(),
                note: spec.note.clone(),
            };
            let id = self.timed(self.store.insert(&new)).await?;
            out.push(IssuedToken {
                id,
                token,
                expires_at,
                namespace: spec.namespace.clone(),
            });
        }
        Ok(out)
    }

    /// Whether `token` could be used in `namespace` at `now`, without using it (dryRun).
    pub async fn check(
        &self,
        token: &str,
        namespace: Option<&str>,
        now: i64,
    ) -> Result<Verdict, StoreError> {
        let Some(hash) = lookup_hash(token) else {
            return Ok(Verdict::Unknown);
        };
        let record = self.timed(self.store.find(&hash)).await?;
        Ok(classify(record, namespace, now))
    }

    /// Uses `token` for a request in `namespace` at `now`: exactly one caller ever gets
    /// [`Verdict::Accepted`] for a token; everyone else learns why not.
    pub async fn consume(
        &self,
        token: &str,
        namespace: Option<&str>,
        now: i64,
        by: &UsedBy,
    ) -> Result<Verdict, StoreError> {
        let Some(hash) = lookup_hash(token) else {
            return Ok(Verdict::Unknown);
        };
        if let Some(id) = self
            .timed(self.store.try_consume(&hash, namespace, now, by))
            .await?
        {
            return Ok(Verdict::Accepted { id });
        }
        let record = self.timed(self.store.find(&hash)).await?;
        Ok(match classify(record.clone(), namespace, now) {
            // The UPDATE found it unusable, so it cannot have become usable since; should the
            // row say otherwise, it is not this caller's to use.
            Verdict::Accepted { .. } => match record {
                Some(r) => Verdict::Used(r),
                None => Verdict::Unknown,
            },
            other => other,
        })
    }

    /// Every token's metadata, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.timed(self.store.list()).await
    }

    /// Revokes token `id`; `None` if there is no such token.
    pub async fn revoke(&self, id: i64, now: i64) -> Result<Option<TokenRecord>, StoreError> {
        self.timed(self.store.revoke(id, now)).await
    }

    /// Deletes tokens expired, used or revoked at least `age` before `now`.
    pub async fn prune(&self, age: Duration, now: i64) -> Result<u64, StoreError> {
        let age = i64::try_from(age.as_secs()).unwrap_or(i64::MAX);
        self.timed(self.store.prune(now.saturating_sub(age))).await
    }

    /// Closes the backend's connections.
    pub async fn close(&self) {
        self.store.close().await;
    }
}

/// Opens the store the settings name (creating the SQLite file if needed) and applies the
/// embedded migrations.
pub async fn open(settings: &StoreSettings) -> Result<Tokens, StoreError> {
    let store: Arc<dyn TokenStore> = match settings.backend()? {
        Backend::Sqlite(path) => {
            Arc::new(sqlite::SqliteStore::connect(&path, settings.timeout).await?)
        }
        Backend::Postgres => {
            let Some(url) = &settings.url else {
                return Err(StoreError::Config("database_url: not set".into()));
            };
            Arc::new(postgres::PgStore::connect(url, settings.timeout).await?)
        }
    };
    store.migrate().await?;
    Ok(Tokens::new(store, settings.timeout))
}

/// A new random token and its hash.
fn generate_token() -> Result<(String, TokenHash), StoreError> {
    let mut bytes = [0u8; TOKEN_BYTES];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Config(format!("no randomness from the OS: {e}")))?;
    let token = format!(
        "{TOKEN_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = hash_token(&token);
    Ok((token, hash))
}

/// SHA-256 of a token value.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// The hash to look up for a presented value (trimmed); `None` when it cannot be a token.
fn lookup_hash(token: &str) -> Option<TokenHash> {
    let token = token.trim();
    if token.is_empty() || token.len() > MAX_TOKEN_LEN {
        return None;
    }
    Some(hash_token(token))
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// `2026-05-01T10:00:00Z`.
pub fn format_time(unix: i64) -> String {
    match time::OffsetDateTime::from_unix_timestamp(unix) {
        Ok(t) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        ),
        Err(_) => format!("@{unix}"),
    }
}

/// A Kubernetes namespace name: a DNS label.
pub(crate) fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Labels: what a token check found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenResultLabels {
    /// `consumed`, `valid_not_consumed` (dryRun, or denied by another policy), `missing`, `unknown`, `used`, `revoked`, `expired`,
    /// `wrong_namespace`, `store_unavailable`, `skipped_offline`.
    pub result: String,
}

/// Metrics of the one-time-token policies.
#[derive(Clone, Debug, Default)]
pub struct TokenMetrics {
    /// Token checks, by result.
    pub checks: Family<TokenResultLabels, Counter>,
    /// Store operations that failed (database down, timeout).
    pub store_errors: Counter,
}

impl TokenMetrics {
    /// Counts one check result.
    pub fn count(&self, result: &str) {
        self.checks
            .get_or_create(&TokenResultLabels {
                result: result.to_owned(),
            })
            .inc();
    }

    /// Adds these metrics to a registry (`gatehouse_token_checks_total{result}`,
    /// `gatehouse_token_store_errors_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "token_checks",
            "One-time token checks, by result",
            self.checks.clone(),
        );
        registry.register(
            "token_store_errors",
            "Token store operations that failed (database unreachable, timeout)",
            self.store_errors.clone(),
        );
    }
}

/// Where the one-time-token policies find the store. Filled when the policies are loaded;
/// the store itself is opened afterwards, and only when a policy asked for it
/// ([`TokenStoreSlot::open_if_wanted`]).
#[derive(Clone, Default)]
pub struct TokenStoreSlot(Arc<SlotInner>);

#[derive(Default)]
struct SlotInner {
    settings: Option<StoreSettings>,
    wanted: AtomicBool,
    tokens: OnceLock<Tokens>,
    metrics: TokenMetrics,
}

impl fmt::Debug for TokenStoreSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStoreSlot")
            .field("wanted", &self.wanted())
            .field("open", &self.tokens().map(Tokens::backend))
            .finish()
    }
}

impl TokenStoreSlot {
    /// A slot that opens the store these settings name when a policy wants it.
    pub fn new(settings: StoreSettings) -> Self {
        Self(Arc::new(SlotInner {
            settings: Some(settings),
            ..SlotInner::default()
        }))
    }

    /// A slot holding an already open store.
    pub fn with_tokens(tokens: Tokens) -> Self {
        let inner = SlotInner::default();
        let _ = inner.tokens.set(tokens);
        Self(Arc::new(inner))
    }

    /// Marks the store as needed (a policy of kind `one-time-token` was loaded).
    pub(crate) fn want(&self) -> Self {
        self.0.wanted.store(true, Ordering::Relaxed);
        self.clone()
    }

    /// Whether a loaded policy needs the store.
    pub fn wanted(&self) -> bool {
        self.0.wanted.load(Ordering::Relaxed)
    }

    /// The open store, if any.
    pub fn tokens(&self) -> Option<&Tokens> {
        self.0.tokens.get()
    }

    /// The token policies' metrics.
    pub fn metrics(&self) -> &TokenMetrics {
        &self.0.metrics
    }

    /// Opens the store (and runs its migrations) if a loaded policy needs it and it is not
    /// open yet; `None` when no policy needs it.
    pub async fn open_if_wanted(&self) -> Result<Option<Tokens>, StoreError> {
        if !self.wanted() {
            return Ok(None);
        }
        if let Some(t) = self.tokens() {
            return Ok(Some(t.clone()));
        }
        let Some(settings) = &self.0.settings else {
            return Err(StoreError::Config(
                "a one-time-token policy is loaded but no token store is configured".into(),
            ));
        };
        let tokens = open(settings).await?;
        Ok(Some(self.0.tokens.get_or_init(|| tokens).clone()))
    }
}

/// Row columns in the order both backends read them.
macro_rules! token_columns {
    () => {
        "id, created_at, expires_at, namespace, note, used_at, used_by_user, used_by_kind, used_by_object, used_by_uid, revoked_at"
    };
}
pub(crate) use token_columns;

/// Builds a [`TokenRecord`] from a row of [`token_columns`] (either backend).
macro_rules! record_from_row {
    ($row:expr) => {{
        use sqlx::Row as _;
        let row = $row;
        let used_by_user: Option<String> = row.try_get("used_by_user")?;
        let used_by = match used_by_user {
            Some(user) => Some($crate::store::UsedBy {
                user,
                kind: row
                    .try_get::<Option<String>, _>("used_by_kind")?
                    .unwrap_or_default(),
                object: row
                    .try_get::<Option<String>, _>("used_by_object")?
                    .unwrap_or_default(),
                uid: row
                    .try_get::<Option<String>, _>("used_by_uid")?
                    .unwrap_or_default(),
            }),
            None => None,
        };
        Ok::<_, sqlx::Error>($crate::store::TokenRecord {
            id: row.try_get("id")?,
            created_at: row.try_get("created_at")?,
            expires_at: row.try_get("expires_at")?,
            namespace: row.try_get("namespace")?,
            note: row.try_get("note")?,
            used_at: row.try_get("used_at")?,
            used_by,
            revoked_at: row.try_get("revoked_at")?,
        })
    }};
}
pub(crate) use record_from_row;

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn record(id: i64) -> TokenRecord {
        TokenRecord {
            id,
            created_at: 1000,
            expires_at: 2000,
            namespace: None,
            note: String::new(),
            used_at: None,
            used_by: None,
            revoked_at: None,
        }
    }

    #[rstest]
    #[case::unknown(None, Some("app"), 1500, "unknown")]
    #[case::valid(Some(record(1)), Some("app"), 1500, "accepted")]
    #[case::valid_cluster_scoped(Some(record(1)), None, 1500, "accepted")]
    #[case::expired_at_the_second(Some(record(1)), Some("app"), 2000, "expired")]
    #[case::used(Some(TokenRecord { used_at: Some(1200), ..record(1) }), Some("app"), 1500, "used")]
    #[case::used_beats_expired(Some(TokenRecord { used_at: Some(1200), ..record(1) }), Some("app"), 9000, "used")]
    #[case::revoked(Some(TokenRecord { revoked_at: Some(1200), ..record(1) }), Some("app"), 1500, "revoked")]
    #[case::scoped_ok(Some(TokenRecord { namespace: Some("app".into()), ..record(1) }), Some("app"), 1500, "accepted")]
    #[case::scoped_other(Some(TokenRecord { namespace: Some("app".into()), ..record(1) }), Some("web"), 1500, "wrong_namespace")]
    #[case::scoped_cluster(Some(TokenRecord { namespace: Some("app".into()), ..record(1) }), None, 1500, "wrong_namespace")]
    fn classify_table(
        #[case] rec: Option<TokenRecord>,
        #[case] ns: Option<&str>,
        #[case] now: i64,
        #[case] expected: &str,
    ) {
        assert_eq!(classify(rec, ns, now).label(), expected);
    }

    #[test]
    fn tokens_are_url_safe_random_and_hashed() {
        let (a, ha) = generate_token().unwrap();
        let (b, hb) = generate_token().unwrap();
        assert_ne!(a, b);
        assert_ne!(ha, hb);
        assert!(a.starts_with(TOKEN_PREFIX));
        let body = &a[TOKEN_PREFIX.len()..];
        // 32 bytes, base64 without padding.
        assert_eq!(body.len(), 43);
        assert!(
            body.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
            "{a}"
        );
        assert_eq!(hash_token(&a), ha);
        assert_eq!(lookup_hash(&format!("  {a}\n")), Some(ha));
        assert_eq!(lookup_hash(""), None);
        assert_eq!(lookup_hash(&"x".repeat(MAX_TOKEN_LEN + 1)), None);
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        let h = hash_token("abc");
        assert_eq!(
            h[..4],
            [0xba, 0x78, 0x16, 0xbf],
            "SHA-256(\"abc\") starts ba7816bf"
        );
    }

    #[rstest]
    #[case("postgres://gh:s3cret@db:5432/gh", "postgres://gh:***@db:5432/gh")]
    #[case("postgresql://gh@db/gh", "postgresql://gh@db/gh")]
    #[case(
        "postgres://db/gh?user=gh&password=s3cret&sslmode=require",
        "postgres://db/gh?user=gh&password=***&sslmode=require"
    )]
    #[case("sqlite:///var/lib/tokens.db", "sqlite:///var/lib/tokens.db")]
    fn database_urls_never_show_passwords(#[case] url: &str, #[case] shown: &str) {
        let u = DatabaseUrl::new(url);
        assert_eq!(u.to_string(), shown);
        assert!(!format!("{u:?}").contains("s3cret"));
    }

    #[rstest]
    #[case("postgres://db/gh", Ok(Backend::Postgres))]
    #[case("postgresql://db/gh", Ok(Backend::Postgres))]
    #[case("sqlite:///var/lib/t.db", Ok(Backend::Sqlite("/var/lib/t.db".into())))]
    #[case("sqlite:t.db", Ok(Backend::Sqlite("t.db".into())))]
    #[case("sqlite:", Err("needs a file path"))]
    #[case("mysql://db/gh", Err("is not a postgres://"))]
    fn backends_from_urls(#[case] url: &str, #[case] expected: Result<Backend, &str>) {
        match (DatabaseUrl::new(url).backend(), expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want),
            (Err(got), Err(want)) => assert!(got.contains(want), "{got}"),
            (got, want) => panic!("{url}: got {got:?}, want {want:?}"),
        }
    }

    #[rstest]
    #[case(IssueSpec { count: 0, ttl: Duration::from_secs(60), namespace: None, note: String::new() }, "count")]
    #[case(IssueSpec { count: 1, ttl: Duration::ZERO, namespace: None, note: String::new() }, "ttl")]
    #[case(IssueSpec { count: 1, ttl: Duration::from_secs(60), namespace: Some("App_NS".into()), note: String::new() }, "namespace")]
    #[case(IssueSpec { count: 1, ttl: Duration::from_secs(60), namespace: None, note: "a\nb".into() }, "note")]
    fn bad_issue_requests_name_the_field(#[case] spec: IssueSpec, #[case] field: &str) {
        let err = spec.validate().unwrap_err();
        assert!(err.starts_with(field), "{err}");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(1_777_629_600), "2026-05-01T10:00:00Z");
    }

    #[test]
    fn issued_tokens_do_not_show_their_value_in_debug() {
        let t = IssuedToken {
            id: 1,
            token: "gate_secret".into(),
            expires_at: 0,
            namespace: None,
        };
        assert!(!format!("{t:?}").contains("secret"));
    }
}
