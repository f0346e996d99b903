//! The hand-over of the deployed version to the workloads of `spec.workloads`, as pure decisions:
//! which digest the workloads should carry now ([`target`]), what to apply to each ([`to_apply`],
//! [`apply_body`]) and what to report ([`report`]). The reads are the index's (`observe.rs`), the
//! decision as a whole is `handover.rs`, the patches are the writer's.
//!
//! The version is handed over only once the stored status says every selected node holds it
//! (`deployed`) and it is still the accepted version (`desired`): pods restarted before that would
//! find the old weights behind `current`, and a version that lost its trust must not reach them.

use serde_json::{Value, json};

use crate::api::conditions::{ConditionStatus, Reason};
use crate::api::{ModelDeploymentSpec, WorkloadKind, WorkloadRef, WorkloadStatus, short_digest};

use super::desired::Desired;
use super::note::Note;

/// The field manager of the two fields the operator writes on a workload, so that GitOps tools can
/// ignore exactly those.
pub const FIELD_MANAGER: &str = "modelpack-operator-workloads";
/// Pod-template annotation carrying the handed-over digest; changing it rolls the workload.
pub const DIGEST_ANNOTATION: &str = "modelpack.dev/digest";

/// The named image volume as the pod template has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Volume {
    /// No `imageVolume` is asked for.
    NotAsked,
    /// No volume of that name, or one without an `image` source.
    Absent,
    /// The volume's `image.reference`.
    Image(Option<String>),
}

/// What was read of one listed workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observed {
    Missing,
    Found(Live),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Live {
    /// The pod template's digest annotation.
    pub digest: Option<String>,
    pub volume: Volume,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub replicas: i32,
    pub updated: i32,
    pub ready: i32,
    /// What keeps pods of the handed-over version from serving it ([`pod_problems`]).
    pub pods: Option<(Reason, String)>,
}

impl Live {
    /// Reads an apps/v1 workload of `kind` (as JSON) for the volume named `image_volume`.
    pub fn read(kind: WorkloadKind, obj: &Value, image_volume: Option<&str>) -> Live {
        let int = |path: &str| obj.pointer(path).and_then(Value::as_i64);
        let count = |path: &str| int(path).unwrap_or(0) as i32;
        let template = &obj["spec"]["template"];
        let volume = match image_volume {
            None => Volume::NotAsked,
            Some(name) => template["spec"]["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|v| v["name"] == name))
                .filter(|v| v["image"].is_object())
                .map_or(Volume::Absent, |v| Volume::Image(v["image"]["reference"].as_str().map(str::to_owned))),
        };
        let (replicas, updated, ready) = match kind {
            WorkloadKind::DaemonSet => (
                count("/status/desiredNumberScheduled"),
                count("/status/updatedNumberScheduled"),
                count("/status/numberReady"),
            ),
            // A missing spec.replicas defaults to 1 on both kinds.
            _ => (
                int("/spec/replicas").unwrap_or(1) as i32,
                count("/status/updatedReplicas"),
                count("/status/readyReplicas"),
            ),
        };
        Live {
            digest: template["metadata"]["annotations"][DIGEST_ANNOTATION].as_str().map(str::to_owned),
            volume,
            generation: int("/metadata/generation"),
            observed_generation: int("/status/observedGeneration"),
            replicas,
            updated,
            ready,
            pods: None,
        }
    }

    /// The workload as applying `a` leaves it: the template carries the digest (and the image
    /// reference), so its generation moves on and its controller has not seen it yet; the pods read
    /// before ran another version and say nothing about this one.
    pub fn handed(&self, a: &Apply) -> Live {
        let volume = match &a.volume {
            Some((_, reference)) => Volume::Image(Some(reference.clone())),
            None => self.volume.clone(),
        };
        Live {
            digest: Some(a.digest.clone()),
            volume,
            generation: self.generation.map(|g| g + 1),
            pods: None,
            ..self.clone()
        }
    }

    /// The workload's controller saw the current template and every pod runs it, ready.
    fn rolled_out(&self) -> bool {
        self.observed_generation >= self.generation && self.updated >= self.replicas && self.ready >= self.replicas
    }
}

/// A pod of a listed workload, as far as the report needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Its `modelpack.dev/digest` annotation (from the workload's template).
    pub digest: Option<String>,
    /// Its node's `status.nodeInfo.containerRuntimeVersion`, once scheduled.
    pub runtime: Option<String>,
    /// (container, reason, message) of each container (init containers included) waiting for a
    /// reason that is not a step of starting ([`FAILING`]); the message only where it does not
    /// change from one back-off to the next, so that a failing pod's status is written once.
    pub waiting: Vec<(String, String, String)>,
}

impl PodView {
    /// Reads a core/v1 Pod (as JSON); `runtime` is its node's runtime version.
    pub fn read(pod: &Value, runtime: Option<String>) -> PodView {
        let statuses =
            ["initContainerStatuses", "containerStatuses"].iter().filter_map(|k| pod["status"][k].as_array()).flatten();
        let waiting = statuses
            .filter_map(|c| {
                let w = c["state"]["waiting"].as_object()?;
                let reason = w.get("reason")?.as_str()?;
                let (_, with_message) = FAILING.iter().find(|(r, _)| *r == reason)?;
                let message = w.get("message").and_then(Value::as_str).filter(|_| *with_message).unwrap_or_default();
                let text = |t: &str| crate::registry::clip(t);
                Some((text(c["name"].as_str().unwrap_or_default()), text(reason), text(message)))
            })
            .collect();
        PodView {
            name: pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
            digest: pod["metadata"]["annotations"][DIGEST_ANNOTATION].as_str().map(str::to_owned),
            runtime,
            waiting,
        }
    }
}

/// Waiting reasons that mean a container cannot start (and whether its message is stable enough to
/// keep). A first `ErrImagePull` is retried by the kubelet and becomes `ImagePullBackOff` when it
/// persists; `ContainerCreating` and `PodInitializing` are steps of starting.
const FAILING: &[(&str, bool)] = &[
    ("ImagePullBackOff", false),
    ("CrashLoopBackOff", false),
    ("CreateContainerConfigError", true),
    ("CreateContainerError", true),
    ("RunContainerError", true),
    ("InvalidImageName", true),
    ("ErrImageNeverPull", true),
    ("ImageInspectError", true),
    ("PreStartHookError", true),
    ("PostStartHookError", true),
];

/// How a container runtime, named as a node reports it (`containerd://2.4.2`), mounts a ModelPack
/// artifact given as an image volume (KEP-4639).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArtifactMount {
    /// CRI-O (1.31 and later) mounts an OCI artifact's layers as files.
    Files,
    /// containerd (2.x, through 2.4 at least) unpacks only image layers: the volume of a ModelPack
    /// artifact is an empty directory, and the pod starts without an error.
    Empty,
    Unknown,
}

pub fn artifact_mount(runtime: &str) -> ArtifactMount {
    let Some((name, version)) = runtime.split_once("://") else { return ArtifactMount::Unknown };
    let mut numbers = version.split(['.', '-', '+']).map(|n| n.parse::<u32>().ok());
    let (major, minor) = (numbers.next().flatten(), numbers.next().flatten());
    match (name, major, minor) {
        ("containerd", _, _) => ArtifactMount::Empty,
        ("cri-o", Some(1), Some(m)) if m >= 31 => ArtifactMount::Files,
        ("cri-o", Some(m), _) if m >= 2 => ArtifactMount::Files,
        _ => ArtifactMount::Unknown,
    }
}

/// What keeps the pods that run `handed` from serving it: containers that cannot start (the first
/// few pods named, with the runtime's words), then a runtime that mounts the image volume empty.
pub fn pod_problems(pods: &[PodView], handed: &str, image_volume: Option<&str>) -> Option<(Reason, String)> {
    const NAMED: usize = 3;
    let ours: Vec<&PodView> = pods.iter().filter(|p| p.digest.as_deref() == Some(handed)).collect();
    let failing: Vec<String> = ours
        .iter()
        .flat_map(|p| p.waiting.iter().map(move |(c, reason, message)| format!("{}/{c}: {reason} {message}", p.name)))
        .map(|line| line.trim_end().to_owned())
        .collect();
    if !failing.is_empty() {
        return Some((Reason::PodsFailing, format!("pods cannot start: {}", first(&failing, NAMED))));
    }
    if let Some(volume) = image_volume {
        let empty: Vec<String> = ours
            .iter()
            .filter_map(|p| {
                let runtime = p.runtime.as_deref()?;
                (artifact_mount(runtime) == ArtifactMount::Empty).then(|| format!("{} ({runtime})", p.name))
            })
            .collect();
        if !empty.is_empty() {
            let message = format!(
                "image volume {volume} is an empty directory in pod(s) {}: this runtime mounts container images, not \
                 ModelPack artifacts; mount the node cache (<cache>/deployments/<namespace>/<name>/current) instead",
                first(&empty, NAMED)
            );
            return Some((Reason::ImageVolumeNotMounted, message));
        }
    }
    None
}

fn first(items: &[String], n: usize) -> String {
    let mut out = items.iter().take(n).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > n {
        out.push_str(&format!(" (and {} more)", items.len() - n));
    }
    out
}

/// The digest workloads should carry now, or why nothing is handed over.
pub fn target<'a>(spec: &ModelDeploymentSpec, desired: &Desired, deployed: Option<&'a str>) -> Result<&'a str, String> {
    if spec.suspend {
        return Err("the deployment is suspended".into());
    }
    let version = match desired {
        Desired::Version { version, .. } => version,
        Desired::Blocked { message, .. } => return Err(format!("no version is accepted: {message}")),
    };
    match deployed {
        Some(d) if d == version.digest => Ok(d),
        Some(d) => Err(format!(
            "selected nodes are pulling {}; workloads keep {}",
            short_digest(&version.digest),
            short_digest(d)
        )),
        None => Err(format!("selected nodes are pulling {}", short_digest(&version.digest))),
    }
}

/// A server-side apply of the digest to one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Apply {
    pub kind: WorkloadKind,
    pub name: String,
    pub digest: String,
    /// (volume name, `repository@digest`).
    pub volume: Option<(String, String)>,
}

/// The workloads whose template does not carry `target` yet (annotation, or the image volume's
/// reference when one is asked for and present).
pub fn to_apply(refs: &[WorkloadRef], observed: &[Observed], target: Option<&str>, repository: &str) -> Vec<Apply> {
    let Some(digest) = target else { return Vec::new() };
    let mut out = Vec::new();
    for (r, o) in refs.iter().zip(observed) {
        let Observed::Found(live) = o else { continue };
        let volume = match (&r.image_volume, &live.volume) {
            (Some(name), Volume::Image(_)) => Some((name.clone(), format!("{repository}@{digest}"))),
            _ => None,
        };
        let volume_stale = volume.as_ref().is_some_and(|(_, want)| live.volume != Volume::Image(Some(want.clone())));
        if live.digest.as_deref() != Some(digest) || volume_stale {
            out.push(Apply { kind: r.kind, name: r.name.clone(), digest: digest.to_owned(), volume });
        }
    }
    out
}

/// The apply configuration: only the fields this manager owns (the volume entry is identified by
/// its name, the list's merge key).
pub fn apply_body(a: &Apply) -> Value {
    let mut template = json!({"metadata": {"annotations": {DIGEST_ANNOTATION: a.digest}}});
    if let Some((name, reference)) = &a.volume {
        template["spec"] = json!({"volumes": [{"name": name, "image": {"reference": reference}}]});
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": a.kind.as_str(),
        "metadata": {"name": a.name},
        "spec": {"template": template},
    })
}

/// What the hand-over amounts to: per-workload status, the WorkloadsUpdated condition (none when no
/// workload is listed), events, and whether a rollout is under way.
#[derive(Debug, PartialEq)]
pub struct Report {
    pub statuses: Vec<WorkloadStatus>,
    pub condition: Option<(ConditionStatus, Reason, String)>,
    /// Events about one workload each (it becomes their related object).
    pub events: Vec<(WorkloadKind, String, Note)>,
    /// The announcement of each apply, in order.
    pub handed: Vec<Note>,
    pub rolling: bool,
    /// A workload or image volume is missing: nothing watches for it to appear, so look again soon.
    pub problems: bool,
}

pub fn report(
    refs: &[WorkloadRef],
    observed: &[Observed],
    target: &Result<&str, String>,
    applied: &[Apply],
    previous: &[WorkloadStatus],
) -> Report {
    let mut out = Report {
        statuses: Vec::new(),
        condition: None,
        events: Vec::new(),
        handed: Vec::new(),
        rolling: false,
        problems: false,
    };
    let mut problems: Vec<(Reason, String)> = Vec::new();
    let mut rolling = Vec::new();
    for (r, o) in refs.iter().zip(observed) {
        let (status, problem) = workload_status(r, o);
        let before = previous.iter().find(|p| p.kind == status.kind && p.name == status.name);
        if let Some((reason, message)) = &problem {
            if before.and_then(|b| b.message.as_ref()) != Some(message) {
                let note = Note { warning: true, reason: *reason, message: message.clone() };
                out.events.push((r.kind, r.name.clone(), note));
            }
            problems.push((*reason, message.clone()));
        }
        if let Observed::Found(live) = o
            && (!live.rolled_out() || target.as_ref().is_ok_and(|t| live.digest.as_deref() != Some(*t)))
        {
            rolling.push(format!(
                "{}/{}: {}/{} updated, {}/{} ready",
                status.kind, status.name, live.updated, live.replicas, live.ready, live.replicas
            ));
        }
        out.statuses.push(status);
    }
    out.handed = applied.iter().map(handed_over).collect();
    out.rolling = !rolling.is_empty() && target.is_ok();
    out.problems = !problems.is_empty();
    out.condition = condition(refs, target, &problems, &rolling);
    out
}

fn workload_status(r: &WorkloadRef, o: &Observed) -> (WorkloadStatus, Option<(Reason, String)>) {
    let mut status = WorkloadStatus { kind: r.kind.as_str().to_owned(), name: r.name.clone(), ..Default::default() };
    let live = match o {
        Observed::Missing => {
            let message = format!("{} {} not found", r.kind.as_str(), r.name);
            status.message = Some(message.clone());
            return (status, Some((Reason::WorkloadNotFound, message)));
        }
        Observed::Found(live) => live,
    };
    status.digest = live.digest.clone();
    status.generation = live.generation;
    status.observed_generation = live.observed_generation;
    (status.replicas, status.updated_replicas, status.ready_replicas) = (live.replicas, live.updated, live.ready);
    let problem = match (&r.image_volume, &live.volume) {
        (Some(name), Volume::Absent) => {
            let message = format!(
                "{} {}: the pod template has no volume {name} with an image source; only the annotation is set",
                r.kind.as_str(),
                r.name
            );
            status.message = Some(message.clone());
            Some((Reason::ImageVolumeNotFound, message))
        }
        _ => live.pods.clone().map(|(reason, message)| {
            let message = format!("{} {}: {message}", r.kind.as_str(), r.name);
            status.message = Some(message.clone());
            (reason, message)
        }),
    };
    (status, problem)
}

fn condition(
    refs: &[WorkloadRef],
    target: &Result<&str, String>,
    problems: &[(Reason, String)],
    rolling: &[String],
) -> Option<(ConditionStatus, Reason, String)> {
    if refs.is_empty() {
        return None;
    }
    let joined = |items: Vec<&str>| items.join("; ");
    Some(match (problems.first(), target) {
        (Some((reason, _)), _) => {
            (ConditionStatus::False, *reason, joined(problems.iter().map(|(_, m)| m.as_str()).collect()))
        }
        (None, Err(why)) => (ConditionStatus::False, Reason::HandOverWaiting, why.clone()),
        (None, Ok(_)) if !rolling.is_empty() => {
            (ConditionStatus::False, Reason::RollingOut, joined(rolling.iter().map(String::as_str).collect()))
        }
        (None, Ok(t)) => {
            (ConditionStatus::True, Reason::RolledOut, format!("{} workload(s) run {}", refs.len(), short_digest(t)))
        }
    })
}

fn handed_over(a: &Apply) -> Note {
    let volume =
        a.volume.as_ref().map_or_else(String::new, |(name, reference)| format!(", image volume {name} = {reference}"));
    Note {
        warning: false,
        reason: Reason::WorkloadUpdated,
        message: format!("{} {}: handed {}{volume}", a.kind.as_str(), a.name, a.digest),
    }
}

#[cfg(test)]
#[path = "workloads_tests.rs"]
mod tests;
