//! The ModelPack format: media types of both families, manifest and config types, lenient parsing,
//! strict lint, and safe file paths from layer annotations.

mod config;
pub mod contents;
mod lint;
mod manifest;
mod media_types;
mod path;

pub use config::{Capabilities, ConfigWarning, ModelConfig, ModelDescriptor, ModelFs, ModelProperties};
pub use lint::{LintIssue, lint};
pub use manifest::{Descriptor, Layer, Manifest, layer};
pub use media_types::{Family, LayerFormat, LayerKind, LayerMediaType, OCI_INDEX, OCI_MANIFEST};
pub use path::{ModelPath, PathError};

/// The hex part of a `sha256:<64 lowercase hex>` digest; `None` for anything else. Every module that
/// turns a digest into a file name or compares digests goes through this one definition.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    digest
        .strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a ModelPack: found {found}")]
    NotAModelPack { found: String },
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
    #[error("invalid ModelPack config: {0}")]
    InvalidConfig(String),
    #[error("layer {digest} has media type {media_type:?}, which is not a ModelPack layer type")]
    UnknownLayer { digest: String, media_type: String },
    #[error("layer {digest} names no file path (org.cncf.model.filepath or org.opencontainers.image.title)")]
    MissingFilePath { digest: String },
    #[error("layer {digest}: unsafe file path: {source}")]
    UnsafePath { digest: String, source: PathError },
}
