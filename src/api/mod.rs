//! The custom resources (`Model`, `ModelDeployment`, group `modelpack.dev/v1alpha1`), their status
//! types and the condition helpers.

mod cache;
pub mod conditions;
mod deployment;
pub mod duration;
mod model;
mod policy;

pub use cache::{CachedModel, ModelCache, ModelCacheSpec, ModelCacheStatus, ScrubSummary};
pub use deployment::{
    ArchiveContentsStatus, DeployedVersion, Drift, ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus,
    ModelRefName, NodeEntry, NodePhase, NodesStatus, PullSpec, VersionRef, WorkloadKind, WorkloadRef, WorkloadStatus,
};
pub use model::{
    Accepted, Artifact, HistoryEntry, LocalObjectReference, Model, ModelReference, ModelSpec, ModelStatus,
    OidcIdentity, Resolved, Revoked, Verified, VerifiedTimestamp, VerifyProvider, VerifySpec,
};
pub use policy::{ModelPolicy, ModelPolicySpec, ModelPolicyStatus, PolicyAction, PolicyRule, Violation};

use kube::CustomResourceExt;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("rendering CRD YAML: {0}")]
    Yaml(String),
}

/// Every CRD as one multi-document YAML stream: what `modelpack-operator crd` prints and crds/ holds.
pub fn crds_yaml() -> Result<String, Error> {
    let mut out = String::new();
    for crd in [Model::crd(), ModelDeployment::crd(), ModelCache::crd(), ModelPolicy::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd).map_err(|e| Error::Yaml(e.to_string()))?);
    }
    Ok(out)
}

/// `sha256:0123456789ab…` → `0123456789ab`: the 12 characters people compare by eye.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.chars().take(12).collect()
}
