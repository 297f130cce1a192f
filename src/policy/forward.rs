//! Policy kind `forward`: POST the AdmissionReview to a configured HTTPS endpoint (an Azure
//! Function, an AWS Lambda function URL, a Tencent SCF API gateway, any service) and use its
//! answer.
//!
//! - The URL comes only from the policy file. `https` always; plain `http` only to a loopback
//!   host (a sidecar). Redirects are not followed.
//! - Headers come from the policy (`value`), a file (`file`, re-read when it changes, so a
//!   mounted Kubernetes Secret can rotate) or an environment variable (`env`). Their values
//!   never appear in logs, errors or `Debug` output.
//! - One `reqwest::Client` per policy, built when the policy is loaded, so connections (and
//!   TLS sessions) are pooled and reused across admissions.
//! - The answer is a full AdmissionReview (`response.allowed`, `response.status.message`,
//!   `response.warnings`) or the simple `{"allow": true|false|"true"|"false", "message": "…"}`.
//! - No usable answer within `timeout` (connection refused, TLS failure, HTTP status other than
//!   2xx, a body that is neither format, a different uid) is a failure: `failureMode: closed`
//!   makes it a violation, `failureMode: open` lets the request pass with a warning.
//! - Offline (`gatehouse check`) the endpoint is not called and the policy reports `Skipped`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use reqwest::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::{Check, Eval, EvalCtx, EvalOptions, LoadContext, LoadError, Outcome, Policy};
use crate::admission::{Review, describe_object};

/// Largest answer read from the endpoint; a longer one is a failure.
const MAX_ANSWER_BYTES: usize = 1024 * 1024;
/// Default for `params.timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// What to do when the endpoint gives no usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum FailureMode {
    /// The failure is a violation (with `action: deny`, the request is refused).
    #[default]
    Closed,
    /// The request passes this policy, with a warning naming the failure.
    Open,
}

/// `params` of a `forward` policy, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Params {
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, HeaderSpec>,
    #[serde(default, deserialize_with = "duration")]
    timeout: Option<Duration>,
    #[serde(default)]
    ca_file: Option<PathBuf>,
    #[serde(default)]
    failure_mode: FailureMode,
}

/// Where a header's value comes from: exactly one of the three.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderSpec {
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    file: Option<PathBuf>,
    #[serde(default)]
    env: Option<String>,
}

impl fmt::Debug for HeaderSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HeaderSpec")
            .field("value", &self.value.as_ref().map(|_| "<redacted>"))
            .field("file", &self.file)
            .field("env", &self.env)
            .finish()
    }
}

fn duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    let parsed = match Raw::deserialize(d)? {
        Raw::Secs(n) => Duration::from_secs(n),
        Raw::Text(t) => crate::config::parse_duration(&t).map_err(serde::de::Error::custom)?,
    };
    Ok(Some(parsed))
}

/// A header value's source, resolved when a request is sent.
#[derive(Clone)]
enum Source {
    Value(HeaderValue),
    File {
        path: PathBuf,
        /// The value read last and the file's modification time then.
        cache: Arc<Mutex<Option<(SystemTime, HeaderValue)>>>,
    },
    Env(String),
}

/// Why a header value could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum HeaderError {
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("environment variable {0} is not set")]
    Env(String),
    #[error("the value is not a valid HTTP header value (control characters or non-ASCII)")]
    Invalid,
}

fn header_value(text: &str) -> Result<HeaderValue, HeaderError> {
    let mut v = HeaderValue::from_str(text.trim()).map_err(|_| HeaderError::Invalid)?;
    v.set_sensitive(true);
    Ok(v)
}

impl Source {
    fn resolve(&self) -> Result<HeaderValue, HeaderError> {
        match self {
            Source::Value(v) => Ok(v.clone()),
            Source::Env(name) => match std::env::var(name) {
                Ok(v) => header_value(&v),
                Err(_) => Err(HeaderError::Env(name.clone())),
            },
            Source::File { path, cache } => {
                let err = |e: std::io::Error| HeaderError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                };
                let modified = std::fs::metadata(path)
                    .and_then(|m| m.modified())
                    .map_err(err)?;
                let mut cached = cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, v)) = cached.as_ref()
                    && *at == modified
                {
                    return Ok(v.clone());
                }
                let text = std::fs::read_to_string(path).map_err(err)?;
                let v = header_value(&text)?;
                *cached = Some((modified, v.clone()));
                Ok(v)
            }
        }
    }
}

/// One configured header.
#[derive(Clone)]
struct Header {
    name: HeaderName,
    source: Source,
}

/// A `forward` policy, ready to call its endpoint.
#[derive(Clone)]
pub struct Forward {
    url: reqwest::Url,
    /// `host[:port]`, for messages (the path and query may hold secrets; they are never shown).
    endpoint: String,
    headers: Vec<Header>,
    timeout: Duration,
    failure_mode: FailureMode,
    client: reqwest::Client,
}

impl fmt::Debug for Forward {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("endpoint", &self.endpoint)
            .field(
                "headers",
                &self
                    .headers
                    .iter()
                    .map(|h| h.name.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("failure_mode", &self.failure_mode)
            .finish_non_exhaustive()
    }
}

/// `localhost`, `127.0.0.0/8`, `[::1]`.
fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost") || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Reads a PEM CA bundle into a rustls client configuration trusting only it.
fn client_tls(ca_file: &Path) -> Result<rustls::ClientConfig, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let shown = ca_file.display();
    let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{shown}: not a PEM certificate: {e}"))?;
        roots
            .add(cert)
            .map_err(|e| format!("{shown}: unusable CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err(format!("{shown}: no CERTIFICATE block found"));
    }
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("{shown}: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The endpoint's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verdict {
    allowed: bool,
    message: String,
    warnings: Vec<String>,
}

/// Reads an answer in either accepted format; the error says what is wrong with it.
fn parse_answer(body: &[u8], uid: &str) -> Result<Verdict, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not JSON ({e})"))?;
    let Some(obj) = v.as_object() else {
        return Err("the answer is not a JSON object".into());
    };
    let text = |v: Option<&Value>| v.and_then(Value::as_str).unwrap_or_default().to_owned();
    if let Some(resp) = obj.get("response") {
        if let Some(kind) = obj.get("kind")
            && kind != "AdmissionReview"
        {
            return Err(format!("the answer is a {kind}, not an AdmissionReview"));
        }
        let Some(allowed) = resp.get("allowed").and_then(Value::as_bool) else {
            return Err("the AdmissionReview answer has no boolean response.allowed".into());
        };
        if let Some(got) = resp.get("uid").and_then(Value::as_str)
            && !got.is_empty()
            && got != uid
        {
            return Err(format!(
                "the AdmissionReview answer is for uid {got}, not {uid}"
            ));
        }
        let warnings = resp
            .get("warnings")
            .and_then(Value::as_array)
            .map(|w| {
                w.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        return Ok(Verdict {
            allowed,
            message: text(resp.get("status").and_then(|s| s.get("message"))),
            warnings,
        });
    }
    if let Some(allow) = obj.get("allow") {
        let allowed = match allow {
            Value::Bool(b) => *b,
            Value::String(s) if s.eq_ignore_ascii_case("true") => true,
            Value::String(s) if s.eq_ignore_ascii_case("false") => false,
            other => {
                return Err(format!(
                    "`allow` is {other}; expected true, false, \"true\" or \"false\""
                ));
            }
        };
        return Ok(Verdict {
            allowed,
            message: text(obj.get("message")),
            warnings: Vec::new(),
        });
    }
    Err("the answer is neither an AdmissionReview nor {\"allow\": …, \"message\": …}".into())
}

/// `reqwest` errors without the URL (whose path or query may hold a key), with their causes.
fn describe_error(e: reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!(
            "no answer within {}",
            crate::config::format_duration(timeout)
        );
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

impl Forward {
    /// Builds the policy from its `params`: checks the URL and headers, reads the CA file and
    /// builds the HTTP client. Header files and variables are read when a request is sent
    /// (and checked at `serve` start by [`preflight`]).
    pub(crate) fn from_params(params: serde_yaml::Value) -> Result<Self, String> {
        let p: Params = super::typed_params(params)?;
        let url = reqwest::Url::parse(&p.url).map_err(|e| format!("params.url: {e}"))?;
        let host = url
            .host_str()
            .ok_or("params.url: the URL has no host")?
            .to_owned();
        match url.scheme() {
            "https" => {}
            "http" if is_loopback(&host) => {}
            "http" => {
                return Err(
                    "params.url: plain http is allowed only to localhost; use https".into(),
                );
            }
            other => return Err(format!("params.url: scheme `{other}` is not https")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "params.url: credentials in the URL are not allowed; send them in headers".into(),
            );
        }
        let endpoint = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        };
        let mut headers = Vec::new();
        for (name, spec) in p.headers {
            let at = format!("params.headers.{name}");
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("{at}: not a valid HTTP header name"))?;
            if header_name == CONTENT_TYPE || header_name == reqwest::header::HOST {
                return Err(format!("{at}: this header is set by Gatehouse"));
            }
            let source = match (spec.value, spec.file, spec.env) {
                (Some(v), None, None) => {
                    Source::Value(header_value(&v).map_err(|e| format!("{at}.value: {e}"))?)
                }
                (None, Some(path), None) => Source::File {
                    path,
                    cache: Arc::new(Mutex::new(None)),
                },
                (None, None, Some(var)) if !var.is_empty() => Source::Env(var),
                _ => return Err(format!("{at}: set exactly one of value, file or env")),
            };
            headers.push(Header {
                name: header_name,
                source,
            });
        }
        let timeout = p.timeout.unwrap_or(DEFAULT_TIMEOUT);
        if timeout.is_zero() {
            return Err("params.timeout: must be more than 0".into());
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .pool_idle_timeout(Duration::from_secs(90))
            .user_agent(concat!("gatehouse/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &p.ca_file {
            builder = builder
                .use_preconfigured_tls(client_tls(ca).map_err(|e| format!("params.caFile: {e}"))?);
        } else {
            // The system's roots through rustls-platform-verifier, with the ring provider.
            crate::tls::install_default_provider();
        }
        let client = builder
            .build()
            .map_err(|e| format!("params: cannot build the HTTP client: {e}"))?;
        Ok(Self {
            url,
            endpoint,
            headers,
            timeout,
            failure_mode: p.failure_mode,
            client,
        })
    }

    /// Sends the review and returns the endpoint's verdict, or why there is none.
    async fn call(&self, req: &Review<'_>) -> Result<Verdict, String> {
        // The request goes on as it came, without being decoded and encoded again.
        let request = req
            .request_json()
            .ok_or("cannot encode the review: the request is unreadable")?;
        let body = format!(
            r#"{{"apiVersion":"{}","kind":"AdmissionReview","request":{}}}"#,
            req.api_version,
            request.text()
        );
        let mut request = self
            .client
            .post(self.url.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body);
        for h in &self.headers {
            let value = h
                .source
                .resolve()
                .map_err(|e| format!("header {}: {e}", h.name))?;
            request = request.header(h.name.clone(), value);
        }
        let mut resp = request
            .send()
            .await
            .map_err(|e| describe_error(e, self.timeout))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(format!("it answered HTTP {status}"));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| describe_error(e, self.timeout))?
        {
            if body.len() + chunk.len() > MAX_ANSWER_BYTES {
                return Err(format!(
                    "the answer is larger than {MAX_ANSWER_BYTES} bytes"
                ));
            }
            body.extend_from_slice(&chunk);
        }
        parse_answer(&body, &req.uid)
    }

    /// Calls the endpoint (unless offline) and turns its answer into an outcome.
    pub(crate) async fn evaluate(
        &self,
        policy: &str,
        req: &Review<'_>,
        opts: &EvalOptions,
    ) -> Outcome {
        if opts.offline {
            return Outcome::Skipped(format!(
                "policy {policy} forwards to {} and is not called offline",
                self.endpoint
            ));
        }
        match self.call(req).await {
            Ok(v) if v.allowed => {
                if v.warnings.is_empty() {
                    Outcome::Pass
                } else {
                    Outcome::Warning(format!(
                        "{} (policy {policy}, {})",
                        v.warnings.join("; "),
                        self.endpoint
                    ))
                }
            }
            Ok(v) => {
                let message = if v.message.is_empty() {
                    "denied without a message".to_owned()
                } else {
                    v.message
                };
                Outcome::Violation(format!(
                    "{}: {message} (policy {policy}, {})",
                    describe_object(req),
                    self.endpoint
                ))
            }
            Err(reason) => {
                tracing::warn!(
                    policy,
                    endpoint = %self.endpoint,
                    uid = %req.uid,
                    failure_mode = ?self.failure_mode,
                    %reason,
                    "forward policy got no usable answer"
                );
                match self.failure_mode {
                    FailureMode::Closed => Outcome::Violation(format!(
                        "{}: policy {policy} could not get an answer from {} ({reason}) and fails closed",
                        describe_object(req),
                        self.endpoint
                    )),
                    FailureMode::Open => Outcome::Warning(format!(
                        "policy {policy} could not get an answer from {} ({reason}); allowed because it fails open",
                        self.endpoint
                    )),
                }
            }
        }
    }
}

/// The [`super::Loader`] of `forward`.
pub(crate) fn load(
    params: serde_yaml::Value,
    _ctx: &LoadContext,
) -> Result<Arc<dyn Check>, String> {
    Ok(Arc::new(Forward::from_params(params)?))
}

impl Check for Forward {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Pending(Box::pin(Forward::evaluate(
            self, ctx.policy, ctx.review, ctx.opts,
        )))
    }
}

/// Start-time checks for `serve`: every header file and variable of every `forward` policy
/// can be read now, and the forward timeouts together stay below `request_timeout` (the
/// policies run one after another, and past `request_timeout` the webhook answers 503, so a
/// failure mode would never apply).
pub(crate) fn preflight(policies: &[Policy], request_timeout: Duration) -> Result<(), LoadError> {
    let mut total = Duration::ZERO;
    let mut last = None;
    for p in policies {
        let Some(f) = p.kind.downcast::<Forward>() else {
            continue;
        };
        for h in &f.headers {
            h.source.resolve().map_err(|e| {
                let field = match &h.source {
                    Source::File { .. } => "file",
                    Source::Env(_) => "env",
                    Source::Value(_) => "value",
                };
                LoadError::new(
                    &p.source,
                    format!(
                        "policy \"{}\": params.headers.{}.{field}: {e}",
                        p.name, h.name
                    ),
                )
            })?;
        }
        total += f.timeout;
        last = Some(p);
    }
    if let Some(p) = last
        && total >= request_timeout
    {
        let fmt = crate::config::format_duration;
        return Err(LoadError::new(
            &p.source,
            format!(
                "policy \"{}\": params.timeout: the forward policies' timeouts add up to {}, which must be below limits.request_timeout ({})",
                p.name,
                fmt(total),
                fmt(request_timeout)
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    fn params(yaml: &str) -> serde_yaml::Value {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[rstest]
    #[case::full_v1(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"u1","allowed":false,"status":{"code":403,"message":"no"}}}"#, false, "no", &[])]
    #[case::full_allowed_warnings(r#"{"kind":"AdmissionReview","response":{"uid":"u1","allowed":true,"warnings":["w1","w2"]}}"#, true, "", &["w1", "w2"])]
    #[case::full_without_uid(r#"{"response":{"allowed":true}}"#, true, "", &[])]
    #[case::simple_bool_true(r#"{"allow":true}"#, true, "", &[])]
    #[case::simple_bool_false(r#"{"allow":false,"message":"not on Fridays"}"#, false, "not on Fridays", &[])]
    #[case::simple_string_true(r#"{"allow":"true","message":"ok"}"#, true, "ok", &[])]
    #[case::simple_string_false(r#"{"allow":"false","message":"nope"}"#, false, "nope", &[])]
    #[case::simple_string_upper(r#"{"allow":"FALSE"}"#, false, "", &[])]
    fn answers_in_both_formats(
        #[case] body: &str,
        #[case] allowed: bool,
        #[case] message: &str,
        #[case] warnings: &[&str],
    ) {
        assert_eq!(
            parse_answer(body.as_bytes(), "u1").unwrap(),
            Verdict {
                allowed,
                message: message.into(),
                warnings: warnings.iter().map(|s| (*s).to_owned()).collect(),
            }
        );
    }

    #[rstest]
    #[case::not_json("<html>", "not JSON")]
    #[case::array("[]", "not a JSON object")]
    #[case::neither(r#"{"ok":true}"#, "neither an AdmissionReview nor")]
    #[case::allow_yes(r#"{"allow":"yes"}"#, "`allow` is \"yes\"")]
    #[case::allow_number(r#"{"allow":1}"#, "`allow` is 1")]
    #[case::no_allowed(r#"{"response":{"uid":"u1"}}"#, "no boolean response.allowed")]
    #[case::string_allowed(
        r#"{"response":{"uid":"u1","allowed":"true"}}"#,
        "no boolean response.allowed"
    )]
    #[case::other_uid(r#"{"response":{"uid":"u2","allowed":true}}"#, "for uid u2, not u1")]
    #[case::other_kind(
        r#"{"kind":"Status","response":{"allowed":true}}"#,
        "not an AdmissionReview"
    )]
    fn unusable_answers_are_named(#[case] body: &str, #[case] expected: &str) {
        let err = parse_answer(body.as_bytes(), "u1").unwrap_err();
        assert!(err.contains(expected), "{err}");
    }

    #[rstest]
    #[case("{}", "missing field `url`")]
    #[case("url: 'not a url'", "params.url: relative URL without a base")]
    #[case(
        "url: http://functions.example.com/api/x",
        "plain http is allowed only to localhost"
    )]
    #[case("url: ftp://example.com/x", "scheme `ftp` is not https")]
    #[case("url: https://user:pw@example.com/x", "credentials in the URL")]
    #[case(
        "url: https://example.com\nheaders: {x-functions-key: {}}",
        "params.headers.x-functions-key: set exactly one of"
    )]
    #[case(
        "url: https://example.com\nheaders: {x-k: {value: a, file: /b}}",
        "set exactly one of"
    )]
    #[case(
        "url: https://example.com\nheaders: {'bad header': {value: a}}",
        "not a valid HTTP header name"
    )]
    #[case(
        "url: https://example.com\nheaders: {content-type: {value: text/plain}}",
        "set by Gatehouse"
    )]
    #[case(
        "url: https://example.com\nheaders: {x-k: {value: \"a\\nb\"}}",
        "params.headers.x-k.value: the value is not a valid HTTP header value"
    )]
    #[case("url: https://example.com\ntimeout: soon", "params.timeout")]
    #[case(
        "url: https://example.com\ntimeout: 0s",
        "params.timeout: must be more than 0"
    )]
    #[case(
        "url: https://example.com\nfailureMode: ignore",
        "params.failureMode: unknown variant `ignore`"
    )]
    #[case(
        "url: https://example.com\ncaFile: /nonexistent/ca.crt",
        "params.caFile: cannot read /nonexistent/ca.crt"
    )]
    #[case(
        "url: https://example.com\nretries: 3",
        "params.retries: unknown field `retries`"
    )]
    fn bad_params_are_named(#[case] yaml: &str, #[case] expected: &str) {
        let err = Forward::from_params(params(yaml)).unwrap_err();
        assert!(err.contains(expected), "{err}");
    }

    #[rstest]
    #[case("http://localhost:8080/check")]
    #[case("http://127.0.0.1:8080/check")]
    #[case("http://127.9.9.9/check")]
    #[case("http://[::1]:8080/check")]
    #[case("https://func-gatehouse.azurewebsites.net/api/validate")]
    fn loopback_http_and_any_https_are_accepted(#[case] url: &str) {
        let f = Forward::from_params(params(&format!("url: {url}"))).unwrap();
        assert_eq!(f.timeout, DEFAULT_TIMEOUT);
        assert_eq!(f.failure_mode, FailureMode::Closed);
    }

    #[test]
    fn debug_output_hides_header_values_and_the_url_path() {
        let f = Forward::from_params(params(
            "url: https://func.example.com/api/validate?code=SECRETCODE\nheaders: {x-functions-key: {value: SECRETKEY}}\ntimeout: 1500ms\nfailureMode: open\n",
        ))
        .unwrap();
        let shown = format!("{f:?}");
        assert!(!shown.contains("SECRET"), "{shown}");
        assert!(
            shown.contains("func.example.com") && shown.contains("x-functions-key"),
            "{shown}"
        );
        assert_eq!(f.timeout, Duration::from_millis(1500));
        let spec: HeaderSpec = serde_yaml::from_str("value: SECRETKEY").unwrap();
        assert!(!format!("{spec:?}").contains("SECRET"));
    }

    #[test]
    fn header_files_are_trimmed_and_reread_when_they_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first-key\n").unwrap();
        let source = Source::File {
            path: path.clone(),
            cache: Arc::new(Mutex::new(None)),
        };
        assert_eq!(source.resolve().unwrap(), "first-key");
        // A new file (as a rotated Secret's symlink swap makes) with a different mtime.
        let next = dir.path().join("key.new");
        std::fs::write(&next, "second-key").unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(later)
            .unwrap();
        std::fs::rename(&next, &path).unwrap();
        assert_eq!(source.resolve().unwrap(), "second-key");
        std::fs::remove_file(&path).unwrap();
        let err = source.resolve().unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read {}", path.display())),
            "{err}"
        );
        assert!(!err.contains("second-key"));
    }

    #[test]
    fn env_headers_are_read_when_sent() {
        let source = Source::Env("GATEHOUSE_TEST_SURELY_UNSET_VARIABLE".into());
        assert_eq!(
            source.resolve().unwrap_err(),
            HeaderError::Env("GATEHOUSE_TEST_SURELY_UNSET_VARIABLE".into())
        );
        let path = Source::Env("PATH".into());
        assert!(path.resolve().is_ok());
    }

    #[test]
    fn preflight_reads_header_files_and_adds_up_timeouts() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        let text = |timeout: &str, file: &Path| {
            format!(
                "- name: fn-a\n  kind: forward\n  match: {{resources: [pods]}}\n  params: {{url: 'https://a.example.com', timeout: {timeout}, headers: {{x-functions-key: {{file: '{}'}}}}}}\n\
                 - name: fn-b\n  kind: forward\n  match: {{resources: [pods]}}\n  params: {{url: 'https://b.example.com', timeout: 3s}}\n",
                file.display()
            )
        };
        let policies = super::super::parse_policies(&text("4s", &key), "fwd.yaml").unwrap();
        let err = preflight(&policies, Duration::from_secs(9))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "fwd.yaml: policy \"fn-a\": params.headers.x-functions-key.file: cannot read"
            ),
            "{err}"
        );
        std::fs::write(&key, "k").unwrap();
        preflight(&policies, Duration::from_secs(9)).unwrap();
        let policies = super::super::parse_policies(&text("6s", &key), "fwd.yaml").unwrap();
        let err = preflight(&policies, Duration::from_secs(9))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "fwd.yaml: policy \"fn-b\": params.timeout: the forward policies' timeouts add up to 9s, which must be below limits.request_timeout (9s)"
        );
    }

    #[tokio::test]
    async fn offline_evaluation_is_skipped_without_a_call() {
        // Port 9 (discard) on loopback: a call would fail; offline must not try.
        let f = Forward::from_params(params("url: http://127.0.0.1:9/x\n")).unwrap();
        let req = crate::policy::podspec::tests::create(crate::policy::podspec::tests::pod(
            serde_json::json!({}),
        ));
        assert_eq!(
            f.evaluate("fn", &req, &EvalOptions { offline: true }).await,
            Outcome::Skipped("policy fn forwards to 127.0.0.1:9 and is not called offline".into())
        );
    }
}
