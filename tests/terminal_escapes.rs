//! Whoever pushes or signs an artifact chooses its strings: `inspect`, `verify` and `check` print
//! none of them raw, in text or JSON — no escape sequence (7- or 8-bit), no clipboard write, no
//! carriage return over an earlier line, no bidirectional override reaches the terminal. No bed
//! needed: the registry is tests/support/served.rs on 127.0.0.1.

mod support;

use serde_json::{Value, json};
use support::craft::{Artifact, Blob, sha256};
use support::notary::{Chain, KeyType, crafted_jws};
use support::operator;
use support::served::{Served, Setup};

/// Sequences a terminal acts on, each in a different field.
const CLEAR: &str = "\u{1b}[2J\u{1b}[H";
const CLIPBOARD: &str = "\u{1b}]52;c;ZWNobyBwd25lZA==\u{7}";
const CSI8: &str = "\u{9b}31m";
const OSC8: &str = "\u{9d}0;pwned\u{9c}";
const OVERWRITE: &str = "ok\rVERIFIED";
const BIDI: &str = "\u{202e}txt.exe";

fn hostile_artifact() -> Artifact {
    let weights = b"weights".to_vec();
    let config = json!({
        "descriptor": {"name": format!("m{CLEAR}"), "description": format!("d{CLIPBOARD}\nDigest: sha256:fake"),
            "authors": [format!("a{CSI8}")], "licenses": [format!("l{OSC8}")], "vendor": OVERWRITE, "title": BIDI},
        "config": {"format": format!("f{CLEAR}"), "architecture": format!("x{CSI8}")},
        "modelfs": {"type": "layers", "diffIds": [sha256(&weights)]}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", weights).annotate("org.cncf.model.filepath", "w.bin"),
        ],
        annotations: Default::default(),
    }
}

/// What a terminal would receive holds nothing it acts on (newlines end lines, nothing else):
/// C0, DEL, C1, the line separators and the bidirectional controls.
fn assert_printable(what: &str, out: &str) {
    let acts = |c: char| matches!(u32::from(c), 0..=0x1f | 0x7f..=0x9f | 0x61c | 0x200e | 0x200f | 0x2028..=0x202e | 0x2066..=0x2069);
    let bad: Vec<char> = out.chars().filter(|c| acts(*c) && *c != '\n').collect();
    assert!(bad.is_empty(), "{what}: {bad:?} in {out:?}");
}

#[test]
fn inspect_prints_no_registry_string_raw() {
    let referrers = vec![
        json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": format!("sha256:{CLEAR}"),
            "size": 1, "artifactType": format!("application/spdx+json{CLIPBOARD}"),
            "annotations": {"k": OVERWRITE}}),
        json!({"mediaType": CSI8, "digest": sha256(b"x"), "size": 1, "artifactType": BIDI}),
    ];
    let served = Served::start(Setup { artifact: Some(hostile_artifact()), referrers, ..Setup::default() });
    let reference = served.reference();
    let (code, text, stderr) = operator(&["inspect", "--insecure", &reference]);
    assert_eq!(code, 0, "{stderr}");
    assert_printable("inspect", &text);
    assert!(
        text.contains("[2J") && text.contains("52;c;ZWNobyBwd25lZA=="),
        "the text is shown, made printable: {text}"
    );
    assert!(!text.lines().any(|l| l.starts_with("Digest: sha256:fake")), "no value starts a line: {text}");
    let (code, json_text, stderr) = operator(&["inspect", "--insecure", "-o", "json", &reference]);
    assert_eq!(code, 0, "{stderr}");
    assert_printable("inspect -o json", &json_text);
    let report: Value = serde_json::from_str(&json_text).unwrap();
    assert_eq!(report["descriptor"]["title"], BIDI, "JSON keeps the values exactly");
    assert_eq!(report["referrers"][0]["annotations"]["k"], OVERWRITE);
}

#[test]
fn verify_prints_no_certificate_string_raw() {
    // The signer's organisation (in the leaf's subject, the identity `verify` prints).
    let org = format!("acme{CLIPBOARD}{CSI8}{BIDI}");
    let chain = Chain::new(KeyType::EcP256, &org, false, None);
    let probe = Served::start(Setup::default());
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let target = json!({"mediaType": manifest_type, "digest": probe.digest, "size": probe.manifest.len()});
    let envelope = crafted_jws(&chain, &target, None);
    let signature = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": manifest_type, "artifactType": "application/vnd.cncf.notary.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}"), "size": 2},
        "layers": [{"mediaType": "application/jose+json", "digest": sha256(&envelope), "size": envelope.len()}],
        "subject": target}))
    .unwrap();
    let entry = json!({"mediaType": manifest_type, "digest": sha256(&signature), "size": signature.len(),
        "artifactType": "application/vnd.cncf.notary.signature"});
    let setup = Setup { referrers: vec![entry], manifests: vec![signature], blobs: vec![envelope], ..Setup::default() };
    let served = Served::start(setup);
    assert_eq!(served.digest, probe.digest);
    for (trusted, level, verified) in
        [(&chain, "strict", true), (&Chain::new(KeyType::EcP256, "other", false, None), "strict", false)]
    {
        let dir = tempfile::tempdir().unwrap();
        let policy = json!({"version": "1.0", "trustPolicies": [{"name": "all", "registryScopes": ["*"],
            "signatureVerification": {"level": level}, "trustStores": ["ca:t"], "trustedIdentities": ["*"]}]});
        std::fs::write(dir.path().join("trustpolicy.json"), policy.to_string()).unwrap();
        std::fs::create_dir_all(dir.path().join("certs/ca/t")).unwrap();
        std::fs::write(dir.path().join("certs/ca/t/root.pem"), &trusted.root_pem).unwrap();
        let (policy, certs) = (dir.path().join("trustpolicy.json"), dir.path().join("certs"));
        let reference = served.reference();
        for output in ["text", "json"] {
            let args = [
                "verify",
                "--insecure",
                "--notation-policy",
                policy.to_str().unwrap(),
                "--notation-certs",
                certs.to_str().unwrap(),
                "-o",
                output,
                &reference,
            ];
            let (code, out, stderr) = operator(&args);
            assert_eq!(code, if verified { 0 } else { 1 }, "{output}: {out} {stderr}");
            assert_printable(&format!("verify -o {output}"), &out);
            assert_printable(&format!("verify -o {output}, stderr"), &stderr);
            if verified && output == "text" {
                assert!(out.contains("52;c;ZWNobyBwd25lZA=="), "the identity is shown, made printable: {out}");
            }
            if verified && output == "json" {
                let report: Value = serde_json::from_str(&out).unwrap();
                assert!(report["identity"].as_str().unwrap().contains(&org), "JSON keeps the identity exactly");
            }
        }
    }
}
