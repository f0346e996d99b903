//! What one reconcile of a ModelDeployment reads, gathered before anything is decided (linkerd's
//! index): the Model and the version it offers, the registry access new Jobs get, the selected
//! nodes and their ready labels (from the node store), this deployment's Jobs with the results of
//! finished ones, and the listed workloads with their pods (`observe.rs`).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Api, ResourceExt};

use super::plan::{Desired, JobState, NodeInventory, ObservedJob};
use super::workloads::Observed;
use super::{desired, jobs, nodes, observe};
use crate::api::conditions::Reason;
use crate::api::{Model, ModelCache, ModelDeployment, ModelDeploymentStatus, NodePhase};
use crate::controller::access::{Access, access_for};
use crate::controller::{DeploymentContext, Error};

pub struct Index {
    pub model: Option<Model>,
    pub desired: Desired,
    /// The Model's registry access, when there is a version to pull.
    pub access: Option<Access>,
    /// Fingerprint of `access`, stamped on the Jobs it creates (empty without access).
    pub fingerprint: String,
    /// Selected node names.
    pub nodes: Vec<String>,
    /// Every Job of this deployment, by node.
    pub jobs: BTreeMap<String, Vec<ObservedJob>>,
    /// The selected nodes' ModelCaches.
    pub inventories: BTreeMap<String, NodeInventory>,
    /// When each selected node's ModelCache was measured, as this pass read it (None: no cache).
    pub inventories_seen: BTreeMap<String, Option<Time>>,
    /// The deployment's ready label, and every node with the value of it it carries.
    pub label: String,
    pub labelled: BTreeMap<String, Option<String>>,
    /// One per `spec.workloads` entry.
    pub workloads: Vec<Observed>,
}

impl Index {
    /// The Model's repository, when the Model is known.
    pub fn repository(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.spec.repository.as_str())
    }
}

pub async fn gather(
    deployment: &ModelDeployment,
    ctx: &DeploymentContext,
    previous: &ModelDeploymentStatus,
) -> Result<Index, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let model =
        ctx.models.get(&ObjectRef::new(&deployment.spec.model_ref.name).within(&namespace)).map(|m| Model::clone(&m));
    let mut desired = desired::desired(deployment, model.as_ref());
    if let Some(message) = ctx.settings.bound.refusal(&deployment.spec.tolerations) {
        desired = Desired::Blocked { reason: Reason::TolerationNotAllowed, message, stalled: true };
    }
    let mut access = None;
    if let (Some(model), Desired::Version { .. }) = (&model, &desired) {
        match access_for(&ctx.client, model, &namespace).await {
            Ok(a) => access = Some(a),
            Err(Error::Kube(e)) => return Err(Error::Kube(e)),
            Err(e) => {
                desired = Desired::Blocked { reason: Reason::RegistryAccess, message: e.to_string(), stalled: false }
            }
        }
    }
    let fingerprint = access.as_ref().map(|a| format!("{:016x}", a.fingerprint())).unwrap_or_default();
    let nodes = nodes::selected(deployment, &ctx.settings.bound, ctx.nodes.state().iter().map(|n| n.as_ref()));
    let jobs = observe_jobs(ctx, &namespace, &deployment.name_any(), previous).await?;
    let inventories = node_inventories(ctx, &format!("{namespace}/{}", deployment.name_any()), &nodes);
    let inventories_seen = nodes.iter().map(|n| (n.clone(), measured_at(&ctx.inventories, n))).collect();
    let label = nodes::ready_label(&namespace, &deployment.name_any());
    let labelled = node_labels(&ctx.nodes, &label);
    let workloads = observe::workloads(&ctx.client, &ctx.nodes, &namespace, &deployment.spec.workloads).await?;
    Ok(Index {
        model,
        desired,
        access,
        fingerprint,
        nodes,
        jobs,
        inventories,
        inventories_seen,
        label,
        labelled,
        workloads,
    })
}

/// Every node in the store, with the value of `label` it carries.
pub fn node_labels(store: &reflector::Store<Node>, label: &str) -> BTreeMap<String, Option<String>> {
    store.state().iter().map(|n| (n.name_any(), n.labels().get(label).cloned())).collect()
}

fn measured_at(store: &reflector::Store<ModelCache>, node: &str) -> Option<Time> {
    store.get(&ObjectRef::new(node)).and_then(|c| c.status.as_ref().and_then(|s| s.observed_at.clone()))
}

/// Whether a selected node's ModelCache changed while this pass ran in a way that concerns the
/// status it wrote (`key` is `namespace/name`). That change's event was judged against the status
/// before this pass (a pull not yet marked Failed) and may have started nothing.
pub fn missed_cache_change(
    store: &reflector::Store<ModelCache>,
    seen: &BTreeMap<String, Option<Time>>,
    key: &str,
    status: &ModelDeploymentStatus,
) -> bool {
    seen.iter().any(|(node, then)| {
        let Some(cache) = store.get(&ObjectRef::new(node)) else { return false };
        let Some(now) = cache.status.as_ref() else { return false };
        now.observed_at.as_ref() != then.as_ref() && nodes::cache_concerns(status, key, node, now)
    })
}

/// What the selected nodes' ModelCaches say about `deployment` (`namespace/name`). One that left
/// models out (a result too long for a termination message) says nothing.
fn node_inventories(ctx: &DeploymentContext, deployment: &str, nodes: &[String]) -> BTreeMap<String, NodeInventory> {
    let mut out = BTreeMap::new();
    for cache in ctx.inventories.state() {
        let Some(status) = cache.status.as_ref().filter(|s| s.models.len() == s.model_count as usize) else { continue };
        if !nodes.contains(&cache.name_any()) {
            continue;
        }
        let current = status.models.iter().filter(|m| m.current.iter().any(|d| d == deployment));
        out.insert(
            cache.name_any(),
            NodeInventory {
                observed_at: status.observed_at.clone(),
                current: current.map(|m| m.digest.clone()).collect(),
                free: u64::try_from(status.free).unwrap_or(0),
            },
        );
    }
    out
}

/// This deployment's pull Jobs by node, with the results of finished ones whose outcome status does
/// not hold yet (read from their pods' termination messages).
async fn observe_jobs(
    ctx: &DeploymentContext,
    namespace: &str,
    name: &str,
    previous: &ModelDeploymentStatus,
) -> Result<BTreeMap<String, Vec<ObservedJob>>, Error> {
    let key = jobs::deployment_key(namespace, name);
    let recorded: BTreeMap<(&str, &str), &crate::api::NodeEntry> = previous
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        // Failed results are read again: the room an InsufficientStorage pull needed is not in status.
        .filter(|e| e.phase == NodePhase::Ready && e.completed_at.is_some())
        .map(|e| ((e.node.as_str(), e.digest.as_str()), e))
        .collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let mut by_node: BTreeMap<String, Vec<ObservedJob>> = BTreeMap::new();
    for job in ctx.jobs.state() {
        let labels = job.labels();
        if labels.get(jobs::DEPLOYMENT_LABEL) != Some(&key)
            || labels.get(jobs::ROLE_LABEL).map(String::as_str) != Some(jobs::Role::Pull.as_str())
        {
            continue;
        }
        let annotations = job.annotations();
        let (Some(node), Some(digest)) =
            (annotations.get(jobs::NODE_ANNOTATION), annotations.get(jobs::DIGEST_ANNOTATION))
        else {
            continue;
        };
        let mut state = jobs::job_state(&job);
        let (mut needs, mut contents) = (None, None);
        let finished = matches!(state, JobState::Succeeded { .. } | JobState::Failed { .. });
        if finished {
            state = match recorded.get(&(node.as_str(), digest.as_str())) {
                // Status already holds this result: no need to read pods again.
                Some(entry) => recorded_state(state, entry),
                None => {
                    let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
                    let list = pods.list(&ListParams::default().labels(&selector)).await?;
                    let outcome = jobs::outcome(&list.items);
                    needs = outcome.as_ref().and_then(|o| o.needs);
                    // A report about another digest than the Job's says nothing of this one.
                    let about_this = outcome.as_ref().filter(|o| &o.digest == digest);
                    contents = about_this.and_then(|o| o.contents.as_deref().cloned());
                    jobs::with_result(state, outcome, &list.items)
                }
            };
        }
        by_node.entry(node.clone()).or_default().push(ObservedJob {
            name: job.name_any(),
            digest: digest.clone(),
            state,
            access: annotations.get(jobs::ACCESS_ANNOTATION).cloned(),
            deleting: job.metadata.deletion_timestamp.is_some(),
            needs,
            contents,
        });
    }
    Ok(by_node)
}

fn recorded_state(state: JobState, entry: &crate::api::NodeEntry) -> JobState {
    match state {
        JobState::Succeeded { started, completed, .. } => {
            JobState::Succeeded { started, completed, bytes: entry.bytes }
        }
        JobState::Failed { started, completed, message } => {
            JobState::Failed { started, completed, message: entry.message.clone().unwrap_or(message) }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::runtime::watcher;
    use serde_json::json;

    fn cache(node: &str, observed_at: &str, models: serde_json::Value) -> ModelCache {
        let count = models.as_array().map_or(0, Vec::len);
        serde_json::from_value(json!({
            "metadata": {"name": node},
            "spec": {"node": node},
            "status": {"capacity": 100, "used": 10, "free": 90, "modelCount": count, "models": models, "observedAt": observed_at}
        }))
        .unwrap()
    }

    #[test]
    fn a_cache_change_during_the_pass_is_looked_at_again_when_it_concerns_the_status_written() {
        let (store, mut writer) = reflector::store();
        let before = "2026-11-29T10:00:00Z";
        writer.apply_watcher_event(&watcher::Event::Apply(cache("n1", before, json!([]))));
        let seen = BTreeMap::from([("n1".to_owned(), measured_at(&store, "n1"))]);
        // This pass wrote a pull that failed on n1 for want of room.
        let failed: ModelDeploymentStatus = serde_json::from_value(json!({"nodes": {
            "selected": 1, "ready": 0, "pulling": 0, "failed": 1, "summary": "0/1",
            "entries": [{"node": "n1", "digest": "sha256:b", "phase": "Failed", "message": "InsufficientStorage"}]
        }}))
        .unwrap();
        assert!(!missed_cache_change(&store, &seen, "ns/d", &failed), "the cache did not change");
        // Meanwhile another deployment's cleanup made room, and the store shows it.
        writer.apply_watcher_event(&watcher::Event::Apply(cache("n1", "2026-11-29T10:01:00Z", json!([]))));
        assert!(missed_cache_change(&store, &seen, "ns/d", &failed));
        assert!(!missed_cache_change(&store, &seen, "ns/d", &ModelDeploymentStatus::default()), "nothing concerns it");
        let unseen = BTreeMap::from([("n2".to_owned(), None)]);
        assert!(!missed_cache_change(&store, &unseen, "ns/d", &failed), "not a node of this pass");
    }
}
