//! ModelPolicy rules: CEL expressions compiled once per policy generation and evaluated on the
//! variables of one digest ([`Variables`]). A rule passes only when it evaluates to `true`.
//!
//! Cost is bounded in three steps. When compiled, an expression has at most
//! [`MAX_EXPRESSION_BYTES`] bytes, [`MAX_BRACKET_DEPTH`] nested brackets (checked before parsing,
//! so the parser's recursion stays shallow), [`MAX_NODES`] syntax nodes and
//! [`MAX_COMPREHENSION_DEPTH`] nested macros (`all`, `exists`, `map`, …). Before it is evaluated,
//! its worst case on the artifact at hand, from the actual list lengths, string lengths and sizes
//! of the variables, must stay under [`MAX_COST`] and [`MAX_MEMORY`], else the rule fails with
//! that reason without running. While it runs, it is stopped at [`RULE_DEADLINE`]; regular
//! expressions are compiled once per rule. The lists themselves hold at most
//! [`variables::MAX_LIST_ENTRIES`] entries.

mod compile;
mod cost;
mod documents;
mod evaluate;
mod run;
mod shape;
mod variables;

pub use compile::{
    CompiledPolicy, CompiledRule, MAX_BRACKET_DEPTH, MAX_COMPREHENSION_DEPTH, MAX_EXPRESSION_BYTES, MAX_NODES, compile,
};
pub use documents::{PolicyDocument, parse_documents};
/// Most work one rule may take on one artifact, estimated before it runs: bytes copied or
/// compared, and a fixed price per node visited and per macro turn (see `cost.rs`).
pub const MAX_COST: u64 = 100_000_000;
/// Most bytes of values one rule may hold at once on one artifact, estimated before it runs.
pub const MAX_MEMORY: u64 = 32 << 20;
/// How long one rule may run, checked at every read of a variable and every `matches`.
pub const RULE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

pub use evaluate::{RuleResult, evaluate, evaluate_json, evaluate_off_workers};
pub use variables::{
    Collected, LayerVar, MAX_LIST_ENTRIES, NAMES, ReferrerVar, Source, Variables, VerifiedVar, collect,
};

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
