//! Which nodes a ModelDeployment selects, and the label that tells serving workloads a node is warm.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use kube::ResourceExt;

use super::bound::NodeBound;
use crate::api::ModelDeployment;
use crate::api::{ModelCacheStatus, ModelDeploymentStatus, NodePhase};

/// Prefix of the per-deployment node labels (`<prefix>/<namespace>.<name>`).
pub const READY_LABEL_PREFIX: &str = "ready.modelpack.dev";

/// Ready, schedulable nodes matching the selector whose NoSchedule/NoExecute taints are tolerated,
/// by name.
/// Only nodes inside the operator's `bound` count.
pub fn selected<'a>(
    deployment: &ModelDeployment,
    bound: &NodeBound,
    nodes: impl Iterator<Item = &'a Node>,
) -> Vec<String> {
    let mut names: Vec<String> =
        nodes.filter(|n| bound.admits(n.labels()) && selects(deployment, n)).map(|n| n.name_any()).collect();
    names.sort();
    names
}

fn selects(deployment: &ModelDeployment, node: &Node) -> bool {
    if node.metadata.deletion_timestamp.is_some() || !is_ready(node) {
        return false;
    }
    let spec = node.spec.as_ref();
    if spec.and_then(|s| s.unschedulable).unwrap_or(false) {
        return false;
    }
    let labels = node.labels();
    if !deployment.spec.node_selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
        return false;
    }
    let taints = spec.and_then(|s| s.taints.as_deref()).unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| deployment.spec.tolerations.iter().any(|tol| tolerates(tol, t)))
}

pub fn is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The scheduler's rule (k8s.io/api/core/v1 Toleration.ToleratesTaint).
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_matches = toleration.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key = toleration.key.as_deref().unwrap_or("");
    let key_matches = key.is_empty() || key == taint.key;
    let value_matches = match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => true,
        "Equal" => !key.is_empty() && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
        _ => false,
    };
    effect_matches && key_matches && value_matches
}

/// The label key of `namespace/name`: readable when it fits the 63-character name segment (a
/// namespace has no dots, so `<namespace>.<name>` is unambiguous), a stable hash otherwise.
pub fn ready_label(namespace: &str, name: &str) -> String {
    let readable = format!("{namespace}.{name}");
    if readable.len() <= 63 {
        return format!("{READY_LABEL_PREFIX}/{readable}");
    }
    format!("{READY_LABEL_PREFIX}/d-{}", short_hash(&[namespace, name], 30))
}

/// Hex of a SHA-256 over `parts` (separated so that ("ab","c") ≠ ("a","bc")), `len` characters.
pub fn short_hash(parts: &[&str], len: usize) -> String {
    let joined = parts.join("\u{0}");
    let digest = crate::registry::sha256_digest(joined.as_bytes());
    digest.trim_start_matches("sha256:").chars().take(len).collect()
}

/// A fingerprint of what makes a node's selection change: labels (except the ready labels this
/// operator writes), taints, schedulability and readiness; heartbeats and our own labels do not
/// start reconciles.
pub fn selection_fingerprint(node: &Node) -> Option<u64> {
    let mut h = std::hash::DefaultHasher::new();
    let labels: BTreeMap<&String, &String> =
        node.labels().iter().filter(|(k, _)| !k.starts_with(READY_LABEL_PREFIX)).collect();
    labels.hash(&mut h);
    let spec = node.spec.as_ref();
    spec.and_then(|s| s.unschedulable).hash(&mut h);
    for t in spec.and_then(|s| s.taints.as_deref()).unwrap_or_default() {
        (&t.key, &t.value, &t.effect).hash(&mut h);
    }
    is_ready(node).hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// Whether a node cache's new status can change the plan of the deployment `key` (`namespace/name`)
/// whose status is `status`: the version it recorded as the node's current, linked before the
/// cache was measured, is no longer linked (a scrub removed it), or a pull there failed (one that
/// wanted room retries when the cache shows it). Every pull rewrites its node's cache status; asking
/// every deployment on the node each time made 20 deployments on 50 nodes reconcile 20,000 times.
pub fn cache_concerns(status: &ModelDeploymentStatus, key: &str, node: &str, cache: &ModelCacheStatus) -> bool {
    let linked = |digest: &str| cache.models.iter().any(|m| m.digest == digest && m.current.iter().any(|d| d == key));
    let measured_after = |at| super::plan::measured_after(cache.observed_at.as_ref(), at);
    // A list cut short is not read by the plan either (`index::node_inventories`).
    if cache.models.len() != cache.model_count as usize {
        return false;
    }
    status.nodes.iter().flat_map(|n| &n.entries).filter(|e| e.node == node).any(|e| {
        e.phase == NodePhase::Failed
            || e.current.as_deref().is_some_and(|c| measured_after(e.completed_at.as_ref()) && !linked(c))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(labels: serde_json::Value, taints: serde_json::Value, ready: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "n", "labels": labels},
            "spec": {"taints": taints},
            "status": {"conditions": [{"type": "Ready", "status": ready}]}
        }))
        .unwrap()
    }

    fn deployment(selector: serde_json::Value, tolerations: serde_json::Value) -> ModelDeployment {
        serde_json::from_value(json!({
            "metadata": {"name": "d", "namespace": "ns"},
            "spec": {"modelRef": {"name": "m"}, "nodeSelector": selector, "tolerations": tolerations}
        }))
        .unwrap()
    }

    #[test]
    fn selection_follows_labels_readiness_and_taints() {
        let gpu = deployment(json!({"gpu": "a100"}), json!([]));
        assert!(selects(&gpu, &node(json!({"gpu": "a100"}), json!([]), "True")));
        assert!(!selects(&gpu, &node(json!({"gpu": "t4"}), json!([]), "True")));
        assert!(!selects(&gpu, &node(json!({"gpu": "a100"}), json!([]), "False")));
        let tainted = node(json!({}), json!([{"key": "dedicated", "value": "ml", "effect": "NoSchedule"}]), "True");
        assert!(!selects(&deployment(json!({}), json!([])), &tainted));
        let equal = json!([{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"}]);
        assert!(selects(&deployment(json!({}), equal), &tainted));
        let other_value = json!([{"key": "dedicated", "value": "web"}]);
        assert!(!selects(&deployment(json!({}), other_value), &tainted));
        assert!(selects(&deployment(json!({}), json!([{"operator": "Exists"}])), &tainted));
        let prefer = node(json!({}), json!([{"key": "x", "effect": "PreferNoSchedule"}]), "True");
        assert!(selects(&deployment(json!({}), json!([])), &prefer), "PreferNoSchedule does not exclude");
    }

    #[test]
    fn the_bound_narrows_every_selection() {
        let mut inside = node(json!({"pool": "models", "gpu": "a100"}), json!([]), "True");
        inside.metadata.name = Some("inside".into());
        let mut outside = node(json!({"gpu": "a100"}), json!([]), "True");
        outside.metadata.name = Some("outside".into());
        let bound = NodeBound { selector: [("pool".into(), "models".into())].into(), tolerations: None };
        let all = [inside, outside];
        let gpu = deployment(json!({"gpu": "a100"}), json!([]));
        assert_eq!(selected(&gpu, &bound, all.iter()), vec!["inside"]);
        assert_eq!(selected(&gpu, &NodeBound::default(), all.iter()), vec!["inside", "outside"]);
        let elsewhere = deployment(json!({"pool": "other"}), json!([]));
        assert!(selected(&elsewhere, &bound, all.iter()).is_empty(), "asking for more selects nothing");
    }

    #[test]
    fn ready_labels_are_valid_and_stable() {
        assert_eq!(ready_label("ml", "llama"), "ready.modelpack.dev/ml.llama");
        let long = ready_label("a-very-long-namespace-name-for-models", "and-an-even-longer-deployment-name");
        let (_, name) = long.split_once('/').unwrap();
        assert!(name.len() <= 63 && name.starts_with("d-"), "{long}");
        assert_eq!(long, ready_label("a-very-long-namespace-name-for-models", "and-an-even-longer-deployment-name"));
    }

    #[test]
    fn our_labels_do_not_change_the_fingerprint() {
        let a = node(json!({"zone": "a"}), json!([]), "True");
        let b = node(json!({"zone": "a", "ready.modelpack.dev/ns.d": "abc"}), json!([]), "True");
        assert_eq!(selection_fingerprint(&a), selection_fingerprint(&b));
        assert_ne!(selection_fingerprint(&a), selection_fingerprint(&node(json!({"zone": "b"}), json!([]), "True")));
    }

    fn status(entries: serde_json::Value) -> ModelDeploymentStatus {
        serde_json::from_value(
            json!({"nodes": {"selected": 2, "ready": 0, "pulling": 0, "failed": 0, "summary": "", "entries": entries}}),
        )
        .unwrap()
    }

    fn cache(observed_at: &str, models: serde_json::Value) -> ModelCacheStatus {
        let count = models.as_array().map_or(0, Vec::len);
        serde_json::from_value(json!({
            "capacity": 100, "used": 10, "free": 90, "modelCount": count, "models": models, "observedAt": observed_at
        }))
        .unwrap()
    }

    #[test]
    fn a_node_cache_concerns_a_deployment_only_when_it_lost_its_version_or_a_pull_there_failed() {
        let ready = |node: &str| json!({"node": node, "digest": "sha256:a", "current": "sha256:a", "phase": "Ready", "completedAt": "2026-11-29T10:00:00Z"});
        let holds = json!([{"digest": "sha256:a", "size": 1, "deployments": ["ns/d"], "current": ["ns/d"]}]);
        let other = json!([{"digest": "sha256:a", "size": 1, "deployments": ["ns/e"], "current": ["ns/e"]}]);
        let later = "2026-11-29T10:05:00Z";
        let s = status(json!([ready("n1"), ready("n2")]));
        assert!(
            !cache_concerns(&s, "ns/d", "n1", &cache(later, holds.clone())),
            "another pull on the node: nothing lost"
        );
        assert!(cache_concerns(&s, "ns/d", "n1", &cache(later, other.clone())), "no longer linked as ns/d's current");
        assert!(cache_concerns(&s, "ns/d", "n1", &cache(later, json!([]))), "scrubbed away");
        assert!(!cache_concerns(&s, "ns/d", "n3", &cache(later, json!([]))), "no entry on that node");
        assert!(
            !cache_concerns(&s, "ns/d", "n1", &cache("2026-11-29T09:59:00Z", json!([]))),
            "measured before the pull linked it"
        );
        let pulling = json!({"node": "n1", "digest": "sha256:b", "current": "sha256:a", "phase": "Pulling"});
        assert!(
            !cache_concerns(&status(json!([pulling])), "ns/d", "n1", &cache(later, json!([]))),
            "no completion to compare with"
        );
        let failed = json!({"node": "n1", "digest": "sha256:b", "phase": "Failed", "message": "InsufficientStorage"});
        assert!(
            cache_concerns(&status(json!([failed])), "ns/d", "n1", &cache(later, holds)),
            "a failed pull may now have room"
        );
        assert!(!cache_concerns(&status(json!([])), "ns/d", "n1", &cache(later, other.clone())));
        let mut cut_short = cache(later, other);
        cut_short.model_count = 2;
        assert!(!cache_concerns(&s, "ns/d", "n1", &cut_short), "a list cut short is not read");
    }
}
