//! One rule's run: a deadline and a cancellation flag checked at every read of a variable and
//! every regular expression match (once past either, every variable reads as `null`, so loops
//! end at once, and the rule fails whatever it returned), and regular expressions compiled once
//! per rule: `matches` is renamed [`MATCHES`] when the rule is compiled, which looks its pattern
//! up among those compiled with the rule (the literals) before compiling it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use cel::ExecutionError;
use cel::common::ast::{EntryExpr, Expr, IdedExpr, LiteralValue};
use cel::common::types::{CelBool, CelNull, CelString};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use regex::{Regex, RegexBuilder};

/// The name `matches` is evaluated under (`@` names cannot be written in a rule).
pub(super) const MATCHES: &str = "@matches";
/// Most bytes a compiled regular expression may take (the regex crate's default, as `matches`
/// had): what bounds compiling one pattern.
pub(super) const REGEX_SIZE_LIMIT: usize = 10 << 20;
/// Patterns that are not literals of the rule, kept per run.
const MAX_DYNAMIC_REGEXES: usize = 64;

/// Compiled patterns by their text (an invalid one is kept as its error).
pub(super) type Regexes = HashMap<String, Result<Regex, String>>;

struct Run {
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    stopped: bool,
    literals: Arc<Regexes>,
    dynamic: Regexes,
}

thread_local! {
    static RUN: RefCell<Option<Run>> = const { RefCell::new(None) };
}

/// How a run ended early.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stopped {
    Deadline,
    Cancelled,
}

/// Runs `f` (one rule's evaluation on this thread) under `deadline` and `cancel`; `Err` when
/// either stopped it, whatever `f` returned.
pub(super) fn guarded<T>(
    deadline: Instant,
    cancel: &Arc<AtomicBool>,
    literals: &Arc<Regexes>,
    f: impl FnOnce() -> T,
) -> Result<T, Stopped> {
    let run =
        Run { deadline, cancel: cancel.clone(), stopped: false, literals: literals.clone(), dynamic: HashMap::new() };
    RUN.with(|r| *r.borrow_mut() = Some(run));
    let out = f();
    let stopped = expired();
    RUN.with(|r| *r.borrow_mut() = None);
    match stopped {
        true if cancel.load(Ordering::Relaxed) => Err(Stopped::Cancelled),
        true => Err(Stopped::Deadline),
        false => Ok(out),
    }
}

/// Whether the current run is past its deadline or cancelled (sticky once true).
fn expired() -> bool {
    RUN.with(|r| match r.borrow_mut().as_mut() {
        Some(run) => {
            if !run.stopped && (run.cancel.load(Ordering::Relaxed) || Instant::now() >= run.deadline) {
                run.stopped = true;
            }
            run.stopped
        }
        None => false,
    })
}

/// Consulted before the context's variables on every read of one: past the deadline, `null`.
pub(super) struct Watch;

impl VariableResolver for Watch {
    fn resolve<'b>(&'b self, _variable: &str) -> Option<CowVal<'b, 'b>> {
        expired().then(|| CowVal::owned(CelNull))
    }
}

/// Compiles a pattern as `matches` does, within [`REGEX_SIZE_LIMIT`].
pub(super) fn compile_regex(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|err| format!("'{pattern}' not a valid regex:\n{err}"))
}

fn cached_matches(this: &CelString<'_>, re: &CelString<'_>) -> Result<CelBool, ExecutionError> {
    if expired() {
        return Err(ExecutionError::function_error("matches", "stopped at the deadline"));
    }
    let pattern = re.inner();
    let found = RUN.with(|r| {
        let mut r = r.borrow_mut();
        let run = r.as_mut()?;
        if let Some(hit) = run.literals.get(pattern).or_else(|| run.dynamic.get(pattern)) {
            return Some(hit.clone());
        }
        let compiled = compile_regex(pattern);
        if run.dynamic.len() < MAX_DYNAMIC_REGEXES {
            run.dynamic.insert(pattern.to_owned(), compiled.clone());
        }
        Some(compiled)
    });
    match found.unwrap_or_else(|| compile_regex(pattern)) {
        Ok(regex) => Ok(CelBool::from(regex.is_match(this.inner()))),
        Err(message) => Err(ExecutionError::FunctionError { function: "matches".into(), message }),
    }
}

/// Declares [`MATCHES`] (global and member) on `env`.
pub(super) fn declare(env: &mut cel::Env) {
    cel::add_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>,
        name = MATCHES, id = "matches_cached")
    .expect("a new overload");
    cel::add_member_overload!(env, fn cached_matches: (CelString, CelString) -> Result<CelBool>,
        name = MATCHES, id = "string_matches_cached")
    .expect("a new overload");
}

/// Renames every `matches` call of `e` to [`MATCHES`] and compiles its literal patterns.
pub(super) fn rewrite(e: &mut IdedExpr, literals: &mut Regexes) {
    match &mut e.expr {
        Expr::Call(call) => {
            let arity = call.args.len() + usize::from(call.target.is_some());
            if call.func_name == "matches" && arity == 2 {
                call.func_name = MATCHES.to_owned();
                if let Some(Expr::Literal(LiteralValue::String(p))) = call.args.last().map(|p| &p.expr) {
                    literals.entry(p.inner().to_owned()).or_insert_with(|| compile_regex(p.inner()));
                }
            }
            if let Some(t) = call.target.as_mut() {
                rewrite(t, literals);
            }
            call.args.iter_mut().for_each(|a| rewrite(a, literals));
        }
        Expr::Select(select) => rewrite(&mut select.operand, literals),
        Expr::List(list) => list.elements.iter_mut().for_each(|x| rewrite(x, literals)),
        Expr::Map(map) => map.entries.iter_mut().for_each(|x| rewrite_entry(&mut x.expr, literals)),
        Expr::Struct(s) => s.entries.iter_mut().for_each(|x| rewrite_entry(&mut x.expr, literals)),
        Expr::Comprehension(c) => {
            for part in [&mut c.iter_range, &mut c.accu_init, &mut c.loop_cond, &mut c.loop_step, &mut c.result] {
                rewrite(part, literals);
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn rewrite_entry(entry: &mut EntryExpr, literals: &mut Regexes) {
    match entry {
        EntryExpr::MapEntry(m) => {
            rewrite(&mut m.key, literals);
            rewrite(&mut m.value, literals);
        }
        EntryExpr::StructField(f) => rewrite(&mut f.value, literals),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::compile::ENV;
    use cel::{Context, Value};
    use std::time::Duration;

    fn context() -> Context<'static, 'static> {
        let mut context = Context::with_env(ENV.clone());
        context.set_variable_resolver(&Watch);
        let list: Vec<Value> = (0..2_000).map(|i| Value::from(format!("l{i}"))).collect();
        context.add_variable_from_value("layers", Value::List(Arc::new(list)));
        context
    }

    /// Past the deadline or once cancelled, every variable reads as null: a macro over a long
    /// list ends at its next read, and the run reports why, whatever the rule returned.
    #[test]
    fn a_run_past_its_deadline_or_cancelled_stops_at_the_next_read() {
        let context = context();
        let program = ENV.compile("layers.all(a, a != '' && size(layers) > 0)").unwrap();
        let regexes = Arc::new(Regexes::new());
        let never = Arc::new(AtomicBool::new(false));
        let far = Instant::now() + Duration::from_secs(60);
        let ran = guarded(far, &never, &regexes, || Value::resolve(program.expression(), &context));
        assert_eq!(ran, Ok(Ok(Value::Bool(true))));
        let mut inner = None;
        let late =
            guarded(Instant::now(), &never, &regexes, || inner = Some(Value::resolve(program.expression(), &context)));
        assert_eq!(late, Err(Stopped::Deadline));
        assert!(matches!(inner, Some(Err(_))), "the first read ended it: {inner:?}");
        let cancelled = Arc::new(AtomicBool::new(true));
        let mut inner = None;
        let stopped =
            guarded(far, &cancelled, &regexes, || inner = Some(Value::resolve(program.expression(), &context)));
        assert_eq!(stopped, Err(Stopped::Cancelled));
        assert!(matches!(inner, Some(Err(_))), "{inner:?}");
        assert!(!expired(), "nothing is left of a run once it ended");
    }

    /// A pattern that takes milliseconds to compile, over 2,000 strings: compiled once with the
    /// rule, not once per string (which took over a minute for 20,000).
    #[test]
    fn a_literal_pattern_is_compiled_once_per_rule() {
        let context = context();
        let pattern = r"^(l|m|n)[0-9]{1,8}(\.[a-z0-9]{1,20}){0,6}$";
        let mut expr = ENV.compile(&format!("layers.all(a, a.matches(r'{pattern}'))")).unwrap().expression().clone();
        let mut regexes = Regexes::new();
        rewrite(&mut expr, &mut regexes);
        assert_eq!(regexes.keys().collect::<Vec<_>>(), [pattern]);
        let regexes = Arc::new(regexes);
        let never = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let far = started + Duration::from_secs(60);
        let ran = guarded(far, &never, &regexes, || Value::resolve(&expr, &context));
        assert_eq!(ran, Ok(Ok(Value::Bool(true))));
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    }
}
