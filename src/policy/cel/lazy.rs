//! The review's object as CEL values converted on demand from its JSON text.
//!
//! A [`LazyMap`] or [`LazyList`] stands for one JSON object or array of a document held once
//! per review (`Arc<Doc>`, shared by every CEL policy judging it). Nothing is converted until
//! an expression reaches it: selecting a field scans the members of that map once (skipping
//! their values without building them) into an index of keys and value ranges, and converts
//! only the value selected (a nested object or array becomes another lazy value, a scalar its
//! CEL value); a list is converted one level down on its first index, size or iteration.
//! Converted parts are kept, so the same review's policies share them. Equality compares
//! entry by entry, converting only what it compares. Neither answers cel-rust's downcasts to
//! its plain map and list ([`Val::as_builtin`]): what needs the entries or items (equality,
//! results, variables) reads them through [`super::value`].
//!
//! Indexing a level charges the running evaluation's budget one unit per member or element
//! scanned, and iterating charges per element as for any other value (see [`super::value`]).
//!
//! The text must be valid JSON (the review decoder checks the whole body once); a value that
//! does not scan is an evaluation error, never a panic.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use ::cel::ExecutionError;
use ::cel::common::traits::{self, Container, Indexer, Iterable, Sizer, Zeroer};
use ::cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, LIST_TYPE,
    MAP_TYPE, Type,
};
use ::cel::common::value::{CowVal, StaticVal, Val};

use super::value::{Owned, charge, counted};
use crate::admission::json;

/// Maps with more members than this get a hash index (smaller ones are scanned).
const HASHED: usize = 12;

/// The JSON text value `bytes` as a CEL value, lazily converted. `bytes` must be one JSON
/// value (surrounding whitespace allowed).
pub(crate) fn root(bytes: &[u8]) -> Result<Owned, String> {
    root_of(bytes, Found::default(), false).map(|(_, v)| v)
}

/// Where the review decoder found parts of the object in its one pass (`metadata`, `spec`,
/// `spec.replicas`, the pod template, labels, annotations), as ranges of the object's text: a
/// field access that reaches one of them needs no scan at all, and a scan skips them. Plain
/// offsets, so that handing them to a conversion allocates nothing.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Found {
    pub(crate) metadata: Option<(usize, usize)>,
    pub(crate) spec: Option<(usize, usize)>,
    /// A PodTemplate's `template`.
    pub(crate) template: Option<(usize, usize)>,
    pub(crate) labels: Option<(usize, usize)>,
    pub(crate) annotations: Option<(usize, usize)>,
    pub(crate) replicas: Option<(usize, usize)>,
    /// `spec.template`.
    pub(crate) spec_template: Option<(usize, usize)>,
    pub(crate) job_template: Option<(usize, usize)>,
    pub(crate) containers: Option<(usize, usize)>,
}

/// Which level of the object a map is, for what [`Found`] knows of its members.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Other,
    Root,
    Metadata,
    Spec,
}

/// A member the decoder found: its key, its value's range, and that value's level.
type Member = (&'static str, Option<(usize, usize)>, Level);

/// How many members of one level [`Found`] can know.
const FOUND_PER_LEVEL: usize = 4;

impl Found {
    fn members(&self, level: Level) -> [Member; FOUND_PER_LEVEL] {
        const NONE: Member = ("", None, Level::Other);
        match level {
            Level::Root => [
                ("metadata", self.metadata, Level::Metadata),
                ("spec", self.spec, Level::Spec),
                ("template", self.template, Level::Other),
                NONE,
            ],
            Level::Metadata => [
                ("labels", self.labels, Level::Other),
                ("annotations", self.annotations, Level::Other),
                NONE,
                NONE,
            ],
            Level::Spec => [
                ("replicas", self.replicas, Level::Other),
                ("template", self.spec_template, Level::Other),
                ("jobTemplate", self.job_template, Level::Other),
                ("containers", self.containers, Level::Other),
            ],
            Level::Other => [NONE; FOUND_PER_LEVEL],
        }
    }
}

/// Memory the values converted out of one object may take at most, as [`weight`] estimates
/// it (members and items of every level indexed, in all the CEL policies judging a review).
/// This bounds the conversion of a hostile object (a 7 MiB array of a million `{"":0}` took
/// 319 MiB before); past it the evaluation stops as over its cost budget and the policy's
/// failurePolicy answers. An object the API server stores (at most ~1.5 MiB) stays far below.
pub(crate) const MAX_CONVERTED: usize = 32 * 1024 * 1024;

/// The memory one member or item `b[start..end]` takes once converted, estimated: a map or
/// list level about 256 bytes before its own members, a scalar its text plus about 48.
fn weight(b: &[u8], start: usize, end: usize) -> usize {
    match b.get(start) {
        Some(b'{' | b'[') => 256,
        _ => 48 + end.saturating_sub(start),
    }
}

/// One object's JSON text, where the decoder found its parts, and how many of its values
/// have been converted.
pub(crate) struct Doc {
    bytes: Box<[u8]>,
    found: Found,
    converted: AtomicUsize,
}

impl std::ops::Deref for Doc {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes
    }
}

impl Doc {
    /// Counts `n` more bytes of converted values; false (and the evaluation's budget spent)
    /// past [`MAX_CONVERTED`].
    fn convert_more(&self, n: usize) -> bool {
        let before = self.converted.fetch_add(n, Ordering::Relaxed);
        if before.saturating_add(n) > MAX_CONVERTED {
            charge(u64::MAX);
            return false;
        }
        true
    }
}

/// `checked`: the text is known to be one JSON value (no scan for its end).
fn root_of(bytes: &[u8], found: Found, checked: bool) -> Result<(Arc<Doc>, Owned), String> {
    let doc = Arc::new(Doc {
        bytes: bytes.into(),
        found,
        converted: AtomicUsize::new(0),
    });
    let start = ws(&doc, 0);
    let end = if checked {
        doc.len()
            - doc
                .iter()
                .rev()
                .take_while(|c| c.is_ascii_whitespace())
                .count()
    } else {
        let end = value_end(&doc, start).ok_or_else(malformed)?;
        if ws(&doc, end) != doc.len() {
            return Err(malformed());
        }
        end
    };
    let value = convert(&doc, start, end, Level::Root).ok_or_else(malformed)?;
    Ok((doc, value))
}

fn malformed() -> String {
    "the object is not valid JSON".to_owned()
}

pub(crate) fn scan_error() -> ExecutionError {
    ExecutionError::function_error("object", malformed())
}

// ---------------------------------------------------------------------------------------------
// Scanning validated JSON text
// ---------------------------------------------------------------------------------------------

fn ws(b: &[u8], i: usize) -> usize {
    json::skip_ws(b, i)
}

/// `b[i]` is `"`: the index after the closing quote, and whether the string has escapes.
fn string_end(b: &[u8], i: usize) -> Option<(usize, bool)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    json::trusted_string_end(b, i + 1)
}

/// The index after the value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    json::trusted_value_end(b, i)
}

fn text(b: &[u8], start: usize, end: usize) -> Option<&str> {
    std::str::from_utf8(b.get(start..end)?).ok()
}

/// The CEL value of the JSON value `doc[start..end]`, as the API server converts unstructured
/// objects: integers as `int`, other numbers as `double`, objects and arrays lazily.
fn convert(doc: &Arc<Doc>, start: usize, end: usize, level: Level) -> Option<Owned> {
    let b: &[u8] = doc;
    Some(match *b.get(start)? {
        b'{' => Box::new(LazyMap(Arc::new(MapNode {
            doc: Arc::clone(doc),
            start,
            end,
            level,
            hinted: doc
                .found
                .members(level)
                .iter()
                .any(|m| m.1.is_some())
                .then(Default::default),
            index: OnceLock::new(),
            built: OnceLock::new(),
        }))),
        b'[' => Box::new(LazyList(Arc::new(ListNode {
            doc: Arc::clone(doc),
            start,
            end,
            items: OnceLock::new(),
        }))),
        _ => scalar(b, start, end)?,
    })
}

/// The CEL value of the JSON string, number, boolean or null `b[start..end]`.
fn scalar(b: &[u8], start: usize, end: usize) -> Option<Owned> {
    Some(match *b.get(start)? {
        b'"' => Box::new(CelString::from(string(b, start, end)?)),
        b't' if b.get(start..end)? == b"true" => Box::new(CelBool::from(true)),
        b'f' if b.get(start..end)? == b"false" => Box::new(CelBool::from(false)),
        b'n' if b.get(start..end)? == b"null" => Box::new(CelNull),
        b'{' | b'[' => return None,
        _ => number(text(b, start, end)?)?,
    })
}

/// The value at `path` (keys from the object's root) of the object text `b`, which the
/// review decoder checked, when it is a string, number, boolean or null: read in place,
/// without a document, a level or an index built, and converted as the lazy object converts
/// it. For a comparison of one field with a literal, the most common rule. Members the
/// decoder found (`found`) are reached directly; other levels are walked (the last of
/// duplicate keys wins, escaped keys compare by their text). Charges one unit per step and
/// one per member walked, as the lazy maps do. `None` when a step is missing or not an
/// object, or the value is an array or object: the caller then takes the lazy way, which
/// says what is wrong.
pub(crate) fn scalar_at(b: &[u8], found: Found, path: &[String]) -> Option<Owned> {
    let (mut start, mut end) = (ws(b, 0), b.len());
    let mut level = Level::Root;
    for key in path {
        if !charge(1) || b.get(start) != Some(&b'{') {
            return None;
        }
        let member = found
            .members(level)
            .into_iter()
            .find(|m| m.0 == key.as_str());
        let next = member.map_or(Level::Other, |m| m.2);
        (start, end) = match member.and_then(|m| m.1) {
            Some((s, e)) if start < s && e <= end => (s, e),
            _ => member_of(b, start, key)?,
        };
        level = next;
    }
    scalar(b, start, end)
}

/// One member of an object's text: its key with the quotes, whether the key has escapes,
/// and where its value starts and ends.
struct RawMember {
    quoted: std::ops::Range<usize>,
    escaped: bool,
    start: usize,
    end: usize,
}

/// Hands each member of the object at `b[at]` (`{`) to `each`, in order; `end_of` says where a
/// value starting at an index ends. `None` when the text does not scan or `each` says stop.
fn each_member(
    b: &[u8],
    at: usize,
    end_of: impl Fn(usize) -> Option<usize>,
    mut each: impl FnMut(RawMember) -> Option<()>,
) -> Option<()> {
    let mut i = ws(b, at + 1);
    if *b.get(i)? == b'}' {
        return Some(());
    }
    loop {
        let (kend, escaped) = string_end(b, i)?;
        let quoted = i..kend;
        i = ws(b, kend);
        if *b.get(i)? != b':' {
            return None;
        }
        let start = ws(b, i + 1);
        let end = end_of(start)?;
        each(RawMember {
            quoted,
            escaped,
            start,
            end,
        })?;
        i = ws(b, end);
        match *b.get(i)? {
            b',' => i = ws(b, i + 1),
            b'}' => return Some(()),
            _ => return None,
        }
    }
}

/// The range of the value of the last member `key` of the object at `b[at]` (`{`).
fn member_of(b: &[u8], at: usize, key: &str) -> Option<(usize, usize)> {
    let mut hit = None;
    let mut walked = 0u64;
    each_member(
        b,
        at,
        |start| value_end(b, start),
        |m| {
            let name = b.get(m.quoted.start + 1..m.quoted.end - 1)?;
            let same = if m.escaped {
                json::unescape(std::str::from_utf8(name).ok()?)? == key
            } else {
                name == key.as_bytes()
            };
            walked += 1;
            if same {
                hit = Some((m.start, m.end));
            }
            Some(())
        },
    )?;
    if !charge(walked.max(1)) {
        return None;
    }
    hit
}

fn string(b: &[u8], start: usize, end: usize) -> Option<String> {
    let (e, escaped) = string_end(b, start)?;
    if e != end {
        return None;
    }
    if escaped {
        serde_json::from_slice::<String>(b.get(start..end)?).ok()
    } else {
        text(b, start + 1, end - 1).map(str::to_owned)
    }
}

/// A JSON number as `serde_json` reads it: whole numbers in `i64` as ints, the rest doubles.
fn number(t: &str) -> Option<Owned> {
    if !t.starts_with(|c: char| c == '-' || c.is_ascii_digit()) {
        return None;
    }
    if !t.contains(['.', 'e', 'E'])
        && let Ok(i) = t.parse::<i64>()
    {
        return Some(Box::new(CelInt::from(i)));
    }
    t.parse::<f64>()
        .ok()
        .map(|d| Box::new(CelDouble::from(d)) as Owned)
}

/// The `Val` accessors a lazy map and a lazy list answer alike: each is its own container,
/// indexer, iterable, sizer and zeroer.
macro_rules! lazy_accessors {
    () => {
        fn as_container(&self) -> Option<&dyn Container> {
            Some(self)
        }

        fn as_indexer<'b, 'w>(&'b self) -> Option<&'b (dyn Indexer + 'w)>
        where
            Self: 'w,
        {
            Some(self)
        }

        fn into_indexer<'w>(self: Box<Self>) -> Option<Box<dyn Indexer + 'w>>
        where
            Self: 'w,
        {
            Some(self)
        }

        fn as_iterable<'b, 'w>(&'b self) -> Option<&'b (dyn Iterable + 'w)>
        where
            Self: 'w,
        {
            Some(self)
        }

        fn as_sizer(&self) -> Option<&dyn Sizer> {
            Some(self)
        }

        fn as_zeroer(&self) -> Option<&dyn Zeroer> {
            Some(self)
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Maps
// ---------------------------------------------------------------------------------------------

enum KeyText {
    /// Unescaped key: `doc[start..end]`.
    Raw(usize, usize),
    /// A key with escapes, decoded.
    Decoded(Box<str>),
}

struct Entry {
    key: KeyText,
    start: usize,
    end: usize,
    value: OnceLock<Option<Owned>>,
}

struct MapIndex {
    entries: Vec<Entry>,
    hashed: Option<HashMap<Box<str>, usize>>,
}

struct MapNode {
    doc: Arc<Doc>,
    start: usize,
    end: usize,
    level: Level,
    /// The values of the members the decoder found, converted on first use.
    hinted: Option<Box<[OnceLock<Option<Owned>>; FOUND_PER_LEVEL]>>,
    index: OnceLock<Option<MapIndex>>,
    built: OnceLock<CelMap<'static>>,
}

/// A JSON object of the review, converted field by field.
#[derive(Clone)]
pub(crate) struct LazyMap(Arc<MapNode>);

impl fmt::Debug for LazyMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LazyMap({} bytes)", self.0.end - self.0.start)
    }
}

impl MapNode {
    fn key<'s>(&'s self, e: &'s Entry) -> &'s str {
        match &e.key {
            KeyText::Raw(s, t) => text(&self.doc, *s, *t).unwrap_or(""),
            KeyText::Decoded(k) => k,
        }
    }

    /// The key's bytes, unchecked (for comparisons: two keys are equal when their bytes are,
    /// and a raw key has no escapes).
    fn key_bytes<'s>(&'s self, e: &'s Entry) -> &'s [u8] {
        match &e.key {
            KeyText::Raw(s, t) => self.doc.get(*s..*t).unwrap_or_default(),
            KeyText::Decoded(k) => k.as_bytes(),
        }
    }

    fn index(&self) -> Option<&MapIndex> {
        self.index.get_or_init(|| self.scan()).as_ref()
    }

    /// The first member the decoder found in this map for which `want(key, start, end)`
    /// holds: its slot, its value's range and level.
    fn found(
        &self,
        want: impl Fn(&str, usize, usize) -> bool,
    ) -> Option<(usize, usize, usize, Level)> {
        self.hinted.as_ref()?;
        let members = self.doc.found.members(self.level);
        members
            .iter()
            .enumerate()
            .find_map(|(slot, &(key, range, level))| {
                let (s, e) = range?;
                (self.start < s && s < e && e <= self.end && want(key, s, e))
                    .then_some((slot, s, e, level))
            })
    }

    /// One pass over the members of this level.
    fn scan(&self) -> Option<MapIndex> {
        let b: &[u8] = &self.doc;
        let mut entries = Vec::with_capacity(HASHED);
        let mut pending = 0;
        // A value the decoder found is not scanned again (the object's `spec` is most of its
        // text).
        let end_of = |start| match self.found(|_, s, _| s == start) {
            Some((_, _, e, _)) => Some(e),
            None => value_end(b, start),
        };
        each_member(b, self.start, end_of, |m| {
            let key = if m.escaped {
                let inner = b.get(m.quoted.start + 1..m.quoted.end - 1)?;
                KeyText::Decoded(json::unescape(std::str::from_utf8(inner).ok()?)?.into())
            } else {
                KeyText::Raw(m.quoted.start + 1, m.quoted.end - 1)
            };
            if entries.len() % 1024 == 1023 && !self.doc.convert_more(std::mem::take(&mut pending))
            {
                return None;
            }
            // The entry, and its value once an expression reaches it.
            pending += 64 + weight(b, m.start, m.end);
            entries.push(Entry {
                key,
                start: m.start,
                end: m.end,
                value: OnceLock::new(),
            });
            Some(())
        })?;
        if !self.doc.convert_more(pending) {
            return None;
        }
        charge(entries.len().max(1) as u64);
        // The last of duplicate keys wins, as everywhere in Kubernetes.
        let mut index = MapIndex {
            entries,
            hashed: None,
        };
        if index.entries.len() > HASHED {
            let mut hashed = HashMap::with_capacity(index.entries.len());
            let mut keep = vec![false; index.entries.len()];
            for (n, e) in index.entries.iter().enumerate() {
                hashed.insert(Box::<str>::from(self.key(e)), n);
            }
            for &n in hashed.values() {
                keep[n] = true;
            }
            if keep.iter().any(|k| !k) {
                let mut n = 0;
                index.entries.retain(|_| {
                    n += 1;
                    keep[n - 1]
                });
                hashed = index
                    .entries
                    .iter()
                    .enumerate()
                    .map(|(n, e)| (Box::<str>::from(self.key(e)), n))
                    .collect();
            }
            index.hashed = Some(hashed);
        } else {
            // A key is dropped when a later one is the same; keys are compared only where
            // their lengths and first bytes agree (most never are).
            let n = index.entries.len();
            let mut signs = [(0usize, 0u8); HASHED];
            for (sign, e) in signs.iter_mut().zip(&index.entries) {
                let k = self.key_bytes(e);
                *sign = (k.len(), k.first().copied().unwrap_or(0));
            }
            let mut dropped = [false; HASHED];
            let mut any = false;
            for a in 0..n {
                let key = self.key_bytes(&index.entries[a]);
                dropped[a] = (a + 1..n)
                    .any(|b| signs[b] == signs[a] && self.key_bytes(&index.entries[b]) == key);
                any |= dropped[a];
            }
            if any {
                let mut n = 0;
                index.entries.retain(|_| {
                    n += 1;
                    !dropped[n - 1]
                });
            }
        }
        Some(index)
    }

    fn find(&self, key: &str) -> Option<Result<&Entry, ()>> {
        let Some(index) = self.index() else {
            return Some(Err(()));
        };
        let n = match &index.hashed {
            Some(h) => *h.get(key)?,
            None => index
                .entries
                .iter()
                .position(|e| self.key_bytes(e) == key.as_bytes())?,
        };
        Some(Ok(&index.entries[n]))
    }

    fn value<'s>(&'s self, e: &'s Entry) -> Option<&'s (dyn Val + 'static)> {
        e.value
            .get_or_init(|| convert(&self.doc, e.start, e.end, Level::Other))
            .as_deref()
    }

    /// This level as a plain CEL map (its values still lazy).
    fn built(&self) -> &CelMap<'static> {
        self.built.get_or_init(|| {
            let Some(index) = self.index() else {
                return CelMap::default();
            };
            let map: HashMap<CelMapKey<'static>, Owned> = index
                .entries
                .iter()
                .map(|e| {
                    let v = match self.value(e) {
                        Some(v) => v.clone_as_boxed(),
                        None => Box::new(CelNull) as Owned,
                    };
                    (CelMapKey::from(self.key(e).to_owned()), v)
                })
                .collect();
            CelMap::from(map)
        })
    }

    fn len(&self) -> usize {
        self.index().map_or(0, |i| i.entries.len())
    }
}

fn as_key(idx: &dyn Val) -> Option<&str> {
    idx.downcast_ref::<CelString>().map(|s| s.inner())
}

impl LazyMap {
    /// Calls `f` with each member's key and value (converted as reached; `None` where its text
    /// does not scan) until it returns false; `None` when this level does not scan.
    pub(crate) fn all_entries<'s>(
        &'s self,
        mut f: impl FnMut(&str, Option<&'s (dyn Val + 'static)>) -> bool,
    ) -> Option<bool> {
        let index = self.0.index()?;
        Some(
            index
                .entries
                .iter()
                .all(|e| f(self.0.key(e), self.0.value(e))),
        )
    }
}

/// Whether `a` and `b` are the same lazy map or list of the same document.
pub(crate) fn same(a: &dyn Val, b: &dyn Val) -> bool {
    if let (Some(a), Some(b)) = (a.downcast_ref::<LazyMap>(), b.downcast_ref::<LazyMap>()) {
        return Arc::ptr_eq(&a.0, &b.0)
            || (Arc::ptr_eq(&a.0.doc, &b.0.doc) && a.0.start == b.0.start);
    }
    if let (Some(a), Some(b)) = (a.downcast_ref::<LazyList>(), b.downcast_ref::<LazyList>()) {
        return Arc::ptr_eq(&a.0, &b.0)
            || (Arc::ptr_eq(&a.0.doc, &b.0.doc) && a.0.start == b.0.start);
    }
    false
}

impl Indexer for LazyMap {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        let Some(key) = as_key(idx) else {
            return Indexer::get(self.0.built(), idx);
        };
        if let Some((slot, start, end, level)) = self.0.found(|k, _, _| k == key)
            && let Some(slots) = &self.0.hinted
        {
            return slots[slot]
                .get_or_init(|| convert(&self.0.doc, start, end, level))
                .as_deref()
                .map(CowVal::Borrowed)
                .ok_or_else(scan_error);
        }
        match self.0.find(key) {
            None => Err(ExecutionError::no_such_key(key)),
            Some(Err(())) => Err(scan_error()),
            Some(Ok(e)) => self.0.value(e).map(CowVal::Borrowed).ok_or_else(scan_error),
        }
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        Indexer::get(&*self, idx).map(|v| v.as_ref().clone_as_boxed())
    }
}

impl Container for LazyMap {
    fn contains(&self, idx: &dyn Val) -> Result<bool, ExecutionError> {
        match as_key(idx) {
            Some(key) => match self.0.find(key) {
                None => Ok(false),
                Some(Ok(_)) => Ok(true),
                Some(Err(())) => Err(scan_error()),
            },
            None => self.0.built().contains(idx),
        }
    }
}

impl Sizer for LazyMap {
    fn size(&self) -> CelInt {
        (self.0.len() as i64).into()
    }
}

impl Zeroer for LazyMap {
    fn is_zero_value(&self) -> bool {
        self.0.len() == 0
    }
}

impl Iterable for LazyMap {
    fn iter<'b, 'w>(&'b self) -> Box<dyn traits::Iterator<'b, 'w> + 'b>
    where
        Self: 'w,
    {
        counted(Iterable::iter(self.0.built()))
    }
}

impl Val for LazyMap {
    fn get_type(&self) -> &Type {
        &MAP_TYPE
    }

    fn cel_type() -> &'static Type {
        &MAP_TYPE
    }

    lazy_accessors!();

    fn equals(&self, other: &dyn Val) -> bool {
        super::value::equal(self, other)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(self.clone())
    }

    // `as_builtin` keeps its default, `BuiltinRef::Other`: cel-rust asks it of every operand
    // (is it an optional?), and answering a plain map would build this level each time it is
    // selected from. What needs the entries reads them through `super::value`.
}

impl StaticVal for LazyMap {}

// ---------------------------------------------------------------------------------------------
// Lists
// ---------------------------------------------------------------------------------------------

struct ListNode {
    doc: Arc<Doc>,
    start: usize,
    end: usize,
    items: OnceLock<Option<CelList<'static>>>,
}

/// A JSON array of the review, converted one level down on first use.
#[derive(Clone)]
pub(crate) struct LazyList(Arc<ListNode>);

impl fmt::Debug for LazyList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "LazyList({} bytes)", self.0.end - self.0.start)
    }
}

static EMPTY_LIST: OnceLock<CelList<'static>> = OnceLock::new();

impl ListNode {
    fn items(&self) -> Option<&CelList<'static>> {
        self.items.get_or_init(|| self.scan()).as_ref()
    }

    fn scan(&self) -> Option<CelList<'static>> {
        let b: &[u8] = &self.doc;
        let mut items: Vec<Owned> = Vec::new();
        let mut i = ws(b, self.start + 1);
        let mut pending = 0;
        if *b.get(i)? != b']' {
            loop {
                if items.len() % 1024 == 1023
                    && !self.doc.convert_more(std::mem::take(&mut pending))
                {
                    return None;
                }
                let end = value_end(b, i)?;
                pending += weight(b, i, end);
                items.push(convert(&self.doc, i, end, Level::Other)?);
                i = ws(b, end);
                match *b.get(i)? {
                    b',' => i = ws(b, i + 1),
                    b']' => break,
                    _ => return None,
                }
            }
        }
        if !self.doc.convert_more(pending) {
            return None;
        }
        charge(items.len().max(1) as u64);
        Some(CelList::from(items))
    }

    /// The items, or an empty list when the text does not scan (every accessor that can
    /// report an error checks [`ListNode::items`] first).
    fn items_or_empty(&self) -> &CelList<'static> {
        self.items()
            .unwrap_or_else(|| EMPTY_LIST.get_or_init(|| CelList::from(Vec::<Owned>::new())))
    }
}

impl LazyList {
    /// The items (converted one level down); `None` when the text does not scan.
    pub(crate) fn items(&self) -> Option<&[Owned]> {
        self.0.items().map(|l| l.inner())
    }
}

impl Indexer for LazyList {
    fn get<'b, 'w>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'w>, ExecutionError>
    where
        Self: 'w,
    {
        Indexer::get(self.0.items().ok_or_else(scan_error)?, idx)
    }

    fn steal<'w>(self: Box<Self>, idx: &dyn Val) -> Result<Box<dyn Val + 'w>, ExecutionError>
    where
        Self: 'w,
    {
        Indexer::get(&*self, idx).map(|v| v.as_ref().clone_as_boxed())
    }
}

impl Container for LazyList {
    fn contains(&self, v: &dyn Val) -> Result<bool, ExecutionError> {
        Container::contains(self.0.items().ok_or_else(scan_error)?, v)
    }
}

impl Sizer for LazyList {
    fn size(&self) -> CelInt {
        self.0.items_or_empty().size()
    }
}

impl Zeroer for LazyList {
    fn is_zero_value(&self) -> bool {
        self.0.items_or_empty().inner().is_empty()
    }
}

impl Iterable for LazyList {
    fn iter<'b, 'w>(&'b self) -> Box<dyn traits::Iterator<'b, 'w> + 'b>
    where
        Self: 'w,
    {
        counted(Iterable::iter(self.0.items_or_empty()))
    }
}

impl Val for LazyList {
    fn get_type(&self) -> &Type {
        &LIST_TYPE
    }

    fn cel_type() -> &'static Type {
        &LIST_TYPE
    }

    fn as_adder<'b, 'w>(&'b self) -> Option<&'b (dyn ::cel::common::traits::Adder + 'w)>
    where
        Self: 'w,
    {
        self.0.items_or_empty().as_adder()
    }

    lazy_accessors!();

    fn equals(&self, other: &dyn Val) -> bool {
        super::value::equal(self, other)
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }

    fn clone_as_boxed<'w>(&self) -> Box<dyn Val + 'w>
    where
        Self: 'w,
    {
        Box::new(self.clone())
    }

    // `as_builtin` keeps its default, `BuiltinRef::Other`, as for a lazy map.
}

impl StaticVal for LazyList {}

// ---------------------------------------------------------------------------------------------
// The per-review scratch
// ---------------------------------------------------------------------------------------------

/// A converted object and the policies that have used it.
struct Slot {
    doc: Arc<Doc>,
    root: Owned,
    users: Vec<usize>,
}

/// The objects and old objects last converted on this thread (an UPDATE has both).
const SLOTS: usize = 2;

thread_local! {
    static SCRATCH: std::cell::RefCell<Vec<Slot>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// [`root`], shared by the CEL policies judging the same review on this thread: the first
/// policy converts, the next ones with the same object text reuse what was converted. A policy
/// that finds a conversion it has already used is judging a new review (each policy judges a
/// review once) and starts afresh, so nothing carries over from one review to the next
/// but what a later policy of the same review reuses; the bytes are compared, so a reuse
/// is always of the same text.
pub(crate) fn shared_root(
    bytes: &[u8],
    user: usize,
    found: impl FnOnce() -> Found,
) -> Result<Owned, String> {
    SCRATCH.with(|scratch| {
        let mut slots = scratch.borrow_mut();
        let same = slots.iter().position(|s| **s.doc == *bytes);
        if let Some(slot) = same.map(|i| &mut slots[i])
            && !slot.users.contains(&user)
        {
            slot.users.push(user);
            return Ok(slot.root.clone_as_boxed());
        }
        let (doc, root) = root_of(bytes, found(), true)?;
        let mut users = match same {
            Some(i) => std::mem::take(&mut slots.remove(i).users),
            None => Vec::new(),
        };
        users.clear();
        users.push(user);
        if slots.len() >= SLOTS {
            slots.remove(0);
        }
        slots.push(Slot {
            doc,
            root: root.clone_as_boxed(),
            users,
        });
        Ok(root)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'v>(v: &'v dyn Val, key: &str) -> Result<CowVal<'v, 'v>, ExecutionError> {
        v.as_indexer()
            .expect("indexable")
            .get(&CelString::from(key))
    }

    fn value(v: &dyn Val) -> ::cel::Value {
        super::super::value::to_value(v).expect("converts")
    }

    #[test]
    fn fields_convert_as_json_does() {
        let text = br#" {"a": 3, "b": 2.5, "big": 18446744073709551615, "neg": -0, "e": 1e2,
            "s": "x\"y\u00e9", "n": null, "t": true, "l": [1, {"k": "v"}], "m": {}} "#;
        let root = root(text).unwrap();
        let from_json = super::super::value::from_json(text).unwrap();
        assert_eq!(value(root.as_ref()), value(from_json.as_ref()));
        assert_eq!(
            value(&*get(root.as_ref(), "a").unwrap()),
            ::cel::Value::Int(3)
        );
        assert_eq!(
            value(&*get(root.as_ref(), "s").unwrap()),
            ::cel::Value::String(Arc::new("x\"yé".into()))
        );
        assert!(matches!(
            get(root.as_ref(), "missing"),
            Err(ExecutionError::NoSuchKey(k)) if k.as_str() == "missing"
        ));
    }

    #[test]
    fn only_what_is_reached_is_converted() {
        let root = root(br#"{"metadata": {"name": "x"}, "spec": {"replicas": 3, "template": {}}}"#)
            .unwrap();
        let map = root.downcast_ref::<LazyMap>().unwrap();
        assert!(map.0.index.get().is_none());
        let spec = get(root.as_ref(), "spec").unwrap();
        let index = map.0.index.get().unwrap().as_ref().unwrap();
        let converted: Vec<&str> = index
            .entries
            .iter()
            .filter(|e| e.value.get().is_some())
            .map(|e| map.0.key(e))
            .collect();
        assert_eq!(converted, ["spec"]);
        let spec_map = spec.downcast_ref::<LazyMap>().unwrap();
        assert!(spec_map.0.index.get().is_none(), "spec not scanned yet");
        assert_eq!(
            value(&*get(&*spec, "replicas").unwrap()),
            ::cel::Value::Int(3)
        );
    }

    #[test]
    fn checking_for_an_optional_builds_nothing() {
        // cel-rust asks every operand it selects from whether it is an optional.
        let root = root(br#"{"spec": {"containers": [{"image": "a"}]}}"#).unwrap();
        assert!(
            root.downcast_ref::<::cel::common::types::CelOptional>()
                .is_none()
        );
        let map = root.downcast_ref::<LazyMap>().unwrap();
        assert!(map.0.index.get().is_none() && map.0.built.get().is_none());
        let spec = get(root.as_ref(), "spec").unwrap();
        let containers = get(&*spec, "containers").unwrap();
        assert!(
            containers
                .downcast_ref::<::cel::common::types::CelList>()
                .is_none()
        );
        let list = containers.downcast_ref::<LazyList>().unwrap();
        assert!(list.0.items.get().is_none(), "not scanned by the downcast");
        let c = list.items().unwrap()[0].as_ref();
        assert!(
            c.downcast_ref::<::cel::common::types::CelOptional>()
                .is_none()
        );
        assert_eq!(
            value(&*get(c, "image").unwrap()),
            ::cel::Value::String(Arc::new("a".into()))
        );
        assert!(c.downcast_ref::<LazyMap>().unwrap().0.built.get().is_none());
    }

    /// A scalar read in place is the value the lazy object gives at the same path (escaped
    /// and duplicate keys included); a map, a list or a missing field is left to the lazy
    /// object.
    #[test]
    fn scalars_read_in_place_are_what_the_lazy_object_gives() {
        let text = br#" {"a": 1, "b": {"c": "x\u0041y", "d": [1], "e": null, "f": 2.5, "g": true},
            "b": {"c": "last", "n": -0, "big": 12345678901234567890, "s": {"t": "deep"}},
            "k\u0041": 7, "m": {"x": 1, "x": "again"}} "#;
        let root = super::root(text).unwrap();
        let paths: &[&[&str]] = &[
            &["a"],
            &["b", "c"],
            &["b", "n"],
            &["b", "big"],
            &["b", "s", "t"],
            &["b", "d"],
            &["b", "e"],
            &["b", "s"],
            &["b", "missing"],
            &["a", "x"],
            &["kA"],
            &["m", "x"],
            &["nothing"],
        ];
        let mut read = 0;
        for path in paths {
            let fields: Vec<String> = path.iter().map(|f| f.to_string()).collect();
            let fast = scalar_at(text, Found::default(), &fields);
            let mut lazy: Option<Owned> = Some(root.clone_as_boxed());
            for f in *path {
                lazy = lazy.and_then(|v| {
                    v.as_indexer()
                        .and_then(|i| i.get(&CelString::from(*f)).ok())
                        .map(|v| v.as_ref().clone_as_boxed())
                });
            }
            match (fast, lazy) {
                (Some(f), Some(l)) => {
                    assert_eq!(value(f.as_ref()), value(l.as_ref()), "{path:?}");
                    read += 1;
                }
                (None, Some(l)) => assert!(
                    l.as_indexer().is_some(),
                    "{path:?}: a scalar left to the lazy object"
                ),
                (Some(_), None) => panic!("{path:?}: a value the lazy object does not have"),
                (None, None) => {}
            }
        }
        assert_eq!(read, 7);
    }

    #[test]
    fn the_last_of_duplicate_keys_wins_and_escaped_keys_are_found() {
        let root = root(br#"{"a": 1, "b": 2, "a": 3, "c\u0021": 4}"#).unwrap();
        assert_eq!(
            value(&*get(root.as_ref(), "a").unwrap()),
            ::cel::Value::Int(3)
        );
        assert_eq!(
            value(&*get(root.as_ref(), "c!").unwrap()),
            ::cel::Value::Int(4)
        );
        assert_eq!(*root.as_sizer().unwrap().size().inner(), 3);
        // Keys alike in length and first byte are still told apart.
        let root = super::root(br#"{"ab": 1, "ac": 2, "ab": 5, "ba": 6}"#).unwrap();
        for (key, v) in [("ab", 5), ("ac", 2), ("ba", 6)] {
            assert_eq!(
                value(&*get(root.as_ref(), key).unwrap()),
                ::cel::Value::Int(v)
            );
        }
        assert_eq!(*root.as_sizer().unwrap().size().inner(), 3);
        // Many keys: the hashed index, with the same rules.
        let mut many: Vec<String> = (0..40).map(|i| format!("\"k{i}\": {i}")).collect();
        many.push("\"k7\": 700".into());
        let text = format!("{{{}}}", many.join(","));
        let root = super::root(text.as_bytes()).unwrap();
        assert_eq!(
            value(&*get(root.as_ref(), "k7").unwrap()),
            ::cel::Value::Int(700)
        );
        assert_eq!(
            value(&*get(root.as_ref(), "k39").unwrap()),
            ::cel::Value::Int(39)
        );
        assert_eq!(*root.as_sizer().unwrap().size().inner(), 40);
    }

    #[test]
    fn equality_holds_both_ways_with_plain_values() {
        let root = root(br#"{"m": {"x": [1, "a"], "y": null}, "l": [{"k": 1}]}"#).unwrap();
        let plain = super::super::value::from_json(br#"{"x": [1, "a"], "y": null}"#).unwrap();
        let m = get(root.as_ref(), "m").unwrap();
        assert!(m.equals(plain.as_ref()) && plain.equals(&*m));
        let other = super::super::value::from_json(br#"{"x": [1, "b"], "y": null}"#).unwrap();
        assert!(!m.equals(other.as_ref()) && !other.equals(&*m));
        let l = get(root.as_ref(), "l").unwrap();
        let plain = super::super::value::from_json(br#"[{"k": 1}]"#).unwrap();
        assert!(l.equals(plain.as_ref()) && plain.equals(&*l));
    }

    #[test]
    fn an_object_converts_at_most_max_converted_values() {
        // `{"":0}` items weigh 256 bytes each: lists of n of them under two keys.
        let list = |n: usize| {
            let items = vec!["{\"\":0}"; n].join(",");
            format!("{{\"a\": [{items}], \"b\": [{items}]}}").into_bytes()
        };
        let per_list = MAX_CONVERTED / 256 / 2;
        // Under the bound: both lists convert.
        let text = list(per_list - 10);
        let r = root(&text).unwrap();
        for key in ["a", "b"] {
            let l = get(r.as_ref(), key).unwrap();
            assert_eq!(
                *l.as_sizer().unwrap().size().inner(),
                (per_list - 10) as i64
            );
        }
        // Over it, counted across the object's levels: the second list is refused.
        let text = list(per_list + 10);
        let r = root(&text).unwrap();
        let a = get(r.as_ref(), "a").unwrap();
        assert!(a.downcast_ref::<LazyList>().unwrap().0.items().is_some());
        let b = get(r.as_ref(), "b").unwrap();
        assert!(b.downcast_ref::<LazyList>().unwrap().0.items().is_none());
        // A single map level past the bound is refused.
        let keys: Vec<String> = (0..MAX_CONVERTED / 64)
            .map(|i| format!("\"k{i}\":0"))
            .collect();
        let text = format!("{{\"m\": {{{}}}}}", keys.join(","));
        let r = root(text.as_bytes()).unwrap();
        let m = get(r.as_ref(), "m").unwrap();
        assert!(get(&*m, "k1").is_err());
        // A small object is far below it.
        let r = root(br#"{"a": [1, 2, {"b": "c"}]}"#).unwrap();
        assert!(get(r.as_ref(), "a").unwrap().as_sizer().is_some());
    }

    #[test]
    fn text_that_does_not_scan_is_an_error() {
        for bad in [&b"{\"a\": "[..], b"[1, 2", b"\"open", b"", b"{} x"] {
            assert!(root(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Nested damage shows when the part is reached, as an error.
        let v = root(b"{\"a\" 1}").unwrap();
        assert!(get(v.as_ref(), "a").is_err());
        let v = root(b"{\"a\": {\"b\" 1}}").unwrap();
        let a = get(v.as_ref(), "a").unwrap();
        assert!(get(&*a, "b").is_err());
    }

    #[test]
    fn a_review_s_policies_share_the_conversion_and_a_new_review_starts_afresh() {
        let text = br#"{"spec": {"replicas": 3}}"#;
        let first = shared_root(text, 1, Found::default).unwrap();
        let second = shared_root(text, 2, Found::default).unwrap();
        let (a, b) = (
            first.downcast_ref::<LazyMap>().unwrap(),
            second.downcast_ref::<LazyMap>().unwrap(),
        );
        assert!(Arc::ptr_eq(&a.0, &b.0), "policy 2 of the review reuses it");
        let again = shared_root(text, 1, Found::default).unwrap();
        let c = again.downcast_ref::<LazyMap>().unwrap();
        assert!(!Arc::ptr_eq(&a.0, &c.0), "policy 1 again: a new review");
        let other = shared_root(br#"{"spec": {"replicas": 4}}"#, 2, Found::default).unwrap();
        assert_eq!(
            value(&*get(&*get(other.as_ref(), "spec").unwrap(), "replicas").unwrap()),
            ::cel::Value::Int(4)
        );
    }
}
