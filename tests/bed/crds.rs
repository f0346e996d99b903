//! CRDs are applied to the bed's real kube-apiserver; its CEL rules accept valid objects and reject
//! each kind of invalid one with the rule's message.

use crate::support;

use std::time::Duration;

use kube::Client;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::{Value, json};
use support::{Bed, eventually, install_crds, namespace, run_tool, try_tool};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn api(client: &Client, ns: &str, kind: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("modelpack.dev", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

async fn create(client: &Client, ns: &str, kind: &str, name: &str, spec: Value) -> Result<DynamicObject, String> {
    let obj: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "modelpack.dev/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    api(client, ns, kind).create(&PostParams::default(), &obj).await.map_err(|e| match e {
        kube::Error::Api(status) => status.message,
        other => panic!("unexpected error creating {kind}: {other}"),
    })
}

#[tokio::test]
async fn model_cel_rules_reject_each_invalid_spec_with_its_message() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "cel-model").await;

    let valid = [
        json!({"repository": "127.0.0.1:5000/team/model", "ref": {"tag": "v1.0"}}),
        json!({"repository": "registry.example.com/a/b/c", "ref": {"semver": ">=1.0.0 <2", "semverFilter": "^v?[0-9.]+$"}}),
        json!({"repository": "team/model", "ref": {"digest": DIGEST}, "interval": "10s", "timeout": "1m30s"}),
        json!({"repository": "[::1]:5000/m", "interval": "1h30m", "verify": {"provider": "notation", "secretRef": {"name": "trust"}}}),
        json!({"repository": "ghcr.io/org/model_name-x.y", "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}}),
    ];
    for (i, spec) in valid.into_iter().enumerate() {
        let created = create(&client, &ns, "Model", &format!("valid-{i}"), spec.clone()).await;
        assert!(created.is_ok(), "valid spec {spec} was rejected: {created:?}");
    }
    let defaulted = create(&client, &ns, "Model", "defaulted", json!({"repository": "r.example/m"})).await.unwrap();
    assert_eq!(defaulted.data["spec"]["ref"], json!({"tag": "latest"}), "ref defaults to tag latest");

    let invalid = [
        (
            json!({"repository": "r.example/m", "ref": {}}),
            "exactly one of ref.tag, ref.semver or ref.digest must be set",
        ),
        (json!({"repository": "r.example/m", "ref": {"tag": "v1", "digest": DIGEST}}), "exactly one of ref.tag"),
        (json!({"repository": "r.example/m", "ref": {"tag": "v1", "semver": "^1"}}), "exactly one of ref.tag"),
        (
            json!({"repository": "r.example/m", "ref": {"tag": "v1", "semverFilter": "x"}}),
            "ref.semverFilter is only allowed together with ref.semver",
        ),
        (json!({"repository": "r.example/m:v1"}), "repository must not contain a tag"),
        (json!({"repository": "localhost:5000/m:v1"}), "repository must not contain a tag"),
        (json!({"repository": format!("r.example/m@{DIGEST}")}), "repository must not contain a digest"),
        (json!({"repository": "r.example/Team/Model"}), "repository must be a valid OCI repository name"),
        (json!({"repository": "r.example/m//x"}), "repository must be a valid OCI repository name"),
        (
            json!({"repository": "r.example/m", "ref": {"digest": "sha256:abc"}}),
            "ref.digest must match sha256:[a-f0-9]{64}",
        ),
        (json!({"repository": "r.example/m", "ref": {"digest": DIGEST.to_uppercase()}}), "ref.digest must match"),
        (json!({"repository": "r.example/m", "ref": {"tag": "-bad tag"}}), "ref.tag must be a valid OCI tag"),
        (json!({"repository": "r.example/m", "interval": "9s"}), "interval must be a duration of at least 10s"),
        (
            json!({"repository": "r.example/m", "interval": "five minutes"}),
            "interval must be a duration of at least 10s",
        ),
        (json!({"repository": "r.example/m", "timeout": "0s"}), "timeout must be a positive duration"),
        (
            json!({"repository": "r.example/m", "verify": {"provider": "gpg", "secretRef": {"name": "k"}}}),
            "supported values: \"notation\", \"cosign\"",
        ),
    ];
    for (i, (spec, message)) in invalid.into_iter().enumerate() {
        match create(&client, &ns, "Model", &format!("invalid-{i}"), spec.clone()).await {
            Ok(_) => panic!("invalid spec {spec} was accepted"),
            Err(got) => assert!(got.contains(message), "spec {spec}: expected {message:?} in {got:?}"),
        }
    }
}

#[tokio::test]
async fn model_deployment_rules_and_defaults() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "cel-deploy").await;

    let minimal = create(&client, &ns, "ModelDeployment", "minimal", json!({"modelRef": {"name": "m"}})).await.unwrap();
    assert_eq!(minimal.data["spec"]["keepPrevious"], json!(1));
    let full = json!({
        "modelRef": {"name": "m"}, "digest": DIGEST, "nodeSelector": {"gpu": "true"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}], "keepPrevious": 3,
        "pull": {"maxParallel": 2, "backoffLimit": 1, "timeout": "30m",
                 "resources": {"limits": {"memory": "256Mi"}, "requests": {"cpu": "100m"}}},
        "suspend": true
    });
    create(&client, &ns, "ModelDeployment", "full", full).await.unwrap();

    let invalid = [
        (json!({"modelRef": {"name": "m"}, "digest": "latest"}), "digest must match sha256:[a-f0-9]{64}"),
        (
            json!({"modelRef": {"name": "m"}, "pull": {"timeout": "0s"}}),
            "pull.timeout must be a duration of at least 1s",
        ),
        (json!({"modelRef": {"name": "m"}, "keepPrevious": 11}), "keepPrevious"),
        (json!({"modelRef": {"name": ""}}), "spec.modelRef.name"),
        (json!({}), "spec.modelRef: Required value"),
    ];
    for (i, (spec, message)) in invalid.into_iter().enumerate() {
        match create(&client, &ns, "ModelDeployment", &format!("invalid-{i}"), spec.clone()).await {
            Ok(_) => panic!("invalid spec {spec} was accepted"),
            Err(got) => assert!(got.contains(message), "spec {spec}: expected {message:?} in {got:?}"),
        }
    }

    // Short names and the `modelpack` category work through kubectl.
    create(&client, &ns, "Model", "m", json!({"repository": "r.example/m"})).await.unwrap();
    // kubectl's discovery may lag the CRDs' establishment by a moment; it has its own cache dir.
    let kubectl = bed.tool("kubectl");
    let cache = tempfile::tempdir().unwrap();
    let cache = cache.path().to_str().unwrap();
    let listed = eventually("kubectl to discover the modelpack category", Duration::from_secs(30), || async {
        try_tool(&kubectl, &["get", "modelpack", "-n", &ns, "-o", "name", "--cache-dir", cache], &[], None).ok()
    })
    .await;
    assert!(listed.contains("model.modelpack.dev/m"), "{listed}");
    assert!(listed.contains("modeldeployment.modelpack.dev/minimal"), "{listed}");
    let short = run_tool(&kubectl, &["get", "mdl,mdeploy", "-n", &ns, "--cache-dir", cache], &[], None);
    for column in
        ["REPOSITORY", "REF", "DIGEST", "VERIFIED", "COMPLIANT", "READY", "DESIRED", "DEPLOYED", "NODES", "DRIFT"]
    {
        assert!(short.contains(column), "column {column} missing from:\n{short}");
    }
}
