//! The one place a pass's outcomes become status conditions, events and metrics: no step writes a
//! condition or records a metric itself.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::{Event, EventType};

use crate::api::conditions::{self, ConditionStatus, Observation, Reason};
use crate::api::{Model, ModelStatus};
use crate::controller::acceptance::Gate;
use crate::controller::metrics::Metrics;

/// The steps of a pass, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Registry access and the ref resolved to a digest.
    Resolve,
    /// The digest's manifest and ModelPack config read and recorded.
    Inspect,
    /// A gate: the signature checked under the trust in force (and what that means for the digest
    /// accepted before).
    Verify,
    /// A gate: the ModelPolicies that select the Model evaluated on the resolved digest.
    Comply,
    /// Which digest deployments use, from every gate's verdict.
    Accept,
}

impl Step {
    pub const ALL: [Step; 5] = [Step::Resolve, Step::Inspect, Step::Verify, Step::Comply, Step::Accept];

    /// A gate judges the resolved digest; its failure keeps the digest from being accepted without
    /// ending the pass.
    pub fn is_gate(self) -> bool {
        matches!(self, Step::Verify | Step::Comply)
    }

    /// The condition that reports this step on its own, besides Ready.
    fn condition(self) -> Option<&'static str> {
        match self {
            Step::Verify => Some(conditions::VERIFIED),
            Step::Comply => Some(conditions::COMPLIANT),
            Step::Resolve | Step::Inspect | Step::Accept => None,
        }
    }
}

/// What one step concluded.
pub struct Outcome {
    pub step: Step,
    pub verdict: Verdict,
    /// Events for what the step changed (a new digest, a newly verified one).
    pub events: Vec<Event>,
    /// What the step counts in metrics, when it judged something this pass (not a cached verdict).
    pub tally: Option<Tally>,
    /// A gate's verdicts, which `accept` weighs.
    pub gate: Option<Gate>,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Passed. `condition`: the step's own condition (a pass may still be `False`: usable under the
    /// audit level); `note`: appended as is to the Ready message.
    Passed {
        condition: Option<(ConditionStatus, Reason, String)>,
        note: String,
    },
    /// Does not apply to this Model: its condition is removed.
    Skipped,
    Failed(Failure),
}

/// How a failure shows in status, and when to try again.
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
    /// Retrying cannot fix it: kstatus `Stalled`.
    pub stalled: bool,
    pub requeue: Duration,
}

/// A metric sample a step asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tally {
    /// `modelpack_resolutions_total{result}`: `success` or the failure's reason.
    Resolution(&'static str),
    /// `modelpack_verifications_total{provider,result}`.
    Verification { provider: &'static str, result: &'static str },
}

impl Outcome {
    pub fn new(step: Step, verdict: Verdict) -> Self {
        Outcome { step, verdict, events: Vec::new(), tally: None, gate: None }
    }

    pub fn passed(step: Step, note: impl Into<String>) -> Self {
        Self::new(step, Verdict::Passed { condition: None, note: note.into() })
    }

    pub fn failure(&self) -> Option<&Failure> {
        match &self.verdict {
            Verdict::Failed(f) => Some(f),
            _ => None,
        }
    }

    /// Whether the steps after this one have nothing to work on.
    pub fn ends_pass(&self) -> bool {
        self.failure().is_some() && !self.step.is_gate()
    }
}

/// What the summariser concluded: Ready, when to come back, and what to publish and count.
pub struct Summary {
    pub observation: Observation,
    pub requeue: Duration,
    events: Vec<Event>,
    warning: Option<Event>,
    tallies: Vec<Tally>,
}

impl Summary {
    /// The steps' events, and a warning when Ready turned to a new failure (only when the status
    /// write that records it happened, so a failure is announced once).
    pub fn events(self, wrote: bool) -> Vec<Event> {
        let warning = self.warning.filter(|_| wrote);
        self.events.into_iter().chain(warning).collect()
    }

    pub fn record(&self, metrics: &Metrics) {
        for tally in &self.tallies {
            match *tally {
                Tally::Resolution(result) => metrics.resolution(result),
                Tally::Verification { provider, result } => metrics.verification(provider, result),
            }
        }
    }
}

/// Sets every step's condition and Ready/Reconciling/Stalled on `next`. Ready is the first failure
/// in step order (a refusal of the digest accepted before is reported by the gate that refused it),
/// or the joined notes of a pass where every step passed.
pub fn summarise(
    outcomes: Vec<Outcome>,
    model: &Model,
    current: Option<&ModelStatus>,
    next: &mut ModelStatus,
    now: &Time,
    every: Duration,
) -> Summary {
    let generation = model.metadata.generation;
    for outcome in &outcomes {
        let Some(type_) = outcome.step.condition() else { continue };
        let (status, reason, message) = match &outcome.verdict {
            Verdict::Passed { condition: Some((s, r, m)), .. } => (*s, *r, m.as_str()),
            Verdict::Passed { condition: None, .. } => continue,
            Verdict::Skipped => {
                conditions::remove(&mut next.conditions, type_);
                continue;
            }
            Verdict::Failed(f) => (ConditionStatus::False, f.reason, f.message.as_str()),
        };
        conditions::set(&mut next.conditions, conditions::condition(type_, status, reason, message, generation, now));
    }
    let (observation, requeue) = match outcomes.iter().find_map(Outcome::failure) {
        Some(f) if f.stalled => (Observation::stalled(f.reason, &f.message), f.requeue),
        Some(f) => (Observation::not_ready(f.reason, &f.message), f.requeue),
        None => {
            let notes: String = outcomes
                .iter()
                .filter_map(|o| match &o.verdict {
                    Verdict::Passed { note, .. } => Some(note.as_str()),
                    _ => None,
                })
                .collect();
            (Observation::ready(Reason::Succeeded, notes), every)
        }
    };
    conditions::apply(&mut next.conditions, &observation, generation, now);
    Summary {
        warning: warning(&observation, current),
        requeue,
        tallies: outcomes.iter().filter_map(|o| o.tally).collect(),
        events: outcomes.into_iter().flat_map(|o| o.events).collect(),
        observation,
    }
}

fn warning(observation: &Observation, current: Option<&ModelStatus>) -> Option<Event> {
    let changed = current
        .and_then(|s| conditions::find(&s.conditions, conditions::READY))
        .is_none_or(|c| c.reason != observation.reason.as_str() || c.message != observation.message);
    (changed && observation.ready != ConditionStatus::True).then(|| Event {
        type_: EventType::Warning,
        reason: observation.reason.into(),
        note: Some(observation.message.clone()),
        action: "Reconcile".into(),
        secondary: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> Model {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "modelpack.dev/v1alpha1", "kind": "Model",
            "metadata": {"name": "m", "namespace": "ml", "generation": 3},
            "spec": {"repository": "r.example/m"}
        }))
        .unwrap()
    }

    fn failed(step: Step, reason: Reason, stalled: bool) -> Outcome {
        let failure = Failure { reason, message: format!("{reason:?}"), stalled, requeue: Duration::from_secs(7) };
        Outcome::new(step, Verdict::Failed(failure))
    }

    fn now() -> Time {
        Time(jiff::Timestamp::from_second(100).unwrap())
    }

    #[test]
    fn a_pass_where_every_step_passed_is_ready_with_the_joined_notes() {
        let outcomes = [
            Outcome::passed(Step::Resolve, "resolved tag v1 to d"),
            Outcome::passed(Step::Inspect, " (warning)"),
            Outcome::new(Step::Verify, Verdict::Skipped),
            Outcome::passed(Step::Accept, ""),
        ];
        let mut next = ModelStatus::default();
        let verified =
            conditions::condition(conditions::VERIFIED, ConditionStatus::True, Reason::Verified, "", None, &now());
        next.conditions.push(verified);
        let s = summarise(outcomes.into(), &model(), None, &mut next, &now(), Duration::from_secs(300));
        assert_eq!(
            (s.observation.reason, s.observation.message.as_str()),
            (Reason::Succeeded, "resolved tag v1 to d (warning)")
        );
        assert_eq!(s.requeue, Duration::from_secs(300));
        assert!(conditions::find(&next.conditions, conditions::VERIFIED).is_none(), "a skipped step's condition goes");
        assert_eq!(conditions::find(&next.conditions, conditions::READY).unwrap().observed_generation, Some(3));
        assert!(s.events(true).is_empty(), "no warning for a ready pass");
    }

    #[test]
    fn the_first_failure_is_ready_and_a_gate_failure_is_its_condition_too() {
        let outcomes = [
            Outcome::passed(Step::Resolve, "r"),
            Outcome::passed(Step::Inspect, ""),
            failed(Step::Verify, Reason::SignatureRejected, true),
            failed(Step::Accept, Reason::ReconcileError, false),
        ];
        let mut next = ModelStatus::default();
        let s = summarise(outcomes.into(), &model(), None, &mut next, &now(), Duration::from_secs(300));
        assert_eq!((s.observation.reason, s.observation.stalled), (Reason::SignatureRejected, true));
        assert_eq!(s.requeue, Duration::from_secs(7));
        let verified = conditions::find(&next.conditions, conditions::VERIFIED).unwrap();
        assert_eq!((verified.status, verified.reason.as_str()), (ConditionStatus::False, "SignatureRejected"));
        assert!(conditions::is_true(&next.conditions, conditions::STALLED));
    }

    #[test]
    fn a_failure_is_announced_only_when_it_is_new_and_written() {
        let outcomes = || vec![failed(Step::Resolve, Reason::RegistryUnavailable, false)];
        let mut next = ModelStatus::default();
        let summary =
            || summarise(outcomes(), &model(), None, &mut ModelStatus::default(), &now(), Duration::from_secs(300));
        assert!(!summary().observation.stalled);
        assert_eq!(summary().events(false).len(), 0, "not written: not announced");
        let events = summary().events(true);
        assert_eq!((events.len(), events[0].reason.as_str()), (1, "RegistryUnavailable"));
        summarise(outcomes(), &model(), None, &mut next, &now(), Duration::from_secs(300));
        let current = next.clone();
        let s = summarise(outcomes(), &model(), Some(&current), &mut next, &now(), Duration::from_secs(300));
        assert!(s.events(true).is_empty(), "the same failure again is not announced again");
    }

    #[test]
    fn tallies_and_step_events_are_passed_on() {
        let mut resolve = Outcome::passed(Step::Resolve, "r");
        resolve.tally = Some(Tally::Resolution("success"));
        resolve.events.push(Event {
            type_: EventType::Normal,
            reason: Reason::NewDigest.into(),
            note: None,
            action: "Resolve".into(),
            secondary: None,
        });
        let mut next = ModelStatus::default();
        let s = summarise(vec![resolve], &model(), None, &mut next, &now(), Duration::from_secs(300));
        assert_eq!(s.tallies, [Tally::Resolution("success")]);
        assert_eq!(s.events(false)[0].reason, "NewDigest");
    }
}
