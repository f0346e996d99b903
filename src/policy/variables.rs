//! The variables a rule sees: plain JSON as it is in the artifact. The config's three objects are
//! taken from the config blob itself (so fields the typed config does not know, and empty lists,
//! reach the rule as they were written), with the legacy snake_case names of spec ≤ v0.0.6
//! renamed to the current ones so both families have one shape.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::modelpack::contents::{Contents, Weights};
use crate::modelpack::{Descriptor, LayerKind, Manifest, layer};
use crate::registry::{Inspection, Referrer, Registry, Repository};

use super::Error;

/// The names every rule may use, in the order docs/modelpolicy.md "The variables" lists them.
pub const NAMES: [&str; 11] = [
    "repository",
    "digest",
    "tag",
    "descriptor",
    "config",
    "modelfs",
    "annotations",
    "layers",
    "referrers",
    "weights",
    "verified",
];

/// Most list entries (layers, referrers) handed to a rule: with the nesting bound of
/// [`super::MAX_COMPREHENSION_DEPTH`] this caps the iterations one evaluation can make.
pub const MAX_LIST_ENTRIES: usize = 1024;

/// Legacy (spec ≤ v0.0.6) names and their current ones, per object of the config.
const DESCRIPTOR_RENAMES: [(&str, &str); 4] =
    [("created_at", "createdAt"), ("doc_url", "docURL"), ("source_url", "sourceURL"), ("datasets_url", "datasetsURL")];
const CONFIG_RENAMES: [(&str, &str); 1] = [("param_size", "paramSize")];
const CAPABILITY_RENAMES: [(&str, &str); 4] = [
    ("input_types", "inputTypes"),
    ("output_types", "outputTypes"),
    ("knowledge_cutoff", "knowledgeCutoff"),
    ("tool_usage", "toolUsage"),
];
const MODELFS_RENAMES: [(&str, &str); 1] = [("diff_ids", "diffIds")];

/// Everything a rule can read about one digest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Variables {
    pub repository: String,
    pub digest: String,
    /// Empty when the Model was resolved by digest.
    pub tag: String,
    pub descriptor: Value,
    pub config: Value,
    pub modelfs: Value,
    pub annotations: BTreeMap<String, String>,
    pub layers: Vec<LayerVar>,
    pub referrers: Vec<ReferrerVar>,
    /// Every layer's `contents` summed.
    pub weights: Weights,
    /// The signature that verified this digest (the Model's `spec.verify`); empty strings and 0
    /// when it was not verified, so a rule reads `verified.provider == "modelSigning"` plainly.
    pub verified: VerifiedVar,
}

/// Who signed the digest, as the verification step found it (`status.verified`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifiedVar {
    /// `notation`, `cosign` or `modelSigning`; empty when not verified.
    pub provider: String,
    /// The signer: a certificate subject, a key's name, or `subject (issuer)` for keyless.
    pub identity: String,
    /// The signature manifest (referrer) that verified.
    pub signature: String,
    /// modelSigning: how many files the signature binds; else 0.
    pub files: i64,
    /// `sha256:<hex>` of the key or certificate the trust rests on (see `status.verified.anchor`):
    /// a Model's trust Secret is its author's, so a rule that requires a signer pins this too.
    pub anchor: String,
}

impl VerifiedVar {
    /// What a verification that passed says; empty for one only at the audit level (logged, not
    /// enforced: nothing a rule may rely on).
    pub fn of(v: &crate::verify::Verification) -> VerifiedVar {
        if !v.enforced {
            return VerifiedVar::default();
        }
        VerifiedVar {
            provider: v.provider.to_owned(),
            identity: v.identity.clone(),
            signature: v.signature_digest.clone(),
            files: v.files.map_or(0, |n| n as i64),
            anchor: v.anchor.clone().unwrap_or_default(),
        }
    }
}

/// One layer as a rule sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerVar {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    /// The file's path in the model (from either family's filepath annotation or the OCI title),
    /// normalised; an archive layer announcing a directory ends with `/`. Every file the node
    /// publishes from the layer is this path, or beneath it when it ends with `/`.
    pub path: String,
    pub annotations: BTreeMap<String, String>,
    /// What the file holds, read from its headers by range requests (`unread` with the reason for
    /// an archive layer or a file over the bounds).
    pub contents: Contents,
    /// A weight layer (its media type says so): what `weights.formats` and `weights.unread` count.
    #[serde(skip)]
    pub weight: bool,
}

/// One manifest attached to the digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReferrerVar {
    /// The referrer's artifact type; empty when the index entry states none.
    pub artifact_type: String,
    pub digest: String,
    pub annotations: BTreeMap<String, String>,
}

impl ReferrerVar {
    pub fn from_referrer(r: &Referrer) -> ReferrerVar {
        ReferrerVar {
            artifact_type: r.artifact_type.clone().unwrap_or_default(),
            digest: r.digest.clone(),
            annotations: r.annotations.clone(),
        }
    }
}

/// Where the variables come from: the resolved digest, its manifest, its config blob, and what
/// refers to it.
pub struct Source<'a> {
    pub repository: String,
    pub digest: &'a str,
    pub tag: Option<&'a str>,
    pub manifest: &'a Manifest,
    pub config_json: &'a Value,
    pub referrers: &'a [Referrer],
}

/// A digest's inspection, its referrers (first page), and the variables made of them.
pub struct Collected {
    pub inspection: Inspection,
    pub referrers: Vec<Referrer>,
    pub variables: Variables,
}

/// Reads what the rules need about `repo@digest` (found under `tag`, if any) from its registry.
pub async fn collect(
    registry: &Registry,
    repo: &Repository,
    digest: &str,
    tag: Option<&str>,
) -> Result<Collected, Error> {
    let inspection = crate::registry::inspect(registry, repo, digest).await?;
    let referrers = registry.referrers(repo, digest).await?;
    let variables = Variables::of(repo, &inspection, tag, &referrers)?;
    Ok(Collected { inspection, referrers, variables })
}

impl Variables {
    /// The variables of an inspected digest.
    pub fn of(
        repo: &Repository,
        inspection: &Inspection,
        tag: Option<&str>,
        referrers: &[Referrer],
    ) -> Result<Variables, Error> {
        let variables = Variables::new(&Source {
            repository: repo.to_string(),
            digest: &inspection.digest,
            tag,
            manifest: &inspection.manifest,
            config_json: &inspection.config_json,
            referrers,
        })?;
        Ok(variables.with_contents(&inspection.contents))
    }

    /// The variables with each layer's contents (in manifest order) and their sum.
    pub fn with_contents(mut self, contents: &[Contents]) -> Variables {
        for (layer, c) in self.layers.iter_mut().zip(contents) {
            layer.contents = c.clone();
        }
        self.weights = weights(&self.layers, &self.config);
        self
    }

    pub fn new(source: &Source<'_>) -> Result<Variables, Error> {
        if source.manifest.layers.len() > MAX_LIST_ENTRIES {
            return Err(Error::TooManyEntries { what: "layers", count: source.manifest.layers.len() });
        }
        let layers: Vec<LayerVar> = source.manifest.layers.iter().map(layer_var).collect::<Result<_, _>>()?;
        let object = |key: &str| source.config_json.get(key).cloned().unwrap_or_else(|| Value::Object(Map::new()));
        let mut descriptor = object("descriptor");
        let mut config = object("config");
        let mut modelfs = object("modelfs");
        rename(&mut descriptor, &DESCRIPTOR_RENAMES);
        rename(&mut config, &CONFIG_RENAMES);
        if let Some(capabilities) = config.get_mut("capabilities") {
            rename(capabilities, &CAPABILITY_RENAMES);
        }
        rename(&mut modelfs, &MODELFS_RENAMES);
        let weights = weights(&layers, &config);
        Ok(Variables {
            weights,
            verified: VerifiedVar::default(),
            repository: source.repository.clone(),
            digest: source.digest.to_owned(),
            tag: source.tag.unwrap_or_default().to_owned(),
            descriptor,
            config,
            modelfs,
            annotations: source.manifest.annotations.clone(),
            layers,
            // Only the first page of referrers is read; past the cap a rule sees the first ones.
            referrers: source.referrers.iter().take(MAX_LIST_ENTRIES).map(ReferrerVar::from_referrer).collect(),
        })
    }

    /// The variables as one JSON object keyed by [`NAMES`] (what `celeval` and the tests read).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

fn layer_var(descriptor: &Descriptor) -> Result<LayerVar, Error> {
    let parsed = layer(descriptor)?;
    Ok(LayerVar {
        media_type: descriptor.media_type.clone(),
        digest: descriptor.digest.clone(),
        size: descriptor.size,
        path: parsed.announced(),
        annotations: descriptor.annotations.clone(),
        contents: Contents::unread("not read"),
        weight: parsed.media_type.kind == LayerKind::Weight,
    })
}

fn weights(layers: &[LayerVar], config: &Value) -> Weights {
    let param_size = config.get("paramSize").and_then(Value::as_str);
    Weights::sum(layers.iter().map(|l| (l.weight, &l.contents)), param_size)
}

/// Renames legacy keys to current ones; where both are written the current one wins.
fn rename(value: &mut Value, renames: &[(&str, &str)]) {
    let Some(map) = value.as_object_mut() else { return };
    for (legacy, current) in renames {
        if let Some(v) = map.remove(*legacy) {
            map.entry(*current).or_insert(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest(layers: Value) -> Manifest {
        serde_json::from_value(json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.cnai.model.config.v1+json", "digest": "sha256:c", "size": 2},
            "layers": layers,
        }))
        .unwrap()
    }

    fn vars(manifest: &Manifest, config: Value) -> Variables {
        let source = Source {
            repository: "r.example/m".into(),
            digest: "sha256:d",
            tag: None,
            manifest,
            config_json: &config,
            referrers: &[],
        };
        Variables::new(&source).unwrap()
    }

    #[test]
    fn legacy_names_become_current_ones_and_unknown_fields_stay() {
        let m = manifest(json!([]));
        let v = vars(
            &m,
            json!({"descriptor": {"created_at": "2024-01-01T00:00:00Z", "licenses": [], "x": 1},
                   "config": {"param_size": "1B", "capabilities": {"tool_usage": true, "input_types": ["text"]}},
                   "modelfs": {"type": "layers", "diff_ids": ["sha256:a"], "diffIds": ["sha256:b"]}}),
        );
        assert_eq!(v.descriptor, json!({"createdAt": "2024-01-01T00:00:00Z", "licenses": [], "x": 1}));
        assert_eq!(v.config, json!({"paramSize": "1B", "capabilities": {"toolUsage": true, "inputTypes": ["text"]}}));
        assert_eq!(v.modelfs, json!({"type": "layers", "diffIds": ["sha256:b"]}), "the current name wins");
        assert_eq!(v.tag, "");
    }

    #[test]
    fn absent_objects_maps_and_lists_are_empty() {
        let m = manifest(json!([{"mediaType": "application/vnd.cncf.model.weight.v1.raw", "digest": "sha256:l",
            "size": 7, "annotations": {"org.cnai.model.filepath": "w/model.bin"}}]));
        let json = vars(&m, json!({})).to_json();
        assert_eq!(json["descriptor"], json!({}));
        assert_eq!(json["modelfs"], json!({}));
        assert_eq!(json["annotations"], json!({}));
        assert_eq!(json["referrers"], json!([]));
        assert_eq!(json["layers"][0]["path"], "w/model.bin");
        assert_eq!(json["layers"][0]["size"], 7);
        let mut names: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        names.sort();
        let mut expected = NAMES.map(String::from).to_vec();
        expected.sort();
        assert_eq!(names, expected);
    }

    /// What a rule sees as an archive layer's path is what the node publishes from it: a
    /// directory ends with `/` (whichever way it was announced), a file does not.
    #[test]
    fn an_archive_of_a_directory_shows_as_a_directory() {
        let layer = |media: &str, annotations: Value| {
            json!({"mediaType": format!("application/vnd.cncf.model.{media}"), "digest": "sha256:l", "size": 1,
                "annotations": annotations})
        };
        let m = manifest(json!([
            layer("weight.v1.tar", json!({"org.cncf.model.filepath": "model.safetensors"})),
            layer("weight.v1.tar", json!({"org.cncf.model.filepath": "./w/model.safetensors"})),
            layer("doc.v1.tar+gzip", json!({"org.cncf.model.filepath": "docs/"})),
            layer(
                "code.v1.tar",
                json!({"org.cnai.model.filepath": "src",
                "org.cnai.model.file.metadata+json": "{\"typeflag\":5}"})
            ),
            layer(
                "dataset.v1.tar+zstd",
                json!({"org.opencontainers.image.title": "data",
                "io.deis.oras.content.unpack": "true"})
            ),
            layer("weight.v1.raw", json!({"org.cncf.model.filepath": "raw.bin/"})),
            layer(
                "weight.v1.tar",
                json!({"org.cncf.model.filepath": "meta.bin",
                "org.cncf.model.file.metadata+json": "{\"typeflag\":48}"})
            ),
        ]));
        let paths: Vec<String> = vars(&m, json!({})).layers.into_iter().map(|l| l.path).collect();
        assert_eq!(
            paths,
            ["model.safetensors", "w/model.safetensors", "docs/", "src/", "data/", "raw.bin", "meta.bin"]
        );
    }

    #[test]
    fn too_many_layers_is_an_error() {
        let one = json!({"mediaType": "application/vnd.cncf.model.doc.v1.raw", "digest": "sha256:l", "size": 1,
            "annotations": {"org.cncf.model.filepath": "a"}});
        let m = manifest(Value::Array(vec![one; MAX_LIST_ENTRIES + 1]));
        let source = Source {
            repository: "r/m".into(),
            digest: "d",
            tag: None,
            manifest: &m,
            config_json: &json!({}),
            referrers: &[],
        };
        assert!(matches!(Variables::new(&source), Err(Error::TooManyEntries { what: "layers", .. })));
    }
}
