//! The comply step: every Ready ModelPolicy that selects a Model is evaluated on the resolved
//! digest. Outcomes are cached per (digest, policy uid, policy generation, referrers, verified), so an idle
//! cluster evaluates nothing: a pass reads the referrers (an SBOM attached later counts) and
//! evaluates only what it has not seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::ResourceExt;
use kube::runtime::events::{Event, EventType};

use super::access::Access;
use super::policy::{namespace_labels, selects};
use super::{Error, ModelContext};
use crate::api::conditions::{self, Condition, ConditionStatus, Reason};
use crate::api::{Model, PolicyAction, Violation};
use crate::policy::{self, RuleResult, Variables, VerifiedVar};
use crate::registry::{Inspection, Resolution};

/// Outcomes kept; each is a few rules' verdicts.
const MAX_OUTCOMES: usize = 4096;

/// (digest, policy uid, policy generation, the referrers as rules see them): compared whole, never
/// by a hash of them, since a tenant chooses what it attaches to its digests.
type Key = (String, String, Option<i64>, Vec<policy::ReferrerVar>, VerifiedVar);

/// Rule verdicts by (digest, policy uid, policy generation, referrers).
#[derive(Default)]
pub struct Outcomes {
    map: Mutex<HashMap<Key, Arc<Vec<RuleResult>>>>,
}

impl Outcomes {
    fn get(&self, key: &Key) -> Option<Arc<Vec<RuleResult>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned()
    }

    fn put(&self, key: Key, results: Arc<Vec<RuleResult>>) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_OUTCOMES {
            map.clear();
        }
        map.insert(key, results);
    }
}

/// What the selecting policies concluded about one digest.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// How many Ready policies select the Model (none: no Compliant condition).
    pub selected: usize,
    /// Every failed rule, Enforce and Audit.
    pub violations: Vec<Violation>,
}

impl Outcome {
    /// The first violation of an `Enforce` policy: the digest is not accepted.
    pub fn blocking(&self) -> Option<&Violation> {
        self.violations.iter().find(|v| v.action == PolicyAction::Enforce)
    }
}

/// "…violates ModelPolicy P rule R: message": what the Model and its deployments report.
pub fn blocked_message(digest: &str, v: &Violation) -> String {
    format!("{digest} violates ModelPolicy {} rule {}: {}", v.policy, v.rule, v.message)
}

/// Evaluates every selecting policy on the resolved digest (cached verdicts reused).
pub async fn comply(
    ctx: &ModelContext,
    access: &Access,
    model: &Model,
    resolution: &Resolution,
    inspection: &Inspection,
    verified: &VerifiedVar,
    max_age: std::time::Duration,
) -> Result<Outcome, Error> {
    synced(ctx).await;
    let labels = namespace_labels(&ctx.namespaces, &model.namespace().unwrap_or_default());
    let selected: Vec<_> = ctx
        .policy_store
        .state()
        .into_iter()
        .filter_map(|p| {
            let compiled = ctx.policies.get(&p);
            let selected = compiled.as_ref().as_ref().is_ok_and(|ready| selects(ready, model, &labels));
            selected.then(|| (p.uid().unwrap_or_else(|| p.name_any()), p.metadata.generation, compiled))
        })
        .collect();
    if selected.is_empty() {
        return Ok(Outcome::default());
    }
    let referrers = ctx.registry.referrers(access, &resolution.digest, max_age).await?;
    // Variables that cannot be made (more layers than a rule may iterate) fail every rule.
    let variables = Variables::of(&access.repository, inspection, resolution.tag.as_deref(), &referrers)
        .map(|v| Variables { verified: verified.clone(), ..v });
    let mut verdicts = Vec::new();
    for (uid, generation, compiled) in &selected {
        let Ok(ready) = compiled.as_ref() else { continue };
        let vars = match &variables {
            Ok(v) => v,
            Err(e) => {
                verdicts.push((ready.policy.action, Arc::new(unevaluable(&ready.policy, e))));
                continue;
            }
        };
        let key = (resolution.digest.clone(), uid.clone(), *generation, vars.referrers.clone(), vars.verified.clone());
        let results = match ctx.outcomes.get(&key) {
            Some(hit) => hit,
            None => {
                // Off the async workers: a slow rule holds up only this Model.
                let results = Arc::new(policy::evaluate_off_workers(&ready.policy, vars).await);
                let passed = results.iter().all(|r| r.passed);
                ctx.metrics.policy_evaluation(&ready.policy.name, if passed { "pass" } else { "fail" });
                ctx.outcomes.put(key, results.clone());
                results
            }
        };
        verdicts.push((ready.policy.action, results));
    }
    Ok(decide(&verdicts))
}

/// Waits until the ModelPolicy and Namespace lists arrived: judging before would skip policies not
/// yet seen. A list that never arrives (no RBAC for them) holds the Model back and says so in the
/// log rather than letting a digest through.
async fn synced(ctx: &ModelContext) {
    let mut waited = 0u32;
    while !ctx.readiness.policies_synced() {
        if waited % 300 == 299 {
            tracing::warn!("still waiting for the ModelPolicy and Namespace lists (RBAC to list and watch them?)");
        }
        waited += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn unevaluable(policy: &policy::CompiledPolicy, e: &policy::Error) -> Vec<RuleResult> {
    let rule = |r: &policy::CompiledRule| RuleResult {
        policy: policy.name.clone(),
        rule: r.name.clone(),
        passed: false,
        message: format!("{} (error: {e})", r.message),
    };
    policy.rules.iter().map(rule).collect()
}

/// The outcome of the selecting policies' verdicts (pure).
pub fn decide(verdicts: &[(PolicyAction, Arc<Vec<RuleResult>>)]) -> Outcome {
    let violations = verdicts
        .iter()
        .flat_map(|(action, results)| {
            results.iter().filter(|r| !r.passed).map(|r| Violation {
                policy: r.policy.clone(),
                rule: r.rule.clone(),
                message: r.message.clone(),
                action: *action,
            })
        })
        .collect();
    Outcome { selected: verdicts.len(), violations }
}

/// How the outcome shows: the Compliant condition (None: no policy selects the Model, so there is
/// none) and an event when its status or message differs from `previous`.
pub fn report(outcome: &Outcome, previous: Option<&Condition>) -> Option<(Compliance, Option<Event>)> {
    if outcome.selected == 0 {
        return None;
    }
    let (status, reason, message, type_) = match outcome.violations.first() {
        None => (
            ConditionStatus::True,
            Reason::PoliciesPassed,
            format!("{} policies passed", outcome.selected),
            EventType::Normal,
        ),
        Some(first) => {
            let more = outcome.violations.len() - 1;
            let also = if more > 0 { format!(" (and {more} more)") } else { String::new() };
            let action = first.action.as_str();
            let message = format!("{action} ModelPolicy {} rule {}: {}{also}", first.policy, first.rule, first.message);
            (ConditionStatus::False, Reason::PolicyViolation, message, EventType::Warning)
        }
    };
    let message = conditions::Observation::ready(reason, message).message;
    let changed = previous.is_none_or(|p| p.status != status || p.message != message);
    let event = changed.then(|| Event {
        type_,
        reason: reason.into(),
        note: Some(message.clone()),
        action: "Comply".into(),
        secondary: None,
    });
    Some(((status, reason, message), event))
}

/// The Compliant condition's status, reason and message.
pub type Compliance = (ConditionStatus, Reason, String);

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn result(policy: &str, rule: &str, passed: bool) -> RuleResult {
        let message = if passed { String::new() } else { format!("{rule} failed") };
        RuleResult { policy: policy.into(), rule: rule.into(), passed, message }
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(1_800_000_000).unwrap())
    }

    #[test]
    fn only_enforce_violations_block() {
        let audit = (PolicyAction::Audit, Arc::new(vec![result("a", "x", false), result("a", "y", true)]));
        let enforce = (PolicyAction::Enforce, Arc::new(vec![result("e", "z", false)]));
        let passing = (PolicyAction::Enforce, Arc::new(vec![result("p", "ok", true)]));
        let audited = decide(&[audit.clone(), passing.clone()]);
        assert_eq!((audited.selected, audited.violations.len()), (2, 1));
        assert!(audited.blocking().is_none());
        let blocked = decide(&[audit, enforce, passing]);
        let v = blocked.blocking().unwrap();
        assert_eq!((v.policy.as_str(), v.rule.as_str()), ("e", "z"));
        assert_eq!(blocked_message("sha256:d", v), "sha256:d violates ModelPolicy e rule z: z failed");
        assert_eq!(decide(&[]), Outcome::default());
    }

    #[test]
    fn compliant_condition_and_events_follow_the_outcome() {
        assert!(report(&Outcome::default(), None).is_none(), "no policy: no condition");
        let passed = decide(&[(PolicyAction::Enforce, Arc::new(vec![result("p", "ok", true)]))]);
        let ((status, reason, message), event) = report(&passed, None).unwrap();
        assert_eq!(
            (status, reason, message.as_str()),
            (ConditionStatus::True, Reason::PoliciesPassed, "1 policies passed")
        );
        assert_eq!(event.unwrap().type_, EventType::Normal);
        let stored = conditions::condition(conditions::COMPLIANT, status, reason, &message, Some(1), &now());
        assert!(report(&passed, Some(&stored)).unwrap().1.is_none(), "no event without a change");

        let failed = decide(&[(PolicyAction::Audit, Arc::new(vec![result("a", "x", false), result("a", "y", false)]))]);
        let ((status, reason, message), event) = report(&failed, Some(&stored)).unwrap();
        assert_eq!((status, reason), (ConditionStatus::False, Reason::PolicyViolation));
        assert_eq!(message, "Audit ModelPolicy a rule x: x failed (and 1 more)");
        let event = event.unwrap();
        assert_eq!((event.type_, event.reason.as_str()), (EventType::Warning, "PolicyViolation"));
    }
}
