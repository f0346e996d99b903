//! The subcommands, one file each: their flags, their run function and their output. `main` only
//! parses, builds the one runtime and turns what a command returns into the exit code of
//! [`Exit`], the one table every subcommand (and the Jobs' `podFailurePolicy`) uses.

pub mod check;
pub mod crd;
pub mod gc;
pub mod inspect;
pub mod keyless;
pub mod model_signing;
pub mod pull;
pub mod registry;
pub mod run;
pub mod scrub;
pub mod trust;
pub mod verify;

pub use registry::RegistryArgs;

use modelpack_operator::exit::Exit;
use modelpack_operator::printable::printable;

/// Why a command ended without its answer, and so its exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
        Failure { exit: Exit::Usage, error: error.into() }
    }
}

/// An error is classified by the first error of its chain that the library knows (each of its error
/// enums says its exit code); anything else (a file that cannot be written, a runtime that does not
/// start) could not decide.
impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure { exit: exit_of(&error), error }
    }
}

macro_rules! classified {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(error: $t) -> Failure {
                Failure { exit: error.exit(), error: error.into() }
            }
        }
    )*};
}
classified!(
    modelpack_operator::registry::Error,
    modelpack_operator::cache::Error,
    modelpack_operator::verify::Error,
    modelpack_operator::policy::Error
);

impl From<modelpack_operator::modelpack::Error> for Failure {
    fn from(error: modelpack_operator::modelpack::Error) -> Failure {
        Failure { exit: Exit::Refused, error: error.into() }
    }
}

/// Errors of our own output (a report that does not serialise, a terminal that went away) decide
/// nothing about the artifact.
macro_rules! undecided {
    ($($t:ty),*) => {$(
        impl From<$t> for Failure {
            fn from(error: $t) -> Failure {
                Failure { exit: Exit::Undecided, error: error.into() }
            }
        }
    )*};
}
undecided!(serde_json::Error, std::io::Error);

fn exit_of(error: &anyhow::Error) -> Exit {
    use modelpack_operator::{cache, modelpack, policy, registry, verify};
    for cause in error.chain() {
        if let Some(e) = cause.downcast_ref::<registry::Error>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<cache::Error>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<verify::Error>() {
            return e.exit();
        }
        if let Some(e) = cause.downcast_ref::<policy::Error>() {
            return e.exit();
        }
        if cause.downcast_ref::<modelpack::Error>().is_some() {
            return Exit::Refused;
        }
    }
    Exit::Undecided
}

/// `.usage()?`: this error comes from what the command line names (a flag's value, a file to
/// read), so running again will not help (exit 2).
pub trait Usage<T> {
    fn usage(self) -> Result<T, Failure>;
}

impl<T, E: Into<anyhow::Error>> Usage<T> for Result<T, E> {
    fn usage(self) -> Result<T, Failure> {
        self.map_err(Failure::usage)
    }
}

/// Output format of the commands that print a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Text,
    Json,
}

/// One line whatever the error carries (registry or manifest text can hold newlines, escape
/// sequences and megabytes): each cause once, control characters become spaces, and the line is cut.
pub fn one_line(e: &anyhow::Error) -> String {
    const MAX_CHARS: usize = 900;
    let text = modelpack_operator::chain::one_line(e.as_ref());
    let mut line: String = printable(&text).chars().take(MAX_CHARS).collect();
    if text.chars().nth(MAX_CHARS).is_some() {
        line.push('…');
    }
    line
}

/// Bytes a second (`64Mi`), for `--rate`-like flags.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    match modelpack_operator::cache::CacheLimit::parse(text).map_err(|e| e.to_string())? {
        modelpack_operator::cache::CacheLimit::Bytes(bytes) => Ok(bytes),
        _ => Err(format!("{text:?}: expected bytes a second (64Mi), not a percentage")),
    }
}

/// A duration (`24h`, `90s`) or `0` (off).
pub fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    if text == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    modelpack_operator::api::duration::parse(text).map_err(|e| e.to_string())
}
