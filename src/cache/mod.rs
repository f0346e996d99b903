//! Node-local, content-addressed model cache and the puller that fills it (the `pull` subcommand).
//!
//! ```text
//! blobs/sha256/<hex>                 verified blobs (manifests' layers), read-only
//! models/sha256/<manifest-hex>/…     the model's files, and nothing else
//! complete/sha256/<manifest-hex>     written once the model is in place: it is published whole
//! signed/sha256/<manifest-hex>       the OpenSSF model signature's files it was published under
//! deployments/<ns>/<name>/current -> ../../../models/sha256/<hex>
//! tmp/                               partial downloads and staging, never read by consumers
//! locks/                             one lock file per lock held right now (removed on release)
//! stamps/sha256/<hex>                a blob's size, inode and mtime at commit
//! used/sha256/<manifest-hex>         its mtime: when the model was last linked, pulled or kept
//! index/sha256/<manifest-hex>        every entry of the model: types, link targets, file hashes (for `scrub`)
//! ```

mod allowance;
mod archive;
mod budget;
mod compare;
mod complete;
mod durable;
mod evict;
mod gc;
mod index;
mod layout;
mod link;
mod materialise;
mod outcome;
mod pace;
mod progress;
mod pull;
mod ranged;
mod records;
mod scrub;
mod signed;
mod store;
mod store_paths;
mod tree;
mod usage;
mod walk;

use std::path::Path;
use std::time::Duration;

pub use budget::{CacheLimit, ENTRY_COST, LimitError, Space, human};
pub use evict::Evicted;
pub use gc::{Collected, Hold, Holder, collect, holders, keep_versions, unlink};
pub use layout::{COMPLETE, Lock, Locked};
pub use link::{parse_link, set_current};
pub use materialise::{
    DEFAULT_MAX_ENTRIES, Limits, default_extract_limit, extract_tar, materialise, materialise_signed,
};
pub use outcome::{FailureReason, GcOutcome, PullOutcome, ScrubOutcome, TERMINATION_MESSAGE_LIMIT};
pub use pace::DEFAULT_MIN_RATE;
pub use progress::Progress;
pub use pull::{Endpoint, PullOptions, pull};
pub use ranged::DEFAULT_CHUNK_SIZE;
pub use scrub::{RemovedModel, ScrubReport, scrub};
pub use signed::check_published;
pub use store::{Ingest, Store, digest_hex};
pub use usage::{CacheReport, ModelUsage, report};
pub use walk::remove_tree;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    // The cause is part of the one line, not a `source` too: a chain printer would say it twice.
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("invalid digest {0:?}: expected sha256:<64 lowercase hex>")]
    InvalidDigest(String),
    #[error("invalid link {0:?}: expected deployments/<namespace>/<name>")]
    InvalidLink(String),
    #[error("blob {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch { digest: String, expected: u64, actual: u64 },
    #[error("digest mismatch: expected {expected}, got {actual}; nothing was published")]
    DigestMismatch { expected: String, actual: String },
    #[error("layer {layer}: uncompressed digest {actual} does not match the config's diffId {expected}")]
    DiffIdMismatch { layer: String, expected: String, actual: String },
    #[error("two layers or entries claim the path {0:?}")]
    DuplicatePath(String),
    #[error("layer {layer}: entry {entry:?} refused: {reason}")]
    UnsafeEntry { layer: String, entry: String, reason: String },
    #[error("layer {layer}: archive: {reason}")]
    Archive { layer: String, reason: String },
    #[error(
        "layer {layer}: extraction stopped at the model's {limit}-byte limit (all archive layers, headers included; a decompression bomb?)"
    )]
    ExtractionLimit { layer: String, limit: u64 },
    #[error(
        "layer {layer}: the model has more than {limit} entries (files, directories and links; --max-entries raises it)"
    )]
    TooManyEntries { layer: String, limit: u64 },
    #[error(
        "layer {layer}: {repository} does not serve it to these credentials ({reason}); nothing cached under that digest is used"
    )]
    LayerNotInRepository { layer: String, repository: String, reason: String },
    #[error("blob {digest}: download failed: {reason}")]
    Download { digest: String, reason: String },
    #[error(
        "blob {digest}: {received} bytes in the last {window:?}, under the minimum of {min_rate} bytes/s (pull --min-rate); cut off"
    )]
    TooSlow { digest: String, received: u64, window: Duration, min_rate: u64 },
    #[error(transparent)]
    Registry(#[from] crate::registry::Error),
    #[error(transparent)]
    ModelPack(#[from] crate::modelpack::Error),
    #[error(
        "InsufficientStorage: needs {}, {} free after evicting {}",
        human(*needs), human(*free), human(evicted.iter().map(|e| e.bytes).sum())
    )]
    InsufficientStorage { needs: u64, free: u64, evicted: Vec<Evicted> },
    /// The model's files are not exactly the files its OpenSSF model signature lists.
    #[error("model signature: {0}; nothing was published")]
    SignedFiles(String),
    #[error("internal: {0}")]
    Internal(String),
}

impl Error {
    fn io(path: &Path, source: std::io::Error) -> Error {
        Error::Io { path: path.display().to_string(), error: source }
    }
}

#[cfg(test)]
mod announce_tests;
#[cfg(test)]
mod archive_tests;
#[cfg(test)]
mod budget_tests;
#[cfg(test)]
mod extract_tests;
#[cfg(test)]
mod locks_tests;
#[cfg(test)]
mod scrub_tests;
