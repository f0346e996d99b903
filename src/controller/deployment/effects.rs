//! What a planned status amounts to outside the status, decided purely: the nodes' ready labels,
//! the metrics to record, and when to look again.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::api::{ModelDeploymentStatus, NodePhase, short_digest};

/// The metrics one pass records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// (succeeded, bytes) of each pull that finished since the previous status.
    pub pulls_finished: Vec<(bool, Option<i64>)>,
    /// Whether the deployment is drifted (None: unknown).
    pub drifted: Option<bool>,
}

pub fn metrics(previous: &ModelDeploymentStatus, next: &ModelDeploymentStatus) -> Metrics {
    let before: BTreeMap<(&str, &str), NodePhase> = previous
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .map(|e| ((e.node.as_str(), e.digest.as_str()), e.phase))
        .collect();
    let pulls_finished = next
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .filter(|e| {
            let finished = matches!(e.phase, NodePhase::Ready | NodePhase::Failed) && e.completed_at.is_some();
            finished && before.get(&(e.node.as_str(), e.digest.as_str())) != Some(&e.phase)
        })
        .map(|e| (e.phase == NodePhase::Ready, e.bytes))
        .collect();
    Metrics { pulls_finished, drifted: next.drift.as_ref().map(|d| !d.in_sync) }
}

/// Nodes whose `current` holds the desired or deployed version carry the deployment's ready label
/// (value: that version's short digest); every other node loses it.
pub fn wanted_labels(status: &ModelDeploymentStatus) -> BTreeMap<String, String> {
    let serving: Vec<&str> =
        [status.desired.as_ref().map(|d| d.digest.as_str()), status.deployed.as_ref().map(|d| d.digest.as_str())]
            .into_iter()
            .flatten()
            .collect();
    status
        .nodes
        .iter()
        .flat_map(|n| &n.entries)
        .filter_map(|e| {
            let current = e.current.as_deref()?;
            serving.contains(&current).then(|| (e.node.clone(), short_digest(current)))
        })
        .collect()
}

/// The label changes (node, new value; None removes it) that make every node of `labelled` (each
/// node with the value it carries now) carry `wanted`.
pub fn label_changes(
    labelled: &BTreeMap<String, Option<String>>,
    wanted: &BTreeMap<String, String>,
) -> Vec<(String, Option<String>)> {
    labelled
        .iter()
        .filter(|(node, now)| wanted.get(node.as_str()) != now.as_ref())
        .map(|(node, _)| (node.clone(), wanted.get(node).cloned()))
        .collect()
}

/// The hand-over follows the stored `deployed`: a switch written now is handed over on the next
/// reconcile, and workloads rolling out or missing are re-read every 10s (they are not watched).
pub fn requeue_after(
    planned: Duration,
    previous: &ModelDeploymentStatus,
    next: &ModelDeploymentStatus,
    recheck: bool,
) -> Duration {
    let digest = |s: &ModelDeploymentStatus| s.deployed.as_ref().map(|d| d.digest.clone());
    if digest(previous) != digest(next) {
        return Duration::from_secs(1);
    }
    if recheck { planned.min(Duration::from_secs(10)) } else { planned }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn status(v: serde_json::Value) -> ModelDeploymentStatus {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn nodes_holding_the_desired_or_deployed_version_carry_the_label_and_others_lose_it() {
        let (a, b, c) = (format!("sha256:{}", "a".repeat(64)), format!("sha256:{}", "b".repeat(64)), "sha256:c");
        let s = status(json!({
            "desired": {"digest": a, "shortDigest": "x"},
            "deployed": {"digest": b, "shortDigest": "y", "since": "2026-12-01T00:00:00Z"},
            "nodes": {"selected": 3, "ready": 1, "pulling": 0, "failed": 0, "summary": "1/3", "entries": [
                {"node": "n1", "digest": a, "phase": "Ready", "current": a},
                {"node": "n2", "digest": a, "phase": "Pending", "current": b},
                {"node": "n3", "digest": a, "phase": "Pending", "current": c},
            ]}
        }));
        let wanted = wanted_labels(&s);
        assert_eq!(wanted.get("n1"), Some(&short_digest(&a)));
        assert_eq!(wanted.get("n2"), Some(&short_digest(&b)));
        assert_eq!(wanted.get("n3"), None, "an old version is not served");
        let labelled = BTreeMap::from([
            ("n1".to_owned(), Some(short_digest(&a))),
            ("n2".to_owned(), None),
            ("n3".to_owned(), Some("old".to_owned())),
            ("n4".to_owned(), None),
        ]);
        assert_eq!(
            label_changes(&labelled, &wanted),
            vec![("n2".to_owned(), Some(short_digest(&b))), ("n3".to_owned(), None)],
            "only the nodes whose label differs are patched"
        );
    }

    #[test]
    fn a_pull_is_counted_once_when_it_finishes() {
        let entry = |phase: &str, completed: bool| {
            let mut e = json!({"node": "n1", "digest": "sha256:a", "phase": phase, "bytes": 7});
            if completed {
                e["completedAt"] = json!("2026-12-01T00:00:00Z");
            }
            status(
                json!({"nodes": {"selected": 1, "ready": 0, "pulling": 0, "failed": 0, "summary": "", "entries": [e]},
                "drift": {"since": "2026-12-01T00:00:00Z", "inSync": false, "reason": "NodesNotReady", "message": ""}}),
            )
        };
        let m = metrics(&entry("Pulling", false), &entry("Ready", true));
        assert_eq!(m, Metrics { pulls_finished: vec![(true, Some(7))], drifted: Some(true) });
        assert!(metrics(&entry("Ready", true), &entry("Ready", true)).pulls_finished.is_empty());
        assert_eq!(metrics(&entry("Ready", true), &entry("Failed", true)).pulls_finished, vec![(false, Some(7))]);
        assert!(metrics(&entry("Pending", false), &entry("Pulling", false)).pulls_finished.is_empty());
    }
}
