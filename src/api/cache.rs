//! `ModelCache`: one per node that holds models (cluster-scoped, named after the node), the node
//! cache's inventory as its last Job (pull, cleanup or scrub) measured it. Written by the operator
//! only; deleted when its node is.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// The inventory of one node's model cache.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "modelpack.dev",
    version = "v1alpha1",
    kind = "ModelCache",
    doc = "One node's model cache: budget, use, the models it holds and its last integrity scrub.",
    status = "ModelCacheStatus",
    shortname = "mcache",
    category = "modelpack",
    printcolumn = r#"{"name":"Node","type":"string","jsonPath":".spec.node"}"#,
    printcolumn = r#"{"name":"Used","type":"integer","jsonPath":".status.used","description":"bytes"}"#,
    printcolumn = r#"{"name":"Capacity","type":"integer","jsonPath":".status.capacity","description":"bytes (the budget)"}"#,
    printcolumn = r#"{"name":"Models","type":"integer","jsonPath":".status.modelCount"}"#,
    printcolumn = r#"{"name":"Last-Scrub","type":"date","jsonPath":".status.lastScrub.time"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ModelCacheSpec {
    /// The node (the object's name too).
    pub node: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCacheStatus {
    /// The budget (`--cache-limit`), bytes.
    #[serde(default)]
    pub capacity: i64,
    /// Blobs, models and partial downloads, each inode once, bytes.
    #[serde(default)]
    pub used: i64,
    /// What may still be written: under the budget and on the filesystem, bytes.
    #[serde(default)]
    pub free: i64,
    #[serde(default)]
    pub model_count: i32,
    /// Always written, empty too: status is merge-patched, and an absent list would keep the old one.
    #[serde(default)]
    pub models: Vec<CachedModel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scrub: Option<ScrubSummary>,
    /// When the Job whose result this is finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_at: Option<Time>,
    /// The Job whose result this is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_job: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedModel {
    pub digest: String,
    /// Bytes of its files and blobs.
    pub size: i64,
    /// `namespace/name` of the deployments holding it as current or as a kept previous version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deployments: Vec<String>,
    /// `namespace/name` of the deployments of `deployments` that hold it as current.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Time>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScrubSummary {
    pub time: Time,
    pub blobs_checked: i64,
    pub files_checked: i64,
    /// Models removed because bytes they were built from changed.
    pub removed: i32,
    /// What changed: blob digests, or `<model> file <path>` for an extracted file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub corrupt: Vec<String>,
}
