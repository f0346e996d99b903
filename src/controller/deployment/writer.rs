//! The one place a ModelDeployment's plan reaches the cluster: Jobs deleted and created, workloads
//! handed the version, status written (only on change), node labels synced, events published and
//! metrics recorded. Nothing here decides what to do: [`super::plan`] did.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::index::Index;
use super::plan::{self, Plan};
use super::{handover, jobs, nodes};
use crate::api::{ModelDeployment, ModelDeploymentStatus, NodePhase, short_digest};
use crate::controller::{Context, Error, status};

/// What the writer did.
pub struct Written {
    pub status: ModelDeploymentStatus,
    pub wrote_status: bool,
    /// A workload is rolling out or missing: look again soon (workloads are not watched).
    pub recheck: bool,
}

pub async fn write(
    ctx: &Context,
    deployment: &ModelDeployment,
    index: &Index,
    plan: Plan,
    current: Option<&ModelDeploymentStatus>,
) -> Result<Written, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let name = deployment.name_any();
    let previous = current.cloned().unwrap_or_default();
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), &ctx.settings.namespace);
    for job in &plan.delete {
        delete_ignoring_missing(&jobs_api, job).await?;
    }
    if let Some(access) = &index.access {
        for (node, digest) in &plan.create {
            let pull = jobs::PullJob {
                node,
                repository: &access.repository,
                digest,
                keep: &plan.keep,
                options: &access.options,
                credential: access.credential.as_ref(),
                access: &index.fingerprint,
                model_signature: index.model.as_ref().and_then(|m| model_signature(m, digest)),
            };
            create_pull_job(ctx, deployment, &pull).await?;
            tracing::info!(deployment = %format!("{namespace}/{name}"), node = %node, digest = %digest, "started pull job");
        }
    }
    let mut next = plan.status;
    let repository = index.model.as_ref().map(|m| m.spec.repository.as_str());
    let handed = handover::sync(ctx, deployment, &index.desired, repository, &previous, &mut next).await?;
    record_metrics(ctx, &format!("{namespace}/{name}"), &previous, &next);
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let wrote_status = status::apply(&api, deployment, current, &next).await?;
    sync_node_labels(ctx, &namespace, &name, &next).await?;
    let reference = deployment.object_ref(&());
    let related = handed.events.into_iter().map(|(workload, note)| (note, Some(workload)));
    for (note, secondary) in plan.events.into_iter().map(|note| (note, None)).chain(related) {
        publish(ctx, &reference, note, secondary).await;
    }
    Ok(Written { status: next, wrote_status, recheck: handed.recheck })
}

/// The model-signing referrer `digest` was verified under, which the pull Job holds the extracted
/// files to.
fn model_signature<'a>(model: &'a crate::api::Model, digest: &str) -> Option<&'a str> {
    let verified = model.status.as_ref()?.verified.as_ref()?;
    (verified.digest == digest && verified.provider == crate::api::VerifyProvider::ModelSigning)
        .then_some(verified.signature.as_deref())
        .flatten()
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

pub(super) async fn delete_ignoring_missing<K>(api: &Api<K>, name: &str) -> Result<(), Error>
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

pub(super) async fn set_node_labels(
    ctx: &Context,
    key: &str,
    wanted: impl Fn(&str) -> Option<String>,
) -> Result<(), Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_model_signing_verification_of_that_digest_hands_its_signature_to_the_pull() {
        let (a, b) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)));
        let model = |provider: &str, digest: &str| -> crate::api::Model {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": "m", "namespace": "ns"},
                "spec": {"repository": "r.example/m"},
                "status": {"verified": {"digest": digest, "shortDigest": "x", "provider": provider,
                    "signature": "sha256:sig", "verifiedAt": "2026-12-07T00:00:00Z"}}
            }))
            .unwrap()
        };
        assert_eq!(model_signature(&model("modelSigning", &a), &a), Some("sha256:sig"));
        assert_eq!(model_signature(&model("modelSigning", &a), &b), None);
        assert_eq!(model_signature(&model("cosign", &a), &a), None);
    }
}
