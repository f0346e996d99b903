//! OpenSSF model signing through the whole operator, on the bed: a Model with
//! `verify.provider: modelSigning` verifies a `model_signing sign` bundle attached with `oras attach`,
//! reports the signer and the files bound, its deployment's pull Job gets `--model-signature`, and
//! `model_signing verify` accepts the directory the node publishes. Then the tag moves to a ModelPack
//! whose raw layer is unchanged but whose archive holds other bytes, with the same signature
//! attached: it verifies before the pull (the archive's files are known only once extracted), and
//! the node refuses to publish it; the deployment keeps v1.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modelpack_operator::api::conditions::{COMPLIANT, ConditionStatus, READY, Reason, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus, ModelPolicy, NodePhase};
use serde_json::json;
use support::{
    Bed, Operator, TestNodes, apply, craft, ensure_namespace, eventually, install_crds, namespace, unique_suffix,
};

const JOBS_NAMESPACE: &str = "modelpack-system";
const CACHE: &str = "/var/lib/modelpack";
const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";

fn model_signing() -> PathBuf {
    let root = std::env::var_os("MODELPACK_TOOLS_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/modelpack-operator/tools")
    });
    root.join("python/bin/model_signing")
}

fn must(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A raw `model.safetensors` and a `tokenizer/` directory archive holding `vocab`.
fn artifact(weights: &[u8], vocab: &[u8]) -> craft::Artifact {
    let layers = vec![
        craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", weights.to_vec())
            .annotate("org.cncf.model.filepath", "model.safetensors"),
        craft::Blob::new(
            "application/vnd.cncf.model.weight.config.v1.tar",
            craft::tar_of(&[("tokenizer/vocab.txt", vocab)]),
        )
        .annotate("org.cncf.model.filepath", "tokenizer/"),
    ];
    let config = json!({"descriptor": {"name": "signed"}, "modelfs": {"type": "layers",
        "diffIds": layers.iter().map(|l| craft::sha256(&l.data)).collect::<Vec<_>>()}});
    craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers,
        annotations: BTreeMap::new(),
    }
}

fn attach(bed: &Bed, reference: &str, bundle: &Path) {
    must(
        Command::new(bed.tool("oras"))
            .current_dir(bundle.parent().unwrap())
            .args(["attach", "--plain-http", "--artifact-type", BUNDLE, "--annotation"])
            .arg("dev.sigstore.bundle.predicateType=https://model_signing/signature/v1.0")
            .arg(reference)
            .arg(format!("{}:{BUNDLE}", bundle.file_name().unwrap().to_string_lossy())),
    );
}

#[tokio::test]
async fn a_signed_model_reaches_the_node_as_signed_and_an_altered_archive_does_not() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "model-signing").await;
    let _operator = Operator::start(&ns);
    let nodes = TestNodes::create("msign", 1);
    let node = nodes.names[0].clone();
    let repo = format!("msign/model-{}", unique_suffix());
    let repository = format!("{}/{repo}", bed.plain.host);

    // The model directory, signed by model_signing with an openssl key.
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("model");
    std::fs::create_dir_all(dir.join("tokenizer")).unwrap();
    let (weights, vocab) = (b"safetensors bytes".to_vec(), b"a\nb\n".to_vec());
    std::fs::write(dir.join("model.safetensors"), &weights).unwrap();
    std::fs::write(dir.join("tokenizer/vocab.txt"), &vocab).unwrap();
    let ossl = |args: &[&str]| must(Command::new("openssl").args(args).current_dir(work.path()));
    ossl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "signer.key"]);
    ossl(&["ec", "-in", "signer.key", "-pubout", "-out", "signer.pub"]);
    let sig = work.path().join("model.sig");
    must(
        Command::new(model_signing())
            .args(["sign", "key", "--private_key"])
            .arg(work.path().join("signer.key"))
            .arg("--signature")
            .arg(&sig)
            .arg(&dir),
    );

    let v1 = craft::push(&bed.plain, &repo, "prod", &artifact(&weights, &vocab)).await;
    attach(bed, &format!("{repository}@{v1}"), &sig);

    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let public = std::fs::read_to_string(work.path().join("signer.pub")).unwrap();
    let trust = json!({"metadata": {"name": "signers"}, "stringData": {"release.pub": public}});
    secrets.create(&PostParams::default(), &serde_json::from_value(trust).unwrap()).await.unwrap();
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "10s",
        "verify": {"provider": "modelSigning", "secretRef": {"name": "signers"}}});
    let obj =
        json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": "llm"}, "spec": spec});
    models.patch("llm", &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
    let v1_c = v1.clone();
    let verified = eventually("v1 verified", Duration::from_secs(60), || async {
        let verified = models.get("llm").await.ok()?.status?.verified?;
        (verified.digest == v1_c).then_some(verified)
    })
    .await;
    assert_eq!(verified.identity.as_deref(), Some("release.pub"));
    assert_eq!(verified.files, Some(2));
    assert!(verified.signature.is_some());

    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(), "pull": {"backoffLimit": 0}});
    apply(&deployments, "ModelDeployment", "serve", spec).await;
    let v1_c = v1.clone();
    support::wait_for_deployment(&deployments, "serve", "v1 in sync", move |s: &ModelDeploymentStatus| {
        s.deployed.as_ref().is_some_and(|d| d.digest == v1_c) && s.drift.as_ref().is_some_and(|d| d.reason == "InSync")
    })
    .await;
    // What a serving pod mounts holds exactly the signed files. A pod mounts the directory `current`
    // points at (the kubelet resolves the hostPath); model_signing refuses a symlink as the model
    // path, so it is given the directory too.
    let link = bed.node_path(&node, CACHE).join("deployments").join(&ns).join("serve/current");
    let current = std::fs::canonicalize(&link).unwrap_or_else(|e| panic!("{}: {e}", link.display()));
    must(
        Command::new(model_signing())
            .args(["verify", "key", "--public_key"])
            .arg(work.path().join("signer.pub"))
            .arg("--signature")
            .arg(&sig)
            .arg(&current),
    );

    // v2: the raw layer unchanged, the archive's file changed, the same signature attached.
    let v2 = craft::push(&bed.plain, &repo, "prod", &artifact(&weights, b"changed\n")).await;
    attach(bed, &format!("{repository}@{v2}"), &sig);
    let d = support::wait_for_deployment(&deployments, "serve", "v2 refused by the node", |s| {
        s.drift.as_ref().is_some_and(|d| d.reason == "PullFailed")
    })
    .await;
    let status = d.status.unwrap();
    assert_eq!(status.deployed.map(|v| v.digest), Some(v1));
    let failed = status.nodes.unwrap().entries.into_iter().find(|e| e.phase == NodePhase::Failed).unwrap();
    let message = failed.message.unwrap_or_default();
    assert!(message.contains("model signature") && message.contains("tokenizer/vocab.txt"), "{message}");
    assert!(!bed.node_path(&node, CACHE).join("models/sha256").join(&v2[7..]).exists(), "v2 was published");

    // The platform side (docs/examples/model-signing.yaml's `every-file-signed` rule, for this
    // namespace only): the verified Model passes it, a Model of the same tag without
    // `spec.verify` is refused by it.
    let example = include_str!("../../docs/examples/model-signing.yaml");
    let doc = example.split("\n---\n").find(|d| d.contains("kind: ModelPolicy")).expect("the example's policy");
    let documents = modelpack_operator::policy::parse_documents(doc, "docs/examples/model-signing.yaml").unwrap();
    let rule = documents[0].spec.rules.iter().find(|r| r.name == "every-file-signed").expect("the rule");
    let policies: Api<ModelPolicy> = Api::all(client.clone());
    let policy = format!("signed-files-{}", unique_suffix());
    let selector = json!({"matchLabels": {"kubernetes.io/metadata.name": ns}});
    apply(
        &policies,
        "ModelPolicy",
        &policy,
        json!({"action": "Enforce", "namespaceSelector": selector, "rules": [rule]}),
    )
    .await;
    let unsigned = json!({"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "10s"});
    apply(&models, "Model", "unsigned", unsigned).await;
    let refused = eventually("the unverified Model refused by the policy", Duration::from_secs(60), || async {
        let status = models.get("unsigned").await.ok()?.status?;
        let ready = find(&status.conditions, READY)?;
        (ready.reason == Reason::PolicyViolation.as_str()).then_some(status)
    })
    .await;
    assert!(refused.violations.iter().any(|v| v.rule == "every-file-signed"), "{:?}", refused.violations);
    let signed = eventually("the verified Model passes the policy", Duration::from_secs(60), || async {
        let status = models.get("llm").await.ok()?.status?;
        let compliant = find(&status.conditions, COMPLIANT)?;
        (compliant.status == ConditionStatus::True).then_some(status)
    })
    .await;
    assert!(signed.violations.is_empty(), "{:?}", signed.violations);
    assert_eq!(signed.accepted.map(|a| a.digest), Some(v2));
    policies.delete(&policy, &Default::default()).await.unwrap();
}
