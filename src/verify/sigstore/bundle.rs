//! The Sigstore bundle v0.3 JSON form (protobuf-specs `dev.sigstore.bundle.v1.Bundle` as proto3 JSON):
//! what `model_signing sign` and `cosign sign --new-bundle-format` write. Only the fields a verifier
//! reads are typed; unknown fields are ignored as proto3 JSON allows.

use base64::Engine;
use serde::{Deserialize, Deserializer};

use super::Error;

/// The bundle media type this module reads (both spellings the specification allows).
pub const BUNDLE_V03: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
const BUNDLE_V03_PARAM: &str = "application/vnd.dev.sigstore.bundle+json;version=0.3";

/// Bounds on what one bundle may list: far above what any signer writes, so a hostile bundle
/// cannot make verification try thousands of certificates or signatures.
const MAX_CERTIFICATES: usize = 10;
const MAX_SIGNATURES: usize = 16;
const MAX_LOG_ENTRIES: usize = 16;
const MAX_TIMESTAMPS: usize = 16;

/// Bytes that proto3 JSON writes as base64 (standard or URL-safe alphabet, padded or not).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Base64(pub Vec<u8>);

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let text = text.trim_end_matches('=');
        let engine = if text.contains(['-', '_']) {
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
        } else {
            &base64::engine::general_purpose::STANDARD_NO_PAD
        };
        engine.decode(text).map(Base64).map_err(serde::de::Error::custom)
    }
}

/// A proto3 `int64`: JSON writers put it in a string, some in a number; both are read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Int64(pub i64);

impl<'de> Deserialize<'de> for Int64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Number(i64),
            Text(String),
        }
        match Either::deserialize(d)? {
            Either::Number(n) => Ok(Int64(n)),
            Either::Text(t) => t.parse().map(Int64).map_err(serde::de::Error::custom),
        }
    }
}

/// A parsed bundle. Exactly one of `dsse_envelope` and `message_signature` is set.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub media_type: String,
    pub verification_material: VerificationMaterial,
    #[serde(default)]
    pub dsse_envelope: Option<Envelope>,
    #[serde(default)]
    pub message_signature: Option<MessageSignature>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VerificationMaterial {
    /// A key known to the verifier out of band; `hint` names it (model_signing: the SHA-256 of
    /// the key's PEM).
    #[serde(default)]
    pub public_key: Option<PublicKeyIdentifier>,
    /// The signing certificate alone (v0.3 keyless).
    #[serde(default)]
    pub certificate: Option<X509Certificate>,
    /// The signing certificate first, then the chain (model_signing's certificate mode).
    #[serde(default)]
    pub x509_certificate_chain: Option<X509CertificateChain>,
    #[serde(default)]
    pub tlog_entries: Vec<TransparencyLogEntry>,
    #[serde(default)]
    pub timestamp_verification_data: Option<TimestampVerificationData>,
}

#[derive(Clone, Debug, Default, Deserialize)]
pub struct PublicKeyIdentifier {
    #[serde(default)]
    pub hint: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct X509Certificate {
    /// DER.
    pub raw_bytes: Base64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct X509CertificateChain {
    #[serde(default)]
    pub certificates: Vec<X509Certificate>,
}

/// A Rekor entry as the bundle carries it (checked by the keyless verifier, not here).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TransparencyLogEntry {
    // proto3 JSON leaves out zero values: index 0 is written as nothing.
    #[serde(default)]
    pub log_index: Int64,
    pub log_id: LogId,
    pub kind_version: KindVersion,
    #[serde(default)]
    pub integrated_time: Int64,
    #[serde(default)]
    pub inclusion_promise: Option<InclusionPromise>,
    #[serde(default)]
    pub inclusion_proof: Option<InclusionProof>,
    pub canonicalized_body: Base64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogId {
    pub key_id: Base64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct KindVersion {
    pub kind: String,
    pub version: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionPromise {
    pub signed_entry_timestamp: Base64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InclusionProof {
    #[serde(default)]
    pub log_index: Int64,
    pub root_hash: Base64,
    pub tree_size: Int64,
    #[serde(default)]
    pub hashes: Vec<Base64>,
    pub checkpoint: Checkpoint,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Checkpoint {
    pub envelope: String,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TimestampVerificationData {
    #[serde(default)]
    pub rfc3161_timestamps: Vec<Rfc3161Timestamp>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rfc3161Timestamp {
    /// A DER RFC 3161 `TimeStampResponse` (or token) over the signature.
    pub signed_timestamp: Base64,
}

/// A DSSE envelope: `payload` is signed through the pre-authentication encoding ([`super::pae`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub payload: Base64,
    pub payload_type: String,
    pub signatures: Vec<DsseSignature>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct DsseSignature {
    pub sig: Base64,
    #[serde(default)]
    pub keyid: String,
}

/// A signature over an artifact's bytes (cosign blobs), with the artifact's digest.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageSignature {
    #[serde(default)]
    pub message_digest: Option<HashOutput>,
    pub signature: Base64,
}

#[derive(Clone, Debug, Deserialize)]
pub struct HashOutput {
    /// `SHA2_256`, `SHA2_384`, …
    pub algorithm: String,
    pub digest: Base64,
}

impl Bundle {
    /// Parses and checks the shape: a v0.3 media type, exactly one content, bounded lists.
    pub fn parse(bytes: &[u8]) -> Result<Bundle, Error> {
        let bundle: Bundle =
            serde_json::from_slice(bytes).map_err(|e| Error::Malformed(format!("Sigstore bundle: {e}")))?;
        if bundle.media_type != BUNDLE_V03 && bundle.media_type != BUNDLE_V03_PARAM {
            return Err(Error::Malformed(format!(
                "Sigstore bundle media type {:?} is not {BUNDLE_V03}",
                bundle.media_type
            )));
        }
        match (&bundle.dsse_envelope, &bundle.message_signature) {
            (Some(_), Some(_)) => {
                return Err(Error::Malformed("the bundle holds both a dsseEnvelope and a messageSignature".into()));
            }
            (None, None) => {
                return Err(Error::Malformed("the bundle holds no dsseEnvelope nor messageSignature".into()));
            }
            _ => {}
        }
        let material = &bundle.verification_material;
        let chain = material.x509_certificate_chain.as_ref().map_or(0, |c| c.certificates.len());
        let sigs = bundle.dsse_envelope.as_ref().map_or(1, |e| e.signatures.len());
        let stamps = material.timestamp_verification_data.as_ref().map_or(0, |t| t.rfc3161_timestamps.len());
        let bounds = [
            ("verificationMaterial.x509CertificateChain.certificates", chain, MAX_CERTIFICATES),
            ("dsseEnvelope.signatures", sigs, MAX_SIGNATURES),
            ("verificationMaterial.tlogEntries", material.tlog_entries.len(), MAX_LOG_ENTRIES),
            ("verificationMaterial.timestampVerificationData.rfc3161Timestamps", stamps, MAX_TIMESTAMPS),
        ];
        for (field, n, max) in bounds {
            if n > max {
                return Err(Error::Malformed(format!("{field} lists {n} entries, more than {max}")));
            }
        }
        if sigs == 0 {
            return Err(Error::Malformed("dsseEnvelope.signatures is empty".into()));
        }
        Ok(bundle)
    }

    /// The certificates the bundle carries, signing certificate first (DER); empty for a key.
    pub fn certificates(&self) -> Vec<&[u8]> {
        let material = &self.verification_material;
        if let Some(cert) = &material.certificate {
            return vec![cert.raw_bytes.0.as_slice()];
        }
        material
            .x509_certificate_chain
            .iter()
            .flat_map(|c| c.certificates.iter().map(|c| c.raw_bytes.0.as_slice()))
            .collect()
    }

    /// The DSSE envelope, or why the bundle has none.
    pub fn dsse(&self) -> Result<&Envelope, Error> {
        self.dsse_envelope
            .as_ref()
            .ok_or_else(|| Error::Malformed("the bundle signs a message, not a DSSE envelope".into()))
    }
}
