//! The Model reconciler against the bed: the operator binary (`run`, one per test namespace)
//! resolves Models built with modctl and oras, follows promotions and moved tags, reports each
//! failure with its reason and recovers, and writes nothing while nothing changes.

use crate::support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use modelpack_operator::api::conditions::{ConditionStatus, READY, STALLED, find};
use modelpack_operator::api::{Model, ModelStatus};
use serde_json::{Value, json};
use support::fixtures::{ModelFiles, cncf_config, modctl_push, oras_push_cncf};
use support::kstatus::{self, KStatus};
use support::reason_table;
use support::{
    Bed, Operator, Registry, craft, docker_config_secret, eventually, install_crds, namespace, unique_suffix,
};

async fn setup(prefix: &str) -> (Client, String, Api<Model>, Operator) {
    let client = Bed::get().client().await;
    install_crds(&client).await;
    let ns = namespace(&client, prefix).await;
    let operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client.clone(), &ns);
    (client, ns, models, operator)
}

async fn apply_model(models: &Api<Model>, name: &str, spec: Value) {
    let obj =
        json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": spec});
    models.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

/// Waits until the Model's status for its current generation satisfies `check`.
async fn wait_status(models: &Api<Model>, name: &str, what: &str, check: impl Fn(&ModelStatus) -> bool) -> Model {
    eventually(&format!("model {name}: {what}"), Duration::from_secs(45), || async {
        let m = models.get(name).await.ok()?;
        let status = m.status.as_ref()?;
        (status.observed_generation == m.metadata.generation && check(status)).then_some(m)
    })
    .await
}

fn ready_reason(status: &ModelStatus) -> Option<(ConditionStatus, String)> {
    find(&status.conditions, READY).map(|c| (c.status, c.reason.clone()))
}

fn is_ready(s: &ModelStatus) -> bool {
    ready_reason(s).is_some_and(|(st, _)| st == ConditionStatus::True)
}

fn reason_is(reason: &'static str) -> impl Fn(&ModelStatus) -> bool {
    move |s| ready_reason(s).is_some_and(|(_, r)| r == reason)
}

fn sample(seed: u64) -> ModelFiles {
    ModelFiles::new(seed, &[("model.safetensors", 50_000 + seed as usize), ("config.json", 200)])
}

fn repo_of(registry: &Registry, repo: &str) -> String {
    format!("{}/{repo}", registry.host)
}

#[tokio::test]
async fn resolves_tag_semver_and_digest_refs_and_reports_the_artifact() {
    let bed = Bed::get();
    let (_client, _ns, models, _op) = setup("model-resolve").await;
    let repo = format!("ctl/resolve-{}", unique_suffix());
    let legacy = modctl_push(bed, &bed.plain, &repo, "1.0.0", &sample(1));
    let m2 = sample(2);
    let newer = oras_push_cncf(bed, &bed.plain, &repo, "1.2.0", &m2, &cncf_config("resolve", &m2));
    let repository = repo_of(&bed.plain, &repo);

    apply_model(&models, "by-tag", json!({"repository": repository, "ref": {"tag": "1.0.0"}, "insecure": true})).await;
    apply_model(&models, "by-semver", json!({"repository": repository, "ref": {"semver": "^1.0"}, "insecure": true}))
        .await;
    apply_model(&models, "by-digest", json!({"repository": repository, "ref": {"digest": legacy}, "insecure": true}))
        .await;

    let m = wait_status(&models, "by-tag", "ready", is_ready).await;
    let status = m.status.clone().unwrap();
    let resolved = status.resolved.unwrap();
    assert_eq!(resolved.digest, legacy);
    assert_eq!(resolved.revision, format!("1.0.0@{legacy}"));
    assert_eq!(status.reference.as_deref(), Some("tag 1.0.0"));
    let artifact = status.artifact.unwrap();
    assert_eq!(serde_json::to_value(artifact.family).unwrap(), json!("cnai"));
    assert_eq!(artifact.layers, 2);
    assert!(artifact.modelfile.is_some_and(|f| f.contains("ARCH transformer")), "modctl provenance");
    assert_eq!(kstatus::of(&m), KStatus::Current);

    let m = wait_status(&models, "by-semver", "ready", is_ready).await;
    let status = m.status.unwrap();
    assert_eq!(status.resolved.as_ref().unwrap().digest, newer);
    assert_eq!(status.resolved.unwrap().tag.as_deref(), Some("1.2.0"));
    assert_eq!(status.artifact.unwrap().descriptor.name.as_deref(), Some("resolve"));

    let m = wait_status(&models, "by-digest", "ready", is_ready).await;
    let resolved = m.status.unwrap().resolved.unwrap();
    assert_eq!((resolved.digest.as_str(), resolved.tag.as_deref()), (legacy.as_str(), None));
}

#[tokio::test]
async fn promotion_by_tag_edit_and_a_moved_tag_are_followed() {
    let bed = Bed::get();
    let (_client, _ns, models, _op) = setup("model-promote").await;
    let repo = format!("ctl/promote-{}", unique_suffix());
    let (a, b, c) = (sample(3), sample(4), sample(5));
    let v1 = oras_push_cncf(bed, &bed.plain, &repo, "v1", &a, &cncf_config("a", &a));
    let v2 = oras_push_cncf(bed, &bed.plain, &repo, "v2", &b, &cncf_config("b", &b));
    let spec = |tag: &str| json!({"repository": repo_of(&bed.plain, &repo), "ref": {"tag": tag}, "insecure": true, "interval": "10s"});

    apply_model(&models, "m", spec("v1")).await;
    wait_status(&models, "m", "v1 resolved", |s| s.resolved.as_ref().is_some_and(|r| r.digest == v1)).await;

    apply_model(&models, "m", spec("v2")).await;
    let m = wait_status(&models, "m", "v2 resolved", |s| s.resolved.as_ref().is_some_and(|r| r.digest == v2)).await;
    let history = m.status.unwrap().history;
    assert_eq!(history.first().map(|h| (h.digest.as_str(), h.tag.as_deref())), Some((v1.as_str(), Some("v1"))));

    // Moving the tag in the registry is picked up within one interval.
    let v3 = oras_push_cncf(bed, &bed.plain, &repo, "v2", &c, &cncf_config("c", &c));
    let started = std::time::Instant::now();
    let m =
        wait_status(&models, "m", "moved tag picked up", |s| s.resolved.as_ref().is_some_and(|r| r.digest == v3)).await;
    assert!(started.elapsed() < Duration::from_secs(25), "took {:?} for a 10s interval", started.elapsed());
    let history: Vec<String> = m.status.unwrap().history.into_iter().map(|h| h.digest).collect();
    assert_eq!(history, [v2, v1], "newest first");
}

#[tokio::test]
async fn credentials_from_a_secret_and_a_service_account_and_a_ca_from_a_secret() {
    let bed = Bed::get();
    let (client, ns, models, _op) = setup("model-auth").await;
    let repo = format!("ctl/auth-{}", unique_suffix());
    let m = sample(6);
    let digest = oras_push_cncf(bed, &bed.auth, &repo, "v1", &m, &cncf_config("auth", &m));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let (_, password) = bed.auth.basic_auth.clone().unwrap();

    // A missing Secret is reported, and its creation triggers a reconcile long before the interval.
    let spec = json!({"repository": repo_of(&bed.auth, &repo), "ref": {"tag": "v1"}, "insecure": true, "secretRef": {"name": "creds"}});
    apply_model(&models, "via-secret", spec).await;
    let m = wait_status(&models, "via-secret", "SecretNotFound", reason_is("SecretNotFound")).await;
    assert!(find(&m.status.unwrap().conditions, READY).unwrap().message.contains("creds"));
    secrets.create(&PostParams::default(), &docker_config_secret("creds", &bed.auth, "wrong")).await.unwrap();
    let m = wait_status(&models, "via-secret", "AuthenticationFailed", reason_is("AuthenticationFailed")).await;
    let message = find(&m.status.unwrap().conditions, READY).unwrap().message.clone();
    assert!(message.contains(&format!("secret {ns}/creds")), "names the Secret: {message}");
    assert!(!message.contains("wrong"), "never its contents: {message}");
    secrets
        .replace("creds", &PostParams::default(), &docker_config_secret("creds", &bed.auth, &password))
        .await
        .unwrap();
    let m = wait_status(&models, "via-secret", "recovered", is_ready).await;
    assert_eq!(m.status.unwrap().resolved.unwrap().digest, digest);

    // The bearer-token flow (a token service behind the registry's 401 challenge).
    let token_repo = format!("ctl/token-{}", unique_suffix());
    let token_digest = oras_push_cncf(bed, &bed.token, &token_repo, "v1", &sample(10), &cncf_config("t", &sample(10)));
    secrets.create(&PostParams::default(), &docker_config_secret("token-creds", &bed.token, &password)).await.unwrap();
    let spec = json!({"repository": repo_of(&bed.token, &token_repo), "ref": {"tag": "v1"}, "insecure": true, "secretRef": {"name": "token-creds"}});
    apply_model(&models, "via-token", spec).await;
    let m = wait_status(&models, "via-token", "ready", is_ready).await;
    assert_eq!(m.status.unwrap().resolved.unwrap().digest, token_digest);

    // A ServiceAccount's imagePullSecrets.
    secrets.create(&PostParams::default(), &docker_config_secret("pull", &bed.auth, &password)).await.unwrap();
    let sa: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "puller"}, "imagePullSecrets": [{"name": "pull"}]}))
            .unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), &ns).create(&PostParams::default(), &sa).await.unwrap();
    let spec = json!({"repository": repo_of(&bed.auth, &repo), "ref": {"tag": "v1"}, "insecure": true, "serviceAccountName": "puller"});
    apply_model(&models, "via-sa", spec).await;
    let m = wait_status(&models, "via-sa", "ready", is_ready).await;
    assert_eq!(m.status.unwrap().resolved.unwrap().digest, digest);

    // The TLS registry with its CA from a Secret.
    let tls_repo = format!("ctl/tls-{}", unique_suffix());
    let tls_digest = oras_push_cncf(bed, &bed.tls, &tls_repo, "v1", &sample(7), &cncf_config("tls", &sample(7)));
    let ca = std::fs::read_to_string(bed.tls.tls_ca.as_ref().unwrap()).unwrap();
    let ca_secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "registry-ca"}, "stringData": {"ca.crt": ca}})).unwrap();
    secrets.create(&PostParams::default(), &ca_secret).await.unwrap();
    let spec = json!({"repository": repo_of(&bed.tls, &tls_repo), "ref": {"tag": "v1"}, "caSecretRef": {"name": "registry-ca"}});
    apply_model(&models, "via-tls", spec).await;
    let m = wait_status(&models, "via-tls", "ready", is_ready).await;
    assert_eq!(m.status.unwrap().resolved.unwrap().digest, tls_digest);
    let spec = json!({"repository": repo_of(&bed.tls, &tls_repo), "ref": {"tag": "v1"}});
    apply_model(&models, "tls-without-ca", spec).await;
    let m = wait_status(&models, "tls-without-ca", "unavailable", reason_is("RegistryUnavailable")).await;
    let message = find(&m.status.unwrap().conditions, READY).unwrap().message.clone();
    assert!(message.contains("certificate") || message.contains("UnknownIssuer"), "{message}");
}

#[tokio::test]
async fn each_failure_has_its_reason_and_recovery_keeps_the_last_good_digest() {
    let bed = Bed::get();
    let (_client, _ns, models, _op) = setup("model-failures").await;
    let repo = format!("ctl/fail-{}", unique_suffix());
    let m = sample(8);
    let good = oras_push_cncf(bed, &bed.plain, &repo, "v1", &m, &cncf_config("f", &m));
    let repository = repo_of(&bed.plain, &repo);

    apply_model(&models, "missing-tag", json!({"repository": repository, "ref": {"tag": "nope"}, "insecure": true}))
        .await;
    let m = wait_status(&models, "missing-tag", "ArtifactNotFound", reason_is("ArtifactNotFound")).await;
    assert!(find(&m.status.unwrap().conditions, STALLED).is_none(), "not found is retried, not stalled");

    apply_model(&models, "unreachable", json!({"repository": "127.0.0.1:1/x/y", "insecure": true})).await;
    wait_status(&models, "unreachable", "RegistryUnavailable", reason_is("RegistryUnavailable")).await;

    let image_repo = format!("ctl/image-{}", unique_suffix());
    craft::push(&bed.plain, &image_repo, "v1", &craft::container_image()).await;
    let spec = json!({"repository": repo_of(&bed.plain, &image_repo), "ref": {"tag": "v1"}, "insecure": true});
    apply_model(&models, "image", spec).await;
    let m = wait_status(&models, "image", "NotAModelPack", reason_is("NotAModelPack")).await;
    let status = m.status.clone().unwrap();
    let stalled = find(&status.conditions, STALLED).expect("Stalled=True");
    assert!(stalled.message.contains("application/vnd.oci.image.config.v1+json"), "{}", stalled.message);
    assert_eq!(kstatus::of(&m), reason_table::expect("docs/model.md", &["NotAModelPack"]).kstatus);

    apply_model(
        &models,
        "bad-semver",
        json!({"repository": repository, "ref": {"semver": "not a range"}, "insecure": true}),
    )
    .await;
    wait_status(&models, "bad-semver", "InvalidReference", reason_is("InvalidReference")).await;

    // Good, then broken: the last good digest stays; fixed again: Ready and no Stalled.
    let spec = |tag: &str| json!({"repository": repository, "ref": {"tag": tag}, "insecure": true});
    apply_model(&models, "flip", spec("v1")).await;
    wait_status(&models, "flip", "ready", is_ready).await;
    apply_model(&models, "flip", spec("gone")).await;
    let m = wait_status(&models, "flip", "ArtifactNotFound", reason_is("ArtifactNotFound")).await;
    assert_eq!(m.status.unwrap().resolved.unwrap().digest, good, "last good digest kept");
    apply_model(&models, "flip", spec("v1")).await;
    let m = wait_status(&models, "flip", "recovered", is_ready).await;
    let status = m.status.unwrap();
    assert_eq!(status.conditions.len(), 1, "only Ready once recovered: {:?}", status.conditions);
}

#[tokio::test]
async fn no_status_write_while_nothing_changes() {
    let bed = Bed::get();
    let (_client, _ns, models, op) = setup("model-quiet").await;
    let repo = format!("ctl/quiet-{}", unique_suffix());
    let m = sample(9);
    oras_push_cncf(bed, &bed.plain, &repo, "v1", &m, &cncf_config("q", &m));
    let spec =
        json!({"repository": repo_of(&bed.plain, &repo), "ref": {"tag": "v1"}, "insecure": true, "interval": "10s"});
    apply_model(&models, "quiet", spec).await;
    let m = wait_status(&models, "quiet", "ready", is_ready).await;
    let version = m.metadata.resource_version.clone();
    // Two and a half intervals: at least two more reconciles, each finding nothing new.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let after = models.get("quiet").await.unwrap();
    assert_eq!(after.metadata.resource_version, version, "status was rewritten without a change");
    let reconciles = op.metric("modelpack_reconciles_total{controller=\"model\",result=\"success\"}");
    assert!(
        reconciles >= Some(3.0),
        "the operator kept reconciling during the wait ({reconciles:?} reconciles counted)"
    );
}
