//! AdmissionReview ⇄ engine, through `kube::core::admission` (never hand-rolled): the request
//! keeps its TypeMeta so the answer carries the same `apiVersion` and `kind`.

use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::core::response::StatusSummary;
use kube::core::{DynamicObject, Status, TypeMeta};

use crate::policy::Decision;

/// `admission.k8s.io/v1`
pub const V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1`
pub const V1BETA1: &str = "admission.k8s.io/v1beta1";

/// A body that is not a usable AdmissionReview.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not JSON, or JSON of the wrong shape.
    #[error("body is not an AdmissionReview: {0}")]
    Json(String),
    /// A kind other than AdmissionReview.
    #[error("kind is `{0}`, expected AdmissionReview")]
    Kind(String),
    /// An apiVersion other than v1 and v1beta1.
    #[error(
        "apiVersion `{0}` is not supported (use admission.k8s.io/v1 or admission.k8s.io/v1beta1)"
    )]
    Version(String),
    /// No `request` in the review.
    #[error("AdmissionReview has no request")]
    NoRequest,
    /// An empty `request.uid`.
    #[error("request.uid is empty")]
    NoUid,
}

/// The review as it arrives, read in one pass. kube's `AdmissionReview` flattens its TypeMeta,
/// which makes serde buffer the whole document (object and oldObject included) before reading
/// it a second time; reading the envelope's fields directly avoids that, and the review is then
/// rebuilt from its parts for kube's own conversion into the request.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Envelope {
    #[serde(default)]
    api_version: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    request: Option<AdmissionRequest<DynamicObject>>,
}

/// Parses a review body into its request.
pub fn decode(body: &[u8]) -> Result<AdmissionRequest<DynamicObject>, DecodeError> {
    let envelope: Envelope =
        serde_json::from_slice(body).map_err(|e| DecodeError::Json(e.to_string()))?;
    if envelope.kind != "AdmissionReview" {
        return Err(DecodeError::Kind(envelope.kind));
    }
    if envelope.api_version != V1 && envelope.api_version != V1BETA1 {
        return Err(DecodeError::Version(envelope.api_version));
    }
    let review = AdmissionReview {
        types: TypeMeta {
            api_version: envelope.api_version,
            kind: envelope.kind,
        },
        request: envelope.request,
        response: None,
    };
    let req: AdmissionRequest<DynamicObject> =
        review.try_into().map_err(|_| DecodeError::NoRequest)?;
    if req.uid.is_empty() {
        return Err(DecodeError::NoUid);
    }
    Ok(req)
}

/// Builds the response review for a decision: same apiVersion, kind and uid; denials in
/// `status.message` with code 403; warnings and audit annotations; never a patch.
pub fn respond(
    req: &AdmissionRequest<DynamicObject>,
    decision: &Decision,
) -> AdmissionReview<DynamicObject> {
    let mut resp = AdmissionResponse::from(req);
    if !decision.allowed() {
        resp = resp.deny(decision.deny_message());
        resp.result = Status {
            status: Some(StatusSummary::Failure),
            code: 403,
            message: decision.deny_message(),
            reason: "Forbidden".into(),
            ..Status::default()
        };
    }
    if !decision.warnings.is_empty() {
        resp.warnings = Some(
            decision
                .warnings
                .iter()
                .map(|f| f.message.clone())
                .collect(),
        );
    }
    for f in &decision.audits {
        resp.audit_annotations
            .insert(f.policy.clone(), f.message.clone());
    }
    resp.into_review()
}

/// `Deployment app-ns/alpine-deploy`, `Deployment app-ns/alpine-deploy (scale)`.
pub fn describe_object(req: &AdmissionRequest<DynamicObject>) -> String {
    let kind = match req.sub_resource.as_deref() {
        Some(sub) if !sub.is_empty() => format!("{} ", kind_of_resource(req)),
        _ => format!("{} ", req.kind.kind),
    };
    let name = object_name(req);
    let ns = req.namespace.as_deref().unwrap_or("");
    let sub = match req.sub_resource.as_deref() {
        Some(s) if !s.is_empty() => format!(" ({s})"),
        _ => String::new(),
    };
    if ns.is_empty() {
        format!("{kind}{name}{sub}")
    } else {
        format!("{kind}{ns}/{name}{sub}")
    }
}

/// The object's name; on CREATE with `generateName`, the prefix followed by `*`.
pub fn object_name(req: &AdmissionRequest<DynamicObject>) -> String {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    let meta = req
        .object
        .as_ref()
        .or(req.old_object.as_ref())
        .map(|o| &o.metadata);
    match meta {
        Some(m) if m.name.is_some() => m.name.clone().unwrap_or_default(),
        Some(m) if m.generate_name.is_some() => {
            format!("{}*", m.generate_name.clone().unwrap_or_default())
        }
        _ => "(unnamed)".into(),
    }
}

/// The Kind of the parent resource for a subresource request (`deployments/scale` is about a
/// Deployment even though the object is a Scale).
fn kind_of_resource(req: &AdmissionRequest<DynamicObject>) -> String {
    let known = match req.resource.resource.as_str() {
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "replicasets" => "ReplicaSet",
        "replicationcontrollers" => "ReplicationController",
        "daemonsets" => "DaemonSet",
        "pods" => "Pod",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        other => return other.to_owned(),
    };
    known.to_owned()
}

/// `1 replica`, `2 replicas`.
pub fn plural(n: i64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Builders for tests across the crate.
#[cfg(test)]
pub mod testing {
    use super::*;

    /// A request from the JSON of `request` in a v1 review.
    pub fn request(request: serde_json::Value) -> AdmissionRequest<DynamicObject> {
        let review = serde_json::json!({
            "apiVersion": V1, "kind": "AdmissionReview", "request": request,
        });
        decode(&serde_json::to_vec(&review).unwrap()).unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Finding;
    use rstest::rstest;
    use serde_json::{Value, json};

    fn review(api_version: &str) -> Value {
        json!({
            "apiVersion": api_version, "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                "name": "web", "namespace": "app", "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "object": {"metadata": {"name": "web"}, "spec": {"replicas": 1}},
            }
        })
    }

    #[rstest]
    #[case(V1)]
    #[case(V1BETA1)]
    fn response_keeps_api_version_kind_and_uid(#[case] version: &str) {
        let req = decode(&serde_json::to_vec(&review(version)).unwrap()).unwrap();
        let decision = Decision {
            denials: vec![Finding {
                policy: "p".into(),
                message: "no".into(),
            }],
            warnings: vec![Finding {
                policy: "w".into(),
                message: "careful".into(),
            }],
            audits: vec![Finding {
                policy: "a".into(),
                message: "noted".into(),
            }],
            ..Decision::default()
        };
        let out = serde_json::to_value(respond(&req, &decision)).unwrap();
        assert_eq!(out["apiVersion"], version);
        assert_eq!(out["kind"], "AdmissionReview");
        assert_eq!(
            out["response"]["uid"],
            "705ab4f5-6393-11e8-b7cc-42010a800002"
        );
        assert_eq!(out["response"]["allowed"], false);
        assert_eq!(out["response"]["status"]["message"], "no");
        assert_eq!(out["response"]["status"]["code"], 403);
        assert_eq!(out["response"]["warnings"], json!(["careful"]));
        assert_eq!(out["response"]["auditAnnotations"], json!({"a": "noted"}));
        assert!(out["response"].get("patch").is_none());
        assert!(out["response"].get("patchType").is_none());
        assert!(out.get("request").is_none());
    }

    #[rstest]
    #[case::not_json(b"{not json".to_vec(), "body is not an AdmissionReview")]
    #[case::empty(b"".to_vec(), "body is not an AdmissionReview")]
    #[case::wrong_kind(serde_json::to_vec(&json!({"apiVersion": V1, "kind": "Pod"})).unwrap(), "kind is `Pod`")]
    #[case::wrong_version(serde_json::to_vec(&json!({"apiVersion": "admission.k8s.io/v2", "kind": "AdmissionReview"})).unwrap(), "apiVersion `admission.k8s.io/v2`")]
    #[case::no_request(serde_json::to_vec(&json!({"apiVersion": V1, "kind": "AdmissionReview"})).unwrap(), "has no request")]
    fn malformed_reviews_are_named(#[case] body: Vec<u8>, #[case] expected: &str) {
        let err = decode(&body).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn empty_uid_is_rejected() {
        let mut r = review(V1);
        r["request"]["uid"] = json!("");
        assert_eq!(
            decode(&serde_json::to_vec(&r).unwrap()).unwrap_err(),
            DecodeError::NoUid
        );
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let mut body = String::from(
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","object":{"spec":"#,
        );
        body.push_str(&"[".repeat(100_000));
        let err = decode(body.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }

    #[test]
    fn describes_generate_name_objects() {
        let req = testing::request(json!({
            "uid": "u", "operation": "CREATE", "name": "", "namespace": "ns",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "userInfo": {},
            "object": {"metadata": {"generateName": "web-"}},
        }));
        assert_eq!(describe_object(&req), "Pod ns/web-*");
    }
}
