//! Public keys (X.509 SubjectPublicKeyInfo) and signature checks through aws-lc-rs.

use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use x509_cert::der::{DecodePem, Encode, oid::ObjectIdentifier};
use x509_cert::spki::SubjectPublicKeyInfoOwned;

use super::Error;

const RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const EC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");
const P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const P521: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.35");

/// The kind of a public key, which decides the signature algorithms it can check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    EcP521,
    Ed25519,
}

/// A public key: its SubjectPublicKeyInfo DER and kind.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub kind: KeyKind,
    spki_der: Vec<u8>,
}

impl PublicKey {
    /// [`super::fingerprint`] of the key's SubjectPublicKeyInfo.
    pub fn fingerprint(&self) -> String {
        super::fingerprint(&self.spki_der)
    }

    pub fn from_spki(spki: &SubjectPublicKeyInfoOwned) -> Result<PublicKey, Error> {
        let der = spki.to_der().map_err(|e| Error::InvalidKey(e.to_string()))?;
        let kind = match spki.algorithm.oid {
            // Sizes below 2048 bits are refused by the verification algorithms themselves.
            RSA => KeyKind::Rsa,
            EC => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
                    .ok_or_else(|| Error::InvalidKey("EC key without a named curve".into()))?;
                match curve {
                    P256 => KeyKind::EcP256,
                    P384 => KeyKind::EcP384,
                    P521 => KeyKind::EcP521,
                    other => return Err(Error::InvalidKey(format!("unsupported EC curve {other}"))),
                }
            }
            ED25519 => KeyKind::Ed25519,
            other => return Err(Error::InvalidKey(format!("unsupported key algorithm {other}"))),
        };
        Ok(PublicKey { kind, spki_der: der })
    }

    /// A `-----BEGIN PUBLIC KEY-----` PEM (what `cosign generate-key-pair` and openssl write).
    pub fn from_pem(pem: &[u8]) -> Result<PublicKey, Error> {
        let text = std::str::from_utf8(pem).map_err(|_| Error::InvalidKey("not PEM text".into()))?;
        let spki = SubjectPublicKeyInfoOwned::from_pem(text.trim()).map_err(|e| Error::InvalidKey(e.to_string()))?;
        PublicKey::from_spki(&spki)
    }

    /// Checks `signature` over `message` with `algorithm`.
    pub fn verify(&self, algorithm: &'static dyn VerificationAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        UnparsedPublicKey::new(algorithm, &self.spki_der).verify(message, sig).is_ok()
    }

    /// What cosign signs with this kind of key: ECDSA (ASN.1 signatures) with the curve's hash, RSA
    /// PKCS#1 v1.5 with SHA-256, Ed25519.
    pub fn cosign_algorithm(&self) -> &'static dyn VerificationAlgorithm {
        match self.kind {
            KeyKind::Rsa => &signature::RSA_PKCS1_2048_8192_SHA256,
            KeyKind::EcP256 => &signature::ECDSA_P256_SHA256_ASN1,
            KeyKind::EcP384 => &signature::ECDSA_P384_SHA384_ASN1,
            KeyKind::EcP521 => &signature::ECDSA_P521_SHA512_ASN1,
            KeyKind::Ed25519 => &signature::ED25519,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // An ECDSA P-256 key pair made with `openssl ecparam -name prime256v1 -genkey`.
    const P256_PUB: &str = "-----BEGIN PUBLIC KEY-----
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEfiSpxxFU9yRw9VQsga5dBjekmZcM
zitVKBfcZETVq/ISlzeUdsXV3t/MK0cdbs0S+3x6ueCbDWFbtsFHFCDgmw==
-----END PUBLIC KEY-----";

    #[test]
    fn key_kinds_are_recognised_and_garbage_refused() {
        let key = PublicKey::from_pem(P256_PUB.as_bytes()).unwrap();
        assert_eq!(key.kind, KeyKind::EcP256);
        assert!(!key.verify(key.cosign_algorithm(), b"message", b"not a signature"));
        assert!(matches!(PublicKey::from_pem(b"hello"), Err(Error::InvalidKey(_))));
        let truncated = P256_PUB.replace("zitVKBfc", "");
        assert!(PublicKey::from_pem(truncated.as_bytes()).is_err());
    }
}
