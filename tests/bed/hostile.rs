//! A hostile registry (tests/support/hostile.rs) answering an endless body: the controller stalls
//! the Model that points at it while a Model on the bed's registry stays Ready. The CLI's side
//! (one line, bounded time and memory) is tests/hostile_cli.rs, which needs no bed.

use crate::support;

use std::time::Duration;

use kube::api::{Api, Patch, PatchParams};
use modelpack_operator::api::conditions::{ConditionStatus, READY, STALLED, find};
use modelpack_operator::api::{Model, ModelStatus};
use serde_json::{Value, json};
use support::fixtures::{ModelFiles, cncf_config, oras_push_cncf};
use support::hostile::{Endless, Hostile, REPO, TAG};
use support::{Bed, Operator, eventually, install_crds, namespace, unique_suffix};

async fn apply_model(models: &Api<Model>, name: &str, spec: Value) {
    let obj =
        json!({"apiVersion": "modelpack.dev/v1alpha1", "kind": "Model", "metadata": {"name": name}, "spec": spec});
    models.patch(name, &PatchParams::apply("e2e").force(), &Patch::Apply(&obj)).await.unwrap();
}

async fn wait_status(models: &Api<Model>, name: &str, what: &str, check: impl Fn(&ModelStatus) -> bool) -> ModelStatus {
    eventually(&format!("model {name}: {what}"), Duration::from_secs(90), || async {
        let m = models.get(name).await.ok()?;
        let status = m.status?;
        (status.observed_generation == m.metadata.generation && check(&status)).then_some(status)
    })
    .await
}

#[tokio::test]
async fn the_controller_stalls_only_the_models_on_a_hostile_registry() {
    let bed = Bed::get();
    let client = bed.client().await;
    install_crds(&client).await;
    let ns = namespace(&client, "hostile").await;
    let operator = Operator::start(&ns);
    let models: Api<Model> = Api::namespaced(client, &ns);
    let repo = format!("ctl/hostile-good-{}", unique_suffix());
    let m = ModelFiles::new(14, &[("model.safetensors", 40_000), ("config.json", 100)]);
    oras_push_cncf(bed, &bed.plain, &repo, "v1", &m, &cncf_config("good", &m));
    let good = json!({"repository": format!("{}/{repo}", bed.plain.host), "ref": {"tag": "v1"}, "insecure": true});
    apply_model(&models, "good", good).await;

    let tag = json!({"tag": TAG});
    let semver = json!({"semver": "^1"});
    let cases = [
        ("by-tag", Endless::ManifestByTag, tag.clone()),
        ("by-digest", Endless::ManifestByDigest, tag.clone()),
        ("by-semver", Endless::TagList, semver),
        ("token", Endless::Token, tag.clone()),
        ("config", Endless::ConfigBlob, tag),
    ];
    let fronts: Vec<Hostile> = cases.iter().map(|(_, endless, _)| Hostile::start(*endless)).collect();
    for ((name, _, reference), front) in cases.iter().zip(&fronts) {
        let spec = json!({"repository": format!("{}/{REPO}", front.host), "ref": reference, "insecure": true});
        apply_model(&models, name, spec).await;
    }
    for (name, endless, _) in &cases {
        let status = wait_status(&models, name, "ArtifactTooLarge", |s| {
            find(&s.conditions, READY).is_some_and(|c| c.reason == "ArtifactTooLarge")
        })
        .await;
        let stalled = find(&status.conditions, STALLED).expect("Stalled");
        assert!(stalled.message.contains("is larger than the"), "{endless:?}: {}", stalled.message);
    }
    let good = wait_status(&models, "good", "Ready", |s| {
        find(&s.conditions, READY).is_some_and(|c| c.status == ConditionStatus::True)
    })
    .await;
    assert!(good.resolved.is_some());
    let peak = operator.peak_rss();
    eprintln!("operator peak RSS: {} MiB", peak >> 20);
    assert!(peak < 128 << 20, "the controller's peak RSS: {} MiB", peak >> 20);
}
