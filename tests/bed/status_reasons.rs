//! The reason tables of docs/model.md and docs/modeldeployment.md ("Conditions and reasons"), row by
//! row on the bed; the expected verdicts are read from those tables (support::reason_table), not copied: each Model and ModelDeployment is driven into its reason
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
use support::kstatus;
use support::reason_table;
use support::{
    Bed, Operator, TestNodes, apply, argo, ensure_namespace, eventually, install_crds, namespace, unique_suffix,
};

const MODEL_PAGE: &str = "docs/model.md";
const DEPLOYMENT_PAGE: &str = "docs/modeldeployment.md";

/// One row: an object's name, what makes it take the Ready reason, and the table row it holds (the
/// keys that name that row in the docs' table).
struct Row {
    name: &'static str,
    spec: Value,
    reason: &'static str,
    table: Vec<&'static str>,
}

fn row(name: &'static str, spec: Value, reason: &'static str, table: &[&'static str]) -> Row {
    Row { name, spec, reason, table: table.to_vec() }
}

/// A row whose table key is its Ready reason.
fn reason(name: &'static str, spec: Value, reason: &'static str) -> Row {
    Row { name, spec, reason, table: vec![reason] }
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

/// Applies every row, waits until each shows its reason, then checks the verdicts all at once
/// against the reason table of `page`.
async fn hold<K>(api: &Api<K>, kind: &str, page: &str, rows: &[Row])
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let table = reason_table::read(page).unwrap();
    let expected: Vec<_> = rows.iter().map(|r| reason_table::verdicts(&table, &r.table).unwrap()).collect();
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
    for (((r, v), value), want) in rows.iter().zip(&verdicts).zip(&values).zip(&expected) {
        let health = argo::health(value).0;
        if (v.status, health.as_str()) != (want.kstatus, want.argo.as_str()) {
            wrong.push(format!(
                "{} ({}): kstatus {:?} (table: {:?}), Argo CD {health} (table: {}); {}",
                r.name, r.reason, v.status, want.kstatus, want.argo, v.message
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
    let semver = |range: &str| json!({"repository": plain, "ref": {"semver": range}, "insecure": true});
    let verify = |secret: &str| json!({"verify": {"provider": "cosign", "secretRef": {"name": secret}}});
    let auth = json!({"repository": format!("{}/{repo}", bed.auth.host), "insecure": true});
    let rows = [
        reason("succeeded", at("v1"), "Succeeded"),
        reason("unavailable", json!({"repository": "127.0.0.1:1/none", "insecure": true}), "RegistryUnavailable"),
        reason("timeout", hostile(&slow), "RegistryTimeout"),
        reason("auth", auth, "AuthenticationFailed"),
        reason("not-found", at("absent"), "ArtifactNotFound"),
        reason("no-tag", semver(">=99.0.0"), "NoMatchingTag"),
        reason("no-secret", with("v1", json!({"secretRef": {"name": "absent"}})), "SecretNotFound"),
        reason("no-sa", with("v1", json!({"serviceAccountName": "absent"})), "ServiceAccountNotFound"),
        reason("image", at("image"), "NotAModelPack"),
        reason("unsafe", at("unsafe"), "InvalidModelPack"),
        reason("bad-range", semver("not a range"), "InvalidReference"),
        reason("bad-secret", with("v1", json!({"secretRef": {"name": "not-docker"}})), "InvalidSecret"),
        reason("bad-ca", with("v1", json!({"caSecretRef": {"name": "bad-ca"}})), "InvalidCA"),
        reason("huge", hostile(&huge), "ArtifactTooLarge"),
        reason("unsigned", with("v1", verify("keys")), "SignatureRejected"),
        reason("bad-key", with("v1", verify("bad-key")), "InvalidSecret"),
    ];
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    hold(&models, "Model", MODEL_PAGE, &rows).await;

    // Suspended: the status stays as it was (kstatus judges it), Argo CD says Suspended.
    let suspended = [row("succeeded", with("v1", json!({"suspend": true})), "Succeeded", &["spec.suspend: true"])];
    hold(&models, "Model", MODEL_PAGE, &suspended).await;
}

#[tokio::test]
async fn every_deployment_reason_gets_the_verdicts_of_the_table() {
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
        // `Deployed` is also the Ready reason of a suspended deployment in sync: the row is InSync's.
        row("deployed", on("ok"), "Deployed", &["InSync", "Deployed"]),
        reason("no-model", on("missing"), "ModelNotFound"),
        reason("model-not-ready", on("absent"), "ModelNotReady"),
        reason("registry-access", on("authed"), "RegistryAccess"),
        // No node is retried (a node may join): Ready=False, InProgress; Argo CD reads Ready=False as Degraded.
        reason(
            "no-nodes",
            json!({"modelRef": {"name": "ok"}, "nodeSelector": {"e2e.modelpack.dev/pool": "none"}}),
            "NoNodesSelected",
        ),
        reason("model-stalled", on("image"), "ModelStalled"),
        reason("unverified", on("unsigned"), "VerificationFailed"),
    ];
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    hold(&deployments, "ModelDeployment", DEPLOYMENT_PAGE, &rows).await;
}
