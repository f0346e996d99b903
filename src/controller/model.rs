//! The Model reconciler: resolve → inspect → (verify, with its issue) → report. Each step returns a
//! typed outcome; [`outcome_of`] turns failures into conditions in one place, and status is written
//! only when it changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::acceptance::{self, Acceptance, Check, Previous};
use super::access::{Access, access_for};
use super::{Context, Error, status, trust};
use crate::api::conditions::{self, ConditionStatus, Observation, reasons};
use crate::api::{
    Artifact, HistoryEntry, Model, ModelReference, ModelStatus, Resolved, Revoked, Verified, VerifySpec, short_digest,
};
use crate::registry::{self, Inspection, RefSpec, Resolution};
use crate::verify::Verification;

const DEFAULT_INTERVAL: Duration = Duration::from_secs(300);
const HISTORY_LIMIT: usize = 10;
const MODELFILE_LIMIT: usize = 4096;

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

/// What one pass observed.
struct Observed {
    resolution: Resolution,
    inspection: Arc<Inspection>,
}

pub async fn reconcile(model: Arc<Model>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = model.namespace().unwrap_or_default();
    let api: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    let generation = model.metadata.generation;
    let now = Time(jiff::Timestamp::now());
    let current = model.status.clone();
    let mut next = current.clone().unwrap_or_default();
    next.observed_generation = generation;
    let every = interval(&model);

    if model.spec.suspend {
        status::apply(&api, model.as_ref(), current.as_ref(), &next).await?;
        return Ok(Action::await_change());
    }

    let spec = ref_spec(&model.spec.reference);
    next.reference = spec.as_ref().ok().map(RefSpec::describe);
    let mut access_source = None;
    let mut events = Vec::new();
    let observed = match spec {
        Err(e) => Err(e),
        Ok(spec) => match access_for(&ctx.client, &model, &namespace).await {
            Err(e) => Err(e),
            Ok(access) => {
                access_source = access.credential_source.clone();
                observe(&ctx, &access, &spec, every).await.map(|observed| (observed, access))
            }
        },
    };

    match &observed {
        Ok(_) => ctx.metrics.resolution("success"),
        Err(Error::Kube(_)) => {}
        Err(e) => ctx.metrics.resolution(&outcome_of(e, None, every).observation.reason),
    }
    let (observation, requeue) = match observed {
        Ok((observed, access)) => {
            events.extend(record_resolution(&mut next, &observed, &now));
            match &model.spec.verify {
                None => {
                    conditions::remove(&mut next.conditions, conditions::VERIFIED);
                    // Without verification nothing is accepted or revoked by trust.
                    next.revoked = None;
                    ready_observation(&observed, every)
                }
                Some(verify) => {
                    let step =
                        VerifyStep { ctx: &ctx, access: &access, model: &model, spec: verify, observed: &observed };
                    step.run(&mut next, &mut events, &now, every).await?
                }
            }
        }
        Err(Error::Kube(e)) => return Err(Error::Kube(e)),
        Err(e) => {
            let outcome = outcome_of(&e, access_source.as_deref(), every);
            (outcome.observation, outcome.requeue)
        }
    };
    conditions::apply(&mut next.conditions, &observation, generation, &now);
    let wrote = status::apply(&api, model.as_ref(), current.as_ref(), &next).await?;

    let reference = model.object_ref(&());
    for event in events {
        publish(&ctx, &reference, event).await;
    }
    let reason_changed = current
        .as_ref()
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .is_none_or(|c| c.reason != observation.reason || c.message != observation.message);
    if wrote && reason_changed && observation.ready != conditions::ConditionStatus::True {
        let warning = Event {
            type_: EventType::Warning,
            reason: observation.reason.clone(),
            note: Some(observation.message.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        publish(&ctx, &reference, warning).await;
    }
    tracing::info!(
        model = %format!("{namespace}/{}", model.name_any()),
        reason = %observation.reason,
        wrote_status = wrote,
        requeue_secs = requeue.as_secs(),
        "reconciled model"
    );
    Ok(Action::requeue(requeue))
}

/// The verification of one pass: the resolved digest under the trust in force and, when that does
/// not pass, the digest accepted before (see [`acceptance`]).
struct VerifyStep<'a> {
    ctx: &'a Context,
    access: &'a Access,
    model: &'a Model,
    spec: &'a VerifySpec,
    observed: &'a Observed,
}

impl VerifyStep<'_> {
    async fn run(
        &self,
        next: &mut ModelStatus,
        events: &mut Vec<Event>,
        now: &Time,
        every: Duration,
    ) -> Result<(Observation, Duration), Error> {
        let (trust, verified) = self.resolved().await?;
        let resolved = Check::of(&verified.as_ref().map(|_| ()));
        let was_revoked = next.verified.is_none() && next.revoked.is_some();
        let (previous, again) = self.previous(next, verified.is_ok(), trust.as_ref(), resolved).await?;
        let generation = self.model.metadata.generation;
        let error = match verified {
            Ok(verification) => {
                next.revoked = None;
                events.extend(record_verification(next, self.spec, &verification, now, generation));
                return Ok(verified_observation(self.observed, &verification, every));
            }
            Err(e) => e,
        };
        let decision = previous.as_ref().map(|(_, check)| Previous { check: *check, revoked: was_revoked });
        match (acceptance::accept(resolved, decision), previous, again) {
            (Acceptance::Revoked, Some((digest, _)), again) => {
                let why = match &again {
                    Some(Err(e)) => e,
                    _ => &error,
                };
                return Ok(revoke(next, &digest, why, now, generation, every));
            }
            (Acceptance::Keep, _, Some(Ok(restored))) if was_revoked => {
                // The trust was restored: the revoked digest verifies again and is accepted again.
                next.revoked = None;
                events.extend(record_verification(next, self.spec, &restored, now, generation));
            }
            _ => {}
        }
        let outcome = outcome_of(&error, self.access.credential_source.as_deref(), every);
        let o = &outcome.observation;
        let verified =
            conditions::condition(conditions::VERIFIED, ConditionStatus::False, &o.reason, &o.message, generation, now);
        conditions::set(&mut next.conditions, verified);
        Ok((outcome.observation, outcome.requeue))
    }

    /// The trust in force (when usable) and the resolved digest's verification under it.
    #[allow(clippy::type_complexity)]
    async fn resolved(&self) -> Result<(Option<trust::Trust>, Result<Verification, Error>), Error> {
        let namespace = self.model.namespace().unwrap_or_default();
        let (trust, verified) = match trust::trust_for(&self.ctx.client, self.spec, &namespace).await {
            Ok(t) => {
                let verified = self.ctx.caches.verify(self.access, self.model, &t, &self.observed.inspection).await;
                (Some(t), verified)
            }
            Err(e) => (None, Err(e)),
        };
        self.count(&verified);
        match verified {
            Err(Error::Kube(e)) => Err(Error::Kube(e)),
            v => Ok((trust, v.map(|(v, _)| v))),
        }
    }

    /// The digest accepted (or revoked) before this pass and its verdict now, when the resolved
    /// digest did not pass; with the result of verifying it again, when that was needed.
    #[allow(clippy::type_complexity)]
    async fn previous(
        &self,
        next: &ModelStatus,
        passed: bool,
        trust: Option<&trust::Trust>,
        resolved: Check,
    ) -> Result<(Option<(String, Check)>, Option<Result<Verification, Error>>), Error> {
        let previous = next.verified.as_ref().map(|v| &v.digest).or(next.revoked.as_ref().map(|r| &r.digest)).cloned();
        Ok(match (passed, previous, trust) {
            (true, _, _) | (false, None, _) => (None, None),
            (false, Some(d), Some(t)) if d != self.observed.resolution.digest => {
                let again = self.again(t, &d).await;
                if let Err(Error::Kube(e)) = again {
                    return Err(Error::Kube(e));
                }
                (Some((d, Check::of(&again.as_ref().map(|_| ())))), Some(again))
            }
            // The same digest, or a trust that refuses every digest: the one verdict stands for both.
            (false, Some(d), _) => (Some((d, resolved)), None),
        })
    }

    /// Verifies the previously accepted (or revoked) `digest` again under `trust` (a cached pass
    /// when nothing changed).
    async fn again(&self, trust: &trust::Trust, digest: &str) -> Result<Verification, Error> {
        let inspection = self.ctx.caches.inspect(self.access, digest).await?;
        self.ctx.caches.verify(self.access, self.model, trust, &inspection).await.map(|(v, _)| v)
    }

    fn count(&self, verified: &Result<(Verification, bool), Error>) {
        let provider =
            if matches!(self.spec.provider, crate::api::VerifyProvider::Cosign) { "cosign" } else { "notation" };
        let metrics = &self.ctx.metrics;
        match verified {
            Ok((v, false)) => metrics.verification(provider, if v.enforced { "verified" } else { "audit" }),
            Ok((_, true)) | Err(Error::Kube(_)) => {}
            Err(Error::Verify(crate::verify::Error::Rejected { .. })) => metrics.verification(provider, "rejected"),
            Err(_) => metrics.verification(provider, "error"),
        }
    }
}

/// Nothing is accepted any more: `digest` moves from `verified` to `revoked`, and the Model says why.
fn revoke(
    next: &mut ModelStatus,
    digest: &str,
    why: &Error,
    now: &Time,
    generation: Option<i64>,
    every: Duration,
) -> (Observation, Duration) {
    let message = format!("{digest} no longer verifies under the trust in force: {why}");
    let revoked_at = match &next.revoked {
        Some(r) if r.digest == digest => r.revoked_at.clone(),
        _ => now.clone(),
    };
    next.verified = None;
    next.revoked = Some(Revoked {
        digest: digest.to_owned(),
        short_digest: short_digest(digest),
        message: message.clone(),
        revoked_at,
    });
    let verified = conditions::condition(
        conditions::VERIFIED,
        ConditionStatus::False,
        reasons::TRUST_REVOKED,
        &message,
        generation,
        now,
    );
    conditions::set(&mut next.conditions, verified);
    (Observation::stalled(reasons::TRUST_REVOKED, message), every)
}

async fn observe(ctx: &Context, access: &Access, spec: &RefSpec, every: Duration) -> Result<Observed, Error> {
    let resolution = ctx.caches.resolve(access, spec, every).await?;
    let inspection = ctx.caches.inspect(access, &resolution.digest).await?;
    Ok(Observed { resolution, inspection })
}

async fn publish(ctx: &Context, reference: &k8s_openapi::api::core::v1::ObjectReference, event: Event) {
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason = %event.reason, "publishing event failed");
    }
}

/// Updates resolved/artifact/history; returns the Event for a new digest.
fn record_resolution(status: &mut ModelStatus, observed: &Observed, now: &Time) -> Option<Event> {
    let digest = &observed.resolution.digest;
    let tag = observed.resolution.tag.clone();
    let previous = status.resolved.clone();
    let same = previous.as_ref().is_some_and(|p| &p.digest == digest);
    let resolved_at = match &previous {
        Some(p) if same => p.resolved_at.clone(),
        _ => now.clone(),
    };
    let revision = match &tag {
        Some(t) => format!("{t}@{digest}"),
        None => digest.clone(),
    };
    status.resolved = Some(Resolved {
        digest: digest.clone(),
        short_digest: short_digest(digest),
        tag: tag.clone(),
        revision,
        resolved_at,
    });
    status.artifact = Some(artifact(&observed.inspection));
    if same {
        return None;
    }
    if let Some(p) = &previous {
        status.history.retain(|h| h.digest != p.digest && &h.digest != digest);
        status.history.insert(
            0,
            HistoryEntry { digest: p.digest.clone(), tag: p.tag.clone(), first_seen: p.resolved_at.clone() },
        );
        status.history.truncate(HISTORY_LIMIT);
    }
    let note = match &previous {
        Some(p) => format!("{} now resolves to {digest} (was {})", describe_tag(&tag), p.digest),
        None => format!("{} resolves to {digest}", describe_tag(&tag)),
    };
    Some(Event {
        type_: EventType::Normal,
        reason: "NewDigest".into(),
        note: Some(note),
        action: "Resolve".into(),
        secondary: None,
    })
}

fn describe_tag(tag: &Option<String>) -> String {
    tag.as_ref().map_or_else(|| "the pinned digest".to_owned(), |t| format!("tag {t}"))
}

fn artifact(inspection: &Inspection) -> Artifact {
    let manifest = &inspection.manifest;
    let annotations: BTreeMap<String, String> = manifest
        .annotations
        .iter()
        .filter(|(k, _)| k.starts_with("org.opencontainers.image."))
        .map(|(k, v)| (k.clone(), v.chars().take(1024).collect()))
        .collect();
    Artifact {
        family: inspection.family,
        artifact_type: manifest.artifact_type.clone(),
        config_digest: manifest.config.digest.clone(),
        size: manifest.total_size(),
        layers: manifest.layers.len() as i64,
        descriptor: inspection.config.descriptor.clone(),
        config: inspection.config.config.clone(),
        annotations,
        modelfile: manifest.modelfile().map(|m| m.chars().take(MODELFILE_LIMIT).collect()),
    }
}

/// Records a passed verification; returns the Event for a newly verified digest.
fn record_verification(
    status: &mut ModelStatus,
    spec: &VerifySpec,
    verification: &Verification,
    now: &Time,
    generation: Option<i64>,
) -> Option<Event> {
    let digest = &verification.digest;
    let same = status.verified.as_ref().is_some_and(|v| &v.digest == digest);
    let verified_at = match &status.verified {
        Some(v) if same => v.verified_at.clone(),
        _ => now.clone(),
    };
    status.verified = Some(Verified {
        digest: digest.clone(),
        short_digest: short_digest(digest),
        provider: spec.provider,
        identity: Some(verification.identity.clone()),
        verified_at,
    });
    let (state, reason, message) = if verification.enforced {
        let mut message = format!("signed by {} ({})", verification.identity, verification.provider);
        // What was only logged, or not checked at all, is said, never implied to have passed.
        for warning in &verification.warnings {
            message.push_str("; ");
            message.push_str(warning);
        }
        (ConditionStatus::True, "Verified", message)
    } else {
        let logged = verification.warnings.join("; ");
        (ConditionStatus::False, "AuditOnly", format!("not verified, usable under the audit level: {logged}"))
    };
    conditions::set(
        &mut status.conditions,
        conditions::condition(conditions::VERIFIED, state, reason, &message, generation, now),
    );
    (!same).then(|| Event {
        type_: EventType::Normal,
        reason: "Verified".into(),
        note: Some(format!("{digest} {message}")),
        action: "Verify".into(),
        secondary: None,
    })
}

fn verified_observation(observed: &Observed, verification: &Verification, every: Duration) -> (Observation, Duration) {
    let (mut observation, requeue) = ready_observation(observed, every);
    observation.message.push_str(&format!(", signed by {}", verification.identity));
    (observation, requeue)
}

fn ready_observation(observed: &Observed, every: Duration) -> (Observation, Duration) {
    let digest = &observed.resolution.digest;
    let mut message = format!("resolved {} to {digest}", describe_tag(&observed.resolution.tag));
    if !observed.inspection.warnings.is_empty() {
        message.push_str(" (warning: the ModelPack config is empty)");
    }
    (Observation::ready("Succeeded", message), every)
}

/// How a failure shows in status, and when to try again.
struct Outcome {
    observation: Observation,
    requeue: Duration,
}

/// The one place failures become conditions.
fn outcome_of(error: &Error, credential_source: Option<&str>, every: Duration) -> Outcome {
    let retry_soon = every.min(Duration::from_secs(30));
    let message = error.to_string();
    let (observation, requeue) = match error {
        Error::Verify(crate::verify::Error::Registry(r)) => {
            let mut outcome = registry_outcome(r, credential_source, every, retry_soon);
            outcome.0.message = format!("fetching signatures: {}", outcome.0.message);
            outcome
        }
        Error::Verify(crate::verify::Error::Rejected { .. }) => {
            (Observation::stalled("SignatureRejected", message), every)
        }
        Error::Verify(crate::verify::Error::InvalidKey(_) | crate::verify::Error::InvalidTrust(_)) => {
            (Observation::stalled("InvalidTrust", message), every)
        }
        Error::Registry(r) => registry_outcome(r, credential_source, every, retry_soon),
        Error::InvalidSecret { .. } => (Observation::stalled("InvalidSecret", message), every),
        Error::InvalidSpec(_) => (Observation::stalled("InvalidReference", message), every),
        Error::SecretNotFound { .. } => (Observation::not_ready("SecretNotFound", message), every),
        Error::ServiceAccountNotFound { .. } => (Observation::not_ready("ServiceAccountNotFound", message), every),
        Error::Kube(_) | Error::Serialize(_) => (Observation::not_ready("ReconcileError", message), retry_soon),
    };
    Outcome { observation, requeue }
}

fn registry_outcome(
    error: &registry::Error,
    credential_source: Option<&str>,
    every: Duration,
    retry_soon: Duration,
) -> (Observation, Duration) {
    use registry::Error as R;
    let message = error.to_string();
    match error {
        R::Unauthorized { registry, .. } => {
            let from = credential_source
                .map_or_else(|| "anonymous access".to_owned(), |s| format!("the credentials from {s}"));
            (Observation::not_ready("AuthenticationFailed", format!("registry {registry} refused {from}")), every)
        }
        R::Unavailable { .. } => (Observation::not_ready("RegistryUnavailable", message), retry_soon),
        R::Timeout { .. } => (Observation::not_ready("RegistryTimeout", message), retry_soon),
        R::Protocol { .. } => (Observation::not_ready("RegistryError", message), retry_soon),
        R::DigestMismatch { .. } => (Observation::not_ready("DigestMismatch", message), retry_soon),
        R::NotFound { .. } => (Observation::not_ready("ArtifactNotFound", message), every),
        R::NoMatchingTag { .. } => (Observation::not_ready("NoMatchingTag", message), every),
        R::ModelPack(crate::modelpack::Error::NotAModelPack { .. }) => {
            (Observation::stalled("NotAModelPack", message), every)
        }
        R::ModelPack(_) => (Observation::stalled("InvalidModelPack", message), every),
        R::TooLarge { .. } => (Observation::stalled("ArtifactTooLarge", message), every),
        R::Credentials { .. } => (Observation::stalled("InvalidSecret", message), every),
        R::InvalidCa(_) => (Observation::stalled("InvalidCA", message), every),
        R::TokenRealm { .. } => (Observation::stalled("InvalidTokenRealm", message), every),
        R::InvalidReference { .. } | R::InvalidSemver { .. } | R::InvalidFilter { .. } => {
            (Observation::stalled("InvalidReference", message), every)
        }
    }
}

pub fn error_policy(model: Arc<Model>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(model = %model.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

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

    #[test]
    fn failures_map_to_reasons_and_never_leak_secrets() {
        let every = Duration::from_secs(300);
        let unauthorized =
            Error::Registry(registry::Error::Unauthorized { registry: "r.example".into(), detail: "401".into() });
        let o = outcome_of(&unauthorized, Some("secret ml/creds"), every);
        assert_eq!(o.observation.reason, "AuthenticationFailed");
        assert!(o.observation.message.contains("secret ml/creds"));
        assert!(!o.observation.stalled);
        let o = outcome_of(
            &Error::Registry(registry::Error::ModelPack(crate::modelpack::Error::NotAModelPack { found: "x".into() })),
            None,
            every,
        );
        assert!(o.observation.stalled);
        assert_eq!(o.observation.reason, "NotAModelPack");
        let o = outcome_of(
            &Error::Registry(registry::Error::Unavailable { registry: "r".into(), detail: "refused".into() }),
            None,
            every,
        );
        assert_eq!((o.observation.reason.as_str(), o.requeue), ("RegistryUnavailable", Duration::from_secs(30)));
        let too_large = registry::Error::TooLarge { what: "tag list of r/m".into(), limit: 4 << 20 };
        let o = outcome_of(&Error::Registry(too_large), None, every);
        assert_eq!((o.observation.reason.as_str(), o.observation.stalled), ("ArtifactTooLarge", true));
        let too_large = registry::Error::TooLarge { what: "referrers of r/m@d".into(), limit: 4 << 20 };
        let o = outcome_of(&Error::Verify(crate::verify::Error::Registry(too_large)), None, every);
        assert_eq!((o.observation.reason.as_str(), o.observation.stalled), ("ArtifactTooLarge", true));
        let realm = registry::Error::TokenRealm { registry: "r".into(), realm: "http://a".into(), detail: "x".into() };
        let o = outcome_of(&Error::Registry(realm), None, every);
        assert_eq!((o.observation.reason.as_str(), o.observation.stalled), ("InvalidTokenRealm", true));
        let o = outcome_of(&Error::SecretNotFound { name: "ml/creds".into() }, None, every);
        assert_eq!((o.observation.reason.as_str(), o.requeue), ("SecretNotFound", every));
    }
}
