//! Notary Project signatures (what `notation sign` makes), verified natively: discovery through the
//! referrers API or tag schema, the JWS and COSE envelopes, the certificate chain to a named trust
//! store, the trust policy's identities and levels, RFC 3161 timestamp countersignatures against
//! `tsa` trust stores (`timestamping`). Revocation is not checked here: the outcome says so, and a
//! level that enforces revocation rejects certificates (signing or TSA) that name revocation
//! endpoints rather than pretend they were checked.

mod cose;
mod envelope;
mod jws;
pub mod policy;
/// The Notary Project certificate rules live beside the certificate code (`verify::cert_rules`): the
/// RFC 3161 timestamp chains follow them too.
pub(crate) use super::cert_rules as rules;
mod timestamping;
/// The certificate code is the verifiers' (`verify::x509`); notation's rules name it from here.
pub(crate) use super::x509;

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use super::{Error, Rejection, Timestamped, Verification};
use crate::registry::{Registry, Repository};
use envelope::Envelope;
use policy::{Action, Check, Identity, Level, Policy, TrustPolicy};
use x509::Cert;

pub use policy::TrustPolicy as Policies;

/// Entry points for the fuzz targets (`fuzz/`): every parser that reads what a registry or a
/// Secret supplies.
#[doc(hidden)]
pub mod fuzzing {
    pub fn jws(bytes: &[u8]) {
        let _ = super::jws::parse(bytes);
    }

    pub fn cose(bytes: &[u8]) {
        let _ = super::cose::parse(bytes);
    }

    pub fn trust_policy(bytes: &[u8]) {
        let _ = super::policy::TrustPolicy::parse(bytes);
    }

    pub fn timestamp(bytes: &[u8]) {
        let _ = crate::verify::timestamp::verify(bytes, b"", &[]);
    }

    pub fn certificate(bytes: &[u8]) {
        if let Ok(cert) = super::x509::Cert::from_der(bytes) {
            let _ = super::rules::validate_chain(std::slice::from_ref(&cert), 0);
        }
    }
}

pub const SIGNATURE_ARTIFACT: &str = "application/vnd.cncf.notary.signature";
const JWS: &str = "application/jose+json";
const COSE: &str = "application/cose";
/// Most signatures looked at per digest (and as many referrers that state no type): referrers of
/// other types (SBOMs, attestations) never count.
const MAX_SIGNATURES: usize = 32;
const MAX_ENVELOPE: usize = 256 << 10;

/// Trust stores by (type, name): `ca`, `signingAuthority` or `tsa`.
#[derive(Clone, Debug, Default)]
pub struct TrustStores {
    stores: BTreeMap<(String, String), Vec<Cert>>,
}

impl TrustStores {
    /// Adds the PEM certificates of `<type>.<store>.pem|.crt` (the Secret layout).
    pub fn add_key(&mut self, key: &str, pem: &[u8]) -> Result<bool, Error> {
        let Some(stem) = key.strip_suffix(".pem").or_else(|| key.strip_suffix(".crt")) else { return Ok(false) };
        let Some((kind, name)) = stem.split_once('.') else { return Ok(false) };
        if !matches!(kind, "ca" | "signingAuthority" | "tsa") {
            return Ok(false);
        }
        self.add(kind, name, pem, key)?;
        Ok(true)
    }

    fn add(&mut self, kind: &str, name: &str, pem: &[u8], source: &str) -> Result<(), Error> {
        let certs = Cert::from_pem_bundle(pem).map_err(|e| Error::InvalidTrust(format!("{source}: {e}")))?;
        self.stores.entry((kind.to_owned(), name.to_owned())).or_default().extend(certs);
        Ok(())
    }

    /// notation's own layout: `<dir>/<type>/<store>/*.crt|*.pem`.
    pub fn from_dir(dir: &Path) -> Result<TrustStores, Error> {
        let mut stores = TrustStores::default();
        let read = |p: &Path| std::fs::read_dir(p).map_err(|e| Error::InvalidTrust(format!("{}: {e}", p.display())));
        for kind in read(dir)?.flatten() {
            let kind_name = kind.file_name().to_string_lossy().into_owned();
            if !matches!(kind_name.as_str(), "ca" | "signingAuthority" | "tsa") || !kind.path().is_dir() {
                continue;
            }
            for store in read(&kind.path())?.flatten().filter(|s| s.path().is_dir()) {
                let store_name = store.file_name().to_string_lossy().into_owned();
                for file in read(&store.path())?.flatten() {
                    let path = file.path();
                    if !matches!(path.extension().and_then(|e| e.to_str()), Some("crt" | "pem")) {
                        continue;
                    }
                    let pem =
                        std::fs::read(&path).map_err(|e| Error::InvalidTrust(format!("{}: {e}", path.display())))?;
                    stores.add(&kind_name, &store_name, &pem, &path.display().to_string())?;
                }
            }
        }
        Ok(stores)
    }

    fn certs(&self, kind: &str, name: &str) -> &[Cert] {
        self.stores.get(&(kind.to_owned(), name.to_owned())).map_or(&[], Vec::as_slice)
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SignatureManifest {
    #[serde(default)]
    artifact_type: Option<String>,
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
    #[serde(default)]
    subject: Option<Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
}

/// The manifest being verified, as its signatures must describe it.
pub struct Target<'a> {
    pub digest: &'a str,
    pub media_type: &'a str,
    pub size: i64,
}

/// Verifies `repo@target.digest` under the trust policy that applies to the repository.
pub async fn verify(
    registry: &Registry,
    repo: &Repository,
    target: &Target<'_>,
    policies: &TrustPolicy,
    stores: &TrustStores,
    now: i64,
) -> Result<Verification, Error> {
    let scope = repo.to_string();
    let policy = policies
        .select(&scope)
        .ok_or_else(|| Error::rejected(Rejection::NoPolicy, format!("no trust policy applies to {scope}")))?;
    if policy.level == Level::Skip {
        return Ok(Verification {
            provider: "notation",
            digest: target.digest.to_owned(),
            identity: String::new(),
            signature_digest: String::new(),
            warnings: vec![format!("verification skipped by trust policy {:?}", policy.name)],
            enforced: false,
            timestamp: None,
            files: None,
            anchor: None,
        });
    }
    let listed = registry.referrers_of_type(repo, target.digest, SIGNATURE_ARTIFACT, MAX_SIGNATURES).await?;
    let mut last = None;
    for referrer in listed.referrers {
        let bytes = registry.manifest(repo, &referrer.digest).await?;
        let Ok(manifest) = serde_json::from_slice::<SignatureManifest>(&bytes) else { continue };
        let is_signature = manifest.artifact_type.as_deref() == Some(SIGNATURE_ARTIFACT)
            || manifest.config.media_type == SIGNATURE_ARTIFACT;
        if !is_signature || manifest.subject.as_ref().is_none_or(|s| s.digest != target.digest) {
            continue;
        }
        let Some(layer) = manifest.layers.first() else { continue };
        let blob = registry.small_blob(repo, &layer.digest, MAX_ENVELOPE).await?;
        match verify_signature(&layer.media_type, &blob, target, policy, stores, now) {
            Ok(mut verification) => {
                verification.signature_digest = referrer.digest;
                return Ok(verification);
            }
            Err(e) => last = Some(e),
        }
    }
    if listed.incomplete {
        // Nothing verified among what was read, and a signature may be in what was not: nothing
        // is decided (the controller keeps its previous verdict), rather than "unsigned".
        return Err(Error::Registry(crate::registry::Error::Protocol {
            registry: repo.registry.clone(),
            detail: format!(
                "referrers of {repo}@{}: more than {} pages or {MAX_SIGNATURES} signatures, none of those read verifies",
                target.digest,
                crate::registry::MAX_REFERRER_PAGES
            ),
        }));
    }
    Err(last.unwrap_or_else(|| {
        Error::rejected(Rejection::NoSignature, format!("no Notary Project signature for {}", target.digest))
    }))
}

fn rejected(reason: Rejection, detail: impl Into<String>) -> Error {
    Error::rejected(reason, detail)
}

/// Verifies one signature envelope: integrity, then the checks the policy's level asks for.
pub fn verify_signature(
    media_type: &str,
    bytes: &[u8],
    target: &Target<'_>,
    policy: &Policy,
    stores: &TrustStores,
    now: i64,
) -> Result<Verification, Error> {
    let envelope = match media_type {
        JWS => jws::parse(bytes),
        COSE => cose::parse(bytes),
        other => Err(format!("signature envelope type {other:?} is neither {JWS} nor {COSE}")),
    }
    .map_err(|e| rejected(Rejection::InvalidSignature, e))?;
    let chain = integrity(&envelope, target)?;
    let leaf = &chain[0];
    let mut warnings = Vec::new();
    let mut enforced = true;
    let mut apply = |check: Check, outcome: Result<(), Error>| -> Result<(), Error> {
        match (outcome, policy.action(check)) {
            (Ok(()), _) | (Err(_), Action::Skip) => Ok(()),
            (Err(e), Action::Enforce) => Err(e),
            (Err(e), Action::Log) => {
                if check == Check::Authenticity {
                    enforced = false;
                }
                warnings.push(format!("{} (logged, not enforced): {e}", check.as_str()));
                Ok(())
            }
        }
    };
    apply(Check::Authenticity, authenticity(&envelope, &chain, policy, stores))?;
    let (mut stamp, mut unverified) = (None, None);
    if policy.action(Check::AuthenticTimestamp) != Action::Skip {
        match timestamping::authentic_timestamp(&envelope, &chain, policy, stores, now) {
            Ok(timestamping::Outcome::Verified(t)) => stamp = Some(t),
            Ok(timestamping::Outcome::NotVerified(why)) => unverified = Some(why),
            Err(e) => apply(Check::AuthenticTimestamp, Err(e))?,
        }
    }
    apply(
        Check::Expiry,
        match envelope.expiry {
            Some(expiry) if expiry < now => Err(rejected(Rejection::Expired, "the signature has expired")),
            _ => Ok(()),
        },
    )?;
    // The TSA's chain too: the specification checks its revocation as well, and it is not.
    let tsa_chain = stamp.iter().flat_map(|t| t.chain.iter());
    let revocable: Vec<String> =
        chain.iter().chain(tsa_chain).filter(|c| c.revocable()).map(|c| c.subject().to_string()).collect();
    if policy.action(Check::Revocation) != Action::Skip {
        if revocable.is_empty() {
            warnings.push("revocation: not applicable (no certificate names a CRL or OCSP endpoint)".into());
        } else {
            let why = format!("revocation not checked (CRL/OCSP are not supported) for {}", revocable.join("; "));
            apply(Check::Revocation, Err(rejected(Rejection::InvalidSignature, why)))?;
        }
    }
    if let Some(why) = unverified.filter(|_| envelope.timestamp.is_some()) {
        warnings.push(format!("the timestamp countersignature was not verified: {why}"));
    }
    Ok(Verification {
        provider: "notation",
        digest: target.digest.to_owned(),
        identity: leaf.subject().to_string(),
        signature_digest: String::new(),
        warnings,
        enforced,
        timestamp: stamp.map(|t| Timestamped { time: t.time(), authority: t.authority }),
        files: None,
        anchor: anchor(envelope.scheme, &chain, policy, stores),
    })
}

/// The signature verifies with the signing certificate, over a payload describing exactly the
/// target, and the certificate chain meets the Notary Project's requirements at signing time.
fn integrity(envelope: &Envelope, target: &Target<'_>) -> Result<Vec<Cert>, Error> {
    let invalid = |e: String| rejected(Rejection::InvalidSignature, e);
    let chain: Vec<Cert> =
        envelope.certificates.iter().map(|der| Cert::from_der(der)).collect::<Result<_, _>>().map_err(invalid)?;
    let leaf = &chain[0];
    let algorithm = envelope.verification_algorithm(leaf.key.kind).map_err(invalid)?;
    if !leaf.key.verify(algorithm, &envelope.signing_input, &envelope.signature) {
        return Err(rejected(Rejection::BadSignature, "the signature does not verify with its signing certificate"));
    }
    let payload = envelope.payload().map_err(invalid)?;
    let t = &payload.target_artifact;
    if t.digest != target.digest || t.media_type != target.media_type || t.size != target.size {
        return Err(rejected(
            Rejection::DigestMismatch,
            format!("the signature is for {} ({}, {} bytes), not {}", t.digest, t.media_type, t.size, target.digest),
        ));
    }
    let at = envelope.signed_at().unwrap_or_default();
    rules::validate_chain(&chain, at).map_err(invalid)?;
    Ok(chain)
}

/// The chain ends in a certificate of one of the policy's trust stores (of the type the signing
/// scheme needs), and the signer is a trusted identity.
/// The fingerprint of the policy's trust-store certificate the chain holds, if it holds one.
fn anchor(scheme: envelope::Scheme, chain: &[Cert], policy: &Policy, stores: &TrustStores) -> Option<String> {
    let wanted = match scheme {
        envelope::Scheme::X509 => "ca",
        envelope::Scheme::SigningAuthority => "signingAuthority",
    };
    let mut trusted =
        policy.trust_stores.iter().filter(|(kind, _)| kind == wanted).flat_map(|(kind, name)| stores.certs(kind, name));
    trusted.find(|t| chain.iter().any(|c| c.der == t.der)).map(|t| crate::verify::fingerprint(&t.der))
}

fn authenticity(envelope: &Envelope, chain: &[Cert], policy: &Policy, stores: &TrustStores) -> Result<(), Error> {
    let trusted = anchor(envelope.scheme, chain, policy, stores).is_some();
    if !trusted {
        let names: Vec<String> = policy.trust_stores.iter().map(|(k, n)| format!("{k}:{n}")).collect();
        return Err(rejected(
            Rejection::UntrustedRoot,
            format!(
                "the certificate chain of {} is not anchored in trust store(s) {}",
                chain[0].subject(),
                names.join(", ")
            ),
        ));
    }
    let subject = chain[0].subject();
    let named = policy.identities.iter().any(|i| matches!(i, Identity::Subject(_)));
    if let Some(attribute) = subject.repeated().filter(|_| named) {
        return Err(rejected(
            Rejection::IdentityMismatch,
            format!(
                "signer {subject} holds attribute {attribute} more than once, so it matches no x509.subject identity"
            ),
        ));
    }
    let matches = policy.identities.iter().any(|i| match i {
        Identity::Any => true,
        Identity::Subject(dn) => dn.is_subset_of(&subject),
    });
    if !matches {
        return Err(rejected(
            Rejection::IdentityMismatch,
            format!("signer {subject} is not a trusted identity of policy {:?}", policy.name),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWS_SEED: &[u8] = include_bytes!("../../../fuzz/seeds/jws/notation.jws");
    const COSE_SEED: &[u8] = include_bytes!("../../../fuzz/seeds/cose/notation.cose");

    #[test]
    fn real_notation_envelopes_parse_and_damaged_ones_do_not() {
        for (name, bytes, parse) in
            [("jws", JWS_SEED, jws::parse as fn(&[u8]) -> Result<Envelope, String>), ("cose", COSE_SEED, cose::parse)]
        {
            let envelope = parse(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(envelope.scheme, envelope::Scheme::X509, "{name}");
            assert!(envelope.signing_time.is_some() && !envelope.certificates.is_empty(), "{name}");
            let chain: Vec<Cert> = envelope.certificates.iter().map(|d| Cert::from_der(d).unwrap()).collect();
            let algorithm = envelope.verification_algorithm(chain[0].key.kind).unwrap();
            assert!(chain[0].key.verify(algorithm, &envelope.signing_input, &envelope.signature), "{name}");
            for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
                assert!(parse(&bytes[..cut]).is_err(), "{name} truncated at {cut}");
            }
        }
    }
}
