//! The pure checks on one bundle `sigstoretest` wrote (`cosign sign --new-bundle-format`'s form:
//! a Rekor entry with SET and inclusion proof, and an RFC 3161 timestamp), each proof broken in
//! turn. The verdicts side by side with cosign are in tests/bed/verify_keyless.rs.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::*;

const BUNDLE: &str = include_str!("testdata/valid.bundle.json");
const ROOT: &[u8] = include_bytes!("testdata/trusted_root.json");
const DIGEST: &str = include_str!("testdata/valid.digest");
const SUBJECT: &str = "https://github.com/acme/models/.github/workflows/release.yml@refs/heads/main";
const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn trust() -> KeylessTrust {
    let id = Identity { issuer: Matcher::Exact(ISSUER.into()), subject: Matcher::Exact(SUBJECT.into()) };
    KeylessTrust::new(TrustedRoot::parse(ROOT).unwrap(), vec![id]).unwrap()
}

fn verdict(bundle: &Value) -> Result<String, (Rejection, String)> {
    let candidate = storage::from_bundle(bundle.to_string().as_bytes(), "sha256:sig".into())
        .map_err(|e| (Rejection::InvalidSignature, e.to_string()))?;
    check(&candidate, DIGEST.trim(), &trust()).map(|s| s.identity)
}

fn bundle() -> Value {
    serde_json::from_str(BUNDLE).unwrap()
}

fn reason(r: Result<String, (Rejection, String)>) -> Rejection {
    r.expect_err("should be refused").0
}

/// Replaces the base64 bytes at `pointer` with `change(bytes)`.
fn edit(b: &mut Value, pointer: &str, change: impl FnOnce(&mut Vec<u8>)) {
    let field = b.pointer_mut(pointer).unwrap();
    let mut bytes = STANDARD.decode(field.as_str().unwrap()).unwrap();
    change(&mut bytes);
    *field = Value::String(STANDARD.encode(bytes));
}

const ENTRY: &str = "/verificationMaterial/tlogEntries/0";

#[test]
fn the_bundle_passes_and_names_its_signer() {
    assert_eq!(verdict(&bundle()).unwrap(), format!("{SUBJECT} ({ISSUER})"));
    let other = format!("sha256:{}", "0".repeat(64));
    let candidate = storage::from_bundle(BUNDLE.as_bytes(), "sha256:sig".into()).unwrap();
    assert_eq!(check(&candidate, &other, &trust()).unwrap_err().0, Rejection::DigestMismatch);
}

#[test]
fn each_time_proof_alone_suffices_and_none_is_refused() {
    let without = |pointers: &[&str]| {
        let mut b = bundle();
        for p in pointers {
            let (parent, key) = p.rsplit_once('/').unwrap();
            b.pointer_mut(parent).unwrap().as_object_mut().unwrap().remove(key);
        }
        b
    };
    let tsa = "/verificationMaterial/timestampVerificationData";
    let promise = &format!("{ENTRY}/inclusionPromise");
    assert!(verdict(&without(&[tsa])).is_ok(), "the SET alone");
    assert!(verdict(&without(&[promise])).is_ok(), "the timestamp alone (the proof gives no time)");
    assert_eq!(reason(verdict(&without(&[tsa, promise]))), Rejection::NoProofOfTime);
    let mut b = without(&[tsa]);
    b.pointer_mut("/verificationMaterial").unwrap().as_object_mut().unwrap().remove("tlogEntries");
    assert_eq!(reason(verdict(&b)), Rejection::NoProofOfTime);
}

#[test]
fn a_tampered_log_entry_is_refused() {
    type Change = fn(&mut Vec<u8>);
    let tampered: [(&str, Change); 4] = [
        ("inclusionPromise/signedEntryTimestamp", |b| b[10] ^= 1),
        ("inclusionProof/hashes/0", |b| b[0] ^= 1),
        ("inclusionProof/rootHash", |b| b[0] ^= 1),
        ("canonicalizedBody", |b| b.insert(1, b' ')),
    ];
    for (field, change) in tampered {
        let mut b = bundle();
        edit(&mut b, &format!("{ENTRY}/{field}"), change);
        assert_eq!(reason(verdict(&b)), Rejection::BadSignature, "{field}");
    }
    // The checkpoint's signature, and a later integrated time than the one signed.
    let mut b = bundle();
    let note = b.pointer_mut(&format!("{ENTRY}/inclusionProof/checkpoint/envelope")).unwrap();
    *note = Value::String(note.as_str().unwrap().replacen("rekor.test", "rekor.tesT", 1));
    assert_eq!(reason(verdict(&b)), Rejection::BadSignature, "checkpoint text");
    let mut b = bundle();
    let time = b.pointer_mut(&format!("{ENTRY}/integratedTime")).unwrap();
    *time = Value::String((time.as_str().unwrap().parse::<i64>().unwrap() + 1).to_string());
    assert_eq!(reason(verdict(&b)), Rejection::BadSignature, "integrated time");
}

#[test]
fn a_timestamp_of_other_data_or_by_another_authority_proves_nothing() {
    let mut b = bundle();
    b.pointer_mut(ENTRY).unwrap().as_object_mut().unwrap().remove("inclusionPromise");
    edit(&mut b, "/verificationMaterial/timestampVerificationData/rfc3161Timestamps/0/signedTimestamp", |t| {
        let last = t.len() - 1;
        t[last] ^= 1; // the token's signature
    });
    assert_eq!(reason(verdict(&b)), Rejection::NoProofOfTime);
}

#[test]
fn a_signature_or_identity_that_does_not_match_is_refused() {
    let mut b = bundle();
    edit(&mut b, "/dsseEnvelope/signatures/0/sig", |s| s[8] ^= 1);
    assert_eq!(reason(verdict(&b)), Rejection::BadSignature);
    let candidate = storage::from_bundle(BUNDLE.as_bytes(), "sha256:sig".into()).unwrap();
    let mut other = trust();
    other.identities =
        vec![Identity { issuer: Matcher::Exact(ISSUER.into()), subject: Matcher::regexp("^https://gitlab").unwrap() }];
    assert_eq!(check(&candidate, DIGEST.trim(), &other).unwrap_err().0, Rejection::IdentityMismatch);
}

#[test]
fn the_certificate_must_embed_an_sct_of_a_ct_log_of_the_root() {
    let candidate = storage::from_bundle(BUNDLE.as_bytes(), "sha256:sig".into()).unwrap();
    let with = |ctlogs: Value| {
        let mut root: Value = serde_json::from_slice(ROOT).unwrap();
        root["ctlogs"] = ctlogs;
        let root = TrustedRoot::parse(root.to_string().as_bytes()).unwrap();
        check(&candidate, DIGEST.trim(), &KeylessTrust { root, ..trust() }).map(|s| s.identity)
    };
    let root: Value = serde_json::from_slice(ROOT).unwrap();
    assert!(with(root["ctlogs"].clone()).is_ok());
    // Another log's key under the CT log's id, then no CT log at all (nothing to check).
    let mut other = root["ctlogs"].clone();
    other[0]["publicKey"] = root["tlogs"][0]["publicKey"].clone();
    assert_eq!(reason(with(other)), Rejection::UntrustedRoot);
    assert!(with(Value::Array(Vec::new())).is_ok());
}

#[test]
fn malformed_bundles_and_roots_are_named() {
    for doc in ["{}", "[]", "not json", &BUNDLE.replace("dsseEnvelope", "other")] {
        let err = storage::from_bundle(doc.as_bytes(), "sha256:sig".into()).err().expect(doc);
        assert!(matches!(err, Error::Rejected { reason: Rejection::InvalidSignature, .. }), "{err}");
    }
    assert!(matches!(KeylessTrust::new(TrustedRoot::parse(ROOT).unwrap(), vec![]), Err(Error::InvalidTrust(_))));
}
