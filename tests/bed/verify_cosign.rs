//! cosign verification against signatures made by the real `cosign` CLI: `modelpack-operator
//! verify` gives the verdict `cosign verify` gives for the same keys and artifact (each failure class
//! with its reason), and a Model with `verify` accepts only signed digests.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modelpack_operator::api::Model;
use modelpack_operator::api::conditions::{ConditionStatus, STALLED, VERIFIED, find};
use serde_json::{Value, json};
use support::fixtures::{CosignKey, ModelFiles, cosign_verifies, modctl_push};
use support::kstatus::{self, KStatus};
use support::{Bed, Operator, eventually, install_crds, namespace, operator, run_tool, unique_suffix};

fn ours(reference: &str, keys: &[&CosignKey]) -> (i32, Value, String) {
    let mut args = vec!["verify".to_owned(), "--insecure".to_owned(), "-o".to_owned(), "json".to_owned()];
    for k in keys {
        args.extend(["--cosign-key".to_owned(), k.public_key().display().to_string()]);
    }
    args.push(reference.to_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = operator(&args);
    (code, serde_json::from_str(&stdout).unwrap_or(Value::Null), stderr)
}

/// Our verdict equals cosign's, and is `expect`; returns our JSON.
fn side_by_side(reference: &str, keys: &[&CosignKey], expect: bool) -> Value {
    let (code, out, stderr) = ours(reference, keys);
    assert_eq!(code == 0, expect, "our verdict on {reference}: {out} {stderr}");
    assert_eq!(cosign_verifies(reference, keys), expect, "cosign's verdict on {reference}");
    assert_eq!(out["verified"], expect);
    out
}

#[tokio::test]
async fn verdicts_match_cosign_verify_for_each_failure_class() {
    let bed = Bed::get();
    let repo = format!("verify/cosign-{}", unique_suffix());
    let v1 = modctl_push(bed, &bed.plain, &repo, "v1", &ModelFiles::new(31, &[("model.gguf", 20_000)]));
    let v2 = modctl_push(bed, &bed.plain, &repo, "v2", &ModelFiles::new(32, &[("model.gguf", 20_000)]));
    let (a, b) = (CosignKey::generate(), CosignKey::generate());
    let at = |d: &str| format!("{}/{repo}@{d}", bed.plain.host);
    a.sign(&at(&v1));

    let out = side_by_side(&at(&v1), &[&a], true);
    assert_eq!((out["digest"].as_str(), out["identity"].as_str()), (Some(v1.as_str()), Some("cosign.pub")));
    assert!(out["signatureDigest"].as_str().unwrap().starts_with("sha256:"));
    let anchor = crate::support::openssl_fingerprint(&["pkey", "-pubin", "-in"], &a.public_key());
    assert_eq!(out["anchor"], anchor.as_str(), "the key's SubjectPublicKeyInfo, as openssl sees it");
    // By tag too, and with several keys of which one verifies.
    side_by_side(&format!("{}/{repo}:v1", bed.plain.host), &[&b, &a], true);

    // Another key.
    assert_eq!(side_by_side(&at(&v1), &[&b], false)["reason"], "bad signature");
    // Unsigned.
    assert_eq!(side_by_side(&at(&v2), &[&a], false)["reason"], "no signature found");
    // A valid signature of v1 presented as v2's (what tampering with the artifact after signing
    // amounts to: the content, hence the digest, is no longer the one signed).
    let v1_sig = format!("{}/{repo}:sha256-{}.sig", bed.plain.host, &v1[7..]);
    let v2_sig = format!("{}/{repo}:sha256-{}.sig", bed.plain.host, &v2[7..]);
    run_tool(&bed.tool("crane"), &["copy", "--insecure", &v1_sig, &v2_sig], &[], None);
    assert_eq!(side_by_side(&at(&v2), &[&a], false)["reason"], "digest mismatch");

    // A key file that is not a key is a usage-level failure with the file named, not a verdict.
    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(bad.path(), "not a key").unwrap();
    let (code, _, stderr) = operator(&["verify", "--insecure", "--cosign-key", bad.path().to_str().unwrap(), &at(&v1)]);
    assert_eq!(code, i32::from(modelpack_operator::exit::Exit::Usage.code()));
    assert!(stderr.contains(bad.path().to_str().unwrap()), "{stderr}");
    let (code, _, _) = operator(&["verify", "--insecure", &at(&v1)]);
    assert_eq!(code, 2, "no keys and no policy is a usage error");
}

#[tokio::test]
async fn a_model_accepts_only_signed_digests_and_keeps_the_last_verified_one() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "verify-model").await;
    let _operator = Operator::start(&ns);
    let repo = format!("verify/model-{}", unique_suffix());
    let at = |d: &str| format!("{}/{repo}@{d}", bed.plain.host);
    let key = CosignKey::generate();
    let v1 = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(41, &[("model.gguf", 10_000)]));
    key.sign(&at(&v1));

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let trust = json!({"metadata": {"name": "keys"}, "stringData": {"release.pub": key.public_pem()}});
    secrets.create(&PostParams::default(), &serde_json::from_value(trust).unwrap()).await.unwrap();
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "prod"}, "insecure": true,
        "interval": "10s", "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}});
    let obj = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": "m"}, "spec": spec});
    models.patch("m", &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();

    let wait = |what: &'static str, check: Box<dyn Fn(&Model) -> bool>| {
        let models = models.clone();
        async move {
            eventually(what, Duration::from_secs(45), || async {
                let m = models.get("m").await.ok()?;
                (m.status.as_ref()?.observed_generation == m.metadata.generation && check(&m)).then_some(m)
            })
            .await
        }
    };
    let verified_digest = |m: &Model| m.status.as_ref().and_then(|s| s.verified.as_ref()).map(|v| v.digest.clone());
    let v1_c = v1.clone();
    let m = wait("v1 verified", Box::new(move |m| verified_digest(m).as_deref() == Some(v1_c.as_str()))).await;
    let status = m.status.clone().unwrap();
    let verified = status.verified.clone().unwrap();
    assert_eq!(verified.identity.as_deref(), Some("release.pub"));
    assert_eq!(find(&status.conditions, VERIFIED).unwrap().status, ConditionStatus::True);
    assert_eq!(kstatus::of(&m), KStatus::Current);

    // The tag moves to an unsigned artifact: rejected with the cause; the verified digest stays.
    let v2 = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(42, &[("model.gguf", 10_000)]));
    let v2_c = v2.clone();
    let m = wait(
        "v2 rejected",
        Box::new(move |m| {
            let s = m.status.as_ref().unwrap();
            s.resolved.as_ref().is_some_and(|r| r.digest == v2_c) && find(&s.conditions, STALLED).is_some()
        }),
    )
    .await;
    let status = m.status.clone().unwrap();
    let stalled = find(&status.conditions, STALLED).unwrap();
    assert_eq!(stalled.reason, "SignatureRejected");
    assert!(stalled.message.contains("no signature found"), "{}", stalled.message);
    assert_eq!(find(&status.conditions, VERIFIED).unwrap().status, ConditionStatus::False);
    assert_eq!(verified_digest(&m).as_deref(), Some(v1.as_str()), "the last verified digest stays");
    assert_eq!(kstatus::of(&m), KStatus::Failed);

    // Signed after the push: accepted at the next interval.
    key.sign(&at(&v2));
    let v2_c = v2.clone();
    let m = wait("v2 verified", Box::new(move |m| verified_digest(m).as_deref() == Some(v2_c.as_str()))).await;
    assert!(find(&m.status.unwrap().conditions, STALLED).is_none());
}
