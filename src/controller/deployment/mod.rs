//! The ModelDeployment reconciler in linkerd's shape: [`index`] gathers every read (the Model and the
//! version it offers, the selected nodes and their labels, this deployment's Jobs, the listed
//! workloads and their pods), [`plan`] decides purely (which Jobs to create and delete, per-node
//! status, drift, the workload hand-overs, node labels, metrics, events, when to look again), and
//! [`writer`] applies the plan and decides nothing. Deletion runs a cleanup Job per node behind a
//! finalizer.

mod bound;
mod cleanup;
mod contents;
mod desired;
mod effects;
mod handover;
mod index;
mod jobs;
mod nodes;
mod note;
mod observe;
mod plan;
mod workloads;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::{Api, ResourceExt};

use super::{DeploymentContext, Error};
use crate::api::ModelDeployment;
use plan::Inputs;

pub use bound::{AllowedToleration, NodeBound, parse_label};
pub use jobs::{DEPLOYMENT_ANNOTATION, DEPLOYMENT_LABEL, JobSettings};
pub(crate) use jobs::{MANAGED_BY, NODE_ANNOTATION, ROLE_LABEL, Role as JobRole, scrub_job, termination_message};
pub use nodes::{cache_concerns, selection_fingerprint};
use writer::{delete_ignoring_missing, set_node_labels};

pub const FINALIZER: &str = "modelpack.dev/cleanup";

pub async fn reconcile(deployment: Arc<ModelDeployment>, ctx: Arc<DeploymentContext>) -> Result<Action, Error> {
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

/// Index → plan → writer: read everything, decide purely, apply the decision.
async fn apply(deployment: &ModelDeployment, ctx: &DeploymentContext) -> Result<Action, Error> {
    let key = format!("{}/{}", deployment.namespace().unwrap_or_default(), deployment.name_any());
    let current = deployment.status.as_ref();
    let previous = current.cloned().unwrap_or_default();
    let index = index::gather(deployment, ctx, &previous).await?;
    let plan = plan::plan(&Inputs {
        spec: &deployment.spec,
        previous: &previous,
        desired: &index.desired,
        nodes: &index.nodes,
        jobs: &index.jobs,
        inventories: &index.inventories,
        access: &index.fingerprint,
        generation: deployment.metadata.generation,
        now: &Time(jiff::Timestamp::now()),
        label: &index.label,
        labelled: &index.labelled,
        workloads: &handover::Seen { observed: &index.workloads, repository: index.repository() },
    });
    let (created, deleted, requeue) = (plan.create.len(), plan.delete.len(), plan.requeue);
    let written = writer::write(ctx, deployment, &index, plan, current).await?;
    let next = &written.status;
    let missed = index::missed_cache_change(&ctx.inventories, &index.inventories_seen, &key, next);
    tracing::info!(
        deployment = %key,
        drift = next.drift.as_ref().map(|d| d.reason.as_str()).unwrap_or_default(),
        nodes = next.nodes.as_ref().map(|n| n.summary.as_str()).unwrap_or_default(),
        created,
        deleted,
        wrote_status = written.wrote_status,
        "reconciled deployment"
    );
    if missed {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    Ok(Action::requeue(requeue))
}

pub fn error_policy(deployment: Arc<ModelDeployment>, error: &Error, _ctx: Arc<DeploymentContext>) -> Action {
    tracing::warn!(deployment = %deployment.name_any(), error = %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(5))
}
