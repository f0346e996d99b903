//! The one place a ModelDeployment's plan reaches the cluster, in this order: Jobs deleted and
//! created, workloads handed the version, metrics recorded, status written (only on change), node
//! labels patched, events published. Nothing here decides what to do: [`super::plan`] did, from
//! what [`super::index`] read.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Secret};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::handover::HandOver;
use super::index::Index;
use super::plan::{self, Plan};
use super::{jobs, observe, workloads};
use crate::api::{ModelDeployment, ModelDeploymentStatus, WorkloadKind};
use crate::controller::{DeploymentContext, Error, status};

/// What the writer did.
pub struct Written {
    pub status: ModelDeploymentStatus,
    pub wrote_status: bool,
}

pub async fn write(
    ctx: &DeploymentContext,
    deployment: &ModelDeployment,
    index: &Index,
    plan: Plan,
    current: Option<&ModelDeploymentStatus>,
) -> Result<Written, Error> {
    let namespace = deployment.namespace().unwrap_or_default();
    let key = format!("{namespace}/{}", deployment.name_any());
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
            tracing::info!(deployment = %key, node = %node, digest = %digest, "started pull job");
        }
    }
    let handed = hand_over(ctx, &namespace, &plan.hand_over).await?;
    for (succeeded, bytes) in &plan.metrics.pulls_finished {
        ctx.metrics.pull_finished(*succeeded, *bytes);
    }
    ctx.metrics.drift(&key, plan.metrics.drifted);
    let api: Api<ModelDeployment> = Api::namespaced(ctx.client.clone(), &namespace);
    let wrote_status = status::apply(&api, deployment, current, &plan.status).await?;
    set_node_labels(ctx, &index.label, &plan.labels).await?;
    let reference = deployment.object_ref(&());
    let workload = |kind, name: &str, version| Some(workload_ref(&namespace, kind, name, version));
    let related = plan.workload_events.into_iter().map(|(kind, name, note)| (note, workload(kind, &name, None)));
    let announced =
        handed.into_iter().map(|(h, version)| (h.note.clone(), workload(h.apply.kind, &h.apply.name, version)));
    for (note, secondary) in plan.events.into_iter().map(|note| (note, None)).chain(related).chain(announced) {
        publish(ctx, &reference, note, secondary).await;
    }
    Ok(Written { status: plan.status, wrote_status })
}

/// Server-side applies each hand-over under [`workloads::FIELD_MANAGER`]; returns those done, with
/// the workload's resourceVersion after it. A workload deleted since the index read it is skipped
/// (the next reconcile reports it missing).
async fn hand_over<'a>(
    ctx: &DeploymentContext,
    namespace: &str,
    hand_over: &'a [HandOver],
) -> Result<Vec<(&'a HandOver, Option<String>)>, Error> {
    let mut done = Vec::new();
    for h in hand_over {
        let a = &h.apply;
        let api = observe::api_for(&ctx.client, namespace, a.kind);
        let params = PatchParams::apply(workloads::FIELD_MANAGER).force();
        match api.patch(&a.name, &params, &Patch::Apply(workloads::apply_body(a))).await {
            Ok(obj) => {
                tracing::info!(workload = %format!("{}/{namespace}/{}", a.kind.as_str(), a.name), digest = %a.digest, "handed version to workload");
                done.push((h, obj.metadata.resource_version));
            }
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(done)
}

/// A listed workload as an event's related object. A hand-over names the workload version it made:
/// two hand-overs are two events, not one series (the recorder folds events whose objects and
/// reason are equal).
fn workload_ref(namespace: &str, kind: WorkloadKind, name: &str, version: Option<String>) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps/v1".into()),
        kind: Some(kind.as_str().into()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        resource_version: version,
        ..Default::default()
    }
}

/// The model-signing referrer `digest` was verified under, which the pull Job holds the extracted
/// files to: the one it was accepted with, else (a status written before `accepted` carried it)
/// its verification's.
fn model_signature<'a>(model: &'a crate::api::Model, digest: &str) -> Option<&'a str> {
    let status = model.status.as_ref()?;
    if let Some(accepted) = status.accepted.as_ref().filter(|a| a.digest == digest && a.signature.is_some()) {
        return accepted.signature.as_deref();
    }
    let verified = status.verified.as_ref()?;
    (verified.digest == digest && verified.provider == crate::api::VerifyProvider::ModelSigning)
        .then_some(verified.signature.as_deref())
        .flatten()
}

/// Events about the deployment; a workload it concerns is the related object (which also keeps
/// events about different workloads from being folded into one series).
async fn publish(
    ctx: &DeploymentContext,
    reference: &ObjectReference,
    note: plan::Note,
    secondary: Option<ObjectReference>,
) {
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

/// The Secret first (so the pod never waits for it), then the Job, then the Job becomes the
/// Secret's owner so that the garbage collector removes both together.
async fn create_pull_job(
    ctx: &DeploymentContext,
    deployment: &ModelDeployment,
    pull: &jobs::PullJob<'_>,
) -> Result<(), Error> {
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

/// Patches each node's ready label `key` (None removes it); a node deleted meanwhile is skipped.
pub(super) async fn set_node_labels(
    ctx: &DeploymentContext,
    key: &str,
    changes: &[(String, Option<String>)],
) -> Result<(), Error> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    for (node, want) in changes {
        let patch = serde_json::json!({"metadata": {"labels": {key: want}}});
        match api.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "writer_tests.rs"]
mod tests;

#[cfg(test)]
mod signature_tests {
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
        // `verified` moved on to b (refused by a policy); a is still accepted with its signature.
        let mut moved = model("modelSigning", &b);
        let accepted = serde_json::json!({"digest": a, "shortDigest": "x", "signature": "sha256:sig-a",
            "acceptedAt": "2026-12-07T00:00:00Z"});
        moved.status.as_mut().unwrap().accepted = Some(serde_json::from_value(accepted).unwrap());
        assert_eq!(model_signature(&moved, &a), Some("sha256:sig-a"));
        assert_eq!(model_signature(&moved, &b), Some("sha256:sig"));
    }
}
