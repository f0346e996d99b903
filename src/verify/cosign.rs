//! cosign, key-based: the signature manifest at tag `sha256-<hex>.sig` holds one layer per
//! signature; each layer is a "simple signing" JSON payload whose signature (base64, annotation
//! `dev.cosignproject.cosign/signature`) must verify with one of the trusted public keys, and whose
//! `critical.image.docker-manifest-digest` must be the digest being verified.

use base64::Engine;
use serde::Deserialize;

use super::{Error, PublicKey, Rejection, Verification};
use crate::registry::{Registry, Repository};

const SIMPLE_SIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
const SIGNATURE_MANIFESTS: &[&str] =
    &[crate::modelpack::OCI_MANIFEST, "application/vnd.docker.distribution.manifest.v2+json"];
const MAX_PAYLOAD: usize = 64 << 10;
const MAX_SIGNATURES: usize = 64;

/// A trusted key and the name it is reported by (e.g. the Secret key or file name).
#[derive(Clone, Debug)]
pub struct NamedKey {
    pub name: String,
    pub key: PublicKey,
}

#[derive(Deserialize)]
struct SignatureManifest {
    #[serde(default)]
    layers: Vec<Layer>,
}

/// A descriptor of a signature manifest (also read by keyless verification's `sha256-<hex>.sig` form).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Layer {
    pub(super) media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) annotations: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct Payload {
    critical: Critical,
}

#[derive(Deserialize)]
struct Critical {
    image: Image,
    #[serde(rename = "type")]
    type_: String,
}

#[derive(Deserialize)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// Verifies `repo@digest` against `keys` (any one may verify).
pub async fn verify(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    keys: &[NamedKey],
) -> Result<Verification, Error> {
    let hex = crate::modelpack::sha256_hex(digest)
        .ok_or_else(|| Error::rejected(Rejection::InvalidSignature, format!("{digest} is not a sha256 digest")))?;
    let tag = format!("sha256-{hex}.sig");
    let Some((bytes, signature_digest)) = registry.manifest_for_tag(repo, &tag, SIGNATURE_MANIFESTS).await? else {
        return Err(Error::rejected(
            Rejection::NoSignature,
            format!("no cosign signature ({repo}:{tag}) for {digest}"),
        ));
    };
    let manifest: SignatureManifest = serde_json::from_slice(&bytes)
        .map_err(|e| Error::rejected(Rejection::InvalidSignature, format!("signature manifest {repo}:{tag}: {e}")))?;
    let mut payloads = Vec::new();
    for layer in manifest.layers.iter().filter(|l| l.media_type == SIMPLE_SIGNING).take(MAX_SIGNATURES) {
        let Some(signature) = layer.annotations.get(SIGNATURE_ANNOTATION) else { continue };
        let payload = registry.small_blob(repo, &layer.digest, MAX_PAYLOAD).await?;
        payloads.push((payload, signature.clone()));
    }
    check(&payloads, digest, keys).map(|key| Verification {
        provider: "cosign",
        digest: digest.to_owned(),
        identity: key.name.clone(),
        signature_digest,
        warnings: Vec::new(),
        enforced: true,
        timestamp: None,
        files: None,
        anchor: Some(key.key.fingerprint()),
    })
}

/// The digest a simple-signing payload names (also read by keyless verification).
pub(crate) fn signed_digest(payload: &[u8]) -> Result<String, String> {
    let parsed: Payload = serde_json::from_slice(payload).map_err(|e| format!("signed payload: {e}"))?;
    if parsed.critical.type_ != "cosign container image signature" {
        return Err(format!("signed payload has type {:?}", parsed.critical.type_));
    }
    Ok(parsed.critical.image.docker_manifest_digest)
}

/// The pure part: which (payload, base64 signature) verifies with which key, for `digest`.
fn check<'k>(payloads: &[(Vec<u8>, String)], digest: &str, keys: &'k [NamedKey]) -> Result<&'k NamedKey, Error> {
    if payloads.is_empty() {
        return Err(Error::rejected(
            Rejection::NoSignature,
            format!("the cosign signature manifest for {digest} holds no signature"),
        ));
    }
    let mut signed_other = None;
    for (payload, signature) in payloads {
        let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else { continue };
        let Some(key) = keys.iter().find(|k| k.key.verify(k.key.cosign_algorithm(), payload, &sig)) else { continue };
        // Only a payload whose signature verified is worth reading.
        let parsed: Payload = serde_json::from_slice(payload)
            .map_err(|e| Error::rejected(Rejection::InvalidSignature, format!("signed payload: {e}")))?;
        if parsed.critical.type_ != "cosign container image signature" {
            return Err(Error::rejected(
                Rejection::InvalidSignature,
                format!("signed payload has type {:?}", parsed.critical.type_),
            ));
        }
        if parsed.critical.image.docker_manifest_digest == digest {
            return Ok(key);
        }
        signed_other = Some(parsed.critical.image.docker_manifest_digest);
    }
    Err(match signed_other {
        Some(other) => Error::rejected(
            Rejection::DigestMismatch,
            format!("the signature verifies with a trusted key but was made for {other}, not {digest}"),
        ),
        None => Error::rejected(
            Rejection::BadSignature,
            format!(
                "none of the {} signature(s) of {digest} verifies with the {} trusted key(s)",
                payloads.len(),
                keys.len()
            ),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn key_pair() -> (EcdsaKeyPair, NamedKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let spki =
            aws_lc_rs::encoding::AsDer::<aws_lc_rs::encoding::PublicKeyX509Der>::as_der(pair.public_key()).unwrap();
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki.as_ref()).unwrap();
        let named = NamedKey { name: "cosign.pub".into(), key: PublicKey::from_spki(&spki).unwrap() };
        (pair, named)
    }

    fn signed(pair: &EcdsaKeyPair, digest: &str) -> (Vec<u8>, String) {
        let payload = serde_json::json!({"critical": {"identity": {"docker-reference": "r/m"},
            "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}, "optional": null});
        let payload = serde_json::to_vec(&payload).unwrap();
        let sig = pair.sign(&SystemRandom::new(), &payload).unwrap();
        (payload, base64::engine::general_purpose::STANDARD.encode(sig.as_ref()))
    }

    use x509_cert::der::Decode;

    fn named(spki_der: &[u8]) -> NamedKey {
        let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(spki_der).unwrap();
        NamedKey { name: "k.pub".into(), key: PublicKey::from_spki(&spki).unwrap() }
    }

    fn payload(digest: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"critical": {"identity": {"docker-reference": "r/m"},
            "image": {"docker-manifest-digest": digest}, "type": "cosign container image signature"}}))
        .unwrap()
    }

    #[test]
    fn p384_rsa_and_ed25519_keys_verify_the_way_cosign_signs_with_them() {
        use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
        use aws_lc_rs::rsa::KeySize;
        use aws_lc_rs::signature::{ECDSA_P384_SHA384_ASN1_SIGNING, Ed25519KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
        let digest = format!("sha256:{}", "c".repeat(64));
        let body = payload(&digest);
        let b64 = |sig: &[u8]| base64::engine::general_purpose::STANDARD.encode(sig);
        let rng = SystemRandom::new();

        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, &rng).unwrap();
        let p384 = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let key = named(AsDer::<PublicKeyX509Der>::as_der(p384.public_key()).unwrap().as_ref());
        assert_eq!(key.key.kind, crate::verify::KeyKind::EcP384);
        let sig = p384.sign(&rng, &body).unwrap();
        assert!(check(&[(body.clone(), b64(sig.as_ref()))], &digest, &[key]).is_ok(), "P-384");

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
        let key = named(AsDer::<PublicKeyX509Der>::as_der(rsa.public_key()).unwrap().as_ref());
        let mut sig = vec![0; rsa.public_modulus_len()];
        rsa.sign(&RSA_PKCS1_SHA256, &rng, &body, &mut sig).unwrap();
        assert!(check(&[(body.clone(), b64(&sig))], &digest, std::slice::from_ref(&key)).is_ok(), "RSA");
        sig[0] ^= 1;
        assert!(check(&[(body.clone(), b64(&sig))], &digest, &[key]).is_err(), "a damaged RSA signature");

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let key = named(AsDer::<PublicKeyX509Der>::as_der(ed.public_key()).unwrap().as_ref());
        assert_eq!(key.key.kind, crate::verify::KeyKind::Ed25519);
        assert!(check(&[(body.clone(), b64(ed.sign(&body).as_ref()))], &digest, &[key]).is_ok(), "Ed25519");
    }

    #[test]
    fn each_failure_has_its_reason() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let other = format!("sha256:{}", "b".repeat(64));
        let (pair, key) = key_pair();
        let (_, stranger) = key_pair();
        assert_eq!(check(&[signed(&pair, &digest)], &digest, std::slice::from_ref(&key)).unwrap().name, "cosign.pub");
        let reason = |r: Result<&NamedKey, Error>| match r {
            Err(Error::Rejected { reason, .. }) => reason,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            reason(check(&[signed(&pair, &digest)], &digest, std::slice::from_ref(&stranger))),
            Rejection::BadSignature
        );
        assert_eq!(
            reason(check(&[signed(&pair, &other)], &digest, std::slice::from_ref(&key))),
            Rejection::DigestMismatch
        );
        let (mut payload, sig) = signed(&pair, &digest);
        payload[10] ^= 1;
        assert_eq!(reason(check(&[(payload, sig)], &digest, std::slice::from_ref(&key))), Rejection::BadSignature);
        assert_eq!(reason(check(&[], &digest, std::slice::from_ref(&key))), Rejection::NoSignature);
        // Any key may verify.
        assert!(check(&[signed(&pair, &digest)], &digest, &[stranger, key]).is_ok());
    }
}
