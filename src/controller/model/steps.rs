//! The steps of a Model pass, in the order [`super::run`] calls them. Each reads what the steps
//! before it left in the [`Pass`], records what it found in the status being built, and returns an
//! [`Outcome`]; none writes a condition. The world outside is asked through [`Outside`]; an API
//! failure in its answer ends the pass at the `?`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::outside::Outside;
use super::summary::{Failure, Outcome, Step, Tally, Verdict};
use super::{Pass, failures, record, ref_spec};
use crate::api::conditions::Reason;
use crate::api::{ModelStatus, VerifyProvider, VerifySpec};
use crate::controller::Error;
use crate::controller::acceptance::{self, Acceptance, Check, Gate};
use crate::controller::compliance;
use crate::registry::RefSpec;
use crate::verify::Verification;

/// Registry access for the Model, and its ref resolved to a digest.
pub async fn resolve<O: Outside>(p: &mut Pass<'_, O>) -> Result<Outcome, Error> {
    let spec = ref_spec(&p.model.spec.reference);
    p.next.reference = spec.as_ref().ok().map(RefSpec::describe);
    let resolved = match spec {
        Err(e) => Err(e),
        Ok(spec) => match p.io.access(p.model, &p.namespace).await? {
            Err(e) => Err(e),
            Ok(access) => {
                let resolved = p.io.resolve(&access, &spec, p.every).await?;
                p.access = Some(access);
                resolved.map(|(resolution, due)| {
                    p.due = due;
                    resolution
                })
            }
        },
    };
    match resolved {
        Ok(resolution) => {
            let note = format!("resolved {} to {}", record::describe_tag(&resolution.tag), resolution.digest);
            p.resolution = Some(resolution);
            Ok(Outcome::passed(Step::Resolve, note))
        }
        Err(e) => Ok(counted_failure(p, Step::Resolve, e)),
    }
}

/// The resolved digest's manifest and ModelPack config, recorded with the resolution.
pub async fn inspect<O: Outside>(p: &mut Pass<'_, O>) -> Result<Outcome, Error> {
    let (Some(access), Some(resolution)) = (&p.access, &p.resolution) else {
        return Ok(Outcome::new(Step::Inspect, Verdict::Skipped));
    };
    let inspection = match p.io.inspect(access, &resolution.digest).await? {
        Ok(inspection) => inspection,
        Err(e) => return Ok(counted_failure(p, Step::Inspect, e)),
    };
    let note = if inspection.warnings.is_empty() { "" } else { " (warning: the ModelPack config is empty)" };
    let mut outcome = Outcome::passed(Step::Inspect, note);
    outcome.events.extend(record::resolution(&mut p.next, resolution, &inspection, &p.now));
    outcome.tally = Some(Tally::Resolution("success"));
    p.inspection = Some(inspection);
    Ok(outcome)
}

/// The gate of `spec.verify`: the resolved digest's signature under the trust in force, and what
/// that trust says of the digest accepted (or revoked) before, which it may revoke (see
/// [`acceptance`]).
pub async fn verify<O: Outside>(p: &mut Pass<'_, O>) -> Result<Outcome, Error> {
    let Some(spec) = p.model.spec.verify.as_ref() else {
        // Without verification nothing is revoked by trust.
        p.next.revoked = None;
        return Ok(Outcome::new(Step::Verify, Verdict::Skipped));
    };
    let (Some(resolution), Some(inspection)) = (&p.resolution, p.inspection.clone()) else {
        return Ok(Outcome::new(Step::Verify, Verdict::Skipped));
    };
    let digest = resolution.digest.clone();
    let (trust, verified) = match p.io.trust(spec, &p.namespace).await? {
        Ok(t) => {
            let verified = p.io.verify(access(p)?, p.model, &t, &inspection).await?;
            (Some(t), verified)
        }
        Err(e) => (None, Err(e)),
    };
    let tally = tally(spec.provider, &verified);
    let verified = verified.map(|(v, _)| v);
    let resolved = check(&verified);
    let again = match (&p.before, &trust) {
        (Some((d, _)), Some(t)) if *d != digest => Some(again(p, t, d).await?),
        _ => None,
    };
    let before = p.before.as_ref().map(|_| again.as_ref().map_or(resolved, check));
    let gate = Gate { resolved, before };
    let mut outcome = match verified {
        Ok(v) => {
            if v.digest == digest {
                p.verified = crate::policy::VerifiedVar::of(&v);
            }
            passed(&mut p.next, spec, &v, &p.now)
        }
        Err(error) => refused(p, spec, gate, &error, again),
    };
    outcome.gate = Some(gate);
    outcome.tally = tally;
    Ok(outcome)
}

fn check(verified: &Result<Verification, Error>) -> Check {
    Check::of(&verified.as_ref().map(|_| ()))
}

/// `modelpack_verifications_total` counts verdicts reached this pass, not cached ones.
fn tally(provider: VerifyProvider, verified: &Result<(Verification, bool), Error>) -> Option<Tally> {
    let result = match verified {
        Ok((_, true)) => return None,
        Ok((v, false)) if v.enforced => "verified",
        Ok((_, false)) => "audit",
        Err(Error::Verify(crate::verify::Error::Rejected { .. })) => "rejected",
        Err(_) => "error",
    };
    Some(Tally::Verification { provider: provider.as_str(), result })
}

fn passed(next: &mut ModelStatus, spec: &VerifySpec, v: &Verification, now: &Time) -> Outcome {
    let (condition, event) = record::verification(next, spec, v, now);
    let note = format!(", signed by {}", v.identity);
    let mut outcome = Outcome::new(Step::Verify, Verdict::Passed { condition: Some(condition), note });
    outcome.events.extend(event);
    outcome
}

/// The resolved digest did not verify: the digest accepted before is kept, revoked, or (its trust
/// restored) accepted again.
fn refused<O: Outside>(
    p: &mut Pass<'_, O>,
    spec: &VerifySpec,
    gate: Gate,
    error: &Error,
    again: Option<Result<Verification, Error>>,
) -> Outcome {
    let was_revoked = p.before.as_ref().is_some_and(|(_, revoked)| *revoked);
    let mut outcome = Outcome::new(Step::Verify, Verdict::Failed(failure(p, error)));
    let before = p.before.clone();
    match (acceptance::decide(&[gate], before.as_ref().map(|(_, r)| *r)), before, again) {
        (Acceptance::Revoked, Some((digest, _)), again) => {
            let why = match &again {
                Some(Err(e)) => e.to_string(),
                _ => error.to_string(),
            };
            let message = record::revocation(&mut p.next, &digest, &why, &p.now);
            outcome.verdict =
                Verdict::Failed(Failure { reason: Reason::TrustRevoked, message, stalled: true, requeue: p.every });
        }
        (Acceptance::Keep, _, Some(Ok(restored))) if was_revoked => {
            // The trust was restored: the revoked digest verifies again and is accepted again.
            outcome.events.extend(record::verification(&mut p.next, spec, &restored, &p.now).1);
        }
        _ => {}
    }
    outcome
}

/// The gate of the ModelPolicies that select the Model: every rule on the resolved digest. Under
/// `Enforce` a violation refuses the digest; the digest accepted before is not judged (a policy
/// holds back new versions, it never takes away the one in use). `Audit` violations only show.
pub async fn comply<O: Outside>(p: &mut Pass<'_, O>) -> Result<Outcome, Error> {
    let (Some(access), Some(resolution), Some(inspection)) = (&p.access, &p.resolution, &p.inspection) else {
        return Ok(Outcome::new(Step::Comply, Verdict::Skipped));
    };
    let before = p.before.as_ref().map(|_| Check::Passed);
    // What this pass's verify step found for this very digest (nothing without `spec.verify`).
    let outcome = match p.io.comply(access, p.model, resolution, inspection, &p.verified, p.every).await? {
        Ok(outcome) => outcome,
        Err(e) => {
            // The referrers could not be read: nothing is decided about the digest.
            let mut failed = Outcome::new(Step::Comply, Verdict::Failed(failure(p, &e)));
            failed.gate = Some(Gate { resolved: Check::Undecided, before });
            return Ok(failed);
        }
    };
    p.next.violations = outcome.violations.clone();
    let previous = crate::api::conditions::find(&p.next.conditions, crate::api::conditions::COMPLIANT);
    let Some((condition, event)) = compliance::report(&outcome, previous) else {
        return Ok(Outcome::new(Step::Comply, Verdict::Skipped));
    };
    let (verdict, resolved) = match outcome.blocking() {
        Some(v) => {
            let message = compliance::blocked_message(&resolution.digest, v);
            let failure = Failure { reason: Reason::PolicyViolation, message, stalled: true, requeue: p.every };
            (Verdict::Failed(failure), Check::Refused)
        }
        None => {
            let audited = outcome.violations.len();
            let note = if audited > 0 { format!(" ({audited} ModelPolicy violations, audit)") } else { String::new() };
            (Verdict::Passed { condition: Some(condition.clone()), note }, Check::Passed)
        }
    };
    let mut step = Outcome::new(Step::Comply, verdict);
    if resolved == Check::Passed {
        // A refusal is announced by the summariser's Ready warning.
        step.events.extend(event);
    }
    step.gate = Some(Gate { resolved, before });
    Ok(step)
}

/// Which digest deployments use, from every gate's verdicts (see [`acceptance::decide`]).
pub fn accept<O: Outside>(p: &mut Pass<'_, O>, outcomes: &[Outcome]) -> Outcome {
    let gates: Vec<Gate> = outcomes.iter().filter_map(|o| o.gate).collect();
    let decision = acceptance::decide(&gates, p.before.as_ref().map(|(_, revoked)| *revoked));
    let signing = p.model.spec.verify.as_ref().is_some_and(|v| v.provider == VerifyProvider::ModelSigning);
    match (decision, &p.resolution, &p.before) {
        (Acceptance::Resolved, Some(r), _) => {
            record::acceptance(&mut p.next, Some((&r.digest, r.tag.as_ref())), signing, &p.now)
        }
        (Acceptance::Keep, _, Some((digest, _))) => {
            let tag = p.next.history.iter().find(|h| &h.digest == digest).and_then(|h| h.tag.clone());
            let tag = p.next.accepted.as_ref().filter(|a| &a.digest == digest).map_or(tag, |a| a.tag.clone());
            record::acceptance(&mut p.next, Some((digest, tag.as_ref())), signing, &p.now);
        }
        _ => record::acceptance(&mut p.next, None, signing, &p.now),
    }
    Outcome::passed(Step::Accept, "")
}

/// Verifies the digest accepted (or revoked) before under `trust` (a cached pass when nothing
/// changed); an API failure ends the reconcile.
async fn again<O: Outside>(
    p: &Pass<'_, O>,
    trust: &O::Trust,
    digest: &str,
) -> Result<Result<Verification, Error>, Error> {
    let access = access(p)?;
    Ok(match p.io.inspect(access, digest).await? {
        Ok(inspection) => p.io.verify(access, p.model, trust, &inspection).await?.map(|(v, _)| v),
        Err(e) => Err(e),
    })
}

fn access<'a, O: Outside>(p: &'a Pass<'_, O>) -> Result<&'a crate::controller::access::Access, Error> {
    p.access.as_ref().ok_or_else(|| Error::InvalidSpec("no registry access".into()))
}

/// How `error` shows (see [`failures`]).
fn failure<O: Outside>(p: &Pass<'_, O>, error: &Error) -> Failure {
    let source = p.access.as_ref().and_then(|a| a.credential_source.as_deref());
    failures::failure(error, source, p.every)
}

/// A failure of resolving or inspecting, counted as a resolution result.
fn counted_failure<O: Outside>(p: &Pass<'_, O>, step: Step, error: Error) -> Outcome {
    let failure = failure(p, &error);
    let reason = failure.reason.as_str();
    let mut outcome = Outcome::new(step, Verdict::Failed(failure));
    outcome.tally = Some(Tally::Resolution(reason));
    outcome
}
