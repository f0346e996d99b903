//! ModelPack media types. Two families exist in the wild: the current `vnd.cncf` one and the legacy
//! `vnd.cnai` one (spec ≤ v0.0.6, modctl ≤ v0.2.2, Harbor ≤ 2.15); both are read everywhere.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Which media-type family an artifact was written with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// `application/vnd.cncf.model.*` (current specification).
    Cncf,
    /// `application/vnd.cnai.model.*` (legacy, still produced by modctl ≤ v0.2.2 and older Harbor).
    Cnai,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Cncf, Family::Cnai];

    fn vendor(self) -> &'static str {
        match self {
            Family::Cncf => "cncf",
            Family::Cnai => "cnai",
        }
    }

    pub fn manifest_artifact_type(self) -> String {
        format!("application/vnd.{}.model.manifest.v1+json", self.vendor())
    }

    pub fn config_media_type(self) -> String {
        format!("application/vnd.{}.model.config.v1+json", self.vendor())
    }

    /// Annotation key under this family's `org.<vendor>.` prefix, e.g. `model.filepath`.
    pub fn annotation(self, suffix: &str) -> String {
        format!("org.{}.{suffix}", self.vendor())
    }

    pub fn from_artifact_type(media_type: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.manifest_artifact_type() == media_type)
    }

    pub fn from_config_media_type(media_type: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.config_media_type() == media_type)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.vendor())
    }
}

/// What a layer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum LayerKind {
    Weight,
    WeightConfig,
    Doc,
    Code,
    Dataset,
}

impl LayerKind {
    // `weight.config` must be tried before `weight`.
    const ALL: [(LayerKind, &'static str); 5] = [
        (LayerKind::WeightConfig, "weight.config"),
        (LayerKind::Weight, "weight"),
        (LayerKind::Doc, "doc"),
        (LayerKind::Code, "code"),
        (LayerKind::Dataset, "dataset"),
    ];
}

/// How a layer's bytes relate to the files it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerFormat {
    /// The blob is the file itself.
    Raw,
    Tar,
    TarGzip,
    TarZstd,
    /// Docker Model Runner's single-file weights (`weight.v1.gguf`, `weight.v1.safetensors`): like raw.
    SingleFile(&'static str),
}

impl LayerFormat {
    /// True when the blob is one file (written at the annotated path) rather than an archive.
    pub fn is_single_file(self) -> bool {
        matches!(self, LayerFormat::Raw | LayerFormat::SingleFile(_))
    }

    fn parse(suffix: &str, kind: LayerKind) -> Option<LayerFormat> {
        Some(match suffix {
            "raw" => LayerFormat::Raw,
            "tar" => LayerFormat::Tar,
            "tar+gzip" => LayerFormat::TarGzip,
            "tar+zstd" => LayerFormat::TarZstd,
            "gguf" if kind == LayerKind::Weight => LayerFormat::SingleFile("gguf"),
            "safetensors" if kind == LayerKind::Weight => LayerFormat::SingleFile("safetensors"),
            _ => return None,
        })
    }
}

/// A recognised ModelPack layer media type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LayerMediaType {
    pub family: Family,
    pub kind: LayerKind,
    pub format: LayerFormat,
}

impl LayerMediaType {
    /// Parses `application/vnd.<cncf|cnai>.model.<kind>.v1.<format>`; `None` for anything else.
    pub fn parse(media_type: &str) -> Option<LayerMediaType> {
        let rest = media_type.strip_prefix("application/vnd.")?;
        let (family, rest) = if let Some(r) = rest.strip_prefix("cncf.model.") {
            (Family::Cncf, r)
        } else {
            (Family::Cnai, rest.strip_prefix("cnai.model.")?)
        };
        let (kind, format) = LayerKind::ALL.into_iter().find_map(|(kind, name)| {
            let format = rest.strip_prefix(name)?.strip_prefix(".v1.")?;
            Some((kind, format))
        })?;
        Some(LayerMediaType { family, kind, format: LayerFormat::parse(format, kind)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_spec_layer_type_in_both_families() {
        let kinds = [
            ("weight", LayerKind::Weight),
            ("weight.config", LayerKind::WeightConfig),
            ("doc", LayerKind::Doc),
            ("code", LayerKind::Code),
            ("dataset", LayerKind::Dataset),
        ];
        let formats = [
            ("raw", LayerFormat::Raw),
            ("tar", LayerFormat::Tar),
            ("tar+gzip", LayerFormat::TarGzip),
            ("tar+zstd", LayerFormat::TarZstd),
        ];
        let mut seen = 0;
        for family in Family::ALL {
            for (kname, kind) in kinds {
                for (fname, format) in formats {
                    let mt = format!("application/vnd.{family}.model.{kname}.v1.{fname}");
                    assert_eq!(LayerMediaType::parse(&mt), Some(LayerMediaType { family, kind, format }), "{mt}");
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, 40);
    }

    #[test]
    fn accepts_docker_single_file_weights_only_for_weights() {
        let gguf = LayerMediaType::parse("application/vnd.cncf.model.weight.v1.gguf").unwrap();
        assert_eq!(gguf.format, LayerFormat::SingleFile("gguf"));
        assert!(gguf.format.is_single_file());
        assert!(LayerMediaType::parse("application/vnd.cncf.model.weight.v1.safetensors").is_some());
        assert!(LayerMediaType::parse("application/vnd.cncf.model.doc.v1.gguf").is_none());
    }

    #[test]
    fn rejects_foreign_and_malformed_types() {
        for mt in [
            "application/vnd.oci.image.layer.v1.tar",
            "application/vnd.cncf.model.weight.v2.raw",
            "application/vnd.cncf.model.weights.v1.raw",
            "application/vnd.cncf.model.weight.v1.zip",
            "application/vnd.cncf.model.weight.v1.",
            "application/vnd.cnaix.model.weight.v1.raw",
            "",
        ] {
            assert_eq!(LayerMediaType::parse(mt), None, "{mt}");
        }
    }

    #[test]
    fn family_strings() {
        assert_eq!(Family::Cncf.manifest_artifact_type(), "application/vnd.cncf.model.manifest.v1+json");
        assert_eq!(Family::Cnai.config_media_type(), "application/vnd.cnai.model.config.v1+json");
        assert_eq!(Family::from_config_media_type("application/vnd.cnai.model.config.v1+json"), Some(Family::Cnai));
        assert_eq!(Family::Cnai.annotation("model.filepath"), "org.cnai.model.filepath");
    }
}
