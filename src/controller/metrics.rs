//! Prometheus metrics of the controllers (OpenMetrics text at `/metrics`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReconcileLabels {
    controller: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabel {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabels {
    node: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerificationLabels {
    provider: String,
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    policy: String,
    result: &'static str,
}

pub struct Metrics {
    registry: Registry,
    reconciles: Family<ReconcileLabels, Counter>,
    durations: Family<ControllerLabel, Histogram>,
    resolutions: Family<ResultLabel, Counter>,
    verifications: Family<VerificationLabels, Counter>,
    pulls: Family<ResultLabel, Counter>,
    policy_evaluations: Family<PolicyLabels, Counter>,
    pulled_bytes: Counter,
    drifted: Gauge,
    drifted_by_deployment: Mutex<HashMap<String, bool>>,
    cache_bytes: Family<CacheLabels, Gauge>,
    evictions: Counter,
    scrub_corrupt_blobs: Counter,
}

/// The node caches' metrics: bytes by node and kind, evictions, corrupt blobs found by scrubs.
fn register_cache_metrics(registry: &mut Registry) -> (Family<CacheLabels, Gauge>, Counter, Counter) {
    let cache_bytes = Family::<CacheLabels, Gauge>::default();
    registry.register("cache_bytes", "Node cache bytes by node and kind (used, capacity)", cache_bytes.clone());
    let evictions = Counter::default();
    registry.register("evictions", "Models and blobs evicted from node caches to make room", evictions.clone());
    let scrub_corrupt_blobs = Counter::default();
    registry.register(
        "scrub_corrupt_blobs",
        "Blobs (and model files) node cache scrubs found changed and removed",
        scrub_corrupt_blobs.clone(),
    );
    (cache_bytes, evictions, scrub_corrupt_blobs)
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("modelpack");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        registry.register("reconciles", "Reconciles by controller and result (success, error)", reconciles.clone());
        let durations = Family::<ControllerLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.005, 2.0, 14))
        });
        registry.register("reconcile_duration_seconds", "Time one reconcile took, by controller", durations.clone());
        let resolutions = Family::<ResultLabel, Counter>::default();
        registry.register(
            "resolutions",
            "Model resolutions by result (success or the failure reason)",
            resolutions.clone(),
        );
        let verifications = Family::<VerificationLabels, Counter>::default();
        registry.register(
            "verifications",
            "Signature verifications by provider and result (verified, audit, rejected, error)",
            verifications.clone(),
        );
        let pulls = Family::<ResultLabel, Counter>::default();
        registry.register("pulls", "Finished node pulls by result (succeeded, failed)", pulls.clone());
        let policy_evaluations = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_evaluations",
            "ModelPolicy evaluations of a digest by policy and result (pass, fail); cached verdicts are not counted",
            policy_evaluations.clone(),
        );
        let pulled_bytes = Counter::default();
        registry.register("pulled_bytes", "Bytes fetched from registries by finished node pulls", pulled_bytes.clone());
        let drifted = Gauge::default();
        registry.register(
            "drifted_deployments",
            "ModelDeployments whose deployed version is not the desired one",
            drifted.clone(),
        );
        let (cache_bytes, evictions, scrub_corrupt_blobs) = register_cache_metrics(&mut registry);
        Metrics {
            registry,
            cache_bytes,
            evictions,
            scrub_corrupt_blobs,
            reconciles,
            durations,
            resolutions,
            verifications,
            pulls,
            policy_evaluations,
            pulled_bytes,
            drifted,
            drifted_by_deployment: Mutex::new(HashMap::new()),
        }
    }
}

impl Metrics {
    pub fn reconciled(&self, controller: &'static str, ok: bool, took: Duration) {
        let result = if ok { "success" } else { "error" };
        self.reconciles.get_or_create(&ReconcileLabels { controller, result }).inc();
        self.durations.get_or_create(&ControllerLabel { controller }).observe(took.as_secs_f64());
    }

    pub fn resolution(&self, result: &str) {
        self.resolutions.get_or_create(&ResultLabel { result: result.to_owned() }).inc();
    }

    pub fn verification(&self, provider: &str, result: &str) {
        let labels = VerificationLabels { provider: provider.to_owned(), result: result.to_owned() };
        self.verifications.get_or_create(&labels).inc();
    }

    pub fn policy_evaluation(&self, policy: &str, result: &'static str) {
        self.policy_evaluations.get_or_create(&PolicyLabels { policy: policy.to_owned(), result }).inc();
    }

    pub fn pull_finished(&self, succeeded: bool, bytes: Option<i64>) {
        let result = if succeeded { "succeeded" } else { "failed" };
        self.pulls.get_or_create(&ResultLabel { result: result.to_owned() }).inc();
        if let Some(b) = bytes.filter(|b| *b > 0) {
            self.pulled_bytes.inc_by(b as u64);
        }
    }

    /// Records whether `namespace/name` is drifted (None: it was deleted).
    pub fn drift(&self, deployment: &str, drifted: Option<bool>) {
        let mut map = self.drifted_by_deployment.lock().unwrap_or_else(|p| p.into_inner());
        match drifted {
            Some(d) => {
                map.insert(deployment.to_owned(), d);
            }
            None => {
                map.remove(deployment);
            }
        }
        self.drifted.set(map.values().filter(|d| **d).count() as i64);
    }

    /// A Job's result on `node` was recorded as `status`.
    pub(crate) fn cache_observed(
        &self,
        node: &str,
        status: &crate::api::ModelCacheStatus,
        result: &super::inventories::JobResult,
    ) {
        for (kind, bytes) in [("used", status.used), ("capacity", status.capacity)] {
            self.cache_bytes.get_or_create(&CacheLabels { node: node.to_owned(), kind }).set(bytes);
        }
        self.evictions.inc_by(result.evicted().len() as u64);
        if let super::inventories::JobResult::Scrub(o) = result {
            let files = o.scrub.removed.iter().filter(|r| !o.scrub.corrupt_blobs.contains(&r.cause)).count();
            self.scrub_corrupt_blobs.inc_by((o.scrub.corrupt_blobs.len() + files) as u64);
        }
    }

    /// `node` is gone: its cache series go too.
    pub(crate) fn cache_gone(&self, node: &str) {
        for kind in ["used", "capacity"] {
            self.cache_bytes.remove(&CacheLabels { node: node.to_owned(), kind });
        }
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ModelCacheStatus;
    use crate::cache::{Evicted, PullOutcome, RemovedModel, ScrubOutcome, ScrubReport};
    use crate::controller::inventories::JobResult;

    #[test]
    fn cache_bytes_evictions_and_corrupt_blobs_are_exported() {
        let metrics = Metrics::default();
        let status = ModelCacheStatus { used: 600, capacity: 1000, ..Default::default() };
        let evicted = |d: &str| Evicted { digest: d.into(), bytes: 1, deployments: vec![] };
        let pull = JobResult::Pull(PullOutcome { evicted: vec![evicted("a"), evicted("b")], ..PullOutcome::new("x") });
        metrics.cache_observed("n1", &status, &pull);
        let removed =
            |cause: &str| RemovedModel { digest: "m".into(), cause: cause.into(), current: vec![], kept: vec![] };
        let scrub = JobResult::Scrub(ScrubOutcome {
            scrub: ScrubReport {
                corrupt_blobs: vec!["sha256:b".into()],
                // One model removed for the blob, one for a changed extracted file.
                removed: vec![removed("sha256:b"), removed("sha256:m file x")],
                ..Default::default()
            },
            cache: None,
        });
        metrics.cache_observed("n1", &status, &scrub);
        let text = metrics.encode();
        for line in [
            r#"modelpack_cache_bytes{node="n1",kind="used"} 600"#,
            r#"modelpack_cache_bytes{node="n1",kind="capacity"} 1000"#,
            "modelpack_evictions_total 2",
            "modelpack_scrub_corrupt_blobs_total 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from:\n{text}");
        }
        metrics.cache_gone("n1");
        assert!(!metrics.encode().contains(r#"node="n1""#));
    }
}
