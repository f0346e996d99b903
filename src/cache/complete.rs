//! Whether a model directory is published whole: its marker `complete/sha256/<hex>` (holding the
//! manifest digest), written after the directory is renamed into place and removed before the
//! directory is. The marker lives outside the model directory so that a workload mounts exactly
//! the model's files (`model_signing verify` on the mount refuses any other).
//!
//! Caches written by earlier versions kept the marker inside the directory (`.complete`): such a
//! model counts as not built, and its next pull rebuilds it from the blobs already in the store
//! (nothing is downloaded again), leaving a directory without it. Until then `scrub` and the
//! index skip that name at the top of a model, and no layer may create it.

use std::fs;
use std::path::PathBuf;

use super::Error;
use super::layout::{COMPLETE_DIR, SIGNED, Tmp};
use super::store::Store;

impl Store {
    /// `signed/sha256/<hex>`: the signed file list of a model pulled under a model signature (see
    /// `signed.rs`). Here, beside the marker, so that removing a model (`gc`) needs nothing of
    /// `signed.rs`, which reads the index.
    pub(super) fn signed_path(&self, hex: &str) -> PathBuf {
        self.root().join(SIGNED).join(hex)
    }

    /// Forgets model `hex`'s signed file list, if it has one.
    pub(super) fn forget_signed(&self, hex: &str) -> Result<(), Error> {
        let p = self.signed_path(hex);
        match fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&p, e)),
            _ => Ok(()),
        }
    }

    fn complete_path(&self, hex: &str) -> PathBuf {
        self.root().join(COMPLETE_DIR).join(hex)
    }

    /// Whether model `hex` is built and published whole.
    pub(super) fn is_complete(&self, hex: &str) -> bool {
        self.complete_path(hex).exists() && self.root().join(super::layout::MODELS).join(hex).is_dir()
    }

    /// Marks model `hex` (already in place) complete, durably.
    pub(super) fn mark_complete(&self, hex: &str, manifest_digest: &str) -> Result<(), Error> {
        let path = self.complete_path(hex);
        let tmp = self.tmp_path(Tmp::Complete(hex));
        fs::write(&tmp, manifest_digest).map_err(|e| Error::io(&tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))?;
        self.sync_dir(&self.root().join(COMPLETE_DIR))
    }

    /// Unmarks model `hex` (before its directory is removed).
    pub(super) fn forget_complete(&self, hex: &str) -> Result<(), Error> {
        let path = self.complete_path(hex);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::extract_tests::{RAW, descriptor, manifest, put_blob};
    use super::super::layout::COMPLETE;
    use super::super::materialise::{Limits, materialise};
    use super::*;

    fn names(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_model_directory_holds_only_the_model_and_a_removed_model_is_unmarked() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().without_sync();
        let blob = put_blob(&store, b"weights");
        let model = manifest(vec![descriptor(RAW, &blob, 7, "w.bin")]);
        let digest = format!("sha256:{}", "1".repeat(64));
        let (path, files) = materialise(&store, &digest, &model, &[], Limits::default()).unwrap();
        assert_eq!((names(&path), files), (vec!["w.bin".to_owned()], 1));
        assert!(store.is_complete(&"1".repeat(64)));
        assert_eq!(fs::read_to_string(store.complete_path(&"1".repeat(64))).unwrap(), digest);
        store.remove_model(&"1".repeat(64)).unwrap();
        assert!(!store.is_complete(&"1".repeat(64)) && !store.complete_path(&"1".repeat(64)).exists());
    }

    #[test]
    fn a_model_an_earlier_version_marked_inside_is_rebuilt_without_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap().without_sync();
        let blob = put_blob(&store, b"weights");
        let model = manifest(vec![descriptor(RAW, &blob, 7, "w.bin")]);
        let hex = "2".repeat(64);
        // What an earlier version left: the files and `.complete` inside, no marker outside.
        let old = store.model_dir(&format!("sha256:{hex}")).unwrap();
        fs::create_dir_all(&old).unwrap();
        fs::write(old.join("w.bin"), b"weights").unwrap();
        fs::write(old.join(COMPLETE), format!("sha256:{hex}")).unwrap();
        assert!(!store.is_complete(&hex), "the legacy marker is not trusted as complete");
        let (path, _) = materialise(&store, &format!("sha256:{hex}"), &model, &[], Limits::default()).unwrap();
        assert_eq!(names(&path), ["w.bin"]);
        assert!(store.is_complete(&hex));
    }
}
