//! The ModelDeployment reconciler against the bed: the operator binary (`run` with no flags but
//! the namespace it watches) creates pull Jobs that the scheduler places and the bed's node executor
//! runs as the real `pull`, so every assertion about a node's cache reads the files the Jobs wrote.
//! Each test has its own simulated nodes (a labelled pool) and namespace.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use modelpack_operator::api::conditions::{ConditionStatus, DRIFTED, READY, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus, NodePhase};
use serde_json::json;
use support::fixtures::{CosignKey, ModelFiles, modctl_push};
use support::kstatus::{self, KStatus};
use support::reason_table;
use support::{
    Bed, Operator, Recording, TestNodes, argo, docker_config_secret, ensure_namespace, eventually, install_crds,
    namespace, unique_suffix,
};

const JOBS_NAMESPACE: &str = "modelpack-system";
const CACHE: &str = "/var/lib/modelpack";
/// The reason table the rows held here belong to.
const TABLE: &str = "docs/modeldeployment.md";

struct Setup {
    client: Client,
    ns: String,
    models: Api<Model>,
    deployments: Api<ModelDeployment>,
    operator: Option<Operator>,
}

async fn setup(prefix: &str) -> Setup {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, prefix).await;
    let operator = Some(Operator::start(&ns));
    Setup {
        models: Api::namespaced(client.clone(), &ns),
        deployments: Api::namespaced(client.clone(), &ns),
        client,
        ns,
        operator,
    }
}

use support::apply;

use support::wait_for_deployment as wait_for;

fn drift_reason(s: &ModelDeploymentStatus) -> Option<String> {
    s.drift.as_ref().map(|d| d.reason.clone())
}

fn deployed(s: &ModelDeploymentStatus) -> Option<&str> {
    s.deployed.as_ref().map(|d| d.digest.as_str())
}

fn in_sync_on(digest: &str, nodes: usize) -> impl Fn(&ModelDeploymentStatus) -> bool + '_ {
    move |s| {
        deployed(s) == Some(digest)
            && drift_reason(s).as_deref() == Some("InSync")
            && s.nodes.as_ref().is_some_and(|n| n.selected == nodes as i32 && n.ready == nodes as i32)
    }
}

async fn model_kstatus(models: &Api<Model>, name: &str) -> KStatus {
    kstatus::of(&models.get(name).await.unwrap())
}

fn link(node: &str, ns: &str, name: &str) -> PathBuf {
    Bed::get().node_path(node, CACHE).join("deployments").join(ns).join(name).join("current")
}

/// The model files a node serves for the deployment, byte for byte.
fn assert_serves(node: &str, ns: &str, name: &str, model: &ModelFiles) {
    let current = link(node, ns, name);
    for (path, data) in &model.files {
        let got = std::fs::read(current.join(path)).unwrap_or_else(|e| panic!("{node}: {path}: {e}"));
        assert!(got == *data, "{node}: {path} differs from what was pushed");
    }
}

/// Every status the deployment goes through, as a watch delivers them.
fn record_statuses(api: &Api<ModelDeployment>, name: &str) -> Arc<Recording<ModelDeploymentStatus>> {
    let seen = Recording::new();
    seen.watch(api, name, |d: ModelDeployment| d.status);
    seen
}

/// The library's verdict and the Argo CD health of every recorded status whose drift is `reason`,
/// as an object carrying it (at least one such status must have been recorded), are those of that
/// reason's row in the docs' table.
fn assert_recorded(statuses: &[ModelDeploymentStatus], reason: &str) {
    let want = reason_table::expect(TABLE, &[reason]);
    let objects: Vec<_> = statuses
        .iter()
        .filter(|s| drift_reason(s).as_deref() == Some(reason))
        .map(|s| {
            json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelDeployment",
                "metadata": {"name": "serve", "generation": s.observed_generation}, "spec": {}, "status": s})
        })
        .collect();
    assert!(!objects.is_empty(), "no status with drift {reason} was recorded");
    for (v, o) in kstatus::verdicts(&objects).iter().zip(&objects) {
        let got = (v.status, argo::health(o).0);
        assert_eq!(got, (want.kstatus, want.argo.clone()), "a status with drift {reason}: {}", v.message);
    }
}

async fn jobs_of(client: &Client, ns: &str, name: &str) -> Vec<Job> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
    let all =
        jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelpack-operator")).await.unwrap();
    let owner = format!("{ns}/{name}");
    all.items.into_iter().filter(|j| j.annotations().get("modelpack.dev/deployment") == Some(&owner)).collect()
}

fn node_label(status: &ModelDeploymentStatus) -> String {
    status.node_label.clone().expect("status.nodeLabel")
}

async fn labels_of(client: &Client, node: &str) -> BTreeMap<String, String> {
    Api::<Node>::all(client.clone()).get(node).await.unwrap().labels().clone()
}

fn model_v(seed: u64, config: u64) -> ModelFiles {
    // Same weights for every `seed`, a config that changes with `config`: promotions fetch one file.
    let m = ModelFiles::new(seed, &[("model.safetensors", 400_000), ("tokenizer.json", 30_000)]);
    std::fs::write(m.path().join("config.json"), format!("{{\"version\": {config}}}")).unwrap();
    let mut files = m.files;
    files.push(("config.json".into(), format!("{{\"version\": {config}}}").into_bytes()));
    ModelFiles { dir: m.dir, files }
}

#[tokio::test]
async fn rollout_promotion_node_join_rollback_and_deletion() {
    let bed = Bed::get();
    let mut s = setup("deploy-rollout").await;
    let mut nodes = TestNodes::create("rollout", 3);
    let repo = format!("deploy/rollout-{}", unique_suffix());
    let v1_files = model_v(7, 1);
    let v1 = modctl_push(bed, &bed.plain, &repo, "stable", &v1_files);
    let repository = format!("{}/{repo}", bed.plain.host);
    apply(
        &s.models,
        "Model",
        "llm",
        json!({"repository": repository, "ref": {"tag": "stable"}, "insecure": true, "interval": "10s"}),
    )
    .await;
    let spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(), "pull": {"maxParallel": 2}});
    apply(&s.deployments, "ModelDeployment", "serve", spec.clone()).await;
    let seen = record_statuses(&s.deployments, "serve");

    // Rollout: every node serves v1, byte for byte, and carries the ready label.
    let d = wait_for(&s.deployments, "serve", "v1 on 3 nodes", in_sync_on(&v1, 3)).await;
    assert_eq!(kstatus::of(&d), KStatus::Current);
    assert_eq!(argo::status_of(&d), "Healthy");
    assert_eq!(model_kstatus(&s.models, "llm").await, KStatus::Current);
    assert_eq!(argo::status_of(&s.models.get("llm").await.unwrap()), "Healthy");
    let status = d.status.clone().unwrap();
    assert_eq!(status.desired.as_ref().unwrap().tag.as_deref(), Some("stable"));
    let label = node_label(&status);
    for node in &nodes.names {
        assert_serves(node, &s.ns, "serve", &v1_files);
        assert_eq!(labels_of(&s.client, node).await.get(&label), Some(&v1[7..19].to_owned()), "{node}: {label}");
    }
    let ready = find(&status.conditions, READY).unwrap();
    assert_eq!(ready.status, ConditionStatus::True);
    assert_eq!(find(&status.conditions, DRIFTED).unwrap().status, ConditionStatus::False);
    {
        let first = seen.lock();
        assert_recorded(&first, "NodesNotReady");
        assert!(first.iter().all(|s| s.nodes.as_ref().is_none_or(|n| n.pulling <= 2)), "maxParallel 2 was exceeded");
    }

    // The Job the operator made: pinned, bounded, locked down, and what the contract says.
    let jobs = jobs_of(&s.client, &s.ns, "serve").await;
    assert_eq!(jobs.len(), 3, "one Job per node");
    let job = &jobs[0];
    let spec_json = serde_json::to_value(job.spec.as_ref().unwrap()).unwrap();
    assert_eq!(spec_json["backoffLimit"], 3);
    assert_eq!(spec_json["activeDeadlineSeconds"], 3600);
    assert_eq!(spec_json["ttlSecondsAfterFinished"], 3600, "finished Jobs go after one hour");
    let pod = &spec_json["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(container["image"], format!("modelpack-operator:{}", env!("CARGO_PKG_VERSION")));
    assert_eq!(container["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert_eq!(pod["volumes"][0]["hostPath"]["path"], CACHE);
    // Each Job is pinned by `matchFields metadata.name` to one node of the pool: together, each node once.
    let pinned: BTreeSet<String> = jobs
        .iter()
        .map(|j| {
            let spec = serde_json::to_value(j.spec.as_ref().unwrap()).unwrap();
            let terms =
                &spec["template"]["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"];
            let field = &terms["nodeSelectorTerms"][0]["matchFields"][0];
            assert_eq!((&field["key"], &field["operator"]), (&json!("metadata.name"), &json!("In")), "{field}");
            let values = field["values"].as_array().expect("values");
            assert_eq!(values.len(), 1, "one node per Job: {field}");
            values[0].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(pinned, nodes.names.iter().cloned().collect(), "the Jobs' nodes are the pool's, each once");
    assert!(job.name_any().len() <= 63);

    // Promotion: the tag moves to v2 (one changed file). Nodes fetch only that file; `deployed`
    // switches only once every node holds v2, and the deployment is Drifted in between.
    seen.lock().clear();
    let v2_files = model_v(7, 2);
    let v2 = modctl_push(bed, &bed.plain, &repo, "stable", &v2_files);
    let d = wait_for(&s.deployments, "serve", "v2 on 3 nodes", in_sync_on(&v2, 3)).await;
    let config_size = v2_files.files.iter().find(|(p, _)| p == "config.json").unwrap().1.len() as i64;
    for e in &d.status.as_ref().unwrap().nodes.as_ref().unwrap().entries {
        assert_eq!(e.bytes, Some(config_size), "{}: only the changed layer is fetched", e.node);
        assert_serves(&e.node, &s.ns, "serve", &v2_files);
    }
    assert_eq!(d.status.as_ref().unwrap().history[0].digest, v1);
    {
        let during = seen.lock();
        assert_recorded(&during, "NewVersionPending");
        for s in during.iter() {
            let n = s.nodes.clone().unwrap_or_default();
            if deployed(s) == Some(v2.as_str()) {
                assert_eq!(n.ready, 3, "deployed switched to v2 before every node held it: {n:?}");
            }
            if drift_reason(s).as_deref() == Some("NewVersionPending") {
                assert_eq!(deployed(s), Some(v1.as_str()));
                let c = find(&s.conditions, DRIFTED).unwrap();
                assert_eq!((c.status, c.reason.as_str()), (ConditionStatus::True, "NewVersionPending"));
            }
        }
    }

    // A node joins the pool: it is pulled and reported; `deployed` stays v2 throughout.
    seen.lock().clear();
    let joined = nodes.add();
    let d = wait_for(&s.deployments, "serve", "v2 on 4 nodes", in_sync_on(&v2, 4)).await;
    assert_serves(&joined, &s.ns, "serve", &v2_files);
    assert!(d.status.unwrap().nodes.unwrap().entries.iter().any(|e| e.node == joined && e.phase == NodePhase::Ready));
    {
        let during = seen.lock();
        assert_recorded(&during, "NodeJoined");
        assert!(during.iter().all(|s| deployed(s) == Some(v2.as_str())));
    }

    // A node leaves: dropped from status.
    nodes.remove(&joined);
    wait_for(&s.deployments, "serve", "3 nodes again", in_sync_on(&v2, 3)).await;

    // Rollback by pin: v1 was kept warm (keepPrevious 1), so nothing is fetched.
    let mut pinned_spec = spec.clone();
    pinned_spec["digest"] = json!(v1);
    apply(&s.deployments, "ModelDeployment", "serve", pinned_spec).await;
    let d = wait_for(&s.deployments, "serve", "rolled back to v1", in_sync_on(&v1, 3)).await;
    assert_eq!(kstatus::of(&d), KStatus::Current);
    for e in &d.status.as_ref().unwrap().nodes.as_ref().unwrap().entries {
        assert_eq!(e.bytes, Some(0), "{}: rollback fetched bytes", e.node);
        assert_serves(&e.node, &s.ns, "serve", &v1_files);
        assert_eq!(labels_of(&s.client, &e.node).await.get(&label), Some(&v1[7..19].to_owned()));
    }

    // Deletion: Jobs, Secrets, links, cached models and node labels all go.
    s.deployments.delete("serve", &DeleteParams::default()).await.unwrap();
    eventually("deployment deleted", Duration::from_secs(90), || async {
        s.deployments.get_opt("serve").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("its Jobs deleted", Duration::from_secs(30), || async {
        jobs_of(&s.client, &s.ns, "serve").await.is_empty().then_some(())
    })
    .await;
    for node in &nodes.names {
        assert!(!link(node, &s.ns, "serve").parent().unwrap().exists(), "{node}: the deployment's link survived");
        let models = Bed::get().node_path(node, CACHE).join("models/sha256");
        let left: Vec<_> = std::fs::read_dir(&models).unwrap().flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{node}: cached models no deployment keeps survived: {left:?}");
        assert!(!labels_of(&s.client, node).await.contains_key(&label), "{node}: ready label survived");
    }
    drop(s.operator.take());
}

#[tokio::test]
async fn a_failed_pull_is_reported_and_retried_when_credentials_are_fixed() {
    let bed = Bed::get();
    let s = setup("deploy-fail").await;
    let nodes = TestNodes::create("fail", 2);
    let repo = format!("deploy/auth-{}", unique_suffix());
    let v1_files = model_v(11, 1);
    let v1 = modctl_push(bed, &bed.auth, &repo, "stable", &v1_files);
    let (_, password) = bed.auth.basic_auth.clone().unwrap();
    let secrets: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    secrets.create(&PostParams::default(), &docker_config_secret("creds", &bed.auth, &password)).await.unwrap();
    let repository = format!("{}/{repo}", bed.auth.host);
    let model = json!({"repository": repository, "ref": {"tag": "stable"}, "insecure": true, "interval": "10s", "secretRef": {"name": "creds"}});
    apply(&s.models, "Model", "llm", model).await;
    let mut spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(), "pull": {"backoffLimit": 0}});
    apply(&s.deployments, "ModelDeployment", "serve", spec.clone()).await;
    wait_for(&s.deployments, "serve", "v1 on 2 nodes", in_sync_on(&v1, 2)).await;

    // The credentials reach the Job through a Secret of its own, owned by the Job.
    let job = jobs_of(&s.client, &s.ns, "serve").await.remove(0);
    let job_secrets: Api<Secret> = Api::namespaced(s.client.clone(), JOBS_NAMESPACE);
    let copy = job_secrets.get(&job.name_any()).await.unwrap();
    let owner = &copy.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Job", job.metadata.uid.as_deref().unwrap()));
    let config = String::from_utf8(copy.data.unwrap()["config.json"].0.clone()).unwrap();
    assert!(config.contains(&bed.auth.host));

    // While suspended, the tag moves to v2 and the Model resolves it; then the password is revoked.
    spec["suspend"] = json!(true);
    apply(&s.deployments, "ModelDeployment", "serve", spec.clone()).await;
    let d = wait_for(&s.deployments, "serve", "suspended", |st| {
        find(&st.conditions, READY).is_some_and(|c| c.reason == "Deployed" && c.message.ends_with("(suspended)"))
    })
    .await;
    assert_eq!(argo::status_of(&d), reason_table::expect(TABLE, &["spec.suspend: true", "Deployed"]).argo);
    let v2 = modctl_push(bed, &bed.auth, &repo, "stable", &model_v(11, 2));
    eventually("model resolves v2", Duration::from_secs(30), || async {
        let m = s.models.get("llm").await.ok()?;
        (m.status?.resolved?.digest == v2).then_some(())
    })
    .await;
    // v2 is desired and held back: Ready=False `Suspended`, nothing pulled.
    let d = wait_for(&s.deployments, "serve", "v2 held back", |st| {
        st.desired.as_ref().is_some_and(|d| d.digest == v2)
            && find(&st.conditions, READY).is_some_and(|c| c.reason == "Suspended")
    })
    .await;
    assert_eq!(deployed(d.status.as_ref().unwrap()), Some(v1.as_str()), "suspended: nothing pulled");
    let held = reason_table::expect(TABLE, &["spec.suspend: true", "Suspended"]);
    assert_eq!(kstatus::of(&d), held.kstatus, "Ready=False without Stalled: not a failure");
    assert!(jobs_of(&s.client, &s.ns, "serve").await.iter().all(|j| j.annotations()["modelpack.dev/digest"] == v1));
    secrets
        .replace("creds", &PostParams::default(), &docker_config_secret("creds", &bed.auth, "revoked"))
        .await
        .unwrap();

    // Resumed: the pulls fail; the deployment says so, and v1 stays deployed.
    spec["suspend"] = json!(false);
    apply(&s.deployments, "ModelDeployment", "serve", spec.clone()).await;
    let d =
        wait_for(&s.deployments, "serve", "PullFailed", |st| drift_reason(st).as_deref() == Some("PullFailed")).await;
    let status = d.status.clone().unwrap();
    assert_eq!(deployed(&status), Some(v1.as_str()));
    let pull_failed = reason_table::expect(TABLE, &["PullFailed"]);
    assert_eq!((kstatus::of(&d), argo::status_of(&d)), (pull_failed.kstatus, pull_failed.argo));
    let drifted = find(&status.conditions, DRIFTED).unwrap();
    assert_eq!((drifted.status, drifted.reason.as_str()), (ConditionStatus::True, "PullFailed"));
    let failed = status.nodes.unwrap().entries.into_iter().find(|e| e.phase == NodePhase::Failed).unwrap();
    let message = failed.message.unwrap_or_default();
    assert!(message.contains("401") || message.to_lowercase().contains("unauthorized"), "{message}");
    for node in &nodes.names {
        assert_serves(node, &s.ns, "serve", &v1_files);
    }

    // Fixed credentials: the failed pulls are retried at once and v2 rolls out.
    secrets
        .replace("creds", &PostParams::default(), &docker_config_secret("creds", &bed.auth, &password))
        .await
        .unwrap();
    let d = wait_for(&s.deployments, "serve", "v2 after the fix", in_sync_on(&v2, 2)).await;
    assert_eq!(kstatus::of(&d), KStatus::Current);
}

#[tokio::test]
async fn a_tag_moved_to_an_unsigned_artifact_pulls_nothing_until_it_is_signed() {
    let bed = Bed::get();
    let s = setup("deploy-gate").await;
    let nodes = TestNodes::create("gate", 3);
    let repo = format!("deploy/gate-{}", unique_suffix());
    let repository = format!("{}/{repo}", bed.plain.host);

    // A Model that verifies with cosign: its signed version rolls out.
    let key = CosignKey::generate();
    let signed_files = ModelFiles::new(22, &[("model.safetensors", 50_000)]);
    let signed = modctl_push(bed, &bed.plain, &repo, "prod", &signed_files);
    key.sign(&format!("{repository}@{signed}"));
    let keys: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let trust = json!({"metadata": {"name": "keys"}, "stringData": {"release.pub": key.public_pem()}});
    keys.create(&PostParams::default(), &serde_json::from_value(trust).unwrap()).await.unwrap();
    let verified = json!({"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "10s",
        "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}});
    apply(&s.models, "Model", "signed", verified).await;
    apply(
        &s.deployments,
        "ModelDeployment",
        "gated",
        json!({"modelRef": {"name": "signed"}, "nodeSelector": nodes.selector()}),
    )
    .await;
    wait_for(&s.deployments, "gated", "the signed version on 3 nodes", in_sync_on(&signed, 3)).await;

    // The tag moves to an unsigned artifact: nothing is pulled, VerificationFailed, v1 stays.
    let unsigned = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(23, &[("model.safetensors", 50_000)]));
    let d = wait_for(&s.deployments, "gated", "VerificationFailed", |st| {
        drift_reason(st).as_deref() == Some("VerificationFailed")
    })
    .await;
    assert_eq!(kstatus::of(&d), KStatus::Failed);
    assert_eq!(argo::status_of(&d), "Degraded");
    assert_eq!(model_kstatus(&s.models, "signed").await, KStatus::Failed);
    assert_eq!(argo::status_of(&s.models.get("signed").await.unwrap()), "Degraded");
    let status = d.status.unwrap();
    assert_eq!(deployed(&status), Some(signed.as_str()));
    assert_eq!(status.desired.as_ref().map(|v| v.digest.as_str()), Some(signed.as_str()));
    assert!(status.drift.unwrap().message.contains(&unsigned[7..19]), "the message names the rejected digest");
    let pulled_unsigned =
        jobs_of(&s.client, &s.ns, "gated").await.iter().any(|j| j.annotations()["modelpack.dev/digest"] == unsigned);
    assert!(!pulled_unsigned, "an unverified version was pulled");
    for node in &nodes.names {
        assert_serves(node, &s.ns, "gated", &signed_files);
    }
    // Once signed, it rolls out.
    key.sign(&format!("{repository}@{unsigned}"));
    let d = wait_for(&s.deployments, "gated", "the newly signed version", in_sync_on(&unsigned, 3)).await;
    assert_eq!(kstatus::of(&d), KStatus::Current);
}

#[tokio::test]
async fn a_restarted_operator_makes_no_duplicate_jobs() {
    let bed = Bed::get();
    let mut s = setup("deploy-restart").await;
    let nodes = TestNodes::create("restart", 3);
    let repo = format!("deploy/restart-{}", unique_suffix());
    let files = ModelFiles::new(21, &[("model.safetensors", 6_000_000), ("config.json", 100)]);
    let digest = modctl_push(bed, &bed.plain, &repo, "v1", &files);
    let repository = format!("{}/{repo}", bed.plain.host);

    // A rollout one node at a time, with the operator killed after the first Job and restarted.
    apply(&s.models, "Model", "open", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;
    let jobs_api: Api<Job> = Api::namespaced(s.client.clone(), JOBS_NAMESPACE);
    let owner = format!("{}/steady", s.ns);
    let seen_jobs = Recording::new();
    seen_jobs.watch_with(&jobs_api, watcher::Config::default(), move |job: Job| {
        (job.annotations().get("modelpack.dev/deployment") == Some(&owner))
            .then(|| (job.name_any(), job.metadata.uid.clone().unwrap_or_default()))
    });
    let spec = json!({"modelRef": {"name": "open"}, "nodeSelector": nodes.selector(), "pull": {"maxParallel": 1}});
    apply(&s.deployments, "ModelDeployment", "steady", spec).await;
    eventually("the first pull Job", Duration::from_secs(30), || async {
        (!seen_jobs.lock().is_empty()).then_some(())
    })
    .await;
    s.operator.take().unwrap().kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _restarted = Operator::start(&s.ns);
    let d = wait_for(&s.deployments, "steady", "v1 on 3 nodes", in_sync_on(&digest, 3)).await;
    assert_eq!(kstatus::of(&d), KStatus::Current);
    let mut uids = BTreeMap::<String, BTreeSet<String>>::new();
    for (name, uid) in seen_jobs.lock().iter() {
        uids.entry(name.clone()).or_default().insert(uid.clone());
    }
    assert_eq!(uids.len(), 3, "one Job per node: {uids:?}");
    assert!(uids.values().all(|u| u.len() == 1), "a Job was created twice: {uids:?}");
    for node in &nodes.names {
        assert_serves(node, &s.ns, "steady", &files);
    }
}
