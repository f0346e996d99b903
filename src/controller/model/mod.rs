//! The Model reconciler, in Flux's shape: an ordered list of steps ([`Step`]), each a function that
//! reads what the steps before it found and returns a typed [`Outcome`]; [`summary::summarise`]
//! turns the outcomes into conditions, events and metrics in one place, and status is written only
//! when it changed.
//!
//! Adding a step (a policy gate) is one `Step` variant, one function in `steps.rs` returning an
//! `Outcome`, and one line in [`run`]. A gate that fails does not stop the steps after it: `accept`
//! decides from every gate's verdict which digest deployments use.
//!
//! The steps reach the cluster and the registries only through [`outside::Outside`], so a pass
//! runs in tests against fakes (`steps_tests.rs`).

mod failures;
mod outside;
mod record;
mod steps;
mod summary;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::access::Access;
use super::{Error, ModelContext, status};
use crate::api::{Model, ModelReference, ModelStatus};
use crate::registry::{Inspection, RefSpec, Resolution};

use outside::{Live, Outside};
use summary::{Outcome, Step, Summary};

const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);

pub fn interval(model: &Model) -> Duration {
    model.spec.interval.as_deref().and_then(|i| crate::api::duration::parse(i).ok()).unwrap_or(DEFAULT_INTERVAL)
}

pub fn ref_spec(reference: &ModelReference) -> Result<RefSpec, Error> {
    match (&reference.tag, &reference.semver, &reference.digest) {
        (Some(tag), None, None) => Ok(RefSpec::Tag(tag.clone())),
        (None, Some(range), None) => {
            Ok(RefSpec::Semver { range: range.clone(), filter: reference.semver_filter.clone() })
        }
        (None, None, Some(digest)) => Ok(RefSpec::Digest(digest.clone())),
        (None, None, None) => Ok(RefSpec::Tag("latest".into())),
        _ => Err(Error::InvalidSpec("exactly one of ref.tag, ref.semver or ref.digest must be set".into())),
    }
}

/// Whether a Secret change can matter to this Model.
pub fn uses_secret(model: &Model, name: &str) -> bool {
    let spec = &model.spec;
    spec.secret_ref.as_ref().is_some_and(|r| r.name == name)
        || spec.ca_secret_ref.as_ref().is_some_and(|r| r.name == name)
        || spec.verify.as_ref().is_some_and(|v| v.secret_ref.name == name)
        // imagePullSecrets of the ServiceAccount: any Secret of the namespace may be one.
        || spec.service_account_name.is_some()
}

/// What the steps of one pass share: their inputs, the status being built, and what each step found
/// for the ones after it.
pub struct Pass<'a, O: Outside> {
    io: &'a O,
    model: &'a Model,
    namespace: String,
    now: Time,
    every: Duration,
    /// When the resolution this pass used is due again (at most `every`): a Ready Model comes back
    /// then, with the other Models of its reference.
    due: Duration,
    next: ModelStatus,
    /// The digest accepted before this pass (`false`) or revoked (`true`), which gates judge too.
    before: Option<(String, bool)>,
    access: Option<Access>,
    resolution: Option<Resolution>,
    inspection: Option<Arc<Inspection>>,
    /// Who signed the resolved digest, as this pass's verify step found it (an enforced pass
    /// only): what policies see as `verified`.
    verified: crate::policy::VerifiedVar,
}

/// The digest accepted (or revoked) when the pass starts. A status written before `accepted`
/// existed names its accepted digest `verified`.
fn before(status: Option<&ModelStatus>) -> Option<(String, bool)> {
    let status = status?;
    let accepted = status.accepted.as_ref().map(|a| &a.digest).or(status.verified.as_ref().map(|v| &v.digest));
    match (accepted, &status.revoked) {
        (Some(d), _) => Some((d.clone(), false)),
        (None, Some(r)) => Some((r.digest.clone(), true)),
        (None, None) => None,
    }
}

pub async fn reconcile(model: Arc<Model>, ctx: Arc<ModelContext>) -> Result<Action, Error> {
    let namespace = model.namespace().unwrap_or_default();
    let api: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    let current = model.status.as_ref();
    if model.spec.suspend {
        let next =
            ModelStatus { observed_generation: model.metadata.generation, ..current.cloned().unwrap_or_default() };
        status::apply(&api, model.as_ref(), current, &next).await?;
        return Ok(Action::await_change());
    }
    let (next, summary) = decide(&Live(&ctx), &model, Time(jiff::Timestamp::now())).await?;
    let wrote = status::apply(&api, model.as_ref(), current, &next).await?;
    summary.record(&ctx.metrics);
    let requeue = summary.requeue;
    tracing::info!(
        model = %format!("{namespace}/{}", model.name_any()),
        reason = %summary.observation.reason,
        wrote_status = wrote,
        requeue_secs = requeue.as_secs(),
        "reconciled model"
    );
    let reference = model.object_ref(&());
    for event in summary.events(wrote) {
        if let Err(e) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %e, reason = %event.reason, "publishing event failed");
        }
    }
    Ok(Action::requeue(requeue))
}

/// One pass of the steps against `io`: the status it amounts to, and what the summariser concluded.
/// An API failure ends it (the error policy retries).
async fn decide<O: Outside>(io: &O, model: &Model, now: Time) -> Result<(ModelStatus, Summary), Error> {
    let current = model.status.as_ref();
    let mut pass = Pass {
        io,
        model,
        namespace: model.namespace().unwrap_or_default(),
        now,
        every: interval(model),
        due: interval(model),
        next: ModelStatus { observed_generation: model.metadata.generation, ..current.cloned().unwrap_or_default() },
        before: before(current),
        access: None,
        resolution: None,
        inspection: None,
        verified: Default::default(),
    };
    let outcomes = run(&mut pass).await?;
    let mut next = pass.next;
    let summary = summary::summarise(outcomes, model, current, &mut next, &pass.now, pass.due);
    Ok((next, summary))
}

/// Runs the steps in order. A step whose failure leaves nothing for the next (no access, no digest,
/// no manifest) ends the pass; a gate's failure does not, since `accept` weighs every gate.
async fn run<O: Outside>(p: &mut Pass<'_, O>) -> Result<Vec<Outcome>, Error> {
    let mut outcomes: Vec<Outcome> = Vec::new();
    for step in Step::ALL {
        let outcome = match step {
            Step::Resolve => steps::resolve(p).await?,
            Step::Inspect => steps::inspect(p).await?,
            Step::Verify => steps::verify(p).await?,
            Step::Comply => steps::comply(p).await?,
            Step::Accept => steps::accept(p, &outcomes),
        };
        let ends = outcome.ends_pass();
        outcomes.push(outcome);
        if ends {
            break;
        }
    }
    Ok(outcomes)
}

pub fn error_policy(model: Arc<Model>, error: &Error, _ctx: Arc<ModelContext>) -> Action {
    tracing::warn!(model = %model.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

#[cfg(test)]
mod steps_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs() {
        let r = |tag: Option<&str>, semver: Option<&str>, digest: Option<&str>| ModelReference {
            tag: tag.map(Into::into),
            semver: semver.map(Into::into),
            semver_filter: None,
            digest: digest.map(Into::into),
        };
        assert_eq!(ref_spec(&r(None, None, None)).unwrap(), RefSpec::Tag("latest".into()));
        assert_eq!(ref_spec(&r(Some("v1"), None, None)).unwrap(), RefSpec::Tag("v1".into()));
        assert!(matches!(ref_spec(&r(None, Some("^1"), None)).unwrap(), RefSpec::Semver { .. }));
        assert!(ref_spec(&r(Some("v1"), None, Some("sha256:x"))).is_err());
    }
}
