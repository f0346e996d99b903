//! What the steps record in status besides conditions: the resolved digest and its history, the
//! artifact, the verified, revoked and accepted digests.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType};

use crate::api::conditions::{ConditionStatus, Reason};
use crate::api::{
    Accepted, Artifact, HistoryEntry, ModelStatus, Resolved, Revoked, Verified, VerifiedTimestamp, VerifyProvider,
    VerifySpec, short_digest,
};
use crate::registry::{Inspection, Resolution};
use crate::verify::Verification;

const HISTORY_LIMIT: usize = 10;
const MODELFILE_LIMIT: usize = 4096;

/// Updates resolved/artifact/history; returns the Event for a new digest.
pub fn resolution(
    status: &mut ModelStatus,
    resolved: &Resolution,
    inspection: &Inspection,
    now: &Time,
) -> Option<Event> {
    let digest = &resolved.digest;
    let tag = resolved.tag.clone();
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
    status.artifact = Some(artifact(inspection));
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
    Some(event(Reason::NewDigest, note, "Resolve"))
}

pub fn describe_tag(tag: &Option<String>) -> String {
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
        weights: Some(inspection.weights()),
    }
}

/// Records a passed verification; returns the Verified condition it amounts to and the Event for a
/// newly verified digest.
pub fn verification(
    status: &mut ModelStatus,
    spec: &VerifySpec,
    verification: &Verification,
    now: &Time,
) -> ((ConditionStatus, Reason, String), Option<Event>) {
    let digest = &verification.digest;
    let same = status.verified.as_ref().is_some_and(|v| &v.digest == digest);
    let verified_at = match &status.verified {
        Some(v) if same => v.verified_at.clone(),
        _ => now.clone(),
    };
    status.revoked = None;
    status.verified = Some(Verified {
        digest: digest.clone(),
        short_digest: short_digest(digest),
        provider: spec.provider,
        identity: Some(verification.identity.clone()),
        timestamp: verification
            .timestamp
            .as_ref()
            .map(|t| VerifiedTimestamp { time: t.time.clone(), authority: t.authority.clone() }),
        files: verification.files.map(|n| n as i64),
        signature: Some(verification.signature_digest.clone()).filter(|s| !s.is_empty()),
        anchor: verification.anchor.clone(),
        verified_at,
    });
    let condition = if verification.enforced {
        let mut message = format!("signed by {} ({})", verification.identity, verification.provider);
        if let Some(t) = &verification.timestamp {
            message.push_str(&format!(", timestamped {} by {}", t.time, t.authority));
        }
        // What was only logged, or not checked at all, is said, never implied to have passed.
        for warning in &verification.warnings {
            message.push_str("; ");
            message.push_str(warning);
        }
        (ConditionStatus::True, Reason::Verified, message)
    } else {
        let logged = verification.warnings.join("; ");
        (ConditionStatus::False, Reason::AuditOnly, format!("not verified, usable under the audit level: {logged}"))
    };
    let event = (!same).then(|| event(Reason::Verified, format!("{digest} {}", condition.2), "Verify"));
    (condition, event)
}

/// Nothing verifies any more: `digest` moves from `verified` to `revoked`; returns the message.
pub fn revocation(status: &mut ModelStatus, digest: &str, why: &str, now: &Time) -> String {
    let message = format!("{digest} no longer verifies under the trust in force: {why}");
    let revoked_at = match &status.revoked {
        Some(r) if r.digest == digest => r.revoked_at.clone(),
        _ => now.clone(),
    };
    status.verified = None;
    status.revoked = Some(Revoked {
        digest: digest.to_owned(),
        short_digest: short_digest(digest),
        message: message.clone(),
        revoked_at,
    });
    message
}

/// Sets the digest deployments use; `None` when nothing is accepted. Under `modelSigning`
/// (`signing`), the model signature the digest was verified under goes with it: this pass's
/// verification of that digest, else the one it was accepted with before.
pub fn acceptance(status: &mut ModelStatus, accepted: Option<(&str, Option<&String>)>, signing: bool, now: &Time) {
    status.accepted = accepted.map(|(digest, tag)| {
        let same = status.accepted.as_ref().filter(|a| a.digest == digest);
        let accepted_at = same.map_or_else(|| now.clone(), |a| a.accepted_at.clone());
        let verified =
            status.verified.as_ref().filter(|v| v.digest == digest && v.provider == VerifyProvider::ModelSigning);
        let signature = verified.and_then(|v| v.signature.clone()).or_else(|| same.and_then(|a| a.signature.clone()));
        Accepted {
            digest: digest.to_owned(),
            short_digest: short_digest(digest),
            tag: tag.cloned(),
            signature: signature.filter(|_| signing),
            accepted_at,
        }
    });
}

fn event(reason: Reason, note: String, action: &str) -> Event {
    Event { type_: EventType::Normal, reason: reason.into(), note: Some(note), action: action.into(), secondary: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{LocalObjectReference, VerifyProvider};
    use crate::verify::Timestamped;

    /// A verified timestamp reaches `status.verified` and the Verified condition's message.
    #[test]
    fn a_verified_timestamp_is_recorded_with_its_tsa() {
        let spec = VerifySpec {
            provider: VerifyProvider::Notation,
            secret_ref: LocalObjectReference { name: "t".into() },
            match_oidc_identity: Vec::new(),
        };
        let stamp = Timestamped { time: "2026-12-07T03:06:54Z".into(), authority: "CN=acme TSA".into() };
        let v = Verification {
            provider: "notation",
            digest: format!("sha256:{}", "a".repeat(64)),
            identity: "CN=signer".into(),
            signature_digest: String::new(),
            warnings: Vec::new(),
            enforced: true,
            timestamp: Some(stamp),
            files: None,
            anchor: None,
        };
        let mut status = ModelStatus::default();
        let ((_, _, message), _) = verification(&mut status, &spec, &v, &Time(jiff::Timestamp::now()));
        let recorded = status.verified.and_then(|v| v.timestamp).expect("the timestamp in status.verified");
        assert_eq!((recorded.time.as_str(), recorded.authority.as_str()), ("2026-12-07T03:06:54Z", "CN=acme TSA"));
        assert!(message.contains("timestamped 2026-12-07T03:06:54Z by CN=acme TSA"), "{message}");
    }
}
