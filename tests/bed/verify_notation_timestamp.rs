//! RFC 3161 timestamp countersignatures on Notary Project signatures, without the bed: the real
//! `notation` CLI signs with `--timestamp-url` against a real TSA (sigstore's timestamp-authority) and
//! a registry of the test's own (olareg), both on 127.0.0.1; `modelpack-operator verify`'s verdict
//! equals `notation verify`'s on each case. Certificates that expire do so for real: they are made
//! valid for a few seconds, used while valid, and verified after (notation refuses to sign with an
//! expired certificate or TSA, and no clock is faked).

use crate::support;

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};
use support::notary::{Chain, KeyType, Notation, attach_envelope, policy};
use support::timestamping::{LocalRegistry, Tsa, TsaChain};
use support::{Registry, craft, operator, unique_suffix};

/// Seconds the expiring certificates are valid for.
const LIFETIME: i64 = 10;
const TIMESTAMP_HEADER: &str = "io.cncf.notary.timestampSignature";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// A fresh artifact pushed to `repo`: its reference by digest.
async fn artifact(registry: &Registry, repo: &str, a: &craft::Artifact) -> String {
    let digest = craft::push(registry, repo, &format!("t{}", unique_suffix()), a).await;
    format!("{}/{repo}@{digest}", registry.host)
}

fn unique_artifact() -> craft::Artifact {
    let mut a = craft::container_image();
    a.annotations.insert("e2e.unique".into(), unique_suffix());
    a
}

/// Our verdict (the JSON report) and notation's, under the trust `notation` is configured with.
fn verdicts(notation: &Notation, reference: &str) -> (bool, Value, bool) {
    let (policy, certs) = (notation.policy_file(), notation.certs_dir());
    let args = ["verify", "--insecure", "--notation-policy", policy.to_str().unwrap()];
    let args = [&args[..], &["--notation-certs", certs.to_str().unwrap(), "-o", "json", reference]].concat();
    let (code, stdout, stderr) = operator(&args);
    assert!(code == 0 || code == 1, "verify exited {code}: {stderr}");
    let out: Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("verify output: {stdout} {stderr}"));
    (code == 0, out, notation.verifies(reference))
}

/// Both verdicts equal `expect`; returns our report.
fn side_by_side(notation: &Notation, reference: &str, expect: bool, what: &str) -> Value {
    let (ours, out, theirs) = verdicts(notation, reference);
    assert_eq!(ours, expect, "{what}: our verdict: {out}");
    assert_eq!(theirs, expect, "{what}: notation's verdict");
    out
}

fn reason(out: &Value) -> &str {
    out["reason"].as_str().unwrap_or_default()
}

/// A policy for every repository with `stores`, and `verifyTimestamp` when given.
fn trust(stores: &[&str], verify_timestamp: Option<&str>) -> Value {
    let mut p = policy(json!(["*"]), "strict", stores, &["*"]);
    if let Some(v) = verify_timestamp {
        p["trustPolicies"][0]["signatureVerification"]["verifyTimestamp"] = json!(v);
    }
    p
}

fn dn_set(dn: &str) -> std::collections::BTreeSet<String> {
    dn.split(", ").map(str::to_owned).collect()
}

#[tokio::test]
async fn timestamped_signatures_verify_like_notation_and_name_the_tsa() {
    let local = LocalRegistry::start();
    let tsa_chain = TsaChain::new("stamps", 30 * 86400);
    let tsa = Tsa::start(&tsa_chain);
    let stranger_tsa = TsaChain::new("stamps", 30 * 86400);
    let acme = Chain::new(KeyType::EcP256, "acme", true, None);
    let notation = Notation::new();
    notation.use_chain(&acme);
    let stores = |tsa_root: &str| [("ca", "acme", acme.root_pem.clone()), ("tsa", "tsa", tsa_root.to_owned())];
    let configure = |p: &Value, tsa_root: &str| {
        let s = stores(tsa_root);
        notation.trust(p, &s.iter().map(|(k, n, pem)| (*k, *n, pem.as_str())).collect::<Vec<_>>());
    };
    let with_tsa = trust(&["ca:acme", "tsa:tsa"], None);

    for format in ["jws", "cose"] {
        let reference = artifact(&local.registry, "notary/stamped", &unique_artifact()).await;
        notation.sign_timestamped(&reference, format, &tsa.url, &tsa.root_file).unwrap_or_else(|e| panic!("{e}"));
        configure(&with_tsa, &tsa_chain.root_pem);
        let out = side_by_side(&notation, &reference, true, &format!("timestamped {format}"));
        assert_eq!(dn_set(out["timestamp"]["authority"].as_str().unwrap()), dn_set(&tsa_chain.subject), "{format}");
        let time = out["timestamp"]["time"].as_str().unwrap().parse::<jiff::Timestamp>().unwrap();
        assert!((jiff::Timestamp::now() - time).get_seconds().abs() < 120, "{format}: stamped at {time}");

        // The TSA is not in the tsa trust store (another root of the same name).
        configure(&with_tsa, &stranger_tsa.root_pem);
        let out = side_by_side(&notation, &reference, false, &format!("{format}, TSA not trusted"));
        assert_eq!(reason(&out), "timestamp not verified", "{out}");
        // afterCertExpiry: the signing certificate is valid, so the timestamp is not looked at.
        configure(&trust(&["ca:acme", "tsa:tsa"], Some("afterCertExpiry")), &stranger_tsa.root_pem);
        let out = side_by_side(&notation, &reference, true, &format!("{format}, afterCertExpiry, TSA not trusted"));
        assert!(out.get("timestamp").is_none(), "an unverified timestamp is not reported: {out}");
        assert!(out["warnings"].to_string().contains("not verified"), "{out}");
    }

    // Signed without a timestamp: a policy with a tsa store (verifyTimestamp always) wants one.
    let plain = artifact(&local.registry, "notary/stamped", &unique_artifact()).await;
    notation.sign(&plain, "jws", true);
    configure(&with_tsa, &tsa_chain.root_pem);
    assert_eq!(reason(&side_by_side(&notation, &plain, false, "no timestamp, always")), "timestamp not verified");
    configure(&trust(&["ca:acme", "tsa:tsa"], Some("afterCertExpiry")), &tsa_chain.root_pem);
    side_by_side(&notation, &plain, true, "no timestamp, afterCertExpiry, valid certificate");
}

#[tokio::test]
async fn an_expired_signing_certificate_needs_a_timestamp_inside_its_validity() {
    let local = LocalRegistry::start();
    let tsa_chain = TsaChain::new("stamps", 30 * 86400);
    let tsa = Tsa::start(&tsa_chain);
    // Certificates valid for LIFETIME seconds from now: long enough to sign with on a busy
    // machine, short enough to wait for.
    let made = std::time::Instant::now();
    // A TSA whose own certificate expires soon after it stamps.
    let brief_tsa_chain = TsaChain::new("brief", LIFETIME);
    let brief_tsa = Tsa::start(&brief_tsa_chain);
    let short = Chain::new(KeyType::EcP256, "acme", false, Some(LIFETIME));
    let long = Chain::new(KeyType::EcP256, "acme", false, None);
    let (short_signer, long_signer) = (Notation::new(), Notation::new());
    short_signer.use_chain(&short);
    long_signer.use_chain(&long);

    let stamped = artifact(&local.registry, "notary/expiring", &unique_artifact()).await;
    short_signer.sign_timestamped(&stamped, "jws", &tsa.url, &tsa.root_file).unwrap_or_else(|e| panic!("{e}"));
    let unstamped = artifact(&local.registry, "notary/expiring", &unique_artifact()).await;
    short_signer.sign(&unstamped, "cose", true);
    let by_brief_tsa = artifact(&local.registry, "notary/expiring", &unique_artifact()).await;
    long_signer
        .sign_timestamped(&by_brief_tsa, "cose", &brief_tsa.url, &brief_tsa.root_file)
        .unwrap_or_else(|e| panic!("{e}"));
    let expired = made + Duration::from_secs(LIFETIME as u64 + 2);
    tokio::time::sleep(expired.saturating_duration_since(std::time::Instant::now())).await;

    let short_trust = |p: &Value, tsa_root: &str| {
        short_signer.trust(p, &[("ca", "acme", &short.root_pem), ("tsa", "tsa", tsa_root)]);
    };
    short_trust(&trust(&["ca:acme", "tsa:tsa"], None), &tsa_chain.root_pem);
    let out = side_by_side(&short_signer, &stamped, true, "expired certificate, timestamp inside its validity");
    assert_eq!(dn_set(out["timestamp"]["authority"].as_str().unwrap()), dn_set(&tsa_chain.subject));
    let out = side_by_side(&short_signer, &unstamped, false, "expired certificate, no timestamp");
    assert_eq!(reason(&out), "timestamp not verified", "{out}");
    short_trust(&trust(&["ca:acme", "tsa:tsa"], Some("afterCertExpiry")), &tsa_chain.root_pem);
    side_by_side(&short_signer, &stamped, true, "expired certificate, afterCertExpiry");
    side_by_side(&short_signer, &unstamped, false, "expired certificate, afterCertExpiry, no timestamp");
    // Without a tsa trust store no timestamp is verified: the expired certificate is refused.
    short_signer.trust(&trust(&["ca:acme"], None), &[("ca", "acme", &short.root_pem)]);
    let out = side_by_side(&short_signer, &stamped, false, "expired certificate, no tsa store");
    assert_eq!(reason(&out), "expired", "{out}");

    // The TSA's certificate expired after it stamped: the token still proves its time.
    long_signer.trust(
        &trust(&["ca:acme", "tsa:tsa"], None),
        &[("ca", "acme", &long.root_pem), ("tsa", "tsa", &brief_tsa_chain.root_pem)],
    );
    let out = side_by_side(&long_signer, &by_brief_tsa, true, "TSA certificate expired since it stamped");
    assert_eq!(dn_set(out["timestamp"]["authority"].as_str().unwrap()), dn_set(&brief_tsa_chain.subject));
}

/// The TSA stamps with one second of accuracy: a signature made in the first second of its
/// certificate's validity has a timestamp range that starts before it, which the specification
/// refuses ("entirely within the signing certificate chain's validity period").
#[tokio::test]
async fn a_timestamp_range_outside_the_certificate_validity_is_refused() {
    let local = LocalRegistry::start();
    let tsa_chain = TsaChain::new("stamps", 30 * 86400);
    let tsa = Tsa::start(&tsa_chain);
    let mut produced = 0;
    for attempt in 0..5 {
        // notBefore is the next whole second but one; signing starts just after it begins.
        let now = time::OffsetDateTime::now_utc();
        let start = now.replace_nanosecond(0).unwrap() + time::Duration::seconds(2);
        let chain = Chain::custom(
            "acme",
            1,
            |level, p| {
                if level == 0 {
                    p.not_before = start
                }
            },
            None,
        );
        let notation = Notation::new();
        notation.use_chain(&chain);
        let reference = artifact(&local.registry, "notary/early", &unique_artifact()).await;
        let wait = (start - time::OffsetDateTime::now_utc()).whole_milliseconds().max(0) as u64 + 20;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        notation.sign_timestamped(&reference, "jws", &tsa.url, &tsa.root_file).unwrap_or_else(|e| panic!("{e}"));
        notation.trust(
            &trust(&["ca:acme", "tsa:tsa"], None),
            &[("ca", "acme", &chain.root_pem), ("tsa", "tsa", &tsa_chain.root_pem)],
        );
        let (ours, out, theirs) = verdicts(&notation, &reference);
        assert_eq!(ours, theirs, "attempt {attempt}: ours {out}");
        if !theirs {
            // The case was produced (the TSA stamped within the certificate's first second).
            assert_eq!(reason(&out), "expired", "{out}");
            assert!(out["detail"].as_str().unwrap().contains("outside the validity"), "{out}");
            produced += 1;
            break;
        }
    }
    assert_eq!(produced, 1, "the machine never signed within the certificate's first second");
}

/// GETs `path` from the local registry.
async fn get(registry: &Registry, path: &str, accept: &str) -> Vec<u8> {
    let url = format!("http://{}/v2/{path}", registry.host);
    let response = reqwest::Client::new().get(&url).header("Accept", accept).send().await.unwrap();
    assert!(response.status().is_success(), "GET {url}: {}", response.status());
    response.bytes().await.unwrap().to_vec()
}

#[tokio::test]
async fn a_tampered_timestamp_token_is_refused() {
    let local = LocalRegistry::start();
    let tsa_chain = TsaChain::new("stamps", 30 * 86400);
    let tsa = Tsa::start(&tsa_chain);
    let acme = Chain::new(KeyType::EcP256, "acme", false, None);
    let notation = Notation::new();
    notation.use_chain(&acme);
    notation.trust(
        &trust(&["ca:acme", "tsa:tsa"], None),
        &[("ca", "acme", &acme.root_pem), ("tsa", "tsa", &tsa_chain.root_pem)],
    );

    // One artifact in two repositories: notation signs it in the first; the second gets the
    // same signature with its token altered.
    let a = unique_artifact();
    let signed = artifact(&local.registry, "notary/original", &a).await;
    let tampered = artifact(&local.registry, "notary/tampered", &a).await;
    let digest = signed.rsplit('@').next().unwrap();
    notation.sign_timestamped(&signed, "jws", &tsa.url, &tsa.root_file).unwrap_or_else(|e| panic!("{e}"));
    side_by_side(&notation, &signed, true, "the original");

    // The signature's envelope, through the referrers API: index → signature manifest → layer.
    let registry = &local.registry;
    let json = |bytes: Vec<u8>| serde_json::from_slice::<Value>(&bytes).unwrap();
    let index = json(get(registry, &format!("notary/original/referrers/{digest}"), OCI_INDEX).await);
    let manifest_path = format!("notary/original/manifests/{}", index["manifests"][0]["digest"].as_str().unwrap());
    let manifest = json(get(registry, &manifest_path, OCI_MANIFEST).await);
    let layer = manifest["layers"][0]["digest"].as_str().unwrap();
    let blob = get(registry, &format!("notary/original/blobs/{layer}"), "*/*").await;
    let mut envelope: Value = serde_json::from_slice(&blob).unwrap();
    let mut token = STANDARD.decode(envelope["header"][TIMESTAMP_HEADER].as_str().unwrap()).unwrap();
    // The genTime (GeneralizedTime, tag 0x18, 15 bytes) moved by a second.
    let at = token.windows(2).position(|w| w == [0x18, 0x0f]).expect("a genTime in the token") + 2 + 13;
    token[at] = if token[at] == b'9' { b'8' } else { token[at] + 1 };
    envelope["header"][TIMESTAMP_HEADER] = json!(STANDARD.encode(&token));
    attach_envelope(&tampered, "application/jose+json", envelope.to_string().as_bytes());

    let out = side_by_side(&notation, &tampered, false, "a tampered timestamp token");
    assert_eq!(reason(&out), "timestamp not verified", "{out}");
    assert!(out["detail"].as_str().unwrap().contains("messageDigest"), "{out}");
}
