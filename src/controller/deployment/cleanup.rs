//! Deletion behind the `modelpack.dev/cleanup` finalizer: pull Jobs and their Secrets go, a cleanup
//! Job per node drops the deployment's link and what no other deployment keeps, node labels go.
//! A node that no longer exists, or whose cleanup Job fails or times out, does not hold deletion up.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::jobs::{self, Role};
use super::plan::JobState;
use super::{FINALIZER, delete_ignoring_missing, effects, index, nodes, set_node_labels};
use crate::api::ModelDeployment;
use crate::controller::{DeploymentContext, Error};

pub enum Progress {
    Done,
    Waiting,
}

pub async fn run(deployment: &ModelDeployment, ctx: &DeploymentContext) -> Result<Progress, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);

    let selector = jobs::selector(&namespace, &name);
    // From the API, not the store: a Job the last reconcile created may not have reached the store.
    let listed = jobs_api.list_metadata(&ListParams::default().labels(&selector)).await?;
    for job in listed.items.iter().filter(|j| j.metadata.deletion_timestamp.is_none()) {
        if job.labels().get(jobs::ROLE_LABEL).map(String::as_str) == Some(Role::Pull.as_str()) {
            delete_ignoring_missing(&jobs_api, &job.name_any()).await?;
        }
    }
    for secret in secrets.list_metadata(&ListParams::default().labels(&selector)).await? {
        delete_ignoring_missing(&secrets, &secret.name_any()).await?;
    }

    let label = nodes::ready_label(&namespace, &name);
    let mut to_clean: BTreeSet<String> =
        deployment.status.iter().flat_map(|s| &s.nodes).flat_map(|n| &n.entries).map(|e| e.node.clone()).collect();
    let existing = ctx.nodes.state();
    to_clean.extend(existing.iter().filter(|n| n.labels().contains_key(&label)).map(|n| n.name_any()));
    let mut waiting = false;
    for node in &to_clean {
        if !existing.iter().any(|n| &n.name_any() == node && n.metadata.deletion_timestamp.is_none()) {
            continue;
        }
        waiting |= clean_node(ctx, deployment, &jobs_api, node).await?;
    }
    if waiting {
        return Ok(Progress::Waiting);
    }
    let labelled = index::node_labels(&ctx.nodes, &label);
    set_node_labels(ctx, &label, &effects::label_changes(&labelled, &Default::default())).await?;
    let listed = jobs_api.list_metadata(&ListParams::default().labels(&selector)).await?;
    for job in listed.items.iter().filter(|j| j.metadata.deletion_timestamp.is_none()) {
        delete_ignoring_missing(&jobs_api, &job.name_any()).await?;
    }
    ctx.metrics.drift(&format!("{namespace}/{name}"), None);
    tracing::info!(deployment = %format!("{namespace}/{name}"), nodes = to_clean.len(), "cleaned up deployment");
    Ok(Progress::Done)
}

/// Starts or follows the cleanup Job of one node; returns whether it still runs.
async fn clean_node(
    ctx: &DeploymentContext,
    deployment: &ModelDeployment,
    jobs_api: &Api<Job>,
    node: &str,
) -> Result<bool, Error> {
    let (namespace, name) = (deployment.namespace().unwrap_or_default(), deployment.name_any());
    let job_name = jobs::job_name(Role::Cleanup, &namespace, &name, node, "");
    let found = ctx.jobs.state().into_iter().find(|j| j.name_any() == job_name);
    match found.map(|j| jobs::job_state(&j)) {
        None => {
            let job = jobs::cleanup_job(deployment, &ctx.settings, node)?;
            match jobs_api.create(&PostParams::default(), &job).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
            Ok(true)
        }
        Some(JobState::Succeeded { .. }) => Ok(false),
        Some(JobState::Failed { message, .. }) => {
            let note = format!(
                "cleanup on node {node} failed ({message}); its cache keeps deployments/{namespace}/{name} until removed by hand"
            );
            warn_once(ctx, deployment, &job_name, note).await;
            Ok(false)
        }
        Some(_) => Ok(true),
    }
}

/// One Warning per failed cleanup Job: the Job's name is the event's dedup key.
async fn warn_once(ctx: &DeploymentContext, deployment: &ModelDeployment, job: &str, note: String) {
    let event = Event {
        type_: EventType::Warning,
        reason: "CleanupFailed".into(),
        note: Some(note),
        action: format!("Cleanup/{job}"),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &deployment.object_ref(&())).await {
        tracing::warn!(error = %e, "publishing event failed");
    }
}

pub async fn add_finalizer(ctx: &DeploymentContext, deployment: &ModelDeployment) -> Result<(), Error> {
    let mut finalizers = deployment.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    set_finalizers(ctx, deployment, finalizers).await
}

pub async fn remove_finalizer(ctx: &DeploymentContext, deployment: &ModelDeployment) -> Result<(), Error> {
    let finalizers = deployment.finalizers().iter().filter(|f| *f != FINALIZER).cloned().collect();
    set_finalizers(ctx, deployment, finalizers).await
}

/// A merge patch of the whole list, guarded by resourceVersion: another writer's finalizer is never
/// dropped (the patch fails with a conflict and the next event reconciles again).
async fn set_finalizers(
    ctx: &DeploymentContext,
    deployment: &ModelDeployment,
    finalizers: Vec<String>,
) -> Result<(), Error> {
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &deployment.namespace().unwrap_or_default());
    let patch = serde_json::json!({"metadata": {
        "finalizers": finalizers,
        "resourceVersion": deployment.resource_version(),
    }});
    match api.patch(&deployment.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}
