//! AdmissionReview ⇄ engine. A review is decoded once into a [`Review`] that borrows from the
//! body: the envelope's fields are read, `object` and `oldObject` stay raw JSON text ([`Raw`])
//! that each policy kind reads only as far as it needs. Answers are built with
//! `kube::core::admission`'s response types, so they carry the same `apiVersion`, `kind` and
//! `uid` as the review.

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::StatusSummary;
use kube::core::{DynamicObject, Status, TypeMeta};
use serde::Deserialize;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::policy::Decision;
use crate::policy::podspec::PodTemplate;

/// `admission.k8s.io/v1`
pub const V1: &str = "admission.k8s.io/v1";
/// `admission.k8s.io/v1beta1`
pub const V1BETA1: &str = "admission.k8s.io/v1beta1";
/// The longest `request.uid` accepted (the API server sends a 36-character UUID).
pub const MAX_UID_BYTES: usize = 128;

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
    /// A `request.uid` longer than [`MAX_UID_BYTES`].
    #[error("request.uid is {0} bytes long; at most 128 are accepted")]
    LongUid(usize),
    /// A CREATE or UPDATE without the object it creates or updates.
    #[error(
        "request.object is missing from this {0} review; CREATE and UPDATE reviews must carry the object"
    )]
    NoObject(&'static str),
}

/// The JSON text of one value inside a review body, validated but not built. Reading a field
/// walks the text and skips what it does not need without allocating.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl fmt::Debug for Raw<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Objects can be megabytes; debug output shows the start only.
        let end = self
            .0
            .char_indices()
            .nth(80)
            .map_or(self.0.len(), |(i, _)| i);
        write!(
            f,
            "Raw({}{})",
            &self.0[..end],
            if end < self.0.len() { "…" } else { "" }
        )
    }
}

impl<'a> Raw<'a> {
    fn of(raw: &'a RawValue) -> Self {
        Raw(raw.get())
    }

    /// The JSON text.
    pub fn text(self) -> &'a str {
        self.0
    }

    /// Whether the value is `null`.
    pub fn is_null(self) -> bool {
        self.0 == "null"
    }

    /// Whether the value is a JSON object.
    pub fn is_object(self) -> bool {
        self.0.starts_with('{')
    }

    /// The value as a string, borrowed unless it has escapes.
    pub fn as_str(self) -> Option<Cow<'a, str>> {
        if !self.0.starts_with('"') {
            return None;
        }
        match serde_json::from_str::<&'a str>(self.0) {
            Ok(s) => Some(Cow::Borrowed(s)),
            Err(_) => serde_json::from_str::<String>(self.0).ok().map(Cow::Owned),
        }
    }

    /// The value as a whole number in range (as `serde_json::Value::as_i64`).
    pub fn as_i64(self) -> Option<i64> {
        let first = self.0.as_bytes().first()?;
        if !(first.is_ascii_digit() || *first == b'-') {
            return None;
        }
        serde_json::from_str::<i64>(self.0).ok()
    }

    /// The value as a boolean.
    pub fn as_bool(self) -> Option<bool> {
        match self.0 {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The values of `keys` in this object, in one walk (the last of duplicate keys wins, as
    /// everywhere in Kubernetes). All `None` when the value is not an object.
    pub fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Raw<'a>>; N] {
        if !self.is_object() {
            return [None; N];
        }
        let mut de = serde_json::Deserializer::from_str(self.0);
        match de.deserialize_map(FieldsVisitor(&keys)) {
            Ok(found) => found.map(|v| v.map(Raw::of)),
            Err(_) => [None; N],
        }
    }

    /// The value of one key in this object.
    pub fn get(self, key: &str) -> Option<Raw<'a>> {
        let [v] = self.fields([key]);
        v
    }

    /// The value at a path of keys.
    pub fn pointer(self, path: &[&str]) -> Option<Raw<'a>> {
        path.iter().try_fold(self, |v, k| v.get(k))
    }

    /// The elements of this array; empty when the value is not an array.
    pub fn items(self) -> Vec<Raw<'a>> {
        if !self.0.starts_with('[') {
            return Vec::new();
        }
        serde_json::from_str::<Vec<&'a RawValue>>(self.0)
            .map(|v| v.into_iter().map(Raw::of).collect())
            .unwrap_or_default()
    }

    /// The entries of this object, in order (keys unescaped); empty when it is not an object.
    pub fn entries(self) -> Vec<(Cow<'a, str>, Raw<'a>)> {
        if !self.is_object() {
            return Vec::new();
        }
        let mut de = serde_json::Deserializer::from_str(self.0);
        de.deserialize_map(EntriesVisitor(std::marker::PhantomData))
            .map(|v| v.into_iter().map(|(k, r)| (k.0, Raw::of(r))).collect())
            .unwrap_or_default()
    }

    /// The value built as a `serde_json::Value` (for the rare comparison of whole objects).
    pub fn to_value(self) -> serde_json::Value {
        serde_json::from_str(self.0).unwrap_or(serde_json::Value::Null)
    }
}

/// Finds the index of a key among the wanted ones without allocating the key.
struct KeyIndex<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for KeyIndex<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

struct FieldsVisitor<'k, const N: usize>(&'k [&'k str; N]);

impl<'de, const N: usize> Visitor<'de> for FieldsVisitor<'_, N> {
    type Value = [Option<&'de RawValue>; N];
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = [None; N];
        while let Some(k) = map.next_key_seed(KeyIndex(self.0))? {
            match k {
                Some(i) => out[i] = Some(map.next_value::<&'de RawValue>()?),
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(out)
    }
}

struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
    type Value = Vec<(CowStr<'a>, &'a RawValue)>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(k) = map.next_key::<CowStr<'a>>()? {
            out.push((k, map.next_value::<&'de RawValue>()?));
        }
        Ok(out)
    }
}

/// A string borrowed from the body unless it has escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for CowStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = CowStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V(std::marker::PhantomData))
    }
}

fn cow<'a>(s: Option<CowStr<'a>>) -> Option<Cow<'a, str>> {
    s.map(|s| s.0)
}

/// Group, version and kind of the object (`request.kind`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gvk<'a> {
    /// API group, empty for the core group.
    pub group: Cow<'a, str>,
    /// Version.
    pub version: Cow<'a, str>,
    /// Kind.
    pub kind: Cow<'a, str>,
}

/// Group, version and resource of the request (`request.resource`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gvr<'a> {
    /// API group, empty for the core group.
    pub group: Cow<'a, str>,
    /// Version.
    pub version: Cow<'a, str>,
    /// Lower-case plural resource.
    pub resource: Cow<'a, str>,
}

/// Who sent the request (`request.userInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct User<'a> {
    /// The user name.
    pub username: Option<Cow<'a, str>>,
    /// The user's groups.
    pub groups: Vec<Cow<'a, str>>,
}

/// `object` or `oldObject` of a review: its raw JSON and the parts read at decode time.
#[derive(Debug, Clone)]
pub struct Object<'a> {
    /// The whole object.
    pub raw: Raw<'a>,
    /// `metadata`.
    pub metadata: Option<Raw<'a>>,
    /// `spec`.
    pub spec: Option<Raw<'a>>,
    /// `template` (a PodTemplate's).
    pub template: Option<Raw<'a>>,
    /// `spec.replicas`.
    pub replicas: Option<Raw<'a>>,
    /// `spec.template` (a workload's pod template).
    pub spec_template: Option<Raw<'a>>,
    /// `spec.jobTemplate` (a CronJob's).
    pub job_template: Option<Raw<'a>>,
    /// `spec.containers` (a Pod's).
    pub spec_containers: Option<Raw<'a>>,
    /// `metadata.name`.
    pub name: Option<Cow<'a, str>>,
    /// `metadata.generateName`.
    pub generate_name: Option<Cow<'a, str>>,
    /// `metadata.labels` (checked to map names to strings).
    pub labels: Option<Raw<'a>>,
    /// `metadata.annotations` (checked to map names to strings).
    pub annotations: Option<Raw<'a>>,
}

/// The deepest nesting accepted in an object. Reading the envelope skips the objects
/// without a depth limit; policies read parts of them with serde_json's limit of 128 levels
/// and must never find a part unreadable, so the objects are held to (about) the depth the
/// whole review was held to before they were kept raw.
pub const MAX_OBJECT_DEPTH: usize = 126;

/// Whether the JSON text nests arrays and objects at most `limit` deep (strings skipped).
fn depth_within(text: &str, limit: usize) -> bool {
    let bytes = text.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while let Some(off) = memchr::memchr3(b'"', b'{', b'[', &bytes[i..]).map(|o| o + i) {
        // Closing brackets between here and the next opening one lower the depth.
        depth = depth.saturating_sub(
            bytes[i..off]
                .iter()
                .filter(|&&b| b == b'}' || b == b']')
                .count(),
        );
        match bytes[off] {
            b'"' => {
                // Skip the string, honouring escapes.
                let mut j = off + 1;
                loop {
                    match bytes
                        .get(j..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    {
                        Some(k) if bytes[j + k] == b'\\' => j += k + 2,
                        Some(k) => {
                            j += k + 1;
                            break;
                        }
                        None => return true,
                    }
                }
                i = j.min(bytes.len());
            }
            _ => {
                depth += 1;
                if depth > limit {
                    return false;
                }
                i = off + 1;
            }
        }
    }
    true
}

/// What one pass over an object's text finds: whether it nests within the depth limit, and
/// where the values of the top-level keys and of `spec`'s keys that later readers need are.
#[derive(Default)]
struct Scan {
    /// `metadata`, `spec`, `template`.
    top: [Option<(usize, usize)>; 3],
    /// `spec.replicas`, `spec.template`, `spec.jobTemplate`, `spec.containers`.
    spec: [Option<(usize, usize)>; 4],
}

const TOP_KEYS: [&str; 3] = ["metadata", "spec", "template"];
const SPEC_KEYS: [&str; 4] = ["replicas", "template", "jobTemplate", "containers"];

/// Whether `b` is JSON whitespace.
fn json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Walks valid JSON object text once (strings skipped with memchr): `Err(true)` when it nests
/// deeper than `limit`, `Err(false)` when a key the walk would compare has escapes (the caller
/// then reads the fields the slower way), else the value ranges of [`TOP_KEYS`] and, when
/// `spec` is an object, of [`SPEC_KEYS`] (the last of duplicate keys wins).
fn scan_object(text: &str, limit: usize) -> Result<Scan, bool> {
    let bytes = text.as_bytes();
    let mut out = Scan::default();
    let mut depth = 0usize;
    // Whether the container at each of the first two levels is an object.
    let mut in_object = [false; 3];
    // Per level 1 and 2: whether the next string is a key, the key index being read and
    // where its value starts.
    let mut expect_key = [false; 3];
    let mut pending: [Option<(usize, usize)>; 3] = [None; 3];
    // Whether level 2 is the object value of `spec`.
    let mut in_spec = false;
    let mut i = 0;
    let close = |pending: &mut Option<(usize, usize)>, end: usize, out: &mut Scan, level: usize| {
        if let Some((key, start)) = pending.take() {
            let mut e = end;
            while e > start && json_space(bytes[e - 1]) {
                e -= 1;
            }
            if level == 1 {
                out.top[key] = Some((start, e));
            } else {
                out.spec[key] = Some((start, e));
            }
        }
    };
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'"' => {
                let start = i + 1;
                let mut j = start;
                let mut escaped = false;
                loop {
                    match bytes
                        .get(j..)
                        .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
                    {
                        Some(k) if bytes[j + k] == b'\\' => {
                            escaped = true;
                            j += k + 2;
                        }
                        Some(k) => {
                            j += k;
                            break;
                        }
                        None => return Ok(out),
                    }
                }
                if (1..=2).contains(&depth) && expect_key[depth] {
                    expect_key[depth] = false;
                    let wanted: &[&str] = if depth == 1 {
                        &TOP_KEYS
                    } else if in_spec {
                        &SPEC_KEYS
                    } else {
                        &[]
                    };
                    if !wanted.is_empty() {
                        if escaped {
                            return Err(false);
                        }
                        let key = &text[start..j];
                        if let Some(k) = wanted.iter().position(|w| *w == key) {
                            // The value starts after the colon and any whitespace.
                            let mut v = j + 1;
                            while v < bytes.len() && (json_space(bytes[v]) || bytes[v] == b':') {
                                v += 1;
                            }
                            pending[depth] = Some((k, v));
                            if depth == 1 && k == 1 {
                                out.spec = [None; 4];
                            }
                        }
                    }
                }
                i = j + 1;
                continue;
            }
            b'{' | b'[' => {
                if depth == 1 {
                    // Level 2 is `spec`'s object when the pending top key is `spec`.
                    in_spec = b == b'{' && matches!(pending[1], Some((1, s)) if s == i);
                }
                depth += 1;
                if depth > limit {
                    return Err(true);
                }
                if depth <= 2 {
                    in_object[depth] = b == b'{';
                    expect_key[depth] = b == b'{';
                    pending[depth] = None;
                }
            }
            b'}' | b']' => {
                if (1..=2).contains(&depth) {
                    close(&mut pending[depth], i, &mut out, depth);
                }
                if depth == 2 {
                    in_spec = false;
                }
                depth = depth.saturating_sub(1);
            }
            b',' if (1..=2).contains(&depth) => {
                close(&mut pending[depth], i, &mut out, depth);
                expect_key[depth] = in_object[depth];
            }
            _ => {}
        }
        i += 1;
    }
    Ok(out)
}

impl<'a> Object<'a> {
    fn read(raw: &'a RawValue, field: &str) -> Result<Self, DecodeError> {
        let raw = Raw::of(raw);
        if !raw.is_object() {
            return Err(DecodeError::Json(format!(
                "request.{field} must be a JSON object"
            )));
        }
        // One pass finds the depth and the parts later readers need.
        let text = raw.text();
        let slice = |r: Option<(usize, usize)>| r.map(|(a, b)| Raw(&text[a..b]));
        let too_deep = || {
            DecodeError::Json(format!(
                "request.{field} is nested deeper than the recursion limit ({MAX_OBJECT_DEPTH} levels)"
            ))
        };
        let ([metadata, spec, template], [replicas, spec_template, job_template, containers]) =
            match scan_object(text, MAX_OBJECT_DEPTH) {
                Ok(scan) => (scan.top.map(slice), scan.spec.map(slice)),
                Err(true) => return Err(too_deep()),
                // A wanted key with escapes: check the depth and read the fields with
                // serde_json.
                Err(false) => {
                    if !depth_within(text, MAX_OBJECT_DEPTH) {
                        return Err(too_deep());
                    }
                    let top = raw.fields(TOP_KEYS);
                    let spec = top[1].map_or([None; 4], |s| s.fields(SPEC_KEYS));
                    (top, spec)
                }
            };
        let metadata = metadata.filter(|m| !m.is_null());
        let bad = |what: &str| DecodeError::Json(format!("request.{field}.metadata{what}"));
        let mut obj = Object {
            raw,
            metadata,
            spec,
            template,
            replicas,
            spec_template,
            job_template,
            spec_containers: containers,
            name: None,
            generate_name: None,
            labels: None,
            annotations: None,
        };
        let Some(meta) = metadata else {
            return Ok(obj);
        };
        if !meta.is_object() {
            return Err(bad(" must be a JSON object"));
        }
        let [name, generate_name, namespace, labels, annotations] =
            meta.fields(["name", "generateName", "namespace", "labels", "annotations"]);
        let text = |v: Option<Raw<'a>>, key: &str| -> Result<Option<Cow<'a, str>>, DecodeError> {
            match v {
                None => Ok(None),
                Some(v) if v.is_null() => Ok(None),
                Some(v) => v
                    .as_str()
                    .map(Some)
                    .ok_or_else(|| bad(&format!(".{key} must be a string"))),
            }
        };
        obj.name = text(name, "name")?;
        obj.generate_name = text(generate_name, "generateName")?;
        text(namespace, "namespace")?;
        for (v, key, slot) in [
            (labels, "labels", &mut obj.labels),
            (annotations, "annotations", &mut obj.annotations),
        ] {
            match v {
                Some(v) if !v.is_null() => {
                    if !string_map(v) {
                        return Err(bad(&format!(".{key} must map names to strings")));
                    }
                    *slot = Some(v);
                }
                _ => {}
            }
        }
        Ok(obj)
    }

    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<Cow<'a, str>> {
        self.labels?.get(key)?.as_str()
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<Cow<'a, str>> {
        self.annotations?.get(key)?.as_str()
    }
}

/// Whether `v` is an object whose values are all strings (checked without allocating).
fn string_map(v: Raw<'_>) -> bool {
    struct OnlyStrings;
    impl<'de> Visitor<'de> for OnlyStrings {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object of strings")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while map.next_key::<IgnoredAny>()?.is_some() {
                map.next_value::<StringOnly>()?;
            }
            Ok(())
        }
    }
    struct StringOnly;
    impl<'de> Deserialize<'de> for StringOnly {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct S;
            impl Visitor<'_> for S {
                type Value = StringOnly;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_str<E: de::Error>(self, _: &str) -> Result<StringOnly, E> {
                    Ok(StringOnly)
                }
            }
            d.deserialize_str(S)
        }
    }
    let mut de = serde_json::Deserializer::from_str(v.0);
    de.deserialize_map(OnlyStrings).is_ok()
}

/// A decoded review: the envelope's fields, borrowed from the body where they can be, and
/// the objects as raw JSON. Parts of the objects that several policies read (the pod
/// template) are built once, on first use.
pub struct Review<'a> {
    /// `admission.k8s.io/v1` or `admission.k8s.io/v1beta1`, as the review came.
    pub api_version: &'static str,
    /// `request.uid`: non-empty, at most 128 bytes.
    pub uid: Cow<'a, str>,
    /// `request.kind`.
    pub kind: Gvk<'a>,
    /// `request.resource`.
    pub resource: Gvr<'a>,
    /// `request.subResource`.
    pub sub_resource: Option<Cow<'a, str>>,
    /// `request.name` (empty on CREATE with `generateName`).
    pub name: Cow<'a, str>,
    /// `request.namespace`.
    pub namespace: Option<Cow<'a, str>>,
    /// `request.operation`.
    pub operation: Operation,
    /// `request.userInfo`.
    pub user_info: User<'a>,
    /// `request.dryRun`.
    pub dry_run: bool,
    /// `request.object`; present on CREATE and UPDATE.
    pub object: Option<Object<'a>>,
    /// `request.oldObject`.
    pub old_object: Option<Object<'a>>,
    body: &'a [u8],
    pod: OnceLock<Option<PodTemplate<'a>>>,
}

impl fmt::Debug for Review<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Review")
            .field("api_version", &self.api_version)
            .field("uid", &self.uid)
            .field("kind", &self.kind)
            .field("resource", &self.resource)
            .field("sub_resource", &self.sub_resource)
            .field("name", &self.name)
            .field("namespace", &self.namespace)
            .field("operation", &self.operation)
            .finish_non_exhaustive()
    }
}

impl<'a> Review<'a> {
    /// The pod template (or Pod spec) of `object`, read once.
    pub(crate) fn pod_template(&self) -> Option<&PodTemplate<'a>> {
        self.pod
            .get_or_init(|| PodTemplate::of(&self.kind.kind, self.object.as_ref()?))
            .as_ref()
    }

    /// `request` as it came (for `forward`, which sends it on).
    pub fn request_json(&self) -> Option<Raw<'a>> {
        let text = std::str::from_utf8(self.body).ok()?;
        Raw(text.trim_start()).get("request")
    }

    /// Whether this is a request on the `scale` subresource or of a Scale object.
    pub fn is_scale(&self) -> bool {
        self.sub_resource.as_deref() == Some("scale") || self.kind.kind == "Scale"
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct EnvelopeIn<'a> {
    #[serde(default, borrow)]
    api_version: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    kind: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    request: Option<RequestIn<'a>>,
}

#[derive(Deserialize)]
struct GvkIn<'a> {
    #[serde(borrow)]
    group: CowStr<'a>,
    #[serde(borrow)]
    version: CowStr<'a>,
    #[serde(borrow)]
    kind: CowStr<'a>,
}

#[derive(Deserialize)]
struct GvrIn<'a> {
    #[serde(borrow)]
    group: CowStr<'a>,
    #[serde(borrow)]
    version: CowStr<'a>,
    #[serde(borrow)]
    resource: CowStr<'a>,
}

#[derive(Deserialize, Default)]
struct UserIn<'a> {
    #[serde(default, borrow)]
    username: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    groups: Option<Vec<CowStr<'a>>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RequestIn<'a> {
    #[serde(borrow)]
    uid: CowStr<'a>,
    #[serde(borrow)]
    kind: GvkIn<'a>,
    #[serde(borrow)]
    resource: GvrIn<'a>,
    #[serde(default, borrow)]
    sub_resource: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    name: Option<CowStr<'a>>,
    #[serde(default, borrow)]
    namespace: Option<CowStr<'a>>,
    operation: Operation,
    #[serde(borrow)]
    user_info: UserIn<'a>,
    #[serde(default, borrow)]
    object: Option<&'a RawValue>,
    #[serde(default, borrow)]
    old_object: Option<&'a RawValue>,
    #[serde(default)]
    dry_run: bool,
}

/// Decodes a review body, reading the envelope once and keeping the objects raw.
pub fn decode(body: &[u8]) -> Result<Review<'_>, DecodeError> {
    let envelope: EnvelopeIn<'_> = serde_json::from_slice(body).map_err(|e| {
        // Objects are skipped without a depth limit while reading; a body that fails for
        // another reason but nests too deep says so, as when it was read whole.
        match std::str::from_utf8(body) {
            Ok(text) if !depth_within(text, 128) => {
                DecodeError::Json("recursion limit exceeded (nested deeper than 128 levels)".into())
            }
            _ => DecodeError::Json(e.to_string()),
        }
    })?;
    let kind = cow(envelope.kind).unwrap_or_default();
    if kind != "AdmissionReview" {
        return Err(DecodeError::Kind(kind.into_owned()));
    }
    let api_version = match cow(envelope.api_version).unwrap_or_default().as_ref() {
        V1 => V1,
        V1BETA1 => V1BETA1,
        other => return Err(DecodeError::Version(other.to_owned())),
    };
    let req = envelope.request.ok_or(DecodeError::NoRequest)?;
    let uid = req.uid.0;
    if uid.is_empty() {
        return Err(DecodeError::NoUid);
    }
    if uid.len() > MAX_UID_BYTES {
        return Err(DecodeError::LongUid(uid.len()));
    }
    let object = req.object.map(|o| Object::read(o, "object")).transpose()?;
    let old_object = req
        .old_object
        .map(|o| Object::read(o, "oldObject"))
        .transpose()?;
    match req.operation {
        Operation::Create if object.is_none() => return Err(DecodeError::NoObject("CREATE")),
        Operation::Update if object.is_none() => return Err(DecodeError::NoObject("UPDATE")),
        _ => {}
    }
    Ok(Review {
        api_version,
        uid,
        kind: Gvk {
            group: req.kind.group.0,
            version: req.kind.version.0,
            kind: req.kind.kind.0,
        },
        resource: Gvr {
            group: req.resource.group.0,
            version: req.resource.version.0,
            resource: req.resource.resource.0,
        },
        sub_resource: cow(req.sub_resource),
        name: cow(req.name).unwrap_or_default(),
        namespace: cow(req.namespace),
        operation: req.operation,
        user_info: User {
            username: cow(req.user_info.username),
            groups: req
                .user_info
                .groups
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.0)
                .collect(),
        },
        dry_run: req.dry_run,
        object,
        old_object,
        body,
        pod: OnceLock::new(),
    })
}

/// Builds the response review for a decision: same apiVersion, kind and uid; denials in
/// `status.message` with code 403; warnings and audit annotations; never a patch.
pub fn respond(req: &Review<'_>, decision: &Decision) -> AdmissionReview<DynamicObject> {
    let mut resp = AdmissionResponse::invalid("");
    resp.types = TypeMeta {
        api_version: req.api_version.to_owned(),
        kind: "AdmissionReview".to_owned(),
    };
    resp.uid = req.uid.clone().into_owned();
    resp.allowed = true;
    resp.result = Status::default();
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
pub fn describe_object(req: &Review<'_>) -> String {
    let kind = match req.sub_resource.as_deref() {
        Some(sub) if !sub.is_empty() => kind_of_resource(req),
        _ => &req.kind.kind,
    };
    let name = object_name(req);
    let ns = req.namespace.as_deref().unwrap_or("");
    let sub = match req.sub_resource.as_deref() {
        Some(s) if !s.is_empty() => format!(" ({s})"),
        _ => String::new(),
    };
    if ns.is_empty() {
        format!("{kind} {name}{sub}")
    } else {
        format!("{kind} {ns}/{name}{sub}")
    }
}

/// The object's name; on CREATE with `generateName`, the prefix followed by `*`.
pub fn object_name<'a>(req: &Review<'a>) -> Cow<'a, str> {
    if !req.name.is_empty() {
        return req.name.clone();
    }
    let obj = req.object.as_ref().or(req.old_object.as_ref());
    match obj {
        Some(Object { name: Some(n), .. }) => n.clone(),
        Some(Object {
            generate_name: Some(g),
            ..
        }) => Cow::Owned(format!("{g}*")),
        _ => Cow::Borrowed("(unnamed)"),
    }
}

/// The Kind of the parent resource for a subresource request (`deployments/scale` is about a
/// Deployment even though the object is a Scale).
fn kind_of_resource<'r>(req: &'r Review<'_>) -> &'r str {
    match req.resource.resource.as_ref() {
        "deployments" => "Deployment",
        "statefulsets" => "StatefulSet",
        "replicasets" => "ReplicaSet",
        "replicationcontrollers" => "ReplicationController",
        "daemonsets" => "DaemonSet",
        "pods" => "Pod",
        "jobs" => "Job",
        "cronjobs" => "CronJob",
        other => other,
    }
}

/// `1 replica`, `2 replicas`.
pub fn plural(n: i64, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Builders for tests across the crate (and the integration tests, which cannot see
/// `cfg(test)` items).
#[doc(hidden)]
pub mod testing {
    use super::*;

    /// Decodes a body kept for the rest of the process: tests hold reviews without their
    /// bodies. Never used by the server.
    pub fn leak(body: Vec<u8>) -> Result<Review<'static>, DecodeError> {
        decode(Box::leak(body.into_boxed_slice()))
    }

    /// A request from the JSON of `request` in a v1 review.
    pub fn request(request: serde_json::Value) -> Review<'static> {
        let review = serde_json::json!({
            "apiVersion": V1, "kind": "AdmissionReview", "request": request,
        });
        leak(serde_json::to_vec(&review).expect("json")).expect("a valid review")
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
        let body = serde_json::to_vec(&review(version)).unwrap();
        let req = decode(&body).unwrap();
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
            r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","#,
        );
        body.push_str(r#""kind":{"group":"","version":"v1","kind":"Pod"},"#);
        body.push_str(r#""resource":{"group":"","version":"v1","resource":"pods"},"#);
        body.push_str(r#""operation":"CREATE","userInfo":{},"object":{"spec":"#);
        body.push_str(&"[".repeat(100_000));
        let err = decode(body.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("body is not an AdmissionReview"), "{err}");
        // Valid JSON nested past the limit is refused too, so no policy ever meets a part of
        // the object it cannot read.
        body.push_str(&"]".repeat(100_000));
        body.push_str("}}}");
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

    /// What kube's own types answer for `body` and `decision` (the reference the answers are
    /// held to byte for byte).
    fn kube_answer(body: &[u8], decision: &Decision) -> Vec<u8> {
        use kube::core::admission::AdmissionRequest;
        let review: AdmissionReview<DynamicObject> = serde_json::from_slice(body).unwrap();
        let req: AdmissionRequest<DynamicObject> = review.try_into().unwrap();
        let mut resp = AdmissionResponse::from(&req);
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
        serde_json::to_vec(&resp.into_review()).unwrap()
    }

    #[rstest]
    fn answers_are_byte_for_byte_kubes(
        #[values(
            "create-2-replicas-v1beta1",
            "create-2-replicas",
            "create-3-replicas",
            "delete",
            "scale-to-1",
            "update-image"
        )]
        example: &str,
        #[values(false, true)] denied: bool,
    ) {
        let path = format!(
            "{}/examples/reviews/{example}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let body = std::fs::read(path).unwrap();
        let finding = |policy: &str, message: &str| Finding {
            policy: policy.into(),
            message: message.into(),
        };
        let decision = Decision {
            denials: if denied {
                vec![
                    finding("p", "no \"quotes\" and ünïcode"),
                    finding("q", "also no"),
                ]
            } else {
                vec![]
            },
            warnings: vec![finding("w", "careful")],
            audits: vec![finding("a", "noted")],
            ..Decision::default()
        };
        let req = decode(&body).unwrap();
        let ours = serde_json::to_vec(&respond(&req, &decision)).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(kube_answer(&body, &decision)).unwrap()
        );
        let plain = Decision::default();
        let ours = serde_json::to_vec(&respond(&req, &plain)).unwrap();
        assert_eq!(ours, kube_answer(&body, &plain), "{example}");
    }

    #[rstest]
    #[case::create_null(
        "CREATE",
        Some(Value::Null),
        "request.object is missing from this CREATE review; CREATE and UPDATE reviews must carry the object"
    )]
    #[case::create_absent(
        "CREATE",
        None,
        "request.object is missing from this CREATE review; CREATE and UPDATE reviews must carry the object"
    )]
    #[case::update_null(
        "UPDATE",
        Some(Value::Null),
        "request.object is missing from this UPDATE review"
    )]
    #[case::object_not_an_object("CREATE", Some(json!([1])), "request.object must be a JSON object")]
    #[case::labels_not_strings(
        "CREATE",
        Some(json!({"metadata": {"labels": {"a": 1}}})),
        "request.object.metadata.labels must map names to strings"
    )]
    fn reviews_without_a_usable_object_are_refused(
        #[case] operation: &str,
        #[case] object: Option<Value>,
        #[case] expected: &str,
    ) {
        let mut r = review(V1);
        r["request"]["operation"] = json!(operation);
        match object {
            Some(o) => r["request"]["object"] = o,
            None => {
                r["request"].as_object_mut().unwrap().remove("object");
            }
        }
        let err = decode(&serde_json::to_vec(&r).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn delete_without_an_object_is_fine() {
        let mut r = review(V1);
        r["request"]["operation"] = json!("DELETE");
        r["request"]["object"] = Value::Null;
        r["request"]["oldObject"] = json!({"metadata": {"name": "web"}});
        let body = serde_json::to_vec(&r).unwrap();
        let req = decode(&body).unwrap();
        assert!(req.object.is_none());
        assert_eq!(object_name(&req), "web");
    }

    #[rstest]
    #[case(128, true)]
    #[case(129, false)]
    #[case(1 << 20, false)]
    fn uid_length_is_capped(#[case] len: usize, #[case] ok: bool) {
        let mut r = review(V1);
        r["request"]["uid"] = json!("u".repeat(len));
        let body = serde_json::to_vec(&r).unwrap();
        match decode(&body) {
            Ok(req) => assert!(ok && req.uid.len() == len),
            Err(e) => {
                assert!(!ok);
                assert_eq!(e, DecodeError::LongUid(len));
                assert_eq!(
                    e.to_string(),
                    format!("request.uid is {len} bytes long; at most 128 are accepted")
                );
            }
        }
    }

    #[test]
    fn objects_at_the_depth_limit_are_read() {
        let deep = format!(
            "{}{}",
            "[".repeat(MAX_OBJECT_DEPTH - 2),
            "]".repeat(MAX_OBJECT_DEPTH - 2)
        );
        let obj = format!(r#"{{"spec":{{"replicas":4,"x":{deep}}}}}"#);
        let mut r = review(V1);
        r["request"]["object"] = serde_json::from_str(&obj).unwrap();
        let body = serde_json::to_vec(&r).unwrap();
        let req = decode(&body).unwrap();
        let spec = req.object.as_ref().unwrap().spec.unwrap();
        assert_eq!(spec.get("replicas").and_then(Raw::as_i64), Some(4));
        assert!(spec.get("x").is_some());
    }

    #[test]
    fn raw_reads_fields_strings_numbers_and_duplicates() {
        let text = r#"{"a":1,"b":"x\u0041","a":2,"c":[{"d":true},3],"e":1.5,"f":null}"#;
        let v: &RawValue = serde_json::from_str(text).unwrap();
        let raw = Raw::of(v);
        let [a, b, c, e, f, missing] = raw.fields(["a", "b", "c", "e", "f", "g"]);
        assert_eq!(a.and_then(Raw::as_i64), Some(2), "the last duplicate wins");
        assert_eq!(b.and_then(Raw::as_str).as_deref(), Some("xA"));
        assert_eq!(c.map(|c| c.items().len()), Some(2));
        assert_eq!(
            c.unwrap().items()[0].get("d").and_then(Raw::as_bool),
            Some(true)
        );
        assert_eq!(e.and_then(Raw::as_i64), None);
        assert!(f.unwrap().is_null());
        assert!(missing.is_none());
        assert_eq!(b.unwrap().get("x"), None, "a string has no fields");
        assert_eq!(raw.entries().len(), 6);
    }

    #[rstest]
    #[case(r#"{"a":[1,{"b":2}]}"#, 3, true)]
    #[case(r#"{"a":[1,{"b":2}]}"#, 2, false)]
    #[case(r#"{"a":"[[[[{{{{"}"#, 1, true)]
    #[case(r#"{"a":"\\\"[[[["}"#, 1, true)]
    #[case(r#"[[]],[[]],[[]]"#, 2, true)]
    #[case(r#"[[]],[[[]]]"#, 2, false)]
    // Not JSON (decode measures the depth of a body that failed to parse): a backslash as the
    // last byte of an unterminated string ends the scan instead of reading past the text.
    #[case(r#"{"a":"\"#, 1, true)]
    #[case(r#"{"a":"x\"#, 1, true)]
    fn depth_counts_brackets_outside_strings(
        #[case] text: &str,
        #[case] limit: usize,
        #[case] ok: bool,
    ) {
        assert_eq!(depth_within(text, limit), ok, "{text}");
    }

    /// The one-pass walk finds the same parts as reading them with serde_json.
    #[rstest]
    #[case::deployment(r#"{"apiVersion":"apps/v1","metadata":{"name":"a","spec":1},"spec":{"replicas":3,"selector":{"replicas":9},"template":{"spec":{"containers":[]}}}}"#)]
    #[case::spaces(
        "{ \"spec\" :\n { \"replicas\" : 2 , \"containers\" : [ {\"a\":\"}\\\"\"} ] } ,\"metadata\" : {} }"
    )]
    #[case::duplicate_spec(r#"{"spec":{"replicas":3,"template":{}},"spec":{"containers":[1]}}"#)]
    #[case::spec_not_object(r#"{"spec":{"replicas":3},"spec":[{"replicas":4}]}"#)]
    #[case::duplicate_key(
        r#"{"spec":{"replicas":3,"replicas":"x"},"template":{"t":[]},"template":null}"#
    )]
    #[case::cronjob(
        r#"{"kind":"CronJob","spec":{"jobTemplate":{"spec":{"template":{"spec":{}}}}}}"#
    )]
    #[case::nested_keys(
        r#"{"status":{"spec":{"replicas":1}},"x":[{"spec":2}],"spec":{"y":{"replicas":5}}}"#
    )]
    #[case::strings_with_brackets(r#"{"a":"{[\\","spec":{"b":"]}","replicas":7}}"#)]
    #[case::escaped_other_key(r#"{"a\u0062":1,"spec":{"replicas":1}}"#)]
    #[case::escaped_wanted_key(r#"{"sp\u0065c":{"replicas":2}}"#)]
    #[case::empty("{}")]
    fn one_pass_finds_what_serde_finds(#[case] text: &str) {
        let body = serde_json::to_vec(&json!({
            "apiVersion": V1, "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "apps", "version": "v1", "kind": "Deployment"},
                        "resource": {"group": "apps", "version": "v1", "resource": "deployments"},
                        "operation": "CREATE", "userInfo": {},
                        "object": serde_json::from_str::<Value>(text).expect("test json")},
        }))
        .expect("json");
        // serde_json re-serializes the object compactly; walk the original text too.
        for text in [text.to_owned(), {
            let v: Value = serde_json::from_slice(&body).expect("json");
            v["request"]["object"].to_string()
        }] {
            let raw = Raw(&text);
            let top = raw.fields(TOP_KEYS);
            let spec = top[1].map_or([None; 4], |s| s.fields(SPEC_KEYS));
            let text_of = |r: Option<Raw<'_>>| r.map(|r| r.text().to_owned());
            let want: Vec<_> = top.iter().chain(spec.iter()).map(|r| text_of(*r)).collect();
            match scan_object(&text, MAX_OBJECT_DEPTH) {
                Ok(scan) => {
                    let got: Vec<_> = scan
                        .top
                        .iter()
                        .chain(scan.spec.iter())
                        .map(|r| r.map(|(a, b)| text[a..b].to_owned()))
                        .collect();
                    assert_eq!(got, want, "{text}");
                }
                Err(deep) => {
                    assert!(!deep, "{text}");
                    // Any key with escapes where wanted keys live: read the slower way.
                    assert!(text.contains("\\u00"), "{text}");
                }
            }
        }
        // And the decoded review carries them, whichever way they were found.
        let review = testing::leak(body).expect("valid review");
        let obj = review.object.expect("object");
        let v: Value = serde_json::from_str(text).expect("json");
        let spec = v.get("spec").filter(|s| s.is_object());
        let part = |r: Option<Raw<'_>>| r.map(Raw::to_value);
        assert_eq!(
            part(obj.replicas),
            spec.and_then(|s| s.get("replicas")).cloned()
        );
        assert_eq!(
            part(obj.spec_template),
            spec.and_then(|s| s.get("template")).cloned()
        );
        assert_eq!(
            part(obj.job_template),
            spec.and_then(|s| s.get("jobTemplate")).cloned()
        );
        assert_eq!(
            part(obj.spec_containers),
            spec.and_then(|s| s.get("containers")).cloned()
        );
    }

    #[test]
    fn one_pass_refuses_deep_objects() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(126), "]".repeat(126));
        assert!(matches!(scan_object(&deep, MAX_OBJECT_DEPTH), Err(true)));
        let ok = format!("{{\"a\":{}1{}}}", "[".repeat(125), "]".repeat(125));
        assert!(scan_object(&ok, MAX_OBJECT_DEPTH).is_ok());
    }
}
