//! The one result type of a pull, written by `pull` (stdout and the pod's termination message) and
//! read back by the controller: no map read back by key.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Error;
use super::evict::Evicted;
use super::gc::Collected;
use super::scrub::{RemovedModel, ScrubReport};
use super::usage::CacheReport;
use crate::modelpack::contents::ArchiveContents;

/// A pod's termination message holds at most 4 KiB.
pub const TERMINATION_MESSAGE_LIMIT: usize = 4000;

/// Why a pull failed, when the controller acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailureReason {
    /// The model does not fit, even after eviction (exit code 3).
    InsufficientStorage,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PullOutcome {
    pub digest: String,
    /// Set when the pull failed: its one-line error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
    /// Bytes the pull needed (with `InsufficientStorage`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<u64>,
    #[serde(default)]
    pub bytes_fetched: u64,
    #[serde(default)]
    pub bytes_reused: u64,
    #[serde(default)]
    pub seconds: f64,
    #[serde(default)]
    pub files: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collected: Option<Collected>,
    /// What was evicted to make room (also when the pull failed anyway).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub evicted: Vec<Evicted>,
    /// Models removed because a blob they were built from changed since it was verified.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedModel>,
    /// The cache after the pull.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
    /// What the files of the model's archive layers hold (absent when it has none): range
    /// requests cannot read inside an archive, so the puller reads them on the node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contents: Option<Box<ArchiveContents>>,
}

impl PullOutcome {
    pub fn new(digest: &str) -> PullOutcome {
        PullOutcome { digest: digest.to_owned(), ..Default::default() }
    }

    /// The outcome of a failed pull: `message` is its one-line error; `error` the cache's, when it is one.
    pub fn failed(digest: &str, message: String, error: Option<&Error>) -> PullOutcome {
        let mut outcome = PullOutcome { error: Some(message), ..PullOutcome::new(digest) };
        if let Some(Error::InsufficientStorage { needs, evicted, .. }) = error {
            outcome.reason = Some(FailureReason::InsufficientStorage);
            outcome.needs = Some(*needs);
            outcome.evicted = evicted.clone();
        }
        outcome
    }

    /// JSON within [`TERMINATION_MESSAGE_LIMIT`]: the archive files' entries are left out first
    /// (least telling first; their sum stays), then the cache's model list (it is reported again by
    /// the next Job), then the lists, then the error; never cut mid-JSON.
    pub fn to_message(&self) -> String {
        bounded(self.clone(), |o| {
            if o.contents.as_mut().is_some_and(|c| c.omit_some()) || shrink_cache(&mut o.cache) {
                true
            } else if !o.evicted.is_empty() || !o.removed.is_empty() {
                o.evicted.truncate(o.evicted.len() / 2);
                o.removed.truncate(o.removed.len() / 2);
                true
            } else if let Some(error) = o.error.as_mut().filter(|e| e.len() > 200) {
                *error = error.chars().take(200).collect();
                true
            } else {
                false
            }
        })
    }
}

/// Serialises `value`, shrinking it with `shrink` until it fits a termination message (or cannot
/// shrink any more).
fn bounded<T: Serialize>(mut value: T, mut shrink: impl FnMut(&mut T) -> bool) -> String {
    loop {
        // Read on a terminal too (`kubectl describe`, the pull's output): nothing in it acts on one.
        let json = crate::printable::printable_json(&serde_json::to_string(&value).unwrap_or_default());
        if json.len() <= TERMINATION_MESSAGE_LIMIT || !shrink(&mut value) {
            return json;
        }
    }
}

/// Drops one model from the inventory; `false` when none is left.
fn shrink_cache(cache: &mut Option<CacheReport>) -> bool {
    match cache.as_mut().filter(|c| !c.models.is_empty()) {
        Some(c) => {
            c.models.pop();
            c.models_omitted += 1;
            true
        }
        None => false,
    }
}

/// `scrub`'s JSON result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubOutcome {
    #[serde(flatten)]
    pub scrub: ScrubReport,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
}

impl ScrubOutcome {
    pub fn to_message(&self) -> String {
        bounded(self.clone(), |o| {
            if shrink_cache(&mut o.cache) {
                return true;
            }
            let before = o.scrub.removed.len() + o.scrub.corrupt_blobs.len();
            o.scrub.removed.truncate(o.scrub.removed.len() / 2);
            o.scrub.corrupt_blobs.truncate(o.scrub.corrupt_blobs.len() / 2);
            before > 0
        })
    }
}

/// `gc`'s JSON result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcOutcome {
    #[serde(flatten)]
    pub collected: Collected,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
}

impl GcOutcome {
    pub fn to_message(&self) -> String {
        bounded(self.clone(), |o| shrink_cache(&mut o.cache))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ModelUsage;

    #[test]
    fn the_message_stays_within_a_termination_message_and_parses() {
        let models =
            (0..200).map(|i| ModelUsage { digest: format!("sha256:{i:064}"), size: i, ..Default::default() }).collect();
        let outcome = PullOutcome {
            cache: Some(CacheReport { capacity: 9, used: 1, free: 8, models, models_omitted: 0 }),
            error: Some("x".repeat(10_000)),
            ..PullOutcome::new("sha256:d")
        };
        let message = outcome.to_message();
        assert!(message.len() <= TERMINATION_MESSAGE_LIMIT, "{}", message.len());
        let back: PullOutcome = serde_json::from_str(&message).unwrap();
        let cache = back.cache.unwrap();
        assert_eq!(cache.models.len() + cache.models_omitted, 200);
        assert_eq!((cache.capacity, cache.free), (9, 8));
        let small = PullOutcome::new("sha256:d");
        assert_eq!(serde_json::from_str::<PullOutcome>(&small.to_message()).unwrap(), small);
    }

    #[test]
    fn archive_files_are_left_out_first_and_their_sum_is_kept() {
        use crate::modelpack::contents::{ArchiveContents, ArchiveFile, Contents, FileContents, Format};
        let files = (0..10_000)
            .map(|i| {
                let mut contents = Contents::of(Format::Safetensors);
                contents.parameters = Some(1);
                contents.metadata = (0..4).map(|k| (format!("key{k}"), "v".repeat(100))).collect();
                ArchiveFile {
                    weight_layer: true,
                    file: FileContents { path: format!("w/{i:05}.safetensors"), contents },
                }
            })
            .collect();
        let models = (0..5).map(|i| ModelUsage { digest: format!("sha256:{i:064}"), ..Default::default() }).collect();
        let outcome = PullOutcome {
            contents: Some(Box::new(ArchiveContents::sum(files, 7, 0))),
            cache: Some(CacheReport { capacity: 9, used: 1, free: 8, models, models_omitted: 0 }),
            ..PullOutcome::new("sha256:d")
        };
        let message = outcome.to_message();
        assert!(message.len() <= TERMINATION_MESSAGE_LIMIT, "{}", message.len());
        let back: PullOutcome = serde_json::from_str(&message).unwrap();
        let contents = back.contents.unwrap();
        assert_eq!(contents.weights.parameters, 10_000, "the sum covers every file");
        assert_eq!(contents.weights.formats, [Format::Safetensors]);
        assert_eq!(contents.not_read, 7);
        assert_eq!(contents.files.len() as u64 + contents.files_omitted, 10_000);
        assert!(!contents.files.is_empty(), "what fits is kept");
        assert_eq!(back.cache.unwrap().models.len(), 5, "files go before the cache's list");
    }

    #[test]
    fn insufficient_storage_is_typed_in_the_outcome() {
        let error = Error::InsufficientStorage {
            needs: 3 << 30,
            free: 1 << 30,
            evicted: vec![Evicted { digest: "sha256:e".into(), bytes: 1 << 20, deployments: vec!["ns/d".into()] }],
        };
        assert_eq!(error.to_string(), "InsufficientStorage: needs 3.0 GiB, 1.0 GiB free after evicting 1.0 MiB");
        let outcome = PullOutcome::failed("sha256:d", error.to_string(), Some(&error));
        let back: PullOutcome = serde_json::from_str(&outcome.to_message()).unwrap();
        assert_eq!(back.reason, Some(FailureReason::InsufficientStorage));
        assert_eq!(back.needs, Some(3 << 30));
        assert_eq!(back.evicted[0].deployments, ["ns/d"]);
    }
}
