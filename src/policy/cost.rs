//! A rule's worst case on the variables at hand, computed from its syntax tree and the variables'
//! actual sizes before it runs: time (bytes copied or compared, plus a fixed price per node visited
//! and per loop turn) and memory (the most that can be alive at once: every node's largest result,
//! macro accumulators at their final size). A rule over either bound never starts.

use std::collections::BTreeMap;

use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue, operators};

use super::shape::{Kind, SCALAR, Shape};

/// The price of visiting one node (its dispatch and a small result), in bytes-equivalent units.
const NODE: u64 = 64;
/// Compiling a regular expression that is not a literal of the rule (literals are compiled with
/// the rule): this, plus [`REGEX_COMPILE_BYTE`] per byte of the pattern.
const REGEX_COMPILE: u64 = 1 << 20;
const REGEX_COMPILE_BYTE: u64 = 16 << 10;
/// A match's own price beyond the input times the pattern (its cache taken and given back).
const REGEX_MATCH: u64 = 1024;
/// Longest string a conversion of a scalar (a number, a timestamp, a duration) makes.
const STRINGIFIED: u64 = 64;

/// The worst case of one rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Estimate {
    pub cost: u64,
    pub memory: u64,
}

/// One node's worst case and the shape of its result.
struct Est {
    cost: u64,
    memory: u64,
    shape: Shape,
}

fn add(values: impl IntoIterator<Item = u64>) -> u64 {
    values.into_iter().fold(0u64, u64::saturating_add)
}

/// The worst case of `expr` with the root variables shaped as `roots`; an error for a macro whose
/// accumulator has no bound (the standard macros always have one).
pub(super) fn estimate(expr: &IdedExpr, roots: &BTreeMap<String, Shape>) -> Result<Estimate, String> {
    let mut walk = Walk { roots, scope: Vec::new() };
    let est = walk.expr(expr)?;
    Ok(Estimate { cost: est.cost, memory: est.memory })
}

struct Walk<'a> {
    roots: &'a BTreeMap<String, Shape>,
    scope: Vec<(String, Shape)>,
}

impl Walk<'_> {
    fn expr(&mut self, e: &IdedExpr) -> Result<Est, String> {
        Ok(match &e.expr {
            Expr::Literal(literal) => {
                let shape = match literal {
                    LiteralValue::String(s) => Shape::scalar(s.inner().len() as u64),
                    LiteralValue::Bytes(b) => Shape::scalar(b.inner().len() as u64),
                    _ => Shape::scalar(0),
                };
                Est { cost: NODE, memory: shape.total, shape }
            }
            Expr::Ident(name) => Est { cost: NODE + name.len() as u64, memory: 0, shape: self.ident(name) },
            Expr::Select(select) => {
                let operand = self.expr(&select.operand)?;
                let shape = if select.test { Shape::scalar(0) } else { operand.shape.field(&select.field) };
                Est { cost: add([operand.cost, NODE, select.field.len() as u64]), memory: operand.memory, shape }
            }
            Expr::Call(call) => {
                let mut args = Vec::with_capacity(call.args.len() + 1);
                for a in call.target.iter().map(|t| t.as_ref()).chain(call.args.iter()) {
                    args.push(self.expr(a)?);
                }
                let pattern_literal = call.args.last().is_some_and(|p| matches!(p.expr, Expr::Literal(_)));
                let index_key = match call.args.get(1).map(|k| &k.expr) {
                    Some(Expr::Literal(LiteralValue::String(s))) => Some(s.inner().to_owned()),
                    _ => None,
                };
                call_estimate(&call.func_name, &args, pattern_literal, index_key.as_deref())
            }
            Expr::List(list) => {
                let elements = list.elements.iter().map(|x| self.expr(x)).collect::<Result<Vec<_>, _>>()?;
                let shape = Shape::list(elements.iter().map(|x| x.shape.clone()));
                built(&elements, shape)
            }
            Expr::Map(map) => {
                let mut parts = Vec::new();
                let mut names = Vec::new();
                for entry in &map.entries {
                    let (key, value) = match &entry.expr {
                        EntryExpr::MapEntry(m) => (&m.key, &m.value),
                        EntryExpr::StructField(f) => (&f.value, &f.value),
                    };
                    names.push(match &key.expr {
                        Expr::Literal(LiteralValue::String(s)) => Some(s.inner().to_owned()),
                        _ => None,
                    });
                    parts.push(self.expr(key)?);
                    parts.push(self.expr(value)?);
                }
                let entries = parts.chunks(2).zip(&names).map(|(kv, name)| {
                    (
                        name.as_deref(),
                        kv[0].shape.clone(),
                        kv.get(1).map_or_else(|| Shape::scalar(0), |v| v.shape.clone()),
                    )
                });
                let shape = Shape::map(entries);
                built(&parts, shape)
            }
            Expr::Struct(s) => {
                let mut parts = Vec::new();
                for entry in &s.entries {
                    if let EntryExpr::StructField(f) = &entry.expr {
                        parts.push(self.expr(&f.value)?);
                    }
                }
                built(&parts, Shape::scalar(0))
            }
            Expr::Comprehension(c) => self.comprehension(c)?,
            Expr::Unspecified => Est { cost: NODE, memory: 0, shape: Shape::scalar(0) },
        })
    }

    fn ident(&self, name: &str) -> Shape {
        if let Some((_, shape)) = self.scope.iter().rev().find(|(n, _)| n == name) {
            return shape.clone();
        }
        // A type name (`string`) or an undeclared one (an error when evaluated).
        self.roots.get(name).cloned().unwrap_or_else(|| Shape::scalar(0))
    }

    /// A macro: every turn costs its condition and step, the item bound to its variable is a copy,
    /// and the accumulator is bounded at its final size (a `map` or `filter` appends one item a
    /// turn; the others fold to a bool or a count, a fixed point checked here).
    fn comprehension(&mut self, c: &cel::common::ast::ComprehensionExpr) -> Result<Est, String> {
        let range = self.expr(&c.iter_range)?;
        let init = self.expr(&c.accu_init)?;
        let (item, turns) = range.shape.iteration();
        let depth = self.scope.len();
        self.scope.push((c.iter_var.clone(), item.clone()));
        if let Some(second) = &c.iter_var2 {
            self.scope.push((second.clone(), range.shape.index()));
        }
        let result = match append_step(c) {
            Some((guard, items)) => self.append(c, &init, turns, guard, items),
            None => self.fold(c, &init),
        };
        self.scope.truncate(depth);
        let (per_turn, body_memory, accu) = result?;
        self.scope.push((c.accu_var.clone(), accu.clone()));
        let finish = self.expr(&c.result);
        self.scope.truncate(depth);
        let finish = finish?;
        let turns_cost = turns.saturating_mul(per_turn.saturating_add(NODE));
        let cost = add([range.cost, init.cost, range.shape.total, turns_cost, finish.cost, finish.shape.total]);
        let memory =
            add([range.memory, init.memory, item.total, body_memory, accu.total, finish.memory, finish.shape.total]);
        Ok(Est { cost, memory, shape: finish.shape })
    }

    /// `map` and `filter`: the accumulator grows by the appended list each turn, in place.
    fn append(
        &mut self,
        c: &cel::common::ast::ComprehensionExpr,
        init: &Est,
        turns: u64,
        guard: Option<&IdedExpr>,
        items: &IdedExpr,
    ) -> Result<(u64, u64, Shape), String> {
        self.scope.push((c.accu_var.clone(), init.shape.clone()));
        let cond = self.expr(&c.loop_cond)?;
        let guard = guard.map(|g| self.expr(g)).transpose()?;
        let items = self.expr(items)?;
        let (elem, _) = items.shape.iteration();
        // `[]` grown by at most one appended list a turn.
        let grown = Shape {
            total: add([SCALAR, turns.saturating_mul(items.shape.total)]),
            entries: turns.max(elem.entries),
            bytes: elem.bytes,
            kind: Kind::List { len: turns, elem: elem.into() },
        };
        let guard_cost = guard.as_ref().map_or(0, |g| g.cost);
        let guard_memory = guard.as_ref().map_or(0, |g| g.memory);
        let per_turn = add([cond.cost, guard_cost, items.cost, items.shape.total]);
        Ok((per_turn, add([cond.memory, guard_memory, items.memory]), grown))
    }

    /// `all`, `exists`, `exists_one`: the step run twice to reach the accumulator's fixed point.
    fn fold(&mut self, c: &cel::common::ast::ComprehensionExpr, init: &Est) -> Result<(u64, u64, Shape), String> {
        let mut accu = init.shape.clone();
        for _ in 0..3 {
            self.scope.push((c.accu_var.clone(), accu.clone()));
            let cond = self.expr(&c.loop_cond);
            let step = self.expr(&c.loop_step);
            self.scope.pop();
            let (cond, step) = (cond?, step?);
            let next = accu.join(&step.shape);
            if accu.covers(&next) {
                let per_turn = add([cond.cost, step.cost, accu.total]);
                return Ok((per_turn, add([cond.memory, step.memory]), accu));
            }
            accu = next;
        }
        Err("a macro whose accumulator keeps growing".to_owned())
    }
}

/// `(guard, [items])` of a step `@result + [items]` or `guard ? @result + [items] : @result` that
/// starts from `[]`: what the interpreter appends in place.
fn append_step(c: &cel::common::ast::ComprehensionExpr) -> Option<(Option<&IdedExpr>, &IdedExpr)> {
    let is_accu = |e: &IdedExpr| matches!(&e.expr, Expr::Ident(n) if *n == c.accu_var);
    let empty_init = matches!(&c.accu_init.expr, Expr::List(l) if l.elements.is_empty());
    if !empty_init || !is_accu(&c.result) || !matches!(c.loop_cond.expr, Expr::Literal(_)) {
        return None;
    }
    fn items_of<'e>(e: &'e IdedExpr, is_accu: &dyn Fn(&IdedExpr) -> bool) -> Option<&'e IdedExpr> {
        match &e.expr {
            Expr::Call(call) if call.func_name == operators::ADD && call.target.is_none() => match call.args.as_slice()
            {
                [lhs, rhs] if is_accu(lhs) && matches!(rhs.expr, Expr::List(_)) => Some(rhs),
                _ => None,
            },
            _ => None,
        }
    }
    match &c.loop_step.expr {
        Expr::Call(call) if call.func_name == operators::CONDITIONAL && call.target.is_none() => {
            match call.args.as_slice() {
                [guard, step, otherwise] if is_accu(otherwise) => Some((Some(guard), items_of(step, &is_accu)?)),
                _ => None,
            }
        }
        _ => Some((None, items_of(&c.loop_step, &is_accu)?)),
    }
}

/// A list or map built from its parts: each part is copied into it.
fn built(parts: &[Est], shape: Shape) -> Est {
    let cost = add(parts.iter().map(|p| p.cost).chain([NODE, shape.total]));
    let memory = add(parts.iter().map(|p| p.memory).chain([shape.total]));
    Est { cost, memory, shape }
}

/// A call: its arguments, then the operation's own work on their shapes.
fn call_estimate(name: &str, args: &[Est], pattern_literal: bool, key: Option<&str>) -> Est {
    let cost = add(args.iter().map(|a| a.cost).chain([NODE]));
    let memory = add(args.iter().map(|a| a.memory));
    let totals = add(args.iter().map(|a| a.shape.total));
    let arg = |i: usize| args.get(i).map_or_else(|| Shape::scalar(0), |a| a.shape.clone());
    let (work, shape) = match name {
        operators::LOGICAL_AND | operators::LOGICAL_OR | operators::LOGICAL_NOT | operators::NOT_STRICTLY_FALSE => {
            (0, Shape::scalar(0))
        }
        operators::CONDITIONAL => (0, arg(1).join(&arg(2))),
        operators::EQUALS
        | operators::NOT_EQUALS
        | operators::LESS
        | operators::LESS_EQUALS
        | operators::GREATER
        | operators::GREATER_EQUALS => (totals, Shape::scalar(0)),
        operators::IN => (add([totals, arg(1).iteration().1.saturating_mul(NODE)]), Shape::scalar(0)),
        operators::INDEX => (totals, key.map_or_else(|| arg(0).index(), |k| arg(0).field(k))),
        operators::ADD => {
            let shape = arg(0).concat(&arg(1));
            (shape.total, shape)
        }
        operators::SUBSTRACT | operators::MULTIPLY | operators::DIVIDE | operators::MODULO | operators::NEGATE => {
            (0, Shape::scalar(0))
        }
        "size" => (arg(0).bytes, Shape::scalar(0)),
        "contains" | "startsWith" | "endsWith" => (arg(0).bytes.saturating_add(arg(1).bytes), Shape::scalar(0)),
        "matches" | super::run::MATCHES => {
            let (input, pattern) = (arg(0).bytes.saturating_add(1), arg(1).bytes.saturating_add(1));
            let compile =
                if pattern_literal { 0 } else { add([REGEX_COMPILE, arg(1).bytes.saturating_mul(REGEX_COMPILE_BYTE)]) };
            (add([input.saturating_mul(pattern), compile, REGEX_MATCH]), Shape::scalar(0))
        }
        "string" | "bytes" => (totals, Shape::scalar(arg(0).bytes.max(STRINGIFIED))),
        "dyn" => (0, arg(0)),
        // Conversions, `type`, timestamps, durations and their accessors: scalars from a parse.
        "bool" | "double" | "duration" | "int" | "timestamp" | "type" | "uint" => (totals, Shape::scalar(0)),
        _ if name.starts_with("get") => (totals, Shape::scalar(0)),
        // Anything else is taken to be at most as large as its arguments together.
        _ => (totals, args.iter().fold(Shape::scalar(0), |acc, a| acc.concat(&a.shape))),
    };
    let memory = memory.saturating_add(shape.total);
    Est { cost: cost.saturating_add(work), memory, shape }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn worst(expression: &str, licenses: usize, len: usize) -> Estimate {
        let program = crate::policy::compile::ENV.compile(expression).unwrap();
        let list: Vec<_> = (0..licenses).map(|i| json!(format!("{i:0len$}"))).collect();
        let roots =
            BTreeMap::from([("descriptor".to_owned(), Shape::of_json(&json!({"licenses": list, "name": "n"})))]);
        estimate(program.expression(), &roots).unwrap()
    }

    #[test]
    fn one_macro_is_linear_and_nested_ones_multiply() {
        let one = |n| worst("descriptor.licenses.all(l, l == 'MIT')", n, 8).cost;
        assert!(one(2000) > 15 * one(100) && one(2000) < 25 * one(100), "{} {}", one(2000), one(100));
        let two = |n| worst("descriptor.licenses.all(a, descriptor.licenses.exists(b, a == b))", n, 8).cost;
        assert!(two(2000) > 300 * two(100), "{} {}", two(2000), two(100));
        assert!(worst("descriptor.name == 'x'", 100_000, 8).cost < 1000, "no macro: the list does not count");
    }

    #[test]
    fn string_lengths_count_where_strings_are_compared_copied_or_matched() {
        let compare = |len| worst("descriptor.licenses.all(l, l == 'MIT')", 100, len).cost;
        assert!(compare(10_000) > 20 * compare(10), "{} {}", compare(10_000), compare(10));
        let literal = worst("descriptor.licenses.all(l, l.matches('^a+$'))", 100, 1000).cost;
        let dynamic = worst("descriptor.licenses.all(l, l.matches(l))", 100, 1000).cost;
        assert!(dynamic > 100 * REGEX_COMPILE && literal < REGEX_COMPILE, "{literal} {dynamic}");
    }

    #[test]
    fn map_accumulators_are_bounded_at_their_final_size() {
        let flat = worst("descriptor.licenses.map(l, l + l).size() > 0", 1000, 100).memory;
        assert!((200_000..1_000_000).contains(&flat), "{flat}");
        let nested = worst("descriptor.licenses.map(a, descriptor.licenses.map(b, a + b)).size() > 0", 1000, 100);
        assert!(nested.memory > 200_000_000, "1000 × 1000 strings of 200 bytes: {}", nested.memory);
        let folded = worst("descriptor.licenses.all(a, descriptor.licenses.exists(b, a + b == ''))", 1000, 100);
        assert!(folded.memory < 100_000, "all/exists keep a bool: {}", folded.memory);
    }
}
