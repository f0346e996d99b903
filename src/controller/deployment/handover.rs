//! The writer of the hand-over: reads each listed workload, server-side applies what
//! [`workloads::to_apply`] decided under [`workloads::FIELD_MANAGER`], and puts
//! [`workloads::report`]'s result into the status being written.

use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use kube::core::Selector;
use kube::{Api, ResourceExt};

use super::plan::{Desired, Note};
use super::workloads::{self, Apply, Live, Observed, PodView};
use crate::api::conditions::{self, Reason, WORKLOADS_UPDATED};
use crate::api::{ModelDeployment, ModelDeploymentStatus, WorkloadKind, WorkloadRef};
use crate::controller::{Context, Error};

/// What the reconcile does with the hand-over's outcome.
pub struct Outcome {
    /// (related workload, event).
    pub events: Vec<(ObjectReference, Note)>,
    /// A workload is rolling the handed-over version out, or one is missing: the workloads are not
    /// watched, so they should be read again soon.
    pub recheck: bool,
}

/// Hands `previous.deployed` (the stored status: nodes hold it) to the workloads when it is still
/// the accepted version, and records their state in `next`.
pub async fn sync(
    ctx: &Context,
    deployment: &ModelDeployment,
    desired: &Desired,
    repository: Option<&str>,
    previous: &ModelDeploymentStatus,
    next: &mut ModelDeploymentStatus,
) -> Result<Outcome, Error> {
    let refs = &deployment.spec.workloads;
    let namespace = deployment.namespace().unwrap_or_default();
    let deployed = previous.deployed.as_ref().map(|d| d.digest.as_str());
    let target = workloads::target(&deployment.spec, desired, deployed);
    // Without the Model's repository no image volume can be pinned: hand nothing over.
    let target = match (target, repository) {
        (Ok(_), None) => Err("the model's repository is unknown".to_owned()),
        (t, _) => t,
    };
    let mut observed = Vec::with_capacity(refs.len());
    for r in refs {
        observed.push(read(ctx, &namespace, r).await?);
    }
    let applies = workloads::to_apply(refs, &observed, target.as_ref().ok().copied(), repository.unwrap_or_default());
    let done = hand_over(ctx, &namespace, refs, applies, &mut observed).await?;
    let applied: Vec<Apply> = done.iter().map(|(a, _)| a.clone()).collect();
    let report = workloads::report(refs, &observed, &target, &applied, &previous.workloads);
    next.workloads = report.statuses;
    match report.condition {
        Some((status, reason, message)) => conditions::set(
            &mut next.conditions,
            conditions::condition(WORKLOADS_UPDATED, status, reason, &message, deployment.metadata.generation, &now()),
        ),
        None => conditions::remove(&mut next.conditions, WORKLOADS_UPDATED),
    }
    let events = report
        .events
        .into_iter()
        .map(|(kind, name, note)| {
            let mut related = reference(&namespace, kind, &name);
            // A hand-over names the workload version it made: two hand-overs are two events, not one
            // series (the recorder folds events whose objects and reason are equal).
            if note.reason == Reason::WorkloadUpdated {
                let made = done.iter().find(|(a, _)| a.kind == kind && a.name == name);
                related.resource_version = made.and_then(|(_, version)| version.clone());
            }
            (related, note)
        })
        .collect();
    Ok(Outcome { events, recheck: report.rolling || report.problems })
}

/// Applies each hand-over (and reads the workload back from the answer); returns those done, with
/// the workload's resourceVersion after it.
async fn hand_over(
    ctx: &Context,
    namespace: &str,
    refs: &[WorkloadRef],
    applies: Vec<Apply>,
    observed: &mut [Observed],
) -> Result<Vec<(Apply, Option<String>)>, Error> {
    let mut done = Vec::new();
    for a in applies {
        let api = api_for(ctx, namespace, a.kind);
        let params = PatchParams::apply(workloads::FIELD_MANAGER).force();
        match api.patch(&a.name, &params, &Patch::Apply(workloads::apply_body(&a))).await {
            Ok(obj) => {
                if let Some(i) = refs.iter().position(|r| r.kind == a.kind && r.name == a.name) {
                    observed[i] = Observed::Found(live(a.kind, &obj, refs[i].image_volume.as_deref())?);
                }
                tracing::info!(workload = %format!("{}/{namespace}/{}", a.kind.as_str(), a.name), digest = %a.digest, "handed version to workload");
                done.push((a, obj.metadata.resource_version));
            }
            // Deleted between the read and the patch: reported as missing on the next reconcile.
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

fn reference(namespace: &str, kind: WorkloadKind, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(kind.as_str().into()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..Default::default()
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

fn api_for(ctx: &Context, namespace: &str, kind: WorkloadKind) -> Api<DynamicObject> {
    let resource = ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind.as_str()));
    Api::namespaced_with(ctx.client.clone(), namespace, &resource)
}

async fn read(ctx: &Context, namespace: &str, r: &WorkloadRef) -> Result<Observed, Error> {
    let Some(obj) = api_for(ctx, namespace, r.kind).get_opt(&r.name).await? else { return Ok(Observed::Missing) };
    let mut live = live(r.kind, &obj, r.image_volume.as_deref())?;
    if let Some(digest) = live.digest.clone() {
        let pods = pods_of(ctx, namespace, &serde_json::to_value(&obj)?).await?;
        live.pods = workloads::pod_problems(&pods, &digest, r.image_volume.as_deref());
    }
    Ok(Observed::Found(live))
}

/// The pods the workload's `spec.selector` selects (labels and expressions), with their nodes'
/// runtimes from the node store: a hand-over is done only when they can start and see the model.
async fn pods_of(ctx: &Context, namespace: &str, workload: &serde_json::Value) -> Result<Vec<PodView>, Error> {
    let selector: Option<LabelSelector> = serde_json::from_value(workload["spec"]["selector"].clone()).ok();
    // A workload without a usable selector is refused by the apiserver; nothing to read then.
    let Some(selector) = selector.and_then(|s| Selector::try_from(s).ok()).filter(|s| !s.selects_all()) else {
        return Ok(Vec::new());
    };
    let params = ListParams::default().labels_from(&selector).match_any();
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace).list(&params).await?;
    let nodes = ctx.nodes.state();
    let runtime_of = |node: &str| {
        let node = nodes.iter().find(|n| n.metadata.name.as_deref() == Some(node))?;
        Some(node.status.as_ref()?.node_info.as_ref()?.container_runtime_version.clone())
    };
    let mut out = Vec::with_capacity(pods.items.len());
    for pod in &pods.items {
        let runtime = pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).and_then(runtime_of);
        out.push(PodView::read(&serde_json::to_value(pod)?, runtime));
    }
    Ok(out)
}

fn live(kind: WorkloadKind, obj: &DynamicObject, image_volume: Option<&str>) -> Result<Live, Error> {
    Ok(Live::read(kind, &serde_json::to_value(obj)?, image_volume))
}
