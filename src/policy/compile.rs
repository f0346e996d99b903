//! Compiling a policy's rules: parse, expand macros, and refuse what could cost too much or names
//! a variable that does not exist, so a broken rule is reported when the policy is applied rather
//! than failing on every digest.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};

use cel::Env;
use cel::common::ast::{EntryExpr, Expr, IdedExpr};

use super::run::{self, Regexes};
use super::{Error, variables::NAMES};
use crate::api::{ModelPolicySpec, PolicyAction, PolicyRule};

pub const MAX_EXPRESSION_BYTES: usize = 4096;
pub const MAX_BRACKET_DEPTH: usize = 32;
pub const MAX_NODES: usize = 1000;
pub const MAX_COMPREHENSION_DEPTH: usize = 2;

/// Identifiers that name types (`type(x) == string`), not variables.
const TYPE_NAMES: [&str; 10] = ["bool", "bytes", "double", "dyn", "int", "list", "map", "null_type", "string", "uint"];

/// The functions of the CEL specification's standard definitions (operators aside): a call to any
/// other name is refused when the rule is compiled, as cel-go refuses an undeclared function,
/// rather than failing on every digest.
const FUNCTIONS: [&str; 24] = [
    "bool",
    "bytes",
    "contains",
    "double",
    "duration",
    "dyn",
    "endsWith",
    "getDate",
    "getDayOfMonth",
    "getDayOfWeek",
    "getDayOfYear",
    "getFullYear",
    "getHours",
    "getMilliseconds",
    "getMinutes",
    "getMonth",
    "getSeconds",
    "int",
    "matches",
    "size",
    "startsWith",
    "string",
    "timestamp",
    "type",
];
// `uint` is both a type and a conversion.
const CONVERSIONS: [&str; 1] = ["uint"];

/// The standard definitions and macros of the CEL specification, without the optional-value
/// syntax (`a.?b`), which Kubernetes and cel-go leave off by default.
/// `matches` is evaluated as [`run::MATCHES`], which compiles each pattern once per rule.
pub(super) static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib().with_optional_support(false);
    run::declare(&mut env);
    Arc::new(env)
});

/// The parser recurses deeply per bracket (a debug build needs more than 2 MiB for 32 nested
/// parentheses), so parsing and evaluating run on a thread with this much stack.
pub(super) const STACK_BYTES: usize = 64 << 20;

/// Runs `f` on a thread of [`STACK_BYTES`] stack; a thread that cannot be started or that panics
/// is reported as the CEL crate's error would be, never unwound into the caller.
pub(super) fn on_big_stack<T: Send>(f: impl FnOnce() -> T + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name("cel".into())
            .stack_size(STACK_BYTES)
            .spawn_scoped(scope, f)
            .map_err(|e| format!("starting the CEL thread: {e}"))?;
        handle.join().map_err(|_| "the CEL implementation panicked".to_owned())
    })
}

/// A rule ready to evaluate.
#[derive(Clone)]
pub struct CompiledRule {
    pub name: String,
    pub expression: String,
    /// What a failure reports (the rule's message, else its expression).
    pub message: String,
    /// The expanded syntax tree, `matches` renamed (see [`run::rewrite`]).
    pub(super) expr: Arc<IdedExpr>,
    /// The rule's literal patterns, compiled.
    pub(super) regexes: Arc<Regexes>,
}

impl std::fmt::Debug for CompiledRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledRule").field("name", &self.name).field("expression", &self.expression).finish()
    }
}

/// A policy whose every rule compiled.
#[derive(Clone, Debug)]
pub struct CompiledPolicy {
    pub name: String,
    pub action: PolicyAction,
    pub rules: Vec<CompiledRule>,
}

/// Compiles every rule of `spec`; the first that does not compile is the error.
pub fn compile(name: &str, spec: &ModelPolicySpec) -> Result<CompiledPolicy, Error> {
    if let Some(rule) = duplicate_rule(spec) {
        return Err(Error::DuplicateRule { rule: rule.to_owned() });
    }
    let rules = spec.rules.iter().map(compile_rule).collect::<Result<_, _>>()?;
    Ok(CompiledPolicy { name: name.to_owned(), action: spec.action, rules })
}

fn compile_rule(rule: &PolicyRule) -> Result<CompiledRule, Error> {
    let too_complex = |what: String| Error::TooComplex { rule: rule.name.clone(), what };
    if rule.expression.len() > MAX_EXPRESSION_BYTES {
        return Err(too_complex(format!("{} bytes, more than {MAX_EXPRESSION_BYTES}", rule.expression.len())));
    }
    let depth = bracket_depth(&rule.expression);
    if depth > MAX_BRACKET_DEPTH {
        return Err(too_complex(format!("{depth} nested brackets, more than {MAX_BRACKET_DEPTH}")));
    }
    let source = rule.expression.clone();
    let program = on_big_stack(move || ENV.compile(&source).map_err(|e| e.to_string()))
        .and_then(|compiled| compiled)
        .map_err(|message| Error::Compile { rule: rule.name.clone(), message: message.replace('\n', " ") })?;
    let mut walk = Walk { nodes: 0, deepest: 0, scope: Vec::new(), undeclared: None };
    walk.visit(program.expression(), 0);
    if walk.nodes > MAX_NODES {
        return Err(too_complex(format!("{} syntax nodes, more than {MAX_NODES}", walk.nodes)));
    }
    if walk.deepest > MAX_COMPREHENSION_DEPTH {
        return Err(too_complex(format!(
            "{} nested macros (all, exists, map, …), more than {MAX_COMPREHENSION_DEPTH}",
            walk.deepest
        )));
    }
    match walk.undeclared {
        Some(Undeclared::Variable(name)) => return Err(Error::UndeclaredVariable { rule: rule.name.clone(), name }),
        Some(Undeclared::Function(name)) => return Err(Error::UndeclaredFunction { rule: rule.name.clone(), name }),
        None => {}
    }
    let message = rule.message.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| rule.expression.clone());
    let mut expr = program.expression().clone();
    let mut regexes = Regexes::new();
    run::rewrite(&mut expr, &mut regexes);
    Ok(CompiledRule {
        name: rule.name.clone(),
        expression: rule.expression.clone(),
        message,
        expr: Arc::new(expr),
        regexes: Arc::new(regexes),
    })
}

/// The deepest nesting of `(`, `[` and `{` outside string literals. Deliberately simple: a quote
/// it misreads can only make it count more, which refuses a rule rather than admitting one.
fn bracket_depth(source: &str) -> usize {
    let (mut depth, mut deepest, mut quote, mut escaped) = (0usize, 0usize, None, false);
    for c in source.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            }
            None => match c {
                '\'' | '"' => quote = Some(c),
                '(' | '[' | '{' => {
                    depth += 1;
                    deepest = deepest.max(depth);
                }
                ')' | ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    deepest
}

/// One pass over the expanded syntax tree: node count, macro nesting, and identifiers that are
/// neither variables, types nor a macro's own variables.
struct Walk {
    nodes: usize,
    deepest: usize,
    scope: Vec<String>,
    undeclared: Option<Undeclared>,
}

enum Undeclared {
    Variable(String),
    Function(String),
}

impl Walk {
    fn visit(&mut self, e: &IdedExpr, depth: usize) {
        self.nodes += 1;
        if self.nodes > MAX_NODES {
            return;
        }
        match &e.expr {
            Expr::Ident(name) => self.ident(name),
            Expr::Call(call) => {
                let name = call.func_name.as_str();
                let operator = name.starts_with(['_', '@', '!', '-']);
                let known = operator || FUNCTIONS.contains(&name) || CONVERSIONS.contains(&name);
                if !known && self.undeclared.is_none() {
                    self.undeclared = Some(Undeclared::Function(name.to_owned()));
                }
                call.target.iter().for_each(|t| self.visit(t, depth));
                call.args.iter().for_each(|a| self.visit(a, depth));
            }
            Expr::Select(select) => self.visit(&select.operand, depth),
            Expr::List(list) => list.elements.iter().for_each(|x| self.visit(x, depth)),
            Expr::Map(map) => map.entries.iter().for_each(|x| self.entry(&x.expr, depth)),
            Expr::Struct(s) => s.entries.iter().for_each(|x| self.entry(&x.expr, depth)),
            Expr::Comprehension(c) => {
                self.visit(&c.iter_range, depth);
                self.visit(&c.accu_init, depth);
                let inner = depth + 1;
                self.deepest = self.deepest.max(inner);
                let bound = [Some(&c.iter_var), c.iter_var2.as_ref(), Some(&c.accu_var)];
                let pushed = bound.iter().flatten().count();
                self.scope.extend(bound.into_iter().flatten().cloned());
                for part in [&c.loop_cond, &c.loop_step, &c.result] {
                    self.visit(part, inner);
                }
                self.scope.truncate(self.scope.len() - pushed);
            }
            Expr::Literal(_) | Expr::Unspecified => {}
        }
    }

    fn entry(&mut self, entry: &EntryExpr, depth: usize) {
        match entry {
            EntryExpr::MapEntry(m) => {
                self.visit(&m.key, depth);
                self.visit(&m.value, depth);
            }
            EntryExpr::StructField(f) => self.visit(&f.value, depth),
        }
    }

    fn ident(&mut self, name: &str) {
        let known = NAMES.contains(&name) || TYPE_NAMES.contains(&name) || self.scope.iter().any(|s| s == name);
        if !known && self.undeclared.is_none() {
            self.undeclared = Some(Undeclared::Variable(name.to_owned()));
        }
    }
}

/// Names of rules that appear more than once (the CRD refuses them; files given to `check` are
/// not validated by an API server).
fn duplicate_rule(spec: &ModelPolicySpec) -> Option<&str> {
    let mut seen = HashSet::new();
    spec.rules.iter().map(|r| r.name.as_str()).find(|n| !seen.insert(*n))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(expression: &str) -> PolicyRule {
        PolicyRule { name: "r".into(), expression: expression.into(), message: None }
    }

    #[test]
    fn the_issue_examples_compile() {
        for e in [
            r#"descriptor.licenses.all(l, l in ["Apache-2.0", "MIT"])"#,
            r#"referrers.exists(r, r.artifactType == "application/spdx+json")"#,
            r#"has(config.capabilities) && config.capabilities.inputTypes.exists_one(t, t == "text")"#,
            r#"layers.map(l, l.size).filter(s, s > 0).size() >= 1 && tag.startsWith("v") || tag.endsWith("x")"#,
            r#"repository.contains("/") && digest.matches("^sha256:") && type(tag) == string"#,
            r#"timestamp(descriptor.createdAt) > timestamp("2024-01-01T00:00:00Z") - duration("24h")"#,
        ] {
            compile_rule(&rule(e)).unwrap_or_else(|err| panic!("{e}: {err}"));
        }
    }

    #[test]
    fn syntax_errors_carry_the_compilers_message_on_one_line() {
        let err = compile_rule(&rule("descriptor.licenses.all(l, ")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::Compile { .. }), "{text}");
        assert!(text.starts_with("rule \"r\" does not compile: ") && !text.contains('\n'), "{text}");
    }

    #[test]
    fn unknown_variables_are_refused_and_macro_variables_are_not() {
        let err = compile_rule(&rule("descriptr.name == 'x'")).unwrap_err();
        assert!(matches!(&err, Error::UndeclaredVariable { name, .. } if name == "descriptr"), "{err}");
        compile_rule(&rule("layers.all(l, layers.exists(m, m.digest == l.digest))")).unwrap();
        let function = compile_rule(&rule("layers.all(l, sizeof(l.path) > 0)")).unwrap_err();
        assert!(matches!(&function, Error::UndeclaredFunction { name, .. } if name == "sizeof"), "{function}");
        let member = compile_rule(&rule("tag.lowerAscii() == 'v1'")).unwrap_err();
        assert!(matches!(&member, Error::UndeclaredFunction { name, .. } if name == "lowerAscii"), "{member}");
        compile_rule(&rule("uint(1) == 1u && string(1) == '1' && int('2') == 2 && double(1) == 1.0")).unwrap();
        let outside = compile_rule(&rule("layers.all(l, true) && l.size > 0")).unwrap_err();
        assert!(matches!(&outside, Error::UndeclaredVariable { name, .. } if name == "l"), "{outside}");
    }

    #[test]
    fn cost_bounds_are_enforced_at_compile_time() {
        let deep = format!("{}true{}", "(".repeat(MAX_BRACKET_DEPTH + 1), ")".repeat(MAX_BRACKET_DEPTH + 1));
        assert!(matches!(compile_rule(&rule(&deep)), Err(Error::TooComplex { .. })));
        let ok = format!("{}true{}", "(".repeat(MAX_BRACKET_DEPTH), ")".repeat(MAX_BRACKET_DEPTH));
        compile_rule(&rule(&ok)).unwrap();
        let nested = "layers.all(a, layers.all(b, layers.all(c, true)))";
        assert!(matches!(compile_rule(&rule(nested)), Err(Error::TooComplex { .. })));
        compile_rule(&rule("layers.all(a, layers.all(b, true))")).unwrap();
        let long = vec!["1"; 1200].join("+");
        assert!(matches!(compile_rule(&rule(&format!("{long} > 0"))), Err(Error::TooComplex { .. })));
        let huge = format!("tag == '{}'", "x".repeat(MAX_EXPRESSION_BYTES));
        assert!(matches!(compile_rule(&rule(&huge)), Err(Error::TooComplex { .. })));
        assert_eq!(bracket_depth(r#"'(((' + "[[\"[" + (x)"#), 1);
    }

    #[test]
    fn optional_syntax_is_not_cel_standard_here() {
        assert!(matches!(compile_rule(&rule("descriptor.?name")), Err(Error::Compile { .. })));
    }
}
