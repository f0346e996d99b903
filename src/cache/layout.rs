//! Every name the cache gives a path or a lock, in one place: the rest of the crate asks [`Store`]
//! for paths and locks and never formats them itself.

use std::fs::{self, File, OpenOptions};
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::Error;
use super::store::Store;

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
pub(super) const DEPLOYMENTS: &str = "deployments";
pub(super) const TMP: &str = "tmp";
pub(super) const LOCKS: &str = "locks";

/// Every directory [`Store::open`] creates.
pub(super) const DIRS: [&str; 9] = [BLOBS, SOURCES, MODELS, STAMPS, USED, INDEX, DEPLOYMENTS, TMP, LOCKS];

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
    fn ingest(blob_hex: &str, source: &str) -> Lock {
        Lock::Ingest { blob: blob_hex.to_owned(), source: source_key(source) }
    }

    fn file_name(&self) -> String {
        match self {
            Lock::Model(hex) => format!("{hex}.lock"),
            Lock::Ingest { blob, source } => format!("blob-{blob}-{source}.lock"),
            Lock::Commit(blob) => format!("blob-{blob}.lock"),
            Lock::Gc => "gc.lock".to_owned(),
        }
    }

    /// The lock a file of `locks/` is, when it is one of [`Lock`]'s.
    fn parse(file_name: &str) -> Option<Lock> {
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
}

/// A lock file held open while some other process holds its lock.
pub struct Held {
    pub what: Protected,
}

/// Locks taken with [`Store::try_lock_others`]: held until dropped, so that nobody starts a pull in
/// between.
pub struct Others {
    _files: Vec<File>,
    /// Locks another process holds right now.
    pub held: Vec<Held>,
}

impl Store {
    pub(super) fn dir(&self, which: &str) -> PathBuf {
        self.root().join(which)
    }

    /// `deployments/<ns>/<name>` (names already checked by [`super::parse_link`]'s rules).
    pub(super) fn deployment_dir(&self, namespace: &str, name: &str) -> PathBuf {
        self.dir(DEPLOYMENTS).join(namespace).join(name)
    }

    /// Where `deployments/<ns>/<name>/current` points for model `hex`.
    pub(super) fn current_target(hex: &str) -> String {
        format!("../../../{MODELS}/{hex}")
    }

    /// Where `deployments/<ns>/<name>/versions/<hex>` points.
    pub(super) fn version_target(hex: &str) -> String {
        format!("../../../../{MODELS}/{hex}")
    }

    pub(super) fn tmp_path(&self, what: Tmp) -> PathBuf {
        let pid = std::process::id();
        self.dir(TMP).join(match what {
            Tmp::Ingest { blob, source_key } => format!("ingest-{blob}-{source_key}"),
            Tmp::Model(hex) => format!("model-{hex}-{pid}"),
            Tmp::Index(hex) => format!("index-{hex}-{pid}"),
        })
    }

    pub(super) fn index_path(&self, model_hex: &str) -> PathBuf {
        self.dir(INDEX).join(model_hex)
    }

    /// Takes a cache-wide lock, blocking until a concurrent holder releases it.
    pub fn lock(&self, lock: &Lock) -> Result<File, Error> {
        let path = self.dir(LOCKS).join(lock.file_name());
        let file =
            OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        file.lock().map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }

    /// Tries every lock but `own` (which the caller holds) and [`Lock::Gc`]: the ones taken are held
    /// until the result is dropped; the others are reported as held.
    pub fn try_lock_others(&self, own: Option<&Lock>) -> Result<Others, Error> {
        let dir = self.dir(LOCKS);
        let (mut files, mut held) = (Vec::new(), Vec::new());
        for entry in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let lock = Lock::parse(&name);
            if lock == Some(Lock::Gc) || (lock.is_some() && lock.as_ref() == own) {
                continue;
            }
            let file = File::options().write(true).open(entry.path()).map_err(|e| Error::io(&entry.path(), e))?;
            if file.try_lock().is_ok() {
                files.push(file);
                continue;
            }
            let what = match lock {
                Some(Lock::Model(hex)) => Protected::Model(hex),
                Some(Lock::Ingest { blob, .. } | Lock::Commit(blob)) => Protected::Blob(blob),
                Some(Lock::Gc) | None => Protected::Unknown,
            };
            held.push(Held { what });
        }
        Ok(Others { _files: files, held })
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

    #[test]
    fn another_holder_is_reported_and_the_callers_own_lock_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (a, b) = ("a".repeat(64), "b".repeat(64));
        let _mine = store.lock(&Lock::model(&a)).unwrap();
        let theirs = store.lock(&Lock::ingest(&b, "r/x")).unwrap();
        let others = store.try_lock_others(Some(&Lock::model(&a))).unwrap();
        let held: Vec<_> = others.held.iter().map(|h| h.what.clone()).collect();
        assert_eq!(held, vec![Protected::Blob(b.clone())]);
        drop((others, theirs));
        assert!(store.try_lock_others(Some(&Lock::model(&a))).unwrap().held.is_empty());
        let all = store.try_lock_others(None).unwrap();
        assert_eq!(all.held.iter().map(|h| h.what.clone()).collect::<Vec<_>>(), vec![Protected::Model(a)]);
    }
}
