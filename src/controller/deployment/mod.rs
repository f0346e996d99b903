//! The ModelDeployment reconciler: decide the desired version from the Model, observe the selected
//! nodes and this deployment's Jobs, let [`plan`] decide, then act: create and delete Jobs, write
//! status (only on change), label warm nodes, publish events. Deletion runs a cleanup Job per node
//! behind a finalizer.

mod bound;
mod cleanup;
mod desired;
mod handover;
mod jobs;
mod nodes;
mod plan;
mod workloads;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::access::access_for;
use super::{Context, Error, status};
use crate::api::conditions::Reason;
use crate::api::{Model, ModelDeployment, ModelDeploymentStatus, NodePhase, short_digest};
use plan::{Desired, Inputs, JobState, ObservedJob};

pub use bound::{AllowedToleration, NodeBound, parse_label};
pub use jobs::JobSettings;
pub use nodes::selection_fingerprint;

pub const FINALIZER: &str = "modelpack.dev/cleanup";

pub async fn reconcile(deployment: Arc<ModelDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Decisions need every node and every Job of ours: an unsynced store would look empty.
    if !ctx.readiness.stores_synced() {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if deployment.metadata.deletion_timestamp.is_some() {
        // The store may still hold the object after our finalizer was removed; a cleanup run from
        // that stale copy would create cleanup Jobs nothing deletes. Ask the API.
        let api: Api<ModelDeployment> =
            Api::namespaced(ctx.client.clone(), &deployment.namespace().unwrap_or_default());
        let fresh = api.get_opt(&deployment.name_any()).await?;
        let Some(deployment) = fresh.filter(|d| d.finalizers().iter().any(|f| f == FINALIZER)) else {
            return Ok(Action::await_change());
        };
        return match cleanup::run(&deployment, &ctx).await? {
            cleanup::Progress::Done => {
                cleanup::remove_finalizer(&ctx, &deployment).await?;
                Ok(Action::await_change())
            }
            cleanup::Progress::Waiting => Ok(Action::requeue(Duration::from_secs(5))),
        };
    }
    if !deployment.finalizers().iter().any(|f| f == FINALIZER) {
        // The next event (our own patch) reconciles with the finalizer in place.
        cleanup::add_finalizer(&ctx, &deployment).await?;
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    apply(&deployment, &ctx).await
}

async fn apply(deployment: &ModelDeployment, ctx: &Context) -> Result<Action, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let now = Time(jiff::Timestamp::now());
    let models: Api<Model> = Api::namespaced(ctx.client.clone(), &namespace);
    let model = models.get_opt(&deployment.spec.model_ref.name).await?;
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
    let current = deployment.status.clone();
    let previous = current.clone().unwrap_or_default();
    let nodes = nodes::selected(deployment, &ctx.settings.bound, ctx.nodes.state().iter().map(|n| n.as_ref()));
    let observed = observe_jobs(ctx, &namespace, &name, &previous).await?;
    let plan = plan::plan(&Inputs {
        spec: &deployment.spec,
        previous: &previous,
        desired: &desired,
        nodes: &nodes,
        jobs: &observed,
        access: &fingerprint,
        generation: deployment.metadata.generation,
        now: &now,
    });

    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for job in &plan.delete {
        delete_ignoring_missing(&jobs_api, job).await?;
    }
    if let (Some(access), Some(version)) = (&access, &plan.status.desired) {
        for (node, digest) in &plan.create {
            let pull = jobs::PullJob {
                node,
                repository: &access.repository,
                digest,
                keep: &plan.keep,
                options: &access.options,
                credential: access.credential.as_ref(),
                access: &fingerprint,
            };
            create_pull_job(ctx, deployment, &pull).await?;
            tracing::info!(deployment = %format!("{namespace}/{name}"), node = %node, digest = %digest, desired = %version.digest, "started pull job");
        }
    }
    let mut next = plan.status;
    next.node_label = Some(nodes::ready_label(&namespace, &name));
    let repository = model.as_ref().map(|m| m.spec.repository.as_str());
    let handed = handover::sync(ctx, deployment, &desired, repository, &previous, &mut next).await?;
    record_metrics(ctx, &format!("{namespace}/{name}"), &previous, &next);
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let wrote = status::apply(&api, deployment, current.as_ref(), &next).await?;
    sync_node_labels(ctx, &namespace, &name, &next).await?;
    let reference = deployment.object_ref(&());
    let related = handed.events.into_iter().map(|(workload, note)| (note, Some(workload)));
    for (note, secondary) in plan.events.into_iter().map(|note| (note, None)).chain(related) {
        publish(ctx, &reference, note, secondary).await;
    }
    tracing::info!(
        deployment = %format!("{namespace}/{name}"),
        drift = next.drift.as_ref().map(|d| d.reason.as_str()).unwrap_or_default(),
        nodes = next.nodes.as_ref().map(|n| n.summary.as_str()).unwrap_or_default(),
        created = plan.create.len(),
        deleted = plan.delete.len(),
        wrote_status = wrote,
        "reconciled deployment"
    );
    Ok(Action::requeue(requeue(plan.requeue, &previous, &next, handed.recheck)))
}

/// Events about the deployment; a workload it concerns is the related object (which also keeps
/// events about different workloads from being folded into one series).
async fn publish(ctx: &Context, reference: &ObjectReference, note: plan::Note, secondary: Option<ObjectReference>) {
    let event = Event {
        type_: if note.warning { EventType::Warning } else { EventType::Normal },
        reason: note.reason.into(),
        note: Some(note.message),
        action: "Deploy".into(),
        secondary,
    };
    if let Err(e) = ctx.recorder.publish(&event, reference).await {
        tracing::warn!(error = %e, reason = %event.reason, "publishing event failed");
    }
}

/// The hand-over follows the stored `deployed`: a switch written now is handed over on the next
/// reconcile, and workloads rolling out or missing are re-read every 10s (they are not watched).
fn requeue(
    planned: Duration,
    previous: &ModelDeploymentStatus,
    next: &ModelDeploymentStatus,
    recheck: bool,
) -> Duration {
    let digest = |s: &ModelDeploymentStatus| s.deployed.as_ref().map(|d| d.digest.clone());
    if digest(previous) != digest(next) {
        return Duration::from_secs(1);
    }
    if recheck { planned.min(Duration::from_secs(10)) } else { planned }
}

/// Pulls that finished since the previous status, and whether the deployment is drifted.
fn record_metrics(ctx: &Context, key: &str, previous: &ModelDeploymentStatus, next: &ModelDeploymentStatus) {
    let before: BTreeMap<(&str, &str), NodePhase> = previous
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .map(|e| ((e.node.as_str(), e.digest.as_str()), e.phase))
        .collect();
    for e in next.nodes.iter().flat_map(|n| &n.entries) {
        let finished = matches!(e.phase, NodePhase::Ready | NodePhase::Failed) && e.completed_at.is_some();
        if finished && before.get(&(e.node.as_str(), e.digest.as_str())) != Some(&e.phase) {
            ctx.metrics.pull_finished(e.phase == NodePhase::Ready, e.bytes);
        }
    }
    ctx.metrics.drift(key, next.drift.as_ref().map(|d| !d.in_sync));
}

/// This deployment's pull Jobs by node, with the results of finished ones whose outcome status does
/// not hold yet (read from their pods' termination messages).
async fn observe_jobs(
    ctx: &Context,
    namespace: &str,
    name: &str,
    previous: &ModelDeploymentStatus,
) -> Result<BTreeMap<String, Vec<ObservedJob>>, Error> {
    let key = jobs::deployment_key(namespace, name);
    let recorded: BTreeMap<(&str, &str), &crate::api::NodeEntry> = previous
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .filter(|e| matches!(e.phase, NodePhase::Ready | NodePhase::Failed) && e.completed_at.is_some())
        .map(|e| ((e.node.as_str(), e.digest.as_str()), e))
        .collect();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let mut by_node: BTreeMap<String, Vec<ObservedJob>> = BTreeMap::new();
    for job in ctx.jobs.state() {
        let labels = job.labels();
        if labels.get(jobs::DEPLOYMENT_LABEL) != Some(&key)
            || labels.get(jobs::ROLE_LABEL).map(String::as_str) != Some("pull")
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
        let finished = matches!(state, JobState::Succeeded { .. } | JobState::Failed { .. });
        if finished {
            state = match recorded.get(&(node.as_str(), digest.as_str())) {
                // Status already holds this result: no need to read pods again.
                Some(entry) => recorded_state(state, entry),
                None => {
                    let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
                    let list = pods.list(&ListParams::default().labels(&selector)).await?;
                    jobs::with_result(state, &list.items)
                }
            };
        }
        by_node.entry(node.clone()).or_default().push(ObservedJob {
            name: job.name_any(),
            digest: digest.clone(),
            state,
            access: annotations.get(jobs::ACCESS_ANNOTATION).cloned(),
            deleting: job.metadata.deletion_timestamp.is_some(),
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

/// The Secret first (so the pod never waits for it), then the Job, then the Job becomes the
/// Secret's owner so that the garbage collector removes both together.
async fn create_pull_job(ctx: &Context, deployment: &ModelDeployment, pull: &jobs::PullJob<'_>) -> Result<(), Error> {
    let (job, secret) = jobs::pull_job(deployment, &ctx.settings, pull)?;
    let ns = &ctx.settings.namespace;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams::apply(status::FIELD_MANAGER).force();
    if let Some(secret) = &secret {
        secrets.patch(&secret.name_any(), &params, &Patch::Apply(with_kind(secret, "v1", "Secret")?)).await?;
    }
    let created = match jobs_api.create(&PostParams::default(), &job).await {
        Ok(job) => job,
        Err(kube::Error::Api(e)) if e.code == 409 => jobs_api.get(&job.name_any()).await?,
        Err(e) => return Err(e.into()),
    };
    if let Some(secret) = &secret {
        // The whole object again: under server-side apply, fields this manager leaves out are removed.
        let mut owned = with_kind(secret, "v1", "Secret")?;
        owned["metadata"]["ownerReferences"] = serde_json::json!([{
            "apiVersion": "batch/v1", "kind": "Job", "name": created.name_any(),
            "uid": created.metadata.uid.unwrap_or_default(),
        }]);
        secrets.patch(&secret.name_any(), &params, &Patch::Apply(owned)).await?;
    }
    Ok(())
}

fn with_kind<T: serde::Serialize>(obj: &T, api_version: &str, kind: &str) -> Result<serde_json::Value, Error> {
    let mut value = serde_json::to_value(obj)?;
    value["apiVersion"] = api_version.into();
    value["kind"] = kind.into();
    Ok(value)
}

async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Nodes whose `current` holds the desired or deployed version carry the deployment's ready label
/// (value: that version's short digest); every other node loses it.
async fn sync_node_labels(
    ctx: &Context,
    namespace: &str,
    name: &str,
    status: &ModelDeploymentStatus,
) -> Result<(), Error> {
    let key = nodes::ready_label(namespace, name);
    let serving: Vec<&str> =
        [status.desired.as_ref().map(|d| d.digest.as_str()), status.deployed.as_ref().map(|d| d.digest.as_str())]
            .into_iter()
            .flatten()
            .collect();
    let wanted: BTreeMap<&str, String> = status
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .filter_map(|e| {
            let current = e.current.as_deref()?;
            serving.contains(&current).then(|| (e.node.as_str(), short_digest(current)))
        })
        .collect();
    set_node_labels(ctx, &key, |node| wanted.get(node).cloned()).await
}

async fn set_node_labels(ctx: &Context, key: &str, wanted: impl Fn(&str) -> Option<String>) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    for node in ctx.nodes.state() {
        let name = node.name_any();
        let want = wanted(&name);
        if node.labels().get(key) == want.as_ref() {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"labels": {key: want}}});
        match api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

pub fn error_policy(deployment: Arc<ModelDeployment>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(deployment = %deployment.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
