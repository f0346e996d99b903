//! Every name the cache gives a path or a lock, in one place: the rest of the crate asks the
//! `Store` (`store_paths.rs`) for paths and locks and never formats them itself.

use std::fs::{self, File};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

/// The completion marker earlier versions wrote into a model directory (see `complete.rs`: a model
/// is complete when `complete/sha256/<hex>` exists): no entry may take the name, and the scrub
/// skips it.
pub const COMPLETE: &str = ".complete";
pub(super) const BLOBS: &str = "blobs/sha256";
pub(super) const SOURCES: &str = "sources/sha256";
pub(super) const MODELS: &str = "models/sha256";
/// Per blob: size and modification time when it was committed (see [`Store::blob_unchanged`]).
pub(super) const STAMPS: &str = "stamps/sha256";
/// Per model: when it was last linked, pulled or kept (its modification time).
pub(super) const USED: &str = "used/sha256";
/// Per model: every entry of its tree (types, symlink targets, file hashes), recorded when it
/// was built (for `scrub`).
pub(super) const INDEX: &str = "index/sha256";
/// Per model: its completion marker (see `complete.rs`).
pub(super) const COMPLETE_DIR: &str = "complete/sha256";
/// Per model pulled under an OpenSSF model signature: the statement's files (see `signed.rs`).
pub(super) const SIGNED: &str = "signed/sha256";
pub(super) const DEPLOYMENTS: &str = "deployments";
pub(super) const TMP: &str = "tmp";
pub(super) const LOCKS: &str = "locks";

/// Every directory [`Store::open`] creates.
pub(super) const DIRS: [&str; 11] =
    [BLOBS, SOURCES, MODELS, STAMPS, USED, INDEX, COMPLETE_DIR, SIGNED, DEPLOYMENTS, TMP, LOCKS];

/// The cache-wide locks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lock {
    /// One pull of a model (by manifest hex) at a time.
    Model(String),
    /// One writer of a blob per source (`blob hex`, hash of the source).
    Ingest { blob: String, source: String },
    /// Publishing a blob (any source).
    Commit(String),
    /// Garbage collection, eviction and scrub removals.
    Gc,
}

/// A source's (`registry/repository`) short name in ingest files and lock names.
pub(super) fn source_key(source: &str) -> String {
    hex::encode(Sha256::digest(source.as_bytes()))[..16].to_owned()
}

/// What another process's lock protects from removal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protected {
    Model(String),
    Blob(String),
    /// A lock file this version does not name (from a newer one): protect everything.
    Unknown,
}

impl Lock {
    pub fn model(hex: &str) -> Lock {
        Lock::Model(hex.to_owned())
    }

    #[cfg(test)]
    pub(super) fn ingest(blob_hex: &str, source: &str) -> Lock {
        Lock::Ingest { blob: blob_hex.to_owned(), source: source_key(source) }
    }

    pub(super) fn file_name(&self) -> String {
        match self {
            Lock::Model(hex) => format!("{hex}.lock"),
            Lock::Ingest { blob, source } => format!("blob-{blob}-{source}.lock"),
            Lock::Commit(blob) => format!("blob-{blob}.lock"),
            Lock::Gc => "gc.lock".to_owned(),
        }
    }

    /// The lock a file of `locks/` is, when it is one of [`Lock`]'s.
    pub(super) fn parse(file_name: &str) -> Option<Lock> {
        let stem = file_name.strip_suffix(".lock")?;
        let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if stem == "gc" {
            return Some(Lock::Gc);
        }
        if let Some(rest) = stem.strip_prefix("blob-") {
            return match rest.split_once('-') {
                Some((blob, source)) if is_hex(blob) => {
                    Some(Lock::Ingest { blob: blob.to_owned(), source: source.to_owned() })
                }
                None if is_hex(rest) => Some(Lock::Commit(rest.to_owned())),
                _ => None,
            };
        }
        is_hex(stem).then(|| Lock::Model(stem.to_owned()))
    }
}

/// Work in progress under `tmp/`, never read by consumers.
pub(super) enum Tmp<'a> {
    /// A blob being downloaded from one source (resumed by the next pull from that source).
    Ingest { blob: &'a str, source_key: &'a str },
    /// A model being built by this process.
    Model(&'a str),
    /// A model's file index being written by this process.
    Index(&'a str),
    /// A model's completion marker being written by this process.
    Complete(&'a str),
    /// A model's signed file list being written by this process.
    Signed(&'a str),
}

/// A lock taken with [`Store::lock`] or [`Store::try_lock`]: released when dropped, and its file
/// removed then, so that `locks/` holds only the locks held right now (a killed holder's file is
/// removed by the next [`Store::held_by_others`]).
pub struct Locked {
    pub(super) _file: File,
    pub(super) path: PathBuf,
}

impl Drop for Locked {
    fn drop(&mut self) {
        // Removed while still locked: a process waiting on this file finds, once it has the lock,
        // that the path no longer names it, and starts over with a new file (see `still_named`).
        let _ = fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_names_round_trip() {
        let hex = "ab".repeat(32);
        for lock in [Lock::model(&hex), Lock::ingest(&hex, "r/x"), Lock::Commit(hex.clone()), Lock::Gc] {
            assert_eq!(Lock::parse(&lock.file_name()), Some(lock.clone()), "{lock:?}");
        }
        for other in ["x.lock", "blob-zz.lock", "blob-.lock", &format!("{hex}.tmp")] {
            assert_eq!(Lock::parse(other), None, "{other}");
        }
    }
}
