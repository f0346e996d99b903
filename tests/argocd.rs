//! The Argo CD health checks: the ConfigMap snippet embeds the scripts verbatim, and the scripts
//! give each health status on the shapes the operator writes (the end-to-end tests also run them on
//! live objects after each step).

mod support;

use serde_json::json;
use support::argo::health;

#[test]
fn the_argocd_cm_snippet_embeds_the_scripts_verbatim() {
    let cm: serde_json::Value = serde_saphyr::from_str(include_str!("../deploy/argocd/argocd-cm.yaml")).unwrap();
    let data = &cm["data"];
    assert_eq!(data["resource.customizations.health.modelpack.dev_Model"], include_str!("../deploy/argocd/model.lua"));
    assert_eq!(
        data["resource.customizations.health.modelpack.dev_ModelDeployment"],
        include_str!("../deploy/argocd/modeldeployment.lua")
    );
}

fn condition(type_: &str, status: &str, reason: &str) -> serde_json::Value {
    json!({"type": type_, "status": status, "reason": reason, "message": format!("{reason} message"),
        "lastTransitionTime": "2026-01-01T00:00:00Z"})
}

#[test]
fn each_status_is_reached() {
    let obj = |kind: &str, generation: i64, observed: Option<i64>, conditions: serde_json::Value, suspend: bool| {
        let mut o = json!({"kind": kind, "metadata": {"name": "x", "generation": generation},
            "spec": {"suspend": suspend}, "status": {"conditions": conditions}});
        if let Some(g) = observed {
            o["status"]["observedGeneration"] = json!(g);
        }
        o
    };
    for kind in ["Model", "ModelDeployment"] {
        let ready = json!([condition("Ready", "True", "Succeeded")]);
        assert_eq!(health(&obj(kind, 1, Some(1), ready.clone(), false)).0, "Healthy");
        assert_eq!(health(&obj(kind, 2, Some(1), ready.clone(), false)).0, "Progressing", "stale generation");
        assert_eq!(health(&obj(kind, 1, Some(1), ready, true)).0, "Suspended");
        let stalled = json!([
            condition("Ready", "False", "SignatureRejected"),
            condition("Stalled", "True", "SignatureRejected")
        ]);
        let (status, message) = health(&obj(kind, 1, Some(1), stalled, false));
        assert_eq!((status.as_str(), message.starts_with("SignatureRejected")), ("Degraded", true));
        let reconciling =
            json!([condition("Ready", "Unknown", "Pulling"), condition("Reconciling", "True", "Pulling")]);
        assert_eq!(health(&obj(kind, 1, Some(1), reconciling, false)).0, "Progressing");
        assert_eq!(
            health(&json!({"kind": kind, "metadata": {"name": "x"}, "spec": {}})).0,
            "Progressing",
            "no status yet"
        );
    }
}

#[test]
fn the_workloads_hand_over_shows_in_modeldeployment_health() {
    let obj = |conditions: serde_json::Value| {
        json!({"kind": "ModelDeployment", "metadata": {"name": "x", "generation": 1}, "spec": {},
            "status": {"observedGeneration": 1, "conditions": conditions}})
    };
    let ready = condition("Ready", "True", "Deployed");
    let rolled = condition("WorkloadsUpdated", "True", "RolledOut");
    assert_eq!(health(&obj(json!([ready, rolled]))).0, "Healthy");
    // Nodes in sync, the workloads not yet handed over or not yet rolled out: still progressing.
    for reason in ["RollingOut", "HandOverWaiting"] {
        let (status, message) = health(&obj(json!([ready, condition("WorkloadsUpdated", "False", reason)])));
        assert_eq!((status.as_str(), message.contains(reason)), ("Progressing", true), "{reason}");
    }
    // A missing workload or image volume is a configuration error.
    for reason in ["WorkloadNotFound", "ImageVolumeNotFound"] {
        let (status, message) = health(&obj(json!([ready, condition("WorkloadsUpdated", "False", reason)])));
        assert_eq!((status.as_str(), message.starts_with(reason)), ("Degraded", true), "{reason}");
    }
    // While nodes are still pulling, waiting for the hand-over is the nodes' progress, not a failure.
    let pulling = json!([
        condition("Ready", "False", "NoNodesSelected"),
        condition("WorkloadsUpdated", "False", "HandOverWaiting")
    ]);
    assert_eq!(health(&obj(pulling)).0, "Degraded", "Ready=False without Reconciling stays Degraded");
}
