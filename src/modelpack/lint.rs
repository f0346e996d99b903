//! Strict checks against the ModelPack specification, for producers and for `inspect --lint`. The
//! operator itself reads leniently; nothing here blocks a deployment.

use std::fmt;

use serde_json::Value;

use super::manifest::{Manifest, layer};

/// One deviation from the specification, located by a JSON-pointer-like path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LintIssue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for LintIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

const DESCRIPTOR_FIELDS: &[&str] = &[
    "createdAt",
    "authors",
    "family",
    "name",
    "docURL",
    "sourceURL",
    "datasetsURL",
    "version",
    "revision",
    "vendor",
    "licenses",
    "title",
    "description",
];
const CONFIG_FIELDS: &[&str] = &["architecture", "format", "paramSize", "precision", "quantization", "capabilities"];
const CAPABILITY_FIELDS: &[&str] =
    &["inputTypes", "outputTypes", "knowledgeCutoff", "reasoning", "toolUsage", "reward", "languages"];
const MODELFS_FIELDS: &[&str] = &["type", "diffIds"];
const MODALITIES: &[&str] = &["text", "image", "audio", "video", "embedding", "other"];

/// Checks a manifest and its config blob strictly: unknown fields (the schema forbids them), field
/// types, timestamps, modalities, digests, one diffId per layer, and every layer's media type and path.
pub fn lint(manifest: &Manifest, config_bytes: &[u8]) -> Vec<LintIssue> {
    let mut issues = Lints::default();
    if let Err(e) = manifest.family() {
        issues.push("manifest", e.to_string());
    } else if manifest.artifact_type.is_none() {
        issues.push("manifest.artifactType", "missing: the specification requires the model artifactType");
    }
    for (i, l) in manifest.layers.iter().enumerate() {
        if let Err(e) = layer(l) {
            issues.push(format!("manifest.layers[{i}]"), e.to_string());
        }
    }
    let config: Value = match serde_json::from_slice(config_bytes) {
        Ok(Value::Object(map)) => Value::Object(map),
        Ok(_) => {
            issues.push("config", "must be a JSON object");
            return issues.0;
        }
        Err(e) => {
            issues.push("config", format!("invalid JSON: {e}"));
            return issues.0;
        }
    };
    issues.object(&config, "config", &["descriptor", "config", "modelfs"]);
    for required in ["descriptor", "config", "modelfs"] {
        if config.get(required).is_none() {
            issues.push(format!("config.{required}"), "required field is missing");
        }
    }
    if let Some(d) = config.get("descriptor") {
        issues.object(d, "config.descriptor", DESCRIPTOR_FIELDS);
        issues.timestamp(d, "config.descriptor", "createdAt");
        for list in ["authors", "datasetsURL", "licenses"] {
            issues.string_list(d, "config.descriptor", list);
        }
    }
    if let Some(c) = config.get("config") {
        issues.object(c, "config.config", CONFIG_FIELDS);
        if let Some(caps) = c.get("capabilities") {
            let at = "config.config.capabilities";
            issues.object(caps, at, CAPABILITY_FIELDS);
            issues.timestamp(caps, at, "knowledgeCutoff");
            for list in ["inputTypes", "outputTypes"] {
                for (i, m) in issues.string_list(caps, at, list).into_iter().enumerate() {
                    if !MODALITIES.contains(&m.as_str()) {
                        issues.push(format!("{at}.{list}[{i}]"), format!("{m:?} is not one of {MODALITIES:?}"));
                    }
                }
            }
        }
    }
    if let Some(fs) = config.get("modelfs") {
        issues.object(fs, "config.modelfs", MODELFS_FIELDS);
        if fs.get("type").and_then(Value::as_str) != Some("layers") {
            issues.push("config.modelfs.type", "must be \"layers\"");
        }
        let diff_ids = issues.string_list(fs, "config.modelfs", "diffIds");
        for (i, d) in diff_ids.iter().enumerate() {
            if super::sha256_hex(d).is_none() {
                issues.push(format!("config.modelfs.diffIds[{i}]"), format!("{d:?} is not a sha256 digest"));
            }
        }
        if diff_ids.len() != manifest.layers.len() {
            issues.push(
                "config.modelfs.diffIds",
                format!("{} entries for {} layers", diff_ids.len(), manifest.layers.len()),
            );
        }
    }
    if let Ok(family) = manifest.family()
        && manifest.config.media_type != family.config_media_type()
    {
        issues.push("manifest.config.mediaType", format!("expected {}", family.config_media_type()));
    }
    issues.0
}

#[derive(Default)]
struct Lints(Vec<LintIssue>);

impl Lints {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(LintIssue { path: path.into(), message: message.into() });
    }

    fn object(&mut self, v: &Value, at: &str, known: &[&str]) {
        let Some(map) = v.as_object() else {
            self.push(at, "must be an object");
            return;
        };
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            self.push(format!("{at}.{key}"), "unknown field (the schema forbids additional properties)");
        }
    }

    fn timestamp(&mut self, parent: &Value, at: &str, field: &str) {
        let Some(v) = parent.get(field) else { return };
        let ok = v.as_str().is_some_and(|s| s.parse::<jiff::Timestamp>().is_ok());
        if !ok {
            self.push(format!("{at}.{field}"), format!("{v} is not an RFC 3339 timestamp"));
        }
    }

    fn string_list(&mut self, parent: &Value, at: &str, field: &str) -> Vec<String> {
        let Some(v) = parent.get(field) else { return vec![] };
        match v.as_array().map(|a| a.iter().map(|x| x.as_str().map(str::to_owned)).collect::<Option<Vec<_>>>()) {
            Some(Some(list)) => list,
            _ => {
                self.push(format!("{at}.{field}"), "must be an array of strings");
                vec![]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: usize) -> Manifest {
        let layer = |i: usize| {
            format!(
                r#"{{"mediaType":"application/vnd.cncf.model.weight.v1.raw","digest":"sha256:{i:064}","size":1,
                "annotations":{{"org.cncf.model.filepath":"w{i}.bin"}}}}"#
            )
        };
        let layers: Vec<String> = (0..layers).map(layer).collect();
        let json = format!(
            r#"{{"schemaVersion":2,"artifactType":"application/vnd.cncf.model.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.cncf.model.config.v1+json","digest":"sha256:{:064}","size":2}},
            "layers":[{}]}}"#,
            9,
            layers.join(",")
        );
        Manifest::parse(json.as_bytes()).unwrap()
    }

    #[test]
    fn a_clean_artifact_has_no_issues() {
        let config = format!(
            r#"{{"descriptor":{{"name":"m","createdAt":"2025-01-01T00:00:00Z"}},
            "config":{{"format":"safetensors","capabilities":{{"inputTypes":["text"]}}}},
            "modelfs":{{"type":"layers","diffIds":["sha256:{:064}"]}}}}"#,
            0
        );
        assert_eq!(lint(&manifest(1), config.as_bytes()), vec![]);
    }

    #[test]
    fn reports_each_strict_violation_with_its_path() {
        let config = br#"{"descriptor":{"createdAt":"yesterday","extra":1},
            "config":{"capabilities":{"inputTypes":["smell"]}},
            "modelfs":{"type":"layers","diff_ids":["sha256:aa"]}}"#;
        let paths: Vec<String> = lint(&manifest(1), config).into_iter().map(|i| i.path).collect();
        for want in [
            "config.descriptor.extra",
            "config.descriptor.createdAt",
            "config.config.capabilities.inputTypes[0]",
            "config.modelfs.diff_ids",
            "config.modelfs.diffIds",
        ] {
            assert!(paths.iter().any(|p| p == want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn empty_config_lints_as_missing_sections() {
        let issues = lint(&manifest(0), b"{}");
        assert_eq!(issues.len(), 3, "{issues:?}");
        assert!(lint(&manifest(0), b"[]")[0].message.contains("object"));
    }

    #[test]
    fn digest_shape() {
        use crate::modelpack::sha256_hex;
        assert_eq!(sha256_hex(&format!("sha256:{}", "a".repeat(64))), Some("a".repeat(64).as_str()));
        assert!(sha256_hex(&format!("sha256:{}", "A".repeat(64))).is_none());
        assert!(sha256_hex("sha256:abc").is_none());
        assert!(sha256_hex(&format!("sha512:{}", "a".repeat(64))).is_none());
    }
}
