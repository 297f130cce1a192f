//! HTTP routes: `POST /validate` on the TLS listener; `/healthz`, `/readyz`, `/metrics` on the
//! plain health listener. One error type turns every failure into a short answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::request::Parts;
use axum::http::{Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::catch_panic::CatchPanicLayer;

use crate::admission::{self, DecodeError};
use crate::limits::{
    BodyBudget, BodyRate, BodyReader, RequestLimit, error_response, read_body_then,
};
use crate::metrics::Metrics;
use crate::notify::Notifier;
use crate::policy::PolicySet;
use crate::telemetry;

/// Shared state of both listeners.
#[derive(Clone)]
pub struct AppState {
    /// The policies in force; swapped whole on reload.
    pub policies: Arc<ArcSwap<PolicySet>>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// False while starting and once shutdown begins.
    pub ready: Arc<AtomicBool>,
    /// Publishes notifications after each decision (never waits).
    pub notifier: Notifier,
}

impl AppState {
    /// State for a policy set with fresh metrics, marked ready.
    pub fn new(policies: PolicySet) -> Self {
        Self {
            policies: Arc::new(ArcSwap::from_pointee(policies)),
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(AtomicBool::new(true)),
            notifier: Notifier::disabled(),
        }
    }
}

/// Request limits applied by [`harden`].
#[derive(Debug, Clone, Copy)]
pub struct RouteLimits {
    /// Largest body; larger gets 413.
    pub max_body_bytes: usize,
    /// Deadline for one request; past it, 503. Shortened to fit the API server's own
    /// `?timeout=` when that is shorter.
    pub request_timeout: Duration,
    /// Requests in progress; more get 503 at once.
    pub max_concurrent_requests: usize,
    /// Request-body bytes in progress at once; past it requests that do not fit wait within
    /// their deadline.
    pub max_inflight_body_bytes: usize,
}

impl RouteLimits {
    /// The limits a configuration sets.
    pub fn from_config(limits: &crate::config::Limits) -> Self {
        Self {
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.request_timeout,
            max_concurrent_requests: limits.max_concurrent_requests,
            max_inflight_body_bytes: limits.max_inflight_body_bytes,
        }
    }
}

/// Errors a webhook request can end in.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not a usable AdmissionReview.
    #[error("{0}")]
    BadReview(#[from] DecodeError),
    /// Something failed inside; details go to the log, not the caller.
    #[error("internal error")]
    Internal,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            ApiError::BadReview(_) => StatusCode::BAD_REQUEST,
            ApiError::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let body = serde_json::json!({ "error": self.to_string() });
        (status, axum::Json(body)).into_response()
    }
}

/// The webhook router (`POST /validate`), with limits, timeout and panic catching (and the
/// default minimum body rate).
pub fn router(state: AppState, limits: RouteLimits) -> Router {
    router_with_rate(state, limits, BodyRate::default())
}

/// [`router`] with a minimum body rate of its own: the [`Webhook`] service as a router.
pub fn router_with_rate(state: AppState, limits: RouteLimits, rate: BodyRate) -> Router {
    Router::new().fallback_service(Webhook::new(state, limits, rate))
}

/// The webhook as one service: `POST /validate` (404 for other paths, 405 for other methods)
/// behind the cap on requests in progress, the deadline and the body reader, with panics
/// caught. It is what [`router`] serves, written as one service rather than a stack of axum
/// layers, which cost a boxed service clone and a future each per request.
#[derive(Clone)]
pub struct Webhook(Arc<WebhookInner>);

struct WebhookInner {
    state: AppState,
    guard: GuardInner,
}

impl Webhook {
    /// The webhook with these limits and minimum body rate.
    pub fn new(state: AppState, limits: RouteLimits, rate: BodyRate) -> Self {
        let guard = GuardInner::new(limits, rate, state.metrics.clone());
        Self(Arc::new(WebhookInner { state, guard }))
    }
}

impl WebhookInner {
    async fn answer(&self, req: Request) -> Response {
        if req.uri().path() != "/validate" {
            return StatusCode::NOT_FOUND.into_response();
        }
        if req.method() != Method::POST {
            return (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response();
        }
        let answer = self.guard.apply(req, |_, body| async move {
            validate(&self.state, body).await.into_response()
        });
        catch_panics(answer, &self.state.metrics).await
    }
}

impl tower::Service<Request> for Webhook {
    type Response = Response;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response, Self::Error>> + Send + 'static>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let this = self.0.clone();
        Box::pin(async move { Ok(this.answer(req).await) })
    }
}

impl crate::conn::App for Webhook {}

/// `answer`, or a 500 (counted as `panic`, the process lives on) if it panics.
async fn catch_panics(
    answer: impl std::future::Future<Output = Response>,
    metrics: &Metrics,
) -> Response {
    use futures_util::FutureExt as _;
    match std::panic::AssertUnwindSafe(answer).catch_unwind().await {
        Ok(resp) => resp,
        Err(_panic) => panicked(metrics),
    }
}

/// The answer to a request whose handler panicked. The payload may hold request data; it
/// is not logged.
fn panicked(metrics: &Metrics) -> Response {
    tracing::error!("a request handler panicked; answered 500");
    metrics.reject("panic");
    ApiError::Internal.into_response()
}

/// Wraps routes in the body reader (size limit with a JSON 413, byte budget, minimum data
/// rate with a 408), the request deadline, the cap on requests in progress and a panic catcher
/// (500, the process lives on). Public so tests can check the layers on a route of their own.
pub fn harden(routes: Router, limits: RouteLimits, metrics: Arc<Metrics>) -> Router {
    harden_with_rate(routes, limits, BodyRate::default(), metrics)
}

/// [`harden`] with a minimum body rate of its own.
pub fn harden_with_rate(
    routes: Router,
    limits: RouteLimits,
    rate: BodyRate,
    metrics: Arc<Metrics>,
) -> Router {
    let panic_metrics = metrics.clone();
    let guard = Guard(Arc::new(GuardInner::new(limits, rate, metrics)));
    routes
        // The body reader has read the body whole; this only lifts axum's own 2 MB default.
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        // One layer for the cap on requests in progress, the deadline and the body reader
        // (three `from_fn` layers cost a boxed service clone and a future each per request).
        .layer(axum::middleware::from_fn_with_state(guard, guarded))
        .layer(CatchPanicLayer::custom(
            move |_panic: Box<dyn std::any::Any + Send>| panicked(&panic_metrics),
        ))
}

/// What [`guarded`] applies to each request.
#[derive(Clone)]
struct Guard(Arc<GuardInner>);

struct GuardInner {
    max_deadline: Duration,
    limit: RequestLimit,
    reader: BodyReader,
    metrics: Arc<Metrics>,
}

impl GuardInner {
    fn new(limits: RouteLimits, rate: BodyRate, metrics: Arc<Metrics>) -> Self {
        Self {
            max_deadline: limits.request_timeout,
            limit: RequestLimit::new(limits.max_concurrent_requests, metrics.clone()),
            reader: BodyReader {
                max_body_bytes: limits.max_body_bytes,
                budget: BodyBudget::new(limits.max_inflight_body_bytes),
                min_bytes_per_second: rate.min_bytes_per_second,
                grace: rate.grace,
                metrics: metrics.clone(),
            },
            metrics,
        }
    }

    /// A place among the requests in progress (else 503 at once), then, within the request's
    /// deadline, the body read whole (within its size limit, budget and minimum rate) and
    /// `handler` given the request's head and body.
    async fn apply<F, Fut>(&self, req: Request, handler: F) -> Response
    where
        F: FnOnce(Parts, Bytes) -> Fut,
        Fut: std::future::Future<Output = Response>,
    {
        let Some(_permit) = self.limit.admit() else {
            return self.limit.refuse();
        };
        let limit = request_deadline(self.max_deadline, req.uri().query());
        match tokio::time::timeout(limit, read_body_then(&self.reader, req, handler)).await {
            Ok(resp) => resp,
            Err(_) => {
                self.metrics.reject("timeout");
                tracing::warn!(deadline = ?limit, "request took longer than its deadline; answered 503");
                error_response(StatusCode::SERVICE_UNAVAILABLE, "deadline exceeded")
            }
        }
    }
}

/// [`GuardInner::apply`] as a middleware, in front of the next layer.
async fn guarded(State(Guard(g)): State<Guard>, req: Request, next: Next) -> Response {
    g.apply(req, |parts, bytes| {
        next.run(Request::from_parts(parts, axum::body::Body::from(bytes)))
    })
    .await
}

/// The time this request may take: `max`, or less when the API server's `?timeout=` says it
/// gives up sooner (leaving a fifth of its timeout, at most 1 s, for the answer to travel).
pub fn request_deadline(max: Duration, query: Option<&str>) -> Duration {
    let hint = query.and_then(|q| {
        q.split('&')
            .find_map(|kv| kv.strip_prefix("timeout="))
            .and_then(|v| crate::config::parse_duration(v).ok())
    });
    match hint {
        Some(t) if !t.is_zero() => {
            let margin = (t / 5).min(Duration::from_secs(1));
            max.min(t - margin)
        }
        _ => max,
    }
}

/// The health router: `/healthz` (alive), `/readyz` (ready for traffic), `/metrics`.
pub fn health_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::Relaxed) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.encode(),
    )
        .into_response()
}

/// `namespace/name` (or `name`) of the reviewed object for the log line, written straight
/// into the line.
struct LogObject<'r, 'a>(&'r admission::Review<'a>);

impl std::fmt::Display for LogObject<'_, '_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ns = self.0.namespace.as_deref().unwrap_or("");
        if !ns.is_empty() {
            f.write_str(ns)?;
            f.write_str("/")?;
        }
        f.write_str(&admission::object_name(self.0))
    }
}

/// The policies that denied, warned or audited, comma-separated, for the log line (as
/// `Decision::fired` joined, without building the list).
struct LogPolicies<'d>(&'d crate::policy::Decision);

impl std::fmt::Display for LogPolicies<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        let all = d.denials.iter().chain(&d.warnings).chain(&d.audits);
        for (i, finding) in all.enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(&finding.policy)?;
        }
        Ok(())
    }
}

async fn validate(state: &AppState, body: Bytes) -> Result<Response, ApiError> {
    let started = Instant::now();
    let req = match admission::decode(&body) {
        Ok(req) => req,
        Err(e) => {
            state.metrics.reject("malformed");
            tracing::info!(error = %e, bytes = body.len(), "rejected a malformed admission review");
            return Err(e.into());
        }
    };
    let policies = state.policies.load();
    let decision = policies.evaluate(&req).await;
    let encoded = admission::answer(&req, &decision);
    let elapsed = started.elapsed();
    state.notifier.notify(&req, &decision, &policies);

    let m = &state.metrics;
    m.evaluation_seconds.observe(elapsed.as_secs_f64());
    let label = if decision.excluded {
        "excluded"
    } else {
        decision.label()
    };
    m.admission(label).inc();
    if !decision.evaluated.is_empty() {
        let counters = m.policy_counters(&policies);
        for name in &decision.evaluated {
            let result = decision
                .denials
                .iter()
                .map(|f| (f, "deny"))
                .chain(decision.warnings.iter().map(|f| (f, "warn")))
                .chain(decision.audits.iter().map(|f| (f, "audit")))
                .find(|(f, _)| &f.policy == name)
                .map_or("pass", |(_, r)| r);
            counters.count(name, result);
        }
    }
    if tracing::enabled!(tracing::Level::INFO) {
        let fields = |l: &mut telemetry::Line<'_>| {
            l.str("uid", &req.uid);
            l.str("kind", &req.kind.kind);
            l.display("object", LogObject(&req));
            l.str("sub_resource", req.sub_resource.as_deref().unwrap_or(""));
            l.display("operation", format_args!("{:?}", req.operation));
            l.str("user", req.user_info.username.as_deref().unwrap_or(""));
            l.bool("dry_run", req.dry_run);
            l.str("decision", label);
            l.display("policies", LogPolicies(&decision));
            l.u64("latency_us", elapsed.as_micros() as u64);
        };
        if !telemetry::info_line(module_path!(), "admission", fields) {
            tracing::info!("admission{}", telemetry::text_fields(fields));
        }
    }
    tracing::trace!(uid = %req.uid, object = req.object.as_ref().map_or("null", |o| o.raw.text()), "admission object");
    Ok(([(header::CONTENT_TYPE, "application/json")], encoded).into_response())
}

#[cfg(test)]
mod tests {
    use super::{LogObject, LogPolicies, request_deadline};
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use axum::response::{IntoResponse, Response};
    use tower::ServiceExt as _;

    fn webhook() -> super::Webhook {
        let policies = crate::policy::PolicySet::load(None, vec![]).expect("default policies");
        let limits = super::RouteLimits {
            max_body_bytes: 1 << 20,
            request_timeout: Duration::from_secs(1),
            max_concurrent_requests: 8,
            max_inflight_body_bytes: 1 << 20,
        };
        super::Webhook::new(
            super::AppState::new(policies),
            limits,
            crate::limits::BodyRate::default(),
        )
    }

    #[rstest]
    #[case::other_path(Method::POST, "/validate/x", StatusCode::NOT_FOUND, None)]
    #[case::root(Method::POST, "/", StatusCode::NOT_FOUND, None)]
    #[case::get(Method::GET, "/validate", StatusCode::METHOD_NOT_ALLOWED, Some("POST"))]
    #[case::put(
        Method::PUT,
        "/validate?timeout=10s",
        StatusCode::METHOD_NOT_ALLOWED,
        Some("POST")
    )]
    #[case::malformed(Method::POST, "/validate?timeout=10s", StatusCode::BAD_REQUEST, None)]
    #[tokio::test]
    async fn the_webhook_answers_only_posts_to_validate(
        #[case] method: Method,
        #[case] uri: &str,
        #[case] status: StatusCode,
        #[case] allow: Option<&str>,
    ) {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from("{}"))
            .expect("request");
        let resp = webhook().oneshot(req).await.expect("infallible");
        assert_eq!(resp.status(), status);
        assert_eq!(
            resp.headers()
                .get(axum::http::header::ALLOW)
                .and_then(|v| v.to_str().ok()),
            allow
        );
    }

    #[tokio::test]
    async fn a_panicking_answer_is_a_500_and_counted() {
        let metrics = crate::metrics::Metrics::new();
        let boom = || -> Response { panic!("boom") };
        let resp = super::catch_panics(async move { boom() }, &metrics).await;
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            metrics
                .encode()
                .contains("gatehouse_rejected_requests_total{reason=\"panic\"} 1")
        );
        let fine = super::catch_panics(async { StatusCode::OK.into_response() }, &metrics).await;
        assert_eq!(fine.status(), StatusCode::OK);
    }

    use crate::admission::testing::request;
    use crate::policy::{Decision, Finding};
    use rstest::rstest;
    use serde_json::json;
    use std::time::Duration;

    #[rstest]
    #[case(None, 9_000)]
    #[case(Some("timeout=10s"), 9_000)]
    #[case(Some("timeout=30s"), 9_000)]
    #[case(Some("timeout=5s"), 4_000)]
    #[case(Some("x=1&timeout=2s"), 1_600)]
    #[case(Some("timeout=1s"), 800)]
    #[case(Some("timeout=soon"), 9_000)]
    #[case(Some("timeout=0s"), 9_000)]
    fn deadline_follows_the_api_server_timeout(#[case] query: Option<&str>, #[case] ms: u64) {
        assert_eq!(
            request_deadline(Duration::from_secs(9), query),
            Duration::from_millis(ms)
        );
    }

    #[rstest]
    #[case::namespaced(json!({"name": "web", "namespace": "app-ns"}), json!({"metadata": {}}), "app-ns/web")]
    #[case::cluster(json!({"name": "web"}), json!({"metadata": {}}), "web")]
    #[case::generate_name(json!({"namespace": "app-ns"}), json!({"metadata": {"generateName": "web-"}}), "app-ns/web-*")]
    #[case::unnamed(json!({"namespace": ""}), json!({"metadata": {}}), "(unnamed)")]
    fn log_line_names_the_object(
        #[case] fields: serde_json::Value,
        #[case] object: serde_json::Value,
        #[case] expected: &str,
    ) {
        let mut r = json!({"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                           "resource": {"group": "", "version": "v1", "resource": "pods"},
                           "operation": "CREATE", "userInfo": {}, "object": object});
        for (k, v) in fields.as_object().expect("fields") {
            r[k] = v.clone();
        }
        assert_eq!(LogObject(&request(r)).to_string(), expected);
    }

    #[test]
    fn log_line_lists_the_policies_that_fired() {
        let f = |p: &str| Finding {
            policy: p.into(),
            message: "m".into(),
        };
        let mut d = Decision::default();
        assert_eq!(LogPolicies(&d).to_string(), "");
        d.denials = vec![f("a"), f("b")];
        d.warnings = vec![f("c")];
        d.audits = vec![f("d")];
        d.skipped = vec![f("e")];
        assert_eq!(LogPolicies(&d).to_string(), "a,b,c,d");
        assert_eq!(LogPolicies(&d).to_string(), d.fired().join(","));
    }
}
