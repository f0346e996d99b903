//! Which digest a verifying Model accepts, as a pure decision over the verdicts of this pass.
//!
//! A digest is accepted only while it verifies under the trust in force. Each pass verifies the
//! resolved digest; when that does not pass and an older digest is accepted, the older one is
//! verified again under the same trust. A definite refusal (a signature rejected, the trust
//! Secret missing or unusable, a provider that does not match the material) revokes it; an
//! undecided check (the registry did not answer) keeps it, since an outage is not a revocation.
//! A revoked digest is checked the same way at every pass and is accepted again only when it
//! passes (the trust was restored); an undecided check does not restore it.

use super::Error;

/// The verdict of one verification under the trust in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    Passed,
    /// Checked and refused: the trust in force does not accept this digest.
    Refused,
    /// Could not be checked (registry or API errors): says nothing about the trust.
    Undecided,
}

impl Check {
    pub fn of(result: &Result<(), &Error>) -> Check {
        use crate::verify::Error as V;
        match result {
            Ok(()) => Check::Passed,
            Err(Error::Verify(V::Rejected { .. } | V::InvalidKey(_) | V::InvalidTrust(_))) => Check::Refused,
            Err(Error::InvalidSecret { .. } | Error::SecretNotFound { .. }) => Check::Refused,
            Err(_) => Check::Undecided,
        }
    }
}

/// What the Model accepts after this pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Acceptance {
    /// The resolved digest passed: it is accepted.
    Resolved,
    /// The previously accepted digest stays accepted.
    Keep,
    /// Nothing was accepted and nothing is.
    Nothing,
    /// The previously accepted (or revoked) digest no longer verifies: nothing is accepted.
    Revoked,
}

/// The digest accepted before this pass, or revoked before it, and its verdict now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Previous {
    pub check: Check,
    pub revoked: bool,
}

/// `resolved`: the resolved digest's verdict. `previous`: the digest accepted or revoked before this
/// pass (its verdict is the resolved one when it is the resolved digest), `None` when there is none.
pub fn accept(resolved: Check, previous: Option<Previous>) -> Acceptance {
    match (resolved, previous.map(|p| (p.check, p.revoked))) {
        (Check::Passed, _) => Acceptance::Resolved,
        (_, None) => Acceptance::Nothing,
        (_, Some((Check::Passed, _) | (Check::Undecided, false))) => Acceptance::Keep,
        (_, Some((Check::Refused, _) | (Check::Undecided, true))) => Acceptance::Revoked,
    }
}

/// One gate's verdicts in a pass: on the resolved digest and, when another digest was accepted (or
/// revoked) before, on that one (`None`: there was none, or it is the resolved digest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Gate {
    pub resolved: Check,
    pub before: Option<Check>,
}

impl Check {
    /// The verdict of several gates on one digest: a refusal outweighs an undecided check, which
    /// outweighs a pass.
    fn worst(self, other: Check) -> Check {
        match (self, other) {
            (Check::Refused, _) | (_, Check::Refused) => Check::Refused,
            (Check::Undecided, _) | (_, Check::Undecided) => Check::Undecided,
            (Check::Passed, Check::Passed) => Check::Passed,
        }
    }
}

/// What the Model accepts after a pass judged by every gate in `gates` (none: everything passes).
/// `before`: whether a digest was accepted before this pass (`Some(false)`) or revoked
/// (`Some(true)`).
pub fn decide(gates: &[Gate], before: Option<bool>) -> Acceptance {
    let resolved = gates.iter().fold(Check::Passed, |all, g| all.worst(g.resolved));
    let previous = before.map(|revoked| {
        let check = gates.iter().fold(Check::Passed, |all, g| all.worst(g.before.unwrap_or(g.resolved)));
        Previous { check, revoked }
    });
    accept(resolved, previous)
}

#[cfg(test)]
mod tests {
    use super::*;
    use Acceptance::*;
    use Check::*;

    #[test]
    fn every_combination_of_verdicts() {
        let accepted = |check| Some(Previous { check, revoked: false });
        let revoked = |check| Some(Previous { check, revoked: true });
        let table = [
            (Passed, None, Resolved),
            (Passed, accepted(Passed), Resolved),
            (Passed, accepted(Refused), Resolved),
            (Passed, accepted(Undecided), Resolved),
            (Passed, revoked(Refused), Resolved),
            (Passed, revoked(Undecided), Resolved),
            (Refused, None, Nothing),
            (Undecided, None, Nothing),
            // An accepted digest stays accepted until a definite refusal.
            (Refused, accepted(Passed), Keep),
            (Undecided, accepted(Passed), Keep),
            (Refused, accepted(Undecided), Keep),
            (Undecided, accepted(Undecided), Keep),
            (Refused, accepted(Refused), Revoked),
            (Undecided, accepted(Refused), Revoked),
            // A revoked digest is accepted again only when it passes.
            (Refused, revoked(Passed), Keep),
            (Undecided, revoked(Passed), Keep),
            (Refused, revoked(Undecided), Revoked),
            (Undecided, revoked(Undecided), Revoked),
            (Refused, revoked(Refused), Revoked),
            (Undecided, revoked(Refused), Revoked),
        ];
        for (resolved, previous, want) in table {
            assert_eq!(accept(resolved, previous), want, "resolved {resolved:?}, previous {previous:?}");
        }
    }

    #[test]
    fn gates_are_combined_by_their_worst_verdict_on_each_digest() {
        let gate = |resolved, before| Gate { resolved, before };
        assert_eq!(decide(&[], None), Resolved, "no gate: the resolved digest is accepted");
        assert_eq!(decide(&[], Some(false)), Resolved);
        assert_eq!(decide(&[gate(Passed, Some(Refused)), gate(Passed, None)], Some(false)), Resolved);
        // One gate refusing the resolved digest keeps the one accepted before, unless a gate refuses
        // that one too.
        assert_eq!(decide(&[gate(Passed, Some(Passed)), gate(Refused, Some(Passed))], Some(false)), Keep);
        assert_eq!(decide(&[gate(Passed, Some(Refused)), gate(Refused, Some(Passed))], Some(false)), Revoked);
        assert_eq!(decide(&[gate(Undecided, Some(Undecided)), gate(Passed, Some(Passed))], Some(false)), Keep);
        // A refusal outweighs an outage: one gate that cannot check does not save a refused digest.
        assert_eq!(decide(&[gate(Refused, Some(Undecided)), gate(Passed, Some(Refused))], Some(false)), Revoked);
        assert_eq!(decide(&[gate(Undecided, Some(Undecided)), gate(Passed, Some(Passed))], Some(true)), Revoked);
        // The same digest: the resolved verdict is the one accepted before.
        assert_eq!(decide(&[gate(Refused, None)], Some(false)), Revoked);
        assert_eq!(decide(&[gate(Undecided, None)], Some(false)), Keep);
        assert_eq!(decide(&[gate(Refused, Some(Passed))], None), Nothing);
        assert_eq!(decide(&[gate(Refused, Some(Passed)), gate(Passed, Some(Passed))], Some(true)), Keep);
    }

    #[test]
    fn refusals_are_told_from_outages() {
        use crate::verify::{Error as V, Rejection};
        let rejected = Error::Verify(V::rejected(Rejection::BadSignature, "signed by another key"));
        let table = [
            (rejected, Refused),
            (Error::Verify(V::InvalidTrust("bad policy".into())), Refused),
            (Error::Verify(V::InvalidKey("not PEM".into())), Refused),
            (Error::SecretNotFound { name: "ml/keys".into() }, Refused),
            (Error::InvalidSecret { name: "ml/keys".into(), reason: "has no *.pub".into() }, Refused),
            (
                Error::Verify(V::Registry(crate::registry::Error::Unavailable {
                    registry: "r".into(),
                    detail: "refused".into(),
                })),
                Undecided,
            ),
            (
                Error::Registry(crate::registry::Error::Timeout {
                    registry: "r".into(),
                    after: std::time::Duration::from_secs(1),
                }),
                Undecided,
            ),
        ];
        for (error, want) in table {
            assert_eq!(Check::of(&Err(&error)), want, "{error}");
        }
        assert_eq!(Check::of(&Ok(())), Passed);
    }
}
