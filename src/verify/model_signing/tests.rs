//! `../sigstore/testdata/p256.sig` was written by `model_signing sign key` over a directory holding
//! `a.txt` ("hello\n") and `sub/w.bin` (3000 random bytes); `chain.sig` over the same directory
//! with a certificate.

use sha2::{Digest, Sha256};

use super::*;
use crate::verify::PublicKey;

const P256_SIG: &[u8] = include_bytes!("../sigstore/testdata/p256.sig");
const CHAIN_SIG: &[u8] = include_bytes!("../sigstore/testdata/chain.sig");
const P256_PUB: &[u8] = include_bytes!("../sigstore/testdata/p256.pub");
const OTHER_PUB: &[u8] = include_bytes!("../sigstore/testdata/other.pub");
const ROOT: &[u8] = include_bytes!("../sigstore/testdata/root.pem");
const A_TXT: &str = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
const W_BIN: &str = "cfff69e32605ed08aa64ede3d7e75d322e2ef553655429e1fedb4f0cd314748d";

fn layer(media: &str, hex: &str, path: &str) -> serde_json::Value {
    serde_json::json!({"mediaType": format!("application/vnd.cncf.model.{media}"), "digest": format!("sha256:{hex}"),
        "size": 1, "annotations": {"org.cncf.model.filepath": path}})
}

fn manifest(layers: Vec<serde_json::Value>) -> Manifest {
    let m = serde_json::json!({"schemaVersion": 2, "artifactType": "application/vnd.cncf.model.manifest.v1+json",
        "config": {"mediaType": "application/vnd.cncf.model.config.v1+json", "digest": format!("sha256:{}", "c".repeat(64)), "size": 2},
        "layers": layers});
    Manifest::parse(&serde_json::to_vec(&m).unwrap()).unwrap()
}

fn keys(pem: &[u8]) -> Trust {
    Trust::Keys(vec![NamedKey { name: "model.pub".into(), key: PublicKey::from_pem(pem).unwrap() }])
}

fn reason(r: Result<(Verification, Binding, Statement), Error>) -> (Rejection, String) {
    match r {
        Err(Error::Rejected { reason, detail }) => (reason, detail),
        other => panic!("{other:?}"),
    }
}

const DIGEST: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

#[test]
fn a_signed_model_binds_raw_layers_now_and_archive_files_later() {
    let model = manifest(vec![layer("doc.v1.raw", A_TXT, "a.txt"), layer("weight.v1.tar", &"e".repeat(64), "sub/")]);
    let (verification, binding, statement) = check(P256_SIG, DIGEST, &model, &keys(P256_PUB)).unwrap();
    assert_eq!(verification.identity, "model.pub");
    assert_eq!(binding, Binding { files: 2, in_archives: 1, ignored: 0 });
    // Both files as raw layers: everything bound before the pull.
    let raw = manifest(vec![layer("doc.v1.raw", A_TXT, "a.txt"), layer("weight.v1.raw", W_BIN, "sub/w.bin")]);
    assert_eq!(
        check(P256_SIG, DIGEST, &raw, &keys(P256_PUB)).unwrap().1,
        Binding { files: 2, in_archives: 0, ignored: 0 }
    );

    // The node's check of the extracted tree.
    let good =
        [Entry::File { path: "a.txt", sha256: A_TXT }, Entry::Dir, Entry::File { path: "sub/w.bin", sha256: W_BIN }];
    assert_eq!(check_tree(&statement, good).unwrap(), 2);
    let changed = [Entry::File { path: "a.txt", sha256: A_TXT }, Entry::File { path: "sub/w.bin", sha256: A_TXT }];
    assert!(check_tree(&statement, changed).unwrap_err().contains("sub/w.bin: signed sha256:"));
    let missing = [Entry::File { path: "a.txt", sha256: A_TXT }];
    assert!(check_tree(&statement, missing).unwrap_err().contains("sub/w.bin is signed but missing"));
    let extra = [
        Entry::File { path: "a.txt", sha256: A_TXT },
        Entry::File { path: "sub/w.bin", sha256: W_BIN },
        Entry::File { path: "sub/x", sha256: W_BIN },
    ];
    assert!(check_tree(&statement, extra).unwrap_err().contains("sub/x is not signed"));
    let link = [Entry::File { path: "a.txt", sha256: A_TXT }, Entry::Symlink { path: "sub/w.bin" }];
    assert!(check_tree(&statement, link).unwrap_err().contains("symlink where a file was signed"));
    // model_signing's default ignore paths (.git, …) hold files nobody signed: allowed.
    let git = [
        Entry::File { path: "a.txt", sha256: A_TXT },
        Entry::File { path: "sub/w.bin", sha256: W_BIN },
        Entry::File { path: ".git/HEAD", sha256: A_TXT },
    ];
    assert!(check_tree(&statement, git).is_ok());
}

#[test]
fn a_model_that_differs_from_the_signature_is_refused_before_the_pull() {
    let cases = [
        (
            vec![layer("doc.v1.raw", &"d".repeat(64), "a.txt"), layer("weight.v1.raw", W_BIN, "sub/w.bin")],
            "a.txt: signed",
        ),
        (vec![layer("doc.v1.raw", A_TXT, "a.txt")], "sub/w.bin is signed but no layer"),
        (
            vec![
                layer("doc.v1.raw", A_TXT, "a.txt"),
                layer("weight.v1.raw", W_BIN, "sub/w.bin"),
                layer("doc.v1.raw", A_TXT, "README.md"),
            ],
            "README.md (layer",
        ),
        (
            vec![
                layer("doc.v1.raw", A_TXT, "a.txt"),
                layer("weight.v1.raw", W_BIN, "sub/w.bin"),
                layer("code.v1.tar", A_TXT, "x.py"),
            ],
            "x.py (archive layer",
        ),
    ];
    for (layers, expected) in cases {
        let (reason, detail) = reason(check(P256_SIG, DIGEST, &manifest(layers), &keys(P256_PUB)));
        assert_eq!(reason, Rejection::DigestMismatch, "{detail}");
        assert!(detail.contains(expected), "{detail} lacks {expected}");
    }
    // A file under an ignored path may be in the ModelPack unsigned, as model_signing allows.
    let git = vec![
        layer("doc.v1.raw", A_TXT, "a.txt"),
        layer("weight.v1.raw", W_BIN, "sub/w.bin"),
        layer("doc.v1.raw", A_TXT, ".git/config"),
    ];
    let (v, binding, _) = check(P256_SIG, DIGEST, &manifest(git), &keys(P256_PUB)).unwrap();
    assert_eq!(binding.ignored, 1);
    assert!(v.warnings[0].contains("published unsigned"), "{:?}", v.warnings);
}

#[test]
fn the_trust_decides_who_may_sign() {
    let model = manifest(vec![layer("doc.v1.raw", A_TXT, "a.txt"), layer("weight.v1.raw", W_BIN, "sub/w.bin")]);
    assert_eq!(reason(check(P256_SIG, DIGEST, &model, &keys(OTHER_PUB))).0, Rejection::BadSignature);
    let roots = Trust::Roots(Cert::from_pem_bundle(ROOT).unwrap());
    let (v, _, _) = check(CHAIN_SIG, DIGEST, &model, &roots).unwrap();
    assert!(v.identity.contains("CN=model signer"), "{}", v.identity);
    // The anchors: the root certificate the chain reached, the key that verified.
    let root = &Cert::from_pem_bundle(ROOT).unwrap()[0];
    assert_eq!(v.anchor, Some(crate::verify::fingerprint(&root.der)));
    let (v, _, _) = check(P256_SIG, DIGEST, &model, &keys(P256_PUB)).unwrap();
    assert_eq!(v.anchor, Some(PublicKey::from_pem(P256_PUB).unwrap().fingerprint()));
    assert_ne!(v.anchor, Some(PublicKey::from_pem(OTHER_PUB).unwrap().fingerprint()));
    assert_eq!(reason(check(P256_SIG, DIGEST, &model, &roots)).0, Rejection::UntrustedRoot);
    // The certificate's key is P256_PUB, but a key trust does not accept a certificate bundle.
    assert_eq!(reason(check(CHAIN_SIG, DIGEST, &model, &keys(P256_PUB))).0, Rejection::BadSignature);
}

fn statement(method: &str, hash: &str, files: &[(&str, &str)], extra: serde_json::Value) -> Vec<u8> {
    let mut root = Sha256::new();
    for (_, d) in files {
        root.update(hex::decode(d).unwrap());
    }
    let mut serialization = serde_json::json!({"method": method, "hash_type": hash, "allow_symlinks": false});
    serialization.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    let resources: Vec<_> =
        files.iter().map(|(n, d)| serde_json::json!({"name": n, "algorithm": hash, "digest": d})).collect();
    serde_json::to_vec(&serde_json::json!({"_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "m", "digest": {"sha256": hex::encode(root.finalize())}}],
        "predicateType": PREDICATE_TYPE, "predicate": {"serialization": serialization, "resources": resources}}))
    .unwrap()
}

#[test]
fn serialisation_options_are_honoured_or_refused_by_name() {
    let files = [("a.txt", A_TXT), ("w", W_BIN)];
    let ok =
        Statement::parse(&statement("files", "sha256", &files, serde_json::json!({"ignore_paths": ["./docs/", "x"]})))
            .unwrap();
    assert_eq!(ok.ignore_paths, ["docs", "x"]);
    assert!(ok.ignores("docs/a") && ok.ignores("x") && !ok.ignores("xy") && !ok.ignores("docsa"));
    let shards =
        Statement::parse(&statement("shards", "sha256", &files, serde_json::json!({"shard_size": 1000}))).unwrap_err();
    assert!(shards.contains("\"shards\" (shard_size 1000)"), "{shards}");
    let blake = Statement::parse(&statement("files", "blake3", &files, serde_json::json!({}))).unwrap_err();
    assert!(blake.contains("hash_type \"blake3\""), "{blake}");
    // A statement whose list was changed after its subject was computed.
    let mut value: serde_json::Value =
        serde_json::from_slice(&statement("files", "sha256", &files, serde_json::json!({}))).unwrap();
    value["predicate"]["resources"][1]["digest"] = A_TXT.into();
    let inconsistent = Statement::parse(&serde_json::to_vec(&value).unwrap()).unwrap_err();
    assert!(inconsistent.contains("inconsistent"), "{inconsistent}");
    let escape = Statement::parse(&statement("files", "sha256", &[("../etc/passwd", A_TXT)], serde_json::json!({})))
        .unwrap_err();
    assert!(escape.contains(".."), "{escape}");
}

/// `keyless.sig`: the statement of `p256.sig` signed keyless by `e2e/tools/sigstoretest` (a
/// Fulcio-like certificate, a Rekor dsse entry with SET and inclusion proof, an RFC 3161
/// timestamp), as `model_signing sign sigstore` writes it; `keyless_root.json` is its trusted root.
mod keyless_bundles {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    use super::*;
    use crate::verify::keyless::{Identity, Matcher};
    use crate::verify::sigstore::trusted_root::TrustedRoot;

    const KEYLESS_SIG: &str = include_str!("../sigstore/testdata/keyless.sig");
    const KEYLESS_ROOT: &[u8] = include_bytes!("../sigstore/testdata/keyless_root.json");
    const SUBJECT: &str = "https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main";
    const ISSUER: &str = "https://token.actions.githubusercontent.com";

    fn keyless(subject: &str) -> Trust {
        let id = Identity { issuer: Matcher::Exact(ISSUER.into()), subject: Matcher::Exact(subject.into()) };
        Trust::Keyless(Box::new(KeylessTrust::new(TrustedRoot::parse(KEYLESS_ROOT).unwrap(), vec![id]).unwrap()))
    }

    fn model() -> Manifest {
        manifest(vec![layer("doc.v1.raw", A_TXT, "a.txt"), layer("weight.v1.tar", &"e".repeat(64), "sub/")])
    }

    fn edited(change: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
        let mut b: serde_json::Value = serde_json::from_str(KEYLESS_SIG).unwrap();
        change(&mut b);
        serde_json::to_vec(&b).unwrap()
    }

    #[test]
    fn a_keyless_signature_verifies_binds_and_names_its_signer() {
        let (verification, binding, _) = check(KEYLESS_SIG.as_bytes(), DIGEST, &model(), &keyless(SUBJECT)).unwrap();
        assert_eq!(verification.identity, format!("{SUBJECT} ({ISSUER})"));
        let fulcio = TrustedRoot::parse(KEYLESS_ROOT).unwrap().certificate_authorities[0].root().der.clone();
        assert_eq!(verification.anchor, Some(crate::verify::fingerprint(&fulcio)));
        assert_eq!(binding, Binding { files: 2, in_archives: 1, ignored: 0 });
        // Bound like any other: a model that differs is refused.
        let other =
            manifest(vec![layer("doc.v1.raw", W_BIN, "a.txt"), layer("weight.v1.tar", &"e".repeat(64), "sub/")]);
        let (r, _) = reason(check(KEYLESS_SIG.as_bytes(), DIGEST, &other, &keyless(SUBJECT)));
        assert_eq!(r, Rejection::DigestMismatch);
    }

    #[test]
    fn each_keyless_rule_refuses_by_name() {
        let sig = KEYLESS_SIG.as_bytes();
        let (r, d) = reason(check(sig, DIGEST, &model(), &keyless("https://github.com/acme/other")));
        assert_eq!(r, Rejection::IdentityMismatch, "{d}");
        // A timestamp alone proves the time to cosign, not to model_signing verify.
        let no_log = edited(|b| b["verificationMaterial"]["tlogEntries"] = serde_json::json!([]));
        let (r, d) = reason(check(&no_log, DIGEST, &model(), &keyless(SUBJECT)));
        assert_eq!(r, Rejection::NoProofOfTime, "{d}");
        // A log entry without its inclusion proof (model_signing verify refuses the bundle).
        let no_proof = edited(|b| {
            b["verificationMaterial"]["tlogEntries"][0].as_object_mut().unwrap().remove("inclusionProof");
        });
        let (r, d) = reason(check(&no_proof, DIGEST, &model(), &keyless(SUBJECT)));
        assert_eq!(r, Rejection::NoProofOfTime, "{d}");
        // The log entry's time changed after the log signed it.
        let tampered = edited(|b| {
            let t = &mut b["verificationMaterial"]["tlogEntries"][0]["integratedTime"];
            *t = serde_json::json!((t.as_str().unwrap().parse::<i64>().unwrap() - 30).to_string());
        });
        let (r, d) = reason(check(&tampered, DIGEST, &model(), &keyless(SUBJECT)));
        assert_eq!(r, Rejection::BadSignature, "{d}");
        // The signature no longer over the statement.
        let forged = edited(|b| {
            let sig = &mut b["dsseEnvelope"]["signatures"][0]["sig"];
            let mut bytes = STANDARD.decode(sig.as_str().unwrap()).unwrap();
            let last = bytes.len() - 1;
            bytes[last] ^= 1;
            *sig = serde_json::json!(STANDARD.encode(bytes));
        });
        let (r, d) = reason(check(&forged, DIGEST, &model(), &keyless(SUBJECT)));
        assert_eq!(r, Rejection::BadSignature, "{d}");
    }

    #[test]
    fn a_keyless_bundle_is_not_verified_with_another_kind_of_trust() {
        let sig = KEYLESS_SIG.as_bytes();
        assert_eq!(reason(check(sig, DIGEST, &model(), &keys(P256_PUB))).0, Rejection::BadSignature);
        let roots = Trust::Roots(Cert::from_pem_bundle(ROOT).unwrap());
        let (r, d) = reason(check(sig, DIGEST, &model(), &roots));
        assert!(r == Rejection::UntrustedRoot && d.contains("trusted_root.json"), "{d}");
        // And a key-signed bundle is not a keyless one.
        let (r, d) = reason(check(P256_SIG, DIGEST, &model(), &keyless(SUBJECT)));
        assert_eq!(r, Rejection::InvalidSignature, "{d}");
    }
}
