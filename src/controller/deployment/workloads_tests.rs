use super::*;
use crate::api::VersionRef;

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

fn version(n: u8) -> Desired {
    let d = digest(n);
    Desired::Version { version: VersionRef { short_digest: short_digest(&d), digest: d, tag: None }, rejected: None }
}

fn spec(suspend: bool) -> ModelDeploymentSpec {
    serde_json::from_value(json!({"modelRef": {"name": "m"}, "suspend": suspend})).unwrap()
}

fn wref(kind: WorkloadKind, name: &str, volume: Option<&str>) -> WorkloadRef {
    WorkloadRef { kind, name: name.into(), image_volume: volume.map(str::to_owned) }
}

fn live(digest: Option<String>, volume: Volume) -> Live {
    Live {
        digest,
        volume,
        generation: Some(2),
        observed_generation: Some(2),
        replicas: 1,
        updated: 1,
        ready: 1,
        pods: None,
    }
}

const REPO: &str = "registry.example.com/team/llm";

#[test]
fn target_is_the_stored_deployed_version_only_when_it_is_the_accepted_one_and_not_suspended() {
    let (one, two) = (digest(1), digest(2));
    // In sync: hand over.
    assert_eq!(target(&spec(false), &version(1), Some(&one)), Ok(one.as_str()));
    // Nodes still pulling the new version (deployed is the old one), or nothing deployed yet.
    assert!(target(&spec(false), &version(2), Some(&one)).unwrap_err().contains("pulling"));
    assert!(target(&spec(false), &version(1), None).is_err());
    // Suspended.
    assert!(target(&spec(true), &version(1), Some(&one)).unwrap_err().contains("suspended"));
    // Not accepted: revoked trust, failed verification of a pin.
    let blocked = Desired::Blocked { reason: Reason::TrustRevoked, message: "revoked".into(), stalled: true };
    assert!(target(&spec(false), &blocked, Some(&one)).unwrap_err().contains("revoked"));
    // A rejected newer digest leaves the accepted (deployed) one in force.
    let rejected = Desired::Version {
        version: VersionRef { digest: one.clone(), short_digest: short_digest(&one), tag: None },
        rejected: Some((crate::api::conditions::Reason::VerificationFailed, "bad signature".into())),
    };
    assert_eq!(target(&spec(false), &rejected, Some(&one)), Ok(one.as_str()));
    // Rollback: pinned back to `two`, deployed once nodes hold it.
    assert_eq!(target(&spec(false), &version(2), Some(&two)), Ok(two.as_str()));
}

#[test]
fn to_apply_patches_only_workloads_whose_template_lacks_the_target() {
    let (one, two) = (digest(1), digest(2));
    let refs = vec![
        wref(WorkloadKind::Deployment, "current", None),
        wref(WorkloadKind::StatefulSet, "stale", None),
        wref(WorkloadKind::DaemonSet, "missing", None),
        wref(WorkloadKind::Deployment, "vol-stale", Some("model")),
        wref(WorkloadKind::Deployment, "vol-absent", Some("model")),
        wref(WorkloadKind::Deployment, "vol-current", Some("model")),
    ];
    let pinned = format!("{REPO}@{one}");
    let observed = vec![
        Observed::Found(live(Some(one.clone()), Volume::NotAsked)),
        Observed::Found(live(Some(two.clone()), Volume::NotAsked)),
        Observed::Missing,
        // Annotation right, reference still a tag.
        Observed::Found(live(Some(one.clone()), Volume::Image(Some(format!("{REPO}:latest"))))),
        Observed::Found(live(None, Volume::Absent)),
        Observed::Found(live(Some(one.clone()), Volume::Image(Some(pinned.clone())))),
    ];
    let got = to_apply(&refs, &observed, Some(&one), REPO);
    let want = vec![
        Apply { kind: WorkloadKind::StatefulSet, name: "stale".into(), digest: one.clone(), volume: None },
        Apply {
            kind: WorkloadKind::Deployment,
            name: "vol-stale".into(),
            digest: one.clone(),
            volume: Some(("model".into(), pinned)),
        },
        // No image volume to pin: the annotation alone.
        Apply { kind: WorkloadKind::Deployment, name: "vol-absent".into(), digest: one.clone(), volume: None },
    ];
    assert_eq!(got, want);
    assert!(to_apply(&refs, &observed, None, REPO).is_empty(), "no target, nothing written");
}

#[test]
fn apply_body_holds_exactly_the_annotation_and_the_image_reference() {
    let a = Apply {
        kind: WorkloadKind::StatefulSet,
        name: "s".into(),
        digest: digest(1),
        volume: Some(("model".into(), format!("{REPO}@{}", digest(1)))),
    };
    assert_eq!(
        apply_body(&a),
        json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "s"},
            "spec": {"template": {
                "metadata": {"annotations": {"modelpack.dev/digest": digest(1)}},
                "spec": {"volumes": [{"name": "model", "image": {"reference": format!("{REPO}@{}", digest(1))}}]}}}})
    );
    let plain = Apply { volume: None, ..a };
    assert_eq!(
        apply_body(&plain)["spec"]["template"],
        json!({"metadata": {"annotations": {"modelpack.dev/digest": digest(1)}}})
    );
}

#[test]
fn live_reads_each_kind_and_the_named_image_volume() {
    let obj = json!({"metadata": {"generation": 3},
        "spec": {"replicas": 4, "template": {"metadata": {"annotations": {"modelpack.dev/digest": "sha256:x"}},
            "spec": {"volumes": [{"name": "cfg", "configMap": {"name": "c"}}, {"name": "model", "image": {"reference": "r@d"}}]}}},
        "status": {"observedGeneration": 2, "updatedReplicas": 3, "readyReplicas": 1,
            "desiredNumberScheduled": 5, "updatedNumberScheduled": 4, "numberReady": 2}});
    let d = Live::read(WorkloadKind::Deployment, &obj, Some("model"));
    assert_eq!(d.digest.as_deref(), Some("sha256:x"));
    assert_eq!(d.volume, Volume::Image(Some("r@d".into())));
    assert_eq!((d.generation, d.observed_generation, d.replicas, d.updated, d.ready), (Some(3), Some(2), 4, 3, 1));
    let ds = Live::read(WorkloadKind::DaemonSet, &obj, Some("cfg"));
    assert_eq!(ds.volume, Volume::Absent, "a volume without an image source");
    assert_eq!((ds.replicas, ds.updated, ds.ready), (5, 4, 2));
    assert_eq!(Live::read(WorkloadKind::StatefulSet, &obj, Some("nope")).volume, Volume::Absent);
    assert_eq!(Live::read(WorkloadKind::StatefulSet, &obj, None).volume, Volume::NotAsked);
    let bare = Live::read(WorkloadKind::StatefulSet, &json!({"spec": {"template": {}}}), None);
    assert_eq!((bare.digest, bare.replicas), (None, 1), "replicas default to 1");
}

#[test]
fn report_condition_follows_problems_then_waiting_then_rollout() {
    let one = digest(1);
    let refs = vec![wref(WorkloadKind::Deployment, "web", Some("model"))];
    let ok: Result<&str, String> = Ok(&one);
    let rolled = Observed::Found(live(Some(one.clone()), Volume::Image(Some(format!("{REPO}@{one}")))));
    let r = report(&refs, std::slice::from_ref(&rolled), &ok, &[], &[]);
    assert_eq!(r.condition.as_ref().map(|c| (c.0, c.1)), Some((ConditionStatus::True, Reason::RolledOut)));
    assert!(!r.rolling && !r.problems && r.events.is_empty());
    assert_eq!(r.statuses[0].digest.as_deref(), Some(one.as_str()));

    // Handed over, pods not ready yet (a new generation not observed, or replicas not ready).
    let mut l = live(Some(one.clone()), Volume::Image(None));
    l.ready = 0;
    let r = report(&refs, &[Observed::Found(l.clone())], &ok, &[], &[]);
    assert_eq!(r.condition.as_ref().map(|c| (c.0, c.1)), Some((ConditionStatus::False, Reason::RollingOut)));
    assert!(r.rolling);
    l.ready = 1;
    l.observed_generation = Some(1);
    assert!(report(&refs, &[Observed::Found(l)], &ok, &[], &[]).rolling);

    // Waiting: no hand-over and no rollout to refresh.
    let waiting: Result<&str, String> = Err("pulling".into());
    let r = report(&refs, std::slice::from_ref(&rolled), &waiting, &[], &[]);
    assert_eq!(r.condition, Some((ConditionStatus::False, Reason::HandOverWaiting, "pulling".into())));
    assert!(!r.rolling);

    // No workloads: no condition.
    assert_eq!(report(&[], &[], &ok, &[], &[]).condition, None);
}

#[test]
fn problems_are_reported_in_condition_status_and_one_event_each() {
    let one = digest(1);
    let refs =
        vec![wref(WorkloadKind::Deployment, "gone", None), wref(WorkloadKind::StatefulSet, "novol", Some("model"))];
    let observed = vec![Observed::Missing, Observed::Found(live(Some(one.clone()), Volume::Absent))];
    let ok: Result<&str, String> = Ok(&one);
    let r = report(&refs, &observed, &ok, &[], &[]);
    let (status, reason, message) = r.condition.clone().unwrap();
    assert_eq!((status, reason), (ConditionStatus::False, Reason::WorkloadNotFound));
    assert!(message.contains("Deployment gone not found") && message.contains("no volume model"), "{message}");
    let reasons_seen: Vec<Reason> = r.events.iter().map(|e| e.2.reason).collect();
    assert_eq!(reasons_seen, [Reason::WorkloadNotFound, Reason::ImageVolumeNotFound]);
    assert!(r.events.iter().all(|e| e.2.warning));
    assert!(r.statuses.iter().all(|s| s.message.is_some()));
    assert!(r.problems, "looked at again soon: nothing watches for the workload to appear");
    // Announced once: the same problems in the previous status publish nothing.
    let again = report(&refs, &observed, &ok, &[], &r.statuses);
    assert!(again.events.is_empty(), "{:?}", again.events);
}

#[test]
fn each_hand_over_is_one_event_naming_the_digest_and_the_reference() {
    let one = digest(1);
    let refs = vec![wref(WorkloadKind::Deployment, "web", Some("model"))];
    let applied = vec![Apply {
        kind: WorkloadKind::Deployment,
        name: "web".into(),
        digest: one.clone(),
        volume: Some(("model".into(), format!("{REPO}@{one}"))),
    }];
    let observed = vec![Observed::Found(live(Some(one.clone()), Volume::Image(Some(format!("{REPO}@{one}")))))];
    let r = report(&refs, &observed, &Ok(&one), &applied, &[]);
    assert!(r.events.is_empty(), "{:?}", r.events);
    assert_eq!(r.handed.len(), 1);
    let e = &r.handed[0];
    assert_eq!((e.warning, e.reason), (false, Reason::WorkloadUpdated));
    assert!(e.message.contains(&one) && e.message.contains(&format!("{REPO}@{one}")), "{}", e.message);
}

#[test]
fn runtimes_are_told_apart_by_how_they_mount_an_artifact() {
    for (runtime, want) in [
        ("containerd://2.4.2", ArtifactMount::Empty),
        ("containerd://1.7.27", ArtifactMount::Empty),
        ("containerd://2.4.2+unknown", ArtifactMount::Empty),
        ("cri-o://1.31.0", ArtifactMount::Files),
        ("cri-o://1.33.2", ArtifactMount::Files),
        ("cri-o://2.0.0", ArtifactMount::Files),
        ("cri-o://1.30.4", ArtifactMount::Unknown),
        ("docker://27.0.1", ArtifactMount::Unknown),
        ("bedctl://executor", ArtifactMount::Unknown),
        ("containerd", ArtifactMount::Unknown),
        ("", ArtifactMount::Unknown),
    ] {
        assert_eq!(artifact_mount(runtime), want, "{runtime}");
    }
}

fn pod(name: &str, digest: Option<&str>, runtime: Option<&str>, waiting: &[(&str, &str)]) -> PodView {
    PodView {
        name: name.into(),
        digest: digest.map(str::to_owned),
        runtime: runtime.map(str::to_owned),
        waiting: waiting.iter().map(|(r, m)| ("serve".to_owned(), (*r).to_owned(), (*m).to_owned())).collect(),
    }
}

#[test]
fn pods_of_the_handed_version_that_cannot_serve_it_are_a_problem() {
    let (one, two) = (digest(1), digest(2));
    let containerd = Some("containerd://2.4.2");
    let crio = Some("cri-o://1.33.0");
    // An image volume on containerd: empty, whatever the pod says (it runs, Ready).
    let (reason, message) = pod_problems(&[pod("a", Some(&one), containerd, &[])], &one, Some("model")).unwrap();
    assert_eq!(reason, Reason::ImageVolumeNotMounted);
    assert!(message.contains("a (containerd://2.4.2)") && message.contains("node cache"), "{message}");
    // The same pods with the node cache (no image volume), or on CRI-O, or not yet scheduled: fine.
    assert_eq!(pod_problems(&[pod("a", Some(&one), containerd, &[])], &one, None), None);
    assert_eq!(pod_problems(&[pod("a", Some(&one), crio, &[])], &one, Some("model")), None);
    assert_eq!(pod_problems(&[pod("a", Some(&one), None, &[])], &one, Some("model")), None);
    // Pods of the old version are the old ReplicaSet's business.
    assert_eq!(pod_problems(&[pod("old", Some(&two), containerd, &[])], &one, Some("model")), None);
    let pulling = [("ImagePullBackOff", "")];
    assert_eq!(pod_problems(&[pod("old", Some(&two), crio, &pulling)], &one, None), None);
    // Containers that cannot start: the runtime's reason and message, a few pods named.
    let failing: Vec<PodView> = (0..5)
        .map(|i| pod(&format!("p{i}"), Some(&one), crio, &[("CreateContainerConfigError", "secret \"s\" not found")]))
        .collect();
    let (reason, message) = pod_problems(&failing, &one, Some("model")).unwrap();
    assert_eq!(reason, Reason::PodsFailing);
    let named = "p0/serve: CreateContainerConfigError secret \"s\" not found";
    assert!(message.contains(named) && message.contains("(and 2 more)"), "{message}");
    // A pod that cannot start outranks an empty mount (containerd 1.7 has no image volumes at all:
    // its pods fail, and that is what to say).
    let both = [pod("a", Some(&one), crio, &pulling), pod("b", Some(&one), containerd, &[])];
    assert_eq!(pod_problems(&both, &one, Some("model")).unwrap().0, Reason::PodsFailing);
}

#[test]
fn a_pod_view_keeps_the_waiting_reasons_that_mean_a_container_cannot_start() {
    let p = json!({
        "metadata": {"name": "web-1", "annotations": {DIGEST_ANNOTATION: "sha256:ab"}},
        "status": {
            "initContainerStatuses": [{"name": "init", "state": {"waiting": {"reason": "PodInitializing"}}}],
            "containerStatuses": [
                {"name": "a", "state": {"waiting": {"reason": "ContainerCreating"}}},
                {"name": "b", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}},
                {"name": "c", "state": {"running": {}}},
                {"name": "d", "state": {"waiting": {"reason": "CreateContainerConfigError", "message": "no\u{1b}[2J secret\nx"}}},
                {"name": "e", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off 5m0s pulling"}}},
            ],
        },
    });
    let view = PodView::read(&p, Some("containerd://2.4.2".into()));
    assert_eq!(view.name, "web-1");
    assert_eq!(view.digest.as_deref(), Some("sha256:ab"));
    assert_eq!(
        view.waiting,
        [
            // A first ErrImagePull is retried; a back-off's words change with its length.
            ("d".to_owned(), "CreateContainerConfigError".to_owned(), "no [2J secret x".to_owned()),
            ("e".to_owned(), "ImagePullBackOff".to_owned(), String::new())
        ]
    );
}

#[test]
fn a_workload_whose_pods_cannot_serve_is_reported_with_the_reason() {
    let one = digest(1);
    let r = wref(WorkloadKind::Deployment, "web", Some("model"));
    let mut l = live(Some(one.clone()), Volume::Image(Some(format!("{REPO}@{one}"))));
    l.pods = Some((Reason::ImageVolumeNotMounted, "image volume model is an empty directory".into()));
    let report = report(&[r], &[Observed::Found(l)], &Ok(one.as_str()), &[], &[]);
    let (status, reason, message) = report.condition.unwrap();
    assert_eq!((status, reason), (ConditionStatus::False, Reason::ImageVolumeNotMounted));
    assert!(message.starts_with("Deployment web: image volume model"), "{message}");
    assert_eq!(report.statuses[0].message.as_deref(), Some(message.as_str()));
    assert!(report.problems, "looked at again soon");
    assert_eq!(report.events.len(), 1);
    assert!(report.events[0].2.warning);
}
