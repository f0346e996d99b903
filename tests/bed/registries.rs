//! The bed's four registries take ModelPacks from the real peer tools, and what is read back (digest,
//! manifest, blobs) is exactly what the tool pushed; the fixtures are recognised by our ModelPack
//! parser in the family each tool writes.

use crate::support;

use std::collections::BTreeMap;

use modelpack_operator::modelpack::{Family, LayerFormat, Manifest, layer};
use support::fixtures::{ModelFiles, cncf_config, modctl_push, oras_push_cncf};
use support::{Bed, Registry, craft, unique_suffix};

fn sample(seed: u64) -> ModelFiles {
    ModelFiles::new(
        seed,
        &[("model.safetensors", 300_000), ("config.json", 700), ("tokenizer/tokenizer.json", 1_500), ("README.md", 90)],
    )
}

/// Reads the pushed artifact back by digest and checks every file against what was packed.
async fn check_round_trip(registry: &Registry, repo: &str, tag: &str, digest: &str, model: &ModelFiles) -> Manifest {
    assert_eq!(craft::manifest_digest(registry, repo, tag).await, digest, "{}: digest read back", registry.host);
    let bytes = craft::manifest_bytes(registry, repo, digest).await;
    assert_eq!(craft::sha256(&bytes), digest);
    let manifest = Manifest::parse(&bytes).unwrap();
    let mut by_path = BTreeMap::new();
    for descriptor in &manifest.layers {
        let l = layer(descriptor).unwrap();
        assert_eq!(l.format(), LayerFormat::Raw, "peer tools write raw layers by default");
        by_path.insert(l.path.as_str().to_owned(), descriptor.digest.clone());
    }
    assert_eq!(by_path.len(), model.files.len(), "one layer per file: {by_path:?}");
    for (path, data) in &model.files {
        let digest = by_path.get(path).unwrap_or_else(|| panic!("{path} missing from {by_path:?}"));
        assert_eq!(&craft::blob(registry, repo, digest).await, data, "{path} byte-exact");
    }
    manifest
}

#[tokio::test]
async fn modctl_pushes_legacy_cnai_modelpacks_to_every_registry() {
    let bed = Bed::get();
    let model = sample(1);
    for registry in bed.registries() {
        let repo = format!("fixtures/modctl-{}", unique_suffix());
        let digest = modctl_push(bed, registry, &repo, "v1", &model);
        let manifest = check_round_trip(registry, &repo, "v1", &digest, &model).await;
        assert_eq!(manifest.family().unwrap(), Family::Cnai, "modctl v0.2.2 writes the legacy family");
        assert!(manifest.modelfile().is_some_and(|m| m.contains("transformer")), "modctl records the Modelfile");
    }
}

#[tokio::test]
async fn oras_pushes_cncf_modelpacks_to_every_registry() {
    let bed = Bed::get();
    let model = sample(2);
    let config = cncf_config("oras-sample", &model);
    for registry in bed.registries() {
        let repo = format!("fixtures/oras-{}", unique_suffix());
        let digest = oras_push_cncf(bed, registry, &repo, "v1", &model, &config);
        let manifest = check_round_trip(registry, &repo, "v1", &digest, &model).await;
        assert_eq!(manifest.family().unwrap(), Family::Cncf);
        assert_eq!(manifest.artifact_type.as_deref(), Some("application/vnd.cncf.model.manifest.v1+json"));
        let config_bytes = craft::blob(registry, &repo, &manifest.config.digest).await;
        assert_eq!(modelpack_operator::modelpack::lint(&manifest, &config_bytes), vec![], "a clean cncf fixture");
    }
}

#[tokio::test]
async fn crafted_artifacts_are_pushed_byte_for_byte() {
    let bed = Bed::get();
    let evil = craft::Artifact {
        artifact_type: Some("application/vnd.cncf.model.manifest.v1+json".into()),
        config: craft::Blob::new("application/vnd.cncf.model.config.v1+json", b"{}".to_vec()),
        layers: vec![
            craft::Blob::new("application/vnd.cncf.model.weight.v1.raw", b"owned".to_vec())
                .annotate("org.cncf.model.filepath", "../../etc/cron.d/x"),
        ],
        annotations: BTreeMap::new(),
    };
    for registry in [&bed.plain, &bed.referrers] {
        let repo = format!("fixtures/crafted-{}", unique_suffix());
        let digest = craft::push(registry, &repo, "evil", &evil).await;
        let bytes = craft::manifest_bytes(registry, &repo, &digest).await;
        let manifest = Manifest::parse(&bytes).unwrap();
        let err = layer(&manifest.layers[0]).unwrap_err().to_string();
        assert!(err.contains("../../etc/cron.d/x"), "{err}");
    }
}
