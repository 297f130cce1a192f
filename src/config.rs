//! Configuration: built-in defaults < YAML file (`--config FILE`) < `GATEHOUSE_*` environment.
//!
//! Keys are snake_case in the file and in the environment (`GATEHOUSE_TLS_CERT` is `tls_cert`);
//! nested keys use `__` in the environment (`GATEHOUSE_LIMITS__MAX_BODY_BYTES`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Serialized, Yaml};
use serde::{Deserialize, Serialize};

/// Environment variables under this prefix are read as configuration.
pub const ENV_PREFIX: &str = "GATEHOUSE_";

/// The top-level keys the environment may set; other `GATEHOUSE_*` variables are ignored
/// (and reported at start), so that unrelated variables such as `GATEHOUSE_TEST_*` cannot break
/// a start.
const KNOWN_KEYS: &[&str] = &[
    "listen",
    "health_listen",
    "tls_cert",
    "tls_key",
    "policies",
    "data_dir",
    "excluded_namespaces",
    "log_format",
    "limits",
    "reload_interval",
    "database_url",
    "database_timeout",
    "token_admin",
    "notify",
];

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

/// Limits that keep one bad client from hurting the API server's requests. Every listener
/// (webhook, health/metrics, token endpoint) has a connection cap, a per-source connection cap,
/// the handshake, header and idle timeouts, and the per-source handshake cap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Deadline for one admission request, kept below the API server's webhook timeout.
    #[serde(with = "humantime_secs")]
    pub request_timeout: Duration,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    #[serde(with = "humantime_secs")]
    pub shutdown_grace: Duration,
    /// After SIGTERM, keep serving this long while marked not ready, so the endpoints
    /// controller takes the pod out of the Service before the listener closes.
    #[serde(with = "humantime_secs")]
    pub shutdown_delay: Duration,
    /// Open connections on the webhook listener; more are closed at once.
    pub max_connections: usize,
    /// Open connections on the webhook listener from one client address; more are closed at
    /// once. The API server opens one connection per review in flight and keeps up to 25
    /// idle, so keep it well above `max_concurrent_requests` + 25.
    pub max_connections_per_source: usize,
    /// TLS handshakes in progress from one client address (every TLS listener); more wait
    /// for a turn within `tls_handshake_timeout`.
    pub max_handshakes_per_source: usize,
    /// Requests in progress; more are answered 503 at once.
    pub max_concurrent_requests: usize,
    /// Requests in progress on one HTTP/2 connection (its concurrent stream limit); never
    /// more than half of `max_concurrent_requests`, so one connection cannot take them all.
    pub max_streams_per_connection: usize,
    /// Request bodies being read or evaluated at once, in bytes (parsing takes a multiple of
    /// a body's size in memory); past it, requests that do not fit wait within their
    /// deadline while requests that fit go ahead.
    pub max_inflight_body_bytes: usize,
    /// Slowest accepted request body, in bytes per second after `body_rate_grace`; a body
    /// that arrives slower is answered 408.
    pub min_body_bytes_per_second: u64,
    /// Time a body may take before `min_body_bytes_per_second` applies.
    #[serde(with = "humantime_secs")]
    pub body_rate_grace: Duration,
    /// A connection that has carried no request for this long is closed (HTTP/2 with a
    /// graceful GOAWAY). Only requests count, not PINGs or other bytes. Keep it above the
    /// API server's 90 s idle keep-alive, so that it closes first and never races a request.
    #[serde(with = "humantime_secs")]
    pub idle_timeout: Duration,
    /// Time a client has to finish the TLS handshake.
    #[serde(with = "humantime_secs")]
    pub tls_handshake_timeout: Duration,
    /// Time a client has to send a request's headers once their first byte has arrived
    /// (HTTP/1.1).
    #[serde(with = "humantime_secs")]
    pub header_read_timeout: Duration,
    /// Open connections on the health and metrics listener.
    pub health_max_connections: usize,
    /// Open connections on the health and metrics listener from one client address.
    pub health_max_connections_per_source: usize,
    /// Open connections on the token endpoint's listener.
    pub token_admin_max_connections: usize,
    /// Open connections on the token endpoint's listener from one client address.
    pub token_admin_max_connections_per_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 7 * 1024 * 1024,
            request_timeout: Duration::from_secs(9),
            shutdown_grace: Duration::from_secs(20),
            shutdown_delay: Duration::ZERO,
            max_connections: 4096,
            max_connections_per_source: 512,
            max_handshakes_per_source: 64,
            max_concurrent_requests: 256,
            max_streams_per_connection: 32,
            max_inflight_body_bytes: 32 * 1024 * 1024,
            min_body_bytes_per_second: 256 * 1024,
            body_rate_grace: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(120),
            tls_handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            health_max_connections: 128,
            health_max_connections_per_source: 32,
            token_admin_max_connections: 256,
            token_admin_max_connections_per_source: 64,
        }
    }
}

impl Limits {
    /// Checks that the limits are usable and consistent; the message names the keys.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_body_bytes < 1024 {
            return Err(format!(
                "limits.max_body_bytes is {}: it must be at least 1024",
                self.max_body_bytes
            ));
        }
        let at_least_one = [
            ("max_connections", self.max_connections),
            (
                "max_connections_per_source",
                self.max_connections_per_source,
            ),
            ("max_handshakes_per_source", self.max_handshakes_per_source),
            ("max_concurrent_requests", self.max_concurrent_requests),
            (
                "max_streams_per_connection",
                self.max_streams_per_connection,
            ),
            ("health_max_connections", self.health_max_connections),
            (
                "health_max_connections_per_source",
                self.health_max_connections_per_source,
            ),
            (
                "token_admin_max_connections",
                self.token_admin_max_connections,
            ),
            (
                "token_admin_max_connections_per_source",
                self.token_admin_max_connections_per_source,
            ),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(format!("limits.{key} must be at least 1"));
            }
        }
        if self.idle_timeout <= self.request_timeout {
            return Err(format!(
                "limits.idle_timeout ({}) must be longer than limits.request_timeout ({})",
                format_duration(self.idle_timeout),
                format_duration(self.request_timeout)
            ));
        }
        if self.max_inflight_body_bytes < self.max_body_bytes {
            return Err(format!(
                "limits.max_inflight_body_bytes ({}) must be at least limits.max_body_bytes ({})",
                self.max_inflight_body_bytes, self.max_body_bytes
            ));
        }
        if self.tls_handshake_timeout.is_zero() || self.header_read_timeout.is_zero() {
            return Err(
                "limits.tls_handshake_timeout and limits.header_read_timeout must be more than 0s"
                    .into(),
            );
        }
        if self.request_timeout.is_zero() {
            return Err("limits.request_timeout must be more than 0s".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod limits_tests {
    use super::*;

    #[test]
    fn the_defaults_outlast_the_api_servers_pool_and_leave_it_room() {
        let l = Limits::default();
        assert_eq!(l.validate(), Ok(()));
        // The API server keeps idle connections 90 s: Gatehouse must not close them first.
        assert!(l.idle_timeout > Duration::from_secs(90));
        // One connection per review in flight plus 25 idle, from one address.
        assert!(l.max_connections_per_source >= l.max_concurrent_requests + 25);
        assert!(l.max_streams_per_connection * 2 <= l.max_concurrent_requests);
        assert!(l.max_connections_per_source * 4 <= l.max_connections);
    }

    #[test]
    fn each_cap_must_be_at_least_one_and_is_named() {
        let mut l = Limits {
            health_max_connections_per_source: 0,
            ..Limits::default()
        };
        assert_eq!(
            l.validate(),
            Err("limits.health_max_connections_per_source must be at least 1".into())
        );
        l.health_max_connections_per_source = 1;
        l.max_handshakes_per_source = 0;
        assert_eq!(
            l.validate(),
            Err("limits.max_handshakes_per_source must be at least 1".into())
        );
    }
}

/// The optional HTTPS endpoint that issues one-time tokens (for pipelines). Off unless
/// `listen` is set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenAdmin {
    /// Its own TLS listener (same certificate as the webhook; `IP:PORT` or `HOST:PORT`);
    /// unset: off.
    #[serde(deserialize_with = "listen_addr::optional")]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer key callers must present (at least 32 characters).
    pub key_file: Option<PathBuf>,
    /// Longest `ttl` a caller may ask for.
    #[serde(with = "humantime_secs")]
    pub max_ttl: Duration,
}

impl Default for TokenAdmin {
    fn default() -> Self {
        Self {
            listen: None,
            key_file: None,
            max_ttl: Duration::from_secs(86_400),
        }
    }
}

/// The typed configuration every subcommand works from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTPS listener for `POST /validate`: `IP:PORT`, or `HOST:PORT` resolved once at start.
    #[serde(deserialize_with = "listen_addr::required")]
    pub listen: SocketAddr,
    /// Plain-HTTP listener for `/healthz`, `/readyz`, `/metrics` (`IP:PORT` or `HOST:PORT`).
    #[serde(deserialize_with = "listen_addr::required")]
    pub health_listen: SocketAddr,
    /// PEM certificate chain for the webhook listener; with `tls_key`. When both are unset a
    /// development CA and certificate are generated in `data_dir`.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for the webhook listener.
    pub tls_key: Option<PathBuf>,
    /// A policy file or a directory of `*.yaml`/`*.yml` policy files. Unset: the embedded
    /// `policies/default.yaml`.
    pub policies: Option<PathBuf>,
    /// Where generated development certificates and the default SQLite token store (`tokens.db`) live.
    pub data_dir: PathBuf,
    /// Namespaces no policy ever applies to.
    pub excluded_namespaces: Vec<String>,
    /// `text` (default) or `json`.
    pub log_format: LogFormat,
    /// Request and connection limits.
    pub limits: Limits,
    /// How often the certificate/key and policy files are checked for changes (a Secret or
    /// ConfigMap update); `0s` turns live reload off.
    #[serde(with = "humantime_secs")]
    pub reload_interval: Duration,
    /// The one-time token store: `postgres://…` for several replicas, `sqlite:PATH`; unset:
    /// `tokens.db` in `data_dir`. Opened only when a `one-time-token` policy is loaded.
    pub database_url: Option<crate::store::DatabaseUrl>,
    /// Deadline for one token store operation; past it the store counts as unavailable.
    #[serde(with = "humantime_secs")]
    pub database_timeout: Duration,
    /// The token-issuing endpoint for pipelines.
    pub token_admin: TokenAdmin,
    /// Notifications: Twilio SMS, chat webhook, delivery queue, storm control.
    pub notify: crate::notify::settings::NotifyConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            health_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            policies: None,
            data_dir: default_data_dir(),
            excluded_namespaces: vec!["kube-system".to_owned()],
            log_format: LogFormat::Text,
            limits: Limits::default(),
            reload_interval: Duration::from_secs(5),
            database_url: None,
            database_timeout: Duration::from_secs(2),
            token_admin: TokenAdmin::default(),
            notify: Default::default(),
        }
    }
}

/// `$XDG_DATA_HOME/gatehouse`, else `$HOME/.local/share/gatehouse`, else `./.gatehouse`.
fn default_data_dir() -> PathBuf {
    if let Some(xdg) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("gatehouse");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(home).join(".local/share/gatehouse");
    }
    PathBuf::from(".gatehouse")
}

/// A configuration that could not be loaded; the message names the key and where it came from.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(String);

/// What loading found besides the configuration itself.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// `GATEHOUSE_*` variables that are not configuration keys and were ignored.
    pub ignored_env: Vec<String>,
}

impl Config {
    /// Load from the defaults, an optional YAML file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<(Self, LoadReport), ConfigError> {
        Self::load_from(file, std::env::vars())
    }

    /// Load from the defaults, an optional YAML file and the given environment (for tests).
    pub fn load_from(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Self, LoadReport), ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(ConfigError(format!(
                    "config file {} does not exist or is not a file",
                    path.display()
                )));
            }
            figment = figment.merge(Yaml::file_exact(path));
        }

        let mut report = LoadReport::default();
        let mut pairs = Vec::new();
        let mut literal = Vec::new();
        let mut lists = Vec::new();
        let shape = serde_json::to_value(Config::default()).unwrap_or_default();
        for (name, value) in env {
            // TWILIO_* and GATEHOUSE_SMS_TO: names of their own (see notify::settings).
            let key = if let Some(key) = crate::notify::settings::env_key(&name) {
                key.to_owned()
            } else if let Some(rest) = name.strip_prefix(ENV_PREFIX) {
                rest.to_ascii_lowercase()
            } else {
                continue;
            };
            match env_key_shape(&shape, &key) {
                None => {
                    if !extra_known_env(&key) {
                        report.ignored_env.push(name);
                    }
                }
                // One list syntax everywhere: `a,b` (brackets optional).
                Some(KeyShape::List) => lists.push((key, value)),
                Some(KeyShape::Value) if crate::notify::settings::literal_env_key(&key) => {
                    literal.push((key, value));
                }
                Some(KeyShape::Value) => pairs.push((key, value)),
            }
        }
        figment = figment.merge(EnvPairs {
            parsed: pairs,
            literal,
            lists,
        });

        let mut config: Config = figment.extract().map_err(|e| ConfigError(describe(&e)))?;
        config.notify.resolve_files().map_err(ConfigError)?;
        config.validate()?;
        if let Some(path) = &config.policies
            && let Err(e) = std::fs::metadata(path)
        {
            return Err(ConfigError(format!(
                "key `policies`: {} cannot be read: {e}{}",
                path.display(),
                source_of(&figment, "policies")
            )));
        }
        Ok((config, report))
    }

    /// Checks that a well-typed configuration is also consistent.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => {
                return Err(ConfigError(
                    "tls_cert is set but tls_key is not: set both or neither".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError(
                    "tls_key is set but tls_cert is not: set both or neither".into(),
                ));
            }
            _ => {}
        }
        if self.listen == self.health_listen && self.listen.port() != 0 {
            return Err(ConfigError(format!(
                "listen and health_listen are both {}: they must differ",
                self.listen
            )));
        }
        self.limits.validate().map_err(ConfigError)?;
        for ns in &self.excluded_namespaces {
            if ns.is_empty() {
                return Err(ConfigError(
                    "excluded_namespaces holds an empty name".into(),
                ));
            }
        }
        if let Some(url) = &self.database_url {
            url.backend()
                .map_err(|m| ConfigError(format!("database_url: {m}")))?;
        }
        if self.database_timeout.is_zero() {
            return Err(ConfigError("database_timeout must be more than 0s".into()));
        }
        if let Some(addr) = self.token_admin.listen {
            if self.token_admin.key_file.is_none() {
                return Err(ConfigError(
                    "token_admin.listen is set but token_admin.key_file is not: the endpoint needs a bearer key".into(),
                ));
            }
            if addr.port() != 0 && (addr == self.listen || addr == self.health_listen) {
                return Err(ConfigError(format!(
                    "token_admin.listen is {addr}, already used by another listener: it needs its own"
                )));
            }
        }
        if self.token_admin.max_ttl.as_secs() == 0 {
            return Err(ConfigError(
                "token_admin.max_ttl must be at least 1s".into(),
            ));
        }
        self.notify.validate().map_err(ConfigError)?;
        Ok(())
    }
}

/// `GATEHOUSE_*` variables that belong to other parts (tests, tools) and are not config keys.
fn extra_known_env(key: &str) -> bool {
    key.starts_with("test_")
}

/// What an environment key (`limits__max_body_bytes`) names in the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyShape {
    /// A list of names (`a,b`).
    List,
    /// A value or a whole section.
    Value,
}

/// Finds `key` (parts joined by `__`) in the shape of the default configuration; `None` when
/// it is not a configuration key at any depth (the variable is then ignored with a warning).
fn env_key_shape(shape: &serde_json::Value, key: &str) -> Option<KeyShape> {
    let top = key.split("__").next().unwrap_or_default();
    if !KNOWN_KEYS.contains(&top) {
        return None;
    }
    let mut at = shape;
    for part in key.split("__") {
        at = at.as_object()?.get(part)?;
    }
    Some(if at.is_array() {
        KeyShape::List
    } else {
        KeyShape::Value
    })
}

/// ` (from environment variable GATEHOUSE_POLICIES)`, ` (in FILE)` or nothing, for `key`.
fn source_of(figment: &Figment, key: &str) -> String {
    match figment.find_metadata(key) {
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ if md.name == ENV_METADATA => format!(
                " (from environment variable {ENV_PREFIX}{})",
                key.replace('.', "__").to_ascii_uppercase()
            ),
            _ => String::new(),
        },
        None => String::new(),
    }
}

/// `a, b`, `[a, b]` or nothing (an empty list).
fn env_list(raw: &str) -> Vec<String> {
    let t = raw.trim();
    let t = t
        .strip_prefix('[')
        .and_then(|t| t.strip_suffix(']'))
        .unwrap_or(t);
    t.split(',')
        .map(|s| s.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// Listener addresses: `IP:PORT`, or `HOST:PORT` resolved when the configuration is loaded
/// (the first IPv4 address, else the first address).
mod listen_addr {
    use std::net::{SocketAddr, ToSocketAddrs};

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn parse(text: &str) -> Result<SocketAddr, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr);
        }
        let expected = "expected IP:PORT (such as 0.0.0.0:8443) or HOST:PORT";
        match text.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                let addrs: Vec<SocketAddr> = text
                    .to_socket_addrs()
                    .map_err(|e| format!("`{text}`: cannot resolve {host}: {e}"))?
                    .collect();
                addrs
                    .iter()
                    .find(|a| a.is_ipv4())
                    .or_else(|| addrs.first())
                    .copied()
                    .ok_or_else(|| format!("`{text}`: {host} has no address"))
            }
            _ => Err(format!("`{text}` is not an address: {expected}")),
        }
    }

    /// A bare port (`9443`) reads as a number; it is still text to explain.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Number(i64),
    }

    impl Raw {
        fn text(self) -> String {
            match self {
                Raw::Text(t) => t,
                Raw::Number(n) => n.to_string(),
            }
        }
    }

    pub fn required<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
        parse(&Raw::deserialize(d)?.text()).map_err(D::Error::custom)
    }

    pub fn optional<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        match Option::<Raw>::deserialize(d)? {
            None => Ok(None),
            Some(raw) => parse(&raw.text()).map(Some).map_err(D::Error::custom),
        }
    }
}

/// The environment layer, built from explicit `(key, value)` pairs so tests need not touch the
/// process environment. Values are parsed as figment's `Env` parses them (numbers, booleans,
/// `[a, b]` arrays); `__` separates nested keys. `literal` values stay strings (phone numbers,
/// tokens); `lists` are comma-separated lists of strings.
struct EnvPairs {
    parsed: Vec<(String, String)>,
    literal: Vec<(String, String)>,
    lists: Vec<(String, String)>,
}

impl figment::Provider for EnvPairs {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(ENV_METADATA)
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        use figment::value::{Dict, Value};
        let mut root = Dict::new();
        let parsed = self.parsed.iter().map(|(key, raw)| {
            let value: Value = raw
                .parse()
                .unwrap_or_else(|e: std::convert::Infallible| match e {});
            (key, value)
        });
        let literal = self
            .literal
            .iter()
            .map(|(key, raw)| (key, Value::from(raw.clone())));
        let lists = self
            .lists
            .iter()
            .map(|(key, raw)| (key, Value::from(env_list(raw))));
        for (key, value) in parsed.chain(literal).chain(lists) {
            let parts: Vec<&str> = key.split("__").collect();
            let (last, parents) = parts.split_last().unwrap_or((&"", &[]));
            let mut dict = &mut root;
            for part in parents {
                let entry = dict
                    .entry((*part).to_owned())
                    .or_insert_with(|| Value::from(Dict::new()));
                dict = match entry {
                    Value::Dict(_, inner) => inner,
                    _ => {
                        return Err(figment::Error::from(format!(
                            "{ENV_PREFIX}{}: `{part}` is both a value and a table",
                            key.to_ascii_uppercase()
                        )));
                    }
                };
            }
            dict.insert((*last).to_owned(), value);
        }
        Ok(figment::Profile::Default.collect(root))
    }
}

const ENV_METADATA: &str = "environment";

/// One line naming the key, the problem and the source.
fn describe(error: &figment::Error) -> String {
    let first = error
        .clone()
        .into_iter()
        .next()
        .unwrap_or_else(|| error.clone());
    let key = if first.path.is_empty() {
        String::new()
    } else {
        first.path.join(".")
    };
    let source = match &first.metadata {
        Some(md) => match &md.source {
            Some(figment::Source::File(path)) => format!(" (in {})", path.display()),
            _ if md.name == ENV_METADATA => {
                format!(
                    " (from environment variable {ENV_PREFIX}{})",
                    key.replace('.', "__").to_ascii_uppercase()
                )
            }
            _ => String::new(),
        },
        None => String::new(),
    };
    let kind = crate::policy::messages::humanize(&first.kind.to_string());
    if key.is_empty() {
        format!("{kind}{source}")
    } else {
        format!("key `{key}`: {kind}{source}")
    }
}

/// Durations written as `10s`, `500ms`, `2m` or a bare number of seconds.
pub(crate) mod humantime_secs {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::config::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Num(n) => Ok(Duration::from_secs(n)),
            Raw::Text(t) => crate::config::parse_duration(&t).map_err(D::Error::custom),
        }
    }
}

/// Parses `500ms`, `10s`, `5m`, `1h`, `2d` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as 500ms, 10s, 5m, 1h or 2d"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        "d" => Duration::from_secs(n * 86_400),
        _ => {
            return Err(format!(
                "`{text}` is not a duration such as 500ms, 10s, 5m, 1h or 2d"
            ));
        }
    };
    Ok(d)
}

/// The inverse of [`parse_duration`] for whole milliseconds.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_load_without_file_or_env() {
        let (c, report) = Config::load_from(None, env(&[])).unwrap();
        assert_eq!(c.listen, "127.0.0.1:8443".parse().unwrap());
        assert_eq!(c.health_listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(c.excluded_namespaces, vec!["kube-system"]);
        assert_eq!(c.limits.max_body_bytes, 7 * 1024 * 1024);
        assert!(report.ignored_env.is_empty());
    }

    #[test]
    fn env_overrides_file_and_file_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.yaml");
        std::fs::write(
            &file,
            "listen: 0.0.0.0:9443\nhealth_listen: 0.0.0.0:9080\nlimits:\n  max_body_bytes: 2048\n",
        )
        .unwrap();
        let (c, _) = Config::load_from(
            Some(&file),
            env(&[
                ("GATEHOUSE_LISTEN", "0.0.0.0:10443"),
                ("GATEHOUSE_LIMITS__REQUEST_TIMEOUT", "3s"),
                ("GATEHOUSE_TEST_POSTGRES_URL", "postgres://x"),
                ("GATEHOUSE_LISTN", "typo"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:10443".parse().unwrap());
        assert_eq!(c.health_listen, "0.0.0.0:9080".parse().unwrap());
        assert_eq!(c.limits.max_body_bytes, 2048);
        assert_eq!(c.limits.request_timeout, Duration::from_secs(3));
        assert_eq!(c.limits.shutdown_grace, Duration::from_secs(20));
        let (_, report) = Config::load_from(None, env(&[("GATEHOUSE_LISTN", "typo")])).unwrap();
        assert_eq!(report.ignored_env, vec!["GATEHOUSE_LISTN"]);
    }

    #[test]
    fn excluded_namespaces_from_env_list() {
        let (c, _) = Config::load_from(
            None,
            env(&[("GATEHOUSE_EXCLUDED_NAMESPACES", "[kube-system, gatehouse]")]),
        )
        .unwrap();
        assert_eq!(c.excluded_namespaces, vec!["kube-system", "gatehouse"]);
    }

    #[rstest]
    #[case::bad_address_env(&[("GATEHOUSE_LISTEN", "not-an-address")], None, "key `listen`")]
    #[case::bad_address_env_names_var(&[("GATEHOUSE_LISTEN", "nope")], None, "GATEHOUSE_LISTEN")]
    #[case::cert_without_key(&[("GATEHOUSE_TLS_CERT", "/x.crt")], None, "tls_cert is set but tls_key is not")]
    #[case::unknown_file_key(&[], Some("lissen: 1.2.3.4:5\n"), "lissen")]
    #[case::bad_duration(&[], Some("limits:\n  request_timeout: soon\n"), "key `limits.request_timeout`")]
    #[case::bad_log_format(&[("GATEHOUSE_LOG_FORMAT", "xml")], None, "key `log_format`")]
    #[case::tiny_body(&[("GATEHOUSE_LIMITS__MAX_BODY_BYTES", "10")], None, "limits.max_body_bytes")]
    #[case::idle_below_deadline(&[("GATEHOUSE_LIMITS__IDLE_TIMEOUT", "5s")], None, "limits.idle_timeout (5s) must be longer than limits.request_timeout (9s)")]
    #[case::budget_below_body(&[("GATEHOUSE_LIMITS__MAX_INFLIGHT_BODY_BYTES", "1048576")], None, "limits.max_inflight_body_bytes (1048576) must be at least limits.max_body_bytes")]
    fn invalid_config_names_the_key(
        #[case] vars: &[(&str, &str)],
        #[case] file: Option<&str>,
        #[case] expected: &str,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let err = Config::load_from(file.map(|_| path.as_path()), env(vars))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
        assert!(!err.contains('\n'), "one line: {err:?}");
    }

    #[test]
    fn file_error_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.yaml");
        std::fs::write(&path, "listen: nowhere\n").unwrap();
        let err = Config::load_from(Some(&path), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.yaml"), "{err}");
        let missing = Config::load_from(Some(&dir.path().join("missing.yaml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(missing.contains("missing.yaml"), "{missing}");
    }

    const SID: &str = "AC0123456789abcdef0123456789abcdef";

    #[test]
    fn twilio_variables_map_onto_the_notify_section_as_strings() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "9876543210\n").unwrap();
        let (c, report) = Config::load_from(
            None,
            env(&[
                ("TWILIO_ACCOUNT_SID", SID),
                ("TWILIO_AUTH_TOKEN_FILE", token.to_str().unwrap()),
                ("TWILIO_FROM", "+15550001111"),
                ("TWILIO_API_BASE", "https://twilio.example.com"),
                ("GATEHOUSE_SMS_TO", "+15551234567"),
                ("GATEHOUSE_NOTIFY__STORM__MAX_MESSAGES", "2"),
                ("GATEHOUSE_NOTIFY__QUEUE_CAPACITY", "16"),
            ]),
        )
        .unwrap();
        assert!(report.ignored_env.is_empty(), "{:?}", report.ignored_env);
        let t = &c.notify.twilio;
        assert_eq!(t.account_sid.as_deref(), Some(SID));
        // A token of digits stays a string, read from the file and trimmed.
        assert_eq!(
            t.auth_token.as_ref().map(|s| s.expose()),
            Some("9876543210")
        );
        assert_eq!(t.from.as_deref(), Some("+15550001111"));
        assert_eq!(t.api_base, "https://twilio.example.com");
        assert_eq!(c.notify.sms_to, vec!["+15551234567"]);
        assert_eq!(c.notify.storm.max_messages, 2);
        assert_eq!(c.notify.queue_capacity, 16);
        // The token never shows in Debug output of the configuration.
        assert!(!format!("{c:?}").contains("9876543210"));
    }

    #[test]
    fn twilio_settings_also_come_from_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            format!(
                "notify:\n  sms_to: ['+15551234567', '+4930123456']\n  twilio:\n    account_sid: {SID}\n    auth_token: file-token\n    messaging_service_sid: MG0123456789abcdef0123456789abcdef\n"
            ),
        )
        .unwrap();
        let (c, _) =
            Config::load_from(Some(&file), env(&[("TWILIO_AUTH_TOKEN", "env-token")])).unwrap();
        assert_eq!(c.notify.sms_to.len(), 2);
        assert_eq!(
            c.notify.twilio.auth_token.as_ref().map(|s| s.expose()),
            Some("env-token")
        );
        assert!(c.notify.twilio.from.is_none());
    }

    #[rstest]
    #[case::partial(&[("TWILIO_ACCOUNT_SID", SID)], "TWILIO_AUTH_TOKEN")]
    #[case::bad_number(&[("GATEHOUSE_SMS_TO", "+1555, 0151")], "`0151` is not an E.164 number")]
    #[case::both(&[("TWILIO_AUTH_TOKEN", "x"), ("TWILIO_AUTH_TOKEN_FILE", "/nonexistent")], "both set")]
    #[case::missing_file(&[("TWILIO_AUTH_TOKEN_FILE", "/nonexistent/token")], "/nonexistent/token")]
    fn bad_notify_settings_fail_the_start(#[case] vars: &[(&str, &str)], #[case] expected: &str) {
        let err = Config::load_from(None, env(vars)).unwrap_err().to_string();
        assert!(
            err.contains(expected),
            "{err:?} should contain {expected:?}"
        );
    }

    #[rstest]
    #[case("500ms", Duration::from_millis(500))]
    #[case("10s", Duration::from_secs(10))]
    #[case("10", Duration::from_secs(10))]
    #[case("5m", Duration::from_secs(300))]
    #[case("1h", Duration::from_secs(3600))]
    #[case("2d", Duration::from_secs(172_800))]
    fn durations_parse(#[case] text: &str, #[case] expected: Duration) {
        assert_eq!(parse_duration(text).unwrap(), expected);
    }

    #[test]
    fn token_store_and_endpoint_settings() {
        let (c, report) = Config::load_from(
            None,
            env(&[
                (
                    "GATEHOUSE_DATABASE_URL",
                    "postgres://gh:pw@db.example:5432/gh?sslmode=require",
                ),
                ("GATEHOUSE_DATABASE_TIMEOUT", "500ms"),
                ("GATEHOUSE_TOKEN_ADMIN__LISTEN", "0.0.0.0:8444"),
                (
                    "GATEHOUSE_TOKEN_ADMIN__KEY_FILE",
                    "/etc/gatehouse/admin/key",
                ),
            ]),
        )
        .unwrap();
        assert!(report.ignored_env.is_empty(), "{:?}", report.ignored_env);
        let url = c.database_url.as_ref().unwrap();
        assert_eq!(
            url.expose(),
            "postgres://gh:pw@db.example:5432/gh?sslmode=require"
        );
        assert!(!format!("{c:?}").contains(":pw@"), "no password in Debug");
        assert_eq!(c.database_timeout, Duration::from_millis(500));
        assert_eq!(c.token_admin.listen, Some("0.0.0.0:8444".parse().unwrap()));
        assert_eq!(c.token_admin.max_ttl, Duration::from_secs(86_400));

        for (vars, expected) in [
            (
                &[("GATEHOUSE_DATABASE_URL", "mysql://db/gh")][..],
                "database_url: `mysql://db/gh` is not a postgres://",
            ),
            (
                &[("GATEHOUSE_DATABASE_TIMEOUT", "0s")][..],
                "database_timeout must be more than 0s",
            ),
            (
                &[("GATEHOUSE_TOKEN_ADMIN__LISTEN", "127.0.0.1:8444")][..],
                "token_admin.key_file is not",
            ),
            (
                &[
                    ("GATEHOUSE_TOKEN_ADMIN__LISTEN", "127.0.0.1:8443"),
                    ("GATEHOUSE_TOKEN_ADMIN__KEY_FILE", "/k"),
                ][..],
                "token_admin.listen is 127.0.0.1:8443, already used",
            ),
        ] {
            let err = Config::load_from(None, env(vars)).unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{err:?} should contain {expected:?}"
            );
        }
    }

    #[test]
    fn unknown_nested_variables_are_ignored_and_reported_not_fatal() {
        let (c, report) = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE_TOKEN_ADMIN__LISTN", "127.0.0.1:1"),
                ("GATEHOUSE_LIMITS__MAX_BODY", "10"),
                ("GATEHOUSE_NOTIFY__TWILIO__ACOUNT_SID", "AC1"),
                ("GATEHOUSE_LISTEN__PORT", "1"),
                ("GATEHOUSE_LIMITS__MAX_BODY_BYTES", "4096"),
            ]),
        )
        .unwrap();
        let mut ignored = report.ignored_env.clone();
        ignored.sort();
        assert_eq!(
            ignored,
            vec![
                "GATEHOUSE_LIMITS__MAX_BODY",
                "GATEHOUSE_LISTEN__PORT",
                "GATEHOUSE_NOTIFY__TWILIO__ACOUNT_SID",
                "GATEHOUSE_TOKEN_ADMIN__LISTN",
            ]
        );
        assert_eq!(c.limits.max_body_bytes, 4096);
        assert_eq!(c.token_admin.listen, None);
        assert_eq!(c.listen, Config::default().listen);
    }

    #[rstest]
    #[case::commas("kube-system,gatehouse", &["kube-system", "gatehouse"])]
    #[case::spaces(" kube-system , gatehouse ", &["kube-system", "gatehouse"])]
    #[case::brackets("[kube-system, gatehouse]", &["kube-system", "gatehouse"])]
    #[case::one("team-a", &["team-a"])]
    #[case::none("", &[])]
    fn every_list_variable_takes_commas(#[case] raw: &str, #[case] expected: &[&str]) {
        let (c, _) =
            Config::load_from(None, env(&[("GATEHOUSE_EXCLUDED_NAMESPACES", raw)])).unwrap();
        assert_eq!(c.excluded_namespaces, expected);
        let (c, _) = Config::load_from(
            None,
            env(&[(
                "GATEHOUSE_NOTIFY__IGNORE_UPDATE_FIELDS",
                "/status, /metadata/generation",
            )]),
        )
        .unwrap();
        assert_eq!(
            c.notify.ignore_update_fields,
            vec!["/status", "/metadata/generation"]
        );
        let (c, _) = Config::load_from(
            None,
            env(&[("GATEHOUSE_SMS_TO", "+15551234567, +4930123456")]),
        )
        .unwrap();
        assert_eq!(c.notify.sms_to, vec!["+15551234567", "+4930123456"]);
        let (c, _) = Config::load_from(
            None,
            env(&[("GATEHOUSE_SMS_TO", "[+15551234567,+4930123456]")]),
        )
        .unwrap();
        assert_eq!(c.notify.sms_to, vec!["+15551234567", "+4930123456"]);
    }

    #[test]
    fn listen_takes_a_host_name_resolved_at_start_or_says_what_it_expects() {
        let (c, _) = Config::load_from(
            None,
            env(&[
                ("GATEHOUSE_LISTEN", "localhost:9443"),
                ("GATEHOUSE_HEALTH_LISTEN", "127.0.0.1:9080"),
                ("GATEHOUSE_TOKEN_ADMIN__LISTEN", "localhost:9444"),
                ("GATEHOUSE_TOKEN_ADMIN__KEY_FILE", "/k"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:9443".parse().unwrap());
        assert_eq!(
            c.token_admin.listen,
            Some("127.0.0.1:9444".parse().unwrap())
        );
        let (c, _) = Config::load_from(None, env(&[("GATEHOUSE_LISTEN", "[::1]:9443")])).unwrap();
        assert_eq!(c.listen, "[::1]:9443".parse().unwrap());
        for bad in ["localhost", "9443", ":9443", "localhost:http"] {
            let err = Config::load_from(None, env(&[("GATEHOUSE_LISTEN", bad)]))
                .unwrap_err()
                .to_string();
            assert_eq!(
                err,
                format!(
                    "invalid configuration: key `listen`: `{bad}` is not an address: expected IP:PORT (such as 0.0.0.0:8443) or HOST:PORT (from environment variable GATEHOUSE_LISTEN)"
                )
            );
        }
    }

    #[test]
    fn an_unreadable_policies_path_names_the_key_and_where_it_was_set() {
        let err = Config::load_from(
            None,
            env(&[("GATEHOUSE_POLICIES", "/nonexistent/gatehouse/policies")]),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            err,
            "invalid configuration: key `policies`: /nonexistent/gatehouse/policies cannot be read: No such file or directory (os error 2) (from environment variable GATEHOUSE_POLICIES)"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("gatehouse.yaml");
        std::fs::write(&file, "policies: /nonexistent/gatehouse/policies\n").unwrap();
        let err = Config::load_from(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid configuration: key `policies`: /nonexistent/gatehouse/policies cannot be read")
                && err.ends_with(&format!("(in {})", file.display())),
            "{err}"
        );
    }

    #[test]
    fn bad_duration_is_an_error() {
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("10y").is_err());
    }
}
