//! A stand-in for Twilio's REST API on 127.0.0.1 over HTTPS. Every request is checked
//! against the `CreateMessage` operation of Twilio's own OpenAPI description
//! (../shared/twilio/twilio_api_v2010.json): path and its `AccountSid` parameter, method,
//! HTTP basic auth, content type, and each form field against its schema (type, length,
//! pattern, format, enum), the required fields and Twilio's conditional groups (`From` or
//! `MessagingServiceSid`; `Body`, `MediaUrl` or `ContentSid`). It answers as Twilio does: 201
//! with a message resource shaped on the spec's example, 400/401 with Twilio's error JSON,
//! 429 with `Retry-After`, 500; or holds its answer until the test releases it.

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

/// Twilio's OpenAPI description, beside the repository.
pub const SPEC_PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../shared/twilio/twilio_api_v2010.json"
);
/// The operation under test.
const MESSAGES_PATH: &str = "/2010-04-01/Accounts/{AccountSid}/Messages.json";

/// A test Account SID and Auth Token.
pub const ACCOUNT_SID: &str = "AC0123456789abcdef0123456789abcdef";
/// Distinctive, so a test can search every log line for it.
pub const AUTH_TOKEN: &str = "tok3n-7f9c2e41d8b64a0f9e3c5b7a1d2e4f60";
/// The sender.
pub const FROM: &str = "+15005550006";

/// `CreateMessage` as the spec describes it.
pub struct Contract {
    path: Regex,
    sid_schema: Value,
    method: Method,
    content_type: String,
    auth_scheme: String,
    properties: serde_json::Map<String, Value>,
    required: Vec<String>,
    conditional: Vec<Vec<String>>,
    body_max_chars: usize,
    example_201: Value,
    message_schema: Value,
    spec: Value,
}

fn resolve<'a>(spec: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/")
            .and_then(|p| spec.pointer(&format!("/{p}")))
            .unwrap_or_else(|| panic!("spec: unresolvable $ref {r}")),
        None => schema,
    }
}

/// `messaging_service_sid` → `MessagingServiceSid`.
fn pascal(snake: &str) -> String {
    snake
        .split('_')
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

impl Contract {
    /// The contract, read once per test process.
    pub fn get() -> &'static Contract {
        static CONTRACT: OnceLock<Contract> = OnceLock::new();
        CONTRACT.get_or_init(Contract::load)
    }

    fn load() -> Contract {
        let text = std::fs::read_to_string(SPEC_PATH).unwrap_or_else(|e| {
            panic!("Twilio's OpenAPI description is needed at {SPEC_PATH}: {e}")
        });
        let spec: Value = serde_json::from_str(&text).expect("spec is JSON");
        let path_item = &spec["paths"][MESSAGES_PATH];
        let op = &path_item["post"];
        assert_eq!(op["operationId"], "CreateMessage", "spec: operation");
        let base = spec["servers"][0]["url"].as_str().expect("spec: servers");
        assert_eq!(base, "https://api.twilio.com");

        let sid_param = op["parameters"]
            .as_array()
            .and_then(|ps| {
                ps.iter()
                    .find(|p| p["name"] == "AccountSid" && p["in"] == "path")
            })
            .expect("spec: AccountSid path parameter");
        assert_eq!(sid_param["required"], true);
        let sid_schema = sid_param["schema"].clone();
        let path = Regex::new(&format!(
            "^{}$",
            regex::escape(MESSAGES_PATH).replace(r"\{AccountSid\}", "(?P<sid>[^/]+)")
        ))
        .expect("path regex");

        let scheme_name = op["security"][0]
            .as_object()
            .and_then(|o| o.keys().next().cloned())
            .expect("spec: operation security");
        let scheme = &spec["components"]["securitySchemes"][&scheme_name];
        assert_eq!(scheme["type"], "http");
        let auth_scheme = scheme["scheme"].as_str().expect("scheme").to_owned();

        let content = op["requestBody"]["content"]
            .as_object()
            .expect("spec: requestBody");
        let (content_type, media) = content.iter().next().expect("one content type");
        let schema = resolve(&spec, &media["schema"]);
        let properties = schema["properties"]
            .as_object()
            .expect("properties")
            .clone();
        let required = schema["required"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let conditional: Vec<Vec<String>> = op["x-twilio"]["conditional"]
            .as_array()
            .expect("spec: x-twilio.conditional")
            .iter()
            .map(|g| {
                g.as_array()
                    .expect("group")
                    .iter()
                    .map(|f| pascal(f.as_str().expect("field")))
                    .collect()
            })
            .collect();
        for group in &conditional {
            for f in group {
                assert!(
                    properties.contains_key(f),
                    "conditional field {f} in properties"
                );
            }
        }
        // "Can be up to 1,600 characters in length."
        let body_desc = properties["Body"]["description"]
            .as_str()
            .unwrap_or_default();
        let body_max_chars = Regex::new(r"up to ([\d,]+) characters")
            .unwrap()
            .captures(body_desc)
            .and_then(|c| c[1].replace(',', "").parse().ok())
            .expect("spec: Body length in its description");

        let created = &op["responses"]["201"]["content"]["application/json"];
        let example_201 = created["examples"]["create"]["value"].clone();
        let message_schema = resolve(&spec, &created["schema"]).clone();
        Contract {
            path,
            sid_schema,
            method: Method::POST,
            content_type: content_type.clone(),
            auth_scheme,
            properties,
            required,
            conditional,
            body_max_chars,
            example_201,
            message_schema,
            spec,
        }
    }

    /// Checks one value against a property schema.
    fn check_value(&self, name: &str, schema: &Value, value: &str) -> Result<(), String> {
        let schema = resolve(&self.spec, schema);
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.iter().any(|o| o.as_str() == Some(value))
        {
            return Err(format!("{name}: `{value}` is not one of {options:?}"));
        }
        match schema
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("string")
        {
            "string" => {
                let n = value.chars().count();
                if let Some(min) = schema.get("minLength").and_then(Value::as_u64)
                    && (n as u64) < min
                {
                    return Err(format!("{name}: shorter than {min}"));
                }
                if let Some(max) = schema.get("maxLength").and_then(Value::as_u64)
                    && (n as u64) > max
                {
                    return Err(format!("{name}: longer than {max}"));
                }
                if let Some(p) = schema.get("pattern").and_then(Value::as_str)
                    && !Regex::new(p).expect("spec pattern").is_match(value)
                {
                    return Err(format!("{name}: `{value}` does not match {p}"));
                }
                match schema.get("format").and_then(Value::as_str) {
                    Some("phone-number") => {
                        let e164 = Regex::new(r"^([a-z]+:)?\+[1-9][0-9]{1,14}$").unwrap();
                        if !e164.is_match(value) {
                            return Err(format!("{name}: `{value}` is not an E.164 phone number"));
                        }
                    }
                    Some("uri") => {
                        reqwest::Url::parse(value).map_err(|e| format!("{name}: {e}"))?;
                    }
                    _ => {}
                }
                Ok(())
            }
            "integer" => value
                .parse::<i64>()
                .map(|_| ())
                .map_err(|_| format!("{name}: not an integer")),
            "number" => value
                .parse::<f64>()
                .map(|_| ())
                .map_err(|_| format!("{name}: not a number")),
            "boolean" => match value {
                "true" | "false" => Ok(()),
                _ => Err(format!("{name}: not a boolean")),
            },
            "array" => self.check_value(name, &schema["items"], value),
            other => Err(format!("{name}: unsupported schema type {other}")),
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
            None => v.push(format!("path {path} is not {MESSAGES_PATH}")),
            Some(s) => {
                if let Err(e) = self.check_value("AccountSid", &self.sid_schema, s) {
                    v.push(format!("path parameter {e}"));
                }
            }
        }
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        if ct.split(';').next().map(str::trim) != Some(self.content_type.as_str()) {
            v.push(format!(
                "Content-Type `{ct}`, expected {}",
                self.content_type
            ));
        }
        let creds = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                if !scheme.eq_ignore_ascii_case(&self.auth_scheme) {
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
            (None, _) => v.push(format!("no HTTP {} authorization", self.auth_scheme)),
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
            match self.properties.get(name) {
                None => v.push(format!("unknown form field {name}")),
                Some(schema) => {
                    let array = resolve(&self.spec, schema)["type"] == "array";
                    if !array && fields.iter().filter(|(n, _)| n == name).count() > 1 {
                        v.push(format!("form field {name} given more than once"));
                    }
                    if let Err(e) = self.check_value(name, schema, value) {
                        v.push(e);
                    }
                }
            }
        }
        let has = |n: &str| fields.iter().any(|(f, _)| f == n);
        for r in &self.required {
            if !has(r) {
                v.push(format!("required form field {r} missing"));
            }
        }
        for group in &self.conditional {
            if !group.iter().any(|f| has(f)) {
                v.push(format!("one of {group:?} is required"));
            }
        }
        if let Some((_, b)) = fields.iter().find(|(f, _)| f == "Body")
            && b.chars().count() > self.body_max_chars
        {
            v.push(format!(
                "Body longer than {} characters",
                self.body_max_chars
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

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        axum::Json(json!({
            "code": code,
            "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
            "status": status.as_u16(),
        })),
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

    let response = answer(&shared, contract, &violations, sid, &fields, creds);
    shared.received.lock().unwrap()[index].status = Some(response.status().as_u16());
    shared.changed.notify_waiters();
    response
}

fn answer(
    shared: &Shared,
    contract: &Contract,
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
            let mut m = contract.example_201.clone();
            m["account_sid"] = json!(account);
            m["sid"] = json!(msid);
            m["to"] = get("To");
            m["from"] = get("From");
            m["messaging_service_sid"] = get("MessagingServiceSid");
            m["body"] = json!(body);
            m["num_segments"] = json!(segments(body).to_string());
            m["status"] = json!("queued");
            m["date_sent"] = Value::Null;
            m["uri"] = json!(format!(
                "/2010-04-01/Accounts/{account}/Messages/{msid}.json"
            ));
            m["subresource_uris"] = json!({
                "media": format!("/2010-04-01/Accounts/{account}/Messages/{msid}/Media.json")
            });
            // The answer itself keeps to the message schema's patterns.
            for key in ["sid", "account_sid"] {
                let pattern = contract.message_schema["properties"][key]["pattern"]
                    .as_str()
                    .unwrap();
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
