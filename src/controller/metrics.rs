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
        Metrics {
            registry,
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

    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
