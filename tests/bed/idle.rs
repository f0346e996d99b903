//! Quiet when idle: once a Model and a ModelDeployment are Ready and nothing changes, reconciles
//! keep running (Model intervals, Secret events that reach every deployment of the namespace) and
//! write nothing: no status, no node label, no Job. Writes are counted from what the apiserver
//! serves (resourceVersions), reconciles from the operator's metrics endpoint.

use crate::support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use modelpack_operator::api::{Model, ModelDeployment};
use serde_json::json;
use support::fixtures::{ModelFiles, modctl_push};
use support::{Bed, Operator, TestNodes, apply, ensure_namespace, install_crds, namespace, unique_suffix};

const JOBS_NAMESPACE: &str = "modelpack-system";

/// `modelpack_reconciles_total` of `controller`, all results.
fn reconciles(metrics: &str, controller: &str) -> u64 {
    let (_, text) = support::http_get(metrics, "/metrics");
    let series = format!("controller=\"{controller}\"");
    text.lines()
        .filter(|l| l.starts_with("modelpack_reconciles_total{") && l.contains(&series))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Every version the apiserver holds of what the operator writes for this deployment.
async fn versions(client: &Client, ns: &str, nodes: &[String]) -> BTreeMap<String, String> {
    let mut seen = BTreeMap::new();
    for m in Api::<Model>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap() {
        seen.insert(format!("model {}", m.name_any()), m.resource_version().unwrap_or_default());
    }
    for d in Api::<ModelDeployment>::namespaced(client.clone(), ns).list(&ListParams::default()).await.unwrap() {
        seen.insert(format!("deployment {}", d.name_any()), d.resource_version().unwrap_or_default());
    }
    let api: Api<Node> = Api::all(client.clone());
    for n in nodes {
        seen.insert(format!("node {n} labels"), format!("{:?}", api.get(n).await.unwrap().labels()));
    }
    let jobs = Api::<Job>::namespaced(client.clone(), JOBS_NAMESPACE).list(&ListParams::default()).await.unwrap();
    let ours = jobs.items.iter().filter(|j| j.annotations().values().any(|v| v.starts_with(&format!("{ns}/"))));
    seen.insert("jobs".into(), ours.map(|j| j.resource_version().unwrap_or_default()).collect::<Vec<_>>().join(","));
    seen
}

#[tokio::test]
async fn nothing_is_written_while_nothing_changes() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "idle").await;
    let operator = Operator::start(&ns);
    let nodes = TestNodes::create("idle", 2);
    let repo = format!("idle/m-{}", unique_suffix());
    modctl_push(bed, &bed.plain, &repo, "v1", &ModelFiles::new(31, &[("model.safetensors", 50_000)]));
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    let model = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "v1"}, "insecure": true, "interval": "10s"});
    apply(&models, "Model", "m", model).await;
    apply(&deployments, "ModelDeployment", "d", json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector()}))
        .await;
    support::wait_for_deployment(&deployments, "d", "in sync", |s| s.drift.as_ref().is_some_and(|d| d.in_sync)).await;
    // Let the last writes of the rollout (finished Jobs, labels) settle.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let metrics = operator.address("metrics");
    let before = versions(&client, &ns, &nodes.names).await;
    let counted = (reconciles(&metrics, "model"), reconciles(&metrics, "modeldeployment"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // Three Model intervals; a Secret change in each reaches every deployment of the namespace.
    for i in 0..3 {
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "unrelated"}, "stringData": {"n": i.to_string()}});
        secrets.patch("unrelated", &PatchParams::apply("e2e").force(), &Patch::Apply(&secret)).await.unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let after = versions(&client, &ns, &nodes.names).await;
    assert_eq!(after, before, "something was written while nothing changed");
    let (models_now, deployments_now) = (reconciles(&metrics, "model"), reconciles(&metrics, "modeldeployment"));
    assert!(models_now >= counted.0 + 3, "Models were reconciled every interval ({} → {models_now})", counted.0);
    assert!(
        deployments_now >= counted.1 + 3,
        "the deployment was reconciled on each Secret change ({} → {deployments_now})",
        counted.1
    );
}
