//! Signature verification of a ModelPack manifest digest: cosign (key-based), the Notary Project
//! (notation) and OpenSSF model signing (`model_signing`: every file signed, on the shared Sigstore
//! bundle code in `sigstore`). A verified digest is the only one the operator lets downstream.

pub(crate) mod cert_rules;
pub mod cosign;
pub mod keyless;
mod keys;
pub mod model_signing;
pub mod notation;
pub mod sigstore;
pub mod timestamp;
pub(crate) mod x509;

pub use keys::{KeyKind, PublicKey};

/// Why a signature was not accepted. Each variant is one cause a person can act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// No signature is attached to the digest.
    NoSignature,
    /// A signature exists, but none verifies with the trusted keys or certificates.
    BadSignature,
    /// A signature verifies but was made for another digest.
    DigestMismatch,
    /// The signing certificate does not chain to the trust store.
    UntrustedRoot,
    /// The signer is not one of the policy's trusted identities.
    IdentityMismatch,
    /// The signature or its certificate has expired.
    Expired,
    /// No trust policy applies to the repository.
    NoPolicy,
    /// The envelope is malformed or breaks the signature specification.
    InvalidSignature,
    /// A keyless signature whose signing time no trusted log entry or timestamp proves.
    NoProofOfTime,
    /// The trust policy asks for a timestamp countersignature and none verifies (absent, altered,
    /// or from a TSA outside its `tsa` trust stores).
    Timestamp,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::NoSignature => "no signature found",
            Rejection::BadSignature => "bad signature",
            Rejection::DigestMismatch => "digest mismatch",
            Rejection::UntrustedRoot => "untrusted root",
            Rejection::IdentityMismatch => "identity mismatch",
            Rejection::Expired => "expired",
            Rejection::NoPolicy => "no applicable trust policy",
            Rejection::InvalidSignature => "invalid signature envelope",
            Rejection::NoProofOfTime => "no proof of signing time",
            Rejection::Timestamp => "timestamp not verified",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The artifact's signatures were checked and rejected.
    #[error("signature rejected ({}): {detail}", .reason.as_str())]
    Rejected { reason: Rejection, detail: String },
    /// The verification material (keys, certificates, trust policy) is unusable.
    #[error("invalid key: {0}")]
    InvalidKey(String),
    #[error("invalid trust material: {0}")]
    InvalidTrust(String),
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
}

impl Error {
    pub fn rejected(reason: Rejection, detail: impl Into<String>) -> Error {
        Error::Rejected { reason, detail: detail.into() }
    }
}

/// A passed verification.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    pub provider: &'static str,
    /// The manifest digest that was verified.
    pub digest: String,
    /// Who signed: the key's name (cosign) or the signing certificate's subject (notation).
    pub identity: String,
    /// The digest of the signature manifest that verified.
    pub signature_digest: String,
    /// Checks the policy only logs (audit, permissive) that did not pass, and checks not made.
    pub warnings: Vec<String>,
    /// False when the policy level logs a failed authenticity check instead of enforcing it
    /// (notation `audit`): usable, but not verified.
    pub enforced: bool,
    /// model signing: how many files the signature lists, each bound to the ModelPack (raw layers
    /// by digest before the pull, files inside archives on the node).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// The verified RFC 3161 timestamp that proves when it was signed, if one was verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<Timestamped>,
    /// What the signer's trust rests on, as [`fingerprint`]: the public key that verified (its
    /// SubjectPublicKeyInfo), or the trusted certificate the chain reached (a trust-store or root
    /// certificate; keyless, the Fulcio root). The identity is only as good as this anchor: whoever
    /// writes the trust may name any identity under an anchor of their own.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
}

/// `sha256:<hex>` of DER bytes (a SubjectPublicKeyInfo or a certificate), as `openssl x509 -outform
/// der | sha256sum` or `openssl pkey -pubin -outform der | sha256sum` print it.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(der)))
}

/// A verified timestamp countersignature.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Timestamped {
    /// The TSA's time (genTime), RFC 3339.
    pub time: String,
    /// The TSA certificate's subject.
    pub authority: String,
}
