//! Evaluating compiled rules on one digest's variables. Fail closed: only `true` passes.
//!
//! Each rule's worst case on these variables (see [`super::cost`]) is computed first: a rule over
//! [`MAX_COST`] or [`MAX_MEMORY`] fails with that reason and never starts. The others run on a
//! thread of their own under [`RULE_DEADLINE`] (see [`super::run`]); [`evaluate_off_workers`]
//! waits for that thread without holding an async worker, and stops it when it waits no longer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cel::Context;
use cel::objects::{Key, Map, Value};
use serde::Serialize;
use serde_json::Value as Json;
use tokio::sync::Semaphore;

use super::compile::{CompiledPolicy, CompiledRule, ENV, STACK_BYTES, on_big_stack};
use super::cost::{Estimate, estimate};
use super::run::{self, Stopped, Watch};
use super::shape::Shape;
use super::variables::{NAMES, Variables};
use super::{MAX_COST, MAX_MEMORY, RULE_DEADLINE};

/// Evaluations [`evaluate_off_workers`] runs at once, each within [`MAX_MEMORY`] of values.
pub const CONCURRENT: usize = 4;
static SLOTS: std::sync::LazyLock<Arc<Semaphore>> = std::sync::LazyLock::new(|| Arc::new(Semaphore::new(CONCURRENT)));

/// The verdict of one rule (the shape `check -o json` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleResult {
    pub policy: String,
    pub rule: String,
    pub passed: bool,
    /// Empty when passed; else the rule's message and why it failed.
    pub message: String,
}

/// Every rule of `policy` on `variables`, on this thread (and one it starts).
pub fn evaluate(policy: &CompiledPolicy, variables: &Variables) -> Vec<RuleResult> {
    evaluate_json(policy, &variables.to_json())
}

/// Every rule of `policy` on variables given as one JSON object keyed by the variable names (a
/// missing name is an undeclared reference for the rules that use it).
pub fn evaluate_json(policy: &CompiledPolicy, variables: &Json) -> Vec<RuleResult> {
    let cancel = Arc::new(AtomicBool::new(false));
    match on_big_stack(|| evaluate_here(policy, variables, &cancel)) {
        Ok(results) => results,
        Err(e) => failed_all(policy, &format!("error: {e}")),
    }
}

/// [`evaluate`] on a thread of its own, awaited without holding the async worker: a rule that runs
/// long holds up nothing but its own Model. Past [`RULE_DEADLINE`] per rule (and a second), the
/// evaluation is stopped and every rule fails with that reason.
/// At most [`CONCURRENT`] at once, so their memory is bounded too.
pub async fn evaluate_off_workers(policy: &CompiledPolicy, variables: &Variables) -> Vec<RuleResult> {
    evaluate_in_slot(SLOTS.clone(), policy, variables).await
}

/// [`evaluate_off_workers`] with its slots given (tests give their own: the process-wide ones are
/// shared with every other test running at the same time).
async fn evaluate_in_slot(slots: Arc<Semaphore>, policy: &CompiledPolicy, variables: &Variables) -> Vec<RuleResult> {
    let Ok(slot) = slots.acquire_owned().await else {
        return failed_all(policy, "error: no CEL evaluation slot");
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (owned, json, flag) = (policy.clone(), variables.to_json(), cancel.clone());
    // The slot is the thread's: given back when it ends, even after it was stopped.
    let spawned = std::thread::Builder::new().name("cel".into()).stack_size(STACK_BYTES).spawn(move || {
        let results = evaluate_here(&owned, &json, &flag);
        // Given back before the answer: whoever awaits it finds the slot free again.
        drop(slot);
        let _ = tx.send(results);
    });
    if let Err(e) = spawned {
        return failed_all(policy, &format!("error: starting the CEL thread: {e}"));
    }
    let limit = RULE_DEADLINE * (policy.rules.len() as u32).max(1) + Duration::from_secs(1);
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(results)) => results,
        Ok(Err(_)) => failed_all(policy, "error: the CEL implementation panicked"),
        Err(_) => {
            cancel.store(true, Ordering::Relaxed);
            failed_all(policy, &format!("error: not evaluated within {} s", limit.as_secs()))
        }
    }
}

fn failed_all(policy: &CompiledPolicy, why: &str) -> Vec<RuleResult> {
    policy.rules.iter().map(|rule| result(policy, rule, Some(why.to_owned()))).collect()
}

fn result(policy: &CompiledPolicy, rule: &CompiledRule, failure: Option<String>) -> RuleResult {
    RuleResult {
        policy: policy.name.clone(),
        rule: rule.name.clone(),
        passed: failure.is_none(),
        message: failure.map(|why| format!("{} ({why})", rule.message)).unwrap_or_default(),
    }
}

fn evaluate_here(policy: &CompiledPolicy, variables: &Json, cancel: &Arc<AtomicBool>) -> Vec<RuleResult> {
    let mut context = Context::with_env(ENV.clone());
    context.set_variable_resolver(&Watch);
    let mut shapes = BTreeMap::new();
    for name in NAMES {
        if let Some(value) = variables.get(name) {
            context.add_variable_from_value(name, to_cel(value));
            shapes.insert(name.to_owned(), Shape::of_json(value));
        }
    }
    policy.rules.iter().map(|rule| result(policy, rule, failure(rule, &context, &shapes, cancel))).collect()
}

/// Why `rule` fails on these variables (`None`: it passed).
fn failure(
    rule: &CompiledRule,
    context: &Context,
    shapes: &BTreeMap<String, Shape>,
    cancel: &Arc<AtomicBool>,
) -> Option<String> {
    match estimate(&rule.expr, shapes) {
        Err(why) => return Some(format!("error: {why}")),
        Ok(Estimate { cost, .. }) if cost > MAX_COST => {
            return Some(format!("error: up to {cost} steps on this artifact, more than {MAX_COST}; not evaluated"));
        }
        Ok(Estimate { memory, .. }) if memory > MAX_MEMORY => {
            return Some(format!(
                "error: up to {memory} bytes of values on this artifact, more than {MAX_MEMORY}; not evaluated"
            ));
        }
        Ok(_) => {}
    }
    let deadline = Instant::now() + RULE_DEADLINE;
    match run::guarded(deadline, cancel, &rule.regexes, || Value::resolve(&rule.expr, context)) {
        Err(Stopped::Deadline) => Some(format!("error: stopped after {} s", RULE_DEADLINE.as_secs())),
        Err(Stopped::Cancelled) => Some("error: stopped".to_owned()),
        Ok(Ok(Value::Bool(true))) => None,
        Ok(Ok(Value::Bool(false))) => Some("evaluated to false".to_owned()),
        Ok(Ok(other)) => Some(format!("evaluated to {}, not a bool", other.type_of())),
        Ok(Err(e)) => Some(format!("error: {e}")),
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

    fn results(expressions: &[&str], vars: &Json) -> Vec<RuleResult> {
        let rules = expressions
            .iter()
            .enumerate()
            .map(|(i, e)| PolicyRule { name: format!("r{i}"), expression: (*e).into(), message: None })
            .collect();
        let spec =
            ModelPolicySpec { action: PolicyAction::Enforce, namespace_selector: None, model_selector: None, rules };
        evaluate_json(&compile("p", &spec).unwrap(), vars)
    }

    /// A config whose `descriptor.licenses` holds `n` strings of `len` bytes.
    fn licenses(n: usize, len: usize) -> Json {
        let list: Vec<Json> = (0..n).map(|i| json!(format!("{i:0len$}"))).collect();
        json!({"descriptor": {"licenses": list}, "layers": [], "tag": "v1"})
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
    }

    /// Shapes that would run for minutes or take gigabytes on a config near 1 MiB: each fails at
    /// once, naming the bound, and nothing of it ran (the whole policy takes well under a second).
    #[test]
    fn pathological_rules_are_refused_before_running() {
        let vars = licenses(30_000, 24);
        let shapes = [
            "descriptor.licenses.all(a, descriptor.licenses.all(b, a == b || a != b))",
            "descriptor.licenses.exists(a, descriptor.licenses.exists_one(b, b.startsWith(a)))",
            "descriptor.licenses.map(a, descriptor.licenses.map(b, a + b)).size() > 0",
            "descriptor.licenses.filter(a, descriptor.licenses.filter(b, a + b + a + b != '').size() > 0).size() > 0",
            "descriptor.licenses.all(l, l.matches(l))",
            "descriptor.licenses.map(a, descriptor.licenses).size() > 0",
            "descriptor.licenses.all(a, size(descriptor.licenses.map(b, a + b + a)) > 0)",
            "descriptor.licenses.map(l, [descriptor, descriptor, descriptor, descriptor]).size() > 0",
            "descriptor.licenses.all(a, a in descriptor.licenses)",
        ];
        let started = Instant::now();
        let got = results(&shapes, &vars);
        let elapsed = started.elapsed();
        for (r, shape) in got.iter().zip(shapes) {
            assert!(!r.passed && r.message.contains("not evaluated"), "{shape}: {}", r.message);
        }
        assert!(elapsed < Duration::from_secs(2), "{elapsed:?}");
        // Within the steps, over the memory: 150 copies of a 0.15 MB list.
        let copies = results(&["descriptor.licenses.map(a, descriptor.licenses).size() > 0"], &licenses(150, 1000));
        assert!(copies[0].message.contains("bytes of values") && !copies[0].passed, "{}", copies[0].message);
    }

    /// Rules within the bounds give cel's verdicts in bounded time: a single macro over 30,000
    /// entries, a `matches` over 2,000 (its pattern compiled once), a `map` with concatenation.
    #[test]
    fn rules_within_the_bounds_run_and_finish_in_time() {
        let vars = licenses(30_000, 24);
        let started = Instant::now();
        let got = verdicts(
            &[
                "descriptor.licenses.all(l, size(l) == 24)",
                "descriptor.licenses.exists(l, l == '000000000000000000029999')",
                "descriptor.licenses.map(l, l + l).all(x, size(x) == 48)",
                "descriptor.licenses.filter(l, l.endsWith('7')).size() == 3000",
                "descriptor.licenses.exists_one(l, l.startsWith('0000000000000000000299'))",
            ],
            &vars,
        );
        assert_eq!(got, [true, true, true, true, false]);
        let small = licenses(2_000, 24);
        let regex = "descriptor.licenses.all(l, l.matches('^(0|1|2|3|4|5|6|7|8|9){20,30}$'))";
        let negated = "!descriptor.licenses.exists(l, matches(l, '^[a-z]+$'))";
        assert_eq!(verdicts(&[regex, negated, "tag.matches(tag)"], &small), [true, true, true]);
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }

    /// An evaluation holds one of the [`CONCURRENT`] slots while its thread runs.
    #[tokio::test]
    async fn evaluations_off_the_workers_take_a_slot_each() {
        let manifest = serde_json::from_value(json!({"schemaVersion": 2, "layers": [],
            "config": {"mediaType": "application/vnd.cnai.model.config.v1+json", "digest": "sha256:c", "size": 2}}))
        .unwrap();
        let config = json!({"descriptor": licenses(30_000, 24)["descriptor"]});
        let source = super::super::Source {
            repository: "r/m".into(),
            digest: "sha256:d",
            tag: None,
            manifest: &manifest,
            config_json: &config,
            referrers: &[],
        };
        let vars = Variables::new(&source).unwrap();
        let rule = PolicyRule {
            name: "r".into(),
            expression: "descriptor.licenses.map(l, l + l).all(x, size(x) == 48)".into(),
            message: None,
        };
        let spec = ModelPolicySpec {
            action: PolicyAction::Audit,
            namespace_selector: None,
            model_selector: None,
            rules: vec![rule.clone(), PolicyRule { name: "s".into(), ..rule }],
        };
        let policy = compile("p", &spec).unwrap();
        let slots = Arc::new(Semaphore::new(CONCURRENT));
        let given = slots.clone();
        let running = tokio::spawn(async move { evaluate_in_slot(given, &policy, &vars).await });
        let mut held = 0;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            held = held.max(CONCURRENT - slots.available_permits());
        }
        assert!(running.await.unwrap().iter().all(|r| r.passed));
        assert_eq!(held, 1);
        assert_eq!(slots.available_permits(), CONCURRENT, "given back");
    }

    #[test]
    fn regex_errors_are_those_of_matches() {
        let got = results(&["tag.matches('(v')", "matches(tag, '[')"], &json!({"tag": "v1"}));
        for r in &got {
            assert!(!r.passed && r.message.contains("not a valid regex"), "{}", r.message);
        }
    }

    #[test]
    fn numbers_are_ints_when_integral() {
        assert_eq!(to_cel(&json!(3)), Value::Int(3));
        assert_eq!(to_cel(&json!(1.5)), Value::Float(1.5));
        assert_eq!(to_cel(&json!(u64::MAX)), Value::Float(u64::MAX as f64));
    }
}
