//! The bundles in `testdata/` were written by `model_signing sign` 1.1.1 (key mode with P-256 and
//! P-384 keys; certificate mode with a leaf issued by an intermediate issued by `root.pem`), and
//! `model_signing verify` accepts each with the key or root beside it and refuses it with
//! `other.pub` / `other-root.pem`.

use super::*;

const P256_SIG: &[u8] = include_bytes!("testdata/p256.sig");
const P384_SIG: &[u8] = include_bytes!("testdata/p384.sig");
const CHAIN_SIG: &[u8] = include_bytes!("testdata/chain.sig");
const P256_PUB: &[u8] = include_bytes!("testdata/p256.pub");
const P384_PUB: &[u8] = include_bytes!("testdata/p384.pub");
const OTHER_PUB: &[u8] = include_bytes!("testdata/other.pub");
const ROOT: &[u8] = include_bytes!("testdata/root.pem");
const OTHER_ROOT: &[u8] = include_bytes!("testdata/other-root.pem");

fn key(pem: &[u8]) -> PublicKey {
    PublicKey::from_pem(pem).unwrap()
}

fn certs(bundle: &Bundle) -> Vec<Cert> {
    bundle.certificates().into_iter().map(|der| Cert::from_der(der).unwrap()).collect()
}

fn not_before(cert: &Cert) -> i64 {
    cert.cert.tbs_certificate.validity.not_before.to_unix_duration().as_secs() as i64
}

#[test]
fn pae_is_the_dsse_specification_s_encoding() {
    // The example of the DSSE protocol document.
    assert_eq!(
        pae("http://example.com/HelloWorld", b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
    assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
}

#[test]
fn model_signing_key_bundles_verify_with_their_key_only() {
    for (sig, public) in [(P256_SIG, P256_PUB), (P384_SIG, P384_PUB)] {
        let bundle = Bundle::parse(sig).unwrap();
        assert!(bundle.certificates().is_empty());
        assert!(bundle.verification_material.public_key.as_ref().and_then(|k| k.hint.as_ref()).is_some());
        let envelope = bundle.dsse().unwrap();
        assert_eq!(envelope.payload_type, "application/vnd.in-toto+json");
        assert!(envelope.verify(&key(public)));
        assert!(!envelope.verify(&key(OTHER_PUB)));
    }
    // The P-256 signature does not verify with the P-384 key, nor a changed payload with its key.
    let mut bundle = Bundle::parse(P256_SIG).unwrap();
    assert!(!bundle.dsse().unwrap().verify(&key(P384_PUB)));
    bundle.dsse_envelope.as_mut().unwrap().payload.0[20] ^= 1;
    assert!(!bundle.dsse().unwrap().verify(&key(P256_PUB)));
}

#[test]
fn a_certificate_bundle_chains_to_its_root_and_not_to_another() {
    let bundle = Bundle::parse(CHAIN_SIG).unwrap();
    let chain = certs(&bundle);
    assert_eq!(chain.len(), 2, "signing certificate and intermediate");
    let roots = Cert::from_pem_bundle(ROOT).unwrap();
    let at = not_before(&chain[0]);
    let path = verify_chain(&chain, &roots, at).unwrap();
    assert_eq!(path.len(), 3);
    assert_eq!(path[2].der, roots[0].der);
    assert!(bundle.dsse().unwrap().verify(&chain[0].key));

    // Same subject, other key: no path.
    let others = Cert::from_pem_bundle(OTHER_ROOT).unwrap();
    assert!(matches!(verify_chain(&chain, &others, at), Err(Error::Untrusted(_))));
    // Without the intermediate the signing certificate reaches no root.
    assert!(verify_chain(&chain[..1], &roots, at).is_err());
    // Outside the validity period.
    assert!(verify_chain(&chain, &roots, at - 86_400).is_err());
    // The intermediate is a CA, not a signer.
    assert!(verify_chain(&chain[1..], &roots, at).is_err());
}

#[test]
fn malformed_bundles_are_refused_with_the_field_named() {
    let mut value: serde_json::Value = serde_json::from_slice(P256_SIG).unwrap();
    let refused = |v: &serde_json::Value| match Bundle::parse(&serde_json::to_vec(v).unwrap()) {
        Err(Error::Malformed(why)) => why,
        other => panic!("{other:?}"),
    };
    let mut old = value.clone();
    old["mediaType"] = "application/vnd.dev.sigstore.bundle+json;version=0.1".into();
    assert!(refused(&old).contains("media type"));
    let mut both = value.clone();
    both["messageSignature"] = serde_json::json!({"signature": "AAAA"});
    assert!(refused(&both).contains("both"));
    let mut none = value.clone();
    none.as_object_mut().unwrap().remove("dsseEnvelope");
    assert!(refused(&none).contains("no dsseEnvelope"));
    let mut many = value.clone();
    many["dsseEnvelope"]["signatures"] =
        serde_json::Value::Array(vec![value["dsseEnvelope"]["signatures"][0].clone(); 17]);
    assert!(refused(&many).contains("dsseEnvelope.signatures"));
    value["dsseEnvelope"]["payload"] = "not base64!".into();
    assert!(refused(&value).contains("Sigstore bundle"));
}

#[test]
fn ed25519_and_rsa_signatures_over_the_pae_verify() {
    use aws_lc_rs::encoding::{AsDer, PublicKeyX509Der};
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::rsa::KeySize;
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, RSA_PSS_SHA256, RsaKeyPair};
    use x509_cert::der::Decode;
    let spki =
        |der: &[u8]| PublicKey::from_spki(&x509_cert::spki::SubjectPublicKeyInfoOwned::from_der(der).unwrap()).unwrap();
    let message = pae("application/vnd.in-toto+json", b"{}");
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    let ed = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
    let ed_key = spki(AsDer::<PublicKeyX509Der>::as_der(ed.public_key()).unwrap().as_ref());
    assert!(verify_message(&ed_key, &message, ed.sign(&message).as_ref()));
    assert!(!verify_message(&ed_key, b"other", ed.sign(&message).as_ref()));

    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).unwrap();
    let rsa_key = spki(AsDer::<PublicKeyX509Der>::as_der(rsa.public_key()).unwrap().as_ref());
    let mut sig = vec![0; rsa.public_modulus_len()];
    rsa.sign(&RSA_PSS_SHA256, &SystemRandom::new(), &message, &mut sig).unwrap();
    assert!(verify_message(&rsa_key, &message, &sig));
    assert!(!verify_message(&ed_key, &message, &sig));
}
