//! Which nodes a ModelDeployment selects, and the label that tells serving workloads a node is warm.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};
use kube::ResourceExt;

use super::bound::NodeBound;
use crate::api::ModelDeployment;

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
}
