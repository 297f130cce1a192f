//! The `notify` section of the configuration: Twilio and webhook settings, the delivery queue,
//! retries, storm control. Twilio's own variable names (`TWILIO_ACCOUNT_SID`, …) and
//! `GATEHOUSE_SMS_TO` are mapped onto these keys by [`env_key`].

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::config::humantime_secs;
use crate::secret::Secret;

/// Twilio's API host, the default `notify.twilio.api_base`.
pub const TWILIO_API_BASE: &str = "https://api.twilio.com";

/// Environment variables read without the `GATEHOUSE_` prefix convention, and the
/// configuration key (figment path, `__`-separated) each one sets.
pub const EXTRA_ENV: &[(&str, &str)] = &[
    ("TWILIO_ACCOUNT_SID", "notify__twilio__account_sid"),
    (
        "TWILIO_ACCOUNT_SID_FILE",
        "notify__twilio__account_sid_file",
    ),
    ("TWILIO_AUTH_TOKEN", "notify__twilio__auth_token"),
    ("TWILIO_AUTH_TOKEN_FILE", "notify__twilio__auth_token_file"),
    ("TWILIO_FROM", "notify__twilio__from"),
    (
        "TWILIO_MESSAGING_SERVICE_SID",
        "notify__twilio__messaging_service_sid",
    ),
    ("TWILIO_API_BASE", "notify__twilio__api_base"),
    ("GATEHOUSE_SMS_TO", "notify__sms_to"),
];

/// The configuration key an environment variable outside the generic `GATEHOUSE_<KEY>`
/// scheme sets (`TWILIO_AUTH_TOKEN` → `notify__twilio__auth_token`).
pub fn env_key(name: &str) -> Option<&'static str> {
    EXTRA_ENV
        .iter()
        .find(|(var, _)| *var == name)
        .map(|(_, key)| *key)
}

/// Whether a key's environment value is taken as a literal string rather than parsed (a
/// phone number such as `+15551234567` would otherwise become an integer, and a token made
/// of digits a number).
pub fn literal_env_key(key: &str) -> bool {
    key.starts_with("notify__twilio__")
        || key.starts_with("notify__webhook__")
        || key == "notify__sms_to"
        || key == "notify__cluster"
}

/// Retries of one delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// Backoff before the second attempt; doubled each time, with jitter.
    #[serde(with = "humantime_secs")]
    pub initial_backoff: Duration,
    /// The longest backoff between two attempts (a `Retry-After` is honoured up to this).
    #[serde(with = "humantime_secs")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// Storm control: per recipient, at most `max_messages` in each `window`; the rest of the
/// window becomes one summary message at its end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StormConfig {
    /// Messages sent one by one per recipient and window; 0 turns storm control off.
    pub max_messages: u32,
    /// The window.
    #[serde(with = "humantime_secs")]
    pub window: Duration,
}

impl Default for StormConfig {
    fn default() -> Self {
        Self {
            max_messages: 5,
            window: Duration::from_secs(120),
        }
    }
}

/// The Twilio SMS channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TwilioConfig {
    /// `AC…` (`TWILIO_ACCOUNT_SID`).
    pub account_sid: Option<String>,
    /// A file holding the Account SID (`TWILIO_ACCOUNT_SID_FILE`); read at start.
    pub account_sid_file: Option<PathBuf>,
    /// The Auth Token (`TWILIO_AUTH_TOKEN`). Prefer `auth_token_file`.
    pub auth_token: Option<Secret>,
    /// A file holding the Auth Token (`TWILIO_AUTH_TOKEN_FILE`); read at start.
    pub auth_token_file: Option<PathBuf>,
    /// The sender: a Twilio number in E.164, a short code or an alphanumeric sender ID
    /// (`TWILIO_FROM`).
    pub from: Option<String>,
    /// `MG…`: send through a Messaging Service instead of (or with) `from`
    /// (`TWILIO_MESSAGING_SERVICE_SID`).
    pub messaging_service_sid: Option<String>,
    /// Twilio's API base URL (`TWILIO_API_BASE`).
    pub api_base: String,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        Self {
            account_sid: None,
            account_sid_file: None,
            auth_token: None,
            auth_token_file: None,
            from: None,
            messaging_service_sid: None,
            api_base: TWILIO_API_BASE.to_owned(),
        }
    }
}

impl TwilioConfig {
    /// Whether any credential or sender is set (then all that is needed must be).
    pub fn is_configured(&self) -> bool {
        self.account_sid.is_some()
            || self.auth_token.is_some()
            || self.from.is_some()
            || self.messaging_service_sid.is_some()
    }
}

/// The chat webhook channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookConfig {
    /// Where to POST `{"text": …}` (a Slack incoming-webhook URL holds a token, so it is kept
    /// as a secret and never logged).
    pub url: Option<Secret>,
    /// A file holding the URL; read at start.
    pub url_file: Option<PathBuf>,
}

/// The `notify` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotifyConfig {
    /// Default SMS recipients in E.164 (`GATEHOUSE_SMS_TO`, comma-separated), for rules that
    /// name none.
    #[serde(deserialize_with = "comma_list")]
    pub sms_to: Vec<String>,
    /// A short cluster name put at the head of every message.
    pub cluster: Option<String>,
    /// Events waiting for delivery; when full, new events are dropped (and counted).
    pub queue_capacity: usize,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// On SIGTERM/SIGINT, how long queued notifications may take to go out before exit.
    #[serde(with = "humantime_secs")]
    pub drain_timeout: Duration,
    /// Deadline of one HTTP request to Twilio or the webhook.
    #[serde(with = "humantime_secs")]
    pub request_timeout: Duration,
    /// How long a request uid is remembered, so an API-server retry is not notified twice.
    #[serde(with = "humantime_secs")]
    pub dedupe_window: Duration,
    /// JSON pointers into the object that do not make an UPDATE worth a notification when
    /// they are all that changed. Empty: every UPDATE counts.
    pub ignore_update_fields: Vec<String>,
    /// Retries.
    pub retry: RetryConfig,
    /// Storm control.
    pub storm: StormConfig,
    /// Twilio.
    pub twilio: TwilioConfig,
    /// Chat webhook.
    pub webhook: WebhookConfig,
    /// Extra PEM CA certificates trusted for outgoing HTTPS (Twilio, webhook), besides the
    /// system's roots: for a TLS-inspecting proxy or an in-cluster chat server.
    pub ca_file: Option<PathBuf>,
}

/// The default `ignore_update_fields`: status and the bookkeeping the API server and the
/// Deployment controller change on their own.
pub const DEFAULT_IGNORED_UPDATE_FIELDS: &[&str] = &[
    "/status",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/managedFields",
    "/metadata/finalizers",
    "/metadata/ownerReferences",
    "/metadata/annotations/deployment.kubernetes.io~1revision",
];

impl Default for NotifyConfig {
    fn default() -> Self {
        Self {
            sms_to: Vec::new(),
            cluster: None,
            queue_capacity: 1024,
            concurrency: 4,
            drain_timeout: Duration::from_secs(8),
            request_timeout: Duration::from_secs(10),
            dedupe_window: Duration::from_secs(600),
            ignore_update_fields: DEFAULT_IGNORED_UPDATE_FIELDS
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            retry: RetryConfig::default(),
            storm: StormConfig::default(),
            twilio: TwilioConfig::default(),
            webhook: WebhookConfig::default(),
            ca_file: None,
        }
    }
}

/// `+15551234567`, `"+1555…, +4930…"` or a YAML list.
fn comma_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        One(String),
        Many(Vec<String>),
    }
    let items = match Raw::deserialize(d)? {
        Raw::One(text) => text
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .map(str::to_owned)
            .collect(),
        Raw::Many(items) => items,
    };
    Ok(items
        .into_iter()
        .map(|s| s.trim().trim_matches(['"', '\'']).to_owned())
        .filter(|s| !s.is_empty())
        .collect())
}

/// `+` and 2 to 15 digits, the first not 0.
pub fn is_e164(number: &str) -> bool {
    let Some(digits) = number.strip_prefix('+') else {
        return false;
    };
    (2..=15).contains(&digits.len())
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

/// Twilio SIDs: a two-letter prefix and 32 hex digits.
fn is_sid(sid: &str, prefix: &str) -> bool {
    sid.len() == 34 && sid.starts_with(prefix) && sid[2..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Reads a secret or setting from a file (a Kubernetes Secret volume): trimmed, non-empty.
/// The error names the key and the file, never the content.
fn read_setting_file(key: &str, var: &str, path: &std::path::Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("key `{key}` ({var}): cannot read {}: {e}", path.display()))?;
    let value = text.trim();
    if value.is_empty() {
        return Err(format!("key `{key}` ({var}): {} is empty", path.display()));
    }
    Ok(value.to_owned())
}

impl NotifyConfig {
    /// Replaces every `…_file` setting by the file's content, so the rest of the program
    /// sees one value. Setting both a value and its file is an error.
    pub fn resolve_files(&mut self) -> Result<(), String> {
        fn both(key: &str, vars: &str) -> String {
            format!("key `{key}` and `{key}_file` are both set ({vars}): set one of them")
        }
        let t = &mut self.twilio;
        if let Some(path) = t.account_sid_file.take() {
            if t.account_sid.is_some() {
                return Err(both(
                    "notify.twilio.account_sid",
                    "TWILIO_ACCOUNT_SID, TWILIO_ACCOUNT_SID_FILE",
                ));
            }
            t.account_sid = Some(read_setting_file(
                "notify.twilio.account_sid_file",
                "TWILIO_ACCOUNT_SID_FILE",
                &path,
            )?);
        }
        if let Some(path) = t.auth_token_file.take() {
            if t.auth_token.is_some() {
                return Err(both(
                    "notify.twilio.auth_token",
                    "TWILIO_AUTH_TOKEN, TWILIO_AUTH_TOKEN_FILE",
                ));
            }
            t.auth_token = Some(Secret::new(read_setting_file(
                "notify.twilio.auth_token_file",
                "TWILIO_AUTH_TOKEN_FILE",
                &path,
            )?));
        }
        let w = &mut self.webhook;
        if let Some(path) = w.url_file.take() {
            if w.url.is_some() {
                return Err(both(
                    "notify.webhook.url",
                    "GATEHOUSE_NOTIFY__WEBHOOK__URL, GATEHOUSE_NOTIFY__WEBHOOK__URL_FILE",
                ));
            }
            w.url = Some(Secret::new(read_setting_file(
                "notify.webhook.url_file",
                "GATEHOUSE_NOTIFY__WEBHOOK__URL_FILE",
                &path,
            )?));
        }
        Ok(())
    }

    /// Checks the section; the error names the key (and the variable where it has its own).
    pub fn validate(&self) -> Result<(), String> {
        for n in &self.sms_to {
            if !is_e164(n) {
                return Err(format!(
                    "key `notify.sms_to` (GATEHOUSE_SMS_TO): `{n}` is not an E.164 number such as +15551234567"
                ));
            }
        }
        if self.queue_capacity == 0 {
            return Err("key `notify.queue_capacity` must be at least 1".into());
        }
        if !(1..=64).contains(&self.concurrency) {
            return Err("key `notify.concurrency` must be between 1 and 64".into());
        }
        if self.retry.max_attempts == 0 {
            return Err("key `notify.retry.max_attempts` must be at least 1".into());
        }
        if self.retry.initial_backoff > self.retry.max_backoff {
            return Err(
                "key `notify.retry.initial_backoff` is longer than `notify.retry.max_backoff`"
                    .into(),
            );
        }
        if self.storm.max_messages > 0 && self.storm.window.is_zero() {
            return Err("key `notify.storm.window` must be more than 0s".into());
        }
        for (key, d) in [
            ("notify.request_timeout", self.request_timeout),
            ("notify.drain_timeout", self.drain_timeout),
        ] {
            if d.is_zero() {
                return Err(format!("key `{key}` must be more than 0s"));
            }
        }
        for p in &self.ignore_update_fields {
            if !p.starts_with('/') {
                return Err(format!(
                    "key `notify.ignore_update_fields`: `{p}` is not a JSON pointer (write /status, /metadata/generation)"
                ));
            }
        }
        if let Some(c) = &self.cluster
            && (c.is_empty() || c.len() > 32)
        {
            return Err("key `notify.cluster` must be 1 to 32 characters".into());
        }
        self.validate_twilio()?;
        if let Some(url) = &self.webhook.url {
            // The URL holds a token: name the problem, not the URL.
            match reqwest::Url::parse(url.expose()) {
                Ok(u) if u.scheme() == "https" || u.scheme() == "http" => {}
                Ok(_) => {
                    return Err(
                        "key `notify.webhook.url` must be an http:// or https:// URL".into(),
                    );
                }
                Err(e) => return Err(format!("key `notify.webhook.url` is not a URL: {e}")),
            }
        }
        Ok(())
    }

    fn validate_twilio(&self) -> Result<(), String> {
        let t = &self.twilio;
        match reqwest::Url::parse(&t.api_base) {
            Ok(u) if u.scheme() == "https" => {}
            Ok(u) if u.scheme() == "http" && is_loopback(&u) => {}
            Ok(_) => {
                return Err(format!(
                    "key `notify.twilio.api_base` (TWILIO_API_BASE): `{}` must be an https:// URL (http:// only to a loopback address), or the token would travel in clear",
                    t.api_base
                ));
            }
            Err(e) => {
                return Err(format!(
                    "key `notify.twilio.api_base` (TWILIO_API_BASE): `{}` is not a URL: {e}",
                    t.api_base
                ));
            }
        }
        if !t.is_configured() {
            return Ok(());
        }
        match &t.account_sid {
            None => {
                return Err(
                    "Twilio is partly configured: key `notify.twilio.account_sid` (TWILIO_ACCOUNT_SID) is missing"
                        .into(),
                );
            }
            Some(sid) if !is_sid(sid, "AC") => {
                return Err(format!(
                    "key `notify.twilio.account_sid` (TWILIO_ACCOUNT_SID): `{sid}` is not an Account SID (AC and 32 hex digits)"
                ));
            }
            Some(_) => {}
        }
        match &t.auth_token {
            None => {
                return Err(
                    "Twilio is partly configured: key `notify.twilio.auth_token` (TWILIO_AUTH_TOKEN or TWILIO_AUTH_TOKEN_FILE) is missing"
                        .into(),
                );
            }
            Some(token) if token.expose().is_empty() => {
                return Err("key `notify.twilio.auth_token` (TWILIO_AUTH_TOKEN) is empty".into());
            }
            Some(_) => {}
        }
        if t.from.is_none() && t.messaging_service_sid.is_none() {
            return Err(
                "Twilio is partly configured: set key `notify.twilio.from` (TWILIO_FROM) or `notify.twilio.messaging_service_sid` (TWILIO_MESSAGING_SERVICE_SID)"
                    .into(),
            );
        }
        if let Some(from) = &t.from
            && (from.is_empty() || from.contains(char::is_whitespace))
        {
            return Err(format!(
                "key `notify.twilio.from` (TWILIO_FROM): `{from}` is not a sender (an E.164 number, short code or sender ID)"
            ));
        }
        if let Some(mg) = &t.messaging_service_sid
            && !is_sid(mg, "MG")
        {
            return Err(format!(
                "key `notify.twilio.messaging_service_sid` (TWILIO_MESSAGING_SERVICE_SID): `{mg}` is not a Messaging Service SID (MG and 32 hex digits)"
            ));
        }
        Ok(())
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("+15551234567", true)]
    #[case("+4930123456", true)]
    #[case("15551234567", false)]
    #[case("+0555", false)]
    #[case("+1", false)]
    #[case("+1234567890123456", false)]
    #[case("+1 555 123", false)]
    fn e164(#[case] n: &str, #[case] ok: bool) {
        assert_eq!(is_e164(n), ok, "{n}");
    }

    #[test]
    fn sms_to_takes_a_comma_list_or_a_yaml_list() {
        let c: NotifyConfig = serde_yaml::from_str("sms_to: '+15551234567, +4930123456'").unwrap();
        assert_eq!(c.sms_to, vec!["+15551234567", "+4930123456"]);
        let c: NotifyConfig = serde_yaml::from_str("sms_to: ['+15551234567']").unwrap();
        assert_eq!(c.sms_to, vec!["+15551234567"]);
        let c: NotifyConfig = serde_yaml::from_str("sms_to: '[+15551234567]'").unwrap();
        assert_eq!(c.sms_to, vec!["+15551234567"]);
    }

    fn twilio(f: impl FnOnce(&mut TwilioConfig)) -> NotifyConfig {
        let mut c = NotifyConfig::default();
        c.twilio.account_sid = Some(format!("AC{}", "a".repeat(32)));
        c.twilio.auth_token = Some(Secret::new("tok"));
        c.twilio.from = Some("+15550001111".into());
        f(&mut c.twilio);
        c
    }

    #[rstest]
    #[case::complete(twilio(|_| {}), None)]
    #[case::service_only(twilio(|t| { t.from = None; t.messaging_service_sid = Some(format!("MG{}", "0".repeat(32))); }), None)]
    #[case::no_sid(twilio(|t| t.account_sid = None), Some("TWILIO_ACCOUNT_SID) is missing"))]
    #[case::bad_sid(twilio(|t| t.account_sid = Some("AC123".into())), Some("not an Account SID"))]
    #[case::no_token(twilio(|t| t.auth_token = None), Some("TWILIO_AUTH_TOKEN or TWILIO_AUTH_TOKEN_FILE) is missing"))]
    #[case::no_sender(twilio(|t| t.from = None), Some("TWILIO_FROM"))]
    #[case::bad_service(twilio(|t| t.messaging_service_sid = Some("MGx".into())), Some("not a Messaging Service SID"))]
    #[case::http_base(twilio(|t| t.api_base = "http://api.twilio.com".into()), Some("must be an https:// URL"))]
    #[case::http_loopback(twilio(|t| t.api_base = "http://127.0.0.1:9999".into()), None)]
    fn twilio_settings(#[case] c: NotifyConfig, #[case] error: Option<&str>) {
        match (c.validate(), error) {
            (Ok(()), None) => {}
            (Err(e), Some(expected)) => {
                assert!(e.contains(expected), "{e:?} should contain {expected:?}");
                assert!(!e.contains("tok\""), "{e}");
            }
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn files_replace_values_and_both_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret-from-file\n").unwrap();
        let sid = dir.path().join("sid");
        std::fs::write(&sid, format!("  AC{}\n", "b".repeat(32))).unwrap();
        let mut c = NotifyConfig::default();
        c.twilio.auth_token_file = Some(token.clone());
        c.twilio.account_sid_file = Some(sid);
        c.resolve_files().unwrap();
        assert_eq!(
            c.twilio.auth_token.as_ref().map(Secret::expose),
            Some("s3cret-from-file")
        );
        assert_eq!(c.twilio.account_sid, Some(format!("AC{}", "b".repeat(32))));
        assert!(c.twilio.auth_token_file.is_none() && c.twilio.account_sid_file.is_none());

        let mut both = NotifyConfig::default();
        both.twilio.auth_token = Some(Secret::new("x"));
        both.twilio.auth_token_file = Some(token);
        let err = both.resolve_files().unwrap_err();
        assert!(err.contains("both set"), "{err}");

        let mut missing = NotifyConfig::default();
        missing.twilio.auth_token_file = Some(dir.path().join("nope"));
        let err = missing.resolve_files().unwrap_err();
        assert!(
            err.contains("TWILIO_AUTH_TOKEN_FILE") && err.contains("nope"),
            "{err}"
        );
    }
}
