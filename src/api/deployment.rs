//! `ModelDeployment`: a Model's accepted version, pre-pulled into the node cache of a set of nodes.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::conditions::Condition;
use super::duration;

/// Puts a Model's verified version into the node-local cache of every selected node (one pull Job
/// per node) and reports per-node progress and drift between desired and deployed versions.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "modelpack.dev",
    version = "v1alpha1",
    kind = "ModelDeployment",
    doc = "A Model's verified version pre-pulled into the node-local cache of selected nodes.",
    namespaced,
    status = "ModelDeploymentStatus",
    shortname = "mdeploy",
    category = "modelpack",
    printcolumn = r#"{"name":"Model","type":"string","jsonPath":".spec.modelRef.name"}"#,
    printcolumn = r#"{"name":"Desired","type":"string","jsonPath":".status.desired.shortDigest"}"#,
    printcolumn = r#"{"name":"Deployed","type":"string","jsonPath":".status.deployed.shortDigest"}"#,
    printcolumn = r#"{"name":"Nodes","type":"string","jsonPath":".status.nodes.summary","description":"nodes ready / selected"}"#,
    printcolumn = r#"{"name":"Drift","type":"string","jsonPath":".status.drift.reason"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentSpec {
    /// The Model (same namespace) whose accepted version is deployed.
    pub model_ref: ModelRefName,

    /// Pin a digest (e.g. to roll back). It must still pass the Model's verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 71))]
    #[x_kube(validation = Rule::new("self.matches('^sha256:[a-f0-9]{64}$')").message("digest must match sha256:[a-f0-9]{64}"))]
    pub digest: Option<String>,

    /// Only nodes with all these labels are selected (all Ready, schedulable nodes when empty).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints of selected nodes that pull Jobs tolerate; nodes with other NoSchedule/NoExecute taints
    /// are not selected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// How many previously deployed versions stay in each node's cache for instant rollback.
    #[serde(default = "default_keep_previous")]
    #[schemars(range(min = 0, max = 10))]
    pub keep_previous: i32,

    /// How pull Jobs run.
    #[serde(default)]
    pub pull: PullSpec,

    /// Stop creating pull Jobs; status keeps being reported.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,

    /// Workloads (apps/v1, this namespace) handed the deployed version once every selected node
    /// holds it: their pod template gets the `modelpack.dev/digest` annotation and, with
    /// `imageVolume`, that image volume's reference pinned to `repository@digest`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub workloads: Vec<WorkloadRef>,
}

/// A workload that follows the deployment.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadRef {
    /// Deployment, StatefulSet or DaemonSet (apps/v1).
    pub kind: WorkloadKind,
    /// Name of the workload in the deployment's namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// A volume of the pod template with an `image` source whose `reference` is set to
    /// `<repository>@<digest>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub image_volume: Option<String>,
}

/// The apps/v1 kinds a deployment can hand its version to.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
        }
    }
}

fn default_keep_previous() -> i32 {
    1
}

/// Name of a Model in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct ModelRefName {
    /// Name of the Model.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Pull Job settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PullSpec {
    /// How many nodes pull at the same time (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_parallel: Option<i32>,

    /// Retries of a failed pull before the node is reported Failed (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 20))]
    pub backoff_limit: Option<i32>,

    /// Deadline of one pull Job (Go duration; default 1h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new(duration::cel_rule(">= duration('1s')")).message("pull.timeout must be a duration of at least 1s, such as 30m or 2h"))]
    pub timeout: Option<String>,

    /// CPU and memory for the pull container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Observed state of a ModelDeployment.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDeploymentStatus {
    /// The generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (always), Reconciling and Stalled (only while True), Drifted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The version that should be on every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired: Option<VersionRef>,
    /// The newest version that is ready on every selected node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployed: Option<DeployedVersion>,
    /// Per-node progress and counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodesStatus>,
    /// Whether deployed equals desired, and why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<Drift>,
    /// Versions deployed before `deployed`, newest first; the first `keepPrevious` stay in every
    /// node's cache for instant rollback.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<VersionRef>,
    /// The node label (key) set on every node whose cache holds the deployed or desired version,
    /// for serving workloads' node affinity; its value is the short digest the node serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_label: Option<String>,
    /// The workloads of `spec.workloads`: the digest handed to each and its rollout.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<WorkloadStatus>,
    /// What the files of the desired (else the deployed) version's archive layers hold, as a pull
    /// Job read them on its node: range requests cannot read inside an archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<ArchiveContentsStatus>,
}

/// One version's archive contents, as the worst report of its finished pull Jobs gave them.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveContentsStatus {
    /// The version (manifest digest) they are of.
    pub digest: String,
    #[serde(flatten)]
    pub contents: crate::modelpack::contents::ArchiveContents,
}

/// A workload's hand-over and rollout, read from the workload.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadStatus {
    /// Deployment, StatefulSet or DaemonSet.
    pub kind: String,
    /// Name of the workload.
    pub name: String,
    /// The digest its pod template carries (`modelpack.dev/digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// The workload's `metadata.generation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The generation the workload's controller has observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pods (DaemonSet: nodes) the workload wants.
    #[serde(default)]
    pub replicas: i32,
    /// Of those, running the current pod template.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Of those, ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Why the workload was not (fully) handed the version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A version of the model.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VersionRef {
    /// Manifest digest.
    pub digest: String,
    /// First 12 hex characters of the digest, for display.
    pub short_digest: String,
    /// The tag the digest came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
}

/// The deployed version and since when.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeployedVersion {
    /// Manifest digest.
    pub digest: String,
    /// First 12 hex characters of the digest, for display.
    pub short_digest: String,
    /// The tag the digest came from, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// When it became ready on every selected node.
    pub since: Time,
}

/// Node counts and per-node entries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodesStatus {
    /// Nodes the deployment selects.
    pub selected: i32,
    /// Selected nodes holding the desired version.
    pub ready: i32,
    /// Selected nodes pulling now.
    pub pulling: i32,
    /// Selected nodes whose pull failed.
    pub failed: i32,
    /// `ready/selected`, for display.
    pub summary: String,
    /// One entry per selected node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entries: Vec<NodeEntry>,
}

/// Progress on one node.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    /// Node name.
    pub node: String,
    /// The digest this entry is about (the one the node is pulling or holds).
    pub digest: String,
    /// The version the node's `deployments/<ns>/<name>/current` link points at, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current: Option<String>,
    /// Pending, Pulling, Ready or Failed.
    pub phase: NodePhase,
    /// Bytes fetched from the registry for this version on this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<i64>,
    /// When the pull started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When the pull finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Detail, e.g. the pull's failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Phase of a node's pull.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum NodePhase {
    Pending,
    Pulling,
    Ready,
    Failed,
}

/// Difference between desired and deployed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Drift {
    /// True when the desired version is ready on every selected node.
    pub in_sync: bool,
    /// InSync, NewVersionPending, NodesNotReady, PullFailed, VerificationFailed or NodeJoined.
    pub reason: String,
    /// The digests and node counts involved.
    pub message: String,
    /// When the current drift state began.
    pub since: Time,
}
