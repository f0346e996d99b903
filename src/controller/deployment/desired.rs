//! The version a ModelDeployment should hold: the Model's accepted digest (`status.accepted`: the
//! resolved digest once it passed the Model's gates) or the deployment's pin. A digest whose trust
//! was revoked is no version at all: nothing is pulled, and nodes that hold it keep it.

use crate::api::conditions::{self, COMPLIANT, READY, Reason, STALLED};
use crate::api::{Model, ModelDeployment, VersionRef, short_digest};

/// What the deployment should hold, or why there is nothing to hold.
#[derive(Clone, Debug, PartialEq)]
pub enum Desired {
    Version {
        version: VersionRef,
        /// The Model resolved a newer digest a gate refused (a failed verification, a policy
        /// violation): the gate's reason, and why.
        rejected: Option<(Reason, String)>,
    },
    Blocked {
        reason: Reason,
        message: String,
        stalled: bool,
    },
}

impl Desired {
    /// Blocked for a reason that forbids the pulls already under way too: the version lost its
    /// trust, or the deployment asks for nodes beyond the operator's bound.
    pub fn halts_pulls(&self) -> bool {
        matches!(self, Desired::Blocked { reason, .. }
            if matches!(reason, Reason::TrustRevoked | Reason::TolerationNotAllowed))
    }
}

pub fn desired(deployment: &ModelDeployment, model: Option<&Model>) -> Desired {
    let name = &deployment.spec.model_ref.name;
    let blocked = |reason: Reason, message: String, stalled: bool| Desired::Blocked { reason, message, stalled };
    let Some(model) = model else {
        return blocked(Reason::ModelNotFound, format!("model {name} not found"), false);
    };
    let Some(status) = model.status.as_ref().filter(|s| s.observed_generation == model.metadata.generation) else {
        return blocked(Reason::ModelNotReady, format!("waiting for model {name} to be reconciled"), false);
    };
    // A gated Model (signatures verified, or ModelPolicies selecting it) judges digests: a pin must
    // be one it accepted. A refusal is reported with the gate's reason: the policy violation, or the
    // failed verification.
    let verify = model.spec.verify.is_some() || conditions::find(&status.conditions, COMPLIANT).is_some();
    let refusal = match conditions::find(&status.conditions, READY).and_then(|c| Reason::parse(&c.reason)) {
        Some(Reason::PolicyViolation) => Reason::PolicyViolation,
        _ => Reason::VerificationFailed,
    };
    let resolved = status.resolved.as_ref().map(|r| r.digest.as_str());
    let accepted = status.accepted.as_ref().map(|a| a.digest.as_str());
    let why = conditions::find(&status.conditions, READY).map(|c| c.message.clone()).unwrap_or_default();
    let model_stalled = conditions::is_true(&status.conditions, STALLED);
    if let (true, None, Some(revoked)) = (verify, accepted, &status.revoked) {
        let message = format!(
            "model {name} accepts no version: {}; no node receives it, nodes that hold it keep it",
            revoked.message
        );
        return blocked(Reason::TrustRevoked, message, true);
    }

    let digest = match (&deployment.spec.digest, accepted) {
        (Some(pin), _) if !verify || accepted == Some(pin.as_str()) => pin.clone(),
        (Some(pin), _) => {
            let verified = accepted.unwrap_or("none");
            let message = format!(
                "pinned digest {pin} is not the digest model {name} verified ({verified}); only verified digests are pulled"
            );
            return blocked(refusal, message, true);
        }
        (None, Some(d)) => d.to_owned(),
        (None, None) if verify && (model_stalled || resolved.is_some()) => {
            return blocked(refusal, format!("model {name} has no accepted version: {why}"), true);
        }
        (None, None) if model_stalled => {
            return blocked(Reason::ModelStalled, format!("model {name} has no usable version: {why}"), true);
        }
        (None, None) => {
            return blocked(Reason::ModelNotReady, format!("model {name} has no accepted version yet: {why}"), false);
        }
    };
    let tag = tag_of(status, &digest);
    let rejected = match resolved {
        Some(r) if deployment.spec.digest.is_none() && r != digest => {
            Some((refusal, format!("model {name} resolved {} but did not accept it: {why}", short_digest(r))))
        }
        _ => None,
    };
    Desired::Version { version: VersionRef { short_digest: short_digest(&digest), digest, tag }, rejected }
}

/// The tag `digest` was accepted, resolved or first seen under.
fn tag_of(status: &crate::api::ModelStatus, digest: &str) -> Option<String> {
    match (&status.accepted, &status.resolved) {
        (Some(a), _) if a.digest == digest => a.tag.clone(),
        (_, Some(r)) if r.digest == digest => r.tag.clone(),
        _ => status.history.iter().find(|h| h.digest == digest).and_then(|h| h.tag.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(n: char) -> String {
        format!("sha256:{}", n.to_string().repeat(64))
    }

    fn revoked(mut m: Model, digest: String) -> Model {
        let status = m.status.as_mut().unwrap();
        status.verified = None;
        status.accepted = None;
        status.revoked = Some(
            serde_json::from_value(json!({"digest": digest, "shortDigest": "x",
            "message": "signature rejected", "revokedAt": "2026-01-01T00:00:00Z"}))
            .unwrap(),
        );
        m
    }

    /// A Model's status as its reconciler writes it: without verification the resolved digest is the
    /// accepted one; with it, the verified one.
    fn model(verify: bool, resolved: Option<String>, verified: Option<String>, stalled: bool) -> Model {
        let mut conditions = vec![json!({"type": "Ready", "status": if stalled {"False"} else {"True"},
            "reason": "X", "message": "signature rejected", "lastTransitionTime": "2026-01-01T00:00:00Z"})];
        if stalled {
            conditions.push(json!({"type": "Stalled", "status": "True", "reason": "X", "message": "m",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}));
        }
        let mut status = json!({"observedGeneration": 1, "conditions": conditions});
        if let Some(r) = &resolved {
            status["resolved"] = json!({"digest": r.clone(), "shortDigest": "x", "tag": "v2", "revision": "v2@x",
                "resolvedAt": "2026-01-01T00:00:00Z"});
        }
        if let Some(v) = &verified {
            status["verified"] = json!({"digest": v, "shortDigest": "x", "provider": "cosign",
                "verifiedAt": "2026-01-01T00:00:00Z"});
        }
        if let Some(a) = if verify { verified } else { resolved.clone() } {
            let tag = (Some(&a) == resolved.as_ref()).then_some("v2");
            status["accepted"] =
                json!({"digest": a, "shortDigest": "x", "tag": tag, "acceptedAt": "2026-01-01T00:00:00Z"});
        }
        let mut spec = json!({"repository": "r.example/m"});
        if verify {
            spec["verify"] = json!({"provider": "cosign", "secretRef": {"name": "keys"}});
        }
        serde_json::from_value(json!({"metadata": {"name": "m", "generation": 1}, "spec": spec, "status": status}))
            .unwrap()
    }

    fn deployment(pin: Option<String>) -> ModelDeployment {
        let mut spec = json!({"modelRef": {"name": "m"}});
        if let Some(p) = pin {
            spec["digest"] = json!(p);
        }
        serde_json::from_value(json!({"metadata": {"name": "d"}, "spec": spec})).unwrap()
    }

    fn digest_of(desired: &Desired) -> Option<&str> {
        match desired {
            Desired::Version { version, .. } => Some(&version.digest),
            Desired::Blocked { .. } => None,
        }
    }

    /// A Model no signature gates whose resolved digest an Enforce ModelPolicy refuses.
    fn refused_by_policy(accepted: Option<String>) -> Model {
        let mut m = model(false, Some(d('b')), None, true);
        let status = m.status.as_mut().unwrap();
        status.accepted = accepted.map(|a| {
            serde_json::from_value(json!({"digest": a, "shortDigest": "x", "acceptedAt": "2026-01-01T00:00:00Z"}))
                .unwrap()
        });
        for c in &mut status.conditions {
            c.reason = "PolicyViolation".into();
            c.message = "sha256:bb… violates ModelPolicy prod rule license: only MIT".into();
        }
        status.conditions.push(
            serde_json::from_value(json!({"type": "Compliant", "status": "False", "reason": "PolicyViolation",
                "message": "m", "lastTransitionTime": "2026-01-01T00:00:00Z"}))
            .unwrap(),
        );
        m
    }

    #[test]
    fn a_policy_refusal_keeps_the_accepted_version_and_names_the_policy() {
        let got = desired(&deployment(None), Some(&refused_by_policy(Some(d('a')))));
        let Desired::Version { version, rejected: Some((reason, why)) } = got else { panic!("{got:?}") };
        assert_eq!((version.digest, reason), (d('a'), Reason::PolicyViolation));
        assert!(why.contains("ModelPolicy prod rule license"), "{why}");
        let nothing = desired(&deployment(None), Some(&refused_by_policy(None)));
        assert!(
            matches!(&nothing, Desired::Blocked { reason: Reason::PolicyViolation, stalled: true, message }
                if message.contains("ModelPolicy prod")),
            "{nothing:?}"
        );
        let pinned = desired(&deployment(Some(d('b'))), Some(&refused_by_policy(Some(d('a')))));
        assert!(matches!(pinned, Desired::Blocked { reason: Reason::PolicyViolation, .. }), "a pin must be accepted");
    }

    #[test]
    fn unverified_models_deploy_what_they_resolve() {
        let m = model(false, Some(d('a')), None, false);
        let got = desired(&deployment(None), Some(&m));
        assert_eq!(digest_of(&got), Some(d('a').as_str()));
        assert!(matches!(got, Desired::Version { version: VersionRef { tag: Some(_), .. }, rejected: None }));
        assert_eq!(digest_of(&desired(&deployment(Some(d('b'))), Some(&m))), Some(d('b').as_str()), "a pin wins");
        assert!(matches!(desired(&deployment(None), None), Desired::Blocked { stalled: false, .. }));
    }

    #[test]
    fn verified_models_deploy_only_verified_digests() {
        let moved = model(true, Some(d('b')), Some(d('a')), true);
        let got = desired(&deployment(None), Some(&moved));
        assert_eq!(digest_of(&got), Some(d('a').as_str()), "the old verified digest stays desired");
        assert!(matches!(got, Desired::Version { rejected: Some(_), .. }));
        let never = model(true, Some(d('b')), None, true);
        assert!(matches!(desired(&deployment(None), Some(&never)), Desired::Blocked { stalled: true, .. }));
        let pin = desired(&deployment(Some(d('c'))), Some(&moved));
        assert!(matches!(pin, Desired::Blocked { ref reason, .. } if *reason == Reason::VerificationFailed));
        assert_eq!(digest_of(&desired(&deployment(Some(d('a'))), Some(&moved))), Some(d('a').as_str()));
    }

    #[test]
    fn a_revoked_digest_is_no_version_pinned_or_not() {
        let is_revoked = |got: &Desired| matches!(got, Desired::Blocked { reason, stalled: true, .. } if *reason == Reason::TrustRevoked);
        // Revoked with the tag still on it, and revoked after the tag moved to a rejected digest.
        for m in [
            revoked(model(true, Some(d('a')), None, true), d('a')),
            revoked(model(true, Some(d('b')), None, true), d('a')),
        ] {
            for pin in [None, Some(d('a')), Some(d('b'))] {
                let got = desired(&deployment(pin.clone()), Some(&m));
                assert!(is_revoked(&got), "pin {pin:?}: {got:?}");
            }
        }
        // Verified again (the trust was restored): accepted, whatever `revoked` still says.
        let mut restored = model(true, Some(d('a')), Some(d('a')), false);
        restored.status.as_mut().unwrap().revoked =
            revoked(model(true, None, None, false), d('a')).status.unwrap().revoked;
        assert_eq!(digest_of(&desired(&deployment(None), Some(&restored))), Some(d('a').as_str()));
        // Without verification, `revoked` means nothing.
        let mut open = model(false, Some(d('a')), None, false);
        open.status.as_mut().unwrap().revoked =
            revoked(model(false, None, None, false), d('a')).status.unwrap().revoked;
        assert_eq!(digest_of(&desired(&deployment(None), Some(&open))), Some(d('a').as_str()));
    }
}
