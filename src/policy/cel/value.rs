//! JSON → CEL values, and the evaluation budget every value counts against.
//!
//! Objects are decoded straight from the review's raw JSON bytes into CEL values (no
//! intermediate `serde_json::Value`), and only when a CEL policy matches the request. Lists and
//! maps are shared (`Arc`) so the interpreter's per-iteration copies are cheap, and iterating
//! one charges the budget of the running evaluation element by element: a comprehension over a
//! huge object, or nested comprehensions over it, run out of budget instead of stalling
//! admission.

use std::cell::Cell;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use ::cel::ExecutionError;
use ::cel::common::traits::{self, Adder, Container, Indexer, Iterable, Sizer, Zeroer};
use ::cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelOptional, CelString, Kind,
    LIST_TYPE, MAP_TYPE, Type,
};
use ::cel::common::value::{Builtin, BuiltinRef, Val};
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};

use super::lazy::{LazyList, LazyMap};

/// A CEL value that borrows nothing.
pub(crate) type Owned = Box<dyn Val + 'static>;

// ---------------------------------------------------------------------------------------------
// Budget
// ---------------------------------------------------------------------------------------------

/// Cost units one expression may spend: the API server's per-expression limit
/// (`PerCallLimit`, 1,000,000).
pub const PER_EXPRESSION_COST: u64 = 1_000_000;
/// Cost units one policy evaluation may spend over all its expressions: the API server's
/// `RuntimeCELCostBudget` (10,000,000).
pub const PER_POLICY_COST: u64 = 10_000_000;

thread_local! {
    static BUDGET: BudgetCell = const { BudgetCell {
        active: Cell::new(false),
        remaining: Cell::new(0),
        exceeded: Cell::new(None),
        deadline: Cell::new(None),
        ticks: Cell::new(0),
        per_item: Cell::new(1),
    } };
}

struct BudgetCell {
    active: Cell<bool>,
    remaining: Cell<u64>,
    exceeded: Cell<Option<Exhausted>>,
    deadline: Cell<Option<Instant>>,
    ticks: Cell<u32>,
    per_item: Cell<u64>,
}

/// Sets what one iteration of a comprehension costs while the current expression runs (the
/// size of its largest loop body, as cel-go charges each step it evaluates); returns the
/// previous weight to restore.
pub(crate) fn set_iteration_cost(units: u64) -> u64 {
    BUDGET.with(|b| b.per_item.replace(units.max(1)))
}

/// Why an evaluation was cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// The cost budget ran out.
    Cost,
    /// The time limit passed.
    Time,
}

impl fmt::Display for Exhausted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Exhausted::Cost => f.write_str("operation cancelled: actual cost limit exceeded"),
            Exhausted::Time => f.write_str("operation cancelled: evaluation time limit exceeded"),
        }
    }
}

/// The budget of one expression's evaluation on this thread, active while it lives.
pub(crate) struct BudgetGuard {
    start: u64,
}

impl BudgetGuard {
    /// Starts counting `limit` cost units, cut off at `deadline`.
    pub(crate) fn start(limit: u64, deadline: Option<Instant>) -> Self {
        BUDGET.with(|b| {
            b.active.set(true);
            b.remaining.set(limit);
            b.exceeded.set(None);
            b.deadline.set(deadline);
            b.ticks.set(0);
        });
        BudgetGuard { start: limit }
    }

    /// Cost units spent so far.
    pub(crate) fn spent(&self) -> u64 {
        self.start - BUDGET.with(|b| b.remaining.get())
    }

    /// Why the evaluation was cut off, if it was.
    pub(crate) fn exhausted(&self) -> Option<Exhausted> {
        BUDGET.with(|b| b.exceeded.get())
    }
}

impl Drop for BudgetGuard {
    fn drop(&mut self) {
        BUDGET.with(|b| {
            b.active.set(false);
            b.exceeded.set(None);
        });
    }
}

/// The running evaluation's budget at one point, to return to.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BudgetSnapshot {
    remaining: u64,
    exceeded: Option<Exhausted>,
    ticks: u32,
}

impl BudgetSnapshot {
    /// The budget now.
    pub(crate) fn take() -> Self {
        BUDGET.with(|b| BudgetSnapshot {
            remaining: b.remaining.get(),
            exceeded: b.exceeded.get(),
            ticks: b.ticks.get(),
        })
    }

    /// Returns the budget to what it was (what was charged since is not charged).
    pub(crate) fn restore(self) {
        BUDGET.with(|b| {
            b.remaining.set(self.remaining);
            b.exceeded.set(self.exceeded);
            b.ticks.set(self.ticks);
        });
    }
}

/// Charges `units` to the running evaluation; false once its budget is spent (outside an
/// evaluation, always true).
pub(crate) fn charge(units: u64) -> bool {
    BUDGET.with(|b| {
        if !b.active.get() {
            return true;
        }
        if b.exceeded.get().is_some() {
            return false;
        }
        let left = b.remaining.get();
        if left < units {
            b.remaining.set(0);
            b.exceeded.set(Some(Exhausted::Cost));
            return false;
        }
        b.remaining.set(left - units);
        let ticks = b.ticks.get().wrapping_add(1);
        b.ticks.set(ticks);
        if ticks % 1024 == 0
            && let Some(deadline) = b.deadline.get()
            && Instant::now() >= deadline
        {
            b.exceeded.set(Some(Exhausted::Time));
            return false;
        }
        true
    })
}

/// [`charge`], as the error a function returns when the budget is spent.
pub(crate) fn charge_or_fail(function: &str, units: u64) -> Result<(), ExecutionError> {
    if charge(units) {
        Ok(())
    } else {
        Err(ExecutionError::function_error(
            function,
            BUDGET
                .with(|b| b.exceeded.get())
                .unwrap_or(Exhausted::Cost)
                .to_string(),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Shared, counted containers
// ---------------------------------------------------------------------------------------------

/// A list shared between its copies, whose iteration charges the budget.
#[derive(Debug, Clone)]
pub(crate) struct SharedList(Arc<CelList<'static>>);

/// A map shared between its copies, whose iteration charges the budget.
#[derive(Debug, Clone)]
pub(crate) struct SharedMap(Arc<CelMap<'static>>);

impl SharedList {
    pub(crate) fn new(items: Vec<Owned>) -> Self {
        SharedList(Arc::new(CelList::from(items)))
    }
}

impl SharedMap {
    pub(crate) fn new(entries: HashMap<CelMapKey<'static>, Owned>) -> Self {
        SharedMap(Arc::new(CelMap::from(entries)))
    }
}

/// Iterates `inner`, charging each element the current iteration cost; stops when the budget is spent (the
/// evaluation is then reported as cut off, whatever it returned).
struct Counted<'b> {
    inner: Box<dyn traits::Iterator<'b, 'static> + 'b>,
}

impl<'b, 'v> traits::Iterator<'b, 'v> for Counted<'b> {
    fn next(&mut self) -> Option<&'b (dyn Val + 'v)> {
        if !charge(BUDGET.with(|b| b.per_item.get())) {
            return None;
        }
        match self.inner.next() {
            Some(v) => Some(v),
            None => None,
        }
    }
}

/// `inner`, charging the budget per element as [`SharedList`] does.
pub(crate) fn counted<'b, 'w>(
    inner: Box<dyn traits::Iterator<'b, 'static> + 'b>,
) -> Box<dyn traits::Iterator<'b, 'w> + 'b> {
    Box::new(Counted { inner })
}

macro_rules! shared_container {
    ($ty:ident, $cel_type:expr, $builtin:ident) => {
        impl Val for $ty {
            fn get_type(&self) -> &Type {
                &$cel_type
            }

            fn cel_type() -> &'static Type {
                &$cel_type
            }

            fn as_adder<'b, 'w>(&'b self) -> Option<&'b (dyn Adder + 'w)>
            where
                Self: 'w,
            {
                self.0.as_adder()
            }

            fn as_container(&self) -> Option<&dyn Container> {
                self.0.as_container()
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
                self.0.as_sizer()
            }

            fn as_zeroer(&self) -> Option<&dyn Zeroer> {
                self.0.as_zeroer()
            }

            fn equals(&self, other: &dyn Val) -> bool {
                equal(self, other)
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

            fn as_builtin<'b, 'w>(&'b self) -> BuiltinRef<'b, 'w>
            where
                Self: 'w,
            {
                BuiltinRef::$builtin(&self.0)
            }

            fn into_builtin<'w>(self: Box<Self>) -> Option<Builtin<'w>>
            where
                Self: 'w,
            {
                let inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| (*shared).clone());
                Some(Builtin::$builtin(inner))
            }
        }

        impl Indexer for $ty {
            fn get<'b, 'w>(
                &'b self,
                idx: &dyn Val,
            ) -> Result<::cel::common::value::CowVal<'b, 'w>, ExecutionError>
            where
                Self: 'w,
            {
                Indexer::get(&*self.0, idx)
            }

            fn steal<'w>(
                self: Box<Self>,
                idx: &dyn Val,
            ) -> Result<Box<dyn Val + 'w>, ExecutionError>
            where
                Self: 'w,
            {
                Indexer::get(&*self.0, idx).map(|v| v.as_ref().clone_as_boxed())
            }
        }

        impl Iterable for $ty {
            fn iter<'b, 'w>(&'b self) -> Box<dyn traits::Iterator<'b, 'w> + 'b>
            where
                Self: 'w,
            {
                Box::new(Counted {
                    inner: Iterable::iter(&*self.0),
                })
            }
        }
    };
}

shared_container!(SharedList, LIST_TYPE, List);
shared_container!(SharedMap, MAP_TYPE, Map);

// ---------------------------------------------------------------------------------------------
// Lists and maps of every representation: plain, shared, lazy
// ---------------------------------------------------------------------------------------------

// The object's lazy lists and maps answer `BuiltinRef::Other` to cel-rust's downcasts (so that
// checking a value for an optional does not build it): what needs a list's items or a map's
// entries asks for them here, whatever the representation.

/// The items of a list (plain, shared or lazy), without charging the budget; `None` for
/// anything else, or a lazy list whose text does not scan.
fn list_items<'a, 'v>(v: &'a (dyn Val + 'v)) -> Option<&'a [Box<dyn Val + 'v>]> {
    if let Some(l) = v.downcast_ref::<LazyList>() {
        return l.items();
    }
    if let Some(l) = v.downcast_ref::<SharedList>() {
        return Some(l.0.inner());
    }
    match v.as_builtin() {
        BuiltinRef::List(l) => Some(l.inner()),
        _ => None,
    }
}

/// Calls `f` with each entry of a map (plain, shared or lazy) until it returns false, without
/// charging the budget; `None` for anything else, or a lazy map whose text does not scan. A
/// lazy map's value is `None` where its text does not scan.
fn map_all<'a, 'v>(
    v: &'a (dyn Val + 'v),
    mut f: impl FnMut(&CelMapKey<'_>, Option<&'a (dyn Val + 'v)>) -> bool,
) -> Option<bool> {
    if let Some(m) = v.downcast_ref::<LazyMap>() {
        return m.all_entries(|k, v| f(&CelMapKey::String(CelString::from(k)), v));
    }
    let map: &'a CelMap<'v> = match v.downcast_ref::<SharedMap>() {
        Some(m) => &m.0,
        None => match v.as_builtin() {
            BuiltinRef::Map(m) => m,
            _ => return None,
        },
    };
    Some(map.inner().iter().all(|(k, v)| f(k, Some(v.as_ref()))))
}

/// CEL equality, `a == b`, for values of any representation on either side (cel-rust's own
/// lists and maps only compare equal to their own kind, and the interpreter asks the left
/// side only): lists item by item, maps entry by entry, anything else as `a` compares.
pub(crate) fn equal(a: &dyn Val, b: &dyn Val) -> bool {
    match a.get_type().kind() {
        Kind::List => {
            if super::lazy::same(a, b) {
                return true;
            }
            match (list_items(a), list_items(b)) {
                (Some(x), Some(y)) => {
                    x.len() == y.len()
                        && x.iter()
                            .zip(y.iter())
                            .all(|(x, y)| equal(x.as_ref(), y.as_ref()))
                }
                (None, _) if a.downcast_ref::<LazyList>().is_none() => a.equals(b),
                _ => false,
            }
        }
        Kind::Map => {
            if super::lazy::same(a, b) {
                return true;
            }
            if b.get_type().kind() != Kind::Map {
                return false;
            }
            let (Some(size_a), Some(size_b), Some(indexer)) =
                (a.as_sizer(), b.as_sizer(), b.as_indexer())
            else {
                return false;
            };
            if size_a.size() != size_b.size() {
                return false;
            }
            let walked = map_all(a, |k, v| match (v, indexer.get(k.inner())) {
                (Some(v), Ok(theirs)) => equal(v, theirs.as_ref()),
                _ => false,
            });
            match walked {
                Some(all) => all,
                None if a.downcast_ref::<LazyMap>().is_none() => a.equals(b),
                None => false,
            }
        }
        _ => match (
            a.downcast_ref::<CelOptional>(),
            b.downcast_ref::<CelOptional>(),
        ) {
            (Some(x), Some(y)) => match (x.option(), y.option()) {
                (Some(x), Some(y)) => equal(x, y),
                (None, None) => true,
                _ => false,
            },
            _ => a.equals(b),
        },
    }
}

/// Whether the list `haystack` (of any representation) holds an item equal to `needle`;
/// `None` when it is not a list.
pub(crate) fn list_contains(haystack: &dyn Val, needle: &dyn Val) -> Option<bool> {
    if haystack.get_type().kind() != Kind::List {
        return None;
    }
    let items = list_items(haystack)?;
    Some(items.iter().any(|i| equal(i.as_ref(), needle)))
}

/// `v` as a [`::cel::Value`] (a result handed out of CEL), lists and maps of every
/// representation converted whole.
pub(crate) fn to_value(v: &dyn Val) -> Result<::cel::Value, ExecutionError> {
    match v.get_type().kind() {
        Kind::List => {
            if let Some(items) = list_items(v) {
                return Ok(::cel::Value::List(Arc::new(
                    items
                        .iter()
                        .map(|i| to_value(i.as_ref()))
                        .collect::<Result<Vec<_>, _>>()?,
                )));
            }
        }
        Kind::Map => {
            let mut entries = HashMap::new();
            let mut failed = None;
            let walked = map_all(v, |k, v| {
                match v.map(to_value) {
                    Some(Ok(v)) => {
                        entries.insert(::cel::objects::Key::from(k.clone()), v);
                    }
                    Some(Err(e)) => failed = Some(e),
                    None => failed = Some(super::lazy::scan_error()),
                }
                failed.is_none()
            });
            if let Some(e) = failed {
                return Err(e);
            }
            if walked.is_some() {
                return Ok(::cel::Value::Map(::cel::objects::Map {
                    map: Arc::new(entries),
                }));
            }
        }
        _ => {
            if let Some(o) = v.downcast_ref::<CelOptional>() {
                return Ok(::cel::Value::Opaque(Arc::new(match o.option() {
                    Some(inner) => ::cel::objects::OptionalValue::of(to_value(inner)?),
                    None => ::cel::objects::OptionalValue::none(),
                })));
            }
        }
    }
    if v.downcast_ref::<LazyList>().is_some() || v.downcast_ref::<LazyMap>().is_some() {
        return Err(super::lazy::scan_error());
    }
    ::cel::Value::try_from(v)
}

/// `v` as a value that borrows nothing (a variable's result, kept for the evaluation): the
/// object's parts and shared lists and maps are shared, not copied; other lists and maps
/// become shared and counted ones.
pub(crate) fn to_static(v: &dyn Val) -> Result<Owned, ExecutionError> {
    if let Some(l) = v.downcast_ref::<LazyList>() {
        return Ok(Box::new(l.clone()));
    }
    if let Some(m) = v.downcast_ref::<LazyMap>() {
        return Ok(Box::new(m.clone()));
    }
    if let Some(l) = v.downcast_ref::<SharedList>() {
        return Ok(Box::new(l.clone()));
    }
    if let Some(m) = v.downcast_ref::<SharedMap>() {
        return Ok(Box::new(m.clone()));
    }
    match v.as_builtin() {
        BuiltinRef::List(l) => Ok(Box::new(SharedList::new(
            l.inner()
                .iter()
                .map(|i| to_static(i.as_ref()))
                .collect::<Result<_, _>>()?,
        ))),
        BuiltinRef::Map(m) => Ok(Box::new(SharedMap::new(
            m.inner()
                .iter()
                .map(|(k, v)| Ok((k.clone().into_static(), to_static(v.as_ref())?)))
                .collect::<Result<_, ExecutionError>>()?,
        ))),
        BuiltinRef::Optional(o) => Ok(Box::new(match o.option() {
            Some(inner) => CelOptional::of(to_static(inner)?),
            None => CelOptional::none(),
        })),
        _ => ::cel::Value::try_from(v)?.try_into(),
    }
}

impl ::cel::common::value::StaticVal for SharedList {}
impl ::cel::common::value::StaticVal for SharedMap {}

// ---------------------------------------------------------------------------------------------
// JSON → CEL
// ---------------------------------------------------------------------------------------------

/// Decodes JSON text into a CEL value as the API server converts unstructured objects: integers
/// as `int`, other numbers as `double`, objects as `map(string, dyn)`, `null` as `null`.
pub(crate) fn from_json(bytes: &[u8]) -> Result<Owned, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = JsonSeed.deserialize(&mut de)?;
    de.end()?;
    Ok(value)
}

/// Converts an already parsed JSON value (params from a policy file).
pub(crate) fn from_json_value(value: &serde_json::Value) -> Owned {
    match value {
        serde_json::Value::Null => Box::new(CelNull),
        serde_json::Value::Bool(b) => Box::new(CelBool::from(*b)),
        serde_json::Value::Number(n) => number(n),
        serde_json::Value::String(s) => Box::new(CelString::from(s.clone())),
        serde_json::Value::Array(items) => {
            Box::new(SharedList::new(items.iter().map(from_json_value).collect()))
        }
        serde_json::Value::Object(map) => Box::new(SharedMap::new(
            map.iter()
                .map(|(k, v)| (CelMapKey::from(k.clone()), from_json_value(v)))
                .collect(),
        )),
    }
}

fn number(n: &serde_json::Number) -> Owned {
    match n.as_i64() {
        Some(i) => Box::new(CelInt::from(i)),
        None => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
    }
}

struct JsonSeed;

impl<'de> DeserializeSeed<'de> for JsonSeed {
    type Value = Owned;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Owned, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Owned;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Owned, E> {
        Ok(Box::new(CelBool::from(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Owned, E> {
        Ok(Box::new(CelInt::from(v)))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Owned, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Box::new(CelInt::from(i)),
            Err(_) => Box::new(CelDouble::from(v as f64)),
        })
    }

    fn visit_f64<E>(self, v: f64) -> Result<Owned, E> {
        Ok(Box::new(CelDouble::from(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Owned, E> {
        Ok(Box::new(CelString::from(v.to_owned())))
    }

    fn visit_string<E>(self, v: String) -> Result<Owned, E> {
        Ok(Box::new(CelString::from(v)))
    }

    fn visit_unit<E>(self) -> Result<Owned, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_none<E>(self) -> Result<Owned, E> {
        Ok(Box::new(CelNull))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Owned, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(item) = seq.next_element_seed(JsonSeed)? {
            items.push(item);
        }
        Ok(Box::new(SharedList::new(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Owned, A::Error> {
        let mut entries = HashMap::with_capacity(map.size_hint().unwrap_or(0).min(4096));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(JsonSeed)?;
            entries.insert(CelMapKey::from(key), value);
        }
        Ok(Box::new(SharedMap::new(entries)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_are_ints_when_whole_and_doubles_otherwise() {
        let v = from_json(br#"{"a": 3, "b": 2.5, "c": [1, "x", null, true]}"#).unwrap();
        let v = ::cel::Value::try_from(v.as_ref()).unwrap();
        let ::cel::Value::Map(m) = v else {
            panic!("not a map: {v:?}")
        };
        let get = |k: &str| {
            m.map
                .get(&::cel::objects::Key::String(Arc::new(k.into())))
                .cloned()
        };
        assert_eq!(get("a"), Some(::cel::Value::Int(3)));
        assert_eq!(get("b"), Some(::cel::Value::Float(2.5)));
        assert_eq!(
            get("c"),
            Some(::cel::Value::List(Arc::new(vec![
                ::cel::Value::Int(1),
                ::cel::Value::String(Arc::new("x".into())),
                ::cel::Value::Null,
                ::cel::Value::Bool(true),
            ])))
        );
    }

    #[test]
    fn iteration_stops_when_the_budget_is_spent() {
        let v = from_json(b"[1,2,3,4,5,6,7,8,9,10]").unwrap();
        let guard = BudgetGuard::start(4, None);
        let mut it = v.as_iterable().unwrap().iter();
        let mut n = 0;
        while it.next().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        assert_eq!(guard.exhausted(), Some(Exhausted::Cost));
        drop(guard);
        assert!(charge(1_000_000_000), "no budget outside an evaluation");
    }
}
