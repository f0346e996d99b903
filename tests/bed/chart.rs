//! The Helm chart: it lints, `deploy/` is exactly its default rendering, the rendered manifests pass
//! the real apiserver's validation, and the operator runs a full scenario with nothing but the
//! chart's RBAC (a token of its ServiceAccount, not the admin credential).

use crate::support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, PostParams};
use modelpack_operator::api::{Model, ModelDeployment};
use serde_json::json;
use support::fixtures::{CosignKey, ModelFiles, modctl_push};
use support::{
    Bed, Operator, TestNodes, docker_config_secret, eventually, install_crds, namespace, run_tool, unique_suffix,
};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/modelpack-operator");

fn helm(args: &[&str]) -> String {
    run_tool(&Bed::get().tool("helm"), args, &[], None)
}

fn kubectl(args: &[&str]) -> String {
    let kubeconfig = Bed::get().kubeconfig.display().to_string();
    let mut all = vec!["--kubeconfig", kubeconfig.as_str()];
    all.extend(args);
    run_tool(&Bed::get().tool("kubectl"), &all, &[], None)
}

#[test]
fn the_chart_lints_and_deploy_is_its_default_rendering() {
    helm(&["lint", "--strict", CHART]);
    let rendered =
        helm(&["template", "modelpack-operator", CHART, "--namespace", "modelpack-system", "--include-crds"]);
    let committed = include_str!("../../deploy/modelpack-operator.yaml");
    assert!(
        rendered == committed,
        "deploy/modelpack-operator.yaml is stale: run  helm template modelpack-operator charts/modelpack-operator \
         --namespace modelpack-system --include-crds > deploy/modelpack-operator.yaml"
    );
    assert_eq!(
        include_str!("../../charts/modelpack-operator/crds/crds.yaml"),
        include_str!("../../crds/crds.yaml"),
        "chart CRDs stale"
    );
    // values.schema.json refuses what the operator cannot run with.
    let bad =
        support::try_tool(&Bed::get().tool("helm"), &["template", "x", CHART, "--set", "logFormat=xml"], &[], None);
    assert!(bad.is_err(), "an invalid value was accepted");
}

#[tokio::test]
async fn the_rendered_manifests_pass_server_side_validation() {
    // A dry run creates nothing, so the namespace the namespaced objects go to must exist already.
    support::ensure_namespace(&Bed::get().client().await, "modelpack-system").await;
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "-f",
        concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/modelpack-operator.yaml"),
    ]);
    for kind in ["customresourcedefinition", "deployment", "clusterrole", "role", "serviceaccount", "service"] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
}

use support::apply;

#[tokio::test]
async fn the_operator_runs_a_full_scenario_with_only_the_charts_rbac() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "rbac").await;
    let release = format!("rbac-{}", unique_suffix());

    // The chart's ServiceAccount and RBAC, installed in the test namespace as the release namespace.
    let rendered = helm(&["template", &release, CHART, "--namespace", &ns, "--set", "namespace.create=false"]);
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("rbac.yaml");
    let rbac: Vec<&str> = rendered
        .split("\n---")
        .filter(|doc| {
            ["kind: ServiceAccount", "kind: ClusterRole", "kind: Role", "kind: RoleBinding"]
                .iter()
                .any(|k| doc.contains(k))
        })
        .collect();
    std::fs::write(&manifests, rbac.join("\n---\n")).unwrap();
    kubectl(&["apply", "-f", manifests.to_str().unwrap()]);
    let token = kubectl(&["create", "token", &release, "-n", &ns, "--duration", "1h"]);
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::copy(&bed.kubeconfig, &kubeconfig).unwrap();
    let k = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        all.extend(args);
        run_tool(&bed.tool("kubectl"), &all, &[], None);
    };
    k(&["config", "set-credentials", "chart-sa", &format!("--token={}", token.trim())]);
    k(&["config", "set-context", "--current", "--user=chart-sa"]);

    let operator =
        Operator::start_full(&ns, "rbac", &["--jobs-namespace", &ns], &[("KUBECONFIG", kubeconfig.to_str().unwrap())]);

    // Everything the controllers do: auth Secret, cosign trust Secret, verification, Jobs with copied
    // credentials, node labels, events, deletion with cleanup Jobs.
    let nodes = TestNodes::create("rbac", 2);
    let repo = format!("rbac/model-{}", unique_suffix());
    let digest = modctl_push(bed, &bed.auth, &repo, "v1", &ModelFiles::new(71, &[("model.gguf", 20_000)]));
    let key = CosignKey::generate();
    let (user, password) = bed.auth.basic_auth.clone().unwrap();
    let sign_env = tempfile::tempdir().unwrap();
    let config = json!({"auths": {&bed.auth.host: {"auth": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"))}}});
    std::fs::create_dir_all(sign_env.path().join(".docker")).unwrap();
    std::fs::write(sign_env.path().join(".docker/config.json"), config.to_string()).unwrap();
    let key_path = key.dir.path().join("cosign.key");
    run_tool(
        &bed.tool("cosign"),
        &[
            "sign",
            "--key",
            key_path.to_str().unwrap(),
            "--tlog-upload=false",
            "--allow-http-registry",
            "--allow-insecure-registry",
            "--yes",
            &format!("{}/{repo}@{digest}", bed.auth.host),
        ],
        &[("COSIGN_PASSWORD", ""), ("DOCKER_CONFIG", sign_env.path().join(".docker").to_str().unwrap())],
        None,
    );
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    secrets.create(&PostParams::default(), &docker_config_secret("creds", &bed.auth, &password)).await.unwrap();
    let trust = json!({"metadata": {"name": "keys"}, "stringData": {"release.pub": key.public_pem()}});
    secrets.create(&PostParams::default(), &serde_json::from_value(trust).unwrap()).await.unwrap();
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    apply(&models, "Model", "m", json!({"repository": format!("{}/{repo}", bed.auth.host), "ref": {"tag": "v1"},
        "insecure": true, "secretRef": {"name": "creds"}, "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}})).await;
    // A workload that follows the deployment (its pods select no node): read and patched under the
    // chart's get/patch on apps.
    let repository = format!("{}/{repo}", bed.auth.host);
    let web: Deployment = serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": {
        "replicas": 0, "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
            "nodeSelector": {"modelpack.dev/none": "none"},
            "containers": [{"name": "c", "image": "registry.example.com/serve:1"}],
            "volumes": [{"name": "model", "image": {"reference": format!("{repository}:v1")}}]}}}}))
    .unwrap();
    let workloads: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    workloads.create(&PostParams::default(), &web).await.unwrap();
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    apply(
        &deployments,
        "ModelDeployment",
        "d",
        json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector(),
        "workloads": [{"kind": "Deployment", "name": "web", "imageVolume": "model"}]}),
    )
    .await;
    eventually("deployed with the chart's RBAC", Duration::from_secs(90), || async {
        let d = deployments.get("d").await.ok()?;
        let s = d.status?;
        (s.deployed?.digest == digest && s.drift?.in_sync).then_some(())
    })
    .await;
    eventually("the workload handed the version with the chart's RBAC", Duration::from_secs(60), || async {
        let web = serde_json::to_value(workloads.get("web").await.ok()?).ok()?;
        let template = &web["spec"]["template"];
        let handed = template["metadata"]["annotations"]["modelpack.dev/digest"] == json!(digest)
            && template["spec"]["volumes"][0]["image"]["reference"] == json!(format!("{repository}@{digest}"));
        handed.then_some(())
    })
    .await;
    let label = format!("ready.modelpack.dev/{ns}.d");
    let labelled = kubectl(&["get", "nodes", "-l", &label, "-o", "name"]);
    assert_eq!(labelled.lines().count(), 2, "{labelled}");
    deployments.delete("d", &DeleteParams::default()).await.unwrap();
    eventually("deleted with the chart's RBAC", Duration::from_secs(90), || async {
        deployments.get_opt("d").await.unwrap().is_none().then_some(())
    })
    .await;
    // Anything the chart's RBAC refused (a reconcile, an event, a label) is a WARN or ERROR event
    // whose error field carries the API server's reason, Forbidden (HTTP 403).
    let refused: Vec<serde_json::Value> = operator
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| matches!(l["level"].as_str(), Some("WARN" | "ERROR")))
        .filter(|l| l["fields"]["error"].as_str().is_some_and(|e| e.contains("Forbidden") || e.contains("403")))
        .collect();
    assert!(refused.is_empty(), "the operator warned under the chart's RBAC: {refused:#?}");
    kubectl(&["delete", "clusterrole,clusterrolebinding", &release]);
}
