//! Sigstore bundles, shared by the verifiers that read them (OpenSSF model signing, cosign's
//! bundle format). The public surface, in the order a verifier uses it:
//!
//! - [`Bundle::parse`]: the v0.3 JSON bundle, shape-checked and bounded;
//! - [`Bundle::certificates`] and [`Cert`]: the signing certificate (and chain) it carries;
//! - [`verify_chain`]: that certificate chained to trusted roots, at a given time;
//! - [`Envelope::verify`] (DSSE, over [`pae`]) or [`verify_message`]: the signature itself, with a
//!   trusted key or the certificate's key.
//!
//! Transparency-log entries and RFC 3161 timestamps are parsed ([`TransparencyLogEntry`],
//! [`Rfc3161Timestamp`]) but not checked here: whoever needs them (keyless) checks them.

mod bundle;
pub mod trusted_root;

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, KeyUsages};

use super::{KeyKind, PublicKey};

pub use super::x509::Cert;
pub use bundle::{
    BUNDLE_V03, Base64, Bundle, DsseSignature, Envelope, HashOutput, InclusionPromise, InclusionProof, Int64,
    MessageSignature, Rfc3161Timestamp, TransparencyLogEntry, VerificationMaterial,
};

const KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.15");
const BASIC_CONSTRAINTS: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.19");
const EXT_KEY_USAGE: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.5.29.37");
const CODE_SIGNING: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.3");
/// Longest path from a signing certificate to a root followed.
const MAX_DEPTH: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The bundle (or a certificate in it) does not parse or breaks the bundle's rules.
    #[error("{0}")]
    Malformed(String),
    /// The certificate chain does not lead to a trusted root at the time asked.
    #[error("{0}")]
    Untrusted(String),
}

/// DSSE's pre-authentication encoding: what a DSSE signature signs
/// (`DSSEv1 <len(type)> <type> <len(payload)> <payload>`, lengths in ASCII decimal).
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let head = format!("DSSEv1 {} {payload_type} {} ", payload_type.len(), payload.len());
    let mut out = Vec::with_capacity(head.len() + payload.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(payload);
    out
}

/// The algorithms a Sigstore signer uses with a key of this kind: ECDSA with the curve's own hash
/// (model_signing and cosign), Ed25519, RSA PKCS#1 v1.5 or PSS with SHA-2.
fn algorithms(kind: KeyKind) -> &'static [&'static dyn VerificationAlgorithm] {
    match kind {
        KeyKind::EcP256 => &[&signature::ECDSA_P256_SHA256_ASN1],
        KeyKind::EcP384 => &[&signature::ECDSA_P384_SHA384_ASN1],
        KeyKind::EcP521 => &[&signature::ECDSA_P521_SHA512_ASN1],
        KeyKind::Ed25519 => &[&signature::ED25519],
        KeyKind::Rsa => &[
            &signature::RSA_PKCS1_2048_8192_SHA256,
            &signature::RSA_PKCS1_2048_8192_SHA384,
            &signature::RSA_PKCS1_2048_8192_SHA512,
            &signature::RSA_PSS_2048_8192_SHA256,
            &signature::RSA_PSS_2048_8192_SHA384,
            &signature::RSA_PSS_2048_8192_SHA512,
        ],
    }
}

/// Whether `sig` is `key`'s signature over `message` (a `messageSignature`'s artifact bytes).
pub fn verify_message(key: &PublicKey, message: &[u8], sig: &[u8]) -> bool {
    algorithms(key.kind).iter().any(|alg| key.verify(*alg, message, sig))
}

impl Envelope {
    /// Whether one of the envelope's signatures is `key`'s over the PAE of its payload.
    pub fn verify(&self, key: &PublicKey) -> bool {
        let message = pae(&self.payload_type, &self.payload.0);
        self.signatures.iter().any(|s| verify_message(key, &message, &s.sig.0))
    }
}

/// Checks that `chain` (signing certificate first, then the certificates the bundle carries)
/// leads to a self-signed certificate of `roots`, every certificate on the way valid at `at`
/// (unix seconds), every issuer a CA, and the signing certificate usable for signing
/// (`digitalSignature` key usage or the `codeSigning` extended key usage, as model_signing asks).
/// Returns the path followed, signing certificate first, root last.
pub fn verify_chain<'a>(chain: &'a [Cert], roots: &'a [Cert], at: i64) -> Result<Vec<&'a Cert>, Error> {
    let untrusted = |why: String| Error::Untrusted(why);
    let Some(leaf) = chain.first() else { return Err(untrusted("the bundle carries no certificate".into())) };
    may_sign(leaf)?;
    let mut path = vec![leaf];
    let mut current = leaf;
    for _ in 0..MAX_DEPTH {
        if !current.valid_at(at) {
            return Err(untrusted(format!("certificate {} is not valid at {}", current.subject(), time(at))));
        }
        if roots.iter().any(|r| r.der == current.der) && current.issued_by(current) {
            return Ok(path);
        }
        let issuer = roots
            .iter()
            .filter(|r| r.issued_by(r))
            .chain(chain[1..].iter())
            .find(|c| !path.iter().any(|p| p.der == c.der) && current.issued_by(c) && is_ca(c));
        match issuer {
            Some(issuer) => {
                path.push(issuer);
                current = issuer;
            }
            None => {
                return Err(untrusted(format!(
                    "certificate {} does not chain to any of the {} trusted root(s)",
                    current.subject(),
                    roots.len()
                )));
            }
        }
    }
    Err(untrusted(format!("the chain of {} is longer than {MAX_DEPTH} certificates", leaf.subject())))
}

fn time(at: i64) -> String {
    jiff::Timestamp::from_second(at).map_or_else(|_| at.to_string(), |t| t.to_string())
}

fn is_ca(cert: &Cert) -> bool {
    matches!(cert.extension::<BasicConstraints>(BASIC_CONSTRAINTS), Ok(Some((bc, _))) if bc.ca)
}

fn may_sign(leaf: &Cert) -> Result<(), Error> {
    let signs = matches!(leaf.extension::<KeyUsage>(KEY_USAGE), Ok(Some((ku, _))) if ku.0.contains(KeyUsages::DigitalSignature));
    let code = matches!(leaf.extension::<ExtendedKeyUsage>(EXT_KEY_USAGE), Ok(Some((eku, _))) if eku.0.contains(&CODE_SIGNING));
    if signs || code {
        Ok(())
    } else {
        Err(Error::Untrusted(format!(
            "signing certificate {} has neither the digitalSignature key usage nor the codeSigning extended key usage",
            leaf.subject()
        )))
    }
}

#[cfg(test)]
mod tests;
