//! The decisions of one ModelDeployment reconcile as a pure function: from the previous status, the
//! desired version, the selected nodes, the Jobs that exist, the listed workloads and the nodes'
//! labels (all read by `index.rs`), compute the new status, the Jobs to create and delete, the
//! workload hand-overs (`handover.rs`), the node labels and metrics (`effects.rs`), the events and
//! when to look again. `writer.rs` applies the result and decides nothing.
//!
//! Per node at most one Job of a deployment runs at a time, and a finished Job is deleted before the
//! next one starts: a pull moves the node's `current` link when it completes, so two pulls finishing
//! out of order would leave the wrong version linked.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::contents;
pub use super::desired::Desired;
use super::effects::{self, Metrics};
use super::handover::{self, HandOver, Seen};
pub use super::note::Note;
use crate::api::conditions::{self, ConditionStatus, Observation, Reason};
use crate::api::{
    DeployedVersion, Drift, ModelDeploymentSpec, ModelDeploymentStatus, NodeEntry, NodePhase, NodesStatus, VersionRef,
    WorkloadKind, short_digest,
};
use crate::modelpack::contents::ArchiveContents;

/// A failed pull is retried this long after it failed, or at once when registry access changes.
pub const RETRY_AFTER: Duration = Duration::from_secs(300);
const HISTORY_LIMIT: usize = 10;
const DEFAULT_MAX_PARALLEL: i32 = 3;
/// Re-checked this often even when nothing is watched to change.
const RESYNC: Duration = Duration::from_secs(300);

/// A Job's progress as the plan needs it.
#[derive(Clone, Debug, PartialEq)]
pub enum JobState {
    Pending,
    Running { started: Option<Time> },
    Succeeded { started: Option<Time>, completed: Option<Time>, bytes: Option<i64> },
    Failed { started: Option<Time>, completed: Option<Time>, message: String },
}

impl JobState {
    pub fn is_active(&self) -> bool {
        matches!(self, JobState::Pending | JobState::Running { .. })
    }
}

/// A Job of this deployment on one node.
#[derive(Clone, Debug)]
pub struct ObservedJob {
    pub name: String,
    pub digest: String,
    pub state: JobState,
    /// The registry-access fingerprint it was created with.
    pub access: Option<String>,
    /// Deletion requested; it no longer counts, but blocks a new Job of the same name.
    pub deleting: bool,
    /// A pull that failed for want of room (`InsufficientStorage`): the bytes it needed.
    pub needs: Option<u64>,
    /// What its model's archive layers hold, as its result reported (read once, with the result).
    pub contents: Option<ArchiveContents>,
}

/// A node's ModelCache as this deployment's plan needs it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInventory {
    /// When the Job whose measurement it shows finished.
    pub observed_at: Option<Time>,
    /// Digests the cache links as this deployment's `current`.
    pub current: BTreeSet<String>,
    /// Bytes a pull may still write there.
    pub free: u64,
}

impl NodeInventory {
    /// Whether it was measured after `at`.
    fn after(&self, at: Option<&Time>) -> bool {
        measured_after(self.observed_at.as_ref(), at)
    }
}

/// Whether a cache measured at `seen` was measured after `at` (neither known: no).
pub fn measured_after(seen: Option<&Time>, at: Option<&Time>) -> bool {
    matches!((seen, at), (Some(seen), Some(at)) if seen.0 > at.0)
}

pub struct Inputs<'a> {
    pub spec: &'a ModelDeploymentSpec,
    pub previous: &'a ModelDeploymentStatus,
    pub desired: &'a Desired,
    /// Selected node names.
    pub nodes: &'a [String],
    /// Every Job of this deployment, by node (selected or not).
    pub jobs: &'a BTreeMap<String, Vec<ObservedJob>>,
    /// The nodes' ModelCaches, by node (a node without one is absent).
    pub inventories: &'a BTreeMap<String, NodeInventory>,
    /// Fingerprint of the registry access new Jobs get.
    pub access: &'a str,
    pub generation: Option<i64>,
    pub now: &'a Time,
    /// The deployment's ready label on nodes ([`super::nodes::ready_label`]).
    pub label: &'a str,
    /// Every node in the store, with the value of `label` it carries.
    pub labelled: &'a BTreeMap<String, Option<String>>,
    /// The listed workloads as read, and the Model's repository.
    pub workloads: &'a Seen<'a>,
}

#[derive(Debug)]
pub struct Plan {
    pub status: ModelDeploymentStatus,
    /// (node, digest) pull Jobs to create.
    pub create: Vec<(String, String)>,
    /// Job names to delete.
    pub delete: Vec<String>,
    /// Versions new pull Jobs keep in the node cache besides the one they pull.
    pub keep: Vec<String>,
    pub events: Vec<Note>,
    /// Workloads handed the deployed version (each announced once its apply succeeded).
    pub hand_over: Vec<HandOver>,
    /// Events about one listed workload each.
    pub workload_events: Vec<(WorkloadKind, String, Note)>,
    /// (node, ready label value; None removes it) for the nodes whose label changes.
    pub labels: Vec<(String, Option<String>)>,
    pub metrics: Metrics,
    pub requeue: Duration,
}

struct NodePlan {
    entry: Option<NodeEntry>,
    create: Option<String>,
    delete: Vec<String>,
    retry_at: Option<jiff::Timestamp>,
}

pub fn plan(inputs: &Inputs) -> Plan {
    let desired = match inputs.desired {
        Desired::Version { version, .. } => Some(version),
        Desired::Blocked { .. } => None,
    };
    let nodes = plan_nodes(inputs, desired);
    let mut delete = nodes.delete;
    delete.extend(jobs_to_stop(inputs));
    delete.sort();
    delete.dedup();
    let running = inputs
        .jobs
        .iter()
        .filter(|(node, _)| inputs.nodes.contains(node))
        .flat_map(|(_, jobs)| jobs)
        .filter(|j| j.state.is_active() && !j.deleting)
        .count();
    let max_parallel = inputs.spec.pull.max_parallel.unwrap_or(DEFAULT_MAX_PARALLEL).max(1) as usize;
    let may_start = !inputs.spec.suspend && desired.is_some();
    let create: Vec<(String, String)> = match may_start {
        true => nodes.create.into_iter().take(max_parallel.saturating_sub(running)).collect(),
        false => Vec::new(),
    };
    let mut status = next_status(inputs, desired, nodes.entries);
    let events = events(inputs.previous, &status);
    status.node_label = Some(inputs.label.to_owned());
    let (previous, generation) = (inputs.previous, inputs.generation);
    let handed =
        handover::decide(inputs.spec, inputs.desired, inputs.workloads, generation, inputs.now, &mut status, previous);
    let requeue = match nodes.retry_at {
        Some(at) => Duration::try_from(at.duration_since(inputs.now.0)).unwrap_or_default().max(Duration::from_secs(1)),
        None if running + create.len() > 0 => Duration::from_secs(60),
        None => RESYNC,
    };
    let keep = keep_list(inputs.spec, &status);
    Plan {
        create,
        delete,
        keep,
        events,
        hand_over: handed.hand_over,
        workload_events: handed.events,
        labels: effects::label_changes(inputs.labelled, &effects::wanted_labels(&status)),
        metrics: effects::metrics(previous, &status),
        requeue: effects::requeue_after(requeue.min(RESYNC), previous, &status, handed.recheck),
        status,
    }
}

/// Every selected node's plan, merged.
struct NodesPlan {
    entries: Vec<NodeEntry>,
    /// (node, digest) Jobs the nodes want, before the parallelism limit.
    create: Vec<(String, String)>,
    delete: Vec<String>,
    retry_at: Option<jiff::Timestamp>,
}

fn plan_nodes(inputs: &Inputs, desired: Option<&VersionRef>) -> NodesPlan {
    let previous = inputs.previous;
    let deployed = previous.deployed.as_ref().map(|d| d.digest.as_str());
    let prev_entries: BTreeMap<&str, &NodeEntry> =
        previous.nodes.iter().flat_map(|n| &n.entries).map(|e| (e.node.as_str(), e)).collect();
    let mut out = NodesPlan { entries: Vec::new(), create: Vec::new(), delete: Vec::new(), retry_at: None };
    for node in inputs.nodes {
        let jobs = inputs.jobs.get(node).map_or(&[][..], Vec::as_slice);
        let p = plan_node(inputs, node, prev_entries.get(node.as_str()).copied(), jobs, desired, deployed);
        out.entries.extend(p.entry);
        out.create.extend(p.create.map(|d| (node.clone(), d)));
        out.delete.extend(p.delete);
        out.retry_at = match (out.retry_at, p.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    out
}

/// Nodes that left the selection keep nothing running for this deployment, nor does any node once
/// pulls are halted (finished Jobs stay: they hold results, and `current` is untouched).
fn jobs_to_stop(inputs: &Inputs) -> Vec<String> {
    let halted = inputs.desired.halts_pulls();
    let mut stop = Vec::new();
    for (node, jobs) in inputs.jobs {
        let selected = inputs.nodes.contains(node);
        let stopped = jobs.iter().filter(|j| !j.deleting && (!selected || (halted && j.state.is_active())));
        stop.extend(stopped.map(|j| j.name.clone()));
    }
    stop
}

/// The status the plan amounts to: the deployed version (moved once the desired one is on every
/// node), its history, per-node entries, drift and the kstatus conditions.
fn next_status(inputs: &Inputs, desired: Option<&VersionRef>, entries: Vec<NodeEntry>) -> ModelDeploymentStatus {
    let previous = inputs.previous;
    let mut status = ModelDeploymentStatus {
        observed_generation: inputs.generation,
        conditions: previous.conditions.clone(),
        desired: desired.cloned(),
        deployed: previous.deployed.clone(),
        nodes: None,
        drift: None,
        history: previous.history.clone(),
        node_label: previous.node_label.clone(),
        workloads: previous.workloads.clone(),
        contents: None,
    };
    let on_desired = |e: &NodeEntry| desired.is_some_and(|d| e.current.as_deref() == Some(d.digest.as_str()));
    let everywhere = !inputs.nodes.is_empty()
        && inputs.nodes.iter().all(|n| entries.iter().any(|e: &NodeEntry| &e.node == n && on_desired(e)));
    if let Some(d) = desired.filter(|_| everywhere) {
        advance_deployed(&mut status, d, inputs.now);
    }
    let count = |phase: NodePhase| entries.iter().filter(|e| e.phase == phase).count() as i32;
    let ready = entries.iter().filter(|e| on_desired(e)).count() as i32;
    status.nodes = Some(NodesStatus {
        selected: inputs.nodes.len() as i32,
        ready,
        pulling: count(NodePhase::Pulling),
        failed: count(NodePhase::Failed),
        summary: format!("{ready}/{}", inputs.nodes.len()),
        entries,
    });
    let reported = inputs.jobs.values().flatten().filter_map(|j| Some((j.digest.as_str(), j.contents.as_ref()?)));
    let (wanted, deployed) = (desired.map(|d| d.digest.as_str()), status.deployed.as_ref().map(|d| d.digest.as_str()));
    status.contents = contents::decide(previous.contents.as_ref(), wanted, deployed, reported);
    let (drift, observation) = drift(inputs, &status);
    record_drift(&mut status, previous, drift, inputs);
    conditions::apply(&mut status.conditions, &observation, inputs.generation, inputs.now);
    status
}

/// `d` is on every node: it becomes the deployed version, and the one before goes to history.
fn advance_deployed(status: &mut ModelDeploymentStatus, d: &VersionRef, now: &Time) {
    if status.deployed.as_ref().is_some_and(|dep| dep.digest == d.digest) {
        return;
    }
    if let Some(old) = status.deployed.take() {
        status.history.retain(|h| h.digest != old.digest && h.digest != d.digest);
        status.history.insert(0, VersionRef { digest: old.digest, short_digest: old.short_digest, tag: old.tag });
        status.history.truncate(HISTORY_LIMIT);
    }
    status.deployed = Some(DeployedVersion {
        digest: d.digest.clone(),
        short_digest: d.short_digest.clone(),
        tag: d.tag.clone(),
        since: now.clone(),
    });
}

/// The Drifted condition and `status.drift` (whose `since` moves only when the drift changes).
fn record_drift(
    status: &mut ModelDeploymentStatus,
    previous: &ModelDeploymentStatus,
    drift: DriftState,
    inputs: &Inputs,
) {
    let drifted = if drift.in_sync { ConditionStatus::False } else { ConditionStatus::True };
    let condition = conditions::condition(
        conditions::DRIFTED,
        drifted,
        drift.reason,
        &drift.message,
        inputs.generation,
        inputs.now,
    );
    conditions::set(&mut status.conditions, condition);
    let since = match &previous.drift {
        Some(p) if p.reason == drift.reason.as_str() && p.in_sync == drift.in_sync => p.since.clone(),
        _ => inputs.now.clone(),
    };
    status.drift = Some(Drift { since, in_sync: drift.in_sync, reason: drift.reason.into(), message: drift.message });
}

fn plan_node(
    inputs: &Inputs,
    node: &str,
    prev: Option<&NodeEntry>,
    jobs: &[ObservedJob],
    desired: Option<&VersionRef>,
    deployed: Option<&str>,
) -> NodePlan {
    let Some(view) = NodeView::of(node, prev, jobs, desired, deployed, inputs.inventories.get(node)) else {
        return NodePlan { entry: None, create: None, delete: Vec::new(), retry_at: None };
    };
    let decision = decide(inputs, &view);
    view.into_plan(decision)
}

/// One node as the plan sees it: the version it should hold next and the Jobs around it.
struct NodeView<'a> {
    node: &'a str,
    /// The version the node's `current` link holds (as far as status and finished Jobs tell).
    current: Option<String>,
    /// The version this node pulls next.
    target: String,
    /// The live Job of the target, if any.
    target_job: Option<&'a ObservedJob>,
    /// The latest live succeeded Job (the one that set `current`).
    finished: Option<&'a ObservedJob>,
    /// The previous entry when it was about the target.
    prev_same: Option<&'a NodeEntry>,
    /// Finished Jobs of other versions, deleted before anything new starts.
    stale: Vec<String>,
    /// Another Job of this deployment is active or still being deleted.
    others_busy: bool,
    cache: Option<&'a NodeInventory>,
    /// The node's cache, measured after the pull that linked `current`, no longer links it (a scrub
    /// removed it): the node holds nothing and pulls the target again.
    lost: Option<String>,
}

impl<'a> NodeView<'a> {
    fn of(
        node: &'a str,
        prev: Option<&'a NodeEntry>,
        jobs: &'a [ObservedJob],
        desired: Option<&VersionRef>,
        deployed: Option<&str>,
        cache: Option<&'a NodeInventory>,
    ) -> Option<Self> {
        let mut live: Vec<&ObservedJob> = jobs.iter().filter(|j| !j.deleting).collect();
        // A node runs one Job of this deployment at a time and a new one starts only after the
        // others are gone, so a live Job that succeeded is the last pull on the node: its digest is
        // `current`.
        let finished = live
            .iter()
            .filter_map(|j| match &j.state {
                JobState::Succeeded { completed, .. } => Some((completed.clone(), *j)),
                _ => None,
            })
            .max_by_key(|(completed, _)| completed.clone())
            .map(|(_, j)| j);
        let mut current = finished.map(|j| j.digest.clone()).or_else(|| prev.and_then(|p| p.current.clone()));
        let lost = lost(current.as_deref(), finished, prev, cache);
        let mut stale_lost = None;
        if lost.is_some() {
            // The Job that linked it says nothing true any more: it goes before the pull again.
            current = None;
            stale_lost = finished.map(|j| j.name.clone());
            live.retain(|j| Some(&j.name) != stale_lost.as_ref());
        }
        // A node that holds nothing gets the deployed version first (it can serve that at once),
        // then the desired one.
        let target = match (desired, deployed) {
            (Some(d), Some(dep)) if current.is_none() && dep != d.digest => dep.to_owned(),
            (Some(d), _) => d.digest.clone(),
            (None, _) => prev?.digest.clone(),
        };
        let other = |j: &&&ObservedJob| j.digest != target;
        let mut stale: Vec<String> =
            live.iter().filter(other).filter(|j| !j.state.is_active()).map(|j| j.name.clone()).collect();
        stale.extend(stale_lost);
        let others_busy = live.iter().filter(other).any(|j| j.state.is_active()) || jobs.iter().any(|j| j.deleting);
        Some(NodeView {
            node,
            target_job: live.iter().find(|j| j.digest == target).copied(),
            prev_same: prev.filter(|p| p.digest == target),
            current,
            finished,
            stale,
            others_busy,
            target,
            cache,
            lost,
        })
    }
}

/// The version `current` names, when the node's cache was measured after the pull that linked it
/// (its Job's completion, or the one status recorded) and no longer links it.
fn lost(
    current: Option<&str>,
    finished: Option<&ObservedJob>,
    prev: Option<&NodeEntry>,
    cache: Option<&NodeInventory>,
) -> Option<String> {
    let (current, cache) = (current?, cache?);
    let linked_at = match finished.filter(|j| j.digest == current).map(|j| &j.state) {
        Some(JobState::Succeeded { completed, .. }) => completed.as_ref(),
        _ => prev.filter(|p| p.current.as_deref() == Some(current)).and_then(|p| p.completed_at.as_ref()),
    };
    (cache.after(linked_at) && !cache.current.contains(current)).then(|| current.to_owned())
}

/// What one node needs this pass.
enum Decision<'a> {
    /// `current` already holds the target.
    Ready,
    /// The target's Job exists and has not started pulling (Pending) or is pulling.
    InFlight(&'a ObservedJob),
    /// The target's Job failed and may run again (its retry is due, or the registry access
    /// changed): it is deleted so that the next pass starts a new one.
    Retry(&'a ObservedJob, &'a str),
    /// The target's Job failed and its retry is not due.
    Failed(&'a ObservedJob),
    /// Other Jobs of this deployment on the node go first.
    WaitForOthers,
    /// The last pull of the target failed (its Job is gone) and its retry is not due.
    StillFailed(&'a NodeEntry),
    /// Nothing pulls the target: start a Job.
    Start,
}

fn decide<'a>(inputs: &Inputs, view: &NodeView<'a>) -> Decision<'a> {
    let retry_due = |completed: &Option<Time>| completed.as_ref().is_none_or(|c| c.0 + RETRY_AFTER <= inputs.now.0);
    if view.current.as_deref() == Some(view.target.as_str()) {
        return Decision::Ready;
    }
    match view.target_job.map(|j| (j, &j.state)) {
        Some((job, JobState::Failed { completed, message, .. })) => {
            let access_changed = job.access.as_deref().is_some_and(|a| a != inputs.access);
            // Too big for the node: retried once its cache, measured since, has the room.
            let room_now =
                job.needs.zip(view.cache).is_some_and(|(needs, c)| c.after(completed.as_ref()) && c.free >= needs);
            if access_changed || room_now || retry_due(completed) {
                Decision::Retry(job, message)
            } else {
                Decision::Failed(job)
            }
        }
        // A succeeded Job of the target made it `current`.
        Some((job, _)) => Decision::InFlight(job),
        None if view.others_busy || !view.stale.is_empty() => Decision::WaitForOthers,
        None => match view.prev_same.filter(|p| p.phase == NodePhase::Failed) {
            Some(p) if !retry_due(&p.completed_at) => Decision::StillFailed(p),
            _ => Decision::Start,
        },
    }
}

impl NodeView<'_> {
    /// When the pull that made the target `current` ran, and what it fetched: from its Job, or as
    /// status recorded it.
    fn ready_timing(&self) -> (Option<Time>, Option<Time>, Option<i64>) {
        let from_job = self.finished.filter(|j| j.digest == self.target).map(|j| &j.state);
        match (from_job, self.prev_same.filter(|p| p.phase == NodePhase::Ready)) {
            (Some(JobState::Succeeded { started, completed, bytes }), _) => {
                (started.clone(), completed.clone(), *bytes)
            }
            (_, Some(p)) => (p.started_at.clone(), p.completed_at.clone(), p.bytes),
            _ => (None, None, None),
        }
    }

    fn into_plan(self, decision: Decision) -> NodePlan {
        let timing = self.ready_timing();
        let mut entry = NodeEntry {
            node: self.node.to_owned(),
            digest: self.target.clone(),
            current: self.current.clone(),
            phase: NodePhase::Pending,
            bytes: None,
            started_at: None,
            completed_at: None,
            message: None,
        };
        let mut plan = NodePlan { entry: None, create: None, delete: self.stale, retry_at: None };
        match decision {
            Decision::Ready => {
                entry.phase = NodePhase::Ready;
                (entry.started_at, entry.completed_at, entry.bytes) = timing;
            }
            Decision::InFlight(job) => {
                if let JobState::Running { started } = &job.state {
                    (entry.phase, entry.started_at) = (NodePhase::Pulling, started.clone());
                }
            }
            Decision::Retry(job, message) => {
                plan.delete.push(job.name.clone());
                entry.message = Some(format!("retrying after: {message}"));
            }
            Decision::Failed(job) => {
                if let JobState::Failed { started, completed, message } = &job.state {
                    (entry.started_at, entry.completed_at) = (started.clone(), completed.clone());
                    entry.phase = NodePhase::Failed;
                    entry.message = Some(message.clone());
                    plan.retry_at = completed.as_ref().map(|c| c.0 + RETRY_AFTER);
                }
            }
            Decision::WaitForOthers => {
                entry.message = Some("waiting for this node's previous pull Job to finish".into());
            }
            Decision::StillFailed(p) => {
                entry = NodeEntry { current: self.current, ..p.clone() };
                plan.retry_at = p.completed_at.as_ref().map(|c| c.0 + RETRY_AFTER);
            }
            Decision::Start => plan.create = Some(self.target),
        }
        if let Some(digest) = self.lost.filter(|_| entry.phase == NodePhase::Pending) {
            entry.message =
                Some(format!("the node's cache no longer holds {}: pulling it again", short_digest(&digest)));
        }
        plan.entry = Some(entry);
        plan
    }
}

/// Whether the nodes hold the desired version, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriftState {
    pub in_sync: bool,
    pub reason: Reason,
    pub message: String,
}

/// Drift between desired and deployed, and the kstatus observation it amounts to.
fn drift(inputs: &Inputs, status: &ModelDeploymentStatus) -> (DriftState, Observation) {
    let drift = |in_sync: bool, reason: Reason, message: String| DriftState { in_sync, reason, message };
    let (version, rejected) = match inputs.desired {
        Desired::Blocked { reason, message, stalled } => {
            let obs = if *stalled {
                Observation::stalled(*reason, message.as_str())
            } else {
                Observation::progressing(*reason, message.as_str())
            };
            return (drift(false, *reason, message.clone()), obs);
        }
        Desired::Version { version, rejected } => (version, rejected),
    };
    let desired = describe(&version.digest, version.tag.as_deref());
    if let Some((reason, why)) = rejected {
        let message = format!("{why}; nodes keep {desired}");
        return (drift(false, *reason, message.clone()), Observation::stalled(*reason, message));
    }
    rollout(inputs, status, version, &desired)
}

/// Drift while a version is desired: from the nodes' progress.
fn rollout(
    inputs: &Inputs,
    status: &ModelDeploymentStatus,
    version: &VersionRef,
    desired: &str,
) -> (DriftState, Observation) {
    let nodes = status.nodes.clone().unwrap_or_default();
    let counts = format!("{}/{} nodes ready", nodes.ready, nodes.selected);
    let drift = |in_sync: bool, reason: Reason, message: String| DriftState { in_sync, reason, message };
    if nodes.selected == 0 {
        let message = "no Ready, schedulable node matches the nodeSelector and tolerations".to_owned();
        return (
            drift(false, Reason::NodesNotReady, message.clone()),
            Observation::not_ready(Reason::NoNodesSelected, message),
        );
    }
    let failed: Vec<&NodeEntry> = nodes.entries.iter().filter(|e| e.phase == NodePhase::Failed).collect();
    if let Some(first) = failed.first() {
        let message = format!(
            "pull of {} failed on {} node(s) ({counts}); {}: {}",
            short_digest(&first.digest),
            failed.len(),
            first.node,
            first.message.as_deref().unwrap_or("failed")
        );
        return (drift(false, Reason::PullFailed, message.clone()), Observation::stalled(Reason::PullFailed, message));
    }
    let deployed_digest = status.deployed.as_ref().map(|d| d.digest.as_str());
    let (reason, message) = match deployed_digest {
        Some(d) if d == version.digest && nodes.ready == nodes.selected => {
            let message = format!("{desired} is ready on all {} nodes", nodes.selected);
            let obs = if inputs.spec.suspend {
                Observation::ready(Reason::Deployed, format!("{message} (suspended)"))
            } else {
                Observation::ready(Reason::Deployed, message.as_str())
            };
            return (drift(true, Reason::InSync, message), obs);
        }
        Some(d) if d == version.digest => {
            (Reason::NodeJoined, format!("{desired} is deployed; {counts}: pulling onto joined nodes"))
        }
        Some(d) => (Reason::NewVersionPending, format!("deployed {}, desired {desired}: {counts}", short_digest(d))),
        None => (Reason::NodesNotReady, format!("{desired}: {counts}")),
    };
    let obs = if inputs.spec.suspend {
        Observation::not_ready(Reason::Suspended, format!("suspended: {message}"))
    } else {
        Observation::progressing(reason, message.as_str())
    };
    (drift(false, reason, message), obs)
}

fn describe(digest: &str, tag: Option<&str>) -> String {
    match tag {
        Some(t) => format!("{} ({t})", short_digest(digest)),
        None => short_digest(digest),
    }
}

/// Versions the node cache keeps for this deployment: desired, deployed, and `keepPrevious` of
/// the versions deployed before.
fn keep_list(spec: &ModelDeploymentSpec, status: &ModelDeploymentStatus) -> Vec<String> {
    let mut keep = BTreeSet::new();
    keep.extend(status.desired.as_ref().map(|d| d.digest.clone()));
    keep.extend(status.deployed.as_ref().map(|d| d.digest.clone()));
    let previous = spec.keep_previous.max(0) as usize;
    keep.extend(status.history.iter().take(previous).map(|h| h.digest.clone()));
    keep.into_iter().collect()
}

fn events(previous: &ModelDeploymentStatus, next: &ModelDeploymentStatus) -> Vec<Note> {
    let mut notes = Vec::new();
    let note = |warning: bool, reason: Reason, message: String| Note { warning, reason, message };
    let digest_of = |v: &Option<VersionRef>| v.as_ref().map(|v| v.digest.clone());
    if let Some(d) = &next.desired
        && digest_of(&previous.desired) != Some(d.digest.clone())
    {
        let was = previous.desired.as_ref().map_or_else(String::new, |p| format!(", was {}", p.digest));
        notes.push(note(
            false,
            Reason::NewVersion,
            format!("desired version {}{was}", describe(&d.digest, d.tag.as_deref())),
        ));
    }
    if let Some(d) = &next.deployed
        && previous.deployed.as_ref().map(|p| &p.digest) != Some(&d.digest)
    {
        let nodes = next.nodes.as_ref().map_or(0, |n| n.selected);
        notes.push(note(
            false,
            Reason::Deployed,
            format!("{} is ready on all {nodes} nodes", describe(&d.digest, d.tag.as_deref())),
        ));
    }
    let was_failed: BTreeSet<(&str, &str)> = previous
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .filter(|e| e.phase == NodePhase::Failed)
        .map(|e| (e.node.as_str(), e.digest.as_str()))
        .collect();
    for e in next.nodes.iter().flat_map(|n| &n.entries) {
        if e.phase == NodePhase::Failed && !was_failed.contains(&(e.node.as_str(), e.digest.as_str())) {
            let why = e.message.as_deref().unwrap_or("failed");
            notes.push(note(true, Reason::PullFailed, format!("node {}: pull of {} failed: {why}", e.node, e.digest)));
        }
    }
    // Refusals are announced once, when they start.
    let refusals = [Reason::VerificationFailed, Reason::TrustRevoked, Reason::TolerationNotAllowed];
    let reason = |s: &ModelDeploymentStatus| s.drift.as_ref().and_then(|d| Reason::parse(&d.reason));
    if let Some(r) = reason(next).filter(|r| refusals.contains(r))
        && reason(previous) != Some(r)
    {
        let message = next.drift.as_ref().map(|d| d.message.clone()).unwrap_or_default();
        notes.push(note(true, r, message));
    }
    notes.extend(contents::warning(previous.contents.as_ref(), next.contents.as_ref()));
    notes
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
