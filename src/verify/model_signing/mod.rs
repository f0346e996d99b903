//! OpenSSF model signing (sigstore/model-transparency, `model_signing sign`): a Sigstore bundle
//! whose DSSE payload is an in-toto statement listing every file of the model with its digest.
//!
//! Where it lives: attached to the ModelPack manifest as an OCI referrer, in the form cosign gives
//! Sigstore bundles: artifact type [`BUNDLE_V03`], one layer holding the bundle, annotation
//! [`PREDICATE_ANNOTATION`] = [`PREDICATE_TYPE`] (what tells it from cosign's own bundles).
//! Verified with trusted public keys (`model_signing sign key`) or certificate roots
//! (`model_signing sign certificate`), then bound to the ModelPack ([`bind`]); the files inside
//! archive layers are checked on the node against the same statement ([`check_tree`]).
//! Keyless (`model_signing sign sigstore`: a Fulcio certificate and a Rekor entry) bundles are
//! verified by the keyless rules ([`keyless::bundle_signer`]) with a trusted root and identities.

mod bind;
mod statement;

use serde::Deserialize;

pub use bind::{Binding, Entry, bind, check_tree};
pub use statement::{PREDICATE_TYPE, Statement};

use super::keyless::{self, KeylessTrust};
use super::sigstore::{self, BUNDLE_V03, Bundle, Cert};
use super::{Error, Rejection, Verification, cosign::NamedKey};
use crate::modelpack::Manifest;
use crate::registry::{Registry, Repository};

/// The referrer annotation naming the bundle's predicate (cosign's key for it).
pub const PREDICATE_ANNOTATION: &str = "dev.sigstore.bundle.predicateType";
pub const PROVIDER: &str = "modelSigning";
const IN_TOTO_PAYLOAD: &str = "application/vnd.in-toto+json";
/// A statement of 200,000 files is about 30 MiB of base64: bundles are bounded well below.
pub const MAX_BUNDLE: usize = 16 << 20;
const MAX_BUNDLES: usize = 16;

/// What a model-signing signature may verify with.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Public keys (`model_signing sign key`), any of which may verify.
    Keys(Vec<NamedKey>),
    /// Root certificates a signing certificate (`model_signing sign certificate`) must chain to.
    Roots(Vec<Cert>),
    /// A Sigstore trusted root and the accepted identities (`model_signing sign sigstore`).
    Keyless(Box<KeylessTrust>),
}

/// A signature that verified and bound: who signed, and the statement for the node's check.
#[derive(Clone, Debug)]
pub struct Signed {
    pub verification: Verification,
    pub binding: Binding,
    pub statement: Statement,
    /// The bundle blob's digest (what a pull Job is handed to check the extracted files).
    pub bundle_digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReferrerManifest {
    #[serde(default)]
    artifact_type: Option<String>,
    #[serde(default)]
    subject: Option<crate::modelpack::Descriptor>,
    #[serde(default)]
    layers: Vec<crate::modelpack::Descriptor>,
    #[serde(default)]
    annotations: std::collections::BTreeMap<String, String>,
}

/// Finds the model-signing bundles attached to `repo@digest`, and returns the first that verifies
/// with `trust` and binds to `manifest`.
pub async fn verify(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    manifest: &Manifest,
    trust: &Trust,
) -> Result<Signed, Error> {
    let listed = registry.referrers_of_type(repo, digest, BUNDLE_V03, MAX_BUNDLES).await?;
    let mut last = None;
    for referrer in listed.referrers {
        // A listing that names the predicate lets cosign's other bundles be skipped unread.
        if referrer.annotations.get(PREDICATE_ANNOTATION).is_some_and(|p| p != PREDICATE_TYPE) {
            continue;
        }
        // A referrer the registry serves wrongly (over the bounds, not its digest, gone) hides no
        // other: it is passed over, with its reason kept should nothing verify.
        let bytes = match registry.manifest(repo, &referrer.digest).await {
            Err(e) if passed_over(&e) => {
                last = Some(most_telling(last, rejected_referrer(&referrer.digest, &e)));
                continue;
            }
            other => other?,
        };
        let Ok(found) = serde_json::from_slice::<ReferrerManifest>(&bytes) else { continue };
        if found.artifact_type.as_deref() != Some(BUNDLE_V03)
            || found.annotations.get(PREDICATE_ANNOTATION).is_some_and(|p| p != PREDICATE_TYPE)
        {
            continue;
        }
        let [layer] = found.layers.as_slice() else { continue };
        let blob = match registry.small_blob(repo, &layer.digest, MAX_BUNDLE).await {
            Err(e) if passed_over(&e) => {
                last = Some(most_telling(last, rejected_referrer(&referrer.digest, &e)));
                continue;
            }
            other => other?,
        };
        match check(&blob, digest, manifest, trust) {
            Ok((mut verification, binding, statement)) => {
                verification.signature_digest = referrer.digest;
                return Ok(Signed { verification, binding, statement, bundle_digest: layer.digest.clone() });
            }
            Err(e) => last = Some(most_telling(last, e)),
        }
    }
    if listed.incomplete && last.is_none() {
        return Err(Error::Registry(crate::registry::Error::Protocol {
            registry: repo.registry.clone(),
            detail: format!(
                "referrers of {repo}@{digest}: too many to read, no model-signing bundle found among those read"
            ),
        }));
    }
    Err(last.unwrap_or_else(|| {
        Error::rejected(Rejection::NoSignature, format!("no model-signing bundle ({PREDICATE_TYPE}) for {digest}"))
    }))
}

/// The statement of the model-signing referrer `signature` (a manifest digest) of `repo@digest`,
/// for a pull Job: the controller verified that very referrer, and its digest pins every byte of
/// it, so only its shape is checked here (that it is a model-signing bundle about `digest`).
pub async fn statement_of(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    signature: &str,
) -> Result<Statement, Error> {
    let invalid = |e: String| Error::rejected(Rejection::InvalidSignature, format!("{repo}@{signature}: {e}"));
    let bytes = registry.manifest(repo, signature).await?;
    let found: ReferrerManifest = serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
    if found.artifact_type.as_deref() != Some(BUNDLE_V03) {
        return Err(invalid(format!("artifact type is not {BUNDLE_V03}")));
    }
    if found.subject.as_ref().is_none_or(|s| s.digest != digest) {
        return Err(invalid(format!("its subject is not {digest}")));
    }
    let [layer] = found.layers.as_slice() else { return Err(invalid("it has not exactly one layer".into())) };
    let blob = registry.small_blob(repo, &layer.digest, MAX_BUNDLE).await?;
    let bundle = Bundle::parse(&blob).map_err(|e| invalid(e.to_string()))?;
    let envelope = bundle.dsse().map_err(|e| invalid(e.to_string()))?;
    Statement::parse(&envelope.payload.0).map_err(invalid)
}

/// A registry error about one referrer that says nothing of the others (the registry answered).
fn passed_over(e: &crate::registry::Error) -> bool {
    use crate::registry::Error as R;
    matches!(e, R::TooLarge { .. } | R::DigestMismatch { .. } | R::NotFound { .. } | R::ModelPack(_))
}

fn rejected_referrer(digest: &str, e: &crate::registry::Error) -> Error {
    Error::rejected(Rejection::InvalidSignature, format!("model-signing referrer {digest}: {e}"))
}

/// Of two bundles' refusals, the one that says most: a signature that verified but does not bind,
/// then a signer not trusted, then one that does not parse.
fn most_telling(kept: Option<Error>, new: Error) -> Error {
    let rank = |e: &Error| match e {
        Error::Rejected { reason: Rejection::DigestMismatch, .. } => 0,
        Error::Rejected { reason: Rejection::BadSignature | Rejection::UntrustedRoot, .. } => 1,
        _ => 2,
    };
    match kept {
        Some(kept) if rank(&kept) <= rank(&new) => kept,
        _ => new,
    }
}

/// The pure part: the bundle's signature with `trust`, its statement, the binding to `manifest`.
pub fn check(
    bundle: &[u8],
    digest: &str,
    manifest: &Manifest,
    trust: &Trust,
) -> Result<(Verification, Binding, Statement), Error> {
    let invalid = |e: String| Error::rejected(Rejection::InvalidSignature, e);
    let parsed = Bundle::parse(bundle).map_err(|e| invalid(e.to_string()))?;
    let envelope = parsed.dsse().map_err(|e| invalid(e.to_string()))?;
    let (identity, anchor) = signer(&parsed, envelope, trust)?;
    if envelope.payload_type != IN_TOTO_PAYLOAD {
        return Err(invalid(format!("DSSE payload type {:?} is not {IN_TOTO_PAYLOAD}", envelope.payload_type)));
    }
    let statement = Statement::parse(&envelope.payload.0).map_err(invalid)?;
    let binding = bind(&statement, manifest).map_err(|e| Error::rejected(Rejection::DigestMismatch, e))?;
    let mut warnings = Vec::new();
    if binding.ignored > 0 {
        warnings.push(format!(
            "{} layer(s) under the signature's ignore_paths ({}) are published unsigned",
            binding.ignored,
            statement.ignore_paths.join(", ")
        ));
    }
    if binding.in_archives > 0 {
        warnings.push(format!(
            "{} file(s) inside archive layers are checked on the node once extracted",
            binding.in_archives
        ));
    }
    let verification = Verification {
        provider: PROVIDER,
        digest: digest.to_owned(),
        identity,
        signature_digest: String::new(),
        warnings,
        enforced: true,
        files: Some(binding.files as u64),
        timestamp: None,
        anchor: Some(anchor),
    };
    Ok((verification, binding, statement))
}

/// Who made the envelope's signature, by the trust given, and the anchor of that trust.
fn signer(bundle: &Bundle, envelope: &sigstore::Envelope, trust: &Trust) -> Result<(String, String), Error> {
    let certificates = bundle.certificates();
    match trust {
        Trust::Keys(keys) => {
            if !certificates.is_empty() {
                return Err(Error::rejected(
                    Rejection::BadSignature,
                    "the bundle is signed with a certificate, and only public keys are trusted",
                ));
            }
            keys.iter().find(|k| envelope.verify(&k.key)).map(|k| (k.name.clone(), k.key.fingerprint())).ok_or_else(
                || {
                    Error::rejected(
                        Rejection::BadSignature,
                        format!("the model-signing bundle does not verify with the {} trusted key(s)", keys.len()),
                    )
                },
            )
        }
        Trust::Roots(roots) => {
            if certificates.is_empty() {
                return Err(Error::rejected(
                    Rejection::UntrustedRoot,
                    "the bundle carries no certificate, and only certificate roots are trusted",
                ));
            }
            if !bundle.verification_material.tlog_entries.is_empty() {
                return Err(Error::rejected(
                    Rejection::UntrustedRoot,
                    "a keyless (Sigstore) model signature, and only certificate roots are trusted (keyless needs a trusted_root.json and identities)",
                ));
            }
            let chain: Vec<Cert> = certificates
                .into_iter()
                .map(Cert::from_der)
                .collect::<Result<_, _>>()
                .map_err(|e| Error::rejected(Rejection::InvalidSignature, e))?;
            // model_signing checks the chain at the signing certificate's start of validity: a
            // bundle carries no trusted signing time.
            let at = chain[0].cert.tbs_certificate.validity.not_before.to_unix_duration().as_secs() as i64;
            let path = sigstore::verify_chain(&chain, roots, at)
                .map_err(|e| Error::rejected(Rejection::UntrustedRoot, e.to_string()))?;
            let anchor = path.last().map(|root| super::fingerprint(&root.der)).unwrap_or_default();
            if !envelope.verify(&chain[0].key) {
                return Err(Error::rejected(
                    Rejection::BadSignature,
                    "the signature does not verify with its signing certificate",
                ));
            }
            Ok((chain[0].subject().to_string(), anchor))
        }
        Trust::Keyless(trust) => {
            let signer =
                keyless::bundle_signer(bundle, trust).map_err(|(reason, detail)| Error::rejected(reason, detail))?;
            Ok((signer.identity, signer.anchor))
        }
    }
}

#[cfg(test)]
mod tests;
