//! Kubernetes' CEL environment on top of cel-rust: the standard library, optional values and
//! the strings extension come from the `cel` crate; this file adds what the API server's
//! ValidatingAdmissionPolicy environment has on top (`k8s.io/apiserver/pkg/cel/library`):
//! lists (`isSorted`, `sum`, `min`, `max`, `indexOf`, `lastIndexOf`), regex (`find`,
//! `findAll`), `quantity()` / `isQuantity()` and their methods, and `url()` / `isURL()` with
//! their getters. Every function charges the evaluation budget by the size of its input.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use ::cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMapKey, CelString, DYN_TYPE, INT_TYPE, LIST_TYPE,
    STRING_TYPE, Type,
};
use ::cel::common::value::{CowVal, StaticVal, Val};
use ::cel::{Env, ExecutionError};

use super::value::{Owned, SharedList, SharedMap, charge_or_fail, equal, list_contains};
use crate::policy::quantity::Quantity;

type R<'b, 'v> = Result<CowVal<'b, 'v>, ExecutionError>;

/// The environment every CEL policy compiles and runs in (built once).
pub(crate) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    // Declaring only fails on a programming error (a duplicate overload), which the tests
    // catch with `try_build`; the environment is still usable without the failed part.
    Arc::new(try_build().unwrap_or_else(|failed| failed.0))
});

/// The environment, or the environment and the first declaration that failed.
fn try_build() -> Result<Env, Box<(Env, ::cel::DeclarationError)>> {
    let mut env = Env::stdlib();
    // Charged versions of the string functions whose result can be much larger than their
    // input, declared first (with a `dyn` argument or receiver) so they are the overloads calls
    // find.
    if let Err(e) = register_charged_strings(&mut env) {
        return Err(Box::new((env, e)));
    }
    // The strings extension (charAt, indexOf, lastIndexOf, join, lowerAscii, upperAscii, trim,
    // replace, split, substring, format, strings.quote, reverse) is cel-go's, as the API
    // server's.
    if let Err(e) = env.add_extension(::cel::extensions::strings) {
        return Err(Box::new((env, e)));
    }
    if let Err(e) = register(&mut env) {
        return Err(Box::new((env, e)));
    }
    if let Err(e) = register_comparisons(&mut env) {
        return Err(Box::new((env, e)));
    }
    if let Err(e) = register_matches(&mut env) {
        return Err(Box::new((env, e)));
    }
    Ok(env)
}

/// A pattern is compiled once and kept; past `KEPT_PATTERNS` the kept ones are dropped, never
/// more than that many kept; a pattern too long or too large to keep still compiles for its
/// call, with the default limits.
#[cfg(test)]
#[test]
fn patterns_are_compiled_once_and_kept_within_bounds() {
    // A pattern of its own, so other tests running beside this one cannot clear it between
    // the two calls unless they fill the whole cache (they use a few patterns each).
    let a = compiled("^kept-once-[0-9]+$").unwrap();
    let b = compiled("^kept-once-[0-9]+$").unwrap();
    assert!(Arc::ptr_eq(&a, &b), "compiled twice");
    for i in 0..3 * KEPT_PATTERNS {
        assert!(
            compiled(&format!("^p{i}$"))
                .unwrap()
                .is_match(&format!("p{i}"))
        );
        assert!(PATTERNS.lock().unwrap().len() <= KEPT_PATTERNS);
    }
    let long = format!("^{}$", "a".repeat(KEPT_PATTERN_LEN));
    assert!(
        compiled(&long)
            .unwrap()
            .is_match(&"a".repeat(KEPT_PATTERN_LEN))
    );
    assert!(!PATTERNS.lock().unwrap().contains_key(long.as_str()));
    // Larger compiled than a kept pattern may be, within the default limit.
    let large = r"\w{50}";
    assert!(
        regex::RegexBuilder::new(large)
            .size_limit(KEPT_PROGRAM_SIZE)
            .build()
            .is_err()
    );
    assert!(compiled(large).unwrap().is_match(&"q".repeat(50)));
    assert!(!PATTERNS.lock().unwrap().contains_key(large));
    assert!(compiled("(").is_err());
}

#[cfg(test)]
#[test]
fn every_declaration_succeeds() {
    assert!(try_build().is_ok(), "{:?}", try_build().err().map(|f| f.1));
}

fn register_charged_strings(env: &mut Env) -> Result<(), ::cel::DeclarationError> {
    env.add_member_overload("split", "charged_split", STRING_TYPE, vec![DYN_TYPE], split)?;
    env.add_member_overload(
        "split",
        "charged_split_n",
        STRING_TYPE,
        vec![DYN_TYPE, INT_TYPE],
        split,
    )?;
    env.add_member_overload("join", "charged_join", DYN_TYPE, vec![], join)?;
    env.add_member_overload("join", "charged_join_sep", DYN_TYPE, vec![DYN_TYPE], join)?;
    env.add_member_overload(
        "replace",
        "charged_replace",
        STRING_TYPE,
        vec![DYN_TYPE, DYN_TYPE],
        replace,
    )?;
    env.add_member_overload(
        "replace",
        "charged_replace_n",
        STRING_TYPE,
        vec![DYN_TYPE, DYN_TYPE, INT_TYPE],
        replace,
    )?;
    Ok(())
}

/// What `==`, `!=` and `in` become where an operand could be a part of the object (see
/// `rewrite` in the `cel` kind): names no expression can spell.
pub(crate) const EQUALS: &str = "@gatehouse_equals";
pub(crate) const NOT_EQUALS: &str = "@gatehouse_not_equals";
pub(crate) const IN: &str = "@gatehouse_in";

fn register_comparisons(env: &mut Env) -> Result<(), ::cel::DeclarationError> {
    env.add_overload(EQUALS, EQUALS, vec![DYN_TYPE, DYN_TYPE], |args| {
        let (a, b) = pair(&args, "==")?;
        owned(CelBool::from(equal(a, b)))
    })?;
    env.add_overload(NOT_EQUALS, NOT_EQUALS, vec![DYN_TYPE, DYN_TYPE], |args| {
        let (a, b) = pair(&args, "!=")?;
        owned(CelBool::from(!equal(a, b)))
    })?;
    env.add_overload(IN, IN, vec![DYN_TYPE, DYN_TYPE], contains)
}

/// The two operands of a comparison.
fn pair<'a, 'v>(
    args: &'a [CowVal<'_, 'v>],
    f: &str,
) -> Result<(&'a (dyn Val + 'v), &'a (dyn Val + 'v)), ExecutionError> {
    match args {
        [a, b] => Ok((a.as_ref(), b.as_ref())),
        _ => Err(err(f, "expects two operands")),
    }
}

/// `x in c`: for a list, whether an item equals `x` (of any representation); otherwise as the
/// interpreter's `in` answers, with its errors.
fn contains<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let (needle, haystack) = pair(&args, "in")?;
    if let Some(found) = list_contains(haystack, needle) {
        return owned(CelBool::from(found));
    }
    let overload = || {
        ExecutionError::no_such_overload(
            ::cel::common::ast::operators::IN,
            vec![
                needle.get_type().name().to_owned(),
                haystack.get_type().name().to_owned(),
            ],
        )
    };
    let container = haystack.as_container().ok_or_else(overload)?;
    match container.contains(needle) {
        Ok(found) => owned(CelBool::from(found)),
        Err(
            ExecutionError::NoSuchOverload(_)
            | ExecutionError::ValuesNotComparable(_, _)
            | ExecutionError::UnsupportedKeyType(_)
            | ExecutionError::UnexpectedType { .. },
        ) => Err(overload()),
        Err(e) => Err(e),
    }
}

fn register(env: &mut Env) -> Result<(), ::cel::DeclarationError> {
    env.add_member_overload("isSorted", "list_is_sorted", LIST_TYPE, vec![], is_sorted)?;
    env.add_member_overload("sum", "list_sum", LIST_TYPE, vec![], sum)?;
    env.add_member_overload("min", "list_min", LIST_TYPE, vec![], min)?;
    env.add_member_overload("max", "list_max", LIST_TYPE, vec![], max)?;
    env.add_member_overload(
        "indexOf",
        "list_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        index_of,
    )?;
    env.add_member_overload(
        "lastIndexOf",
        "list_last_index_of",
        LIST_TYPE,
        vec![DYN_TYPE],
        last_index_of,
    )?;
    env.add_member_overload("find", "string_find", STRING_TYPE, vec![STRING_TYPE], find)?;
    env.add_member_overload(
        "findAll",
        "string_find_all",
        STRING_TYPE,
        vec![STRING_TYPE],
        find_all,
    )?;
    env.add_member_overload(
        "findAll",
        "string_find_all_n",
        STRING_TYPE,
        vec![STRING_TYPE, INT_TYPE],
        find_all,
    )?;
    env.add_overload("quantity", "quantity", vec![STRING_TYPE], quantity)?;
    env.add_overload("isQuantity", "is_quantity", vec![STRING_TYPE], is_quantity)?;
    for (name, f) in QUANTITY_UNARY {
        env.add_member_overload(name, name, QUANTITY_TYPE, vec![], f)?;
    }
    for (name, f) in QUANTITY_BINARY {
        env.add_member_overload(name, name, QUANTITY_TYPE, vec![QUANTITY_TYPE], f)?;
    }
    for (name, f) in QUANTITY_WITH_INT {
        env.add_member_overload(
            name,
            &format!("{name}_int"),
            QUANTITY_TYPE,
            vec![INT_TYPE],
            f,
        )?;
    }
    env.add_overload("url", "url", vec![STRING_TYPE], url)?;
    env.add_overload("isURL", "is_url", vec![STRING_TYPE], is_url)?;
    for (name, f) in [
        (
            "getScheme",
            url_scheme as ::cel::common::functions::Function,
        ),
        ("getHost", url_host),
        ("getHostname", url_hostname),
        ("getPort", url_port),
        ("getEscapedPath", url_path),
        ("getQuery", url_query),
    ] {
        env.add_member_overload(name, name, URL_TYPE, vec![], f)?;
    }
    Ok(())
}

fn err(function: &str, message: impl ToString) -> ExecutionError {
    ExecutionError::function_error(function, message)
}

fn owned<'b, 'v>(v: impl Val + 'static) -> R<'b, 'v> {
    Ok(CowVal::owned(v))
}

fn string_arg<'a>(
    args: &'a [CowVal<'_, '_>],
    i: usize,
    f: &str,
) -> Result<&'a str, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelString>())
        .map(|s| s.inner())
        .ok_or_else(|| err(f, "expects a string argument"))
}

fn int_arg(args: &[CowVal<'_, '_>], i: usize, f: &str) -> Result<i64, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<CelInt>())
        .map(|n| *n.inner())
        .ok_or_else(|| err(f, "expects an int argument"))
}

/// The elements of the list receiver, after charging one unit each.
fn elements<'a, 'v>(
    args: &'a [CowVal<'_, 'v>],
    f: &str,
) -> Result<Vec<&'a (dyn Val + 'v)>, ExecutionError> {
    let list = args
        .first()
        .and_then(|a| a.as_iterable())
        .ok_or_else(|| err(f, "expects a list"))?;
    let mut out = Vec::new();
    let mut it = list.iter();
    while let Some(v) = it.next() {
        out.push(v);
    }
    charge_or_fail(f, out.len() as u64 + 1)?;
    Ok(out)
}

fn compare(a: &dyn Val, b: &dyn Val, f: &str) -> Result<Ordering, ExecutionError> {
    a.as_comparer()
        .ok_or_else(|| err(f, format!("cannot compare {}", a.get_type().name())))?
        .compare(b)
}

// --- strings whose result outgrows their input -----------------------------------------------

/// `s.split(sep)`, `s.split(sep, n)`, as Go's `strings.SplitN` (an empty separator splits
/// into characters; `n < 0` means all, `n == 0` none). One unit per resulting part.
fn split<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = string_arg(&args, 0, "split")?;
    let sep = string_arg(&args, 1, "split")?;
    let n = if args.len() > 2 {
        int_arg(&args, 2, "split")?
    } else {
        -1
    };
    let parts = if sep.is_empty() {
        s.chars().count()
    } else {
        s.matches(sep).count() + 1
    };
    charge_or_fail("split", parts as u64 + 1)?;
    let out: Vec<String> = match n {
        0 => Vec::new(),
        n if n < 0 => {
            if sep.is_empty() {
                s.chars().map(String::from).collect()
            } else {
                s.split(sep).map(str::to_owned).collect()
            }
        }
        n => {
            let n = n as usize;
            if sep.is_empty() {
                let chars: Vec<char> = s.chars().collect();
                let mut out: Vec<String> = chars
                    .iter()
                    .take(n.saturating_sub(1))
                    .map(|c| c.to_string())
                    .collect();
                if chars.len() >= n {
                    out.push(chars[n - 1..].iter().collect());
                }
                out
            } else {
                s.splitn(n, sep).map(str::to_owned).collect()
            }
        }
    };
    let items: Vec<Owned> = out
        .into_iter()
        .map(|p| Box::new(CelString::from(p)) as Owned)
        .collect();
    owned(CelList::from(items))
}

/// `list.join()`, `list.join(sep)`: one unit per 8 bytes of the result.
fn join<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let items = elements(&args, "join")?;
    let sep = if args.len() > 1 {
        string_arg(&args, 1, "join")?
    } else {
        ""
    };
    let mut parts = Vec::with_capacity(items.len());
    for v in &items {
        parts.push(
            v.downcast_ref::<CelString>()
                .map(|s| s.inner())
                .ok_or_else(|| err("join", "list elements must be strings"))?,
        );
    }
    let total: usize = parts.iter().map(|p| p.len()).sum::<usize>() + sep.len() * parts.len();
    charge_or_fail("join", total as u64 / 8 + 1)?;
    owned(CelString::from(parts.join(sep)))
}

/// `s.replace(old, new)`, `s.replace(old, new, n)`: charged one unit per 8 bytes of the result,
/// before it is built.
fn replace<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = string_arg(&args, 0, "replace")?;
    let old = string_arg(&args, 1, "replace")?;
    let new = string_arg(&args, 2, "replace")?;
    let n = if args.len() > 3 {
        int_arg(&args, 3, "replace")?
    } else {
        -1
    };
    let found = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old).count()
    };
    let count = if n < 0 { found } else { found.min(n as usize) };
    let size = s.len() + count * new.len();
    charge_or_fail("replace", size as u64 / 8 + 1)?;
    let out = if n < 0 {
        s.replace(old, new)
    } else {
        s.replacen(old, new, n as usize)
    };
    owned(CelString::from(out))
}

// --- lists -----------------------------------------------------------------------------------

fn is_sorted<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let items = elements(&args, "isSorted")?;
    for pair in items.windows(2) {
        if compare(pair[0], pair[1], "isSorted")? == Ordering::Greater {
            return owned(CelBool::from(false));
        }
    }
    owned(CelBool::from(true))
}

fn sum<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let items = elements(&args, "sum")?;
    if items.iter().all(|v| v.downcast_ref::<CelInt>().is_some()) {
        let mut total: i64 = 0;
        for v in &items {
            let n = v.downcast_ref::<CelInt>().map(|n| *n.inner()).unwrap_or(0);
            total = total
                .checked_add(n)
                .ok_or_else(|| err("sum", "integer overflow"))?;
        }
        return owned(CelInt::from(total));
    }
    let mut total = 0.0;
    for v in &items {
        total += v
            .downcast_ref::<CelDouble>()
            .map(|d| *d.inner())
            .ok_or_else(|| err("sum", "list elements must be all int or all double"))?;
    }
    owned(CelDouble::from(total))
}

fn extreme<'b, 'v>(args: Vec<CowVal<'b, 'v>>, f: &str, want: Ordering) -> R<'b, 'v> {
    let items = elements(&args, f)?;
    let mut best = *items
        .first()
        .ok_or_else(|| err(f, format!("{f} called on empty list")))?;
    for v in &items[1..] {
        if compare(*v, best, f)? == want {
            best = *v;
        }
    }
    Ok(CowVal::Owned(best.clone_as_boxed()))
}

fn min<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    extreme(args, "min", Ordering::Less)
}

fn max<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    extreme(args, "max", Ordering::Greater)
}

fn index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let items = elements(&args, "indexOf")?;
    let needle = args
        .get(1)
        .ok_or_else(|| err("indexOf", "expects a value"))?;
    let i = items.iter().position(|v| equal(*v, needle.as_ref()));
    owned(CelInt::from(i.map_or(-1, |i| i as i64)))
}

fn last_index_of<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let items = elements(&args, "lastIndexOf")?;
    let needle = args
        .get(1)
        .ok_or_else(|| err("lastIndexOf", "expects a value"))?;
    let i = items.iter().rposition(|v| equal(*v, needle.as_ref()));
    owned(CelInt::from(i.map_or(-1, |i| i as i64)))
}

// --- regex -----------------------------------------------------------------------------------

fn regex(pattern: &str, f: &str) -> Result<Arc<regex::Regex>, ExecutionError> {
    compiled(pattern).map_err(|e| err(f, format!("invalid regular expression: {e}")))
}

/// How many compiled patterns are kept, how long a kept pattern may be, and how large its
/// compiled program and each of its lazy DFA caches may grow (a pattern over these limits is
/// compiled with the default limits for its call alone, as every call did before): at most
/// about 32 × (256 KiB + 128 KiB per thread) even if expressions match against patterns
/// taken from the objects they judge.
const KEPT_PATTERNS: usize = 32;
const KEPT_PATTERN_LEN: usize = 1024;
const KEPT_PROGRAM_SIZE: usize = 256 * 1024;
const KEPT_DFA_SIZE: usize = 128 * 1024;

/// Compiled patterns by their text. Compiling a pattern costs far more than matching it (a
/// label pattern: some 290 k instructions, against a few hundred to match a label), and a
/// policy matches the same few patterns on every review.
static PATTERNS: LazyLock<std::sync::Mutex<HashMap<Box<str>, Arc<regex::Regex>>>> =
    LazyLock::new(Default::default);

/// `pattern` compiled, from [`PATTERNS`] when it was compiled before.
fn compiled(pattern: &str) -> Result<Arc<regex::Regex>, regex::Error> {
    if pattern.len() > KEPT_PATTERN_LEN {
        return regex::Regex::new(pattern).map(Arc::new);
    }
    let lock = || {
        PATTERNS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    if let Some(re) = lock().get(pattern) {
        return Ok(Arc::clone(re));
    }
    let kept = regex::RegexBuilder::new(pattern)
        .size_limit(KEPT_PROGRAM_SIZE)
        .dfa_size_limit(KEPT_DFA_SIZE)
        .build();
    let Ok(re) = kept else {
        // Too large to keep, or not a pattern: the default limits decide, as before.
        return regex::Regex::new(pattern).map(Arc::new);
    };
    let re = Arc::new(re);
    let mut kept = lock();
    if kept.len() >= KEPT_PATTERNS {
        kept.clear();
    }
    kept.insert(pattern.into(), Arc::clone(&re));
    Ok(re)
}

/// What `s.matches(re)` and `matches(s, re)` become (see `rewrite` in the `cel` kind): the
/// standard library's `matches` with the compiled pattern kept ([`compiled`]). Names no
/// expression can spell.
pub(crate) const MATCHES: &str = "@gatehouse_matches";
pub(crate) const MATCHES_FN: &str = "@gatehouse_matches_fn";

/// The standard library's `matches`: the same result, and the same errors (cel-rust's
/// `string.rs`: a pattern that does not compile, or arguments that are not strings).
/// `args` are `(s, re)`, or for the member form `(re, s)` (see `rewrite`).
fn matches<'b, 'v>(args: &[CowVal<'b, 'v>], member: bool) -> R<'b, 'v> {
    let (si, ri) = if member { (1, 0) } else { (0, 1) };
    let text = |i: usize| args.get(i).and_then(|a| a.downcast_ref::<CelString>());
    let (Some(s), Some(re), 2) = (text(si), text(ri), args.len()) else {
        let types = [si, ri]
            .iter()
            .filter_map(|&i| args.get(i))
            .map(|a| a.get_type().name().to_owned())
            .collect();
        return Err(if member {
            ExecutionError::no_such_member_overload("matches", types)
        } else {
            ExecutionError::no_such_overload("matches", types)
        });
    };
    match compiled(re.inner()) {
        Ok(compiled) => owned(CelBool::from(compiled.is_match(s.inner()))),
        Err(e) => Err(err(
            "matches",
            format!("'{}' not a valid regex:\n{e}", re.inner()),
        )),
    }
}

fn register_matches(env: &mut Env) -> Result<(), ::cel::DeclarationError> {
    env.add_overload(MATCHES, MATCHES, vec![DYN_TYPE, DYN_TYPE], |args| {
        matches(&args, true)
    })?;
    env.add_overload(MATCHES_FN, MATCHES_FN, vec![DYN_TYPE, DYN_TYPE], |args| {
        matches(&args, false)
    })
}

fn find<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = string_arg(&args, 0, "find")?;
    let re = regex(string_arg(&args, 1, "find")?, "find")?;
    charge_or_fail("find", s.len() as u64 / 8 + 1)?;
    let found = re
        .find(s)
        .map(|m| m.as_str().to_owned())
        .unwrap_or_default();
    owned(CelString::from(found))
}

fn find_all<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let s = string_arg(&args, 0, "findAll")?;
    let re = regex(string_arg(&args, 1, "findAll")?, "findAll")?;
    let limit = if args.len() > 2 {
        int_arg(&args, 2, "findAll")?
    } else {
        -1
    };
    charge_or_fail("findAll", s.len() as u64 / 8 + 1)?;
    let take = if limit < 0 {
        usize::MAX
    } else {
        limit as usize
    };
    let found: Vec<Owned> = re
        .find_iter(s)
        .take(take)
        .map(|m| Box::new(CelString::from(m.as_str().to_owned())) as Owned)
        .collect();
    owned(CelList::from(found))
}

// --- quantity --------------------------------------------------------------------------------

const QUANTITY_TYPE: Type = Type::new_unspecified_type("kubernetes.Quantity");
static QUANTITY_TYPE_STATIC: Type = QUANTITY_TYPE;

/// A Kubernetes resource quantity as a CEL value.
#[derive(Debug, Clone)]
pub(crate) struct QuantityVal(Quantity);

impl Val for QuantityVal {
    fn get_type(&self) -> &Type {
        &QUANTITY_TYPE_STATIC
    }

    fn cel_type() -> &'static Type {
        &QUANTITY_TYPE_STATIC
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other
            .downcast_ref::<QuantityVal>()
            .is_some_and(|o| o.0 == self.0)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl StaticVal for QuantityVal {}

fn quantity<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let text = string_arg(&args, 0, "quantity")?;
    let q = Quantity::parse(text).map_err(|_| err("quantity", "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"))?;
    owned(QuantityVal(q))
}

fn is_quantity<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let text = string_arg(&args, 0, "isQuantity")?;
    owned(CelBool::from(Quantity::parse(text).is_ok()))
}

fn q_arg(args: &[CowVal<'_, '_>], i: usize, f: &str) -> Result<i128, ExecutionError> {
    args.get(i)
        .and_then(|a| a.downcast_ref::<QuantityVal>())
        .map(|q| q.0.nanos())
        .ok_or_else(|| err(f, "expects a quantity"))
}

const NANOS: i128 = 1_000_000_000;

fn q_is_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let n = q_arg(&args, 0, "isInteger")?;
    owned(CelBool::from(
        n % NANOS == 0 && i64::try_from(n / NANOS).is_ok(),
    ))
}

fn q_as_integer<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let n = q_arg(&args, 0, "asInteger")?;
    if n % NANOS != 0 {
        return Err(err("asInteger", "cannot convert value to integer"));
    }
    let i = i64::try_from(n / NANOS)
        .map_err(|_| err("asInteger", "cannot convert value to integer"))?;
    owned(CelInt::from(i))
}

fn q_as_float<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let n = q_arg(&args, 0, "asApproximateFloat")?;
    owned(CelDouble::from(n as f64 / NANOS as f64))
}

fn q_sign<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let n = q_arg(&args, 0, "sign")?;
    owned(CelInt::from(n.signum() as i64))
}

type Function = ::cel::common::functions::Function;

/// The quantity methods, as registered: without an argument, with a quantity, with an int
/// (after the quantity overload of the same name).
const QUANTITY_UNARY: [(&str, Function); 4] = [
    ("isInteger", q_is_integer),
    ("asInteger", q_as_integer),
    ("asApproximateFloat", q_as_float),
    ("sign", q_sign),
];
const QUANTITY_BINARY: [(&str, Function); 5] = [
    ("isGreaterThan", q_greater),
    ("isLessThan", q_less),
    ("compareTo", q_compare),
    ("add", q_add),
    ("sub", q_sub),
];
const QUANTITY_WITH_INT: [(&str, Function); 2] = [("add", q_add), ("sub", q_sub)];

/// The quantity method the interpreter calls for `target.name(args)` (the first registered
/// overload whose types the values have, as its overload search finds it), for the direct
/// evaluator; `None` when `target` is not a quantity or no overload takes `args`.
pub(crate) fn quantity_method(
    name: &str,
    target: &dyn Val,
    args: &[CowVal<'_, '_>],
) -> Option<Function> {
    target.downcast_ref::<QuantityVal>()?;
    let find = |table: &[(&str, Function)]| table.iter().find(|(n, _)| *n == name).map(|(_, f)| *f);
    match args {
        [] => find(&QUANTITY_UNARY),
        [a] if a.downcast_ref::<QuantityVal>().is_some() => find(&QUANTITY_BINARY),
        [a] if a.downcast_ref::<CelInt>().is_some() => find(&QUANTITY_WITH_INT),
        _ => None,
    }
}

fn q_compare_args(args: &[CowVal<'_, '_>], f: &str) -> Result<Ordering, ExecutionError> {
    Ok(q_arg(args, 0, f)?.cmp(&q_arg(args, 1, f)?))
}

fn q_greater<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    owned(CelBool::from(
        q_compare_args(&args, "isGreaterThan")? == Ordering::Greater,
    ))
}

fn q_less<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    owned(CelBool::from(
        q_compare_args(&args, "isLessThan")? == Ordering::Less,
    ))
}

fn q_compare<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    owned(CelInt::from(match q_compare_args(&args, "compareTo")? {
        Ordering::Less => -1,
        Ordering::Equal => 0,
        Ordering::Greater => 1,
    }))
}

/// The second argument in nano-units: a quantity or an int.
fn q_operand(args: &[CowVal<'_, '_>], f: &str) -> Result<i128, ExecutionError> {
    match args.get(1).and_then(|a| a.downcast_ref::<CelInt>()) {
        Some(i) => Ok(i128::from(*i.inner()) * NANOS),
        None => q_arg(args, 1, f),
    }
}

fn q_from_nanos(n: i128, f: &str) -> R<'static, 'static> {
    let q = Quantity::parse(&format!("{n}n")).map_err(|_| err(f, "result out of range"))?;
    owned(QuantityVal(q))
}

fn q_add<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let a = q_arg(&args, 0, "add")?;
    let b = q_operand(&args, "add")?;
    let n = a.checked_add(b).ok_or_else(|| err("add", "overflow"))?;
    Ok(CowVal::Owned(q_from_nanos(n, "add")?.into_owned()))
}

fn q_sub<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let a = q_arg(&args, 0, "sub")?;
    let b = q_operand(&args, "sub")?;
    let n = a.checked_sub(b).ok_or_else(|| err("sub", "overflow"))?;
    Ok(CowVal::Owned(q_from_nanos(n, "sub")?.into_owned()))
}

// --- url -------------------------------------------------------------------------------------

const URL_TYPE: Type = Type::new_unspecified_type("kubernetes.URL");
static URL_TYPE_STATIC: Type = URL_TYPE;

/// A URL as Go's `url.ParseRequestURI` splits it (the API server's `url()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct UrlVal {
    scheme: String,
    host: String,
    path: String,
    query: String,
}

impl Val for UrlVal {
    fn get_type(&self) -> &Type {
        &URL_TYPE_STATIC
    }

    fn cel_type() -> &'static Type {
        &URL_TYPE_STATIC
    }

    fn equals(&self, other: &dyn Val) -> bool {
        other.downcast_ref::<UrlVal>().is_some_and(|o| o == self)
    }

    fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v> {
        Box::new(self.clone())
    }

    fn as_any(&self) -> Option<&dyn std::any::Any> {
        Some(self)
    }
}

impl StaticVal for UrlVal {}

/// Parses an absolute URL (`https://host:port/path?query`) or an absolute path (`/path`), as
/// `url.ParseRequestURI`; the fragment is not allowed.
fn parse_url(text: &str) -> Option<UrlVal> {
    if text.is_empty() || text.contains('#') || text.chars().any(|c| c.is_control() || c == ' ') {
        return None;
    }
    let (scheme, rest) = if text.starts_with('/') {
        (String::new(), text)
    } else {
        let (scheme, rest) = text.split_once(':')?;
        let mut chars = scheme.chars();
        let first = chars.next()?;
        if !first.is_ascii_alphabetic()
            || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        {
            return None;
        }
        if !rest.starts_with('/') {
            return None;
        }
        (scheme.to_owned(), rest)
    };
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q.to_owned()),
        None => (rest, String::new()),
    };
    let (host, path) = match rest.strip_prefix("//") {
        Some(after) => {
            let end = after.find('/').unwrap_or(after.len());
            let authority = &after[..end];
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            (host.to_owned(), after[end..].to_owned())
        }
        None => (String::new(), rest.to_owned()),
    };
    Some(UrlVal {
        scheme,
        host,
        path,
        query,
    })
}

fn url<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let text = string_arg(&args, 0, "url")?;
    charge_or_fail("url", text.len() as u64 / 8 + 1)?;
    let u = parse_url(text).ok_or_else(|| err("url", format!("URL parse error during conversion from string: parse \"{text}\": invalid URI for request")))?;
    owned(u)
}

fn is_url<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let text = string_arg(&args, 0, "isURL")?;
    owned(CelBool::from(parse_url(text).is_some()))
}

fn url_arg<'a>(args: &'a [CowVal<'_, '_>], f: &str) -> Result<&'a UrlVal, ExecutionError> {
    args.first()
        .and_then(|a| a.downcast_ref::<UrlVal>())
        .ok_or_else(|| err(f, "expects a URL"))
}

/// Host and port, with an IPv6 literal's brackets removed from the host.
fn split_host(host: &str) -> (&str, &str) {
    if let Some(rest) = host.strip_prefix('[') {
        return match rest.split_once(']') {
            Some((h, after)) => (h, after.strip_prefix(':').unwrap_or("")),
            None => (rest, ""),
        };
    }
    match host.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (host, ""),
    }
}

fn url_scheme<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    owned(CelString::from(url_arg(&args, "getScheme")?.scheme.clone()))
}

fn url_host<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    owned(CelString::from(url_arg(&args, "getHost")?.host.clone()))
}

fn url_hostname<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let u = url_arg(&args, "getHostname")?;
    owned(CelString::from(split_host(&u.host).0.to_owned()))
}

fn url_port<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let u = url_arg(&args, "getPort")?;
    owned(CelString::from(split_host(&u.host).1.to_owned()))
}

fn url_path<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    owned(CelString::from(
        url_arg(&args, "getEscapedPath")?.path.clone(),
    ))
}

fn url_query<'b, 'v>(args: Vec<CowVal<'b, 'v>>) -> R<'b, 'v> {
    let u = url_arg(&args, "getQuery")?;
    let mut map: HashMap<String, Vec<Owned>> = HashMap::new();
    for pair in u.query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.entry(unescape(k))
            .or_default()
            .push(Box::new(CelString::from(unescape(v))));
    }
    let entries = map
        .into_iter()
        .map(|(k, v)| (CelMapKey::from(k), Box::new(SharedList::new(v)) as Owned))
        .collect();
    owned(SharedMap::new(entries))
}

/// Query unescaping: `+` is a space, `%XX` a byte.
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
