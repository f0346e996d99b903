//! ModelPolicy rules: CEL expressions compiled once per policy generation and evaluated on the
//! variables of one digest ([`Variables`]). A rule passes only when it evaluates to `true`.
//!
//! Cost is bounded in two steps. When compiled, an expression has at most [`MAX_EXPRESSION_BYTES`]
//! bytes, [`MAX_BRACKET_DEPTH`] nested brackets (checked before parsing, so the parser's recursion
//! stays shallow), [`MAX_NODES`] syntax nodes and [`MAX_COMPREHENSION_DEPTH`] nested macros (`all`,
//! `exists`, `map`, …). Before it is evaluated, its worst case on the artifact at hand — its nodes
//! times the largest list or map of the variables to the power of its macro nesting — must stay
//! under [`MAX_COST`], else the rule fails with that reason (measured: about 1.3 µs a step in the
//! release build, so under a second; a nested macro over 1024 layers twice took 5.4 s). The lists themselves hold
//! at most [`variables::MAX_LIST_ENTRIES`] entries.

mod compile;
mod documents;
mod evaluate;
mod variables;

pub use compile::{
    CompiledPolicy, CompiledRule, MAX_BRACKET_DEPTH, MAX_COMPREHENSION_DEPTH, MAX_EXPRESSION_BYTES, MAX_NODES, compile,
};
pub use documents::{PolicyDocument, parse_documents};
/// Most steps (syntax nodes visited) one rule may take on one artifact.
pub const MAX_COST: u64 = 500_000;

pub use evaluate::{RuleResult, evaluate, evaluate_json};
pub use variables::{Collected, LayerVar, MAX_LIST_ENTRIES, NAMES, ReferrerVar, Source, Variables, collect};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rule {rule:?} does not compile: {message}")]
    Compile { rule: String, message: String },
    #[error("rule {rule:?} is too complex: {what}")]
    TooComplex { rule: String, what: String },
    #[error("rule {rule:?} uses {name:?}, which is not a variable (variables: {})", NAMES.join(", "))]
    UndeclaredVariable { rule: String, name: String },
    #[error("rule {rule:?} calls {name:?}, which is not a standard CEL function")]
    UndeclaredFunction { rule: String, name: String },
    #[error("rule {rule:?} appears more than once")]
    DuplicateRule { rule: String },
    #[error("{what}: {count} entries, more than the {MAX_LIST_ENTRIES} a rule may iterate")]
    TooManyEntries { what: &'static str, count: usize },
    #[error("{origin}: {detail}")]
    InvalidDocument { origin: String, detail: String },
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error(transparent)]
    ModelPack(#[from] crate::modelpack::Error),
}
