//! The hand-over decisions as one pass of the plan makes them: what the writer applies, what the
//! status says, and what is announced.

use super::*;
use crate::api::conditions::{ConditionStatus, Reason, find};
use crate::api::{VersionRef, short_digest};
use crate::controller::deployment::workloads::{Live, Volume};

const REPO: &str = "registry.example.com/team/llm";

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

fn version(n: u8) -> Desired {
    let d = digest(n);
    Desired::Version { version: VersionRef { short_digest: short_digest(&d), digest: d, tag: None }, rejected: None }
}

fn spec(workloads: serde_json::Value) -> ModelDeploymentSpec {
    serde_json::from_value(serde_json::json!({"modelRef": {"name": "m"}, "workloads": workloads})).unwrap()
}

fn deployed(n: u8) -> ModelDeploymentStatus {
    serde_json::from_value(serde_json::json!({
        "deployed": {"digest": digest(n), "shortDigest": short_digest(&digest(n)), "since": "2026-12-01T00:00:00Z"}
    }))
    .unwrap()
}

/// A rolled-out workload whose template carries `digest` (and, with `volume`, that image reference).
fn found(digest: Option<String>, volume: Volume) -> Observed {
    Observed::Found(Live {
        digest,
        volume,
        generation: Some(4),
        observed_generation: Some(4),
        replicas: 2,
        updated: 2,
        ready: 2,
        pods: None,
    })
}

struct Pass {
    decided: Decided,
    status: ModelDeploymentStatus,
}

fn pass(
    spec: &ModelDeploymentSpec,
    desired: &Desired,
    previous: &ModelDeploymentStatus,
    observed: &[Observed],
) -> Pass {
    let now = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let mut status = previous.clone();
    let seen = Seen { observed, repository: Some(REPO) };
    let decided = decide(spec, desired, &seen, Some(3), &now, &mut status, previous);
    Pass { decided, status }
}

impl Pass {
    fn condition(&self) -> (ConditionStatus, Reason) {
        let c = find(&self.status.conditions, WORKLOADS_UPDATED).expect("WorkloadsUpdated is written");
        (c.status, Reason::parse(&c.reason).expect("a known reason"))
    }
}

fn web(volume: Option<&str>) -> serde_json::Value {
    let mut w = serde_json::json!({"kind": "Deployment", "name": "web"});
    if let Some(v) = volume {
        w["imageVolume"] = v.into();
    }
    w
}

#[test]
fn the_deployed_version_goes_to_each_workload_lacking_it_with_its_image_reference() {
    let s = spec(serde_json::json!([web(Some("model")), {"kind": "StatefulSet", "name": "db"}]));
    let observed = [
        found(Some(digest(1)), Volume::Image(Some(format!("{REPO}@{}", digest(1))))),
        found(Some(digest(1)), Volume::NotAsked),
    ];
    let p = pass(&s, &version(2), &deployed(2), &observed);
    let applies: Vec<&Apply> = p.decided.hand_over.iter().map(|h| &h.apply).collect();
    assert_eq!(applies.len(), 2, "{applies:?}");
    assert_eq!(
        *applies[0],
        Apply {
            kind: WorkloadKind::Deployment,
            name: "web".into(),
            digest: digest(2),
            volume: Some(("model".into(), format!("{REPO}@{}", digest(2)))),
        }
    );
    assert_eq!(
        (applies[1].kind, applies[1].digest.as_str(), &applies[1].volume),
        (WorkloadKind::StatefulSet, digest(2).as_str(), &None)
    );
    for h in &p.decided.hand_over {
        assert_eq!((h.note.warning, h.note.reason), (false, Reason::WorkloadUpdated));
        assert!(h.note.message.contains(&digest(2)), "{}", h.note.message);
    }
    // The status shows the workloads as the apply leaves them: the new template, not rolled out yet.
    assert_eq!(p.condition(), (ConditionStatus::False, Reason::RollingOut));
    let web = &p.status.workloads[0];
    assert_eq!(
        (web.digest.as_deref(), web.generation, web.observed_generation),
        (Some(digest(2).as_str()), Some(5), Some(4))
    );
    assert!(p.decided.recheck, "a rollout is looked at again soon");
}

#[test]
fn nothing_is_handed_over_while_nodes_pull_the_new_version_and_the_workloads_keep_the_old_one() {
    let s = spec(serde_json::json!([web(None)]));
    let p = pass(&s, &version(2), &deployed(1), &[found(Some(digest(1)), Volume::NotAsked)]);
    assert!(p.decided.hand_over.is_empty());
    assert_eq!(p.condition(), (ConditionStatus::False, Reason::HandOverWaiting));
    assert!(!p.decided.recheck, "the nodes' progress is watched, the workload need not be re-read");
    // A version that lost its trust is not handed over either.
    let revoked = Desired::Blocked { reason: Reason::TrustRevoked, message: "revoked".into(), stalled: true };
    let p = pass(&s, &revoked, &deployed(1), &[found(Some(digest(0)), Volume::NotAsked)]);
    assert!(p.decided.hand_over.is_empty());
    assert_eq!(p.condition(), (ConditionStatus::False, Reason::HandOverWaiting));
}

#[test]
fn the_hand_over_is_done_when_every_workload_runs_the_version() {
    let s = spec(serde_json::json!([web(Some("model"))]));
    let observed = [found(Some(digest(1)), Volume::Image(Some(format!("{REPO}@{}", digest(1)))))];
    let p = pass(&s, &version(1), &deployed(1), &observed);
    assert!(p.decided.hand_over.is_empty() && p.decided.events.is_empty());
    assert_eq!(p.condition(), (ConditionStatus::True, Reason::RolledOut));
    assert!(!p.decided.recheck);
    // Without workloads there is no condition at all.
    let p = pass(&spec(serde_json::json!([])), &version(1), &p.status, &[]);
    assert!(find(&p.status.conditions, WORKLOADS_UPDATED).is_none());
}

#[test]
fn a_stale_image_reference_alone_is_handed_over_again() {
    let s = spec(serde_json::json!([web(Some("model"))]));
    let p = pass(&s, &version(1), &deployed(1), &[found(Some(digest(1)), Volume::Image(Some("old@sha256:x".into())))]);
    assert_eq!(p.decided.hand_over.len(), 1);
    assert_eq!(p.decided.hand_over[0].apply.volume, Some(("model".into(), format!("{REPO}@{}", digest(1)))));
}

#[test]
fn pods_that_cannot_serve_and_missing_workloads_are_problems_announced_once() {
    let s = spec(serde_json::json!([web(Some("model")), {"kind": "DaemonSet", "name": "gone"}]));
    let mut failing = found(Some(digest(1)), Volume::Image(Some(format!("{REPO}@{}", digest(1)))));
    if let Observed::Found(live) = &mut failing {
        live.pods = Some((Reason::ImageVolumeNotMounted, "image volume model is an empty directory".into()));
    }
    let observed = [failing, Observed::Missing];
    let p = pass(&s, &version(1), &deployed(1), &observed);
    assert!(p.decided.hand_over.is_empty());
    assert_eq!(p.condition(), (ConditionStatus::False, Reason::ImageVolumeNotMounted));
    let reasons: Vec<(WorkloadKind, Reason)> = p.decided.events.iter().map(|(k, _, n)| (*k, n.reason)).collect();
    assert_eq!(
        reasons,
        vec![
            (WorkloadKind::Deployment, Reason::ImageVolumeNotMounted),
            (WorkloadKind::DaemonSet, Reason::WorkloadNotFound)
        ]
    );
    assert!(p.decided.events.iter().all(|(_, _, n)| n.warning));
    assert!(p.decided.recheck, "a missing workload is looked for again soon");
    // The next pass with the same problems in the stored status announces nothing again.
    let again = pass(&s, &version(1), &p.status, &observed);
    assert!(again.decided.events.is_empty(), "{:?}", again.decided.events);
}

#[test]
fn pods_failing_to_start_are_reported_with_the_runtime_reason() {
    let s = spec(serde_json::json!([web(None)]));
    let mut failing = found(Some(digest(1)), Volume::NotAsked);
    if let Observed::Found(live) = &mut failing {
        live.pods = Some((Reason::PodsFailing, "pods cannot start: web-1/app: CrashLoopBackOff".into()));
    }
    let p = pass(&s, &version(1), &deployed(1), &[failing]);
    assert_eq!(p.condition(), (ConditionStatus::False, Reason::PodsFailing));
    assert!(p.status.workloads[0].message.as_deref().is_some_and(|m| m.contains("CrashLoopBackOff")));
}

#[test]
fn without_the_models_repository_nothing_is_handed_over() {
    let s = spec(serde_json::json!([web(None)]));
    let now = Time(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let previous = deployed(1);
    let mut status = previous.clone();
    let observed = [found(None, Volume::NotAsked)];
    let seen = Seen { observed: &observed, repository: None };
    let decided = decide(&s, &version(1), &seen, Some(3), &now, &mut status, &previous);
    assert!(decided.hand_over.is_empty());
    let c = find(&status.conditions, WORKLOADS_UPDATED).unwrap();
    assert!(c.message.contains("repository is unknown"), "{}", c.message);
}
