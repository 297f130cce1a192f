//! A stand-in for Twilio's REST API on 127.0.0.1 over HTTPS. Every request is checked
//! against the contract of Twilio's "Create a Message" call, written down below as facts from
//! Twilio's API reference (https://www.twilio.com/docs/messaging/api/message-resource and
//! https://www.twilio.com/docs/usage/twilios-response): path and its `AccountSid`, method,
//! HTTP basic auth, content type, and each form field with its constraint, the required
//! field and Twilio's conditional groups (`From` or `MessagingServiceSid`; `Body`, `MediaUrl`
//! or `ContentSid`). It answers as Twilio does: 201 with a message resource, 400/401 with
//! Twilio's error JSON, 429 with `Retry-After`, 500; or holds its answer until the test
//! releases it.
//!
//! Nothing outside the repository is read. When Twilio's OpenAPI description happens to sit
//! beside the repository (`../shared/twilio/twilio_api_v2010.json`, as in CI), the test
//! `twilio_stand_in_contract_agrees_with_twilio_openapi` checks these facts against it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use regex::Regex;
use serde_json::{Value, json};

/// Where Twilio's OpenAPI description may be found, beside the repository (only the
/// cross-check reads it). `GATEHOUSE_TEST_TWILIO_OPENAPI` names another place.
pub fn openapi_path() -> PathBuf {
    match std::env::var_os("GATEHOUSE_TEST_TWILIO_OPENAPI") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../shared/twilio/twilio_api_v2010.json"
        )),
    }
}

/// A test Account SID and Auth Token.
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// Distinctive, so a test can search every log line for it.
pub const AUTH_TOKEN: &str = "tok3n-7f9c2e41d8b64a0f9e3c5b7a1d2e4f60";
/// The sender.
pub const FROM: &str = "+15005550006";

/// The contract of `POST /2010-04-01/Accounts/{AccountSid}/Messages.json`, as Twilio's API
/// reference states it.
pub mod facts {
    /// The API's base URL.
    pub const API_BASE: &str = "https://api.twilio.com";
    /// The Messages list resource; `{AccountSid}` is the account creating the message.
    pub const MESSAGES_PATH: &str = "/2010-04-01/Accounts/{AccountSid}/Messages.json";
    /// An Account SID: `AC` and 32 hex digits (34 characters).
    pub const ACCOUNT_SID_PATTERN: &str = "^AC[0-9a-fA-F]{32}$";
    /// Creating a message is a POST.
    pub const METHOD: &str = "POST";
    /// Parameters are sent form-encoded.
    pub const CONTENT_TYPE: &str = "application/x-www-form-urlencoded";
    /// HTTP basic auth: the Account SID as user name, the Auth Token as password.
    pub const AUTH_SCHEME: &str = "basic";
    /// "Can be up to 1,600 characters in length."
    pub const BODY_MAX_CHARS: usize = 1600;
    /// A Message SID: `SM` (or `MM` for MMS) and 32 hex digits.
    pub const MESSAGE_SID_PATTERN: &str = "^(SM|MM)[0-9a-fA-F]{32}$";
    /// Every error answer is a JSON object with these members (Twilio's response formats).
    pub const ERROR_MEMBERS: [&str; 4] = ["code", "message", "more_info", "status"];
    /// The form parameters that must be present.
    pub const REQUIRED: &[&str] = &["To"];
    /// At least one parameter of each group must be present.
    pub const ONE_OF: &[&[&str]] = &[
        &["From", "MessagingServiceSid"],
        &["Body", "MediaUrl", "ContentSid"],
    ];

    /// What a form parameter's value must be.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind {
        /// Any text.
        Text,
        /// E.164 (`+` and up to 15 digits), optionally behind a channel prefix
        /// (`whatsapp:+1555…`).
        Phone,
        /// An absolute URL.
        Url,
        /// An ISO 8601 time.
        DateTime,
        /// A 34-character SID matching this pattern.
        Sid(&'static str),
        /// One of these words.
        OneOf(&'static [&'static str]),
        /// `true` or `false`.
        Boolean,
        /// A whole number.
        Integer,
        /// A number.
        Number,
    }

    /// One form parameter of the call.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Field {
        /// Its name, as sent.
        pub name: &'static str,
        /// What its value must be.
        pub kind: Kind,
        /// Whether it may be given more than once (`MediaUrl`, `PersistentAction`).
        pub repeated: bool,
    }

    const fn one(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            repeated: false,
        }
    }

    const fn many(name: &'static str, kind: Kind) -> Field {
        Field {
            name,
            kind,
            repeated: true,
        }
    }

    /// Every parameter the call accepts; any other is refused.
    pub const FIELDS: &[Field] = &[
        one("To", Kind::Phone),
        one("StatusCallback", Kind::Url),
        one("ApplicationSid", Kind::Sid("^AP[0-9a-fA-F]{32}$")),
        one("MaxPrice", Kind::Number),
        one("ProvideFeedback", Kind::Boolean),
        one("Attempt", Kind::Integer),
        one("ValidityPeriod", Kind::Integer),
        one("ForceDelivery", Kind::Boolean),
        one("ContentRetention", Kind::OneOf(&["retain", "discard"])),
        one("AddressRetention", Kind::OneOf(&["retain", "obfuscate"])),
        one("SmartEncoded", Kind::Boolean),
        many("PersistentAction", Kind::Text),
        one("TrafficType", Kind::OneOf(&["free"])),
        one("ShortenUrls", Kind::Boolean),
        one("ScheduleType", Kind::OneOf(&["fixed"])),
        one("SendAt", Kind::DateTime),
        one("SendAsMms", Kind::Boolean),
        one("ContentVariables", Kind::Text),
        one("RiskCheck", Kind::OneOf(&["enable", "disable"])),
        one("From", Kind::Phone),
        one("FallbackFrom", Kind::Phone),
        one("MessagingServiceSid", Kind::Sid("^MG[0-9a-fA-F]{32}$")),
        one("Body", Kind::Text),
        many("MediaUrl", Kind::Url),
        one("ContentSid", Kind::Sid("^HX[0-9a-fA-F]{32}$")),
    ];

    /// The members of the message resource a 201 answer carries.
    pub const MESSAGE_MEMBERS: &[&str] = &[
        "account_sid",
        "api_version",
        "body",
        "date_created",
        "date_sent",
        "date_updated",
        "direction",
        "error_code",
        "error_message",
        "from",
        "messaging_service_sid",
        "num_media",
        "num_segments",
        "price",
        "price_unit",
        "sid",
        "status",
        "subresource_uris",
        "to",
        "uri",
    ];
}

use facts::{Field, Kind};

/// The contract in the form the stand-in checks requests with.
pub struct Contract {
    path: Regex,
    sid: Regex,
    method: Method,
    patterns: Vec<(&'static str, Regex)>,
}

/// SIDs are 34 characters.
const SID_LEN: usize = 34;

impl Contract {
    /// The contract, compiled once per test process.
    pub fn get() -> &'static Contract {
        static CONTRACT: OnceLock<Contract> = OnceLock::new();
        CONTRACT.get_or_init(|| Contract {
            path: Regex::new(&format!(
                "^{}$",
                regex::escape(facts::MESSAGES_PATH).replace(r"\{AccountSid\}", "(?P<sid>[^/]+)")
            ))
            .expect("path regex"),
            sid: Regex::new(facts::ACCOUNT_SID_PATTERN).expect("sid regex"),
            method: Method::from_bytes(facts::METHOD.as_bytes()).expect("method"),
            patterns: facts::FIELDS
                .iter()
                .filter_map(|f| match f.kind {
                    Kind::Sid(p) => Some((p, Regex::new(p).expect("field pattern"))),
                    _ => None,
                })
                .collect(),
        })
    }

    fn check_sid(&self, name: &str, pattern: &Regex, value: &str) -> Result<(), String> {
        let n = value.chars().count();
        if n < SID_LEN {
            return Err(format!("{name}: shorter than {SID_LEN}"));
        }
        if n > SID_LEN {
            return Err(format!("{name}: longer than {SID_LEN}"));
        }
        if !pattern.is_match(value) {
            return Err(format!(
                "{name}: `{value}` does not match {}",
                pattern.as_str()
            ));
        }
        Ok(())
    }

    /// Checks one value against a parameter's kind.
    fn check_value(&self, field: &Field, value: &str) -> Result<(), String> {
        let name = field.name;
        match field.kind {
            Kind::Text => Ok(()),
            Kind::Phone => {
                let e164 = Regex::new(r"^([a-z]+:)?\+[1-9][0-9]{1,14}$").unwrap();
                if e164.is_match(value) {
                    Ok(())
                } else {
                    Err(format!("{name}: `{value}` is not an E.164 phone number"))
                }
            }
            Kind::Url => reqwest::Url::parse(value)
                .map(|_| ())
                .map_err(|e| format!("{name}: {e}")),
            Kind::DateTime => {
                let iso =
                    Regex::new(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
                        .unwrap();
                if iso.is_match(value) {
                    Ok(())
                } else {
                    Err(format!("{name}: `{value}` is not an ISO 8601 time"))
                }
            }
            Kind::Sid(p) => {
                let re = self
                    .patterns
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, re)| re)
                    .expect("compiled");
                self.check_sid(name, re, value)
            }
            Kind::OneOf(options) => {
                if options.contains(&value) {
                    Ok(())
                } else {
                    Err(format!("{name}: `{value}` is not one of {options:?}"))
                }
            }
            Kind::Boolean => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!("{name}: not a boolean")),
            },
            Kind::Integer => value
                .parse::<i64>()
                .map(|_| ())
                .map_err(|_| format!("{name}: not an integer")),
            Kind::Number => value
                .parse::<f64>()
                .map(|_| ())
                .map_err(|_| format!("{name}: not a number")),
        }
    }

    /// Every way a request breaks the contract (empty when it is one Twilio would accept),
    /// with what the request carried.
    pub fn check(&self, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) -> Checked {
        let mut v = Vec::new();
        if method != self.method {
            v.push(format!("method {method}, expected {}", self.method));
        }
        let sid = self.path.captures(path).map(|c| c["sid"].to_owned());
        match &sid {
            None => v.push(format!("path {path} is not {}", facts::MESSAGES_PATH)),
            Some(s) => {
                if let Err(e) = self.check_sid("AccountSid", &self.sid, s) {
                    v.push(format!("path parameter {e}"));
                }
            }
        }
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if ct.split(';').next().map(str::trim) != Some(facts::CONTENT_TYPE) {
            v.push(format!(
                "Content-Type `{ct}`, expected {}",
                facts::CONTENT_TYPE
            ));
        }
        let creds = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case(facts::AUTH_SCHEME) {
                    return None;
                }
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(rest.trim())
                    .ok()?;
                let text = String::from_utf8(decoded).ok()?;
                let (u, p) = text.split_once(':')?;
                Some((u.to_owned(), p.to_owned()))
            });
        match (&creds, &sid) {
            (None, _) => v.push(format!("no HTTP {} authorization", facts::AUTH_SCHEME)),
            (Some((user, _)), Some(s)) if user != s => v.push(format!(
                "basic auth user {user} is not the path's Account SID {s}"
            )),
            _ => {}
        }

        let text = std::str::from_utf8(body).unwrap_or("");
        let fields: Vec<(String, String)> = reqwest::Url::parse(&format!("http://x/?{text}"))
            .map(|u| u.query_pairs().into_owned().collect())
            .unwrap_or_default();
        for (name, value) in &fields {
            match facts::FIELDS.iter().find(|f| f.name == name) {
                None => v.push(format!("unknown form field {name}")),
                Some(field) => {
                    if !field.repeated && fields.iter().filter(|(n, _)| n == name).count() > 1 {
                        v.push(format!("form field {name} given more than once"));
                    }
                    if let Err(e) = self.check_value(field, value) {
                        v.push(e);
                    }
                }
            }
        }
        let has = |n: &str| fields.iter().any(|(f, _)| f == n);
        for r in facts::REQUIRED {
            if !has(r) {
                v.push(format!("required form field {r} missing"));
            }
        }
        for group in facts::ONE_OF {
            if !group.iter().any(|f| has(f)) {
                v.push(format!("one of {group:?} is required"));
            }
        }
        if let Some((_, b)) = fields.iter().find(|(f, _)| f == "Body")
            && b.chars().count() > facts::BODY_MAX_CHARS
        {
            v.push(format!(
                "Body longer than {} characters",
                facts::BODY_MAX_CHARS
            ));
        }
        v.sort();
        v.dedup();
        Checked {
            violations: v,
            sid,
            fields,
            creds,
        }
    }
}

/// A request after the contract check.
pub struct Checked {
    /// Contract violations.
    pub violations: Vec<String>,
    /// The Account SID in the path.
    pub sid: Option<String>,
    /// The form fields.
    pub fields: Vec<(String, String)>,
    /// Basic-auth user and password.
    pub creds: Option<(String, String)>,
}

/// SMS segments Twilio counts: GSM-7 (160, or 153 per part) or UCS-2 (70, or 67).
pub fn segments(body: &str) -> usize {
    let gsm = gatehouse::notify::message::is_gsm7_basic(body);
    let n = if gsm {
        body.chars().count()
    } else {
        body.encode_utf16().count()
    };
    let (single, multi) = if gsm { (160, 153) } else { (70, 67) };
    if n <= single { 1 } else { n.div_ceil(multi) }
}

/// How the stand-in answers the next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reply {
    /// 201 with a message resource.
    Created,
    /// Twilio's error JSON with this status (400, 401, 500, 503…).
    Error(u16),
    /// 429 with `Retry-After` in seconds.
    TooMany(u64),
}

/// One request as the stand-in saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// When it arrived.
    pub at: Instant,
    /// The form fields in order.
    pub fields: Vec<(String, String)>,
    /// The status answered (`None` while held).
    pub status: Option<u16>,
    /// Contract violations (empty for a good request).
    pub violations: Vec<String>,
}

impl Received {
    /// A form field.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The `Body` field.
    pub fn body(&self) -> &str {
        self.field("Body").unwrap_or("")
    }
}

struct Shared {
    token: String,
    plan: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    changed: tokio::sync::Notify,
    release: tokio::sync::watch::Sender<bool>,
    next_sid: Mutex<u64>,
}

/// The running stand-in.
pub struct TwilioStandIn {
    /// `https://127.0.0.1:PORT`, for `TWILIO_API_BASE`.
    pub base_url: String,
    /// The CA that signed its certificate (for `notify.ca_file`).
    pub ca_file: PathBuf,
    shared: Arc<Shared>,
    handle: axum_server::Handle<SocketAddr>,
    _dir: tempfile::TempDir,
}

impl Drop for TwilioStandIn {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

/// How long a test waits for messages before failing.
pub const WAIT: Duration = Duration::from_secs(30);

impl TwilioStandIn {
    /// Starts it; requests are answered 201 unless planned otherwise.
    pub async fn start() -> Self {
        gatehouse::tls::install_default_provider();
        let contract = Contract::get();
        let dir = tempfile::tempdir().expect("tempdir");
        let bundle = gatehouse::certs::generate(&gatehouse::certs::CertOptions {
            sans: vec!["127.0.0.1".into(), "localhost".into()],
            days: 1,
            ca_name: "Twilio stand-in test CA".into(),
        })
        .expect("certs");
        let files = gatehouse::certs::CertFiles::in_dir(dir.path());
        files.write(&bundle).expect("write certs");
        let tls = gatehouse::tls::load_server_config(&files.cert, &files.key).expect("tls");
        let (release, _) = tokio::sync::watch::channel(true);
        let shared = Arc::new(Shared {
            token: AUTH_TOKEN.to_owned(),
            plan: Mutex::new(VecDeque::new()),
            received: Mutex::new(Vec::new()),
            changed: tokio::sync::Notify::new(),
            release,
            next_sid: Mutex::new(1),
        });
        let app = Router::new()
            .fallback(handle)
            .with_state((shared.clone(), contract));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let handle = axum_server::Handle::new();
        let server = axum_server::from_tcp_rustls(
            listener,
            axum_server::tls_rustls::RustlsConfig::from_config(tls),
        )
        .expect("server")
        .handle(handle.clone());
        tokio::spawn(server.serve(app.into_make_service()));
        Self {
            base_url: format!("https://127.0.0.1:{}", addr.port()),
            ca_file: files.ca.clone(),
            shared,
            handle,
            _dir: dir,
        }
    }

    /// The next answers, in order (then 201 again).
    pub fn plan(&self, replies: impl IntoIterator<Item = Reply>) {
        self.shared.plan.lock().unwrap().extend(replies);
    }

    /// Holds every answer from now on until [`TwilioStandIn::release`].
    pub fn hold(&self) {
        self.shared.release.send_replace(false);
    }

    /// Lets held answers go.
    pub fn release(&self) {
        self.shared.release.send_replace(true);
    }

    /// Every request so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }

    /// Waits until `n` requests have arrived (answered or held) and returns them all.
    pub async fn wait_received(&self, n: usize) -> Vec<Received> {
        self.wait(|r| r.len() >= n, &format!("{n} requests")).await
    }

    /// Waits until `n` requests have been answered 201 and returns every request.
    pub async fn wait_created(&self, n: usize) -> Vec<Received> {
        self.wait(
            |r| r.iter().filter(|x| x.status == Some(201)).count() >= n,
            &format!("{n} messages created"),
        )
        .await
    }

    async fn wait(&self, done: impl Fn(&[Received]) -> bool, what: &str) -> Vec<Received> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let notified = self.shared.changed.notified();
            {
                let r = self.shared.received.lock().unwrap();
                if done(&r) {
                    return r.clone();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                panic!(
                    "Twilio stand-in: waited {WAIT:?} for {what}; got {:#?}",
                    self.received()
                );
            }
        }
    }
}

/// Twilio's error body: `{code, message, more_info, status}`.
pub fn twilio_error_body(status: u16, code: u32, message: &str) -> Value {
    let [c, m, i, s] = facts::ERROR_MEMBERS;
    let mut body = serde_json::Map::new();
    body.insert(c.into(), json!(code));
    body.insert(m.into(), json!(message));
    body.insert(
        i.into(),
        json!(format!("https://www.twilio.com/docs/errors/{code}")),
    );
    body.insert(s.into(), json!(status));
    Value::Object(body)
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(twilio_error_body(status.as_u16(), code, message)),
    )
        .into_response()
}

type AppState = (Arc<Shared>, &'static Contract);

async fn handle(
    State((shared, contract)): State<AppState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Checked {
        violations,
        sid,
        fields,
        creds,
    } = contract.check(&method, uri.path(), &headers, &body);
    let index = {
        let mut r = shared.received.lock().unwrap();
        r.push(Received {
            at: Instant::now(),
            fields: fields.clone(),
            status: None,
            violations: violations.clone(),
        });
        r.len() - 1
    };
    shared.changed.notify_waiters();

    let mut release = shared.release.subscribe();
    let _ = release.wait_for(|go| *go).await;

    let response = answer(&shared, &violations, sid, &fields, creds);
    shared.received.lock().unwrap()[index].status = Some(response.status().as_u16());
    shared.changed.notify_waiters();
    response
}

fn answer(
    shared: &Shared,
    violations: &[String],
    sid: Option<String>,
    fields: &[(String, String)],
    creds: Option<(String, String)>,
) -> Response {
    let authenticated =
        matches!(&creds, Some((u, p)) if Some(u) == sid.as_ref() && *p == shared.token);
    if !authenticated {
        let mut r = twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Basic realm=\"Twilio API\"".parse().unwrap(),
        );
        return r;
    }
    if let Some(first) = violations.first() {
        let code = if first.contains("To") {
            21211
        } else if first.contains("From") {
            21603
        } else if first.contains("Body") {
            21602
        } else {
            21000
        };
        return twilio_error(StatusCode::BAD_REQUEST, code, &violations.join("; "));
    }
    let reply = shared
        .plan
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Created);
    match reply {
        Reply::TooMany(secs) => {
            let mut r = twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests");
            r.headers_mut()
                .insert(header::RETRY_AFTER, secs.to_string().parse().unwrap());
            r
        }
        Reply::Error(status) => {
            let status = StatusCode::from_u16(status).unwrap();
            let (code, msg) = match status.as_u16() {
                400 => (21211, "The 'To' number is not a valid phone number."),
                401 => (20003, "Authenticate"),
                500 => (20500, "An internal server error has occurred"),
                503 => (20503, "Service unavailable"),
                _ => (20001, "Error"),
            };
            twilio_error(status, code, msg)
        }
        Reply::Created => {
            let account = sid.unwrap_or_default();
            let n = {
                let mut next = shared.next_sid.lock().unwrap();
                *next += 1;
                *next
            };
            let msid = format!("SM{n:032x}");
            let get = |f: &str| {
                fields
                    .iter()
                    .find(|(n, _)| n == f)
                    .map(|(_, v)| Value::String(v.clone()))
                    .unwrap_or(Value::Null)
            };
            let body = fields
                .iter()
                .find(|(n, _)| n == "Body")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            let mut m = serde_json::Map::new();
            for member in facts::MESSAGE_MEMBERS {
                m.insert((*member).to_owned(), Value::Null);
            }
            let mut m = Value::Object(m);
            m["account_sid"] = json!(account);
            m["api_version"] = json!("2010-04-01");
            m["sid"] = json!(msid);
            m["to"] = get("To");
            m["from"] = get("From");
            m["messaging_service_sid"] = get("MessagingServiceSid");
            m["body"] = json!(body);
            m["direction"] = json!("outbound-api");
            m["num_media"] = json!("0");
            m["num_segments"] = json!(segments(body).to_string());
            m["status"] = json!("queued");
            let now = httpdate::fmt_http_date(std::time::SystemTime::now());
            // Twilio's dates: `Thu, 24 Aug 2023 05:01:45 +0000`.
            let now = now.replace(" GMT", " +0000");
            m["date_created"] = json!(now);
            m["date_updated"] = json!(now);
            m["uri"] = json!(format!(
                "/2010-04-01/Accounts/{account}/Messages/{msid}.json"
            ));
            m["subresource_uris"] = json!({
                "media": format!("/2010-04-01/Accounts/{account}/Messages/{msid}/Media.json")
            });
            // The answer itself keeps to the SID patterns.
            for (key, pattern) in [
                ("sid", facts::MESSAGE_SID_PATTERN),
                ("account_sid", facts::ACCOUNT_SID_PATTERN),
            ] {
                assert!(
                    Regex::new(pattern)
                        .unwrap()
                        .is_match(m[key].as_str().unwrap()),
                    "stand-in answer {key}"
                );
            }
            (StatusCode::CREATED, axum::Json(m)).into_response()
        }
    }
}
