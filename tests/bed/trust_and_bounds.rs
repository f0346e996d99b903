//! Issue 14's revoked trust and node bound, against the bed: a cosign key rotated away while a node
//! joins (the verified digest stops being accepted, the joined node gets nothing, the others keep
//! their files, and restoring the key rolls it out again), and an operator started with a node
//! bound (a deployment tolerating every taint is refused, a selection beyond the bound is narrowed).

use crate::support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use modelpack_operator::api::conditions::{READY, VERIFIED, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus};
use serde_json::{Value, json};
use support::fixtures::{CosignKey, ModelFiles, modctl_push};
use support::kstatus::{self, KStatus};
use support::reason_table;
use support::{Bed, Operator, TestNodes, argo, ensure_namespace, eventually, install_crds, namespace, unique_suffix};

const JOBS_NAMESPACE: &str = "modelpack-system";
const CACHE: &str = "/var/lib/modelpack";

use support::apply;

use support::wait_for_deployment as wait_for;

fn drift_reason(s: &ModelDeploymentStatus) -> Option<&str> {
    s.drift.as_ref().map(|d| d.reason.as_str())
}

fn in_sync_on(digest: &str, nodes: usize) -> impl Fn(&ModelDeploymentStatus) -> bool + '_ {
    move |s| {
        s.deployed.as_ref().map(|d| d.digest.as_str()) == Some(digest)
            && drift_reason(s) == Some("InSync")
            && s.nodes.as_ref().is_some_and(|n| n.selected == nodes as i32 && n.ready == nodes as i32)
    }
}

/// The nodes this deployment's pull Jobs were made for.
async fn pulled_nodes(client: &Client, ns: &str, name: &str) -> Vec<String> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
    let all =
        jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelpack-operator")).await.unwrap();
    let owner = format!("{ns}/{name}");
    let mut nodes: Vec<String> = all
        .items
        .iter()
        .filter(|j| j.annotations().get("modelpack.dev/deployment") == Some(&owner))
        .filter_map(|j| j.annotations().get("modelpack.dev/node").cloned())
        .collect();
    nodes.sort();
    nodes
}

async fn warning_events(client: &Client, ns: &str, object: &str, reason: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = events.list(&ListParams::default()).await.unwrap();
    list.items
        .into_iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(object))
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.reason.as_deref() == Some(reason))
        .map(|e| e.message.unwrap_or_default())
        .collect()
}

fn current_link(node: &str, ns: &str, name: &str) -> std::path::PathBuf {
    Bed::get().node_path(node, CACHE).join("deployments").join(ns).join(name).join("current")
}

fn assert_serves(node: &str, ns: &str, name: &str, model: &ModelFiles) {
    for (path, data) in &model.files {
        let got =
            std::fs::read(current_link(node, ns, name).join(path)).unwrap_or_else(|e| panic!("{node}: {path}: {e}"));
        assert!(got == *data, "{node}: {path} differs from what was pushed");
    }
}

async fn set_keys(secrets: &Api<Secret>, keys: &[(&str, &CosignKey)]) {
    let data: serde_json::Map<String, Value> =
        keys.iter().map(|(n, k)| (n.to_string(), json!(k.public_pem()))).collect();
    let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "keys"}, "stringData": data});
    // A replace, not a merge: keys left out are removed.
    match secrets.get_opt("keys").await.unwrap() {
        None => {
            secrets.create(&PostParams::default(), &serde_json::from_value(secret).unwrap()).await.unwrap();
        }
        Some(old) => {
            let mut new: Secret = serde_json::from_value(secret).unwrap();
            new.metadata.resource_version = old.metadata.resource_version;
            secrets.replace("keys", &PostParams::default(), &new).await.unwrap();
        }
    }
}

#[tokio::test]
async fn a_key_rotated_away_while_a_node_joins_revokes_the_digest_until_the_key_is_back() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "revoke").await;
    let _operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let mut nodes = TestNodes::create("revoke", 2);

    // Signed by key A only; the trust Secret holds A; it rolls out to both nodes.
    let repo = format!("deploy/revoke-{}", unique_suffix());
    let files = ModelFiles::new(41, &[("model.safetensors", 80_000), ("config.json", 100)]);
    let digest = modctl_push(bed, &bed.plain, &repo, "prod", &files);
    let repository = format!("{}/{repo}", bed.plain.host);
    let (a, b) = (CosignKey::generate(), CosignKey::generate());
    a.sign(&format!("{repository}@{digest}"));
    set_keys(&secrets, &[("release.pub", &a)]).await;
    let spec = json!({"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "10s",
        "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}});
    apply(&models, "Model", "signed", spec).await;
    apply(
        &deployments,
        "ModelDeployment",
        "gated",
        json!({"modelRef": {"name": "signed"}, "nodeSelector": nodes.selector()}),
    )
    .await;
    wait_for(&deployments, "gated", "the signed version on 2 nodes", in_sync_on(&digest, 2)).await;

    // Key A is rotated away (B replaces it under the same name), and a node joins.
    set_keys(&secrets, &[("release.pub", &b)]).await;
    let joined = nodes.add();
    let model = eventually("the Model revokes the digest", Duration::from_secs(60), || async {
        let m = models.get("signed").await.ok()?;
        let s = m.status.as_ref()?;
        (s.revoked.as_ref().is_some_and(|r| r.digest == digest)).then_some(m)
    })
    .await;
    let status = model.status.clone().unwrap();
    assert!(status.verified.is_none(), "a revoked digest is still named verified: {:?}", status.verified);
    assert_eq!(find(&status.conditions, VERIFIED).unwrap().reason, "TrustRevoked");
    assert_eq!(find(&status.conditions, READY).unwrap().reason, "TrustRevoked");
    // The verdicts are the tables' rows (docs/model.md, docs/modeldeployment.md), read, not copied.
    let row = reason_table::expect("docs/model.md", &["TrustRevoked"]);
    assert_eq!((kstatus::of(&model), argo::status_of(&model)), (row.kstatus, row.argo));
    let d = wait_for(&deployments, "gated", "TrustRevoked", |s| drift_reason(s) == Some("TrustRevoked")).await;
    let row = reason_table::expect("docs/modeldeployment.md", &["TrustRevoked"]);
    assert_eq!((kstatus::of(&d), argo::status_of(&d)), (row.kstatus, row.argo));
    assert!(
        d.status.as_ref().unwrap().drift.as_ref().unwrap().message.contains(&digest),
        "the message names the digest"
    );
    for object in ["signed", "gated"] {
        let events = eventually(&format!("a TrustRevoked event on {object}"), Duration::from_secs(30), || async {
            let e = warning_events(&client, &ns, object, "TrustRevoked").await;
            (!e.is_empty()).then_some(e)
        })
        .await;
        assert!(events[0].contains(&digest), "{object}: {events:?}");
    }
    // Two intervals of the Model pass: the joined node gets no Job, the others keep their files.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let pulled = pulled_nodes(&client, &ns, "gated").await;
    assert!(!pulled.contains(&joined), "the joined node got a pull of a revoked digest: {pulled:?}");
    assert!(!current_link(&joined, &ns, "gated").exists());
    let d = deployments.get("gated").await.unwrap();
    assert_eq!(drift_reason(d.status.as_ref().unwrap()), Some("TrustRevoked"), "the revocation did not stick");
    let entries = d.status.as_ref().unwrap().nodes.as_ref().unwrap().entries.clone();
    for node in &nodes.names[..2] {
        assert_serves(node, &ns, "gated", &files);
        let entry = entries.iter().find(|e| &e.node == node).unwrap();
        assert_eq!(entry.current.as_deref(), Some(digest.as_str()), "{node}");
    }

    // Key A is added back beside B: the digest is accepted again and the joined node receives it.
    set_keys(&secrets, &[("release.pub", &b), ("old.pub", &a)]).await;
    let d = wait_for(&deployments, "gated", "the version on all 3 nodes", in_sync_on(&digest, 3)).await;
    assert_eq!(kstatus::of(&d), KStatus::Current);
    assert_serves(&joined, &ns, "gated", &files);
    let status = models.get("signed").await.unwrap().status.unwrap();
    assert_eq!(status.verified.map(|v| v.digest), Some(digest.clone()));
    assert!(status.revoked.is_none());
}

#[tokio::test]
async fn the_operators_node_bound_refuses_broad_tolerations_and_narrows_selections() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "bound").await;
    let inside = TestNodes::create("inside", 2);
    let outside = TestNodes::create("outside", 1);
    let bound = format!("{}={}", inside.label.0, inside.label.1);
    let _operator =
        Operator::start_with(&ns, &format!("e2e-{ns}"), &["--node-selector", &bound, "--allowed-toleration", "gpu"]);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let repo = format!("deploy/bound-{}", unique_suffix());
    let files = ModelFiles::new(43, &[("model.safetensors", 50_000)]);
    let digest = modctl_push(bed, &bed.plain, &repo, "v1", &files);
    let repository = format!("{}/{repo}", bed.plain.host);
    apply(&models, "Model", "m", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;

    // Tolerating every taint (control-plane nodes included) is beyond the bound: refused, no Job.
    let everything = json!({"modelRef": {"name": "m"}, "nodeSelector": inside.selector(),
        "tolerations": [{"key": "gpu", "operator": "Exists"}, {"operator": "Exists"}]});
    apply(&deployments, "ModelDeployment", "broad", everything).await;
    let d =
        wait_for(&deployments, "broad", "TolerationNotAllowed", |s| drift_reason(s) == Some("TolerationNotAllowed"))
            .await;
    let row = reason_table::expect("docs/modeldeployment.md", &["TolerationNotAllowed"]);
    assert_eq!((kstatus::of(&d), argo::status_of(&d)), (row.kstatus, row.argo));
    let message = d.status.as_ref().unwrap().drift.as_ref().unwrap().message.clone();
    assert!(message.contains("{operator: Exists} (tolerates every taint)"), "{message}");
    let events = eventually("a TolerationNotAllowed event", Duration::from_secs(30), || async {
        let e = warning_events(&client, &ns, "broad", "TolerationNotAllowed").await;
        (!e.is_empty()).then_some(e)
    })
    .await;
    assert!(events[0].contains("operator: Exists"), "{events:?}");

    // A selection beyond the bound (every node of the cluster) pulls only onto the nodes inside it.
    apply(
        &deployments,
        "ModelDeployment",
        "wide",
        json!({"modelRef": {"name": "m"}, "tolerations": [{"key": "gpu", "operator": "Exists"}]}),
    )
    .await;
    wait_for(&deployments, "wide", "v1 on the 2 nodes inside the bound", in_sync_on(&digest, 2)).await;
    assert_eq!(pulled_nodes(&client, &ns, "wide").await, inside.names);
    for node in &inside.names {
        assert_serves(node, &ns, "wide", &files);
    }
    assert!(!current_link(&outside.names[0], &ns, "wide").exists(), "a node outside the bound was pulled onto");
    let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
    let all =
        jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelpack-operator")).await.unwrap();
    let job = all
        .items
        .iter()
        .find(|j| j.annotations().get("modelpack.dev/deployment") == Some(&format!("{ns}/wide")))
        .unwrap();
    let selector = job.spec.as_ref().unwrap().template.spec.as_ref().unwrap().node_selector.clone().unwrap_or_default();
    assert_eq!(selector.get(&inside.label.0), Some(&inside.label.1), "the Job does not carry the bound");

    // Narrowing the toleration to what is allowed lets the refused deployment roll out.
    apply(
        &deployments,
        "ModelDeployment",
        "broad",
        json!({"modelRef": {"name": "m"}, "nodeSelector": inside.selector(),
        "tolerations": [{"key": "gpu", "operator": "Exists"}]}),
    )
    .await;
    wait_for(&deployments, "broad", "v1 on 2 nodes", in_sync_on(&digest, 2)).await;
    assert!(pulled_nodes(&client, &ns, "broad").await.iter().all(|n| inside.names.contains(n)));
}

/// Waits until the Model's revocation (or acceptance) of `digest` is what `revoked` says.
async fn wait_revoked(models: &Api<Model>, name: &str, digest: &str, revoked: bool) -> Model {
    let what = if revoked { "revokes" } else { "accepts" };
    eventually(&format!("model {name} {what} {digest}"), Duration::from_secs(60), || async {
        let m = models.get(name).await.ok()?;
        let s = m.status.as_ref()?;
        let fresh = s.observed_generation == m.metadata.generation;
        let now = if revoked {
            s.revoked.as_ref().is_some_and(|r| r.digest == digest) && s.verified.is_none()
        } else {
            s.verified.as_ref().is_some_and(|v| v.digest == digest) && s.revoked.is_none()
        };
        (fresh && now).then_some(m)
    })
    .await
}

#[tokio::test]
async fn a_deleted_trust_secret_or_a_changed_provider_revokes_and_restoring_accepts_again() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "revoke-secret").await;
    let _operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let repo = format!("deploy/revoke-secret-{}", unique_suffix());
    let digest = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(45, &[("model.safetensors", 10_000)]));
    let repository = format!("{}/{repo}", bed.plain.host);
    let key = CosignKey::generate();
    key.sign(&format!("{repository}@{digest}"));
    set_keys(&secrets, &[("release.pub", &key)]).await;
    let spec = |provider: &str| {
        json!({"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "1h",
            "verify": {"provider": provider, "secretRef": {"name": "keys"}}})
    };
    apply(&models, "Model", "m", spec("cosign")).await;
    wait_revoked(&models, "m", &digest, false).await;

    // The trust Secret is deleted: the Secret watch alone (the interval is an hour) revokes it.
    secrets.delete("keys", &Default::default()).await.unwrap();
    let m = wait_revoked(&models, "m", &digest, true).await;
    let verified = find(&m.status.as_ref().unwrap().conditions, VERIFIED).unwrap().clone();
    assert_eq!(verified.reason, "TrustRevoked");
    assert!(verified.message.contains("not found"), "{}", verified.message);
    set_keys(&secrets, &[("release.pub", &key)]).await;
    wait_revoked(&models, "m", &digest, false).await;

    // The provider changes to one the Secret does not serve (no trust policy): revoked too.
    apply(&models, "Model", "m", spec("notation")).await;
    let m = wait_revoked(&models, "m", &digest, true).await;
    assert_eq!(find(&m.status.as_ref().unwrap().conditions, READY).unwrap().reason, "TrustRevoked");
    apply(&models, "Model", "m", spec("cosign")).await;
    wait_revoked(&models, "m", &digest, false).await;
}
