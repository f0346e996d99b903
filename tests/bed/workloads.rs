//! The hand-over of a ModelDeployment's version to the workloads of `spec.workloads`, on the bed:
//! the real apiserver validates image volumes and keeps managedFields, the real
//! kube-controller-manager rolls Deployments (new ReplicaSet), StatefulSets and DaemonSets.
//!
//! Test workloads select no node (`modelpack.dev/none`), so their pods stay Pending: the bed's
//! node executor runs only the operator's image. A Deployment with replicas 1 therefore reports
//! its new pod as updated but never ready (the hand-over stays RollingOut, Argo CD Progressing);
//! workloads with no replicas roll out at once (RolledOut, Healthy).

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use modelpack_operator::api::conditions::{ConditionStatus, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelDeploymentStatus};
use serde_json::{Value, json};
use support::fixtures::{CosignKey, ModelFiles, modctl_push};
use support::{
    Bed, Operator, Recording, TestNodes, argo, ensure_namespace, eventually, install_crds, namespace, unique_suffix,
};

const JOBS_NAMESPACE: &str = "modelpack-system";
const MANAGER: &str = "modelpack-operator-workloads";
const ANNOTATION: &str = "modelpack.dev/digest";
const CONDITION: &str = "WorkloadsUpdated";

struct Setup {
    client: Client,
    ns: String,
    models: Api<Model>,
    deployments: Api<ModelDeployment>,
    _operator: Operator,
}

async fn setup(prefix: &str) -> Setup {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, prefix).await;
    Setup {
        models: Api::namespaced(client.clone(), &ns),
        deployments: Api::namespaced(client.clone(), &ns),
        _operator: Operator::start(&ns),
        client,
        ns,
    }
}

async fn apply_md(api: &Api<ModelDeployment>, name: &str, spec: Value) {
    let obj = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

async fn apply_model(api: &Api<Model>, name: &str, spec: Value) {
    let obj =
        json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": spec});
    api.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// A workload whose pods select no node; `volume`: an image volume `model` with that reference.
fn workload(kind: &str, name: &str, replicas: i32, volume: Option<&str>) -> Value {
    let mut pod = json!({
        "nodeSelector": {"modelpack.dev/none": "none"},
        "containers": [{"name": "serve", "image": "registry.example.com/serve:1"}],
    });
    if let Some(reference) = volume {
        pod["volumes"] = json!([{"name": "model", "image": {"reference": reference, "pullPolicy": "IfNotPresent"}}]);
        pod["containers"][0]["volumeMounts"] = json!([{"name": "model", "mountPath": "/model"}]);
    }
    let mut spec = json!({
        "replicas": replicas,
        "selector": {"matchLabels": {"app": name}},
        "template": {"metadata": {"labels": {"app": name}}, "spec": pod},
    });
    match kind {
        "StatefulSet" => spec["serviceName"] = json!(name),
        "DaemonSet" => {
            spec.as_object_mut().unwrap().remove("replicas");
        }
        _ => {}
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name}, "spec": spec})
}

async fn create_workload(client: &Client, ns: &str, obj: Value) {
    let kind = obj["kind"].as_str().unwrap().to_owned();
    let name = obj["metadata"]["name"].as_str().unwrap().to_owned();
    let api = dynamic(client, ns, &kind);
    api.patch(&name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

fn dynamic(client: &Client, ns: &str, kind: &str) -> Api<kube::api::DynamicObject> {
    let resource = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk("apps", "v1", kind));
    Api::namespaced_with(client.clone(), ns, &resource)
}

async fn get_workload(client: &Client, ns: &str, kind: &str, name: &str) -> Value {
    serde_json::to_value(dynamic(client, ns, kind).get(name).await.unwrap()).unwrap()
}

fn template_digest(obj: &Value) -> Option<String> {
    obj["spec"]["template"]["metadata"]["annotations"][ANNOTATION].as_str().map(str::to_owned)
}

fn volume_reference(obj: &Value) -> Option<String> {
    let volumes = obj["spec"]["template"]["spec"]["volumes"].as_array()?;
    let model = volumes.iter().find(|v| v["name"] == "model")?;
    model["image"]["reference"].as_str().map(str::to_owned)
}

/// What the watches saw, in order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    /// The ModelDeployment's status: deployed digest, nodes pulling.
    Status { deployed: Option<String>, pulling: i32 },
    /// A workload's generation and template digest.
    Workload { name: String, generation: i64, digest: Option<String> },
}

fn record(s: &Setup, md: &str, workloads: &[(&str, &str)]) -> Arc<Recording<Seen>> {
    let log = Recording::new();
    log.watch(&s.deployments, md, |d: ModelDeployment| {
        let st: ModelDeploymentStatus = d.status.unwrap_or_default();
        let deployed = st.deployed.map(|d| d.digest);
        let pulling = st.nodes.map_or(0, |n| n.pulling);
        Some(Seen::Status { deployed, pulling })
    });
    for (kind, name) in workloads {
        log.watch(&dynamic(&s.client, &s.ns, kind), name, |obj: DynamicObject| {
            let value = serde_json::to_value(&obj).unwrap();
            Some(Seen::Workload {
                name: obj.name_any(),
                generation: obj.metadata.generation.unwrap_or_default(),
                digest: template_digest(&value),
            })
        });
    }
    log
}

/// Every template change of `name` the watch saw: (generation, digest), in order, each once.
fn template_changes(log: &[Seen], name: &str) -> Vec<(i64, Option<String>)> {
    let mut out: Vec<(i64, Option<String>)> = Vec::new();
    for s in log {
        if let Seen::Workload { name: n, generation, digest } = s
            && n == name
            && out.last().is_none_or(|(g, _)| g != generation)
        {
            out.push((*generation, digest.clone()));
        }
    }
    out
}

/// No workload carried `digest` before the deployment's status said every node holds it, nor
/// while any node was pulling.
fn assert_handed_over_after_deployed(log: &[Seen], digest: &str) {
    let mut last_status: Option<(Option<String>, i32)> = None;
    let mut saw_pulling = false;
    for s in log {
        match s {
            Seen::Status { deployed, pulling } => {
                saw_pulling |= *pulling > 0;
                last_status = Some((deployed.clone(), *pulling));
            }
            Seen::Workload { name, digest: Some(d), .. } if d == digest => {
                let (deployed, pulling) = last_status.clone().unwrap_or_default();
                assert_eq!(
                    deployed.as_deref(),
                    Some(digest),
                    "{name} got {digest} before `deployed` switched: {log:?}"
                );
                assert_eq!(pulling, 0, "{name} got {digest} while a node was pulling");
            }
            _ => {}
        }
    }
    assert!(saw_pulling, "the watch never saw a node pulling: the order was not observed: {log:?}");
}

async fn wait_for_md(
    api: &Api<ModelDeployment>,
    name: &str,
    what: &str,
    check: impl Fn(&ModelDeployment) -> bool,
) -> ModelDeployment {
    eventually(&format!("{name}: {what}"), Duration::from_secs(120), || async {
        let d = api.get(name).await.ok()?;
        let s = d.status.as_ref()?;
        (s.observed_generation == d.metadata.generation && check(&d)).then_some(d)
    })
    .await
}

fn deployed_is(digest: &str) -> impl Fn(&ModelDeployment) -> bool + '_ {
    move |d| {
        let s = d.status.as_ref().unwrap();
        s.deployed.as_ref().is_some_and(|v| v.digest == digest)
            && s.drift.as_ref().is_some_and(|d| d.reason == "InSync")
    }
}

async fn wait_for_template(client: &Client, ns: &str, kind: &str, name: &str, digest: &str) -> Value {
    eventually(&format!("{kind} {name} carries {digest}"), Duration::from_secs(60), || async {
        let obj = get_workload(client, ns, kind, name).await;
        (template_digest(&obj).as_deref() == Some(digest)).then_some(obj)
    })
    .await
}

/// The ReplicaSets of Deployment `name` whose pod template carries `digest`.
async fn replica_sets_with(client: &Client, ns: &str, name: &str, digest: &str) -> Vec<ReplicaSet> {
    let api: Api<ReplicaSet> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default().labels(&format!("app={name}"))).await.unwrap();
    list.items
        .into_iter()
        .filter(|rs| {
            let template = rs.spec.as_ref().and_then(|s| s.template.as_ref());
            let annotations = template.and_then(|t| t.metadata.as_ref()).and_then(|m| m.annotations.as_ref());
            annotations.and_then(|a| a.get(ANNOTATION)).map(String::as_str) == Some(digest)
        })
        .collect()
}

/// The leaf fields a manager owns, as paths (`k:` list keys are kept as path steps, not leaves).
fn owned_leaves(obj: &Value, manager: &str) -> Vec<String> {
    fn walk(v: &Value, path: String, out: &mut Vec<String>) {
        let fields: Vec<(&String, &Value)> =
            v.as_object().map(|o| o.iter().filter(|(k, _)| k.as_str() != ".").collect()).unwrap_or_default();
        let children: Vec<_> =
            fields.iter().filter(|(k, c)| !(k.starts_with("f:") && is_key_field(&path, k, c))).collect();
        if children.is_empty() {
            out.push(path);
            return;
        }
        for (k, c) in children {
            walk(c, format!("{path}/{k}"), out);
        }
    }
    // The name of a list entry identifies it (its merge key): owning the entry owns its key.
    fn is_key_field(path: &str, k: &str, c: &Value) -> bool {
        path.rsplit('/').next().is_some_and(|last| last.starts_with("k:")) && k == "f:name" && c == &json!({})
    }
    let entries = obj["metadata"]["managedFields"].as_array().cloned().unwrap_or_default();
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e["manager"] == manager) {
        walk(&e["fieldsV1"], String::new(), &mut out);
    }
    out.sort();
    out
}

async fn events_of(client: &Client, ns: &str, name: &str) -> Vec<Event> {
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let list = api.list(&ListParams::default()).await.unwrap();
    list.items.into_iter().filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)).collect()
}

/// Points `tag` at the manifest `digest` already in `repo`.
async fn retag(registry: &support::Registry, repo: &str, tag: &str, digest: &str) {
    let manifest = support::craft::manifest_bytes(registry, repo, digest).await;
    let (client, auth) = support::craft::client(registry);
    let reference = oci_client::Reference::with_tag(registry.host.clone(), repo.into(), tag.into());
    client.auth(&reference, &auth, oci_client::RegistryOperation::Push).await.unwrap();
    let media_type = "application/vnd.oci.image.manifest.v1+json".parse().unwrap();
    client.push_manifest_raw(&reference, manifest, media_type).await.unwrap();
}

fn condition_of(d: &ModelDeployment) -> Option<(ConditionStatus, String, String)> {
    let s = d.status.as_ref()?;
    find(&s.conditions, CONDITION).map(|c| (c.status, c.reason.clone(), c.message.clone()))
}

#[tokio::test]
async fn workloads_follow_each_verified_promotion_once_after_every_node_holds_it_and_roll_back() {
    let bed = Bed::get();
    let s = setup("workloads").await;
    let nodes = TestNodes::create("wl", 3);
    let repo = format!("workloads/llm-{}", unique_suffix());
    let repository = format!("{}/{repo}", bed.plain.host);
    let key = CosignKey::generate();
    let v1 = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(31, &[("model.safetensors", 300_000)]));
    key.sign(&format!("{repository}@{v1}"));
    let keys: Api<Secret> = Api::namespaced(s.client.clone(), &s.ns);
    let trust = json!({"metadata": {"name": "keys"}, "stringData": {"release.pub": key.public_pem()}});
    keys.create(&PostParams::default(), &serde_json::from_value(trust).unwrap()).await.unwrap();
    apply_model(
        &s.models,
        "llm",
        json!({"repository": repository, "ref": {"tag": "prod"}, "insecure": true, "interval": "10s",
            "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}}),
    )
    .await;
    let tag_reference = format!("{repository}:prod");
    create_workload(&s.client, &s.ns, workload("Deployment", "web", 1, Some(&tag_reference))).await;
    create_workload(&s.client, &s.ns, workload("StatefulSet", "db", 0, None)).await;
    let log = record(&s, "serve", &[("Deployment", "web"), ("StatefulSet", "db")]);
    let spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(), "pull": {"maxParallel": 1},
        "workloads": [{"kind": "Deployment", "name": "web", "imageVolume": "model"},
                      {"kind": "StatefulSet", "name": "db"}]});
    apply_md(&s.deployments, "serve", spec.clone()).await;

    // First rollout: handed over once every node holds v1.
    wait_for_md(&s.deployments, "serve", "v1 deployed", deployed_is(&v1)).await;
    let web = wait_for_template(&s.client, &s.ns, "Deployment", "web", &v1).await;
    assert_eq!(volume_reference(&web), Some(format!("{repository}@{v1}")), "the image volume is pinned to v1");
    wait_for_template(&s.client, &s.ns, "StatefulSet", "db", &v1).await;
    assert_handed_over_after_deployed(&log.lock(), &v1);
    // The operator owns exactly the annotation and the image reference.
    assert_eq!(
        owned_leaves(&web, MANAGER),
        [
            format!("/f:spec/f:template/f:metadata/f:annotations/f:{ANNOTATION}"),
            "/f:spec/f:template/f:spec/f:volumes/k:{\"name\":\"model\"}/f:image/f:reference".to_owned(),
        ]
    );
    let db = get_workload(&s.client, &s.ns, "StatefulSet", "db").await;
    assert_eq!(owned_leaves(&db, MANAGER), [format!("/f:spec/f:template/f:metadata/f:annotations/f:{ANNOTATION}")]);
    let rs = eventually("a ReplicaSet of web with v1", Duration::from_secs(30), || async {
        let found = replica_sets_with(&s.client, &s.ns, "web", &v1).await;
        (!found.is_empty()).then_some(found)
    })
    .await;
    assert_eq!(rs.len(), 1);

    // Status: web updated (its pod is Pending, never ready), db rolled out (no replicas).
    let d = wait_for_md(&s.deployments, "serve", "web's new pod counted", |d| {
        let w = &d.status.as_ref().unwrap().workloads;
        w.len() == 2 && w[0].updated_replicas == 1 && w[1].observed_generation == w[1].generation
    })
    .await;
    let w = &d.status.as_ref().unwrap().workloads;
    assert_eq!(
        (w[0].kind.as_str(), w[0].name.as_str(), w[0].digest.as_deref()),
        ("Deployment", "web", Some(v1.as_str()))
    );
    assert_eq!((w[0].replicas, w[0].ready_replicas), (1, 0));
    assert_eq!((w[1].kind.as_str(), w[1].digest.as_deref()), ("StatefulSet", Some(v1.as_str())));
    let (status, reason, message) = condition_of(&d).unwrap();
    assert_eq!((status, reason.as_str()), (ConditionStatus::False, "RollingOut"), "{message}");
    assert!(message.contains("Deployment/web: 1/1 updated, 0/1 ready"), "{message}");
    assert_eq!(argo::status_of(&d), "Progressing");
    let handed: Vec<String> = events_of(&s.client, &s.ns, "serve")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("WorkloadUpdated"))
        .filter_map(|e| e.note)
        .collect();
    assert_eq!(handed.len(), 2, "one event per workload: {handed:?}");
    assert!(handed.iter().any(|n| n.contains("Deployment web") && n.contains(&format!("{repository}@{v1}"))));

    // Promotion to a signed v2: handed over once, after every node holds it.
    log.lock().clear();
    let v2 = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(32, &[("model.safetensors", 300_000)]));
    key.sign(&format!("{repository}@{v2}"));
    wait_for_md(&s.deployments, "serve", "v2 deployed", deployed_is(&v2)).await;
    let web = wait_for_template(&s.client, &s.ns, "Deployment", "web", &v2).await;
    assert_eq!(volume_reference(&web), Some(format!("{repository}@{v2}")));
    wait_for_template(&s.client, &s.ns, "StatefulSet", "db", &v2).await;
    eventually("a ReplicaSet of web with v2", Duration::from_secs(30), || async {
        (!replica_sets_with(&s.client, &s.ns, "web", &v2).await.is_empty()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // A second hand-over to the same workload is its own event (not folded into the first's series).
    let web_events: Vec<String> = events_of(&s.client, &s.ns, "serve")
        .await
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some("WorkloadUpdated"))
        .filter_map(|e| e.note)
        .filter(|n| n.starts_with("Deployment web"))
        .collect();
    assert_eq!(web_events.len(), 2, "{web_events:?}");
    assert!(web_events.iter().any(|n| n.contains(&format!("handed {v2}"))), "{web_events:?}");
    {
        let seen = log.lock();
        assert_handed_over_after_deployed(&seen, &v2);
        for name in ["web", "db"] {
            let changes = template_changes(&seen, name);
            let to_v2: Vec<_> = changes.iter().filter(|(_, d)| d.as_deref() == Some(v2.as_str())).collect();
            assert_eq!(to_v2.len(), 1, "{name} patched once for v2: {changes:?}");
        }
    }

    // The tag moves to an unsigned v3: VerificationFailed, nothing is written to the workloads.
    let generations =
        |web: &Value, db: &Value| (web["metadata"]["generation"].clone(), db["metadata"]["generation"].clone());
    let before = generations(&web, &get_workload(&s.client, &s.ns, "StatefulSet", "db").await);
    let v3 = modctl_push(bed, &bed.plain, &repo, "prod", &ModelFiles::new(33, &[("model.safetensors", 300_000)]));
    wait_for_md(&s.deployments, "serve", "VerificationFailed", |d| {
        d.status
            .as_ref()
            .unwrap()
            .drift
            .as_ref()
            .is_some_and(|d| d.reason == "VerificationFailed" && d.message.contains(&v3[7..19]))
    })
    .await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    let web = get_workload(&s.client, &s.ns, "Deployment", "web").await;
    let db = get_workload(&s.client, &s.ns, "StatefulSet", "db").await;
    assert_eq!(generations(&web, &db), before, "a workload was patched for an unverified version");
    assert_eq!(template_digest(&web), Some(v2.clone()));

    // Rollback: the tag moves back to v1 (signed, and kept in every node's cache).
    log.lock().clear();
    retag(&bed.plain, &repo, "prod", &v1).await;
    wait_for_md(&s.deployments, "serve", "back on v1", deployed_is(&v1)).await;
    let web = wait_for_template(&s.client, &s.ns, "Deployment", "web", &v1).await;
    assert_eq!(volume_reference(&web), Some(format!("{repository}@{v1}")));
    wait_for_template(&s.client, &s.ns, "StatefulSet", "db", &v1).await;
    assert!(!log.lock().iter().any(|s| matches!(s, Seen::Workload { digest: Some(d), .. } if *d == v3)));
    let versions: Vec<_> = template_changes(&log.lock(), "web").into_iter().map(|(_, d)| d).collect();
    assert_eq!(versions.last(), Some(&Some(v1.clone())));
}

#[tokio::test]
async fn a_missing_workload_or_image_volume_is_reported_and_the_node_rollout_completes() {
    let bed = Bed::get();
    let s = setup("workloads-missing").await;
    let nodes = TestNodes::create("wlm", 2);
    let repo = format!("workloads/missing-{}", unique_suffix());
    let repository = format!("{}/{repo}", bed.plain.host);
    let v1 = modctl_push(bed, &bed.plain, &repo, "v1", &ModelFiles::new(41, &[("model.safetensors", 100_000)]));
    apply_model(&s.models, "llm", json!({"repository": repository, "ref": {"tag": "v1"}, "insecure": true})).await;
    create_workload(&s.client, &s.ns, workload("Deployment", "novol", 0, None)).await;
    create_workload(&s.client, &s.ns, workload("DaemonSet", "agent", 0, None)).await;
    let spec = json!({"modelRef": {"name": "llm"}, "nodeSelector": nodes.selector(),
        "workloads": [{"kind": "Deployment", "name": "ghost"},
                      {"kind": "Deployment", "name": "novol", "imageVolume": "model"},
                      {"kind": "DaemonSet", "name": "agent"}]});
    apply_md(&s.deployments, "serve", spec).await;

    // The nodes roll out regardless; the problems are in the condition, status and events.
    let d = wait_for_md(&s.deployments, "serve", "v1 deployed, problems reported", |d| {
        deployed_is(&v1)(d) && condition_of(d).is_some_and(|c| c.1 == "WorkloadNotFound")
    })
    .await;
    let (status, _, message) = condition_of(&d).unwrap();
    assert_eq!(status, ConditionStatus::False);
    assert!(message.contains("Deployment ghost not found") && message.contains("no volume model"), "{message}");
    assert_eq!(argo::status_of(&d), "Degraded");
    let w = &d.status.as_ref().unwrap().workloads;
    assert_eq!(w[0].message.as_deref(), Some("Deployment ghost not found"));
    assert!(w[1].message.as_deref().is_some_and(|m| m.contains("no volume model")));
    // The annotation still reaches the workloads that exist.
    wait_for_template(&s.client, &s.ns, "Deployment", "novol", &v1).await;
    wait_for_template(&s.client, &s.ns, "DaemonSet", "agent", &v1).await;
    let reasons: Vec<String> =
        events_of(&s.client, &s.ns, "serve").await.into_iter().filter_map(|e| e.reason).collect();
    for reason in ["WorkloadNotFound", "ImageVolumeNotFound"] {
        assert_eq!(reasons.iter().filter(|r| *r == reason).count(), 1, "{reason} once: {reasons:?}");
    }

    // Fixed: the workload appears and the volume is added; both are handed v1 and roll out.
    create_workload(&s.client, &s.ns, workload("Deployment", "ghost", 0, None)).await;
    create_workload(&s.client, &s.ns, workload("Deployment", "novol", 0, Some(&format!("{repository}:v1")))).await;
    let d = wait_for_md(&s.deployments, "serve", "RolledOut", |d| condition_of(d).is_some_and(|c| c.1 == "RolledOut"))
        .await;
    assert_eq!(condition_of(&d).unwrap().0, ConditionStatus::True);
    assert_eq!(argo::status_of(&d), "Healthy");
    let novol = get_workload(&s.client, &s.ns, "Deployment", "novol").await;
    assert_eq!(volume_reference(&novol), Some(format!("{repository}@{v1}")));
    let ghost: Api<Deployment> = Api::namespaced(s.client.clone(), &s.ns);
    let ghost = serde_json::to_value(ghost.get("ghost").await.unwrap()).unwrap();
    assert_eq!(template_digest(&ghost), Some(v1.clone()));
}
