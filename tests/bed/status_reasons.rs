//! The README's reason tables ("What the Model controller does", "What the ModelDeployment
//! controller does"), row by row on the bed: each Model and ModelDeployment is driven into its reason
//! and its live object is judged by sigs.k8s.io/cli-utils' kstatus (what Flux, kpt and Config Sync
//! use; e2e/tools/kstatus) and by the Argo CD health scripts (deploy/argocd/*.lua). Contract: a
//! failure retried without a change is kstatus InProgress, one that needs a change is Stalled
//! (Failed), done is Current. Rows reached by longer stories are held there: PullFailed,
//! NewVersionPending and Suspended in deployment_controller.rs, TrustRevoked and TolerationNotAllowed
//! in trust_and_bounds.rs.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use kube::{Client, Resource};
use modelpack_operator::api::conditions::{READY, find};
use modelpack_operator::api::{Model, ModelDeployment};
use serde_json::{Value, json};
use support::craft::{self, Artifact, Blob};
use support::fixtures::{CosignKey, ModelFiles, modctl_push};
use support::hostile::{Endless, Hostile, REPO, TAG};
use support::kstatus::{self, KStatus};
use support::{
    Bed, Operator, TestNodes, apply, argo, ensure_namespace, eventually, install_crds, namespace, unique_suffix,
};

/// One row: an object's name, what makes it take the reason, and what the tables say.
struct Row {
    name: &'static str,
    spec: Value,
    reason: &'static str,
    kstatus: KStatus,
    argo: &'static str,
}

fn row(name: &'static str, spec: Value, reason: &'static str, kstatus: KStatus, argo: &'static str) -> Row {
    Row { name, spec, reason, kstatus, argo }
}

async fn secret(client: &Client, ns: &str, name: &str, data: Value) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let s = json!({"metadata": {"name": name}, "stringData": data});
    secrets.create(&PostParams::default(), &serde_json::from_value(s).unwrap()).await.unwrap();
}

/// The Ready reason of an object whose status is for its current generation.
fn ready_reason<K: Resource + serde::Serialize>(obj: &K) -> Option<String> {
    let v = serde_json::to_value(obj).ok()?;
    (v["status"]["observedGeneration"] == v["metadata"]["generation"]).then_some(())?;
    let conditions = serde_json::from_value(v["status"]["conditions"].clone()).ok()?;
    let conditions: Vec<modelpack_operator::api::conditions::Condition> = conditions;
    find(&conditions, READY).map(|c| c.reason.clone())
}

/// Applies every row, waits until each shows its reason, then checks the verdicts all at once.
async fn hold<K>(api: &Api<K>, kind: &str, rows: &[Row])
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    for r in rows {
        apply(api, kind, r.name, r.spec.clone()).await;
    }
    let mut objects = Vec::new();
    for r in rows {
        let obj = eventually(&format!("{kind} {}: {}", r.name, r.reason), Duration::from_secs(90), || async {
            let obj = api.get(r.name).await.ok()?;
            (ready_reason(&obj).as_deref() == Some(r.reason)).then_some(obj)
        })
        .await;
        objects.push(obj);
    }
    let values: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut v = serde_json::to_value(o).unwrap();
            v["apiVersion"] = K::api_version(&()).into();
            v["kind"] = K::kind(&()).into();
            v
        })
        .collect();
    let verdicts = kstatus::verdicts(&values);
    let mut wrong = Vec::new();
    for ((r, v), value) in rows.iter().zip(&verdicts).zip(&values) {
        let health = argo::health(value).0;
        if (v.status, health.as_str()) != (r.kstatus, r.argo) {
            wrong.push(format!(
                "{} ({}): kstatus {:?} (table: {:?}), Argo CD {health} (table: {}); {}",
                r.name, r.reason, v.status, r.kstatus, r.argo, v.message
            ));
        }
    }
    assert!(wrong.is_empty(), "rows the live objects contradict:\n{}", wrong.join("\n"));
}

/// A ModelPack whose only layer's path climbs out of the model directory.
fn unsafe_path_model() -> Artifact {
    let weights = b"weights".to_vec();
    let config =
        json!({"descriptor": {"name": "unsafe"}, "modelfs": {"type": "layers", "diffIds": [craft::sha256(&weights)]}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", weights)
                .annotate("org.cncf.model.filepath", "../escape.bin"),
        ],
        annotations: BTreeMap::new(),
    }
}

#[tokio::test]
async fn every_model_reason_gets_the_verdicts_of_the_table() {
    use KStatus::{Current, Failed, InProgress};
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "reasons-model").await;
    let _operator = Operator::start(&ns);
    let repo = format!("reasons/model-{}", unique_suffix());
    modctl_push(bed, &bed.plain, &repo, "v1", &ModelFiles::new(81, &[("model.gguf", 2_000)]));
    craft::push(&bed.plain, &repo, "image", &craft::container_image()).await;
    craft::push(&bed.plain, &repo, "unsafe", &unsafe_path_model()).await;
    let key = CosignKey::generate();
    secret(&client, &ns, "keys", json!({"k.pub": key.public_pem()})).await;
    secret(&client, &ns, "bad-key", json!({"k.pub": "not a key"})).await;
    secret(&client, &ns, "not-docker", json!({"anything": "else"})).await;
    secret(&client, &ns, "bad-ca", json!({"ca.crt": "not a certificate"})).await;
    let (slow, huge) = (Hostile::start(Endless::Drip), Hostile::start(Endless::ManifestByTag));

    let plain = format!("{}/{repo}", bed.plain.host);
    let at = |tag: &str| json!({"repository": plain, "ref": {"tag": tag}, "insecure": true});
    let with = |tag: &str, extra: Value| {
        let mut spec = at(tag);
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        spec
    };
    let hostile = |h: &Hostile| json!({"repository": format!("{}/{REPO}", h.host), "ref": {"tag": TAG}, "insecure": true, "timeout": "2s"});
    // A retried failure is Ready=False alone; one that needs a change is also Stalled=True.
    let retried = |name, spec, reason| row(name, spec, reason, InProgress, "Degraded");
    let stalled = |name, spec, reason| row(name, spec, reason, Failed, "Degraded");
    let semver = |range: &str| json!({"repository": plain, "ref": {"semver": range}, "insecure": true});
    let verify = |secret: &str| json!({"verify": {"provider": "cosign", "secretRef": {"name": secret}}});
    let auth = json!({"repository": format!("{}/{repo}", bed.auth.host), "insecure": true});
    let rows = [
        row("succeeded", at("v1"), "Succeeded", Current, "Healthy"),
        retried("unavailable", json!({"repository": "127.0.0.1:1/none", "insecure": true}), "RegistryUnavailable"),
        retried("timeout", hostile(&slow), "RegistryTimeout"),
        retried("auth", auth, "AuthenticationFailed"),
        retried("not-found", at("absent"), "ArtifactNotFound"),
        retried("no-tag", semver(">=99.0.0"), "NoMatchingTag"),
        retried("no-secret", with("v1", json!({"secretRef": {"name": "absent"}})), "SecretNotFound"),
        retried("no-sa", with("v1", json!({"serviceAccountName": "absent"})), "ServiceAccountNotFound"),
        stalled("image", at("image"), "NotAModelPack"),
        stalled("unsafe", at("unsafe"), "InvalidModelPack"),
        stalled("bad-range", semver("not a range"), "InvalidReference"),
        stalled("bad-secret", with("v1", json!({"secretRef": {"name": "not-docker"}})), "InvalidSecret"),
        stalled("bad-ca", with("v1", json!({"caSecretRef": {"name": "bad-ca"}})), "InvalidCA"),
        stalled("huge", hostile(&huge), "ArtifactTooLarge"),
        stalled("unsigned", with("v1", verify("keys")), "SignatureRejected"),
        stalled("bad-key", with("v1", verify("bad-key")), "InvalidSecret"),
    ];
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    hold(&models, "Model", &rows).await;

    // Suspended: the status stays as it was (kstatus judges it), Argo CD says Suspended.
    let suspended = [row("succeeded", with("v1", json!({"suspend": true})), "Succeeded", Current, "Suspended")];
    hold(&models, "Model", &suspended).await;
}

#[tokio::test]
async fn every_deployment_reason_gets_the_verdicts_of_the_table() {
    use KStatus::{Current, Failed, InProgress};
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, "modelpack-system").await;
    let ns = namespace(&client, "reasons-deploy").await;
    let _operator = Operator::start(&ns);
    let nodes = TestNodes::create("reasons", 1);
    let repo = format!("reasons/deploy-{}", unique_suffix());
    modctl_push(bed, &bed.plain, &repo, "v1", &ModelFiles::new(82, &[("model.gguf", 2_000)]));
    craft::push(&bed.plain, &repo, "image", &craft::container_image()).await;
    let auth_repo = format!("reasons/auth-{}", unique_suffix());
    modctl_push(bed, &bed.auth, &auth_repo, "v1", &ModelFiles::new(83, &[("model.gguf", 2_000)]));
    let (_, password) = bed.auth.basic_auth.clone().unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets
        .create(&PostParams::default(), &support::docker_config_secret("creds", &bed.auth, &password))
        .await
        .unwrap();
    let key = CosignKey::generate();
    secret(&client, &ns, "keys", json!({"k.pub": key.public_pem()})).await;

    let plain = format!("{}/{repo}", bed.plain.host);
    let model = |tag: &str| json!({"repository": plain, "ref": {"tag": tag}, "insecure": true});
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let mut signed = model("v1");
    signed["verify"] = json!({"provider": "cosign", "secretRef": {"name": "keys"}});
    let authed = json!({"repository": format!("{}/{auth_repo}", bed.auth.host), "ref": {"tag": "v1"},
        "insecure": true, "secretRef": {"name": "creds"}});
    for (name, spec) in [
        ("ok", model("v1")),
        ("absent", model("absent")),
        ("image", model("image")),
        ("unsigned", signed),
        ("authed", authed),
    ] {
        apply(&models, "Model", name, spec).await;
    }
    // The Model resolved with its Secret, then the Secret goes: the Model keeps its digest
    // (SecretNotFound), the deployment cannot give the pull Jobs any credentials.
    eventually("model authed resolved", Duration::from_secs(60), || async {
        models.get("authed").await.ok()?.status?.resolved.map(|_| ())
    })
    .await;
    secrets.delete("creds", &DeleteParams::default()).await.unwrap();
    eventually("model authed lost its Secret", Duration::from_secs(60), || async {
        (ready_reason(&models.get("authed").await.ok()?).as_deref() == Some("SecretNotFound")).then_some(())
    })
    .await;

    let on = |model: &str| json!({"modelRef": {"name": model}, "nodeSelector": nodes.selector()});
    let rows = [
        row("deployed", on("ok"), "Deployed", Current, "Healthy"),
        row("no-model", on("missing"), "ModelNotFound", InProgress, "Progressing"),
        row("model-not-ready", on("absent"), "ModelNotReady", InProgress, "Progressing"),
        row("registry-access", on("authed"), "RegistryAccess", InProgress, "Progressing"),
        // No node is retried (a node may join): Ready=False, InProgress; Argo CD reads Ready=False as Degraded.
        row(
            "no-nodes",
            json!({"modelRef": {"name": "ok"}, "nodeSelector": {"e2e.modelpack.dev/pool": "none"}}),
            "NoNodesSelected",
            InProgress,
            "Degraded",
        ),
        row("model-stalled", on("image"), "ModelStalled", Failed, "Degraded"),
        row("unverified", on("unsigned"), "VerificationFailed", Failed, "Degraded"),
    ];
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    hold(&deployments, "ModelDeployment", &rows).await;
}
