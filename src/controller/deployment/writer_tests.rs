//! The writer against a mock API server (controller-rs's way): every request it sends, in order,
//! with its content. The plan is given whole; the writer must carry it out and decide nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector;
use serde_json::{Value, json};

use super::*;
use crate::api::conditions::Reason;
use crate::api::{VersionRef, WorkloadKind};
use crate::controller::access::Access;
use crate::controller::deployment::desired::Desired;
use crate::controller::deployment::effects::Metrics;
use crate::controller::deployment::handover::HandOver;
use crate::controller::deployment::note::Note;
use crate::controller::deployment::workloads::Apply;
use crate::controller::{DeploymentContext, JobSettings, Readiness};
use crate::registry::{Options, Repository};

const JOBS_NAMESPACE: &str = "modelpack-system";
const LABEL: &str = "ready.modelpack.dev/ml.d";

/// One request as the server saw it.
#[derive(Debug)]
struct Seen {
    method: String,
    /// Path and query.
    uri: String,
    body: Value,
}

fn digest(n: u8) -> String {
    format!("sha256:{}", format!("{n:x}").repeat(64))
}

fn deployment() -> ModelDeployment {
    serde_json::from_value(json!({
        "apiVersion": "modelpack.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "d", "namespace": "ml", "uid": "u-1", "generation": 2},
        "spec": {"modelRef": {"name": "m"}, "workloads": [{"kind": "Deployment", "name": "web"}]},
    }))
    .unwrap()
}

/// Answers like an API server would, as far as the writer reads the answers; `missing` names paths
/// that answer 404.
async fn serve(mut handle: tower_test::mock::Handle<Request<Body>, Response<Body>>, missing: Vec<String>) -> Vec<Seen> {
    let mut seen = Vec::new();
    while let Some((request, send)) = handle.next_request().await {
        let (parts, body) = request.into_parts();
        let bytes = body.collect_bytes().await.unwrap();
        let body: Value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        let (method, uri) = (parts.method.to_string(), parts.uri.to_string());
        let path = parts.uri.path().to_owned();
        let (code, answer) = if missing.contains(&path) {
            (404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}))
        } else if method == "DELETE" {
            (200, json!({"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 200}))
        } else if path.ends_with("/status") {
            (200, serde_json::to_value(deployment()).unwrap())
        } else if path.starts_with("/api/v1/nodes/") {
            (200, json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": path.rsplit('/').next()}}))
        } else {
            let mut echo = body.clone();
            echo["metadata"]["uid"] = json!("uid-new");
            echo["metadata"]["resourceVersion"] = json!("42");
            (if method == "POST" { 201 } else { 200 }, echo)
        };
        let response = Response::builder().status(code).body(Body::from(serde_json::to_vec(&answer).unwrap()));
        send.send_response(response.unwrap());
        seen.push(Seen { method, uri, body });
    }
    seen
}

fn context(client: kube::Client) -> DeploymentContext {
    let reporter = Reporter { controller: "modelpack-operator".into(), instance: None };
    DeploymentContext {
        client: client.clone(),
        recorder: Recorder::new(client, reporter),
        metrics: Arc::new(crate::controller::Metrics::default()),
        readiness: Arc::new(Readiness::default()),
        nodes: reflector::store().0,
        jobs: reflector::store().0,
        inventories: reflector::store().0,
        models: reflector::store().0,
        settings: JobSettings {
            namespace: JOBS_NAMESPACE.into(),
            cache_dir: "/var/lib/modelpack".into(),
            image: "puller:test".into(),
            bound: Default::default(),
            max_entries: 1000,
            cache_limit: Default::default(),
            scrub_interval: Duration::ZERO,
            scrub_rate: 0,
            mirrors: Vec::new(),
            run_as_user: None,
        },
    }
}

fn index() -> Index {
    let version = VersionRef { digest: digest(2), short_digest: short(2), tag: None };
    Index {
        model: None,
        desired: Desired::Version { version, rejected: None },
        access: Some(Access {
            repository: Repository::parse("registry.example.com/team/llm").unwrap(),
            options: Options::default(),
            credential: None,
            credential_source: None,
        }),
        fingerprint: "f1".into(),
        nodes: vec!["n1".into(), "n2".into()],
        jobs: BTreeMap::new(),
        inventories: BTreeMap::new(),
        inventories_seen: BTreeMap::new(),
        label: LABEL.into(),
        labelled: BTreeMap::new(),
        workloads: Vec::new(),
    }
}

fn short(n: u8) -> String {
    crate::api::short_digest(&digest(n))
}

fn note(warning: bool, reason: Reason, message: &str) -> Note {
    Note { warning, reason, message: message.into() }
}

/// Delete a finished Job, start a pull on n1, hand the deployed version to `web`, write a new
/// status, label n1 and unlabel n2, and announce it all.
fn plan() -> Plan {
    let status: ModelDeploymentStatus = serde_json::from_value(json!({
        "observedGeneration": 2, "desired": {"digest": digest(2), "shortDigest": short(2)},
    }))
    .unwrap();
    let apply = Apply { kind: WorkloadKind::Deployment, name: "web".into(), digest: digest(1), volume: None };
    Plan {
        status,
        create: vec![("n1".into(), digest(2))],
        delete: vec!["pull-d-old".into()],
        keep: vec![digest(1)],
        events: vec![note(false, Reason::NewVersion, "desired version 2")],
        hand_over: vec![HandOver { apply, note: note(false, Reason::WorkloadUpdated, "Deployment web: handed 1") }],
        workload_events: vec![(WorkloadKind::StatefulSet, "db".into(), note(true, Reason::WorkloadNotFound, "gone"))],
        labels: vec![("n1".into(), Some(short(1))), ("n2".into(), None)],
        metrics: Metrics::default(),
        requeue: Duration::from_secs(60),
    }
}

/// Runs the writer against the mock server; returns what it wrote and every request.
async fn run(plan: Plan, current: Option<ModelDeploymentStatus>, missing: Vec<String>) -> (Written, Vec<Seen>) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(serve(handle, missing));
    let ctx = context(kube::Client::new(service, "default"));
    let written = write(&ctx, &deployment(), &index(), plan, current.as_ref()).await.unwrap();
    drop(ctx);
    let seen = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
    (written, seen)
}

fn events(seen: &[Seen]) -> Vec<&Seen> {
    seen.iter().filter(|s| s.uri.contains("/events")).collect()
}

#[tokio::test]
async fn the_plan_is_carried_out_in_order_jobs_workloads_status_labels_events() {
    let expected = plan();
    let (written, seen) = run(plan(), None, Vec::new()).await;
    let requests: Vec<(&str, &str)> =
        seen.iter().filter(|s| !s.uri.contains("/events")).map(|s| (s.method.as_str(), s.uri.as_str())).collect();
    let path = |i: usize| requests[i].1.split('?').next().unwrap();
    assert_eq!(requests.len(), 6, "{requests:#?}");
    assert_eq!((requests[0].0, path(0)), ("DELETE", "/apis/batch/v1/namespaces/modelpack-system/jobs/pull-d-old"));
    assert_eq!((requests[1].0, path(1)), ("POST", "/apis/batch/v1/namespaces/modelpack-system/jobs"));
    assert_eq!((requests[2].0, path(2)), ("PATCH", "/apis/apps/v1/namespaces/ml/deployments/web"));
    assert_eq!(
        (requests[3].0, path(3)),
        ("PATCH", "/apis/modelpack.dev/v1alpha1/namespaces/ml/modeldeployments/d/status")
    );
    assert_eq!((requests[4].0, path(4)), ("PATCH", "/api/v1/nodes/n1"));
    assert_eq!((requests[5].0, path(5)), ("PATCH", "/api/v1/nodes/n2"));
    // The pull Job: for the node and digest planned, keeping what the plan keeps.
    let job = &seen[1].body;
    assert_eq!(job["metadata"]["annotations"][jobs::NODE_ANNOTATION], json!("n1"));
    assert_eq!(job["metadata"]["annotations"][jobs::DIGEST_ANNOTATION], json!(digest(2)));
    assert!(job.to_string().contains(&digest(1)), "the kept version reaches the Job: {job}");
    // The hand-over: a forced server-side apply of exactly the planned fields.
    assert!(
        requests[2].1.contains("fieldManager=modelpack-operator-workloads") && requests[2].1.contains("force=true")
    );
    assert_eq!(seen[2].body, workloads::apply_body(&expected.hand_over[0].apply));
    // The status, whole; the labels as planned.
    assert_eq!(seen[3].body["status"], serde_json::to_value(&expected.status).unwrap());
    assert_eq!(seen[4].body, json!({"metadata": {"labels": {LABEL: short(1)}}}));
    assert_eq!(seen[5].body, json!({"metadata": {"labels": {LABEL: null}}}));
    assert!(written.wrote_status && written.status == expected.status);
    // Events last: the plan's, the workload's problem, then the hand-over naming the version it made.
    let events = events(&seen);
    let reasons: Vec<&str> = events.iter().map(|e| e.body["reason"].as_str().unwrap_or_default()).collect();
    assert_eq!(reasons, ["NewVersion", "WorkloadNotFound", "WorkloadUpdated"], "{events:#?}");
    assert_eq!(events[1].body["related"]["name"], json!("db"));
    assert_eq!(events[2].body["related"]["name"], json!("web"));
    assert_eq!(events[2].body["related"]["resourceVersion"], json!("42"), "the workload version the apply made");
}

#[tokio::test]
async fn an_unchanged_status_is_not_written_and_a_workload_gone_meanwhile_is_not_announced() {
    let mut quiet = plan();
    (quiet.create, quiet.delete, quiet.labels, quiet.events, quiet.workload_events) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let current = Some(quiet.status.clone());
    let gone = vec!["/apis/apps/v1/namespaces/ml/deployments/web".to_owned()];
    let (written, seen) = run(quiet, current, gone).await;
    let methods: Vec<(&str, &str)> =
        seen.iter().map(|s| (s.method.as_str(), s.uri.split('?').next().unwrap())).collect();
    assert_eq!(methods, [("PATCH", "/apis/apps/v1/namespaces/ml/deployments/web")], "{seen:#?}");
    assert!(!written.wrote_status);
}
