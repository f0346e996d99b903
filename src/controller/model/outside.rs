//! Everything a Model pass asks of the world outside it, as one narrow interface: registry access
//! from the Model's Secrets, the ref resolved, the digest inspected, the trust material, the
//! signature verified, and the ModelPolicies' verdict (which reads the digest's referrers). The
//! controller's [`Live`] answers from the cluster and the registry memo; tests answer with fakes.
//!
//! Every answer is a [`Found`]: a Kubernetes API failure is the outer error and ends the pass
//! through `?` (the error policy retries it); anything else is the step's finding and shows in
//! status.

use crate::policy::VerifiedVar;
use std::sync::Arc;
use std::time::Duration;

use crate::api::{Model, VerifySpec};
use crate::controller::access::{Access, access_for};
use crate::controller::trust::{Trust, trust_for};
use crate::controller::{Error, ModelContext, compliance};
use crate::registry::{Inspection, RefSpec, Resolution};
use crate::verify::Verification;

/// A step's answer from outside, or the API failure that ends the pass.
pub type Found<T> = Result<Result<T, Error>, kube::Error>;

/// Splits an API failure off a result: the one place a pass decides it cannot go on.
pub fn found<T>(result: Result<T, Error>) -> Found<T> {
    match result {
        Err(Error::Kube(e)) => Err(e),
        other => Ok(other),
    }
}

#[allow(async_fn_in_trait)] // Used with concrete types only, whose futures are Send.
pub trait Outside {
    /// The verification material of `spec.verify` (opaque to the steps).
    type Trust;

    /// Registry access from the Model's Secrets and ServiceAccount.
    async fn access(&self, model: &Model, namespace: &str) -> Found<Access>;
    /// The ref resolved, and when that resolution is due again (at most `max_age`).
    async fn resolve(&self, access: &Access, spec: &RefSpec, max_age: Duration) -> Found<(Resolution, Duration)>;
    async fn inspect(&self, access: &Access, digest: &str) -> Found<Arc<Inspection>>;
    async fn trust(&self, spec: &VerifySpec, namespace: &str) -> Found<Self::Trust>;
    /// The inspected digest's signature under `trust`, and whether the verdict came from memory.
    async fn verify(
        &self,
        access: &Access,
        model: &Model,
        trust: &Self::Trust,
        inspection: &Inspection,
    ) -> Found<(Verification, bool)>;
    /// Every ModelPolicy that selects the Model, on the resolved digest.
    async fn comply(
        &self,
        access: &Access,
        model: &Model,
        resolution: &Resolution,
        inspection: &Inspection,
        verified: &VerifiedVar,
        max_age: Duration,
    ) -> Found<compliance::Outcome>;
}

/// The cluster and the registries, through the controller's shared [`ModelContext`].
pub struct Live<'a>(pub &'a ModelContext);

impl Outside for Live<'_> {
    type Trust = Trust;

    async fn access(&self, model: &Model, namespace: &str) -> Found<Access> {
        found(access_for(&self.0.client, model, namespace).await)
    }

    async fn resolve(&self, access: &Access, spec: &RefSpec, max_age: Duration) -> Found<(Resolution, Duration)> {
        found(self.0.registry.resolve(access, spec, max_age).await)
    }

    async fn inspect(&self, access: &Access, digest: &str) -> Found<Arc<Inspection>> {
        found(self.0.registry.inspect(access, digest).await)
    }

    async fn trust(&self, spec: &VerifySpec, namespace: &str) -> Found<Trust> {
        found(trust_for(&self.0.client, spec, namespace).await)
    }

    async fn verify(
        &self,
        access: &Access,
        model: &Model,
        trust: &Trust,
        inspection: &Inspection,
    ) -> Found<(Verification, bool)> {
        found(self.0.registry.verify(access, model, trust, inspection).await)
    }

    async fn comply(
        &self,
        access: &Access,
        model: &Model,
        resolution: &Resolution,
        inspection: &Inspection,
        verified: &VerifiedVar,
        max_age: Duration,
    ) -> Found<compliance::Outcome> {
        found(compliance::comply(self.0, access, model, resolution, inspection, verified, max_age).await)
    }
}
