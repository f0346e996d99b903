//! cosign keyless: a signature made with a short-lived Fulcio certificate naming an OIDC identity,
//! accepted only when
//! - the certificate chains to a Fulcio CA of the trusted root that was valid at the signing time;
//! - its OIDC issuer and subject match one of the accepted identities;
//! - the signing time is proven, by a Rekor signed entry timestamp and/or an RFC 3161 timestamp of
//!   a timestamp authority of the root, and falls inside the certificate's validity;
//! - the signed payload names the digest being verified.
//!
//! Both storage forms are read ([`storage`]): cosign's `sha256-<hex>.sig` tag with its annotations,
//! and a Sigstore bundle v0.3 referrer (`cosign sign --new-bundle-format`). Nothing is fetched
//! beyond the registry: the trusted root is the user's, no TUF, Rekor or Fulcio is asked.
//!
//! When the root lists CT logs, the certificate must also embed an SCT of one of them ([`sct`]).

pub mod identity;
mod rekor;
mod sct;
mod storage;

use sha2::{Digest, Sha256};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::ExtendedKeyUsage;

use super::sigstore::trusted_root::TrustedRoot;
use super::sigstore::{Bundle, Cert, verify_chain, verify_message};
use super::timestamp::Token;
use super::{Error, Rejection, Verification};
use crate::registry::{Registry, Repository};
pub use identity::{Identity, Matcher};

const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");

/// What a keyless verification trusts: the root and the accepted identities.
#[derive(Clone, Debug)]
pub struct KeylessTrust {
    pub root: TrustedRoot,
    pub identities: Vec<Identity>,
}

impl KeylessTrust {
    pub fn new(root: TrustedRoot, identities: Vec<Identity>) -> Result<KeylessTrust, Error> {
        if identities.is_empty() {
            return Err(Error::InvalidTrust(
                "keyless verification needs at least one identity (issuer and subject)".into(),
            ));
        }
        Ok(KeylessTrust { root, identities })
    }
}

/// One signature as either storage form carries it.
pub(crate) struct Candidate {
    /// The digest of the manifest it came in.
    pub signature_digest: String,
    pub certificate: Vec<u8>,
    pub signature: Vec<u8>,
    /// What the signature is over (the payload, or a DSSE envelope's PAE).
    pub message: Vec<u8>,
    /// The payload, whose SHA-256 log entries name.
    pub payload: Vec<u8>,
    /// The manifest digest the payload names.
    pub names_digest: Result<String, String>,
    pub entries: Vec<OwnedEntry>,
    pub timestamps: Vec<Vec<u8>>,
}

pub(crate) struct OwnedEntry {
    pub body: Vec<u8>,
    pub integrated_time: i64,
    pub log_index: i64,
    pub log_id: Vec<u8>,
    pub set: Option<Vec<u8>>,
    pub proof: Option<super::sigstore::InclusionProof>,
}

/// Verifies `repo@digest` keyless, in either storage form; any one signature may pass.
pub async fn verify(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    trust: &KeylessTrust,
) -> Result<Verification, Error> {
    let candidates = storage::candidates(registry, repo, digest).await?;
    if candidates.is_empty() {
        return Err(Error::rejected(Rejection::NoSignature, format!("no keyless cosign signature for {digest}")));
    }
    let mut last = None;
    for candidate in &candidates {
        match check(candidate, digest, trust) {
            Ok(Signer { identity, anchor }) => {
                return Ok(Verification {
                    provider: "cosign",
                    digest: digest.to_owned(),
                    identity,
                    signature_digest: candidate.signature_digest.clone(),
                    warnings: Vec::new(),
                    enforced: true,
                    // The proven times are checked, not reported (a log entry's is not a timestamp).
                    timestamp: None,
                    files: None,
                    anchor: Some(anchor),
                });
            }
            Err(e) => last = Some(e),
        }
    }
    let (reason, detail) = last.unwrap_or((Rejection::NoSignature, String::new()));
    Err(Error::rejected(reason, detail))
}

/// Who signed keyless, and under which Fulcio root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// `subject (issuer)` of the accepted identity the certificate matched.
    pub identity: String,
    /// [`super::fingerprint`] of the Fulcio root certificate the leaf chained to.
    pub anchor: String,
}

/// The pure part: whether one signature passes, and as whom.
pub(crate) fn check(c: &Candidate, digest: &str, trust: &KeylessTrust) -> Result<Signer, (Rejection, String)> {
    let who = signer(c, trust)?;
    match &c.names_digest {
        Ok(d) if d == digest => Ok(who),
        Ok(other) => Err((Rejection::DigestMismatch, format!("the signature was made for {other}, not {digest}"))),
        Err(e) => Err((Rejection::InvalidSignature, e.clone())),
    }
}

/// Who signed a Sigstore bundle keyless, for a verifier that judges the bundle's statement itself
/// (OpenSSF model signing, whose subject is the model's files, not a manifest): every rule of
/// [`check`] but the digest named, and a log entry of a log of the root, with its inclusion proof,
/// required. A timestamp alone does not do here, nor a signed entry timestamp alone:
/// `model_signing verify` refuses a bundle without a log entry or without its inclusion proof, and
/// a serving pod that runs it must not refuse what the operator accepted.
pub fn bundle_signer(bundle: &Bundle, trust: &KeylessTrust) -> Result<Signer, (Rejection, String)> {
    let c = storage::of_bundle(bundle, "(model signing)".into()).map_err(|e| match e {
        Error::Rejected { reason, detail } => (reason, detail),
        other => (Rejection::InvalidSignature, other.to_string()),
    })?;
    if !c.entries.iter().any(|e| trust.root.tlog(&e.log_id).is_some() && e.proof.is_some()) {
        return Err((
            Rejection::NoProofOfTime,
            "a keyless model signature needs a transparency log entry, with its inclusion proof, of a log of the trusted root"
                .into(),
        ));
    }
    signer(&c, trust)
}

/// Every rule of [`check`] but the digest the payload names.
fn signer(c: &Candidate, trust: &KeylessTrust) -> Result<Signer, (Rejection, String)> {
    let leaf = Cert::from_der(&c.certificate).map_err(|e| (Rejection::InvalidSignature, format!("signing {e}")))?;
    if !verify_message(&leaf.key, &c.message, &c.signature) {
        return Err((Rejection::BadSignature, "the signature does not verify with its certificate's key".into()));
    }
    let times = proven_times(c, &leaf, &trust.root)?;
    let Some(&at) = times.first() else {
        return Err((
            Rejection::NoProofOfTime,
            "neither a log entry of a trusted log nor a timestamp of a trusted authority proves when it was signed"
                .into(),
        ));
    };
    if let Some(outside) = times.iter().find(|t| !leaf.valid_at(**t)) {
        return Err((Rejection::Expired, format!("signed at {}, outside the certificate's validity", time(*outside))));
    }
    let (issuer, anchor) = chain_to_fulcio(&leaf, &trust.root, at)?;
    // Fulcio issues code-signing certificates; as cosign does, no other kind signs.
    let code_signing = matches!(leaf.extension::<ExtendedKeyUsage>(EXT_KEY_USAGE), Ok(Some((eku, _))) if eku.0.contains(&CODE_SIGNING));
    if !code_signing {
        return Err((
            Rejection::UntrustedRoot,
            "the signing certificate lacks the codeSigning extended key usage".into(),
        ));
    }
    if !trust.root.ctlogs.is_empty() {
        sct::verify(&leaf, &issuer, &trust.root.ctlogs).map_err(|e| (Rejection::UntrustedRoot, e))?;
    }
    let named = identity::Named::of(&leaf).map_err(|e| (Rejection::IdentityMismatch, e))?;
    let identity = named.matching(&trust.identities).ok_or_else(|| {
        (
            Rejection::IdentityMismatch,
            format!("signed by {} (issuer {}), not an accepted identity", named.subjects.join(", "), named.issuer),
        )
    })?;
    Ok(Signer { identity, anchor })
}

fn time(at: i64) -> String {
    jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

/// The signing times the log entries and timestamps prove. A log entry of a trusted log that does
/// not verify (tampered) rejects the signature; an entry of a log the root does not list, or a
/// timestamp no trusted authority signed, proves nothing and is passed over.
fn proven_times(c: &Candidate, leaf: &Cert, root: &TrustedRoot) -> Result<Vec<i64>, (Rejection, String)> {
    let mut times = Vec::new();
    let signed = rekor::Signed {
        signature: &c.signature,
        certificate: &leaf.der,
        payload_sha256: Sha256::digest(&c.payload).into(),
    };
    for e in &c.entries {
        if root.tlog(&e.log_id).is_none() {
            continue;
        }
        let entry = rekor::Entry {
            body: &e.body,
            integrated_time: e.integrated_time,
            log_index: e.log_index,
            log_id: &e.log_id,
            set: e.set.as_deref(),
            proof: e.proof.as_ref(),
        };
        if let Some(t) = rekor::verify(root, &entry, &signed).map_err(|e| (Rejection::BadSignature, e))? {
            times.push(t);
        }
    }
    for der in &c.timestamps {
        if let Ok(t) = timestamp_time(der, &c.signature, root) {
            times.push(t);
        }
    }
    Ok(times)
}

/// The time an RFC 3161 token over `signature` proves, if a timestamp authority of the root signed
/// it inside that authority's window and its certificate's validity.
fn timestamp_time(der: &[u8], signature: &[u8], root: &TrustedRoot) -> Result<i64, String> {
    let token = Token::parse(der).map_err(|e| e.to_string())?;
    if !token.covers(signature).map_err(|e| e.to_string())? {
        return Err("the timestamp is of other data".into());
    }
    let at = token.gen_time();
    for tsa in &root.timestamp_authorities {
        let leaf = &tsa.chain[0];
        if tsa.window.contains(at)
            && token.signed_by(leaf).unwrap_or(false)
            && verify_chain(&tsa.chain[..tsa.chain.len() - 1], std::slice::from_ref(tsa.root()), at).is_ok()
        {
            return Ok(at);
        }
    }
    Err("no timestamp authority of the trusted root signed the timestamp".into())
}

/// The leaf chains, at `at`, through a Fulcio CA of the root valid at `at`; returns the leaf's
/// issuer and the fingerprint of the CA's root certificate.
fn chain_to_fulcio(leaf: &Cert, root: &TrustedRoot, at: i64) -> Result<(Cert, String), (Rejection, String)> {
    for ca in root.certificate_authorities.iter().filter(|ca| ca.window.contains(at)) {
        let mut chain = vec![leaf.clone()];
        chain.extend(ca.chain[..ca.chain.len() - 1].iter().cloned());
        if let Ok(path) = verify_chain(&chain, std::slice::from_ref(ca.root()), at) {
            // A leaf is never its own root (`verify_chain` refuses a leaf that is no root's).
            if let Some(issuer) = path.get(1) {
                return Ok(((*issuer).clone(), super::fingerprint(&ca.root().der)));
            }
        }
    }
    Err((Rejection::UntrustedRoot, "the signing certificate does not chain to a certificate authority of the trusted root valid at the signing time".into()))
}

#[cfg(test)]
mod tests;
