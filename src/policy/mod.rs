//! ModelPolicy rules: CEL expressions compiled once per policy generation and evaluated on the
//! variables of one digest ([`Variables`]). A rule passes only when it evaluates to `true`.
//!
//! Cost is bounded without a cost model: an expression has at most [`MAX_EXPRESSION_BYTES`] bytes,
//! [`MAX_BRACKET_DEPTH`] nested brackets (checked before parsing, so the parser's recursion stays
//! shallow), [`MAX_NODES`] syntax nodes and [`MAX_COMPREHENSION_DEPTH`] nested macros
//! (`all`, `exists`, `map`, …); the lists it iterates hold at most
//! [`variables::MAX_LIST_ENTRIES`] entries. One evaluation therefore makes at most
//! `MAX_NODES × MAX_LIST_ENTRIES²` steps, and typically a few hundred.

mod compile;
mod documents;
mod evaluate;
mod variables;

pub use compile::{
    CompiledPolicy, CompiledRule, MAX_BRACKET_DEPTH, MAX_COMPREHENSION_DEPTH, MAX_EXPRESSION_BYTES, MAX_NODES, compile,
};
pub use documents::{PolicyDocument, parse_documents};
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
