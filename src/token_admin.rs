//! The optional token endpoint for pipelines that mint one token per deployment:
//! `POST /v1/tokens` on its own TLS listener (`token_admin.listen`, same certificate as the
//! webhook), protected by a bearer key read from `token_admin.key_file` and compared in
//! constant time. Off unless `token_admin.listen` is set.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum_server::tls_rustls::RustlsConfig;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq as _;

use crate::api::{RouteLimits, harden_with_rate};
use crate::config::{Config, format_duration, parse_duration};
use crate::conn::ListenerLimits;
use crate::limits::BodyRate;
use crate::metrics::Metrics;
use crate::store::{self, IssueSpec, Tokens};

/// Shortest bearer key accepted, in characters.
pub const MIN_KEY_CHARS: usize = 32;
/// Most tokens one request may ask for.
pub const MAX_COUNT: u32 = 100;
/// Largest request body.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// TTL when the request names none.
const DEFAULT_TTL: Duration = Duration::from_secs(3600);

/// The endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The key file is missing, unreadable or too short.
    #[error("token_admin.key_file {path}: {message}")]
    Key {
        /// The file.
        path: String,
        /// What is wrong (never the key).
        message: String,
    },
    /// The configuration does not enable the endpoint.
    #[error("token_admin.{0} is not set")]
    NotConfigured(&'static str),
    /// The listener could not be opened.
    #[error("cannot listen on {addr} (token endpoint, TLS): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The bearer key, kept only as its SHA-256 so comparison takes the same time for any input.
pub struct AdminKey {
    digest: [u8; 32],
}

impl std::fmt::Debug for AdminKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminKey(***)")
    }
}

impl AdminKey {
    /// A key from its text (surrounding whitespace ignored).
    pub fn new(key: &str) -> Result<Self, String> {
        let key = key.trim();
        if key.chars().count() < MIN_KEY_CHARS {
            return Err(format!(
                "the key must be at least {MIN_KEY_CHARS} characters"
            ));
        }
        Ok(Self {
            digest: Sha256::digest(key.as_bytes()).into(),
        })
    }

    /// Reads the key from a file.
    pub fn from_file(path: &Path) -> Result<Self, AdminError> {
        let err = |message: String| AdminError::Key {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::new(&text).map_err(err)
    }

    /// Whether `presented` is the key, in constant time.
    pub fn verify(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        digest.ct_eq(&self.digest).into()
    }
}

/// What the handler needs.
#[derive(Clone)]
pub struct AdminState {
    /// The store to issue into.
    pub tokens: Tokens,
    /// The bearer key.
    pub key: Arc<AdminKey>,
    /// Longest TTL a caller may ask for.
    pub max_ttl: Duration,
}

/// The request body of `POST /v1/tokens` (every field optional).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IssueBody {
    count: Option<u32>,
    ttl: Option<Ttl>,
    namespace: Option<String>,
    note: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Text(String),
}

/// The endpoint's routes: `POST /v1/tokens`, with the request limits of `limits` (its own
/// body size, request cap and body budget).
pub fn router(state: AdminState, limits: &crate::config::Limits, metrics: Arc<Metrics>) -> Router {
    let routes = Router::new()
        .route("/v1/tokens", post(issue))
        .with_state(state);
    harden_with_rate(
        routes,
        RouteLimits {
            max_body_bytes: MAX_BODY_BYTES,
            request_timeout: limits.request_timeout,
            max_concurrent_requests: 64,
            max_inflight_body_bytes: 4 * MAX_BODY_BYTES,
        },
        BodyRate::from_config(limits),
        metrics,
    )
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() });
    (status, axum::Json(body)).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| key.trim())
}

async fn issue(State(st): State<AdminState>, headers: HeaderMap, body: Bytes) -> Response {
    if !bearer(&headers).is_some_and(|k| st.key.verify(k)) {
        tracing::warn!("token endpoint: request without the right bearer key refused");
        let mut resp = error(StatusCode::UNAUTHORIZED, "missing or wrong bearer key");
        resp.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    let req: IssueBody = if body.iter().all(u8::is_ascii_whitespace) {
        IssueBody::default()
    } else {
        let de = &mut serde_json::Deserializer::from_slice(&body);
        match serde_path_to_error::deserialize(de) {
            Ok(r) => r,
            Err(e) => {
                let path = e.path().to_string();
                let msg = if path == "." {
                    e.inner().to_string()
                } else {
                    format!("{path}: {}", e.inner())
                };
                return error(StatusCode::BAD_REQUEST, msg);
            }
        }
    };
    let ttl = match req.ttl {
        None => DEFAULT_TTL.min(st.max_ttl),
        Some(Ttl::Seconds(n)) => Duration::from_secs(n),
        Some(Ttl::Text(t)) => match parse_duration(&t) {
            Ok(d) => d,
            Err(m) => return error(StatusCode::BAD_REQUEST, format!("ttl: {m}")),
        },
    };
    if ttl > st.max_ttl {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "ttl: {} is longer than token_admin.max_ttl ({})",
                format_duration(ttl),
                format_duration(st.max_ttl)
            ),
        );
    }
    let count = req.count.unwrap_or(1);
    if count > MAX_COUNT {
        return error(
            StatusCode::BAD_REQUEST,
            format!("count: at most {MAX_COUNT} tokens per request"),
        );
    }
    let spec = IssueSpec {
        count,
        ttl,
        namespace: req.namespace,
        note: req.note.unwrap_or_default(),
    };
    if let Err(m) = spec.validate() {
        return error(StatusCode::BAD_REQUEST, m);
    }
    match st.tokens.issue(&spec, store::now_unix()).await {
        Ok(issued) => {
            let ids: Vec<i64> = issued.iter().map(|t| t.id).collect();
            tracing::info!(?ids, namespace = spec.namespace.as_deref().unwrap_or("*"), note = %spec.note, "token endpoint: issued tokens");
            let body = serde_json::json!({ "tokens": issued });
            (
                StatusCode::CREATED,
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(body),
            )
                .into_response()
        }
        Err(e) => {
            tracing::error!(error = %e, "token endpoint: token store unavailable");
            error(StatusCode::SERVICE_UNAVAILABLE, "token store unavailable")
        }
    }
}

/// The endpoint's listener, bound and ready to serve.
pub struct AdminServer {
    listener: TcpListener,
    app: Router,
    tls: RustlsConfig,
    limits: ListenerLimits,
    metrics: Arc<Metrics>,
}

impl AdminServer {
    /// Reads the key and binds `token_admin.listen`.
    pub fn bind(
        config: &Config,
        tokens: Tokens,
        tls: RustlsConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Self, AdminError> {
        let addr = config
            .token_admin
            .listen
            .ok_or(AdminError::NotConfigured("listen"))?;
        let key_file = config
            .token_admin
            .key_file
            .as_deref()
            .ok_or(AdminError::NotConfigured("key_file"))?;
        let key = AdminKey::from_file(key_file)?;
        let bind_err = |source| AdminError::Bind { addr, source };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let state = AdminState {
            tokens,
            key: Arc::new(key),
            max_ttl: config.token_admin.max_ttl,
        };
        Ok(Self {
            listener,
            app: router(state, &config.limits, metrics.clone()),
            tls,
            limits: ListenerLimits::token_admin(&crate::server::fitted_limits(config, false)),
            metrics,
        })
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// Serves until `shutdown` completes, then lets in-flight requests finish for `grace`.
    /// The listener has the same connection limits as the webhook's, with its own caps
    /// (`limits.token_admin_max_connections`, `limits.token_admin_max_connections_per_source`).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
        grace: Duration,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::from_std(self.listener)?;
        crate::conn::serve(
            listener,
            Some(self.tls),
            self.app,
            self.limits,
            self.metrics,
            shutdown,
            grace,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_compared_whole_and_short_keys_refused() {
        let key = AdminKey::new("  0123456789abcdef0123456789abcdef\n").unwrap();
        assert!(key.verify("0123456789abcdef0123456789abcdef"));
        assert!(!key.verify("0123456789abcdef0123456789abcde"));
        assert!(!key.verify(""));
        assert!(!format!("{key:?}").contains("0123"));
        assert!(AdminKey::new("short").is_err());
    }

    #[test]
    fn bearer_header_is_parsed() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "bearer  abc ".parse().unwrap());
        assert_eq!(bearer(&h), Some("abc"));
        h.insert(header::AUTHORIZATION, "Basic abc".parse().unwrap());
        assert_eq!(bearer(&h), None);
    }
}
