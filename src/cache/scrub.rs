//! `scrub`: proves, periodically, that the cache still holds what was verified. Every blob is
//! re-hashed against its name and every model's whole tree compared with its index
//! ([`super::index`]): every entry, its type, a symlink's target, a file's size and bytes (at a
//! bounded rate), nothing added and nothing missing. What no longer matches, and a model without a
//! usable index (it cannot be checked), is removed together with every model built from it, whose
//! `current` links then dangle until the deployment pulls it again. A model pulled under an OpenSSF
//! model signature is also held to the signed files ([`super::signed`]).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::Error;
use super::compare::Compare;
use super::gc::{Hold, drop_kept, holders};
use super::layout::{BLOBS, Lock, MODELS};
use super::records::{Pace, hash_file};
use super::store::Store;
use super::usage::measure;

/// A model removed because something it was built from changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RemovedModel {
    pub digest: String,
    /// The changed blob's digest, or the model and what differs from its index (`sha256:<hex>
    /// file <path>` for a file's bytes or size, `… entry <path>: <how>` for anything else, `…
    /// index: <why>` when it cannot be checked).
    pub cause: String,
    /// `namespace/name` of deployments whose `current` link now dangles.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub current: Vec<String>,
    /// `namespace/name` of deployments that kept it as a previous version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kept: Vec<String>,
}

/// What a scrub checked and removed: its JSON result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScrubReport {
    pub blobs_checked: usize,
    pub files_checked: usize,
    pub bytes_checked: u64,
    /// Digests of blobs whose bytes no longer match.
    #[serde(default)]
    pub corrupt_blobs: Vec<String>,
    #[serde(default)]
    pub removed: Vec<RemovedModel>,
    pub seconds: f64,
}

impl ScrubReport {
    pub fn clean(&self) -> bool {
        self.corrupt_blobs.is_empty() && self.removed.is_empty()
    }
}

/// Re-hashes the whole cache at most `rate` bytes a second and removes what changed.
pub fn scrub(store: &Store, rate: Option<u64>) -> Result<ScrubReport, Error> {
    let started = Instant::now();
    let mut pace = Pace::new(rate);
    let mut report = ScrubReport::default();
    // Inode → (blob hex, matches): a model file linked from a checked blob is not read twice.
    let mut checked = BTreeMap::new();
    let blobs = store.dir(BLOBS);
    let mut names: Vec<String> = fs::read_dir(&blobs)
        .map_err(|e| Error::io(&blobs, e))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for hex in names {
        let path = blobs.join(&hex);
        let Ok(meta) = fs::symlink_metadata(&path) else { continue };
        let matches = meta.is_file() && matches!(hash_file(&path, &mut pace), Ok(h) if h == hex);
        report.blobs_checked += 1;
        checked.insert(meta.ino(), (hex.clone(), matches));
        if !matches && fs::symlink_metadata(&path).is_ok() {
            report.corrupt_blobs.push(format!("sha256:{hex}"));
        }
    }
    let mut bad_models = Vec::new();
    let models = store.dir(MODELS);
    for entry in fs::read_dir(&models).map_err(|e| Error::io(&models, e))?.flatten() {
        let hex = entry.file_name().to_string_lossy().into_owned();
        let mut compare = Compare::new(&checked, &mut pace);
        let verdict = compare.model(store, &hex, &entry.path()).and_then(|()| super::signed::recheck(store, &hex));
        report.files_checked += compare.files;
        if let Err(cause) = verdict {
            bad_models.push((hex, cause));
        }
    }
    report.bytes_checked = pace.bytes();
    let _gc = store.lock(&Lock::Gc)?;
    for digest in report.corrupt_blobs.clone() {
        let hex = digest.trim_start_matches("sha256:").to_owned();
        report.removed.extend(remove_corrupt_blob(store, &hex)?);
    }
    for (hex, cause) in bad_models {
        // Under the lock: a model collected meanwhile is no corruption.
        if store.dir(MODELS).join(&hex).exists() {
            report.removed.push(remove_model(store, &hex, format!("sha256:{hex} {cause}"))?);
        }
    }
    report.seconds = (started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0;
    Ok(report)
}

/// Removes blob `hex`, whose bytes no longer match its name, and every model built from it (by its
/// manifest or through a hard link). Takes no lock: the caller holds [`Lock::Gc`].
pub(super) fn remove_corrupt_blob(store: &Store, hex: &str) -> Result<Vec<RemovedModel>, Error> {
    let inv = measure(store)?;
    let inode = inv.blobs.get(hex).copied();
    let mut removed = Vec::new();
    for (model, inodes) in &inv.models {
        let built_from = inodes.blobs.iter().any(|b| b == hex) || inode.is_some_and(|i| inodes.files.contains(&i));
        if built_from && model != hex {
            removed.push(remove_model(store, model, format!("sha256:{hex}"))?);
        }
    }
    store.remove_blob(hex)?;
    if inv.models.contains_key(hex) {
        // The manifest blob itself: the model it names was built from it.
        removed.push(remove_model(store, hex, format!("sha256:{hex}"))?);
    }
    Ok(removed)
}

fn remove_model(store: &Store, hex: &str, cause: String) -> Result<RemovedModel, Error> {
    let current = holders(store)?
        .into_iter()
        .filter(|h| h.model == hex && h.hold == Hold::Current)
        .map(|h| h.deployment)
        .collect();
    let kept = drop_kept(store, hex)?;
    store.remove_model(hex)?;
    Ok(RemovedModel { digest: format!("sha256:{hex}"), cause, current, kept })
}

/// For a pull about to reuse blob `hex`: re-hashes it when its stamp changed, and removes it (and
/// the models built from it) when its bytes no longer match. `true`: the blob may be reused.
pub(super) fn check_before_reuse(store: &Store, hex: &str) -> Result<(bool, Vec<RemovedModel>), Error> {
    if store.check_blob(hex)? {
        return Ok((true, Vec::new()));
    }
    let _gc = store.lock(&Lock::Gc)?;
    Ok((false, remove_corrupt_blob(store, hex)?))
}
