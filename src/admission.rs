//! AdmissionReview ⇄ engine. A review is decoded once into a [`Review`] that borrows from the
//! body: one pass over the body ([`json`]) checks it is JSON, reads the envelope's fields and
//! passes over `object` and `oldObject`, noting where the parts later readers need sit
//! (`metadata`, `spec`, the pod template, `spec.replicas`) and building nothing else. The
//! objects stay raw JSON text ([`Raw`]) that each policy kind reads only as far as it needs.
//! Answers are built with `kube::core::admission`'s response types, so they carry the same
//! `apiVersion`, `kind` and `uid` as the review.

pub(crate) mod json;

use std::borrow::Cow;
use std::fmt;
use std::sync::OnceLock;

use kube::core::admission::{AdmissionResponse, AdmissionReview, Operation};
use kube::core::response::StatusSummary;
use kube::core::{DynamicObject, Status, TypeMeta};

use crate::policy::Decision;
use crate::policy::podspec::PodTemplate;
use json::{Items, Members};

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

/// The deepest nesting of arrays and objects accepted in a review body (the envelope counts).
pub const MAX_BODY_DEPTH: usize = 128;

/// The deepest nesting accepted in an object (the object itself counts): the body's limit
/// less the envelope and `request` around it. Policies read parts of the objects later and
/// must never find a part unreadable, so the whole object is held to it at decode time.
pub const MAX_OBJECT_DEPTH: usize = MAX_BODY_DEPTH - 2;

/// The JSON text of one value inside a review body, checked at decode time but not built.
/// Reading a field walks the text and skips what it does not need without allocating or
/// checking it again (a `Raw` is only ever made from text the decoder checked).
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
        let inner = self.0.strip_prefix('"')?.strip_suffix('"')?;
        json::unescape(inner)
    }

    /// The value as a whole number in range (as `serde_json::Value::as_i64`, except that `-0`
    /// is 0 as in Kubernetes).
    pub fn as_i64(self) -> Option<i64> {
        let first = self.0.as_bytes().first()?;
        if !(first.is_ascii_digit() || *first == b'-') {
            return None;
        }
        // The text is a JSON number: a fraction or an exponent makes it no whole number.
        self.0.parse::<i64>().ok()
    }

    /// The value as a boolean.
    pub fn as_bool(self) -> Option<bool> {
        match self.0 {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        }
    }

    /// The members of this object in order (empty when it is not one).
    fn members(self) -> Option<Members<'a>> {
        Members::open_checked(self.0, 0).ok()
    }

    /// The values of `keys` in this object, in one walk (the last of duplicate keys wins, as
    /// everywhere in Kubernetes). All `None` when the value is not an object.
    pub fn fields<const N: usize>(self, keys: [&str; N]) -> [Option<Raw<'a>>; N] {
        let mut out = [None; N];
        self.fields_into(&keys, &mut out);
        out
    }

    /// [`Raw::fields`] for a number of keys known only at run time: `out[i]` is set to the
    /// value of `keys[i]` (`out` as long as `keys`), all `None` when the value is not an
    /// object.
    pub(crate) fn fields_into(self, keys: &[&str], out: &mut [Option<Raw<'a>>]) {
        match self.members() {
            Some(m) => {
                read_fields(m, keys, out);
            }
            None => out.fill(None),
        }
    }

    /// The elements of this array, each with the values of `keys` in it (all `None` for an
    /// element that is not an object), read in one walk: an object element is passed by
    /// reading its members, not skipped first and walked again. None when the value is not
    /// an array.
    pub(crate) fn iter_objects<const N: usize>(
        self,
        keys: [&str; N],
    ) -> impl Iterator<Item = ([Option<Raw<'a>>; N], Raw<'a>)> {
        let text = self.0;
        let mut items = Items::open_checked(text, 0).ok();
        std::iter::from_fn(move || {
            let list = items.as_mut()?;
            let read = match list.next_start() {
                Ok(Some(start)) => {
                    let mut out = [None; N];
                    match Members::open_checked(text, start) {
                        Ok(m) => read_fields(m, &keys, &mut out).and_then(|end| {
                            list.read_to(end);
                            Some((out, Raw(text.get(start..end)?)))
                        }),
                        // Not an object: passed whole, with no values.
                        Err(_) => list.pass().ok().map(|(_, item)| (out, Raw(item))),
                    }
                }
                _ => None,
            };
            if read.is_none() {
                items = None;
            }
            read
        })
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

    /// The elements of this array, one at a time; none when the value is not an array.
    pub fn iter_items(self) -> impl Iterator<Item = Raw<'a>> {
        let mut items = Items::open_checked(self.0, 0).ok();
        std::iter::from_fn(move || match items.as_mut()?.next_item() {
            Ok(Some((_, text))) => Some(Raw(text)),
            _ => {
                items = None;
                None
            }
        })
    }

    /// The elements of this array; empty when the value is not an array.
    pub fn items(self) -> Vec<Raw<'a>> {
        self.iter_items().collect()
    }

    /// The entries of this object, one at a time (keys unescaped); none when it is not one.
    pub fn iter_entries(self) -> impl Iterator<Item = (Cow<'a, str>, Raw<'a>)> {
        let mut members = self.members();
        std::iter::from_fn(move || {
            let m = members.as_mut()?;
            let entry = match m.next_key() {
                Ok(Some(k)) => k.text().zip(m.skip().ok()),
                _ => None,
            };
            if entry.is_none() {
                members = None;
            }
            entry.map(|(k, v)| (k, Raw(v)))
        })
    }

    /// The entries of this object, in order (keys unescaped); empty when it is not an object.
    pub fn entries(self) -> Vec<(Cow<'a, str>, Raw<'a>)> {
        self.iter_entries().collect()
    }

    /// The value built as a `serde_json::Value` (for the rare comparison of whole objects).
    pub fn to_value(self) -> serde_json::Value {
        serde_json::from_str(self.0).unwrap_or(serde_json::Value::Null)
    }
}

/// Reads the members of `m` to its end, setting `out[i]` to the value of `keys[i]` (the last
/// of duplicate keys wins, as everywhere in Kubernetes): the index just after the object, or
/// `None` (and `out` all `None`) when the text does not read as an object.
fn read_fields<'a>(
    mut m: Members<'a>,
    keys: &[&str],
    out: &mut [Option<Raw<'a>>],
) -> Option<usize> {
    out.fill(None);
    loop {
        match m.next_key() {
            Ok(Some(k)) => {
                if let Some(i) = keys.iter().position(|w| k.is(w)) {
                    match m.skip() {
                        Ok(v) => out[i] = Some(Raw(v)),
                        Err(_) => break,
                    }
                }
            }
            Ok(None) => return Some(m.end()),
            Err(_) => break,
        }
    }
    out.fill(None);
    None
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
    /// `groups`, checked at decode time to be a list of strings (kept as text, so a huge list
    /// costs no memory).
    groups: Option<Raw<'a>>,
}

impl<'a> User<'a> {
    /// The user's groups.
    pub fn groups(&self) -> impl Iterator<Item = Cow<'a, str>> + use<'a> {
        self.groups
            .into_iter()
            .flat_map(Raw::iter_items)
            .filter_map(Raw::as_str)
    }
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

impl<'a> Object<'a> {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<Cow<'a, str>> {
        self.labels?.get(key)?.as_str()
    }

    /// The value of annotation `key`.
    pub fn annotation(&self, key: &str) -> Option<Cow<'a, str>> {
        self.annotations?.get(key)?.as_str()
    }
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
    /// `request` as it came.
    request: Raw<'a>,
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
        Some(self.request)
    }

    /// Whether this is a request on the `scale` subresource or of a Scale object.
    pub fn is_scale(&self) -> bool {
        self.sub_resource.as_deref() == Some("scale") || self.kind.kind == "Scale"
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding: one pass over the body.
// ---------------------------------------------------------------------------------------------

/// Reads one review body; every error is a [`DecodeError`] that names the field or the
/// position.
struct Reader<'a> {
    text: &'a str,
}

/// The request fields that may appear once.
#[derive(Clone, Copy)]
enum Field {
    Uid,
    Kind,
    Resource,
    SubResource,
    Name,
    Namespace,
    Operation,
    UserInfo,
    Object,
    OldObject,
    DryRun,
}

impl Field {
    const ALL: [(&'static str, Field); 11] = [
        ("uid", Field::Uid),
        ("kind", Field::Kind),
        ("resource", Field::Resource),
        ("subResource", Field::SubResource),
        ("name", Field::Name),
        ("namespace", Field::Namespace),
        ("operation", Field::Operation),
        ("userInfo", Field::UserInfo),
        ("object", Field::Object),
        ("oldObject", Field::OldObject),
        ("dryRun", Field::DryRun),
    ];
}

/// The envelope's fields, as read.
#[derive(Default)]
struct Request<'a> {
    uid: Option<Cow<'a, str>>,
    kind: Option<Gvk<'a>>,
    resource: Option<Gvr<'a>>,
    sub_resource: Option<Cow<'a, str>>,
    name: Option<Cow<'a, str>>,
    namespace: Option<Cow<'a, str>>,
    operation: Option<Operation>,
    user_info: Option<User<'a>>,
    object: Option<Object<'a>>,
    old_object: Option<Object<'a>>,
    dry_run: bool,
    raw: Option<Raw<'a>>,
}

impl<'a> Reader<'a> {
    /// A JSON error, with where it is.
    fn syntax(&self, e: json::Error) -> DecodeError {
        DecodeError::Json(e.describe(self.text.as_bytes()))
    }

    /// `path` holding something other than `expected`, with where it is.
    fn wrong(&self, path: &str, expected: &str, at: usize) -> DecodeError {
        let place = json::position(self.text.as_bytes(), at);
        DecodeError::Json(format!("{path} must be {expected} ({place})"))
    }

    /// A JSON error inside `request.{field}`: nesting past the object's limit says so.
    fn in_object(&self, field: &str, e: json::Error) -> DecodeError {
        match e.what {
            json::What::TooDeep(_) => DecodeError::Json(format!(
                "recursion limit exceeded: request.{field} is nested deeper than {MAX_OBJECT_DEPTH} levels"
            )),
            _ => self.syntax(e),
        }
    }

    fn open(&self, m: &Members<'a>, path: &str, depth: usize) -> Result<Members<'a>, DecodeError> {
        if m.peek() != Some(b'{') {
            return Err(self.wrong(path, "a JSON object", m.value_start()));
        }
        Members::open(self.text, m.value_start(), depth).map_err(|e| self.syntax(e))
    }

    /// The next key of `m`.
    fn key(&self, m: &mut Members<'a>) -> Result<Option<json::Key<'a>>, DecodeError> {
        m.next_key().map_err(|e| self.syntax(e))
    }

    /// Skips the current value of `m`, returning it.
    #[inline]
    fn skip(&self, m: &mut Members<'a>) -> Result<Raw<'a>, DecodeError> {
        m.skip().map(Raw).map_err(|e| self.syntax(e))
    }

    /// The current value of `m`, a string or `null`.
    fn opt_string(
        &self,
        m: &mut Members<'a>,
        path: &str,
    ) -> Result<Option<Cow<'a, str>>, DecodeError> {
        match m.peek() {
            Some(b'"') => {
                let (raw, escaped, end) =
                    json::string_at(self.text, m.value_start()).map_err(|e| self.syntax(e))?;
                m.read_to(end);
                if !escaped {
                    return Ok(Some(Cow::Borrowed(raw)));
                }
                json::unescape(raw)
                    .map(Some)
                    .ok_or_else(|| self.wrong(path, "a string", m.value_start()))
            }
            Some(b'n') => {
                self.skip(m)?;
                Ok(None)
            }
            _ => Err(self.wrong(path, "a string", m.value_start())),
        }
    }

    /// The current value of `m`, a string.
    fn string(&self, m: &mut Members<'a>, path: &str) -> Result<Cow<'a, str>, DecodeError> {
        let at = m.value_start();
        self.opt_string(m, path)?
            .ok_or_else(|| self.wrong(path, "a string", at))
    }

    /// The whole body.
    fn review(&self) -> Result<Review<'a>, DecodeError> {
        let b = self.text.as_bytes();
        let start = json::skip_ws(b, 0);
        if start == b.len() {
            return Err(DecodeError::Json("the body is empty".into()));
        }
        let mut top = Members::open(self.text, start, MAX_BODY_DEPTH - 1).map_err(|e| {
            let e = json::Error::new(e.at, json::What::Expected("a JSON object"));
            self.syntax(e)
        })?;
        let (mut api_version, mut kind, mut request) = (None, None, None);
        let mut seen = [false; 3];
        while let Some(k) = self.key(&mut top)? {
            let slot = ["apiVersion", "kind", "request"]
                .iter()
                .position(|name| k.is(name));
            let Some(slot) = slot else {
                self.skip(&mut top)?;
                continue;
            };
            if std::mem::replace(&mut seen[slot], true) {
                let name = ["apiVersion", "kind", "request"][slot];
                return Err(DecodeError::Json(format!("duplicate field `{name}`")));
            }
            match slot {
                0 => api_version = self.opt_string(&mut top, "apiVersion")?,
                1 => kind = self.opt_string(&mut top, "kind")?,
                _ if top.peek() == Some(b'n') => {
                    self.skip(&mut top)?;
                }
                _ => request = Some(self.request(&mut top)?),
            }
        }
        let end = json::skip_ws(b, top.end());
        if end != b.len() {
            return Err(self.syntax(json::Error::new(end, json::What::Trailing)));
        }

        let kind = kind.unwrap_or_default();
        if kind != "AdmissionReview" {
            return Err(DecodeError::Kind(kind.into_owned()));
        }
        let api_version = match api_version.unwrap_or_default().as_ref() {
            V1 => V1,
            V1BETA1 => V1BETA1,
            other => return Err(DecodeError::Version(other.to_owned())),
        };
        let req = request.ok_or(DecodeError::NoRequest)?;
        let missing = |f: &str| DecodeError::Json(format!("request.{f} is missing"));
        let uid = req.uid.ok_or_else(|| missing("uid"))?;
        if uid.is_empty() {
            return Err(DecodeError::NoUid);
        }
        if uid.len() > MAX_UID_BYTES {
            return Err(DecodeError::LongUid(uid.len()));
        }
        let operation = req.operation.ok_or_else(|| missing("operation"))?;
        match operation {
            Operation::Create if req.object.is_none() => {
                return Err(DecodeError::NoObject("CREATE"));
            }
            Operation::Update if req.object.is_none() => {
                return Err(DecodeError::NoObject("UPDATE"));
            }
            _ => {}
        }
        Ok(Review {
            api_version,
            uid,
            kind: req.kind.ok_or_else(|| missing("kind"))?,
            resource: req.resource.ok_or_else(|| missing("resource"))?,
            sub_resource: req.sub_resource,
            name: req.name.unwrap_or_default(),
            namespace: req.namespace,
            operation,
            user_info: req.user_info.ok_or_else(|| missing("userInfo"))?,
            dry_run: req.dry_run,
            object: req.object,
            old_object: req.old_object,
            request: req.raw.unwrap_or(Raw("{}")),
            pod: OnceLock::new(),
        })
    }

    /// `request`.
    fn request(&self, top: &mut Members<'a>) -> Result<Request<'a>, DecodeError> {
        let start = top.value_start();
        let mut m = self.open(top, "request", MAX_BODY_DEPTH - 2)?;
        let mut req = Request::default();
        let mut seen = 0u16;
        while let Some(k) = self.key(&mut m)? {
            let Some(&(name, field)) = Field::ALL.iter().find(|(name, _)| k.is(name)) else {
                self.skip(&mut m)?;
                continue;
            };
            let bit = 1u16 << field as u16;
            if seen & bit != 0 {
                return Err(DecodeError::Json(format!(
                    "duplicate field `request.{name}`"
                )));
            }
            seen |= bit;
            match field {
                Field::Uid => {
                    let uid = self.string(&mut m, "request.uid")?;
                    if uid.len() > MAX_UID_BYTES {
                        return Err(DecodeError::LongUid(uid.len()));
                    }
                    req.uid = Some(uid);
                }
                Field::Kind => {
                    let [group, version, kind] =
                        self.triple(&mut m, "request.kind", ["group", "version", "kind"])?;
                    req.kind = Some(Gvk {
                        group,
                        version,
                        kind,
                    });
                }
                Field::Resource => {
                    let [group, version, resource] =
                        self.triple(&mut m, "request.resource", ["group", "version", "resource"])?;
                    req.resource = Some(Gvr {
                        group,
                        version,
                        resource,
                    });
                }
                Field::SubResource => {
                    req.sub_resource = self.opt_string(&mut m, "request.subResource")?;
                }
                Field::Name => req.name = self.opt_string(&mut m, "request.name")?,
                Field::Namespace => {
                    req.namespace = self.opt_string(&mut m, "request.namespace")?;
                }
                Field::Operation => {
                    let at = m.value_start();
                    let op = self.string(&mut m, "request.operation")?;
                    req.operation = Some(match op.as_ref() {
                        "CREATE" => Operation::Create,
                        "UPDATE" => Operation::Update,
                        "DELETE" => Operation::Delete,
                        "CONNECT" => Operation::Connect,
                        _ => {
                            return Err(self.wrong(
                                "request.operation",
                                "one of CREATE, UPDATE, DELETE and CONNECT",
                                at,
                            ));
                        }
                    });
                }
                Field::UserInfo => req.user_info = Some(self.user(&mut m)?),
                Field::Object => req.object = self.object(&mut m, "object")?,
                Field::OldObject => req.old_object = self.object(&mut m, "oldObject")?,
                Field::DryRun => {
                    let at = m.value_start();
                    req.dry_run = match self.skip(&mut m)?.as_bool() {
                        Some(v) => v,
                        None => return Err(self.wrong("request.dryRun", "true or false", at)),
                    };
                }
            }
        }
        top.read_to(m.end());
        req.raw = Some(Raw(&self.text[start..m.end()]));
        Ok(req)
    }

    /// An object of three required strings (`request.kind`, `request.resource`).
    fn triple(
        &self,
        outer: &mut Members<'a>,
        path: &str,
        names: [&str; 3],
    ) -> Result<[Cow<'a, str>; 3], DecodeError> {
        let mut m = self.open(outer, path, MAX_BODY_DEPTH - 3)?;
        let mut out: [Option<Cow<'a, str>>; 3] = [None, None, None];
        while let Some(k) = self.key(&mut m)? {
            match names.iter().position(|n| k.is(n)) {
                Some(i) => {
                    let at = m.value_start();
                    let value = self
                        .opt_string(&mut m, "")
                        .map_err(|_| self.wrong(&format!("{path}.{}", names[i]), "a string", at))?;
                    out[i] = Some(value.ok_or_else(|| {
                        self.wrong(&format!("{path}.{}", names[i]), "a string", at)
                    })?);
                }
                None => {
                    self.skip(&mut m)?;
                }
            }
        }
        outer.read_to(m.end());
        let [a, b, c] = out;
        let missing = |i: usize| DecodeError::Json(format!("{path}.{} is missing", names[i]));
        Ok([
            a.ok_or_else(|| missing(0))?,
            b.ok_or_else(|| missing(1))?,
            c.ok_or_else(|| missing(2))?,
        ])
    }

    /// `request.userInfo`.
    fn user(&self, outer: &mut Members<'a>) -> Result<User<'a>, DecodeError> {
        let mut m = self.open(outer, "request.userInfo", MAX_BODY_DEPTH - 3)?;
        let mut user = User::default();
        while let Some(k) = self.key(&mut m)? {
            if k.is("username") {
                user.username = self.opt_string(&mut m, "request.userInfo.username")?;
            } else if k.is("groups") {
                user.groups = match m.peek() {
                    Some(b'[') => {
                        let start = m.value_start();
                        let mut items =
                            Items::open(self.text, start, 1).map_err(|e| self.syntax(e))?;
                        while let Some((at, item)) =
                            items.next_item().map_err(|e| self.syntax(e))?
                        {
                            if Raw(item).as_str().is_none() {
                                return Err(self.wrong(
                                    "request.userInfo.groups",
                                    "a list of strings",
                                    at,
                                ));
                            }
                        }
                        m.read_to(items.end());
                        Some(Raw(&self.text[start..items.end()]))
                    }
                    Some(b'n') => {
                        self.skip(&mut m)?;
                        None
                    }
                    _ => {
                        return Err(self.wrong(
                            "request.userInfo.groups",
                            "a list of strings",
                            m.value_start(),
                        ));
                    }
                };
            } else {
                self.skip(&mut m)?;
            }
        }
        outer.read_to(m.end());
        Ok(user)
    }

    /// `request.object` or `request.oldObject` (`None` for `null`): checked whole, and the
    /// parts later readers need noted on the way.
    fn object(
        &self,
        outer: &mut Members<'a>,
        field: &'static str,
    ) -> Result<Option<Object<'a>>, DecodeError> {
        let start = outer.value_start();
        match outer.peek() {
            Some(b'n') => {
                self.skip(outer)?;
                return Ok(None);
            }
            Some(b'{') => {}
            _ => {
                return Err(DecodeError::Json(format!(
                    "request.{field} must be a JSON object"
                )));
            }
        }
        let too_deep = |e: json::Error| self.in_object(field, e);
        // Values inside the object, and inside its metadata and spec, may nest as deep as
        // what is left of the object's limit.
        let mut m = Members::open(self.text, start, MAX_OBJECT_DEPTH - 1).map_err(too_deep)?;
        let mut obj = Object {
            raw: Raw(""),
            metadata: None,
            spec: None,
            template: None,
            replicas: None,
            spec_template: None,
            job_template: None,
            spec_containers: None,
            name: None,
            generate_name: None,
            labels: None,
            annotations: None,
        };
        while let Some(k) = m.next_key().map_err(too_deep)? {
            if k.is("metadata") {
                (obj.name, obj.generate_name, obj.labels, obj.annotations) =
                    (None, None, None, None);
                obj.metadata = match m.peek() {
                    Some(b'{') => Some(self.metadata(&mut m, field, &mut obj)?),
                    Some(b'n') => {
                        m.skip().map_err(too_deep)?;
                        None
                    }
                    _ => {
                        return Err(DecodeError::Json(format!(
                            "request.{field}.metadata must be a JSON object"
                        )));
                    }
                };
            } else if k.is("spec") {
                (
                    obj.replicas,
                    obj.spec_template,
                    obj.job_template,
                    obj.spec_containers,
                ) = (None, None, None, None);
                obj.spec = Some(if m.peek() == Some(b'{') {
                    let at = m.value_start();
                    let mut spec =
                        Members::open(self.text, at, MAX_OBJECT_DEPTH - 2).map_err(too_deep)?;
                    while let Some(k) = spec.next_key().map_err(too_deep)? {
                        let slot = if k.is("replicas") {
                            &mut obj.replicas
                        } else if k.is("template") {
                            &mut obj.spec_template
                        } else if k.is("jobTemplate") {
                            &mut obj.job_template
                        } else if k.is("containers") {
                            &mut obj.spec_containers
                        } else {
                            spec.skip().map_err(too_deep)?;
                            continue;
                        };
                        *slot = Some(Raw(spec.skip().map_err(too_deep)?));
                    }
                    m.read_to(spec.end());
                    Raw(&self.text[at..spec.end()])
                } else {
                    Raw(m.skip().map_err(too_deep)?)
                });
            } else if k.is("template") {
                obj.template = Some(Raw(m.skip().map_err(too_deep)?));
            } else {
                m.skip().map_err(too_deep)?;
            }
        }
        obj.raw = Raw(&self.text[start..m.end()]);
        outer.read_to(m.end());
        Ok(Some(obj))
    }

    /// The object's `metadata`: its name, generateName and namespace must be strings, its
    /// labels and annotations must map names to strings.
    fn metadata(
        &self,
        outer: &mut Members<'a>,
        field: &str,
        obj: &mut Object<'a>,
    ) -> Result<Raw<'a>, DecodeError> {
        let json = |e: json::Error| self.in_object(field, e);
        let bad = |what: &str| DecodeError::Json(format!("request.{field}.metadata.{what}"));
        let at = outer.value_start();
        let mut m = Members::open(self.text, at, MAX_OBJECT_DEPTH - 2).map_err(json)?;
        while let Some(k) = m.next_key().map_err(json)? {
            if k.is("labels") || k.is("annotations") {
                let labels = k.is("labels");
                let key = if labels { "labels" } else { "annotations" };
                let map = match m.peek() {
                    Some(b'n') => {
                        m.skip().map_err(json)?;
                        None
                    }
                    Some(b'{') => {
                        let start = m.value_start();
                        let mut entries = Members::open(self.text, start, 1).map_err(json)?;
                        while entries.next_key().map_err(json)?.is_some() {
                            if entries.peek() != Some(b'"') {
                                return Err(bad(&format!("{key} must map names to strings")));
                            }
                            entries.skip().map_err(json)?;
                        }
                        m.read_to(entries.end());
                        Some(Raw(&self.text[start..entries.end()]))
                    }
                    _ => return Err(bad(&format!("{key} must map names to strings"))),
                };
                if labels {
                    obj.labels = map;
                } else {
                    obj.annotations = map;
                }
                continue;
            }
            let Some(key) = ["name", "generateName", "namespace"]
                .into_iter()
                .find(|name| k.is(name))
            else {
                m.skip().map_err(json)?;
                continue;
            };
            let value = match m.peek() {
                Some(b'"') => {
                    let (raw, escaped, end) =
                        json::string_at(self.text, m.value_start()).map_err(json)?;
                    m.read_to(end);
                    let text = if escaped {
                        json::unescape(raw)
                            .ok_or_else(|| bad(&format!("{key} must be a string")))?
                    } else {
                        Cow::Borrowed(raw)
                    };
                    Some(text)
                }
                Some(b'n') => {
                    m.skip().map_err(json)?;
                    None
                }
                _ => return Err(bad(&format!("{key} must be a string"))),
            };
            match key {
                "name" => obj.name = value,
                "generateName" => obj.generate_name = value,
                _ => {}
            }
        }
        outer.read_to(m.end());
        Ok(Raw(&self.text[at..m.end()]))
    }
}

/// Decodes a review body in one pass, keeping the objects raw.
pub fn decode(body: &[u8]) -> Result<Review<'_>, DecodeError> {
    let text = std::str::from_utf8(body).map_err(|e| {
        let place = json::position(body, e.valid_up_to());
        DecodeError::Json(format!("the body is not UTF-8 text ({place})"))
    })?;
    Reader { text }.review()
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
    for (key, value) in &decision.audit_annotations {
        resp.audit_annotations.insert(key.clone(), value.clone());
    }
    resp.into_review()
}

/// The answer to a review as JSON, written straight from the decision: byte for byte what
/// [`respond`] serialized with serde_json gives (kube's response types), without building
/// them. Audit annotations come in the order the policies ran (kube's map has none).
pub fn answer(req: &Review<'_>, decision: &Decision) -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        // serde_json's own escaping, as kube's types are serialized with it.
        let _ = serde_json::to_writer(&mut *out, s);
    }
    let extra: usize = decision
        .denials
        .iter()
        .chain(&decision.warnings)
        .chain(&decision.audits)
        .map(|f| f.message.len() + f.policy.len() + 8)
        .chain(
            decision
                .audit_annotations
                .iter()
                .map(|(k, v)| k.len() + v.len() + 8),
        )
        .sum();
    let mut out = Vec::with_capacity(160 + req.uid.len() + extra);
    out.extend_from_slice(b"{\"apiVersion\":");
    string(&mut out, req.api_version);
    out.extend_from_slice(b",\"kind\":\"AdmissionReview\",\"response\":{\"uid\":");
    string(&mut out, &req.uid);
    if decision.allowed() {
        out.extend_from_slice(b",\"allowed\":true,\"status\":{}");
    } else {
        out.extend_from_slice(
            b",\"allowed\":false,\"status\":{\"status\":\"Failure\",\"code\":403",
        );
        let message = decision.deny_message();
        if !message.is_empty() {
            out.extend_from_slice(b",\"message\":");
            string(&mut out, &message);
        }
        out.extend_from_slice(b",\"reason\":\"Forbidden\"}");
    }
    // Audit findings by policy name, then CEL policies' audit annotations by
    // `<policy>/<key>`.
    let audits: Vec<(&str, &str)> = decision
        .audits
        .iter()
        .map(|f| (f.policy.as_str(), f.message.as_str()))
        .chain(
            decision
                .audit_annotations
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        )
        .collect();
    if !audits.is_empty() {
        out.extend_from_slice(b",\"auditAnnotations\":{");
        let mut first = true;
        for (i, (key, value)) in audits.iter().enumerate() {
            // One entry per key, the last one written winning (as in kube's map).
            if audits[i + 1..].iter().any(|later| later.0 == *key) {
                continue;
            }
            if !first {
                out.push(b',');
            }
            first = false;
            string(&mut out, key);
            out.push(b':');
            string(&mut out, value);
        }
        out.push(b'}');
    }
    if !decision.warnings.is_empty() {
        out.extend_from_slice(b",\"warnings\":[");
        for (i, f) in decision.warnings.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            string(&mut out, &f.message);
        }
        out.push(b']');
    }
    out.extend_from_slice(b"}}");
    out
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

    /// Whether `body` is one JSON value nesting at most [`MAX_BODY_DEPTH`] deep, checked by
    /// the decoder's scanner alone (for the parser benchmark).
    pub fn check_json(body: &[u8]) -> bool {
        let start = json::skip_ws(body, 0);
        json::skip_value(body, start, MAX_BODY_DEPTH)
            .is_ok_and(|end| json::skip_ws(body, end) == body.len())
    }

    /// Where the value at the start of `body` (after whitespace) ends, by the checking skip
    /// and by the trusted one the policy kinds read checked text with (`None` for either
    /// when it finds no end; the trusted one must agree wherever the checking one succeeds).
    pub fn value_ends(body: &[u8]) -> (Option<usize>, Option<usize>) {
        let start = json::skip_ws(body, 0);
        (
            json::skip_value(body, start, MAX_BODY_DEPTH).ok(),
            json::trusted_value_end(body, start),
        )
    }

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
        let kube = String::from_utf8(kube_answer(&body, &decision)).unwrap();
        let ours = serde_json::to_vec(&respond(&req, &decision)).unwrap();
        assert_eq!(String::from_utf8(ours).unwrap(), kube);
        assert_eq!(String::from_utf8(answer(&req, &decision)).unwrap(), kube);
        let plain = Decision::default();
        let ours = serde_json::to_vec(&respond(&req, &plain)).unwrap();
        assert_eq!(ours, kube_answer(&body, &plain), "{example}");
        assert_eq!(
            answer(&req, &plain),
            kube_answer(&body, &plain),
            "{example}"
        );
    }

    /// Several audit annotations (kube's map orders them at random, so compared as JSON),
    /// escapes and control characters in messages, and a denial without a message.
    #[test]
    fn answers_with_many_findings_are_kubes() {
        let body = serde_json::to_vec(&review(V1)).unwrap();
        let req = decode(&body).unwrap();
        let finding = |policy: &str, message: &str| Finding {
            policy: policy.into(),
            message: message.into(),
        };
        for decision in [
            Decision {
                denials: vec![finding("p", "tab\there \u{1} \\ / \"q\" é")],
                warnings: vec![finding("w1", "a"), finding("w2", "b\nc")],
                audits: vec![finding("a", "1"), finding("b", "2"), finding("a", "3")],
                ..Decision::default()
            },
            Decision {
                denials: vec![finding("p", "")],
                ..Decision::default()
            },
        ] {
            let ours: Value = serde_json::from_slice(&answer(&req, &decision)).unwrap();
            let kube: Value = serde_json::from_slice(&kube_answer(&body, &decision)).unwrap();
            assert_eq!(ours, kube);
        }
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
        let raw = Raw(text);
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
        assert_eq!(raw.iter_entries().count(), 6);
        assert_eq!(c.unwrap().iter_items().count(), 2);
    }

    #[rstest]
    #[case::objects(r#"[{"n":"a","i":"x"},{"i":"y","n":"b","i":"z"}]"#)]
    #[case::not_only_objects(r#"[ "s" , 3, [ {"n":1} ], null, {"n" : {"i":[1,"]"]}, "z": "}"} ]"#)]
    #[case::escaped_keys(r#"[{"\u006e":"a","n\"":1,"i":"\"x\""},{}]"#)]
    #[case::empty("[ ]")]
    #[case::not_an_array(r#"{"n":1}"#)]
    fn objects_of_a_list_are_read_as_their_items_and_fields_read_them(#[case] text: &str) {
        // One walk over each element gives what skipping it and then walking it gives.
        let raw = Raw(text);
        let expected: Vec<_> = raw
            .iter_items()
            .map(|item| (item.fields(["n", "i"]), item))
            .collect();
        let got: Vec<_> = raw.iter_objects(["n", "i"]).collect();
        assert_eq!(got, expected, "{text}");
    }

    #[rstest]
    #[case("0", Some(0))]
    #[case("-0", Some(0))]
    #[case("9223372036854775807", Some(i64::MAX))]
    #[case("-9223372036854775808", Some(i64::MIN))]
    #[case("9223372036854775808", None)]
    #[case("3.0", None)]
    #[case("1e3", None)]
    #[case("\"3\"", None)]
    #[case("true", None)]
    fn whole_numbers_read_as_serde_json_reads_them(#[case] text: &str, #[case] n: Option<i64>) {
        assert_eq!(Raw(text).as_i64(), n);
        // serde_json's `Value` holds `-0` as a float; Kubernetes (Go) reads it as the integer 0.
        if text != "-0" {
            let v: Value = serde_json::from_str(text).unwrap();
            assert_eq!(v.as_i64(), n);
        }
    }

    /// One pass over each object finds the same parts as reading them with serde_json, with
    /// the object as the API server writes it (compact) and as people do (spaces, newlines).
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
    #[case::escaped_wanted_key(
        r#"{"sp\u0065c":{"rep\u006cicas":2},"meta\u0064ata":{"n\u0061me":"w\u0065b"}}"#
    )]
    #[case::metadata(
        r#"{"metadata":{"name":"a","labels":{"x":"1"},"annotations":null},"metadata":{"generateName":"g-","labels":{"y":"2"}}}"#
    )]
    #[case::empty("{}")]
    fn one_pass_finds_what_serde_finds(#[case] text: &str) {
        let frame = |object: &str| {
            format!(
                r#"{{"apiVersion":"{V1}","kind":"AdmissionReview","request":{{"uid":"u","kind":{{"group":"apps","version":"v1","kind":"Deployment"}},"resource":{{"group":"apps","version":"v1","resource":"deployments"}},"operation":"CREATE","userInfo":{{}},"object":{object}}}}}"#
            )
        };
        let v: Value = serde_json::from_str(text).expect("test json");
        for object in [text.to_owned(), v.to_string()] {
            let body = frame(&object);
            let review = decode(body.as_bytes()).expect("valid review");
            let obj = review.object.expect("object");
            assert_eq!(obj.raw.text(), object);
            let part = |r: Option<Raw<'_>>| r.map(Raw::to_value);
            let spec = v.get("spec");
            let spec_part = |k: &str| {
                spec.filter(|s| s.is_object())
                    .and_then(|s| s.get(k))
                    .cloned()
            };
            assert_eq!(part(obj.spec), spec.cloned(), "{object}");
            assert_eq!(
                part(obj.metadata),
                v.get("metadata").cloned().filter(|m| !m.is_null())
            );
            assert_eq!(part(obj.template), v.get("template").cloned());
            assert_eq!(part(obj.replicas), spec_part("replicas"), "{object}");
            assert_eq!(part(obj.spec_template), spec_part("template"));
            assert_eq!(part(obj.job_template), spec_part("jobTemplate"));
            assert_eq!(part(obj.spec_containers), spec_part("containers"));
            let meta = v.get("metadata");
            let meta_str = |k: &str| meta.and_then(|m| m.get(k)).and_then(Value::as_str);
            assert_eq!(obj.name.as_deref(), meta_str("name"));
            assert_eq!(obj.generate_name.as_deref(), meta_str("generateName"));
            let meta_part = |k: &str| {
                meta.and_then(|m| m.get(k))
                    .cloned()
                    .filter(|x| !x.is_null())
            };
            assert_eq!(part(obj.labels), meta_part("labels"));
            assert_eq!(part(obj.annotations), meta_part("annotations"));
        }
    }

    #[test]
    fn objects_past_the_depth_limit_are_refused() {
        let body = |levels: usize| {
            let object = format!("{{\"a\":{}1{}}}", "[".repeat(levels), "]".repeat(levels));
            serde_json::to_vec(&json!({
                "apiVersion": V1, "kind": "AdmissionReview",
                "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                            "resource": {"group": "", "version": "v1", "resource": "pods"},
                            "operation": "CREATE", "userInfo": {},
                            "object": serde_json::from_str::<Value>(&object).unwrap()}
            }))
            .unwrap()
        };
        assert!(decode(&body(MAX_OBJECT_DEPTH - 1)).is_ok());
        let err = decode(&body(MAX_OBJECT_DEPTH)).unwrap_err().to_string();
        assert!(err.contains("recursion limit exceeded"), "{err}");
        assert!(err.contains("request.object"), "{err}");
    }

    /// Whatever serde_json refuses as JSON, the decoder refuses too, naming where.
    #[rstest]
    #[case::trailing_comma(
        r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u",}}"#
    )]
    #[case::bad_escape_in_object(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"status":{"x":"\q"}}}}"#)]
    #[case::leading_zero(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"spec":{"x":[01]}}}}"#)]
    #[case::lone_surrogate(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"u","kind":{"group":"","version":"v1","kind":"Pod"},"resource":{"group":"","version":"v1","resource":"pods"},"operation":"CREATE","userInfo":{},"object":{"spec":{"x":"\ud800"}}}}"#)]
    #[case::trailing_text(r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"} {}"#)]
    #[case::control_character(
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"Admission\u{1}Review\"}"
    )]
    fn invalid_json_is_refused_with_a_position(#[case] body: &str) {
        assert!(serde_json::from_str::<Value>(body).is_err());
        let err = decode(body.as_bytes()).unwrap_err().to_string();
        assert!(err.starts_with("body is not an AdmissionReview: "), "{err}");
        assert!(err.contains(" at line 1 column "), "{err}");
    }

    #[rstest]
    #[case::uid_number(json!({"uid": 5}), "request.uid must be a string (line 1 column")]
    #[case::no_uid(json!({"operation": "DELETE", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"}, "userInfo": {}}), "request.uid is missing")]
    #[case::bad_operation(json!({"uid": "u", "operation": "PATCH"}), "request.operation must be one of CREATE, UPDATE, DELETE and CONNECT")]
    #[case::kind_incomplete(json!({"uid": "u", "operation": "DELETE", "kind": {"group": "", "version": "v1"}, "resource": {"group": "", "version": "v1", "resource": "pods"}, "userInfo": {}}), "request.kind.kind is missing")]
    #[case::groups_not_strings(json!({"uid": "u", "operation": "DELETE", "userInfo": {"groups": [1]}}), "request.userInfo.groups must be a list of strings")]
    #[case::dry_run_text(json!({"uid": "u", "dryRun": "yes"}), "request.dryRun must be true or false")]
    #[case::request_list(json!([]), "request must be a JSON object")]
    #[case::name_number(json!({"uid": "u", "operation": "CREATE", "object": {"metadata": {"name": 7}}}), "request.object.metadata.name must be a string")]
    #[case::metadata_list(json!({"uid": "u", "operation": "CREATE", "object": {"metadata": []}}), "request.object.metadata must be a JSON object")]
    fn wrong_shapes_name_the_field(#[case] request: Value, #[case] expected: &str) {
        let body = serde_json::to_vec(
            &json!({"apiVersion": V1, "kind": "AdmissionReview", "request": request}),
        )
        .unwrap();
        let err = decode(&body).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn duplicate_envelope_fields_are_refused() {
        let body = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"a","uid":"b"}}"#;
        let err = decode(body.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("duplicate field `request.uid`"), "{err}");
    }

    #[test]
    fn request_json_is_the_request_as_it_came() {
        let body = std::fs::read(format!(
            "{}/examples/reviews/update-image.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        let review = decode(&body).unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(review.request_json().unwrap().to_value(), v["request"]);
    }
}
