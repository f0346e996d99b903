//! The hand-over of the deployed version to the workloads, decided purely from what the index read:
//! which workloads get which digest (and image reference), the workload status and the
//! WorkloadsUpdated condition written with it, the events, and whether to look again soon. The
//! writer applies [`HandOver::apply`] and announces [`HandOver::note`] once the apply succeeded.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::desired::Desired;
use super::note::Note;
use super::workloads::{self, Apply, Observed};
use crate::api::conditions::{self, WORKLOADS_UPDATED};
use crate::api::{ModelDeploymentSpec, ModelDeploymentStatus, WorkloadKind};

/// One server-side apply to a workload, and the event that announces it.
#[derive(Clone, Debug, PartialEq)]
pub struct HandOver {
    pub apply: Apply,
    pub note: Note,
}

/// The hand-over decided for one pass.
#[derive(Debug, Default, PartialEq)]
pub struct Decided {
    pub hand_over: Vec<HandOver>,
    /// Problems of one workload each (it becomes the events' related object).
    pub events: Vec<(WorkloadKind, String, Note)>,
    /// A workload is rolling the handed-over version out, or one is missing: the workloads are not
    /// watched, so they should be read again soon.
    pub recheck: bool,
}

/// What the index read for the hand-over.
pub struct Seen<'a> {
    /// One per `spec.workloads` entry, in order.
    pub observed: &'a [Observed],
    /// The Model's repository (unknown without the Model).
    pub repository: Option<&'a str>,
}

/// Hands `previous.deployed` (the stored status: nodes hold it) to the workloads when it is still
/// the accepted version, and records their state in `next`. A workload is reported as its apply
/// leaves it (the template carries the digest, its controller has not seen the new generation yet).
pub fn decide(
    spec: &ModelDeploymentSpec,
    desired: &Desired,
    seen: &Seen,
    generation: Option<i64>,
    now: &Time,
    next: &mut ModelDeploymentStatus,
    previous: &ModelDeploymentStatus,
) -> Decided {
    let refs = &spec.workloads;
    let deployed = previous.deployed.as_ref().map(|d| d.digest.as_str());
    // Without the Model's repository no image volume can be pinned: hand nothing over.
    let target = match (workloads::target(spec, desired, deployed), seen.repository) {
        (Ok(_), None) => Err("the model's repository is unknown".to_owned()),
        (t, _) => t,
    };
    let applies =
        workloads::to_apply(refs, seen.observed, target.as_ref().ok().copied(), seen.repository.unwrap_or_default());
    let mut after = seen.observed.to_vec();
    for a in &applies {
        if let Some(i) = refs.iter().position(|r| r.kind == a.kind && r.name == a.name)
            && let Observed::Found(live) = &after[i]
        {
            after[i] = Observed::Found(live.handed(a));
        }
    }
    let report = workloads::report(refs, &after, &target, &applies, &previous.workloads);
    next.workloads = report.statuses;
    match report.condition {
        Some((status, reason, message)) => conditions::set(
            &mut next.conditions,
            conditions::condition(WORKLOADS_UPDATED, status, reason, &message, generation, now),
        ),
        None => conditions::remove(&mut next.conditions, WORKLOADS_UPDATED),
    }
    let hand_over = applies.into_iter().zip(report.handed).map(|(apply, note)| HandOver { apply, note }).collect();
    Decided { hand_over, events: report.events, recheck: report.rolling || report.problems }
}

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
