//! OCI manifests as ModelPack artifacts use them: parsed leniently, then identified.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::Error;
use super::media_types::{Family, LayerFormat, LayerMediaType, OCI_INDEX};
use super::path::ModelPath;

/// An OCI content descriptor.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Descriptor {
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

/// An OCI image manifest; unknown fields are ignored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    #[serde(default)]
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// Manifest annotation in which modctl stores the whole Modelfile (provenance).
const MODELFILE_ANNOTATION: &str = "modctl.modelfile";
/// Layer annotation naming the file's path inside the model.
const FILEPATH_ANNOTATION: &str = "model.filepath";
const OCI_TITLE_ANNOTATION: &str = "org.opencontainers.image.title";
/// Layer annotation holding the packed file's tar metadata (`typeflag` 5 or `'5'`: a directory).
const FILE_METADATA_ANNOTATION: &str = "model.file.metadata+json";
/// What `oras push` sets on the tar+gzip layer it makes of a directory.
const ORAS_UNPACK_ANNOTATION: &str = "io.deis.oras.content.unpack";

impl Manifest {
    pub fn parse(bytes: &[u8]) -> Result<Manifest, Error> {
        let manifest: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            // An index is a common mistake (a multi-arch image, not a model): say so plainly.
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(v) if v.get("mediaType").and_then(|m| m.as_str()) == Some(OCI_INDEX) => {
                    Error::NotAModelPack { found: format!("an image index ({OCI_INDEX})") }
                }
                _ => Error::InvalidManifest(e.to_string()),
            }
        })?;
        if manifest.schema_version != 2 {
            return Err(Error::InvalidManifest(format!("schemaVersion is {}, expected 2", manifest.schema_version)));
        }
        Ok(manifest)
    }

    /// The family of a ModelPack manifest, recognised by `artifactType` or, because some producers
    /// omit it, by the config media type; anything else is not a ModelPack.
    pub fn family(&self) -> Result<Family, Error> {
        if let Some(family) = self.artifact_type.as_deref().and_then(Family::from_artifact_type) {
            return Ok(family);
        }
        if let Some(family) = Family::from_config_media_type(&self.config.media_type) {
            return Ok(family);
        }
        let found = match &self.artifact_type {
            Some(at) if !at.is_empty() => format!("artifactType {at:?}"),
            _ => format!("config media type {:?}", self.config.media_type),
        };
        Err(Error::NotAModelPack { found })
    }

    /// modctl's Modelfile provenance annotation, in either family.
    pub fn modelfile(&self) -> Option<&str> {
        Family::ALL
            .into_iter()
            .find_map(|f| self.annotations.get(&f.annotation(MODELFILE_ANNOTATION)))
            .map(String::as_str)
    }

    /// The artifact's size as its descriptors say; saturating, as a registry may send any sizes.
    pub fn total_size(&self) -> i64 {
        self.layers.iter().fold(self.config.size, |sum, l| sum.saturating_add(l.size))
    }
}

/// A layer as the cache will materialise it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer<'a> {
    pub descriptor: &'a Descriptor,
    pub media_type: LayerMediaType,
    /// Where a single-file layer is written, or what an archive layer holds: that one regular
    /// file, or, when [`Layer::directory`], that directory and entries beneath it.
    pub path: ModelPath,
    /// An archive layer announcing a directory: its path annotation ends with `/`, its file
    /// metadata says typeflag 5, or `oras` marked it for unpacking. Always false for single files.
    pub directory: bool,
}

impl Layer<'_> {
    pub fn format(&self) -> LayerFormat {
        self.media_type.format
    }

    /// The layer's path as policies and `inspect` show it: a directory ends with `/`, so a rule
    /// on the name (`endsWith(".safetensors")`) cannot be passed by a directory of other files.
    pub fn announced(&self) -> String {
        if self.directory { format!("{}/", self.path) } else { self.path.to_string() }
    }
}

/// Resolves a layer's media type and path. The path comes from `org.cncf.model.filepath` (or the
/// legacy `org.cnai.` key), falling back to `org.opencontainers.image.title`.
pub fn layer(descriptor: &Descriptor) -> Result<Layer<'_>, Error> {
    let media_type = LayerMediaType::parse(&descriptor.media_type).ok_or_else(|| Error::UnknownLayer {
        digest: descriptor.digest.clone(),
        media_type: descriptor.media_type.clone(),
    })?;
    let raw = layer_path_annotation(descriptor)
        .ok_or_else(|| Error::MissingFilePath { digest: descriptor.digest.clone() })?;
    let path =
        ModelPath::parse(raw).map_err(|source| Error::UnsafePath { digest: descriptor.digest.clone(), source })?;
    let directory = !media_type.format.is_single_file() && announces_directory(descriptor, raw);
    Ok(Layer { descriptor, media_type, path, directory })
}

fn announces_directory(descriptor: &Descriptor, raw_path: &str) -> bool {
    #[derive(Deserialize)]
    struct Metadata {
        typeflag: serde_json::Value,
    }
    let typeflag_dir = Family::ALL
        .into_iter()
        .find_map(|f| descriptor.annotation(&f.annotation(FILE_METADATA_ANNOTATION)))
        .and_then(|text| serde_json::from_str::<Metadata>(text).ok())
        .is_some_and(|m| match m.typeflag {
            // Go's `byte` 5 (modctl), the tar header byte '5', or that character.
            serde_json::Value::Number(n) => matches!(n.as_u64(), Some(5 | 53)),
            serde_json::Value::String(s) => s == "5",
            _ => false,
        });
    raw_path.ends_with('/') || typeflag_dir || descriptor.annotation(ORAS_UNPACK_ANNOTATION) == Some("true")
}

fn layer_path_annotation(descriptor: &Descriptor) -> Option<&str> {
    Family::ALL
        .into_iter()
        .find_map(|f| descriptor.annotation(&f.annotation(FILEPATH_ANNOTATION)))
        .or_else(|| descriptor.annotation(OCI_TITLE_ANNOTATION))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modelpack::media_types::LayerKind;

    // The example manifest of the ModelPack specification (model-spec's docs/spec.md), digests shortened to valid
    // lengths.
    const SPEC_EXAMPLE: &str = r#"{
      "schemaVersion": 2,
      "mediaType": "application/vnd.oci.image.manifest.v1+json",
      "artifactType": "application/vnd.cncf.model.manifest.v1+json",
      "config": {
        "mediaType": "application/vnd.cncf.model.config.v1+json",
        "digest": "sha256:d5815835051dd97d800a03f641ed8162877920e734d3d705b698912602b8c763",
        "size": 301
      },
      "layers": [
        {
          "mediaType": "application/vnd.cncf.model.weight.v1.tar",
          "digest": "sha256:3f907c1a03bf20f20355fe449e18ff3f9de2e49570ffb536f1a32f20c7179808",
          "size": 30327160,
          "annotations": {"org.cncf.model.filepath": "model.safetensors"}
        },
        {
          "mediaType": "application/vnd.cncf.model.weight.config.v1.tar",
          "digest": "sha256:a5378e569c625f7643952fcab30c74f2a84ece52335c292e630f740ac4694146",
          "size": 106,
          "annotations": {"org.cncf.model.filepath": "config.json"}
        },
        {
          "mediaType": "application/vnd.cncf.model.doc.v1.tar",
          "digest": "sha256:5e236ec37438b02c01c83d134203a646cb354766ac294e533a308dd8caa3a11e",
          "size": 23040,
          "annotations": {"org.cncf.model.filepath": "README.md"}
        }
      ]
    }"#;

    #[test]
    fn spec_example_is_a_cncf_modelpack() {
        let m = Manifest::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(m.family().unwrap(), Family::Cncf);
        assert_eq!(m.layers.len(), 3);
        assert_eq!(m.total_size(), 301 + 30327160 + 106 + 23040);
        let first = layer(&m.layers[0]).unwrap();
        assert_eq!(first.path.as_str(), "model.safetensors");
        assert_eq!(first.media_type.kind, LayerKind::Weight);
        assert_eq!(first.format(), LayerFormat::Tar);
        assert_eq!(layer(&m.layers[1]).unwrap().media_type.kind, LayerKind::WeightConfig);
    }

    #[test]
    fn legacy_family_and_missing_artifact_type() {
        let legacy = SPEC_EXAMPLE.replace("vnd.cncf", "vnd.cnai").replace("org.cncf", "org.cnai");
        let m = Manifest::parse(legacy.as_bytes()).unwrap();
        assert_eq!(m.family().unwrap(), Family::Cnai);
        assert_eq!(layer(&m.layers[2]).unwrap().path.as_str(), "README.md");

        let mut no_artifact_type = Manifest::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        no_artifact_type.artifact_type = None;
        assert_eq!(no_artifact_type.family().unwrap(), Family::Cncf);
    }

    #[test]
    fn an_image_is_not_a_modelpack_and_says_what_it_is() {
        let mut m = Manifest::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        m.artifact_type = None;
        m.config.media_type = "application/vnd.oci.image.config.v1+json".into();
        let err = m.family().unwrap_err().to_string();
        assert!(err.contains("application/vnd.oci.image.config.v1+json"), "{err}");

        let index = r#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[]}"#;
        let err = Manifest::parse(index.as_bytes()).unwrap_err();
        assert!(matches!(err, Error::NotAModelPack { .. }), "{err:?}");
        assert!(err.to_string().contains("image index"));
    }

    #[test]
    fn malformed_manifests_are_errors_not_panics() {
        for bad in ["", "{}", "[]", r#"{"schemaVersion":1,"config":{"mediaType":"x","digest":"d","size":1}}"#, "\u{0}"]
        {
            assert!(Manifest::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn layer_paths_fall_back_to_title_and_reject_traversal() {
        let mut d = Descriptor {
            media_type: "application/vnd.cncf.model.weight.v1.raw".into(),
            digest: "sha256:00".into(),
            size: 1,
            ..Default::default()
        };
        assert!(matches!(layer(&d), Err(Error::MissingFilePath { .. })));
        d.annotations.insert(OCI_TITLE_ANNOTATION.into(), "title.bin".into());
        assert_eq!(layer(&d).unwrap().path.as_str(), "title.bin");
        d.annotations.insert("org.cnai.model.filepath".into(), "legacy.bin".into());
        assert_eq!(layer(&d).unwrap().path.as_str(), "legacy.bin");
        d.annotations.insert("org.cncf.model.filepath".into(), "../../etc/passwd".into());
        let err = layer(&d).unwrap_err();
        assert!(matches!(err, Error::UnsafePath { .. }), "{err:?}");
        assert!(err.to_string().contains("../../etc/passwd"), "{err}");
    }

    #[test]
    fn modelfile_provenance_in_either_family() {
        let mut m = Manifest::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(m.modelfile(), None);
        m.annotations.insert("org.cnai.modctl.modelfile".into(), "NAME demo".into());
        assert_eq!(m.modelfile(), Some("NAME demo"));
    }
}
