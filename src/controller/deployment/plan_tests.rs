use super::*;
use crate::api::conditions::{ConditionStatus, READY, RECONCILING, Reason, STALLED, find, is_true};

#[derive(Debug, PartialEq, Eq)]
enum Shown {
    Ready,
    Reconciling,
    Stalled,
    NotReady,
}

fn t(secs: i64) -> Time {
    Time(jiff::Timestamp::from_second(1_800_000_000 + secs).unwrap())
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64).chars().take(64).collect::<String>())
}

fn version(n: u8) -> Desired {
    let d = digest(n);
    Desired::Version {
        version: VersionRef { short_digest: short_digest(&d), digest: d, tag: Some(format!("v{n}")) },
        rejected: None,
    }
}

fn spec(max_parallel: i32) -> ModelDeploymentSpec {
    serde_json::from_value(serde_json::json!({"modelRef": {"name": "m"}, "pull": {"maxParallel": max_parallel}}))
        .unwrap()
}

fn nodes(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("n{i}")).collect()
}

fn job(node: &str, d: &str, state: JobState) -> (String, ObservedJob) {
    let name = format!("pull-{node}-{}", &d[7..11]);
    (
        node.to_owned(),
        ObservedJob {
            name,
            digest: d.to_owned(),
            state,
            access: Some("a1".into()),
            deleting: false,
            needs: None,
            contents: None,
        },
    )
}

fn jobs(list: Vec<(String, ObservedJob)>) -> BTreeMap<String, Vec<ObservedJob>> {
    let mut map: BTreeMap<String, Vec<ObservedJob>> = BTreeMap::new();
    for (node, j) in list {
        map.entry(node).or_default().push(j);
    }
    map
}

fn succeeded(bytes: i64) -> JobState {
    JobState::Succeeded { started: Some(t(1)), completed: Some(t(2)), bytes: Some(bytes) }
}

struct Run {
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    nodes: Vec<String>,
    inventories: BTreeMap<String, NodeInventory>,
}

impl Run {
    fn new(n: usize, max_parallel: i32) -> Run {
        Run {
            spec: spec(max_parallel),
            status: ModelDeploymentStatus::default(),
            nodes: nodes(n),
            inventories: BTreeMap::new(),
        }
    }

    fn step(&mut self, desired: &Desired, jobs: &BTreeMap<String, Vec<ObservedJob>>, now: i64) -> Plan {
        let inputs = Inputs {
            spec: &self.spec,
            previous: &self.status,
            desired,
            nodes: &self.nodes,
            jobs,
            inventories: &self.inventories,
            access: "a1",
            generation: Some(1),
            now: &t(now),
            label: "ready.modelpack.dev/ns.d",
            labelled: &BTreeMap::new(),
            workloads: &Seen { observed: &[], repository: Some("registry.example/m") },
        };
        let plan = plan(&inputs);
        self.status = plan.status.clone();
        plan
    }

    /// The kstatus conditions written (the bed's tests judge them with the real library: Stalled is
    /// Failed, Reconciling and a bare Ready=False are InProgress, Ready=True is Current).
    fn shown(&self) -> Shown {
        let c = &self.status.conditions;
        assert_eq!(self.status.observed_generation, Some(1), "status for the generation planned");
        if is_true(c, STALLED) {
            Shown::Stalled
        } else if is_true(c, RECONCILING) {
            Shown::Reconciling
        } else if find(c, READY).is_some_and(|r| r.status == ConditionStatus::True) {
            Shown::Ready
        } else {
            Shown::NotReady
        }
    }

    fn drift(&self) -> String {
        self.status.drift.as_ref().unwrap().reason.clone()
    }
}

#[test]
fn first_rollout_respects_max_parallel_then_becomes_deployed() {
    let mut run = Run::new(3, 2);
    let v1 = version(1);
    let plan = run.step(&v1, &jobs(vec![]), 0);
    assert_eq!(plan.create, vec![("n1".into(), digest(1)), ("n2".into(), digest(1))]);
    assert_eq!(run.drift(), "NodesNotReady");
    assert_eq!(run.shown(), Shown::Reconciling);
    assert!(plan.events.iter().any(|e| e.reason == Reason::NewVersion));

    let running = jobs(vec![
        job("n1", &digest(1), JobState::Running { started: Some(t(1)) }),
        job("n2", &digest(1), JobState::Pending),
    ]);
    let plan = run.step(&v1, &running, 1);
    assert!(plan.create.is_empty(), "two pulls run: no third while maxParallel is 2");
    assert_eq!(run.status.nodes.as_ref().unwrap().pulling, 1);

    let done = jobs(vec![job("n1", &digest(1), succeeded(100)), job("n2", &digest(1), succeeded(100))]);
    let plan = run.step(&v1, &done, 2);
    assert_eq!(plan.create, vec![("n3".into(), digest(1))]);
    assert!(run.status.deployed.is_none(), "not deployed until every node holds it");

    let all = jobs(vec![
        job("n1", &digest(1), succeeded(100)),
        job("n2", &digest(1), succeeded(100)),
        job("n3", &digest(1), succeeded(100)),
    ]);
    let plan = run.step(&v1, &all, 3);
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(1));
    assert_eq!(run.drift(), "InSync");
    assert_eq!(run.shown(), Shown::Ready);
    assert!(plan.events.iter().any(|e| e.reason == Reason::Deployed));
    let entries = &run.status.nodes.as_ref().unwrap().entries;
    assert!(entries.iter().all(|e| e.phase == NodePhase::Ready && e.bytes == Some(100)));

    // Jobs expire (TTL): the nodes stay Ready from status alone, and nothing is written anew.
    let before = run.status.clone();
    let plan = run.step(&v1, &jobs(vec![]), 400);
    assert!(plan.create.is_empty() && plan.events.is_empty());
    assert_eq!(run.status, before);
}

fn deployed_everywhere(run: &mut Run, n: u8) {
    let v = version(n);
    run.step(&v, &jobs(vec![]), 0);
    let done = jobs(run.nodes.clone().iter().map(|node| job(node, &digest(n), succeeded(10))).collect());
    run.step(&v, &done, 1);
    run.step(&v, &jobs(vec![]), 2);
    assert_eq!(run.drift(), "InSync");
}

#[test]
fn promotion_deletes_finished_jobs_first_and_switches_deployed_only_when_all_nodes_hold_it() {
    let mut run = Run::new(2, 5);
    deployed_everywhere(&mut run, 1);
    let v2 = version(2);
    let old = jobs(vec![job("n1", &digest(1), succeeded(10)), job("n2", &digest(1), succeeded(10))]);
    let plan = run.step(&v2, &old, 10);
    assert!(plan.create.is_empty(), "a node's previous Job goes before its next one starts");
    assert_eq!(plan.delete.len(), 2);
    assert_eq!(run.drift(), "NewVersionPending");
    assert_eq!(run.shown(), Shown::Reconciling);

    let plan = run.step(&v2, &jobs(vec![]), 11);
    assert_eq!(plan.create.len(), 2);
    assert!(plan.keep.contains(&digest(1)), "the deployed version stays cached during the rollout");
    let half =
        jobs(vec![job("n1", &digest(2), succeeded(5)), job("n2", &digest(2), JobState::Running { started: None })]);
    run.step(&v2, &half, 12);
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(1), "deployed switches only when all are ready");
    assert_eq!(run.status.nodes.as_ref().unwrap().summary, "1/2");
    let all = jobs(vec![job("n1", &digest(2), succeeded(5)), job("n2", &digest(2), succeeded(5))]);
    let plan = run.step(&v2, &all, 13);
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(2));
    assert_eq!(run.status.history[0].digest, digest(1));
    assert_eq!(plan.keep, vec![digest(1), digest(2)], "keepPrevious 1 keeps v1 warm for rollback");
}

#[test]
fn a_joining_node_gets_the_deployed_version_first_during_a_rollout() {
    let mut run = Run::new(1, 5);
    deployed_everywhere(&mut run, 1);
    run.nodes = nodes(2);
    let plan = run.step(&version(2), &jobs(vec![]), 10);
    assert!(plan.create.contains(&("n2".into(), digest(1))), "{:?}", plan.create);
    assert!(plan.create.contains(&("n1".into(), digest(2))));

    let mut run = Run::new(1, 5);
    deployed_everywhere(&mut run, 1);
    run.nodes = nodes(2);
    run.step(&version(1), &jobs(vec![]), 10);
    assert_eq!(run.drift(), "NodeJoined");
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(1), "deployed stays while a node joins");
    assert_eq!(run.shown(), Shown::Reconciling);
}

#[test]
fn failed_pulls_stall_and_retry_on_access_change_or_after_a_while() {
    let mut run = Run::new(1, 5);
    let v1 = version(1);
    run.step(&v1, &jobs(vec![]), 0);
    let failed = JobState::Failed { started: Some(t(1)), completed: Some(t(2)), message: "401 unauthorized".into() };
    let plan = run.step(&v1, &jobs(vec![job("n1", &digest(1), failed.clone())]), 3);
    assert_eq!(run.drift(), "PullFailed");
    assert_eq!(run.shown(), Shown::Stalled);
    assert!(plan.delete.is_empty() && plan.create.is_empty());
    assert!(plan.events.iter().any(|e| e.warning && e.reason == Reason::PullFailed && e.message.contains("401")));
    assert!(plan.requeue <= RETRY_AFTER);

    let (node, mut j) = job("n1", &digest(1), failed.clone());
    j.access = Some("a0".into());
    let plan = run.step(&v1, &jobs(vec![(node, j)]), 4);
    assert_eq!(plan.delete.len(), 1, "new credentials: retry at once");

    let plan = run.step(&v1, &jobs(vec![job("n1", &digest(1), failed)]), 2 + RETRY_AFTER.as_secs() as i64);
    assert_eq!(plan.delete.len(), 1, "retried after RETRY_AFTER");
    let plan = run.step(&v1, &jobs(vec![]), 400);
    assert_eq!(plan.create, vec![("n1".into(), digest(1))]);
}

#[test]
fn a_running_pull_of_another_version_is_waited_for_not_raced() {
    let mut run = Run::new(1, 5);
    run.step(&version(1), &jobs(vec![]), 0);
    let running = jobs(vec![job("n1", &digest(1), JobState::Running { started: None })]);
    let plan = run.step(&version(2), &running, 1);
    assert!(plan.create.is_empty() && plan.delete.is_empty());
    let done = jobs(vec![job("n1", &digest(1), succeeded(1))]);
    run.step(&version(2), &done, 2);
    let entry = &run.status.nodes.as_ref().unwrap().entries[0];
    assert_eq!(entry.current.as_deref(), Some(digest(1).as_str()), "the finished pull moved the link");
    assert_eq!(entry.digest, digest(2));
}

#[test]
fn blocked_and_rejected_versions_pull_nothing() {
    let mut run = Run::new(2, 5);
    let blocked =
        Desired::Blocked { reason: Reason::VerificationFailed, message: "no signature".into(), stalled: true };
    let plan = run.step(&blocked, &jobs(vec![]), 0);
    assert!(plan.create.is_empty());
    assert_eq!(run.shown(), Shown::Stalled);
    assert!(run.status.desired.is_none());

    let mut run = Run::new(1, 5);
    deployed_everywhere(&mut run, 1);
    let Desired::Version { version: v, .. } = version(1) else { unreachable!() };
    let rejected = Desired::Version {
        version: v,
        rejected: Some((Reason::VerificationFailed, "sha256:bb… has no trusted signature".into())),
    };
    let plan = run.step(&rejected, &jobs(vec![]), 10);
    assert!(plan.create.is_empty());
    assert_eq!(run.drift(), "VerificationFailed");
    assert_eq!(run.shown(), Shown::Stalled);
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(1));
    assert!(plan.events.iter().any(|e| e.reason == Reason::VerificationFailed));
}

#[test]
fn rollback_to_a_kept_version_and_suspend() {
    let mut run = Run::new(1, 5);
    deployed_everywhere(&mut run, 1);
    let v2 = version(2);
    run.step(&v2, &jobs(vec![]), 10);
    run.step(&v2, &jobs(vec![job("n1", &digest(2), succeeded(7))]), 11);
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(2));
    // Back to v1: a new Job (it fetches nothing: v1 was kept) after v2's Job is gone.
    let plan = run.step(&version(1), &jobs(vec![job("n1", &digest(2), succeeded(7))]), 12);
    assert_eq!(plan.delete.len(), 1);
    let plan = run.step(&version(1), &jobs(vec![]), 13);
    assert_eq!(plan.create, vec![("n1".into(), digest(1))]);

    run.spec.suspend = true;
    let plan = run.step(&version(3), &jobs(vec![]), 14);
    assert!(plan.create.is_empty(), "suspended: no Jobs");
}

#[test]
fn revoked_trust_halts_pulls_and_leaves_what_nodes_hold() {
    let mut run = Run::new(2, 5);
    deployed_everywhere(&mut run, 1);
    // n3 joined and its pull started; then the trust in v1 was revoked.
    run.nodes = nodes(4);
    let revoked = Desired::Blocked {
        reason: Reason::TrustRevoked,
        message: "sha256:11… no longer verifies".into(),
        stalled: true,
    };
    let under_way = jobs(vec![
        job("n1", &digest(1), succeeded(10)),
        job("n3", &digest(1), JobState::Running { started: Some(t(5)) }),
    ]);
    let plan = run.step(&revoked, &under_way, 10);
    assert!(plan.create.is_empty(), "no node receives a revoked version");
    assert_eq!(plan.delete, vec![under_way["n3"][0].name.clone()], "the pull under way stops; finished Jobs stay");
    assert_eq!(run.drift(), "TrustRevoked");
    assert_eq!(run.shown(), Shown::Stalled);
    assert_eq!(plan.events.iter().filter(|e| e.warning && e.reason == Reason::TrustRevoked).count(), 1);
    assert_eq!(run.status.deployed.as_ref().unwrap().digest, digest(1), "nodes still hold it");
    let entries = &run.status.nodes.as_ref().unwrap().entries;
    for node in ["n1", "n2"] {
        let entry = entries.iter().find(|e| e.node == node).unwrap();
        assert_eq!(entry.current.as_deref(), Some(digest(1).as_str()), "{node} keeps its files");
    }
    assert!(entries.iter().all(|e| e.node != "n4"), "a node that holds nothing gets nothing");
    // Still revoked: nothing more happens and the event is not repeated.
    let plan = run.step(&revoked, &jobs(vec![]), 20);
    assert!(plan.create.is_empty() && plan.delete.is_empty() && plan.events.is_empty(), "{plan:?}");
    // Trust restored: the joined nodes receive it.
    let plan = run.step(&version(1), &jobs(vec![]), 30);
    let to: Vec<&str> = plan.create.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(to, vec!["n3", "n4"]);
}

#[test]
fn only_refusals_of_trust_or_bounds_halt_pulls_under_way() {
    let blocked = |reason: Reason| Desired::Blocked { reason, message: "m".into(), stalled: true };
    let table = [
        (blocked(Reason::TrustRevoked), true),
        (blocked(Reason::TolerationNotAllowed), true),
        (blocked(Reason::VerificationFailed), false),
        (blocked(Reason::ModelStalled), false),
        (blocked(Reason::ModelNotFound), false),
        (version(1), false),
    ];
    for (desired, halts) in table {
        assert_eq!(desired.halts_pulls(), halts, "{desired:?}");
    }
}

fn cache(observed: i64, current: &[String], free: u64) -> NodeInventory {
    NodeInventory { observed_at: Some(t(observed)), current: current.iter().cloned().collect(), free }
}

#[test]
fn a_version_the_nodes_cache_lost_is_pulled_again() {
    let mut run = Run::new(1, 5);
    let v1 = version(1);
    run.step(&v1, &jobs(vec![]), 0);
    let done = jobs(vec![job("n1", &digest(1), succeeded(10))]); // completed at t(2)
    run.step(&v1, &done, 3);
    assert_eq!(run.status.nodes.as_ref().unwrap().ready, 1);
    let d1 = [digest(1)];
    // (cache, lost?): measured before the pull, at the same second, after it holding it, after it
    // without it, and no ModelCache at all.
    let cases = [
        (Some(cache(1, &[], 0)), false),
        (Some(cache(2, &[], 0)), false),
        (Some(cache(5, &d1, 0)), false),
        (Some(cache(5, &[], 0)), true),
        (None, false),
    ];
    for (node_cache, lost) in cases {
        let mut r = Run { status: run.status.clone(), ..Run::new(1, 5) };
        r.inventories = node_cache.clone().map(|c| BTreeMap::from([("n1".to_owned(), c)])).unwrap_or_default();
        let plan = r.step(&v1, &done, 6);
        let entry = &r.status.nodes.as_ref().unwrap().entries[0];
        assert_eq!(entry.phase == NodePhase::Pending, lost, "{node_cache:?}");
        assert_eq!(plan.delete.len(), usize::from(lost), "the Job that linked it goes: {node_cache:?}");
        if lost {
            assert_eq!(entry.current, None);
            assert!(entry.message.as_deref().is_some_and(|m| m.contains("no longer holds")), "{entry:?}");
            // Once the Job is gone, the node pulls again (the cache still lacks it).
            let plan = r.step(&v1, &jobs(vec![]), 7);
            assert_eq!(plan.create, vec![("n1".into(), digest(1))]);
        }
    }
    // The same lost version once the status only remembers it (its Job is past its TTL).
    let mut r = Run { status: run.status.clone(), ..Run::new(1, 5) };
    r.inventories = BTreeMap::from([("n1".to_owned(), cache(9, &[], 0))]);
    let plan = r.step(&v1, &jobs(vec![]), 10);
    assert_eq!(plan.create, vec![("n1".into(), digest(1))], "recorded completion t(2) < cache t(9)");
}

#[test]
fn a_pull_too_big_for_the_node_waits_for_room_or_the_backoff() {
    let v1 = version(1);
    let failed = JobState::Failed {
        started: Some(t(1)),
        completed: Some(t(2)),
        message: "InsufficientStorage: needs 1.0 KiB, 10 B free after evicting 0 B".into(),
    };
    let too_big = |needs| {
        let (node, mut j) = job("n1", &digest(1), failed.clone());
        j.needs = needs;
        jobs(vec![(node, j)])
    };
    // (needs, cache, retried at t(3)?)
    let cases = [
        (Some(1024), None, false),
        (Some(1024), Some(cache(3, &[], 10)), false),
        (Some(1024), Some(cache(1, &[], 5000)), false),
        (Some(1024), Some(cache(3, &[], 1024)), true),
        (None, Some(cache(3, &[], 5000)), false),
    ];
    for (needs, node_cache, retried) in cases {
        let mut run = Run::new(1, 5);
        run.step(&v1, &jobs(vec![]), 0);
        run.inventories = node_cache.clone().map(|c| BTreeMap::from([("n1".to_owned(), c)])).unwrap_or_default();
        let plan = run.step(&v1, &too_big(needs), 3);
        let entry = &run.status.nodes.as_ref().unwrap().entries[0];
        assert_eq!(plan.delete.len(), usize::from(retried), "{needs:?} {node_cache:?}");
        if !retried {
            assert_eq!(entry.phase, NodePhase::Failed);
            assert!(entry.message.as_deref().is_some_and(|m| m.starts_with("InsufficientStorage: needs")));
            assert!(plan.requeue <= RETRY_AFTER && plan.create.is_empty(), "not retried in a loop");
        }
    }
}
