//! A Model verifying cosign keyless signatures on the bed: a ModelPack pushed with modctl, signed
//! by the outside producer `sigstoretest` (sigstore-go's test CA, cosign's writers) as a Sigstore
//! bundle referrer, is accepted under a Secret's `trusted_root.json` and `matchOIDCIdentity`, with
//! `status.verified.identity` naming the signer; another identity, an expression that does not
//! compile and a root that does not parse each stall with their reason.
//!
//! Needs the bed and `sigstoretest` in its tools (`e2e/tools/build`).

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modelpack_operator::api::Model;
use modelpack_operator::api::conditions::{ConditionStatus, STALLED, VERIFIED, find};
use serde_json::{Value, json};
use support::fixtures::{ModelFiles, modctl_push};
use support::{Bed, Operator, eventually, install_crds, namespace, run_tool, unique_suffix};

const ISSUER: &str = "^https://token\\.actions\\.githubusercontent\\.com$";

#[tokio::test]
async fn a_keyless_signed_model_is_verified_and_each_bad_trust_stalls_with_its_reason() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "verify-keyless").await;
    let _operator = Operator::start(&ns);
    let registry = &bed.referrers;
    let repo = format!("verify/keyless-{}", unique_suffix());
    let digest = modctl_push(bed, registry, &repo, "prod", &ModelFiles::new(51, &[("model.gguf", 10_000)]));
    let out = tempfile::tempdir().unwrap();
    let produced = run_tool(
        &bed.tool("sigstoretest"),
        &["-registry", &registry.host, "-repo", &repo, "-digest", &digest, "-format", "bundle", "-out"]
            .into_iter()
            .chain([out.path().to_str().unwrap()])
            .collect::<Vec<_>>(),
        &[],
        None,
    );
    let case: Value = serde_json::from_str(produced.lines().next().unwrap()).unwrap();
    let root = std::fs::read_to_string(case["root"].as_str().unwrap()).unwrap();

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for (name, data) in [("sigstore", root.as_str()), ("broken", "{\"mediaType\": 1}")] {
        let secret = json!({"metadata": {"name": name}, "stringData": {"trusted_root.json": data}});
        secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
    }
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let apply = |name: &'static str, secret: &str, subject: &str, issuer: &str| {
        let spec = json!({"repository": format!("{}/{repo}", registry.host), "ref": {"tag": "prod"}, "insecure": true,
            "interval": "10s", "verify": {"provider": "cosign", "secretRef": {"name": secret},
            "matchOIDCIdentity": [{"issuer": issuer, "subject": subject}]}});
        let obj =
            json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": spec});
        let models = models.clone();
        async move { models.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap() }
    };
    apply("signed", "sigstore", "^https://github\\.com/acme/models/", ISSUER).await;
    apply("other-identity", "sigstore", "^https://github\\.com/other/", ISSUER).await;
    apply("bad-expression", "sigstore", "(unclosed", ISSUER).await;
    apply("bad-root", "broken", ".*", ".*").await;

    let settled = |name: &'static str| {
        let models = models.clone();
        async move {
            eventually(name, Duration::from_secs(60), || async {
                let m = models.get(name).await.ok()?;
                let s = m.status.as_ref()?;
                let done = s.verified.is_some() || find(&s.conditions, STALLED).is_some();
                (s.observed_generation == m.metadata.generation && done).then_some(m)
            })
            .await
        }
    };
    let m = settled("signed").await;
    let status = m.status.unwrap();
    let verified = status.verified.expect("verified");
    assert_eq!(verified.digest, digest);
    let identity = verified.identity.unwrap_or_default();
    assert!(
        identity.starts_with("https://github.com/acme/models/") && identity.contains("githubusercontent"),
        "{identity}"
    );
    assert_eq!(find(&status.conditions, VERIFIED).unwrap().status, ConditionStatus::True);

    for (name, reason, says) in [
        ("other-identity", "SignatureRejected", "identity mismatch"),
        ("bad-expression", "InvalidTrust", "matchOIDCIdentity[0].subject"),
        ("bad-root", "InvalidSecret", "trusted_root.json"),
    ] {
        let m = settled(name).await;
        let status = m.status.unwrap();
        assert!(status.verified.is_none(), "{name}");
        let stalled = find(&status.conditions, STALLED).unwrap();
        assert_eq!(stalled.reason, reason, "{name}: {}", stalled.message);
        assert!(stalled.message.contains(says), "{name}: {}", stalled.message);
    }
}
