//! The ModelPack config blob (`application/vnd.cncf.model.config.v1+json`). Parsing is lenient so
//! that every producer in the wild is readable; [`lint`](super::lint) is the strict check.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Error;

/// The whole config document.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelConfig {
    #[serde(default)]
    pub descriptor: ModelDescriptor,
    #[serde(default)]
    pub config: ModelProperties,
    #[serde(default)]
    pub modelfs: ModelFs,
}

/// Who made the model and where it comes from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelDescriptor {
    /// When the model was created (RFC 3339).
    #[serde(default, alias = "created_at", skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// The model's authors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub authors: Vec<String>,
    /// Model family, e.g. llama3 or qwen2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Documentation URL.
    #[serde(default, rename = "docURL", alias = "doc_url", skip_serializing_if = "Option::is_none")]
    pub doc_url: Option<String>,
    /// Source code URL.
    #[serde(default, rename = "sourceURL", alias = "source_url", skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
    /// URLs of the data sets the model was trained on.
    #[serde(default, rename = "datasetsURL", alias = "datasets_url", skip_serializing_if = "Vec::is_empty")]
    pub datasets_url: Vec<String>,
    /// Version of the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Source revision (e.g. a commit) the model was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Who distributes the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    /// Licenses as SPDX expressions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub licenses: Vec<String>,
    /// Human-readable title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Human-readable description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// What the model is: architecture, format, size and capabilities.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelProperties {
    /// Model architecture, e.g. transformer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// File format of the weights, e.g. safetensors, gguf, onnx, pt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Parameter count, e.g. 6.7B.
    #[serde(default, alias = "param_size", skip_serializing_if = "Option::is_none")]
    pub param_size: Option<String>,
    /// Numeric precision, e.g. bfloat16 (comma-separated when mixed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    /// Quantization method, e.g. awq or gptq.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantization: Option<String>,
    /// What the model can take and produce.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
}

/// Model capabilities (modalities, reasoning, tool use).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    /// Input modalities: text, image, audio, video, embedding, other.
    #[serde(default, alias = "input_types", skip_serializing_if = "Vec::is_empty")]
    pub input_types: Vec<String>,
    /// Output modalities: text, image, audio, video, embedding, other.
    #[serde(default, alias = "output_types", skip_serializing_if = "Vec::is_empty")]
    pub output_types: Vec<String>,
    /// Date of the newest training data (RFC 3339).
    #[serde(default, alias = "knowledge_cutoff", skip_serializing_if = "Option::is_none")]
    pub knowledge_cutoff: Option<String>,
    /// Whether the model can reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning: Option<bool>,
    /// Whether the model can call tools.
    #[serde(default, alias = "tool_usage", skip_serializing_if = "Option::is_none")]
    pub tool_usage: Option<bool>,
    /// Whether the model is a reward model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reward: Option<bool>,
    /// Languages the model supports (ISO 639).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub languages: Vec<String>,
}

/// The layer-to-filesystem mapping.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelFs {
    #[serde(default, rename = "type")]
    pub fs_type: String,
    /// Digest of each uncompressed layer; spec ≤ v0.0.6 called it `diff_ids`.
    #[serde(default, alias = "diff_ids")]
    pub diff_ids: Vec<String>,
}

/// Something a lenient parse accepted but a user should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigWarning {
    /// The config is `{}`: nothing describes the model.
    Empty,
}

impl ModelConfig {
    /// Lenient parse: unknown fields are ignored, legacy snake_case names accepted, `{}` tolerated
    /// with a warning.
    pub fn parse(bytes: &[u8]) -> Result<(ModelConfig, Vec<ConfigWarning>), Error> {
        let config: ModelConfig = serde_json::from_slice(bytes).map_err(|e| Error::InvalidConfig(e.to_string()))?;
        let warnings = if config == ModelConfig::default() { vec![ConfigWarning::Empty] } else { vec![] };
        Ok((config, warnings))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The config example of the ModelPack specification (docs/config.md of github.com/modelpack/model-spec).
    const SPEC_EXAMPLE: &str = r#"{
      "descriptor": {
        "createdAt": "2025-01-01T00:00:00Z",
        "authors": ["xyz@xyz.com"],
        "vendor": "XYZ Corp.",
        "family": "xyz3",
        "name": "xyz-3-8B-Instruct",
        "version": "3.1",
        "title": "XYZ 3 8B Instruct",
        "description": "xyz is a large language model.",
        "docURL": "https://www.xyz.com/get-started/",
        "sourceURL": "https://github.com/xyz/xyz3",
        "datasetsURL": ["https://www.xyz.com/datasets/"],
        "revision": "1234567890",
        "licenses": ["Apache-2.0"]
      },
      "config": {
        "architecture": "transformer",
        "format": "safetensors",
        "paramSize": "8b",
        "precision": "float16",
        "quantization": "gptq",
        "capabilities": {
          "inputTypes": ["text"],
          "outputTypes": ["text"],
          "knowledgeCutoff": "2024-05-21T00:00:00Z",
          "reasoning": true,
          "toolUsage": false,
          "reward": false,
          "languages": ["en", "fr"]
        }
      },
      "modelfs": {
        "type": "layers",
        "diffIds": [
          "sha256:1234567890abcdef1234567890abcdef1234567890abcdef1234567890abcdef",
          "sha256:abcdef1234567890abcdef1234567890abcdef1234567890abcdef1234567890"
        ]
      }
    }"#;

    #[test]
    fn spec_example_round_trips_every_field() {
        let (c, warnings) = ModelConfig::parse(SPEC_EXAMPLE.as_bytes()).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(c.descriptor.name.as_deref(), Some("xyz-3-8B-Instruct"));
        assert_eq!(c.descriptor.doc_url.as_deref(), Some("https://www.xyz.com/get-started/"));
        assert_eq!(c.descriptor.datasets_url.len(), 1);
        assert_eq!(c.config.param_size.as_deref(), Some("8b"));
        let caps = c.config.capabilities.as_ref().unwrap();
        assert_eq!(caps.tool_usage, Some(false));
        assert_eq!(caps.languages, ["en", "fr"]);
        assert_eq!(c.modelfs.fs_type, "layers");
        assert_eq!(c.modelfs.diff_ids.len(), 2);
        let again: serde_json::Value = serde_json::to_value(&c).unwrap();
        let original: serde_json::Value = serde_json::from_str(SPEC_EXAMPLE).unwrap();
        assert_eq!(again, original);
    }

    #[test]
    fn legacy_snake_case_names_are_read() {
        let legacy = r#"{"descriptor":{"created_at":"2024-01-01T00:00:00Z"},
            "config":{"param_size":"1B","capabilities":{"input_types":["text"],"tool_usage":true}},
            "modelfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let (c, _) = ModelConfig::parse(legacy.as_bytes()).unwrap();
        assert_eq!(c.modelfs.diff_ids, ["sha256:aa"]);
        assert_eq!(c.config.param_size.as_deref(), Some("1B"));
        assert_eq!(c.descriptor.created_at.as_deref(), Some("2024-01-01T00:00:00Z"));
        let caps = c.config.capabilities.unwrap();
        assert_eq!(caps.input_types, ["text"]);
        assert_eq!(caps.tool_usage, Some(true));
    }

    #[test]
    fn empty_config_is_tolerated_with_a_warning() {
        let (c, warnings) = ModelConfig::parse(b"{}").unwrap();
        assert_eq!(c, ModelConfig::default());
        assert_eq!(warnings, [ConfigWarning::Empty]);
    }

    #[test]
    fn unknown_fields_are_ignored_but_wrong_types_fail() {
        let (c, _) = ModelConfig::parse(br#"{"future":1,"config":{"format":"gguf","x":true}}"#).unwrap();
        assert_eq!(c.config.format.as_deref(), Some("gguf"));
        assert!(matches!(ModelConfig::parse(br#"{"descriptor":{"authors":"me"}}"#), Err(Error::InvalidConfig(_))));
        assert!(ModelConfig::parse(b"not json").is_err());
    }
}
