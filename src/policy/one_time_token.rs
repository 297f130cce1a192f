//! Policy kind `one-time-token`: a CREATE or UPDATE of a matched object must carry, in an
//! annotation, a token issued by `gatehouse tokens issue` (or the token endpoint) that exists,
//! has not expired, has not been used or revoked and is valid for the request's namespace.
//! Admitting the request consumes the token, exactly once across every replica sharing the
//! store; a `dryRun` request only checks it.

use std::sync::Arc;

use kube::core::admission::Operation;
use serde::Deserialize;

use super::{Check, Eval, EvalCtx, EvalOptions, LoadContext, Outcome};
use crate::admission::{Raw, Review, describe_object, object_name};
use crate::store::{self, TokenRecord, TokenStoreSlot, UsedBy, Verdict};

/// The annotation read when `params.annotation` is not set.
pub const DEFAULT_ANNOTATION: &str = "gatehouse.dev/token";

/// What to do when the token store cannot be reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Fail closed: the policy is violated ("token store unavailable").
    #[default]
    Deny,
    /// Fail open: the policy passes (logged and counted).
    Allow,
}

fn default_annotation() -> String {
    DEFAULT_ANNOTATION.to_owned()
}

fn yes() -> bool {
    true
}

/// `params` of a `one-time-token` policy.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Params {
    /// The annotation holding the token.
    #[serde(default = "default_annotation")]
    pub annotation: String,
    /// `deny` (default) or `allow` when the store is unreachable.
    #[serde(default)]
    pub on_store_error: OnStoreError,
    /// UPDATEs that change nothing but `metadata` and `status` (a controller recording a
    /// revision, finalizers, labels) need no token. Default true.
    #[serde(default = "yes")]
    pub allow_metadata_only_updates: bool,
}

/// A loaded `one-time-token` policy: its params and where it finds the store.
#[derive(Debug, Clone)]
pub struct OneTimeToken {
    params: Params,
    store: TokenStoreSlot,
}

impl OneTimeToken {
    /// Checks the params; the error names the field.
    pub fn new(params: Params, store: TokenStoreSlot) -> Result<Self, String> {
        validate_annotation_key(&params.annotation)
            .map_err(|m| format!("params.annotation: {m}"))?;
        Ok(Self { params, store })
    }

    /// The params.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Checks (and, unless `dryRun`, consumes) the request's token.
    pub async fn evaluate(&self, policy: &str, req: &Review<'_>, opts: &EvalOptions) -> Outcome {
        self.evaluate_with(policy, req, opts, true).await
    }

    /// Checks the request's token, and consumes it when `may_consume` (another policy has not
    /// denied the request) and the request is not a `dryRun`.
    pub async fn evaluate_with(
        &self,
        policy: &str,
        req: &Review<'_>,
        opts: &EvalOptions,
        may_consume: bool,
    ) -> Outcome {
        if !matches!(req.operation, Operation::Create | Operation::Update) {
            return Outcome::Pass;
        }
        let Some(obj) = req.object.as_ref() else {
            return Outcome::Pass;
        };
        let metrics = self.store.metrics();
        if opts.offline {
            metrics.count("skipped_offline");
            return Outcome::Skipped(format!(
                "policy {policy} needs the token store; one-time tokens are not checked offline"
            ));
        }
        if req.operation == Operation::Update
            && self.params.allow_metadata_only_updates
            && req
                .old_object
                .as_ref()
                .is_some_and(|old| same_except_status(obj.raw, old.raw))
        {
            return Outcome::Pass;
        }
        let key = &self.params.annotation;
        let annotation = obj.annotation(key);
        let token = annotation
            .as_deref()
            .map(str::trim)
            .filter(|v| !v.is_empty());
        let Some(token) = token else {
            metrics.count("missing");
            return Outcome::Violation(format!(
                "{} has no one-time token in annotation {key}; policy {policy} requires one (issue it with `gatehouse tokens issue`)",
                describe_object(req)
            ));
        };
        let Some(tokens) = self.store.tokens() else {
            tracing::error!(policy, "the token store was never opened");
            return self.unavailable(policy, req);
        };
        let namespace = req.namespace.as_deref().filter(|n| !n.is_empty());
        let now = store::now_unix();
        let consume = may_consume && !req.dry_run;
        let result = if !consume {
            tokens.check(token, namespace, now).await
        } else {
            let ns = namespace.unwrap_or("");
            let by = UsedBy {
                user: req
                    .user_info
                    .username
                    .as_deref()
                    .unwrap_or_default()
                    .to_owned(),
                kind: req.kind.kind.clone().into_owned(),
                object: if ns.is_empty() {
                    object_name(req).into_owned()
                } else {
                    format!("{ns}/{}", object_name(req))
                },
                uid: req.uid.clone().into_owned(),
            };
            tokens.consume(token, namespace, now, &by).await
        };
        match result {
            Err(e) => {
                metrics.store_errors.inc();
                tracing::warn!(policy, uid = %req.uid, backend = tokens.backend(), error = %e, "token store unavailable");
                self.unavailable(policy, req)
            }
            Ok(Verdict::Accepted { id }) => {
                metrics.count(if consume {
                    "consumed"
                } else {
                    "valid_not_consumed"
                });
                tracing::info!(policy, uid = %req.uid, token_id = id, consumed = consume, dry_run = req.dry_run, "one-time token accepted");
                Outcome::Pass
            }
            Ok(verdict) => {
                metrics.count(verdict.label());
                Outcome::Violation(refusal(policy, req, key, &verdict))
            }
        }
    }

    fn unavailable(&self, policy: &str, req: &Review<'_>) -> Outcome {
        self.store.metrics().count("store_unavailable");
        match self.params.on_store_error {
            OnStoreError::Deny => Outcome::Violation(format!(
                "{}: token store unavailable; policy {policy} cannot check its one-time token",
                describe_object(req)
            )),
            OnStoreError::Allow => {
                tracing::warn!(policy, uid = %req.uid, "token store unavailable: admitted without a token check (onStoreError: allow)");
                Outcome::Pass
            }
        }
    }
}

/// The [`super::Loader`] of `one-time-token`: the store comes from the load context.
pub(crate) fn load(params: serde_yaml::Value, ctx: &LoadContext) -> Result<Arc<dyn Check>, String> {
    Ok(Arc::new(OneTimeToken::new(
        super::typed_params(params)?,
        ctx.token_store.want(),
    )?))
}

impl Check for OneTimeToken {
    fn evaluate<'r>(&'r self, ctx: &'r EvalCtx<'r, '_>) -> Eval<'r> {
        Eval::Pending(Box::pin(self.evaluate_with(
            ctx.policy,
            ctx.review,
            ctx.opts,
            ctx.may_consume,
        )))
    }

    fn consumes(&self) -> bool {
        true
    }
}

/// The deny message for a token that cannot be used. It names the token by id, never by value.
fn refusal(policy: &str, req: &Review<'_>, key: &str, verdict: &Verdict) -> String {
    let obj = describe_object(req);
    let carries = |r: &TokenRecord| format!("{obj} carries token #{} (annotation {key})", r.id);
    match verdict {
        Verdict::Accepted { .. } => String::new(),
        Verdict::Unknown => format!(
            "{obj} carries an unknown token in annotation {key}; policy {policy} requires a token issued by gatehouse"
        ),
        Verdict::Used(r) => {
            let used_for = match &r.used_by {
                Some(by) if !by.object.is_empty() => format!(" for {} {}", by.kind, by.object),
                _ => String::new(),
            };
            format!(
                "{}, which was already used at {}{used_for}; policy {policy} accepts each token once",
                carries(r),
                store::format_time(r.used_at.unwrap_or_default()),
            )
        }
        Verdict::Revoked(r) => format!(
            "{}, which was revoked at {}; policy {policy} requires a valid token",
            carries(r),
            store::format_time(r.revoked_at.unwrap_or_default()),
        ),
        Verdict::Expired(r) => format!(
            "{}, which expired at {}; policy {policy} requires an unexpired token",
            carries(r),
            store::format_time(r.expires_at),
        ),
        Verdict::WrongNamespace(r) => format!(
            "{}, which is valid only in namespace {}; policy {policy} requires a token for {}",
            carries(r),
            r.namespace.as_deref().unwrap_or(""),
            match req.namespace.as_deref() {
                Some(ns) if !ns.is_empty() => format!("namespace {ns}"),
                _ => "cluster-scoped objects".to_owned(),
            },
        ),
    }
}

/// Whether two objects' bodies (everything but apiVersion, kind and metadata) are equal,
/// ignoring `status`.
fn same_except_status(new: Raw<'_>, old: Raw<'_>) -> bool {
    const NOT_BODY: [&str; 4] = ["apiVersion", "kind", "metadata", "status"];
    let body = |o: Raw<'_>| -> Option<Vec<(String, serde_json::Value)>> {
        let serde_json::Value::Object(mut m) = o.to_value() else {
            return None;
        };
        m.retain(|k, _| !NOT_BODY.contains(&k.as_str()));
        Some(m.into_iter().collect())
    };
    match (body(new), body(old)) {
        (Some(mut a), Some(mut b)) => {
            a.sort_by(|x, y| x.0.cmp(&y.0));
            b.sort_by(|x, y| x.0.cmp(&y.0));
            a == b
        }
        _ => new.to_value() == old.to_value(),
    }
}

/// An annotation key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// letters, digits, `-`, `_` and `.` starting and ending with a letter or digit.
fn validate_annotation_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix
        .is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.split('.').all(store::is_dns_label));
    if name_ok && prefix_ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is not an annotation key (such as {DEFAULT_ANNOTATION})"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures_util::future::BoxFuture;
    use rstest::rstest;
    use serde_json::json;

    use super::*;
    use crate::admission::testing::request;
    use crate::store::{NewToken, StoreError, TokenHash, TokenStore, Tokens};

    /// A store whose database is down: every operation fails, and records that it was called.
    #[derive(Default)]
    struct DownStore {
        called: AtomicBool,
    }

    impl DownStore {
        fn fail<T: Send + 'static>(&self) -> BoxFuture<'_, Result<T, StoreError>> {
            self.called.store(true, Ordering::SeqCst);
            Box::pin(async { Err(StoreError::Database(sqlx::Error::PoolTimedOut)) })
        }
    }

    impl TokenStore for DownStore {
        fn backend(&self) -> &'static str {
            "down"
        }
        fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
            self.fail()
        }
        fn insert<'a>(&'a self, _: &'a NewToken) -> BoxFuture<'a, Result<i64, StoreError>> {
            self.fail()
        }
        fn find<'a>(
            &'a self,
            _: &'a TokenHash,
        ) -> BoxFuture<'a, Result<Option<TokenRecord>, StoreError>> {
            self.fail()
        }
        fn try_consume<'a>(
            &'a self,
            _: &'a TokenHash,
            _: Option<&'a str>,
            _: i64,
            _: &'a UsedBy,
        ) -> BoxFuture<'a, Result<Option<i64>, StoreError>> {
            self.fail()
        }
        fn list(&self) -> BoxFuture<'_, Result<Vec<TokenRecord>, StoreError>> {
            self.fail()
        }
        fn revoke(&self, _: i64, _: i64) -> BoxFuture<'_, Result<Option<TokenRecord>, StoreError>> {
            self.fail()
        }
        fn prune(&self, _: i64) -> BoxFuture<'_, Result<u64, StoreError>> {
            self.fail()
        }
        fn close(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    fn params(yaml: &str) -> Params {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn policy_with(store: Arc<DownStore>, yaml: &str) -> OneTimeToken {
        let tokens = Tokens::new(store, Duration::from_secs(1));
        OneTimeToken::new(params(yaml), TokenStoreSlot::with_tokens(tokens)).unwrap()
    }

    fn deployment(
        op: &str,
        token: Option<&str>,
        replicas: i64,
        old_replicas: i64,
    ) -> crate::admission::Review<'static> {
        let mut meta = json!({"name": "web", "namespace": "app-ns"});
        if let Some(t) = token {
            meta["annotations"] = json!({"gatehouse.dev/token": t});
        }
        let mut r = json!({
            "uid": "u-1", "operation": op, "name": "web", "namespace": "app-ns",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "alice"},
            "object": {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta,
                       "spec": {"replicas": replicas}, "status": {"readyReplicas": 1}},
        });
        if op == "UPDATE" {
            r["oldObject"] = json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web", "namespace": "app-ns"},
                "spec": {"replicas": old_replicas}, "status": {"readyReplicas": 3}});
        }
        request(r)
    }

    #[rstest]
    #[case::default_key("gatehouse.dev/token", true)]
    #[case::no_prefix("deploy-token", true)]
    #[case::dotted_name("example.com/deploy.token_1", true)]
    #[case::empty("", false)]
    #[case::space("gatehouse.dev/my token", false)]
    #[case::bad_prefix("Gatehouse.dev/token", false)]
    #[case::two_slashes("a/b/c", false)]
    #[case::trailing_dash("gatehouse.dev/token-", false)]
    fn annotation_keys(#[case] key: &str, #[case] ok: bool) {
        assert_eq!(validate_annotation_key(key).is_ok(), ok, "{key}");
    }

    #[test]
    fn params_default_and_reject_unknown_fields() {
        let p = params("{}");
        assert_eq!(p.annotation, DEFAULT_ANNOTATION);
        assert_eq!(p.on_store_error, OnStoreError::Deny);
        assert!(p.allow_metadata_only_updates);
        assert!(serde_yaml::from_str::<Params>("{anotation: x}").is_err());
        assert!(serde_yaml::from_str::<Params>("{onStoreError: maybe}").is_err());
    }

    #[test]
    fn the_example_policy_file_loads_and_asks_for_the_store() {
        let ctx = crate::policy::LoadContext::default();
        let text = include_str!("../../policies/examples/one-time-token.yaml");
        let policies =
            crate::policy::parse_policies_with(text, "one-time-token.yaml", &ctx).unwrap();
        assert_eq!(policies.len(), 1);
        assert_eq!(policies[0].kind.name(), "one-time-token");
        assert!(ctx.token_store.wanted());
        // The embedded defaults do not use the kind, so the store is not opened for them.
        let ctx = crate::policy::LoadContext::default();
        crate::policy::load_policies_with(None, &ctx).unwrap();
        assert!(!ctx.token_store.wanted());
    }

    #[test]
    fn bad_params_name_the_field() {
        let text = "- name: t\n  kind: one-time-token\n  match: {resources: [deployments]}\n  params: {annotation: 'bad key'}\n";
        let err = crate::policy::parse_policies(text, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policy \"t\": params.annotation: `bad key` is not an annotation key"),
            "{err}"
        );
        let text = "- name: t\n  kind: one-time-token\n  match: {resources: [deployments]}\n  params: {onStoreError: open}\n";
        let err = crate::policy::parse_policies(text, "t.yaml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("params.onStoreError: unknown variant `open`"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn offline_is_skipped_without_touching_the_store() {
        let store = Arc::new(DownStore::default());
        let p = policy_with(store.clone(), "{}");
        let out = p
            .evaluate(
                "t",
                &deployment("CREATE", Some("gate_x"), 3, 3),
                &EvalOptions { offline: true },
            )
            .await;
        match out {
            Outcome::Skipped(m) => assert!(m.contains("needs the token store"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(!store.called.load(Ordering::SeqCst));
    }

    #[rstest]
    #[case::fail_closed("{}", false)]
    #[case::fail_open("{onStoreError: allow}", true)]
    #[tokio::test]
    async fn a_failing_store_denies_unless_fail_open(#[case] yaml: &str, #[case] passes: bool) {
        let store = Arc::new(DownStore::default());
        let p = policy_with(store.clone(), yaml);
        let out = p
            .evaluate(
                "need-token",
                &deployment("CREATE", Some("gate_secret-value"), 3, 3),
                &EvalOptions::default(),
            )
            .await;
        assert!(store.called.load(Ordering::SeqCst));
        if passes {
            assert_eq!(out, Outcome::Pass);
        } else {
            assert_eq!(
                out,
                Outcome::Violation(
                    "Deployment app-ns/web: token store unavailable; policy need-token cannot check its one-time token".into()
                )
            );
        }
        let m = &p.store.metrics();
        assert_eq!(m.store_errors.get(), 1);
    }

    #[tokio::test]
    async fn a_never_opened_store_fails_closed() {
        let p = OneTimeToken::new(params("{}"), TokenStoreSlot::default()).unwrap();
        let out = p
            .evaluate(
                "t",
                &deployment("CREATE", Some("gate_x"), 3, 3),
                &EvalOptions::default(),
            )
            .await;
        assert!(matches!(out, Outcome::Violation(m) if m.contains("token store unavailable")));
    }

    #[rstest]
    #[case::no_annotation(None)]
    #[case::empty(Some(""))]
    #[case::blank(Some("   "))]
    #[tokio::test]
    async fn a_missing_token_is_named_without_asking_the_store(#[case] token: Option<&str>) {
        let store = Arc::new(DownStore::default());
        let p = policy_with(store.clone(), "{}");
        let out = p
            .evaluate(
                "need-token",
                &deployment("CREATE", token, 3, 3),
                &EvalOptions::default(),
            )
            .await;
        assert_eq!(
            out,
            Outcome::Violation(
                "Deployment app-ns/web has no one-time token in annotation gatehouse.dev/token; policy need-token requires one (issue it with `gatehouse tokens issue`)".into()
            )
        );
        assert!(!store.called.load(Ordering::SeqCst));
    }

    #[rstest]
    #[case::metadata_only(3, 3, true, false)]
    #[case::spec_changed(3, 5, true, true)]
    #[case::metadata_only_but_strict(3, 3, false, true)]
    #[tokio::test]
    async fn updates_need_a_token_when_more_than_metadata_changes(
        #[case] replicas: i64,
        #[case] old: i64,
        #[case] allow_metadata: bool,
        #[case] needs_store: bool,
    ) {
        let store = Arc::new(DownStore::default());
        let yaml = format!("{{allowMetadataOnlyUpdates: {allow_metadata}}}");
        let p = policy_with(store.clone(), &yaml);
        let out = p
            .evaluate(
                "t",
                &deployment("UPDATE", Some("gate_x"), replicas, old),
                &EvalOptions::default(),
            )
            .await;
        assert_eq!(store.called.load(Ordering::SeqCst), needs_store);
        assert_eq!(out == Outcome::Pass, !needs_store, "{out:?}");
    }

    #[tokio::test]
    async fn delete_needs_no_token() {
        let store = Arc::new(DownStore::default());
        let p = policy_with(store.clone(), "{}");
        let req = request(json!({
            "uid": "u", "operation": "DELETE", "name": "web", "namespace": "app-ns",
            "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
            "userInfo": {"username": "alice"},
            "oldObject": {"metadata": {"name": "web"}},
        }));
        assert_eq!(
            p.evaluate("t", &req, &EvalOptions::default()).await,
            Outcome::Pass
        );
        assert!(!store.called.load(Ordering::SeqCst));
    }

    fn rec() -> TokenRecord {
        TokenRecord {
            id: 42,
            created_at: 0,
            expires_at: 1_777_629_600,
            namespace: Some("team-a".into()),
            note: String::new(),
            used_at: Some(1_777_629_600),
            used_by: Some(UsedBy {
                user: "bob".into(),
                kind: "Deployment".into(),
                object: "team-a/api".into(),
                uid: "x".into(),
            }),
            revoked_at: Some(1_777_629_600),
        }
    }

    #[rstest]
    #[case::unknown(
        Verdict::Unknown,
        "Deployment app-ns/web carries an unknown token in annotation gatehouse.dev/token; policy p requires a token issued by gatehouse"
    )]
    #[case::used(
        Verdict::Used(rec()),
        "Deployment app-ns/web carries token #42 (annotation gatehouse.dev/token), which was already used at 2026-05-01T10:00:00Z for Deployment team-a/api; policy p accepts each token once"
    )]
    #[case::revoked(
        Verdict::Revoked(rec()),
        "Deployment app-ns/web carries token #42 (annotation gatehouse.dev/token), which was revoked at 2026-05-01T10:00:00Z; policy p requires a valid token"
    )]
    #[case::expired(
        Verdict::Expired(rec()),
        "Deployment app-ns/web carries token #42 (annotation gatehouse.dev/token), which expired at 2026-05-01T10:00:00Z; policy p requires an unexpired token"
    )]
    #[case::namespace(
        Verdict::WrongNamespace(rec()),
        "Deployment app-ns/web carries token #42 (annotation gatehouse.dev/token), which is valid only in namespace team-a; policy p requires a token for namespace app-ns"
    )]
    fn refusals_tell_the_cases_apart(#[case] verdict: Verdict, #[case] expected: &str) {
        let req = deployment("CREATE", Some("gate_secret-value"), 3, 3);
        let msg = refusal("p", &req, DEFAULT_ANNOTATION, &verdict);
        assert_eq!(msg, expected);
        assert!(!msg.contains("secret-value"));
    }
}
