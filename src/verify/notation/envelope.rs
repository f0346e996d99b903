//! What a Notary Project signature envelope says, independent of JWS or COSE, and the checks the
//! signature specification makes of it (critical headers, signing scheme, algorithm against key).

use aws_lc_rs::signature::{self, VerificationAlgorithm};
use serde::Deserialize;

use crate::verify::KeyKind;

pub const PAYLOAD_CONTENT_TYPE: &str = "application/vnd.cncf.notary.payload.v1+json";
/// Protected headers a Notary Project verifier understands beyond the format's own.
pub const KNOWN_CRITICAL: &[&str] = &[
    "io.cncf.notary.signingScheme",
    "io.cncf.notary.signingTime",
    "io.cncf.notary.authenticSigningTime",
    "io.cncf.notary.expiry",
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    Es512,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    X509,
    SigningAuthority,
}

impl Scheme {
    pub fn parse(value: Option<&str>) -> Result<Scheme, String> {
        match value {
            Some("notary.x509") => Ok(Scheme::X509),
            Some("notary.x509.signingAuthority") => Ok(Scheme::SigningAuthority),
            other => Err(format!("signing scheme {other:?} is not notary.x509 or notary.x509.signingAuthority")),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Envelope {
    pub algorithm: Algorithm,
    /// The bytes the signature is over.
    pub signing_input: Vec<u8>,
    pub signature: Vec<u8>,
    pub payload: Vec<u8>,
    pub scheme: Scheme,
    /// Unix seconds.
    pub signing_time: Option<i64>,
    pub authentic_signing_time: Option<i64>,
    pub expiry: Option<i64>,
    pub critical: Vec<String>,
    /// DER certificates, signing certificate first.
    pub certificates: Vec<Vec<u8>>,
    /// The RFC 3161 timestamp countersignature (a DER TimeStampToken over `signature`), if any.
    pub timestamp: Option<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    pub target_artifact: Target,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

impl Envelope {
    /// The scheme's required headers exist and are marked critical.
    pub fn check_critical(&self) -> Result<(), String> {
        let mut required = vec!["io.cncf.notary.signingScheme"];
        match self.scheme {
            Scheme::X509 => {
                if self.signing_time.is_none() {
                    return Err("notary.x509 signature without io.cncf.notary.signingTime".into());
                }
            }
            Scheme::SigningAuthority => {
                if self.authentic_signing_time.is_none() {
                    return Err("signingAuthority signature without io.cncf.notary.authenticSigningTime".into());
                }
                required.push("io.cncf.notary.authenticSigningTime");
            }
        }
        if self.expiry.is_some() {
            required.push("io.cncf.notary.expiry");
        }
        if let Some(missing) = required.iter().find(|r| !self.critical.iter().any(|c| c == *r)) {
            return Err(format!("header {missing} must be listed as critical"));
        }
        Ok(())
    }

    /// The verification algorithm for the envelope's `alg` and the signing key, or why they do
    /// not fit together.
    pub fn verification_algorithm(&self, key: KeyKind) -> Result<&'static dyn VerificationAlgorithm, String> {
        use Algorithm::*;
        Ok(match (self.algorithm, key) {
            (Ps256, KeyKind::Rsa) => &signature::RSA_PSS_2048_8192_SHA256,
            (Ps384, KeyKind::Rsa) => &signature::RSA_PSS_2048_8192_SHA384,
            (Ps512, KeyKind::Rsa) => &signature::RSA_PSS_2048_8192_SHA512,
            (Es256, KeyKind::EcP256) => &signature::ECDSA_P256_SHA256_FIXED,
            (Es384, KeyKind::EcP384) => &signature::ECDSA_P384_SHA384_FIXED,
            (Es512, KeyKind::EcP521) => &signature::ECDSA_P521_SHA512_FIXED,
            (alg, key) => return Err(format!("algorithm {alg:?} does not fit the signing key ({key:?})")),
        })
    }

    /// The signing time the certificate chain must be valid at.
    pub fn signed_at(&self) -> Option<i64> {
        match self.scheme {
            Scheme::X509 => self.signing_time,
            Scheme::SigningAuthority => self.authentic_signing_time,
        }
    }

    pub fn payload(&self) -> Result<Payload, String> {
        serde_json::from_slice(&self.payload).map_err(|e| format!("signature payload: {e}"))
    }
}
