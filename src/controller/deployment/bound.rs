//! The platform team's bound on where pull Jobs go. Pull Jobs run as root with the node cache
//! mounted, on the nodes a tenant's `nodeSelector` and `tolerations` choose; the operator's
//! `--node-selector` is intersected with every deployment's selection (and pinned on every pull
//! Job), and `--allowed-toleration` lists the taints tenants may tolerate. A deployment that
//! tolerates more is refused whole (Stalled, `TolerationNotAllowed`) rather than narrowed: a
//! silently dropped toleration would change where the tenant's workload can run.

use std::collections::BTreeMap;
use std::str::FromStr;

use k8s_openapi::api::core::v1::Toleration;

/// The taint effects a toleration without an effect tolerates.
const EFFECTS: [&str; 3] = ["NoSchedule", "PreferNoSchedule", "NoExecute"];

/// Where the operator may send pull Jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeBound {
    /// Labels every selected node must also carry.
    pub selector: BTreeMap<String, String>,
    /// The taints deployments may tolerate; `None`: any (no restriction).
    pub tolerations: Option<Vec<AllowedToleration>>,
}

/// `key[=value][:effect]`: taints with this key (and value, and effect, when given).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AllowedToleration {
    pub key: String,
    pub value: Option<String>,
    pub effect: Option<String>,
}

impl FromStr for AllowedToleration {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (rest, effect) = match text.rsplit_once(':') {
            Some((rest, effect)) if EFFECTS.contains(&effect) => (rest, Some(effect.to_owned())),
            Some((_, effect)) => return Err(format!("{text}: effect {effect:?} is not one of {}", EFFECTS.join(", "))),
            None => (text, None),
        };
        let (key, value) = match rest.split_once('=') {
            Some((key, value)) => (key, Some(value.to_owned())),
            None => (rest, None),
        };
        if key.is_empty() {
            return Err(format!("{text}: the key is empty (allowing every taint is what no flag means)"));
        }
        Ok(AllowedToleration { key: key.to_owned(), value, effect })
    }
}

impl std::fmt::Display for AllowedToleration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.key)?;
        if let Some(v) = &self.value {
            write!(f, "={v}")?;
        }
        if let Some(e) = &self.effect {
            write!(f, ":{e}")?;
        }
        Ok(())
    }
}

/// `key=value` of `--node-selector`.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_owned(), value.to_owned())),
        _ => Err(format!("{text}: expected KEY=VALUE")),
    }
}

impl NodeBound {
    /// Whether a node with these labels is inside the bound.
    pub fn admits(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }

    /// Why these tolerations go beyond the bound (the first one that does), if they do.
    pub fn refusal(&self, tolerations: &[Toleration]) -> Option<String> {
        let allowed = self.tolerations.as_ref()?;
        let beyond = tolerations.iter().find(|t| !covered(allowed, t))?;
        let list = if allowed.is_empty() {
            "none".to_owned()
        } else {
            allowed.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
        };
        Some(format!("toleration {} is not allowed by the operator (allowed: {list})", describe(beyond)))
    }
}

/// Whether every taint `toleration` tolerates is one some entry of `allowed` permits: for each
/// effect it tolerates, one entry has its key, its value (or any value) and that effect (or any).
fn covered(allowed: &[AllowedToleration], toleration: &Toleration) -> bool {
    let key = toleration.key.as_deref().unwrap_or_default();
    // Exists tolerates every value; Equal one value; anything else is invalid and not trusted.
    let value = match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => None,
        "Equal" => Some(toleration.value.as_deref().unwrap_or_default()),
        _ => return false,
    };
    let effects: Vec<&str> = match toleration.effect.as_deref() {
        None | Some("") => EFFECTS.to_vec(),
        Some(e) => vec![e],
    };
    !key.is_empty()
        && effects.iter().all(|effect| {
            allowed.iter().any(|a| {
                a.key == key
                    && a.value.as_deref().is_none_or(|v| value == Some(v))
                    && a.effect.as_deref().is_none_or(|e| e == *effect)
            })
        })
}

/// A toleration in one line, as written in the spec.
fn describe(t: &Toleration) -> String {
    let operator = t.operator.as_deref().unwrap_or("Equal");
    let key = t.key.as_deref().filter(|k| !k.is_empty());
    let mut fields: Vec<String> = key.map(|k| format!("key: {k}")).into_iter().collect();
    fields.push(format!("operator: {operator}"));
    if operator != "Exists" {
        fields.push(format!("value: {}", t.value.as_deref().unwrap_or_default()));
    }
    fields.extend(t.effect.as_deref().filter(|e| !e.is_empty()).map(|e| format!("effect: {e}")));
    let text = format!("{{{}}}", fields.join(", "));
    if key.is_none() && operator == "Exists" { format!("{text} (tolerates every taint)") } else { text }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn toleration(value: serde_json::Value) -> Toleration {
        serde_json::from_value(value).unwrap()
    }

    fn allowed(list: &[&str]) -> Vec<AllowedToleration> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn flags_parse_and_print_back() {
        for text in ["gpu", "gpu=a100", "gpu:NoSchedule", "gpu=a100:NoExecute", "nvidia.com/gpu=", "k=v=w"] {
            let parsed: AllowedToleration = text.parse().unwrap();
            assert_eq!(parsed.to_string(), text);
        }
        let a: AllowedToleration = "gpu=a100:NoSchedule".parse().unwrap();
        assert_eq!(
            (a.key.as_str(), a.value.as_deref(), a.effect.as_deref()),
            ("gpu", Some("a100"), Some("NoSchedule"))
        );
        for bad in ["", "=x", ":NoSchedule", "gpu:Sometimes", "gpu=a100:"] {
            assert!(bad.parse::<AllowedToleration>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(parse_label("zone=a"), Ok(("zone".into(), "a".into())));
        assert_eq!(parse_label("zone="), Ok(("zone".into(), "".into())));
        assert!(parse_label("zone").is_err() && parse_label("=a").is_err());
    }

    #[test]
    fn coverage_of_every_toleration_shape() {
        let everything = json!({"operator": "Exists"});
        let any_gpu = json!({"key": "gpu", "operator": "Exists"});
        let gpu_a100 = json!({"key": "gpu", "operator": "Equal", "value": "a100"});
        let gpu_a100_default_op = json!({"key": "gpu", "value": "a100"});
        let gpu_a100_noschedule = json!({"key": "gpu", "value": "a100", "effect": "NoSchedule"});
        let any_gpu_noexecute = json!({"key": "gpu", "operator": "Exists", "effect": "NoExecute"});
        let control_plane = json!({"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"});
        let odd_operator = json!({"key": "gpu", "operator": "Gt", "value": "1"});
        let empty_key_equal = json!({"operator": "Equal", "value": "a100"});
        let table: [(&[&str], &serde_json::Value, bool); 22] = [
            (&["gpu"], &everything, false),
            (&["gpu"], &any_gpu, true),
            (&["gpu"], &gpu_a100, true),
            (&["gpu"], &control_plane, false),
            (&["gpu=a100"], &any_gpu, false),
            (&["gpu=a100"], &gpu_a100, true),
            (&["gpu=a100"], &gpu_a100_default_op, true),
            (&["gpu=t4"], &gpu_a100, false),
            (&["gpu:NoSchedule"], &gpu_a100, false),
            (&["gpu:NoSchedule"], &gpu_a100_noschedule, true),
            (&["gpu=a100:NoSchedule"], &gpu_a100_noschedule, true),
            (&["gpu=a100:NoExecute"], &gpu_a100_noschedule, false),
            (&["gpu:NoSchedule"], &any_gpu_noexecute, false),
            (&["gpu:NoExecute"], &any_gpu_noexecute, true),
            // A toleration of every effect is covered when each effect is, by several entries.
            (&["gpu:NoSchedule", "gpu:NoExecute"], &any_gpu, false),
            (&["gpu:NoSchedule", "gpu:NoExecute", "gpu:PreferNoSchedule"], &any_gpu, true),
            (&["gpu=a100:NoSchedule", "gpu:NoExecute", "gpu:PreferNoSchedule"], &any_gpu, false),
            (&["gpu=a100:NoSchedule", "gpu:NoExecute", "gpu:PreferNoSchedule"], &gpu_a100, true),
            (&["gpu"], &odd_operator, false),
            (&["gpu"], &empty_key_equal, false),
            (&[], &any_gpu, false),
            (&["node-role.kubernetes.io/control-plane"], &control_plane, true),
        ];
        for (list, t, want) in table {
            assert_eq!(covered(&allowed(list), &toleration(t.clone())), want, "allowed {list:?}, toleration {t}");
        }
    }

    #[test]
    fn refusals_name_the_toleration_and_the_bound() {
        let none = NodeBound::default();
        assert_eq!(none.refusal(&[toleration(json!({"operator": "Exists"}))]), None, "no flag: no restriction");
        let bound = NodeBound { tolerations: Some(allowed(&["gpu"])), ..Default::default() };
        assert_eq!(bound.refusal(&[]), None);
        assert_eq!(bound.refusal(&[toleration(json!({"key": "gpu", "operator": "Exists"}))]), None);
        let tolerations =
            [toleration(json!({"key": "gpu", "operator": "Exists"})), toleration(json!({"operator": "Exists"}))];
        let why = bound.refusal(&tolerations).unwrap();
        assert_eq!(
            why,
            "toleration {operator: Exists} (tolerates every taint) is not allowed by the operator (allowed: gpu)"
        );
        let strict = NodeBound { tolerations: Some(Vec::new()), ..Default::default() };
        let why = strict.refusal(&[toleration(json!({"key": "gpu", "value": "a", "effect": "NoSchedule"}))]).unwrap();
        assert_eq!(
            why,
            "toleration {key: gpu, operator: Equal, value: a, effect: NoSchedule} is not allowed by the operator (allowed: none)"
        );
    }

    #[test]
    fn the_selector_bounds_every_node() {
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        let bound = NodeBound { selector: labels(&[("pool", "models"), ("zone", "a")]), ..Default::default() };
        let table = [
            (labels(&[("pool", "models"), ("zone", "a")]), true),
            (labels(&[("pool", "models"), ("zone", "a"), ("gpu", "x")]), true),
            (labels(&[("pool", "models")]), false),
            (labels(&[("pool", "models"), ("zone", "b")]), false),
            (labels(&[]), false),
        ];
        for (node, want) in table {
            assert_eq!(bound.admits(&node), want, "{node:?}");
        }
        assert!(NodeBound::default().admits(&labels(&[])), "no flag: every node");
    }
}
