//! Model passes against a fake outside: the decisions the steps make when trust, policies, the
//! registry or the API server change between passes. No cluster, no registry.

use std::collections::BTreeSet;
use std::sync::Mutex;

use super::outside::{Found, Outside};
use super::*;
use crate::api::conditions::{READY, Reason, find};
use crate::api::{PolicyAction, VerifySpec, Violation};
use crate::controller::compliance;
use crate::modelpack::{Family, Manifest, ModelConfig};
use crate::registry::{Options, Repository};
use crate::verify::Verification;

const REPO: &str = "registry.example.com/team/llm";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

/// The world the fake answers from; each pass reads it as it is then.
#[derive(Default)]
struct World {
    /// What the ref resolves to.
    resolved: String,
    /// Digests whose signature verifies under the trust.
    signed: BTreeSet<String>,
    /// The trust Secret is gone.
    no_trust: bool,
    /// The registry does not answer the signature fetches.
    signatures_down: bool,
    /// The registry does not answer at all.
    registry_down: bool,
    /// The API server fails reads of the trust Secret.
    api_down: bool,
    /// An Enforce ModelPolicy refuses every digest but these.
    enforced: Option<BTreeSet<String>>,
    /// The digest and `verified` variable each comply step was given.
    complied: Vec<(String, crate::policy::VerifiedVar)>,
    /// Signatures pass at the audit level only (notation's `audit`: logged, not enforced).
    audit: bool,
}

struct Fake(Mutex<World>);

fn unavailable() -> Error {
    Error::Registry(crate::registry::Error::Unavailable {
        registry: "registry.example.com".into(),
        detail: "no answer".into(),
    })
}

impl Fake {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.0.lock().unwrap()
    }
}

impl Outside for Fake {
    type Trust = ();

    async fn access(&self, _: &Model, _: &str) -> Found<Access> {
        let repository = Repository::parse(REPO).map_err(Error::from);
        Ok(repository.map(|repository| Access {
            repository,
            options: Options::default(),
            credential: None,
            credential_source: None,
        }))
    }

    async fn resolve(&self, _: &Access, _: &RefSpec, max_age: Duration) -> Found<(Resolution, Duration)> {
        let w = self.world();
        if w.registry_down {
            return Ok(Err(unavailable()));
        }
        Ok(Ok((Resolution { digest: w.resolved.clone(), tag: Some("v1".into()) }, max_age)))
    }

    async fn inspect(&self, _: &Access, digest: &str) -> Found<Arc<Inspection>> {
        if self.world().registry_down {
            return Ok(Err(unavailable()));
        }
        Ok(Ok(Arc::new(inspection(digest))))
    }

    async fn trust(&self, spec: &VerifySpec, namespace: &str) -> Found<()> {
        let w = self.world();
        if w.api_down {
            return Err(kube::Error::Api(Box::new(kube::core::Status {
                code: 500,
                message: "etcd".into(),
                ..Default::default()
            })));
        }
        if w.no_trust {
            return Ok(Err(Error::SecretNotFound { name: format!("{namespace}/{}", spec.secret_ref.name) }));
        }
        Ok(Ok(()))
    }

    async fn verify(&self, _: &Access, _: &Model, _: &(), inspection: &Inspection) -> Found<(Verification, bool)> {
        let w = self.world();
        if w.signatures_down {
            return Ok(Err(Error::Verify(crate::verify::Error::Registry(crate::registry::Error::Unavailable {
                registry: "registry.example.com".into(),
                detail: "no answer".into(),
            }))));
        }
        if !w.signed.contains(&inspection.digest) {
            let detail = format!("no signature of {} verifies", inspection.digest);
            let rejected = crate::verify::Error::rejected(crate::verify::Rejection::NoSignature, detail);
            return Ok(Err(Error::Verify(rejected)));
        }
        let enforced = !w.audit;
        Ok(Ok((Verification { enforced, ..verification(&inspection.digest) }, false)))
    }

    async fn comply(
        &self,
        _: &Access,
        _: &Model,
        resolution: &Resolution,
        _: &Inspection,
        verified: &crate::policy::VerifiedVar,
        _: Duration,
    ) -> Found<compliance::Outcome> {
        let mut w = self.world();
        w.complied.push((resolution.digest.clone(), verified.clone()));
        let Some(allowed) = &w.enforced else { return Ok(Ok(compliance::Outcome::default())) };
        let violations = match allowed.contains(&resolution.digest) {
            true => Vec::new(),
            false => vec![Violation {
                policy: "licensed".into(),
                rule: "license".into(),
                message: "the model's license is not allowed".into(),
                action: PolicyAction::Enforce,
            }],
        };
        Ok(Ok(compliance::Outcome { selected: 1, violations }))
    }
}

fn inspection(digest: &str) -> Inspection {
    let manifest = format!(
        r#"{{"schemaVersion":2,"artifactType":"application/vnd.cncf.model.manifest.v1+json",
        "config":{{"mediaType":"application/vnd.cncf.model.config.v1+json","digest":"sha256:{:064}","size":2}},
        "layers":[]}}"#,
        9
    );
    let manifest = Manifest::parse(manifest.as_bytes()).unwrap();
    let config_json = serde_json::json!({"config": {"format": "gguf"}});
    let (config, warnings) = ModelConfig::parse(config_json.to_string().as_bytes()).unwrap();
    Inspection {
        digest: digest.to_owned(),
        manifest,
        manifest_size: 300,
        family: Family::Cncf,
        config,
        config_json,
        warnings,
        contents: Vec::new(),
    }
}

fn verification(digest: &str) -> Verification {
    Verification {
        provider: "cosign",
        digest: digest.to_owned(),
        identity: "release.pub".into(),
        signature_digest: digest.replace(":", ":f"),
        warnings: Vec::new(),
        enforced: true,
        timestamp: None,
        files: None,
        anchor: None,
    }
}

fn model(verify: bool) -> Model {
    let mut spec = serde_json::json!({"repository": REPO, "ref": {"tag": "v1"}});
    if verify {
        spec["verify"] = serde_json::json!({"provider": "cosign", "secretRef": {"name": "trust"}});
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "modelpack.dev/v1alpha1", "kind": "Model",
        "metadata": {"name": "llm", "namespace": "ml", "generation": 1}, "spec": spec,
    }))
    .unwrap()
}

/// Runs passes of one Model, storing each pass's status as the next one's.
struct Bed {
    fake: Fake,
    model: Model,
}

impl Bed {
    fn new(verify: bool, world: World) -> Bed {
        Bed { fake: Fake(Mutex::new(world)), model: model(verify) }
    }

    async fn pass(&mut self) -> Result<Summary, Error> {
        let now = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
        let (next, summary) = decide(&self.fake, &self.model, now).await?;
        self.model.status = Some(next);
        Ok(summary)
    }

    fn accepted(&self) -> Option<String> {
        self.model.status.as_ref()?.accepted.as_ref().map(|a| a.digest.clone())
    }

    fn revoked(&self) -> Option<String> {
        self.model.status.as_ref()?.revoked.as_ref().map(|r| r.digest.clone())
    }

    fn ready_reason(&self) -> String {
        find(&self.model.status.as_ref().unwrap().conditions, READY).unwrap().reason.clone()
    }
}

fn signed(digests: &[&String]) -> BTreeSet<String> {
    digests.iter().map(|d| (*d).clone()).collect()
}

#[tokio::test]
async fn a_revoked_digest_is_accepted_again_when_its_trust_returns() {
    let (one, two) = (digest(1), digest(2));
    let mut bed = Bed::new(true, World { resolved: one.clone(), signed: signed(&[&one]), ..Default::default() });
    bed.pass().await.unwrap();
    assert_eq!(bed.accepted(), Some(one.clone()));
    // An unsigned new version appears and the trust Secret is deleted: the accepted one loses its trust.
    bed.fake.world().resolved = two.clone();
    bed.fake.world().no_trust = true;
    bed.pass().await.unwrap();
    assert_eq!((bed.accepted(), bed.revoked()), (None, Some(one.clone())));
    assert_eq!(bed.ready_reason(), Reason::TrustRevoked.as_str());
    // The Secret is back: the new version still does not verify, the revoked one does again.
    bed.fake.world().no_trust = false;
    bed.pass().await.unwrap();
    assert_eq!((bed.accepted(), bed.revoked()), (Some(one.clone()), None));
    // Once the new version is signed too, it is accepted.
    bed.fake.world().signed.insert(two.clone());
    bed.pass().await.unwrap();
    assert_eq!(bed.accepted(), Some(two));
}

#[tokio::test]
async fn an_enforce_violation_keeps_the_previous_digest() {
    let (one, two) = (digest(1), digest(2));
    let world = World { resolved: one.clone(), enforced: Some(signed(&[&one])), ..Default::default() };
    let mut bed = Bed::new(false, world);
    bed.pass().await.unwrap();
    assert_eq!(bed.accepted(), Some(one.clone()));
    bed.fake.world().resolved = two.clone();
    bed.pass().await.unwrap();
    assert_eq!(bed.accepted(), Some(one.clone()), "deployments keep the compliant version");
    assert_eq!(bed.ready_reason(), Reason::PolicyViolation.as_str());
    let violations = &bed.model.status.as_ref().unwrap().violations;
    assert_eq!(violations.len(), 1, "{violations:?}");
    // The policy allows the new version: it is accepted.
    bed.fake.world().enforced = Some(signed(&[&one, &two]));
    bed.pass().await.unwrap();
    assert_eq!(bed.accepted(), Some(two));
}

#[tokio::test]
async fn an_outage_keeps_the_last_verdict() {
    let (one, two) = (digest(1), digest(2));
    let mut bed = Bed::new(true, World { resolved: one.clone(), signed: signed(&[&one]), ..Default::default() });
    bed.pass().await.unwrap();
    // The registry does not answer at all: nothing is resolved, nothing changes hands.
    bed.fake.world().registry_down = true;
    bed.pass().await.unwrap();
    assert_eq!((bed.accepted(), bed.revoked()), (Some(one.clone()), None));
    // It answers again with a new version, but not for its signatures: neither version is judged.
    bed.fake.world().registry_down = false;
    bed.fake.world().resolved = two.clone();
    bed.fake.world().signatures_down = true;
    bed.pass().await.unwrap();
    assert_eq!((bed.accepted(), bed.revoked()), (Some(one.clone()), None), "an outage is not a revocation");
    // A revoked digest is not restored by an outage either.
    bed.fake.world().signatures_down = false;
    bed.fake.world().no_trust = true;
    bed.pass().await.unwrap();
    assert_eq!(bed.revoked(), Some(one.clone()));
    bed.fake.world().no_trust = false;
    bed.fake.world().signatures_down = true;
    bed.pass().await.unwrap();
    assert_eq!((bed.accepted(), bed.revoked()), (None, Some(one)));
}

#[tokio::test]
async fn an_api_error_ends_the_pass() {
    let one = digest(1);
    let mut bed = Bed::new(true, World { resolved: one.clone(), signed: signed(&[&one]), ..Default::default() });
    bed.pass().await.unwrap();
    let before = bed.model.status.clone();
    bed.fake.world().api_down = true;
    let ended = bed.pass().await;
    assert!(matches!(ended, Err(Error::Kube(kube::Error::Api(ref s))) if s.code == 500), "{:?}", ended.err());
    assert_eq!(bed.model.status, before, "no status from a pass the API cut short");
}

/// Rules see who signed the digest they judge, never the signer of a digest accepted before.
#[tokio::test]
async fn policies_see_the_signer_of_the_digest_they_judge() {
    let (one, two) = (digest(1), digest(2));
    let mut bed = Bed::new(true, World { resolved: one.clone(), signed: signed(&[&one]), ..Default::default() });
    bed.pass().await.unwrap();
    let seen = std::mem::take(&mut bed.fake.world().complied);
    let expected = crate::policy::VerifiedVar {
        provider: "cosign".into(),
        identity: "release.pub".into(),
        signature: verification(&one).signature_digest,
        files: 0,
        anchor: String::new(),
    };
    assert_eq!(seen, [(one.clone(), expected)]);
    // A new version that does not verify: its rules see no signer, though status.verified still
    // names the previous one.
    bed.fake.world().resolved = two.clone();
    bed.pass().await.unwrap();
    assert!(bed.model.status.as_ref().unwrap().verified.is_some());
    let seen = std::mem::take(&mut bed.fake.world().complied);
    assert_eq!(seen, [(two, crate::policy::VerifiedVar::default())]);
    // Without spec.verify, nothing is verified.
    let mut unverified = Bed::new(false, World { resolved: one.clone(), ..Default::default() });
    unverified.pass().await.unwrap();
    assert_eq!(unverified.fake.world().complied, [(one.clone(), crate::policy::VerifiedVar::default())]);
    // Nor once spec.verify is removed from a Model verified before.
    bed.fake.world().resolved = one.clone();
    bed.pass().await.unwrap();
    assert_eq!(std::mem::take(&mut bed.fake.world().complied)[0].1.provider, "cosign");
    bed.model.spec.verify = None;
    bed.pass().await.unwrap();
    assert_eq!(bed.fake.world().complied, [(one.clone(), crate::policy::VerifiedVar::default())]);
    // A pass at the audit level verified nothing a rule may rely on.
    let mut audit =
        Bed::new(true, World { resolved: one.clone(), signed: signed(&[&one]), audit: true, ..Default::default() });
    audit.pass().await.unwrap();
    assert_eq!(audit.fake.world().complied, [(one, crate::policy::VerifiedVar::default())]);
}

/// The model signature pull Jobs check the files against goes with the accepted digest: a newer
/// digest that verifies but a policy refuses moves `verified` on, never the accepted one's
/// signature (found in review: the node check was skipped for the digest still accepted).
#[tokio::test]
async fn the_accepted_digest_keeps_the_model_signature_it_was_verified_under() {
    let (one, two) = (digest(1), digest(2));
    let world = World {
        resolved: one.clone(),
        signed: signed(&[&one, &two]),
        enforced: Some(signed(&[&one])),
        ..Default::default()
    };
    let mut bed = Bed::new(true, world);
    bed.model.spec.verify.as_mut().unwrap().provider = crate::api::VerifyProvider::ModelSigning;
    bed.pass().await.unwrap();
    let accepted = |bed: &Bed| bed.model.status.as_ref().unwrap().accepted.clone().unwrap();
    assert_eq!(accepted(&bed).signature, Some(verification(&one).signature_digest));
    bed.fake.world().resolved = two.clone();
    bed.pass().await.unwrap();
    let status = bed.model.status.as_ref().unwrap();
    assert_eq!(status.verified.as_ref().map(|v| v.digest.clone()), Some(two.clone()), "the new digest verified");
    assert_eq!(bed.ready_reason(), Reason::PolicyViolation.as_str());
    assert_eq!(
        (accepted(&bed).digest, accepted(&bed).signature),
        (one.clone(), Some(verification(&one).signature_digest))
    );
    // Once the policy allows it, the new digest goes with its own signature.
    bed.fake.world().enforced = Some(signed(&[&one, &two]));
    bed.pass().await.unwrap();
    assert_eq!(
        (accepted(&bed).digest, accepted(&bed).signature),
        (two.clone(), Some(verification(&two).signature_digest))
    );
    // Without modelSigning nothing is carried.
    let mut cosign = Bed::new(true, World { resolved: one.clone(), signed: signed(&[&one]), ..Default::default() });
    cosign.pass().await.unwrap();
    assert_eq!(accepted(&cosign).signature, None);
}
