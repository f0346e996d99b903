//! Evaluating compiled rules on one digest's variables. Fail closed: only `true` passes.

use std::collections::HashMap;
use std::sync::Arc;

use cel::Context;
use cel::objects::{Key, Map, Value};
use serde::Serialize;
use serde_json::Value as Json;

use super::MAX_COST;
use super::compile::{CompiledPolicy, ENV, on_big_stack};
use super::variables::{NAMES, Variables};

/// The verdict of one rule (the shape `check -o json` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    pub policy: String,
    pub rule: String,
    pub passed: bool,
    /// Empty when passed; else the rule's message and why it failed.
    pub message: String,
}

/// Every rule of `policy` on `variables`.
pub fn evaluate(policy: &CompiledPolicy, variables: &Variables) -> Vec<RuleResult> {
    evaluate_json(policy, &variables.to_json())
}

/// Every rule of `policy` on variables given as one JSON object keyed by the variable names (a
/// missing name is an undeclared reference for the rules that use it).
pub fn evaluate_json(policy: &CompiledPolicy, variables: &Json) -> Vec<RuleResult> {
    match on_big_stack(|| evaluate_here(policy, variables)) {
        Ok(results) => results,
        Err(e) => policy
            .rules
            .iter()
            .map(|rule| RuleResult {
                policy: policy.name.clone(),
                rule: rule.name.clone(),
                passed: false,
                message: format!("{} (error: {e})", rule.message),
            })
            .collect(),
    }
}

fn evaluate_here(policy: &CompiledPolicy, variables: &Json) -> Vec<RuleResult> {
    let mut context = Context::with_env(ENV.clone());
    for name in NAMES {
        if let Some(value) = variables.get(name) {
            context.add_variable_from_value(name, to_cel(value));
        }
    }
    let largest = largest(variables) as u64;
    policy
        .rules
        .iter()
        .map(|rule| {
            let cost = (rule.nodes as u64).saturating_mul(largest.max(1).saturating_pow(rule.depth as u32));
            let failure = match rule.program.execute(&context) {
                _ if cost > MAX_COST => Some(format!(
                    "error: up to {cost} steps on this artifact ({} nested macros over up to {largest} entries), \
                     more than {MAX_COST}",
                    rule.depth
                )),
                Ok(Value::Bool(true)) => None,
                Ok(Value::Bool(false)) => Some("evaluated to false".to_owned()),
                Ok(other) => Some(format!("evaluated to {}, not a bool", other.type_of())),
                Err(e) => Some(format!("error: {e}")),
            };
            RuleResult {
                policy: policy.name.clone(),
                rule: rule.name.clone(),
                passed: failure.is_none(),
                message: failure.map(|why| format!("{} ({why})", rule.message)).unwrap_or_default(),
            }
        })
        .collect()
}

/// The largest list or map anywhere in `v`: what one macro may iterate over.
fn largest(v: &Json) -> usize {
    match v {
        Json::Array(items) => items.iter().map(largest).fold(items.len(), usize::max),
        Json::Object(map) => map.values().map(largest).fold(map.len(), usize::max),
        _ => 0,
    }
}

/// JSON to CEL as Kubernetes does for CRD values: integers that fit are `int`, other numbers
/// `double`, objects maps with string keys.
fn to_cel(value: &Json) -> Value {
    match value {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::Int(i),
            None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(items) => Value::List(Arc::new(items.iter().map(to_cel).collect())),
        Json::Object(map) => {
            let entries: HashMap<Key, Value> =
                map.iter().map(|(k, v)| (Key::String(Arc::new(k.clone())), to_cel(v))).collect();
            Value::Map(Map { map: Arc::new(entries) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ModelPolicySpec, PolicyAction, PolicyRule};
    use crate::policy::compile;
    use serde_json::json;

    fn verdicts(expressions: &[&str], vars: &Json) -> Vec<bool> {
        let rules = expressions
            .iter()
            .enumerate()
            .map(|(i, e)| PolicyRule { name: format!("r{i}"), expression: (*e).into(), message: None })
            .collect();
        let spec =
            ModelPolicySpec { action: PolicyAction::Enforce, namespace_selector: None, model_selector: None, rules };
        let policy = compile("p", &spec).unwrap();
        evaluate_json(&policy, vars).into_iter().map(|r| r.passed).collect()
    }

    fn vars() -> Json {
        json!({
            "repository": "r.example/team/m", "digest": "sha256:ab", "tag": "v1",
            "descriptor": {"licenses": ["Apache-2.0", "MIT"], "createdAt": "2025-01-01T00:00:00Z"},
            "config": {"paramSize": "8b", "capabilities": {"inputTypes": ["text", "image"], "reasoning": true}},
            "modelfs": {"type": "layers", "diffIds": []},
            "annotations": {},
            "layers": [{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": "sha256:l", "size": 4096,
                        "path": "model.safetensors", "annotations": {}}],
            "referrers": [{"artifactType": "application/spdx+json", "digest": "sha256:s", "annotations": {"a": "b"}}],
        })
    }

    #[test]
    fn only_true_passes() {
        let got = verdicts(
            &[
                r#"descriptor.licenses.all(l, l in ["Apache-2.0", "MIT"])"#,
                r#"descriptor.licenses.all(l, l in ["MIT"])"#,
                "descriptor.name == 'x'",
                "has(descriptor.name) && descriptor.name == 'x'",
                "!has(descriptor.name)",
                "layers[0].size",
                "layers[0].size > 4000 && layers[0].path.endsWith('.safetensors')",
                "config.capabilities.inputTypes.exists_one(t, t == 'image') && config.capabilities.reasoning",
                r#"referrers.exists(r, r.artifactType == "application/spdx+json" && r.annotations["a"] == "b")"#,
                "timestamp(descriptor.createdAt) < timestamp('2026-01-01T00:00:00Z') + duration('1h')",
                "size(modelfs.diffIds) == 0 && size(annotations) == 0 && tag.matches('^v[0-9]+$')",
                "1 / 0 == 1 || true",
            ],
            &vars(),
        );
        assert_eq!(got, [true, false, false, false, true, false, true, true, true, true, true, true]);
    }

    #[test]
    fn failures_say_why() {
        let rules = vec![PolicyRule {
            name: "lic".into(),
            expression: "descriptor.vendor == 'x'".into(),
            message: Some("vendor x".into()),
        }];
        let spec =
            ModelPolicySpec { action: PolicyAction::Audit, namespace_selector: None, model_selector: None, rules };
        let results = evaluate_json(&compile("p", &spec).unwrap(), &vars());
        assert!(!results[0].passed);
        assert!(results[0].message.starts_with("vendor x (error: "), "{}", results[0].message);
        assert!(results[0].message.contains("vendor"), "{}", results[0].message);
    }

    #[test]
    fn a_rule_too_costly_for_the_artifact_fails_without_running() {
        let layers: Vec<Json> = (0..1024).map(|i| json!({"digest": format!("d{i}"), "size": i})).collect();
        let vars = json!({"layers": layers});
        let got =
            verdicts(&["layers.all(a, layers.exists(b, a.digest == b.digest))", "layers.all(l, l.size >= 0)"], &vars);
        assert_eq!(got, [false, true]);
        let small = json!({"layers": (0..100).map(|i| json!({"digest": format!("d{i}")})).collect::<Vec<_>>()});
        assert_eq!(verdicts(&["layers.all(a, layers.exists(b, a.digest == b.digest))"], &small), [true]);
        assert_eq!(largest(&json!({"a": [1, [1, 2, 3, 4]], "b": {"c": 1}})), 4);
    }

    #[test]
    fn numbers_are_ints_when_integral() {
        assert_eq!(to_cel(&json!(3)), Value::Int(3));
        assert_eq!(to_cel(&json!(1.5)), Value::Float(1.5));
        assert_eq!(to_cel(&json!(u64::MAX)), Value::Float(u64::MAX as f64));
    }
}
