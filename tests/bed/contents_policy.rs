//! On the bed: a ModelPolicy refuses a model carrying a malicious pickle and one whose declared
//! `paramSize` is false, both before any node pulls them, from the headers the controller read by
//! range requests; the Model's status carries the weights' summary. The same refusal without the
//! bed is `check_refuses_a_malicious_pickle_and_a_false_param_size_before_any_pull` in
//! tests/contents_oracles.rs. The files come from e2e/contents/cases.py (the pinned Python venv).

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use modelpack_operator::api::conditions::{COMPLIANT, ConditionStatus, find};
use modelpack_operator::api::{Model, ModelDeployment, ModelPolicy};
use serde_json::{Value, json};
use support::craft::{self, Artifact, Blob};
use support::{Bed, Operator, TestNodes, apply, ensure_namespace, eventually, install_crds, namespace, unique_suffix};

const JOBS_NAMESPACE: &str = "modelpack-system";

fn python() -> PathBuf {
    std::env::var_os("MODELPACK_E2E_PYTHON")
        .map_or_else(|| Bed::get().tools.join("../python/bin/python3"), PathBuf::from)
}

fn crafted(name: &str) -> (Vec<u8>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e/contents/cases.py");
    let out = std::process::Command::new(python()).arg(&script).arg(dir.path()).output().expect("running cases.py");
    assert!(out.status.success(), "cases.py: {}", String::from_utf8_lossy(&out.stderr));
    let cases: Vec<Value> = serde_json::from_slice(&std::fs::read(dir.path().join("cases.json")).unwrap()).unwrap();
    let case = cases.into_iter().find(|c| c["name"] == name).unwrap();
    (std::fs::read(dir.path().join(name)).unwrap(), case)
}

fn model(path: &str, data: Vec<u8>, param_size: &str) -> Artifact {
    let config = json!({"descriptor": {"name": "m"}, "config": {"paramSize": param_size},
        "modelfs": {"type": "layers", "diffIds": []}});
    Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: Blob::new("application/vnd.cncf.model.config.v1+json", serde_json::to_vec(&config).unwrap()),
        layers: vec![
            Blob::new("application/vnd.cncf.model.weight.v1.raw", data).annotate("org.cncf.model.filepath", path),
        ],
        annotations: Default::default(),
    }
}

#[tokio::test]
async fn a_policy_refuses_a_malicious_pickle_and_a_false_param_size_before_any_pull() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, JOBS_NAMESPACE).await;
    let ns = namespace(&client, "contents").await;
    let _operator = Operator::start(&ns);
    let nodes = TestNodes::create("contents", 1);
    let label = unique_suffix();
    let (safetensors, st_case) = crafted("model_safetensors");
    let (pickle, _) = crafted("torch_zip_malicious");
    let params = st_case["oracle"]["parameters"].as_u64().unwrap().to_string();
    let repo = |n: &str| format!("contents/{n}-{label}");
    let pushes = [
        (
            "good",
            craft::push(&bed.plain, &repo("good"), "v1", &model("model.safetensors", safetensors.clone(), &params))
                .await,
        ),
        (
            "false-size",
            craft::push(&bed.plain, &repo("false-size"), "v1", &model("model.safetensors", safetensors, "7B")).await,
        ),
        ("pickle", craft::push(&bed.plain, &repo("pickle"), "v1", &model("pytorch_model.bin", pickle, &params)).await),
    ];
    let policies: Api<ModelPolicy> = Api::all(client.clone());
    let policy = format!("weights-{label}");
    apply(&policies, "ModelPolicy", &policy, json!({"action": "Enforce",
        "modelSelector": {"matchLabels": {"e2e.modelpack.dev/policy": label}},
        "rules": [
            {"name": "no-unsafe-code", "expression": "!weights.unsafe"},
            {"name": "declared-size", "expression": "!has(weights.declaredParameters) || (weights.parameters * 100 >= weights.declaredParameters * 95 && weights.parameters * 100 <= weights.declaredParameters * 105)"},
        ]}))
    .await;
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    for (name, _) in &pushes {
        let model = json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model",
            "metadata": {"name": name, "labels": {"e2e.modelpack.dev/policy": label}},
            "spec": {"repository": format!("{}/{}", bed.plain.host, repo(name)), "ref": {"tag": "v1"},
                "insecure": true, "interval": "10s"}});
        let params = kube::api::PatchParams::apply("e2e").force();
        models.patch(name, &params, &kube::api::Patch::Apply(&model)).await.unwrap();
        apply(
            &deployments,
            "ModelDeployment",
            name,
            json!({"modelRef": {"name": name}, "nodeSelector": nodes.selector()}),
        )
        .await;
    }
    for (name, failed_rule) in
        [("good", None), ("false-size", Some("declared-size")), ("pickle", Some("no-unsafe-code"))]
    {
        let m = eventually(&format!("{name} judged"), Duration::from_secs(90), || async {
            let m = models.get(name).await.ok()?;
            find(&m.status.as_ref()?.conditions, COMPLIANT)?;
            Some(m)
        })
        .await;
        let status = m.status.clone().unwrap();
        let compliant = find(&status.conditions, COMPLIANT).unwrap();
        let weights = status.artifact.as_ref().and_then(|a| a.weights.clone()).expect("status.artifact.weights");
        match failed_rule {
            None => {
                assert_eq!(compliant.status, ConditionStatus::True, "{status:?}");
                assert_eq!(weights.parameters.to_string(), params);
            }
            Some(rule) => {
                assert_eq!(compliant.status, ConditionStatus::False, "{status:?}");
                assert!(status.violations.iter().any(|v| v.rule == rule), "{name}: {:?}", status.violations);
                assert!(status.accepted.is_none(), "{name} was accepted");
            }
        }
        if name == "pickle" {
            assert!(weights.is_unsafe, "{weights:?}");
        }
    }
    // Nothing of the refused digests was pulled: no pull Job names them.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), JOBS_NAMESPACE);
    let listed =
        jobs.list(&ListParams::default().labels("app.kubernetes.io/managed-by=modelpack-operator")).await.unwrap();
    let pulled: Vec<String> =
        listed.items.iter().filter_map(|j| j.annotations().get("modelpack.dev/digest").cloned()).collect();
    for (name, digest) in &pushes[1..] {
        assert!(!pulled.contains(digest), "{name} ({digest}) was pulled");
    }
    policies.delete(&policy, &Default::default()).await.unwrap();
    drop(nodes);
}
