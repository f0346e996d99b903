//! The node inventories: one cluster-scoped `ModelCache` per node, the inventory of the models its
//! node cache holds, its status written from the results of the Jobs that ran there (pull,
//! cleanup, scrub); scrub Jobs every
//! `--scrub-interval`; cache metrics; events on the deployments that lose a version. A loop over
//! the Job and node stores rather than a controller: a Job's result is read once, when it finishes.

mod inventory;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::deployment::{JobRole, NODE_ANNOTATION, ROLE_LABEL, scrub_job, termination_message};
use super::{DeploymentContext, Error};
use crate::api::{ModelCache, ModelCacheSpec, ModelCacheStatus, ModelDeployment};
pub(crate) use inventory::JobResult;
use inventory::{Notice, notices, scrub_due, status_from};

/// How often the Job and node stores are looked at.
const TICK: Duration = Duration::from_secs(5);
const FIELD_MANAGER: &str = "modelpack-operator";

/// Runs until dropped (the caller stops it with the controllers).
pub async fn run(ctx: Arc<DeploymentContext>) {
    let mut seen = HashSet::new();
    loop {
        if ctx.readiness.stores_synced()
            && let Err(e) = tick(&ctx, &mut seen).await
        {
            tracing::warn!(error = %e, "node caches: tick failed");
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn tick(ctx: &DeploymentContext, seen: &mut HashSet<String>) -> Result<(), Error> {
    let api: Api<ModelCache> = Api::all(ctx.client.clone());
    let mut caches: BTreeMap<String, ModelCache> =
        api.list(&ListParams::default()).await?.items.into_iter().map(|c| (c.name_any(), c)).collect();
    record_results(ctx, &api, &mut caches, seen).await?;
    let nodes: HashSet<String> = ctx.nodes.state().iter().map(|n| n.name_any()).collect();
    for name in caches.keys().filter(|n| !nodes.contains(*n)) {
        // The node is gone, and its cache with it.
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => ctx.metrics.cache_gone(name),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    schedule_scrubs(ctx, &caches, &nodes).await
}

/// A finished Job's completion (or failure) time, its node and role.
fn finished(job: &Job) -> Option<(Time, String, JobRole)> {
    let status = job.status.as_ref()?;
    let done = status
        .conditions
        .as_deref()
        .unwrap_or_default()
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")?;
    let at = status.completion_time.clone().or_else(|| done.last_transition_time.clone())?;
    let node = job.annotations().get(NODE_ANNOTATION)?.clone();
    let role = JobRole::parse(job.labels().get(ROLE_LABEL)?)?;
    Some((at, node, role))
}

/// Reads every Job result not read yet, oldest first, into the ModelCaches.
async fn record_results(
    ctx: &DeploymentContext,
    api: &Api<ModelCache>,
    caches: &mut BTreeMap<String, ModelCache>,
    seen: &mut HashSet<String>,
) -> Result<(), Error> {
    let mut done: Vec<(Time, String, JobRole, Arc<Job>)> = ctx
        .jobs
        .state()
        .into_iter()
        .filter(|j| j.uid().is_some_and(|uid| !seen.contains(&uid)))
        .filter_map(|j| finished(&j).map(|(at, node, role)| (at, node, role, j)))
        .collect();
    done.sort_by_key(|d| d.0.0);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for (at, node, role, job) in done {
        let selector = format!("batch.kubernetes.io/job-name={}", job.name_any());
        let list = pods.list(&ListParams::default().labels(&selector)).await?;
        let result = termination_message(&list.items).and_then(|m| parse(role, &m));
        if let Some(result) = &result {
            let previous = caches.get(&node).and_then(|c| c.status.clone()).unwrap_or_default();
            if let Some(status) = status_from(&previous, result, &job.name_any(), &at) {
                let cache = write(api, caches.get(&node), &node, &status).await?;
                caches.insert(node.clone(), cache);
                ctx.metrics.cache_observed(&node, &status, result);
                for notice in notices(&node, result) {
                    notify(ctx, notice).await;
                }
            }
        }
        if role == JobRole::Scrub && result.is_some() {
            // Read: the next scrub of the node may start (scrub Jobs are named after the node). One
            // that left no result stays until its TTL: the node is not scrubbed in a loop.
            let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
            let _ = jobs.delete(&job.name_any(), &DeleteParams::background()).await;
        }
        seen.extend(job.uid());
    }
    Ok(())
}

fn parse(role: JobRole, message: &str) -> Option<JobResult> {
    match role {
        JobRole::Pull => serde_json::from_str(message).ok().map(JobResult::Pull),
        JobRole::Cleanup => serde_json::from_str(message).ok().map(JobResult::Gc),
        JobRole::Scrub => serde_json::from_str(message).ok().map(JobResult::Scrub),
    }
}

/// Creates the node's ModelCache when there is none (only for a cache that holds models) and
/// writes its status.
async fn write(
    api: &Api<ModelCache>,
    existing: Option<&ModelCache>,
    node: &str,
    status: &ModelCacheStatus,
) -> Result<ModelCache, Error> {
    if existing.is_none() {
        let mut cache = ModelCache::new(node, ModelCacheSpec { node: node.to_owned() });
        cache.meta_mut().labels = Some(BTreeMap::from([(
            super::deployment::MANAGED_BY.0.to_owned(),
            super::deployment::MANAGED_BY.1.to_owned(),
        )]));
        match api.create(&PostParams::default(), &cache).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let patch = serde_json::json!({"status": status});
    Ok(api.patch_status(node, &PatchParams::apply(FIELD_MANAGER), &Patch::Merge(&patch)).await?)
}

/// Publishes a notice on the deployment it concerns (gone: nothing to tell).
async fn notify(ctx: &DeploymentContext, notice: Notice) {
    let Some((namespace, name)) = notice.deployment.split_once('/') else { return };
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), namespace);
    let Ok(deployment) = api.get(name).await else { return };
    let event = Event {
        type_: if notice.reason.is_warning() { EventType::Warning } else { EventType::Normal },
        reason: notice.reason.as_str().to_owned(),
        note: Some(notice.message),
        action: "Cache".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &deployment.object_ref(&())).await {
        tracing::warn!(error = %e, reason = %event.reason, "publishing event failed");
    }
}

/// Starts a scrub Job on every node whose cache is due one (and that has none running).
async fn schedule_scrubs(
    ctx: &DeploymentContext,
    caches: &BTreeMap<String, ModelCache>,
    nodes: &HashSet<String>,
) -> Result<(), Error> {
    let now = Time(jiff::Timestamp::now());
    let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for (node, cache) in caches.iter().filter(|(n, _)| nodes.contains(*n)) {
        let status = cache.status.clone().unwrap_or_default();
        let created = cache.metadata.creation_timestamp.as_ref();
        if !scrub_due(&status, created, ctx.settings.scrub_interval, &now) {
            continue;
        }
        let job = scrub_job(&ctx.settings, node)?;
        if ctx.jobs.state().iter().any(|j| j.name_any() == job.name_any()) {
            continue;
        }
        match jobs.create(&PostParams::default(), &job).await {
            Ok(_) => tracing::info!(node = %node, "scrub Job created"),
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
