//! Reading what a digest is: its manifest and ModelPack config, validated.

use super::{Error, Registry, Repository};
use crate::modelpack::contents::{Contents, Weights};
use crate::modelpack::{ConfigWarning, Family, LayerKind, Manifest, ModelConfig, layer};

/// Config blobs are small JSON documents; anything bigger is refused before it is read (by
/// `inspect` and by `pull`).
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// A ModelPack manifest and its config.
#[derive(Clone, Debug)]
pub struct Inspection {
    pub digest: String,
    pub manifest: Manifest,
    /// Length of the manifest's bytes (what a signature's target descriptor states).
    pub manifest_size: usize,
    pub family: Family,
    pub config: ModelConfig,
    /// The config blob as JSON, as written (what a policy's variables are taken from).
    pub config_json: serde_json::Value,
    pub warnings: Vec<ConfigWarning>,
    /// What each layer holds, in manifest order (read by range requests, bounded).
    pub contents: Vec<Contents>,
}

impl Inspection {
    /// Every layer's contents summed with the config's `paramSize` (what a Model's status shows).
    pub fn weights(&self) -> Weights {
        let files = self.manifest.layers.iter().zip(&self.contents).map(|(descriptor, contents)| {
            let weight = layer(descriptor).is_ok_and(|l| l.media_type.kind == LayerKind::Weight);
            (weight, contents)
        });
        let param_size =
            self.config_json.get("config").and_then(|c| c.get("paramSize").or_else(|| c.get("param_size")));
        Weights::sum(files, param_size.and_then(serde_json::Value::as_str))
    }
}

/// Fetches `repo@digest` and its config and checks that it is a ModelPack whose layers all have a
/// known media type and a safe path.
pub async fn inspect(registry: &Registry, repo: &Repository, digest: &str) -> Result<Inspection, Error> {
    let bytes = registry.manifest(repo, digest).await?;
    let manifest = Manifest::parse(&bytes)?;
    let family = manifest.family()?;
    for descriptor in &manifest.layers {
        layer(descriptor)?;
    }
    let config_bytes = registry.small_blob(repo, &manifest.config.digest, MAX_CONFIG_BYTES).await?;
    let (config, warnings) = ModelConfig::parse(&config_bytes)?;
    // It parsed as a config just above, so it is JSON.
    let config_json = serde_json::from_slice(&config_bytes).unwrap_or_default();
    let manifest_size = bytes.len();
    let contents = super::contents::read(registry, repo, &manifest, super::contents::BOUNDS).await;
    Ok(Inspection {
        digest: digest.to_owned(),
        manifest,
        manifest_size,
        family,
        config,
        config_json,
        warnings,
        contents,
    })
}
