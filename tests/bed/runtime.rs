//! The operator process: leader election on a Lease (one replica reconciles; SIGTERM hands over at
//! once), `/healthz`, `/readyz` and `/metrics`, against the bed.

use crate::support;

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use modelpack_operator::api::{Model, ModelDeployment};
use serde_json::json;
use support::fixtures::{CosignKey, ModelFiles, modctl_push};
use support::{
    Bed, Operator, TestNodes, ensure_namespace, eventually, http_get, install_crds, namespace, sample, unique_suffix,
};

use support::apply;

async fn resolved(models: &Api<Model>, name: &str, digest: &str) {
    eventually(&format!("model {name} resolved {digest}"), Duration::from_secs(45), || async {
        let m = models.get(name).await.ok()?;
        (m.status?.resolved?.digest == digest).then_some(())
    })
    .await;
}

const MODEL_RECONCILES: &str = "modelpack_reconciles_total{controller=\"model\",result=\"success\"}";

async fn holder(leases: &Api<Lease>, name: &str) -> Option<String> {
    leases.get_opt(name).await.ok().flatten()?.spec?.holder_identity
}

#[tokio::test]
async fn one_replica_reconciles_and_sigterm_hands_the_lease_over_at_once() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "leader").await;
    let a = Operator::start_with(&ns, "replica-a", &[]);
    eventually("replica-a leads", Duration::from_secs(30), || async {
        (a.readiness() == (200, "ok".to_owned())).then_some(())
    })
    .await;
    let b = Operator::start_with(&ns, "replica-b", &[]);
    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    let lease = format!("modelpack-operator-{ns}");
    assert_eq!(holder(&leases, &lease).await.as_deref(), Some("replica-a"));

    let repo = format!("runtime/leader-{}", unique_suffix());
    let v1 = modctl_push(bed, &bed.plain, &repo, "v1", &ModelFiles::new(61, &[("model.gguf", 5_000)]));
    let v2 = modctl_push(bed, &bed.plain, &repo, "v2", &ModelFiles::new(62, &[("model.gguf", 5_000)]));
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let spec =
        |tag: &str| json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": tag}, "insecure": true});
    apply(&models, "Model", "m", spec("v1")).await;
    resolved(&models, "m", &v1).await;
    // The reconcile is counted once its status write is done.
    eventually("replica-a counts its reconcile", Duration::from_secs(5), || async {
        a.metric(MODEL_RECONCILES).is_some_and(|n| n >= 1.0).then_some(())
    })
    .await;
    assert_eq!(b.metric(MODEL_RECONCILES), None, "the standby reconciled");
    assert_eq!(b.readiness(), (200, "standby".to_owned()), "a standby replica is ready, as a standby");

    // SIGTERM: a clean exit that releases the lease, so the standby leads long before the 15 s
    // lease would have expired.
    let stopped = Instant::now();
    assert!(a.terminate(), "the leader did not exit cleanly on SIGTERM");
    eventually("replica-b leads", Duration::from_secs(10), || async {
        (holder(&leases, &lease).await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    assert!(stopped.elapsed() < Duration::from_secs(10));
    apply(&models, "Model", "m", spec("v2")).await;
    resolved(&models, "m", &v2).await;
    eventually("the new leader reconciles", Duration::from_secs(5), || async {
        b.metric(MODEL_RECONCILES).is_some_and(|n| n >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn probes_and_metrics_report_what_the_controllers_did() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    ensure_namespace(&client, "modelpack-system").await;
    let ns = namespace(&client, "metrics").await;
    let operator = Operator::start(&ns);
    let (health, metrics) = (operator.address("health probes"), operator.address("metrics"));
    assert_eq!(http_get(&health, "/healthz").0, 200);
    eventually("ready", Duration::from_secs(30), || async {
        (http_get(&health, "/readyz") == (200, "ok".into())).then_some(())
    })
    .await;

    let nodes = TestNodes::create("metrics", 2);
    let repo = format!("runtime/metrics-{}", unique_suffix());
    let files = ModelFiles::new(63, &[("model.gguf", 30_000)]);
    let digest = modctl_push(bed, &bed.plain, &repo, "v1", &files);
    let key = CosignKey::generate();
    key.sign(&format!("{}/{repo}@{digest}", bed.plain.host));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let trust = json!({"metadata": {"name": "keys"}, "stringData": {"k.pub": key.public_pem()}});
    secrets.create(&PostParams::default(), &serde_json::from_value(trust).unwrap()).await.unwrap();
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    let model = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "v1"}, "insecure": true,
        "verify": {"provider": "cosign", "secretRef": {"name": "keys"}}});
    apply(&models, "Model", "m", model).await;
    let deployments: Api<ModelDeployment> = Api::namespaced(client.clone(), &ns);
    apply(&deployments, "ModelDeployment", "d", json!({"modelRef": {"name": "m"}, "nodeSelector": nodes.selector()}))
        .await;
    eventually("deployed", Duration::from_secs(60), || async {
        let d = deployments.get("d").await.ok()?;
        d.status?.drift.filter(|drift| drift.in_sync).map(|_| ())
    })
    .await;

    let text = eventually("metrics of the deployment", Duration::from_secs(10), || async {
        let (status, text) = http_get(&metrics, "/metrics");
        (status == 200 && sample(&text, "modelpack_pulls_total{result=\"succeeded\"}").is_some_and(|v| v >= 2.0))
            .then_some(text)
    })
    .await;
    let at_least = |series: &str, min: f64| {
        let value = sample(&text, series).unwrap_or_else(|| panic!("{series} missing from:\n{text}"));
        assert!(value >= min, "{series} = {value}, expected at least {min}");
    };
    at_least("modelpack_reconciles_total{controller=\"model\",result=\"success\"}", 1.0);
    at_least("modelpack_reconciles_total{controller=\"modeldeployment\",result=\"success\"}", 1.0);
    at_least("modelpack_reconcile_duration_seconds_count{controller=\"model\"}", 1.0);
    at_least("modelpack_resolutions_total{result=\"success\"}", 1.0);
    at_least("modelpack_verifications_total{provider=\"cosign\",result=\"verified\"}", 1.0);
    at_least("modelpack_pulled_bytes_total", 2.0 * 30_000.0);
    assert_eq!(sample(&text, "modelpack_drifted_deployments"), Some(0.0));
}

#[tokio::test]
async fn a_missing_leader_election_namespace_is_one_line_naming_it_and_the_flag() {
    let bed = Bed::get();
    let absent = format!("absent-{}", unique_suffix());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_modelpack-operator"))
        .args(["run", "--watch-namespace", &absent, "--leader-election-namespace", &absent])
        .args(["--metrics-bind-address", "127.0.0.1:0", "--health-probe-bind-address", "127.0.0.1:0"])
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("RUST_LOG", "error")
        .output()
        .expect("running the operator");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(i32::from(modelpack_operator::exit::Exit::Undecided.code())), "{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line:\n{stderr}");
    let line = lines[0];
    assert!(line.contains(&format!("{absent:?}")) && line.contains("--leader-election-namespace"), "{line}");
    // No cause is said twice: no clause of the line (split at ": ") appears again after itself.
    let clauses: Vec<&str> = line.split(": ").collect();
    for (i, c) in clauses.iter().enumerate() {
        assert!(!clauses[i + 1..].join(": ").contains(c), "{c:?} repeats in {line}");
    }
}
