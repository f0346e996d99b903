//! The node's half of OpenSSF model signing: a model pulled under a model signature is published
//! only if its tree, as the cache indexed it while building it (every regular file with its
//! SHA-256, every symlink), holds exactly the files the signature lists with their digests. The
//! index is what `scrub` compares the published tree with afterwards; the statement's files are
//! recorded beside the model (`signed/sha256/<hex>`), and the scrub checks the index against them
//! too, so a model stays exactly the signed files for as long as it is on the node.

use std::fs;
use std::path::{Path, PathBuf};

use super::Error;
use super::index::{Kind, Record, each_record};
use super::layout::{SIGNED, Tmp};
use super::store::{Store, digest_hex};
use crate::verify::model_signing::{Entry, Statement, check_tree};

/// Checks the index file at `path` against `statement`; returns how many files it bound.
pub fn check_index(path: &Path, statement: &Statement) -> Result<usize, Error> {
    let mut records: Vec<Record> = Vec::new();
    each_record(path, |r| {
        if r.kind != Kind::Dir {
            records.push(r.clone());
        }
    })
    .map_err(Error::SignedFiles)?;
    let entries = records.iter().map(|r| match r.kind {
        Kind::File => Entry::File { path: &r.path, sha256: &r.sha256 },
        Kind::Symlink => Entry::Symlink { path: &r.path },
        Kind::Dir => Entry::Dir,
    });
    check_tree(statement, entries).map_err(Error::SignedFiles)
}

/// Checks the published model `digest` (its committed index) against `statement`.
pub fn check_published(store: &Store, digest: &str, statement: &Statement) -> Result<usize, Error> {
    check_index(&store.index_path(digest_hex(digest)?), statement)
}

fn path(store: &Store, hex: &str) -> PathBuf {
    store.signed_path(hex)
}

/// Records that model `hex` was published under `statement` (after it was checked against it).
pub(super) fn record(store: &Store, hex: &str, statement: &Statement) -> Result<(), Error> {
    let target = path(store, hex);
    let tmp = store.tmp_path(Tmp::Signed(hex));
    let bytes = serde_json::to_vec(statement).map_err(|e| Error::Internal(e.to_string()))?;
    fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    fs::rename(&tmp, &target).map_err(|e| Error::io(&target, e))?;
    store.sync_dir(&store.root().join(SIGNED))
}

/// For the scrub: model `hex` against the statement it was published under, if any.
pub(super) fn recheck(store: &Store, hex: &str) -> Result<(), String> {
    let Ok(bytes) = fs::read(path(store, hex)) else { return Ok(()) };
    let statement: Statement =
        serde_json::from_slice(&bytes).map_err(|e| format!("signed file list: {e} (the model cannot be checked)"))?;
    check_index(&store.index_path(hex), &statement).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::super::extract_tests::{RAW, descriptor, manifest, put_blob};
    use super::super::materialise::{Limits, materialise_signed};
    use super::super::scrub::scrub;
    use super::*;

    fn statement(sha256: &str) -> Statement {
        Statement {
            model_name: "m".into(),
            files: [("w.bin".to_owned(), sha256.to_owned())].into(),
            ignore_paths: Vec::new(),
            allow_symlinks: false,
        }
    }

    #[test]
    fn a_signed_model_is_published_and_scrubbed_against_its_signed_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().without_sync();
        let blob = put_blob(&store, b"weights");
        let model = manifest(vec![descriptor(RAW, &blob, 7, "w.bin")]);
        let hex = "3".repeat(64);
        let digest = format!("sha256:{hex}");
        let other = statement(&"0".repeat(64));
        let refused = materialise_signed(&store, &digest, &model, &[], Limits::default(), Some(&other));
        assert!(
            matches!(&refused, Err(Error::SignedFiles(why)) if why.contains("w.bin: signed sha256:000")),
            "{refused:?}"
        );
        assert!(!store.is_complete(&hex) && !store.model_dir(&digest).unwrap().exists(), "nothing published");

        let good = statement(blob.trim_start_matches("sha256:"));
        materialise_signed(&store, &digest, &model, &[], Limits::default(), Some(&good)).unwrap();
        assert_eq!(check_published(&store, &digest, &good).unwrap(), 1);
        assert!(scrub(&store, None).unwrap().removed.is_empty());

        // The recorded signed files no longer match the tree: the scrub removes the model.
        record(&store, &hex, &other).unwrap();
        let report = scrub(&store, None).unwrap();
        assert_eq!(report.removed.len(), 1, "{report:?}");
        assert!(report.removed[0].cause.contains("signed sha256:000"), "{}", report.removed[0].cause);
        assert!(!store.is_complete(&hex) && !path(&store, &hex).exists());
    }
}
