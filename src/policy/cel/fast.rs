//! A direct evaluator for the common run of CEL expressions, beside cel-rust's interpreter.
//!
//! The interpreter pays for generality on every node: a qualified name is joined into a
//! string and looked up prefix by prefix through every scope (`c.image` asks for `c.image`,
//! then `c`), every call builds an argument vector and searches the overloads by name and
//! type, `!` and the comparisons build their error before they know there is one. A
//! [`Plan`] is the expression resolved once at load: names to scope slots or to the
//! resolver names the interpreter would ask for, calls to the operation they reach.
//!
//! It runs the happy path only. Each step applies the operation the interpreter applies
//! (the values' own traits, the same resolver with the same names in the same order, the
//! same overloads for global functions and the library's quantity methods, the same string
//! and optional methods written out), so a result it gives is the interpreter's result,
//! charged to the budget alike. Whatever is not plainly that, an error of any kind, a value
//! of a type the step does not expect, a function it does not know, ends it with `None`: the
//! caller restores the budget and the interpreter evaluates the expression from the start
//! and reports as it always does. An expression with a construct it does not plan (indexing,
//! arithmetic other than `+`, map literals, other methods) has no plan at all.

use ::cel::common::ast::{Expr, IdedExpr, LiteralValue, operators};
use ::cel::common::types::{CelBool, CelInt, CelList, CelOptional, CelString};
use ::cel::common::value::{CowVal, Val};
use ::cel::context::VariableResolver;

use super::library;

/// The root names the resolver answers (the interpreter asks it for them after the
/// comprehension scopes).
const ROOTS: [&str; 5] = ["object", "oldObject", "request", "params", "variables"];

/// An expression planned for [`Plan::eval`].
#[derive(Debug)]
pub(super) struct Plan(Node);

#[derive(Debug)]
enum Node {
    Literal(LiteralValue),
    /// A comprehension variable: how many bindings up from the innermost.
    Var(usize),
    /// A root name and the fields selected on it (`object.spec.replicas`), as the
    /// interpreter resolves it: the resolver asked for the longest prefix first
    /// (`prefixes[0]` is the whole name), then each shorter one, and the fields after the
    /// first prefix it answers are selected one by one.
    Name {
        prefixes: Vec<String>,
        fields: Vec<String>,
    },
    Select(Box<Node>, String),
    /// `operand.?field`.
    OptSelect(Box<Node>, String),
    /// `has(operand.field)`.
    Has(Box<Node>, String),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    NotStrictlyFalse(Box<Node>),
    Conditional(Box<Node>, Box<Node>, Box<Node>),
    Equals(Box<Node>, Box<Node>, bool),
    Compare(Box<Node>, Box<Node>, Order),
    Add(Box<Node>, Box<Node>),
    /// `a in b` with the interpreter's own operator (see `rewrite` in the parent module).
    In(Box<Node>, Box<Node>),
    List(Vec<Node>),
    /// A global function: the overload the interpreter finds by name and argument types.
    Global(String, Vec<Node>),
    Method(Method, Box<Node>, Vec<Node>),
    /// `all` and `exists` (and any comprehension whose step is plain): the accumulator and
    /// then the item are bound for `cond` and `step`.
    Fold {
        init: Box<Node>,
        range: Box<Node>,
        cond: Box<Node>,
        step: Box<Node>,
        result: Box<Node>,
    },
    /// `map` and `filter`: `guard ? @result + [items…] : @result`, built in place as the
    /// interpreter builds it. Only the item is bound.
    Append {
        range: Box<Node>,
        guard: Option<Box<Node>>,
        items: Vec<Node>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Order {
    Less,
    LessEqual,
    Greater,
    GreaterEqual,
}

/// Methods: string functions of the standard library and the strings extension (on a string
/// receiver with string or int arguments exactly as their overloads take them), the optional
/// methods, and the library's quantity methods.
#[derive(Debug, Clone)]
enum Method {
    StartsWith,
    EndsWith,
    Contains,
    IndexOf,
    LastIndexOf,
    Substring,
    /// `orValue`, `hasValue` and `value` on an optional.
    OrValue,
    HasValue,
    Value,
    /// A quantity method of the library ([`library::quantity_method`]).
    Quantity(String),
}

impl Plan {
    /// The plan of `e`, or `None` when it holds anything not planned.
    pub(super) fn of(e: &IdedExpr) -> Option<Plan> {
        plan(e, &mut Vec::new()).map(Plan)
    }

    /// The expression's value, or `None` for the interpreter to evaluate it.
    pub(super) fn eval<'x>(&'x self, resolver: &'x dyn VariableResolver) -> Option<CowVal<'x, 'x>> {
        let run = Run { resolver };
        run.eval(&self.0, None)
    }
}

fn plan(e: &IdedExpr, bound: &mut Vec<String>) -> Option<Node> {
    Some(match &e.expr {
        Expr::Literal(l) => match l {
            LiteralValue::Bytes(_) => return None,
            l => Node::Literal(l.clone()),
        },
        Expr::Ident(name) => name_node(name, &[], bound)?,
        Expr::Select(sel) if sel.test => {
            Node::Has(Box::new(plan(&sel.operand, bound)?), sel.field.clone())
        }
        Expr::Select(sel) => {
            // A chain of fields on a name is resolved as a whole, as the interpreter does.
            let mut fields = vec![sel.field.as_str()];
            let mut at = &sel.operand.expr;
            loop {
                match at {
                    Expr::Select(s) if !s.test => {
                        fields.push(s.field.as_str());
                        at = &s.operand.expr;
                    }
                    Expr::Ident(root) => {
                        fields.reverse();
                        break name_node(root, &fields, bound)?;
                    }
                    _ => {
                        break Node::Select(
                            Box::new(plan(&sel.operand, bound)?),
                            sel.field.clone(),
                        );
                    }
                }
            }
        }
        Expr::List(list) => {
            if !list.optional_indices.is_empty() {
                return None;
            }
            Node::List(
                list.elements
                    .iter()
                    .map(|x| plan(x, bound))
                    .collect::<Option<_>>()?,
            )
        }
        Expr::Call(call) => return plan_call(call, bound),
        Expr::Comprehension(c) => {
            if c.iter_var2.is_some() {
                return None;
            }
            if let Some(append) = append_step(c, bound) {
                return append;
            }
            let init = Box::new(plan(&c.accu_init, bound)?);
            let range = Box::new(plan(&c.iter_range, bound)?);
            bound.push(c.accu_var.clone());
            let cond = plan(&c.loop_cond, bound);
            bound.push(c.iter_var.clone());
            let step = plan(&c.loop_step, bound);
            bound.pop();
            let result = plan(&c.result, bound);
            bound.pop();
            Node::Fold {
                init,
                range,
                cond: Box::new(cond?),
                step: Box::new(step?),
                result: Box::new(result?),
            }
        }
        Expr::Map(_) | Expr::Struct(_) | Expr::Unspecified => return None,
    })
}

/// `name` (with `fields` selected on it): a comprehension variable, else a root name.
fn name_node(name: &str, fields: &[&str], bound: &[String]) -> Option<Node> {
    if let Some(up) = bound.iter().rev().position(|b| b == name) {
        let mut node = Node::Var(up);
        for f in fields {
            node = Node::Select(Box::new(node), (*f).to_owned());
        }
        return Some(node);
    }
    if !ROOTS.contains(&name) {
        return None;
    }
    let mut prefixes = Vec::with_capacity(fields.len() + 1);
    for n in (0..=fields.len()).rev() {
        let mut p = name.to_owned();
        for f in &fields[..n] {
            p.push('.');
            p.push_str(f);
        }
        prefixes.push(p);
    }
    Some(Node::Name {
        prefixes,
        fields: fields.iter().map(|f| (*f).to_owned()).collect(),
    })
}

/// A `map` or `filter` comprehension, in the shape the interpreter builds in place (its
/// `AppendStep`): starting from an empty list, a constant condition, the step
/// `[guard ?] @result + [items…] [: @result]`, the result `@result`.
fn append_step(
    c: &::cel::common::ast::ComprehensionExpr,
    bound: &mut Vec<String>,
) -> Option<Option<Node>> {
    let accu = c.accu_var.as_str();
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == accu);
    let empty_list = matches!(&c.accu_init.expr, Expr::List(l) if l.elements.is_empty());
    let Expr::Literal(LiteralValue::Boolean(cond)) = &c.loop_cond.expr else {
        return None;
    };
    if !is_accu(&c.result) || !empty_list {
        return None;
    }
    fn appended<'e>(e: &'e IdedExpr, accu: &str) -> Option<&'e Vec<IdedExpr>> {
        let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if n == accu);
        match &e.expr {
            Expr::Call(call) if call.func_name == operators::ADD && call.target.is_none() => {
                match call.args.as_slice() {
                    [l, r] if is_accu(l) => match &r.expr {
                        Expr::List(list) if list.optional_indices.is_empty() => {
                            Some(&list.elements)
                        }
                        _ => None,
                    },
                    _ => None,
                }
            }
            _ => None,
        }
    }
    let (guard, items) = match &c.loop_step.expr {
        Expr::Call(call) if call.func_name == operators::CONDITIONAL && call.target.is_none() => {
            match call.args.as_slice() {
                [guard, step, otherwise] if is_accu(otherwise) => {
                    (Some(guard), appended(step, accu)?)
                }
                _ => return None,
            }
        }
        _ => (None, appended(&c.loop_step, accu)?),
    };
    // A constant `false` condition stops before the first item: not worth a plan.
    if !*cond.inner() {
        return Some(None);
    }
    let Some(range) = plan(&c.iter_range, bound) else {
        return Some(None);
    };
    // The accumulator cannot be named in the guard or the items (it is `@result`); only the
    // item is bound.
    bound.push(c.iter_var.clone());
    let guard = guard.map(|g| plan(g, bound).map(Box::new));
    let items: Option<Vec<Node>> = items.iter().map(|x| plan(x, bound)).collect();
    bound.pop();
    Some(match (guard, items) {
        (Some(None), _) | (_, None) => None,
        (guard, Some(items)) => Some(Node::Append {
            range: Box::new(range),
            guard: guard.flatten(),
            items,
        }),
    })
}

fn plan_call(call: &::cel::common::ast::CallExpr, bound: &mut Vec<String>) -> Option<Node> {
    let mut args = || -> Option<Vec<Node>> { call.args.iter().map(|a| plan(a, bound)).collect() };
    if let Some(target) = &call.target {
        let method = match call.func_name.as_str() {
            "startsWith" => Method::StartsWith,
            "endsWith" => Method::EndsWith,
            "contains" => Method::Contains,
            "indexOf" => Method::IndexOf,
            "lastIndexOf" => Method::LastIndexOf,
            "substring" => Method::Substring,
            "orValue" => Method::OrValue,
            "hasValue" => Method::HasValue,
            "value" => Method::Value,
            "isInteger" | "asInteger" | "asApproximateFloat" | "sign" | "isGreaterThan"
            | "isLessThan" | "compareTo" | "add" | "sub" => {
                Method::Quantity(call.func_name.clone())
            }
            _ => return None,
        };
        let arity_ok = match &method {
            Method::Substring => matches!(call.args.len(), 1 | 2),
            Method::HasValue | Method::Value => call.args.is_empty(),
            Method::Quantity(_) => call.args.len() <= 1,
            _ => call.args.len() == 1,
        };
        if !arity_ok {
            return None;
        }
        let args = args()?;
        return Some(Node::Method(method, Box::new(plan(target, bound)?), args));
    }
    let mut args = args()?;
    let two = |args: &mut Vec<Node>| {
        let b = args.pop()?;
        let a = args.pop()?;
        Some((Box::new(a), Box::new(b)))
    };
    Some(match (call.func_name.as_str(), args.len()) {
        (operators::CONDITIONAL, 3) => {
            let (b, c) = two(&mut args)?;
            Node::Conditional(Box::new(args.pop()?), b, c)
        }
        (operators::LOGICAL_AND, 2) => two(&mut args).map(|(a, b)| Node::And(a, b))?,
        (operators::LOGICAL_OR, 2) => two(&mut args).map(|(a, b)| Node::Or(a, b))?,
        (operators::EQUALS, 2) => two(&mut args).map(|(a, b)| Node::Equals(a, b, true))?,
        (operators::NOT_EQUALS, 2) => two(&mut args).map(|(a, b)| Node::Equals(a, b, false))?,
        (operators::LESS, 2) => two(&mut args).map(|(a, b)| Node::Compare(a, b, Order::Less))?,
        (operators::LESS_EQUALS, 2) => {
            two(&mut args).map(|(a, b)| Node::Compare(a, b, Order::LessEqual))?
        }
        (operators::GREATER, 2) => {
            two(&mut args).map(|(a, b)| Node::Compare(a, b, Order::Greater))?
        }
        (operators::GREATER_EQUALS, 2) => {
            two(&mut args).map(|(a, b)| Node::Compare(a, b, Order::GreaterEqual))?
        }
        (operators::ADD, 2) => two(&mut args).map(|(a, b)| Node::Add(a, b))?,
        (operators::IN, 2) => two(&mut args).map(|(a, b)| Node::In(a, b))?,
        (operators::OPT_SELECT, 2) => match &call.args[1].expr {
            Expr::Literal(LiteralValue::String(field)) => {
                args.pop();
                Node::OptSelect(Box::new(args.pop()?), field.inner().to_owned())
            }
            _ => return None,
        },
        (operators::LOGICAL_NOT, 1) => Node::Not(Box::new(args.pop()?)),
        (operators::NOT_STRICTLY_FALSE, 1) => Node::NotStrictlyFalse(Box::new(args.pop()?)),
        // Every other operator the interpreter treats itself (arithmetic but `+`, negation,
        // indexing, optionals) is left to it.
        (name, _) if name.starts_with('_') || name.starts_with('-') || name == operators::INDEX => {
            return None;
        }
        // Gatehouse's own comparison functions and the global library functions are found
        // by name and argument types, as the interpreter finds them (`find_overload`).
        (name, _) => {
            if name.contains('.') || name == "has" {
                return None;
            }
            Node::Global(name.to_owned(), args)
        }
    })
}

/// Bindings of comprehension variables, innermost first: borrowed for `'b`, values that
/// live for `'x`.
struct Frame<'b, 'x> {
    value: &'b (dyn Val + 'x),
    up: Option<&'b Frame<'b, 'x>>,
}

struct Run<'x> {
    resolver: &'x dyn VariableResolver,
}

fn as_bool(v: &CowVal<'_, '_>) -> Option<bool> {
    v.downcast_ref::<CelBool>().map(|b| *b.inner())
}

fn as_str<'a>(v: &'a CowVal<'_, '_>) -> Option<&'a str> {
    v.downcast_ref::<CelString>().map(|s| s.inner())
}

fn is_optional(v: &dyn Val) -> bool {
    v.downcast_ref::<CelOptional>().is_some()
}

fn boolean<'b, 'v>(b: bool) -> CowVal<'b, 'v> {
    CowVal::Borrowed(if b { &CelBool::TRUE } else { &CelBool::FALSE })
}

/// `field` of `value` as the interpreter selects it on a plain (not optional) value: the
/// value's indexer with the field name. A value taken from a comprehension binding or the
/// resolver is borrowed; an owned one (a function's result) is left to the interpreter.
fn select<'b, 'x>(value: CowVal<'b, 'x>, field: &str) -> Option<CowVal<'b, 'x>> {
    let CowVal::Borrowed(v) = value else {
        return None;
    };
    if is_optional(v) {
        return None;
    }
    v.as_indexer()?.get(&CelString::from(field)).ok()
}

impl<'x> Run<'x> {
    fn eval<'b>(&self, n: &'x Node, env: Option<&'b Frame<'b, 'x>>) -> Option<CowVal<'b, 'x>>
    where
        'x: 'b,
    {
        Some(match n {
            Node::Literal(l) => l.to_val(),
            Node::Var(up) => {
                let mut f = env?;
                for _ in 0..*up {
                    f = f.up?;
                }
                CowVal::Borrowed(f.value)
            }
            Node::Name { prefixes, fields } => {
                // The resolver is asked as the interpreter asks it: the whole name, then
                // each shorter prefix, until it answers.
                let (i, value) = prefixes
                    .iter()
                    .enumerate()
                    .find_map(|(i, p)| self.resolver.resolve(p).map(|v| (i, v)))?;
                let mut value: CowVal<'b, 'x> = value;
                for f in &fields[fields.len() - i..] {
                    value = select(value, f)?;
                }
                value
            }
            Node::Select(operand, field) => select(self.eval(operand, env)?, field)?,
            Node::OptSelect(operand, field) => {
                // As the interpreter: an empty optional stays empty, a full one is unwrapped,
                // and the field, when the value has it, is the new optional's value.
                let v = self.eval(operand, env)?;
                let target: &(dyn Val + 'x) = match v.downcast_ref::<CelOptional>() {
                    Some(o) => match o.option() {
                        Some(inner) => inner,
                        None => return Some(CowVal::owned(CelOptional::none())),
                    },
                    None => v.as_ref(),
                };
                let key = CelString::from(field.as_str());
                CowVal::owned(match target.as_indexer().map(|ix| ix.get(&key)) {
                    Some(Ok(x)) => CelOptional::of(x.as_ref().clone_as_boxed()),
                    _ => CelOptional::none(),
                })
            }
            Node::Has(operand, field) => {
                let v = self.eval(operand, env)?;
                if is_optional(v.as_ref()) {
                    return None;
                }
                match v.as_indexer()?.get(&CelString::from(field.as_str())) {
                    Ok(_) => boolean(true),
                    Err(::cel::ExecutionError::NoSuchKey(_)) => boolean(false),
                    Err(_) => return None,
                }
            }
            Node::And(a, b) => match as_bool(&self.eval(a, env)?)? {
                false => boolean(false),
                true => boolean(as_bool(&self.eval(b, env)?)?),
            },
            Node::Or(a, b) => match as_bool(&self.eval(a, env)?)? {
                true => boolean(true),
                false => boolean(as_bool(&self.eval(b, env)?)?),
            },
            Node::Not(a) => boolean(!as_bool(&self.eval(a, env)?)?),
            Node::NotStrictlyFalse(a) => boolean(as_bool(&self.eval(a, env)?)?),
            Node::Conditional(c, a, b) => {
                if as_bool(&self.eval(c, env)?)? {
                    self.eval(a, env)?
                } else {
                    self.eval(b, env)?
                }
            }
            Node::Equals(a, b, want) => {
                let (a, b) = (self.eval(a, env)?, self.eval(b, env)?);
                boolean((a == b) == *want)
            }
            Node::Compare(a, b, order) => {
                let (a, b) = (self.eval(a, env)?, self.eval(b, env)?);
                let o = a.as_comparer()?.compare(b.as_ref()).ok()?;
                boolean(match order {
                    Order::Less => o.is_lt(),
                    Order::LessEqual => o.is_le(),
                    Order::Greater => o.is_gt(),
                    Order::GreaterEqual => o.is_ge(),
                })
            }
            Node::Add(a, b) => {
                let (a, b) = (self.eval(a, env)?, self.eval(b, env)?);
                let sum = a.as_adder()?.add(b.as_ref()).ok()?;
                CowVal::Owned(sum.as_ref().clone_as_boxed())
            }
            Node::In(a, b) => {
                let (a, b) = (self.eval(a, env)?, self.eval(b, env)?);
                boolean(b.as_container()?.contains(a.as_ref()).ok()?)
            }
            Node::List(items) => {
                let mut list: Vec<Box<dyn Val + 'x>> = Vec::with_capacity(items.len());
                for x in items {
                    list.push(self.eval(x, env)?.as_ref().clone_as_boxed());
                }
                CowVal::owned(CelList::from(list))
            }
            Node::Global(name, args) => {
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.eval(a, env)?);
                }
                let op = library::ENV.find_overload(name, &values)?;
                op(values).ok()?
            }
            Node::Method(m, target, args) => {
                let t = self.eval(target, env)?;
                let mut values = Vec::with_capacity(args.len());
                for a in args {
                    values.push(self.eval(a, env)?);
                }
                match m {
                    Method::OrValue | Method::HasValue | Method::Value => {
                        let inner = t.downcast_ref::<CelOptional>()?.option();
                        match (m, inner) {
                            (Method::HasValue, inner) => boolean(inner.is_some()),
                            (_, Some(inner)) => CowVal::Owned(inner.clone_as_boxed()),
                            (Method::OrValue, None) => values.pop()?,
                            _ => return None,
                        }
                    }
                    Method::Quantity(name) => {
                        let f = library::quantity_method(name, t.as_ref(), &values)?;
                        values.insert(0, t);
                        f(values).ok()?
                    }
                    m => method(m, as_str(&t)?, &values)?,
                }
            }
            Node::Fold {
                init,
                range,
                cond,
                step,
                result,
            } => {
                let mut accu: Box<dyn Val + 'x> = self.eval(init, env)?.as_ref().clone_as_boxed();
                let range = self.eval(range, env)?;
                let mut items = range.as_iterable()?.iter();
                while let Some(item) = items.next() {
                    let at_accu = Frame {
                        value: accu.as_ref(),
                        up: env,
                    };
                    if !as_bool(&self.eval(cond, Some(&at_accu))?)? {
                        break;
                    }
                    let at_item = Frame {
                        value: item,
                        up: Some(&at_accu),
                    };
                    let next = self.eval(step, Some(&at_item))?.as_ref().clone_as_boxed();
                    accu = next;
                }
                let at_accu = Frame {
                    value: accu.as_ref(),
                    up: env,
                };
                let r = self.eval(result, Some(&at_accu))?.as_ref().clone_as_boxed();
                CowVal::Owned(r)
            }
            Node::Append {
                range,
                guard,
                items,
            } => {
                let range = self.eval(range, env)?;
                let size = range.as_sizer().map_or(0, |s| *s.size().inner() as usize);
                let mut out: Vec<Box<dyn Val + 'x>> = Vec::with_capacity(size);
                let mut iter = range.as_iterable()?.iter();
                while let Some(item) = iter.next() {
                    let at_item = Frame {
                        value: item,
                        up: env,
                    };
                    if let Some(g) = guard
                        && !as_bool(&self.eval(g, Some(&at_item))?)?
                    {
                        continue;
                    }
                    for x in items {
                        out.push(self.eval(x, Some(&at_item))?.as_ref().clone_as_boxed());
                    }
                }
                CowVal::owned(CelList::from(out))
            }
        })
    }
}

/// A string method as its overload computes it (cel-rust's standard library and strings
/// extension: positions count code points; out-of-range arguments are errors, left to the
/// interpreter).
fn method<'b, 'x>(m: &Method, this: &str, args: &[CowVal<'_, '_>]) -> Option<CowVal<'b, 'x>> {
    let text = |i: usize| args.get(i).and_then(as_str);
    let int = |i: usize| {
        args.get(i)
            .and_then(|v| v.downcast_ref::<CelInt>())
            .map(|n| *n.inner())
    };
    Some(match (m, args.len()) {
        (Method::StartsWith, 1) => boolean(this.starts_with(text(0)?)),
        (Method::EndsWith, 1) => boolean(this.ends_with(text(0)?)),
        (Method::Contains, 1) => boolean(this.contains(text(0)?)),
        (Method::IndexOf | Method::LastIndexOf, 1) => {
            let needle = text(0)?;
            let at = match m {
                Method::IndexOf => this.find(needle),
                _ => this.rfind(needle),
            };
            // A match of valid text in valid text starts on a character boundary.
            CowVal::owned(CelInt::from(
                at.map_or(-1, |b| this[..b].chars().count() as i64),
            ))
        }
        (Method::Substring, n @ (1 | 2)) => {
            let len = this.chars().count() as i64;
            let start = int(0)?;
            let end = if n == 2 { int(1)? } else { len };
            if start < 0 || start > end || end > len {
                return None;
            }
            let s: String = this
                .chars()
                .skip(start as usize)
                .take((end - start) as usize)
                .collect();
            CowVal::owned(CelString::from(s))
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use rstest::rstest;

    use super::super::tests::{both_ways, deployment};

    /// Objects every expression below is judged on: the test Deployment, one whose image
    /// has two-byte and three-byte characters and a `:latest` tag, one whose values have
    /// unexpected types or are missing, and a Pod.
    fn objects() -> Vec<String> {
        vec![
            deployment(3, "nginx:1.27"),
            deployment(1, "registry.example.com/ünï/cødé€:latest"),
            serde_json::json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "", "labels": null},
                "spec": {"replicas": "3", "template": {"spec": {"containers": [
                    {"name": 7, "image": 42}, {"image": ""}
                ]}}}
            })
            .to_string(),
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p€", "labels": {"team": "payments"}},
                "spec": {"containers": [
                    {"name": "a", "image": "r.io/x/app:1"}, {"name": "b", "image": "app"}
                ]}
            })
            .to_string(),
        ]
    }

    fn validation(expr: &str) -> String {
        format!(
            "validations:\n- expression: {}\n  message: no\n",
            serde_json::to_string(expr).unwrap()
        )
    }

    /// The direct evaluator gives the interpreter's verdict on every object (a pass, a
    /// violation, or the interpreter's own error when a step fails), and answers the
    /// expression itself at least once.
    #[rstest]
    // names, fields, has(), literals, operators
    #[case("object.spec.replicas + 1 > 3")]
    #[case("object.kind == 'Pod' ? size(object.spec.containers) == 2 : object.spec.replicas >= 3")]
    #[case("has(object.metadata.labels) && 'team' in object.metadata.labels")]
    #[case("!has(object.spec.paused) && has(object.spec.template)")]
    #[case("object.metadata.labels.team.startsWith('pay') || object.metadata.name == 'web'")]
    #[case("request.operation == 'CREATE' && request.userInfo.username.endsWith('ce')")]
    #[case("1u == 1u && 2.5 > 1.0 && 'a' + 'b' == 'ab' && null == null && -1 < 0")]
    #[case("[1, 2] + [3] == [1, 2, 3] && 3 in [1, 2, 3] && !(4 in [1, 2, 3])")]
    #[case("object.spec.replicas != 2 && object.spec.replicas <= 3 && object.spec.replicas < 4")]
    #[case("object.metadata == object.metadata && object.spec != object.metadata")]
    #[case("string(object.spec.replicas) == '3' || int('7') == 7")]
    // string functions, counting code points
    #[case(
        "object.metadata.name.substring(1) == 'eb' || object.metadata.name.substring(0, 1) == 'p'"
    )]
    #[case("object.metadata.name.indexOf('') == 0 && object.metadata.name.lastIndexOf('') >= 0")]
    #[case("object.metadata.name.lastIndexOf('€') == 1 || object.metadata.name.indexOf('b') == 2")]
    #[case("object.metadata.name.contains('e')")]
    // comprehensions
    #[case(
        "(object.kind == 'Pod' ? object.spec : object.spec.template.spec).containers.all(c, c.image != '')"
    )]
    #[case("object.spec.template.spec.containers.exists(c, c.name == 'web')")]
    #[case("object.spec.template.spec.containers.exists_one(c, c.name.startsWith('s'))")]
    #[case(
        "size(object.spec.template.spec.containers.filter(c, c.image.endsWith(':latest'))) == 0"
    )]
    #[case(
        "object.spec.template.spec.containers.map(c, c.image.lastIndexOf('/')) == [-1, 20] || \
         object.spec.template.spec.containers.map(c, c.image.lastIndexOf('/')) == [24, 20]"
    )]
    #[case(
        "object.spec.template.spec.containers.map(c, c.image.substring(c.image.lastIndexOf('/') + 1)) \
         == ['nginx:1.27', 'proxy:1.2']"
    )]
    #[case("object.spec.template.spec.containers.map(c, c.name != 'web', c.name) == ['sidecar']")]
    #[case("[[1, 2], [3]].all(x, x.all(x, x > 0)) && [1, 2, 3].exists(x, x == 2)")]
    #[case("[1, 2, 3].filter(x, x > 1).map(x, x + 1) == [3, 4]")]
    // optionals, quantities, patterns
    #[case("object.?spec.?replicas.orValue(0) >= 3")]
    #[case("object.?spec.?nope.?deeper.orValue('none') == 'none' && !object.?nope.hasValue()")]
    #[case("object.?metadata.?labels.?team.hasValue() || object.kind == 'Pod'")]
    #[case("object.?spec.?replicas.value() == 3")]
    #[case(
        "object.spec.template.spec.containers.all(c, \
         quantity(c.?resources.?limits.?memory.orValue('0')).compareTo(quantity('4Gi')) <= 0)"
    )]
    #[case(
        "quantity('1Gi').add(quantity('1Gi')).isGreaterThan(quantity('1.5Gi')) && \
         quantity('1').add(1).compareTo(quantity('2')) == 0 && quantity('3').sub(1).asInteger() == 2 && \
         quantity('500m').sign() == 1 && !quantity('1.5').isInteger() && \
         quantity('500m').isLessThan(quantity('1')) && quantity('250m').asApproximateFloat() == 0.25"
    )]
    #[case("object.metadata.name.matches('^w') || matches(object.metadata.name, '€$')")]
    fn the_direct_evaluator_answers_as_the_interpreter(#[case] expr: &str) {
        let mut answered = 0;
        for object in objects() {
            let (direct, interpreted, n) = both_ways(&validation(expr), &object);
            assert_eq!(direct, interpreted, "{expr} on {object}");
            answered += n;
        }
        assert!(answered > 0, "{expr}: the direct evaluator never answered");
    }

    /// Steps the direct evaluator leaves to the interpreter (errors of every kind, values of
    /// unexpected types, operators it does not plan): the verdict is the interpreter's.
    #[rstest]
    #[case("object.spec.nope > 1")]
    #[case("object.metadata.name.startsWith(1)")]
    #[case("object.spec.replicas.startsWith('a')")]
    #[case("object.metadata.name.substring(5) == ''")]
    #[case("object.metadata.name.substring(2, 1) == ''")]
    #[case("object.metadata.name.substring(-1) == ''")]
    #[case("[1, 'a'].all(x, x > 0)")]
    #[case("[0, 1].exists(x, 1 / x == 1)")]
    #[case("object.spec.template.spec.containers.exists(c, c.nope == 1 || true)")]
    #[case("object.spec.template.spec.containers.all(c, c.image.size() > 0)")]
    #[case("object.spec.template.spec.containers[0].image != ''")]
    #[case("object.?spec.replicas.value() >= 3 || object.?nope.value() == 1")]
    #[case("quantity('1').add('x') == quantity('1') || quantity('1').compareTo(1) == 0")]
    #[case("object.metadata.name.orValue('x') == 'x'")]
    #[case("9223372036854775807 + object.spec.replicas > 0")]
    fn the_interpreter_judges_what_the_direct_evaluator_leaves(#[case] expr: &str) {
        for object in objects() {
            let (direct, interpreted, _) = both_ways(&validation(expr), &object);
            assert_eq!(direct, interpreted, "{expr} on {object}");
        }
    }

    /// A small seeded generator of expressions over the test objects: names, literals,
    /// operators, string and optional methods, `has()` and the macros, nested a few levels,
    /// well-typed or not (so that errors of every kind occur).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self, n: usize) -> usize {
            // xorshift64*
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
        }

        fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
            options[self.next(options.len())]
        }

        fn list(&mut self) -> String {
            self.pick(&[
                "object.spec.template.spec.containers",
                "(object.kind == 'Pod' ? object.spec.containers : object.spec.template.spec.containers)",
                "[1, 'a', 3]",
                "['web', 'sidecar']",
                "object.metadata.labels",
            ])
            .to_owned()
        }

        fn string(&mut self, d: usize, c: bool) -> String {
            let leaf = if c {
                self.pick(&["c.image", "c.name", "'web'", "':'", "object.metadata.name"])
            } else {
                self.pick(&[
                    "'web'",
                    "''",
                    "'/'",
                    "':latest'",
                    "object.metadata.name",
                    "object.kind",
                ])
            };
            match if d == 0 { 0 } else { self.next(4) } {
                1 => format!(
                    "{}.substring({})",
                    self.string(d - 1, c),
                    self.int(d - 1, c)
                ),
                2 => format!("{} + {}", self.string(d - 1, c), self.string(d - 1, c)),
                3 => format!("object.?metadata.?name.orValue({})", self.string(d - 1, c)),
                _ => leaf.to_owned(),
            }
        }

        fn int(&mut self, d: usize, c: bool) -> String {
            let leaf = self.pick(&["0", "1", "3", "-1", "object.spec.replicas"]);
            match if d == 0 { 0 } else { self.next(6) } {
                k @ (1 | 2) => format!(
                    "{}.{}({})",
                    self.string(d - 1, c),
                    ["indexOf", "lastIndexOf"][k - 1],
                    self.string(d - 1, c)
                ),
                3 => format!("size({})", self.list()),
                4 => format!("{} + {}", self.int(d - 1, c), self.int(d - 1, c)),
                5 => "object.?spec.?replicas.orValue(1)".to_owned(),
                _ => leaf.to_owned(),
            }
        }

        fn boolean(&mut self, d: usize, c: bool) -> String {
            if d == 0 {
                return self
                    .pick(&[
                        "true",
                        "false",
                        "has(object.spec.replicas)",
                        "has(object.metadata.labels)",
                    ])
                    .to_owned();
            }
            let op = self.pick(&["==", "!=", "<", "<=", ">", ">="]);
            let method = self.pick(&["startsWith", "endsWith", "contains"]);
            let mac = self.pick(&["all", "exists", "exists_one"]);
            match self.next(10) {
                0 => format!("{} {op} {}", self.int(d - 1, c), self.int(d - 1, c)),
                1 => format!(
                    "{}.{method}({})",
                    self.string(d - 1, c),
                    self.string(d - 1, c)
                ),
                2 => format!("!({})", self.boolean(d - 1, c)),
                k @ (3 | 4) => format!(
                    "({}) {} ({})",
                    self.boolean(d - 1, c),
                    ["&&", "||"][k - 3],
                    self.boolean(d - 1, c)
                ),
                5 => format!(
                    "({}) ? ({}) : ({})",
                    self.boolean(d - 1, c),
                    self.boolean(d - 1, c),
                    self.boolean(d - 1, c)
                ),
                6 => format!("{}.{mac}(c, {})", self.list(), self.boolean(d - 1, true)),
                7 => format!(
                    "size({}.filter(c, {})) {op} {}",
                    self.list(),
                    self.boolean(d - 1, true),
                    self.int(d - 1, c)
                ),
                8 => format!("{} in {}", self.string(d - 1, c), self.list()),
                _ => format!("{}.matches('^[a-z]+')", self.string(d - 1, c)),
            }
        }
    }

    /// Generated expressions give the same verdict with the direct evaluator as with the
    /// interpreter alone on every object, and a good share is answered directly.
    #[test]
    fn generated_expressions_answer_as_the_interpreter() {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        let objects = objects();
        let (mut evaluated, mut answered) = (0, 0);
        for _ in 0..300 {
            let expr = g.boolean(3, false);
            for object in &objects {
                let (direct, interpreted, n) = both_ways(&validation(&expr), object);
                assert_eq!(direct, interpreted, "{expr} on {object}");
                evaluated += 1;
                answered += n.min(1);
            }
        }
        assert!(
            answered * 3 > evaluated,
            "only {answered} of {evaluated} evaluations answered directly"
        );
    }

    /// The shipped `no-latest-cel` policy (variables, a filter, a message built from the
    /// result): same verdicts and messages both ways, and its expressions answered directly.
    #[test]
    fn the_shipped_example_is_answered_directly() {
        let params = r#"
variables:
  - name: podSpec
    expression: "object.kind == 'Pod' ? object.spec : object.spec.template.spec"
  - name: unpinned
    expression: >-
      variables.podSpec.containers.filter(c,
        c.image.endsWith(':latest') || !c.image.substring(c.image.lastIndexOf('/') + 1).contains(':'))
validations:
  - expression: size(variables.unpinned) == 0
    messageExpression: "'images must name a version: ' + variables.unpinned.map(c, c.image).join(', ')"
"#;
        let mut violations = 0;
        for object in objects() {
            let (direct, interpreted, answered) = both_ways(params, &object);
            assert_eq!(direct, interpreted, "{object}");
            if matches!(direct.verdict, super::super::Verdict::Violation { .. }) {
                violations += 1;
            }
            if object.contains("nginx") {
                // Both variables and the validation.
                assert_eq!(answered, 3, "{object}");
            }
        }
        // The `:latest` Deployment and the Pod's untagged `app`.
        assert_eq!(violations, 2);
    }
}
