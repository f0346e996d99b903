//! The one exit-code table of every subcommand. A pipeline must tell "refused" from "could not
//! decide": a registry that is down says nothing about the artifact, so it never exits like a
//! rejected signature or a failed rule. The pull Jobs' `podFailurePolicy` reads the same constants
//! ([`Exit::FINAL`]), so the table and the Jobs cannot drift apart.

/// How a subcommand ended. The numbers are a contract (scripts and Jobs match on them): add, never
/// renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Exit {
    /// Yes: verified, every Enforce rule passed, pulled, clean.
    Ok = 0,
    /// A negative verdict on the artifact or the cache: a signature rejected, an Enforce rule
    /// failed, an artifact refused (a digest that does not match, a crafted archive), a scrub that
    /// removed something.
    Refused = 1,
    /// The command line or the material it names is wrong (a flag, a key file, a policy that does
    /// not compile): running it again will not help.
    Usage = 2,
    /// The model does not fit the node's cache, even after eviction.
    NoRoom = 3,
    /// Could not decide: a registry down or refusing the credentials, a timeout, a disk error.
    /// Trying again later may give an answer.
    Undecided = 4,
}

impl Exit {
    /// Every code, in order (the table `--help` and the docs print).
    pub const ALL: [Exit; 5] = [Exit::Ok, Exit::Refused, Exit::Usage, Exit::NoRoom, Exit::Undecided];

    /// The codes after which a Job must not retry: the same arguments on the same node give the
    /// same answer (the Jobs' `podFailurePolicy` `FailJob` rule). Every other failure is retried
    /// within the Job's backoff limit, as before.
    pub const FINAL: [Exit; 2] = [Exit::Usage, Exit::NoRoom];

    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The name the docs use for the code.
    pub const fn name(self) -> &'static str {
        match self {
            Exit::Ok => "ok",
            Exit::Refused => "refused",
            Exit::Usage => "usage",
            Exit::NoRoom => "no room",
            Exit::Undecided => "undecided",
        }
    }

    /// One line per code: what `--help` prints after the commands and what docs/cli.md's table holds.
    pub const fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "yes: verified, every Enforce rule passed, pulled, clean",
            Exit::Refused => {
                "a negative verdict: signature rejected, rule failed, artifact refused, scrub removed files"
            }
            Exit::Usage => "usage: a flag, a file it names, or a policy that does not compile",
            Exit::NoRoom => "no room: the model does not fit the node's cache, even after eviction",
            Exit::Undecided => "could not decide: registry down or refusing credentials, timeout, disk error",
        }
    }

    /// The table as `--help` prints it.
    pub fn table() -> String {
        let mut s = String::from("Exit codes (every subcommand):\n");
        for exit in Exit::ALL {
            s.push_str(&format!("  {}  {}\n", exit.code(), exit.meaning()));
        }
        s
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> std::process::ExitCode {
        std::process::ExitCode::from(exit.code())
    }
}

impl crate::registry::Error {
    /// A registry error never judges the artifact: bad arguments are usage, the rest undecided.
    pub fn exit(&self) -> Exit {
        use crate::registry::Error as E;
        match self {
            E::InvalidReference { .. }
            | E::InvalidMirror { .. }
            | E::Credentials { .. }
            | E::InvalidSemver { .. }
            | E::InvalidFilter { .. }
            | E::InvalidCa(_) => Exit::Usage,
            // Judged and refused: what was served is not the artifact asked for (bytes that do not
            // match their digest, more than a manifest may be), not a ModelPack, or a redirect to
            // an address the trust boundary forbids.
            E::ModelPack(_) | E::DigestMismatch { .. } | E::TooLarge { .. } | E::ForbiddenAddress { .. } => {
                Exit::Refused
            }
            _ => Exit::Undecided,
        }
    }
}

impl crate::cache::Error {
    /// What a failed pull, scrub or gc tells a Job: refused content, no room, or try again.
    pub fn exit(&self) -> Exit {
        use crate::cache::Error as E;
        match self {
            E::InvalidDigest(_) | E::InvalidLink(_) => Exit::Usage,
            E::SizeMismatch { .. }
            | E::DigestMismatch { .. }
            | E::DiffIdMismatch { .. }
            | E::DuplicatePath(_)
            | E::UnsafeEntry { .. }
            | E::Archive { .. }
            | E::ExtractionLimit { .. }
            | E::TooManyEntries { .. }
            | E::LayerNotInRepository { .. }
            | E::SignedFiles(_)
            | E::ModelPack(_) => Exit::Refused,
            E::InsufficientStorage { .. } => Exit::NoRoom,
            E::Registry(e) => e.exit(),
            E::Io { .. } | E::Download { .. } | E::TooSlow { .. } | E::Internal(_) => Exit::Undecided,
        }
    }
}

impl crate::verify::Error {
    pub fn exit(&self) -> Exit {
        use crate::verify::Error as E;
        match self {
            E::Rejected { .. } => Exit::Refused,
            E::InvalidKey(_) | E::InvalidTrust(_) => Exit::Usage,
            E::Registry(e) => e.exit(),
        }
    }
}

impl crate::policy::Error {
    pub fn exit(&self) -> Exit {
        use crate::policy::Error as E;
        match self {
            E::Compile { .. }
            | E::TooComplex { .. }
            | E::UndeclaredVariable { .. }
            | E::UndeclaredFunction { .. }
            | E::DuplicateRule { .. }
            | E::InvalidDocument { .. } => Exit::Usage,
            // More entries than a rule may iterate: the artifact was read and cannot be judged
            // within the bounds, which the controller treats as a failed rule too.
            E::TooManyEntries { .. } | E::ModelPack(_) => Exit::Refused,
            E::Registry(e) => e.exit(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_contract() {
        let codes: Vec<u8> = Exit::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes, [0, 1, 2, 3, 4]);
        assert!(Exit::FINAL.iter().all(|e| *e != Exit::Ok && *e != Exit::Undecided));
    }

    #[test]
    fn a_registry_outage_is_never_a_verdict() {
        use crate::registry::Error as E;
        let outages = || {
            [
                E::Unavailable { registry: "r".into(), detail: "connection refused".into() },
                E::Timeout { registry: "r".into(), after: std::time::Duration::ZERO },
                E::Unauthorized { registry: "r".into(), detail: "401".into() },
            ]
        };
        for e in outages() {
            assert_eq!(e.exit(), Exit::Undecided, "{e}");
        }
        for e in outages() {
            assert_eq!(crate::verify::Error::Registry(e).exit(), Exit::Undecided);
        }
        for e in outages() {
            assert_eq!(crate::cache::Error::Registry(e).exit(), Exit::Undecided);
        }
        for e in outages() {
            assert_eq!(crate::policy::Error::Registry(e).exit(), Exit::Undecided);
        }
    }

    #[test]
    fn content_that_does_not_match_is_refused_and_no_room_is_final() {
        let mismatch = crate::cache::Error::DigestMismatch { expected: "a".into(), actual: "b".into() };
        assert_eq!(mismatch.exit(), Exit::Refused);
        let full = crate::cache::Error::InsufficientStorage { needs: 2, free: 1, evicted: Vec::new() };
        assert_eq!(full.exit(), Exit::NoRoom);
        assert!(Exit::FINAL.contains(&full.exit()));
        let rejected = crate::verify::Error::rejected(crate::verify::Rejection::BadSignature, "");
        assert_eq!(rejected.exit(), Exit::Refused);
    }
}
