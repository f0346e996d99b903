//! What the controller makes of a registry (or a tenant) that names a metadata address, of a
//! signature behind many other referrers, and of a registry that drips a layer: the first Models
//! stall with `ForbiddenAddress` before anything is sent; the signed Model stays verified through
//! its re-verification; the dripping layer's pull Job is cut off and its deployment says
//! `PullFailed` with the reason; a good Model next to them stays Ready. Needs the bed (the
//! registries are ours, on 127.0.0.1).

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams};
use modelpack_operator::api::conditions::{ConditionStatus, READY, STALLED, VERIFIED, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelStatus};
use serde_json::{Value, json};
use support::craft::sha256;
use support::fixtures::{ModelFiles, cncf_config, oras_push_cncf};
use support::notary::{Chain, KeyType, crafted_jws, policy};
use support::served::{REPO, Served, Setup};
use support::{Bed, Operator, TestNodes, ensure_namespace, eventually, install_crds, namespace, unique_suffix};

async fn apply(api: &Api<Model>, name: &str, spec: Value) {
    let obj =
        json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

async fn wait(api: &Api<Model>, name: &str, what: &str, check: impl Fn(&ModelStatus) -> bool) -> ModelStatus {
    eventually(&format!("model {name}: {what}"), Duration::from_secs(90), || async {
        let m = api.get(name).await.ok()?;
        let status = m.status?;
        (status.observed_generation == m.metadata.generation && check(&status)).then_some(status)
    })
    .await
}

/// A good Model on the bed's registry, which must be Ready whatever its neighbours do.
async fn good_model(bed: &Bed, models: &Api<Model>) {
    let repo = format!("ctl/consequences-good-{}", unique_suffix());
    let m = ModelFiles::new(15, &[("model.safetensors", 20_000)]);
    oras_push_cncf(bed, &bed.plain, &repo, "v1", &m, &cncf_config("good", &m));
    let spec = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "v1"}, "insecure": true});
    apply(models, "good", spec).await;
}

#[tokio::test]
async fn models_naming_metadata_addresses_stall_and_nothing_is_sent() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "metadata").await;
    let _operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client, &ns);
    good_model(bed, &models).await;
    // Written by a tenant: dotted, one number, hex, Alibaba's address, GCP's name.
    let hosts = ["169.254.169.254", "2852039166:80", "0xa9fea9fe:80", "100.100.100.200", "metadata.google.internal"];
    for (i, host) in hosts.iter().enumerate() {
        let spec = json!({"repository": format!("{host}/evil/model"), "ref": {"tag": "v1"}, "insecure": true});
        apply(&models, &format!("meta-{i}"), spec).await;
    }
    for (i, host) in hosts.iter().enumerate() {
        let status = wait(&models, &format!("meta-{i}"), "ForbiddenAddress", |s| {
            find(&s.conditions, READY).is_some_and(|c| c.reason == "ForbiddenAddress")
        })
        .await;
        let stalled = find(&status.conditions, STALLED).expect("Stalled");
        assert!(stalled.message.contains("metadata address; refused"), "{host}: {}", stalled.message);
    }
    wait(&models, "good", "Ready", |s| find(&s.conditions, READY).is_some_and(|c| c.status == ConditionStatus::True))
        .await;
}

#[tokio::test]
async fn a_signature_behind_150_other_referrers_keeps_its_model_verified() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "hidden-signature").await;
    let _operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    good_model(bed, &models).await;

    let chain = Chain::new(KeyType::EcP256, "acme", false, None);
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
    let mut referrers: Vec<Value> = (0..150)
        .map(|i| {
            json!({"mediaType": manifest_type, "digest": sha256(format!("sbom {i}").as_bytes()), "size": 9,
            "artifactType": "application/spdx+json"})
        })
        .collect();
    referrers.push(json!({"mediaType": manifest_type, "digest": sha256(&signature), "size": signature.len(),
        "artifactType": "application/vnd.cncf.notary.signature"}));
    let setup = Setup { referrers, page: 50, manifests: vec![signature], blobs: vec![envelope], ..Setup::default() };
    let served = Served::start(setup);

    let secrets: Api<Secret> = Api::namespaced(client, &ns);
    let doc = policy(json!(["*"]), "strict", &["ca:acme"], &["*"]).to_string();
    let put_trust = |extra: Option<String>| {
        let (secrets, doc, root) = (secrets.clone(), doc.clone(), chain.root_pem.clone());
        async move {
            let mut data = json!({"trustpolicy.json": doc, "ca.acme.pem": root});
            if let Some(pem) = extra {
                data["ca.other.pem"] = json!(pem);
            }
            let trust =
                json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "trust"}, "stringData": data});
            secrets.patch("trust", &PatchParams::apply("e2e").force(), &Patch::Apply(&trust)).await.unwrap();
        }
    };
    put_trust(None).await;
    let spec = json!({"repository": format!("{}/{REPO}", served.host), "ref": {"tag": "1.0.0"}, "insecure": true,
        "interval": "10s", "verify": {"provider": "notation", "secretRef": {"name": "trust"}}});
    apply(&models, "signed", spec).await;
    let verified = |s: &ModelStatus| find(&s.conditions, VERIFIED).is_some_and(|c| c.status == ConditionStatus::True);
    wait(&models, "signed", "Verified", verified).await;
    // New trust bytes: the digest is verified again (all four pages read) and stays verified, not
    // revoked.
    let listings = |served: &Served| served.requests("/referrers/").iter().filter(|l| !l.contains("last=")).count();
    let first = listings(&served);
    put_trust(Some(Chain::new(KeyType::EcP256, "other", false, None).root_pem)).await;
    eventually("a re-verification", Duration::from_secs(60), || async { (listings(&served) > first).then_some(()) })
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = wait(&models, "signed", "still Verified", verified).await;
    assert_eq!(status.verified.map(|v| v.digest), Some(served.digest.clone()));
    assert!(served.requests("last=150").len() >= 2, "the last page was read at each verification");
    wait(&models, "good", "Ready", |s| find(&s.conditions, READY).is_some_and(|c| c.status == ConditionStatus::True))
        .await;
}

/// The pull Job of a deployment whose registry sends the layer one byte every 2 s fails at the end
/// of its first 60 s window (the Job's defaults), and the deployment names the blob and the rate.
#[tokio::test]
async fn a_dripping_layer_fails_its_pull_job_within_a_window() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, "modelpack-system").await;
    let ns = namespace(&client, "drip").await;
    let _operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let nodes = TestNodes::create("drip", 1);
    let weights = vec![7u8; 64 << 10];
    let config = json!({"descriptor": {"name": "drip"}, "modelfs": {"type": "layers", "diffIds": [sha256(&weights)]}});
    let artifact = support::craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: support::craft::Blob::new("application/vnd.cncf.model.config.v1+json", config.to_string()),
        layers: vec![
            support::craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", weights)
                .annotate("org.cncf.model.filepath", "w.bin"),
        ],
        annotations: Default::default(),
    };
    let drip = Some((1, Duration::from_secs(2)));
    let served = Served::start(Setup { artifact: Some(artifact), drip, ..Setup::default() });
    let spec = json!({"repository": format!("{}/{REPO}", served.host), "ref": {"tag": "1.0.0"}, "insecure": true});
    apply(&models, "dripping", spec).await;
    let deployments: Api<ModelDeployment> = Api::namespaced(client, &ns);
    let spec = json!({"modelRef": {"name": "dripping"}, "nodeSelector": nodes.selector(), "pull": {"backoffLimit": 0}});
    let obj = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "serve"},
        "spec": spec});
    deployments.patch("serve", &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
    let started = std::time::Instant::now();
    let message = eventually("the pull fails", Duration::from_secs(150), || async {
        let d = deployments.get("serve").await.ok()?;
        let status = d.status?;
        (status.drift?.reason == "PullFailed").then_some(())?;
        status.nodes?.entries.into_iter().find_map(|e| e.message.filter(|m| m.contains("cut off")))
    })
    .await;
    assert!(message.contains("under the minimum of 65536 bytes/s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(150), "took {:?}", started.elapsed());
    assert!(served.requests("/blobs/").len() >= 2, "the layer was asked for");
}
